/*
 * est: recall of learned outcomes, selector fingerprints, estimates from learned label
 * statistics (EQ/RE/NEQ/NRE shares, unseen labels, __name__ regexes), hints, samples and bytes,
 * the filter that skips recently learned series (and when it forgets), the memory budget and
 * its evictions, and hostile label sets.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "limiter/estimator.h"
#include "limiter/regex.h"
#include "proto/request.h"
#include "proto/wire.h"

#define HOUR_MS 3600000LL
#define SCRAPE_MS 15000LL
#define BUDGET (64u << 20)
#define MAX_PAIRS 64

/* The synthetic metric: NAMESPACES x PODS_PER_NS series of kube_pod_info. */
#define NAMESPACES 10
#define PODS_PER_NS 100
#define SERIES (NAMESPACES * PODS_PER_NS)

/* A query built in place: up to MAX_PAIRS matchers. */
struct tq {
	struct proto_query q;
	struct proto_matcher m[MAX_PAIRS];
};

/*
 * Fill <t> with the matchers given as (name, type, value) triples ending with NULL, over
 * [0, <range_ms>].
 */
static struct proto_query *query(struct tq *t, int64_t range_ms, ...)
{
	va_list ap;
	const char *name;

	memset(t, 0, sizeof(*t));
	t->q.matchers = t->m;
	t->q.start_ms = 1000;
	t->q.end_ms = 1000 + range_ms;
	va_start(ap, range_ms);
	while ((name = va_arg(ap, const char *)) != NULL) {
		struct proto_matcher *m = &t->m[t->q.n_matchers++];

		m->name = name;
		m->type = (enum proto_match_type)va_arg(ap, int);
		m->value = va_arg(ap, const char *);
	}
	va_end(ap);
	return &t->q;
}

/* Learn one series given as (name, value) pairs ending with NULL. */
static void learn(struct est *e, const char *tenant, ...)
{
	struct proto_label l[MAX_PAIRS];
	size_t n = 0;
	const char *name;
	va_list ap;

	va_start(ap, tenant);
	while ((name = va_arg(ap, const char *)) != NULL) {
		const char *value = va_arg(ap, const char *);

		l[n++] = (struct proto_label){ name, strlen(name), value, strlen(value) };
	}
	va_end(ap);
	est_learn_series(e, tenant, l, n);
}

static struct est *new_est(uint64_t budget, const struct est_hint *hints, size_t n_hints)
{
	struct est_settings s = { SCRAPE_MS, budget, hints, n_hints };
	struct est *e = est_new(&s);

	assert_non_null(e);
	return e;
}

/* kube_pod_info{namespace="ns-N", pod="pod-N-I", job="api"|"db" by pod parity}, learned twice
 * (a dashboard refreshing: the second round is mostly skipped as recently learned, and what is
 * learned again must not count series twice). */
static struct est *pods_est(void)
{
	struct est *e = new_est(BUDGET, NULL, 0);
	char ns[16], pod[32];

	for (int round = 0; round < 2; round++) {
		for (int n = 0; n < NAMESPACES; n++) {
			for (int i = 0; i < PODS_PER_NS; i++) {
				snprintf(ns, sizeof(ns), "ns-%d", n);
				snprintf(pod, sizeof(pod), "pod-%d-%d", n, i);
				learn(e, "t1", "__name__", "kube_pod_info", "namespace", ns, "pod", pod, "job",
				      i % 2 ? "api" : "db", NULL);
			}
		}
	}
	return e;
}

static uint64_t estimate_series(struct est *e, const struct proto_query *q, enum est_source want)
{
	struct est_result r;

	est_estimate(e, "t1", q, &r);
	assert_int_equal(r.source, want);
	return r.series;
}

/* Is <got> within <tol> (a fraction) of <want>? */
static void assert_near(uint64_t got, double want, double tol)
{
	if ((double)got < want * (1 - tol) || (double)got > want * (1 + tol))
		fail_msg("estimate %llu not within %.0f%% of %.0f", (unsigned long long)got, tol * 100, want);
}

static int teardown(void **state)
{
	(void)state;
	limiter_regex_cache_flush();
	return 0;
}

/* --- recall ---------------------------------------------------------------------------------- */

static void test_recall_returns_exact_figures_after_learn(void **state)
{
	struct est *e = new_est(BUDGET, NULL, 0);
	struct tq t;
	struct est_result r;

	(void)state;
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "up", "job", PROTO_MATCH_RE, "node|api", NULL);
	est_estimate(e, "t1", &t.q, &r);
	assert_int_equal(r.source, EST_SOURCE_DEFAULT);
	assert_int_equal(r.series, 0);
	est_learn_query(e, "t1", &t.q, 1234, 296000, 777777);
	est_estimate(e, "t1", &t.q, &r);
	assert_int_equal(r.source, EST_SOURCE_RECALL);
	assert_int_equal(r.series, 1234);
	assert_int_equal(r.samples, 296000);
	assert_int_equal(r.bytes, 777777);
	assert_int_equal(r.truncated, 0);
	assert_int_equal(r.fingerprint, est_fingerprint("t1", &t.q));
	/* Twice the range: samples and bytes scale, series do not. */
	t.q.end_ms = t.q.start_ms + 2 * HOUR_MS;
	est_estimate(e, "t1", &t.q, &r);
	assert_int_equal(r.series, 1234);
	assert_int_equal(r.samples, 592000);
	assert_int_equal(r.bytes, 1555554);
	/* Another tenant knows nothing of it. */
	est_estimate(e, "t2", &t.q, &r);
	assert_int_equal(r.source, EST_SOURCE_DEFAULT);
	/* Learning with the fingerprint from the estimate (the request path's way) is the same. */
	est_learn_query_fp(e, "t2", &t.q, r.fingerprint, 55, 66, 77);
	est_estimate(e, "t2", &t.q, &r);
	assert_int_equal(r.source, EST_SOURCE_RECALL);
	assert_int_equal(r.series, 55);
	est_estimate(e, "t1", &t.q, &r);
	assert_int_equal(r.series, 1234);
	est_free(e);
}

static void test_fingerprint_ignores_matcher_order_and_duplicates(void **state)
{
	struct tq a, b, c, d;

	(void)state;
	query(&a, HOUR_MS, "__name__", PROTO_MATCH_EQ, "up", "job", PROTO_MATCH_EQ, "api", "env", PROTO_MATCH_NEQ,
	      "dev", NULL);
	query(&b, 5 * HOUR_MS, "env", PROTO_MATCH_NEQ, "dev", "job", PROTO_MATCH_EQ, "api", "__name__",
	      PROTO_MATCH_EQ, "up", "job", PROTO_MATCH_EQ, "api", NULL);
	assert_int_equal(est_fingerprint("t", &a.q), est_fingerprint("t", &b.q));
	assert_int_not_equal(est_fingerprint("t", &a.q), est_fingerprint("u", &a.q));
	/* The type and the field boundaries matter. */
	query(&c, HOUR_MS, "__name__", PROTO_MATCH_EQ, "up", "job", PROTO_MATCH_RE, "api", "env", PROTO_MATCH_NEQ,
	      "dev", NULL);
	assert_int_not_equal(est_fingerprint("t", &a.q), est_fingerprint("t", &c.q));
	query(&c, HOUR_MS, "ab", PROTO_MATCH_EQ, "c", NULL);
	query(&d, HOUR_MS, "a", PROTO_MATCH_EQ, "bc", NULL);
	assert_int_not_equal(est_fingerprint("t", &c.q), est_fingerprint("t", &d.q));
	assert_int_equal(est_fingerprint(NULL, &c.q), est_fingerprint("", &c.q));
}

static void test_fingerprint_sorts_many_matchers(void **state)
{
	struct tq a, b;
	static char names[40][8];

	(void)state;
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	a.q.matchers = a.m;
	b.q.matchers = b.m;
	for (int i = 0; i < 40; i++) {
		snprintf(names[i], sizeof(names[i]), "l%02d", i);
		a.m[i] = (struct proto_matcher){ PROTO_MATCH_EQ, names[i], "v" };
		b.m[39 - i] = a.m[i];
	}
	a.q.n_matchers = b.q.n_matchers = 40; /* past the on-stack sort */
	assert_int_equal(est_fingerprint("t", &a.q), est_fingerprint("t", &b.q));
}

static void test_probe_answers_until_a_response_is_observed(void **state)
{
	struct est *e = new_est(BUDGET, NULL, 0);
	struct tq t;
	struct est_result r;

	(void)state;
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "http_requests_total", NULL);
	est_learn_probe(e, "t1", &t.q, 5000, 1);
	est_estimate(e, "t1", &t.q, &r);
	assert_int_equal(r.source, EST_SOURCE_PROBE);
	assert_int_equal(r.series, 5000);
	assert_int_equal(r.truncated, 1);
	assert_int_equal(r.samples, 5000 * (HOUR_MS / SCRAPE_MS + 1));
	assert_int_equal(r.bytes, 0);
	est_learn_query(e, "t1", &t.q, 4321, 100, 1000);
	est_learn_probe(e, "t1", &t.q, 9999, 0); /* observed beats probed */
	est_estimate(e, "t1", &t.q, &r);
	assert_int_equal(r.source, EST_SOURCE_RECALL);
	assert_int_equal(r.series, 4321);
	assert_int_equal(r.truncated, 0);
	est_free(e);
}

/* --- statistics ------------------------------------------------------------------------------ */

static void test_metric_total_counts_distinct_series(void **state)
{
	struct est *e = pods_est();
	struct tq t;
	struct est_result r;

	(void)state;
	est_estimate(e, "t1", query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", NULL), &r);
	assert_int_equal(r.source, EST_SOURCE_STATS);
	assert_int_equal(r.series, SERIES); /* learned twice, counted once */
	assert_int_equal(r.samples, SERIES * (HOUR_MS / SCRAPE_MS + 1));
	assert_int_equal(r.bytes, 0); /* no response bytes learned for it */
	est_free(e);
}

static void test_stats_from_narrower_selectors_are_a_lower_bound(void **state)
{
	struct est *e = pods_est();
	struct tq t, narrow;
	struct est_result r;

	(void)state;
	/* learned through namespace-scoped reads only: the metric's total may be larger */
	query(&narrow, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", "namespace", PROTO_MATCH_EQ, "ns-3", NULL);
	est_learn_query(e, "t1", &narrow.q, PODS_PER_NS, 0, 0);
	est_estimate(e, "t1", query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", NULL), &r);
	assert_int_equal(r.source, EST_SOURCE_STATS);
	assert_true(r.lower_bound);
	/* a __name__ regex may match metrics never seen: always a lower bound */
	est_estimate(e, "t1", query(&t, HOUR_MS, "__name__", PROTO_MATCH_RE, "kube_.*", NULL), &r);
	assert_true(r.lower_bound);
	/* once a response for the bare metric was learned, its stats are complete */
	est_learn_query(e, "t1", query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", NULL), SERIES, 0, 0);
	est_estimate(e, "t1", query(&t, 2 * HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", "job",
				    PROTO_MATCH_EQ, "api", NULL), &r);
	assert_int_equal(r.source, EST_SOURCE_STATS);
	assert_false(r.lower_bound);
	est_free(e);
}

static void test_eq_matcher_estimates_one_value(void **state)
{
	struct est *e = pods_est();
	struct tq t;

	(void)state;
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", "namespace", PROTO_MATCH_EQ, "ns-3", NULL);
	assert_near(estimate_series(e, &t.q, EST_SOURCE_STATS), PODS_PER_NS, 0.2);
	/* A pod (1000 values: most in the tail) is one series. */
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", "pod", PROTO_MATCH_EQ, "pod-7-42", NULL);
	assert_near(estimate_series(e, &t.q, EST_SOURCE_STATS), 1, 1.0);
	/* A namespace never seen: every value is tracked, so it has no series. */
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", "namespace", PROTO_MATCH_EQ, "nope", NULL);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_STATS), 0);
	est_free(e);
}

static void test_regex_over_three_values_sums_them(void **state)
{
	struct est *e = pods_est();
	struct tq t;

	(void)state;
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", "namespace", PROTO_MATCH_RE,
	      "ns-1|ns-2|ns-3", NULL);
	assert_near(estimate_series(e, &t.q, EST_SOURCE_STATS), 3 * PODS_PER_NS, 0.2);
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", "namespace", PROTO_MATCH_RE, "ns-[1-3]",
	      NULL);
	assert_near(estimate_series(e, &t.q, EST_SOURCE_STATS), 3 * PODS_PER_NS, 0.2);
	/* Anchored: "ns-1" alone does not match "ns-10" style prefixes. */
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", "namespace", PROTO_MATCH_RE, "ns-", NULL);
	assert_true(estimate_series(e, &t.q, EST_SOURCE_STATS) <= 1);
	/* Literal branches in the tail count an average tail value each. */
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", "pod", PROTO_MATCH_RE,
	      "pod-1-1|pod-2-2|pod-3-3|pod-4-4", NULL);
	assert_near(estimate_series(e, &t.q, EST_SOURCE_STATS), 4, 0.5);
	est_free(e);
}

static void test_negative_matchers_take_the_complement(void **state)
{
	struct est *e = pods_est();
	struct tq t;

	(void)state;
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", "namespace", PROTO_MATCH_NEQ, "ns-3", NULL);
	assert_near(estimate_series(e, &t.q, EST_SOURCE_STATS), SERIES - PODS_PER_NS, 0.05);
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", "namespace", PROTO_MATCH_NRE,
	      "ns-1|ns-2|ns-3", NULL);
	assert_near(estimate_series(e, &t.q, EST_SOURCE_STATS), SERIES - 3 * PODS_PER_NS, 0.1);
	est_free(e);
}

static void test_matchers_combine_by_product(void **state)
{
	struct est *e = pods_est();
	struct tq t;

	(void)state;
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", "namespace", PROTO_MATCH_RE, "ns-[1-4]",
	      "job", PROTO_MATCH_EQ, "api", NULL);
	assert_near(estimate_series(e, &t.q, EST_SOURCE_STATS), 4 * PODS_PER_NS / 2, 0.25);
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", "namespace", PROTO_MATCH_EQ, "ns-1", "job",
	      PROTO_MATCH_NEQ, "db", "namespace", PROTO_MATCH_NEQ, "ns-2", NULL);
	assert_near(estimate_series(e, &t.q, EST_SOURCE_STATS), PODS_PER_NS / 2, 0.25);
	est_free(e);
}

static void test_unseen_label_falls_back_to_metric_total(void **state)
{
	struct est *e = pods_est();
	struct tq t;

	(void)state;
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", "node", PROTO_MATCH_EQ, "n1", NULL);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_STATS), SERIES);
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", "node", PROTO_MATCH_EQ, "", NULL);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_STATS), SERIES);
	/* An empty-value equality on a label every series has matches (almost) nothing. */
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "kube_pod_info", "namespace", PROTO_MATCH_EQ, "", NULL);
	assert_true(estimate_series(e, &t.q, EST_SOURCE_STATS) <= SERIES / 20);
	est_free(e);
}

static void test_empty_value_counts_series_lacking_the_label(void **state)
{
	struct est *e = new_est(BUDGET, NULL, 0);
	struct tq t;
	char id[16];

	(void)state;
	/* 300 series without `shard` first, then 500 with one, then 200 more without. */
	for (int i = 0; i < 1000; i++) {
		snprintf(id, sizeof(id), "%d", i);
		if (i >= 300 && i < 800)
			learn(e, "t1", "__name__", "jobs", "id", id, "shard", i % 2 ? "x" : "y", NULL);
		else
			learn(e, "t1", "__name__", "jobs", "id", id, NULL);
	}
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "jobs", "shard", PROTO_MATCH_EQ, "", NULL);
	assert_near(estimate_series(e, &t.q, EST_SOURCE_STATS), 500, 0.1);
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "jobs", "shard", PROTO_MATCH_NEQ, "", NULL);
	assert_near(estimate_series(e, &t.q, EST_SOURCE_STATS), 500, 0.1);
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "jobs", "shard", PROTO_MATCH_RE, "x|", NULL);
	assert_near(estimate_series(e, &t.q, EST_SOURCE_STATS), 750, 0.1);
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "jobs", "shard", PROTO_MATCH_RE, "y?", NULL);
	assert_near(estimate_series(e, &t.q, EST_SOURCE_STATS), 750, 0.1);
	est_free(e);
}

static void test_name_regex_sums_matching_metrics(void **state)
{
	struct est *e = new_est(BUDGET, NULL, 0);
	struct tq t;
	char inst[16];

	(void)state;
	for (int i = 0; i < 40; i++) {
		snprintf(inst, sizeof(inst), "h%d", i);
		if (i < 10)
			learn(e, "t1", "__name__", "node_load1", "instance", inst, NULL);
		if (i < 20)
			learn(e, "t1", "__name__", "node_load5", "instance", inst, NULL);
		learn(e, "t1", "__name__", "up", "instance", inst, NULL);
		learn(e, "t2", "__name__", "node_load15", "instance", inst, NULL); /* another tenant */
	}
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_RE, "node_load.*", NULL);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_STATS), 30);
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_NRE, "node_load.*", NULL);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_STATS), 40);
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_RE, "node_load.*", "instance", PROTO_MATCH_EQ, "h3", NULL);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_STATS), 2);
	query(&t, HOUR_MS, "instance", PROTO_MATCH_EQ, "h15", NULL); /* no name: every metric of t1 */
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_STATS), 2);
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_RE, "nothing_.*", NULL);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_DEFAULT), 0);
	est_free(e);
}

static void test_hint_used_without_stats_and_stats_win(void **state)
{
	static const struct est_hint hints[] = { { "container_cpu_usage_seconds_total", 250000 },
						 { "container_memory_rss", 90000 },
						 { "up", 7 } };
	struct est *e = new_est(BUDGET, hints, 3);
	struct tq t;
	struct est_result r;

	(void)state;
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "container_cpu_usage_seconds_total", "pod", PROTO_MATCH_EQ,
	      "x", NULL);
	est_estimate(e, "t1", &t.q, &r);
	assert_int_equal(r.source, EST_SOURCE_HINT);
	assert_int_equal(r.series, 250000);
	assert_int_equal(r.samples, 250000ULL * (HOUR_MS / SCRAPE_MS + 1));
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_RE, "container_.*", NULL);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_HINT), 340000);
	learn(e, "t1", "__name__", "up", "job", "a", NULL);
	learn(e, "t1", "__name__", "up", "job", "b", NULL);
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "up", NULL);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_STATS), 2);
	/* A reload replaces the hints. */
	struct est_settings s = { SCRAPE_MS, BUDGET, hints + 2, 1 };
	assert_int_equal(est_configure(e, &s), 0);
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "container_cpu_usage_seconds_total", NULL);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_DEFAULT), 0);
	est_free(e);
}

static void test_bytes_follow_learned_bytes_per_sample(void **state)
{
	struct est *e = new_est(BUDGET, NULL, 0);
	struct tq t;
	struct est_result r;

	(void)state;
	for (int i = 0; i < 10; i++) {
		char v[8];

		snprintf(v, sizeof(v), "%d", i);
		learn(e, "t1", "__name__", "rpc_total", "shard", v, NULL);
	}
	/* 10 series x 241 samples answered in 4820 bytes: 2 bytes per sample. */
	est_learn_query(e, "t1", query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "rpc_total", NULL), 10, 2410, 4820);
	query(&t, 2 * HOUR_MS, "__name__", PROTO_MATCH_EQ, "rpc_total", "shard", PROTO_MATCH_RE, "[0-4]", NULL);
	est_estimate(e, "t1", &t.q, &r);
	assert_int_equal(r.source, EST_SOURCE_STATS);
	assert_int_equal(r.series, 5);
	assert_int_equal(r.samples, 5 * (2 * HOUR_MS / SCRAPE_MS + 1));
	assert_int_equal(r.bytes, 2 * r.samples);
	est_free(e);
}

static void test_heavy_value_arriving_late_is_promoted(void **state)
{
	struct est *e = new_est(BUDGET, NULL, 0);
	struct tq t;
	char code[16], id[16];
	int n = 0;

	(void)state;
	/*
	 * 200 light values (2 series each) first, then one value with 2000 series, each learned
	 * once: promotion must come from distinct series (the same series relayed again is skipped
	 * and must not make a value heavy).
	 */
	for (int v = 0; v < 200; v++) {
		for (int s = 0; s < 2; s++) {
			snprintf(code, sizeof(code), "c%d", v);
			snprintf(id, sizeof(id), "%d", n++);
			learn(e, "t1", "__name__", "events_total", "code", code, "id", id, NULL);
		}
	}
	for (int s = 0; s < 2000; s++) {
		snprintf(id, sizeof(id), "h%d", s);
		learn(e, "t1", "__name__", "events_total", "code", "heavy", "id", id, NULL);
	}
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "events_total", "code", PROTO_MATCH_EQ, "heavy", NULL);
	assert_near(estimate_series(e, &t.q, EST_SOURCE_STATS), 2000, 0.5);
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "events_total", "code", PROTO_MATCH_EQ, "c150", NULL);
	assert_true(estimate_series(e, &t.q, EST_SOURCE_STATS) <= 8);
	est_free(e);
}

/* --- recently learned series ----------------------------------------------------------------- */

static struct est_stats stats(const struct est *e)
{
	struct est_stats st;

	est_get_stats(e, &st);
	return st;
}

static void test_repeated_series_is_learned_once(void **state)
{
	struct est *e = new_est(BUDGET, NULL, 0);
	struct est_stats before, after;
	char code[16];

	(void)state;
	/* 64 codes fill the exactly tracked values; "tail" is then a tail value, and each of its
	 * occurrences learned goes to the reservoir (a sample: memory). */
	for (int i = 0; i < 64; i++) {
		snprintf(code, sizeof(code), "c%d", i);
		learn(e, "t1", "__name__", "http_requests_total", "code", code, "id", "0", NULL);
	}
	learn(e, "t1", "__name__", "http_requests_total", "code", "tail", "id", "1", NULL);
	before = stats(e);
	assert_int_equal(before.learned_series, 65);
	assert_int_equal(before.learn_skipped, 0);
	/* The same series again, its labels in another order: skipped, nothing changes. */
	learn(e, "t1", "id", "1", "code", "tail", "__name__", "http_requests_total", NULL);
	learn(e, "t1", "__name__", "http_requests_total", "code", "tail", "id", "1", NULL);
	after = stats(e);
	assert_int_equal(after.learn_skipped, 2);
	assert_int_equal(after.learned_series, 65);
	assert_int_equal(after.memory_bytes, before.memory_bytes);
	/* Another series with the same tail value is learned (a new sample), */
	learn(e, "t1", "__name__", "http_requests_total", "code", "tail", "id", "2", NULL);
	after = stats(e);
	assert_int_equal(after.learned_series, 66);
	assert_true(after.memory_bytes > before.memory_bytes);
	/* and so is the same label set for another tenant. */
	learn(e, "t2", "__name__", "http_requests_total", "code", "tail", "id", "1", NULL);
	after = stats(e);
	assert_int_equal(after.learned_series, 67);
	assert_int_equal(after.learn_skipped, 2);
	assert_int_equal(after.metrics, 2);
	est_free(e);
}

static void test_evicted_metric_is_learned_again(void **state)
{
	struct est *e = new_est(256 << 10, NULL, 0);
	struct est_stats before, after;
	char name[32];
	struct tq t;

	(void)state;
	learn(e, "t1", "__name__", "first", "job", "a", NULL);
	learn(e, "t1", "__name__", "first", "job", "a", NULL);
	assert_int_equal(stats(e).learn_skipped, 1);
	/* Other metrics until the budget evicts the least recently used: "first" (skipped, its
	 * repeat did not touch it). */
	for (int i = 0; stats(e).evictions == 0; i++) {
		assert_true(i < 100000);
		snprintf(name, sizeof(name), "other_%d", i);
		learn(e, "t1", "__name__", name, "job", "a", NULL);
	}
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "first", NULL);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_DEFAULT), 0);
	/* Its series is learned again when next seen, not skipped as recently learned. */
	before = stats(e);
	learn(e, "t1", "__name__", "first", "job", "a", NULL);
	after = stats(e);
	assert_int_equal(after.learned_series, before.learned_series + 1);
	assert_int_equal(after.learn_skipped, before.learn_skipped);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_STATS), 1);
	est_free(e);
}

static void test_configure_forgets_learned_series(void **state)
{
	struct est *e = new_est(BUDGET, NULL, 0);
	struct est_settings s = { SCRAPE_MS, 1, NULL, 0 };
	struct est_stats fresh = stats(e), st;
	struct tq t;

	(void)state;
	learn(e, "t1", "__name__", "up", "job", "a", NULL);
	learn(e, "t1", "__name__", "up", "job", "a", NULL);
	st = stats(e);
	assert_int_equal(st.learned_series, 1);
	assert_int_equal(st.learn_skipped, 1);
	/* The filter is counted in the budget (128 KiB at this one), allocated on the first learn. */
	assert_true(st.memory_bytes >= fresh.memory_bytes + 16384 * 8);
	/* A reload leaving no room drops everything, the filter included. */
	assert_int_equal(est_configure(e, &s), 0);
	st = stats(e);
	assert_int_equal(st.metrics, 0);
	assert_int_equal(st.memory_bytes, fresh.memory_bytes);
	/* With room again, the series is learned again. */
	s.max_memory = BUDGET;
	assert_int_equal(est_configure(e, &s), 0);
	learn(e, "t1", "__name__", "up", "job", "a", NULL);
	st = stats(e);
	assert_int_equal(st.learned_series, 2);
	assert_int_equal(st.learn_skipped, 1);
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "up", NULL);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_STATS), 1);
	/* A reload that drops nothing forgets as well. */
	assert_int_equal(est_configure(e, &s), 0);
	learn(e, "t1", "__name__", "up", "job", "a", NULL);
	assert_int_equal(stats(e).learned_series, 3);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_STATS), 1);
	est_free(e);
}

/* Learn metric <name> with one series of two labels (larger than the filler metrics below). */
static void learn_wide(struct est *e, const char *name)
{
	learn(e, "t1", "__name__", name, "job", "kube-state-metrics", "instance", "10.20.30.40:8080", NULL);
}

static void test_forget_period_learns_repeated_series_again(void **state)
{
	struct est *e = new_est(256 << 10, NULL, 0);
	struct est_stats st;
	uint64_t forgets, n = 0;
	char name[32];
	struct tq t;

	(void)state;
	learn_wide(e, "a_metric");
	learn_wide(e, "b_metric");
	learn_wide(e, "a_metric"); /* skipped: "a_metric" stays least recently used */
	forgets = stats(e).learn_forgets;
	/* Repeat b's series until the filter forgets (one period of look-ups): the repeat after it
	 * is learned again, the others skipped. */
	while (stats(e).learn_forgets == forgets) {
		assert_true(++n < (1u << 20));
		learn_wide(e, "b_metric");
	}
	st = stats(e);
	assert_int_equal(st.learned_series, 3);
	assert_int_equal(st.learn_skipped, n); /* a's repeat, and b's but the last */
	/* a's series is learned again too, which makes "a_metric" the most recently used. */
	learn_wide(e, "a_metric");
	assert_int_equal(stats(e).learned_series, 4);
	/* Smaller metrics until the first eviction: it takes b, the least recently used now. */
	for (int i = 0; stats(e).evictions == 0; i++) {
		assert_true(i < 100000);
		snprintf(name, sizeof(name), "m%d", i);
		learn(e, "t1", "__name__", name, "j", "x", NULL);
	}
	assert_int_equal(stats(e).evictions, 1);
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "b_metric", NULL);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_DEFAULT), 0);
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "a_metric", NULL);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_STATS), 1);
	est_free(e);
}

static void test_filter_memory_stays_fixed(void **state)
{
	struct est *e = new_est(BUDGET, NULL, 0);
	struct est_stats mid = { 0 }, end;
	char id[16];

	(void)state;
	/*
	 * 1,000,000 distinct series of one metric. Once its sketches are dense and its tracked
	 * values and reservoir full, learning more takes no memory: neither do the filter's
	 * 1,000,000 entries (it holds 16,384 and forgets every period).
	 */
	for (int i = 0; i < 1000000; i++) {
		snprintf(id, sizeof(id), "%07d", i);
		learn(e, "t1", "__name__", "requests_total", "id", id, NULL);
		if (i == 9999)
			mid = stats(e);
	}
	end = stats(e);
	assert_int_equal(end.learned_series, 1000000);
	assert_int_equal(end.learn_skipped, 0);
	assert_true(end.learn_forgets >= 1000000 / 65536);
	assert_int_equal(end.memory_bytes, mid.memory_bytes);
	est_free(e);
}

/* --- memory budget --------------------------------------------------------------------------- */

static void learn_metrics(struct est *e, int metrics, int series, const struct est_stats *limit_check)
{
	char name[32], pod[32];
	struct est_stats st;

	for (int m = 0; m < metrics; m++) {
		snprintf(name, sizeof(name), "metric_%d", m);
		for (int s = 0; s < series; s++) {
			snprintf(pod, sizeof(pod), "pod-%d", s);
			learn(e, "t1", "__name__", name, "pod", pod, "zone", s % 2 ? "a" : "b", NULL);
			if (limit_check) {
				est_get_stats(e, &st);
				assert_true(st.memory_bytes <= limit_check->memory_limit);
			}
		}
	}
}

static void test_budget_respected_while_learning(void **state)
{
	const uint64_t budget = 256 << 10;
	struct est *e = new_est(budget, NULL, 0);
	struct est_stats st = { .memory_limit = budget };
	struct tq t;

	(void)state;
	learn_metrics(e, 400, 100, &st);
	for (int i = 0; i < 2000; i++) {
		char v[16];

		snprintf(v, sizeof(v), "v%d", i);
		est_learn_query(e, "t1", query(&t, HOUR_MS, "x", PROTO_MATCH_EQ, v, NULL), 1, 1, 1);
		est_get_stats(e, &st);
		assert_true(st.memory_bytes <= budget);
	}
	est_get_stats(e, &st);
	assert_true(st.evictions > 0);
	assert_true(st.metrics > 0 && st.metrics < 400);
	assert_int_equal(st.memory_limit, budget);
	/* The most recently learned metric is still there. */
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "metric_399", NULL);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_STATS), 100);
	est_free(e);
}

static void test_recall_entries_go_before_metrics(void **state)
{
	struct est *e = new_est(BUDGET, NULL, 0);
	struct est_stats st, after;
	struct tq t;

	(void)state;
	learn_metrics(e, 5, 50, NULL);
	for (int i = 0; i < 100; i++) {
		char v[16];

		snprintf(v, sizeof(v), "v%d", i);
		est_learn_query(e, "t1", query(&t, HOUR_MS, "x", PROTO_MATCH_EQ, v, NULL), 1, 1, 1);
	}
	est_get_stats(e, &st);
	assert_int_equal(st.recall_entries, 100);
	/* Room for the metrics and a few recall entries only. */
	struct est_settings s = { SCRAPE_MS, st.memory_bytes - 50 * 100, NULL, 0 };
	assert_int_equal(est_configure(e, &s), 0);
	est_get_stats(e, &after);
	assert_int_equal(after.metrics, 5);
	assert_true(after.recall_entries < 100);
	assert_true(after.memory_bytes <= s.max_memory);
	est_free(e);
}

static void test_configure_smaller_budget_evicts_at_once(void **state)
{
	struct est *e = new_est(BUDGET, NULL, 0);
	struct est_stats st, after;

	(void)state;
	learn_metrics(e, 50, 200, NULL);
	est_get_stats(e, &st);
	assert_int_equal(st.metrics, 50);
	assert_int_equal(st.evictions, 0);
	struct est_settings s = { SCRAPE_MS, st.memory_bytes / 4, NULL, 0 };
	assert_int_equal(est_configure(e, &s), 0);
	est_get_stats(e, &after);
	assert_true(after.memory_bytes <= s.max_memory);
	assert_true(after.metrics < 50 && after.metrics > 0);
	assert_int_equal(after.evictions, 50 - after.metrics);
	assert_int_equal(after.memory_limit, s.max_memory);
	/* Nothing at all fits: everything goes, and the estimator still answers. */
	s.max_memory = 1;
	assert_int_equal(est_configure(e, &s), 0);
	est_get_stats(e, &after);
	assert_int_equal(after.metrics, 0);
	assert_int_equal(after.label_values, 0);
	struct tq t;
	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "metric_1", NULL);
	assert_int_equal(estimate_series(e, &t.q, EST_SOURCE_DEFAULT), 0);
	est_free(e);
}

static void test_lowered_budget_shrinks_filter_before_metrics(void **state)
{
	struct est *e = new_est(BUDGET, NULL, 0);
	struct est_settings s = { SCRAPE_MS, 0, NULL, 0 };
	struct est_stats st;

	(void)state;
	learn_metrics(e, 5, 50, NULL);
	st = stats(e);
	/* 1 KiB short: the filter sized for 64 MiB (128 KiB) goes back, no metric is evicted, */
	s.max_memory = st.memory_bytes - 1024;
	assert_int_equal(est_configure(e, &s), 0);
	st = stats(e);
	assert_int_equal(st.metrics, 5);
	assert_int_equal(st.evictions, 0);
	assert_true(st.memory_bytes + 100 * 1024 < s.max_memory);
	/* and the next learn brings it back at the size the budget affords (1/16 of it at most). */
	learn(e, "t1", "__name__", "up", "job", "a", NULL);
	learn(e, "t1", "__name__", "up", "job", "a", NULL);
	st = stats(e);
	assert_int_equal(st.learn_skipped, 1);
	assert_true(st.memory_bytes <= s.max_memory);
	est_free(e);
}

/* --- hostile input --------------------------------------------------------------------------- */

static void test_hostile_labels_do_not_crash(void **state)
{
	enum { MANY = 5000, HUGE_LEN = 1 << 20 };
	struct est *e = new_est(1 << 20, NULL, 0);
	struct proto_label *l = calloc(MANY, sizeof(*l));
	char *huge = malloc(HUGE_LEN);
	static char names[MANY][12];
	static const char binary[] = { 0, (char)0xff, '\n', (char)0x80, '"' };
	struct est_result r;
	struct tq t;

	(void)state;
	assert_non_null(l);
	assert_non_null(huge);
	memset(huge, 'x', HUGE_LEN);
	/* Many labels, the first naming the metric. */
	l[0] = (struct proto_label){ "__name__", 8, "wide", 4 };
	for (int i = 1; i < MANY; i++) {
		snprintf(names[i], sizeof(names[i]), "l%d", i);
		l[i] = (struct proto_label){ names[i], strlen(names[i]), "v", 1 };
	}
	est_learn_series(e, "t1", l, MANY);
	/* A huge value, a huge name, an empty name, binary bytes, duplicate and empty-valued labels. */
	l[1] = (struct proto_label){ "big", 3, huge, HUGE_LEN };
	l[2] = (struct proto_label){ huge, HUGE_LEN, "v", 1 };
	l[3] = (struct proto_label){ "", 0, "v", 1 };
	l[4] = (struct proto_label){ "bin", 3, binary, sizeof(binary) };
	l[5] = (struct proto_label){ binary, sizeof(binary), binary, sizeof(binary) };
	l[6] = (struct proto_label){ "bin", 3, "dup", 3 };
	l[7] = (struct proto_label){ "empty", 5, "", 0 };
	for (int i = 0; i < 100; i++)
		est_learn_series(e, "t1", l, 8);
	/* No __name__, an empty __name__, a huge metric name, a huge tenant, no labels at all. */
	est_learn_series(e, "t1", l + 1, 7);
	l[0] = (struct proto_label){ "__name__", 8, "", 0 };
	est_learn_series(e, "t1", l, 8);
	l[0] = (struct proto_label){ "__name__", 8, huge, HUGE_LEN };
	est_learn_series(e, "t1", l, 8);
	huge[HUGE_LEN - 1] = '\0';
	est_learn_series(e, huge, l + 1, 3);
	est_learn_series(e, "t1", NULL, 0);
	est_learn_series(e, NULL, l, 1);

	query(&t, HOUR_MS, "__name__", PROTO_MATCH_EQ, "wide", "bin", PROTO_MATCH_RE, ".*", "big", PROTO_MATCH_EQ,
	      huge, "l9", PROTO_MATCH_NRE, "(", NULL);
	est_estimate(e, "t1", &t.q, &r);
	assert_int_equal(r.source, EST_SOURCE_STATS);
	assert_true(r.series >= 1 && r.series <= 2);
	query(&t, HOUR_MS, "bin", PROTO_MATCH_RE, "(a|aa)+", NULL);
	est_estimate(e, huge, &t.q, &r);
	est_estimate(e, NULL, &t.q, &r);
	est_learn_query(e, NULL, &t.q, 1, 1, 1);
	est_learn_probe(e, huge, &t.q, 1, 0);
	struct est_stats st;
	est_get_stats(e, &st);
	assert_true(st.memory_bytes <= st.memory_limit);
	free(huge);
	free(l);
	est_free(e);
	est_free(NULL);
}

static void test_source_names(void **state)
{
	(void)state;
	assert_string_equal(est_source_name(EST_SOURCE_DEFAULT), "default");
	assert_string_equal(est_source_name(EST_SOURCE_RECALL), "recall");
	assert_string_equal(est_source_name(EST_SOURCE_STATS), "stats");
	assert_string_equal(est_source_name(EST_SOURCE_PROBE), "probe");
	assert_string_equal(est_source_name(EST_SOURCE_HINT), "hint");
	assert_string_equal(est_source_name((enum est_source)99), "default");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_recall_returns_exact_figures_after_learn, teardown),
		cmocka_unit_test_teardown(test_fingerprint_ignores_matcher_order_and_duplicates, teardown),
		cmocka_unit_test_teardown(test_fingerprint_sorts_many_matchers, teardown),
		cmocka_unit_test_teardown(test_probe_answers_until_a_response_is_observed, teardown),
		cmocka_unit_test_teardown(test_metric_total_counts_distinct_series, teardown),
		cmocka_unit_test_teardown(test_stats_from_narrower_selectors_are_a_lower_bound, teardown),
		cmocka_unit_test_teardown(test_eq_matcher_estimates_one_value, teardown),
		cmocka_unit_test_teardown(test_regex_over_three_values_sums_them, teardown),
		cmocka_unit_test_teardown(test_negative_matchers_take_the_complement, teardown),
		cmocka_unit_test_teardown(test_matchers_combine_by_product, teardown),
		cmocka_unit_test_teardown(test_unseen_label_falls_back_to_metric_total, teardown),
		cmocka_unit_test_teardown(test_empty_value_counts_series_lacking_the_label, teardown),
		cmocka_unit_test_teardown(test_name_regex_sums_matching_metrics, teardown),
		cmocka_unit_test_teardown(test_hint_used_without_stats_and_stats_win, teardown),
		cmocka_unit_test_teardown(test_bytes_follow_learned_bytes_per_sample, teardown),
		cmocka_unit_test_teardown(test_heavy_value_arriving_late_is_promoted, teardown),
		cmocka_unit_test_teardown(test_repeated_series_is_learned_once, teardown),
		cmocka_unit_test_teardown(test_evicted_metric_is_learned_again, teardown),
		cmocka_unit_test_teardown(test_configure_forgets_learned_series, teardown),
		cmocka_unit_test_teardown(test_forget_period_learns_repeated_series_again, teardown),
		cmocka_unit_test_teardown(test_filter_memory_stays_fixed, teardown),
		cmocka_unit_test_teardown(test_budget_respected_while_learning, teardown),
		cmocka_unit_test_teardown(test_recall_entries_go_before_metrics, teardown),
		cmocka_unit_test_teardown(test_configure_smaller_budget_evicts_at_once, teardown),
		cmocka_unit_test_teardown(test_lowered_budget_shrinks_filter_before_metrics, teardown),
		cmocka_unit_test_teardown(test_hostile_labels_do_not_crash, teardown),
		cmocka_unit_test_teardown(test_source_names, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

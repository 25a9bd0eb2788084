/* Unit tests for limiter/admission: every limit, every rule predicate, dry-run, messages. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "limiter/admission.h"
#include "limiter/estimator.h"
#include "proto/request.h"
#include "proxy/conf.h"

#define HOUR_MS (3600 * 1000LL)

static struct conf *load(const char *yaml)
{
	struct conf *c = NULL;
	struct evbuffer *errs = evbuffer_new();
	char text[4096];

	snprintf(text, sizeof(text), "upstream: {url: \"http://127.0.0.1:9/api/v1/read\"}\n%s", yaml);
	if (conf_load_string("test.yml", text, strlen(text), &c, errs) < 0) {
		size_t n = evbuffer_get_length(errs);
		char *msg = calloc(1, n + 1);
		evbuffer_remove(errs, msg, n);
		fail_msg("config did not load: %s", msg);
	}
	evbuffer_free(errs);
	return c;
}

/* A query over [0, range_ms] with matchers given as name, op, value triples. */
static struct proto_query query(int64_t range_ms, struct proto_matcher *m, size_t n)
{
	struct proto_query q = { .start_ms = 1000, .end_ms = 1000 + range_ms, .matchers = m, .n_matchers = n };
	return q;
}

static struct limiter_input input(const struct conf *c, const char *tenant)
{
	struct limiter_input in = { .conf = c, .tenant = tenant,
				    .limits = conf_limits_for(c, strcmp(tenant, "default") ? tenant : NULL) };
	return in;
}

static void test_max_queries_per_request_rejects_above_the_limit(void **state)
{
	struct conf *c = load("limits: {max_queries_per_request: 2}\n");
	struct limiter_input in = input(c, "default");
	struct limiter_decision d;

	(void)state;
	limiter_check_request(&in, 2, &d);
	assert_int_equal(d.verdict, LIMITER_ADMIT);
	limiter_check_request(&in, 3, &d);
	assert_int_equal(d.verdict, LIMITER_REJECT);
	assert_string_equal(d.reason, "queries_per_request");
	assert_string_equal(d.key, "limits.max_queries_per_request");
	assert_int_equal(d.value, 3);
	conf_unref(c);
}

static void test_rejects_selector_without_metric_name(void **state)
{
	struct conf *c = load("");
	struct limiter_input in = input(c, "default");
	struct proto_matcher job[] = { { PROTO_MATCH_EQ, "job", "api" } };
	struct proto_matcher named[] = { { PROTO_MATCH_EQ, "__name__", "up" }, { PROTO_MATCH_EQ, "job", "api" } };
	struct proto_query q = query(HOUR_MS, job, 1);
	struct limiter_decision d;

	(void)state;
	limiter_check_structure(&in, &q, &d);
	assert_int_equal(d.verdict, LIMITER_REJECT);
	assert_string_equal(d.reason, "metric_name");
	assert_string_equal(d.key, "limits.require_metric_name");
	q = query(HOUR_MS, named, 2);
	limiter_check_structure(&in, &q, &d);
	assert_int_equal(d.verdict, LIMITER_ADMIT);
	conf_unref(c);
}

static void test_rejects_catch_all_name_regex_but_not_bounded_ones(void **state)
{
	struct conf *c = load("");
	struct limiter_input in = input(c, "default");
	static const char *catch_all[] = { ".+", ".*", ".*.*", "(.*)" };
	static const char *bounded[] = { "up|node_load1", "http_.*", "container_cpu_usage_seconds_total" };
	struct limiter_decision d;

	(void)state;
	for (size_t i = 0; i < sizeof(catch_all) / sizeof(catch_all[0]); i++) {
		struct proto_matcher m[] = { { PROTO_MATCH_RE, "__name__", catch_all[i] } };
		struct proto_query q = query(HOUR_MS, m, 1);
		limiter_check_structure(&in, &q, &d);
		if (d.verdict != LIMITER_REJECT || strcmp(d.reason, "metric_name") != 0)
			fail_msg("%s was admitted", catch_all[i]);
	}
	for (size_t i = 0; i < sizeof(bounded) / sizeof(bounded[0]); i++) {
		struct proto_matcher m[] = { { PROTO_MATCH_RE, "__name__", bounded[i] } };
		struct proto_query q = query(HOUR_MS, m, 1);
		limiter_check_structure(&in, &q, &d);
		if (d.verdict != LIMITER_ADMIT)
			fail_msg("%s was rejected (%s)", bounded[i], d.reason);
	}
	conf_unref(c);
}

static void test_require_metric_name_off_admits_nameless(void **state)
{
	struct conf *c = load("limits: {require_metric_name: false}\n");
	struct limiter_input in = input(c, "default");
	struct proto_matcher m[] = { { PROTO_MATCH_EQ, "job", "api" } };
	struct proto_query q = query(HOUR_MS, m, 1);
	struct limiter_decision d;

	(void)state;
	limiter_check_structure(&in, &q, &d);
	assert_int_equal(d.verdict, LIMITER_ADMIT);
	conf_unref(c);
}

static void test_max_regex_length_bounds_each_regex(void **state)
{
	struct conf *c = load("limits: {max_regex_length: 8}\n");
	struct limiter_input in = input(c, "default");
	struct proto_matcher ok[] = { { PROTO_MATCH_EQ, "__name__", "up" }, { PROTO_MATCH_RE, "pod", "a.*|b.*" } };
	struct proto_matcher long_re[] = { { PROTO_MATCH_EQ, "__name__", "up" }, { PROTO_MATCH_NRE, "pod", "abcdefghij" } };
	struct proto_matcher long_eq[] = { { PROTO_MATCH_EQ, "__name__", "up" }, { PROTO_MATCH_EQ, "pod", "abcdefghij" } };
	struct proto_query q = query(HOUR_MS, ok, 2);
	struct limiter_decision d;

	(void)state;
	limiter_check_structure(&in, &q, &d);
	assert_int_equal(d.verdict, LIMITER_ADMIT);
	q = query(HOUR_MS, long_re, 2);
	limiter_check_structure(&in, &q, &d);
	assert_int_equal(d.verdict, LIMITER_REJECT);
	assert_string_equal(d.reason, "regex");
	assert_int_equal(d.value, 10);
	q = query(HOUR_MS, long_eq, 2); /* equality values are not regexes */
	limiter_check_structure(&in, &q, &d);
	assert_int_equal(d.verdict, LIMITER_ADMIT);
	conf_unref(c);
}

static void test_max_range_rejects_longer_queries_only_when_set(void **state)
{
	struct conf *off = load("");
	struct conf *on = load("limits: {max_range: 1h}\n");
	struct proto_matcher m[] = { { PROTO_MATCH_EQ, "__name__", "up" } };
	struct proto_query q = query(2 * HOUR_MS, m, 1);
	struct limiter_input in = input(off, "default");
	struct limiter_decision d;

	(void)state;
	limiter_check_structure(&in, &q, &d);
	assert_int_equal(d.verdict, LIMITER_ADMIT);
	in = input(on, "default");
	limiter_check_structure(&in, &q, &d);
	assert_int_equal(d.verdict, LIMITER_REJECT);
	assert_string_equal(d.reason, "range");
	assert_int_equal(d.value, 2 * HOUR_MS);
	q = query(HOUR_MS, m, 1);
	limiter_check_structure(&in, &q, &d);
	assert_int_equal(d.verdict, LIMITER_ADMIT);
	conf_unref(off);
	conf_unref(on);
}

static void test_estimate_checks_series_samples_and_bytes(void **state)
{
	struct conf *c = load("limits: {max_series: 100, max_samples: 1000, max_response_bytes: 1MiB}\n");
	struct limiter_input in = input(c, "default");
	struct proto_matcher m[] = { { PROTO_MATCH_EQ, "__name__", "up" } };
	struct proto_query q = query(HOUR_MS, m, 1);
	struct est_result e = { .source = EST_SOURCE_STATS, .series = 100, .samples = 1000, .bytes = 1 << 20 };
	struct limiter_decision d;

	(void)state;
	limiter_check_estimate(&in, &q, &e, &d);
	assert_int_equal(d.verdict, LIMITER_ADMIT); /* at the limit is within it */
	e.series = 101;
	limiter_check_estimate(&in, &q, &e, &d);
	assert_string_equal(d.reason, "series");
	assert_int_equal(d.actual, 0);
	e.series = 10;
	e.samples = 1001;
	limiter_check_estimate(&in, &q, &e, &d);
	assert_string_equal(d.reason, "samples");
	e.samples = 10;
	e.bytes = (1 << 20) + 1;
	limiter_check_estimate(&in, &q, &e, &d);
	assert_string_equal(d.reason, "response_bytes");
	conf_unref(c);
}

static void test_actual_counts_are_checked_like_estimates(void **state)
{
	struct conf *c = load("limits: {max_series: 100, max_samples: 1000, max_response_bytes: 1KiB}\n");
	struct limiter_input in = input(c, "default");
	struct limiter_decision d;

	(void)state;
	limiter_check_actual(&in, 100, 1000, 1024, &d);
	assert_int_equal(d.verdict, LIMITER_ADMIT);
	limiter_check_actual(&in, 101, 0, 0, &d);
	assert_int_equal(d.verdict, LIMITER_REJECT);
	assert_string_equal(d.reason, "series");
	assert_int_equal(d.actual, 1);
	limiter_check_actual(&in, 0, 1001, 0, &d);
	assert_string_equal(d.reason, "samples");
	limiter_check_actual(&in, 0, 0, 1025, &d);
	assert_string_equal(d.reason, "response_bytes");
	conf_unref(c);
}

static void test_tenant_override_applies_and_names_its_key(void **state)
{
	struct conf *c = load("limits: {max_series: 100}\ntenants:\n  team-a: {max_series: 10}\n");
	struct limiter_input def = input(c, "default"), a = input(c, "team-a");
	struct proto_matcher m[] = { { PROTO_MATCH_EQ, "__name__", "up" } };
	struct proto_query q = query(HOUR_MS, m, 1);
	struct est_result e = { .source = EST_SOURCE_RECALL, .series = 50 };
	struct limiter_decision d;

	(void)state;
	limiter_check_estimate(&def, &q, &e, &d);
	assert_int_equal(d.verdict, LIMITER_ADMIT);
	limiter_check_estimate(&a, &q, &e, &d);
	assert_int_equal(d.verdict, LIMITER_REJECT);
	assert_string_equal(d.key, "tenants.team-a.max_series");
	assert_int_equal(d.limit, 10);
	conf_unref(c);
}

static void test_dry_run_mode_turns_rejections_into_shadows(void **state)
{
	struct conf *c = load("mode: dry_run\nlimits: {max_series: 10}\n");
	struct limiter_input in = input(c, "default");
	struct limiter_decision d;

	(void)state;
	limiter_check_actual(&in, 11, 0, 0, &d);
	assert_int_equal(d.verdict, LIMITER_SHADOW_REJECT);
	assert_string_equal(d.reason, "series");
	conf_unref(c);
}

/* Evaluate the one configured rule against <m>; returns the verdict. */
static enum limiter_verdict rule_verdict(const char *when, struct proto_matcher *m, size_t n, int64_t range_ms,
					 uint64_t estimate)
{
	char yaml[1024];
	struct conf *c;
	struct limiter_input in;
	struct proto_query q = query(range_ms, m, n);
	struct est_result e = { .source = EST_SOURCE_STATS, .series = estimate };
	struct limiter_decision d;

	snprintf(yaml, sizeof(yaml), "limits: {require_metric_name: false}\nrules:\n  - name: r1\n    when: %s\n", when);
	c = load(yaml);
	in = input(c, "default");
	limiter_check_structure(&in, &q, &d);
	if (d.verdict == LIMITER_ADMIT)
		limiter_check_estimate(&in, &q, &e, &d);
	if (d.verdict != LIMITER_ADMIT) {
		assert_string_equal(d.reason, "rule");
		assert_string_equal(d.key, "rules.r1");
		assert_string_equal(d.rule, "r1");
	}
	conf_unref(c);
	return d.verdict;
}

static void test_rule_metric_exact(void **state)
{
	struct proto_matcher up[] = { { PROTO_MATCH_EQ, "__name__", "up" } };
	struct proto_matcher other[] = { { PROTO_MATCH_EQ, "__name__", "down" } };

	(void)state;
	assert_int_equal(rule_verdict("{metric: up}", up, 1, HOUR_MS, 0), LIMITER_REJECT);
	assert_int_equal(rule_verdict("{metric: up}", other, 1, HOUR_MS, 0), LIMITER_ADMIT);
}

static void test_rule_container_metrics_need_a_namespace(void **state)
{
	const char *when = "{metric_regex: \"container_.*\", lacks_label: [namespace]}";
	struct proto_matcher pod_only[] = { { PROTO_MATCH_EQ, "__name__", "container_cpu" }, { PROTO_MATCH_EQ, "pod", "x" } };
	struct proto_matcher with_ns[] = { { PROTO_MATCH_EQ, "__name__", "container_cpu" },
					   { PROTO_MATCH_EQ, "namespace", "a" } };
	struct proto_matcher ns_re[] = { { PROTO_MATCH_EQ, "__name__", "container_cpu" },
					 { PROTO_MATCH_RE, "namespace", "a|b" } };
	struct proto_matcher ns_any[] = { { PROTO_MATCH_EQ, "__name__", "container_cpu" },
					  { PROTO_MATCH_RE, "namespace", ".*" } };
	struct proto_matcher other[] = { { PROTO_MATCH_EQ, "__name__", "node_cpu" } };
	struct proto_matcher name_re[] = { { PROTO_MATCH_RE, "__name__", "contain.*" } };

	(void)state;
	assert_int_equal(rule_verdict(when, pod_only, 2, HOUR_MS, 0), LIMITER_REJECT);
	assert_int_equal(rule_verdict(when, with_ns, 2, HOUR_MS, 0), LIMITER_ADMIT);
	assert_int_equal(rule_verdict(when, ns_re, 2, HOUR_MS, 0), LIMITER_ADMIT);
	/* =~".*" also matches the empty value: it does not narrow the namespace */
	assert_int_equal(rule_verdict(when, ns_any, 2, HOUR_MS, 0), LIMITER_REJECT);
	assert_int_equal(rule_verdict(when, other, 1, HOUR_MS, 0), LIMITER_ADMIT);
	/* an open-ended name regex cannot dodge the rule */
	assert_int_equal(rule_verdict(when, name_re, 1, HOUR_MS, 0), LIMITER_REJECT);
}

static void test_rule_has_label(void **state)
{
	struct proto_matcher with[] = { { PROTO_MATCH_EQ, "__name__", "up" }, { PROTO_MATCH_NEQ, "pod", "" } };
	struct proto_matcher without[] = { { PROTO_MATCH_EQ, "__name__", "up" } };

	(void)state;
	assert_int_equal(rule_verdict("{has_label: [pod]}", with, 2, HOUR_MS, 0), LIMITER_REJECT);
	assert_int_equal(rule_verdict("{has_label: [pod]}", without, 1, HOUR_MS, 0), LIMITER_ADMIT);
}

static void test_rule_matcher_types(void **state)
{
	struct proto_matcher nre[] = { { PROTO_MATCH_EQ, "__name__", "up" }, { PROTO_MATCH_NRE, "pod", "a.*" } };
	struct proto_matcher eq[] = { { PROTO_MATCH_EQ, "__name__", "up" } };

	(void)state;
	assert_int_equal(rule_verdict("{matcher_types: [nre, neq]}", nre, 2, HOUR_MS, 0), LIMITER_REJECT);
	assert_int_equal(rule_verdict("{matcher_types: [nre, neq]}", eq, 1, HOUR_MS, 0), LIMITER_ADMIT);
}

static void test_rule_range_above(void **state)
{
	struct proto_matcher m[] = { { PROTO_MATCH_EQ, "__name__", "up" } };

	(void)state;
	assert_int_equal(rule_verdict("{range_above: 1d}", m, 1, 25 * HOUR_MS, 0), LIMITER_REJECT);
	assert_int_equal(rule_verdict("{range_above: 1d}", m, 1, 24 * HOUR_MS, 0), LIMITER_ADMIT);
}

static void test_rule_estimate_above(void **state)
{
	struct proto_matcher m[] = { { PROTO_MATCH_EQ, "__name__", "up" } };

	(void)state;
	assert_int_equal(rule_verdict("{estimate_above: 500}", m, 1, HOUR_MS, 501), LIMITER_REJECT);
	assert_int_equal(rule_verdict("{estimate_above: 500}", m, 1, HOUR_MS, 500), LIMITER_ADMIT);
}

static void test_dry_run_rule_does_not_hide_a_real_limit(void **state)
{
	struct conf *c = load("limits: {max_range: 1h}\nrules:\n  - {name: watch, action: dry_run, when: {metric: up}}\n");
	struct limiter_input in = input(c, "default");
	struct proto_matcher m[] = { { PROTO_MATCH_EQ, "__name__", "up" } };
	struct proto_query q = query(HOUR_MS, m, 1);
	struct limiter_decision d;

	(void)state;
	limiter_check_structure(&in, &q, &d);
	assert_int_equal(d.verdict, LIMITER_SHADOW_REJECT);
	assert_string_equal(d.reason, "rule");
	q = query(2 * HOUR_MS, m, 1);
	limiter_check_structure(&in, &q, &d);
	assert_int_equal(d.verdict, LIMITER_REJECT);
	assert_string_equal(d.reason, "range");
	conf_unref(c);
}

static void test_unknown_reject_only_when_nothing_is_known(void **state)
{
	struct conf *c = load("estimator: {unknown: reject}\n");
	struct limiter_input in = input(c, "default");
	struct est_result known = { .source = EST_SOURCE_HINT, .series = 5 }, unknown = { .source = EST_SOURCE_DEFAULT };
	struct limiter_decision d;

	(void)state;
	limiter_check_unknown(&in, &known, &d);
	assert_int_equal(d.verdict, LIMITER_ADMIT);
	limiter_check_unknown(&in, &unknown, &d);
	assert_int_equal(d.verdict, LIMITER_REJECT);
	assert_string_equal(d.reason, "unknown");
	conf_unref(c);
}

static void test_rejection_line_names_key_limit_figure_selector_range_tenant_source(void **state)
{
	struct conf *c = load("limits: {max_series: 100000}\n");
	struct limiter_input in = input(c, "default");
	struct proto_matcher m[] = { { PROTO_MATCH_EQ, "__name__", "up" }, { PROTO_MATCH_RE, "job", "a.*" } };
	struct proto_query q = { .start_ms = 0, .end_ms = HOUR_MS, .matchers = m, .n_matchers = 2 };
	struct est_result e = { .source = EST_SOURCE_STATS, .series = 250000 };
	struct limiter_decision d;
	char line[1024], hdr[256];

	(void)state;
	limiter_check_estimate(&in, &q, &e, &d);
	limiter_format_rejection(&d, &q, "team-a", "stats", line, sizeof(line));
	assert_string_equal(line, "promguard: query rejected: limits.max_series=100000 estimated 250000 for "
				  "up{job=~\"a.*\"} [1970-01-01T00:00:00.000Z,1970-01-01T01:00:00.000Z] tenant=team-a "
				  "(source=stats)");
	limiter_format_header(&d, 250000, "stats", hdr, sizeof(hdr));
	assert_string_equal(hdr, "reject; reason=series; estimate=250000; source=stats");
	conf_unref(c);
}

/* The header is built by hand (no snprintf): same text for admit, 0 and UINT64_MAX, and cut to
 * the buffer like snprintf, returning the length it needed. */
static void test_decision_header_text_and_truncation(void **state)
{
	struct limiter_decision admit = { .verdict = LIMITER_ADMIT, .reason = "series" };
	struct limiter_decision shadow = { .verdict = LIMITER_SHADOW_REJECT, .reason = "samples" };
	char hdr[256], small[12];
	size_t n;

	(void)state;
	n = limiter_format_header(&admit, 0, "none", hdr, sizeof(hdr));
	assert_string_equal(hdr, "admit; reason=none; estimate=0; source=none");
	assert_int_equal(n, strlen(hdr));
	limiter_format_header(&shadow, UINT64_MAX, "recall", hdr, sizeof(hdr));
	assert_string_equal(hdr, "shadow_reject; reason=samples; estimate=18446744073709551615; source=recall");
	n = limiter_format_header(&admit, 42, "stats", small, sizeof(small));
	assert_string_equal(small, "admit; reas");
	assert_int_equal(n, strlen("admit; reason=none; estimate=42; source=stats"));
	assert_int_equal(limiter_format_header(&admit, 42, "stats", NULL, 0), n);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_max_queries_per_request_rejects_above_the_limit),
		cmocka_unit_test(test_rejects_selector_without_metric_name),
		cmocka_unit_test(test_rejects_catch_all_name_regex_but_not_bounded_ones),
		cmocka_unit_test(test_require_metric_name_off_admits_nameless),
		cmocka_unit_test(test_max_regex_length_bounds_each_regex),
		cmocka_unit_test(test_max_range_rejects_longer_queries_only_when_set),
		cmocka_unit_test(test_estimate_checks_series_samples_and_bytes),
		cmocka_unit_test(test_actual_counts_are_checked_like_estimates),
		cmocka_unit_test(test_tenant_override_applies_and_names_its_key),
		cmocka_unit_test(test_dry_run_mode_turns_rejections_into_shadows),
		cmocka_unit_test(test_rule_metric_exact),
		cmocka_unit_test(test_rule_container_metrics_need_a_namespace),
		cmocka_unit_test(test_rule_has_label),
		cmocka_unit_test(test_rule_matcher_types),
		cmocka_unit_test(test_rule_range_above),
		cmocka_unit_test(test_rule_estimate_above),
		cmocka_unit_test(test_dry_run_rule_does_not_hide_a_real_limit),
		cmocka_unit_test(test_unknown_reject_only_when_nothing_is_known),
		cmocka_unit_test(test_rejection_line_names_key_limit_figure_selector_range_tenant_source),
		cmocka_unit_test(test_decision_header_text_and_truncation),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

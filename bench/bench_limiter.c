/*
 * bench_limiter: admission decision time, estimator memory and estimate accuracy.
 *
 *   bench_limiter [--series N] [--iterations N] [--per-class N]
 *
 * A generator makes metrics of 10 to 100,000 series (N in all, 1,000,000 by default) with five
 * labels of different shapes; every series is learned once, as if relayed in one full response
 * per metric. Then:
 *   decision   a typical one-query request is encoded with proto_request_encode, and each
 *              iteration times proto_request_decode + est_estimate + limiter_check_structure +
 *              limiter_check_estimate (+ free); median and p99 over the iterations;
 *   memory     est_get_stats' memory_bytes and the process RSS growth over learning;
 *   accuracy   new selectors per metric (other values via EQ, regexes over subsets, negations,
 *              combinations, __name__ regexes) estimated and compared with the exact count
 *              from the generator (matched with the same PCRE2 rules).
 * Prints one markdown table (bench/limiter.sh adds notes and writes bench/RESULTS.md).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "limiter/admission.h"
#include "limiter/estimator.h"
#include "limiter/regex.h"
#include "proto/request.h"
#include "proto/wire.h"
#include "proxy/conf.h"

#define DEFAULT_SERIES 1000000
#define DEFAULT_ITERATIONS 200000
#define DEFAULT_PER_CLASS 12    /* selectors per class per metric */
#define WARMUP_ITERATIONS 10000
#define SCRAPE_MS 15000
#define RANGE_MS (3600 * 1000)   /* one hour */
#define EST_BUDGET (64u << 20)   /* estimator.max_memory default */
#define REQUEST_CAP (4u << 20)   /* limits.max_request_bytes default */
#define MAX_METRICS 512
#define N_LABELS 6               /* __name__ + five */
#define VALUE_LEN 64
#define MAX_MATCHERS 4
#define SERIES_PER_INSTANCE 20
#define TARGET_MEDIAN_US 10.0
#define TARGET_MEMORY_MIB 64.0
#define TARGET_WITHIN 0.90
#define WITHIN_FACTOR 2.0

/* Metric sizes, cycled until the series total is reached: 10^1 .. 10^5 in half decades. */
static const uint32_t sizes[] = { 10, 32, 100, 316, 1000, 3162, 10000, 31623, 100000 };
static const char *const kinds[] = { "requests_total", "errors_total", "duration_seconds_bucket", "bytes",
				     "info" };
static const char *const jobs[] = { "api", "db", "cache", "queue", "auth", "web" };
static const unsigned job_weight[] = { 50, 20, 12, 8, 6, 4 }; /* percent: skewed */
static const char *const codes[] = { "200", "404", "500", "503", "302" };
static const unsigned code_weight[] = { 75, 10, 8, 5, 2 };

enum label_id { L_INSTANCE, L_JOB, L_NAMESPACE, L_CODE, L_POD, L__COUNT };
static const char *const label_names[L__COUNT] = { "instance", "job", "namespace", "code", "pod" };

struct metric {
	char name[48];
	uint32_t n;     /* series */
	uint32_t n_ns;  /* namespaces */
};

static struct metric metrics[MAX_METRICS];
static size_t n_metrics;
static uint64_t rng = 0x853c49e6748fea9bULL;

static uint64_t next_rand(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545f4914f6cdd1dULL;
}

/* Deterministic per-series hash for label choices (independent per <salt>). */
static uint64_t series_hash(uint32_t i, uint64_t salt)
{
	uint64_t x = (i + 1) * 0x9e3779b97f4a7c15ULL ^ salt;

	x ^= x >> 31;
	x *= 0xbf58476d1ce4e5b9ULL;
	return x ^ (x >> 29);
}

static unsigned weighted(uint64_t h, const unsigned *w, unsigned n)
{
	unsigned r = (unsigned)(h % 100);

	for (unsigned i = 0; i < n; i++) {
		if (r < w[i])
			return i;
		r -= w[i];
	}
	return n - 1;
}

/* Values of series <i> of <m>: the generator's only definition of the data. */
struct series {
	char v[L__COUNT][VALUE_LEN];
};

static void gen_series(const struct metric *m, uint32_t i, struct series *s)
{
	uint32_t inst = i / SERIES_PER_INSTANCE;
	unsigned njob = m->n < 6 ? m->n : 6;

	snprintf(s->v[L_INSTANCE], VALUE_LEN, "10.%u.%u.%u:9100", inst / 65536, inst / 256 % 256, inst % 256);
	snprintf(s->v[L_JOB], VALUE_LEN, "%s", jobs[weighted(series_hash(i, 1), job_weight, 6) % njob]);
	snprintf(s->v[L_NAMESPACE], VALUE_LEN, "ns-%u", (unsigned)(series_hash(i, 2) % m->n_ns));
	snprintf(s->v[L_CODE], VALUE_LEN, "%s", codes[weighted(series_hash(i, 3), code_weight, 5)]);
	snprintf(s->v[L_POD], VALUE_LEN, "pod-%u", i);
}

static void make_metrics(uint64_t total)
{
	uint64_t sum = 0;

	for (size_t k = 0; sum < total && n_metrics < MAX_METRICS; k++) {
		struct metric *m = &metrics[n_metrics++];
		uint64_t n = sizes[k % (sizeof(sizes) / sizeof(sizes[0]))];

		if (sum + n > total)
			n = total - sum;
		m->n = (uint32_t)n;
		m->n_ns = m->n / 40 < 2 ? 2 : m->n / 40 > 25 ? 25 : m->n / 40;
		snprintf(m->name, sizeof(m->name), "m%zu_%s", n_metrics - 1, kinds[k % 5]);
		sum += n;
	}
}

static void learn_all(struct est *e)
{
	struct series s;
	struct proto_label l[N_LABELS];

	for (size_t k = 0; k < n_metrics; k++) {
		const struct metric *m = &metrics[k];

		for (uint32_t i = 0; i < m->n; i++) {
			gen_series(m, i, &s);
			l[0] = (struct proto_label){ "__name__", 8, m->name, strlen(m->name) };
			for (int j = 0; j < L__COUNT; j++)
				l[j + 1] = (struct proto_label){ label_names[j], strlen(label_names[j]), s.v[j],
								 strlen(s.v[j]) };
			est_learn_series(e, "bench", l, N_LABELS);
		}
	}
}

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static double rss_mib(void)
{
	long pages = 0, resident = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (f) {
		if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
			resident = 0;
		fclose(f);
	}
	return (double)resident * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* --- decision time ----------------------------------------------------------------------------- */

static const char bench_conf[] =
	"upstream: {url: 'http://127.0.0.1:9090/api/v1/read'}\n"
	"rules:\n"
	"  - name: container-metrics-need-namespace\n"
	"    action: reject\n"
	"    when: {metric_regex: 'container_.*', lacks_label: [namespace]}\n"
	"  - name: wide-pod-regex\n"
	"    action: dry_run\n"
	"    when: {has_label: [pod], matcher_types: [re], estimate_above: 50000}\n";

struct timing {
	double median_us, p99_us;
	uint64_t series; /* the estimate, for the notes */
	const char *source;
	const char *verdict;
};

/* Time decode + estimate + structural and estimate checks of <body> over <iters> iterations. */
static struct timing time_decision(struct est *e, const struct limiter_input *in, const uint8_t *body, size_t len,
				   int iters)
{
	double *t = malloc(sizeof(double) * (size_t)iters);
	struct timing out = { 0 };
	char err[256];

	if (!t) {
		fprintf(stderr, "bench_limiter: out of memory\n");
		exit(1);
	}
	for (int i = -WARMUP_ITERATIONS; i < iters; i++) {
		struct proto_request *req = NULL;
		struct limiter_decision d;
		struct est_result r;
		uint64_t size = 0;
		double t0 = now_us();

		if (proto_request_decode(body, len, REQUEST_CAP, NULL, &req, &size, err, sizeof(err)) != 0) {
			fprintf(stderr, "bench_limiter: decode: %s\n", err);
			exit(1);
		}
		est_estimate(e, in->tenant, &req->queries[0], &r);
		limiter_check_structure(in, &req->queries[0], &d);
		if (d.verdict == LIMITER_ADMIT)
			limiter_check_estimate(in, &req->queries[0], &r, &d);
		proto_request_free(req);
		if (i >= 0)
			t[i] = now_us() - t0;
		out.series = r.series;
		out.source = est_source_name(r.source);
		out.verdict = d.verdict == LIMITER_ADMIT ? "admit" : d.verdict == LIMITER_REJECT ? "reject" : "shadow";
	}
	qsort(t, (size_t)iters, sizeof(double), cmp_double);
	out.median_us = t[iters / 2];
	out.p99_us = t[(size_t)iters * 99 / 100];
	free(t);
	return out;
}

/* Encode one query over the last hour with <n> matchers. Exits on failure. */
static void encode(const struct proto_matcher *m, size_t n, uint8_t **body, size_t *len)
{
	struct proto_query q = { 0 };
	struct proto_request req = { 0 };

	q.end_ms = 1795222800000LL;
	q.start_ms = q.end_ms - RANGE_MS;
	q.matchers = (struct proto_matcher *)m;
	q.n_matchers = n;
	req.queries = &q;
	req.n_queries = 1;
	if (proto_request_encode(&req, body, len) != 0) {
		fprintf(stderr, "bench_limiter: encode failed\n");
		exit(1);
	}
}

/* --- accuracy ---------------------------------------------------------------------------------- */

enum sel_class { C_EQ, C_RE_LITERAL, C_RE_PATTERN, C_NEQ, C_NRE, C_COMBO, C_NAME_RE, C__COUNT };
static const char *const class_names[C__COUNT] = {
	"EQ (other values)",   "RE literal alternation", "RE pattern over a subset", "NEQ",
	"NRE",                 "combination (2-3 matchers)", "__name__ regex + label",
};

/* One selector under test: matchers whose strings live in <buf>. */
struct selector {
	struct proto_matcher m[MAX_MATCHERS];
	size_t n;
	char buf[MAX_MATCHERS][2][256];
};

/* Copy <src> into <dst> of <n> bytes, truncating. */
static void copy_str(char *dst, size_t n, const char *src)
{
	size_t len = strnlen(src, n - 1);

	memcpy(dst, src, len);
	dst[len] = '\0';
}

static void sel_add(struct selector *s, const char *name, enum proto_match_type t, const char *value)
{
	size_t i = s->n++;

	copy_str(s->buf[i][0], sizeof(s->buf[i][0]), name);
	copy_str(s->buf[i][1], sizeof(s->buf[i][1]), value);
	s->m[i] = (struct proto_matcher){ t, s->buf[i][0], s->buf[i][1] };
}

/* The value of <label> in a random series of <m>. */
static void random_value(const struct metric *m, int label, char *out, size_t n)
{
	struct series s;

	gen_series(m, (uint32_t)(next_rand() % m->n), &s);
	snprintf(out, n, "%s", s.v[label]);
}

/* Escape regex metacharacters (the dots of an instance address). */
static void re_quote(const char *in, char *out, size_t n)
{
	size_t o = 0;

	for (; *in && o + 2 < n; in++) {
		if (strchr(".^$*+?()[]{}|\\", *in))
			out[o++] = '\\';
		out[o++] = *in;
	}
	out[o] = '\0';
}

/* An alternation of 2-4 distinct-ish values of <label> seen in <m>. */
static void literal_alternation(const struct metric *m, int label, char *out, size_t n)
{
	int k = 2 + (int)(next_rand() % 3);
	size_t o = 0;

	out[0] = '\0';
	for (int i = 0; i < k; i++) {
		char v[VALUE_LEN], q[2 * VALUE_LEN];

		random_value(m, label, v, sizeof(v));
		re_quote(v, q, sizeof(q));
		if (strstr(out, q))
			continue;
		o += (size_t)snprintf(out + o, n - o, "%s%s", o ? "|" : "", q);
	}
}

/* A non-literal regex over a subset of <label>'s values. */
static void pattern(const struct metric *m, int label, char *out, size_t n)
{
	char v[VALUE_LEN];

	random_value(m, label, v, sizeof(v));
	switch (label) {
	case L_NAMESPACE: /* ns-1, ns-1x: a prefix */
		snprintf(out, n, "ns-%c.*", v[3]);
		break;
	case L_INSTANCE: { /* one /24 */
		unsigned a = 0, b = 0;

		if (sscanf(v, "10.%u.%u.", &a, &b) != 2)
			a = b = 0;
		snprintf(out, n, "10\\.%u\\.%u\\..*", a, b);
		break;
	}
	case L_POD: /* pods with a given leading digit */
		snprintf(out, n, "pod-%c[0-9]*", v[4]);
		break;
	case L_CODE:
		snprintf(out, n, "%c..", v[0]);
		break;
	default:
		snprintf(out, n, "(%s|nonexistent).*", v);
	}
}

static const int narrow_labels[] = { L_INSTANCE, L_JOB, L_NAMESPACE, L_CODE, L_POD };
static const int re_labels[] = { L_INSTANCE, L_JOB, L_NAMESPACE, L_CODE };
static const int neg_labels[] = { L_JOB, L_NAMESPACE, L_CODE, L_INSTANCE };

#define PICK(a) (a)[next_rand() % (sizeof(a) / sizeof((a)[0]))]

/* Build a selector of class <c> about metric <m> (not counting __name__ for C_NAME_RE). */
static void make_selector(enum sel_class c, const struct metric *m, struct selector *s)
{
	char v[512];
	int label;

	s->n = 0;
	if (c != C_NAME_RE)
		sel_add(s, "__name__", PROTO_MATCH_EQ, m->name);
	switch (c) {
	case C_EQ:
		label = PICK(narrow_labels);
		random_value(m, label, v, sizeof(v));
		sel_add(s, label_names[label], PROTO_MATCH_EQ, v);
		break;
	case C_RE_LITERAL:
		label = PICK(re_labels);
		literal_alternation(m, label, v, sizeof(v));
		sel_add(s, label_names[label], PROTO_MATCH_RE, v);
		break;
	case C_RE_PATTERN:
		label = PICK(narrow_labels);
		pattern(m, label, v, sizeof(v));
		sel_add(s, label_names[label], PROTO_MATCH_RE, v);
		break;
	case C_NEQ:
		label = PICK(neg_labels);
		random_value(m, label, v, sizeof(v));
		sel_add(s, label_names[label], PROTO_MATCH_NEQ, v);
		break;
	case C_NRE:
		label = PICK(neg_labels);
		if (next_rand() % 2)
			literal_alternation(m, label, v, sizeof(v));
		else
			pattern(m, label, v, sizeof(v));
		sel_add(s, label_names[label], PROTO_MATCH_NRE, v);
		break;
	case C_COMBO:
		random_value(m, L_JOB, v, sizeof(v));
		sel_add(s, "job", next_rand() % 3 ? PROTO_MATCH_EQ : PROTO_MATCH_NEQ, v);
		if (next_rand() % 2) {
			pattern(m, L_NAMESPACE, v, sizeof(v));
			sel_add(s, "namespace", PROTO_MATCH_RE, v);
		} else {
			random_value(m, L_CODE, v, sizeof(v));
			sel_add(s, "code", PROTO_MATCH_EQ, v);
		}
		if (next_rand() % 2) {
			literal_alternation(m, L_INSTANCE, v, sizeof(v));
			sel_add(s, "instance", PROTO_MATCH_NRE, v);
		}
		break;
	case C_NAME_RE:
		/* m<d>.*: the metrics whose index starts with one digit, restricted by job. */
		snprintf(v, sizeof(v), "m%c.*_%s", m->name[1], strchr(m->name, '_') + 1);
		sel_add(s, "__name__", PROTO_MATCH_RE, v);
		random_value(m, L_JOB, v, sizeof(v));
		sel_add(s, "job", PROTO_MATCH_EQ, v);
		break;
	default:
		break;
	}
}

/*
 * Does series <sr> of metric <m> satisfy <sel>? (Compiled regexes in <re>.) With <sr> NULL only
 * the __name__ matchers are tested.
 */
static int series_matches(const struct metric *m, const struct series *sr, const struct selector *sel,
			  struct limiter_regex *const *re)
{
	for (size_t i = 0; i < sel->n; i++) {
		const struct proto_matcher *mt = &sel->m[i];
		const char *v = "";
		int hit;

		if (strcmp(mt->name, "__name__") == 0)
			v = m->name;
		else if (!sr)
			continue;
		for (int j = 0; sr && j < L__COUNT; j++)
			if (strcmp(mt->name, label_names[j]) == 0)
				v = sr->v[j];
		if (mt->type == PROTO_MATCH_EQ || mt->type == PROTO_MATCH_NEQ)
			hit = strcmp(v, mt->value) == 0;
		else
			hit = limiter_regex_match(re[i], v, strlen(v)) == 1;
		if (hit != (mt->type == PROTO_MATCH_EQ || mt->type == PROTO_MATCH_RE))
			return 0;
	}
	return 1;
}

/* Exact series count of <sel> over every generated metric. */
static uint64_t true_count(const struct selector *sel)
{
	struct limiter_regex *re[MAX_MATCHERS] = { 0 };
	struct series sr;
	uint64_t count = 0;
	char err[256];

	for (size_t i = 0; i < sel->n; i++) {
		if (sel->m[i].type == PROTO_MATCH_RE || sel->m[i].type == PROTO_MATCH_NRE) {
			re[i] = limiter_regex_get(sel->m[i].value, err, sizeof(err));
			if (!re[i]) {
				fprintf(stderr, "bench_limiter: bad regex %s: %s\n", sel->m[i].value, err);
				exit(1);
			}
		}
	}
	for (size_t k = 0; k < n_metrics; k++) {
		const struct metric *m = &metrics[k];

		/* Skip metrics the __name__ matchers exclude without walking their series. */
		if (!series_matches(m, NULL, sel, re))
			continue;
		for (uint32_t i = 0; i < m->n; i++) {
			gen_series(m, i, &sr);
			count += series_matches(m, &sr, sel, re);
		}
	}
	for (size_t i = 0; i < sel->n; i++)
		limiter_regex_release(re[i]);
	return count;
}

struct class_result {
	double *ratios;
	size_t n, within;
};

static void run_accuracy(struct est *e, int per_class, struct class_result *res, size_t *total, size_t *within)
{
	struct selector sel;
	struct proto_query q = { 0 };

	q.end_ms = RANGE_MS;
	for (int c = 0; c < C__COUNT; c++) {
		res[c].ratios = calloc(n_metrics * (size_t)per_class, sizeof(double));
		if (!res[c].ratios) {
			fprintf(stderr, "bench_limiter: out of memory\n");
			exit(1);
		}
		for (size_t k = 0; k < n_metrics; k++) {
			for (int j = 0; j < per_class; j++) {
				struct est_result r;
				uint64_t truth;
				double ratio;

				make_selector((enum sel_class)c, &metrics[k], &sel);
				q.matchers = sel.m;
				q.n_matchers = sel.n;
				truth = true_count(&sel);
				est_estimate(e, "bench", &q, &r);
				/* Both sides at least 1: "nothing" and "one series" are the same answer here. */
				ratio = (double)(r.series ? r.series : 1) / (double)(truth ? truth : 1);
				res[c].ratios[res[c].n++] = ratio;
				if (ratio >= 1 / WITHIN_FACTOR && ratio <= WITHIN_FACTOR)
					res[c].within++;
			}
		}
		*total += res[c].n;
		*within += res[c].within;
	}
}

/* --- main -------------------------------------------------------------------------------------- */

static const char *met(int ok)
{
	return ok ? "met" : "MISSED";
}

int main(int argc, char **argv)
{
	uint64_t total = DEFAULT_SERIES;
	int iters = DEFAULT_ITERATIONS, per_class = DEFAULT_PER_CLASS;
	struct est_settings st = { SCRAPE_MS, EST_BUDGET, NULL, 0 };
	struct est_stats stats;
	struct conf *conf = NULL;
	struct class_result res[C__COUNT] = { { 0 } };
	size_t n_sel = 0, n_within = 0;
	double rss0, rss1, t0, learn_s;
	struct est *e;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--series") && i + 1 < argc)
			total = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--iterations") && i + 1 < argc)
			iters = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--per-class") && i + 1 < argc)
			per_class = atoi(argv[++i]);
		else {
			fprintf(stderr, "usage: bench_limiter [--series N] [--iterations N] [--per-class N]\n");
			return 2;
		}
	}
	if (iters < 100 || per_class < 1 || total < 10) {
		fprintf(stderr, "bench_limiter: need --iterations >= 100, --per-class >= 1, --series >= 10\n");
		return 2;
	}
	if (conf_load_string("bench", bench_conf, strlen(bench_conf), &conf, NULL) != 0) {
		fprintf(stderr, "bench_limiter: the built-in config does not load\n");
		return 1;
	}
	make_metrics(total);

	/* Learning, memory. */
	rss0 = rss_mib();
	e = est_new(&st);
	if (!e) {
		fprintf(stderr, "bench_limiter: est_new failed\n");
		return 1;
	}
	t0 = now_us();
	learn_all(e);
	learn_s = (now_us() - t0) / 1e6;
	rss1 = rss_mib();
	est_get_stats(e, &stats);

	/* Decision time: a Grafana-style panel query on a 10,000-series metric. */
	const struct metric *dm = &metrics[n_metrics > 6 ? 6 : n_metrics - 1];
	struct limiter_input in = { conf, "bench", conf_limits_for(conf, "bench"), 0 };
	struct proto_matcher lit[] = {
		{ PROTO_MATCH_EQ, "__name__", dm->name },
		{ PROTO_MATCH_EQ, "job", "api" },
		{ PROTO_MATCH_RE, "instance", "10\\.0\\.0\\.3:9100|10\\.0\\.0\\.7:9100|10\\.0\\.1\\.12:9100" },
	};
	struct proto_matcher pat[] = {
		{ PROTO_MATCH_EQ, "__name__", dm->name },
		{ PROTO_MATCH_EQ, "job", "api" },
		{ PROTO_MATCH_RE, "namespace", "ns-1.*" },
		{ PROTO_MATCH_NEQ, "code", "200" },
	};
	uint8_t *body_lit, *body_pat;
	size_t len_lit, len_pat;
	encode(lit, 3, &body_lit, &len_lit);
	encode(pat, 4, &body_pat, &len_pat);
	struct timing tl = time_decision(e, &in, body_lit, len_lit, iters);
	struct timing tp = time_decision(e, &in, body_pat, len_pat, iters);

	/* Accuracy. */
	t0 = now_us();
	run_accuracy(e, per_class, res, &n_sel, &n_within);
	double acc_s = (now_us() - t0) / 1e6;
	double overall = n_sel ? (double)n_within / (double)n_sel : 0;

	printf("| benchmark | figure | target | |\n|---|---|---|---|\n");
	printf("| decision: decode + estimate + checks, `%s{job=\"api\",instance=~<3 addresses>}` (%zu B), median | %.2f µs (p99 %.2f µs) | median <= %.0f µs | %s |\n",
	       dm->name, len_lit, tl.median_us, tl.p99_us, TARGET_MEDIAN_US, met(tl.median_us <= TARGET_MEDIAN_US));
	printf("| decision: same, `{job=\"api\",namespace=~\"ns-1.*\",code!=\"200\"}` (%zu B), median | %.2f µs (p99 %.2f µs) | median <= %.0f µs | %s |\n",
	       len_pat, tp.median_us, tp.p99_us, TARGET_MEDIAN_US, met(tp.median_us <= TARGET_MEDIAN_US));
	printf("| decision estimates (series, source, verdict) | %llu %s %s; %llu %s %s | | |\n",
	       (unsigned long long)tl.series, tl.source, tl.verdict, (unsigned long long)tp.series, tp.source,
	       tp.verdict);
	printf("| estimator memory, %llu series learned in %zu metrics: memory_bytes | %.1f MiB | <= %.0f MiB | %s |\n",
	       (unsigned long long)total, n_metrics, stats.memory_bytes / 1048576.0, TARGET_MEMORY_MIB,
	       met(stats.memory_bytes / 1048576.0 <= TARGET_MEMORY_MIB));
	printf("| estimator memory: process RSS growth over learning | %.1f MiB | | |\n", rss1 - rss0);
	printf("| estimator: tracked label values, evictions | %llu, %llu | | |\n",
	       (unsigned long long)stats.label_values, (unsigned long long)stats.evictions);
	printf("| learning rate | %.2f M series/s (%.2f s) | | |\n", (double)total / learn_s / 1e6, learn_s);
	for (int c = 0; c < C__COUNT; c++) {
		qsort(res[c].ratios, res[c].n, sizeof(double), cmp_double);
		printf("| accuracy: %s (%zu selectors) | %.1f%% within %.0fx, median ratio %.2f (p10 %.2f, p90 %.2f) | | |\n",
		       class_names[c], res[c].n, 100.0 * (double)res[c].within / (double)res[c].n, WITHIN_FACTOR,
		       res[c].ratios[res[c].n / 2], res[c].ratios[res[c].n / 10], res[c].ratios[res[c].n * 9 / 10]);
		free(res[c].ratios);
	}
	printf("| accuracy: overall (%zu selectors, %.1f s) | %.1f%% within %.0fx | >= %.0f%% | %s |\n", n_sel, acc_s,
	       100.0 * overall, WITHIN_FACTOR, 100.0 * TARGET_WITHIN, met(overall >= TARGET_WITHIN));

	free(body_lit);
	free(body_pat);
	est_free(e);
	conf_free(conf);
	limiter_regex_cache_flush();
	return 0;
}

/*
 * fuzz_estimator: the estimator (limiter/estimator.h) under a small memory budget, fed hostile
 * label sets and learned outcomes the input describes, and asked for estimates in between.
 *
 * Input: a header, then operations until the input ends (at most MAX_OPS, MAX_SERIES series).
 *   byte 0     budget: 1 KiB << (n % 8) (1 .. 128 KiB), the estimator.max_memory of est_new
 *   byte 1     scrape interval: n * 1000 ms (0: the estimator's default)
 *   byte 2     hints: n % 4 of them, each a metric string and a 2-byte series figure
 *   then each operation starts with a byte, op = n % 8:
 *     0  learn one series: tenant, label count (1 byte, % 16), labels (string, string)
 *     1  learn the last series again, 1 + (byte % 64) times (repeated series)
 *     2  learn 1 + (2 bytes % 512) series of one metric, one label taking a new value each time
 *        (many values: top-K tracking, the reservoir, promotion)
 *     3  learn a query's outcome: tenant, query, then series, samples, bytes (4 bytes each)
 *     4  learn a probe's answer: tenant, query, series (4 bytes), truncated (1 byte)
 *     5  estimate a query for a tenant
 *     6  reconfigure: a new budget byte (as in the header) and new hints
 *     7  fingerprint a query with each tenant (order and duplicates must not matter)
 *   strings (see take_str): fixed names (__name__, job, ...), "", a name just over the
 *   estimator's name limit, values at and over its value limit, a fresh value per call, or up
 *   to 255 bytes of the input; a query is a count (% 8) of matchers (type, name, value).
 *
 * Properties checked:
 *   - memory: after every operation est stats memory_bytes <= memory_limit;
 *   - accounting: with a budget of 0 at the end everything learned is evicted and the memory
 *     figure is back to that of a fresh estimator (no bytes lost or counted twice);
 *   - an estimate's source is one of the five, and a second estimate of the same query answers
 *     the same series (estimates have no side effects on the figures);
 *   - a fingerprint does not depend on matcher order.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "limiter/estimator.h"
#include "proto/request.h"
#include "proto/wire.h"

#define MAX_OPS 256
#define MAX_SERIES 4096 /* series learned per input, to keep an input fast */
#define MAX_LABELS 16
#define MAX_MATCHERS 40 /* past the estimator's 32 (EST_FP_STACK, EST_MAX_MATCHERS) */
#define MAX_HINTS 3
#define STR_MAX 1100    /* longest string built (the name limit is 1024 bytes) */

/* Memory of a fresh estimator: its empty tables (measured once). */
static uint64_t fresh_memory;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct est_settings s = { .max_memory = 1 << 20 };
	struct est *e = est_new(&s);
	struct est_stats st;

	(void)argc;
	(void)argv;
	FUZZ_CHECK(e != NULL, "out of memory");
	est_get_stats(e, &st);
	fresh_memory = st.memory_bytes;
	est_free(e);
	return 0;
}

/* A string with its length, in storage owned by the caller (not NUL-terminated for labels). */
struct str {
	char buf[STR_MAX + 1];
	size_t len;
};

/* Per-input state: the counter behind "a fresh value per call" and the series to repeat. */
struct run {
	struct fuzz_in in;
	struct est *e;
	unsigned fresh;
	uint64_t series_learned;
	struct str tenant;
	struct str names[MAX_LABELS], values[MAX_LABELS];
	struct proto_label labels[MAX_LABELS];
	size_t n_labels;
};

/* Fill <s> from the input (see the header comment for the choices). Always NUL-terminated. */
static void take_str(struct run *r, struct str *s)
{
	static const char *const fixed[] = { "__name__", "job", "instance", "namespace", "pod", "le", "up", "a" };
	uint8_t b = fuzz_u8(&r->in);
	size_t n;
	const uint8_t *p;

	switch (b % 8) {
	case 0:
	case 1:
		s->len = strlen(fixed[(b >> 3) % 8]);
		memcpy(s->buf, fixed[(b >> 3) % 8], s->len);
		break;
	case 2:
		s->len = 0;
		break;
	case 3: /* around the name limit (1024) */
		s->len = 1020 + (b >> 3) % 8;
		memset(s->buf, 'n', s->len);
		break;
	case 4: /* around the value limit (256) */
		s->len = 254 + (b >> 3) % 6;
		memset(s->buf, 'v', s->len);
		break;
	case 5:
		s->len = (size_t)snprintf(s->buf, sizeof(s->buf), "f%u", r->fresh++);
		break;
	default:
		p = fuzz_take(&r->in, fuzz_u8(&r->in), &n);
		memcpy(s->buf, p, n);
		s->len = n;
		break;
	}
	s->buf[s->len] = '\0';
}

/* A query over the input's matchers; strings in <names>/<values>, C strings (cut at a NUL). */
struct query {
	struct proto_query q;
	struct proto_matcher m[MAX_MATCHERS];
	struct str names[MAX_MATCHERS], values[MAX_MATCHERS];
};

static void take_query(struct run *r, struct query *t)
{
	uint8_t n = fuzz_u8(&r->in) % (MAX_MATCHERS + 1);
	uint32_t range = fuzz_u32(&r->in);

	memset(&t->q, 0, sizeof(t->q));
	t->q.matchers = t->m;
	t->q.n_matchers = n;
	t->q.start_ms = 1795219200000LL;
	t->q.end_ms = t->q.start_ms + range;
	for (size_t i = 0; i < n; i++) {
		uint8_t type = fuzz_u8(&r->in);

		take_str(r, &t->names[i]);
		take_str(r, &t->values[i]);
		t->m[i] = (struct proto_matcher){ .type = (enum proto_match_type)(type % 4), .name = t->names[i].buf,
						  .value = t->values[i].buf };
	}
}

static void take_labels(struct run *r)
{
	r->n_labels = fuzz_u8(&r->in) % (MAX_LABELS + 1);
	for (size_t i = 0; i < r->n_labels; i++) {
		take_str(r, &r->names[i]);
		take_str(r, &r->values[i]);
		r->labels[i] = (struct proto_label){ r->names[i].buf, r->names[i].len, r->values[i].buf, r->values[i].len };
	}
}

/* Hints for est_new/est_configure; strings live in <store>. */
static size_t take_hints(struct run *r, struct est_hint *hints, struct str *store)
{
	size_t n = fuzz_u8(&r->in) % (MAX_HINTS + 1);

	for (size_t i = 0; i < n; i++) {
		take_str(r, &store[i]);
		hints[i] = (struct est_hint){ store[i].buf, fuzz_u16(&r->in) };
	}
	return n;
}

static uint64_t budget(uint8_t b)
{
	return (uint64_t)1024 << (b % 8);
}

static void check_memory(struct run *r, const char *after)
{
	struct est_stats st;

	est_get_stats(r->e, &st);
	FUZZ_CHECK(st.memory_bytes <= st.memory_limit, "after %s: %llu bytes accounted, budget %llu", after,
		   (unsigned long long)st.memory_bytes, (unsigned long long)st.memory_limit);
}

static void learn(struct run *r)
{
	est_learn_series(r->e, r->tenant.buf, r->labels, r->n_labels);
	r->series_learned++;
}

static void op_estimate(struct run *r)
{
	static struct query t; /* large: off the stack */
	struct est_result a, b;

	take_str(r, &r->tenant);
	take_query(r, &t);
	est_estimate(r->e, r->tenant.buf, &t.q, &a);
	FUZZ_CHECK(a.source <= EST_SOURCE_HINT, "source %d", (int)a.source);
	FUZZ_CHECK(a.fingerprint == est_fingerprint(r->tenant.buf, &t.q), "estimate and est_fingerprint differ");
	est_estimate(r->e, r->tenant.buf, &t.q, &b);
	FUZZ_CHECK(a.series == b.series && a.source == b.source, "estimated %llu (%s), then %llu (%s)",
		   (unsigned long long)a.series, est_source_name(a.source), (unsigned long long)b.series,
		   est_source_name(b.source));
}

static void op_fingerprint(struct run *r)
{
	static struct query t;
	struct proto_matcher rev[MAX_MATCHERS];
	struct proto_query q2;

	take_str(r, &r->tenant);
	take_query(r, &t);
	for (size_t i = 0; i < t.q.n_matchers; i++)
		rev[i] = t.m[t.q.n_matchers - 1 - i];
	q2 = t.q;
	q2.matchers = rev;
	FUZZ_CHECK(est_fingerprint(r->tenant.buf, &t.q) == est_fingerprint(r->tenant.buf, &q2),
		   "fingerprint depends on matcher order");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct run r; /* large (strings); static keeps it off the stack */
	struct est_hint hints[MAX_HINTS];
	static struct str hint_store[MAX_HINTS];
	struct est_settings s = { 0 };
	struct est_stats st;

	memset(&r, 0, sizeof(r));
	r.in = (struct fuzz_in){ data, size };
	s.max_memory = budget(fuzz_u8(&r.in));
	s.scrape_interval_ms = (int64_t)fuzz_u8(&r.in) * 1000;
	s.n_hints = take_hints(&r, hints, hint_store);
	s.hints = hints;
	r.e = est_new(&s);
	FUZZ_CHECK(r.e != NULL, "out of memory");
	check_memory(&r, "est_new");
	for (int ops = 0; ops < MAX_OPS && r.in.n > 0 && r.series_learned < MAX_SERIES; ops++) {
		uint8_t op = fuzz_u8(&r.in) % 8;
		static struct query t;
		uint32_t times;
		struct str *metric;

		switch (op) {
		case 0:
			take_str(&r, &r.tenant);
			take_labels(&r);
			learn(&r);
			check_memory(&r, "est_learn_series");
			break;
		case 1:
			times = 1 + fuzz_u8(&r.in) % 64;
			for (uint32_t i = 0; i < times; i++) {
				learn(&r);
				check_memory(&r, "est_learn_series (repeated)");
			}
			break;
		case 2:
			/* One metric (label 0 = __name__), label 1 takes a fresh value per series. */
			times = 1 + fuzz_u16(&r.in) % 512;
			take_str(&r, &r.tenant);
			metric = &r.values[0];
			take_str(&r, metric);
			take_str(&r, &r.names[1]);
			r.n_labels = 2;
			r.labels[0] = (struct proto_label){ "__name__", 8, metric->buf, metric->len };
			for (uint32_t i = 0; i < times && r.series_learned < MAX_SERIES; i++) {
				r.values[1].len = (size_t)snprintf(r.values[1].buf, sizeof(r.values[1].buf), "v%u",
								  i % 7 == 0 ? 0 : i);
				r.labels[1] = (struct proto_label){ r.names[1].buf, r.names[1].len, r.values[1].buf,
								    r.values[1].len };
				learn(&r);
				check_memory(&r, "est_learn_series (many values)");
			}
			break;
		case 3:
			take_str(&r, &r.tenant);
			take_query(&r, &t);
			{
				uint32_t series = fuzz_u32(&r.in), samples = fuzz_u32(&r.in), bytes = fuzz_u32(&r.in);

				est_learn_query(r.e, r.tenant.buf, &t.q, series, samples, bytes);
			}
			check_memory(&r, "est_learn_query");
			break;
		case 4:
			take_str(&r, &r.tenant);
			take_query(&r, &t);
			{
				uint32_t series = fuzz_u32(&r.in);

				est_learn_probe(r.e, r.tenant.buf, &t.q, series, fuzz_u8(&r.in) & 1);
			}
			check_memory(&r, "est_learn_probe");
			break;
		case 5:
			op_estimate(&r);
			check_memory(&r, "est_estimate");
			break;
		case 6:
			s.max_memory = budget(fuzz_u8(&r.in));
			s.n_hints = take_hints(&r, hints, hint_store);
			FUZZ_CHECK(est_configure(r.e, &s) == 0, "est_configure failed");
			check_memory(&r, "est_configure");
			break;
		case 7:
			op_fingerprint(&r);
			break;
		}
	}
	/* A budget of 0 evicts everything learned: what is left must be exactly the empty tables. */
	s.max_memory = 0;
	s.n_hints = 0;
	FUZZ_CHECK(est_configure(r.e, &s) == 0, "est_configure failed");
	est_get_stats(r.e, &st);
	FUZZ_CHECK(st.recall_entries == 0 && st.metrics == 0 && st.label_values == 0,
		   "budget 0 left %llu recall entries, %llu metrics, %llu values", (unsigned long long)st.recall_entries,
		   (unsigned long long)st.metrics, (unsigned long long)st.label_values);
	FUZZ_CHECK(st.memory_bytes == fresh_memory, "everything evicted, yet %llu bytes accounted (fresh: %llu)",
		   (unsigned long long)st.memory_bytes, (unsigned long long)fresh_memory);
	est_free(r.e);
	return 0;
}

/*
 * proto_request: decoding real and hand-built ReadRequests, the size caps, rejection of bad
 * input, the PromQL/range/hints printers and encode round trips.
 */
#include <errno.h>

#include "proto/request.h"
#include "proto_testutil.h"

#define CAP (1u << 20)

/* Vector figures (tests/vectors/README.md). */
#define VEC_START 1795219200000LL /* 2026-11-21T00:00:00Z */
#define VEC_END 1795222800000LL   /* 2026-11-21T01:00:00Z */

/* Counting allocator over malloc; optionally fails from the <fail_at>-th call on (1-based). */
struct counting_alloc {
	size_t allocs;
	size_t frees;
	size_t fail_at; /* 0: never fail */
};

static void *count_alloc(void *ctx, size_t size)
{
	struct counting_alloc *c = ctx;

	if (c->fail_at && c->allocs + 1 >= c->fail_at)
		return NULL;
	c->allocs++;
	return malloc(size);
}

static void count_free(void *ctx, void *ptr)
{
	struct counting_alloc *c = ctx;

	c->frees++;
	free(ptr);
}

/* Decode <raw> protobuf bytes after snappy-compressing them. */
static int decode_raw(const struct tbuf *raw, struct proto_request **req, char *err, size_t errlen)
{
	struct tbuf body = tb_snappy(raw->data, raw->len);
	uint64_t size = 0;
	int rc = proto_request_decode(body.data, body.len, CAP, NULL, req, &size, err, errlen);

	tb_free(&body);
	return rc;
}

/* Query {start, end, matcher __name__="up"} as field 1 of <req>. */
static void put_query(struct tbuf *req, int64_t start, int64_t end)
{
	struct tbuf q = { 0 }, m = { 0 };

	tb_vfield(&q, 1, (uint64_t)start);
	tb_vfield(&q, 2, (uint64_t)end);
	tb_str(&m, 2, "__name__");
	tb_str(&m, 3, "up");
	tb_msg(&q, 3, &m);
	tb_msg(req, 1, &q);
}

static void expect_err(const char *err, const char *needle)
{
	if (!strstr(err, needle))
		fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
}

static void test_decodes_real_prometheus_request(void **state)
{
	struct tbuf body = tb_vector("request.snappy");
	struct counting_alloc ca = { 0 };
	struct proto_alloc a = { count_alloc, count_free, &ca };
	struct proto_request *req;
	uint64_t size;
	char err[256], buf[256];

	(void)state;
	assert_int_equal(proto_request_decode(body.data, body.len, CAP, &a, &req, &size, err, sizeof(err)), 0);
	assert_int_equal(req->n_queries, 1);
	assert_int_equal(req->n_accepted_types, 0); /* 2.42 never asks for streamed chunks */
	assert_int_equal(req->decoded_bytes, 85);
	assert_int_equal(req->queries[0].start_ms, VEC_START);
	assert_int_equal(req->queries[0].end_ms, VEC_END);
	assert_int_equal(req->queries[0].n_matchers, 1);
	assert_int_equal(req->queries[0].matchers[0].type, PROTO_MATCH_EQ);
	assert_string_equal(req->queries[0].matchers[0].name, "__name__");
	assert_int_equal(req->queries[0].hints.present, 1);
	assert_int_equal(req->queries[0].hints.range_ms, 3600000);
	proto_selector_print(&req->queries[0], buf, sizeof(buf));
	assert_string_equal(buf, "promguard_vec_requests_total");
	proto_range_print(&req->queries[0], buf, sizeof(buf));
	assert_string_equal(buf, "[2026-11-21T00:00:00.000Z,2026-11-21T01:00:00.000Z]");
	proto_hints_print(&req->queries[0], buf, sizeof(buf));
	assert_string_equal(buf, "func=rate range=1h");
	assert_true(ca.allocs > 0);
	proto_request_free(req);
	assert_int_equal(ca.allocs, ca.frees);
	tb_free(&body);
}

/* A region allocator (free NULL): decode works the same and free touches nothing it allocated. */
struct region {
	unsigned char buf[16384];
	size_t used;
	unsigned allocs;
};

static void *region_alloc(void *ctx, size_t size)
{
	struct region *r = ctx;
	size_t need = (size + 15) & ~(size_t)15;
	void *p;

	if (need > sizeof(r->buf) - r->used)
		return NULL;
	p = r->buf + r->used;
	r->used += need;
	r->allocs++;
	return p;
}

static void test_region_allocator_is_never_freed_piece_by_piece(void **state)
{
	struct tbuf body = tb_vector("request.snappy");
	static struct region r;
	struct proto_alloc a = { region_alloc, NULL, &r };
	struct proto_request *req;
	uint64_t size;
	char err[256];

	(void)state;
	memset(&r, 0xa5, sizeof(r.buf)); /* a free of region memory would crash or be caught by ASan */
	r.used = 0;
	r.allocs = 0;
	assert_int_equal(proto_request_decode(body.data, body.len, CAP, &a, &req, &size, err, sizeof(err)), 0);
	assert_int_equal(req->n_queries, 1);
	assert_string_equal(req->queries[0].matchers[0].name, "__name__");
	assert_true(r.allocs > 0);
	proto_request_free(req);
	/* a failed decode in a region: nothing is freed either, and the error is the same */
	r.used = 0;
	assert_int_equal(proto_request_decode((const uint8_t *)"\x05garbage", 8, CAP, &a, &req, &size, err,
					      sizeof(err)), -EINVAL);
	tb_free(&body);
}

static void test_accepts_packed_and_unpacked_response_types(void **state)
{
	struct tbuf packed = { 0 }, unpacked = { 0 };
	struct proto_request *req;
	char err[256];

	(void)state;
	put_query(&packed, 0, 1);
	tb_lfield(&packed, 2, "\x01\x00", 2); /* Go's form: 12 02 01 00 */
	assert_int_equal(decode_raw(&packed, &req, err, sizeof(err)), 0);
	assert_int_equal(req->n_accepted_types, 2);
	assert_int_equal(req->accepted_types[0], PROTO_RESP_STREAMED_XOR_CHUNKS);
	assert_int_equal(req->accepted_types[1], PROTO_RESP_SAMPLES);
	proto_request_free(req);

	put_query(&unpacked, 0, 1);
	tb_vfield(&unpacked, 2, 1);
	tb_vfield(&unpacked, 2, 0);
	assert_int_equal(decode_raw(&unpacked, &req, err, sizeof(err)), 0);
	assert_int_equal(req->n_accepted_types, 2);
	assert_int_equal(req->accepted_types[0], PROTO_RESP_STREAMED_XOR_CHUNKS);
	assert_int_equal(req->accepted_types[1], PROTO_RESP_SAMPLES);
	proto_request_free(req);
	tb_free(&packed);
	tb_free(&unpacked);
}

static void test_keeps_unknown_response_type_values(void **state)
{
	struct tbuf raw = { 0 };
	struct proto_request *req;
	char err[256], name[32];

	(void)state;
	put_query(&raw, 0, 1);
	tb_lfield(&raw, 2, "\x07\x01", 2);
	assert_int_equal(decode_raw(&raw, &req, err, sizeof(err)), 0);
	assert_int_equal(req->n_accepted_types, 2);
	assert_int_equal(req->accepted_types[0], 7);
	assert_string_equal(proto_response_type_name(req->accepted_types[0], name, sizeof(name)), "UNKNOWN(7)");
	assert_string_equal(proto_response_type_name(req->accepted_types[1], name, sizeof(name)), "STREAMED_XOR_CHUNKS");
	assert_string_equal(proto_response_type_name(0, name, sizeof(name)), "SAMPLES");
	proto_request_free(req);
	tb_free(&raw);
}

static void test_rejects_unknown_matcher_type(void **state)
{
	struct tbuf raw = { 0 }, q = { 0 }, m = { 0 };
	struct proto_request *req;
	char err[256];

	(void)state;
	tb_vfield(&m, 1, 9);
	tb_str(&m, 2, "job");
	tb_str(&m, 3, "x");
	tb_msg(&q, 3, &m);
	tb_msg(&raw, 1, &q);
	assert_int_equal(decode_raw(&raw, &req, err, sizeof(err)), -EINVAL);
	assert_null(req);
	expect_err(err, "query 0: matcher 0 (job) has unknown type 9");
	tb_free(&raw);
}

static void test_skips_unknown_fields(void **state)
{
	struct tbuf raw = { 0 }, q = { 0 }, m = { 0 }, h = { 0 };
	struct proto_request *req;
	char err[256];
	static const uint8_t fixed[8];

	(void)state;
	tb_vfield(&m, 1, PROTO_MATCH_RE);
	tb_str(&m, 2, "job");
	tb_vfield(&m, 77, 1);
	tb_str(&m, 3, "a.*");
	tb_vfield(&q, 2, 5000);
	tb_msg(&q, 3, &m);
	tb_str(&h, 2, "sum");
	tb_key(&h, 40, 1);
	tb_put(&h, fixed, 8);
	tb_msg(&q, 4, &h);
	tb_str(&q, 99, "future");
	tb_key(&raw, 1000, 5);
	tb_put(&raw, fixed, 4);
	tb_msg(&raw, 1, &q);
	tb_vfield(&raw, 3, 42);
	assert_int_equal(decode_raw(&raw, &req, err, sizeof(err)), 0);
	assert_int_equal(req->n_queries, 1);
	assert_int_equal(req->queries[0].end_ms, 5000);
	assert_int_equal(req->queries[0].matchers[0].type, PROTO_MATCH_RE);
	assert_string_equal(req->queries[0].matchers[0].value, "a.*");
	assert_string_equal(req->queries[0].hints.func, "sum");
	proto_request_free(req);
	tb_free(&raw);
}

static void test_rejects_request_without_queries(void **state)
{
	struct tbuf raw = { 0 };
	struct proto_request *req;
	char err[256];

	(void)state;
	tb_lfield(&raw, 2, "\x00", 1); /* only accepted_response_types */
	assert_int_equal(decode_raw(&raw, &req, err, sizeof(err)), -EINVAL);
	assert_null(req);
	assert_string_equal(err, "no queries in read request");
	tb_free(&raw);
}

static void test_rejects_start_after_end_naming_query_and_times(void **state)
{
	struct tbuf raw = { 0 };
	struct proto_request *req;
	char err[256];

	(void)state;
	put_query(&raw, 0, 10);
	put_query(&raw, VEC_END, VEC_START);
	assert_int_equal(decode_raw(&raw, &req, err, sizeof(err)), -EINVAL);
	assert_null(req);
	expect_err(err, "query 1: start 1795222800000 is after end 1795219200000");
	expect_err(err, "[2026-11-21T01:00:00.000Z,2026-11-21T00:00:00.000Z]");
	tb_free(&raw);
}

static void test_rejects_huge_declared_length_before_allocating(void **state)
{
	struct tbuf body = { 0 };
	struct counting_alloc ca = { 0 };
	struct proto_alloc a = { count_alloc, count_free, &ca };
	struct proto_request *req;
	uint64_t size = 0;
	char err[256];

	(void)state;
	tb_varint(&body, 0xfffffff0u); /* claims ~4 GiB */
	tb_put(&body, "\x00\x61", 2);
	assert_int_equal(proto_request_decode(body.data, body.len, CAP, &a, &req, &size, err, sizeof(err)), -E2BIG);
	assert_null(req);
	assert_int_equal(size, 0xfffffff0u);
	assert_int_equal(ca.allocs, 0);
	expect_err(err, "decoded request of 4294967280 bytes is above the limit of 1048576 bytes");
	tb_free(&body);
}

static void test_rejects_compressed_body_over_cap(void **state)
{
	uint8_t body[64] = { 0 };
	struct proto_request *req;
	uint64_t size = 0;
	char err[256];

	(void)state;
	assert_int_equal(proto_request_decode(body, sizeof(body), 63, NULL, &req, &size, err, sizeof(err)), -E2BIG);
	assert_null(req);
	assert_int_equal(size, 64);
	expect_err(err, "request body of 64 bytes is above the limit of 63 bytes");
}

static void test_rejects_garbage_snappy(void **state)
{
	static const uint8_t header_only[] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	static const uint8_t bad_copy[] = { 0x08, 0x05, 0x01 }; /* 8 bytes from a copy before any output */
	struct proto_request *req;
	uint64_t size;
	char err[256];

	(void)state;
	assert_int_equal(proto_request_decode(header_only, sizeof(header_only), CAP, NULL, &req, &size, err, sizeof(err)),
			 -EINVAL);
	expect_err(err, "bad snappy");
	assert_int_equal(proto_request_decode(bad_copy, sizeof(bad_copy), CAP, NULL, &req, &size, err, sizeof(err)),
			 -EINVAL);
	assert_null(req);
	assert_string_equal(err, "bad snappy: corrupt input");
}

static void test_rejects_garbage_protobuf(void **state)
{
	struct tbuf raw = { 0 };
	struct proto_request *req;
	char err[256];

	(void)state;
	tb_put(&raw, "\x0a\x10\x08", 3); /* queries field claims 16 bytes, has 1 */
	assert_int_equal(decode_raw(&raw, &req, err, sizeof(err)), -EINVAL);
	assert_null(req);
	assert_string_equal(err, "bad protobuf: not a valid prometheus.ReadRequest");
	tb_free(&raw);
}

static void test_allocator_failure_is_enomem_and_leaks_nothing(void **state)
{
	struct tbuf body = tb_vector("request.snappy");
	struct proto_request *req;
	uint64_t size;
	char err[256];
	int seen_ok = 0;

	(void)state;
	for (size_t fail_at = 1; fail_at < 64 && !seen_ok; fail_at++) {
		struct counting_alloc ca = { .fail_at = fail_at };
		struct proto_alloc a = { count_alloc, count_free, &ca };
		int rc = proto_request_decode(body.data, body.len, CAP, &a, &req, &size, err, sizeof(err));

		if (rc == 0) {
			seen_ok = 1;
			proto_request_free(req);
		} else {
			assert_int_equal(rc, -ENOMEM);
			assert_null(req);
		}
		assert_int_equal(ca.allocs, ca.frees);
	}
	assert_true(seen_ok);
	tb_free(&body);
}

/* A query view over <m> for the printers. */
static struct proto_query query_of(struct proto_matcher *m, size_t n)
{
	return (struct proto_query){ .matchers = m, .n_matchers = n, .hints.func = "" };
}

static void test_selector_prints_metric_name_form(void **state)
{
	struct proto_matcher m[] = {
		{ PROTO_MATCH_EQ, "job", "a" },
		{ PROTO_MATCH_EQ, "__name__", "up" },
		{ PROTO_MATCH_RE, "x", "b.*" },
		{ PROTO_MATCH_NEQ, "y", "c" },
		{ PROTO_MATCH_NRE, "z", "d" },
	};
	struct proto_query q = query_of(m, 5);
	char buf[128];

	(void)state;
	assert_int_equal(proto_selector_print(&q, buf, sizeof(buf)), strlen("up{job=\"a\",x=~\"b.*\",y!=\"c\",z!~\"d\"}"));
	assert_string_equal(buf, "up{job=\"a\",x=~\"b.*\",y!=\"c\",z!~\"d\"}");
	q = query_of(&m[1], 1);
	proto_selector_print(&q, buf, sizeof(buf));
	assert_string_equal(buf, "up");
}

static void test_selector_without_usable_name_prints_all_matchers(void **state)
{
	struct proto_matcher re[] = { { PROTO_MATCH_RE, "__name__", ".+" }, { PROTO_MATCH_EQ, "job", "a" } };
	struct proto_matcher bad[] = { { PROTO_MATCH_EQ, "__name__", "1bad.name" } };
	struct proto_matcher utf8[] = { { PROTO_MATCH_EQ, "service.name", "x" } };
	struct proto_query q = query_of(re, 2);
	char buf[128];

	(void)state;
	proto_selector_print(&q, buf, sizeof(buf));
	assert_string_equal(buf, "{__name__=~\".+\",job=\"a\"}");
	q = query_of(bad, 1);
	proto_selector_print(&q, buf, sizeof(buf));
	assert_string_equal(buf, "{__name__=\"1bad.name\"}");
	q = query_of(utf8, 1);
	proto_selector_print(&q, buf, sizeof(buf));
	assert_string_equal(buf, "{\"service.name\"=\"x\"}");
	q = query_of(NULL, 0);
	proto_selector_print(&q, buf, sizeof(buf));
	assert_string_equal(buf, "{}");
}

/* fuzz_selector found this (tests/fuzz/regressions/selector/two-name-matchers-print-unparsable):
 * `a{__name__="b"}` names the metric twice, which PromQL refuses, so with a second __name__
 * matcher the name stays in braces. */
static void test_selector_with_two_name_matchers_keeps_them_in_braces(void **state)
{
	struct proto_matcher two[] = { { PROTO_MATCH_EQ, "__name__", "a" }, { PROTO_MATCH_EQ, "__name__", "b" } };
	struct proto_matcher neq[] = { { PROTO_MATCH_EQ, "job", "x" },
				       { PROTO_MATCH_EQ, "__name__", "up" },
				       { PROTO_MATCH_NEQ, "__name__", "down" } };
	struct proto_query q = query_of(two, 2);
	char buf[128];

	(void)state;
	proto_selector_print(&q, buf, sizeof(buf));
	assert_string_equal(buf, "{__name__=\"a\",__name__=\"b\"}");
	q = query_of(neq, 3);
	proto_selector_print(&q, buf, sizeof(buf));
	assert_string_equal(buf, "{job=\"x\",__name__=\"up\",__name__!=\"down\"}");
}

static void test_selector_escapes_label_values(void **state)
{
	struct proto_matcher m[] = { { PROTO_MATCH_EQ, "__name__", "up" },
				     { PROTO_MATCH_EQ, "v", "a\"b\\c\nd\te\x01" "é" } };
	struct proto_query q = query_of(m, 2);
	char buf[128];

	(void)state;
	proto_selector_print(&q, buf, sizeof(buf));
	assert_string_equal(buf, "up{v=\"a\\\"b\\\\c\\nd\\te\\x01é\"}");
}

static void test_printers_truncate_like_snprintf(void **state)
{
	struct proto_matcher m[] = { { PROTO_MATCH_EQ, "__name__", "up" }, { PROTO_MATCH_EQ, "job", "a\"" } };
	struct proto_query q = query_of(m, 2);
	const char *full = "up{job=\"a\\\"\"}";
	char buf[64];

	(void)state;
	for (size_t n = 0; n <= strlen(full) + 1; n++) {
		memset(buf, 'X', sizeof(buf));
		assert_int_equal(proto_selector_print(&q, n ? buf : NULL, n), strlen(full));
		if (n) {
			assert_int_equal(strlen(buf), n - 1 < strlen(full) ? n - 1 : strlen(full));
			assert_memory_equal(buf, full, strlen(buf));
		}
		assert_int_equal(buf[n], 'X'); /* nothing written past the buffer */
	}
	q.start_ms = 0;
	q.end_ms = 1;
	assert_int_equal(proto_range_print(&q, buf, 4), strlen("[1970-01-01T00:00:00.000Z,1970-01-01T00:00:00.001Z]"));
	assert_string_equal(buf, "[19");
}

static void test_range_prints_rfc3339_milliseconds(void **state)
{
	struct proto_query q = { .start_ms = 1795316400000LL, .end_ms = 1795320000123LL };
	char buf[128];

	(void)state;
	proto_range_print(&q, buf, sizeof(buf));
	assert_string_equal(buf, "[2026-11-22T03:00:00.000Z,2026-11-22T04:00:00.123Z]");
	q.start_ms = -1;
	q.end_ms = INT64_MAX;
	proto_range_print(&q, buf, sizeof(buf));
	assert_string_equal(buf, "[1969-12-31T23:59:59.999Z,9223372036854775807ms]");
}

/* fuzz_request found this (tests/fuzz/regressions/request/int64-min-start-ms): the millisecond
 * part was computed as ms - sec * 1000, which overflows for a start near INT64_MIN. */
static void test_range_prints_int64_extremes_without_overflow(void **state)
{
	struct proto_query q = { .start_ms = INT64_MIN, .end_ms = INT64_MAX };
	char buf[128];

	(void)state;
	proto_range_print(&q, buf, sizeof(buf));
	assert_string_equal(buf, "[-9223372036854775808ms,9223372036854775807ms]");
	q.start_ms = INT64_MIN + 1;
	q.end_ms = -1001;
	proto_range_print(&q, buf, sizeof(buf));
	assert_string_equal(buf, "[-9223372036854775807ms,1969-12-31T23:59:58.999Z]");
}

static void test_hints_print_step_func_range_and_grouping(void **state)
{
	const char *by[] = { "job", "instance" };
	struct proto_query q = { .hints = { .present = 1, .step_ms = 15000, .func = "rate", .range_ms = 300000,
					    .grouping = by, .n_grouping = 1, .by = 1 } };
	char buf[128];

	(void)state;
	proto_hints_print(&q, buf, sizeof(buf));
	assert_string_equal(buf, "step=15s func=rate range=5m by=(job)");
	q.hints = (struct proto_hints){ .present = 1, .func = "sum", .grouping = by, .n_grouping = 2, .step_ms = 90061001 };
	proto_hints_print(&q, buf, sizeof(buf));
	assert_string_equal(buf, "step=1d1h1m1s1ms func=sum without=(job,instance)");
	q.hints = (struct proto_hints){ .present = 0, .func = "rate", .step_ms = 1 };
	assert_int_equal(proto_hints_print(&q, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "");
}

static void test_encode_round_trips_through_decode(void **state)
{
	const char *grouping[] = { "job" };
	struct proto_matcher m[] = { { PROTO_MATCH_EQ, "__name__", "up" }, { PROTO_MATCH_NRE, "job", "x|y" } };
	struct proto_query qs[] = {
		{ .start_ms = -5, .end_ms = 7, .matchers = m, .n_matchers = 2,
		  .hints = { .present = 1, .step_ms = 1, .func = "max", .start_ms = 2, .end_ms = 3, .grouping = grouping,
			     .n_grouping = 1, .by = 1, .range_ms = 4 } },
		{ .start_ms = 8, .end_ms = 8, .hints.func = "" },
	};
	int types[] = { PROTO_RESP_STREAMED_XOR_CHUNKS, PROTO_RESP_SAMPLES };
	struct proto_request in = { .queries = qs, .n_queries = 2, .accepted_types = types, .n_accepted_types = 2 };
	struct proto_request *out;
	uint8_t *body;
	size_t len;
	uint64_t size;
	char err[256], a[128], b[128];

	(void)state;
	assert_int_equal(proto_request_encode(&in, &body, &len), 0);
	assert_int_equal(proto_request_decode(body, len, CAP, NULL, &out, &size, err, sizeof(err)), 0);
	assert_int_equal(out->n_queries, 2);
	assert_int_equal(out->n_accepted_types, 2);
	assert_int_equal(out->accepted_types[0], PROTO_RESP_STREAMED_XOR_CHUNKS);
	for (size_t i = 0; i < 2; i++) {
		const struct proto_query *x = &qs[i], *y = &out->queries[i];

		assert_int_equal(x->start_ms, y->start_ms);
		assert_int_equal(x->end_ms, y->end_ms);
		assert_int_equal(x->hints.present, y->hints.present);
		proto_selector_print(x, a, sizeof(a));
		proto_selector_print(y, b, sizeof(b));
		assert_string_equal(a, b);
		proto_hints_print(x, a, sizeof(a));
		proto_hints_print(y, b, sizeof(b));
		assert_string_equal(a, b);
	}
	assert_int_equal(out->queries[0].hints.start_ms, 2);
	assert_int_equal(out->queries[0].hints.end_ms, 3);
	proto_request_free(out);
	free(body);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_decodes_real_prometheus_request),
		cmocka_unit_test(test_region_allocator_is_never_freed_piece_by_piece),
		cmocka_unit_test(test_accepts_packed_and_unpacked_response_types),
		cmocka_unit_test(test_keeps_unknown_response_type_values),
		cmocka_unit_test(test_rejects_unknown_matcher_type),
		cmocka_unit_test(test_skips_unknown_fields),
		cmocka_unit_test(test_rejects_request_without_queries),
		cmocka_unit_test(test_rejects_start_after_end_naming_query_and_times),
		cmocka_unit_test(test_rejects_huge_declared_length_before_allocating),
		cmocka_unit_test(test_rejects_compressed_body_over_cap),
		cmocka_unit_test(test_rejects_garbage_snappy),
		cmocka_unit_test(test_rejects_garbage_protobuf),
		cmocka_unit_test(test_allocator_failure_is_enomem_and_leaks_nothing),
		cmocka_unit_test(test_selector_prints_metric_name_form),
		cmocka_unit_test(test_selector_without_usable_name_prints_all_matchers),
		cmocka_unit_test(test_selector_with_two_name_matchers_keeps_them_in_braces),
		cmocka_unit_test(test_selector_escapes_label_values),
		cmocka_unit_test(test_printers_truncate_like_snprintf),
		cmocka_unit_test(test_range_prints_rfc3339_milliseconds),
		cmocka_unit_test(test_range_prints_int64_extremes_without_overflow),
		cmocka_unit_test(test_hints_print_step_func_range_and_grouping),
		cmocka_unit_test(test_encode_round_trips_through_decode),
	};

	return cmocka_run_group_tests_name("proto_request", tests, NULL, NULL);
}

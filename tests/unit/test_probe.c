/*
 * limiter_probe: the series-probe target (URL-encoded selector, times in seconds), the series
 * path derived from the remote-read path, and the incremental counter over the store's JSON
 * answer (any split, strings with brackets, key order, errors), including a real answer from
 * Prometheus 2.42.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "limiter/probe.h"
#include "proto/request.h"

/* ---- target ---------------------------------------------------------------------------- */

static void test_target_encodes_selector_and_times(void **state)
{
	struct proto_matcher m[] = {
		{ PROTO_MATCH_EQ, "__name__", "up" },
		{ PROTO_MATCH_EQ, "job", "a b&c" },
		{ PROTO_MATCH_RE, "path", "/x.*~" },
	};
	struct proto_query q = { .start_ms = 1795219200000, .end_ms = 1795222800123, .matchers = m, .n_matchers = 3 };
	static const char want[] = "/api/v1/series?match[]=up%7Bjob%3D%22a%20b%26c%22%2Cpath%3D~%22%2Fx.%2A~%22%7D"
				   "&start=1795219200.000&end=1795222800.123";
	char buf[256];

	(void)state;
	assert_int_equal(limiter_probe_target("/api/v1/series", &q, buf, sizeof(buf)), strlen(want));
	assert_string_equal(buf, want);
}

static void test_target_encodes_non_ascii_and_escapes_byte_by_byte(void **state)
{
	struct proto_matcher m[] = { { PROTO_MATCH_NEQ, "l", "caf\xc3\xa9\n\"" } };
	struct proto_query q = { .start_ms = 0, .end_ms = 1, .matchers = m, .n_matchers = 1 };
	char buf[256];

	(void)state;
	/* Printed as {l!="café\n\""}: the UTF-8 bytes and the escape backslashes are encoded. */
	limiter_probe_target("/p", &q, buf, sizeof(buf));
	assert_string_equal(buf, "/p?match[]=%7Bl%21%3D%22caf%C3%A9%5Cn%5C%22%22%7D&start=0.000&end=0.001");
}

static void test_target_prints_negative_and_extreme_times(void **state)
{
	struct proto_matcher m[] = { { PROTO_MATCH_EQ, "__name__", "x" } };
	struct proto_query q = { .start_ms = -1500, .end_ms = INT64_MAX, .matchers = m, .n_matchers = 1 };
	char buf[256];

	(void)state;
	limiter_probe_target("/s", &q, buf, sizeof(buf));
	assert_string_equal(buf, "/s?match[]=x&start=-1.500&end=9223372036854775.807");
	q.start_ms = INT64_MIN;
	q.end_ms = -999;
	limiter_probe_target("/s", &q, buf, sizeof(buf));
	assert_string_equal(buf, "/s?match[]=x&start=-9223372036854775.808&end=-0.999");
}

static void test_target_truncates_like_snprintf(void **state)
{
	struct proto_matcher m[] = { { PROTO_MATCH_EQ, "__name__", "up" }, { PROTO_MATCH_EQ, "a", "b" } };
	struct proto_query q = { .start_ms = 1000, .end_ms = 2000, .matchers = m, .n_matchers = 2 };
	char full[256], buf[256];
	size_t len = limiter_probe_target("/api/v1/series", &q, full, sizeof(full));

	(void)state;
	assert_int_equal(limiter_probe_target("/api/v1/series", &q, NULL, 0), len);
	for (size_t n = 1; n <= len + 1; n++) {
		memset(buf, 'x', sizeof(buf));
		assert_int_equal(limiter_probe_target("/api/v1/series", &q, buf, n), len);
		assert_int_equal(strlen(buf), n - 1 < len ? n - 1 : len);
		assert_memory_equal(buf, full, strlen(buf));
	}
}

static void test_target_handles_selectors_longer_than_the_stack_copy(void **state)
{
	enum { VALUE = 5000 };
	char *value = malloc(VALUE + 1), *buf = malloc(3 * VALUE);
	struct proto_matcher m[] = { { PROTO_MATCH_RE, "job", value } };
	struct proto_query q = { .start_ms = 0, .end_ms = 0, .matchers = m, .n_matchers = 1 };
	static const char head[] = "/s?match[]=%7Bjob%3D~%22", tail[] = "%22%7D&start=0.000&end=0.000";
	size_t len;

	(void)state;
	assert_non_null(value);
	assert_non_null(buf);
	memset(value, 'a', VALUE);
	value[VALUE] = '\0';
	len = limiter_probe_target("/s", &q, buf, 3 * VALUE);
	assert_int_equal(len, strlen(head) + VALUE + strlen(tail));
	assert_memory_equal(buf, head, strlen(head));
	assert_string_equal(buf + strlen(head) + VALUE, tail);
	free(value);
	free(buf);
}

static void test_series_path_from_read_path(void **state)
{
	static const struct {
		const char *read, *series;
	} cases[] = {
		{ "/api/v1/read", "/api/v1/series" },
		{ "/api/v1/prom/remote/read", "/api/v1/series" },
		{ "/prometheus/api/v1/read", "/prometheus/api/v1/series" },
		{ "/api/prom/api/v1/read", "/api/prom/api/v1/series" },
		{ "/m3/api/v1/prom/remote/read", "/m3/api/v1/series" },
		{ "/api/v1/prom/read", "/api/v1/series" },
		{ "", "/api/v1/series" },
	};
	char buf[64], small[8];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		limiter_probe_series_path(cases[i].read, buf, sizeof(buf));
		assert_string_equal(buf, cases[i].series);
	}
	limiter_probe_series_path("/api/v1/read", small, sizeof(small));
	assert_string_equal(small, "/api/v1");
}

/* ---- counter --------------------------------------------------------------------------- */

/*
 * Count <doc> fed in pieces cut at <cuts>; every piece before the last must return 0. Returns the
 * last feed's result; *<series> gets the count and <err> the error line.
 */
static int count_pieces(const char *doc, size_t len, const size_t *cuts, size_t ncuts, uint64_t *series, char *err,
			size_t errlen)
{
	struct limiter_probe_count c;
	size_t at = 0;
	int rc = 0;

	limiter_probe_count_init(&c);
	for (size_t i = 0; i <= ncuts; i++) {
		size_t to = i < ncuts ? cuts[i] : len;

		rc = limiter_probe_count_feed(&c, doc + at, to - at, err, errlen);
		if (rc != 0)
			break;
		at = to;
	}
	*series = c.series;
	return rc;
}

/* Expect <doc> to complete with <want> series whole, at every single split and byte by byte. */
static void expect_count(const char *doc, uint64_t want)
{
	size_t len = strlen(doc);
	size_t *cuts = malloc((len + 1) * sizeof(*cuts));
	uint64_t series;
	char err[256] = "";
	int rc;

	assert_non_null(cuts);
	for (size_t cut = 0; cut <= len; cut++) {
		/* The document completes only with its last byte, so a cut at len leaves 0 bytes after. */
		if ((rc = count_pieces(doc, len, &cut, cut < len ? 1 : 0, &series, err, sizeof(err))) != 1)
			fail_msg("cut at %zu of %s: rc %d (%s)", cut, doc, rc, err);
		assert_int_equal(series, want);
	}
	for (size_t i = 0; i < len; i++)
		cuts[i] = i + 1;
	assert_int_equal(count_pieces(doc, len, cuts, len - 1, &series, err, sizeof(err)), 1);
	assert_int_equal(series, want);
	free(cuts);
}

/* Expect <doc> fed whole to fail with an error line containing <needle>. */
static void expect_rejected(const char *doc, const char *needle)
{
	uint64_t series;
	char err[256] = "";

	if (count_pieces(doc, strlen(doc), NULL, 0, &series, err, sizeof(err)) != -EBADMSG)
		fail_msg("%s was not rejected", doc);
	if (!strstr(err, needle))
		fail_msg("%s: error \"%s\" does not mention \"%s\"", doc, err, needle);
}

static void test_counts_objects_directly_inside_data(void **state)
{
	(void)state;
	expect_count("{\"status\":\"success\",\"data\":[{\"__name__\":\"up\",\"job\":\"a\"},{\"__name__\":\"up\"}]}", 2);
	expect_count("{\"status\":\"success\",\"data\":[]}", 0);
	expect_count("{\"status\":\"success\",\"data\":null}", 0);
	/* Nested objects and non-object entries are not series. */
	expect_count("{\"status\":\"success\",\"data\":[{\"a\":{\"b\":[{},{}]}},\"x\",1,[{}],{}]}", 2);
}

static void test_counter_ignores_brackets_and_quotes_inside_strings(void **state)
{
	(void)state;
	expect_count("{\"status\":\"success\",\"data\":[{\"a\":\"}{][\\\"\\\\\"},{\"b\\\"{[\":\"x]}\"}]}", 2);
	expect_count("{\"status\":\"success\",\"warnings\":[\"{\\\"data\\\":[{}]}\"],\"data\":[{}]}", 1);
	expect_count("{\"status\":\"success\",\"data\":[{\"u\":\"\\u007b\\u005D\\uD83D\\uDE00\"}]}", 1);
}

static void test_counter_accepts_any_key_order_and_white_space(void **state)
{
	(void)state;
	expect_count("{\"data\":[{\"a\":\"b\"},{}],\"status\":\"success\"}", 2);
	expect_count(" \r\n{ \"data\" :\n [\n\t{ \"a\" : \"b\" } ,\n\t{ }\n ] ,\t\"status\" : \"success\" , \"x\" : "
		     "[ true , false , null , -1.5e+3 , 0 , 2E-2 ] }\n\n",
		     2);
}

static void test_counter_is_live_before_the_document_ends(void **state)
{
	static const char doc[] = "{\"status\":\"success\",\"data\":[{\"a\":\"1\"},{\"a\":\"2\"},{\"a\":\"3\"}]}";
	struct limiter_probe_count c;
	const char *third = strstr(doc, "{\"a\":\"3\"");
	char err[256];

	(void)state;
	limiter_probe_count_init(&c);
	assert_int_equal(limiter_probe_count_feed(&c, doc, (size_t)(third - doc), err, sizeof(err)), 0);
	assert_int_equal(c.series, 2);
	assert_int_equal(limiter_probe_count_feed(&c, third, 1, err, sizeof(err)), 0);
	assert_int_equal(c.series, 3);
	assert_true(c.in_data);
	assert_int_equal(limiter_probe_count_feed(&c, third + 1, strlen(third + 1), err, sizeof(err)), 1);
	assert_true(c.done);
	assert_false(c.in_data);
	/* Trailing white space keeps the answer complete. */
	assert_int_equal(limiter_probe_count_feed(&c, " \n", 2, err, sizeof(err)), 1);
}

static void test_reports_status_error_with_the_store_text(void **state)
{
	/* Prometheus 2.42's answer to match[]=up{ */
	static const char real[] = "{\"status\":\"error\",\"errorType\":\"bad_data\",\"error\":\"invalid parameter "
				   "\\\"match[]\\\": 1:4: parse error: unexpected end of input inside braces\"}";

	(void)state;
	expect_rejected(real, "store answered \"status\":\"error\": invalid parameter \"match[]\": 1:4: parse error: "
			      "unexpected end of input inside braces");
	/* "error" before "status", escapes decoded, control characters as spaces. */
	expect_rejected("{\"error\":\"a\\nb\\u003cc\\u00e9\",\"data\":[{}],\"status\":\"error\"}",
			"store answered \"status\":\"error\": a b<c?");
	expect_rejected("{\"status\":\"error\"}", "store answered \"status\":\"error\"");
}

static void test_cuts_a_long_error_text_on_a_character_boundary(void **state)
{
	char doc[1024], err[512] = "";
	size_t len = 0;
	uint64_t series;

	(void)state;
	/* 199 ASCII bytes, then "é" (2 bytes) straddling the 200-byte cut, then more. */
	len += (size_t)snprintf(doc, sizeof(doc), "{\"status\":\"error\",\"error\":\"");
	memset(doc + len, 'x', 199);
	len += 199;
	len += (size_t)snprintf(doc + len, sizeof(doc) - len, "\xc3\xa9yyyy\"}");
	assert_int_equal(count_pieces(doc, len, NULL, 0, &series, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "xxx..."));
	assert_null(strstr(err, "\xc3"));
	assert_int_equal(strlen(strstr(err, ": x") + 2), 199 + 3);
}

static void test_rejects_malformed_json_and_unexpected_shapes(void **state)
{
	char deep[200];
	size_t n = 0;

	(void)state;
	expect_rejected("[]", "byte 0: the answer is not a JSON object");
	expect_rejected("<html>", "not a JSON object");
	expect_rejected("404 page not found", "not a JSON object");
	expect_rejected("{\"status\":\"success\",\"data\":[}", "byte 28: unexpected '}' where a value should start");
	expect_rejected("{\"status\":\"success\",\"data\":[{}}", "'}' does not close the open array");
	expect_rejected("{\"status\":\"success\",\"data\":[{]}", "expected a key string, found ']'");
	expect_rejected("{\"status\":\"success\" \"data\":[]}", "expected ',' or a closing bracket");
	expect_rejected("{\"status\":\"success\",\"data\":[],}", "expected a key string");
	expect_rejected("{\"status\":\"success\",\"data\":[1,]}", "unexpected ']'");
	expect_rejected("{\"status\":\"success\",\"data\":[01]}", "malformed number");
	expect_rejected("{\"status\":\"success\",\"data\":[1.]}", "malformed number");
	expect_rejected("{\"status\":\"success\",\"data\":[-]}", "malformed number");
	expect_rejected("{\"status\":\"success\",\"data\":[1e]}", "malformed number");
	expect_rejected("{\"status\":\"success\",\"data\":[tru]}", "invalid literal (want true)");
	expect_rejected("{\"status\":\"success\",\"data\":[nul1]}", "invalid literal");
	expect_rejected("{\"status\":\"success\",\"data\":[\"a\tb\"]}", "control character 0x09");
	expect_rejected("{\"status\":\"success\",\"data\":[\"\\q\"]}", "invalid escape \\q");
	expect_rejected("{\"status\":\"success\",\"data\":[\"\\u12G4\"]}", "invalid \\u escape");
	expect_rejected("{\"status\":\"success\",\"data\":[] x", "expected ',' or a closing bracket");
	expect_rejected("{\"status\":\"success\",\"data\":[]} x", "'x' after the end of the JSON document");
	expect_rejected("{\"status\" \"success\"}", "expected ':' after a key");
	expect_rejected("{\"status\":\"success\",\"data\":{}}", "\"data\" is not an array");
	expect_rejected("{\"status\":\"success\",\"data\":\"x\"}", "\"data\" is not an array");
	expect_rejected("{\"status\":1,\"data\":[]}", "\"status\" is not a string");
	expect_rejected("{\"status\":\"ok\",\"data\":[]}", "unknown \"status\" value \"ok\"");
	expect_rejected("{\"status\":\"successsuccesssuccess\",\"data\":[]}", "value \"successsuccesss...\"");
	expect_rejected("{\"data\":[]}", "answer has no \"status\"");
	expect_rejected("{\"status\":\"success\"}", "answer has no \"data\"");
	n += (size_t)snprintf(deep, sizeof(deep), "{\"status\":\"success\",\"x\":");
	for (int i = 0; i < 64; i++)
		deep[n++] = '[';
	deep[n] = '\0';
	expect_rejected(deep, "nested deeper than 64 levels");
}

static void test_an_incomplete_answer_is_not_complete(void **state)
{
	static const char doc[] = "{\"status\":\"success\",\"data\":[{}]}";
	uint64_t series;
	char err[256];

	(void)state;
	/* Every proper prefix leaves the counter waiting (the caller treats EOF then as an error). */
	for (size_t len = 0; len < strlen(doc); len++)
		assert_int_equal(count_pieces(doc, len, NULL, 0, &series, err, sizeof(err)), 0);
}

static void test_stays_failed_after_an_error(void **state)
{
	struct limiter_probe_count c;
	char err[256];

	(void)state;
	limiter_probe_count_init(&c);
	assert_int_equal(limiter_probe_count_feed(&c, "[", 1, err, sizeof(err)), -EBADMSG);
	assert_int_equal(limiter_probe_count_feed(&c, "{", 1, err, sizeof(err)), -EBADMSG);
	assert_string_equal(err, "probe answer already rejected");
}

/* tests/vectors/series_response.json, NUL-terminated. */
static char *read_series_vector(void)
{
	char path[1024], *doc;
	long size;
	FILE *f;

	snprintf(path, sizeof(path), "%s/series_response.json", VECTORS_DIR);
	f = fopen(path, "rb");
	if (!f)
		fail_msg("cannot open %s", path);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	size = ftell(f);
	assert_true(size > 0);
	rewind(f);
	doc = malloc((size_t)size + 1);
	assert_non_null(doc);
	assert_int_equal(fread(doc, 1, (size_t)size, f), (size_t)size);
	doc[size] = '\0';
	fclose(f);
	return doc;
}

static void test_counts_real_prometheus_series_answer(void **state)
{
	char *doc = read_series_vector();

	(void)state;
	expect_count(doc, 6);
	free(doc);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_target_encodes_selector_and_times),
		cmocka_unit_test(test_target_encodes_non_ascii_and_escapes_byte_by_byte),
		cmocka_unit_test(test_target_prints_negative_and_extreme_times),
		cmocka_unit_test(test_target_truncates_like_snprintf),
		cmocka_unit_test(test_target_handles_selectors_longer_than_the_stack_copy),
		cmocka_unit_test(test_series_path_from_read_path),
		cmocka_unit_test(test_counts_objects_directly_inside_data),
		cmocka_unit_test(test_counter_ignores_brackets_and_quotes_inside_strings),
		cmocka_unit_test(test_counter_accepts_any_key_order_and_white_space),
		cmocka_unit_test(test_counter_is_live_before_the_document_ends),
		cmocka_unit_test(test_reports_status_error_with_the_store_text),
		cmocka_unit_test(test_cuts_a_long_error_text_on_a_character_boundary),
		cmocka_unit_test(test_rejects_malformed_json_and_unexpected_shapes),
		cmocka_unit_test(test_an_incomplete_answer_is_not_complete),
		cmocka_unit_test(test_stays_failed_after_an_error),
		cmocka_unit_test(test_counts_real_prometheus_series_answer),
	};

	return cmocka_run_group_tests_name("limiter_probe", tests, NULL, NULL);
}

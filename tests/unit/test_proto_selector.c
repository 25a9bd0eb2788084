/*
 * proto_selector: PromQL series selectors parsed into matchers (names, operators, quotes, Go
 * escapes, whitespace), errors naming their offset, and round trips through
 * proto_selector_print.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "proto/request.h"
#include "proto/selector.h"

/* One expected matcher. */
struct want {
	enum proto_match_type type;
	const char *name;
	const char *value;
};

/* Parse <text> and expect exactly the <n> matchers in <want>, in order. */
static void expect_matchers(const char *text, const struct want *want, size_t n)
{
	struct proto_selector s;
	char err[256] = "";

	if (proto_selector_parse(text, &s, err, sizeof(err)) != 0)
		fail_msg("parse of %s failed: %s", text, err);
	assert_int_equal(s.n_matchers, n);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(s.matchers[i].type, want[i].type);
		assert_string_equal(s.matchers[i].name, want[i].name);
		assert_string_equal(s.matchers[i].value, want[i].value);
	}
	proto_selector_clear(&s);
}

/* Expect <text> to be rejected with -EINVAL and exactly "at offset <off>: ..." containing <needle>. */
static void expect_error(const char *text, size_t off, const char *needle)
{
	struct proto_selector s;
	char err[256] = "", prefix[32];

	assert_int_equal(proto_selector_parse(text, &s, err, sizeof(err)), -EINVAL);
	snprintf(prefix, sizeof(prefix), "at offset %zu: ", off);
	if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err, needle))
		fail_msg("%s: error \"%s\", want \"%s...%s\"", text, err, prefix, needle);
	/* A failed parse leaves nothing to free. */
	assert_null(s.matchers);
	assert_null(s.storage);
	assert_int_equal(s.n_matchers, 0);
}

static void test_parses_metric_names_with_colons(void **state)
{
	static const struct want w[] = { { PROTO_MATCH_EQ, "__name__", "job:http_requests:rate5m" } };
	static const struct want w2[] = { { PROTO_MATCH_EQ, "__name__", ":a_1" } };

	(void)state;
	expect_matchers("job:http_requests:rate5m", w, 1);
	expect_matchers(":a_1{}", w2, 1);
}

static void test_parses_all_four_operators(void **state)
{
	static const struct want w[] = {
		{ PROTO_MATCH_EQ, "__name__", "up" },  { PROTO_MATCH_EQ, "a", "1" },  { PROTO_MATCH_NEQ, "b", "2" },
		{ PROTO_MATCH_RE, "c", "3.*" },         { PROTO_MATCH_NRE, "d", "4|5" },
	};

	(void)state;
	expect_matchers("up{a=\"1\",b!=\"2\",c=~\"3.*\",d!~\"4|5\"}", w, 5);
}

static void test_parses_three_quote_styles(void **state)
{
	static const struct want w[] = {
		{ PROTO_MATCH_EQ, "a", "x'y" },
		{ PROTO_MATCH_EQ, "b", "x\"y" },
		{ PROTO_MATCH_RE, "c", "\\d+\\n\n\"'" }, /* raw: no escapes, may span lines */
	};

	(void)state;
	expect_matchers("{a=\"x'y\",b='x\"y',c=~`\\d+\\n\n\"'`}", w, 3);
}

static void test_decodes_go_escapes(void **state)
{
	static const struct want w[] = {
		{ PROTO_MATCH_EQ, "a", "\n\t\\\"" },
		{ PROTO_MATCH_EQ, "b", "'\\" },
		{ PROTO_MATCH_EQ, "c", "A\xff" },             /* \xNN: one raw byte */
		{ PROTO_MATCH_EQ, "d", "A\xc3\xa9" },         /* \101 octal, \u00e9 as UTF-8 */
		{ PROTO_MATCH_EQ, "e", "\xf0\x9f\x98\x80" }, /* \U0001F600 */
		{ PROTO_MATCH_EQ, "f", "\a\b\f\r\v" },
	};

	(void)state;
	expect_matchers("{a=\"\\n\\t\\\\\\\"\",b='\\'\\\\',c=\"\\x41\\xFF\",d=\"\\101\\u00e9\","
			"e='\\U0001F600',f=\"\\a\\b\\f\\r\\v\"}",
			w, 6);
}

static void test_rejects_bad_escapes_with_their_offset(void **state)
{
	(void)state;
	expect_error("{a=\"\\q\"}", 4, "unknown escape sequence \\q");
	expect_error("{a=\"\\'\"}", 4, "unknown escape sequence \\'");   /* \' only in '...' */
	expect_error("{a='\\\"'}", 4, "unknown escape sequence \\\"");   /* \" only in "..." */
	expect_error("{a=\"\\x4\"}", 4, "want 2 hex digits");
	expect_error("{a=\"\\u12\"}", 4, "want 4 hex digits");
	expect_error("{a=\"\\ud800\"}", 4, "not a valid Unicode code point");
	expect_error("{a=\"\\U00110000\"}", 4, "not a valid Unicode code point");
	expect_error("{a=\"\\400\"}", 4, "octal escape above \\377");
	expect_error("{a=\"\\18\"}", 4, "want 3 octal digits");
	expect_error("{a=\"x\\x00\"}", 5, "NUL");
	expect_error("{a=\"\\", 4, "unterminated string");
}

static void test_allows_whitespace_and_a_trailing_comma(void **state)
{
	static const struct want w[] = {
		{ PROTO_MATCH_EQ, "__name__", "up" },
		{ PROTO_MATCH_EQ, "a", "b" },
		{ PROTO_MATCH_NEQ, "c", "d" },
	};

	(void)state;
	expect_matchers(" \t\n up \r\n{  a = \"b\" ,\n\t c\t!=\t'd' , }  \n", w, 3);
	expect_matchers("up{a=\"b\",c!='d',}", w, 3);
}

static void test_name_matcher_in_braces_stays_a_matcher(void **state)
{
	static const struct want w[] = { { PROTO_MATCH_EQ, "__name__", "x" } };
	static const struct want w2[] = { { PROTO_MATCH_RE, "__name__", "node_.+" }, { PROTO_MATCH_EQ, "job", "a" } };

	(void)state;
	expect_matchers("{__name__=\"x\"}", w, 1);
	expect_matchers("{__name__=~\"node_.+\",job=\"a\"}", w2, 2);
}

static void test_accepts_quoted_label_names_as_printed_by_promql3(void **state)
{
	static const struct want w[] = { { PROTO_MATCH_EQ, "__name__", "up" }, { PROTO_MATCH_NEQ, "k8s.pod", "p" } };

	(void)state;
	expect_matchers("up{\"k8s.pod\"!=\"p\"}", w, 2);
}

static void test_rejects_malformed_selectors_naming_the_offset(void **state)
{
	(void)state;
	expect_error("", 0, "expected a metric name or '{'");
	expect_error("  9up", 2, "expected a metric name or '{'");
	expect_error("{}", 0, "empty selector");
	expect_error(" { } ", 1, "empty selector");
	expect_error("up{a=\"b}", 5, "unterminated string");
	expect_error("up{a='b\n'}", 5, "unterminated string");
	expect_error("up{a==\"b\"}", 4, "expected one of = != =~ !~ after label \"a\"");
	expect_error("up{a~\"b\"}", 4, "expected one of = != =~ !~");
	expect_error("up{a}", 4, "expected one of = != =~ !~");
	expect_error("up{a=b}", 5, "expected a label value in quotes");
	expect_error("up{,}", 3, "expected a label name");
	expect_error("up{1a=\"b\"}", 3, "expected a label name");
	expect_error("up{\"\"=\"b\"}", 3, "empty label name");
	expect_error("up{a=\"b\" c=\"d\"}", 9, "expected ',' or '}'");
	expect_error("up{a=\"b\",", 9, "expected a label name");
	expect_error("up{a=\"b\"", 8, "to close the '{' at offset 2");
	expect_error("up{a=\"b\"} x", 10, "unexpected 'x' after the selector");
	expect_error("up x", 3, "unexpected 'x'");
	expect_error("up[5m]", 2, "unexpected '['");
	expect_error("up{}{}", 4, "unexpected '{'");
	expect_error("foo{__name__=\"bar\"}", 0, "metric name set twice");
}

/* Parse <text>, print it, expect <printed>, and expect the printed text to parse to the same
 * matchers. */
static void expect_round_trip(const char *text, const char *printed)
{
	struct proto_selector a, b;
	struct proto_query q = { 0 };
	char err[256] = "", buf[512];

	if (proto_selector_parse(text, &a, err, sizeof(err)) != 0)
		fail_msg("parse of %s failed: %s", text, err);
	q.matchers = a.matchers;
	q.n_matchers = a.n_matchers;
	assert_true(proto_selector_print(&q, buf, sizeof(buf)) < sizeof(buf));
	assert_string_equal(buf, printed);
	if (proto_selector_parse(buf, &b, err, sizeof(err)) != 0)
		fail_msg("reparse of %s failed: %s", buf, err);
	assert_int_equal(b.n_matchers, a.n_matchers);
	for (size_t i = 0; i < a.n_matchers; i++) {
		assert_int_equal(b.matchers[i].type, a.matchers[i].type);
		assert_string_equal(b.matchers[i].name, a.matchers[i].name);
		assert_string_equal(b.matchers[i].value, a.matchers[i].value);
	}
	proto_selector_clear(&a);
	proto_selector_clear(&b);
}

static void test_round_trips_through_the_printer(void **state)
{
	(void)state;
	expect_round_trip("up", "up");
	expect_round_trip("{__name__=\"x\"}", "x");
	expect_round_trip("job:rate5m{ job = 'a' , }", "job:rate5m{job=\"a\"}");
	expect_round_trip("up{job=\"a\",x=~\"b.*\",y!=\"c\",z!~\"d\"}", "up{job=\"a\",x=~\"b.*\",y!=\"c\",z!~\"d\"}");
	expect_round_trip("{__name__=~\"node_.+\",instance=\"h:9100\"}", "{__name__=~\"node_.+\",instance=\"h:9100\"}");
	expect_round_trip("{__name__=\"has-dash\"}", "{__name__=\"has-dash\"}");
	expect_round_trip("a{l='q\"x\\\\'}", "a{l=\"q\\\"x\\\\\"}");
	expect_round_trip("a{l=`\\d+`}", "a{l=\"\\\\d+\"}");
	expect_round_trip("a{l=\"\\n\\t\\r\\x01\"}", "a{l=\"\\n\\t\\r\\x01\"}");
	expect_round_trip("a{l=\"caf\\u00e9\"}", "a{l=\"caf\xc3\xa9\"}");
	expect_round_trip("a{\"k8s.pod\"=\"p\"}", "a{\"k8s.pod\"=\"p\"}");
}

/* fuzz_selector found this (tests/fuzz/regressions/selector/two-name-matchers-print-unparsable):
 * the printer hoisted the first name out, printing `a{__name__="b"}`, which does not parse. */
static void test_two_name_matchers_round_trip_in_braces(void **state)
{
	(void)state;
	expect_round_trip("{__name__=\"a\",__name__=\"b\"}", "{__name__=\"a\",__name__=\"b\"}");
	expect_round_trip("{__name__=\"a\", __name__!~\"b.*\"}", "{__name__=\"a\",__name__!~\"b.*\"}");
}

static void test_clear_accepts_a_cleared_selector(void **state)
{
	struct proto_selector s;
	char err[256];

	(void)state;
	assert_int_equal(proto_selector_parse("up", &s, err, sizeof(err)), 0);
	proto_selector_clear(&s);
	proto_selector_clear(&s);
	proto_selector_clear(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parses_metric_names_with_colons),
		cmocka_unit_test(test_parses_all_four_operators),
		cmocka_unit_test(test_parses_three_quote_styles),
		cmocka_unit_test(test_decodes_go_escapes),
		cmocka_unit_test(test_rejects_bad_escapes_with_their_offset),
		cmocka_unit_test(test_allows_whitespace_and_a_trailing_comma),
		cmocka_unit_test(test_name_matcher_in_braces_stays_a_matcher),
		cmocka_unit_test(test_accepts_quoted_label_names_as_printed_by_promql3),
		cmocka_unit_test(test_rejects_malformed_selectors_naming_the_offset),
		cmocka_unit_test(test_round_trips_through_the_printer),
		cmocka_unit_test(test_two_name_matchers_round_trip_in_braces),
		cmocka_unit_test(test_clear_accepts_a_cleared_selector),
	};

	return cmocka_run_group_tests_name("proto_selector", tests, NULL, NULL);
}

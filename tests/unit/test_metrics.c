/*
 * Unit tests for proxy/metrics: updates, the label-set cap, escaping of hostile label values,
 * histogram buckets, number formatting, and that the exposition holds every metric name the
 * public interface (shared/interface.md) promises, in valid text-format 0.0.4 syntax.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "proxy/metrics.h"

/* Every metric name dashboards and alerts rely on (interface.md, "Metrics"). */
static const char *const interface_names[] = {
	"promguard_queries_total",
	"promguard_rejections_total",
	"promguard_shadow_rejections_total",
	"promguard_estimated_series",
	"promguard_estimate_error_ratio",
	"promguard_inflight_queries",
	"promguard_queue_length",
	"promguard_queue_wait_seconds",
	"promguard_backoff_tracked_keys",
	"promguard_pool_bytes",
	"promguard_pool_limit_bytes",
	"promguard_pool_get_on_empty_total",
	"promguard_pool_refills_total",
	"promguard_upstream_request_duration_seconds",
	"promguard_upstream_errors_total",
	"promguard_response_series_total",
	"promguard_response_bytes_total",
	"promguard_requests_total",
	"promguard_config_last_reload_successful",
	"process_resident_memory_bytes",
	"process_open_fds",
};

/* Render the registry into a NUL-terminated heap string the caller frees. */
static char *render(void)
{
	struct evbuffer *b = evbuffer_new();
	size_t len;
	char *text;

	assert_non_null(b);
	assert_int_equal(metrics_render(b), 0);
	len = evbuffer_get_length(b);
	text = malloc(len + 1);
	assert_non_null(text);
	assert_int_equal(evbuffer_remove(b, text, len), (int)len);
	text[len] = '\0';
	evbuffer_free(b);
	return text;
}

/* Fail unless <text> holds <line> as one whole line. */
static void assert_has_line(const char *text, const char *line)
{
	size_t n = strlen(line);

	for (const char *p = text; (p = strstr(p, line)) != NULL; p++) {
		if ((p == text || p[-1] == '\n') && p[n] == '\n')
			return;
	}
	fail_msg("line not found: %s\n--- exposition ---\n%s", line, text);
}

/* Fail if any line of <text> starts with <prefix>. */
static void assert_no_line_starting(const char *text, const char *prefix)
{
	size_t n = strlen(prefix);

	for (const char *p = text; p; p = strchr(p, '\n')) {
		if (*p == '\n')
			p++;
		if (strncmp(p, prefix, n) == 0)
			fail_msg("unexpected line starting with %s", prefix);
	}
}

/*
 * Fail unless every non-comment line of <text> is `name{label="value",...} number`, with
 * values escaped as the text format requires (only \\, \" and \n, no raw newline or quote).
 */
static void assert_valid_exposition(const char *text)
{
	static const char pattern[] =
		"^[a-zA-Z_:][a-zA-Z0-9_:]*"
		"(\\{[a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\]|\\\\[\\\\\"n])*\""
		"(,[a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\]|\\\\[\\\\\"n])*\")*\\})?"
		" ([-+]?[0-9]+(\\.[0-9]*)?([eE][-+]?[0-9]+)?|[-+]Inf|NaN)$";
	regex_t re;
	char *copy = strdup(text);
	char *save = NULL;

	assert_non_null(copy);
	assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
	assert_true(text[0] != '\0' && text[strlen(text) - 1] == '\n');
	for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (line[0] == '#')
			continue;
		if (regexec(&re, line, 0, NULL, 0) != 0)
			fail_msg("invalid exposition line: %s", line);
	}
	regfree(&re);
	free(copy);
}

static int setup(void **state)
{
	(void)state;
	return metrics_init();
}

static int teardown(void **state)
{
	(void)state;
	metrics_deinit();
	return 0;
}

static void test_counter_adds_and_ignores_negative_and_nan(void **state)
{
	(void)state;
	metrics_inc(METRICS_POOL_REFILLS, NULL, NULL);
	metrics_add(METRICS_POOL_REFILLS, NULL, NULL, 2.5);
	metrics_add(METRICS_POOL_REFILLS, NULL, NULL, -10);
	metrics_add(METRICS_POOL_REFILLS, NULL, NULL, NAN);
	assert_true(metrics_get(METRICS_POOL_REFILLS, NULL, NULL) == 3.5);
}

static void test_gauge_set_overwrites_and_add_moves_both_ways(void **state)
{
	(void)state;
	metrics_set(METRICS_INFLIGHT, NULL, NULL, 7);
	metrics_set(METRICS_INFLIGHT, NULL, NULL, 3);
	assert_true(metrics_get(METRICS_INFLIGHT, NULL, NULL) == 3);
	metrics_add(METRICS_INFLIGHT, NULL, NULL, -1);
	metrics_inc(METRICS_INFLIGHT, NULL, NULL);
	metrics_inc(METRICS_INFLIGHT, NULL, NULL);
	assert_true(metrics_get(METRICS_INFLIGHT, NULL, NULL) == 4);
}

static void test_unlabelled_metrics_render_zero_before_use(void **state)
{
	char *text;

	(void)state;
	text = render();
	assert_has_line(text, "promguard_pool_get_on_empty_total 0");
	assert_has_line(text, "promguard_queue_length 0");
	assert_has_line(text, "promguard_queue_wait_seconds_count 0");
	assert_has_line(text, "promguard_queue_wait_seconds_bucket{le=\"+Inf\"} 0");
	free(text);
}

static void test_labelled_series_created_on_first_use(void **state)
{
	char *text;

	(void)state;
	text = render();
	assert_has_line(text, "# TYPE promguard_queries_total counter");
	assert_no_line_starting(text, "promguard_queries_total{");
	free(text);
	assert_true(metrics_get(METRICS_QUERIES, "acme", "admitted") == 0);

	metrics_inc(METRICS_QUERIES, "acme", "admitted");
	metrics_inc(METRICS_QUERIES, "acme", "admitted");
	metrics_inc(METRICS_QUERIES, "acme", "rejected");
	assert_true(metrics_get(METRICS_QUERIES, "acme", "admitted") == 2);
	assert_true(metrics_get(METRICS_QUERIES, "acme", "rejected") == 1);
	assert_true(metrics_get(METRICS_QUERIES, "other-tenant", "admitted") == 0);
	text = render();
	assert_has_line(text, "promguard_queries_total{tenant=\"acme\",decision=\"admitted\"} 2");
	assert_has_line(text, "promguard_queries_total{tenant=\"acme\",decision=\"rejected\"} 1");
	free(text);
}

static void test_series_render_in_creation_order(void **state)
{
	char *text;
	const char *a, *b, *c;

	(void)state;
	metrics_inc(METRICS_REQUESTS, "422", NULL);
	metrics_inc(METRICS_REQUESTS, "200", NULL);
	metrics_inc(METRICS_REQUESTS, "429", NULL);
	metrics_inc(METRICS_REQUESTS, "200", NULL);
	text = render();
	a = strstr(text, "promguard_requests_total{code=\"422\"} 1\n");
	b = strstr(text, "promguard_requests_total{code=\"200\"} 2\n");
	c = strstr(text, "promguard_requests_total{code=\"429\"} 1\n");
	assert_non_null(a);
	assert_non_null(b);
	assert_non_null(c);
	assert_true(a < b && b < c);
	free(text);
}

static void test_label_cap_folds_into_other_and_counts_overflow(void **state)
{
	char tenant[32];
	char *text;

	(void)state;
	for (int i = 0; i < METRICS_MAX_SERIES; i++) {
		snprintf(tenant, sizeof(tenant), "t%d", i);
		metrics_inc(METRICS_REJECTIONS, tenant, "series");
	}
	assert_true(metrics_get(METRICS_LABEL_OVERFLOW, "promguard_rejections_total", NULL) == 0);

	/* ten new label sets past the cap, and an existing one still updates in place */
	for (int i = 0; i < 10; i++) {
		snprintf(tenant, sizeof(tenant), "late%d", i);
		metrics_inc(METRICS_REJECTIONS, tenant, "series");
	}
	metrics_inc(METRICS_REJECTIONS, "t0", "series");

	assert_true(metrics_get(METRICS_REJECTIONS, "other", "other") == 10);
	assert_true(metrics_get(METRICS_REJECTIONS, "late0", "series") == 0);
	assert_true(metrics_get(METRICS_REJECTIONS, "t0", "series") == 2);
	assert_true(metrics_get(METRICS_LABEL_OVERFLOW, "promguard_rejections_total", NULL) == 10);
	text = render();
	assert_has_line(text, "promguard_rejections_total{tenant=\"other\",reason=\"other\"} 10");
	assert_has_line(text,
			"promguard_metrics_label_overflow_total{metric=\"promguard_rejections_total\"} 10");
	assert_valid_exposition(text);
	free(text);
}

static void test_tenant_labels_past_the_cap_count_as_other(void **state)
{
	char tenant[32];

	(void)state;
	metrics_set_tenant_limit(3);
	for (int i = 0; i < 10; i++) {
		snprintf(tenant, sizeof(tenant), "team-%d", i);
		metrics_inc(METRICS_QUERIES, tenant, "admitted");
		metrics_inc(METRICS_RESPONSE_SERIES, tenant, NULL); /* one tenant, several metrics: one slot */
	}
	assert_true(metrics_get(METRICS_QUERIES, "team-2", "admitted") == 1);
	assert_true(metrics_get(METRICS_QUERIES, "team-3", "admitted") == 0);
	assert_true(metrics_get(METRICS_QUERIES, "other", "admitted") == 7);
	assert_true(metrics_get(METRICS_RESPONSE_SERIES, "other", NULL) == 7);
	assert_true(metrics_get(METRICS_TENANT_LABELS, NULL, NULL) == 3);
	assert_true(metrics_get(METRICS_TENANT_LABELS_LIMIT, NULL, NULL) == 3);
	assert_true(metrics_get(METRICS_TENANT_LABEL_OVERFLOW, NULL, NULL) == 14);
	/* labels that are not "tenant" are not capped by it */
	metrics_inc(METRICS_REQUESTS, "team-9", NULL);
	assert_true(metrics_get(METRICS_REQUESTS, "team-9", NULL) == 1);
	/* a tenant seen while there was room keeps its series after the cap is lowered */
	metrics_set_tenant_limit(1);
	metrics_inc(METRICS_QUERIES, "team-1", "admitted");
	assert_true(metrics_get(METRICS_QUERIES, "team-1", "admitted") == 2);
	metrics_set_tenant_limit(METRICS_TENANT_LABELS_DEFAULT);
}

/* Each family remembers its last label values: repeats, alternation, folded tenants (which must
 * count their overflow every time) and a raised cap must all land where a full lookup would. */
static void test_repeated_label_lookups_land_where_a_full_lookup_would(void **state)
{
	(void)state;
	for (int i = 0; i < 5; i++) {
		metrics_inc(METRICS_REQUESTS, "200", NULL);
		metrics_inc(METRICS_REQUESTS, "200", NULL);
		metrics_inc(METRICS_REQUESTS, "429", NULL);
	}
	assert_true(metrics_get(METRICS_REQUESTS, "200", NULL) == 10);
	assert_true(metrics_get(METRICS_REQUESTS, "429", NULL) == 5);
	assert_true(metrics_get(METRICS_REQUESTS, "4290", NULL) == 0);
	/* a NULL and an empty value are the same label value */
	metrics_inc(METRICS_REQUESTS, NULL, NULL);
	metrics_inc(METRICS_REQUESTS, "", NULL);
	assert_true(metrics_get(METRICS_REQUESTS, "", NULL) == 2);
	/* two labels: a change in either one is another series */
	metrics_inc(METRICS_QUERIES, "a", "admitted");
	metrics_inc(METRICS_QUERIES, "a", "rejected");
	metrics_inc(METRICS_QUERIES, "a", "rejected");
	assert_true(metrics_get(METRICS_QUERIES, "a", "admitted") == 1);
	assert_true(metrics_get(METRICS_QUERIES, "a", "rejected") == 2);

	metrics_set_tenant_limit(1); /* "a" holds the only tenant slot */
	for (int i = 0; i < 4; i++)
		metrics_inc(METRICS_QUERIES, "b", "admitted");
	assert_true(metrics_get(METRICS_QUERIES, "other", "admitted") == 4);
	assert_true(metrics_get(METRICS_TENANT_LABEL_OVERFLOW, NULL, NULL) == 4);
	/* a raised cap gives "b" its own series from the next update on */
	metrics_set_tenant_limit(METRICS_TENANT_LABELS_DEFAULT);
	metrics_inc(METRICS_QUERIES, "b", "admitted");
	assert_true(metrics_get(METRICS_QUERIES, "b", "admitted") == 1);
	assert_true(metrics_get(METRICS_QUERIES, "other", "admitted") == 4);
}

static void test_overflow_counter_caps_itself_without_recursing(void **state)
{
	char name[32];

	(void)state;
	for (int i = 0; i < METRICS_MAX_SERIES + 20; i++) {
		snprintf(name, sizeof(name), "m%d", i);
		metrics_inc(METRICS_LABEL_OVERFLOW, name, NULL);
	}
	assert_true(metrics_get(METRICS_LABEL_OVERFLOW, "other", NULL) == 20);
	/* it does not count its own overflow (that would recurse) */
	assert_true(metrics_get(METRICS_LABEL_OVERFLOW, "promguard_metrics_label_overflow_total",
				NULL) == 0);
}

static void test_escapes_quotes_backslashes_and_newlines(void **state)
{
	char *text;

	(void)state;
	metrics_inc(METRICS_RESPONSE_BYTES, "a\"b\\c\nd} 1\n# forged", NULL);
	text = render();
	assert_has_line(text, "promguard_response_bytes_total{tenant=\"a\\\"b\\\\c\\nd} 1\\n# forged\"} 1");
	assert_valid_exposition(text);
	free(text);
}

static void test_invalid_utf8_and_control_chars_become_question_marks(void **state)
{
	/*
	 * kept: "é" (C3 A9), "€" (E2 82 AC), U+1F600 (F0 9F 98 80);
	 * replaced byte by byte: stray FF, cut-short E2 82, overlongs C0 AF, E0 80 AF and
	 * F0 80 80 AF, surrogate ED A0 80, above U+10FFFF F4 90 80 80, tab, DEL
	 */
	static const char hostile[] =
		"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80|\xff|\xe2\x82|\xc0\xaf|\xe0\x80\xaf|"
		"\xf0\x80\x80\xaf|\xed\xa0\x80|\xf4\x90\x80\x80|\t\x7f";
	char *text;

	(void)state;
	metrics_inc(METRICS_RESPONSE_SERIES, hostile, NULL);
	text = render();
	assert_has_line(text, "promguard_response_series_total{tenant=\""
			      "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80|?|??|??|???|"
			      "????|???|????|??\"} 1");
	assert_valid_exposition(text);
	free(text);
	/* the raw value finds the series it created */
	assert_true(metrics_get(METRICS_RESPONSE_SERIES, hostile, NULL) == 1);
}

static void test_long_label_value_is_cut_on_a_character_boundary(void **state)
{
	char value[4096];
	char *text, *line, *end;

	(void)state;
	/* "x" then 2-byte characters: any cut on an odd byte count would split one */
	value[0] = 'x';
	for (size_t i = 1; i + 2 < sizeof(value); i += 2)
		memcpy(value + i, "\xc3\xa9", 2);
	value[sizeof(value) - 1] = '\0';
	metrics_inc(METRICS_RESPONSE_SERIES, value, NULL);
	text = render();
	line = strstr(text, "promguard_response_series_total{tenant=\"x");
	assert_non_null(line);
	end = strchr(line, '\n');
	/* bounded: far shorter than the 4 KiB value, and no split character became '?' */
	assert_true(end - line < 300);
	assert_null(memchr(line, '?', (size_t)(end - line)));
	assert_valid_exposition(text);
	free(text);
}

static void test_histogram_buckets_are_cumulative_with_sum_and_count(void **state)
{
	char *text;
	const char *sum;

	(void)state;
	metrics_observe(METRICS_UPSTREAM_DURATION, 0.001); /* on a bound: le is inclusive */
	metrics_observe(METRICS_UPSTREAM_DURATION, 0.00390625);
	metrics_observe(METRICS_UPSTREAM_DURATION, 0.1875);
	metrics_observe(METRICS_UPSTREAM_DURATION, 2);
	metrics_observe(METRICS_UPSTREAM_DURATION, 120); /* past the last bound */
	metrics_observe(METRICS_UPSTREAM_DURATION, NAN); /* dropped */
	text = render();
	assert_has_line(text, "# TYPE promguard_upstream_request_duration_seconds histogram");
	assert_has_line(text, "promguard_upstream_request_duration_seconds_bucket{le=\"0.001\"} 1");
	assert_has_line(text, "promguard_upstream_request_duration_seconds_bucket{le=\"0.0025\"} 1");
	assert_has_line(text, "promguard_upstream_request_duration_seconds_bucket{le=\"0.005\"} 2");
	assert_has_line(text, "promguard_upstream_request_duration_seconds_bucket{le=\"0.1\"} 2");
	assert_has_line(text, "promguard_upstream_request_duration_seconds_bucket{le=\"0.25\"} 3");
	assert_has_line(text, "promguard_upstream_request_duration_seconds_bucket{le=\"2.5\"} 4");
	assert_has_line(text, "promguard_upstream_request_duration_seconds_bucket{le=\"60\"} 4");
	assert_has_line(text, "promguard_upstream_request_duration_seconds_bucket{le=\"+Inf\"} 5");
	sum = strstr(text, "\npromguard_upstream_request_duration_seconds_sum ");
	assert_non_null(sum);
	assert_true(strtod(strchr(sum, ' ') + 1, NULL) == 0.001 + 0.00390625 + 0.1875 + 2 + 120);
	assert_has_line(text, "promguard_upstream_request_duration_seconds_count 5");
	free(text);
}

static void test_histogram_bucket_sets_match_the_header(void **state)
{
	char *text;

	(void)state;
	metrics_observe(METRICS_ESTIMATED_SERIES, 5e6);
	metrics_observe(METRICS_ESTIMATE_ERROR_RATIO, 1.1);
	text = render();
	assert_has_line(text, "promguard_estimated_series_bucket{le=\"1000000\"} 0");
	assert_has_line(text, "promguard_estimated_series_bucket{le=\"10000000\"} 1");
	assert_has_line(text, "promguard_estimate_error_ratio_bucket{le=\"0.8\"} 0");
	assert_has_line(text, "promguard_estimate_error_ratio_bucket{le=\"1.25\"} 1");
	assert_has_line(text, "promguard_estimate_error_ratio_bucket{le=\"100\"} 1");
	assert_has_line(text, "promguard_queue_wait_seconds_bucket{le=\"30\"} 0");
	free(text);
}

static void test_numbers_print_as_integers_shortest_floats_and_inf(void **state)
{
	char *text;

	(void)state;
	metrics_set(METRICS_POOL_BYTES, "free", NULL, 1073741824.0);
	metrics_set(METRICS_POOL_BYTES, "in_use", NULL, 18014398509481984.0); /* 2^54 */
	metrics_set(METRICS_CLIENT_CONNECTIONS, "a", NULL, 0.1);
	metrics_set(METRICS_CLIENT_CONNECTIONS, "b", NULL, -2);
	metrics_set(METRICS_CLIENT_CONNECTIONS, "c", NULL, INFINITY);
	metrics_set(METRICS_CLIENT_CONNECTIONS, "d", NULL, 1e300);
	text = render();
	assert_has_line(text, "promguard_pool_bytes{state=\"free\"} 1073741824");
	assert_has_line(text, "promguard_pool_bytes{state=\"in_use\"} 18014398509481984");
	assert_has_line(text, "promguard_client_connections{listener=\"a\"} 0.1");
	assert_has_line(text, "promguard_client_connections{listener=\"b\"} -2");
	assert_has_line(text, "promguard_client_connections{listener=\"c\"} +Inf");
	assert_has_line(text, "promguard_client_connections{listener=\"d\"} 1e+300");
	assert_valid_exposition(text);
	free(text);
}

static void test_render_includes_every_interface_metric(void **state)
{
	char *text;
	char want[128];

	(void)state;
	text = render();
	for (size_t i = 0; i < sizeof(interface_names) / sizeof(interface_names[0]); i++) {
		snprintf(want, sizeof(want), "# TYPE %s ", interface_names[i]);
		if (!strstr(text, want))
			fail_msg("missing metric %s", interface_names[i]);
		snprintf(want, sizeof(want), "# HELP %s ", interface_names[i]);
		if (!strstr(text, want))
			fail_msg("missing help of %s", interface_names[i]);
	}
	free(text);
}

static void test_render_lines_match_exposition_syntax(void **state)
{
	char *text;

	(void)state;
	metrics_inc(METRICS_QUERIES, "t", "admitted");
	metrics_inc(METRICS_UPSTREAM_ERRORS, "timeout", NULL);
	metrics_set(METRICS_POOL_BYTES, "free", NULL, 12345);
	metrics_observe(METRICS_QUEUE_WAIT, 0.75);
	metrics_refresh_process();
	text = render();
	assert_valid_exposition(text);
	/* HELP text with quotes stays one line */
	assert_has_line(text, "# HELP promguard_metrics_label_overflow_total Updates folded into "
			      "the \"other\" series because a metric hit its label-set cap.");
	free(text);
}

static void test_refresh_process_reports_rss_and_fds(void **state)
{
	(void)state;
	metrics_refresh_process();
	/* a running process has resident pages and at least stdin/stdout/stderr */
	assert_true(metrics_get(METRICS_PROCESS_RSS, NULL, NULL) > 4096);
	assert_true(metrics_get(METRICS_PROCESS_FDS, NULL, NULL) >= 3);
}

static void test_build_info_and_start_time_set_at_init(void **state)
{
	char *text;

	(void)state;
	text = render();
	assert_non_null(strstr(text, "\npromguard_build_info{version=\""));
	free(text);
	/* some time after 2020-01-01 */
	assert_true(metrics_get(METRICS_PROCESS_START, NULL, NULL) > 1577836800.0);
}

static void test_deinit_then_init_starts_empty(void **state)
{
	(void)state;
	metrics_inc(METRICS_QUERIES, "t", "admitted");
	metrics_observe(METRICS_QUEUE_WAIT, 1);
	metrics_deinit();
	assert_int_equal(metrics_init(), 0);
	assert_true(metrics_get(METRICS_QUERIES, "t", "admitted") == 0);
	/* a second init keeps what is there */
	metrics_inc(METRICS_QUERIES, "t", "admitted");
	assert_int_equal(metrics_init(), 0);
	assert_true(metrics_get(METRICS_QUERIES, "t", "admitted") == 1);
}

static void test_describe_lists_every_metric_once(void **state)
{
	struct evbuffer *b = evbuffer_new();
	char *text;
	size_t len, lines = 0;

	(void)state;
	assert_non_null(b);
	metrics_describe(b);
	len = evbuffer_get_length(b);
	text = calloc(1, len + 1);
	assert_non_null(text);
	evbuffer_remove(b, text, len);
	for (const char *p = text; (p = strchr(p, '\n')) != NULL; p++)
		lines++;
	assert_int_equal(lines, METRICS__COUNT);
	assert_non_null(strstr(text, "promguard_queries_total"));
	assert_non_null(strstr(text, "tenant,decision"));
	assert_non_null(strstr(text, "histogram"));
	free(text);
	evbuffer_free(b);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_counter_adds_and_ignores_negative_and_nan),
		T(test_gauge_set_overwrites_and_add_moves_both_ways),
		T(test_unlabelled_metrics_render_zero_before_use),
		T(test_labelled_series_created_on_first_use),
		T(test_series_render_in_creation_order),
		T(test_label_cap_folds_into_other_and_counts_overflow),
		T(test_repeated_label_lookups_land_where_a_full_lookup_would),
		T(test_overflow_counter_caps_itself_without_recursing),
		T(test_tenant_labels_past_the_cap_count_as_other),
		T(test_escapes_quotes_backslashes_and_newlines),
		T(test_invalid_utf8_and_control_chars_become_question_marks),
		T(test_long_label_value_is_cut_on_a_character_boundary),
		T(test_histogram_buckets_are_cumulative_with_sum_and_count),
		T(test_histogram_bucket_sets_match_the_header),
		T(test_numbers_print_as_integers_shortest_floats_and_inf),
		T(test_render_includes_every_interface_metric),
		T(test_render_lines_match_exposition_syntax),
		T(test_refresh_process_reports_rss_and_fds),
		T(test_build_info_and_start_time_set_at_init),
		T(test_deinit_then_init_starts_empty),
		T(test_describe_lists_every_metric_once),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

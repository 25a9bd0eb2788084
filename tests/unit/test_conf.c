/*
 * test_conf: the configuration loader — defaults, every key, tenant merging, the exact
 * `file:line: key: problem` errors, duration and size syntax, the report, the JSON and reload.
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
#include <event2/buffer.h>

#include "proxy/conf.h"

#ifndef VECTORS_DIR
#define VECTORS_DIR "tests/vectors" /* run from the source tree when built by hand */
#endif

/* The smallest valid config: only the required key. */
#define MINIMAL "upstream:\n  url: http://127.0.0.1:9090/api/v1/read\n"

/* Drain <b> into a NUL-terminated string (caller frees). */
static char *drain(struct evbuffer *b)
{
	size_t n = evbuffer_get_length(b);
	char *s = malloc(n + 1);

	assert_non_null(s);
	evbuffer_remove(b, s, n);
	s[n] = '\0';
	return s;
}

/* Load <yaml> as "t.yml"; the load must succeed. */
static struct conf *load_ok(const char *yaml)
{
	struct evbuffer *errs = evbuffer_new();
	struct conf *c = NULL;
	int rc = conf_load_string("t.yml", yaml, strlen(yaml), &c, errs);
	char *e = drain(errs);

	if (rc != 0)
		print_error("unexpected errors:\n%s", e);
	assert_int_equal(rc, 0);
	assert_string_equal(e, "");
	assert_non_null(c);
	free(e);
	evbuffer_free(errs);
	return c;
}

/* Load <yaml> as "t.yml"; the load must fail with -EINVAL. Returns every error line (free it). */
static char *load_err(const char *yaml)
{
	struct evbuffer *errs = evbuffer_new();
	struct conf *c = (struct conf *)&errs; /* the loader must reset it */
	int rc = conf_load_string("t.yml", yaml, strlen(yaml), &c, errs);
	char *e = drain(errs);

	assert_int_equal(rc, -EINVAL);
	assert_null(c);
	evbuffer_free(errs);
	return e;
}

/* Assert that loading <yaml> fails with exactly the error lines <want>. */
static void expect_errors(const char *yaml, const char *want)
{
	char *e = load_err(yaml);

	assert_string_equal(e, want);
	free(e);
}

/* Number of lines in <s>. */
static int count_lines(const char *s)
{
	int n = 0;

	for (; *s; s++)
		n += *s == '\n';
	return n;
}

/* ---- defaults and keys ---------------------------------------------------------------------- */

static void test_defaults_follow_the_interface(void **state)
{
	struct conf *c = load_ok(MINIMAL);

	(void)state;
	assert_string_equal(c->path, "t.yml");
	assert_string_equal(c->listen, "127.0.0.1:9201");
	assert_string_equal(c->admin_listen, "127.0.0.1:9202");
	assert_string_equal(c->read_path, "/api/v1/read");
	assert_int_equal(c->mode, CONF_MODE_ENFORCE);
	assert_string_equal(c->tenant_header, "X-Scope-OrgID");
	assert_string_equal(c->log_level, "info");
	assert_string_equal(c->upstream_host, "127.0.0.1");
	assert_int_equal(c->upstream_port, 9090);
	assert_string_equal(c->upstream_path, "/api/v1/read");
	assert_int_equal(c->upstream_timeout_ms, 60000);
	assert_int_equal(c->upstream_max_connections, 64);
	assert_int_equal(c->n_upstream_headers, 0);
	assert_int_equal(c->propagate_limits, CONF_PROPAGATE_NONE);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_SERIES], 100000);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_SAMPLES], 50000000);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_RANGE], 0);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_RESPONSE_BYTES], 256 << 20);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_QUERIES_PER_REQUEST], 16);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_REQUEST_BYTES], 4 << 20);
	assert_int_equal(c->limits.v[CONF_LIMIT_REQUIRE_METRIC_NAME], 1);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_REGEX_LENGTH], 4096);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_INFLIGHT], 16);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_QUEUED], 256);
	assert_int_equal(c->n_tenants, 0);
	assert_int_equal(c->n_rules, 0);
	assert_int_equal(c->est_scrape_interval_ms, 15000);
	assert_int_equal(c->est_unknown, CONF_UNKNOWN_PROBE);
	assert_int_equal(c->est_probe, CONF_PROBE_SERIES_API);
	assert_null(c->est_probe_url);
	assert_int_equal(c->n_est_hints, 0);
	assert_int_equal(c->est_max_memory, 64 << 20);
	assert_int_equal(c->pool_memory_limit, 1 << 30);
	assert_int_equal(c->pool_low_watermark_ppm, 300000);
	assert_int_equal(c->pool_high_watermark_ppm, 600000);
	assert_int_equal(c->queue_max_wait_ms, 20000);
	assert_int_equal(c->queue_base_delay_ms, 50);
	assert_int_equal(c->queue_max_delay_ms, 5000);
	assert_int_equal(c->queue_max_tracked_keys, 10000);
	assert_int_equal(c->shutdown_grace_ms, 30000);
	conf_free(c);
}

static const char full_yaml[] =
	"listen: '[::1]:19201'\n"
	"admin_listen: localhost:0\n"
	"read_path: /read\n"
	"mode: dry_run\n"
	"tenant_header: X-Tenant\n"
	"log_level: debug\n"
	"upstream:\n"
	"  url: http://m3.example.com/api/v1/prom/remote/read?x=1\n"
	"  timeout: 1m30s\n"
	"  max_connections: 8\n"
	"  headers:\n"
	"    Authorization: Bearer s3cret\n"
	"    X-Extra: \"a \\\"quoted\\\" value\"\n"
	"  propagate_limits: m3\n"
	"limits:\n"
	"  max_series: 5000\n"
	"  max_samples: 1000000\n"
	"  max_range: 7d\n"
	"  max_response_bytes: 64MiB\n"
	"  max_queries_per_request: 4\n"
	"  max_request_bytes: 512KiB\n"
	"  require_metric_name: false\n"
	"  max_regex_length: 100\n"
	"  max_inflight: 2\n"
	"rules:\n"
	"  - name: no-namespace\n"
	"    action: dry_run\n"
	"    when:\n"
	"      metric: up\n"
	"      metric_regex: \"container_.*\"\n"
	"      has_label: [job, instance]\n"
	"      lacks_label: [namespace]\n"
	"      matcher_types: [re, nre]\n"
	"      range_above: 1h\n"
	"      estimate_above: 1000\n"
	"estimator:\n"
	"  scrape_interval: 30s\n"
	"  unknown: reject\n"
	"  probe: off\n"
	"  probe_url: http://10.0.0.1:9090\n"
	"  hints:\n"
	"    up: 12\n"
	"    node_cpu_seconds_total: 34000\n"
	"  max_memory: 1GiB\n"
	"pool:\n"
	"  memory_limit: 2GiB\n"
	"  low_watermark: 0.25\n"
	"  high_watermark: 1\n"
	"queue:\n"
	"  max_queued: 0\n"
	"  max_wait: 0\n"
	"  base_delay: 10ms\n"
	"  max_delay: 10ms\n"
	"  max_tracked_keys: 5\n"
	"shutdown_grace: 2s\n";

static void test_every_key_is_parsed(void **state)
{
	struct conf *c = load_ok(full_yaml);
	const struct conf_rule *r;

	(void)state;
	assert_string_equal(c->listen, "[::1]:19201");
	assert_string_equal(c->admin_listen, "localhost:0");
	assert_string_equal(c->read_path, "/read");
	assert_int_equal(c->mode, CONF_MODE_DRY_RUN);
	assert_string_equal(c->tenant_header, "X-Tenant");
	assert_string_equal(c->log_level, "debug");
	assert_string_equal(c->upstream_url, "http://m3.example.com/api/v1/prom/remote/read?x=1");
	assert_string_equal(c->upstream_host, "m3.example.com");
	assert_int_equal(c->upstream_port, 80);
	assert_string_equal(c->upstream_path, "/api/v1/prom/remote/read?x=1");
	assert_int_equal(c->upstream_timeout_ms, 90000);
	assert_int_equal(c->upstream_max_connections, 8);
	assert_int_equal(c->n_upstream_headers, 2);
	assert_string_equal(c->upstream_headers[0].key, "Authorization");
	assert_string_equal(c->upstream_headers[0].value, "Bearer s3cret");
	assert_string_equal(c->upstream_headers[1].value, "a \"quoted\" value");
	assert_int_equal(c->propagate_limits, CONF_PROPAGATE_M3);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_SERIES], 5000);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_SAMPLES], 1000000);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_RANGE], 7 * 86400000LL);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_RESPONSE_BYTES], 64 << 20);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_QUERIES_PER_REQUEST], 4);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_REQUEST_BYTES], 512 << 10);
	assert_int_equal(c->limits.v[CONF_LIMIT_REQUIRE_METRIC_NAME], 0);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_REGEX_LENGTH], 100);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_INFLIGHT], 2);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_QUEUED], 0);
	assert_int_equal(c->n_rules, 1);
	r = &c->rules[0];
	assert_string_equal(r->name, "no-namespace");
	assert_int_equal(r->action, CONF_ACTION_DRY_RUN);
	assert_string_equal(r->metric, "up");
	assert_string_equal(r->metric_regex, "container_.*");
	assert_int_equal(r->n_has_label, 2);
	assert_string_equal(r->has_label[1], "instance");
	assert_int_equal(r->n_lacks_label, 1);
	assert_string_equal(r->lacks_label[0], "namespace");
	assert_int_equal(r->matcher_types, CONF_MATCH_RE | CONF_MATCH_NRE);
	assert_int_equal(r->range_above_ms, 3600000);
	assert_int_equal(r->estimate_above, 1000);
	assert_int_equal(r->line, 26);
	assert_int_equal(c->est_scrape_interval_ms, 30000);
	assert_int_equal(c->est_unknown, CONF_UNKNOWN_REJECT);
	assert_int_equal(c->est_probe, CONF_PROBE_OFF);
	assert_string_equal(c->est_probe_url, "http://10.0.0.1:9090");
	assert_int_equal(c->n_est_hints, 2);
	assert_string_equal(c->est_hints[1].metric, "node_cpu_seconds_total");
	assert_int_equal(c->est_hints[1].series, 34000);
	assert_int_equal(c->est_max_memory, 1 << 30);
	assert_int_equal(c->pool_memory_limit, 2LL << 30);
	assert_int_equal(c->pool_low_watermark_ppm, 250000);
	assert_int_equal(c->pool_high_watermark_ppm, 1000000);
	assert_int_equal(c->queue_max_wait_ms, 0);
	assert_int_equal(c->queue_base_delay_ms, 10);
	assert_int_equal(c->queue_max_delay_ms, 10);
	assert_int_equal(c->queue_max_tracked_keys, 5);
	assert_int_equal(c->shutdown_grace_ms, 2000);
	conf_free(c);
}

static void test_rule_defaults_leave_conditions_untested(void **state)
{
	struct conf *c = load_ok(MINIMAL "rules:\n  - name: big\n    when: {estimate_above: 0}\n");
	const struct conf_rule *r = &c->rules[0];

	(void)state;
	assert_int_equal(r->action, CONF_ACTION_REJECT);
	assert_null(r->metric);
	assert_null(r->metric_regex);
	assert_int_equal(r->n_has_label + r->n_lacks_label, 0);
	assert_int_equal(r->matcher_types, 0);
	assert_int_equal(r->range_above_ms, 0);
	assert_int_equal(r->estimate_above, 0);
	conf_free(c);
}

static void test_tenant_overrides_merge_with_global_limits(void **state)
{
	/* tenants come before limits: the merge must happen after the whole file is read */
	struct conf *c = load_ok(MINIMAL
				 "tenants:\n"
				 "  team-a:\n"
				 "    max_series: 10\n"
				 "    max_queued: 3\n"
				 "  team-b: {}\n"
				 "limits:\n"
				 "  max_series: 1000\n"
				 "  max_samples: 2000\n"
				 "queue:\n"
				 "  max_queued: 7\n");
	const struct conf_limits *a, *b;

	(void)state;
	assert_int_equal(c->n_tenants, 2);
	a = conf_limits_for(c, "team-a");
	b = conf_limits_for(c, "team-b");
	assert_int_equal(a->v[CONF_LIMIT_MAX_SERIES], 10);
	assert_int_equal(a->v[CONF_LIMIT_MAX_SAMPLES], 2000);
	assert_int_equal(a->v[CONF_LIMIT_MAX_QUEUED], 3);
	assert_int_equal(a->v[CONF_LIMIT_MAX_INFLIGHT], 16);
	assert_int_equal(c->tenants[0].overridden,
			 (1u << CONF_LIMIT_MAX_SERIES) | (1u << CONF_LIMIT_MAX_QUEUED));
	assert_int_equal(b->v[CONF_LIMIT_MAX_SERIES], 1000);
	assert_int_equal(b->v[CONF_LIMIT_MAX_QUEUED], 7);
	assert_int_equal(c->tenants[1].overridden, 0);
	assert_ptr_equal(conf_limits_for(c, "nobody"), &c->limits);
	assert_ptr_equal(conf_limits_for(c, NULL), &c->limits);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_QUEUED], 7);
	conf_free(c);
}

static void test_limit_table_is_complete_and_consistent(void **state)
{
	/* the reason labels promguard_rejections_total may carry (interface.md) */
	static const char *const reasons[] = { "series", "samples", "range", "response_bytes",
		"metric_name", "regex", "rule", "queries_per_request", "queue_full", "queue_timeout",
		"bad_request", NULL };
	int i, j;

	(void)state;
	for (i = 0; i < CONF_LIMIT__COUNT; i++) {
		const struct conf_limit_def *d = &conf_limit_defs[i];
		const char *dot;

		assert_non_null(d->key);
		assert_non_null(d->help);
		dot = strchr(d->path, '.');
		assert_non_null(dot);
		assert_string_equal(dot + 1, d->key);
		assert_true(d->min <= d->def && d->def <= d->max);
		for (j = 0; reasons[j] && strcmp(reasons[j], d->reason); j++)
			;
		assert_non_null(reasons[j]);
	}
	assert_string_equal(conf_limit_defs[CONF_LIMIT_MAX_QUEUED].path, "queue.max_queued");
	assert_string_equal(conf_limit_defs[CONF_LIMIT_MAX_REQUEST_BYTES].reason, "bad_request");
}

/* ---- errors --------------------------------------------------------------------------------- */

static void test_bad_value_names_file_line_and_key(void **state)
{
	(void)state;
	expect_errors(MINIMAL "limits:\n  max_series: abc\n",
		      "t.yml:4: limits.max_series: must be a non-negative integer, got \"abc\"\n");
	expect_errors(MINIMAL "limits:\n  max_series: -5\n",
		      "t.yml:4: limits.max_series: must be a non-negative integer, got \"-5\"\n");
	expect_errors(MINIMAL "limits: {require_metric_name: yes}\n",
		      "t.yml:3: limits.require_metric_name: must be true or false, got \"yes\"\n");
	expect_errors(MINIMAL "mode: strict\n",
		      "t.yml:3: mode: must be one of enforce, dry_run, got \"strict\"\n");
	expect_errors(MINIMAL "log_level: verbose\n",
		      "t.yml:3: log_level: must be one of debug, info, warn, error, got \"verbose\"\n");
	expect_errors(MINIMAL "limits:\n  max_series: [1]\n",
		      "t.yml:4: limits.max_series: must be a non-negative integer, got a list\n");
	expect_errors(MINIMAL "limits: 5\n", "t.yml:3: limits: must be a mapping, got a scalar\n");
	expect_errors(MINIMAL "listen: ''\n", "t.yml:3: listen: must not be empty\n");
}

static void test_out_of_bounds_value_is_shown_in_its_unit(void **state)
{
	(void)state;
	expect_errors(MINIMAL "limits:\n  max_request_bytes: 512\n",
		      "t.yml:4: limits.max_request_bytes: must be at least 1KiB, got 512\n");
	expect_errors(MINIMAL "limits:\n  max_inflight: 0\n",
		      "t.yml:4: limits.max_inflight: must be at least 1, got 0\n");
	expect_errors(MINIMAL "upstream_x: 1\n", "t.yml:3: upstream_x: unknown key (did you mean upstream?)\n");
	expect_errors("upstream:\n  url: http://h/\n  max_connections: 70000\n  timeout: 0\n",
		      "t.yml:3: upstream.max_connections: must be at most 65535, got 70000\n"
		      "t.yml:4: upstream.timeout: must be at least 1ms, got 0s\n");
	expect_errors(MINIMAL "pool:\n  high_watermark: 1.5\n",
		      "t.yml:4: pool.high_watermark: must be at most 1, got 1.5\n");
}

static void test_all_errors_are_collected(void **state)
{
	char *e;

	(void)state;
	e = load_err("listen: nowhere\n"                 /* 1 */
		     "upstream:\n"                       /* 2 */
		     "  url: https://store:9090/read\n"  /* 3 */
		     "limits:\n"                         /* 4 */
		     "  max_series: lots\n"              /* 5 */
		     "  max_range: 1x\n"                 /* 6 */
		     "  max_sereis: 5\n"                 /* 7 */
		     "rules:\n"                          /* 8 */
		     "  - name: r\n"                     /* 9 */
		     "    when: {metric_regex: '('}\n"   /* 10 */
		     "shutdown_grace: soon\n");          /* 11 */
	assert_int_equal(count_lines(e), 7);
	assert_non_null(strstr(e, "t.yml:1: listen: must be host:port"));
	assert_non_null(strstr(e, "t.yml:3: upstream.url: https is not supported"));
	assert_non_null(strstr(e, "t.yml:5: limits.max_series: must be a non-negative integer, got \"lots\"\n"));
	assert_non_null(strstr(e, "t.yml:6: limits.max_range: must be a duration"));
	assert_non_null(strstr(e, "t.yml:7: limits.max_sereis: unknown key (did you mean max_series?)\n"));
	assert_non_null(strstr(e, "t.yml:10: rules[0].when.metric_regex: invalid regex at offset 1: "));
	assert_non_null(strstr(e, "t.yml:11: shutdown_grace: must be a duration"));
	free(e);
}

static void test_unknown_key_is_an_error(void **state)
{
	(void)state;
	expect_errors(MINIMAL "estimator:\n  frobnicate: 1\n",
		      "t.yml:4: estimator.frobnicate: unknown key\n");
	expect_errors(MINIMAL "tenants:\n  a:\n    max_seconds: 1\n",
		      "t.yml:5: tenants.a.max_seconds: unknown key\n");
	expect_errors(MINIMAL "rules:\n  - name: x\n    when: {metric: up, lables: [a]}\n",
		      "t.yml:5: rules[0].when.lables: unknown key\n");
	/* max_queued is a limit, but its global value lives under queue: */
	expect_errors(MINIMAL "limits:\n  max_queued: 3\n",
		      "t.yml:4: limits.max_queued: unknown key here; the global value is queue.max_queued\n");
}

static void test_duplicate_keys_are_errors(void **state)
{
	(void)state;
	expect_errors(MINIMAL "limits:\n  max_series: 1\n  max_series: 2\n",
		      "t.yml:5: limits.max_series: duplicate key (first at line 4)\n");
	expect_errors("upstream:\n  url: http://a/\nupstream:\n  url: http://b/\n",
		      "t.yml:3: upstream: duplicate key (first at line 1)\n");
	expect_errors(MINIMAL "tenants:\n  team: {max_series: 1}\n  team: {max_series: 2}\n",
		      "t.yml:5: tenants.team: duplicate key (first at line 4)\n");
	expect_errors("upstream:\n  url: http://a/\n  headers: {X-A: 1, x-a: 2}\n",
		      "t.yml:3: upstream.headers.x-a: duplicate header (header names ignore case)\n");
}

static void test_bad_regex_reports_pcre2_message(void **state)
{
	(void)state;
	expect_errors(MINIMAL "rules:\n  - name: x\n    when:\n      metric_regex: 'container_(.*'\n",
		      "t.yml:6: rules[0].when.metric_regex: invalid regex at offset 13: missing closing "
		      "parenthesis, got \"container_(.*\"\n");
}

static void test_rules_need_a_unique_name_and_a_condition(void **state)
{
	(void)state;
	expect_errors(MINIMAL "rules:\n  - action: reject\n    when: {metric: up}\n",
		      "t.yml:4: rules[0].name: is required\n");
	expect_errors(MINIMAL "rules:\n  - name: x\n    action: drop\n",
		      "t.yml:5: rules[0].action: must be one of reject, dry_run, got \"drop\"\n"
		      "t.yml:4: rules[0].when: needs at least one condition (metric, metric_regex, "
		      "has_label, lacks_label, matcher_types, range_above, estimate_above)\n");
	expect_errors(MINIMAL "rules:\n  - {name: x, when: {metric: a}}\n  - {name: x, when: {metric: b}}\n",
		      "t.yml:5: rules[1].name: duplicate rule name \"x\" (first at line 4)\n");
	expect_errors(MINIMAL "rules:\n  - {name: x, when: {lacks_label: [], matcher_types: [eq, like]}}\n",
		      "t.yml:4: rules[0].when.lacks_label: must be a non-empty list, got an empty list\n"
		      "t.yml:4: rules[0].when.matcher_types[1]: must be one of eq, neq, re, nre, got \"like\"\n");
	/* a condition written as null is no condition */
	expect_errors(MINIMAL "rules:\n  - name: x\n    when:\n      metric:\n",
		      "t.yml:5: rules[0].when: needs at least one condition (metric, metric_regex, "
		      "has_label, lacks_label, matcher_types, range_above, estimate_above)\n");
	expect_errors(MINIMAL "rules:\n  - {name: x, when: {has_label: [ok, 0bad], metric: 'a-b'}}\n",
		      "t.yml:4: rules[0].when.has_label[1]: must be a label name ([a-zA-Z_][a-zA-Z0-9_]*), got \"0bad\"\n"
		      "t.yml:4: rules[0].when.metric: must be a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*), got \"a-b\"\n");
	expect_errors(MINIMAL "rules: {name: x}\n", "t.yml:3: rules: must be a list of rules, got a mapping\n");
}

static void test_upstream_url_must_be_plain_http(void **state)
{
	struct conf *c;

	(void)state;
	expect_errors("upstream:\n  url: https://store/api/v1/read\n",
		      "t.yml:2: upstream.url: https is not supported: promguard talks plain HTTP to the store "
		      "(use http://, with a TLS sidecar if the store needs TLS), got \"https://store/api/v1/read\"\n");
	expect_errors("upstream:\n  url: ftp://store/\n",
		      "t.yml:2: upstream.url: must be an http:// URL, got \"ftp://store/\"\n");
	expect_errors("upstream:\n  url: http://u:p@store/\n",
		      "t.yml:2: upstream.url: credentials in the URL are not supported; send them with "
		      "upstream.headers (Authorization), got \"http://u:p@store/\"\n");
	expect_errors("upstream:\n  url: http://store:99999/\n",
		      "t.yml:2: upstream.url: port must be 1..65535, got \"http://store:99999/\"\n");
	expect_errors("upstream:\n  timeout: 5s\n", "t.yml:1: upstream.url: is required\n");
	expect_errors("", "t.yml:1: upstream.url: is required\n");
	c = load_ok("upstream: {url: 'http://[::1]:7201'}\n");
	assert_string_equal(c->upstream_host, "::1");
	assert_int_equal(c->upstream_port, 7201);
	assert_string_equal(c->upstream_path, "/");
	conf_free(c);
	c = load_ok("upstream: {url: 'HTTP://store?q=1'}\n");
	assert_string_equal(c->upstream_host, "store");
	assert_string_equal(c->upstream_path, "/?q=1");
	conf_free(c);
}

static void test_reserved_upstream_headers_are_rejected(void **state)
{
	(void)state;
	expect_errors("upstream:\n  url: http://a/\n  headers:\n    content-type: text/plain\n"
		      "    Connection: close\n    Bad Name: x\n    X-Ok: \"a\\nb\"\n",
		      "t.yml:4: upstream.headers.content-type: Content-Type is set by promguard itself or is "
		      "hop-by-hop; it cannot be configured\n"
		      "t.yml:5: upstream.headers.Connection: Connection is set by promguard itself or is "
		      "hop-by-hop; it cannot be configured\n"
		      "t.yml:6: upstream.headers.Bad Name: must be an HTTP header name (letters, digits, "
		      "!#$%&'*+-.^_`|~), got \"Bad Name\"\n"
		      "t.yml:7: upstream.headers.X-Ok: header value must not contain control characters\n");
}

static void test_addresses_paths_and_header_names_are_validated(void **state)
{
	struct conf *c;

	(void)state;
	expect_errors(MINIMAL "listen: 127.0.0.1\nadmin_listen: '::1:9202'\n",
		      "t.yml:3: listen: must be host:port with port 0..65535 (e.g. 127.0.0.1:9201, [::1]:9201), "
		      "got \"127.0.0.1\"\n"
		      "t.yml:4: admin_listen: must be host:port with port 0..65535 (e.g. 127.0.0.1:9201, "
		      "[::1]:9201), got \"::1:9202\"\n");
	expect_errors(MINIMAL "listen: 300.1.1.1:80\nadmin_listen: '[zz]:1'\n",
		      "t.yml:3: listen: 300.1.1.1 is not an IPv4 address, got \"300.1.1.1:80\"\n"
		      "t.yml:4: admin_listen: [zz] is not an IPv6 address, got \"[zz]:1\"\n");
	expect_errors(MINIMAL "listen: 'a:+80'\n",
		      "t.yml:3: listen: must be host:port with port 0..65535 (e.g. 127.0.0.1:9201, [::1]:9201), "
		      "got \"a:+80\"\n");
	expect_errors(MINIMAL "read_path: api/v1/read\ntenant_header: 'X Tenant'\n",
		      "t.yml:3: read_path: must start with / and hold no spaces, ? or #, got \"api/v1/read\"\n"
		      "t.yml:4: tenant_header: must be an HTTP header name (letters, digits, !#$%&'*+-.^_`|~), "
		      "got \"X Tenant\"\n");
	c = load_ok(MINIMAL "listen: '0.0.0.0:0'\nadmin_listen: 'my-host.example:65535'\n");
	conf_free(c);
}

static void test_watermarks_and_delays_are_ordered(void **state)
{
	(void)state;
	expect_errors(MINIMAL "pool:\n  low_watermark: 0.7\n",
		      "t.yml:4: pool.low_watermark: must be below pool.high_watermark (0.7 >= 0.6)\n");
	expect_errors(MINIMAL "queue:\n  base_delay: 10s\n",
		      "t.yml:4: queue.base_delay: must not exceed queue.max_delay (10s > 5s)\n");
	expect_errors(MINIMAL "pool:\n  low_watermark: 0.1234567\n",
		      "t.yml:4: pool.low_watermark: must be a number from 0 to 1, got \"0.1234567\"\n");
}

static void test_tenant_names_must_be_printable(void **state)
{
	(void)state;
	expect_errors(MINIMAL "tenants:\n  \" a\": {}\n",
		      "t.yml:4: tenants. a: a tenant name must be printable ASCII without leading or trailing "
		      "spaces, at most 256 bytes, got \" a\"\n");
	expect_errors(MINIMAL "tenants:\n  a: {max_series: 0}\n",
		      "t.yml:4: tenants.a.max_series: must be at least 1, got 0\n");
}

/* fuzz_conf found this (tests/fuzz/regressions/conf/empty-name-reads-before-string): the
 * printable-name check looked at s[len - 1] of an empty tenant name, a byte before the string
 * (UBSan in build-asan/ stops here without the fix). An empty name has no spaces to refuse. */
static void test_empty_tenant_name_is_checked_in_bounds(void **state)
{
	struct conf *c = load_ok(MINIMAL "tenants:\n  \"\": {max_series: 1}\n");

	(void)state;
	assert_int_equal(c->n_tenants, 1);
	assert_string_equal(c->tenants[0].name, "");
	assert_int_equal(conf_limits_for(c, "")->v[CONF_LIMIT_MAX_SERIES], 1);
	conf_free(c);
	/* rule names go through the same check, after the one refusing empty strings */
	expect_errors(MINIMAL "rules:\n  - {name: \"\", when: {metric: up}}\n",
		      "t.yml:4: rules[0].name: must not be empty\n");
}

static void test_yaml_syntax_error_has_a_line(void **state)
{
	char *e;

	(void)state;
	e = load_err(MINIMAL "limits:\n  max_series: 1\n   bad: [\n");
	assert_non_null(strstr(e, "t.yml:"));
	assert_non_null(strstr(e, ": yaml: "));
	assert_int_equal(count_lines(e), 1);
	free(e);
	expect_errors(MINIMAL "---\nmode: enforce\n",
		      "t.yml:4: yaml: only one YAML document is allowed (remove the ---)\n");
	expect_errors("- a\n- b\n", "t.yml:1: config: must be a mapping, got a list\n");
	expect_errors(MINIMAL "? [a]\n: 1\n", "t.yml:3: config: must be a string key, got a list\n");
}

static void test_unreadable_file_is_enoent_or_eio(void **state)
{
	struct evbuffer *errs = evbuffer_new();
	struct conf *c = NULL;
	char *e;

	(void)state;
	assert_int_equal(conf_load("/nonexistent/promguard.yml", &c, errs), -ENOENT);
	assert_null(c);
	e = drain(errs);
	assert_string_equal(e, "/nonexistent/promguard.yml: cannot read: No such file or directory\n");
	free(e);
	assert_int_equal(conf_load("/", &c, errs), -EIO);
	e = drain(errs);
	assert_string_equal(e, "/: cannot read: Is a directory\n");
	free(e);
	evbuffer_free(errs);
}

static void test_example_config_loads(void **state)
{
	struct evbuffer *errs = evbuffer_new();
	struct conf *c = NULL;
	int rc = conf_load(VECTORS_DIR "/../../conf/promguard.yml", &c, errs);
	char *e = drain(errs);

	(void)state;
	if (rc)
		print_error("%s", e);
	assert_int_equal(rc, 0);
	assert_string_equal(c->upstream_url, "http://127.0.0.1:9090/api/v1/read");
	/* the example rule: any container_* metric without a namespace= matcher */
	assert_int_equal(c->n_rules, 1);
	assert_string_equal(c->rules[0].metric_regex, "container_.*");
	assert_string_equal(c->rules[0].lacks_label[0], "namespace");
	assert_int_equal(c->n_tenants, 1);
	assert_int_equal(c->n_upstream_headers, 1);
	/* everything else in it is the documented default */
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_SERIES], conf_limit_defs[CONF_LIMIT_MAX_SERIES].def);
	assert_int_equal(c->limits.v[CONF_LIMIT_MAX_REQUEST_BYTES], 4 << 20);
	free(e);
	conf_free(c);
	evbuffer_free(errs);
}

/* ---- value syntax --------------------------------------------------------------------------- */

static void test_durations_follow_prometheus_syntax(void **state)
{
	static const struct { const char *s; int64_t ms; } good[] = {
		{ "0", 0 }, { "0s", 0 }, { "500ms", 500 }, { "15s", 15000 }, { "2m", 120000 },
		{ "1h30m", 5400000 }, { "1d", 86400000 }, { "1w", 604800000 },
		{ "1y", 31536000000LL }, { "1h0m5s", 3605000 }, { "1m1ms", 60001 },
	};
	static const char *const bad[] = { "", "5", "1.5h", "-1s", "1m1h", "1s1s", "1H", "1 s", "s",
		"10000000000000000000ms", "999999999999y", "1mss", "ms" };
	size_t i;
	int64_t v;

	(void)state;
	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		v = -1;
		assert_int_equal(conf_parse_duration(good[i].s, &v), 0);
		assert_int_equal(v, good[i].ms);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (conf_parse_duration(bad[i], &v) != -EINVAL)
			fail_msg("duration \"%s\" accepted", bad[i]);
	}
}

static void test_sizes_accept_binary_and_decimal_units(void **state)
{
	static const struct { const char *s; int64_t b; } good[] = {
		{ "0", 0 }, { "123", 123 }, { "10B", 10 }, { "64KiB", 65536 }, { "4MiB", 4194304 },
		{ "1GiB", 1073741824 }, { "2TiB", 2199023255552LL }, { "4KB", 4000 }, { "3MB", 3000000 },
		{ "1GB", 1000000000 }, { "1TB", 1000000000000LL },
	};
	static const char *const bad[] = { "", "-1", "+1", "1.5MiB", "4mib", "4 MiB", "MiB", "1KiBB",
		"9999999999999999999", "9000000TiB" };
	size_t i;
	int64_t v;

	(void)state;
	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		v = -1;
		assert_int_equal(conf_parse_size(good[i].s, &v), 0);
		assert_int_equal(v, good[i].b);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (conf_parse_size(bad[i], &v) != -EINVAL)
			fail_msg("size \"%s\" accepted", bad[i]);
}

static void test_values_print_back_canonically(void **state)
{
	char b[64];

	(void)state;
	assert_string_equal(conf_format_value(CONF_T_SIZE, 4 << 20, b, sizeof(b)), "4MiB");
	assert_string_equal(conf_format_value(CONF_T_SIZE, 1536, b, sizeof(b)), "1536");
	assert_string_equal(conf_format_value(CONF_T_SIZE, 3072, b, sizeof(b)), "3KiB");
	assert_string_equal(conf_format_value(CONF_T_SIZE, 0, b, sizeof(b)), "0");
	assert_string_equal(conf_format_value(CONF_T_DURATION, 60000, b, sizeof(b)), "1m");
	assert_string_equal(conf_format_value(CONF_T_DURATION, 90000, b, sizeof(b)), "1m30s");
	assert_string_equal(conf_format_value(CONF_T_DURATION, 0, b, sizeof(b)), "0s");
	assert_string_equal(conf_format_value(CONF_T_DURATION, 1500, b, sizeof(b)), "1s500ms");
	assert_string_equal(conf_format_value(CONF_T_DURATION, 14 * 86400000LL, b, sizeof(b)), "2w");
	assert_string_equal(conf_format_value(CONF_T_DURATION, 90 * 86400000LL, b, sizeof(b)), "90d");
	assert_string_equal(conf_format_value(CONF_T_DURATION, 365 * 86400000LL, b, sizeof(b)), "1y");
	assert_string_equal(conf_format_value(CONF_T_BOOL, 1, b, sizeof(b)), "true");
	assert_string_equal(conf_format_value(CONF_T_BOOL, 0, b, sizeof(b)), "false");
	assert_string_equal(conf_format_value(CONF_T_RATIO, 300000, b, sizeof(b)), "0.3");
	assert_string_equal(conf_format_value(CONF_T_RATIO, 1000000, b, sizeof(b)), "1");
	assert_string_equal(conf_format_value(CONF_T_RATIO, 125, b, sizeof(b)), "0.000125");
	assert_string_equal(conf_format_value(CONF_T_COUNT, 100000, b, sizeof(b)), "100000");
}

/* ---- output --------------------------------------------------------------------------------- */

static void test_report_lists_limits_per_tenant_and_marks_overrides(void **state)
{
	struct evbuffer *out = evbuffer_new();
	struct conf *c;
	char *r;

	(void)state;
	c = load_ok("upstream:\n  url: http://a/\n  headers: {Authorization: Bearer secret}\n"
		    "mode: dry_run\n"
		    "tenants:\n  team-a: {max_series: 5000}\n"
		    "rules:\n  - {name: ns, when: {metric_regex: 'container_.*', lacks_label: [namespace]}}\n");
	conf_print_report(c, out);
	r = drain(out);
	assert_true(strncmp(r, "config ok\n", 10) == 0);
	assert_non_null(strstr(r, "mode: dry_run"));
	assert_non_null(strstr(r, "limits.max_series                100000"));
	assert_non_null(strstr(r, "limits.max_request_bytes         4MiB"));
	assert_non_null(strstr(r, "queue.max_queued                 256"));
	assert_non_null(strstr(r, "limits, tenant \"team-a\":\n"));
	assert_non_null(strstr(r, "  max_series                       5000         overridden (default 100000)\n"));
	assert_non_null(strstr(r, "  max_samples                      50000000\n"));
	assert_non_null(strstr(r, "estimator.probe_url              (unset)\n"));
	assert_non_null(strstr(r, "\"ns\": reject when metric_regex=container_.* lacks_label=namespace (line 8)"));
	assert_non_null(strstr(r, "upstream.timeout                 1m\n"));
	assert_non_null(strstr(r, "upstream.headers                 Authorization (values hidden)\n"));
	assert_null(strstr(r, "secret"));
	/* default first, then tenants, then rules */
	assert_true(strstr(r, "tenant default") < strstr(r, "team-a"));
	assert_true(strstr(r, "team-a") < strstr(r, "rules:"));
	free(r);
	evbuffer_free(out);
	conf_free(c);
}

static void test_json_escapes_strings_and_redacts_header_values(void **state)
{
	struct conf *c = load_ok("upstream:\n  url: http://a/\n  headers: {Authorization: Bearer secret}\n"
				 "tenants:\n  \"we\\\"ird\\\\\": {max_range: 90s}\n"
				 "rules:\n  - {name: ns, when: {matcher_types: [nre]}}\n");
	struct evbuffer *out = evbuffer_new();
	char *j;

	(void)state;
	conf_write_json(c, out);
	j = drain(out);
	assert_true(j[0] == '{' && j[strlen(j) - 1] == '}');
	assert_non_null(strstr(j, "\"path\":\"t.yml\""));
	assert_non_null(strstr(j, "\"listen\":\"127.0.0.1:9201\""));
	assert_non_null(strstr(j, "\"upstream\":{\"url\":\"http://a/\",\"timeout\":\"1m\",\"max_connections\":64,"
			       "\"headers\":{\"Authorization\":\"<redacted>\"},\"propagate_limits\":\"none\"}"));
	assert_non_null(strstr(j, "\"we\\\"ird\\\\\":{\"limits\":{\"max_series\":100000,"));
	assert_non_null(strstr(j, "\"max_range\":\"1m30s\""));
	assert_non_null(strstr(j, "\"overridden\":[\"max_range\"]"));
	assert_non_null(strstr(j, "\"rules\":[{\"name\":\"ns\",\"action\":\"reject\",\"when\":{\"metric\":null,"));
	assert_non_null(strstr(j, "\"matcher_types\":[\"nre\"]"));
	assert_non_null(strstr(j, "\"require_metric_name\":true"));
	assert_non_null(strstr(j, "\"low_watermark\":0.3"));
	assert_non_null(strstr(j, "\"probe_url\":null"));
	assert_non_null(strstr(j, "\"queue\":{\"max_queued\":256,"));
	assert_null(strstr(j, "secret"));
	free(j);
	evbuffer_free(out);
	conf_free(c);
}

static void test_reload_keeps_unreloadable_keys(void **state)
{
	struct conf *cur = load_ok(MINIMAL);
	struct conf *next = load_ok(MINIMAL "listen: 127.0.0.1:9301\npool: {memory_limit: 2GiB}\n"
				    "limits: {max_series: 7}\nmode: dry_run\n");
	struct evbuffer *w = evbuffer_new();
	char *s;

	(void)state;
	assert_int_equal(conf_keep_unreloadable(next, cur, w), 2);
	s = drain(w);
	assert_string_equal(s,
		"listen: changed from 127.0.0.1:9201 to 127.0.0.1:9301; a reload cannot apply it, "
		"keeping 127.0.0.1:9201 until restart\n"
		"pool.memory_limit: changed from 1GiB to 2GiB; a reload cannot apply it, keeping 1GiB "
		"until restart\n");
	assert_string_equal(next->listen, "127.0.0.1:9201");
	assert_int_equal(next->pool_memory_limit, 1 << 30);
	/* reloadable keys keep their new values */
	assert_int_equal(next->limits.v[CONF_LIMIT_MAX_SERIES], 7);
	assert_int_equal(next->mode, CONF_MODE_DRY_RUN);
	assert_int_equal(conf_keep_unreloadable(next, cur, NULL), 0);
	free(s);
	evbuffer_free(w);
	conf_free(cur);
	conf_free(next);
}

static void test_errors_buffer_is_optional(void **state)
{
	int dummy;
	struct conf *c = (struct conf *)&dummy; /* the loader must reset it */

	(void)state;
	assert_int_equal(conf_load_string("t.yml", "mode: 1\n", 8, &c, NULL), -EINVAL);
	assert_null(c);
	conf_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults_follow_the_interface),
		cmocka_unit_test(test_every_key_is_parsed),
		cmocka_unit_test(test_rule_defaults_leave_conditions_untested),
		cmocka_unit_test(test_tenant_overrides_merge_with_global_limits),
		cmocka_unit_test(test_limit_table_is_complete_and_consistent),
		cmocka_unit_test(test_bad_value_names_file_line_and_key),
		cmocka_unit_test(test_out_of_bounds_value_is_shown_in_its_unit),
		cmocka_unit_test(test_all_errors_are_collected),
		cmocka_unit_test(test_unknown_key_is_an_error),
		cmocka_unit_test(test_duplicate_keys_are_errors),
		cmocka_unit_test(test_bad_regex_reports_pcre2_message),
		cmocka_unit_test(test_rules_need_a_unique_name_and_a_condition),
		cmocka_unit_test(test_upstream_url_must_be_plain_http),
		cmocka_unit_test(test_reserved_upstream_headers_are_rejected),
		cmocka_unit_test(test_addresses_paths_and_header_names_are_validated),
		cmocka_unit_test(test_watermarks_and_delays_are_ordered),
		cmocka_unit_test(test_tenant_names_must_be_printable),
		cmocka_unit_test(test_empty_tenant_name_is_checked_in_bounds),
		cmocka_unit_test(test_yaml_syntax_error_has_a_line),
		cmocka_unit_test(test_unreadable_file_is_enoent_or_eio),
		cmocka_unit_test(test_example_config_loads),
		cmocka_unit_test(test_durations_follow_prometheus_syntax),
		cmocka_unit_test(test_sizes_accept_binary_and_decimal_units),
		cmocka_unit_test(test_values_print_back_canonically),
		cmocka_unit_test(test_report_lists_limits_per_tenant_and_marks_overrides),
		cmocka_unit_test(test_json_escapes_strings_and_redacts_header_values),
		cmocka_unit_test(test_reload_keeps_unreloadable_keys),
		cmocka_unit_test(test_errors_buffer_is_optional),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

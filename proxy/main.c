/*
 * promguard: a query-admission guard proxy for Prometheus remote read.
 *
 * main() parses the command line and either runs a one-shot command (--version, --check-config,
 * decode, --describe-metrics) or the proxy: one event loop with the remote-read listener, the
 * admin listener, the upstream pool and the request flow.
 */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <protobuf-c/protobuf-c.h>

#include "limiter/probe.h"
#include "pool/pool.h"
#include "proto/request.h"
#include "proxy/admin.h"
#include "proxy/conf.h"
#include "proxy/flow.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/server.h"
#include "proxy/upstream.h"

#ifndef PROMGUARD_SNAPPY_VERSION
#define PROMGUARD_SNAPPY_VERSION "unknown"
#endif

#define DEFAULT_CONFIG "conf/promguard.yml"
#define DECODE_MAX_BYTES (64u << 20) /* `promguard decode` reads at most this much */
#define DRAIN_POLL_MS 20             /* how often draining checks whether it is done */
#define MALLOC_MMAP_THRESHOLD (4 << 20)  /* blocks below this come from the heap */
#define MALLOC_TRIM_THRESHOLD (16 << 20) /* free heap kept before returning it to the kernel */
#define PROBE_MAX_CONNECTIONS 4          /* series API probes running at once; more wait */

/* Everything the running proxy owns. */
struct app {
	struct event_base *base;
	struct conf *conf;            /* the config in force (one reference) */
	struct proxy_upstream *up;
	struct proxy_upstream *probe_up; /* the store's series API; NULL with estimator.probe: off */
	struct pool *pool;            /* every response's memory is reserved from it */
	struct proxy_flow *flow;
	struct proxy_server *data;    /* listen */
	struct proxy_server *admin;   /* admin_listen; NULL when it equals listen */
	struct proxy_admin admin_ctx;
	struct event *sig_term, *sig_int, *sig_hup;
	struct event *grace;
	struct event *drain_check;    /* polls for the end of draining */
	int shared_listener;          /* admin endpoints served on listen */
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: promguard [-c FILE] [--check-config] [--log-level LEVEL]\n"
		"       promguard --version | --describe-metrics | --help\n"
		"       promguard decode [FILE]\n"
		"\n"
		"  -c, --config FILE     configuration file (default %s)\n"
		"      --check-config    validate the configuration, print the effective limits, exit\n"
		"      --log-level LVL   debug|info|warn|error (overrides log_level in the file)\n"
		"      --version         print versions and exit\n"
		"      --describe-metrics  list every exported metric and exit\n"
		"  decode [FILE]         print the queries of a snappy ReadRequest (FILE or stdin)\n",
		DEFAULT_CONFIG);
}

static void print_version(void)
{
	printf("promguard %s\nlibevent %s\nprotobuf-c %s\nsnappy %s\n", PROMGUARD_VERSION, event_get_version(),
	       protobuf_c_version(), PROMGUARD_SNAPPY_VERSION);
}

/* --- promguard decode ---------------------------------------------------------------------- */

static int read_all(FILE *in, uint8_t **out, size_t *len)
{
	size_t cap = 65536, n = 0;
	uint8_t *buf = malloc(cap);

	if (!buf)
		return -ENOMEM;
	for (;;) {
		if (n == cap) {
			if (cap >= DECODE_MAX_BYTES) {
				free(buf);
				return -E2BIG;
			}
			uint8_t *nb = realloc(buf, cap * 2);
			if (!nb) {
				free(buf);
				return -ENOMEM;
			}
			buf = nb;
			cap *= 2;
		}
		size_t r = fread(buf + n, 1, cap - n, in);
		n += r;
		if (r == 0) {
			if (ferror(in)) {
				free(buf);
				return -EIO;
			}
			break;
		}
	}
	*out = buf;
	*len = n;
	return 0;
}

static int cmd_decode(const char *path)
{
	FILE *in = stdin;
	uint8_t *body = NULL;
	size_t len = 0;
	struct proto_request *req = NULL;
	char err[512], name[32];
	uint64_t size = 0;
	int rc;

	if (path && strcmp(path, "-") != 0) {
		in = fopen(path, "rb");
		if (!in) {
			fprintf(stderr, "promguard decode: %s: %s\n", path, strerror(errno));
			return 1;
		}
	}
	rc = read_all(in, &body, &len);
	if (in != stdin)
		fclose(in);
	if (rc < 0) {
		fprintf(stderr, "promguard decode: %s: %s\n", path ? path : "stdin",
			rc == -E2BIG ? "input larger than 64MiB" : strerror(-rc));
		return 1;
	}
	rc = proto_request_decode(body, len, DECODE_MAX_BYTES, NULL, &req, &size, err, sizeof(err));
	if (rc < 0) {
		if (rc == -E2BIG)
			fprintf(stderr, "promguard decode: request too large: %llu > %u\n", (unsigned long long)size,
				DECODE_MAX_BYTES);
		else
			fprintf(stderr, "promguard decode: %s\n", err);
		free(body);
		return 1;
	}
	printf("read request: %zu bytes compressed, %zu decoded, %zu quer%s\n", len, req->decoded_bytes,
	       req->n_queries, req->n_queries == 1 ? "y" : "ies");
	printf("accepted response types:");
	if (req->n_accepted_types == 0)
		printf(" (none: SAMPLES)");
	for (size_t i = 0; i < req->n_accepted_types; i++)
		printf(" %s", proto_response_type_name(req->accepted_types[i], name, sizeof(name)));
	printf("\n");
	for (size_t i = 0; i < req->n_queries; i++) {
		const struct proto_query *q = &req->queries[i];
		size_t need = proto_selector_print(q, NULL, 0) + 1;
		char *sel = malloc(need);
		char range[128], hints[1024];

		if (!sel)
			break;
		proto_selector_print(q, sel, need);
		proto_range_print(q, range, sizeof(range));
		proto_hints_print(q, hints, sizeof(hints));
		printf("query %zu: %s %s%s%s\n", i, sel, range, hints[0] ? " hints: " : "", hints);
		free(sel);
	}
	proto_request_free(req);
	free(body);
	return 0;
}

/* --- running ------------------------------------------------------------------------------- */

/* The pool's settings from a config (failure injection comes from the environment). */
static void pool_settings_from(const struct conf *c, struct pool_settings *ps)
{
	memset(ps, 0, sizeof(*ps));
	ps->memory_limit = (uint64_t)c->pool_memory_limit;
	ps->low_watermark = (double)c->pool_low_watermark_ppm / 1e6;
	ps->high_watermark = (double)c->pool_high_watermark_ppm / 1e6;
}

/* Apply log_level from <c> unless --log-level was given. */
static int log_level_pinned;

static void log_set_level_from(const struct conf *c)
{
	enum log_level lvl;

	if (!log_level_pinned && log_level_parse(c->log_level, &lvl) == 0)
		log_set_level(lvl);
}

static uint64_t data_body_cap(struct proxy_req *req, void *arg)
{
	struct app *app = arg;

	if (strcmp(proxy_req_path(req), app->conf->read_path) == 0)
		return proxy_flow_body_cap(app->flow, req);
	return PROXY_ADMIN_BODY_CAP;
}

static void data_handle(struct proxy_req *req, void *arg)
{
	struct app *app = arg;

	if (strcmp(proxy_req_path(req), app->conf->read_path) == 0)
		proxy_flow_handle(app->flow, req);
	else if (app->shared_listener && proxy_admin_owns(proxy_req_path(req)))
		proxy_admin_handle(&app->admin_ctx, req);
	else {
		metrics_inc(METRICS_REQUESTS, "404", NULL);
		proxy_req_add_header(req, "X-Promguard-Decision", "reject; reason=not_found; estimate=0; source=none");
		proxy_req_reply_text(req, 404, "promguard: not found: %.200s (remote read is served on %s)",
				     proxy_req_path(req), app->conf->read_path);
	}
}

static uint64_t admin_body_cap(struct proxy_req *req, void *arg)
{
	(void)req;
	(void)arg;
	return PROXY_ADMIN_BODY_CAP;
}

static void admin_handle(struct proxy_req *req, void *arg)
{
	struct app *app = arg;

	proxy_admin_handle(&app->admin_ctx, req);
}

/* Draining ends when no query is in flight and every reply has reached its client. */
static void drain_check_cb(evutil_socket_t fd, short what, void *arg)
{
	struct app *app = arg;

	(void)fd;
	(void)what;
	if (proxy_flow_stats(app->flow)->inflight == 0 && proxy_server_connections(app->data) == 0) {
		log_info("drained", "inflight=0 connections=0");
		event_base_loopexit(app->base, NULL);
	}
}

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
	struct app *app = arg;

	(void)fd;
	(void)what;
	log_warn("shutdown grace expired", "inflight=%llu", (unsigned long long)proxy_flow_stats(app->flow)->inflight);
	event_base_loopexit(app->base, NULL);
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
	struct app *app = arg;
	int64_t ms = app->conf->shutdown_grace_ms;
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };

	(void)what;
	if (app->admin_ctx.draining) {
		log_warn("second stop signal: exiting now", "signal=%d", (int)sig);
		event_base_loopexit(app->base, NULL);
		return;
	}
	app->admin_ctx.draining = 1;
	log_info("draining", "signal=%d inflight=%llu grace_ms=%lld", (int)sig,
		 (unsigned long long)proxy_flow_stats(app->flow)->inflight, (long long)ms);
	proxy_server_drain(app->data);
	evtimer_add(app->grace, &tv);
	struct timeval poll = { 0, DRAIN_POLL_MS * 1000 };
	event_add(app->drain_check, &poll);
}

/* client.* timeouts onto both listeners (the admin one too: it is a client port like any). */
static void apply_client_timeouts(struct app *app, const struct conf *c)
{
	struct proxy_server_timeouts t = { c->client_request_timeout_ms, c->client_idle_timeout_ms,
					   c->client_write_timeout_ms };

	proxy_server_set_timeouts(app->data, &t);
	proxy_server_set_timeouts(app->admin, &t);
}

/*
 * Load the config file again and swap it in for new requests (SIGHUP, POST /-/reload). Keys a
 * reload cannot change keep their running value, with a warning. On any error the running config
 * stays and every error goes to <errs> (may be NULL) and the log.
 */
static int app_reload(void *arg, struct evbuffer *errs)
{
	struct app *app = arg;
	struct conf *next = NULL;
	struct evbuffer *msgs = evbuffer_new();
	char *line;
	int rc;

	if (!msgs)
		return -ENOMEM;
	rc = conf_load(app->conf->path, &next, msgs);
	if (rc == 0)
		rc = conf_keep_unreloadable(next, app->conf, msgs) < 0 ? -ENOMEM : 0;
	if (rc == 0)
		rc = proxy_flow_set_conf(app->flow, next);
	if (rc == 0) {
		struct pool_settings ps;
		pool_settings_from(next, &ps); /* watermarks; memory_limit is kept by conf_keep_unreloadable */
		char perr[128];
		if (pool_env_apply(&ps, perr, sizeof(perr)) == 0)
			rc = pool_configure(app->pool, &ps);
	}
	metrics_set(METRICS_CONFIG_RELOAD_OK, NULL, NULL, rc == 0);
	/* errors (or, on success, warnings about kept keys): one log line each */
	while ((line = evbuffer_readln(msgs, NULL, EVBUFFER_EOL_LF))) {
		char q[700];
		if (rc == 0)
			log_warn("reload kept a running value", "detail=%s", log_quote(q, sizeof(q), line));
		else
			log_error("reload failed: old config kept", "detail=%s", log_quote(q, sizeof(q), line));
		if (errs && rc < 0)
			evbuffer_add_printf(errs, "%s\n", line);
		free(line);
	}
	evbuffer_free(msgs);
	if (rc < 0) {
		conf_unref(next);
		if (errs && evbuffer_get_length(errs) == 0)
			evbuffer_add_printf(errs, "promguard: reload failed: %s\n", strerror(-rc));
		return rc;
	}
	conf_unref(app->conf);
	app->conf = next;
	apply_client_timeouts(app, next);
	app->admin_ctx.conf = next;
	log_set_level_from(next);
	metrics_set_tenant_limit((size_t)next->admin_max_tenant_labels);
	log_info("config reloaded", "config=%s mode=%s tenants=%zu rules=%zu", next->path,
		 next->mode == CONF_MODE_DRY_RUN ? "dry_run" : "enforce", next->n_tenants, next->n_rules);
	return 0;
}

static void on_hup(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	app_reload(arg, NULL);
}

static void app_free(struct app *app)
{
	proxy_server_free(app->data);
	proxy_server_free(app->admin);
	proxy_flow_free(app->flow);
	proxy_upstream_free(app->up);
	proxy_upstream_free(app->probe_up);
	pool_free(app->pool);
	if (app->sig_term)
		event_free(app->sig_term);
	if (app->sig_int)
		event_free(app->sig_int);
	if (app->sig_hup)
		event_free(app->sig_hup);
	if (app->grace)
		event_free(app->grace);
	if (app->drain_check)
		event_free(app->drain_check);
	if (app->base)
		event_base_free(app->base);
	conf_unref(app->conf);
	metrics_deinit();
}

static int run(struct conf *conf)
{
	struct app app;
	char err[512], probe_path[256];
	struct pool_settings ps;
	struct proxy_server_cbs data_cbs = { data_body_cap, data_handle };
	struct proxy_server_cbs admin_cbs = { admin_body_cap, admin_handle };

	memset(&app, 0, sizeof(app));
	app.conf = conf;
	signal(SIGPIPE, SIG_IGN);
	/*
	 * Relaying a stream allocates and frees 64 KiB buffers at a high rate. With glibc's
	 * defaults the heap top is trimmed and regrown (and large blocks mmapped) over and over:
	 * perf showed page faults and page clearing at ~20% of the relay's CPU. Keep freed memory
	 * mapped up to a bound instead. (The buffer pool of issue #4 replaces this.)
	 */
	mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD);
	mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD);
	if (metrics_init() < 0) {
		log_error("cannot start", "error=\"out of memory\"");
		conf_unref(conf);
		return 1;
	}
	metrics_set(METRICS_CONFIG_RELOAD_OK, NULL, NULL, 1);
	app.base = event_base_new();
	if (!app.base) {
		log_error("cannot start", "error=\"event_base_new failed\"");
		app_free(&app);
		return 1;
	}
	app.up = proxy_upstream_new(app.base, conf->upstream_host, conf->upstream_port, conf->upstream_path,
				    conf->upstream_timeout_ms, (size_t)conf->upstream_max_connections, err, sizeof(err));
	if (!app.up) {
		log_error("cannot start", "key=upstream.url error=\"%s\"", err);
		app_free(&app);
		return 1;
	}
	if (conf->est_probe == CONF_PROBE_SERIES_API) {
		/* the series API of estimator.probe_url, else of the store behind upstream.url */
		const char *host = conf->est_probe_host ? conf->est_probe_host : conf->upstream_host;
		int port = conf->est_probe_host ? conf->est_probe_port : conf->upstream_port;
		limiter_probe_series_path(conf->est_probe_path ? conf->est_probe_path : conf->upstream_path, probe_path,
					  sizeof(probe_path));
		app.probe_up = proxy_upstream_new(app.base, host, port, probe_path, conf->upstream_timeout_ms,
						  PROBE_MAX_CONNECTIONS, err, sizeof(err));
		if (!app.probe_up) {
			log_error("cannot start", "key=estimator.probe_url error=\"%s\"", err);
			app_free(&app);
			return 1;
		}
	}
	pool_settings_from(conf, &ps);
	if (pool_env_apply(&ps, err, sizeof(err)) < 0 || !(app.pool = pool_new(app.base, &ps))) {
		log_error("cannot start", "key=pool.memory_limit error=\"%s\"", app.pool ? "" : err[0] ? err : "out of memory");
		app_free(&app);
		return 1;
	}
	if (ps.fail_rate > 0 || ps.poison)
		log_warn("pool failure injection on", "fail_rate=%.3f poison=%d", ps.fail_rate, ps.poison);
	app.flow = proxy_flow_new(app.base, conf, app.up, app.probe_up, app.probe_up ? probe_path : NULL, app.pool);
	app.admin_ctx = (struct proxy_admin){ .conf = conf, .flow = app.flow, .up = app.up, .pool = app.pool,
					      .started = time(NULL),
					      .reload = app_reload, .reload_arg = &app };
	app.shared_listener = strcmp(conf->listen, conf->admin_listen) == 0;
	app.data = proxy_server_new(app.base, "read", conf->listen, &data_cbs, &app, err, sizeof(err));
	if (!app.data) {
		log_error("cannot start", "key=listen error=\"%s\"", err);
		app_free(&app);
		return 1;
	}
	if (!app.shared_listener) {
		app.admin = proxy_server_new(app.base, "admin", conf->admin_listen, &admin_cbs, &app, err, sizeof(err));
		if (!app.admin) {
			log_error("cannot start", "key=admin_listen error=\"%s\"", err);
			app_free(&app);
			return 1;
		}
	}
	apply_client_timeouts(&app, conf);
	app.sig_term = evsignal_new(app.base, SIGTERM, on_stop_signal, &app);
	app.sig_int = evsignal_new(app.base, SIGINT, on_stop_signal, &app);
	app.sig_hup = evsignal_new(app.base, SIGHUP, on_hup, &app);
	app.grace = evtimer_new(app.base, grace_cb, &app);
	app.drain_check = event_new(app.base, -1, EV_PERSIST, drain_check_cb, &app);
	if (!app.flow || !app.sig_term || !app.sig_int || !app.sig_hup || !app.grace || !app.drain_check) {
		log_error("cannot start", "error=\"out of memory\"");
		app_free(&app);
		return 1;
	}
	evsignal_add(app.sig_term, NULL);
	evsignal_add(app.sig_int, NULL);
	evsignal_add(app.sig_hup, NULL);

	log_info("listening", "version=%s listen=%s admin_listen=%s read_path=%s upstream=%s mode=%s", PROMGUARD_VERSION,
		 conf->listen, conf->admin_listen, conf->read_path, conf->upstream_url,
		 conf->mode == CONF_MODE_DRY_RUN ? "dry_run" : "enforce");
	event_base_dispatch(app.base);
	log_info("stopped", "requests=%llu", (unsigned long long)proxy_flow_stats(app.flow)->requests);
	app_free(&app);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check-config", no_argument, NULL, 'C' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "version", no_argument, NULL, 'V' },
		{ "describe-metrics", no_argument, NULL, 'M' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = DEFAULT_CONFIG, *level = NULL;
	int check = 0, opt;
	enum log_level lvl;
	struct conf *conf = NULL;
	struct evbuffer *out;

	if (argc >= 2 && strcmp(argv[1], "decode") == 0) {
		if (argc > 3) {
			usage(stderr);
			return 2;
		}
		return cmd_decode(argc == 3 ? argv[2] : NULL);
	}
	while ((opt = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (opt) {
		case 'c': path = optarg; break;
		case 'C': check = 1; break;
		case 'l': level = optarg; break;
		case 'V': print_version(); return 0;
		case 'M':
			out = evbuffer_new();
			metrics_describe(out);
			evbuffer_write(out, STDOUT_FILENO);
			evbuffer_free(out);
			return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "promguard: unexpected argument: %s\n", argv[optind]);
		usage(stderr);
		return 2;
	}
	if (level && log_level_parse(level, &lvl) < 0) {
		fprintf(stderr, "promguard: --log-level: must be debug, info, warn or error, got \"%s\"\n", level);
		return 2;
	}

	out = evbuffer_new();
	if (!out)
		return 1;
	if (conf_load(path, &conf, out) < 0) {
		evbuffer_write(out, STDERR_FILENO);
		evbuffer_free(out);
		if (!check)
			fprintf(stderr, "promguard: configuration invalid; not starting\n");
		return 1;
	}
	if (check) {
		conf_print_report(conf, out);
		evbuffer_write(out, STDOUT_FILENO);
		evbuffer_free(out);
		conf_free(conf);
		return 0;
	}
	evbuffer_free(out);
	if (level) {
		log_set_level(lvl);
		log_level_pinned = 1;
	}
	log_set_level_from(conf);
	metrics_set_tenant_limit((size_t)conf->admin_max_tenant_labels);
	return run(conf);
}

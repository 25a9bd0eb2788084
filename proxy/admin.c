/* proxy_admin: operator endpoints (see admin.h). */
#include "proxy/admin.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>

#include "pool/pool.h"
#include "proxy/conf.h"
#include "proxy/flow.h"
#include "proxy/http.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/server.h"
#include "proxy/upstream.h"

struct route {
	const char *path;
	const char *method;
	void (*fn)(struct proxy_admin *a, struct proxy_req *req);
};

/* Copy the pool's figures into its metrics (they are read from the pool, not counted twice). */
static void refresh_pool_metrics(const struct pool *p)
{
	struct pool_stats st;

	pool_get_stats(p, &st);
	metrics_set(METRICS_POOL_BYTES, "free", NULL, (double)st.free_bytes);
	metrics_set(METRICS_POOL_BYTES, "in_use", NULL, (double)st.in_use_bytes);
	metrics_set(METRICS_POOL_LIMIT_BYTES, NULL, NULL, (double)st.limit_bytes);
	metrics_set(METRICS_POOL_GET_ON_EMPTY, NULL, NULL, (double)st.get_on_empty);
	metrics_set(METRICS_POOL_REFILLS, NULL, NULL, (double)st.refills);
	metrics_set(METRICS_POOL_WAITS, NULL, NULL, (double)st.waits);
	metrics_set(METRICS_POOL_WAIT_TIMEOUTS, NULL, NULL, (double)st.wait_timeouts);
	metrics_set(METRICS_POOL_WAITERS, NULL, NULL, (double)st.waiters);
	metrics_set(METRICS_POOL_FAILED_GETS, NULL, NULL, (double)st.failed_gets);
	metrics_set(METRICS_POOL_PEAK, NULL, NULL, (double)st.peak_in_use_bytes);
	metrics_set(METRICS_POOL_RESERVED, NULL, NULL, (double)st.reserved_bytes);
	for (int c = 0; c < POOL_CLASS__COUNT; c++) {
		const char *name = pool_class_name((enum pool_class)c);
		const struct pool_class_stats *cs = &st.cls[c];
		metrics_set(METRICS_POOL_CLASS_BYTES, name, "free", (double)cs->free_bytes);
		metrics_set(METRICS_POOL_CLASS_BYTES, name, "in_use", (double)cs->in_use_bytes);
		metrics_set(METRICS_POOL_CLASS_GETS, name, "ok", (double)(cs->gets - cs->failed_gets));
		metrics_set(METRICS_POOL_CLASS_GETS, name, "on_empty", (double)cs->get_on_empty);
		metrics_set(METRICS_POOL_CLASS_GETS, name, "failed", (double)cs->failed_gets);
		metrics_set(METRICS_POOL_CLASS_REFILLS, name, NULL, (double)cs->refills);
		metrics_set(METRICS_POOL_CLASS_TRIMS, name, NULL, (double)cs->trims);
		metrics_set(METRICS_POOL_CLASS_PEAK, name, NULL, (double)cs->peak_in_use_bytes);
	}
}

static void serve_metrics(struct proxy_admin *a, struct proxy_req *req)
{
	struct evbuffer *b = evbuffer_new();

	if (!b) {
		proxy_req_abort(req);
		return;
	}
	refresh_pool_metrics(a->pool);
	if (a->flow)
		proxy_flow_refresh_metrics(a->flow);
	metrics_refresh_process();
	metrics_render(b);
	proxy_req_add_header(req, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	proxy_req_reply(req, 200, b);
	evbuffer_free(b);
}

static void serve_healthy(struct proxy_admin *a, struct proxy_req *req)
{
	(void)a;
	proxy_req_reply_text(req, 200, "promguard is healthy.");
}

/* Ready: config loaded, not draining, and the store accepts connections. */
static const char *not_ready_reason(const struct proxy_admin *a)
{
	if (!a->conf)
		return "no configuration loaded";
	if (a->draining)
		return "draining";
	if (!proxy_upstream_reachable(a->up))
		return "store unreachable";
	return NULL;
}

static void serve_ready(struct proxy_admin *a, struct proxy_req *req)
{
	const char *why = not_ready_reason(a);

	if (why)
		proxy_req_reply_text(req, 503, "promguard: not ready: %s (%s)", why, proxy_upstream_name(a->up));
	else
		proxy_req_reply_text(req, 200, "promguard is ready.");
}

static void serve_status(struct proxy_admin *a, struct proxy_req *req)
{
	struct evbuffer *b = evbuffer_new();
	const struct proxy_flow_stats *s = proxy_flow_stats(a->flow);
	const char *why = not_ready_reason(a);
	struct pool_stats ps;

	if (!b) {
		proxy_req_abort(req);
		return;
	}
	evbuffer_add_printf(b,
			    "{\"version\":\"%s\",\"uptime_seconds\":%lld,\"ready\":%s,\"draining\":%s,"
			    "\"upstream\":{\"address\":\"%s\",\"reachable\":%s,\"connections\":%zu,\"waiting\":%zu},"
			    "\"counters\":{\"requests\":%llu,\"queries\":%llu,\"bad_requests\":%llu,"
			    "\"upstream_errors\":%llu,\"rejected\":%llu,\"response_series\":%llu,"
			    "\"response_bytes\":%llu,\"inflight\":%llu},\"config\":",
			    PROMGUARD_VERSION, (long long)(time(NULL) - a->started), why ? "false" : "true",
			    a->draining ? "true" : "false", proxy_upstream_name(a->up),
			    proxy_upstream_reachable(a->up) ? "true" : "false", proxy_upstream_connections(a->up),
			    proxy_upstream_waiting(a->up), (unsigned long long)s->requests,
			    (unsigned long long)s->queries, (unsigned long long)s->bad_requests,
			    (unsigned long long)s->upstream_errors, (unsigned long long)s->rejected,
			    (unsigned long long)s->response_series,
			    (unsigned long long)s->response_bytes, (unsigned long long)s->inflight);
	conf_write_json(a->conf, b);
	pool_get_stats(a->pool, &ps);
	evbuffer_add_printf(b, ",\"pool\":{\"limit_bytes\":%llu,\"in_use_bytes\":%llu,\"free_bytes\":%llu,"
			    "\"reserved_bytes\":%llu,\"large_bytes\":%llu,\"peak_in_use_bytes\":%llu,\"waiters\":%llu,"
			    "\"waits\":%llu,\"wait_timeouts\":%llu,\"failed_gets\":%llu}",
			    (unsigned long long)ps.limit_bytes, (unsigned long long)ps.in_use_bytes,
			    (unsigned long long)ps.free_bytes, (unsigned long long)ps.reserved_bytes,
			    (unsigned long long)ps.large_bytes, (unsigned long long)ps.peak_in_use_bytes,
			    (unsigned long long)ps.waiters, (unsigned long long)ps.waits,
			    (unsigned long long)ps.wait_timeouts, (unsigned long long)ps.failed_gets);
	evbuffer_add_lit(b, ",\"queue\":");
	proxy_flow_write_queue(a->flow, b);
	evbuffer_add_lit(b, ",\"top_rejected\":");
	proxy_flow_write_top_rejected(a->flow, b);
	evbuffer_add_lit(b, "}\n");
	proxy_req_add_header(req, "Content-Type", "application/json");
	proxy_req_reply(req, 200, b);
	evbuffer_free(b);
}

/* Compare without an early exit, so the time taken says nothing about where a guess went wrong. */
static int token_equal(const char *a, const char *b)
{
	size_t na = strlen(a), nb = strlen(b);
	unsigned char diff = na != nb;

	for (size_t i = 0; i < na; i++)
		diff |= (unsigned char)(a[i] ^ b[i % (nb ? nb : 1)]);
	return diff == 0;
}

/* admin.reload_token_file set: the request must carry "Authorization: Bearer <token>". */
static int reload_authorized(const struct proxy_admin *a, struct proxy_req *req)
{
	const char *h = proxy_req_header(req, "Authorization");

	if (!a->conf->admin_reload_token)
		return 1;
	return h && strncasecmp(h, "Bearer ", 7) == 0 && token_equal(h + 7, a->conf->admin_reload_token);
}

static void serve_reload(struct proxy_admin *a, struct proxy_req *req)
{
	struct evbuffer *errs;

	if (!reload_authorized(a, req)) {
		metrics_inc(METRICS_ADMIN_UNAUTHORIZED, "/-/reload", NULL);
		log_warn("reload refused", "peer=%s reason=%s limit=admin.reload_token_file", proxy_req_peer(req),
			 proxy_req_header(req, "Authorization") ? "wrong_token" : "no_token");
		proxy_req_add_header(req, "WWW-Authenticate", "Bearer realm=\"promguard\"");
		proxy_req_reply_text(req, 401, "promguard: unauthorized: POST /-/reload needs \"Authorization: Bearer "
				     "<token>\" with the token in admin.reload_token_file");
		return;
	}
	errs = evbuffer_new();
	if (!errs) {
		proxy_req_abort(req);
		return;
	}
	if (a->reload(a->reload_arg, errs) == 0) {
		proxy_req_reply_text(req, 200, "promguard: config reloaded");
	} else {
		/* every error, one per line, as --check-config prints them */
		proxy_req_add_header(req, "Content-Type", "text/plain; charset=utf-8");
		proxy_req_reply(req, 400, errs);
	}
	evbuffer_free(errs);
}

static void serve_explain(struct proxy_admin *a, struct proxy_req *req)
{
	struct evbuffer *b = evbuffer_new();
	char err[512];
	int status;

	if (!b) {
		proxy_req_abort(req);
		return;
	}
	status = proxy_flow_explain(a->flow, proxy_req_query(req), b, err, sizeof(err));
	if (status == 200) {
		proxy_req_add_header(req, "Content-Type", "application/json");
		proxy_req_reply(req, 200, b);
	} else {
		proxy_req_reply_text(req, status, "%s", err);
	}
	evbuffer_free(b);
}

static const struct route routes[] = {
	{ "/-/reload", "POST", serve_reload },
	{ "/api/v1/explain", "GET", serve_explain },
	{ "/metrics", "GET", serve_metrics },
	{ "/-/healthy", "GET", serve_healthy },
	{ "/-/ready", "GET", serve_ready },
	{ "/api/v1/status", "GET", serve_status },
};

int proxy_admin_owns(const char *path)
{
	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
		if (strcmp(path, routes[i].path) == 0)
			return 1;
	return 0;
}

void proxy_admin_handle(struct proxy_admin *a, struct proxy_req *req)
{
	const char *path = proxy_req_path(req);
	const char *method = proxy_req_method(req);

	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
		if (strcmp(path, routes[i].path) != 0)
			continue;
		/* HEAD is answered like GET by most tools' health checks; we keep it strict */
		if (strcmp(method, routes[i].method) != 0) {
			proxy_req_add_header(req, "Allow", routes[i].method);
			proxy_req_reply_text(req, 405, "promguard: method not allowed: %.32s (only %s is served on %s)",
					     method, routes[i].method, path);
			return;
		}
		routes[i].fn(a, req);
		return;
	}
	proxy_req_reply_text(req, 404, "promguard: not found: %.200s", path);
}

/*
 * proxy_flow: the remote-read request path (see flow.h). Read proxy_flow_handle() first; the
 * upstream callbacks below it follow the response from head to last byte.
 */
#include "proxy/flow.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>
#include <snappy-c.h>

#include "proto/frame.h"
#include "proto/request.h"
#include "proto/scan.h"
#include "proxy/conf.h"
#include "proxy/http.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/server.h"
#include "proxy/upstream.h"

#define TENANT_MAX 128                    /* longest tenant header value accepted */
#define STREAM_MAX_FRAME 50000000         /* Prometheus' own chunked_read_limit default */
#define SCAN_DECODED_MAX (1024ULL << 20)  /* SAMPLES bodies decoding larger are relayed uncounted */
#define DECISION_ADMIT "admit; reason=none; estimate=0; source=none"
#define DECISION_BAD "reject; reason=bad_request; estimate=0; source=none"

/* How a response is relayed, decided from its status and Content-Type. */
enum relay_mode {
	RELAY_NONE,    /* no response head yet */
	RELAY_SAMPLES, /* 2xx SAMPLES: buffered, counted, then sent whole */
	RELAY_STREAM,  /* 2xx STREAMED_XOR_CHUNKS: relayed as it arrives, frames counted */
	RELAY_PASS,    /* anything else (store errors): relayed as it arrives, untouched */
};

struct proxy_flow {
	const struct conf *conf;          /* (ref) */
	struct proxy_upstream *up;        /* (ref) */
	struct proxy_flow_stats stats;
};

/* One remote-read request in flight. */
struct flow_req {
	struct proxy_flow *f;             /* (ref) */
	struct proxy_req *req;            /* (ref) client request; NULL once the client is gone */
	struct proxy_upstream_req *ureq;  /* (ref) NULL when not talking to the store */
	struct proto_request *decoded;
	char tenant[TENANT_MAX + 1];
	const struct conf_limits *limits; /* (ref) the tenant's limits */
	uint8_t *body;                    /* contiguous request body, forwarded as is */
	size_t body_len;
	enum relay_mode relay;
	int status;                       /* the store's status */
	struct evbuffer *samples;         /* RELAY_SAMPLES: the buffered body */
	struct proto_frame_reader *frames;/* RELAY_STREAM: counts the frames as they pass */
	uint64_t resp_bytes;              /* bytes received from the store */
	int paused;                       /* upstream reading paused for a slow client */
	struct timespec t0;               /* sent to the store */
};

static double since(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

static void count_request(int status)
{
	char code[8];

	snprintf(code, sizeof(code), "%d", status);
	metrics_inc(METRICS_REQUESTS, code, NULL);
}

/*
 * A tenant name becomes a metric label and a log value, so accept only what tenant IDs look
 * like elsewhere (Mimir/Cortex): printable ASCII without spaces or quotes, bounded length.
 */
static int tenant_valid(const char *t, const char **why)
{
	size_t n = strlen(t);

	if (n == 0 || n > TENANT_MAX) {
		*why = n ? "longer than 128 bytes" : "empty";
		return 0;
	}
	for (; *t; t++) {
		unsigned char c = (unsigned char)*t;
		if (!(isalnum(c) || strchr("!-_.*'()", c))) {
			*why = "only letters, digits and !-_.*'() are allowed";
			return 0;
		}
	}
	return 1;
}

/* --- answering ----------------------------------------------------------------------------- */

/* End of the request's life: counters, then free. The client reply has been given already. */
static void flow_req_free(struct flow_req *fr)
{
	if (fr->ureq)
		proxy_upstream_cancel(fr->ureq);
	proto_request_free(fr->decoded);
	proto_frame_reader_free(fr->frames);
	if (fr->samples)
		evbuffer_free(fr->samples);
	free(fr->body);
	free(fr);
}

/* Leave the in-flight set (once the store exchange is over). */
static void flow_req_landed(struct flow_req *fr)
{
	struct proxy_flow *f = fr->f;

	if (fr->t0.tv_sec == 0 && fr->t0.tv_nsec == 0)
		return;
	metrics_observe(METRICS_UPSTREAM_DURATION, since(&fr->t0));
	fr->t0.tv_sec = fr->t0.tv_nsec = 0;
	f->stats.inflight--;
	metrics_set(METRICS_INFLIGHT, NULL, NULL, (double)f->stats.inflight);
}

/* Reject a request before it reaches the store: one line, counted as bad_request. */
static void reply_bad(struct proxy_req *req, struct proxy_flow *f, const char *tenant, int status,
		      const char *line)
{
	char q[600];

	f->stats.requests++;
	f->stats.bad_requests++;
	count_request(status);
	metrics_inc(METRICS_REJECTIONS, tenant, "bad_request");
	log_info("request rejected", "tenant=%s code=%d reason=bad_request detail=%s peer=%s", tenant, status,
		 log_quote(q, sizeof(q), line), proxy_req_peer(req));
	proxy_req_add_header(req, "X-Promguard-Decision", DECISION_BAD);
	proxy_req_reply_text(req, status, "%s", line);
}

/* A store failure before anything was sent to the client: 502 or 504 with one line. */
static void reply_upstream_error(struct flow_req *fr, int status, const char *kind, const char *what)
{
	struct proxy_flow *f = fr->f;
	char q[700];

	f->stats.requests++;
	f->stats.upstream_errors++;
	count_request(status);
	metrics_inc(METRICS_UPSTREAM_ERRORS, kind, NULL);
	log_warn("upstream failed", "tenant=%s kind=%s upstream=%s detail=%s", fr->tenant, kind,
		 proxy_upstream_name(f->up), log_quote(q, sizeof(q), what));
	proxy_req_add_header(fr->req, "X-Promguard-Decision", DECISION_ADMIT);
	proxy_req_reply_text(fr->req, status, "promguard: upstream %s", what);
}

/* A failure after the client got the status line: cut the connection so it sees an error. */
static void cut_stream(struct flow_req *fr, const char *kind, const char *what)
{
	struct proxy_flow *f = fr->f;
	char q[700];

	f->stats.requests++;
	f->stats.upstream_errors++;
	count_request(fr->status);
	metrics_inc(METRICS_UPSTREAM_ERRORS, kind, NULL);
	log_warn("response cut", "tenant=%s kind=%s upstream=%s relayed_bytes=%llu detail=%s", fr->tenant, kind,
		 proxy_upstream_name(f->up), (unsigned long long)fr->resp_bytes, log_quote(q, sizeof(q), what));
	proxy_req_abort(fr->req);
}

/* Add what the response held to the tenant's counters. */
static void count_response(struct flow_req *fr, uint64_t series, uint64_t samples)
{
	fr->f->stats.response_series += series;
	metrics_add(METRICS_RESPONSE_SERIES, fr->tenant, NULL, (double)series);
	metrics_add(METRICS_RESPONSE_SAMPLES, fr->tenant, NULL, (double)samples);
	log_debug("response counted", "tenant=%s status=%d series=%llu samples=%llu bytes=%llu", fr->tenant,
		  fr->status, (unsigned long long)series, (unsigned long long)samples,
		  (unsigned long long)fr->resp_bytes);
}

/*
 * Count series and samples of a whole SAMPLES body. Returns 0, or -EBADMSG with <err> when the
 * body is not snappy or not a ReadResponse. A body decoding larger than SCAN_DECODED_MAX is not
 * counted (logged); issue #4's windowed decoder removes that gap.
 */
static int count_samples(struct flow_req *fr, char *err, size_t errlen)
{
	size_t clen = evbuffer_get_length(fr->samples);
	const char *comp = (const char *)evbuffer_pullup(fr->samples, -1);
	size_t ulen;
	char *plain;
	struct proto_scan_counts *counts;
	size_t n = 0, nq = fr->decoded->n_queries;
	uint64_t series = 0, samples = 0;
	int rc;

	if (clen == 0) {
		snprintf(err, errlen, "empty SAMPLES body");
		return -EBADMSG;
	}
	if (snappy_uncompressed_length(comp, clen, &ulen) != SNAPPY_OK) {
		snprintf(err, errlen, "SAMPLES body is not snappy-compressed");
		return -EBADMSG;
	}
	if (ulen > SCAN_DECODED_MAX) {
		log_warn("response too large to count", "tenant=%s decoded_bytes=%zu", fr->tenant, ulen);
		return 0;
	}
	plain = malloc(ulen ? ulen : 1);
	counts = calloc(nq, sizeof(*counts));
	if (!plain || !counts) {
		free(plain);
		free(counts);
		log_warn("response not counted: out of memory", "tenant=%s decoded_bytes=%zu", fr->tenant, ulen);
		return 0;
	}
	if (snappy_uncompress(comp, clen, plain, &ulen) != SNAPPY_OK) {
		snprintf(err, errlen, "SAMPLES body has corrupt snappy data");
		rc = -EBADMSG;
	} else {
		rc = proto_scan_samples((const uint8_t *)plain, ulen, counts, nq, &n, err, errlen);
	}
	if (rc == 0) {
		for (size_t i = 0; i < n; i++) {
			series += counts[i].series;
			samples += counts[i].samples + counts[i].histograms;
		}
		count_response(fr, series, samples);
	} else if (rc != -EBADMSG) {
		rc = -EBADMSG;
	}
	free(plain);
	free(counts);
	return rc;
}

/* --- the store's response ------------------------------------------------------------------ */

static void on_upstream_head(void *arg, const struct http_msg *head)
{
	struct flow_req *fr = arg;
	const char *ct = http_msg_header(head, "Content-Type");
	const char *ce = http_msg_header(head, "Content-Encoding");
	int ok = head->status >= 200 && head->status < 300;

	fr->status = head->status;
	if (ok && ct && strncasecmp(ct, "application/x-protobuf", 22) == 0) {
		fr->relay = RELAY_SAMPLES;
		fr->samples = evbuffer_new();
		if (!fr->samples) {
			proxy_upstream_cancel(fr->ureq);
			fr->ureq = NULL;
			flow_req_landed(fr);
			reply_upstream_error(fr, 502, "protocol", "response could not be buffered: out of memory");
			flow_req_free(fr);
		}
		return;
	}
	if (ok && ct && strncasecmp(ct, "application/x-streamed-protobuf", 31) == 0) {
		fr->relay = RELAY_STREAM;
		fr->frames = proto_frame_reader_new(STREAM_MAX_FRAME, fr->decoded->n_queries);
	} else {
		fr->relay = RELAY_PASS;
		if (head->status >= 500)
			metrics_inc(METRICS_UPSTREAM_ERRORS, "status_5xx", NULL);
		else if (head->status >= 400)
			metrics_inc(METRICS_UPSTREAM_ERRORS, "status_4xx", NULL);
	}
	/* streamed and pass-through responses go out as they arrive, with the store's status */
	if (ct)
		proxy_req_add_header(fr->req, "Content-Type", ct);
	if (ce)
		proxy_req_add_header(fr->req, "Content-Encoding", ce);
	proxy_req_add_header(fr->req, "X-Promguard-Decision", DECISION_ADMIT);
	proxy_req_reply_start(fr->req, head->status, head->chunked ? -1 : head->content_length);
}

/* Feed every piece of <data> to the frame reader without copying it. */
static int feed_frames(struct flow_req *fr, struct evbuffer *data, char *err, size_t errlen)
{
	struct evbuffer_iovec stack[32], *vec = stack;
	int n = evbuffer_peek(data, -1, NULL, NULL, 0);
	int rc = 0;

	if (n <= 0)
		return 0;
	if (n > 32) {
		vec = malloc((size_t)n * sizeof(*vec));
		if (!vec) {
			snprintf(err, errlen, "out of memory while counting frames");
			return -ENOMEM;
		}
	}
	n = evbuffer_peek(data, -1, NULL, vec, n);
	for (int i = 0; i < n && rc == 0; i++)
		rc = proto_frame_feed(fr->frames, vec[i].iov_base, vec[i].iov_len, err, errlen);
	if (vec != stack)
		free(vec);
	return rc;
}

static void on_upstream_body(void *arg, struct evbuffer *data)
{
	struct flow_req *fr = arg;
	size_t len = evbuffer_get_length(data);
	char err[256];

	fr->resp_bytes += len;
	fr->f->stats.response_bytes += len;
	metrics_add(METRICS_RESPONSE_BYTES, fr->tenant, NULL, (double)len);
	switch (fr->relay) {
	case RELAY_SAMPLES:
		evbuffer_add_buffer(fr->samples, data);
		return;
	case RELAY_STREAM:
		if (fr->frames && feed_frames(fr, data, err, sizeof(err)) < 0) {
			proxy_upstream_cancel(fr->ureq);
			fr->ureq = NULL;
			flow_req_landed(fr);
			cut_stream(fr, "corrupt_response", err);
			flow_req_free(fr);
			return;
		}
		/* fall through: relay the bytes */
		/* FALLTHROUGH */
	case RELAY_PASS:
		proxy_req_reply_chunk(fr->req, data);
		/* flow control: a slow client pauses the store instead of growing our buffers */
		if (!fr->paused && proxy_req_output_pending(fr->req) > PROXY_OUT_HIGH_WATER) {
			fr->paused = 1;
			proxy_upstream_pause(fr->ureq);
		}
		return;
	case RELAY_NONE:
		return;
	}
}

static void on_upstream_done(void *arg)
{
	struct flow_req *fr = arg;
	struct proxy_flow *f = fr->f;
	char err[256];

	fr->ureq = NULL;
	flow_req_landed(fr);
	if (fr->relay == RELAY_SAMPLES) {
		if (count_samples(fr, err, sizeof(err)) < 0) {
			reply_upstream_error(fr, 502, "corrupt_response", err);
			flow_req_free(fr);
			return;
		}
		proxy_req_add_header(fr->req, "Content-Type", "application/x-protobuf");
		proxy_req_add_header(fr->req, "Content-Encoding", "snappy");
		proxy_req_add_header(fr->req, "X-Promguard-Decision", DECISION_ADMIT);
		f->stats.requests++;
		count_request(fr->status);
		proxy_req_reply(fr->req, fr->status, fr->samples);
		flow_req_free(fr);
		return;
	}
	if (fr->relay == RELAY_STREAM && fr->frames) {
		size_t n;
		uint64_t series = 0, chunks = 0;
		if (proto_frame_finish(fr->frames, err, sizeof(err)) < 0) {
			cut_stream(fr, "corrupt_response", err);
			flow_req_free(fr);
			return;
		}
		const struct proto_frame_counts *c = proto_frame_results(fr->frames, &n);
		for (size_t i = 0; i < n; i++) {
			series += c[i].series;
			chunks += c[i].chunks;
		}
		count_response(fr, series, chunks);
	}
	f->stats.requests++;
	count_request(fr->status);
	proxy_req_reply_end(fr->req);
	flow_req_free(fr);
}

static void on_upstream_error(void *arg, enum proxy_upstream_error kind, const char *msg)
{
	struct flow_req *fr = arg;
	char what[700];
	const char *k = proxy_upstream_error_kind(kind);

	fr->ureq = NULL;
	flow_req_landed(fr);
	if (fr->relay == RELAY_STREAM || fr->relay == RELAY_PASS) {
		cut_stream(fr, k, msg);
	} else if (kind == PROXY_UPSTREAM_TIMEOUT) {
		char dur[32];
		conf_format_value(CONF_T_DURATION, fr->f->conf->upstream_timeout_ms, dur, sizeof(dur));
		snprintf(what, sizeof(what), "timed out after %s (upstream.timeout)", dur);
		reply_upstream_error(fr, 504, k, what);
	} else {
		reply_upstream_error(fr, 502, k, msg);
	}
	flow_req_free(fr);
}

/* --- the client's side --------------------------------------------------------------------- */

static void on_client_drain(struct proxy_req *req, void *arg)
{
	struct flow_req *fr = arg;

	(void)req;
	if (fr->paused && fr->ureq) {
		fr->paused = 0;
		proxy_upstream_resume(fr->ureq);
	}
}

static void on_client_close(struct proxy_req *req, void *arg)
{
	struct flow_req *fr = arg;

	(void)req;
	log_info("client went away", "tenant=%s relayed_bytes=%llu", fr->tenant, (unsigned long long)fr->resp_bytes);
	fr->req = NULL;
	flow_req_landed(fr);
	count_request(499); /* nginx's "client closed request": nothing was answered */
	fr->f->stats.requests++;
	flow_req_free(fr); /* cancels the store request */
}

/* --- the request path ---------------------------------------------------------------------- */

uint64_t proxy_flow_body_cap(struct proxy_flow *f, struct proxy_req *req)
{
	const char *t = proxy_req_header(req, f->conf->tenant_header);

	return (uint64_t)conf_limits_for(f->conf, t)->v[CONF_LIMIT_MAX_REQUEST_BYTES];
}

/* Collect the headers sent to the store: protocol headers from the client, tenant, configured. */
static size_t upstream_headers(struct flow_req *fr, struct proxy_upstream_header *h, size_t max)
{
	static const struct proxy_upstream_header proto_hdrs[] = {
		{ "Content-Encoding", "snappy" },
		{ "Content-Type", "application/x-protobuf" },
		{ "Accept-Encoding", "snappy" },
		{ "User-Agent", "promguard/" PROMGUARD_VERSION },
		{ "X-Prometheus-Remote-Read-Version", "0.1.0" },
	};
	const struct conf *c = fr->f->conf;
	const char *tenant_value = proxy_req_header(fr->req, c->tenant_header);
	size_t n = 0;

	for (size_t i = 0; i < sizeof(proto_hdrs) / sizeof(proto_hdrs[0]) && n < max; i++) {
		const char *v = proxy_req_header(fr->req, proto_hdrs[i].name);
		h[n].name = proto_hdrs[i].name;
		h[n++].value = v ? v : proto_hdrs[i].value;
	}
	if (tenant_value && n < max) {
		h[n].name = c->tenant_header;
		h[n++].value = tenant_value;
	}
	for (size_t i = 0; i < c->n_upstream_headers && n < max; i++) {
		h[n].name = c->upstream_headers[i].key;
		h[n++].value = c->upstream_headers[i].value;
	}
	return n;
}

void proxy_flow_handle(struct proxy_flow *f, struct proxy_req *req)
{
	const struct conf *c = f->conf;
	const char *hdr_tenant = proxy_req_header(req, c->tenant_header);
	const char *tenant = hdr_tenant ? hdr_tenant : "default";
	const char *why = NULL;
	char line[700], err[512];
	uint64_t size = 0;
	struct flow_req *fr;
	struct proxy_upstream_header hdrs[64];
	size_t n_hdrs;
	int rc;

	/* 1. receive: the request must be a POST of a body within the tenant's cap */
	if (hdr_tenant && !tenant_valid(hdr_tenant, &why)) {
		snprintf(line, sizeof(line), "promguard: bad request: invalid tenant in %s header: %s",
			 c->tenant_header, why);
		reply_bad(req, f, "invalid", 400, line);
		return;
	}
	if (strcmp(proxy_req_method(req), "POST") != 0) {
		snprintf(line, sizeof(line), "promguard: method not allowed: %.32s (only POST is served on %s)",
			 proxy_req_method(req), c->read_path);
		proxy_req_add_header(req, "Allow", "POST");
		reply_bad(req, f, tenant, 405, line);
		return;
	}
	if (proxy_req_draining(req)) {
		f->stats.requests++;
		count_request(503);
		proxy_req_add_header(req, "X-Promguard-Decision", DECISION_ADMIT);
		proxy_req_reply_text(req, 503, "promguard: draining: shutting down, retry on another instance");
		return;
	}
	if (proxy_req_oversize(req)) {
		snprintf(line, sizeof(line), "promguard: request too large: %llu > %llu (limits.max_request_bytes)",
			 (unsigned long long)proxy_req_oversize(req), (unsigned long long)proxy_req_body_cap(req));
		reply_bad(req, f, tenant, 413, line);
		return;
	}

	fr = calloc(1, sizeof(*fr));
	if (!fr) {
		proxy_req_abort(req);
		return;
	}
	fr->f = f;
	fr->req = req;
	snprintf(fr->tenant, sizeof(fr->tenant), "%s", tenant);
	fr->limits = conf_limits_for(c, hdr_tenant);
	fr->body_len = evbuffer_get_length(proxy_req_body(req));
	fr->body = malloc(fr->body_len ? fr->body_len : 1);
	if (!fr->body) {
		free(fr);
		proxy_req_abort(req);
		return;
	}
	evbuffer_remove(proxy_req_body(req), fr->body, fr->body_len);

	/* 2. decode: snappy then protobuf, capped at limits.max_request_bytes both ways */
	rc = proto_request_decode(fr->body, fr->body_len, (size_t)fr->limits->v[CONF_LIMIT_MAX_REQUEST_BYTES], NULL,
				  &fr->decoded, &size, err, sizeof(err));
	if (rc == -E2BIG) {
		snprintf(line, sizeof(line), "promguard: request too large: %llu > %llu (limits.max_request_bytes)",
			 (unsigned long long)size, (unsigned long long)fr->limits->v[CONF_LIMIT_MAX_REQUEST_BYTES]);
		reply_bad(req, f, fr->tenant, 413, line);
		flow_req_free(fr);
		return;
	}
	if (rc < 0) {
		snprintf(line, sizeof(line), "promguard: bad request: %s", err);
		reply_bad(req, f, fr->tenant, 400, line);
		flow_req_free(fr);
		return;
	}
	if (log_level_cur <= LOG_DEBUG) {
		for (size_t i = 0; i < fr->decoded->n_queries; i++) {
			char sel[1024], range[128], q[1200];
			proto_selector_print(&fr->decoded->queries[i], sel, sizeof(sel));
			proto_range_print(&fr->decoded->queries[i], range, sizeof(range));
			log_debug("query", "tenant=%s index=%zu selector=%s range=%s", fr->tenant, i,
				  log_quote(q, sizeof(q), sel), range);
		}
	}

	/* 3. estimate and admit: every query is admitted until the limiter lands (issue #3) */
	for (size_t i = 0; i < fr->decoded->n_queries; i++)
		metrics_inc(METRICS_QUERIES, fr->tenant, "admitted");
	f->stats.queries += fr->decoded->n_queries;

	/* 4. forward the original bytes */
	n_hdrs = upstream_headers(fr, hdrs, sizeof(hdrs) / sizeof(hdrs[0]));
	static const struct proxy_upstream_cbs cbs = {
		.on_head = on_upstream_head,
		.on_body = on_upstream_body,
		.on_done = on_upstream_done,
		.on_error = on_upstream_error,
	};
	fr->ureq = proxy_upstream_send(f->up, hdrs, n_hdrs, fr->body, fr->body_len, &cbs, fr);
	if (!fr->ureq) {
		reply_upstream_error(fr, 502, "protocol", "request could not be queued: out of memory");
		flow_req_free(fr);
		return;
	}
	clock_gettime(CLOCK_MONOTONIC, &fr->t0);
	f->stats.inflight++;
	metrics_set(METRICS_INFLIGHT, NULL, NULL, (double)f->stats.inflight);
	proxy_req_set_callbacks(req, on_client_drain, on_client_close, fr);
	/* 5. relay and count: on_upstream_head / _body / _done / _error above */
}

/* --- lifecycle ----------------------------------------------------------------------------- */

struct proxy_flow *proxy_flow_new(const struct conf *conf, struct proxy_upstream *up)
{
	struct proxy_flow *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	f->conf = conf;
	f->up = up;
	metrics_set(METRICS_INFLIGHT, NULL, NULL, 0);
	return f;
}

void proxy_flow_free(struct proxy_flow *f)
{
	free(f);
}

void proxy_flow_set_conf(struct proxy_flow *f, const struct conf *conf)
{
	f->conf = conf;
}

const struct proxy_flow_stats *proxy_flow_stats(const struct proxy_flow *f)
{
	return &f->stats;
}

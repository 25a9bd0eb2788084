/*
 * proxy_upstream: keep-alive HTTP/1.1 client for the store, with a bounded connection pool.
 *
 * At most max_connections sockets are open to the store; a request that finds none free waits
 * in FIFO order. Each request has a whole-exchange deadline (upstream.timeout). The response is
 * delivered piece by piece as it arrives; the caller may pause reading (flow control towards a
 * slow client) and resume later. A request that fails on a reused keep-alive connection before
 * any response byte arrived is retried once on a fresh connection (the store may have closed an
 * idle socket; remote read is idempotent).
 */
#ifndef PROMGUARD_PROXY_UPSTREAM_H
#define PROMGUARD_PROXY_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evbuffer;
struct http_msg;
struct proxy_upstream;
struct proxy_upstream_req;

enum proxy_upstream_error {
	PROXY_UPSTREAM_REFUSED,  /* could not connect */
	PROXY_UPSTREAM_RESET,    /* connection reset or closed before the response was complete */
	PROXY_UPSTREAM_TIMEOUT,  /* upstream.timeout expired */
	PROXY_UPSTREAM_PROTOCOL, /* the store's HTTP was malformed */
};

/* "refused", "reset", "timeout", "protocol": the promguard_upstream_errors_total kind label. */
const char *proxy_upstream_error_kind(enum proxy_upstream_error e);

struct proxy_upstream_cbs {
	/* The response head (status, headers). (ref) valid during the call. */
	void (*on_head)(void *arg, const struct http_msg *head);
	/* Body bytes; the callee drains <data>. */
	void (*on_body)(void *arg, struct evbuffer *data);
	/* The body is complete. Final callback. */
	void (*on_done)(void *arg);
	/* The exchange failed (<msg> is one line). Final callback. */
	void (*on_error)(void *arg, enum proxy_upstream_error kind, const char *msg);
};

struct proxy_upstream_header {
	const char *name;
	const char *value;
};

/*
 * New pool towards <host>:<port>, sending requests to <path>. The address is resolved now
 * (blocking). Returns NULL with one line in <err>.
 */
struct proxy_upstream *proxy_upstream_new(struct event_base *base, const char *host, int port, const char *path,
					  int64_t timeout_ms, size_t max_connections, char *err, size_t errlen);

/* Close every connection; pending requests get no callback. NULL is fine. */
void proxy_upstream_free(struct proxy_upstream *up);

/* What one request sends; zeroed fields take the pool's defaults. */
struct proxy_upstream_msg {
	const char *method;                        /* NULL: "POST" */
	const char *target;                        /* path and query; NULL: the pool's path */
	int64_t timeout_ms;                        /* whole exchange; <= 0: the pool's timeout */
	const struct proxy_upstream_header *hdrs;  /* (ref) copied into the request */
	size_t n_hdrs;
	const void *body;                          /* (ref) must stay valid until the final callback */
	size_t len;
};

/*
 * Send <msg>. Returns the request, or NULL on ENOMEM. Callbacks never run inside this call.
 * <msg>'s strings are copied; its body is not.
 */
struct proxy_upstream_req *proxy_upstream_send(struct proxy_upstream *up, const struct proxy_upstream_msg *msg,
					       const struct proxy_upstream_cbs *cbs, void *arg);

/* Stop / restart reading the response (flow control). */
void proxy_upstream_pause(struct proxy_upstream_req *r);
void proxy_upstream_resume(struct proxy_upstream_req *r);

/* Abandon <r>: no further callbacks; its connection is closed if the response was unfinished.
 * Safe to call from inside a callback. */
void proxy_upstream_cancel(struct proxy_upstream_req *r);

/* 1 if the store accepted a connection recently (checked about once a second), else 0. */
int proxy_upstream_reachable(const struct proxy_upstream *up);

/* Open connections (busy + idle) and requests waiting for one. */
size_t proxy_upstream_connections(const struct proxy_upstream *up);
size_t proxy_upstream_waiting(const struct proxy_upstream *up);

/* "host:port" (ref). */
const char *proxy_upstream_name(const struct proxy_upstream *up);

#endif

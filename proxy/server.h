/*
 * proxy_server: client-facing HTTP/1.1 listeners and connections.
 *
 * A listener accepts connections and parses one request at a time per connection (keep-alive;
 * pipelined requests wait their turn). When a request head has arrived it asks the listener's
 * body_cap callback how large a body it will take; a larger body is not read: the request is
 * handed over at once with proxy_req_oversize() set, so the handler can answer 413 and the
 * connection is closed afterwards. Otherwise the handler gets the request when the body is
 * complete, and answers it exactly once: proxy_req_reply() / _reply_text(), or the streaming
 * trio proxy_req_reply_start() / _reply_chunk() / _reply_end(), or proxy_req_abort().
 *
 * Ownership: the connection owns the request. After the handler's final call (reply, reply_end
 * or abort) the request pointer is dead. If the client goes away first, the on_close callback
 * runs (the last moment the pointer is valid), so the handler can cancel its work.
 */
#ifndef PROMGUARD_PROXY_SERVER_H
#define PROMGUARD_PROXY_SERVER_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evbuffer;
struct proxy_req;
struct proxy_server;

/* Limits of the client side (defaults of client.request_timeout, idle_timeout, write_timeout). */
#define PROXY_REQUEST_TIMEOUT_MS 30000  /* head plus body must arrive within this */
#define PROXY_IDLE_TIMEOUT_MS 120000    /* keep-alive connection with no request */
#define PROXY_WRITE_TIMEOUT_MS 120000   /* a reply that makes no write progress for this long */

/* The client timeouts of a server, in milliseconds (all > 0). */
struct proxy_server_timeouts {
	int64_t request_ms; /* head plus body (slowloris): 408 */
	int64_t idle_ms;    /* keep-alive connection with no request: closed */
	int64_t write_ms;   /* a reply with no write progress (a client that stopped reading): closed */
};
#define PROXY_OUT_HIGH_WATER (256 * 1024) /* client output above this: producer should pause */
#define PROXY_OUT_LOW_WATER (64 * 1024)   /* ...and resumes when it drains below this */
#define PROXY_IO_CHUNK (128 * 1024)       /* largest single socket read or write */

struct proxy_server_cbs {
	/* Body cap for this request (bytes), decided from its head. */
	uint64_t (*body_cap)(struct proxy_req *req, void *arg);
	/* A complete (or oversize) request to answer. */
	void (*handle)(struct proxy_req *req, void *arg);
};

/*
 * Listen on <addr> ("host:port") with <cbs>. <name> labels the listener in logs and metrics.
 * Returns NULL with one line in <err> when the address cannot be bound.
 */
struct proxy_server *proxy_server_new(struct event_base *base, const char *name, const char *addr,
				      const struct proxy_server_cbs *cbs, void *arg, char *err, size_t errlen);

/* Use <t> for requests that start from now on (reload). */
void proxy_server_set_timeouts(struct proxy_server *s, const struct proxy_server_timeouts *t);

/* Close the listener and every connection (in-flight requests get on_close). NULL is fine. */
void proxy_server_free(struct proxy_server *s);

/*
 * Begin draining: stop accepting, close idle connections, and close each busy connection once
 * its current reply is done. New requests already buffered get 503.
 */
void proxy_server_drain(struct proxy_server *s);

/* Number of open connections. */
size_t proxy_server_connections(const struct proxy_server *s);

/* --- the request --------------------------------------------------------------------------- */

const char *proxy_req_method(const struct proxy_req *req);
/* Path without the query string. (ref) */
const char *proxy_req_path(const struct proxy_req *req);
/* Query string without '?', or "". (ref) */
const char *proxy_req_query(const struct proxy_req *req);
/* First value of request header <name> (case-insensitive), or NULL. (ref) */
const char *proxy_req_header(const struct proxy_req *req, const char *name);
/* The request body (complete unless oversize). The handler may drain it. (ref) */
struct evbuffer *proxy_req_body(struct proxy_req *req);
/* 0, or the body size that went over the cap (declared or read so far) when the body was refused. */
uint64_t proxy_req_oversize(const struct proxy_req *req);
/* The cap that applied. */
uint64_t proxy_req_body_cap(const struct proxy_req *req);
/* "ip:port" of the client. (ref) */
const char *proxy_req_peer(const struct proxy_req *req);
/* 1 while the server is draining (answer 503). */
int proxy_req_draining(const struct proxy_req *req);

/* Add a response header (copied). Values with CR/LF are refused (-EINVAL). */
int proxy_req_add_header(struct proxy_req *req, const char *name, const char *value);

/* Whole reply. <body> (may be NULL) is drained into the connection. Final call. */
void proxy_req_reply(struct proxy_req *req, int status, struct evbuffer *body);

/* Whole text/plain reply of one line built from <fmt>; a "\n" is appended. Final call. */
void proxy_req_reply_text(struct proxy_req *req, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Streaming reply. <content_length> >= 0 sends that length; -1 uses chunked encoding (or a
 * close-delimited body for HTTP/1.0 clients).
 */
void proxy_req_reply_start(struct proxy_req *req, int status, int64_t content_length);
/* Append body bytes (drained from <data>). */
void proxy_req_reply_chunk(struct proxy_req *req, struct evbuffer *data);
/* Finish a streaming reply. Final call. */
void proxy_req_reply_end(struct proxy_req *req);
/* Cut the reply: flush what is queued, then close without finishing the body, so the client sees
 * an error and never a truncated success. Before reply_start it just closes. Final call. */
void proxy_req_abort(struct proxy_req *req);

/*
 * Run <fn>(<arg>) once, when the request is over for the connection: its reply fully written to
 * the socket, or the connection gone. May be set after the final call (the request lives until
 * its reply is flushed); a handler uses it to keep accounting for bytes still in flight.
 */
void proxy_req_on_done(struct proxy_req *req, void (*fn)(void *), void *arg);

/* Bytes waiting to be written to the client. */
size_t proxy_req_output_pending(const struct proxy_req *req);

/*
 * Callbacks for a handler working asynchronously. on_drain: output fell to PROXY_OUT_LOW_WATER
 * (resume a paused producer). on_close: the client went away before the final call; the request
 * is freed when it returns.
 */
void proxy_req_set_callbacks(struct proxy_req *req, void (*on_drain)(struct proxy_req *, void *),
			     void (*on_close)(struct proxy_req *, void *), void *arg);

#endif

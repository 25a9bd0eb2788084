/* proxy_server: client-facing HTTP/1.1 listeners and connections (see server.h). */
#include "proxy/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <linux/tcp.h> /* TCP_INFO with tcpi_bytes_acked (glibc's netinet/tcp.h lacks it) */

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "proxy/http.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/netaddr.h"

#define ACCEPT_RETRY_MS 1000 /* accept paused on EMFILE/ENFILE is retried after this */
/*
 * Largest single write to a client. libevent writes at most this much per EV_WRITE wakeup, so it
 * sets how many loop passes (epoll_wait + writev, and a wakeup of the reader) a relayed MiB costs.
 */
#define CLIENT_MAX_WRITE (4 * 1024 * 1024)

enum conn_state {
	CONN_HEAD,     /* reading a request head */
	CONN_BODY,     /* reading a request body */
	CONN_HANDLING, /* the handler owns the request */
	CONN_FLUSHING, /* the reply is complete; waiting for it to reach the socket */
	CONN_CLOSING,  /* scheduled for freeing; ignore everything */
};

struct proxy_req {
	struct proxy_conn *conn;   /* (ref) owning connection */
	struct http_msg head;      /* parsed head */
	struct http_body framing;  /* body decoder state */
	struct evbuffer *body;     /* decoded body */
	char *path;                /* owned: target up to '?' */
	const char *query;         /* (ref) into path's allocation */
	uint64_t cap;              /* body cap from body_cap() */
	uint64_t oversize;         /* size that broke the cap, 0 if none */
	struct evbuffer *out_hdrs; /* "Name: value\r\n" lines added by the handler */
	int started;               /* status line written (streaming) */
	int chunked_out;           /* streaming reply uses chunked coding */
	int close_delimited;       /* streaming reply ends at connection close (HTTP/1.0) */
	void (*on_drain)(struct proxy_req *, void *);
	void (*on_close)(struct proxy_req *, void *);
	void *cb_arg;
	void (*on_done)(void *);   /* proxy_req_on_done: runs once, when the request is freed */
	void *done_arg;
};

struct proxy_conn {
	struct proxy_server *srv;  /* (ref) */
	struct bufferevent *bev;
	struct evbuffer *stage;    /* reply bytes not yet handed to the socket or to bev's output */
	struct proxy_req *spare;   /* the last request's allocation, reused by the next one */
	struct event *deadline;    /* request head+body deadline */
	struct event *kick;        /* deferred work: free, or finish after a flush */
	struct proxy_req *req;     /* current request, NULL between requests */
	enum conn_state state;
	int close_after;           /* close once the current reply is flushed */
	uint64_t acked;            /* the peer's acknowledged bytes at the last write timeout */
	char peer[64];
	TAILQ_ENTRY(proxy_conn) link;
};

TAILQ_HEAD(conn_list, proxy_conn);

struct proxy_server {
	struct event_base *base;   /* (ref) */
	char *name;
	struct evconnlistener *listener;
	struct event *accept_retry;
	struct proxy_server_cbs cbs;
	void *arg;
	struct conn_list conns;
	size_t n_conns;
	int draining;
	struct proxy_server_timeouts to; /* client.* timeouts */
};

static void conn_process(struct proxy_conn *c);
static void conn_schedule_free(struct proxy_conn *c);

static void update_conn_gauge(struct proxy_server *s)
{
	metrics_set(METRICS_CLIENT_CONNECTIONS, s->name, NULL, (double)s->n_conns);
}

static void set_read_timeout(struct proxy_conn *c, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	bufferevent_set_timeouts(c->bev, ms > 0 ? &tv : NULL, NULL);
}

static void req_free(struct proxy_req *r)
{
	if (!r)
		return;
	if (r->on_done)
		r->on_done(r->done_arg);
	http_msg_clear(&r->head);
	if (r->body)
		evbuffer_free(r->body);
	if (r->out_hdrs)
		evbuffer_free(r->out_hdrs);
	free(r->path);
	free(r);
}

/*
 * The request is over: run its on_done, then keep its allocation (and its two evbuffers) for the
 * connection's next request instead of freeing it. A keep-alive connection then allocates a
 * request once, not once per request.
 */
static void req_recycle(struct proxy_conn *c, struct proxy_req *r)
{
	struct evbuffer *body, *out_hdrs;

	if (!r)
		return;
	if (c->spare) {
		req_free(r);
		return;
	}
	if (r->on_done)
		r->on_done(r->done_arg);
	http_msg_clear(&r->head);
	free(r->path);
	body = r->body;
	out_hdrs = r->out_hdrs;
	evbuffer_drain(body, evbuffer_get_length(body));
	evbuffer_drain(out_hdrs, evbuffer_get_length(out_hdrs));
	memset(r, 0, sizeof(*r));
	r->body = body;
	r->out_hdrs = out_hdrs;
	c->spare = r;
}

static struct proxy_req *req_new(struct proxy_conn *c)
{
	struct proxy_req *r = c->spare;

	if (r) {
		c->spare = NULL;
	} else {
		r = calloc(1, sizeof(*r));
		if (!r)
			return NULL;
		r->body = evbuffer_new();
		r->out_hdrs = evbuffer_new();
		if (!r->body || !r->out_hdrs) {
			req_free(r);
			return NULL;
		}
	}
	r->conn = c;
	r->head.content_length = -1;
	return r;
}

/*
 * Hand <data> (drained) to the client. With nothing queued in the bufferevent's output, write it
 * to the socket now: going through the output costs, per reply, an epoll_ctl to watch for
 * EPOLLOUT, a loop pass to be told the socket is writable (which it almost always is) and an
 * epoll_ctl to stop watching. Only what the socket does not take is queued (and then written by
 * the bufferevent, with its write timeout and low-water callback). A write error is left for the
 * bufferevent to find on its own write of the rest.
 */
static void conn_send(struct proxy_conn *c, struct evbuffer *data)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);

	if (evbuffer_get_length(data) == 0)
		return;
	if (evbuffer_get_length(out) == 0 && c->state != CONN_CLOSING)
		(void)evbuffer_write_atmost(data, bufferevent_getfd(c->bev), CLIENT_MAX_WRITE);
	if (evbuffer_get_length(data))
		evbuffer_add_buffer(out, data);
}

static void conn_free(struct proxy_conn *c)
{
	struct proxy_server *s = c->srv;

	TAILQ_REMOVE(&s->conns, c, link);
	s->n_conns--;
	update_conn_gauge(s);
	req_free(c->req);
	req_free(c->spare);
	if (c->stage)
		evbuffer_free(c->stage);
	if (c->deadline)
		event_free(c->deadline);
	if (c->kick)
		event_free(c->kick);
	if (c->bev)
		bufferevent_free(c->bev);
	free(c);
}

/* The client is gone (or we are closing it) while a handler may hold the request. */
static void conn_lost(struct proxy_conn *c)
{
	struct proxy_req *r = c->req;

	if (c->state == CONN_CLOSING)
		return;
	if (c->state == CONN_HANDLING && r && r->on_close)
		r->on_close(r, r->cb_arg);
	conn_schedule_free(c);
}

/* Freeing is always deferred to a fresh loop pass: libevent callbacks and the handler's call
 * stack may still reference the connection. */
static void conn_schedule_free(struct proxy_conn *c)
{
	c->state = CONN_CLOSING;
	bufferevent_disable(c->bev, EV_READ | EV_WRITE);
	event_del(c->deadline);
	event_active(c->kick, EV_TIMEOUT, 0);
}

/* The reply has reached the socket: next request, or close. */
static void conn_finish_request(struct proxy_conn *c)
{
	struct proxy_req *r = c->req;

	c->req = NULL;
	req_recycle(c, r);
	if (c->close_after || c->srv->draining) {
		conn_schedule_free(c);
		return;
	}
	c->state = CONN_HEAD;
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
	bufferevent_setwatermark(c->bev, EV_READ, 0, 0);
	bufferevent_enable(c->bev, EV_READ);
	set_read_timeout(c, (int)c->srv->to.idle_ms);
	conn_process(c); /* a pipelined request may already be buffered */
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proxy_conn *c = arg;

	(void)fd;
	(void)what;
	if (c->state == CONN_CLOSING)
		conn_free(c);
	else if (c->state == CONN_FLUSHING && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		conn_finish_request(c);
	else if (c->state == CONN_HANDLING)
		conn_send(c, c->stage); /* a streaming reply's head that no body bytes followed yet */
}

/* A reply is complete in the output buffer: wait until it is written. */
static void conn_reply_done(struct proxy_conn *c)
{
	conn_send(c, c->stage);
	c->state = CONN_FLUSHING;
	event_del(c->deadline);
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		event_active(c->kick, EV_TIMEOUT, 0);
}

/* Decimal digits of <v> into <buf> (at least 20 bytes); returns the length. */
static size_t fmt_u64(char *buf, uint64_t v)
{
	char tmp[20];
	size_t n = 0, i = 0;

	do
		tmp[n++] = (char)('0' + v % 10);
	while ((v /= 10) != 0);
	while (n)
		buf[i++] = tmp[--n];
	return i;
}

/* "Content-Length: <len>\r\n" into <buf> (at least 40 bytes). */
static void content_length_line(char *buf, uint64_t len)
{
	size_t n = sizeof("Content-Length: ") - 1;

	memcpy(buf, "Content-Length: ", n);
	n += fmt_u64(buf + n, len);
	buf[n++] = '\r';
	buf[n++] = '\n';
	buf[n] = '\0';
}

/*
 * Status line, the handler's headers, <framing> (a whole header line, or "") and the blank line,
 * into the connection's stage: they leave with the body, in one write for a whole reply. No
 * printf: this runs for every reply.
 */
static void write_head(struct proxy_req *r, int status, const char *framing)
{
	struct proxy_conn *c = r->conn;
	struct evbuffer *out = c->stage;
	int keep = r->head.keep_alive && !c->close_after && !c->srv->draining && !r->oversize;
	const char *reason = http_reason(status);
	size_t rl = strlen(reason), n;
	char line[64];

	struct timeval wtv = { c->srv->to.write_ms / 1000, (c->srv->to.write_ms % 1000) * 1000 };

	if (!keep)
		c->close_after = 1;
	/* a client that stops reading is dropped instead of holding its reply forever */
	bufferevent_set_timeouts(c->bev, NULL, &wtv);
	if (status < 100 || status > 999 || rl > sizeof(line) - 16) {
		evbuffer_add_printf(out, "HTTP/1.%d %d %s\r\n", r->head.minor == 0 ? 0 : 1, status, reason);
	} else {
		memcpy(line, r->head.minor == 0 ? "HTTP/1.0 " : "HTTP/1.1 ", 9);
		n = 9;
		line[n++] = (char)('0' + status / 100);
		line[n++] = (char)('0' + status / 10 % 10);
		line[n++] = (char)('0' + status % 10);
		line[n++] = ' ';
		memcpy(line + n, reason, rl);
		n += rl;
		line[n++] = '\r';
		line[n++] = '\n';
		evbuffer_add(out, line, n);
	}
	evbuffer_add_buffer(out, r->out_hdrs);
	evbuffer_add(out, framing, strlen(framing));
	if (!keep)
		evbuffer_add_lit(out, "Connection: close\r\n");
	evbuffer_add_lit(out, "\r\n");
}

/* Usable for a final call: the handler still owns the request. */
static int req_live(const struct proxy_req *r)
{
	return r && r->conn->state == CONN_HANDLING && r->conn->req == r;
}

void proxy_req_reply(struct proxy_req *r, int status, struct evbuffer *body)
{
	char framing[64];
	size_t len = body ? evbuffer_get_length(body) : 0;

	if (!req_live(r))
		return;
	content_length_line(framing, len);
	write_head(r, status, framing);
	if (len)
		evbuffer_add_buffer(r->conn->stage, body);
	conn_reply_done(r->conn);
}

void proxy_req_reply_text(struct proxy_req *r, int status, const char *fmt, ...)
{
	struct evbuffer *b;
	va_list ap;

	if (!req_live(r))
		return;
	b = evbuffer_new();
	if (!b) {
		proxy_req_abort(r);
		return;
	}
	va_start(ap, fmt);
	evbuffer_add_vprintf(b, fmt, ap);
	va_end(ap);
	evbuffer_add(b, "\n", 1);
	proxy_req_add_header(r, "Content-Type", "text/plain; charset=utf-8");
	proxy_req_reply(r, status, b);
	evbuffer_free(b);
}

void proxy_req_reply_start(struct proxy_req *r, int status, int64_t content_length)
{
	char framing[64];

	if (!req_live(r) || r->started)
		return;
	r->started = 1;
	if (content_length >= 0) {
		content_length_line(framing, (uint64_t)content_length);
	} else if (r->head.minor >= 1) {
		snprintf(framing, sizeof(framing), "Transfer-Encoding: chunked\r\n");
		r->chunked_out = 1;
	} else {
		framing[0] = '\0';
		r->close_delimited = 1;
		r->conn->close_after = 1;
	}
	write_head(r, status, framing);
	/* from now on the writecb at the low-water mark tells the producer to resume */
	bufferevent_setwatermark(r->conn->bev, EV_WRITE, PROXY_OUT_LOW_WATER, 0);
	/* the head waits in the stage for the first body bytes (one write for both); should none
	 * follow in this loop pass, kick_cb sends it alone */
	event_active(r->conn->kick, EV_TIMEOUT, 0);
}

void proxy_req_reply_chunk(struct proxy_req *r, struct evbuffer *data)
{
	struct evbuffer *out;

	if (!req_live(r) || !r->started)
		return;
	out = r->conn->stage;
	if (r->chunked_out)
		http_chunk_write(out, data);
	else
		evbuffer_add_buffer(out, data);
	conn_send(r->conn, out);
}

void proxy_req_reply_end(struct proxy_req *r)
{
	if (!req_live(r) || !r->started)
		return;
	if (r->chunked_out)
		http_chunk_end(r->conn->stage);
	conn_reply_done(r->conn);
}

void proxy_req_abort(struct proxy_req *r)
{
	struct proxy_conn *c;

	if (!req_live(r))
		return;
	c = r->conn;
	if (!r->started) {
		conn_schedule_free(c); /* nothing was sent: just close */
		return;
	}
	/*
	 * Write out what is queued (the status line and the bytes relayed so far), then close
	 * without the body's end (no last chunk, short of Content-Length): the client gets the
	 * store's status and sees the body cut, never a truncated success.
	 */
	c->close_after = 1;
	conn_reply_done(c);
}

void proxy_req_on_done(struct proxy_req *r, void (*fn)(void *), void *arg)
{
	r->on_done = fn;
	r->done_arg = arg;
}

size_t proxy_req_output_pending(const struct proxy_req *r)
{
	return evbuffer_get_length(bufferevent_get_output(r->conn->bev));
}

void proxy_req_set_callbacks(struct proxy_req *r, void (*on_drain)(struct proxy_req *, void *),
			     void (*on_close)(struct proxy_req *, void *), void *arg)
{
	r->on_drain = on_drain;
	r->on_close = on_close;
	r->cb_arg = arg;
}

int proxy_req_add_header(struct proxy_req *r, const char *name, const char *value)
{
	struct evbuffer_iovec v;
	size_t nl = strlen(name), vl = strlen(value);

	if (!http_value_ok(name) || !http_value_ok(value))
		return -EINVAL;
	/* "Name: value\r\n" in one reservation (no printf: this runs for every header of every reply) */
	if (evbuffer_reserve_space(r->out_hdrs, (ev_ssize_t)(nl + vl + 4), &v, 1) != 1 || v.iov_len < nl + vl + 4) {
		evbuffer_add_printf(r->out_hdrs, "%s: %s\r\n", name, value);
		return 0;
	}
	memcpy(v.iov_base, name, nl);
	memcpy((char *)v.iov_base + nl, ": ", 2);
	memcpy((char *)v.iov_base + nl + 2, value, vl);
	memcpy((char *)v.iov_base + nl + 2 + vl, "\r\n", 2);
	v.iov_len = nl + vl + 4;
	evbuffer_commit_space(r->out_hdrs, &v, 1);
	return 0;
}

const char *proxy_req_method(const struct proxy_req *r) { return r->head.method; }
const char *proxy_req_path(const struct proxy_req *r) { return r->path; }
const char *proxy_req_query(const struct proxy_req *r) { return r->query; }
struct evbuffer *proxy_req_body(struct proxy_req *r) { return r->body; }
uint64_t proxy_req_oversize(const struct proxy_req *r) { return r->oversize; }
uint64_t proxy_req_body_cap(const struct proxy_req *r) { return r->cap; }
const char *proxy_req_peer(const struct proxy_req *r) { return r->conn->peer; }
int proxy_req_draining(const struct proxy_req *r) { return r->conn->srv->draining; }

const char *proxy_req_header(const struct proxy_req *r, const char *name)
{
	return http_msg_header(&r->head, name);
}

/* Answer a request the handler never sees (malformed, timed out), then close. */
static void conn_fail(struct proxy_conn *c, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void conn_fail(struct proxy_conn *c, int status, const char *fmt, ...)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	char line[512], code[8];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	line[n] = '\0';
	evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
			    "X-Promguard-Decision: reject; reason=bad_request; estimate=0; source=none\r\n"
			    "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
			    status, http_reason(status), n, line);
	snprintf(code, sizeof(code), "%d", status);
	metrics_inc(METRICS_REQUESTS, code, NULL);
	metrics_inc(METRICS_REJECTIONS, "default", "bad_request");
	line[n - 1] = '\0';
	char q[600];
	log_info("request refused", "listener=%s peer=%s code=%d reason=%s", c->srv->name, c->peer, status,
		 log_quote(q, sizeof(q), line));
	c->close_after = 1;
	c->state = CONN_HANDLING; /* nothing reads from here on */
	bufferevent_disable(c->bev, EV_READ);
	conn_reply_done(c);
}

static void dispatch(struct proxy_conn *c)
{
	c->state = CONN_HANDLING;
	event_del(c->deadline);
	/* keep reading for EOF detection, but never buffer more than a head's worth meanwhile */
	bufferevent_setwatermark(c->bev, EV_READ, 0, HTTP_MAX_HEAD_BYTES);
	set_read_timeout(c, 0);
	c->srv->cbs.handle(c->req, c->srv->arg);
}

static void conn_process(struct proxy_conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	char err[256];
	int rc;

	while (c->state == CONN_HEAD || c->state == CONN_BODY) {
		struct proxy_req *r = c->req;

		if (c->state == CONN_HEAD) {
			if (evbuffer_get_length(in) == 0)
				return;
			if (!r) {
				r = c->req = req_new(c);
				if (!r) {
					conn_schedule_free(c);
					return;
				}
				/* the deadline runs from the first byte: slow heads and bodies end here */
				struct timeval tv = { c->srv->to.request_ms / 1000, (c->srv->to.request_ms % 1000) * 1000 };
				event_add(c->deadline, &tv);
				set_read_timeout(c, (int)c->srv->to.request_ms);
			}
			rc = http_parse_head(in, 1, &r->head, err, sizeof(err));
			if (rc == 0)
				return;
			if (rc == -E2BIG) {
				conn_fail(c, 431, "promguard: request header fields too large: %s", err);
				return;
			}
			if (rc < 0) {
				conn_fail(c, 400, "promguard: bad request: malformed HTTP request: %s", err);
				return;
			}
			r->path = strdup(r->head.target);
			if (!r->path) {
				conn_schedule_free(c);
				return;
			}
			char *q = strchr(r->path, '?');
			if (q)
				*q++ = '\0';
			r->query = q ? q : "";
			if (c->srv->draining)
				c->close_after = 1;
			r->cap = c->srv->cbs.body_cap(r, c->srv->arg);
			if (r->head.content_length > 0 && (uint64_t)r->head.content_length > r->cap) {
				/* refuse without reading: the handler answers 413, then we close */
				r->oversize = (uint64_t)r->head.content_length;
				c->close_after = 1;
				dispatch(c);
				return;
			}
			if (r->head.expect_continue && r->head.minor >= 1)
				evbuffer_add_printf(bufferevent_get_output(c->bev), "HTTP/1.1 100 Continue\r\n\r\n");
			http_body_init_request(&r->framing, &r->head);
			c->state = CONN_BODY;
		}
		rc = http_body_read(&r->framing, in, r->body, err, sizeof(err));
		if (r->framing.total > r->cap) {
			r->oversize = r->framing.total;
			c->close_after = 1;
			dispatch(c);
			return;
		}
		if (rc < 0) {
			conn_fail(c, 400, "promguard: bad request: malformed HTTP body: %s", err);
			return;
		}
		if (rc == 0)
			return;
		dispatch(c);
		return;
	}
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	conn_process(arg);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct proxy_conn *c = arg;

	(void)bev;
	if (c->state == CONN_FLUSHING) {
		if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
			conn_finish_request(c);
	} else if (c->state == CONN_HANDLING && c->req && c->req->on_drain) {
		c->req->on_drain(c->req, c->req->cb_arg);
	}
}

/* A client that did not send its whole request within client.request_timeout (slowloris). */
static void request_timeout(struct proxy_conn *c)
{
	char d[32];

	snprintf(d, sizeof(d), "%lldms", (long long)c->srv->to.request_ms);
	metrics_inc(METRICS_CLIENT_TIMEOUTS, "request", NULL);
	log_info("request timeout", "listener=%s peer=%s state=%s limit=client.request_timeout value=%s", c->srv->name,
		 c->peer, c->state == CONN_HEAD ? "head" : "body", d);
	conn_fail(c, 408, "promguard: request timeout: no complete request within %s (client.request_timeout)", d);
}

/*
 * A write timeout only says the socket took nothing for client.write_timeout. With the kernel's
 * send buffer autotuned to MiBs, a client that reads steadily but slower than about a third of
 * that buffer per timeout never makes it writable in time (epoll wants half the queue free), and
 * was dropped while reading (tests/integration/test_faults.py: 1.3 MB/s readers cut at
 * write_timeout=1s). So a timeout drops the client only when it acknowledged no byte since the
 * last one: a stalled reader goes after one or two timeouts, a slow one is kept.
 */
static int write_progressed(struct proxy_conn *c)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);

	memset(&ti, 0, sizeof(ti));
	if (getsockopt(bufferevent_getfd(c->bev), IPPROTO_TCP, TCP_INFO, &ti, &len) < 0 ||
	    len < offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof(ti.tcpi_bytes_acked) ||
	    ti.tcpi_bytes_acked <= c->acked)
		return 0;
	c->acked = ti.tcpi_bytes_acked;
	return 1;
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct proxy_conn *c = arg;

	(void)bev;
	if (what & BEV_EVENT_TIMEOUT) {
		if (c->state == CONN_HEAD && !c->req) {
			metrics_inc(METRICS_CLIENT_TIMEOUTS, "idle", NULL);
			conn_schedule_free(c); /* idle keep-alive connection: client.idle_timeout */
			return;
		}
		if (c->state == CONN_HEAD || c->state == CONN_BODY) {
			request_timeout(c);
			return;
		}
		if ((what & BEV_EVENT_WRITING) && write_progressed(c)) {
			bufferevent_enable(c->bev, EV_WRITE); /* libevent disabled it: wait another period */
			return;
		}
		if (what & BEV_EVENT_WRITING) {
			metrics_inc(METRICS_CLIENT_TIMEOUTS, "write", NULL);
			log_info("write timeout", "listener=%s peer=%s limit=client.write_timeout value=%lldms", c->srv->name,
				 c->peer, (long long)c->srv->to.write_ms);
		}
	}
	conn_lost(c);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proxy_conn *c = arg;

	(void)fd;
	(void)what;
	if (c->state == CONN_HEAD || c->state == CONN_BODY)
		request_timeout(c);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	struct proxy_server *s = arg;
	struct proxy_conn *c;

	(void)l;
	(void)salen;
	c = calloc(1, sizeof(*c));
	if (!c) {
		evutil_closesocket(fd);
		return;
	}
	c->srv = s;
	netaddr_format(sa, c->peer, sizeof(c->peer));
	c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
	c->deadline = evtimer_new(s->base, deadline_cb, c);
	c->kick = event_new(s->base, -1, 0, kick_cb, c);
	c->stage = evbuffer_new();
	TAILQ_INSERT_TAIL(&s->conns, c, link);
	s->n_conns++;
	update_conn_gauge(s);
	if (!c->bev || !c->deadline || !c->kick || !c->stage) {
		if (!c->bev)
			evutil_closesocket(fd);
		conn_free(c);
		return;
	}
	c->state = CONN_HEAD;
	netaddr_tune_socket(fd);
	/* libevent moves at most 16 KiB per syscall by default; streams want larger writes */
	bufferevent_set_max_single_write(c->bev, CLIENT_MAX_WRITE);
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	set_read_timeout(c, (int)c->srv->to.idle_ms);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proxy_server *s = arg;

	(void)fd;
	(void)what;
	if (!s->draining && s->listener) {
		evconnlistener_enable(s->listener);
		log_info("accepting again", "listener=%s", s->name);
	}
}

static void accept_error_cb(struct evconnlistener *l, void *arg)
{
	struct proxy_server *s = arg;
	int e = EVUTIL_SOCKET_ERROR();
	struct timeval tv = { ACCEPT_RETRY_MS / 1000, (ACCEPT_RETRY_MS % 1000) * 1000 };

	if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
		/* out of descriptors: stop accepting for a moment instead of spinning */
		evconnlistener_disable(l);
		event_add(s->accept_retry, &tv);
		log_warn("accept paused", "listener=%s error=\"%s\" open_connections=%zu retry_ms=%d", s->name,
			 strerror(e), s->n_conns, ACCEPT_RETRY_MS);
		return;
	}
	log_warn("accept failed", "listener=%s error=\"%s\"", s->name, strerror(e));
}

struct proxy_server *proxy_server_new(struct event_base *base, const char *name, const char *addr,
				      const struct proxy_server_cbs *cbs, void *arg, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sslen;
	struct proxy_server *s;

	if (netaddr_parse(addr, &ss, &sslen) < 0) {
		snprintf(err, errlen, "cannot resolve listen address %s", addr);
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	s->base = base;
	s->to = (struct proxy_server_timeouts){ PROXY_REQUEST_TIMEOUT_MS, PROXY_IDLE_TIMEOUT_MS, PROXY_WRITE_TIMEOUT_MS };
	s->cbs = *cbs;
	s->arg = arg;
	s->name = strdup(name);
	TAILQ_INIT(&s->conns);
	s->listener = evconnlistener_new_bind(base, accept_cb, s,
					      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
					      1024, (struct sockaddr *)&ss, (int)sslen);
	s->accept_retry = evtimer_new(base, accept_retry_cb, s);
	if (!s->name || !s->listener || !s->accept_retry) {
		snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(errno));
		proxy_server_free(s);
		return NULL;
	}
	evconnlistener_set_error_cb(s->listener, accept_error_cb);
	update_conn_gauge(s);
	return s;
}

void proxy_server_free(struct proxy_server *s)
{
	if (!s)
		return;
	while (!TAILQ_EMPTY(&s->conns)) {
		struct proxy_conn *c = TAILQ_FIRST(&s->conns);
		if (c->state == CONN_HANDLING && c->req && c->req->on_close)
			c->req->on_close(c->req, c->req->cb_arg);
		conn_free(c);
	}
	if (s->listener)
		evconnlistener_free(s->listener);
	if (s->accept_retry)
		event_free(s->accept_retry);
	free(s->name);
	free(s);
}

void proxy_server_drain(struct proxy_server *s)
{
	struct proxy_conn *c;

	if (!s || s->draining)
		return;
	s->draining = 1;
	/* close the listening socket: new connections are refused at once, not left in the backlog */
	evconnlistener_free(s->listener);
	s->listener = NULL;
	event_del(s->accept_retry);
	TAILQ_FOREACH(c, &s->conns, link) {
		if (c->state == CONN_HEAD && !c->req)
			conn_schedule_free(c);
		else
			c->close_after = 1;
	}
}

size_t proxy_server_connections(const struct proxy_server *s)
{
	return s->n_conns;
}

void proxy_server_set_timeouts(struct proxy_server *s, const struct proxy_server_timeouts *t)
{
	if (s)
		s->to = *t;
}

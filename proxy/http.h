/*
 * http: an incremental HTTP/1.1 message codec over evbuffers, shared by the client-facing
 * server and the upstream client.
 *
 * Why not evhttp: libevent 2.1.12's evhttp answers an oversized body itself (an HTML 413 that
 * the application never sees, so it cannot be counted or carry our one-line reason), has no
 * hook between the header and the body (evhttp_set_newreqcb is 2.2), and gives a client no way
 * to stop reading a response while a slow downstream catches up. The data path needs all three,
 * so it parses HTTP itself on bufferevents; everything else (loop, buffers, listeners) is libevent.
 *
 * Scope: request and status lines, headers (with caps), Content-Length, chunked transfer
 * encoding in both directions, close-delimited response bodies, keep-alive. No pipelined
 * responses out of order, no HTTP/2, no upgrades.
 */
#ifndef PROMGUARD_HTTP_H
#define PROMGUARD_HTTP_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

#define HTTP_MAX_HEADERS 100      /* more is a 431 for requests, a protocol error for responses */
#define HTTP_MAX_HEAD_BYTES 65536 /* request/status line plus headers */

struct http_header {
	const char *name;  /* (ref) into http_msg.raw */
	const char *value; /* (ref) into http_msg.raw, surrounding white space trimmed */
};

/*
 * One parsed message head (request or response). The scalars come first: http_msg_clear zeroes
 * them in one go and the arrays only up to n_headers (entries above it are always zero).
 */
struct http_msg {
	char *raw;                /* owned copy of the head; every string below points into it */
	const char *method;       /* requests: "POST" */
	const char *target;       /* requests: "/api/v1/read?x=y" */
	int status;               /* responses: 200 */
	const char *reason;       /* responses: "OK" */
	int minor;                /* HTTP/1.<minor> */
	int64_t content_length;   /* -1 when absent */
	int chunked;              /* Transfer-Encoding: chunked */
	int keep_alive;           /* connection may be reused after this message */
	int expect_continue;      /* Expect: 100-continue */
	size_t n_headers;
	struct http_header headers[HTTP_MAX_HEADERS];
	uint16_t name_len[HTTP_MAX_HEADERS];     /* strlen(headers[i].name), for http_msg_header */
	unsigned char name_c0[HTTP_MAX_HEADERS]; /* headers[i].name[0] | 0x20, for http_msg_header */
};

/*
 * Parse a head from the front of <in>. Returns 1 when a full head was parsed and removed from
 * <in> (fill <m>), 0 when more bytes are needed, or with one line in <err>: -EINVAL malformed,
 * -E2BIG head over HTTP_MAX_HEAD_BYTES or too many headers, -ENOMEM. In every case the caller
 * releases <m> with http_msg_clear() (a failed parse may already own the head's copy).
 * <is_request> selects request-line or status-line parsing.
 */
int http_parse_head(struct evbuffer *in, int is_request, struct http_msg *m, char *err, size_t errlen);

/*
 * Free what a parsed head owns and zero it. Safe on a zeroed message. <m> must have started zeroed
 * (calloc, "= { 0 }" or a previous clear): the arrays are zeroed only below n_headers.
 */
void http_msg_clear(struct http_msg *m);

/* First value of header <name> (case-insensitive), or NULL. (ref) */
const char *http_msg_header(const struct http_msg *m, const char *name);

/* Body framing state, from a message head. */
enum http_body_mode {
	HTTP_BODY_NONE,    /* no body */
	HTTP_BODY_LENGTH,  /* Content-Length bytes */
	HTTP_BODY_CHUNKED, /* chunked transfer coding */
	HTTP_BODY_CLOSE,   /* responses only: until the connection closes */
};

struct http_body {
	enum http_body_mode mode;
	uint64_t remaining; /* LENGTH: bytes left; CHUNKED: bytes left in the current chunk */
	int state;          /* chunked decoder state (private) */
	uint64_t total;     /* decoded body bytes delivered so far */
};

/*
 * Set up body framing for <m>. For responses pass the request method's HEAD-ness and the status
 * (1xx, 204 and 304 carry no body).
 */
void http_body_init_request(struct http_body *b, const struct http_msg *m);
void http_body_init_response(struct http_body *b, const struct http_msg *m);

/*
 * Move decoded body bytes from <in> to <out> (no copy for plain bodies). Returns 1 when the body
 * is complete, 0 when more input is needed, -EINVAL (one line in <err>) on bad chunk framing.
 * HTTP_BODY_CLOSE bodies never complete here: the caller completes them at EOF.
 */
int http_body_read(struct http_body *b, struct evbuffer *in, struct evbuffer *out, char *err, size_t errlen);

/* Append <len> bytes of <data> (moved out of <data>) as one chunk to <out>; no-op when empty. */
void http_chunk_write(struct evbuffer *out, struct evbuffer *data);
/* Append the last-chunk marker "0\r\n\r\n". */
void http_chunk_end(struct evbuffer *out);

/* Append a string literal to an evbuffer; its length comes from the compiler, never by hand. */
#define evbuffer_add_lit(buf, lit) evbuffer_add((buf), "" lit, sizeof(lit) - 1)

/* Standard reason phrase for <status> ("Unknown" if none). */
const char *http_reason(int status);

/* 1 if <s> is a valid header field value (no CR, LF or NUL), else 0. */
int http_value_ok(const char *s);

#endif

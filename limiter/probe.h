/*
 * limiter_probe: the store-side half of an estimate probe, without I/O.
 *
 * Builds the GET target for the store's `/api/v1/series?match[]=<selector>&start=&end=` and
 * counts the series objects in its JSON answer incrementally, so the caller can stop reading
 * (and close the connection) once max_series + 1 have arrived. The counter is a small JSON
 * tokenizer: it tracks nesting, strings and escapes, finds "status" and the "data" array, and
 * counts the objects directly inside that array.
 */
#ifndef PROMGUARD_LIMITER_PROBE_H
#define PROMGUARD_LIMITER_PROBE_H

#include <stddef.h>
#include <stdint.h>

struct proto_query;

/*
 * Write the request target (path and query string) for probing <q> into <buf>: <base_path>
 * (e.g. "/api/v1/series") + `?match[]=` + the URL-encoded selector + `&start=` + `&end=` in
 * Unix seconds with milliseconds. The selector is printed by proto_selector_print and every
 * byte but the RFC 3986 unreserved ones (A-Z a-z 0-9 - . _ ~) is percent-encoded.
 * Returns the length needed (like snprintf: <buf> is always terminated when <n> > 0 and may be
 * NULL when <n> is 0), or 0 (with "" in <buf>) when a long selector's scratch copy cannot be
 * allocated.
 */
size_t limiter_probe_target(const char *base_path, const struct proto_query *q, char *buf, size_t n);

/*
 * Derive the series API path from a remote-read URL path: "/api/v1/read" -> "/api/v1/series",
 * m3coordinator's "/api/v1/prom/remote/read" -> "/api/v1/series", anything else ending in
 * "/api/v1/read" keeps its prefix ("/prometheus/api/v1/read" -> "/prometheus/api/v1/series").
 * A prefix before m3coordinator's path is kept the same way, a path already ending in
 * "/api/v1/series" (estimator.probe_url) is kept whole, and any other path gives "/api/v1/series". Written like snprintf into <buf> of <n> bytes (truncated, terminated).
 */
void limiter_probe_series_path(const char *read_path, char *buf, size_t n);

/* Bytes of the store's "error" text kept for the rejection line. */
#define LIMITER_PROBE_ERROR_MAX 200

/* Counter state; embed it and zero it with limiter_probe_count_init. Members marked private are
 * the tokenizer's. */
struct limiter_probe_count {
	uint64_t series;  /* objects seen inside "data" so far */
	int state;        /* private: tokenizer state */
	int depth;        /* private: open objects and arrays */
	uint64_t arrays;  /* private: bit i set when open level i + 1 is an array */
	int in_string, escape; /* private: role of the string being read; escape progress */
	uint32_t lit;     /* private: literal or number progress, \u code point being read */
	int key_pending;  /* private: which key the next value belongs to */
	char key[16];     /* private: start of the top-level key or "status" value being read */
	size_t key_len;
	int status_ok;    /* "status":"success" seen */
	int status_error; /* "status":"error" seen */
	int in_data;      /* inside the "data" array */
	int have_data;    /* "data" was an array (or null) */
	int done;         /* the top-level object closed */
	uint64_t offset;  /* private: bytes consumed, for error lines */
	char error[LIMITER_PROBE_ERROR_MAX + 1]; /* start of the top-level "error" text, "" if none */
	size_t error_len; /* bytes of the "error" text seen (more than stored when it was cut) */
};

void limiter_probe_count_init(struct limiter_probe_count *c);

/*
 * Feed <len> bytes of the JSON answer, split anywhere. Returns 0 to go on, 1 when the document
 * is complete (the top-level object closed with "status":"success" and a "data" array or null;
 * white space may follow), or -EBADMSG with one line in <err> naming the byte offset for
 * malformed JSON, an answer that is not an object, a "data" that is not an array, a missing or
 * unknown "status", or "status":"error" (the line then quotes the store's "error" text, cut to
 * LIMITER_PROBE_ERROR_MAX bytes). "status":"error" is reported when the document ends, so that
 * an "error" text after it is included. After -EBADMSG the counter stays failed.
 */
int limiter_probe_count_feed(struct limiter_probe_count *c, const char *data, size_t len, char *err,
			     size_t errlen);

#endif

/*
 * proto_request: decode a snappy-compressed prometheus.ReadRequest and print its queries.
 *
 * The decoded view below is plain C (no protobuf-c types) so that only proto/ includes the
 * generated .pb-c.h files. Strings in the view point into the decoded message and live until
 * proto_request_free().
 */
#ifndef PROMGUARD_PROTO_REQUEST_H
#define PROMGUARD_PROTO_REQUEST_H

#include <stddef.h>
#include <stdint.h>

/* Allocator for decoding (issue #4 backs it with the buffer pool). NULL means malloc/free. */
struct proto_alloc {
	void *(*alloc)(void *ctx, size_t size); /* NULL on failure */
	/* NULL: <ctx> is a region its owner releases whole, so nothing is freed piece by piece
	 * (proto_request_free then only forgets the request). */
	void (*free)(void *ctx, void *ptr);
	void *ctx;
};

enum proto_match_type {
	PROTO_MATCH_EQ = 0,
	PROTO_MATCH_NEQ = 1,
	PROTO_MATCH_RE = 2,
	PROTO_MATCH_NRE = 3,
};

enum proto_response_type {
	PROTO_RESP_SAMPLES = 0,
	PROTO_RESP_STREAMED_XOR_CHUNKS = 1,
};

struct proto_matcher {
	enum proto_match_type type;
	const char *name;  /* (ref) NUL-terminated */
	const char *value; /* (ref) NUL-terminated */
};

struct proto_hints {
	int present;        /* 1 if the query carried ReadHints */
	int64_t step_ms;
	const char *func;   /* (ref) "" when absent */
	int64_t start_ms;
	int64_t end_ms;
	const char **grouping; /* (ref) */
	size_t n_grouping;
	int by;
	int64_t range_ms;
};

struct proto_query {
	int64_t start_ms;
	int64_t end_ms;
	struct proto_matcher *matchers;
	size_t n_matchers;
	struct proto_hints hints;
};

struct proto_request {
	struct proto_query *queries;
	size_t n_queries;
	int *accepted_types;    /* enum proto_response_type values, in the client's order */
	size_t n_accepted_types;
	size_t decoded_bytes;   /* size of the decompressed protobuf */
	void *impl_;            /* private: the protobuf-c message and allocator */
};

/*
 * Decode <body> (<len> bytes of snappy block data) into *<out>.
 *
 * <cap> bounds both <len> and the decoded length; the decoded length is read from the snappy
 * header and checked before anything is allocated. <alloc> may be NULL.
 *
 * Returns 0 on success. On failure *<out> is NULL, <err> holds one line naming the problem, and:
 *   -E2BIG   <len> or the decoded length is above <cap>; *<size_out> holds the offending size
 *   -EINVAL  bad snappy, bad protobuf, no queries, a query with start > end (the line names the
 *            query index and both timestamps), or a matcher type outside EQ..NRE
 *   -ENOMEM  the allocator failed
 * Unknown fields are skipped; repeated enums are accepted packed and unpacked; unknown
 * accepted_response_types values are kept as they are (see proto_response_type_name).
 * On success free *<out> with proto_request_free(); everything it holds came from <alloc>.
 */
int proto_request_decode(const uint8_t *body, size_t len, size_t cap, const struct proto_alloc *alloc,
			 struct proto_request **out, uint64_t *size_out, char *err, size_t errlen)
	__attribute__((warn_unused_result));

/* Free <req> and the decoded message through the allocator given to decode. NULL is accepted. */
void proto_request_free(struct proto_request *req);

/*
 * Print <q>'s selector as PromQL into <buf>: `metric{a="b",c=~"d"}` when a matcher is an equality
 * on __name__ with a valid metric name, else every matcher in braces (`{__name__=~".+",a="b"}`).
 * Matchers keep their order. Label values use PromQL string escapes (\\ \" \n \t \r \xNN);
 * label names outside [a-zA-Z_][a-zA-Z0-9_]* are quoted as in PromQL 3.
 * Returns the length that the full text needs (like snprintf); output is always terminated when
 * <n> > 0, and <buf> may be NULL when <n> is 0.
 */
size_t proto_selector_print(const struct proto_query *q, char *buf, size_t n);

/* Print the range as `[<rfc3339 start>,<rfc3339 end>]` (millisecond precision, UTC). */
size_t proto_range_print(const struct proto_query *q, char *buf, size_t n);

/* Print the hints as `step=15s func=rate range=5m by=(job)` (grouping without `by` prints as
 * `without=(...)`; zero/empty hints are left out); "" when absent. */
size_t proto_hints_print(const struct proto_query *q, char *buf, size_t n);

/* Name of a response type ("SAMPLES", "STREAMED_XOR_CHUNKS", or "UNKNOWN(n)") into <buf>. */
const char *proto_response_type_name(int t, char *buf, size_t n);

/* Encode <req> back to snappy-compressed protobuf (test tools and probes). The view is encoded as
 * given, without validation; <req>->impl_ is ignored. Returns 0 or a negative errno (-ENOMEM);
 * *<out> is malloc'd and owned by the caller (free()). */
int proto_request_encode(const struct proto_request *req, uint8_t **out, size_t *out_len);

#endif

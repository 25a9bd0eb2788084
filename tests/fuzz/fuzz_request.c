/*
 * fuzz_request: proto_request_decode on arbitrary bytes, through a capped allocator like the
 * request arena the flow gives it, then every printer over what was decoded.
 *
 * Input: one header byte, then the body (snappy block data, as POSTed by Prometheus).
 *   header bits 0-3  allocator budget: 256 << n bytes (256 B .. 8 MiB); small budgets fail
 *                    allocations part way and exercise the -ENOMEM unwinding
 *   header bits 4-7  request cap (limits.max_request_bytes): 64 << n bytes (64 B .. 2 MiB)
 *
 * Properties checked:
 *   - the return code is one of 0, -E2BIG, -EINVAL, -ENOMEM with *out set only on success, the
 *     error line terminated, -E2BIG naming a size above the cap and -ENOMEM only after the
 *     allocator refused something;
 *   - a decoded request is valid (queries, start <= end, matcher types EQ..NRE) and freeing it
 *     gives every byte back to the allocator it came from;
 *   - the printers (selector, range, hints, response type) have snprintf semantics: the return
 *     value is the full length, a smaller buffer gets a terminated prefix of the full text;
 *   - proto_request_encode of the decoded view decodes again to a request that prints the same.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "proto/request.h"

/* Capped allocator: every block carries its size in front so that frees give it back. */
struct capped {
	size_t budget;    /* bytes that may be outstanding */
	size_t used;      /* bytes outstanding */
	size_t blocks;    /* blocks outstanding */
	unsigned refused; /* allocations refused */
};

/* Block header, sized to keep the payload aligned for any type. */
union block_hdr {
	size_t size;
	max_align_t align;
};

static void *capped_alloc(void *ctx, size_t size)
{
	struct capped *c = ctx;
	union block_hdr *h;

	if (size > c->budget - c->used) {
		c->refused++;
		return NULL;
	}
	h = malloc(sizeof(*h) + size);
	if (!h) {
		c->refused++;
		return NULL;
	}
	h->size = size;
	c->used += size;
	c->blocks++;
	return h + 1;
}

static void capped_free(void *ctx, void *ptr)
{
	struct capped *c = ctx;
	union block_hdr *h;

	if (!ptr)
		return;
	h = (union block_hdr *)ptr - 1;
	FUZZ_CHECK(c->blocks > 0 && h->size <= c->used, "free of a block the allocator did not hand out");
	c->used -= h->size;
	c->blocks--;
	free(h);
}

/*
 * Call <print> into buffers of every interesting size and check snprintf semantics; returns the
 * full text (malloc'd, caller frees).
 */
static char *print_checked(size_t (*print)(const struct proto_query *, char *, size_t), const struct proto_query *q,
			   const char *what)
{
	size_t need = print(q, NULL, 0), again;
	char *full = malloc(need + 1), small[17];

	FUZZ_CHECK(full != NULL, "out of memory");
	again = print(q, full, need + 1);
	FUZZ_CHECK(again == need, "%s: %zu bytes needed, then %zu printed", what, need, again);
	FUZZ_CHECK(strlen(full) == need, "%s: length %zu but %zu bytes of text", what, need, strlen(full));
	for (size_t n = 1; n <= sizeof(small); n += 7) {
		memset(small, 'X', sizeof(small));
		again = print(q, small, n);
		FUZZ_CHECK(again == need, "%s: %zu bytes needed, %zu with a %zu-byte buffer", what, need, again, n);
		FUZZ_CHECK(memchr(small, '\0', n) != NULL, "%s: %zu-byte buffer not terminated", what, n);
		FUZZ_CHECK(strncmp(small, full, n - 1) == 0 && strlen(small) == (need < n - 1 ? need : n - 1),
			   "%s: %zu-byte buffer holds \"%s\", not a prefix of \"%s\"", what, n, small, full);
	}
	return full;
}

/* The printed form of every query and the response types, joined (malloc'd). */
static char *print_request(const struct proto_request *req)
{
	size_t len = 0, cap = 256;
	char *all = malloc(cap), tbuf[32];

	FUZZ_CHECK(all != NULL, "out of memory");
	all[0] = '\0';
	for (size_t i = 0; i < req->n_queries; i++) {
		char *parts[3] = {
			print_checked(proto_selector_print, &req->queries[i], "selector"),
			print_checked(proto_range_print, &req->queries[i], "range"),
			print_checked(proto_hints_print, &req->queries[i], "hints"),
		};

		for (int k = 0; k < 3; k++) {
			size_t n = strlen(parts[k]);

			if (len + n + 2 > cap) {
				while (len + n + 2 > cap)
					cap *= 2;
				all = realloc(all, cap);
				FUZZ_CHECK(all != NULL, "out of memory");
			}
			memcpy(all + len, parts[k], n);
			len += n;
			all[len++] = '|';
			all[len] = '\0';
			free(parts[k]);
		}
	}
	for (size_t i = 0; i < req->n_accepted_types; i++) {
		const char *name = proto_response_type_name(req->accepted_types[i], tbuf, sizeof(tbuf));
		size_t n = strlen(name);

		FUZZ_CHECK(n > 0 && n < sizeof(tbuf), "response type %d printed as \"%s\"", req->accepted_types[i], name);
		if (len + n + 2 > cap) {
			cap = len + n + 2;
			all = realloc(all, cap);
			FUZZ_CHECK(all != NULL, "out of memory");
		}
		memcpy(all + len, name, n);
		len += n;
		all[len++] = ',';
		all[len] = '\0';
	}
	return all;
}

/* Structural validity of a decoded request, as request.h promises it. */
static void check_valid(const struct proto_request *req)
{
	FUZZ_CHECK(req->n_queries > 0 && req->queries != NULL, "%zu queries", req->n_queries);
	for (size_t i = 0; i < req->n_queries; i++) {
		const struct proto_query *q = &req->queries[i];

		FUZZ_CHECK(q->start_ms <= q->end_ms, "query %zu: start %lld after end %lld", i, (long long)q->start_ms,
			   (long long)q->end_ms);
		FUZZ_CHECK(q->n_matchers == 0 || q->matchers != NULL, "query %zu: matchers at NULL", i);
		for (size_t j = 0; j < q->n_matchers; j++) {
			const struct proto_matcher *m = &q->matchers[j];

			FUZZ_CHECK(m->type >= PROTO_MATCH_EQ && m->type <= PROTO_MATCH_NRE, "type %d", (int)m->type);
			FUZZ_CHECK(m->name && m->value, "query %zu matcher %zu: NULL string", i, j);
		}
		FUZZ_CHECK(q->hints.func != NULL, "query %zu: hints.func NULL", i);
		for (size_t j = 0; j < q->hints.n_grouping; j++)
			FUZZ_CHECK(q->hints.grouping[j] != NULL, "query %zu: grouping %zu NULL", i, j);
	}
}

/* Encode the view again and decode that: the same request must come back. */
static void check_reencode(const struct proto_request *req, const char *printed)
{
	struct proto_request *again = NULL;
	uint8_t *enc = NULL;
	size_t enc_len = 0;
	uint64_t size = 0;
	char err[256];
	char *printed2;
	int rc = proto_request_encode(req, &enc, &enc_len);

	FUZZ_CHECK(rc == 0, "encode of a decoded request failed: %d", rc);
	rc = proto_request_decode(enc, enc_len, SIZE_MAX, NULL, &again, &size, err, sizeof(err));
	FUZZ_CHECK(rc == 0, "decoding the re-encoded request failed: %d %s", rc, err);
	FUZZ_CHECK(again->n_queries == req->n_queries, "%zu queries, %zu after re-encoding", req->n_queries,
		   again->n_queries);
	printed2 = print_request(again);
	FUZZ_CHECK(strcmp(printed, printed2) == 0, "printed \"%s\", after re-encoding \"%s\"", printed, printed2);
	free(printed2);
	proto_request_free(again);
	free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };
	uint8_t hdr = fuzz_u8(&in);
	struct capped cap = { .budget = (size_t)256 << (hdr & 15) };
	struct proto_alloc alloc = { capped_alloc, capped_free, &cap };
	size_t limit = (size_t)64 << (hdr >> 4);
	struct proto_request *req = (struct proto_request *)&cap; /* decode must reset it */
	uint64_t size_out = 0;
	char err[512];
	int rc;

	memset(err, 'X', sizeof(err));
	rc = proto_request_decode(in.p, in.n, limit, &alloc, &req, &size_out, err, sizeof(err));
	FUZZ_CHECK(rc == 0 || rc == -E2BIG || rc == -EINVAL || rc == -ENOMEM, "unexpected return %d", rc);
	if (rc < 0) {
		FUZZ_CHECK(req == NULL, "failed decode (%d) left *out set", rc);
		FUZZ_CHECK_ERRLINE(err, sizeof(err));
		FUZZ_CHECK(err[0] != '\0', "failed decode (%d) without an error line", rc);
		FUZZ_CHECK(rc != -E2BIG || size_out > limit, "-E2BIG for %llu bytes under the %zu cap",
			   (unsigned long long)size_out, limit);
		FUZZ_CHECK(rc != -ENOMEM || cap.refused > 0, "-ENOMEM but the allocator refused nothing");
		FUZZ_CHECK(cap.used == 0 && cap.blocks == 0, "failed decode (%d) kept %zu bytes in %zu blocks", rc,
			   cap.used, cap.blocks);
		return 0;
	}
	FUZZ_CHECK(req != NULL, "decode succeeded without a request");
	FUZZ_CHECK(req->decoded_bytes <= limit, "decoded %zu bytes above the %zu cap", req->decoded_bytes, limit);
	check_valid(req);
	{
		char *printed = print_request(req);

		check_reencode(req, printed);
		free(printed);
	}
	proto_request_free(req);
	FUZZ_CHECK(cap.used == 0 && cap.blocks == 0, "proto_request_free left %zu bytes in %zu blocks", cap.used,
		   cap.blocks);
	return 0;
}

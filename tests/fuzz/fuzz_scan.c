/*
 * fuzz_scan: the SAMPLES scanner (proto/scan.h) fed in random splits, alone or behind the
 * windowed snappy decoder (proto/snappy.h) the way proxy/flow.c counts a SAMPLES body: the
 * compressed body arrives in pieces, each goes through proto_snappy_feed, whose output goes to
 * proto_scan_feed; a back-reference past the window (-ERANGE) falls back to decoding the whole
 * body with libsnappy and scanning that (flow.c's scan_samples_whole).
 *
 * Input: a 2-byte header, FUZZ_SPLIT_SIZES split bytes, then the body.
 *   byte 0 bit 0     0: the body is a decompressed ReadResponse, fed straight to the scanner;
 *                    1: the body is snappy block data, fed through the windowed decoder
 *   byte 0 bit 1     set a series callback (labels are collected and reported)
 *   byte 0 bits 2-4  max_queries: 0..7 (0 refuses any result with -E2BIG)
 *   byte 1           window for the snappy decoder: 1 << (n % 17) bytes (1 B .. 64 KiB; flow.c
 *                    uses 64 KiB, smaller ones make the buffer slide in small inputs)
 *
 * Properties checked (the reference is one feed of the whole body, decoded by libsnappy):
 *   - the scanner's verdict, counts, skipped figure and series callbacks do not depend on how the
 *     body is split, nor on whether it was decoded piece by piece or whole; proto_scan_samples
 *     (the one-shot helper) agrees with them;
 *   - the windowed decoder agrees with libsnappy: what it accepts libsnappy accepts, with the
 *     same bytes; what libsnappy accepts it accepts too, or refuses with -ERANGE (window);
 *   - return codes are the documented ones and error lines are terminated.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <snappy-c.h>

#include "fuzz_util.h"
#include "proto/scan.h"
#include "proto/snappy.h"

/* Largest decoded body tried (libsnappy needs it whole); larger declared lengths are -E2BIG. */
#define DECODED_MAX ((uint64_t)4 << 20)

/* Everything one scan produced, for comparing two scans. */
struct scan_outcome {
	int rc;                               /* first error of feed or finish, else 0 */
	size_t n;                             /* results */
	struct proto_scan_counts counts[8];   /* their counts */
	uint64_t skipped;
	struct fuzz_digest digest;            /* series callbacks */
};

/* One scanner run, fed piece by piece. */
struct scan_run {
	struct proto_scan *s;
	struct scan_outcome out;
	char err[256];
};

static void run_init(struct scan_run *r, size_t max_queries, int with_cb)
{
	memset(r, 0, sizeof(*r));
	r->s = proto_scan_new(max_queries);
	FUZZ_CHECK(r->s != NULL, "out of memory");
	if (with_cb)
		proto_scan_set_series_cb(r->s, fuzz_digest_series, &r->out.digest);
}

/* Feed one piece; the first error sticks in out.rc. Returns that error (or 0). */
static int run_feed(struct scan_run *r, const uint8_t *p, size_t n)
{
	int rc;

	if (r->out.rc)
		return r->out.rc;
	rc = proto_scan_feed(r->s, p, n, r->err, sizeof(r->err));
	FUZZ_CHECK(rc == 0 || rc == -EBADMSG || rc == -E2BIG, "proto_scan_feed returned %d", rc);
	if (rc) {
		FUZZ_CHECK_ERRLINE(r->err, sizeof(r->err));
		/* After an error the scanner stays failed. */
		FUZZ_CHECK(proto_scan_feed(r->s, p, n, r->err, sizeof(r->err)) == rc, "failure did not stick");
	}
	r->out.rc = rc;
	return rc;
}

/* Finish, collect the outcome, free the scanner. */
static void run_end(struct scan_run *r)
{
	const struct proto_scan_counts *c;
	size_t n;

	if (!r->out.rc) {
		r->out.rc = proto_scan_finish(r->s, r->err, sizeof(r->err));
		FUZZ_CHECK(r->out.rc == 0 || r->out.rc == -EBADMSG, "proto_scan_finish returned %d", r->out.rc);
	}
	c = proto_scan_results(r->s, &n);
	FUZZ_CHECK(n <= 8, "%zu results from a scanner tracking at most 7", n);
	r->out.n = n;
	memcpy(r->out.counts, c, n * sizeof(*c));
	r->out.skipped = proto_scan_skipped(r->s);
	proto_scan_free(r->s);
	r->s = NULL;
}

static void check_same(const struct scan_outcome *a, const struct scan_outcome *b, const char *what)
{
	FUZZ_CHECK(a->rc == b->rc, "%s: verdict %d, reference %d", what, a->rc, b->rc);
	FUZZ_CHECK(a->n == b->n, "%s: %zu results, reference %zu", what, a->n, b->n);
	for (size_t i = 0; i < a->n; i++)
		FUZZ_CHECK(memcmp(&a->counts[i], &b->counts[i], sizeof(a->counts[i])) == 0,
			   "%s: result %zu: series %llu samples %llu histograms %llu bytes %llu, reference %llu %llu %llu %llu",
			   what, i, (unsigned long long)a->counts[i].series, (unsigned long long)a->counts[i].samples,
			   (unsigned long long)a->counts[i].histograms, (unsigned long long)a->counts[i].bytes,
			   (unsigned long long)b->counts[i].series, (unsigned long long)b->counts[i].samples,
			   (unsigned long long)b->counts[i].histograms, (unsigned long long)b->counts[i].bytes);
	FUZZ_CHECK(a->skipped == b->skipped, "%s: %llu skipped, reference %llu", what, (unsigned long long)a->skipped,
		   (unsigned long long)b->skipped);
	FUZZ_CHECK(fuzz_digest_equal(&a->digest, &b->digest), "%s: %llu series callbacks, reference %llu", what,
		   (unsigned long long)a->digest.calls, (unsigned long long)b->digest.calls);
}

/* The reference: the whole decompressed body in one feed. */
static void scan_whole(const uint8_t *body, size_t len, size_t max_queries, int with_cb, struct scan_outcome *out)
{
	struct scan_run r;

	run_init(&r, max_queries, with_cb);
	run_feed(&r, body, len);
	run_end(&r);
	*out = r.out;
}

/* Raw mode: the decompressed body in the input's splits. */
static void fuzz_raw(const uint8_t *body, size_t len, struct fuzz_split *sp, size_t max_queries, int with_cb)
{
	struct scan_outcome ref;
	struct scan_run r;
	size_t off = 0;

	scan_whole(body, len, max_queries, with_cb, &ref);
	{
		/* The one-shot helper agrees with one feed plus finish. */
		struct proto_scan_counts counts[8];
		size_t n = 99;
		char err[256];
		int rc = proto_scan_samples(body, len, counts, max_queries, &n, err, sizeof(err));

		FUZZ_CHECK(rc == ref.rc, "proto_scan_samples returned %d, feed and finish %d", rc, ref.rc);
		FUZZ_CHECK(rc ? n == 0 : n == ref.n && memcmp(counts, ref.counts, n * sizeof(counts[0])) == 0,
			   "proto_scan_samples: %zu results, feed and finish %zu (or other counts)", n, ref.n);
	}
	run_init(&r, max_queries, with_cb);
	while (off < len && !r.out.rc) {
		size_t n = fuzz_split_next(sp, len - off);

		run_feed(&r, body + off, n);
		off += n;
	}
	run_end(&r);
	check_same(&r.out, &ref, "split feed");
}

/* Windowed decoder's consumer: a copy of the output (to compare with libsnappy) and the scanner. */
struct snappy_sink {
	struct scan_run *run;
	uint8_t *copy;     /* grown as output arrives, up to DECODED_MAX bytes */
	size_t copy_len;
	size_t copy_cap;
	int scan_failed;   /* the scanner refused a piece (the decoder then returns its code) */
};

static int sink_out(void *ctx, const uint8_t *data, size_t len)
{
	struct snappy_sink *k = ctx;
	int rc;

	FUZZ_CHECK(len > 0, "the decoder handed over an empty piece");
	FUZZ_CHECK(k->copy_len + len <= DECODED_MAX, "more output than the %llu bytes allowed",
		   (unsigned long long)DECODED_MAX);
	if (k->copy_len + len > k->copy_cap) {
		while (k->copy_len + len > k->copy_cap)
			k->copy_cap = k->copy_cap ? 2 * k->copy_cap : 4096;
		k->copy = realloc(k->copy, k->copy_cap);
		FUZZ_CHECK(k->copy != NULL, "out of memory");
	}
	memcpy(k->copy + k->copy_len, data, len);
	k->copy_len += len;
	rc = run_feed(k->run, data, len);
	if (rc)
		k->scan_failed = 1;
	return rc;
}

/* Snappy mode: the compressed body in the input's splits, through the windowed decoder. */
static void fuzz_snappy(const uint8_t *body, size_t len, struct fuzz_split *sp, size_t window, size_t max_queries,
			int with_cb)
{
	struct proto_snappy *dec = proto_snappy_new(window, DECODED_MAX);
	struct scan_run r;
	struct snappy_sink sink = { .run = &r };
	char *plain = NULL;
	size_t plain_len = 0, off = 0;
	int ref_ok = 0, rc = 0;
	char err[256];

	FUZZ_CHECK(dec != NULL, "out of memory");
	/* libsnappy's verdict, when the declared length is one we decode at all. */
	if (snappy_uncompressed_length((const char *)body, len, &plain_len) == SNAPPY_OK && plain_len <= DECODED_MAX) {
		plain = malloc(plain_len ? plain_len : 1);
		FUZZ_CHECK(plain != NULL, "out of memory");
		ref_ok = snappy_uncompress((const char *)body, len, plain, &plain_len) == SNAPPY_OK;
	}
	run_init(&r, max_queries, with_cb);
	while (off < len && rc == 0) {
		size_t n = fuzz_split_next(sp, len - off);

		memset(err, 'X', sizeof(err));
		rc = proto_snappy_feed(dec, n ? body + off : NULL, n, sink_out, &sink, err, sizeof(err));
		off += n;
		if (rc && !sink.scan_failed) {
			FUZZ_CHECK(rc == -EBADMSG || rc == -E2BIG || rc == -ERANGE, "proto_snappy_feed returned %d", rc);
			FUZZ_CHECK_ERRLINE(err, sizeof(err));
		}
	}
	if (rc == 0 || sink.scan_failed) {
		int frc = proto_snappy_finish(dec, err, sizeof(err));

		FUZZ_CHECK(!sink.scan_failed || frc == rc, "finish after a consumer error returned %d, not %d", frc, rc);
		rc = frc;
	}
	if (rc == 0) {
		/* Accepted: libsnappy must agree, byte for byte. */
		FUZZ_CHECK(ref_ok, "windowed decoder accepted %zu bytes that libsnappy refuses", len);
		FUZZ_CHECK(sink.copy_len == plain_len && (!plain_len || memcmp(sink.copy, plain, plain_len) == 0),
			   "windowed decoder produced %zu bytes, libsnappy %zu (or other bytes)", sink.copy_len, plain_len);
		FUZZ_CHECK(proto_snappy_declared(dec) == plain_len, "declared %llu, decoded %zu",
			   (unsigned long long)proto_snappy_declared(dec), plain_len);
	} else if (rc == -ERANGE) {
		/* flow.c: decode the whole body instead, with a fresh scanner. */
		run_end(&r);
		if (ref_ok) {
			run_init(&r, max_queries, with_cb);
			run_feed(&r, (const uint8_t *)plain, plain_len);
		}
	} else if (!sink.scan_failed) {
		FUZZ_CHECK(!ref_ok || rc == -E2BIG, "windowed decoder refused (%d: %s) what libsnappy decodes", rc, err);
	}
	if (r.s)
		run_end(&r);
	/* Whatever way it was decoded, a body libsnappy decodes scans as the whole of it does. */
	if (ref_ok && (rc == 0 || rc == -ERANGE || sink.scan_failed)) {
		struct scan_outcome ref;

		scan_whole((const uint8_t *)plain, plain_len, max_queries, with_cb, &ref);
		check_same(&r.out, &ref, "scan behind the snappy decoder");
	}
	proto_snappy_free(dec);
	free(sink.copy);
	free(plain);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };
	uint8_t flags = fuzz_u8(&in), wbyte = fuzz_u8(&in);
	struct fuzz_split sp;
	size_t max_queries = (flags >> 2) & 7;

	fuzz_split_init(&sp, &in);
	if (flags & 1)
		fuzz_snappy(in.p, in.n, &sp, (size_t)1 << (wbyte % 17), max_queries, flags & 2);
	else
		fuzz_raw(in.p, in.n, &sp, max_queries, flags & 2);
	return 0;
}

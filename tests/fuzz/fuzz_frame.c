/*
 * fuzz_frame: the STREAMED_XOR_CHUNKS frame reader (proto/frame.h) fed in random splits, then
 * finished, the way proxy/flow.c relays a stream piece by piece as the store sends it.
 *
 * Input: a 3-byte header, FUZZ_SPLIT_SIZES split bytes, then the body.
 *   byte 0 bit 0     0: the body is the stream as is (length, CRC and message bytes all fuzzed);
 *                    1: the body is a list of messages, each a 2-byte little-endian length and
 *                       its bytes, that the harness frames with their true CRC-32C, so the
 *                       fuzzer reaches the ChunkedReadResponse walker without forging checksums
 *   byte 0 bit 1     set a series callback (labels are collected and reported)
 *   byte 0 bits 2-4  max_queries: 0..7
 *   byte 0 bit 5     framed mode: flip a bit of one frame's CRC (byte 1 bits 0-3 pick the frame)
 *   byte 0 bit 6     framed mode: cut the stream short by 1..16 bytes (byte 1 bits 4-7)
 *   byte 2           max_frame: bit 7 set: 50,000,000 (Prometheus' default), else n * 16 bytes
 *
 * Properties checked (the reference is one feed of the whole stream):
 *   - verdict, per-query counts, skipped figure and series callbacks do not depend on the split;
 *   - a stream of intact frames within the limits is accepted, and a flipped CRC is caught;
 *   - proto_crc32c (SSE4.2 where present) equals the portable table code, also when resumed;
 *   - return codes are the documented ones and error lines are terminated.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "proto/frame.h"

#define MAX_QUERIES 7

/* Everything one read produced, for comparing two reads. */
struct frame_outcome {
	int rc;                                       /* first error of feed or finish, else 0 */
	size_t n;                                     /* query_index slots in use */
	struct proto_frame_counts counts[MAX_QUERIES];
	uint64_t skipped;
	struct fuzz_digest digest;
};

/* Growable stream buffer for the framed mode. */
struct stream {
	uint8_t *p;
	size_t len, cap;
};

static void put(struct stream *s, const void *p, size_t n)
{
	if (s->len + n > s->cap) {
		while (s->len + n > s->cap)
			s->cap = s->cap ? 2 * s->cap : 1024;
		s->p = realloc(s->p, s->cap);
		FUZZ_CHECK(s->p != NULL, "out of memory");
	}
	if (n)
		memcpy(s->p + s->len, p, n);
	s->len += n;
}

/* Read <len> bytes of <stream> in the splits of <sp> (NULL: one feed), then finish. */
static void read_stream(const uint8_t *stream, size_t len, struct fuzz_split *sp, size_t max_frame,
			size_t max_queries, int with_cb, struct frame_outcome *out)
{
	struct proto_frame_reader *r = proto_frame_reader_new(max_frame, max_queries);
	const struct proto_frame_counts *c;
	char err[256];
	size_t off = 0;
	int rc = 0;

	FUZZ_CHECK(r != NULL, "out of memory");
	memset(out, 0, sizeof(*out));
	if (with_cb)
		proto_frame_set_series_cb(r, fuzz_digest_series, &out->digest);
	do {
		size_t n = sp ? fuzz_split_next(sp, len - off) : len;

		memset(err, 'X', sizeof(err));
		rc = proto_frame_feed(r, stream + off, n, err, sizeof(err));
		off += n;
		FUZZ_CHECK(rc == 0 || rc == -EBADMSG || rc == -E2BIG, "proto_frame_feed returned %d", rc);
	} while (off < len && rc == 0);
	if (rc == 0) {
		memset(err, 'X', sizeof(err));
		rc = proto_frame_finish(r, err, sizeof(err));
		FUZZ_CHECK(rc == 0 || rc == -EBADMSG, "proto_frame_finish returned %d", rc);
	} else {
		/* After an error the reader stays failed. */
		char again[64];

		FUZZ_CHECK(proto_frame_feed(r, stream, len, again, sizeof(again)) == rc, "failure did not stick");
		FUZZ_CHECK(proto_frame_finish(r, again, sizeof(again)) == rc, "failure did not stick at finish");
	}
	if (rc)
		FUZZ_CHECK_ERRLINE(err, sizeof(err));
	out->rc = rc;
	c = proto_frame_results(r, &out->n);
	FUZZ_CHECK(out->n <= max_queries, "%zu query slots for %zu queries", out->n, max_queries);
	memcpy(out->counts, c, out->n * sizeof(*c));
	out->skipped = proto_frame_skipped(r);
	proto_frame_reader_free(r);
}

static void check_same(const struct frame_outcome *a, const struct frame_outcome *b)
{
	FUZZ_CHECK(a->rc == b->rc, "split read: verdict %d, one feed %d", a->rc, b->rc);
	FUZZ_CHECK(a->n == b->n, "split read: %zu queries, one feed %zu", a->n, b->n);
	for (size_t i = 0; i < a->n; i++)
		FUZZ_CHECK(memcmp(&a->counts[i], &b->counts[i], sizeof(a->counts[i])) == 0,
			   "split read: query %zu: series %llu chunks %llu bytes %llu frames %llu, one feed %llu %llu %llu %llu",
			   i, (unsigned long long)a->counts[i].series, (unsigned long long)a->counts[i].chunks,
			   (unsigned long long)a->counts[i].bytes, (unsigned long long)a->counts[i].frames,
			   (unsigned long long)b->counts[i].series, (unsigned long long)b->counts[i].chunks,
			   (unsigned long long)b->counts[i].bytes, (unsigned long long)b->counts[i].frames);
	FUZZ_CHECK(a->skipped == b->skipped, "split read: %llu skipped, one feed %llu", (unsigned long long)a->skipped,
		   (unsigned long long)b->skipped);
	FUZZ_CHECK(fuzz_digest_equal(&a->digest, &b->digest), "split read: %llu series callbacks, one feed %llu",
		   (unsigned long long)a->digest.calls, (unsigned long long)b->digest.calls);
}

/* Both CRC-32C implementations agree, whole and resumed at <cut>. */
static uint32_t crc_checked(const uint8_t *p, size_t n, size_t cut)
{
	uint32_t fast = proto_crc32c(0, p, n), portable = proto_crc32c_portable(0, p, n);

	cut = n ? cut % (n + 1) : 0;
	FUZZ_CHECK(fast == portable, "crc32c %08x, portable %08x over %zu bytes", fast, portable, n);
	FUZZ_CHECK(proto_crc32c(proto_crc32c(0, p, cut), p + cut, n - cut) == fast, "resumed crc32c differs");
	FUZZ_CHECK(proto_crc32c_portable(proto_crc32c_portable(0, p, cut), p + cut, n - cut) == fast,
		   "resumed portable crc32c differs");
	return fast;
}

/*
 * Frame the messages of <in> into <s>. Returns the number of frames; *<max_msg> is the longest
 * message. The CRC of frame <bad> (if >= 0) has a bit flipped.
 */
static size_t build_frames(struct fuzz_in *in, struct stream *s, int bad, size_t *max_msg)
{
	size_t frames = 0;

	*max_msg = 0;
	while (in->n > 0) {
		size_t want = fuzz_u16(in), n;
		const uint8_t *msg = fuzz_take(in, want, &n);
		uint8_t hdr[10 + 4];
		size_t h = 0;
		uint64_t v = n;
		uint32_t crc = crc_checked(msg, n, want);

		while (v >= 0x80) {
			hdr[h++] = (uint8_t)(v | 0x80);
			v >>= 7;
		}
		hdr[h++] = (uint8_t)v;
		if ((int)frames == bad)
			crc ^= 1u << (want % 32);
		hdr[h++] = (uint8_t)(crc >> 24);
		hdr[h++] = (uint8_t)(crc >> 16);
		hdr[h++] = (uint8_t)(crc >> 8);
		hdr[h++] = (uint8_t)crc;
		put(s, hdr, h);
		put(s, msg, n);
		if (n > *max_msg)
			*max_msg = n;
		frames++;
	}
	return frames;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_in in = { data, size };
	uint8_t flags = fuzz_u8(&in), b1 = fuzz_u8(&in), b2 = fuzz_u8(&in);
	size_t max_queries = (flags >> 2) & 7;
	size_t max_frame = b2 & 0x80 ? 50000000 : (size_t)b2 * 16;
	int with_cb = (flags & 2) != 0;
	struct frame_outcome ref, split;
	struct fuzz_split sp;
	struct stream s = { 0 };
	const uint8_t *stream = NULL;
	size_t len = 0, frames = 0, max_msg = 0;
	int bad = -1, cut = 0;

	fuzz_split_init(&sp, &in);
	if (flags & 1) {
		bad = flags & 0x20 ? (int)(b1 & 15) : -1;
		frames = build_frames(&in, &s, bad, &max_msg);
		if (flags & 0x40) {
			cut = 1 + (b1 >> 4);
			s.len = s.len > (size_t)cut ? s.len - (size_t)cut : 0;
		}
		stream = s.p ? s.p : (const uint8_t *)""; /* no frames: never offset a NULL */
		len = s.len;
	} else {
		stream = in.p;
		len = in.n;
	}
	read_stream(stream, len, NULL, max_frame, max_queries, with_cb, &ref);
	read_stream(stream, len, &sp, max_frame, max_queries, with_cb, &split);
	check_same(&split, &ref);
	/* Intact frames within the frame limit never fail the framing itself. */
	if ((flags & 1) && frames && max_msg <= max_frame && !cut && ref.rc == 0)
		FUZZ_CHECK(bad < 0 || (size_t)bad >= frames, "frame %d has a flipped CRC and was accepted", bad);
	free(s.p);
	return 0;
}

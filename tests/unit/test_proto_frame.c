/*
 * proto_frame: STREAMED_XOR_CHUNKS frame reading (counts per query, split series counted once,
 * any split of the input) and its failure modes; series label callbacks; proto_crc32c.
 */
#include <errno.h>

#include "proto/frame.h"
#include "proto_testutil.h"

#define MAXQ 4
#define MAX_FRAME 1000000

/* Vector figures (tests/vectors/README.md): 3 series, each split over 2 frames of 1 chunk. */
#define VEC_SERIES 3
#define VEC_CHUNKS 6
#define VEC_FRAMES 6
#define VEC_BYTES 1663

/* The vector's series as tb_record_series writes them: each once, though each spans 2 frames. */
#define VEC_TRANSCRIPT                                                    \
	"q0{__name__=promguard_vec_requests_total,code=200,job=vec}\n" \
	"q0{__name__=promguard_vec_requests_total,code=404,job=vec}\n" \
	"q0{__name__=promguard_vec_requests_total,code=500,job=vec}\n"

/* Bitwise CRC-32C, the reference the table-driven version must match. */
static uint32_t crc32c_bitwise(const uint8_t *p, size_t n)
{
	uint32_t c = 0xffffffff;

	while (n--) {
		c ^= *p++;
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (c & 1 ? 0x82F63B78u : 0);
	}
	return ~c;
}

static void test_crc32c_matches_check_value_and_reference(void **state)
{
	uint8_t buf[300];

	(void)state;
	assert_int_equal(proto_crc32c(0, (const uint8_t *)"123456789", 9), 0xE3069283);
	assert_int_equal(proto_crc32c(0, buf, 0), 0);
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 131 + 7);
	/* Every length and misalignment, whole and continued in two parts. */
	for (size_t off = 0; off < 8; off++) {
		for (size_t n = 0; n + off <= sizeof(buf); n += 7) {
			uint32_t want = crc32c_bitwise(buf + off, n);

			assert_int_equal(proto_crc32c(0, buf + off, n), want);
			assert_int_equal(proto_crc32c_portable(0, buf + off, n), want);
			assert_int_equal(proto_crc32c(proto_crc32c(0, buf + off, n / 3), buf + off + n / 3, n - n / 3), want);
		}
	}
}

/* Deterministic xorshift64 for the CRC tests' data and splits. */
static uint64_t crc_rand(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* Largest length compared: past two blocks of the SSE4.2 code's long 3 x 8 KiB stride. */
#define CRC_BIG 70000

/*
 * The SSE4.2 path runs three chains over blocks of 3 x 8 KiB, then 3 x 256 bytes, then one
 * chain, and joins the chains with shift tables: every length below 2,100 (each block
 * boundary of the short stride and the tail's) at eight alignments, then every 61st length up
 * to 70,000 and each length within 16 bytes of the long stride's boundaries at three, all equal
 * to the portable code; a few big lengths also to the bitwise reference.
 */
static void test_crc32c_sse_agrees_with_portable_at_every_length(void **state)
{
	static const size_t edges[] = { 768, 24576, 25344, 49152, 49920, 69888 };
	uint8_t *buf = malloc(CRC_BIG + 8);
	uint64_t x = 0x9e3779b97f4a7c15u;

	(void)state;
	assert_non_null(buf);
	for (size_t i = 0; i < CRC_BIG + 8; i++)
		buf[i] = (uint8_t)(crc_rand(&x) >> 56);
	/* The check value, also away from 8-byte alignment. */
	memcpy(buf + 3, "123456789", 9);
	assert_int_equal(proto_crc32c(0, buf + 3, 9), 0xE3069283);
	assert_int_equal(proto_crc32c_portable(0, buf + 3, 9), 0xE3069283);
	for (size_t i = 0; i < 12; i++)
		buf[i] = (uint8_t)(crc_rand(&x) >> 56);
	for (size_t off = 0; off < 8; off++)
		for (size_t n = 0; n < 2100; n++)
			assert_int_equal(proto_crc32c(0, buf + off, n), proto_crc32c_portable(0, buf + off, n));
	for (size_t off = 0; off < 8; off += 3) {
		for (size_t n = 2100; n <= CRC_BIG; n += 61)
			assert_int_equal(proto_crc32c(0, buf + off, n), proto_crc32c_portable(0, buf + off, n));
		for (size_t e = 0; e < sizeof(edges) / sizeof(edges[0]); e++)
			for (size_t n = edges[e] - 16; n <= edges[e] + 16; n++)
				assert_int_equal(proto_crc32c(0, buf + off, n), proto_crc32c_portable(0, buf + off, n));
	}
	for (size_t e = 0; e < sizeof(edges) / sizeof(edges[0]); e++)
		assert_int_equal(proto_crc32c(0, buf + 1, edges[e] + 5), crc32c_bitwise(buf + 1, edges[e] + 5));
	free(buf);
}

/*
 * From 256 bytes up, on a CPU with VPCLMULQDQ, the CRC folds 4 x 64-byte accumulators over
 * 256-byte steps, then one over 64, then 16, and finishes with crc32: every length within 16
 * bytes of each multiple of 64 up to 5 KiB and of 4 KiB up to 64 KiB, at four alignments and
 * from a nonzero register, and random lengths up to 1 MiB at random alignments, all equal to
 * the portable code.
 */
#define CRC_FOLD_BIG (1u << 20)

static void test_crc32c_fold_path_agrees_with_portable_around_its_boundaries(void **state)
{
	uint8_t *buf = malloc(CRC_FOLD_BIG + 64);
	uint64_t x = 0x13198a2e03707344u;

	(void)state;
	assert_non_null(buf);
	for (size_t i = 0; i < CRC_FOLD_BIG + 64; i++)
		buf[i] = (uint8_t)(crc_rand(&x) >> 56);
	for (size_t off = 0; off < 64; off += 21) {
		uint32_t seed = (uint32_t)crc_rand(&x);

		for (size_t m = 64; m <= 5120; m += 64)
			for (size_t n = m - 16; n <= m + 16; n++) {
				assert_int_equal(proto_crc32c(0, buf + off, n), proto_crc32c_portable(0, buf + off, n));
				assert_int_equal(proto_crc32c(seed, buf + off, n), proto_crc32c_portable(seed, buf + off, n));
			}
		for (size_t m = 8192; m <= 65536; m += 4096)
			for (size_t n = m - 16; n <= m + 16; n++)
				assert_int_equal(proto_crc32c(seed, buf + off, n), proto_crc32c_portable(seed, buf + off, n));
	}
	for (int i = 0; i < 40; i++) {
		size_t off = (size_t)(crc_rand(&x) % 64);
		size_t n = (size_t)(crc_rand(&x) % (CRC_FOLD_BIG + 1));
		uint32_t seed = (uint32_t)crc_rand(&x);

		assert_int_equal(proto_crc32c(seed, buf + off, n), proto_crc32c_portable(seed, buf + off, n));
	}
	free(buf);
}

/*
 * A running CRC continued over pieces equals one call over the whole, however it is cut: small
 * pieces (tail loop only), pieces around the short and long strides, and mixtures of them.
 */
static void test_crc32c_continued_over_random_pieces_equals_one_call(void **state)
{
	static const size_t scales[] = { 16, 1000, 30000, CRC_BIG };
	uint8_t *buf = malloc(CRC_BIG);
	uint64_t x = 0x243f6a8885a308d3u;
	uint32_t whole;

	(void)state;
	assert_non_null(buf);
	for (size_t i = 0; i < CRC_BIG; i++)
		buf[i] = (uint8_t)(crc_rand(&x) >> 56);
	whole = proto_crc32c_portable(0, buf, CRC_BIG);
	assert_int_equal(proto_crc32c(0, buf, CRC_BIG), whole);
	for (int round = 0; round < 60; round++) {
		size_t at = 0;
		uint32_t c = 0;

		while (at < CRC_BIG) {
			/* Each piece picks its own scale, so one round mixes tiny and long pieces. */
			size_t scale = scales[crc_rand(&x) % (size_t)(round % 4 + 1)];
			size_t n = 1 + (size_t)(crc_rand(&x) % scale);

			if (n > CRC_BIG - at)
				n = CRC_BIG - at;
			c = proto_crc32c(c, buf + at, n);
			at += n;
		}
		assert_int_equal(c, whole);
	}
	free(buf);
}

/* Read <n> bytes cut at <cuts> with a fresh reader; copy the counts out; return the status. */
static int read_pieces(const uint8_t *p, size_t n, const size_t *cuts, size_t ncuts, size_t max_frame,
		       struct proto_frame_counts *out, size_t *nres, char *err, size_t errlen)
{
	struct proto_frame_reader *r = proto_frame_reader_new(max_frame, MAXQ);
	const struct proto_frame_counts *res;
	size_t at = 0;
	int rc = 0;

	assert_non_null(r);
	for (size_t i = 0; i <= ncuts && rc == 0; i++) {
		size_t to = i < ncuts ? cuts[i] : n;

		rc = proto_frame_feed(r, p + at, to - at, err, errlen);
		at = to;
	}
	if (rc == 0)
		rc = proto_frame_finish(r, err, errlen);
	res = proto_frame_results(r, nres);
	memcpy(out, res, *nres * sizeof(*res));
	proto_frame_reader_free(r);
	return rc;
}

static int read_all(const struct tbuf *b, struct proto_frame_counts *out, size_t *nres, char *err, size_t errlen)
{
	return read_pieces(b->data, b->len, NULL, 0, MAX_FRAME, out, nres, err, errlen);
}

static void assert_vector_counts(const struct proto_frame_counts *c, size_t n)
{
	assert_int_equal(n, 1);
	assert_int_equal(c[0].series, VEC_SERIES);
	assert_int_equal(c[0].chunks, VEC_CHUNKS);
	assert_int_equal(c[0].frames, VEC_FRAMES);
	assert_int_equal(c[0].bytes, VEC_BYTES);
}

static void test_counts_real_prometheus_stream(void **state)
{
	struct tbuf s = tb_vector("streamed_response.bin");
	struct proto_frame_counts out[MAXQ];
	size_t n;
	char err[256];

	(void)state;
	assert_int_equal(s.len, VEC_BYTES);
	assert_int_equal(read_all(&s, out, &n, err, sizeof(err)), 0);
	assert_vector_counts(out, n);
	tb_free(&s);
}

static void test_same_counts_at_every_split_point(void **state)
{
	struct tbuf s = tb_vector("streamed_response.bin");
	struct proto_frame_counts out[MAXQ];
	size_t n;
	char err[256];

	(void)state;
	for (size_t cut = 0; cut <= s.len; cut++) {
		assert_int_equal(read_pieces(s.data, s.len, &cut, 1, MAX_FRAME, out, &n, err, sizeof(err)), 0);
		assert_vector_counts(out, n);
	}
	tb_free(&s);
}

static void test_same_counts_fed_one_byte_at_a_time(void **state)
{
	struct tbuf s = tb_vector("streamed_response.bin");
	struct proto_frame_counts out[MAXQ];
	size_t *cuts = malloc(s.len * sizeof(*cuts));
	size_t n;
	char err[256];

	(void)state;
	for (size_t i = 0; i < s.len; i++)
		cuts[i] = i + 1;
	assert_int_equal(read_pieces(s.data, s.len, cuts, s.len, MAX_FRAME, out, &n, err, sizeof(err)), 0);
	assert_vector_counts(out, n);
	free(cuts);
	tb_free(&s);
}

/* Append a frame with one ChunkedSeries {__name__=<name>} of <chunks> chunks for <query>. */
static void put_series_frame(struct tbuf *stream, int64_t query, const char *name, int chunks)
{
	struct tbuf msg = { 0 }, series = { 0 };

	tb_label(&series, 1, "__name__", name);
	tb_label(&series, 1, "job", "j");
	for (int i = 0; i < chunks; i++) {
		struct tbuf chunk = { 0 };

		tb_vfield(&chunk, 1, 1000 * (uint64_t)i);
		tb_vfield(&chunk, 2, 1000 * (uint64_t)i + 999);
		tb_vfield(&chunk, 3, 1);
		tb_str(&chunk, 4, "xordata");
		tb_msg(&series, 2, &chunk);
	}
	tb_msg(&msg, 1, &series);
	if (query)
		tb_vfield(&msg, 2, (uint64_t)query);
	tb_frame(stream, &msg, 0, 0);
	tb_free(&msg);
}

static void test_series_split_across_frames_counts_once(void **state)
{
	struct tbuf s = { 0 };
	struct proto_frame_counts out[MAXQ];
	size_t n;
	char err[256];

	(void)state;
	put_series_frame(&s, 0, "a", 2);
	put_series_frame(&s, 0, "a", 1); /* continues a */
	put_series_frame(&s, 0, "a", 1); /* still a */
	put_series_frame(&s, 0, "b", 1);
	put_series_frame(&s, 1, "b", 1); /* same labels, other query: a new series */
	put_series_frame(&s, 0, "a", 1); /* a again after b: not adjacent, counts */
	assert_int_equal(read_all(&s, out, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 2);
	assert_int_equal(out[0].series, 3);
	assert_int_equal(out[0].chunks, 6);
	assert_int_equal(out[0].frames, 5);
	assert_int_equal(out[1].series, 1);
	assert_int_equal(out[1].frames, 1);
	assert_int_equal(out[0].bytes + out[1].bytes, s.len);
	tb_free(&s);
}

/* Append a frame for query 0 with one ChunkedSeries whose labels are the given encoded Labels. */
static void put_raw_labels_frame(struct tbuf *stream, const char *const *labels, size_t n)
{
	struct tbuf msg = { 0 }, series = { 0 };

	for (size_t i = 0; i < n; i++)
		tb_str(&series, 1, labels[i]);
	tb_msg(&msg, 1, &series);
	tb_frame(stream, &msg, 0, 0);
	tb_free(&msg);
}

static void test_label_boundaries_are_part_of_series_identity(void **state)
{
	/* Labels {name:"a"},{value:"b"} run together equal the single label {name:"a",value:"b"}. */
	static const char *const two[] = { "\x0a\x01" "a", "\x12\x01" "b" };
	static const char *const one[] = { "\x0a\x01" "a" "\x12\x01" "b" };
	struct tbuf s = { 0 };
	struct proto_frame_counts out[MAXQ];
	size_t n;
	char err[256];

	(void)state;
	put_raw_labels_frame(&s, two, 2);
	put_raw_labels_frame(&s, one, 1);
	put_raw_labels_frame(&s, one, 1); /* this one does continue the previous series */
	assert_int_equal(read_all(&s, out, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 1);
	assert_int_equal(out[0].series, 2);
	assert_int_equal(out[0].frames, 3);
	tb_free(&s);
}

static void test_counts_several_series_in_one_frame(void **state)
{
	struct tbuf s = { 0 }, msg = { 0 };
	struct proto_frame_counts out[MAXQ];
	size_t n;
	char err[256];

	(void)state;
	for (int i = 0; i < 4; i++) {
		struct tbuf series = { 0 };

		/* a, b, b, a: the repeated b is one series continued, the last a a new one */
		tb_label(&series, 1, "__name__", i == 1 || i == 2 ? "b" : "a");
		tb_lfield(&series, 2, "", 0);
		tb_msg(&msg, 1, &series);
	}
	tb_vfield(&msg, 2, 3);
	tb_frame(&s, &msg, 0, 0);
	tb_free(&msg);
	assert_int_equal(read_all(&s, out, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 4);
	assert_int_equal(out[3].series, 3);
	assert_int_equal(out[3].chunks, 4);
	assert_int_equal(out[0].frames + out[1].frames + out[2].frames, 0);
	tb_free(&s);
}

static void test_empty_body_and_empty_frame(void **state)
{
	struct tbuf s = { 0 }, msg = { 0 };
	struct proto_frame_counts out[MAXQ];
	size_t n;
	char err[256];

	(void)state;
	assert_int_equal(read_all(&s, out, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 0);
	tb_frame(&s, &msg, 0, 0); /* zero-length message: 00 00 00 00 00 */
	assert_int_equal(read_all(&s, out, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 1);
	assert_int_equal(out[0].frames, 1);
	assert_int_equal(out[0].series, 0);
	assert_int_equal(out[0].bytes, 5);
	tb_free(&s);
}

/* Expect <s> (fed whole) to fail with <code> and an error containing <needle>. */
static void expect_rejected(const uint8_t *p, size_t len, size_t max_frame, int code, const char *needle)
{
	struct proto_frame_counts out[MAXQ];
	size_t n;
	char err[256] = "";

	assert_int_equal(read_pieces(p, len, NULL, 0, max_frame, out, &n, err, sizeof(err)), code);
	if (!strstr(err, needle))
		fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
}

static void test_reports_checksum_mismatch_with_both_values(void **state)
{
	struct tbuf s = { 0 }, msg = { 0 };
	char want[128];

	(void)state;
	put_series_frame(&s, 0, "a", 1);
	tb_str(&msg, 1, "");
	tb_frame(&s, &msg, 1, 0xdeadbeef);
	snprintf(want, sizeof(want), "frame 1: checksum mismatch: got 0x%08x want 0xdeadbeef",
		 proto_crc32c(0, msg.data, msg.len));
	expect_rejected(s.data, s.len, MAX_FRAME, -EBADMSG, want);
	tb_free(&msg);
	tb_free(&s);
}

static void test_detects_a_flipped_bit_in_real_data(void **state)
{
	struct tbuf s = tb_vector("streamed_response.bin");

	(void)state;
	/* Last byte of the first frame: inside chunk data, so only the CRC can notice. */
	s.data[263] ^= 0x10;
	expect_rejected(s.data, s.len, MAX_FRAME, -EBADMSG, "frame 0: checksum mismatch");
	tb_free(&s);
}

static void test_rejects_stream_truncated_inside_a_frame(void **state)
{
	struct tbuf s = tb_vector("streamed_response.bin");
	struct proto_frame_counts out[MAXQ];
	size_t n, next_boundary = 0, frames = 0;
	char err[256];

	(void)state;
	for (size_t len = 1; len < s.len; len++) {
		int rc = read_pieces(s.data, len, NULL, 0, MAX_FRAME, out, &n, err, sizeof(err));

		if (len > next_boundary) {
			/* Find the end of the frame that starts at <next_boundary> (test-local varint). */
			size_t at = next_boundary, msg = 0;

			for (unsigned shift = 0;; shift += 7) {
				msg |= (size_t)(s.data[at] & 0x7f) << shift;
				if (!(s.data[at++] & 0x80))
					break;
			}
			next_boundary = at + 4 + msg;
		}
		if (len == next_boundary) {
			frames++;
			assert_int_equal(rc, 0);
			assert_int_equal(out[0].frames, frames);
		} else {
			assert_int_equal(rc, -EBADMSG);
			if (!strstr(err, "body ends"))
				fail_msg("len %zu: unexpected error \"%s\"", len, err);
		}
	}
	assert_int_equal(frames, VEC_FRAMES - 1); /* the full stream is the sixth */
	tb_free(&s);
}

static void test_rejects_bad_length_varint(void **state)
{
	static const uint8_t s[] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01 };

	(void)state;
	expect_rejected(s, sizeof(s), MAX_FRAME, -EBADMSG, "frame 0: bad varint");
}

static void test_rejects_frame_above_max(void **state)
{
	struct tbuf s = { 0 };

	(void)state;
	put_series_frame(&s, 0, "a", 1);
	put_series_frame(&s, 0, "b", 20);
	expect_rejected(s.data, s.len, 200, -E2BIG, "frame 1: message of");
	tb_free(&s);
}

static void test_rejects_query_index_out_of_range(void **state)
{
	struct tbuf s = { 0 }, msg = { 0 };

	(void)state;
	put_series_frame(&s, MAXQ, "a", 1);
	expect_rejected(s.data, s.len, MAX_FRAME, -E2BIG, "query_index 4");
	tb_free(&s);
	tb_vfield(&msg, 2, (uint64_t)-1);
	tb_frame(&s, &msg, 0, 0);
	expect_rejected(s.data, s.len, MAX_FRAME, -EBADMSG, "negative query_index");
	tb_free(&msg);
	tb_free(&s);
}

static void test_rejects_invalid_message_with_valid_crc(void **state)
{
	struct tbuf s = { 0 }, msg = { 0 };

	(void)state;
	tb_key(&msg, 1, 3); /* start group */
	tb_frame(&s, &msg, 0, 0);
	expect_rejected(s.data, s.len, MAX_FRAME, -EBADMSG, "frame 0: bad ChunkedReadResponse: invalid wire type 3");
	tb_free(&msg);
	tb_free(&s);
	tb_vfield(&msg, 1, 5); /* chunked_series as a varint */
	tb_frame(&s, &msg, 0, 0);
	expect_rejected(s.data, s.len, MAX_FRAME, -EBADMSG, "chunked_series (field 1)");
	tb_free(&msg);
	tb_free(&s);
	tb_lfield(&msg, 1, "\x0a\x09", 2); /* labels longer than the series */
	tb_frame(&s, &msg, 0, 0);
	expect_rejected(s.data, s.len, MAX_FRAME, -EBADMSG, "enclosing message");
	tb_free(&msg);
	tb_free(&s);
}

static void test_stays_failed_after_an_error(void **state)
{
	static const uint8_t bad[] = { 0x01, 0, 0, 0, 0, 0x0b };
	struct proto_frame_reader *r = proto_frame_reader_new(MAX_FRAME, MAXQ);
	char err[256];

	(void)state;
	assert_int_equal(proto_frame_feed(r, bad, sizeof(bad), err, sizeof(err)), -EBADMSG);
	assert_int_equal(proto_frame_feed(r, bad, 1, err, sizeof(err)), -EBADMSG);
	assert_int_equal(proto_frame_finish(r, err, sizeof(err)), -EBADMSG);
	proto_frame_reader_free(r);
}

/*
 * Read <n> bytes cut at <cuts> with a series callback recording into <transcript>; returns the
 * finish status and stores the skipped count in *<skipped>.
 */
static int read_labels(const uint8_t *p, size_t n, const size_t *cuts, size_t ncuts, struct tbuf *transcript,
		       uint64_t *skipped)
{
	struct proto_frame_reader *r = proto_frame_reader_new(MAX_FRAME, MAXQ);
	size_t at = 0;
	char err[256];
	int rc = 0;

	assert_non_null(r);
	proto_frame_set_series_cb(r, tb_record_series, transcript);
	for (size_t i = 0; i <= ncuts && rc == 0; i++) {
		size_t to = i < ncuts ? cuts[i] : n;

		rc = proto_frame_feed(r, p + at, to - at, err, sizeof(err));
		at = to;
	}
	if (rc == 0)
		rc = proto_frame_finish(r, err, sizeof(err));
	*skipped = proto_frame_skipped(r);
	proto_frame_reader_free(r);
	return rc;
}

static void test_series_cb_reports_split_real_series_once(void **state)
{
	struct tbuf s = tb_vector("streamed_response.bin"), got = { 0 };
	uint64_t skipped;

	(void)state;
	assert_int_equal(read_labels(s.data, s.len, NULL, 0, &got, &skipped), 0);
	tb_assert_transcript(&got, VEC_TRANSCRIPT);
	assert_int_equal(skipped, 0);
	tb_free(&got);
	tb_free(&s);
}

static void test_series_cb_same_at_every_split_point_and_byte_by_byte(void **state)
{
	struct tbuf s = tb_vector("streamed_response.bin"), got = { 0 };
	size_t *cuts = malloc(s.len * sizeof(*cuts));
	uint64_t skipped;

	(void)state;
	assert_non_null(cuts);
	for (size_t cut = 0; cut <= s.len; cut++) {
		assert_int_equal(read_labels(s.data, s.len, &cut, 1, &got, &skipped), 0);
		tb_assert_transcript(&got, VEC_TRANSCRIPT);
		tb_free(&got);
	}
	for (size_t i = 0; i < s.len; i++)
		cuts[i] = i + 1;
	assert_int_equal(read_labels(s.data, s.len, cuts, s.len, &got, &skipped), 0);
	tb_assert_transcript(&got, VEC_TRANSCRIPT);
	tb_free(&got);
	free(cuts);
	tb_free(&s);
}

static void test_series_cb_follows_the_split_series_dedupe(void **state)
{
	struct tbuf s = { 0 }, msg = { 0 }, got = { 0 };
	uint64_t skipped;

	(void)state;
	put_series_frame(&s, 0, "a", 2);
	put_series_frame(&s, 0, "a", 1); /* continues a */
	put_series_frame(&s, 0, "a", 1); /* still a */
	put_series_frame(&s, 0, "b", 1);
	tb_frame(&s, &msg, 0, 0);        /* an empty frame does not break the split */
	put_series_frame(&s, 0, "b", 1); /* continues b */
	put_series_frame(&s, 1, "b", 1); /* same labels, other query: a new series */
	put_series_frame(&s, 0, "a", 1); /* a again after b: not adjacent, reported */
	for (int i = 0; i < 4; i++) {
		struct tbuf series = { 0 };

		/* one frame for query 3 carrying a, b, b, a: b continued within the frame */
		tb_label(&series, 1, "__name__", i == 1 || i == 2 ? "b" : "a");
		tb_msg(&msg, 1, &series);
	}
	tb_vfield(&msg, 2, 3);
	tb_frame(&s, &msg, 0, 0);
	tb_free(&msg);
	assert_int_equal(read_labels(s.data, s.len, NULL, 0, &got, &skipped), 0);
	tb_assert_transcript(&got, "q0{__name__=a,job=j}\n"
				   "q0{__name__=b,job=j}\n"
				   "q1{__name__=b,job=j}\n"
				   "q0{__name__=a,job=j}\n"
				   "q3{__name__=a}\n"
				   "q3{__name__=b}\n"
				   "q3{__name__=a}\n");
	tb_free(&got);
	tb_free(&s);
}

/* Append a frame for <query> with one ChunkedSeries {__name__=<name>, big=<len> x 'v'}. */
static void put_big_frame(struct tbuf *stream, int64_t query, const char *name, size_t len)
{
	struct tbuf msg = { 0 }, series = { 0 };
	char *value = malloc(len + 1);

	assert_non_null(value);
	memset(value, 'v', len);
	value[len] = '\0';
	tb_label(&series, 1, "__name__", name);
	tb_label(&series, 1, "big", value);
	tb_lfield(&series, 2, "", 0);
	tb_msg(&msg, 1, &series);
	if (query)
		tb_vfield(&msg, 2, (uint64_t)query);
	tb_frame(stream, &msg, 0, 0);
	tb_free(&msg);
	free(value);
}

static void test_series_cb_skips_and_counts_oversized_label_sets(void **state)
{
	struct tbuf s = { 0 }, got = { 0 };
	size_t cut;
	uint64_t skipped;

	(void)state;
	put_big_frame(&s, 0, "a", 2);
	put_big_frame(&s, 0, "b", PROTO_SERIES_LABELS_MAX);
	put_big_frame(&s, 0, "b", PROTO_SERIES_LABELS_MAX); /* continues b: not reported, not counted */
	put_big_frame(&s, 1, "c", 1);
	cut = s.len / 2;
	assert_int_equal(read_labels(s.data, s.len, &cut, 1, &got, &skipped), 0);
	tb_assert_transcript(&got, "q0{__name__=a,big=vv}\nq0{}\nq1{__name__=c,big=v}\n");
	assert_int_equal(skipped, 1);
	tb_free(&got);
	tb_free(&s);
}

static void test_series_cb_reports_every_series_of_a_crowded_frame(void **state)
{
	/* 1000 distinct series in one frame outgrow the label buffer: the tail has no labels. */
	static const char head[] = "q2{__name__=m000}\nq2{__name__=m001}\n";
	struct tbuf s = { 0 }, msg = { 0 }, got = { 0 };
	uint64_t skipped;
	size_t lines = 0, empty = 0;

	(void)state;
	for (int i = 0; i < 1000; i++) {
		struct tbuf series = { 0 };
		char name[16];

		snprintf(name, sizeof(name), "m%03d", i);
		tb_label(&series, 1, "__name__", name);
		tb_msg(&msg, 1, &series);
	}
	tb_vfield(&msg, 2, 2);
	tb_frame(&s, &msg, 0, 0);
	tb_free(&msg);
	assert_int_equal(read_labels(s.data, s.len, NULL, 0, &got, &skipped), 0);
	tb_byte(&got, '\0');
	assert_true(strncmp((const char *)got.data, head, sizeof(head) - 1) == 0);
	for (const char *p = (const char *)got.data; (p = strchr(p, '\n')) != NULL; p++)
		lines++;
	for (const char *p = (const char *)got.data; (p = strstr(p, "q2{}\n")) != NULL; p++)
		empty++;
	assert_int_equal(lines, 1000);
	assert_true(empty > 0 && empty < 1000);
	assert_int_equal(skipped, empty);
	tb_free(&got);
	tb_free(&s);
}

static void test_series_cb_not_called_for_a_frame_failing_its_checksum(void **state)
{
	struct tbuf s = { 0 }, msg = { 0 }, series = { 0 }, got = { 0 };
	uint64_t skipped;

	(void)state;
	put_series_frame(&s, 0, "a", 1);
	tb_label(&series, 1, "__name__", "b");
	tb_msg(&msg, 1, &series);
	tb_frame(&s, &msg, 1, 0xdeadbeef);
	assert_int_equal(read_labels(s.data, s.len, NULL, 0, &got, &skipped), -EBADMSG);
	tb_assert_transcript(&got, "q0{__name__=a,job=j}\n");
	tb_free(&msg);
	tb_free(&got);
	tb_free(&s);
}

static void test_series_cb_can_be_removed_between_feeds(void **state)
{
	struct tbuf s = tb_vector("streamed_response.bin"), got = { 0 };
	struct proto_frame_reader *r = proto_frame_reader_new(MAX_FRAME, MAXQ);
	const struct proto_frame_counts *res;
	size_t n, half = s.len / 2;
	char err[256];

	(void)state;
	proto_frame_set_series_cb(r, tb_record_series, &got);
	assert_int_equal(proto_frame_feed(r, s.data, half, err, sizeof(err)), 0);
	proto_frame_set_series_cb(r, NULL, NULL);
	assert_int_equal(proto_frame_feed(r, s.data + half, s.len - half, err, sizeof(err)), 0);
	assert_int_equal(proto_frame_finish(r, err, sizeof(err)), 0);
	/* Only series whose frames ended before the removal were reported; the counts are whole. */
	tb_byte(&got, '\0');
	assert_non_null(strstr((const char *)got.data, "code=200"));
	assert_null(strstr((const char *)got.data, "code=500"));
	res = proto_frame_results(r, &n);
	assert_vector_counts(res, n);
	proto_frame_reader_free(r);
	tb_free(&got);
	tb_free(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crc32c_matches_check_value_and_reference),
		cmocka_unit_test(test_crc32c_sse_agrees_with_portable_at_every_length),
		cmocka_unit_test(test_crc32c_fold_path_agrees_with_portable_around_its_boundaries),
		cmocka_unit_test(test_crc32c_continued_over_random_pieces_equals_one_call),
		cmocka_unit_test(test_counts_real_prometheus_stream),
		cmocka_unit_test(test_same_counts_at_every_split_point),
		cmocka_unit_test(test_same_counts_fed_one_byte_at_a_time),
		cmocka_unit_test(test_series_split_across_frames_counts_once),
		cmocka_unit_test(test_label_boundaries_are_part_of_series_identity),
		cmocka_unit_test(test_counts_several_series_in_one_frame),
		cmocka_unit_test(test_empty_body_and_empty_frame),
		cmocka_unit_test(test_reports_checksum_mismatch_with_both_values),
		cmocka_unit_test(test_detects_a_flipped_bit_in_real_data),
		cmocka_unit_test(test_rejects_stream_truncated_inside_a_frame),
		cmocka_unit_test(test_rejects_bad_length_varint),
		cmocka_unit_test(test_rejects_frame_above_max),
		cmocka_unit_test(test_rejects_query_index_out_of_range),
		cmocka_unit_test(test_rejects_invalid_message_with_valid_crc),
		cmocka_unit_test(test_stays_failed_after_an_error),
		cmocka_unit_test(test_series_cb_reports_split_real_series_once),
		cmocka_unit_test(test_series_cb_same_at_every_split_point_and_byte_by_byte),
		cmocka_unit_test(test_series_cb_follows_the_split_series_dedupe),
		cmocka_unit_test(test_series_cb_skips_and_counts_oversized_label_sets),
		cmocka_unit_test(test_series_cb_reports_every_series_of_a_crowded_frame),
		cmocka_unit_test(test_series_cb_not_called_for_a_frame_failing_its_checksum),
		cmocka_unit_test(test_series_cb_can_be_removed_between_feeds),
	};

	return cmocka_run_group_tests_name("proto_frame", tests, NULL, NULL);
}

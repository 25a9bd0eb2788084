/*
 * proto_snappy: the streaming windowed decoder gives the same bytes as libsnappy for libsnappy's
 * own output and for hand-made streams, whatever the feed boundaries; it keeps only its window
 * (offsets beyond it are -ERANGE), and rejects corrupt, truncated, oversized and overlong input.
 */
#include <errno.h>

#include "proto/snappy.h"
#include "proto_testutil.h"

#define GO_WINDOW 65536
#define SMALL_WINDOW 4096
#define NO_LIMIT ((uint64_t)1 << 32)

/* Tag kinds (low two bits) of snappy elements, for hand-made streams. */
#define TAG_LITERAL 0
#define TAG_COPY1 1
#define TAG_COPY2 2
#define TAG_COPY4 3

/* Collects decoded output; can fail on its <fail_on>-th call (1-based) with <fail_rc>. */
struct sink {
	struct tbuf got;  /* every byte received, in order */
	size_t calls;     /* callback invocations */
	size_t max_piece; /* largest piece received */
	size_t fail_on;   /* 0: never fail */
	int fail_rc;
};

static int sink_out(void *ctx, const uint8_t *data, size_t len)
{
	struct sink *k = ctx;

	assert_true(len > 0);
	k->calls++;
	if (len > k->max_piece)
		k->max_piece = len;
	if (k->fail_on && k->calls == k->fail_on)
		return k->fail_rc;
	tb_put(&k->got, data, len);
	return 0;
}

/* Small deterministic generator (xorshift64*), so failures reproduce. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dULL;
}

enum data_kind { DATA_RANDOM, DATA_REPETITIVE, DATA_PROTOBUF };

/* Append a protobuf-like TimeSeries (labels, then 32 samples) to <b>, as in a SAMPLES body. */
static void put_series(struct tbuf *b, uint64_t k, uint64_t *ts)
{
	struct tbuf series = { 0 };
	char v[64];
	double value = (double)(rnd() % 1000);

	tb_label(&series, 1, "__name__", "http_requests_total");
	snprintf(v, sizeof(v), "10.0.%u.%u:9100", (unsigned)(k / 250 % 256), (unsigned)(k % 250));
	tb_label(&series, 1, "instance", v);
	tb_label(&series, 1, "job", k % 3 ? "api" : "node");
	snprintf(v, sizeof(v), "pod-%016llx", (unsigned long long)(k * 0x9e3779b97f4a7c15ULL));
	tb_label(&series, 1, "pod", v);
	for (int i = 0; i < 32; i++) {
		struct tbuf sample = { 0 };

		value += (double)(rnd() % 50);
		tb_key(&sample, 1, 1);
		tb_put(&sample, &value, 8);
		*ts += 15000 + rnd() % 3;
		tb_vfield(&sample, 2, *ts);
		tb_msg(&series, 2, &sample);
	}
	tb_msg(b, 1, &series);
}

/* <n> bytes of the given kind. */
static struct tbuf make_data(enum data_kind kind, size_t n)
{
	static const char *const words[] = { "series", "sample", "label", "value", "timestamp", "query", "{", "}",
					     "=", ",", "\"", "job", "instance" };
	struct tbuf b = { 0 };
	uint64_t ts = 1795219200000ULL;

	while (b.len < n) {
		switch (kind) {
		case DATA_RANDOM: {
			uint64_t r = rnd();

			tb_put(&b, &r, sizeof(r));
			break;
		}
		case DATA_REPETITIVE: {
			const char *w = words[rnd() % (sizeof(words) / sizeof(words[0]))];

			tb_put(&b, w, strlen(w));
			if (rnd() % 16 == 0) /* runs of one byte: overlapping copies with offset 1 */
				for (uint64_t i = rnd() % 100; i > 0; i--)
					tb_byte(&b, 'x');
			break;
		}
		case DATA_PROTOBUF:
			put_series(&b, b.len / 97, &ts);
			break;
		}
	}
	b.len = n;
	return b;
}

/* Decode <n> compressed bytes fed in pieces of <piece> bytes (the last one shorter); returns the
 * first error of feed or finish and leaves the output in <k>. */
static int decode_pieces(const uint8_t *p, size_t n, size_t piece, size_t window, uint64_t max_len, struct sink *k,
			 char *err, size_t errlen)
{
	struct proto_snappy *s = proto_snappy_new(window, max_len);
	int rc = 0;

	assert_non_null(s);
	for (size_t at = 0; at < n && rc == 0; at += piece)
		rc = proto_snappy_feed(s, p + at, n - at < piece ? n - at : piece, sink_out, k, err, errlen);
	if (rc == 0)
		rc = proto_snappy_finish(s, err, errlen);
	proto_snappy_free(s);
	return rc;
}

/* Decode <comp> in pieces of <piece> bytes and assert the result equals <want>. */
static void assert_decodes_to(const struct tbuf *comp, size_t piece, size_t window, const struct tbuf *want)
{
	struct sink k = { 0 };
	char err[256] = "";
	int rc = decode_pieces(comp->data, comp->len, piece, window, NO_LIMIT, &k, err, sizeof(err));

	if (rc != 0)
		fail_msg("decode failed (%d): %s", rc, err);
	assert_int_equal(k.got.len, want->len);
	if (want->len)
		assert_memory_equal(k.got.data, want->data, want->len);
	tb_free(&k.got);
}

/* Like assert_decodes_to, with libsnappy's snappy_uncompress as the reference. */
static void assert_decodes_like_libsnappy(const struct tbuf *comp, size_t piece, size_t window)
{
	struct tbuf want = tb_unsnappy(comp);

	assert_decodes_to(comp, piece, window, &want);
	tb_free(&want);
}

/* Decode a whole stream; returns the error and keeps the message in <err>. */
static int decode_err(const struct tbuf *comp, size_t window, char *err, size_t errlen)
{
	struct sink k = { 0 };
	int rc = decode_pieces(comp->data, comp->len, comp->len ? comp->len : 1, window, NO_LIMIT, &k, err, errlen);

	tb_free(&k.got);
	return rc;
}

/* --- a tiny encoder for streams libsnappy would not write -------------------------------- */

enum copy_form { FORM_SHORTEST, FORM_COPY2, FORM_COPY4 };

/* Literal of <n> bytes; <extra> length bytes (1..4) force the long form, 0 picks the shortest. */
static void put_literal(struct tbuf *b, const uint8_t *p, size_t n, unsigned extra)
{
	if (n == 0)
		return;
	if (extra == 0 && n - 1 < 60) {
		tb_byte(b, (uint8_t)((n - 1) << 2 | TAG_LITERAL));
	} else {
		if (extra == 0)
			extra = n - 1 < 1u << 8 ? 1 : n - 1 < 1u << 16 ? 2 : n - 1 < 1u << 24 ? 3 : 4;
		tb_byte(b, (uint8_t)((59 + extra) << 2 | TAG_LITERAL));
		for (unsigned i = 0; i < extra; i++)
			tb_byte(b, (uint8_t)((n - 1) >> (8 * i)));
	}
	tb_put(b, p, n);
}

/* One copy element of <len> (1..64, 4..11 for COPY1) bytes at <off> with tag kind <tag>. */
static void put_copy_tag(struct tbuf *b, size_t off, size_t len, int tag)
{
	switch (tag) {
	case TAG_COPY1:
		tb_byte(b, (uint8_t)((off >> 8) << 5 | (len - 4) << 2 | TAG_COPY1));
		tb_byte(b, (uint8_t)off);
		break;
	case TAG_COPY2:
		tb_byte(b, (uint8_t)((len - 1) << 2 | TAG_COPY2));
		tb_byte(b, (uint8_t)off);
		tb_byte(b, (uint8_t)(off >> 8));
		break;
	default:
		tb_byte(b, (uint8_t)((len - 1) << 2 | TAG_COPY4));
		for (int i = 0; i < 4; i++)
			tb_byte(b, (uint8_t)(off >> (8 * i)));
		break;
	}
}

/* Copy of any length, in elements of at most 64 bytes, each in <form>. */
static void put_copy(struct tbuf *b, size_t off, size_t len, enum copy_form form)
{
	while (len > 0) {
		size_t n = len > 64 ? 64 : len;
		int tag = form == FORM_COPY4 ? TAG_COPY4 : TAG_COPY2;

		if (form == FORM_SHORTEST && n >= 4 && n <= 11 && off < 2048)
			tag = TAG_COPY1;
		else if (form == FORM_SHORTEST && off > 0xffff)
			tag = TAG_COPY4;
		put_copy_tag(b, off, n, tag);
		len -= n;
	}
}

/*
 * Greedy compressor with a 4-byte hash table whose matches reach back at most <max_off> bytes
 * (and may overlap themselves); copies are written in <form>. Not fast, just varied.
 */
static struct tbuf encode_windowed(const uint8_t *p, size_t n, size_t max_off, enum copy_form form)
{
	enum { HASH_BITS = 14 };
	size_t *table = calloc((size_t)1 << HASH_BITS, sizeof(*table)); /* position + 1, 0 = empty */
	struct tbuf out = { 0 };
	size_t lit = 0, i = 0;

	assert_non_null(table);
	tb_varint(&out, n);
	while (i + 4 <= n) {
		uint32_t v;
		size_t h, cand;

		memcpy(&v, p + i, 4);
		h = (size_t)((v * 0x1e35a7bdu) >> (32 - HASH_BITS));
		cand = table[h];
		table[h] = i + 1;
		if (cand && i - (cand - 1) <= max_off && memcmp(p + cand - 1, p + i, 4) == 0) {
			size_t m = cand - 1, len = 4;

			while (i + len < n && p[m + len] == p[i + len])
				len++;
			put_literal(&out, p + lit, i - lit, 0);
			put_copy(&out, i - m, len, form);
			i += len;
			lit = i;
		} else {
			i++;
		}
	}
	put_literal(&out, p + lit, n - lit, 0);
	free(table);
	return out;
}

/* Reference decoder for hand-made streams: byte-by-byte copy semantics. */
static void ref_copy(struct tbuf *b, size_t off, size_t len)
{
	for (size_t i = 0; i < len; i++)
		tb_byte(b, b->data[b->len - off]);
}

/* --- round trips ----------------------------------------------------------------------- */

/* Sizes around the literal short form (60/61) and libsnappy's 64 KiB blocks, up to bodies that
 * slide the 64 KiB window many times. */
static void test_round_trips_libsnappy_output_of_every_size_and_kind(void **state)
{
	static const size_t sizes[] = { 0, 1, 60, 61, 65535, 65536, 65537, 1 << 20, 5 << 20 };
	static const enum data_kind kinds[] = { DATA_RANDOM, DATA_REPETITIVE, DATA_PROTOBUF };

	(void)state;
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		for (size_t j = 0; j < sizeof(sizes) / sizeof(sizes[0]); j++) {
			struct tbuf raw = make_data(kinds[i], sizes[j]);
			struct tbuf comp = tb_snappy(raw.data, raw.len);

			/* Whole, and in pieces of a prime size so cuts land everywhere in elements. */
			assert_decodes_to(&comp, comp.len ? comp.len : 1, GO_WINDOW, &raw);
			assert_decodes_to(&comp, 4093, GO_WINDOW, &raw);
			tb_free(&comp);
			tb_free(&raw);
		}
	}
}

static void test_decodes_captured_prometheus_response(void **state)
{
	struct tbuf comp = tb_vector("samples_response.snappy");
	struct sink k = { 0 };
	struct proto_snappy *s = proto_snappy_new(GO_WINDOW, NO_LIMIT);
	char err[256] = "";

	(void)state;
	assert_non_null(s);
	assert_int_equal(proto_snappy_feed(s, comp.data, comp.len, sink_out, &k, err, sizeof(err)), 0);
	assert_int_equal(proto_snappy_declared(s), 13146); /* tests/vectors/README.md */
	assert_int_equal(proto_snappy_finish(s, err, sizeof(err)), 0);
	proto_snappy_free(s);
	tb_free(&k.got);
	assert_decodes_like_libsnappy(&comp, 1, GO_WINDOW);
	assert_decodes_like_libsnappy(&comp, 100, SMALL_WINDOW * 4);
	tb_free(&comp);
}

/* A feed may end inside the length varint, a tag, a literal's length bytes, an offset or a literal. */
static void test_same_output_at_every_split_point(void **state)
{
	struct tbuf raw = make_data(DATA_PROTOBUF, 3000);
	struct tbuf comp = tb_snappy(raw.data, raw.len);
	struct tbuf hand = encode_windowed(raw.data, raw.len, 2048, FORM_COPY4);

	(void)state;
	/* One cut anywhere, in libsnappy's stream and in one of 4-byte-offset copies. */
	for (int pass = 0; pass < 2; pass++) {
		const struct tbuf *c = pass ? &hand : &comp;

		for (size_t cut = 0; cut <= c->len; cut++) {
			struct proto_snappy *s = proto_snappy_new(GO_WINDOW, NO_LIMIT);
			struct sink k = { 0 };
			char err[256] = "";

			assert_non_null(s);
			assert_int_equal(proto_snappy_feed(s, c->data, cut, sink_out, &k, err, sizeof(err)), 0);
			assert_int_equal(proto_snappy_feed(s, c->data + cut, c->len - cut, sink_out, &k, err, sizeof(err)), 0);
			assert_int_equal(proto_snappy_finish(s, err, sizeof(err)), 0);
			assert_int_equal(k.got.len, raw.len);
			assert_memory_equal(k.got.data, raw.data, raw.len);
			proto_snappy_free(s);
			tb_free(&k.got);
		}
	}
	tb_free(&hand);
	tb_free(&comp);
	tb_free(&raw);
}

/* Decode <c> fed in two pieces cut at <cut>; returns the first error (message in <err>). */
static int decode_cut(const struct tbuf *c, size_t cut, size_t window, struct sink *k, char *err, size_t errlen)
{
	struct proto_snappy *s = proto_snappy_new(window, NO_LIMIT);
	int rc;

	assert_non_null(s);
	rc = proto_snappy_feed(s, c->data, cut, sink_out, k, err, errlen);
	if (rc == 0)
		rc = proto_snappy_feed(s, c->data + cut, c->len - cut, sink_out, k, err, errlen);
	if (rc == 0)
		rc = proto_snappy_finish(s, err, errlen);
	proto_snappy_free(s);
	return rc;
}

/* Every cut of <c> decodes to what libsnappy makes of it. */
static void assert_every_cut_like_libsnappy(const struct tbuf *c)
{
	struct tbuf want = tb_unsnappy(c);

	for (size_t cut = 0; cut <= c->len; cut++) {
		struct sink k = { 0 };
		char err[256] = "";
		int rc = decode_cut(c, cut, GO_WINDOW, &k, err, sizeof(err));

		if (rc != 0)
			fail_msg("cut at %zu of %zu: %d %s", cut, c->len, rc, err);
		assert_int_equal(k.got.len, want.len);
		if (want.len)
			assert_memory_equal(k.got.data, want.data, want.len);
		tb_free(&k.got);
	}
	tb_free(&want);
}

/*
 * The hot loop decodes without bounds checks away from both ends of the input and of the output
 * and hands the rest to checked code: whatever the cut, and so wherever those zones end, every
 * kind of element (short and long literals, the three copy kinds, overlapping copies of small
 * offsets) decodes as libsnappy decodes it, and so do bodies small enough to lie wholly near
 * both ends.
 */
static void test_same_output_as_libsnappy_at_every_split_point_of_varied_bodies(void **state)
{
	struct tbuf raw[3], comp[5];

	(void)state;
	raw[0] = make_data(DATA_PROTOBUF, 2564); /* the size of a 10-series SAMPLES response */
	raw[1] = make_data(DATA_REPETITIVE, 1500);
	raw[2] = make_data(DATA_RANDOM, 300);
	comp[0] = tb_snappy(raw[0].data, raw[0].len);
	comp[1] = tb_snappy(raw[1].data, raw[1].len);
	comp[2] = tb_snappy(raw[2].data, raw[2].len);
	comp[3] = encode_windowed(raw[0].data, raw[0].len, 1024, FORM_SHORTEST); /* 1-byte offsets */
	comp[4] = encode_windowed(raw[1].data, raw[1].len, 2048, FORM_COPY4);
	for (size_t i = 0; i < 5; i++) {
		assert_every_cut_like_libsnappy(&comp[i]);
		tb_free(&comp[i]);
	}
	for (size_t i = 0; i < 3; i++)
		tb_free(&raw[i]);
	for (size_t n = 1; n <= 120; n++) {
		struct tbuf small = make_data(n % 2 ? DATA_REPETITIVE : DATA_PROTOBUF, n);
		struct tbuf c = tb_snappy(small.data, small.len);
		struct tbuf hand = encode_windowed(small.data, small.len, 64, FORM_SHORTEST);

		assert_every_cut_like_libsnappy(&c);
		assert_every_cut_like_libsnappy(&hand);
		tb_free(&hand);
		tb_free(&c);
		tb_free(&small);
	}
}

/*
 * A corrupt element gives the same code and the same message (offsets count from the start of
 * the body) at every cut, whether the hot loop meets it far from both ends or the checked code
 * near one of them.
 */
static void test_same_error_and_message_at_every_split_point(void **state)
{
	static const struct {
		int tag;          /* kind of the bad element (TAG_LITERAL: a literal) */
		size_t off, len;  /* its offset and length */
		size_t declared;  /* decoded length in the header */
		size_t window;
		int rc;
		const char *needle;
	} cases[] = {
		{ TAG_COPY2, 0, 10, 4000, GO_WINDOW, -EBADMSG, "offset 0" },
		{ TAG_COPY1, 0, 10, 4000, GO_WINDOW, -EBADMSG, "offset 0" },
		{ TAG_COPY2, 60000, 10, 4000, GO_WINDOW, -EBADMSG, "before the start" },
		{ TAG_COPY4, 401, 10, 4000, GO_WINDOW, -EBADMSG, "before the start" },
		{ TAG_COPY4, 300, 10, 4000, 256, -ERANGE, "window" },
		{ TAG_COPY2, 100, 20, 410, GO_WINDOW, -EBADMSG, "runs past the declared length" },
		{ TAG_LITERAL, 0, 700, 1000, GO_WINDOW, -EBADMSG, "runs past the declared length" },
	};
	struct tbuf data = make_data(DATA_RANDOM, 1000);

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		for (int tail = 0; tail < 2; tail++) {
			struct tbuf c = { 0 };
			struct sink k0 = { 0 };
			char want[256] = "";
			int rc0;

			/* 200 literal bytes and 200 copied, then the bad element, then (or not) 150 more. */
			tb_varint(&c, cases[i].declared);
			put_literal(&c, data.data, 200, 0);
			for (int j = 0; j < 4; j++)
				put_copy_tag(&c, 100, 50, TAG_COPY2);
			if (cases[i].tag == TAG_LITERAL)
				put_literal(&c, data.data, cases[i].len, 0);
			else
				put_copy_tag(&c, cases[i].off, cases[i].len, cases[i].tag);
			if (tail)
				put_literal(&c, data.data + 200, 150, 0);
			rc0 = decode_cut(&c, c.len, cases[i].window, &k0, want, sizeof(want));
			assert_int_equal(rc0, cases[i].rc);
			if (!strstr(want, cases[i].needle))
				fail_msg("case %zu: \"%s\" does not say \"%s\"", i, want, cases[i].needle);
			tb_free(&k0.got);
			for (size_t cut = 0; cut <= c.len; cut++) {
				struct sink k = { 0 };
				char err[256] = "";

				assert_int_equal(decode_cut(&c, cut, cases[i].window, &k, err, sizeof(err)), rc0);
				assert_string_equal(err, want);
				tb_free(&k.got);
			}
			tb_free(&c);
		}
	}
	tb_free(&data);
}

static void test_same_output_at_every_pair_of_split_points(void **state)
{
	struct tbuf raw = make_data(DATA_REPETITIVE, 400);
	struct tbuf comp = tb_snappy(raw.data, raw.len);

	(void)state;
	for (size_t a = 0; a <= comp.len; a++) {
		for (size_t b = a; b <= comp.len; b++) {
			struct proto_snappy *s = proto_snappy_new(GO_WINDOW, NO_LIMIT);
			struct sink k = { 0 };

			assert_non_null(s);
			assert_int_equal(proto_snappy_feed(s, comp.data, a, sink_out, &k, NULL, 0), 0);
			assert_int_equal(proto_snappy_feed(s, comp.data + a, b - a, sink_out, &k, NULL, 0), 0);
			assert_int_equal(proto_snappy_feed(s, comp.data + b, comp.len - b, sink_out, &k, NULL, 0), 0);
			assert_int_equal(proto_snappy_finish(s, NULL, 0), 0);
			assert_int_equal(k.got.len, raw.len);
			assert_memory_equal(k.got.data, raw.data, raw.len);
			proto_snappy_free(s);
			tb_free(&k.got);
		}
	}
	tb_free(&comp);
	tb_free(&raw);
}

static void test_same_output_fed_one_byte_at_a_time(void **state)
{
	struct tbuf raw = make_data(DATA_PROTOBUF, 300 * 1024);
	struct tbuf comp = tb_snappy(raw.data, raw.len);
	struct tbuf hand = encode_windowed(raw.data, raw.len, SMALL_WINDOW, FORM_SHORTEST);

	(void)state;
	assert_decodes_to(&comp, 1, GO_WINDOW, &raw);
	/* A 4 KiB window slides dozens of times here, with headers and literals cut at every byte. */
	assert_decodes_to(&hand, 1, SMALL_WINDOW, &raw);
	tb_free(&hand);
	tb_free(&comp);
	tb_free(&raw);
}

/* --- the window ------------------------------------------------------------------------ */

/*
 * What makes the 64 KiB window enough for libsnappy's output too: it compresses in 64 KiB
 * fragments, each with its own hash table, so no copy reaches into an earlier fragment even when
 * the data repeats from far back (shared/protocol.md §9 says the same of Go's encoder).
 */
static void test_libsnappy_keeps_back_references_within_64k_blocks(void **state)
{
	/* A 100 KiB random block repeated: every repeat tempts a reference 100 KiB back. */
	struct tbuf block = make_data(DATA_RANDOM, 100 * 1024);
	struct tbuf raw = { 0 };
	struct tbuf comp, far;
	char err[256] = "";

	(void)state;
	for (int i = 0; i < 40; i++)
		tb_put(&raw, block.data, block.len);
	comp = tb_snappy(raw.data, raw.len);
	assert_decodes_like_libsnappy(&comp, comp.len, GO_WINDOW);
	assert_decodes_to(&comp, 65536, GO_WINDOW, &raw);
	/* The test could see a long reference: a stream that uses them fails with -ERANGE. */
	far = encode_windowed(raw.data, raw.len, 200 * 1024, FORM_SHORTEST);
	assert_true(far.len < comp.len / 5); /* 4-byte-offset copies of the whole repeat */
	assert_int_equal(decode_err(&far, GO_WINDOW, err, sizeof(err)), -ERANGE);
	assert_non_null(strstr(err, "window"));
	assert_decodes_to(&far, 4093, 200 * 1024, &raw);
	tb_free(&far);
	tb_free(&comp);
	tb_free(&raw);
	tb_free(&block);
}

static void test_small_windows_slide_over_long_output(void **state)
{
	static const size_t windows[] = { SMALL_WINDOW, 5000, 1, 0 };
	struct tbuf raw = make_data(DATA_PROTOBUF, 3 << 20);

	(void)state;
	for (size_t i = 0; i < sizeof(windows) / sizeof(windows[0]); i++) {
		struct tbuf comp = encode_windowed(raw.data, raw.len, windows[i], FORM_SHORTEST);

		assert_decodes_like_libsnappy(&comp, comp.len, windows[i]);
		assert_decodes_to(&comp, 777, windows[i], &raw);
		tb_free(&comp);
	}
	tb_free(&raw);
}

static void test_offset_of_exactly_the_window_is_kept_one_more_is_erange(void **state)
{
	struct tbuf block = make_data(DATA_RANDOM, SMALL_WINDOW);
	struct tbuf raw = { 0 };
	struct tbuf comp;
	char err[256] = "";

	(void)state;
	/* Period = window: every copy after the first block reaches back exactly <window> bytes. */
	for (int i = 0; i < 100; i++)
		tb_put(&raw, block.data, block.len);
	comp = encode_windowed(raw.data, raw.len, SMALL_WINDOW, FORM_COPY2);
	assert_decodes_to(&comp, comp.len, SMALL_WINDOW, &raw);
	assert_decodes_to(&comp, 3, SMALL_WINDOW, &raw);
	assert_int_equal(decode_err(&comp, SMALL_WINDOW - 1, err, sizeof(err)), -ERANGE);
	tb_free(&comp);
	tb_free(&block);
	tb_free(&raw);
}

static void test_offset_beyond_window_is_erange(void **state)
{
	struct tbuf lit = make_data(DATA_RANDOM, 2 * SMALL_WINDOW);
	struct tbuf comp = { 0 };
	char err[256] = "";

	(void)state;
	tb_varint(&comp, 2 * SMALL_WINDOW + 8);
	put_literal(&comp, lit.data, lit.len, 0);
	put_copy(&comp, SMALL_WINDOW + 1, 8, FORM_SHORTEST);
	assert_int_equal(decode_err(&comp, SMALL_WINDOW, err, sizeof(err)), -ERANGE);
	assert_non_null(strstr(err, "4096-byte window"));
	/* The same stream is fine with a window that holds the offset. */
	assert_decodes_like_libsnappy(&comp, 5, 2 * SMALL_WINDOW);
	tb_free(&comp);
	tb_free(&lit);
}

/* --- element forms --------------------------------------------------------------------- */

static void test_literal_length_forms_60_to_63(void **state)
{
	struct tbuf data = make_data(DATA_RANDOM, 70000);

	(void)state;
	/* A one-byte literal in the short form and in each long form (60..63: 1..4 length bytes),
	 * then long literals (60 bytes short, 61 and 256 in form 60, 70000 in forms 61..63). */
	for (unsigned extra = 0; extra <= 4; extra++) {
		static const size_t lens[] = { 1, 60, 61, 256, 257, 70000 };

		for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
			struct tbuf comp = { 0 };
			struct tbuf want = { 0 };

			if (extra == 0 ? lens[i] > 60 : extra < 4 && lens[i] - 1 >= (size_t)1 << (8 * extra))
				continue; /* does not fit that form */
			tb_varint(&comp, lens[i]);
			put_literal(&comp, data.data, lens[i], extra);
			assert_int_equal(comp.data[comp.len - lens[i] - extra - 1] >> 2,
					 extra ? 59 + extra : lens[i] - 1);
			tb_put(&want, data.data, lens[i]);
			assert_decodes_to(&comp, 1, GO_WINDOW, &want);
			assert_decodes_like_libsnappy(&comp, comp.len, GO_WINDOW);
			tb_free(&want);
			tb_free(&comp);
		}
	}
	tb_free(&data);
}

static void test_copies_of_each_tag_kind(void **state)
{
	struct tbuf lit = make_data(DATA_RANDOM, 70000);
	struct tbuf comp = { 0 };
	struct tbuf want = { 0 };

	(void)state;
	tb_varint(&comp, 70000 + 11 + 4 + 64 + 1 + 64 + 10);
	put_literal(&comp, lit.data, lit.len, 0);
	tb_put(&want, lit.data, lit.len);
	put_copy_tag(&comp, 2047, 11, TAG_COPY1); /* highest 1-byte-offset copy: offset bits 8..10 in the tag */
	ref_copy(&want, 2047, 11);
	put_copy_tag(&comp, 1, 4, TAG_COPY1);
	ref_copy(&want, 1, 4);
	put_copy_tag(&comp, 65535, 64, TAG_COPY2);
	ref_copy(&want, 65535, 64);
	put_copy_tag(&comp, 300, 1, TAG_COPY2);
	ref_copy(&want, 300, 1);
	put_copy_tag(&comp, 69999, 64, TAG_COPY4);
	ref_copy(&want, 69999, 64);
	put_copy_tag(&comp, 7, 10, TAG_COPY4);
	ref_copy(&want, 7, 10);
	assert_decodes_to(&comp, comp.len, 1 << 20, &want);
	assert_decodes_to(&comp, 1, 1 << 20, &want);
	assert_decodes_like_libsnappy(&comp, 2, 1 << 20);
	tb_free(&want);
	tb_free(&comp);
	tb_free(&lit);
}

static void test_overlapping_copies_repeat_byte_by_byte(void **state)
{
	static const uint8_t ab[] = { 'a', 'b' };
	struct tbuf comp = { 0 };
	struct tbuf want = { 0 };
	struct tbuf seed = make_data(DATA_RANDOM, 40);

	(void)state;
	/* Offset 1, length 10: run-length of the last byte. */
	tb_varint(&comp, 12);
	put_literal(&comp, ab, 2, 0);
	put_copy_tag(&comp, 1, 10, TAG_COPY1);
	tb_put(&want, "abbbbbbbbbbb", 12);
	assert_decodes_to(&comp, comp.len, GO_WINDOW, &want);
	tb_free(&comp);
	tb_free(&want);

	/* Every offset 1..40 with the longest length, against a byte-by-byte reference. */
	tb_varint(&comp, 40 + 40 * 64);
	put_literal(&comp, seed.data, seed.len, 0);
	tb_put(&want, seed.data, seed.len);
	for (size_t off = 1; off <= 40; off++) {
		put_copy_tag(&comp, off, 64, TAG_COPY2);
		ref_copy(&want, off, 64);
	}
	assert_decodes_to(&comp, comp.len, GO_WINDOW, &want);
	assert_decodes_to(&comp, 1, GO_WINDOW, &want);
	assert_decodes_like_libsnappy(&comp, comp.len, GO_WINDOW);
	tb_free(&comp);
	tb_free(&want);
	tb_free(&seed);
}

static void test_empty_body_decodes_to_nothing(void **state)
{
	static const uint8_t zero[] = { 0x00 };
	struct proto_snappy *s = proto_snappy_new(GO_WINDOW, NO_LIMIT);
	struct sink k = { 0 };

	(void)state;
	assert_non_null(s);
	assert_int_equal(proto_snappy_feed(s, NULL, 0, sink_out, &k, NULL, 0), 0);
	assert_int_equal(proto_snappy_feed(s, zero, 1, sink_out, &k, NULL, 0), 0);
	assert_int_equal(proto_snappy_finish(s, NULL, 0), 0);
	assert_int_equal(k.calls, 0);
	proto_snappy_free(s);
	proto_snappy_free(NULL);
}

/* --- errors ---------------------------------------------------------------------------- */

static void test_rejects_copy_offset_zero(void **state)
{
	static const int tags[] = { TAG_COPY1, TAG_COPY2, TAG_COPY4 };

	(void)state;
	for (size_t i = 0; i < sizeof(tags) / sizeof(tags[0]); i++) {
		struct tbuf comp = { 0 };
		char err[256] = "";

		tb_varint(&comp, 8);
		put_literal(&comp, (const uint8_t *)"abcd", 4, 0);
		put_copy_tag(&comp, 0, 4, tags[i]);
		assert_int_equal(decode_err(&comp, GO_WINDOW, err, sizeof(err)), -EBADMSG);
		assert_non_null(strstr(err, "offset 0 at input byte 6"));
		tb_free(&comp);
	}
}

static void test_rejects_copy_offset_before_the_start(void **state)
{
	struct tbuf comp = { 0 };
	char err[256] = "";

	(void)state;
	/* Nothing decoded yet. */
	tb_varint(&comp, 4);
	put_copy_tag(&comp, 1, 4, TAG_COPY1);
	assert_int_equal(decode_err(&comp, GO_WINDOW, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "before the start"));
	tb_free(&comp);
	/* One byte too far back, and it stays -EBADMSG (not -ERANGE) with a small window. */
	tb_varint(&comp, 5 + 4);
	put_literal(&comp, (const uint8_t *)"hello", 5, 0);
	put_copy_tag(&comp, 6, 4, TAG_COPY2);
	assert_int_equal(decode_err(&comp, GO_WINDOW, err, sizeof(err)), -EBADMSG);
	assert_int_equal(decode_err(&comp, 2, err, sizeof(err)), -EBADMSG);
	tb_free(&comp);
}

/* A body cut anywhere is only detectable at the end: feed succeeds, finish says where. */
static void test_truncated_input_fails_at_finish(void **state)
{
	struct tbuf raw = make_data(DATA_PROTOBUF, 2000);
	struct tbuf comp = tb_snappy(raw.data, raw.len);

	(void)state;
	for (size_t cut = 0; cut < comp.len; cut++) {
		struct proto_snappy *s = proto_snappy_new(GO_WINDOW, NO_LIMIT);
		struct sink k = { 0 };
		char err[256] = "";

		assert_non_null(s);
		assert_int_equal(proto_snappy_feed(s, comp.data, cut, sink_out, &k, err, sizeof(err)), 0);
		assert_int_equal(proto_snappy_finish(s, err, sizeof(err)), -EBADMSG);
		assert_non_null(strstr(err, "input ends"));
		/* What was decoded before the cut is a prefix of the body. */
		assert_true(k.got.len < raw.len);
		if (k.got.len)
			assert_memory_equal(k.got.data, raw.data, k.got.len);
		proto_snappy_free(s);
		tb_free(&k.got);
	}
	tb_free(&comp);
	tb_free(&raw);
}

static void test_declared_length_above_max_len_is_e2big_at_the_header(void **state)
{
	static const uint8_t header[] = { 0xff, 0xff, 0xff, 0xff, 0x0f }; /* 2^32 - 1 */
	struct proto_snappy *s = proto_snappy_new(GO_WINDOW, 1 << 20);
	struct sink k = { 0 };
	char err[256] = "";

	(void)state;
	assert_non_null(s);
	/* Split inside the varint: nothing known yet after the first bytes. */
	assert_int_equal(proto_snappy_feed(s, header, 3, sink_out, &k, err, sizeof(err)), 0);
	assert_int_equal(proto_snappy_declared(s), 0);
	assert_int_equal(proto_snappy_feed(s, header + 3, 2, sink_out, &k, err, sizeof(err)), -E2BIG);
	assert_non_null(strstr(err, "4294967295 exceeds the limit 1048576"));
	assert_int_equal(proto_snappy_declared(s), 0xffffffffu);
	assert_int_equal(proto_snappy_finish(s, err, sizeof(err)), -E2BIG);
	proto_snappy_free(s);

	/* The limit itself is accepted. */
	{
		struct tbuf raw = make_data(DATA_REPETITIVE, 1000);
		struct tbuf comp = tb_snappy(raw.data, raw.len);

		assert_int_equal(decode_pieces(comp.data, comp.len, 10, GO_WINDOW, 1000, &k, err, sizeof(err)), 0);
		assert_int_equal(decode_pieces(comp.data, comp.len, 10, GO_WINDOW, 999, &k, err, sizeof(err)), -E2BIG);
		tb_free(&comp);
		tb_free(&raw);
		tb_free(&k.got);
	}
}

static void test_rejects_bad_length_varint(void **state)
{
	static const uint8_t too_long[] = { 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01 };
	static const uint8_t above_format[] = { 0x80, 0x80, 0x80, 0x80, 0x10 }; /* 2^32 */
	struct tbuf comp = { 0 };
	char err[256] = "";

	(void)state;
	tb_put(&comp, too_long, sizeof(too_long));
	assert_int_equal(decode_err(&comp, GO_WINDOW, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "varint"));
	tb_free(&comp);
	tb_put(&comp, above_format, sizeof(above_format));
	{
		struct sink k = { 0 };

		assert_int_equal(decode_pieces(comp.data, comp.len, 1, GO_WINDOW, UINT64_MAX, &k, err, sizeof(err)),
				 -EBADMSG);
		assert_non_null(strstr(err, "2^32 - 1"));
	}
	tb_free(&comp);
}

static void test_rejects_output_beyond_the_declared_length(void **state)
{
	struct tbuf comp = { 0 };
	char err[256] = "";

	(void)state;
	/* A literal longer than declared. */
	tb_varint(&comp, 5);
	put_literal(&comp, (const uint8_t *)"abcdef", 6, 0);
	assert_int_equal(decode_err(&comp, GO_WINDOW, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "runs past the declared length 5"));
	tb_free(&comp);
	/* A copy running past it. */
	tb_varint(&comp, 8);
	put_literal(&comp, (const uint8_t *)"abcd", 4, 0);
	put_copy_tag(&comp, 4, 5, TAG_COPY1);
	assert_int_equal(decode_err(&comp, GO_WINDOW, err, sizeof(err)), -EBADMSG);
	tb_free(&comp);
	/* An element after the body is complete. */
	tb_varint(&comp, 4);
	put_literal(&comp, (const uint8_t *)"abcd", 4, 0);
	put_copy_tag(&comp, 1, 1, TAG_COPY2);
	assert_int_equal(decode_err(&comp, GO_WINDOW, err, sizeof(err)), -EBADMSG);
	tb_free(&comp);
	/* Past it in a body that slides (declared beyond window + the 64 KiB chunk). */
	{
		struct tbuf raw = make_data(DATA_PROTOBUF, 200000);
		struct tbuf body = encode_windowed(raw.data, raw.len, SMALL_WINDOW, FORM_SHORTEST);

		tb_varint(&comp, raw.len - 1);
		tb_put(&comp, body.data + 3, body.len - 3); /* 200000 takes 3 varint bytes */
		assert_int_equal(decode_err(&comp, SMALL_WINDOW, err, sizeof(err)), -EBADMSG);
		tb_free(&body);
		tb_free(&raw);
		tb_free(&comp);
	}
}

static void test_missing_output_fails_at_finish(void **state)
{
	struct tbuf comp = { 0 };
	char err[256] = "";

	(void)state;
	tb_varint(&comp, 10);
	put_literal(&comp, (const uint8_t *)"abcd", 4, 0);
	put_copy_tag(&comp, 4, 4, TAG_COPY1);
	assert_int_equal(decode_err(&comp, GO_WINDOW, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "after 8 of 10 declared bytes"));
	tb_free(&comp);
}

/* The consumer (the scanner, in the proxy) stops the decode by returning its error. */
static void test_callback_error_stops_the_feed_and_sticks(void **state)
{
	struct tbuf raw = make_data(DATA_PROTOBUF, 1 << 20);
	struct tbuf comp = tb_snappy(raw.data, raw.len);
	struct proto_snappy *s = proto_snappy_new(GO_WINDOW, NO_LIMIT);
	struct sink k = { .fail_on = 3, .fail_rc = -ECANCELED };
	char err[256] = "";

	(void)state;
	assert_non_null(s);
	assert_int_equal(proto_snappy_feed(s, comp.data, comp.len, sink_out, &k, err, sizeof(err)), -ECANCELED);
	assert_int_equal(k.calls, 3);
	assert_non_null(strstr(err, "consumer"));
	/* Two pieces reached the consumer, each a prefix, none larger than window + 64 KiB. */
	assert_true(k.got.len > 0 && k.got.len < raw.len);
	assert_memory_equal(k.got.data, raw.data, k.got.len);
	assert_true(k.max_piece <= GO_WINDOW + 65536);
	/* Stays failed: the consumer is not called again. */
	assert_int_equal(proto_snappy_feed(s, comp.data, comp.len, sink_out, &k, err, sizeof(err)), -ECANCELED);
	assert_int_equal(proto_snappy_finish(s, err, sizeof(err)), -ECANCELED);
	assert_int_equal(k.calls, 3);
	proto_snappy_free(s);
	tb_free(&k.got);
	tb_free(&comp);
	tb_free(&raw);
}

static void test_stays_failed_after_corrupt_input(void **state)
{
	static const uint8_t bad[] = { 0x08, 0x01, 0x00 }; /* declared 8, copy with offset 0 */
	struct tbuf raw = make_data(DATA_REPETITIVE, 100);
	struct tbuf good = tb_snappy(raw.data, raw.len);
	struct proto_snappy *s = proto_snappy_new(GO_WINDOW, NO_LIMIT);
	struct sink k = { 0 };
	char err[256] = "";

	(void)state;
	assert_non_null(s);
	assert_int_equal(proto_snappy_feed(s, bad, sizeof(bad), sink_out, &k, err, sizeof(err)), -EBADMSG);
	assert_int_equal(proto_snappy_feed(s, good.data, good.len, sink_out, &k, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "already failed"));
	assert_int_equal(proto_snappy_finish(s, err, sizeof(err)), -EBADMSG);
	assert_int_equal(k.calls, 0);
	proto_snappy_free(s);
	tb_free(&good);
	tb_free(&raw);
}

static void test_agrees_with_libsnappy_on_corrupted_streams(void **state)
{
	struct tbuf raw = make_data(DATA_PROTOBUF, 4000);
	struct tbuf comp = tb_snappy(raw.data, raw.len);

	(void)state;
	/*
	 * Differential check: flip a few bytes and decode with a window larger than any body, so
	 * -ERANGE cannot happen. libsnappy accepts exactly the valid streams, and so must we (with
	 * the same bytes), whatever the damage and the feed boundaries.
	 */
	for (int round = 0; round < 3000; round++) {
		struct tbuf bad = { 0 };
		struct sink k = { 0 };
		size_t want_len;
		int rc, valid;

		tb_put(&bad, comp.data, comp.len);
		for (uint64_t n = 1 + rnd() % 3; n > 0; n--)
			bad.data[rnd() % bad.len] ^= (uint8_t)(1 + rnd() % 255);
		valid = snappy_validate_compressed_buffer((const char *)bad.data, bad.len) == SNAPPY_OK &&
			snappy_uncompressed_length((const char *)bad.data, bad.len, &want_len) == SNAPPY_OK;
		rc = decode_pieces(bad.data, bad.len, 1 + rnd() % 64, 1 << 20, NO_LIMIT, &k, NULL, 0);
		if (valid != (rc == 0))
			fail_msg("round %d: libsnappy says %s, proto_snappy returned %d", round, valid ? "valid" : "invalid",
				 rc);
		if (valid) {
			struct tbuf want = tb_unsnappy(&bad);

			assert_int_equal(k.got.len, want.len);
			assert_memory_equal(k.got.data, want.data, want.len);
			tb_free(&want);
		} else {
			assert_int_equal(rc, -EBADMSG);
		}
		tb_free(&k.got);
		tb_free(&bad);
	}
	tb_free(&comp);
	tb_free(&raw);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trips_libsnappy_output_of_every_size_and_kind),
		cmocka_unit_test(test_decodes_captured_prometheus_response),
		cmocka_unit_test(test_same_output_at_every_split_point),
		cmocka_unit_test(test_same_output_as_libsnappy_at_every_split_point_of_varied_bodies),
		cmocka_unit_test(test_same_error_and_message_at_every_split_point),
		cmocka_unit_test(test_same_output_at_every_pair_of_split_points),
		cmocka_unit_test(test_same_output_fed_one_byte_at_a_time),
		cmocka_unit_test(test_libsnappy_keeps_back_references_within_64k_blocks),
		cmocka_unit_test(test_small_windows_slide_over_long_output),
		cmocka_unit_test(test_offset_of_exactly_the_window_is_kept_one_more_is_erange),
		cmocka_unit_test(test_offset_beyond_window_is_erange),
		cmocka_unit_test(test_literal_length_forms_60_to_63),
		cmocka_unit_test(test_copies_of_each_tag_kind),
		cmocka_unit_test(test_overlapping_copies_repeat_byte_by_byte),
		cmocka_unit_test(test_empty_body_decodes_to_nothing),
		cmocka_unit_test(test_rejects_copy_offset_zero),
		cmocka_unit_test(test_rejects_copy_offset_before_the_start),
		cmocka_unit_test(test_truncated_input_fails_at_finish),
		cmocka_unit_test(test_declared_length_above_max_len_is_e2big_at_the_header),
		cmocka_unit_test(test_rejects_bad_length_varint),
		cmocka_unit_test(test_rejects_output_beyond_the_declared_length),
		cmocka_unit_test(test_missing_output_fails_at_finish),
		cmocka_unit_test(test_callback_error_stops_the_feed_and_sticks),
		cmocka_unit_test(test_stays_failed_after_corrupt_input),
		cmocka_unit_test(test_agrees_with_libsnappy_on_corrupted_streams),
	};

	return cmocka_run_group_tests_name("proto_snappy", tests, NULL, NULL);
}

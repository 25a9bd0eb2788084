/*
 * proto_wire: the walker's fast path (whole fields inside a piece) and its byte-exact state
 * machine agree. Each input is walked whole, split in two at every offset and byte by byte (which
 * takes the state machine nearly everywhere); every walk must produce the same callbacks, the same
 * verdict, the same error line and the same offset.
 */
#include <errno.h>
#include <inttypes.h>

#include "proto/wire.h"
#include "proto_testutil.h"

/* Field numbers the recording consumer treats specially (see rec_on_field). */
#define RUN_FIELD 6u   /* answered SKIP_RUN when runs are on: counted, not logged */
#define FAIL_FIELD 13u /* on_field fails with -EPROTO when asked to */
#define FAIL_END 14u   /* on_end fails with -EPROTO when asked to (14 % 3 == 2: a BYTES field) */

/* What a walk does besides its callbacks. */
struct rec_opts {
	uint64_t limit;  /* walker limit; UINT64_MAX: unbounded */
	int runs;        /* answer SKIP_RUN for RUN_FIELD at depth 1 */
	int no_on_run;   /* ... to a walker without on_run (SKIP_RUN is then SKIP) */
	int fail_field;  /* fail on_field at FAIL_FIELD */
	int fail_end;    /* fail on_end at FAIL_END */
};

/* Recording consumer: one line per callback, so that two walks compare as strings. */
struct rec {
	const struct rec_opts *o;
	struct proto_walk *w;     /* (ref) the walker, for the offset during callbacks */
	const uint8_t *input;     /* (ref) all of the input, to check proto_walk_field.data */
	struct tbuf log;          /* the transcript, NUL-free text */
	uint64_t bytes_of;        /* offset of the field whose bytes the last line holds; UINT64_MAX: none */
	uint64_t runs;            /* RUN_FIELD fields at depth 1, by on_field or on_run */
	uint64_t run_asks;        /* ... of them asked about (answered SKIP_RUN) */
	uint64_t in_place;        /* fields handed over with data set */
};

static void rec_printf(struct rec *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rec_printf(struct rec *r, const char *fmt, ...)
{
	char line[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	assert_true(n > 0 && (size_t)n < sizeof(line));
	tb_put(&r->log, line, (size_t)n);
	r->bytes_of = UINT64_MAX;
}

/* The answer depends on the field alone, so every walk of an input is asked the same things. */
static int rec_on_field(void *ctx, const struct proto_walk_field *f, char *err, size_t errlen)
{
	struct rec *r = ctx;
	int action = (int)(f->number % 3); /* SKIP, DESCEND, BYTES; non-LEN fields get them too */

	if (f->data) {
		/* In place: the contents follow the header, at the walker's offset. */
		assert_int_equal(f->type, PROTO_WT_LEN);
		assert_memory_equal(f->data, r->input + proto_walk_offset(r->w), f->value);
		r->in_place++;
	}
	if (r->o->runs && f->depth == 1 && f->number == RUN_FIELD && f->type == PROTO_WT_LEN) {
		r->runs++;
		r->run_asks++;
		return PROTO_WALK_SKIP_RUN;
	}
	if (f->depth == 1 && f->number == RUN_FIELD && f->type == PROTO_WT_LEN)
		r->runs++;
	if (r->o->fail_field && f->number == FAIL_FIELD) {
		snprintf(err, errlen, "consumer refuses field %" PRIu32 " at byte %" PRIu64, f->number, f->offset);
		return -EPROTO;
	}
	if (!(r->o->runs && f->number == RUN_FIELD))
		rec_printf(r, "F d%u n%" PRIu32 " t%d v%" PRIu64 " @%" PRIu64 " -> %d\n", f->depth, f->number,
			   (int)f->type, f->value, f->offset, action);
	return action;
}

/* Consecutive pieces of one field's contents go on one line, so splits do not show. */
static void rec_on_bytes(void *ctx, const struct proto_walk_field *f, const uint8_t *data, size_t len)
{
	struct rec *r = ctx;

	assert_true(len > 0);
	if (r->bytes_of != f->offset) {
		rec_printf(r, "B n%" PRIu32 " @%" PRIu64 ":", f->number, f->offset);
		r->bytes_of = f->offset;
	}
	for (size_t i = 0; i < len; i++) {
		char hex[4];

		snprintf(hex, sizeof(hex), " %02x", data[i]);
		tb_put(&r->log, hex, 3);
	}
}

static int rec_on_end(void *ctx, const struct proto_walk_field *f, char *err, size_t errlen)
{
	struct rec *r = ctx;

	rec_printf(r, "\nE d%u n%" PRIu32 " @%" PRIu64 "\n", f->depth, f->number, f->offset);
	if (r->o->fail_end && f->number == FAIL_END) {
		snprintf(err, errlen, "consumer refuses the end of field %" PRIu32, f->number);
		return -EPROTO;
	}
	return 0;
}

static void rec_on_run(void *ctx, const struct proto_walk_field *f, uint64_t n)
{
	struct rec *r = ctx;

	assert_int_equal(f->number, RUN_FIELD);
	assert_true(n >= 1);
	r->runs += n;
}

static const struct proto_walk_ops rec_ops = {
	.on_field = rec_on_field,
	.on_bytes = rec_on_bytes,
	.on_end = rec_on_end,
	.on_run = rec_on_run,
};

static const struct proto_walk_ops rec_ops_without_runs = {
	.on_field = rec_on_field,
	.on_bytes = rec_on_bytes,
	.on_end = rec_on_end,
};

/* Everything one walk produced. */
struct outcome {
	struct tbuf log; /* transcript, then the verdict line */
	uint64_t runs;
	uint64_t run_asks;
	uint64_t in_place;
};

/* Walk <n> bytes at <p> cut at <cuts> (ascending), then finish; the first error ends the walk. */
static struct outcome walk_pieces(const uint8_t *p, size_t n, const size_t *cuts, size_t ncuts,
				  const struct rec_opts *o)
{
	struct proto_walk w;
	struct rec r = { .o = o, .w = &w, .input = p, .bytes_of = UINT64_MAX };
	struct outcome out;
	char err[256] = "";
	size_t at = 0;
	int rc = 0;

	proto_walk_init(&w, o->no_on_run ? &rec_ops_without_runs : &rec_ops, &r, o->limit);
	for (size_t i = 0; i <= ncuts && rc == 0; i++) {
		size_t to = i < ncuts ? cuts[i] : n;

		rc = proto_walk_feed(&w, p + at, to - at, err, sizeof(err));
		at = to;
	}
	if (rc == 0)
		rc = proto_walk_finish(&w, err, sizeof(err));
	rec_printf(&r, "\n= %d \"%s\" at %" PRIu64 "\n", rc, rc ? err : "", proto_walk_offset(&w));
	out.log = r.log;
	out.runs = r.runs;
	out.run_asks = r.run_asks;
	out.in_place = r.in_place;
	return out;
}

static void expect_same(const struct outcome *got, const struct outcome *want, const char *how, size_t cut)
{
	if (got->log.len != want->log.len || memcmp(got->log.data, want->log.data, got->log.len) != 0)
		fail_msg("%s (cut %zu):\n%.*s\nbyte by byte:\n%.*s", how, cut, (int)got->log.len, (const char *)got->log.data,
			 (int)want->log.len, (const char *)want->log.data);
	assert_int_equal(got->runs, want->runs);
}

/*
 * Walk <n> bytes whole, cut in two at every offset, cut in three around every offset (when short),
 * and byte by byte; all must agree. Returns the byte-by-byte outcome (caller frees its log).
 */
static struct outcome check_all_splits(const uint8_t *p, size_t n, const struct rec_opts *o)
{
	size_t *cuts = malloc((n ? n : 1) * sizeof(*cuts));
	struct outcome ref, got;

	assert_non_null(cuts);
	for (size_t i = 0; i < n; i++)
		cuts[i] = i + 1;
	ref = walk_pieces(p, n, cuts, n ? n - 1 : 0, o);

	got = walk_pieces(p, n, NULL, 0, o);
	expect_same(&got, &ref, "whole", 0);
	tb_free(&got.log);
	for (size_t cut = 0; cut <= n; cut++) {
		got = walk_pieces(p, n, &cut, 1, o);
		expect_same(&got, &ref, "two pieces", cut);
		tb_free(&got.log);
	}
	for (size_t cut = 0; n <= 400 && cut + 2 <= n; cut++) {
		size_t three[] = { cut, cut + 2 };

		got = walk_pieces(p, n, three, 2, o);
		expect_same(&got, &ref, "a 2-byte piece", cut);
		tb_free(&got.log);
	}
	free(cuts);
	return ref;
}

/* check_all_splits, then require the verdict line to be <verdict> (a prefix of it). */
static void check_verdict(const uint8_t *p, size_t n, const struct rec_opts *o, const char *verdict)
{
	struct outcome ref = check_all_splits(p, n, o);
	const char *line = NULL;

	tb_byte(&ref.log, '\0');
	for (const char *s = (const char *)ref.log.data; (s = strstr(s, "\n= ")) != NULL; s++)
		line = s + 1;
	assert_non_null(line);
	if (strncmp(line, verdict, strlen(verdict)) != 0)
		fail_msg("verdict %s\nwant %s", line, verdict);
	tb_free(&ref.log);
}

/* Wrap <inner> as a LEN field <number>, <depth> times. */
static void put_nested(struct tbuf *b, uint32_t number, int depth, const struct tbuf *inner)
{
	struct tbuf cur = { 0 };

	tb_put(&cur, inner->data, inner->len);
	for (int i = 0; i < depth; i++) {
		struct tbuf outer = { 0 };

		tb_msg(&outer, number, &cur);
		cur = outer;
	}
	tb_put(b, cur.data, cur.len);
	tb_free(&cur);
}

/* A message using every wire type, long keys and lengths, padded varints and runs of RUN_FIELD. */
static struct tbuf rich_message(void)
{
	struct tbuf msg = { 0 }, body = { 0 }, small = { 0 }, deep = { 0 };
	static const uint8_t fixed[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	uint8_t big[200];

	memset(big, 'x', sizeof(big));
	for (int i = 0; i < 5; i++)
		tb_lfield(&body, RUN_FIELD, "abc", 3);
	tb_str(&body, 2, "hello");                 /* BYTES */
	tb_lfield(&body, 2, "", 0);                 /* empty BYTES */
	tb_vfield(&body, 4, 300);                   /* two-byte value */
	tb_vfield(&body, 4, UINT64_MAX);            /* ten-byte value */
	tb_key(&body, 5, PROTO_WT_I64);
	tb_put(&body, fixed, 8);
	tb_key(&body, 7, PROTO_WT_I32);             /* answered DESCEND, skipped as non-LEN */
	tb_put(&body, fixed, 4);
	tb_lfield(&body, 999, big, sizeof(big));    /* two-byte key and length, skipped */
	tb_lfield(&body, 1, "", 0);                 /* empty message */
	tb_vfield(&small, 3, 1);
	tb_lfield(&small, 14, "end", 3);
	put_nested(&deep, 1, 6, &small);            /* levels down to depth 7 */
	tb_put(&body, deep.data, deep.len);
	tb_lfield(&body, RUN_FIELD, "r", 1);
	tb_lfield(&body, RUN_FIELD, big, 130);      /* two-byte length ends a run */
	tb_lfield(&body, RUN_FIELD, "s", 1);
	tb_lfield(&body, RUN_FIELD, "", 0);
	tb_put(&body, "\x88\x80\x80\x80\x80\x80\x80\x80\x80\x00\x07", 11); /* field 1 VARINT 7, key padded to 10 bytes */
	tb_put(&body, "\x8a\x00\x02\x18\x05", 5);   /* field 1 LEN, key padded to 2 bytes: { 3: 5 } */
	tb_vfield(&body, 536870911, 1);             /* largest field number */
	tb_vfield(&body, 13, 2);
	for (int i = 0; i < 3; i++)
		tb_lfield(&body, RUN_FIELD, "abc", 3); /* a run that ends the message */
	tb_msg(&msg, 1, &body);
	tb_str(&msg, 3, "xyz");
	tb_msg(&msg, 11, &small);                   /* BYTES holding a message */
	tb_free(&deep);
	return msg;
}

static void test_valid_message_walks_the_same_however_split(void **state)
{
	struct tbuf msg = rich_message();
	struct rec_opts o = { .limit = UINT64_MAX };
	struct outcome whole;

	(void)state;
	check_verdict(msg.data, msg.len, &o, "= 0 \"\"");
	o.limit = msg.len;
	check_verdict(msg.data, msg.len, &o, "= 0 \"\"");
	/* The fast path did run: fields were handed over in place. */
	whole = walk_pieces(msg.data, msg.len, NULL, 0, &o);
	assert_true(whole.in_place > 10);
	tb_free(&whole.log);
	tb_free(&msg);
}

static void test_skip_run_counts_every_field_once_however_split(void **state)
{
	struct tbuf msg = rich_message();
	struct rec_opts asked = { .limit = UINT64_MAX }, runs = { .limit = UINT64_MAX, .runs = 1 };
	struct rec_opts no_on_run = { .limit = UINT64_MAX, .runs = 1, .no_on_run = 1 };
	struct outcome a, b, c;

	(void)state;
	/* Asked one by one, and run through: the same count (12) and the same other callbacks. */
	a = check_all_splits(msg.data, msg.len, &runs);
	b = walk_pieces(msg.data, msg.len, NULL, 0, &asked);
	assert_int_equal(b.runs, 12);
	assert_int_equal(a.runs, b.runs);
	/* Without on_run, every one of them is asked about. */
	c = walk_pieces(msg.data, msg.len, NULL, 0, &no_on_run);
	assert_int_equal(c.runs, 12);
	expect_same(&c, &a, "without on_run", 0);
	tb_free(&a.log);
	tb_free(&b.log);
	tb_free(&c.log);
	tb_free(&msg);
}

static void test_skip_run_stops_at_a_corrupt_field_with_the_same_count(void **state)
{
	struct tbuf body = { 0 }, msg = { 0 };
	struct rec_opts runs = { .limit = UINT64_MAX, .runs = 1 };
	struct outcome ref, got;

	(void)state;
	for (int i = 0; i < 4; i++)
		tb_lfield(&body, RUN_FIELD, "ab", 2);
	tb_key(&body, RUN_FIELD, PROTO_WT_LEN); /* declares 9 bytes with 2 left */
	tb_put(&body, "\x09" "ab", 3);
	tb_msg(&msg, 1, &body);
	ref = check_all_splits(msg.data, msg.len, &runs);
	/* The four good ones are counted before the error, then nothing more. */
	assert_int_equal(ref.runs, 4);
	got = walk_pieces(msg.data, msg.len, NULL, 0, &(struct rec_opts){ .limit = UINT64_MAX });
	assert_int_equal(got.runs, 4);
	tb_free(&got.log);
	tb_free(&ref.log);
	tb_free(&msg);
}

/*
 * Runs go through two-byte lengths too (stream chunks are 150-250 bytes), a padded one included,
 * and stop at a three-byte length, which is asked about and starts a new run. A two-byte length
 * running past the parent ends the run where the state machine fails, with the same count.
 */
static void test_skip_run_takes_two_byte_lengths_however_split(void **state)
{
	struct tbuf body = { 0 }, msg = { 0 }, bad = { 0 };
	struct rec_opts runs = { .limit = UINT64_MAX, .runs = 1 };
	static uint8_t big[16384];
	struct outcome ref, whole;

	(void)state;
	memset(big, 'c', sizeof(big));
	for (int i = 0; i < 6; i++)
		tb_lfield(&body, RUN_FIELD, big, 200);
	tb_put(&body, "\x32\x85\x00" "abcde", 8); /* field 6 LEN, length 5 padded to two bytes */
	tb_lfield(&body, RUN_FIELD, big, 127);
	tb_lfield(&body, RUN_FIELD, big, 128);
	tb_lfield(&body, RUN_FIELD, big, 16384); /* three-byte length: asked about */
	tb_lfield(&body, RUN_FIELD, big, 300);
	tb_lfield(&body, RUN_FIELD, big, 1);
	tb_msg(&msg, 1, &body);
	ref = check_all_splits(msg.data, msg.len, &runs);
	assert_int_equal(ref.runs, 12);
	whole = walk_pieces(msg.data, msg.len, NULL, 0, &runs);
	assert_int_equal(whole.runs, 12);
	assert_int_equal(whole.run_asks, 2); /* the first field, and the one with a 3-byte length */
	tb_free(&whole.log);
	tb_free(&ref.log);

	for (int i = 0; i < 3; i++)
		tb_lfield(&bad, RUN_FIELD, big, 200);
	tb_put(&bad, "\x32\xc8\x01" "ab", 5); /* declares 200 bytes with 2 left */
	tb_free(&msg);
	tb_msg(&msg, 1, &bad);
	ref = check_all_splits(msg.data, msg.len, &runs);
	assert_int_equal(ref.runs, 3);
	tb_free(&ref.log);
	tb_free(&body);
	tb_free(&bad);
	tb_free(&msg);
}

static void test_every_truncation_fails_the_same_however_split(void **state)
{
	struct tbuf msg = rich_message();
	struct rec_opts o = { .limit = UINT64_MAX };

	(void)state;
	for (size_t len = 1; len < msg.len; len++) {
		struct outcome ref, got;
		size_t cuts[] = { len / 3, len / 2 };

		/* Byte by byte, whole, and in three pieces. */
		ref = walk_pieces(msg.data, len, NULL, 0, &o);
		got = walk_pieces(msg.data, len, cuts, 2, &o);
		expect_same(&got, &ref, "truncated, three pieces", len);
		tb_free(&got.log);
		{
			size_t *ones = malloc(len * sizeof(*ones));

			assert_non_null(ones);
			for (size_t i = 0; i + 1 < len; i++)
				ones[i] = i + 1;
			got = walk_pieces(msg.data, len, ones, len - 1, &o);
			free(ones);
		}
		expect_same(&got, &ref, "truncated, byte by byte", len);
		tb_free(&got.log);
		tb_free(&ref.log);
	}
	tb_free(&msg);
}

/* <bad> inside a field 1 message after a good field: the error must not depend on the split. */
static void check_corrupt(const void *bad, size_t n, const char *verdict)
{
	struct tbuf body = { 0 }, msg = { 0 };
	struct rec_opts o = { .limit = UINT64_MAX };

	tb_str(&body, 2, "ok");
	tb_put(&body, bad, n);
	tb_msg(&msg, 1, &body);
	check_verdict(msg.data, msg.len, &o, verdict);
	/* And at the top level, as the very first bytes. */
	check_verdict(bad, n, &o, "= -74 ");
	tb_free(&msg);
}

static void test_rejects_field_number_zero_however_split(void **state)
{
	(void)state;
	check_corrupt("\x02\x00", 2, "= -74 \"invalid field number 0 at byte 6\"");
	/* Above 2^29 - 1, in a five-byte key. */
	check_corrupt("\x80\x80\x80\x80\x10\x00", 6, "= -74 \"invalid field number 536870912 at byte 6\"");
}

static void test_rejects_groups_and_reserved_wire_types_however_split(void **state)
{
	(void)state;
	check_corrupt("\x0b\x00", 2, "= -74 \"invalid wire type 3 for field 1 at byte 6\"");
	check_corrupt("\x0c\x00", 2, "= -74 \"invalid wire type 4 for field 1 at byte 6\"");
	check_corrupt("\x0e\x00", 2, "= -74 \"invalid wire type 6 for field 1 at byte 6\"");
	check_corrupt("\x0f\x00", 2, "= -74 \"invalid wire type 7 for field 1 at byte 6\"");
}

static void test_varints_of_ten_bytes_pass_and_eleven_fail_however_split(void **state)
{
	struct tbuf msg = { 0 };
	struct rec_opts o = { .limit = UINT64_MAX };

	(void)state;
	/* Ten bytes: the largest value, and a key padded to ten bytes. */
	tb_put(&msg, "\x20\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11);
	tb_put(&msg, "\xa0\x80\x80\x80\x80\x80\x80\x80\x80\x00\x05", 11);
	check_verdict(msg.data, msg.len, &o, "= 0 \"\"");
	tb_free(&msg);
	check_corrupt("\x20\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12,
		      "= -74 \"bad varint in varint value at byte 6 (longer than 10 bytes or above 64 bits)\"");
	check_corrupt("\x20\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02", 11, "= -74 \"bad varint in varint value at byte 6");
	check_corrupt("\xa0\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00\x05", 12, "= -74 \"bad varint in field key at byte 6");
	check_corrupt("\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00", 12, "= -74 \"bad varint in length prefix at byte 6");
}

static void test_rejects_fields_running_past_their_parent_however_split(void **state)
{
	(void)state;
	/* A LEN child longer than what its parent has left. */
	check_corrupt("\x0a\x09" "ab", 4, "= -74 \"field 1 at byte 6 declares 9 bytes but its enclosing message has 2 left\"");
	/* A fixed-size field, and a varint value, running past the parent. */
	check_corrupt("\x0a\x03\x29\x00\x00", 5,
		      "= -74 \"fixed-size field 5 at byte 8 runs past the end of its enclosing message\"");
	check_corrupt("\x0a\x02\x20\x80\x01", 5, "= -74 \"field 4 at byte 8 runs past the end of its enclosing message\"");
	check_corrupt("\x0a\x01\x22\x00", 4, "= -74 \"field 4 at byte 8 runs past the end of its enclosing message\"");
}

static void test_bounded_walker_refuses_data_past_its_limit_however_split(void **state)
{
	struct tbuf msg = rich_message();
	struct rec_opts o = { .limit = msg.len };

	(void)state;
	tb_vfield(&msg, 4, 1);
	check_verdict(msg.data, msg.len, &o, "= -74 \"data continues past the end of the message at byte");
	/* And a field that straddles the limit. */
	o.limit = msg.len - 1;
	check_verdict(msg.data, msg.len, &o, "= -74 \"field 4 at byte");
	tb_free(&msg);
}

static void test_rejects_nesting_deeper_than_the_stack_however_split(void **state)
{
	struct tbuf leaf = { 0 }, msg = { 0 };
	struct rec_opts o = { .limit = UINT64_MAX };

	(void)state;
	tb_vfield(&leaf, 3, 1);
	put_nested(&msg, 1, PROTO_WALK_MAX_DEPTH, &leaf);
	check_verdict(msg.data, msg.len, &o, "= 0");
	tb_free(&msg);
	put_nested(&msg, 1, PROTO_WALK_MAX_DEPTH + 1, &leaf);
	check_verdict(msg.data, msg.len, &o, "= -74 \"messages nested deeper than 8 at byte 16\"");
	tb_free(&msg);
	/* A BYTES field needs a level too. */
	tb_str(&leaf, 2, "z");
	put_nested(&msg, 1, PROTO_WALK_MAX_DEPTH, &leaf);
	check_verdict(msg.data, msg.len, &o, "= -74 \"messages nested deeper than 8 at byte");
	tb_free(&msg);
	tb_free(&leaf);
}

static void test_consumer_errors_stop_the_walk_the_same_however_split(void **state)
{
	struct tbuf msg = rich_message();
	struct rec_opts o = { .limit = UINT64_MAX, .fail_field = 1 };

	(void)state;
	check_verdict(msg.data, msg.len, &o, "= -71 \"consumer refuses field 13 at byte");
	o.fail_field = 0;
	o.fail_end = 1;
	check_verdict(msg.data, msg.len, &o, "= -71 \"consumer refuses the end of field 14\"");
	tb_free(&msg);
}

static void test_empty_input_and_empty_messages(void **state)
{
	struct rec_opts o = { .limit = UINT64_MAX };

	(void)state;
	check_verdict((const uint8_t *)"", 0, &o, "= 0 \"\" at 0");
	check_verdict((const uint8_t *)"\x0a\x00\x0a\x00\x12\x00", 6, &o, "= 0 \"\" at 6");
	o.limit = 5;
	check_verdict((const uint8_t *)"\x0a\x00\x0a\x00", 4, &o, "= -74 \"input ends at byte 4 inside a 5-byte message\"");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_message_walks_the_same_however_split),
		cmocka_unit_test(test_skip_run_counts_every_field_once_however_split),
		cmocka_unit_test(test_skip_run_stops_at_a_corrupt_field_with_the_same_count),
		cmocka_unit_test(test_skip_run_takes_two_byte_lengths_however_split),
		cmocka_unit_test(test_every_truncation_fails_the_same_however_split),
		cmocka_unit_test(test_rejects_field_number_zero_however_split),
		cmocka_unit_test(test_rejects_groups_and_reserved_wire_types_however_split),
		cmocka_unit_test(test_varints_of_ten_bytes_pass_and_eleven_fail_however_split),
		cmocka_unit_test(test_rejects_fields_running_past_their_parent_however_split),
		cmocka_unit_test(test_bounded_walker_refuses_data_past_its_limit_however_split),
		cmocka_unit_test(test_rejects_nesting_deeper_than_the_stack_however_split),
		cmocka_unit_test(test_consumer_errors_stop_the_walk_the_same_however_split),
		cmocka_unit_test(test_empty_input_and_empty_messages),
	};

	return cmocka_run_group_tests_name("proto_wire", tests, NULL, NULL);
}

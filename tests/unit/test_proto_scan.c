/*
 * proto_scan: counts of series, samples, histograms and bytes in a SAMPLES ReadResponse, fed in
 * arbitrary pieces, and rejection of corrupt wire data; series label callbacks.
 */
#include <errno.h>

#include "proto/scan.h"
#include "proto_testutil.h"

#define MAXQ 4

/* Vector figures (tests/vectors/README.md). */
#define VEC_SERIES 3
#define VEC_SAMPLES 720
#define VEC_RESULT_BYTES 13143

/* The vector's series as tb_record_series writes them (wire order: sorted by label name). */
#define VEC_TRANSCRIPT                                                    \
	"q0{__name__=promguard_vec_requests_total,code=200,job=vec}\n" \
	"q0{__name__=promguard_vec_requests_total,code=404,job=vec}\n" \
	"q0{__name__=promguard_vec_requests_total,code=500,job=vec}\n"

/* Scan <n> bytes cut into pieces at <cuts> (ascending offsets); returns the finish status. */
static int scan_pieces(const uint8_t *p, size_t n, const size_t *cuts, size_t ncuts, struct proto_scan_counts *out,
		       size_t *nres, char *err, size_t errlen)
{
	struct proto_scan *s = proto_scan_new(MAXQ);
	const struct proto_scan_counts *res;
	size_t at = 0;
	int rc = 0;

	assert_non_null(s);
	for (size_t i = 0; i <= ncuts && rc == 0; i++) {
		size_t to = i < ncuts ? cuts[i] : n;

		rc = proto_scan_feed(s, p + at, to - at, err, errlen);
		at = to;
	}
	if (rc == 0)
		rc = proto_scan_finish(s, err, errlen);
	res = proto_scan_results(s, nres);
	memcpy(out, res, *nres * sizeof(*res));
	proto_scan_free(s);
	return rc;
}

static struct tbuf vector_response(void)
{
	struct tbuf body = tb_vector("samples_response.snappy");
	struct tbuf raw = tb_unsnappy(&body);

	tb_free(&body);
	return raw;
}

static void test_counts_real_prometheus_response(void **state)
{
	struct tbuf raw = vector_response();
	struct proto_scan_counts out[MAXQ];
	size_t n;
	char err[256];

	(void)state;
	assert_int_equal(proto_scan_samples(raw.data, raw.len, out, MAXQ, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 1);
	assert_int_equal(out[0].series, VEC_SERIES);
	assert_int_equal(out[0].samples, VEC_SAMPLES);
	assert_int_equal(out[0].histograms, 0);
	assert_int_equal(out[0].bytes, VEC_RESULT_BYTES);
	tb_free(&raw);
}

static void test_same_counts_at_every_split_point(void **state)
{
	struct tbuf raw = vector_response();
	struct proto_scan_counts out[MAXQ];
	size_t n;
	char err[256];

	(void)state;
	for (size_t cut = 0; cut <= raw.len; cut++) {
		assert_int_equal(scan_pieces(raw.data, raw.len, &cut, 1, out, &n, err, sizeof(err)), 0);
		assert_int_equal(n, 1);
		assert_int_equal(out[0].series, VEC_SERIES);
		assert_int_equal(out[0].samples, VEC_SAMPLES);
		assert_int_equal(out[0].bytes, VEC_RESULT_BYTES);
	}
	tb_free(&raw);
}

static void test_same_counts_fed_one_byte_at_a_time(void **state)
{
	struct tbuf raw = vector_response();
	struct proto_scan *s = proto_scan_new(MAXQ);
	const struct proto_scan_counts *res;
	size_t n;
	char err[256];

	(void)state;
	for (size_t i = 0; i < raw.len; i++)
		assert_int_equal(proto_scan_feed(s, raw.data + i, 1, err, sizeof(err)), 0);
	assert_int_equal(proto_scan_finish(s, err, sizeof(err)), 0);
	res = proto_scan_results(s, &n);
	assert_int_equal(n, 1);
	assert_int_equal(res[0].series, VEC_SERIES);
	assert_int_equal(res[0].samples, VEC_SAMPLES);
	proto_scan_free(s);
	tb_free(&raw);
}

/* A TimeSeries with <samples> samples and <hists> histograms, plus M3's extra enum fields. */
static void put_series(struct tbuf *qr, int samples, int hists, int m3_fields)
{
	struct tbuf ts = { 0 };
	static const uint8_t sample[] = { 0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 0x01 }; /* 1.0 @ 1 */

	tb_label(&ts, 1, "__name__", "up");
	for (int i = 0; i < samples; i++)
		tb_lfield(&ts, 2, sample, sizeof(sample));
	for (int i = 0; i < hists; i++)
		tb_lfield(&ts, 4, "\x08\x05", 2); /* count_int = 5 */
	if (m3_fields) {
		tb_vfield(&ts, 101, 1);
		tb_vfield(&ts, 102, 2);
		tb_vfield(&ts, 1001, 1);
	}
	tb_msg(qr, 1, &ts);
}

static void test_skips_unknown_fields_at_every_level(void **state)
{
	struct tbuf resp = { 0 }, qr = { 0 };
	struct proto_scan_counts out[MAXQ];
	size_t n, len;
	char err[256];
	static const uint8_t fixed64[8], fixed32[4];

	(void)state;
	put_series(&qr, 2, 0, 1);
	tb_key(&qr, 7, 1); /* unknown fixed64 in QueryResult */
	tb_put(&qr, fixed64, 8);
	put_series(&qr, 1, 0, 1);
	tb_str(&resp, 9, "unknown"); /* unknown LEN in ReadResponse */
	len = qr.len;
	tb_msg(&resp, 1, &qr);
	tb_key(&resp, 10, 5); /* unknown fixed32 */
	tb_put(&resp, fixed32, 4);
	assert_int_equal(proto_scan_samples(resp.data, resp.len, out, MAXQ, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 1);
	assert_int_equal(out[0].series, 2);
	assert_int_equal(out[0].samples, 3);
	assert_int_equal(out[0].bytes, len);
	tb_free(&resp);
}

static void test_counts_histograms_and_results_per_query(void **state)
{
	struct tbuf resp = { 0 }, q0 = { 0 }, q1 = { 0 }, q2 = { 0 };
	struct proto_scan_counts out[MAXQ];
	size_t n;
	char err[256];

	(void)state;
	put_series(&q0, 0, 3, 0);
	put_series(&q1, 5, 0, 0);
	put_series(&q1, 5, 1, 0);
	tb_msg(&resp, 1, &q0);
	tb_msg(&resp, 1, &q1);
	tb_msg(&resp, 1, &q2); /* an empty QueryResult still counts as a result */
	assert_int_equal(proto_scan_samples(resp.data, resp.len, out, MAXQ, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 3);
	assert_int_equal(out[0].series, 1);
	assert_int_equal(out[0].histograms, 3);
	assert_int_equal(out[1].series, 2);
	assert_int_equal(out[1].samples, 10);
	assert_int_equal(out[1].histograms, 1);
	assert_int_equal(out[2].series, 0);
	assert_int_equal(out[2].bytes, 0);
	tb_free(&resp);
}

static void test_empty_body_has_no_results(void **state)
{
	struct proto_scan_counts out[MAXQ];
	size_t n = 9;
	char err[256];

	(void)state;
	assert_int_equal(proto_scan_samples((const uint8_t *)"", 0, out, MAXQ, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 0);
}

/* Expect <body> to be rejected with <code> and an error mentioning <needle>. */
static void expect_rejected(const uint8_t *body, size_t len, int code, const char *needle)
{
	struct proto_scan_counts out[MAXQ];
	size_t n;
	char err[256] = "";

	assert_int_equal(proto_scan_samples(body, len, out, MAXQ, &n, err, sizeof(err)), code);
	if (!strstr(err, needle))
		fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
}

static void test_rejects_varint_longer_than_ten_bytes(void **state)
{
	static const uint8_t body[] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01 };

	(void)state;
	expect_rejected(body, sizeof(body), -EBADMSG, "bad varint");
}

static void test_rejects_group_and_reserved_wire_types(void **state)
{
	(void)state;
	for (unsigned wt = 3; wt <= 7; wt++) {
		uint8_t body[] = { (uint8_t)(1 << 3 | wt), 0, 0, 0, 0 };

		if (wt == 5)
			continue; /* I32 is valid */
		expect_rejected(body, sizeof(body), -EBADMSG, "invalid wire type");
	}
}

static void test_rejects_child_longer_than_parent(void **state)
{
	/* results(len 4) { timeseries(len 9) ... } */
	static const uint8_t body[] = { 0x0a, 0x04, 0x0a, 0x09, 0x0a, 0x00 };

	(void)state;
	expect_rejected(body, sizeof(body), -EBADMSG, "enclosing message");
}

static void test_rejects_known_field_with_wrong_wire_type(void **state)
{
	static const uint8_t body[] = { 0x08, 0x01 }; /* results as a varint */

	(void)state;
	expect_rejected(body, sizeof(body), -EBADMSG, "wire type 0, want 2");
}

static void test_rejects_field_number_zero(void **state)
{
	static const uint8_t body[] = { 0x02, 0x00 };

	(void)state;
	expect_rejected(body, sizeof(body), -EBADMSG, "invalid field number 0");
}

static void test_rejects_more_results_than_max_queries(void **state)
{
	struct tbuf resp = { 0 };

	(void)state;
	for (int i = 0; i <= MAXQ; i++)
		tb_lfield(&resp, 1, "", 0);
	expect_rejected(resp.data, resp.len, -E2BIG, "more than 4 results");
	tb_free(&resp);
}

static void test_rejects_body_truncated_at_any_point(void **state)
{
	struct tbuf raw = vector_response();

	(void)state;
	/* Every proper prefix ends inside the single QueryResult. */
	for (size_t len = 1; len < raw.len; len++)
		expect_rejected(raw.data, len, -EBADMSG, "truncated");
	tb_free(&raw);
}

static void test_stays_failed_after_an_error(void **state)
{
	static const uint8_t bad[] = { 0x0b };
	struct proto_scan *s = proto_scan_new(MAXQ);
	char err[256];

	(void)state;
	assert_int_equal(proto_scan_feed(s, bad, sizeof(bad), err, sizeof(err)), -EBADMSG);
	assert_int_equal(proto_scan_feed(s, (const uint8_t *)"", 0, err, sizeof(err)), -EBADMSG);
	assert_int_equal(proto_scan_finish(s, err, sizeof(err)), -EBADMSG);
	proto_scan_free(s);
}

/*
 * Scan <n> bytes cut at <cuts> with a series callback recording into <transcript>; returns the
 * finish status and stores the skipped count in *<skipped>.
 */
static int scan_labels(const uint8_t *p, size_t n, const size_t *cuts, size_t ncuts, struct tbuf *transcript,
		       uint64_t *skipped)
{
	struct proto_scan *s = proto_scan_new(MAXQ);
	size_t at = 0;
	char err[256];
	int rc = 0;

	assert_non_null(s);
	proto_scan_set_series_cb(s, tb_record_series, transcript);
	for (size_t i = 0; i <= ncuts && rc == 0; i++) {
		size_t to = i < ncuts ? cuts[i] : n;

		rc = proto_scan_feed(s, p + at, to - at, err, sizeof(err));
		at = to;
	}
	if (rc == 0)
		rc = proto_scan_finish(s, err, sizeof(err));
	*skipped = proto_scan_skipped(s);
	proto_scan_free(s);
	return rc;
}

static void test_series_cb_reports_labels_of_real_response(void **state)
{
	struct tbuf raw = vector_response(), got = { 0 };
	uint64_t skipped;

	(void)state;
	assert_int_equal(scan_labels(raw.data, raw.len, NULL, 0, &got, &skipped), 0);
	tb_assert_transcript(&got, VEC_TRANSCRIPT);
	assert_int_equal(skipped, 0);
	tb_free(&got);
	tb_free(&raw);
}

static void test_series_cb_same_at_every_split_point_and_byte_by_byte(void **state)
{
	struct tbuf raw = vector_response();
	size_t *cuts = malloc(raw.len * sizeof(*cuts));
	uint64_t skipped;

	(void)state;
	assert_non_null(cuts);
	for (size_t cut = 0; cut <= raw.len; cut++) {
		struct tbuf got = { 0 };

		assert_int_equal(scan_labels(raw.data, raw.len, &cut, 1, &got, &skipped), 0);
		tb_assert_transcript(&got, VEC_TRANSCRIPT);
		tb_free(&got);
	}
	for (size_t i = 0; i < raw.len; i++)
		cuts[i] = i + 1;
	{
		struct tbuf got = { 0 };

		assert_int_equal(scan_labels(raw.data, raw.len, cuts, raw.len, &got, &skipped), 0);
		tb_assert_transcript(&got, VEC_TRANSCRIPT);
		tb_free(&got);
	}
	free(cuts);
	tb_free(&raw);
}

/* Append a TimeSeries with the given encoded Label messages (raw contents) and one sample. */
static void put_raw_series(struct tbuf *qr, const char *const *labels, size_t n)
{
	struct tbuf ts = { 0 };
	static const uint8_t sample[] = { 0x10, 0x01 }; /* timestamp 1 */

	for (size_t i = 0; i < n; i++)
		tb_str(&ts, 1, labels[i]);
	tb_lfield(&ts, 2, sample, sizeof(sample));
	tb_msg(qr, 1, &ts);
}

static void test_series_cb_gives_query_index_and_protobuf_label_semantics(void **state)
{
	/* value before name, a repeated name (last wins), an unknown field, missing value, empty Label */
	static const char *const odd[] = { "\x12\x01" "v" "\x0a\x01" "n", "\x0a\x01" "x" "\x0a\x01" "y" "\x18\x07",
					   "\x0a\x01" "z", "" };
	static const char *const none[] = { NULL };
	struct tbuf resp = { 0 }, q0 = { 0 }, q1 = { 0 }, q2 = { 0 }, got = { 0 };
	uint64_t skipped;

	(void)state;
	put_series(&q0, 1, 0, 1); /* {__name__="up"} with M3's extra fields */
	put_raw_series(&q2, odd, 4);
	put_raw_series(&q2, none, 0);
	tb_msg(&resp, 1, &q0);
	tb_msg(&resp, 1, &q1); /* no series: no callback, but the index moves on */
	tb_msg(&resp, 1, &q2);
	assert_int_equal(scan_labels(resp.data, resp.len, NULL, 0, &got, &skipped), 0);
	tb_assert_transcript(&got, "q0{__name__=up}\n"
				   "q2{n=v,y=,z=,=}\n"
				   "q2{}\n");
	assert_int_equal(skipped, 0); /* a series without labels is not a skipped one */
	tb_free(&got);
	tb_free(&resp);
}

/* Append the characters of <text> (no NUL). */
static void put_text(struct tbuf *b, const char *text)
{
	tb_put(b, text, strlen(text));
}

/* Append a TimeSeries {__name__=<name>, big=<value_len> x 'v'} to <qr>. */
static void put_big_series(struct tbuf *qr, const char *name, size_t value_len)
{
	struct tbuf ts = { 0 };
	char *value = malloc(value_len + 1);

	assert_non_null(value);
	memset(value, 'v', value_len);
	value[value_len] = '\0';
	tb_label(&ts, 1, "__name__", name);
	tb_label(&ts, 1, "big", value);
	tb_msg(qr, 1, &ts);
	free(value);
}

static void test_series_cb_skips_and_counts_oversized_label_sets(void **state)
{
	struct tbuf resp = { 0 }, qr = { 0 }, want = { 0 };
	/* Names, values and one descriptor per label must fit: 16000 bytes do, 16384 cannot. */
	size_t fits = PROTO_SERIES_LABELS_MAX - 384;
	size_t cuts[] = { 0, 0 };
	uint64_t skipped;

	(void)state;
	put_big_series(&qr, "a", 3);
	put_big_series(&qr, "b", PROTO_SERIES_LABELS_MAX);
	put_big_series(&qr, "c", fits);
	put_big_series(&qr, "d", 3 * PROTO_SERIES_LABELS_MAX);
	put_big_series(&qr, "e", 1);
	tb_msg(&resp, 1, &qr);

	put_text(&want, "q0{__name__=a,big=vvv}\nq0{}\nq0{__name__=c,big=");
	for (size_t i = 0; i < fits; i++)
		tb_byte(&want, 'v');
	put_text(&want, "}\nq0{}\nq0{__name__=e,big=v}\n");
	tb_byte(&want, '\0');
	/* Whole, and cut inside both a kept and a skipped value. */
	cuts[0] = resp.len / 4;
	cuts[1] = resp.len / 2;
	for (size_t ncuts = 0; ncuts <= 2; ncuts += 2) {
		struct tbuf got = { 0 };

		assert_int_equal(scan_labels(resp.data, resp.len, cuts, ncuts, &got, &skipped), 0);
		tb_assert_transcript(&got, (const char *)want.data);
		assert_int_equal(skipped, 2);
		tb_free(&got);
	}
	tb_free(&want);
	tb_free(&resp);
}

static void test_series_cb_many_small_labels_count_against_the_buffer(void **state)
{
	/* 600 labels of 4 bytes each: 2.4 KB of strings, but 600 descriptors do not fit in 16 KB. */
	struct tbuf resp = { 0 }, qr = { 0 }, ts = { 0 }, got = { 0 };
	uint64_t skipped;

	(void)state;
	for (int i = 0; i < 600; i++) {
		char name[16];

		snprintf(name, sizeof(name), "l%03d", i);
		tb_label(&ts, 1, name, "");
	}
	tb_msg(&qr, 1, &ts);
	tb_msg(&resp, 1, &qr);
	assert_int_equal(scan_labels(resp.data, resp.len, NULL, 0, &got, &skipped), 0);
	tb_assert_transcript(&got, "q0{}\n");
	assert_int_equal(skipped, 1);
	tb_free(&got);
	tb_free(&resp);
}

static void test_series_cb_undecodable_label_loses_the_labels_not_the_scan(void **state)
{
	/* A name claiming 5 bytes with 2 left, and a group wire type: the counts never look inside. */
	static const char *const bad_len[] = { "\x0a\x01" "a", "\x0a\x05" "ab" };
	static const char *const bad_type[] = { "\x0b" };
	static const char *const good[] = { "\x0a\x01" "n" "\x12\x01" "v" };
	struct tbuf resp = { 0 }, qr = { 0 }, got = { 0 };
	uint64_t skipped;

	(void)state;
	put_raw_series(&qr, bad_len, 2);
	put_raw_series(&qr, bad_type, 1);
	put_raw_series(&qr, good, 1);
	tb_msg(&resp, 1, &qr);
	assert_int_equal(scan_labels(resp.data, resp.len, NULL, 0, &got, &skipped), 0);
	tb_assert_transcript(&got, "q0{}\nq0{}\nq0{n=v}\n");
	assert_int_equal(skipped, 2);
	tb_free(&got);
	tb_free(&resp);
}

/*
 * Scan <resp> whole, cut in two at every offset, and byte by byte, with a series callback; each
 * must give <want> and <want_skipped>. Labels then arrive whole (decoded in place), in one
 * on_bytes piece, or in pieces (decoded by the label walker).
 */
static void expect_labels_however_split(const struct tbuf *resp, const char *want, uint64_t want_skipped)
{
	size_t *ones = malloc(resp->len * sizeof(*ones));
	uint64_t skipped;

	assert_non_null(ones);
	for (size_t cut = 0; cut <= resp->len; cut++) {
		struct tbuf got = { 0 };

		assert_int_equal(scan_labels(resp->data, resp->len, &cut, 1, &got, &skipped), 0);
		tb_assert_transcript(&got, want);
		assert_int_equal(skipped, want_skipped);
		tb_free(&got);
	}
	for (size_t i = 0; i + 1 < resp->len; i++)
		ones[i] = i + 1;
	{
		struct tbuf got = { 0 };

		assert_int_equal(scan_labels(resp->data, resp->len, ones, resp->len - 1, &got, &skipped), 0);
		tb_assert_transcript(&got, want);
		assert_int_equal(skipped, want_skipped);
		tb_free(&got);
	}
	free(ones);
}

static void test_series_cb_label_semantics_do_not_depend_on_the_split(void **state)
{
	/* Each in a series of its own: valid ones in every shape, then invalid ones (labels lost). */
	/* A Label's bytes as a string literal, without the terminating NUL. */
#define LABEL(s) { s, sizeof(s) - 1 }
	static const struct {
		const char *bytes;
		size_t len;
	} labels[] = {
		LABEL("\x0a\x01n\x12\x01v"),            /* the usual shape */
		LABEL("\x0a\x01" "a\x0a\x02" "bb\x12\x01v"), /* repeated name: the last wins */
		LABEL("\x12\x01v\x0a\x01n\x12\x02ww"),  /* value first, then a repeated value */
		LABEL("\x18\x07\x0a\x01n\x12\x01v"),    /* unknown varint first */
		LABEL("\x0a\x01n\x21\x01\x02\x03\x04\x05\x06\x07\x08\x2d\x01\x02\x03\x04\x12\x01v"), /* fixed64, fixed32 */
		LABEL("\x0a\x01n\x22\x02zz\x12\x01v"),  /* unknown LEN */
		LABEL("\x0a\x01n\xf8\xff\xff\xff\x0f\x01\x12\x01v"), /* largest field number */
		LABEL("\x0a\x01n\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x12\x01v"), /* ten-byte varint */
		LABEL("\x0a\x81\x00n\x12\x01v"),        /* length padded to two bytes */
		LABEL("\x8a\x00\x01n\x12\x01v"),        /* key padded to two bytes */
		LABEL("\x0a\x00\x12\x00"),              /* empty name and value */
		LABEL("\x0a\x01n\x12\x01"),             /* value runs past the Label */
		LABEL("\x0a\x01n\x0b"),                 /* wire type 3 */
		LABEL("\x0a\x01n\x0f\x00"),             /* wire type 7 */
		LABEL("\x02\x00\x0a\x01n"),             /* field number 0 */
		LABEL("\x0a\x01n\x80\x80\x80\x80\x10\x00"), /* field number 2^29 */
		LABEL("\x0a\x01n\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"), /* eleven-byte varint */
		LABEL("\x0a\x01n\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02"), /* ten bytes, above 64 bits */
		LABEL("\x0a\x01n\x21\x01\x02"),         /* fixed64 past the end */
		LABEL("\x0a\x01n\x18\x80"),             /* ends inside a varint */
		LABEL("\x0a\x01n\x80"),                 /* ends inside a key */
	};
#undef LABEL
	struct tbuf resp = { 0 }, qr = { 0 }, ts = { 0 }, l = { 0 };
	uint8_t name[200];

	(void)state;
	for (size_t i = 0; i < sizeof(labels) / sizeof(labels[0]); i++) {
		tb_lfield(&ts, 1, labels[i].bytes, labels[i].len);
		tb_lfield(&ts, 2, "\x10\x01", 2);
		tb_msg(&qr, 1, &ts);
	}
	/* A name of 200 bytes (two-byte lengths); a corrupt Label loses a series its good ones too. */
	memset(name, 'x', sizeof(name));
	tb_lfield(&l, 1, name, sizeof(name));
	tb_str(&l, 2, "v");
	tb_msg(&ts, 1, &l);
	tb_msg(&qr, 1, &ts);
	tb_label(&ts, 1, "n", "v");
	tb_lfield(&ts, 1, "\x0b", 1);
	tb_label(&ts, 1, "m", "w");
	tb_msg(&qr, 1, &ts);
	tb_msg(&resp, 1, &qr);
	{
		struct tbuf want = { 0 };

		put_text(&want, "q0{n=v}\nq0{bb=v}\nq0{n=ww}\nq0{n=v}\nq0{n=v}\nq0{n=v}\nq0{n=v}\nq0{n=v}\n"
				"q0{n=v}\nq0{n=v}\nq0{=}\n");
		for (int i = 0; i < 10; i++)
			put_text(&want, "q0{}\n");
		put_text(&want, "q0{");
		tb_put(&want, name, sizeof(name));
		put_text(&want, "=v}\nq0{}\n");
		tb_byte(&want, '\0');
		expect_labels_however_split(&resp, (const char *)want.data, 11);
		tb_free(&want);
	}
	tb_free(&resp);
}

/* Append a TimeSeries of <k> labels {a=<100 x 'v'>} and a last one {b=<last> x 'w'}. */
static void put_filled_series(struct tbuf *qr, int k, size_t last)
{
	struct tbuf ts = { 0 };
	char v[101], w[128];

	assert_true(last < sizeof(w));
	memset(v, 'v', 100);
	v[100] = '\0';
	memset(w, 'w', last);
	w[last] = '\0';
	for (int i = 0; i < k; i++)
		tb_label(&ts, 1, "a", v);
	tb_label(&ts, 1, "b", w);
	tb_msg(qr, 1, &ts);
}

static void test_series_cb_label_buffer_boundary_does_not_depend_on_the_split(void **state)
{
	/*
	 * A series costs a record (two size_t), one descriptor per label and its strings: 122 labels
	 * of 101 bytes of strings leave room for a last value of <fits> bytes, a short one, so that
	 * Labels fed whole take the in-place path and the others the label walker.
	 */
	const int k = 122;
	const size_t fits = PROTO_SERIES_LABELS_MAX - 2 * sizeof(size_t) - (size_t)(k + 1) * sizeof(struct proto_label) -
			    (size_t)k * 101 - 1;

	(void)state;
	assert_true(fits < 127);
	for (size_t last = fits; last <= fits + 1; last++) {
		struct tbuf resp = { 0 }, qr = { 0 }, want = { 0 };

		put_filled_series(&qr, k, last);
		tb_msg(&resp, 1, &qr);
		put_text(&want, "q0{");
		for (int i = 0; last == fits && i < k; i++) {
			put_text(&want, "a=");
			for (int j = 0; j < 100; j++)
				tb_byte(&want, 'v');
			tb_byte(&want, ',');
		}
		if (last == fits) {
			put_text(&want, "b=");
			for (size_t j = 0; j < last; j++)
				tb_byte(&want, 'w');
		}
		put_text(&want, "}\n");
		tb_byte(&want, '\0');
		expect_labels_however_split(&resp, (const char *)want.data, last == fits ? 0 : 1);
		tb_free(&want);
		tb_free(&resp);
	}
}

static void test_without_series_cb_nothing_is_reported_or_skipped(void **state)
{
	struct tbuf resp = { 0 }, qr = { 0 };
	struct proto_scan *s = proto_scan_new(MAXQ);
	const struct proto_scan_counts *res;
	size_t n;
	char err[256];

	(void)state;
	put_big_series(&qr, "b", 2 * PROTO_SERIES_LABELS_MAX);
	tb_msg(&resp, 1, &qr);
	assert_int_equal(proto_scan_feed(s, resp.data, resp.len, err, sizeof(err)), 0);
	assert_int_equal(proto_scan_finish(s, err, sizeof(err)), 0);
	res = proto_scan_results(s, &n);
	assert_int_equal(n, 1);
	assert_int_equal(res[0].series, 1);
	assert_int_equal(proto_scan_skipped(s), 0);
	proto_scan_free(s);
	tb_free(&resp);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_counts_real_prometheus_response),
		cmocka_unit_test(test_same_counts_at_every_split_point),
		cmocka_unit_test(test_same_counts_fed_one_byte_at_a_time),
		cmocka_unit_test(test_skips_unknown_fields_at_every_level),
		cmocka_unit_test(test_counts_histograms_and_results_per_query),
		cmocka_unit_test(test_empty_body_has_no_results),
		cmocka_unit_test(test_rejects_varint_longer_than_ten_bytes),
		cmocka_unit_test(test_rejects_group_and_reserved_wire_types),
		cmocka_unit_test(test_rejects_child_longer_than_parent),
		cmocka_unit_test(test_rejects_known_field_with_wrong_wire_type),
		cmocka_unit_test(test_rejects_field_number_zero),
		cmocka_unit_test(test_rejects_more_results_than_max_queries),
		cmocka_unit_test(test_rejects_body_truncated_at_any_point),
		cmocka_unit_test(test_stays_failed_after_an_error),
		cmocka_unit_test(test_series_cb_reports_labels_of_real_response),
		cmocka_unit_test(test_series_cb_same_at_every_split_point_and_byte_by_byte),
		cmocka_unit_test(test_series_cb_gives_query_index_and_protobuf_label_semantics),
		cmocka_unit_test(test_series_cb_skips_and_counts_oversized_label_sets),
		cmocka_unit_test(test_series_cb_many_small_labels_count_against_the_buffer),
		cmocka_unit_test(test_series_cb_undecodable_label_loses_the_labels_not_the_scan),
		cmocka_unit_test(test_series_cb_label_semantics_do_not_depend_on_the_split),
		cmocka_unit_test(test_series_cb_label_buffer_boundary_does_not_depend_on_the_split),
		cmocka_unit_test(test_without_series_cb_nothing_is_reported_or_skipped),
	};

	return cmocka_run_group_tests_name("proto_scan", tests, NULL, NULL);
}

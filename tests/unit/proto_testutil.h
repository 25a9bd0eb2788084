/*
 * Helpers shared by the proto_* unit tests: read a vector file, build protobuf messages and
 * stream frames byte by byte, snappy-compress. Header-only (static), test code only.
 */
#ifndef PROMGUARD_TESTS_PROTO_TESTUTIL_H
#define PROMGUARD_TESTS_PROTO_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <snappy-c.h>

#include "proto/frame.h"

/* Growable byte buffer; every helper aborts the test on ENOMEM. */
struct tbuf {
	uint8_t *data;
	size_t len;
	size_t cap;
};

static inline void tb_free(struct tbuf *b)
{
	free(b->data);
	*b = (struct tbuf){ 0 };
}

static inline void tb_put(struct tbuf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 64;

		while (cap < b->len + n)
			cap *= 2;
		b->data = realloc(b->data, cap);
		assert_non_null(b->data);
		b->cap = cap;
	}
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
}

static inline void tb_byte(struct tbuf *b, uint8_t v)
{
	tb_put(b, &v, 1);
}

static inline void tb_varint(struct tbuf *b, uint64_t v)
{
	while (v >= 0x80) {
		tb_byte(b, (uint8_t)(v | 0x80));
		v >>= 7;
	}
	tb_byte(b, (uint8_t)v);
}

static inline void tb_key(struct tbuf *b, uint32_t field, unsigned wire_type)
{
	tb_varint(b, (uint64_t)field << 3 | wire_type);
}

/* Field <field> = VARINT <v>. */
static inline void tb_vfield(struct tbuf *b, uint32_t field, uint64_t v)
{
	tb_key(b, field, 0);
	tb_varint(b, v);
}

/* Field <field> = LEN holding <n> bytes at <p>. */
static inline void tb_lfield(struct tbuf *b, uint32_t field, const void *p, size_t n)
{
	tb_key(b, field, 2);
	tb_varint(b, n);
	tb_put(b, p, n);
}

/* Field <field> = LEN holding the bytes of <inner>, which is freed. */
static inline void tb_msg(struct tbuf *b, uint32_t field, struct tbuf *inner)
{
	tb_lfield(b, field, inner->data, inner->len);
	tb_free(inner);
}

static inline void tb_str(struct tbuf *b, uint32_t field, const char *s)
{
	tb_lfield(b, field, s, strlen(s));
}

/* Label {1 name, 2 value} as field <field>. */
static inline void tb_label(struct tbuf *b, uint32_t field, const char *name, const char *value)
{
	struct tbuf l = { 0 };

	tb_str(&l, 1, name);
	tb_str(&l, 2, value);
	tb_msg(b, field, &l);
}

/* Append one stream frame around <msg>: uvarint length, big-endian CRC-32C (or <crc> when
 * <force_crc>), message. */
static inline void tb_frame(struct tbuf *b, const struct tbuf *msg, int force_crc, uint32_t crc)
{
	uint32_t c = force_crc ? crc : proto_crc32c(0, msg->data, msg->len);
	uint8_t be[4] = { (uint8_t)(c >> 24), (uint8_t)(c >> 16), (uint8_t)(c >> 8), (uint8_t)c };

	tb_varint(b, msg->len);
	tb_put(b, be, 4);
	tb_put(b, msg->data, msg->len);
}

/* Snappy-compress <n> bytes at <p> into a new buffer. */
static inline struct tbuf tb_snappy(const void *p, size_t n)
{
	struct tbuf out = { 0 };
	size_t len = snappy_max_compressed_length(n);

	out.data = malloc(len);
	assert_non_null(out.data);
	assert_int_equal(snappy_compress(p, n, (char *)out.data, &len), SNAPPY_OK);
	out.len = out.cap = len;
	return out;
}

/* Snappy-decompress a whole buffer. */
static inline struct tbuf tb_unsnappy(const struct tbuf *in)
{
	struct tbuf out = { 0 };
	size_t len;

	assert_int_equal(snappy_uncompressed_length((const char *)in->data, in->len, &len), SNAPPY_OK);
	out.data = malloc(len ? len : 1);
	assert_non_null(out.data);
	assert_int_equal(snappy_uncompress((const char *)in->data, in->len, (char *)out.data, &len), SNAPPY_OK);
	out.len = out.cap = len;
	return out;
}

/*
 * proto_series_fn that appends one line per series to the struct tbuf at <ctx>:
 * `q<index>{name=value,...}` (`q<index>{}` without labels), so whole transcripts compare at once.
 */
static inline void tb_record_series(void *ctx, size_t query_index, const struct proto_label *labels, size_t n)
{
	struct tbuf *b = ctx;
	char head[32];

	snprintf(head, sizeof(head), "q%zu{", query_index);
	tb_put(b, head, strlen(head));
	for (size_t i = 0; i < n; i++) {
		if (i)
			tb_byte(b, ',');
		tb_put(b, labels[i].name, labels[i].name_len);
		tb_byte(b, '=');
		tb_put(b, labels[i].value, labels[i].value_len);
	}
	tb_put(b, "}\n", 2);
}

/* Compare a recorded transcript with the NUL-terminated <want>. */
static inline void tb_assert_transcript(const struct tbuf *got, const char *want)
{
	if (got->len != strlen(want) || memcmp(got->data, want, got->len) != 0)
		fail_msg("series transcript\n%.*s\nwant\n%s", (int)got->len, got->data ? (const char *)got->data : "",
			 want);
}

/* Read tests/vectors/<name>. */
static inline struct tbuf tb_vector(const char *name)
{
	char path[1024];
	struct tbuf b = { 0 };
	uint8_t chunk[4096];
	size_t n;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", VECTORS_DIR, name);
	f = fopen(path, "rb");
	if (!f)
		fail_msg("cannot open vector %s", path);
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		tb_put(&b, chunk, n);
	fclose(f);
	return b;
}

#endif

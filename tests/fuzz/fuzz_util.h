/*
 * fuzz_util: helpers shared by the libFuzzer targets in tests/fuzz/ (header-only, static).
 *
 *   - FUZZ_CHECK: a property that must hold; a violation prints what was seen and abort()s, which
 *     libFuzzer reports as a crash and saves the input.
 *   - struct fuzz_in: read header bytes and strings off the front of an input.
 *   - struct fuzz_split: cut a body into feeds whose sizes the input itself chooses, so that
 *     incremental readers are tried at every split the fuzzer can think of.
 *   - struct fuzz_digest: an order-sensitive hash of what a series callback reported, to compare
 *     one run of a reader with another run over the same bytes split differently.
 */
#ifndef PROMGUARD_FUZZ_UTIL_H
#define PROMGUARD_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/wire.h"

/* Abort with a message when <cond> is false: a broken property is a crash to libFuzzer. */
#define FUZZ_CHECK(cond, ...)                                                                     \
	do {                                                                                      \
		if (!(cond)) {                                                                    \
			fprintf(stderr, "%s:%d: property failed: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                             \
			fputc('\n', stderr);                                                      \
			abort();                                                                  \
		}                                                                                 \
	} while (0)

/* An error line must be terminated inside its buffer (snprintf semantics). */
#define FUZZ_CHECK_ERRLINE(err, errlen) \
	FUZZ_CHECK(memchr((err), '\0', (errlen)) != NULL, "error line not terminated")

/* ---- reading the input ------------------------------------------------------------------ */

/* The unread rest of an input. */
struct fuzz_in {
	const uint8_t *p; /* (ref) next byte */
	size_t n;         /* bytes left */
};

/* Next byte, or 0 once the input is used up (so short inputs still run). */
static inline uint8_t fuzz_u8(struct fuzz_in *in)
{
	if (!in->n)
		return 0;
	in->n--;
	return *in->p++;
}

static inline uint16_t fuzz_u16(struct fuzz_in *in)
{
	uint16_t lo = fuzz_u8(in);

	return (uint16_t)(lo | fuzz_u8(in) << 8);
}

static inline uint32_t fuzz_u32(struct fuzz_in *in)
{
	uint32_t lo = fuzz_u16(in);

	return lo | (uint32_t)fuzz_u16(in) << 16;
}

/* Up to <want> bytes (fewer when the input ends); *<got> says how many. (ref) into the input. */
static inline const uint8_t *fuzz_take(struct fuzz_in *in, size_t want, size_t *got)
{
	const uint8_t *p = in->p;

	*got = want < in->n ? want : in->n;
	in->p += *got;
	in->n -= *got;
	return p;
}

/* ---- splitting a body into feeds ---------------------------------------------------------- */

#define FUZZ_SPLIT_SIZES 8

/*
 * Feed sizes chosen by FUZZ_SPLIT_SIZES header bytes, used in turn: 0 is an empty feed (readers
 * must accept len 0), 1..127 that many bytes, 128..254 (b - 127) * 61 bytes (up to 7.7 KiB),
 * 255 everything left. All zeros would never end: such a header feeds everything at once.
 */
struct fuzz_split {
	uint8_t sizes[FUZZ_SPLIT_SIZES];
	unsigned next; /* index of the next size to use */
	int all_zero;
};

static inline void fuzz_split_init(struct fuzz_split *s, struct fuzz_in *in)
{
	s->all_zero = 1;
	s->next = 0;
	for (int i = 0; i < FUZZ_SPLIT_SIZES; i++) {
		s->sizes[i] = fuzz_u8(in);
		s->all_zero &= s->sizes[i] == 0;
	}
}

/* Size of the next feed, given <left> bytes still to feed (may return 0: an empty feed). */
static inline size_t fuzz_split_next(struct fuzz_split *s, size_t left)
{
	uint8_t b = s->sizes[s->next++ % FUZZ_SPLIT_SIZES];
	size_t n;

	if (s->all_zero || b == 255)
		return left;
	n = b < 128 ? b : (size_t)(b - 127) * 61;
	return n < left ? n : left;
}

/* ---- comparing series callbacks --------------------------------------------------------- */

/* What a proto_series_fn saw: count and an FNV-1a hash over every (query_index, labels). */
struct fuzz_digest {
	uint64_t calls;
	uint64_t labels;
	uint64_t hash;
};

static inline void fuzz_digest_bytes(struct fuzz_digest *d, const void *p, size_t n)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < n; i++)
		d->hash = (d->hash ^ b[i]) * 0x100000001b3ULL;
}

/* A proto_series_fn: <ctx> is a struct fuzz_digest. Also checks the labels are readable. */
static inline void fuzz_digest_series(void *ctx, size_t query_index, const struct proto_label *labels,
				      size_t n_labels)
{
	struct fuzz_digest *d = ctx;
	uint64_t qi = query_index, nl = n_labels;

	if (!d->calls)
		d->hash = 0xcbf29ce484222325ULL;
	d->calls++;
	d->labels += n_labels;
	fuzz_digest_bytes(d, &qi, sizeof(qi));
	fuzz_digest_bytes(d, &nl, sizeof(nl));
	FUZZ_CHECK(n_labels == 0 || labels != NULL, "%zu labels at NULL", n_labels);
	for (size_t i = 0; i < n_labels; i++) {
		uint64_t nlen = labels[i].name_len, vlen = labels[i].value_len;

		/* Reading every byte lets ASan check that the strings are where they say. */
		fuzz_digest_bytes(d, &nlen, sizeof(nlen));
		fuzz_digest_bytes(d, labels[i].name, labels[i].name_len);
		fuzz_digest_bytes(d, &vlen, sizeof(vlen));
		fuzz_digest_bytes(d, labels[i].value, labels[i].value_len);
	}
}

static inline int fuzz_digest_equal(const struct fuzz_digest *a, const struct fuzz_digest *b)
{
	return a->calls == b->calls && a->labels == b->labels && a->hash == b->hash;
}

#endif

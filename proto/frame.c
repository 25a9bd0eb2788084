/*
 * proto_frame: incremental reader for STREAMED_XOR_CHUNKS bodies (see frame.h).
 *
 * Frame layout (storage/remote/chunked.go): uvarint message length, CRC-32C of the message as
 * 4 bytes big-endian, then the message, a prometheus.ChunkedReadResponse:
 *   depth 0  ChunkedReadResponse { 1: ChunkedSeries chunked_series, 2: int64 query_index }
 *   depth 1  ChunkedSeries       { 1: Label labels, 2: Chunk chunks }
 * The message is never buffered: the CRC is updated and the wire walker advanced on each piece.
 * query_index follows the series on the wire, so a frame's tallies are kept aside and credited
 * to its query when the frame ends.
 *
 * A series split across frames: every ChunkedSeries' label bytes are hashed (XXH3-64); a series
 * whose (query_index, label hash) equals the one just before it, in the same frame or at the end
 * of the previous frame, continues that series and is not counted again. The same decision
 * drops it from the series callback: the label bytes being hashed are also handed to the
 * collector (wire.h), whose copies wait until the frame's query_index is known.
 */
#include "proto/frame.h"

#include <errno.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "proto/wire.h"

/* Field numbers of the messages walked. */
#define RESPONSE_SERIES 1u
#define RESPONSE_QUERY_INDEX 2u
#define SERIES_LABELS 1u
#define SERIES_CHUNKS 2u

/* Bytes of the big-endian CRC that follows the length. */
#define FRAME_CRC_BYTES 4

enum frame_state {
	FRAME_LENGTH = 0, /* reading the uvarint length (or at a clean frame boundary) */
	FRAME_CRC,        /* reading the 4 checksum bytes */
	FRAME_MESSAGE,    /* walking the message */
	FRAME_FAILED,     /* sticky error */
};

/* Tallies of the frame being read; credited to query_index at the frame's end. */
struct frame_tally {
	uint64_t series;        /* ChunkedSeries not continuing the previous one */
	uint64_t chunks;        /* Chunk entries */
	int64_t query_index;    /* field 2, 0 when absent (proto3 default) */
	int have_series;        /* at least one ChunkedSeries finished in this frame */
	uint64_t first_hash;    /* label hash of the frame's first series */
	uint64_t last_hash;     /* label hash of the frame's latest series */
};

struct proto_frame_reader {
	enum frame_state state;
	size_t max_frame;                 /* cap on one message's length */
	size_t max_queries;               /* capacity of <counts> */
	struct proto_frame_counts *counts;/* [max_queries], first n_counts in use */
	size_t n_counts;                  /* 1 + highest query_index seen */
	uint64_t frame_no;                /* 0-based index of the frame being read */
	struct proto_varint length;       /* length prefix being read */
	unsigned length_bytes;            /* bytes of the length prefix */
	uint64_t msg_len;                 /* message length of the current frame */
	uint8_t crc_buf[FRAME_CRC_BYTES]; /* checksum bytes read so far */
	unsigned crc_have;                /* how many of them */
	uint32_t crc;                     /* running CRC-32C of the message */
	struct proto_walk walk;           /* walker over the current message */
	XXH3_state_t *hash;               /* label hash of the series being walked */
	struct frame_tally tally;         /* current frame */
	int prev_valid;                   /* a series was seen in an earlier frame */
	int64_t prev_query;               /* query_index of that frame */
	uint64_t prev_hash;               /* label hash of its last series */
	int error;                        /* sticky negative errno */
	struct proto_series_labels labels;/* series callback and the frame's pending labels */
};

/* ---- CRC-32C ---------------------------------------------------------------------------- */

/*
 * Hand-written because no Debian C library ships CRC-32C (zlib has only CRC-32). Slicing-by-8:
 * table[0] is the classic reflected byte table for polynomial 0x82F63B78; table[k][b] is the CRC
 * of byte b followed by k zero bytes, so eight input bytes are folded per step. The tables are
 * built once, thread-safely, on first use.
 */
#define CRC32C_POLY 0x82F63B78u

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_tables_build(void);

#if defined(__x86_64__)
/*
 * SSE4.2 has a CRC-32C instruction (crc32q: 8 bytes, latency 3 cycles, one issued per cycle).
 * One chain of it waits on each previous result, so it runs at a third of the rate the CPU can
 * issue. Three chains over three consecutive equal blocks A, B, C run side by side and are
 * joined by linearity: with crc(r, X) the register after X from register r (no inversions),
 *   crc(r, A || B || C) = S(S(S(r) ^ crc(0, A)) ^ crc(0, B)) ^ crc(0, C)
 * where S advances a register over one block of zero bytes: a GF(2)-linear map, applied as four
 * 256-entry tables, one per register byte (the "shift" of Mark Adler's crc32c.c). All three
 * chains start from 0, so none waits for the previous block's join (~40 instructions), which
 * overlaps with the next block's chains. Blocks of CRC_LONG bytes, then of CRC_SHORT for what
 * is left, then one chain for the tail below 3 * CRC_SHORT bytes.
 *
 * Measured (microbench: proto_crc32c over a 64 MiB buffer x 20, pinned to one core of the
 * 2-core build VM, best of 5): one chain 7.1 GB/s, three chains 19.5 GB/s; over 4 KiB and
 * 16 KiB pieces (short blocks only) 7.0 -> 15.5 and 7.2 -> 15.9 GB/s. Joining with the chain
 * of A started from <r> instead (Adler's way) put the join on the critical path: ~13 and ~14.4
 * GB/s for those pieces. Earlier, in bench/ (1 GiB stream through the proxy), the table version
 * was 38% of promguard's CPU and one chain took the relay from 0.84 to 0.91 GB/s.
 */
#define CRC_LONG 8192
#define CRC_SHORT 256

static uint32_t crc_shift_long[4][256];  /* register advanced over CRC_LONG zero bytes */
static uint32_t crc_shift_short[4][256]; /* the same over CRC_SHORT zero bytes */

/* <mat> (32 columns: the images of the 32 register bits) applied to <vec>, over GF(2). */
static uint32_t gf2_times(const uint32_t *mat, uint32_t vec)
{
	uint32_t sum = 0;

	for (; vec; vec >>= 1, mat++)
		if (vec & 1)
			sum ^= *mat;
	return sum;
}

/* <square> = <mat> applied twice. */
static void gf2_square(uint32_t *square, const uint32_t *mat)
{
	for (int n = 0; n < 32; n++)
		square[n] = gf2_times(mat, mat[n]);
}

/*
 * Tables advancing a register over <len> zero bytes (<len> a power of two): the one-zero-bit
 * operator (reflected: bit 0 feeds back the polynomial, bit n moves to bit n-1) squared until it
 * covers 8 * <len> bits, then tabulated per register byte.
 */
static void crc_shift_build(uint32_t tab[4][256], size_t len)
{
	uint32_t op[32], sq[32];

	op[0] = CRC32C_POLY;
	for (int n = 1; n < 32; n++)
		op[n] = (uint32_t)1 << (n - 1);
	for (size_t bits = 1; bits < 8 * len; bits <<= 1) {
		gf2_square(sq, op);
		memcpy(op, sq, sizeof(op));
	}
	for (uint32_t b = 0; b < 256; b++)
		for (int k = 0; k < 4; k++)
			tab[k][b] = gf2_times(op, b << (8 * k));
}

/* <crc> (a register, no inversion) advanced over the zero bytes that <tab> stands for. */
static inline uint32_t crc_shift(const uint32_t tab[4][256], uint32_t crc)
{
	return tab[0][crc & 0xff] ^ tab[1][(crc >> 8) & 0xff] ^ tab[2][(crc >> 16) & 0xff] ^ tab[3][crc >> 24];
}

/* Unaligned little-endian 8-byte load: x86 order is the order the instruction wants. */
static inline uint64_t crc_load64(const uint8_t *p)
{
	uint64_t w;

	memcpy(&w, p, 8);
	return w;
}

/*
 * Register <c> advanced over as many blocks of 3 * <blk> bytes as <*data> / <*len> hold, three
 * chains at a time; moves <*data> and <*len> past them. <tab> is S for <blk> bytes. Inlined
 * with a constant <blk>.
 */
__attribute__((target("sse4.2"))) static inline uint64_t crc_3way(uint64_t c, const uint8_t **data, size_t *len,
								   size_t blk, const uint32_t tab[4][256])
{
	const uint8_t *p = *data;
	size_t n = *len;

	while (n >= 3 * blk) {
		const uint8_t *end = p + blk;
		uint64_t c0 = 0, c1 = 0, c2 = 0;

		do {
			c0 = __builtin_ia32_crc32di(c0, crc_load64(p));
			c1 = __builtin_ia32_crc32di(c1, crc_load64(p + blk));
			c2 = __builtin_ia32_crc32di(c2, crc_load64(p + 2 * blk));
			p += 8;
		} while (p < end);
		c = crc_shift(tab, crc_shift(tab, crc_shift(tab, (uint32_t)c) ^ (uint32_t)c0) ^ (uint32_t)c1) ^ c2;
		p += 2 * blk;
		n -= 3 * blk;
	}
	*data = p;
	*len = n;
	return c;
}

/* The bytes left after the blocks, 8 at a time then one by one; returns the finished CRC. */
__attribute__((target("sse4.2"))) static inline uint32_t crc_tail(uint64_t c, const uint8_t *data, size_t len)
{
	for (; len >= 8; data += 8, len -= 8)
		c = __builtin_ia32_crc32di(c, crc_load64(data));
	uint32_t c32 = (uint32_t)c;
	while (len--)
		c32 = __builtin_ia32_crc32qi(c32, *data++);
	return ~c32;
}

__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *data, size_t len)
{
	uint64_t c = ~crc;

	if (len >= 3 * CRC_SHORT) {
		pthread_once(&crc_once, crc_tables_build);
		c = crc_3way(c, &data, &len, CRC_LONG, crc_shift_long);
		c = crc_3way(c, &data, &len, CRC_SHORT, crc_shift_short);
	}
	return crc_tail(c, data, len);
}

/*
 * Carry-less multiplication folding (Intel, "Fast CRC Computation for Generic Polynomials Using
 * PCLMULQDQ"; the layout of Linux's and ISA-L's crc32c). With the data as one polynomial M (first
 * byte's bit 0 the highest power), the register after it is M * x^32 mod P, and any part of M may
 * be replaced by something congruent to it times the right power of x. A 128-bit lane X at D
 * bytes before the lane it is folded into is H * x^64 + L (H its low quadword: bit-reflected,
 * the low bits are the high powers), and
 *   X * x^(8D) = H * x^(8D+64) + L * x^(8D)  ==  clmul(H, k_lo) ^ clmul(L, k_hi)   (mod P)
 * with k_lo = x^(8D+32) mod P and k_hi = x^(8D-32) mod P bit-reflected in 33 bits (a 64-bit
 * reflected value times a 33-bit reflected one reads as the product times x^32 in the 128-bit
 * lane), the result, at most 96 bits, a lane to XOR into the data D bytes on. Four 512-bit
 * accumulators (16 lanes) fold 256 bytes per step, then into one accumulator by 64 bytes, then
 * its four lanes into one, then 16 bytes at a time. The last 128-bit remainder X is a message
 * of its own: the crc32 instruction over its two quadwords from 0 gives X * x^32 mod P, the
 * register, without the Barrett reduction, and the tail below 16 bytes follows with crc32.
 * Constants generated as r = 0x80000000 (x^0, reflected), T times r = r >> 1 ^ (r & 1 ? POLY : 0),
 * then r << 1; the D = 16, 64, 128, 256 ones equal those published (ISA-L crc32_iscsi, Linux).
 *
 * Measured (microbench: proto_crc32c running over a 64 MiB buffer x 20, and over the first
 * 64 KiB of it in pieces of 64 KiB, 4 KiB, 1 KiB, 512 B, 256 B, warm; RelWithDebInfo, gcc 12,
 * taskset -c 1 on the 2-core Xeon build VM, best of 5), 3-way crc32q -> this: 64 MiB 22.0 ->
 * 27.9 GB/s (now bound by memory); 64 KiB 23.2 -> 69.2; 4 KiB 22.5 -> 69.1; 1 KiB 19.7 -> 51.3;
 * 512 B 7.8 -> 34.2; 256 B 7.8 -> 19.2 (clang 14: within 4%, one of two runs 56 at 64 KiB). Hence
 * CRC_FOLD_MIN = 256, the smallest input one 256-byte step takes. A CPU with PCLMULQDQ but not
 * VPCLMULQDQ keeps the 3-way crc32q code: a 128-bit fold peaks near its 8 bytes per cycle, and
 * this machine could not test it.
 */
#define CRC_FOLD_MIN 256 /* shorter inputs take crc32c_sse42 (one chain) */

/* The CPU has all crc32c_vpclmul needs (libgcc / compiler-rt also check the OS saves zmm). */
static inline int crc_have_vpclmul(void)
{
	return __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("avx512f") &&
	       __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.2");
}

/* k_lo, k_hi for a fold over <D> bytes: x^(8D+32), x^(8D-32) mod P, reflected 33-bit. */
#define CRC_K16 0x14cd00bd6u, 0x0f20c0dfeu
#define CRC_K32 0x0ba4fc28eu, 0x1384aa63au
#define CRC_K48 0x1d82c63dau, 0x01c291d04u
#define CRC_K64 0x09e4addf8u, 0x0740eef02u
#define CRC_K256 0x0b9e02b86u, 0x0dcb17aa4u

/* <x> folded over 16 bytes onto <d>. */
__attribute__((target("sse4.2,pclmul"))) static inline __m128i crc_fold16(__m128i x, __m128i k, __m128i d)
{
	return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), d);
}

#define CRC_TARGET_VPCLMUL __attribute__((target("sse4.2,pclmul,avx512f,vpclmulqdq")))

/* The same per 128-bit lane of 512: each lane folded over the distance of <k> onto <d>. */
CRC_TARGET_VPCLMUL static inline __m512i crc_fold512(__m512i x, __m512i k, __m512i d)
{
	/* 0x96: three-way XOR */
	return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x00), _mm512_clmulepi64_epi128(x, k, 0x11), d,
					 0x96);
}

/* CRC-32C of <len> >= CRC_FOLD_MIN bytes continuing from <crc> (as proto_crc32c). */
CRC_TARGET_VPCLMUL static uint32_t crc32c_vpclmul(uint32_t crc, const uint8_t *data, size_t len)
{
	const __m512i k256 = _mm512_broadcast_i32x4(_mm_set_epi64x(CRC_K256));
	const __m512i k64 = _mm512_broadcast_i32x4(_mm_set_epi64x(CRC_K64));
	/* The register enters as the first 32 bits of the message. */
	__m512i z0 = _mm512_xor_si512(_mm512_loadu_si512(data), _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)~crc)));
	__m512i z1 = _mm512_loadu_si512(data + 64);
	__m512i z2 = _mm512_loadu_si512(data + 128);
	__m512i z3 = _mm512_loadu_si512(data + 192);

	data += 256;
	len -= 256;
	for (; len >= 256; data += 256, len -= 256) {
		z0 = crc_fold512(z0, k256, _mm512_loadu_si512(data));
		z1 = crc_fold512(z1, k256, _mm512_loadu_si512(data + 64));
		z2 = crc_fold512(z2, k256, _mm512_loadu_si512(data + 128));
		z3 = crc_fold512(z3, k256, _mm512_loadu_si512(data + 192));
	}
	z0 = crc_fold512(crc_fold512(crc_fold512(z0, k64, z1), k64, z2), k64, z3);
	for (; len >= 64; data += 64, len -= 64)
		z0 = crc_fold512(z0, k64, _mm512_loadu_si512(data));

	/* Lanes 0, 1, 2 over 48, 32, 16 bytes onto lane 3 (whose constants are 0). */
	const __m512i kl = _mm512_set_epi64(0, 0, CRC_K16, CRC_K32, CRC_K48);
	__m512i t = _mm512_xor_si512(_mm512_clmulepi64_epi128(z0, kl, 0x00), _mm512_clmulepi64_epi128(z0, kl, 0x11));
	__m128i x = _mm_xor_si128(_mm_xor_si128(_mm512_extracti32x4_epi32(t, 0), _mm512_extracti32x4_epi32(t, 1)),
				  _mm_xor_si128(_mm512_extracti32x4_epi32(t, 2), _mm512_extracti32x4_epi32(z0, 3)));
	const __m128i k16 = _mm_set_epi64x(CRC_K16);

	for (; len >= 16; data += 16, len -= 16)
		x = crc_fold16(x, k16, _mm_loadu_si128((const __m128i *)data));
	uint64_t c = __builtin_ia32_crc32di(0, (uint64_t)_mm_cvtsi128_si64(x));
	c = __builtin_ia32_crc32di(c, (uint64_t)_mm_extract_epi64(x, 1));
	return crc_tail(c, data, len);
}
#endif

static void crc_tables_build(void)
{
	for (uint32_t b = 0; b < 256; b++) {
		uint32_t c = b;

		for (int i = 0; i < 8; i++)
			c = (c >> 1) ^ (c & 1 ? CRC32C_POLY : 0);
		crc_table[0][b] = c;
	}
	for (uint32_t b = 0; b < 256; b++)
		for (int k = 1; k < 8; k++)
			crc_table[k][b] = (crc_table[k - 1][b] >> 8) ^ crc_table[0][crc_table[k - 1][b] & 0xff];
#if defined(__x86_64__)
	crc_shift_build(crc_shift_long, CRC_LONG);
	crc_shift_build(crc_shift_short, CRC_SHORT);
#endif
}

/* Portable slicing-by-8 over the tables (any CPU; also what the unit tests compare against). */
static uint32_t crc32c_table(uint32_t crc, const uint8_t *data, size_t len)
{
	pthread_once(&crc_once, crc_tables_build);
	crc = ~crc;
	while (len >= 8) {
		/* Assemble little-endian words byte by byte: no alignment or endianness assumptions. */
		uint32_t lo = crc ^ ((uint32_t)data[0] | (uint32_t)data[1] << 8 | (uint32_t)data[2] << 16 |
				     (uint32_t)data[3] << 24);

		crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^ crc_table[5][(lo >> 16) & 0xff] ^
		      crc_table[4][lo >> 24] ^ crc_table[3][data[4]] ^ crc_table[2][data[5]] ^
		      crc_table[1][data[6]] ^ crc_table[0][data[7]];
		data += 8;
		len -= 8;
	}
	while (len--)
		crc = (crc >> 8) ^ crc_table[0][(crc ^ *data++) & 0xff];
	return ~crc;
}

uint32_t proto_crc32c(uint32_t crc, const uint8_t *data, size_t len)
{
#if defined(__x86_64__)
	if (len >= CRC_FOLD_MIN && crc_have_vpclmul())
		return crc32c_vpclmul(crc, data, len);
	if (__builtin_cpu_supports("sse4.2"))
		return crc32c_sse42(crc, data, len);
#endif
	return crc32c_table(crc, data, len);
}

uint32_t proto_crc32c_portable(uint32_t crc, const uint8_t *data, size_t len)
{
	return crc32c_table(crc, data, len);
}

/* ---- message walk ----------------------------------------------------------------------- */

/* A message field must arrive as LEN; any other wire type means a corrupt frame. */
static int want_type(const struct proto_walk_field *f, enum proto_wire_type want, const char *what, char *err,
		     size_t errlen)
{
	if (f->type == want)
		return 0;
	snprintf(err, errlen, "%s (field %" PRIu32 ") at byte %" PRIu64 " has wire type %d, want %d", what, f->number,
		 f->offset, (int)f->type, (int)want);
	return -EBADMSG;
}

/* Walker callback: open series, hash their labels, count chunks, read query_index. */
static int frame_on_field(void *ctx, const struct proto_walk_field *f, char *err, size_t errlen)
{
	struct proto_frame_reader *r = ctx;
	int rc;

	if (f->depth == 0) {
		if (f->number == RESPONSE_SERIES) {
			if ((rc = want_type(f, PROTO_WT_LEN, "ChunkedReadResponse.chunked_series", err, errlen)) < 0)
				return rc;
			if ((rc = proto_series_labels_begin(&r->labels, err, errlen)) < 0)
				return rc;
			XXH3_64bits_reset(r->hash);
			return PROTO_WALK_DESCEND;
		}
		if (f->number == RESPONSE_QUERY_INDEX) {
			if ((rc = want_type(f, PROTO_WT_VARINT, "ChunkedReadResponse.query_index", err, errlen)) < 0)
				return rc;
			/* int64 on the wire: two's complement in a uvarint. */
			r->tally.query_index = (int64_t)f->value;
		}
		return PROTO_WALK_SKIP;
	}
	if (f->number == SERIES_CHUNKS) {
		if ((rc = want_type(f, PROTO_WT_LEN, "ChunkedSeries.chunks", err, errlen)) < 0)
			return rc;
		r->tally.chunks++;
		/* The chunks after it are counted the same way: the walker may run through them
		 * (frame_on_run) instead of asking about each. */
		return PROTO_WALK_SKIP_RUN;
	}
	if (f->number == SERIES_LABELS) {
		uint64_t len = f->value;

		if ((rc = want_type(f, PROTO_WT_LEN, "ChunkedSeries.labels", err, errlen)) < 0)
			return rc;
		/* Hash each label's length before its bytes so label boundaries count. */
		XXH3_64bits_update(r->hash, &len, sizeof(len));
		if (f->data) {
			/* The whole Label is in this piece: the same hash input and collector result as
			 * BYTES would give, without its on_bytes and on_end. */
			XXH3_64bits_update(r->hash, f->data, (size_t)len);
			proto_series_labels_whole(&r->labels, f->data, (size_t)len);
			return PROTO_WALK_SKIP;
		}
		proto_series_labels_label(&r->labels, len);
		return PROTO_WALK_BYTES;
	}
	return PROTO_WALK_SKIP;
}

/* Walker callback: <n> more chunks right after <f>, skipped by the walker (see frame_on_field). */
static void frame_on_run(void *ctx, const struct proto_walk_field *f, uint64_t n)
{
	struct proto_frame_reader *r = ctx;

	(void)f;
	r->tally.chunks += n;
}

/* Walker callback: label bytes go into the series hash (and to the collector, if it wants them). */
static void frame_on_bytes(void *ctx, const struct proto_walk_field *f, const uint8_t *data, size_t len)
{
	struct proto_frame_reader *r = ctx;

	(void)f;
	XXH3_64bits_update(r->hash, data, len);
	proto_series_labels_bytes(&r->labels, data, len);
}

/* Walker callback: a ChunkedSeries ended; count it unless it continues the previous one. */
static int frame_on_end(void *ctx, const struct proto_walk_field *f, char *err, size_t errlen)
{
	struct proto_frame_reader *r = ctx;
	struct frame_tally *t = &r->tally;
	uint64_t h;

	(void)err;
	(void)errlen;
	if (f->depth != 0) {
		proto_series_labels_label_end(&r->labels); /* end of a label */
		return 0;
	}
	h = XXH3_64bits_digest(r->hash);
	if (!t->have_series) {
		/* Whether it continues the previous frame is known only once query_index is. */
		t->have_series = 1;
		t->first_hash = h;
		t->series++;
		proto_series_labels_end(&r->labels, 1);
	} else if (h != t->last_hash) {
		t->series++;
		proto_series_labels_end(&r->labels, 1);
	} else {
		proto_series_labels_end(&r->labels, 0);
	}
	t->last_hash = h;
	return 0;
}

static const struct proto_walk_ops frame_ops = {
	.on_field = frame_on_field,
	.on_bytes = frame_on_bytes,
	.on_end = frame_on_end,
	.on_run = frame_on_run,
};

/* ---- framing ---------------------------------------------------------------------------- */

struct proto_frame_reader *proto_frame_reader_new(size_t max_frame, size_t max_queries)
{
	struct proto_frame_reader *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	proto_series_labels_init(&r->labels);
	/* calloc(0) may return NULL; keep one slot so a NULL always means ENOMEM. */
	r->counts = calloc(max_queries ? max_queries : 1, sizeof(*r->counts));
	r->hash = XXH3_createState();
	if (!r->counts || !r->hash) {
		proto_frame_reader_free(r);
		return NULL;
	}
	r->max_frame = max_frame;
	r->max_queries = max_queries;
	return r;
}

void proto_frame_reader_free(struct proto_frame_reader *r)
{
	if (!r)
		return;
	proto_series_labels_deinit(&r->labels);
	XXH3_freeState(r->hash);
	free(r->counts);
	free(r);
}

/* Record a sticky failure; <err> already holds the message. */
static int frame_fail(struct proto_frame_reader *r, int rc)
{
	r->state = FRAME_FAILED;
	r->error = rc;
	return rc;
}

/* Rewrite a walker message in <err> as "frame N: bad ChunkedReadResponse: <detail>" (just
 * "frame N: <detail>" for -ENOMEM, which is not the message's fault); byte offsets in <detail>
 * count from the start of that frame's message. */
static int frame_bad_message(struct proto_frame_reader *r, int rc, char *err, size_t errlen)
{
	char detail[200];

	snprintf(detail, sizeof(detail), "%s", err);
	snprintf(err, errlen, "frame %" PRIu64 ": %s%s", r->frame_no, rc == -ENOMEM ? "" : "bad ChunkedReadResponse: ",
		 detail);
	return frame_fail(r, rc);
}

/* The length is known: check it against the cap and start the checksum. */
static int frame_begin(struct proto_frame_reader *r, char *err, size_t errlen)
{
	r->msg_len = r->length.value;
	if (r->msg_len > r->max_frame) {
		snprintf(err, errlen, "frame %" PRIu64 ": message of %" PRIu64 " bytes is above the frame limit of %zu",
			 r->frame_no, r->msg_len, r->max_frame);
		return frame_fail(r, -E2BIG);
	}
	r->state = FRAME_CRC;
	r->crc_have = 0;
	return 0;
}

/* The message is complete: verify it, then credit the tallies to its query. */
static int frame_end(struct proto_frame_reader *r, char *err, size_t errlen)
{
	struct frame_tally *t = &r->tally;
	struct proto_frame_counts *c;
	int continues;
	uint32_t want = (uint32_t)r->crc_buf[0] << 24 | (uint32_t)r->crc_buf[1] << 16 | (uint32_t)r->crc_buf[2] << 8 |
			r->crc_buf[3];
	int rc;

	/* Checksum first: a corrupt frame's walk errors are secondary. */
	if (r->crc != want) {
		snprintf(err, errlen, "frame %" PRIu64 ": checksum mismatch: got 0x%08" PRIx32 " want 0x%08" PRIx32,
			 r->frame_no, r->crc, want);
		return frame_fail(r, -EBADMSG);
	}
	if ((rc = proto_walk_finish(&r->walk, err, errlen)) < 0)
		return frame_bad_message(r, rc, err, errlen);
	if (t->query_index < 0) {
		snprintf(err, errlen, "frame %" PRIu64 ": bad ChunkedReadResponse: negative query_index %" PRId64, r->frame_no,
			 t->query_index);
		return frame_fail(r, -EBADMSG);
	}
	if ((uint64_t)t->query_index >= r->max_queries) {
		snprintf(err, errlen, "frame %" PRIu64 ": query_index %" PRId64 " is not below the %zu queries tracked",
			 r->frame_no, t->query_index, r->max_queries);
		return frame_fail(r, -E2BIG);
	}
	continues = t->have_series && r->prev_valid && r->prev_query == t->query_index && r->prev_hash == t->first_hash;
	if (continues)
		t->series--; /* the first series continues the previous frame's last one */
	proto_series_labels_flush(&r->labels, (size_t)t->query_index, continues);
	/* A frame without series leaves the previous one in place: it cannot break a split. */
	if (t->have_series) {
		r->prev_valid = 1;
		r->prev_query = t->query_index;
		r->prev_hash = t->last_hash;
	}
	c = &r->counts[t->query_index];
	c->series += t->series;
	c->chunks += t->chunks;
	c->bytes += r->length_bytes + FRAME_CRC_BYTES + r->msg_len;
	c->frames++;
	if ((size_t)t->query_index >= r->n_counts)
		r->n_counts = (size_t)t->query_index + 1;
	r->frame_no++;
	r->state = FRAME_LENGTH;
	proto_varint_reset(&r->length);
	r->length_bytes = 0;
	return 0;
}

/* All four checksum bytes are in: start walking the message. */
static int frame_begin_message(struct proto_frame_reader *r, char *err, size_t errlen)
{
	r->state = FRAME_MESSAGE;
	r->crc = 0;
	r->tally = (struct frame_tally){ 0 };
	proto_series_labels_reset(&r->labels);
	proto_walk_init(&r->walk, &frame_ops, r, r->msg_len);
	return r->msg_len == 0 ? frame_end(r, err, errlen) : 0;
}

int proto_frame_feed(struct proto_frame_reader *r, const uint8_t *data, size_t len, char *err, size_t errlen)
{
	const uint8_t *p = data, *end = data + len;
	int rc = 0;

	if (r->state == FRAME_FAILED) {
		snprintf(err, errlen, "frame reader already failed");
		return r->error;
	}
	while (p < end && rc == 0) {
		switch (r->state) {
		case FRAME_LENGTH: {
			const uint8_t *start = p;
			int st = proto_varint_feed(&r->length, &p, end);

			r->length_bytes += (unsigned)(p - start);
			if (st == PROTO_VARINT_BAD) {
				snprintf(err, errlen, "frame %" PRIu64 ": bad varint in the length prefix", r->frame_no);
				return frame_fail(r, -EBADMSG);
			}
			if (st == PROTO_VARINT_DONE)
				rc = frame_begin(r, err, errlen);
			break;
		}
		case FRAME_CRC:
			while (p < end && r->crc_have < FRAME_CRC_BYTES)
				r->crc_buf[r->crc_have++] = *p++;
			if (r->crc_have == FRAME_CRC_BYTES)
				rc = frame_begin_message(r, err, errlen);
			break;
		case FRAME_MESSAGE: {
			uint64_t left = r->msg_len - proto_walk_offset(&r->walk);
			size_t n = (uint64_t)(end - p) < left ? (size_t)(end - p) : (size_t)left;

			r->crc = proto_crc32c(r->crc, p, n);
			/* A walk error is reported at once, at the same offset however the body is split. */
			if ((rc = proto_walk_feed(&r->walk, p, n, err, errlen)) < 0)
				return frame_bad_message(r, rc, err, errlen);
			p += n;
			if (proto_walk_offset(&r->walk) == r->msg_len)
				rc = frame_end(r, err, errlen);
			break;
		}
		case FRAME_FAILED:
			return r->error;
		}
	}
	return rc;
}

int proto_frame_finish(struct proto_frame_reader *r, char *err, size_t errlen)
{
	if (r->state == FRAME_FAILED) {
		snprintf(err, errlen, "frame reader already failed");
		return r->error;
	}
	if (r->state == FRAME_LENGTH && r->length_bytes == 0)
		return 0;
	if (r->state == FRAME_LENGTH)
		snprintf(err, errlen, "frame %" PRIu64 ": body ends inside the length prefix", r->frame_no);
	else if (r->state == FRAME_CRC)
		snprintf(err, errlen, "frame %" PRIu64 ": body ends inside the checksum", r->frame_no);
	else
		snprintf(err, errlen, "frame %" PRIu64 ": body ends after %" PRIu64 " of %" PRIu64 " message bytes",
			 r->frame_no, proto_walk_offset(&r->walk), r->msg_len);
	return frame_fail(r, -EBADMSG);
}

const struct proto_frame_counts *proto_frame_results(const struct proto_frame_reader *r, size_t *n)
{
	*n = r->n_counts;
	return r->counts;
}

void proto_frame_set_series_cb(struct proto_frame_reader *r, proto_series_fn fn, void *ctx)
{
	proto_series_labels_set_cb(&r->labels, fn, ctx);
}

uint64_t proto_frame_skipped(const struct proto_frame_reader *r)
{
	return r->labels.skipped;
}

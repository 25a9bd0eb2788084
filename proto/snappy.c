/*
 * proto_snappy: streaming decoder for the snappy block format with a bounded window (see snappy.h).
 *
 * Format (google/snappy format_description.txt): the decoded length as a uvarint, then elements
 * whose tag byte says, in its low two bits:
 *   00 literal   length-1 in the upper six bits when below 60, else in the 1..4 little-endian
 *                bytes that follow (60 -> 1 byte, ..., 63 -> 4 bytes); then the literal bytes
 *   01 copy      length 4..11 in bits 2..4, offset = bits 5..7 << 8 | the next byte
 *   10 copy      length 1..64 in the upper six bits, offset in the next 2 bytes, little-endian
 *   11 copy      as 10 with a 4-byte offset
 * A copy repeats <length> bytes starting <offset> bytes back, one byte at a time, so a copy may
 * overlap its own output (offset 1 length 10 repeats one byte ten times).
 *
 * Output goes into one buffer of <window> + CHUNK bytes (or of the declared length, when that is
 * smaller): elements are decoded straight into it, and a copy is resolved inside it with plain
 * pointer arithmetic. When it fills, the new bytes go to the callback and the last <window> bytes
 * slide to its start. One memmove of <window> bytes per CHUNK of output costs far less than
 * taking every copy through a ring's wrap-around.
 *
 * Input may stop anywhere. An element header cut by the end of a feed waits in <pend> (at most
 * MAX_HDR bytes), and a literal cut by it leaves <lit_left> bytes for the next feed. The hot loop
 * (decode_fast) decodes straight from the input while whole elements are there and fit below the
 * output limit, without bounds checks away from both ends; everything else (cut headers and
 * literals, a full buffer, every error) goes through decode_step, one element at a time, which
 * does all the checking and reporting. The callback gets everything one feed produced in one
 * call (or one per CHUNK when the buffer slides).
 */
#include "proto/snappy.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Output decoded between two slides of the buffer, handed to the callback at once. */
#define CHUNK ((size_t)64 * 1024)
/* Bytes past the usable buffer that fast copies may overwrite (a copy writes in 16-byte steps). */
#define SLACK 64
/* Longest element header: a tag and four length or offset bytes. */
#define MAX_HDR 5
/* Input and output left over which the hot loop checks no bounds: a short literal's tag and 16
 * bytes, which also covers a copy's 5-byte header; a copy's 64 bytes. */
#define FAST_IN 17
#define FAST_OUT 64
/* The snappy format caps the decoded length at 2^32 - 1. */
#define MAX_DECLARED UINT32_MAX
/* A uvarint needs at most 10 bytes for 64 bits. */
#define MAX_VARINT_SHIFT 63

/* Element kinds, the low two bits of a tag. */
enum snappy_tag {
	TAG_LITERAL = 0,
	TAG_COPY1 = 1,
	TAG_COPY2 = 2,
	TAG_COPY4 = 3,
};

/*
 * What a tag byte says, looked up instead of worked out (as libsnappy's char_table), for
 * decode_checked and hdr_len: bits 0..7 the length (a literal's up to 60; 1 for a longer
 * literal, to which its length bytes add; a copy's), bits 8..10 the high offset bits of a copy
 * with a 1-byte offset, bits 11..13 the number of length or offset bytes after the tag (for a
 * literal's upper six bits 60..63: 1..4, written without a subtraction that would go negative,
 * and warn, in the branch not taken). Built by the preprocessor: nothing to initialise.
 */
#define TAG_EXTRA_SHIFT 11
#define TAG_ENTRY(t)                                                                                \
	(((t) & 3) == TAG_LITERAL ? ((t) >> 2 < 60 ? ((t) >> 2) + 1 : 1 | ((((t) >> 2) & 3) + 1) << TAG_EXTRA_SHIFT) \
	 : ((t) & 3) == TAG_COPY1 ? ((((t) >> 2) & 7) + 4) | ((t) >> 5) << 8 | 1 << TAG_EXTRA_SHIFT      \
	 : ((t) & 3) == TAG_COPY2 ? (((t) >> 2) + 1) | 2 << TAG_EXTRA_SHIFT                              \
				  : (((t) >> 2) + 1) | 4 << TAG_EXTRA_SHIFT)
#define TAG_ENTRY4(t) TAG_ENTRY(t), TAG_ENTRY((t) + 1), TAG_ENTRY((t) + 2), TAG_ENTRY((t) + 3)
#define TAG_ENTRY16(t) TAG_ENTRY4(t), TAG_ENTRY4((t) + 4), TAG_ENTRY4((t) + 8), TAG_ENTRY4((t) + 12)
#define TAG_ENTRY64(t) TAG_ENTRY16(t), TAG_ENTRY16((t) + 16), TAG_ENTRY16((t) + 32), TAG_ENTRY16((t) + 48)

static const uint16_t tag_table[256] = {
	TAG_ENTRY64(0), TAG_ENTRY64(64), TAG_ENTRY64(128), TAG_ENTRY64(192),
};

/* Mask keeping the first n (0..4) of four little-endian bytes. */
static const uint32_t extra_mask[5] = { 0, 0xff, 0xffff, 0xffffff, 0xffffffff };

enum snappy_state {
	SNAPPY_HEADER = 0, /* reading the decoded-length uvarint */
	SNAPPY_ELEMENTS,   /* reading literals and copies */
	SNAPPY_FAILED,     /* an error was returned; every later call returns it again */
};

struct proto_snappy {
	enum snappy_state state;
	int error;                /* negative errno returned, once state is SNAPPY_FAILED */
	size_t window;            /* history kept for back-references */
	uint64_t max_len;         /* largest declared length accepted */
	bool have_len;            /* the header has been read (and <declared> is valid) */
	uint64_t declared;        /* decoded length from the header */
	uint64_t hdr_val;         /* header uvarint accumulated so far */
	unsigned hdr_shift;       /* bits of <hdr_val> filled so far */
	uint8_t *buf;             /* decoded bytes: <window> of history, then new output; cap + SLACK bytes */
	size_t cap;               /* usable bytes of <buf> */
	size_t pos;               /* bytes of <buf> decoded */
	size_t flushed;           /* bytes of <buf> already handed to the callback (<= pos) */
	uint64_t base;            /* decoded-stream offset of buf[0]: bytes slid out so far */
	uint64_t in_off;          /* compressed bytes consumed by earlier feeds */
	uint64_t elem_off;        /* compressed offset of the current element's tag (messages) */
	uint64_t lit_left;        /* bytes of the current literal still to come */
	uint8_t pend[MAX_HDR];    /* start of an element header cut by the end of a feed */
	uint8_t npend;            /* bytes in <pend> */
};

/* One call to proto_snappy_feed: input cursor, consumer and error buffer. */
struct snappy_feed {
	const uint8_t *start;     /* first byte of this feed (for offsets in messages) */
	const uint8_t *ip;        /* next byte to read */
	const uint8_t *end;       /* one past the last byte */
	proto_snappy_out_fn out;  /* consumer of decoded bytes */
	void *ctx;                /* (ref) its argument */
	char *err;                /* message buffer, may be NULL when <errlen> is 0 */
	size_t errlen;
};

/* One decoded element header. */
struct snappy_elem {
	uint64_t len;             /* literal or copy length (a literal's is up to 2^32) */
	size_t off;               /* copy offset (0 in a corrupt copy); 0 for a literal */
	bool literal;
};

/* Put the decoder in its failed state with <rc> and a one-line message; returns <rc>. */
__attribute__((format(printf, 4, 5))) static int fail(struct proto_snappy *s, struct snappy_feed *f, int rc,
						       const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	if (f->errlen)
		vsnprintf(f->err, f->errlen, fmt, ap);
	va_end(ap);
	s->state = SNAPPY_FAILED;
	s->error = rc;
	return rc;
}

/* Compressed offset of the next input byte. */
static inline uint64_t in_offset(const struct proto_snappy *s, const struct snappy_feed *f)
{
	return s->in_off + (uint64_t)(f->ip - f->start);
}

/* Bytes in the element header that starts with <tag>. */
static inline size_t hdr_len(uint8_t tag)
{
	return 1 + (size_t)(tag_table[tag] >> TAG_EXTRA_SHIFT);
}

/* Little-endian loads; compilers turn them into single unaligned loads. */
static inline uint32_t load_le16(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

static inline uint32_t load_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Decode the complete header at <h> (hdr_len(h[0]) bytes are there) into <e>. */
static inline void parse_elem(const uint8_t *h, struct snappy_elem *e)
{
	uint8_t tag = h[0];
	uint32_t v = 0;

	switch (tag & 3) {
	case TAG_LITERAL:
		e->literal = true;
		e->off = 0;
		if ((tag >> 2) < 60) {
			e->len = (uint64_t)(tag >> 2) + 1;
			return;
		}
		for (unsigned i = 0; i < (unsigned)(tag >> 2) - 59; i++)
			v |= (uint32_t)h[1 + i] << (8 * i);
		e->len = (uint64_t)v + 1;
		return;
	case TAG_COPY1:
		e->literal = false;
		e->len = (uint64_t)((tag >> 2) & 7) + 4;
		e->off = (size_t)(tag >> 5) << 8 | h[1];
		return;
	case TAG_COPY2:
		e->literal = false;
		e->len = (uint64_t)(tag >> 2) + 1;
		e->off = load_le16(h + 1);
		return;
	default:
		e->literal = false;
		e->len = (uint64_t)(tag >> 2) + 1;
		e->off = load_le32(h + 1);
		return;
	}
}

/*
 * Write <len> (1..64) bytes at <op> copied from <off> (>= 1) bytes back, with the byte-at-a-time
 * meaning of an overlapping copy. May write up to 15 bytes past op + len (into SLACK); never
 * reads a byte it has not written or that was not there before.
 */
static inline void copy_back(uint8_t *op, size_t off, size_t len)
{
	const uint8_t *src = op - off;
	uint8_t *const end = op + len;

	/*
	 * A distance below 16 would make a 16-byte step read bytes it has yet to write. Copying the
	 * <off> bytes of the pattern once makes [src, op) repeat with period <off>, so the distance
	 * from <src> doubles with each round while <src> stays: 1 -> 2 -> 4 -> 8 -> 16.
	 */
	while (op - src < 16) {
		size_t d = (size_t)(op - src);

		memcpy(op, src, d);
		op += d;
		if (op >= end)
			return;
	}
	/* Each 16-byte step reads only bytes below the ones it writes. */
	while (op < end) {
		memcpy(op, src, 16);
		op += 16;
		src += 16;
	}
}

/* Usable end of the buffer for the next elements: its size, or the declared length if sooner. */
static inline size_t out_limit(const struct proto_snappy *s)
{
	uint64_t left = s->declared - s->base;

	return left < s->cap ? (size_t)left : s->cap;
}

/* Hand the bytes decoded since the last flush to the consumer. */
static int flush(struct proto_snappy *s, struct snappy_feed *f)
{
	int rc;

	if (s->pos == s->flushed)
		return 0;
	rc = f->out(f->ctx, s->buf + s->flushed, s->pos - s->flushed);
	s->flushed = s->pos;
	if (rc < 0)
		return fail(s, f, rc, "snappy: the consumer of decoded bytes stopped at byte %" PRIu64 " (%s)",
			    s->base + s->pos, strerror(-rc));
	return 0;
}

/*
 * Make room for <need> more bytes: flush, then keep only the last <window> bytes, at the start.
 * The caller has checked that the declared length leaves room for them, so a buffer too full can
 * only be one of window + CHUNK bytes (a buffer of the declared length never fills early), and it
 * holds more than <window> bytes, as a copy needs at most 64 of the CHUNK bytes.
 */
static int make_room(struct proto_snappy *s, struct snappy_feed *f, size_t need)
{
	size_t drop;
	int rc;

	if (s->cap - s->pos >= need)
		return 0;
	if ((rc = flush(s, f)) < 0)
		return rc;
	assert(s->pos >= s->window && s->cap == s->window + CHUNK);
	drop = s->pos - s->window;
	memmove(s->buf, s->buf + drop, s->window);
	s->base += drop;
	s->pos = s->flushed = s->window;
	return 0;
}

/*
 * Decode one element whose whole header (MAX_HDR bytes are there) starts at *<ipp>, into *<opp>,
 * if its literal bytes are all in the input before <end>, its output fits below <limit> and its
 * offset reaches only bytes the window holds; moves both cursors past it and returns true. Else
 * returns false and moves nothing: decode_step will deal with it.
 */
static inline bool decode_checked(const uint8_t **ipp, uint8_t **opp, const uint8_t *end, uint8_t *buf,
				  const uint8_t *limit, size_t window)
{
	const uint8_t *ip = *ipp;
	uint8_t *op = *opp;
	const uint32_t entry = tag_table[*ip];
	const size_t extra = entry >> TAG_EXTRA_SHIFT;
	/* Reads 4 bytes whatever the header's size: MAX_HDR bytes are there. */
	const uint32_t trailer = load_le32(ip + 1) & extra_mask[extra];
	const size_t room = (size_t)(limit - op);

	if ((*ip & 3) == TAG_LITERAL) {
		const uint8_t *lit = ip + 1 + extra;
		const size_t avail = (size_t)(end - lit);
		/* 64-bit: a 4-byte length + 1 must not wrap where size_t is 32 bits. */
		const uint64_t len = (uint64_t)(entry & 0xff) + trailer;

		if (len > avail || len > room)
			return false;
		memcpy(op, lit, (size_t)len);
		*opp = op + len;
		*ipp = lit + len;
		return true;
	}
	const size_t len = entry & 0xff;
	const size_t off = (entry & 0x700) + (size_t)trailer;

	/* A copy may reach min(<window>, bytes decoded). Before the first slide buf[0] is the first
	 * decoded byte; after it at least <window> bytes lie below <op>: op - buf serves. */
	if (len > room || off - 1 >= (size_t)(op - buf) || off > window) /* off 0 wraps to SIZE_MAX */
		return false;
	copy_back(op, off, len);
	*opp = op + len;
	*ipp = ip + 1 + extra;
	return true;
}

/*
 * The hot loop: decode whole elements from the input while each is whole in it (header and
 * literal bytes), its output fits below out_limit and its offset reaches only bytes the window
 * holds. Stops before the first element that breaks one of these, leaving it to decode_step,
 * which does the slow but complete handling (and all error reporting).
 *
 * Most elements are decoded in the safe zone, more than FAST_IN input bytes from the end and
 * FAST_OUT output bytes from the limit. There a short literal (up to 16 bytes, moved as 16) and
 * any copy (up to 64 bytes, moved in 16-byte steps) fit without a bounds check; only a copy's
 * offset is checked. Longer literals and the elements near either end go through
 * decode_checked, one at a time.
 *
 * Measured with callgrind on the SAMPLES body of a 10-series, 10-sample query (2,564 bytes
 * decoded, 809 compressed, 223 elements: half short literals, half 16-byte copies; one feed):
 * one loop with a hdr_len and a parse_elem switch and every bound checked per element took
 * 10,700 instructions (48 per element). The safe zone, each copy kind decoded in its own branch
 * (slightly cheaper than the table) and this function kept out of line (inlined into the feed,
 * it spills its cursors: ~100 more) take 6,860 (31). libsnappy's snappy_uncompress takes 12,600
 * for the same body. bench_snappy's 16 MB body, decode only: 1.48 -> 1.58 GB/s.
 */
__attribute__((noinline)) static void decode_fast(struct proto_snappy *s, struct snappy_feed *f)
{
	const uint8_t *ip = f->ip;
	const uint8_t *const end = f->end;
	uint8_t *const buf = s->buf;
	uint8_t *op = buf + s->pos;
	const uint8_t *const limit = buf + out_limit(s);
	const size_t window = s->window;
	/* Empty zones (the cursors themselves) when the input or the room is short. */
	const uint8_t *const ip_safe = end - ip > FAST_IN ? end - FAST_IN : ip;
	const uint8_t *const op_safe = limit - op > FAST_OUT ? limit - FAST_OUT : op;

	for (;;) {
		while (ip < ip_safe && op < op_safe) {
			const uint8_t tag = *ip;

			if ((tag & 3) == TAG_LITERAL) {
				const size_t len = (size_t)(tag >> 2) + 1;

				if (tag >= 16 << 2) /* longer than 16 bytes */
					break;
				memcpy(op, ip + 1, 16); /* FAST_IN and FAST_OUT leave room for 16 */
				op += len;
				ip += 1 + len;
				continue;
			}
			size_t len, off, hl;

			/* Each kind on its own: cheaper than the table once the tag's kind is tested. */
			if ((tag & 3) == TAG_COPY2) {
				len = (size_t)(tag >> 2) + 1;
				off = load_le16(ip + 1);
				hl = 3;
			} else if ((tag & 3) == TAG_COPY1) {
				len = (size_t)((tag >> 2) & 7) + 4;
				off = (size_t)(tag >> 5) << 8 | ip[1];
				hl = 2;
			} else {
				len = (size_t)(tag >> 2) + 1;
				off = load_le32(ip + 1);
				hl = 5;
			}
			if (off - 1 >= (size_t)(op - buf) || off > window) /* as in decode_checked */
				break;
			if (off >= 16) {
				/* No 16-byte step reads a byte it writes: one step for most copies. */
				const uint8_t *src = op - off;

				memcpy(op, src, 16);
				if (len > 16) {
					memcpy(op + 16, src + 16, 16);
					for (size_t i = 32; i < len; i += 16)
						memcpy(op + i, src + i, 16);
				}
			} else {
				copy_back(op, off, len);
			}
			op += len;
			ip += hl;
		}
		if (end - ip < MAX_HDR || !decode_checked(&ip, &op, end, buf, limit, window))
			break;
	}
	f->ip = ip;
	s->pos = (size_t)(op - buf);
}

/* Stream the next piece of a literal from the input into the buffer. */
static int stream_literal(struct proto_snappy *s, struct snappy_feed *f)
{
	size_t n = (size_t)(f->end - f->ip);
	int rc;

	if ((rc = make_room(s, f, 1)) < 0)
		return rc;
	if (n > s->lit_left)
		n = (size_t)s->lit_left;
	if (n > s->cap - s->pos)
		n = s->cap - s->pos;
	memcpy(s->buf + s->pos, f->ip, n);
	s->pos += n;
	f->ip += n;
	s->lit_left -= n;
	return 0;
}

/*
 * Slow path, for any state: go on with a cut literal, or gather one element header (from <pend>
 * and the input) and check and run it. Consumes at least one input byte or fails; the caller
 * makes sure there is one.
 */
static int decode_step(struct proto_snappy *s, struct snappy_feed *f)
{
	struct snappy_elem e;
	const uint8_t *h;
	uint64_t produced;
	size_t hl, take;
	int rc;

	if (s->lit_left)
		return stream_literal(s, f);
	if (s->npend == 0) {
		s->elem_off = in_offset(s, f);
		hl = hdr_len(*f->ip);
		if ((size_t)(f->end - f->ip) >= hl) {
			h = f->ip;
			f->ip += hl;
			goto have_header;
		}
	}
	/* The header is cut by a feed boundary: gather it in <pend>. */
	hl = hdr_len(s->npend ? s->pend[0] : *f->ip);
	take = hl - s->npend;
	if (take > (size_t)(f->end - f->ip))
		take = (size_t)(f->end - f->ip);
	memcpy(s->pend + s->npend, f->ip, take);
	s->npend += (uint8_t)take;
	f->ip += take;
	if (s->npend < hl)
		return 0;
	h = s->pend;
	s->npend = 0;

have_header:
	parse_elem(h, &e);
	produced = s->base + s->pos;
	if (e.len > s->declared - produced)
		return fail(s, f, -EBADMSG,
			    "snappy: %s of %" PRIu64 " bytes at input byte %" PRIu64
			    " runs past the declared length %" PRIu64,
			    e.literal ? "literal" : "copy", e.len, s->elem_off, s->declared);
	if (e.literal) {
		s->lit_left = e.len;
		return 0;
	}
	if (e.off == 0)
		return fail(s, f, -EBADMSG, "snappy: copy with offset 0 at input byte %" PRIu64, s->elem_off);
	if (e.off > produced)
		return fail(s, f, -EBADMSG,
			    "snappy: copy offset %zu at input byte %" PRIu64 " reaches before the start (%" PRIu64
			    " bytes decoded)",
			    e.off, s->elem_off, produced);
	if (e.off > s->window)
		return fail(s, f, -ERANGE,
			    "snappy: copy offset %zu at input byte %" PRIu64 " reaches past the %zu-byte window", e.off,
			    s->elem_off, s->window);
	if ((rc = make_room(s, f, (size_t)e.len)) < 0)
		return rc;
	copy_back(s->buf + s->pos, e.off, (size_t)e.len);
	s->pos += e.len;
	return 0;
}

/*
 * Read the decoded-length uvarint, byte by byte. Once whole, check it against <max_len> and the
 * format's limit, then allocate the buffer: only now, so a huge declared length costs nothing.
 */
static int read_header(struct proto_snappy *s, struct snappy_feed *f)
{
	uint64_t d;

	while (f->ip < f->end) {
		uint8_t b = *f->ip++;

		if (s->hdr_shift == MAX_VARINT_SHIFT && b > 1)
			return fail(s, f, -EBADMSG, "snappy: decoded-length varint is longer than 64 bits");
		s->hdr_val |= (uint64_t)(b & 0x7f) << s->hdr_shift;
		if (b & 0x80) {
			s->hdr_shift += 7;
			continue;
		}
		d = s->declared = s->hdr_val;
		s->have_len = true;
		if (d > s->max_len)
			return fail(s, f, -E2BIG,
				    "snappy: declared decoded length %" PRIu64 " exceeds the limit %" PRIu64, d,
				    s->max_len);
		if (d > MAX_DECLARED)
			return fail(s, f, -EBADMSG,
				    "snappy: declared decoded length %" PRIu64 " is above the format's 2^32 - 1", d);
		/* A body that fits in window + CHUNK is decoded in place and never slides. */
		s->cap = d <= CHUNK || d - CHUNK <= s->window ? (size_t)d : s->window + CHUNK;
		s->buf = malloc(s->cap + SLACK);
		if (!s->buf)
			return fail(s, f, -ENOMEM, "snappy: out of memory for a %zu-byte window buffer",
				    s->cap + SLACK);
		s->state = SNAPPY_ELEMENTS;
		return 0;
	}
	return 0;
}

struct proto_snappy *proto_snappy_new(size_t window, uint64_t max_len)
{
	struct proto_snappy *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->window = window;
	s->max_len = max_len;
	return s;
}

void proto_snappy_free(struct proto_snappy *s)
{
	if (!s)
		return;
	free(s->buf);
	free(s);
}

int proto_snappy_feed(struct proto_snappy *s, const uint8_t *data, size_t len, proto_snappy_out_fn out, void *ctx,
		      char *err, size_t errlen)
{
	struct snappy_feed f = {
		.start = data, .ip = data, .end = data, .out = out, .ctx = ctx, .err = err, .errlen = errlen,
	};
	int rc;

	if (s->state == SNAPPY_FAILED)
		return fail(s, &f, s->error, "snappy: decoder already failed (%s)", strerror(-s->error));
	if (len == 0)
		return 0; /* <data> may be NULL */
	f.end = data + len;
	if (s->state == SNAPPY_HEADER && (rc = read_header(s, &f)) < 0)
		return rc;
	while (f.ip < f.end) {
		if (s->lit_left == 0 && s->npend == 0) {
			decode_fast(s, &f);
			if (f.ip == f.end)
				break;
		}
		if ((rc = decode_step(s, &f)) < 0)
			return rc;
	}
	/* The consumer sees every byte this feed produced before the feed returns. */
	if ((rc = flush(s, &f)) < 0)
		return rc;
	s->in_off += len;
	return 0;
}

int proto_snappy_finish(struct proto_snappy *s, char *err, size_t errlen)
{
	struct snappy_feed f = { .err = err, .errlen = errlen };
	uint64_t produced = s->base + s->pos;

	if (s->state == SNAPPY_FAILED)
		return fail(s, &f, s->error, "snappy: decoder already failed (%s)", strerror(-s->error));
	if (s->state == SNAPPY_HEADER)
		return fail(s, &f, -EBADMSG, "snappy: input ends inside the decoded-length header (%" PRIu64 " bytes)",
			    s->in_off);
	if (s->npend || s->lit_left)
		return fail(s, &f, -EBADMSG, "snappy: input ends inside the %s that starts at input byte %" PRIu64,
			    s->lit_left ? "literal" : "element header", s->elem_off);
	if (produced != s->declared)
		return fail(s, &f, -EBADMSG, "snappy: input ends after %" PRIu64 " of %" PRIu64 " declared bytes",
			    produced, s->declared);
	return 0;
}

uint64_t proto_snappy_declared(const struct proto_snappy *s)
{
	return s->have_len ? s->declared : 0;
}

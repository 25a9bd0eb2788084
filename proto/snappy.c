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
 * (decode_fast) runs while whole headers are in the input and each element fits below the output
 * limit; everything else (cut headers and literals, a full buffer, every error) goes through
 * decode_step, one element at a time, which does all the checking and reporting.
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
	switch (tag & 3) {
	case TAG_LITERAL:
		return (tag >> 2) < 60 ? 1 : (size_t)(tag >> 2) - 58; /* 60 -> 2 ... 63 -> 5 */
	case TAG_COPY1:
		return 2;
	case TAG_COPY2:
		return 3;
	default:
		return 5;
	}
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
 * The hot loop: decode whole elements from the input while MAX_HDR bytes remain, each literal is
 * whole in the input, each element's output fits below out_limit, and each offset reaches only
 * bytes the window holds. Stops before the first element that breaks one of these, leaving it to
 * decode_step, which does the slow but complete handling (and all error reporting).
 */
static void decode_fast(struct proto_snappy *s, struct snappy_feed *f)
{
	const uint8_t *ip = f->ip;
	const uint8_t *const end = f->end;
	uint8_t *const buf = s->buf;
	uint8_t *op = buf + s->pos;
	uint8_t *const limit = buf + out_limit(s);
	const size_t window = s->window;

	while (end - ip >= MAX_HDR) {
		struct snappy_elem e;
		size_t hl = hdr_len(*ip);
		size_t reach;

		parse_elem(ip, &e);
		if (e.literal) {
			if (e.len > (uint64_t)(end - ip - (ptrdiff_t)hl) || e.len > (uint64_t)(limit - op))
				break;
			ip += hl;
			/* Short literals (most of them) as one fixed 16-byte move; SLACK absorbs the excess. */
			if (e.len <= 16 && end - ip >= 16)
				memcpy(op, ip, 16);
			else
				memcpy(op, ip, (size_t)e.len);
			op += e.len;
			ip += e.len;
			continue;
		}
		/* A copy may reach min(<window>, bytes decoded). Before the first slide buf[0] is the
		 * first decoded byte; after it at least <window> bytes lie below <op>: op - buf serves. */
		reach = (size_t)(op - buf) < window ? (size_t)(op - buf) : window;
		if (e.len > (uint64_t)(limit - op) || e.off - 1 >= reach) /* off 0 wraps to SIZE_MAX */
			break;
		copy_back(op, e.off, (size_t)e.len);
		op += e.len;
		ip += hl;
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

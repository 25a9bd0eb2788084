/*
 * proto_wire: incremental protobuf wire-format walker (see wire.h for the contract).
 *
 * How it keeps O(1) state whatever the split: the input is consumed byte-exactly by a small state
 * machine (enum proto_walk_state). Varints are accumulated in struct proto_varint instead of a
 * carry buffer, fixed-size and skipped fields are counted down, and each open message remembers
 * the absolute stream offset where it ends, so "does this child fit in its parent" is one
 * comparison and no per-level counters need updating as bytes flow. Levels are closed eagerly
 * (walk_settle) the moment the offset reaches their end, which is what makes empty messages and
 * messages ending exactly at a piece boundary behave identically.
 *
 * That machine costs a few hundred instructions per field, and most fields (a Sample, a Label)
 * lie wholly inside one piece. So proto_walk_feed first tries walk_fast at each key boundary: it
 * decodes whole headers in place, does the same checks, and skips or delivers contents that are
 * in the piece by moving a pointer. Whatever it cannot finish inside the piece, and every
 * malformed header, it leaves to the state machine untouched (nothing committed), so errors,
 * their messages and offsets come from one place and do not depend on the split.
 */
#include "proto/wire.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest field number protobuf allows (2^29 - 1). */
#define FIELD_NUMBER_MAX 536870911u

/* Wire types the walker accepts, as a bit set indexed by type (VARINT, I64, LEN, I32). */
#define VALID_WIRE_TYPES (1u << PROTO_WT_VARINT | 1u << PROTO_WT_I64 | 1u << PROTO_WT_LEN | 1u << PROTO_WT_I32)

/* Bytes that follow the key of a fixed-size field, by wire type (0 for the others). */
static const uint8_t fixed_size[8] = { [PROTO_WT_I64] = 8, [PROTO_WT_I32] = 4 };

/* Branch hints for the fast paths: the common case is a well-formed field inside the piece. */
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/*
 * Little-endian base-128: each byte carries 7 bits, the high bit says another byte follows.
 * Consumes at most the bytes of one varint, so the caller can resume after it.
 */
int proto_varint_feed(struct proto_varint *v, const uint8_t **p, const uint8_t *end)
{
	while (*p < end) {
		uint8_t b = *(*p)++;

		/* The 10th byte holds only bit 63: anything above 1 overflows or continues. */
		if (v->nbytes == PROTO_VARINT_MAX_BYTES - 1 && b > 1)
			return PROTO_VARINT_BAD;
		v->value |= (uint64_t)(b & 0x7f) << (7 * v->nbytes);
		v->nbytes++;
		if (!(b & 0x80))
			return PROTO_VARINT_DONE;
	}
	return PROTO_VARINT_MORE;
}

/*
 * Decode one varint lying wholly in [*<p>, <end>) and advance *<p> past it. Returns 0, or -1 with
 * nothing consumed when it runs past <end> or is invalid (the same rule as proto_varint_feed):
 * the fast paths then leave it to the byte-at-a-time decoder, which resumes across pieces and
 * words the error. One- and two-byte varints (keys, lengths, small values) are tried first.
 */
static inline int varint_whole(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
	const uint8_t *q = *p;
	uint64_t v = 0;

	if (unlikely(q == end))
		return -1;
	if (likely(q[0] < 0x80)) {
		*out = q[0];
		*p = q + 1;
		return 0;
	}
	if (likely(end - q >= 2 && q[1] < 0x80)) {
		*out = (uint64_t)(q[0] & 0x7f) | (uint64_t)q[1] << 7;
		*p = q + 2;
		return 0;
	}
	for (unsigned i = 0; i < PROTO_VARINT_MAX_BYTES && q + i < end; i++) {
		uint8_t b = q[i];

		if (i == PROTO_VARINT_MAX_BYTES - 1 && b > 1)
			return -1;
		v |= (uint64_t)(b & 0x7f) << (7 * i);
		if (!(b & 0x80)) {
			*out = v;
			*p = q + i + 1;
			return 0;
		}
	}
	return -1;
}

/* Zeroing the whole struct resets the stack, the varint and the error in one go. */
void proto_walk_init(struct proto_walk *w, const struct proto_walk_ops *ops, void *ctx, uint64_t limit)
{
	*w = (struct proto_walk){ .ops = ops, .ctx = ctx, .state = PROTO_WALK_KEY, .limit = limit };
}

/* Offset one past the innermost open message (the outermost one's limit at depth 0). */
static uint64_t enclosing_end(const struct proto_walk *w)
{
	return w->depth ? w->stack[w->depth - 1].end : w->limit;
}

/* Record a sticky failure with code <rc>; the message was already written to <err>. */
static int walk_fail(struct proto_walk *w, int rc)
{
	w->state = PROTO_WALK_FAILED;
	w->error = rc;
	return rc;
}

/*
 * Close every level whose contents end at the current offset, calling on_end for each, and
 * return to reading keys. Zero-length DESCEND/BYTES fields close here right after opening.
 */
static int walk_settle(struct proto_walk *w, char *err, size_t errlen)
{
	w->state = PROTO_WALK_KEY;
	while (w->depth > 0 && w->pos == w->stack[w->depth - 1].end) {
		const struct proto_walk_field *f = &w->stack[--w->depth].field;

		if (w->ops->on_end) {
			int rc = w->ops->on_end(w->ctx, f, err, errlen);

			if (rc < 0)
				return walk_fail(w, rc);
		}
	}
	return 0;
}

/* Fail unless the header just read (ending at w->pos) stays inside its enclosing message. */
static int check_header_inside(struct proto_walk *w, char *err, size_t errlen)
{
	if (w->pos <= enclosing_end(w))
		return 0;
	snprintf(err, errlen, "field %" PRIu32 " at byte %" PRIu64 " runs past the end of its enclosing message",
		 w->cur.number, w->cur.offset);
	return walk_fail(w, -EBADMSG);
}

/* Ask the consumer about w->cur. Returns the action, or a negative errno (walker failed). */
static int ask_consumer(struct proto_walk *w, char *err, size_t errlen)
{
	int action = w->ops->on_field(w->ctx, &w->cur, err, errlen);

	if (action < 0)
		return walk_fail(w, action);
	/* DESCEND and BYTES only make sense for LEN fields; anything else is skipped. The state
	 * machine asks about every field, so a run is a plain SKIP here. */
	if (w->cur.type != PROTO_WT_LEN || action == PROTO_WALK_SKIP_RUN)
		action = PROTO_WALK_SKIP;
	return action;
}

/*
 * A key is complete in w->varint: validate it and pick the next state. The key is
 * (field number << 3 | wire type); VARINT and LEN need a second varint before the consumer can
 * be asked, the fixed-size types are known at once and are simply counted down.
 */
static int on_key(struct proto_walk *w, char *err, size_t errlen)
{
	uint64_t key = w->varint.value;
	uint64_t number = key >> 3;
	unsigned type = (unsigned)(key & 7);

	proto_varint_reset(&w->varint);
	if (number == 0 || number > FIELD_NUMBER_MAX) {
		snprintf(err, errlen, "invalid field number %" PRIu64 " at byte %" PRIu64, number, w->cur.offset);
		return walk_fail(w, -EBADMSG);
	}
	if (type != PROTO_WT_VARINT && type != PROTO_WT_I64 && type != PROTO_WT_LEN && type != PROTO_WT_I32) {
		snprintf(err, errlen, "invalid wire type %u for field %" PRIu64 " at byte %" PRIu64, type, number,
			 w->cur.offset);
		return walk_fail(w, -EBADMSG);
	}
	w->cur.depth = w->depth;
	w->cur.number = (uint32_t)number;
	w->cur.type = (enum proto_wire_type)type;
	w->cur.value = 0;
	w->cur.data = NULL; /* the state machine does not track pieces */
	if (check_header_inside(w, err, errlen) < 0)
		return w->error;

	if (type == PROTO_WT_VARINT) {
		w->state = PROTO_WALK_VALUE;
	} else if (type == PROTO_WT_LEN) {
		w->state = PROTO_WALK_LENGTH;
	} else {
		uint64_t size = type == PROTO_WT_I64 ? 8 : 4;

		if (ask_consumer(w, err, errlen) < 0)
			return w->error;
		if (size > enclosing_end(w) - w->pos) {
			snprintf(err, errlen, "fixed-size field %" PRIu64 " at byte %" PRIu64 " runs past the end of its enclosing message",
				 number, w->cur.offset);
			return walk_fail(w, -EBADMSG);
		}
		w->skip_left = size;
		w->state = PROTO_WALK_SKIPPING;
	}
	return 0;
}

/* Fail for a DESCEND or BYTES answer at full depth (w->cur is the field that wanted a level). */
static int fail_too_deep(struct proto_walk *w, char *err, size_t errlen)
{
	snprintf(err, errlen, "messages nested deeper than %d at byte %" PRIu64, PROTO_WALK_MAX_DEPTH, w->cur.offset);
	return walk_fail(w, -EBADMSG);
}

/*
 * A LEN prefix is complete in w->varint: check that the contents fit in the enclosing message
 * (the "child longer than parent" corruption) and act on the consumer's answer: skip the
 * contents, stream them to on_bytes, or push a level and walk them as a message.
 */
static int on_length(struct proto_walk *w, char *err, size_t errlen)
{
	uint64_t len = w->varint.value;
	int action;

	proto_varint_reset(&w->varint);
	if (check_header_inside(w, err, errlen) < 0)
		return w->error;
	if (len > enclosing_end(w) - w->pos) {
		snprintf(err, errlen,
			 "field %" PRIu32 " at byte %" PRIu64 " declares %" PRIu64 " bytes but its enclosing message has %" PRIu64 " left",
			 w->cur.number, w->cur.offset, len, enclosing_end(w) - w->pos);
		return walk_fail(w, -EBADMSG);
	}
	w->cur.value = len;
	action = ask_consumer(w, err, errlen);
	if (action < 0)
		return action;
	if (action == PROTO_WALK_SKIP) {
		w->skip_left = len;
		w->state = PROTO_WALK_SKIPPING;
		return len ? 0 : walk_settle(w, err, errlen);
	}
	if (w->depth == PROTO_WALK_MAX_DEPTH)
		return fail_too_deep(w, err, errlen);
	w->stack[w->depth++] = (struct proto_walk_level){ .field = w->cur, .end = w->pos + len };
	w->stack[w->depth - 1].field.data = NULL; /* outlives the piece */
	if (action == PROTO_WALK_BYTES && len > 0) {
		w->state = PROTO_WALK_CONTENT;
		return 0;
	}
	return walk_settle(w, err, errlen);
}

/*
 * Read one varint from the input for <what> (named in the error); on DONE run <next>, which
 * consumes w->varint. Returns 0 (including "need more input") or the failure code.
 */
static int step_varint(struct proto_walk *w, const uint8_t **p, const uint8_t *end, const char *what,
		       int (*next)(struct proto_walk *, char *, size_t), char *err, size_t errlen)
{
	const uint8_t *start = *p;
	int st = proto_varint_feed(&w->varint, p, end);

	w->pos += (uint64_t)(*p - start);
	if (st == PROTO_VARINT_BAD) {
		snprintf(err, errlen, "bad varint in %s at byte %" PRIu64 " (longer than %d bytes or above 64 bits)", what,
			 w->cur.offset, PROTO_VARINT_MAX_BYTES);
		return walk_fail(w, -EBADMSG);
	}
	return st == PROTO_VARINT_DONE ? next(w, err, errlen) : 0;
}

/* A VARINT value is complete: hand it to the consumer. */
static int on_value(struct proto_walk *w, char *err, size_t errlen)
{
	w->cur.value = w->varint.value;
	proto_varint_reset(&w->varint);
	if (check_header_inside(w, err, errlen) < 0 || ask_consumer(w, err, errlen) < 0)
		return w->error;
	return walk_settle(w, err, errlen);
}

/* varint_whole for a value or length after a key: most are one byte, tested inline. */
static inline int value_whole(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
	if (likely(*p < end && **p < 0x80)) {
		*out = *(*p)++;
		return 0;
	}
	return varint_whole(p, end, out);
}

/*
 * After a SKIP_RUN answer: skip the fields at *<at> that repeat the one-byte key <kb> of the field
 * just skipped and have a one- or two-byte length, as long as they lie in the piece (up to <end>)
 * and in the enclosing message (up to <stop>); advance *<at> and *<pos> past them and return how
 * many. Those are fields the state machine would accept and ask about; anything else ends the
 * run. Two-byte lengths matter for streams: an XOR chunk of 120 samples is 150-250 bytes, and a
 * callback per chunk was 5% of the relay's CPU on a 1 GiB stream.
 */
static inline uint64_t skip_run(const uint8_t **at, const uint8_t *end, uint64_t *pos, uint64_t stop, uint8_t kb)
{
	const uint8_t *a = *at;
	/* Where the fields must end: the end of the piece or of the message, whichever is first. */
	size_t left = (uint64_t)(end - a) < stop - *pos ? (size_t)(end - a) : (size_t)(stop - *pos);
	const uint8_t *last = a + left;
	uint64_t n = 0;

	while (last - a >= 2 && a[0] == kb) {
		ptrdiff_t field; /* key, length and contents */

		if (a[1] < 0x80)
			field = 2 + (ptrdiff_t)a[1];
		else if (last - a >= 3 && a[2] < 0x80)
			field = 3 + (ptrdiff_t)((a[1] & 0x7f) | (unsigned)a[2] << 7);
		else
			break;
		if (field > last - a)
			break;
		a += field;
		n++;
	}
	*pos += (uint64_t)(a - *at);
	*at = a;
	return n;
}

/*
 * Fast path of proto_walk_feed, entered at a key boundary (state KEY, no partial varint): walk
 * the fields of [*<p>, <end>) whose headers lie wholly in the piece, in place. Returns 0 or the
 * failure code, with *<p> advanced past what was consumed; w->state then says how the state
 * machine goes on: KEY (a header that crosses the piece end, or a malformed one it must report),
 * SKIPPING or CONTENT (a value that crosses it).
 *
 * It accepts a header only where the state machine would accept it too, then does what
 * on_key/on_value/on_length would do: same checks, same w->cur for the consumer, same levels,
 * except that a BYTES field wholly in the piece is delivered and ended without a level.
 *
 * Measured with callgrind on the SAMPLES response of the small-request benchmark (2,564 bytes
 * decompressed, 806 with snappy: 10 series x 5 labels x 10 samples), fed whole: proto_scan with
 * the label collector went from ~104,000 instructions per response to ~16,500 (without the
 * collector, ~51,000 to ~10,400). That took this path (~60 per field, against ~250), SKIP_RUN
 * for Samples (~10 each after the first of a series), Labels decoded in place from
 * proto_walk_field.data, and keeping few values live across calls.
 */
static int walk_fast(struct proto_walk *w, const uint8_t **p, const uint8_t *end, char *err, size_t errlen)
{
	/*
	 * Register pressure decides the cost here: only <at>, <pos> and <stop> live across the
	 * consumer's call; what is needed after it is read back from w->cur. w->cur.depth is kept
	 * equal to w->depth as levels change rather than stored per field. w->pos is synced before
	 * each call.
	 */
	const uint8_t *at = *p;
	uint64_t pos = w->pos;
	uint64_t stop = enclosing_end(w); /* offset one past the innermost open message */
	int rc = 0;

	w->cur.depth = w->depth;
	while (at < end) {
		const uint8_t *q = at + 1, *data = NULL;
		uint64_t key = at[0], value = 0, hdr, room, skip;
		unsigned type;
		int action;

		/* Field number 0 (key < 8) and above the maximum are left to the state machine; a
		 * one-byte key cannot be above it. number - 1 wraps for 0: one comparison does both. */
		if (unlikely(key >= 0x80)) {
			q = at;
			if (varint_whole(&q, end, &key) < 0 || (key >> 3) - 1 >= FIELD_NUMBER_MAX)
				break;
		} else if (unlikely(key < 8)) {
			break;
		}
		type = (unsigned)(key & 7);
		if (type == PROTO_WT_LEN) {
			if (unlikely(value_whole(&q, end, &value) < 0))
				break;
			skip = value;
			data = value <= (uint64_t)(end - q) ? q : NULL;
		} else if (type == PROTO_WT_VARINT) {
			if (unlikely(value_whole(&q, end, &value) < 0))
				break;
			skip = 0;
		} else if (type == PROTO_WT_I64 || type == PROTO_WT_I32) {
			skip = fixed_size[type];
		} else {
			break; /* groups and reserved wire types */
		}
		/* The header, then a LEN field's contents or a fixed-size field's bytes, must fit in what
		 * is left of the enclosing message. room is 0 only at the outermost message's limit
		 * (levels close eagerly), where the state machine reports data past the end. */
		hdr = (uint64_t)(q - at);
		room = stop - pos;
		if (unlikely(hdr > room) || unlikely(skip > room - hdr))
			break;

		/* Committed: the consumer sees the field as the state machine would present it. */
		w->cur.number = (uint32_t)(key >> 3);
		w->cur.type = (enum proto_wire_type)type;
		w->cur.value = value;
		w->cur.offset = pos;
		w->cur.data = data;
		pos += hdr;
		at = q;
		w->pos = pos;
		action = w->ops->on_field(w->ctx, &w->cur, err, errlen);
		if (unlikely(action < 0)) {
			rc = walk_fail(w, action);
			break;
		}
		type = w->cur.type;
		value = w->cur.value;
		if (action == PROTO_WALK_SKIP || action == PROTO_WALK_SKIP_RUN || type != PROTO_WT_LEN) {
			/* DESCEND and BYTES only make sense for LEN fields; anything else is skipped. */
			skip = type == PROTO_WT_LEN ? value : fixed_size[type];
			if (unlikely(skip > (uint64_t)(end - at))) {
				w->skip_left = skip;
				w->state = PROTO_WALK_SKIPPING;
				break;
			}
			at += skip;
			pos += skip;
			if (action == PROTO_WALK_SKIP_RUN && type == PROTO_WT_LEN && w->cur.number < 16 && w->ops->on_run) {
				uint64_t n = skip_run(&at, end, &pos, stop, (uint8_t)(w->cur.number << 3 | PROTO_WT_LEN));

				if (n > 0) {
					w->pos = pos;
					w->ops->on_run(w->ctx, &w->cur, n);
				}
			}
		} else if (unlikely(w->depth == PROTO_WALK_MAX_DEPTH)) {
			rc = fail_too_deep(w, err, errlen);
			break;
		} else if (action == PROTO_WALK_BYTES && value <= (uint64_t)(end - at)) {
			/* Opens and closes within the piece: hand the contents over and end it without
			 * pushing a level, which the state machine would push and pop at once. */
			if (value > 0 && w->ops->on_bytes)
				w->ops->on_bytes(w->ctx, &w->cur, at, (size_t)value);
			at += value;
			pos += value;
			w->pos = pos;
			if (w->ops->on_end && (rc = w->ops->on_end(w->ctx, &w->cur, err, errlen)) < 0) {
				walk_fail(w, rc);
				break;
			}
		} else {
			/* A message to walk, or contents that run past the piece (CONTENT takes over). */
			struct proto_walk_level *top = &w->stack[w->depth];

			top->field = w->cur;
			top->field.data = NULL; /* outlives the piece */
			top->end = stop = pos + value;
			w->depth++;
			if (action == PROTO_WALK_BYTES) {
				uint64_t n = (uint64_t)(end - at); /* < value; 0 when the header ends the piece */

				if (n > 0 && w->ops->on_bytes)
					w->ops->on_bytes(w->ctx, &top->field, at, (size_t)n);
				at += n;
				pos += n;
				w->state = PROTO_WALK_CONTENT;
				break;
			}
			w->cur.depth = w->depth;
		}
		/* walk_settle, called only when a level does end here. */
		if (pos == stop && w->depth > 0) {
			w->pos = pos;
			if ((rc = walk_settle(w, err, errlen)) < 0)
				break;
			w->cur.depth = w->depth;
			stop = enclosing_end(w);
		}
	}
	w->pos = pos;
	*p = at;
	return rc;
}

int proto_walk_feed(struct proto_walk *w, const uint8_t *data, size_t len, char *err, size_t errlen)
{
	const uint8_t *p = data, *end = data + len;
	int rc = 0;

	if (w->state == PROTO_WALK_FAILED) {
		snprintf(err, errlen, "wire walker already failed");
		return w->error;
	}
	/* Each pass consumes at least one byte or completes a step; stops at the first error. */
	while (p < end && rc == 0) {
		if (w->state == PROTO_WALK_KEY && w->varint.nbytes == 0) {
			rc = walk_fast(w, &p, end, err, errlen);
			if (rc < 0 || p == end)
				break;
		}
		switch (w->state) {
		case PROTO_WALK_KEY:
			if (w->varint.nbytes == 0) {
				/* A new key may not start where the outermost message ended. */
				if (w->depth == 0 && w->pos >= w->limit) {
					snprintf(err, errlen, "data continues past the end of the message at byte %" PRIu64,
						 w->pos);
					return walk_fail(w, -EBADMSG);
				}
				w->cur.offset = w->pos;
			}
			rc = step_varint(w, &p, end, "field key", on_key, err, errlen);
			break;
		case PROTO_WALK_VALUE:
			rc = step_varint(w, &p, end, "varint value", on_value, err, errlen);
			break;
		case PROTO_WALK_LENGTH:
			rc = step_varint(w, &p, end, "length prefix", on_length, err, errlen);
			break;
		case PROTO_WALK_SKIPPING: {
			/* Skipped contents are never looked at: just advance the offset. */
			uint64_t n = (uint64_t)(end - p) < w->skip_left ? (uint64_t)(end - p) : w->skip_left;

			p += n;
			w->pos += n;
			w->skip_left -= n;
			if (w->skip_left == 0)
				rc = walk_settle(w, err, errlen);
			break;
		}
		case PROTO_WALK_CONTENT: {
			/* Hand over as much of the BYTES field as this piece holds. */
			struct proto_walk_level *top = &w->stack[w->depth - 1];
			uint64_t left = top->end - w->pos;
			uint64_t n = (uint64_t)(end - p) < left ? (uint64_t)(end - p) : left;

			if (w->ops->on_bytes)
				w->ops->on_bytes(w->ctx, &top->field, p, (size_t)n);
			p += n;
			w->pos += n;
			if (w->pos == top->end)
				rc = walk_settle(w, err, errlen);
			break;
		}
		case PROTO_WALK_FAILED:
			return w->error;
		}
	}
	return rc;
}

/* A clean end needs: no partial varint, no field being skipped or streamed, no open level. */
int proto_walk_finish(struct proto_walk *w, char *err, size_t errlen)
{
	if (w->state == PROTO_WALK_FAILED) {
		snprintf(err, errlen, "wire walker already failed");
		return w->error;
	}
	if (w->state != PROTO_WALK_KEY || w->varint.nbytes > 0) {
		if (w->state == PROTO_WALK_KEY)
			snprintf(err, errlen, "input ends inside a field key at byte %" PRIu64, w->cur.offset);
		else
			snprintf(err, errlen, "input ends inside field %" PRIu32 " that starts at byte %" PRIu64,
				 w->cur.number, w->cur.offset);
		return walk_fail(w, -EBADMSG);
	}
	if (w->depth > 0) {
		const struct proto_walk_level *top = &w->stack[w->depth - 1];

		snprintf(err, errlen, "input ends inside field %" PRIu32 " that starts at byte %" PRIu64 " (%" PRIu64 " bytes missing)",
			 top->field.number, top->field.offset, top->end - w->pos);
		return walk_fail(w, -EBADMSG);
	}
	if (w->limit != UINT64_MAX && w->pos != w->limit) {
		snprintf(err, errlen, "input ends at byte %" PRIu64 " inside a %" PRIu64 "-byte message", w->pos, w->limit);
		return walk_fail(w, -EBADMSG);
	}
	return 0;
}

/* ---- series label collector ------------------------------------------------------------- */

/* Fields of a prometheus.Label message. */
#define LABEL_NAME 1u
#define LABEL_VALUE 2u

/* Header of one series in the arena; its <n_labels> descriptors follow it directly. */
struct series_rec {
	size_t n_labels;  /* descriptors after this header */
	size_t oversized; /* nonzero: the labels did not fit (or did not decode) and were given back */
};

/* Records and descriptors are packed back to back, so each size must keep the other aligned. */
_Static_assert(sizeof(struct series_rec) % _Alignof(struct proto_label) == 0, "record breaks label alignment");
_Static_assert(sizeof(struct proto_label) % _Alignof(struct series_rec) == 0, "label breaks record alignment");

/* Strings of length 0 point here rather than at the arena's edge. */
static const char empty_string[] = "";

/* The record of the open series (ls->cur must be an offset). */
static struct series_rec *open_rec(struct proto_series_labels *ls)
{
	return (struct series_rec *)(void *)(ls->arena + ls->cur);
}

/* The descriptor of the Label opened last (the open series has at least one). */
static struct proto_label *open_label(struct proto_series_labels *ls)
{
	return (struct proto_label *)(void *)(ls->arena + ls->front) - 1;
}

/* Whether labels of the open series are still being collected. */
static int collecting(struct proto_series_labels *ls)
{
	return ls->fn && ls->cur != SIZE_MAX && !open_rec(ls)->oversized;
}

/* The open series does not fit: give back its descriptors and strings, keep the bare record. */
static void series_overflow(struct proto_series_labels *ls)
{
	struct series_rec *rec = open_rec(ls);

	rec->n_labels = 0;
	rec->oversized = 1;
	ls->front = ls->cur + sizeof(struct series_rec);
	ls->back = ls->cur_back;
	ls->fill = NULL;
	ls->in_label = 0;
}

/*
 * Keep field <number> (name or value) of the open label, <len> bytes long: reserve room for it at
 * the back (the header gives the length before any byte arrives) and point the descriptor there.
 * Returns where its bytes go (NULL for an empty string), or NULL after series_overflow when it
 * does not fit; <*lost> says which.
 */
static char *label_keep(struct proto_series_labels *ls, uint32_t number, uint64_t len, int *lost)
{
	struct proto_label *l = open_label(ls);
	char *fill = NULL;

	*lost = len > ls->back - ls->front;
	if (*lost) {
		series_overflow(ls);
		return NULL;
	}
	if (len > 0) {
		ls->back -= (size_t)len;
		fill = (char *)ls->arena + ls->back;
	}
	if (number == LABEL_NAME) {
		l->name = fill ? fill : empty_string;
		l->name_len = (size_t)len;
	} else {
		l->value = fill ? fill : empty_string;
		l->value_len = (size_t)len;
	}
	return fill;
}

/*
 * Decode a Label whose bytes are all of [<p>, <end>) in place, keeping names and values like the
 * label walker does. It accepts exactly the messages that walker accepts (field numbers, wire
 * types, varints of at most 10 bytes, nothing running past the end), so whether a series keeps
 * its labels does not depend on how the Label was split. Returns 0, or -1 for an invalid Label;
 * stops at once when the series overflows (nothing after can matter).
 */
static __attribute__((noinline)) int label_parse(struct proto_series_labels *ls, const uint8_t *p,
						 const uint8_t *end)
{
	while (p < end) {
		uint64_t key, number, v;
		unsigned type;
		char *fill;
		int lost;

		if (varint_whole(&p, end, &key) < 0)
			return -1;
		number = key >> 3;
		type = (unsigned)(key & 7);
		if (number - 1 >= FIELD_NUMBER_MAX || !(VALID_WIRE_TYPES >> type & 1))
			return -1;
		if (type == PROTO_WT_LEN) {
			if (varint_whole(&p, end, &v) < 0 || v > (uint64_t)(end - p))
				return -1;
			if (number == LABEL_NAME || number == LABEL_VALUE) {
				fill = label_keep(ls, (uint32_t)number, v, &lost);
				if (lost)
					return 0;
				if (fill)
					memcpy(fill, p, (size_t)v);
			}
			p += v;
		} else if (type == PROTO_WT_VARINT) {
			if (varint_whole(&p, end, &v) < 0)
				return -1;
		} else {
			if (fixed_size[type] > (uint64_t)(end - p))
				return -1;
			p += fixed_size[type];
		}
	}
	return 0;
}

/*
 * Whether the <len> bytes at <data> are a Label of the shape every Prometheus writes: name
 * (field 1) then value (field 2), each shorter than 128 bytes, and nothing else. If so, *<n> and
 * *<m> are their lengths; the name starts at data + 2, the value at data + n + 4.
 */
static inline int label_shape(const uint8_t *data, size_t len, size_t *n, size_t *m)
{
	return len >= 4 && data[0] == (LABEL_NAME << 3 | PROTO_WT_LEN) && (*n = data[1]) < 0x80 && *n + 4 <= len &&
	       data[*n + 2] == (LABEL_VALUE << 3 | PROTO_WT_LEN) && (*m = data[*n + 3]) < 0x80 && *n + *m + 4 == len;
}

/*
 * Copy <n> (< 128) bytes of a label string and return <dst>. Knowing the length is short, gcc
 * expands memcpy inline, with a `rep movs` from 8 bytes up that is slow to start on many CPUs;
 * names and values of 8 to 16 bytes are common, and two overlapping 8-byte moves copy them.
 */
static inline char *copy_short(unsigned char *dst, const uint8_t *src, size_t n)
{
	if (n >= 8 && n <= 16) {
		uint64_t a, b;

		memcpy(&a, src, 8);
		memcpy(&b, src + n - 8, 8);
		memcpy(dst, &a, 8);
		memcpy(dst + n - 8, &b, 8);
	} else {
		memcpy(dst, src, n);
	}
	return (char *)dst;
}

/*
 * Copy the strings of a Label of that shape into the open label, for which room is known to be
 * left: name above value, as label_parse lays them out.
 */
static inline void label_copy_shaped(struct proto_series_labels *ls, const uint8_t *data, size_t n, size_t m)
{
	struct proto_label *l = open_label(ls);

	ls->back -= n;
	l->name = n ? copy_short(ls->arena + ls->back, data + 2, n) : empty_string;
	l->name_len = n;
	ls->back -= m;
	l->value = m ? copy_short(ls->arena + ls->back, data + n + 4, m) : empty_string;
	l->value_len = m;
}

/* Label walker callback (a Label in pieces): have names and values delivered; skip the rest. */
static int label_on_field(void *ctx, const struct proto_walk_field *f, char *err, size_t errlen)
{
	struct proto_series_labels *ls = ctx;
	int lost;

	(void)err;
	(void)errlen;
	ls->fill = NULL;
	if (f->depth != 0 || f->type != PROTO_WT_LEN || (f->number != LABEL_NAME && f->number != LABEL_VALUE) ||
	    !collecting(ls))
		return PROTO_WALK_SKIP;
	ls->fill = label_keep(ls, f->number, f->value, &lost);
	return lost ? PROTO_WALK_SKIP : PROTO_WALK_BYTES;
}

/* Label walker callback: the walker delivers exactly the announced length, so <fill> stays inside
 * the reserved string. */
static void label_on_bytes(void *ctx, const struct proto_walk_field *f, const uint8_t *data, size_t len)
{
	struct proto_series_labels *ls = ctx;

	(void)f;
	if (ls->fill) {
		memcpy(ls->fill, data, len);
		ls->fill += len;
	}
}

static const struct proto_walk_ops label_ops = {
	.on_field = label_on_field,
	.on_bytes = label_on_bytes,
};

void proto_series_labels_init(struct proto_series_labels *ls)
{
	*ls = (struct proto_series_labels){ .back = PROTO_SERIES_LABELS_MAX, .cur = SIZE_MAX };
}

void proto_series_labels_deinit(struct proto_series_labels *ls)
{
	free(ls->arena);
	ls->arena = NULL;
}

/* Resetting here is what lets the inline hooks skip all work while collection is off: the state
 * they leave untouched is already clean when collection starts again. */
void proto_series_labels_set_cb(struct proto_series_labels *ls, proto_series_fn fn, void *ctx)
{
	ls->fn = fn;
	ls->ctx = ctx;
	proto_series_labels_reset(ls);
}

void proto_series_labels_reset(struct proto_series_labels *ls)
{
	ls->front = 0;
	ls->back = PROTO_SERIES_LABELS_MAX;
	ls->cur = SIZE_MAX;
	ls->cur_lost = 0;
	ls->in_label = 0;
	ls->fill = NULL;
	ls->lost = 0;
}

int proto_series_labels_begin__(struct proto_series_labels *ls, char *err, size_t errlen)
{
	ls->cur = SIZE_MAX;
	ls->cur_lost = 0;
	ls->in_label = 0;
	if (!ls->arena) {
		/* malloc aligns for any object, so descriptors at the front are aligned. */
		ls->arena = malloc(PROTO_SERIES_LABELS_MAX);
		if (!ls->arena) {
			snprintf(err, errlen, "out of memory for the series label buffer (%d bytes)", PROTO_SERIES_LABELS_MAX);
			return -ENOMEM;
		}
	}
	/* Free space only shrinks within a batch, so once a record misses, all later ones do. */
	if (sizeof(struct series_rec) > ls->back - ls->front) {
		ls->cur_lost = 1;
		ls->lost++;
		return 0;
	}
	ls->cur = ls->front;
	ls->cur_back = ls->back;
	*open_rec(ls) = (struct series_rec){ 0 };
	ls->front += sizeof(struct series_rec);
	return 0;
}

/* Open a Label of <len> bytes in the open series (proto_series_labels_label). */
static inline int label_open(struct proto_series_labels *ls, uint64_t len)
{
	ls->in_label = 0;
	if (!collecting(ls))
		return 0;
	if (sizeof(struct proto_label) > ls->back - ls->front) {
		series_overflow(ls);
		return 0;
	}
	ls->front += sizeof(struct proto_label);
	/* proto3 default: a Label without name or value has an empty one. */
	*open_label(ls) = (struct proto_label){ .name = empty_string, .value = empty_string };
	open_rec(ls)->n_labels++;
	/* The label walker (a few hundred bytes) is set up only if the Label arrives in pieces. */
	ls->label_len = len;
	ls->label_walking = 0;
	ls->in_label = 1;
	return 1;
}

int proto_series_labels_label__(struct proto_series_labels *ls, uint64_t len)
{
	return label_open(ls, len);
}

/*
 * A piece of a Label that arrives in pieces: decode it with the label walker, set up at the first
 * piece. Kept out of line so that the common path of proto_series_labels_bytes__ needs no stack
 * frame. A Label that is not a valid message loses the series its labels, like one that does not
 * fit: the caller's own walk never looked inside Labels, so its verdict must not depend on them.
 */
static __attribute__((noinline)) void label_feed(struct proto_series_labels *ls, const uint8_t *data, size_t len)
{
	char err[160];

	if (!ls->label_walking) {
		proto_walk_init(&ls->label_walk, &label_ops, ls, ls->label_len);
		ls->label_walking = 1;
	}
	if (proto_walk_feed(&ls->label_walk, data, len, err, sizeof(err)) < 0)
		series_overflow(ls);
}

/*
 * Decode the open Label from all of its bytes at once (the same verdict as label_feed, see
 * label_parse); it then needs no label_end. The usual shape is kept without label_parse: both
 * strings fit exactly when their sum does.
 */
static inline void label_whole(struct proto_series_labels *ls, const uint8_t *data, size_t len)
{
	size_t n, m;

	if (label_shape(data, len, &n, &m)) {
		if (n + m > ls->back - ls->front)
			series_overflow(ls);
		else
			label_copy_shaped(ls, data, n, m);
	} else if (label_parse(ls, data, data + len) < 0) {
		series_overflow(ls);
	}
	ls->in_label = 0;
	ls->fill = NULL;
}

void proto_series_labels_bytes__(struct proto_series_labels *ls, const uint8_t *data, size_t len)
{
	if (unlikely(ls->label_walking || len != ls->label_len))
		label_feed(ls, data, len);
	else
		label_whole(ls, data, len); /* the common case: all of it in one piece */
}

void proto_series_labels_whole__(struct proto_series_labels *ls, const uint8_t *data, size_t len)
{
	size_t n, m;

	/*
	 * The usual Label, as label_open then label_whole would keep it, with one test for room: the
	 * descriptor and both strings fit exactly when their sum does, and a series that does not fit
	 * ends up the same (series_overflow) whatever was reserved first. Callgrind: ~113 -> ~100
	 * instructions per Label, half of them copying (with the nested walker, ~1,000).
	 */
	if (likely(label_shape(data, len, &n, &m)) && collecting(ls)) {
		if (sizeof(struct proto_label) + n + m > ls->back - ls->front) {
			series_overflow(ls);
			return;
		}
		ls->front += sizeof(struct proto_label);
		open_rec(ls)->n_labels++;
		label_copy_shaped(ls, data, n, m);
		ls->in_label = 0;
		ls->fill = NULL;
		return;
	}
	if (label_open(ls, len))
		label_whole(ls, data, len);
}

void proto_series_labels_label_end__(struct proto_series_labels *ls)
{
	char err[160];

	/* Without a byte delivered, the Label is complete only if it is empty. */
	if (ls->label_walking ? proto_walk_finish(&ls->label_walk, err, sizeof(err)) < 0 : ls->label_len > 0)
		series_overflow(ls);
	ls->in_label = 0;
	ls->fill = NULL;
}

/* Also sound for a series that opened before the callback was set: it has neither record nor
 * place in <lost>, so there is nothing to drop. */
void proto_series_labels_end__(struct proto_series_labels *ls, int keep)
{
	if (!keep && ls->cur_lost) {
		ls->lost--;
	} else if (!keep && ls->cur != SIZE_MAX) {
		ls->front = ls->cur;
		ls->back = ls->cur_back;
	}
	ls->cur = SIZE_MAX;
	ls->cur_lost = 0;
	ls->in_label = 0;
	ls->fill = NULL;
}

void proto_series_labels_flush(struct proto_series_labels *ls, size_t query_index, int drop_first)
{
	size_t at = 0;

	if (!ls->fn)
		return; /* set_cb emptied the batch when collection stopped */
	/* The first series of a batch always gets a record: the arena is empty when it opens. */
	while (at < ls->front) {
		const struct series_rec *rec = (const struct series_rec *)(const void *)(ls->arena + at);
		const struct proto_label *labels = (const struct proto_label *)(const void *)(rec + 1);

		if (!drop_first) {
			if (rec->oversized)
				ls->skipped++;
			ls->fn(ls->ctx, query_index, rec->n_labels ? labels : NULL, rec->n_labels);
		}
		drop_first = 0;
		at += sizeof(*rec) + rec->n_labels * sizeof(*labels);
	}
	for (; ls->lost > 0; ls->lost--) {
		ls->skipped++;
		ls->fn(ls->ctx, query_index, NULL, 0);
	}
	proto_series_labels_reset(ls);
}

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
 */
#include "proto/wire.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest field number protobuf allows (2^29 - 1). */
#define FIELD_NUMBER_MAX 536870911u

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
	/* DESCEND and BYTES only make sense for LEN fields; anything else is skipped. */
	if (w->cur.type != PROTO_WT_LEN)
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
	if (w->depth == PROTO_WALK_MAX_DEPTH) {
		snprintf(err, errlen, "messages nested deeper than %d at byte %" PRIu64, PROTO_WALK_MAX_DEPTH, w->cur.offset);
		return walk_fail(w, -EBADMSG);
	}
	w->stack[w->depth++] = (struct proto_walk_level){ .field = w->cur, .end = w->pos + len };
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
 * Label walker callback: reserve room at the back for a name or value (whose length the header
 * gives before any byte arrives) and have its bytes delivered; skip everything else.
 */
static int label_on_field(void *ctx, const struct proto_walk_field *f, char *err, size_t errlen)
{
	struct proto_series_labels *ls = ctx;
	struct proto_label *l;
	const char *at = empty_string;

	(void)err;
	(void)errlen;
	ls->fill = NULL;
	if (f->depth != 0 || f->type != PROTO_WT_LEN || (f->number != LABEL_NAME && f->number != LABEL_VALUE) ||
	    !collecting(ls))
		return PROTO_WALK_SKIP;
	if (f->value > ls->back - ls->front) {
		series_overflow(ls);
		return PROTO_WALK_SKIP;
	}
	if (f->value > 0) {
		ls->back -= (size_t)f->value;
		at = (const char *)ls->arena + ls->back;
		ls->fill = (char *)ls->arena + ls->back;
	}
	l = open_label(ls);
	if (f->number == LABEL_NAME) {
		l->name = at;
		l->name_len = (size_t)f->value;
	} else {
		l->value = at;
		l->value_len = (size_t)f->value;
	}
	return PROTO_WALK_BYTES;
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

int proto_series_labels_label__(struct proto_series_labels *ls, uint64_t len)
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
	proto_walk_init(&ls->label_walk, &label_ops, ls, len);
	ls->in_label = 1;
	return 1;
}

/*
 * A Label that is not a valid message loses the series its labels, like one that does not fit:
 * the caller's own walk never looked inside Labels, so its verdict must not depend on them.
 */
void proto_series_labels_bytes__(struct proto_series_labels *ls, const uint8_t *data, size_t len)
{
	char err[160];

	if (proto_walk_feed(&ls->label_walk, data, len, err, sizeof(err)) < 0)
		series_overflow(ls);
}

void proto_series_labels_label_end__(struct proto_series_labels *ls)
{
	char err[160];

	if (proto_walk_finish(&ls->label_walk, err, sizeof(err)) < 0)
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

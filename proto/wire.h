/*
 * proto_wire: incremental protobuf wire-format walker shared by proto_scan and proto_frame.
 *
 * Bytes arrive in pieces split at arbitrary offsets. The walker never buffers a field: a header
 * that lies in one piece is decoded in place, one that straddles pieces is accumulated a byte at
 * a time in a fixed-size state, and field contents are either skipped, handed to the caller (in
 * place, or piece by piece), or walked as a nested message. A consumer supplies one callback
 * that sees each field once its header is complete and decides what to do with it. The fields
 * and verdicts do not depend on the split; the pieces given to on_bytes do, and so do
 * proto_walk_field.data and the runs of PROTO_WALK_SKIP_RUN.
 *
 * The walker struct is public so that it can be embedded without an allocation; treat its
 * members as private.
 */
#ifndef PROMGUARD_PROTO_WIRE_H
#define PROMGUARD_PROTO_WIRE_H

#include <stddef.h>
#include <stdint.h>

/* Longest valid varint: 64 bits in 7-bit groups. */
#define PROTO_VARINT_MAX_BYTES 10

/* Nesting the walker can follow (consumers here need at most 3). */
#define PROTO_WALK_MAX_DEPTH 8

/* Wire types (protobuf encoding spec); 3 and 4 are deprecated groups and rejected. */
enum proto_wire_type {
	PROTO_WT_VARINT = 0,
	PROTO_WT_I64 = 1,
	PROTO_WT_LEN = 2,
	PROTO_WT_I32 = 5,
};

/* Incremental unsigned LEB128 decoder; zero-initialise (or proto_varint_reset) before use. */
struct proto_varint {
	uint64_t value; /* bits accumulated so far */
	unsigned nbytes; /* bytes consumed so far */
};

enum proto_varint_status {
	PROTO_VARINT_MORE = 0, /* all input consumed, varint still open */
	PROTO_VARINT_DONE = 1, /* v->value holds the result */
	PROTO_VARINT_BAD = -1, /* more than 10 bytes, or bits beyond 64 */
};

static inline void proto_varint_reset(struct proto_varint *v)
{
	v->value = 0;
	v->nbytes = 0;
}

/*
 * Consume bytes from *<p> (up to <end>) into <v>, advancing *<p> past the bytes used.
 * Returns an enum proto_varint_status. After DONE or BAD, reset before decoding the next one.
 */
int proto_varint_feed(struct proto_varint *v, const uint8_t **p, const uint8_t *end);

/* What the consumer wants done with a field's value. */
enum proto_walk_action {
	PROTO_WALK_SKIP = 0,    /* skip the value (for LEN fields: count the bytes down) */
	PROTO_WALK_DESCEND = 1, /* LEN only: walk the contents as a nested message */
	PROTO_WALK_BYTES = 2,   /* LEN only: deliver the contents through on_bytes */
	PROTO_WALK_SKIP_RUN = 3, /* LEN only: SKIP, and the walker may skip the fields right after it
				  * with the same key without asking, reporting them through on_run */
};

/* A field whose header (key, plus the value for VARINT or the length for LEN) is complete. */
struct proto_walk_field {
	unsigned depth;      /* 0 = the outermost message */
	uint32_t number;     /* field number, >= 1 */
	enum proto_wire_type type;
	uint64_t value;      /* VARINT: the value; LEN: the content length; else 0 */
	uint64_t offset;     /* stream offset of the field's key */
	/* LEN: (ref) its contents, when all of them are in the piece being fed, for on_field to read in
	 * place (valid during that call); else NULL. Whether it is set depends on the split. */
	const uint8_t *data;
};

struct proto_walk_ops {
	/*
	 * Required. Decide what to do with field <f>. Return an enum proto_walk_action, or a negative
	 * errno after writing one line into <err> (the walk then fails with that code).
	 */
	int (*on_field)(void *ctx, const struct proto_walk_field *f, char *err, size_t errlen);
	/* Optional. A piece of the contents of a LEN field that on_field answered BYTES. */
	void (*on_bytes)(void *ctx, const struct proto_walk_field *f, const uint8_t *data, size_t len);
	/* Optional. The end of a field that on_field answered DESCEND or BYTES. */
	int (*on_end)(void *ctx, const struct proto_walk_field *f, char *err, size_t errlen);
	/*
	 * Optional. <n> >= 1 fields that directly followed field <f> (answered SKIP_RUN) in the same
	 * message, with its number and wire type, were skipped without on_field. A consumer answers
	 * SKIP_RUN only where on_field would answer SKIP_RUN for each such field too, and on_run must
	 * do what those <n> on_field calls would have done. The walker runs only through valid fields
	 * that lie in the piece being fed; which fields come this way depends on the split, but each
	 * field is reported exactly once, by on_field or by on_run. Without on_run, SKIP_RUN is SKIP.
	 */
	void (*on_run)(void *ctx, const struct proto_walk_field *f, uint64_t n);
};

/* One open message or BYTES field on the walker's stack. */
struct proto_walk_level {
	struct proto_walk_field field; /* the field that opened this level */
	uint64_t end;                  /* stream offset one past its contents */
};

/* Walker state machine: what the next input bytes are. */
enum proto_walk_state {
	PROTO_WALK_KEY = 0, /* a field key (or the end of the current message) */
	PROTO_WALK_VALUE,   /* a VARINT value */
	PROTO_WALK_LENGTH,  /* a LEN length prefix */
	PROTO_WALK_SKIPPING,/* <skip_left> bytes to drop */
	PROTO_WALK_CONTENT, /* BYTES contents delivered to on_bytes */
	PROTO_WALK_FAILED,  /* sticky error */
};

struct proto_walk {
	const struct proto_walk_ops *ops; /* (ref) */
	void *ctx;                        /* (ref) passed to every callback */
	enum proto_walk_state state;
	struct proto_varint varint;       /* key, value or length being read */
	struct proto_walk_field cur;      /* field whose header is being read */
	uint64_t pos;                     /* stream offset of the next byte */
	uint64_t skip_left;               /* PROTO_WALK_SKIPPING: bytes still to drop */
	uint64_t limit;                   /* offset one past the outermost message */
	unsigned depth;                   /* levels open in <stack> */
	struct proto_walk_level stack[PROTO_WALK_MAX_DEPTH];
	int error;                        /* negative errno once failed */
};

/*
 * Start walking a new outermost message of <limit> bytes (UINT64_MAX: unbounded, ends when the
 * input ends). <ops> and <ctx> are borrowed for the walker's lifetime.
 */
void proto_walk_init(struct proto_walk *w, const struct proto_walk_ops *ops, void *ctx, uint64_t limit);

/*
 * Feed <len> bytes. Returns 0, or a negative errno with one line in <err>: -EBADMSG for a bad
 * varint, a group or unknown wire type, field number 0, a field running past its enclosing
 * message, or nesting deeper than PROTO_WALK_MAX_DEPTH; or the code a callback returned.
 * A bounded walker must not be fed past its limit (-EBADMSG). After an error it stays failed.
 */
int proto_walk_feed(struct proto_walk *w, const uint8_t *data, size_t len, char *err, size_t errlen);

/*
 * Declare the end of input. Returns 0 if the walker stands at a field boundary of the outermost
 * message (and, when bounded, at its limit); -EBADMSG with a line naming the open field otherwise.
 */
int proto_walk_finish(struct proto_walk *w, char *err, size_t errlen);

/* Bytes consumed so far. */
static inline uint64_t proto_walk_offset(const struct proto_walk *w)
{
	return w->pos;
}

/* One label of a series as it appears on the wire (not NUL-terminated). */
struct proto_label {
	const char *name;
	size_t name_len;
	const char *value;
	size_t value_len;
};

/*
 * Called once per series of a response with its labels, in wire order. <labels> and the bytes
 * they point to are valid during the call only. <query_index> is the QueryResult position
 * (SAMPLES) or the frame's query_index (streams).
 */
typedef void (*proto_series_fn)(void *ctx, size_t query_index, const struct proto_label *labels,
				size_t n_labels);

/* Label bytes kept per series for proto_series_fn; a series with more is reported without labels
 * (n_labels 0) and counted in the reader's skipped figure. */
#define PROTO_SERIES_LABELS_MAX 16384

/*
 * Series label collector shared by proto_scan and proto_frame: takes the bytes of each Label
 * message of the series being walked, as the caller's walker delivers them, decodes them (in
 * place when a Label arrives in one piece, with a walker of its own when it is split), copies
 * names and values into one buffer of PROTO_SERIES_LABELS_MAX bytes, and reports the series
 * through a proto_series_fn.
 *
 * The buffer is a batch of series, each a record followed by its label descriptors, packed from
 * the front, with the strings packed from the back. What a series "costs" is therefore its names
 * and values plus one struct proto_label per label and one record; a series that does not fit,
 * or whose Labels are not valid messages, is kept as a record without labels and reported with
 * n_labels 0. SAMPLES report each series as it ends (batches of one); streams batch a frame's
 * series until its query_index is known.
 *
 * Off (no callback) it allocates nothing, copies nothing, and every hook returns at once.
 * Members are private.
 */
struct proto_series_labels {
	proto_series_fn fn;      /* (ref) NULL: collection off */
	void *ctx;               /* (ref) passed to <fn> */
	unsigned char *arena;    /* PROTO_SERIES_LABELS_MAX bytes, allocated by the first series */
	size_t front;            /* end of the records and descriptors packed from the start */
	size_t back;             /* start of the strings packed from the end */
	size_t cur;              /* arena offset of the open series' record; SIZE_MAX: none or no room */
	size_t cur_back;         /* <back> when the open series began, to give its strings back */
	int cur_lost;            /* the open series found no room for a record and is one of <lost> */
	int in_label;            /* a Label of the open series is being collected */
	int label_walking;       /* ... in pieces, by <label_walk> (else none of it has arrived yet) */
	uint64_t label_len;      /* that Label's announced length */
	struct proto_walk label_walk; /* walker over a Label whose bytes arrive in pieces (set up lazily) */
	char *fill;              /* where the next bytes of the open name or value go; NULL: none */
	uint64_t lost;           /* series of the batch that found no room even for a record */
	uint64_t skipped;        /* series reported without their labels, since init */
};

void proto_series_labels_init(struct proto_series_labels *ls);

/* Free the buffer. The collector may be initialised again afterwards. */
void proto_series_labels_deinit(struct proto_series_labels *ls);

/*
 * Start (<fn> set) or stop (<fn> NULL) collecting, from the next series on; a pending batch and
 * the open series are dropped unreported.
 */
void proto_series_labels_set_cb(struct proto_series_labels *ls, proto_series_fn fn, void *ctx);

/* Forget the batch and the open series without reporting them (a new frame begins). */
void proto_series_labels_reset(struct proto_series_labels *ls);

/*
 * The hooks below are inline so that, with collection off, a walker pays one branch per call
 * and no function call; the __ variants do the work.
 */
int proto_series_labels_begin__(struct proto_series_labels *ls, char *err, size_t errlen);
int proto_series_labels_label__(struct proto_series_labels *ls, uint64_t len);
void proto_series_labels_whole__(struct proto_series_labels *ls, const uint8_t *data, size_t len);
void proto_series_labels_bytes__(struct proto_series_labels *ls, const uint8_t *data, size_t len);
void proto_series_labels_label_end__(struct proto_series_labels *ls);
void proto_series_labels_end__(struct proto_series_labels *ls, int keep);

/*
 * A series message opens. Returns 0, or -ENOMEM with one line in <err> when the buffer cannot be
 * allocated (the collector is then unchanged and the caller should fail).
 */
static inline int proto_series_labels_begin(struct proto_series_labels *ls, char *err, size_t errlen)
{
	return ls->fn ? proto_series_labels_begin__(ls, err, errlen) : 0;
}

/*
 * A Label message of <len> bytes opens in the open series. Returns 1 when it is being collected:
 * pass its contents to proto_series_labels_bytes, then call proto_series_labels_label_end.
 * Its name (field 1) and value (field 2) are kept, a later one replacing an earlier one as in
 * protobuf; other fields are skipped.
 */
static inline int proto_series_labels_label(struct proto_series_labels *ls, uint64_t len)
{
	return ls->fn ? proto_series_labels_label__(ls, len) : 0;
}

/*
 * A Label message of <len> bytes, all of them at <data>: proto_series_labels_label, _bytes and
 * _label_end in one call (for a walker that has them in place, see proto_walk_field.data).
 */
static inline void proto_series_labels_whole(struct proto_series_labels *ls, const uint8_t *data, size_t len)
{
	if (ls->fn)
		proto_series_labels_whole__(ls, data, len);
}

/* The next <len> bytes of the Label being collected (any split); ignored when there is none. */
static inline void proto_series_labels_bytes(struct proto_series_labels *ls, const uint8_t *data, size_t len)
{
	if (ls->in_label)
		proto_series_labels_bytes__(ls, data, len);
}

/* The Label ends (after exactly the announced bytes). */
static inline void proto_series_labels_label_end(struct proto_series_labels *ls)
{
	if (ls->in_label)
		proto_series_labels_label_end__(ls);
}

/* The open series ends: <keep> 1 adds it to the batch, 0 drops it (it continues the previous). */
static inline void proto_series_labels_end(struct proto_series_labels *ls, int keep)
{
	if (ls->fn)
		proto_series_labels_end__(ls, keep);
}

/*
 * Report every series of the batch, in order, with <query_index>, then empty the batch. With
 * <drop_first>, the batch's first series continues one reported earlier and is left out.
 */
void proto_series_labels_flush(struct proto_series_labels *ls, size_t query_index, int drop_first);

#endif

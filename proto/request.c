/*
 * proto_request: decode, validate, print and encode snappy-compressed prometheus.ReadRequest
 * bodies (see request.h). The only file in promguard that touches the generated remote.pb-c.h.
 *
 * Decoding order matters for memory safety: the compressed length and the decoded length from
 * the snappy header are both checked against the cap before a byte is allocated, so a 20-byte
 * body claiming 4 GiB costs nothing. Every allocation (the decompressed copy, the protobuf-c
 * message, the plain-C view) goes through the caller's struct proto_alloc, which is how the
 * buffer pool budgets request decoding.
 */
#include "proto/request.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <snappy-c.h>

#include "remote.pb-c.h"

/* Private half of a decoded request; proto_request.impl_ points here. */
struct request_impl {
	struct proto_request pub;         /* the view handed to the caller */
	struct proto_alloc alloc;         /* caller's allocator, or malloc/free */
	ProtobufCAllocator pb_alloc;      /* protobuf-c adapter over <alloc> */
	int alloc_failed;                 /* an allocation returned NULL */
	struct proto_matcher *matchers;   /* owned: every query's matchers, in query order */
	const char **grouping;            /* owned: every query's hint grouping labels (ref strings) */
	Prometheus__ReadRequest *msg;     /* owned; freed with free_unpacked(pb_alloc) */
};

/* ---- allocation ------------------------------------------------------------------------- */

/* malloc/free behind the struct proto_alloc interface, used when decode gets NULL. */
static void *default_alloc(void *ctx, size_t size)
{
	(void)ctx;
	return malloc(size);
}

static void default_free(void *ctx, void *ptr)
{
	(void)ctx;
	free(ptr);
}

/*
 * Allocate through the request's allocator, remembering failures to tell ENOMEM from EINVAL:
 * protobuf-c's unpack returns NULL for both. Also the ProtobufCAllocator hook (<data> = impl).
 * Zero-byte requests get one byte so that NULL always means failure.
 */
static void *impl_alloc(void *data, size_t size)
{
	struct request_impl *impl = data;
	void *p = impl->alloc.alloc(impl->alloc.ctx, size ? size : 1);

	if (!p)
		impl->alloc_failed = 1;
	return p;
}

/* Free through the request's allocator; NULL is ignored. Also the ProtobufCAllocator hook. */
static void impl_free(void *data, void *ptr)
{
	struct request_impl *impl = data;

	if (ptr && impl->alloc.free)
		impl->alloc.free(impl->alloc.ctx, ptr);
}

/* ---- text output with snprintf semantics --------------------------------------------------- */

/* Output buffer: writes what fits, always terminates, and counts what the full text needs. */
struct sbuf {
	char *buf;  /* (ref) caller's buffer, may be NULL when cap is 0 */
	size_t cap; /* its size */
	size_t len; /* length of the full text so far */
};

/* Start writing into <buf> of <cap> bytes (may be NULL with <cap> 0). */
static void sb_init(struct sbuf *b, char *buf, size_t cap)
{
	*b = (struct sbuf){ .buf = buf, .cap = cap };
	if (cap)
		buf[0] = '\0';
}

/* Append <n> bytes: copy what fits before the terminator, count all of them. */
static void sb_putn(struct sbuf *b, const char *s, size_t n)
{
	if (b->cap > 0 && b->len < b->cap - 1) {
		size_t room = b->cap - 1 - b->len;
		size_t k = n < room ? n : room;

		memcpy(b->buf + b->len, s, k);
		b->buf[b->len + k] = '\0';
	}
	b->len += n;
}

static void sb_puts(struct sbuf *b, const char *s)
{
	sb_putn(b, s, strlen(s));
}

/* Short formatted pieces only (numbers, durations): longer output is cut at 63 bytes. */
static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	char tmp[64];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n > 0)
		sb_putn(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* ---- formatting helpers ----------------------------------------------------------------- */

/* RFC 3339 UTC with milliseconds, e.g. 2026-11-22T03:00:00.000Z; raw ms if out of range. */
static void put_time(struct sbuf *b, int64_t ms)
{
	/* Floor division so that negative times keep a positive millisecond part. The fraction
	 * comes from the remainder, not from ms - sec * 1000: near INT64_MIN (a client may send
	 * any int64) sec * 1000 overflows (fuzz_request: regressions/request/int64-min-start-ms). */
	int64_t sec = ms / 1000 - (ms % 1000 < 0);
	int64_t frac = ms % 1000 < 0 ? ms % 1000 + 1000 : ms % 1000;
	time_t t = (time_t)sec;
	struct tm tm;
	char out[64];

	if (!gmtime_r(&t, &tm) || tm.tm_year + 1900 > 9999 || tm.tm_year + 1900 < 0 ||
	    !strftime(out, sizeof(out), "%Y-%m-%dT%H:%M:%S", &tm)) {
		sb_printf(b, "%" PRId64 "ms", ms);
		return;
	}
	sb_printf(b, "%s.%03dZ", out, (int)frac);
}

/* Duration in Prometheus notation (1d2h, 15s, 500ms, 0s). */
static void put_duration(struct sbuf *b, int64_t ms)
{
	static const struct {
		const char *unit;
		uint64_t ms;
	} units[] = {
		{ "y", 365ull * 24 * 3600 * 1000 }, { "w", 7ull * 24 * 3600 * 1000 }, { "d", 24ull * 3600 * 1000 },
		{ "h", 3600ull * 1000 },            { "m", 60ull * 1000 },            { "s", 1000 },
		{ "ms", 1 },
	};
	uint64_t left = ms < 0 ? -(uint64_t)ms : (uint64_t)ms;

	if (ms == 0) {
		sb_puts(b, "0s");
		return;
	}
	if (ms < 0)
		sb_puts(b, "-");
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (left >= units[i].ms) {
			sb_printf(b, "%" PRIu64 "%s", left / units[i].ms, units[i].unit);
			left %= units[i].ms;
		}
	}
}

/* PromQL double-quoted string: escapes \ and ", control bytes as \n \t \r or \xNN. */
static void put_quoted(struct sbuf *b, const char *s)
{
	sb_puts(b, "\"");
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '\\' || *p == '"') {
			char esc[2] = { '\\', (char)*p };

			sb_putn(b, esc, 2);
		} else if (*p == '\n') {
			sb_puts(b, "\\n");
		} else if (*p == '\t') {
			sb_puts(b, "\\t");
		} else if (*p == '\r') {
			sb_puts(b, "\\r");
		} else if (*p < 0x20 || *p == 0x7f) {
			sb_printf(b, "\\x%02x", *p);
		} else {
			sb_putn(b, (const char *)p, 1);
		}
	}
	sb_puts(b, "\"");
}

/* [a-zA-Z_:][a-zA-Z0-9_:]* when <colon> (metric names), [a-zA-Z_][a-zA-Z0-9_]* otherwise. */
static int is_legacy_name(const char *s, int colon)
{
	if (!*s)
		return 0;
	for (const char *p = s; *p; p++) {
		char c = *p;
		int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':') ||
			 (p != s && c >= '0' && c <= '9');

		if (!ok)
			return 0;
	}
	return 1;
}

/* PromQL operator of a matcher type. */
static const char *match_op(enum proto_match_type t)
{
	switch (t) {
	case PROTO_MATCH_EQ:
		return "=";
	case PROTO_MATCH_NEQ:
		return "!=";
	case PROTO_MATCH_RE:
		return "=~";
	case PROTO_MATCH_NRE:
		return "!~";
	}
	return "?"; /* not reached: decode rejects unknown types */
}

/* `name="value"`; a name outside the legacy charset is quoted, as PromQL 3 does. */
static void put_matcher(struct sbuf *b, const struct proto_matcher *m)
{
	if (is_legacy_name(m->name, 0))
		sb_puts(b, m->name);
	else
		put_quoted(b, m->name);
	sb_puts(b, match_op(m->type));
	put_quoted(b, m->value);
}

/* ---- printers --------------------------------------------------------------------------- */

/*
 * An EQ matcher on __name__ with a valid metric name becomes the leading name when it is the
 * only matcher on __name__; all other matchers follow in braces in their original order (a lone
 * name prints without braces).
 */
size_t proto_selector_print(const struct proto_query *q, char *buf, size_t n)
{
	struct sbuf b;
	size_t name_at = SIZE_MAX, name_matchers = 0;
	int first = 1;

	sb_init(&b, buf, n);
	for (size_t i = 0; i < q->n_matchers; i++) {
		const struct proto_matcher *m = &q->matchers[i];

		if (strcmp(m->name, "__name__") != 0)
			continue;
		name_matchers++;
		if (m->type == PROTO_MATCH_EQ && is_legacy_name(m->value, 1))
			name_at = i;
	}
	/* `a{__name__="b"}` names the metric twice, which PromQL (and proto_selector_parse) refuse:
	 * with a second __name__ matcher, print them all in braces so that the text parses back
	 * (fuzz_selector: regressions/selector/two-name-matchers-print-unparsable). */
	if (name_matchers != 1)
		name_at = SIZE_MAX;
	if (name_at != SIZE_MAX) {
		sb_puts(&b, q->matchers[name_at].value);
		if (q->n_matchers == 1)
			return b.len;
	}
	sb_puts(&b, "{");
	for (size_t i = 0; i < q->n_matchers; i++) {
		if (i == name_at)
			continue;
		if (!first)
			sb_puts(&b, ",");
		first = 0;
		put_matcher(&b, &q->matchers[i]);
	}
	sb_puts(&b, "}");
	return b.len;
}

size_t proto_range_print(const struct proto_query *q, char *buf, size_t n)
{
	struct sbuf b;

	sb_init(&b, buf, n);
	sb_puts(&b, "[");
	put_time(&b, q->start_ms);
	sb_puts(&b, ",");
	put_time(&b, q->end_ms);
	sb_puts(&b, "]");
	return b.len;
}

size_t proto_hints_print(const struct proto_query *q, char *buf, size_t n)
{
	const struct proto_hints *h = &q->hints;
	struct sbuf b;
	const char *sep = "";

	sb_init(&b, buf, n);
	if (!h->present)
		return 0;
	if (h->step_ms) {
		sb_puts(&b, "step=");
		put_duration(&b, h->step_ms);
		sep = " ";
	}
	if (h->func && *h->func) {
		sb_puts(&b, sep);
		sb_puts(&b, "func=");
		sb_puts(&b, h->func);
		sep = " ";
	}
	if (h->range_ms) {
		sb_puts(&b, sep);
		sb_puts(&b, "range=");
		put_duration(&b, h->range_ms);
		sep = " ";
	}
	/* `by` without grouping labels is meaningless; grouping alone means `without`. */
	if (h->n_grouping || h->by) {
		sb_puts(&b, sep);
		sb_puts(&b, h->by ? "by=(" : "without=(");
		for (size_t i = 0; i < h->n_grouping; i++) {
			if (i)
				sb_puts(&b, ",");
			sb_puts(&b, h->grouping[i]);
		}
		sb_puts(&b, ")");
	}
	return b.len;
}

/* Known names are static strings; only unknown values are formatted into <buf>. */
const char *proto_response_type_name(int t, char *buf, size_t n)
{
	if (t == PROTO_RESP_SAMPLES)
		return "SAMPLES";
	if (t == PROTO_RESP_STREAMED_XOR_CHUNKS)
		return "STREAMED_XOR_CHUNKS";
	snprintf(buf, n, "UNKNOWN(%d)", t);
	return buf;
}

/* ---- decode ----------------------------------------------------------------------------- */

/* Fill <err> and return <rc>. */
static int fail(int rc, char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(int rc, char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return rc;
}

/* Reject what protobuf accepts but a remote read cannot mean: no queries, inverted ranges,
 * matcher types outside EQ..NRE. */
static int validate(const Prometheus__ReadRequest *msg, char *err, size_t errlen)
{
	if (msg->n_queries == 0)
		return fail(-EINVAL, err, errlen, "no queries in read request");
	for (size_t i = 0; i < msg->n_queries; i++) {
		const Prometheus__Query *q = msg->queries[i];

		if (q->start_timestamp_ms > q->end_timestamp_ms) {
			char range[128];
			struct proto_query view = { .start_ms = q->start_timestamp_ms, .end_ms = q->end_timestamp_ms };

			proto_range_print(&view, range, sizeof(range));
			return fail(-EINVAL, err, errlen, "query %zu: start %" PRId64 " is after end %" PRId64 " %s", i,
				    q->start_timestamp_ms, q->end_timestamp_ms, range);
		}
		for (size_t j = 0; j < q->n_matchers; j++) {
			int t = (int)q->matchers[j]->type;

			if (t < PROTO_MATCH_EQ || t > PROTO_MATCH_NRE)
				return fail(-EINVAL, err, errlen, "query %zu: matcher %zu (%s) has unknown type %d", i, j,
					    q->matchers[j]->name, t);
		}
	}
	return 0;
}

/*
 * Build the plain-C view over impl->msg: four arrays, all from the request's allocator. All
 * queries' matchers share one array (and all grouping labels another), carved in query order, so
 * the view costs four allocations whatever the request holds. Strings are borrowed from the
 * message. Returns 0 or -ENOMEM; partial arrays are released by proto_request_free.
 */
static int build_view(struct request_impl *impl)
{
	const Prometheus__ReadRequest *msg = impl->msg;
	struct proto_request *req = &impl->pub;
	size_t n_matchers = 0, n_grouping = 0;
	struct proto_matcher *mv;
	const char **gv;
	int *types;

	for (size_t i = 0; i < msg->n_queries; i++) {
		n_matchers += msg->queries[i]->n_matchers;
		if (msg->queries[i]->hints)
			n_grouping += msg->queries[i]->hints->n_grouping;
	}
	req->queries = impl_alloc(impl, msg->n_queries * sizeof(*req->queries));
	mv = impl->matchers = impl_alloc(impl, n_matchers * sizeof(*mv));
	gv = impl->grouping = impl_alloc(impl, n_grouping * sizeof(*gv));
	types = req->accepted_types = impl_alloc(impl, msg->n_accepted_response_types * sizeof(*types));
	if (!req->queries || !mv || !gv || !types)
		return -ENOMEM;

	req->n_queries = msg->n_queries;
	for (size_t i = 0; i < msg->n_queries; i++) {
		const Prometheus__Query *q = msg->queries[i];
		struct proto_query *out = &req->queries[i];

		*out = (struct proto_query){ .start_ms = q->start_timestamp_ms,
					     .end_ms = q->end_timestamp_ms,
					     .matchers = mv,
					     .n_matchers = q->n_matchers,
					     .hints.func = "" };
		for (size_t j = 0; j < q->n_matchers; j++)
			*mv++ = (struct proto_matcher){ .type = (enum proto_match_type)q->matchers[j]->type,
							.name = q->matchers[j]->name,
							.value = q->matchers[j]->value };
		if (q->hints) {
			const Prometheus__ReadHints *h = q->hints;

			out->hints = (struct proto_hints){ .present = 1,
							   .step_ms = h->step_ms,
							   .func = h->func ? h->func : "",
							   .start_ms = h->start_ms,
							   .end_ms = h->end_ms,
							   .grouping = gv,
							   .n_grouping = h->n_grouping,
							   .by = h->by,
							   .range_ms = h->range_ms };
			for (size_t j = 0; j < h->n_grouping; j++)
				*gv++ = h->grouping[j];
		}
	}
	for (size_t i = 0; i < msg->n_accepted_response_types; i++)
		types[i] = (int)msg->accepted_response_types[i];
	req->n_accepted_types = msg->n_accepted_response_types;
	return 0;
}

int proto_request_decode(const uint8_t *body, size_t len, size_t cap, const struct proto_alloc *alloc,
			 struct proto_request **out, uint64_t *size_out, char *err, size_t errlen)
{
	static const struct proto_alloc malloc_alloc = { default_alloc, default_free, NULL };
	const struct proto_alloc *a = alloc ? alloc : &malloc_alloc;
	struct request_impl *impl;
	uint8_t *raw;
	size_t raw_len;
	int rc;

	*out = NULL;
	if (len > cap) {
		*size_out = len;
		return fail(-E2BIG, err, errlen, "request body of %zu bytes is above the limit of %zu bytes", len, cap);
	}
	if (snappy_uncompressed_length((const char *)body, len, &raw_len) != SNAPPY_OK)
		return fail(-EINVAL, err, errlen, "bad snappy: cannot read the decoded length");
	/* Checked before allocating: the header alone can claim gigabytes. */
	if (raw_len > cap) {
		*size_out = raw_len;
		return fail(-E2BIG, err, errlen, "decoded request of %zu bytes is above the limit of %zu bytes", raw_len,
			    cap);
	}

	/* From here on every failure path goes through proto_request_free, which copes with a
	 * half-built request: impl is zeroed, so unset pointers are NULL. */
	impl = a->alloc(a->ctx, sizeof(*impl));
	if (!impl)
		return fail(-ENOMEM, err, errlen, "out of memory decoding the request");
	*impl = (struct request_impl){ .alloc = *a };
	impl->pb_alloc = (ProtobufCAllocator){ impl_alloc, impl_free, impl };
	impl->pub.impl_ = impl;
	impl->pub.decoded_bytes = raw_len;

	raw = impl_alloc(impl, raw_len);
	if (!raw) {
		rc = fail(-ENOMEM, err, errlen, "out of memory decoding the request");
		goto out;
	}
	if (snappy_uncompress((const char *)body, len, (char *)raw, &raw_len) != SNAPPY_OK) {
		impl_free(impl, raw);
		rc = fail(-EINVAL, err, errlen, "bad snappy: corrupt input");
		goto out;
	}
	/* protobuf-c copies strings out of <raw>, so it can go right after unpacking. */
	impl->msg = prometheus__read_request__unpack(&impl->pb_alloc, raw_len, raw);
	impl_free(impl, raw);
	if (!impl->msg) {
		rc = impl->alloc_failed ? fail(-ENOMEM, err, errlen, "out of memory decoding the request")
					: fail(-EINVAL, err, errlen, "bad protobuf: not a valid prometheus.ReadRequest");
		goto out;
	}
	if ((rc = validate(impl->msg, err, errlen)) < 0)
		goto out;
	if ((rc = build_view(impl)) < 0) {
		fail(rc, err, errlen, "out of memory decoding the request");
		goto out;
	}
	*out = &impl->pub;
	return 0;
out:
	proto_request_free(&impl->pub);
	return rc;
}

void proto_request_free(struct proto_request *req)
{
	struct request_impl *impl;
	struct proto_alloc a;

	if (!req)
		return;
	impl = req->impl_;
	if (!impl->alloc.free)
		return; /* a region: walking the message to free nothing cost ~700 instructions */
	impl_free(impl, impl->matchers);
	impl_free(impl, (void *)impl->grouping);
	impl_free(impl, req->queries);
	impl_free(impl, req->accepted_types);
	if (impl->msg)
		prometheus__read_request__free_unpacked(impl->msg, &impl->pb_alloc);
	a = impl->alloc;
	a.free(a.ctx, impl);
}

/* ---- encode ----------------------------------------------------------------------------- */

/*
 * Builds a stack/heap protobuf-c message that borrows every string from <req>, packs it and
 * compresses it. Temporary arrays use malloc (this is a tool path, not the request path).
 */
int proto_request_encode(const struct proto_request *req, uint8_t **out, size_t *out_len)
{
	size_t n_matchers = 0;
	Prometheus__ReadRequest msg = PROMETHEUS__READ_REQUEST__INIT;
	Prometheus__Query *qs = calloc(req->n_queries ? req->n_queries : 1, sizeof(*qs));
	Prometheus__Query **qp = calloc(req->n_queries ? req->n_queries : 1, sizeof(*qp));
	Prometheus__ReadHints *hs = calloc(req->n_queries ? req->n_queries : 1, sizeof(*hs));
	Prometheus__LabelMatcher *ms, **mp;
	Prometheus__ReadRequest__ResponseType *types;
	uint8_t *packed = NULL, *snap = NULL;
	size_t packed_len, snap_len;
	int rc = -ENOMEM;

	for (size_t i = 0; i < req->n_queries; i++)
		n_matchers += req->queries[i].n_matchers;
	ms = calloc(n_matchers ? n_matchers : 1, sizeof(*ms));
	mp = calloc(n_matchers ? n_matchers : 1, sizeof(*mp));
	types = calloc(req->n_accepted_types ? req->n_accepted_types : 1, sizeof(*types));
	if (!qs || !qp || !hs || !ms || !mp || !types)
		goto out;

	for (size_t i = 0, k = 0; i < req->n_queries; i++) {
		const struct proto_query *q = &req->queries[i];

		prometheus__query__init(&qs[i]);
		qp[i] = &qs[i];
		qs[i].start_timestamp_ms = q->start_ms;
		qs[i].end_timestamp_ms = q->end_ms;
		qs[i].matchers = &mp[k];
		qs[i].n_matchers = q->n_matchers;
		for (size_t j = 0; j < q->n_matchers; j++, k++) {
			prometheus__label_matcher__init(&ms[k]);
			ms[k].type = (Prometheus__LabelMatcher__Type)q->matchers[j].type;
			/* protobuf-c's message structs are not const-correct; pack only reads. */
			ms[k].name = (char *)q->matchers[j].name;
			ms[k].value = (char *)q->matchers[j].value;
			mp[k] = &ms[k];
		}
		if (q->hints.present) {
			prometheus__read_hints__init(&hs[i]);
			hs[i].step_ms = q->hints.step_ms;
			hs[i].func = (char *)(q->hints.func ? q->hints.func : "");
			hs[i].start_ms = q->hints.start_ms;
			hs[i].end_ms = q->hints.end_ms;
			hs[i].grouping = (char **)q->hints.grouping;
			hs[i].n_grouping = q->hints.n_grouping;
			hs[i].by = q->hints.by;
			hs[i].range_ms = q->hints.range_ms;
			qs[i].hints = &hs[i];
		}
	}
	for (size_t i = 0; i < req->n_accepted_types; i++)
		types[i] = (Prometheus__ReadRequest__ResponseType)req->accepted_types[i];
	msg.queries = qp;
	msg.n_queries = req->n_queries;
	msg.accepted_response_types = types;
	msg.n_accepted_response_types = req->n_accepted_types;

	packed_len = prometheus__read_request__get_packed_size(&msg);
	packed = malloc(packed_len ? packed_len : 1);
	snap_len = snappy_max_compressed_length(packed_len);
	snap = malloc(snap_len);
	if (!packed || !snap)
		goto out;
	prometheus__read_request__pack(&msg, packed);
	if (snappy_compress((const char *)packed, packed_len, (char *)snap, &snap_len) != SNAPPY_OK) {
		rc = -EINVAL;
		goto out;
	}
	*out = snap;
	*out_len = snap_len;
	snap = NULL;
	rc = 0;
out:
	free(snap);
	free(packed);
	free(types);
	free(mp);
	free(ms);
	free(hs);
	free(qp);
	free(qs);
	return rc;
}

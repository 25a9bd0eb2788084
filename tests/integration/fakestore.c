/*
 * fakestore: a fake Prometheus remote-read store for the integration tests.
 *
 * It serves POST /api/v1/read (SAMPLES and STREAMED_XOR_CHUNKS), GET /api/v1/series and
 * GET /stats. What it answers is chosen by the equality matchers of the query itself
 * (`fake{mode="hang"}`, `fake{series="1000",samples="10"}`...; see README.md next to this file),
 * so tests running side by side against one store never interfere.
 *
 * HTTP/1.1 is spoken by hand on bufferevents instead of evhttp: the failure modes (close after
 * the request, reset, die mid-stream, truncated frame, bad CRC) need exact control of what goes on
 * the wire and when the socket closes. Streams are generated lazily: the next batch of frames is
 * made only when the socket's output buffer has drained, so a 1 GB stream never sits in memory.
 *
 * The protobuf encoding and decoding, the snappy framing and the CRC-32C are written here
 * independently of proto/, so the fixture is an oracle for the proxy rather than a copy of it.
 */
#include <sys/queue.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <snappy-c.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADER_BYTES (64 * 1024)
#define MAX_BODY_BYTES (64 * 1024 * 1024)
#define MAX_HEADERS 64
#define STREAM_BATCH_BYTES (256 * 1024)
#define CHUNK_DATA_MAX 1024
#define MAX_LABELS 32
#define MAX_QUERIES 64
#define MAX_TAGS 256
#define MAX_PATHS 32

/* ---------------------------------------------------------------------------------------- */
/* growable byte buffer and protobuf wire helpers                                           */

struct buf {
	uint8_t *p;  /* malloc'd bytes */
	size_t len;  /* bytes used */
	size_t cap;  /* bytes allocated */
};

static void buf_reserve(struct buf *b, size_t more)
{
	if (b->len + more <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + more)
		cap *= 2;
	uint8_t *p = realloc(b->p, cap);
	if (!p) {
		fprintf(stderr, "fakestore: out of memory\n");
		exit(2);
	}
	b->p = p;
	b->cap = cap;
}

static void buf_put(struct buf *b, const void *data, size_t len)
{
	if (len == 0)
		return; /* memcpy from a NULL empty buffer is undefined */
	buf_reserve(b, len);
	memcpy(b->p + b->len, data, len);
	b->len += len;
}

static void buf_free(struct buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

static void put_varint(struct buf *b, uint64_t v)
{
	uint8_t tmp[10];
	size_t n = 0;
	while (v >= 0x80) {
		tmp[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	tmp[n++] = (uint8_t)v;
	buf_put(b, tmp, n);
}

static void put_tag(struct buf *b, unsigned field, unsigned wire)
{
	put_varint(b, ((uint64_t)field << 3) | wire);
}

static void put_len_field(struct buf *b, unsigned field, const void *data, size_t len)
{
	put_tag(b, field, 2);
	put_varint(b, len);
	buf_put(b, data, len);
}

static void put_str_field(struct buf *b, unsigned field, const char *s)
{
	put_len_field(b, field, s, strlen(s));
}

static void put_varint_field(struct buf *b, unsigned field, uint64_t v)
{
	if (v == 0)
		return; /* proto3: zero values are omitted */
	put_tag(b, field, 0);
	put_varint(b, v);
}

static void put_double_field(struct buf *b, unsigned field, double d)
{
	uint64_t u;
	uint8_t le[8];
	if (d == 0)
		return;
	memcpy(&u, &d, 8);
	for (int i = 0; i < 8; i++)
		le[i] = (uint8_t)(u >> (8 * i));
	put_tag(b, field, 1);
	buf_put(b, le, 8);
}

/* Reader over a byte range; every get fails (returns -1) rather than running past the end. */
struct rd {
	const uint8_t *p;
	const uint8_t *end;
};

static int get_varint(struct rd *r, uint64_t *v)
{
	uint64_t x = 0;
	for (int shift = 0; shift < 70; shift += 7) {
		if (r->p >= r->end)
			return -1;
		uint8_t c = *r->p++;
		x |= (uint64_t)(c & 0x7f) << shift;
		if (!(c & 0x80)) {
			*v = x;
			return 0;
		}
	}
	return -1;
}

/* Read one field header and, for LEN fields, the sub-range. Skips nothing. */
static int get_field(struct rd *r, unsigned *field, unsigned *wire, uint64_t *ival, struct rd *sub)
{
	uint64_t key, len;
	if (get_varint(r, &key) < 0)
		return -1;
	*field = (unsigned)(key >> 3);
	*wire = (unsigned)(key & 7);
	if (*field == 0)
		return -1;
	switch (*wire) {
	case 0:
		return get_varint(r, ival);
	case 1:
		if (r->end - r->p < 8)
			return -1;
		r->p += 8;
		return 0;
	case 5:
		if (r->end - r->p < 4)
			return -1;
		r->p += 4;
		return 0;
	case 2:
		if (get_varint(r, &len) < 0 || len > (uint64_t)(r->end - r->p))
			return -1;
		sub->p = r->p;
		sub->end = r->p + len;
		r->p += len;
		return 0;
	default:
		return -1;
	}
}

/* CRC-32C (Castagnoli), reflected, init/xorout 0xFFFFFFFF. */
static uint32_t crc_table[256];

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		crc_table[i] = c;
	}
}

static uint32_t crc32c(const uint8_t *p, size_t n)
{
	uint32_t c = 0xFFFFFFFFu;
	while (n--)
		c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
	return c ^ 0xFFFFFFFFu;
}

/* ---------------------------------------------------------------------------------------- */
/* the decoded ReadRequest and the behaviour its matchers select                            */

struct label {
	char name[128];
	char value[256];
};

enum mode {
	MODE_OK,
	MODE_STATUS,
	MODE_HANG,
	MODE_DELAY,
	MODE_DIE_MIDSTREAM,
	MODE_BAD_CRC,
	MODE_TRUNCATED,
	MODE_GARBAGE,
	MODE_CLOSE,
	MODE_RESET,
	MODE_BIG_ERROR_BODY,
	MODE_STALL,
};

static const char *mode_names[] = {
	"ok", "status", "hang", "delay", "die_midstream", "bad_crc", "truncated", "garbage", "close",
	"reset", "big_error_body", "stall",
};

/* One query of the request, with its behaviour labels already read out. */
struct fquery {
	int64_t start_ms;
	int64_t end_ms;
	struct label labels[MAX_LABELS]; /* EQ matchers, sorted by name, plus job and id slots */
	size_t n_labels;
	int fake;            /* __name__="fake" */
	uint64_t series;     /* series="N" (default 10) */
	uint64_t samples;    /* samples="N" per series, or chunk bytes per series for streams (default 10) */
};

struct freq {
	struct fquery q[MAX_QUERIES];
	size_t n_queries;
	int streamed;          /* negotiated STREAMED_XOR_CHUNKS */
	enum mode mode;        /* from query 0 */
	int status;            /* status="N" (default 500) */
	uint64_t delay_ms;     /* delay_ms="N" */
	uint64_t frames;       /* frames="N": die_midstream / truncated after N frames (default half) */
	uint64_t bad_frame;    /* frame="N": bad_crc in frame N (default half) */
	uint64_t bytes;        /* bytes="N": big_error_body size (default 1 MiB) */
	char tag[128];         /* tag="..." for /stats */
	uint64_t fail_first;   /* fail_first="N" (with tag): the first N reads of the tag act as fail_mode */
	enum mode fail_mode;   /* fail_mode="..." (default status) */
};

static uint64_t parse_u64(const char *s, uint64_t def)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end)
		return def;
	return v;
}

static int label_cmp(const void *a, const void *b)
{
	return strcmp(((const struct label *)a)->name, ((const struct label *)b)->name);
}

/* Add <name>=<value> unless <name> is present; truncates overlong values (test input only). */
static void labels_add(struct fquery *q, const char *name, size_t nlen, const char *value, size_t vlen)
{
	for (size_t i = 0; i < q->n_labels; i++)
		if (strlen(q->labels[i].name) == nlen && !memcmp(q->labels[i].name, name, nlen))
			return;
	if (q->n_labels >= MAX_LABELS - 2) /* keep room for job and id */
		return;
	struct label *l = &q->labels[q->n_labels++];
	snprintf(l->name, sizeof(l->name), "%.*s", (int)nlen, name);
	snprintf(l->value, sizeof(l->value), "%.*s", (int)vlen, value);
}

static const char *labels_get(const struct fquery *q, const char *name)
{
	for (size_t i = 0; i < q->n_labels; i++)
		if (!strcmp(q->labels[i].name, name))
			return q->labels[i].value;
	return NULL;
}

/*
 * After the matchers are in: read the knobs, then make the label set every returned series
 * carries (the EQ matchers, job="fakestore" and a per-series id="<i>"), sorted by name.
 */
static void query_finish(struct fquery *q)
{
	const char *v;
	q->fake = (v = labels_get(q, "__name__")) && !strcmp(v, "fake");
	q->series = (v = labels_get(q, "series")) ? parse_u64(v, 10) : 10;
	q->samples = (v = labels_get(q, "samples")) ? parse_u64(v, 10) : 10;
	labels_add(q, "job", 3, "fakestore", 9);
	labels_add(q, "id", 2, "", 0);
	qsort(q->labels, q->n_labels, sizeof(q->labels[0]), label_cmp);
}

static void req_knobs(struct freq *r)
{
	const struct fquery *q = &r->q[0];
	const char *v;
	r->mode = MODE_OK;
	if ((v = labels_get(q, "mode"))) {
		for (size_t i = 0; i < sizeof(mode_names) / sizeof(mode_names[0]); i++)
			if (!strcmp(v, mode_names[i]))
				r->mode = (enum mode)i;
	}
	r->status = (int)((v = labels_get(q, "status")) ? parse_u64(v, 500) : 500);
	if (r->status < 100 || r->status > 599)
		r->status = 500;
	r->delay_ms = (v = labels_get(q, "delay_ms")) ? parse_u64(v, 0) : 0;
	uint64_t total = 0;
	for (size_t i = 0; i < r->n_queries; i++)
		total += r->q[i].fake ? r->q[i].series : 0;
	r->frames = (v = labels_get(q, "frames")) ? parse_u64(v, total / 2) : total / 2;
	r->bad_frame = (v = labels_get(q, "frame")) ? parse_u64(v, total / 2) : total / 2;
	r->bytes = (v = labels_get(q, "bytes")) ? parse_u64(v, 1 << 20) : 1 << 20;
	snprintf(r->tag, sizeof(r->tag), "%s", (v = labels_get(q, "tag")) ? v : "");
	r->fail_first = (v = labels_get(q, "fail_first")) ? parse_u64(v, 0) : 0;
	r->fail_mode = MODE_STATUS;
	if ((v = labels_get(q, "fail_mode"))) {
		for (size_t i = 0; i < sizeof(mode_names) / sizeof(mode_names[0]); i++)
			if (!strcmp(v, mode_names[i]))
				r->fail_mode = (enum mode)i;
	}
}

/* Decode a snappy-compressed ReadRequest into <r>. Returns 0 or -1 with a message in <err>. */
static int decode_request(const uint8_t *body, size_t len, struct freq *r, char *err, size_t errlen)
{
	size_t dlen;
	/* Zero everything but the query array (~800 KiB: 64 queries of 32 labels); each query is
	 * zeroed when it is opened. Zeroing all of it per request was most of the store's CPU, and
	 * its page faults varied with how the proxy in front spread requests over connections. */
	memset(&r->n_queries, 0, sizeof(*r) - offsetof(struct freq, n_queries));
	memset(&r->q[0], 0, sizeof(r->q[0])); /* the knobs read query 0 even when there is none */
	if (snappy_uncompressed_length((const char *)body, len, &dlen) != SNAPPY_OK) {
		snprintf(err, errlen, "snappy: corrupt input");
		return -1;
	}
	if (dlen > MAX_BODY_BYTES) {
		snprintf(err, errlen, "snappy: decoded length %zu too large", dlen);
		return -1;
	}
	char *dec = malloc(dlen ? dlen : 1);
	if (!dec || snappy_uncompress((const char *)body, len, dec, &dlen) != SNAPPY_OK) {
		free(dec);
		snprintf(err, errlen, "snappy: corrupt input");
		return -1;
	}
	struct rd top = {(const uint8_t *)dec, (const uint8_t *)dec + dlen}, sub, msub, psub;
	unsigned field, wire;
	uint64_t iv;
	int types[16];
	size_t n_types = 0;
	int rc = 0;
	while (top.p < top.end) {
		if (get_field(&top, &field, &wire, &iv, &sub) < 0)
			goto bad;
		if (field == 1 && wire == 2) {
			if (r->n_queries >= MAX_QUERIES)
				goto bad;
			struct fquery *q = &r->q[r->n_queries++];
			memset(q, 0, sizeof(*q));
			while (sub.p < sub.end) {
				if (get_field(&sub, &field, &wire, &iv, &msub) < 0)
					goto bad;
				if (field == 1 && wire == 0)
					q->start_ms = (int64_t)iv;
				else if (field == 2 && wire == 0)
					q->end_ms = (int64_t)iv;
				else if (field == 3 && wire == 2) {
					uint64_t type = 0;
					const uint8_t *n = (const uint8_t *)"", *v = (const uint8_t *)"";
					size_t nl = 0, vl = 0;
					while (msub.p < msub.end) {
						if (get_field(&msub, &field, &wire, &iv, &psub) < 0)
							goto bad;
						if (field == 1 && wire == 0)
							type = iv;
						else if (field == 2 && wire == 2)
							n = psub.p, nl = (size_t)(psub.end - psub.p);
						else if (field == 3 && wire == 2)
							v = psub.p, vl = (size_t)(psub.end - psub.p);
					}
					if (type == 0)
						labels_add(q, (const char *)n, nl, (const char *)v, vl);
				}
			}
		} else if (field == 2 && wire == 0) {
			if (n_types < 16)
				types[n_types++] = (int)iv;
		} else if (field == 2 && wire == 2) {
			while (sub.p < sub.end) {
				if (get_varint(&sub, &iv) < 0)
					goto bad;
				if (n_types < 16)
					types[n_types++] = (int)iv;
			}
		}
	}
	/* Negotiation as Prometheus does it: empty -> SAMPLES, else the first type we support. */
	r->streamed = 0;
	if (n_types > 0) {
		size_t i;
		for (i = 0; i < n_types; i++)
			if (types[i] == 0 || types[i] == 1)
				break;
		if (i == n_types) {
			snprintf(err, errlen, "server does not support any of the requested response types");
			rc = -1;
			goto out;
		}
		r->streamed = types[i] == 1;
	}
	for (size_t i = 0; i < r->n_queries; i++)
		query_finish(&r->q[i]);
	if (r->n_queries == 0) {
		/* Prometheus answers an empty ReadResponse; keep knobs at their defaults. */
		r->mode = MODE_OK;
		r->status = 500;
	} else {
		req_knobs(r);
	}
	goto out;
bad:
	snprintf(err, errlen, "proto: cannot parse ReadRequest");
	rc = -1;
out:
	free(dec);
	return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* response bodies                                                                          */

static void series_labels(struct buf *b, unsigned field, const struct fquery *q, uint64_t id)
{
	char idbuf[32];
	snprintf(idbuf, sizeof(idbuf), "%" PRIu64, id);
	for (size_t i = 0; i < q->n_labels; i++) {
		const char *v = strcmp(q->labels[i].name, "id") ? q->labels[i].value : idbuf;
		struct buf l = {0};
		put_str_field(&l, 1, q->labels[i].name);
		put_str_field(&l, 2, v);
		put_len_field(b, field, l.p, l.len);
		buf_free(&l);
	}
}

/* Uncompressed ReadResponse: one QueryResult per query, <samples> samples per series. */
static void build_samples_response(const struct freq *r, struct buf *out)
{
	for (size_t qi = 0; qi < r->n_queries; qi++) {
		const struct fquery *q = &r->q[qi];
		struct buf qr = {0};
		uint64_t n = q->fake ? q->series : 0;
		for (uint64_t s = 0; s < n; s++) {
			struct buf ts = {0};
			series_labels(&ts, 1, q, s);
			for (uint64_t j = 0; j < q->samples; j++) {
				struct buf smp = {0};
				put_double_field(&smp, 1, (double)(s * 1000 + j));
				put_varint_field(&smp, 2, (uint64_t)(q->start_ms + (int64_t)j * 15000));
				put_len_field(&ts, 2, smp.p, smp.len);
				buf_free(&smp);
			}
			put_len_field(&qr, 1, ts.p, ts.len);
			buf_free(&ts);
		}
		put_len_field(out, 1, qr.p, qr.len);
		buf_free(&qr);
	}
}

/* One stream frame (length, CRC-32C big-endian, ChunkedReadResponse) for series <s> of query <qi>. */
static void build_frame(const struct freq *r, size_t qi, uint64_t s, int bad_crc, struct buf *out)
{
	const struct fquery *q = &r->q[qi];
	struct buf cs = {0}, msg = {0};
	series_labels(&cs, 1, q, s);
	uint64_t left = q->samples, off = 0;
	int64_t t = q->start_ms;
	uint8_t data[CHUNK_DATA_MAX];
	while (left > 0) {
		size_t n = left > CHUNK_DATA_MAX ? CHUNK_DATA_MAX : (size_t)left;
		for (size_t k = 0; k < n; k++)
			data[k] = (uint8_t)((s * 31 + (off + k) * 7) & 0xff);
		struct buf ch = {0};
		put_varint_field(&ch, 1, (uint64_t)t);
		put_varint_field(&ch, 2, (uint64_t)(t + 119 * 15000));
		put_varint_field(&ch, 3, 1); /* XOR */
		put_len_field(&ch, 4, data, n);
		put_len_field(&cs, 2, ch.p, ch.len);
		buf_free(&ch);
		t += 120 * 15000;
		left -= n;
		off += n;
	}
	put_len_field(&msg, 1, cs.p, cs.len);
	put_varint_field(&msg, 2, qi);
	uint32_t crc = crc32c(msg.p, msg.len);
	if (bad_crc)
		crc ^= 0xdeadbeefu;
	uint8_t be[4] = {(uint8_t)(crc >> 24), (uint8_t)(crc >> 16), (uint8_t)(crc >> 8), (uint8_t)crc};
	put_varint(out, msg.len);
	buf_put(out, be, 4);
	buf_put(out, msg.p, msg.len);
	buf_free(&cs);
	buf_free(&msg);
}

/* ---------------------------------------------------------------------------------------- */
/* statistics for GET /stats                                                                */

struct path_count {
	char path[64];
	uint64_t n;
};

struct tag_stat {
	char tag[128];
	uint64_t n;
	char *headers_json; /* JSON object of the last request's headers */
	uint64_t first_seq; /* arrival number (st.read_seq) of the first read carrying the tag */
	uint64_t last_seq;  /* ... and of the last one */
	int64_t first_ms;   /* CLOCK_MONOTONIC ms when the first read arrived */
	int64_t last_ms;    /* ... and the last one */
	uint64_t done;      /* reads of the tag whose response was written out (or abandoned) */
	int64_t done_ms;    /* CLOCK_MONOTONIC ms when the last one ended */
};

/* GET /api/v1/series requests whose match[] carries tag="...": count and the last request target. */
struct probe_tag_stat {
	char tag[128];
	uint64_t n;
	char path[2048];
};

static struct {
	struct path_count paths[MAX_PATHS];
	size_t n_paths;
	struct tag_stat tags[MAX_TAGS];
	size_t n_tags;
	struct probe_tag_stat probe_tags[MAX_TAGS];
	size_t n_probe_tags;
	uint64_t modes[sizeof(mode_names) / sizeof(mode_names[0])];
	uint64_t streamed, samples_responses;
	uint64_t connections_total, connections_open;
	uint64_t stream_bytes; /* stream frame bytes handed to the socket */
	uint64_t client_gone;  /* responses abandoned because the client closed */
	uint64_t read_seq;     /* decoded reads so far: the arrival number of the last one */
	uint64_t reads_active; /* reads decoded whose response is not yet written out (or abandoned) */
	uint64_t max_reads_active; /* the most reads_active has been */
} st;

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void count_path(const char *path)
{
	char key[sizeof(st.paths[0].path)];
	size_t i;
	snprintf(key, sizeof(key), "%.*s", (int)sizeof(key) - 1, path);
	for (i = 0; i < st.n_paths; i++)
		if (!strcmp(st.paths[i].path, key))
			break;
	if (i == st.n_paths) {
		if (st.n_paths == MAX_PATHS)
			snprintf(key, sizeof(key), "other"), i = MAX_PATHS - 1;
		else
			st.n_paths++;
		memcpy(st.paths[i].path, key, sizeof(key));
	}
	st.paths[i].n++;
}

static void json_str(struct evbuffer *o, const char *s)
{
	evbuffer_add(o, "\"", 1);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			evbuffer_add_printf(o, "\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			evbuffer_add_printf(o, "\\u%04x", c);
		else
			evbuffer_add(o, s, 1);
	}
	evbuffer_add(o, "\"", 1);
}

/* ---------------------------------------------------------------------------------------- */
/* connections                                                                              */

struct hdr {
	char *name;
	char *value;
};

enum conn_state {
	CS_READING,    /* waiting for (the rest of) a request */
	CS_WAITING,    /* hang / delay: nothing to write yet */
	CS_STREAMING,  /* generating frames as the output drains */
	CS_FLUSHING,   /* response queued; continue (keep-alive) or close when drained */
};

struct conn {
	struct conn *prev, *next; /* all open connections, freed at exit */
	struct bufferevent *bev;
	enum conn_state state;
	struct event *timer;   /* delay mode */
	/* the request being read */
	int have_head;
	char method[16];
	char path[2048];       /* path with query string */
	struct hdr hdrs[MAX_HEADERS];
	size_t n_hdrs;
	int keepalive;
	int chunked_body;
	size_t content_length;
	/* the response being written */
	struct freq *req;      /* decoded read request (streaming / delay) */
	int close_after;       /* close once the output has drained */
	int reset_after;       /* close with RST (SO_LINGER 0) */
	size_t stream_qi;      /* next query to stream */
	uint64_t stream_s;     /* next series of that query */
	uint64_t stream_frames;/* frames written so far */
	int stream_cut;        /* die_midstream / truncated: stop early */
	int read_active;       /* counted in st.reads_active until the response is written out */
	int read_tag;          /* index + 1 in st.tags of the active read's tag; 0: none */
};

static struct event_base *base;
static struct conn *conns;

/* The read on <c> is over (its response written out, or the connection gone). */
static void read_end(struct conn *c)
{
	if (!c->read_active)
		return;
	c->read_active = 0;
	st.reads_active--;
	if (c->read_tag) {
		st.tags[c->read_tag - 1].done++;
		st.tags[c->read_tag - 1].done_ms = mono_ms();
	}
	c->read_tag = 0;
}

static void conn_free(struct conn *c)
{
	read_end(c);
	if (c->reset_after) {
		struct linger lg = {1, 0};
		evutil_socket_t fd = bufferevent_getfd(c->bev);
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	bufferevent_free(c->bev);
	if (c->timer)
		event_free(c->timer);
	for (size_t i = 0; i < c->n_hdrs; i++) {
		free(c->hdrs[i].name);
		free(c->hdrs[i].value);
	}
	free(c->req);
	if (c->prev)
		c->prev->next = c->next;
	else
		conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c);
	st.connections_open--;
}

static void conn_reset_request(struct conn *c)
{
	read_end(c);
	for (size_t i = 0; i < c->n_hdrs; i++) {
		free(c->hdrs[i].name);
		free(c->hdrs[i].value);
	}
	c->n_hdrs = 0;
	c->have_head = 0;
	if (c->timer) {
		event_free(c->timer);
		c->timer = NULL;
	}
	free(c->req);
	c->req = NULL;
	c->stream_qi = 0;
	c->stream_s = 0;
	c->stream_frames = 0;
	c->stream_cut = 0;
}

static const char *reason_phrase(int code)
{
	switch (code) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 413: return "Request Entity Too Large";
	case 422: return "Unprocessable Entity";
	case 429: return "Too Many Requests";
	case 500: return "Internal Server Error";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default: return "Status";
	}
}

/*
 * Queue a whole response. Bodies up to 2 KiB get a Content-Length; larger ones go chunked,
 * as Go's net/http does when the handler writes more than its buffer before returning.
 * <extra> is "" or more header lines, each ending in "\r\n".
 */
static void send_response(struct conn *c, int code, const char *ctype, const char *extra, const void *body,
			  size_t len)
{
	struct evbuffer *o = bufferevent_get_output(c->bev);
	evbuffer_add_printf(o, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s", code, reason_phrase(code), ctype, extra);
	if (!c->keepalive)
		evbuffer_add_printf(o, "Connection: close\r\n");
	if (len <= 2048) {
		evbuffer_add_printf(o, "Content-Length: %zu\r\n\r\n", len);
		evbuffer_add(o, body, len);
	} else {
		evbuffer_add_printf(o, "Transfer-Encoding: chunked\r\n\r\n");
		const uint8_t *p = body;
		size_t left = len;
		while (left) {
			size_t n = left > 32768 ? 32768 : left;
			evbuffer_add_printf(o, "%zx\r\n", n);
			evbuffer_add(o, p, n);
			evbuffer_add(o, "\r\n", 2);
			p += n;
			left -= n;
		}
		evbuffer_add(o, "0\r\n\r\n", 5);
	}
	if (!c->keepalive)
		c->close_after = 1;
	c->state = CS_FLUSHING;
}

static void send_text(struct conn *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void send_text(struct conn *c, int code, const char *fmt, ...)
{
	char body[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(body, sizeof(body), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof(body))
		n = sizeof(body) - 1;
	send_response(c, code, "text/plain; charset=utf-8", "X-Content-Type-Options: nosniff\r\n", body, (size_t)n);
}

/* Generate the next batch of frames; called when the output buffer has drained. */
static void stream_more(struct conn *c)
{
	struct evbuffer *o = bufferevent_get_output(c->bev);
	struct freq *r = c->req;
	size_t written = 0;
	struct buf fr = {0};
	while (written < STREAM_BATCH_BYTES) {
		while (c->stream_qi < r->n_queries &&
		       c->stream_s >= (r->q[c->stream_qi].fake ? r->q[c->stream_qi].series : 0)) {
			c->stream_qi++;
			c->stream_s = 0;
		}
		int end = c->stream_qi >= r->n_queries;
		if (!end && (r->mode == MODE_DIE_MIDSTREAM || r->mode == MODE_TRUNCATED || r->mode == MODE_STALL) &&
		    c->stream_frames >= r->frames)
			end = 1;
		if (end && r->mode == MODE_STALL) {
			/* stall: the frames so far, then nothing more (no end, no close) */
			c->state = CS_WAITING;
			break;
		}
		if (end) {
			if (r->mode == MODE_DIE_MIDSTREAM) {
				c->close_after = 1;
			} else if (r->mode == MODE_TRUNCATED && c->stream_qi < r->n_queries) {
				/* half of the next frame, then a clean end of the HTTP body */
				fr.len = 0;
				build_frame(r, c->stream_qi, c->stream_s, 0, &fr);
				size_t half = fr.len / 2;
				evbuffer_add_printf(o, "%zx\r\n", half);
				evbuffer_add(o, fr.p, half);
				evbuffer_add(o, "\r\n", 2);
				st.stream_bytes += half;
				evbuffer_add(o, "0\r\n\r\n", 5);
			} else {
				evbuffer_add(o, "0\r\n\r\n", 5);
			}
			if (!c->keepalive)
				c->close_after = 1;
			c->state = CS_FLUSHING;
			break;
		}
		fr.len = 0;
		build_frame(r, c->stream_qi, c->stream_s, r->mode == MODE_BAD_CRC && c->stream_frames == r->bad_frame,
			    &fr);
		/* one HTTP chunk per frame, as Prometheus 2.42 flushes after every frame */
		evbuffer_add_printf(o, "%zx\r\n", fr.len);
		evbuffer_add(o, fr.p, fr.len);
		evbuffer_add(o, "\r\n", 2);
		st.stream_bytes += fr.len;
		written += fr.len;
		c->stream_s++;
		c->stream_frames++;
	}
	buf_free(&fr);
}

static void respond_read(struct conn *c)
{
	struct freq *r = c->req;
	switch (r->mode) {
	case MODE_STATUS: {
		/* like Prometheus' http.Error: plain text, yet Content-Encoding: snappy stays set */
		char body[64];
		int n = snprintf(body, sizeof(body), "fake store error %d\n", r->status);
		send_response(c, r->status, "text/plain; charset=utf-8",
			      "Content-Encoding: snappy\r\nX-Content-Type-Options: nosniff\r\n", body, (size_t)n);
		return;
	}
	case MODE_BIG_ERROR_BODY: {
		char *body = malloc(r->bytes + 1);
		if (!body)
			exit(2);
		for (uint64_t i = 0; i < r->bytes; i++)
			body[i] = "fake store big error body "[i % 26];
		if (r->bytes)
			body[r->bytes - 1] = '\n';
		send_response(c, r->status, "text/plain; charset=utf-8", "Content-Encoding: snappy\r\n", body,
			      r->bytes);
		free(body);
		return;
	}
	case MODE_CLOSE:
		c->close_after = 1;
		c->state = CS_FLUSHING;
		return;
	case MODE_RESET:
		c->close_after = 1;
		c->reset_after = 1;
		c->state = CS_FLUSHING;
		return;
	case MODE_GARBAGE:
		if (r->streamed) {
			static const uint8_t junk[] = "\x05\x00\x00\x00\x00not a frame at all, just garbage bytes\n";
			send_response(c, 200, "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse", "",
				      junk, sizeof(junk) - 1);
		} else {
			/* 0xff... is an unterminated varint: no snappy decoder accepts it */
			static const uint8_t junk[] = "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff garbage, not snappy\n";
			send_response(c, 200, "application/x-protobuf", "Content-Encoding: snappy\r\n", junk, sizeof(junk) - 1);
		}
		return;
	default:
		break;
	}
	if (r->streamed) {
		struct evbuffer *o = bufferevent_get_output(c->bev);
		st.streamed++;
		evbuffer_add_printf(o,
				    "HTTP/1.1 200 OK\r\n"
				    "Content-Type: application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse\r\n"
				    "%sTransfer-Encoding: chunked\r\n\r\n",
				    c->keepalive ? "" : "Connection: close\r\n");
		c->state = CS_STREAMING;
		stream_more(c);
		return;
	}
	st.samples_responses++;
	struct buf pb = {0};
	build_samples_response(r, &pb);
	size_t clen = snappy_max_compressed_length(pb.len);
	char *comp = malloc(clen);
	if (!comp || snappy_compress((const char *)pb.p, pb.len, comp, &clen) != SNAPPY_OK)
		exit(2);
	buf_free(&pb);
	if (r->mode == MODE_TRUNCATED) {
		clen /= 2;
	} else if (r->mode == MODE_DIE_MIDSTREAM || r->mode == MODE_STALL) {
		/* headers and half the body (chunked), then the socket closes (stall: stays open, silent) */
		struct evbuffer *o = bufferevent_get_output(c->bev);
		evbuffer_add_printf(o, "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
				       "Content-Encoding: snappy\r\nTransfer-Encoding: chunked\r\n\r\n%zx\r\n",
				    clen / 2);
		evbuffer_add(o, comp, clen / 2);
		evbuffer_add(o, "\r\n", 2);
		free(comp);
		if (r->mode == MODE_STALL) {
			c->state = CS_WAITING;
			return;
		}
		c->close_after = 1;
		c->state = CS_FLUSHING;
		return;
	}
	send_response(c, 200, "application/x-protobuf", "Content-Encoding: snappy\r\n", comp, clen);
	free(comp);
}

static void delay_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct conn *c = arg;
	respond_read(c);
	if (c->state == CS_FLUSHING && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0 && c->close_after)
		conn_free(c);
}

static void record_tag(struct conn *c, const char *tag)
{
	size_t i;
	if (!*tag)
		return;
	for (i = 0; i < st.n_tags; i++)
		if (!strcmp(st.tags[i].tag, tag))
			break;
	if (i == st.n_tags) {
		if (st.n_tags == MAX_TAGS)
			return;
		st.n_tags++;
		snprintf(st.tags[i].tag, sizeof(st.tags[i].tag), "%s", tag);
	}
	struct tag_stat *t = &st.tags[i];
	t->n++;
	if (t->n == 1) {
		t->first_seq = st.read_seq;
		t->first_ms = mono_ms();
	}
	t->last_seq = st.read_seq;
	t->last_ms = mono_ms();
	c->read_tag = (int)i + 1;
	struct evbuffer *j = evbuffer_new();
	evbuffer_add(j, "{", 1);
	for (size_t k = 0; k < c->n_hdrs; k++) {
		if (k)
			evbuffer_add(j, ",", 1);
		json_str(j, c->hdrs[k].name);
		evbuffer_add(j, ":", 1);
		json_str(j, c->hdrs[k].value);
	}
	evbuffer_add(j, "}", 1);
	size_t n = evbuffer_get_length(j);
	free(t->headers_json);
	t->headers_json = malloc(n + 1);
	evbuffer_remove(j, t->headers_json, n);
	t->headers_json[n] = 0;
	evbuffer_free(j);
}

/*
 * grow="N" (needs tag="..."): the k-th read carrying this tag (k = 0, 1, ...) returns N * k more
 * series per query than series="N" says, so a selector learned once comes back bigger, as if the
 * store had grown since. The series API is not affected.
 */
static void apply_grow(struct freq *r)
{
	uint64_t earlier = 0;
	if (!*r->tag)
		return;
	for (size_t i = 0; i < st.n_tags; i++)
		if (!strcmp(st.tags[i].tag, r->tag))
			earlier = st.tags[i].n - 1; /* record_tag counted this read already */
	for (size_t qi = 0; qi < r->n_queries; qi++) {
		const char *v = labels_get(&r->q[qi], "grow");
		if (v && r->q[qi].fake)
			r->q[qi].series += parse_u64(v, 0) * earlier;
	}
}

/*
 * fail_first="N" (needs tag="..."): the first N reads carrying this tag act as fail_mode="..."
 * (default status, with status="N") instead of their own mode; later ones behave as asked. A
 * store that fails a few times, then recovers.
 */
static void apply_fail_first(struct conn *c)
{
	struct freq *r = c->req;
	if (!r->fail_first || !*r->tag || !c->read_tag)
		return;
	if (st.tags[c->read_tag - 1].n <= r->fail_first)
		r->mode = r->fail_mode;
}

static void record_probe_tag(const char *tag, const char *path)
{
	size_t i;
	for (i = 0; i < st.n_probe_tags; i++)
		if (!strcmp(st.probe_tags[i].tag, tag))
			break;
	if (i == st.n_probe_tags) {
		if (st.n_probe_tags == MAX_TAGS)
			return;
		st.n_probe_tags++;
		snprintf(st.probe_tags[i].tag, sizeof(st.probe_tags[i].tag), "%s", tag);
	}
	st.probe_tags[i].n++;
	snprintf(st.probe_tags[i].path, sizeof(st.probe_tags[i].path), "%s", path);
}

static void handle_read(struct conn *c, const uint8_t *body, size_t len)
{
	char err[256];
	if (strcmp(c->method, "POST")) {
		send_text(c, 405, "Method Not Allowed\n");
		return;
	}
	c->req = malloc(sizeof(*c->req));
	if (!c->req)
		exit(2);
	if (decode_request(body, len, c->req, err, sizeof(err)) < 0) {
		send_text(c, 400, "%s\n", err);
		return;
	}
	st.read_seq++;
	c->read_active = 1;
	if (++st.reads_active > st.max_reads_active)
		st.max_reads_active = st.reads_active;
	record_tag(c, c->req->tag);
	apply_fail_first(c);
	st.modes[c->req->mode]++;
	apply_grow(c->req);
	switch (c->req->mode) {
	case MODE_HANG:
		c->state = CS_WAITING;
		return;
	case MODE_DELAY: {
		struct timeval tv = {(time_t)(c->req->delay_ms / 1000), (suseconds_t)(c->req->delay_ms % 1000) * 1000};
		c->timer = evtimer_new(base, delay_cb, c);
		evtimer_add(c->timer, &tv);
		c->state = CS_WAITING;
		return;
	}
	default:
		respond_read(c);
	}
}

/* Pull `name="value"` pairs out of a PromQL selector (good enough for `fake{series="5"}`). */
static void selector_labels(const char *sel, struct fquery *q)
{
	memset(q, 0, sizeof(*q));
	const char *brace = strchr(sel, '{');
	size_t nlen = brace ? (size_t)(brace - sel) : strlen(sel);
	if (nlen)
		labels_add(q, "__name__", 8, sel, nlen);
	if (!brace)
		goto done;
	const char *p = brace + 1;
	while (*p && *p != '}') {
		while (*p == ' ' || *p == ',')
			p++;
		const char *n = p;
		while (*p && *p != '=' && *p != '!' && *p != '~' && *p != '}' && *p != ' ')
			p++;
		size_t nl = (size_t)(p - n);
		int eq = *p == '=' && p[1] != '~';
		while (*p == '=' || *p == '!' || *p == '~' || *p == ' ')
			p++;
		if (*p != '"')
			break;
		const char *v = ++p;
		while (*p && *p != '"')
			p += (*p == '\\' && p[1]) ? 2 : 1;
		if (eq && nl)
			labels_add(q, n, nl, v, (size_t)(p - v));
		if (*p == '"')
			p++;
	}
done:
	query_finish(q);
}

static void handle_series(struct conn *c)
{
	struct evkeyvalq params;
	const char *qs = strchr(c->path, '?');
	TAILQ_INIT(&params);
	if (!qs || evhttp_parse_query_str(qs + 1, &params) < 0) {
		evhttp_clear_headers(&params);
		send_text(c, 400, "bad query string\n");
		return;
	}
	struct evbuffer *o = evbuffer_new();
	struct fquery *q = malloc(sizeof(*q));
	int n_match = 0, code = 200;
	evbuffer_add_printf(o, "{\"status\":\"success\",\"data\":[");
	int first = 1;
	struct evkeyval *kv;
	TAILQ_FOREACH(kv, &params, next) {
		/* evhttp_parse_query_str decodes values but not keys: match%5B%5D is common */
		if (strcmp(kv->key, "match[]") && strcasecmp(kv->key, "match%5B%5D"))
			continue;
		n_match++;
		selector_labels(kv->value, q);
		const char *v;
		if ((v = labels_get(q, "tag")))
			record_probe_tag(v, c->path);
		if ((v = labels_get(q, "mode")) && !strcmp(v, "status")) {
			code = (v = labels_get(q, "status")) ? (int)parse_u64(v, 500) : 500;
			break;
		}
		if ((v = labels_get(q, "probe_status"))) {
			code = (int)parse_u64(v, 500);
			if (code < 100 || code > 599)
				code = 500;
			if (code != 200)
				break;
		}
		uint64_t n_series = (v = labels_get(q, "probe_series")) ? parse_u64(v, q->series) : q->series;
		for (uint64_t s = 0; q->fake && s < n_series; s++) {
			evbuffer_add_printf(o, first ? "{" : ",{");
			first = 0;
			for (size_t i = 0; i < q->n_labels; i++) {
				if (i)
					evbuffer_add(o, ",", 1);
				json_str(o, q->labels[i].name);
				evbuffer_add(o, ":", 1);
				if (!strcmp(q->labels[i].name, "id"))
					evbuffer_add_printf(o, "\"%" PRIu64 "\"", s);
				else
					json_str(o, q->labels[i].value);
			}
			evbuffer_add(o, "}", 1);
		}
	}
	evbuffer_add_printf(o, "]}");
	if (code != 200 || n_match == 0) {
		char err[160];
		int n = n_match == 0
			? snprintf(err, sizeof(err), "{\"status\":\"error\",\"errorType\":\"bad_data\","
				   "\"error\":\"no match[] parameter provided\"}")
			: snprintf(err, sizeof(err), "{\"status\":\"error\",\"errorType\":\"internal\","
				   "\"error\":\"fake store error %d\"}", code);
		send_response(c, n_match == 0 ? 400 : code, "application/json", "", err, (size_t)n);
	} else {
		size_t n = evbuffer_get_length(o);
		send_response(c, 200, "application/json", "", evbuffer_pullup(o, -1), n);
	}
	free(q);
	evbuffer_free(o);
	evhttp_clear_headers(&params);
}

static void handle_stats(struct conn *c)
{
	struct evbuffer *o = evbuffer_new();
	evbuffer_add_printf(o, "{\"requests\":{");
	for (size_t i = 0; i < st.n_paths; i++) {
		if (i)
			evbuffer_add(o, ",", 1);
		json_str(o, st.paths[i].path);
		evbuffer_add_printf(o, ":%" PRIu64, st.paths[i].n);
	}
	evbuffer_add_printf(o, "},\"modes\":{");
	for (size_t i = 0; i < sizeof(mode_names) / sizeof(mode_names[0]); i++)
		evbuffer_add_printf(o, "%s\"%s\":%" PRIu64, i ? "," : "", mode_names[i], st.modes[i]);
	evbuffer_add_printf(o, "},\"tags\":{");
	for (size_t i = 0; i < st.n_tags; i++) {
		if (i)
			evbuffer_add(o, ",", 1);
		json_str(o, st.tags[i].tag);
		evbuffer_add_printf(o,
				    ":{\"count\":%" PRIu64 ",\"first_seq\":%" PRIu64 ",\"last_seq\":%" PRIu64
				    ",\"first_ms\":%" PRId64 ",\"last_ms\":%" PRId64 ",\"done\":%" PRIu64
				    ",\"done_ms\":%" PRId64 ",\"headers\":%s}",
				    st.tags[i].n, st.tags[i].first_seq, st.tags[i].last_seq, st.tags[i].first_ms,
				    st.tags[i].last_ms, st.tags[i].done, st.tags[i].done_ms,
				    st.tags[i].headers_json ? st.tags[i].headers_json : "{}");
	}
	evbuffer_add_printf(o, "},\"probe_tags\":{");
	for (size_t i = 0; i < st.n_probe_tags; i++) {
		if (i)
			evbuffer_add(o, ",", 1);
		json_str(o, st.probe_tags[i].tag);
		evbuffer_add_printf(o, ":{\"count\":%" PRIu64 ",\"path\":", st.probe_tags[i].n);
		json_str(o, st.probe_tags[i].path);
		evbuffer_add(o, "}", 1);
	}
	evbuffer_add_printf(o,
			    "},\"streamed_responses\":%" PRIu64 ",\"samples_responses\":%" PRIu64
			    ",\"stream_bytes\":%" PRIu64 ",\"connections_total\":%" PRIu64
			    ",\"connections_open\":%" PRIu64 ",\"client_gone\":%" PRIu64 ",\"reads\":%" PRIu64
			    ",\"reads_active\":%" PRIu64 ",\"max_reads_active\":%" PRIu64 ",\"now_ms\":%" PRId64 "}\n",
			    st.streamed, st.samples_responses, st.stream_bytes, st.connections_total,
			    st.connections_open, st.client_gone, st.read_seq, st.reads_active, st.max_reads_active,
			    mono_ms());
	size_t n = evbuffer_get_length(o);
	send_response(c, 200, "application/json", "", evbuffer_pullup(o, -1), n);
	evbuffer_free(o);
}

static void dispatch(struct conn *c, const uint8_t *body, size_t len)
{
	char path[sizeof(c->path)];
	snprintf(path, sizeof(path), "%s", c->path);
	char *q = strchr(path, '?');
	if (q)
		*q = 0;
	if (strcmp(path, "/stats"))
		count_path(path);
	if (!strcmp(path, "/api/v1/read"))
		handle_read(c, body, len);
	else if (!strcmp(path, "/api/v1/series"))
		handle_series(c);
	else if (!strcmp(path, "/stats"))
		handle_stats(c);
	else
		send_text(c, 404, "404 page not found\n");
}

/* Parse the request head at the start of <in>. Returns 1 when parsed, 0 when incomplete, -1 bad. */
static int parse_head(struct conn *c, struct evbuffer *in)
{
	struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
	if (end.pos < 0)
		return evbuffer_get_length(in) > MAX_HEADER_BYTES ? -1 : 0;
	size_t hlen = (size_t)end.pos + 4;
	char *head = malloc(hlen + 1);
	evbuffer_remove(in, head, hlen);
	head[hlen] = 0;
	char *save = NULL, *line = strtok_r(head, "\r\n", &save);
	char version[16] = "";
	if (!line || sscanf(line, "%15s %2047s %15s", c->method, c->path, version) != 3) {
		free(head);
		return -1;
	}
	c->keepalive = !strcmp(version, "HTTP/1.1");
	c->chunked_body = 0;
	c->content_length = 0;
	while ((line = strtok_r(NULL, "\r\n", &save))) {
		char *colon = strchr(line, ':');
		if (!colon || c->n_hdrs == MAX_HEADERS)
			continue;
		*colon = 0;
		char *v = colon + 1;
		while (*v == ' ' || *v == '\t')
			v++;
		c->hdrs[c->n_hdrs].name = strdup(line);
		c->hdrs[c->n_hdrs].value = strdup(v);
		c->n_hdrs++;
		if (!strcasecmp(line, "content-length"))
			c->content_length = (size_t)strtoull(v, NULL, 10);
		else if (!strcasecmp(line, "transfer-encoding") && strcasestr(v, "chunked"))
			c->chunked_body = 1;
		else if (!strcasecmp(line, "connection") && strcasestr(v, "close"))
			c->keepalive = 0;
		else if (!strcasecmp(line, "connection") && strcasestr(v, "keep-alive"))
			c->keepalive = 1;
	}
	free(head);
	c->have_head = 1;
	return 1;
}

/*
 * Try to take a whole chunked body off the front of <in> into <out>. Returns 1 done, 0 need more,
 * -1 malformed. Leaves <in> untouched unless done.
 */
static int take_chunked(struct evbuffer *in, struct buf *out)
{
	size_t total = evbuffer_get_length(in);
	const char *p = (const char *)evbuffer_pullup(in, -1), *e = p + total, *s = p;
	out->len = 0;
	for (;;) {
		const char *eol = memchr(s, '\n', (size_t)(e - s));
		if (!eol)
			return 0;
		char *endp;
		unsigned long long n = strtoull(s, &endp, 16);
		if (endp == s)
			return -1;
		s = eol + 1;
		if (n == 0) {
			/* trailers until an empty line */
			for (;;) {
				eol = memchr(s, '\n', (size_t)(e - s));
				if (!eol)
					return 0;
				int empty = eol == s || (eol == s + 1 && *s == '\r');
				s = eol + 1;
				if (empty) {
					evbuffer_drain(in, (size_t)(s - p));
					return 1;
				}
			}
		}
		if (n > MAX_BODY_BYTES || out->len + n > MAX_BODY_BYTES)
			return -1;
		if ((size_t)(e - s) < n + 2)
			return 0;
		buf_put(out, s, n);
		s += n + 2;
	}
}

static void conn_process(struct conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	while (c->state == CS_READING) {
		if (!c->have_head) {
			int rc = parse_head(c, in);
			if (rc == 0)
				return;
			if (rc < 0) {
				c->keepalive = 0;
				send_text(c, 400, "bad request\n");
				return;
			}
		}
		struct buf body = {0};
		if (c->chunked_body) {
			int rc = take_chunked(in, &body);
			if (rc == 0) {
				buf_free(&body);
				return;
			}
			if (rc < 0) {
				buf_free(&body);
				c->keepalive = 0;
				send_text(c, 400, "bad chunked body\n");
				return;
			}
		} else {
			if (c->content_length > MAX_BODY_BYTES) {
				c->keepalive = 0;
				send_text(c, 413, "request too large\n");
				return;
			}
			if (evbuffer_get_length(in) < c->content_length)
				return;
			buf_reserve(&body, c->content_length + 1);
			evbuffer_remove(in, body.p, c->content_length);
			body.len = c->content_length;
		}
		dispatch(c, body.p, body.len);
		buf_free(&body);
		/* close / reset modes queue nothing, so no write callback will come: finish here */
		if (c->state == CS_FLUSHING && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
			if (c->close_after) {
				conn_free(c);
				return;
			}
			conn_reset_request(c);
			c->state = CS_READING;
		}
	}
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	conn_process(arg);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct conn *c = arg;
	if (c->state == CS_STREAMING) {
		stream_more(c);
		if (c->state == CS_STREAMING || evbuffer_get_length(bufferevent_get_output(c->bev)) > 0)
			return;
	}
	if (c->state != CS_FLUSHING)
		return;
	if (c->close_after) {
		conn_free(c);
		return;
	}
	conn_reset_request(c);
	c->state = CS_READING;
	conn_process(c);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	struct conn *c = arg;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		if (c->state == CS_STREAMING || c->state == CS_WAITING ||
		    (c->state == CS_FLUSHING && evbuffer_get_length(bufferevent_get_output(c->bev)) > 0))
			st.client_gone++;
		conn_free(c);
	}
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	(void)l;
	(void)sa;
	(void)salen;
	(void)arg;
	struct conn *c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return;
	}
	c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	c->state = CS_READING;
	c->next = conns;
	if (conns)
		conns->prev = c;
	conns = c;
	st.connections_total++;
	st.connections_open++;
	bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	(void)arg;
	event_base_loopbreak(base);
}

static void usage(void)
{
	fprintf(stderr, "usage: fakestore --listen HOST:PORT   (PORT 0 picks a free port)\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *listen_arg = "127.0.0.1:0";
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--listen") && i + 1 < argc)
			listen_arg = argv[++i];
		else
			usage();
	}
	char host[64];
	const char *colon = strrchr(listen_arg, ':');
	if (!colon || (size_t)(colon - listen_arg) >= sizeof(host))
		usage();
	snprintf(host, sizeof(host), "%.*s", (int)(colon - listen_arg), listen_arg);
	struct sockaddr_in sin = {0};
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &sin.sin_addr) != 1)
		usage();

	signal(SIGPIPE, SIG_IGN);
	crc_init();
	base = event_base_new();
	struct evconnlistener *l = evconnlistener_new_bind(base, accept_cb, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
							   128, (struct sockaddr *)&sin, sizeof(sin));
	if (!l) {
		fprintf(stderr, "fakestore: cannot listen on %s: %s\n", listen_arg, strerror(errno));
		return 1;
	}
	struct sockaddr_in bound;
	socklen_t blen = sizeof(bound);
	getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&bound, &blen);
	printf("listening on %s:%u\n", host, ntohs(bound.sin_port));
	fflush(stdout);

	struct event *sigterm = evsignal_new(base, SIGTERM, signal_cb, NULL);
	struct event *sigint = evsignal_new(base, SIGINT, signal_cb, NULL);
	evsignal_add(sigterm, NULL);
	evsignal_add(sigint, NULL);
	event_base_dispatch(base);
	event_free(sigterm);
	event_free(sigint);
	evconnlistener_free(l);
	while (conns)
		conn_free(conns);
	for (size_t i = 0; i < st.n_tags; i++)
		free(st.tags[i].headers_json);
	event_base_free(base);
	return 0;
}

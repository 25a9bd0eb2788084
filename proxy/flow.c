/*
 * proxy_flow: the remote-read request path (see flow.h). Read proxy_flow_handle() first, then
 * flow_estimated() and flow_forward(); the upstream callbacks below them follow the response from
 * its head to its last byte.
 */
#include "proxy/flow.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <snappy-c.h>
#include <xxhash.h>

#include "limiter/admission.h"
#include "limiter/estimator.h"
#include "limiter/probe.h"
#include "limiter/queue.h"
#include "pool/pool.h"
#include "proto/frame.h"
#include "proto/request.h"
#include "proto/scan.h"
#include "proto/selector.h"
#include "proto/snappy.h"
#include "proto/wire.h"
#include "proxy/conf.h"
#include "proxy/http.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "proxy/server.h"
#include "proxy/upstream.h"

#define TENANT_MAX 128                    /* longest tenant header value accepted */
#define STREAM_MAX_FRAME 50000000         /* Prometheus' own chunked_read_limit default */
#define SNAPPY_WINDOW 65536               /* Go's snappy encoder refers back at most this far */
#define SAMPLES_DECODED_MAX (64ULL << 30) /* a SAMPLES body declaring more is corrupt */
#define PROBE_TIMEOUT_MS 5000             /* a probe slower than this is a failed probe */
#define LOG_EVERY_MS 10000                /* one rejection line per selector per this long */
#define LOG_SLOTS 1024                    /* selectors tracked for log rate limiting */
#define TOP_REJECTED 32                   /* selectors kept for /api/v1/status */
#define SELECTOR_MAX 2048                 /* printed selector in logs and status */
#define EXPLAIN_MAX_QUERIES 16            /* match[] values one explain call may ask about */
#define RESERVE_MIN (1u << 20)            /* reserved for a SAMPLES response with no byte estimate */
#define RESERVE_STREAM (2u << 20)         /* a stream's relay buffers: read burst + client high water */
#define RESERVE_STEP (1u << 20)           /* a growing SAMPLES body reserves at least this much more */
#define UPSTREAM_MARGIN_MS 200            /* a pool wait ends this long before upstream.timeout */
#define BACKOFF_JITTER 0.2                /* a backoff delay is cut by up to this fraction at random */
#define CAPACITY_LOG_MS 1000              /* one over-capacity line per reason per this long */
#define QUEUE_MEM_WAIT_MS (3600 * 1000)   /* the queue's own pool wait: renewed, or cancelled when empty */

/* What a request waiting for pool memory resumes when it may have it. (Reserving a response's
 * memory before the store is asked waits in the deferral queue instead.) */
enum wait_stage {
	WAIT_DECODE,  /* copying and decoding the request */
	WAIT_GROW,    /* growing a SAMPLES body's reservation while the store is paused */
};

/* Over-capacity log lines are rate-limited per reason (a storm must not flood the log). */
struct log_every {
	int64_t last_ms;
	uint64_t suppressed;
};

/* How a response is relayed, decided from its status and Content-Type. */
enum relay_mode {
	RELAY_NONE,    /* no response head yet */
	RELAY_SAMPLES, /* 2xx SAMPLES: buffered, counted and checked, then sent whole */
	RELAY_STREAM,  /* 2xx STREAMED_XOR_CHUNKS: relayed as it arrives, frames counted and checked */
	RELAY_PASS,    /* anything else (store errors): relayed as it arrives, untouched */
};

/* Rejection logs are rate-limited per selector fingerprint (direct-mapped, bounded). */
struct log_slot {
	uint64_t fingerprint;
	int64_t last_ms;
	uint64_t suppressed;
};

/* A frequently rejected selector, for /api/v1/status (space-saving: the rarest is replaced). */
struct top_rejected {
	uint64_t fingerprint;
	uint64_t count;
	char tenant[TENANT_MAX + 1];
	char reason[32];
	char selector[256];
};

/* Requests in flight per tenant, for a tenant's own limits.max_inflight. */
struct tenant_inflight {
	char tenant[TENANT_MAX + 1];
	uint64_t n;
};

/*
 * Learning from responses, refreshed at most once per LEARN_REFRESH_MS per selector. The
 * estimator's sketches are idempotent, so learning the same selector's answer again and again
 * (a dashboard panel hit by many viewers, a rule evaluated by several Prometheus replicas) only
 * costs CPU: collecting and hashing every label was a third of a small request's user time. A
 * response whose every query was learned from within the period is still counted whole (the
 * limits and the recall figures see every response); only its labels are not collected.
 * Direct-mapped by fingerprint: a collision just means one more learn.
 */
#define LEARN_REFRESH_MS 1000
#define LEARN_SLOTS 4096

struct learn_slot {
	uint64_t fp;   /* est_fingerprint of the selector */
	int64_t at_ms; /* now_ms() when a complete response of it was last learned; 0: never */
};

struct proxy_flow {
	struct conf *conf;                /* ref-counted; requests hold the one they began with */
	struct proxy_upstream *up;        /* (ref) the store */
	struct proxy_upstream *probe_up;  /* (ref) the store's series API; NULL: probes off */
	struct pool *pool;                /* (ref) buffer memory: every response reserves from it */
	char probe_path[256];             /* e.g. /api/v1/series */
	struct est *est;
	struct proxy_flow_stats stats;
	struct log_slot log_slots[LOG_SLOTS];
	struct top_rejected top[TOP_REJECTED];
	struct tenant_inflight *tin;      /* tenants with requests in flight */
	size_t n_tin, cap_tin;
	struct event_base *base;          /* (ref) */
	struct limiter_queue *queue;      /* deferred requests: no capacity yet, or a store retry */
	struct event *queue_timer;        /* at limiter_queue_next_wake(): deadlines and retries */
	struct event *queue_kick;         /* activated when capacity is freed: dispatch at once */
	struct pool_waiter *queue_mem;    /* the queue's one wait for pool memory (for a head) */
	uint64_t queue_mem_bytes;         /* what it waits for */
	char queue_blocked[192];          /* the memory a queue head last lacked (for 429 lines) */
	struct log_every log_full, log_timeout;
	struct learn_slot learned[LEARN_SLOTS]; /* when each selector's answer was last learned */
};

struct flow_req;

/* One query of a request: its estimate, its decision, its probe. */
struct flow_query {
	struct flow_req *fr;                 /* (ref) owner */
	const struct proto_query *q;         /* (ref) into fr->decoded */
	struct est_result est;
	struct limiter_decision decision;    /* admission outcome (admit or shadow when forwarded) */
	struct proxy_upstream_req *probe;    /* (ref) series API request in flight */
	struct limiter_probe_count count;    /* probe answer so far */
	int shadow_counted;                  /* a shadow rejection during the response was counted */
	int counted;                         /* promguard_queries_total has its decision */
};

/* One remote-read request in flight. */
struct flow_req {
	struct proxy_flow *f;             /* (ref) */
	struct conf *conf;                /* counted reference: the config this request runs under */
	struct proxy_req *req;            /* (ref) client request; NULL once the client is gone */
	struct proxy_upstream_req *ureq;  /* (ref) NULL when not talking to the store */
	struct proto_request *decoded;
	struct flow_query *qs;
	size_t probes_pending;
	char tenant[TENANT_MAX + 1];
	struct limiter_input in;          /* tenant, limits and config for the limiter */
	uint8_t *body;                    /* contiguous request body, forwarded as is (in body_arena) */
	struct pool_arena body_arena;     /* the body copy: pool memory */
	struct pool_arena arena;          /* the decoded request: pool memory */
	enum wait_stage wait_stage;       /* what a pool wait resumes */
	size_t body_len;
	enum relay_mode relay;
	int status;                       /* the store's status */
	struct evbuffer *samples;         /* RELAY_SAMPLES: the buffered body */
	struct proto_frame_reader *frames;/* RELAY_STREAM: counts the frames as they pass */
	struct proto_snappy *snap;        /* RELAY_SAMPLES: windowed decoder feeding <scan> */
	struct proto_scan *scan;          /* RELAY_SAMPLES: counts as the body arrives */
	int scan_whole;                   /* the body must be decoded whole to be counted */
	int learning;                     /* the response's labels go to the estimator (learn_due) */
	char scan_err[256];               /* why the response is corrupt */
	uint64_t resp_bytes;              /* bytes received from the store */
	int paused;                       /* upstream reading paused for a slow client */
	int paused_mem;                   /* upstream reading paused until pool memory is free */
	int inflight;                     /* counted in the in-flight gauges */
	int forwarded;                    /* sent to the store: its queries count as admitted unless refused */
	uint64_t reserved;                /* bytes of pool.memory_limit claimed for the response */
	struct pool_waiter *waiter;       /* waiting for pool memory (admission or a growing body) */
	int64_t wait_start_ms;            /* when the current wait began (pool_now_ms clock) */
	struct timespec t0;               /* sent to the store */
	struct limiter_queue_entry qe;    /* its place in the deferral queue, and its backoff hold */
	enum limiter_queue_exit qexit;    /* how it leaves the queue's care (flow_req_free) */
	int64_t arrived_ms;               /* when the request arrived (pool_now_ms clock) */
	int64_t deadline_ms;              /* last moment to start (or retry): arrival + min(queue.max_wait,
					     upstream.timeout) */
	uint64_t qkey;                    /* backoff key: tenant + the queries' selector fingerprints */
	char blocked[192];                /* the capacity it last waited for, e.g. limits.max_inflight=16 */
	uint32_t retries;                 /* store attempts retried */
	int retrying;                     /* deferred after a store failure (not for capacity) */
	int deferred;                     /* was pushed to the queue: leave it in flow_req_free */
	int last_status;                  /* the last store failure, answered if retries give up */
	char last_kind[24];
	char last_error[256];
};

static void flow_forward(struct flow_req *fr);
static void flow_admit(struct flow_req *fr);
static int flow_send(struct flow_req *fr);
static enum limiter_queue_try queue_try(struct limiter_queue_entry *e, void *arg);
static void queue_kick(struct proxy_flow *f);
static void queue_changed(struct proxy_flow *f);
static void refresh_queue_metrics(struct proxy_flow *f);
static void flow_retry(struct flow_req *fr, const char *kind, int status, const char *what);
static void reply_over_capacity(struct flow_req *fr, const char *reason, int64_t retry_after_ms, const char *line);
static void samples_reserve_more(struct flow_req *fr);
static int flow_wait_memory(struct flow_req *fr, uint64_t bytes, enum pool_priority prio);
static void flow_wait_stage(struct flow_req *fr, enum wait_stage stage, uint64_t bytes);
static void flow_decode(struct flow_req *fr);
static void on_client_drain(struct proxy_req *req, void *arg);
static void on_client_close(struct proxy_req *req, void *arg);

static double since(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

static int64_t now_ms(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* Copy NUL-terminated <src> into <dst> of <n> bytes, cut to fit (snprintf "%s" without the
 * format parsing: these copies run per request). */
static void copy_str(char *dst, size_t n, const char *src)
{
	size_t len = strnlen(src, n - 1);

	memcpy(dst, src, len);
	dst[len] = '\0';
}

static void count_request(int status)
{
	char code[4] = "000";

	/* HTTP status codes are three digits (100-599); the per-request snprintf showed in profiles */
	if (status >= 100 && status <= 999) {
		code[0] = (char)('0' + status / 100);
		code[1] = (char)('0' + status / 10 % 10);
		code[2] = (char)('0' + status % 10);
	}
	metrics_inc(METRICS_REQUESTS, code, NULL);
}

/*
 * A tenant name becomes a metric label and a log value, so accept only what tenant IDs look
 * like elsewhere (Mimir/Cortex): printable ASCII without spaces or quotes, bounded length.
 */
static int tenant_valid(const char *t, const char **why)
{
	size_t n = strlen(t);

	if (n == 0 || n > TENANT_MAX) {
		*why = n ? "longer than 128 bytes" : "empty";
		return 0;
	}
	for (; *t; t++) {
		unsigned char c = (unsigned char)*t;
		if (!(isalnum(c) || strchr("!-_.*'()", c))) {
			*why = "only letters, digits and !-_.*'() are allowed";
			return 0;
		}
	}
	return 1;
}

/* The estimator's settings from a config. */
static void est_settings_from(const struct conf *c, struct est_settings *s, struct est_hint *hints)
{
	for (size_t i = 0; i < c->n_est_hints; i++) {
		hints[i].metric = c->est_hints[i].metric;
		hints[i].series = (uint64_t)c->est_hints[i].series;
	}
	s->scrape_interval_ms = c->est_scrape_interval_ms;
	s->max_memory = (uint64_t)c->est_max_memory;
	s->hints = hints;
	s->n_hints = c->n_est_hints;
}

/*
 * Copy the estimator's and the queue's figures into their metrics. Called when /metrics is
 * scraped (and after a reload), not per response: they are read from their owners, so nothing
 * is lost between scrapes, and the gauge updates were a visible share of a small request's CPU.
 */
void proxy_flow_refresh_metrics(struct proxy_flow *f)
{
	struct est_stats st;

	est_get_stats(f->est, &st);
	metrics_set(METRICS_EST_MEMORY, NULL, NULL, (double)st.memory_bytes);
	metrics_set(METRICS_EST_MEMORY_LIMIT, NULL, NULL, (double)st.memory_limit);
	metrics_set(METRICS_EST_ENTRIES, "recall", NULL, (double)st.recall_entries);
	metrics_set(METRICS_EST_ENTRIES, "metrics", NULL, (double)st.metrics);
	metrics_set(METRICS_EST_ENTRIES, "label_values", NULL, (double)st.label_values);
	metrics_set(METRICS_EST_EVICTIONS, NULL, NULL, (double)st.evictions);
	refresh_queue_metrics(f);
	metrics_set(METRICS_EST_SERIES, "learned", NULL, (double)st.learned_series);
	metrics_set(METRICS_EST_SERIES, "recent", NULL, (double)st.learn_skipped);
	metrics_set(METRICS_EST_RESPONSES, "learned", NULL, (double)f->stats.learned);
	metrics_set(METRICS_EST_RESPONSES, "fresh", NULL, (double)f->stats.learn_fresh);
}

/* --- per-tenant in-flight counts ------------------------------------------------------------ */

static struct tenant_inflight *tin_find(struct proxy_flow *f, const char *tenant)
{
	for (size_t i = 0; i < f->n_tin; i++)
		if (strcmp(f->tin[i].tenant, tenant) == 0)
			return &f->tin[i];
	return NULL;
}

static uint64_t tin_get(struct proxy_flow *f, const char *tenant)
{
	struct tenant_inflight *t = tin_find(f, tenant);

	return t ? t->n : 0;
}

/* Enter or leave the in-flight set; entries exist only while a tenant has requests running. */
static int inflight_enter(struct flow_req *fr)
{
	struct proxy_flow *f = fr->f;
	struct tenant_inflight *t = tin_find(f, fr->tenant);

	if (!t) {
		if (f->n_tin == f->cap_tin) {
			size_t cap = f->cap_tin ? f->cap_tin * 2 : 8;
			struct tenant_inflight *n = realloc(f->tin, cap * sizeof(*n));
			if (!n)
				return -ENOMEM;
			f->tin = n;
			f->cap_tin = cap;
		}
		t = &f->tin[f->n_tin++];
		copy_str(t->tenant, sizeof(t->tenant), fr->tenant);
		t->n = 0;
	}
	t->n++;
	f->stats.inflight++;
	fr->inflight = 1;
	metrics_set(METRICS_INFLIGHT, NULL, NULL, (double)f->stats.inflight);
	return 0;
}

static void inflight_leave(struct flow_req *fr)
{
	struct proxy_flow *f = fr->f;
	struct tenant_inflight *t;

	if (!fr->inflight)
		return;
	fr->inflight = 0;
	f->stats.inflight--;
	metrics_set(METRICS_INFLIGHT, NULL, NULL, (double)f->stats.inflight);
	t = tin_find(f, fr->tenant);
	if (t && --t->n == 0)
		*t = f->tin[--f->n_tin];
	queue_kick(f); /* a slot is free: the queue gets it at once */
}

/* --- lifecycle of a request ----------------------------------------------------------------- */

/* A reservation handed to the client connection: released once its reply is written out. */
struct sent_hold {
	struct pool *pool;  /* (ref) */
	uint64_t bytes;
};

static void release_hold(void *arg)
{
	struct sent_hold *h = arg;

	pool_release(h->pool, h->bytes);
	free(h);
}

/*
 * The reply (a SAMPLES body, a stream's tail) may still sit in the client's output buffer: keep
 * its reservation until the connection has written it, so a slow client's bytes stay counted
 * against pool.memory_limit. Without a live client, release now.
 */
static void release_when_sent(struct flow_req *fr)
{
	struct sent_hold *h = fr->req ? malloc(sizeof(*h)) : NULL;

	if (!h) {
		pool_release(fr->f->pool, fr->reserved);
	} else {
		*h = (struct sent_hold){ fr->f->pool, fr->reserved };
		proxy_req_on_done(fr->req, release_hold, h);
	}
	fr->reserved = 0;
}

/* End of the request's life: cancel what is pending, then free. The client reply is given. */
static void flow_req_free(struct flow_req *fr)
{
	/* queries that went to the store and were not refused on the way back were admitted */
	for (size_t i = 0; fr->forwarded && i < fr->decoded->n_queries; i++)
		if (!fr->qs[i].counted)
			metrics_inc(METRICS_QUERIES, fr->tenant, "admitted");
	if (fr->ureq)
		proxy_upstream_cancel(fr->ureq);
	for (size_t i = 0; fr->qs && i < fr->decoded->n_queries; i++)
		if (fr->qs[i].probe)
			proxy_upstream_cancel(fr->qs[i].probe);
	inflight_leave(fr);
	if (fr->deferred) {
		limiter_queue_leave(fr->f->queue, &fr->qe, fr->qexit);
		queue_changed(fr->f);
	}
	pool_wait_cancel(fr->waiter);
	if (fr->reserved)
		release_when_sent(fr);
	proto_request_free(fr->decoded);
	pool_arena_release(&fr->arena);
	pool_arena_release(&fr->body_arena);
	proto_frame_reader_free(fr->frames);
	proto_snappy_free(fr->snap);
	proto_scan_free(fr->scan);
	if (fr->samples)
		evbuffer_free(fr->samples);
	conf_unref(fr->conf);
	free(fr->qs);
	free(fr);
}

/* The store exchange is over: observe its duration. */
static void flow_req_landed(struct flow_req *fr)
{
	if (fr->t0.tv_sec == 0 && fr->t0.tv_nsec == 0)
		return;
	metrics_observe(METRICS_UPSTREAM_DURATION, since(&fr->t0));
	fr->t0.tv_sec = fr->t0.tv_nsec = 0;
	inflight_leave(fr);
}

/* --- answering ----------------------------------------------------------------------------- */

/* Reject a request before it reaches the store: one line, counted as bad_request. */
static void reply_bad(struct proxy_req *req, struct proxy_flow *f, const char *tenant, int status,
		      const char *line)
{
	char q[600];

	f->stats.requests++;
	f->stats.bad_requests++;
	count_request(status);
	metrics_inc(METRICS_REJECTIONS, tenant, "bad_request");
	log_info("request rejected", "tenant=%s code=%d reason=bad_request detail=%s peer=%s", tenant, status,
		 log_quote(q, sizeof(q), line), proxy_req_peer(req));
	proxy_req_add_header(req, "X-Promguard-Decision", "reject; reason=bad_request; estimate=0; source=default");
	proxy_req_reply_text(req, status, "%s", line);
}

/* The decision header of an admitted request: the sum of the estimates, the first query's source. */
static void add_admit_header(struct flow_req *fr)
{
	struct limiter_decision d = { .verdict = LIMITER_ADMIT, .reason = "none" };
	uint64_t total = 0;
	char hdr[256];

	for (size_t i = 0; i < fr->decoded->n_queries; i++) {
		total += fr->qs[i].est.series;
		if (fr->qs[i].decision.verdict == LIMITER_SHADOW_REJECT && d.verdict == LIMITER_ADMIT)
			d = fr->qs[i].decision;
	}
	limiter_format_header(&d, total, est_source_name(fr->qs[0].est.source), hdr, sizeof(hdr));
	proxy_req_add_header(fr->req, "X-Promguard-Decision", hdr);
}

/* A store failure before anything was sent to the client: 502 or 504 with one line. */
static void reply_upstream_error(struct flow_req *fr, int status, const char *kind, const char *what)
{
	struct proxy_flow *f = fr->f;
	char q[700];

	f->stats.requests++;
	f->stats.upstream_errors++;
	count_request(status);
	metrics_inc(METRICS_UPSTREAM_ERRORS, kind, NULL);
	log_warn("upstream failed", "tenant=%s kind=%s upstream=%s detail=%s", fr->tenant, kind,
		 proxy_upstream_name(f->up), log_quote(q, sizeof(q), what));
	add_admit_header(fr);
	proxy_req_reply_text(fr->req, status, "promguard: upstream %s", what);
}

/* A failure after the client got the status line: cut the connection so it sees an error. */
static void cut_stream(struct flow_req *fr, const char *kind, const char *what)
{
	struct proxy_flow *f = fr->f;
	char q[700];

	f->stats.requests++;
	f->stats.upstream_errors++;
	count_request(fr->status);
	metrics_inc(METRICS_UPSTREAM_ERRORS, kind, NULL);
	log_warn("response cut", "tenant=%s kind=%s upstream=%s relayed_bytes=%llu detail=%s", fr->tenant, kind,
		 proxy_upstream_name(f->up), (unsigned long long)fr->resp_bytes, log_quote(q, sizeof(q), what));
	proxy_req_abort(fr->req);
}

/* Remember a rejected selector for /api/v1/status (space-saving top list). */
static void top_record(struct proxy_flow *f, uint64_t fp, const char *tenant, const char *reason, const char *sel)
{
	struct top_rejected *slot = &f->top[0];

	for (size_t i = 0; i < TOP_REJECTED; i++) {
		if (f->top[i].count && f->top[i].fingerprint == fp) {
			f->top[i].count++;
			return;
		}
		if (f->top[i].count < slot->count)
			slot = &f->top[i];
	}
	/* the rarest is replaced and its count inherited: counts are upper bounds, as in space-saving */
	slot->fingerprint = fp;
	slot->count++;
	snprintf(slot->tenant, sizeof(slot->tenant), "%s", tenant);
	snprintf(slot->reason, sizeof(slot->reason), "%s", reason);
	/* long selectors are cut for the status page; the log has them whole */
	snprintf(slot->selector, sizeof(slot->selector), "%.*s", (int)sizeof(slot->selector) - 1, sel);
}

/*
 * The rate-limit slot of selector <fp>: two candidates (two-way associative), the one already
 * holding <fp>, else the one used least recently. Direct mapping lost a selector's suppressed
 * count whenever another selector took its slot.
 */
static struct log_slot *log_slot_for(struct proxy_flow *f, uint64_t fp)
{
	struct log_slot *a = &f->log_slots[fp % LOG_SLOTS];
	struct log_slot *b = &f->log_slots[(fp >> 32) % LOG_SLOTS];

	if (a->fingerprint == fp)
		return a;
	if (b->fingerprint == fp)
		return b;
	return a->last_ms <= b->last_ms ? a : b;
}

/*
 * Count and log a rejection or a shadow rejection of <fq> with the same labels, at most one log
 * line per selector per LOG_EVERY_MS (the next line reports how many were suppressed).
 */
static void note_rejection(struct flow_query *fq, const struct limiter_decision *d)
{
	struct flow_req *fr = fq->fr;
	struct proxy_flow *f = fr->f;
	int shadow = d->verdict == LIMITER_SHADOW_REJECT;
	struct log_slot *slot = log_slot_for(f, fq->est.fingerprint);
	int64_t now = now_ms();
	char sel[SELECTOR_MAX], qsel[SELECTOR_MAX + 64], range[128], lim[48], suppressed[48] = "";

	proto_selector_print(fq->q, sel, sizeof(sel));
	/* one decision per query; a real rejection during the response after a dry-run rule's shadow
	 * rejection at admission is a second, different fact and is counted too */
	if (!shadow || !fq->counted)
		metrics_inc(METRICS_QUERIES, fr->tenant, shadow ? "shadow_rejected" : "rejected");
	fq->counted = 1;
	metrics_inc(shadow ? METRICS_SHADOW_REJECTIONS : METRICS_REJECTIONS, fr->tenant, d->reason);
	if (!shadow)
		top_record(f, fq->est.fingerprint, fr->tenant, d->reason, sel);
	if (slot->fingerprint == fq->est.fingerprint && now - slot->last_ms < LOG_EVERY_MS) {
		slot->suppressed++;
		return;
	}
	proto_range_print(fq->q, range, sizeof(range));
	conf_format_value(d->type, d->limit, lim, sizeof(lim));
	if (slot->fingerprint == fq->est.fingerprint && slot->suppressed)
		snprintf(suppressed, sizeof(suppressed), " suppressed=%llu", (unsigned long long)slot->suppressed);
	/* interface.md: limit=<key> value=<limit>; the figure that broke it is actual= or estimate= */
	log_warn(shadow ? "query would be rejected (dry run)" : "query rejected",
		 "tenant=%s reason=%s limit=%s value=%s %s=%llu estimate=%llu source=%s selector=%s range=%s%s",
		 fr->tenant, d->reason, d->key, lim, d->actual ? "actual" : "estimated", (unsigned long long)d->value,
		 (unsigned long long)fq->est.series, est_source_name(fq->est.source), log_quote(qsel, sizeof(qsel), sel),
		 range, suppressed);
	slot->fingerprint = fq->est.fingerprint;
	slot->last_ms = now;
	slot->suppressed = 0;
}

/* Reject the request because of query <fq> (422, or 429 for capacity): count, log, answer. */
static void reply_rejected(struct flow_req *fr, struct flow_query *fq, const struct limiter_decision *d)
{
	char line[SELECTOR_MAX + 512], hdr[256];

	note_rejection(fq, d);
	fr->f->stats.requests++;
	fr->f->stats.rejected++;
	count_request(422);
	limiter_format_rejection(d, fq->q, fr->tenant, est_source_name(fq->est.source), line, sizeof(line));
	limiter_format_header(d, fq->est.series, est_source_name(fq->est.source), hdr, sizeof(hdr));
	proxy_req_add_header(fr->req, "X-Promguard-Decision", hdr);
	proxy_req_reply_text(fr->req, 422, "%s", line);
}

/* Count a shadow rejection once per query (dry run: the query goes on). */
static void note_shadow(struct flow_query *fq, const struct limiter_decision *d)
{
	if (fq->shadow_counted)
		return;
	fq->shadow_counted = 1;
	note_rejection(fq, d);
}

/* --- learning from what was relayed --------------------------------------------------------- */

/* 1 when some query of <fr> has not had a complete response learned within LEARN_REFRESH_MS. */
static int learn_due(const struct flow_req *fr, int64_t now)
{
	for (size_t i = 0; i < fr->decoded->n_queries; i++) {
		const struct learn_slot *sl = &fr->f->learned[fr->qs[i].est.fingerprint % LEARN_SLOTS];

		if (sl->fp != fr->qs[i].est.fingerprint || sl->at_ms == 0 || now - sl->at_ms >= LEARN_REFRESH_MS)
			return 1;
	}
	return 0;
}

/* A complete response of <fr> was counted; if it was learned, its selectors are fresh for
 * LEARN_REFRESH_MS. */
static void learn_mark(struct flow_req *fr)
{
	int64_t now = now_ms();

	if (!fr->learning) {
		fr->f->stats.learn_fresh++;
		return;
	}
	fr->f->stats.learned++;
	for (size_t i = 0; i < fr->decoded->n_queries; i++) {
		struct learn_slot *sl = &fr->f->learned[fr->qs[i].est.fingerprint % LEARN_SLOTS];

		sl->fp = fr->qs[i].est.fingerprint;
		sl->at_ms = now ? now : 1;
	}
}

static void on_series_labels(void *ctx, size_t query_index, const struct proto_label *labels, size_t n_labels)
{
	struct flow_req *fr = ctx;

	(void)query_index;
	if (n_labels)
		est_learn_series(fr->f->est, fr->tenant, labels, n_labels);
}

/* Teach the estimator the actual outcome of each query, and observe the estimate's error. */
static void learn_actual(struct flow_req *fr, size_t qi, uint64_t series, uint64_t samples, uint64_t bytes)
{
	struct flow_query *fq = &fr->qs[qi];

	est_learn_query_fp(fr->f->est, fr->tenant, fq->q, fq->est.fingerprint, series, samples, bytes);
	if (fq->est.series > 0)
		metrics_observe(METRICS_ESTIMATE_ERROR_RATIO, (double)series / (double)fq->est.series);
	fr->f->stats.response_series += series;
	metrics_add(METRICS_RESPONSE_SERIES, fr->tenant, NULL, (double)series);
	metrics_add(METRICS_RESPONSE_SAMPLES, fr->tenant, NULL, (double)samples);
}

/* --- the store's response ------------------------------------------------------------------ */

/*
 * Check a query's counts so far against its limits. Returns 1 when the response must be
 * refused (a real rejection, filled in <d>); a shadow rejection is counted and returns 0.
 */
static int over_limit(struct flow_req *fr, size_t qi, uint64_t series, uint64_t samples, uint64_t bytes,
		      struct limiter_decision *d)
{
	limiter_check_actual(&fr->in, series, samples, bytes, d);
	if (d->verdict == LIMITER_SHADOW_REJECT)
		note_shadow(&fr->qs[qi], d);
	return d->verdict == LIMITER_REJECT;
}

/*
 * Hold SAMPLES bytes packed in full 64 KiB chains. Moving the arriving chains instead would keep
 * libevent's partly filled ones: a chunked body (Prometheus sends large SAMPLES chunked) splits a
 * chain at every chunk boundary, and the held body came to about twice its size (massif, 34 MB
 * body: 49 MB in remove_buffer copies + 43 MB of read chains). One memcpy per byte is cheaper.
 */
#define HOLD_CHAIN (64 * 1024 - 256) /* payload that keeps a chain one 64 KiB allocation */

static void hold_packed(struct evbuffer *dst, struct evbuffer *src)
{
	size_t len;

	while ((len = evbuffer_get_length(src)) > 0) {
		struct evbuffer_iovec v[2];
		size_t want = len < HOLD_CHAIN ? len : HOLD_CHAIN, left;
		int n = evbuffer_reserve_space(dst, want, v, 2);

		if (n <= 0) {
			evbuffer_add_buffer(dst, src); /* out of memory: keep the bytes, unpacked */
			return;
		}
		left = want;
		for (int i = 0; i < n; i++) {
			size_t take = v[i].iov_len < left ? v[i].iov_len : left;
			evbuffer_remove(src, v[i].iov_base, take);
			v[i].iov_len = take;
			left -= take;
		}
		evbuffer_commit_space(dst, v, n);
	}
}

/* Decoded SAMPLES bytes go straight to the incremental scanner. */
static int scan_piece(void *ctx, const uint8_t *data, size_t len)
{
	struct flow_req *fr = ctx;

	return proto_scan_feed(fr->scan, data, len, fr->scan_err, sizeof(fr->scan_err));
}

/*
 * Count a SAMPLES piece as it arrives: the windowed snappy decoder feeds the scanner, so no
 * decompressed copy of the body is held (bench/RESULTS.md, "Windowed snappy"). A body whose
 * back-references reach past the window is counted whole at the end instead (scan_whole).
 * Returns 0, or -EBADMSG with fr->scan_err when the body is corrupt.
 */
static int scan_samples_piece(struct flow_req *fr, const uint8_t *data, size_t len)
{
	int rc;

	if (fr->scan_whole || !fr->snap)
		return 0;
	rc = proto_snappy_feed(fr->snap, data, len, scan_piece, fr, fr->scan_err, sizeof(fr->scan_err));
	if (rc == -ERANGE) {
		fr->scan_whole = 1; /* not Go's encoder: decode it whole once it is all here */
		return 0;
	}
	if (rc == -ENOMEM) {
		log_warn("response not counted: out of memory", "tenant=%s", fr->tenant);
		fr->scan_whole = 1;
		return 0;
	}
	return rc < 0 ? -EBADMSG : 0;
}

/*
 * The whole-body fallback: decode into a buffer counted against pool.memory_limit and scan it.
 * Returns 0, -EBADMSG (corrupt) or -ENOMEM (no room in the pool: the body is relayed uncounted).
 */
static int scan_samples_whole(struct flow_req *fr)
{
	size_t clen = evbuffer_get_length(fr->samples), ulen;
	const char *comp = (const char *)evbuffer_pullup(fr->samples, -1);
	char *plain;
	int rc;

	if (snappy_uncompressed_length(comp, clen, &ulen) != SNAPPY_OK) {
		snprintf(fr->scan_err, sizeof(fr->scan_err), "SAMPLES body is not snappy-compressed");
		return -EBADMSG;
	}
	plain = pool_get_large(fr->f->pool, ulen ? ulen : 1);
	if (!plain)
		return -ENOMEM;
	if (snappy_uncompress(comp, clen, plain, &ulen) != SNAPPY_OK) {
		snprintf(fr->scan_err, sizeof(fr->scan_err), "SAMPLES body has corrupt snappy data");
		rc = -EBADMSG;
	} else {
		proto_scan_free(fr->scan);
		fr->scan = proto_scan_new(fr->decoded->n_queries);
		rc = fr->scan ? 0 : -ENOMEM;
		if (rc == 0) {
			if (fr->learning)
				proto_scan_set_series_cb(fr->scan, on_series_labels, fr);
			rc = proto_scan_feed(fr->scan, (const uint8_t *)plain, ulen, fr->scan_err, sizeof(fr->scan_err));
		}
	}
	pool_put_large(fr->f->pool, plain);
	return rc == -ENOMEM ? rc : rc < 0 ? -EBADMSG : 0;
}

/*
 * Check and learn a complete SAMPLES body from its counts. Returns 0 to relay it, 1 when a limit
 * refused it (the 422 is sent), or -EBADMSG with fr->scan_err when it is not a valid snappy
 * ReadResponse.
 */
static int settle_samples(struct flow_req *fr)
{
	size_t clen = evbuffer_get_length(fr->samples), n = 0, nq = fr->decoded->n_queries;
	const struct proto_scan_counts *counts;
	uint64_t total_plain = 0;
	int rc = 0;

	if (!fr->scan)
		return 0; /* could not be counted (logged): relay it */
	if (clen == 0) {
		snprintf(fr->scan_err, sizeof(fr->scan_err), "empty SAMPLES body");
		return -EBADMSG;
	}
	if (fr->scan_whole) {
		rc = scan_samples_whole(fr);
		if (rc == -ENOMEM) {
			log_warn("response not counted: no room in the pool", "tenant=%s key=pool.memory_limit bytes=%zu",
				 fr->tenant, clen);
			return 0;
		}
	} else if ((rc = proto_snappy_finish(fr->snap, fr->scan_err, sizeof(fr->scan_err))) < 0) {
		rc = -EBADMSG;
	}
	if (rc == 0 && proto_scan_finish(fr->scan, fr->scan_err, sizeof(fr->scan_err)) < 0)
		rc = -EBADMSG;
	if (rc < 0)
		return rc;
	counts = proto_scan_results(fr->scan, &n);
	for (size_t i = 0; i < n; i++)
		total_plain += counts[i].bytes;
	for (size_t i = 0; i < n && i < nq; i++) {
		struct limiter_decision d;
		/* compressed bytes attributed to each query in proportion to its decoded size */
		uint64_t share = total_plain ? (uint64_t)((double)clen * (double)counts[i].bytes / (double)total_plain) : 0;
		uint64_t samples = counts[i].samples + counts[i].histograms;

		learn_actual(fr, i, counts[i].series, samples, share);
		if (rc == 0 && over_limit(fr, i, counts[i].series, samples, clen, &d)) {
			reply_rejected(fr, &fr->qs[i], &d);
			rc = 1;
		}
	}
	if (rc == 0)
		learn_mark(fr);
	log_debug("response counted", "tenant=%s status=%d results=%zu bytes=%zu whole=%d learned=%d", fr->tenant,
		  fr->status, n, clen, fr->scan_whole, fr->learning);
	return rc;
}

/*
 * A SAMPLES body over a limit before it is complete (series or samples counted so far): refuse
 * it now, without holding the rest. Returns 1 when the request is finished.
 */
static int samples_over_limit_early(struct flow_req *fr)
{
	size_t n = 0;
	const struct proto_scan_counts *c;
	struct limiter_decision d;

	if (!fr->scan || fr->scan_whole)
		return 0;
	c = proto_scan_results(fr->scan, &n);
	for (size_t i = 0; i < n && i < fr->decoded->n_queries; i++) {
		limiter_check_actual(&fr->in, c[i].series, c[i].samples + c[i].histograms, 0, &d);
		if (d.verdict != LIMITER_REJECT)
			continue;
		/* learn what was seen (a lower bound) so a repeat is refused before the store */
		learn_actual(fr, i, c[i].series, c[i].samples + c[i].histograms, fr->resp_bytes);
		proxy_upstream_cancel(fr->ureq);
		fr->ureq = NULL;
		flow_req_landed(fr);
		reply_rejected(fr, &fr->qs[i], &d);
		flow_req_free(fr);
		return 1;
	}
	return 0;
}

/*
 * A SAMPLES body is held whole until it is counted, so it must stay within its reservation: grow
 * the reservation as the body grows, pausing the store while memory is short (waiting as a relay,
 * which ranks above new intake). A body the whole pool cannot hold is refused (422).
 */
static void samples_reserve_more(struct flow_req *fr)
{
	uint64_t held = evbuffer_get_length(fr->samples) + 2 * SNAPPY_WINDOW;
	uint64_t more = held > fr->reserved ? held - fr->reserved : 0;
	struct limiter_decision d;
	int rc;

	if (more == 0) {
		rc = 0;
	} else {
		if (more < RESERVE_STEP)
			more = RESERVE_STEP;
		/* what this request alone would hold; past the limit no amount of waiting helps */
		uint64_t own = fr->reserved + fr->arena.bytes + fr->body_arena.bytes + more;
		rc = own > (uint64_t)fr->conf->pool_memory_limit ? -E2BIG : pool_reserve_grow(fr->f->pool, more);
	}
	if (rc == 0) {
		fr->reserved += more;
		if (fr->paused_mem) {
			fr->paused_mem = 0;
			if (!fr->paused)
				proxy_upstream_resume(fr->ureq);
		}
		return;
	}
	if (rc == -EAGAIN) {
		if (!fr->paused_mem) {
			fr->paused_mem = 1;
			proxy_upstream_pause(fr->ureq);
		}
		fr->wait_stage = WAIT_GROW;
		if (flow_wait_memory(fr, more, POOL_PRIO_RELAY) == 0)
			return;
	}
	/* -E2BIG (or no memory even to wait): the body cannot be held */
	memset(&d, 0, sizeof(d));
	d.verdict = LIMITER_REJECT;
	d.reason = "response_bytes";
	snprintf(d.key, sizeof(d.key), "pool.memory_limit");
	d.type = CONF_T_SIZE;
	d.limit = fr->conf->pool_memory_limit;
	d.value = held;
	d.actual = 1;
	proxy_upstream_cancel(fr->ureq);
	fr->ureq = NULL;
	flow_req_landed(fr);
	reply_rejected(fr, &fr->qs[0], &d);
	flow_req_free(fr);
}

static void on_upstream_head(void *arg, const struct http_msg *head)
{
	struct flow_req *fr = arg;
	const char *ct = http_msg_header(head, "Content-Type");
	const char *ce = http_msg_header(head, "Content-Encoding");
	int ok = head->status >= 200 && head->status < 300;
	char what[64];

	if (head->status == 502 || head->status == 503) {
		/* the store (or a proxy in front of it) is restarting or overloaded: try again */
		snprintf(what, sizeof(what), "answered %d", head->status);
		flow_retry(fr, head->status == 502 ? "status_502" : "status_503", head->status, what);
		return;
	}
	fr->status = head->status;
	if (ok && ct && strncasecmp(ct, "application/x-protobuf", 22) == 0) {
		fr->relay = RELAY_SAMPLES;
		fr->samples = evbuffer_new();
		fr->snap = proto_snappy_new(SNAPPY_WINDOW, SAMPLES_DECODED_MAX);
		fr->scan = proto_scan_new(fr->decoded->n_queries);
		fr->learning = learn_due(fr, now_ms());
		if (fr->scan && fr->learning)
			proto_scan_set_series_cb(fr->scan, on_series_labels, fr);
		if (!fr->samples || !fr->snap || !fr->scan) {
			proxy_upstream_cancel(fr->ureq);
			fr->ureq = NULL;
			flow_req_landed(fr);
			reply_upstream_error(fr, 502, "protocol", "response could not be buffered: out of memory");
			flow_req_free(fr);
		}
		return;
	}
	if (ok && ct && strncasecmp(ct, "application/x-streamed-protobuf", 31) == 0) {
		fr->relay = RELAY_STREAM;
		if (fr->reserved > RESERVE_STREAM) {
			/* reserved for a SAMPLES body; a stream only needs its relay buffers */
			pool_release(fr->f->pool, fr->reserved - RESERVE_STREAM);
			fr->reserved = RESERVE_STREAM;
		}
		fr->frames = proto_frame_reader_new(STREAM_MAX_FRAME, fr->decoded->n_queries);
		fr->learning = learn_due(fr, now_ms());
		if (fr->frames && fr->learning)
			proto_frame_set_series_cb(fr->frames, on_series_labels, fr);
	} else {
		fr->relay = RELAY_PASS;
		if (head->status >= 500)
			metrics_inc(METRICS_UPSTREAM_ERRORS, "status_5xx", NULL);
		else if (head->status >= 400)
			metrics_inc(METRICS_UPSTREAM_ERRORS, "status_4xx", NULL);
	}
	/* streamed and pass-through responses go out as they arrive, with the store's status */
	if (ct)
		proxy_req_add_header(fr->req, "Content-Type", ct);
	if (ce)
		proxy_req_add_header(fr->req, "Content-Encoding", ce);
	add_admit_header(fr);
	proxy_req_reply_start(fr->req, head->status, head->chunked ? -1 : head->content_length);
}

/* Hand every piece of <data> to <fn> without copying it; stops at the first error. */
static int feed_pieces(struct evbuffer *data, int (*fn)(struct flow_req *, const uint8_t *, size_t),
		       struct flow_req *fr)
{
	struct evbuffer_iovec stack[32], *vec = stack;
	int n = evbuffer_peek(data, -1, NULL, NULL, 0);
	int rc = 0;

	if (n <= 0)
		return 0;
	if (n > 32) {
		vec = malloc((size_t)n * sizeof(*vec));
		if (!vec) {
			snprintf(fr->scan_err, sizeof(fr->scan_err), "out of memory while counting");
			return -ENOMEM;
		}
	}
	n = evbuffer_peek(data, -1, NULL, vec, n);
	for (int i = 0; i < n && rc == 0; i++)
		rc = fn(fr, vec[i].iov_base, vec[i].iov_len);
	if (vec != stack)
		free(vec);
	return rc;
}

static int frame_piece(struct flow_req *fr, const uint8_t *data, size_t len)
{
	return proto_frame_feed(fr->frames, data, len, fr->scan_err, sizeof(fr->scan_err));
}

/* Learn what a stream carried per query (at its end, or when it is cut). */
static void learn_stream(struct flow_req *fr)
{
	size_t n;
	const struct proto_frame_counts *c = proto_frame_results(fr->frames, &n);

	/* streams carry chunks, not samples: the sample figure is left to the estimator's range rule */
	for (size_t i = 0; i < n && i < fr->decoded->n_queries; i++)
		learn_actual(fr, i, c[i].series, 0, c[i].bytes);
}

/* Check a stream's counts so far; cut it (and answer for it) when a query went over. */
static int stream_over_limit(struct flow_req *fr)
{
	size_t n;
	const struct proto_frame_counts *c = proto_frame_results(fr->frames, &n);
	struct limiter_decision d;

	for (size_t i = 0; i < n && i < fr->decoded->n_queries; i++) {
		if (over_limit(fr, i, c[i].series, 0, fr->resp_bytes, &d)) {
			note_rejection(&fr->qs[i], &d);
			fr->f->stats.rejected++;
			return 1;
		}
	}
	return 0;
}

static void on_upstream_body(void *arg, struct evbuffer *data)
{
	struct flow_req *fr = arg;
	size_t len = evbuffer_get_length(data);
	
	fr->resp_bytes += len;
	fr->f->stats.response_bytes += len;
	metrics_add(METRICS_RESPONSE_BYTES, fr->tenant, NULL, (double)len);
	switch (fr->relay) {
	case RELAY_SAMPLES:
		if (feed_pieces(data, scan_samples_piece, fr) < 0) {
			proxy_upstream_cancel(fr->ureq);
			fr->ureq = NULL;
			flow_req_landed(fr);
			reply_upstream_error(fr, 502, "corrupt_response", fr->scan_err);
			flow_req_free(fr);
			return;
		}
		if (samples_over_limit_early(fr))
			return;
		hold_packed(fr->samples, data);
		/* the body is held until it is counted: past the byte limit it cannot be relayed anyway */
		if (fr->resp_bytes > (uint64_t)fr->in.limits->v[CONF_LIMIT_MAX_RESPONSE_BYTES]) {
			struct limiter_decision d;
			limiter_check_actual(&fr->in, 0, 0, fr->resp_bytes, &d);
			if (d.verdict == LIMITER_REJECT) {
				/*
				 * Learn the bytes seen (a lower bound, shared by the queries) so a repeat is
				 * refused before the store; the series are not known, so keep what was believed.
				 */
				size_t nq = fr->decoded->n_queries;
				for (size_t i = 0; i < nq; i++)
					est_learn_query(fr->f->est, fr->tenant, fr->qs[i].q, fr->qs[i].est.series,
							fr->qs[i].est.samples, fr->resp_bytes / nq);
				proxy_upstream_cancel(fr->ureq);
				fr->ureq = NULL;
				flow_req_landed(fr);
				reply_rejected(fr, &fr->qs[0], &d);
				flow_req_free(fr);
				return;
			}
			/* dry run: count it, then relay the rest as it comes (no longer held or counted) */
			note_shadow(&fr->qs[0], &d);
			fr->relay = RELAY_PASS;
			proxy_req_add_header(fr->req, "Content-Type", "application/x-protobuf");
			proxy_req_add_header(fr->req, "Content-Encoding", "snappy");
			add_admit_header(fr);
			proxy_req_reply_start(fr->req, fr->status, -1);
			proxy_req_reply_chunk(fr->req, fr->samples);
			return;
		}
		samples_reserve_more(fr);
		return;
	case RELAY_STREAM:
		if (fr->frames && feed_pieces(data, frame_piece, fr) < 0) {
			proxy_upstream_cancel(fr->ureq);
			fr->ureq = NULL;
			flow_req_landed(fr);
			cut_stream(fr, "corrupt_response", fr->scan_err);
			flow_req_free(fr);
			return;
		}
		if (fr->frames && stream_over_limit(fr)) {
			/* the estimate was wrong: stop here, learn the truth for next time */
			learn_stream(fr);
			proxy_upstream_cancel(fr->ureq);
			fr->ureq = NULL;
			flow_req_landed(fr);
			fr->f->stats.requests++;
			count_request(fr->status);
			proxy_req_abort(fr->req);
			flow_req_free(fr);
			return;
		}
		__attribute__((fallthrough)); /* relay the bytes */
	case RELAY_PASS:
		proxy_req_reply_chunk(fr->req, data);
		/* flow control: a slow client pauses the store instead of growing our buffers */
		if (!fr->paused && proxy_req_output_pending(fr->req) > PROXY_OUT_HIGH_WATER) {
			fr->paused = 1;
			proxy_upstream_pause(fr->ureq);
		}
		return;
	case RELAY_NONE:
		return;
	}
}

static void on_upstream_done(void *arg)
{
	struct flow_req *fr = arg;
	struct proxy_flow *f = fr->f;
	char err[256];
	int rc;

	fr->ureq = NULL;
	flow_req_landed(fr);
	if (fr->relay == RELAY_SAMPLES) {
		rc = settle_samples(fr);
		if (rc < 0)
			reply_upstream_error(fr, 502, "corrupt_response", fr->scan_err);
		if (rc == 0) {
			proxy_req_add_header(fr->req, "Content-Type", "application/x-protobuf");
			proxy_req_add_header(fr->req, "Content-Encoding", "snappy");
			add_admit_header(fr);
			f->stats.requests++;
			count_request(fr->status);
			proxy_req_reply(fr->req, fr->status, fr->samples);
		}
		flow_req_free(fr);
		return;
	}
	if (fr->relay == RELAY_STREAM && fr->frames) {
		if (proto_frame_finish(fr->frames, err, sizeof(err)) < 0) {
			cut_stream(fr, "corrupt_response", err);
			flow_req_free(fr);
			return;
		}
		learn_stream(fr);
		learn_mark(fr);
	}
	f->stats.requests++;
	count_request(fr->status);
	proxy_req_reply_end(fr->req);
	flow_req_free(fr);
}

static void on_upstream_error(void *arg, enum proxy_upstream_error kind, const char *msg)
{
	struct flow_req *fr = arg;
	char what[700];
	const char *k = proxy_upstream_error_kind(kind);

	fr->ureq = NULL;
	if ((kind == PROXY_UPSTREAM_REFUSED || kind == PROXY_UPSTREAM_RESET) &&
	    (fr->relay == RELAY_NONE || fr->relay == RELAY_SAMPLES)) {
		/* nothing reached the client yet (a SAMPLES body is held whole): try again */
		flow_retry(fr, k, 502, msg);
		return;
	}
	flow_req_landed(fr);
	if (fr->relay == RELAY_STREAM || fr->relay == RELAY_PASS) {
		cut_stream(fr, k, msg);
	} else if (kind == PROXY_UPSTREAM_TIMEOUT) {
		char dur[32];
		conf_format_value(CONF_T_DURATION, fr->conf->upstream_timeout_ms, dur, sizeof(dur));
		snprintf(what, sizeof(what), "timed out after %s (upstream.timeout)", dur);
		reply_upstream_error(fr, 504, k, what);
	} else {
		reply_upstream_error(fr, 502, k, msg);
	}
	flow_req_free(fr);
}

/* --- the client's side --------------------------------------------------------------------- */

static void on_client_drain(struct proxy_req *req, void *arg)
{
	struct flow_req *fr = arg;

	(void)req;
	if (fr->paused && fr->ureq) {
		fr->paused = 0;
		proxy_upstream_resume(fr->ureq);
	}
}

static void on_client_close(struct proxy_req *req, void *arg)
{
	struct flow_req *fr = arg;

	(void)req;
	log_info("client went away", "tenant=%s relayed_bytes=%llu", fr->tenant, (unsigned long long)fr->resp_bytes);
	fr->req = NULL;
	fr->qexit = LIMITER_QUEUE_EXIT_CANCELLED; /* a queued request leaves without reaching the store */
	flow_req_landed(fr);
	count_request(499); /* nginx's "client closed request": nothing was answered */
	fr->f->stats.requests++;
	flow_req_free(fr); /* cancels the store request and any probe */
}

/* --- probes: the store's series API, when nothing is known -------------------------------- */

static void probe_finish(struct flow_query *fq, const char *result, const char *why)
{
	struct flow_req *fr = fq->fr;
	struct proxy_flow *f = fr->f;

	fq->probe = NULL;
	metrics_inc(METRICS_PROBES, result, NULL);
	if (why) {
		char q[400];
		/* a failed probe admits: response enforcement still bounds the query */
		log_warn("probe failed", "tenant=%s detail=%s fallback=admit", fr->tenant, log_quote(q, sizeof(q), why));
	} else {
		/* a probe reads whole buffers: past the cap, report exactly max_series + 1 */
		uint64_t cap = (uint64_t)fr->in.limits->v[CONF_LIMIT_MAX_SERIES] + 1;
		int truncated = strcmp(result, "truncated") == 0;
		est_learn_probe(f->est, fr->tenant, fq->q, truncated && fq->count.series > cap ? cap : fq->count.series,
				truncated);
		est_estimate(f->est, fr->tenant, fq->q, &fq->est);
	}
	if (--fr->probes_pending == 0)
		flow_forward(fr);
}

static void on_probe_head(void *arg, const struct http_msg *head)
{
	struct flow_query *fq = arg;
	char why[64];

	if (head->status != 200) {
		snprintf(why, sizeof(why), "series API answered %d", head->status);
		proxy_upstream_cancel(fq->probe);
		probe_finish(fq, "failed", why);
	}
}

static void on_probe_body(void *arg, struct evbuffer *data)
{
	struct flow_query *fq = arg;
	struct flow_req *fr = fq->fr;
	uint64_t cap = (uint64_t)fr->in.limits->v[CONF_LIMIT_MAX_SERIES] + 1;
	char err[256];
	int rc = 0;

	while (evbuffer_get_length(data) && rc == 0) {
		struct evbuffer_iovec v;
		if (evbuffer_peek(data, -1, NULL, &v, 1) < 1)
			break;
		rc = limiter_probe_count_feed(&fq->count, v.iov_base, v.iov_len, err, sizeof(err));
		evbuffer_drain(data, v.iov_len);
	}
	if (rc < 0) {
		proxy_upstream_cancel(fq->probe);
		probe_finish(fq, "failed", err);
	} else if (fq->count.series >= cap) {
		/* enough to know it is over the limit: stop reading */
		proxy_upstream_cancel(fq->probe);
		probe_finish(fq, "truncated", NULL);
	}
}

static void on_probe_done(void *arg)
{
	struct flow_query *fq = arg;

	if (!fq->count.done)
		probe_finish(fq, "failed", "series API answer ended early");
	else
		probe_finish(fq, "ok", NULL);
}

static void on_probe_error(void *arg, enum proxy_upstream_error kind, const char *msg)
{
	struct flow_query *fq = arg;
	char why[700];

	snprintf(why, sizeof(why), "%s: %s", proxy_upstream_error_kind(kind), msg);
	probe_finish(fq, "failed", why);
}

/* Ask the store's series API about <fq>. Returns 0 when a probe is in flight. */
static int probe_start(struct flow_query *fq)
{
	static const struct proxy_upstream_cbs cbs = {
		.on_head = on_probe_head,
		.on_body = on_probe_body,
		.on_done = on_probe_done,
		.on_error = on_probe_error,
	};
	struct flow_req *fr = fq->fr;
	struct proxy_flow *f = fr->f;
	const char *tv = proxy_req_header(fr->req, fr->conf->tenant_header);
	struct proxy_upstream_header hdrs[2] = { { "Accept", "application/json" }, { fr->conf->tenant_header, tv } };
	char target[8192];
	struct proxy_upstream_msg msg = { .method = "GET", .target = target, .hdrs = hdrs, .n_hdrs = tv ? 2 : 1 };

	size_t need;

	if (!f->probe_up)
		return -1;
	need = limiter_probe_target(f->probe_path, fq->q, target, sizeof(target));
	if (need == 0 || need >= sizeof(target))
		return -1; /* out of memory, or a selector too long for a URL: no probe */
	msg.timeout_ms = fr->conf->upstream_timeout_ms < PROBE_TIMEOUT_MS ? fr->conf->upstream_timeout_ms
									  : PROBE_TIMEOUT_MS;
	limiter_probe_count_init(&fq->count);
	fq->probe = proxy_upstream_send(f->probe_up, &msg, &cbs, fq);
	return fq->probe ? 0 : -1;
}

/* --- the request path ---------------------------------------------------------------------- */

uint64_t proxy_flow_body_cap(struct proxy_flow *f, struct proxy_req *req)
{
	const char *t = proxy_req_header(req, f->conf->tenant_header);

	return (uint64_t)conf_limits_for(f->conf, t)->v[CONF_LIMIT_MAX_REQUEST_BYTES];
}

/* Go's time.Duration syntax (M3 parses headers with it): "24h0m0s"-style, no days. */
static void go_duration(int64_t ms, char *buf, size_t n)
{
	int64_t h = ms / 3600000, m = ms / 60000 % 60, s = ms / 1000 % 60, rest = ms % 1000;

	if (rest)
		snprintf(buf, n, "%lldh%lldm%lld.%03llds", (long long)h, (long long)m, (long long)s, (long long)rest);
	else
		snprintf(buf, n, "%lldh%lldm%llds", (long long)h, (long long)m, (long long)s);
}

/* Collect the headers sent to the store: protocol headers from the client, tenant, configured, M3. */
static size_t upstream_headers(struct flow_req *fr, struct proxy_upstream_header *h, size_t max, char *m3series,
			       char *m3range, size_t m3len)
{
	static const struct proxy_upstream_header proto_hdrs[] = {
		{ "Content-Encoding", "snappy" },
		{ "Content-Type", "application/x-protobuf" },
		{ "Accept-Encoding", "snappy" },
		{ "User-Agent", "promguard/" PROMGUARD_VERSION },
		{ "X-Prometheus-Remote-Read-Version", "0.1.0" },
	};
	const struct conf *c = fr->conf;
	const char *tenant_value = proxy_req_header(fr->req, c->tenant_header);
	size_t n = 0;

	for (size_t i = 0; i < sizeof(proto_hdrs) / sizeof(proto_hdrs[0]) && n < max; i++) {
		const char *v = proxy_req_header(fr->req, proto_hdrs[i].name);
		h[n].name = proto_hdrs[i].name;
		h[n++].value = v ? v : proto_hdrs[i].value;
	}
	if (tenant_value && n < max) {
		h[n].name = c->tenant_header;
		h[n++].value = tenant_value;
	}
	for (size_t i = 0; i < c->n_upstream_headers && n < max; i++) {
		h[n].name = c->upstream_headers[i].key;
		h[n++].value = c->upstream_headers[i].value;
	}
	/* upstream.propagate_limits: m3 lets m3coordinator stop early too */
	if (c->propagate_limits == CONF_PROPAGATE_M3 && n + 2 <= max) {
		snprintf(m3series, m3len, "%lld", (long long)fr->in.limits->v[CONF_LIMIT_MAX_SERIES]);
		h[n].name = "M3-Limit-Max-Series";
		h[n++].value = m3series;
		if (fr->in.limits->v[CONF_LIMIT_MAX_RANGE] > 0) {
			go_duration(fr->in.limits->v[CONF_LIMIT_MAX_RANGE], m3range, m3len);
			h[n].name = "M3-Limit-Max-Range";
			h[n++].value = m3range;
		}
	}
	return n;
}

/* 4. forward: every query is admitted (or shadow-rejected); capacity permitting, send the bytes. */
static void flow_forward(struct flow_req *fr)
{
	struct limiter_decision d;
	size_t nq = fr->decoded->n_queries;

	/* the estimates are in: check them, folding in what the structure checks found */
	for (size_t i = 0; i < nq; i++) {
		struct flow_query *fq = &fr->qs[i];

		metrics_observe(METRICS_ESTIMATED_SERIES, (double)fq->est.series);
		metrics_inc(METRICS_ESTIMATES, est_source_name(fq->est.source), NULL);
		limiter_check_unknown(&fr->in, &fq->est, &d);
		if (d.verdict == LIMITER_ADMIT)
			limiter_check_estimate(&fr->in, fq->q, &fq->est, &d);
		if (d.verdict == LIMITER_REJECT) {
			reply_rejected(fr, fq, &d);
			flow_req_free(fr);
			return;
		}
		if (d.verdict == LIMITER_SHADOW_REJECT && fq->decision.verdict == LIMITER_ADMIT)
			fq->decision = d;
	}

	for (size_t i = 0; i < nq; i++)
		if (fr->qs[i].decision.verdict == LIMITER_SHADOW_REJECT)
			note_shadow(&fr->qs[i], &fr->qs[i].decision);
	flow_admit(fr);
}

/*
 * Memory for the response, claimed from the pool before the store is asked: a SAMPLES body is
 * held whole (the estimated bytes, at least RESERVE_MIN), a stream only its relay buffers. The
 * response grows it if needed (samples_reserve_more).
 */
static uint64_t reservation_for(const struct flow_req *fr)
{
	const struct proto_request *r = fr->decoded;
	uint64_t bytes = 0;

	if (r->n_accepted_types && r->accepted_types[0] == PROTO_RESP_STREAMED_XOR_CHUNKS)
		return RESERVE_STREAM;
	for (size_t i = 0; i < r->n_queries; i++)
		bytes += fr->qs[i].est.bytes;
	return bytes < RESERVE_MIN ? RESERVE_MIN : bytes;
}

static void on_memory(void *arg)
{
	struct flow_req *fr = arg;

	fr->waiter = NULL;
	switch (fr->wait_stage) {
	case WAIT_GROW:
		samples_reserve_more(fr);
		return;
	case WAIT_DECODE:
		flow_decode(fr);
		return;
	}
}

/* Wait for <bytes> before going on with <stage>; a failure to even wait drops the request. */
static void flow_wait_stage(struct flow_req *fr, enum wait_stage stage, uint64_t bytes)
{
	fr->wait_stage = stage;
	if (flow_wait_memory(fr, bytes, stage == WAIT_GROW ? POOL_PRIO_RELAY : POOL_PRIO_INTAKE) < 0) {
		proxy_req_abort(fr->req);
		flow_req_free(fr);
	}
}

/* No memory within the deadline to decode the request or to hold a growing SAMPLES body: 429. */
static void on_memory_timeout(void *arg)
{
	struct flow_req *fr = arg;
	char lim[32], wait[32], line[256];

	fr->waiter = NULL;
	conf_format_value(CONF_T_SIZE, (int64_t)fr->conf->pool_memory_limit, lim, sizeof(lim));
	conf_format_value(CONF_T_DURATION, pool_now_ms() - fr->wait_start_ms, wait, sizeof(wait));
	if (fr->ureq) {
		proxy_upstream_cancel(fr->ureq);
		fr->ureq = NULL;
		flow_req_landed(fr);
	}
	snprintf(line, sizeof(line), "promguard: over capacity: no memory for the %s within %s (pool.memory_limit=%s, "
		 "queue.max_wait)", fr->wait_stage == WAIT_DECODE ? "request" : "response", wait, lim);
	reply_over_capacity(fr, "queue_timeout", 1000, line);
	flow_req_free(fr);
}

/*
 * Wait for <bytes> of the pool, at most queue.max_wait (never past upstream.timeout). Before the
 * store is asked (decode, reserve: intake priority) the waits add up from the first one. A SAMPLES
 * body that must grow is an admitted response draining (relay priority, ahead of new intake): its
 * wait starts when it had to stop, and ends as a 429 naming the pool rather than a store timeout.
 */
static int flow_wait_memory(struct flow_req *fr, uint64_t bytes, enum pool_priority prio)
{
	const struct conf *c = fr->conf;
	int64_t wait = c->queue_max_wait_ms < c->upstream_timeout_ms ? c->queue_max_wait_ms : c->upstream_timeout_ms;

	int64_t deadline;

	if (prio == POOL_PRIO_RELAY || !fr->wait_start_ms)
		fr->wait_start_ms = pool_now_ms();
	deadline = fr->wait_start_ms + wait;
	if (fr->t0.tv_sec || fr->t0.tv_nsec) {
		/* the store request is running: end the wait before upstream.timeout ends it as a 504 */
		int64_t sent_ms = (int64_t)fr->t0.tv_sec * 1000 + fr->t0.tv_nsec / 1000000;
		int64_t upstream_end = sent_ms + c->upstream_timeout_ms - UPSTREAM_MARGIN_MS;
		if (upstream_end < deadline)
			deadline = upstream_end;
	}
	fr->waiter = pool_wait(fr->f->pool, bytes, prio, deadline, on_memory, on_memory_timeout, fr);
	return fr->waiter ? 0 : -ENOMEM;
}

/* --- 4b. admit now, or defer: capacity, the queue, retries ------------------------------- */

/* The backoff key of a request: its tenant and its queries' selector fingerprints. */
static uint64_t request_key(const struct flow_req *fr)
{
	uint64_t h = XXH3_64bits(fr->tenant, strlen(fr->tenant));

	for (size_t i = 0; i < fr->decoded->n_queries; i++)
		h = XXH3_64bits_withSeed(&fr->qs[i].est.fingerprint, sizeof(fr->qs[i].est.fingerprint), h);
	return h;
}

static struct flow_req *entry_req(struct limiter_queue_entry *e)
{
	return (struct flow_req *)((char *)e - offsetof(struct flow_req, qe));
}

/* The queue's figures into its gauges, and its timer at the next deadline or retry. */
/* Copy the queue's and the backoff table's figures into their metrics (before a scrape). */
static void refresh_queue_metrics(struct proxy_flow *f)
{
	static const char *const exit_names[LIMITER_QUEUE_EXIT_N] = {
		[LIMITER_QUEUE_EXIT_DONE] = "done",
		[LIMITER_QUEUE_EXIT_REJECTED] = "rejected",
		[LIMITER_QUEUE_EXIT_TIMEOUT] = "timeout",
		[LIMITER_QUEUE_EXIT_CANCELLED] = "cancelled",
	};
	struct limiter_queue_stats st;

	limiter_queue_get_stats(f->queue, &st);
	metrics_set(METRICS_QUEUE_LENGTH, NULL, NULL, (double)st.length);
	metrics_set(METRICS_QUEUE_TENANTS, NULL, NULL, (double)st.tenants);
	metrics_set(METRICS_QUEUE_LIMIT, NULL, NULL, (double)f->conf->limits.v[CONF_LIMIT_MAX_QUEUED]);
	metrics_set(METRICS_BACKOFF_TRACKED_KEYS, NULL, NULL, (double)st.backoff.tracked);
	metrics_set(METRICS_BACKOFF_MAX_KEYS, NULL, NULL, (double)st.backoff.max_keys);
	metrics_set(METRICS_BACKOFF_EVICTIONS, NULL, NULL, (double)st.backoff.evictions);
	metrics_set(METRICS_BACKOFF_FORGOTTEN, NULL, NULL, (double)st.backoff.forgotten);
	for (int i = 0; i < LIMITER_QUEUE_EXIT_N; i++)
		metrics_set(METRICS_QUEUE_EXITS, exit_names[i], NULL, (double)st.exits[i]);
}

/*
 * The queue changed: re-arm its timer for the next deadline or retry, or stop it (and its memory
 * wait) when the queue is empty. Its gauges are refreshed at scrape time (refresh_queue_metrics):
 * setting eleven of them per change was a visible share of a deferred request's CPU.
 */
static void queue_changed(struct proxy_flow *f)
{
	int64_t next = limiter_queue_next_wake(f->queue);

	if (next < 0) {
		evtimer_del(f->queue_timer);
		pool_wait_cancel(f->queue_mem);
		f->queue_mem = NULL;
	} else {
		int64_t ms = next - pool_now_ms();
		struct timeval tv = { 0, 0 };
		if (ms > 0) {
			tv.tv_sec = ms / 1000;
			tv.tv_usec = (ms % 1000) * 1000;
		}
		evtimer_add(f->queue_timer, &tv);
	}
}

/* Capacity was freed (a request left the store): offer it to the queue on this loop pass. */
static void queue_kick(struct proxy_flow *f)
{
	if (limiter_queue_length(f->queue))
		event_active(f->queue_kick, EV_TIMEOUT, 1);
}

/* Retry-After in whole seconds, at least 1. */
static void add_retry_after(struct flow_req *fr, int64_t ms)
{
	char v[24];

	snprintf(v, sizeof(v), "%lld", (long long)(ms > 1000 ? (ms + 999) / 1000 : 1));
	proxy_req_add_header(fr->req, "Retry-After", v);
}

/* 1 when a rate-limited line may be logged now; <extra> gets " suppressed=N" when lines were. */
static int log_due(struct log_every *l, char *extra, size_t len)
{
	int64_t now = now_ms();

	extra[0] = 0;
	if (l->last_ms && now - l->last_ms < CAPACITY_LOG_MS) {
		l->suppressed++;
		return 0;
	}
	if (l->suppressed)
		snprintf(extra, len, " suppressed=%llu", (unsigned long long)l->suppressed);
	l->last_ms = now;
	l->suppressed = 0;
	return 1;
}

/* 429 for capacity (queue_full, queue_timeout): count, log (rate-limited), answer with <line>. */
static void reply_over_capacity(struct flow_req *fr, const char *reason, int64_t retry_after_ms, const char *line)
{
	struct proxy_flow *f = fr->f;
	struct log_every *l = strcmp(reason, "queue_full") == 0 ? &f->log_full : &f->log_timeout;
	char q[700], extra[48], hdr[128];

	f->stats.requests++;
	f->stats.rejected++;
	count_request(429);
	metrics_inc(METRICS_REJECTIONS, fr->tenant, reason);
	if (log_due(l, extra, sizeof(extra)))
		log_warn("over capacity", "tenant=%s reason=%s queued=%llu inflight=%llu detail=%s%s", fr->tenant,
			 reason, (unsigned long long)limiter_queue_length(f->queue),
			 (unsigned long long)f->stats.inflight, log_quote(q, sizeof(q), line), extra);
	add_retry_after(fr, retry_after_ms);
	snprintf(hdr, sizeof(hdr), "reject; reason=%s; estimate=0; source=default", reason);
	proxy_req_add_header(fr->req, "X-Promguard-Decision", hdr);
	proxy_req_reply_text(fr->req, 429, "%s", line);
}

/* The queue waits for pool memory on behalf of its head: when <bytes> may be had, dispatch. */
static void on_queue_memory(void *arg)
{
	struct proxy_flow *f = arg;

	f->queue_mem = NULL;
	limiter_queue_dispatch(f->queue, LIMITER_QUEUE_CAPACITY_FREED, pool_now_ms(), queue_try, f);
	queue_changed(f);
}

static void on_queue_memory_timeout(void *arg)
{
	struct proxy_flow *f = arg;

	f->queue_mem = NULL; /* the next dispatch that finds no memory waits again */
}

/*
 * The requests' own deadlines answer them, so the queue's wait has none that matters (it is
 * cancelled when the queue empties): a pool wait timeout then always means a 429 from the pool.
 */
static void queue_wait_memory(struct proxy_flow *f, uint64_t bytes)
{
	if (f->queue_mem && f->queue_mem_bytes == bytes)
		return;
	pool_wait_cancel(f->queue_mem);
	f->queue_mem_bytes = bytes;
	f->queue_mem = pool_wait(f->pool, bytes, POOL_PRIO_INTAKE, pool_now_ms() + QUEUE_MEM_WAIT_MS, on_queue_memory,
				 on_queue_memory_timeout, f);
}

/*
 * Start <fr> if there is capacity: a slot under limits.max_inflight (all tenants, then the
 * tenant's own) and its response's memory from the pool (the estimated bytes of a SAMPLES body,
 * at least RESERVE_MIN; a stream's relay buffers). What it lacks goes in fr->blocked.
 */
static enum limiter_queue_try flow_try_start(struct flow_req *fr)
{
	struct proxy_flow *f = fr->f;
	int64_t cap = f->conf->limits.v[CONF_LIMIT_MAX_INFLIGHT];
	int64_t tcap = fr->in.limits->v[CONF_LIMIT_MAX_INFLIGHT];
	uint64_t want = reservation_for(fr);
	struct limiter_decision d;
	char lim[32], size[32];
	int rc;

	if (f->stats.inflight >= (uint64_t)cap) {
		snprintf(fr->blocked, sizeof(fr->blocked), "limits.max_inflight=%lld", (long long)cap);
		return LIMITER_QUEUE_NO_CAPACITY;
	}
	if (tin_get(f, fr->tenant) >= (uint64_t)tcap) {
		snprintf(fr->blocked, sizeof(fr->blocked), "tenants.%s.max_inflight=%lld", fr->tenant, (long long)tcap);
		return LIMITER_QUEUE_TENANT_FULL;
	}
	rc = pool_reserve(f->pool, want);
	if (rc == -E2BIG) {
		/* more than the whole pool could ever hold: refuse it, as a response_bytes limit */
		limiter_check_actual(&fr->in, 0, 0, want, &d);
		if (d.verdict == LIMITER_ADMIT) {
			memset(&d, 0, sizeof(d));
			d.verdict = LIMITER_REJECT;
			d.reason = "response_bytes";
			d.type = CONF_T_SIZE;
		}
		snprintf(d.key, sizeof(d.key), "pool.memory_limit");
		d.limit = fr->conf->pool_memory_limit;
		d.value = want;
		d.actual = 0;
		reply_rejected(fr, &fr->qs[0], &d);
		fr->qexit = LIMITER_QUEUE_EXIT_REJECTED;
		flow_req_free(fr);
		return LIMITER_QUEUE_FINISHED;
	}
	if (rc == -EAGAIN) {
		conf_format_value(CONF_T_SIZE, f->conf->pool_memory_limit, lim, sizeof(lim));
		conf_format_value(CONF_T_SIZE, (int64_t)want, size, sizeof(size));
		snprintf(fr->blocked, sizeof(fr->blocked), "pool.memory_limit=%s (%s for the response)", lim, size);
		snprintf(f->queue_blocked, sizeof(f->queue_blocked), "%s", fr->blocked);
		queue_wait_memory(f, want);
		return LIMITER_QUEUE_NO_CAPACITY;
	}
	fr->reserved = want;
	return flow_send(fr) == 0 ? LIMITER_QUEUE_STARTED : LIMITER_QUEUE_FINISHED;
}

/* The queue offers <e> capacity. */
static enum limiter_queue_try queue_try(struct limiter_queue_entry *e, void *arg)
{
	struct flow_req *fr = entry_req(e);
	int64_t enqueued = e->enqueued_ms;
	int retrying = fr->retrying;
	enum limiter_queue_try r;

	(void)arg;
	r = flow_try_start(fr);
	if (r == LIMITER_QUEUE_STARTED && !retrying)
		metrics_observe(METRICS_QUEUE_WAIT, (double)(pool_now_ms() - enqueued) / 1000.0);
	return r;
}

/* Capacity was freed: offer it to the queue now. */
static void on_queue_kick(evutil_socket_t fd, short what, void *arg)
{
	struct proxy_flow *f = arg;

	(void)fd;
	(void)what;
	limiter_queue_dispatch(f->queue, LIMITER_QUEUE_CAPACITY_FREED, pool_now_ms(), queue_try, f);
	queue_changed(f);
}

/* Answer a store failure that retries could not get past (counted when it happened). */
static void reply_retries_exhausted(struct flow_req *fr, const char *why)
{
	struct proxy_flow *f = fr->f;
	char q[700];

	f->stats.requests++;
	f->stats.upstream_errors++;
	count_request(fr->last_status);
	log_warn("upstream failed", "tenant=%s kind=%s upstream=%s retries=%u detail=%s", fr->tenant, fr->last_kind,
		 proxy_upstream_name(f->up), fr->retries, log_quote(q, sizeof(q), fr->last_error));
	add_admit_header(fr);
	proxy_req_reply_text(fr->req, fr->last_status, "promguard: upstream %s (%u retries; %s)", fr->last_error,
			     fr->retries, why);
}

/*
 * What <fr> is waiting for, for its 429 line: what it lacked when it was last offered capacity;
 * for one never offered (it queued behind others and only heads are offered), what the queue
 * lacks now.
 */
static const char *blocker(struct flow_req *fr)
{
	struct proxy_flow *f = fr->f;
	int64_t cap = f->conf->limits.v[CONF_LIMIT_MAX_INFLIGHT];
	int64_t tcap = fr->in.limits->v[CONF_LIMIT_MAX_INFLIGHT];

	if (fr->blocked[0])
		return fr->blocked;
	if (f->stats.inflight >= (uint64_t)cap)
		snprintf(fr->blocked, sizeof(fr->blocked), "limits.max_inflight=%lld", (long long)cap);
	else if (tin_get(f, fr->tenant) >= (uint64_t)tcap)
		snprintf(fr->blocked, sizeof(fr->blocked), "tenants.%s.max_inflight=%lld", fr->tenant, (long long)tcap);
	else if (f->queue_blocked[0])
		snprintf(fr->blocked, sizeof(fr->blocked), "%s", f->queue_blocked);
	else
		snprintf(fr->blocked, sizeof(fr->blocked), "its turn");
	return fr->blocked;
}

/* A deadline passed in the queue: 429 queue_timeout, or a retrying request's last store error. */
static void flow_queue_expired(struct flow_req *fr)
{
	const struct conf *c = fr->conf;
	char waited[32], maxw[32], line[512];

	conf_format_value(CONF_T_DURATION, pool_now_ms() - fr->arrived_ms, waited, sizeof(waited));
	conf_format_value(CONF_T_DURATION, c->queue_max_wait_ms < c->upstream_timeout_ms ? c->queue_max_wait_ms :
				   c->upstream_timeout_ms, maxw, sizeof(maxw));
	fr->qexit = LIMITER_QUEUE_EXIT_TIMEOUT;
	if (fr->retrying) {
		snprintf(line, sizeof(line), "no retry left within queue.max_wait=%s", maxw);
		reply_retries_exhausted(fr, line);
	} else {
		snprintf(line, sizeof(line), "promguard: over capacity: waited %s in the queue for %s (queue.max_wait=%s)",
			 waited, blocker(fr), maxw);
		reply_over_capacity(fr, "queue_timeout", c->queue_max_delay_ms, line);
	}
	flow_req_free(fr);
}

/* Deadlines and backoff retries. */
static void on_queue_timer(evutil_socket_t fd, short what, void *arg)
{
	struct proxy_flow *f = arg;
	int64_t now = pool_now_ms();
	struct limiter_queue_entry *e;

	(void)fd;
	(void)what;
	while ((e = limiter_queue_pop_expired(f->queue, now)))
		flow_queue_expired(entry_req(e));
	limiter_queue_dispatch(f->queue, LIMITER_QUEUE_TIMER, now, queue_try, f);
	queue_changed(f);
}

/*
 * Defer <fr> to the queue (queue.max_queued overall, the tenant's max_queued): for capacity, or to
 * retry the store. A full queue answers 429 queue_full at once, with the key's backoff as
 * Retry-After. Returns 0 when queued; otherwise <fr> is answered and freed.
 */
static int flow_defer(struct flow_req *fr, enum limiter_queue_wait wait)
{
	struct proxy_flow *f = fr->f;
	int64_t now = pool_now_ms(), delay = 0;
	uint64_t tcap = (uint64_t)fr->in.limits->v[CONF_LIMIT_MAX_QUEUED];
	char line[512];
	int rc;

	fr->deferred = 1;
	rc = limiter_queue_push(f->queue, &fr->qe, fr->tenant, tcap, fr->qkey, wait, fr->deadline_ms, now, &delay);
	if (rc < 0) {
		if (rc == -EDQUOT && tcap < (uint64_t)f->conf->limits.v[CONF_LIMIT_MAX_QUEUED])
			snprintf(line, sizeof(line), "promguard: over capacity: queue full: tenants.%s.max_queued=%llu "
				 "queries of this tenant waiting", fr->tenant, (unsigned long long)tcap);
		else if (rc == -EDQUOT || rc == -ENOSPC)
			snprintf(line, sizeof(line), "promguard: over capacity: queue full: queue.max_queued=%lld queries "
				 "waiting", (long long)f->conf->limits.v[CONF_LIMIT_MAX_QUEUED]);
		else
			snprintf(line, sizeof(line), "promguard: over capacity: queue full: out of memory");
		fr->qexit = LIMITER_QUEUE_EXIT_REJECTED;
		reply_over_capacity(fr, "queue_full", delay, line);
		flow_req_free(fr);
		return -1;
	}
	if (wait == LIMITER_QUEUE_CAPACITY) {
		metrics_inc(METRICS_QUEUE_DEFERRED, fr->tenant, NULL);
		log_debug("query deferred", "tenant=%s waiting_for=%s queued=%llu retry_in_ms=%lld", fr->tenant,
			  fr->blocked[0] ? fr->blocked : "turn", (unsigned long long)limiter_queue_length(f->queue),
			  (long long)delay);
		/* it may have joined behind requests that wait on their own tenant's cap: offer capacity */
		queue_kick(f);
	}
	queue_changed(f);
	return 0;
}

/*
 * 4b. admit: run the request now if nothing waits and there is capacity; otherwise it waits in
 * the queue, where tenants take turns, until capacity is freed or its deadline: arrival +
 * queue.max_wait, never past upstream.timeout (the client's own patience).
 */
static void flow_admit(struct flow_req *fr)
{
	struct proxy_flow *f = fr->f;
	const struct conf *c = fr->conf;
	enum limiter_queue_try r;

	fr->qkey = request_key(fr);
	fr->deadline_ms = fr->arrived_ms + (c->queue_max_wait_ms < c->upstream_timeout_ms ? c->queue_max_wait_ms :
									       c->upstream_timeout_ms);
	if (limiter_queue_length(f->queue) == 0) {
		r = flow_try_start(fr);
		if (r == LIMITER_QUEUE_STARTED || r == LIMITER_QUEUE_FINISHED)
			return;
	}
	flow_defer(fr, LIMITER_QUEUE_CAPACITY);
}

/* What a failed attempt leaves behind: the response so far and its memory. */
static void attempt_reset(struct flow_req *fr)
{
	pool_wait_cancel(fr->waiter);
	fr->waiter = NULL;
	if (fr->samples)
		evbuffer_free(fr->samples);
	fr->samples = NULL;
	proto_snappy_free(fr->snap);
	fr->snap = NULL;
	proto_scan_free(fr->scan);
	fr->scan = NULL;
	proto_frame_reader_free(fr->frames);
	fr->frames = NULL;
	fr->relay = RELAY_NONE;
	fr->status = 0;
	fr->resp_bytes = 0;
	fr->scan_whole = 0;
	fr->scan_err[0] = 0;
	fr->paused = fr->paused_mem = 0;
	if (fr->reserved)
		pool_release(fr->f->pool, fr->reserved);
	fr->reserved = 0;
}

/*
 * 5b. The store failed in a way worth retrying (refused, reset before a response, 502/503) and
 * nothing has reached the client: retry through the key's backoff within the deadline. The
 * failure is counted (promguard_upstream_errors_total), and so is the retry. When the next
 * attempt could not start before the deadline, the client gets the error now.
 */
static void flow_retry(struct flow_req *fr, const char *kind, int status, const char *what)
{
	struct proxy_flow *f = fr->f;
	int64_t now = pool_now_ms(), delay = 0;
	char q[400];

	metrics_inc(METRICS_UPSTREAM_ERRORS, kind, NULL);
	if (fr->ureq)
		proxy_upstream_cancel(fr->ureq);
	fr->ureq = NULL;
	flow_req_landed(fr);
	attempt_reset(fr);
	fr->last_status = status;
	snprintf(fr->last_kind, sizeof(fr->last_kind), "%s", kind);
	snprintf(fr->last_error, sizeof(fr->last_error), "%s", what);
	fr->retrying = 1;
	fr->deferred = 1;
	if (now >= fr->deadline_ms ||
	    limiter_queue_push(f->queue, &fr->qe, fr->tenant, 0, fr->qkey, LIMITER_QUEUE_RETRY, fr->deadline_ms, now,
			       &delay) < 0 ||
	    now + delay >= fr->deadline_ms) {
		reply_retries_exhausted(fr, "the next would start past queue.max_wait");
		flow_req_free(fr);
		return;
	}
	fr->retries++;
	metrics_inc(METRICS_UPSTREAM_RETRIES, kind, NULL);
	log_info("retrying store", "tenant=%s kind=%s retry=%u delay_ms=%lld detail=%s", fr->tenant, kind, fr->retries,
		 (long long)delay, log_quote(q, sizeof(q), what));
	queue_changed(f);
}

/* 4c. send the original bytes to the store. Returns 0, or -1 when <fr> was answered and freed. */
static int flow_send(struct flow_req *fr)
{
	static const struct proxy_upstream_cbs cbs = {
		.on_head = on_upstream_head,
		.on_body = on_upstream_body,
		.on_done = on_upstream_done,
		.on_error = on_upstream_error,
	};
	struct proxy_flow *f = fr->f;
	struct proxy_upstream_header hdrs[72];
	char m3series[32], m3range[64];

	if (!fr->forwarded)
		f->stats.queries += fr->decoded->n_queries;
	fr->forwarded = 1;
	struct proxy_upstream_msg msg = {
		.timeout_ms = fr->conf->upstream_timeout_ms,
		.hdrs = hdrs,
		.n_hdrs = upstream_headers(fr, hdrs, sizeof(hdrs) / sizeof(hdrs[0]), m3series, m3range, sizeof(m3range)),
		.body = fr->body,
		.len = fr->body_len,
	};
	fr->ureq = proxy_upstream_send(f->up, &msg, &cbs, fr);
	if (!fr->ureq || inflight_enter(fr) < 0) {
		reply_upstream_error(fr, 502, "protocol", "request could not be queued: out of memory");
		flow_req_free(fr);
		return -1;
	}
	clock_gettime(CLOCK_MONOTONIC, &fr->t0);
	return 0;
	/* 5. relay and count: on_upstream_head / _body / _done / _error above */
}

void proxy_flow_handle(struct proxy_flow *f, struct proxy_req *req)
{
	const struct conf *c = f->conf;
	const char *hdr_tenant = proxy_req_header(req, c->tenant_header);
	const char *tenant = hdr_tenant ? hdr_tenant : "default";
	const char *why = NULL;
	char line[700];
	struct flow_req *fr;

	/* 1. receive: the request must be a POST of a body within the tenant's cap */
	if (hdr_tenant && !tenant_valid(hdr_tenant, &why)) {
		snprintf(line, sizeof(line), "promguard: bad request: invalid tenant in %s header: %s",
			 c->tenant_header, why);
		reply_bad(req, f, "invalid", 400, line);
		return;
	}
	if (strcmp(proxy_req_method(req), "POST") != 0) {
		snprintf(line, sizeof(line), "promguard: method not allowed: %.32s (only POST is served on %s)",
			 proxy_req_method(req), c->read_path);
		proxy_req_add_header(req, "Allow", "POST");
		reply_bad(req, f, tenant, 405, line);
		return;
	}
	if (proxy_req_draining(req)) {
		f->stats.requests++;
		count_request(503);
		proxy_req_add_header(req, "X-Promguard-Decision", "reject; reason=draining; estimate=0; source=default");
		proxy_req_reply_text(req, 503, "promguard: draining: shutting down, retry on another instance");
		return;
	}
	if (proxy_req_oversize(req)) {
		snprintf(line, sizeof(line), "promguard: request too large: %llu > %llu (limits.max_request_bytes)",
			 (unsigned long long)proxy_req_oversize(req), (unsigned long long)proxy_req_body_cap(req));
		reply_bad(req, f, tenant, 413, line);
		return;
	}

	fr = calloc(1, sizeof(*fr));
	if (!fr) {
		proxy_req_abort(req);
		return;
	}
	fr->f = f;
	fr->req = req;
	fr->conf = conf_ref(f->conf);
	copy_str(fr->tenant, sizeof(fr->tenant), tenant);
	fr->in = (struct limiter_input){ .conf = fr->conf, .tenant = fr->tenant,
					 .limits = conf_limits_for(fr->conf, hdr_tenant) };
	pool_arena_init(&fr->body_arena, f->pool);
	pool_arena_init(&fr->arena, f->pool);
	fr->body_len = evbuffer_get_length(proxy_req_body(req));
	fr->arrived_ms = pool_now_ms();
	fr->qexit = LIMITER_QUEUE_EXIT_DONE;
	proxy_req_set_callbacks(req, on_client_drain, on_client_close, fr);
	flow_decode(fr);
}

/* The request's allocator for decoding: its arena in the pool. Frees are no-ops. */
static void *arena_alloc(void *ctx, size_t size)
{
	return pool_arena_alloc(ctx, size);
}

/* 2. decode: snappy then protobuf, capped at limits.max_request_bytes both ways, in pool memory. */
static void flow_decode(struct flow_req *fr)
{
	struct proxy_flow *f = fr->f;
	struct proxy_req *req = fr->req;
	struct proto_alloc alloc = { arena_alloc, NULL, &fr->arena }; /* released whole in flow_req_free */
	char line[700], err[512];
	uint64_t size = 0;
	struct limiter_decision d;
	int rc;

	if (!fr->body) {
		fr->body = pool_arena_alloc(&fr->body_arena, fr->body_len ? fr->body_len : 1);
		if (!fr->body) {
			flow_wait_stage(fr, WAIT_DECODE, fr->body_len + pool_class_size(POOL_CLASS_SMALL));
			return;
		}
		evbuffer_remove(proxy_req_body(req), fr->body, fr->body_len);
	}
	rc = proto_request_decode(fr->body, fr->body_len, (size_t)fr->in.limits->v[CONF_LIMIT_MAX_REQUEST_BYTES], &alloc,
				  &fr->decoded, &size, err, sizeof(err));
	if (rc == -ENOMEM) {
		/* the pool is at its limit: give back what the attempt took, wait, try again */
		size_t ulen = 0;
		pool_arena_release(&fr->arena);
		if (snappy_uncompressed_length((const char *)fr->body, fr->body_len, &ulen) != SNAPPY_OK)
			ulen = fr->body_len;
		flow_wait_stage(fr, WAIT_DECODE, ulen + 4 * pool_class_size(POOL_CLASS_SMALL));
		return;
	}
	if (rc == -E2BIG) {
		snprintf(line, sizeof(line), "promguard: request too large: %llu > %llu (limits.max_request_bytes)",
			 (unsigned long long)size, (unsigned long long)fr->in.limits->v[CONF_LIMIT_MAX_REQUEST_BYTES]);
		reply_bad(req, f, fr->tenant, 413, line);
		flow_req_free(fr);
		return;
	}
	if (rc < 0) {
		snprintf(line, sizeof(line), "promguard: bad request: %s", err);
		reply_bad(req, f, fr->tenant, 400, line);
		flow_req_free(fr);
		return;
	}
	fr->qs = calloc(fr->decoded->n_queries, sizeof(*fr->qs));
	if (!fr->qs) {
		proxy_req_abort(req);
		flow_req_free(fr);
		return;
	}
	for (size_t i = 0; i < fr->decoded->n_queries; i++) {
		if (limiter_check_regexes(&fr->decoded->queries[i], err, sizeof(err)) < 0) {
			snprintf(line, sizeof(line), "promguard: bad request: query %zu: %s", i, err);
			reply_bad(req, f, fr->tenant, 400, line);
			flow_req_free(fr);
			return;
		}
	}

	/* 3. estimate and admit: structure first (no estimate needed), then each query's estimate */
	limiter_check_request(&fr->in, fr->decoded->n_queries, &d);
	for (size_t i = 0; i < fr->decoded->n_queries; i++) {
		struct flow_query *fq = &fr->qs[i];

		fq->fr = fr;
		fq->q = &fr->decoded->queries[i];
		est_estimate(f->est, fr->tenant, fq->q, &fq->est);
		if (log_level_cur <= LOG_DEBUG) {
			char sel[SELECTOR_MAX], range[128], q[SELECTOR_MAX + 64];
			proto_selector_print(fq->q, sel, sizeof(sel));
			proto_range_print(fq->q, range, sizeof(range));
			log_debug("query", "tenant=%s index=%zu selector=%s range=%s estimate=%llu source=%s", fr->tenant, i,
				  log_quote(q, sizeof(q), sel), range, (unsigned long long)fq->est.series,
				  est_source_name(fq->est.source));
		}
	}
	if (d.verdict != LIMITER_ADMIT) {
		/* one request carries too many queries: blamed on the first, whose selector is printed */
		if (d.verdict == LIMITER_REJECT) {
			reply_rejected(fr, &fr->qs[0], &d);
			flow_req_free(fr);
			return;
		}
		fr->qs[0].decision = d;
	}
	for (size_t i = 0; i < fr->decoded->n_queries; i++) {
		struct flow_query *fq = &fr->qs[i];

		limiter_check_structure(&fr->in, fq->q, &d);
		if (d.verdict == LIMITER_REJECT) {
			reply_rejected(fr, fq, &d);
			flow_req_free(fr);
			return;
		}
		if (d.verdict == LIMITER_SHADOW_REJECT && fq->decision.verdict == LIMITER_ADMIT)
			fq->decision = d;
	}
	/*
	 * estimator.unknown=probe: ask the store's series API first when nothing is known, or when the
	 * stats are only a lower bound (learned through narrower selectors). A failed probe keeps
	 * what was known.
	 */
	if (fr->conf->est_unknown == CONF_UNKNOWN_PROBE && fr->conf->est_probe == CONF_PROBE_SERIES_API) {
		for (size_t i = 0; i < fr->decoded->n_queries; i++) {
			const struct est_result *e = &fr->qs[i].est;
			int unsure = e->source == EST_SOURCE_DEFAULT || (e->source == EST_SOURCE_STATS && e->lower_bound);
			if (unsure && probe_start(&fr->qs[i]) == 0)
				fr->probes_pending++;
		}
	}
	if (fr->probes_pending == 0)
		flow_forward(fr);
}

/* --- explain ------------------------------------------------------------------------------- */

/* A time parameter: Unix seconds (fraction allowed) or RFC3339 in UTC. Returns 0 or -EINVAL. */
static int parse_time_ms(const char *s, int64_t *ms)
{
	char *end;
	double secs = strtod(s, &end);
	struct tm tm;

	if (end != s && *end == '\0' && isfinite(secs)) {
		*ms = (int64_t)llround(secs * 1000.0);
		return 0;
	}
	memset(&tm, 0, sizeof(tm));
	end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!end)
		return -EINVAL;
	*ms = (int64_t)timegm(&tm) * 1000;
	if (*end == '.') {
		double frac = strtod(end, &end);
		*ms += (int64_t)llround(frac * 1000.0);
	}
	return (*end == 'Z' || *end == '\0') ? 0 : -EINVAL;
}

static void json_u64(struct evbuffer *out, const char *key, uint64_t v, int comma)
{
	evbuffer_add_printf(out, "\"%s\":%llu%s", key, (unsigned long long)v, comma ? "," : "");
}

int proxy_flow_explain(struct proxy_flow *f, const char *query_string, struct evbuffer *out, char *err,
		       size_t errlen)
{
	static const char *const ops[] = { "=", "!=", "=~", "!~" };
	static const char *const verdicts[] = { "admit", "reject", "shadow_reject" };
	struct evkeyvalq params;
	struct evkeyval *kv;
	const char *tenant = NULL, *start_s = NULL, *end_s = NULL;
	const char *matches[EXPLAIN_MAX_QUERIES];
	size_t n_matches = 0;
	int64_t start_ms, end_ms;
	struct timespec now;
	int rc = 400;

	TAILQ_INIT(&params);
	if (evhttp_parse_query_str(query_string, &params) < 0) {
		snprintf(err, errlen, "promguard: bad request: malformed query string");
		return 400;
	}
	TAILQ_FOREACH(kv, &params, next) {
		/* evhttp_parse_query_str decodes values, not keys: match%5B%5D is match[] */
		if (strcmp(kv->key, "match[]") == 0 || strcasecmp(kv->key, "match%5B%5D") == 0) {
			if (n_matches == EXPLAIN_MAX_QUERIES) {
				snprintf(err, errlen, "promguard: bad request: more than %d match[] values",
					 EXPLAIN_MAX_QUERIES);
				goto out;
			}
			matches[n_matches++] = kv->value;
		} else if (strcmp(kv->key, "tenant") == 0) {
			tenant = kv->value;
		} else if (strcmp(kv->key, "start") == 0) {
			start_s = kv->value;
		} else if (strcmp(kv->key, "end") == 0) {
			end_s = kv->value;
		}
	}
	if (n_matches == 0) {
		snprintf(err, errlen, "promguard: bad request: missing match[] (e.g. match[]=up{job=\"x\"})");
		goto out;
	}
	if (tenant && !tenant_valid(tenant, &(const char *){ NULL })) {
		snprintf(err, errlen, "promguard: bad request: invalid tenant");
		goto out;
	}
	clock_gettime(CLOCK_REALTIME, &now);
	end_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
	if (end_s && parse_time_ms(end_s, &end_ms) < 0) {
		snprintf(err, errlen, "promguard: bad request: end: not Unix seconds or RFC3339: %.64s", end_s);
		goto out;
	}
	start_ms = end_ms - 3600 * 1000; /* default: the hour before end */
	if (start_s && parse_time_ms(start_s, &start_ms) < 0) {
		snprintf(err, errlen, "promguard: bad request: start: not Unix seconds or RFC3339: %.64s", start_s);
		goto out;
	}
	if (start_ms > end_ms) {
		snprintf(err, errlen, "promguard: bad request: start %lld > end %lld", (long long)start_ms,
			 (long long)end_ms);
		goto out;
	}

	const char *t = tenant ? tenant : "default";
	struct limiter_input in = { .conf = f->conf, .tenant = t, .limits = conf_limits_for(f->conf, tenant) };
	struct proto_selector sels[EXPLAIN_MAX_QUERIES];
	size_t parsed = 0;

	for (; parsed < n_matches; parsed++) {
		char perr[256];
		if (proto_selector_parse(matches[parsed], &sels[parsed], perr, sizeof(perr)) < 0) {
			snprintf(err, errlen, "promguard: bad request: match[]: %s", perr);
			break;
		}
		struct proto_query probe_q = { .matchers = sels[parsed].matchers, .n_matchers = sels[parsed].n_matchers };
		if (limiter_check_regexes(&probe_q, perr, sizeof(perr)) < 0) {
			snprintf(err, errlen, "promguard: bad request: match[]: %s", perr);
			proto_selector_clear(&sels[parsed]);
			break;
		}
	}
	if (parsed == n_matches) {
		evbuffer_add_lit(out, "{\"tenant\":");
		conf_json_string(out, t);
		evbuffer_add_printf(out, ",\"mode\":\"%s\",\"limits\":", f->conf->mode == CONF_MODE_DRY_RUN ? "dry_run" : "enforce");
		conf_write_limits_json(in.limits, out);
		evbuffer_add_lit(out, ",\"queries\":[");
		for (size_t i = 0; i < n_matches; i++) {
			struct proto_query q = { .start_ms = start_ms, .end_ms = end_ms, .matchers = sels[i].matchers,
						 .n_matchers = sels[i].n_matchers };
			struct est_result e;
			struct limiter_decision d;
			char sel[SELECTOR_MAX], line[SELECTOR_MAX + 512], lim[48];

			est_estimate(f->est, t, &q, &e);
			limiter_check_request(&in, n_matches, &d);
			if (d.verdict != LIMITER_REJECT) {
				struct limiter_decision s;
				limiter_check_structure(&in, &q, &s);
				if (s.verdict == LIMITER_REJECT || d.verdict == LIMITER_ADMIT)
					d = s;
			}
			if (d.verdict != LIMITER_REJECT) {
				struct limiter_decision s;
				limiter_check_unknown(&in, &e, &s);
				if (s.verdict == LIMITER_ADMIT)
					limiter_check_estimate(&in, &q, &e, &s);
				if (s.verdict == LIMITER_REJECT || d.verdict == LIMITER_ADMIT)
					d = s;
			}
			proto_selector_print(&q, sel, sizeof(sel));
			evbuffer_add_printf(out, "%s{\"selector\":", i ? "," : "");
			conf_json_string(out, sel);
			evbuffer_add_lit(out, ",\"matchers\":[");
			for (size_t m = 0; m < q.n_matchers; m++) {
				evbuffer_add_printf(out, "%s{\"name\":", m ? "," : "");
				conf_json_string(out, q.matchers[m].name);
				evbuffer_add_printf(out, ",\"type\":\"%s\",\"value\":", ops[q.matchers[m].type]);
				conf_json_string(out, q.matchers[m].value);
				evbuffer_add_lit(out, "}");
			}
			evbuffer_add_printf(out, "],\"start\":%lld,\"end\":%lld,\"estimate\":{", (long long)start_ms,
					    (long long)end_ms);
			json_u64(out, "series", e.series, 1);
			json_u64(out, "samples", e.samples, 1);
			json_u64(out, "bytes", e.bytes, 1);
			evbuffer_add_printf(out, "\"source\":\"%s\"},\"decision\":{\"verdict\":\"%s\",\"reason\":",
					    est_source_name(e.source), verdicts[d.verdict]);
			conf_json_string(out, d.verdict == LIMITER_ADMIT ? "none" : d.reason);
			evbuffer_add_lit(out, ",\"key\":");
			conf_json_string(out, d.key);
			evbuffer_add_lit(out, ",\"limit\":");
			conf_json_string(out, conf_format_value(d.type, d.limit, lim, sizeof(lim)));
			evbuffer_add_printf(out, ",\"value\":%llu,\"message\":", (unsigned long long)d.value);
			if (d.verdict == LIMITER_ADMIT)
				line[0] = '\0';
			else
				limiter_format_rejection(&d, &q, t, est_source_name(e.source), line, sizeof(line));
			conf_json_string(out, line);
			evbuffer_add_lit(out, "}}");
		}
		evbuffer_add_lit(out, "]}\n");
		rc = 200;
	}
	for (size_t i = 0; i < parsed; i++)
		proto_selector_clear(&sels[i]);
out:
	evhttp_clear_headers(&params);
	return rc;
}

/* --- lifecycle ----------------------------------------------------------------------------- */

/* The deferral queue's settings from a config. */
static void queue_settings_from(const struct conf *c, struct limiter_queue_settings *s, uint64_t seed)
{
	s->max_queued = (uint64_t)c->limits.v[CONF_LIMIT_MAX_QUEUED];
	s->backoff = (struct backoff_settings){
		.base_delay_ms = c->queue_base_delay_ms,
		.max_delay_ms = c->queue_max_delay_ms,
		.max_keys = (uint32_t)c->queue_max_tracked_keys,
		.rate = (double)c->queue_retry_rate,
		.burst = (uint32_t)c->queue_retry_burst,
		.jitter = BACKOFF_JITTER,
		.seed = seed,
	};
}

struct proxy_flow *proxy_flow_new(struct event_base *base, struct conf *conf, struct proxy_upstream *up,
				  struct proxy_upstream *probe_up, const char *probe_path, struct pool *pool)
{
	struct proxy_flow *f = calloc(1, sizeof(*f));
	struct est_hint *hints = calloc(conf->n_est_hints + 1, sizeof(*hints));
	struct est_settings s;
	struct limiter_queue_settings qs;
	struct timespec ts;

	if (!f || !hints) {
		free(f);
		free(hints);
		return NULL;
	}
	est_settings_from(conf, &s, hints);
	f->est = est_new(&s);
	free(hints);
	clock_gettime(CLOCK_REALTIME, &ts);
	queue_settings_from(conf, &qs, (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20));
	f->queue = limiter_queue_new(&qs);
	f->base = base;
	f->queue_timer = evtimer_new(base, on_queue_timer, f);
	f->queue_kick = event_new(base, -1, 0, on_queue_kick, f);
	if (!f->est || !f->queue || !f->queue_timer || !f->queue_kick) {
		proxy_flow_free(f);
		return NULL;
	}
	f->conf = conf_ref(conf);
	f->up = up;
	f->probe_up = probe_up;
	f->pool = pool;
	snprintf(f->probe_path, sizeof(f->probe_path), "%s", probe_path ? probe_path : "/api/v1/series");
	metrics_set(METRICS_INFLIGHT, NULL, NULL, 0);
	proxy_flow_refresh_metrics(f);
	queue_changed(f);
	return f;
}

void proxy_flow_free(struct proxy_flow *f)
{
	if (!f)
		return;
	est_free(f->est);
	pool_wait_cancel(f->queue_mem);
	limiter_queue_free(f->queue);
	if (f->queue_timer)
		event_free(f->queue_timer);
	if (f->queue_kick)
		event_free(f->queue_kick);
	conf_unref(f->conf);
	free(f->tin);
	free(f);
}

int proxy_flow_set_conf(struct proxy_flow *f, struct conf *conf)
{
	struct est_hint *hints = calloc(conf->n_est_hints + 1, sizeof(*hints));
	struct est_settings s;
	struct limiter_queue_settings qs;
	int rc;

	if (!hints)
		return -ENOMEM;
	est_settings_from(conf, &s, hints);
	queue_settings_from(conf, &qs, (uint64_t)pool_now_ms());
	rc = limiter_queue_configure(f->queue, &qs);
	if (rc == 0)
		rc = est_configure(f->est, &s);
	free(hints);
	if (rc < 0)
		return rc;
	conf_unref(f->conf);
	f->conf = conf_ref(conf);
	proxy_flow_refresh_metrics(f);
	queue_changed(f);
	queue_kick(f); /* a higher max_inflight is capacity too */
	return 0;
}

const struct proxy_flow_stats *proxy_flow_stats(const struct proxy_flow *f)
{
	return &f->stats;
}

void proxy_flow_write_top_rejected(const struct proxy_flow *f, struct evbuffer *out)
{
	const struct top_rejected *order[TOP_REJECTED];
	size_t n = 0;

	for (size_t i = 0; i < TOP_REJECTED; i++)
		if (f->top[i].count)
			order[n++] = &f->top[i];
	/* few entries: insertion sort by count, highest first */
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0 && order[j]->count > order[j - 1]->count; j--) {
			const struct top_rejected *t = order[j];
			order[j] = order[j - 1];
			order[j - 1] = t;
		}
	evbuffer_add_lit(out, "[");
	for (size_t i = 0; i < n && i < 10; i++) {
		evbuffer_add_printf(out, "%s{\"selector\":", i ? "," : "");
		conf_json_string(out, order[i]->selector);
		evbuffer_add_lit(out, ",\"tenant\":");
		conf_json_string(out, order[i]->tenant);
		evbuffer_add_lit(out, ",\"reason\":");
		conf_json_string(out, order[i]->reason);
		evbuffer_add_printf(out, ",\"count\":%llu}", (unsigned long long)order[i]->count);
	}
	evbuffer_add_lit(out, "]");
}

static void write_tenant_queued(const char *tenant, uint64_t queued, void *arg)
{
	struct evbuffer *out = arg;

	if (evbuffer_get_length(out))
		evbuffer_add_lit(out, ",");
	conf_json_string(out, tenant);
	evbuffer_add_printf(out, ":%llu", (unsigned long long)queued);
}

void proxy_flow_write_queue(const struct proxy_flow *f, struct evbuffer *out)
{
	struct limiter_queue_stats st;
	struct evbuffer *tenants = evbuffer_new();

	limiter_queue_get_stats(f->queue, &st);
	evbuffer_add_printf(out, "{\"length\":%llu,\"limit\":%lld,\"delayed_retries\":%llu,\"deferred\":%llu,"
			    "\"refused\":%llu,\"exits\":{\"done\":%llu,\"rejected\":%llu,\"timeout\":%llu,"
			    "\"cancelled\":%llu},\"backoff\":{\"tracked_keys\":%llu,\"max_tracked_keys\":%llu,"
			    "\"evictions\":%llu,\"forgotten\":%llu},\"tenants\":{",
			    (unsigned long long)st.length, (long long)f->conf->limits.v[CONF_LIMIT_MAX_QUEUED],
			    (unsigned long long)st.delayed, (unsigned long long)st.deferred,
			    (unsigned long long)st.refused, (unsigned long long)st.exits[LIMITER_QUEUE_EXIT_DONE],
			    (unsigned long long)st.exits[LIMITER_QUEUE_EXIT_REJECTED],
			    (unsigned long long)st.exits[LIMITER_QUEUE_EXIT_TIMEOUT],
			    (unsigned long long)st.exits[LIMITER_QUEUE_EXIT_CANCELLED],
			    (unsigned long long)st.backoff.tracked, (unsigned long long)st.backoff.max_keys,
			    (unsigned long long)st.backoff.evictions, (unsigned long long)st.backoff.forgotten);
	if (tenants) {
		limiter_queue_foreach_tenant(f->queue, write_tenant_queued, tenants);
		evbuffer_add_buffer(out, tenants);
		evbuffer_free(tenants);
	}
	evbuffer_add_printf(out, "}}");
}

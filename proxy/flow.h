/*
 * proxy_flow: the remote-read request path, top to bottom.
 *
 *   receive -> decode -> estimate -> admit / defer / reject -> forward -> relay and count
 *   (retrying the store through the queue) -> learn -> reply
 *
 * Every decision a query goes through is a call from proxy_flow_handle() and its callbacks in
 * flow.c, each into its own module (proto/ for codecs, proxy/upstream for the store).
 */
#ifndef PROMGUARD_PROXY_FLOW_H
#define PROMGUARD_PROXY_FLOW_H

#include <stddef.h>
#include <stdint.h>

struct conf;
struct event_base;
struct pool;
struct evbuffer;
struct proxy_flow;
struct proxy_req;
struct proxy_upstream;

/* Running totals for /api/v1/status (metrics carry the labelled detail). */
struct proxy_flow_stats {
	uint64_t requests;        /* remote-read requests answered */
	uint64_t queries;         /* queries forwarded */
	uint64_t bad_requests;    /* 400/405/413 answers */
	uint64_t rejected;        /* 422 and 429 answers, and streams cut by a limit */
	uint64_t upstream_errors; /* refused, reset, timeout, protocol, corrupt responses */
	uint64_t response_series; /* series counted in relayed responses */
	uint64_t response_bytes;  /* bytes relayed from the store */
	uint64_t inflight;        /* requests running against the store now */
	uint64_t learned;         /* complete responses whose series the estimator learned */
	uint64_t learn_fresh;     /* complete responses not learned: every selector learned < 1 s ago */
};

/*
 * New request path on <base> (ref: the deferral queue's timers) over <conf> (a reference is taken), the store <up> (ref) and, when probes are
 * on, the series API pool <probe_up> (ref, may be NULL) at <probe_path>; every response reserves
 * its memory from <pool> (ref). NULL on ENOMEM.
 */
struct proxy_flow *proxy_flow_new(struct event_base *base, struct conf *conf, struct proxy_upstream *up,
				  struct proxy_upstream *probe_up, const char *probe_path, struct pool *pool);
void proxy_flow_free(struct proxy_flow *f);

/*
 * Use <conf> for requests that arrive from now on (reload): limits, tenants, rules, estimator
 * settings. Requests in flight keep the config they began with. Returns 0 or -ENOMEM (nothing
 * changed).
 */
int proxy_flow_set_conf(struct proxy_flow *f, struct conf *conf);

/* Body cap for a request on the read path: the tenant's limits.max_request_bytes. */
uint64_t proxy_flow_body_cap(struct proxy_flow *f, struct proxy_req *req);

/* Answer one request on the read path (any method). */
void proxy_flow_handle(struct proxy_flow *f, struct proxy_req *req);

const struct proxy_flow_stats *proxy_flow_stats(const struct proxy_flow *f);

/*
 * GET /api/v1/explain: parse <query_string> (match[]=, start=, end=, tenant=) and write the JSON
 * answer to <out>: per selector the matchers, the estimate and its source, the decision. No I/O
 * (no probe). Returns 200, or 400 with one line in <err>.
 */
int proxy_flow_explain(struct proxy_flow *f, const char *query_string, struct evbuffer *out, char *err,
		       size_t errlen);

/* The deferral queue as a JSON object (length, limit, per-tenant lengths, backoff keys), for
 * /api/v1/status. */
void proxy_flow_write_queue(const struct proxy_flow *f, struct evbuffer *out);

/* Copy the estimator's and the deferral queue's figures into their metrics (before a scrape). */
void proxy_flow_refresh_metrics(struct proxy_flow *f);

/* The most rejected selectors (up to 10) as a JSON array, for /api/v1/status. */
void proxy_flow_write_top_rejected(const struct proxy_flow *f, struct evbuffer *out);

#endif

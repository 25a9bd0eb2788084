/*
 * proxy_flow: the remote-read request path, top to bottom.
 *
 *   receive -> decode -> (estimate -> admit/defer/reject: later issues) -> forward -> relay and
 *   count -> reply
 *
 * Every decision a query goes through is a call from proxy_flow_handle() and its callbacks in
 * flow.c, each into its own module (proto/ for codecs, proxy/upstream for the store).
 */
#ifndef PROMGUARD_PROXY_FLOW_H
#define PROMGUARD_PROXY_FLOW_H

#include <stddef.h>
#include <stdint.h>

struct conf;
struct proxy_flow;
struct proxy_req;
struct proxy_upstream;

/* Running totals for /api/v1/status (metrics carry the labelled detail). */
struct proxy_flow_stats {
	uint64_t requests;        /* remote-read requests answered */
	uint64_t queries;         /* queries forwarded */
	uint64_t bad_requests;    /* 400/405/413 answers */
	uint64_t upstream_errors; /* refused, reset, timeout, protocol, corrupt responses */
	uint64_t response_series; /* series counted in relayed responses */
	uint64_t response_bytes;  /* bytes relayed from the store */
	uint64_t inflight;        /* requests running against the store now */
};

/* New request path over <conf> (ref; swapped by proxy_flow_set_conf) and <up> (ref). */
struct proxy_flow *proxy_flow_new(const struct conf *conf, struct proxy_upstream *up);
void proxy_flow_free(struct proxy_flow *f);

/* Use <conf> for requests that arrive from now on. (ref) */
void proxy_flow_set_conf(struct proxy_flow *f, const struct conf *conf);

/* Body cap for a request on the read path: the tenant's limits.max_request_bytes. */
uint64_t proxy_flow_body_cap(struct proxy_flow *f, struct proxy_req *req);

/* Answer one request on the read path (any method). */
void proxy_flow_handle(struct proxy_flow *f, struct proxy_req *req);

const struct proxy_flow_stats *proxy_flow_stats(const struct proxy_flow *f);

#endif

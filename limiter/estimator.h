/*
 * est: cardinality estimation for remote-read queries, before a byte reaches the store.
 *
 * Sources, in the order they are consulted:
 *   recall   the fingerprint of the normalised selector (tenant + sorted matchers) was seen in a
 *            relayed response (or answered by a probe): exact figures from last time;
 *   stats    learned from relayed responses: per (tenant, metric) a HyperLogLog of distinct label
 *            sets, per label the frequent values exactly (with series counts) and the tail
 *            summarised (distinct values HLL, series total, a reservoir sample of values);
 *            matchers combine by value shares (EQ share, RE sums matching values, NEQ/NRE
 *            complement, unseen label = metric total), regex over __name__ sums the metrics;
 *   hint     estimator.hints: a static series figure per metric name;
 *   default  nothing known: series 0, the caller decides (probe, admit or reject).
 * A probe's answer is fed back with est_learn_probe() and is then a recall entry (source probe).
 *
 * A series relayed again soon after it was learned (dashboards refreshing) is not learned again:
 * a fixed-size filter of recently learned series (tenant, label set) skips it, so the stats
 * count series, not sightings. The filter forgets when learned state is dropped, on reload and
 * periodically (see "recently learned series" in estimator.c).
 *
 * Everything learned stays within the memory budget (estimator.max_memory): least recently used
 * recall entries and metrics are dropped first. All calls happen on the event loop thread.
 */
#ifndef PROMGUARD_LIMITER_ESTIMATOR_H
#define PROMGUARD_LIMITER_ESTIMATOR_H

#include <stddef.h>
#include <stdint.h>

struct proto_query;
struct proto_label;
struct est;

enum est_source {
	EST_SOURCE_DEFAULT = 0, /* nothing known */
	EST_SOURCE_RECALL,      /* exact recall of this selector */
	EST_SOURCE_STATS,       /* learned statistics */
	EST_SOURCE_PROBE,       /* the store's /api/v1/series answered (cached) */
	EST_SOURCE_HINT,        /* estimator.hints */
};

/* "default", "recall", "stats", "probe", "hint": the decision header / log / explain value. */
const char *est_source_name(enum est_source s);

struct est_hint {
	const char *metric;
	uint64_t series;
};

struct est_settings {
	int64_t scrape_interval_ms; /* samples = series x range / scrape_interval */
	uint64_t max_memory;        /* budget for everything learned, bytes */
	const struct est_hint *hints;
	size_t n_hints;
};

struct est_result {
	enum est_source source;
	uint64_t series;            /* estimated series */
	uint64_t samples;           /* estimated samples */
	uint64_t bytes;             /* estimated response bytes, 0 when unknown */
	uint64_t fingerprint;       /* of (tenant, normalised selector) */
	int truncated;              /* probe stopped early: series is a lower bound */
	int lower_bound;            /* stats cover only part of what the selector may select (learned
				       through narrower selectors, or a __name__ regex): a probe can tell more */
};

/* New estimator (copies <s>, including the hints). NULL on ENOMEM. */
struct est *est_new(const struct est_settings *s);
void est_free(struct est *e);

/* Apply new settings (reload): hints replaced, a smaller budget evicts at once. 0 or -ENOMEM. */
int est_configure(struct est *e, const struct est_settings *s);

/* Fingerprint of <tenant> + <q>'s matchers, sorted (order and duplicates do not matter). */
uint64_t est_fingerprint(const char *tenant, const struct proto_query *q);

/* Estimate <q> for <tenant>. Never fails; source DEFAULT when nothing is known. */
void est_estimate(struct est *e, const char *tenant, const struct proto_query *q, struct est_result *out);

/*
 * Learn one series seen in a relayed response for <tenant> (labels as on the wire, any order).
 * Feeds the metric's HLL and label value tables. A series learned recently for the same tenant
 * (same label set, in any order) is skipped and counted in est_stats.learn_skipped.
 */
void est_learn_series(struct est *e, const char *tenant, const struct proto_label *labels, size_t n_labels);

/*
 * Learn the actual outcome of <q>: <series>, <samples> and <bytes> (compressed response bytes
 * attributable to this query). Stored as a recall entry with source RECALL.
 */
void est_learn_query(struct est *e, const char *tenant, const struct proto_query *q, uint64_t series,
		     uint64_t samples, uint64_t bytes);

/*
 * est_learn_query with <fp> = est_fingerprint(<tenant>, <q>) already known (the fingerprint
 * est_estimate() put in its result): sorting and hashing the matchers again was half the call.
 */
void est_learn_query_fp(struct est *e, const char *tenant, const struct proto_query *q, uint64_t fp,
			uint64_t series, uint64_t samples, uint64_t bytes);

/* Learn a probe's answer for <q>: <series> (a lower bound when <truncated>). Source PROBE. */
void est_learn_probe(struct est *e, const char *tenant, const struct proto_query *q, uint64_t series,
		     int truncated);

struct est_stats {
	uint64_t memory_bytes;     /* accounted bytes of everything learned */
	uint64_t memory_limit;
	uint64_t recall_entries;
	uint64_t metrics;          /* (tenant, metric) entries with stats */
	uint64_t label_values;     /* exactly tracked label values over all metrics */
	uint64_t evictions;        /* entries dropped to stay within the budget */
	uint64_t learned_series;   /* series est_learn_series learned */
	uint64_t learn_skipped;    /* series it skipped: learned recently (same tenant and label set) */
	uint64_t learn_forgets;    /* times the recently-learned filter forgot every entry */
};

void est_get_stats(const struct est *e, struct est_stats *out);

#endif

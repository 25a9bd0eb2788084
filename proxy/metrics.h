/*
 * metrics: every metric promguard exports, defined once in an X-macro table.
 *
 * The table gives the id, the exported name, the type, the label names and the help text; it
 * generates the enum, the /metrics exposition (text format 0.0.4) and `promguard --describe-metrics`.
 * All updates happen on the event-loop thread, so nothing here locks.
 *
 * Labelled series are created on first use. The number of distinct label sets per metric is
 * capped (METRICS_MAX_SERIES); past the cap, values land in a series whose labels are all
 * "other", and promguard_metrics_label_overflow_total counts it, so hostile label values
 * (tenant names) cannot grow memory.
 */
#ifndef PROMGUARD_METRICS_H
#define PROMGUARD_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

enum metrics_type { METRICS_COUNTER, METRICS_GAUGE, METRICS_HISTOGRAM };

/* Bucket sets for histograms (upper bounds; +Inf is implicit). */
enum metrics_buckets {
	METRICS_B_NONE,
	METRICS_B_SECONDS,  /* 0.001 .. 60 s */
	METRICS_B_SERIES,   /* 1 .. 10,000,000 */
	METRICS_B_RATIO,    /* 0.01 .. 100 */
};

/* X(id, name, type, labels (comma separated, "" for none), buckets, help) */
#define METRICS_TABLE(X) \
	X(REQUESTS, "promguard_requests_total", METRICS_COUNTER, "code", METRICS_B_NONE, \
	  "Remote-read requests answered, by HTTP status code.") \
	X(QUERIES, "promguard_queries_total", METRICS_COUNTER, "tenant,decision", METRICS_B_NONE, \
	  "Queries decided, by tenant and decision (admitted, rejected, shadow_rejected).") \
	X(REJECTIONS, "promguard_rejections_total", METRICS_COUNTER, "tenant,reason", METRICS_B_NONE, \
	  "Requests or queries rejected, by tenant and reason.") \
	X(SHADOW_REJECTIONS, "promguard_shadow_rejections_total", METRICS_COUNTER, "tenant,reason", METRICS_B_NONE, \
	  "Queries that dry-run mode or a dry_run rule would have rejected.") \
	X(ESTIMATED_SERIES, "promguard_estimated_series", METRICS_HISTOGRAM, "", METRICS_B_SERIES, \
	  "Estimated series per query at admission.") \
	X(ESTIMATE_ERROR_RATIO, "promguard_estimate_error_ratio", METRICS_HISTOGRAM, "", METRICS_B_RATIO, \
	  "Actual series divided by estimated series, for admitted queries.") \
	X(INFLIGHT, "promguard_inflight_queries", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "Remote-read requests currently running against the store.") \
	X(QUEUE_LENGTH, "promguard_queue_length", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "Deferred queries waiting for capacity.") \
	X(QUEUE_WAIT, "promguard_queue_wait_seconds", METRICS_HISTOGRAM, "", METRICS_B_SECONDS, \
	  "Time deferred queries waited for capacity.") \
	X(QUEUE_LIMIT, "promguard_queue_limit", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "Cap on deferred queries (queue.max_queued).") \
	X(QUEUE_TENANTS, "promguard_queue_tenants", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "Tenants with deferred queries (each has its own queue; they take turns).") \
	X(QUEUE_DEFERRED, "promguard_queue_deferred_total", METRICS_COUNTER, "tenant", METRICS_B_NONE, \
	  "Queries deferred to the queue instead of rejected, by tenant.") \
	X(QUEUE_EXITS, "promguard_queue_exits_total", METRICS_COUNTER, "outcome", METRICS_B_NONE, \
	  "Deferred queries leaving the queue's care, by outcome (done, rejected, timeout, cancelled).") \
	X(BACKOFF_TRACKED_KEYS, "promguard_backoff_tracked_keys", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "Keys with backoff state (bounded by queue.max_tracked_keys).") \
	X(BACKOFF_MAX_KEYS, "promguard_backoff_max_tracked_keys", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "Cap on keys with backoff state (queue.max_tracked_keys).") \
	X(BACKOFF_EVICTIONS, "promguard_backoff_evictions_total", METRICS_COUNTER, "", METRICS_B_NONE, \
	  "Backoff keys evicted because queue.max_tracked_keys was reached.") \
	X(BACKOFF_FORGOTTEN, "promguard_backoff_forgotten_total", METRICS_COUNTER, "", METRICS_B_NONE, \
	  "Backoff keys forgotten because the last request using them ended.") \
	X(POOL_BYTES, "promguard_pool_bytes", METRICS_GAUGE, "state", METRICS_B_NONE, \
	  "Buffer pool bytes by state (free, in_use).") \
	X(POOL_LIMIT_BYTES, "promguard_pool_limit_bytes", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "Hard cap on buffer pool memory (pool.memory_limit).") \
	X(POOL_GET_ON_EMPTY, "promguard_pool_get_on_empty_total", METRICS_COUNTER, "", METRICS_B_NONE, \
	  "Pool gets that found no free buffer.") \
	X(POOL_REFILLS, "promguard_pool_refills_total", METRICS_COUNTER, "", METRICS_B_NONE, \
	  "Background pool refills.") \
	X(POOL_WAITS, "promguard_pool_waits_total", METRICS_COUNTER, "", METRICS_B_NONE, \
	  "Waits for pool memory (a get or reservation that found the limit reached).") \
	X(POOL_WAIT_TIMEOUTS, "promguard_pool_wait_timeouts_total", METRICS_COUNTER, "", METRICS_B_NONE, \
	  "Waits for pool memory that reached their deadline.") \
	X(POOL_WAITERS, "promguard_pool_waiters", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "Requests waiting for pool memory now.") \
	X(POOL_FAILED_GETS, "promguard_pool_failed_gets_total", METRICS_COUNTER, "", METRICS_B_NONE, \
	  "Gets and reservations refused because pool.memory_limit was reached.") \
	X(POOL_PEAK, "promguard_pool_peak_in_use_bytes", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "Highest pool memory in use since start.") \
	X(POOL_RESERVED, "promguard_pool_reserved_bytes", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "Pool memory reserved for responses being fetched or relayed.") \
	X(POOL_CLASS_BYTES, "promguard_pool_class_bytes", METRICS_GAUGE, "class,state", METRICS_B_NONE, \
	  "Pool class buffer bytes by class and state (free, in_use).") \
	X(POOL_CLASS_GETS, "promguard_pool_class_gets_total", METRICS_COUNTER, "class,result", METRICS_B_NONE, \
	  "Pool class gets by class and result (ok, on_empty, failed).") \
	X(POOL_CLASS_REFILLS, "promguard_pool_class_refills_total", METRICS_COUNTER, "class", METRICS_B_NONE, \
	  "Refill passes per class (ready buffers topped up to the high watermark on the loop).") \
	X(POOL_CLASS_TRIMS, "promguard_pool_class_trims_total", METRICS_COUNTER, "class", METRICS_B_NONE, \
	  "Trims per class (ready buffers above the high watermark given back).") \
	X(POOL_CLASS_PEAK, "promguard_pool_class_peak_in_use_bytes", METRICS_GAUGE, "class", METRICS_B_NONE, \
	  "Highest bytes of a class in use since start.") \
	X(UPSTREAM_DURATION, "promguard_upstream_request_duration_seconds", METRICS_HISTOGRAM, "", METRICS_B_SECONDS, \
	  "Time from sending a request to the store until its response is fully relayed.") \
	X(UPSTREAM_RETRIES, "promguard_upstream_retries_total", METRICS_COUNTER, "kind", METRICS_B_NONE, \
	  "Store attempts retried after a transient failure (refused, reset, status_502, status_503).") \
	X(UPSTREAM_ERRORS, "promguard_upstream_errors_total", METRICS_COUNTER, "kind", METRICS_B_NONE, \
	  "Store failures by kind (refused, reset, timeout, protocol, corrupt_response, status_5xx, status_4xx).") \
	X(RESPONSE_SERIES, "promguard_response_series_total", METRICS_COUNTER, "tenant", METRICS_B_NONE, \
	  "Series counted in relayed responses.") \
	X(RESPONSE_SAMPLES, "promguard_response_samples_total", METRICS_COUNTER, "tenant", METRICS_B_NONE, \
	  "Samples (SAMPLES responses) or chunks (streamed responses) counted in relayed responses.") \
	X(RESPONSE_BYTES, "promguard_response_bytes_total", METRICS_COUNTER, "tenant", METRICS_B_NONE, \
	  "Response bytes relayed from the store, as received (compressed).") \
	X(ESTIMATES, "promguard_estimates_total", METRICS_COUNTER, "source", METRICS_B_NONE, \
	  "Query estimates by source (recall, stats, probe, hint, default).") \
	X(PROBES, "promguard_probes_total", METRICS_COUNTER, "result", METRICS_B_NONE, \
	  "Series API probes by result (ok, truncated, failed).") \
	X(EST_MEMORY, "promguard_estimator_memory_bytes", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "Bytes of everything the estimator has learned.") \
	X(EST_MEMORY_LIMIT, "promguard_estimator_memory_limit_bytes", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "Cap on estimator memory (estimator.max_memory).") \
	X(EST_ENTRIES, "promguard_estimator_entries", METRICS_GAUGE, "kind", METRICS_B_NONE, \
	  "Estimator entries by kind (recall, metrics, label_values).") \
	X(EST_EVICTIONS, "promguard_estimator_evictions_total", METRICS_COUNTER, "", METRICS_B_NONE, \
	  "Estimator entries dropped to stay within estimator.max_memory.") \
	X(EST_SERIES, "promguard_estimator_series_total", METRICS_COUNTER, "outcome", METRICS_B_NONE, \
	  "Series offered to the estimator from relayed responses: learned, or recent (the same tenant " \
	  "and label set was learned recently, so it is not counted twice).") \
	X(EST_RESPONSES, "promguard_estimator_responses_total", METRICS_COUNTER, "outcome", METRICS_B_NONE, \
	  "Complete responses by what the estimator took from them: learned (their series labels), or " \
	  "fresh (counted only: every selector's answer was learned from within the last second).") \
	X(CONFIG_RELOAD_OK, "promguard_config_last_reload_successful", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "1 if the last configuration load succeeded.") \
	X(CLIENT_TIMEOUTS, "promguard_client_timeouts_total", METRICS_COUNTER, "kind", METRICS_B_NONE, \
	  "Client connections closed by a timeout: request (client.request_timeout, 408), idle, write.") \
	X(CLIENT_CONNECTIONS, "promguard_client_connections", METRICS_GAUGE, "listener", METRICS_B_NONE, \
	  "Open client connections per listener.") \
	X(ADMIN_UNAUTHORIZED, "promguard_admin_unauthorized_total", METRICS_COUNTER, "endpoint", METRICS_B_NONE, \
	  "Admin requests refused for a missing or wrong bearer token (admin.reload_token_file).") \
	X(TENANT_LABELS, "promguard_tenant_labels", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "Distinct tenant label values in use (capped by admin.max_tenant_labels).") \
	X(TENANT_LABELS_LIMIT, "promguard_tenant_labels_limit", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "Cap on distinct tenant label values (admin.max_tenant_labels); past it tenant=\"other\".") \
	X(TENANT_LABEL_OVERFLOW, "promguard_tenant_label_overflow_total", METRICS_COUNTER, "", METRICS_B_NONE, \
	  "Metric updates of a tenant past admin.max_tenant_labels, counted under tenant=\"other\".") \
	X(LABEL_OVERFLOW, "promguard_metrics_label_overflow_total", METRICS_COUNTER, "metric", METRICS_B_NONE, \
	  "Updates folded into the \"other\" series because a metric hit its label-set cap.") \
	X(PROCESS_RSS, "process_resident_memory_bytes", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "Resident memory size in bytes.") \
	X(PROCESS_FDS, "process_open_fds", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "Number of open file descriptors.") \
	X(PROCESS_START, "process_start_time_seconds", METRICS_GAUGE, "", METRICS_B_NONE, \
	  "Start time of the process since the Unix epoch in seconds.") \
	X(BUILD_INFO, "promguard_build_info", METRICS_GAUGE, "version", METRICS_B_NONE, \
	  "Always 1; the version label names the build.")

#define METRICS_ENUM_(id, name, type, labels, buckets, help) METRICS_##id,
enum metrics_id { METRICS_TABLE(METRICS_ENUM_) METRICS__COUNT };
#undef METRICS_ENUM_

/* Distinct label sets kept per metric before folding into "other". */
#define METRICS_MAX_SERIES 512

/* Default of admin.max_tenant_labels. */
#define METRICS_TENANT_LABELS_DEFAULT 1000

/*
 * Cap the distinct values of every "tenant" label at <n> (admin.max_tenant_labels): tenants
 * already seen keep their series; past the cap a new tenant is counted as tenant="other"
 * (promguard_tenant_label_overflow_total, and a log line at most once a minute). Lowering it
 * keeps the tenants already seen.
 */
void metrics_set_tenant_limit(size_t n);

/* Set up the registry (records the start time). Returns 0 or -ENOMEM. */
int metrics_init(void);
/* Free every series. */
void metrics_deinit(void);

/*
 * Add <v> to the series of <id> with label values <l1>, <l2> (pass NULL for labels the metric
 * does not have). Counters only grow: a negative <v> on a counter is ignored.
 */
void metrics_add(enum metrics_id id, const char *l1, const char *l2, double v);
/* Set a gauge series. */
void metrics_set(enum metrics_id id, const char *l1, const char *l2, double v);
/* Observe <v> in a histogram (histograms have no labels). */
void metrics_observe(enum metrics_id id, double v);
/* Current value of a counter or gauge series (0 if absent); for tests and status. */
double metrics_get(enum metrics_id id, const char *l1, const char *l2);

/* Shorthands. */
#define metrics_inc(id, l1, l2) metrics_add((id), (l1), (l2), 1.0)

/* Refresh process_* gauges (RSS, fds) from /proc; called before each exposition. */
void metrics_refresh_process(void);

/* Render every metric in text exposition format 0.0.4 into <out>. Returns 0 or -ENOMEM. */
int metrics_render(struct evbuffer *out);

/* Print name, type and help of every metric (promguard --describe-metrics). */
void metrics_describe(struct evbuffer *out);

#endif

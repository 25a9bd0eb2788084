/*
 * conf: the configuration model, its YAML loader and its validation.
 *
 * Every per-query limit lives in one table (conf_limit_defs) that the loader, --check-config,
 * /api/v1/status and the rejection messages all read, so a limit's key, default, bounds and
 * rejection reason are written down once. A load builds a fresh struct conf and validates it
 * fully; callers swap it in only when conf_load() succeeds (reload keeps the old one).
 */
#ifndef PROMGUARD_CONF_H
#define PROMGUARD_CONF_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

/* How a value is written in YAML and printed back. */
enum conf_type {
	CONF_T_COUNT,    /* non-negative integer */
	CONF_T_SIZE,     /* bytes: 123, 64KiB, 4MiB, 1GiB */
	CONF_T_DURATION, /* Prometheus duration, stored in milliseconds: 500ms, 15s, 2m, 1h, 7d */
	CONF_T_BOOL,     /* true|false */
	CONF_T_RATIO,    /* 0..1 float, stored as parts per million */
};

/* Per-query limits: every one may be overridden per tenant under tenants.NAME. */
enum conf_limit {
	CONF_LIMIT_MAX_SERIES,
	CONF_LIMIT_MAX_SAMPLES,
	CONF_LIMIT_MAX_RANGE,
	CONF_LIMIT_MAX_RESPONSE_BYTES,
	CONF_LIMIT_MAX_QUERIES_PER_REQUEST,
	CONF_LIMIT_MAX_REQUEST_BYTES,
	CONF_LIMIT_REQUIRE_METRIC_NAME,
	CONF_LIMIT_MAX_REGEX_LENGTH,
	CONF_LIMIT_MAX_INFLIGHT,
	CONF_LIMIT_MAX_QUEUED, /* queue.max_queued; overridable per tenant (tenants.NAME.max_queued) */
	CONF_LIMIT__COUNT
};

/* One row of the limits table. */
struct conf_limit_def {
	const char *key;     /* YAML key under limits: / tenants.NAME:, e.g. "max_series" */
	const char *path;    /* full key for messages, e.g. "limits.max_series" */
	enum conf_type type; /* how it is parsed and printed */
	int64_t def;         /* default (ms for durations, bytes for sizes, 0/1 for bools) */
	int64_t min, max;    /* inclusive bounds */
	int reloadable;      /* 1 if a reload may change it */
	const char *reason;  /* promguard_rejections_total reason label when it rejects */
	const char *help;    /* one line for --check-config and status */
};

extern const struct conf_limit_def conf_limit_defs[CONF_LIMIT__COUNT];

/* The effective value of every limit for one tenant (global merged with overrides). */
struct conf_limits {
	int64_t v[CONF_LIMIT__COUNT];
};

struct conf_tenant {
	char *name;                 /* tenant header value this block applies to */
	struct conf_limits limits;  /* effective: global limits with this tenant's overrides */
	uint32_t overridden;        /* bit i set when limit i was given for this tenant */
};

/* A string -> string pair (upstream.headers). */
struct conf_kv {
	char *key;
	char *value;
};

/* estimator.hints: metric name -> series count. */
struct conf_hint {
	char *metric;
	int64_t series;
};

enum conf_mode { CONF_MODE_ENFORCE, CONF_MODE_DRY_RUN };
enum conf_action { CONF_ACTION_REJECT, CONF_ACTION_DRY_RUN };
enum conf_unknown { CONF_UNKNOWN_PROBE, CONF_UNKNOWN_ADMIT, CONF_UNKNOWN_REJECT };
enum conf_probe { CONF_PROBE_SERIES_API, CONF_PROBE_OFF };
enum conf_propagate { CONF_PROPAGATE_NONE, CONF_PROPAGATE_M3 };

/* Matcher type bits for conf_rule.matcher_types. */
#define CONF_MATCH_EQ  (1u << 0)
#define CONF_MATCH_NEQ (1u << 1)
#define CONF_MATCH_RE  (1u << 2)
#define CONF_MATCH_NRE (1u << 3)

/*
 * rules[]: {name, action, when: {...}}. Every condition given in `when` must hold (AND);
 * absent conditions are not tested. At least one condition is required.
 */
struct conf_rule {
	char *name;
	enum conf_action action;
	char *metric;           /* when.metric: exact __name__ (EQ matcher value) */
	char *metric_regex;     /* when.metric_regex: fully anchored regex over the __name__ */
	char **has_label;       /* when.has_label: every label listed has a matcher */
	size_t n_has_label;
	char **lacks_label;     /* when.lacks_label: no listed label has an = or =~ matcher */
	size_t n_lacks_label;
	unsigned matcher_types; /* when.matcher_types: any matcher of these types (CONF_MATCH_*) */
	int64_t range_above_ms; /* when.range_above: end - start > this (0 = not tested) */
	int64_t estimate_above; /* when.estimate_above: estimated series > this (-1 = not tested) */
	int line;               /* line in the file, for messages */
};

struct conf {
	char *path;                 /* file it was loaded from */
	char *listen;               /* host:port */
	char *admin_listen;         /* host:port; may equal listen */
	char *read_path;
	enum conf_mode mode;
	char *tenant_header;
	char *log_level;            /* debug|info|warn|error */

	/* upstream */
	char *upstream_url;         /* as written */
	char *upstream_host;        /* parsed from the URL */
	int upstream_port;
	char *upstream_path;        /* path plus query string */
	int64_t upstream_timeout_ms;
	int64_t upstream_max_connections;
	struct conf_kv *upstream_headers;
	size_t n_upstream_headers;
	enum conf_propagate propagate_limits;

	/* limits: global, then per tenant */
	struct conf_limits limits;
	struct conf_tenant *tenants;
	size_t n_tenants;

	struct conf_rule *rules;
	size_t n_rules;

	/* estimator */
	int64_t est_scrape_interval_ms;
	enum conf_unknown est_unknown;
	enum conf_probe est_probe;
	char *est_probe_url;        /* NULL: derived from upstream.url */
	char *est_probe_host;       /* parsed from est_probe_url; NULL when it is unset */
	int est_probe_port;
	char *est_probe_path;       /* path and query of est_probe_url */
	struct conf_hint *est_hints;
	size_t n_est_hints;
	int64_t est_max_memory;

	/* pool */
	int64_t pool_memory_limit;
	int64_t pool_low_watermark_ppm;
	int64_t pool_high_watermark_ppm;

	/* queue */
	int64_t queue_max_wait_ms;
	int64_t queue_base_delay_ms;
	int64_t queue_max_delay_ms;
	int64_t queue_max_tracked_keys;
	int64_t queue_retry_rate;   /* global token bucket: retries per second (0: off) */
	int64_t queue_retry_burst;  /* and its size */

	/* client */
	int64_t client_request_timeout_ms;
	int64_t client_idle_timeout_ms;
	int64_t client_write_timeout_ms;

	/* admin */
	char *admin_reload_token_file; /* NULL: POST /-/reload needs no token */
	char *admin_reload_token;      /* read from it at load (never printed) */
	int64_t admin_max_tenant_labels;

	int64_t shutdown_grace_ms;

	int refs;                   /* conf_ref/conf_unref: requests in flight keep the config they began with */
};

/* Longest reload token accepted (admin.reload_token_file). */
#define CONF_TOKEN_MAX 1024

/*
 * Load and validate <path>. On success returns 0 and sets *<out> (free with conf_free()).
 * On failure returns -EINVAL (or -ENOENT/-EIO when the file cannot be read) and appends every
 * problem found to <errs>, one per line, each `file:line: key: problem`.
 */
int conf_load(const char *path, struct conf **out, struct evbuffer *errs);

/* Same, from a string in memory (<name> is used in messages). */
int conf_load_string(const char *name, const char *yaml, size_t len, struct conf **out,
		     struct evbuffer *errs);

void conf_free(struct conf *c);

/* Reference counting for reload: a loaded config starts at 1; the last unref frees it. */
struct conf *conf_ref(struct conf *c);
void conf_unref(struct conf *c);

/* Effective limits for <tenant> (NULL or unknown: the global limits). Never NULL. (ref) */
const struct conf_limits *conf_limits_for(const struct conf *c, const char *tenant);

/* Parse a Prometheus duration ("1h30m", "500ms", "7d") into ms. Returns 0 or -EINVAL. */
int conf_parse_duration(const char *s, int64_t *ms);
/* Parse a size ("4MiB", "512KiB", "1GiB", "123") into bytes. Returns 0 or -EINVAL. */
int conf_parse_size(const char *s, int64_t *bytes);

/* Print a value of <type> the way a user writes it (e.g. 4MiB, 1m, true) into <buf>. */
const char *conf_format_value(enum conf_type type, int64_t v, char *buf, size_t n);

/*
 * For a reload: keys a reload cannot change (listen, admin_listen, read_path, pool.memory_limit)
 * that differ between the running <cur> and the freshly loaded <next> are set back in <next> to
 * the running value, and each is named in <warnings> (may be NULL), one line per key:
 * `key: changed from X to Y; a reload cannot apply it, keeping X until restart`.
 * Returns how many keys were kept, or -ENOMEM (then <next> may be partly reset; drop it).
 */
int conf_keep_unreloadable(struct conf *next, const struct conf *cur, struct evbuffer *warnings);

/*
 * Write the --check-config report: `config ok`, the file and mode, the effective limits of the
 * default tenant and of each configured tenant (overridden values marked with the default they
 * replace), the rules, then every other setting. Header values are not printed.
 */
void conf_print_report(const struct conf *c, struct evbuffer *out);

/* Write <s> as a JSON string (quoted, escaped): shared by the admin endpoints' JSON. */
void conf_json_string(struct evbuffer *out, const char *s);

/* Write <l> as a JSON object keyed by the limits' YAML keys (sizes/durations as strings). */
void conf_write_limits_json(const struct conf_limits *l, struct evbuffer *out);

/*
 * Write the effective config as one JSON object (for /api/v1/status): the YAML keys and nesting,
 * plus "path". Counts and ratios are numbers, sizes and durations strings as a user writes them
 * ("4MiB", "1m30s"), tenants are {"NAME": {"limits": {...effective...}, "overridden": [keys]}},
 * rules carry their "line". Header values are replaced by "<redacted>" (they may be credentials).
 */
void conf_write_json(const struct conf *c, struct evbuffer *out);

#endif

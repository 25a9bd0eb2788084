/*
 * limiter: per-query admission against the limits table and the structural rules.
 *
 * Pure decisions, no I/O: given a decoded query, its tenant's effective limits, the rules and an
 * estimate, say admit or reject and why. The same function checks the actual counts while a
 * response is relayed. A rejection carries everything the one-line 422 message, the decision
 * header, the log line and the counters need; in dry-run (mode or rule action) the verdict is a
 * shadow rejection: admitted, but counted and logged with the same labels.
 */
#ifndef PROMGUARD_LIMITER_ADMISSION_H
#define PROMGUARD_LIMITER_ADMISSION_H

#include <stddef.h>
#include <stdint.h>

#include "proxy/conf.h"

struct proto_query;
struct est_result;

enum limiter_verdict {
	LIMITER_ADMIT,
	LIMITER_REJECT,
	LIMITER_SHADOW_REJECT, /* would reject; admitted because of dry-run */
};

struct limiter_decision {
	enum limiter_verdict verdict;
	const char *reason;     /* rejections_total reason: series, samples, range, ... ("none" when admitted) */
	char key[96];           /* "limits.max_series", "tenants.a.max_series" or "rules.<name>" */
	enum conf_type type;    /* how to print limit and value */
	int64_t limit;          /* the limit that applied (rules: their threshold, or 0) */
	uint64_t value;         /* the figure that broke it */
	int actual;             /* 1: counted in the response; 0: estimated before forwarding */
	const char *rule;       /* (ref) rule name when reason is "rule" */
};

/* Shared inputs of one decision. All (ref). */
struct limiter_input {
	const struct conf *conf;
	const char *tenant;               /* "default" when absent */
	const struct conf_limits *limits; /* the tenant's effective limits */
	int tenant_overrides;             /* 1 when <tenant> has its own block (key names say so) */
};

/*
 * Every =~ and !~ matcher of <q> must compile as a fully anchored regex (the store would refuse
 * it anyway). Returns 0, or -EINVAL with one line in <err> naming the matcher and the error.
 */
int limiter_check_regexes(const struct proto_query *q, char *err, size_t errlen);

/* Request-level checks (limits.max_queries_per_request). */
void limiter_check_request(const struct limiter_input *in, size_t n_queries, struct limiter_decision *d);

/*
 * Structural checks and rules that need no estimate: require_metric_name, max_regex_length,
 * max_range, and the rules without estimate_above. Fills <d>; verdict ADMIT when all pass.
 */
void limiter_check_structure(const struct limiter_input *in, const struct proto_query *q,
			     struct limiter_decision *d);

/* Checks against the estimate: rules with estimate_above, max_series, max_samples, max_response_bytes. */
void limiter_check_estimate(const struct limiter_input *in, const struct proto_query *q,
			    const struct est_result *e, struct limiter_decision *d);

/* estimator.unknown=reject: nothing is known about the query (source default). Reason "unknown". */
void limiter_check_unknown(const struct limiter_input *in, const struct est_result *e, struct limiter_decision *d);

/* Checks of the counts so far in a response (actual): max_series, max_samples, max_response_bytes. */
void limiter_check_actual(const struct limiter_input *in, uint64_t series, uint64_t samples, uint64_t bytes,
			  struct limiter_decision *d);

/*
 * The 422 body line: `promguard: query rejected: <key>=<limit> <estimated|actual> <n> for <selector>
 * [<start>,<end>] tenant=<t> (source=<s>)`. Returns the length needed (like snprintf).
 */
size_t limiter_format_rejection(const struct limiter_decision *d, const struct proto_query *q, const char *tenant,
				const char *source, char *buf, size_t n);

/* The X-Promguard-Decision value: `<admit|reject|shadow_reject>; reason=<r>; estimate=<n>; source=<s>`. */
size_t limiter_format_header(const struct limiter_decision *d, uint64_t estimate, const char *source, char *buf,
			     size_t n);

#endif

/* limiter: per-query admission against the limits table and the rules (see admission.h). */
#include "limiter/admission.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "limiter/estimator.h"
#include "limiter/regex.h"
#include "proto/request.h"

/* --- decisions ----------------------------------------------------------------------------- */

static void admit(struct limiter_decision *d)
{
	memset(d, 0, sizeof(*d));
	d->verdict = LIMITER_ADMIT;
	d->reason = "none";
}

/* The config key that set <limit> for this tenant: "tenants.<t>.<key>" when overridden. */
static void limit_key(const struct limiter_input *in, enum conf_limit limit, char *buf, size_t n)
{
	const struct conf *c = in->conf;

	for (size_t i = 0; i < c->n_tenants; i++) {
		if (strcmp(c->tenants[i].name, in->tenant) == 0 && (c->tenants[i].overridden & (1u << limit))) {
			snprintf(buf, n, "tenants.%s.%s", in->tenant, conf_limit_defs[limit].key);
			return;
		}
	}
	snprintf(buf, n, "%s", conf_limit_defs[limit].path);
}

/* Fill <d> as a rejection by <limit> with figure <value>; dry-run mode makes it a shadow. */
static void reject_limit(const struct limiter_input *in, enum conf_limit limit, uint64_t value, int actual,
			 struct limiter_decision *d)
{
	memset(d, 0, sizeof(*d));
	d->verdict = in->conf->mode == CONF_MODE_DRY_RUN ? LIMITER_SHADOW_REJECT : LIMITER_REJECT;
	d->reason = conf_limit_defs[limit].reason;
	limit_key(in, limit, d->key, sizeof(d->key));
	d->type = conf_limit_defs[limit].type;
	d->limit = in->limits->v[limit];
	d->value = value;
	d->actual = actual;
}

static void reject_rule(const struct limiter_input *in, const struct conf_rule *r, uint64_t value,
			struct limiter_decision *d)
{
	memset(d, 0, sizeof(*d));
	d->verdict = in->conf->mode == CONF_MODE_DRY_RUN || r->action == CONF_ACTION_DRY_RUN ? LIMITER_SHADOW_REJECT
											     : LIMITER_REJECT;
	d->reason = "rule";
	snprintf(d->key, sizeof(d->key), "rules.%s", r->name);
	d->type = CONF_T_COUNT;
	d->value = value;
	d->rule = r->name;
}

/*
 * Keep the strongest outcome: the first real rejection wins at once; a shadow rejection is kept
 * while the remaining checks run (a dry-run rule must not hide a real limit). Returns 1 when
 * <cand> is a real rejection and evaluation should stop.
 */
static int fold(struct limiter_decision *best, const struct limiter_decision *cand)
{
	if (cand->verdict == LIMITER_REJECT) {
		*best = *cand;
		return 1;
	}
	if (cand->verdict == LIMITER_SHADOW_REJECT && best->verdict == LIMITER_ADMIT)
		*best = *cand;
	return 0;
}

/* --- matchers ------------------------------------------------------------------------------ */

static const struct proto_matcher *find_matcher(const struct proto_query *q, const char *label,
						enum proto_match_type type)
{
	for (size_t i = 0; i < q->n_matchers; i++)
		if (q->matchers[i].type == type && strcmp(q->matchers[i].name, label) == 0)
			return &q->matchers[i];
	return NULL;
}

/*
 * A matcher that narrows <label>: = with a non-empty value, or =~ with a regex that does not match
 * everything (`.+`, `.*`, ...). Used for require_metric_name (on __name__) and rules' lacks_label.
 */
static int narrows(const struct proto_query *q, const char *label)
{
	for (size_t i = 0; i < q->n_matchers; i++) {
		const struct proto_matcher *m = &q->matchers[i];
		if (strcmp(m->name, label) != 0)
			continue;
		if (m->type == PROTO_MATCH_EQ && m->value[0])
			return 1;
		if (m->type == PROTO_MATCH_RE) {
			char err[128];
			struct limiter_regex *re = limiter_regex_get(m->value, err, sizeof(err));
			int bounded = re && !limiter_regex_matches_everything(re);
			limiter_regex_release(re);
			if (bounded)
				return 1;
		}
	}
	return 0;
}

static int has_matcher(const struct proto_query *q, const char *label)
{
	for (size_t i = 0; i < q->n_matchers; i++)
		if (strcmp(q->matchers[i].name, label) == 0)
			return 1;
	return 0;
}

/*
 * The metric names a selector can be said to name: its __name__ equality, or the branches of a
 * __name__ regex that is a plain alternation of literal names (`a|b_total`). Returns how many
 * were written to <names> (pointers into <buf>), or -1 when the name is open-ended (no name, or
 * a regex with metacharacters).
 */
static int named_metrics(const struct proto_query *q, const char **names, int max, char *buf, size_t n)
{
	const struct proto_matcher *m = find_matcher(q, "__name__", PROTO_MATCH_EQ);
	int count = 0;

	if (m && m->value[0]) {
		names[0] = m->value;
		return 1;
	}
	m = find_matcher(q, "__name__", PROTO_MATCH_RE);
	if (!m || strlen(m->value) >= n || strpbrk(m->value, ".*+?()[]{}^$\\"))
		return -1;
	snprintf(buf, n, "%s", m->value);
	for (char *save = NULL, *tok = strtok_r(buf, "|", &save); tok; tok = strtok_r(NULL, "|", &save)) {
		if (count == max)
			return -1;
		names[count++] = tok;
	}
	return count ? count : -1;
}

/* Does rule <r>'s metric / metric_regex condition hold? Open-ended names hold (conservative). */
static int rule_metric_holds(const struct conf_rule *r, const struct proto_query *q)
{
	const char *names[32];
	char buf[1024], err[128];
	int n = named_metrics(q, names, 32, buf, sizeof(buf));
	struct limiter_regex *re = NULL;
	int hit = 0;

	if (!r->metric && !r->metric_regex)
		return 1;
	if (n < 0)
		return 1; /* {__name__=~"contain.*"} cannot dodge a rule about container_* */
	if (r->metric_regex) {
		re = limiter_regex_get(r->metric_regex, err, sizeof(err));
		if (!re)
			return 1;
	}
	for (int i = 0; i < n && !hit; i++) {
		if (r->metric && strcmp(names[i], r->metric) == 0)
			hit = 1;
		if (re && limiter_regex_match(re, names[i], strlen(names[i])) != 0)
			hit = 1; /* a match limit hit (-1) counts as a match: fail closed */
	}
	limiter_regex_release(re);
	return hit;
}

static unsigned matcher_type_bit(enum proto_match_type t)
{
	switch (t) {
	case PROTO_MATCH_EQ: return CONF_MATCH_EQ;
	case PROTO_MATCH_NEQ: return CONF_MATCH_NEQ;
	case PROTO_MATCH_RE: return CONF_MATCH_RE;
	case PROTO_MATCH_NRE: return CONF_MATCH_NRE;
	}
	return 0;
}

/* Do all of <r>'s structural conditions hold for <q>? (estimate_above is tested separately.) */
static int rule_structure_holds(const struct conf_rule *r, const struct proto_query *q)
{
	if (!rule_metric_holds(r, q))
		return 0;
	for (size_t i = 0; i < r->n_has_label; i++)
		if (!has_matcher(q, r->has_label[i]))
			return 0;
	for (size_t i = 0; i < r->n_lacks_label; i++)
		if (narrows(q, r->lacks_label[i]))
			return 0;
	if (r->matcher_types) {
		unsigned used = 0;
		for (size_t i = 0; i < q->n_matchers; i++)
			used |= matcher_type_bit(q->matchers[i].type);
		if (!(used & r->matcher_types))
			return 0;
	}
	if (r->range_above_ms > 0 && q->end_ms - q->start_ms <= r->range_above_ms)
		return 0;
	return 1;
}

/* --- the checks ---------------------------------------------------------------------------- */

int limiter_check_regexes(const struct proto_query *q, char *err, size_t errlen)
{
	for (size_t i = 0; i < q->n_matchers; i++) {
		const struct proto_matcher *m = &q->matchers[i];
		struct limiter_regex *re;
		char why[200];

		if (m->type != PROTO_MATCH_RE && m->type != PROTO_MATCH_NRE)
			continue;
		re = limiter_regex_get(m->value, why, sizeof(why));
		if (!re) {
			snprintf(err, errlen, "invalid regex in matcher %.64s%s\"%.64s\": %s", m->name,
				 m->type == PROTO_MATCH_RE ? "=~" : "!~", m->value, why);
			return -EINVAL;
		}
		limiter_regex_release(re);
	}
	return 0;
}

void limiter_check_request(const struct limiter_input *in, size_t n_queries, struct limiter_decision *d)
{
	admit(d);
	if ((int64_t)n_queries > in->limits->v[CONF_LIMIT_MAX_QUERIES_PER_REQUEST])
		reject_limit(in, CONF_LIMIT_MAX_QUERIES_PER_REQUEST, n_queries, 1, d);
}

void limiter_check_structure(const struct limiter_input *in, const struct proto_query *q,
			     struct limiter_decision *d)
{
	const struct conf_limits *l = in->limits;
	struct limiter_decision cand;
	int64_t range = q->end_ms - q->start_ms;

	admit(d);
	if (l->v[CONF_LIMIT_REQUIRE_METRIC_NAME] && !narrows(q, "__name__")) {
		reject_limit(in, CONF_LIMIT_REQUIRE_METRIC_NAME, 0, 1, &cand);
		if (fold(d, &cand))
			return;
	}
	for (size_t i = 0; i < q->n_matchers; i++) {
		const struct proto_matcher *m = &q->matchers[i];
		size_t len = strlen(m->value);
		if ((m->type == PROTO_MATCH_RE || m->type == PROTO_MATCH_NRE) &&
		    (int64_t)len > l->v[CONF_LIMIT_MAX_REGEX_LENGTH]) {
			reject_limit(in, CONF_LIMIT_MAX_REGEX_LENGTH, len, 1, &cand);
			if (fold(d, &cand))
				return;
			break;
		}
	}
	if (l->v[CONF_LIMIT_MAX_RANGE] > 0 && range > l->v[CONF_LIMIT_MAX_RANGE]) {
		reject_limit(in, CONF_LIMIT_MAX_RANGE, (uint64_t)range, 1, &cand);
		if (fold(d, &cand))
			return;
	}
	for (size_t i = 0; i < in->conf->n_rules; i++) {
		const struct conf_rule *r = &in->conf->rules[i];
		if (r->estimate_above >= 0 || !rule_structure_holds(r, q))
			continue;
		reject_rule(in, r, r->range_above_ms > 0 ? (uint64_t)range : 0, &cand);
		if (fold(d, &cand))
			return;
	}
}

void limiter_check_estimate(const struct limiter_input *in, const struct proto_query *q,
			    const struct est_result *e, struct limiter_decision *d)
{
	const struct conf_limits *l = in->limits;
	struct limiter_decision cand;

	admit(d);
	for (size_t i = 0; i < in->conf->n_rules; i++) {
		const struct conf_rule *r = &in->conf->rules[i];
		if (r->estimate_above < 0 || e->series <= (uint64_t)r->estimate_above || !rule_structure_holds(r, q))
			continue;
		reject_rule(in, r, e->series, &cand);
		cand.limit = r->estimate_above;
		if (fold(d, &cand))
			return;
	}
	if (e->series > (uint64_t)l->v[CONF_LIMIT_MAX_SERIES]) {
		reject_limit(in, CONF_LIMIT_MAX_SERIES, e->series, 0, &cand);
		if (fold(d, &cand))
			return;
	}
	if (e->samples > (uint64_t)l->v[CONF_LIMIT_MAX_SAMPLES]) {
		reject_limit(in, CONF_LIMIT_MAX_SAMPLES, e->samples, 0, &cand);
		if (fold(d, &cand))
			return;
	}
	if (e->bytes > (uint64_t)l->v[CONF_LIMIT_MAX_RESPONSE_BYTES]) {
		reject_limit(in, CONF_LIMIT_MAX_RESPONSE_BYTES, e->bytes, 0, &cand);
		fold(d, &cand);
	}
}

void limiter_check_unknown(const struct limiter_input *in, const struct est_result *e, struct limiter_decision *d)
{
	admit(d);
	if (e->source != EST_SOURCE_DEFAULT || in->conf->est_unknown != CONF_UNKNOWN_REJECT)
		return;
	d->verdict = in->conf->mode == CONF_MODE_DRY_RUN ? LIMITER_SHADOW_REJECT : LIMITER_REJECT;
	d->reason = "unknown";
	snprintf(d->key, sizeof(d->key), "estimator.unknown");
	d->type = CONF_T_COUNT;
}

void limiter_check_actual(const struct limiter_input *in, uint64_t series, uint64_t samples, uint64_t bytes,
			  struct limiter_decision *d)
{
	const struct conf_limits *l = in->limits;

	admit(d);
	if (series > (uint64_t)l->v[CONF_LIMIT_MAX_SERIES])
		reject_limit(in, CONF_LIMIT_MAX_SERIES, series, 1, d);
	else if (samples > (uint64_t)l->v[CONF_LIMIT_MAX_SAMPLES])
		reject_limit(in, CONF_LIMIT_MAX_SAMPLES, samples, 1, d);
	else if (bytes > (uint64_t)l->v[CONF_LIMIT_MAX_RESPONSE_BYTES])
		reject_limit(in, CONF_LIMIT_MAX_RESPONSE_BYTES, bytes, 1, d);
}

/* --- messages ------------------------------------------------------------------------------ */

size_t limiter_format_rejection(const struct limiter_decision *d, const struct proto_query *q, const char *tenant,
				const char *source, char *buf, size_t n)
{
	char sel[2048], range[128], lim[48], val[48], what[256];
	size_t need = proto_selector_print(q, sel, sizeof(sel));
	int len;

	if (need >= sizeof(sel))
		memcpy(sel + sizeof(sel) - 4, "...", 4); /* keep the line bounded; the log has the rest */
	proto_range_print(q, range, sizeof(range));
	if (d->rule) {
		if (d->limit > 0)
			snprintf(what, sizeof(what), "%s=%s estimated %llu", d->key,
				 conf_format_value(CONF_T_COUNT, d->limit, lim, sizeof(lim)), (unsigned long long)d->value);
		else
			snprintf(what, sizeof(what), "%s matched", d->key);
	} else if (strcmp(d->reason, "unknown") == 0) {
		snprintf(what, sizeof(what), "%s=reject: nothing learned, hinted or probed", d->key);
	} else if (strcmp(d->reason, "metric_name") == 0) {
		snprintf(what, sizeof(what), "%s=true: no __name__ equality or bounded __name__ regex", d->key);
	} else {
		conf_format_value(d->type, d->limit, lim, sizeof(lim));
		conf_format_value(d->type == CONF_T_BOOL ? CONF_T_COUNT : d->type, (int64_t)d->value, val, sizeof(val));
		snprintf(what, sizeof(what), "%s=%s %s %s", d->key, lim, d->actual ? "actual" : "estimated", val);
	}
	len = snprintf(buf, n, "promguard: query rejected: %s for %s %s tenant=%s (source=%s)", what, sel, range,
		       tenant, source);
	return len < 0 ? 0 : (size_t)len;
}

size_t limiter_format_header(const struct limiter_decision *d, uint64_t estimate, const char *source, char *buf,
			     size_t n)
{
	static const char *const verdicts[] = { "admit", "reject", "shadow_reject" };
	const char *parts[] = { verdicts[d->verdict], "; reason=", d->verdict == LIMITER_ADMIT ? "none" : d->reason,
				"; estimate=", NULL, "; source=", source };
	char num[24], *p = num + sizeof(num);
	size_t len = 0;

	/* Built by hand, not with snprintf: every admitted response carries this header, and the
	 * format parsing was a visible share of a small request's CPU. Same text, cut to <n>. */
	*--p = '\0';
	do {
		*--p = (char)('0' + estimate % 10);
		estimate /= 10;
	} while (estimate);
	parts[4] = p;
	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
		size_t l = strlen(parts[i]);

		if (n > 0 && len < n - 1)
			memcpy(buf + len, parts[i], l < n - 1 - len ? l : n - 1 - len);
		len += l;
	}
	if (n > 0)
		buf[len < n ? len : n - 1] = '\0';
	return len;
}

/*
 * limiter_regex: PCRE2 matching with Prometheus' anchoring, a compile cache and match limits.
 *
 * Prometheus anchors every RE2 matcher at both ends (`^(?:re)$`); PCRE2_ANCHORED |
 * PCRE2_ENDANCHORED gives the same. Regexes come from clients, so matching runs under
 * match and depth limits (no catastrophic backtracking) and compiled patterns are cached in a
 * bounded table: dashboards repeat the same regexes, and compiling costs more than matching.
 */
#ifndef PROMGUARD_LIMITER_REGEX_H
#define PROMGUARD_LIMITER_REGEX_H

#include <stddef.h>
#include <stdint.h>

struct limiter_regex;

/* Compiled patterns kept in the cache; an unreferenced one is dropped (least recently used
 * first) to make room, and a get beyond the cap while all are in use compiles an uncached one. */
#define LIMITER_REGEX_CACHE_MAX 1024

/* Compile flags shared with conf's validation (conf.c checks rules with the same ones). */
#define LIMITER_REGEX_FLAGS_DESC "PCRE2_ANCHORED|PCRE2_ENDANCHORED|PCRE2_UTF (Prometheus' full anchoring)"

/*
 * Compiled <pattern> (NUL-terminated), from the cache or compiled now. Returns NULL with one line
 * in <err> when the pattern does not compile. The result is owned by the cache and stays valid
 * until limiter_regex_release(); every successful get needs one release.
 */
struct limiter_regex *limiter_regex_get(const char *pattern, char *err, size_t errlen);
void limiter_regex_release(struct limiter_regex *re);

/* 1 if <re> matches all of <s> (<len> bytes), 0 if not, -1 if a match limit was hit. */
int limiter_regex_match(const struct limiter_regex *re, const char *s, size_t len);

/*
 * 1 if <pattern> matches every metric name, as `.+`, `.*`, `.*.*` or `(.*)` do: it is tested
 * against a fixed set of unlike names (short, long, with colons and digits). Used by
 * limits.require_metric_name.
 */
int limiter_regex_matches_everything(const struct limiter_regex *re);

/* Drop every cached pattern that is not in use (tests, reload). */
void limiter_regex_cache_flush(void);

/* Cache figures (tests, stats). */
struct limiter_regex_stats {
	size_t entries;     /* patterns cached, in use or not */
	size_t in_use;      /* patterns (cached or not) holding at least one reference */
	uint64_t hits;      /* gets answered from the cache */
	uint64_t compiles;  /* gets that compiled the pattern (failed compiles included) */
	uint64_t evictions; /* unreferenced patterns dropped to make room */
};

void limiter_regex_get_stats(struct limiter_regex_stats *out);

#endif

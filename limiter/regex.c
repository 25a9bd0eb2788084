/* limiter_regex: anchored PCRE2 matching under match limits, with a bounded compile cache (see regex.h). */
#include "limiter/regex.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <xxhash.h>

/*
 * Prometheus' full anchoring, UTF-8 patterns. PCRE2_MATCH_INVALID_UTF lets label values that
 * are not valid UTF-8 be matched (invalid bytes match nothing) instead of failing the match
 * with a UTF error; it also allows JIT matching without a per-call UTF check.
 */
#define REGEX_COMPILE_FLAGS (PCRE2_ANCHORED | PCRE2_ENDANCHORED | PCRE2_UTF | PCRE2_MATCH_INVALID_UTF)

/*
 * Limits per match. The match limit bounds backtracking steps (JIT and interpreter alike); the
 * depth limit bounds nested backtracking frames in the interpreter and the heap limit the memory
 * those frames take. 100000 steps take well under a millisecond; metric names and label values
 * that real selectors match need a few hundred.
 */
#define REGEX_MATCH_LIMIT 100000
#define REGEX_DEPTH_LIMIT 1000
#define REGEX_HEAP_LIMIT_KIB 1024

/* Hash buckets: a power of two, twice the entry cap so chains stay short. */
#define REGEX_BUCKETS (2 * LIMITER_REGEX_CACHE_MAX)

/* Length of the long name in the matches-everything probe set. */
#define REGEX_LONG_NAME_LEN 200

struct limiter_regex {
	pcre2_code *code;              /* compiled, JIT-compiled when available */
	uint64_t hash;                 /* XXH3 of the pattern */
	unsigned refs;                 /* outstanding gets */
	int cached;                    /* 1: in the table; 0: over the cap, freed on last release */
	struct limiter_regex *hnext;   /* bucket chain */
	struct limiter_regex *prev;    /* idle list (refs == 0), towards the most recently released */
	struct limiter_regex *next;    /* idle list, towards the least recently released */
	size_t len;                    /* pattern length */
	char pattern[];                /* NUL-terminated copy, to tell hash collisions apart */
};

/* The process-wide cache; all calls happen on the event loop thread. */
static struct {
	struct limiter_regex *buckets[REGEX_BUCKETS];
	struct limiter_regex *idle_head; /* most recently released */
	struct limiter_regex *idle_tail; /* least recently released: evicted first */
	size_t entries;                  /* cached patterns */
	size_t in_use;                   /* patterns with refs > 0 */
	uint64_t hits, compiles, evictions;
	pcre2_match_context *mctx;       /* limits, shared by every match */
	pcre2_match_data *mdata;         /* one ovector pair: only "did it match" is needed */
} cache;

static struct limiter_regex **bucket_of(uint64_t hash)
{
	return &cache.buckets[hash & (REGEX_BUCKETS - 1)];
}

static void idle_unlink(struct limiter_regex *re)
{
	if (re->prev)
		re->prev->next = re->next;
	else
		cache.idle_head = re->next;
	if (re->next)
		re->next->prev = re->prev;
	else
		cache.idle_tail = re->prev;
	re->prev = re->next = NULL;
}

static void idle_push(struct limiter_regex *re)
{
	re->prev = NULL;
	re->next = cache.idle_head;
	if (cache.idle_head)
		cache.idle_head->prev = re;
	else
		cache.idle_tail = re;
	cache.idle_head = re;
}

static void table_unlink(struct limiter_regex *re)
{
	struct limiter_regex **pp = bucket_of(re->hash);

	while (*pp != re)
		pp = &(*pp)->hnext;
	*pp = re->hnext;
	re->hnext = NULL;
}

static void entry_free(struct limiter_regex *re)
{
	pcre2_code_free(re->code);
	free(re);
}

/* Drop an idle cached entry <re> from the table and free it. */
static void drop_idle(struct limiter_regex *re)
{
	idle_unlink(re);
	table_unlink(re);
	cache.entries--;
	entry_free(re);
}

/* The shared match context and data, created on first use. 0 or -1 when PCRE2 is out of memory. */
static int match_state_ready(void)
{
	if (!cache.mctx) {
		cache.mctx = pcre2_match_context_create(NULL);
		if (!cache.mctx)
			return -1;
		pcre2_set_match_limit(cache.mctx, REGEX_MATCH_LIMIT);
		pcre2_set_depth_limit(cache.mctx, REGEX_DEPTH_LIMIT);
		pcre2_set_heap_limit(cache.mctx, REGEX_HEAP_LIMIT_KIB);
	}
	if (!cache.mdata) {
		cache.mdata = pcre2_match_data_create(1, NULL);
		if (!cache.mdata)
			return -1;
	}
	return 0;
}

static struct limiter_regex *lookup(const char *pattern, size_t len, uint64_t hash)
{
	for (struct limiter_regex *re = *bucket_of(hash); re; re = re->hnext)
		if (re->hash == hash && re->len == len && memcmp(re->pattern, pattern, len) == 0)
			return re;
	return NULL;
}

/* Take a reference on <re>, moving it off the idle list on its first one. */
static struct limiter_regex *ref(struct limiter_regex *re)
{
	if (re->refs++ == 0) {
		if (re->cached)
			idle_unlink(re);
		cache.in_use++;
	}
	return re;
}

/* Compile <pattern> into a new entry (refs 0, not in the table); NULL with <err> filled. */
static struct limiter_regex *compile(const char *pattern, size_t len, uint64_t hash, char *err, size_t errlen)
{
	struct limiter_regex *re;
	pcre2_code *code;
	PCRE2_UCHAR msg[256];
	PCRE2_SIZE erroff = 0;
	int errcode = 0;

	cache.compiles++;
	code = pcre2_compile((PCRE2_SPTR)pattern, len, REGEX_COMPILE_FLAGS, &errcode, &erroff, NULL);
	if (!code) {
		if (pcre2_get_error_message(errcode, msg, sizeof(msg)) < 0)
			snprintf((char *)msg, sizeof(msg), "PCRE2 error %d", errcode);
		snprintf(err, errlen, "%s at offset %zu", (const char *)msg, (size_t)erroff);
		return NULL;
	}
	/* JIT is an optimisation: without it (no JIT support, or out of executable memory) the
	 * interpreter runs the same pattern under the same limits. */
	(void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
	re = calloc(1, sizeof(*re) + len + 1);
	if (!re) {
		pcre2_code_free(code);
		snprintf(err, errlen, "out of memory compiling a %zu-byte pattern", len);
		return NULL;
	}
	re->code = code;
	re->hash = hash;
	re->len = len;
	memcpy(re->pattern, pattern, len + 1);
	return re;
}

struct limiter_regex *limiter_regex_get(const char *pattern, char *err, size_t errlen)
{
	size_t len = strlen(pattern);
	uint64_t hash = XXH3_64bits(pattern, len);
	struct limiter_regex *re = lookup(pattern, len, hash);

	if (re) {
		cache.hits++;
		return ref(re);
	}
	re = compile(pattern, len, hash, err, errlen);
	if (!re)
		return NULL;
	if (cache.entries >= LIMITER_REGEX_CACHE_MAX && cache.idle_tail) {
		drop_idle(cache.idle_tail);
		cache.evictions++;
	}
	if (cache.entries < LIMITER_REGEX_CACHE_MAX) {
		struct limiter_regex **b = bucket_of(hash);

		re->cached = 1;
		re->hnext = *b;
		*b = re;
		cache.entries++;
		re->refs = 1;
		cache.in_use++;
		return re;
	}
	/* Every cached pattern is in use: hand out a private copy rather than grow past the cap. */
	return ref(re);
}

void limiter_regex_release(struct limiter_regex *re)
{
	if (!re || re->refs == 0)
		return;
	if (--re->refs > 0)
		return;
	cache.in_use--;
	if (re->cached)
		idle_push(re);
	else
		entry_free(re);
}

int limiter_regex_match(const struct limiter_regex *re, const char *s, size_t len)
{
	int rc;

	if (match_state_ready() < 0)
		return -1;
	rc = pcre2_match(re->code, (PCRE2_SPTR)(s ? s : ""), len, 0, 0, cache.mdata, cache.mctx);
	if (rc >= 0)
		return 1; /* 0 only says the one-pair ovector was too small: still a match */
	return rc == PCRE2_ERROR_NOMATCH ? 0 : -1;
}

int limiter_regex_matches_everything(const struct limiter_regex *re)
{
	/* Unlike metric names: single characters, colons, digits, underscores, upper case. Metric
	 * names cannot start with a digit, so none here does. */
	static const char *const names[] = {
		"a", "Q", "_", ":", "up", "x9", "__zz__", "node:cpu:rate5m", "http_requests_total",
		"Z9_a:b", "go_gc_duration_seconds_bucket",
	};
	static char long_name[REGEX_LONG_NAME_LEN + 1];

	if (!long_name[0]) {
		for (size_t i = 0; i < REGEX_LONG_NAME_LEN; i++)
			long_name[i] = "abcdefghij_klmnopqrstuvwxyz:0123456789"[i % 38];
		long_name[REGEX_LONG_NAME_LEN] = '\0';
	}
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (limiter_regex_match(re, names[i], strlen(names[i])) != 1)
			return 0;
	return limiter_regex_match(re, long_name, REGEX_LONG_NAME_LEN) == 1;
}

void limiter_regex_cache_flush(void)
{
	while (cache.idle_tail)
		drop_idle(cache.idle_tail);
	if (cache.entries == 0 && cache.in_use == 0) {
		/* Nothing left to match with: give the shared state back too (clean leak checks). */
		pcre2_match_data_free(cache.mdata);
		pcre2_match_context_free(cache.mctx);
		cache.mdata = NULL;
		cache.mctx = NULL;
	}
}

void limiter_regex_get_stats(struct limiter_regex_stats *out)
{
	out->entries = cache.entries;
	out->in_use = cache.in_use;
	out->hits = cache.hits;
	out->compiles = cache.compiles;
	out->evictions = cache.evictions;
}

/*
 * backoff: per-key exponential backoff with jitter, combined with a global token bucket, in a
 * table of fixed size whose state is always forgotten.
 *
 * client-go's ItemExponentialFailureRateLimiter keeps a failure count per item in a map until the
 * caller says Forget; an item that is never forgotten stays for ever, and that map grew until a
 * controller ran out of memory. Here:
 *   - the table holds at most max_keys keys, allocated once at _new(): when it is full the least
 *     recently failed key is evicted (counted), so memory never grows with the number of keys;
 *   - a key's state is held by the requests that use it (backoff_when() takes a hold, a request
 *     gives it back with backoff_forget() on every way out) and is dropped with the last hold;
 *   - the delay is jittered, so requests that failed together do not retry together;
 *   - like client-go's DefaultControllerRateLimiter (MaxOfRateLimiter), the delay is the larger of
 *     the key's exponential delay and the global token bucket's (every when() takes a token).
 * Time is passed in (milliseconds on any monotonic clock), so tests drive it. Single-threaded.
 */
#ifndef PROMGUARD_LIMITER_BACKOFF_H
#define PROMGUARD_LIMITER_BACKOFF_H

#include <stdint.h>

struct backoff;

struct backoff_settings {
	int64_t base_delay_ms; /* queue.base_delay: the first failure's delay (>= 1) */
	int64_t max_delay_ms;  /* queue.max_delay: cap of the exponential delay (>= base_delay_ms) */
	uint32_t max_keys;     /* queue.max_tracked_keys: keys with state at once (>= 1) */
	double rate;           /* queue.retry_rate: bucket tokens per second; 0 turns the bucket off */
	uint32_t burst;        /* queue.retry_burst: bucket size (>= 1 when rate > 0) */
	double jitter;         /* 0..1: a delay d becomes d x (1 - jitter x u), u uniform in [0,1) */
	uint64_t seed;         /* jitter's PRNG seed (tests fix it) */
};

/*
 * A request's hold on a key's state, returned by backoff_when() and given back by
 * backoff_forget(). Zero it before first use. It goes stale when the key is evicted; a stale
 * hold is re-taken by the next backoff_when() (with the failures starting again from 0) and is a
 * no-op for backoff_forget().
 */
struct backoff_ref {
	uint32_t slot; /* index in the table + 1; 0: no hold */
	uint32_t gen;  /* the slot's generation when the hold was taken */
};

struct backoff_stats {
	uint64_t tracked;   /* keys with state now (promguard_backoff_tracked_keys) */
	uint64_t max_keys;  /* the cap */
	uint64_t evictions; /* keys dropped because the table was full */
	uint64_t forgotten; /* keys dropped because their last hold was given back */
	uint64_t failures;  /* backoff_when() calls */
	uint64_t bucket_delayed; /* when() results the bucket made longer than the key's own delay */
};

/* New table. NULL on ENOMEM, or EINVAL for settings outside the bounds above. */
struct backoff *backoff_new(const struct backoff_settings *s);
/* NULL is fine. Holds still out are simply dropped. */
void backoff_free(struct backoff *b);

/*
 * Apply new settings (reload). Returns 0, or -EINVAL / -ENOMEM with <b> unchanged. A smaller
 * max_keys keeps the most recently failed keys that fit; holds on the others go stale (counted as
 * evictions). The bucket keeps its tokens, capped at the new burst.
 */
int backoff_configure(struct backoff *b, const struct backoff_settings *s);

/*
 * Record one failure of <key> at <now_ms> and return the delay (ms, >= 0) before it should be
 * tried again: max(min(base x 2^(failures before this one), max) jittered, the bucket's wait for
 * its next token). Takes a hold for <ref> if it has none (or a stale one): the key's state is
 * found, or created with 0 failures (evicting the least recently failed key when full); a hold
 * already taken is reused. Several requests may hold one key; its failures are shared.
 */
int64_t backoff_when(struct backoff *b, struct backoff_ref *ref, uint64_t key, int64_t now_ms);

/*
 * Give <ref>'s hold back (zeroing <ref>): the key's state is dropped when no hold is left. A zero
 * or stale <ref> is fine. Call it on every way a request ends.
 */
void backoff_forget(struct backoff *b, struct backoff_ref *ref);

/* Failures recorded for the key <ref> holds; 0 for a zero or stale <ref>. */
uint32_t backoff_failures(const struct backoff *b, const struct backoff_ref *ref);

void backoff_get_stats(const struct backoff *b, struct backoff_stats *out);

#endif

/*
 * pool: the watermark buffer pool with a hard byte limit.
 *
 * Every large buffer promguard holds comes from here, so memory follows one number
 * (pool.memory_limit). Modelled on HAProxy's pools and buffer wait lists, with M3's refill
 * watermarks kept for latency but its allocate-on-empty removed:
 *   - size classes hold ready buffers; a class's free count is refilled on the event loop (never
 *     inside a get) from low_watermark x target up to high_watermark x target, and trimmed back
 *     when it stays above the high watermark;
 *   - a get never allocates past the limit: it fails, and the caller registers a waiter, woken by
 *     priority when memory is released (relaying an admitted response ranks above new intake, so
 *     memory in use can always drain); a waiter has a deadline;
 *   - large buffers (contiguous SAMPLES bodies) are budgeted allocations counted against the same
 *     limit; reservations let admission claim bytes before a query runs.
 * Single-threaded: every call happens on the event loop thread.
 */
#ifndef PROMGUARD_POOL_H
#define PROMGUARD_POOL_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct pool;
struct pool_waiter;

enum pool_class {
	POOL_CLASS_SMALL,   /* 4 KiB: request bodies, decoded requests, small allocations */
	POOL_CLASS_SEGMENT, /* 64 KiB: stream segments and SAMPLES body pieces */
	POOL_CLASS__COUNT,
};

/* Waiter priorities: lower wakes first. */
enum pool_priority {
	POOL_PRIO_RELAY = 0,  /* an admitted response being relayed: frees memory when it finishes */
	POOL_PRIO_INTAKE = 1, /* a new request or query */
};

struct pool_settings {
	uint64_t memory_limit;     /* hard cap on all pool memory (free + in use + large + reserved) */
	double low_watermark;      /* refill a class when free <= low x target (0..1) */
	double high_watermark;     /* ...up to high x target; trim above it */
	double fail_rate;          /* debug: fraction of gets that fail as if at the limit (0 = off) */
	int poison;                /* debug: fill freed buffers with 0x5a and check on reuse */
};

/* Sizes of the classes, in bytes. */
size_t pool_class_size(enum pool_class c);
/* "small", "segment": the class label on /metrics. */
const char *pool_class_name(enum pool_class c);

/*
 * Target count of class <c> buffers in <p>, derived from memory_limit (the watermarks are
 * fractions of it): what a /metrics gauge or a like-for-like comparison needs. 0 for a bad <c>.
 */
uint64_t pool_class_target(const struct pool *p, enum pool_class c);

/*
 * New pool, pre-filled to the high watermark. NULL on ENOMEM or bad settings (errno EINVAL:
 * memory_limit below 64 KiB, watermarks not 0 <= low <= high <= 1, fail_rate outside 0..1, or a
 * malformed debug variable, which pool_env_apply() names). <base> (ref) must outlive the pool.
 */
struct pool *pool_new(struct event_base *base, const struct pool_settings *s);
/*
 * Free every buffer; buffers still out are a bug (reported on stderr, asserted in debug builds).
 * Pending waiters are dropped without callbacks. NULL is fine.
 */
void pool_free(struct pool *p);
/*
 * Apply new watermarks and limit (reload). Returns 0, or -EINVAL with the pool unchanged. A lower
 * limit frees idle buffers at once; what is in use goes back to malloc as it is put, and gets
 * fail until use is under the new limit. The debug environment keeps precedence.
 */
int pool_configure(struct pool *p, const struct pool_settings *s);

/*
 * A buffer of class <c> (16-byte aligned, pool_class_size(<c>) bytes), or NULL when the limit is
 * reached (nothing is allocated past it), <c> is out of range or malloc fails. O(1): it pops the
 * free list, or allocates one buffer when the list is empty and the limit allows (get_on_empty).
 */
void *pool_get(struct pool *p, enum pool_class c) __attribute__((warn_unused_result));
/* Return a buffer from pool_get. NULL is fine. Aborts on a double put or a foreign pointer. */
void pool_put(struct pool *p, void *buf);

/*
 * A contiguous buffer of <size> bytes counted against the limit, or NULL (free class buffers are
 * given back first to make room). Return it with pool_put_large() (NULL is fine).
 */
void *pool_get_large(struct pool *p, size_t size) __attribute__((warn_unused_result));
void pool_put_large(struct pool *p, void *buf);

/*
 * Claim <bytes> of the limit for work about to start (admission's estimate of a response).
 * Returns 0, or -EAGAIN when they cannot be had now (wait), -E2BIG when they never can (more
 * than the whole limit). Grow with pool_reserve_grow(), give back with pool_release().
 * pool_reserve_grow() returns -E2BIG when <more> alone exceeds the limit; the pool does not know
 * one query's share of reserved_bytes, so a caller compares its own total with the limit.
 * Releasing more than is reserved is a bug (asserted; clamped in release builds).
 */
int pool_reserve(struct pool *p, uint64_t bytes);
int pool_reserve_grow(struct pool *p, uint64_t more);
void pool_release(struct pool *p, uint64_t bytes);

/*
 * Wait for memory: <cb>(<arg>) runs on the loop once <bytes> (a class size, a large size or a
 * reservation) may be available; the callback retries its get and may wait again. On <deadline_ms>
 * <timeout>(<arg>) runs instead. The waiter is owned by the pool until one of the two runs or
 * pool_wait_cancel(). Returns NULL on ENOMEM.
 *
 * <deadline_ms> is absolute, on the pool_now_ms() clock (CLOCK_MONOTONIC); a deadline already
 * past fires on the next loop pass. Waiters wake strictly in order (priority, then FIFO): the
 * first one whose bytes do not fit holds back those behind it, so a large request is not starved
 * by small ones. A waiter for more than the whole limit never fits and only times out. Between
 * the wakeup and <cb> the woken bytes are held back from other gets. Both callbacks run from
 * the event loop, never inside a pool call; neither may call pool_free().
 */
struct pool_waiter *pool_wait(struct pool *p, uint64_t bytes, enum pool_priority prio, int64_t deadline_ms,
			      void (*cb)(void *arg), void (*timeout)(void *arg), void *arg);
void pool_wait_cancel(struct pool_waiter *w);

/*
 * Per class. get_on_empty: gets within the limit that found the free list empty and allocated
 * (the watermarks were too low for the burst); a get refused at the limit counts in failed_gets
 * only. refills: refill passes that added buffers; trims: trim checks that gave some back.
 */
/*
 * An arena over the pool for many small allocations that die together (a decoded request and its
 * strings): bump allocation inside SMALL buffers, larger pieces as large buffers, all returned by
 * pool_arena_release(). Individual frees are no-ops. Embed it; zero it with pool_arena_init().
 */
struct pool_arena {
	struct pool *pool;  /* (ref) */
	char *block;        /* current SMALL buffer being filled */
	size_t used;        /* bytes used in <block> */
	void *blocks;       /* SMALL buffers, linked through their first word */
	void *larges;       /* large buffers, linked through their first word */
	uint64_t bytes;     /* pool bytes held by the arena */
};

void pool_arena_init(struct pool_arena *a, struct pool *p);
/* <size> bytes aligned for any type, or NULL when the pool is at its limit. */
void *pool_arena_alloc(struct pool_arena *a, size_t size) __attribute__((warn_unused_result));
/* Give every buffer back; the arena is empty and reusable. */
void pool_arena_release(struct pool_arena *a);

struct pool_class_stats {
	uint64_t free_bytes, in_use_bytes;
	uint64_t gets, get_on_empty, failed_gets, refills, trims;
	uint64_t peak_in_use_bytes;
};

struct pool_stats {
	uint64_t limit_bytes;
	uint64_t free_bytes;       /* ready buffers */
	uint64_t in_use_bytes;     /* class buffers out + large buffers + reservations */
	uint64_t reserved_bytes;
	uint64_t large_bytes;
	uint64_t peak_in_use_bytes;
	uint64_t waiters, waits, wait_timeouts;
	uint64_t failed_gets;      /* class gets, large gets and reservations refused */
	uint64_t get_on_empty, refills; /* sums over the classes */
	struct pool_class_stats cls[POOL_CLASS__COUNT];
};

void pool_get_stats(const struct pool *p, struct pool_stats *out);

/* The clock of pool_wait()'s <deadline_ms>: CLOCK_MONOTONIC in milliseconds. */
int64_t pool_now_ms(void);

/*
 * Debug settings from the environment, applied over <s>: PROMGUARD_POOL_FAIL_RATE (a number in
 * 0..1) sets fail_rate, PROMGUARD_POOL_POISON=1 (or 0) sets poison. pool_new() and
 * pool_configure() apply them too, so callers need this only to report a bad value: returns 0,
 * or -EINVAL with a message naming the variable in <err> (size <errlen>) and <s> unchanged.
 */
int pool_env_apply(struct pool_settings *s, char *err, size_t errlen);

/*
 * Run the trim check now, as the pool's 1 s timer does: a class whose free count stayed above
 * its high watermark for the whole interval since the last check gives buffers back down to it.
 */
void pool_trim_check(struct pool *p);

/*
 * With settings.poison: the number of free class buffers whose poison pattern was overwritten
 * (a write after pool_put). pool_get() aborts on such a buffer; this counts without aborting.
 * 0 when poisoning is off.
 */
int pool_check_poison(const struct pool *p);

#endif

/*
 * limiter_queue: the deferral queue. A query that passed its limits but found no capacity
 * (limits.max_inflight reached, or its pool reservation not to be had) waits here instead of
 * getting 429; so does a query whose store attempt failed in a way worth retrying.
 *
 *   - Tenants take turns: each tenant with waiting entries has its own FIFO, and capacity is
 *     offered round-robin between them (Mimir's per-tenant queues), so one tenant's storm cannot
 *     starve another. The queue is capped overall (queue.max_queued) and per tenant.
 *   - Capacity wakes the queue at once: limiter_queue_dispatch(.., LIMITER_QUEUE_CAPACITY, ..)
 *     offers it to the head of each tenant's FIFO in turn, whatever their backoff.
 *   - Without a capacity event, a head retries on its own, spaced by exponential backoff per key
 *     (tenant + selector fingerprint) and a global token bucket (backoff.h); every failed retry
 *     doubles its key's delay.
 *   - An entry deferred after a store failure (LIMITER_QUEUE_RETRY) is held back until its
 *     backoff delay has passed, then joins the front of its tenant's FIFO.
 *   - Every entry has a deadline; limiter_queue_pop_expired() hands back those past it.
 *   - Per-key backoff state lives in a bounded table and is forgotten on every way out:
 *     limiter_queue_leave() drops the entry and its hold.
 * No event loop here: time is passed in, and the caller arms one timer at
 * limiter_queue_next_wake(). Single-threaded. Per-tenant state exists only while the tenant has
 * entries.
 */
#ifndef PROMGUARD_LIMITER_QUEUE_H
#define PROMGUARD_LIMITER_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "limiter/backoff.h"

struct limiter_queue;
struct limiter_queue_tenant;

/* What an entry waits for. */
enum limiter_queue_wait {
	LIMITER_QUEUE_CAPACITY, /* a slot or memory: offered capacity as soon as some is freed */
	LIMITER_QUEUE_RETRY,    /* a store attempt failed: eligible only once its backoff delay passed */
};

/* How an entry left (limiter_queue_leave), counted in the stats. */
enum limiter_queue_exit {
	LIMITER_QUEUE_EXIT_DONE,      /* started, ran and completed (or failed for good) */
	LIMITER_QUEUE_EXIT_REJECTED,  /* refused: queue full, or a limit found while waiting */
	LIMITER_QUEUE_EXIT_TIMEOUT,   /* its deadline passed while waiting */
	LIMITER_QUEUE_EXIT_CANCELLED, /* the client went away, or shutdown */
	LIMITER_QUEUE_EXIT_N
};

/* Why a dispatch runs. */
enum limiter_queue_event {
	LIMITER_QUEUE_CAPACITY_FREED, /* a slot or memory was freed: every head is offered it */
	LIMITER_QUEUE_TIMER,          /* the timer at next_wake: only heads whose backoff has passed */
};

/* What the caller's try function did with an entry it was offered. */
enum limiter_queue_try {
	LIMITER_QUEUE_STARTED,     /* it runs now; it left the queue (its key hold is kept) */
	LIMITER_QUEUE_FINISHED,    /* it ended while being tried (rejected, failed): the callee has
				      already called limiter_queue_leave() and may have freed it */
	LIMITER_QUEUE_NO_CAPACITY, /* nothing can start now: the dispatch stops */
	LIMITER_QUEUE_TENANT_FULL, /* this tenant's own cap: skip to the next tenant */
};

/*
 * One waiting request; embed it in the request and zero it before first use. The fields are the
 * queue's; the caller reads only what the accessors below return.
 */
struct limiter_queue_entry {
	struct limiter_queue_entry *prev, *next;  /* in its tenant's FIFO or the delayed list */
	struct limiter_queue_tenant *tenant;      /* (ref) NULL when not queued */
	struct backoff_ref ref;                   /* the key's backoff state */
	uint64_t key;                             /* tenant + selector fingerprint */
	int64_t enqueued_ms;                      /* when it was first deferred */
	int64_t deadline_ms;                      /* when it times out */
	int64_t not_before_ms;                    /* its next retry, from the backoff */
	enum limiter_queue_wait wait;
	int delayed;                              /* in the delayed list (a RETRY not yet due) */
	int queued;                               /* in the queue (FIFO or delayed list) */
	uint32_t retries;                         /* failed retries so far */
};

struct limiter_queue_settings {
	uint64_t max_queued;             /* queue.max_queued: entries at once, all tenants */
	struct backoff_settings backoff; /* queue.base_delay, max_delay, max_tracked_keys, retry_* */
};

struct limiter_queue_stats {
	uint64_t length;                          /* entries queued now (FIFOs + delayed) */
	uint64_t delayed;                         /* of which waiting out a retry delay */
	uint64_t tenants;                         /* tenants with entries */
	uint64_t deferred;                        /* pushes accepted since start */
	uint64_t refused;                         /* pushes refused (queue or tenant full) */
	uint64_t exits[LIMITER_QUEUE_EXIT_N];     /* limiter_queue_leave() by exit */
	struct backoff_stats backoff;
};

/* New queue. NULL on ENOMEM or EINVAL (backoff settings). */
struct limiter_queue *limiter_queue_new(const struct limiter_queue_settings *s);
/* Entries still queued are a bug in the caller (asserted in debug builds). NULL is fine. */
void limiter_queue_free(struct limiter_queue *q);
/* Reload: 0, or -EINVAL / -ENOMEM with <q> unchanged. Queued entries stay (a lower cap only
 * refuses new pushes). */
int limiter_queue_configure(struct limiter_queue *q, const struct limiter_queue_settings *s);

/*
 * Defer <e> for tenant <tenant> (NUL-terminated, copied) under backoff key <key>, until
 * <deadline_ms>. Records a failure of the key (backoff_when) and sets the entry's next retry from
 * it; *<delay_ms> (may be NULL) gets that delay, the basis of a Retry-After.
 *   CAPACITY entries join the back of the tenant's FIFO. Returns -ENOSPC when max_queued entries
 *   wait already, -EDQUOT when <tenant_max_queued> of this tenant's do: the entry is not queued
 *   (its key hold is taken: leave with LIMITER_QUEUE_EXIT_REJECTED).
 *   RETRY entries come from running requests, already counted against max_inflight: they are
 *   never refused. They wait in the delayed list until their delay passed, then join the front
 *   of the tenant's FIFO (they arrived before what is behind them).
 * -EALREADY if <e> is queued; -EINVAL for a NULL or overlong (> 128 bytes) tenant; -ENOMEM.
 * Pushing the same entry again after it started (a retry) keeps its key hold, so its delays
 * keep doubling.
 */
int limiter_queue_push(struct limiter_queue *q, struct limiter_queue_entry *e, const char *tenant,
		       uint64_t tenant_max_queued, uint64_t key, enum limiter_queue_wait wait, int64_t deadline_ms,
		       int64_t now_ms, int64_t *delay_ms);

typedef enum limiter_queue_try (*limiter_queue_try_fn)(struct limiter_queue_entry *e, void *arg);

/*
 * Offer capacity: first move delayed entries that are due to the front of their FIFOs, then
 * take the tenants in turn from where the last dispatch stopped, offering each tenant's head
 * to <try>(<e>, <arg>): on CAPACITY_FREED every head, on TIMER only a head whose not_before has
 * passed. The head is out of the queue while <try> runs:
 *   STARTED / FINISHED: it stays out; the turn passes to the next tenant;
 *   TENANT_FULL: it goes back to the front of its FIFO and the tenant sits out this dispatch;
 *   NO_CAPACITY: it goes back to the front and the dispatch ends.
 * A TIMER offer that fails is a failed retry: the key's delay grows (backoff_when) and sets the
 * head's next not_before. <try> may push other entries, but must not call dispatch. Returns the
 * number started.
 */
size_t limiter_queue_dispatch(struct limiter_queue *q, enum limiter_queue_event ev, int64_t now_ms,
			      limiter_queue_try_fn try, void *arg);

/* An entry whose deadline is <= <now_ms>, taken out of the queue (its hold kept: leave it), or
 * NULL. Call in a loop. */
struct limiter_queue_entry *limiter_queue_pop_expired(struct limiter_queue *q, int64_t now_ms);

/*
 * <e> is done with the queue, by <exit>: it is taken out if queued and its key hold given back
 * (the key's state is forgotten with its last hold). Call it once on every way a request that
 * was ever pushed ends. A zeroed, never-pushed entry is fine (nothing is counted).
 */
void limiter_queue_leave(struct limiter_queue *q, struct limiter_queue_entry *e, enum limiter_queue_exit exit);

/* When the caller's timer should next fire (a deadline or a head's not_before, and a delayed
 * entry's due time), or -1 when nothing waits. */
int64_t limiter_queue_next_wake(const struct limiter_queue *q);

/* Entries queued now, in all or for one tenant. */
uint64_t limiter_queue_length(const struct limiter_queue *q);
uint64_t limiter_queue_tenant_length(const struct limiter_queue *q, const char *tenant);

/* <e>'s position-independent facts: its tenant's name (ref, NULL when not queued). */
const char *limiter_queue_entry_tenant(const struct limiter_queue_entry *e);

/* Per-tenant lengths for /api/v1/status: calls <fn> for each tenant with entries. */
void limiter_queue_foreach_tenant(const struct limiter_queue *q,
				  void (*fn)(const char *tenant, uint64_t queued, void *arg), void *arg);

void limiter_queue_get_stats(const struct limiter_queue *q, struct limiter_queue_stats *out);

/* The key's backoff hold of <e> (for reading failures in tests and logs). */
const struct backoff *limiter_queue_backoff(const struct limiter_queue *q);

#endif

/*
 * limiter_queue: the deferral queue, per-tenant FIFOs taking turns, retries spaced by backoff
 * (see queue.h).
 *
 * Entries are intrusive: an entry's prev/next link it into its tenant's FIFO or into the one
 * delayed list (RETRY entries whose delay has not passed). Tenants with entries sit in a ring;
 * the cursor names the tenant whose turn comes next and persists between dispatches, so a
 * dispatch that ends early resumes there. A tenant is malloc'ed at its first entry and freed with
 * its last. Queues are short (queue.max_queued, 256 by default): next_wake and pop_expired walk
 * the entries, and dispatch visits each tenant at most once per offer it makes.
 */
#include "limiter/queue.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#define QUEUE_TENANT_MAX 128    /* longest tenant name (as the proxy's tenant header accepts) */
#define QUEUE_TENANT_BUCKETS 64 /* tenant lookup by name: a power of two */

struct limiter_queue_tenant {
	struct limiter_queue_entry *head;   /* FIFO: offered first */
	struct limiter_queue_entry *tail;   /* FIFO: where CAPACITY entries join */
	struct limiter_queue_tenant *rprev; /* the ring of tenants, in turn order */
	struct limiter_queue_tenant *rnext;
	struct limiter_queue_tenant *hnext; /* lookup chain */
	uint64_t hash;                      /* XXH3 of the name */
	uint64_t entries;                   /* entries queued: FIFO + delayed list */
	uint64_t sat_out;                   /* the dispatch serial it sits out (TENANT_FULL) */
	int pinned;                         /* its head is being tried: not freed even when empty */
	char name[QUEUE_TENANT_MAX + 1];    /* NUL-terminated copy */
};

struct limiter_queue {
	struct backoff *b;                  /* per-key backoff state and the retry bucket */
	uint64_t max_queued;                /* queue.max_queued (CAPACITY pushes only) */
	struct limiter_queue_tenant *buckets[QUEUE_TENANT_BUCKETS]; /* tenants by name */
	struct limiter_queue_tenant *cursor; /* whose turn is next; NULL when no tenant */
	uint64_t ntenants;                  /* tenants in the ring */
	struct limiter_queue_entry *dhead;  /* delayed list, oldest push first */
	struct limiter_queue_entry *dtail;
	uint64_t length;                    /* entries queued (FIFOs + delayed) */
	uint64_t ndelayed;                  /* of which in the delayed list */
	int64_t expiry_floor;               /* no queued entry's deadline is below it */
	uint64_t serial;                    /* dispatches so far (TENANT_FULL sits out one) */
	int dispatching;                    /* in limiter_queue_dispatch(): no nested one */
	uint64_t deferred, refused;         /* see struct limiter_queue_stats */
	uint64_t exits[LIMITER_QUEUE_EXIT_N];
};

/* --- tenants --------------------------------------------------------------------------------- */

static struct limiter_queue_tenant **tenant_bucket(struct limiter_queue *q, uint64_t hash)
{
	return &q->buckets[hash & (QUEUE_TENANT_BUCKETS - 1)];
}

static struct limiter_queue_tenant *tenant_find(const struct limiter_queue *q, const char *name, uint64_t hash)
{
	struct limiter_queue_tenant *t = q->buckets[hash & (QUEUE_TENANT_BUCKETS - 1)];

	while (t && (t->hash != hash || strcmp(t->name, name) != 0))
		t = t->hnext;
	return t;
}

/* A new tenant, last in turn order (just before the cursor). NULL on ENOMEM. */
static struct limiter_queue_tenant *tenant_new(struct limiter_queue *q, const char *name, size_t len, uint64_t hash)
{
	struct limiter_queue_tenant *t = calloc(1, sizeof(*t));
	struct limiter_queue_tenant **b;

	if (!t)
		return NULL;
	memcpy(t->name, name, len + 1);
	t->hash = hash;
	b = tenant_bucket(q, hash);
	t->hnext = *b;
	*b = t;
	if (q->cursor) {
		t->rnext = q->cursor;
		t->rprev = q->cursor->rprev;
		t->rprev->rnext = t;
		q->cursor->rprev = t;
	} else {
		t->rnext = t->rprev = t;
		q->cursor = t;
	}
	q->ntenants++;
	return t;
}

/* Free <t> if it has no entry left and is not being tried. */
static void tenant_maybe_free(struct limiter_queue *q, struct limiter_queue_tenant *t)
{
	struct limiter_queue_tenant **pp;

	if (t->entries > 0 || t->pinned)
		return;
	if (q->cursor == t)
		q->cursor = t->rnext == t ? NULL : t->rnext;
	t->rprev->rnext = t->rnext;
	t->rnext->rprev = t->rprev;
	for (pp = tenant_bucket(q, t->hash); *pp != t; pp = &(*pp)->hnext)
		;
	*pp = t->hnext;
	q->ntenants--;
	free(t);
}

/* --- lists ----------------------------------------------------------------------------------- */

static void fifo_push_back(struct limiter_queue_tenant *t, struct limiter_queue_entry *e)
{
	e->next = NULL;
	e->prev = t->tail;
	if (t->tail)
		t->tail->next = e;
	else
		t->head = e;
	t->tail = e;
}

static void fifo_push_front(struct limiter_queue_tenant *t, struct limiter_queue_entry *e)
{
	e->prev = NULL;
	e->next = t->head;
	if (t->head)
		t->head->prev = e;
	else
		t->tail = e;
	t->head = e;
}

static void fifo_unlink(struct limiter_queue_tenant *t, struct limiter_queue_entry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		t->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		t->tail = e->prev;
	e->prev = e->next = NULL;
}

static void delayed_append(struct limiter_queue *q, struct limiter_queue_entry *e)
{
	e->next = NULL;
	e->prev = q->dtail;
	if (q->dtail)
		q->dtail->next = e;
	else
		q->dhead = e;
	q->dtail = e;
	e->delayed = 1;
	q->ndelayed++;
}

static void delayed_unlink(struct limiter_queue *q, struct limiter_queue_entry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		q->dhead = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		q->dtail = e->prev;
	e->prev = e->next = NULL;
	e->delayed = 0;
	q->ndelayed--;
}

/* Link <e> into <t> (or the delayed list) as queued; <front>: at the head of the FIFO. */
static void entry_link(struct limiter_queue *q, struct limiter_queue_tenant *t, struct limiter_queue_entry *e,
		       int delayed, int front)
{
	if (delayed)
		delayed_append(q, e);
	else if (front)
		fifo_push_front(t, e);
	else
		fifo_push_back(t, e);
	e->tenant = t;
	e->queued = 1;
	t->entries++;
	q->length++;
	if (e->deadline_ms < q->expiry_floor)
		q->expiry_floor = e->deadline_ms;
}

/* Take <e> out of the queue, keeping its tenant (the caller frees it if need be). */
static struct limiter_queue_tenant *entry_unlink(struct limiter_queue *q, struct limiter_queue_entry *e)
{
	struct limiter_queue_tenant *t = e->tenant;

	if (e->delayed)
		delayed_unlink(q, e);
	else
		fifo_unlink(t, e);
	e->tenant = NULL;
	e->queued = 0;
	t->entries--;
	q->length--;
	return t;
}

/* --- time ------------------------------------------------------------------------------------ */

static int64_t add_ms(int64_t now_ms, int64_t delay_ms)
{
	return delay_ms > INT64_MAX - now_ms ? INT64_MAX : now_ms + delay_ms;
}

/* A failed retry of <e> at <now_ms>: its key's delay grows and sets its next one. */
static void retry_failed(struct limiter_queue *q, struct limiter_queue_entry *e, int64_t now_ms)
{
	e->not_before_ms = add_ms(now_ms, backoff_when(q->b, &e->ref, e->key, now_ms));
	e->retries++;
}

/*
 * Delayed entries whose delay passed go to the front of their FIFOs. Walked newest first, so
 * that of several due together in one tenant the one deferred first ends up in front.
 */
static void promote_due(struct limiter_queue *q, int64_t now_ms)
{
	struct limiter_queue_entry *e = q->dtail, *prev;

	for (; e; e = prev) {
		prev = e->prev;
		if (e->not_before_ms > now_ms)
			continue;
		delayed_unlink(q, e);
		fifo_push_front(e->tenant, e);
	}
}

static void wake_min(int64_t *w, int64_t t)
{
	if (*w < 0 || t < *w)
		*w = t;
}

/* --- API ------------------------------------------------------------------------------------- */

struct limiter_queue *limiter_queue_new(const struct limiter_queue_settings *s)
{
	struct limiter_queue *q = calloc(1, sizeof(*q));

	if (!q)
		return NULL;
	q->b = backoff_new(&s->backoff);
	if (!q->b) {
		free(q);
		return NULL;
	}
	q->max_queued = s->max_queued;
	q->expiry_floor = INT64_MAX;
	return q;
}

void limiter_queue_free(struct limiter_queue *q)
{
	if (!q)
		return;
	assert(q->length == 0 && "limiter_queue_free with entries queued");
	/* Release builds: drop what a buggy caller left; its entries keep dangling tenant refs. */
	while (q->cursor) {
		struct limiter_queue_tenant *t = q->cursor;

		t->entries = 0;
		t->pinned = 0;
		tenant_maybe_free(q, t);
	}
	backoff_free(q->b);
	free(q);
}

int limiter_queue_configure(struct limiter_queue *q, const struct limiter_queue_settings *s)
{
	int rc = backoff_configure(q->b, &s->backoff);

	if (rc < 0)
		return rc;
	q->max_queued = s->max_queued;
	return 0;
}

int limiter_queue_push(struct limiter_queue *q, struct limiter_queue_entry *e, const char *tenant,
		       uint64_t tenant_max_queued, uint64_t key, enum limiter_queue_wait wait, int64_t deadline_ms,
		       int64_t now_ms, int64_t *delay_ms)
{
	struct limiter_queue_tenant *t;
	size_t len;
	uint64_t hash;
	int64_t delay;
	int first;

	if (e->queued)
		return -EALREADY;
	/* The proxy accepts tenant names up to 128 bytes: anything longer is a caller bug. */
	len = tenant ? strlen(tenant) : QUEUE_TENANT_MAX + 1;
	if (len > QUEUE_TENANT_MAX)
		return -EINVAL;
	/* A request holds its key from its first push to limiter_queue_leave(), which marks it pushed. */
	first = e->ref.slot == 0;
	delay = backoff_when(q->b, &e->ref, key, now_ms);
	if (delay_ms)
		*delay_ms = delay;
	e->key = key;
	e->wait = wait;
	e->deadline_ms = deadline_ms;
	e->not_before_ms = add_ms(now_ms, delay);
	if (first) {
		e->enqueued_ms = now_ms;
		e->retries = 0;
	}
	hash = XXH3_64bits(tenant, len);
	t = tenant_find(q, tenant, hash);
	if (wait == LIMITER_QUEUE_CAPACITY) {
		if (q->length >= q->max_queued) {
			q->refused++;
			return -ENOSPC;
		}
		if ((t ? t->entries : 0) >= tenant_max_queued) {
			q->refused++;
			return -EDQUOT;
		}
	}
	if (!t) {
		t = tenant_new(q, tenant, len, hash);
		if (!t)
			return -ENOMEM;
	}
	if (wait == LIMITER_QUEUE_CAPACITY)
		entry_link(q, t, e, 0, 0);
	else /* a retry that is due at once goes straight to the front */
		entry_link(q, t, e, e->not_before_ms > now_ms, 1);
	q->deferred++;
	return 0;
}

size_t limiter_queue_dispatch(struct limiter_queue *q, enum limiter_queue_event ev, int64_t now_ms,
			      limiter_queue_try_fn try, void *arg)
{
	struct limiter_queue_tenant *t;
	uint64_t serial = ++q->serial, idle = 0;
	size_t started = 0;

	assert(!q->dispatching && "limiter_queue_dispatch called from its try function");
	q->dispatching = 1;
	promote_due(q, now_ms);
	/*
	 * One offer per turn. <idle> counts tenants passed over in a row (empty FIFO, sitting out,
	 * or on a timer a head not due): once every tenant was passed over, nothing is left to offer.
	 */
	t = q->cursor;
	while (t && idle < q->ntenants) {
		struct limiter_queue_entry *e = t->head;
		enum limiter_queue_try r;

		if (!e || t->sat_out == serial || (ev == LIMITER_QUEUE_TIMER && e->not_before_ms > now_ms)) {
			idle++;
			t = t->rnext;
			continue;
		}
		idle = 0;
		/* Out of the queue while tried; pinned, so <t> and its place in the ring survive <try>. */
		entry_unlink(q, e);
		t->pinned = 1;
		r = try(e, arg);
		t->pinned = 0;
		if (r == LIMITER_QUEUE_STARTED || r == LIMITER_QUEUE_FINISHED) {
			/* <e> may be freed already: not a byte of it is read from here on. */
			if (r == LIMITER_QUEUE_STARTED)
				started++;
			q->cursor = t->rnext;
			tenant_maybe_free(q, t);
			t = q->cursor;
			continue;
		}
		/* Not started: back in front, where it was. */
		assert(!e->queued && "try pushed the entry it was offered");
		entry_link(q, t, e, 0, 1);
		if (ev == LIMITER_QUEUE_TIMER)
			retry_failed(q, e, now_ms);
		if (r == LIMITER_QUEUE_NO_CAPACITY) {
			q->cursor = t; /* its turn again next time */
			break;
		}
		t->sat_out = serial; /* LIMITER_QUEUE_TENANT_FULL */
		q->cursor = t->rnext;
		t = q->cursor;
	}
	q->dispatching = 0;
	return started;
}

struct limiter_queue_entry *limiter_queue_pop_expired(struct limiter_queue *q, int64_t now_ms)
{
	struct limiter_queue_tenant *t;
	struct limiter_queue_entry *e, *found = NULL;
	int64_t floor = INT64_MAX;
	uint64_t n;

	/* Nothing can have expired before the floor: calls between deadlines cost nothing. */
	if (q->length == 0 || now_ms < q->expiry_floor)
		return NULL;
	for (e = q->dhead; e && !found; e = e->next) {
		if (e->deadline_ms <= now_ms)
			found = e;
		else if (e->deadline_ms < floor)
			floor = e->deadline_ms;
	}
	for (t = q->cursor, n = 0; t && n < q->ntenants && !found; t = t->rnext, n++)
		for (e = t->head; e && !found; e = e->next) {
			if (e->deadline_ms <= now_ms)
				found = e;
			else if (e->deadline_ms < floor)
				floor = e->deadline_ms;
		}
	if (!found) {
		q->expiry_floor = floor; /* a full walk: the exact minimum */
		return NULL;
	}
	tenant_maybe_free(q, entry_unlink(q, found));
	return found;
}

void limiter_queue_leave(struct limiter_queue *q, struct limiter_queue_entry *e, enum limiter_queue_exit exit)
{
	/* Never pushed (or already left): it holds no key. */
	if (!e->queued && e->ref.slot == 0)
		return;
	if (e->queued)
		tenant_maybe_free(q, entry_unlink(q, e));
	backoff_forget(q->b, &e->ref);
	if ((unsigned)exit < LIMITER_QUEUE_EXIT_N)
		q->exits[exit]++;
}

int64_t limiter_queue_next_wake(const struct limiter_queue *q)
{
	const struct limiter_queue_tenant *t;
	const struct limiter_queue_entry *e;
	int64_t w = -1;
	uint64_t n;

	for (e = q->dhead; e; e = e->next) {
		wake_min(&w, e->deadline_ms);
		wake_min(&w, e->not_before_ms);
	}
	for (t = q->cursor, n = 0; t && n < q->ntenants; t = t->rnext, n++) {
		/* Only heads retry on the timer; behind them only deadlines matter. */
		if (t->head)
			wake_min(&w, t->head->not_before_ms);
		for (e = t->head; e; e = e->next)
			wake_min(&w, e->deadline_ms);
	}
	return w;
}

uint64_t limiter_queue_length(const struct limiter_queue *q)
{
	return q->length;
}

uint64_t limiter_queue_tenant_length(const struct limiter_queue *q, const char *tenant)
{
	const struct limiter_queue_tenant *t;

	if (!tenant || strlen(tenant) > QUEUE_TENANT_MAX)
		return 0;
	t = tenant_find(q, tenant, XXH3_64bits(tenant, strlen(tenant)));
	return t ? t->entries : 0;
}

const char *limiter_queue_entry_tenant(const struct limiter_queue_entry *e)
{
	return e->tenant ? e->tenant->name : NULL;
}

void limiter_queue_foreach_tenant(const struct limiter_queue *q,
				  void (*fn)(const char *tenant, uint64_t queued, void *arg), void *arg)
{
	const struct limiter_queue_tenant *t = q->cursor;

	for (uint64_t n = 0; t && n < q->ntenants; t = t->rnext, n++)
		if (t->entries > 0) /* a tenant whose last entry is being tried is not listed */
			fn(t->name, t->entries, arg);
}

void limiter_queue_get_stats(const struct limiter_queue *q, struct limiter_queue_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->length = q->length;
	out->delayed = q->ndelayed;
	out->tenants = q->ntenants;
	out->deferred = q->deferred;
	out->refused = q->refused;
	memcpy(out->exits, q->exits, sizeof(out->exits));
	backoff_get_stats(q->b, &out->backoff);
}

const struct backoff *limiter_queue_backoff(const struct limiter_queue *q)
{
	return q->b;
}

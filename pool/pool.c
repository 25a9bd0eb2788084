/* pool: size-class free lists, large buffers and reservations under one hard limit (see pool.h). */
#include "pool/pool.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include <event2/event.h>

/* --- tuning ---------------------------------------------------------------------------------- */

#define POOL_TRIM_INTERVAL_MS 1000   /* a class above its high watermark is checked this often */
#define POOL_MIN_LIMIT (64u * 1024)  /* the limit must hold at least one buffer of each class */
#define POOL_POISON_BYTE 0x5a        /* freed class buffers are filled with it (settings.poison) */
#define POOL_RNG_SEED 0x9e3779b97f4a7c15ULL /* failure injection is deterministic run to run */
#define POOL_MAX_DELAY_MS (24LL * 3600 * 1000) /* farther deadlines are re-armed when they fire */
#define POOL_ENV_FAIL_RATE "PROMGUARD_POOL_FAIL_RATE"
#define POOL_ENV_POISON "PROMGUARD_POOL_POISON"

/*
 * The classes, in one table. <share> of the limit sets a class's target count of buffers,
 * bounded by [min, max]; the watermarks are fractions of that target.
 */
struct class_def {
	const char *name; /* the class label on /metrics */
	size_t size;      /* payload bytes of one buffer */
	double share;     /* fraction of memory_limit the target count stands for */
	uint64_t min, max; /* bounds of the target count */
};

static const struct class_def class_defs[POOL_CLASS__COUNT] = {
	/*
	 * Caps from what the proxy holds: small buffers back request arenas (a few per request in
	 * flight), segments the relay of the largest pieces. A ready buffer costs a resident page
	 * (its header), so the ready set is kept to what traffic uses, not to a share of a large limit.
	 */
	[POOL_CLASS_SMALL] = { "small", 4096, 0.02, 8, 1024 },
	[POOL_CLASS_SEGMENT] = { "segment", 65536, 0.20, 2, 256 },
};

/* --- buffers --------------------------------------------------------------------------------- */

/* Header magics: a put checks them, so a double put or a stray pointer aborts instead of corrupting. */
#define MAGIC_FREE 0x46524545u  /* "FREE": on a free list */
#define MAGIC_USED 0x55534544u  /* "USED": handed out by pool_get */
#define MAGIC_LARGE 0x4c524745u /* "LRGE": handed out by pool_get_large */
#define HDR_POISONED 1u         /* flags: payload holds the poison pattern */

/*
 * In front of every buffer. 16 bytes on 32- and 64-bit targets, so the payload keeps malloc's
 * 16-byte alignment. Not counted against the limit (0.4% of a small buffer).
 */
struct buf_hdr {
	union {
		struct buf_hdr *next; /* free list link (class buffer on a free list) */
		uint64_t size;        /* payload bytes (large buffer) */
	} u;
	uint16_t cls;   /* enum pool_class; unused for large buffers */
	uint16_t flags; /* HDR_POISONED */
	uint32_t magic; /* MAGIC_* */
};

_Static_assert(sizeof(struct buf_hdr) == 16, "buffer header keeps the payload 16-byte aligned");

/* --- state ----------------------------------------------------------------------------------- */

/* One size class: its free list and counters. */
struct pool_cls {
	struct buf_hdr *free;  /* LIFO free list (the most recently used buffer is cache-hot) */
	uint64_t nfree;        /* buffers on <free> */
	uint64_t nout;         /* buffers handed out */
	uint64_t target;       /* target count derived from the limit */
	uint64_t low, high;    /* watermarks in buffers: refill at <= low, up to high; trim above high */
	uint64_t min_free;     /* smallest nfree since the last trim check */
	int refill_wanted;     /* fell to <low>: the refill event tops it up */
	uint64_t gets;         /* pool_get calls */
	uint64_t get_on_empty; /* gets within the limit that found the free list empty (allocated) */
	uint64_t failed_gets;  /* gets refused: at the limit, injected failure, or malloc failure */
	uint64_t refills;      /* refill passes that added buffers to this class */
	uint64_t trims;        /* trim checks that gave buffers of this class back */
	uint64_t peak_out;     /* most buffers out at once */
};

enum waiter_state {
	W_WAITING, /* queued on waiting[prio] */
	W_WOKEN,   /* on the woken list: its bytes are promised, its cb runs on the next pass */
};

struct pool_waiter {
	TAILQ_ENTRY(pool_waiter) link; /* in waiting[prio] or woken */
	struct pool *pool;             /* (ref) */
	uint64_t bytes;                /* what the requester needs */
	enum pool_priority prio;
	enum waiter_state state;
	struct event *timer;           /* the deadline */
	int64_t deadline_ms;           /* absolute, pool_now_ms() clock */
	void (*cb)(void *arg);
	void (*timeout)(void *arg);
	void *arg;                     /* (ref) handed to cb or timeout */
};

TAILQ_HEAD(waiter_list, pool_waiter);

#define N_PRIO 2 /* POOL_PRIO_RELAY, POOL_PRIO_INTAKE */

struct pool {
	struct event_base *base;    /* (ref) */
	struct pool_settings set;   /* in force, debug environment applied */
	struct pool_cls cls[POOL_CLASS__COUNT];

	/* Bytes. Total memory held = in_use + free_bytes; only a lowered limit lets it exceed <limit>. */
	uint64_t in_use;            /* class buffers out + large + reserved */
	uint64_t free_bytes;        /* class buffers on free lists */
	uint64_t large_bytes;       /* large buffers out */
	uint64_t reserved;          /* reservations */
	uint64_t promised;          /* bytes of woken waiters whose cb has not run: others may not take them */
	uint64_t peak_in_use;

	uint64_t large_failed, reserve_failed; /* refusals outside the classes (for failed_gets) */
	uint64_t waits, wait_timeouts, nwaiters;

	struct waiter_list waiting[N_PRIO]; /* FIFO per priority */
	struct waiter_list woken;           /* chosen by wake_scan(), called back by wake_cb() */

	struct event *refill_ev;    /* deferred refill (event_active) */
	struct event *wake_ev;      /* deferred waiter callbacks (event_active) */
	struct event *trim_ev;      /* trim timer, armed only while a class is above its high mark */
	int refill_pending, wake_pending, trim_armed;

	uint64_t rng;               /* xorshift64* state for fail_rate */
	int env_poison;             /* PROMGUARD_POOL_POISON: -1 unset, else 0/1 */
	double env_fail_rate;       /* PROMGUARD_POOL_FAIL_RATE: < 0 unset */
};

/* --- helpers --------------------------------------------------------------------------------- */

size_t pool_class_size(enum pool_class c)
{
	return (unsigned)c < POOL_CLASS__COUNT ? class_defs[c].size : 0;
}

const char *pool_class_name(enum pool_class c)
{
	return (unsigned)c < POOL_CLASS__COUNT ? class_defs[c].name : "unknown";
}

uint64_t pool_class_target(const struct pool *p, enum pool_class c)
{
	return (unsigned)c < POOL_CLASS__COUNT ? p->cls[c].target : 0;
}

int64_t pool_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Does a new claim of <n> bytes fit under the limit, besides what is in use and promised? */
static int fits(const struct pool *p, uint64_t n)
{
	uint64_t used = p->in_use + p->promised;

	return used <= p->set.memory_limit && n <= p->set.memory_limit - used;
}

/* Debug failure injection: true for a fraction settings.fail_rate of calls. */
static int inject_failure(struct pool *p)
{
	uint64_t x = p->rng;

	if (p->set.fail_rate <= 0)
		return 0;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	p->rng = x;
	/* The top 53 bits as a double in [0, 1): fail_rate 1.0 fails every call. */
	return (double)((x * 0x2545f4914f6cdd1dULL) >> 11) * 0x1.0p-53 < p->set.fail_rate;
}

/* Track the peak of in_use after it grew. */
static void note_in_use(struct pool *p)
{
	if (p->in_use > p->peak_in_use)
		p->peak_in_use = p->in_use;
}

/* ceil(<frac> x <n>) in buffers: M3 rounds its watermarks up the same way. */
static uint64_t frac_count(double frac, uint64_t n)
{
	double v = frac * (double)n;
	uint64_t r = (uint64_t)v;

	return (double)r < v ? r + 1 : r;
}

/* Derive each class's target and watermarks from the settings in force. */
static void set_targets(struct pool *p)
{
	for (int c = 0; c < POOL_CLASS__COUNT; c++) {
		const struct class_def *d = &class_defs[c];
		struct pool_cls *k = &p->cls[c];
		uint64_t t = (uint64_t)((double)p->set.memory_limit * d->share) / d->size;

		if (t < d->min)
			t = d->min;
		if (t > d->max)
			t = d->max;
		if (t > p->set.memory_limit / d->size)
			t = p->set.memory_limit / d->size;
		k->target = t;
		k->low = frac_count(p->set.low_watermark, t);
		k->high = frac_count(p->set.high_watermark, t);
	}
}

/* Offset of the first byte of <buf> (<n> bytes) that is not the poison byte, or <n>. */
static size_t poison_mismatch(const unsigned char *buf, size_t n)
{
	const uint64_t pat = 0x0101010101010101ULL * POOL_POISON_BYTE;
	size_t i = 0;

	/* Word-wise first (payloads are 16-byte aligned and sizes are multiples of 8). */
	for (; i + 8 <= n; i += 8) {
		uint64_t w;

		memcpy(&w, buf + i, sizeof(w));
		if (w != pat)
			break;
	}
	for (; i < n; i++)
		if (buf[i] != POOL_POISON_BYTE)
			return i;
	return n;
}

/* A new class buffer from malloc, not on any list. NULL on ENOMEM. */
static struct buf_hdr *buf_alloc(enum pool_class c)
{
	struct buf_hdr *h = malloc(sizeof(*h) + class_defs[c].size);

	if (h) {
		h->cls = (uint16_t)c;
		h->flags = 0;
		h->magic = MAGIC_USED;
	}
	return h;
}

/* Push <h> on its class's free list. The caller has settled in_use. */
static void free_push(struct pool *p, struct buf_hdr *h)
{
	struct pool_cls *k = &p->cls[h->cls];

	h->magic = MAGIC_FREE;
	h->u.next = k->free;
	k->free = h;
	k->nfree++;
	p->free_bytes += class_defs[h->cls].size;
}

/* Pop the head of class <c>'s free list (which must not be empty). */
static struct buf_hdr *free_pop(struct pool *p, enum pool_class c)
{
	struct pool_cls *k = &p->cls[c];
	struct buf_hdr *h = k->free;

	k->free = h->u.next;
	k->nfree--;
	if (k->nfree < k->min_free)
		k->min_free = k->nfree;
	p->free_bytes -= class_defs[c].size;
	return h;
}

/* Give up to <n> free buffers of class <c> back to malloc. */
static void free_release(struct pool *p, enum pool_class c, uint64_t n)
{
	while (n-- > 0 && p->cls[c].free)
		free(free_pop(p, c));
}

/*
 * Give free buffers back until <n> more bytes fit in the memory actually held (in_use + free),
 * largest class first. Callers have checked fits(<n>), so releasing every free buffer is
 * enough; returns -ENOMEM only if that invariant were broken.
 */
static int make_room(struct pool *p, uint64_t n)
{
	for (int c = POOL_CLASS__COUNT - 1; c >= 0; c--)
		while (p->in_use + p->free_bytes + n > p->set.memory_limit && p->cls[c].free)
			free(free_pop(p, (enum pool_class)c));
	return p->in_use + p->free_bytes + n <= p->set.memory_limit ? 0 : -ENOMEM;
}

/*
 * Ask the loop for a refill pass. The flag keeps a burst of gets below the low watermark from
 * calling event_active once per get; refill_cb clears it when it runs.
 */
static void schedule_refill(struct pool *p)
{
	if (!p->refill_pending) {
		p->refill_pending = 1;
		event_active(p->refill_ev, 0, 0);
	}
}

/* Ask the loop to call back the woken waiters (never from inside the pool call that woke them). */
static void schedule_wake(struct pool *p)
{
	if (!p->wake_pending) {
		p->wake_pending = 1;
		event_active(p->wake_ev, 0, 0);
	}
}

/* Arm the trim timer for a class that just went above its high watermark. */
static void arm_trim(struct pool *p)
{
	struct timeval tv = { POOL_TRIM_INTERVAL_MS / 1000, (POOL_TRIM_INTERVAL_MS % 1000) * 1000 };

	if (p->trim_armed)
		return;
	/* The interval starts now: what is above high from here on has to stay a whole interval. */
	for (int c = 0; c < POOL_CLASS__COUNT; c++)
		p->cls[c].min_free = p->cls[c].nfree;
	p->trim_armed = 1;
	evtimer_add(p->trim_ev, &tv);
}

/* --- waiters --------------------------------------------------------------------------------- */

/*
 * Move waiters whose bytes now fit to the woken list, in order of priority then arrival, and
 * hold their bytes (promised) until their callbacks run. Stops at the first waiter that does
 * not fit so that it is not overtaken; a waiter for more than the whole limit is skipped.
 */
static void wake_scan(struct pool *p)
{
	for (int prio = 0; prio < N_PRIO; prio++) {
		struct pool_waiter *w, *next;

		for (w = TAILQ_FIRST(&p->waiting[prio]); w; w = next) {
			next = TAILQ_NEXT(w, link);
			if (w->bytes > p->set.memory_limit)
				continue;
			if (!fits(p, w->bytes))
				return;
			TAILQ_REMOVE(&p->waiting[prio], w, link);
			TAILQ_INSERT_TAIL(&p->woken, w, link);
			w->state = W_WOKEN;
			p->promised += w->bytes;
			schedule_wake(p);
		}
	}
}

/* Take <w> off its list, drop its promise and free it. Returns 1 if it held a promise. */
static int waiter_destroy(struct pool_waiter *w)
{
	struct pool *p = w->pool;
	int was_woken = w->state == W_WOKEN;

	if (was_woken) {
		TAILQ_REMOVE(&p->woken, w, link);
		p->promised -= w->bytes;
	} else {
		TAILQ_REMOVE(&p->waiting[w->prio], w, link);
	}
	p->nwaiters--;
	event_free(w->timer);
	free(w);
	return was_woken;
}

/* Arm <w>'s timer for its deadline (capped at POOL_MAX_DELAY_MS; waiter_timer re-arms). */
static void waiter_arm(struct pool_waiter *w)
{
	int64_t delay = w->deadline_ms - pool_now_ms();
	struct timeval tv;

	if (delay < 0)
		delay = 0;
	if (delay > POOL_MAX_DELAY_MS)
		delay = POOL_MAX_DELAY_MS;
	tv.tv_sec = (time_t)(delay / 1000);
	tv.tv_usec = (suseconds_t)(delay % 1000 * 1000);
	evtimer_add(w->timer, &tv);
}

/* The deadline of a waiter: it leaves the queue and its timeout callback runs. */
static void waiter_timer(evutil_socket_t fd, short what, void *arg)
{
	struct pool_waiter *w = arg;
	struct pool *p = w->pool;
	void (*timeout)(void *) = w->timeout;
	void *cb_arg = w->arg;

	(void)fd;
	(void)what;
	if (w->deadline_ms > pool_now_ms()) {
		waiter_arm(w); /* a deadline beyond the longest single timer */
		return;
	}
	p->wait_timeouts++;
	/* A woken waiter that timed out before its cb ran gives its promise to the next ones. */
	if (waiter_destroy(w))
		wake_scan(p);
	timeout(cb_arg);
}

/* Deferred wakeups: call back every woken waiter, each after it has left the pool. */
static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pool *p = arg;
	struct pool_waiter *w;

	(void)fd;
	(void)what;
	p->wake_pending = 0;
	while ((w = TAILQ_FIRST(&p->woken)) != NULL) {
		void (*cb)(void *) = w->cb;
		void *cb_arg = w->arg;

		/* The promise ends here, so the callback's own get can use the bytes. */
		waiter_destroy(w);
		cb(cb_arg);
	}
	/* A callback may have taken less than it was promised (or nothing): offer the rest. */
	wake_scan(p);
}

/*
 * Queue a waiter (see pool.h). Also NULL with errno EINVAL for a bad <prio> or a missing
 * callback. The waiter holds no memory until it is woken; its timer owns nothing else.
 */
struct pool_waiter *pool_wait(struct pool *p, uint64_t bytes, enum pool_priority prio, int64_t deadline_ms,
			      void (*cb)(void *arg), void (*timeout)(void *arg), void *arg)
{
	struct pool_waiter *w;

	if ((unsigned)prio >= N_PRIO || !cb || !timeout) {
		errno = EINVAL;
		return NULL;
	}
	w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	w->timer = evtimer_new(p->base, waiter_timer, w);
	if (!w->timer) {
		free(w);
		errno = ENOMEM;
		return NULL;
	}
	w->pool = p;
	w->bytes = bytes;
	w->prio = prio;
	w->state = W_WAITING;
	w->deadline_ms = deadline_ms;
	w->cb = cb;
	w->timeout = timeout;
	w->arg = arg;
	TAILQ_INSERT_TAIL(&p->waiting[prio], w, link);
	p->nwaiters++;
	p->waits++;
	waiter_arm(w);
	/* Memory may already be free (an injected failure, or a promise since dropped). */
	wake_scan(p);
	return w;
}

/* Drop <w> (NULL is fine) without calling either callback; a woken one's bytes go to the next. */
void pool_wait_cancel(struct pool_waiter *w)
{
	struct pool *p;

	if (!w)
		return;
	p = w->pool;
	if (waiter_destroy(w))
		wake_scan(p);
}

/* --- refill and trim ------------------------------------------------------------------------- */

/*
 * The refill event: top up every class that fell to its low watermark to its high watermark,
 * within the limit minus promised bytes. Runs on the loop, never inside a get.
 */
static void refill_if_low(struct pool *p);

static void refill_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pool *p = arg;

	(void)fd;
	(void)what;
	p->refill_pending = 0;
	for (int c = 0; c < POOL_CLASS__COUNT; c++) {
		struct pool_cls *k = &p->cls[c];
		uint64_t added = 0;

		if (!k->refill_wanted)
			continue;
		k->refill_wanted = 0;
		while (k->nfree < k->high && fits(p, p->free_bytes + class_defs[c].size)) {
			struct buf_hdr *h = buf_alloc((enum pool_class)c);

			if (!h)
				break;
			free_push(p, h);
			added++;
		}
		if (added)
			k->refills++;
	}
}

void pool_trim_check(struct pool *p)
{
	int above = 0;

	for (int c = 0; c < POOL_CLASS__COUNT; c++) {
		struct pool_cls *k = &p->cls[c];

		/* Above high for the whole interval: none of the excess was needed. */
		if (k->nfree > k->high && k->min_free > k->high) {
			free_release(p, (enum pool_class)c, k->nfree - k->high);
			k->trims++;
		}
		k->min_free = k->nfree;
		above |= k->nfree > k->high;
	}
	p->trim_armed = 0;
	if (above)
		arm_trim(p);
	else
		evtimer_del(p->trim_ev);
}

/* The trim timer (one-shot, re-armed by pool_trim_check while a class stays above high). */
static void trim_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	pool_trim_check(arg);
}

/* --- class buffers --------------------------------------------------------------------------- */

/*
 * The hot path (see pool.h): a limit check, a list pop and counters. Memory never grows here
 * beyond the one buffer an empty list needs; watermark work is left to refill_cb.
 */
void *pool_get(struct pool *p, enum pool_class c)
{
	struct pool_cls *k;
	struct buf_hdr *h;
	size_t size;

	if ((unsigned)c >= POOL_CLASS__COUNT)
		return NULL;
	k = &p->cls[c];
	size = class_defs[c].size;
	k->gets++;
	if (inject_failure(p) || !fits(p, size))
		goto fail; /* refused: counted in failed_gets only, never in get_on_empty */
	if (k->free) {
		h = free_pop(p, c);
		if (h->flags & HDR_POISONED) {
			size_t off = poison_mismatch((unsigned char *)(h + 1), size);

			if (off != size) {
				fprintf(stderr, "pool: use after put: %s buffer %p was written at offset %zu "
					"(0x%02x, expected 0x%02x) while free\n", class_defs[c].name,
					(void *)(h + 1), off, ((unsigned char *)(h + 1))[off], POOL_POISON_BYTE);
				abort();
			}
			h->flags = 0;
		}
	} else {
		/* Empty: one buffer within the limit now; the refill event restores the watermark. */
		k->get_on_empty++;
		if (make_room(p, size) != 0 || (h = buf_alloc(c)) == NULL)
			goto fail;
	}
	h->magic = MAGIC_USED;
	k->nout++;
	if (k->nout > k->peak_out)
		k->peak_out = k->nout;
	p->in_use += size;
	note_in_use(p);
	if (k->nfree <= k->low) {
		k->refill_wanted = 1;
		schedule_refill(p);
	}
	return h + 1;
fail:
	k->failed_gets++;
	return NULL;
}

/*
 * Back on the free list (poisoned first when asked), or to malloc while the pool is over a
 * lowered limit. Then waiters that now fit are woken, as HAProxy's offer_buffers does.
 */
void pool_put(struct pool *p, void *buf)
{
	struct buf_hdr *h;
	struct pool_cls *k;
	size_t size;

	if (!buf)
		return;
	h = (struct buf_hdr *)buf - 1;
	if (h->magic != MAGIC_USED || h->cls >= POOL_CLASS__COUNT) {
		fprintf(stderr, "pool: pool_put of %p: %s\n", buf,
			h->magic == MAGIC_FREE ? "already put (double put)" :
			h->magic == MAGIC_LARGE ? "a large buffer (use pool_put_large)" : "not a pool buffer");
		abort();
	}
	k = &p->cls[h->cls];
	size = class_defs[h->cls].size;
	/* The class comes from the header, so a buffer is returned without saying what it is. */
	k->nout--;
	p->in_use -= size;
	if (p->in_use + p->free_bytes + size > p->set.memory_limit) {
		/* Over a lowered limit: the memory goes back to malloc instead of the free list. */
		h->magic = 0;
		free(h);
	} else {
		if (p->set.poison) {
			memset(h + 1, POOL_POISON_BYTE, size);
			h->flags = HDR_POISONED;
		}
		free_push(p, h);
		if (k->nfree > k->high)
			arm_trim(p);
	}
	if (p->nwaiters)
		wake_scan(p);
}

/* --- large buffers and reservations ---------------------------------------------------------- */

/* A malloc'd block with a header recording <size>, so pool_put_large needs no size argument. */
void *pool_get_large(struct pool *p, size_t size)
{
	struct buf_hdr *h;

	if (inject_failure(p) || size > SIZE_MAX - sizeof(*h) || !fits(p, size) || make_room(p, size) != 0)
		goto fail;
	h = malloc(sizeof(*h) + size);
	if (!h)
		goto fail;
	h->u.size = size;
	h->cls = 0;
	h->flags = 0;
	h->magic = MAGIC_LARGE;
	p->large_bytes += size;
	p->in_use += size;
	note_in_use(p);
	return h + 1;
fail:
	p->large_failed++;
	return NULL;
}

/* Free a large buffer, give its bytes back to the limit and wake waiters. */
void pool_put_large(struct pool *p, void *buf)
{
	struct buf_hdr *h;

	if (!buf)
		return;
	h = (struct buf_hdr *)buf - 1;
	if (h->magic != MAGIC_LARGE) {
		fprintf(stderr, "pool: pool_put_large of %p: %s\n", buf,
			h->magic == MAGIC_USED ? "a class buffer (use pool_put)" : "not a large buffer (double put?)");
		abort();
	}
	p->large_bytes -= h->u.size;
	p->in_use -= h->u.size;
	h->magic = 0;
	free(h);
	if (p->nwaiters)
		wake_scan(p);
	refill_if_low(p);
}

/* Reservation of <bytes> more: shared by pool_reserve and pool_reserve_grow. */
static int reserve(struct pool *p, uint64_t bytes)
{
	if (bytes > p->set.memory_limit)
		return -E2BIG;
	if (bytes == 0)
		return 0;
	if (inject_failure(p) || !fits(p, bytes) || make_room(p, bytes) != 0) {
		p->reserve_failed++;
		return -EAGAIN;
	}
	p->reserved += bytes;
	p->in_use += bytes;
	note_in_use(p);
	return 0;
}

int pool_reserve(struct pool *p, uint64_t bytes)
{
	return reserve(p, bytes);
}

int pool_reserve_grow(struct pool *p, uint64_t more)
{
	return reserve(p, more);
}

/* Give back <bytes> of the reservations; released bytes are offered to waiters at once. */
/*
 * Memory came back: a class whose ready buffers were given up to make room (make_room) is
 * refilled to its watermark from the loop, once waiters have had their share.
 */
static void refill_if_low(struct pool *p)
{
	int want = 0;

	for (int c = 0; c < POOL_CLASS__COUNT; c++) {
		struct pool_cls *k = &p->cls[c];
		if (k->nfree <= k->low && !k->refill_wanted) {
			k->refill_wanted = 1;
			want = 1;
		}
	}
	if (want)
		schedule_refill(p);
}

void pool_release(struct pool *p, uint64_t bytes)
{
	assert(bytes <= p->reserved);
	if (bytes > p->reserved)
		bytes = p->reserved;
	p->reserved -= bytes;
	p->in_use -= bytes; /* reservations are counters: nothing to free */
	if (p->nwaiters)
		wake_scan(p);
	refill_if_low(p);
}

/* --- settings and lifecycle ------------------------------------------------------------------ */

/* 0 if <s> is usable, else -EINVAL. The negated comparisons also refuse NaN. */
static int settings_check(const struct pool_settings *s)
{
	if (s->memory_limit < POOL_MIN_LIMIT)
		return -EINVAL;
	if (!(s->low_watermark >= 0 && s->low_watermark <= s->high_watermark && s->high_watermark <= 1))
		return -EINVAL;
	if (!(s->fail_rate >= 0 && s->fail_rate <= 1))
		return -EINVAL;
	return 0;
}

/* Parse the debug variables. Returns 0 (<rate> < 0 and <poison> -1 for unset) or -EINVAL. */
static int env_read(double *rate, int *poison, char *err, size_t errlen)
{
	const char *v = getenv(POOL_ENV_FAIL_RATE);

	*rate = -1;
	*poison = -1;
	if (v && *v) {
		char *end;

		errno = 0;
		*rate = strtod(v, &end);
		if (errno || *end || !(*rate >= 0 && *rate <= 1)) {
			snprintf(err, errlen, "%s=%s: want a number from 0 to 1", POOL_ENV_FAIL_RATE, v);
			return -EINVAL;
		}
	}
	v = getenv(POOL_ENV_POISON);
	if (v && *v) {
		if (strcmp(v, "0") != 0 && strcmp(v, "1") != 0) {
			snprintf(err, errlen, "%s=%s: want 0 or 1", POOL_ENV_POISON, v);
			return -EINVAL;
		}
		*poison = v[0] == '1';
	}
	return 0;
}

/* See pool.h; the environment is read again on every call. */
int pool_env_apply(struct pool_settings *s, char *err, size_t errlen)
{
	double rate;
	int poison;
	int rc = env_read(&rate, &poison, err, errlen);

	if (rc != 0)
		return rc;
	if (rate >= 0)
		s->fail_rate = rate;
	if (poison >= 0)
		s->poison = poison;
	return 0;
}

/* Install <s> (checked) with the environment's debug values over it. */
static void settings_install(struct pool *p, const struct pool_settings *s)
{
	p->set = *s;
	if (p->env_fail_rate >= 0)
		p->set.fail_rate = p->env_fail_rate;
	if (p->env_poison >= 0)
		p->set.poison = p->env_poison;
	set_targets(p);
}

/*
 * Allocate the pool, read the debug environment, create the three events and pre-fill every
 * class to its high watermark. On failure everything allocated so far is freed.
 */
struct pool *pool_new(struct event_base *base, const struct pool_settings *s)
{
	struct pool *p;
	char err[160];

	if (!base || !s || settings_check(s) != 0) {
		errno = EINVAL;
		return NULL;
	}
	p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->base = base;
	p->rng = POOL_RNG_SEED;
	for (int i = 0; i < N_PRIO; i++)
		TAILQ_INIT(&p->waiting[i]);
	TAILQ_INIT(&p->woken);
	if (env_read(&p->env_fail_rate, &p->env_poison, err, sizeof(err)) != 0) {
		free(p);
		errno = EINVAL;
		return NULL;
	}
	settings_install(p, s);
	p->refill_ev = event_new(base, -1, 0, refill_cb, p);
	p->wake_ev = event_new(base, -1, 0, wake_cb, p);
	p->trim_ev = evtimer_new(base, trim_cb, p);
	if (!p->refill_ev || !p->wake_ev || !p->trim_ev)
		goto nomem;
	/* Pre-fill every class to its high watermark (the targets keep this well under the limit). */
	for (int c = 0; c < POOL_CLASS__COUNT; c++) {
		while (p->cls[c].nfree < p->cls[c].high && fits(p, p->free_bytes + class_defs[c].size)) {
			struct buf_hdr *h = buf_alloc((enum pool_class)c);

			if (!h)
				goto nomem;
			free_push(p, h);
		}
		p->cls[c].min_free = p->cls[c].nfree;
	}
	return p;
nomem:
	pool_free(p);
	errno = ENOMEM;
	return NULL;
}

/*
 * Free the free lists, pending waiters (without callbacks) and the events. Buffers still out
 * cannot be freed from here (the pool does not track them): reported on stderr, asserted.
 */
void pool_free(struct pool *p)
{
	struct pool_waiter *w;
	uint64_t out = 0;

	if (!p)
		return;
	/* Waiters are dropped without callbacks: their owners are being torn down too. */
	while ((w = TAILQ_FIRST(&p->woken)) != NULL)
		waiter_destroy(w);
	for (int i = 0; i < N_PRIO; i++)
		while ((w = TAILQ_FIRST(&p->waiting[i])) != NULL)
			waiter_destroy(w);
	for (int c = 0; c < POOL_CLASS__COUNT; c++) {
		free_release(p, (enum pool_class)c, UINT64_MAX);
		out += p->cls[c].nout;
	}
	if (out || p->large_bytes || p->reserved) {
		fprintf(stderr, "pool: pool_free with %llu class buffers, %llu large bytes and %llu reserved "
			"bytes still out\n", (unsigned long long)out, (unsigned long long)p->large_bytes,
			(unsigned long long)p->reserved);
		assert(!"pool_free with memory still out");
	}
	if (p->refill_ev)
		event_free(p->refill_ev);
	if (p->wake_ev)
		event_free(p->wake_ev);
	if (p->trim_ev)
		event_free(p->trim_ev);
	free(p);
}

/* Reload (see pool.h): -EINVAL leaves the pool as it was. */
int pool_configure(struct pool *p, const struct pool_settings *s)
{
	if (!s || settings_check(s) != 0)
		return -EINVAL;
	settings_install(p, s);
	/* A lower limit: idle memory goes first; what is in use goes back as it is put. */
	for (int c = POOL_CLASS__COUNT - 1; c >= 0; c--)
		while (p->in_use + p->free_bytes > p->set.memory_limit && p->cls[c].free)
			free(free_pop(p, (enum pool_class)c));
	for (int c = 0; c < POOL_CLASS__COUNT; c++) {
		struct pool_cls *k = &p->cls[c];

		if (k->nfree <= k->low) {
			k->refill_wanted = 1;
			schedule_refill(p);
		} else if (k->nfree > k->high) {
			arm_trim(p);
		}
	}
	/* A higher limit may let waiters in. */
	wake_scan(p);
	return 0;
}

/* --- debug and stats ------------------------------------------------------------------------- */

/* Walk every free list; O(free bytes), for tests and debug endpoints only. */
int pool_check_poison(const struct pool *p)
{
	int bad = 0;

	for (int c = 0; c < POOL_CLASS__COUNT; c++)
		for (const struct buf_hdr *h = p->cls[c].free; h; h = h->u.next)
			if ((h->flags & HDR_POISONED) &&
			    poison_mismatch((const unsigned char *)(h + 1), class_defs[c].size) != class_defs[c].size)
				bad++;
	return bad;
}

/* A snapshot; global get_on_empty, refills and failed_gets are sums over their sources. */
void pool_get_stats(const struct pool *p, struct pool_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->limit_bytes = p->set.memory_limit;
	out->free_bytes = p->free_bytes;
	out->in_use_bytes = p->in_use;
	out->reserved_bytes = p->reserved;
	out->large_bytes = p->large_bytes;
	out->peak_in_use_bytes = p->peak_in_use;
	out->waiters = p->nwaiters;
	out->waits = p->waits;
	out->wait_timeouts = p->wait_timeouts;
	out->failed_gets = p->large_failed + p->reserve_failed;
	for (int c = 0; c < POOL_CLASS__COUNT; c++) {
		const struct pool_cls *k = &p->cls[c];
		struct pool_class_stats *o = &out->cls[c];
		uint64_t size = class_defs[c].size;

		o->free_bytes = k->nfree * size;
		o->in_use_bytes = k->nout * size;
		o->gets = k->gets;
		o->get_on_empty = k->get_on_empty;
		o->failed_gets = k->failed_gets;
		o->refills = k->refills;
		o->trims = k->trims;
		o->peak_in_use_bytes = k->peak_out * size;
		out->failed_gets += k->failed_gets;
		out->get_on_empty += k->get_on_empty;
		out->refills += k->refills;
	}
}

/* --- arenas ------------------------------------------------------------------------------- */

#define ARENA_ALIGN 16 /* max_align_t on the platforms we build for */
#define ARENA_LINK ARENA_ALIGN /* each buffer starts with its list link, padded to the alignment */

void pool_arena_init(struct pool_arena *a, struct pool *p)
{
	memset(a, 0, sizeof(*a));
	a->pool = p;
}

void *pool_arena_alloc(struct pool_arena *a, size_t size)
{
	size_t block = pool_class_size(POOL_CLASS_SMALL);
	size_t need = (size + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
	char *p;

	if (need == 0)
		need = ARENA_ALIGN;
	if (need > block / 4) {
		/* a big piece (a decompressed body): its own large buffer */
		p = pool_get_large(a->pool, ARENA_LINK + need);
		if (!p)
			return NULL;
		*(void **)p = a->larges;
		a->larges = p;
		a->bytes += ARENA_LINK + need;
		return p + ARENA_LINK;
	}
	if (!a->block || a->used + need > block) {
		p = pool_get(a->pool, POOL_CLASS_SMALL);
		if (!p)
			return NULL;
		*(void **)p = a->blocks;
		a->blocks = p;
		a->block = p;
		a->used = ARENA_LINK;
		a->bytes += block;
	}
	p = a->block + a->used;
	a->used += need;
	return p;
}

void pool_arena_release(struct pool_arena *a)
{
	while (a->blocks) {
		void *next = *(void **)a->blocks;
		pool_put(a->pool, a->blocks);
		a->blocks = next;
	}
	while (a->larges) {
		void *next = *(void **)a->larges;
		pool_put_large(a->pool, a->larges);
		a->larges = next;
	}
	a->block = NULL;
	a->used = 0;
	a->bytes = 0;
}

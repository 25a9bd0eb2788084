/*
 * backoff: per-key exponential backoff with jitter and a global token bucket, in a table of
 * fixed size (see backoff.h).
 *
 * The table is one array of slots, allocated at _new() and again only by a reload that raises
 * max_keys. Slots are linked by index (no pointer, no malloc per key): a chain per hash bucket,
 * the free list, and one LRU list ordered by last failure, whose tail is evicted when a new key
 * finds the table full. A hold (struct backoff_ref) names a slot and the generation the slot had
 * when the hold was taken; every new key state gets a new generation, so a hold on an evicted or
 * forgotten key no longer matches and goes stale instead of reaching whatever key took its slot.
 */
#include "limiter/backoff.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NIL UINT32_MAX                       /* no slot: end of a chain or list */
#define BACKOFF_MAX_BUCKETS (1u << 31)       /* more keys than this share buckets (never in practice) */
#define BACKOFF_HASH_MUL 0x9e3779b97f4a7c15ULL /* Fibonacci hashing: keys may be small integers in tests */
#define BACKOFF_WAIT_EPSILON 1e-9            /* ms: float error must not round a wait up by a whole ms */

/* One key's state. A free slot has users == 0 and sits on the free list through <hnext>. */
struct slot {
	uint64_t key;      /* the key (already a hash) */
	uint32_t hnext;    /* next slot in the bucket's chain, or on the free list; NIL at the end */
	uint32_t newer;    /* LRU neighbour towards the most recently failed key, NIL at the head */
	uint32_t older;    /* LRU neighbour towards the least recently failed key, NIL at the tail */
	uint32_t gen;      /* generation of this key state: a hold matches it or is stale */
	uint32_t failures; /* backoff_when() calls since the state was created (saturates) */
	uint32_t users;    /* holds out on it; 0: the slot is free */
};

struct backoff {
	struct backoff_settings set; /* current settings */
	struct slot *slots;          /* <nslots> slots */
	uint32_t nslots;             /* slots allocated: >= set.max_keys (more after a shrinking reload) */
	uint32_t *buckets;           /* chain heads, NIL when empty; <mask> + 1 of them */
	uint32_t mask;               /* buckets - 1 (a power of two minus one) */
	uint32_t free;               /* free list head, NIL when every slot is used */
	uint32_t newest;             /* LRU head: the most recently failed key */
	uint32_t oldest;             /* LRU tail: evicted first */
	uint32_t count;              /* keys with state (slots in use) */
	uint32_t gen_clock;          /* last generation handed out */
	double tokens;               /* token bucket level; negative: tokens already promised */
	int64_t refilled_ms;         /* when <tokens> was last brought up to date */
	int bucket_used;             /* <refilled_ms> is set (the first when() starts the clock) */
	uint64_t rng;                /* splitmix64 state for the jitter */
	uint64_t evictions, forgotten, failures, bucket_delayed; /* see struct backoff_stats */
};

/* --- helpers --------------------------------------------------------------------------------- */

static int settings_valid(const struct backoff_settings *s)
{
	if (s->base_delay_ms < 1 || s->max_delay_ms < s->base_delay_ms || s->max_keys < 1)
		return 0;
	/* Written so that NaN fails each test. */
	if (!(s->rate >= 0 && isfinite(s->rate)) || (s->rate > 0 && s->burst < 1))
		return 0;
	return s->jitter >= 0 && s->jitter <= 1;
}

/* splitmix64: tiny, seedable with any value including 0, good enough for jitter. */
static uint64_t rng_next(struct backoff *b)
{
	uint64_t z = (b->rng += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Buckets for <max_keys> keys: the next power of two, so chains average at most one slot. */
static uint32_t buckets_for(uint32_t max_keys)
{
	uint32_t n = 1;

	while (n < max_keys && n < BACKOFF_MAX_BUCKETS)
		n <<= 1;
	return n;
}

static uint32_t bucket_index(uint64_t key, uint32_t mask)
{
	/* The high half of the product is the well-mixed one. */
	return (uint32_t)((key * BACKOFF_HASH_MUL) >> 32) & mask;
}

/* The slot <ref> holds, or NIL for a zero or stale hold. */
static uint32_t ref_slot(const struct backoff *b, const struct backoff_ref *ref)
{
	uint32_t i;

	if (ref->slot == 0 || ref->slot > b->nslots)
		return NIL;
	i = ref->slot - 1;
	return b->slots[i].users > 0 && b->slots[i].gen == ref->gen ? i : NIL;
}

static void chain_insert(struct backoff *b, uint32_t i)
{
	uint32_t *head = &b->buckets[bucket_index(b->slots[i].key, b->mask)];

	b->slots[i].hnext = *head;
	*head = i;
}

static void chain_unlink(struct backoff *b, uint32_t i)
{
	uint32_t *pp = &b->buckets[bucket_index(b->slots[i].key, b->mask)];

	while (*pp != i)
		pp = &b->slots[*pp].hnext;
	*pp = b->slots[i].hnext;
}

static void lru_unlink(struct backoff *b, uint32_t i)
{
	struct slot *s = &b->slots[i];

	if (s->newer != NIL)
		b->slots[s->newer].older = s->older;
	else
		b->newest = s->older;
	if (s->older != NIL)
		b->slots[s->older].newer = s->newer;
	else
		b->oldest = s->newer;
	s->newer = s->older = NIL;
}

static void lru_push_newest(struct backoff *b, uint32_t i)
{
	struct slot *s = &b->slots[i];

	s->newer = NIL;
	s->older = b->newest;
	if (b->newest != NIL)
		b->slots[b->newest].newer = i;
	else
		b->oldest = i;
	b->newest = i;
}

static uint32_t lookup(const struct backoff *b, uint64_t key)
{
	uint32_t i = b->buckets[bucket_index(key, b->mask)];

	while (i != NIL && b->slots[i].key != key)
		i = b->slots[i].hnext;
	return i;
}

/* Drop slot <i>'s key state: every hold on it is stale from now on. */
static void slot_release(struct backoff *b, uint32_t i)
{
	chain_unlink(b, i);
	lru_unlink(b, i);
	b->slots[i].users = 0;
	b->slots[i].hnext = b->free;
	b->free = i;
	b->count--;
}

/* A new state for <key> with no failure and no hold, evicting the least recently failed key when full. */
static uint32_t slot_take(struct backoff *b, uint64_t key)
{
	struct slot *s;
	uint32_t i;

	/* After a shrinking reload there may be free slots beyond the cap: the count decides. */
	if (b->count >= b->set.max_keys) {
		slot_release(b, b->oldest);
		b->evictions++;
	}
	i = b->free;
	s = &b->slots[i];
	b->free = s->hnext;
	s->key = key;
	s->failures = 0;
	s->users = 0;
	/* Generations wrap after 2^32 key states; a hold would have to stay out that long to collide. */
	s->gen = ++b->gen_clock;
	chain_insert(b, i);
	lru_push_newest(b, i);
	b->count++;
	return i;
}

/* Rebuild the free list from the slots' users (after the slot array changed size). */
static void free_list_rebuild(struct backoff *b)
{
	b->free = NIL;
	for (uint32_t i = b->nslots; i-- > 0;)
		if (b->slots[i].users == 0) {
			b->slots[i].hnext = b->free;
			b->free = i;
		}
}

/* min(base x 2^<f>, max), without overflowing the shift. */
static int64_t exp_delay(const struct backoff_settings *s, uint32_t f)
{
	if (f >= 63 || s->base_delay_ms > (s->max_delay_ms >> f))
		return s->max_delay_ms;
	return s->base_delay_ms << f;
}

/* <d> x (1 - jitter x u), u uniform in [0,1); rounded up so it stays within [d x (1 - jitter), d]. */
static int64_t jittered(struct backoff *b, int64_t d)
{
	double u, v;

	if (b->set.jitter <= 0)
		return d;
	u = (double)(rng_next(b) >> 11) * 0x1.0p-53;
	v = ceil((double)d * (1.0 - b->set.jitter * u));
	if (v <= 0)
		return 0;
	return v >= (double)d ? d : (int64_t)v; /* large d: the double may round above it */
}

/*
 * Take one token at <now_ms>, as golang.org/x/time/rate's Reserve does: refill by the time
 * elapsed up to the burst, take a token even when there is none (the level goes negative: the
 * token is promised to this caller), and return how long until the level is back at 0.
 */
static int64_t bucket_take(struct backoff *b, int64_t now_ms)
{
	double wait;

	if (b->set.rate <= 0)
		return 0;
	if (!b->bucket_used) {
		b->bucket_used = 1;
		b->refilled_ms = now_ms;
	} else if (now_ms > b->refilled_ms) {
		/* A clock that steps back refills nothing (and does not move the mark back either). */
		b->tokens += (double)(now_ms - b->refilled_ms) * b->set.rate / 1000.0;
		if (b->tokens > (double)b->set.burst)
			b->tokens = (double)b->set.burst;
		b->refilled_ms = now_ms;
	}
	b->tokens -= 1.0;
	if (b->tokens >= 0)
		return 0;
	wait = ceil(-b->tokens * 1000.0 / b->set.rate - BACKOFF_WAIT_EPSILON);
	if (wait >= (double)INT64_MAX)
		return INT64_MAX;
	return wait > 0 ? (int64_t)wait : 0;
}

/* --- API ------------------------------------------------------------------------------------- */

struct backoff *backoff_new(const struct backoff_settings *s)
{
	struct backoff *b;
	uint32_t nb;

	if (!settings_valid(s)) {
		errno = EINVAL;
		return NULL;
	}
	b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	nb = buckets_for(s->max_keys);
	b->slots = calloc(s->max_keys, sizeof(*b->slots));
	b->buckets = malloc((size_t)nb * sizeof(*b->buckets));
	if (!b->slots || !b->buckets) {
		backoff_free(b);
		errno = ENOMEM;
		return NULL;
	}
	memset(b->buckets, 0xff, (size_t)nb * sizeof(*b->buckets)); /* every head NIL */
	b->set = *s;
	b->nslots = s->max_keys;
	b->mask = nb - 1;
	b->newest = b->oldest = NIL;
	free_list_rebuild(b);
	b->tokens = (double)s->burst; /* a bucket starts full */
	b->rng = s->seed;
	return b;
}

void backoff_free(struct backoff *b)
{
	if (!b)
		return;
	free(b->slots);
	free(b->buckets);
	free(b);
}

int backoff_configure(struct backoff *b, const struct backoff_settings *s)
{
	uint32_t nb, *buckets, highest = 0;

	if (!settings_valid(s))
		return -EINVAL;
	if (s->max_keys != b->set.max_keys) {
		/* Everything that can fail first, so that <b> is unchanged on -ENOMEM. */
		nb = buckets_for(s->max_keys);
		buckets = malloc((size_t)nb * sizeof(*buckets));
		if (!buckets)
			return -ENOMEM;
		if (s->max_keys > b->nslots) {
			struct slot *grown = realloc(b->slots, (size_t)s->max_keys * sizeof(*grown));

			if (!grown) {
				free(buckets);
				return -ENOMEM;
			}
			memset(grown + b->nslots, 0, (size_t)(s->max_keys - b->nslots) * sizeof(*grown));
			b->slots = grown;
			b->nslots = s->max_keys;
		}
		/* Over the new cap: the least recently failed keys go, as they would have on a new key. */
		while (b->count > s->max_keys) {
			slot_release(b, b->oldest);
			b->evictions++;
		}
		memset(buckets, 0xff, (size_t)nb * sizeof(*buckets));
		free(b->buckets);
		b->buckets = buckets;
		b->mask = nb - 1;
		for (uint32_t i = b->newest; i != NIL; i = b->slots[i].older) {
			chain_insert(b, i);
			if (i > highest)
				highest = i;
		}
		/*
		 * A hold names its slot's index, so a kept key cannot move: the array shrinks to the new
		 * cap only when no kept key lies beyond it. Otherwise it keeps its size (the count still
		 * holds the cap) until a later reload finds room to shrink.
		 */
		if (s->max_keys < b->nslots && highest < s->max_keys) {
			struct slot *shrunk = realloc(b->slots, (size_t)s->max_keys * sizeof(*shrunk));

			if (shrunk) { /* a failed shrink just keeps the larger array */
				b->slots = shrunk;
				b->nslots = s->max_keys;
			}
		}
		free_list_rebuild(b);
	}
	if (s->rate > 0 && b->tokens > (double)s->burst)
		b->tokens = (double)s->burst;
	if (s->seed != b->set.seed)
		b->rng = s->seed;
	b->set = *s;
	return 0;
}

int64_t backoff_when(struct backoff *b, struct backoff_ref *ref, uint64_t key, int64_t now_ms)
{
	uint32_t i = ref_slot(b, ref);
	int64_t d, wait;
	struct slot *s;

	b->failures++;
	if (i != NIL && b->slots[i].key != key) {
		/* A hold on another key: give it back and hold this one instead. */
		backoff_forget(b, ref);
		i = NIL;
	}
	if (i == NIL) {
		i = lookup(b, key);
		if (i == NIL)
			i = slot_take(b, key);
		b->slots[i].users++;
		ref->slot = i + 1;
		ref->gen = b->slots[i].gen;
	}
	s = &b->slots[i];
	d = jittered(b, exp_delay(&b->set, s->failures));
	if (s->failures < UINT32_MAX)
		s->failures++;
	if (b->newest != i) {
		lru_unlink(b, i);
		lru_push_newest(b, i);
	}
	wait = bucket_take(b, now_ms);
	if (wait > d) {
		b->bucket_delayed++;
		d = wait;
	}
	return d;
}

void backoff_forget(struct backoff *b, struct backoff_ref *ref)
{
	uint32_t i = ref_slot(b, ref);

	ref->slot = 0;
	ref->gen = 0;
	if (i == NIL)
		return;
	if (--b->slots[i].users == 0) {
		slot_release(b, i);
		b->forgotten++;
	}
}

uint32_t backoff_failures(const struct backoff *b, const struct backoff_ref *ref)
{
	uint32_t i = ref_slot(b, ref);

	return i == NIL ? 0 : b->slots[i].failures;
}

void backoff_get_stats(const struct backoff *b, struct backoff_stats *out)
{
	out->tracked = b->count;
	out->max_keys = b->set.max_keys;
	out->evictions = b->evictions;
	out->forgotten = b->forgotten;
	out->failures = b->failures;
	out->bucket_delayed = b->bucket_delayed;
}

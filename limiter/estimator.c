/* est: series, samples and bytes estimates from recall, learned statistics and hints (see estimator.h). */
#include "limiter/estimator.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "limiter/regex.h"
#include "proto/request.h"
#include "proto/wire.h"

/* --- tuning ---------------------------------------------------------------------------------- */

#define EST_METRIC_HLL_P 12        /* distinct series per metric: 4 KiB dense, ~1.6% error */
#define EST_LABEL_HLL_P 10         /* series carrying a label, distinct values of a label: 1 KiB dense */
#define EST_VALUE_HLL_P 7          /* series per tracked value: 128 B dense, ~9% error */
#define EST_TOP_VALUES 64          /* K: values tracked exactly per label */
#define EST_VALUE_INDEX 128        /* open-addressing slots over the tracked values (2 x K) */
#define EST_RESERVOIR 32           /* tail value occurrences sampled per label */
#define EST_PROMOTE_MIN_SAMPLES 4  /* reservoir copies a tail value needs before it may be promoted */
#define EST_PROMOTE_FACTOR 8       /* ... and estimated occurrences above this x the least tracked value's */
#define EST_MAX_LABELS 64          /* label names with statistics per metric (others: share 1) */
#define EST_MAX_VALUE_LEN 256      /* longer values are counted, but neither tracked nor sampled */
#define EST_MAX_NAME_LEN 1024      /* longer tenant, metric or label names are not learned */
#define EST_MAX_MATCHERS 32        /* matchers used per estimate; ignoring more can only raise it */
#define EST_FP_STACK 32            /* matchers sorted on the stack for a fingerprint */
#define EST_NAME_SCAN_MAX 100000   /* metrics examined for a selector without a __name__ equality */
#define EST_DEFAULT_SCRAPE_MS 15000
#define EST_BPS_KEEP 0.75          /* EWMA weight of the old bytes-per-sample figure */
#define EST_ALLOC_OVERHEAD 16      /* malloc's chunk header, counted with every allocation */
#define EST_TABLE_MIN 16           /* initial (and smallest) buckets of each hash table */
#define EST_RNG_SEED 0x9e3779b97f4a7c15ULL
#define EST_SEEN_KEYS 16384        /* recently learned series remembered, at most (128 KiB) */
#define EST_SEEN_SHARE 16          /* ... in at most 1/16 of the budget */
#define EST_SEEN_PERIOD 65536      /* look-ups after which the filter forgets everything */
#define EST_LEARN_STACK 64         /* labels whose hashes est_learn_series keeps for reuse */

/* Sparse HLLs hold 32-bit hashes in a sorted array until it would outgrow the dense registers. */
#define EST_SPARSE_MIN 4

#define EST_CONTAINER(ptr, type, member) ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* --- building blocks: accounted allocation, lists, hash tables, HLL ----------------------------- */

/* Intrusive circular doubly linked list; a head is a sentinel. Front = most recently used. */
struct est_link {
	struct est_link *prev;
	struct est_link *next;
};

/* Intrusive chained hash-table node. */
struct est_hnode {
	struct est_hnode *next; /* bucket chain */
	uint64_t hash;          /* full hash of the key */
};

/* Chained hash table with a power-of-two bucket array; growth is bounded by the budget. */
struct est_htab {
	struct est_hnode **b; /* buckets */
	size_t mask;          /* buckets - 1 */
	size_t n;             /* nodes held */
};

/*
 * HyperLogLog over 32-bit hashes. Small sets are kept exactly as a sorted array of hashes (the
 * count is then exact); once that array would outgrow the 2^p one-byte registers it is folded
 * into them. Counting is lazy: the figure is cached until a register changes.
 */
struct est_hll {
	void *data;      /* sparse: uint32_t[cap] sorted; dense: uint8_t[1 << p] */
	uint32_t n;      /* sparse: hashes held */
	uint32_t cap;    /* sparse: slots allocated */
	double cached;   /* count when !dirty */
	uint8_t p;       /* precision */
	uint8_t dense;   /* 1 once folded into registers */
	uint8_t dirty;   /* cached is stale */
};

/* A learned outcome of one normalised selector. */
struct est_recall {
	struct est_hnode node; /* hash: the fingerprint */
	struct est_link lru;   /* e->recall_lru */
	uint64_t series;
	uint64_t samples;      /* RECALL only */
	uint64_t bytes;        /* RECALL only */
	int64_t range_ms;      /* range of the query it was learned from */
	uint8_t source;        /* EST_SOURCE_RECALL or EST_SOURCE_PROBE */
	uint8_t truncated;     /* probe stopped early */
};

/* A label value tracked exactly. */
struct est_value {
	struct est_hll series; /* distinct series carrying it */
	uint64_t hits;         /* occurrences since it is tracked (ranks it for promotion) */
	double seed;           /* series credited when promoted from the tail (0 for first-come values) */
	uint64_t hash;         /* XXH3 of the value */
	uint32_t len;
	char str[];            /* NUL-terminated */
};

/* A sampled tail occurrence. */
struct est_sample {
	uint64_t hash; /* XXH3 of the value */
	uint32_t len;
	char str[];
};

/* Statistics of one label name within one metric. */
struct est_label {
	uint64_t hash;                  /* XXH3 of the name */
	struct est_hll series;          /* series carrying the label (non-empty value) */
	struct est_hll absent;          /* series of the metric seen without it */
	double absent_base;             /* series the metric had before the label first appeared */
	struct est_hll values;          /* distinct values */
	struct est_value **vals;        /* tracked values */
	uint32_t n_vals, cap_vals;
	struct est_sample **res;        /* reservoir of tail occurrences, EST_RESERVOIR slots once used */
	uint32_t n_res;
	uint64_t tail_seen;             /* tail occurrences offered to the reservoir */
	uint64_t min_hits;              /* lower bound of the least tracked value's hits */
	double tail_series;             /* cached: series whose value is not tracked */
	double tail_distinct;           /* cached: values not tracked */
	int dirty;                      /* the cached tail figures are stale */
	uint8_t index[EST_VALUE_INDEX]; /* hash slot -> vals index + 1, 0 = empty */
	uint32_t name_len;
	char name[];
};

struct est_tenant;

/* Statistics of one (tenant, metric name). */
struct est_metric {
	struct est_hnode node;         /* hash: tenant hash seeded name hash */
	struct est_link lru;           /* e->metric_lru */
	struct est_link siblings;      /* tenant->metrics */
	struct est_tenant *tenant;     /* (ref) owner */
	struct est_hll series;         /* distinct label sets */
	struct est_label **labels;
	uint32_t n_labels, cap_labels;
	double bytes_per_sample;       /* learned from est_learn_query, 0 = unknown */
	int complete;                  /* a response for the bare metric (no label matchers) was learned */
	uint32_t name_len;
	char name[];
};

struct est_tenant {
	struct est_hnode node;   /* hash: XXH3 of the name */
	struct est_link metrics; /* its metrics (sentinel) */
	uint32_t name_len;
	char name[];
};

/* A copied estimator.hints entry (open addressing, config-owned: outside the learned budget). */
struct est_hint_slot {
	char *metric; /* NULL: empty slot */
	uint64_t hash;
	uint64_t series;
};

struct est_hints {
	struct est_hint_slot *slots;
	size_t mask; /* slots - 1; slots is 0 when there are no hints */
	size_t n;
};

struct est {
	int64_t scrape_interval_ms;
	uint64_t max_memory;
	uint64_t mem;                  /* accounted bytes of everything learned */
	struct est_htab recall;        /* fingerprint -> est_recall */
	struct est_htab metrics;       /* (tenant, name) -> est_metric */
	struct est_htab tenants;       /* name -> est_tenant */
	struct est_link recall_lru;    /* most recently used first */
	struct est_link metric_lru;
	uint64_t n_values;             /* tracked label values over all metrics */
	uint64_t evictions;
	uint64_t rng;                  /* xorshift64* state (reservoir sampling) */
	struct est_hints hints;
	uint64_t *seen;                /* recently learned series: tags, 2 ways per set (NULL: none yet) */
	size_t seen_keys;              /* slots of seen, a power of two (0 when NULL) */
	uint64_t seen_salt;            /* mixed into every tag; changing it forgets every entry */
	uint64_t seen_gen;             /* forgets so far, the source of seen_salt */
	uint64_t seen_calls;           /* look-ups since the last forget */
	uint64_t learned_series;       /* est_stats counters */
	uint64_t learn_skipped;
};

static void *est_alloc(struct est *e, size_t n)
{
	void *p = malloc(n);

	if (p)
		e->mem += n + EST_ALLOC_OVERHEAD;
	return p;
}

static void *est_zalloc(struct est *e, size_t n)
{
	void *p = calloc(1, n);

	if (p)
		e->mem += n + EST_ALLOC_OVERHEAD;
	return p;
}

/* Resize <p> from <old> to <n> bytes; on failure <p> is untouched and NULL returned. */
static void *est_realloc(struct est *e, void *p, size_t old, size_t n)
{
	void *q = realloc(p, n);

	if (q)
		e->mem = e->mem - (p ? old + EST_ALLOC_OVERHEAD : 0) + n + EST_ALLOC_OVERHEAD;
	return q;
}

/* Free <p>, allocated with <n> bytes. NULL is accepted. */
static void est_release(struct est *e, void *p, size_t n)
{
	if (!p)
		return;
	free(p);
	e->mem -= n + EST_ALLOC_OVERHEAD;
}

static void link_init(struct est_link *h)
{
	h->prev = h->next = h;
}

static void link_del(struct est_link *l)
{
	l->prev->next = l->next;
	l->next->prev = l->prev;
	l->prev = l->next = l;
}

static void link_push(struct est_link *h, struct est_link *l)
{
	l->next = h->next;
	l->prev = h;
	h->next->prev = l;
	h->next = l;
}

static void link_touch(struct est_link *h, struct est_link *l)
{
	if (h->next != l) {
		link_del(l);
		link_push(h, l);
	}
}

static int link_empty(const struct est_link *h)
{
	return h->next == h;
}

static uint64_t xorshift(struct est *e)
{
	e->rng ^= e->rng >> 12;
	e->rng ^= e->rng << 25;
	e->rng ^= e->rng >> 27;
	return e->rng * 0x2545f4914f6cdd1dULL;
}

/* Final avalanche (from SplitMix64): spreads a combination of two hashes over all bits. */
static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static int htab_init(struct est *e, struct est_htab *t)
{
	t->b = est_zalloc(e, EST_TABLE_MIN * sizeof(*t->b));
	t->mask = EST_TABLE_MIN - 1;
	t->n = 0;
	return t->b ? 0 : -ENOMEM;
}

static void htab_deinit(struct est *e, struct est_htab *t)
{
	est_release(e, t->b, (t->mask + 1) * sizeof(*t->b));
	t->b = NULL;
}

/* Rehash into <buckets> (a power of two). On ENOMEM the table stays as it was. */
static void htab_resize(struct est *e, struct est_htab *t, size_t buckets)
{
	struct est_hnode **nb = est_zalloc(e, buckets * sizeof(*nb));

	if (!nb)
		return;
	for (size_t i = 0; i <= t->mask; i++) {
		struct est_hnode *n = t->b[i], *next;

		for (; n; n = next) {
			next = n->next;
			n->next = nb[n->hash & (buckets - 1)];
			nb[n->hash & (buckets - 1)] = n;
		}
	}
	est_release(e, t->b, (t->mask + 1) * sizeof(*t->b));
	t->b = nb;
	t->mask = buckets - 1;
}

/* Insert <n> (hash set). Doubles the buckets at load 1 when the budget has room for them. */
static void htab_insert(struct est *e, struct est_htab *t, struct est_hnode *n)
{
	size_t buckets = t->mask + 1;

	if (t->n >= buckets && e->mem + 2 * buckets * sizeof(*t->b) <= e->max_memory)
		htab_resize(e, t, 2 * buckets);
	n->next = t->b[n->hash & t->mask];
	t->b[n->hash & t->mask] = n;
	t->n++;
}

static void htab_remove(struct est_htab *t, struct est_hnode *n)
{
	struct est_hnode **pp = &t->b[n->hash & t->mask];

	while (*pp != n)
		pp = &(*pp)->next;
	*pp = n->next;
	t->n--;
}

static struct est_hnode *htab_chain(const struct est_htab *t, uint64_t hash)
{
	return t->b[hash & t->mask];
}

/* Shrink <t> to the smallest power of two >= its node count (at least EST_TABLE_MIN). */
static void htab_shrink(struct est *e, struct est_htab *t)
{
	size_t want = EST_TABLE_MIN;

	while (want < t->n)
		want *= 2;
	if (want < t->mask + 1)
		htab_resize(e, t, want);
}

static void hll_init(struct est_hll *h, unsigned p)
{
	memset(h, 0, sizeof(*h));
	h->p = (uint8_t)p;
}

static size_t hll_dense_bytes(const struct est_hll *h)
{
	return (size_t)1 << h->p;
}

static void hll_deinit(struct est *e, struct est_hll *h)
{
	est_release(e, h->data, h->dense ? hll_dense_bytes(h) : h->cap * sizeof(uint32_t));
	h->data = NULL;
}

/* Set the register for hash <x>; 1 if it grew. */
static int hll_dense_add(struct est_hll *h, uint32_t x)
{
	uint8_t *regs = h->data;
	uint32_t idx = x >> (32 - h->p);
	uint32_t w = (x << h->p) | (1u << (h->p - 1)); /* the guard bit bounds the rank */
	uint8_t rank = (uint8_t)(__builtin_clz(w) + 1);

	if (regs[idx] >= rank)
		return 0;
	regs[idx] = rank;
	return 1;
}

/* Fold the sparse hashes into registers. -ENOMEM leaves <h> sparse. */
static int hll_densify(struct est *e, struct est_hll *h)
{
	uint8_t *regs = est_zalloc(e, hll_dense_bytes(h));
	uint32_t *hashes = h->data;

	if (!regs)
		return -ENOMEM;
	h->data = regs;
	for (uint32_t i = 0; i < h->n; i++)
		hll_dense_add(h, hashes[i]);
	est_release(e, hashes, h->cap * sizeof(uint32_t));
	h->dense = 1;
	h->n = h->cap = 0;
	return 0;
}

/* Add hash <x>. Returns 1 if the count may have changed, 0 if not (or out of memory). */
static int hll_add(struct est *e, struct est_hll *h, uint32_t x)
{
	uint32_t *a = h->data;
	uint32_t lo = 0, hi = h->n;

	if (h->dense) {
		int grew = hll_dense_add(h, x);

		h->dirty |= (uint8_t)grew;
		return grew;
	}
	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;

		if (a[mid] == x)
			return 0;
		if (a[mid] < x)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (h->n == h->cap) {
		uint32_t cap = h->cap ? 2 * h->cap : EST_SPARSE_MIN;

		if ((size_t)cap * sizeof(uint32_t) > hll_dense_bytes(h)) {
			if (hll_densify(e, h) < 0)
				return 0;
			h->dirty = 1;
			hll_dense_add(h, x);
			return 1;
		}
		a = est_realloc(e, h->data, h->cap * sizeof(uint32_t), cap * sizeof(uint32_t));
		if (!a)
			return 0;
		h->data = a;
		h->cap = cap;
	}
	memmove(&a[lo + 1], &a[lo], (h->n - lo) * sizeof(uint32_t));
	a[lo] = x;
	h->n++;
	h->dirty = 1;
	return 1;
}

/* 2^-<r> for a register value (0..33), built from the exponent bits: no libm call per register. */
static double pow2_neg(unsigned r)
{
	union {
		uint64_t u;
		double d;
	} x = { .u = (uint64_t)(1023 - r) << 52 };

	return x.d;
}

/* Distinct hashes added: exact while sparse, HyperLogLog with linear counting for small ranges. */
static double hll_count(struct est_hll *h)
{
	const uint8_t *regs = h->data;
	double m = (double)hll_dense_bytes(h), sum = 0, alpha, est;
	unsigned zeros = 0;

	if (!h->dirty)
		return h->cached;
	h->dirty = 0;
	if (!h->dense)
		return h->cached = h->n;
	for (size_t i = 0; i < hll_dense_bytes(h); i++) {
		sum += pow2_neg(regs[i]);
		zeros += regs[i] == 0;
	}
	alpha = h->p == 4 ? 0.673 : h->p == 5 ? 0.697 : h->p == 6 ? 0.709 : 0.7213 / (1 + 1.079 / m);
	est = alpha * m * m / sum;
	if (est <= 2.5 * m && zeros)
		est = m * log(m / zeros);
	return h->cached = est;
}

/* --- recently learned series ----------------------------------------------------------------- */

/*
 * A dashboard refreshing sends the same series again and again. Learning one again changes no
 * sketch (an HLL ignores repeats) yet costs ~2,400 instructions, and it inflates figures meant
 * to count series, not sightings: a tracked value's hits, the tail's tail_seen and reservoir
 * samples. So est_learn_series first looks the series up here and stops when it was learned
 * recently.
 *
 * Key: the tenant hash XOR the order-independent label-set hash est_learn_series computes anyway
 * (no extra hashing), XOR a salt; stored as a 63-bit tag (bit 0 set, 0 marks an empty slot).
 * Table: 2-way set-associative, the newer entry first, tags only. Its size is fixed per budget:
 * EST_SEEN_KEYS slots at most, and at most 1/EST_SEEN_SHARE of estimator.max_memory (128 KiB
 * of the default 64 MiB, 2 KiB of the smallest 64 KiB; none below 512 bytes). It is counted in
 * the budget like everything learned, allocated on the first learn (a fresh estimator holds
 * only its empty tables), and given back when a lowered budget no longer leaves it room; the
 * next learn allocates it again at the size the budget allows. Two series with equal 64-bit
 * tags, or pushed out of a full set, are only learned once more or one period later: harmless.
 *
 * Forgetting changes the salt: every entry goes stale at once, nothing to clear. It happens
 *   - whenever learned state is dropped (metric_drop: budget evictions, est_free), so an
 *     evicted metric or tenant is learned again the next time one of its series is seen;
 *   - on est_configure (a reload starts from a clean slate);
 *   - every EST_SEEN_PERIOD look-ups. A skipped series does not touch its metric in the LRU
 *     list, so a metric seen only through skipped series would drift towards eviction; the
 *     period learns (and touches) it again at least once per 65,536 series relayed. At 4x the
 *     largest table, a working set that fits is learned again once per period: at worst 1
 *     look-up in 4 (a full table), 1 in 65 for a dashboard of 1,000 series. Under memory
 *     pressure evictions forget far more often, keeping recency near exact where it matters.
 *   So a tracked value's hits count distinct series per period, not sightings.
 */

/* Slots of the filter <max_memory> affords (a power of two), 0 when too small for one set. */
static size_t seen_want(uint64_t max_memory)
{
	uint64_t share = max_memory / EST_SEEN_SHARE;
	size_t keys = EST_SEEN_KEYS;

	while (keys >= 2 && keys * sizeof(uint64_t) + EST_ALLOC_OVERHEAD > share)
		keys /= 2;
	return keys >= 2 ? keys : 0;
}

/* Forget every entry: a new salt (mix64 is a bijection, so each generation has its own). */
static void seen_forget(struct est *e)
{
	e->seen_salt = mix64(++e->seen_gen);
	e->seen_calls = 0;
}

static void seen_release(struct est *e)
{
	est_release(e, e->seen, e->seen_keys * sizeof(*e->seen));
	e->seen = NULL;
	e->seen_keys = 0;
}

/* The 2-way set (two adjacent slots) holding <tag>: chosen by bits above bit 0, always set. */
static uint64_t *seen_slots(const struct est *e, uint64_t tag)
{
	return &e->seen[((tag >> 1) & (e->seen_keys / 2 - 1)) * 2];
}

/*
 * Was the series of <key> (tenant hash ^ label-set hash) learned recently? Allocates the filter
 * on first use and counts the look-up towards the periodic forget. Sets <tag> for seen_put().
 * Without a filter (budget too small, ENOMEM) nothing is recent: 0.
 */
static int seen_test(struct est *e, uint64_t key, uint64_t *tag)
{
	uint64_t *w;

	*tag = 0;
	if (!e->seen) {
		size_t keys = seen_want(e->max_memory);

		e->seen = keys ? est_zalloc(e, keys * sizeof(*e->seen)) : NULL;
		if (!e->seen)
			return 0;
		e->seen_keys = keys;
	}
	if (++e->seen_calls >= EST_SEEN_PERIOD)
		seen_forget(e);
	*tag = (key ^ e->seen_salt) | 1;
	w = seen_slots(e, *tag);
	if (w[0] == *tag)
		return 1;
	if (w[1] != *tag)
		return 0;
	w[1] = w[0]; /* the newer entry first: a miss pushes out the older one */
	w[0] = *tag;
	return 1;
}

/* Remember <tag> (from seen_test(), 0: no filter) as learned. */
static void seen_put(struct est *e, uint64_t tag)
{
	uint64_t *w;

	if (!e->seen || !tag)
		return;
	w = seen_slots(e, tag);
	w[1] = w[0];
	w[0] = tag;
}

/* --- recall ---------------------------------------------------------------------------------- */

static struct est_recall *recall_find(const struct est *e, uint64_t fp)
{
	for (struct est_hnode *n = htab_chain(&e->recall, fp); n; n = n->next)
		if (n->hash == fp)
			return EST_CONTAINER(n, struct est_recall, node);
	return NULL;
}

static void recall_drop(struct est *e, struct est_recall *r)
{
	htab_remove(&e->recall, &r->node);
	link_del(&r->lru);
	est_release(e, r, sizeof(*r));
}

/* The entry for <fp>, created empty when missing; NULL on ENOMEM. Marked most recently used. */
static struct est_recall *recall_get(struct est *e, uint64_t fp)
{
	struct est_recall *r = recall_find(e, fp);

	if (!r) {
		r = est_zalloc(e, sizeof(*r));
		if (!r)
			return NULL;
		r->node.hash = fp;
		htab_insert(e, &e->recall, &r->node);
		link_push(&e->recall_lru, &r->lru);
	}
	link_touch(&e->recall_lru, &r->lru);
	return r;
}

/* --- metrics, labels, values ------------------------------------------------------------------- */

static size_t value_size(uint32_t len)
{
	return sizeof(struct est_value) + len + 1;
}

static size_t sample_size(uint32_t len)
{
	return sizeof(struct est_sample) + len + 1;
}

static void value_free(struct est *e, struct est_value *v)
{
	hll_deinit(e, &v->series);
	est_release(e, v, value_size(v->len));
	e->n_values--;
}

static struct est_value *value_new(struct est *e, const char *s, uint32_t len, uint64_t hash)
{
	struct est_value *v = est_alloc(e, value_size(len));

	if (!v)
		return NULL;
	hll_init(&v->series, EST_VALUE_HLL_P);
	v->hits = 0;
	v->seed = 0;
	v->hash = hash;
	v->len = len;
	memcpy(v->str, s, len);
	v->str[len] = '\0';
	e->n_values++;
	return v;
}

/* Series carrying tracked value <v>: its own count, or what it was credited when promoted. */
static double value_series(struct est_value *v)
{
	double own = hll_count(&v->series);

	return own > v->seed ? own : v->seed;
}

/* The tracked value equal to <s>, or NULL. */
static struct est_value *value_find(const struct est_label *ls, const char *s, size_t len, uint64_t hash)
{
	for (uint32_t i = 0, slot = (uint32_t)hash; i < EST_VALUE_INDEX; i++, slot++) {
		uint8_t at = ls->index[slot & (EST_VALUE_INDEX - 1)];
		struct est_value *v;

		if (!at)
			return NULL;
		v = ls->vals[at - 1];
		if (v->hash == hash && v->len == len && memcmp(v->str, s, len) == 0)
			return v;
	}
	return NULL;
}

static void index_put(struct est_label *ls, uint32_t i)
{
	uint32_t slot = (uint32_t)ls->vals[i]->hash;

	while (ls->index[slot & (EST_VALUE_INDEX - 1)])
		slot++;
	ls->index[slot & (EST_VALUE_INDEX - 1)] = (uint8_t)(i + 1);
}

static void index_rebuild(struct est_label *ls)
{
	memset(ls->index, 0, sizeof(ls->index));
	for (uint32_t i = 0; i < ls->n_vals; i++)
		index_put(ls, i);
}

static size_t label_size(uint32_t name_len)
{
	return sizeof(struct est_label) + name_len + 1;
}

static void label_free(struct est *e, struct est_label *ls)
{
	for (uint32_t i = 0; i < ls->n_vals; i++)
		value_free(e, ls->vals[i]);
	est_release(e, ls->vals, ls->cap_vals * sizeof(*ls->vals));
	for (uint32_t i = 0; i < ls->n_res; i++)
		est_release(e, ls->res[i], sample_size(ls->res[i]->len));
	est_release(e, ls->res, ls->res ? EST_RESERVOIR * sizeof(*ls->res) : 0);
	hll_deinit(e, &ls->series);
	hll_deinit(e, &ls->absent);
	hll_deinit(e, &ls->values);
	est_release(e, ls, label_size(ls->name_len));
}

/* Recompute the tail figures of <ls> when something it depends on changed. */
static void label_refresh(struct est_label *ls)
{
	double tracked = 0, distinct;

	if (!ls->dirty)
		return;
	ls->dirty = 0;
	for (uint32_t i = 0; i < ls->n_vals; i++)
		tracked += value_series(ls->vals[i]);
	distinct = hll_count(&ls->values) - ls->n_vals;
	/* The values sketch is exact while small: no value left over means no tail at all. */
	if (distinct < 0.5) {
		ls->tail_distinct = 0;
		ls->tail_series = 0;
		return;
	}
	ls->tail_distinct = distinct < 1 ? 1 : distinct;
	ls->tail_series = hll_count(&ls->series) - tracked;
	if (ls->tail_series < 0)
		ls->tail_series = 0;
}

/* Series per untracked value: the tail's average. */
static double tail_avg(const struct est_label *ls)
{
	return ls->tail_distinct > 0 ? ls->tail_series / ls->tail_distinct : 0;
}

/* Append tracked value <v> to <ls>. -ENOMEM leaves <ls> unchanged. */
static int label_track(struct est *e, struct est_label *ls, struct est_value *v)
{
	if (ls->n_vals == ls->cap_vals) {
		uint32_t cap = ls->cap_vals ? 2 * ls->cap_vals : 4;
		struct est_value **a;

		if (cap > EST_TOP_VALUES)
			cap = EST_TOP_VALUES;
		a = est_realloc(e, ls->vals, ls->cap_vals * sizeof(*a), cap * sizeof(*a));
		if (!a)
			return -ENOMEM;
		ls->vals = a;
		ls->cap_vals = cap;
	}
	ls->vals[ls->n_vals] = v;
	index_put(ls, ls->n_vals++);
	if (v->hits < ls->min_hits || ls->n_vals == 1)
		ls->min_hits = v->hits;
	return 0;
}

/* Drop the samples of value <hash> from the reservoir, keeping the others in order. */
static void reservoir_drop(struct est *e, struct est_label *ls, uint64_t hash)
{
	uint32_t kept = 0;

	for (uint32_t i = 0; i < ls->n_res; i++) {
		if (ls->res[i]->hash == hash)
			est_release(e, ls->res[i], sample_size(ls->res[i]->len));
		else
			ls->res[kept++] = ls->res[i];
	}
	ls->n_res = kept;
}

/*
 * Promote the tail value of reservoir sample <s> if it has become heavy: it holds at least
 * EST_PROMOTE_MIN_SAMPLES of the samples and its estimated occurrences are EST_PROMOTE_FACTOR
 * times those of the least tracked value, which it replaces. The newcomer is credited its
 * estimated share of the tail's series (its own sketch only sees series from now on), and its
 * samples leave the reservoir (it is no longer part of the tail), <s> included.
 */
static void maybe_promote(struct est *e, struct est_label *ls, const struct est_sample *s)
{
	uint32_t copies = 0, victim = 0;
	double occ;
	struct est_value *v;

	for (uint32_t i = 0; i < ls->n_res; i++)
		copies += ls->res[i]->hash == s->hash;
	if (copies < EST_PROMOTE_MIN_SAMPLES)
		return;
	occ = (double)copies / ls->n_res * (double)ls->tail_seen;
	if (occ <= EST_PROMOTE_FACTOR * (double)ls->min_hits)
		return;
	for (uint32_t i = 1; i < ls->n_vals; i++)
		if (ls->vals[i]->hits < ls->vals[victim]->hits)
			victim = i;
	/* The victim's hits stay a lower bound: the others and the newcomer have at least as many. */
	ls->min_hits = ls->vals[victim]->hits;
	if (occ <= EST_PROMOTE_FACTOR * (double)ls->min_hits)
		return;
	v = value_new(e, s->str, s->len, s->hash);
	if (!v)
		return;
	ls->dirty = 1;
	label_refresh(ls);
	v->seed = (double)copies / ls->n_res * ls->tail_series;
	v->hits = (uint64_t)occ;
	value_free(e, ls->vals[victim]);
	ls->vals[victim] = v;
	index_rebuild(ls);
	reservoir_drop(e, ls, v->hash);
	ls->dirty = 1;
}

/* Offer a tail occurrence of <s> to the reservoir (algorithm R over all tail occurrences). */
static void reservoir_offer(struct est *e, struct est_label *ls, const char *s, uint32_t len, uint64_t hash)
{
	struct est_sample *smp;
	uint32_t slot;

	ls->tail_seen++;
	if (!ls->res) {
		ls->res = est_alloc(e, EST_RESERVOIR * sizeof(*ls->res));
		if (!ls->res)
			return;
	}
	if (ls->n_res < EST_RESERVOIR) {
		slot = ls->n_res;
	} else {
		uint64_t j = xorshift(e) % ls->tail_seen;

		if (j >= EST_RESERVOIR)
			return;
		slot = (uint32_t)j;
	}
	smp = est_alloc(e, sample_size(len));
	if (!smp)
		return;
	smp->hash = hash;
	smp->len = len;
	memcpy(smp->str, s, len);
	smp->str[len] = '\0';
	if (slot < ls->n_res)
		est_release(e, ls->res[slot], sample_size(ls->res[slot]->len));
	else
		ls->n_res++;
	ls->res[slot] = smp;
	maybe_promote(e, ls, smp);
}

/* Count one occurrence of value <s> (hash <vh>) in a series whose label-set hash is <sh>. */
static void label_learn(struct est *e, struct est_label *ls, const char *s, size_t len, uint64_t vh, uint32_t sh)
{
	struct est_value *v;

	if (hll_add(e, &ls->series, sh) | hll_add(e, &ls->values, (uint32_t)(vh >> 32)))
		ls->dirty = 1;
	if (len > EST_MAX_VALUE_LEN)
		return; /* part of the tail figures, too long to keep */
	v = value_find(ls, s, len, vh);
	if (!v && ls->n_vals < EST_TOP_VALUES) {
		v = value_new(e, s, (uint32_t)len, vh);
		if (v && label_track(e, ls, v) < 0) {
			value_free(e, v);
			v = NULL;
		}
		if (!v)
			return;
		ls->dirty = 1;
	}
	if (!v) {
		reservoir_offer(e, ls, s, (uint32_t)len, vh);
		return;
	}
	v->hits++;
	if (hll_add(e, &v->series, sh))
		ls->dirty = 1;
}

/* Index of label <name> in <m>->labels, or -1. */
static int label_find(const struct est_metric *m, const char *name, size_t len, uint64_t hash)
{
	for (uint32_t i = 0; i < m->n_labels; i++) {
		const struct est_label *ls = m->labels[i];

		if (ls->hash == hash && ls->name_len == len && memcmp(ls->name, name, len) == 0)
			return (int)i;
	}
	return -1;
}

/*
 * Index of label <name> in <m>->labels, created when missing; -1 past EST_MAX_LABELS or on
 * ENOMEM. Called before the series being learned is added to <m>'s sketch: a label first seen
 * now was absent from every series counted so far.
 */
static int label_get(struct est *e, struct est_metric *m, const char *name, size_t len, uint64_t hash)
{
	struct est_label *ls;
	int i = label_find(m, name, len, hash);

	if (i >= 0)
		return i;
	if (m->n_labels == EST_MAX_LABELS)
		return -1;
	if (m->n_labels == m->cap_labels) {
		uint32_t cap = m->cap_labels ? 2 * m->cap_labels : 4;
		struct est_label **a = est_realloc(e, m->labels, m->cap_labels * sizeof(*a), cap * sizeof(*a));

		if (!a)
			return -1;
		m->labels = a;
		m->cap_labels = cap;
	}
	ls = est_zalloc(e, label_size((uint32_t)len));
	if (!ls)
		return -1;
	ls->hash = hash;
	hll_init(&ls->series, EST_LABEL_HLL_P);
	hll_init(&ls->absent, EST_LABEL_HLL_P);
	hll_init(&ls->values, EST_LABEL_HLL_P);
	ls->absent_base = hll_count(&m->series);
	ls->name_len = (uint32_t)len;
	memcpy(ls->name, name, len);
	m->labels[m->n_labels] = ls;
	return (int)m->n_labels++;
}

static size_t tenant_size(uint32_t len)
{
	return sizeof(struct est_tenant) + len + 1;
}

static size_t metric_size(uint32_t len)
{
	return sizeof(struct est_metric) + len + 1;
}

static struct est_tenant *tenant_find(const struct est *e, const char *name, size_t len, uint64_t hash)
{
	for (struct est_hnode *n = htab_chain(&e->tenants, hash); n; n = n->next) {
		struct est_tenant *t = EST_CONTAINER(n, struct est_tenant, node);

		if (n->hash == hash && t->name_len == len && memcmp(t->name, name, len) == 0)
			return t;
	}
	return NULL;
}

/*
 * Hash of (tenant <t>, metric name hashed <name_hash>): est_learn_series has the name's XXH3
 * already. The tenant side is mixed so that swapping tenant and metric names changes the hash.
 */
static uint64_t metric_hash(const struct est_tenant *t, uint64_t name_hash)
{
	return name_hash ^ mix64(t->node.hash);
}

/* The statistics of (<t>, <name>), <name_hash> its XXH3, or NULL. */
static struct est_metric *metric_find(const struct est *e, const struct est_tenant *t, const char *name, size_t len,
				      uint64_t name_hash)
{
	uint64_t hash = metric_hash(t, name_hash);

	for (struct est_hnode *n = htab_chain(&e->metrics, hash); n; n = n->next) {
		struct est_metric *m = EST_CONTAINER(n, struct est_metric, node);

		if (n->hash == hash && m->tenant == t && m->name_len == len && memcmp(m->name, name, len) == 0)
			return m;
	}
	return NULL;
}

static void metric_drop(struct est *e, struct est_metric *m)
{
	struct est_tenant *t = m->tenant;

	seen_forget(e); /* its series must be learned again when next seen */
	htab_remove(&e->metrics, &m->node);
	link_del(&m->lru);
	link_del(&m->siblings);
	for (uint32_t i = 0; i < m->n_labels; i++)
		label_free(e, m->labels[i]);
	est_release(e, m->labels, m->cap_labels * sizeof(*m->labels));
	hll_deinit(e, &m->series);
	est_release(e, m, metric_size(m->name_len));
	if (link_empty(&t->metrics)) {
		htab_remove(&e->tenants, &t->node);
		est_release(e, t, tenant_size(t->name_len));
	}
}

/*
 * The statistics of (<tenant>, <name>), created when missing; NULL on ENOMEM. Most recently used.
 * <th> and <name_hash> are the XXH3 of <tenant> and <name>.
 */
static struct est_metric *metric_get(struct est *e, const char *tenant, size_t tlen, uint64_t th, const char *name,
				     size_t len, uint64_t name_hash)
{
	struct est_tenant *t = tenant_find(e, tenant, tlen, th);
	struct est_metric *m = NULL;

	if (t)
		m = metric_find(e, t, name, len, name_hash);
	if (m) {
		link_touch(&e->metric_lru, &m->lru);
		return m;
	}
	if (!t) {
		t = est_zalloc(e, tenant_size((uint32_t)tlen));
		if (!t)
			return NULL;
		t->node.hash = th;
		t->name_len = (uint32_t)tlen;
		memcpy(t->name, tenant, tlen);
		link_init(&t->metrics);
		htab_insert(e, &e->tenants, &t->node);
	}
	m = est_zalloc(e, metric_size((uint32_t)len));
	if (!m) {
		if (link_empty(&t->metrics)) {
			htab_remove(&e->tenants, &t->node);
			est_release(e, t, tenant_size(t->name_len));
		}
		return NULL;
	}
	m->node.hash = metric_hash(t, name_hash);
	m->tenant = t;
	hll_init(&m->series, EST_METRIC_HLL_P);
	m->name_len = (uint32_t)len;
	memcpy(m->name, name, len);
	htab_insert(e, &e->metrics, &m->node);
	link_push(&e->metric_lru, &m->lru);
	link_push(&t->metrics, &m->siblings);
	return m;
}

/* --- budget ---------------------------------------------------------------------------------- */

/*
 * Get back under max_memory: least recently used recall entries first (cheap to relearn, and
 * a probe can answer again), then the recently-learned filter if it is larger than the budget
 * now affords (a lowered budget: it comes back at its new size on the next learn), then least
 * recently used metrics; finally give back the filter and hash buckets.
 */
static void enforce_budget(struct est *e)
{
	while (e->mem > e->max_memory && !link_empty(&e->recall_lru)) {
		recall_drop(e, EST_CONTAINER(e->recall_lru.prev, struct est_recall, lru));
		e->evictions++;
	}
	if (e->mem > e->max_memory && e->seen_keys > seen_want(e->max_memory))
		seen_release(e);
	while (e->mem > e->max_memory && !link_empty(&e->metric_lru)) {
		metric_drop(e, EST_CONTAINER(e->metric_lru.prev, struct est_metric, lru));
		e->evictions++;
	}
	if (e->mem > e->max_memory) {
		seen_release(e);
		htab_shrink(e, &e->recall);
		htab_shrink(e, &e->metrics);
		htab_shrink(e, &e->tenants);
	}
}

/* --- hints ----------------------------------------------------------------------------------- */

static void hints_free(struct est_hints *h)
{
	for (size_t i = 0; h->slots && i <= h->mask; i++)
		free(h->slots[i].metric);
	free(h->slots);
	memset(h, 0, sizeof(*h));
}

static struct est_hint_slot *hint_slot(const struct est_hints *h, const char *metric, size_t len, uint64_t hash)
{
	for (size_t i = hash;; i++) {
		struct est_hint_slot *s = &h->slots[i & h->mask];

		if (!s->metric || (s->hash == hash && strlen(s->metric) == len && memcmp(s->metric, metric, len) == 0))
			return s;
	}
}

/* Copy <n> hints into <out> (a later duplicate replaces an earlier one). 0 or -ENOMEM. */
static int hints_build(struct est_hints *out, const struct est_hint *hints, size_t n)
{
	size_t slots = 4;

	memset(out, 0, sizeof(*out));
	if (n == 0)
		return 0;
	while (slots < 2 * n)
		slots *= 2;
	out->slots = calloc(slots, sizeof(*out->slots));
	if (!out->slots)
		return -ENOMEM;
	out->mask = slots - 1;
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(hints[i].metric);
		uint64_t hash = XXH3_64bits(hints[i].metric, len);
		struct est_hint_slot *s = hint_slot(out, hints[i].metric, len, hash);

		if (!s->metric) {
			s->metric = strdup(hints[i].metric);
			if (!s->metric) {
				hints_free(out);
				return -ENOMEM;
			}
			s->hash = hash;
			out->n++;
		}
		s->series = hints[i].series;
	}
	return 0;
}

static const struct est_hint_slot *hint_find(const struct est_hints *h, const char *metric)
{
	size_t len = strlen(metric);
	const struct est_hint_slot *s;

	if (!h->n)
		return NULL;
	s = hint_slot(h, metric, len, XXH3_64bits(metric, len));
	return s->metric ? s : NULL;
}

/* --- lifecycle ------------------------------------------------------------------------------- */

const char *est_source_name(enum est_source s)
{
	static const char *const names[] = {
		[EST_SOURCE_DEFAULT] = "default", [EST_SOURCE_RECALL] = "recall", [EST_SOURCE_STATS] = "stats",
		[EST_SOURCE_PROBE] = "probe",     [EST_SOURCE_HINT] = "hint",
	};

	return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "default";
}

static void apply_scalars(struct est *e, const struct est_settings *s)
{
	e->scrape_interval_ms = s->scrape_interval_ms > 0 ? s->scrape_interval_ms : EST_DEFAULT_SCRAPE_MS;
	e->max_memory = s->max_memory;
}

struct est *est_new(const struct est_settings *s)
{
	struct est *e = calloc(1, sizeof(*e));

	if (!e)
		return NULL;
	apply_scalars(e, s);
	/* The empty tables are part of the budget; allow them even under an absurdly small one. */
	link_init(&e->recall_lru);
	link_init(&e->metric_lru);
	e->rng = EST_RNG_SEED;
	if (htab_init(e, &e->recall) < 0 || htab_init(e, &e->metrics) < 0 || htab_init(e, &e->tenants) < 0 ||
	    hints_build(&e->hints, s->hints, s->n_hints) < 0) {
		est_free(e);
		return NULL;
	}
	return e;
}

void est_free(struct est *e)
{
	if (!e)
		return;
	while (!link_empty(&e->recall_lru))
		recall_drop(e, EST_CONTAINER(e->recall_lru.prev, struct est_recall, lru));
	while (!link_empty(&e->metric_lru))
		metric_drop(e, EST_CONTAINER(e->metric_lru.prev, struct est_metric, lru));
	seen_release(e);
	htab_deinit(e, &e->recall);
	htab_deinit(e, &e->metrics);
	htab_deinit(e, &e->tenants);
	hints_free(&e->hints);
	free(e);
}

int est_configure(struct est *e, const struct est_settings *s)
{
	struct est_hints hints;

	if (hints_build(&hints, s->hints, s->n_hints) < 0)
		return -ENOMEM;
	hints_free(&e->hints);
	e->hints = hints;
	apply_scalars(e, s);
	/* A raised budget affords a larger filter: the next learn allocates it. A lowered one is
	 * handled by enforce_budget (only when memory is short). */
	if (e->seen_keys < seen_want(e->max_memory))
		seen_release(e);
	seen_forget(e);
	enforce_budget(e);
	return 0;
}

void est_get_stats(const struct est *e, struct est_stats *out)
{
	out->memory_bytes = e->mem;
	out->memory_limit = e->max_memory;
	out->recall_entries = e->recall.n;
	out->metrics = e->metrics.n;
	out->label_values = e->n_values;
	out->evictions = e->evictions;
	out->learned_series = e->learned_series;
	out->learn_skipped = e->learn_skipped;
	out->learn_forgets = e->seen_gen;
}

/* --- fingerprint ----------------------------------------------------------------------------- */

static int matcher_cmp(const struct proto_matcher *a, const struct proto_matcher *b)
{
	int c = strcmp(a->name, b->name);

	if (c)
		return c;
	if (a->type != b->type)
		return a->type < b->type ? -1 : 1;
	return strcmp(a->value, b->value);
}

static int matcher_ptr_cmp(const void *a, const void *b)
{
	return matcher_cmp(*(const struct proto_matcher *const *)a, *(const struct proto_matcher *const *)b);
}

static uint64_t fp_matcher(uint64_t h, const struct proto_matcher *m)
{
	uint8_t type = (uint8_t)m->type;

	/* Each field hashed on its own, seeded by the hash so far: no separator needed. */
	h = XXH3_64bits_withSeed(m->name, strlen(m->name), h);
	h = XXH3_64bits_withSeed(&type, 1, h);
	return XXH3_64bits_withSeed(m->value, strlen(m->value), h);
}

uint64_t est_fingerprint(const char *tenant, const struct proto_query *q)
{
	const struct proto_matcher *stack[EST_FP_STACK], **ord = stack;
	uint64_t h = XXH3_64bits(tenant ? tenant : "", tenant ? strlen(tenant) : 0);
	size_t n = q->n_matchers;

	if (n > EST_FP_STACK) {
		ord = malloc(n * sizeof(*ord)); /* hostile selectors only */
		if (!ord) {
			/* No room to sort: hash in the given order (a repeat in another order misses recall). */
			for (size_t i = 0; i < n; i++)
				h = fp_matcher(h, &q->matchers[i]);
			return h;
		}
	}
	for (size_t i = 0; i < n; i++)
		ord[i] = &q->matchers[i];
	qsort(ord, n, sizeof(*ord), matcher_ptr_cmp);
	for (size_t i = 0; i < n; i++)
		if (i == 0 || matcher_cmp(ord[i - 1], ord[i]) != 0)
			h = fp_matcher(h, ord[i]);
	if (ord != stack)
		free(ord);
	return h;
}

/* --- estimation ------------------------------------------------------------------------------ */

/* One matcher of the query being estimated, prepared once per estimate. */
struct est_matcher {
	const struct proto_matcher *m; /* (ref) */
	struct limiter_regex *re;      /* RE/NRE: compiled (a reference); NULL when invalid (ignored) */
	uint64_t name_hash;            /* XXH3 of the label name */
	size_t name_len;
	int literal;                   /* RE/NRE: a plain alternation of literal values */
};

/* The prepared query: __name__ matchers apart from the others. */
struct est_prepared {
	struct est_matcher name[EST_MAX_MATCHERS];  /* matchers on __name__ */
	size_t n_name;
	struct est_matcher label[EST_MAX_MATCHERS]; /* every other matcher */
	size_t n_label;
	const char *metric;                         /* value of a non-empty __name__ equality, or NULL */
};

/* Regex metacharacters: a pattern without them (other than | and escaped punctuation) is literal. */
static int is_meta(char c)
{
	return c && strchr(".^$*+?()[]{}", c) != NULL;
}

/* 1 if <p> is an alternation of literals (`a|b\.c|`): escapes only on punctuation. */
static int literal_alternation(const char *p)
{
	for (; *p; p++) {
		if (*p == '\\') {
			p++;
			if (!*p || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))
				return 0;
		} else if (is_meta(*p)) {
			return 0;
		}
	}
	return 1;
}

static int is_regex(enum proto_match_type t)
{
	return t == PROTO_MATCH_RE || t == PROTO_MATCH_NRE;
}

static int is_negative(enum proto_match_type t)
{
	return t == PROTO_MATCH_NEQ || t == PROTO_MATCH_NRE;
}

static void prepare_one(struct est_matcher *em, const struct proto_matcher *m)
{
	char err[128];

	em->m = m;
	em->name_len = strlen(m->name);
	em->name_hash = XXH3_64bits(m->name, em->name_len);
	em->re = NULL;
	em->literal = 0;
	if (is_regex(m->type)) {
		em->re = limiter_regex_get(m->value, err, sizeof(err));
		em->literal = em->re && literal_alternation(m->value);
	}
}

/* Sort <q>'s matchers into <p>, compiling regexes. Matchers past EST_MAX_MATCHERS are ignored. */
static void prepare(struct est_prepared *p, const struct proto_query *q)
{
	p->n_name = p->n_label = 0;
	p->metric = NULL;
	for (size_t i = 0; i < q->n_matchers; i++) {
		const struct proto_matcher *m = &q->matchers[i];

		if (strcmp(m->name, "__name__") == 0) {
			if (p->n_name == EST_MAX_MATCHERS)
				continue;
			if (m->type == PROTO_MATCH_EQ && m->value[0] && !p->metric)
				p->metric = m->value;
			prepare_one(&p->name[p->n_name++], m);
		} else if (p->n_label < EST_MAX_MATCHERS) {
			prepare_one(&p->label[p->n_label++], m);
		}
	}
}

static void unprepare(struct est_prepared *p)
{
	for (size_t i = 0; i < p->n_name; i++)
		limiter_regex_release(p->name[i].re);
	for (size_t i = 0; i < p->n_label; i++)
		limiter_regex_release(p->label[i].re);
}

/* Does metric name <name> satisfy every __name__ matcher? A regex that hits a limit counts as a
 * match either way (the estimate errs high). Invalid regexes are ignored. */
static int name_holds(const struct est_prepared *p, const char *name, size_t len)
{
	for (size_t i = 0; i < p->n_name; i++) {
		const struct est_matcher *em = &p->name[i];
		int eq;

		switch (em->m->type) {
		case PROTO_MATCH_EQ:
		case PROTO_MATCH_NEQ:
			eq = strlen(em->m->value) == len && memcmp(em->m->value, name, len) == 0;
			if (eq != (em->m->type == PROTO_MATCH_EQ))
				return 0;
			break;
		case PROTO_MATCH_RE:
		case PROTO_MATCH_NRE:
			if (!em->re)
				break;
			eq = limiter_regex_match(em->re, name, len);
			if (eq == (em->m->type == PROTO_MATCH_RE ? 0 : 1))
				return 0;
			break;
		}
	}
	return 1;
}

/*
 * Series lacking label <ls> in its metric of <total> series. Those seen lacking it (A) and those
 * the metric had before the label first appeared (B) overlap when old series are learned again,
 * so the figure is total minus carriers, kept within [max(A, B), A + B]: exact (0) for the usual
 * label that every series has, and free of sketch noise when the label came with the first series.
 */
static double absent_series(struct est_label *ls, double total)
{
	double a = hll_count(&ls->absent), b = ls->absent_base;
	double lo = a > b ? a : b, hi = a + b, est = total - hll_count(&ls->series);

	return est < lo ? lo : est > hi ? hi : est;
}

/* Series of the metric (of <total>) carrying <ls> with value <s> ("" = lacking the label). */
static double eq_series(struct est_label *ls, double total, const char *s, size_t len)
{
	struct est_value *v;

	if (len == 0)
		return absent_series(ls, total);
	if (len <= EST_MAX_VALUE_LEN) {
		v = value_find(ls, s, len, XXH3_64bits(s, len));
		if (v)
			return value_series(v);
	}
	return tail_avg(ls);
}

/* Series matched by a literal alternation: the sum over its branches, each unescaped. */
static double literal_series(struct est_label *ls, double total, const char *p)
{
	char buf[EST_MAX_VALUE_LEN + 1];
	double sum = 0;

	for (;;) {
		size_t len = 0;

		for (; *p && *p != '|'; p++) {
			if (*p == '\\')
				p++;
			if (len < sizeof(buf))
				buf[len] = *p;
			len++;
		}
		/* A branch too long to be tracked can only be a tail value. */
		sum += len < sizeof(buf) ? eq_series(ls, total, buf, len) : tail_avg(ls);
		if (!*p)
			return sum;
		p++;
	}
}

/*
 * Series matched by regex <re>: the absent share when it matches "", every tracked value it
 * matches, and the tail in proportion to the reservoir samples it matches. When it matches no
 * tracked value and no sample, one average tail value is assumed (a selector someone wrote
 * probably matches something the samples missed). A match that hits a limit counts as a match.
 */
static double regex_series(struct est_label *ls, double total, const struct limiter_regex *re)
{
	double sum = 0;
	int any = 0;
	uint32_t hits = 0;

	if (limiter_regex_match(re, "", 0) != 0)
		sum += eq_series(ls, total, "", 0);
	for (uint32_t i = 0; i < ls->n_vals; i++) {
		if (limiter_regex_match(re, ls->vals[i]->str, ls->vals[i]->len) != 0) {
			sum += value_series(ls->vals[i]);
			any = 1;
		}
	}
	if (ls->tail_series <= 0)
		return sum;
	if (ls->n_res == 0)
		return sum + ls->tail_series; /* nothing sampled (all too long): assume all */
	for (uint32_t i = 0; i < ls->n_res; i++)
		hits += limiter_regex_match(re, ls->res[i]->str, ls->res[i]->len) != 0;
	if (hits)
		return sum + ls->tail_series * hits / ls->n_res;
	return any ? sum : sum + tail_avg(ls);
}

/* Share (0..1) of metric <m>'s <total> series that matcher <em> keeps. */
static double matcher_share(struct est_metric *m, double total, const struct est_matcher *em)
{
	int li = label_find(m, em->m->name, em->name_len, em->name_hash);
	struct est_label *ls = li >= 0 ? m->labels[li] : NULL;
	double hit;

	if (!ls || total <= 0)
		return 1; /* never seen on this metric: fall back to the metric's total */
	if (is_regex(em->m->type) && !em->re)
		return 1; /* invalid: the store will refuse it; do not guess */
	label_refresh(ls);
	if (!is_regex(em->m->type))
		hit = eq_series(ls, total, em->m->value, strlen(em->m->value));
	else if (em->literal)
		hit = literal_series(ls, total, em->m->value);
	else
		hit = regex_series(ls, total, em->re);
	hit /= total;
	if (hit > 1)
		hit = 1;
	return is_negative(em->m->type) ? 1 - hit : hit;
}

/* Estimated series of metric <m> under <p>'s label matchers: total x product of the shares. */
static double metric_series(struct est_metric *m, const struct est_prepared *p)
{
	double total = hll_count(&m->series), s = total;

	for (size_t i = 0; i < p->n_label && s > 0; i++)
		s *= matcher_share(m, total, &p->label[i]);
	return s;
}

/* Saturating conversion of a non-negative estimate, rounded up. */
static uint64_t round_up(double x)
{
	if (!(x > 0))
		return 0;
	if (x >= 18446744073709549568.0) /* the largest double below 2^64 */
		return UINT64_MAX;
	return (uint64_t)ceil(x);
}

/* Samples per series over <range_ms>: one per scrape interval, plus one. */
static double samples_per_series(const struct est *e, int64_t range_ms)
{
	return floor((double)range_ms / (double)e->scrape_interval_ms) + 1;
}

/* <v> x <num> / <den> rounded up and saturated; <v> itself when <den> is 0. */
static uint64_t scale(uint64_t v, uint64_t num, uint64_t den)
{
	return den ? round_up((double)v * (double)num / (double)den) : v;
}

/* Answer from recall entry <r> for a query over <range_ms>. */
static void recall_answer(const struct est *e, const struct est_recall *r, int64_t range_ms, struct est_result *out)
{
	out->source = r->source;
	out->series = r->series;
	out->truncated = r->truncated;
	if (r->source == EST_SOURCE_RECALL && r->range_ms == range_ms) {
		out->samples = r->samples; /* the same query again: exactly what was seen */
		out->bytes = r->bytes;
	} else if (r->source == EST_SOURCE_RECALL && r->range_ms > 0) {
		out->samples = scale(r->samples, (uint64_t)range_ms, (uint64_t)r->range_ms);
		out->bytes = scale(r->bytes, (uint64_t)range_ms, (uint64_t)r->range_ms);
	} else {
		/* A probe (series only), or learned over an empty range: samples from the scrape
		 * interval, bytes at the learned bytes per sample when there is one. */
		out->samples = round_up((double)r->series * samples_per_series(e, range_ms));
		out->bytes = r->samples ? scale(r->bytes, out->samples, r->samples) : 0;
	}
}

/* Running totals over the metrics an estimate covers. */
struct est_sum {
	double series;
	double bytes;
	size_t metrics; /* metrics with stats that the selector names */
	size_t partial; /* of those, metrics only ever seen through narrower selectors */
};

static void sum_metric(const struct est *e, struct est_metric *m, const struct est_prepared *p, int64_t range_ms,
		       struct est_sum *sum)
{
	double s = metric_series(m, p);

	sum->series += s;
	sum->bytes += s * samples_per_series(e, range_ms) * m->bytes_per_sample;
	sum->metrics++;
	if (!m->complete)
		sum->partial++;
}

/* Statistics: the named metric, or every known metric of <tenant> that the name matchers allow. */
static void stats_estimate(struct est *e, const char *tenant, const struct est_prepared *p, int64_t range_ms,
			   struct est_sum *sum)
{
	size_t tlen = strlen(tenant);
	const struct est_tenant *t = tenant_find(e, tenant, tlen, XXH3_64bits(tenant, tlen));
	size_t scanned = 0;

	if (!t)
		return;
	if (p->metric) {
		size_t len = strlen(p->metric);
		struct est_metric *m = metric_find(e, t, p->metric, len, XXH3_64bits(p->metric, len));

		if (!m)
			return;
		link_touch(&e->metric_lru, &m->lru);
		if (name_holds(p, m->name, m->name_len))
			sum_metric(e, m, p, range_ms, sum);
		else
			sum->metrics++; /* known, but excluded by another __name__ matcher: 0 series */
		return;
	}
	for (struct est_link *l = t->metrics.next; l != &t->metrics && scanned < EST_NAME_SCAN_MAX;
	     l = l->next, scanned++) {
		struct est_metric *m = EST_CONTAINER(l, struct est_metric, siblings);

		if (name_holds(p, m->name, m->name_len))
			sum_metric(e, m, p, range_ms, sum);
	}
}

/* Hints: the named metric's figure, or the sum over the hinted names the name matchers allow. */
static void hint_estimate(const struct est *e, const struct est_prepared *p, struct est_sum *sum)
{
	const struct est_hints *h = &e->hints;

	if (p->metric) {
		const struct est_hint_slot *s = hint_find(h, p->metric);

		if (s && name_holds(p, s->metric, strlen(s->metric))) {
			sum->series += (double)s->series;
			sum->metrics++;
		}
		return;
	}
	for (size_t i = 0; h->n && i <= h->mask; i++) {
		const struct est_hint_slot *s = &h->slots[i];

		if (s->metric && name_holds(p, s->metric, strlen(s->metric))) {
			sum->series += (double)s->series;
			sum->metrics++;
		}
	}
}

void est_estimate(struct est *e, const char *tenant, const struct proto_query *q, struct est_result *out)
{
	int64_t range_ms = q->end_ms > q->start_ms ? q->end_ms - q->start_ms : 0;
	struct est_sum sum = { 0 };
	struct est_prepared p;
	struct est_recall *r;

	memset(out, 0, sizeof(*out));
	tenant = tenant ? tenant : "";
	out->fingerprint = est_fingerprint(tenant, q);
	r = recall_find(e, out->fingerprint);
	if (r) {
		link_touch(&e->recall_lru, &r->lru);
		recall_answer(e, r, range_ms, out);
		return;
	}
	prepare(&p, q);
	stats_estimate(e, tenant, &p, range_ms, &sum);
	if (sum.metrics) {
		out->source = EST_SOURCE_STATS;
		/*
		 * Stats learned only through narrower selectors (5 namespaces of 20) undercount a
		 * broader one, and a __name__ regex may match metrics never seen: a lower bound.
		 */
		out->lower_bound = sum.partial > 0 || !p.metric;
	} else {
		hint_estimate(e, &p, &sum);
		if (sum.metrics)
			out->source = EST_SOURCE_HINT;
	}
	unprepare(&p);
	out->series = round_up(sum.series);
	out->samples = round_up((double)out->series * samples_per_series(e, range_ms));
	out->bytes = round_up(sum.bytes);
}

/* --- learning -------------------------------------------------------------------------------- */

/* The hashes of one label, computed once for the label-set hash and reused to learn it. */
struct est_label_hash {
	uint64_t name;  /* XXH3 of the name */
	uint64_t value; /* XXH3 of the value */
};

void est_learn_series(struct est *e, const char *tenant, const struct proto_label *labels, size_t n_labels)
{
	struct est_label_hash lh[EST_LEARN_STACK]; /* the first labels' hashes (more are hashed again) */
	const struct proto_label *name = NULL;
	struct est_metric *m;
	uint64_t set = 0, present = 0, name_hash = 0, th, tag;
	size_t tlen;
	uint32_t sh;

	tenant = tenant ? tenant : "";
	for (size_t i = 0; i < n_labels; i++) {
		const struct proto_label *l = &labels[i];
		uint64_t nh = XXH3_64bits(l->name, l->name_len), vh = XXH3_64bits(l->value, l->value_len);

		if (i < EST_LEARN_STACK)
			lh[i] = (struct est_label_hash){ nh, vh };
		if (!name && l->name_len == 8 && memcmp(l->name, "__name__", 8) == 0) {
			name = l;
			name_hash = vh;
		}
		/* Order-independent label-set hash: the sum of a mixed hash per (name, value) pair. */
		set += mix64(nh * 31 + vh);
	}
	tlen = strlen(tenant);
	if (!name || name->value_len == 0 || name->value_len > EST_MAX_NAME_LEN || tlen > EST_MAX_NAME_LEN)
		return; /* no metric to file it under */
	th = XXH3_64bits(tenant, tlen);
	if (seen_test(e, set ^ th, &tag)) {
		e->learn_skipped++; /* learned recently: nothing would change but the counts of repeats */
		return;
	}
	m = metric_get(e, tenant, tlen, th, name->value, name->value_len, name_hash);
	if (!m) {
		enforce_budget(e); /* the filter may just have been allocated */
		return;
	}
	sh = (uint32_t)(set >> 32);
	for (size_t i = 0; i < n_labels; i++) {
		const struct proto_label *l = &labels[i];
		struct est_label_hash h;
		int li;

		/* An empty value is an absent label; empty or huge names are not kept. */
		if (l == name || l->value_len == 0 || l->name_len == 0 || l->name_len > EST_MAX_NAME_LEN)
			continue;
		h = i < EST_LEARN_STACK ? lh[i]
					: (struct est_label_hash){ XXH3_64bits(l->name, l->name_len),
								   XXH3_64bits(l->value, l->value_len) };
		li = label_get(e, m, l->name, l->name_len, h.name);
		if (li < 0)
			continue;
		label_learn(e, m->labels[li], l->value, l->value_len, h.value, sh);
		present |= 1ULL << li;
	}
	/* The metric's other labels are absent from this series (EST_MAX_LABELS fits the mask). */
	for (uint32_t i = 0; i < m->n_labels; i++)
		if (!(present & (1ULL << i)))
			hll_add(e, &m->labels[i]->absent, sh);
	hll_add(e, &m->series, sh); /* last: label_get() counts the series before this one */
	e->learned_series++;
	seen_put(e, tag); /* before enforce_budget: evicting this very metric forgets it again */
	enforce_budget(e);
}

void est_learn_query(struct est *e, const char *tenant, const struct proto_query *q, uint64_t series,
		     uint64_t samples, uint64_t bytes)
{
	est_learn_query_fp(e, tenant, q, est_fingerprint(tenant ? tenant : "", q), series, samples, bytes);
}

void est_learn_query_fp(struct est *e, const char *tenant, const struct proto_query *q, uint64_t fp,
			uint64_t series, uint64_t samples, uint64_t bytes)
{
	struct est_recall *r = recall_get(e, fp);
	struct est_prepared p;

	if (r) {
		r->source = EST_SOURCE_RECALL;
		r->series = series;
		r->samples = samples;
		r->bytes = bytes;
		r->range_ms = q->end_ms > q->start_ms ? q->end_ms - q->start_ms : 0;
		r->truncated = 0;
	}
	/* A query naming one metric also teaches that metric's bytes per sample, and a query for
	 * the bare metric means its stats have seen every series. */
	prepare(&p, q);
	if (p.metric) {
		const char *t = tenant ? tenant : "";
		size_t tlen = strlen(t);
		const struct est_tenant *ten = tenant_find(e, t, tlen, XXH3_64bits(t, tlen));
		size_t len = strlen(p.metric);
		struct est_metric *m = ten ? metric_find(e, ten, p.metric, len, XXH3_64bits(p.metric, len)) : NULL;

		if (m && samples > 0) {
			double bps = (double)bytes / (double)samples;
			m->bytes_per_sample = m->bytes_per_sample > 0
						      ? EST_BPS_KEEP * m->bytes_per_sample + (1 - EST_BPS_KEEP) * bps
						      : bps;
		}
		if (m && p.n_label == 0 && p.n_name == 1)
			m->complete = 1;
	}
	unprepare(&p);
	enforce_budget(e);
}

void est_learn_probe(struct est *e, const char *tenant, const struct proto_query *q, uint64_t series, int truncated)
{
	uint64_t fp = est_fingerprint(tenant ? tenant : "", q);
	struct est_recall *r = recall_find(e, fp);

	if (r && r->source == EST_SOURCE_RECALL) {
		link_touch(&e->recall_lru, &r->lru); /* observed beats probed */
		return;
	}
	r = recall_get(e, fp);
	if (r) {
		r->source = EST_SOURCE_PROBE;
		r->series = series;
		r->samples = r->bytes = 0;
		r->range_ms = q->end_ms > q->start_ms ? q->end_ms - q->start_ms : 0;
		r->truncated = truncated != 0;
	}
	enforce_budget(e);
}

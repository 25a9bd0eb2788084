/*
 * bench_backoff: client-go's never-forgotten backoff keys replayed against the bounded table,
 * and the cost of one failure.
 *
 *   bench_backoff [--keys N] [--max-keys N] [--batches N]
 *
 *   incident   --keys distinct keys (1,000,000) each fail once and are never forgotten, as the
 *              items a client-go controller never called Forget on. Run twice, each in a forked
 *              child so that the RSS figures are its own:
 *                promguard  backoff.h with max_keys --max-keys (10,000, the default of
 *                           queue.max_tracked_keys) and the other queue.* defaults;
 *                unbounded  a map of key -> failures that grows with every new key, as
 *                           client-go's ItemExponentialFailureRateLimiter.failures does, written
 *                           here only: open addressing, 16-byte slots, doubled at 3/4 full (a
 *                           leaner map than Go's, so its figures are a floor).
 *              VmRSS and tracked keys at 0, 10%, 25%, 50%, 75% and 100% of the keys;
 *   pair       median ns per backoff_when() + backoff_forget() pair, over --batches batches of
 *              1,000 pairs: a new key each time on a table holding max_keys - 1 other keys
 *              (the common path: a request defers, then ends), and a key another request already
 *              holds (a second hold on existing state).
 * Prints two markdown tables (bench/backoff.sh adds notes and writes bench/RESULTS.md).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "limiter/backoff.h"

#define BATCH 1000         /* pairs per timed batch */
#define WARMUP_BATCHES 100
#define N_POINTS 6         /* RSS checkpoints */
#define MAP_MIN_SLOTS 16   /* the unbounded map's first size */
#define MAX_BATCHES 100000

/* The queue.* defaults (proxy/conf.c) and the proxy's jitter (proxy/flow.c). */
#define DEF_BASE_MS 50
#define DEF_MAX_MS 5000
#define DEF_RATE 100
#define DEF_BURST 1000
#define DEF_JITTER 0.2

/* Checkpoints as fractions of --keys, in thousandths. */
static const unsigned point_permille[N_POINTS] = { 0, 100, 250, 500, 750, 1000 };

struct opts {
	uint64_t keys;
	uint32_t max_keys;
	unsigned batches;
};

/* What a forked incident child reports. */
struct incident {
	uint64_t rss_kib[N_POINTS]; /* VmRSS at each checkpoint */
	uint64_t tracked[N_POINTS]; /* keys with state at each checkpoint */
	uint64_t evictions;         /* promguard only */
	uint64_t bound_broken;      /* failures after which tracked > max_keys (promguard only) */
	double ns_per_failure;      /* wall time of the replay / keys */
};

/* --- clock, memory, keys ---------------------------------------------------------------------- */

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* A "VmRSS:" style line of /proc/self/status in KiB, or 0. */
static uint64_t status_kib(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	uint64_t v = 0;
	size_t n = strlen(key);

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, key, n) == 0) {
			v = strtoull(line + n, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

/* The i-th distinct key: splitmix64, so keys look like the XXH3 fingerprints the proxy uses. */
static uint64_t key_of(uint64_t i)
{
	uint64_t z = i * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static struct backoff_settings defaults(uint32_t max_keys)
{
	return (struct backoff_settings){ .base_delay_ms = DEF_BASE_MS, .max_delay_ms = DEF_MAX_MS,
					  .max_keys = max_keys, .rate = DEF_RATE, .burst = DEF_BURST,
					  .jitter = DEF_JITTER, .seed = 42 };
}

/* --- the unbounded map (comparison only) ------------------------------------------------------ */

/* client-go's failures map[interface{}]int, reduced to a C open-addressing table. */
struct map_slot {
	uint64_t key;
	uint32_t failures; /* 0: empty (a present key has failed at least once) */
	uint32_t pad;
};

struct umap {
	struct map_slot *slots;
	uint64_t cap, len; /* cap is a power of two */
};

static struct map_slot *map_find(struct map_slot *slots, uint64_t cap, uint64_t key)
{
	uint64_t i = (key * 0x9e3779b97f4a7c15ULL) & (cap - 1);

	while (slots[i].failures && slots[i].key != key)
		i = (i + 1) & (cap - 1);
	return &slots[i];
}

static int map_grow(struct umap *m)
{
	uint64_t cap = m->cap ? m->cap * 2 : MAP_MIN_SLOTS;
	struct map_slot *slots = calloc(cap, sizeof(*slots));

	if (!slots)
		return -ENOMEM;
	for (uint64_t i = 0; i < m->cap; i++)
		if (m->slots[i].failures)
			*map_find(slots, cap, m->slots[i].key) = m->slots[i];
	free(m->slots);
	m->slots = slots;
	m->cap = cap;
	return 0;
}

/* client-go's When(): failures[item]++, then base x 2^(failures - 1) capped at max. */
__attribute__((noinline)) static int64_t map_when(struct umap *m, uint64_t key)
{
	struct map_slot *s;
	uint32_t f;

	if ((m->len + 1) * 4 > m->cap * 3 && map_grow(m) != 0)
		return -1;
	s = map_find(m->slots, m->cap, key);
	if (!s->failures) {
		s->key = key;
		m->len++;
	}
	f = s->failures++;
	return f >= 20 || ((int64_t)DEF_BASE_MS << f) > DEF_MAX_MS ? DEF_MAX_MS : (int64_t)DEF_BASE_MS << f;
}

/* --- the incident ------------------------------------------------------------------------------ */

static void incident_run(const struct opts *o, int unbounded, struct incident *r)
{
	struct backoff_settings s = defaults(o->max_keys);
	struct backoff *b = unbounded ? NULL : backoff_new(&s);
	struct umap m = { 0 };
	struct backoff_stats st;
	volatile int64_t sink = 0;
	uint64_t i = 0;
	double t0, spent = 0;

	memset(r, 0, sizeof(*r));
	if (!unbounded && !b)
		return;
	for (int p = 0; p < N_POINTS; p++) {
		uint64_t upto = o->keys * point_permille[p] / 1000;

		t0 = now_ns();
		for (; i < upto; i++) {
			if (unbounded) {
				sink += map_when(&m, key_of(i));
			} else {
				/* A hold taken and never given back: the request that should forget never does. */
				struct backoff_ref ref = { 0 };

				sink += backoff_when(b, &ref, key_of(i), (int64_t)i);
				backoff_get_stats(b, &st);
				if (st.tracked > o->max_keys)
					r->bound_broken++;
			}
		}
		spent += now_ns() - t0;
		r->rss_kib[p] = status_kib("VmRSS:");
		if (unbounded) {
			r->tracked[p] = m.len;
		} else {
			backoff_get_stats(b, &st);
			r->tracked[p] = st.tracked;
			r->evictions = st.evictions;
		}
	}
	(void)sink;
	r->ns_per_failure = o->keys ? spent / (double)o->keys : 0;
	backoff_free(b);
	free(m.slots);
}

/* Run the incident in a forked child so that its RSS is its own. 0 on success. */
static int incident_fork(const struct opts *o, int unbounded, struct incident *r)
{
	int fd[2], status;
	pid_t pid;
	ssize_t n;

	if (pipe(fd) != 0)
		return -errno;
	fflush(NULL);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		struct incident res;

		close(fd[0]);
		incident_run(o, unbounded, &res);
		_exit(write(fd[1], &res, sizeof(res)) == (ssize_t)sizeof(res) ? 0 : 1);
	}
	close(fd[1]);
	n = read(fd[0], r, sizeof(*r));
	close(fd[0]);
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
	    n != (ssize_t)sizeof(*r))
		return -ECHILD;
	return 0;
}

/* --- when() + forget() pairs ------------------------------------------------------------------- */

/*
 * Median ns per pair. <shared>: every pair's key is already held by another request; else a new
 * key each time, on a table holding max_keys - 1 others.
 */
static double time_pairs(const struct opts *o, int shared)
{
	struct backoff_settings s = defaults(o->max_keys);
	struct backoff *b = backoff_new(&s);
	struct backoff_ref *held = calloc(o->max_keys, sizeof(*held));
	double *ns = calloc(o->batches, sizeof(*ns)), median = 0;
	volatile int64_t sink = 0;
	uint64_t next = o->max_keys, now = 0;

	if (!b || !held || !ns)
		goto out;
	for (uint32_t k = 0; k + 1 < o->max_keys; k++)
		sink += backoff_when(b, &held[k], key_of(k), (int64_t)now);
	for (unsigned batch = 0; batch < WARMUP_BATCHES + o->batches; batch++) {
		double t0 = now_ns();

		for (int i = 0; i < BATCH; i++) {
			struct backoff_ref ref = { 0 };
			uint64_t key = shared ? key_of(next % (o->max_keys - 1)) : key_of(next);

			next++;
			sink += backoff_when(b, &ref, key, (int64_t)++now);
			backoff_forget(b, &ref);
		}
		if (batch >= WARMUP_BATCHES)
			ns[batch - WARMUP_BATCHES] = (now_ns() - t0) / BATCH;
	}
	qsort(ns, o->batches, sizeof(*ns), cmp_double);
	median = ns[o->batches / 2];
	for (uint32_t k = 0; k < o->max_keys; k++)
		backoff_forget(b, &held[k]);
out:
	(void)sink;
	backoff_free(b);
	free(held);
	free(ns);
	return median;
}

/* --- main ------------------------------------------------------------------------------------ */

static int parse_args(int argc, char **argv, struct opts *o)
{
	/* Flag and value pairs. */
	for (int i = 1; i < argc; i += 2) {
		unsigned long long v;
		char *end;

		if (i + 1 >= argc)
			return -EINVAL;
		errno = 0;
		v = strtoull(argv[i + 1], &end, 10);
		if (errno || *end || v == 0)
			return -EINVAL;
		if (!strcmp(argv[i], "--keys") && v <= 100000000)
			o->keys = v;
		else if (!strcmp(argv[i], "--max-keys") && v >= 2 && v <= 1000000)
			o->max_keys = (uint32_t)v;
		else if (!strcmp(argv[i], "--batches") && v >= 10 && v <= MAX_BATCHES)
			o->batches = (unsigned)v;
		else
			return -EINVAL;
	}
	return 0;
}

static double mib(uint64_t kib)
{
	return (double)kib / 1024.0;
}

int main(int argc, char **argv)
{
	struct opts o = { .keys = 1000000, .max_keys = 10000, .batches = 2000 };
	struct incident pg, um;
	double fresh, shared;
	int held;

	if (parse_args(argc, argv, &o) != 0) {
		fprintf(stderr, "usage: bench_backoff [--keys N] [--max-keys N>=2] [--batches N>=10]\n");
		return 2;
	}
	if (incident_fork(&o, 0, &pg) != 0 || incident_fork(&o, 1, &um) != 0) {
		fprintf(stderr, "bench_backoff: an incident child failed\n");
		return 1;
	}
	fresh = time_pairs(&o, 0);
	shared = time_pairs(&o, 1);
	held = pg.bound_broken == 0 && pg.tracked[N_POINTS - 1] <= o.max_keys;

	printf("| keys failed, never forgotten | promguard backoff (max_keys %u): VmRSS | tracked keys "
	       "| unbounded per-key map (client-go): VmRSS | tracked keys |\n|---|---|---|---|---|\n", o.max_keys);
	for (int p = 0; p < N_POINTS; p++)
		printf("| %llu | %.1f MiB | %llu | %.1f MiB | %llu |\n",
		       (unsigned long long)(o.keys * point_permille[p] / 1000), mib(pg.rss_kib[p]),
		       (unsigned long long)pg.tracked[p], mib(um.rss_kib[p]), (unsigned long long)um.tracked[p]);
	printf("| growth, 0 to %llu keys | %+.1f MiB | | %+.1f MiB | |\n", (unsigned long long)o.keys,
	       mib(pg.rss_kib[N_POINTS - 1]) - mib(pg.rss_kib[0]), mib(um.rss_kib[N_POINTS - 1]) - mib(um.rss_kib[0]));

	printf("\n| benchmark | figure | |\n|---|---|---|\n");
	printf("| tracked keys <= max_keys after every one of %llu failures | %s (%llu evictions) | |\n",
	       (unsigned long long)o.keys, held ? "held" : "BROKEN", (unsigned long long)pg.evictions);
	printf("| backoff_when, new key on a full table (evicts), mean over the incident | %.1f ns | |\n",
	       pg.ns_per_failure);
	printf("| unbounded map When(), mean over the incident (reference) | %.1f ns | |\n", um.ns_per_failure);
	printf("| backoff_when + backoff_forget pair, new key, %u other keys held, median | %.1f ns | |\n",
	       o.max_keys - 1, fresh);
	printf("| backoff_when + backoff_forget pair, key already held by another request, median | %.1f ns | |\n",
	       shared);
	return held ? 0 : 1;
}

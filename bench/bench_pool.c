/*
 * bench_pool: the buffer pool's Get/Put cost and the M3 storm replayed against it.
 *
 *   bench_pool [--streams N] [--hold N] [--segments N] [--drain N] [--burst N] [--limit-mib N]
 *              [--batches N]
 *
 *   get/put    median ns per pool_get + pool_put pair at steady state (free list at its high
 *              watermark), per class, over --batches batches of 1,000 pairs; also a burst of 32
 *              gets then 32 puts, and the same pair on the M3-style pool for reference;
 *   storm      --streams streams (1,000) each answer --segments 64 KiB segments (64: 4 MiB).
 *              Each tick a fast store produces up to --burst segments per stream, as long as the
 *              stream holds fewer than --hold (16) segments for its client; one slow consumer
 *              sends --drain (250) segments per tick in all, round robin, and puts them back.
 *              Run twice, each in a forked child so the VmHWM peaks are separate:
 *                promguard  pool.h with memory_limit --limit-mib (256): a get that fails makes
 *                           the stream wait (pool_wait, relay priority); the waiter's callback
 *                           retries the get;
 *                M3-style   an object pool as in m3 src/x/pool/object.go, written here only: get
 *                           on empty mallocs (get_on_empty), a refill between the 30% and 60%
 *                           watermarks runs "in the background" (once per tick), put on full
 *                           frees (put_on_full). Its size is the pool's own segment target, so
 *                           the watermarks match; nothing bounds the bytes.
 *              Every produced segment is written in full (as data from the store would be), so
 *              the memory is resident and VmHWM counts it.
 * Prints one markdown table (bench/pool.sh adds notes and writes bench/RESULTS.md).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "pool/pool.h"

#define MIB (1024ULL * 1024)
#define SEGMENT 65536
#define BATCH 1000              /* pairs per timed batch */
#define BURST_PAIRS 32          /* gets then puts in the burst shape */
#define WARMUP_BATCHES 200
#define MAX_HOLD 256
#define WAIT_MS 60000           /* a storm waiter's deadline: never reached in a healthy run */
#define TARGET_PAIR_NS 50.0
#define OVERHEAD_MIB 8           /* allowed above limit + start RSS: stream table, headers, malloc */
#define M3_LOW 0.3              /* m3 x/pool watermark.low default */
#define M3_HIGH 0.6             /* ... watermark.high */

struct opts {
	unsigned streams, hold, segments, drain, burst, batches;
	uint64_t limit;
	size_t m3_size; /* the M3-style pool's size: the promguard pool's segment target */
};

/* --- clock and memory ------------------------------------------------------------------------ */

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* A "VmHWM:" style line of /proc/self/status in KiB, or 0. */
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

/* Reset VmHWM to the current RSS (Linux >= 4.0); 0 on success. */
static int reset_peak(void)
{
	FILE *f = fopen("/proc/self/clear_refs", "w");
	int rc;

	if (!f)
		return -1;
	rc = fputs("5", f) < 0;
	return fclose(f) != 0 || rc ? -1 : 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* --- the M3-style pool (comparison only) ----------------------------------------------------- */

/* m3 x/pool objectPool over 64 KiB byte slices: a bounded free list that never refuses a get. */
struct m3_pool {
	void **free;        /* free list, <size> slots */
	size_t nfree, size;
	size_t low, high;   /* ceil(watermark x size) */
	int refill_due;     /* the background refill runs at the next tick */
	uint64_t gets, get_on_empty, put_on_full;
	uint64_t out, peak_held; /* buffers out; most buffers allocated at once (out + free) */
};

static size_t ceil_frac(double f, size_t n)
{
	double v = f * (double)n;
	size_t r = (size_t)v;

	return (double)r < v ? r + 1 : r;
}

static void m3_note(struct m3_pool *m)
{
	if (m->out + m->nfree > m->peak_held)
		m->peak_held = m->out + m->nfree;
}

/* The background refill: from <= low up to high, as the goroutine in object.go does. */
static void m3_refill(struct m3_pool *m)
{
	m->refill_due = 0;
	while (m->nfree < m->high) {
		void *b = malloc(SEGMENT);

		if (!b)
			break;
		m->free[m->nfree++] = b;
	}
	m3_note(m);
}

static int m3_init(struct m3_pool *m, size_t size)
{
	memset(m, 0, sizeof(*m));
	m->free = calloc(size, sizeof(*m->free));
	if (!m->free)
		return -ENOMEM;
	m->size = size;
	m->low = ceil_frac(M3_LOW, size);
	m->high = ceil_frac(M3_HIGH, size);
	m3_refill(m);
	return 0;
}

static void m3_deinit(struct m3_pool *m)
{
	while (m->nfree > 0)
		free(m->free[--m->nfree]);
	free(m->free);
}

/* Not inlined, so the reference pair pays a call like pool_get/pool_put do. */
__attribute__((noinline)) static void *m3_get(struct m3_pool *m)
{
	void *b;

	m->gets++;
	if (m->nfree > 0) {
		b = m->free[--m->nfree];
	} else {
		m->get_on_empty++; /* allocate on empty: the unbounded path */
		b = malloc(SEGMENT);
		if (!b)
			return NULL;
	}
	if (m->nfree <= m->low)
		m->refill_due = 1;
	m->out++;
	m3_note(m);
	return b;
}

__attribute__((noinline)) static void m3_put(struct m3_pool *m, void *b)
{
	m->out--;
	if (m->nfree < m->size) {
		m->free[m->nfree++] = b;
	} else {
		m->put_on_full++;
		free(b);
	}
}

/* --- get/put timing -------------------------------------------------------------------------- */

/* Median ns per get+put pair of <c> on <p> (<burst>: 32 gets then 32 puts, else get, put). */
static double time_pool_pairs(struct pool *p, enum pool_class c, int burst, unsigned batches)
{
	double *ns = calloc(batches, sizeof(*ns)), med;
	void *held[BURST_PAIRS];

	if (!ns)
		return -1;
	for (unsigned b = 0; b < batches + WARMUP_BATCHES; b++) {
		double t0 = now_ns();

		if (burst) {
			for (int i = 0; i < BATCH / BURST_PAIRS; i++) {
				for (int j = 0; j < BURST_PAIRS; j++) {
					held[j] = pool_get(p, c);
					*(volatile char *)held[j] = 1;
				}
				for (int j = BURST_PAIRS - 1; j >= 0; j--)
					pool_put(p, held[j]);
			}
		} else {
			for (int i = 0; i < BATCH; i++) {
				void *x = pool_get(p, c);

				*(volatile char *)x = 1;
				pool_put(p, x);
			}
		}
		if (b >= WARMUP_BATCHES)
			ns[b - WARMUP_BATCHES] = (now_ns() - t0) / (burst ? BATCH / BURST_PAIRS * BURST_PAIRS : BATCH);
	}
	qsort(ns, batches, sizeof(*ns), cmp_double);
	med = ns[batches / 2];
	free(ns);
	return med;
}

static double time_m3_pairs(struct m3_pool *m, unsigned batches)
{
	double *ns = calloc(batches, sizeof(*ns)), med;

	if (!ns)
		return -1;
	for (unsigned b = 0; b < batches + WARMUP_BATCHES; b++) {
		double t0 = now_ns();

		for (int i = 0; i < BATCH; i++) {
			void *x = m3_get(m);

			*(volatile char *)x = 1;
			m3_put(m, x);
		}
		if (b >= WARMUP_BATCHES)
			ns[b - WARMUP_BATCHES] = (now_ns() - t0) / BATCH;
	}
	qsort(ns, batches, sizeof(*ns), cmp_double);
	med = ns[batches / 2];
	free(ns);
	return med;
}

/* --- the storm ------------------------------------------------------------------------------- */

enum variant { V_POOL, V_M3 };

struct stream {
	void *q[MAX_HOLD];           /* segments held for the client, FIFO ring */
	unsigned head, queued;
	unsigned produced, sent;
	struct pool_waiter *waiter;  /* registered after a refused get (promguard pool) */
	struct storm *st;            /* (ref) */
};

struct storm {
	const struct opts *o;
	enum variant v;
	struct event_base *base;
	struct pool *pool;
	struct m3_pool m3;
	struct stream *s;
	unsigned cursor;             /* consumer's round-robin position */
	uint64_t produced, sent;
	uint64_t waits, timeouts, segments_peak, held_now;
	uint64_t fill;               /* byte pattern counter: data differs per segment */
};

/* What a child reports to the parent. */
struct storm_result {
	int ok;
	double seconds;
	uint64_t ticks;
	uint64_t hwm_kib, start_kib;
	uint64_t peak_bytes;         /* pool: peak_in_use_bytes; M3: most bytes allocated at once */
	uint64_t segments_peak;      /* most segments queued for clients at once */
	uint64_t get_on_empty, failed_gets, waits, timeouts, put_on_full;
	uint64_t sent_bytes;
};

static void *storm_get(struct storm *st)
{
	return st->v == V_POOL ? pool_get(st->pool, POOL_CLASS_SEGMENT) : m3_get(&st->m3);
}

static void storm_put(struct storm *st, void *b)
{
	if (st->v == V_POOL)
		pool_put(st->pool, b);
	else
		m3_put(&st->m3, b);
}

/* The store's data arrives in <b>: every byte written, so the page is resident. */
static void store_fill(struct storm *st, struct stream *s, void *b)
{
	memset(b, (int)(st->fill++ & 0xff), SEGMENT);
	s->q[(s->head + s->queued) % MAX_HOLD] = b;
	s->queued++;
	s->produced++;
	st->produced++;
	if (++st->held_now > st->segments_peak)
		st->segments_peak = st->held_now;
}

static void stream_wait(struct stream *s);

/* Woken: retry the get (the waiter contract); wait again if someone was faster. */
static void on_wake(void *arg)
{
	struct stream *s = arg;
	void *b;

	s->waiter = NULL;
	b = storm_get(s->st);
	if (b)
		store_fill(s->st, s, b);
	else
		stream_wait(s);
}

static void on_timeout(void *arg)
{
	struct stream *s = arg;

	s->waiter = NULL;
	s->st->timeouts++;
}

static void stream_wait(struct stream *s)
{
	s->st->waits++;
	s->waiter = pool_wait(s->st->pool, SEGMENT, POOL_PRIO_RELAY, pool_now_ms() + WAIT_MS, on_wake, on_timeout, s);
}

/* One tick: the fast store fills, the slow consumer drains, then the loop runs deferred work. */
static void storm_tick(struct storm *st)
{
	const struct opts *o = st->o;
	unsigned budget = o->drain, idle = 0;

	for (unsigned i = 0; i < o->streams; i++) {
		struct stream *s = &st->s[i];

		for (unsigned k = 0; k < o->burst && !s->waiter && s->produced < o->segments && s->queued < o->hold; k++) {
			void *b = storm_get(st);

			if (!b) {
				stream_wait(s);
				break;
			}
			store_fill(st, s, b);
		}
	}
	/* One segment per stream per turn, round robin, until this tick's budget is spent. */
	while (budget > 0 && idle < o->streams) {
		struct stream *s = &st->s[st->cursor];

		st->cursor = (st->cursor + 1) % o->streams;
		if (!s->queued) {
			idle++;
			continue;
		}
		idle = 0;
		storm_put(st, s->q[s->head]);
		s->head = (s->head + 1) % MAX_HOLD;
		s->queued--;
		s->sent++;
		st->sent++;
		st->held_now--;
		budget--;
	}
	if (st->v == V_POOL)
		event_base_loop(st->base, EVLOOP_NONBLOCK);
	else if (st->m3.refill_due)
		m3_refill(&st->m3);
}

/* The promguard pool's segment target count at <limit> (0 on failure). */
static size_t segment_target(uint64_t limit)
{
	struct pool_settings set = { .memory_limit = limit, .low_watermark = M3_LOW, .high_watermark = M3_HIGH };
	struct event_base *b = event_base_new();
	struct pool *p = b ? pool_new(b, &set) : NULL;
	size_t t = p ? (size_t)pool_class_target(p, POOL_CLASS_SEGMENT) : 0;

	pool_free(p);
	if (b)
		event_base_free(b);
	return t;
}

/* Run the storm with <v> in this process; fill <r>. */
static void storm_run(const struct opts *o, enum variant v, struct storm_result *r)
{
	struct storm st = { .o = o, .v = v };
	uint64_t total = (uint64_t)o->streams * o->segments;
	struct pool_stats ps;
	double t0;

	memset(r, 0, sizeof(*r));
	st.s = calloc(o->streams, sizeof(*st.s));
	st.base = event_base_new();
	if (!st.s || !st.base)
		goto out;
	for (unsigned i = 0; i < o->streams; i++)
		st.s[i].st = &st;
	r->start_kib = status_kib("VmRSS:");
	if (v == V_POOL) {
		struct pool_settings set = { .memory_limit = o->limit, .low_watermark = M3_LOW, .high_watermark = M3_HIGH };

		st.pool = pool_new(st.base, &set);
		if (!st.pool)
			goto out;
	} else {
		if (m3_init(&st.m3, o->m3_size) != 0)
			goto out;
	}
	t0 = now_ns();
	while (st.sent < total && st.timeouts == 0) {
		storm_tick(&st);
		r->ticks++;
	}
	r->seconds = (now_ns() - t0) / 1e9;
	r->hwm_kib = status_kib("VmHWM:");
	r->segments_peak = st.segments_peak;
	r->waits = st.waits;
	r->timeouts = st.timeouts;
	r->sent_bytes = st.sent * (uint64_t)SEGMENT;
	if (v == V_POOL) {
		pool_get_stats(st.pool, &ps);
		r->peak_bytes = ps.peak_in_use_bytes;
		r->get_on_empty = ps.get_on_empty;
		r->failed_gets = ps.failed_gets;
		r->ok = st.sent == total && ps.in_use_bytes == 0;
	} else {
		r->peak_bytes = st.m3.peak_held * SEGMENT;
		r->get_on_empty = st.m3.get_on_empty;
		r->put_on_full = st.m3.put_on_full;
		r->ok = st.sent == total && st.m3.out == 0;
	}
out:
	/* Whatever is still queued goes back (only after a timeout), then everything is freed. */
	for (unsigned i = 0; st.s && i < o->streams; i++) {
		struct stream *s = &st.s[i];

		pool_wait_cancel(s->waiter);
		while (s->queued) {
			storm_put(&st, s->q[s->head]);
			s->head = (s->head + 1) % MAX_HOLD;
			s->queued--;
		}
	}
	if (v == V_POOL)
		pool_free(st.pool);
	else if (st.m3.free)
		m3_deinit(&st.m3);
	if (st.base)
		event_base_free(st.base);
	free(st.s);
}

/* Run the storm in a forked child so its VmHWM is its own. 0 on success. */
static int storm_fork(const struct opts *o, enum variant v, struct storm_result *r)
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
		struct storm_result res;

		close(fd[0]);
		reset_peak();
		storm_run(o, v, &res);
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

/* --- main ------------------------------------------------------------------------------------ */

static int parse_args(int argc, char **argv, struct opts *o)
{
	/* Flag and value pairs. */
	for (int i = 1; i < argc; i += 2) {
		unsigned long v;
		char *end;

		if (i + 1 >= argc)
			return -EINVAL;
		errno = 0;
		v = strtoul(argv[i + 1], &end, 10);
		if (errno || *end || v == 0 || v > 1000000)
			return -EINVAL;
		if (!strcmp(argv[i], "--streams"))
			o->streams = (unsigned)v;
		else if (!strcmp(argv[i], "--hold") && v <= MAX_HOLD)
			o->hold = (unsigned)v;
		else if (!strcmp(argv[i], "--segments"))
			o->segments = (unsigned)v;
		else if (!strcmp(argv[i], "--drain"))
			o->drain = (unsigned)v;
		else if (!strcmp(argv[i], "--burst"))
			o->burst = (unsigned)v;
		else if (!strcmp(argv[i], "--limit-mib"))
			o->limit = v * MIB;
		else if (!strcmp(argv[i], "--batches") && v >= 10)
			o->batches = (unsigned)v;
		else
			return -EINVAL;
	}
	return 0;
}

static const char *verdict(double v, double target)
{
	return v <= target ? "met" : "missed";
}

int main(int argc, char **argv)
{
	struct opts o = { .streams = 1000, .hold = 16, .segments = 64, .drain = 250, .burst = 4,
			  .batches = 2000, .limit = 256 * MIB };
	struct storm_result rp, rm;
	struct event_base *base;
	struct pool *p;
	struct m3_pool m3;
	double small, seg, small_burst, seg_burst, m3_pair;

	if (parse_args(argc, argv, &o) != 0) {
		fprintf(stderr, "usage: bench_pool [--streams N] [--hold N<=%d] [--segments N] [--drain N] "
			"[--burst N] [--limit-mib N] [--batches N>=10]\n", MAX_HOLD);
		return 2;
	}

	/* Same watermarks on the same target count: only the behaviour at empty differs. */
	o.m3_size = segment_target(o.limit);
	if (!o.m3_size) {
		fprintf(stderr, "bench_pool: pool_new failed\n");
		return 1;
	}
	/* The storms first, in children forked from a process that holds almost nothing yet. */
	if (storm_fork(&o, V_POOL, &rp) != 0 || storm_fork(&o, V_M3, &rm) != 0) {
		fprintf(stderr, "bench_pool: a storm child failed\n");
		return 1;
	}

	base = event_base_new();
	{
		struct pool_settings set = { .memory_limit = o.limit, .low_watermark = M3_LOW, .high_watermark = M3_HIGH };

		p = base ? pool_new(base, &set) : NULL;
	}
	if (!p || m3_init(&m3, o.m3_size) != 0) {
		fprintf(stderr, "bench_pool: out of memory\n");
		return 1;
	}
	small = time_pool_pairs(p, POOL_CLASS_SMALL, 0, o.batches);
	seg = time_pool_pairs(p, POOL_CLASS_SEGMENT, 0, o.batches);
	small_burst = time_pool_pairs(p, POOL_CLASS_SMALL, 1, o.batches);
	seg_burst = time_pool_pairs(p, POOL_CLASS_SEGMENT, 1, o.batches);
	m3_pair = time_m3_pairs(&m3, o.batches);
	m3_deinit(&m3);
	pool_free(p);
	event_base_free(base);

	printf("| benchmark | figure | target | |\n|---|---|---|---|\n");
	printf("| Get/Put pair, small (4 KiB), median | %.1f ns | <= %.0f ns | %s |\n", small, TARGET_PAIR_NS,
	       verdict(small, TARGET_PAIR_NS));
	printf("| Get/Put pair, segment (64 KiB), median | %.1f ns | <= %.0f ns | %s |\n", seg, TARGET_PAIR_NS,
	       verdict(seg, TARGET_PAIR_NS));
	printf("| %d gets then %d puts, small, median per pair | %.1f ns | | |\n", BURST_PAIRS, BURST_PAIRS, small_burst);
	printf("| %d gets then %d puts, segment, median per pair | %.1f ns | | |\n", BURST_PAIRS, BURST_PAIRS, seg_burst);
	printf("| Get/Put pair, M3-style pool (reference), median | %.1f ns | | |\n", m3_pair);
	printf("\n| M3 storm: %u streams x %u segments of 64 KiB, each holding up to %u, slow consumer %u segments/tick "
	       "| promguard pool, memory_limit %llu MiB | M3-style allocate-on-empty pool |\n|---|---|---|\n",
	       o.streams, o.segments, o.hold, o.drain, (unsigned long long)(o.limit / MIB));
	printf("| peak RSS (VmHWM of the child) | %.1f MiB | %.1f MiB |\n", rp.hwm_kib / 1024.0, rm.hwm_kib / 1024.0);
	printf("| RSS at start (inherited from the parent) | %.1f MiB | %.1f MiB |\n", rp.start_kib / 1024.0,
	       rm.start_kib / 1024.0);
	printf("| peak pool bytes (in use / allocated) | %.1f MiB | %.1f MiB |\n", rp.peak_bytes / (double)MIB,
	       rm.peak_bytes / (double)MIB);
	printf("| RSS bound: peak RSS <= memory_limit + RSS at start + %d MiB | %s (peak - limit - start = %.1f MiB) | "
	       "no bound |\n", OVERHEAD_MIB, rp.hwm_kib * 1024.0 <= (double)(o.limit + OVERHEAD_MIB * MIB) + rp.start_kib * 1024.0 ?
	       "held" : "BROKEN", (rp.hwm_kib * 1024.0 - (double)o.limit - rp.start_kib * 1024.0) / (double)MIB);
	printf("| most segments queued for clients at once | %llu | %llu |\n", (unsigned long long)rp.segments_peak,
	       (unsigned long long)rm.segments_peak);
	printf("| get_on_empty | %llu | %llu |\n", (unsigned long long)rp.get_on_empty,
	       (unsigned long long)rm.get_on_empty);
	printf("| refused gets -> waits (timeouts) | %llu -> %llu (%llu) | 0 (gets never fail) |\n",
	       (unsigned long long)rp.failed_gets, (unsigned long long)rp.waits, (unsigned long long)rp.timeouts);
	printf("| put_on_full (freed on put) | - | %llu |\n", (unsigned long long)rm.put_on_full);
	printf("| delivered, ticks, wall time | %.0f MiB, %llu ticks, %.2f s | %.0f MiB, %llu ticks, %.2f s |\n",
	       rp.sent_bytes / (double)MIB, (unsigned long long)rp.ticks, rp.seconds, rm.sent_bytes / (double)MIB,
	       (unsigned long long)rm.ticks, rm.seconds);
	printf("| every segment delivered, nothing left in use | %s | %s |\n", rp.ok ? "yes" : "NO", rm.ok ? "yes" : "NO");
	return rp.ok && rm.ok && rp.timeouts == 0 ? 0 : 1;
}

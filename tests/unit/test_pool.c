/*
 * test_pool: the watermark buffer pool — the hard limit, refill on the loop, trim, waiters by
 * priority with deadlines and cancel, large buffers and reservations, failure injection, poison,
 * stats. Each test has its own event_base; deferred work runs with event_base_loop(NONBLOCK).
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "pool/pool.h"

/* Under valgrind the aborting children of expect_abort() would print leak reports of their own. */
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#define KIB 1024ULL
#define MIB (1024ULL * 1024)
#define SMALL 4096ULL
#define SEGMENT 65536ULL
#define MAX_BUFS 4096
#define FAR_MS 60000 /* a deadline that never fires during a test */

/* --- helpers ----------------------------------------------------------------------------- */

struct ctx {
	struct event_base *base;
	struct pool *p;
	void *bufs[MAX_BUFS]; /* buffers a test holds */
	int n;
};

static int setup(void **state)
{
	struct ctx *x = calloc(1, sizeof(*x));

	assert_non_null(x);
	x->base = event_base_new();
	assert_non_null(x->base);
	*state = x;
	return 0;
}

/* Give back what the test still holds, free the pool (every test must end with nothing out). */
static int teardown(void **state)
{
	struct ctx *x = *state;

	if (x->p) {
		while (x->n > 0)
			pool_put(x->p, x->bufs[--x->n]);
		pool_free(x->p);
	}
	event_base_free(x->base);
	free(x);
	return 0;
}

static struct pool_settings settings(uint64_t limit)
{
	struct pool_settings s = { .memory_limit = limit, .low_watermark = 0.3, .high_watermark = 0.6 };

	return s;
}

static struct pool *make_pool(struct ctx *x, uint64_t limit)
{
	struct pool_settings s = settings(limit);

	x->p = pool_new(x->base, &s);
	assert_non_null(x->p);
	return x->p;
}

/* Run deferred events (refills, wakeups, past deadlines) until none is left active. */
static void run_loop(struct ctx *x)
{
	for (int i = 0; i < 4; i++)
		event_base_loop(x->base, EVLOOP_NONBLOCK);
}

static struct pool_stats stats(const struct ctx *x)
{
	struct pool_stats s;

	pool_get_stats(x->p, &s);
	return s;
}

/* Get one buffer of <c> and keep it in <x>; returns 0 when the pool refused. */
static int hold(struct ctx *x, enum pool_class c)
{
	void *b = pool_get(x->p, c);

	if (!b)
		return 0;
	assert_true(x->n < MAX_BUFS);
	memset(b, 0xab, pool_class_size(c)); /* every byte is usable (valgrind/ASan check it) */
	x->bufs[x->n++] = b;
	return 1;
}

static void give_back_one(struct ctx *x)
{
	assert_true(x->n > 0);
	pool_put(x->p, x->bufs[--x->n]);
}

/* Total memory held: buffers out, free buffers, large buffers and reservations. */
static uint64_t held(const struct pool_stats *s)
{
	return s->in_use_bytes + s->free_bytes;
}

/* Expected target count of a class for <limit>: <share> of the limit, bounded as pool.c does. */
static uint64_t target(uint64_t limit, double share, uint64_t size, uint64_t min, uint64_t max)
{
	uint64_t t = (uint64_t)((double)limit * share) / size;

	t = t < min ? min : t > max ? max : t;
	return t > limit / size ? limit / size : t;
}

static uint64_t ceil_frac(double f, uint64_t n)
{
	double v = f * (double)n;
	uint64_t r = (uint64_t)v;

	return (double)r < v ? r + 1 : r;
}

/* Waiter callbacks record who ran, in order. */
struct probe {
	int id;
	int *log;      /* (ref) order of wakeups */
	int *nlog;
	int woken, timed_out;
	struct ctx *x; /* when set, the wakeup takes a segment (as a real waiter retries its get) */
};

static void on_wake(void *arg)
{
	struct probe *pr = arg;

	pr->woken++;
	if (pr->log)
		pr->log[(*pr->nlog)++] = pr->id;
	if (pr->x)
		assert_true(hold(pr->x, POOL_CLASS_SEGMENT));
}

static void on_timeout(void *arg)
{
	struct probe *pr = arg;

	pr->timed_out++;
}

/* Fill the pool with segments until a get fails. */
static void fill_with_segments(struct ctx *x)
{
	while (hold(x, POOL_CLASS_SEGMENT))
		;
	assert_int_equal(stats(x).in_use_bytes % SEGMENT, 0);
}

/* Run <fn>(<x>) in a child; it must die of SIGABRT. Skipped under valgrind (see above). */
static void expect_abort(struct ctx *x, void (*fn)(struct ctx *))
{
	pid_t pid;
	int status;

	if (RUNNING_ON_VALGRIND)
		return;
	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		FILE *devnull = freopen("/dev/null", "w", stderr); /* the abort message is expected */

		(void)devnull;
		fn(x);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGABRT);
}

/* --- limit ------------------------------------------------------------------------------- */

static void test_get_never_allocates_past_the_limit(void **state)
{
	struct ctx *x = *state;
	const uint64_t limit = 2 * MIB + 3 * SMALL; /* not a multiple of a segment */
	struct pool_stats s;
	int got = 0;

	make_pool(x, limit);
	/* Alternate classes and let refills run between gets: the sum never passes the limit. */
	for (;;) {
		enum pool_class c = got % 3 == 2 ? POOL_CLASS_SMALL : POOL_CLASS_SEGMENT;
		int ok = hold(x, c);

		s = stats(x);
		assert_true(held(&s) <= limit);
		run_loop(x);
		s = stats(x);
		assert_true(held(&s) <= limit);
		if (!ok && !hold(x, POOL_CLASS_SMALL))
			break;
		got++;
	}
	s = stats(x);
	assert_true(s.in_use_bytes <= limit);
	assert_true(limit - s.in_use_bytes < SMALL); /* it did use what the limit allows */
	assert_true(s.failed_gets >= 1);
	assert_null(pool_get(x->p, POOL_CLASS_SMALL));
	assert_null(pool_get(x->p, POOL_CLASS_SEGMENT));
	assert_int_equal(s.peak_in_use_bytes, s.in_use_bytes);
}

static void test_get_on_empty_allocates_one_buffer_within_the_limit(void **state)
{
	struct ctx *x = *state;
	struct pool_stats s;
	uint64_t prefill;

	make_pool(x, 16 * MIB);
	prefill = stats(x).cls[POOL_CLASS_SEGMENT].free_bytes / SEGMENT;
	for (uint64_t i = 0; i < prefill; i++)
		assert_true(hold(x, POOL_CLASS_SEGMENT));
	s = stats(x);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].free_bytes, 0);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].get_on_empty, 0);
	/* The list is empty and nothing ran on the loop yet: the get allocates exactly one buffer. */
	assert_true(hold(x, POOL_CLASS_SEGMENT));
	s = stats(x);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].get_on_empty, 1);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].free_bytes, 0);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].in_use_bytes, (prefill + 1) * SEGMENT);
}

static void test_get_on_empty_gives_back_idle_buffers_of_other_classes(void **state)
{
	struct ctx *x = *state;
	const uint64_t limit = 1 * MIB;
	struct pool_stats s;
	uint64_t prefill;

	make_pool(x, limit);
	assert_true(stats(x).cls[POOL_CLASS_SMALL].free_bytes > 0);
	prefill = stats(x).cls[POOL_CLASS_SEGMENT].free_bytes / SEGMENT;
	/* Segments up to the limit: the idle small buffers make way, the sum never passes it. */
	while (hold(x, POOL_CLASS_SEGMENT)) {
		s = stats(x);
		assert_true(held(&s) <= limit);
	}
	s = stats(x);
	assert_int_equal(s.in_use_bytes, limit);
	assert_int_equal(s.free_bytes, 0);
	/* Allocations on empty are counted; the get refused at the limit is a failed get only. */
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].get_on_empty, limit / SEGMENT - prefill);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].failed_gets, 1);
	run_loop(x); /* the refill finds no room either */
	assert_int_equal(stats(x).free_bytes, 0);
}

/* --- watermarks -------------------------------------------------------------------------- */

static void test_prefill_reaches_the_high_watermark(void **state)
{
	struct ctx *x = *state;
	const uint64_t limit = 16 * MIB;
	struct pool_stats s;

	make_pool(x, limit);
	s = stats(x);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].free_bytes,
			 ceil_frac(0.6, target(limit, 0.20, SEGMENT, 2, 16384)) * SEGMENT);
	assert_int_equal(s.cls[POOL_CLASS_SMALL].free_bytes, ceil_frac(0.6, target(limit, 0.02, SMALL, 8, 65536)) * SMALL);
	assert_int_equal(s.free_bytes, s.cls[0].free_bytes + s.cls[1].free_bytes);
	assert_int_equal(s.in_use_bytes, 0);
	assert_int_equal(s.limit_bytes, limit);
	assert_string_equal(pool_class_name(POOL_CLASS_SMALL), "small");
	assert_string_equal(pool_class_name(POOL_CLASS_SEGMENT), "segment");
	assert_int_equal(pool_class_size(POOL_CLASS_SMALL), SMALL);
	assert_int_equal(pool_class_size(POOL_CLASS_SEGMENT), SEGMENT);
}

static void test_refill_runs_on_the_loop_not_inside_get(void **state)
{
	struct ctx *x = *state;
	const uint64_t limit = 16 * MIB;
	const uint64_t t = target(limit, 0.20, SEGMENT, 2, 16384);
	const uint64_t low = ceil_frac(0.3, t), high = ceil_frac(0.6, t);
	struct pool_stats s;

	make_pool(x, limit);
	/* Down to one above the low watermark: no refill is due. */
	for (uint64_t i = 0; i < high - low - 1; i++)
		assert_true(hold(x, POOL_CLASS_SEGMENT));
	run_loop(x);
	s = stats(x);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].refills, 0);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].free_bytes, (low + 1) * SEGMENT);
	/* To the low watermark: the get itself does not refill... */
	assert_true(hold(x, POOL_CLASS_SEGMENT));
	s = stats(x);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].free_bytes, low * SEGMENT);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].refills, 0);
	/* ...the loop does, up to the high watermark. */
	run_loop(x);
	s = stats(x);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].free_bytes, high * SEGMENT);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].refills, 1);
	assert_int_equal(s.refills, 1);
	assert_int_equal(s.cls[POOL_CLASS_SMALL].refills, 0);
	assert_int_equal(s.get_on_empty, 0);
}

static void test_refill_stops_at_the_limit(void **state)
{
	struct ctx *x = *state;
	const uint64_t limit = 1 * MIB;
	struct pool_stats s;

	make_pool(x, limit);
	/* All but two segments' worth in use: the refill may add at most what is left. */
	while (stats(x).in_use_bytes + 3 * SEGMENT <= limit)
		assert_true(hold(x, POOL_CLASS_SEGMENT));
	run_loop(x);
	s = stats(x);
	assert_true(held(&s) <= limit);
	assert_true(s.cls[POOL_CLASS_SEGMENT].free_bytes <= limit - s.in_use_bytes);
}

static void test_trim_after_staying_above_the_high_watermark(void **state)
{
	struct ctx *x = *state;
	const uint64_t limit = 16 * MIB;
	const uint64_t high = ceil_frac(0.6, target(limit, 0.20, SEGMENT, 2, 16384));
	struct pool_stats s;

	make_pool(x, limit);
	for (uint64_t i = 0; i < 3 * high; i++)
		assert_true(hold(x, POOL_CLASS_SEGMENT));
	run_loop(x);
	while (x->n > 0)
		give_back_one(x);
	s = stats(x);
	assert_true(s.cls[POOL_CLASS_SEGMENT].free_bytes > 2 * high * SEGMENT);

	/* A get dips to the high watermark during the interval: the memory was needed, keep it. */
	while (stats(x).cls[POOL_CLASS_SEGMENT].free_bytes > high * SEGMENT)
		assert_true(hold(x, POOL_CLASS_SEGMENT));
	while (x->n > 0)
		give_back_one(x);
	pool_trim_check(x->p);
	s = stats(x);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].trims, 0);
	assert_true(s.cls[POOL_CLASS_SEGMENT].free_bytes > 2 * high * SEGMENT);

	/* A whole interval above it: given back down to the high watermark. */
	pool_trim_check(x->p);
	s = stats(x);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].trims, 1);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].free_bytes, high * SEGMENT);
	/* At the high watermark nothing more goes. */
	pool_trim_check(x->p);
	assert_int_equal(stats(x).cls[POOL_CLASS_SEGMENT].trims, 1);
}

static void test_trim_timer_runs_on_the_loop(void **state)
{
	struct ctx *x = *state;
	const uint64_t limit = 4 * MIB;
	const uint64_t high = ceil_frac(0.6, target(limit, 0.20, SEGMENT, 2, 16384));
	struct timeval after_check = { 1, 300000 };

	make_pool(x, limit);
	for (uint64_t i = 0; i < 2 * high + 1; i++)
		assert_true(hold(x, POOL_CLASS_SEGMENT));
	run_loop(x);
	while (x->n > 0)
		give_back_one(x);
	assert_true(stats(x).cls[POOL_CLASS_SEGMENT].free_bytes > high * SEGMENT);
	/* The 1 s timer, armed when the class went above high: it stayed above for the interval. */
	event_base_loopexit(x->base, &after_check);
	event_base_dispatch(x->base);
	assert_int_equal(stats(x).cls[POOL_CLASS_SEGMENT].free_bytes, high * SEGMENT);
	assert_int_equal(stats(x).cls[POOL_CLASS_SEGMENT].trims, 1);
}

/* --- waiters ----------------------------------------------------------------------------- */

static void test_waiters_wake_by_priority_then_fifo(void **state)
{
	struct ctx *x = *state;
	int log[4], nlog = 0;
	struct probe pr[4];
	const enum pool_priority prio[4] = { POOL_PRIO_INTAKE, POOL_PRIO_RELAY, POOL_PRIO_INTAKE, POOL_PRIO_RELAY };
	const int want[4] = { 1, 3, 0, 2 }; /* relays first, each priority in arrival order */

	make_pool(x, 1 * MIB);
	fill_with_segments(x);
	for (int i = 0; i < 4; i++) {
		pr[i] = (struct probe){ .id = i, .log = log, .nlog = &nlog, .x = x };
		assert_non_null(pool_wait(x->p, SEGMENT, prio[i], pool_now_ms() + FAR_MS, on_wake, on_timeout, &pr[i]));
	}
	assert_int_equal(stats(x).waiters, 4);
	assert_int_equal(stats(x).waits, 4);
	run_loop(x);
	assert_int_equal(nlog, 0); /* nothing was released */

	for (int round = 0; round < 4; round++) {
		/* Hand the released segment to the waiter; it is the only one that fits. */
		void *b = x->bufs[--x->n];

		pool_put(x->p, b);
		assert_int_equal(nlog, round); /* never called back from inside pool_put */
		run_loop(x);
		assert_int_equal(nlog, round + 1);
		assert_int_equal(log[round], want[round]);
		assert_int_equal(stats(x).waiters, 3 - round);
	}
	for (int i = 0; i < 4; i++) {
		assert_int_equal(pr[i].woken, 1);
		assert_int_equal(pr[i].timed_out, 0);
	}
}

static void test_woken_bytes_are_held_for_the_waiter(void **state)
{
	struct ctx *x = *state;
	struct probe pr = { .id = 0, .x = x };

	make_pool(x, 1 * MIB);
	fill_with_segments(x);
	assert_non_null(pool_wait(x->p, SEGMENT, POOL_PRIO_RELAY, pool_now_ms() + FAR_MS, on_wake, on_timeout, &pr));
	give_back_one(x);
	/* Between the wakeup and its callback, a get from someone else may not take the segment. */
	assert_null(pool_get(x->p, POOL_CLASS_SEGMENT));
	run_loop(x);
	assert_int_equal(pr.woken, 1); /* and the waiter's own get succeeded inside on_wake */
}

static void test_waiter_deadline_fires_its_timeout(void **state)
{
	struct ctx *x = *state;
	struct probe pr = { .id = 0 };
	struct timeval half_second = { 0, 500000 };
	struct pool_stats s;

	make_pool(x, 1 * MIB);
	fill_with_segments(x);
	assert_non_null(pool_wait(x->p, SEGMENT, POOL_PRIO_INTAKE, pool_now_ms() + 30, on_wake, on_timeout, &pr));
	event_base_loopexit(x->base, &half_second);
	event_base_dispatch(x->base);
	assert_int_equal(pr.timed_out, 1);
	assert_int_equal(pr.woken, 0);
	s = stats(x);
	assert_int_equal(s.waiters, 0);
	assert_int_equal(s.wait_timeouts, 1);
	/* It is gone: memory released afterwards calls nothing. */
	give_back_one(x);
	run_loop(x);
	assert_int_equal(pr.woken, 0);
	assert_int_equal(pr.timed_out, 1);
}

static void test_past_deadline_fires_on_the_next_pass(void **state)
{
	struct ctx *x = *state;
	struct probe pr = { .id = 0 };

	make_pool(x, 1 * MIB);
	fill_with_segments(x);
	assert_non_null(pool_wait(x->p, SEGMENT, POOL_PRIO_INTAKE, pool_now_ms() - 1000, on_wake, on_timeout, &pr));
	assert_int_equal(pr.timed_out, 0); /* not from inside pool_wait */
	run_loop(x);
	assert_int_equal(pr.timed_out, 1);
	assert_int_equal(stats(x).waiters, 0);
}

static void test_cancelled_waiter_is_never_called(void **state)
{
	struct ctx *x = *state;
	struct probe a = { .id = 0 }, b = { .id = 1, .x = x };
	struct pool_waiter *wa;

	make_pool(x, 1 * MIB);
	fill_with_segments(x);
	wa = pool_wait(x->p, SEGMENT, POOL_PRIO_RELAY, pool_now_ms() + FAR_MS, on_wake, on_timeout, &a);
	assert_non_null(wa);
	assert_non_null(pool_wait(x->p, SEGMENT, POOL_PRIO_RELAY, pool_now_ms() + FAR_MS, on_wake, on_timeout, &b));
	/* <a> is woken (its bytes held) but cancelled before its callback: <b> gets them. */
	give_back_one(x);
	pool_wait_cancel(wa);
	run_loop(x);
	assert_int_equal(a.woken + a.timed_out, 0);
	assert_int_equal(b.woken, 1);
	assert_int_equal(stats(x).waiters, 0);
	pool_wait_cancel(NULL);
}

static void test_waiter_for_more_than_the_limit_does_not_block_others(void **state)
{
	struct ctx *x = *state;
	struct probe big = { .id = 0 }, small = { .id = 1, .x = x };

	make_pool(x, 1 * MIB);
	fill_with_segments(x);
	assert_non_null(pool_wait(x->p, 2 * MIB, POOL_PRIO_RELAY, pool_now_ms() - 1, on_wake, on_timeout, &big));
	assert_non_null(pool_wait(x->p, SEGMENT, POOL_PRIO_INTAKE, pool_now_ms() + FAR_MS, on_wake, on_timeout, &small));
	give_back_one(x);
	run_loop(x);
	assert_int_equal(small.woken, 1);
	assert_int_equal(big.woken, 0);
	assert_int_equal(big.timed_out, 1);
}

static void test_waiter_whose_bytes_fit_now_is_woken(void **state)
{
	struct ctx *x = *state;
	struct probe pr = { .id = 0 };

	/* A get refused by failure injection, say: memory is there, the waiter must not sit idle. */
	make_pool(x, 1 * MIB);
	assert_non_null(pool_wait(x->p, SEGMENT, POOL_PRIO_INTAKE, pool_now_ms() + FAR_MS, on_wake, on_timeout, &pr));
	assert_int_equal(pr.woken, 0);
	run_loop(x);
	assert_int_equal(pr.woken, 1);
}

static void test_pool_free_drops_pending_waiters(void **state)
{
	struct ctx *x = *state;
	struct probe a = { .id = 0 }, b = { .id = 1 };

	make_pool(x, 1 * MIB);
	fill_with_segments(x);
	assert_non_null(pool_wait(x->p, SEGMENT, POOL_PRIO_RELAY, pool_now_ms() + FAR_MS, on_wake, on_timeout, &a));
	assert_non_null(pool_wait(x->p, SEGMENT, POOL_PRIO_INTAKE, pool_now_ms() + FAR_MS, on_wake, on_timeout, &b));
	give_back_one(x); /* <a> woken, not yet called back */
	while (x->n > 0)
		give_back_one(x);
	pool_free(x->p); /* both waiters freed without callbacks (valgrind: no leak) */
	x->p = NULL;
	run_loop(x);
	assert_int_equal(a.woken + a.timed_out + b.woken + b.timed_out, 0);
}

/* --- large buffers and reservations ------------------------------------------------------ */

static void test_class_given_up_for_a_reservation_is_refilled_after_release(void **state)
{
	struct ctx *x = *state;
	const uint64_t limit = 8 * MIB;
	uint64_t before;
	struct pool_stats s;

	make_pool(x, limit);
	run_loop(x);
	before = stats(x).cls[POOL_CLASS_SEGMENT].free_bytes;
	assert_true(before > 0);
	/* a reservation of nearly everything makes the pool give its ready segments back */
	assert_int_equal(pool_reserve(x->p, limit - 64 * 1024), 0);
	s = stats(x);
	assert_true(held(&s) <= limit);
	assert_true(s.cls[POOL_CLASS_SEGMENT].free_bytes < before);
	pool_release(x->p, limit - 64 * 1024);
	run_loop(x);
	/* ...and takes them back up to its watermark once the memory returns */
	assert_true(stats(x).cls[POOL_CLASS_SEGMENT].free_bytes >= before);
}

static void test_arena_allocates_in_pool_memory_and_releases_it_all(void **state)
{
	struct ctx *x = *state;
	struct pool_arena a;
	struct pool_stats s;
	char *small[64], *big;

	make_pool(x, 4 * MIB);
	pool_arena_init(&a, x->p);
	for (int i = 0; i < 64; i++) {
		small[i] = pool_arena_alloc(&a, 100);
		assert_non_null(small[i]);
		assert_int_equal((uintptr_t)small[i] % 16, 0);
		memset(small[i], i, 100);
	}
	for (int i = 0; i < 64; i++)
		assert_int_equal((unsigned char)small[i][99], i); /* no two pieces overlap */
	big = pool_arena_alloc(&a, 512 * 1024);
	assert_non_null(big);
	memset(big, 7, 512 * 1024);
	s = stats(x);
	assert_int_equal(s.large_bytes, 512 * 1024 + 16);
	assert_true(s.cls[POOL_CLASS_SMALL].in_use_bytes >= 64 * 112);
	/* at the limit the arena fails instead of allocating */
	assert_null(pool_arena_alloc(&a, 8 * MIB));
	pool_arena_release(&a);
	s = stats(x);
	assert_int_equal(s.large_bytes, 0);
	assert_int_equal(s.cls[POOL_CLASS_SMALL].in_use_bytes, 0);
	pool_arena_release(&a); /* empty: a no-op */
}

static void test_large_buffers_count_against_the_limit(void **state)
{
	struct ctx *x = *state;
	const uint64_t limit = 4 * MIB;
	struct probe pr = { .id = 0 };
	void *big, *other;
	struct pool_stats s;

	make_pool(x, limit);
	big = pool_get_large(x->p, 3 * MIB);
	assert_non_null(big);
	memset(big, 1, 3 * MIB);
	s = stats(x);
	assert_int_equal(s.large_bytes, 3 * MIB);
	assert_int_equal(s.in_use_bytes, 3 * MIB);
	assert_true(held(&s) <= limit); /* free buffers were given back to make room */
	assert_null(pool_get_large(x->p, 1 * MIB + 1));
	other = pool_get_large(x->p, 1 * MIB);
	assert_non_null(other);
	assert_null(pool_get(x->p, POOL_CLASS_SMALL));
	assert_int_equal(stats(x).failed_gets, 2);
	/* A waiter for a segment wakes when a large buffer goes back. */
	assert_non_null(pool_wait(x->p, SEGMENT, POOL_PRIO_RELAY, pool_now_ms() + FAR_MS, on_wake, on_timeout, &pr));
	pool_put_large(x->p, other);
	assert_int_equal(pr.woken, 0);
	run_loop(x);
	assert_int_equal(pr.woken, 1);
	pool_put_large(x->p, big);
	pool_put_large(x->p, NULL);
	s = stats(x);
	assert_int_equal(s.large_bytes, 0);
	assert_int_equal(s.in_use_bytes, 0);
	assert_int_equal(s.peak_in_use_bytes, 4 * MIB);
	assert_null(pool_get_large(x->p, SIZE_MAX));
}

static void test_reservations_count_against_the_limit(void **state)
{
	struct ctx *x = *state;
	const uint64_t limit = 4 * MIB;
	struct probe pr = { .id = 0 };
	struct pool_stats s;

	make_pool(x, limit);
	assert_int_equal(pool_reserve(x->p, limit + 1), -E2BIG);
	assert_int_equal(pool_reserve_grow(x->p, limit + 1), -E2BIG);
	assert_int_equal(pool_reserve(x->p, 3 * MIB), 0);
	assert_int_equal(pool_reserve_grow(x->p, 512 * KIB), 0);
	s = stats(x);
	assert_int_equal(s.reserved_bytes, 3 * MIB + 512 * KIB);
	assert_int_equal(s.in_use_bytes, 3 * MIB + 512 * KIB);
	assert_true(held(&s) <= limit);
	assert_int_equal(pool_reserve_grow(x->p, 1 * MIB), -EAGAIN);
	assert_int_equal(pool_reserve(x->p, 1 * MIB), -EAGAIN);
	/* What is left goes to class buffers; then nothing. */
	while (hold(x, POOL_CLASS_SEGMENT))
		;
	assert_int_equal(stats(x).in_use_bytes, limit);
	assert_null(pool_get(x->p, POOL_CLASS_SMALL));
	/* Releasing part of a reservation wakes a waiter for that much. */
	assert_non_null(pool_wait(x->p, 1 * MIB, POOL_PRIO_INTAKE, pool_now_ms() + FAR_MS, on_wake, on_timeout, &pr));
	pool_release(x->p, 1 * MIB);
	run_loop(x);
	assert_int_equal(pr.woken, 1);
	assert_int_equal(pool_reserve(x->p, 1 * MIB), 0);
	pool_release(x->p, 3 * MIB + 512 * KIB);
	s = stats(x);
	assert_int_equal(s.reserved_bytes, 0);
	assert_int_equal(s.failed_gets, 4); /* two refused reservations, the last segment and the small get */
	assert_int_equal(pool_reserve(x->p, 0), 0);
}

/* --- configuration ----------------------------------------------------------------------- */

static void test_lower_limit_fails_gets_until_use_drops(void **state)
{
	struct ctx *x = *state;
	struct pool_settings lower = settings(1 * MIB);
	struct pool_stats s;

	make_pool(x, 4 * MIB);
	for (int i = 0; i < 32; i++) /* 2 MiB */
		assert_true(hold(x, POOL_CLASS_SEGMENT));
	assert_int_equal(pool_configure(x->p, &lower), 0);
	s = stats(x);
	assert_int_equal(s.limit_bytes, 1 * MIB);
	assert_int_equal(s.free_bytes, 0); /* idle memory went first */
	assert_null(pool_get(x->p, POOL_CLASS_SMALL));
	/* Buffers coming back go to malloc while the pool is over its limit. */
	while (x->n > 8)
		give_back_one(x);
	s = stats(x);
	assert_true(held(&s) <= 1 * MIB);
	assert_true(hold(x, POOL_CLASS_SEGMENT));
	run_loop(x);
	s = stats(x);
	assert_true(held(&s) <= 1 * MIB);
	lower.low_watermark = 0.9;
	lower.high_watermark = 0.5;
	assert_int_equal(pool_configure(x->p, &lower), -EINVAL);
	lower = settings(1000);
	assert_int_equal(pool_configure(x->p, &lower), -EINVAL);
}

static void test_bad_settings_are_refused(void **state)
{
	struct ctx *x = *state;
	struct pool_settings s = settings(1 * MIB);

	s.fail_rate = 1.5;
	assert_null(pool_new(x->base, &s));
	s = settings(1 * MIB);
	s.high_watermark = 2;
	assert_null(pool_new(x->base, &s));
	assert_null(pool_new(x->base, NULL));
	pool_free(NULL);
}

/* --- failure injection and poison -------------------------------------------------------- */

static void test_fail_rate_one_fails_every_get(void **state)
{
	struct ctx *x = *state;
	struct pool_settings s = settings(4 * MIB);
	struct pool_stats st;

	s.fail_rate = 1.0;
	x->p = pool_new(x->base, &s);
	assert_non_null(x->p);
	for (int i = 0; i < 100; i++) {
		assert_null(pool_get(x->p, POOL_CLASS_SMALL));
		assert_null(pool_get(x->p, POOL_CLASS_SEGMENT));
	}
	assert_null(pool_get_large(x->p, 1000));
	assert_int_equal(pool_reserve(x->p, 1000), -EAGAIN);
	st = stats(x);
	assert_int_equal(st.failed_gets, 202);
	assert_int_equal(st.cls[POOL_CLASS_SMALL].failed_gets, 100);
	assert_int_equal(st.in_use_bytes, 0);
}

static void test_fail_rate_half_fails_about_half(void **state)
{
	struct ctx *x = *state;
	struct pool_settings s = settings(64 * MIB);
	int ok = 0;

	s.fail_rate = 0.5;
	x->p = pool_new(x->base, &s);
	assert_non_null(x->p);
	for (int i = 0; i < 2000; i++) {
		void *b = pool_get(x->p, POOL_CLASS_SMALL);

		ok += b != NULL;
		pool_put(x->p, b);
	}
	assert_in_range(ok, 850, 1150);
}

static void test_env_sets_debug_options(void **state)
{
	struct ctx *x = *state;
	struct pool_settings s = settings(4 * MIB);
	char err[128] = "";

	setenv("PROMGUARD_POOL_FAIL_RATE", "1", 1);
	setenv("PROMGUARD_POOL_POISON", "1", 1);
	assert_int_equal(pool_env_apply(&s, err, sizeof(err)), 0);
	assert_true(s.fail_rate == 1.0);
	assert_int_equal(s.poison, 1);
	s = settings(4 * MIB);
	x->p = pool_new(x->base, &s);
	assert_non_null(x->p);
	assert_null(pool_get(x->p, POOL_CLASS_SMALL));
	/* A reload keeps what the environment asked for. */
	assert_int_equal(pool_configure(x->p, &s), 0);
	assert_null(pool_get(x->p, POOL_CLASS_SMALL));
	pool_free(x->p);
	x->p = NULL;

	setenv("PROMGUARD_POOL_FAIL_RATE", "lots", 1);
	assert_int_equal(pool_env_apply(&s, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "PROMGUARD_POOL_FAIL_RATE"));
	assert_null(pool_new(x->base, &s));
	unsetenv("PROMGUARD_POOL_FAIL_RATE");
	setenv("PROMGUARD_POOL_POISON", "yes", 1);
	assert_int_equal(pool_env_apply(&s, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "PROMGUARD_POOL_POISON"));
	unsetenv("PROMGUARD_POOL_POISON");
}

/* The use-after-put the poison catches: write into a buffer after putting it, then get again. */
static void write_after_put_then_get(struct ctx *x)
{
	unsigned char *b = pool_get(x->p, POOL_CLASS_SMALL);

	pool_put(x->p, b);
	b[100] = 1;
	(void)!pool_get(x->p, POOL_CLASS_SMALL); /* aborts: the free buffer was written */
}

static void double_put(struct ctx *x)
{
	void *b = pool_get(x->p, POOL_CLASS_SMALL);

	pool_put(x->p, b);
	pool_put(x->p, b);
}

static void test_poison_detects_a_write_after_put(void **state)
{
	struct ctx *x = *state;
	struct pool_settings s = settings(4 * MIB);
	unsigned char *b;

	s.poison = 1;
	x->p = pool_new(x->base, &s);
	assert_non_null(x->p);
	b = pool_get(x->p, POOL_CLASS_SMALL);
	assert_non_null(b);
	pool_put(x->p, b);
	assert_int_equal(b[0], 0x5a); /* the freed buffer holds the pattern */
	assert_int_equal(b[SMALL - 1], 0x5a);
	assert_int_equal(pool_check_poison(x->p), 0);
	b[SMALL / 2] = 0; /* use after put */
	assert_int_equal(pool_check_poison(x->p), 1);
	b[SMALL / 2] = 0x5a;
	assert_int_equal(pool_check_poison(x->p), 0);
	expect_abort(x, write_after_put_then_get);
	/* An intact buffer is handed out again without complaint. */
	assert_ptr_equal(pool_get(x->p, POOL_CLASS_SMALL), b);
	pool_put(x->p, b);
}

static void test_double_put_aborts(void **state)
{
	struct ctx *x = *state;

	make_pool(x, 1 * MIB);
	expect_abort(x, double_put);
}

/* --- stats and teardown ------------------------------------------------------------------ */

static void test_stats_add_up(void **state)
{
	struct ctx *x = *state;
	struct pool_stats s;
	void *large;

	make_pool(x, 8 * MIB);
	for (int i = 0; i < 40; i++)
		assert_true(hold(x, i % 2 ? POOL_CLASS_SMALL : POOL_CLASS_SEGMENT));
	large = pool_get_large(x->p, 100000);
	assert_non_null(large);
	assert_int_equal(pool_reserve(x->p, 12345), 0);
	run_loop(x);
	s = stats(x);
	assert_int_equal(s.cls[POOL_CLASS_SMALL].in_use_bytes, 20 * SMALL);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].in_use_bytes, 20 * SEGMENT);
	assert_int_equal(s.in_use_bytes, 20 * SMALL + 20 * SEGMENT + 100000 + 12345);
	assert_int_equal(s.free_bytes, s.cls[0].free_bytes + s.cls[1].free_bytes);
	assert_int_equal(s.cls[POOL_CLASS_SMALL].gets, 20);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].gets, 20);
	assert_int_equal(s.cls[POOL_CLASS_SEGMENT].peak_in_use_bytes, 20 * SEGMENT);
	assert_int_equal(s.peak_in_use_bytes, s.in_use_bytes);
	assert_int_equal(s.get_on_empty, s.cls[0].get_on_empty + s.cls[1].get_on_empty);
	assert_int_equal(s.refills, s.cls[0].refills + s.cls[1].refills);
	assert_int_equal(s.failed_gets, 0);
	assert_true(held(&s) <= s.limit_bytes);
	pool_put_large(x->p, large);
	pool_release(x->p, 12345);
	while (x->n > 0)
		give_back_one(x);
	s = stats(x);
	assert_int_equal(s.in_use_bytes, 0);
	assert_int_equal(s.peak_in_use_bytes, 20 * SMALL + 20 * SEGMENT + 100000 + 12345);
}

static void test_free_with_nothing_out_releases_everything(void **state)
{
	struct ctx *x = *state;

	/* Run under valgrind --leak-check=full: every free and refilled buffer is released. */
	make_pool(x, 8 * MIB);
	for (int i = 0; i < 200; i++)
		assert_true(hold(x, i % 3 ? POOL_CLASS_SMALL : POOL_CLASS_SEGMENT));
	run_loop(x);
	while (x->n > 0)
		give_back_one(x);
	pool_free(x->p);
	x->p = NULL;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
		T(test_get_never_allocates_past_the_limit),
		T(test_get_on_empty_allocates_one_buffer_within_the_limit),
		T(test_get_on_empty_gives_back_idle_buffers_of_other_classes),
		T(test_prefill_reaches_the_high_watermark),
		T(test_refill_runs_on_the_loop_not_inside_get),
		T(test_refill_stops_at_the_limit),
		T(test_trim_after_staying_above_the_high_watermark),
		T(test_trim_timer_runs_on_the_loop),
		T(test_waiters_wake_by_priority_then_fifo),
		T(test_woken_bytes_are_held_for_the_waiter),
		T(test_waiter_deadline_fires_its_timeout),
		T(test_past_deadline_fires_on_the_next_pass),
		T(test_cancelled_waiter_is_never_called),
		T(test_waiter_for_more_than_the_limit_does_not_block_others),
		T(test_waiter_whose_bytes_fit_now_is_woken),
		T(test_pool_free_drops_pending_waiters),
		T(test_class_given_up_for_a_reservation_is_refilled_after_release),
		T(test_arena_allocates_in_pool_memory_and_releases_it_all),
		T(test_large_buffers_count_against_the_limit),
		T(test_reservations_count_against_the_limit),
		T(test_lower_limit_fails_gets_until_use_drops),
		T(test_bad_settings_are_refused),
		T(test_fail_rate_one_fails_every_get),
		T(test_fail_rate_half_fails_about_half),
		T(test_env_sets_debug_options),
		T(test_poison_detects_a_write_after_put),
		T(test_double_put_aborts),
		T(test_stats_add_up),
		T(test_free_with_nothing_out_releases_everything),
#undef T
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

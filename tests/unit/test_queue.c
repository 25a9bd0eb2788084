/*
 * limiter_queue: every way out forgets the key's backoff state, FIFO order within a tenant and
 * turns between tenants, the caps, retries held back by their delay, timer dispatch, and the
 * wake-up time. Entries are heap-allocated so that ASan catches a queue touching an entry its
 * try function freed.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "limiter/queue.h"

#define BASE_MS 100         /* backoff base delay in these tests */
#define FAR 1000000         /* a deadline never reached */
#define MAX_TRIES 512

/* A request as the proxy embeds the entry in it. */
struct req {
	struct limiter_queue_entry qe;
	int id;
	char tenant[16];
};

/* What a dispatch's try function does and saw. */
struct trial {
	struct limiter_queue *q;
	int slots;                 /* STARTED this many times, then NO_CAPACITY */
	const char *full_tenant;   /* TENANT_FULL for this tenant's entries */
	int finish;                /* instead of STARTED: leave (REJECTED), free, FINISHED */
	int offered[MAX_TRIES];    /* ids offered, in order */
	int noffered;
	int started[MAX_TRIES];    /* ids started, in order */
	int nstarted;
};

static struct limiter_queue_settings settings(uint64_t max_queued, uint32_t max_keys)
{
	return (struct limiter_queue_settings){
		.max_queued = max_queued,
		.backoff = { .base_delay_ms = BASE_MS, .max_delay_ms = 100000, .max_keys = max_keys, .rate = 0,
			     .burst = 0, .jitter = 0, .seed = 1 },
	};
}

static struct limiter_queue *new_queue(uint64_t max_queued, uint32_t max_keys)
{
	struct limiter_queue_settings s = settings(max_queued, max_keys);
	struct limiter_queue *q = limiter_queue_new(&s);

	assert_non_null(q);
	return q;
}

static struct req *req_new(int id, const char *tenant)
{
	struct req *r = calloc(1, sizeof(*r));

	assert_non_null(r);
	r->id = id;
	snprintf(r->tenant, sizeof(r->tenant), "%s", tenant);
	return r;
}

/* Push <r> under key <id> (tenant cap 1000). */
static int push(struct limiter_queue *q, struct req *r, enum limiter_queue_wait w, int64_t deadline, int64_t now)
{
	return limiter_queue_push(q, &r->qe, r->tenant, 1000, (uint64_t)r->id, w, deadline, now, NULL);
}

static struct req *push_ok(struct limiter_queue *q, int id, const char *tenant, int64_t now)
{
	struct req *r = req_new(id, tenant);

	assert_int_equal(push(q, r, LIMITER_QUEUE_CAPACITY, FAR, now), 0);
	return r;
}

static enum limiter_queue_try try_fn(struct limiter_queue_entry *e, void *arg)
{
	struct trial *t = arg;
	struct req *r = (struct req *)((char *)e - offsetof(struct req, qe));

	assert_null(limiter_queue_entry_tenant(e)); /* out of the queue while tried */
	assert_true(t->noffered < MAX_TRIES);
	t->offered[t->noffered++] = r->id;
	if (t->full_tenant && strcmp(t->full_tenant, r->tenant) == 0)
		return LIMITER_QUEUE_TENANT_FULL;
	if (t->slots == 0)
		return LIMITER_QUEUE_NO_CAPACITY;
	t->slots--;
	t->started[t->nstarted++] = r->id;
	if (t->finish) {
		limiter_queue_leave(t->q, e, LIMITER_QUEUE_EXIT_REJECTED);
		free(r);
		return LIMITER_QUEUE_FINISHED;
	}
	return LIMITER_QUEUE_STARTED;
}

static size_t dispatch(struct limiter_queue *q, struct trial *t, int slots, enum limiter_queue_event ev, int64_t now)
{
	t->q = q;
	t->slots = slots;
	return limiter_queue_dispatch(q, ev, now, try_fn, t);
}

static struct limiter_queue_stats stats_of(const struct limiter_queue *q)
{
	struct limiter_queue_stats st;

	limiter_queue_get_stats(q, &st);
	return st;
}

/* Leave <r> by <exit> and free it. */
static void done(struct limiter_queue *q, struct req *r, enum limiter_queue_exit exit)
{
	limiter_queue_leave(q, &r->qe, exit);
	free(r);
}

/* Nothing queued, no tenant and no backoff state left. */
static void assert_all_forgotten(const struct limiter_queue *q)
{
	struct limiter_queue_stats st = stats_of(q);

	assert_int_equal(st.length, 0);
	assert_int_equal(st.delayed, 0);
	assert_int_equal(st.tenants, 0);
	assert_int_equal(st.backoff.tracked, 0);
	assert_int_equal(limiter_queue_next_wake(q), -1);
}

/* --- every way out forgets --------------------------------------------------------------------- */

static void test_started_request_forgets_its_key_when_done(void **state)
{
	struct limiter_queue *q = new_queue(16, 64);
	struct trial t = { 0 };
	struct req *r = push_ok(q, 1, "a", 0);

	(void)state;
	assert_int_equal(dispatch(q, &t, 1, LIMITER_QUEUE_CAPACITY_FREED, 10), 1);
	assert_int_equal(stats_of(q).length, 0);
	assert_int_equal(stats_of(q).tenants, 0);
	assert_int_equal(stats_of(q).backoff.tracked, 1); /* held while it runs */
	done(q, r, LIMITER_QUEUE_EXIT_DONE);
	assert_all_forgotten(q);
	assert_int_equal(stats_of(q).exits[LIMITER_QUEUE_EXIT_DONE], 1);
	assert_int_equal(stats_of(q).backoff.forgotten, 1);
	limiter_queue_free(q);
}

static void test_refused_push_forgets_its_key_on_rejected_exit(void **state)
{
	struct limiter_queue *q = new_queue(1, 64);
	struct req *a = push_ok(q, 1, "a", 0), *b = req_new(2, "a");
	int64_t delay = -1;

	(void)state;
	assert_int_equal(limiter_queue_push(q, &b->qe, "a", 1000, 2, LIMITER_QUEUE_CAPACITY, FAR, 0, &delay), -ENOSPC);
	assert_int_equal(delay, BASE_MS); /* still a Retry-After */
	assert_int_equal(b->qe.queued, 0);
	assert_int_equal(stats_of(q).backoff.tracked, 2); /* the refused one holds its key until it leaves */
	done(q, b, LIMITER_QUEUE_EXIT_REJECTED);
	assert_int_equal(stats_of(q).backoff.tracked, 1);
	assert_int_equal(stats_of(q).length, 1);
	done(q, a, LIMITER_QUEUE_EXIT_CANCELLED);
	assert_all_forgotten(q);
	assert_int_equal(stats_of(q).refused, 1);
	assert_int_equal(stats_of(q).deferred, 1);
	assert_int_equal(stats_of(q).exits[LIMITER_QUEUE_EXIT_REJECTED], 1);
	limiter_queue_free(q);
}

static void test_expired_request_forgets_its_key_on_timeout_exit(void **state)
{
	struct limiter_queue *q = new_queue(16, 64);
	struct req *a = req_new(1, "a"), *b = req_new(2, "b");
	struct limiter_queue_entry *e;

	(void)state;
	assert_int_equal(push(q, a, LIMITER_QUEUE_CAPACITY, 500, 0), 0);
	assert_int_equal(push(q, b, LIMITER_QUEUE_RETRY, 700, 0), 0); /* in the delayed list */
	assert_null(limiter_queue_pop_expired(q, 499));
	assert_null(limiter_queue_pop_expired(q, 499)); /* cheap now: below every deadline */
	e = limiter_queue_pop_expired(q, 500);
	assert_ptr_equal(e, &a->qe);
	assert_null(limiter_queue_pop_expired(q, 500));
	assert_int_equal(stats_of(q).backoff.tracked, 2);
	done(q, a, LIMITER_QUEUE_EXIT_TIMEOUT);
	assert_ptr_equal(limiter_queue_pop_expired(q, 800), &b->qe);
	assert_null(limiter_queue_pop_expired(q, 800));
	done(q, b, LIMITER_QUEUE_EXIT_TIMEOUT);
	assert_all_forgotten(q);
	assert_int_equal(stats_of(q).exits[LIMITER_QUEUE_EXIT_TIMEOUT], 2);
	limiter_queue_free(q);
}

static void test_cancelled_request_leaves_queue_and_forgets_its_key(void **state)
{
	struct limiter_queue *q = new_queue(16, 64);
	struct req *a = push_ok(q, 1, "a", 0), *b = push_ok(q, 2, "a", 0), *c = req_new(3, "b");

	(void)state;
	assert_int_equal(push(q, c, LIMITER_QUEUE_RETRY, FAR, 0), 0);
	assert_int_equal(limiter_queue_tenant_length(q, "a"), 2);
	done(q, a, LIMITER_QUEUE_EXIT_CANCELLED); /* the head */
	assert_int_equal(limiter_queue_tenant_length(q, "a"), 1);
	done(q, c, LIMITER_QUEUE_EXIT_CANCELLED); /* delayed */
	assert_int_equal(limiter_queue_tenant_length(q, "b"), 0);
	assert_int_equal(stats_of(q).tenants, 1);
	done(q, b, LIMITER_QUEUE_EXIT_CANCELLED);
	assert_all_forgotten(q);
	assert_int_equal(stats_of(q).exits[LIMITER_QUEUE_EXIT_CANCELLED], 3);
	limiter_queue_free(q);
}

static void test_evicted_key_is_retaken_fresh_and_its_forget_is_a_noop(void **state)
{
	struct limiter_queue *q = new_queue(16, 2);
	struct req *a = push_ok(q, 1, "a", 0), *b, *c;
	struct trial t = { 0 };
	struct limiter_queue_stats st;

	(void)state;
	/* a's key fails twice more while it waits on the timer (100, then 200 ms). */
	dispatch(q, &t, 0, LIMITER_QUEUE_TIMER, 100);
	dispatch(q, &t, 0, LIMITER_QUEUE_TIMER, 300);
	assert_int_equal(backoff_failures(limiter_queue_backoff(q), &a->qe.ref), 3);
	assert_int_equal(a->qe.not_before_ms, 300 + 4 * BASE_MS);
	/* Two other keys push it out of the 2-key table. */
	b = push_ok(q, 2, "b", 301);
	c = push_ok(q, 3, "c", 302);
	st = stats_of(q);
	assert_int_equal(st.backoff.tracked, 2);
	assert_int_equal(st.backoff.evictions, 1);
	assert_int_equal(backoff_failures(limiter_queue_backoff(q), &a->qe.ref), 0);
	/* Its next failed retry starts from 0 failures again: the base delay, not 8 x base. */
	t.noffered = 0;
	dispatch(q, &t, 0, LIMITER_QUEUE_TIMER, 700);
	assert_int_equal(t.noffered, 1);
	assert_int_equal(t.offered[0], 1);
	assert_int_equal(a->qe.not_before_ms, 700 + BASE_MS);
	assert_int_equal(backoff_failures(limiter_queue_backoff(q), &a->qe.ref), 1);
	assert_int_equal(backoff_failures(limiter_queue_backoff(q), &b->qe.ref), 0); /* b's turn to go */
	/* b's hold is stale: leaving forgets nothing, but counts the exit. */
	done(q, b, LIMITER_QUEUE_EXIT_CANCELLED);
	st = stats_of(q);
	assert_int_equal(st.backoff.tracked, 2);
	assert_int_equal(st.backoff.forgotten, 0);
	assert_int_equal(st.exits[LIMITER_QUEUE_EXIT_CANCELLED], 1);
	done(q, a, LIMITER_QUEUE_EXIT_CANCELLED);
	done(q, c, LIMITER_QUEUE_EXIT_CANCELLED);
	assert_all_forgotten(q);
	assert_int_equal(stats_of(q).backoff.forgotten, 2);
	limiter_queue_free(q);
}

static void test_never_pushed_entry_leaves_without_counting(void **state)
{
	struct limiter_queue *q = new_queue(16, 64);
	struct req *r = req_new(1, "a");
	struct limiter_queue_stats st;

	(void)state;
	limiter_queue_leave(q, &r->qe, LIMITER_QUEUE_EXIT_DONE);
	assert_int_equal(limiter_queue_push(q, &r->qe, "a", 1000, 1, LIMITER_QUEUE_CAPACITY, FAR, 0, NULL), 0);
	limiter_queue_leave(q, &r->qe, LIMITER_QUEUE_EXIT_DONE);
	limiter_queue_leave(q, &r->qe, LIMITER_QUEUE_EXIT_DONE); /* left already: not counted twice */
	st = stats_of(q);
	assert_int_equal(st.exits[LIMITER_QUEUE_EXIT_DONE], 1);
	assert_int_equal(st.exits[LIMITER_QUEUE_EXIT_REJECTED] + st.exits[LIMITER_QUEUE_EXIT_TIMEOUT] +
				 st.exits[LIMITER_QUEUE_EXIT_CANCELLED], 0);
	free(r);
	assert_all_forgotten(q);
	limiter_queue_free(q);
}

/* --- order and turns ----------------------------------------------------------------------------- */

static void test_entries_of_one_tenant_start_in_fifo_order(void **state)
{
	struct limiter_queue *q = new_queue(16, 64);
	struct req *r[5];
	struct trial t = { 0 };

	(void)state;
	for (int i = 0; i < 5; i++)
		r[i] = push_ok(q, i, "a", i);
	assert_int_equal(dispatch(q, &t, 5, LIMITER_QUEUE_CAPACITY_FREED, 10), 5);
	for (int i = 0; i < 5; i++) {
		assert_int_equal(t.started[i], i);
		done(q, r[i], LIMITER_QUEUE_EXIT_DONE);
	}
	assert_all_forgotten(q);
	limiter_queue_free(q);
}

static void test_lone_entry_of_second_tenant_starts_second_behind_a_200_entry_tenant(void **state)
{
	enum { A = 200 };
	struct limiter_queue *q = new_queue(256, 1024);
	struct req *r[A + 1];
	struct trial t = { 0 };
	int64_t now = 0;

	(void)state;
	for (int i = 0; i < A; i++)
		r[i] = push_ok(q, i, "a", now);
	r[A] = push_ok(q, A, "b", now);
	/* One slot freed at a time, each time a dispatch. */
	while (stats_of(q).length > 0)
		assert_int_equal(dispatch(q, &t, 1, LIMITER_QUEUE_CAPACITY_FREED, ++now), 1);
	assert_int_equal(t.nstarted, A + 1);
	assert_int_equal(t.started[0], 0);
	assert_int_equal(t.started[1], A); /* b's first slot is the second one freed */
	assert_int_equal(t.offered[1], A); /* offered at once after a's first, then first again */
	for (int i = 2; i <= A; i++)
		assert_int_equal(t.started[i], i - 1); /* a's in their order */
	for (int i = 0; i <= A; i++)
		done(q, r[i], LIMITER_QUEUE_EXIT_DONE);
	assert_all_forgotten(q);
	limiter_queue_free(q);
}

static void test_tenants_take_turns_when_capacity_is_plenty(void **state)
{
	static const int want[] = { 0, 10, 20, 1, 11, 2, 3 };
	struct limiter_queue *q = new_queue(16, 64);
	struct req *r[7];
	struct trial t = { 0 };

	(void)state;
	r[0] = push_ok(q, 0, "a", 0);
	r[1] = push_ok(q, 1, "a", 0);
	r[2] = push_ok(q, 2, "a", 0);
	r[3] = push_ok(q, 3, "a", 0);
	r[4] = push_ok(q, 10, "b", 0);
	r[5] = push_ok(q, 11, "b", 0);
	r[6] = push_ok(q, 20, "c", 0);
	assert_int_equal(dispatch(q, &t, 100, LIMITER_QUEUE_CAPACITY_FREED, 1), 7);
	assert_memory_equal(t.started, want, sizeof(want));
	for (int i = 0; i < 7; i++)
		done(q, r[i], LIMITER_QUEUE_EXIT_DONE);
	assert_all_forgotten(q);
	limiter_queue_free(q);
}

static void test_tenant_full_skips_only_that_tenant(void **state)
{
	struct limiter_queue *q = new_queue(16, 64);
	struct req *a0 = push_ok(q, 0, "a", 0), *a1 = push_ok(q, 1, "a", 0);
	struct req *b0 = push_ok(q, 10, "b", 0), *b1 = push_ok(q, 11, "b", 0);
	struct trial t = { .full_tenant = "a" };

	(void)state;
	assert_int_equal(dispatch(q, &t, 10, LIMITER_QUEUE_CAPACITY_FREED, 1), 2);
	assert_int_equal(t.noffered, 3); /* a's head once, then b's two */
	assert_int_equal(t.offered[0], 0);
	assert_int_equal(t.started[0], 10);
	assert_int_equal(t.started[1], 11);
	assert_int_equal(limiter_queue_tenant_length(q, "a"), 2);
	assert_int_equal(a0->qe.not_before_ms, BASE_MS); /* not a timer offer: no failed retry */
	assert_int_equal(a0->qe.retries, 0);
	/* a's entries kept their order. */
	memset(&t, 0, sizeof(t));
	assert_int_equal(dispatch(q, &t, 10, LIMITER_QUEUE_CAPACITY_FREED, 2), 2);
	assert_int_equal(t.started[0], 0);
	assert_int_equal(t.started[1], 1);
	done(q, a0, LIMITER_QUEUE_EXIT_DONE);
	done(q, a1, LIMITER_QUEUE_EXIT_DONE);
	done(q, b0, LIMITER_QUEUE_EXIT_DONE);
	done(q, b1, LIMITER_QUEUE_EXIT_DONE);
	assert_all_forgotten(q);
	limiter_queue_free(q);
}

static void test_no_capacity_stops_dispatch_and_keeps_order(void **state)
{
	struct limiter_queue *q = new_queue(16, 64);
	struct req *r[4];
	struct trial t = { 0 };

	(void)state;
	r[0] = push_ok(q, 0, "a", 0);
	r[1] = push_ok(q, 1, "a", 0);
	r[2] = push_ok(q, 2, "a", 0);
	r[3] = push_ok(q, 10, "b", 0);
	assert_int_equal(dispatch(q, &t, 0, LIMITER_QUEUE_CAPACITY_FREED, 1), 0);
	assert_int_equal(t.noffered, 1); /* b was not offered what a could not use */
	assert_int_equal(stats_of(q).length, 4);
	memset(&t, 0, sizeof(t));
	assert_int_equal(dispatch(q, &t, 1, LIMITER_QUEUE_CAPACITY_FREED, 2), 1);
	assert_int_equal(t.started[0], 0);
	assert_int_equal(t.offered[1], 10); /* the turn passed to b */
	memset(&t, 0, sizeof(t));
	assert_int_equal(dispatch(q, &t, 3, LIMITER_QUEUE_CAPACITY_FREED, 3), 3);
	assert_int_equal(t.started[0], 10);
	assert_int_equal(t.started[1], 1);
	assert_int_equal(t.started[2], 2);
	for (int i = 0; i < 4; i++)
		done(q, r[i], LIMITER_QUEUE_EXIT_DONE);
	assert_all_forgotten(q);
	limiter_queue_free(q);
}

/* --- caps -------------------------------------------------------------------------------------- */

static void test_push_refused_when_queue_or_tenant_is_full(void **state)
{
	struct limiter_queue *q = new_queue(3, 64);
	struct req *r[6];
	struct limiter_queue_stats st;

	(void)state;
	for (int i = 0; i < 6; i++)
		r[i] = req_new(i, i < 3 ? "a" : i == 3 ? "b" : "c");
	assert_int_equal(limiter_queue_push(q, &r[0]->qe, "a", 2, 0, LIMITER_QUEUE_CAPACITY, FAR, 0, NULL), 0);
	assert_int_equal(limiter_queue_push(q, &r[1]->qe, "a", 2, 1, LIMITER_QUEUE_CAPACITY, FAR, 0, NULL), 0);
	assert_int_equal(limiter_queue_push(q, &r[2]->qe, "a", 2, 2, LIMITER_QUEUE_CAPACITY, FAR, 0, NULL), -EDQUOT);
	assert_int_equal(limiter_queue_push(q, &r[3]->qe, "b", 2, 3, LIMITER_QUEUE_CAPACITY, FAR, 0, NULL), 0);
	assert_int_equal(limiter_queue_push(q, &r[4]->qe, "c", 2, 4, LIMITER_QUEUE_CAPACITY, FAR, 0, NULL), -ENOSPC);
	assert_int_equal(limiter_queue_push(q, &r[0]->qe, "a", 2, 0, LIMITER_QUEUE_CAPACITY, FAR, 0, NULL),
			 -EALREADY);
	/* Retries are never refused: their requests already count against max_inflight. */
	assert_int_equal(limiter_queue_push(q, &r[5]->qe, "a", 0, 5, LIMITER_QUEUE_RETRY, FAR, 0, NULL), 0);
	st = stats_of(q);
	assert_int_equal(st.length, 4);
	assert_int_equal(st.delayed, 1);
	assert_int_equal(st.refused, 2);
	assert_int_equal(st.deferred, 4);
	assert_int_equal(st.tenants, 2);
	assert_null(limiter_queue_entry_tenant(&r[2]->qe));
	assert_string_equal(limiter_queue_entry_tenant(&r[5]->qe), "a");
	/* A lower cap on reload keeps what waits and refuses new pushes. */
	{
		struct limiter_queue_settings s = settings(1, 64);
		struct req *late = req_new(9, "d");

		assert_int_equal(limiter_queue_configure(q, &s), 0);
		assert_int_equal(stats_of(q).length, 4);
		assert_int_equal(push(q, late, LIMITER_QUEUE_CAPACITY, FAR, 0), -ENOSPC);
		done(q, late, LIMITER_QUEUE_EXIT_REJECTED);
		s.backoff.base_delay_ms = 0;
		assert_int_equal(limiter_queue_configure(q, &s), -EINVAL);
	}
	for (int i = 0; i < 6; i++)
		done(q, r[i], i == 2 || i == 4 ? LIMITER_QUEUE_EXIT_REJECTED : LIMITER_QUEUE_EXIT_CANCELLED);
	assert_all_forgotten(q);
	assert_int_equal(stats_of(q).exits[LIMITER_QUEUE_EXIT_REJECTED], 3);
	limiter_queue_free(q);
}

static void test_overlong_tenant_name_is_refused(void **state)
{
	struct limiter_queue *q = new_queue(16, 64);
	struct req *r = req_new(1, "x");
	char name[130];

	(void)state;
	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	assert_int_equal(limiter_queue_push(q, &r->qe, name, 10, 1, LIMITER_QUEUE_CAPACITY, FAR, 0, NULL), -EINVAL);
	name[128] = '\0'; /* 128 bytes: the longest accepted */
	assert_int_equal(limiter_queue_push(q, &r->qe, name, 10, 1, LIMITER_QUEUE_CAPACITY, FAR, 0, NULL), 0);
	assert_int_equal(limiter_queue_tenant_length(q, name), 1);
	assert_string_equal(limiter_queue_entry_tenant(&r->qe), name);
	done(q, r, LIMITER_QUEUE_EXIT_CANCELLED);
	assert_all_forgotten(q);
	limiter_queue_free(q);
}

/* --- retries and the timer ----------------------------------------------------------------------- */

static void test_retry_entry_waits_out_its_delay_then_joins_the_front(void **state)
{
	struct limiter_queue *q = new_queue(16, 64);
	struct req *c1 = push_ok(q, 1, "a", 0), *c2 = push_ok(q, 2, "a", 0);
	struct req *r1 = req_new(10, "a"), *r2 = req_new(11, "a"), *c3;
	struct trial t = { 0 };
	int64_t delay = 0;

	(void)state;
	assert_int_equal(limiter_queue_push(q, &r1->qe, "a", 0, 10, LIMITER_QUEUE_RETRY, FAR, 20, &delay), 0);
	assert_int_equal(delay, BASE_MS);
	assert_int_equal(limiter_queue_push(q, &r2->qe, "a", 0, 11, LIMITER_QUEUE_RETRY, FAR, 30, NULL), 0);
	assert_int_equal(stats_of(q).delayed, 2);
	assert_int_equal(limiter_queue_tenant_length(q, "a"), 4);
	/* Not before its delay, neither on freed capacity nor on the timer. */
	assert_int_equal(dispatch(q, &t, 1, LIMITER_QUEUE_CAPACITY_FREED, 119), 1);
	assert_int_equal(t.started[0], 1);
	memset(&t, 0, sizeof(t));
	assert_int_equal(dispatch(q, &t, 1, LIMITER_QUEUE_TIMER, 119), 1);
	assert_int_equal(t.started[0], 2); /* c2's own delay (100 ms) has passed */
	assert_int_equal(stats_of(q).delayed, 2);
	/* Once due, in front, the first deferred first. */
	c3 = push_ok(q, 3, "a", 119); /* a later arrival stays behind them */
	memset(&t, 0, sizeof(t));
	assert_int_equal(dispatch(q, &t, 1, LIMITER_QUEUE_CAPACITY_FREED, 130), 1);
	assert_int_equal(t.started[0], 10);
	assert_int_equal(stats_of(q).delayed, 0);
	memset(&t, 0, sizeof(t));
	assert_int_equal(dispatch(q, &t, 2, LIMITER_QUEUE_CAPACITY_FREED, 131), 2);
	assert_int_equal(t.started[0], 11);
	assert_int_equal(t.started[1], 3);
	done(q, c1, LIMITER_QUEUE_EXIT_DONE);
	done(q, c2, LIMITER_QUEUE_EXIT_DONE);
	done(q, r1, LIMITER_QUEUE_EXIT_DONE);
	done(q, r2, LIMITER_QUEUE_EXIT_DONE);
	done(q, c3, LIMITER_QUEUE_EXIT_DONE);
	assert_all_forgotten(q);
	limiter_queue_free(q);
}

static void test_repushed_retry_keeps_its_hold_and_delays_keep_doubling(void **state)
{
	struct limiter_queue *q = new_queue(16, 64);
	struct req *r = push_ok(q, 1, "a", 0);
	struct trial t = { 0 };
	int64_t delay = 0;

	(void)state;
	assert_int_equal(dispatch(q, &t, 1, LIMITER_QUEUE_CAPACITY_FREED, 5), 1);
	/* The store failed: back for a retry, twice. */
	assert_int_equal(limiter_queue_push(q, &r->qe, "a", 0, 1, LIMITER_QUEUE_RETRY, FAR, 10, &delay), 0);
	assert_int_equal(delay, 2 * BASE_MS);
	assert_int_equal(r->qe.enqueued_ms, 0); /* first deferred at 0 */
	assert_int_equal(dispatch(q, &t, 1, LIMITER_QUEUE_TIMER, 10 + 2 * BASE_MS), 1);
	assert_int_equal(limiter_queue_push(q, &r->qe, "a", 0, 1, LIMITER_QUEUE_RETRY, FAR, 300, &delay), 0);
	assert_int_equal(delay, 4 * BASE_MS);
	assert_int_equal(stats_of(q).backoff.tracked, 1);
	done(q, r, LIMITER_QUEUE_EXIT_CANCELLED);
	assert_all_forgotten(q);
	limiter_queue_free(q);
}

static void test_timer_offers_only_due_heads_and_failed_retry_doubles_delay(void **state)
{
	struct limiter_queue *q = new_queue(16, 64);
	struct req *a = push_ok(q, 1, "a", 0), *a2 = push_ok(q, 2, "a", 0), *b = push_ok(q, 3, "b", 50);
	struct trial t = { 0 };

	(void)state;
	assert_int_equal(limiter_queue_next_wake(q), 100); /* a's head */
	assert_int_equal(dispatch(q, &t, 0, LIMITER_QUEUE_TIMER, 99), 0);
	assert_int_equal(t.noffered, 0);
	assert_int_equal(dispatch(q, &t, 0, LIMITER_QUEUE_TIMER, 100), 0);
	assert_int_equal(t.noffered, 1);
	assert_int_equal(t.offered[0], 1);
	/* The failed retry: 2 x base from now. */
	assert_int_equal(a->qe.not_before_ms, 100 + 2 * BASE_MS);
	assert_int_equal(a->qe.retries, 1);
	assert_int_equal(backoff_failures(limiter_queue_backoff(q), &a->qe.ref), 2);
	assert_int_equal(limiter_queue_next_wake(q), 150); /* now b's head */
	memset(&t, 0, sizeof(t));
	assert_int_equal(dispatch(q, &t, 0, LIMITER_QUEUE_TIMER, 150), 0);
	assert_int_equal(t.noffered, 1);
	assert_int_equal(t.offered[0], 3);
	assert_int_equal(b->qe.not_before_ms, 150 + 2 * BASE_MS);
	assert_int_equal(limiter_queue_next_wake(q), 300);
	memset(&t, 0, sizeof(t));
	assert_int_equal(dispatch(q, &t, 0, LIMITER_QUEUE_TIMER, 300), 0);
	assert_int_equal(a->qe.not_before_ms, 300 + 4 * BASE_MS);
	assert_int_equal(a->qe.retries, 2);
	/* Freed capacity is offered whatever the backoff, and a refusal there is no failed retry. */
	memset(&t, 0, sizeof(t));
	assert_int_equal(dispatch(q, &t, 0, LIMITER_QUEUE_CAPACITY_FREED, 310), 0);
	assert_int_equal(t.noffered, 1);
	assert_int_equal(a->qe.not_before_ms, 700);
	assert_int_equal(a->qe.retries, 2);
	/* All due at 700, taking turns: a's head, b's, then a2 (due since 100, behind a's head). */
	memset(&t, 0, sizeof(t));
	assert_int_equal(dispatch(q, &t, 5, LIMITER_QUEUE_TIMER, 700), 3);
	assert_int_equal(t.started[0], 1);
	assert_int_equal(t.started[1], 3);
	assert_int_equal(t.started[2], 2);
	assert_int_equal(a2->qe.retries, 0); /* only heads retried */
	done(q, a, LIMITER_QUEUE_EXIT_DONE);
	done(q, a2, LIMITER_QUEUE_EXIT_DONE);
	done(q, b, LIMITER_QUEUE_EXIT_DONE);
	assert_all_forgotten(q);
	limiter_queue_free(q);
}

static void test_next_wake_is_earliest_deadline_head_retry_or_due_retry(void **state)
{
	struct limiter_queue *q = new_queue(16, 64);
	struct req *a = req_new(1, "a"), *a2 = req_new(2, "a"), *b = req_new(3, "b");

	(void)state;
	assert_int_equal(limiter_queue_next_wake(q), -1);
	assert_int_equal(push(q, a, LIMITER_QUEUE_CAPACITY, 5000, 1000), 0);
	assert_int_equal(limiter_queue_next_wake(q), 1000 + BASE_MS); /* the head's retry */
	assert_int_equal(push(q, a2, LIMITER_QUEUE_CAPACITY, 1050, 1000), 0);
	assert_int_equal(limiter_queue_next_wake(q), 1050); /* a deadline behind the head */
	assert_int_equal(push(q, b, LIMITER_QUEUE_RETRY, 5000, 900), 0);
	assert_int_equal(limiter_queue_next_wake(q), 900 + BASE_MS); /* a delayed retry coming due */
	done(q, b, LIMITER_QUEUE_EXIT_CANCELLED);
	assert_int_equal(limiter_queue_next_wake(q), 1050);
	done(q, a2, LIMITER_QUEUE_EXIT_CANCELLED);
	assert_int_equal(limiter_queue_next_wake(q), 1100);
	done(q, a, LIMITER_QUEUE_EXIT_CANCELLED);
	assert_all_forgotten(q);
	limiter_queue_free(q);
}

static void test_finished_entry_freed_by_try_is_never_touched_again(void **state)
{
	struct limiter_queue *q = new_queue(64, 64);
	struct trial t = { .finish = 1 };

	(void)state;
	for (int i = 0; i < 10; i++)
		push_ok(q, i, i % 2 ? "a" : "b", 0);
	/* Each one is left and freed inside try; ASan reports any later read or write. */
	assert_int_equal(dispatch(q, &t, 10, LIMITER_QUEUE_CAPACITY_FREED, 1), 0);
	assert_int_equal(t.nstarted, 10);
	assert_all_forgotten(q);
	assert_int_equal(stats_of(q).exits[LIMITER_QUEUE_EXIT_REJECTED], 10);
	assert_int_equal(stats_of(q).backoff.forgotten, 10);
	limiter_queue_free(q);
}

static void count_tenant(const char *tenant, uint64_t queued, void *arg)
{
	uint64_t *seen = arg;

	seen[tenant[0] - 'a'] += queued;
	seen[2]++;
}

static void test_tenant_exists_only_while_it_has_entries(void **state)
{
	struct limiter_queue *q = new_queue(16, 64);
	struct req *a = push_ok(q, 1, "a", 0), *b1 = push_ok(q, 2, "b", 0), *b2 = push_ok(q, 3, "b", 0);
	uint64_t seen[3] = { 0 };

	(void)state;
	limiter_queue_foreach_tenant(q, count_tenant, seen);
	assert_int_equal(seen[0], 1);
	assert_int_equal(seen[1], 2);
	assert_int_equal(seen[2], 2);
	assert_int_equal(stats_of(q).tenants, 2);
	done(q, a, LIMITER_QUEUE_EXIT_CANCELLED);
	assert_int_equal(stats_of(q).tenants, 1);
	assert_int_equal(limiter_queue_tenant_length(q, "a"), 0);
	assert_int_equal(limiter_queue_tenant_length(q, "b"), 2);
	done(q, b1, LIMITER_QUEUE_EXIT_CANCELLED);
	done(q, b2, LIMITER_QUEUE_EXIT_CANCELLED);
	memset(seen, 0, sizeof(seen));
	limiter_queue_foreach_tenant(q, count_tenant, seen);
	assert_int_equal(seen[2], 0);
	assert_all_forgotten(q);
	limiter_queue_free(q);
	limiter_queue_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_started_request_forgets_its_key_when_done),
		cmocka_unit_test(test_refused_push_forgets_its_key_on_rejected_exit),
		cmocka_unit_test(test_expired_request_forgets_its_key_on_timeout_exit),
		cmocka_unit_test(test_cancelled_request_leaves_queue_and_forgets_its_key),
		cmocka_unit_test(test_evicted_key_is_retaken_fresh_and_its_forget_is_a_noop),
		cmocka_unit_test(test_never_pushed_entry_leaves_without_counting),
		cmocka_unit_test(test_entries_of_one_tenant_start_in_fifo_order),
		cmocka_unit_test(test_lone_entry_of_second_tenant_starts_second_behind_a_200_entry_tenant),
		cmocka_unit_test(test_tenants_take_turns_when_capacity_is_plenty),
		cmocka_unit_test(test_tenant_full_skips_only_that_tenant),
		cmocka_unit_test(test_no_capacity_stops_dispatch_and_keeps_order),
		cmocka_unit_test(test_push_refused_when_queue_or_tenant_is_full),
		cmocka_unit_test(test_overlong_tenant_name_is_refused),
		cmocka_unit_test(test_retry_entry_waits_out_its_delay_then_joins_the_front),
		cmocka_unit_test(test_repushed_retry_keeps_its_hold_and_delays_keep_doubling),
		cmocka_unit_test(test_timer_offers_only_due_heads_and_failed_retry_doubles_delay),
		cmocka_unit_test(test_next_wake_is_earliest_deadline_head_retry_or_due_retry),
		cmocka_unit_test(test_finished_entry_freed_by_try_is_never_touched_again),
		cmocka_unit_test(test_tenant_exists_only_while_it_has_entries),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

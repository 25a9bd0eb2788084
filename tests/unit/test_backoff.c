/*
 * backoff: the table stays bounded when keys are never forgotten (client-go's incident), holds
 * and their generations, exponential delays with jitter, the token bucket, and reloads.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "limiter/backoff.h"

/* Exponential delays only: no jitter, no bucket. */
static struct backoff_settings plain(int64_t base, int64_t max, uint32_t max_keys)
{
	return (struct backoff_settings){ .base_delay_ms = base, .max_delay_ms = max, .max_keys = max_keys,
					  .rate = 0, .burst = 0, .jitter = 0, .seed = 1 };
}

static struct backoff *new_ok(const struct backoff_settings *s)
{
	struct backoff *b = backoff_new(s);

	assert_non_null(b);
	return b;
}

static struct backoff_stats stats_of(const struct backoff *b)
{
	struct backoff_stats st;

	backoff_get_stats(b, &st);
	return st;
}

static void test_tracked_keys_never_exceed_cap_when_never_forgotten(void **state)
{
	enum { KEYS = 50000, FAILS = 3, CAP = 100 };
	struct backoff_settings s = plain(5, 1000, CAP);
	struct backoff_ref *refs = calloc(KEYS, sizeof(*refs));
	struct backoff *b = new_ok(&s);
	struct backoff_stats st;
	uint64_t peak = 0;

	(void)state;
	assert_non_null(refs);
	/* Each key fails a few times and is never forgotten, as client-go's leaked items were. */
	for (uint64_t k = 0; k < KEYS; k++) {
		for (int f = 0; f < FAILS; f++) {
			assert_int_equal(backoff_when(b, &refs[k], 0xabc00000ULL + k, (int64_t)k), 5 << f);
			st = stats_of(b);
			if (st.tracked > CAP)
				fail_msg("%llu keys tracked after key %llu, cap %d", (unsigned long long)st.tracked,
					 (unsigned long long)k, CAP);
			peak = st.tracked > peak ? st.tracked : peak;
		}
		assert_int_equal(backoff_failures(b, &refs[k]), FAILS);
	}
	st = stats_of(b);
	assert_int_equal(peak, CAP);
	assert_int_equal(st.tracked, CAP);
	assert_int_equal(st.max_keys, CAP);
	assert_int_equal(st.evictions, KEYS - CAP);
	assert_int_equal(st.forgotten, 0);
	assert_int_equal(st.failures, (uint64_t)KEYS * FAILS);
	/* The most recently failed keys are the ones kept; older holds are stale. */
	assert_int_equal(backoff_failures(b, &refs[KEYS - 1]), FAILS);
	assert_int_equal(backoff_failures(b, &refs[KEYS - CAP]), FAILS);
	assert_int_equal(backoff_failures(b, &refs[KEYS - CAP - 1]), 0);
	assert_int_equal(backoff_failures(b, &refs[0]), 0);
	/* Giving every hold back, stale or not, leaves nothing behind. */
	for (uint64_t k = 0; k < KEYS; k++)
		backoff_forget(b, &refs[k]);
	st = stats_of(b);
	assert_int_equal(st.tracked, 0);
	assert_int_equal(st.forgotten, CAP);
	backoff_free(b);
	free(refs);
}

static void test_delays_double_from_base_and_cap_at_max(void **state)
{
	static const int64_t want[] = { 10, 20, 40, 80, 160, 250, 250, 250 };
	struct backoff_settings s = plain(10, 250, 8);
	struct backoff *b = new_ok(&s);
	struct backoff_ref r = { 0 };

	(void)state;
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		assert_int_equal(backoff_when(b, &r, 42, 1000), want[i]);
		assert_int_equal(backoff_failures(b, &r), i + 1);
	}
	backoff_forget(b, &r);
	assert_int_equal(r.slot, 0);
	assert_int_equal(stats_of(b).tracked, 0);
	backoff_free(b);
}

static void test_delay_shift_does_not_overflow_after_many_failures(void **state)
{
	struct backoff_settings s = plain(3, INT64_MAX, 1);
	struct backoff *b = new_ok(&s);
	struct backoff_ref r = { 0 };
	int64_t prev = 0, d;

	(void)state;
	for (int i = 0; i < 200; i++) {
		d = backoff_when(b, &r, 7, 0);
		assert_true(d >= prev); /* never wraps negative or back down */
		prev = d;
	}
	assert_int_equal(prev, INT64_MAX);
	backoff_forget(b, &r);
	backoff_free(b);
}

static void test_jitter_keeps_delays_within_bounds(void **state)
{
	struct backoff_settings s = plain(1000, 64000, 64);
	struct backoff *b;
	int distinct = 0;
	int64_t first = -1;

	(void)state;
	s.jitter = 0.4;
	s.seed = 12345;
	b = new_ok(&s);
	for (uint64_t k = 0; k < 50; k++) {
		struct backoff_ref r = { 0 };

		for (int f = 0; f < 8; f++) {
			int64_t d = 1000LL << f < 64000 ? 1000LL << f : 64000;
			int64_t got = backoff_when(b, &r, k, 0);

			if (got < (int64_t)ceil((double)d * (1 - s.jitter)) || got > d)
				fail_msg("failure %d of key %llu: %lld outside [%g, %lld]", f, (unsigned long long)k,
					 (long long)got, d * (1 - s.jitter), (long long)d);
			if (f == 0) {
				distinct += got != first;
				first = got;
			}
		}
		backoff_forget(b, &r);
	}
	/* Requests that failed together do not retry together. */
	assert_true(distinct > 25);
	backoff_free(b);

	/* Full jitter goes down to 0, never below. */
	s.jitter = 1;
	b = new_ok(&s);
	for (uint64_t k = 0; k < 1000; k++) {
		struct backoff_ref r = { 0 };
		int64_t got = backoff_when(b, &r, k, 0);

		assert_true(got >= 0 && got <= 1000);
		backoff_forget(b, &r);
	}
	backoff_free(b);
}

static void test_same_seed_gives_same_jitter(void **state)
{
	struct backoff_settings s = plain(1000, 1000, 4);
	struct backoff *a, *b;

	(void)state;
	s.jitter = 0.5;
	s.seed = 99;
	a = new_ok(&s);
	b = new_ok(&s);
	for (int i = 0; i < 100; i++) {
		struct backoff_ref ra = { 0 }, rb = { 0 };

		assert_int_equal(backoff_when(a, &ra, (uint64_t)i, 0), backoff_when(b, &rb, (uint64_t)i, 0));
		backoff_forget(a, &ra);
		backoff_forget(b, &rb);
	}
	backoff_free(a);
	backoff_free(b);
}

static void test_holders_of_one_key_share_failures_until_last_forget(void **state)
{
	struct backoff_settings s = plain(10, 10000, 4);
	struct backoff *b = new_ok(&s);
	struct backoff_ref r1 = { 0 }, r2 = { 0 }, r3 = { 0 };

	(void)state;
	assert_int_equal(backoff_when(b, &r1, 77, 0), 10);
	assert_int_equal(backoff_when(b, &r2, 77, 0), 20); /* the second holder continues the count */
	assert_int_equal(backoff_when(b, &r1, 77, 0), 40); /* a hold already taken is reused */
	assert_int_equal(backoff_failures(b, &r1), 3);
	assert_int_equal(backoff_failures(b, &r2), 3);
	assert_int_equal(stats_of(b).tracked, 1);

	backoff_forget(b, &r1);
	assert_int_equal(r1.slot, 0);
	assert_int_equal(backoff_failures(b, &r1), 0);
	assert_int_equal(stats_of(b).tracked, 1); /* r2 still holds it */
	assert_int_equal(stats_of(b).forgotten, 0);
	assert_int_equal(backoff_failures(b, &r2), 3);
	assert_int_equal(backoff_when(b, &r2, 77, 0), 80);

	backoff_forget(b, &r2);
	assert_int_equal(stats_of(b).tracked, 0);
	assert_int_equal(stats_of(b).forgotten, 1);
	/* Forgotten with its last hold: the next failure starts from the base again. */
	assert_int_equal(backoff_when(b, &r3, 77, 0), 10);
	backoff_forget(b, &r3);
	backoff_forget(b, &r3); /* zero: nothing */
	assert_int_equal(stats_of(b).forgotten, 2);
	backoff_free(b);
}

static void test_hold_on_another_key_is_given_back(void **state)
{
	struct backoff_settings s = plain(10, 10000, 4);
	struct backoff *b = new_ok(&s);
	struct backoff_ref r = { 0 };

	(void)state;
	assert_int_equal(backoff_when(b, &r, 1, 0), 10);
	assert_int_equal(backoff_when(b, &r, 1, 0), 20);
	assert_int_equal(backoff_when(b, &r, 2, 0), 10);
	assert_int_equal(stats_of(b).tracked, 1);
	assert_int_equal(stats_of(b).forgotten, 1);
	backoff_forget(b, &r);
	assert_int_equal(stats_of(b).tracked, 0);
	backoff_free(b);
}

static void test_stale_ref_retakes_fresh_state_and_its_forget_is_a_noop(void **state)
{
	struct backoff_settings s = plain(10, 10000, 2);
	struct backoff *b = new_ok(&s);
	struct backoff_ref r1 = { 0 }, r2 = { 0 }, r3 = { 0 }, stale;
	struct backoff_stats st;

	(void)state;
	backoff_when(b, &r1, 1, 0);
	backoff_when(b, &r1, 1, 1);
	assert_int_equal(backoff_when(b, &r1, 1, 2), 40);
	backoff_when(b, &r2, 2, 3);
	backoff_when(b, &r3, 3, 4); /* full: key 1, the least recently failed, is evicted */
	st = stats_of(b);
	assert_int_equal(st.tracked, 2);
	assert_int_equal(st.evictions, 1);
	assert_int_equal(backoff_failures(b, &r1), 0);

	/* Forgetting a stale hold drops nobody else's state, even though key 3 reuses its slot. */
	stale = r1;
	backoff_forget(b, &stale);
	assert_int_equal(stale.slot, 0);
	st = stats_of(b);
	assert_int_equal(st.tracked, 2);
	assert_int_equal(st.forgotten, 0);
	assert_int_equal(backoff_failures(b, &r3), 1);

	/* The stale hold is re-taken: key 1 starts again from 0 failures (and key 2 is evicted). */
	assert_int_equal(backoff_when(b, &r1, 1, 5), 10);
	assert_int_equal(backoff_failures(b, &r1), 1);
	assert_int_equal(backoff_failures(b, &r2), 0);
	assert_int_equal(stats_of(b).evictions, 2);
	backoff_forget(b, &r1);
	backoff_forget(b, &r2);
	backoff_forget(b, &r3);
	st = stats_of(b);
	assert_int_equal(st.tracked, 0);
	assert_int_equal(st.forgotten, 2);
	backoff_free(b);
}

static void test_least_recently_failed_key_is_evicted_first(void **state)
{
	struct backoff_settings s = plain(10, 10000, 2);
	struct backoff *b = new_ok(&s);
	struct backoff_ref r1 = { 0 }, r2 = { 0 }, r3 = { 0 };

	(void)state;
	backoff_when(b, &r1, 1, 0);
	backoff_when(b, &r2, 2, 1);
	backoff_when(b, &r1, 1, 2); /* key 1 failed last: key 2 is now the least recent */
	backoff_when(b, &r3, 3, 3);
	assert_int_equal(backoff_failures(b, &r1), 2);
	assert_int_equal(backoff_failures(b, &r2), 0);
	assert_int_equal(backoff_failures(b, &r3), 1);
	backoff_forget(b, &r1);
	backoff_forget(b, &r2);
	backoff_forget(b, &r3);
	assert_int_equal(stats_of(b).tracked, 0);
	backoff_free(b);
}

static void test_bucket_delays_the_failure_past_its_burst(void **state)
{
	struct backoff_settings s = plain(1, 100000, 16);
	struct backoff_ref r[8] = { { 0 } };
	struct backoff *b;

	(void)state;
	s.rate = 10; /* one token per 100 ms */
	s.burst = 3;
	b = new_ok(&s);
	/* Distinct keys: each one's own delay is the 1 ms base. */
	assert_int_equal(backoff_when(b, &r[0], 100, 5000), 1);
	assert_int_equal(backoff_when(b, &r[1], 101, 5000), 1);
	assert_int_equal(backoff_when(b, &r[2], 102, 5000), 1);
	assert_int_equal(backoff_when(b, &r[3], 103, 5000), 100); /* the 4th in the same ms */
	assert_int_equal(backoff_when(b, &r[4], 104, 5000), 200); /* tokens already promised queue up */
	assert_int_equal(stats_of(b).bucket_delayed, 2);
	/* 100 ms refill one token, which the 5th already had: the next waits 200 ms again. */
	assert_int_equal(backoff_when(b, &r[5], 105, 5100), 200);
	/* Refilled past 0 (and capped at the burst): no wait. */
	assert_int_equal(backoff_when(b, &r[6], 106, 9000), 1);
	/* The result is the larger of the two: here the key's own delay. */
	for (int i = 0; i < 12; i++)
		backoff_when(b, &r[7], 107, 20000 + 1000 * i);
	assert_int_equal(backoff_when(b, &r[7], 107, 40000), 4096);
	assert_int_equal(stats_of(b).bucket_delayed, 3);
	for (int i = 0; i < 8; i++)
		backoff_forget(b, &r[i]);
	assert_int_equal(stats_of(b).tracked, 0);
	backoff_free(b);
}

static void test_clock_stepping_back_refills_nothing(void **state)
{
	struct backoff_settings s = plain(1, 1, 4);
	struct backoff_ref r = { 0 };
	struct backoff *b;

	(void)state;
	s.rate = 1;
	s.burst = 1;
	b = new_ok(&s);
	assert_int_equal(backoff_when(b, &r, 1, 10000), 1);
	assert_int_equal(backoff_when(b, &r, 1, 5000), 1000);
	assert_int_equal(backoff_when(b, &r, 1, 10000), 2000);
	backoff_forget(b, &r);
	backoff_free(b);
}

static void test_reload_keeps_most_recently_failed_keys_that_fit(void **state)
{
	enum { N = 10 };
	struct backoff_settings s = plain(10, 10000, N);
	struct backoff_ref r[N + 20] = { { 0 } }, old;
	struct backoff *b = new_ok(&s);
	struct backoff_stats st;

	(void)state;
	for (int k = 0; k < N; k++)
		backoff_when(b, &r[k], (uint64_t)k, k);
	s.max_keys = 4;
	assert_int_equal(backoff_configure(b, &s), 0);
	st = stats_of(b);
	assert_int_equal(st.tracked, 4);
	assert_int_equal(st.max_keys, 4);
	assert_int_equal(st.evictions, N - 4);
	for (int k = 0; k < N; k++)
		assert_int_equal(backoff_failures(b, &r[k]), k >= N - 4 ? 1 : 0);
	/* The kept holds still work, and the cap holds for new keys. */
	assert_int_equal(backoff_when(b, &r[N - 1], N - 1, 20), 20);
	old = r[N - 1];
	backoff_when(b, &r[N], 100, 21);
	st = stats_of(b);
	assert_int_equal(st.tracked, 4);
	assert_int_equal(st.evictions, N - 3);
	assert_int_equal(backoff_failures(b, &r[N - 4]), 0); /* the least recently failed went */

	/* Growing keeps everything and makes room. */
	s.max_keys = 20;
	assert_int_equal(backoff_configure(b, &s), 0);
	for (int k = N + 1; k < N + 17; k++)
		backoff_when(b, &r[k], (uint64_t)(100 + k), 30);
	st = stats_of(b);
	assert_int_equal(st.tracked, 20);
	assert_int_equal(st.evictions, N - 3);
	assert_int_equal(backoff_failures(b, &r[N - 1]), 2);

	/* Down to one key, then back up: no stale hold comes back to life. */
	s.max_keys = 1;
	assert_int_equal(backoff_configure(b, &s), 0);
	assert_int_equal(stats_of(b).tracked, 1);
	s.max_keys = 30;
	assert_int_equal(backoff_configure(b, &s), 0);
	for (int k = N + 17; k < N + 20; k++)
		backoff_when(b, &r[k], (uint64_t)(200 + k), 40);
	assert_int_equal(stats_of(b).tracked, 4);
	for (int k = 0; k < N + 20; k++)
		backoff_forget(b, &r[k]);
	st = stats_of(b);
	assert_int_equal(st.tracked, 0);
	assert_int_equal(st.forgotten, 4);

	/* Empty, the array shrinks for real; slots reused after growing again get new generations. */
	s.max_keys = 2;
	assert_int_equal(backoff_configure(b, &s), 0);
	s.max_keys = N;
	assert_int_equal(backoff_configure(b, &s), 0);
	for (int k = 0; k < N; k++)
		backoff_when(b, &r[k], (uint64_t)(300 + k), 50);
	assert_int_equal(stats_of(b).tracked, N);
	assert_int_equal(backoff_failures(b, &old), 0);
	backoff_forget(b, &old);
	assert_int_equal(stats_of(b).tracked, N);
	for (int k = 0; k < N; k++)
		backoff_forget(b, &r[k]);
	assert_int_equal(stats_of(b).tracked, 0);
	backoff_free(b);
}

static void test_reload_caps_bucket_tokens_at_new_burst(void **state)
{
	struct backoff_settings s = plain(1, 1, 16);
	struct backoff_ref r[4] = { { 0 } };
	struct backoff *b;

	(void)state;
	s.rate = 10;
	s.burst = 10;
	b = new_ok(&s);
	s.burst = 1;
	assert_int_equal(backoff_configure(b, &s), 0);
	assert_int_equal(backoff_when(b, &r[0], 1, 0), 1);
	assert_int_equal(backoff_when(b, &r[1], 2, 0), 100);
	for (int i = 0; i < 4; i++)
		backoff_forget(b, &r[i]);
	backoff_free(b);
}

static void test_invalid_settings_are_refused(void **state)
{
	struct backoff_settings good = plain(10, 100, 4), s;
	struct backoff *b = new_ok(&good);
	struct backoff_ref r = { 0 };

	(void)state;
	s = good, s.base_delay_ms = 0;
	assert_null(backoff_new(&s));
	assert_int_equal(backoff_configure(b, &s), -EINVAL);
	s = good, s.max_delay_ms = 9;
	assert_int_equal(backoff_configure(b, &s), -EINVAL);
	s = good, s.max_keys = 0;
	assert_null(backoff_new(&s));
	assert_int_equal(backoff_configure(b, &s), -EINVAL);
	s = good, s.rate = -1;
	assert_int_equal(backoff_configure(b, &s), -EINVAL);
	s = good, s.rate = NAN;
	assert_int_equal(backoff_configure(b, &s), -EINVAL);
	s = good, s.rate = 5, s.burst = 0;
	assert_int_equal(backoff_configure(b, &s), -EINVAL);
	s = good, s.jitter = 1.5;
	assert_int_equal(backoff_configure(b, &s), -EINVAL);
	s = good, s.jitter = NAN;
	assert_int_equal(backoff_configure(b, &s), -EINVAL);
	/* Unchanged by the refusals. */
	assert_int_equal(stats_of(b).max_keys, 4);
	assert_int_equal(backoff_when(b, &r, 1, 0), 10);
	backoff_forget(b, &r);
	backoff_free(b);
	backoff_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tracked_keys_never_exceed_cap_when_never_forgotten),
		cmocka_unit_test(test_delays_double_from_base_and_cap_at_max),
		cmocka_unit_test(test_delay_shift_does_not_overflow_after_many_failures),
		cmocka_unit_test(test_jitter_keeps_delays_within_bounds),
		cmocka_unit_test(test_same_seed_gives_same_jitter),
		cmocka_unit_test(test_holders_of_one_key_share_failures_until_last_forget),
		cmocka_unit_test(test_hold_on_another_key_is_given_back),
		cmocka_unit_test(test_stale_ref_retakes_fresh_state_and_its_forget_is_a_noop),
		cmocka_unit_test(test_least_recently_failed_key_is_evicted_first),
		cmocka_unit_test(test_bucket_delays_the_failure_past_its_burst),
		cmocka_unit_test(test_clock_stepping_back_refills_nothing),
		cmocka_unit_test(test_reload_keeps_most_recently_failed_keys_that_fit),
		cmocka_unit_test(test_reload_caps_bucket_tokens_at_new_burst),
		cmocka_unit_test(test_invalid_settings_are_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

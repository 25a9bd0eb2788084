/*
 * limiter_regex: Prometheus' full anchoring, compile errors, the matches-everything probe, match
 * limits against catastrophic backtracking, and the compile cache's references and eviction.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "limiter/regex.h"

/* A catastrophic match must give up well within this (the limit makes it ~1 ms). */
#define CATASTROPHIC_MAX_MS 200.0

static struct limiter_regex *get_ok(const char *pattern)
{
	char err[256] = "";
	struct limiter_regex *re = limiter_regex_get(pattern, err, sizeof(err));

	if (!re)
		fail_msg("pattern %s: %s", pattern, err);
	return re;
}

static int match_str(const char *pattern, const char *s)
{
	struct limiter_regex *re = get_ok(pattern);
	int rc = limiter_regex_match(re, s, strlen(s));

	limiter_regex_release(re);
	return rc;
}

static int everything(const char *pattern)
{
	struct limiter_regex *re = get_ok(pattern);
	int rc = limiter_regex_matches_everything(re);

	limiter_regex_release(re);
	return rc;
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int teardown(void **state)
{
	(void)state;
	limiter_regex_cache_flush();
	return 0;
}

static void test_anchors_at_both_ends(void **state)
{
	(void)state;
	assert_int_equal(match_str("a", "a"), 1);
	assert_int_equal(match_str("a", "ab"), 0);
	assert_int_equal(match_str("a", "ba"), 0);
	assert_int_equal(match_str("b", "abc"), 0);
	assert_int_equal(match_str("a|ab", "ab"), 1); /* each branch anchored, as `^(?:a|ab)$` */
	assert_int_equal(match_str("api-.*", "api-7f9c"), 1);
	assert_int_equal(match_str("api-.*", "xapi-7f9c"), 0);
	assert_int_equal(match_str(".*", ""), 1);
	assert_int_equal(match_str(".+", ""), 0);
}

static void test_matches_utf8_and_binary_subjects(void **state)
{
	static const char binary[] = { 'a', (char)0xff, (char)0xfe, 'b' };

	(void)state;
	assert_int_equal(match_str("z.rich", "z\xc3\xbcrich"), 1); /* one character, two bytes */
	/* Not UTF-8: no error, the invalid bytes just match no character. */
	struct limiter_regex *re = get_ok("a.*b");
	assert_int_equal(limiter_regex_match(re, binary, sizeof(binary)), 0);
	limiter_regex_release(re);
	re = get_ok("a");
	assert_int_equal(limiter_regex_match(re, binary, sizeof(binary)), 0);
	assert_int_equal(limiter_regex_match(re, NULL, 0), 0);
	limiter_regex_release(re);
}

static void test_invalid_pattern_names_the_problem(void **state)
{
	char err[256] = "";

	(void)state;
	assert_null(limiter_regex_get("(a|b", err, sizeof(err)));
	assert_non_null(strstr(err, "missing closing parenthesis"));
	assert_non_null(strstr(err, "at offset 4"));
	assert_null(strchr(err, '\n'));
	assert_null(limiter_regex_get("a{2,1}", err, sizeof(err)));
	assert_true(strlen(err) > 0);
	/* A pattern that is not UTF-8 is an error, not a byte-wise pattern. */
	assert_null(limiter_regex_get("a\xff", err, sizeof(err)));
	assert_non_null(strstr(err, "UTF-8"));
}

static void test_matches_everything_for_catch_all_patterns(void **state)
{
	(void)state;
	assert_int_equal(everything(".+"), 1);
	assert_int_equal(everything(".*"), 1);
	assert_int_equal(everything(".*.*"), 1);
	assert_int_equal(everything("(.*)"), 1);
	assert_int_equal(everything("(?:.+|)"), 1);
	assert_int_equal(everything("[a-zA-Z_:][a-zA-Z0-9_:]*"), 1);
}

static void test_bounded_patterns_do_not_match_everything(void **state)
{
	(void)state;
	assert_int_equal(everything("up|x"), 0);
	assert_int_equal(everything("up"), 0);
	assert_int_equal(everything("node_.*"), 0);
	assert_int_equal(everything(".{1,50}"), 0); /* the 200-character name is not matched */
	assert_int_equal(everything("[a-z_]+"), 0);  /* no colons, digits or upper case */
}

static void test_match_limit_stops_catastrophic_backtracking(void **state)
{
	char subject[64];
	struct limiter_regex *re;
	double t0, elapsed;

	(void)state;
	memset(subject, 'a', sizeof(subject) - 2);
	subject[sizeof(subject) - 2] = '!';
	subject[sizeof(subject) - 1] = '\0';
	re = get_ok("(a|aa)+");
	t0 = now_ms();
	assert_int_equal(limiter_regex_match(re, subject, strlen(subject)), -1);
	elapsed = now_ms() - t0;
	limiter_regex_release(re);
	assert_true(elapsed < CATASTROPHIC_MAX_MS);

	re = get_ok("(\\w+\\s?)+"); /* the classic ReDoS shape */
	t0 = now_ms();
	assert_int_equal(limiter_regex_match(re, subject, strlen(subject)), -1);
	elapsed = now_ms() - t0;
	limiter_regex_release(re);
	assert_true(elapsed < CATASTROPHIC_MAX_MS);
}

static void test_cache_shares_one_compile_per_pattern(void **state)
{
	struct limiter_regex_stats before, after;
	struct limiter_regex *a, *b;

	(void)state;
	limiter_regex_get_stats(&before);
	a = get_ok("job-[0-9]+");
	b = get_ok("job-[0-9]+");
	assert_ptr_equal(a, b);
	limiter_regex_get_stats(&after);
	assert_int_equal(after.compiles - before.compiles, 1);
	assert_int_equal(after.hits - before.hits, 1);
	assert_int_equal(after.in_use, before.in_use + 1);
	limiter_regex_release(a);
	limiter_regex_get_stats(&after);
	assert_int_equal(after.in_use, before.in_use + 1); /* b still holds it */
	limiter_regex_release(b);
	limiter_regex_release(NULL);
	limiter_regex_get_stats(&after);
	assert_int_equal(after.in_use, before.in_use);
	assert_int_equal(after.entries, before.entries + 1); /* idle, still cached */
	limiter_regex_cache_flush();
	limiter_regex_get_stats(&after);
	assert_int_equal(after.entries, 0);
}

static void test_cache_evicts_least_recently_released_idle_pattern(void **state)
{
	struct limiter_regex_stats st, before;
	struct limiter_regex *held, *re;
	char pat[32];

	(void)state;
	limiter_regex_cache_flush();
	limiter_regex_get_stats(&before);
	held = get_ok("held");
	for (int i = 0; i < LIMITER_REGEX_CACHE_MAX + 10; i++) {
		snprintf(pat, sizeof(pat), "p%d", i);
		limiter_regex_release(get_ok(pat));
	}
	limiter_regex_get_stats(&st);
	assert_int_equal(st.entries, LIMITER_REGEX_CACHE_MAX);
	assert_int_equal(st.evictions - before.evictions, 11); /* 1 + CAP + 10 patterns, CAP slots */
	/* The referenced pattern survived; the oldest idle ones were dropped, the newest kept. */
	re = get_ok("held");
	assert_ptr_equal(re, held);
	limiter_regex_release(re);
	limiter_regex_get_stats(&st);
	uint64_t compiles = st.compiles;
	limiter_regex_release(get_ok("p0"));
	snprintf(pat, sizeof(pat), "p%d", LIMITER_REGEX_CACHE_MAX + 9);
	limiter_regex_release(get_ok(pat));
	limiter_regex_get_stats(&st);
	assert_int_equal(st.compiles, compiles + 1); /* p0 recompiled, the newest one a hit */
	assert_int_equal(limiter_regex_match(held, "held", 4), 1);
	limiter_regex_release(held);
}

static void test_cache_never_grows_past_cap_when_all_in_use(void **state)
{
	static struct limiter_regex *refs[LIMITER_REGEX_CACHE_MAX + 2];
	struct limiter_regex_stats st;
	char pat[32];

	(void)state;
	limiter_regex_cache_flush();
	for (int i = 0; i < LIMITER_REGEX_CACHE_MAX + 2; i++) {
		snprintf(pat, sizeof(pat), "u%d", i);
		refs[i] = get_ok(pat);
	}
	limiter_regex_get_stats(&st);
	assert_int_equal(st.entries, LIMITER_REGEX_CACHE_MAX);
	assert_int_equal(st.in_use, LIMITER_REGEX_CACHE_MAX + 2);
	/* The uncached ones still work, and are freed on release (valgrind checks). */
	assert_int_equal(limiter_regex_match(refs[LIMITER_REGEX_CACHE_MAX + 1], pat, strlen(pat)), 1);
	for (int i = 0; i < LIMITER_REGEX_CACHE_MAX + 2; i++)
		limiter_regex_release(refs[i]);
	limiter_regex_get_stats(&st);
	assert_int_equal(st.in_use, 0);
	assert_int_equal(st.entries, LIMITER_REGEX_CACHE_MAX);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_anchors_at_both_ends, teardown),
		cmocka_unit_test_teardown(test_matches_utf8_and_binary_subjects, teardown),
		cmocka_unit_test_teardown(test_invalid_pattern_names_the_problem, teardown),
		cmocka_unit_test_teardown(test_matches_everything_for_catch_all_patterns, teardown),
		cmocka_unit_test_teardown(test_bounded_patterns_do_not_match_everything, teardown),
		cmocka_unit_test_teardown(test_match_limit_stops_catastrophic_backtracking, teardown),
		cmocka_unit_test_teardown(test_cache_shares_one_compile_per_pattern, teardown),
		cmocka_unit_test_teardown(test_cache_evicts_least_recently_released_idle_pattern, teardown),
		cmocka_unit_test_teardown(test_cache_never_grows_past_cap_when_all_in_use, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

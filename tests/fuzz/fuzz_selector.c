/*
 * fuzz_selector: the PromQL selector parser (proto/selector.h) on arbitrary text, and the round
 * trip through the printer (proto_selector_print, proto/request.h) that /api/v1/explain, the
 * rejection messages and the logs rely on.
 *
 * Input: the selector text (cut at the first NUL byte, as a C string).
 *
 * Properties checked:
 *   - the result is 0 or -EINVAL with a terminated `at offset N: ...` line naming an offset
 *     inside the text, and a failed parse leaves nothing allocated;
 *   - a parsed selector has at least one matcher, no empty label name and at most one metric
 *     name matcher when the text started with a name;
 *   - round trip: the printed form parses again, to the same matchers (as a multiset: the
 *     printer moves the metric name first), and prints byte for byte the same;
 *   - the printer has snprintf semantics (full length returned, truncated output terminated).
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "proto/request.h"
#include "proto/selector.h"

/* The printed form of <s> (malloc'd), checking snprintf semantics on the way. */
static char *print(const struct proto_selector *s)
{
	struct proto_query q = { .matchers = s->matchers, .n_matchers = s->n_matchers };
	size_t need = proto_selector_print(&q, NULL, 0), n;
	char *buf = malloc(need + 1), small[8];

	FUZZ_CHECK(buf != NULL, "out of memory");
	n = proto_selector_print(&q, buf, need + 1);
	FUZZ_CHECK(n == need && strlen(buf) == need, "printer: %zu bytes needed, %zu returned, %zu written", need, n,
		   strlen(buf));
	n = proto_selector_print(&q, small, sizeof(small));
	FUZZ_CHECK(n == need && strlen(small) == (need < sizeof(small) ? need : sizeof(small) - 1) &&
			   strncmp(small, buf, strlen(small)) == 0,
		   "printer: truncated output \"%s\" is not a prefix of \"%s\"", small, buf);
	return buf;
}

static int matcher_cmp(const void *a, const void *b)
{
	const struct proto_matcher *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	if (c)
		return c;
	if (x->type != y->type)
		return x->type < y->type ? -1 : 1;
	return strcmp(x->value, y->value);
}

/* <a> and <b> hold the same matchers, in any order. */
static int same_matchers(const struct proto_selector *a, const struct proto_selector *b)
{
	struct proto_matcher *x, *y;
	int same = a->n_matchers == b->n_matchers;

	if (!same)
		return 0;
	x = malloc(a->n_matchers * sizeof(*x));
	y = malloc(b->n_matchers * sizeof(*y));
	FUZZ_CHECK(x && y, "out of memory");
	memcpy(x, a->matchers, a->n_matchers * sizeof(*x));
	memcpy(y, b->matchers, b->n_matchers * sizeof(*y));
	qsort(x, a->n_matchers, sizeof(*x), matcher_cmp);
	qsort(y, b->n_matchers, sizeof(*y), matcher_cmp);
	for (size_t i = 0; i < a->n_matchers && same; i++)
		same = matcher_cmp(&x[i], &y[i]) == 0;
	free(x);
	free(y);
	return same;
}

/* Parse <text>, checking the result's shape; returns the parse's code. */
static int parse_checked(const char *text, struct proto_selector *s, char *err, size_t errlen)
{
	int rc;

	memset(err, 'X', errlen);
	rc = proto_selector_parse(text, s, err, errlen);
	FUZZ_CHECK(rc == 0 || rc == -EINVAL, "proto_selector_parse returned %d", rc);
	if (rc < 0) {
		unsigned long off = 0;

		FUZZ_CHECK_ERRLINE(err, errlen);
		FUZZ_CHECK(sscanf(err, "at offset %lu: ", &off) == 1 && off <= strlen(text),
			   "error \"%s\" does not name an offset inside the %zu-byte text", err, strlen(text));
		FUZZ_CHECK(!s->matchers && !s->storage && !s->n_matchers, "a failed parse left something allocated");
		return rc;
	}
	FUZZ_CHECK(s->n_matchers > 0, "a selector without matchers parsed");
	for (size_t i = 0; i < s->n_matchers; i++) {
		const struct proto_matcher *m = &s->matchers[i];

		FUZZ_CHECK(m->type >= PROTO_MATCH_EQ && m->type <= PROTO_MATCH_NRE, "matcher %zu has type %d", i,
			   (int)m->type);
		FUZZ_CHECK(m->name && m->value && m->name[0], "matcher %zu has an empty or NULL name", i);
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1), *printed, *printed2, err[256];
	struct proto_selector a, b;

	FUZZ_CHECK(text != NULL, "out of memory");
	memcpy(text, data, size);
	text[size] = '\0';
	if (parse_checked(text, &a, err, sizeof(err)) < 0) {
		free(text);
		return 0;
	}
	printed = print(&a);
	FUZZ_CHECK(parse_checked(printed, &b, err, sizeof(err)) == 0,
		   "round trip: \"%s\" printed as \"%s\", which does not parse: %s", text, printed, err);
	FUZZ_CHECK(same_matchers(&a, &b), "round trip: \"%s\" printed as \"%s\" parses to other matchers", text,
		   printed);
	printed2 = print(&b);
	FUZZ_CHECK(strcmp(printed, printed2) == 0, "round trip: \"%s\" printed as \"%s\", then as \"%s\"", text, printed,
		   printed2);
	free(printed2);
	free(printed);
	proto_selector_clear(&a);
	proto_selector_clear(&b);
	free(text);
	return 0;
}

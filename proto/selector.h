/*
 * proto_selector: parse a PromQL series selector (`up{job="x",pod=~"a.*"}`, `{__name__=~".+"}`)
 * into matchers, for GET /api/v1/explain?match[]=... and for tests.
 *
 * Accepts what Prometheus accepts in a vector selector: an optional metric name (letters,
 * digits, '_' and ':'), then an optional brace block of `label op "value"` separated by commas
 * (a trailing comma is allowed), ops = != =~ !~, values in "double", 'single' or `raw` quotes
 * with Go string escapes. A metric name becomes an EQ matcher on __name__, first. No range, offset
 * or @ modifiers.
 */
#ifndef PROMGUARD_PROTO_SELECTOR_H
#define PROMGUARD_PROTO_SELECTOR_H

#include <stddef.h>

#include "proto/request.h"

struct proto_selector {
	struct proto_matcher *matchers; /* owned */
	size_t n_matchers;
	char *storage;                  /* owned: every name and value string */
};

/*
 * Parse <text>. Returns 0 and fills <out> (release with proto_selector_clear), or -EINVAL with one
 * line in <err> naming the offset and what was expected, or -ENOMEM. At least one matcher is
 * required (`{}` is an error, as in Prometheus).
 */
int proto_selector_parse(const char *text, struct proto_selector *out, char *err, size_t errlen);

void proto_selector_clear(struct proto_selector *s);

#endif

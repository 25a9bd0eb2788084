/*
 * proto_selector: PromQL series selector parser (see selector.h).
 *
 * A hand-written recursive-descent parser over the NUL-terminated text, following the PromQL
 * lexer (promql/parser/lex.go) for what a name, an operator and a string are, and Go's
 * strconv.UnquoteChar for escapes:
 *
 *   selector := ws [ metric ws ] [ '{' ws [ matcher { ws ',' ws matcher } ws [ ',' ws ] ] '}' ws ]
 *   metric   := [a-zA-Z_:][a-zA-Z0-9_:]*
 *   matcher  := label ws op ws string        label := [a-zA-Z_][a-zA-Z0-9_]* | string (PromQL 3)
 *   op       := '=' | '!=' | '=~' | '!~'     ws := { ' ' | '\t' | '\n' | '\r' }
 *
 * Every decoded string goes into one buffer allocated up front. Its size follows from the text:
 * escapes never decode to more bytes than they are written with, a quoted string loses at least
 * its two quotes (room for its NUL and its label name's NUL), and the only text-less strings are
 * "__name__" and the metric name's NUL. So strlen(text) + sizeof("__name__") + 1 bytes suffice.
 */
#include "proto/selector.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The label that carries the metric name. */
#define METRIC_NAME_LABEL "__name__"

struct parser {
	const char *text;              /* (ref) the whole selector */
	size_t pos;                    /* offset of the next character */
	char *err;                     /* (ref) error line, <errlen> bytes */
	size_t errlen;
	struct proto_selector *out;    /* (ref) result being built */
	size_t cap_matchers;           /* allocated entries of out->matchers */
	size_t used;                   /* bytes of out->storage in use */
};

/* Write "at offset <at>: <fmt...>" into the error buffer; returns -EINVAL. */
__attribute__((format(printf, 3, 4))) static int fail_at(struct parser *p, size_t at, const char *fmt, ...)
{
	char what[200];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	snprintf(p->err, p->errlen, "at offset %zu: %s", at, what);
	return -EINVAL;
}

/* The next character; the text's NUL marks its end, so looking never runs past it. */
static char peek(const struct parser *p)
{
	return p->text[p->pos];
}

/* White space as the PromQL lexer knows it (no comments: a selector is one expression). */
static void skip_ws(struct parser *p)
{
	while (peek(p) == ' ' || peek(p) == '\t' || peek(p) == '\n' || peek(p) == '\r')
		p->pos++;
}

/* Identifier characters; ':' only in metric names (recording rules), never in label names. */
static int is_name_start(char c, int colon)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
}

static int is_name_char(char c, int colon)
{
	return is_name_start(c, colon) || (c >= '0' && c <= '9');
}

/* Reserve <n> bytes of storage (within the bound computed in proto_selector_parse). */
static char *store(struct parser *p, size_t n)
{
	char *at = p->out->storage + p->used;

	p->used += n;
	return at;
}

/* Copy the identifier at the current position (metric name when <colon>) into storage. */
static const char *take_name(struct parser *p, int colon)
{
	size_t start = p->pos, len;
	char *s;

	while (is_name_char(peek(p), colon))
		p->pos++;
	len = p->pos - start;
	s = store(p, len + 1);
	memcpy(s, p->text + start, len);
	s[len] = '\0';
	return s;
}

/* Value of hex digit <c>, or -1. */
static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Read <n> hex digits after the escape letter; -1 (error set) when one is missing. */
static int64_t read_hex(struct parser *p, size_t esc_at, int n)
{
	int64_t v = 0;

	for (int i = 0; i < n; i++) {
		int d = hex_value(peek(p));

		if (d < 0) {
			fail_at(p, esc_at, "invalid escape \\%c: want %d hex digits", p->text[esc_at + 1], n);
			return -1;
		}
		v = v << 4 | d;
		p->pos++;
	}
	return v;
}

/* Append code point <cp> (already validated) as UTF-8. */
static void put_utf8(char **w, uint32_t cp)
{
	unsigned char *o = (unsigned char *)*w;

	if (cp < 0x80) {
		*o++ = (unsigned char)cp;
	} else if (cp < 0x800) {
		*o++ = (unsigned char)(0xc0 | cp >> 6);
		*o++ = (unsigned char)(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) {
		*o++ = (unsigned char)(0xe0 | cp >> 12);
		*o++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		*o++ = (unsigned char)(0x80 | (cp & 0x3f));
	} else {
		*o++ = (unsigned char)(0xf0 | cp >> 18);
		*o++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
		*o++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		*o++ = (unsigned char)(0x80 | (cp & 0x3f));
	}
	*w = (char *)o;
}

/*
 * One escape sequence inside a <quote>-quoted string; p->pos is on the backslash. Decodes it to
 * *<w> (advancing it) as strconv.UnquoteChar does: \a \b \f \n \r \t \v \\, the string's own
 * quote, \xNN and \NNN (one raw byte), \uNNNN and \UNNNNNNNN (a code point as UTF-8). A NUL is
 * refused because the matchers are C strings.
 */
static int unescape(struct parser *p, char quote, char **w)
{
	static const char simple_from[] = "abfnrtv\\", simple_to[] = "\a\b\f\n\r\t\v\\";
	size_t at = p->pos;
	char c = p->text[++p->pos];
	const char *simple = c ? strchr(simple_from, c) : NULL;
	int64_t v;

	p->pos++;
	if (simple || c == quote) {
		*(*w)++ = simple ? simple_to[simple - simple_from] : quote;
		return 0;
	}
	switch (c) {
	case 'x':
		if ((v = read_hex(p, at, 2)) < 0)
			return -EINVAL;
		break;
	case 'u':
	case 'U':
		if ((v = read_hex(p, at, c == 'u' ? 4 : 8)) < 0)
			return -EINVAL;
		if (v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
			return fail_at(p, at, "escape \\%c is not a valid Unicode code point", c);
		if (v == 0)
			return fail_at(p, at, "NUL characters are not supported in strings");
		put_utf8(w, (uint32_t)v);
		return 0;
	case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7':
		v = c - '0';
		for (int i = 0; i < 2; i++, p->pos++) {
			if (peek(p) < '0' || peek(p) > '7')
				return fail_at(p, at, "invalid octal escape: want 3 octal digits");
			v = v << 3 | (peek(p) - '0');
		}
		if (v > 0xff)
			return fail_at(p, at, "octal escape above \\377");
		break;
	default:
		if (c == '\0')
			return fail_at(p, at, "unterminated string");
		return fail_at(p, at, "unknown escape sequence \\%c", c);
	}
	if (v == 0)
		return fail_at(p, at, "NUL characters are not supported in strings");
	*(*w)++ = (char)v;
	return 0;
}

/*
 * A quoted string at p->pos ("double" or 'single' with escapes, `raw` without) into storage;
 * *<out> points at the NUL-terminated result.
 */
static int take_string(struct parser *p, const char **out, const char *what)
{
	size_t open = p->pos;
	char quote = peek(p);
	char *start, *w;

	if (quote != '"' && quote != '\'' && quote != '`')
		return fail_at(p, open, "expected %s in quotes (\", ' or `)", what);
	/* Writes never outrun the text (see the storage bound), so reserve after decoding. */
	start = w = p->out->storage + p->used;
	p->pos++;
	for (;;) {
		char c = peek(p);

		if (c == quote)
			break;
		/* PromQL: only raw strings may span lines. */
		if (c == '\0' || (c == '\n' && quote != '`'))
			return fail_at(p, open, "unterminated string");
		if (c == '\\' && quote != '`') {
			if (unescape(p, quote, &w) < 0)
				return -EINVAL;
			continue;
		}
		*w++ = c;
		p->pos++;
	}
	p->pos++;
	*w++ = '\0';
	store(p, (size_t)(w - start));
	*out = start;
	return 0;
}

/* Append a matcher; the strings are already in storage. */
static int add_matcher(struct parser *p, enum proto_match_type type, const char *name, const char *value)
{
	struct proto_selector *s = p->out;

	if (s->n_matchers == p->cap_matchers) {
		size_t cap = p->cap_matchers ? 2 * p->cap_matchers : 4;
		struct proto_matcher *m = realloc(s->matchers, cap * sizeof(*m));

		if (!m) {
			snprintf(p->err, p->errlen, "out of memory");
			return -ENOMEM;
		}
		s->matchers = m;
		p->cap_matchers = cap;
	}
	s->matchers[s->n_matchers++] = (struct proto_matcher){ .type = type, .name = name, .value = value };
	return 0;
}

/* `= != =~ !~` at p->pos into *<type>. */
static int take_op(struct parser *p, enum proto_match_type *type, const char *label)
{
	char a = peek(p), b = p->text[p->pos + (a ? 1 : 0)];

	if (a == '=' && b == '~')
		*type = PROTO_MATCH_RE;
	else if (a == '!' && b == '=')
		*type = PROTO_MATCH_NEQ;
	else if (a == '!' && b == '~')
		*type = PROTO_MATCH_NRE;
	else if (a == '=' && b != '=')
		*type = PROTO_MATCH_EQ;
	else
		return fail_at(p, p->pos, "expected one of = != =~ !~ after label \"%s\"", label);
	p->pos += *type == PROTO_MATCH_EQ ? 1 : 2;
	return 0;
}

/* One `label op "value"`. */
static int parse_matcher(struct parser *p)
{
	enum proto_match_type type = PROTO_MATCH_EQ;
	const char *name, *value;
	size_t at = p->pos;
	int rc;

	if (is_name_start(peek(p), 0)) {
		name = take_name(p, 0);
	} else if (peek(p) == '"' || peek(p) == '\'' || peek(p) == '`') {
		if ((rc = take_string(p, &name, "a label name")) < 0)
			return rc;
	} else {
		return fail_at(p, at, "expected a label name");
	}
	if (!*name)
		return fail_at(p, at, "empty label name");
	skip_ws(p);
	if ((rc = take_op(p, &type, name)) < 0)
		return rc;
	skip_ws(p);
	if ((rc = take_string(p, &value, "a label value")) < 0)
		return rc;
	return add_matcher(p, type, name, value);
}

/* `{ matcher, ... }` with an optional trailing comma; p->pos is on the '{'. */
static int parse_braces(struct parser *p)
{
	size_t open = p->pos;
	int rc;

	p->pos++;
	skip_ws(p);
	while (peek(p) != '}') {
		if ((rc = parse_matcher(p)) < 0)
			return rc;
		skip_ws(p);
		if (peek(p) == ',') {
			p->pos++;
			skip_ws(p);
		} else if (peek(p) != '}') {
			if (peek(p) == '\0')
				return fail_at(p, p->pos, "expected ',' or '}' to close the '{' at offset %zu", open);
			return fail_at(p, p->pos, "expected ',' or '}', found '%c'", peek(p));
		}
	}
	p->pos++;
	return 0;
}

/* The whole selector; on failure the caller frees what was built. */
static int parse_selector(struct parser *p)
{
	const char *metric = NULL;
	size_t start;
	int rc;

	skip_ws(p);
	start = p->pos;
	if (is_name_start(peek(p), 1)) {
		const char *label = store(p, sizeof(METRIC_NAME_LABEL));

		memcpy((char *)label, METRIC_NAME_LABEL, sizeof(METRIC_NAME_LABEL));
		metric = take_name(p, 1);
		if ((rc = add_matcher(p, PROTO_MATCH_EQ, label, metric)) < 0)
			return rc;
		skip_ws(p);
	}
	if (peek(p) == '{') {
		if ((rc = parse_braces(p)) < 0)
			return rc;
		skip_ws(p);
	} else if (!metric) {
		return fail_at(p, start, "expected a metric name or '{'");
	}
	if (peek(p) != '\0')
		return fail_at(p, p->pos, "unexpected '%c' after the selector", peek(p));
	if (p->out->n_matchers == 0)
		return fail_at(p, start, "empty selector: at least one matcher is required");
	/* As in Prometheus: `foo{__name__="bar"}` names the metric twice, whatever the operator. */
	for (size_t i = metric ? 1 : p->out->n_matchers; i < p->out->n_matchers; i++) {
		if (strcmp(p->out->matchers[i].name, METRIC_NAME_LABEL) == 0)
			return fail_at(p, start, "metric name set twice: \"%s\" and a %s matcher", metric,
				       METRIC_NAME_LABEL);
	}
	return 0;
}

int proto_selector_parse(const char *text, struct proto_selector *out, char *err, size_t errlen)
{
	struct parser p = { .text = text, .err = err, .errlen = errlen, .out = out };
	int rc;

	*out = (struct proto_selector){ 0 };
	out->storage = malloc(strlen(text) + sizeof(METRIC_NAME_LABEL) + 1);
	if (!out->storage) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	rc = parse_selector(&p);
	if (rc < 0)
		proto_selector_clear(out);
	return rc;
}

void proto_selector_clear(struct proto_selector *s)
{
	if (!s)
		return;
	free(s->matchers);
	free(s->storage);
	*s = (struct proto_selector){ 0 };
}

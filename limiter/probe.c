/*
 * limiter_probe: target of a series probe and an incremental counter for its JSON answer (see
 * probe.h).
 *
 * The counter is a byte-at-a-time JSON tokenizer with O(1) state, so the answer can be counted
 * as it arrives and split anywhere. It validates the whole document (structure, strings and
 * their escapes, literals, numbers) but keeps only what the probe needs: nesting (a bit per
 * level says array or object), the top-level key being read, the "status" value, the start of
 * the "error" text, and the number of objects that open directly inside the top-level "data"
 * array. Levels: 1 = the top-level object, 2 = the "data" array, 3 = one series object.
 */
#include "limiter/probe.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/request.h"

/* ---- target ------------------------------------------------------------------------------ */

/* Selectors up to this size are printed on the stack, longer ones into a heap copy. */
#define SELECTOR_STACK 1024

/* snprintf-style appender: counts every byte, stores what fits, keeps room for the NUL. */
struct out {
	char *buf; /* (ref) NULL when n is 0 */
	size_t n;
	size_t len; /* bytes the full text needs so far */
};

static void out_putn(struct out *o, const char *s, size_t len)
{
	if (o->len + 1 < o->n) {
		size_t room = o->n - 1 - o->len;

		memcpy(o->buf + o->len, s, len < room ? len : room);
	}
	o->len += len;
}

static void out_puts(struct out *o, const char *s)
{
	out_putn(o, s, strlen(s));
}

/* Terminate the text, truncated to the buffer. */
static size_t out_end(struct out *o)
{
	if (o->n)
		o->buf[o->len < o->n ? o->len : o->n - 1] = '\0';
	return o->len;
}

/* Milliseconds as Unix seconds with 3 decimals ("-1.500"); computed unsigned so INT64_MIN works. */
static void out_seconds(struct out *o, int64_t ms)
{
	uint64_t mag = ms < 0 ? -(uint64_t)ms : (uint64_t)ms;
	char t[32];
	int k = snprintf(t, sizeof(t), "%s%" PRIu64 ".%03u", ms < 0 ? "-" : "", mag / 1000, (unsigned)(mag % 1000));

	out_putn(o, t, (size_t)k);
}

/* RFC 3986 section 2.3: the only bytes a query component may carry unencoded, whatever the server. */
static int is_unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
	       c == '_' || c == '~';
}

size_t limiter_probe_target(const char *base_path, const struct proto_query *q, char *buf, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";
	char stack[SELECTOR_STACK], *sel = stack;
	size_t sel_len = proto_selector_print(q, stack, sizeof(stack));
	struct out o = { .buf = buf, .n = n };

	if (sel_len >= sizeof(stack)) {
		sel = malloc(sel_len + 1);
		if (!sel) {
			if (n)
				buf[0] = '\0';
			return 0;
		}
		proto_selector_print(q, sel, sel_len + 1);
	}
	out_puts(&o, base_path);
	out_puts(&o, "?match[]=");
	for (size_t i = 0; i < sel_len; i++) {
		unsigned char c = (unsigned char)sel[i];
		char pct[3] = { '%', hex[c >> 4], hex[c & 15] };

		if (is_unreserved(c))
			out_putn(&o, (const char *)&c, 1);
		else
			out_putn(&o, pct, 3);
	}
	out_puts(&o, "&start=");
	out_seconds(&o, q->start_ms);
	out_puts(&o, "&end=");
	out_seconds(&o, q->end_ms);
	if (sel != stack)
		free(sel);
	return out_end(&o);
}

void limiter_probe_series_path(const char *read_path, char *buf, size_t n)
{
	/* Remote-read paths whose prefix (e.g. an HTTP prefix in front of the store) is kept. */
	static const char *const suffixes[] = { "/api/v1/prom/remote/read", "/api/v1/read", "/api/v1/series" };
	size_t len = strlen(read_path), prefix = 0;

	for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
		size_t sl = strlen(suffixes[i]);

		if (len >= sl && strcmp(read_path + len - sl, suffixes[i]) == 0) {
			prefix = len - sl;
			break;
		}
	}
	snprintf(buf, n, "%.*s/api/v1/series", (int)prefix, read_path);
}

/* ---- answer counter ---------------------------------------------------------------------- */

/* Deepest nesting followed: one bit of <arrays> per level. */
#define MAX_DEPTH 64

/* What the next byte can be (limiter_probe_count.state). */
enum tok_state {
	TOK_VALUE = 0,      /* a value; the document starts here */
	TOK_VALUE_OR_CLOSE, /* after '[': a value or ']' */
	TOK_KEY_OR_CLOSE,   /* after '{': a key or '}' */
	TOK_KEY,            /* after ',' in an object: a key */
	TOK_COLON,          /* after a key */
	TOK_AFTER_VALUE,    /* ',' or the bracket that closes the open level */
	TOK_STRING,         /* inside a string; its role is in <in_string> */
	TOK_LITERAL,        /* inside true, false or null; <lit> = word << 4 | letters read */
	TOK_NUMBER,         /* inside a number; <lit> = enum num_state */
	TOK_DONE,           /* the top-level object closed: only white space may follow */
	TOK_FAILED,         /* sticky error */
};

/* Why a string is read (limiter_probe_count.in_string): what its bytes are kept for. */
enum str_role {
	STR_OTHER = 0, /* a value kept for nothing */
	STR_INNER_KEY, /* a key below the top level, kept for nothing */
	STR_KEY,       /* a top-level key, into <key> */
	STR_STATUS,    /* the "status" value, into <key> */
	STR_ERROR,     /* the "error" text, into <error> */
};

/* Top-level keys the counter acts on (limiter_probe_count.key_pending). */
enum key_kind {
	KEY_OTHER = 0,
	KEY_STATUS,
	KEY_DATA,
	KEY_ERROR,
};

/* JSON number grammar: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)? */
enum num_state {
	NUM_MINUS,  /* after '-': a digit must follow */
	NUM_ZERO,   /* a leading 0 (complete) */
	NUM_INT,    /* integer digits (complete) */
	NUM_DOT,    /* after '.': a digit must follow */
	NUM_FRAC,   /* fraction digits (complete) */
	NUM_E,      /* after 'e': sign or digit */
	NUM_E_SIGN, /* after the exponent sign: a digit must follow */
	NUM_EXP,    /* exponent digits (complete) */
	NUM_END,    /* step result: the byte ends a complete number */
	NUM_BAD,    /* step result: malformed */
};

static const char *const literals[] = { "true", "false", "null" };

void limiter_probe_count_init(struct limiter_probe_count *c)
{
	*c = (struct limiter_probe_count){ .state = TOK_VALUE };
}

/* Fail with "byte <offset>: <what>"; the counter stays failed. */
__attribute__((format(printf, 4, 5))) static int fail_at(struct limiter_probe_count *c, char *err, size_t errlen,
							 const char *fmt, ...)
{
	char what[160];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	snprintf(err, errlen, "probe answer: byte %" PRIu64 ": %s", c->offset, what);
	c->state = TOK_FAILED;
	return -EBADMSG;
}

static int is_ws(unsigned char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

/* Next number state after byte <ch> in state <st>. */
static enum num_state num_step(uint32_t st, unsigned char ch)
{
	int digit = ch >= '0' && ch <= '9', exp = ch == 'e' || ch == 'E';

	switch (st) {
	case NUM_MINUS:
		return ch == '0' ? NUM_ZERO : digit ? NUM_INT : NUM_BAD;
	case NUM_ZERO:
		return ch == '.' ? NUM_DOT : exp ? NUM_E : digit ? NUM_BAD : NUM_END;
	case NUM_INT:
		return digit ? NUM_INT : ch == '.' ? NUM_DOT : exp ? NUM_E : NUM_END;
	case NUM_DOT:
		return digit ? NUM_FRAC : NUM_BAD;
	case NUM_FRAC:
		return digit ? NUM_FRAC : exp ? NUM_E : NUM_END;
	case NUM_E:
		return ch == '+' || ch == '-' ? NUM_E_SIGN : digit ? NUM_EXP : NUM_BAD;
	case NUM_E_SIGN:
		return digit ? NUM_EXP : NUM_BAD;
	case NUM_EXP:
		return digit ? NUM_EXP : NUM_END;
	}
	return NUM_BAD;
}

/* Length of the first <len> bytes of <s> without a UTF-8 sequence cut off at their end. */
static size_t utf8_whole(const char *s, size_t len)
{
	size_t i = len, cont = 0, need;
	unsigned char lead;

	while (i > 0 && cont < 3 && ((unsigned char)s[i - 1] & 0xc0) == 0x80) {
		i--;
		cont++;
	}
	if (i == 0)
		return len;
	lead = (unsigned char)s[i - 1];
	need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
	return need > 1 && cont + 1 < need ? i - 1 : len;
}

/*
 * The top-level object closed: judge the answer. Returns 1 for a success with data, else
 * -EBADMSG; "status":"error" quotes the store's text, minus any character cut in half.
 */
static int document_end(struct limiter_probe_count *c, char *err, size_t errlen)
{
	c->done = 1;
	if (c->status_error) {
		size_t kept = c->error_len > LIMITER_PROBE_ERROR_MAX ? utf8_whole(c->error, LIMITER_PROBE_ERROR_MAX)
								     : c->error_len;

		snprintf(err, errlen, "store answered \"status\":\"error\"%s%.*s%s", kept ? ": " : "", (int)kept,
			 c->error, c->error_len > kept ? "..." : "");
		c->state = TOK_FAILED;
		return -EBADMSG;
	}
	if (!c->status_ok)
		return fail_at(c, err, errlen, "answer has no \"status\"");
	if (!c->have_data)
		return fail_at(c, err, errlen, "answer has no \"data\"");
	c->state = TOK_DONE;
	return 1;
}

/* A value ended at the current level: expect a separator, or judge the document at level 0. */
static int value_end(struct limiter_probe_count *c, char *err, size_t errlen)
{
	if (c->depth == 0)
		return document_end(c, err, errlen);
	c->state = TOK_AFTER_VALUE;
	return 0;
}

/* Open an object or array (and "data" when the array is its value). */
static int push(struct limiter_probe_count *c, int array, char *err, size_t errlen)
{
	if (c->depth == MAX_DEPTH)
		return fail_at(c, err, errlen, "nested deeper than %d levels", MAX_DEPTH);
	if (array)
		c->arrays |= UINT64_C(1) << c->depth;
	else
		c->arrays &= ~(UINT64_C(1) << c->depth);
	c->depth++;
	c->state = array ? TOK_VALUE_OR_CLOSE : TOK_KEY_OR_CLOSE;
	return 0;
}

static int top_is_array(const struct limiter_probe_count *c)
{
	return (int)(c->arrays >> (c->depth - 1) & 1);
}

/* '}' or ']' at depth >= 1: it must match the open level. */
static int close_level(struct limiter_probe_count *c, unsigned char ch, char *err, size_t errlen)
{
	if ((ch == ']') != top_is_array(c))
		return fail_at(c, err, errlen, "'%c' does not close the open %s", ch, top_is_array(c) ? "array" : "object");
	c->depth--;
	if (c->in_data && c->depth == 1)
		c->in_data = 0;
	return value_end(c, err, errlen);
}

/* Start reading a string for <role>. */
static void string_start(struct limiter_probe_count *c, enum str_role role)
{
	c->state = TOK_STRING;
	c->in_string = role;
	c->escape = 0;
	if (role == STR_KEY || role == STR_STATUS)
		c->key_len = 0;
	else if (role == STR_ERROR)
		c->error_len = 0;
}

/* The first byte of a value; its role follows from the key it belongs to. */
static int value_start(struct limiter_probe_count *c, unsigned char ch, char *err, size_t errlen)
{
	enum str_role role = STR_OTHER;
	int data_array = 0;

	if (c->depth == 0 && ch != '{')
		return fail_at(c, err, errlen, "the answer is not a JSON object");
	if (c->depth == 1) {
		if (c->key_pending == KEY_DATA) {
			/* null counts as no series; anything but an array or null is not a series list. */
			if (ch != '[' && ch != 'n')
				return fail_at(c, err, errlen, "\"data\" is not an array");
			data_array = ch == '[';
			c->have_data = 1;
		} else if (c->key_pending == KEY_STATUS) {
			if (ch != '"')
				return fail_at(c, err, errlen, "\"status\" is not a string");
			role = STR_STATUS;
		} else if (c->key_pending == KEY_ERROR && ch == '"') {
			role = STR_ERROR;
		}
	} else if (c->depth == 2 && c->in_data && ch == '{') {
		c->series++; /* an object directly inside "data": one series */
	}

	switch (ch) {
	case '{':
		return push(c, 0, err, errlen);
	case '[':
		c->in_data = c->in_data || data_array;
		return push(c, 1, err, errlen);
	case '"':
		string_start(c, role);
		return 0;
	case 't':
	case 'f':
	case 'n':
		c->state = TOK_LITERAL;
		c->lit = (uint32_t)(ch == 't' ? 0 : ch == 'f' ? 1 : 2) << 4 | 1;
		return 0;
	default:
		if (ch == '-' || (ch >= '0' && ch <= '9')) {
			c->state = TOK_NUMBER;
			c->lit = ch == '-' ? NUM_MINUS : ch == '0' ? NUM_ZERO : NUM_INT;
			return 0;
		}
		return fail_at(c, err, errlen, "unexpected '%c' where a value should start", ch);
	}
}

/* Keep one decoded byte of a string whose role asks for it. */
static void capture(struct limiter_probe_count *c, unsigned char b)
{
	if (c->in_string == STR_KEY || c->in_string == STR_STATUS) {
		if (c->key_len < sizeof(c->key) - 1)
			c->key[c->key_len] = (char)b;
		c->key_len++;
	} else if (c->in_string == STR_ERROR) {
		/* One log line: control characters (decoded \n, \t...) become spaces. */
		if (c->error_len < LIMITER_PROBE_ERROR_MAX)
			c->error[c->error_len] = b < 0x20 || b == 0x7f ? ' ' : (char)b;
		c->error_len++;
	}
}

/* Whether the captured key or status is exactly <word> (longer captures never are). */
static int captured_is(const struct limiter_probe_count *c, const char *word)
{
	return c->key_len == strlen(word) && memcmp(c->key, word, c->key_len) == 0;
}

/* The closing quote: act on what the string was for. */
static int string_end(struct limiter_probe_count *c, char *err, size_t errlen)
{
	switch (c->in_string) {
	case STR_INNER_KEY:
		c->state = TOK_COLON;
		return 0;
	case STR_KEY:
		c->key_pending = captured_is(c, "status") ? KEY_STATUS
				 : captured_is(c, "data") ? KEY_DATA
				 : captured_is(c, "error")  ? KEY_ERROR
							     : KEY_OTHER;
		c->state = TOK_COLON;
		return 0;
	case STR_STATUS:
		c->status_ok = captured_is(c, "success");
		c->status_error = captured_is(c, "error");
		if (!c->status_ok && !c->status_error)
			return fail_at(c, err, errlen, "unknown \"status\" value \"%.*s%s\"",
				       (int)(c->key_len < sizeof(c->key) ? c->key_len : sizeof(c->key) - 1), c->key,
				       c->key_len < sizeof(c->key) ? "" : "...");
		break;
	case STR_ERROR:
		c->error[c->error_len < LIMITER_PROBE_ERROR_MAX ? c->error_len : LIMITER_PROBE_ERROR_MAX] = '\0';
		break;
	}
	return value_end(c, err, errlen);
}

/* One byte inside a string: plain, escape letter, or \u hex digit (<escape> = 1 + digits left). */
static int string_byte(struct limiter_probe_count *c, unsigned char ch, char *err, size_t errlen)
{
	static const char esc_from[] = "\"\\/bfnrt", esc_to[] = "\"\\/\b\f\n\r\t";
	const char *e;

	if (c->escape == 0) {
		if (ch == '"')
			return string_end(c, err, errlen);
		if (ch == '\\')
			c->escape = 1;
		else if (ch < 0x20)
			return fail_at(c, err, errlen, "control character 0x%02x in a string", ch);
		else
			capture(c, ch);
		return 0;
	}
	if (c->escape == 1) {
		if (ch == 'u') {
			c->escape = 5;
			c->lit = 0;
			return 0;
		}
		if (ch == '\0' || !(e = strchr(esc_from, ch)))
			return fail_at(c, err, errlen, "invalid escape \\%c in a string", ch);
		capture(c, (unsigned char)esc_to[e - esc_from]);
		c->escape = 0;
		return 0;
	}
	if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F')))
		return fail_at(c, err, errlen, "invalid \\u escape in a string");
	c->lit = c->lit << 4 | (uint32_t)(ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10);
	if (--c->escape == 1) {
		/* Kept text is ASCII; Go escapes <, > and & this way, anything else shows as '?'. */
		capture(c, c->lit < 0x80 ? (unsigned char)c->lit : '?');
		c->escape = 0;
	}
	return 0;
}

/* One byte of true/false/null. */
static int literal_byte(struct limiter_probe_count *c, unsigned char ch, char *err, size_t errlen)
{
	const char *word = literals[c->lit >> 4];
	uint32_t at = c->lit & 15;

	if ((unsigned char)word[at] != ch)
		return fail_at(c, err, errlen, "invalid literal (want %s)", word);
	c->lit++;
	return word[at + 1] == '\0' ? value_end(c, err, errlen) : 0;
}

/* One byte outside strings, literals and numbers. */
static int structural_byte(struct limiter_probe_count *c, unsigned char ch, char *err, size_t errlen)
{
	if (is_ws(ch))
		return 0;
	switch (c->state) {
	case TOK_VALUE:
		return value_start(c, ch, err, errlen);
	case TOK_VALUE_OR_CLOSE:
		return ch == ']' ? close_level(c, ch, err, errlen) : value_start(c, ch, err, errlen);
	case TOK_KEY_OR_CLOSE:
		if (ch == '}')
			return close_level(c, ch, err, errlen);
		/* fall through */
	case TOK_KEY:
		if (ch != '"')
			return fail_at(c, err, errlen, "expected a key string, found '%c'", ch);
		string_start(c, c->depth == 1 ? STR_KEY : STR_INNER_KEY);
		return 0;
	case TOK_COLON:
		if (ch != ':')
			return fail_at(c, err, errlen, "expected ':' after a key, found '%c'", ch);
		c->state = TOK_VALUE;
		return 0;
	case TOK_AFTER_VALUE:
		if (ch == ',') {
			c->state = top_is_array(c) ? TOK_VALUE : TOK_KEY;
			return 0;
		}
		if (ch == '}' || ch == ']')
			return close_level(c, ch, err, errlen);
		return fail_at(c, err, errlen, "expected ',' or a closing bracket, found '%c'", ch);
	case TOK_DONE:
		return fail_at(c, err, errlen, "'%c' after the end of the JSON document", ch);
	default:
		return fail_at(c, err, errlen, "internal state %d", c->state); /* not reached */
	}
}

/* One byte of the answer. Returns 0, 1 (the document just completed) or -EBADMSG. */
static int step(struct limiter_probe_count *c, unsigned char ch, char *err, size_t errlen)
{
	int rc;

	switch (c->state) {
	case TOK_STRING:
		return string_byte(c, ch, err, errlen);
	case TOK_LITERAL:
		return literal_byte(c, ch, err, errlen);
	case TOK_NUMBER: {
		enum num_state next = num_step(c->lit, ch);

		if (next == NUM_BAD)
			return fail_at(c, err, errlen, "malformed number");
		if (next != NUM_END) {
			c->lit = next;
			return 0;
		}
		/* A number ends on the byte after it, which is then read as structure. */
		if ((rc = value_end(c, err, errlen)) != 0)
			return rc;
		return structural_byte(c, ch, err, errlen);
	}
	default:
		return structural_byte(c, ch, err, errlen);
	}
}

int limiter_probe_count_feed(struct limiter_probe_count *c, const char *data, size_t len, char *err,
			     size_t errlen)
{
	if (c->state == TOK_FAILED) {
		snprintf(err, errlen, "probe answer already rejected");
		return -EBADMSG;
	}
	for (size_t i = 0; i < len; i++, c->offset++) {
		int rc = step(c, (unsigned char)data[i], err, errlen);

		if (rc < 0)
			return rc;
	}
	return c->state == TOK_DONE ? 1 : 0;
}

/* Unit tests for proxy/http: head parsing, body framing and chunk coding. */
#include <ctype.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>
#include <event2/buffer.h>

#include "proxy/http.h"

static int parse(const char *text, int is_request, struct http_msg *m, char *err)
{
	struct evbuffer *in = evbuffer_new();
	int rc;

	evbuffer_add(in, text, strlen(text));
	rc = http_parse_head(in, is_request, m, err, 256);
	evbuffer_free(in);
	return rc;
}

static void test_parses_remote_read_request_head(void **state)
{
	struct http_msg m = { 0 };
	char err[256];

	(void)state;
	assert_int_equal(parse("POST /api/v1/read?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n"
			       "Content-Encoding: snappy\r\nX-Scope-OrgID:  team-a  \r\n\r\n", 1, &m, err), 1);
	assert_string_equal(m.method, "POST");
	assert_string_equal(m.target, "/api/v1/read?x=1");
	assert_int_equal(m.minor, 1);
	assert_int_equal(m.content_length, 12);
	assert_true(m.keep_alive);
	assert_string_equal(http_msg_header(&m, "x-scope-orgid"), "team-a");
	assert_null(http_msg_header(&m, "Absent"));
	http_msg_clear(&m);
}

static void test_head_split_at_every_byte_parses_the_same(void **state)
{
	const char *text = "POST /r HTTP/1.1\r\nContent-Length: 3\r\nA: b\r\n\r\nxyz";
	size_t len = strlen(text);

	(void)state;
	for (size_t cut = 0; cut <= len; cut++) {
		struct evbuffer *in = evbuffer_new();
		struct http_msg m = { 0 };
		char err[256];
		int rc;

		evbuffer_add(in, text, cut);
		rc = http_parse_head(in, 1, &m, err, sizeof(err));
		if (cut < len - 3) {
			assert_int_equal(rc, 0);
			evbuffer_add(in, text + cut, len - cut);
			rc = http_parse_head(in, 1, &m, err, sizeof(err));
		} else {
			evbuffer_add(in, text + cut, len - cut);
		}
		assert_int_equal(rc, 1);
		assert_int_equal(m.content_length, 3);
		assert_string_equal(http_msg_header(&m, "A"), "b");
		assert_int_equal(evbuffer_get_length(in), 3); /* the body stays behind */
		http_msg_clear(&m);
		evbuffer_free(in);
	}
}

static void test_rejects_malformed_heads(void **state)
{
	static const char *bad[] = {
		"POST\r\n\r\n",
		"POST /r HTTP/2.0\r\n\r\n",
		"POST r HTTP/1.1\r\n\r\n",
		"POST /r HTTP/1.1\r\nNoColon\r\n\r\n",
		"POST /r HTTP/1.1\r\nBad Name: x\r\n\r\n",
		"POST /r HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
		"POST /r HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
		"POST /r HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
		"POST /r HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
		"POST /r HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct http_msg m = { 0 };
		char err[256] = "";
		int rc = parse(bad[i], 1, &m, err);
		if (rc != -EINVAL)
			fail_msg("case %zu (%s) gave %d", i, bad[i], rc);
		assert_true(strlen(err) > 0);
		http_msg_clear(&m);
	}
}

static void test_rejects_nul_in_head(void **state)
{
	struct evbuffer *in = evbuffer_new();
	struct http_msg m = { 0 };
	char err[256];
	static const char text[] = "POST /r HTTP/1.1\r\nA: b\0c\r\n\r\n";

	(void)state;
	evbuffer_add(in, text, sizeof(text) - 1);
	assert_int_equal(http_parse_head(in, 1, &m, err, sizeof(err)), -EINVAL);
	http_msg_clear(&m);
	evbuffer_free(in);
}

static void test_caps_head_size_and_header_count(void **state)
{
	struct evbuffer *in = evbuffer_new();
	struct http_msg m = { 0 };
	char err[256];

	(void)state;
	/* an endless header section is refused once over the cap, without waiting for its end */
	evbuffer_add_printf(in, "POST /r HTTP/1.1\r\nA: ");
	for (int i = 0; i < HTTP_MAX_HEAD_BYTES / 8 + 1; i++)
		evbuffer_add(in, "xxxxxxxx", 8);
	assert_int_equal(http_parse_head(in, 1, &m, err, sizeof(err)), -E2BIG);
	http_msg_clear(&m);
	evbuffer_drain(in, evbuffer_get_length(in));

	evbuffer_add_printf(in, "POST /r HTTP/1.1\r\n");
	for (int i = 0; i <= HTTP_MAX_HEADERS; i++)
		evbuffer_add_printf(in, "H%d: v\r\n", i);
	evbuffer_add_printf(in, "\r\n");
	assert_int_equal(http_parse_head(in, 1, &m, err, sizeof(err)), -E2BIG);
	assert_non_null(strstr(err, "header fields"));
	http_msg_clear(&m);
	evbuffer_free(in);
}

static void test_keep_alive_rules(void **state)
{
	struct http_msg m = { 0 };
	char err[256];

	(void)state;
	assert_int_equal(parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 1, &m, err), 1);
	assert_false(m.keep_alive);
	assert_int_equal(parse("GET / HTTP/1.0\r\n\r\n", 1, &m, err), 1);
	assert_false(m.keep_alive);
	assert_int_equal(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", 1, &m, err), 1);
	assert_true(m.keep_alive);
	assert_int_equal(parse("POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", 1, &m, err), 1);
	assert_true(m.expect_continue);
	http_msg_clear(&m);
}

static void test_parses_status_lines(void **state)
{
	struct http_msg m = { 0 };
	struct http_body b;
	char err[256];

	(void)state;
	assert_int_equal(parse("HTTP/1.1 422 Unprocessable Entity\r\nContent-Length: 5\r\n\r\n", 0, &m, err), 1);
	assert_int_equal(m.status, 422);
	assert_string_equal(m.reason, "Unprocessable Entity");
	http_body_init_response(&b, &m);
	assert_int_equal(b.mode, HTTP_BODY_LENGTH);

	assert_int_equal(parse("HTTP/1.1 200\r\n\r\n", 0, &m, err), 1);
	assert_int_equal(m.status, 200);
	http_body_init_response(&b, &m);
	assert_int_equal(b.mode, HTTP_BODY_CLOSE); /* no length, not chunked: until close */

	assert_int_equal(parse("HTTP/1.1 204 No Content\r\n\r\n", 0, &m, err), 1);
	http_body_init_response(&b, &m);
	assert_int_equal(b.mode, HTTP_BODY_NONE);

	/* responses may carry both; chunked wins (RFC 9112 6.3) */
	assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n", 0, &m,
			       err), 1);
	assert_true(m.chunked);
	assert_int_equal(parse("HTTP/1.1 2x0 OK\r\n\r\n", 0, &m, err), -EINVAL);
	http_msg_clear(&m);
}

/* Decode <wire> (chunked) fed in two pieces split at <cut>; returns the body or NULL on error. */
static char *dechunk_split(const char *wire, size_t len, size_t cut, int *rc_out)
{
	struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
	struct http_body b;
	struct http_msg m = { 0 };
	char err[256], *res;
	int rc;

	m.chunked = 1;
	m.content_length = -1;
	http_body_init_request(&b, &m);
	evbuffer_add(in, wire, cut);
	rc = http_body_read(&b, in, out, err, sizeof(err));
	if (rc == 0) {
		evbuffer_add(in, wire + cut, len - cut);
		rc = http_body_read(&b, in, out, err, sizeof(err));
	}
	*rc_out = rc;
	res = calloc(1, evbuffer_get_length(out) + 1);
	evbuffer_remove(out, res, evbuffer_get_length(out));
	evbuffer_free(in);
	evbuffer_free(out);
	return res;
}

static void test_dechunks_split_at_every_byte(void **state)
{
	const char *wire = "5;ext=1\r\nhello\r\n1\r\n \r\nB\r\nremote read\r\n0\r\nTrailer: x\r\n\r\n";
	size_t len = strlen(wire);

	(void)state;
	for (size_t cut = 0; cut <= len; cut++) {
		int rc;
		char *body = dechunk_split(wire, len, cut, &rc);
		assert_int_equal(rc, 1);
		assert_string_equal(body, "hello remote read");
		free(body);
	}
}

static void test_rejects_bad_chunk_framing(void **state)
{
	static const char *bad[] = {
		"zz\r\nhello\r\n0\r\n\r\n",
		"5\r\nhelloXX0\r\n\r\n",
		"-5\r\nhello\r\n0\r\n\r\n",
		"FFFFFFFFFFFFFFFFFF\r\n",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc;
		char *body = dechunk_split(bad[i], strlen(bad[i]), strlen(bad[i]), &rc);
		if (rc != -EINVAL)
			fail_msg("case %zu gave %d", i, rc);
		free(body);
	}
}

static void test_length_body_stops_at_content_length(void **state)
{
	struct evbuffer *in = evbuffer_new(), *out = evbuffer_new();
	struct http_msg m = { 0 };
	struct http_body b;
	char err[256];

	(void)state;
	m.content_length = 4;
	http_body_init_request(&b, &m);
	evbuffer_add(in, "ab", 2);
	assert_int_equal(http_body_read(&b, in, out, err, sizeof(err)), 0);
	evbuffer_add(in, "cdEXTRA", 7);
	assert_int_equal(http_body_read(&b, in, out, err, sizeof(err)), 1);
	assert_int_equal(evbuffer_get_length(out), 4);
	assert_int_equal(evbuffer_get_length(in), 5); /* the next request's bytes stay */
	evbuffer_free(in);
	evbuffer_free(out);
}

static void test_chunk_writer_round_trips(void **state)
{
	struct evbuffer *wire = evbuffer_new(), *data = evbuffer_new(), *out = evbuffer_new();
	struct http_msg m = { 0 };
	struct http_body b;
	char err[256], buf[64] = { 0 };

	(void)state;
	evbuffer_add(data, "0123456789abcdefXYZ", 19);
	http_chunk_write(wire, data);
	assert_int_equal(evbuffer_get_length(data), 0);
	http_chunk_write(wire, data); /* empty: nothing written (an empty chunk would end the body) */
	http_chunk_end(wire);
	m.chunked = 1;
	http_body_init_request(&b, &m);
	assert_int_equal(http_body_read(&b, wire, out, err, sizeof(err)), 1);
	evbuffer_remove(out, buf, sizeof(buf) - 1);
	assert_string_equal(buf, "0123456789abcdefXYZ");
	evbuffer_free(wire);
	evbuffer_free(data);
	evbuffer_free(out);
}

/*
 * The head parser as it was before the single-pass rewrite, kept verbatim (renamed old_*) as the
 * reference for the differential tests below: every head must get the same verdict, the same
 * error text and the same parsed fields from both.
 */

/* tchar per RFC 9110 5.6.2: ALPHA, DIGIT and "!#$%&'*+-.^_`|~" (a table: every header name of
 * every message is checked) */
static const unsigned char old_tchar[256] = {
	['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1, ['-'] = 1,
	['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
	['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
	['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1, ['I'] = 1,
	['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1,
	['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1,
	['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1,
	['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1,
	['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

static int old_token_ok(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (!old_tchar[(unsigned char)*s])
			return 0;
	return 1;
}

static int old_value_ok(const char *s)
{
	return s[strcspn(s, "\r\n")] == '\0'; /* strcspn is vectorised; this runs for every header */
}

/* ASCII case-insensitive equality of <a> and the lower-case literal <lc> of length <n>. */
static int old_name_is(const char *a, size_t alen, const char *lc, size_t n)
{
	if (alen != n)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)(a[i] | 0x20) != (unsigned char)lc[i] && a[i] != lc[i])
			return 0;
	return 1;
}

/* Case-insensitive search for <tok> as a comma-separated element of <list>. */
static int old_list_has_token(const char *list, const char *tok)
{
	size_t tl = strlen(tok);

	while (*list) {
		while (*list == ' ' || *list == '\t' || *list == ',')
			list++;
		const char *end = list;
		while (*end && *end != ',')
			end++;
		const char *e = end;
		while (e > list && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		if ((size_t)(e - list) == tl && strncasecmp(list, tok, tl) == 0)
			return 1;
		list = end;
	}
	return 0;
}

static void old_msg_clear(struct http_msg *m)
{
	free(m->raw);
	memset(m, 0, sizeof(*m));
	m->content_length = -1;
}

static const char *old_msg_header(const struct http_msg *m, const char *name)
{
	/* the first letter (case folded) rules out most names without a strcasecmp call */
	unsigned char c0 = (unsigned char)name[0] | 0x20;

	for (size_t i = 0; i < m->n_headers; i++)
		if (((unsigned char)m->headers[i].name[0] | 0x20) == c0 && strcasecmp(m->headers[i].name, name) == 0)
			return m->headers[i].value;
	return NULL;
}

static int old_parse_version(const char *s, int *minor)
{
	if (strncmp(s, "HTTP/1.", 7) != 0 || (s[7] != '0' && s[7] != '1') || s[8] != '\0')
		return -EINVAL;
	*minor = s[7] - '0';
	return 0;
}

/* Parse the first line in place. <line> is NUL-terminated and owned by m->raw. */
static int old_parse_start_line(struct http_msg *m, char *line, int is_request, char *err, size_t errlen)
{
	char *sp1 = strchr(line, ' ');
	char *sp2;

	if (!sp1) {
		snprintf(err, errlen, "malformed %s line", is_request ? "request" : "status");
		return -EINVAL;
	}
	*sp1 = '\0';
	if (is_request) {
		sp2 = strchr(sp1 + 1, ' ');
		if (!sp2) {
			snprintf(err, errlen, "malformed request line");
			return -EINVAL;
		}
		*sp2 = '\0';
		m->method = line;
		m->target = sp1 + 1;
		if (!old_token_ok(m->method) || strlen(m->method) > 16) {
			snprintf(err, errlen, "malformed request method");
			return -EINVAL;
		}
		if (m->target[0] != '/') {
			snprintf(err, errlen, "request target must be an absolute path");
			return -EINVAL;
		}
		for (const char *p = m->target; *p; p++)
			if ((unsigned char)*p <= 0x20 || (unsigned char)*p == 0x7f) {
				snprintf(err, errlen, "invalid byte in request target");
				return -EINVAL;
			}
		if (old_parse_version(sp2 + 1, &m->minor) < 0) {
			snprintf(err, errlen, "unsupported HTTP version");
			return -EINVAL;
		}
		return 0;
	}
	if (old_parse_version(line, &m->minor) < 0) {
		snprintf(err, errlen, "unsupported HTTP version in status line");
		return -EINVAL;
	}
	char *code = sp1 + 1;
	if (!isdigit((unsigned char)code[0]) || !isdigit((unsigned char)code[1]) ||
	    !isdigit((unsigned char)code[2]) || (code[3] != ' ' && code[3] != '\0')) {
		snprintf(err, errlen, "malformed status code");
		return -EINVAL;
	}
	m->status = (code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0');
	m->reason = code[3] ? code + 4 : "";
	if (m->status < 100) {
		snprintf(err, errlen, "malformed status code");
		return -EINVAL;
	}
	return 0;
}

/* Interpret the framing headers once all are collected. */
static int old_parse_framing(struct http_msg *m, int is_request, char *err, size_t errlen)
{
	int have_cl = 0;
	const char *te = NULL;
	const char *conn = NULL;

	for (size_t i = 0; i < m->n_headers; i++) {
		const char *n = m->headers[i].name, *v = m->headers[i].value;
		size_t nl = strlen(n);

#define NAME_IS(lit) old_name_is(n, nl, lit, sizeof(lit) - 1)
		if (NAME_IS("content-length")) {
			char *end;
			errno = 0;
			if (!isdigit((unsigned char)v[0])) {
				snprintf(err, errlen, "invalid Content-Length");
				return -EINVAL;
			}
			unsigned long long cl = strtoull(v, &end, 10);
			if (errno || *end || cl > INT64_MAX) {
				snprintf(err, errlen, "invalid Content-Length");
				return -EINVAL;
			}
			/* duplicates must agree: a disagreement is a smuggling attempt */
			if (have_cl && (uint64_t)m->content_length != cl) {
				snprintf(err, errlen, "conflicting Content-Length headers");
				return -EINVAL;
			}
			m->content_length = (int64_t)cl;
			have_cl = 1;
		} else if (NAME_IS("transfer-encoding")) {
			if (te) {
				snprintf(err, errlen, "repeated Transfer-Encoding");
				return -EINVAL;
			}
			te = v;
		} else if (NAME_IS("connection")) {
			conn = v;
		} else if (NAME_IS("expect") && strcasecmp(v, "100-continue") == 0) {
			m->expect_continue = 1;
		}
#undef NAME_IS
	}
	if (te) {
		if (strcasecmp(te, "chunked") != 0) {
			snprintf(err, errlen, "unsupported Transfer-Encoding: only chunked is accepted");
			return -EINVAL;
		}
		if (have_cl && is_request) {
			snprintf(err, errlen, "both Content-Length and Transfer-Encoding");
			return -EINVAL;
		}
		m->chunked = 1;
		m->content_length = -1;
	}
	if (m->minor == 1)
		m->keep_alive = !(conn && old_list_has_token(conn, "close"));
	else
		m->keep_alive = conn && old_list_has_token(conn, "keep-alive");
	return 0;
}

static int old_parse_head(struct evbuffer *in, int is_request, struct http_msg *m, char *err, size_t errlen)
{
	struct evbuffer_ptr end;
	size_t head_len;
	char *raw, *line, *next;
	int rc;

	end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
	if (end.pos < 0) {
		if (evbuffer_get_length(in) > HTTP_MAX_HEAD_BYTES) {
			snprintf(err, errlen, "header section over %d bytes", HTTP_MAX_HEAD_BYTES);
			return -E2BIG;
		}
		return 0;
	}
	head_len = (size_t)end.pos + 4;
	if (head_len > HTTP_MAX_HEAD_BYTES) {
		snprintf(err, errlen, "header section over %d bytes", HTTP_MAX_HEAD_BYTES);
		return -E2BIG;
	}
	raw = malloc(head_len + 1);
	if (!raw) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	evbuffer_remove(in, raw, head_len);
	old_msg_clear(m);
	m->raw = raw; /* owned by <m> from here, also on error */
	if (memchr(raw, '\0', head_len)) {
		snprintf(err, errlen, "NUL byte in header section");
		return -EINVAL;
	}
	raw[head_len - 4] = '\0'; /* cut the blank line; lines are separated by CRLF */

	line = raw;
	next = strstr(line, "\r\n");
	if (next) {
		*next = '\0';
		next += 2;
	}
	rc = old_parse_start_line(m, line, is_request, err, errlen);
	if (rc < 0)
		return rc;

	for (line = next; line && *line; line = next) {
		char *colon, *v, *ve;

		next = strstr(line, "\r\n");
		if (next) {
			*next = '\0';
			next += 2;
		}
		if (line[0] == ' ' || line[0] == '\t') {
			snprintf(err, errlen, "obsolete header line folding");
			return -EINVAL;
		}
		colon = strchr(line, ':');
		if (!colon) {
			snprintf(err, errlen, "header line without a colon");
			return -EINVAL;
		}
		*colon = '\0';
		if (!old_token_ok(line)) {
			snprintf(err, errlen, "invalid header name");
			return -EINVAL;
		}
		v = colon + 1;
		while (*v == ' ' || *v == '\t')
			v++;
		ve = v + strlen(v);
		while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
			*--ve = '\0';
		if (!old_value_ok(v)) {
			snprintf(err, errlen, "bare CR or LF in header value");
			return -EINVAL;
		}
		if (m->n_headers == HTTP_MAX_HEADERS) {
			snprintf(err, errlen, "more than %d header fields", HTTP_MAX_HEADERS);
			return -E2BIG;
		}
		m->headers[m->n_headers].name = line;
		m->headers[m->n_headers].value = v;
		m->n_headers++;
	}
	rc = old_parse_framing(m, is_request, err, errlen);
	return rc < 0 ? rc : 1;
}

/* Strings equal, or both NULL. */
static int same_str(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Compare two parsed messages field by field; <what> names the case in the failure. */
static void assert_same_msg(const struct http_msg *o, const struct http_msg *n, const char *what)
{
	static const char *probes[] = { "content-length", "CONTENT-TYPE", "Content-Encoding", "host", "H",
					"X-Prometheus-Remote-Read-Version", "x-prometheus-remote-read-versio",
					"Absent", "", "a", "B", "Content-Lengthx", "connection" };

	if (!same_str(o->method, n->method) || !same_str(o->target, n->target) || o->status != n->status ||
	    !same_str(o->reason, n->reason) || o->minor != n->minor || o->n_headers != n->n_headers ||
	    o->content_length != n->content_length || o->chunked != n->chunked ||
	    o->keep_alive != n->keep_alive || o->expect_continue != n->expect_continue)
		fail_msg("%s: message fields differ", what);
	for (size_t i = 0; i < o->n_headers; i++) {
		if (!same_str(o->headers[i].name, n->headers[i].name) ||
		    !same_str(o->headers[i].value, n->headers[i].value))
			fail_msg("%s: header %zu differs", what, i);
		if (!same_str(old_msg_header(o, o->headers[i].name), http_msg_header(n, n->headers[i].name)))
			fail_msg("%s: lookup of header %zu differs", what, i);
	}
	for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++)
		if (!same_str(old_msg_header(o, probes[i]), http_msg_header(n, probes[i])))
			fail_msg("%s: lookup of %s differs", what, probes[i]);
}

/*
 * Feed <text>[0, <len>) to both parsers, split into chains at the offsets <cuts>[0, <ncuts>)
 * (ascending); with <early>, each parser also runs once after every chain but the last. Compare
 * return codes, error text, fields and what is left in the buffers.
 */
static void check_split(const char *text, size_t len, int is_request, const size_t *cuts, size_t ncuts, int early,
			const char *what)
{
	struct evbuffer *bo = evbuffer_new(), *bn = evbuffer_new();
	struct http_msg mo = { 0 }, mn = { 0 };
	char eo[256] = "", en[256] = "";
	int ro = 0, rn = 0;
	size_t at = 0;

	for (size_t c = 0; c <= ncuts; c++) {
		size_t to = c < ncuts ? cuts[c] : len;

		/* a separate evbuffer per piece, moved over whole: one chain each */
		for (int side = 0; side < 2; side++) {
			struct evbuffer *piece = evbuffer_new();
			evbuffer_add(piece, text + at, to - at);
			evbuffer_add_buffer(side ? bn : bo, piece);
			evbuffer_free(piece);
		}
		at = to;
		if (c < ncuts && !early)
			continue;
		ro = old_parse_head(bo, is_request, &mo, eo, sizeof(eo));
		rn = http_parse_head(bn, is_request, &mn, en, sizeof(en));
		if (ro != rn)
			fail_msg("%s: old %d new %d (%s | %s)", what, ro, rn, eo, en);
		if (ro < 0 && strcmp(eo, en) != 0)
			fail_msg("%s: old error \"%s\", new \"%s\"", what, eo, en);
		if (ro != 0)
			break;
	}
	assert_same_msg(&mo, &mn, what);
	if (evbuffer_get_length(bo) != evbuffer_get_length(bn) ||
	    (evbuffer_get_length(bo) &&
	     memcmp(evbuffer_pullup(bo, -1), evbuffer_pullup(bn, -1), evbuffer_get_length(bo)) != 0))
		fail_msg("%s: consumed input differs", what);
	old_msg_clear(&mo);
	http_msg_clear(&mn);
	evbuffer_free(bo);
	evbuffer_free(bn);
}

static void check_same(const char *text, size_t len, int is_request, const char *what)
{
	check_split(text, len, is_request, NULL, 0, 0, what);
}

/* A growable corpus of heads. */
struct corpus {
	char *text[64];
	size_t len[64];
	int is_request[64];
	size_t n;
};

static void corpus_add(struct corpus *c, int is_request, struct evbuffer *b)
{
	size_t len = evbuffer_get_length(b);

	assert_true(c->n < 64);
	c->text[c->n] = malloc(len + 1);
	evbuffer_remove(b, c->text[c->n], len);
	c->text[c->n][len] = '\0';
	c->len[c->n] = len;
	c->is_request[c->n] = is_request;
	c->n++;
}

static void corpus_lit(struct corpus *c, int is_request, const char *s)
{
	struct evbuffer *b = evbuffer_new();

	evbuffer_add(b, s, strlen(s));
	corpus_add(c, is_request, b);
	evbuffer_free(b);
}

/* Valid (and a few framing-invalid) request and response heads, each followed by body bytes. */
static void corpus_build(struct corpus *c)
{
	struct evbuffer *b = evbuffer_new();

	memset(c, 0, sizeof(*c));
	corpus_lit(c, 1, "POST /api/v1/read HTTP/1.1\r\nHost: 127.0.0.1:9090\r\nContent-Encoding: snappy\r\n"
			 "Accept-Encoding: snappy\r\nContent-Type: application/x-protobuf\r\n"
			 "User-Agent: Prometheus/2.42.0+ds\r\nX-Prometheus-Remote-Read-Version: 0.1.0\r\n"
			 "Content-Length: 42\r\n\r\nbody");
	corpus_lit(c, 0, "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\n"
			 "Content-Length: 1234\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\nbody");
	corpus_lit(c, 1, "GET / HTTP/1.0\r\n\r\n");
	corpus_lit(c, 1, "GET /x?y=z HTTP/1.1\r\nA:b\r\nB:  \t c d \t \r\nC:\r\nD: \t\r\nE:\t x\r\n\r\n");
	corpus_lit(c, 1, "POST /r HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 005\r\nConnection: x, close\r\n"
			 "Expect: 100-Continue\r\n\r\nhello");
	corpus_lit(c, 1, "POST /r HTTP/1.0\r\nConnection: te, Keep-Alive \r\nTransfer-Encoding: Chunked\r\n\r\n");
	corpus_lit(c, 1, "POST /r HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
	corpus_lit(c, 1, "POST /r HTTP/1.1\r\nContent-Length: 9223372036854775807\r\nConnection: close\r\n"
			 "Connection: keep-alive\r\n\r\n");
	corpus_lit(c, 1, "POST /r HTTP/1.1\r\nContent-Length: 9223372036854775808\r\n\r\n");
	corpus_lit(c, 1, "POST /r HTTP/1.1\r\nContent-Length: 00000000000000000000000000000001\r\n\r\n");
	corpus_lit(c, 1, "PROPFIND16CHARSXY /r HTTP/1.1\r\nX-Scope-OrgID:  team-a  \r\nexpect: 100-continue\r\n\r\n");
	corpus_lit(c, 0, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
	corpus_lit(c, 0, "HTTP/1.0 200\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n");
	corpus_lit(c, 0, "HTTP/1.1 404 \r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n");
	corpus_lit(c, 0, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n");
	corpus_lit(c, 0, "HTTP/1.1 503 Service  Unavailable \r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n");

	/* long values and names */
	evbuffer_add_printf(b, "POST /r HTTP/1.1\r\nX-Long: ");
	for (int i = 0; i < 100; i++)
		evbuffer_add_printf(b, "value%03d ", i);
	evbuffer_add_printf(b, "\r\n");
	for (int i = 0; i < 40; i++)
		evbuffer_add_printf(b, "X");
	evbuffer_add_printf(b, ": y\r\n\r\n");
	corpus_add(c, 1, b);

	/* exactly HTTP_MAX_HEADERS fields, then one more */
	for (int extra = 0; extra < 2; extra++) {
		evbuffer_add_printf(b, "POST /r HTTP/1.1\r\n");
		for (int i = 0; i < HTTP_MAX_HEADERS + extra; i++)
			evbuffer_add_printf(b, "H%d: v%d\r\n", i, i);
		evbuffer_add_printf(b, "\r\n");
		corpus_add(c, 1, b);
	}
	evbuffer_free(b);
}

static void corpus_free(struct corpus *c)
{
	for (size_t i = 0; i < c->n; i++)
		free(c->text[i]);
}

static void test_head_parse_matches_reference_on_corpus(void **state)
{
	struct corpus c;
	char what[64];

	(void)state;
	corpus_build(&c);
	for (size_t i = 0; i < c.n; i++)
		for (int req = 0; req < 2; req++) {
			snprintf(what, sizeof(what), "corpus %zu as %s", i, req ? "request" : "response");
			check_same(c.text[i], c.len[i], req, what);
		}
	corpus_free(&c);
}

static void test_head_parse_matches_reference_on_truncations(void **state)
{
	struct corpus c;
	char what[64];

	(void)state;
	corpus_build(&c);
	for (size_t i = 0; i < c.n; i++)
		for (size_t cut = 0; cut <= c.len[i]; cut++) {
			snprintf(what, sizeof(what), "corpus %zu cut at %zu", i, cut);
			check_same(c.text[i], cut, c.is_request[i], what);
		}
	corpus_free(&c);
}

static void test_head_parse_matches_reference_on_byte_mutations(void **state)
{
	static const char bytes[] = { '\0', '\r', '\n', ' ', ':', 0x7f, (char)0x80, '\t', 'a' };
	struct corpus c;
	char what[64];

	(void)state;
	corpus_build(&c);
	for (size_t i = 0; i < c.n; i++) {
		char *t = malloc(c.len[i]);

		for (size_t pos = 0; pos < c.len[i]; pos++)
			for (size_t k = 0; k < sizeof(bytes); k++) {
				memcpy(t, c.text[i], c.len[i]);
				t[pos] = bytes[k];
				snprintf(what, sizeof(what), "corpus %zu byte %zu = 0x%02x", i, pos,
					 (unsigned char)bytes[k]);
				check_same(t, c.len[i], c.is_request[i], what);
			}
		free(t);
	}
	corpus_free(&c);
}

static void test_head_parse_matches_reference_across_chains(void **state)
{
	struct corpus c;
	char what[64];

	(void)state;
	corpus_build(&c);
	for (size_t i = 0; i < c.n; i++)
		for (size_t cut = 1; cut < c.len[i]; cut++) {
			size_t cuts[3] = { cut, 0, 0 };

			snprintf(what, sizeof(what), "corpus %zu split at %zu", i, cut);
			check_split(c.text[i], c.len[i], c.is_request[i], cuts, 1, 0, what);
			check_split(c.text[i], c.len[i], c.is_request[i], cuts, 1, 1, what);
			/* three chains: the cut, one byte later, the middle of the rest */
			if (cut + 1 < c.len[i]) {
				cuts[1] = cut + 1;
				cuts[2] = cut + 1 + (c.len[i] - cut - 1) / 2;
				check_split(c.text[i], c.len[i], c.is_request[i], cuts,
					    cuts[2] > cuts[1] ? 3 : 2, 1, what);
			}
		}
	corpus_free(&c);
}

/* Heads of exactly HTTP_MAX_HEAD_BYTES and one byte more, whole, cut and in chains. */
static void test_head_parse_matches_reference_at_size_cap(void **state)
{
	(void)state;
	for (int over = 0; over < 2; over++) {
		struct evbuffer *b = evbuffer_new();
		size_t len, fill;
		char *t;

		evbuffer_add_printf(b, "POST /r HTTP/1.1\r\nA: ");
		fill = HTTP_MAX_HEAD_BYTES + (size_t)over - evbuffer_get_length(b) - 4;
		for (size_t i = 0; i < fill; i++)
			evbuffer_add(b, "x", 1);
		evbuffer_add(b, "\r\n\r\nbody", 8);
		len = evbuffer_get_length(b);
		t = malloc(len);
		evbuffer_remove(b, t, len);
		evbuffer_free(b);
		assert_int_equal(len - 4, HTTP_MAX_HEAD_BYTES + over);

		check_same(t, len, 1, "cap whole");
		check_same(t, len - 4, 1, "cap without body");
		check_same(t, len - 5, 1, "cap one short");
		check_same(t, HTTP_MAX_HEAD_BYTES, 1, "cap truncated at the cap");
		check_same(t, HTTP_MAX_HEAD_BYTES + 1, 1, "cap truncated after the cap");
		for (size_t cut = 1; cut < len; cut += 4093) {
			size_t cuts[2] = { cut, len - 6 };
			check_split(t, len, 1, cuts, 1, 1, "cap split");
			check_split(t, len, 1, cuts, cut < len - 6 ? 2 : 1, 1, "cap split twice");
		}
		t[100] = '\r'; /* a bare CR in the long value */
		check_same(t, len, 1, "cap bare CR");
		t[100] = '\0';
		check_same(t, len, 1, "cap NUL");
		free(t);
	}
}

static void test_msg_clear_leaves_message_zeroed(void **state)
{
	struct http_msg m = { 0 }, zero = { 0 };
	char err[256];

	(void)state;
	zero.content_length = -1;
	assert_int_equal(parse("POST /r HTTP/1.1\r\nA: b\r\nC: d\r\nContent-Length: 1\r\n\r\n", 1, &m, err), 1);
	http_msg_clear(&m);
	assert_memory_equal(&m, &zero, sizeof(m));
	/* a failed parse leaves a partial message; clearing it zeroes that too */
	assert_int_equal(parse("POST /r HTTP/1.1\r\nA: b\r\nC: d\r\nContent-Length: x\r\n\r\n", 1, &m, err),
			 -EINVAL);
	http_msg_clear(&m);
	assert_memory_equal(&m, &zero, sizeof(m));
}

static void test_header_lookup_is_case_insensitive_by_whole_name(void **state)
{
	struct http_msg m = { 0 };
	char err[256];

	(void)state;
	assert_int_equal(parse("GET / HTTP/1.1\r\nContent: a\r\ncontent-type: b\r\nCONTENT-TYPE: c\r\n"
			       "Content-Types: d\r\n~x: e\r\n^x: f\r\n\r\n", 1, &m, err), 1);
	assert_string_equal(http_msg_header(&m, "Content-Type"), "b");
	assert_string_equal(http_msg_header(&m, "content"), "a");
	assert_string_equal(http_msg_header(&m, "CONTENT-TYPES"), "d");
	assert_null(http_msg_header(&m, "Content-Typ"));
	assert_string_equal(http_msg_header(&m, "^X"), "f"); /* '^' | 0x20 is '~': a candidate, not a match */
	assert_null(http_msg_header(&m, "^Y"));
	assert_null(http_msg_header(&m, ""));
	http_msg_clear(&m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parses_remote_read_request_head),
		cmocka_unit_test(test_head_split_at_every_byte_parses_the_same),
		cmocka_unit_test(test_rejects_malformed_heads),
		cmocka_unit_test(test_rejects_nul_in_head),
		cmocka_unit_test(test_caps_head_size_and_header_count),
		cmocka_unit_test(test_keep_alive_rules),
		cmocka_unit_test(test_parses_status_lines),
		cmocka_unit_test(test_dechunks_split_at_every_byte),
		cmocka_unit_test(test_rejects_bad_chunk_framing),
		cmocka_unit_test(test_length_body_stops_at_content_length),
		cmocka_unit_test(test_chunk_writer_round_trips),
		cmocka_unit_test(test_head_parse_matches_reference_on_corpus),
		cmocka_unit_test(test_head_parse_matches_reference_on_truncations),
		cmocka_unit_test(test_head_parse_matches_reference_on_byte_mutations),
		cmocka_unit_test(test_head_parse_matches_reference_across_chains),
		cmocka_unit_test(test_head_parse_matches_reference_at_size_cap),
		cmocka_unit_test(test_msg_clear_leaves_message_zeroed),
		cmocka_unit_test(test_header_lookup_is_case_insensitive_by_whole_name),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

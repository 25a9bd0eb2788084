/* Unit tests for proxy/http: head parsing, body framing and chunk coding. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

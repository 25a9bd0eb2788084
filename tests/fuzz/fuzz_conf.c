/*
 * fuzz_conf: the config loader (conf_load_string) on arbitrary YAML, and on success everything
 * that prints a loaded config: the --check-config report, the /api/v1/status JSON, the
 * per-tenant limits and the reload comparison with a running config.
 *
 * Input: the YAML text, as is.
 *
 * Properties checked:
 *   - the result is 0 with a config, or -EINVAL/-ENOMEM without one and with errors listed;
 *   - every error is one line `fuzz.yml:<line>: <key>: <problem>` (user text cannot break a
 *     line: the reload endpoint and --check-config list them one per line);
 *   - conf_write_json and conf_write_limits_json write one well-formed JSON value of valid UTF-8;
 *   - the report starts with "config ok"; conf_limits_for answers for every tenant;
 *   - conf_keep_unreloadable against a minimal running config returns a count (not an error).
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "fuzz_util.h"
#include "proxy/conf.h"

/* The running config a reload is compared with (loaded once; lives for the whole run). */
static struct conf *running;

#define MINIMAL "upstream:\n  url: http://127.0.0.1:9090/api/v1/read\n"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct evbuffer *errs = evbuffer_new();

	(void)argc;
	(void)argv;
	FUZZ_CHECK(errs != NULL, "out of memory");
	FUZZ_CHECK(conf_load_string("running.yml", MINIMAL, strlen(MINIMAL), &running, errs) == 0,
		   "the minimal config does not load");
	evbuffer_free(errs);
	return 0;
}

/* ---- a small JSON checker (RFC 8259 syntax plus UTF-8) ------------------------------------ */

struct json {
	const unsigned char *p, *end;
	int depth;
};

static void json_ws(struct json *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
		j->p++;
}

static int json_lit(struct json *j, const char *lit)
{
	size_t n = strlen(lit);

	if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0)
		return -1;
	j->p += n;
	return 0;
}

/* One UTF-8 sequence at j->p (shortest form, no surrogates, <= U+10FFFF). */
static int json_utf8(struct json *j)
{
	unsigned char c = *j->p;
	size_t n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
	uint32_t cp;

	if (!n || (size_t)(j->end - j->p) < n)
		return -1;
	cp = n == 1 ? c : n == 2 ? c & 0x1f : n == 3 ? c & 0x0f : c & 0x07;
	for (size_t i = 1; i < n; i++) {
		if ((j->p[i] & 0xc0) != 0x80)
			return -1;
		cp = cp << 6 | (j->p[i] & 0x3f);
	}
	if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return -1;
	j->p += n;
	return 0;
}

static int json_string(struct json *j)
{
	if (json_lit(j, "\"") < 0)
		return -1;
	while (j->p < j->end && *j->p != '"') {
		if (*j->p < 0x20)
			return -1;
		if (*j->p == '\\') {
			j->p++;
			if (j->p == j->end)
				return -1;
			if (*j->p == 'u') {
				for (int i = 1; i <= 4; i++)
					if (j->p + i >= j->end || !strchr("0123456789abcdefABCDEF", j->p[i]) || !j->p[i])
						return -1;
				j->p += 5;
			} else if (strchr("\"\\/bfnrt", *j->p) && *j->p) {
				j->p++;
			} else {
				return -1;
			}
		} else if (json_utf8(j) < 0) {
			return -1;
		}
	}
	return json_lit(j, "\"");
}

static int json_number(struct json *j)
{
	const unsigned char *start = j->p;

	if (j->p < j->end && *j->p == '-')
		j->p++;
	if (j->p < j->end && *j->p == '0')
		j->p++;
	else if (j->p < j->end && *j->p >= '1' && *j->p <= '9')
		while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
			j->p++;
	else
		return -1;
	if (j->p < j->end && *j->p == '.') {
		j->p++;
		if (j->p == j->end || *j->p < '0' || *j->p > '9')
			return -1;
		while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
			j->p++;
	}
	if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
		j->p++;
		if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
			j->p++;
		if (j->p == j->end || *j->p < '0' || *j->p > '9')
			return -1;
		while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
			j->p++;
	}
	return j->p > start ? 0 : -1;
}

static int json_value(struct json *j)
{
	int rc = 0;

	json_ws(j);
	if (j->p == j->end || ++j->depth > 64)
		return -1;
	if (*j->p == '{' || *j->p == '[') {
		char close = *j->p == '{' ? '}' : ']';
		int obj = *j->p == '{', first = 1;

		j->p++;
		json_ws(j);
		while (rc == 0 && j->p < j->end && *j->p != close) {
			if (!first && json_lit(j, ",") < 0)
				return -1;
			first = 0;
			json_ws(j);
			if (obj) {
				if (json_string(j) < 0)
					return -1;
				json_ws(j);
				if (json_lit(j, ":") < 0)
					return -1;
			}
			rc = json_value(j);
			json_ws(j);
		}
		if (rc == 0 && json_lit(j, close == '}' ? "}" : "]") < 0)
			rc = -1;
	} else if (*j->p == '"') {
		rc = json_string(j);
	} else if (*j->p == 't' || *j->p == 'f' || *j->p == 'n') {
		rc = json_lit(j, *j->p == 't' ? "true" : *j->p == 'f' ? "false" : "null");
	} else {
		rc = json_number(j);
	}
	j->depth--;
	return rc;
}

/* <b> holds exactly one JSON value; drains it. */
static void check_json(struct evbuffer *b, const char *what)
{
	size_t n = evbuffer_get_length(b);
	const unsigned char *p = evbuffer_pullup(b, -1);
	struct json j = { p, p + n, 0 };
	int rc;

	FUZZ_CHECK(n > 0 && p != NULL, "%s: empty", what);
	rc = json_value(&j);
	json_ws(&j);
	FUZZ_CHECK(rc == 0 && j.p == j.end, "%s: not one JSON value (stops at byte %zu of %zu): %.*s", what,
		   (size_t)(j.p - p), n, (int)n, (const char *)p);
	evbuffer_drain(b, n);
}

/* ---- error lines -------------------------------------------------------------------------- */

/* Every line: `fuzz.yml:<digits>: <key>: <problem>`, and the text ends with a newline. */
static void check_error_lines(struct evbuffer *errs)
{
	size_t n = evbuffer_get_length(errs);
	const char *p = (const char *)evbuffer_pullup(errs, -1), *end = p + n;

	FUZZ_CHECK(n > 0, "a failed load listed no errors");
	FUZZ_CHECK(p[n - 1] == '\n', "the error list does not end with a newline");
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p)), *q = p + strlen("fuzz.yml:");

		FUZZ_CHECK(nl && strncmp(p, "fuzz.yml:", strlen("fuzz.yml:")) == 0 && q < nl && *q >= '0' && *q <= '9',
			   "error line not `fuzz.yml:<line>: ...`: %.*s", (int)((nl ? nl : end) - p), p);
		while (q < nl && *q >= '0' && *q <= '9')
			q++;
		FUZZ_CHECK(nl - q > 2 && q[0] == ':' && q[1] == ' ' && memmem(q + 2, (size_t)(nl - q - 2), ": ", 2),
			   "error line without `: key: problem`: %.*s", (int)(nl - p), p);
		FUZZ_CHECK(memchr(p, '\0', (size_t)(nl - p)) == NULL, "NUL byte in an error line");
		p = nl + 1;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct evbuffer *errs = evbuffer_new(), *out = evbuffer_new();
	struct conf *c = running; /* the loader must reset it */
	int rc, kept;

	FUZZ_CHECK(errs && out, "out of memory");
	rc = conf_load_string("fuzz.yml", (const char *)data, size, &c, errs);
	FUZZ_CHECK(rc == 0 || rc == -EINVAL || rc == -ENOMEM, "conf_load_string returned %d", rc);
	if (rc < 0) {
		FUZZ_CHECK(c == NULL, "failed load (%d) left *out set", rc);
		check_error_lines(errs);
		goto done;
	}
	FUZZ_CHECK(c != NULL, "load succeeded without a config");
	FUZZ_CHECK(evbuffer_get_length(errs) == 0, "load succeeded with errors listed");
	conf_print_report(c, out);
	FUZZ_CHECK(evbuffer_get_length(out) >= 9 && memcmp(evbuffer_pullup(out, 9), "config ok", 9) == 0,
		   "the report does not start with \"config ok\"");
	evbuffer_drain(out, evbuffer_get_length(out));
	conf_write_json(c, out);
	check_json(out, "conf_write_json");
	conf_write_limits_json(conf_limits_for(c, NULL), out);
	check_json(out, "conf_write_limits_json");
	for (size_t i = 0; i < c->n_tenants; i++) {
		const struct conf_limits *l = conf_limits_for(c, c->tenants[i].name);

		/* tenant names are mapping keys, so unique: each gets its own block */
		FUZZ_CHECK(l == &c->tenants[i].limits, "tenant %zu does not get its own limits", i);
		conf_write_limits_json(l, out);
		check_json(out, "tenant limits");
	}
	kept = conf_keep_unreloadable(c, running, out);
	FUZZ_CHECK(kept >= 0, "conf_keep_unreloadable returned %d", kept);
	conf_free(c);
done:
	evbuffer_free(out);
	evbuffer_free(errs);
	return 0;
}

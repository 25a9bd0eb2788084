/* http: incremental HTTP/1.1 head parser, body framing and chunk writer (see http.h). */
#include "proxy/http.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

/* Chunked decoder states. */
enum {
	CHUNK_SIZE,     /* expecting "<hex>[;ext]\r\n" */
	CHUNK_DATA,     /* inside a chunk's data */
	CHUNK_DATA_END, /* expecting the CRLF after the data */
	CHUNK_TRAILER,  /* after the last chunk: trailer lines until an empty one */
};

#define CHUNK_LINE_MAX 1024 /* chunk-size line or trailer line; longer is malformed */

/* tchar per RFC 9110 5.6.2: ALPHA, DIGIT and "!#$%&'*+-.^_`|~" (a table: every header name of
 * every message is checked) */
static const unsigned char tchar[256] = {
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

static int token_ok(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (!tchar[(unsigned char)*s])
			return 0;
	return 1;
}

int http_value_ok(const char *s)
{
	return s[strcspn(s, "\r\n")] == '\0'; /* strcspn is vectorised; this runs for every header */
}

/* ASCII case-insensitive equality of <a> and the lower-case literal <lc> of length <n>. */
static int name_is(const char *a, size_t alen, const char *lc, size_t n)
{
	if (alen != n)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)(a[i] | 0x20) != (unsigned char)lc[i] && a[i] != lc[i])
			return 0;
	return 1;
}

/* Case-insensitive search for <tok> as a comma-separated element of <list>. */
static int list_has_token(const char *list, const char *tok)
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

void http_msg_clear(struct http_msg *m)
{
	free(m->raw);
	memset(m, 0, sizeof(*m));
	m->content_length = -1;
}

const char *http_msg_header(const struct http_msg *m, const char *name)
{
	/* the first letter (case folded) rules out most names without a strcasecmp call */
	unsigned char c0 = (unsigned char)name[0] | 0x20;

	for (size_t i = 0; i < m->n_headers; i++)
		if (((unsigned char)m->headers[i].name[0] | 0x20) == c0 && strcasecmp(m->headers[i].name, name) == 0)
			return m->headers[i].value;
	return NULL;
}

static int parse_version(const char *s, int *minor)
{
	if (strncmp(s, "HTTP/1.", 7) != 0 || (s[7] != '0' && s[7] != '1') || s[8] != '\0')
		return -EINVAL;
	*minor = s[7] - '0';
	return 0;
}

/* Parse the first line in place. <line> is NUL-terminated and owned by m->raw. */
static int parse_start_line(struct http_msg *m, char *line, int is_request, char *err, size_t errlen)
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
		if (!token_ok(m->method) || strlen(m->method) > 16) {
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
		if (parse_version(sp2 + 1, &m->minor) < 0) {
			snprintf(err, errlen, "unsupported HTTP version");
			return -EINVAL;
		}
		return 0;
	}
	if (parse_version(line, &m->minor) < 0) {
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
static int parse_framing(struct http_msg *m, int is_request, char *err, size_t errlen)
{
	int have_cl = 0;
	const char *te = NULL;
	const char *conn = NULL;

	for (size_t i = 0; i < m->n_headers; i++) {
		const char *n = m->headers[i].name, *v = m->headers[i].value;
		size_t nl = strlen(n);

#define NAME_IS(lit) name_is(n, nl, lit, sizeof(lit) - 1)
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
		m->keep_alive = !(conn && list_has_token(conn, "close"));
	else
		m->keep_alive = conn && list_has_token(conn, "keep-alive");
	return 0;
}

int http_parse_head(struct evbuffer *in, int is_request, struct http_msg *m, char *err, size_t errlen)
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
	http_msg_clear(m);
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
	rc = parse_start_line(m, line, is_request, err, errlen);
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
		if (!token_ok(line)) {
			snprintf(err, errlen, "invalid header name");
			return -EINVAL;
		}
		v = colon + 1;
		while (*v == ' ' || *v == '\t')
			v++;
		ve = v + strlen(v);
		while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
			*--ve = '\0';
		if (!http_value_ok(v)) {
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
	rc = parse_framing(m, is_request, err, errlen);
	return rc < 0 ? rc : 1;
}

void http_body_init_request(struct http_body *b, const struct http_msg *m)
{
	memset(b, 0, sizeof(*b));
	if (m->chunked) {
		b->mode = HTTP_BODY_CHUNKED;
		b->state = CHUNK_SIZE;
	} else if (m->content_length > 0) {
		b->mode = HTTP_BODY_LENGTH;
		b->remaining = (uint64_t)m->content_length;
	} else {
		b->mode = HTTP_BODY_NONE;
	}
}

void http_body_init_response(struct http_body *b, const struct http_msg *m)
{
	memset(b, 0, sizeof(*b));
	if ((m->status >= 100 && m->status < 200) || m->status == 204 || m->status == 304) {
		b->mode = HTTP_BODY_NONE;
	} else if (m->chunked) {
		b->mode = HTTP_BODY_CHUNKED;
		b->state = CHUNK_SIZE;
	} else if (m->content_length >= 0) {
		b->mode = m->content_length ? HTTP_BODY_LENGTH : HTTP_BODY_NONE;
		b->remaining = (uint64_t)m->content_length;
	} else {
		b->mode = HTTP_BODY_CLOSE;
	}
}

/* Move up to b->remaining bytes from <in> to <out>. */
static void move_data(struct http_body *b, struct evbuffer *in, struct evbuffer *out)
{
	size_t avail = evbuffer_get_length(in);
	size_t n = avail < b->remaining ? avail : (size_t)b->remaining;

	if (n) {
		evbuffer_remove_buffer(in, out, n);
		b->remaining -= n;
		b->total += n;
	}
}

/* Read one CRLF- or LF-terminated line (without the EOL); NULL when incomplete. */
static char *read_line(struct evbuffer *in, int *too_long)
{
	size_t n;
	char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);

	*too_long = !line && evbuffer_get_length(in) > CHUNK_LINE_MAX;
	if (line && n > CHUNK_LINE_MAX) {
		free(line);
		*too_long = 1;
		return NULL;
	}
	return line;
}

static int read_chunked(struct http_body *b, struct evbuffer *in, struct evbuffer *out, char *err, size_t errlen)
{
	for (;;) {
		char *line, *end;
		int too_long;

		switch (b->state) {
		case CHUNK_SIZE: {
			line = read_line(in, &too_long);
			if (!line) {
				if (too_long) {
					snprintf(err, errlen, "chunk size line too long");
					return -EINVAL;
				}
				return 0;
			}
			errno = 0;
			unsigned long long sz = strtoull(line, &end, 16);
			int bad = errno || end == line || !isxdigit((unsigned char)line[0]) ||
				  (*end && *end != ';' && *end != ' ' && *end != '\t');
			free(line);
			if (bad || sz > INT64_MAX) {
				snprintf(err, errlen, "malformed chunk size");
				return -EINVAL;
			}
			if (sz == 0) {
				b->state = CHUNK_TRAILER;
			} else {
				b->remaining = sz;
				b->state = CHUNK_DATA;
			}
			break;
		}
		case CHUNK_DATA:
			move_data(b, in, out);
			if (b->remaining)
				return 0;
			b->state = CHUNK_DATA_END;
			break;
		case CHUNK_DATA_END:
			line = read_line(in, &too_long);
			if (!line) {
				if (too_long || evbuffer_get_length(in) >= 2) {
					snprintf(err, errlen, "missing CRLF after chunk data");
					return -EINVAL;
				}
				return 0;
			}
			if (*line) {
				free(line);
				snprintf(err, errlen, "missing CRLF after chunk data");
				return -EINVAL;
			}
			free(line);
			b->state = CHUNK_SIZE;
			break;
		case CHUNK_TRAILER:
			line = read_line(in, &too_long);
			if (!line) {
				if (too_long) {
					snprintf(err, errlen, "trailer line too long");
					return -EINVAL;
				}
				return 0;
			}
			if (!*line) {
				free(line);
				return 1;
			}
			free(line); /* trailer fields are ignored */
			break;
		}
	}
}

int http_body_read(struct http_body *b, struct evbuffer *in, struct evbuffer *out, char *err, size_t errlen)
{
	switch (b->mode) {
	case HTTP_BODY_NONE:
		return 1;
	case HTTP_BODY_LENGTH:
		move_data(b, in, out);
		return b->remaining == 0;
	case HTTP_BODY_CLOSE: {
		size_t n = evbuffer_get_length(in);
		evbuffer_remove_buffer(in, out, n);
		b->total += n;
		return 0;
	}
	case HTTP_BODY_CHUNKED:
		return read_chunked(b, in, out, err, errlen);
	}
	return -EINVAL;
}

void http_chunk_write(struct evbuffer *out, struct evbuffer *data)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = evbuffer_get_length(data), k = sizeof(size_t) * 2;
	char line[sizeof(size_t) * 2 + 2];

	if (!n)
		return;
	/* "<hex>\r\n" by hand, right-aligned in <line> */
	line[k] = '\r';
	line[k + 1] = '\n';
	do
		line[--k] = hex[n & 15];
	while ((n >>= 4) != 0);
	evbuffer_add(out, line + k, sizeof(line) - k);
	evbuffer_add_buffer(out, data);
	evbuffer_add(out, "\r\n", 2);
}

void http_chunk_end(struct evbuffer *out)
{
	evbuffer_add(out, "0\r\n\r\n", 5);
}

const char *http_reason(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 413: return "Payload Too Large";
	case 422: return "Unprocessable Entity";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default: return "Unknown";
	}
}

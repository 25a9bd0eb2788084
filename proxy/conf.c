/*
 * conf: the YAML loader, validation and printing of struct conf (see conf.h).
 *
 * Parsing is table driven. Each YAML mapping is described by an array of struct field (key,
 * kind, offset of the member it fills, default, bounds, check); one generic walker applies
 * the defaults, parses values, rejects unknown and duplicate keys and runs the checks, and the
 * same tables drive conf_free(), the JSON writer and the --check-config report. The per-query
 * limits come from conf_limit_defs instead, because one limit may be written in three places
 * (limits:, queue.max_queued, tenants.NAME:).
 *
 * Every problem is recorded as `file:line: key: problem` and the walk goes on, so one run
 * reports all of them. A load that found any problem frees what it built and fails.
 *
 * The document API is used: libyaml keeps every node's start line, and keeps repeated keys
 * (which we must reject) instead of merging them. YAML aliases are shared nodes; the schema
 * has a fixed depth and never recurses into unknown values, so walking a node again costs at
 * most its size and a "billion laughs" document cannot blow up.
 */
#include "proxy/conf.h"

#include "proxy/log.h"
#include "proxy/netaddr.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <event2/buffer.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

/* Duration units in milliseconds (Prometheus: a year is 365 days). */
#define MS_S ((int64_t)1000)
#define MS_M (60 * MS_S)
#define MS_H (60 * MS_M)
#define MS_D (24 * MS_H)
#define MS_W (7 * MS_D)
#define MS_Y (365 * MS_D)

/* Size units in bytes. */
#define KIB ((int64_t)1024)
#define MIB (1024 * KIB)
#define GIB (1024 * MIB)
#define TIB (1024 * GIB)

#define PATH_LEN 256                 /* longest key path in a message; longer ones are cut */
#define QUOTE_LEN 160                /* longest quoted value in a message */
#define MAX_FIELDS 24                /* most keys in one field table (checked at compile time) */
#define MAX_FILE_BYTES (16 * MIB)    /* a config larger than this is surely a mistake */

const struct conf_limit_def conf_limit_defs[CONF_LIMIT__COUNT] = {
	[CONF_LIMIT_MAX_SERIES] = { "max_series", "limits.max_series", CONF_T_COUNT, 100000, 1,
		1000000000, 1, "series", "series one query may select, estimated and actual" },
	[CONF_LIMIT_MAX_SAMPLES] = { "max_samples", "limits.max_samples", CONF_T_COUNT, 50000000, 1,
		INT64_C(1000000000000000), 1, "samples", "samples one query may return, estimated and actual" },
	[CONF_LIMIT_MAX_RANGE] = { "max_range", "limits.max_range", CONF_T_DURATION, 0, 0, 100 * MS_Y,
		1, "range", "end - start of one query; 0 = off" },
	[CONF_LIMIT_MAX_RESPONSE_BYTES] = { "max_response_bytes", "limits.max_response_bytes",
		CONF_T_SIZE, 256 * MIB, KIB, 64 * GIB, 1, "response_bytes",
		"compressed bytes of one response from the store" },
	[CONF_LIMIT_MAX_QUERIES_PER_REQUEST] = { "max_queries_per_request",
		"limits.max_queries_per_request", CONF_T_COUNT, 16, 1, 10000, 1, "queries_per_request",
		"queries in one ReadRequest" },
	[CONF_LIMIT_MAX_REQUEST_BYTES] = { "max_request_bytes", "limits.max_request_bytes",
		CONF_T_SIZE, 4 * MIB, KIB, GIB, 1, "bad_request",
		"compressed and decoded size of one ReadRequest (413 above)" },
	[CONF_LIMIT_REQUIRE_METRIC_NAME] = { "require_metric_name", "limits.require_metric_name",
		CONF_T_BOOL, 1, 0, 1, 1, "metric_name",
		"reject selectors with no usable __name__ equality or bounded regex" },
	[CONF_LIMIT_MAX_REGEX_LENGTH] = { "max_regex_length", "limits.max_regex_length", CONF_T_COUNT,
		4096, 1, MIB, 1, "regex", "bytes in one regex matcher" },
	[CONF_LIMIT_MAX_INFLIGHT] = { "max_inflight", "limits.max_inflight", CONF_T_COUNT, 16, 1,
		65535, 1, "queue_full", "queries running against the store at once" },
	[CONF_LIMIT_MAX_QUEUED] = { "max_queued", "queue.max_queued", CONF_T_COUNT, 256, 0, 1000000,
		1, "queue_full", "deferred queries waiting for capacity" },
};

/* ---- parse state and messages ------------------------------------------------------------ */

/* One load in progress. */
struct ctx {
	const char *name;        /* file name for messages (ref) */
	struct evbuffer *errs;   /* where problems go; may be NULL (ref) */
	yaml_document_t *doc;    /* the document being walked (ref) */
	struct conf *c;          /* the config being built (ref) */
	int n_errs;              /* problems reported so far */
	int oom;                 /* an allocation failed: the load fails with -ENOMEM */
};

static void err_at(struct ctx *x, int line, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Record one problem as `file:line: key: problem`. */
static void err_at(struct ctx *x, int line, const char *key, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	x->n_errs++;
	if (x->errs)
		evbuffer_add_printf(x->errs, "%s:%d: %s: %s\n", x->name, line, *key ? key : "config", msg);
}

/* Note a failed allocation (reported once; the load then fails with -ENOMEM). */
static void oom(struct ctx *x, int line, const char *key)
{
	if (!x->oom)
		err_at(x, line, key, "out of memory");
	x->oom = 1;
}

/* Quote user text for a message: escapes quotes and non-printable bytes, cuts long values. */
static const char *q(char *buf, const char *s)
{
	return log_quote(buf, QUOTE_LEN, s);
}

/*
 * Write <prefix>.<key> into <dst> (just <key> when <prefix> is empty). Bytes of <key> outside
 * printable ASCII become '?' so user-supplied keys cannot break a message line.
 */
static void path_join(char *dst, size_t n, const char *prefix, const char *key)
{
	size_t o = (size_t)snprintf(dst, n, "%s%s", prefix, *prefix ? "." : "");

	for (; *key && o + 1 < n; key++)
		dst[o++] = (*key < 0x20 || *key > 0x7e) ? '?' : *key;
	if (o < n)
		dst[o] = '\0';
}

/* Write <prefix>[<i>] into <dst>. */
static void path_index(char *dst, size_t n, const char *prefix, size_t i)
{
	snprintf(dst, n, "%s[%zu]", prefix, i);
}

/* ---- YAML node helpers ------------------------------------------------------------------- */

static int node_line(const yaml_node_t *n)
{
	return n ? (int)n->start_mark.line + 1 : 1;
}

/* 1 for an absent value or a plain null (``, `~`, `null`): "not set". */
static int is_null(const yaml_node_t *n)
{
	const char *s;

	if (!n)
		return 1;
	if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return 0;
	s = (const char *)n->data.scalar.value;
	return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

/* What <n> is, for "got ..." in messages. */
static const char *node_kind(const yaml_node_t *n)
{
	if (!n)
		return "nothing";
	switch (n->type) {
	case YAML_MAPPING_NODE: return "a mapping";
	case YAML_SEQUENCE_NODE: return "a list";
	default: return "a scalar";
	}
}

/*
 * The text of scalar <n>, or NULL after reporting that <n> is not a scalar (<want> names what
 * was expected) or holds a NUL byte. Points into the document. (ref)
 */
static const char *scalar(struct ctx *x, const char *path, int line, const yaml_node_t *n,
			  const char *want)
{
	const char *s;

	if (!n || n->type != YAML_SCALAR_NODE) {
		err_at(x, line, path, "must be %s, got %s", want, node_kind(n));
		return NULL;
	}
	s = (const char *)n->data.scalar.value;
	if (strlen(s) != n->data.scalar.length) {
		err_at(x, line, path, "must not contain NUL bytes");
		return NULL;
	}
	return s;
}

/* Called for each key of a mapping: <path> is the key's full path, <line> its line. */
typedef void (*pair_fn)(struct ctx *x, const char *path, const char *key, int line,
			yaml_node_t *val, void *arg);

/* A mapping key and its position, for finding repeated keys by sorting. */
struct key_pos {
	const char *key; /* (ref) into the document */
	size_t pos;      /* index of the pair in the mapping */
};

/* Order by key, then by position, so the first occurrence leads each run of equal keys. */
static int key_pos_cmp(const void *a, const void *b)
{
	const struct key_pos *ka = a, *kb = b;
	int c = strcmp(ka->key, kb->key);

	return c ? c : (ka->pos > kb->pos) - (ka->pos < kb->pos);
}

/*
 * For each pair of mapping <node>, set first[i] to the index of the earlier pair with the same
 * key, or to i itself. Sorting keeps this O(n log n): hints can be long. Returns 0 or -ENOMEM.
 */
static int find_repeats(struct ctx *x, const yaml_node_t *node, size_t *first)
{
	size_t n = (size_t)(node->data.mapping.pairs.top - node->data.mapping.pairs.start), i, m = 0;
	struct key_pos *kp = malloc((n ? n : 1) * sizeof(*kp));

	if (!kp)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		yaml_node_t *k = yaml_document_get_node(x->doc, node->data.mapping.pairs.start[i].key);
		first[i] = i;
		if (k && k->type == YAML_SCALAR_NODE)
			kp[m++] = (struct key_pos){ (const char *)k->data.scalar.value, i };
	}
	qsort(kp, m, sizeof(*kp), key_pos_cmp);
	for (i = 1; i < m; i++)
		if (!strcmp(kp[i].key, kp[i - 1].key))
			first[kp[i].pos] = first[kp[i - 1].pos];
	free(kp);
	return 0;
}

/*
 * Call <fn> for each key of mapping <node> (NULL or null: no keys). Keys that are not plain
 * strings and repeated keys are reported and skipped (the first one counts). Returns 0, or -1
 * after reporting that <node> is not a mapping (or running out of memory).
 */
static int each_pair(struct ctx *x, const char *path, int line, yaml_node_t *node, pair_fn fn,
		     void *arg)
{
	yaml_node_pair_t *pairs;
	size_t i, n, *first;

	if (is_null(node))
		return 0;
	if (node->type != YAML_MAPPING_NODE) {
		err_at(x, line, path, "must be a mapping, got %s", node_kind(node));
		return -1;
	}
	pairs = node->data.mapping.pairs.start;
	n = (size_t)(node->data.mapping.pairs.top - pairs);
	first = malloc((n ? n : 1) * sizeof(*first));
	if (!first || find_repeats(x, node, first) < 0) {
		free(first);
		oom(x, line, path);
		return -1;
	}
	for (i = 0; i < n; i++) {
		yaml_node_t *k = yaml_document_get_node(x->doc, pairs[i].key);
		char kpath[PATH_LEN];
		const char *key;
		int kline = node_line(k);

		key = scalar(x, path, kline, k, "a string key");
		if (!key)
			continue;
		path_join(kpath, sizeof(kpath), path, key);
		if (first[i] != i) {
			err_at(x, kline, kpath, "duplicate key (first at line %d)",
			       node_line(yaml_document_get_node(x->doc, pairs[first[i]].key)));
			continue;
		}
		fn(x, kpath, key, kline, yaml_document_get_node(x->doc, pairs[i].value), arg);
	}
	free(first);
	return 0;
}

/* Levenshtein distance of two short keys (longer ones: a large number). */
static size_t edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), row[33], i, j;

	if (la > 32 || lb > 32)
		return 99;
	for (j = 0; j <= lb; j++)
		row[j] = j;
	for (i = 1; i <= la; i++) {
		size_t diag = row[0];
		row[0] = i;
		for (j = 1; j <= lb; j++) {
			size_t up = row[j], best = diag + (a[i - 1] != b[j - 1]);
			if (up + 1 < best)
				best = up + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			diag = up;
			row[j] = best;
		}
	}
	return row[lb];
}

/* Keep <cand> in *<best> when it is the closest to <key> so far (within 2 edits). */
static void consider(const char *key, const char *cand, const char **best, size_t *dist)
{
	size_t d = edit_distance(key, cand);

	if (d <= 2 && d < *dist) {
		*best = cand;
		*dist = d;
	}
}

/* Report an unknown key, suggesting the closest known one (<best>, may be NULL). */
static void unknown_key(struct ctx *x, const char *path, int line, const char *best)
{
	if (best)
		err_at(x, line, path, "unknown key (did you mean %s?)", best);
	else
		err_at(x, line, path, "unknown key");
}

/* ---- value syntax ------------------------------------------------------------------------ */

/* Parse decimal digits only into *<v>. Returns 0 or -EINVAL (empty, other chars, overflow). */
static int parse_count(const char *s, int64_t *v)
{
	int64_t n = 0;

	if (!*s)
		return -EINVAL;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || n > (INT64_MAX - (*s - '0')) / 10)
			return -EINVAL;
		n = n * 10 + (*s - '0');
	}
	*v = n;
	return 0;
}

/* Units of a Prometheus duration, largest first: they must appear in this order. */
static const struct { const char *unit; int64_t ms; } dur_units[] = {
	{ "y", MS_Y }, { "w", MS_W }, { "d", MS_D }, { "h", MS_H }, { "m", MS_M }, { "s", MS_S }, { "ms", 1 },
};
#define N_DUR_UNITS (sizeof(dur_units) / sizeof(dur_units[0]))

int conf_parse_duration(const char *s, int64_t *ms)
{
	int64_t total = 0;
	size_t next = 0; /* index of the largest unit still allowed */

	if (!s || !*s)
		return -EINVAL;
	if (!strcmp(s, "0")) { /* as Prometheus' model.ParseDuration */
		*ms = 0;
		return 0;
	}
	while (*s) {
		int64_t n = 0;
		const char *u;
		size_t i, ulen;

		if (*s < '0' || *s > '9')
			return -EINVAL;
		for (; *s >= '0' && *s <= '9'; s++) {
			if (n > (INT64_MAX - (*s - '0')) / 10)
				return -EINVAL;
			n = n * 10 + (*s - '0');
		}
		for (u = s; (*s >= 'a' && *s <= 'z'); s++)
			;
		ulen = (size_t)(s - u);
		for (i = next; i < N_DUR_UNITS; i++)
			if (strlen(dur_units[i].unit) == ulen && !strncmp(u, dur_units[i].unit, ulen))
				break;
		if (i == N_DUR_UNITS || n > (INT64_MAX - total) / dur_units[i].ms)
			return -EINVAL;
		total += n * dur_units[i].ms;
		next = i + 1;
	}
	*ms = total;
	return 0;
}

/* Size suffixes; the binary ones come first so formatting picks them. */
static const struct { const char *unit; int64_t mult; } size_units[] = {
	{ "TiB", TIB }, { "GiB", GIB }, { "MiB", MIB }, { "KiB", KIB },
	{ "TB", INT64_C(1000000000000) }, { "GB", 1000000000 }, { "MB", 1000000 }, { "KB", 1000 },
	{ "B", 1 }, { "", 1 },
};
#define N_SIZE_UNITS (sizeof(size_units) / sizeof(size_units[0]))

int conf_parse_size(const char *s, int64_t *bytes)
{
	int64_t n = 0;
	const char *p = s;
	size_t i;

	if (!s || *s < '0' || *s > '9')
		return -EINVAL; /* also rejects signs and leading spaces */
	for (; *p >= '0' && *p <= '9'; p++) {
		if (n > (INT64_MAX - (*p - '0')) / 10)
			return -EINVAL;
		n = n * 10 + (*p - '0');
	}
	for (i = 0; i < N_SIZE_UNITS; i++)
		if (!strcmp(p, size_units[i].unit))
			break;
	if (i == N_SIZE_UNITS || n > INT64_MAX / size_units[i].mult)
		return -EINVAL;
	*bytes = n * size_units[i].mult;
	return 0;
}

/* Parse a decimal ratio ("0.3", "1", ".25") with up to 6 decimals into parts per million. */
static int parse_ratio(const char *s, int64_t *ppm)
{
	int64_t whole = 0, frac = 0, scale = 100000;
	const char *p = s;

	for (; *p >= '0' && *p <= '9'; p++) {
		if (whole > 1000000)
			return -EINVAL; /* far out of any ratio's range; avoids overflow */
		whole = whole * 10 + (*p - '0');
	}
	if (*p == '.') {
		const char *f = ++p;
		for (; *p >= '0' && *p <= '9'; p++, scale /= 10) {
			if (!scale)
				return -EINVAL;
			frac += (*p - '0') * scale;
		}
		if (p == f && p - 1 == s)
			return -EINVAL; /* "." alone */
	}
	if (*p || p == s)
		return -EINVAL;
	*ppm = whole * 1000000 + frac;
	return 0;
}

/* Parse <s> as a value of <type>. Returns 0 or -EINVAL. */
static int parse_typed(enum conf_type type, const char *s, int64_t *v)
{
	switch (type) {
	case CONF_T_COUNT: return parse_count(s, v);
	case CONF_T_SIZE: return conf_parse_size(s, v);
	case CONF_T_DURATION: return conf_parse_duration(s, v);
	case CONF_T_RATIO: return parse_ratio(s, v);
	case CONF_T_BOOL:
		if (strcmp(s, "true") && strcmp(s, "false"))
			return -EINVAL;
		*v = !strcmp(s, "true");
		return 0;
	}
	return -EINVAL;
}

/* What a value of each type looks like, for messages. */
static const char *const type_want[] = {
	[CONF_T_COUNT] = "a non-negative integer",
	[CONF_T_SIZE] = "a size (bytes, or with a unit: KiB MiB GiB TiB, KB MB GB TB)",
	[CONF_T_DURATION] = "a duration (e.g. 500ms, 15s, 1h30m, 7d)",
	[CONF_T_BOOL] = "true or false",
	[CONF_T_RATIO] = "a number from 0 to 1",
};

const char *conf_format_value(enum conf_type type, int64_t v, char *buf, size_t n)
{
	size_t i, o = 0;

	switch (type) {
	case CONF_T_BOOL:
		snprintf(buf, n, "%s", v ? "true" : "false");
		return buf;
	case CONF_T_RATIO:
		if (v < 0)
			break;
		o = (size_t)snprintf(buf, n, "%" PRId64, v / 1000000);
		if (v % 1000000 && o < n) {
			char frac[8];
			size_t fl = (size_t)snprintf(frac, sizeof(frac), "%06" PRId64, v % 1000000);
			while (fl && frac[fl - 1] == '0')
				frac[--fl] = '\0';
			snprintf(buf + o, n - o, ".%s", frac);
		}
		return buf;
	case CONF_T_SIZE:
		for (i = 0; v > 0 && i < 4; i++) /* the four binary units */
			if (v % size_units[i].mult == 0) {
				snprintf(buf, n, "%" PRId64 "%s", v / size_units[i].mult, size_units[i].unit);
				return buf;
			}
		break;
	case CONF_T_DURATION:
		if (v < 0)
			break;
		if (v == 0) {
			snprintf(buf, n, "0s");
			return buf;
		}
		buf[0] = '\0';
		/* as Prometheus' Duration.String(): years and weeks only when exact */
		for (i = 0; i < N_DUR_UNITS && o < n; i++) {
			int64_t u = dur_units[i].ms;
			if (v / u == 0 || (i < 2 && v % u))
				continue;
			o += (size_t)snprintf(buf + o, n - o, "%" PRId64 "%s", v / u, dur_units[i].unit);
			v %= u;
		}
		return buf;
	case CONF_T_COUNT:
		break;
	}
	snprintf(buf, n, "%" PRId64, v);
	return buf;
}

/* ---- checks on strings: each returns 0, or -1 with the problem in <why> -------------------- */

typedef int (*check_fn)(const char *s, char *why, size_t n);

/* A host name, a dotted IPv4 address, or (when <v6>, the text inside brackets) IPv6. */
static int check_host(const char *h, size_t len, int v6, char *why, size_t n)
{
	char buf[256];
	struct in6_addr a6;
	size_t i, label = 0, digits_dots = 0;

	if (len == 0 || len >= sizeof(buf)) {
		snprintf(why, n, "host must be 1 to 253 characters");
		return -1;
	}
	memcpy(buf, h, len);
	buf[len] = '\0';
	if (v6) {
		if (inet_pton(AF_INET6, buf, &a6) != 1) {
			snprintf(why, n, "[%s] is not an IPv6 address", buf);
			return -1;
		}
		return 0;
	}
	for (i = 0; i < len; i++)
		digits_dots += (isdigit((unsigned char)buf[i]) || buf[i] == '.');
	if (digits_dots == len) {
		if (inet_pton(AF_INET, buf, &a6) != 1) {
			snprintf(why, n, "%s is not an IPv4 address", buf);
			return -1;
		}
		return 0;
	}
	/* RFC 1123 name: dot-separated labels of letters, digits and inner hyphens */
	for (i = 0; i <= len; i++) {
		char ch = buf[i];
		if (ch == '.' || ch == '\0') {
			if (label == 0 || label > 63 || buf[i - 1] == '-' || buf[i - label] == '-')
				break;
			label = 0;
		} else if (isalnum((unsigned char)ch) || ch == '-') {
			label++;
		} else {
			break;
		}
	}
	if (i <= len || len > 253) {
		snprintf(why, n, "host must be an IPv4 address, [IPv6] address or DNS name");
		return -1;
	}
	return 0;
}

/* "host:port" for a listener: IPv4, [IPv6] or a name, port 0..65535 (as netaddr_parse reads it). */
static int check_hostport(const char *s, char *why, size_t n)
{
	char host[256];
	const char *port = strrchr(s, ':');
	int p;

	if (netaddr_split(s, host, sizeof(host), &p) < 0 || !port || !port[1] ||
	    strspn(port + 1, "0123456789") != strlen(port + 1)) {
		snprintf(why, n, "must be host:port with port 0..65535 (e.g. 127.0.0.1:9201, [::1]:9201)");
		return -1;
	}
	return check_host(host, strlen(host), s[0] == '[', why, n);
}

/* The parts of an http:// URL, pointing into it. */
struct url_parts {
	const char *host;   /* without brackets (ref) */
	size_t host_len;
	int port;           /* 80 when not given */
	const char *path;   /* rest after the authority: "", "/x?y" or "?y" (ref) */
};

/* Split and check an http:// URL (no https, no credentials, no fragment). */
static int url_split(const char *s, struct url_parts *u, char *why, size_t n)
{
	const char *auth, *end, *colon;
	size_t i;
	int v6;

	if (!strncasecmp(s, "https://", 8)) {
		snprintf(why, n, "https is not supported: promguard talks plain HTTP to the store "
			 "(use http://, with a TLS sidecar if the store needs TLS)");
		return -1;
	}
	if (strncasecmp(s, "http://", 7)) {
		snprintf(why, n, "must be an http:// URL");
		return -1;
	}
	for (i = 0; s[i]; i++)
		if ((unsigned char)s[i] <= 0x20 || s[i] == 0x7f || s[i] == '#') {
			snprintf(why, n, "must not contain spaces, control characters or a #fragment");
			return -1;
		}
	auth = s + 7;
	end = auth + strcspn(auth, "/?");
	if (memchr(auth, '@', (size_t)(end - auth))) {
		snprintf(why, n, "credentials in the URL are not supported; "
			 "send them with upstream.headers (Authorization)");
		return -1;
	}
	v6 = auth[0] == '[';
	if (v6) {
		const char *rb = memchr(auth, ']', (size_t)(end - auth));
		if (!rb) {
			snprintf(why, n, "unterminated [IPv6] host");
			return -1;
		}
		u->host = auth + 1;
		u->host_len = (size_t)(rb - u->host);
		colon = rb + 1 < end ? rb + 1 : NULL;
		if (colon && *colon != ':') {
			snprintf(why, n, "unexpected text after the [IPv6] host");
			return -1;
		}
	} else {
		colon = memchr(auth, ':', (size_t)(end - auth));
		u->host = auth;
		u->host_len = (size_t)((colon ? colon : end) - auth);
	}
	u->port = 80;
	if (colon) {
		int64_t p;
		char digits[8];
		size_t dl = (size_t)(end - colon - 1);

		memcpy(digits, colon + 1, dl < sizeof(digits) ? dl : sizeof(digits) - 1);
		digits[dl < sizeof(digits) ? dl : sizeof(digits) - 1] = '\0';
		if (dl >= sizeof(digits) || parse_count(digits, &p) < 0 || p < 1 || p > 65535) {
			snprintf(why, n, "port must be 1..65535");
			return -1;
		}
		u->port = (int)p;
	}
	u->path = end;
	return check_host(u->host, u->host_len, v6, why, n);
}

/* upstream.url, estimator.probe_url: see url_split(). */
static int check_http_url(const char *s, char *why, size_t n)
{
	struct url_parts u;

	return url_split(s, &u, why, n);
}

/* read_path: an absolute path, without query or fragment (evhttp matches it exactly). */
static int check_read_path(const char *s, char *why, size_t n)
{
	if (s[0] != '/' || s[strcspn(s, " ?#\t\r\n")]) {
		snprintf(why, n, "must start with / and hold no spaces, ? or #");
		return -1;
	}
	return 0;
}

/* An HTTP header name: RFC 9110 token characters. */
static int is_token(const char *s)
{
	return *s && strspn(s, "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
			      "ABCDEFGHIJKLMNOPQRSTUVWXYZ") == strlen(s);
}

/* tenant_header and upstream.headers keys. */
static int check_header_name(const char *s, char *why, size_t n)
{
	if (!is_token(s)) {
		snprintf(why, n, "must be an HTTP header name (letters, digits, !#$%%&'*+-.^_`|~)");
		return -1;
	}
	return 0;
}

/* log_level: whatever log_level_parse() accepts, so the two never disagree. */
static int check_log_level(const char *s, char *why, size_t n)
{
	enum log_level lvl;

	if (log_level_parse(s, &lvl) < 0) {
		snprintf(why, n, "must be one of debug, info, warn, error");
		return -1;
	}
	return 0;
}

/* Prometheus metric names: [a-zA-Z_:][a-zA-Z0-9_:]*. */
static int check_metric_name(const char *s, char *why, size_t n)
{
	if (!(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':') ||
	    strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:") != strlen(s)) {
		snprintf(why, n, "must be a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)");
		return -1;
	}
	return 0;
}

/* Prometheus label names: [a-zA-Z_][a-zA-Z0-9_]*. */
static int check_label_name(const char *s, char *why, size_t n)
{
	if (!(isalpha((unsigned char)s[0]) || s[0] == '_') ||
	    strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") != strlen(s)) {
		snprintf(why, n, "must be a label name ([a-zA-Z_][a-zA-Z0-9_]*)");
		return -1;
	}
	return 0;
}

/* Printable ASCII, no leading or trailing space, at most <max> bytes. */
static int check_printable(const char *s, size_t max, const char *what, char *why, size_t n)
{
	size_t len = strlen(s), i;

	for (i = 0; i < len; i++)
		if (s[i] < 0x20 || s[i] > 0x7e)
			break;
	/* len 0 (`name: ""`) must not look at s[len - 1], before the string
	 * (fuzz_conf: regressions/conf/empty-name-reads-before-string) */
	if (i < len || len > max || (len && (s[0] == ' ' || s[len - 1] == ' '))) {
		snprintf(why, n, "%s must be printable ASCII without leading or trailing spaces, "
			 "at most %zu bytes", what, max);
		return -1;
	}
	return 0;
}

/* Rule names end up in log lines and rejection bodies: keep them to one printable line. */
static int check_rule_name(const char *s, char *why, size_t n)
{
	return check_printable(s, 128, "a rule name", why, n);
}

/* Compile as the limiter will (fully anchored) to report a bad regex at load time. */
static int check_regex(const char *s, char *why, size_t n)
{
	int code;
	PCRE2_SIZE off;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)s, PCRE2_ZERO_TERMINATED,
				       PCRE2_ANCHORED | PCRE2_ENDANCHORED, &code, &off, NULL);
	PCRE2_UCHAR msg[256];

	if (re) {
		pcre2_code_free(re);
		return 0;
	}
	pcre2_get_error_message(code, msg, sizeof(msg));
	snprintf(why, n, "invalid regex at offset %zu: %s", (size_t)off, (const char *)msg);
	return -1;
}

/* ---- field tables ------------------------------------------------------------------------ */

enum field_kind {
	F_STR,     /* char *; sdef NULL makes the key optional (NULL when unset) */
	F_ENUM,    /* an enum member, one of names[] */
	F_NUM,     /* int64_t of <type> within [min, max] */
	F_LIMIT,   /* struct conf limits.v[limit]; type and bounds from conf_limit_defs */
	F_LIST,    /* char ** at off with its size_t count at off2; each item passes check */
	F_FLAGS,   /* unsigned bit set: bit i for names[i] */
	F_SECTION, /* a nested mapping described by sub[], filling the same struct */
	F_CUSTOM,  /* a value with its own shape, parsed by parse() into struct conf */
};

struct field;

/*
 * Post-parse check of a section; <lines>[i] is where fields[i] was written (0: absent) and
 * <had_errors> says a problem was already reported inside it (so a check may stay quiet
 * rather than repeat it).
 */
typedef void (*post_fn)(struct ctx *x, void *base, const char *path, int line,
			const struct field *fields, const int *lines, int had_errors);

/* One key of a YAML mapping. */
struct field {
	const char *key;                  /* YAML key */
	enum field_kind kind;             /* how the value is parsed and stored */
	size_t off, off2;                 /* offset of the member (and of a list's count) */
	enum conf_type type;              /* F_NUM: syntax */
	int64_t def, min, max;            /* F_NUM default and bounds; F_ENUM default index */
	const char *sdef;                 /* F_STR default (strdup'ed) */
	const char *const *names;         /* F_ENUM, F_FLAGS: NULL-terminated names */
	check_fn check;                   /* F_STR, F_LIST: extra check of each string */
	const struct field *sub;          /* F_SECTION: its keys */
	post_fn post;                     /* F_SECTION: cross-key checks */
	enum conf_limit limit;            /* F_LIMIT */
	void (*parse)(struct ctx *x, const char *path, int line, yaml_node_t *val); /* F_CUSTOM */
	void (*json)(struct evbuffer *out, const struct conf *c);                   /* F_CUSTOM */
	void (*text)(struct evbuffer *out, const struct conf *c);                   /* F_CUSTOM, optional */
	int required;                     /* the key must be present */
	int reloadable;                   /* 0: a reload keeps the running value (conf_keep_unreloadable) */
};

#define STR(T, k, m, d, chk, rel) \
	{ .key = k, .kind = F_STR, .off = offsetof(T, m), .sdef = d, .check = chk, .reloadable = rel }
#define ENUM(T, k, m, nm, d) \
	{ .key = k, .kind = F_ENUM, .off = offsetof(T, m), .names = nm, .def = d, .reloadable = 1 }
#define NUM(T, k, m, t, d, lo, hi, rel) \
	{ .key = k, .kind = F_NUM, .off = offsetof(T, m), .type = t, .def = d, .min = lo, .max = hi, \
	  .reloadable = rel }
#define LIST(T, k, m, cnt, chk) \
	{ .key = k, .kind = F_LIST, .off = offsetof(T, m), .off2 = offsetof(T, cnt), .check = chk, \
	  .reloadable = 1 }
#define SECTION(k, s, p) { .key = k, .kind = F_SECTION, .sub = s, .post = p, .reloadable = 1 }
#define CUSTOM(k, p, j, t) { .key = k, .kind = F_CUSTOM, .parse = p, .json = j, .text = t, .reloadable = 1 }
#define END { .key = NULL }

static const char *const mode_names[] = { "enforce", "dry_run", NULL };
static const char *const action_names[] = { "reject", "dry_run", NULL };
static const char *const unknown_names[] = { "probe", "admit", "reject", NULL };
static const char *const probe_names[] = { "series_api", "off", NULL };
static const char *const propagate_names[] = { "none", "m3", NULL };
static const char *const matcher_names[] = { "eq", "neq", "re", "nre", NULL }; /* CONF_MATCH_* bits */

_Static_assert(sizeof(enum conf_mode) == sizeof(int) && sizeof(enum conf_action) == sizeof(int) &&
	       sizeof(enum conf_unknown) == sizeof(int) && sizeof(enum conf_probe) == sizeof(int) &&
	       sizeof(enum conf_propagate) == sizeof(int), "F_ENUM stores enums as int");

static int is_default(const struct field *f, const void *base);
/* Custom keys, and the section checks, defined after the tables that name them. */
static void parse_headers(struct ctx *x, const char *path, int line, yaml_node_t *val);
static void parse_hints(struct ctx *x, const char *path, int line, yaml_node_t *val);
static void parse_global_limits(struct ctx *x, const char *path, int line, yaml_node_t *val);
static void parse_tenants(struct ctx *x, const char *path, int line, yaml_node_t *val);
static void parse_rules(struct ctx *x, const char *path, int line, yaml_node_t *val);
static void json_headers(struct evbuffer *out, const struct conf *c);
static void json_hints(struct evbuffer *out, const struct conf *c);
static void json_global_limits(struct evbuffer *out, const struct conf *c);
static void json_tenants(struct evbuffer *out, const struct conf *c);
static void json_rules(struct evbuffer *out, const struct conf *c);
static void text_headers(struct evbuffer *out, const struct conf *c);
static void text_hints(struct evbuffer *out, const struct conf *c);
static void post_root(struct ctx *x, void *base, const char *path, int line,
		      const struct field *fields, const int *lines, int had_errors);
static void post_pool(struct ctx *x, void *base, const char *path, int line,
		      const struct field *fields, const int *lines, int had_errors);
static void post_queue(struct ctx *x, void *base, const char *path, int line,
		       const struct field *fields, const int *lines, int had_errors);
static void post_admin(struct ctx *x, void *base, const char *path, int line,
		       const struct field *fields, const int *lines, int had_errors);
static void post_when(struct ctx *x, void *base, const char *path, int line,
		      const struct field *fields, const int *lines, int had_errors);

/*
 * The tables. Bounds are sanity limits, not tuning advice: they catch unit slips (a timeout of
 * 0, a pool of 512 bytes) while leaving every plausible deployment legal.
 */
static const struct field upstream_fields[] = {
	{ .key = "url", .kind = F_STR, .off = offsetof(struct conf, upstream_url),
	  .check = check_http_url, .required = 1, .reloadable = 0 },
	NUM(struct conf, "timeout", upstream_timeout_ms, CONF_T_DURATION, MS_M, 1, MS_D, 1),
	NUM(struct conf, "max_connections", upstream_max_connections, CONF_T_COUNT, 64, 1, 65535, 0),
	CUSTOM("headers", parse_headers, json_headers, text_headers),
	ENUM(struct conf, "propagate_limits", propagate_limits, propagate_names, CONF_PROPAGATE_NONE),
	END
};

static const struct field estimator_fields[] = {
	NUM(struct conf, "scrape_interval", est_scrape_interval_ms, CONF_T_DURATION, 15 * MS_S, 1, MS_D, 1),
	ENUM(struct conf, "unknown", est_unknown, unknown_names, CONF_UNKNOWN_PROBE),
	ENUM(struct conf, "probe", est_probe, probe_names, CONF_PROBE_SERIES_API),
	STR(struct conf, "probe_url", est_probe_url, NULL, check_http_url, 1),
	CUSTOM("hints", parse_hints, json_hints, text_hints),
	NUM(struct conf, "max_memory", est_max_memory, CONF_T_SIZE, 64 * MIB, 64 * KIB, 64 * GIB, 1),
	END
};

static const struct field pool_fields[] = {
	NUM(struct conf, "memory_limit", pool_memory_limit, CONF_T_SIZE, GIB, MIB, TIB, 0),
	NUM(struct conf, "low_watermark", pool_low_watermark_ppm, CONF_T_RATIO, 300000, 0, 1000000, 1),
	NUM(struct conf, "high_watermark", pool_high_watermark_ppm, CONF_T_RATIO, 600000, 0, 1000000, 1),
	END
};

static const struct field queue_fields[] = {
	{ .key = "max_queued", .kind = F_LIMIT, .limit = CONF_LIMIT_MAX_QUEUED, .reloadable = 1 },
	NUM(struct conf, "max_wait", queue_max_wait_ms, CONF_T_DURATION, 20 * MS_S, 0, MS_H, 1),
	NUM(struct conf, "base_delay", queue_base_delay_ms, CONF_T_DURATION, 50, 1, MS_H, 1),
	NUM(struct conf, "max_delay", queue_max_delay_ms, CONF_T_DURATION, 5 * MS_S, 1, MS_H, 1),
	NUM(struct conf, "max_tracked_keys", queue_max_tracked_keys, CONF_T_COUNT, 10000, 1, 1000000, 1),
	NUM(struct conf, "retry_rate", queue_retry_rate, CONF_T_COUNT, 100, 0, 1000000, 1),
	NUM(struct conf, "retry_burst", queue_retry_burst, CONF_T_COUNT, 1000, 1, 1000000, 1),
	END
};

static const struct field client_fields[] = {
	NUM(struct conf, "request_timeout", client_request_timeout_ms, CONF_T_DURATION, 30 * MS_S, 100, MS_H, 1),
	NUM(struct conf, "idle_timeout", client_idle_timeout_ms, CONF_T_DURATION, 2 * MS_M, 100, MS_D, 1),
	NUM(struct conf, "write_timeout", client_write_timeout_ms, CONF_T_DURATION, 2 * MS_M, 100, MS_D, 1),
	END
};

static const struct field admin_fields[] = {
	STR(struct conf, "reload_token_file", admin_reload_token_file, NULL, NULL, 1),
	NUM(struct conf, "max_tenant_labels", admin_max_tenant_labels, CONF_T_COUNT, 1000, 1, 100000, 1),
	END
};

static const struct field root_fields[] = {
	STR(struct conf, "listen", listen, "127.0.0.1:9201", check_hostport, 0),
	STR(struct conf, "admin_listen", admin_listen, "127.0.0.1:9202", check_hostport, 0),
	STR(struct conf, "read_path", read_path, "/api/v1/read", check_read_path, 0),
	ENUM(struct conf, "mode", mode, mode_names, CONF_MODE_ENFORCE),
	STR(struct conf, "tenant_header", tenant_header, "X-Scope-OrgID", check_header_name, 1),
	STR(struct conf, "log_level", log_level, "info", check_log_level, 1),
	SECTION("upstream", upstream_fields, NULL),
	CUSTOM("limits", parse_global_limits, json_global_limits, NULL),
	CUSTOM("tenants", parse_tenants, json_tenants, NULL),
	CUSTOM("rules", parse_rules, json_rules, NULL),
	SECTION("estimator", estimator_fields, NULL),
	SECTION("pool", pool_fields, post_pool),
	SECTION("queue", queue_fields, post_queue),
	SECTION("client", client_fields, NULL),
	SECTION("admin", admin_fields, post_admin),
	NUM(struct conf, "shutdown_grace", shutdown_grace_ms, CONF_T_DURATION, 30 * MS_S, 0, MS_H, 1),
	END
};

static const struct field when_fields[] = {
	STR(struct conf_rule, "metric", metric, NULL, check_metric_name, 1),
	STR(struct conf_rule, "metric_regex", metric_regex, NULL, check_regex, 1),
	LIST(struct conf_rule, "has_label", has_label, n_has_label, check_label_name),
	LIST(struct conf_rule, "lacks_label", lacks_label, n_lacks_label, check_label_name),
	{ .key = "matcher_types", .kind = F_FLAGS, .off = offsetof(struct conf_rule, matcher_types),
	  .names = matcher_names, .reloadable = 1 },
	/* defaults (0 and -1) mean "not tested" and sit outside the bounds a user may write */
	NUM(struct conf_rule, "range_above", range_above_ms, CONF_T_DURATION, 0, 1, 100 * MS_Y, 1),
	NUM(struct conf_rule, "estimate_above", estimate_above, CONF_T_COUNT, -1, 0,
	    INT64_C(1000000000000000), 1),
	END
};

static const struct field rule_fields[] = {
	{ .key = "name", .kind = F_STR, .off = offsetof(struct conf_rule, name),
	  .check = check_rule_name, .required = 1, .reloadable = 1 },
	ENUM(struct conf_rule, "action", action, action_names, CONF_ACTION_REJECT),
	SECTION("when", when_fields, post_when),
	END
};

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))
_Static_assert(N_OF(root_fields) <= MAX_FIELDS && N_OF(upstream_fields) <= MAX_FIELDS &&
	       N_OF(estimator_fields) <= MAX_FIELDS && N_OF(pool_fields) <= MAX_FIELDS &&
	       N_OF(queue_fields) <= MAX_FIELDS && N_OF(when_fields) <= MAX_FIELDS &&
	       N_OF(rule_fields) <= MAX_FIELDS, "raise MAX_FIELDS");
_Static_assert(CONF_LIMIT__COUNT <= 32, "conf_tenant.overridden is a 32-bit mask");

/* Pointer to the member <f> fills in <base>. */
static void *member(const struct field *f, const void *base)
{
	return (char *)(uintptr_t)base + f->off;
}

/* The count member of an F_LIST field. */
static size_t *list_count(const struct field *f, const void *base)
{
	return (size_t *)((char *)(uintptr_t)base + f->off2);
}

/* Set every key of <fields> (and nested sections) in <base> to its default. Returns 0 or -ENOMEM. */
static int apply_defaults(const struct field *fields, void *base)
{
	const struct field *f;

	for (f = fields; f->key; f++) {
		void *p = member(f, base);

		switch (f->kind) {
		case F_STR:
			if (f->sdef && !(*(char **)p = strdup(f->sdef)))
				return -ENOMEM;
			break;
		case F_ENUM: *(int *)p = (int)f->def; break;
		case F_NUM: *(int64_t *)p = f->def; break;
		case F_SECTION:
			if (apply_defaults(f->sub, base) < 0)
				return -ENOMEM;
			break;
		case F_LIMIT: case F_LIST: case F_FLAGS: case F_CUSTOM:
			break; /* zeroed by calloc; limits are set from conf_limit_defs */
		}
	}
	return 0;
}

/* Free what <fields> own in <base> (not the custom members). */
static void free_fields(const struct field *fields, void *base)
{
	const struct field *f;
	size_t i;

	for (f = fields; f->key; f++) {
		void *p = member(f, base);

		if (f->kind == F_STR) {
			free(*(char **)p);
		} else if (f->kind == F_LIST) {
			char **list = *(char ***)p;
			for (i = 0; i < *(size_t *)list_count(f, base); i++)
				free(list[i]);
			free(list);
		} else if (f->kind == F_SECTION) {
			free_fields(f->sub, base);
		}
	}
}

/* ---- the generic walker ------------------------------------------------------------------ */

static void parse_map(struct ctx *x, const struct field *fields, void *base, const char *path,
		      int line, yaml_node_t *node, post_fn post);

/* Parse <val> as one of <names>. Returns its index, or -1 after reporting. */
static int parse_name(struct ctx *x, const char *const *names, const char *path, int line,
		      const yaml_node_t *val)
{
	char want[128] = "one of ", qb[QUOTE_LEN];
	const char *s;
	int i;

	for (i = 0; names[i]; i++)
		snprintf(want + strlen(want), sizeof(want) - strlen(want), "%s%s", i ? ", " : "", names[i]);
	s = scalar(x, path, line, val, want);
	if (!s)
		return -1;
	for (i = 0; names[i]; i++)
		if (!strcmp(s, names[i]))
			return i;
	err_at(x, line, path, "must be %s, got %s", want, q(qb, s));
	return -1;
}

/* Parse <val> as a <type> within [<min>, <max>] into *<out>. Returns 0, or -1 after reporting. */
static int parse_num(struct ctx *x, const char *path, int line, const yaml_node_t *val,
		     enum conf_type type, int64_t min, int64_t max, int64_t *out)
{
	char qb[QUOTE_LEN], a[32], b[32];
	const char *s = scalar(x, path, line, val, type_want[type]);
	int64_t v;

	if (!s)
		return -1;
	if (parse_typed(type, s, &v) < 0) {
		err_at(x, line, path, "must be %s, got %s", type_want[type], q(qb, s));
		return -1;
	}
	if (v < min || v > max) {
		err_at(x, line, path, "must be at %s %s, got %s", v < min ? "least" : "most",
		       conf_format_value(type, v < min ? min : max, a, sizeof(a)),
		       conf_format_value(type, v, b, sizeof(b)));
		return -1;
	}
	*out = v;
	return 0;
}

/* Parse a non-empty string passing <check> into a new copy. Returns it, or NULL after reporting. */
static char *parse_string(struct ctx *x, check_fn check, const char *path, int line,
			  const yaml_node_t *val)
{
	char why[256], qb[QUOTE_LEN];
	const char *s = scalar(x, path, line, val, "a string");
	char *dup;

	if (!s)
		return NULL;
	if (!*s) {
		err_at(x, line, path, "must not be empty");
		return NULL;
	}
	if (check && check(s, why, sizeof(why)) < 0) {
		err_at(x, line, path, "%s, got %s", why, q(qb, s));
		return NULL;
	}
	if (!(dup = strdup(s)))
		oom(x, line, path);
	return dup;
}

/* F_LIST: a non-empty list of strings. */
static void parse_list(struct ctx *x, const struct field *f, void *base, const char *path, int line,
		       yaml_node_t *val)
{
	char ***list = member(f, base);
	size_t *count = list_count(f, base);
	yaml_node_item_t *it;
	char ipath[PATH_LEN];

	if (!val || val->type != YAML_SEQUENCE_NODE || val->data.sequence.items.start == val->data.sequence.items.top) {
		err_at(x, line, path, "must be a non-empty list, got %s",
		       val && val->type == YAML_SEQUENCE_NODE ? "an empty list" : node_kind(val));
		return;
	}
	*list = calloc((size_t)(val->data.sequence.items.top - val->data.sequence.items.start), sizeof(char *));
	if (!*list) {
		oom(x, line, path);
		return;
	}
	for (it = val->data.sequence.items.start; it < val->data.sequence.items.top; it++) {
		yaml_node_t *n = yaml_document_get_node(x->doc, *it);
		char *s;

		path_index(ipath, sizeof(ipath), path, (size_t)(it - val->data.sequence.items.start));
		if ((s = parse_string(x, f->check, ipath, node_line(n), n)))
			(*list)[(*count)++] = s;
	}
}

/* F_FLAGS: a non-empty list of names[], ORed as bits. */
static void parse_flags(struct ctx *x, const struct field *f, void *base, const char *path, int line,
			yaml_node_t *val)
{
	unsigned *bits = member(f, base);
	yaml_node_item_t *it;
	char ipath[PATH_LEN];

	if (!val || val->type != YAML_SEQUENCE_NODE || val->data.sequence.items.start == val->data.sequence.items.top) {
		err_at(x, line, path, "must be a non-empty list, got %s",
		       val && val->type == YAML_SEQUENCE_NODE ? "an empty list" : node_kind(val));
		return;
	}
	for (it = val->data.sequence.items.start; it < val->data.sequence.items.top; it++) {
		yaml_node_t *n = yaml_document_get_node(x->doc, *it);
		int i;

		path_index(ipath, sizeof(ipath), path, (size_t)(it - val->data.sequence.items.start));
		if ((i = parse_name(x, f->names, ipath, node_line(n), n)) >= 0)
			*bits |= 1u << i;
	}
}

/* Parse the value of one known key into <base>. */
static void parse_field(struct ctx *x, const struct field *f, void *base, const char *path, int line,
			yaml_node_t *val)
{
	void *p = member(f, base);
	char *s;
	int i;

	switch (f->kind) {
	case F_STR:
		if (is_null(val)) {
			if (f->sdef || f->required)
				err_at(x, line, path, "must not be empty");
			break; /* an optional string written as null stays unset */
		}
		if ((s = parse_string(x, f->check, path, line, val))) {
			free(*(char **)p);
			*(char **)p = s;
		}
		break;
	case F_ENUM:
		if ((i = parse_name(x, f->names, path, line, val)) >= 0)
			*(int *)p = i;
		break;
	case F_NUM:
		parse_num(x, path, line, val, f->type, f->min, f->max, p);
		break;
	case F_LIMIT: {
		const struct conf_limit_def *d = &conf_limit_defs[f->limit];
		parse_num(x, path, line, val, d->type, d->min, d->max, &((struct conf *)base)->limits.v[f->limit]);
		break;
	}
	case F_LIST: parse_list(x, f, base, path, line, val); break;
	case F_FLAGS: parse_flags(x, f, base, path, line, val); break;
	case F_SECTION: parse_map(x, f->sub, base, path, line, val, f->post); break;
	case F_CUSTOM: f->parse(x, path, line, val); break;
	}
}

/* State of one parse_map() for map_pair(). */
struct map_arg {
	const struct field *fields; /* the keys allowed here (ref) */
	void *base;                 /* the struct they fill (ref) */
	int lines[MAX_FIELDS];      /* where each key was found, 0 = absent */
};

/* One key of a table-described mapping: parse it, or report it unknown with a suggestion. */
static void map_pair(struct ctx *x, const char *path, const char *key, int line, yaml_node_t *val,
		     void *arg)
{
	struct map_arg *m = arg;
	const struct field *f;
	const char *best = NULL;
	size_t dist = 99;

	for (f = m->fields; f->key; f++) {
		if (!strcmp(f->key, key)) {
			m->lines[f - m->fields] = line;
			parse_field(x, f, m->base, path, line, val);
			return;
		}
		consider(key, f->key, &best, &dist);
	}
	unknown_key(x, path, line, best);
}

/*
 * Parse mapping <node> (NULL: absent, every key defaulted) at <path> into <base> per
 * <fields>, then report missing required keys and run <post>. Absent subsections are walked
 * too, so their required keys and checks are never skipped.
 */
static void parse_map(struct ctx *x, const struct field *fields, void *base, const char *path,
		      int line, yaml_node_t *node, post_fn post)
{
	struct map_arg m = { .fields = fields, .base = base };
	const struct field *f;
	char kpath[PATH_LEN];
	int errs_before = x->n_errs;

	if (each_pair(x, path, line, node, map_pair, &m) < 0)
		return;
	for (f = fields; f->key; f++) {
		if (m.lines[f - fields])
			continue;
		path_join(kpath, sizeof(kpath), path, f->key);
		if (f->kind == F_SECTION)
			parse_map(x, f->sub, base, kpath, line, NULL, f->post);
		else if (f->required)
			err_at(x, line, kpath, "is required");
	}
	if (post)
		post(x, base, path, line, fields, m.lines, x->n_errs != errs_before);
}

/* Line of key <key> of <fields> if it was written, else <fallback>. */
static int line_of(const struct field *fields, const int *lines, const char *key, int fallback)
{
	const struct field *f;

	for (f = fields; f->key; f++)
		if (!strcmp(f->key, key))
			return lines[f - fields] ? lines[f - fields] : fallback;
	return fallback;
}

/* ---- custom keys --------------------------------------------------------------------------- */

/* Number of entries of a mapping or list (0 for anything else). */
static size_t node_size(const yaml_node_t *n)
{
	if (n && n->type == YAML_MAPPING_NODE)
		return (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
	if (n && n->type == YAML_SEQUENCE_NODE)
		return (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
	return 0;
}

/* Headers promguard sets itself or that only concern one hop; the store must not get others. */
static const char *const reserved_headers[] = {
	"Host", "Content-Length", "Content-Encoding", "Content-Type", "Transfer-Encoding",
	"Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Upgrade",
	"X-Prometheus-Remote-Read-Version", NULL,
};

/*
 * One upstream.headers entry. Besides the token check, names that promguard sets itself or that
 * are hop-by-hop are refused (a second Content-Length or Host would corrupt the request), and
 * names are compared without case, as HTTP does. Values must not break the header line.
 */
static void header_pair(struct ctx *x, const char *path, const char *key, int line, yaml_node_t *val,
			void *arg)
{
	struct conf *c = x->c;
	char why[256], qb[QUOTE_LEN];
	const char *v;
	size_t i;

	(void)arg;
	if (check_header_name(key, why, sizeof(why)) < 0) {
		err_at(x, line, path, "%s, got %s", why, q(qb, key));
		return;
	}
	for (i = 0; reserved_headers[i]; i++)
		if (!strcasecmp(key, reserved_headers[i])) {
			err_at(x, line, path, "%s is set by promguard itself or is hop-by-hop; it cannot be "
			       "configured", reserved_headers[i]);
			return;
		}
	for (i = 0; i < c->n_upstream_headers; i++)
		if (!strcasecmp(key, c->upstream_headers[i].key)) {
			err_at(x, line, path, "duplicate header (header names ignore case)");
			return;
		}
	if (!(v = scalar(x, path, line, val, "a string")))
		return;
	for (i = 0; v[i]; i++)
		if (((unsigned char)v[i] < 0x20 && v[i] != '\t') || v[i] == 0x7f) {
			err_at(x, line, path, "header value must not contain control characters");
			return;
		}
	c->upstream_headers[c->n_upstream_headers].key = strdup(key);
	c->upstream_headers[c->n_upstream_headers].value = strdup(v);
	if (!c->upstream_headers[c->n_upstream_headers].key || !c->upstream_headers[c->n_upstream_headers].value)
		oom(x, line, path);
	c->n_upstream_headers++; /* counted even when half-built, so conf_free() frees it */
}

/* upstream.headers: sized once from the mapping, so header_pair() never reallocates. */
static void parse_headers(struct ctx *x, const char *path, int line, yaml_node_t *val)
{
	size_t n = node_size(val);

	if (n && !(x->c->upstream_headers = calloc(n, sizeof(struct conf_kv)))) {
		oom(x, line, path);
		return;
	}
	each_pair(x, path, line, val, header_pair, NULL);
}

/* One estimator.hints entry: a metric name and a series count. */
static void hint_pair(struct ctx *x, const char *path, const char *key, int line, yaml_node_t *val,
		      void *arg)
{
	struct conf *c = x->c;
	struct conf_hint *h = &c->est_hints[c->n_est_hints];
	char why[256], qb[QUOTE_LEN];

	(void)arg;
	if (check_metric_name(key, why, sizeof(why)) < 0) {
		err_at(x, line, path, "%s, got %s", why, q(qb, key));
		return;
	}
	if (parse_num(x, path, line, val, CONF_T_COUNT, 0, INT64_C(1000000000000), &h->series) < 0)
		return;
	if (!(h->metric = strdup(key)))
		oom(x, line, path);
	else
		c->n_est_hints++;
}

/* estimator.hints: sized once from the mapping. */
static void parse_hints(struct ctx *x, const char *path, int line, yaml_node_t *val)
{
	size_t n = node_size(val);

	if (n && !(x->c->est_hints = calloc(n, sizeof(struct conf_hint)))) {
		oom(x, line, path);
		return;
	}
	each_pair(x, path, line, val, hint_pair, NULL);
}

/* Where limit_pair() stores: the global limits (overridden NULL) or one tenant's. */
struct limit_arg {
	struct conf_limits *dst;  /* (ref) */
	uint32_t *overridden;     /* (ref) NULL for limits: */
};

/*
 * One limit key under limits: or tenants.NAME:. The key is looked up in conf_limit_defs, so a
 * new row in the table is accepted in both places with no parsing code of its own.
 */
static void limit_pair(struct ctx *x, const char *path, const char *key, int line, yaml_node_t *val,
		       void *arg)
{
	struct limit_arg *a = arg;
	const char *best = NULL;
	size_t dist = 99;
	int i;

	for (i = 0; i < CONF_LIMIT__COUNT; i++) {
		const struct conf_limit_def *d = &conf_limit_defs[i];
		/* under limits: only the limits.* rows; a tenant may override any row */
		int here = a->overridden || !strncmp(d->path, "limits.", 7);

		if (strcmp(d->key, key)) {
			if (here)
				consider(key, d->key, &best, &dist);
			continue;
		}
		if (!here) {
			err_at(x, line, path, "unknown key here; the global value is %s", d->path);
			return;
		}
		if (parse_num(x, path, line, val, d->type, d->min, d->max, &a->dst->v[i]) == 0 && a->overridden)
			*a->overridden |= 1u << i;
		return;
	}
	unknown_key(x, path, line, best);
}

/* limits: the global value of every limits.* row. */
static void parse_global_limits(struct ctx *x, const char *path, int line, yaml_node_t *val)
{
	struct limit_arg a = { .dst = &x->c->limits };

	each_pair(x, path, line, val, limit_pair, &a);
}

/*
 * One tenants.NAME block. Its values land in the tenant's limits with their overridden bits
 * set; the rest are filled from the global limits by post_root(), once the whole file is read.
 */
static void tenant_pair(struct ctx *x, const char *path, const char *key, int line, yaml_node_t *val,
			void *arg)
{
	struct conf *c = x->c;
	struct conf_tenant *t = &c->tenants[c->n_tenants];
	struct limit_arg a = { .dst = &t->limits, .overridden = &t->overridden };
	char why[256], qb[QUOTE_LEN];

	(void)arg;
	if (check_printable(key, 256, "a tenant name", why, sizeof(why)) < 0) {
		err_at(x, line, path, "%s, got %s", why, q(qb, key));
		return;
	}
	if (!(t->name = strdup(key))) {
		oom(x, line, path);
		return;
	}
	c->n_tenants++;
	each_pair(x, path, line, val, limit_pair, &a);
}

/* tenants: sized once from the mapping; YAML duplicate detection covers duplicate tenants. */
static void parse_tenants(struct ctx *x, const char *path, int line, yaml_node_t *val)
{
	size_t n = node_size(val);

	/* n counts duplicates too, which are skipped: enough room for every tenant_pair() */
	if (n && !(x->c->tenants = calloc(n, sizeof(struct conf_tenant)))) {
		oom(x, line, path);
		return;
	}
	each_pair(x, path, line, val, tenant_pair, NULL);
}

/*
 * rules: a list of mappings described by rule_fields. Each rule is counted before it is parsed
 * so conf_free() releases a half-parsed one. Names must be unique across the list.
 */
static void parse_rules(struct ctx *x, const char *path, int line, yaml_node_t *val)
{
	struct conf *c = x->c;
	yaml_node_item_t *it;
	char rpath[PATH_LEN], npath[PATH_LEN];
	size_t i, j;

	if (is_null(val))
		return;
	if (val->type != YAML_SEQUENCE_NODE) {
		err_at(x, line, path, "must be a list of rules, got %s", node_kind(val));
		return;
	}
	if (node_size(val) && !(c->rules = calloc(node_size(val), sizeof(struct conf_rule)))) {
		oom(x, line, path);
		return;
	}
	for (it = val->data.sequence.items.start; it < val->data.sequence.items.top; it++) {
		yaml_node_t *n = yaml_document_get_node(x->doc, *it);
		struct conf_rule *r = &c->rules[c->n_rules++];

		r->line = node_line(n);
		path_index(rpath, sizeof(rpath), path, c->n_rules - 1);
		if (apply_defaults(rule_fields, r) < 0) {
			oom(x, r->line, rpath);
			return;
		}
		parse_map(x, rule_fields, r, rpath, r->line, n, NULL);
	}
	for (i = 0; i < c->n_rules; i++)
		for (j = 0; j < i; j++)
			if (c->rules[i].name && c->rules[j].name && !strcmp(c->rules[i].name, c->rules[j].name)) {
				char qb[QUOTE_LEN];
				path_index(rpath, sizeof(rpath), path, i);
				path_join(npath, sizeof(npath), rpath, "name");
				err_at(x, c->rules[i].line, npath, "duplicate rule name %s (first at line %d)",
				       q(qb, c->rules[i].name), c->rules[j].line);
				break;
			}
}

/* ---- cross-key checks -------------------------------------------------------------------- */

/* pool: refilling from below low up to high needs low < high. */
static void post_pool(struct ctx *x, void *base, const char *path, int line,
		      const struct field *fields, const int *lines, int had_errors)
{
	struct conf *c = base;
	char kpath[PATH_LEN], a[32], b[32];

	(void)had_errors;
	if (c->pool_low_watermark_ppm >= c->pool_high_watermark_ppm) {
		path_join(kpath, sizeof(kpath), path, "low_watermark");
		err_at(x, line_of(fields, lines, "low_watermark", line_of(fields, lines, "high_watermark", line)),
		       kpath, "must be below pool.high_watermark (%s >= %s)",
		       conf_format_value(CONF_T_RATIO, c->pool_low_watermark_ppm, a, sizeof(a)),
		       conf_format_value(CONF_T_RATIO, c->pool_high_watermark_ppm, b, sizeof(b)));
	}
}

/* queue: the backoff must be able to grow from base_delay to max_delay. */
static void post_queue(struct ctx *x, void *base, const char *path, int line,
		       const struct field *fields, const int *lines, int had_errors)
{
	struct conf *c = base;
	char kpath[PATH_LEN], a[32], b[32];

	(void)had_errors;
	if (c->queue_base_delay_ms > c->queue_max_delay_ms) {
		path_join(kpath, sizeof(kpath), path, "base_delay");
		err_at(x, line_of(fields, lines, "base_delay", line_of(fields, lines, "max_delay", line)),
		       kpath, "must not exceed queue.max_delay (%s > %s)",
		       conf_format_value(CONF_T_DURATION, c->queue_base_delay_ms, a, sizeof(a)),
		       conf_format_value(CONF_T_DURATION, c->queue_max_delay_ms, b, sizeof(b)));
	}
}

/*
 * admin.reload_token_file: read the token now (and again on every reload, so a rotated file takes
 * effect with the reload that follows). One line of visible ASCII, surrounding whitespace
 * trimmed; the token itself is never printed.
 */
static void post_admin(struct ctx *x, void *base, const char *path, int line,
		       const struct field *fields, const int *lines, int had_errors)
{
	struct conf *c = base;
	char kpath[PATH_LEN], buf[CONF_TOKEN_MAX + 2];
	size_t n, i;
	FILE *fp;

	(void)had_errors;
	if (!c->admin_reload_token_file)
		return;
	path_join(kpath, sizeof(kpath), path, "reload_token_file");
	line = line_of(fields, lines, "reload_token_file", line);
	fp = fopen(c->admin_reload_token_file, "r");
	if (!fp) {
		err_at(x, line, kpath, "cannot read %s: %s", c->admin_reload_token_file, strerror(errno));
		return;
	}
	n = fread(buf, 1, sizeof(buf) - 1, fp);
	fclose(fp);
	buf[n] = 0;
	while (n && isspace((unsigned char)buf[n - 1]))
		buf[--n] = 0;
	for (i = 0; i < n && isspace((unsigned char)buf[i]); i++)
		;
	if (n - i > CONF_TOKEN_MAX) {
		err_at(x, line, kpath, "token longer than %d bytes", CONF_TOKEN_MAX);
		return;
	}
	if (n == i) {
		err_at(x, line, kpath, "%s holds no token", c->admin_reload_token_file);
		return;
	}
	for (size_t k = i; k < n; k++)
		if (buf[k] < 0x21 || buf[k] > 0x7e) {
			err_at(x, line, kpath, "token must be one line of visible ASCII (no spaces)");
			return;
		}
	c->admin_reload_token = strndup(buf + i, n - i);
	if (!c->admin_reload_token)
		oom(x, line, kpath);
}

/* rules[].when: at least one condition must be set, or the rule would match everything. */
static void post_when(struct ctx *x, void *base, const char *path, int line,
		      const struct field *fields, const int *lines, int had_errors)
{
	const struct field *f;

	(void)lines;
	if (had_errors)
		return; /* a condition was written but is invalid: that error says enough */
	for (f = fields; f->key; f++)
		if (!is_default(f, base))
			return;
	err_at(x, line, path, "needs at least one condition (metric, metric_regex, has_label, "
	       "lacks_label, matcher_types, range_above, estimate_above)");
}

/* Derive the upstream parts and each tenant's effective limits once everything is read. */
static void post_root(struct ctx *x, void *base, const char *path, int line,
		      const struct field *fields, const int *lines, int had_errors)
{
	struct conf *c = base;
	struct url_parts u;
	char why[256];
	size_t t;
	int i;

	(void)path, (void)fields, (void)lines, (void)had_errors;
	if (c->upstream_url && url_split(c->upstream_url, &u, why, sizeof(why)) == 0) {
		c->upstream_host = strndup(u.host, u.host_len);
		c->upstream_port = u.port;
		/* the request target always starts with '/' */
		if (asprintf(&c->upstream_path, "%s%s", u.path[0] == '/' ? "" : "/", u.path) < 0)
			c->upstream_path = NULL;
		if (!c->upstream_host || !c->upstream_path)
			oom(x, line, "upstream.url");
	}
	if (c->est_probe_url && url_split(c->est_probe_url, &u, why, sizeof(why)) == 0) {
		c->est_probe_host = strndup(u.host, u.host_len);
		c->est_probe_port = u.port;
		if (asprintf(&c->est_probe_path, "%s%s", u.path[0] == '/' ? "" : "/", u.path) < 0)
			c->est_probe_path = NULL;
		if (!c->est_probe_host || !c->est_probe_path)
			oom(x, line, "estimator.probe_url");
	}
	for (t = 0; t < c->n_tenants; t++)
		for (i = 0; i < CONF_LIMIT__COUNT; i++)
			if (!(c->tenants[t].overridden & (1u << i)))
				c->tenants[t].limits.v[i] = c->limits.v[i];
}

/* ---- load and free ----------------------------------------------------------------------- */

void conf_free(struct conf *c)
{
	size_t i;

	if (!c)
		return;
	free_fields(root_fields, c);
	free(c->path);
	free(c->upstream_host);
	free(c->upstream_path);
	free(c->est_probe_host);
	free(c->est_probe_path);
	free(c->admin_reload_token);
	for (i = 0; i < c->n_upstream_headers; i++) {
		free(c->upstream_headers[i].key);
		free(c->upstream_headers[i].value);
	}
	free(c->upstream_headers);
	for (i = 0; i < c->n_tenants; i++)
		free(c->tenants[i].name);
	free(c->tenants);
	for (i = 0; i < c->n_rules; i++)
		free_fields(rule_fields, &c->rules[i]);
	free(c->rules);
	for (i = 0; i < c->n_est_hints; i++)
		free(c->est_hints[i].metric);
	free(c->est_hints);
	free(c);
}

/* Report a libyaml parse error with its line. */
static void yaml_error(struct ctx *x, const yaml_parser_t *p, const char *text, size_t len)
{
	size_t line = p->problem_mark.line + 1, i;

	if (p->error == YAML_READER_ERROR) {
		/* reader errors (bad encoding) carry a byte offset, not a mark */
		for (line = 1, i = 0; i < p->problem_offset && i < len; i++)
			line += text[i] == '\n';
	}
	err_at(x, (int)line, "yaml", "%s%s%s", p->problem ? p->problem : "cannot parse",
	       p->context ? " " : "", p->context ? p->context : "");
}

int conf_load_string(const char *name, const char *yaml, size_t len, struct conf **out,
		     struct evbuffer *errs)
{
	struct ctx x = { .name = name, .errs = errs };
	yaml_parser_t parser;
	yaml_document_t doc, extra;
	struct conf *c;
	int i, rc = 0;

	*out = NULL;
	c = calloc(1, sizeof(*c));
	if (!c || !(c->path = strdup(name)) || apply_defaults(root_fields, c) < 0) {
		conf_free(c);
		return -ENOMEM;
	}
	c->refs = 1;
	for (i = 0; i < CONF_LIMIT__COUNT; i++)
		c->limits.v[i] = conf_limit_defs[i].def;
	if (!yaml_parser_initialize(&parser)) {
		conf_free(c);
		return -ENOMEM;
	}
	yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);
	if (!yaml_parser_load(&parser, &doc)) {
		yaml_error(&x, &parser, yaml, len);
		rc = parser.error == YAML_MEMORY_ERROR ? -ENOMEM : -EINVAL;
		goto out;
	}
	x.doc = &doc;
	x.c = c;
	parse_map(&x, root_fields, c, "", 1, yaml_document_get_root_node(&doc), post_root);
	/* a second document would be silently ignored: say so */
	if (!yaml_parser_load(&parser, &extra)) {
		yaml_error(&x, &parser, yaml, len);
	} else {
		if (yaml_document_get_root_node(&extra))
			err_at(&x, node_line(yaml_document_get_root_node(&extra)), "yaml",
			       "only one YAML document is allowed (remove the ---)");
		yaml_document_delete(&extra);
	}
	yaml_document_delete(&doc);
	rc = x.oom ? -ENOMEM : x.n_errs ? -EINVAL : 0;
out:
	yaml_parser_delete(&parser);
	if (rc < 0)
		conf_free(c);
	else
		*out = c;
	return rc;
}

int conf_load(const char *path, struct conf **out, struct evbuffer *errs)
{
	FILE *f;
	char *buf = NULL;
	size_t len = 0, cap = 0, n;
	int rc, err = 0;

	*out = NULL;
	/* read it whole: libyaml then reports positions we can map back to lines */
	if (!(f = fopen(path, "rb"))) {
		err = errno;
	} else {
		do {
			if (len == cap) {
				char *nb = cap >= MAX_FILE_BYTES ? NULL : realloc(buf, cap ? cap * 2 : 8192);
				if (!nb) {
					err = cap >= MAX_FILE_BYTES ? EFBIG : ENOMEM;
					break;
				}
				buf = nb;
				cap = cap ? cap * 2 : 8192;
			}
			n = fread(buf + len, 1, cap - len, f);
			len += n;
		} while (n > 0);
		if (!err && ferror(f))
			err = errno ? errno : EIO;
		fclose(f);
	}
	if (err) {
		if (errs)
			evbuffer_add_printf(errs, "%s: cannot read: %s\n", path, strerror(err));
		free(buf);
		return err == ENOENT ? -ENOENT : err == ENOMEM ? -ENOMEM : -EIO;
	}
	rc = conf_load_string(path, buf ? buf : "", len, out, errs);
	free(buf);
	return rc;
}

const struct conf_limits *conf_limits_for(const struct conf *c, const char *tenant)
{
	size_t i;

	for (i = 0; tenant && i < c->n_tenants; i++)
		if (!strcmp(c->tenants[i].name, tenant))
			return &c->tenants[i].limits;
	return &c->limits;
}

/* ---- printing ---------------------------------------------------------------------------- */

/* Format the value of a non-custom field as a user writes it ("" for an unset string). */
static const char *format_field(const struct field *f, const void *base, char *buf, size_t n)
{
	const void *p = member(f, base);
	size_t i, o = 0;

	buf[0] = '\0';
	switch (f->kind) {
	case F_STR:
		snprintf(buf, n, "%s", *(char *const *)p ? *(char *const *)p : "");
		break;
	case F_ENUM:
		snprintf(buf, n, "%s", f->names[*(const int *)p]);
		break;
	case F_NUM:
		conf_format_value(f->type, *(const int64_t *)p, buf, n);
		break;
	case F_LIMIT:
		conf_format_value(conf_limit_defs[f->limit].type,
				  ((const struct conf *)base)->limits.v[f->limit], buf, n);
		break;
	case F_LIST:
		for (i = 0; i < *(const size_t *)list_count(f, base) && o < n; i++)
			o += (size_t)snprintf(buf + o, n - o, "%s%s", i ? "," : "", (*(char *const *const *)p)[i]);
		break;
	case F_FLAGS:
		for (i = 0; f->names[i] && o < n; i++)
			if (*(const unsigned *)p & (1u << i))
				o += (size_t)snprintf(buf + o, n - o, "%s%s", o ? "," : "", f->names[i]);
		break;
	case F_SECTION: case F_CUSTOM:
		break;
	}
	return buf;
}

/* 1 when field <f> holds its default in <base> (an unset list or flag set counts as default). */
static int is_default(const struct field *f, const void *base)
{
	const void *p = member(f, base);

	switch (f->kind) {
	case F_STR: {
		const char *s = *(char *const *)p;
		return f->sdef ? s && !strcmp(s, f->sdef) : !s;
	}
	case F_ENUM: return *(const int *)p == f->def;
	case F_NUM: return *(const int64_t *)p == f->def;
	case F_LIMIT: return ((const struct conf *)base)->limits.v[f->limit] == conf_limit_defs[f->limit].def;
	case F_LIST: return *(const size_t *)list_count(f, base) == 0;
	case F_FLAGS: return *(const unsigned *)p == 0;
	case F_SECTION: case F_CUSTOM: return 1;
	}
	return 1;
}

/* Write <s> as a JSON string. */
void conf_json_string(struct evbuffer *out, const char *s)
{
	const char *run = s;

	evbuffer_add(out, "\"", 1);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch >= 0x20 && ch != '"' && ch != '\\')
			continue; /* UTF-8 passes through: libyaml rejects invalid input */
		evbuffer_add(out, run, (size_t)(s - run));
		if (ch == '"' || ch == '\\')
			evbuffer_add_printf(out, "\\%c", ch);
		else
			evbuffer_add_printf(out, "\\u%04x", ch);
		run = s + 1;
	}
	evbuffer_add(out, run, (size_t)(s - run));
	evbuffer_add(out, "\"", 1);
}

/* A value of <type> in JSON: counts and ratios as numbers, sizes and durations as written. */
static void json_value(struct evbuffer *out, enum conf_type type, int64_t v)
{
	char buf[64];

	conf_format_value(type, v, buf, sizeof(buf));
	if (type == CONF_T_SIZE || type == CONF_T_DURATION)
		conf_json_string(out, buf);
	else
		evbuffer_add_printf(out, "%s", buf);
}

/* Write the members of <fields> in <base> (no braces), `"key":value` joined by commas. */
static void json_members(struct evbuffer *out, const struct field *fields, const void *base,
			 const struct conf *c)
{
	const struct field *f;
	size_t i;

	for (f = fields; f->key; f++) {
		const void *p = member(f, base);

		evbuffer_add_printf(out, "%s", f == fields ? "" : ",");
		conf_json_string(out, f->key);
		evbuffer_add(out, ":", 1);
		switch (f->kind) {
		case F_STR:
			if (*(char *const *)p)
				conf_json_string(out, *(char *const *)p);
			else
				evbuffer_add_printf(out, "null");
			break;
		case F_ENUM: conf_json_string(out, f->names[*(const int *)p]); break;
		case F_NUM: json_value(out, f->type, *(const int64_t *)p); break;
		case F_LIMIT:
			json_value(out, conf_limit_defs[f->limit].type, ((const struct conf *)base)->limits.v[f->limit]);
			break;
		case F_LIST:
			evbuffer_add(out, "[", 1);
			for (i = 0; i < *(const size_t *)list_count(f, base); i++) {
				evbuffer_add_printf(out, "%s", i ? "," : "");
				conf_json_string(out, (*(char *const *const *)p)[i]);
			}
			evbuffer_add(out, "]", 1);
			break;
		case F_FLAGS: {
			const char *sep = "";
			evbuffer_add(out, "[", 1);
			for (i = 0; f->names[i]; i++)
				if (*(const unsigned *)p & (1u << i)) {
					evbuffer_add_printf(out, "%s", sep);
					conf_json_string(out, f->names[i]);
					sep = ",";
				}
			evbuffer_add(out, "]", 1);
			break;
		}
		case F_SECTION:
			evbuffer_add(out, "{", 1);
			json_members(out, f->sub, base, c);
			evbuffer_add(out, "}", 1);
			break;
		case F_CUSTOM: f->json(out, c); break;
		}
	}
}

/* Header values may be credentials: status shows the names only. */
static void json_headers(struct evbuffer *out, const struct conf *c)
{
	size_t i;

	evbuffer_add(out, "{", 1);
	for (i = 0; i < c->n_upstream_headers; i++) {
		evbuffer_add_printf(out, "%s", i ? "," : "");
		conf_json_string(out, c->upstream_headers[i].key);
		evbuffer_add_printf(out, ":\"<redacted>\"");
	}
	evbuffer_add(out, "}", 1);
}

/* estimator.hints as {"metric": series}. */
static void json_hints(struct evbuffer *out, const struct conf *c)
{
	size_t i;

	evbuffer_add(out, "{", 1);
	for (i = 0; i < c->n_est_hints; i++) {
		evbuffer_add_printf(out, "%s", i ? "," : "");
		conf_json_string(out, c->est_hints[i].metric);
		evbuffer_add_printf(out, ":%" PRId64, c->est_hints[i].series);
	}
	evbuffer_add(out, "}", 1);
}

/* One limits object: every limit by key, including queue's max_queued. */
void conf_write_limits_json(const struct conf_limits *l, struct evbuffer *out)
{
	int i;

	evbuffer_add(out, "{", 1);
	for (i = 0; i < CONF_LIMIT__COUNT; i++) {
		evbuffer_add_printf(out, "%s", i ? "," : "");
		conf_json_string(out, conf_limit_defs[i].key);
		evbuffer_add(out, ":", 1);
		json_value(out, conf_limit_defs[i].type, l->v[i]);
	}
	evbuffer_add(out, "}", 1);
}

/* limits: the global values. */
static void json_global_limits(struct evbuffer *out, const struct conf *c)
{
	conf_write_limits_json(&c->limits, out);
}

/* tenants: {"name": {"limits": {effective}, "overridden": ["key", ...]}} */
static void json_tenants(struct evbuffer *out, const struct conf *c)
{
	size_t t;
	int i;

	evbuffer_add(out, "{", 1);
	for (t = 0; t < c->n_tenants; t++) {
		const char *sep = "";
		evbuffer_add_printf(out, "%s", t ? "," : "");
		conf_json_string(out, c->tenants[t].name);
		evbuffer_add_printf(out, ":{\"limits\":");
		conf_write_limits_json(&c->tenants[t].limits, out);
		evbuffer_add_printf(out, ",\"overridden\":[");
		for (i = 0; i < CONF_LIMIT__COUNT; i++)
			if (c->tenants[t].overridden & (1u << i)) {
				evbuffer_add_printf(out, "%s", sep);
				conf_json_string(out, conf_limit_defs[i].key);
				sep = ",";
			}
		evbuffer_add(out, "]}", 2);
	}
	evbuffer_add(out, "}", 1);
}

/* rules: each rule's keys (from rule_fields) plus the line it was defined on. */
static void json_rules(struct evbuffer *out, const struct conf *c)
{
	size_t i;

	evbuffer_add(out, "[", 1);
	for (i = 0; i < c->n_rules; i++) {
		evbuffer_add_printf(out, "%s{", i ? "," : "");
		json_members(out, rule_fields, &c->rules[i], c);
		evbuffer_add_printf(out, ",\"line\":%d}", c->rules[i].line);
	}
	evbuffer_add(out, "]", 1);
}

void conf_write_json(const struct conf *c, struct evbuffer *out)
{
	evbuffer_add_printf(out, "{\"path\":");
	conf_json_string(out, c->path);
	evbuffer_add(out, ",", 1);
	json_members(out, root_fields, c, c);
	evbuffer_add(out, "}", 1);
}

/* upstream.headers in the report: names only, values may be credentials. */
static void text_headers(struct evbuffer *out, const struct conf *c)
{
	size_t i;

	for (i = 0; i < c->n_upstream_headers; i++)
		evbuffer_add_printf(out, "%s%s", i ? "," : "", c->upstream_headers[i].key);
	if (c->n_upstream_headers)
		evbuffer_add_printf(out, " (values hidden)");
}

/* estimator.hints in the report: how many (the list can be long). */
static void text_hints(struct evbuffer *out, const struct conf *c)
{
	evbuffer_add_printf(out, "%zu metric%s", c->n_est_hints, c->n_est_hints == 1 ? "" : "s");
}

/* The report's settings block: every non-limit key as `  path  value`. */
static void text_settings(struct evbuffer *out, const struct field *fields, const void *base,
			  const struct conf *c, const char *prefix)
{
	const struct field *f;
	char path[PATH_LEN], buf[512];

	for (f = fields; f->key; f++) {
		path_join(path, sizeof(path), prefix, f->key);
		if (f->kind == F_SECTION) {
			text_settings(out, f->sub, base, c, path);
		} else if (f->kind == F_CUSTOM) {
			if (f->text) {
				evbuffer_add_printf(out, "  %-32s ", path);
				f->text(out, c);
				evbuffer_add(out, "\n", 1);
			}
		} else {
			format_field(f, base, buf, sizeof(buf));
			evbuffer_add_printf(out, "  %-32s %s\n", path, *buf ? buf : "(unset)");
		}
	}
}

void conf_print_report(const struct conf *c, struct evbuffer *out)
{
	char a[512], b[64];
	size_t t, i;
	int l;

	evbuffer_add_printf(out, "config ok\nfile: %s\nmode: %s (%s)\n\nlimits, tenant default:\n",
			    c->path, mode_names[c->mode], c->mode == CONF_MODE_ENFORCE ?
			    "queries over a limit are rejected" : "rejections are only counted and logged");
	for (l = 0; l < CONF_LIMIT__COUNT; l++)
		evbuffer_add_printf(out, "  %-32s %-12s %s\n", conf_limit_defs[l].path,
				    conf_format_value(conf_limit_defs[l].type, c->limits.v[l], a, sizeof(a)),
				    conf_limit_defs[l].help);
	for (t = 0; t < c->n_tenants; t++) {
		const struct conf_tenant *tn = &c->tenants[t];

		evbuffer_add_printf(out, "\nlimits, tenant %s:\n", log_quote(a, sizeof(a), tn->name));
		for (l = 0; l < CONF_LIMIT__COUNT; l++) {
			conf_format_value(conf_limit_defs[l].type, tn->limits.v[l], a, sizeof(a));
			if (!(tn->overridden & (1u << l))) {
				evbuffer_add_printf(out, "  %-32s %s\n", conf_limit_defs[l].key, a);
				continue;
			}
			evbuffer_add_printf(out, "  %-32s %-12s overridden (default %s)\n", conf_limit_defs[l].key, a,
					    conf_format_value(conf_limit_defs[l].type, c->limits.v[l], b, sizeof(b)));
		}
	}
	evbuffer_add_printf(out, "\nrules:%s\n", c->n_rules ? "" : " none");
	for (i = 0; i < c->n_rules; i++) {
		const struct conf_rule *r = &c->rules[i];
		const struct field *f;

		evbuffer_add_printf(out, "  %s: %s when", log_quote(a, sizeof(a), r->name), action_names[r->action]);
		for (f = when_fields; f->key; f++)
			if (!is_default(f, r))
				evbuffer_add_printf(out, " %s=%s", f->key, format_field(f, r, a, sizeof(a)));
		evbuffer_add_printf(out, " (line %d)\n", r->line);
	}
	evbuffer_add_printf(out, "\nsettings:\n");
	text_settings(out, root_fields, c, c, "");
}

/* ---- reload -------------------------------------------------------------------------------- */

/* 1 when the scalar field <f> holds the same value in <a> and <b>. */
static int same_value(const struct field *f, const struct conf *a, const struct conf *b)
{
	const void *pa = member(f, a), *pb = member(f, b);

	switch (f->kind) {
	case F_STR: {
		const char *sa = *(char *const *)pa, *sb = *(char *const *)pb;
		return sa == sb || (sa && sb && !strcmp(sa, sb));
	}
	case F_ENUM: return *(const int *)pa == *(const int *)pb;
	case F_NUM: return *(const int64_t *)pa == *(const int64_t *)pb;
	default: return 1; /* lists, sections and custom keys are always reloadable */
	}
}

/* Copy non-reloadable keys of <fields> from <cur> into <next>, warning for each change. */
static int keep_fields(const struct field *fields, struct conf *next, const struct conf *cur,
		       struct evbuffer *warnings, const char *prefix)
{
	const struct field *f;
	char path[PATH_LEN], was[256], now[256];
	int kept = 0, rc;

	for (f = fields; f->key; f++) {
		path_join(path, sizeof(path), prefix, f->key);
		if (f->kind == F_SECTION) {
			if ((rc = keep_fields(f->sub, next, cur, warnings, path)) < 0)
				return rc;
			kept += rc;
			continue;
		}
		if (f->reloadable || same_value(f, next, cur))
			continue;
		format_field(f, cur, was, sizeof(was));
		format_field(f, next, now, sizeof(now));
		if (f->kind == F_STR) {
			char *dup = *(char *const *)member(f, cur) ? strdup(*(char *const *)member(f, cur)) : NULL;
			if (!dup && *(char *const *)member(f, cur))
				return -ENOMEM;
			free(*(char **)member(f, next));
			*(char **)member(f, next) = dup;
		} else if (f->kind == F_NUM) {
			*(int64_t *)member(f, next) = *(const int64_t *)member(f, cur);
		} else if (f->kind == F_ENUM) {
			*(int *)member(f, next) = *(const int *)member(f, cur);
		}
		if (warnings)
			evbuffer_add_printf(warnings, "%s: changed from %s to %s; a reload cannot apply it, "
					    "keeping %s until restart\n", path, was, now, was);
		kept++;
	}
	return kept;
}

int conf_keep_unreloadable(struct conf *next, const struct conf *cur, struct evbuffer *warnings)
{
	int kept = keep_fields(root_fields, next, cur, warnings, "");

	/* the upstream's parts are derived from upstream.url: keep them with it */
	if (kept > 0 && strcmp(next->upstream_url, cur->upstream_url) == 0 &&
	    (strcmp(next->upstream_host, cur->upstream_host) != 0 || next->upstream_port != cur->upstream_port ||
	     strcmp(next->upstream_path, cur->upstream_path) != 0)) {
		char *host = strdup(cur->upstream_host), *path = strdup(cur->upstream_path);
		if (!host || !path) {
			free(host);
			free(path);
			return -ENOMEM;
		}
		free(next->upstream_host);
		free(next->upstream_path);
		next->upstream_host = host;
		next->upstream_path = path;
		next->upstream_port = cur->upstream_port;
	}
	return kept;
}

struct conf *conf_ref(struct conf *c)
{
	if (c)
		c->refs++;
	return c;
}

void conf_unref(struct conf *c)
{
	if (c && --c->refs <= 0)
		conf_free(c);
}

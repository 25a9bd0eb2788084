/*
 * loadgen: remote-read load generator on libevent bufferevents.
 *
 *   loadgen --url http://127.0.0.1:PORT/api/v1/read --body FILE [options]
 *
 * Request mode (default): N keep-alive connections each POST <body> (a snappy ReadRequest) with
 * Prometheus' remote-read headers, read the whole response (Content-Length, chunked, or until
 * close) and send the next one: a closed loop. Runs for a fixed duration (-d, after a -w warmup
 * whose requests are not counted) or a fixed request count (-n). Every latency is kept (8 bytes
 * each) and sorted at the end, so the percentiles are exact.
 *
 * Stream mode (--stream): one connection, one request (or -n in sequence), for one long response;
 * reports the body's bytes per second from request sent to last byte, and the time to the first
 * byte. --slow-read BPS paces the reader to BPS body bytes per second (SO_RCVBUF shrunk to
 * --rcvbuf, reading paused between slices), which is what a slow client does to a proxy.
 * --check runs the body through proto/'s frame reader (CRC and framing); --save writes it out.
 *
 * The last line is machine-readable: `RESULT key=value ...` (bench/run.sh parses it).
 * Loopback and plain http:// only. Every run is bounded by -d / -n and --max-time.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "proxy/netaddr.h"
#include "proto/frame.h"

#define MAX_HEAD_BYTES (64 * 1024)   /* a response head larger than this is a parse error */
#define FAST_READ_BYTES (1 << 20)    /* bufferevent max single read when not pacing */
#define RECONNECT_DELAY_MS 10        /* after an error, before the connection is reopened */
#define DRAIN_GRACE_S 5.0            /* request mode: wait this long for in-flight requests at the end */
#define MAX_FRAME 50000000           /* --check: Prometheus' chunked_read_limit default */
#define EXTRA_READ_BYTES (1 << 20)   /* fast mode: read this much more per callback, see netaddr_read_burst() */

/* What the reader of one connection expects next. */
enum rd_state {
	RD_IDLE,        /* no request outstanding */
	RD_HEAD,        /* status line and headers */
	RD_BODY_LEN,    /* Content-Length body: <left> bytes */
	RD_BODY_EOF,    /* body until the server closes */
	RD_CHUNK_SIZE,  /* chunk-size line */
	RD_CHUNK_DATA,  /* <left> bytes of chunk data */
	RD_CHUNK_CRLF,  /* CRLF after chunk data */
	RD_TRAILER,     /* trailer lines until an empty one */
};

enum err_kind { ERR_CONNECT, ERR_STATUS, ERR_IO, ERR_TIMEOUT, ERR_PARSE, ERR_CHECK, ERR__N };
static const char *err_names[ERR__N] = {"connect", "status", "io", "timeout", "parse", "check"};

struct conn {
	struct bufferevent *bev;
	struct event *timer;           /* reconnect delay, or slow-read pause */
	int id;
	enum rd_state st;
	uint64_t left;                 /* bytes left in the current body piece */
	int status;                    /* status of the response being read */
	int close_after;               /* the server said Connection: close (or HTTP/1.0) */
	int paused;                    /* slow read: reading disabled until the timer */
	uint64_t t_sent;               /* ns: request queued */
	uint64_t t_first;              /* ns: first response byte */
	uint64_t body_bytes;           /* body bytes of the current response */
	struct proto_frame_reader *fr; /* --check */
};

static struct {
	/* options */
	char host[64];
	int port;
	char path[512];
	uint8_t *body;
	size_t body_len;
	int conns;
	double duration_s;
	double warmup_s;
	uint64_t max_requests;         /* 0: by duration */
	double timeout_s;
	double max_time_s;
	int stream;
	double slow_bps;
	int rcvbuf;
	int check;
	const char *save_path;
	const char *tenant;
	int quiet;
	/* state */
	struct event_base *base;
	struct conn *c;
	char *req_head;                /* prebuilt request head */
	size_t req_head_len;
	int stopping;                  /* no new requests */
	uint64_t t0, t_measure, t_stop, t_last_done;
	uint64_t issued, done_total;
	uint64_t measured;             /* completed inside the window */
	uint64_t errors[ERR__N];
	uint64_t wire_bytes, body_bytes;          /* inside the window */
	uint64_t *lat; size_t n_lat, cap_lat;     /* ns */
	uint64_t statuses[6];                     /* 1xx..5xx counts, [0] other */
	int last_status;
	FILE *save;
	uint64_t stream_ttfb, stream_dur;         /* ns, last streamed response */
	uint64_t frames, series, chunks;          /* --check totals */
	char last_err[256];
	struct event *stop_ev, *grace_ev, *sig_ev;
} g;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, const char *a)
{
	fprintf(stderr, "loadgen: ");
	fprintf(stderr, fmt, a);
	fprintf(stderr, "\n");
	exit(2);
}

static void conn_open(struct conn *c);
static void conn_send(struct conn *c);

static int in_window(uint64_t t)
{
	return t >= g.t_measure && (g.t_stop == 0 || t <= g.t_stop);
}

static void note_error(struct conn *c, enum err_kind k, const char *what)
{
	g.errors[k]++;
	snprintf(g.last_err, sizeof(g.last_err), "conn %d: %s: %s", c->id, err_names[k], what);
	if (!g.quiet && g.errors[k] <= 3)
		fprintf(stderr, "loadgen: %s\n", g.last_err);
}

/* Stop the loop once nothing is outstanding after the stop. */
static void maybe_finish(void)
{
	if (!g.stopping)
		return;
	for (int i = 0; i < g.conns; i++)
		if (g.c[i].st != RD_IDLE && g.c[i].bev)
			return;
	event_base_loopbreak(g.base);
}

static void begin_stop(void)
{
	struct timeval tv = {(time_t)DRAIN_GRACE_S, 0};

	if (g.stopping)
		return;
	g.stopping = 1;
	if (g.t_stop == 0)
		g.t_stop = now_ns();
	evtimer_add(g.grace_ev, &tv);
	maybe_finish();
}

static void conn_close(struct conn *c)
{
	if (c->bev)
		bufferevent_free(c->bev);
	c->bev = NULL;
	c->st = RD_IDLE;
	c->paused = 0;
	evtimer_del(c->timer);
}

/* Error: drop the connection, reopen it after a short delay unless stopping. */
static void conn_fail(struct conn *c, enum err_kind k, const char *what)
{
	struct timeval tv = {0, RECONNECT_DELAY_MS * 1000};

	note_error(c, k, what);
	conn_close(c);
	if (g.stream)
		begin_stop(); /* a stream run is one response: an error ends it */
	if (!g.stopping)
		evtimer_add(c->timer, &tv);
	maybe_finish();
}

/* A complete response. */
static void response_done(struct conn *c)
{
	uint64_t t = now_ns();
	int cls = c->status / 100;

	g.done_total++;
	g.last_status = c->status;
	g.statuses[cls >= 1 && cls <= 5 ? cls : 0]++;
	if (c->fr) {
		char err[256];
		size_t n;
		if (proto_frame_finish(c->fr, err, sizeof(err)) < 0) {
			note_error(c, ERR_CHECK, err);
		} else {
			const struct proto_frame_counts *fc = proto_frame_results(c->fr, &n);
			for (size_t i = 0; i < n; i++) {
				g.frames += fc[i].frames;
				g.series += fc[i].series;
				g.chunks += fc[i].chunks;
			}
		}
		proto_frame_reader_free(c->fr);
		c->fr = NULL;
	}
	if (c->status < 200 || c->status > 299) {
		char s[16];
		snprintf(s, sizeof(s), "HTTP %d", c->status);
		note_error(c, ERR_STATUS, s);
	} else if (in_window(c->t_sent)) {
		g.measured++;
		g.t_last_done = t;
		if (g.n_lat == g.cap_lat) {
			g.cap_lat = g.cap_lat ? g.cap_lat * 2 : 65536;
			g.lat = realloc(g.lat, g.cap_lat * sizeof(*g.lat));
			if (!g.lat)
				die("%s", "out of memory");
		}
		g.lat[g.n_lat++] = t - c->t_sent;
	}
	if (g.stream) {
		g.stream_ttfb = c->t_first - c->t_sent;
		g.stream_dur = t - c->t_sent;
	}
	c->st = RD_IDLE;
	if (g.max_requests && g.done_total + g.errors[ERR_CONNECT] + g.errors[ERR_IO] + g.errors[ERR_TIMEOUT] +
	    g.errors[ERR_PARSE] >= g.max_requests)
		begin_stop();
	if (c->close_after) {
		conn_close(c);
		if (!g.stopping)
			conn_open(c);
	} else if (!g.stopping) {
		conn_send(c);
	}
	maybe_finish();
}

/* Body bytes: count, check, save, then drop them. */
static void consume(struct conn *c, struct evbuffer *in, size_t n)
{
	if (n == 0)
		return;
	c->body_bytes += n;
	if (in_window(c->t_sent))
		g.body_bytes += n;
	if (c->fr || g.save) {
		struct evbuffer_iovec v[64];
		struct evbuffer_ptr p;
		size_t seen = 0;
		evbuffer_ptr_set(in, &p, 0, EVBUFFER_PTR_SET);
		while (seen < n) {
			int k = evbuffer_peek(in, (ev_ssize_t)(n - seen), &p, v, 64);
			if (k <= 0)
				break;
			for (int i = 0; i < k && i < 64 && seen < n; i++) {
				size_t len = v[i].iov_len < n - seen ? v[i].iov_len : n - seen;
				char err[256];
				if (c->fr && proto_frame_feed(c->fr, v[i].iov_base, len, err, sizeof(err)) < 0) {
					note_error(c, ERR_CHECK, err);
					proto_frame_reader_free(c->fr);
					c->fr = NULL;
				}
				if (g.save && fwrite(v[i].iov_base, 1, len, g.save) != len)
					die("--save: %s", strerror(errno));
				seen += len;
			}
			evbuffer_ptr_set(in, &p, seen, EVBUFFER_PTR_SET);
		}
	}
	evbuffer_drain(in, n);
}

/* Parse the head at the front of <in>. 1 done, 0 need more, -1 bad. */
static int parse_head(struct conn *c, struct evbuffer *in)
{
	struct evbuffer_ptr e = evbuffer_search(in, "\r\n\r\n", 4, NULL);
	size_t hlen;
	char *h, *line, *save = NULL;
	int minor = 1, chunked = 0, have_len = 0;
	uint64_t clen = 0;

	if (e.pos < 0)
		return evbuffer_get_length(in) > MAX_HEAD_BYTES ? -1 : 0;
	hlen = (size_t)e.pos + 4;
	h = malloc(hlen + 1);
	if (!h)
		return -1;
	evbuffer_remove(in, h, hlen);
	h[hlen] = 0;
	line = strtok_r(h, "\r\n", &save);
	if (!line || sscanf(line, "HTTP/1.%d %d", &minor, &c->status) != 2) {
		free(h);
		return -1;
	}
	c->close_after = minor == 0;
	while ((line = strtok_r(NULL, "\r\n", &save))) {
		char *v = strchr(line, ':');
		if (!v)
			continue;
		*v++ = 0;
		while (*v == ' ' || *v == '\t')
			v++;
		if (!strcasecmp(line, "Content-Length")) {
			clen = strtoull(v, NULL, 10);
			have_len = 1;
		} else if (!strcasecmp(line, "Transfer-Encoding") && strcasestr(v, "chunked")) {
			chunked = 1;
		} else if (!strcasecmp(line, "Connection")) {
			if (strcasestr(v, "close"))
				c->close_after = 1;
			else if (strcasestr(v, "keep-alive"))
				c->close_after = 0;
		}
	}
	free(h);
	if (chunked) {
		c->st = RD_CHUNK_SIZE;
	} else if (have_len) {
		c->st = RD_BODY_LEN;
		c->left = clen;
	} else {
		c->st = RD_BODY_EOF;
		c->close_after = 1;
	}
	if (g.check && c->status >= 200 && c->status <= 299)
		c->fr = proto_frame_reader_new(MAX_FRAME, 64);
	return 1;
}

/* Run the response state machine over what has arrived. Returns -1 when <c> was closed. */
static int process(struct conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);

	for (;;) {
		size_t avail = evbuffer_get_length(in), n;
		char *line;
		size_t llen;

		switch (c->st) {
		case RD_IDLE:
			if (avail) {
				conn_fail(c, ERR_PARSE, "bytes without a request");
				return -1;
			}
			return 0;
		case RD_HEAD: {
			int rc = parse_head(c, in);
			if (rc < 0) {
				conn_fail(c, ERR_PARSE, "bad response head");
				return -1;
			}
			if (rc == 0)
				return 0;
			if (c->st == RD_BODY_LEN && c->left == 0) {
				response_done(c);
				return c->bev ? 0 : -1;
			}
			break;
		}
		case RD_BODY_LEN:
			n = avail < c->left ? avail : (size_t)c->left;
			if (n == 0)
				return 0;
			consume(c, in, n);
			c->left -= n;
			if (c->left == 0) {
				response_done(c);
				if (!c->bev)
					return -1;
				if (c->st == RD_IDLE)
					return 0;
			}
			break;
		case RD_BODY_EOF:
			consume(c, in, avail);
			return 0;
		case RD_CHUNK_SIZE:
			line = evbuffer_readln(in, &llen, EVBUFFER_EOL_CRLF);
			if (!line) {
				if (avail > 1024) {
					conn_fail(c, ERR_PARSE, "chunk size line too long");
					return -1;
				}
				return 0;
			}
			{
				char *end;
				errno = 0;
				c->left = strtoull(line, &end, 16);
				int bad = end == line || errno;
				free(line);
				if (bad) {
					conn_fail(c, ERR_PARSE, "bad chunk size");
					return -1;
				}
			}
			c->st = c->left ? RD_CHUNK_DATA : RD_TRAILER;
			break;
		case RD_CHUNK_DATA:
			n = avail < c->left ? avail : (size_t)c->left;
			if (n == 0)
				return 0;
			consume(c, in, n);
			c->left -= n;
			if (c->left == 0)
				c->st = RD_CHUNK_CRLF;
			break;
		case RD_CHUNK_CRLF: {
			char crlf[2];
			if (avail < 2)
				return 0;
			evbuffer_remove(in, crlf, 2);
			if (crlf[0] != '\r' || crlf[1] != '\n') {
				conn_fail(c, ERR_PARSE, "no CRLF after chunk data");
				return -1;
			}
			c->st = RD_CHUNK_SIZE;
			break;
		}
		case RD_TRAILER:
			line = evbuffer_readln(in, &llen, EVBUFFER_EOL_CRLF);
			if (!line)
				return 0;
			free(line);
			if (llen == 0) {
				response_done(c);
				if (!c->bev)
					return -1;
				if (c->st == RD_IDLE)
					return 0;
			}
			break;
		}
	}
}

/* Slow read: pause when ahead of the allowed rate, resume from the timer. */
static void pace(struct conn *c)
{
	double elapsed, allowed, ahead;
	struct timeval tv;

	if (g.slow_bps <= 0 || !c->t_first || c->st == RD_IDLE)
		return;
	elapsed = (double)(now_ns() - c->t_first) / 1e9;
	allowed = g.slow_bps * elapsed;
	ahead = (double)c->body_bytes - allowed;
	if (ahead <= 0)
		return;
	ahead /= g.slow_bps; /* seconds */
	tv.tv_sec = (time_t)ahead;
	tv.tv_usec = (suseconds_t)((ahead - (double)tv.tv_sec) * 1e6);
	bufferevent_disable(c->bev, EV_READ);
	c->paused = 1;
	evtimer_add(c->timer, &tv);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t before;
	int count = in_window(c->t_sent);

	if (g.slow_bps <= 0 && c->st != RD_IDLE)
		netaddr_read_burst(bev, EXTRA_READ_BYTES); /* past libevent 2.1's 4 KiB reads */
	before = evbuffer_get_length(in);

	if (c->st != RD_IDLE && !c->t_first)
		c->t_first = now_ns();
	if (process(c) < 0) {
		if (count)
			g.wire_bytes += before; /* the connection and its input are gone */
		return;
	}
	if (count)
		g.wire_bytes += before - evbuffer_get_length(in);
	pace(c);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	(void)bev;
	if (what & BEV_EVENT_CONNECTED) {
		int one = 1;
		setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		conn_fail(c, ERR_TIMEOUT, "no data within the timeout");
		return;
	}
	if (what & BEV_EVENT_EOF) {
		if (c->st == RD_BODY_EOF) {
			response_done(c);
			if (c->bev) {
				conn_close(c);
				if (!g.stopping)
					conn_open(c);
			}
			maybe_finish();
			return;
		}
		if (c->st == RD_IDLE) {
			/* keep-alive connection closed by the server between requests */
			conn_close(c);
			if (!g.stopping)
				conn_open(c);
			return;
		}
		conn_fail(c, ERR_IO, "connection closed mid-response");
		return;
	}
	if (what & BEV_EVENT_ERROR) {
		int e = EVUTIL_SOCKET_ERROR();
		conn_fail(c, c->t_first || c->st == RD_IDLE ? ERR_IO : ERR_CONNECT, evutil_socket_error_to_string(e));
	}
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	(void)fd;
	(void)what;
	if (c->paused) {
		c->paused = 0;
		bufferevent_enable(c->bev, EV_READ);
		if (process(c) < 0)
			return;
		pace(c);
		return;
	}
	if (!g.stopping && !c->bev)
		conn_open(c);
}

/* Queue one request on an open connection. */
static void conn_send(struct conn *c)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);

	if (g.max_requests && g.issued >= g.max_requests)
		return;
	g.issued++;
	c->st = RD_HEAD;
	c->status = 0;
	c->t_first = 0;
	c->body_bytes = 0;
	c->t_sent = now_ns();
	evbuffer_add_reference(out, g.req_head, g.req_head_len, NULL, NULL);
	evbuffer_add_reference(out, g.body, g.body_len, NULL, NULL);
}

static void conn_open(struct conn *c)
{
	struct sockaddr_in sin;
	struct timeval tmo;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)g.port);
	inet_pton(AF_INET, g.host, &sin.sin_addr);
	c->bev = bufferevent_socket_new(g.base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev)
		die("%s", "out of memory");
	bufferevent_setcb(c->bev, read_cb, NULL, event_cb, c);
	if (g.slow_bps > 0) {
		/* small reads, so pacing is smooth and the kernel queue stays small */
		double slice = g.slow_bps / 100;
		bufferevent_set_max_single_read(c->bev, slice < 4096 ? 4096 : slice > 65536 ? 65536 : (size_t)slice);
	} else {
		bufferevent_set_max_single_read(c->bev, FAST_READ_BYTES);
	}
	tmo.tv_sec = (time_t)g.timeout_s;
	tmo.tv_usec = (suseconds_t)((g.timeout_s - (double)tmo.tv_sec) * 1e6);
	bufferevent_set_timeouts(c->bev, &tmo, &tmo);
	if (g.rcvbuf > 0) {
		/* SO_RCVBUF must be set before connect() to bound the window */
		evutil_socket_t fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0)
			die("socket: %s", strerror(errno));
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &g.rcvbuf, sizeof(g.rcvbuf));
		evutil_make_socket_nonblocking(fd);
		bufferevent_setfd(c->bev, fd);
	}
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
		conn_fail(c, ERR_CONNECT, "connect failed");
		return;
	}
	conn_send(c);
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	begin_stop();
}

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	event_base_loopbreak(g.base);
}

static void sig_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	g.t_stop = now_ns();
	begin_stop();
	event_base_loopbreak(g.base);
}

static void measure_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	g.t_measure = now_ns();
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Percentile <p> (0..1) of the sorted latencies, in ms (nearest rank). */
static double pct_ms(double p)
{
	size_t i;

	if (g.n_lat == 0)
		return NAN;
	i = (size_t)ceil(p * (double)g.n_lat);
	if (i > 0)
		i--;
	if (i >= g.n_lat)
		i = g.n_lat - 1;
	return (double)g.lat[i] / 1e6;
}

static void load_body(const char *path)
{
	FILE *f = fopen(path, "rb");
	struct stat sb;

	if (!f || fstat(fileno(f), &sb) < 0)
		die("--body: cannot open %s", path);
	g.body_len = (size_t)sb.st_size;
	g.body = malloc(g.body_len ? g.body_len : 1);
	if (!g.body || fread(g.body, 1, g.body_len, f) != g.body_len)
		die("--body: cannot read %s", path);
	fclose(f);
}

static void parse_url(const char *url)
{
	const char *p, *slash, *colon;

	if (strncmp(url, "http://", 7))
		die("--url must be http://HOST:PORT/PATH, got %s", url);
	p = url + 7;
	slash = strchr(p, '/');
	if (!slash)
		slash = p + strlen(p);
	colon = memchr(p, ':', (size_t)(slash - p));
	if (!colon || (size_t)(colon - p) >= sizeof(g.host))
		die("--url needs an explicit IPv4 host and port: %s", url);
	snprintf(g.host, sizeof(g.host), "%.*s", (int)(colon - p), p);
	g.port = atoi(colon + 1);
	snprintf(g.path, sizeof(g.path), "%s", *slash ? slash : "/");
	struct in_addr a;
	if (inet_pton(AF_INET, g.host, &a) != 1 || g.port <= 0 || g.port > 65535)
		die("--url host must be an IPv4 address: %s", url);
	if ((ntohl(a.s_addr) >> 24) != 127)
		die("refusing a non-loopback target: %s", url);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: loadgen --url http://127.0.0.1:PORT/api/v1/read --body FILE [options]\n"
		"  -c N              connections (request mode; default 32)\n"
		"  -d SECONDS        measured duration (default 10); -w SECONDS warmup before it (default 1)\n"
		"  -n COUNT          stop after COUNT requests instead (no warmup)\n"
		"  --timeout S       per-read inactivity timeout (default 30; stream mode 120)\n"
		"  --max-time S      hard cap on the whole run (default 600)\n"
		"  --tenant NAME     send X-Scope-OrgID: NAME\n"
		"  --stream          one connection, one long response (or -n in sequence): body bytes/s\n"
		"  --slow-read BPS   read the body at BPS bytes/s (suffixes k, M: 1000-based)\n"
		"  --rcvbuf BYTES    SO_RCVBUF of the client socket (default 65536 with --slow-read)\n"
		"  --check           verify the STREAMED_XOR_CHUNKS framing and CRCs of each response\n"
		"  --save FILE       write the (de-chunked) body of the responses to FILE\n"
		"  -q                no progress or error lines on stderr\n");
	exit(2);
}

static double parse_rate(const char *s)
{
	char *end;
	double v = strtod(s, &end);

	if (*end == 'k' || *end == 'K')
		v *= 1e3;
	else if (*end == 'M')
		v *= 1e6;
	else if (*end == 'G')
		v *= 1e9;
	return v;
}

int main(int argc, char **argv)
{
	const char *url = NULL, *body = NULL;
	int have_timeout = 0;
	uint64_t err_total = 0;
	double window;
	struct timeval tv;

	g.conns = 32;
	g.duration_s = 10;
	g.warmup_s = 1;
	g.timeout_s = 30;
	g.max_time_s = 600;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && v && (i++, 1))
		if (ARG("--url"))
			url = v;
		else if (ARG("--body"))
			body = v;
		else if (ARG("-c"))
			g.conns = atoi(v);
		else if (ARG("-d"))
			g.duration_s = atof(v);
		else if (ARG("-w"))
			g.warmup_s = atof(v);
		else if (ARG("-n"))
			g.max_requests = strtoull(v, NULL, 10);
		else if (ARG("--timeout"))
			g.timeout_s = atof(v), have_timeout = 1;
		else if (ARG("--max-time"))
			g.max_time_s = atof(v);
		else if (ARG("--tenant"))
			g.tenant = v;
		else if (ARG("--slow-read"))
			g.slow_bps = parse_rate(v);
		else if (ARG("--rcvbuf"))
			g.rcvbuf = atoi(v);
		else if (ARG("--save"))
			g.save_path = v;
		else if (!strcmp(a, "--stream"))
			g.stream = 1;
		else if (!strcmp(a, "--check"))
			g.check = 1;
		else if (!strcmp(a, "-q"))
			g.quiet = 1;
		else
			usage();
#undef ARG
	}
	if (!url || !body || g.conns < 1 || g.conns > 10000 || g.timeout_s <= 0 || g.max_time_s <= 0)
		usage();
	parse_url(url);
	load_body(body);
	if (g.stream) {
		g.conns = 1;
		g.warmup_s = 0;
		if (!g.max_requests)
			g.max_requests = 1;
		if (!have_timeout)
			g.timeout_s = 120;
	}
	if (g.max_requests)
		g.warmup_s = 0;
	if (g.slow_bps > 0 && g.rcvbuf == 0)
		g.rcvbuf = 65536;
	if (g.save_path && !(g.save = fopen(g.save_path, "wb")))
		die("--save: cannot open %s", g.save_path);

	/* the request head: Prometheus' remote-read headers (protocol.md section 2.2) */
	g.req_head = malloc(1024 + strlen(g.path) + (g.tenant ? strlen(g.tenant) : 0));
	g.req_head_len = (size_t)sprintf(g.req_head,
					 "POST %s HTTP/1.1\r\n"
					 "Host: %s:%d\r\n"
					 "Content-Encoding: snappy\r\n"
					 "Accept-Encoding: snappy\r\n"
					 "Content-Type: application/x-protobuf\r\n"
					 "User-Agent: Prometheus/2.42.0+ds\r\n"
					 "X-Prometheus-Remote-Read-Version: 0.1.0\r\n"
					 "%s%s%s"
					 "Content-Length: %zu\r\n\r\n",
					 g.path, g.host, g.port, g.tenant ? "X-Scope-OrgID: " : "",
					 g.tenant ? g.tenant : "", g.tenant ? "\r\n" : "", g.body_len);

	signal(SIGPIPE, SIG_IGN);
	g.base = event_base_new();
	g.c = calloc((size_t)g.conns, sizeof(*g.c));
	if (!g.base || !g.c)
		die("%s", "out of memory");
	g.grace_ev = evtimer_new(g.base, grace_cb, NULL);
	g.sig_ev = evsignal_new(g.base, SIGINT, sig_cb, NULL);
	evsignal_add(g.sig_ev, NULL);
	g.t0 = now_ns();
	g.t_measure = g.t0 + (uint64_t)(g.warmup_s * 1e9);
	if (g.warmup_s > 0) {
		struct event *m = evtimer_new(g.base, measure_cb, NULL);
		tv.tv_sec = (time_t)g.warmup_s;
		tv.tv_usec = (suseconds_t)((g.warmup_s - (double)tv.tv_sec) * 1e6);
		evtimer_add(m, &tv);
	}
	/* the run ends at warmup + duration (request mode), or at --max-time in any case */
	double end_s = g.max_requests ? g.max_time_s : g.warmup_s + g.duration_s;
	if (end_s > g.max_time_s)
		end_s = g.max_time_s;
	g.stop_ev = evtimer_new(g.base, stop_cb, NULL);
	tv.tv_sec = (time_t)end_s;
	tv.tv_usec = (suseconds_t)((end_s - (double)tv.tv_sec) * 1e6);
	evtimer_add(g.stop_ev, &tv);

	for (int i = 0; i < g.conns; i++) {
		g.c[i].id = i;
		g.c[i].timer = evtimer_new(g.base, timer_cb, &g.c[i]);
		conn_open(&g.c[i]);
	}
	event_base_dispatch(g.base);
	if (!g.t_stop)
		g.t_stop = now_ns();

	/* results */
	for (int k = 0; k < ERR__N; k++)
		err_total += g.errors[k];
	qsort(g.lat, g.n_lat, sizeof(*g.lat), cmp_u64);
	window = (double)(g.t_stop - g.t_measure) / 1e9;
	if (g.max_requests && g.t_last_done)
		window = (double)(g.t_last_done - g.t_measure) / 1e9;
	if (window <= 0)
		window = 1e-9;
	if (g.stream) {
		double secs = (double)g.stream_dur / 1e9;
		double bps = secs > 0 ? (double)g.body_bytes / secs : 0;
		printf("stream       HTTP %d, %" PRIu64 " body bytes in %.3f s = %.1f MB/s (%.3f GB/s), first byte after %.2f ms\n",
		       g.last_status, g.body_bytes, secs, bps / 1e6, bps / 1e9, (double)g.stream_ttfb / 1e6);
		if (g.check)
			printf("check        %" PRIu64 " frames, %" PRIu64 " series, %" PRIu64 " chunks\n", g.frames,
			       g.series, g.chunks);
		printf("errors       %" PRIu64 "%s%s\n", err_total, err_total ? ", last: " : "", err_total ? g.last_err : "");
		printf("RESULT mode=stream status=%d requests=%" PRIu64 " body_bytes=%" PRIu64
		       " seconds=%.4f bytes_per_s=%.0f ttfb_ms=%.3f frames=%" PRIu64 " series=%" PRIu64
		       " errors=%" PRIu64 "\n",
		       g.last_status, g.measured, g.body_bytes, secs, bps, (double)g.stream_ttfb / 1e6, g.frames,
		       g.series, err_total);
	} else {
		printf("target       http://%s:%d%s, %d connections, %.1f s measured after %.1f s warmup, body %zu bytes\n",
		       g.host, g.port, g.path, g.conns, window, g.warmup_s, g.body_len);
		printf("requests     %" PRIu64 " ok in window (%.1f/s); %" PRIu64 " completed in all\n", g.measured,
		       (double)g.measured / window, g.done_total);
		printf("errors       %" PRIu64, err_total);
		for (int k = 0; k < ERR__N; k++)
			if (g.errors[k])
				printf(" %s=%" PRIu64, err_names[k], g.errors[k]);
		printf("%s%s\n", err_total ? ", last: " : "", err_total ? g.last_err : "");
		printf("latency      p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, max %.3f ms\n", pct_ms(0.5),
		       pct_ms(0.9), pct_ms(0.99), pct_ms(0.999), pct_ms(1.0));
		printf("throughput   %.2f MB/s on the wire, %.2f MB/s of body\n", (double)g.wire_bytes / window / 1e6,
		       (double)g.body_bytes / window / 1e6);
		printf("RESULT mode=rps conns=%d seconds=%.3f requests=%" PRIu64 " rps=%.1f p50_ms=%.4f p90_ms=%.4f"
		       " p99_ms=%.4f p999_ms=%.4f max_ms=%.4f errors=%" PRIu64 " bytes_per_s=%.0f body_bytes_per_s=%.0f\n",
		       g.conns, window, g.measured, (double)g.measured / window, pct_ms(0.5), pct_ms(0.9), pct_ms(0.99),
		       pct_ms(0.999), pct_ms(1.0), err_total, (double)g.wire_bytes / window,
		       (double)g.body_bytes / window);
	}
	if (g.save)
		fclose(g.save);
	for (int i = 0; i < g.conns; i++) {
		conn_close(&g.c[i]);
		proto_frame_reader_free(g.c[i].fr);
		event_free(g.c[i].timer);
	}
	event_free(g.stop_ev);
	event_free(g.grace_ev);
	event_free(g.sig_ev);
	event_base_free(g.base);
	free(g.c);
	free(g.lat);
	free(g.body);
	free(g.req_head);
	return err_total && !g.measured ? 1 : 0;
}

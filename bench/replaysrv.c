/*
 * replaysrv: a remote-read "store" that answers every POST with a saved response body, at
 * memory speed. It exists because the integration fake store builds each stream frame byte by
 * byte (about 0.1-0.3 GB/s here), too slow to show whether the proxy relays at 1 GB/s.
 *
 *   replaysrv --listen 127.0.0.1:0 --body FILE --mode samples|stream [--repeat N]
 *
 * samples: FILE is a snappy ReadResponse (saved with `loadgen --save` from the fake store); it is
 *          sent with Content-Length, as Go does for small bodies.
 * stream:  FILE is a STREAMED_XOR_CHUNKS body (frames of uvarint length, CRC-32C, message), saved
 *          the same way. It is sent <repeat> times over as one chunked response, one HTTP chunk per
 *          frame as Prometheus 2.42 does, straight from memory (evbuffer references, no copies).
 *          The output is refilled whenever it drains below 1 MiB, so the socket never idles.
 *
 * Prints `listening on 127.0.0.1:<port>`. The request is read and ignored. Loopback only.
 */
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#define OUT_LOW (1 << 20)         /* refill the output below this */
#define OUT_FILL (4 << 20)        /* ...up to this */
#define MAX_HEAD (64 * 1024)
#define MAX_FRAMES (1 << 20)

struct frame {
	size_t off;   /* start of the frame (its length varint) in the body */
	size_t len;   /* whole frame: varint, CRC and message */
	char hdr[16]; /* "<hex len>\r\n" */
	size_t hdr_len;
};

struct conn {
	struct bufferevent *bev;
	int have_head;
	size_t clen;     /* request Content-Length */
	int streaming;
	size_t next;     /* next frame to send */
	uint64_t round;  /* repetitions done */
};

static struct {
	struct event_base *base;
	uint8_t *body;
	size_t body_len;
	int stream;
	uint64_t repeat;
	struct frame *frames;
	size_t n_frames;
} g;

static void die(const char *what)
{
	fprintf(stderr, "replaysrv: %s\n", what);
	exit(2);
}

/* Split the stream body into frames (their lengths must add up to the file). */
static void index_frames(void)
{
	size_t p = 0;

	g.frames = calloc(MAX_FRAMES, sizeof(*g.frames));
	if (!g.frames)
		die("out of memory");
	while (p < g.body_len) {
		uint64_t len = 0;
		size_t start = p;
		int shift = 0;
		for (;;) {
			if (p >= g.body_len || shift > 63)
				die("bad frame length varint");
			uint8_t b = g.body[p++];
			len |= (uint64_t)(b & 0x7f) << shift;
			shift += 7;
			if (!(b & 0x80))
				break;
		}
		if (len > g.body_len - p || g.body_len - p - len < 4)
			die("frame runs past the end of the file");
		p += 4 + len;
		if (g.n_frames == MAX_FRAMES)
			die("too many frames");
		struct frame *f = &g.frames[g.n_frames++];
		f->off = start;
		f->len = p - start;
		f->hdr_len = (size_t)snprintf(f->hdr, sizeof(f->hdr), "%zx\r\n", f->len);
	}
	if (g.n_frames == 0)
		die("no frames in the stream body");
}

static void conn_free(struct conn *c)
{
	bufferevent_free(c->bev);
	free(c);
}

static void fill(struct conn *c)
{
	struct evbuffer *o = bufferevent_get_output(c->bev);

	while (c->streaming && evbuffer_get_length(o) < OUT_FILL) {
		if (c->next == g.n_frames) {
			c->next = 0;
			if (++c->round == g.repeat) {
				evbuffer_add(o, "0\r\n\r\n", 5);
				c->streaming = 0;
				break;
			}
		}
		const struct frame *f = &g.frames[c->next++];
		evbuffer_add(o, f->hdr, f->hdr_len);
		evbuffer_add_reference(o, g.body + f->off, f->len, NULL, NULL);
		evbuffer_add(o, "\r\n", 2);
	}
}

static void respond(struct conn *c)
{
	struct evbuffer *o = bufferevent_get_output(c->bev);

	if (!g.stream) {
		evbuffer_add_printf(o,
				    "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
				    "Content-Encoding: snappy\r\nContent-Length: %zu\r\n\r\n",
				    g.body_len);
		evbuffer_add_reference(o, g.body, g.body_len, NULL, NULL);
		return;
	}
	evbuffer_add_printf(o, "HTTP/1.1 200 OK\r\n"
			       "Content-Type: application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse\r\n"
			       "Transfer-Encoding: chunked\r\n\r\n");
	c->streaming = 1;
	c->next = 0;
	c->round = 0;
	fill(c);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	for (;;) {
		if (c->streaming)
			return; /* one response at a time; the next request waits in the buffer */
		if (!c->have_head) {
			struct evbuffer_ptr e = evbuffer_search(in, "\r\n\r\n", 4, NULL);
			if (e.pos < 0) {
				if (evbuffer_get_length(in) > MAX_HEAD)
					conn_free(c);
				return;
			}
			size_t hlen = (size_t)e.pos + 4;
			char *h = malloc(hlen + 1);
			if (!h)
				die("out of memory");
			evbuffer_remove(in, h, hlen);
			h[hlen] = 0;
			char *cl = strcasestr(h, "\r\ncontent-length:");
			c->clen = cl ? strtoul(cl + 17, NULL, 10) : 0;
			free(h);
			c->have_head = 1;
		}
		if (evbuffer_get_length(in) < c->clen)
			return;
		evbuffer_drain(in, c->clen);
		c->have_head = 0;
		respond(c);
	}
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	(void)bev;
	if (c->streaming) {
		fill(c);
		return;
	}
	read_cb(c->bev, c); /* a request that waited behind a stream */
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		conn_free(arg);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	struct conn *c = calloc(1, sizeof(*c));

	(void)l;
	(void)sa;
	(void)salen;
	(void)arg;
	if (!c) {
		close(fd);
		return;
	}
	c->bev = bufferevent_socket_new(g.base, fd, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW, 0);
	bufferevent_set_max_single_write(c->bev, OUT_FILL);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void sig_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	event_base_loopbreak(g.base);
}

static void usage(void)
{
	fprintf(stderr, "usage: replaysrv --listen 127.0.0.1:PORT --body FILE --mode samples|stream [--repeat N]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *listen_arg = "127.0.0.1:0", *body = NULL, *mode = NULL;
	struct sockaddr_in sin, bound;
	socklen_t blen = sizeof(bound);
	struct stat sb;
	FILE *f;

	g.repeat = 1;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--listen") && i + 1 < argc)
			listen_arg = argv[++i];
		else if (!strcmp(argv[i], "--body") && i + 1 < argc)
			body = argv[++i];
		else if (!strcmp(argv[i], "--mode") && i + 1 < argc)
			mode = argv[++i];
		else if (!strcmp(argv[i], "--repeat") && i + 1 < argc)
			g.repeat = strtoull(argv[++i], NULL, 10);
		else
			usage();
	}
	if (!body || !mode || g.repeat < 1)
		usage();
	g.stream = !strcmp(mode, "stream");
	if (!g.stream && strcmp(mode, "samples"))
		usage();
	f = fopen(body, "rb");
	if (!f || fstat(fileno(f), &sb) < 0)
		die("cannot open --body");
	g.body_len = (size_t)sb.st_size;
	g.body = malloc(g.body_len ? g.body_len : 1);
	if (!g.body || fread(g.body, 1, g.body_len, f) != g.body_len)
		die("cannot read --body");
	fclose(f);
	if (g.stream)
		index_frames();

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	const char *colon = strrchr(listen_arg, ':');
	if (!colon || strncmp(listen_arg, "127.", 4))
		die("--listen must be a loopback 127.x.y.z:PORT");
	char host[64];
	snprintf(host, sizeof(host), "%.*s", (int)(colon - listen_arg), listen_arg);
	sin.sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &sin.sin_addr) != 1)
		usage();

	signal(SIGPIPE, SIG_IGN);
	g.base = event_base_new();
	struct evconnlistener *l = evconnlistener_new_bind(g.base, accept_cb, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
							   128, (struct sockaddr *)&sin, sizeof(sin));
	if (!l) {
		fprintf(stderr, "replaysrv: cannot listen on %s: %s\n", listen_arg, strerror(errno));
		return 1;
	}
	getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&bound, &blen);
	printf("listening on %s:%u\n", host, ntohs(bound.sin_port));
	fflush(stdout);
	struct event *st = evsignal_new(g.base, SIGTERM, sig_cb, NULL), *si = evsignal_new(g.base, SIGINT, sig_cb, NULL);
	evsignal_add(st, NULL);
	evsignal_add(si, NULL);
	event_base_dispatch(g.base);
	event_free(st);
	event_free(si);
	evconnlistener_free(l);
	event_base_free(g.base);
	free(g.frames);
	free(g.body);
	return 0;
}

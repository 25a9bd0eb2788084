/* netaddr: "host:port" parsing and socket address printing (see netaddr.h). */
#include "proxy/netaddr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

int netaddr_split(const char *hostport, char *host, size_t hostlen, int *port)
{
	const char *colon, *h = hostport;
	size_t hl;
	char *end;
	long p;

	if (*h == '[') {
		const char *rb = strchr(h, ']');
		if (!rb || rb[1] != ':')
			return -EINVAL;
		h++;
		hl = (size_t)(rb - h);
		colon = rb + 1;
	} else {
		colon = strrchr(h, ':');
		if (!colon)
			return -EINVAL;
		hl = (size_t)(colon - h);
		if (memchr(h, ':', hl))
			return -EINVAL; /* bare IPv6 needs brackets */
	}
	if (hl == 0 || hl >= hostlen)
		return -EINVAL;
	errno = 0;
	p = strtol(colon + 1, &end, 10);
	if (errno || end == colon + 1 || *end || p < 0 || p > 65535)
		return -EINVAL;
	memcpy(host, h, hl);
	host[hl] = '\0';
	*port = (int)p;
	return 0;
}

int netaddr_parse(const char *hostport, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[256], port[8];
	struct addrinfo hints, *res = NULL;
	int p;

	if (netaddr_split(hostport, host, sizeof(host), &p) < 0)
		return -EINVAL;
	snprintf(port, sizeof(port), "%d", p);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
	if (getaddrinfo(host, port, &hints, &res) != 0 || !res) {
		/* AI_ADDRCONFIG hides loopback-only families on hosts without a routable address */
		hints.ai_flags = AI_NUMERICSERV;
		if (res)
			freeaddrinfo(res);
		res = NULL;
		if (getaddrinfo(host, port, &hints, &res) != 0 || !res)
			return -ENOENT;
	}
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

const char *netaddr_format(const struct sockaddr *sa, char *buf, size_t n)
{
	char ip[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
		snprintf(buf, n, "%s:%d", ip, ntohs(in->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
		snprintf(buf, n, "[%s]:%d", ip, ntohs(in6->sin6_port));
	} else {
		snprintf(buf, n, "unknown");
	}
	return buf;
}

void netaddr_tune_socket(int fd)
{
	int one = 1;

	if (fd >= 0)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/*
 * Reservation per readv. libevent rounds a chain's allocation (payload + its header) up to a
 * power of two, so asking for a round 64 KiB would malloc 128 KiB and hold every body twice over;
 * leaving room for the header keeps each chain one 64 KiB block.
 */
#define READ_IOVEC (64 * 1024 - 256)

void netaddr_read_burst(struct bufferevent *bev, size_t max)
{
	struct evbuffer *in = bufferevent_get_input(bev);
	evutil_socket_t fd = bufferevent_getfd(bev);
	size_t got = 0;

	while (got < max) {
		struct evbuffer_iovec v[2];
		ssize_t r;
		int n;

		evbuffer_unfreeze(in, 0);
		n = evbuffer_reserve_space(in, READ_IOVEC, v, 2);
		if (n <= 0) {
			evbuffer_freeze(in, 0);
			return;
		}
		r = readv(fd, (struct iovec *)v, n);
		if (r <= 0) {
			evbuffer_commit_space(in, v, 0);
			evbuffer_freeze(in, 0);
			return;
		}
		size_t left = (size_t)r;
		for (int i = 0; i < n; i++) {
			if (v[i].iov_len > left)
				v[i].iov_len = left;
			left -= v[i].iov_len;
		}
		evbuffer_commit_space(in, v, n);
		evbuffer_freeze(in, 0);
		got += (size_t)r;
		if ((size_t)r < READ_IOVEC)
			return; /* the socket is drained */
	}
}

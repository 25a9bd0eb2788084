/* netaddr: "host:port" parsing and socket address printing, shared by listeners and upstream. */
#ifndef PROMGUARD_NETADDR_H
#define PROMGUARD_NETADDR_H

#include <stddef.h>
#include <sys/socket.h>

/*
 * Resolve <hostport> ("127.0.0.1:9201", "[::1]:9201", "localhost:9201") into <ss>/<len>,
 * numeric hosts without DNS. Blocking (getaddrinfo): call at start-up or reload only.
 * Returns 0, or -EINVAL for a malformed string, -ENOENT when the name does not resolve.
 */
int netaddr_parse(const char *hostport, struct sockaddr_storage *ss, socklen_t *len);

/* Split <hostport> into <host> (brackets removed) and *<port>. Returns 0 or -EINVAL. */
int netaddr_split(const char *hostport, char *host, size_t hostlen, int *port);

/*
 * Tune a connected TCP socket for a proxy: TCP_NODELAY, so a reply's last partial segment is not
 * held by Nagle until the peer's delayed ACK (about 40 ms on Linux) on keep-alive connections.
 */
void netaddr_tune_socket(int fd);

/*
 * Read up to <max> more bytes from <bev>'s socket straight into its input buffer. libevent 2.1's
 * evbuffer_read() takes at most 4096 bytes per call (EVBUFFER_MAX_READ), so a bufferevent costs a
 * whole loop pass (epoll_wait, ioctl, readv, epoll_ctl) per 4 KiB; measured in bench/, a 1 GiB
 * stream relayed at 0.34 GB/s that way and at 1.3 GB/s with this. The bufferevent keeps the end
 * of its input frozen and unfreezes it only around its own reads; this does the same. EOF and
 * errors are left for the bufferevent to report on its next pass.
 */
struct bufferevent;
void netaddr_read_burst(struct bufferevent *bev, size_t max);

/* Print <sa> as "ip:port" ("[v6]:port" for IPv6) into <buf>. Returns <buf>. */
const char *netaddr_format(const struct sockaddr *sa, char *buf, size_t n);

#endif

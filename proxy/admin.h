/*
 * proxy_admin: the operator endpoints, served on admin_listen (or on listen when they are equal):
 * GET /metrics, GET /-/healthy, GET /-/ready, POST /-/reload, GET /api/v1/explain,
 * GET /api/v1/status.
 */
#ifndef PROMGUARD_PROXY_ADMIN_H
#define PROMGUARD_PROXY_ADMIN_H

#include <stdint.h>

struct conf;
struct pool;
struct evbuffer;
struct proxy_flow;
struct proxy_req;
struct proxy_upstream;

/* What the endpoints read. All (ref), owned by main. */
struct proxy_admin {
	const struct conf *conf;  /* the config in force (main updates it on reload) */
	struct proxy_flow *flow;
	struct proxy_upstream *up;
	struct pool *pool;
	int draining;
	int64_t started;          /* unix seconds */
	/* POST /-/reload: load the file again; 0 on success, else -errno with the errors (one per
	 * line) in <errs>. */
	int (*reload)(void *arg, struct evbuffer *errs);
	void *reload_arg;
};

/* Body cap for admin requests: they carry no meaningful body. */
#define PROXY_ADMIN_BODY_CAP (64 * 1024)

/* 1 if <path> is an admin endpoint. */
int proxy_admin_owns(const char *path);

/* Answer one admin request (404 for unknown paths, 405 for wrong methods). */
void proxy_admin_handle(struct proxy_admin *a, struct proxy_req *req);

#endif

/*
 * proxy_admin: the operator endpoints, served on admin_listen (or on listen when they are equal):
 * GET /metrics, GET /-/healthy, GET /-/ready, GET /api/v1/status.
 */
#ifndef PROMGUARD_PROXY_ADMIN_H
#define PROMGUARD_PROXY_ADMIN_H

#include <stdint.h>

struct conf;
struct proxy_flow;
struct proxy_req;
struct proxy_upstream;

/* What the endpoints read. All (ref), owned by main. */
struct proxy_admin {
	const struct conf *conf;
	struct proxy_flow *flow;
	struct proxy_upstream *up;
	int draining;
	int64_t started;          /* unix seconds */
};

/* Body cap for admin requests: they carry no meaningful body. */
#define PROXY_ADMIN_BODY_CAP (64 * 1024)

/* 1 if <path> is an admin endpoint. */
int proxy_admin_owns(const char *path);

/* Answer one admin request (404 for unknown paths, 405 for wrong methods). */
void proxy_admin_handle(struct proxy_admin *a, struct proxy_req *req);

#endif

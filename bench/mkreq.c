/*
 * mkreq: write a snappy-compressed prometheus.ReadRequest for the benchmarks.
 *
 *   mkreq [--streamed] [--start MS] [--end MS] -o FILE NAME=VALUE...
 *
 * One query whose matchers are the NAME=VALUE equality pairs (e.g. __name__=fake series=10
 * samples=10, which the integration fake store reads as "10 series of 10 samples"). --streamed
 * asks for [STREAMED_XOR_CHUNKS, SAMPLES] as Prometheus 2.55+ does; without it the request
 * carries no accepted_response_types, as Prometheus 2.42 sends it (SAMPLES). The range
 * defaults to the hour before now. Encoding goes through proto_request_encode().
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/request.h"

#define MAX_MATCHERS 32

static void usage(void)
{
	fprintf(stderr, "usage: mkreq [--streamed] [--start MS] [--end MS] -o FILE NAME=VALUE...\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct proto_matcher m[MAX_MATCHERS];
	struct proto_query q;
	struct proto_request req;
	int types[2] = {PROTO_RESP_STREAMED_XOR_CHUNKS, PROTO_RESP_SAMPLES};
	const char *out_path = NULL;
	int streamed = 0;
	size_t n = 0;
	struct timespec now;
	int64_t start_ms = -1, end_ms = -1;
	uint8_t *body;
	size_t body_len;
	FILE *f;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--streamed")) {
			streamed = 1;
		} else if (!strcmp(argv[i], "--start") && i + 1 < argc) {
			start_ms = strtoll(argv[++i], NULL, 10);
		} else if (!strcmp(argv[i], "--end") && i + 1 < argc) {
			end_ms = strtoll(argv[++i], NULL, 10);
		} else if (!strcmp(argv[i], "-o") && i + 1 < argc) {
			out_path = argv[++i];
		} else if (strchr(argv[i], '=') && argv[i][0] != '-') {
			char *eq = strchr(argv[i], '=');
			if (n == MAX_MATCHERS)
				usage();
			*eq = 0; /* argv is ours to edit: name and value point into it */
			m[n].type = PROTO_MATCH_EQ;
			m[n].name = argv[i];
			m[n].value = eq + 1;
			n++;
		} else {
			usage();
		}
	}
	if (!out_path || n == 0)
		usage();
	clock_gettime(CLOCK_REALTIME, &now);
	if (end_ms < 0)
		end_ms = (int64_t)now.tv_sec * 1000;
	if (start_ms < 0)
		start_ms = end_ms - 3600 * 1000;

	memset(&q, 0, sizeof(q));
	q.start_ms = start_ms;
	q.end_ms = end_ms;
	q.matchers = m;
	q.n_matchers = n;
	memset(&req, 0, sizeof(req));
	req.queries = &q;
	req.n_queries = 1;
	req.accepted_types = streamed ? types : NULL;
	req.n_accepted_types = streamed ? 2 : 0;
	if (proto_request_encode(&req, &body, &body_len) < 0) {
		fprintf(stderr, "mkreq: cannot encode the request\n");
		return 1;
	}
	f = fopen(out_path, "wb");
	if (!f || fwrite(body, 1, body_len, f) != body_len || fclose(f) != 0) {
		fprintf(stderr, "mkreq: %s: %s\n", out_path, strerror(errno));
		free(body);
		return 1;
	}
	free(body);
	return 0;
}

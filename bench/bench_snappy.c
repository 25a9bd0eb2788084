/*
 * bench_snappy: memory and time to count a large SAMPLES body, whole versus windowed.
 *
 *   bench_snappy [--series N] [--samples N] [--rounds N] [--piece BYTES]
 *
 * Builds a Prometheus-like ReadResponse by hand (one QueryResult, N series of six labels, each
 * with S samples 15 s apart: counters, gauges and constants), compresses it with libsnappy's
 * snappy_compress (like Go's encoder, it keeps back-references within 64 KiB blocks), then counts
 * its series and samples two ways:
 *   whole     snappy_uncompressed_length + malloc + snappy_uncompress + proto_scan_samples:
 *             holds the compressed and the decoded body;
 *   windowed  proto_snappy_feed (64 KiB window), the compressed body fed in --piece pieces as
 *             if read from a socket, its output fed to proto_scan_feed: holds the compressed
 *             body, the window and one 64 KiB chunk.
 * Memory: each way runs in a fresh process (this binary re-executed with --child, so no page
 * of the parent's counts) that reads the compressed body from a temporary file; it reports
 * VmRSS before reading and VmHWM at the end. Time: --rounds runs of each in this process,
 * median and best, as decoded bytes per second; the bare decoders (snappy_uncompress into a
 * buffer allocated once, proto_snappy_feed into a callback that does nothing) are timed the
 * same way. Both ways must give the same counts, and the generator's.
 * Prints one markdown table (bench/snappy.sh adds notes and writes bench/RESULTS.md).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <snappy-c.h>

#include "proto/scan.h"
#include "proto/snappy.h"

#define DEFAULT_SERIES 10000
#define DEFAULT_SAMPLES 300
#define DEFAULT_ROUNDS 7
#define DEFAULT_PIECE 65536
#define WINDOW 65536                  /* Go's and libsnappy's block size */
#define CHUNK 65536                   /* proto_snappy's output chunk (snappy.c) */
#define MAX_LEN ((uint64_t)1 << 32)   /* no cap here: the body is ours */
#define SCRAPE_MS 15000
#define START_MS 1795219200000ULL     /* 2026-11-21T00:00:00Z, as the test vectors */
#define TARGET_GBPS 1.0
#define TARGET_EXTRA_MIB 1.0          /* windowed peak over baseline + compressed */

/* A growable byte buffer for the generator; exits on ENOMEM (a benchmark, not a library). */
struct buf {
	uint8_t *data;
	size_t len;
	size_t cap;
};

static void die(const char *what)
{
	fprintf(stderr, "bench_snappy: %s\n", what);
	exit(1);
}

static void put(struct buf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;

		while (cap < b->len + n)
			cap *= 2;
		b->data = realloc(b->data, cap);
		if (!b->data)
			die("out of memory");
		b->cap = cap;
	}
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
}

static void put_varint(struct buf *b, uint64_t v)
{
	uint8_t tmp[10];
	size_t n = 0;

	while (v >= 0x80) {
		tmp[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	tmp[n++] = (uint8_t)v;
	put(b, tmp, n);
}

/* Field <field> as LEN holding <n> bytes at <p>. */
static void put_lfield(struct buf *b, unsigned field, const void *p, size_t n)
{
	put_varint(b, (uint64_t)field << 3 | 2);
	put_varint(b, n);
	put(b, p, n);
}

static void put_label(struct buf *b, const char *name, const char *value)
{
	struct buf l = { 0 };

	put_lfield(&l, 1, name, strlen(name));
	put_lfield(&l, 2, value, strlen(value));
	put_lfield(b, 1, l.data, l.len);
	free(l.data);
}

static uint64_t rng = 0x853c49e6748fea9bULL;

static uint64_t next_rand(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545f4914f6cdd1dULL;
}

/*
 * Append TimeSeries <k> with <samples> samples to <qr> (QueryResult contents). Labels as a
 * node/kube scrape has them; values, by k % 10: 40 % event counters (whole numbers), 20 % CPU-
 * seconds counters (fractions), 20 % byte gauges that change now and then, 10 % noisy float
 * gauges, 10 % constants (up); timestamps 15 s apart, each series at its own phase (Prometheus
 * aligns scrape timestamps within 2 ms of the interval since 2.32), one in 16 off by 1..2 ms.
 */
static void put_series(struct buf *qr, uint32_t k, uint32_t samples)
{
	static const char *const names[] = { "http_requests_total", "node_cpu_seconds_total",
					     "container_memory_working_set_bytes", "up", "process_open_fds" };
	static const char *const jobs[] = { "api", "node", "kubelet", "db" };
	struct buf ts = { 0 }, s = { 0 };
	char v[64];
	unsigned kind = k % 10;
	double value = (double)(next_rand() % 100000), rate = (double)(next_rand() % 1000) / 7.0;
	uint64_t t = START_MS + next_rand() % SCRAPE_MS;

	put_label(&ts, "__name__", names[k % 5]);
	snprintf(v, sizeof(v), "10.%u.%u.%u:9100", k / 65536 % 256, k / 256 % 256, k % 256);
	put_label(&ts, "instance", v);
	put_label(&ts, "job", jobs[k / 5 % 4]);
	snprintf(v, sizeof(v), "ns-%u", k % 23);
	put_label(&ts, "namespace", v);
	snprintf(v, sizeof(v), "app-%u-%08x", k / 100, (unsigned)(next_rand() & 0xffffffffu));
	put_label(&ts, "pod", v);
	put_label(&ts, "region", k % 2 ? "eu-west-1" : "us-east-1");
	for (uint32_t i = 0; i < samples; i++) {
		uint8_t key = 0x09; /* Sample.value: field 1, I64 */

		s.len = 0;
		if (kind < 4)
			value += (double)(next_rand() % 200);
		else if (kind < 6)
			value += rate * (double)(next_rand() % 100) / 100.0;
		else if (kind < 8)
			value = next_rand() % 8 ? value : (double)(next_rand() % 4096) * 4096.0;
		else if (kind < 9)
			value = (double)(next_rand() % 1000000) / 3.0;
		put(&s, &key, 1);
		put(&s, &value, 8);
		put_varint(&s, 2u << 3);   /* Sample.timestamp: field 2, VARINT */
		put_varint(&s, t);
		put_lfield(&ts, 2, s.data, s.len);
		t += SCRAPE_MS + (next_rand() % 16 ? 0 : 1 + next_rand() % 2);
	}
	put_lfield(qr, 1, ts.data, ts.len);
	free(ts.data);
	free(s.data);
}

/* ReadResponse { results: [ QueryResult { timeseries: <series> x <samples> } ] }. */
static struct buf make_body(uint32_t series, uint32_t samples)
{
	struct buf qr = { 0 }, body = { 0 };

	for (uint32_t k = 0; k < series; k++)
		put_series(&qr, k, samples);
	put_lfield(&body, 1, qr.data, qr.len);
	free(qr.data);
	return body;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A "Vm...:" line of /proc/self/status, in KiB (0 when missing). */
static long status_kib(const char *key)
{
	char line[256];
	size_t klen = strlen(key);
	long v = 0;
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, klen) && line[klen] == ':') {
			v = strtol(line + klen + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

/* --- the two ways to count ---------------------------------------------------------------- */

struct counts {
	uint64_t series;
	uint64_t samples;
};

/* Whole: the decoded body in memory, scanned in one go. 0 or -1 (message on stderr). */
static int count_whole(const uint8_t *comp, size_t clen, struct counts *c)
{
	struct proto_scan_counts res[1];
	size_t dlen, n;
	char err[256];
	char *dec;
	int rc;

	if (snappy_uncompressed_length((const char *)comp, clen, &dlen) != SNAPPY_OK)
		return fprintf(stderr, "whole: bad snappy header\n"), -1;
	dec = malloc(dlen ? dlen : 1);
	if (!dec)
		return fprintf(stderr, "whole: out of memory\n"), -1;
	if (snappy_uncompress((const char *)comp, clen, dec, &dlen) != SNAPPY_OK) {
		free(dec);
		return fprintf(stderr, "whole: snappy_uncompress failed\n"), -1;
	}
	rc = proto_scan_samples((const uint8_t *)dec, dlen, res, 1, &n, err, sizeof(err));
	free(dec);
	if (rc < 0 || n != 1)
		return fprintf(stderr, "whole: scan: %s\n", rc < 0 ? err : "not one result"), -1;
	c->series = res[0].series;
	c->samples = res[0].samples;
	return 0;
}

/* proto_snappy consumer that feeds the scanner. */
struct scan_sink {
	struct proto_scan *scan;
	char err[256];
};

static int to_scan(void *ctx, const uint8_t *data, size_t len)
{
	struct scan_sink *k = ctx;

	return proto_scan_feed(k->scan, data, len, k->err, sizeof(k->err));
}

/* Windowed: decoded piece by piece into the incremental scanner. 0 or -1. */
static int count_windowed(const uint8_t *comp, size_t clen, size_t piece, struct counts *c)
{
	struct proto_snappy *s = proto_snappy_new(WINDOW, MAX_LEN);
	struct scan_sink k = { .scan = proto_scan_new(1) };
	const struct proto_scan_counts *res;
	char err[256] = "";
	size_t n;
	int rc = 0;

	if (!s || !k.scan) {
		proto_snappy_free(s);
		proto_scan_free(k.scan);
		return fprintf(stderr, "windowed: out of memory\n"), -1;
	}
	for (size_t at = 0; at < clen && rc == 0; at += piece)
		rc = proto_snappy_feed(s, comp + at, clen - at < piece ? clen - at : piece, to_scan, &k, err, sizeof(err));
	if (rc == 0)
		rc = proto_snappy_finish(s, err, sizeof(err));
	if (rc == 0)
		rc = proto_scan_finish(k.scan, k.err, sizeof(k.err));
	else if (k.err[0])
		snprintf(err, sizeof(err), "%s", k.err);
	res = proto_scan_results(k.scan, &n);
	if (rc == 0 && n == 1) {
		c->series = res[0].series;
		c->samples = res[0].samples;
	}
	proto_snappy_free(s);
	proto_scan_free(k.scan);
	if (rc < 0 || n != 1)
		return fprintf(stderr, "windowed: %s\n", rc < 0 ? err : "not one result"), -1;
	return 0;
}

static int discard(void *ctx, const uint8_t *data, size_t len)
{
	(void)ctx;
	(void)data;
	(void)len;
	return 0;
}

/* Bare windowed decode, output dropped. 0 or -1. */
static int decode_windowed(const uint8_t *comp, size_t clen, size_t piece)
{
	struct proto_snappy *s = proto_snappy_new(WINDOW, MAX_LEN);
	char err[256] = "";
	int rc = 0;

	if (!s)
		return -1;
	for (size_t at = 0; at < clen && rc == 0; at += piece)
		rc = proto_snappy_feed(s, comp + at, clen - at < piece ? clen - at : piece, discard, NULL, err, sizeof(err));
	if (rc == 0)
		rc = proto_snappy_finish(s, err, sizeof(err));
	proto_snappy_free(s);
	if (rc < 0)
		fprintf(stderr, "decode_windowed: %s\n", err);
	return rc < 0 ? -1 : 0;
}

/* --- memory: one way in a fresh process ---------------------------------------------------- */

/*
 * Child side (--child whole|windowed FILE PIECE): read the compressed body, count, and print
 * "base_kib hwm_kib series samples" on stdout.
 */
static int child_main(const char *mode, const char *path, size_t piece)
{
	long base = status_kib("VmRSS");
	struct counts c = { 0 };
	struct buf comp = { 0 };
	uint8_t tmp[65536];
	ssize_t r;
	int fd = open(path, O_RDONLY), rc;

	if (fd < 0)
		die("child: cannot open the body file");
	while ((r = read(fd, tmp, sizeof(tmp))) > 0)
		put(&comp, tmp, (size_t)r);
	close(fd);
	rc = !strcmp(mode, "whole") ? count_whole(comp.data, comp.len, &c) : count_windowed(comp.data, comp.len, piece, &c);
	printf("%ld %ld %" PRIu64 " %" PRIu64 "\n", base, status_kib("VmHWM"), c.series, c.samples);
	free(comp.data);
	return rc < 0 ? 1 : 0;
}

struct mem_result {
	long base_kib; /* VmRSS before reading the body */
	long hwm_kib;  /* VmHWM at the end */
	struct counts c;
};

/* Run this binary with --child <mode> in a fresh process and collect its figures. */
static void measure_child(const char *self, const char *mode, const char *path, size_t piece, struct mem_result *m)
{
	char piece_s[32];
	int fds[2], status;
	FILE *f;
	pid_t pid;

	snprintf(piece_s, sizeof(piece_s), "%zu", piece);
	if (pipe(fds) < 0)
		die("pipe failed");
	pid = fork();
	if (pid < 0)
		die("fork failed");
	if (pid == 0) {
		dup2(fds[1], STDOUT_FILENO);
		close(fds[0]);
		close(fds[1]);
		execl(self, self, "--child", mode, path, piece_s, (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	f = fdopen(fds[0], "r");
	if (!f || fscanf(f, "%ld %ld %" SCNu64 " %" SCNu64, &m->base_kib, &m->hwm_kib, &m->c.series,
			 &m->c.samples) != 4)
		die("child printed no figures");
	fclose(f);
	if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		die("child failed");
}

/* --- time ------------------------------------------------------------------------------ */

enum timed_op { OP_LIBSNAPPY, OP_WINDOWED_DECODE, OP_WHOLE_COUNT, OP_WINDOWED_COUNT, OP__COUNT };

struct timing {
	double median_s;
	double best_s;
};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Time <rounds> runs of <op>, after one warm-up run. */
static struct timing time_op(enum timed_op op, const struct buf *comp, char *dec, size_t dlen, size_t piece,
			     int rounds)
{
	double *t = calloc((size_t)rounds, sizeof(*t));
	struct timing r;

	if (!t)
		die("out of memory");
	for (int i = -1; i < rounds; i++) {
		struct counts c;
		size_t n = dlen;
		double t0 = now_s();
		int rc = 0;

		switch (op) {
		case OP_LIBSNAPPY:
			rc = snappy_uncompress((const char *)comp->data, comp->len, dec, &n) == SNAPPY_OK ? 0 : -1;
			break;
		case OP_WINDOWED_DECODE:
			rc = decode_windowed(comp->data, comp->len, piece);
			break;
		case OP_WHOLE_COUNT:
			rc = count_whole(comp->data, comp->len, &c);
			break;
		default:
			rc = count_windowed(comp->data, comp->len, piece, &c);
			break;
		}
		if (rc < 0)
			die("a timed run failed");
		if (i >= 0)
			t[i] = now_s() - t0;
	}
	qsort(t, (size_t)rounds, sizeof(*t), cmp_double);
	r.median_s = t[rounds / 2];
	r.best_s = t[0];
	free(t);
	return r;
}

static const char *met(int ok)
{
	return ok ? "met" : "MISSED";
}

static double mib(double bytes)
{
	return bytes / (1024.0 * 1024.0);
}

int main(int argc, char **argv)
{
	uint32_t n_series = DEFAULT_SERIES, n_samples = DEFAULT_SAMPLES;
	int rounds = DEFAULT_ROUNDS;
	size_t piece = DEFAULT_PIECE;
	struct counts cw, cs;
	struct mem_result mw, ms;
	struct timing tm[OP__COUNT];
	char path[] = "/tmp/bench_snappy.XXXXXX";
	char self[4096];
	struct buf body, comp = { 0 };
	char *dec;
	size_t dlen;
	ssize_t sl;
	int fd;

	if (argc == 5 && !strcmp(argv[1], "--child"))
		return child_main(argv[2], argv[3], strtoull(argv[4], NULL, 10));
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--series") && i + 1 < argc)
			n_series = (uint32_t)strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--samples") && i + 1 < argc)
			n_samples = (uint32_t)strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
			rounds = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--piece") && i + 1 < argc)
			piece = strtoull(argv[++i], NULL, 10);
		else {
			fprintf(stderr, "usage: bench_snappy [--series N] [--samples N] [--rounds N] [--piece BYTES]\n");
			return 2;
		}
	}
	if (n_series < 1 || n_samples < 1 || rounds < 1 || piece < 1) {
		fprintf(stderr, "bench_snappy: every option must be at least 1\n");
		return 2;
	}
	sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (sl < 0)
		die("cannot find its own binary");
	self[sl] = '\0';

	/* The body, compressed the way a store would. */
	body = make_body(n_series, n_samples);
	comp.cap = snappy_max_compressed_length(body.len);
	comp.data = malloc(comp.cap);
	comp.len = comp.cap;
	if (!comp.data || snappy_compress((const char *)body.data, body.len, (char *)comp.data, &comp.len) != SNAPPY_OK)
		die("snappy_compress failed");
	dlen = body.len;
	free(body.data);

	/* Memory, each way in its own process. */
	fd = mkstemp(path);
	if (fd < 0 || write(fd, comp.data, comp.len) != (ssize_t)comp.len)
		die("cannot write the body file");
	close(fd);
	measure_child(self, "whole", path, piece, &mw);
	measure_child(self, "windowed", path, piece, &ms);
	unlink(path);

	/* Counts here too, then time. */
	if (count_whole(comp.data, comp.len, &cw) < 0 || count_windowed(comp.data, comp.len, piece, &cs) < 0)
		die("counting failed");
	dec = malloc(dlen);
	if (!dec)
		die("out of memory");
	tm[OP_LIBSNAPPY] = time_op(OP_LIBSNAPPY, &comp, dec, dlen, piece, rounds);
	free(dec);
	tm[OP_WINDOWED_DECODE] = time_op(OP_WINDOWED_DECODE, &comp, NULL, dlen, piece, rounds);
	tm[OP_WHOLE_COUNT] = time_op(OP_WHOLE_COUNT, &comp, NULL, dlen, piece, rounds);
	tm[OP_WINDOWED_COUNT] = time_op(OP_WINDOWED_COUNT, &comp, NULL, dlen, piece, rounds);

	int same = cw.series == cs.series && cw.samples == cs.samples && mw.c.series == cw.series &&
		   mw.c.samples == cw.samples && ms.c.series == cw.series && ms.c.samples == cw.samples &&
		   cw.series == n_series && cw.samples == (uint64_t)n_series * n_samples;
	double need_whole = (double)comp.len + (double)dlen;
	double need_win = (double)comp.len + WINDOW + CHUNK;
	double extra_win = (double)(ms.hwm_kib - ms.base_kib) / 1024.0 - mib((double)comp.len);
	double gbps[OP__COUNT], best[OP__COUNT];

	for (int i = 0; i < OP__COUNT; i++) {
		gbps[i] = (double)dlen / tm[i].median_s / 1e9;
		best[i] = (double)dlen / tm[i].best_s / 1e9;
	}

	printf("| benchmark | whole body (snappy_uncompress) | windowed (proto_snappy, 64 KiB) | target | |\n");
	printf("|---|---|---|---|---|\n");
	printf("| body: %u series x %u samples, one query | %zu B decoded (%.1f MiB) | %zu B compressed (%.1f MiB, ratio %.2f) | | |\n",
	       n_series, n_samples, dlen, mib((double)dlen), comp.len, mib((double)comp.len),
	       (double)dlen / (double)comp.len);
	printf("| counts (series, samples): whole, windowed, expected | %" PRIu64 ", %" PRIu64 " | %" PRIu64 ", %" PRIu64
	       " | identical, = %u, %" PRIu64 " | %s |\n",
	       cw.series, cw.samples, cs.series, cs.samples, n_series, (uint64_t)n_series * n_samples, met(same));
	printf("| bytes needed to count it | %.1f MiB (compressed + decoded) | %.2f MiB (compressed + window + chunk) | | |\n",
	       mib(need_whole), mib(need_win));
	printf("| peak memory of a fresh process counting it: VmHWM (VmRSS before reading the body) | %.1f MiB (%.1f MiB) | %.1f MiB (%.1f MiB) | | |\n",
	       mw.hwm_kib / 1024.0, mw.base_kib / 1024.0, ms.hwm_kib / 1024.0, ms.base_kib / 1024.0);
	printf("| peak growth over that baseline, minus the compressed body | %.1f MiB | %.2f MiB | windowed <= %.0f MiB | %s |\n",
	       (double)(mw.hwm_kib - mw.base_kib) / 1024.0 - mib((double)comp.len), extra_win, TARGET_EXTRA_MIB,
	       met(extra_win <= TARGET_EXTRA_MIB));
	printf("| decode only, GB/s of decoded bytes, median of %d (best) | %.2f (%.2f) | %.2f (%.2f) | windowed >= %.0f GB/s | %s |\n",
	       rounds, gbps[OP_LIBSNAPPY], best[OP_LIBSNAPPY], gbps[OP_WINDOWED_DECODE], best[OP_WINDOWED_DECODE],
	       TARGET_GBPS, met(gbps[OP_WINDOWED_DECODE] >= TARGET_GBPS));
	printf("| decode + count, GB/s of decoded bytes, median of %d (best) | %.2f (%.2f), %.1f ms | %.2f (%.2f), %.1f ms | | |\n",
	       rounds, gbps[OP_WHOLE_COUNT], best[OP_WHOLE_COUNT], tm[OP_WHOLE_COUNT].median_s * 1e3,
	       gbps[OP_WINDOWED_COUNT], best[OP_WINDOWED_COUNT], tm[OP_WINDOWED_COUNT].median_s * 1e3);
	free(comp.data);
	return same ? 0 : 1;
}

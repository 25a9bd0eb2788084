/*
 * proto_scan: count series, samples and bytes per query in a decompressed prometheus.ReadResponse
 * by walking the protobuf wire format, without a full decode.
 *
 * Hand-written rather than protobuf-c unpack: unpacking a 50 MB response allocates every label
 * and sample (several times the body), while this walks the bytes once with O(1) state. The
 * scanner is incremental: bytes may be fed in pieces split anywhere, so a streaming snappy
 * decoder can feed it without holding the whole decompressed body.
 */
#ifndef PROMGUARD_PROTO_SCAN_H
#define PROMGUARD_PROTO_SCAN_H

#include <stddef.h>
#include <stdint.h>

#include "proto/wire.h" /* proto_series_fn, struct proto_label */

/* Counts for one QueryResult (index = position in ReadResponse.results = query index). */
struct proto_scan_counts {
	uint64_t series;     /* TimeSeries */
	uint64_t samples;    /* Sample entries */
	uint64_t histograms; /* Histogram entries */
	uint64_t bytes;      /* bytes of the QueryResult message (its contents, without key and length) */
};

struct proto_scan;

/* New scanner that tracks at most <max_queries> results; NULL on ENOMEM. Free with proto_scan_free
 * (NULL is accepted). Unknown fields at every level (e.g. M3's TimeSeries fields 101, 102, 1001)
 * are skipped. */
struct proto_scan *proto_scan_new(size_t max_queries);
void proto_scan_free(struct proto_scan *s);

/*
 * Report every TimeSeries to <fn> (NULL: stop) as soon as it ends, with its labels in wire order
 * and query_index = the index of its QueryResult. Call before the first feed. <fn> runs inside
 * proto_scan_feed and must not call back into <s>; <ctx> is borrowed. Labels are copied into a
 * buffer of PROTO_SERIES_LABELS_MAX bytes (allocated by the first series) that holds the names,
 * values and one struct proto_label per label; a series that does not fit, or whose Labels are
 * not valid messages, is reported with n_labels 0 and counted by proto_scan_skipped (the counts,
 * and the verdict but for -ENOMEM, never depend on it). Without a callback nothing is copied.
 */
void proto_scan_set_series_cb(struct proto_scan *s, proto_series_fn fn, void *ctx);

/* Series reported without their labels (see proto_scan_set_series_cb). */
uint64_t proto_scan_skipped(const struct proto_scan *s);

/*
 * Feed the next <len> bytes. Returns 0, or -EBADMSG (corrupt wire format: bad varint, bad wire
 * type, a length running past its parent), -E2BIG (more results than <max_queries>) or -ENOMEM
 * (a series callback is set and its label buffer cannot be allocated), with one line in <err>.
 * After an error the scanner stays failed; series reported before it stay reported.
 */
int proto_scan_feed(struct proto_scan *s, const uint8_t *data, size_t len, char *err, size_t errlen);

/* Signal the end of the body: -EBADMSG if it ends inside a field or message. */
int proto_scan_finish(struct proto_scan *s, char *err, size_t errlen);

/* Results seen so far and their counts. (ref) valid until the next feed or free. */
const struct proto_scan_counts *proto_scan_results(const struct proto_scan *s, size_t *n);

/* One-shot helper over a whole buffer: feed + finish. <out> must hold <max_queries> entries; on
 * success *<n_out> of them are filled. Same return codes as feed/finish, or -ENOMEM. */
int proto_scan_samples(const uint8_t *buf, size_t len, struct proto_scan_counts *out, size_t max_queries,
		       size_t *n_out, char *err, size_t errlen);

#endif

/*
 * proto_frame: read a STREAMED_XOR_CHUNKS body (frames of: uvarint length, CRC-32C big-endian,
 * one prometheus.ChunkedReadResponse) and count series, chunks and bytes per query_index.
 *
 * Incremental and copy-free: bytes are fed as they arrive from the store, split anywhere; the
 * CRC is updated and the message walked in place, so a frame is never buffered. A series that the
 * store splits across consecutive frames (same labels, same query_index) counts once: series are
 * identified by an XXH3 hash of their label bytes, compared with the series just before them.
 * Error lines name the 0-based frame index ("frame 3: checksum mismatch: got 0x... want 0x...").
 */
#ifndef PROMGUARD_PROTO_FRAME_H
#define PROMGUARD_PROTO_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "proto/wire.h" /* proto_series_fn, struct proto_label */

struct proto_frame_counts {
	uint64_t series; /* distinct ChunkedSeries */
	uint64_t chunks; /* Chunk entries */
	uint64_t bytes;  /* frame bytes including length and CRC */
	uint64_t frames; /* frames whose query_index is this one */
};

struct proto_frame_reader;

/*
 * New reader. <max_frame> caps one message's length (Prometheus' client default is 50,000,000);
 * <max_queries> caps the query_index values tracked. NULL on ENOMEM.
 */
struct proto_frame_reader *proto_frame_reader_new(size_t max_frame, size_t max_queries);
void proto_frame_reader_free(struct proto_frame_reader *r);

/*
 * Report every distinct series to <fn> (NULL: stop) with its labels in wire order and the frame's
 * query_index, when the frame that carries it ends (query_index comes last on the wire) and has
 * passed its checksum. A series split across consecutive frames (same query_index and labels,
 * as counted in proto_frame_counts.series) is reported once, at its first frame. Call before the
 * first feed. <fn> runs inside proto_frame_feed and must not call back into <r>; <ctx> is
 * borrowed. Label strings wait in a buffer of PROTO_SERIES_LABELS_MAX bytes (allocated by the
 * first series) holding names, values and one struct proto_label per label; a series that does
 * not fit, or whose Labels are not valid messages, is reported with n_labels 0 and counted by
 * proto_frame_skipped. The buffer serves one frame, so in a frame carrying several series
 * (Prometheus sends one) they share it. Without a callback nothing is copied; the counts, and
 * the verdict but for -ENOMEM, never depend on the callback.
 */
void proto_frame_set_series_cb(struct proto_frame_reader *r, proto_series_fn fn, void *ctx);

/* Series reported without their labels (see proto_frame_set_series_cb). */
uint64_t proto_frame_skipped(const struct proto_frame_reader *r);

/*
 * Feed <len> bytes. A frame's counts are credited when its last byte arrives (query_index comes
 * last on the wire). Returns 0, or with one line in <err>:
 *   -EBADMSG  bad varint, CRC mismatch, a message that is not a valid ChunkedReadResponse, or a
 *             negative query_index
 *   -E2BIG    a frame longer than <max_frame>, or a query_index >= <max_queries>
 *   -ENOMEM   a series callback is set and its label buffer cannot be allocated
 * After an error the reader stays failed.
 */
int proto_frame_feed(struct proto_frame_reader *r, const uint8_t *data, size_t len, char *err, size_t errlen);

/* End of body: 0 at a frame boundary, -EBADMSG when it stops inside a frame. */
int proto_frame_finish(struct proto_frame_reader *r, char *err, size_t errlen);

/* Counts per query_index (array of *<n>, index = query_index). (ref) */
const struct proto_frame_counts *proto_frame_results(const struct proto_frame_reader *r, size_t *n);

/* CRC-32C (Castagnoli) of <len> bytes continuing from <crc> (start with 0); check("123456789")
 * = 0xE3069283. Carry-less multiply folding (AVX-512 VPCLMULQDQ) for 256 bytes and more, else
 * three interleaved SSE4.2 crc32 chains, where the CPU has them; else slicing-by-8. Thread-safe. */
uint32_t proto_crc32c(uint32_t crc, const uint8_t *data, size_t len);
/* The same with the portable table code whatever the CPU (SSE4.2 is used where present by the
 * one above; tests check that both agree). */
uint32_t proto_crc32c_portable(uint32_t crc, const uint8_t *data, size_t len);

#endif

/*
 * proto_snappy: a streaming decoder for the snappy block format with a bounded window.
 *
 * Counting a SAMPLES body must not need its whole decompressed copy. Go's snappy encoder (used by
 * Prometheus and every Go store) emits back-references only within 64 KiB blocks
 * (shared/protocol.md §9), so a decoder that keeps the last <window> bytes of output can decode
 * the body piece by piece and hand each piece to the incremental scanner (proto_scan). An offset
 * that reaches further back than the window is reported (-ERANGE) so the caller can fall back to
 * a whole-body decode. libsnappy has no streaming API, hence this one; it is checked against
 * libsnappy in the unit tests.
 */
#ifndef PROMGUARD_PROTO_SNAPPY_H
#define PROMGUARD_PROTO_SNAPPY_H

#include <stddef.h>
#include <stdint.h>

struct proto_snappy;

/* Receives decoded bytes in order; return 0 to go on, or a negative errno to stop the feed. */
typedef int (*proto_snappy_out_fn)(void *ctx, const uint8_t *data, size_t len);

/*
 * New decoder keeping <window> bytes of history (65536 for Go's encoder) and refusing a declared
 * decoded length above <max_len>. NULL on ENOMEM. Nothing big is allocated until the header has
 * been fed and checked: then one buffer of min(declared length, <window> + 64 KiB) + 64 bytes.
 * Free with proto_snappy_free (NULL is accepted).
 */
struct proto_snappy *proto_snappy_new(size_t window, uint64_t max_len);
void proto_snappy_free(struct proto_snappy *s);

/*
 * Feed <len> compressed bytes, split anywhere; decoded bytes go to <out>(<ctx>) in order, in
 * pieces of at most <window> + 64 KiB (64 KiB once the body outgrows that), and every byte this
 * feed produced has been handed over when it returns. <out> gets len > 0 and a (ref) into the
 * decoder's buffer, valid during that call only; it must not call back into <s>. <data> and
 * <ctx> are borrowed for the call. Returns 0, or with one line in <err> (may be NULL when <errlen> is 0):
 *   -EBADMSG  corrupt input (bad varint, bad tag, offset 0 or before the start, overrun)
 *   -E2BIG    the declared decoded length is above <max_len>
 *   -ERANGE   a back-reference reaches past the window: decode the whole body instead
 *   -ENOMEM   the window buffer cannot be allocated (once the header has been read)
 *   any error <out> returned
 * After an error the decoder stays failed.
 */
int proto_snappy_feed(struct proto_snappy *s, const uint8_t *data, size_t len, proto_snappy_out_fn out, void *ctx,
		      char *err, size_t errlen);

/* End of input: -EBADMSG unless exactly the declared length was produced and the input ended
 * between elements (one line in <err>); a failed decoder returns its error again. */
int proto_snappy_finish(struct proto_snappy *s, char *err, size_t errlen);

/* The declared decoded length (valid once the header varint has been fed), else 0. */
uint64_t proto_snappy_declared(const struct proto_snappy *s);

#endif

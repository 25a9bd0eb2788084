#!/usr/bin/env python3
"""Regenerate the seed corpora in tests/fuzz/corpus/<target>/ from tests/vectors/ and small
hand-made cases. Standard library only; byte-for-byte reproducible.

    python3 tests/fuzz/make_seeds.py            # rewrite tests/fuzz/corpus/
    python3 tests/fuzz/make_seeds.py --check    # exit 1 if the committed corpus differs

Each target's input starts with the header bytes its fuzz_<target>.c describes; the helpers
below build them. The regressions in tests/fuzz/regressions/ are not touched (they are inputs
the fuzzers found, kept as they were).
"""

import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
from promrr import crc32c, read_uvarint, uvarint  # noqa: E402  (the tests' own wire helpers)
from promrr import snappy_encode as snappy_literals  # noqa: E402  (literals-only snappy block)
from promrr import snappy_decode as snappy_uncompress  # noqa: E402  (checked snappy decoder)
VECTORS = os.path.join(ROOT, "tests", "vectors")
CONF_EXAMPLE = os.path.join(ROOT, "conf", "promguard.yml")

EQ, NEQ, RE, NRE = 0, 1, 2, 3


# ---- wire helpers ------------------------------------------------------------------------------

def key(number, wt):
    return uvarint(number << 3 | wt)


def f_varint(number, v):
    return key(number, 0) + uvarint(v)


def f_len(number, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return key(number, 2) + uvarint(len(payload)) + payload


def f_double(number, v):
    return key(number, 1) + struct.pack("<d", v)


def snappy_compress(data, max_offset=65535):
    """Greedy snappy compressor with copies (4-byte hash matches), deterministic."""
    data = bytes(data)
    out = bytearray(uvarint(len(data)))
    table = {}
    lit_start = i = 0

    def emit_literal(a, b):
        while a < b:
            chunk = data[a:min(b, a + 65536)]
            n = len(chunk) - 1
            if n < 60:
                out.append(n << 2)
            elif n < 256:
                out.extend([60 << 2, n])
            else:
                out.extend([61 << 2, n & 0xFF, n >> 8])
            out.extend(chunk)
            a += len(chunk)

    while i + 4 <= len(data):
        k = data[i:i + 4]
        cand = table.get(k)
        table[k] = i
        if cand is None or i - cand > max_offset:
            i += 1
            continue
        length = 4
        while i + length < len(data) and data[cand + length] == data[i + length]:
            length += 1
        emit_literal(lit_start, i)
        offset = i - cand
        left = length
        # as google/snappy's EmitCopy: 64-byte copies, leaving a last one of 4..64 bytes
        while left >= 68:
            out.extend([2 | 63 << 2, offset & 0xFF, offset >> 8])
            left -= 64
        if left > 64:
            out.extend([2 | 59 << 2, offset & 0xFF, offset >> 8])
            left -= 60
        if left <= 11 and offset < 2048:
            out.extend([1 | (left - 4) << 2 | (offset >> 8) << 5, offset & 0xFF])
        else:
            out.extend([2 | (left - 1) << 2, offset & 0xFF, offset >> 8])
        i += length
        lit_start = i
    emit_literal(lit_start, len(data))
    return bytes(out)


def read_vector(name):
    with open(os.path.join(VECTORS, name), "rb") as f:
        return f.read()


# ---- messages ----------------------------------------------------------------------------------

def query(start, end, matchers, hints=None, extra=b""):
    body = f_varint(1, start) + f_varint(2, end)
    for t, n, v in matchers:
        body += f_len(3, f_varint(1, t) + f_len(2, n) + f_len(3, v))
    if hints is not None:
        h = (f_varint(1, hints.get("step", 0)) + f_len(2, hints.get("func", "")) +
             f_varint(3, hints.get("start", 0)) + f_varint(4, hints.get("end", 0)) +
             b"".join(f_len(5, g) for g in hints.get("grouping", [])) +
             f_varint(6, 1 if hints.get("by") else 0) + f_varint(7, hints.get("range", 0)))
        body += f_len(4, h)
    return f_len(1, body + extra)


def read_request(queries, accepted=(), packed=True, extra=b""):
    out = b"".join(queries)
    if accepted:
        if packed:
            out += f_len(2, b"".join(uvarint(t) for t in accepted))
        else:
            out += b"".join(f_varint(2, t) for t in accepted)
    return out + extra


def labels_msg(labels, number=1):
    return b"".join(f_len(number, f_len(1, n) + f_len(2, v)) for n, v in labels)


def timeseries(labels, samples=(), histograms=0, exemplars=0, extra=b""):
    ts = labels_msg(labels)
    for t, v in samples:
        ts += f_len(2, f_double(1, v) + f_varint(2, t))
    ts += b"".join(f_len(3, labels_msg([("trace_id", "abc")]) + f_double(2, 1.0)) for _ in range(exemplars))
    ts += b"".join(f_len(4, f_varint(1, 5) + f_double(2, 1.5)) for _ in range(histograms))
    return ts + extra


def read_response(results):
    return b"".join(f_len(1, b"".join(f_len(1, s) for s in series)) for series in results)


def chunked_message(query_index, series, qi_first=False):
    out = b""
    for labels, chunks in series:
        cs = labels_msg(labels)
        for mint, maxt, data in chunks:
            cs += f_len(2, f_varint(1, mint) + f_varint(2, maxt) + f_varint(3, 1) + f_len(4, data))
        out += f_len(1, cs)
    qi = f_varint(2, query_index) if query_index else b""
    return qi + out if qi_first else out + qi


def frames_of(stream):
    """Split a STREAMED_XOR_CHUNKS body into its messages."""
    msgs, pos = [], 0
    while pos < len(stream):
        n, pos = read_uvarint(stream, pos)
        msgs.append(stream[pos + 4:pos + 4 + n])
        pos += 4 + n
    return msgs


def frame(msg):
    return uvarint(len(msg)) + struct.pack(">I", crc32c(msg)) + msg


# ---- per-target seeds --------------------------------------------------------------------------

T0 = 1795219200000
HOUR = 3600000
SPLITS_ODD = bytes([1, 2, 3, 7, 13, 64, 130, 255])
SPLITS_BYTES = bytes([1] * 8)
SPLITS_MIXED = bytes([0, 5, 200, 1, 9, 127, 3, 17])


def seeds_request():
    full = 0xFF  # budget 8 MiB, cap 2 MiB
    vec = read_vector("request.snappy")
    rich = read_request([
        query(T0, T0 + HOUR, [(EQ, "__name__", "demo_pod_memory_bytes"), (RE, "namespace", "ns-0[0-4]"),
                              (NEQ, "pod", ""), (NRE, "container", "POD|")],
              {"step": 15000, "func": "sum", "start": T0, "end": T0 + HOUR, "grouping": ["namespace"],
               "by": True, "range": 300000}),
        query(T0 - HOUR, T0, [(RE, "__name__", ".+"), (EQ, "job", "node")],
              {"func": "rate", "grouping": ["instance", "job"], "by": False, "range": 60000}),
    ], accepted=[1, 0])
    odd_names = read_request([
        query(0, 0, [(EQ, "__name__", "has-dash"), (EQ, "k8s.pod", "p\"q\\r\n\t\x01\x7f"),
                     (EQ, "", "empty name"), (EQ, "__name__", "second")]),
        query(-1, 1, [], {"step": -15000}),
    ], accepted=[0, 7, 1], packed=False, extra=f_varint(1000, 5) + key(51, 5) + b"\x01\x02\x03\x04")
    extremes = read_request([
        query(-(1 << 63), (1 << 63) - 1, [(EQ, "__name__", "up")], {"step": -(1 << 63), "range": (1 << 63) - 1}),
        query(253402300799999, 253402300800000, [(EQ, "__name__", "y10k")]),
    ])
    out = {
        "vector-request": bytes([full]) + vec,
        "two-queries-all-matcher-types-hints": bytes([full]) + snappy_compress(rich),
        "odd-names-unpacked-types-unknown-fields": bytes([full]) + snappy_literals(odd_names),
        "extreme-timestamps": bytes([full]) + snappy_literals(extremes),
        "start-after-end": bytes([full]) + snappy_literals(read_request([query(T0 + 1, T0, [(EQ, "a", "b")])])),
        "unknown-matcher-type": bytes([full]) + snappy_literals(read_request([query(0, 1, [(7, "a", "b")])])),
        "no-queries": bytes([full]) + snappy_literals(read_request([], accepted=[1])),
        "not-snappy": bytes([full]) + b"GET / HTTP/1.1\r\n",
        "claims-4gib": bytes([full]) + uvarint(0xFFFFFFFF) + b"\x00",
        "vector-small-budget": bytes([0x71]) + vec,
        "vector-over-cap": bytes([0x0F]) + vec,
    }
    return out


def seeds_scan():
    plain = read_vector("samples_response.snappy")
    decoded = snappy_uncompress(plain)
    hand = read_response([
        [timeseries([("__name__", "up"), ("job", "a")], [(T0, 1.0), (T0 + 15000, 0.0)]),
         timeseries([("__name__", "h"), ("le", "+Inf")], histograms=2, exemplars=1)],
        [],
        [timeseries([("__name__", "m3"), ("", ""), ("x", "")], [(T0, 2.5)],
                    extra=f_varint(101, 1) + f_len(102, b"tags") + f_len(1001, b"\x00\x01"))],
    ])
    def wide(n):
        return read_response([[timeseries([("__name__", "pod_memory"), ("namespace", "ns-%02d" % (i % 20)),
                                           ("pod", "pod-%05d" % i)], [(T0 + 15000 * k, float(k)) for k in range(4)])
                               for i in range(n)]])
    bad_wire_type = f_varint(1, 3) + read_response([[timeseries([("a", "b")])]])
    truncated = decoded[:1000]
    three = read_response([[timeseries([("a", "1")])]] * 3)
    long_labels = read_response([[timeseries([("__name__", "big"), ("v", "x" * 17000)])]])

    def raw(flags, body, splits=SPLITS_ODD):
        return bytes([flags, 16]) + splits + body

    def snap(flags, window, body, splits=SPLITS_ODD):
        return bytes([flags | 1, window]) + splits + body

    q1, q3, cb = 1 << 2, 3 << 2, 2
    return {
        "raw-vector-response": raw(q1 | cb, decoded),
        "raw-hand-three-results": raw(q3 | cb, hand, SPLITS_BYTES),
        "raw-bad-wire-type": raw(q1, bad_wire_type, SPLITS_MIXED),
        "raw-truncated": raw(q1 | cb, truncated),
        "raw-too-many-results": raw(2 << 2, three),
        "snappy-vector-response": snap(q1 | cb, 16, plain),
        "snappy-vector-small-window": snap(q1 | cb, 8, plain, SPLITS_MIXED),
        "snappy-hand-three-results": snap(q3 | cb, 16, snappy_compress(hand)),
        # decoded beyond window + 64 KiB: the decoder's buffer slides (copies kept in the window)
        "snappy-wide-slides-4k-window": snap(q1 | cb, 12, snappy_compress(wide(800), 4096), SPLITS_MIXED),
        "snappy-wide-slides-64k-window": snap(q1, 16, snappy_compress(wide(1100)), SPLITS_ODD),
        "snappy-label-over-16k": snap(q1 | cb, 16, snappy_compress(long_labels)),
        "snappy-corrupt-offset": snap(q1, 16, uvarint(20) + bytes([0x08, ord("a"), ord("b"), 0x0A, 0x09, 0x00])),
    }


def seeds_frame():
    stream = read_vector("streamed_response.bin")
    msgs = frames_of(stream)

    def framed(flags, b1, messages, splits=SPLITS_ODD, b2=0x80):
        return bytes([flags | 1, b1, b2]) + splits + b"".join(struct.pack("<H", len(m)) + m for m in messages)

    def raw(flags, body, splits=SPLITS_ODD, b2=0x80):
        return bytes([flags, 0, b2]) + splits + body

    q1, q3, cb = 1 << 2, 3 << 2, 2
    lab_a = [("__name__", "up"), ("job", "a")]
    lab_b = [("__name__", "up"), ("job", "b")]
    chunk = (T0, T0 + 1000, b"\x00\x01\x02\x03")
    hand = [
        chunked_message(0, [(lab_a, [chunk])]),
        chunked_message(0, [(lab_a, [chunk, chunk])]),           # continues the series above
        chunked_message(2, [(lab_a, [chunk]), (lab_b, [chunk])]),
        chunked_message(1, [], ),                                # no series
        chunked_message(1, [(lab_b, [chunk])], qi_first=True),
        chunked_message(0, [([("", ""), ("x", "")], [])]),
    ]
    return {
        "raw-vector-stream": raw(q1 | cb, stream),
        "framed-vector-messages": framed(q1 | cb, 0, msgs),
        "framed-vector-bad-crc": framed(q1 | cb | 0x20, 2, msgs, SPLITS_MIXED),
        "framed-vector-cut-short": framed(q1 | cb | 0x40, 0x30, msgs, SPLITS_BYTES),
        "framed-hand-split-series": framed(q3 | cb, 0, hand, SPLITS_MIXED),
        "framed-negative-query-index": framed(q1, 0, [chunked_message(-1, [(lab_a, [chunk])])]),
        "raw-small-max-frame": raw(q1, stream, SPLITS_ODD, 4),
        "raw-query-index-past-max": raw(q1, frame(chunked_message(5, [(lab_a, [chunk])]))),
        "raw-bad-length-varint": raw(q1, b"\xff" * 11),
    }


def seeds_conf():
    with open(CONF_EXAMPLE, "rb") as f:
        example = f.read()
    minimal = b"upstream:\n  url: http://127.0.0.1:9090/api/v1/read\n"
    full = b"""\
upstream:
  url: http://store:9090/api/v1/read?x=1
  headers:
    X-Extra: "v"
  propagate_limits: m3
mode: dry_run
limits:
  max_series: 10000
  max_range: 1d
  max_response_bytes: 64MiB
tenants:
  "team \\"a\\"":
    max_series: 5
  b:
    max_inflight: 2
rules:
  - name: containers need a namespace
    action: reject
    when:
      metric_regex: container_.*
      lacks_label: [namespace]
      matcher_types: [re, nre]
      range_above: 1h
      estimate_above: 100
estimator:
  hints:
    demo_pod_memory_bytes: 20000
  max_memory: 64KiB
"""
    return {
        "example": example,
        "minimal": minimal,
        "tenants-rules-hints": full,
        "errors-everywhere": b"""\
upstream:
  url: ftp://x
  url: http://dup
limits:
  max_series: -1
  max_rnage: 1h
rules:
  - name: r
  - when: {metric: "a b"}
pool: {low_watermark: 0.9, high_watermark: 0.1}
queue: {base_delay: 10s, max_delay: 1s}
"\\x01key\\n": 1
""",
        "two-documents": minimal + b"---\nlisten: 1.2.3.4:5\n",
        "anchors-and-flow": b"base: &b {url: 'http://h:1/r'}\nupstream: *b\nlimits: {max_series: 1_000}\n",
        "not-a-mapping": b"- just\n- a list\n",
    }


def seeds_selector():
    texts = [
        "up", "{__name__=\"x\"}", "job:rate5m{ job = 'a' , }",
        "up{job=\"a\",x=~\"b.*\",y!=\"c\",z!~\"d\"}",
        "{__name__=~\"node_.+\",instance=\"h:9100\"}", "{__name__=\"has-dash\"}",
        "a{l='q\"x\\\\'}", "a{l=`\\d+`}", "a{l=\"\\n\\t\\r\\x01\"}", "a{l=\"caf\\u00e9\\U0001F600\\377\"}",
        "a{\"k8s.pod\"=\"p\"}", "{\"quoted name\"!~'v'}", "up{}", "{}", "up{a=\"unterminated}",
        "{__name__=\"a\",__name__=\"b\"}", "a{__name__!=\"b\"}", "  up \n{\ta\r=\"1\"}  ",
    ]
    return {"selector-%02d" % i: t.encode() for i, t in enumerate(texts)}


# Estimator ops (fuzz_estimator.c): strings are one choice byte (+ bytes for raw ones).
def s_fixed(i):
    return bytes([(i << 3) | 0])


S_NAME, S_JOB, S_INSTANCE, S_NAMESPACE, S_POD, S_LE, S_UP, S_A = (s_fixed(i) for i in range(8))
S_EMPTY = bytes([2])
S_FRESH = bytes([5])


def s_raw(text):
    b = text.encode() if isinstance(text, str) else text
    return bytes([6, len(b)]) + b


def s_long_name(k=5):
    return bytes([(k << 3) | 3])


def s_long_value(k=3):
    return bytes([(k << 3) | 4])


def e_query(matchers, range_ms=HOUR):
    out = bytes([len(matchers)]) + struct.pack("<I", range_ms)
    for t, n, v in matchers:
        out += bytes([t]) + n + v
    return out


def op_series(tenant, labels):
    return bytes([0]) + tenant + bytes([len(labels)]) + b"".join(n + v for n, v in labels)


def op_repeat(times):
    return bytes([1, times - 1])


def op_many(times, tenant, metric, label):
    return bytes([2]) + struct.pack("<H", times - 1) + tenant + metric + label


def op_learn_query(tenant, q, series, samples, nbytes):
    return bytes([3]) + tenant + q + struct.pack("<III", series, samples, nbytes)


def op_probe(tenant, q, series, truncated=0):
    return bytes([4]) + tenant + q + struct.pack("<I", series) + bytes([truncated])


def op_estimate(tenant, q):
    return bytes([5]) + tenant + q


def op_configure(budget, hints=()):
    return bytes([6, budget, len(hints)]) + b"".join(m + struct.pack("<H", n) for m, n in hints)


def op_fingerprint(tenant, q):
    return bytes([7]) + tenant + q


def seeds_estimator():
    t1 = s_raw("default")
    pod_q = e_query([(EQ, S_NAME, s_raw("kube_pod_info")), (EQ, S_NAMESPACE, s_raw("ns-1"))])
    regex_q = e_query([(EQ, S_NAME, s_raw("kube_pod_info")), (RE, S_NAMESPACE, s_raw("ns-(1|2)"))])
    neg_q = e_query([(EQ, S_NAME, s_raw("kube_pod_info")), (NRE, S_POD, s_raw(".*-7"))])
    name_re = e_query([(RE, S_NAME, s_raw("kube_.+"))])
    typical = bytes([6, 15]) + bytes([1]) + s_raw("kube_pod_info") + struct.pack("<H", 500)
    for i in range(12):
        typical += op_series(t1, [(S_NAME, s_raw("kube_pod_info")), (S_NAMESPACE, s_raw("ns-%d" % (i % 3))),
                                  (S_POD, s_raw("p-%d" % i))])
    typical += op_estimate(t1, pod_q) + op_estimate(t1, regex_q) + op_estimate(t1, neg_q)
    typical += op_learn_query(t1, pod_q, 4, 960, 20000) + op_estimate(t1, pod_q)
    typical += op_probe(t1, name_re, 12, 1) + op_estimate(t1, name_re) + op_fingerprint(t1, neg_q)
    typical += op_estimate(t1, e_query([(EQ, S_NAME, s_raw("kube_pod_info")), (RE, S_NAMESPACE, s_raw("ns\\-1|ns\\.2|"))]))
    many = [(i % 4, S_FRESH, S_FRESH) for i in range(40)]
    typical += op_estimate(t1, e_query(many)) + op_learn_query(t1, e_query(many), 1, 2, 3) + op_fingerprint(t1, e_query(many))

    hostile = bytes([0, 0, 0])  # 1 KiB budget
    hostile += op_series(S_EMPTY, [(S_NAME, s_long_name()), (s_long_name(7), S_A), (S_EMPTY, S_A)])
    hostile += op_series(s_long_name(), [(S_NAME, S_UP), (S_JOB, s_long_value(5)), (S_JOB, S_EMPTY)])
    hostile += op_series(S_FRESH, [(S_NAME, S_UP), (S_INSTANCE, S_FRESH), (S_LE, s_raw(b"\x00\xff\n"))])
    hostile += op_repeat(64) + op_configure(6) + op_many(512, t1, S_UP, S_INSTANCE)
    hostile += op_estimate(t1, e_query([(EQ, S_NAME, S_UP), (RE, S_INSTANCE, s_raw("v1.*|(a|aa)+"))]))
    hostile += op_estimate(t1, e_query([(NEQ, S_NAME, S_EMPTY), (NRE, S_INSTANCE, s_raw("("))]))
    hostile += op_learn_query(S_EMPTY, e_query([]), 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    hostile += op_configure(0, [(S_UP, 7), (S_UP, 9)]) + op_many(300, S_FRESH, S_FRESH, S_FRESH)

    tenants = bytes([3, 0, 0])
    for t in (s_raw("a"), s_raw("b"), S_EMPTY):
        tenants += op_many(64, t, s_raw("m"), S_POD) + op_estimate(t, e_query([(EQ, S_NAME, s_raw("m"))]))
    tenants += op_configure(0) + op_estimate(s_raw("a"), e_query([(EQ, S_NAME, s_raw("m"))]))
    return {"typical-kube-pods": typical, "hostile-labels-small-budget": hostile, "three-tenants": tenants}


TARGETS = {
    "request": seeds_request,
    "scan": seeds_scan,
    "frame": seeds_frame,
    "conf": seeds_conf,
    "selector": seeds_selector,
    "estimator": seeds_estimator,
}


def main():
    check = "--check" in sys.argv[1:]
    differ = []
    total = 0
    for target, make in TARGETS.items():
        seeds = make()
        d = os.path.join(HERE, "corpus", target)
        if check:
            have = set(os.listdir(d)) if os.path.isdir(d) else set()
            if have != set(seeds):
                differ.append("%s: files %s" % (target, sorted(have ^ set(seeds))))
            for name, data in seeds.items():
                p = os.path.join(d, name)
                if os.path.exists(p):
                    with open(p, "rb") as f:
                        if f.read() != data:
                            differ.append("%s/%s" % (target, name))
            continue
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            total += len(data)
        print("%-10s %3d seeds, %6d bytes" % (target, len(seeds), sum(len(v) for v in seeds.values())))
    if check:
        if differ:
            print("corpus differs from make_seeds.py:\n  " + "\n  ".join(differ))
            return 1
        print("corpus up to date")
        return 0
    print("total %d bytes" % total)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""promrr: Prometheus remote-read wire formats for promguard's integration and e2e tests.

Standard library only. Covers:
  * snappy block format: encode (literals only, valid for any decoder) and full decode;
  * protobuf: a generic field parser/encoder plus the remote-read messages
    (ReadRequest, ReadResponse, ChunkedReadResponse), field numbers from prompb/*.proto;
  * STREAMED_XOR_CHUNKS framing: uvarint length, CRC-32C big-endian, message.

Run ``python3 tests/lib/promrr.py`` for the self-test, which round-trips the captured
vectors in tests/vectors/ and checks the counts listed in tests/vectors/README.md.
"""

import os
import struct
import sys

# Enum values (prompb/types.proto, prompb/remote.proto).
EQ, NEQ, RE, NRE = 0, 1, 2, 3
SAMPLES, STREAMED_XOR_CHUNKS = 0, 1
CHUNK_XOR = 1

WT_VARINT, WT_I64, WT_LEN, WT_I32 = 0, 1, 2, 5

STREAMED_CONTENT_TYPE = "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"
SAMPLES_CONTENT_TYPE = "application/x-protobuf"


class WireError(ValueError):
    """Malformed snappy, protobuf or frame data."""


# ---- varints ------------------------------------------------------------------------------

def uvarint(n):
    """Encode a non-negative int as LEB128; negative int64 values use two's complement."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_uvarint(buf, pos):
    """Decode a uvarint at buf[pos:]; return (value, new_pos). Raises WireError."""
    value = shift = 0
    for i in range(10):
        if pos + i >= len(buf):
            raise WireError("truncated varint at byte %d" % pos)
        b = buf[pos + i]
        if i == 9 and b > 1:
            raise WireError("bad varint at byte %d" % pos)
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos + i + 1
    raise WireError("bad varint at byte %d" % pos)


def to_int64(u):
    """Reinterpret a uint64 varint value as int64."""
    return u - (1 << 64) if u >= 1 << 63 else u


# ---- snappy (block format) ------------------------------------------------------------------

def snappy_encode(data):
    """Snappy block: length header plus literal elements only (no back-references)."""
    data = bytes(data)
    out = bytearray(uvarint(len(data)))
    for i in range(0, len(data), 65536):
        chunk = data[i:i + 65536]
        n = len(chunk) - 1
        if n < 60:
            out.append(n << 2)
        elif n < 256:
            out += bytes([60 << 2, n])
        else:
            out += bytes([61 << 2]) + struct.pack("<H", n)
        out += chunk
    return bytes(out)


def snappy_decode(buf, max_len=None):
    """Decode a snappy block (literals and 1/2/4-byte-offset copies). Raises WireError."""
    buf = bytes(buf)
    want, pos = read_uvarint(buf, 0)
    if max_len is not None and want > max_len:
        raise WireError("snappy: decoded length %d exceeds limit %d" % (want, max_len))
    out = bytearray()
    while pos < len(buf):
        tag = buf[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:
            n = tag >> 2
            if n >= 60:
                extra = n - 59
                if pos + extra > len(buf):
                    raise WireError("snappy: truncated literal length")
                n = int.from_bytes(buf[pos:pos + extra], "little")
                pos += extra
            n += 1
            if pos + n > len(buf):
                raise WireError("snappy: truncated literal")
            out += buf[pos:pos + n]
            pos += n
            continue
        if kind == 1:
            if pos + 1 > len(buf):
                raise WireError("snappy: truncated copy")
            length = 4 + ((tag >> 2) & 7)
            offset = ((tag >> 5) << 8) | buf[pos]
            pos += 1
        else:
            width = 2 if kind == 2 else 4
            if pos + width > len(buf):
                raise WireError("snappy: truncated copy")
            length = (tag >> 2) + 1
            offset = int.from_bytes(buf[pos:pos + width], "little")
            pos += width
        if offset == 0 or offset > len(out):
            raise WireError("snappy: bad copy offset %d at output byte %d" % (offset, len(out)))
        for _ in range(length):  # byte by byte: copies may overlap their own output
            out.append(out[-offset])
    if len(out) != want:
        raise WireError("snappy: decoded %d bytes, header says %d" % (len(out), want))
    return bytes(out)


# ---- CRC-32C ------------------------------------------------------------------------------------

def _crc_table():
    table = []
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli) of data, continuing from crc."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


# ---- generic protobuf ------------------------------------------------------------------------------

def parse_fields(buf):
    """Parse one message into [(number, wire_type, value)]: int for VARINT/I64/I32, bytes for LEN."""
    buf = bytes(buf)
    fields, pos = [], 0
    while pos < len(buf):
        key, pos = read_uvarint(buf, pos)
        number, wt = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0 at byte %d" % pos)
        if wt == WT_VARINT:
            value, pos = read_uvarint(buf, pos)
        elif wt == WT_I64 or wt == WT_I32:
            size = 8 if wt == WT_I64 else 4
            if pos + size > len(buf):
                raise WireError("truncated fixed field %d" % number)
            value = int.from_bytes(buf[pos:pos + size], "little")
            pos += size
        elif wt == WT_LEN:
            n, pos = read_uvarint(buf, pos)
            if pos + n > len(buf):
                raise WireError("field %d length %d runs past the message" % (number, n))
            value = buf[pos:pos + n]
            pos += n
        else:
            raise WireError("invalid wire type %d for field %d" % (wt, number))
        fields.append((number, wt, value))
    return fields


def encode_fields(fields):
    """Inverse of parse_fields."""
    out = bytearray()
    for number, wt, value in fields:
        out += uvarint(number << 3 | wt)
        if wt == WT_VARINT:
            out += uvarint(value)
        elif wt == WT_I64:
            out += value.to_bytes(8, "little")
        elif wt == WT_I32:
            out += value.to_bytes(4, "little")
        else:
            out += uvarint(len(value)) + bytes(value)
    return bytes(out)


def _len(number, payload):
    return uvarint(number << 3 | WT_LEN) + uvarint(len(payload)) + payload


def _varint(number, value):
    """proto3: zero values are omitted, as Go does."""
    return uvarint(number << 3 | WT_VARINT) + uvarint(value) if value else b""


def _double(number, value):
    return uvarint(number << 3 | WT_I64) + struct.pack("<d", value)


def _str(number, s):
    data = s.encode() if isinstance(s, str) else bytes(s)
    return _len(number, data) if data else b""


# ---- ReadRequest --------------------------------------------------------------------------------

def encode_labels(labels, number=1):
    """Repeated Label {1 name, 2 value} as field <number>."""
    return b"".join(_len(number, _str(1, n) + _str(2, v)) for n, v in labels)


def encode_read_request(queries, accepted=None, packed=True, unknown=False):
    """Protobuf ReadRequest (not compressed).

    queries: dicts with start, end (ms), matchers [(type, name, value)] and optional hints
    {step_ms, func, start_ms, end_ms, grouping, by, range_ms}. accepted: list of response types,
    packed (Go's form) or one field per value. unknown: add fields no schema defines at every level.
    """
    out = bytearray()
    for q in queries:
        body = _varint(1, q["start"]) + _varint(2, q["end"])
        for mtype, name, value in q.get("matchers", []):
            m = _varint(1, mtype) + _str(2, name) + _str(3, value)
            if unknown:
                m += _varint(99, 7)
            body += _len(3, m)
        hints = q.get("hints")
        if hints is not None:
            h = (_varint(1, hints.get("step_ms", 0)) + _str(2, hints.get("func", "")) +
                 _varint(3, hints.get("start_ms", 0)) + _varint(4, hints.get("end_ms", 0)) +
                 b"".join(_str(5, g) for g in hints.get("grouping", [])) +
                 _varint(6, 1 if hints.get("by") else 0) + _varint(7, hints.get("range_ms", 0)))
            body += _len(4, h)
        if unknown:
            body += _len(50, b"opaque") + uvarint(51 << 3 | WT_I32) + b"\x01\x02\x03\x04"
        out += _len(1, body)
    if accepted:
        if packed:
            out += _len(2, b"".join(uvarint(t) for t in accepted))
        else:
            out += b"".join(uvarint(2 << 3 | WT_VARINT) + uvarint(t) for t in accepted)
    if unknown:
        out += uvarint(1000 << 3 | WT_I64) + b"\0" * 8
    return bytes(out)


def encode_read_request_body(queries, **kw):
    """Snappy-compressed ReadRequest, as sent on the wire."""
    return snappy_encode(encode_read_request(queries, **kw))


def decode_read_request(raw):
    """Parse a protobuf ReadRequest into {queries: [...], accepted: [...]}."""
    req = {"queries": [], "accepted": []}
    for number, wt, value in parse_fields(raw):
        if number == 1 and wt == WT_LEN:
            q = {"start": 0, "end": 0, "matchers": [], "hints": None}
            for n, w, v in parse_fields(value):
                if n in (1, 2) and w == WT_VARINT:
                    q["start" if n == 1 else "end"] = to_int64(v)
                elif n == 3 and w == WT_LEN:
                    m = {1: 0, 2: b"", 3: b""}
                    m.update({fn: fv for fn, fw, fv in parse_fields(v) if fn in (1, 2, 3)})
                    q["matchers"].append((m[1], m[2].decode(), m[3].decode()))
                elif n == 4 and w == WT_LEN:
                    h = {"step_ms": 0, "func": "", "start_ms": 0, "end_ms": 0, "grouping": [], "by": False,
                         "range_ms": 0}
                    names = {1: "step_ms", 3: "start_ms", 4: "end_ms", 7: "range_ms"}
                    for fn, fw, fv in parse_fields(v):
                        if fn in names:
                            h[names[fn]] = to_int64(fv)
                        elif fn == 2:
                            h["func"] = fv.decode()
                        elif fn == 5:
                            h["grouping"].append(fv.decode())
                        elif fn == 6:
                            h["by"] = bool(fv)
                    q["hints"] = h
            req["queries"].append(q)
        elif number == 2 and wt == WT_LEN:
            pos = 0
            while pos < len(value):
                t, pos = read_uvarint(value, pos)
                req["accepted"].append(t)
        elif number == 2 and wt == WT_VARINT:
            req["accepted"].append(value)
    return req


# ---- ReadResponse (SAMPLES) ---------------------------------------------------------------------

def encode_read_response(results):
    """Protobuf ReadResponse. results: per query, a list of series dicts with labels [(n, v)],
    samples [(timestamp_ms, value)] and optionally histograms (a count of empty Histogram entries)."""
    out = bytearray()
    for series_list in results:
        qr = bytearray()
        for s in series_list:
            ts = encode_labels(s.get("labels", []), 1)
            for t, v in s.get("samples", []):
                ts += _len(2, _double(1, v) + _varint(2, t))
            ts += b"".join(_len(4, b"") for _ in range(s.get("histograms", 0)))
            qr += _len(1, ts)
        out += _len(1, bytes(qr))
    return bytes(out)


def read_response_counts(raw):
    """Per QueryResult: {series, samples, histograms, bytes} of a decompressed ReadResponse."""
    counts = []
    for number, wt, value in parse_fields(raw):
        if number != 1 or wt != WT_LEN:
            continue
        c = {"series": 0, "samples": 0, "histograms": 0, "bytes": len(value)}
        for n, w, series in parse_fields(value):
            if n != 1 or w != WT_LEN:
                continue
            c["series"] += 1
            for fn, fw, _ in parse_fields(series):
                if fn == 2 and fw == WT_LEN:
                    c["samples"] += 1
                elif fn == 4 and fw == WT_LEN:
                    c["histograms"] += 1
        counts.append(c)
    return counts


# ---- ChunkedReadResponse frames (STREAMED_XOR_CHUNKS) --------------------------------------------

def encode_chunked_message(query_index, series):
    """ChunkedReadResponse. series: list of (labels [(n, v)], chunks [(min_ms, max_ms, type, data)])."""
    out = bytearray()
    for labels, chunks in series:
        cs = encode_labels(labels, 1)
        for mint, maxt, ctype, data in chunks:
            cs += _len(2, _varint(1, mint) + _varint(2, maxt) + _varint(3, ctype) + _str(4, data))
        out += _len(1, cs)
    return bytes(out) + _varint(2, query_index)


def frame(message, crc=None):
    """One stream frame around an encoded message; crc overrides the checksum (for corruption tests)."""
    crc = crc32c(message) if crc is None else crc
    return uvarint(len(message)) + struct.pack(">I", crc) + message


def encode_chunked_frame(query_index, labels, chunks):
    """A frame holding one ChunkedSeries, as Prometheus sends it."""
    return frame(encode_chunked_message(query_index, [(labels, chunks)]))


def split_frames(data, max_frame=50_000_000):
    """Split a stream into messages, checking length and CRC. Raises WireError on bad data."""
    data, pos, frames = bytes(data), 0, []
    while pos < len(data):
        try:
            n, body = read_uvarint(data, pos)
        except WireError as e:
            raise WireError("frame %d: %s" % (len(frames), e))
        if n > max_frame:
            raise WireError("frame %d: message of %d bytes above limit %d" % (len(frames), n, max_frame))
        if body + 4 + n > len(data):
            raise WireError("frame %d: truncated (%d of %d bytes)" % (len(frames), len(data) - pos,
                                                                      body + 4 + n - pos))
        want = struct.unpack(">I", data[body:body + 4])[0]
        msg = data[body + 4:body + 4 + n]
        got = crc32c(msg)
        if got != want:
            raise WireError("frame %d: checksum mismatch: got 0x%08x want 0x%08x" % (len(frames), got, want))
        frames.append((data[pos:body + 4 + n], msg))
        pos = body + 4 + n
    return frames


def parse_chunked_stream(data, max_frame=50_000_000):
    """Per query_index: {series, chunks, bytes, frames}. A series continued in the next frame
    (same query_index and labels) counts once, as in proto/frame.c."""
    counts, prev = {}, None
    for whole, msg in split_frames(data, max_frame):
        qi, series_labels, chunks = 0, [], 0
        for number, wt, value in parse_fields(msg):
            if number == 1 and wt == WT_LEN:
                labels = tuple(v for n, w, v in parse_fields(value) if n == 1)
                chunks += sum(1 for n, w, v in parse_fields(value) if n == 2)
                series_labels.append(labels)
            elif number == 2 and wt == WT_VARINT:
                qi = to_int64(value)
        c = counts.setdefault(qi, {"series": 0, "chunks": 0, "bytes": 0, "frames": 0})
        for labels in series_labels:
            if (qi, labels) != prev:
                c["series"] += 1
            prev = (qi, labels)
        c["chunks"] += chunks
        c["bytes"] += len(whole)
        c["frames"] += 1
    return counts


# ---- self-test ----------------------------------------------------------------------------------

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "vectors")

# Expected counts, kept in step with tests/vectors/README.md and tests/unit/test_proto_*.c.
EXPECT_REQUEST = {"queries": 1, "matchers": 1, "accepted": [], "func": "rate", "range_ms": 3600000}
EXPECT_SAMPLES = [{"series": 3, "samples": 720, "histograms": 0}]
EXPECT_STREAMED = {0: {"series": 3, "chunks": 6}}


def _read(name):
    with open(os.path.join(VECTORS, name), "rb") as f:
        return f.read()


def self_test():
    assert crc32c(b"123456789") == 0xE3069283
    assert snappy_decode(snappy_encode(b"")) == b""
    blob = bytes(range(256)) * 300
    assert snappy_decode(snappy_encode(blob)) == blob

    body = _read("request.snappy")
    raw = snappy_decode(body)
    assert snappy_decode(snappy_encode(raw)) == raw
    assert encode_fields(parse_fields(raw)) == raw
    req = decode_read_request(raw)
    q = req["queries"][0]
    assert len(req["queries"]) == EXPECT_REQUEST["queries"], req
    assert len(q["matchers"]) == EXPECT_REQUEST["matchers"], q
    assert req["accepted"] == EXPECT_REQUEST["accepted"], req
    assert q["hints"]["func"] == EXPECT_REQUEST["func"] and q["hints"]["range_ms"] == EXPECT_REQUEST["range_ms"]
    again = decode_read_request(encode_read_request(req["queries"], accepted=[STREAMED_XOR_CHUNKS, SAMPLES]))
    assert again["queries"] == req["queries"] and again["accepted"] == [1, 0]
    unpacked = decode_read_request(encode_read_request(req["queries"], accepted=[1, 0], packed=False, unknown=True))
    assert unpacked["accepted"] == [1, 0] and unpacked["queries"][0]["start"] == q["start"]

    resp = snappy_decode(_read("samples_response.snappy"))
    assert encode_fields(parse_fields(resp)) == resp
    counts = read_response_counts(resp)
    assert [{k: c[k] for k in ("series", "samples", "histograms")} for c in counts] == EXPECT_SAMPLES, counts
    synth = encode_read_response([[{"labels": [("__name__", "a")], "samples": [(1, 1.0), (2, 2.0)],
                                    "histograms": 1}], []])
    assert [(c["series"], c["samples"], c["histograms"]) for c in read_response_counts(synth)] == [(1, 2, 1), (0, 0, 0)]

    stream = _read("streamed_response.bin")
    frames = split_frames(stream)
    assert b"".join(frame(encode_fields(parse_fields(m))) for _, m in frames) == stream
    counts = parse_chunked_stream(stream)
    assert {qi: {k: c[k] for k in ("series", "chunks")} for qi, c in counts.items()} == EXPECT_STREAMED, counts
    assert sum(c["bytes"] for c in counts.values()) == len(stream)
    for bad in (stream[:-1], stream[:5] + bytes([stream[5] ^ 1]) + stream[6:]):
        try:
            parse_chunked_stream(bad)
        except WireError:
            continue
        raise AssertionError("corrupt stream accepted")
    split = (encode_chunked_frame(0, [("__name__", "x")], [(0, 1, CHUNK_XOR, b"\0")]) +
             encode_chunked_frame(0, [("__name__", "x")], [(2, 3, CHUNK_XOR, b"\0")]))
    assert parse_chunked_stream(split)[0]["series"] == 1
    print("promrr self-test ok: %d request bytes, %d samples, %d frames" % (
        len(body), EXPECT_SAMPLES[0]["samples"], len(frames)))


if __name__ == "__main__":
    try:
        self_test()
    except (AssertionError, WireError) as e:
        print("promrr self-test FAILED: %r" % (e,), file=sys.stderr)
        sys.exit(1)

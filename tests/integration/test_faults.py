"""The fault suite (issue 6): promguard against a store and clients that fail in every way we know.

Every test starts its own promguard (and, where the store must start from zero or die, its own
store), provokes one family of faults, and asserts three things:

  1. what the client gets: the status, and the exact one-line body wherever promguard answers
     itself (a stream that breaks after its head is cut instead: no clean chunked end);
  2. the counters: the deltas of promguard_requests_total{code},
     promguard_upstream_errors_total{kind}, promguard_upstream_retries_total{kind},
     promguard_rejections_total{tenant,reason}, promguard_client_timeouts_total{kind} and
     promguard_queue_exits_total{outcome} are exactly the expected ones (a family not named must
     not move), plus what the case is about (queue, connections, the store's own /stats);
  3. afterwards the pool's in_use_bytes and reserved_bytes (GET /api/v1/status "pool") and the
     in-flight gauge return to 0, promguard still serves a read, and it exits 0 on SIGTERM.

Cases: the store down at start, dying mid-stream (and a real SIGKILL), hanging (before and inside
a response), sending garbage, truncated frames or a bad CRC; a SAMPLES body above
limits.max_response_bytes; clients that hang up with their body half-sent, while the store works,
while queued and mid-stream; slowloris heads and bodies (client.request_timeout, 408) and readers
that stop reading (client.write_timeout; one that reads slowly but steadily is kept); 10,000 idle connections against RLIMIT_NOFILE=256 (accept
pauses on EMFILE without spinning, and resumes); oversized heads (431); hostile tenant headers
(400, tenant="invalid"); an invalid reload under load (400 listing every error, nothing changes);
SIGTERM while streams run (they finish cleanly, new connections are refused, exit 0).

Under valgrind (PROMGUARD_VALGRIND=1) deadlines are scaled by H.scaled(), and latency bounds by 3.
"""

import hashlib
import json
import os
import re
import resource
import select
import signal
import socket
import struct
import subprocess
import threading
import time
import unittest

import harness as H
from test_queue import Call, raw_read_request, read_raw_response
from test_shutdown import Background

# every test: no probes (the store sees only the reads a test sends), a queue deadline of 1 s for
# retries, and client timeouts short enough to watch (idle connections are kept a minute)
BASE = {
    "log_level": "info",
    "shutdown_grace": "10s",
    "estimator": {"unknown": "admit"},
    "upstream": {"timeout": "20s"},
    "queue": {"max_wait": "1s"},
    "client": {"request_timeout": "1s", "idle_timeout": "1m", "write_timeout": "1s"},
}

SMALL = {"series": 3, "samples": 4}              # a read that must always work: [(3, 12)]
# ~39 MB of frames: more than all the socket buffers between the store and a client that stopped
# reading can hold (tcp_rmem/tcp_wmem autotuning reaches tens of MB), so the store must be paused
HUGE_STREAM = {"series": 2000, "samples": 20000}
BIG_SAMPLES = {"series": 5000, "samples": 240}   # ~7.7 MiB SAMPLES body
REQUEST_TIMEOUT_LINE = "promguard: request timeout: no complete request within 1000ms (client.request_timeout)\n"
RST = struct.pack("ii", 1, 0)                    # SO_LINGER on, 0 s: close() sends a reset

# the families whose every series must move exactly as a test says: name -> labels of the key
COUNTED = {
    "promguard_requests_total": ("code",),
    "promguard_upstream_errors_total": ("kind",),
    "promguard_upstream_retries_total": ("kind",),
    "promguard_rejections_total": ("tenant", "reason"),
    "promguard_client_timeouts_total": ("kind",),
    "promguard_queue_exits_total": ("outcome",),
}


def moved(before, after, name):
    """{label value (or "tenant/reason"): delta} of the series of <name> that changed."""
    keys = COUNTED[name]
    out = {}
    for (n, ls), v in list(after.items()) + [(k, 0.0) for k in before if k not in after]:
        if n != name:
            continue
        d = v - before.get((n, ls), 0.0)
        if d:
            labels = dict(ls)
            out["/".join(labels.get(k, "") for k in keys)] = int(d) if d == int(d) else d
    return out


def rst_close(sock):
    """Close <sock> with a reset, as a client that crashed or gave up does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
    except OSError:
        pass
    sock.close()


def send_trickle(sock, data, interval, deadline):
    """Send <data> one byte every <interval> s until the peer answers (the socket turns readable)
    or <deadline> (monotonic) passes. Returns the number of bytes sent."""
    sent = 0
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], interval)
        if readable:
            break
        if sent < len(data):
            try:
                sock.sendall(data[sent:sent + 1])
            except OSError:
                break
            sent += 1
    return sent


class FaultsTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.store = H.FakeStore.start(cls)

    # ---- the three kinds of assertions ------------------------------------------------------

    def start(self, config=None, store=None, **kw):
        """promguard on <store> (the shared one by default) with BASE + <config>, and a snapshot of
        its counters (self.before)."""
        store = store or self.store
        pg = H.AdmissionPromguard.start(self, store.url, H.merge(BASE, config or {}), **kw)
        self.before = pg.metrics()
        return pg

    def assert_counters(self, pg, requests, upstream_errors=None, retries=None, rejections=None,
                        client_timeouts=None, queue_exits=None):
        """Every COUNTED family moved by exactly what is given ({} or None: not at all) since start();
        returns the metrics read."""
        after = pg.metrics()
        want = {"promguard_requests_total": requests,
                "promguard_upstream_errors_total": upstream_errors,
                "promguard_upstream_retries_total": retries,
                "promguard_rejections_total": rejections,
                "promguard_client_timeouts_total": client_timeouts,
                "promguard_queue_exits_total": queue_exits}
        got = {name: moved(self.before, after, name) for name in COUNTED}
        self.assertEqual(got, {name: dict(w or {}) for name, w in want.items()}, "counter deltas")
        return after

    def pool_status(self, pg):
        st = json.loads(pg.admin_get("/api/v1/status").body)
        return st["pool"], st["counters"]["inflight"]

    def assert_drained(self, pg):
        """The pool's in_use_bytes and reserved_bytes, its waiters and the in-flight count return to 0."""
        def drained():
            pool, inflight = self.pool_status(pg)
            figures = (pool["in_use_bytes"], pool["reserved_bytes"], pool["waiters"], inflight)
            return figures == (0, 0, 0, 0) or (False, figures)
        H.wait_until(lambda: drained() is True, H.scaled(5), 0.05,
                     "pool in_use_bytes, reserved_bytes, waiters and inflight back to 0")
        self.assertEqual(H.metric(pg.metrics(), "promguard_inflight_queries"), 0)

    def assert_serves(self, pg):
        r = pg.post_read(H.read_body(SMALL), timeout=H.scaled(10))
        self.assertEqual(r.status, 200, f"promguard stopped serving: {r}")
        self.assertEqual(H.samples_counts(r.body), [(3, 12)])

    def finish(self, pg):
        """(3): drained, still serving, exit 0 on SIGTERM (stop() asserts the exit code, and under
        valgrind an empty report)."""
        self.assert_drained(pg)
        self.assert_serves(pg)
        self.assertIsNone(pg.proc.poll(), "promguard died")
        pg.stop()

    # ---- small helpers ------------------------------------------------------------------------

    def direct_stream(self, labels):
        """The shared store's own answer to a streamed read: (sha256, frames per query, length)."""
        r = H.raw_request(self.store.port, "POST", "/api/v1/read", H.read_body(labels, streamed=True), H.PROM_HEADERS,
                          timeout=30)
        self.assertTrue(r.clean_eof)
        return hashlib.sha256(r.body).hexdigest(), H.stream_counts(r.body), len(r.body)

    def assert_cut(self, via, direct_body):
        """A stream promguard had to break off: 200, no clean end, the store's bytes up to the cut."""
        self.assertEqual(via.status, 200, via)
        self.assertFalse(via.clean_eof, "the client got a clean end for a stream that broke")
        self.assertEqual(via.body, direct_body[:len(via.body)], "relayed bytes differ from the store's")

    def wait_metric(self, pg, name, value, **labels):
        H.wait_until(lambda: H.metric_sum(pg.metrics(), name, **labels) - H.metric_sum(self.before, name, **labels)
                     >= value, H.scaled(5), 0.02, f"{name}{labels or ''} to grow by {value}")

    def steady_reader(self, pg, labels):
        """A streamed read in a thread, read steadily but slowly (16 KiB every 12 ms, ~1.3 MB/s,
        slower than the kernel's send buffer drains in client.write_timeout=1s): a Background whose
        .result is (response, sha256 of the body), and an Event set at its first byte whose .bytes
        counts what arrived so far."""
        started = threading.Event()
        started.bytes = 0
        h = hashlib.sha256()

        def on_data(d):
            h.update(d)
            started.bytes += len(d)
            started.set()

        def read():
            r = H.raw_request(pg.port, "POST", "/api/v1/read", H.read_body(labels, streamed=True), H.PROM_HEADERS,
                              rcvbuf=16384, read_size=16384, pause=0.012, on_data=on_data, timeout=H.scaled(30))
            return r, h.hexdigest()
        return Background(read), started

    def assert_whole_stream(self, bg, sha):
        self.assertTrue(bg.join(H.scaled(30)), "a stream never finished")
        self.assertIsNone(bg.error, bg.error)
        r, got = bg.result
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.clean_eof, "a stream was cut")
        self.assertEqual(got, sha, "a stream differs from the store's bytes")

    def open_request(self, pg, body, headers=None):
        """A connection that has sent a whole remote read and does not read the answer yet."""
        s = socket.create_connection((H.HOST, pg.port), timeout=H.scaled(10))
        self.addCleanup(s.close)
        s.sendall(raw_read_request(pg, body, headers))
        return s

    # ---- the store -------------------------------------------------------------------------

    def test_store_down_at_start_is_not_ready_retried_then_502_and_served_once_up(self):
        port = H.free_port()
        pg = self.start(store=None, config={"upstream": {"url": f"http://{H.HOST}:{port}/api/v1/read"}})
        r = pg.admin_get("/-/ready")
        self.assertEqual((r.status, r.text), (503, f"promguard: not ready: store unreachable ({H.HOST}:{port})\n"))
        self.assertFalse(json.loads(pg.admin_get("/api/v1/status").body)["upstream"]["reachable"])

        tg = H.tag()
        r = pg.post_read(H.read_body(dict(SMALL, tag=tg)), timeout=H.scaled(10))
        self.assertEqual(r.status, 502, r)
        self.assertEqual(H.decision(r)[0], "admit")
        m = re.fullmatch(rf"promguard: upstream connection refused: {re.escape(H.HOST)}:{port} \(Connection refused\) "
                         r"\((\d+) retries; (?:no retry left within queue\.max_wait=1s|the next would start past "
                         r"queue\.max_wait)\)\n", r.text)
        self.assertIsNotNone(m, r.text)
        n = int(m.group(1))
        self.assertGreaterEqual(n, 2, r.text)  # 50 ms doubling within 1 s
        # retries wait in the queue: it ends at the deadline (timeout), or when no retry fits (done)
        exits = {"timeout": 1} if "no retry left" in r.text else {"done": 1}
        self.assert_counters(pg, {"502": 1}, upstream_errors={"refused": n + 1}, retries={"refused": n},
                             queue_exits=exits)

        # the store comes up on that port: ready within the 1 s reachability probe, and served
        store = H.FakeStore.start(self, port=port)
        H.wait_until(lambda: pg.admin_get("/-/ready").status == 200, H.scaled(5), 0.05, "/-/ready 200")
        self.assertEqual(pg.admin_get("/-/ready").text, "promguard is ready.\n")
        r = pg.post_read(H.read_body(dict(SMALL, tag=tg)), timeout=H.scaled(10))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(H.samples_counts(r.body), [(3, 12)])
        self.assertEqual(store.tag(tg)["count"], 1, "the store saw a read it was down for")
        self.assert_counters(pg, {"502": 1, "200": 1}, upstream_errors={"refused": n + 1}, retries={"refused": n},
                             queue_exits=exits)
        self.finish(pg)

    def test_store_dying_mid_stream_cuts_it_and_a_dying_samples_body_is_retried(self):
        store = H.FakeStore.start(self)
        pg = self.start(store=store)
        # a stream the store breaks off after 30 frames: relayed, then cut, never retried
        dying = {"mode": "die_midstream", "series": 100, "samples": 2000, "frames": 30, "tag": H.tag()}
        direct = H.raw_request(store.port, "POST", "/api/v1/read", H.read_body(dying, streamed=True), H.PROM_HEADERS)
        via = H.raw_request(pg.port, "POST", "/api/v1/read", H.read_body(dying, streamed=True), H.PROM_HEADERS,
                            timeout=H.scaled(15))
        self.assert_cut(via, direct.body)
        self.assertEqual(store.tag(dying["tag"])["count"], 2, "a stream already relayed was retried")  # + direct
        # a SAMPLES body cut midway the first time: held whole, nothing relayed, so retried to a 200
        once = {"series": 300, "samples": 50, "tag": H.tag(), "fail_first": 1, "fail_mode": "die_midstream"}
        r = pg.post_read(H.read_body(once), timeout=H.scaled(10))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(H.samples_counts(r.body), [(300, 15000)])
        self.assertEqual(store.tag(once["tag"])["count"], 2)
        self.assert_counters(pg, {"200": 2}, upstream_errors={"reset": 2}, retries={"reset": 1},
                             queue_exits={"done": 1})

        # the store process itself dies (SIGKILL) in the middle of a stream (10 frames sent, then it
        # waits): promguard sees the connection end mid-response and cuts the client's stream
        labels = {"mode": "stall", "series": 100, "samples": 2000, "frames": 10}
        walker = H.FrameWalker()

        def on_data(d):
            walker.feed(d)
            if walker.frames == 10 and walker.finish() and store.proc.poll() is None:
                store.kill()  # all it will send has arrived: now it dies

        via = H.raw_request(pg.port, "POST", "/api/v1/read", H.read_body(labels, streamed=True), H.PROM_HEADERS,
                            timeout=H.scaled(15), on_data=on_data)
        self.assertEqual(via.status, 200, via)
        self.assertFalse(via.clean_eof, "a stream whose store was killed ended cleanly")
        self.assertEqual(walker.frames, 10)
        self.assert_counters(pg, {"200": 3}, upstream_errors={"reset": 3}, retries={"reset": 1},
                             queue_exits={"done": 1})
        H.FakeStore.start(self, port=store.port)  # a store restarted on its port: served again
        self.finish(pg)

    def test_store_hanging_is_504_at_upstream_timeout_and_a_stalled_stream_is_cut(self):
        store = H.FakeStore.start(self)
        pg = self.start({"upstream": {"timeout": "1s"}}, store=store)
        t0 = time.monotonic()
        r = pg.post_read(H.read_body({"mode": "hang"}), timeout=H.scaled(10))
        elapsed = time.monotonic() - t0
        self.assertEqual((r.status, r.text), (504, "promguard: upstream timed out after 1s (upstream.timeout)\n"), r)
        self.assertEqual(H.decision(r)[0], "admit")
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, H.scaled(3.0, by=3))
        # a SAMPLES body that stops halfway: nothing was relayed, so the same 504
        r = pg.post_read(H.read_body({"mode": "stall", "series": 200, "samples": 200}), timeout=H.scaled(10))
        self.assertEqual((r.status, r.text), (504, "promguard: upstream timed out after 1s (upstream.timeout)\n"), r)
        # a stream that stops after 10 frames: relayed so far, then cut at the timeout
        stall = {"mode": "stall", "series": 100, "samples": 2000, "frames": 10}
        via = H.raw_request(pg.port, "POST", "/api/v1/read", H.read_body(stall, streamed=True), H.PROM_HEADERS,
                            timeout=H.scaled(10))
        self.assertEqual(via.status, 200, via)
        self.assertFalse(via.clean_eof)
        walker = H.FrameWalker()
        walker.feed(via.body)
        self.assertEqual(walker.frames, 10)
        self.assert_counters(pg, {"504": 2, "200": 1}, upstream_errors={"timeout": 3})
        # the store's side of all three was abandoned: promguard closed those connections
        H.wait_until(lambda: store.stats()["client_gone"] == 3 and store.stats()["reads_active"] == 0, H.scaled(5),
                     what="the store to see its three hanging reads abandoned")
        self.finish(pg)

    def test_store_sending_garbage_truncated_frames_or_a_bad_crc_is_502_or_a_cut_stream(self):
        pg = self.start()
        r = pg.post_read(H.read_body({"mode": "garbage"}))
        self.assertEqual((r.status, r.text), (502, "promguard: upstream snappy: decoded-length varint is longer than "
                                                   "64 bits\n"), r)
        r = pg.post_read(H.read_body({"mode": "truncated"}))
        self.assertEqual(r.status, 502, r)
        self.assertRegex(r.text, r"^promguard: upstream snappy: input ends inside the literal that starts at input "
                                 r"byte \d+\n$")
        streams = [{"mode": "bad_crc", "series": 100, "samples": 2000, "frame": 30},
                   {"mode": "truncated", "series": 100, "samples": 2000, "frames": 30},
                   {"mode": "garbage"}]
        for labels in streams:
            with self.subTest(**labels):
                body = H.read_body(labels, streamed=True)
                direct = H.raw_request(self.store.port, "POST", "/api/v1/read", body, H.PROM_HEADERS)
                self.assertTrue(direct.clean_eof)  # HTTP-clean: the corruption is in the frames
                via = H.raw_request(pg.port, "POST", "/api/v1/read", body, H.PROM_HEADERS, timeout=H.scaled(15))
                self.assert_cut(via, direct.body)
                if labels["mode"] == "bad_crc":
                    self.assertLess(len(via.body), len(direct.body), "the corrupt frame was relayed")
        self.assert_counters(pg, {"502": 2, "200": 3}, upstream_errors={"corrupt_response": 5})
        log = "\n".join(pg.log_lines("response cut"))
        for detail in ("checksum mismatch", "body ends after", "bad ChunkedReadResponse"):
            self.assertIn(detail, log)
        self.finish(pg)

    def test_samples_body_above_max_response_bytes_is_422_naming_the_key(self):
        pg = self.start({"limits": {"max_response_bytes": "64KiB"}})
        tg = H.tag()
        labels = {"series": 2000, "samples": 100, "tag": tg}  # ~1.4 MiB compressed
        sel = f'fake{{series="2000",samples="100",tag="{tg}"}}'
        rng = "[2023-11-14T22:13:20.000Z,2023-11-14T23:13:20.000Z]"
        r = pg.post_read(H.read_body(labels))
        parts = H.assert_rejected(self, r, "response_bytes", key="limits.max_response_bytes", limit="64KiB",
                                  kind="actual", source="default", selector=sel)
        self.assertEqual(r.text, f"promguard: query rejected: limits.max_response_bytes=64KiB actual {parts['value']} "
                                 f"for {sel} {rng} tenant=default (source=default)\n")
        self.assertGreater(int(parts["value"]), 64 << 10)
        # learned: the same selector is refused before the store is asked
        r = pg.post_read(H.read_body(labels))
        H.assert_rejected(self, r, "response_bytes", key="limits.max_response_bytes", kind="estimated",
                          value=parts["value"], source="recall")
        self.assertEqual(self.store.tag(tg)["count"], 1)
        self.assert_counters(pg, {"422": 2}, rejections={"default/response_bytes": 2})
        self.finish(pg)

    # ---- clients that go away ------------------------------------------------------------------

    def test_client_hanging_up_mid_request_body_or_while_the_store_works(self):
        store = H.FakeStore.start(self)
        pg = self.start(store=store)
        conns0 = H.metric(self.before, "promguard_client_connections", listener="read")
        body = H.read_body(dict(SMALL, tag=H.tag()))
        # half the body, then gone: the handler never sees it, the store never does
        s = socket.create_connection((H.HOST, pg.port), timeout=10)
        self.addCleanup(s.close)
        s.sendall(raw_read_request(pg, body)[:-(len(body) // 2)])
        H.wait_until(lambda: H.metric(pg.metrics(), "promguard_client_connections", listener="read") == conns0 + 1,
                     H.scaled(5), what="the half-sent request's connection")
        s.close()
        H.wait_until(lambda: H.metric(pg.metrics(), "promguard_client_connections", listener="read") == conns0,
                     H.scaled(5), what="the connection freed")
        self.assertEqual(store.reads(), 0)
        self.assert_counters(pg, {})
        # a whole request while the store works on it (it never answers), then gone: 499, and the
        # store's side is closed at once, long before upstream.timeout (20s)
        tg = H.tag()
        s = self.open_request(pg, H.read_body({"mode": "hang", "tag": tg}))
        H.wait_until(lambda: store.tag(tg)["count"] == 1, H.scaled(5), what="the read at the store")
        rst_close(s)
        H.wait_until(lambda: store.stats()["client_gone"] == 1, H.scaled(3), what="the store's read abandoned")
        self.assertEqual(store.stats()["reads_active"], 0)
        self.wait_metric(pg, "promguard_requests_total", 1, code="499")
        self.assert_counters(pg, {"499": 1})
        self.assertTrue(pg.log_lines("client went away"))
        self.finish(pg)

    def test_client_hanging_up_while_queued_never_reaches_the_store(self):
        store = H.FakeStore.start(self)
        pg = self.start({"limits": {"max_inflight": 1}, "queue": {"max_wait": "10s"}}, store=store)
        holder = Call(pg, {"mode": "delay", "delay_ms": 1500, "tag": "hold-" + H.tag()}, timeout=H.scaled(20)).go()
        H.wait_until(lambda: store.tag(holder.labels["tag"])["count"] == 1, H.scaled(5), what="the holder at the store")
        tg = "queued-" + H.tag()
        s = self.open_request(pg, H.read_body({"tag": tg}))
        self.wait_metric(pg, "promguard_queue_deferred_total", 1)
        self.assertEqual(H.queue_status(pg)["length"], 1)
        rst_close(s)
        self.wait_metric(pg, "promguard_requests_total", 1, code="499")
        self.assertEqual(H.queue_status(pg)["length"], 0, "the query stayed queued after its client left")
        r = holder.result(H.scaled(20))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(store.tag(tg)["count"], 0, "a query whose client left reached the store")
        self.assert_counters(pg, {"499": 1, "200": 1}, queue_exits={"cancelled": 1})
        self.finish(pg)

    def test_client_hanging_up_mid_stream_cancels_the_store_side(self):
        store = H.FakeStore.start(self)
        pg = self.start(store=store)
        s = self.open_request(pg, H.read_body(dict(HUGE_STREAM, tag=H.tag()), streamed=True))
        got = 0
        while got < 256 << 10:
            d = s.recv(65536)
            self.assertTrue(d, "the stream ended early")
            got += len(d)
        self.assertGreater(H.metric(pg.metrics(), "promguard_inflight_queries"), 0)
        rst_close(s)
        H.wait_until(lambda: store.stats()["client_gone"] == 1, H.scaled(5), what="the store's stream abandoned")
        self.assertEqual(store.stats()["reads_active"], 0)
        self.wait_metric(pg, "promguard_requests_total", 1, code="499")
        self.assert_counters(pg, {"499": 1})
        self.finish(pg)

    # ---- slow clients ------------------------------------------------------------------------

    def trickled(self, pg, prefix, data):
        """Send <prefix> at once, then <data> a byte every 100 ms until promguard answers:
        (bytes of <data> sent, status, body, seconds from the first byte)."""
        with socket.create_connection((H.HOST, pg.port), timeout=H.scaled(10)) as s:
            t0 = time.monotonic()
            s.sendall(prefix)
            sent = send_trickle(s, data, 0.1, t0 + H.scaled(6))
            status, text = read_raw_response(s, timeout=H.scaled(5))
            elapsed = time.monotonic() - t0
            try:
                self.assertEqual(s.recv(1), b"", "the connection stayed open after the 408")
            except ConnectionResetError:
                pass  # a trickled byte promguard no longer read: the close is a reset
        return sent, status, text, elapsed

    def test_slowloris_heads_and_bodies_get_408_at_request_timeout_while_others_are_served(self):
        pg = self.start()
        body = H.read_body(SMALL)
        whole = raw_read_request(pg, body)
        head = whole[:len(whole) - len(body)]
        slow = {"head": Background(lambda: self.trickled(pg, whole[:1], whole[1:])),
                "body": Background(lambda: self.trickled(pg, head, body))}
        # meanwhile other clients are served at once
        for _ in range(3):
            t0 = time.monotonic()
            r = pg.post_read(body, timeout=H.scaled(5))
            self.assertEqual(r.status, 200, r)
            self.assertLess(time.monotonic() - t0, H.scaled(0.5, by=3), "a normal client waited behind a slowloris")
            time.sleep(0.1)
        for name, bg in slow.items():
            self.assertTrue(bg.join(H.scaled(15)), f"{name} trickler still running")
            self.assertIsNone(bg.error, f"{name}: {bg.error!r}")
            sent, status, text, elapsed = bg.result
            self.assertEqual((status, text), (408, REQUEST_TIMEOUT_LINE), name)
            self.assertLess(sent, len(body), f"{name}: promguard waited for the whole trickled request")
            self.assertGreaterEqual(elapsed, 0.9, name)
            self.assertLess(elapsed, H.scaled(2.5, by=3), name)
        self.assert_counters(pg, {"408": 2, "200": 3}, rejections={"default/bad_request": 2},
                             client_timeouts={"request": 2})
        states = sorted(H.parse_log_line(ln).get("state") for ln in pg.log_lines("request timeout"))
        self.assertEqual(states, ["body", "head"])
        self.finish(pg)

    def test_reader_that_stops_reading_is_dropped_after_write_timeout(self):
        store = H.FakeStore.start(self)
        pg = self.start({"limits": {"max_response_bytes": "64MiB"}}, store=store)
        # meanwhile a client that reads steadily, only slowly, is kept (it was dropped before the
        # write timeout looked at the peer's acknowledgements, see write_progressed() in server.c)
        steady_labels = {"series": 200, "samples": 20000}
        sha, _, _ = self.direct_stream(steady_labels)
        steady, started = self.steady_reader(pg, steady_labels)
        self.assertTrue(started.wait(H.scaled(10)))
        stalled = []
        # a stream: promguard pauses the store, then gives up on the client; and a SAMPLES body,
        # answered whole and counted 200, stuck in the output buffer, then dropped
        for body in (H.read_body(HUGE_STREAM, streamed=True), H.read_body(BIG_SAMPLES)):
            s = socket.socket()
            self.addCleanup(s.close)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # a small window, no autotuning
            s.settimeout(H.scaled(10))
            s.connect((H.HOST, pg.port))
            s.sendall(raw_read_request(pg, body))
            self.assertTrue(s.recv(16384))  # the answer began; from now on this client reads nothing
            stalled.append(s)
        t0 = time.monotonic()
        self.wait_metric(pg, "promguard_client_timeouts_total", 2, kind="write")
        self.assertLess(time.monotonic() - t0, H.scaled(4, by=3))
        for s in stalled:  # dropped: what is left in the socket, then the end
            s.settimeout(H.scaled(5))
            try:
                while s.recv(1 << 20):
                    pass
            except ConnectionResetError:
                pass
            s.close()
        self.assert_whole_stream(steady, sha)
        H.wait_until(lambda: store.stats()["client_gone"] == 1 and store.stats()["reads_active"] == 0, H.scaled(5),
                     what="the store's stream abandoned")
        self.assertEqual(len(pg.log_lines("write timeout")), 2)
        self.assert_counters(pg, {"499": 1, "200": 2}, client_timeouts={"write": 2})
        self.finish(pg)

    # ---- descriptors ---------------------------------------------------------------------------

    def test_ten_thousand_idle_connections_pause_accept_on_emfile_without_spinning(self):
        n, nofile = 10_000, 256
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < n + 256:
            self.skipTest(f"the hard RLIMIT_NOFILE of the test process is {hard}: {n} connections need {n + 256}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        pg = self.start(nofile=nofile)
        socks = []

        def close_all():
            while socks:
                rst_close(socks.pop())
        self.addCleanup(close_all)
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)  # no TIME_WAIT left behind
            s.connect_ex((H.HOST, pg.port))
            socks.append(s)
        H.wait_until(lambda: [ln for ln in pg.log_lines("accept paused") if "listener=read" in ln], H.scaled(10), 0.1,
                     'msg="accept paused" for the read listener')
        kv = H.parse_log_line([ln for ln in pg.log_lines("accept paused") if "listener=read" in ln][0])
        self.assertEqual(kv.get("error"), "Too many open files")
        self.assertGreater(int(kv.get("open_connections", 0)), nofile // 2)
        self.assertGreaterEqual(len(os.listdir(f"/proc/{pg.pid}/fd")), nofile - 16, "promguard has descriptors to spare")
        # paused, not spinning: a couple of seconds cost almost no CPU
        cpu0, t0 = H.cpu_seconds(pg.pid), time.monotonic()
        time.sleep(2)
        cpu = H.cpu_seconds(pg.pid) - cpu0
        wall = time.monotonic() - t0
        self.assertLess(cpu, 0.25 * wall, f"promguard used {cpu:.2f}s of CPU in {wall:.1f}s while out of descriptors")
        self.assertIsNone(pg.proc.poll(), "promguard died out of descriptors")
        pauses = len([ln for ln in pg.log_lines("accept paused") if "listener=read" in ln])
        close_all()

        def resumed():
            lines = [ln for ln in pg.log_lines() if "listener=read" in ln and
                     ('msg="accept paused"' in ln or 'msg="accepting again"' in ln)]
            return lines and 'msg="accepting again"' in lines[-1]
        H.wait_until(resumed, H.scaled(10), 0.1, 'msg="accepting again" after the last "accept paused"')
        H.wait_until(lambda: H.metric(pg.metrics(), "promguard_client_connections", listener="read") == 0,
                     H.scaled(10), 0.1, "the idle connections freed")
        self.assert_counters(pg, {})  # idle connections: no request, no timeout
        print(f"\n  {n} idle connections, RLIMIT_NOFILE={nofile}: paused with {kv.get('open_connections')} open, "
              f"{pauses} pauses, {cpu:.3f}s CPU in {wall:.1f}s paused")
        self.finish(pg)

    # ---- hostile requests ----------------------------------------------------------------------

    def test_oversized_heads_are_431(self):
        pg = self.start()
        start = b"POST /api/v1/read HTTP/1.1\r\nHost: x\r\n"
        cases = [(b"".join(b"X-N%d: v\r\n" % i for i in range(200)), "more than 100 header fields"),
                 (b"X-Big: " + b"v" * (80 << 10) + b"\r\n", "header section over 65536 bytes")]
        for extra, why in cases:
            with self.subTest(why=why), socket.create_connection((H.HOST, pg.port), timeout=H.scaled(10)) as s:
                s.sendall(start + extra + b"Content-Length: 0\r\n\r\n")
                status, text = read_raw_response(s, H.scaled(10))
                self.assertEqual((status, text), (431, f"promguard: request header fields too large: {why}\n"))
        self.assert_counters(pg, {"431": 2}, rejections={"default/bad_request": 2})
        self.finish(pg)

    def test_hostile_tenant_header_is_400_counted_under_tenant_invalid(self):
        pg = self.start()
        charset = "only letters, digits and !-_.*'() are allowed"
        cases = [("t" * 129, "longer than 128 bytes"), ('a"b', charset), ("a b", charset), ("x{y}", charset),
                 ("a=b,c", charset), ("\u00e9t\u00e9".encode().decode("latin-1"), charset)]
        for tenant, why in cases:
            with self.subTest(why=why):
                r = pg.post_read(H.read_body(SMALL), headers={"X-Scope-OrgID": tenant})
                self.assertEqual((r.status, r.text),
                                 (400, f"promguard: bad request: invalid tenant in X-Scope-OrgID header: {why}\n"))
                self.assertEqual(H.decision(r), ("reject", {"reason": "bad_request", "estimate": "0",
                                                            "source": "default"}))
        # the longest allowed name, every allowed character
        ok = pg.post_read(H.read_body(SMALL), headers={"X-Scope-OrgID": "Az09!-_.*'()" + "t" * 116})
        self.assertEqual(ok.status, 200, ok)
        self.assert_counters(pg, {"400": len(cases), "200": 1}, rejections={"invalid/bad_request": len(cases)})
        metrics = pg.metrics_text()
        for tenant, _ in cases:
            self.assertNotIn(f'tenant="{tenant}"', metrics)
        self.finish(pg)

    # ---- configuration and lifecycle -----------------------------------------------------------

    def test_invalid_reload_under_load_is_400_with_every_error_and_changes_nothing(self):
        pg = self.start({"limits": {"max_series": 1000}})
        with open(pg.cfg_path) as f:
            good = f.read()
        # requests in flight across the reload, and a client reading all along
        slow = [Call(pg, {"mode": "delay", "delay_ms": 1000, "series": 4, "tag": H.tag()},
                     timeout=H.scaled(20)).go() for _ in range(4)]
        stop = threading.Event()
        served = []

        def steady():
            while not stop.is_set():
                served.append(pg.post_read(H.read_body(SMALL), timeout=H.scaled(10)))
        worker = Background(steady)
        H.wait_until(lambda: H.metric(pg.metrics(), "promguard_inflight_queries") >= 4, H.scaled(5), 0.02,
                     "the slow requests in flight")
        bad = (good.replace("max_series: 1000", "max_series: -5").replace('timeout: "20s"', 'timeout: "soon"')
               + "mode: bogus\n")
        pg.rewrite_config(text=bad)
        check = subprocess.run([os.environ["PROMGUARD_BIN"], "-c", pg.cfg_path, "--check-config"],
                               capture_output=True, text=True, timeout=30)
        self.assertEqual(check.returncode, 1, check)
        errors = [ln for ln in check.stderr.splitlines() if ln.startswith(pg.cfg_path + ":")]
        self.assertEqual(len(errors), 3, check.stderr)
        r = pg.reload(timeout=H.scaled(10))
        self.assertEqual(r.status, 400, r)
        self.assertEqual(r.text.splitlines(), errors, "the 400 does not list every error of the file")
        for key in ("limits.max_series", "upstream.timeout", "mode"):
            self.assertTrue(any(f": {key}: " in e for e in errors), errors)
        stop.set()
        self.assertTrue(worker.join(H.scaled(15)))
        for c in slow:
            r = c.result(H.scaled(20))
            self.assertEqual(r.status, 200, r)
            self.assertEqual(H.samples_counts(r.body), [(4, 40)])
        self.assertIsNone(worker.error)
        self.assertTrue(served)
        self.assertEqual({x.status for x in served}, {200})
        m = self.assert_counters(pg, {"200": len(slow) + len(served)})
        self.assertEqual(H.metric(m, "promguard_config_last_reload_successful"), 0)
        # the old config stays in force
        self.assertEqual(json.loads(pg.admin_get("/api/v1/status").body)["config"]["limits"]["max_series"], 1000)
        self.assertEqual(len(pg.log_lines("reload failed: old config kept")), 3)
        self.finish(pg)

    def test_sigterm_while_streams_run_drains_them_refuses_new_connections_and_exits_0(self):
        pg = self.start({"client": {"request_timeout": "30s"}, "shutdown_grace": "30s"})
        labels = {"series": 200, "samples": 20000}  # ~3.9 MiB each, read in ~5 s
        sha, frames, length = self.direct_stream(labels)
        requests0 = json.loads(pg.admin_get("/api/v1/status").body)["counters"]["requests"]
        readers, started = zip(*(self.steady_reader(pg, labels) for _ in range(3)))
        for ev in started:
            self.assertTrue(ev.wait(H.scaled(10)), "a stream did not start")
        # a connection that has begun a request when the signal comes: kept, and answered 503
        late = socket.create_connection((H.HOST, pg.port), timeout=H.scaled(10))
        self.addCleanup(late.close)
        late_req = raw_read_request(pg, H.read_body(SMALL))
        late.sendall(late_req[:20])
        # accepted and its bytes read (a connection with nothing read yet is idle: a drain closes it)
        H.wait_until(lambda: H.metric(pg.metrics(), "promguard_client_connections", listener="read") == 4,
                     H.scaled(5), 0.02, "the late connection accepted")
        time.sleep(H.scaled(0.2, by=3))
        pg.signal(signal.SIGTERM)
        got_at_term = [ev.bytes for ev in started]
        H.wait_until(lambda: H.connect_refused(pg.port), H.scaled(2), 0.05, "the listener closed after SIGTERM")
        # the three streams were running when the signal came: none had arrived whole
        self.assertTrue(all(0 < n < length for n in got_at_term), (got_at_term, length))
        r = pg.admin_get("/-/ready")
        self.assertEqual((r.status, r.text), (503, f"promguard: not ready: draining ({H.HOST}:{self.store.port})\n"))
        for bg in readers:  # drained: complete, clean, byte-exact
            self.assert_whole_stream(bg, sha)
        self.assertEqual(frames, {0: 200})
        # the late connection keeps promguard up: everything else is over, and nothing is held
        self.assert_drained(pg)
        self.assertIsNone(pg.proc.poll(), "exited with a connection open")
        self.assert_counters(pg, {"200": 3})
        late.sendall(late_req[20:])
        status, text = read_raw_response(late, H.scaled(10))
        self.assertEqual((status, text), (503, "promguard: draining: shutting down, retry on another instance\n"))
        self.assertEqual(pg.wait_exit(5), 0)
        stopped = pg.log_lines("stopped")
        self.assertEqual(len(stopped), 1, stopped)
        self.assertEqual(H.parse_log_line(stopped[0])["requests"], str(requests0 + 4))
        self.assertTrue(pg.log_lines("drained"))
        self.assertFalse(pg.log_lines("shutdown grace expired"))
        pg.stop()


if __name__ == "__main__":
    unittest.main()

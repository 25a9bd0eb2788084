"""The M3 incident replayed with small numbers (issue 4, "Storm test").

A store that answers fast, a few dozen clients that all ask at once for admitted queries with large
responses (SAMPLES bodies of several MiB, which promguard must hold whole, and streams), and read
them slowly through a small receive window. M3's allocate-on-empty pool followed the storm up to
250 GB; promguard's pool has a hard limit (pool.memory_limit: 32MiB here), so:

  * promguard's peak RSS (VmHWM) stays within memory_limit + OVERHEAD (stated below);
  * no request is lost: each client gets the store's exact bytes (checked against the store's own
    answer, whose counts promrr verifies), or a one-line 429 (reason queue_timeout, Retry-After)
    or 422 (reason response_bytes);
  * afterwards nothing is in use or reserved, no query is in flight, and each size class's free
    buffers are back between its watermarks.
"""

import hashlib
import json
import threading
import time
import unittest

import harness as H

MIB = 1 << 20
LIMIT = 32 * MIB

# The fixed overhead promguard may have on top of pool.memory_limit: memory that is not buffer
# memory. Measured on the 2-core CI box (RelWithDebInfo, glibc): an idle promguard with this config
# has VmRSS ~4.7 MiB (binary, libc/libevent/pcre2/snappy, estimator tables, the pre-filled free
# lists' headers). On top of that 8 MiB for what scales with connections rather than responses:
# ~50 client and ~50 store connections (bufferevents, parsed headers, decoded requests) and malloc
# fragmentation. IDLE_RSS_MAX keeps the first figure honest: the test measures it before the storm.
IDLE_RSS_MAX = 8 * MIB
OVERHEAD = 12 * MIB
RSS_BOUND = LIMIT + OVERHEAD

LOW, HIGH = 0.3, 0.6

CLIENT_TIMEOUT = 40          # per socket operation; a pool waiter gets its 429 well before
SLOW = {"rcvbuf": 32768, "read_size": 16384, "pause": 0.001}   # ~16 MB/s at most per client

# Distinct selectors: (name, labels, streamed). Sizes are the store's compressed bytes.
SAMPLES_3M = ("samples_3m", {"series": 4000, "samples": 120}, False)    # ~3.1 MiB, learned first
SAMPLES_8M = ("samples_8m", {"series": 5000, "samples": 240}, False)    # ~7.7 MiB, never seen before
SAMPLES_1M = ("samples_1m", {"series": 2000, "samples": 100}, False)    # ~1.4 MiB, never seen before
SAMPLES_SMALL = ("samples_small", {"series": 10, "samples": 10}, False)
STREAM_4M = ("stream_4m", {"series": 100, "samples": 40000}, True)      # ~3.9 MiB, learned first
STREAM_8M = ("stream_8m", {"series": 400, "samples": 20000}, True)      # ~7.8 MiB, never seen before
OVERSIZE = ("oversize", {"series": 60000, "samples": 120}, False)       # ~42 MiB: more than the limit

KINDS = [SAMPLES_3M, SAMPLES_8M, SAMPLES_1M, SAMPLES_SMALL, STREAM_4M, STREAM_8M]
STORM = [(SAMPLES_3M, 10), (SAMPLES_8M, 6), (SAMPLES_1M, 8), (SAMPLES_SMALL, 2), (STREAM_4M, 12), (STREAM_8M, 10)]

ONE_LINE_429_RE = r"^promguard: over capacity: [^\n]*\n$"


def body_of(kind):
    _, labels, streamed = kind
    return H.read_body(labels, streamed=streamed)


class Reference:
    """The store's own answer to one selector: sha256, length, and counts checked with promrr."""

    def __init__(self, tc, port, kind):
        name, labels, streamed = kind
        r = H.post_read(port, body_of(kind), timeout=60)
        tc.assertEqual(r.status, 200, f"{name} direct: {r}")
        self.sha = hashlib.sha256(r.body).hexdigest()
        self.length = len(r.body)
        series = int(labels["series"])
        if streamed:
            self.frames = H.stream_counts(r.body)  # every CRC checked
            tc.assertEqual(self.frames, {0: series}, f"{name}: the store's stream")
        else:
            tc.assertEqual(H.samples_counts(r.body), [(series, series * int(labels["samples"]))],
                           f"{name}: the store's SAMPLES body")
            self.frames = None


class Outcome:
    """What one client got: status, headers, how the body ended, its hash/length/frames, timing."""

    def __init__(self, kind):
        self.kind = kind
        self.resp = None
        self.error = None
        self.sha = hashlib.sha256()
        self.walker = H.FrameWalker()
        self.length = 0
        self.head = bytearray()       # the first bytes, for error lines
        self.elapsed = None

    def on_data(self, d):
        self.sha.update(d)
        self.length += len(d)
        if len(self.head) < 4096:
            self.head.extend(d[:4096 - len(self.head)])
        if self.kind[2]:
            self.walker.feed(d)

    @property
    def text(self):
        return bytes(self.head).decode("utf-8", "replace")

    def describe(self):
        if self.error is not None:
            return f"{self.kind[0]}: client error {self.error!r} after {self.elapsed:.1f}s"
        r = self.resp
        return (f"{self.kind[0]}: {r.status} clean_eof={r.clean_eof} bytes={self.length} "
                f"decision={r.header('X-Promguard-Decision')!r} after {self.elapsed:.1f}s {self.text[:200]!r}")


def run_client(port, kind, out, barrier, read_opts):
    try:
        barrier.wait(10)
    except threading.BrokenBarrierError:
        pass
    t0 = time.monotonic()
    try:
        out.resp = H.raw_request(port, "POST", "/api/v1/read", body_of(kind), H.PROM_HEADERS,
                                 timeout=CLIENT_TIMEOUT, on_data=out.on_data, **read_opts)
    except Exception as e:  # reported as a lost request
        out.error = e
    out.elapsed = time.monotonic() - t0


class Watcher:
    """In a thread: VmRSS of promguard every 20 ms, its pool status every 100 ms (largest
    in_use_bytes and waiters seen)."""

    def __init__(self, pg):
        self.pg = pg
        self.peak_rss = 0
        self.max_in_use = 0
        self.max_waiters = 0
        self.status_errors = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        n = 0
        while not self._stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, H.rss_bytes(self.pg.pid))
            except (OSError, KeyError):
                return
            if n % 5 == 0:
                try:
                    st = json.loads(self.pg.admin_get("/api/v1/status", timeout=5).body)
                    pool = st["pool"]
                    self.max_in_use = max(self.max_in_use, pool["in_use_bytes"])
                    # waiting for memory: in the deferral queue (admission) or at the pool (a body growing)
                    self.max_waiters = max(self.max_waiters, pool["waiters"] + st["queue"]["length"])
                except (OSError, ValueError, KeyError):
                    self.status_errors += 1
            n += 1
            self._stop.wait(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


class PoolStormTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.store = H.FakeStore.start(cls)
        cls.ref = {k[0]: Reference(cls._Helper(), cls.store.port, k) for k in KINDS}

    class _Helper(unittest.TestCase):
        """assert* methods for setUpClass."""

        def runTest(self):
            pass

    def start_pg(self, queue_max_wait="15s"):
        return H.Promguard.start(self, self.store.url, {
            "upstream": {"timeout": "30s"},
            "limits": {"max_inflight": 200},
            "pool": {"memory_limit": "32MiB", "low_watermark": LOW, "high_watermark": HIGH},
            "queue": {"max_wait": queue_max_wait},
        })

    # ---- checks shared by the tests -----------------------------------------------------------

    def pool_status(self, pg):
        return json.loads(pg.admin_get("/api/v1/status").body)["pool"]

    def class_free(self, m):
        return {dict(ls)["class"]: v for (n, ls), v in m.items()
                if n == "promguard_pool_class_bytes" and dict(ls).get("state") == "free"}

    def check_outcome(self, o, allow_422=False):
        """A full, correct answer; or a one-line 429 queue_timeout with Retry-After; or (when
        <allow_422>) a one-line 422 response_bytes. Returns "200", "429" or "422"."""
        name, labels, streamed = o.kind
        self.assertIsNone(o.error, "request lost: " + o.describe())
        r = o.resp
        if r.status == 200:
            ref = self.ref[name]
            self.assertTrue(r.clean_eof, "200 whose body was cut: " + o.describe())
            self.assertEqual(o.length, ref.length, "200 with a short or long body: " + o.describe())
            self.assertEqual(o.sha.hexdigest(), ref.sha, "200 whose bytes differ from the store's: " + o.describe())
            if streamed:
                self.assertTrue(o.walker.finish())
                self.assertEqual(o.walker.frames, int(labels["series"]), o.describe())
            return "200"
        if r.status == 429:
            self.assertRegex(o.text, ONE_LINE_429_RE, o.describe())
            verdict, kv = H.decision(r)
            self.assertEqual((verdict, kv.get("reason")), ("reject", "queue_timeout"), o.describe())
            self.assertIsNotNone(r.header("Retry-After"), "429 without Retry-After: " + o.describe())
            return "429"
        if r.status == 422 and allow_422:
            self.assertRegex(o.text, H.ERROR_LINE_RE, o.describe())
            verdict, kv = H.decision(r)
            self.assertEqual((verdict, kv.get("reason")), ("reject", "response_bytes"), o.describe())
            return "422"
        self.fail("neither the answer nor a 429/422 with a reason: " + o.describe())

    def assert_drained(self, pg, initial_free):
        """Nothing in use, reserved, waiting or in flight; every class's free bytes back between
        its watermarks (pre-fill is to the high watermark, so between LOW/HIGH of it and all of it)."""
        def drained():
            m = pg.metrics()
            st = self.pool_status(pg)
            return (H.metric(m, "promguard_pool_bytes", state="in_use") == 0 and st["reserved_bytes"] == 0
                    and st["in_use_bytes"] == 0 and st["waiters"] == 0
                    and H.metric(m, "promguard_inflight_queries") == 0) and (m, st)
        try:
            m, st = H.wait_until(drained, 10, 0.2, "pool in_use 0, reserved 0, waiters 0, inflight 0")
        except AssertionError:
            m, st = pg.metrics(), self.pool_status(pg)
            self.fail(f"not drained 10 s after the storm: status pool {st}, metrics in_use="
                      f"{H.metric(m, 'promguard_pool_bytes', state='in_use')} inflight="
                      f"{H.metric(m, 'promguard_inflight_queries')}")
        self.assertEqual(json.loads(pg.admin_get("/api/v1/status").body)["counters"]["inflight"], 0)

        def in_watermarks():
            free = self.class_free(pg.metrics())
            return all(LOW / HIGH * initial_free[c] - 65536 <= free.get(c, 0) <= initial_free[c] + 65536
                       for c in initial_free) and free
        try:
            H.wait_until(in_watermarks, 8, 0.25, "free bytes per class back between the watermarks")
        except AssertionError:
            self.fail(f"pool not back to its watermarks 8 s after the storm: free per class "
                      f"{self.class_free(pg.metrics())}, want each within [{LOW}/{HIGH} x, 1 x] of the "
                      f"pre-filled {initial_free}")

    def assert_rss_bound(self, pg, watcher=None):
        hwm = H.peak_rss_bytes(pg.pid)
        if H.sanitized(pg.pid) or H.valgrind():
            print(f"\n  sanitizer build or valgrind: RSS bound not checked (VmHWM {hwm / MIB:.1f} MiB)")
            return hwm
        self.assertLessEqual(hwm, RSS_BOUND, f"VmHWM {hwm / MIB:.1f} MiB > memory_limit {LIMIT // MIB} MiB + "
                                             f"overhead {OVERHEAD // MIB} MiB")
        if watcher is not None:
            self.assertLessEqual(watcher.peak_rss, RSS_BOUND)
        return hwm

    def storm(self, pg, plan, read_opts):
        outs = [Outcome(kind) for kind, n in plan for _ in range(n)]
        barrier = threading.Barrier(len(outs))
        threads = [threading.Thread(target=run_client, args=(pg.port, o.kind, o, barrier, read_opts), daemon=True)
                   for o in outs]
        t0 = time.monotonic()
        with Watcher(pg) as w:
            for t in threads:
                t.start()
            for t in threads:
                t.join(CLIENT_TIMEOUT + 20)
        self.assertFalse(any(t.is_alive() for t in threads), "a client never finished")
        return outs, w, time.monotonic() - t0

    # ---- the tests ----------------------------------------------------------------------------

    def test_storm_of_slow_readers_stays_within_the_limit_and_loses_nothing(self):
        pg = self.start_pg()
        idle = H.rss_bytes(pg.pid)
        if not (H.sanitized(pg.pid) or H.valgrind()):
            self.assertLessEqual(idle, IDLE_RSS_MAX, f"idle VmRSS {idle / MIB:.1f} MiB: OVERHEAD's basis is stale")
        m0 = pg.metrics()
        self.assertEqual(H.metric(m0, "promguard_pool_limit_bytes"), LIMIT)
        initial_free = self.class_free(m0)
        self.assertTrue(initial_free and all(v > 0 for v in initial_free.values()),
                        f"pool not pre-filled at start: {initial_free}")
        # two selectors are learned first (exact reservations); the others arrive unknown
        for kind in (SAMPLES_3M, STREAM_4M):
            o = Outcome(kind)
            run_client(pg.port, kind, o, threading.Barrier(1), {})
            self.assertEqual(self.check_outcome(o), "200")
        before = H.MetricsDelta(pg)

        outs, w, elapsed = self.storm(pg, STORM, SLOW)

        results = {}
        for o in outs:
            results.setdefault(o.kind[0], []).append(self.check_outcome(o))
        n200 = sum(v.count("200") for v in results.values())
        n429 = sum(v.count("429") for v in results.values())
        self.assertEqual(before.delta("promguard_rejections_total", reason="queue_timeout"), n429)
        # sized so that FIFO waiters fit in queue.max_wait: most must get through, or the storm proved nothing
        self.assertGreaterEqual(n200, 0.75 * len(outs), f"only {n200}/{len(outs)} answered: {results}")
        for kind in (SAMPLES_8M, STREAM_8M):
            self.assertIn("200", results[kind[0]], f"no {kind[0]} got through: {results}")

        m = pg.metrics()
        self.assertGreater(before.delta("promguard_pool_waits_total"), 0, "the storm never made a query wait")
        peak_in_use = H.metric(m, "promguard_pool_peak_in_use_bytes")
        self.assertLessEqual(peak_in_use, LIMIT)
        self.assertGreaterEqual(peak_in_use, LIMIT // 2, "the storm did not fill the pool")
        self.assertLessEqual(w.max_in_use, LIMIT)
        total = sum(o.length for o in outs)
        print(f"\n  storm: {len(outs)} clients, {total / MIB:.0f} MiB relayed in {elapsed:.1f}s; "
              f"{n200} x 200, {n429} x 429; idle VmRSS {idle / MIB:.1f} MiB, VmHWM "
              f"{H.peak_rss_bytes(pg.pid) / MIB:.1f} MiB (bound {RSS_BOUND // MIB} MiB), pool peak in use "
              f"{peak_in_use / MIB:.1f} MiB, max waiters seen {w.max_waiters}, "
              f"waits {before.delta('promguard_pool_waits_total'):.0f}")
        self.assert_drained(pg, initial_free)
        self.assert_rss_bound(pg, w)

    def test_oversubscribed_storm_gets_429_queue_timeout_after_max_wait(self):
        # 7.7 MiB bodies held until a slow client has read them: ~4 fit in 32 MiB at once, and
        # queue.max_wait 1s is far shorter than the queue in front of the last ones
        pg = self.start_pg(queue_max_wait="1s")
        initial_free = self.class_free(pg.metrics())
        for kind in (SAMPLES_8M, STREAM_8M):   # learned: no probe in front of the wait
            o = Outcome(kind)
            run_client(pg.port, kind, o, threading.Barrier(1), {})
            self.assertEqual(self.check_outcome(o), "200")
        before = H.MetricsDelta(pg)
        outs, w, elapsed = self.storm(pg, [(SAMPLES_8M, 16), (STREAM_8M, 6)],
                                      {"rcvbuf": 16384, "read_size": 8192, "pause": 0.002})
        got = [self.check_outcome(o) for o in outs]
        n429 = got.count("429")
        print(f"\n  oversubscribed: 429s after {sorted(round(o.elapsed, 1) for o in outs if o.resp.status == 429)} s")
        self.assertGreater(n429, 0, f"nobody waited past queue.max_wait: {got}")
        self.assertGreater(got.count("200"), 0, f"nobody got through: {got}")
        for o in outs:
            if o.resp.status == 429:
                # answered when its wait expired: not at once, and not long after max_wait (1s)
                self.assertGreaterEqual(o.elapsed, 0.9, o.describe())
                # a sanitizer build (or valgrind) runs several times slower: the bound scales, the wait
                # does not
                self.assertLess(o.elapsed, 9.0 if H.sanitized(pg.pid) or H.valgrind() else 3.0, o.describe())
        self.assertEqual(before.delta("promguard_rejections_total", reason="queue_timeout"), n429)
        # a request waits for its response's memory in the deferral queue; a SAMPLES body that must
        # grow waits at the pool itself: each 429 is exactly one of the two
        self.assertEqual(before.delta("promguard_queue_exits_total", outcome="timeout")
                         + before.delta("promguard_pool_wait_timeouts_total"), n429)
        print(f"\n  oversubscribed: {len(outs)} clients in {elapsed:.1f}s: {got.count('200')} x 200, "
              f"{n429} x 429 queue_timeout; VmHWM {H.peak_rss_bytes(pg.pid) / MIB:.1f} MiB")
        self.assert_drained(pg, initial_free)
        self.assert_rss_bound(pg, w)

    def test_a_body_still_being_sent_to_a_slow_client_stays_reserved(self):
        # the root of the bound: a 7.7 MiB body (more than a loopback socket's send buffer) read at
        # ~1.6 MB/s is still in promguard for seconds; its reservation must cover it until it is sent
        pg = self.start_pg()
        o = Outcome(SAMPLES_8M)
        run_client(pg.port, SAMPLES_8M, o, threading.Barrier(1), {})   # learned: reservation = body size
        self.assertEqual(self.check_outcome(o), "200")
        slow = Outcome(SAMPLES_8M)
        t = threading.Thread(target=run_client, args=(pg.port, SAMPLES_8M, slow, threading.Barrier(1),
                                                      {"rcvbuf": 16384, "read_size": 8192, "pause": 0.005}))
        t.start()
        seen = []
        while t.is_alive() and len(seen) < 30:
            time.sleep(0.1)
            if slow.length:
                st = self.pool_status(pg)
                seen.append((slow.length, st["in_use_bytes"], st["reserved_bytes"]))
        t.join(CLIENT_TIMEOUT)
        self.assertEqual(self.check_outcome(slow), "200")
        body_len = self.ref[SAMPLES_8M[0]].length
        mid = [x for x in seen if x[0] < body_len // 4]
        self.assertTrue(mid, f"no sample before the client had read a quarter of the body: {seen}")
        # what the client has not read is in promguard or in the kernel, and the kernel takes at most
        # net.ipv4.tcp_wmem's max (4 MiB here) plus the client's small window: the rest is promguard's
        # and must be reserved (whether the reservation shrinks as bytes leave or not)
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            sndbuf_max = int(f.read().split()[2])
        short = [(read, in_use) for read, in_use, _ in mid if in_use < body_len - read - sndbuf_max - 256 * 1024]
        self.assertFalse(short, f"a {body_len / MIB:.1f} MiB body still being sent to a slow client is not "
                                f"covered by the pool: (client bytes read, pool in_use) {short[:6]}")

    def test_samples_response_larger_than_the_limit_is_422_without_holding_it(self):
        pg = self.start_pg()
        initial_free = self.class_free(pg.metrics())
        before = H.MetricsDelta(pg)
        o = Outcome(OVERSIZE)
        run_client(pg.port, OVERSIZE, o, threading.Barrier(1), {})
        self.assertEqual(self.check_outcome(o, allow_422=True), "422")
        parts = H.parse_rejection(bytes(o.head))
        self.assertIsNotNone(parts, o.describe())
        self.assertEqual(parts.get("kind"), "actual", o.describe())
        self.assertEqual(before.delta("promguard_rejections_total", reason="response_bytes"), 1)
        print(f"\n  oversize SAMPLES: 422 ({o.elapsed:.1f}s), VmHWM {H.peak_rss_bytes(pg.pid) / MIB:.1f} MiB")
        self.assert_drained(pg, initial_free)
        # promguard paused the store at the limit: it never held the whole 42 MiB body
        self.assert_rss_bound(pg)
        # and it still serves
        after = Outcome(SAMPLES_3M)
        run_client(pg.port, SAMPLES_3M, after, threading.Barrier(1), {})
        self.assertEqual(self.check_outcome(after), "200")


if __name__ == "__main__":
    unittest.main()

"""A client that reads slower than the store writes gets every byte, while promguard applies
backpressure to the store instead of buffering the response (RSS stays small)."""

import hashlib
import threading
import time
import unittest

import harness as H

RSS_LIMIT = 64 << 20


class RssSampler:
    """Samples VmRSS of <pid> every 20 ms in a thread; .peak is the largest seen."""

    def __init__(self, pid):
        self.pid = pid
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, H.rss_bytes(self.pid))
                self.samples += 1
            except (OSError, KeyError):
                return
            self._stop.wait(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


class SlowClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.store = H.FakeStore.start(cls)

    def setUp(self):
        self.pg = H.Promguard.start(self, self.store.url, {
            "upstream": {"timeout": "2m"},
            "limits": {"max_response_bytes": "2GiB"},
        })

    def read_stream(self, port, body, **kw):
        h = hashlib.sha256()
        walker = H.FrameWalker()

        def on_data(d):
            h.update(d)
            walker.feed(d)

        r = H.raw_request(port, "POST", "/api/v1/read", body, H.PROM_HEADERS, on_data=on_data, timeout=10, **kw)
        return r, h.hexdigest(), walker

    def test_slow_reader_of_300mb_stream_gets_every_byte_with_rss_under_64mib(self):
        series, chunk_bytes = 3000, 100_000  # ~300 MB of frames
        body = H.read_body({"series": series, "samples": chunk_bytes}, streamed=True)
        direct, want_hash, want = self.read_stream(self.store.port, body, read_size=1 << 20)
        self.assertTrue(direct.clean_eof)
        self.assertEqual(want.frames, series)
        self.assertGreater(want.bytes, 300_000_000)

        t0 = time.monotonic()
        with RssSampler(self.pg.pid) as rss:
            # small receive window and small reads with pauses: far slower than the store writes
            via, got_hash, got = self.read_stream(self.pg.port, body, rcvbuf=16384, read_size=16384, pause=0.0002)
        elapsed = time.monotonic() - t0
        self.assertEqual(via.status, 200, via)
        self.assertTrue(via.clean_eof, "stream did not end cleanly")
        self.assertTrue(got.finish(), "stream ended inside a frame")
        self.assertEqual(got.frames, series)
        self.assertEqual(got.bytes, want.bytes)
        self.assertEqual(got_hash, want_hash, "relayed stream differs from the store's bytes")
        self.assertGreater(rss.samples, 10)
        if H.sanitized(self.pg.pid) or H.valgrind():
            print(f"\n  ASan build or valgrind: RSS bound not checked (peak {rss.peak >> 20} MiB)")
        else:
            self.assertLess(rss.peak, RSS_LIMIT, f"VmRSS peaked at {rss.peak >> 20} MiB during a slow read")
            self.assertLess(H.peak_rss_bytes(self.pg.pid), RSS_LIMIT,
                            f"VmHWM {H.peak_rss_bytes(self.pg.pid) >> 20} MiB")
        m = self.pg.metrics()
        self.assertEqual(H.metric(m, "promguard_response_series_total", tenant="default"), series)
        self.assertEqual(H.metric(m, "promguard_response_bytes_total", tenant="default"), want.bytes)
        self.assertEqual(H.metric(m, "promguard_inflight_queries"), 0)
        print(f"\n  300 MB slow stream: {elapsed:.1f}s, promguard peak RSS {rss.peak >> 20} MiB")

    def test_slow_reader_of_samples_response_gets_the_whole_body(self):
        body = H.read_body({"series": 3000, "samples": 60})
        direct = H.post_read(self.store.port, body, timeout=30)
        self.assertEqual(direct.status, 200)
        self.assertGreater(len(direct.body), 1 << 20)
        via = H.raw_request(self.pg.port, "POST", "/api/v1/read", body, H.PROM_HEADERS, rcvbuf=8192,
                            read_size=8192, pause=0.0005, timeout=10)
        self.assertEqual(via.status, 200, via)
        self.assertTrue(via.clean_eof)
        self.assertEqual(len(via.body), len(direct.body))
        self.assertEqual(via.body, direct.body)
        self.assertEqual(H.samples_counts(via.body), [(3000, 180000)])


if __name__ == "__main__":
    unittest.main()

"""SIGTERM drains: in-flight requests finish, new connections are refused, exit code 0 within
shutdown_grace even when the store never answers."""

import signal
import threading
import time
import unittest
import uuid

import harness as H


class Background:
    """Run fn() in a thread; .result / .error once joined."""

    def __init__(self, fn):
        self.result = self.error = None
        self._t = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._t.start()

    def _run(self, fn):
        try:
            self.result = fn()
        except BaseException as e:  # reported by the test
            self.error = e

    def join(self, timeout):
        self._t.join(timeout)
        return not self._t.is_alive()


class ShutdownTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.store = H.FakeStore.start(cls)

    def test_sigterm_when_idle_exits_0_promptly(self):
        pg = H.Promguard.start(self, self.store.url, {"shutdown_grace": "10s"})
        self.assertEqual(pg.post_read(H.read_body()).status, 200)
        t0 = time.monotonic()
        pg.signal(signal.SIGTERM)
        self.assertEqual(pg.wait_exit(5), 0)
        self.assertLess(time.monotonic() - t0, H.scaled(2.0, by=2), "idle shutdown waited for the grace period")

    def test_sigint_exits_0(self):
        pg = H.Promguard.start(self, self.store.url)
        pg.signal(signal.SIGINT)
        self.assertEqual(pg.wait_exit(5), 0)

    def start_slow_request(self, pg, delay_ms):
        """A request the store answers after <delay_ms>; returns once it has reached the store."""
        tag = uuid.uuid4().hex[:12]
        body = H.read_body({"mode": "delay", "delay_ms": delay_ms, "series": 20, "samples": 5, "tag": tag})
        bg = Background(lambda: pg.post_read(body, timeout=15))
        H.wait_until(lambda: self.store.tag(tag)["count"] == 1, 5, what="request to reach the store")
        return bg

    def test_sigterm_lets_the_inflight_request_finish_then_exits_0(self):
        pg = H.Promguard.start(self, self.store.url, {"shutdown_grace": "10s"})
        bg = self.start_slow_request(pg, 1500)
        t0 = time.monotonic()
        pg.signal(signal.SIGTERM)
        time.sleep(0.3)
        self.assertIsNone(pg.proc.poll(), "promguard exited with a request in flight")
        self.assertTrue(bg.join(10), "in-flight request never finished")
        self.assertIsNone(bg.error, f"in-flight request failed: {bg.error!r}")
        self.assertEqual(bg.result.status, 200, bg.result)
        self.assertEqual(H.samples_counts(bg.result.body), [(20, 100)])
        self.assertEqual(pg.wait_exit(5), 0)
        self.assertLess(time.monotonic() - t0, H.scaled(5.0, by=1.6))  # < shutdown_grace 10s

    def test_sigterm_refuses_new_connections_while_draining(self):
        pg = H.Promguard.start(self, self.store.url, {"shutdown_grace": "10s"})
        bg = self.start_slow_request(pg, 2500)
        pg.signal(signal.SIGTERM)
        H.wait_until(lambda: H.connect_refused(pg.port), 1.5, what="listener to close after SIGTERM")
        self.assertIsNone(pg.proc.poll(), "promguard exited with a request in flight")
        self.assertTrue(bg.join(10))
        self.assertEqual(pg.wait_exit(5), 0)

    def test_sigterm_with_hanging_store_exits_0_after_shutdown_grace(self):
        pg = H.Promguard.start(self, self.store.url, {"shutdown_grace": "1s", "upstream": {"timeout": "1m"}})
        tag = uuid.uuid4().hex[:12]
        bg = Background(lambda: pg.post_read(H.read_body({"mode": "hang", "tag": tag}), timeout=15))
        H.wait_until(lambda: self.store.tag(tag)["count"] == 1, 5, what="request to reach the store")
        t0 = time.monotonic()
        pg.signal(signal.SIGTERM)
        code = pg.wait_exit(6)
        elapsed = time.monotonic() - t0
        pg.stopped = True
        self.assertEqual(code, 0, f"exit code after grace: {code}")
        self.assertGreaterEqual(elapsed, 0.8, "exited before shutdown_grace with a request in flight")
        self.assertLess(elapsed, H.scaled(4.0, by=2), "did not exit soon after shutdown_grace")
        self.assertTrue(bg.join(5), "client still waiting after promguard exited")
        if bg.error is None:
            self.assertNotEqual(bg.result.status, 200, bg.result)


if __name__ == "__main__":
    unittest.main()

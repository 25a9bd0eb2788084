"""Store failures: error statuses are relayed as they are, except 502/503, which are retried; a
store that is down, closes or resets is retried through the backoff within the deadline (here
upstream.timeout=1s bounds it) and then becomes a one-line 502 naming the retries; a store that
hangs is 504; garbage is 502; a stream that breaks after its first frame is cut (no clean chunked
terminator). Every failure is counted in promguard_upstream_errors_total{kind}, every retry in
promguard_upstream_retries_total{kind}."""

import re
import time
import unittest

import harness as H


class UpstreamErrorsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.store = H.FakeStore.start(cls)
        cls.pg = H.Promguard.start(cls, cls.store.url, {"upstream": {"timeout": "1s"}})

    def setUp(self):
        self.metrics_before = self.pg.metrics()

    def delta(self, name, **labels):
        return (H.metric_sum(self.pg.metrics(), name, **labels)
                - H.metric_sum(self.metrics_before, name, **labels))

    def assert_decided_admit(self, resp):
        """Every reply carries X-Promguard-Decision; a query that reached the store was admitted."""
        self.assertEqual(H.decision(resp)[0], "admit", resp.header_list)

    def assert_still_serves(self):
        r = self.pg.post_read(H.read_body({"series": 2}))
        self.assertEqual(r.status, 200, f"promguard stopped serving: {r}")

    def stream(self, labels):
        body = H.read_body(labels, streamed=True)
        direct = H.raw_request(self.store.port, "POST", "/api/v1/read", body, H.PROM_HEADERS)
        via = H.raw_request(self.pg.port, "POST", "/api/v1/read", body, H.PROM_HEADERS)
        return direct, via

    def test_store_error_status_and_body_are_relayed(self):
        for code in (500, 504, 400):
            with self.subTest(code=code):
                body = H.read_body({"mode": "status", "status": code})
                direct = H.post_read(self.store.port, body)
                via = self.pg.post_read(body)
                self.assertEqual(direct.status, code)
                self.assertEqual(via.status, code, via)
                self.assertEqual(via.body, direct.body)
                self.assertEqual(via.text, f"fake store error {code}\n")
                self.assertEqual(via.header("Content-Type"), direct.header("Content-Type"))
                self.assert_decided_admit(via)
        m = self.pg.metrics()
        for code in (500, 504, 400):
            self.assertEqual(H.metric(m, "promguard_requests_total", code=str(code))
                             - H.metric(self.metrics_before, "promguard_requests_total", code=str(code)), 1)
        self.assert_still_serves()

    def test_big_store_error_body_keeps_the_status_and_the_process_serving(self):
        r = self.pg.post_read(H.read_body({"mode": "big_error_body", "bytes": 2 << 20}))
        self.assertEqual(r.status, 500, r.header_list)
        self.assertTrue(r.text.startswith("fake store big error body"), r.body[:100])
        self.assert_still_serves()

    def test_store_hanging_is_504_after_upstream_timeout(self):
        t0 = time.monotonic()
        r = self.pg.post_read(H.read_body({"mode": "hang"}), timeout=10)
        elapsed = time.monotonic() - t0
        self.assertEqual(r.status, 504, r)
        self.assert_decided_admit(r)
        self.assertEqual(r.text, "promguard: upstream timed out after 1s (upstream.timeout)\n")
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, H.scaled(3.0, by=3))
        self.assertEqual(self.delta("promguard_upstream_errors_total", kind="timeout"), 1)
        self.assertEqual(self.delta("promguard_requests_total", code="504"), 1)
        self.assert_still_serves()

    def assert_retried_then_failed(self, r, labels, kind, status=502):
        """<r> is the one-line answer after retrying <kind> failures until the 1 s deadline."""
        self.assertEqual(r.status, status, r)
        self.assert_decided_admit(r)
        self.assertRegex(r.text, H.ERROR_LINE_RE)
        self.assertRegex(r.text, r"^promguard: upstream .* \((\d+) retries; .*queue\.max_wait.*\)\n$")
        retries = int(re.search(r"\((\d+) retries", r.text).group(1))
        # 50 ms doubling (jittered down by up to 20%) within 1 s: 3 to 5 retries (under valgrind
        # each attempt takes longer, so fewer may fit)
        self.assertGreaterEqual(retries, 2 if H.valgrind() else 3, r.text)
        self.assertLessEqual(retries, 6, r.text)
        self.assertEqual(self.delta("promguard_upstream_retries_total", kind=kind), retries)
        self.assertEqual(self.delta("promguard_upstream_errors_total", kind=kind), retries + 1)
        self.assertEqual(self.delta("promguard_requests_total", code=str(status)), 1)
        # every attempt reached the store; the first may also have been re-sent once by the
        # upstream client itself, when it failed on a reused keep-alive connection
        self.assertIn(self.store.tag(labels["tag"])["count"], (retries + 1, retries + 2), "attempts at the store")
        H.wait_until(lambda: H.metric(self.pg.metrics(), "promguard_backoff_tracked_keys") == 0, 3,
                     what="the key's backoff state forgotten")
        self.assert_still_serves()

    def test_store_closing_without_answer_is_retried_then_502(self):
        labels = {"mode": "close", "tag": H.tag()}
        t0 = time.monotonic()
        r = self.pg.post_read(H.read_body(labels))
        self.assertLess(time.monotonic() - t0, H.scaled(3.0, by=3))
        self.assert_retried_then_failed(r, labels, "reset")

    def test_store_resetting_the_connection_is_retried_then_502_kind_reset(self):
        labels = {"mode": "reset", "tag": H.tag()}
        self.assert_retried_then_failed(self.pg.post_read(H.read_body(labels)), labels, "reset")

    def test_store_answering_503_is_retried_then_503(self):
        labels = {"mode": "status", "status": 503, "tag": H.tag()}
        r = self.pg.post_read(H.read_body(labels))
        self.assert_retried_then_failed(r, labels, "status_503", status=503)
        self.assertIn("answered 503", r.text)

    def test_store_dying_inside_a_samples_body_is_retried(self):
        # the body is held whole until counted, so nothing reached the client: a retry is safe
        labels = {"mode": "die_midstream", "series": 200, "samples": 200, "tag": H.tag()}
        self.assert_retried_then_failed(self.pg.post_read(H.read_body(labels)), labels, "reset")

    def test_garbage_samples_body_is_502_corrupt_response(self):
        r = self.pg.post_read(H.read_body({"mode": "garbage"}))
        self.assertEqual(r.status, 502, r)
        self.assertRegex(r.text, H.ERROR_LINE_RE)
        self.assertTrue(r.text.startswith("promguard: upstream "), r.text)
        self.assertEqual(self.delta("promguard_upstream_errors_total", kind="corrupt_response"), 1)
        self.assert_still_serves()
        # the line says what is wrong with the store's answer
        self.assertRegex(r.text, r"corrupt|snappy|SAMPLES")

    def test_stream_dying_midway_cuts_the_client_connection(self):
        direct, via = self.stream({"mode": "die_midstream", "series": 100, "samples": 2000, "frames": 30})
        self.assertEqual(via.status, 200, via)
        self.assertFalse(via.clean_eof, "client got a clean end for a stream the store broke off")
        self.assertLessEqual(len(via.body), len(direct.body))
        self.assertEqual(via.body, direct.body[: len(via.body)], "relayed bytes differ from the store's")
        self.assertEqual(self.delta("promguard_upstream_errors_total"), 1)
        self.assert_still_serves()

    def test_stream_with_bad_crc_is_cut_and_counted_corrupt(self):
        direct, via = self.stream({"mode": "bad_crc", "series": 100, "samples": 2000, "frame": 30})
        self.assertTrue(direct.clean_eof)
        self.assertEqual(via.status, 200, via)
        self.assertFalse(via.clean_eof, "client got a clean end for a stream with a corrupt frame")
        self.assertLess(len(via.body), len(direct.body))
        self.assertEqual(via.body, direct.body[: len(via.body)])
        self.assertEqual(self.delta("promguard_upstream_errors_total", kind="corrupt_response"), 1)
        self.assert_still_serves()

    def test_stream_ending_inside_a_frame_is_cut_and_counted_corrupt(self):
        direct, via = self.stream({"mode": "truncated", "series": 100, "samples": 2000, "frames": 30})
        self.assertTrue(direct.clean_eof)  # the HTTP body ends cleanly; the frame inside it does not
        self.assertEqual(via.status, 200, via)
        self.assertFalse(via.clean_eof, "client got a clean end for a stream that stopped inside a frame")
        self.assertEqual(via.body, direct.body[: len(via.body)])
        self.assertEqual(self.delta("promguard_upstream_errors_total", kind="corrupt_response"), 1)
        self.assert_still_serves()

    def test_stream_corrupt_before_its_first_good_frame_still_gets_an_answer(self):
        for labels in ({"mode": "garbage"}, {"mode": "bad_crc", "frame": 0, "series": 3}):
            with self.subTest(**labels):
                before = H.metric_sum(self.pg.metrics(), "promguard_upstream_errors_total", kind="corrupt_response")
                body = H.read_body(labels, streamed=True)
                try:
                    r = H.raw_request(self.pg.port, "POST", "/api/v1/read", body, H.PROM_HEADERS)
                except ConnectionError as e:
                    r = e
                after = H.metric_sum(self.pg.metrics(), "promguard_upstream_errors_total", kind="corrupt_response")
                self.assertEqual(after - before, 1)
                self.assert_still_serves()
                # nothing is committed before the first good frame, so the client must get an
                # answer: a 502 line, or a 200 whose body is then cut
                self.assertNotIsInstance(r, ConnectionError, "connection closed without any HTTP response")
                if r.status == 200:
                    self.assertFalse(r.clean_eof, "a corrupt stream ended cleanly at the client")
                else:
                    self.assertEqual(r.status, 502, r)
                    self.assertTrue(r.text.startswith("promguard: upstream "), r.text)


class StoreDownTest(unittest.TestCase):
    def test_store_not_listening_is_retried_then_502_kind_refused(self):
        port = H.free_port()
        pg = H.Promguard.start(self, f"http://127.0.0.1:{port}/api/v1/read", {"queue": {"max_wait": "1s"}})
        r = pg.post_read(H.read_body())
        self.assertEqual(r.status, 502, r)
        self.assertEqual(H.decision(r)[0], "admit", r.header_list)
        self.assertRegex(r.text, H.ERROR_LINE_RE)
        self.assertRegex(r.text, r"^promguard: upstream .*\(\d+ retries; ")
        m = pg.metrics()
        retries = H.metric(m, "promguard_upstream_retries_total", kind="refused")
        self.assertGreaterEqual(retries, 3)
        self.assertEqual(H.metric(m, "promguard_upstream_errors_total", kind="refused"), retries + 1)
        self.assertEqual(H.metric(m, "promguard_requests_total", code="502"), 1)
        self.assertEqual(H.metric(m, "promguard_inflight_queries"), 0)
        # and again: a refused store does not wedge the next request
        self.assertEqual(pg.post_read(H.read_body()).status, 502)
        H.wait_until(lambda: H.metric(pg.metrics(), "promguard_backoff_tracked_keys") == 0, 3,
                     what="the key's backoff state forgotten")


if __name__ == "__main__":
    unittest.main()

"""Store failures: error statuses are relayed as they are; a store that is down, hangs, closes or
answers garbage becomes a one-line 502/504; a stream that breaks after its first frame is cut
(no clean chunked terminator). Every failure is counted in promguard_upstream_errors_total{kind}."""

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
        for code in (500, 503, 400):
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
        for code in (500, 503, 400):
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
        self.assertLess(elapsed, 3.0)
        self.assertEqual(self.delta("promguard_upstream_errors_total", kind="timeout"), 1)
        self.assertEqual(self.delta("promguard_requests_total", code="504"), 1)
        self.assert_still_serves()

    def test_store_closing_without_answer_is_502(self):
        r = self.pg.post_read(H.read_body({"mode": "close"}))
        self.assertEqual(r.status, 502, r)
        self.assert_decided_admit(r)
        self.assertRegex(r.text, H.ERROR_LINE_RE)
        self.assertTrue(r.text.startswith("promguard: upstream "), r.text)
        self.assertEqual(self.delta("promguard_upstream_errors_total"), 1)
        self.assertEqual(self.delta("promguard_requests_total", code="502"), 1)
        self.assert_still_serves()

    def test_store_resetting_the_connection_is_502_kind_reset(self):
        r = self.pg.post_read(H.read_body({"mode": "reset"}))
        self.assertEqual(r.status, 502, r)
        self.assertRegex(r.text, H.ERROR_LINE_RE)
        self.assertTrue(r.text.startswith("promguard: upstream "), r.text)
        self.assertEqual(self.delta("promguard_upstream_errors_total", kind="reset"), 1)
        self.assert_still_serves()

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
    def test_store_not_listening_is_502_kind_refused(self):
        port = H.free_port()
        pg = H.Promguard.start(self, f"http://127.0.0.1:{port}/api/v1/read")
        r = pg.post_read(H.read_body())
        self.assertEqual(r.status, 502, r)
        self.assertEqual(H.decision(r)[0], "admit", r.header_list)
        self.assertRegex(r.text, H.ERROR_LINE_RE)
        self.assertTrue(r.text.startswith("promguard: upstream "), r.text)
        m = pg.metrics()
        self.assertEqual(H.metric(m, "promguard_upstream_errors_total", kind="refused"), 1)
        self.assertEqual(H.metric(m, "promguard_requests_total", code="502"), 1)
        self.assertEqual(H.metric(m, "promguard_inflight_queries"), 0)
        # and again: a refused store does not wedge the next request
        self.assertEqual(pg.post_read(H.read_body()).status, 502)


if __name__ == "__main__":
    unittest.main()

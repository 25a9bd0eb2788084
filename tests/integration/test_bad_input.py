"""Malformed or oversized remote-read requests are answered by promguard itself, one plain-text line,
counted, and never reach the store; the process keeps serving afterwards."""

import re
import unittest

import harness as H

CAP = 50000  # limits.max_request_bytes; not a multiple of 1024, so it prints the same in any unit


class BadInputTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.store = H.FakeStore.start(cls)
        cls.pg = H.Promguard.start(cls, cls.store.url, {"limits": {"max_request_bytes": CAP}})

    def setUp(self):
        self.reads_before = self.store.reads()
        self.metrics_before = self.pg.metrics()

    def delta(self, name, **labels):
        return (H.metric_sum(self.pg.metrics(), name, **labels)
                - H.metric_sum(self.metrics_before, name, **labels))

    def assert_rejected(self, resp, code, body_re):
        """<resp> is a one-line promguard error with <code>, counted, that never reached the store."""
        self.assertEqual(resp.status, code, resp)
        self.assertRegex(resp.text, H.ERROR_LINE_RE, "not a single 'promguard: ...' line")
        verdict, kv = H.decision(resp)
        self.assertEqual(verdict, "reject", resp.header("X-Promguard-Decision"))
        self.assertEqual(kv.get("reason"), "bad_request", resp.header("X-Promguard-Decision"))
        self.assertEqual(self.delta("promguard_requests_total", code=str(code)), 1)
        self.assertEqual(self.delta("promguard_rejections_total", reason="bad_request"), 1)
        self.assertEqual(self.store.reads(), self.reads_before, "a rejected request reached the store")
        self.assert_still_serves()
        self.assertRegex(resp.text, body_re)  # last, so a wording change does not hide the checks above

    def assert_still_serves(self):
        r = self.pg.post_read(H.read_body({"series": 3}))
        self.assertEqual(r.status, 200, f"promguard stopped serving: {r}")
        self.assertEqual(H.samples_counts(r.body), [(3, 30)])

    def test_get_is_405_with_allow_post(self):
        r = H.http_request(self.pg.port, "GET", "/api/v1/read")
        self.assertEqual(r.header("Allow"), "POST", r)
        self.assert_rejected(r, 405, r"^promguard: method not allowed: GET \(only POST is served on /api/v1/read\)\n$")

    def test_put_is_405(self):
        r = H.http_request(self.pg.port, "PUT", "/api/v1/read", body=H.read_body())
        self.assertEqual(r.header("Allow"), "POST", r)
        self.assert_rejected(r, 405, r"^promguard: method not allowed: PUT \(only POST is served on /api/v1/read\)\n$")

    def test_declared_content_length_over_cap_is_413(self):
        r = H.raw_request(self.pg.port, "POST", "/api/v1/read", b"x" * (CAP + 10000), H.PROM_HEADERS)
        self.assert_rejected(r, 413, rf"^promguard: request too large: {CAP + 10000} > {CAP} \(limits\.max_request_bytes\)\n$")

    def test_chunked_body_growing_over_cap_is_413(self):
        piece = b"y" * 10000
        chunked = b"".join(b"%x\r\n" % len(piece) + piece + b"\r\n" for _ in range(6)) + b"0\r\n\r\n"
        r = H.raw_request(self.pg.port, "POST", "/api/v1/read", chunked,
                          dict(H.PROM_HEADERS, **{"Transfer-Encoding": "chunked", "Content-Length": None}))
        self.assert_rejected(r, 413, rf"^promguard: request too large: \d+ > {CAP} \(limits\.max_request_bytes\)\n$")
        n = int(re.search(r"large: (\d+) >", r.text).group(1))
        self.assertGreater(n, CAP)

    def test_snappy_declared_decoded_length_over_cap_is_413(self):
        body = H.uvarint(10_000_000) + b"\x00a"  # header says 10 MB; one literal byte follows
        r = self.pg.post_read(body)
        self.assert_rejected(r, 413, rf"^promguard: request too large: 10000000 > {CAP} \(limits\.max_request_bytes\)\n$")

    def test_body_just_under_cap_is_not_413(self):
        # a legal request padded with an unknown field up to close to the cap is admitted
        pad = b"\x1a" + H.uvarint(CAP - 2000) + b"p" * (CAP - 2000)  # field 3, LEN: unknown, skipped
        raw = H.read_request_raw({"series": 2}) + pad
        r = self.pg.post_read(H.snappy(raw))
        self.assertEqual(r.status, 200, r)

    def test_bad_snappy_is_400(self):
        r = self.pg.post_read(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff not snappy")
        self.assert_rejected(r, 400, r"^promguard: bad request: .+\n$")

    def test_bad_protobuf_is_400(self):
        r = self.pg.post_read(H.snappy(b"\x0a\xff\xff\xff\x0f garbage that is not a ReadRequest"))
        self.assert_rejected(r, 400, r"^promguard: bad request: .+\n$")

    def test_empty_query_list_is_400(self):
        r = self.pg.post_read(H.snappy(b""))
        self.assert_rejected(r, 400, r"^promguard: bad request: .+\n$")

    def test_start_after_end_is_400(self):
        r = self.pg.post_read(H.read_body({"series": 1}, start_ms=1_700_000_600_000, end_ms=1_700_000_000_000))
        self.assert_rejected(r, 400, r"^promguard: bad request: .+\n$")

    def test_unknown_path_is_404(self):
        r = self.pg.post_read(H.read_body(), path="/api/v1/write")
        self.assertEqual(r.status, 404, r)
        self.assertEqual(self.delta("promguard_requests_total", code="404"), 1)
        self.assertEqual(self.store.reads(), self.reads_before)
        self.assert_still_serves()
        self.assertEqual(r.text, "promguard: not found: /api/v1/write (remote read is served on /api/v1/read)\n")


if __name__ == "__main__":
    unittest.main()

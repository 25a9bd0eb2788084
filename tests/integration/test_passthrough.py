"""Admitted remote reads pass through promguard unchanged: bodies, headers, keep-alive, metrics."""

import socket
import unittest

import harness as H


tag = H.tag


class PassthroughTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.store = H.FakeStore.start(cls)

    def setUp(self):
        self.pg = H.Promguard.start(self, self.store.url)

    def assert_admitted(self, resp):
        verdict, kv = H.decision(resp)
        self.assertIsNotNone(verdict, f"no X-Promguard-Decision header: {resp}")
        self.assertEqual(verdict, "admit", resp.header("X-Promguard-Decision"))
        for key in ("reason", "estimate", "source"):
            self.assertIn(key, kv, resp.header("X-Promguard-Decision"))

    def test_samples_response_is_byte_identical_to_direct_store_answer(self):
        body = H.read_body({"series": 50, "samples": 20})
        direct = H.post_read(self.store.port, body)
        via = self.pg.post_read(body)
        self.assertEqual(direct.status, 200)
        self.assertEqual(via.status, 200, via)
        self.assertTrue(via.complete)
        self.assertEqual(via.body, direct.body)
        self.assertEqual(H.samples_counts(via.body), [(50, 1000)])
        self.assertEqual(via.header("Content-Type"), "application/x-protobuf")
        self.assertEqual(via.header("Content-Encoding"), "snappy")
        self.assert_admitted(via)

    def test_small_samples_response_is_byte_identical(self):
        body = H.read_body({"series": 1, "samples": 1})
        direct = H.post_read(self.store.port, body)
        via = self.pg.post_read(body)
        self.assertEqual(via.status, 200, via)
        self.assertEqual(via.body, direct.body)
        self.assertEqual(via.header("Content-Encoding"), "snappy")

    def test_streamed_response_is_byte_identical_and_streamed(self):
        body = H.read_body({"series": 200, "samples": 3000}, streamed=True)
        direct = H.raw_request(self.store.port, "POST", "/api/v1/read", body, H.PROM_HEADERS)
        via = H.raw_request(self.pg.port, "POST", "/api/v1/read", body, H.PROM_HEADERS)
        self.assertEqual(direct.status, 200)
        self.assertEqual(via.status, 200, via)
        self.assertTrue(via.clean_eof, "stream did not end with a clean chunked terminator")
        self.assertTrue(via.chunked, "streamed response was not relayed with chunked transfer encoding")
        self.assertEqual(via.header("Content-Type"), H.STREAMED_CONTENT_TYPE)
        self.assertIsNone(via.header("Content-Encoding"))
        self.assertEqual(len(via.body), len(direct.body))
        self.assertEqual(via.body, direct.body)
        self.assertEqual(H.stream_counts(via.body), {0: 200})
        self.assert_admitted(via)

    def test_multi_query_request_returns_one_result_per_query(self):
        body = H.read_body(queries=[{"series": 3, "samples": 4}, {"series": 5, "samples": 2}, {"series": 0}])
        direct = H.post_read(self.store.port, body)
        via = self.pg.post_read(body)
        self.assertEqual(via.status, 200, via)
        self.assertEqual(via.body, direct.body)
        self.assertEqual(H.samples_counts(via.body), [(3, 12), (5, 10), (0, 0)])

    def test_multi_query_streamed_request_keeps_query_index(self):
        body = H.read_body(queries=[{"series": 4}, {"series": 6}], streamed=True)
        direct = H.raw_request(self.store.port, "POST", "/api/v1/read", body, H.PROM_HEADERS)
        via = H.raw_request(self.pg.port, "POST", "/api/v1/read", body, H.PROM_HEADERS)
        self.assertEqual(via.status, 200, via)
        self.assertTrue(via.clean_eof)
        self.assertEqual(via.body, direct.body)
        self.assertEqual(H.stream_counts(via.body), {0: 4, 1: 6})

    def test_keep_alive_serves_several_requests_on_one_client_connection(self):
        t = tag()
        bodies = [H.read_body({"series": n, "samples": 3, "tag": t}) for n in (1, 40, 2)]
        bodies.append(H.read_body({"series": 30, "samples": 100, "tag": t}, streamed=True))
        bodies.append(H.read_body({"series": 3, "tag": t}))
        sock = socket.create_connection((H.HOST, self.pg.port), timeout=10)
        self.addCleanup(sock.close)
        for i, body in enumerate(bodies):
            direct = H.raw_request(self.store.port, "POST", "/api/v1/read", body, H.PROM_HEADERS)
            via = H.raw_request(self.pg.port, "POST", "/api/v1/read", body, H.PROM_HEADERS, sock=sock)
            self.assertEqual(via.status, 200, f"request {i}: {via}")
            self.assertTrue(via.clean_eof, f"request {i} ended early")
            self.assertEqual(via.body, direct.body, f"request {i}")
            self.assertNotEqual((via.header("Connection") or "").lower(), "close",
                                f"request {i}: promguard closed the keep-alive connection")
        # the store saw each proxied request once (plus the direct ones)
        self.assertEqual(self.store.tag(t)["count"], 2 * len(bodies))

    def test_store_connections_are_kept_alive_across_requests(self):
        before = self.store.stats()["connections_total"]
        for n in range(10):
            self.assertEqual(self.pg.post_read(H.read_body({"series": n % 3 + 1})).status, 200)
        opened = self.store.stats()["connections_total"] - before - 1  # -1: the /stats request itself
        self.assertLessEqual(opened, 3, f"{opened} store connections for 10 sequential requests")

    def test_each_admitted_request_reaches_the_store_exactly_once(self):
        t = tag()
        before = self.store.reads()
        for _ in range(4):
            self.assertEqual(self.pg.post_read(H.read_body({"series": 2, "tag": t})).status, 200)
        self.assertEqual(self.store.tag(t)["count"], 4)
        self.assertEqual(self.store.reads() - before, 4)

    def test_prometheus_protocol_headers_are_forwarded_to_the_store(self):
        t = tag()
        self.assertEqual(self.pg.post_read(H.read_body({"tag": t})).status, 200)
        seen = {k.lower(): v for k, v in self.store.tag(t)["headers"].items()}
        for k, v in H.PROM_HEADERS.items():
            self.assertEqual(seen.get(k.lower()), v, f"header {k} at the store: {seen}")

    def test_protocol_headers_get_defaults_when_the_client_omits_them(self):
        t = tag()
        r = H.http_request(self.pg.port, "POST", "/api/v1/read", body=H.read_body({"tag": t}))
        self.assertEqual(r.status, 200, r)
        seen = {k.lower(): v for k, v in self.store.tag(t)["headers"].items()}
        self.assertEqual(seen.get("content-encoding"), "snappy", seen)
        self.assertEqual(seen.get("content-type"), "application/x-protobuf", seen)
        self.assertEqual(seen.get("x-prometheus-remote-read-version"), "0.1.0", seen)

    def test_tenant_header_is_forwarded_and_labels_the_metrics(self):
        t = tag()
        r = self.pg.post_read(H.read_body({"series": 6, "tag": t}), headers={"X-Scope-OrgID": "team-a"})
        self.assertEqual(r.status, 200, r)
        seen = {k.lower(): v for k, v in self.store.tag(t)["headers"].items()}
        self.assertEqual(seen.get("x-scope-orgid"), "team-a", seen)
        m = self.pg.metrics()
        self.assertEqual(H.metric(m, "promguard_response_series_total", tenant="team-a"), 6)
        self.assertEqual(H.metric(m, "promguard_response_series_total", tenant="default"), 0)

    def test_metrics_count_requests_series_bytes_and_upstream_time(self):
        samples_body = H.read_body({"series": 7, "samples": 5})
        stream_body = H.read_body({"series": 5, "samples": 2000}, streamed=True)
        r1 = self.pg.post_read(samples_body)
        r2 = H.raw_request(self.pg.port, "POST", "/api/v1/read", stream_body, H.PROM_HEADERS)
        self.assertEqual((r1.status, r2.status), (200, 200))
        self.assertTrue(r2.clean_eof)
        m = self.pg.metrics()
        self.assertEqual(H.metric(m, "promguard_requests_total", code="200"), 2)
        self.assertEqual(H.metric(m, "promguard_response_series_total", tenant="default"), 12)
        self.assertEqual(H.metric(m, "promguard_response_bytes_total", tenant="default"),
                         len(r1.body) + len(r2.body))
        self.assertEqual(H.metric(m, "promguard_upstream_request_duration_seconds_count"), 2)
        self.assertEqual(H.metric(m, "promguard_upstream_request_duration_seconds_bucket", le="+Inf"), 2)
        self.assertGreater(H.metric(m, "promguard_upstream_request_duration_seconds_sum"), 0)
        self.assertEqual(H.metric(m, "promguard_inflight_queries"), 0)
        self.assertEqual(H.metric_sum(m, "promguard_upstream_errors_total"), 0)

    def test_upstream_headers_from_config_are_sent_to_the_store(self):
        pg = H.Promguard.start(self, self.store.url,
                               {"upstream": {"headers": {"X-Extra-Header": "from-config"}}})
        t = tag()
        self.assertEqual(pg.post_read(H.read_body({"tag": t})).status, 200)
        seen = {k.lower(): v for k, v in self.store.tag(t)["headers"].items()}
        self.assertEqual(seen.get("x-extra-header"), "from-config", seen)

    def test_custom_read_path_is_served(self):
        pg = H.Promguard.start(self, self.store.url, {"read_path": "/custom/read"})
        body = H.read_body({"series": 2})
        self.assertEqual(H.post_read(pg.port, body, path="/custom/read").status, 200)
        r = H.post_read(pg.port, body, path="/api/v1/read")
        self.assertEqual(r.status, 404, r)
        self.assertEqual(r.text, "promguard: not found: /api/v1/read (remote read is served on /custom/read)\n")


if __name__ == "__main__":
    unittest.main()

"""Admin listener: health, readiness that follows the store, /metrics in valid exposition format
with every contract metric, /api/v1/status JSON, 404 for anything else, and the startup log line."""

import json
import os
import re
import unittest

import harness as H

# interface.md's metrics table: name -> type
INTERFACE_METRICS = {
    "promguard_queries_total": "counter",
    "promguard_rejections_total": "counter",
    "promguard_shadow_rejections_total": "counter",
    "promguard_estimated_series": "histogram",
    "promguard_estimate_error_ratio": "histogram",
    "promguard_inflight_queries": "gauge",
    "promguard_queue_length": "gauge",
    "promguard_queue_wait_seconds": "histogram",
    "promguard_backoff_tracked_keys": "gauge",
    "promguard_pool_bytes": "gauge",
    "promguard_pool_limit_bytes": "gauge",
    "promguard_pool_get_on_empty_total": "counter",
    "promguard_pool_refills_total": "counter",
    "promguard_upstream_request_duration_seconds": "histogram",
    "promguard_upstream_errors_total": "counter",
    "promguard_response_series_total": "counter",
    "promguard_response_bytes_total": "counter",
    "promguard_requests_total": "counter",
    "promguard_config_last_reload_successful": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
}

# must be exported today whatever metrics.h says
REQUIRED_NOW = [
    "promguard_requests_total",
    "promguard_upstream_request_duration_seconds",
    "promguard_upstream_errors_total",
    "promguard_response_series_total",
    "promguard_response_bytes_total",
    "promguard_inflight_queries",
    "process_resident_memory_bytes",
    "process_open_fds",
]


def metrics_table_names():
    """Metric names defined in proxy/metrics.h's METRICS_TABLE (what exists in the code now)."""
    path = os.path.join(os.environ.get("PROMGUARD_SRC", ""), "proxy", "metrics.h")
    with open(path) as f:
        return set(re.findall(r'X\(\s*\w+\s*,\s*"([a-z_:][a-z0-9_:]*)"', f.read()))


def declared_types(text):
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


class AdminTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.store = H.FakeStore.start(cls)
        cls.pg = H.Promguard.start(cls, cls.store.url)

    def test_healthy_is_200(self):
        self.assertEqual(self.pg.admin_get("/-/healthy").status, 200)

    def test_ready_is_200_when_the_store_is_reachable(self):
        H.wait_until(lambda: self.pg.admin_get("/-/ready").status == 200, 5, 0.1, "/-/ready 200")

    def test_metrics_is_valid_exposition_with_every_contract_metric(self):
        # one request first so labelled series exist
        self.assertEqual(self.pg.post_read(H.read_body({"series": 2})).status, 200)
        r = self.pg.admin_get("/metrics")
        self.assertEqual(r.status, 200)
        ctype = r.header("Content-Type", "")
        self.assertTrue(ctype.startswith("text/plain"), ctype)
        self.assertIn("version=0.0.4", ctype)
        m = H.parse_metrics(r.text, strict=True)  # raises on any malformed line
        types = declared_types(r.text)
        expected = set(REQUIRED_NOW) | (set(INTERFACE_METRICS) & metrics_table_names())
        missing = sorted(n for n in expected if n not in types)
        self.assertEqual(missing, [], "metrics without a # TYPE line in /metrics")
        for name in expected:
            self.assertEqual(types[name], INTERFACE_METRICS[name], f"type of {name}")
        # unlabelled metrics and those the request above touched must have samples; a labelled
        # counter nobody incremented yet (upstream_errors_total) legitimately has only # TYPE
        touched = ["promguard_requests_total", "promguard_response_series_total",
                   "promguard_response_bytes_total", "promguard_inflight_queries",
                   "process_resident_memory_bytes", "process_open_fds"]
        for name in touched:
            self.assertIn(name, H.metric_names(m), f"{name} has no sample")
        self.assertIn("promguard_upstream_request_duration_seconds_count", H.metric_names(m))

    def test_histograms_have_cumulative_buckets_ending_in_inf(self):
        self.assertEqual(self.pg.post_read(H.read_body()).status, 200)
        m = self.pg.metrics()
        name = "promguard_upstream_request_duration_seconds"
        buckets = sorted(((float(dict(ls)["le"]), v) for (n, ls), v in m.items() if n == name + "_bucket"))
        self.assertTrue(buckets, "no buckets")
        self.assertEqual(buckets[-1][0], float("inf"))
        counts = [v for _, v in buckets]
        self.assertEqual(counts, sorted(counts), "buckets are not cumulative")
        self.assertEqual(buckets[-1][1], H.metric(m, name + "_count"))

    def test_process_metrics_match_proc(self):
        m = self.pg.metrics()
        rss = H.metric(m, "process_resident_memory_bytes")
        real = H.rss_bytes(self.pg.pid)
        self.assertGreater(rss, 0)
        self.assertLess(abs(rss - real), max(real, 1) * 0.5, f"RSS metric {rss} vs /proc {real}")
        fds = H.metric(m, "process_open_fds")
        real_fds = len(os.listdir(f"/proc/{self.pg.pid}/fd"))
        self.assertGreater(fds, 2)
        self.assertLess(abs(fds - real_fds), 10, f"fds metric {fds} vs /proc {real_fds}")

    def test_status_is_json_with_config_and_counters(self):
        r = self.pg.admin_get("/api/v1/status")
        self.assertEqual(r.status, 200, r)
        self.assertIn("json", r.header("Content-Type", ""))
        doc = json.loads(r.body)
        self.assertIsInstance(doc.get("config"), dict, doc)
        self.assertIsInstance(doc.get("counters"), dict, doc)

    def test_unknown_admin_path_is_404(self):
        r = self.pg.admin_get("/no/such/thing")
        self.assertEqual(r.status, 404, r)

    def test_startup_logs_listening_line_with_both_addresses(self):
        lines = self.pg.log_lines("listening")
        self.assertTrue(lines, self.pg.log())
        line = lines[0]
        self.assertRegex(line, r"^ts=\S+ level=info msg=\"listening\"")
        self.assertIn(f"listen={self.pg.cfg['listen']}", line.replace('"', ""))
        self.assertIn(f"admin_listen={self.pg.cfg['admin_listen']}", line.replace('"', ""))


class ReadinessTest(unittest.TestCase):
    def test_ready_follows_the_store_going_down_and_up(self):
        store = H.FakeStore.start(self)
        pg = H.Promguard.start(self, store.url)
        H.wait_until(lambda: pg.admin_get("/-/ready").status == 200, 5, 0.1, "/-/ready 200 with the store up")
        store.stop()
        H.wait_until(lambda: pg.admin_get("/-/ready").status == 503, 5, 0.1, "/-/ready 503 with the store down")
        self.assertEqual(pg.admin_get("/-/healthy").status, 200, "healthy must not follow the store")
        H.FakeStore.start(self, port=store.port)
        H.wait_until(lambda: pg.admin_get("/-/ready").status == 200, 5, 0.1, "/-/ready 200 after the store is back")

    def test_ready_is_503_when_the_store_never_listened(self):
        pg = H.Promguard.start(self, f"http://127.0.0.1:{H.free_port()}/api/v1/read")
        H.wait_until(lambda: pg.admin_get("/-/ready").status == 503, 5, 0.1, "/-/ready 503")
        self.assertEqual(pg.admin_get("/-/healthy").status, 200)


class SharedListenerTest(unittest.TestCase):
    def test_admin_listen_equal_to_listen_serves_both(self):
        store = H.FakeStore.start(self)
        port = H.free_port()
        addr = f"127.0.0.1:{port}"
        pg = H.Promguard.start(self, store.url, {"listen": addr, "admin_listen": addr})
        self.assertEqual(H.get(port, "/-/healthy").status, 200)
        self.assertEqual(pg.post_read(H.read_body({"series": 4})).status, 200)
        m = H.parse_metrics(H.get(port, "/metrics").text)
        self.assertEqual(H.metric(m, "promguard_requests_total", code="200"), 1)


if __name__ == "__main__":
    unittest.main()

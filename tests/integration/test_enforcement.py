"""Enforcement while the store answers (the estimate was wrong), the capacity limit, and the limits
propagated to an m3coordinator.

  * a SAMPLES response whose actual series / samples / bytes exceed a limit becomes promguard's 422
    (`actual` in the line), the store's body is not relayed, and the actual figure teaches the
    estimator: the identical selector is then rejected before the store (source=recall);
  * a streamed response over a limit is cut: the client sees the connection close before the
    chunked terminator;
  * dry run counts instead of cutting;
  * limits.max_inflight: the next request waits in the queue instead of 429; a full queue
    (queue.max_queued) is 429 queue_full with Retry-After, a wait past queue.max_wait 429
    queue_timeout naming what it waited for;
  * upstream.propagate_limits: m3 sends M3-Limit-Max-Series / M3-Limit-Max-Range.
"""

import threading
import time
import unittest

import harness as H


tag = H.tag


class EnforcementTest(unittest.TestCase):
    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        cls.store = H.FakeStore.start(cls)

    def start(self, config=None):
        return H.AdmissionPromguard.start(self, self.store.url, config=config)

    def admit_unknown(self, limits, extra=None):
        """promguard with <limits> that admits what it knows nothing about (source=default, 0)."""
        return self.start(H.merge({"limits": limits, "estimator": {"unknown": "admit"}}, extra or {}))

    def stream(self, pg, labels, headers=None):
        h = dict(H.PROM_HEADERS)
        h.update(headers or {})
        return H.raw_request(pg.port, "POST", "/api/v1/read", H.read_body(labels, streamed=True), h, timeout=20)

    # ---- SAMPLES ----------------------------------------------------------------------------

    def test_samples_response_over_max_series_becomes_422_actual(self):
        pg = self.admit_unknown({"max_series": 20})
        labels = {"series": 50, "tag": tag()}
        body = H.read_body(labels)
        direct = H.post_read(self.store.port, body)
        d = H.MetricsDelta(pg)
        r = pg.post_read(body)
        self.assertEqual(self.store.tag(labels["tag"])["count"], 2, "the store was not asked")
        H.assert_rejected(self, r, "series", key="limits.max_series", limit=20, kind="actual",
                          value=upto(20, 50), source="default")
        self.assertEqual(r.header("X-Promguard-Decision"), "reject; reason=series; estimate=0; source=default")
        self.assertNotIn(direct.body[:64], r.body)
        self.assertNotEqual(r.header("Content-Encoding"), "snappy", "a 422 line is not snappy")
        self.assertEqual(d.delta("promguard_rejections_total", tenant="default", reason="series"), 1)
        self.assertEqual(d.delta("promguard_queries_total", tenant="default", decision="rejected"), 1)
        self.assertEqual(d.delta("promguard_queries_total", decision="admitted"), 0)
        line = H.wait_until(lambda: pg.log_lines("query rejected"), 3, what="log line")[0]
        self.assertEqual(H.parse_log_line(line).get("reason"), "series", line)
        # learned: the same selector is now rejected before the store, estimated by recall
        reads = self.store.reads()
        r = pg.post_read(body)
        H.assert_rejected(self, r, "series", key="limits.max_series", limit=20, kind="estimated",
                          value=upto(20, 50), source="recall")
        self.assertEqual(self.store.reads(), reads)

    def test_hint_far_below_the_truth_is_caught_on_the_response(self):
        pg = self.start({"limits": {"max_series": 20}, "estimator": {"hints": {"fake": 5}}})
        labels = {"series": 60, "tag": tag()}
        r = pg.post_read(H.read_body(labels))
        self.assertEqual(self.store.tag(labels["tag"])["count"], 1)
        H.assert_rejected(self, r, "series", key="limits.max_series", kind="actual", value=upto(20, 60),
                          source="hint")
        self.assertEqual(H.decision(r)[1].get("estimate"), "5")

    def test_probe_below_the_truth_is_caught_on_the_response(self):
        pg = self.start({"limits": {"max_series": 20}})
        t = tag()
        labels = {"series": 60, "probe_series": 5, "tag": t}
        r = pg.post_read(H.read_body(labels))
        self.assertEqual(H.probes(self.store, t)["count"], 1)
        self.assertEqual(self.store.tag(t)["count"], 1)
        H.assert_rejected(self, r, "series", kind="actual", value=upto(20, 60), source="probe")
        self.assertEqual(H.decision(r)[1].get("estimate"), "5")
        # the actual figure replaces the probe's: rejected before the store, no new probe
        reads = self.store.reads()
        H.assert_rejected(self, pg.post_read(H.read_body(labels)), "series", kind="estimated", value=upto(20, 60),
                          source="recall")
        self.assertEqual(self.store.reads(), reads)
        self.assertEqual(H.probes(self.store, t)["count"], 1)

    def test_store_that_grew_since_the_selector_was_learned(self):
        # first read: 10 series, learned; second read of the same selector: 10 + 100 series
        pg = self.admit_unknown({"max_series": 50})
        labels = {"series": 10, "grow": 100, "tag": tag()}
        body = H.read_body(labels)
        H.assert_admitted(self, pg.post_read(body), source="default")
        r = pg.post_read(body)
        H.assert_rejected(self, r, "series", kind="actual", value=upto(50, 110), source="recall")
        self.assertEqual(H.decision(r)[1].get("estimate"), "10")
        reads = self.store.reads()
        H.assert_rejected(self, pg.post_read(body), "series", kind="estimated", value=upto(50, 110),
                          source="recall")
        self.assertEqual(self.store.reads(), reads)

    def test_samples_response_over_max_samples(self):
        pg = self.admit_unknown({"max_samples": 300})
        labels = {"series": 5, "samples": 100}
        r = pg.post_read(H.read_body(labels))
        H.assert_rejected(self, r, "samples", key="limits.max_samples", limit=300, kind="actual",
                          value=upto(300, 500))
        self.assertEqual(H.metric(pg.metrics(), "promguard_rejections_total", tenant="default", reason="samples"), 1)
        H.assert_admitted(self, pg.post_read(H.read_body({"series": 5, "samples": 60})))

    def test_samples_response_over_max_response_bytes(self):
        pg = self.admit_unknown({"max_response_bytes": "1KiB"})
        labels = {"series": 50, "samples": 50, "tag": tag()}
        body = H.read_body(labels)
        size = len(H.post_read(self.store.port, body).body)
        self.assertGreater(size, 1024, "fixture too small for the test")
        r = pg.post_read(body)
        H.assert_rejected(self, r, "response_bytes", key="limits.max_response_bytes", limit="1KiB", kind="actual")
        self.assertEqual(H.metric(pg.metrics(), "promguard_rejections_total", tenant="default",
                                  reason="response_bytes"), 1)
        # the repeat is estimated by recall (the bytes seen) and rejected before the store
        reads = self.store.reads()
        r = pg.post_read(body)
        H.assert_rejected(self, r, "response_bytes", key="limits.max_response_bytes", kind="estimated",
                          source="recall")
        self.assertEqual(self.store.reads(), reads)
        # a small answer is fine
        H.assert_admitted(self, pg.post_read(H.read_body({"series": 1, "samples": 1})))

    def test_dry_run_relays_the_samples_response_and_counts(self):
        pg = self.admit_unknown({"max_series": 20}, {"mode": "dry_run"})
        body = H.read_body({"series": 50, "samples": 2, "tag": tag()})
        direct = H.post_read(self.store.port, body)
        d = H.MetricsDelta(pg)
        r = pg.post_read(body)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, direct.body)
        self.assertEqual(d.delta("promguard_shadow_rejections_total", tenant="default", reason="series"), 1)
        self.assertEqual(d.delta("promguard_rejections_total"), 0)
        H.wait_until(lambda: pg.log_lines("query would be rejected (dry run)"), 3, what="dry-run log line")
        self.assertEqual(pg.log_lines("query rejected"), [])

    # ---- streams ----------------------------------------------------------------------------

    def test_stream_over_max_series_is_cut(self):
        pg = self.admit_unknown({"max_series": 50})
        labels = {"series": 2000, "samples": 2000, "tag": tag()}
        d = H.MetricsDelta(pg)
        r = self.stream(pg, labels)
        self.assertEqual(self.store.tag(labels["tag"])["count"], 1)
        # the limit breaks at frame 51, after the first: cut, not a 422
        self.assertEqual(r.status, 200, r)
        self.assertFalse(r.clean_eof, "the stream over the limit ended with a clean chunked terminator")
        frames = promrr_frames(r.body)
        self.assertLessEqual(frames, 51, f"{frames} series relayed with max_series 50")
        self.assertGreaterEqual(frames, 1)
        self.assertEqual(d.delta("promguard_rejections_total", tenant="default", reason="series"), 1)
        # learned (at least 51 series): the repeat is rejected before the store
        reads = self.store.reads()
        r = self.stream(pg, labels)
        H.assert_rejected(self, r, "series", kind="estimated", source="recall", value=lambda v: int(v) > 50)
        self.assertEqual(self.store.reads(), reads)

    def test_stream_over_max_response_bytes_is_cut(self):
        pg = self.admit_unknown({"max_response_bytes": "64KiB"})
        labels = {"series": 100, "samples": 3000, "tag": tag()}  # about 300 KB of frames
        r = self.stream(pg, labels)
        self.assertEqual(r.status, 200, r)
        self.assertFalse(r.clean_eof, "the stream over the limit ended cleanly")
        self.assertLessEqual(len(r.body), 64 * 1024 + 4096, "far more than max_response_bytes relayed")
        self.assertEqual(H.metric(pg.metrics(), "promguard_rejections_total", tenant="default",
                                  reason="response_bytes"), 1)

    def test_stream_within_limits_is_not_cut(self):
        pg = self.admit_unknown({"max_series": 50})
        r = self.stream(pg, {"series": 50, "samples": 500})
        self.assertEqual(r.status, 200)
        self.assertTrue(r.clean_eof)
        self.assertEqual(H.stream_counts(r.body), {0: 50})
        self.assertEqual(H.metric_sum(pg.metrics(), "promguard_rejections_total"), 0)

    def test_dry_run_stream_is_not_cut(self):
        pg = self.admit_unknown({"max_series": 50}, {"mode": "dry_run"})
        d = H.MetricsDelta(pg)
        r = self.stream(pg, {"series": 200, "samples": 100, "tag": tag()})
        self.assertEqual(r.status, 200)
        self.assertTrue(r.clean_eof, "dry run cut the stream")
        self.assertEqual(H.stream_counts(r.body), {0: 200})
        self.assertEqual(d.delta("promguard_shadow_rejections_total", tenant="default", reason="series"), 1)
        self.assertEqual(d.delta("promguard_rejections_total"), 0)
        H.wait_until(lambda: pg.log_lines("query would be rejected (dry run)"), 3, what="dry-run log line")

    # ---- capacity ---------------------------------------------------------------------------

    def hold_slot(self, pg, seconds):
        """Start a request that keeps the store busy for <seconds>; returns (thread, result dict)."""
        held = {}
        t = tag()

        def slow():
            held["resp"] = pg.post_read(H.read_body({"mode": "delay", "delay_ms": int(seconds * 1000), "tag": t}),
                                        timeout=15)

        th = threading.Thread(target=slow)
        th.start()
        H.wait_until(lambda: self.store.tag(t)["count"] == 1, 5, what="the slow request at the store")
        return th, held

    def test_max_inflight_defers_the_next_request_instead_of_429(self):
        pg = self.admit_unknown({"max_inflight": 1})
        th, held = self.hold_slot(pg, 1.5)
        try:
            d = H.MetricsDelta(pg)
            t = tag()
            t0 = time.monotonic()
            r = pg.post_read(H.read_body({"series": 1, "tag": t}), timeout=15)
            waited = time.monotonic() - t0
            H.assert_admitted(self, r)
            self.assertGreater(waited, 0.5, "it ran beside the slow one: limits.max_inflight=1 was not applied")
            self.assertEqual(self.store.tag(t)["count"], 1)
            self.assertEqual(d.delta("promguard_queue_deferred_total", tenant="default"), 1)
            self.assertEqual(d.delta("promguard_queue_wait_seconds_count"), 1)
            self.assertEqual(d.delta("promguard_rejections_total"), 0)
        finally:
            th.join(20)
        self.assertEqual(held["resp"].status, 200)
        m = pg.metrics()
        self.assertEqual(H.metric(m, "promguard_queue_length"), 0)
        self.assertEqual(H.metric(m, "promguard_backoff_tracked_keys"), 0)

    def test_max_queued_zero_answers_429_queue_full_with_retry_after(self):
        pg = self.admit_unknown({"max_inflight": 1}, {"queue": {"max_queued": 0}})
        th, held = self.hold_slot(pg, 1.5)
        try:
            d = H.MetricsDelta(pg)
            reads = self.store.reads()
            t0 = time.monotonic()
            r = pg.post_read(H.read_body({"series": 1}), timeout=15)
            self.assertLess(time.monotonic() - t0, H.scaled(0.5, by=3), "a full queue answers at once")
            self.assertEqual(r.status, 429, r)
            self.assertEqual(r.text, "promguard: over capacity: queue full: queue.max_queued=0 queries waiting\n")
            self.assertGreaterEqual(int(r.header("Retry-After")), 1)
            verdict, kv = H.decision(r)
            self.assertEqual((verdict, kv.get("reason")), ("reject", "queue_full"), r.header("X-Promguard-Decision"))
            self.assertEqual(self.store.reads(), reads)
            self.assertEqual(d.delta("promguard_rejections_total", tenant="default", reason="queue_full"), 1)
            self.assertEqual(d.delta("promguard_requests_total", code="429"), 1)
            self.assertEqual(d.delta("promguard_queue_exits_total", outcome="rejected"), 1)
        finally:
            th.join(20)
        self.assertEqual(held["resp"].status, 200)
        # capacity is back
        H.assert_admitted(self, pg.post_read(H.read_body({"series": 1})))
        self.assertEqual(H.metric(pg.metrics(), "promguard_backoff_tracked_keys"), 0)

    def test_queue_timeout_names_the_capacity_it_waited_for(self):
        pg = self.admit_unknown({"max_inflight": 1}, {"queue": {"max_wait": "300ms"}})
        th, held = self.hold_slot(pg, 1.5)
        try:
            d = H.MetricsDelta(pg)
            r = pg.post_read(H.read_body({"series": 1}), timeout=15)
            self.assertEqual(r.status, 429, r)
            self.assertRegex(r.text, r"^promguard: over capacity: waited \d+ms in the queue for "
                                     r"limits\.max_inflight=1 \(queue\.max_wait=300ms\)\n$")
            self.assertGreaterEqual(int(r.header("Retry-After")), 1)
            self.assertEqual(H.decision(r)[1].get("reason"), "queue_timeout")
            self.assertEqual(d.delta("promguard_rejections_total", tenant="default", reason="queue_timeout"), 1)
            self.assertEqual(d.delta("promguard_queue_exits_total", outcome="timeout"), 1)
        finally:
            th.join(20)
        self.assertEqual(held["resp"].status, 200)

    def test_rejections_before_the_store_do_not_take_capacity(self):
        pg = self.start({"limits": {"max_inflight": 1, "max_series": 10},
                         "estimator": {"unknown": "admit", "hints": {"fake": 100}}})
        for _ in range(5):
            H.assert_rejected(self, pg.post_read(H.read_body({"series": 1})), "series")
        self.assertEqual(H.metric(pg.metrics(), "promguard_inflight_queries"), 0)

    # ---- m3 ---------------------------------------------------------------------------------

    def m3_headers(self, config, headers=None, end_ms=None):
        pg = self.start(H.merge({"estimator": {"unknown": "admit"}}, config))
        t = tag()
        kw = {"end_ms": end_ms} if end_ms else {}
        H.assert_admitted(self, pg.post_read(H.read_body({"series": 1, "tag": t}, **kw), headers=headers))
        return {k.lower(): v for k, v in self.store.tag(t)["headers"].items()}

    def test_propagate_limits_m3(self):
        h = self.m3_headers({"upstream": {"propagate_limits": "m3"},
                             "limits": {"max_series": 1234, "max_range": "24h"}})
        self.assertEqual(h.get("m3-limit-max-series"), "1234", h)
        self.assertEqual(h.get("m3-limit-max-range"), "24h0m0s", h)

    def test_propagate_limits_m3_range_format(self):
        h = self.m3_headers({"upstream": {"propagate_limits": "m3"},
                             "limits": {"max_series": 1000, "max_range": "1h30m"}})
        self.assertEqual(h.get("m3-limit-max-range"), "1h30m0s", h)

    def test_propagate_limits_m3_without_max_range(self):
        h = self.m3_headers({"upstream": {"propagate_limits": "m3"}, "limits": {"max_series": 1000}})
        self.assertEqual(h.get("m3-limit-max-series"), "1000", h)
        self.assertNotIn("m3-limit-max-range", h)

    def test_propagate_limits_m3_uses_the_tenant_limit(self):
        h = self.m3_headers({"upstream": {"propagate_limits": "m3"}, "limits": {"max_series": 1000},
                             "tenants": {"team-a": {"max_series": 777}}}, headers={"X-Scope-OrgID": "team-a"})
        self.assertEqual(h.get("m3-limit-max-series"), "777", h)

    def test_propagate_limits_none_sends_nothing(self):
        h = self.m3_headers({"limits": {"max_series": 1000, "max_range": "24h"}})
        self.assertFalse([k for k in h if k.startswith("m3-")], h)


def upto(limit, true):
    """The actual figure of a SAMPLES response over a limit: promguard may stop counting once the
    limit is broken (limit < n <= true) or count the whole body (n == true); both fit the contract."""
    return lambda v: v is not None and v.isdigit() and limit < int(v) <= true


def promrr_frames(body):
    """Whole frames at the start of a (possibly cut) stream body."""
    w = H.FrameWalker()
    w.feed(body)
    return w.frames - (0 if w.finish() else 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)

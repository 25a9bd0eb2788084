"""Admission before the store: every limit and rule rejects with its exact 422 line, decision header,
counters and log line, and the rejected request never reaches the store; tenants, dry run, and the
estimate sources (recall, stats, probe, hint, default) with estimator.unknown.

The fake store's /stats read counter proves "never reached the store"; its /api/v1/series counter
and probe_tags prove what the probe did (tests/integration/README.md).
"""

import re
import time
import unittest
import urllib.parse

import harness as H
import promrr

START_MS = 1_700_000_000_000           # 2023-11-14T22:13:20Z
END_MS = START_MS + 3_600_000          # one hour
RANGE_TXT = "[2023-11-14T22:13:20.000Z,2023-11-14T23:13:20.000Z]"
METRIC_NAME_WHAT = "limits.require_metric_name=true: no __name__ equality or bounded __name__ regex"


tag = H.tag


def sel(labels):
    """The selector promguard prints for read_body(<labels>): fake{k="v",...} in order."""
    return "fake{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def m(name, value, t=promrr.EQ):
    return (t, name, value)


class AdmissionTest(unittest.TestCase):
    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        cls.store = H.FakeStore.start(cls)

    def start(self, config=None):
        return H.AdmissionPromguard.start(self, self.store.url, config=config)

    def hinted(self, hint, limits=None, extra=None):
        """promguard with estimator.hints {fake: <hint>} and <limits>; nothing probed."""
        cfg = {"limits": dict(limits or {}), "estimator": {"unknown": "admit", "hints": {"fake": hint}}}
        return self.start(H.merge(cfg, extra or {}))

    # ---- limits.max_series ----------------------------------------------------------------

    def test_max_series_estimate_rejects_before_store_with_exact_line(self):
        pg = self.hinted(500, {"max_series": 100})
        labels = {"series": 7, "tag": tag()}
        d = H.MetricsDelta(pg)
        reads = self.store.reads()
        r = pg.post_read(H.read_body(labels))
        self.assertEqual(
            r.text,
            f"promguard: query rejected: limits.max_series=100 estimated 500 for {sel(labels)} {RANGE_TXT} "
            f"tenant=default (source=hint)\n")
        H.assert_rejected(self, r, "series")
        self.assertEqual(r.header("X-Promguard-Decision"), "reject; reason=series; estimate=500; source=hint")
        self.assertEqual(self.store.reads(), reads, "a rejected request reached the store")
        self.assertEqual(self.store.tag(labels["tag"])["count"], 0)
        self.assertEqual(d.delta("promguard_rejections_total", tenant="default", reason="series"), 1)
        self.assertEqual(d.delta("promguard_queries_total", tenant="default", decision="rejected"), 1)
        self.assertEqual(d.delta("promguard_queries_total", decision="admitted"), 0)
        self.assertEqual(d.delta("promguard_estimates_total", source="hint"), 1)
        self.assertEqual(d.delta("promguard_requests_total", code="422"), 1)
        self.assertEqual(d.delta("promguard_estimated_series_count"), 1)

    def test_estimate_equal_to_max_series_is_admitted(self):
        pg = self.hinted(100, {"max_series": 100})
        d = H.MetricsDelta(pg)
        r = pg.post_read(H.read_body({"series": 3}))
        H.assert_admitted(self, r, source="hint", estimate=100)
        self.assertEqual(r.header("X-Promguard-Decision"), "admit; reason=none; estimate=100; source=hint")
        self.assertEqual(H.samples_counts(r.body), [(3, 30)])
        self.assertEqual(d.delta("promguard_queries_total", tenant="default", decision="admitted"), 1)

    def test_rejection_log_line(self):
        pg = self.hinted(500, {"max_series": 100})
        labels = {"series": 7, "tag": tag()}
        pg.post_read(H.read_body(labels))
        lines = H.wait_until(lambda: pg.log_lines("query rejected"), 3, what="a query rejected log line")
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("level=warn ") or " level=warn " in lines[0], lines[0])
        kv = H.parse_log_line(lines[0])
        want = {"level": "warn", "msg": "query rejected", "tenant": "default", "reason": "series",
                "limit": "limits.max_series", "value": "100", "estimate": "500", "source": "hint",
                "selector": sel(labels)}
        self.assertEqual({k: kv.get(k) for k in want}, want, lines[0])
        self.assertIn(kv.get("range"), (RANGE_TXT, RANGE_TXT[1:-1]), lines[0])

    def test_rejection_logs_are_rate_limited_per_selector(self):
        pg = self.hinted(500, {"max_series": 100})
        a_labels = {"series": 1, "tag": tag()}
        a = H.read_body(a_labels)
        b = H.read_body({"series": 2, "tag": tag()})
        t0 = time.monotonic()
        for _ in range(5):
            self.assertEqual(pg.post_read(a).status, 422)
        self.assertEqual(pg.post_read(b).status, 422)
        time.sleep(0.3)
        lines = pg.log_lines("query rejected")
        self.assertEqual(len(lines), 2, "5 rejections of one selector and 1 of another must log 2 lines:\n"
                         + "\n".join(lines))
        self.assertNotIn("suppressed=", lines[0])
        # the 10 s window: the next rejection of the first selector reports the 4 it swallowed
        time.sleep(max(0, 10.8 - (time.monotonic() - t0)))
        self.assertEqual(pg.post_read(a).status, 422)
        lines = H.wait_until(lambda: (lambda l: l if len(l) == 3 else None)(pg.log_lines("query rejected")), 3,
                             what="a third query rejected line")
        kv = H.parse_log_line(lines[2])
        self.assertEqual(kv.get("suppressed"), "4", lines[2])
        self.assertEqual(kv.get("selector"), sel(a_labels), lines[2])
        # every rejection was counted, logged or not
        self.assertEqual(H.metric(pg.metrics(), "promguard_rejections_total", tenant="default", reason="series"), 7)

    # ---- max_samples, max_range, max_regex_length, require_metric_name, queries/request --------

    def test_max_samples_estimate(self):
        # 100 series x 1 h / 15 s scrape interval = 24,000 samples (240 or 241 per series)
        pg = self.hinted(100, {"max_samples": 10000}, {"estimator": {"scrape_interval": "15s"}})
        reads = self.store.reads()
        r = pg.post_read(H.read_body({"series": 2}))
        H.assert_rejected(self, r, "samples", key="limits.max_samples", limit=10000, kind="estimated",
                          value=lambda v: v in ("24000", "24100"), source="hint")
        self.assertEqual(self.store.reads(), reads)
        self.assertEqual(H.metric(pg.metrics(), "promguard_rejections_total", tenant="default", reason="samples"), 1)

    def test_max_samples_follows_scrape_interval(self):
        # the same figures with a 1m scrape interval: 100 x 60 = 6,000 samples, under 10,000
        pg = self.hinted(100, {"max_samples": 10000}, {"estimator": {"scrape_interval": "1m"}})
        H.assert_admitted(self, pg.post_read(H.read_body({"series": 2})), source="hint")

    def test_max_range(self):
        pg = self.start({"limits": {"max_range": "30m"}, "estimator": {"unknown": "admit"}})
        reads = self.store.reads()
        labels = {"series": 1, "tag": tag()}
        r = pg.post_read(H.read_body(labels))
        H.assert_rejected(self, r, "range", key="limits.max_range", limit="30m", kind="actual", value="1h",
                          selector=sel(labels))
        self.assertEqual(self.store.reads(), reads)
        # 30 minutes exactly is allowed
        H.assert_admitted(self, pg.post_read(H.read_body(labels, end_ms=START_MS + 1_800_000)))
        self.assertEqual(H.metric(pg.metrics(), "promguard_rejections_total", tenant="default", reason="range"), 1)

    def test_max_regex_length(self):
        pg = self.start({"limits": {"max_regex_length": 10}, "estimator": {"unknown": "admit"}})
        reads = self.store.reads()
        long_re = "a" * 11 + "|b"
        r = pg.post_read(H.read_body_matchers([m("__name__", "fake"), m("pod", long_re, promrr.RE)]))
        H.assert_rejected(self, r, "regex", key="limits.max_regex_length", limit=10, kind="actual", value=13,
                          selector=f'fake{{pod=~"{long_re}"}}')
        r = pg.post_read(H.read_body_matchers([m("__name__", "fake"), m("pod", long_re, promrr.NRE)]))
        H.assert_rejected(self, r, "regex", key="limits.max_regex_length")
        self.assertEqual(self.store.reads(), reads)
        # 10 bytes is allowed
        H.assert_admitted(self, pg.post_read(
            H.read_body_matchers([m("__name__", "fake"), m("pod", "a" * 10, promrr.RE)])))
        self.assertEqual(H.metric(pg.metrics(), "promguard_rejections_total", tenant="default", reason="regex"), 2)

    def test_require_metric_name(self):
        pg = self.start({"estimator": {"unknown": "admit"}})
        reads = self.store.reads()
        nameless = [
            ('{__name__=~".+"}', [m("__name__", ".+", promrr.RE)]),
            ('{__name__=~".*",job="x"}', [m("__name__", ".*", promrr.RE), m("job", "x")]),
            ('{job="x"}', [m("job", "x")]),
            ('{__name__!="fake"}', [m("__name__", "fake", promrr.NEQ)]),
        ]
        for printed, matchers in nameless:
            with self.subTest(printed):
                r = pg.post_read(H.read_body_matchers(matchers))
                H.assert_rejected(self, r, "metric_name", what=METRIC_NAME_WHAT, selector=printed)
        self.assertEqual(self.store.reads(), reads, "a nameless selector reached the store")
        self.assertEqual(H.metric(pg.metrics(), "promguard_rejections_total", tenant="default",
                                  reason="metric_name"), len(nameless))
        bounded = [
            [m("__name__", "fake")],
            [m("__name__", "fake|other", promrr.RE)],
            [m("__name__", "fake_.*", promrr.RE)],
        ]
        for matchers in bounded:
            with self.subTest(matchers):
                H.assert_admitted(self, pg.post_read(H.read_body_matchers(matchers)))

    def test_require_metric_name_off(self):
        pg = self.start({"limits": {"require_metric_name": False}, "estimator": {"unknown": "admit"}})
        H.assert_admitted(self, pg.post_read(H.read_body_matchers([m("__name__", ".+", promrr.RE)])))
        H.assert_admitted(self, pg.post_read(H.read_body_matchers([m("job", "x")])))

    def test_max_queries_per_request(self):
        pg = self.start({"limits": {"max_queries_per_request": 2}, "estimator": {"unknown": "admit"}})
        reads = self.store.reads()
        r = pg.post_read(H.read_body(queries=[{"series": 1}, {"series": 2}, {"series": 3}]))
        H.assert_rejected(self, r, "queries_per_request", key="limits.max_queries_per_request", limit=2,
                          value=3)
        self.assertEqual(self.store.reads(), reads)
        r = pg.post_read(H.read_body(queries=[{"series": 1}, {"series": 2}]))
        H.assert_admitted(self, r)
        self.assertEqual(H.samples_counts(r.body), [(1, 10), (2, 20)])
        self.assertEqual(H.metric(pg.metrics(), "promguard_rejections_total", tenant="default",
                                  reason="queries_per_request"), 1)

    def test_one_query_over_the_limit_rejects_the_whole_request(self):
        pg = self.start({"limits": {"max_range": "30m"}, "estimator": {"unknown": "admit"}})
        reads = self.store.reads()
        body = promrr.snappy_encode(promrr.encode_read_request([
            {"start": START_MS, "end": START_MS + 60_000, "matchers": [m("__name__", "fake")]},
            {"start": START_MS, "end": END_MS, "matchers": [m("__name__", "fake"), m("q", "2")]},
        ]))
        r = pg.post_read(body)
        H.assert_rejected(self, r, "range", key="limits.max_range", selector='fake{q="2"}')
        self.assertEqual(self.store.reads(), reads)

    # ---- tenants --------------------------------------------------------------------------

    def test_tenant_overrides_through_the_header(self):
        pg = self.hinted(50, {"max_series": 20}, {"tenants": {"team-big": {"max_series": 1000},
                                                              "team-small": {"max_series": 10}}})
        body = H.read_body({"series": 5, "tag": tag()})
        reads = self.store.reads()
        H.assert_rejected(self, pg.post_read(body), "series", key="limits.max_series", limit=20,
                          kind="estimated", value=50, tenant="default", source="hint")
        H.assert_rejected(self, pg.post_read(body, headers={"X-Scope-OrgID": "team-other"}), "series",
                          key="limits.max_series", limit=20, tenant="team-other")
        H.assert_rejected(self, pg.post_read(body, headers={"X-Scope-OrgID": "team-small"}), "series",
                          key="tenants.team-small.max_series", limit=10, kind="estimated", value=50,
                          tenant="team-small")
        self.assertEqual(self.store.reads(), reads)
        r = pg.post_read(body, headers={"X-Scope-OrgID": "team-big"})
        H.assert_admitted(self, r, source="hint", estimate=50)
        self.assertEqual(H.samples_counts(r.body), [(5, 50)])
        mt = pg.metrics()
        for tenant, want in (("default", 1), ("team-other", 1), ("team-small", 1), ("team-big", 0)):
            self.assertEqual(H.metric(mt, "promguard_rejections_total", tenant=tenant, reason="series"), want, tenant)
        self.assertEqual(H.metric(mt, "promguard_queries_total", tenant="team-big", decision="admitted"), 1)

    def test_custom_tenant_header(self):
        pg = self.hinted(50, {"max_series": 20}, {"tenant_header": "X-Team",
                                                  "tenants": {"big": {"max_series": 100}}})
        body = H.read_body({"series": 5})
        H.assert_admitted(self, pg.post_read(body, headers={"X-Team": "big"}))
        H.assert_rejected(self, pg.post_read(body, headers={"X-Scope-OrgID": "big"}), "series", tenant="default")

    # ---- dry run --------------------------------------------------------------------------

    def test_dry_run_mode_admits_counts_and_logs(self):
        pg = self.hinted(500, {"max_series": 100}, {"mode": "dry_run"})
        labels = {"series": 7, "samples": 3, "tag": tag()}
        body = H.read_body(labels)
        direct = H.post_read(self.store.port, body)
        d = H.MetricsDelta(pg)
        r = pg.post_read(body)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, direct.body)
        self.assertEqual(r.header("X-Promguard-Decision"), "shadow_reject; reason=series; estimate=500; source=hint")
        self.assertEqual(self.store.tag(labels["tag"])["count"], 2)
        self.assertEqual(d.delta("promguard_shadow_rejections_total", tenant="default", reason="series"), 1)
        self.assertEqual(d.delta("promguard_queries_total", tenant="default", decision="shadow_rejected"), 1)
        self.assertEqual(d.delta("promguard_rejections_total"), 0)
        self.assertEqual(d.delta("promguard_queries_total", decision="rejected"), 0)
        lines = H.wait_until(lambda: pg.log_lines("query would be rejected (dry run)"), 3, what="dry-run log line")
        kv = H.parse_log_line(lines[0])
        want = {"msg": "query would be rejected (dry run)", "tenant": "default", "reason": "series",
                "limit": "limits.max_series", "value": "100", "estimate": "500", "source": "hint",
                "selector": sel(labels)}
        self.assertEqual({k: kv.get(k) for k in want}, want, lines[0])
        self.assertEqual(pg.log_lines("query rejected"), [])

    def test_dry_run_log_has_the_labels_of_a_real_rejection(self):
        labels = {"series": 7, "tag": tag()}
        keys = []
        for mode, msg in (("enforce", "query rejected"), ("dry_run", "query would be rejected (dry run)")):
            pg = self.hinted(500, {"max_series": 100}, {"mode": mode})
            pg.post_read(H.read_body(labels))
            line = H.wait_until(lambda: pg.log_lines(msg), 3, what=msg)[0]
            kv = H.parse_log_line(line)
            for k in ("msg", "ts", "time", "level"):
                kv.pop(k, None)
            keys.append(kv)
        self.assertEqual(sorted(keys[0]), sorted(keys[1]), "different label names")
        self.assertEqual(keys[0], keys[1], "different label values")

    def test_dry_run_rule(self):
        pg = self.start({
            "estimator": {"unknown": "admit", "hints": {"fake": 50}},
            "rules": [{"name": "team-label-is-expensive", "action": "dry_run",
                       "when": {"metric": "fake", "has_label": ["team"]}}],
        })
        d = H.MetricsDelta(pg)
        r = pg.post_read(H.read_body({"series": 2, "team": "a"}))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(H.samples_counts(r.body), [(2, 20)])
        verdict, kv = H.decision(r)
        self.assertEqual((verdict, kv.get("reason")), ("shadow_reject", "rule"), r.header("X-Promguard-Decision"))
        self.assertEqual(d.delta("promguard_shadow_rejections_total", tenant="default", reason="rule"), 1)
        self.assertEqual(d.delta("promguard_queries_total", tenant="default", decision="shadow_rejected"), 1)
        self.assertEqual(d.delta("promguard_rejections_total"), 0)
        line = H.wait_until(lambda: pg.log_lines("query would be rejected (dry run)"), 3, what="dry-run log")[0]
        lk = H.parse_log_line(line)
        self.assertEqual((lk.get("reason"), lk.get("limit")), ("rule", "rules.team-label-is-expensive"), line)
        # without the label the rule does not match
        H.assert_admitted(self, pg.post_read(H.read_body({"series": 2})))

    def test_dry_run_rule_does_not_hide_a_real_limit(self):
        pg = self.start({
            "limits": {"max_series": 10},
            "estimator": {"unknown": "admit", "hints": {"fake": 50}},
            "rules": [{"name": "shadow", "action": "dry_run", "when": {"metric": "fake"}}],
        })
        reads = self.store.reads()
        H.assert_rejected(self, pg.post_read(H.read_body({"series": 2})), "series", key="limits.max_series")
        self.assertEqual(self.store.reads(), reads)

    # ---- rules ----------------------------------------------------------------------------

    def test_example_rule_container_metrics_need_namespace(self):
        rule = {"name": "container-metrics-need-namespace", "action": "reject",
                "when": {"metric_regex": "container_.*", "lacks_label": ["namespace"]}}
        pg = self.start({"estimator": {"unknown": "admit"}, "rules": [rule]})
        reads = self.store.reads()
        r = pg.post_read(H.read_body_matchers([m("__name__", "container_cpu"), m("pod", "x")]))
        H.assert_rejected(self, r, "rule", what="rules.container-metrics-need-namespace matched",
                          selector='container_cpu{pod="x"}')
        self.assertEqual(self.store.reads(), reads)
        line = H.wait_until(lambda: pg.log_lines("query rejected"), 3, what="log line")[0]
        kv = H.parse_log_line(line)
        self.assertEqual((kv.get("reason"), kv.get("limit")), ("rule", "rules.container-metrics-need-namespace"))
        r = pg.post_read(H.read_body_matchers([m("__name__", "container_cpu"), m("namespace", "a")]))
        H.assert_admitted(self, r)
        self.assertEqual(self.store.reads(), reads + 1)
        # a metric outside the regex, or a name that only starts alike, is not touched
        H.assert_admitted(self, pg.post_read(H.read_body_matchers([m("__name__", "node_cpu"), m("pod", "x")])))
        H.assert_admitted(self, pg.post_read(H.read_body_matchers([m("__name__", "xcontainer_cpu"), m("pod", "x")])))
        self.assertEqual(H.metric(pg.metrics(), "promguard_rejections_total", tenant="default", reason="rule"), 1)

    def test_example_rule_edges_as_documented(self):
        # conf/promguard.yml: lacks_label means "not narrowed" (=~".+" and =~".*" do not narrow);
        # a __name__ regex that is a list of names is tested name by name, any other one matches.
        rule = {"name": "container-metrics-need-namespace",
                "when": {"metric_regex": "container_.*", "lacks_label": ["namespace"]}}
        pg = self.start({"estimator": {"unknown": "admit"}, "rules": [rule]})
        RE, EQ = promrr.RE, promrr.EQ
        cases = [
            ([m("__name__", "container_cpu"), m("namespace", ".+", RE)], True),
            ([m("__name__", "container_cpu"), m("namespace", ".*", RE)], True),
            ([m("__name__", "container_cpu"), m("namespace", "", EQ)], True),
            ([m("__name__", "container_cpu"), m("namespace", "a|b", RE)], False),
            ([m("__name__", "container_cpu"), m("namespace", "a", promrr.NEQ)], True),
            ([m("__name__", "container_cpu|node_cpu", RE), m("pod", "x")], True),
            ([m("__name__", "node_cpu|node_memory", RE), m("pod", "x")], False),
            ([m("__name__", "contain.*", RE), m("pod", "x")], True),
        ]
        for matchers, rejected in cases:
            with self.subTest(matchers=matchers):
                r = pg.post_read(H.read_body_matchers(matchers))
                if rejected:
                    H.assert_rejected(self, r, "rule", what="rules.container-metrics-need-namespace matched")
                else:
                    H.assert_admitted(self, r)

    def test_rule_conditions(self):
        rules = [
            {"name": "r-metric", "when": {"metric": "blocked_metric"}},
            {"name": "r-has", "when": {"metric": "has_metric", "has_label": ["secret"]}},
            {"name": "r-types", "when": {"metric": "types_metric", "matcher_types": ["nre"]}},
            {"name": "r-range", "when": {"metric": "range_metric", "range_above": "2h"}},
            {"name": "r-estimate", "when": {"metric": "est_metric", "estimate_above": 40}},
        ]
        pg = self.start({"estimator": {"unknown": "admit", "hints": {"est_metric": 50, "small_est_metric": 50}},
                         "rules": rules})
        long_end = START_MS + 3 * 3_600_000
        cases = [
            # (matchers, end, rejected by, what)
            ([m("__name__", "blocked_metric")], END_MS, "r-metric", "rules.r-metric matched"),
            ([m("__name__", "blocked_metric2")], END_MS, None, None),
            ([m("__name__", "has_metric"), m("secret", "x")], END_MS, "r-has", "rules.r-has matched"),
            ([m("__name__", "has_metric"), m("secret", "x", promrr.NEQ)], END_MS, "r-has", "rules.r-has matched"),
            ([m("__name__", "has_metric"), m("public", "x")], END_MS, None, None),
            ([m("__name__", "types_metric"), m("a", "x", promrr.NRE)], END_MS, "r-types", "rules.r-types matched"),
            ([m("__name__", "types_metric"), m("a", "x", promrr.RE)], END_MS, None, None),
            ([m("__name__", "range_metric")], long_end, "r-range", "rules.r-range matched"),
            ([m("__name__", "range_metric")], END_MS, None, None),
            ([m("__name__", "est_metric")], END_MS, "r-estimate", "rules.r-estimate=40 estimated 50"),
            ([m("__name__", "small_est_metric")], END_MS, None, None),
        ]
        reads = self.store.reads()
        rejected = 0
        for matchers, end, rule, what in cases:
            with self.subTest(matchers=matchers, end=end):
                r = pg.post_read(H.read_body_matchers(matchers, end_ms=end))
                if rule:
                    rejected += 1
                    H.assert_rejected(self, r, "rule", what=what)
                else:
                    H.assert_admitted(self, r)
        self.assertEqual(self.store.reads(), reads + len(cases) - rejected)
        self.assertEqual(H.metric(pg.metrics(), "promguard_rejections_total", tenant="default", reason="rule"),
                         rejected)

    # ---- estimator.unknown ----------------------------------------------------------------

    def test_unknown_reject(self):
        pg = self.start({"estimator": {"unknown": "reject", "probe": "off", "hints": {"hinted": 5}}})
        reads = self.store.reads()
        r = pg.post_read(H.read_body({"series": 3}))
        self.assertEqual(r.status, 422, r)
        self.assertRegex(r.text, H.ERROR_LINE_RE)
        self.assertTrue(r.text.startswith("promguard: query rejected: "), r.text)
        verdict, kv = H.decision(r)
        self.assertEqual((verdict, kv.get("reason"), kv.get("source")), ("reject", "unknown", "default"),
                         r.header("X-Promguard-Decision"))
        self.assertIsNotNone(H.parse_rejection(r.body), r.text)
        self.assertEqual(self.store.reads(), reads)
        self.assertEqual(H.metric(pg.metrics(), "promguard_rejections_total", tenant="default", reason="unknown"), 1)
        # a metric with a hint is known
        H.assert_admitted(self, pg.post_read(H.read_body_matchers([m("__name__", "hinted")])), source="hint",
                          estimate=5)

    def test_unknown_admit(self):
        pg = self.start({"limits": {"max_series": 5}, "estimator": {"unknown": "admit"}})
        series_api = H.series_api_requests(self.store)
        d = H.MetricsDelta(pg)
        r = pg.post_read(H.read_body({"series": 3, "tag": tag()}))
        H.assert_admitted(self, r, source="default", estimate=0)
        self.assertEqual(H.series_api_requests(self.store), series_api, "unknown=admit must not probe")
        self.assertEqual(d.delta("promguard_estimates_total", source="default"), 1)

    # ---- estimate sources -------------------------------------------------------------------

    def test_recall_of_a_relayed_response(self):
        pg = self.start({"limits": {"max_series": 100}, "estimator": {"unknown": "admit"}})
        body = H.read_body({"series": 40, "tag": tag()})
        H.assert_admitted(self, pg.post_read(body), source="default", estimate=0)
        d = H.MetricsDelta(pg)
        H.assert_admitted(self, pg.post_read(body), source="recall", estimate=40)
        self.assertEqual(d.delta("promguard_estimates_total", source="recall"), 1)
        # recall is per tenant
        verdict, kv = H.decision(pg.post_read(body, headers={"X-Scope-OrgID": "someone-else"}))
        self.assertNotEqual(kv.get("source"), "recall", "recall leaked across tenants")

    def test_recall_rejects_a_repeat_before_the_store(self):
        # learn by relaying: admitted by the "default" estimate, the 150 series are over the limit
        # and counted while relaying; the identical selector is then rejected before the store.
        pg = self.start({"limits": {"max_series": 100}, "estimator": {"unknown": "admit"}})
        labels = {"series": 150, "tag": tag()}
        body = H.read_body(labels)
        first = pg.post_read(body)
        self.assertEqual(self.store.tag(labels["tag"])["count"], 1)
        # the actual figure: all 150, or what was counted when the limit broke (a SAMPLES body may be
        # abandoned there)
        within = lambda v: v is not None and v.isdigit() and 100 < int(v) <= 150  # noqa: E731
        p = H.assert_rejected(self, first, "series", key="limits.max_series", limit=100, kind="actual", value=within)
        reads = self.store.reads()
        r = pg.post_read(body)
        H.assert_rejected(self, r, "series", key="limits.max_series", limit=100, kind="estimated", value=p["value"],
                          source="recall", selector=sel(labels))
        self.assertEqual(self.store.reads(), reads, "the repeat reached the store")
        self.assertEqual(r.header("X-Promguard-Decision"),
                         f"reject; reason=series; estimate={p['value']}; source=recall")

    def test_stats_estimate_other_values_of_a_learned_metric(self):
        pg = self.start({"limits": {"max_series": 30}, "estimator": {"unknown": "admit"}})
        H.assert_admitted(self, pg.post_read(H.read_body({"series": 20, "grp": "a"})), source="default")
        H.assert_admitted(self, pg.post_read(H.read_body({"series": 20, "grp": "b"})))
        reads = self.store.reads()
        # a regex over both learned values: 40 series by the learned value shares, over 30
        r = pg.post_read(H.read_body_matchers([m("__name__", "fake"), m("series", "20"), m("grp", "a|b", promrr.RE)]))
        H.assert_rejected(self, r, "series", key="limits.max_series", kind="estimated", source="stats",
                          value=lambda v: 36 <= int(v) <= 44)
        # the same metric without the grp matcher: all 40
        r = pg.post_read(H.read_body({"series": 20}))
        H.assert_rejected(self, r, "series", source="stats", value=lambda v: 36 <= int(v) <= 44)
        self.assertEqual(self.store.reads(), reads, "a stats rejection reached the store")
        # one learned value: 20, under the limit
        d = H.MetricsDelta(pg)
        r = pg.post_read(H.read_body_matchers([m("__name__", "fake"), m("series", "20"), m("grp", "a", promrr.RE)]))
        kv = H.assert_admitted(self, r, source="stats")
        self.assertTrue(16 <= int(kv["estimate"]) <= 24, r.header("X-Promguard-Decision"))
        self.assertEqual(d.delta("promguard_estimates_total", source="stats"), 1)

    def test_repeated_selector_is_learned_at_most_once_per_second_but_always_counted(self):
        pg = self.start({"estimator": {"unknown": "admit"}})
        a = H.read_body({"series": 20, "grp": "a", "tag": tag()})
        d = H.MetricsDelta(pg)
        H.assert_admitted(self, pg.post_read(a), source="default")
        self.assertEqual(d.delta("promguard_estimator_responses_total", outcome="learned"), 1)
        # the same selector again at once: relayed and counted, its labels not collected again
        d = H.MetricsDelta(pg)
        for _ in range(3):
            H.assert_admitted(self, pg.post_read(a), source="recall", estimate=20)
        self.assertEqual(d.delta("promguard_estimator_responses_total", outcome="fresh"), 3)
        self.assertEqual(d.delta("promguard_estimator_responses_total", outcome="learned"), 0)
        self.assertEqual(d.delta("promguard_response_series_total"), 60, "a fresh response was not counted")
        # another selector is learned at once; the first one again after the second has passed
        d = H.MetricsDelta(pg)
        H.assert_admitted(self, pg.post_read(H.read_body({"series": 20, "grp": "b", "tag": tag()})))
        self.assertEqual(d.delta("promguard_estimator_responses_total", outcome="learned"), 1)
        time.sleep(1.1)
        d = H.MetricsDelta(pg)
        H.assert_admitted(self, pg.post_read(a), source="recall")
        self.assertEqual(d.delta("promguard_estimator_responses_total", outcome="learned"), 1)
        self.assertEqual(d.delta("promguard_estimator_responses_total", outcome="fresh"), 0)
        # learned again, its 20 series were seen a second ago: not counted twice by the estimator
        self.assertEqual(d.delta("promguard_estimator_series_total", outcome="recent"), 20)
        self.assertEqual(d.delta("promguard_estimator_series_total", outcome="learned"), 0)

    def test_stats_estimate_for_an_unseen_value(self):
        pg = self.start({"estimator": {"unknown": "admit"}})
        H.assert_admitted(self, pg.post_read(H.read_body({"series": 20, "grp": "a"})), source="default")
        r = pg.post_read(H.read_body({"series": 20, "grp": "zzz"}))
        H.assert_admitted(self, r, source="stats")

    def test_probe_series_api(self):
        pg = self.start({"limits": {"max_series": 100}})  # estimator.unknown defaults to probe
        t = tag()
        labels = {"series": 30, "tag": t}
        body = H.read_body(labels)
        d = H.MetricsDelta(pg)
        r = pg.post_read(body)
        H.assert_admitted(self, r, source="probe", estimate=30)
        self.assertEqual(H.samples_counts(r.body), [(30, 300)])
        p = H.probes(self.store, t)
        self.assertEqual(p["count"], 1, "the store's /api/v1/series was not asked exactly once")
        path = p["path"]
        self.assertTrue(path.startswith("/api/v1/series?"), path)
        qs = dict(urllib.parse.parse_qsl(path.split("?", 1)[1]))
        self.assertIn('series="30"', qs.get("match[]", ""), path)
        self.assertIn('tag="' + t + '"', qs.get("match[]", ""), path)
        self.assertAlmostEqual(float(qs["start"]), START_MS / 1000, delta=0.001)
        self.assertAlmostEqual(float(qs["end"]), END_MS / 1000, delta=0.001)
        self.assertEqual(d.delta("promguard_probes_total", result="ok"), 1)
        self.assertEqual(d.delta("promguard_estimates_total", source="probe"), 1)
        # the second identical query uses what was learned: no new probe
        r = pg.post_read(body)
        H.assert_admitted(self, r)
        self.assertIn(H.decision(r)[1].get("source"), ("probe", "recall"), r.header("X-Promguard-Decision"))
        self.assertEqual(H.probes(self.store, t)["count"], 1, "the probe answer was not cached")

    def test_probe_over_the_limit_rejects_before_the_read(self):
        pg = self.start({"limits": {"max_series": 100}})
        t = tag()
        labels = {"series": 5000, "tag": t}
        reads = self.store.reads()
        d = H.MetricsDelta(pg)
        r = pg.post_read(H.read_body(labels))
        # the probe reads at most max_series + 1 series, so that is the estimate it can give
        H.assert_rejected(self, r, "series", key="limits.max_series", limit=100, kind="estimated", source="probe",
                          value=101, selector=sel(labels))
        self.assertEqual(self.store.reads(), reads)
        self.assertEqual(H.probes(self.store, t)["count"], 1)
        self.assertEqual(d.delta("promguard_probes_total", result="truncated"), 1)
        # cached: the repeat is rejected without a new probe
        H.assert_rejected(self, pg.post_read(H.read_body(labels)), "series")
        self.assertEqual(H.probes(self.store, t)["count"], 1)
        self.assertEqual(self.store.reads(), reads)

    def test_failed_probe_admits(self):
        pg = self.start({"limits": {"max_series": 100}})
        t = tag()
        labels = {"series": 4, "probe_status": 500, "tag": t}
        d = H.MetricsDelta(pg)
        r = pg.post_read(H.read_body(labels))
        H.assert_admitted(self, r)
        self.assertEqual(H.samples_counts(r.body), [(4, 40)])
        self.assertEqual(H.probes(self.store, t)["count"], 1)
        self.assertEqual(self.store.tag(t)["count"], 1)
        self.assertEqual(d.delta("promguard_probes_total", result="failed"), 1)
        self.assertEqual(d.delta("promguard_probes_total", result="ok"), 0)

    def test_probe_url_setting(self):
        # probe_url pointing at the store explicitly behaves like the derived one
        pg = self.start({"limits": {"max_series": 100},
                         "estimator": {"probe_url": f"http://127.0.0.1:{self.store.port}"}})
        t = tag()
        H.assert_admitted(self, pg.post_read(H.read_body({"series": 7, "tag": t})), source="probe", estimate=7)
        self.assertEqual(H.probes(self.store, t)["count"], 1)

    def test_probe_off(self):
        pg = self.start({"estimator": {"probe": "off", "unknown": "admit"}})
        t = tag()
        H.assert_admitted(self, pg.post_read(H.read_body({"series": 7, "tag": t})), source="default")
        self.assertEqual(H.probes(self.store, t)["count"], 0)

    def test_hint_is_used_before_anything_is_learned(self):
        pg = self.start({"estimator": {"hints": {"fake": 12}}})  # unknown=probe, but the hint is known
        t = tag()
        H.assert_admitted(self, pg.post_read(H.read_body({"series": 3, "tag": t})), source="hint", estimate=12)
        self.assertEqual(H.probes(self.store, t)["count"], 0, "a hinted metric was probed")

    def test_estimate_error_ratio(self):
        pg = self.hinted(40)
        d = H.MetricsDelta(pg)
        H.assert_admitted(self, pg.post_read(H.read_body({"series": 20})), source="hint", estimate=40)
        self.assertEqual(d.delta("promguard_estimate_error_ratio_count"), 1)
        self.assertAlmostEqual(d.delta("promguard_estimate_error_ratio_sum"), 0.5, places=3)
        self.assertEqual(d.delta("promguard_estimated_series_count"), 1)
        self.assertAlmostEqual(d.delta("promguard_estimated_series_sum"), 40, places=3)


if __name__ == "__main__":
    unittest.main(verbosity=2)

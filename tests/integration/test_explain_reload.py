"""GET /api/v1/explain (the decision promguard would take, without I/O) and config reload by SIGHUP
and POST /-/reload (new limits for new requests, connections kept, a bad file changes nothing)."""

import json
import re
import signal
import socket
import threading
import unittest

import harness as H
import promrr

START_S = 1_700_000_000
START_MS = START_S * 1000
END_MS = START_MS + 3_600_000


tag = H.tag


class ExplainTest(unittest.TestCase):
    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        cls.store = H.FakeStore.start(cls)

    def start(self, config=None):
        return H.AdmissionPromguard.start(self, self.store.url, config=config)

    def explain_json(self, pg, selector, start=START_S, end=START_S + 3600, tenant=None):
        r = pg.explain(selector, start, end, tenant)
        self.assertEqual(r.status, 200, r)
        self.assertIn("application/json", r.header("Content-Type", ""), r)
        doc = json.loads(r.body)
        self.assertIsInstance(doc.get("queries"), list, doc)
        self.assertEqual(len(doc["queries"]), 1, doc)
        return doc, doc["queries"][0]

    def test_explain_admit(self):
        pg = self.start({"limits": {"max_series": 100}, "estimator": {"hints": {"fake": 50}, "scrape_interval": "15s"}})
        doc, q = self.explain_json(pg, 'fake{series="5",ns=~"a|b",pod!="x",zone!~"z.*"}')
        self.assertEqual(doc["tenant"], "default")
        self.assertEqual(q["selector"], 'fake{series="5",ns=~"a|b",pod!="x",zone!~"z.*"}')
        self.assertEqual(q["matchers"], [
            {"name": "__name__", "type": "=", "value": "fake"},
            {"name": "series", "type": "=", "value": "5"},
            {"name": "ns", "type": "=~", "value": "a|b"},
            {"name": "pod", "type": "!=", "value": "x"},
            {"name": "zone", "type": "!~", "value": "z.*"},
        ])
        self.assertEqual((q["start"], q["end"]), (START_MS, END_MS))
        self.assertEqual(q["estimate"]["source"], "hint")
        self.assertEqual(q["estimate"]["series"], 50)
        self.assertIn(q["estimate"]["samples"], (12000, 12050))  # 50 x 1h / 15s
        self.assertIn("bytes", q["estimate"])
        self.assertEqual(q["decision"]["verdict"], "admit")
        self.assertEqual(str(doc["limits"]["max_series"]), "100", doc["limits"])

    def test_explain_reject_carries_the_422_line(self):
        pg = self.start({"limits": {"max_series": 10}, "estimator": {"hints": {"fake": 50}}})
        doc, q = self.explain_json(pg, 'fake{series="5"}')
        dec = q["decision"]
        self.assertEqual((dec["verdict"], dec["reason"], dec["key"]), ("reject", "series", "limits.max_series"), dec)
        self.assertEqual(str(dec["limit"]), "10")
        self.assertEqual(str(dec["value"]), "50")
        self.assertEqual(
            dec["message"].rstrip("\n"),
            'promguard: query rejected: limits.max_series=10 estimated 50 for fake{series="5"} '
            '[2023-11-14T22:13:20.000Z,2023-11-14T23:13:20.000Z] tenant=default (source=hint)')
        # and a real read of the same selector gets that line
        r = pg.post_read(H.read_body({"series": 5}))
        self.assertEqual(r.text.rstrip("\n"), dec["message"].rstrip("\n"))

    def test_explain_rfc3339_times(self):
        pg = self.start({"estimator": {"hints": {"fake": 5}}})
        doc, q = self.explain_json(pg, "fake", start="2023-11-14T22:13:20Z", end="2023-11-14T23:13:20.5Z")
        self.assertEqual((q["start"], q["end"]), (START_MS, END_MS + 500))
        doc, q = self.explain_json(pg, "fake", start="1700000000.25", end="1700003600")
        self.assertEqual((q["start"], q["end"]), (START_MS + 250, END_MS))

    def test_explain_tenant_override(self):
        pg = self.start({"limits": {"max_series": 100}, "estimator": {"hints": {"fake": 50}},
                         "tenants": {"team-small": {"max_series": 10}}})
        doc, q = self.explain_json(pg, "fake", tenant="team-small")
        self.assertEqual(doc["tenant"], "team-small")
        self.assertEqual(str(doc["limits"]["max_series"]), "10", doc["limits"])
        dec = q["decision"]
        self.assertEqual((dec["verdict"], dec["key"]), ("reject", "tenants.team-small.max_series"), dec)
        self.assertIn("tenant=team-small", dec["message"])
        doc, q = self.explain_json(pg, "fake", tenant="someone")
        self.assertEqual(q["decision"]["verdict"], "admit")
        self.assertEqual(str(doc["limits"]["max_series"]), "100")

    def test_explain_structure_and_rules(self):
        pg = self.start({"limits": {"max_range": "2h"}, "estimator": {"unknown": "admit"},
                         "rules": [{"name": "container-metrics-need-namespace",
                                    "when": {"metric_regex": "container_.*", "lacks_label": ["namespace"]}}]})
        _, q = self.explain_json(pg, '{__name__=~".+"}')
        self.assertEqual((q["decision"]["verdict"], q["decision"]["reason"]), ("reject", "metric_name"))
        _, q = self.explain_json(pg, 'container_cpu{pod="x"}')
        self.assertEqual((q["decision"]["verdict"], q["decision"]["reason"], q["decision"]["key"]),
                         ("reject", "rule", "rules.container-metrics-need-namespace"))
        _, q = self.explain_json(pg, 'container_cpu{namespace="a"}')
        self.assertEqual(q["decision"]["verdict"], "admit")
        _, q = self.explain_json(pg, "fake", end=START_S + 3 * 3600)
        self.assertEqual((q["decision"]["reason"], q["decision"]["key"]), ("range", "limits.max_range"))

    def test_explain_dry_run(self):
        pg = self.start({"mode": "dry_run", "limits": {"max_series": 10}, "estimator": {"hints": {"fake": 50}}})
        _, q = self.explain_json(pg, "fake")
        self.assertEqual((q["decision"]["verdict"], q["decision"]["reason"]), ("shadow_reject", "series"))

    def test_explain_does_no_io(self):
        pg = self.start()  # estimator.unknown: probe
        t = tag()
        before = self.store.stats()["requests"]
        d = H.MetricsDelta(pg)
        _, q = self.explain_json(pg, f'fake{{series="5",tag="{t}"}}')
        self.assertEqual(self.store.stats()["requests"], before, "explain talked to the store")
        self.assertEqual(H.probes(self.store, t)["count"], 0)
        self.assertEqual(q["estimate"]["source"], "default")
        self.assertEqual(d.delta("promguard_queries_total"), 0, "explain counted as a query")

    def test_explain_bad_requests(self):
        pg = self.start()
        for sel in ("fake{", 'fake{a="b"', "{}", 'fake{a=~"("}'):
            with self.subTest(sel):
                r = pg.explain(sel, START_S, START_S + 60)
                self.assertEqual(r.status, 400, r)
                self.assertRegex(r.text, H.ERROR_LINE_RE)
                self.assertTrue(r.text.startswith("promguard: bad request: "), r.text)
        r = pg.admin_get("/api/v1/explain?start=1&end=2")
        self.assertEqual(r.status, 400, r)
        self.assertTrue(r.text.startswith("promguard: bad request: "), r.text)
        r = pg.explain("fake", start="yesterday", end="now")
        self.assertEqual(r.status, 400, r)


class ReloadTest(unittest.TestCase):
    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        cls.store = H.FakeStore.start(cls)

    def start(self, config=None):
        return H.AdmissionPromguard.start(self, self.store.url, config=config)

    def hinted(self, max_series, extra=None):
        return self.start(H.merge({"limits": {"max_series": max_series},
                                   "estimator": {"unknown": "admit", "hints": {"fake": 50}}}, extra or {}))

    def reload_gauge(self, pg):
        return H.metric(pg.metrics(), "promguard_config_last_reload_successful")

    def test_post_reload_applies_new_limits(self):
        # 30 series: admitted under 100 (hint 50) and learned; over the 10 of the new file
        pg = self.hinted(100)
        body = H.read_body({"series": 30})
        H.assert_admitted(self, pg.post_read(body), source="hint", estimate=50)
        self.assertEqual(self.reload_gauge(pg), 1)
        pg.rewrite_config({"limits": {"max_series": 10}})
        r = pg.reload()
        self.assertEqual((r.status, r.text), (200, "promguard: config reloaded\n"), r)
        H.assert_rejected(self, pg.post_read(body), "series", key="limits.max_series", limit=10, kind="estimated",
                          value=30, source="recall")
        self.assertEqual(self.reload_gauge(pg), 1)
        r = pg.explain("fake", START_S, START_S + 60)
        self.assertEqual(json.loads(r.body)["queries"][0]["decision"]["verdict"], "reject")
        # tenants, rules and mode come with the file too
        pg.rewrite_config({"mode": "dry_run"})
        self.assertEqual(pg.reload().status, 200)
        self.assertEqual(H.decision(pg.post_read(body))[0], "shadow_reject")
        pg.rewrite_config({"mode": "enforce", "tenants": {"big": {"max_series": 1000}},
                           "rules": [{"name": "no-team-x", "when": {"metric": "fake", "has_label": ["team"]}}]})
        self.assertEqual(pg.reload().status, 200)
        H.assert_admitted(self, pg.post_read(body, headers={"X-Scope-OrgID": "big"}))
        H.assert_rejected(self, pg.post_read(H.read_body({"team": "x"}), headers={"X-Scope-OrgID": "big"}),
                          "rule", what="rules.no-team-x matched", tenant="big")

    def test_sighup_applies_new_limits(self):
        pg = self.hinted(100)
        body = H.read_body({"series": 30})
        H.assert_admitted(self, pg.post_read(body))
        pg.rewrite_config({"limits": {"max_series": 10}})
        pg.signal(signal.SIGHUP)
        r = H.wait_until(lambda: (lambda r: r if r.status == 422 else None)(pg.post_read(body)), 5,
                         what="the new limit after SIGHUP")
        H.assert_rejected(self, r, "series", key="limits.max_series", limit=10)
        self.assertEqual(self.reload_gauge(pg), 1)
        self.assertIsNone(pg.proc.poll())

    def test_reload_keeps_connections_and_in_flight_requests(self):
        pg = self.hinted(100)
        held = {}

        def slow():
            held["r"] = pg.post_read(H.read_body({"mode": "delay", "delay_ms": 1500, "series": 4}), timeout=15)

        th = threading.Thread(target=slow)
        sock = socket.create_connection((H.HOST, pg.port))
        self.addCleanup(sock.close)
        try:
            r = H.raw_request(pg.port, "POST", "/api/v1/read", H.read_body({"series": 30}), H.PROM_HEADERS, sock=sock)
            H.assert_admitted(self, r)
            th.start()
            H.wait_until(lambda: self.store.stats()["modes"]["delay"] >= 1, 5, what="the slow request at the store")
            pg.rewrite_config({"limits": {"max_series": 10}})
            self.assertEqual(pg.reload().status, 200)
            # same keep-alive connection, new limit
            r = H.raw_request(pg.port, "POST", "/api/v1/read", H.read_body({"series": 30}), H.PROM_HEADERS, sock=sock)
            H.assert_rejected(self, r, "series", limit=10)
        finally:
            th.join(20)
        self.assertEqual(held["r"].status, 200, held.get("r"))
        self.assertEqual(H.samples_counts(held["r"].body), [(4, 40)])

    def test_bad_file_by_post_lists_every_error_and_keeps_the_old_config(self):
        pg = self.hinted(100)
        body = H.read_body({"series": 30})
        good = H.to_yaml_any(pg.cfg) + "\n"
        bad = good.replace("max_series: 100", "max_series: -5") + "mode: bogus\n"
        self.assertNotEqual(bad, good)
        pg.rewrite_config(text=bad)
        r = pg.reload()
        self.assertEqual(r.status, 400, r)
        lines = r.text.rstrip("\n").split("\n")
        self.assertGreaterEqual(len(lines), 2, r.text)
        line_re = re.compile(r"^" + re.escape(pg.cfg_path) + r":\d+: [A-Za-z0-9_.\[\]-]+: .+$")
        for ln in lines:
            if ln.startswith("promguard: "):
                continue  # a heading line is fine
            self.assertRegex(ln, line_re)
        self.assertTrue(any("limits.max_series" in ln for ln in lines), r.text)
        self.assertTrue(any(": mode: " in ln for ln in lines), r.text)
        # the old config is still in force
        H.assert_admitted(self, pg.post_read(body))
        self.assertEqual(self.reload_gauge(pg), 0)
        # a good file again
        pg.rewrite_config(text=good.replace("max_series: 100", "max_series: 10"))
        self.assertEqual(pg.reload().status, 200)
        self.assertEqual(self.reload_gauge(pg), 1)
        H.assert_rejected(self, pg.post_read(body), "series", limit=10)

    def test_bad_file_by_sighup_keeps_the_old_config(self):
        pg = self.hinted(100)
        body = H.read_body({"series": 3})
        pg.rewrite_config(text="limits:\n  max_series: lots\nupstream: {}\n")
        pg.signal(signal.SIGHUP)
        H.wait_until(lambda: self.reload_gauge(pg) == 0, 5, what="promguard_config_last_reload_successful 0")
        self.assertIsNone(pg.proc.poll(), "a bad file stopped promguard")
        H.assert_admitted(self, pg.post_read(body))
        self.assertIn("max_series", pg.log())

    def test_get_reload_is_405(self):
        pg = self.start()
        r = pg.admin_get("/-/reload")
        self.assertEqual(r.status, 405, r)


if __name__ == "__main__":
    unittest.main(verbosity=2)

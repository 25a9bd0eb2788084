"""PromQL through promguard gives exactly what it gives without it.

Topology (all real processes on 127.0.0.1, free ports, one temp dir):

    front A (Prometheus 2.42) --remote_read--> promguard --> store (Prometheus 2.42)
    front B (Prometheus 2.42) --remote_read-----------------> store

The store holds backfilled blocks from gen_openmetrics.py (3 h at 15 s; 6 + 10 + 20,000
series). Both fronts have empty TSDBs and `read_recent: true`, so every answer they give comes
from remote read. Each query below runs on A, on B and on the store itself; the `data` parts
must be identical once the result lists are sorted by labels, and A must carry no `warnings`
(a failed remote read shows up only as a warning, with status success and no data).
"""
import os
import shutil
import tempfile
import time
import unittest

import e2e_lib as lib

ENV = {}  # filled by setUpModule: procs, base URLs, data end time


def setUpModule():
    work = tempfile.mkdtemp(prefix="promguard-e2e-")
    ENV["work"] = work
    unittest.addModuleCleanup(_cleanup)
    procs = ENV["procs"] = []
    t0 = time.monotonic()
    # Data ends 10 minutes ago so every query time below is well inside the blocks.
    end = lib.make_store_blocks(os.path.join(work, "store-data"), end=time.time() - 600)
    ENV["end"] = end
    t_data = time.monotonic() - t0

    store_port = lib.free_port()
    procs.append(lib.start_prometheus("store", work, store_port,
                                      tsdb_dir=os.path.join(work, "store-data")))
    store = "http://127.0.0.1:%d" % store_port

    pg, pg_port, admin_port = lib.start_promguard(work, store + "/api/v1/read")
    procs.append(pg)

    a_port, b_port = lib.free_port(), lib.free_port()
    procs.append(lib.start_prometheus(
        "front-a", work, a_port, remote_read_url="http://127.0.0.1:%d/api/v1/read" % pg_port))
    procs.append(lib.start_prometheus(
        "front-b", work, b_port, remote_read_url=store + "/api/v1/read"))

    ENV.update(store=store, a="http://127.0.0.1:%d" % a_port, b="http://127.0.0.1:%d" % b_port,
               admin="http://127.0.0.1:%d" % admin_port, promguard=pg)
    print("\ne2e setup: data %.1fs, processes %.1fs (work dir %s)"
          % (t_data, time.monotonic() - t0 - t_data, work), flush=True)


def _cleanup():
    failed_logs = []
    for p in reversed(ENV.get("procs", [])):
        rc = p.stop()
        # Prometheus exits 0 on SIGTERM; promguard drains and exits 0 (interface.md).
        if rc not in (0, -15):
            failed_logs.append("%s exited %s:\n%s" % (p.name, rc, p.log_tail()))
    work = ENV.get("work")
    if work and not os.environ.get("PROMGUARD_KEEP_TMP"):
        shutil.rmtree(work, ignore_errors=True)
    elif work:
        print("kept %s" % work)
    if failed_logs:
        raise AssertionError("\n\n".join(failed_logs))


# (name, PromQL, expect data?) — instant queries, evaluated 30 minutes before the data ends.
INSTANT = [
    ("plain selector", 'demo_requests_total', True),
    ("regex matcher", 'demo_temperature_celsius{room=~"room-[12]"}', True),
    ("negative regex matcher", 'demo_temperature_celsius{sensor!~"s[0-4]"}', True),
    ("not-equal matcher", 'demo_requests_total{method!="GET"}', True),
    ("rate", 'rate(demo_requests_total[5m])', True),
    ("sum by rate", 'sum by (method) (rate(demo_requests_total[5m]))', True),
    ("topk", 'topk(3, demo_temperature_celsius)', True),
    ("count 20k series", 'count(demo_pod_memory_bytes)', True),
    ("sum by on 20k series", 'sum by (namespace) (demo_pod_memory_bytes)', True),
    ("selector on 20k-series metric", 'demo_pod_memory_bytes{namespace="ns-07"}', True),
    ("topk with regex on 20k-series metric", 'topk(5, demo_pod_memory_bytes{namespace=~"ns-1."})',
     True),
    ("count by regex on pod", 'count by (namespace) (demo_pod_memory_bytes{pod=~"pod-0.*"})', True),
    ("two selectors (or)", 'demo_requests_total{code="500"} or demo_temperature_celsius{room="room-1"}',
     True),
    ("name alternation", '{__name__=~"demo_requests_total|demo_temperature_celsius"}', True),
    ("binary op on two selectors", 'sum(demo_requests_total) / count(demo_temperature_celsius)', True),
    ("matches nothing (unknown metric)", 'demo_does_not_exist', False),
    ("matches nothing (unknown label value)", 'demo_requests_total{method="DELETE"}', False),
]

# (name, PromQL, range seconds, step seconds, expect data?) — ranges end 1 hour before the data does.
RANGE = [
    ("rate over 2h", 'rate(demo_requests_total[5m])', 7200, 60, True),
    ("regex selector over 2h", 'demo_temperature_celsius{room=~"room-[0-2]"}', 7200, 300, True),
    ("sum by over 2h", 'sum by (code) (demo_requests_total)', 7200, 120, True),
    ("max_over_time", 'max_over_time(demo_temperature_celsius[10m])', 3600, 300, True),
    ("sum by on 20k series, 10m", 'sum by (namespace) (demo_pod_memory_bytes)', 600, 60, True),
    ("count one namespace, 1h", 'count(demo_pod_memory_bytes{namespace="ns-00"})', 3600, 300, True),
    ("two selectors (or) over 1h",
     'demo_requests_total{code="200"} or demo_temperature_celsius{sensor="s3"}', 3600, 60, True),
    ("matches nothing", 'demo_does_not_exist{job="x"}', 3600, 60, False),
]


class PromQLEquivalence(unittest.TestCase):
    maxDiff = 4000

    def _compare(self, name, path, params, expect_data):
        """Run one query on A, B and the store; assert identical data and no warnings."""
        answers, took = {}, {}
        for who in ("a", "b", "store"):
            t = time.monotonic()
            answers[who] = lib.api(ENV[who], path, params)
            took[who] = time.monotonic() - t
        print("  %-40s A %.2fs  B %.2fs  store %.2fs  (%d series)" % (
            name, took["a"], took["b"], took["store"],
            len((answers["store"].get("data") or {}).get("result") or [])), flush=True)
        for who, ans in answers.items():
            self.assertEqual(ans.get("status"), "success", "%s: %s" % (who, ans))
            self.assertNotIn("warnings", ans, "%s answered with warnings" % who)
        store = lib.canonical(answers["store"]["data"])
        if expect_data:
            self.assertTrue(store["result"], "the store returned nothing for %s" % params["query"])
        else:
            self.assertEqual(store["result"], [])
        self.assertEqual(lib.canonical(answers["b"]["data"]), store,
                         "front B (direct remote read) differs from the store")
        self.assertEqual(lib.canonical(answers["a"]["data"]), store,
                         "front A (through promguard) differs from the store")

    def test_instant_queries_match(self):
        t = ENV["end"] - 1800
        for name, q, expect in INSTANT:
            with self.subTest(name, query=q):
                self._compare(name, "/api/v1/query", {"query": q, "time": t}, expect)

    def test_range_queries_match(self):
        end = ENV["end"] - 3600
        for name, q, span, step, expect in RANGE:
            with self.subTest(name, query=q):
                self._compare(name, "/api/v1/query_range",
                              {"query": q, "start": end - span, "end": end, "step": step}, expect)

    def test_queries_went_through_promguard(self):
        """The A side really used promguard: its request and series counters moved."""
        before = lib.get_text(ENV["admin"] + "/metrics")
        ans = lib.api(ENV["a"], "/api/v1/query",
                      {"query": 'demo_temperature_celsius', "time": ENV["end"] - 1800})
        self.assertEqual(ans.get("status"), "success", ans)
        self.assertNotIn("warnings", ans)
        self.assertEqual(len(ans["data"]["result"]), 10)
        after = lib.get_text(ENV["admin"] + "/metrics")

        def delta(name, labels=None):
            return (lib.metric_value(after, name, labels) or 0) - \
                (lib.metric_value(before, name, labels) or 0)

        self.assertEqual(delta("promguard_requests_total", {"code": "200"}), 1)
        self.assertEqual(delta("promguard_response_series_total"), 10)
        self.assertEqual(delta("promguard_upstream_request_duration_seconds_count"), 1)
        self.assertFalse(lib.metric_value(after, "promguard_rejections_total"),
                         "promguard rejected something in the equivalence run")
        self.assertTrue(ENV["promguard"].alive())


if __name__ == "__main__":
    unittest.main(verbosity=2)

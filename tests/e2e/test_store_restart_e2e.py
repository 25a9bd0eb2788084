"""The store restarting under load, with real Prometheus 2.42 on both sides (issue 5).

Topology (real processes on 127.0.0.1, free ports, one temp dir):

    front (Prometheus 2.42, read_recent) --remote_read--> promguard --> store (Prometheus 2.42)
    this test, remote-read POSTs (promrr) ------------------^

The store holds backfilled blocks (1 h at 15 s: demo_requests_total 6 series, demo_temperature
10, demo_pod_memory_bytes 200). While queries run through the front and as direct remote reads,
the store is stopped (SIGTERM) and started again on the same port with the same data dir.
promguard (queue.max_wait 30s, base_delay 50ms, max_delay 1s) retries every read that finds it
gone, so:

  * every front query answers success, without warnings, with exactly the data it gave before;
  * every direct remote read through promguard answers 200 with the store's exact ReadResponse;
  * that holds for queries issued while the store was down: they are answered only after it is
    back (they waited, they were not failed);
  * promguard_upstream_retries_total > 0 (kind refused: the port was closed), nothing is
    rejected, and afterwards the queue is empty and every backoff key forgotten.
"""
import os
import shutil
import socket
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

import e2e_lib as lib
from e2e_lib import promrr

ENV = {}

CONFIG = """
mode: enforce
log_level: info
upstream:
  url: x
  timeout: 1m
limits:
  max_inflight: 4
estimator:
  unknown: admit
queue:
  max_wait: 30s
  base_delay: 50ms
  max_delay: 1s
"""

FRONT_QUERIES = ['demo_requests_total', 'sum by (room) (demo_temperature_celsius)',
                 'count(demo_pod_memory_bytes)']
READ_HEADERS = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                "Accept-Encoding": "snappy", "User-Agent": "promguard-e2e",
                "X-Prometheus-Remote-Read-Version": "0.1.0"}


def setUpModule():
    work = tempfile.mkdtemp(prefix="promguard-e2e-restart-")
    ENV["work"] = work
    unittest.addModuleCleanup(_cleanup)
    procs = ENV["procs"] = []
    t0 = time.monotonic()
    data = os.path.join(work, "store-data")
    end = lib.make_store_blocks(data, end=time.time() - 600, hours=1.0, pods=200)
    ENV["end"] = end
    t_data = time.monotonic() - t0

    store_port = lib.free_port()
    procs.append(lib.start_prometheus("store", work, store_port, tsdb_dir=data))
    store = "http://127.0.0.1:%d" % store_port
    pg, pg_port, admin_port = lib.start_promguard(work, store + "/api/v1/read", template=CONFIG)
    procs.append(pg)
    pg_url = "http://127.0.0.1:%d/api/v1/read" % pg_port
    front_port = lib.free_port()
    procs.append(lib.start_prometheus("front", work, front_port, remote_read_url=pg_url))
    ENV.update(store=store, store_port=store_port, data=data, pg_url=pg_url,
               admin="http://127.0.0.1:%d" % admin_port, front="http://127.0.0.1:%d" % front_port)
    print("\ne2e setup: data %.1fs, processes %.1fs (work dir %s)"
          % (t_data, time.monotonic() - t0 - t_data, work), flush=True)


def _cleanup():
    failed = []
    for p in reversed(ENV.get("procs", [])):
        rc = p.stop()
        if rc not in (0, -15):
            failed.append("%s exited %s:\n%s" % (p.name, rc, p.log_tail()))
    work = ENV.get("work")
    if work and not os.environ.get("PROMGUARD_KEEP_TMP"):
        shutil.rmtree(work, ignore_errors=True)
    elif work:
        print("kept %s" % work)
    if failed:
        raise AssertionError("\n\n".join(failed))


def read_body():
    """A remote read of demo_requests_total over the data's last 30 minutes (SAMPLES)."""
    end_ms = (ENV["end"] - 60) * 1000
    return promrr.snappy_encode(promrr.encode_read_request(
        [{"start": end_ms - 1800 * 1000, "end": end_ms,
          "matchers": [(promrr.EQ, "__name__", "demo_requests_total")]}]))


def post_read(url, body, timeout=90):
    """(status, decoded body or error text) of one remote read."""
    req = urllib.request.Request(url, data=body, method="POST", headers=READ_HEADERS)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, promrr.snappy_decode(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def front_query(q):
    return lib.api(ENV["front"], "/api/v1/query", {"query": q, "time": ENV["end"] - 300}, timeout=90)


def port_refuses(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def pg_metric(name, **labels):
    return lib.metric_value(lib.get_text(ENV["admin"] + "/metrics"), name, labels or None) or 0


class StoreRestartE2E(unittest.TestCase):
    maxDiff = 4000

    def test_store_restarted_under_load_every_query_is_answered_with_the_right_data(self):
        body = read_body()
        # what the answers must be: the front's and the store's own, before anything happens
        ref_front = {}
        for q in FRONT_QUERIES:
            via = front_query(q)
            direct = lib.api(ENV["store"], "/api/v1/query", {"query": q, "time": ENV["end"] - 300})
            self.assertEqual(via.get("status"), "success", via)
            self.assertNotIn("warnings", via)
            self.assertTrue(via["data"]["result"], q)
            self.assertEqual(lib.canonical(via["data"]), lib.canonical(direct["data"]), q)
            ref_front[q] = lib.canonical(via["data"])
        status, ref_read = post_read(ENV["store"] + "/api/v1/read", body)
        self.assertEqual(status, 200, ref_read)
        counts = promrr.read_response_counts(ref_read)
        self.assertEqual([c["series"] for c in counts], [6], counts)
        status, via_read = post_read(ENV["pg_url"], body)
        self.assertEqual(status, 200, via_read)
        self.assertEqual(via_read, ref_read, "promguard's answer differs from the store's")
        retries_before = pg_metric("promguard_upstream_retries_total")

        results = []  # (kind, what, t_send, t_done, ok, detail)
        lock = threading.Lock()
        stop = threading.Event()

        def one_front(q):
            t = time.monotonic()
            try:
                ans = front_query(q)
                ok = (ans.get("status") == "success" and "warnings" not in ans
                      and lib.canonical(ans.get("data")) == ref_front[q])
                detail = None if ok else ans
            except Exception as e:  # recorded as a failure
                ok, detail = False, repr(e)
            with lock:
                results.append(("front", q, t, time.monotonic(), ok, detail))

        def one_read():
            t = time.monotonic()
            try:
                status, got = post_read(ENV["pg_url"], body)
                ok = status == 200 and got == ref_read
                detail = None if ok else (status, got if isinstance(got, str) else "different data")
            except Exception as e:
                ok, detail = False, repr(e)
            with lock:
                results.append(("read", "demo_requests_total", t, time.monotonic(), ok, detail))

        def worker(i):
            k = 0
            while not stop.is_set():
                if (i + k) % 2:
                    one_read()
                else:
                    one_front(FRONT_QUERIES[(i + k) % len(FRONT_QUERIES)])
                k += 1

        workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(3)]
        for w in workers:
            w.start()
        time.sleep(1.5)

        port = ENV["store_port"]
        old = ENV["procs"][0]
        rc = old.stop()
        self.assertIn(rc, (0, -15), old.log_tail())
        self.assertTrue(port_refuses(port), "the store's port still accepts after it stopped")
        t_down = time.monotonic()  # from here on nothing can be answered until the restart
        # queries issued while the store is down
        gap = [threading.Thread(target=one_front, args=(q,), daemon=True) for q in FRONT_QUERIES]
        gap += [threading.Thread(target=one_read, daemon=True) for _ in range(2)]
        for t in gap:
            t.start()
        time.sleep(1.5)
        self.assertTrue(all(t.is_alive() for t in gap), "a query issued while the store was down was answered")
        t_up = time.monotonic()  # nothing can be answered before this: the store starts now
        ENV["procs"][0] = lib.start_prometheus("store-restarted", ENV["work"], port, tsdb_dir=ENV["data"])
        print("  store down for %.1fs, ready %.1fs after its start" % (t_up - t_down, time.monotonic() - t_up),
              flush=True)
        time.sleep(1.5)
        stop.set()
        for t in workers + gap:
            t.join(120)
            self.assertFalse(t.is_alive(), "a query never got an answer")

        bad = [r for r in results if not r[4]]
        self.assertEqual(bad, [], "queries failed or answered wrong data across the store's restart")
        in_gap = [r for r in results if t_down < r[2] < t_up]
        self.assertGreaterEqual(len(in_gap), len(gap), "the queries issued in the gap are missing")
        self.assertTrue(any(r[0] == "front" for r in in_gap) and any(r[0] == "read" for r in in_gap))
        for r in in_gap:
            self.assertGreaterEqual(r[3], t_up, "a query issued while the store was down was answered before it "
                                                "came back: %r" % (r,))
        after = [r for r in results if r[2] > t_up]
        self.assertTrue(after, "no query ran after the store came back")
        print("  %d queries (%d issued while the store was down), %d after" % (len(results), len(in_gap), len(after)),
              flush=True)

        retries = pg_metric("promguard_upstream_retries_total") - retries_before
        self.assertGreater(retries, 0, "promguard answered without retrying")
        self.assertGreater(pg_metric("promguard_upstream_retries_total", kind="refused"), 0)
        self.assertEqual(pg_metric("promguard_rejections_total"), 0)
        self.assertEqual(pg_metric("promguard_requests_total", code="502"), 0)
        deadline = time.monotonic() + 10
        while (pg_metric("promguard_queue_length") or pg_metric("promguard_backoff_tracked_keys")) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(pg_metric("promguard_queue_length"), 0)
        self.assertEqual(pg_metric("promguard_backoff_tracked_keys"), 0, "backoff state was not forgotten")
        # the restarted store served reads again
        store_reads = lib.metric_value(lib.get_text(ENV["store"] + "/metrics"), "prometheus_http_requests_total",
                                       {"handler": "/api/v1/read"}) or 0
        self.assertGreater(store_reads, 0)


if __name__ == "__main__":
    unittest.main()

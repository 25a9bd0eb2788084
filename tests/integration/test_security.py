"""Security limits: what a client on the remote-read port can and cannot reach or mint.

  * the admin endpoints answer only on admin_listen: on listen they are 404 and do nothing;
  * POST /-/reload with admin.reload_token_file set needs "Authorization: Bearer <token>": 401
    (WWW-Authenticate, counter, log line naming the key) without it or with a wrong one, and the
    config is not reloaded; a rotated token file counts from the next reload;
  * a hostile tenant header (too long, bad characters) is a 400 naming the header, and its value
    reaches neither the metrics nor the log;
  * distinct tenant label values are capped (admin.max_tenant_labels): past the cap a new
    tenant is counted as tenant="other", with a counter and one log line;
  * header caps: too many header lines, or one too large, is 431 and the process keeps serving.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import unittest

import harness as H


class SecurityTest(unittest.TestCase):
    maxDiff = 4000

    @classmethod
    def setUpClass(cls):
        cls.store = H.FakeStore.start(cls)

    def start(self, config=None):
        return H.AdmissionPromguard.start(self, self.store.url, config=config)

    def token_file(self, token):
        path = os.path.join(self.tmpdir(), "reload.token")
        with open(path, "w") as f:
            f.write(token + "\n")
        return path

    def tmpdir(self):
        if not hasattr(self, "_tmp"):
            self._tmp = tempfile.mkdtemp(prefix="pg-sec-")
            self.addCleanup(shutil.rmtree, self._tmp, True)
        return self._tmp

    def check_config(self, cfg):
        path = os.path.join(self.tmpdir(), "check.yml")
        with open(path, "w") as f:
            f.write(H.to_yaml(cfg) + "\n")
        return subprocess.run([os.environ["PROMGUARD_BIN"], "-c", path, "--check-config"],
                              capture_output=True, text=True, timeout=10)

    @staticmethod
    def reloads(pg):
        return len(pg.log_lines("config reloaded"))

    def reload(self, pg, token=None):
        h = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return H.http_request(pg.admin_port, "POST", "/-/reload", b"", h)

    # ---- admin endpoints only on admin_listen ------------------------------------------------

    def test_admin_endpoints_are_404_on_the_remote_read_port(self):
        pg = self.start({"log_level": "debug"})
        for method, path in (("GET", "/metrics"), ("GET", "/api/v1/status"), ("POST", "/-/reload"),
                             ("GET", "/api/v1/explain?match[]=up"), ("GET", "/-/ready")):
            with self.subTest(path=path):
                r = H.http_request(pg.port, method, path, b"" if method == "POST" else None)
                self.assertEqual(r.status, 404, r)
                self.assertTrue(r.text.startswith("promguard: not found: "), r.text)
                self.assertEqual(H.http_request(pg.admin_port, method, path,
                                                b"" if method == "POST" else None).status, 200)
        self.assertEqual(self.reloads(pg), 1, "only the admin port reloaded")

    # ---- reload token ------------------------------------------------------------------------

    def test_reload_needs_the_bearer_token_when_a_token_file_is_set(self):
        path = self.token_file("s3cret-token")
        pg = self.start({"admin": {"reload_token_file": path}, "limits": {"max_series": 1000}})
        d = H.MetricsDelta(pg)
        pg.rewrite_config({"limits": {"max_series": 7}})
        for token in (None, "wrong", "s3cret-toke", "s3cret-token-"):
            with self.subTest(token=token):
                r = self.reload(pg, token)
                self.assertEqual(r.status, 401, r)
                self.assertEqual(r.header("WWW-Authenticate"), 'Bearer realm="promguard"')
                self.assertEqual(r.text, 'promguard: unauthorized: POST /-/reload needs "Authorization: Bearer '
                                         '<token>" with the token in admin.reload_token_file\n')
        self.assertEqual(d.delta("promguard_admin_unauthorized_total", endpoint="/-/reload"), 4)
        lines = pg.log_lines("reload refused")
        self.assertEqual(len(lines), 4, lines)
        kv = H.parse_log_line(lines[0])
        self.assertEqual((kv.get("reason"), kv.get("limit")), ("no_token", "admin.reload_token_file"), lines[0])
        self.assertNotIn("s3cret", pg.log(), "the token leaked into the log")
        self.assertEqual(self.reloads(pg), 0, "a refused reload changed the config")
        # the right token reloads
        r = self.reload(pg, "s3cret-token")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.reloads(pg), 1)
        self.assertIn('"max_series":7', pg.admin_get("/api/v1/status").text.replace(" ", ""))
        # the token is never printed, not even in the status page's config
        self.assertNotIn("s3cret", pg.admin_get("/api/v1/status").text)

    def test_rotated_token_counts_from_the_next_reload(self):
        path = self.token_file("first")
        pg = self.start({"admin": {"reload_token_file": path}})
        with open(path, "w") as f:
            f.write("second\n")
        self.assertEqual(self.reload(pg, "second").status, 401, "the new token worked before a reload")
        self.assertEqual(self.reload(pg, "first").status, 200)
        self.assertEqual(self.reload(pg, "first").status, 401, "the old token still works after the reload")
        self.assertEqual(self.reload(pg, "second").status, 200)

    def test_unreadable_or_empty_token_file_is_a_config_error(self):
        empty = self.token_file("")
        for path, why in ((empty, "holds no token"), ("/nonexistent/token", "cannot read")):
            with self.subTest(path=path):
                r = self.check_config({"upstream": {"url": self.store.url}, "admin": {"reload_token_file": path}})
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                self.assertIn("admin.reload_token_file: ", r.stderr)
                self.assertIn(why, r.stderr)

    # ---- tenants -----------------------------------------------------------------------------

    def test_hostile_tenant_header_is_400_and_reaches_neither_metrics_nor_log(self):
        pg = self.start()
        hostile = ["x" * 129, 'a"b', "a b", "a=b", "a\tb", "t\u00e9nant".encode("utf-8").decode("latin-1"),
                   "} injected{", "a,b"]
        for t in hostile:
            with self.subTest(tenant=t):
                r = pg.post_read(H.read_body(), headers={"X-Scope-OrgID": t})
                self.assertEqual(r.status, 400, r)
                self.assertRegex(r.text, r"^promguard: bad request: invalid tenant in X-Scope-OrgID header: ")
        text = pg.metrics_text()
        for t in hostile:
            self.assertNotIn(t, text)
        self.assertEqual(H.metric(pg.metrics(), "promguard_rejections_total", tenant="invalid", reason="bad_request"),
                         len(hostile))
        log = pg.log()
        for t in ('a"b', "} injected{", "x" * 129):
            self.assertNotIn(t, log)
        self.assertEqual(pg.post_read(H.read_body(), headers={"X-Scope-OrgID": "fine-tenant"}).status, 200)

    def test_tenant_labels_are_capped_with_an_other_bucket(self):
        pg = self.start({"admin": {"max_tenant_labels": 3}})
        tenants = [f"team-{i}" for i in range(8)]
        for t in tenants:
            self.assertEqual(pg.post_read(H.read_body({"series": 1}), headers={"X-Scope-OrgID": t}).status, 200)
        m = pg.metrics()
        seen = {dict(ls)["tenant"] for n, ls in m if n == "promguard_queries_total"}
        self.assertEqual(seen, {"team-0", "team-1", "team-2", "other"}, seen)
        self.assertEqual(H.metric(m, "promguard_queries_total", tenant="other", decision="admitted"), 5)
        self.assertEqual(H.metric(m, "promguard_tenant_labels"), 3)
        self.assertEqual(H.metric(m, "promguard_tenant_labels_limit"), 3)
        self.assertGreater(H.metric(m, "promguard_tenant_label_overflow_total"), 0)
        lines = pg.log_lines("tenant label cap reached")
        self.assertEqual(len(lines), 1, lines)
        kv = H.parse_log_line(lines[0])
        self.assertEqual((kv.get("tenant"), kv.get("limit"), kv.get("value")),
                         ("team-3", "admin.max_tenant_labels", "3"), lines[0])
        # a tenant seen while there was room keeps its series
        pg.post_read(H.read_body({"series": 1}), headers={"X-Scope-OrgID": "team-1"})
        self.assertEqual(H.metric(pg.metrics(), "promguard_queries_total", tenant="team-1", decision="admitted"), 2)

    # ---- header caps -------------------------------------------------------------------------

    def raw(self, pg, head):
        with socket.create_connection((H.HOST, pg.port), timeout=10) as s:
            s.sendall(head)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data

    def test_too_many_or_too_large_headers_are_431(self):
        pg = self.start()
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(500))
        big = b"X-Big: " + b"v" * (70 * 1024) + b"\r\n"
        for name, extra in (("count", many), ("size", big)):
            with self.subTest(cap=name):
                resp = self.raw(pg, b"POST /api/v1/read HTTP/1.1\r\nHost: x\r\n" + extra + b"Content-Length: 0\r\n\r\n")
                self.assertTrue(resp.startswith(b"HTTP/1.1 431 "), resp[:200])
        self.assertEqual(pg.post_read(H.read_body()).status, 200, "still serving")
        self.assertEqual(H.metric(pg.metrics(), "promguard_requests_total", code="431"), 2)


if __name__ == "__main__":
    unittest.main()

"""Upstream failures made visible: an HTTP-inspected client gets 502 (connect
refused) or 504 (no answer within timeouts.connect) with `Connection: close`
instead of a reset; an L4 client still gets a reset (SPEC); every failure is
in shunt_upstream_failures_total{reason} (all reasons exported at 0 from the
start), in the access log's `reason`/`error` on the `conn` and `http` lines,
and in a warn line that a burst of failures does not multiply. Loopback
only; the "timeout" upstream is a listener whose accept queue is full, so
the kernel drops shunt's SYNs and nothing ever reaches it."""
import json
import socket
import time
import unittest

from admin_helpers import scrape, value, wait_ready
from shunt_harness import Shunt, free_port, proxy_config, rule, run_tests

REASONS = ("connect_refused", "connect_timeout", "connect_unreachable", "connect_error")


def config(p):
    return proxy_config(
        [("http-refused", p["http_refused"], p["closed"]), ("http-timeout", p["http_timeout"], p["full"]),
         ("l4-refused", p["l4_refused"], p["closed_l4"])],
        [rule("web", [p["closed"], p["full"]], http=["{method: GET, path: /}"]), rule("l4", p["closed_l4"])],
        timeouts={"connect": "1s"}, admin=p["admin"])


def http_exchange(port, timeout=10):
    """One GET; returns everything the client received until the proxy
    closed, or raises ConnectionResetError."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: up\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk


class UpstreamFailures(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        p = {k: free_port() for k in ("http_refused", "http_timeout", "l4_refused", "closed", "closed_l4", "admin")}
        # A listener that never accepts, its queue filled: SYNs to it are
        # dropped, so a connect to it times out.
        cls.full = socket.socket()
        cls.full.bind(("127.0.0.1", 0))
        cls.full.listen(0)
        p["full"] = cls.full.getsockname()[1]
        cls.fillers = []
        for _ in range(2):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", p["full"]))
            cls.fillers.append(f)
        time.sleep(0.2)
        cls.p = p
        cls.shunt = Shunt(config(p), wait_port=p["admin"])
        wait_ready(p["admin"])

    @classmethod
    def tearDownClass(cls):
        cls.shunt.__exit__(None, None, None)
        for f in cls.fillers:
            f.close()
        cls.full.close()

    def entries(self, listener_port=None):
        out = []
        for line in self.shunt.output().splitlines():
            if line.startswith("{"):
                e = json.loads(line)
                out.append(e)
        return out

    def wait_entry(self, pred, timeout=5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.entries() if pred(e)]
            if found:
                return found
            time.sleep(0.05)
        self.fail("no access-log entry matched; log:\n" + self.shunt.output()[-3000:])

    def failures(self, reason):
        return value(scrape(self.p["admin"]), "shunt_upstream_failures_total", reason=reason)

    def test_0_every_reason_exported_at_zero_from_the_start(self):
        samples = scrape(self.p["admin"])
        for r in REASONS:
            self.assertIn(("shunt_upstream_failures_total", frozenset({("reason", r)})), samples)
        # The same for the data-path fallbacks (issue 11: no samples until the first one).
        for r in ("sockmap_unavailable", "socket_state", "map_full", "other", "partial_handover"):
            self.assertEqual(samples.get(("shunt_datapath_fallbacks_total", frozenset({("reason", r)}))), 0, r)

    def test_http_connect_refused_is_502_with_connection_close(self):
        before = self.failures("connect_refused")
        data = http_exchange(self.p["http_refused"])
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), data)
        self.assertIn(b"\r\nConnection: close", head)
        self.assertEqual(body, b"Upstream connect failed\n")
        dst = "127.0.0.1:%d" % self.p["closed"]
        http = self.wait_entry(lambda e: e["event"] == "http" and e["dst"] == dst)[-1]
        self.assertEqual(http["status"], 502)
        self.assertEqual(http["verdict"], "allow")
        self.assertEqual(http["reason"], "upstream_connect_failed")
        self.assertIn("refused", http["error"].lower())
        conn = self.wait_entry(lambda e: e["event"] == "conn" and e["dst"] == dst)[-1]
        self.assertEqual(conn["reason"], "upstream_connect_failed")
        self.assertEqual(self.failures("connect_refused"), before + 1)

    def test_http_connect_timeout_is_504(self):
        before = self.failures("connect_timeout")
        started = time.monotonic()
        data = http_exchange(self.p["http_timeout"])
        elapsed = time.monotonic() - started
        self.assertTrue(data.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"), data)
        self.assertIn(b"\r\nConnection: close", data)
        self.assertGreaterEqual(elapsed, 0.9)  # timeouts.connect is 1s
        dst = "127.0.0.1:%d" % self.p["full"]
        http = self.wait_entry(lambda e: e["event"] == "http" and e["dst"] == dst)[-1]
        self.assertEqual(http["status"], 504)
        self.assertEqual(http["reason"], "upstream_connect_failed")
        self.assertIn("timeouts.connect", http["error"])
        self.assertEqual(self.failures("connect_timeout"), before + 1)

    def test_l4_connect_refused_still_resets(self):
        before = self.failures("connect_refused")
        # The reset may land before connect() returns (loopback), or around the send.
        with self.assertRaises((ConnectionResetError, BrokenPipeError)):
            with socket.create_connection(("127.0.0.1", self.p["l4_refused"]), timeout=10) as s:
                s.sendall(b"hello")
                while s.recv(100):
                    pass
        dst = "127.0.0.1:%d" % self.p["closed_l4"]
        conn = self.wait_entry(lambda e: e["event"] == "conn" and e["dst"] == dst)[-1]
        self.assertEqual(conn["reason"], "upstream_connect_failed")
        self.assertIn("refused", conn["error"].lower())
        self.assertEqual(self.failures("connect_refused"), before + 1)

    def test_z_warn_lines_are_rate_limited(self):
        # Let the limiter's one-second window from earlier tests pass, then
        # a burst: one warn line for it, every failure still counted.
        time.sleep(1.1)
        before = self.failures("connect_refused")
        start = len(self.shunt.output().splitlines())
        started = time.monotonic()
        for _ in range(20):
            http_exchange(self.p["http_refused"])
        elapsed = time.monotonic() - started
        self.assertEqual(self.failures("connect_refused"), before + 20)
        lines = self.shunt.output().splitlines()[start:]
        warns = [line for line in lines if "upstream 127.0.0.1" in line and "failed" in line]
        self.assertGreaterEqual(len(warns), 1, "\n".join(lines))
        # At most one per started second (20 unlimited lines would fail this).
        self.assertLessEqual(len(warns), int(elapsed) + 1, "\n".join(warns))
        if len(warns) > 1:
            self.assertIn("more upstream failures in the last second", warns[-1])


if __name__ == "__main__":
    run_tests()

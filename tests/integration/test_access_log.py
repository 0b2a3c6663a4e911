"""The JSON access log through a running shunt: every line parses, keys in
SPEC.md's order, values match what happened (bytes, verdicts, rules, HTTP
fields); FILE targets, SIGUSR1 reopen after a rename (log rotation), a
reload that moves the log, an unopenable file at start, and stdout. Needs
root (the sockmap data path)."""
import json
import os
import re
import signal
import socket
import tempfile
import time
import unittest

from admin_helpers import admin_port_of, http_get, scrape, value, wait_ready
from shunt_harness import (Shunt, ThreadedServer, closing, echo_handler, free_port, proxy_config, recv_exact, rule,
                           run_tests, static_config)

CONN_KEYS = ["ts", "event", "src", "dst", "src_pod", "dst_pod", "verdict", "rule", "datapath", "bytes_up",
             "bytes_down", "duration_ms"]
HTTP_KEYS = CONN_KEYS + ["method", "path", "host", "status"]
# grpc_status: gRPC streams only (after `protocol`, the last key of an http line).
# path_up/path_down: sockmap connections only (which kernel path each direction took).
OPTIONAL_KEYS = ["reason", "error", "path_up", "path_down", "grpc_status"]
REASONS = {"client_closed", "upstream_closed", "client_reset", "upstream_reset", "policy_deny", "bad_request",
           "request_timeout", "revoked", "upstream_connect_failed", "idle_timeout", "keepalive_timeout",
           "refuse_timeout", "handover_failed", "shutdown", "proxy_error", "proxy_loop", "taken_over"}
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def http_server(conn):
    """One request, one response, then close (the clients ask for that)."""
    f = conn.makefile("rb")
    first = f.readline()
    if not first:
        return True
    while f.readline() not in (b"\r\n", b"\n", b""):
        pass
    if b" /hangup " in first:
        return True  # closes without a response
    conn.sendall(HTTP_RESPONSE)
    return True


HTTP_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"


def echo_once(port, size):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(b"x" * size)
        recv_exact(c, size)


def read_lines(path):
    try:
        with open(path) as f:
            return [line for line in f.read().splitlines() if line]
    except FileNotFoundError:
        return []


def wait_lines(path, n, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = read_lines(path)
        if len(lines) >= n:
            return lines
        time.sleep(0.05)
    return read_lines(path)


def parse(testcase, line):
    entry = json.loads(line)
    keys = HTTP_KEYS if entry.get("event") == "http" else CONN_KEYS
    if entry.get("event") == "http" and "status" not in entry:
        keys = keys[:-1]  # no response seen: left out, never a made-up 0
    else:
        testcase.assertNotEqual(entry.get("status"), 0, line)
    if entry.get("event") == "http":
        keys = keys + ["protocol"]
    # `reason` (why the connection ended) and `error` (the socket error
    # behind it) follow the fixed keys when known, and are left out otherwise.
    fixed = [k for k in entry if k not in OPTIONAL_KEYS]
    testcase.assertEqual(fixed, keys, line)
    testcase.assertEqual([k for k in entry if k in OPTIONAL_KEYS], [k for k in OPTIONAL_KEYS if k in entry], line)
    if "reason" in entry:
        testcase.assertIn(entry["reason"], REASONS, line)
    testcase.assertRegex(entry["ts"], TS_RE)
    testcase.assertIn(entry["verdict"], ("allow", "deny"))
    testcase.assertIn(entry["datapath"], ("sockmap", "splice", "copy"))
    for k in ("bytes_up", "bytes_down", "duration_ms"):
        testcase.assertIsInstance(entry[k], int)
        testcase.assertGreaterEqual(entry[k], 0)
    return entry


class AccessLogFile(unittest.TestCase):
    def setUp(self):
        self.echo = closing(self, ThreadedServer(echo_handler))
        self.http = closing(self, ThreadedServer(http_server))
        self.tcp_port, self.http_port, self.denied_port = free_port(), free_port(), free_port()
        self.admin = free_port()
        self.denied_upstream = free_port()
        self.dir = closing(self, tempfile.TemporaryDirectory(prefix="shunt-access-"), close="cleanup").name
        self.log = os.path.join(self.dir, "access.log")

    def config(self, log, revoke_echo=False):
        rules = [rule("no-admin-path", self.http.port, "deny", http=["{path: /admin}"]),
                 rule("closed-port", self.denied_upstream, "deny")]
        if revoke_echo:
            rules.append(rule("echo-closed-now", self.echo.port, "deny"))
        return proxy_config(
            [("tcp", self.tcp_port, self.echo.port), ("http", self.http_port, self.http.port),
             ("denied", self.denied_port, self.denied_upstream)],
            rules, datapath="sockmap", default="allow", admin=self.admin, log="info", access=log)

    def test_lines_parse_with_spec_keys_and_values(self):
        with Shunt(self.config(self.log), wait_port=self.tcp_port) as shunt:
            wait_ready(self.admin, shunt.proc)
            for size in (1, 1000, 200_000):
                echo_once(self.tcp_port, size)
            self.assertEqual(http_get(self.http_port, "/ok", host_header="api.local")[0], 200)
            self.assertEqual(http_get(self.http_port, "/admin/x", host_header="api.local")[0], 403)
            # L4 deny is a reset; on loopback it can land before connect()
            # returns, so connect itself may report it.
            try:
                with socket.create_connection(("127.0.0.1", self.denied_port), timeout=10) as c:
                    self.assertEqual(c.recv(10), b"")
            except ConnectionResetError:
                pass
            entries = [parse(self, line) for line in wait_lines(self.log, 8)]

            conns = [e for e in entries if e["event"] == "conn"]
            tcp = [e for e in conns if e["dst"] == "127.0.0.1:%d" % self.echo.port]
            self.assertEqual(sorted(e["bytes_up"] for e in tcp), [1, 1000, 200_000])
            for e in tcp:
                self.assertEqual((e["bytes_down"], e["verdict"], e["rule"], e["datapath"], e["reason"]),
                                 (e["bytes_up"], "allow", "default", "sockmap", "client_closed"))
                self.assertTrue(e["src"].startswith("127.0.0.1:"))
                self.assertEqual((e["src_pod"], e["dst_pod"]), ("", ""))
            denied = [e for e in conns if e["rule"] == "closed-port"]
            self.assertEqual(len(denied), 1, conns)
            self.assertEqual((denied[0]["verdict"], denied[0]["bytes_up"], denied[0]["bytes_down"],
                              denied[0]["reason"]), ("deny", 0, 0, "policy_deny"))
            scraped = scrape(self.admin)
            ends = {dict(labels)["reason"]: v for (name, labels), v in scraped.items()
                    if name == "shunt_connection_ends_total"}
            self.assertEqual(set(ends), REASONS, "every reason is exported, at 0 until it happens")
            self.assertGreaterEqual(ends["client_closed"], 3)
            self.assertGreaterEqual(ends["policy_deny"], 2)

            http = [e for e in entries if e["event"] == "http"]
            self.assertEqual(len(http), 2, entries)
            by_path = {e["path"]: e for e in http}
            self.assertEqual((by_path["/ok"]["method"], by_path["/ok"]["host"], by_path["/ok"]["verdict"]),
                             ("GET", "api.local", "allow"))
            self.assertEqual((by_path["/admin/x"]["verdict"], by_path["/admin/x"]["rule"],
                              by_path["/admin/x"]["status"], by_path["/admin/x"]["reason"]),
                             ("deny", "no-admin-path", 403, "policy_deny"))
            self.assertNotIn("reason", by_path["/ok"])
            # The real path and this request's own bytes: inspected requests
            # go through the inspector (copy) whatever proxy.datapath says;
            # the response is the origin's, byte for byte; a refusal's bytes
            # are shunt's own 403.
            ok, refused = by_path["/ok"], by_path["/admin/x"]
            self.assertEqual((ok["datapath"], ok["status"]), ("copy", 200))
            self.assertEqual(ok["bytes_down"], len(HTTP_RESPONSE))
            http_conns = [e for e in conns if e["dst"] == "127.0.0.1:%d" % self.http.port]
            ok_conn = [e for e in http_conns if e["verdict"] == "allow"]
            self.assertEqual(len(ok_conn), 1, http_conns)
            self.assertGreater(ok["bytes_up"], 0)
            self.assertEqual((ok["bytes_up"], ok["bytes_down"]), (ok_conn[0]["bytes_up"], ok_conn[0]["bytes_down"]))
            self.assertEqual(refused["bytes_up"], 0)
            self.assertEqual(refused["bytes_down"],
                             len(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n"
                                 b"Connection: close\r\n\r\nAccess denied\n"))
            self.assertEqual(value(scrape(self.admin), "shunt_access_log_dropped_total"), 0)
            self.assertEqual(shunt.stop(), 0)

    def test_no_status_when_the_upstream_closed_without_a_response(self):
        with Shunt(self.config(self.log), wait_port=self.tcp_port) as shunt:
            wait_ready(self.admin, shunt.proc)
            with socket.create_connection(("127.0.0.1", self.http_port), timeout=10) as c:
                c.sendall(b"GET /hangup HTTP/1.1\r\nHost: api.local\r\n\r\n")
                self.assertEqual(c.recv(100), b"")  # the upstream's close, passed on
            lines = wait_lines(self.log, 2)
            http = [parse(self, line) for line in lines if '"event":"http"' in line]
            self.assertEqual(len(http), 1, lines)
            self.assertNotIn("status", http[0])
            self.assertEqual((http[0]["path"], http[0]["verdict"], http[0]["bytes_down"]), ("/hangup", "allow", 0))
            self.assertGreater(http[0]["bytes_up"], 0)
            self.assertEqual(shunt.stop(), 0)

    def test_revoked_line_names_the_rule_that_denies_now(self):
        with Shunt(self.config(self.log), wait_port=self.tcp_port) as shunt:
            wait_ready(self.admin, shunt.proc)
            with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=10) as c:
                c.sendall(b"ping")
                self.assertEqual(recv_exact(c, 4), b"ping")
                shunt.write_config(self.config(self.log, revoke_echo=True))
                with self.assertRaises(ConnectionResetError):
                    while c.recv(100):
                        pass
            entries = [parse(self, line) for line in wait_lines(self.log, 1)]
            revoked = [e for e in entries if e["event"] == "conn" and e.get("reason") == "revoked"]
            self.assertEqual(len(revoked), 1, entries)
            self.assertEqual((revoked[0]["verdict"], revoked[0]["rule"], revoked[0]["bytes_up"]),
                             ("deny", "echo-closed-now", 4))
            self.assertEqual(shunt.stop(), 0)

    def test_sigusr1_reopens_after_rename(self):
        with Shunt(self.config(self.log), wait_port=self.tcp_port) as shunt:
            wait_ready(self.admin, shunt.proc)
            for _ in range(3):
                echo_once(self.tcp_port, 100)
            self.assertEqual(len(wait_lines(self.log, 3)), 3)
            os.rename(self.log, self.log + ".1")
            shunt.proc.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while not os.path.exists(self.log) and time.monotonic() < deadline:
                time.sleep(0.02)
            self.assertTrue(os.path.exists(self.log), "SIGUSR1 did not create a new file")
            for _ in range(2):
                echo_once(self.tcp_port, 100)
            self.assertEqual(len(wait_lines(self.log, 2)), 2)
            time.sleep(0.2)
            self.assertEqual(len(read_lines(self.log)), 2)
            self.assertEqual(len(read_lines(self.log + ".1")), 3)
            for line in read_lines(self.log) + read_lines(self.log + ".1"):
                parse(self, line)
            self.assertEqual(shunt.stop(), 0)

    def test_reload_moves_the_log(self):
        other = os.path.join(self.dir, "other.log")
        with Shunt(self.config(self.log), wait_port=self.tcp_port) as shunt:
            wait_ready(self.admin, shunt.proc)
            echo_once(self.tcp_port, 10)
            self.assertEqual(len(wait_lines(self.log, 1)), 1)
            shunt.write_config(self.config(other))
            deadline = time.monotonic() + 10
            while value(scrape(self.admin), "shunt_config_generation") != 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            echo_once(self.tcp_port, 10)
            self.assertEqual(len(wait_lines(other, 1)), 1)
            self.assertEqual(len(read_lines(self.log)), 1)
            self.assertEqual(shunt.stop(), 0)

    def test_unopenable_file_exits_2(self):
        with Shunt(self.config("/dev/null/access.log")) as shunt:
            self.assertEqual(shunt.proc.wait(timeout=10), 2)
            out = shunt.output().strip().splitlines()
            self.assertIn("access log /dev/null/access.log", out[-1])


class AccessLogStdout(unittest.TestCase):
    def test_stdout_lines_parse(self):
        port = free_port()
        with ThreadedServer(echo_handler) as server:
            config = static_config(port, server.port, "splice")
            with Shunt(config, wait_port=port) as shunt:
                wait_ready(admin_port_of(config), shunt.proc)
                for _ in range(3):
                    echo_once(port, 500)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    lines = [l for l in shunt.output().splitlines() if l.startswith("{")]
                    if len(lines) >= 3:
                        break
                    time.sleep(0.05)
                self.assertEqual(len(lines), 3)
                for line in lines:
                    e = parse(self, line)
                    self.assertEqual((e["bytes_up"], e["bytes_down"], e["datapath"]), (500, 500, "splice"))


if __name__ == "__main__":
    run_tests()

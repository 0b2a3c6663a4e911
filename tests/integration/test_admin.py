"""Admin API through a running shunt: /metrics byte counters against what
was really sent on each data path (kernel-spliced sockmap pairs included),
/connections for a live connection, /config and its generation across
reloads, /readyz ordering, the HTTP surface (404, 405, HEAD), `shunt status`
and `shunt conns`, and the capabilities each thread keeps. Needs root."""
import json
import os
import re
import socket
import subprocess
import threading
import time
import unittest

from admin_helpers import admin_port_of, get_json, http_get, scrape, value, wait_ready
from shunt_harness import (SHUNT_BIN, Shunt, ThreadedServer, free_port, is_listening, per_datapath, recv_exact,
                           run_tests, static_config)

UP = 6 * 1024 * 1024 + 123    # client -> server
DOWN = 3 * 1024 * 1024 + 77   # server -> client
CAP_NET_ADMIN = 12
CAP_BPF = 39


def sink_then_send(conn):
    """Reads exactly UP bytes, sends DOWN bytes, then waits for the client to
    close, so the connection stays open while the test looks at it."""
    recv_exact(conn, UP)
    conn.sendall(b"d" * DOWN)
    while conn.recv(65536):
        pass
    return True


def within_1pct(got, want):
    return abs(got - want) <= want * 0.01


class ByteCounters:
    datapath = None

    def test_bytes_and_connections_while_open_and_after_close(self):
        port = free_port()
        with ThreadedServer(sink_then_send) as server:
            config = static_config(port, server.port, self.datapath)
            admin = admin_port_of(config)
            with Shunt(config, wait_port=port) as shunt:
                wait_ready(admin, shunt.proc)
                before = scrape(admin)
                c = socket.create_connection(("127.0.0.1", port), timeout=30)
                c.sendall(b"u" * UP)
                recv_exact(c, DOWN)
                # The connection is open and idle: every byte has been moved.
                conns = get_json(admin, "/connections")
                self.assertEqual(len(conns), 1, conns)
                conn = conns[0]
                self.assertEqual(list(conn), ["id", "src", "dst", "src_pod", "dst_pod", "rule", "datapath",
                                              "protocol", "bytes_up", "bytes_down", "age_s"] +
                                 (["path_up", "path_down"] if self.datapath == "sockmap" else []))
                self.assertEqual(conn["protocol"], "tcp")
                self.assertEqual(conn["src"], "127.0.0.1:%d" % c.getsockname()[1])
                self.assertEqual(conn["dst"], "127.0.0.1:%d" % server.port)
                self.assertEqual(conn["datapath"], self.datapath)
                self.assertEqual(conn["rule"], "default")
                self.assertTrue(within_1pct(conn["bytes_up"], UP), conn)
                self.assertTrue(within_1pct(conn["bytes_down"], DOWN), conn)
                self.assertGreaterEqual(conn["age_s"], 0)
                live = scrape(admin)
                self.assertEqual(value(live, "shunt_connections_active", datapath=self.datapath), 1)
                for direction, sent in (("up", UP), ("down", DOWN)):
                    moved = (value(live, "shunt_bytes_total", direction=direction, datapath=self.datapath) -
                             value(before, "shunt_bytes_total", direction=direction, datapath=self.datapath))
                    self.assertTrue(within_1pct(moved, sent), f"live {direction}: {moved} vs {sent}")

                c.close()
                server.wait_results(1)
                deadline = time.monotonic() + 10
                while get_json(admin, "/connections") and time.monotonic() < deadline:
                    time.sleep(0.05)
                after = scrape(admin)
                self.assertEqual(value(after, "shunt_connections_active", datapath=self.datapath), 0)
                self.assertEqual(value(after, "shunt_connections_total", verdict="allow") -
                                 value(before, "shunt_connections_total", verdict="allow"), 1)
                for direction, sent in (("up", UP), ("down", DOWN)):
                    moved = (value(after, "shunt_bytes_total", direction=direction, datapath=self.datapath) -
                             value(before, "shunt_bytes_total", direction=direction, datapath=self.datapath))
                    self.assertTrue(within_1pct(moved, sent), f"closed {direction}: {moved} vs {sent}")
                self.assertGreaterEqual(value(after, "shunt_policy_decisions_total", rule="default", verdict="allow"), 1)
                self.assertEqual(shunt.stop(), 0, shunt.output())


SockmapCounters, SpliceCounters, CopyCounters = per_datapath(ByteCounters, "Counters")


class AdminApi(unittest.TestCase):
    def setUp(self):
        self.port = free_port()
        self.upstream = free_port()
        self.config = static_config(self.port, self.upstream, "sockmap")
        self.admin = admin_port_of(self.config)

    def test_metrics_families_and_process_metrics(self):
        with Shunt(self.config, wait_port=self.port) as shunt:
            wait_ready(self.admin, shunt.proc)
            samples = scrape(self.admin)
            names = {name for name, _ in samples}
            for name in ("shunt_connections_active", "shunt_connections_total", "shunt_bytes_total",
                         "shunt_http_requests_total", "shunt_config_generation", "shunt_config_reloads_total",
                         "shunt_connections_revoked_total", "shunt_buffer_boosts_total",
                         "shunt_access_log_dropped_total", "process_resident_memory_bytes", "process_open_fds",
                         "process_max_fds", "process_cpu_seconds_total", "process_start_time_seconds"):
                self.assertIn(name, names)
            self.assertEqual(value(samples, "shunt_config_generation"), 1)
            self.assertGreater(value(samples, "process_resident_memory_bytes"), 1 << 20)
            fds = len(os.listdir(f"/proc/{shunt.proc.pid}/fd"))
            self.assertLess(abs(value(samples, "process_open_fds") - fds), 5)
            for dp in ("sockmap", "splice", "copy"):
                self.assertIn(("shunt_connections_active", frozenset({("datapath", dp)})), samples)

    def test_config_and_generation_follow_reloads(self):
        with Shunt(self.config, wait_port=self.port) as shunt:
            wait_ready(self.admin, shunt.proc)
            cfg = get_json(self.admin, "/config")
            self.assertEqual(cfg["generation"], 1)
            self.assertEqual(cfg["source"], shunt.config_path)
            self.assertEqual(cfg["proxy"]["listeners"],
                             [{"name": "test", "listen": "127.0.0.1:%d" % self.port, "transparent": False,
                               "forward": "127.0.0.1:%d" % self.upstream}])
            self.assertEqual(cfg["proxy"]["timeouts"], {"connect": "2s", "header": "2s", "idle": "1h", "drain": "5s",
                                                           "keepalive": "15s", "refuse": "5s"})
            self.assertEqual(cfg["admin"], {"listen": "127.0.0.1:%d" % self.admin, "allow_remote": False,
                                            "control_socket": shunt.control_socket})
            self.assertEqual(cfg["policy"], {"default": "allow", "rules": []})

            rule = """    - name: web-api
      from: {cidr: 10.1.0.0/16}
      to: {cidr: 10.2.0.0/16, ports: [8080]}
      action: allow
      http:
        - {method: GET, path: /api/, headers: {x-team: blue}}
        - {path_regex: "^/v[0-9]+$"}
"""
            shunt.write_config(self.config.replace("  rules: []\n", "  rules:\n" + rule))
            self.wait_generation(2)
            rules = get_json(self.admin, "/config")["policy"]["rules"]
            self.assertEqual(rules, [{"name": "web-api", "from": {"cidr": "10.1.0.0/16"},
                                      "to": {"cidr": "10.2.0.0/16", "ports": [8080]}, "action": "allow",
                                      "http": [{"method": "GET", "path": "/api/", "headers": {"x-team": "blue"}},
                                               {"path_regex": "^/v[0-9]+$"}]}])
            shunt.write_config(self.config.replace("datapath: sockmap", "datapath: warp"))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                samples = scrape(self.admin)
                if value(samples, "shunt_config_reloads_total", result="error") == 1:
                    break
                time.sleep(0.05)
            self.assertEqual(value(samples, "shunt_config_reloads_total", result="error"), 1)
            self.assertEqual(value(samples, "shunt_config_reloads_total", result="ok"), 1)
            self.assertEqual(value(samples, "shunt_config_generation"), 2)
            self.assertEqual(get_json(self.admin, "/config")["generation"], 2)

    def wait_generation(self, generation):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if get_json(self.admin, "/config")["generation"] == generation:
                self.assertEqual(value(scrape(self.admin), "shunt_config_generation"), generation)
                return
            time.sleep(0.05)
        self.fail(f"generation {generation} not reached")

    def test_http_surface(self):
        with Shunt(self.config, wait_port=self.port) as shunt:
            wait_ready(self.admin, shunt.proc)
            status, headers, body = http_get(self.admin, "/healthz")
            self.assertEqual((status, body), (200, b"ok\n"))
            self.assertEqual(headers["content-length"], "3")
            self.assertEqual(headers["connection"], "close")
            self.assertEqual(http_get(self.admin, "/nope")[0], 404)
            status, headers, _ = http_get(self.admin, "/metrics", method="POST")
            self.assertEqual(status, 405)
            self.assertEqual(headers["allow"], "GET, HEAD")
            status, headers, body = http_get(self.admin, "/readyz", method="HEAD")
            self.assertEqual((status, body), (200, b""))
            self.assertEqual(headers["content-length"], "6")
            self.assertEqual(http_get(self.admin, "/metrics?name[]=x")[0], 200)
            # A malformed request line and an oversized head get answers, not a hang.
            with socket.create_connection(("127.0.0.1", self.admin), timeout=10) as s:
                s.sendall(b"garbage\r\n\r\n")
                self.assertTrue(s.recv(100).startswith(b"HTTP/1.1 400 "))
            with socket.create_connection(("127.0.0.1", self.admin), timeout=10) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
                self.assertTrue(s.recv(100).startswith(b"HTTP/1.1 431 "))

    def test_readyz_only_after_listeners_are_bound(self):
        """From process start, /readyz goes refused* -> 503* -> 200, and when
        it first answers 200 the data listener is bound. The 503 window
        (BPF load, binding) is short; it is counted, not required."""
        seen = []
        with Shunt(self.config) as shunt:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                self.assertIsNone(shunt.proc.poll(), shunt.output())
                try:
                    status, _, body = http_get(self.admin, "/readyz", timeout=2)
                except OSError:
                    seen.append("refused")
                    time.sleep(0.002)
                    continue
                seen.append(status)
                if status == 200:
                    self.assertTrue(is_listening(self.port), "ready before the listener is bound")
                    break
                self.assertEqual(status, 503)
                self.assertTrue(body.startswith(b"not ready: "), body)
            self.assertEqual(seen[-1], 200, seen)
            compact = [s for i, s in enumerate(seen) if i == 0 or seen[i - 1] != s]
            self.assertIn(compact, (["refused", 503, 200], ["refused", 200], [503, 200], [200]), compact)
            print(f"readyz sequence: {compact} ({seen.count(503)} x 503)")

    def test_capabilities_after_setup(self):
        """Every thread keeps at most CAP_NET_ADMIN and CAP_BPF; the bounding
        set is reduced too and no_new_privs is set."""
        with Shunt(self.config, wait_port=self.port) as shunt:
            wait_ready(self.admin, shunt.proc)
            allowed = (1 << CAP_NET_ADMIN) | (1 << CAP_BPF)
            pid = shunt.proc.pid
            tids = os.listdir(f"/proc/{pid}/task")
            self.assertGreaterEqual(len(tids), 4)  # control, worker(s), admin, access log
            for tid in tids:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
                for field in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"):
                    caps = int(status[field], 16)
                    self.assertEqual(caps & ~allowed, 0, f"thread {tid} {field} {status[field]}")
                self.assertEqual(status["NoNewPrivs"].strip(), "1")
            with open(f"/proc/{pid}/status") as f:
                main = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
            self.assertEqual(int(main["CapEff"], 16), allowed)

    def test_admin_refuses_non_loopback_without_allow_remote(self):
        exposed = self.config.replace("admin: {listen: 127.0.0.1:", "admin: {listen: 0.0.0.0:")
        with Shunt(exposed) as shunt:
            self.assertEqual(shunt.proc.wait(timeout=10), 1)
            self.assertIn("allow_remote", shunt.output())
        allowed = exposed.replace("admin: {listen: 0.0.0.0:%d}" % self.admin,
                                  "admin: {listen: 0.0.0.0:%d, allow_remote: true}" % self.admin)
        with Shunt(allowed, wait_port=self.port) as shunt:
            wait_ready(self.admin, shunt.proc)
            self.assertEqual(shunt.stop(), 0)

    def test_admin_port_in_use_exits_2(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", self.admin))
            taken.listen()
            with Shunt(self.config) as shunt:
                self.assertEqual(shunt.proc.wait(timeout=10), 2)
                self.assertIn("admin API: 127.0.0.1:%d" % self.admin, shunt.output())


class Cli(unittest.TestCase):
    def test_status_and_conns(self):
        port = free_port()
        held = threading.Event()

        def hold(conn):
            conn.sendall(b"hi")
            held.wait(30)
            return True

        with ThreadedServer(hold) as server:
            config = static_config(port, server.port, "splice")
            admin = admin_port_of(config)
            with Shunt(config, wait_port=port) as shunt:
                wait_ready(admin, shunt.proc)
                c = socket.create_connection(("127.0.0.1", port), timeout=10)
                self.assertEqual(recv_exact(c, 2), b"hi")

                r = subprocess.run([SHUNT_BIN, "status", "-c", shunt.config_path], capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertRegex(r.stdout, r"(?m)^admin +127\.0\.0\.1:%d: ready$" % admin)
                self.assertRegex(r.stdout, r"(?m)^config +%s \(generation 1\)$" % re.escape(shunt.config_path))
                self.assertRegex(r.stdout, r"(?m)^connections +1 open \(sockmap 0, splice 1, copy 0\)$")
                # Aligned: every value starts in the same column.
                starts = {len(m.group(1)) for m in re.finditer(r"(?m)^(\S+(?: \S+)? +)\S", r.stdout)}
                self.assertEqual(len(starts), 1, r.stdout)

                r = subprocess.run([SHUNT_BIN, "status", "--admin", "127.0.0.1:%d" % admin, "--json"],
                                   capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
                status = json.loads(r.stdout)
                self.assertTrue(status["ready"])
                self.assertEqual(status["config"]["generation"], 1)
                self.assertEqual(status["metrics"]['shunt_connections_active{datapath="splice"}'], 1)

                r = subprocess.run([SHUNT_BIN, "conns", "-c", shunt.config_path], capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
                lines = r.stdout.splitlines()
                self.assertEqual(lines[0].split(), ["ID", "SRC", "DST", "SRC_POD", "DST_POD", "RULE", "DATAPATH",
                                                    "UP", "DOWN", "AGE"])
                self.assertIn("127.0.0.1:%d" % c.getsockname()[1], lines[1])
                self.assertIn("splice", lines[1])
                self.assertEqual(lines[0].index("DST"), lines[1].index("127.0.0.1:%d" % server.port))
                self.assertEqual(lines[-1], "1 open connection(s)")

                r = subprocess.run([SHUNT_BIN, "conns", "--admin", "127.0.0.1:%d" % admin, "--json"],
                                   capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(json.loads(r.stdout)[0]["datapath"], "splice")
                held.set()
                c.close()

    def test_unreachable_exits_2_with_one_line(self):
        for cmd in ("status", "conns"):
            r = subprocess.run([SHUNT_BIN, cmd, "--admin", "127.0.0.1:%d" % free_port()],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 2)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
            self.assertIn("cannot reach the admin API", r.stderr)
        r = subprocess.run([SHUNT_BIN, "status", "--admin", "nonsense"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 1)


if __name__ == "__main__":
    run_tests()

"""Per-client fairness through a real shunt in front of a real HTTP/1.1
origin (issue 9, class 7): one client address holding idle keep-alive
connections up to limits.max_connections_per_source does not stop another
from being served; limits.max_connections refuses at accept; the keep-alive
deadline (timeouts.keepalive) closes connections silent between requests;
a malformed chunk after an allowed head, then the client leaving, frees the
slot and the upstream connection within seconds; a refusal waiting on an
earlier response is bounded by timeouts.refuse and ends at once when the
client resets. Each outcome is checked in /metrics, /connections, the
access log and at the origin. Clients use distinct loopback source addresses
(127.0.0.2, 127.0.0.3) to be distinct sources."""
import json
import os
import resource
import socket
import struct
import subprocess
import tempfile
import time
import unittest

from admin_helpers import get_json, scrape, value, wait_ready
from http_peers import Origin, read_response, request
from shunt_harness import Shunt, free_port, proxy_config, rule, run_tests, wait_until

HOLDER = "127.0.0.2"  # the client that hogs connections
OTHER = "127.0.0.3"  # a well-behaved client


class CountingOrigin(Origin):
    """The origin, also counting its open connections (so a test can see
    shunt let go of an upstream connection) and how each one ended."""

    def __init__(self):
        self.open = 0
        self.ended = []  # per closed connection: "ok" or the exception's class name
        super().__init__()

    def _handle(self, conn):
        with self.lock:
            self.open += 1
        outcome = "ok"
        try:
            return super()._handle(conn)
        except Exception as e:
            outcome = e.__class__.__name__
            raise
        finally:
            with self.lock:
                self.open -= 1
                self.ended.append(outcome)

    def open_connections(self):
        with self.lock:
            return self.open


def config(d):
    return proxy_config(
        [("inspected", d["listen"], d["origin"])],
        # An HTTP deny on the flow: every request is inspected, none is
        # handed to the kernel, so the connections stay idle in userspace
        # between requests, the case the keep-alive deadline is for.
        [rule("no-admin", d["origin"], "deny", http=["{path: /admin}"])],
        datapath="sockmap", default="allow",
        timeouts={"idle": d["idle"], "keepalive": d["keepalive"], "refuse": d["refuse"]},
        limits=f"max_connections: {d['max_connections']}, max_connections_per_source: {d['per_source']}",
        admin=d["admin"], log="debug", access=d["access"])


def connect(port, source, timeout=10):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def reset_close(sock):
    """Closes with a reset (SO_LINGER 0), as a client that dies does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def refused(port, source, probe):
    """Connects from `source` and sends `probe`: true when shunt refused the
    connection, reset or closed with not one byte of response. On loopback
    the reset can land before connect() returns, or on send or recv."""
    try:
        with connect(port, source) as sock:
            sock.sendall(probe)
            return sock.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def upstream_connections(origin_port):
    """Established TCP connections to the origin's port (shunt's side)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"dport = :{origin_port}"], capture_output=True,
                         text=True).stdout
    return len([line for line in out.splitlines() if line.strip()])


class Fairness(unittest.TestCase):
    def setUp(self):
        self.origin = CountingOrigin()
        self.addCleanup(self.origin.close)
        tmp = tempfile.TemporaryDirectory(prefix="shunt-fair-")
        self.addCleanup(tmp.cleanup)
        self.access = os.path.join(tmp.name, "access.log")

    def start(self, keepalive="60s", refuse="5s", max_connections=1000, per_source=4, nofile=None, idle="1h"):
        d = dict(listen=free_port(), origin=self.origin.port, admin=free_port(), keepalive=keepalive, idle=idle,
                 refuse=refuse, max_connections=max_connections, per_source=per_source, access=self.access)
        shunt = Shunt(config(d), wait_port=d["listen"], nofile=nofile)
        shunt.__enter__()
        self.addCleanup(shunt.__exit__, None, None, None)
        wait_ready(d["admin"], shunt.proc)
        self.port, self.admin, self.shunt = d["listen"], d["admin"], shunt
        return shunt

    def metrics(self):
        return scrape(self.admin)

    def connections_from(self, source):
        return [c for c in get_json(self.admin, "/connections") if c["src"].startswith(source + ":")]

    def access_lines(self):
        try:
            with open(self.access) as f:
                return [json.loads(line) for line in f.read().splitlines() if line]
        except FileNotFoundError:
            return []

    def wait_access(self, predicate, n=1, timeout=5):
        """The access-log entries matching predicate, once there are n of them
        (or what there is after `timeout`)."""
        found = []

        def enough():
            found[:] = [e for e in self.access_lines() if predicate(e)]
            return len(found) >= n

        wait_until(enough, timeout)
        return found

    def get(self, sock, path):
        """One keep-alive request on `sock`; returns the response."""
        sock.sendall(request("GET", path))
        r = read_response(sock.makefile("rb"))
        self.assertIsNotNone(r, path)
        return r

    def hold(self, source, n):
        """n keep-alive connections from `source`, one request each, then silence."""
        socks = []
        for i in range(n):
            s = connect(self.port, source)
            self.addCleanup(s.close)
            self.assertEqual(self.get(s, f"/hold/{source}/{i}").status, 200)
            socks.append(s)
        return socks

    # ---------------------------------------------------------------- tests

    def test_new_metrics_are_exported_at_zero(self):
        self.start()
        m = self.metrics()
        for reason in ("max_connections", "source_limit"):
            self.assertIn(("shunt_connections_refused_total", frozenset({("reason", reason)})), m)
            self.assertEqual(value(m, "shunt_connections_refused_total", reason=reason), 0)
        for reason in ("keepalive_timeout", "refuse_timeout", "client_reset", "bad_request"):
            self.assertIn(("shunt_connection_ends_total", frozenset({("reason", reason)})), m)
            self.assertEqual(value(m, "shunt_connection_ends_total", reason=reason), 0)
        cfg = get_json(self.admin, "/config")
        self.assertEqual(cfg["proxy"]["limits"]["max_connections_per_source"], 4)
        self.assertEqual((cfg["proxy"]["timeouts"]["keepalive"], cfg["proxy"]["timeouts"]["refuse"]), ("1m", "5s"))

    def test_source_at_its_cap_does_not_starve_others(self):
        self.start(per_source=4)
        held = self.hold(HOLDER, 4)
        self.assertEqual(len(self.connections_from(HOLDER)), 4)

        # The holder's fifth connection is refused at accept: it never
        # reaches the origin, not even as a TCP connection.
        upstream_before = upstream_connections(self.origin.port)
        self.assertTrue(refused(self.port, HOLDER, request("GET", "/over-cap")))
        self.assertNotIn("/over-cap", self.origin.paths())
        self.assertEqual(upstream_connections(self.origin.port), upstream_before)

        # Meanwhile another address is served, sequentially and with as many
        # connections at once as the holder has.
        for i in range(6):
            with connect(self.port, OTHER) as s:
                self.assertEqual(self.get(s, f"/other/{i}").status, 200)
        parallel = self.hold(OTHER, 4)
        for s in parallel:
            s.close()

        m = self.metrics()
        self.assertEqual(value(m, "shunt_connections_refused_total", reason="source_limit"), 1)
        self.assertEqual(value(m, "shunt_connections_refused_total", reason="max_connections"), 0)
        lines = self.wait_access(lambda e: e.get("reason") == "source_limit")
        self.assertEqual(len(lines), 1, lines)
        e = lines[0]
        self.assertEqual((e["event"], e["verdict"], e["bytes_up"], e["bytes_down"]), ("conn", "deny", 0, 0))
        self.assertTrue(e["src"].startswith(HOLDER + ":"), e)
        self.assertEqual(e["dst"], f"127.0.0.1:{self.origin.port}")

        # A slot given back is a slot the holder may use again.
        held[0].close()
        self.assertIsNotNone(wait_until(lambda: len(self.connections_from(HOLDER)) == 3, 5))
        with connect(self.port, HOLDER) as s:
            self.assertEqual(self.get(s, "/after-release").status, 200)

    def test_max_connections_refuses_at_accept(self):
        self.start(max_connections=3, per_source=3)
        self.hold(HOLDER, 2)
        self.hold(OTHER, 1)
        self.assertTrue(refused(self.port, OTHER, request("GET", "/over-max")))
        self.assertNotIn("/over-max", self.origin.paths())
        m = self.metrics()
        self.assertEqual(value(m, "shunt_connections_refused_total", reason="max_connections"), 1)
        self.assertEqual(value(m, "shunt_connections_refused_total", reason="source_limit"), 0)
        self.assertEqual(len(self.wait_access(lambda e: e.get("reason") == "max_connections")), 1)

    def test_refusals_are_logged_at_most_once_a_second(self):
        self.start(per_source=1)
        self.hold(HOLDER, 1)
        started = time.monotonic()
        for i in range(20):
            self.assertTrue(refused(self.port, HOLDER, request("GET", f"/over/{i}")))
        within = time.monotonic() - started
        m = self.metrics()
        self.assertEqual(value(m, "shunt_connections_refused_total", reason="source_limit"), 20)
        marker = "refused: the source holds limits.max_connections_per_source (1)"
        lines = [l for l in self.shunt.output().splitlines() if marker in l]
        # One line per second at most: 20 refusals in `within` seconds.
        self.assertGreaterEqual(len(lines), 1)
        self.assertLessEqual(len(lines), int(within) + 1, lines)
        self.assertIn("[warning]", lines[0])
        # The next line, a second later, says how many were left out.
        time.sleep(1.1)
        self.assertTrue(refused(self.port, HOLDER, request("GET", "/over/late")))
        self.assertIsNotNone(wait_until(lambda: len([l for l in self.shunt.output().splitlines()
                                                     if marker in l]) > len(lines), 5))
        last = [l for l in self.shunt.output().splitlines() if marker in l][-1]
        self.assertRegex(last, r"\((\d+) more refused in the last second\)")
        # Another source is still served.
        with connect(self.port, OTHER) as s:
            self.assertEqual(self.get(s, "/other").status, 200)

    def test_descriptor_limit_below_max_connections_is_said_and_enforced(self):
        # 1,034 descriptors, of which shunt keeps 1,024 for itself: room for
        # 5 connections of the configured 1,000. A process may always lower
        # its own limit, so this works without privileges too.
        self.start(max_connections=1000, per_source=10, nofile=1034)
        said = [l for l in self.shunt.output().splitlines() if "RLIMIT_NOFILE" in l]
        self.assertEqual(len(said), 1, said)
        self.assertIn("limits.max_connections 1000 needs 3024 file descriptors but RLIMIT_NOFILE stays at 1034",
                      said[0])
        self.assertIn("holding at most 5 connections", said[0])
        self.hold(HOLDER, 3)
        self.hold(OTHER, 2)
        self.assertTrue(refused(self.port, OTHER, request("GET", "/over-fds")))
        self.assertNotIn("/over-fds", self.origin.paths())
        m = self.metrics()
        self.assertEqual(value(m, "shunt_connections_refused_total", reason="max_connections"), 1)
        self.assertTrue(any("5 connections open, the limit" in l for l in self.shunt.output().splitlines()))

    def test_descriptor_limit_is_raised_to_what_max_connections_needs(self):
        # Soft limit low, hard limit high enough: shunt raises the soft one
        # itself (no privilege needed up to the hard limit).
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard < 4000:
            self.fail(f"this machine's hard RLIMIT_NOFILE ({hard}) is below what the test needs (4000)")
        d = dict(listen=free_port(), origin=self.origin.port, admin=free_port(), keepalive="60s", refuse="5s",
                 max_connections=1000, per_source=4, access=self.access, idle="1h")
        shunt = Shunt(config(d), wait_port=d["listen"], nofile=(1100, hard))
        self.addCleanup(shunt.__exit__, None, None, None)
        wait_ready(d["admin"], shunt.proc)
        with open(f"/proc/{shunt.proc.pid}/limits") as f:
            soft = next(int(l.split()[3]) for l in f if l.startswith("Max open files"))
        self.assertGreaterEqual(soft, 3024)
        self.assertFalse([l for l in shunt.output().splitlines() if "holding at most" in l])

    def test_idle_timeout_closes_a_connection_nothing_moves_on(self):
        # timeouts.idle, checked by the worker's idle sweep (proxy/idle_sweep.h)
        # every quarter of the timeout: closed after 1 s of silence, not much
        # later, and a connection that keeps talking is not.
        self.start(idle="1s")
        quiet, = self.hold(HOLDER, 1)
        talking, = self.hold(OTHER, 1)
        started = time.monotonic()
        closed_after = None
        while time.monotonic() - started < 4 and closed_after is None:
            self.assertEqual(self.get(talking, "/still-here").status, 200)
            quiet.settimeout(0.3)
            try:
                if quiet.recv(1) == b"":
                    closed_after = time.monotonic() - started
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed_after = time.monotonic() - started
        self.assertIsNotNone(closed_after, "the silent connection was not closed within 4 s")
        self.assertGreaterEqual(closed_after, 0.9)
        self.assertLess(closed_after, 2.5)
        self.assertEqual(self.get(talking, "/after").status, 200)
        m = self.metrics()
        self.assertEqual(value(m, "shunt_connection_ends_total", reason="idle_timeout"), 1)

    def test_keepalive_deadline_closes_silent_connections(self):
        self.start(keepalive="1s")
        start = time.monotonic()
        idle = self.hold(HOLDER, 3)

        # A connection that keeps asking stays open past the deadline: it
        # counts silence, not age.
        busy = connect(self.port, OTHER)
        self.addCleanup(busy.close)
        for i in range(6):
            self.assertEqual(self.get(busy, f"/busy/{i}").status, 200)
            time.sleep(0.4)
        # An answer slower than the deadline is not silence either.
        self.assertEqual(self.get(busy, "/slow?s=1.6").status, 200)
        self.assertEqual(len(self.connections_from(OTHER)), 1)
        busy.close()  # before its own deadline, so the counts below are the idle ones'

        for s in idle:
            s.settimeout(10)
            self.assertEqual(s.recv(1), b"")  # FIN: shunt closed it
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 1.0)
        self.assertEqual(len(self.connections_from(HOLDER)), 0)
        self.assertIsNotNone(wait_until(lambda: self.origin.open_connections() == 0, 5),
                             "the idle connections' upstream connections stay open")
        m = self.metrics()
        self.assertEqual(value(m, "shunt_connection_ends_total", reason="keepalive_timeout"), 3)
        self.assertEqual(value(m, "shunt_connection_ends_total", reason="idle_timeout"), 0)
        lines = self.wait_access(lambda e: e["event"] == "conn" and e.get("reason") == "keepalive_timeout", n=3)
        self.assertEqual(len(lines), 3, lines)
        self.assertTrue(all(e["src"].startswith(HOLDER + ":") for e in lines), lines)
        self.assertEqual(self.origin.ended, ["ok"] * 4)  # closed with a FIN, never reset

    def test_malformed_chunk_then_close_frees_slot_and_upstream(self):
        # Neither the refusal deadline nor the keep-alive one may be what
        # frees it: both are far off.
        self.start(keepalive="60s", refuse="60s")
        head = (b"POST /upload HTTP/1.1\r\nHost: api.local\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n")
        s = connect(self.port, HOLDER)
        s.sendall(head)
        # The origin has the head (and is reading the body) before the chunk breaks.
        self.assertIsNotNone(wait_until(lambda: self.origin.paths() == ["/upload"], 5), self.origin.paths())
        self.assertEqual(self.origin.open_connections(), 1)
        s.sendall(b"zz\r\nbroken\r\n")  # not a chunk size
        s.close()

        took = wait_until(lambda: not self.connections_from(HOLDER) and self.origin.open_connections() == 0, 10)
        self.assertIsNotNone(took, "slot or upstream connection still held after the client left")
        self.assertLess(took, 3)
        self.assertEqual(upstream_connections(self.origin.port), 0)
        # The origin saw its request cut short, never completed.
        self.assertIsNotNone(wait_until(lambda: len(self.origin.ended) == 1, 5))
        self.assertNotEqual(self.origin.ended, ["ok"])
        lines = self.wait_access(lambda e: e["event"] == "conn" and e.get("reason") == "bad_request")
        self.assertEqual(len(lines), 1, self.access_lines())
        self.assertTrue(lines[0]["src"].startswith(HOLDER + ":"), lines)
        m = self.metrics()
        self.assertEqual(value(m, "shunt_http_requests_total", verdict="deny", protocol="h1"), 1)
        self.assertEqual(value(m, "shunt_connection_ends_total", reason="bad_request"), 1)
        self.assertEqual(value(m, "shunt_connection_ends_total", reason="refuse_timeout"), 0)

    def test_malformed_chunk_client_that_stays_is_reset(self):
        # Half a request is at the upstream and no status can be sent in
        # order: both sides are reset at once, no waiting on either.
        self.start(keepalive="60s", refuse="60s")
        with connect(self.port, HOLDER) as s:
            s.sendall(b"POST /upload HTTP/1.1\r\nHost: api.local\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhello\r\n")
            self.assertIsNotNone(wait_until(lambda: self.origin.paths() == ["/upload"], 5), self.origin.paths())
            s.sendall(b"zz\r\n")
            s.settimeout(5)
            with self.assertRaises(ConnectionResetError):
                s.recv(1024)
        self.assertIsNotNone(wait_until(lambda: self.origin.open_connections() == 0, 3))
        self.assertIsNotNone(wait_until(lambda: not self.connections_from(HOLDER), 3))

    def test_refusal_waiting_on_an_earlier_answer_is_bounded(self):
        # /slow answers after 20 s; the denied /admin behind it may wait for
        # that answer only timeouts.refuse, then the connection is reset.
        self.start(refuse="1s")
        s = connect(self.port, HOLDER)
        self.addCleanup(s.close)
        start = time.monotonic()
        s.sendall(request("GET", "/slow?s=20") + request("GET", "/admin/keys"))
        s.settimeout(10)
        try:
            got = s.recv(1024)
        except ConnectionResetError:
            got = b""
        elapsed = time.monotonic() - start
        self.assertEqual(got, b"")
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 4)
        self.assertIsNotNone(wait_until(lambda: not self.connections_from(HOLDER), 3))
        self.assertIsNotNone(wait_until(lambda: upstream_connections(self.origin.port) == 0, 3))
        self.assertNotIn("/admin/keys", self.origin.paths())
        m = self.metrics()
        self.assertEqual(value(m, "shunt_connection_ends_total", reason="refuse_timeout"), 1)
        lines = self.wait_access(lambda e: e["event"] == "conn" and e.get("reason") == "refuse_timeout")
        self.assertEqual(len(lines), 1, self.access_lines())
        denied = self.wait_access(lambda e: e["event"] == "http" and e.get("status") == 403)
        self.assertEqual((denied[0]["path"], denied[0].get("reason")), ("/admin/keys", "policy_deny"))

    def test_refusal_ends_when_the_client_resets(self):
        # The refusal deadline is far off: only watching the client can end
        # this wait early.
        self.start(refuse="60s")
        s = connect(self.port, HOLDER)
        s.sendall(request("GET", "/slow?s=20") + request("GET", "/admin/keys"))
        self.assertIsNotNone(wait_until(lambda: self.origin.paths() == ["/slow?s=20"], 5))
        time.sleep(0.3)  # shunt is now waiting for /slow's answer before its 403
        self.assertEqual(len(self.connections_from(HOLDER)), 1)
        reset_close(s)
        took = wait_until(lambda: not self.connections_from(HOLDER) and upstream_connections(self.origin.port) == 0,
                          10)
        self.assertIsNotNone(took, "slot or upstream connection held after the client reset")
        self.assertLess(took, 2)
        self.assertNotIn("/admin/keys", self.origin.paths())
        lines = self.wait_access(lambda e: e["event"] == "conn" and e.get("reason") == "client_reset")
        self.assertEqual(len(lines), 1, self.access_lines())
        m = self.metrics()
        self.assertEqual(value(m, "shunt_connection_ends_total", reason="client_reset"), 1)
        self.assertEqual(value(m, "shunt_connection_ends_total", reason="refuse_timeout"), 0)


if __name__ == "__main__":
    run_tests()

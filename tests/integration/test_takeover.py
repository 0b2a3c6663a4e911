"""`shunt run --takeover` while traffic flows (issue 14, protocol version 1:
listening sockets and the admin socket move; open connections stay with the
old process, which drains them and exits 0).

For each data path, takeovers in a row while these run through the proxy:
throttled transfers both ways (hash-checked at both ends), an HTTP/1.1
keep-alive session under a per-request rule sending a request every 10 ms,
and a loop opening new connections at a few hundred per second. Nothing may
be refused or reset, every byte must arrive intact and every request be
answered. Then the failure cases: a new process SIGKILLed at several points
of its start, and a scripted new process (this file speaks the protocol)
that offers an incompatible version, goes away after `ready`, or stalls
after the old one stopped accepting: the old process keeps serving or takes
its listeners back.
"""
import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest

from admin_helpers import scrape, value, wait_ready
from h2_frames import DATA, END_STREAM, GOAWAY, HEADERS, NO_ERROR, Client, goaways, window_update
from http_peers import Origin, read_response, request
from shunt_harness import (PY, SHUNT_BIN, PodLab, Shunt, ThreadedServer, echo_handler, free_port, pattern,
                           pattern_digest, proxy_config, recv_exact, rule, run_tests, start_nghttpd)

MAGIC = 0x4F544853
HEADER = struct.Struct("<IHHI")
HELLO, WELCOME, REFUSE, LISTENERS, LISTENERS_END, READY, RELEASED, COMMIT, KERNEL_MAPS, PAIRS, PAIRS_END = \
    range(1, 12)


def config(d, datapath):
    return proxy_config(
        [("bulk", d["bulk"], d["bulk_up"]), ("echo", d["echo"], d["echo_up"]), ("http", d["http"], d["origin"])],
        [rule("api", d["origin"], http=["{method: GET, path: /api/}"])],
        datapath=datapath, default="allow", timeouts={"header": "5s", "drain": "60s"}, admin=d["admin"],
        admin_extra=f", control_socket: {d['control']}", access="off")


# In the client pod: new connections to the server pod until stdin closes
# (or `seconds` pass), each echoing 64 bytes through the steered proxy;
# prints counts as JSON. Tied to stdin, not a fixed time: takeovers on a
# loaded machine can take longer than any fixed time would allow.
POD_LOOP = r"""
import json, os, select, socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ok, errors, end = 0, [], time.monotonic() + seconds
# Until the test closes our stdin (its takeovers are done), at most `seconds`.
while time.monotonic() < end and not select.select([sys.stdin], [], [], 0)[0]:
    try:
        with socket.create_connection((host, port), timeout=10) as s:
            f = s.makefile("rb")
            f.readline()  # the server's view of the peer
            msg = os.urandom(64)
            s.sendall(msg)
            s.shutdown(socket.SHUT_WR)
            got = f.read()
            if got != msg:
                raise AssertionError("echo differs: %d bytes" % len(got))
        ok += 1
    except Exception as e:
        errors.append(repr(e))
    time.sleep(0.005)
print(json.dumps({"ok": ok, "errors": errors[:10], "failed": len(errors)}))
"""


def throttled_send(sock, total, salt, rate):
    """pattern(total, salt) at about `rate` bytes per second."""
    start = time.monotonic()
    sent = 0
    for chunk in pattern(total, salt):
        sock.sendall(chunk)
        sent += len(chunk)
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)


def digest_exactly(sock, total):
    h = hashlib.sha256()
    n = 0
    while n < total:
        data = sock.recv(min(1 << 20, total - n))
        if not data:
            break
        h.update(data)
        n += len(data)
    return n, h.hexdigest()


def kill(proc):
    """Ends `proc` unless it has ended already (a cleanup after a failure)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe:
            pipe.close()


class BulkPeer:
    """Upstream of the transfers: reads `size, salt`, then sends
    pattern(size, salt + 1) throttled while hashing what it receives."""

    def __init__(self, rate):
        self.rate = rate
        self.server = ThreadedServer(self.handle)

    def handle(self, conn):
        size, salt = struct.unpack("!QQ", recv_exact(conn, 16))
        sender = threading.Thread(target=throttled_send, args=(conn, size, salt + 1, self.rate))
        sender.start()
        got = digest_exactly(conn, size)
        sender.join()
        conn.shutdown(socket.SHUT_WR)
        return got == (size, pattern_digest(size, salt))


class Traffic:
    """Everything that must not notice a takeover, each in its threads;
    failures are collected, never raised in a thread."""

    def __init__(self, d, bulk_peer, transfer_bytes, rate):
        self.d, self.bulk_peer = d, bulk_peer
        self.transfer_bytes, self.rate = transfer_bytes, rate
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.errors = []
        self.requests = 0
        self.connections = 0
        self.transfers_ok = 0
        # Daemon threads: a test that fails before finish() must not keep
        # the process alive (its cleanup calls finish() too).
        self.threads = [threading.Thread(target=self.transfer, args=(salt,), daemon=True) for salt in (11, 23)]
        self.threads += [threading.Thread(target=self.keep_alive, daemon=True),
                         threading.Thread(target=self.new_connections, daemon=True)]

    def error(self, what, e):
        with self.lock:
            self.errors.append(f"{what}: {e!r}")

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self, timeout=60):
        self.stop.set()
        for t in self.threads:
            t.join(timeout)

    def transfer(self, salt):
        try:
            with socket.create_connection(("127.0.0.1", self.d["bulk"]), timeout=20) as s:
                s.sendall(struct.pack("!QQ", self.transfer_bytes, salt))
                result = {}
                reader = threading.Thread(
                    target=lambda: result.update(got=digest_exactly(s, self.transfer_bytes)))
                reader.start()
                throttled_send(s, self.transfer_bytes, salt, self.rate)
                s.shutdown(socket.SHUT_WR)
                reader.join()
                want = (self.transfer_bytes, pattern_digest(self.transfer_bytes, salt + 1))
                if result.get("got") != want:
                    raise AssertionError(f"downstream {result.get('got')} != {want}")
                if s.recv(1) != b"":
                    raise AssertionError("bytes after the transfer")
            with self.lock:
                self.transfers_ok += 1
        except Exception as e:
            self.error(f"transfer {salt}", e)

    def keep_alive(self):
        """One connection, a request every 10 ms, each decided by rule `api`."""
        try:
            with socket.create_connection(("127.0.0.1", self.d["http"]), timeout=20) as s:
                f = s.makefile("rb")
                n = 0
                while not self.stop.is_set():
                    s.sendall(request("GET", f"/api/{n}"))
                    r = read_response(f)
                    if r.status != 200:
                        raise AssertionError(f"request {n}: status {r.status}")
                    n += 1
                    with self.lock:
                        self.requests = n
                    time.sleep(0.01)
        except Exception as e:
            self.error("keep-alive session", e)

    def new_connections(self):
        """A few hundred new connections a second, each echoing 16 bytes."""
        n = 0
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.d["echo"]), timeout=15) as s:
                    msg = struct.pack("!QQ", n, 0x5EED)
                    s.sendall(msg)
                    if recv_exact(s, 16) != msg:
                        raise AssertionError("echo differs")
                with self.lock:
                    self.connections += 1
            except Exception as e:
                self.error(f"new connection {n}", e)
            n += 1
            time.sleep(0.003)


def read_text(path):
    with open(path, errors="replace") as f:
        return f.read()


def wait_log(path, pattern_text, proc, timeout=30):
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern_text)
    while time.monotonic() < deadline:
        text = read_text(path)
        if rx.search(text):
            return text
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before /{pattern_text}/:\n{text[-3000:]}")
        time.sleep(0.05)
    raise TimeoutError(f"no /{pattern_text}/ in {path}")


class Fake:
    """A scripted new process speaking the takeover protocol."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.fds = []

    def send(self, mtype, payload=b"", version=1):
        self.sock.send(HEADER.pack(MAGIC, version, mtype, len(payload)) + payload)

    def recv(self):
        data, fds, _, _ = socket.recv_fds(self.sock, 70000, 256)
        self.fds += fds
        magic, version, mtype, length = HEADER.unpack_from(data)
        assert magic == MAGIC and length == len(data) - HEADER.size
        return mtype, data[HEADER.size:]

    def hello(self, low=1, high=1):
        binary = b"fake-test"
        self.send(HELLO, struct.pack("<HHI", low, high, len(binary)) + binary + struct.pack("<I", os.getpid()),
                  version=low)

    def until_ready(self, version=1):
        """hello .. listeners_end, then ready; returns once `released`.
        Version 2: the old process also sends its sockmap's maps, and
        `ready` asks for its kernel-spliced pairs."""
        self.hello(high=version)
        mtype, payload = self.recv()
        assert mtype == WELCOME and struct.unpack_from("<H", payload)[0] == version, (mtype, payload)
        maps = 0
        while True:
            mtype, _ = self.recv()
            if mtype == LISTENERS_END:
                break
            if mtype == KERNEL_MAPS:
                maps += 1
                continue
            assert mtype == LISTENERS, mtype
        assert maps == (1 if version >= 2 else 0), maps
        self.send(READY, b"\x01" if version >= 2 else b"", version=version)
        assert self.recv()[0] == RELEASED

    def receive_pairs(self):
        """After until_ready(2): the frozen pairs' count (two fds each)."""
        pairs = 0
        while True:
            mtype, payload = self.recv()
            if mtype == PAIRS_END:
                assert struct.unpack("<I", payload)[0] == pairs
                return pairs
            assert mtype == PAIRS, mtype
            pairs += struct.unpack_from("<I", payload)[0]

    def close(self):
        self.sock.close()
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class TakeoverTest(unittest.TestCase):
    def setUp(self):
        self.bulk_peer = BulkPeer(rate=3 << 20)
        self.echo = ThreadedServer(echo_handler)
        self.origin = Origin()
        self.procs = []  # every shunt this test started, oldest first: (proc, log path)

    def tearDown(self):
        for proc, _ in self.procs:
            kill(proc)
        self.bulk_peer.server.close()
        self.echo.close()
        self.origin.close()

    def ports(self, shunt_dir):
        return dict(bulk=free_port(), echo=free_port(), http=free_port(), admin=free_port(),
                    bulk_up=self.bulk_peer.server.port, echo_up=self.echo.port, origin=self.origin.port,
                    control=os.path.join(shunt_dir, "control.sock"))

    def take_over(self, shunt, n, config_path=None):
        log = os.path.join(shunt.dir.name, f"takeover-{n}.log")
        with open(log, "wb") as out:
            proc = subprocess.Popen([SHUNT_BIN, "run", "-c", config_path or shunt.config_path, "--takeover"],
                                    stdout=out, stderr=subprocess.STDOUT)
        self.procs.append((proc, log))
        wait_log(log, r"takeover: complete in \d+ ms", proc)
        return proc

    def run_takeovers(self, datapath, takeovers, transfer_bytes):
        tmp = tempfile.TemporaryDirectory(prefix="shunt-takeover-")
        self.addCleanup(tmp.cleanup)
        d = self.ports(tmp.name)
        with Shunt(config(d, datapath), wait_port=d["echo"]) as first:
            wait_ready(d["admin"], first.proc)
            traffic = Traffic(d, self.bulk_peer, transfer_bytes, rate=3 << 20)
            traffic.start()
            self.addCleanup(traffic.finish, 5)
            time.sleep(1.0)
            for n in range(takeovers):
                before = traffic.connections
                self.take_over(first, n)
                time.sleep(0.8)
                self.assertGreater(traffic.connections, before, "no new connection since the takeover")
            # The admin socket moved with the listeners: the newest process answers.
            samples = scrape(d["admin"])
            self.assertEqual(value(samples, "shunt_takeovers_total", result="ok"), 1)
            self.assertGreater(value(samples, "shunt_takeover_listeners_transferred_total"), 3)
            self.assertEqual(value(samples, "shunt_takeovers_total", result="failed"), 0)
            if datapath == "sockmap":
                # The two transfers run through every takeover: each moved
                # to the new process as a kernel-spliced pair (the keep-alive
                # session is inspected, so it drains in the old process).
                self.assertGreaterEqual(
                    value(samples, "shunt_takeover_connections_transferred_total", datapath="sockmap"), 2)
                for n, (_, log) in enumerate(self.procs):
                    self.assertRegex(read_text(log), r"takeover: complete in \d+ ms: [2-9]\d* kernel-spliced",
                                     f"takeover {n}")
            else:
                # Copy and splice pairs move between reads (a pair caught
                # mid-write stays and drains in the old process).
                moved = [int(re.search(r"complete in \d+ ms: 0 kernel-spliced connection\(s\), (\d+) copy/splice",
                                       read_text(log)).group(1)) for _, log in self.procs]
                self.assertGreaterEqual(sum(moved), 2, moved)
            traffic.finish()
            self.assertEqual(traffic.errors, [])
            self.assertEqual(traffic.transfers_ok, 2)
            self.assertGreater(traffic.requests, 100)
            # Every process but the newest held nothing more and exited 0.
            everyone = [(first.proc, first.log_path)] + self.procs
            for proc, log in everyone[:-1]:
                try:
                    self.assertEqual(proc.wait(timeout=20), 0, read_text(log)[-2000:])
                except subprocess.TimeoutExpired:
                    self.fail(f"pid {proc.pid} still running after its takeover: " + read_text(log)[-2000:])
            newest = everyone[-1][0]
            self.assertIsNone(newest.poll())
            newest.send_signal(signal.SIGTERM)
            self.assertEqual(newest.wait(timeout=20), 0)
            print(f"{datapath}: {takeovers} takeovers, {traffic.connections} new connections, "
                  f"{traffic.requests} keep-alive requests, 2 transfers of {transfer_bytes >> 20} MiB each way")

    def test_sockmap(self):
        self.run_takeovers("sockmap", takeovers=3, transfer_bytes=24 << 20)

    def test_splice(self):
        self.run_takeovers("splice", takeovers=2, transfer_bytes=12 << 20)

    def test_copy(self):
        self.run_takeovers("copy", takeovers=2, transfer_bytes=12 << 20)

    def test_policy_on_arrival(self):
        """The new process brings a config that denies the echo upstream:
        the pairs it adopted to it are revoked (reset) at once, as a reload
        would; the others moved and go on, an HTTP/1.1 keep-alive
        connection between requests included."""
        tmp = tempfile.TemporaryDirectory(prefix="shunt-takeover-")
        self.addCleanup(tmp.cleanup)
        d = self.ports(tmp.name)
        with Shunt(config(d, "sockmap"), wait_port=d["echo"]) as old:
            wait_ready(d["admin"], old.proc)
            echo = [socket.create_connection(("127.0.0.1", d["echo"]), timeout=10) for _ in range(3)]
            bulk = socket.create_connection(("127.0.0.1", d["bulk"]), timeout=10)
            http = socket.create_connection(("127.0.0.1", d["http"]), timeout=10)
            for s in echo + [bulk, http]:
                self.addCleanup(s.close)
            http_in = http.makefile("rb")
            http.sendall(request("GET", "/api/before"))
            self.assertEqual(read_response(http_in).status, 200)
            for s in echo:
                s.sendall(b"ping")
                self.assertEqual(recv_exact(s, 4), b"ping")
            size = 1 << 20
            bulk.sendall(struct.pack("!QQ", size, 7))
            stricter = os.path.join(tmp.name, "stricter.yaml")
            with open(stricter, "w") as f:
                f.write(config(d, "sockmap").replace("  rules:\n", f"""  rules:
    - name: no-echo
      from: {{cidr: 127.0.0.0/8}}
      to: {{cidr: 127.0.0.1/32, ports: [{d['echo_up']}]}}
      action: deny
""", 1))
            new = self.take_over(old, 0, config_path=stricter)
            log = wait_log(self.procs[-1][1], r"adopted connection\(s\) re-checked against this configuration: 3 "
                           r"revoked", new)
            self.assertRegex(log, r"complete in \d+ ms: 4 kernel-spliced connection\(s\), 0 copy/splice "
                             r"connection\(s\) between reads and 1 HTTP/1.1 connection\(s\) between requests moved")
            # The keep-alive connection's next request is inspected by the
            # new process (the old one holds nothing and exits below).
            http.sendall(request("GET", "/api/after"))
            self.assertEqual(read_response(http_in).status, 200)
            http.sendall(request("GET", "/api/again"))
            self.assertEqual(read_response(http_in).status, 200)
            for s in echo:
                try:
                    s.sendall(b"again")
                    got = s.recv(16)
                except (ConnectionResetError, BrokenPipeError):
                    got = b""
                self.assertEqual(got, b"", "a connection the new config denies still echoes")
            # The allowed pair moved and carries on, hashed both ways.
            sender = threading.Thread(target=throttled_send, args=(bulk, size, 7, 8 << 20))
            sender.start()
            self.assertEqual(digest_exactly(bulk, size), (size, pattern_digest(size, 8)))
            sender.join()
            bulk.shutdown(socket.SHUT_WR)
            self.assertEqual(bulk.recv(1), b"")
            self.assertEqual(old.proc.wait(timeout=20), 0, old.output()[-2000:])
            samples = scrape(d["admin"])
            self.assertEqual(value(samples, "shunt_connections_revoked_total"), 3)
            self.assertEqual(value(samples, "shunt_takeover_connections_transferred_total", datapath="sockmap"), 4)
            self.assertEqual(value(samples, "shunt_takeover_connections_transferred_total", datapath="copy"), 1)
            # Counted from 0 in the new process: it decided both.
            self.assertEqual(value(samples, "shunt_http_requests_total", verdict="allow", protocol="h1"), 2)
            http_in.close()
            http.close()  # else SIGTERM's drain waits out its keep-alive
            new.send_signal(signal.SIGTERM)
            self.assertEqual(new.wait(timeout=20), 0)

    def test_http2_drained_with_goaway(self):
        """An HTTP/2 connection stays with the old process, which says
        GOAWAY(NO_ERROR) at once and lets the stream in flight finish
        (8 MiB, hashed); the client's next connection reaches the new one."""
        big = os.urandom(8 << 20)
        listen, admin = free_port(), free_port()
        origin = start_nghttpd(self, {"big": big, "ok": b"ok"})
        text = proxy_config([("h2c", listen, origin)],
                            [rule("files", origin, http=["{method: GET, path_exact: /big}",
                                                         "{method: GET, path_exact: /ok}"])],
                            datapath="sockmap", admin=admin, timeouts={"drain": "20s"}, access="off")
        with Shunt(text, wait_port=listen) as old:
            wait_ready(admin, old.proc)
            c = Client(listen)
            self.addCleanup(c.close)
            c.request(1, "/big")  # in flight, held at its first 65535 bytes
            frames = c.frames_until(lambda f: f.type == HEADERS and f.stream == 1, timeout=5)
            new = self.take_over(old, 0)
            frames += c.frames_until(lambda f: f.type == GOAWAY, timeout=5)
            self.assertEqual(goaways(frames), [(1, NO_ERROR)])
            c.send(window_update(0, 1 << 30) + window_update(1, 1 << 30))
            frames += c.frames_until(lambda f: f.stream == 1 and f.flags & END_STREAM, timeout=30)
            body = b"".join(f.payload for f in frames if f.type == DATA and f.stream == 1)
            self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(big).hexdigest())
            c.close()
            self.assertEqual(old.proc.wait(timeout=15), 0, old.output()[-2000:])
            c2 = Client(listen)
            self.addCleanup(c2.close)
            c2.request(1, "/ok")
            status, got, _ = c2.response(1)
            self.assertEqual((status, got), (200, b"ok"))
            c2.close()
            new.send_signal(signal.SIGTERM)
            self.assertEqual(new.wait(timeout=20), 0)

    def test_no_control_socket_still_serves(self):
        tmp = tempfile.TemporaryDirectory(prefix="shunt-takeover-")
        self.addCleanup(tmp.cleanup)
        d = self.ports(tmp.name)
        d["control"] = "/proc/shunt-takeover-test/control.sock"  # cannot be created
        with Shunt(config(d, "copy"), wait_port=d["echo"]) as shunt:
            wait_ready(d["admin"], shunt.proc)
            with socket.create_connection(("127.0.0.1", d["echo"]), timeout=5) as s:
                s.sendall(b"still serving")
                self.assertEqual(recv_exact(s, 13), b"still serving")
            self.assertIn("this process cannot be taken over", shunt.output())
            self.assertEqual(shunt.stop(), 0)

    def test_failures_leave_the_old_process_serving(self):
        tmp = tempfile.TemporaryDirectory(prefix="shunt-takeover-")
        self.addCleanup(tmp.cleanup)
        d = self.ports(tmp.name)
        with Shunt(config(d, "sockmap"), wait_port=d["echo"]) as old:
            wait_ready(d["admin"], old.proc)
            # Kernel-spliced pairs open through every failure below: each
            # attempt freezes them and they must come back (or move) intact.
            pairs = [socket.create_connection(("127.0.0.1", d["echo"]), timeout=10) for _ in range(3)]
            for p in pairs:
                self.addCleanup(p.close)
            echoed = [0]

            def echo_all(tag):
                for i, p in enumerate(pairs):
                    msg = struct.pack("!QQ", echoed[0], i) + tag
                    p.sendall(msg)
                    self.assertEqual(recv_exact(p, len(msg)), msg, tag)
                echoed[0] += 1

            echo_all(b"before")
            traffic = Traffic(d, self.bulk_peer, 4 << 20, rate=4 << 20)
            traffic.start()
            self.addCleanup(traffic.finish, 5)

            # Without --takeover: one clear line, exit 2, nothing touched.
            plain = subprocess.run([SHUNT_BIN, "run", "-c", old.config_path], capture_output=True, text=True,
                                   timeout=30)
            self.assertEqual(plain.returncode, 2, plain.stderr)
            self.assertEqual(len(plain.stderr.strip().splitlines()), 1, plain.stderr)
            self.assertIn("another shunt is running", plain.stderr)
            self.assertIn("--takeover", plain.stderr)

            # Incompatible version: refused with its reason, nothing changes.
            fake = Fake(d["control"])
            fake.hello(low=99, high=99)
            mtype, payload = fake.recv()
            self.assertEqual(mtype, REFUSE)
            self.assertIn(b"incompatible takeover protocol", payload)
            fake.close()

            # Gone right after the old process stopped accepting: taken back.
            fake = Fake(d["control"])
            fake.until_ready()
            fake.close()
            time.sleep(0.3)
            before = traffic.connections
            time.sleep(0.5)
            self.assertGreater(traffic.connections, before, "not accepting again after the new process vanished")

            # Version 2: the pairs are frozen and sent; the kernel keeps
            # moving their bytes meanwhile. Gone before committing: the old
            # process takes them back and acts on them again (FINs below).
            fake = Fake(d["control"])
            fake.until_ready(version=2)
            self.assertGreaterEqual(fake.receive_pairs(), 3)  # and the transfers still running
            echo_all(b"frozen")
            fake.close()
            time.sleep(0.3)
            echo_all(b"taken back")

            # Stalled after the old one stopped accepting: the 5 s step
            # timeout, then taken back. SYNs meanwhile wait in the backlog.
            fake = Fake(d["control"])
            fake.until_ready()
            time.sleep(6.0)
            before = traffic.connections
            time.sleep(0.5)
            self.assertGreater(traffic.connections, before, "not accepting again after the stalled takeover")
            fake.close()

            samples = scrape(d["admin"])
            self.assertEqual(value(samples, "shunt_takeovers_total", result="incompatible"), 1)
            self.assertEqual(value(samples, "shunt_takeovers_total", result="timeout"), 1)
            self.assertGreaterEqual(value(samples, "shunt_takeovers_total", result="failed"), 1)
            self.assertEqual(value(samples, "shunt_takeovers_total", result="ok"), 0)

            # A new process SIGKILLed at several points of its start. It is
            # stopped first (SIGSTOP) so its log tells where it was: one that
            # already completed is a real takeover and carries on instead.
            current, current_log = old.proc, old.log_path
            stages = []
            for n, delay in enumerate((0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05)):
                log = os.path.join(old.dir.name, f"killed-{n}.log")
                with open(log, "wb") as out:
                    proc = subprocess.Popen([SHUNT_BIN, "run", "-c", old.config_path, "--takeover"], stdout=out,
                                            stderr=subprocess.STDOUT)
                time.sleep(delay)
                proc.send_signal(signal.SIGSTOP)
                # A commit already sent reaches the serving process within
                # milliseconds; then this one is the server and must live.
                time.sleep(0.2)
                text = read_text(log)
                if f"(pid {proc.pid}) took over" in read_text(current_log):
                    proc.send_signal(signal.SIGCONT)
                    self.procs.append((proc, log))
                    stages.append("completed")
                    current, current_log = proc, log
                    continue
                stages.append("adopted pairs" if "kernel-spliced connection(s) received and adopted" in text else
                              "received listeners" if "listening socket(s)" in text else "connecting")
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                self.assertIsNone(current.poll(), old.output()[-2000:])
                before = traffic.connections
                time.sleep(0.3)
                self.assertGreater(traffic.connections, before, f"not accepting after a kill at {stages[-1]}")
                echo_all(b"after a kill at " + stages[-1].encode())
            print("killed at:", ", ".join(stages))
            self.assertIn("received listeners", stages, "no kill landed mid-takeover; adjust the delays")

            # And whoever serves now can still be taken over for real; every
            # process before it drains and exits 0.
            newest = self.take_over(old, 99)
            echo_all(b"moved")
            # The FIN rule runs in whichever process holds a pair now.
            for p in pairs:
                p.shutdown(socket.SHUT_WR)
                self.assertEqual(p.recv(1), b"", "no FIN passed on after the takeovers")
            traffic.finish()
            self.assertEqual(traffic.errors, [])
            self.assertEqual(traffic.transfers_ok, 2)
            for proc, log in [(old.proc, old.log_path)] + self.procs[:-1]:
                self.assertEqual(proc.wait(timeout=30), 0, read_text(log)[-2000:])
            newest.send_signal(signal.SIGTERM)
            self.assertEqual(newest.wait(timeout=20), 0)
            log = old.output()
            self.assertIn("incompatible takeover protocol", log)
            self.assertIn("this process keeps serving", log)


class SteeredPodsTest(unittest.TestCase):
    """Pod-to-pod connections steered by BPF (veth + tcx here) through each
    process in turn: the steering programs assign SYNs to the listening
    sockets both processes share, so a takeover is invisible to the pods."""

    PORT = 7411

    def run_case(self, on_proxy_down):
        lab = PodLab("k")
        self.addCleanup(lab.cleanup)
        net = "10.%d.%d." % (random.randint(201, 209), random.randint(0, 254))
        cip, sip = net + "2", net + "3"
        client, r = lab.add("c", cip + "/24")
        self.assertEqual(r.returncode, 0, r.stderr)
        server, r = lab.add("s", sip + "/24")
        self.assertEqual(r.returncode, 0, r.stderr)
        lab.serve(server, sip, self.PORT, "echo")
        tmp = tempfile.TemporaryDirectory(prefix="shunt-takeover-")
        self.addCleanup(tmp.cleanup)
        admin = free_port()
        text = f"""
proxy:
  listeners:
    - {{name: pods, listen: 127.0.0.1:{free_port()}, transparent: true}}
  datapath: sockmap
  upstream_source: client
  timeouts: {{connect: 2s, header: 5s, idle: 1h, drain: 30s}}
steering:
  intercept_ports: [{self.PORT}]
  on_proxy_down: {on_proxy_down}
admin: {{listen: 127.0.0.1:{admin}, control_socket: {tmp.name}/control.sock}}
log: {{level: info, access: off}}
pods:
  - {{name: {client}, ip: {cip}, labels: {{app: client}}, dev: sh-{client}}}
  - {{name: {server}, ip: {sip}, labels: {{app: server}}, dev: sh-{server}}}
policy:
  default: allow
  rules: []
"""
        procs = []
        # A failure part-way must not leave a takeover process running: it
        # would keep steering's host-wide rule, and other tests would find it.
        self.addCleanup(lambda: [kill(proc) for proc, _ in procs])
        with Shunt(text) as first:
            wait_ready(admin, first.proc)
            loop = subprocess.Popen(["ip", "netns", "exec", client, PY, "-c", POD_LOOP, sip, str(self.PORT), "60"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.addCleanup(kill, loop)
            time.sleep(1.0)
            for n in range(3):
                log = os.path.join(first.dir.name, f"takeover-{n}.log")
                with open(log, "wb") as out:
                    proc = subprocess.Popen([SHUNT_BIN, "run", "-c", first.config_path, "--takeover"], stdout=out,
                                            stderr=subprocess.STDOUT)
                procs.append((proc, log))
                wait_log(log, r"takeover: complete in \d+ ms", proc)
                before = value(scrape(admin), "shunt_connections_total", verdict="allow")
                time.sleep(1.0)
                # Through the newest process, not around it (fail_open would
                # let a pod reach the server directly).
                self.assertGreater(value(scrape(admin), "shunt_connections_total", verdict="allow"), before,
                                   f"takeover {n}: the pods' connections do not reach the new process")
            out, err = loop.communicate(timeout=30)
            result = json.loads(out)
            self.assertEqual(result["failed"], 0, result)
            self.assertGreater(result["ok"], 100, result)
            for proc, log in [(first.proc, first.log_path)] + procs[:-1]:
                self.assertEqual(proc.wait(timeout=40), 0, read_text(log)[-2000:])
            newest = procs[-1][0]
            newest.send_signal(signal.SIGTERM)
            self.assertEqual(newest.wait(timeout=20), 0, read_text(procs[-1][1])[-2000:])
            print(f"{on_proxy_down}: {result['ok']} pod-to-pod connections over 3 takeovers, none failed")

    def test_fail_open(self):
        self.run_case("fail_open")

    def test_fail_closed(self):
        self.run_case("fail_closed")


if __name__ == "__main__":
    run_tests()

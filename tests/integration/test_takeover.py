"""`shunt run --takeover` while traffic flows (issue 14): listening sockets,
the admin socket and the sockmap's maps move to the new process, and so do
open connections (kernel-spliced pairs, copy and splice pairs between reads,
HTTP/1.1 connections between requests); what cannot move drains in the old
process, which then exits 0.

For each data path, five takeovers in a row while these run through the
proxy: two throttled transfers of 100 MiB each way (hash-checked at both
ends), an HTTP/1.1 keep-alive session under a per-request rule sending a
request every 10 ms, a TLS session passed through on its SNI to an
`openssl s_server` upstream (hash-checked both ways), and a loop opening new
connections at a few hundred per second, and readiness probes on the admin
API (it moves too) every 10 ms. Every one of them must move bytes
across every takeover; nothing may be refused or reset, every byte must
arrive intact and every request be answered. Then the failure cases: a new
process SIGKILLed at several points of its takeover (before and after the
old one froze its pairs), and a scripted new process (this file speaks the
protocol) that offers an incompatible version, goes away after `ready`, or
stalls after the old one stopped accepting: the old process keeps serving
or takes its listeners and pairs back. Last, steered lab pods (veth + tcx):
a long pod-to-pod stream and a loop of new pod-to-pod connections through
five takeovers.
"""
import hashlib
import json
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest

from admin_helpers import get_json, http_get, scrape, value, wait_ready
from h2_frames import DATA, END_STREAM, GOAWAY, HEADERS, NO_ERROR, Client, goaways, window_update
from http_peers import Origin, read_response, request
from shunt_harness import (PY, SHUNT_BIN, PodLab, Shunt, ThreadedServer, echo_handler, free_port, is_listening,
                           pattern, pattern_digest, proxy_config, recv_exact, rule, run_tests, start_nghttpd,
                           wait_until)
from test_tls_policy import client_context, make_certificate

MAGIC = 0x4F544853
HEADER = struct.Struct("<IHHI")
HELLO, WELCOME, REFUSE, LISTENERS, LISTENERS_END, READY, RELEASED, COMMIT, KERNEL_MAPS, PAIRS, PAIRS_END = \
    range(1, 12)

TAKEOVERS = 5
TRANSFER_BYTES = 100 << 20
# Each way, per transfer: 100 MiB last ~12 s, longer than five takeovers
# (each waited for, then 0.8 s of traffic) take on a loaded machine.
TRANSFER_RATE = 8 << 20
SNI = "api.example.com"


def config(d, datapath):
    return proxy_config(
        [("bulk", d["bulk"], d["bulk_up"]), ("echo", d["echo"], d["echo_up"]), ("http", d["http"], d["origin"]),
         ("tls", d["tls"], d["tls_up"])],
        [rule("api", d["origin"], http=["{method: GET, path: /api/}"]),
         rule("tls-api", d["tls_up"], tls=f"{{sni: [{SNI}]}}")],
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

# In the client pod: one connection to the server pod's echo server that
# sends numbered 16 KiB chunks at RATE bytes/s until stdin closes (or
# `seconds` pass), then half-closes and reads the echo to EOF. Prints JSON:
# bytes sent and echoed, whether their hashes match, and the longest time no
# echoed byte arrived while it was sending (a stall a takeover caused).
POD_STREAM = r"""
import hashlib, json, select, socket, struct, sys, threading, time
host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
CHUNK = 16 << 10
out = {"sent": 0, "echoed": 0, "max_gap_s": 0.0}
try:
    s = socket.create_connection((host, port), timeout=30)
    while not s.recv(1) == b"\n":  # the server's view of the peer
        pass
    sent, got = hashlib.sha256(), hashlib.sha256()
    sending = threading.Event()
    sending.set()

    def read():
        last = time.monotonic()
        while True:
            data = s.recv(1 << 16)
            if not data:
                return
            now = time.monotonic()
            if sending.is_set():
                out["max_gap_s"] = max(out["max_gap_s"], now - last)
            last = now
            got.update(data)
            out["echoed"] += len(data)

    reader = threading.Thread(target=read)
    reader.start()
    start, end, i = time.monotonic(), time.monotonic() + seconds, 0
    while time.monotonic() < end and not select.select([sys.stdin], [], [], 0)[0]:
        chunk = struct.pack("!QQ", i, 0x5EED) + bytes(CHUNK - 16)
        s.sendall(chunk)
        sent.update(chunk)
        out["sent"] += CHUNK
        i += 1
        ahead = out["sent"] / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    sending.clear()
    s.shutdown(socket.SHUT_WR)
    reader.join(60)
    out["match"] = out["echoed"] == out["sent"] and got.hexdigest() == sent.hexdigest()
except Exception as e:
    out["error"] = repr(e)
print(json.dumps(out))
"""


def throttled_send(sock, total, salt, rate, progress=None):
    """pattern(total, salt) at about `rate` bytes per second; progress(n)
    after each chunk."""
    start = time.monotonic()
    sent = 0
    for chunk in pattern(total, salt):
        sock.sendall(chunk)
        sent += len(chunk)
        if progress:
            progress(len(chunk))
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)


def digest_exactly(sock, total, progress=None):
    h = hashlib.sha256()
    n = 0
    while n < total:
        data = sock.recv(min(1 << 20, total - n))
        if not data:
            break
        h.update(data)
        n += len(data)
        if progress:
            progress(len(data))
    return n, h.hexdigest()


def kill(proc):
    """Ends `proc` unless it has ended already (a cleanup after a failure)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe:
            pipe.close()


class Progress:
    """Byte and event counters by name, shared by the traffic threads and
    the test, which compares snapshots taken around each takeover."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}

    def add(self, name, n=1):
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def adder(self, name):
        return lambda n=1: self.add(name, n)

    def snapshot(self):
        with self.lock:
            return dict(self.counts)


class BulkPeer:
    """Upstream of the transfers: reads `size, salt`, then sends
    pattern(size, salt + 1) throttled while hashing what it receives
    (counted as "transfer SALT up, received")."""

    def __init__(self, rate, progress):
        self.rate, self.progress = rate, progress
        self.server = ThreadedServer(self.handle)

    def handle(self, conn):
        size, salt = struct.unpack("!QQ", recv_exact(conn, 16))
        sender = threading.Thread(target=throttled_send, args=(conn, size, salt + 1, self.rate))
        sender.start()
        got = digest_exactly(conn, size, self.progress.adder(f"transfer {salt} up, received"))
        sender.join()
        conn.shutdown(socket.SHUT_WR)
        return got == (size, pattern_digest(size, salt))


TLS_CHUNK = 16 << 10


def tls_chunk(index, salt):
    return struct.pack("!QQ", index, salt) + bytes(TLS_CHUNK - 16)


class TlsSession:
    """A TLS session through the proxy's `tls` listener, passed through on
    its SNI to `openssl s_server` (one connection, its stdout = what it
    received). Each way, a numbered 16 KiB chunk every 10 ms until stopped:
    the client sends its chunks, the test writes the others to s_server's
    stdin. Both ends' hashes are compared with what was sent."""

    def __init__(self, cert, key, directory):
        self.port = free_port()
        self.received_path = os.path.join(directory, "s_server.out")
        with open(self.received_path, "wb") as out:
            self.server = subprocess.Popen(
                ["openssl", "s_server", "-quiet", "-naccept", "1", "-accept", f"127.0.0.1:{self.port}", "-cert",
                 cert, "-key", key], stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not is_listening(self.port):
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"openssl s_server did not start: {self.server.stderr.read()!r}")
            time.sleep(0.05)

    def close(self):
        kill(self.server)

    def received_up(self):
        """Bytes s_server received so far (it writes them unbuffered)."""
        return os.path.getsize(self.received_path)

    def run(self, listen_port, stop, progress):
        """Until `stop`; raises on any failure."""
        raw = socket.create_connection(("127.0.0.1", listen_port), timeout=20)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # One thread drives the TLS object (OpenSSL's are not for
        # concurrent use): each tick sends a chunk and reads what is there.
        with client_context().wrap_socket(raw, server_hostname=SNI) as tls:
            sent_up, sent_down, got_down = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
            up = down = received = 0

            def read(block):
                nonlocal received
                while block or tls.pending() or select.select([tls], [], [], 0)[0]:
                    data = tls.recv(1 << 16)
                    if not data:
                        raise AssertionError(f"EOF from the TLS upstream after {received} bytes")
                    got_down.update(data)
                    received += len(data)
                    progress.add("tls down, received", len(data))
                    block = False

            while not stop.is_set():
                chunk = tls_chunk(up // TLS_CHUNK, 1)
                tls.sendall(chunk)
                sent_up.update(chunk)
                up += len(chunk)
                chunk = tls_chunk(down // TLS_CHUNK, 2)
                self.server.stdin.write(chunk)
                self.server.stdin.flush()
                sent_down.update(chunk)
                down += len(chunk)
                read(False)
                time.sleep(0.01)
            deadline = time.monotonic() + 30
            while received < down and time.monotonic() < deadline:
                read(True)
            if (received, got_down.hexdigest()) != (down, sent_down.hexdigest()):
                raise AssertionError(f"downstream: {received} of {down} bytes, or they differ")
            tls.unwrap()  # close_notify both ways: s_server then exits
        self.server.stdin.close()
        self.server.wait(timeout=20)
        with open(self.received_path, "rb") as f:
            got_up = hashlib.sha256(f.read()).hexdigest()
        if (self.received_up(), got_up) != (up, sent_up.hexdigest()):
            raise AssertionError(f"upstream: s_server received {self.received_up()} of {up} bytes, or they differ")


class Traffic:
    """Everything that must not notice a takeover, each in its threads;
    failures are collected, never raised in a thread. `progress` counts what
    each one moved, as seen by the receiving end."""

    def __init__(self, d, transfer_bytes, rate, progress, tls=None):
        self.d, self.tls = d, tls
        self.transfer_bytes, self.rate = transfer_bytes, rate
        self.progress = progress
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.errors = []
        self.requests = 0
        self.connections = 0
        self.transfers_ok = 0
        self.tls_ok = False
        # Daemon threads: a test that fails before finish() must not keep
        # the process alive (its cleanup calls finish() too).
        self.threads = [threading.Thread(target=self.transfer, args=(salt,), daemon=True) for salt in (11, 23)]
        self.threads += [threading.Thread(target=self.keep_alive, daemon=True),
                         threading.Thread(target=self.new_connections, daemon=True),
                         threading.Thread(target=self.probes, daemon=True)]
        if tls:
            self.threads.append(threading.Thread(target=self.tls_session, daemon=True))

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

    def flowing(self):
        """The counters that must grow across every takeover."""
        names = [f"transfer {salt} {way}" for salt in (11, 23) for way in ("up, received", "down, received")]
        names += ["keep-alive requests", "new connections", "readiness probes"]
        if self.tls:
            names += ["tls up, received", "tls down, received"]
        snapshot = self.progress.snapshot()
        if self.tls:
            snapshot["tls up, received"] = self.tls.received_up()
        return {name: snapshot.get(name, 0) for name in names}

    def transfer(self, salt):
        try:
            with socket.create_connection(("127.0.0.1", self.d["bulk"]), timeout=20) as s:
                s.sendall(struct.pack("!QQ", self.transfer_bytes, salt))
                result = {}
                down = self.progress.adder(f"transfer {salt} down, received")
                reader = threading.Thread(
                    target=lambda: result.update(got=digest_exactly(s, self.transfer_bytes, down)))
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
                    self.progress.add("keep-alive requests")
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
                self.progress.add("new connections")
            except Exception as e:
                self.error(f"new connection {n}", e)
            n += 1
            time.sleep(0.003)

    def probes(self):
        """/readyz every 10 ms, as a kubelet would (only much more often):
        the admin socket moves too, and whoever answers must say ready."""
        while not self.stop.is_set():
            try:
                status, _, body = http_get(self.d["admin"], "/readyz", timeout=10)
                if status != 200:
                    raise AssertionError(f"{status} {body!r}")
                self.progress.add("readiness probes")
            except Exception as e:
                self.error("readiness probe", e)
            time.sleep(0.01)

    def tls_session(self):
        try:
            self.tls.run(self.d["tls"], self.stop, self.progress)
            self.tls_ok = True
        except Exception as e:
            self.error("TLS session", e)


def read_text(path):
    with open(path, errors="replace") as f:
        return f.read()


def wait_log(path, pattern_text, proc, timeout=30, step=0.05):
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern_text)
    while time.monotonic() < deadline:
        text = read_text(path)
        if rx.search(text):
            return text
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before /{pattern_text}/:\n{text[-3000:]}")
        time.sleep(step)
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
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="shunt-takeover-tls-")
        cls.cert, cls.key = make_certificate(cls.tmp.name)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def setUp(self):
        self.progress = Progress()
        self.bulk_peer = BulkPeer(TRANSFER_RATE, self.progress)
        self.echo = ThreadedServer(echo_handler)
        self.origin = Origin()
        self.procs = []  # every shunt this test started, oldest first: (proc, log path)

    def tearDown(self):
        for proc, _ in self.procs:
            kill(proc)
        self.bulk_peer.server.close()
        self.echo.close()
        self.origin.close()

    def ports(self, shunt_dir, tls_up=None):
        """`tls_up`: the TLS session's upstream (a free port otherwise)."""
        return dict(bulk=free_port(), echo=free_port(), http=free_port(), tls=free_port(), admin=free_port(),
                    bulk_up=self.bulk_peer.server.port, echo_up=self.echo.port, origin=self.origin.port,
                    tls_up=tls_up or free_port(), control=os.path.join(shunt_dir, "control.sock"))

    def take_over(self, shunt, n, config_path=None):
        log = os.path.join(shunt.dir.name, f"takeover-{n}.log")
        with open(log, "wb") as out:
            proc = subprocess.Popen([SHUNT_BIN, "run", "-c", config_path or shunt.config_path, "--takeover"],
                                    stdout=out, stderr=subprocess.STDOUT)
        self.procs.append((proc, log))
        wait_log(log, r"takeover: complete in \d+ ms", proc)
        return proc

    def run_takeovers(self, datapath):
        tmp = tempfile.TemporaryDirectory(prefix="shunt-takeover-")
        self.addCleanup(tmp.cleanup)
        tls = TlsSession(self.cert, self.key, tmp.name)
        self.addCleanup(tls.close)
        d = self.ports(tmp.name, tls_up=tls.port)
        with Shunt(config(d, datapath), wait_port=d["echo"]) as first:
            wait_ready(d["admin"], first.proc)
            traffic = Traffic(d, TRANSFER_BYTES, TRANSFER_RATE, self.progress, tls)
            traffic.start()
            self.addCleanup(traffic.finish, 5)
            time.sleep(1.0)
            for n in range(TAKEOVERS):
                self.take_over(first, n)
                # Every stream that was open before this takeover moves on
                # after it, the transfers unfinished included (none is done
                # before the last takeover: they are throttled for that).
                done = traffic.flowing()
                time.sleep(0.8)
                after = traffic.flowing()
                self.assertEqual([name for name in done if after[name] <= done[name]], [],
                                 f"not moving after takeover {n}: {after}; errors: {traffic.errors}")
            # The admin socket moved with the listeners: the newest process answers.
            samples = scrape(d["admin"])
            self.assertEqual(value(samples, "shunt_takeovers_total", result="ok"), 1)
            self.assertGreater(value(samples, "shunt_takeover_listeners_transferred_total"), 4)
            self.assertEqual(value(samples, "shunt_takeovers_total", result="failed"), 0)
            # The TLS session was decided on its SNI, and by now it is in the
            # newest process (it moved with every takeover).
            tls_conns = [c for c in get_json(d["admin"], "/connections") if c["rule"] == "tls-api"]
            self.assertEqual(len(tls_conns), 1, tls_conns)
            counts = [re.search(r"complete in \d+ ms: (\d+) kernel-spliced connection\(s\), (\d+) copy/splice",
                                read_text(log)) for _, log in self.procs]
            counts = [(int(m.group(1)), int(m.group(2))) for m in counts]
            if datapath == "sockmap":
                # The two transfers and the TLS session run through every
                # takeover: each moved to the new process as a kernel-spliced
                # pair (the keep-alive session moves between requests).
                self.assertGreaterEqual(
                    value(samples, "shunt_takeover_connections_transferred_total", datapath="sockmap"), 3)
                self.assertEqual([n for n, _ in counts if n < 3], [], counts)
            else:
                # Copy and splice pairs move between reads (a pair caught
                # mid-write stays and drains in the old process).
                self.assertGreaterEqual(sum(moved for _, moved in counts), 3, counts)
            traffic.finish(timeout=120)
            self.assertEqual(traffic.errors, [])
            self.assertEqual(traffic.transfers_ok, 2)
            self.assertTrue(traffic.tls_ok)
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
            moved = self.progress.snapshot()
            print(f"{datapath}: {TAKEOVERS} takeovers (kernel-spliced, copy/splice moved: {counts}), "
                  f"{traffic.connections} new connections, {traffic.requests} keep-alive requests, "
                  f"2 transfers of {TRANSFER_BYTES >> 20} MiB each way, TLS session "
                  f"{moved['tls down, received'] >> 10} KiB down, {tls.received_up() >> 10} KiB up")

    def test_sockmap(self):
        self.run_takeovers("sockmap")

    def test_splice(self):
        self.run_takeovers("splice")

    def test_copy(self):
        self.run_takeovers("copy")

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
            # (Seen once under load: a hash mismatch, before these said more.)
            self.assertTrue(frames[-1].stream == 1 and frames[-1].flags & END_STREAM,
                            f"stream 1 did not end in 30 s: {len(body)} of {len(big)} bytes, last frame: type "
                            f"{frames[-1].type} on stream {frames[-1].stream}; old process:\n{old.output()[-1500:]}")
            self.assertEqual((len(body), hashlib.sha256(body).hexdigest()),
                             (len(big), hashlib.sha256(big).hexdigest()))
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
            traffic = Traffic(d, 4 << 20, 4 << 20, self.progress)
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
            # moving their bytes meanwhile. Gone before committing, with the
            # control socket path already renamed to its own socket (as a
            # new process does before its commit): the old process takes the
            # pairs back and acts on them again (FINs below), and the path.
            fake = Fake(d["control"])
            fake.until_ready(version=2)
            self.assertGreaterEqual(fake.receive_pairs(), 3)  # and the transfers still running
            echo_all(b"frozen")
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as taken:
                taken.bind(d["control"] + ".fake")
                taken.listen(1)
                os.rename(d["control"] + ".fake", d["control"])
            fake.close()
            time.sleep(0.3)
            echo_all(b"taken back")
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
                probe.connect(d["control"])  # the old process's again
            self.assertIn("it is this process's again", old.output())

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

            # A new process SIGKILLed at several points of its takeover. It
            # is stopped first (SIGSTOP) so the logs tell where it was: its
            # own says whether it had the listeners yet (and adopted pairs),
            # the serving process's whether it had frozen its pairs and sent
            # them (then it must take them back). One that already completed
            # is a real takeover and carries on instead. Stopped a fixed time
            # after its start, or as soon as a log line says a point was
            # reached: its own "received" (it sends `ready` next) or the
            # serving one's "frozen" (the pairs are on their way to it).
            current, current_log = old.proc, old.log_path
            triggers = [0.0, 0.005, 0.01, "received", 0.02, 0.03, "frozen", 0.05, "received", "frozen"]
            stages = []
            hit = []  # "trigger -> stage", for the output

            def after_freeze():
                return bool({"pairs frozen", "adopted pairs"} & set(stages))

            # The window after the freeze is a few ms wide: about half the
            # "frozen" stops land in it, the others after the commit. More
            # tries at the point still missing, at most 20 in all.
            while triggers or (len(stages) < 20 and not ("received listeners" in stages and after_freeze())):
                trigger = triggers.pop(0) if triggers else "received" if after_freeze() else "frozen"
                hit.append(str(trigger))
                log = os.path.join(old.dir.name, f"killed-{len(stages)}.log")
                serving_before = len(read_text(current_log))
                with open(log, "wb") as out:
                    proc = subprocess.Popen([SHUNT_BIN, "run", "-c", old.config_path, "--takeover"], stdout=out,
                                            stderr=subprocess.STDOUT)
                if trigger == "received":
                    wait_log(log, r"listening socket\(s\).* received", proc, step=0.0005)
                elif trigger == "frozen":
                    # Both logs in the message: seen once in CI (2026-12-01),
                    # right after a stopped process's takeover had completed.
                    self.assertIsNotNone(
                        wait_until(lambda: "frozen in" in read_text(current_log)[serving_before:], 30, 0.0005),
                        "the serving process never froze its pairs; serving log:\n"
                        + read_text(current_log)[-3000:] + "\nnew process's log:\n" + read_text(log)[-2000:])
                else:
                    time.sleep(trigger)
                proc.send_signal(signal.SIGSTOP)
                # A commit already sent reaches the serving process within
                # milliseconds; then this one is the server and must live.
                time.sleep(0.2)
                text = read_text(log)
                serving = read_text(current_log)[serving_before:]
                if f"(pid {proc.pid}) took over" in serving:
                    proc.send_signal(signal.SIGCONT)
                    self.procs.append((proc, log))
                    stages.append("completed")
                    current, current_log = proc, log
                    continue
                froze = "kernel-spliced connection(s) frozen" in serving
                stages.append("adopted pairs" if "received and adopted" in text else
                              "pairs frozen" if froze else
                              "received listeners" if "listening socket(s)" in text else "connecting")
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                self.assertIsNone(current.poll(), read_text(current_log)[-2000:])
                before = traffic.connections
                time.sleep(0.3)
                self.assertGreater(traffic.connections, before, f"not accepting after a kill at {stages[-1]}")
                # Still the one a next takeover reaches (the killed process
                # may have renamed its control socket over the path already).
                with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
                    probe.connect(d["control"])
                if froze:
                    self.assertIn("taking the frozen connections back", read_text(current_log)[serving_before:])
                echo_all(b"after a kill at " + stages[-1].encode())
            print("killed at:", ", ".join(f"{t} -> {s}" for t, s in zip(hit, stages)))
            self.assertIn("received listeners", stages)
            self.assertTrue(after_freeze(), f"no kill after the serving process froze its pairs: {stages}")

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
    sockets both processes share, so a takeover is invisible to the pods.
    A pod-to-pod stream (echoed, hashed) moves with every takeover."""

    PORT = 7411
    STREAM_RATE = 2 << 20

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
            # Both run until the test closes their stdin (its takeovers are done).
            peers = {name: subprocess.Popen(["ip", "netns", "exec", client, PY, "-c", script, sip, str(self.PORT),
                                             *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)
                     for name, script, args in (("loop", POD_LOOP, ["90"]),
                                                ("stream", POD_STREAM, [str(self.STREAM_RATE), "90"]))}
            for peer in peers.values():
                self.addCleanup(kill, peer)
            time.sleep(1.0)
            for n in range(TAKEOVERS):
                log = os.path.join(first.dir.name, f"takeover-{n}.log")
                with open(log, "wb") as out:
                    proc = subprocess.Popen([SHUNT_BIN, "run", "-c", first.config_path, "--takeover"], stdout=out,
                                            stderr=subprocess.STDOUT)
                procs.append((proc, log))
                # The stream moved as a kernel-spliced pair.
                self.assertRegex(wait_log(log, r"takeover: complete in \d+ ms", proc),
                                 r"complete in \d+ ms: [1-9]\d* kernel-spliced", f"takeover {n}")
                before = value(scrape(admin), "shunt_connections_total", verdict="allow")
                time.sleep(1.0)
                # Through the newest process, not around it (fail_open would
                # let a pod reach the server directly).
                self.assertGreater(value(scrape(admin), "shunt_connections_total", verdict="allow"), before,
                                   f"takeover {n}: the pods' connections do not reach the new process")
            results = {}
            for name, peer in peers.items():
                out, err = peer.communicate(timeout=90)
                self.assertEqual(peer.returncode, 0, err)
                results[name] = json.loads(out)
            loop, stream = results["loop"], results["stream"]
            self.assertEqual(loop["failed"], 0, loop)
            self.assertGreater(loop["ok"], 100, loop)
            self.assertNotIn("error", stream)
            self.assertTrue(stream["match"], stream)
            self.assertGreater(stream["sent"], TAKEOVERS * self.STREAM_RATE, stream)
            # Kernel-spliced bytes keep moving while the pair changes hands:
            # a gap this long is a stall, not scheduling noise.
            self.assertLess(stream["max_gap_s"], 1.0, stream)
            for proc, log in [(first.proc, first.log_path)] + procs[:-1]:
                self.assertEqual(proc.wait(timeout=40), 0, read_text(log)[-2000:])
            newest = procs[-1][0]
            newest.send_signal(signal.SIGTERM)
            self.assertEqual(newest.wait(timeout=20), 0, read_text(procs[-1][1])[-2000:])
            print(f"{on_proxy_down}: {loop['ok']} pod-to-pod connections over {TAKEOVERS} takeovers, none failed; "
                  f"a stream of {stream['sent'] >> 20} MiB echoed intact, longest gap {stream['max_gap_s']:.3f} s")

    def test_fail_open(self):
        self.run_case("fail_open")

    def test_fail_closed(self):
        self.run_case("fail_closed")


if __name__ == "__main__":
    run_tests()

"""Shared pieces of shunt's integration tests (stdlib only, Debian python3).

Every test runs the real shunt binary (SHUNT_BIN) against real peers over
loopback or in network namespaces it creates and removes itself. Tests need
root (BPF, namespaces) and fail rather than skip without it.
"""
import hashlib
import json
import os
import re
import queue
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

SHUNT_BIN = os.environ.get("SHUNT_BIN", os.path.join(os.path.dirname(__file__), "../../build/proxy/shunt"))
SOURCE_DIR = os.environ.get("SHUNT_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))

CHUNK = 64 * 1024
_BASE = os.urandom(CHUNK)

PY = "/usr/bin/python3"
POD_PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pod_peer.py")
# Peers run inside a pod (`ip netns exec POD ...`; pod_peer.py says what
# each prints): a server, `*POD_SERVE HOST PORT [echo|http|bulk]`, and the
# hashing echo client, `*POD_ECHO HOST PORT SIZE [TIMEOUT]`.
POD_SERVE = [PY, POD_PEER, "serve"]
POD_ECHO = [PY, POD_PEER, "client", "echo"]


def require_root():
    if os.geteuid() != 0:
        raise SystemExit("this test needs root (BPF, network namespaces): run it as root")


_ports_given = set()


def free_port(host="127.0.0.1"):
    """A port nothing listens on, and one this process has not been given
    before: the kernel may hand the same free port to two binds in a row,
    and a config with two listeners on one port does not load."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def pattern(total, salt=0):
    """Yields `total` bytes in 64 KiB chunks; each chunk starts with its index
    and a salt so that loss, duplication and reordering all change the hash."""
    index = 0
    sent = 0
    while sent < total:
        n = min(CHUNK, total - sent)
        chunk = struct.pack("!QQ", index, salt) + _BASE[16:]
        yield chunk[:n]
        sent += n
        index += 1


def pattern_digest(total, salt=0):
    h = hashlib.sha256()
    for chunk in pattern(total, salt):
        h.update(chunk)
    return h.hexdigest()


def send_pattern(sock, total, salt=0):
    for chunk in pattern(total, salt):
        sock.sendall(chunk)


def digest_to_eof(read):
    """Calls read(1 MiB) until it returns nothing (a socket's recv, a
    buffered file's read1); returns (byte count, sha256 hex)."""
    h = hashlib.sha256()
    n = 0
    while True:
        data = read(1 << 20)
        if not data:
            return n, h.hexdigest()
        h.update(data)
        n += len(data)


def recv_all_digest(sock):
    """Reads the socket to EOF; returns (byte count, sha256 hex)."""
    return digest_to_eof(sock.recv)


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


def is_listening(port, netns=None, family=None):
    """True when some socket listens on TCP `port` (checked with ss, so no
    probe connection reaches the upstream behind a proxy); `family` "-4" or
    "-6" counts only that family's sockets."""
    cmd = ["ss", "-Hltn", *([family] if family else []), f"sport = :{port}"]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return bool(subprocess.run(cmd, capture_output=True, text=True).stdout.strip())


def wait_for_port(host, port, timeout=10.0, proc=None, netns=None, family=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"shunt exited with {proc.returncode} before listening")
        if is_listening(port, netns, family):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} not listening after {timeout}s")


def with_control_socket(config_text, path):
    """The config with `admin.control_socket` at `path` unless it names one:
    tests run side by side (and beside other checkouts' tests), and the
    default /run/shunt/control.sock would make every second `shunt run`
    refuse to start (another shunt is running)."""
    if "control_socket" in config_text:
        return config_text
    flow = re.compile(r"^(admin:\s*\{[^}\n]*)\}", re.M)
    if flow.search(config_text):
        return flow.sub(lambda m: f"{m.group(1)}, control_socket: {path}}}", config_text, count=1)
    block = re.compile(r"^admin:\s*$", re.M)
    if block.search(config_text):
        return block.sub(f"admin:\n  control_socket: {path}", config_text, count=1)
    return config_text.rstrip("\n") + f"\nadmin: {{control_socket: {path}}}\n"


class Shunt:
    """A running `shunt run -c CONFIG`, stopped with SIGTERM on exit."""

    def __init__(self, config_text, wait_port=None, wait_host="127.0.0.1", args=(), netns=None, nofile=None):
        """`nofile`: start shunt with this RLIMIT_NOFILE, a number (soft and
        hard) or a (soft, hard) pair."""
        self.dir = tempfile.TemporaryDirectory(prefix="shunt-test-")
        self.config_path = os.path.join(self.dir.name, "shunt.yaml")
        self.control_socket = os.path.join(self.dir.name, "control.sock")
        with open(self.config_path, "w") as f:
            f.write(with_control_socket(config_text, self.control_socket))
        self.log_path = os.path.join(self.dir.name, "shunt.log")
        self.log = open(self.log_path, "wb")
        cmd = [SHUNT_BIN, "run", "-c", self.config_path, *args]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        pair = (nofile, nofile) if isinstance(nofile, int) else nofile
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, pair)) if pair else None
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=limit)
        if wait_port:
            try:
                wait_for_port(wait_host, wait_port, proc=self.proc, netns=netns)
            except Exception:
                self.stop()
                sys.stderr.write(self.output())
                raise

    def write_config(self, text):
        """Replaces the config the way an editor does: write aside, rename."""
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(with_control_socket(text, self.control_socket))
        os.rename(tmp, self.config_path)

    def output(self):
        self.log.flush()
        with open(self.log_path, "r", errors="replace") as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.stop()
        if exc_type is not None:
            # The proxy's side of a failure, for whoever reads the test log.
            sys.stderr.write("---- shunt output (last 60 lines) ----\n")
            sys.stderr.write("\n".join(self.output().splitlines()[-60:]) + "\n")
        self.log.close()
        self.dir.cleanup()


def start_class_shunt(cls, config_text, wait_port):
    """Starts shunt for a whole TestCase class (from setUpClass); a class
    cleanup stops it before any cleanup registered earlier (peers) runs."""
    shunt = Shunt(config_text, wait_port=wait_port)
    shunt.__enter__()
    cls.addClassCleanup(shunt.__exit__, None, None, None)
    return shunt


def echo_handler(conn):
    """ThreadedServer handler: echoes until EOF; the result is the byte count."""
    n = 0
    while True:
        data = conn.recv(65536)
        if not data:
            return n
        conn.sendall(data)
        n += len(data)


class ThreadedServer:
    """A TCP server on loopback running `handler(conn)` per connection in a
    thread; results handlers return are collected in `results`.
    `timeout`: set on every accepted socket before the handler runs, which
    makes its file O_NONBLOCK underneath (as an event-loop server's is; the
    endpoint short-circuit captures only such sockets); None leaves it
    blocking."""

    def __init__(self, handler, host="127.0.0.1", backlog=1024, timeout=None):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.timeout = timeout
        self.results = []
        self.errors = []
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.timeout is not None:
                conn.settimeout(self.timeout)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            with conn:
                result = self.handler(conn)
            with self.lock:
                self.results.append(result)
        except Exception as e:  # recorded, asserted by the test
            with self.lock:
                self.errors.append(e)

    def wait_results(self, n, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if len(self.results) + len(self.errors) >= n:
                    return list(self.results)
            time.sleep(0.02)
        raise TimeoutError(f"server saw {len(self.results)} results, {len(self.errors)} errors, wanted {n}")

    def close(self):
        self.stopping = True
        # shutdown() wakes the accept thread; close() alone would leave it
        # blocked and serving a later test that reuses the port.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(timeout=2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def rule(name, ports, action="allow", **matches):
    """One policy rule from loopback to loopback `ports` (a port or a list),
    as YAML for proxy_config's `rules`. `matches`: http/grpc as a list of
    YAML flow entries (one per line), or any key as YAML flow text, e.g.
    tls="{sni: [api.example.com]}"."""
    ports = ports if isinstance(ports, (list, tuple)) else [ports]
    lines = [f"    - name: {name}",
             "      from: {cidr: 127.0.0.0/8}",
             f"      to: {{cidr: 127.0.0.1/32, ports: [{', '.join(str(p) for p in ports)}]}}",
             f"      action: {action}"]
    for key, value in matches.items():
        if isinstance(value, (list, tuple)):
            lines.append(f"      {key}:")
            lines += [f"        - {entry}" for entry in value]
        else:
            lines.append(f"      {key}: {value}")
    return "\n".join(lines)


TIMEOUTS = {"connect": "2s", "header": "2s", "idle": "1h", "drain": "2s"}


def proxy_config(listeners, rules=(), *, datapath="copy", default="deny", admin=None, timeouts=None, limits="",
                 log=None, access="stdout", proxy_extra="", admin_extra="", extra=""):
    """A config of static listeners on loopback. `listeners`: (name,
    listen_port, forward_port) triples (either port may be "ADDR:PORT" for an
    address other than 127.0.0.1); `rules`: rule() texts (or raw YAML
    list items); `timeouts`: what differs from TIMEOUTS; `limits`: the flow
    map's inside, e.g. "max_connections: 1000"; `admin`: the admin port (a
    free one by default); `log`: the level (SHUNT_TEST_LOG_LEVEL or info);
    `proxy_extra`: more keys for the proxy section; `extra`: top-level YAML
    appended."""
    def where(port):
        return port if isinstance(port, str) else f"127.0.0.1:{port}"

    lines = ["", "proxy:", "  listeners:"]
    lines += [f"    - {{name: {n}, listen: {where(listen)}, forward: {where(forward)}}}"
              for n, listen, forward in listeners]
    lines.append(f"  datapath: {datapath}")
    t = {**TIMEOUTS, **(timeouts or {})}
    lines.append("  timeouts: {" + ", ".join(f"{k}: {v}" for k, v in t.items()) + "}")
    if limits:
        lines.append(f"  limits: {{{limits}}}")
    if proxy_extra:
        lines.append(f"  {proxy_extra}")
    lines.append(f"admin: {{listen: 127.0.0.1:{admin or free_port()}{admin_extra}}}")
    lines.append(f"log: {{level: {log or os.environ.get('SHUNT_TEST_LOG_LEVEL', 'info')}, access: {access}}}")
    lines += ["policy:", f"  default: {default}"]
    lines += ["  rules:", *rules] if rules else ["  rules: []"]
    return "\n".join(lines) + "\n" + extra


def static_config(listen_port, forward_port, datapath, extra="", proxy_extra=""):
    """One listener `test` forwarding to `forward_port`, everything allowed.
    `proxy_extra`: more keys for the proxy section, e.g. "endpoint_shortcut: true"."""
    return proxy_config([("test", listen_port, forward_port)], datapath=datapath, default="allow",
                        timeouts={"drain": "5s"}, proxy_extra=proxy_extra, extra=extra)


def start_nghttpd(owner, files):
    """nghttpd (cleartext HTTP/2, prior knowledge) serving `files` (name ->
    bytes) from a directory of its own, for as long as `owner` (a TestCase
    class, or a test) runs; returns its port once it listens."""
    docroot = closing(owner, tempfile.TemporaryDirectory(), close="cleanup")
    for name, body in files.items():
        with open(os.path.join(docroot.name, name), "wb") as f:
            f.write(body)
    # nghttpd binds [::] and 0.0.0.0 one after the other: waiting for any
    # listener let a test connect to 127.0.0.1 in between and be refused
    # (seen: test_takeover's HTTP/2 case got a 502 body, 12 bytes). Waiting
    # for an IPv4 listener in `ss -4` instead timed out on a clean-clone CI
    # machine (a dual-stack [::] socket serving IPv4 is one way `ss -4` lists
    # nothing; which one it was there is not known). So the wait is a
    # connection to 127.0.0.1, the address the tests use: nghttpd is the
    # origin itself, so the probe reaches no proxy, and it closes a
    # connection that sends no preface.
    #
    # Another hazard, seen on a clean-clone CI run (2026-12-01): nghttpd
    # alive, 127.0.0.1 refused for 10 s. free_port()'s port is free when it
    # is picked, but it is in the ephemeral range: a connection made meanwhile
    # (test_takeover makes thousands) can take it as its local port, and then
    # nghttpd's 0.0.0.0 bind fails while its [::] one (IPv6 only) works, and
    # nghttpd carries on. So an nghttpd that does not accept on 127.0.0.1
    # within 3 s is replaced by one on another port, three times at most.
    for attempt in range(3):
        port = free_port()
        proc = subprocess.Popen(["nghttpd", "--no-tls", "-d", docroot.name, str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        _cleanup(owner)(proc.wait)
        _cleanup(owner)(proc.kill)
        deadline = time.time() + 3
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nghttpd exited with {proc.returncode} before listening")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                if time.time() > deadline:
                    break
                time.sleep(0.05)
        proc.kill()
    raise TimeoutError(f"nghttpd: not accepting on 127.0.0.1 on any of three ports (last {port}, 3 s each)")


def per_datapath(base, suffix, datapaths=("sockmap", "splice", "copy"), others_run=None):
    """One unittest.TestCase class per data path from a mixin whose tests
    read `self.datapath`: SockmapX, SpliceX, CopyX for suffix X. With
    `others_run` (test names), the data paths after the first run only
    those: for tests that do not depend on the data path but end in it."""
    classes = []
    for i, datapath in enumerate(datapaths):
        attrs = {"datapath": datapath, "__module__": base.__module__}
        if i > 0 and others_run is not None:
            attrs.update({name: None for name in dir(base) if name.startswith("test_") and name not in others_run})
        classes.append(type(f"{datapath.capitalize()}{suffix}", (base, unittest.TestCase), attrs))
    return classes


def _cleanup(owner):
    """addClassCleanup for a TestCase class (setUpClass), addCleanup for a test."""
    return owner.addClassCleanup if isinstance(owner, type) else owner.addCleanup


def closing(owner, resource, close="close"):
    """`resource`, closed (its method `close`) when `owner` (a TestCase
    class, or a test) is done: `cls.x = closing(cls, X())` for the shape
    `cls.x = X(); cls.addClassCleanup(cls.x.close)`."""
    _cleanup(owner)(getattr(resource, close))
    return resource


# Steering's host-wide state (bpf/steering.h): the fwmark rule, its table,
# and the pins fail_closed leaves behind.
STEER_MARK = "0x200000"
STEER_TABLE = "21320"
STEER_PIN_ROOT = "/sys/fs/bpf/shunt/steering"


def wait_until(predicate, timeout=10, step=0.02):
    """Polls until predicate() is true; returns the seconds it took, or None
    when `timeout` passed first."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    return None


def run(*args, timeout=60):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def steering_programs(pid=None):
    """IDs of loaded steering programs; with `pid`, those that process holds
    (bpftool lists holders as "pids"), so other shunt processes running at
    the same time don't count."""
    out = run("bpftool", "-j", "prog", "show").stdout
    ids = []
    for p in json.loads(out or "[]"):
        if not p.get("name", "").startswith("shunt_steer"):
            continue
        if pid is not None and pid not in [h.get("pid") for h in p.get("pids", [])]:
            continue
        ids.append(p.get("id"))
    return sorted(ids)


class PodLab:
    """Lab pods made with `shunt pod add` (names start with `prefix` and a
    random tag, so concurrent runs don't clash) and peers inside them.
    cleanup() removes all of it, also after a failure."""

    def __init__(self, prefix="q"):
        self.tag = "%03d" % random.randint(0, 999)
        self.prefix = prefix
        self.names = []
        self.procs = []
        self.lines = {}

    def name(self, role):
        return "%s%s%s" % (self.prefix, self.tag, role)

    def add(self, role, *cidrs, extra=()):
        """`shunt pod add` with one --ip per CIDR; returns (name, CompletedProcess)."""
        name = self.name(role)
        self.names.append(name)
        args = [a for c in cidrs for a in ("--ip", c)]
        return name, run(SHUNT_BIN, "pod", "add", name, *args, *extra)

    def exec(self, name, *cmd, timeout=60):
        return run("ip", "netns", "exec", name, *cmd, timeout=timeout)

    def serve(self, name, host, port, mode):
        """A server in pod `name`, up and bound (pod_peer.py: echo, http or bulk)."""
        p = subprocess.Popen(["ip", "netns", "exec", name, *POD_SERVE, host, str(port), mode],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        lines = queue.Queue()
        self.lines[p] = lines

        def pump():
            for line in p.stdout:
                lines.put(line.strip())

        threading.Thread(target=pump, daemon=True).start()
        try:
            first = lines.get(timeout=10)
        except queue.Empty:
            first = ""
        if first != "listening":
            raise AssertionError("server %s:%s in %s did not start: %r" % (host, port, name, first))
        return p

    def server_line(self, proc, timeout=120):
        """The next line a server printed (bulk servers print one per connection)."""
        return self.lines[proc].get(timeout=timeout)

    def client(self, name, mode, host, port, *args, timeout=180):
        """Runs a client in pod `name` (pod_peer.py): "echo" (SIZE TIMEOUT) or
        "bulk" (UP DOWN TIMEOUT); returns its result line, split."""
        r = run("ip", "netns", "exec", name, PY, POD_PEER, "client", mode, host, port, *args, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError("client in %s failed: %s" % (name, r.stderr))
        return r.stdout.split()

    def kill_peers(self):
        for p in self.procs:
            p.kill()
            p.wait()
            p.stderr.close()
        self.procs = []

    def delete(self, name):
        r = run(SHUNT_BIN, "pod", "del", name)
        if name in self.names:
            self.names.remove(name)
        return r

    def cleanup(self):
        self.kill_peers()
        for name in list(self.names):
            self.delete(name)
            # Safety net if `pod del` itself is what broke.
            run("ip", "link", "del", "sh-" + name)
            run("ip", "netns", "del", name)


def run_tests():
    require_root()
    result = unittest.main(exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() else 1)

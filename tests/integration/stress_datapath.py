"""Data-path stress: runs the byte-checking cases back to back, many times,
over fresh and long-lived shunt processes, to make rare handover races show
themselves (issue 15: a burst's first connection lost its early bytes once
in about five runs, only after a predecessor had reset connections and been
SIGKILLed).

One iteration is a sequence of short-lived shunt instances, each running one
case (0 B / 1 B / 64 MiB both ways, half-close, server-first, a reset from
either side followed by SIGKILL of the instance, then a burst), followed by
the same cases against one long-lived instance. The burst is the sharpest
case: N clients connect at once and each sends its bytes right after
connect(), before any handover can have happened; the upstream reads exactly
that many bytes and answers with their SHA-256 and a derived tail, so each
direction is checked by hash.

Usage (root): stress_datapath.py [--datapath sockmap] [--iterations 200]
                                  [--burst 300] [--quick]
Prints one line per iteration and a summary; exits 1 on any lost or altered
byte, naming the case, the client and shunt's access-log line for it.
"""
import argparse
import hashlib
import os
import signal
import socket
import struct
import sys
import threading
import time

from shunt_harness import (Shunt, ThreadedServer, free_port, pattern_digest, recv_all_digest, recv_exact,
                           require_root, send_pattern)

BURST_BYTES = 4096
HEADER = struct.Struct("!QQQ")


def tail_for(data):
    """The upstream's answer after the digest: 1 KiB derived from what it got,
    so the downstream direction is checked by content too."""
    seed = hashlib.sha256(b"down" + data).digest()
    return seed * 32


class Failure(Exception):
    pass


# ---- upstream handlers ------------------------------------------------------


def burst_handler(conn):
    data = recv_exact(conn, BURST_BYTES)
    conn.sendall(hashlib.sha256(data).digest() + tail_for(data))
    conn.recv(1)  # until the client closes
    return "ok"


def bidirectional_handler(conn):
    up, down, salt = HEADER.unpack(recv_exact(conn, HEADER.size))

    def send():
        try:
            send_pattern(conn, down, salt + 1)
            conn.shutdown(socket.SHUT_WR)
        except OSError:  # the held pairs of the SIGKILL case end this way
            pass

    sender = threading.Thread(target=send)
    sender.start()
    got = recv_all_digest(conn)
    sender.join()
    return got


def reset_handler(conn):
    """Reads the client's first bytes and resets if asked to (first byte 'R')."""
    first = recv_exact(conn, 1)
    if first == b"R":
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return "reset"
    while conn.recv(65536):
        pass
    return "eof"


def server_first_handler(conn):
    greeting = hashlib.sha256(b"greeting").digest() * 2048  # 64 KiB
    conn.sendall(greeting)
    line = recv_exact(conn, 6)
    conn.sendall(b"bye " + line)
    conn.shutdown(socket.SHUT_WR)
    return line


# ---- cases --------------------------------------------------------------------


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def case_transfer(port, size, salt):
    with connect(port) as c:
        c.sendall(HEADER.pack(size, size, salt))
        got = {}
        t = threading.Thread(target=lambda: got.setdefault("v", recv_all_digest(c)))
        t.start()
        send_pattern(c, size, salt)
        c.shutdown(socket.SHUT_WR)
        t.join(120)
        if got.get("v") != (size, pattern_digest(size, salt + 1)):
            raise Failure(f"transfer {size} B: client got {got.get('v')}")


def case_half_close(port):
    with connect(port) as c:
        c.sendall(HEADER.pack(1 << 20, 0, 3))
        send_pattern(c, 1 << 20, 3)
        c.shutdown(socket.SHUT_WR)
        if c.recv(10) != b"":
            raise Failure("half-close: unexpected bytes after FIN")


def case_server_first(port):
    with connect(port) as c:
        greeting = recv_exact(c, 64 * 1024)
        if greeting != hashlib.sha256(b"greeting").digest() * 2048:
            raise Failure("server-first: greeting altered")
        c.sendall(b"hello\n")
        if recv_exact(c, 10) != b"bye hello\n":
            raise Failure("server-first: reply altered")


def case_resets(port):
    """A few connections reset by the client and a few by the upstream."""
    for i in range(4):
        with connect(port) as c:
            if i % 2:
                # The upstream resets as soon as it has this byte: the reset
                # must reach the client promptly (not sit until an idle timeout).
                c.settimeout(5)
                c.sendall(b"R")
                try:
                    got = c.recv(10)
                    if got:
                        raise Failure(f"upstream reset: client got {got!r} instead of a reset")
                except socket.timeout:
                    raise Failure("upstream reset did not reach the client within 5 s") from None
                except ConnectionResetError:
                    pass
            else:
                c.sendall(b"x" * 65536)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def open_pairs(ports, n):
    """n connections left open: half idle after one exchange, half streaming."""
    held = []
    for i in range(n):
        c = connect(ports["reset"] if i % 2 else ports["bidir"])
        if i % 2:
            c.sendall(b"x" * 1000)
        else:
            c.sendall(HEADER.pack(1 << 30, 1 << 30, 1))
            c.sendall(b"y" * (256 << 10))
        held.append(c)
    time.sleep(0.05)
    return held


def case_burst(port, clients, half_close=False):
    """`clients` connections at once, each sending BURST_BYTES right after
    connect() (and, with half_close, its FIN right behind them, often in the
    same segment); returns the list of failures (index, source port, what)."""
    failures = []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def one(index):
        data = os.urandom(BURST_BYTES)
        sport = None
        try:
            start.wait(30)
            with connect(port) as c:
                sport = c.getsockname()[1]
                c.sendall(data)
                if half_close:
                    c.shutdown(socket.SHUT_WR)
                reply = recv_exact(c, 32 + 1024)
                if reply[:32] != hashlib.sha256(data).digest():
                    raise Failure("upstream received different bytes")
                if reply[32:] != tail_for(data):
                    raise Failure("client received different bytes")
        except Exception as e:  # recorded with the access-log line below
            with lock:
                failures.append((index, sport, f"{type(e).__name__}: {e}"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return failures


# ---- driver --------------------------------------------------------------------


class Servers:
    def __init__(self):
        self.burst = ThreadedServer(burst_handler)
        self.bidir = ThreadedServer(bidirectional_handler)
        self.reset = ThreadedServer(reset_handler)
        self.first = ThreadedServer(server_first_handler)

    def close(self):
        for s in (self.burst, self.bidir, self.reset, self.first):
            s.close()


def multi_config(ports, servers, datapath):
    """One shunt with a static listener per case server."""
    listeners = "".join(f"""
    - name: {name}
      listen: 127.0.0.1:{ports[name]}
      forward: 127.0.0.1:{getattr(servers, name).port}""" for name in ports)
    return f"""
proxy:
  listeners:{listeners}
  datapath: {datapath}
  timeouts: {{connect: 2s, header: 2s, idle: 1h, drain: 2s}}
admin: {{listen: 127.0.0.1:{free_port()}}}
log: {{level: {os.environ.get("SHUNT_TEST_LOG_LEVEL", "info")}, access: stdout}}
policy:
  default: allow
  rules: []
"""


class Run:
    def __init__(self, args):
        self.args = args
        self.servers = Servers()
        self.connections = 0
        self.failures = []
        self.fixed_ports = self.new_ports()

    def new_ports(self):
        ports = {}
        while len(set(ports.values())) < 4:  # free_port() may hand out one port twice
            ports = {name: free_port() for name in ("burst", "bidir", "reset", "first")}
        return ports

    def start(self, ports):
        """A shunt on `ports`; if one of them was taken meanwhile (the
        machine is shared), on fresh ones, updated in place."""
        for attempt in range(3):
            try:
                return Shunt(multi_config(ports, self.servers, self.args.datapath), wait_port=ports["first"])
            except RuntimeError:
                if attempt == 2:
                    raise
                ports.update(self.new_ports())

    def fail(self, where, detail, shunt):
        self.failures.append((where, detail))
        print(f"FAIL {where}: {detail}", flush=True)
        if shunt is not None:
            for line in access_lines(shunt, detail):
                print(f"     access log: {line}", flush=True)

    def run_case(self, where, shunt, fn):
        try:
            fn()
        except Exception as e:
            self.fail(where, f"{type(e).__name__}: {e}", shunt)

    def burst(self, where, shunt, ports):
        failures = case_burst(ports["burst"], self.args.burst)
        failures += case_burst(ports["burst"], self.args.burst, half_close=True)
        self.connections += 2 * self.args.burst
        for index, sport, what in sorted(failures):
            self.fail(where, f"burst client {index} (source port {sport}): {what}", shunt)
            for line in access_lines(shunt, f":{sport}"):
                print(f"     access log: {line}", flush=True)

    def iteration(self, n):
        a = self.args
        big = (1 << 20) if a.quick else (64 << 20)
        cases = [
            ("0 B", lambda p: case_transfer(p["bidir"], 0, n)),
            ("1 B", lambda p: case_transfer(p["bidir"], 1, n)),
            (f"{big >> 20} MiB", lambda p: case_transfer(p["bidir"], big, n)),
            ("half-close", lambda p: case_half_close(p["bidir"])),
            ("server-first", lambda p: case_server_first(p["first"])),
        ]
        # Fresh processes: one short-lived instance per case, the reset case
        # ends with SIGKILL (a predecessor that leaves sockmap sockets behind),
        # and the burst runs on the instance right after it.
        for name, fn in cases:
            ports = self.new_ports() if not a.same_ports else self.fixed_ports
            with self.start(ports) as shunt:
                self.run_case(f"iteration {n} fresh {name}", shunt, lambda: fn(ports))
                self.connections += 1
        # Resets, then SIGKILL while sockmap pairs are still open (idle and
        # mid-transfer): the kernel tears those down after the process is gone,
        # while the next instance starts on the same ports.
        ports = self.new_ports() if not a.same_ports else self.fixed_ports
        shunt = self.start(ports)
        self.run_case(f"iteration {n} resets", shunt, lambda: case_resets(ports["reset"]))
        self.connections += 4
        held = open_pairs(ports, 8)
        self.connections += len(held)
        shunt.stop(signal.SIGKILL)
        shunt.__exit__(None, None, None)
        for c in held:
            c.close()
        ports = self.new_ports() if not a.same_ports else self.fixed_ports
        with self.start(ports) as shunt:
            self.burst(f"iteration {n} fresh burst after SIGKILL", shunt, ports)
        # Long-lived: every case again on one instance, the burst last.
        ports = self.new_ports() if not a.same_ports else self.fixed_ports
        with self.start(ports) as shunt:
            for name, fn in cases:
                self.run_case(f"iteration {n} long-lived {name}", shunt, lambda: fn(ports))
                self.connections += 1
            self.run_case(f"iteration {n} long-lived resets", shunt, lambda: case_resets(ports["reset"]))
            self.connections += 4
            self.burst(f"iteration {n} long-lived burst", shunt, ports)

    def main(self):
        started = time.time()
        try:
            for n in range(self.args.iterations):
                before = len(self.failures)
                self.iteration(n)
                status = "ok" if len(self.failures) == before else f"{len(self.failures) - before} failure(s)"
                print(f"iteration {n + 1}/{self.args.iterations}: {status} "
                      f"({self.connections} connections so far, {time.time() - started:.0f} s)", flush=True)
                if self.failures and self.args.stop_on_failure:
                    break
        finally:
            self.servers.close()
        print(f"stress {self.args.datapath}: {n + 1} iterations, {self.connections} connections, "
              f"{len(self.failures)} failures, {time.time() - started:.0f} s", flush=True)
        return 1 if self.failures else 0


def access_lines(shunt, needle):
    out = []
    for line in shunt.output().splitlines():
        if line.startswith("{") and needle in line:
            out.append(line)
    return out[:5]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datapath", default="sockmap", choices=["sockmap", "splice", "copy"])
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--burst", type=int, default=300, help="concurrent clients in the burst case")
    p.add_argument("--quick", action="store_true", help="1 MiB instead of 64 MiB for the bulk case")
    p.add_argument("--stop-on-failure", action="store_true")
    p.add_argument("--same-ports", action="store_true", help="every instance listens on the same ports")
    return p.parse_args(argv)


if __name__ == "__main__":
    require_root()
    sys.exit(Run(parse_args()).main())

#!/usr/bin/env python3
"""Takeover under load (issue 14, "Measure"): N open kernel-spliced
connections through shunt (sockmap, static listener, loopback echo), a
sample of them pinged every 5 ms throughout, a prober opening a new
connection every 5 ms, then `shunt run --takeover`.

Reports the takeover's duration (as the new process logs it, and from its
exec to that line), the longest gap any sampled open connection saw
between echoes (its bytes not moving) beside the same figure for the second before the
takeover (what this machine's scheduling alone causes), and the slowest new
connection (connect + echo) during the takeover. Protocol version 2 moves
every open kernel-spliced connection to the new process (the old one
freezes them, sends both sockets and their state, lets go after the commit;
the kernel moves their bytes throughout), so the gap is what a moved
connection sees; the row also says how many moved and the old process's
freeze and the new one's adopt times from their log lines.

    bench/takeover.py [--connections 1000 10000] [--realtime] [--out bench/results/takeover-DATE.json]

--realtime runs the measuring side (pinger, prober, echo upstream) under
SCHED_FIFO and both shunts under SCHED_OTHER: on a 2-CPU machine the two
shunts' takeover work otherwise starves the Python peers, and their gap is
then the scheduler's rather than the kernel path's. Run both ways to tell.
Needs root (sockmap), SHUNT_BIN or build/proxy/shunt.
"""
import argparse
import datetime
import json
import multiprocessing
import os
import re
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHUNT = os.environ.get("SHUNT_BIN", os.path.join(HERE, "..", "build", "proxy", "shunt"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REALTIME = False


def measuring_side():
    """--realtime: the calling process (and threads it starts) under SCHED_FIFO."""
    if REALTIME:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))


def shunt_side():
    """A shunt's preexec: back to SCHED_OTHER, all the descriptors it may have."""
    if REALTIME:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def echo_process(conn, realtime):
    """The upstream in a process of its own (its fds do not count against
    the client's limit); sends its port, serves until killed."""
    global REALTIME
    REALTIME = realtime
    measuring_side()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = EchoServer()
    conn.send(server.port)
    while True:
        time.sleep(3600)


class EchoServer:
    """One epoll thread echoing on every connection."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.sel = selectors.EpollSelector()
        self.sel.register(self.sock, selectors.EVENT_READ)
        self.stop = False
        self.conns = []
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while not self.stop:
            for key, _ in self.sel.select(0.1):
                if key.fileobj is self.sock:
                    try:
                        while True:
                            c, _ = self.sock.accept()
                            c.setblocking(False)
                            self.conns.append(c)
                            self.sel.register(c, selectors.EVENT_READ)
                    except BlockingIOError:
                        pass
                    continue
                c = key.fileobj
                try:
                    data = c.recv(65536)
                except (BlockingIOError, ConnectionResetError):
                    continue
                if not data:
                    self.sel.unregister(c)
                    c.close()
                    continue
                c.sendall(data)


def ping_loop(conns, stop, gaps):
    """Each sampled connection: one byte out, the echo back, every 5 ms;
    every gap between two echoes on one connection, with when it ended."""
    last = {c: time.monotonic() for c in conns}
    while not stop.is_set():
        for c in conns:
            c.sendall(b"x")
            c.recv(1)
            now = time.monotonic()
            gaps.append((now, now - last[c]))
            last[c] = now
        time.sleep(0.005)


def probe_loop(port, stop, worst):
    while not stop.is_set():
        t = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"probe")
            assert s.recv(5) == b"probe"
        worst[0] = max(worst[0], time.monotonic() - t)
        time.sleep(0.005)


def measure(n, tmp):
    parent, child = multiprocessing.Pipe()
    echo_proc = multiprocessing.Process(target=echo_process, args=(child, REALTIME), daemon=True)
    echo_proc.start()
    echo_port = parent.recv()
    listen, admin = free_port(), free_port()
    cfg = os.path.join(tmp, f"shunt-{n}.yaml")
    with open(cfg, "w") as f:
        f.write(f"""proxy:
  listeners: [{{name: bench, listen: 127.0.0.1:{listen}, forward: 127.0.0.1:{echo_port}}}]
  datapath: sockmap
  timeouts: {{connect: 5s, header: 5s, idle: 1h, drain: 60s}}
  limits: {{max_connections: {n * 2 + 1000}, max_connections_per_source: {n * 2 + 1000}}}
admin: {{listen: 127.0.0.1:{admin}, control_socket: {tmp}/control-{n}.sock}}
log: {{level: info, access: off}}
policy: {{default: allow, rules: []}}
""")
    logs = [os.path.join(tmp, f"old-{n}.log"), os.path.join(tmp, f"new-{n}.log")]
    old = subprocess.Popen([SHUNT, "run", "-c", cfg], stdout=open(logs[0], "wb"), stderr=subprocess.STDOUT,
                           preexec_fn=shunt_side)
    procs = [old]
    try:
        deadline = time.monotonic() + 30
        while f"listener bench" not in open(logs[0]).read():
            if time.monotonic() > deadline or old.poll() is not None:
                raise RuntimeError(open(logs[0]).read())
            time.sleep(0.05)
        conns = []
        for i in range(n):
            c = socket.create_connection(("127.0.0.1", listen), timeout=10)
            conns.append(c)
        for c in conns[:: max(1, n // 50)]:  # every connection echoes once: all are spliced
            c.sendall(b"y")
            assert c.recv(1) == b"y"
        sample = conns[:: max(1, n // 50)]
        stop = threading.Event()
        gaps, worst_new = [], [0.0]
        threads = [threading.Thread(target=ping_loop, args=(sample, stop, gaps)),
                   threading.Thread(target=probe_loop, args=(listen, stop, worst_new))]
        for t in threads:
            t.start()
        time.sleep(1.0)
        started = time.monotonic()
        new = subprocess.Popen([SHUNT, "run", "-c", cfg, "--takeover"], stdout=open(logs[1], "wb"),
                               stderr=subprocess.STDOUT, preexec_fn=shunt_side)
        procs.append(new)
        while True:
            text = open(logs[1]).read()
            m = re.search(r"takeover: complete in (\d+) ms: (\d+) kernel-spliced", text)
            if m:
                break
            if new.poll() is not None or time.monotonic() - started > 60:
                raise RuntimeError(text)
            time.sleep(0.005)
        wall = time.monotonic() - started
        completed = time.monotonic()
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
        for c in conns:
            c.close()
        old.wait(timeout=60)
        adopted = re.search(r"(\d+) kernel-spliced connection\(s\) received and adopted in (\d+) ms", text)
        frozen = re.search(r"(\d+) kernel-spliced connection\(s\) frozen in (\d+) ms", open(logs[0]).read())
        before = [g for t, g in gaps if t < started]
        during = [g for t, g in gaps if started <= t <= completed + 0.2]
        return {"connections": n, "takeover_ms_logged": int(m.group(1)), "exec_to_complete_ms": round(wall * 1000),
                "kernel_spliced_moved": int(m.group(2)),
                "old_freeze_ms": int(frozen.group(2)) if frozen else None,
                "new_receive_and_adopt_ms": int(adopted.group(2)) if adopted else None,
                "longest_open_connection_gap_ms": round(max(during) * 1000, 1),
                "same_before_takeover_ms": round(max(before) * 1000, 1), "sampled_connections": len(sample),
                "slowest_new_connection_ms": round(worst_new[0] * 1000, 1), "old_exit_code": old.returncode}
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=30)
        echo_proc.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--out")
    ap.add_argument("--realtime", action="store_true", help="peers under SCHED_FIFO, shunts under SCHED_OTHER")
    args = ap.parse_args()
    global REALTIME
    REALTIME = args.realtime
    measuring_side()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="shunt-bench-takeover-") as tmp:
        rows = [measure(n, tmp) for n in args.connections]
    result = {"date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"), "protocol_version": 2, "realtime_peers": REALTIME,
              "machine": f"{os.cpu_count()} CPUs, {os.uname().release}", "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())

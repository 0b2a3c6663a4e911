"""The scale profile's pieces, shared by bench/scale and
tests/integration/test_scale.py: a network namespace of its own, the
backends, shunt and HAProxy configured for the same mix, the
shunt-scale-client driver, and the memory readings.

Everything runs in one fresh network namespace: its own loopback, its own
ephemeral port range (each proxy holds one upstream connection per client
connection to one backend address, 50,000 and more, beyond the default
range's 28,232), and no conntrack. Clients bind sources across 127.0.0.0/8
(at most 200 connections per address), so neither their ports nor shunt's
per-source cap (1,000) limit the count.
"""

import json
import os
import resource
import subprocess
import time

import harness
from harness import BenchError

NETNS = "scale-bench"
LISTEN_IP = "127.0.0.1"
SERVER_IP = "127.0.0.1"


def _raise_nofile():
    """preexec_fn: backends and clients hold one descriptor per connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Netns:
    """A fresh network namespace with loopback up and room for many
    connections; deleted on exit."""

    SYSCTLS = {
        "net.ipv4.ip_local_port_range": "1024 65000",
        "net.core.somaxconn": "65535",
        "net.ipv4.tcp_max_syn_backlog": "65535",
        "net.ipv4.tcp_tw_reuse": "1",
    }

    def __init__(self, name=NETNS):
        self.name = name

    def __enter__(self):
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)  # a leftover
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run(["ip", "link", "set", "lo", "up"])
        for key, value in self.SYSCTLS.items():
            self.run(["sysctl", "-q", "-w", f"{key}={value}"])
        return self

    def __exit__(self, *exc):
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def run(self, argv, **kw):
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], check=True, capture_output=True,
                              text=True, **kw)


class Ports:
    def __init__(self, base):
        self.http_backend, self.echo_backend = base + 1, base + 2
        self.http, self.tcp = base + 11, base + 12
        self.admin = base + 20


def _start(procs, name, argv, netns, raise_nofile=True):
    """procs.start with a large RLIMIT_NOFILE for the child (shunt raises
    its own: left to it, that is part of what is measured)."""
    log = open(os.path.join(procs.rundir, name + ".log"), "wb")
    p = subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True,
                         preexec_fn=_raise_nofile if raise_nofile else None)
    log.close()
    p.bench_name = name
    procs.live.append((name, p))
    return p


def _values(ports, maxconn=100000):
    return dict(listen_ip=LISTEN_IP, server_ip=SERVER_IP, http_port=ports.http, echo_port=ports.tcp,
                http_backend=ports.http_backend, echo_backend=ports.echo_backend, admin_port=ports.admin,
                maxconn=maxconn)


def start_backends(procs, netns, ports, loadgen):
    """The nginx origin (`ok\\n` under /api/) and the echo server."""
    prefix = os.path.join(procs.rundir, "origin")
    os.makedirs(prefix, exist_ok=True)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = min(hard if hard != resource.RLIM_INFINITY else 1 << 20, 300000)
    cfg = harness.render("nginx-scale-origin.conf", os.path.join(prefix, "nginx.conf"), prefix=prefix,
                         nofile=nofile, **_values(ports))
    origin = _start(procs, "origin", ["nginx", "-p", prefix, "-c", cfg, "-e", os.path.join(prefix, "error.log")],
                    netns.name)
    echo = _start(procs, "echo", [loadgen, "echo-server", f"{SERVER_IP}:{ports.echo_backend}", "--threads", "1"],
                  netns.name)
    harness.wait_listening(procs, origin, [ports.http_backend])
    harness.wait_listening(procs, echo, [ports.echo_backend])
    return origin, echo


class Proxy:
    """A system under test: its process, its label, and its RSS."""

    def __init__(self, name, label, proc):
        self.name, self.label, self.proc = name, label, proc

    def rss_bytes(self):
        return read_status(self.proc.pid)["VmRSS"]


def start_shunt(procs, netns, ports, shunt_bin, datapath="sockmap"):
    cfg = harness.render("shunt-scale.yaml", os.path.join(procs.rundir, "shunt-scale.yaml"), datapath=datapath,
                         **_values(ports))
    p = _start(procs, "shunt", [shunt_bin, "run", "-c", cfg], netns.name, raise_nofile=False)
    harness.wait_listening(procs, p, [ports.http, ports.tcp])
    return Proxy("shunt", "shunt", p)


def start_haproxy(procs, netns, ports, maxconn):
    cfg = harness.render("haproxy-scale.cfg", os.path.join(procs.rundir, "haproxy-scale.cfg"),
                         **_values(ports, maxconn))
    p = _start(procs, "haproxy", ["haproxy", "-db", "-f", cfg], netns.name)
    harness.wait_listening(procs, p, [ports.http, ports.tcp])
    return Proxy("haproxy", "HAProxy", p)


def check_rule(netns, ports):
    """The per-request rule must really apply: 200 under /api/, 403 elsewhere."""
    codes = []
    for path in ("/api/items", "/private"):
        r = subprocess.run(["ip", "netns", "exec", netns.name, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                            "--max-time", "5", f"http://{LISTEN_IP}:{ports.http}{path}"],
                           capture_output=True, text=True)
        codes.append(r.stdout.strip())
    if codes != ["200", "403"]:
        raise BenchError(f"per-request rule not effective: /api/items -> {codes[0]}, /private -> {codes[1]}")


class ScaleClient:
    """shunt-scale-client in the namespace, driven one command at a time."""

    def __init__(self, procs, netns, ports, binary, parallel=256, per_source=200, http_share=0.5):
        argv = ["ip", "netns", "exec", netns.name, binary, "--http", f"{LISTEN_IP}:{ports.http}",
                "--tcp", f"{LISTEN_IP}:{ports.tcp}", "--parallel", str(parallel), "--per-source",
                str(per_source), "--http-share", str(http_share)]
        err = open(os.path.join(procs.rundir, "scale-client.log"), "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                     text=True, bufsize=1, start_new_session=True, preexec_fn=_raise_nofile)
        err.close()
        self.proc.bench_name = "scale-client"
        procs.live.append(("scale-client", self.proc))

    def cmd(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        if not out:
            raise BenchError(f"shunt-scale-client exited ({self.proc.poll()}) on '{line}'")
        reply = json.loads(out)
        if "error" in reply:
            raise BenchError(f"shunt-scale-client: {reply['error']}")
        return reply

    def quit(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def find_client(shunt_bin, rundir):
    return harness.find_loadgen(shunt_bin, rundir, tool="shunt-scale-client", source="scale_client.cpp")


# ------------------------------------------------------------------ readings

def open_pipes(pid):
    """Pipe descriptors the process holds (splice pipes, in shunt)."""
    fd_dir = f"/proc/{pid}/fd"
    count = 0
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, fd)).startswith("pipe:"):
                count += 1
        except OSError:
            pass
    return count


def read_status(pid):
    """VmRSS, RssAnon, ... of /proc/PID/status, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * 1024
    return out


def sockstat(pid):
    """/proc/PID/net/sockstat's TCP line (the namespace's sockets; `mem`,
    in pages, is the whole machine's TCP buffer memory), and the kernel's
    page size."""
    with open(f"/proc/{pid}/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()[1:]
                return {k: int(v) for k, v in zip(fields[::2], fields[1::2])}
    return {}


def slab_bytes(names=("TCP", "request_sock_TCP", "sock_inode_cache", "skbuff_head_cache", "dentry",
                      "filp", "eventpoll_epi", "eventpoll_pwq", "tcp_bind_bucket", "tcp_bind2_bucket")):
    """Bytes in the slab caches that grow with sockets (whole machine)."""
    total = 0
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in names:
                    total += int(parts[1]) * int(parts[3])  # active objects x object size
    except OSError:
        return None
    return total


def settle(proxy, seconds=1.0, tolerance=64 << 10, limit=6.0):
    """Waits until the proxy's RSS stops moving (freed memory returned,
    lazy work done), at most `limit` seconds; returns the last reading."""
    deadline = time.monotonic() + limit
    last = proxy.rss_bytes()
    time.sleep(seconds)
    while time.monotonic() < deadline:
        now = proxy.rss_bytes()
        if abs(now - last) <= tolerance:
            return now
        last = now
        time.sleep(0.5)
    return last


def per_kind(client, proxy, kind, count):
    """RSS growth per idle connection of `kind`: the proxy's RSS before and
    after `count` more of them opened (each answered once, then idle)."""
    before = settle(proxy)
    opened = client.cmd(f"open {kind} {count}")
    after = settle(proxy)
    n = opened["opened"]
    return {"kind": kind, "count": n, "failed": opened["failed"], "rss_before": before, "rss_after": after,
            "bytes_per_conn": (after - before) / n if n else None, "open_rate": opened["rate"],
            "failures": opened["failures"]}

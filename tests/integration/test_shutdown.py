"""Graceful shutdown (SPEC.md "Shutdown"): SIGTERM stops accepting, /readyz
turns 503, open connections keep working until they finish or
timeouts.drain passes (then they are reset), the process exits 0; a second
signal exits at once; afterwards no BPF program, attachment, pin, routing
rule or route made by shunt is left (checked with bpftool and ip). Needs
root (BPF, lab pods)."""
import json
import os
import random
import signal
import socket
import subprocess
import time
import unittest

from admin_helpers import http_get, wait_ready
from shunt_harness import (SHUNT_BIN, Shunt, ThreadedServer, echo_handler, free_port, proxy_config, recv_exact,
                           run_tests, wait_until)

STEER_MARK = "0x200000"
STEER_TABLE = "21320"
PIN_ROOT = "/sys/fs/bpf/shunt/steering"


def run(*args):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60)


def shunt_programs():
    """Ids of loaded BPF programs named like shunt's (steering and sockmap)."""
    progs = json.loads(run("bpftool", "-j", "prog", "show").stdout or "[]")
    return sorted(p["id"] for p in progs
                  if p.get("name", "").startswith("shunt_steer") or p.get("name") == "redirect_to_peer")


def programs_held_by(pid):
    """Program ids behind the process's BPF fds (programs and links), read
    from /proc/PID/fdinfo: exact even with other shunts running."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            pass
    return ids


def links_of(prog_ids):
    """BPF links (tcx attachments among them) whose program is one of these."""
    links = json.loads(run("bpftool", "-j", "link", "show").stdout or "[]")
    return [l["id"] for l in links if l.get("prog_id") in prog_ids]


def config(listen_port, upstream_port, admin_port, drain, datapath="sockmap", extra=""):
    return proxy_config([("static", listen_port, upstream_port)], datapath=datapath, default="allow",
                        timeouts={"drain": drain}, admin=admin_port, access="off", extra=extra)


def ping(sock, payload=b"ping"):
    sock.sendall(payload)
    return recv_exact(sock, len(payload))


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except OSError:
        return True


class Drain(unittest.TestCase):
    def setUp(self):
        self.server = ThreadedServer(echo_handler)
        self.addCleanup(self.server.close)
        self.port, self.admin = free_port(), free_port()

    def start(self, drain, datapath="sockmap"):
        shunt = Shunt(config(self.port, self.server.port, self.admin, drain, datapath), wait_port=self.port)
        wait_ready(self.admin, shunt.proc)
        return shunt

    def drain(self, shunt):
        """SIGTERM, and /readyz says so: shunt drains."""
        shunt.proc.send_signal(signal.SIGTERM)
        self.assertIsNotNone(wait_until(lambda: http_get(self.admin, "/readyz")[0] == 503))

    def test_open_connection_finishes_during_drain(self):
        with self.start("10s") as shunt:
            c = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            self.assertEqual(ping(c), b"ping")
            self.drain(shunt)
            self.assertEqual(http_get(self.admin, "/readyz")[2], b"not ready: draining\n")
            self.assertEqual(http_get(self.admin, "/healthz")[0], 200)
            self.assertIsNotNone(wait_until(lambda: refused(self.port)), "still accepting while draining")
            # The open connection still works, on the kernel data path.
            self.assertEqual(ping(c, b"x" * 100_000), b"x" * 100_000)
            closed = time.monotonic()
            c.close()
            self.assertEqual(shunt.proc.wait(timeout=10), 0, shunt.output())
            self.assertLess(time.monotonic() - closed, 5, "did not exit once the last connection closed")
            self.assertIn("draining 1 connection(s)", shunt.output())

    def test_drain_timeout_resets_what_remains(self):
        for datapath in ("sockmap", "copy"):
            with self.subTest(datapath=datapath), self.start("2s", datapath) as shunt:
                c = socket.create_connection(("127.0.0.1", self.port), timeout=20)
                self.assertEqual(ping(c), b"ping")
                start = time.monotonic()
                shunt.proc.send_signal(signal.SIGTERM)
                self.assertEqual(shunt.proc.wait(timeout=20), 0, shunt.output())
                elapsed = time.monotonic() - start
                self.assertGreater(elapsed, 1.5, "exited before timeouts.drain")
                self.assertLess(elapsed, 2 + 6, "exit took far longer than timeouts.drain")
                self.assertIn("drain timeout: resetting 1 connection(s)", shunt.output())
                try:
                    self.assertEqual(c.recv(10), b"")
                except ConnectionResetError:
                    pass
                c.close()

    def test_second_signal_exits_at_once(self):
        with self.start("60s") as shunt:
            c = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            self.assertEqual(ping(c), b"ping")
            self.drain(shunt)
            start = time.monotonic()
            shunt.proc.send_signal(signal.SIGINT)
            self.assertEqual(shunt.proc.wait(timeout=10), 0, shunt.output())
            self.assertLess(time.monotonic() - start, 5)
            self.assertIn("second signal", shunt.output())
            c.close()


class NothingLeftBehind(unittest.TestCase):
    """A steered lab pod (veth, tcx, fail_open) plus a sockmap connection
    open at SIGTERM: after exit, none of shunt's kernel state remains."""

    def setUp(self):
        self.pod = "sd%03d" % random.randint(0, 999)
        self.dev = "sh-" + self.pod
        ip = "10.%d.%d.2" % (random.randint(211, 219), random.randint(0, 254))
        self.addCleanup(self.remove_pod)
        r = run(SHUNT_BIN, "pod", "add", self.pod, "--ip", ip + "/24", "--type", "veth")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.ip = ip

    def remove_pod(self):
        run(SHUNT_BIN, "pod", "del", self.pod)
        run("ip", "link", "del", self.dev)
        run("ip", "netns", "del", self.pod)

    def test_sigterm_with_open_connection_cleans_up(self):
        rules_before = run("ip", "rule").stdout
        other_shunt_steering = STEER_MARK in rules_before
        port, admin = free_port(), free_port()
        with ThreadedServer(echo_handler) as server:
            extra = f"""steering: {{intercept_ports: [8080], on_proxy_down: fail_open}}
pods:
  - {{name: {self.pod}, ip: {self.ip}, labels: {{app: t}}, dev: {self.dev}}}
"""
            text = config(port, server.port, admin, "3s", extra=extra).replace(
                "  listeners:\n", f"  listeners:\n    - {{name: pods, listen: 127.0.0.1:{free_port()}, transparent: true}}\n")
            with Shunt(text, wait_port=port) as shunt:
                wait_ready(admin, shunt.proc)
                ours = programs_held_by(shunt.proc.pid) & set(shunt_programs())
                self.assertTrue(ours, "no steering or sockmap program loaded")
                self.assertTrue(links_of(ours), "steering not attached to " + self.dev)
                self.assertIn(STEER_MARK, run("ip", "rule").stdout)
                c = socket.create_connection(("127.0.0.1", port), timeout=10)
                self.assertEqual(ping(c), b"ping")
                start = time.monotonic()
                shunt.proc.send_signal(signal.SIGTERM)
                self.assertEqual(shunt.proc.wait(timeout=20), 0, shunt.output())
                self.assertLess(time.monotonic() - start, 3 + 6)
                c.close()

        self.assertEqual(links_of(ours), [])
        self.assertNotIn(self.dev, run("bpftool", "net").stdout)
        self.assertFalse(os.path.exists(os.path.join(PIN_ROOT, self.dev)))
        self.assertEqual(set(shunt_programs()) & ours, set(), "programs still loaded (pinned?)")
        if not other_shunt_steering:
            # Rule and route are shared by every shunt on the host: only
            # checkable when no other one steered before this test.
            self.assertNotIn(STEER_MARK, run("ip", "rule").stdout)
            self.assertNotIn(STEER_MARK, run("ip", "-6", "rule").stdout)
            self.assertEqual(run("ip", "route", "show", "table", STEER_TABLE).stdout.strip(), "")


if __name__ == "__main__":
    run_tests()

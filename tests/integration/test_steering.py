"""Pod traffic steering through `shunt run`, on this host's kernel (veth + tcx).

Two lab pods per test (fresh namespaces via `shunt pod add`), real peers in
them, shunt with `pods[].dev` so BPF steers the pods' traffic to its
transparent listener. Checks: the server sees the client pod's address
(upstream_source: client), bytes are intact both ways, a non-intercepted
port bypasses shunt, L4 deny resets, HTTP deny answers 403, BPF drops L4
denies on ports shunt does not intercept, fail_open / fail_closed with shunt
stopped, and nothing is left behind after shunt exits and the pods go.

Needs root; fails without it. Everything created is removed in cleanups,
also when a test fails.
"""
import json
import os
import random
import signal
import subprocess
import tempfile
import time
import unittest
import urllib.request

from shunt_harness import (POD_ECHO, POD_SERVE, PY, SHUNT_BIN, STEER_MARK, STEER_PIN_ROOT, STEER_TABLE, free_port,
                           run, steering_programs)

INTERCEPTED = 8080    # echo, proxied
HTTP_PORT = 8081      # tiny HTTP server, proxied, /admin denied by an http rule
L4_DENIED = 7001      # echo, proxied, denied by an L4 rule: reset
DIRECT = 9090         # echo, not intercepted
BPF_DENIED = 9091     # echo, not intercepted, denied by an L4 rule: BPF drops



HTTP_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(("GET %s HTTP/1.1\r\nHost: server\r\n\r\n" % sys.argv[3]).encode())
data = b""
while b"\r\n\r\n" not in data:
    d = s.recv(4096)
    if not d: break
    data += d
head, _, body = data.partition(b"\r\n\r\n")
length = 0
for line in head.split(b"\r\n")[1:]:
    k, _, v = line.partition(b":")
    if k.strip().lower() == b"content-length": length = int(v)
while len(body) < length:
    d = s.recv(4096)
    if not d: break
    body += d
print(head.split(b"\r\n")[0].decode().split()[1])
print(body.decode(), end="")
"""


class SteeringTest(unittest.TestCase):
    DATAPATH = "copy"
    ATTACH = "auto"

    def setUp(self):
        if os.geteuid() != 0:
            self.fail("needs root (network namespaces, BPF)")
        self.tmp = tempfile.TemporaryDirectory(prefix="shunt-steer-")
        self.addCleanup(self.tmp.cleanup)
        self.baseline_progs = set(steering_programs())
        self.our_progs = set()
        tag = "%03d" % random.randint(0, 999)
        net = "10.%d.%d" % (random.randint(201, 209), random.randint(0, 254))
        self.client, self.server = "t%sc" % tag, "t%ss" % tag
        self.cip, self.sip = net + ".2", net + ".3"
        self.procs = []
        self.shunt_proc = None
        self.addCleanup(self.cleanup)
        for name, ip in ((self.client, self.cip), (self.server, self.sip)):
            r = run(SHUNT_BIN, "pod", "add", name, "--ip", ip + "/24")
            self.assertEqual(r.returncode, 0, r.stderr)
        for port, mode in ((INTERCEPTED, "echo"), (L4_DENIED, "echo"), (DIRECT, "echo"),
                           (BPF_DENIED, "echo"), (HTTP_PORT, "http")):
            self.spawn_server(port, mode)
        self.access_log = os.path.join(self.tmp.name, "access.log")

    def cleanup(self):
        self.stop_shunt(check=False)
        self.kill_servers()
        for name in (self.client, self.server):
            run(SHUNT_BIN, "pod", "del", name)
            run("ip", "link", "del", "sh-" + name)
            run("ip", "netns", "del", name)

    def kill_servers(self):
        for p in self.procs:
            p.kill()
            p.wait()
            p.stdout.close()
            p.stderr.close()
        self.procs = []

    def spawn_server(self, port, mode):
        p = subprocess.Popen(["ip", "netns", "exec", self.server, *POD_SERVE, self.sip, str(port), mode],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        self.assertIn("listening", p.stdout.readline(), "server on port %d did not start" % port)

    def config(self, on_proxy_down, attach):
        self.admin_port = free_port()
        path = os.path.join(self.tmp.name, "shunt.yaml")
        with open(path, "w") as f:
            f.write(f"""proxy:
  listeners:
    - {{name: pods, listen: 127.0.0.1:{free_port()}, transparent: true}}
  datapath: {self.DATAPATH}
  upstream_source: client
steering:
  intercept_ports: [{INTERCEPTED}, {HTTP_PORT}, {L4_DENIED}]
  on_proxy_down: {on_proxy_down}
  attach: {attach}
admin: {{listen: 127.0.0.1:{self.admin_port}, control_socket: {self.tmp.name}/control.sock}}
log: {{level: info, access: {self.access_log}}}
pods:
  - {{name: {self.client}, ip: {self.cip}, labels: {{app: client}}, dev: sh-{self.client}}}
  - {{name: {self.server}, ip: {self.sip}, labels: {{app: server}}, dev: sh-{self.server}}}
policy:
  default: allow
  rules:
    - name: no-l4
      from: {{pod: {self.client}}}
      to: {{pod: {self.server}, ports: [{L4_DENIED}, {BPF_DENIED}]}}
      action: deny
    - name: no-admin
      from: {{pod: {self.client}}}
      to: {{pod: {self.server}, ports: [{HTTP_PORT}]}}
      action: deny
      http:
        - {{path: /admin}}
""")
        return path

    def start_shunt(self, on_proxy_down, attach=None):
        path = self.config(on_proxy_down, attach or self.ATTACH)
        self.shunt_log = open(os.path.join(self.tmp.name, "shunt.out"), "w+")
        self.shunt_proc = subprocess.Popen([SHUNT_BIN, "run", "-c", path], stdout=self.shunt_log,
                                           stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.shunt_proc.poll() is not None:
                self.shunt_log.seek(0)
                self.fail("shunt exited %d: %s" % (self.shunt_proc.returncode, self.shunt_log.read()))
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % self.admin_port, timeout=1) as r:
                    if r.status == 200:
                        self.note_programs()
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.fail("shunt not ready within 20s")

    def note_programs(self):
        mine = set(steering_programs(self.shunt_proc.pid))
        # A bpftool without pid support lists no holders: fall back to what
        # appeared since the test began.
        self.our_progs |= mine or (set(steering_programs()) - self.baseline_progs)

    def assert_programs_gone(self):
        # Programs are freed asynchronously after their last reference.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            left = self.our_progs & set(steering_programs())
            if not left:
                return
            time.sleep(0.1)
        self.fail("steering programs still loaded: %s" % sorted(left))

    def stop_shunt(self, check=True):
        p, self.shunt_proc = self.shunt_proc, None
        if p is None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(timeout=40)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = None
        self.shunt_log.close()
        if check:
            self.assertEqual(rc, 0, "shunt did not exit 0 on SIGTERM")

    def echo(self, port, size=64 << 10, timeout=5.0):
        r = run("ip", "netns", "exec", self.client, *POD_ECHO, self.sip, str(port), str(size), str(timeout),
                timeout=180)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.split()

    def assert_echo_ok(self, port, size=64 << 10):
        out = self.echo(port, size)
        self.assertEqual(len(out), 4, "port %d: %s" % (port, out))
        peer, sent, got, n = out
        self.assertEqual(peer, "peer=" + self.cip, "server must see the client pod's address")
        self.assertEqual(sent, got, "bytes changed on the way")
        self.assertEqual(int(n), size)

    def access_entries(self, settle=2.0):
        deadline = time.monotonic() + settle
        entries = []
        while time.monotonic() < deadline:
            try:
                with open(self.access_log) as f:
                    entries = [json.loads(line) for line in f if line.strip()]
            except FileNotFoundError:
                entries = []
            if entries:
                break
            time.sleep(0.1)
        return entries

    def metrics(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.admin_port, timeout=5) as r:
            return r.read().decode()

    def assert_attached(self, hook):
        text = self.metrics()
        for name in (self.client, self.server):
            self.assertIn('shunt_steering_attachments{device="sh-%s",hook="%s"} 1' % (name, hook), text)
        status = run(SHUNT_BIN, "status", "--admin", "127.0.0.1:%d" % self.admin_port)
        self.assertEqual(status.returncode, 0, status.stderr)
        self.assertRegex(status.stdout, r"steering\s+.*sh-%s %s" % (self.client, hook))

    def proxied(self, port):
        return [e for e in self.access_entries() if e.get("dst") == "%s:%d" % (self.sip, port)]


class ThroughShunt(SteeringTest):
    def test_client_to_server_keeps_source_and_bytes(self):
        self.start_shunt("fail_open")
        self.assert_attached("tcx")
        self.assert_echo_ok(INTERCEPTED, 8 << 20)
        conns = self.proxied(INTERCEPTED)
        self.assertTrue(conns, "connection did not go through shunt")
        self.assertEqual(conns[-1].get("src_pod"), self.client)
        self.assertEqual(conns[-1].get("dst_pod"), self.server)
        self.assertEqual(conns[-1].get("bytes_up"), 8 << 20)

    def test_non_intercepted_port_bypasses_shunt(self):
        self.start_shunt("fail_open")
        self.assert_echo_ok(DIRECT)
        self.assert_echo_ok(INTERCEPTED)  # so the log is known to be written
        self.assertTrue(self.proxied(INTERCEPTED))
        self.assertFalse(self.proxied(DIRECT))

    def test_l4_deny_is_reset(self):
        self.start_shunt("fail_open")
        self.assertEqual(self.echo(L4_DENIED), ["error", "reset"])

    def test_bpf_drops_l4_deny_on_port_shunt_does_not_intercept(self):
        self.start_shunt("fail_open")
        self.assertEqual(self.echo(BPF_DENIED, timeout=2), ["error", "timeout"])
        self.assert_echo_ok(DIRECT)

    def test_http_deny_is_403(self):
        self.start_shunt("fail_open")
        ok = run("ip", "netns", "exec", self.client, PY, "-c", HTTP_CLIENT, self.sip, str(HTTP_PORT), "/ok")
        self.assertEqual(ok.stdout.splitlines()[:2], ["200", "path=/ok peer=" + self.cip], ok.stderr)
        denied = run("ip", "netns", "exec", self.client, PY, "-c", HTTP_CLIENT, self.sip, str(HTTP_PORT), "/admin")
        self.assertEqual(denied.stdout, "403\nAccess denied\n", denied.stderr)


class ThroughShuntSockmap(SteeringTest):
    DATAPATH = "sockmap"

    def test_client_to_server_keeps_source_and_bytes(self):
        self.start_shunt("fail_open")
        self.assert_echo_ok(INTERCEPTED, 16 << 20)
        self.assertTrue(self.proxied(INTERCEPTED))


class ProxyDown(SteeringTest):
    def test_fail_open_passes_directly(self):
        self.start_shunt("fail_open")
        self.assert_echo_ok(INTERCEPTED)
        self.stop_shunt()
        before = len(self.proxied(INTERCEPTED))
        self.assert_echo_ok(INTERCEPTED)
        self.assertEqual(len(self.proxied(INTERCEPTED)), before, "shunt is stopped: nothing may be proxied")
        self.assert_programs_gone()  # fail_open leaves nothing attached

    def test_fail_closed_drops_until_shunt_is_back(self):
        self.start_shunt("fail_closed")
        self.assert_echo_ok(INTERCEPTED)
        self.stop_shunt()
        self.assertEqual(self.echo(INTERCEPTED, timeout=2), ["error", "timeout"])
        self.assert_echo_ok(DIRECT)
        self.assertTrue(os.path.exists(os.path.join(STEER_PIN_ROOT, "sh-" + self.client, "tcx")))
        # A new run adopts the pinned links and serves again.
        self.start_shunt("fail_closed")
        self.assert_echo_ok(INTERCEPTED)


class NothingLeftBehind(SteeringTest):
    def check_clean(self):
        self.assertNotIn(STEER_MARK, run("ip", "rule").stdout)
        self.assertNotIn(STEER_MARK, run("ip", "-6", "rule").stdout)
        self.assertEqual(run("ip", "route", "show", "table", STEER_TABLE).stdout.strip(), "")
        self.assert_programs_gone()
        for name in (self.client, self.server):
            self.assertFalse(os.path.exists(os.path.join(STEER_PIN_ROOT, "sh-" + name)))
            self.assertNotIn(name, run("ip", "netns", "list").stdout)
            self.assertNotEqual(run("ip", "link", "show", "sh-" + name).returncode, 0)
            self.assertNotIn("sh-" + name, run("bpftool", "net").stdout)

    def delete_pods(self):
        for name in (self.client, self.server):
            r = run(SHUNT_BIN, "pod", "del", name)
            self.assertEqual(r.returncode, 0, r.stderr)
        self.kill_servers()

    def test_fail_open_exit_then_pod_del(self):
        self.start_shunt("fail_open")
        self.assert_echo_ok(INTERCEPTED)
        self.stop_shunt()
        self.assertNotIn(STEER_MARK, run("ip", "rule").stdout)
        self.delete_pods()
        self.check_clean()

    def test_fail_closed_exit_then_pod_del(self):
        self.start_shunt("fail_closed")
        self.assert_echo_ok(INTERCEPTED)
        self.stop_shunt()
        self.assertNotIn(STEER_MARK, run("ip", "rule").stdout)
        self.delete_pods()
        self.check_clean()


class LegacyTc(SteeringTest):
    """`steering.attach: tc`: the legacy clsact filters that kernels before
    6.6 get (`auto` picks them there; tests/vm covers that on Linux 6.1)."""
    ATTACH = "tc"
    DATAPATH = "sockmap"
    PROG = "shunt_steer_tcx"
    OURS = "handle 0x5348 shunt_steer_tcx"  # one line per filter in `tc filter show`

    def tc_filters(self, name):
        return run("tc", "filter", "show", "dev", "sh-" + name, "ingress").stdout

    def has_clsact(self, name):
        return "clsact" in run("tc", "qdisc", "show", "dev", "sh-" + name).stdout

    def assert_steering_gone(self):
        for name in (self.client, self.server):
            self.assertNotIn(self.PROG, self.tc_filters(name))
            self.assertFalse(self.has_clsact(name), "an empty clsact qdisc was left on sh-" + name)
            self.assertFalse(os.path.exists(os.path.join(STEER_PIN_ROOT, "sh-" + name)))

    def test_pod_to_pod_through_clsact_filters(self):
        self.start_shunt("fail_open")
        for name in (self.client, self.server):
            out = self.tc_filters(name)
            self.assertEqual(out.count(self.OURS), 1, out)
            self.assertIn("direct-action", out)
        self.assert_attached("tc")
        self.assert_echo_ok(INTERCEPTED, 16 << 20)
        self.assertTrue(self.proxied(INTERCEPTED))
        self.assert_echo_ok(DIRECT)
        self.assertFalse(self.proxied(DIRECT))
        self.assertEqual(self.echo(L4_DENIED), ["error", "reset"])
        self.assertEqual(self.echo(BPF_DENIED, timeout=2), ["error", "timeout"])
        self.stop_shunt()
        self.assert_steering_gone()
        before = len(self.proxied(INTERCEPTED))
        self.assert_echo_ok(INTERCEPTED)  # fail_open: directly now
        self.assertEqual(len(self.proxied(INTERCEPTED)), before)
        self.assert_programs_gone()

    def test_fail_closed_keeps_filters_and_a_restart_replaces_them(self):
        self.start_shunt("fail_closed")
        self.assert_echo_ok(INTERCEPTED)
        self.stop_shunt()
        self.assertIn(self.PROG, self.tc_filters(self.client))
        self.assertEqual(self.echo(INTERCEPTED, timeout=2), ["error", "timeout"])
        self.assert_echo_ok(DIRECT)
        self.start_shunt("fail_closed")
        self.assertEqual(self.tc_filters(self.client).count(self.OURS), 1)
        self.assert_echo_ok(INTERCEPTED)
        # Back to fail_open: the kept filters go with this run.
        self.stop_shunt()
        self.start_shunt("fail_open")
        self.assert_echo_ok(INTERCEPTED)
        self.stop_shunt()
        self.assert_steering_gone()
        self.assert_programs_gone()

    def test_pod_del_removes_kept_filters(self):
        self.start_shunt("fail_closed")
        self.stop_shunt()
        self.assertIn(self.PROG, self.tc_filters(self.client))
        # The device outlives `pod del` here (veth peers go with the netns,
        # but the marker pin must go too): delete the pods.
        for name in (self.client, self.server):
            r = run(SHUNT_BIN, "pod", "del", name)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertFalse(os.path.exists(os.path.join(STEER_PIN_ROOT, "sh-" + name)))
        self.kill_servers()
        self.assert_programs_gone()

    def test_switching_attach_mode_leaves_one_program(self):
        self.start_shunt("fail_closed", attach="tcx")
        self.stop_shunt()
        self.start_shunt("fail_closed", attach="tc")
        self.assertFalse(os.path.exists(os.path.join(STEER_PIN_ROOT, "sh-" + self.client, "tcx")))
        self.assertEqual(self.tc_filters(self.client).count(self.OURS), 1)
        self.assert_echo_ok(INTERCEPTED)
        self.stop_shunt()
        self.assertEqual(len(self.proxied(INTERCEPTED)), 1)
        self.start_shunt("fail_open", attach="tcx")
        self.assertNotIn(self.PROG, self.tc_filters(self.client))
        self.assert_echo_ok(INTERCEPTED)
        self.stop_shunt()
        self.assertEqual(len(self.proxied(INTERCEPTED)), 2, "one program, one proxied connection per run")
        self.assert_steering_gone()

    def test_foreign_tc_filters_are_left_alone(self):
        dev = "sh-" + self.client
        self.assertEqual(run("tc", "qdisc", "add", "dev", dev, "clsact").returncode, 0)
        # u32: built into this kernel (matchall and gact are not).
        r = run("tc", "filter", "add", "dev", dev, "ingress", "prio", "200", "protocol", "all", "u32", "match", "u32",
                "0", "0")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.start_shunt("fail_open")
        self.assert_echo_ok(INTERCEPTED)
        self.assertTrue(self.proxied(INTERCEPTED))
        self.stop_shunt()
        out = self.tc_filters(self.client)
        self.assertNotIn(self.PROG, out)
        self.assertIn("u32", out)
        self.assertTrue(self.has_clsact(self.client))


if __name__ == "__main__":
    unittest.main(verbosity=2)

"""IPv6 lab pods and IPv6 pod steering through `shunt run`, on this host's
kernel (veth + tcx; netkit where the kernel has it).

Pods come from `shunt pod add NAME --ip ADDR/64` (and `--ip` twice for a
dual-stack pod), peers are pod_peer.py servers and clients plus curl inside
the pods. Checked over IPv6: the pod plumbing (nodad addresses, gateway
route, host routes), pod to pod without shunt, through shunt's `[::1]`
transparent listener with `upstream_source: client` (the server sees the
client pod's address), 16 MiB each way with hashes on the sockmap data path,
L4 deny = reset, HTTP deny = 403, BPF drop of an L4 deny on a port shunt does
not intercept, policy by pod name across both families of a dual-stack pod,
fail_closed while shunt is down, and nothing left behind after shunt exits
and the pods go.

Needs root; fails without it. Everything created is removed in cleanups,
also when a test fails.
"""
import json
import os
import random
import re
import signal
import tempfile
import time
import unittest

from admin_helpers import scrape, value, wait_ready
from shunt_harness import (SHUNT_BIN, STEER_MARK, STEER_PIN_ROOT, STEER_TABLE, PodLab, Shunt, free_port, run,
                           steering_programs)

INTERCEPTED = 8080  # echo, proxied
HTTP_PORT = 8081    # HTTP, proxied, /admin denied by an http rule
BULK = 8082         # bulk up/down, proxied
L4_DENIED = 7001    # echo, proxied, denied by an L4 rule: reset
DIRECT = 9090       # echo, not intercepted
BPF_DENIED = 9091   # echo, not intercepted, denied by an L4 rule: BPF drops
MIB = 1 << 20


def random_v6_net():
    # A ULA /64 of its own per run (the host's own fd00::/64 is never hit).
    return "fd53:%x:%x:%x::" % (random.randint(1, 0xffff), random.randint(0, 0xffff), random.randint(0, 0xffff))


def random_v4_net():
    return "10.%d.%d." % (random.randint(201, 209), random.randint(0, 254))


def bracket(ip):
    return "[%s]" % ip if ":" in ip else ip


def shunt_config(listeners, pods, on_proxy_down, access_log, admin_port, datapath="sockmap"):
    listen = "\n".join("    - {name: pods%d, listen: \"%s:%d\", transparent: true}" % (i, bracket(h), p)
                       for i, (h, p) in enumerate(listeners))
    pod_lines = "\n".join("  - {name: %s, ip: %s, labels: {app: %s}, dev: sh-%s}" % (name, ips, app, name)
                          for name, ips, app in pods)
    client, server = pods[0][0], pods[1][0]
    return f"""proxy:
  listeners:
{listen}
  datapath: {datapath}
  upstream_source: client
  timeouts: {{connect: 2s, header: 5s, idle: 1h, drain: 2s}}
steering:
  intercept_ports: [{INTERCEPTED}, {HTTP_PORT}, {BULK}, {L4_DENIED}]
  on_proxy_down: {on_proxy_down}
admin: {{listen: 127.0.0.1:{admin_port}}}
log: {{level: info, access: {access_log}}}
pods:
{pod_lines}
policy:
  default: allow
  rules:
    - name: no-l4
      from: {{pod: {client}}}
      to: {{pod: {server}, ports: [{L4_DENIED}, {BPF_DENIED}]}}
      action: deny
    - name: no-admin
      from: {{labels: {{app: client}}}}
      to: {{pod: {server}, ports: [{HTTP_PORT}]}}
      action: deny
      http:
        - {{path: /admin}}
"""


class Lab(unittest.TestCase):
    """Two pods (client, server) with peers on every test port, and shunt
    steering them, shared by the tests of a class."""

    V4 = False            # also give the pods an IPv4 address (dual-stack)
    ON_PROXY_DOWN = "fail_open"
    START_SHUNT = True

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise AssertionError("needs root (network namespaces, BPF)")
        cls.tmp = tempfile.TemporaryDirectory(prefix="shunt-ipv6-")
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.lab = PodLab("6")
        cls.addClassCleanup(cls.lab.cleanup)
        cls.baseline_progs = set(steering_programs())
        net6 = random_v6_net()
        cls.cip, cls.sip = net6 + "2", net6 + "3"
        net4 = random_v4_net()
        cls.cip4, cls.sip4 = net4 + "2", net4 + "3"
        cls.pods = []
        for role, ip6, ip4 in (("c", cls.cip, cls.cip4), ("s", cls.sip, cls.sip4)):
            cidrs = [ip6 + "/64"] + ([ip4 + "/24"] if cls.V4 else [])
            name, r = cls.lab.add(role, *cidrs)
            if r.returncode != 0:
                raise AssertionError("pod add %s: %s" % (name, r.stderr))
            cls.pods.append((name, r))
        cls.client, cls.server = cls.pods[0][0], cls.pods[1][0]
        cls.servers = {}
        hosts = [cls.sip] + ([cls.sip4] if cls.V4 else [])
        for host in hosts:
            for port, mode in ((INTERCEPTED, "echo"), (HTTP_PORT, "http"), (BULK, "bulk"), (L4_DENIED, "echo"),
                               (DIRECT, "echo"), (BPF_DENIED, "echo")):
                cls.servers[(host, port)] = cls.lab.serve(cls.server, host, port, mode)
        cls.access_log = os.path.join(cls.tmp.name, "access.log")
        cls.shunt = None
        if cls.START_SHUNT:
            cls.start_shunt()

    @classmethod
    def start_shunt(cls):
        cls.admin_port = free_port()
        listeners = [("::1", free_port("::1"))] + ([("127.0.0.1", free_port())] if cls.V4 else [])
        ips = lambda v6, v4: '["%s", %s]' % (v6, v4) if cls.V4 else '"%s"' % v6
        text = shunt_config(listeners, [(cls.client, ips(cls.cip, cls.cip4), "client"),
                                        (cls.server, ips(cls.sip, cls.sip4), "server")],
                            cls.ON_PROXY_DOWN, cls.access_log, cls.admin_port)
        cls.shunt = Shunt(text)
        cls.addClassCleanup(cls.stop_shunt, False)
        try:
            wait_ready(cls.admin_port, proc=cls.shunt.proc)
        except Exception:
            cls.shunt.__exit__(RuntimeError, None, None)
            raise
        cls.our_progs = set(steering_programs(cls.shunt.proc.pid)) or (set(steering_programs()) - cls.baseline_progs)

    @classmethod
    def stop_shunt(cls, check=True):
        s, cls.shunt = cls.shunt, None
        if s is None:
            return None
        rc = s.stop(signal.SIGTERM, timeout=40)
        s.__exit__(None, None, None)
        return rc

    def run(self, result=None):
        # On failure, show the proxy's side (the shared Shunt lives across tests).
        before = len(result.failures) + len(result.errors) if result else 0
        out = super().run(result)
        if result and len(result.failures) + len(result.errors) > before and self.shunt is not None:
            print("---- shunt output (last 40 lines) ----\n" + "\n".join(self.shunt.output().splitlines()[-40:]))
        return out

    def echo(self, host, port, size=64 << 10, timeout=5.0):
        return self.lab.client(self.client, "echo", host, port, size, timeout)

    def assert_echo_ok(self, host, peer, port, size=64 << 10):
        out = self.echo(host, port, size)
        self.assertEqual(len(out), 4, "%s port %d: %s" % (host, port, out))
        self.assertEqual(out[0], "peer=" + peer, "the server must see the client pod's address")
        self.assertEqual(out[1], out[2], "bytes changed on the way")
        self.assertEqual(int(out[3]), size)

    def access_entries(self, want=lambda e: True, settle=3.0):
        deadline = time.monotonic() + settle
        while True:
            try:
                with open(self.access_log) as f:
                    entries = [json.loads(line) for line in f if line.strip()]
            except FileNotFoundError:
                entries = []
            found = [e for e in entries if e.get("event") == "conn" and want(e)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def proxied(self, host, port, settle=3.0):
        return self.access_entries(lambda e: e.get("dst") == "%s:%d" % (bracket(host), port), settle)

    def curl(self, host, path):
        r = self.lab.exec(self.client, "curl", "-sSg", "--noproxy", "*", "--max-time", "10", "-w", "\n%{http_code}",
                          "http://%s:%d%s" % (bracket(host), HTTP_PORT, path))
        self.assertEqual(r.returncode, 0, r.stderr)
        body, _, code = r.stdout.rpartition("\n")
        return int(code), body


class Ipv6ThroughShunt(Lab):
    def test_pod_plumbing(self):
        out = self.pods[0][1].stdout
        self.assertRegex(out, r"address %s/64," % re.escape(self.cip))
        addr = self.lab.exec(self.client, "ip", "-6", "addr", "show", "eth0").stdout
        self.assertRegex(addr, r"inet6 %s/64 scope global nodad noprefixroute" % re.escape(self.cip))
        self.assertNotIn("tentative", addr)
        routes = self.lab.exec(self.client, "ip", "-6", "route").stdout
        if "veth" in out:
            self.assertIn("default via fe80::1 dev eth0", routes)
            self.assertIn("fe80::1/64", run("ip", "-6", "addr", "show", "sh-" + self.client).stdout)
        else:
            self.assertIn("default dev eth0", routes)
        self.assertNotIn(self.cip.rstrip("2") + "/64", routes, "no on-link prefix route: peers go via the host")
        self.assertRegex(run("ip", "-6", "route", "show", self.cip).stdout, r"dev sh-%s\b" % self.client)
        with open("/proc/sys/net/ipv6/conf/all/forwarding") as f:
            self.assertEqual(f.read().strip(), "1")
        listing = run(SHUNT_BIN, "pod", "list").stdout
        self.assertRegex(listing, r"(?m)^%s\s+\S+\s+%s/64\s+sh-%s$" % (self.client, re.escape(self.cip), self.client))

    def test_non_intercepted_port_flows_without_shunt(self):
        self.assert_echo_ok(self.sip, self.cip, DIRECT, 1 * MIB)
        self.assert_echo_ok(self.sip, self.cip, INTERCEPTED)  # so the log is known to be written
        self.assertTrue(self.proxied(self.sip, INTERCEPTED))
        self.assertFalse(self.proxied(self.sip, DIRECT, settle=0))

    def test_bulk_both_ways_on_sockmap_keeps_source(self):
        size = 16 * MIB
        before = scrape(self.admin_port)
        out = self.lab.client(self.client, "bulk", self.sip, BULK, size, size, 10)
        self.assertEqual(len(out), 4, out)
        peer, down_bytes, down_sha, up_sha_sent = out
        self.assertEqual(peer, "peer=" + self.cip, "the server must see the client pod's IPv6 address")
        upload = self.lab.server_line(self.servers[(self.sip, BULK)]).split()
        self.assertEqual(upload[:3], ["upload", "peer=" + self.cip, str(size)], upload)
        self.assertEqual(upload[3], up_sha_sent, "upload bytes changed on the way")
        self.assertEqual(int(down_bytes), size)
        self.assertEqual(down_sha, upload[4], "download bytes changed on the way")

        entry = self.proxied(self.sip, BULK)[-1]
        self.assertRegex(entry["src"], r"^\[%s\]:\d+$" % re.escape(self.cip))
        self.assertEqual((entry["src_pod"], entry["dst_pod"]), (self.client, self.server))
        self.assertEqual((entry["verdict"], entry["datapath"]), ("allow", "sockmap"), entry)
        self.assertGreaterEqual(entry["bytes_up"], size)
        self.assertGreaterEqual(entry["bytes_down"], size)
        after = scrape(self.admin_port)
        for direction in ("up", "down"):
            moved = (value(after, "shunt_bytes_total", direction=direction, datapath="sockmap") -
                     value(before, "shunt_bytes_total", direction=direction, datapath="sockmap"))
            self.assertGreaterEqual(moved, size, direction)

    def test_l4_deny_is_reset(self):
        self.assertEqual(self.echo(self.sip, L4_DENIED), ["error", "reset"])
        entry = self.proxied(self.sip, L4_DENIED)[-1]
        self.assertEqual((entry["verdict"], entry["rule"]), ("deny", "no-l4"))

    def test_bpf_drops_l4_deny_on_port_shunt_does_not_intercept(self):
        self.assertEqual(self.echo(self.sip, BPF_DENIED, timeout=2), ["error", "timeout"])
        self.assert_echo_ok(self.sip, self.cip, DIRECT)

    def test_http_allowed_and_denied(self):
        self.assertEqual(self.curl(self.sip, "/ok"), (200, "path=/ok peer=%s\n" % self.cip))
        self.assertEqual(self.curl(self.sip, "/admin/keys"), (403, "Access denied\n"))


class DualStackThroughShunt(Lab):
    V4 = True

    def test_pod_has_both_addresses(self):
        out = self.pods[0][1].stdout
        self.assertIn("addresses %s/64,%s/24," % (self.cip, self.cip4), out)
        listing = run(SHUNT_BIN, "pod", "list").stdout
        self.assertRegex(listing, r"(?m)^%s\s+\S+\s+%s/24,%s/64\s+sh-%s$" %
                         (self.client, re.escape(self.cip4), re.escape(self.cip), self.client))

    def test_both_families_keep_source_and_pod_identity(self):
        for server, client in ((self.sip, self.cip), (self.sip4, self.cip4)):
            self.assert_echo_ok(server, client, INTERCEPTED, 4 * MIB)
            entry = self.proxied(server, INTERCEPTED)[-1]
            self.assertEqual((entry["src_pod"], entry["dst_pod"]), (self.client, self.server), entry)
            self.assertEqual(entry["datapath"], "sockmap", entry)

    def test_rules_by_pod_name_cover_both_families(self):
        for server in (self.sip, self.sip4):
            self.assertEqual(self.echo(server, L4_DENIED), ["error", "reset"], server)
            self.assertEqual(self.echo(server, BPF_DENIED, timeout=2), ["error", "timeout"], server)
            self.assertEqual(self.curl(server, "/admin"), (403, "Access denied\n"))

    def test_direct_both_families(self):
        for server, client in ((self.sip, self.cip), (self.sip4, self.cip4)):
            self.assert_echo_ok(server, client, DIRECT)
        self.assertFalse(self.proxied(self.sip, DIRECT, settle=0) + self.proxied(self.sip4, DIRECT, settle=0))


class PodAddBadInput(unittest.TestCase):
    def test_bad_ipv6_input_exits_1_with_one_line(self):
        name = PodLab("6").name("x")
        for ips in (["fd53::2"], ["fd53::2/129"], ["fe80::5/64"], ["ff02::1/64"], ["::ffff:10.0.0.1/120"],
                    ["fd53::2/64", "fd53::3/64"], ["10.219.0.2/24", "10.219.0.3/24"]):
            r = run(SHUNT_BIN, "pod", "add", name, *[a for ip in ips for a in ("--ip", ip)])
            self.assertEqual(r.returncode, 1, "%s: %s" % (ips, r.stderr))
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, "%s: %r" % (ips, r.stderr))
            self.assertNotIn(name, run("ip", "netns", "list").stdout)


class NothingLeftBehind(Lab):
    ON_PROXY_DOWN = "fail_closed"

    def test_fail_closed_exit_then_pod_del(self):
        self.assert_echo_ok(self.sip, self.cip, INTERCEPTED)
        self.assertEqual(self.stop_shunt(), 0, "shunt did not exit 0 on SIGTERM")
        # fail_closed holds for IPv6 too: intercepted dropped, the rest flows.
        self.assertEqual(self.echo(self.sip, INTERCEPTED, timeout=2), ["error", "timeout"])
        self.assert_echo_ok(self.sip, self.cip, DIRECT)
        self.assertTrue(os.path.exists(os.path.join(STEER_PIN_ROOT, "sh-" + self.client, "tcx")))
        for family in ("-4", "-6"):
            self.assertNotIn(STEER_MARK, run("ip", family, "rule").stdout)
            self.assertEqual(run("ip", family, "route", "show", "table", STEER_TABLE).stdout.strip(), "")

        self.lab.kill_peers()
        for name in (self.client, self.server):
            r = self.lab.delete(name)
            self.assertEqual(r.returncode, 0, r.stderr)
        deadline = time.monotonic() + 5  # programs are freed asynchronously
        while self.our_progs & set(steering_programs()) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertFalse(self.our_progs & set(steering_programs()), "steering programs still loaded")
        for name, ip in ((self.client, self.cip), (self.server, self.sip)):
            self.assertFalse(os.path.exists(os.path.join(STEER_PIN_ROOT, "sh-" + name)))
            self.assertNotIn(name, run("ip", "netns", "list").stdout)
            self.assertNotEqual(run("ip", "link", "show", "sh-" + name).returncode, 0)
            self.assertEqual(run("ip", "-6", "route", "show", ip).stdout.strip(), "")
            self.assertNotIn("sh-" + name, run("bpftool", "net").stdout)
            self.assertNotIn(name, run(SHUNT_BIN, "pod", "list").stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)

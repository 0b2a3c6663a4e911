"""`shunt pod add|del|list`: lab pods over rtnetlink, on this host's kernel.

Each test creates its own pods (unique names and a /24 of its own), checks
the kernel state with iproute2 and real traffic between pods, and removes
everything it made, also when it fails. Needs root; fails without it.
"""
import os
import random
import re
import subprocess
import unittest

from shunt_harness import POD_ECHO, POD_SERVE, SHUNT_BIN


def run(*args, check=False, timeout=30):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=check)


def shunt(*args):
    return run(SHUNT_BIN, *args)


def kernel_has_netkit():
    probe = run("ip", "link", "add", "shnkprobe0", "type", "netkit")
    if probe.returncode == 0:
        run("ip", "link", "del", "shnkprobe0")
        return True
    return False


class Pods:
    """Creates pods through `shunt pod add` and guarantees their removal."""

    def __init__(self, test):
        self.test = test
        self.names = []
        self.procs = []
        self.tag = "%03d" % random.randint(0, 999)
        self.net = "10.%d.%d" % (random.randint(201, 209), random.randint(0, 254))

    def name(self, role):
        return "p%s%s" % (self.tag, role)

    def ip(self, host):
        return "%s.%d" % (self.net, host)

    def add(self, role, host, *extra):
        name = self.name(role)
        self.names.append(name)
        r = shunt("pod", "add", name, "--ip", "%s/24" % self.ip(host), *extra)
        return name, r

    def spawn(self, name, argv, *args):
        p = subprocess.Popen(["ip", "netns", "exec", name, *argv, *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        if argv is POD_SERVE:
            line = p.stdout.readline()
            if "listening" not in line:
                raise AssertionError("echo server in %s did not start: %s %s" % (name, line, p.stderr.read()))
        return p

    def exec(self, name, *cmd, timeout=60):
        return run("ip", "netns", "exec", name, *cmd, timeout=timeout)

    def cleanup(self):
        for p in self.procs:
            p.kill()
            p.wait()
        for name in self.names:
            shunt("pod", "del", name)
            # Safety net if `pod del` itself is what broke.
            run("ip", "link", "del", "sh-" + name)
            run("ip", "netns", "del", name)


class PodTests(unittest.TestCase):
    def setUp(self):
        if os.geteuid() != 0:
            self.fail("needs root (network namespaces, rtnetlink)")
        self.pods = Pods(self)
        self.addCleanup(self.pods.cleanup)

    def test_add_wires_pod_and_says_which_device(self):
        name, r = self.pods.add("a", 2)
        self.assertEqual(r.returncode, 0, r.stderr)
        netkit = kernel_has_netkit()
        if netkit:
            self.assertIn("netkit", r.stdout)
        else:
            self.assertIn("veth", r.stdout)
            self.assertIn("netkit not supported by this kernel", r.stdout)
        self.assertIn(name, run("ip", "netns", "list").stdout)
        link = run("ip", "-d", "link", "show", "sh-" + name)
        self.assertEqual(link.returncode, 0, link.stderr)
        self.assertIn("state UP", link.stdout)
        self.assertIn("netkit" if netkit else "veth", link.stdout)
        addr = self.pods.exec(name, "ip", "-4", "addr", "show", "eth0").stdout
        self.assertIn("inet %s/24" % self.pods.ip(2), addr)
        self.assertIn("default dev eth0", self.pods.exec(name, "ip", "route").stdout)
        self.assertRegex(run("ip", "route", "show", self.pods.ip(2)).stdout, r"dev sh-%s\b" % name)
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            self.assertEqual(f.read().strip(), "1")

    def test_forced_veth(self):
        name, r = self.pods.add("v", 2, "--type", "veth")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("veth", r.stdout)
        self.assertIn("--type veth requested", r.stdout)
        self.assertIn("veth", run("ip", "-d", "link", "show", "sh-" + name).stdout)

    def test_forced_netkit_without_kernel_support_is_environment_error(self):
        if kernel_has_netkit():
            name, r = self.pods.add("n", 2, "--type", "netkit")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("netkit", r.stdout)
            return
        name, r = self.pods.add("n", 2, "--type", "netkit")
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("netkit not supported by this kernel", r.stderr)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        # Nothing half-made stays behind.
        self.assertNotIn(name, run("ip", "netns", "list").stdout)
        self.assertNotEqual(run("ip", "link", "show", "sh-" + name).returncode, 0)

    def test_pod_to_pod_traffic_both_ways(self):
        client, r1 = self.pods.add("c", 2)
        server, r2 = self.pods.add("s", 3)
        self.assertEqual((r1.returncode, r2.returncode), (0, 0), r1.stderr + r2.stderr)
        self.pods.spawn(server, POD_SERVE, self.pods.ip(3), "9000")
        out = self.pods.exec(client, *POD_ECHO, self.pods.ip(3), "9000", str(4 << 20))
        self.assertEqual(out.returncode, 0, out.stderr)
        peer, sent, got, n = out.stdout.split()
        self.assertEqual(peer, "peer=" + self.pods.ip(2))
        self.assertEqual(sent, got)
        self.assertEqual(int(n), 4 << 20)

    def test_list_shows_name_type_address_device(self):
        name, r = self.pods.add("l", 4)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = shunt("pod", "list")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertRegex(out.stdout, r"(?m)^%s\s+(netkit|veth)\s+%s/24\s+sh-%s$" % (name, re.escape(self.pods.ip(4)), name))

    def test_del_removes_everything(self):
        name, r = self.pods.add("d", 5)
        self.assertEqual(r.returncode, 0, r.stderr)
        d = shunt("pod", "del", name)
        self.assertEqual(d.returncode, 0, d.stderr)
        self.assertNotIn(name, run("ip", "netns", "list").stdout)
        self.assertFalse(os.path.exists("/run/netns/" + name))
        self.assertNotEqual(run("ip", "link", "show", "sh-" + name).returncode, 0)
        self.assertEqual(run("ip", "route", "show", self.pods.ip(5)).stdout.strip(), "")
        self.assertNotIn(name, shunt("pod", "list").stdout)

    def test_bad_input_exits_1_with_one_line(self):
        cases = [
            ("pod", "add", "x" * 13, "--ip", "10.209.0.2/24"),
            ("pod", "add", "bad/name", "--ip", "10.209.0.2/24"),
            ("pod", "add", "okname", "--ip", "10.209.0.2"),
            ("pod", "add", "okname", "--ip", "10.209.0.300/24"),
            ("pod", "del", "p%snosuch" % self.pods.tag),
        ]
        for args in cases:
            r = shunt(*args)
            self.assertEqual(r.returncode, 1, "%s: %s" % (args, r.stderr))
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, "%s: %r" % (args, r.stderr))

    def test_duplicate_add_is_bad_input(self):
        name, r = self.pods.add("u", 6)
        self.assertEqual(r.returncode, 0, r.stderr)
        again = shunt("pod", "add", name, "--ip", "%s/24" % self.pods.ip(7))
        self.assertEqual(again.returncode, 1, again.stderr)
        self.assertIn("already exists", again.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)

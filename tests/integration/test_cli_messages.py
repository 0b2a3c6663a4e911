"""The CLI's first-contact messages (issue 11): an unknown command, `shunt
help` and `--version` answer as such instead of "A subcommand is required";
`check -c DIR` and a tab in the YAML name their cause; `shunt version` run
unprivileged says the probes need privileges instead of "not supported";
`shunt run` prints no raw libbpf lines, names the data path actually in use
and the capabilities actually held, and says an errno once; /metrics exports
every labelled counter with a known label set at 0 from the start."""
import os
import subprocess
import tempfile
import time
import unittest

from admin_helpers import scrape, wait_ready
from shunt_harness import SHUNT_BIN, free_port, require_root, run_tests

# The unprivileged user the "run as a normal user" checks take.
UNPRIVILEGED = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def shunt(*args):
    return subprocess.run([SHUNT_BIN, *args], capture_output=True, text=True, timeout=30)


class CliMessages(unittest.TestCase):
    def test_unknown_command_names_the_commands(self):
        r = shunt("bogus")
        self.assertEqual(r.returncode, 1)
        self.assertIn("unknown command 'bogus'", r.stderr)
        self.assertIn("run, check", r.stderr)
        self.assertNotIn("subcommand is required", r.stderr)

    def test_help_and_version(self):
        r = shunt("help")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Usage: shunt", r.stdout)
        self.assertIn("explain", r.stdout)
        r = shunt("--version")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"^shunt \d+\.\d+")

    def test_check_a_directory(self):
        with tempfile.TemporaryDirectory() as d:
            r = shunt("check", "-c", d)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("is a directory", r.stdout + r.stderr)
        self.assertNotIn("empty", r.stdout + r.stderr)

    def test_grpc_entries_in_check_and_explain(self):
        conf = (
            "proxy:\n  listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]\n"
            "pods:\n  - {name: web, ip: 10.9.0.2}\n  - {name: api, ip: 10.9.0.3}\n"
            "policy:\n  rules:\n"
            "    - {name: g, from: {pod: web}, to: {pod: api, ports: [9090]}, action: allow,\n"
            "       grpc: [shop.Cart/GetCart, shop.Catalog/*]}\n")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(conf)
            f.flush()
            r = shunt("check", "-c", f.name)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertRegex(r.stdout, r"g +allow +http \(2 gRPC entries\)")
            flow = ["--from", "10.9.0.2", "--to", "10.9.0.3:9090", "--method", "POST"]
            r = shunt("explain", "-c", f.name, *flow, "--path", "/shop.Catalog/List")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("verdict:    allow (rule g)", r.stdout)
            self.assertIn("grpc entry shop.Catalog/* matches: allow", r.stdout)
            r = shunt("explain", "-c", f.name, *flow, "--path", "/shop.Cart/Purge")
            self.assertIn("verdict:    deny (rule default)", r.stdout)
            self.assertIn("grpc entry shop.Cart/GetCart: path /shop.Cart/Purge is not /shop.Cart/GetCart", r.stdout)
            f.seek(0)
            f.truncate()
            f.write(conf.replace("shop.Catalog/*", "/shop.Catalog/*"))
            f.flush()
            r = shunt("check", "-c", f.name)
        self.assertEqual(r.returncode, 1)
        self.assertIn(":9:34: ", r.stdout + r.stderr)
        self.assertIn("grpc entry '/shop.Catalog/*' must be 'package.Service/Method'", r.stdout + r.stderr)

    def test_tab_in_yaml_is_named(self):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write("proxy:\n  listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]\nlog:\n\tlevel: info\n")
            f.flush()
            r = shunt("check", "-c", f.name)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("line 4 has a tab", r.stdout + r.stderr)


    def test_version_unprivileged_names_the_permission(self):
        r = subprocess.run([*UNPRIVILEGED, SHUNT_BIN, "version"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = {l.split()[0]: l for l in r.stdout.splitlines() if l.startswith("  ")}
        for name in ("sockmap", "tcx", "netkit"):
            self.assertRegex(lines[name], r"^  \S+\s+\?\s+not probed: loading BPF needs CAP_BPF", r.stdout)
        self.assertIn("not probed", lines["sk_skb"])
        self.assertNotIn("not supported", r.stdout)
        self.assertNotIn("libbpf:", r.stdout + r.stderr)

    def test_version_as_root_says_what_a_missing_hook_means(self):
        r = shunt("version")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("Invalid argument", r.stdout)
        for line in r.stdout.splitlines():
            if line.split()[:1] in (["tcx"], ["netkit"]) and line.split()[1] == "no":
                # The kernel lacks it: say so and what shunt does instead.
                self.assertRegex(line, r"kernel (has none \(needs Linux 6\.\d\+\)|built without it \(CONFIG_\w+\)): ")
                self.assertRegex(line, r"veth|tc \(clsact\)")


def run_config(datapath, admin, access="stdout"):
    listen, forward = free_port(), free_port()
    return f"""
proxy:
  datapath: {datapath}
  listeners: [{{name: p, listen: 127.0.0.1:{listen}, forward: 127.0.0.1:{forward}}}]
  limits: {{max_connections: 1000}}
admin: {{listen: 127.0.0.1:{admin}}}
log: {{level: info, access: {access}}}
policy:
  default: deny
  rules:
    - {{name: l4-allow, from: {{cidr: 127.0.0.0/8}}, to: {{cidr: 127.0.0.1/32, ports: [{forward}]}}, action: allow}}
    - {{name: l4-deny, from: {{cidr: 10.0.0.0/8}}, to: {{cidr: 127.0.0.1/32}}, action: deny}}
"""


class RunMessages(unittest.TestCase):
    """`shunt run` as root and as nobody: its start-up lines, then /metrics."""

    @classmethod
    def setUpClass(cls):
        require_root()

    def start(self, datapath, unprivileged=False, access="stdout"):
        d = tempfile.TemporaryDirectory(prefix="shunt-cli-")
        self.addCleanup(d.cleanup)
        os.chmod(d.name, 0o755)  # nobody reads the config
        admin = free_port()
        path = os.path.join(d.name, "shunt.yaml")
        with open(path, "w") as f:
            f.write(run_config(datapath, admin, access))
        os.chmod(path, 0o644)
        log = open(os.path.join(d.name, "out.log"), "w+")
        self.addCleanup(log.close)
        cmd = [*(UNPRIVILEGED if unprivileged else []), SHUNT_BIN, "run", "-c", path]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

        def stop():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

        self.addCleanup(stop)

        def output():
            log.flush()
            log.seek(0)
            return log.read()

        return proc, admin, output

    def started(self, datapath, unprivileged=False):
        proc, admin, output = self.start(datapath, unprivileged)
        wait_ready(admin, proc)
        deadline = time.monotonic() + 5
        while "running: datapath" not in output() and time.monotonic() < deadline:
            time.sleep(0.05)
        return admin, output()

    def test_copy_as_root_loads_no_bpf_and_says_what_it_holds(self):
        _, out = self.started("copy")
        self.assertIn("running: datapath copy,", out)
        self.assertNotIn("libbpf:", out)
        self.assertNotIn("sockmap", out)
        self.assertIn("capabilities reduced to cap_net_admin, cap_bpf", out)
        self.assertNotIn("at most", out)

    def test_sockmap_unprivileged_falls_back_and_says_so(self):
        _, out = self.started("sockmap", unprivileged=True)
        self.assertNotIn("libbpf:", out)
        self.assertIn("sockmap data path unavailable", out)
        self.assertIn("needs CAP_BPF", out)
        self.assertIn("running: datapath splice (sockmap unavailable),", out)
        self.assertIn("capabilities: none held", out)
        self.assertNotIn("capabilities reduced", out)

    def test_errno_said_once(self):
        # Under a regular file: spdlog creates missing directories, but
        # cannot make a file into one.
        with tempfile.NamedTemporaryFile() as f:
            target = f.name + "/access.log"
            proc, _, output = self.start("copy", access=target)
            self.assertEqual(proc.wait(timeout=30), 2)
        out = output()
        self.assertIn("open access log " + target, out)
        self.assertIn("log.access takes a writable file", out)
        self.assertEqual(out.count("Not a directory"), 1, out)

    def test_known_label_sets_exported_at_zero_from_the_start(self):
        admin, _ = self.started("sockmap")
        samples = scrape(admin)  # parses strictly: HELP/TYPE first, no repeats

        def has(name, **labels):
            key = (name, frozenset(labels.items()))
            self.assertIn(key, samples, f"{name}{labels} missing")
            self.assertEqual(samples[key], 0, f"{name}{labels}")

        for dp in ("sockmap", "splice", "copy"):
            has("shunt_connections_active", datapath=dp)
            for direction in ("up", "down"):
                has("shunt_bytes_total", direction=direction, datapath=dp)
        for verdict in ("allow", "deny"):
            has("shunt_connections_total", verdict=verdict)
            for protocol in ("h1", "h2"):
                has("shunt_http_requests_total", verdict=verdict, protocol=protocol)
        # Every rule of the running config with its verdict, and the default.
        has("shunt_policy_decisions_total", rule="l4-allow", verdict="allow")
        has("shunt_policy_decisions_total", rule="l4-deny", verdict="deny")
        has("shunt_policy_decisions_total", rule="default", verdict="deny")
        for result in ("ok", "error"):
            has("shunt_config_reloads_total", result=result)
        for reason in ("sockmap_unavailable", "socket_state", "map_full", "other", "partial_handover"):
            has("shunt_datapath_fallbacks_total", reason=reason)
        for reason in ("client_closed", "upstream_closed", "client_reset", "upstream_reset", "policy_deny",
                       "bad_request", "request_timeout", "revoked", "upstream_connect_failed", "idle_timeout",
                       "keepalive_timeout", "refuse_timeout", "handover_failed", "shutdown"):
            has("shunt_connection_ends_total", reason=reason)
        for reason in ("max_connections", "source_limit"):
            has("shunt_connections_refused_total", reason=reason)
        for reason in ("connect_refused", "connect_timeout", "connect_unreachable", "connect_error"):
            has("shunt_upstream_failures_total", reason=reason)
        for result in ("granted", "refused"):
            has("shunt_buffer_boosts_total", result=result)


if __name__ == "__main__":
    run_tests()

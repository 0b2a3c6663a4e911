"""scripts/demo's assertions, in lab pods of this test's own (random names and
/24, free ports), so it can run beside other tests: config/examples/lab.yaml
with the pods renamed; the demo's upstream (scripts/lab_upstream.py, which
listens without a DNS lookup) in the api pod; the allowed request gets 200
and the upstream logs it, the denied one gets 403 and never reaches the
upstream; `shunt explain` names the denying rule; `shunt status` and `shunt
conns` answer while a connection is open. Needs root."""
import os
import random
import re
import subprocess
import tempfile
import time
import unittest

from admin_helpers import wait_ready
from shunt_harness import PY, SHUNT_BIN, SOURCE_DIR, PodLab, Shunt, free_port, run, run_tests

LAB = os.path.join(SOURCE_DIR, "config/examples/lab.yaml")
UPSTREAM = os.path.join(SOURCE_DIR, "scripts/lab_upstream.py")


def lab_config(web, api, net, ports):
    """lab.yaml for pods `web` and `api` in `net`.0/24 on free ports; only the
    names, addresses and ports change, the policy is the demo's."""
    text = open(LAB).read()
    text = text.replace("10.200.0.", net + ".")
    for old, new in (("name: web", "name: " + web), ("name: api", "name: " + api), ("pod: web", "pod: " + web),
                     ("pod: api", "pod: " + api), ("dev: sh-web", "dev: sh-" + web),
                     ("dev: sh-api", "dev: sh-" + api)):
        assert old in text, old
        text = text.replace(old, new)
    for old, new in zip(("127.0.0.1:15001", "127.0.0.1:16001", "127.0.0.1:15000"), ports):
        assert old in text, old
        text = text.replace(old, "127.0.0.1:%d" % new)
    return text


class Demo(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.lab = PodLab(prefix="d")
        cls.addClassCleanup(cls.lab.cleanup)
        cls.net = "10.%d.%d" % (random.randint(210, 219), random.randint(0, 254))
        cls.web, r = cls.lab.add("web", cls.net + ".2/24")
        assert r.returncode == 0, r.stderr
        cls.api, r = cls.lab.add("api", cls.net + ".3/24")
        assert r.returncode == 0, r.stderr
        cls.www = tempfile.TemporaryDirectory(prefix="shunt-demo-www-")
        cls.addClassCleanup(cls.www.cleanup)
        os.makedirs(os.path.join(cls.www.name, "api/admin"))
        with open(os.path.join(cls.www.name, "api/hello"), "w") as f:
            f.write('{"hello": "from api"}\n')
        with open(os.path.join(cls.www.name, "api/admin/keys"), "w") as f:
            f.write("secret\n")
        cls.listen, cls.bench, cls.admin = free_port(), free_port(), free_port()
        cls.config = lab_config(cls.web, cls.api, cls.net, (cls.listen, cls.bench, cls.admin))
        cls.shunt = Shunt(cls.config, wait_port=cls.admin)
        cls.addClassCleanup(cls.shunt.__exit__, None, None, None)
        wait_ready(cls.admin)
        # The upstream must say "listening" at once: no reverse-DNS wait.
        started = time.monotonic()
        cls.upstream = subprocess.Popen(
            ["ip", "netns", "exec", cls.api, PY, UPSTREAM, cls.net + ".3", "8080", cls.www.name],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        cls.lab.procs.append(cls.upstream)
        cls.addClassCleanup(cls.upstream.stdout.close)
        first = cls.upstream.stdout.readline().strip()
        cls.startup_s = time.monotonic() - started
        assert first == "listening", first

    def curl(self, path):
        r = self.lab.exec(self.web, "curl", "-sS", "-i", "--max-time", "5",
                          "http://%s.3:8080%s" % (self.net, path))
        # text mode: curl's CRLFs arrive as \n.
        head, _, body = r.stdout.partition("\n\n")
        m = re.match(r"HTTP/1\.[01] (\d{3})", head)
        return (int(m.group(1)) if m else None), head, body

    def upstream_line(self):
        return self.upstream.stdout.readline().strip()

    def test_upstream_listens_without_dns_delay(self):
        self.assertLess(self.startup_s, 2.0)

    def test_allowed_200_and_denied_403_as_the_upstream_saw_them(self):
        status, _, body = self.curl("/api/hello")
        self.assertEqual(status, 200)
        self.assertEqual(body, '{"hello": "from api"}\n')
        self.assertEqual(self.upstream_line(), "GET /api/hello 200")
        status, head, body = self.curl("/api/admin/keys")
        self.assertEqual(status, 403, head)
        self.assertNotIn("secret", body)
        # The next line the upstream logs is this request, not the denied one.
        status, _, _ = self.curl("/api/hello?after")
        self.assertEqual(status, 200)
        self.assertEqual(self.upstream_line(), "GET /api/hello?after 200")

    def test_explain_names_the_denying_rule(self):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(self.config)
            f.flush()
            r = run(SHUNT_BIN, "explain", "-c", f.name, "--from", self.net + ".2", "--to", self.net + ".3:8080",
                    "--method", "GET", "--path", "/api/admin/keys")
        self.assertIn("no-api-admin", r.stdout)
        self.assertRegex(r.stdout, r"(?i)deny")

    def test_status_and_conns_while_traffic_runs(self):
        # A connection held open through the proxy: the allowed request's
        # keep-alive connection, idle between requests.
        script = ("import socket,sys,time; s=socket.create_connection((sys.argv[1],8080));"
                  "s.sendall(b'GET /api/hello HTTP/1.1\\r\\nHost: api\\r\\n\\r\\n'); s.recv(4096);"
                  "print('sent',flush=True); time.sleep(30)")
        holder = subprocess.Popen(["ip", "netns", "exec", self.web, PY, "-c", script, self.net + ".3"],
                                  stdout=subprocess.PIPE, text=True)
        self.addCleanup(lambda: (holder.kill(), holder.wait(), holder.stdout.close()))
        self.assertEqual(holder.stdout.readline().strip(), "sent")
        status = run(SHUNT_BIN, "status", "--admin", "127.0.0.1:%d" % self.admin)
        self.assertEqual(status.returncode, 0, status.stderr)
        self.assertIn("admin", status.stdout)
        conns = run(SHUNT_BIN, "conns", "--admin", "127.0.0.1:%d" % self.admin)
        self.assertEqual(conns.returncode, 0, conns.stderr)
        self.assertIn(self.net + ".2", conns.stdout)
        self.assertIn("web-to-api", conns.stdout)


if __name__ == "__main__":
    run_tests()

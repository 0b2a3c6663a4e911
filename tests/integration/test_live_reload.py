"""Live policy through a real shunt: an edit of the config file (editor
rename, Kubernetes ConfigMap `..data` symlink swap) re-checks open
connections. A kernel-spliced (sockmap) connection whose L4 rule is removed
is reset, and the file-change-to-reset latency is measured; an HTTP
keep-alive connection gets 403 for its next request after an edit, or is
reset when its last request is no longer allowed; a TLS connection whose
SNI is no longer allowed is reset; a broken edit changes nothing."""
import os
import signal
import socket
import ssl
import statistics
import tempfile
import time
import unittest

from admin_helpers import get_json, scrape, value
from http_peers import Origin, read_response, request
from shunt_harness import Shunt, ThreadedServer, echo_handler, free_port, proxy_config, rule, run_tests
from test_tls_policy import TlsEchoOrigin, client_context, make_certificate

# SPEC says 100 ms; the bound asserted here leaves room for a noisy 2-core
# machine, and the measured latency is printed.
REVOKE_BOUND_S = 1.0


def config(p, *, echo_rule=True, http=("{method: GET, path: /api/}",), sni=("api.example.com",)):
    rules = []
    if echo_rule:
        rules.append(rule("echo-l4", p["echo"]))
    if http:
        rules.append(rule("api-http", p["origin"], http=list(http)))
    if sni:
        rules.append(rule("api-tls", p["tls_origin"], tls=f"{{sni: [{', '.join(sni)}]}}"))
    return proxy_config(
        [("echo", p["echo_listen"], p["echo"]), ("http", p["http_listen"], p["origin"]),
         ("tls", p["tls_listen"], p["tls_origin"])],
        rules, datapath="sockmap", timeouts={"header": "5s"}, admin=p["admin"], access="off")


class LiveReload(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cert, key = make_certificate(cls.tmp.name)
        cls.echo = ThreadedServer(echo_handler)
        cls.origin = Origin()
        cls.tls_origin = TlsEchoOrigin(cert, key)

    @classmethod
    def tearDownClass(cls):
        cls.echo.close()
        cls.origin.close()
        cls.tls_origin.close()
        cls.tmp.cleanup()

    def setUp(self):
        self.p = dict(echo=self.echo.port, origin=self.origin.port, tls_origin=self.tls_origin.port,
                      echo_listen=free_port(), http_listen=free_port(), tls_listen=free_port(), admin=free_port())

    def start(self, **kw):
        return Shunt(config(self.p, **kw), wait_port=self.p["echo_listen"])

    def generation(self):
        return value(scrape(self.p["admin"]), "shunt_config_generation")

    def wait_generation(self, at_least, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.generation() >= at_least:
                return
            time.sleep(0.02)
        self.fail(f"config generation did not reach {at_least}")

    def open_echo(self):
        s = socket.create_connection(("127.0.0.1", self.p["echo_listen"]), timeout=10)
        s.sendall(b"ping")
        self.assertEqual(s.recv(4), b"ping")
        return s

    def wait_reset(self, s, started, timeout=5):
        """Seconds from `started` until `s` sees the reset."""
        s.settimeout(timeout)
        try:
            data = s.recv(1)
        except ConnectionResetError:
            return time.monotonic() - started
        self.fail(f"connection not reset (recv returned {data!r})")

    # ---------------------------------------------------------------- tests

    def test_removed_rule_resets_a_sockmap_connection(self):
        latencies = []
        with self.start() as shunt:
            self.wait_generation(1)
            for round_ in range(3):
                s = self.open_echo()
                # The echo can come back through the kernel before the proxy
                # thread has recorded the hand-over: wait for it.
                deadline = time.monotonic() + 5
                while True:
                    conns = [c for c in get_json(self.p["admin"], "/connections") if c["rule"] == "echo-l4"]
                    if [c["datapath"] for c in conns] == ["sockmap"] or time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
                self.assertEqual([c["datapath"] for c in conns], ["sockmap"])
                generation = self.generation()
                started = time.monotonic()
                shunt.write_config(config(self.p, echo_rule=False))
                latencies.append(self.wait_reset(s, started))
                s.close()
                self.wait_generation(generation + 1)
                # New connections are denied (reset) under the new policy.
                with self.assertRaises(ConnectionResetError):
                    with socket.create_connection(("127.0.0.1", self.p["echo_listen"]), timeout=5) as d:
                        d.sendall(b"x")
                        d.recv(1)
                shunt.write_config(config(self.p))
                self.wait_generation(generation + 2)
        print(f"reload-to-reset latency (sockmap, L4 rule removed): "
              f"{', '.join(f'{x * 1000:.0f} ms' for x in latencies)}; median {statistics.median(latencies) * 1000:.0f} ms")
        self.assertLess(max(latencies), REVOKE_BOUND_S, latencies)

    def reloads(self, result):
        return value(scrape(self.p["admin"]), "shunt_config_reloads_total", result=result)

    def test_one_reload_per_edit_however_announced(self):
        """inotify and SIGHUP for the same edit are one generation (or one
        error), whether the SIGHUP comes at once or later."""
        with self.start() as shunt:
            self.wait_generation(1)
            # Edit, then SIGHUP at once (inside the coalescing window).
            shunt.write_config(config(self.p, echo_rule=False))
            shunt.proc.send_signal(signal.SIGHUP)
            self.wait_generation(2)
            # ... and a SIGHUP well after it: the same bytes, nothing to do.
            time.sleep(0.3)
            shunt.proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            self.assertEqual(self.generation(), 2)
            self.assertEqual(self.reloads("ok"), 1)
            self.assertEqual(self.reloads("error"), 0)
            # A broken edit announced both ways is one error.
            shunt.write_config(config(self.p) + "  bogus_key: [\n")
            shunt.proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            shunt.proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            self.assertEqual(self.reloads("error"), 1)
            self.assertEqual(self.generation(), 2)
            # Fixed: one more generation.
            shunt.write_config(config(self.p))
            self.wait_generation(3)
            time.sleep(0.5)
            self.assertEqual(self.generation(), 3)
            self.assertEqual(self.reloads("ok"), 2)
            self.assertIn("file unchanged", shunt.output())

    def test_keepalive_next_request_denied_after_edit(self):
        with self.start() as shunt:
            with socket.create_connection(("127.0.0.1", self.p["http_listen"]), timeout=10) as s:
                f = s.makefile("rb")
                s.sendall(request("GET", "/api/one"))
                self.assertEqual(read_response(f).status, 200)
                shunt.write_config(config(self.p, http=("{method: GET, path_exact: /api/one}",)))
                self.wait_generation(2)
                # The last request is still allowed: the connection stays.
                s.sendall(request("GET", "/api/one"))
                self.assertEqual(read_response(f).status, 200)
                s.sendall(request("GET", "/api/two"))
                r = read_response(f)
                self.assertEqual((r.status, r.body), (403, b"Access denied\n"))

    def test_keepalive_last_request_denied_is_reset(self):
        with self.start() as shunt:
            with socket.create_connection(("127.0.0.1", self.p["http_listen"]), timeout=10) as s:
                f = s.makefile("rb")
                s.sendall(request("GET", "/api/kept"))
                self.assertEqual(read_response(f).status, 200)
                started = time.monotonic()
                shunt.write_config(config(self.p, http=("{method: GET, path: /other/}",)))
                latency = self.wait_reset(s, started)
        print(f"reload-to-reset latency (HTTP keep-alive, last request now denied): {latency * 1000:.0f} ms")
        self.assertLess(latency, REVOKE_BOUND_S)

    def test_sni_no_longer_allowed_is_reset(self):
        with self.start() as shunt:
            raw = socket.create_connection(("127.0.0.1", self.p["tls_listen"]), timeout=10)
            # A reset must surface as an error, not as a quiet end of stream.
            with client_context().wrap_socket(raw, server_hostname="api.example.com",
                                              suppress_ragged_eofs=False) as tls:
                tls.sendall(b"hello\n")
                self.assertEqual(tls.recv(6), b"hello\n")
                started = time.monotonic()
                shunt.write_config(config(self.p, sni=("other.example.com",)))
                tls.settimeout(5)
                with self.assertRaises((ConnectionResetError, ssl.SSLError)):
                    tls.recv(1)
                latency = time.monotonic() - started
        print(f"reload-to-reset latency (TLS, SNI no longer allowed): {latency * 1000:.0f} ms")
        self.assertLess(latency, REVOKE_BOUND_S)

    def test_broken_edit_keeps_the_old_policy(self):
        with self.start() as shunt:
            s = self.open_echo()
            with socket.create_connection(("127.0.0.1", self.p["http_listen"]), timeout=10) as h:
                f = h.makefile("rb")
                h.sendall(request("GET", "/api/before"))
                self.assertEqual(read_response(f).status, 200)
                errors = value(scrape(self.p["admin"]), "shunt_config_reloads_total", result="error")
                shunt.write_config(config(self.p, echo_rule=False).replace("policy:\n", "policy: [unclosed\n"))
                deadline = time.monotonic() + 10
                while value(scrape(self.p["admin"]), "shunt_config_reloads_total", result="error") == errors:
                    self.assertLess(time.monotonic(), deadline, "the broken edit was not noticed")
                    time.sleep(0.02)
                self.assertEqual(self.generation(), 1)
                self.assertRegex(shunt.output(), r"shunt\.yaml:\d+:\d+: ")
                # Existing connections untouched, both kinds.
                for i in range(5):
                    s.sendall(b"still %d" % i)
                    self.assertEqual(s.recv(7), b"still %d" % i)
                h.sendall(request("GET", "/api/after"))
                self.assertEqual(read_response(f).status, 200)
            # New connections under the old policy.
            self.open_echo().close()
            s.close()

    def test_configmap_symlink_swap_reloads(self):
        with self.start() as shunt:
            s = self.open_echo()
            # Lay the directory out as a ConfigMap volume: shunt.yaml ->
            # ..data/shunt.yaml, ..data -> ..v1 (same content: no reload).
            d = os.path.dirname(shunt.config_path)
            with open(shunt.config_path) as f:
                text = f.read()
            for version, content in (("..v1", text),):
                os.mkdir(os.path.join(d, version))
                with open(os.path.join(d, version, "shunt.yaml"), "w") as f:
                    f.write(content)
            os.symlink("..v1", os.path.join(d, "..data"))
            os.symlink("..data/shunt.yaml", os.path.join(d, "shunt.yaml.link"))
            os.rename(os.path.join(d, "shunt.yaml.link"), shunt.config_path)
            time.sleep(0.3)
            self.assertEqual(self.generation(), 1)
            s.sendall(b"same")
            self.assertEqual(s.recv(4), b"same")

            # The kubelet's update: a new timestamped directory, a new
            # ..data_tmp link to it, renamed over ..data.
            os.mkdir(os.path.join(d, "..v2"))
            with open(os.path.join(d, "..v2", "shunt.yaml"), "w") as f:
                f.write(config(self.p, echo_rule=False))
            os.symlink("..v2", os.path.join(d, "..data_tmp"))
            started = time.monotonic()
            os.rename(os.path.join(d, "..data_tmp"), os.path.join(d, "..data"))
            latency = self.wait_reset(s, started)
            s.close()
            self.wait_generation(2)
        print(f"reload-to-reset latency (ConfigMap ..data swap): {latency * 1000:.0f} ms")
        self.assertLess(latency, REVOKE_BOUND_S)


if __name__ == "__main__":
    run_tests()

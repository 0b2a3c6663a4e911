"""TLS inspection through a real shunt: the ClientHello's SNI decides
(exact, wildcard, deny winning, no SNI), clients are `openssl s_client
-servername` and Python's ssl module against a Python TLS echo origin with a
certificate made at test time; ClientHellos split across TCP segments; no
hello in time and non-TLS bytes are reset; the connection then runs on the
data path (sockmap; a subset on splice and copy)."""
import hashlib
import os
import select
import socket
import ssl
import subprocess
import tempfile
import time

from admin_helpers import get_json
from shunt_harness import (ThreadedServer, closing, free_port, pattern, pattern_digest, per_datapath, proxy_config,
                           rule, run_tests, start_class_shunt)

MIB = 1024 * 1024


def make_certificate(directory):
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=api.example.com",
                    "-addext", "subjectAltName=DNS:api.example.com,DNS:*.example.com"],
                   check=True, capture_output=True)
    return cert, key


class TlsEchoOrigin:
    """Accepts TLS, echoes bytes until the client's close_notify or EOF.
    Records the SNI of every handshake it completes."""

    def __init__(self, cert, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.names = []
        self.ctx.sni_callback = lambda sock, name, ctx: self.names.append(name) and None
        self.accepted = 0
        self.server = ThreadedServer(self._handle)
        self.port = self.server.port

    def _handle(self, conn):
        self.accepted += 1
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # echoes are small writes: no Nagle delay
        tls = self.ctx.wrap_socket(conn, server_side=True)
        while True:
            try:
                data = tls.recv(1 << 16)
            except (ssl.SSLEOFError, ConnectionResetError):
                break
            if not data:
                break
            tls.sendall(data)
        tls.close()
        return True

    def close(self):
        self.server.close()  # also wakes and joins its accept thread


def config(d):
    return proxy_config([("tls", d["listen"], d["origin"])],
                        [rule("tls-api", d["origin"], tls='{sni: [api.example.com, "*.example.com"]}'),
                         rule("tls-no-secret", d["origin"], "deny", tls="{sni: [secret.example.com]}")],
                        datapath=d["datapath"], timeouts={"header": "1s"}, admin=d["admin"], log="debug")


def client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class TlsInspection:
    datapath = None

    @classmethod
    def setUpClass(cls):
        cls.tmp = closing(cls, tempfile.TemporaryDirectory(), close="cleanup")
        cls.cert, cls.key = make_certificate(cls.tmp.name)
        cls.origin = closing(cls, TlsEchoOrigin(cls.cert, cls.key))
        cls.ports = dict(listen=free_port(), origin=cls.origin.port, admin=free_port(), datapath=cls.datapath)
        cls.shunt = start_class_shunt(cls, config(cls.ports), cls.ports["listen"])

    def s_client(self, servername, data=b"ping through shunt\n", expect=None):
        """Runs openssl s_client, sends `data`; returns (stdout, stderr,
        returncode) once `expect` has been echoed (then it is stopped) or
        s_client has exited by itself."""
        args = ["openssl", "s_client", "-connect", f"127.0.0.1:{self.ports['listen']}", "-quiet"]
        args += ["-servername", servername] if servername else ["-noservername"]
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdin.write(data)
        proc.stdin.flush()
        out = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
                if expect and expect in out:
                    break
            elif proc.poll() is not None:
                break
        if proc.poll() is None:
            proc.kill()
        rest, err = proc.communicate()
        return out + rest, err, proc.returncode

    def tls_connect(self, servername):
        raw = socket.create_connection(("127.0.0.1", self.ports["listen"]), timeout=20)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client_context().wrap_socket(raw, server_hostname=servername)

    def expect_reset(self, fn):
        accepted = self.origin.accepted
        with self.assertRaises((ConnectionResetError, ssl.SSLError, BrokenPipeError, ssl.SSLEOFError)):
            fn()
        self.assertEqual(self.origin.accepted, accepted, "a refused hello never reaches the origin")

    # -------------------------------------------------------------- tests

    def test_s_client_allowed_sni(self):
        out, err, _ = self.s_client("api.example.com", expect=b"ping through shunt")
        self.assertIn(b"ping through shunt", out, err.decode(errors="replace"))
        deadline = time.monotonic() + 5  # the origin records the name from its own thread
        while "api.example.com" not in self.origin.names and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertIn("api.example.com", self.origin.names)

    def test_s_client_denied_sni(self):
        accepted = self.origin.accepted
        for name in ("evil.test", "secret.example.com", "example.com"):
            out, err, code = self.s_client(name)
            self.assertNotIn(b"ping through shunt", out)
            self.assertNotEqual(code, 0, err)
        self.assertEqual(self.origin.accepted, accepted)

    def test_no_sni_denied(self):
        self.expect_reset(lambda: self.tls_connect(None).sendall(b"x"))

    def test_wildcard_sni_bulk_both_ways(self):
        size = 8 * MIB
        with self.tls_connect("deep.api.example.com") as tls:
            # One SSL object must not be read and written from two threads
            # at once: send a piece, read its echo, repeat.
            h, n = hashlib.sha256(), 0
            for chunk in pattern(size, 5):
                tls.sendall(chunk)
                want = n + len(chunk)
                while n < want:
                    d = tls.recv(want - n)
                    self.assertTrue(d, f"echo ended after {n} bytes")
                    h.update(d)
                    n += len(d)
            self.assertEqual((n, h.hexdigest()), (size, pattern_digest(size, 5)))
            conns = [c for c in get_json(self.ports["admin"], "/connections") if c["bytes_up"] >= size]
            self.assertEqual([c["datapath"] for c in conns], [self.datapath], conns)
            self.assertEqual(conns[0]["rule"], "tls-api")

    def test_client_hello_split_across_segments(self):
        """The hello arrives in three TCP segments with pauses between."""
        raw = socket.create_connection(("127.0.0.1", self.ports["listen"]), timeout=20)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client_context().wrap_bio(incoming, outgoing, server_hostname="split.example.com")
        with self.assertRaises(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        cuts = [0, 3, len(hello) // 2, len(hello)]
        for a, b in zip(cuts, cuts[1:]):
            raw.sendall(hello[a:b])
            time.sleep(0.15)
        # Finish the handshake by hand over the raw socket.
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    raw.sendall(outgoing.read())
                data = raw.recv(1 << 16)
                self.assertTrue(data, "connection closed during the handshake")
                incoming.write(data)
        if outgoing.pending:
            raw.sendall(outgoing.read())
        tls.write(b"after a split hello\n")
        raw.sendall(outgoing.read())
        echoed = b""
        while not echoed.endswith(b"\n"):
            try:
                echoed += tls.read(1 << 16)
            except ssl.SSLWantReadError:
                incoming.write(raw.recv(1 << 16))
        self.assertEqual(echoed, b"after a split hello\n")
        raw.close()
        self.assertIn("split.example.com", self.origin.names)

    def test_no_hello_in_time_is_reset(self):
        with socket.create_connection(("127.0.0.1", self.ports["listen"]), timeout=10) as s:
            started = time.monotonic()
            s.sendall(b"\x16\x03\x01")  # the start of a record, never finished
            with self.assertRaises(ConnectionResetError):
                s.recv(10)
            waited = time.monotonic() - started
        self.assertGreater(waited, 0.8)
        self.assertLess(waited, 5)

    def test_not_tls_is_reset(self):
        with socket.create_connection(("127.0.0.1", self.ports["listen"]), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
            with self.assertRaises(ConnectionResetError):
                s.recv(10)


SockmapTls, SpliceTls, CopyTls = per_datapath(
    TlsInspection, "Tls",
    others_run=("test_wildcard_sni_bulk_both_ways", "test_client_hello_split_across_segments",
                "test_s_client_allowed_sni"))


if __name__ == "__main__":
    run_tests()

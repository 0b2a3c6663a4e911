"""Policy integrity, from the attacker's side (a pod that wants a denied
resource): what an adversarial review found still open after
test_http_bypass.py, each checked on what the upstreams received, not only
on shunt's answer. The upstreams: nginx (test_http_bypass.Nginx) and a
plain Python http.server whose handlers never read a GET/HEAD/DELETE/OPTIONS
body, as SimpleHTTPRequestHandler does: such a server reads that body as its
next request. docs/policy.md ("Framing", "What an adversarial review
probed") lists every class tried.
"""
import socket
import ssl
import threading
import time
import unittest

import h2_frames as h2
from http_peers import QuietHandler, StdlibOrigin
from shunt_harness import (ThreadedServer, closing, free_port, proxy_config, rule, run_tests, start_class_shunt,
                           wait_for_port)
from test_http_bypass import NGINX_CONF, Nginx, exchange, statuses

# The same two virtual hosts, spoken as prior-knowledge HTTP/2; the log
# says which method each request was served as.
NGINX_H2_CONF = (NGINX_CONF.replace("default_server;", "http2 default_server;")
                 .replace("listen 127.0.0.1:{port};", "listen 127.0.0.1:{port} http2;")
                 .replace("'$server_name|$host|$request_uri|$uri|$http_x_role'",
                          "'$server_name|$host|$request_uri|$uri|$request_method'"))

SMUGGLED = b"GET /api/admin/keys HTTP/1.1\r\nHost: api.local\r\n\r\n"


class PlainOrigin(StdlibOrigin):
    """http.server (HTTP/1.1, keep-alive) as applications write it: GET,
    HEAD, DELETE and OPTIONS never read a body, POST does. `seen` holds every
    request line it parsed."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen = []
        origin = self

        class Handler(QuietHandler):
            def parse_request(self):
                ok = super().parse_request()
                with origin.lock:
                    origin.seen.append(self.requestline)
                return ok

            def do_GET(self):
                body = f"{self.command} {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_HEAD = do_DELETE = do_OPTIONS = do_GET

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
                self.do_GET()

        self._serve(Handler)

    def lines(self):
        with self.lock:
            return list(self.seen)



def config(p):
    rules = []
    for name, port in (("nginx", p["nginx"]), ("py", p["py"]), ("h2", p["h2"])):
        rules += [rule(f"{name}-api", port, http=["{path: /api/}"]),
                  rule(f"{name}-deny", port, "deny", http=["{path: /api/admin}", "{method: DELETE}"])]
    rules.append(rule("tls", p["tls"], tls='{sni: ["*.example.com"]}'))
    listeners = [("to-nginx", p["listen_nginx"], p["nginx"]), ("to-py", p["listen_py"], p["py"]),
                 ("to-h2", p["listen_h2"], p["h2"]), ("to-tls", p["listen_tls"], p["tls"])]
    return proxy_config(listeners, rules, datapath="sockmap", timeouts={"drain": "1s", "header": "2s"},
                        admin=p["admin"], log="debug")


def client_hello(server_name):
    """The first flight of Python's TLS client naming `server_name`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    try:
        ctx.wrap_bio(incoming, outgoing, server_hostname=server_name).do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def first_bytes(conn):
    """A passthrough upstream: what reached it first."""
    conn.settimeout(5)
    try:
        return conn.recv(65536)
    except OSError:
        return b""


class PolicyIntegrity(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.nginx = closing(cls, Nginx())
        cls.py = closing(cls, PlainOrigin())
        cls.h2 = closing(cls, Nginx(NGINX_H2_CONF))
        cls.tls = closing(cls, ThreadedServer(first_bytes))
        cls.ports = dict(listen_nginx=free_port(), listen_py=free_port(), nginx=cls.nginx.port, py=cls.py.port,
                         listen_h2=free_port(), h2=cls.h2.port, listen_tls=free_port(), tls=cls.tls.port,
                         admin=free_port())
        cls.shunt = start_class_shunt(cls, config(cls.ports), cls.ports["listen_py"])
        wait_for_port("127.0.0.1", cls.ports["listen_nginx"])

    def settled(self):
        """Both upstreams' logs once requests in flight have been logged."""
        state = (len(self.nginx.entries()), len(self.py.lines()))
        for _ in range(20):
            time.sleep(0.05)
            now = (len(self.nginx.entries()), len(self.py.lines()))
            if now == state:
                break
            state = now
        return self.nginx.entries(), self.py.lines()

    def tearDown(self):
        nginx, py = self.settled()
        for entry in nginx:
            self.assertFalse(entry[3].startswith("/api/admin"), entry)
        for line in py:
            self.assertNotIn("/api/admin", line)
        for entry in self.h2.entries():
            self.assertFalse(entry[3].startswith("/api/admin"), entry)
            self.assertNotEqual(entry[4].upper(), "DELETE", entry)

    def test_body_where_handlers_read_none_is_refused(self):
        """CL.0: a body on GET (HEAD, DELETE, OPTIONS, TRACE) is the next
        request to a server that never reads it. Before the fix the Python
        origin answered GET /api/admin/keys, and shunt forwarded the answer."""
        for method in ("GET", "HEAD", "DELETE", "OPTIONS"):
            for framing in (b"Content-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED),
                            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)):
                payload = method.encode() + b" /api/ok HTTP/1.1\r\nHost: api.local\r\n" + framing
                for name in ("nginx", "py"):
                    with self.subTest(method=method, framing=framing[:20], upstream=name):
                        before = self.settled()
                        answer = exchange(self.ports["listen_" + name], payload)
                        self.assertEqual(statuses(answer), [400], answer[:200])
                        self.assertEqual(self.settled(), before, "the upstream received the request")

    def test_connection_naming_framing_or_host_is_refused(self):
        """A hop-by-hop proxy behind shunt drops what Connection names: the
        body below would be the next request there."""
        for option in (b"Content-Length", b"transfer-encoding", b"keep-alive, Host"):
            payload = (b"POST /api/ok HTTP/1.1\r\nHost: api.local\r\nConnection: " + option +
                       b"\r\nContent-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED))
            for name in ("nginx", "py"):
                with self.subTest(option=option, upstream=name):
                    before = self.settled()
                    answer = exchange(self.ports["listen_" + name], payload)
                    self.assertEqual(statuses(answer), [400], answer[:200])
                    self.assertEqual(self.settled(), before, "the upstream received the request")

    def test_empty_bodies_and_post_bodies_still_pass(self):
        for payload, want in (
                (b"GET /api/ok HTTP/1.1\r\nHost: api.local\r\nContent-Length: 0\r\n\r\n", "GET /api/ok"),
                (b"POST /api/ok HTTP/1.1\r\nHost: api.local\r\nContent-Length: 5\r\n\r\nhello", "POST /api/ok")):
            for name in ("nginx", "py"):
                with self.subTest(payload=payload, upstream=name):
                    answer = exchange(self.ports["listen_" + name], payload)
                    self.assertEqual(statuses(answer), [200], answer[:200])
                    if name == "py":
                        self.assertTrue(self.settled()[1][-1].startswith(want))


    def h2_status(self, method, path="/api/ok"):
        """(status, body) of one HTTP/2 stream through shunt."""
        c = h2.Client(self.ports["listen_h2"], timeout=5)
        try:
            block = c.encoder.encode([(":method", method), (":scheme", "http"), (":path", path),
                                      (":authority", "api.local")])
            c.send(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, block))
            status, body, _ = c.response(1, timeout=5)
            return status, body
        finally:
            c.close()

    def test_h2_method_case_is_not_a_way_around_a_method_deny(self):
        """`{method: DELETE}` is a deny; `delete` over HTTP/2 missed it and
        was forwarded (an upstream that folds case, as Werkzeug does, serves
        it as DELETE). HTTP/1.1 refuses such methods in llhttp already."""
        self.assertEqual(self.h2_status("GET"), (200, b"api /api/ok\n"))
        self.assertEqual(self.h2_status("DELETE")[0], 403)
        for method in ("delete", "Delete", "get"):
            with self.subTest(method=method):
                before = len(self.h2.entries())
                self.assertEqual(self.h2_status(method), (400, b"Bad Request\n"))
                time.sleep(0.1)
                self.assertEqual(len(self.h2.entries()), before, "the upstream received the stream")
        answer = exchange(self.ports["listen_nginx"], b"delete /api/ok HTTP/1.1\r\nHost: api.local\r\n\r\n")
        self.assertEqual(statuses(answer), [400], answer)

    def hello_reaches_upstream(self, hello):
        """Sends `hello` to the TLS listener: whether the passthrough upstream got it."""
        before = len(self.tls.results)
        with socket.create_connection(("127.0.0.1", self.ports["listen_tls"]), timeout=5) as s:
            s.sendall(hello)
            try:
                while s.recv(65536):
                    pass
            except OSError:
                pass  # refused: reset
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and len(self.tls.results) == before:
            time.sleep(0.02)
        with self.tls.lock:
            return hello in self.tls.results[before:]

    def test_server_name_other_than_one_host_name_is_refused(self):
        """A server_name list with two names (shunt decided on the first;
        servers pick one or refuse), or a name with a NUL, is reset before
        the upstream is connected. The 25 bytes of a 20-byte name's list are
        overwritten in place, so every length around them stays right."""
        name = b"api0123.example.com."
        hello = client_hello(name.decode())
        at = hello.index(name) - 5
        self.assertEqual(hello[at:at + 5], b"\x00\x17\x00\x00\x14")
        self.assertTrue(self.hello_reaches_upstream(hello))
        for server_names in (b"\x00\x17" + b"\x00\x00\x0e" + b"aa.example.com" + b"\x00\x00\x03" + b"adm",
                             b"\x00\x17\x00\x00\x14" + b"admin\x00xy.example.com"):
            with self.subTest(server_names=server_names):
                patched = hello[:at] + server_names + hello[at + 25:]
                self.assertEqual(len(patched), len(hello))
                self.assertFalse(self.hello_reaches_upstream(patched))


if __name__ == "__main__":
    run_tests()

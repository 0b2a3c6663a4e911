"""Policy bypass classes of issue 9, against real upstreams that decode the
way real servers do: nginx (nginx-light, two virtual hosts, location blocks,
its access log read back) and Python's http.server. For every class
(percent-encoding, whitespace and trailing characters, which host, framing
differentials, upgrades, config that can never match) each attempt must be
refused by shunt (403, 400 or a reset) AND the upstream's own log must show
it never received the denied resource; the allowed spellings still pass, and
reach the upstream in the canonical form shunt decided on (docs/policy.md).
"""
import os
import posixpath
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse

from http_peers import QuietHandler, StdlibOrigin
from shunt_harness import (SHUNT_BIN, closing, free_port, proxy_config, rule, run_tests, start_class_shunt,
                           wait_for_port)

DENIED_PREFIXES = ("/api/admin",)
DENIED_EXACT = ("/api/secret", "/api/secret/")
DENIED_HOST = "admin.local"

# The start of every nginx.conf template the tests use (Nginx fills in {dir}
# and {port}): one foreground worker, every file under {dir}, and the http
# block opened; a template adds its own http lines and closes it.
NGINX_HEAD = """
user root;
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
"""

NGINX_CONF = NGINX_HEAD + """
    log_format t '$server_name|$host|$request_uri|$uri|$http_x_role';
    access_log {dir}/access.log t;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port} default_server;
        server_name api.local;
        location /api/ {{ return 200 "api $uri\\n"; }}
        location /api/admin {{ return 200 "ADMIN $uri\\n"; }}
        location = /api/secret {{ return 200 "SECRET\\n"; }}
        location / {{ return 200 "root $uri\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name admin.local;
        location / {{ return 200 "ADMIN VHOST $uri\\n"; }}
    }}
}}
"""


class Nginx:
    """nginx on loopback; `entries()` reads its access log back as
    (server_name, host, request_uri, uri, x_role) tuples (the fields of
    `conf`'s log format, NGINX_CONF's by default)."""

    def __init__(self, conf_text=NGINX_CONF):
        self.dir = tempfile.mkdtemp(prefix="shunt-nginx-")
        self.port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(conf_text.format(dir=self.dir, port=self.port))
        self.proc = subprocess.Popen(["nginx", "-c", conf, "-p", self.dir], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", self.port, proc=self.proc)

    def entries(self):
        try:
            with open(os.path.join(self.dir, "access.log"), errors="replace") as f:
                return [tuple(line.rstrip("\n").split("|")) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class PyOrigin(StdlibOrigin):
    """Python's http.server (BaseHTTPRequestHandler, HTTP/1.1). Every request
    it parses is recorded as (method, raw path, resource, host, upgrade,
    x-role), where resource is the path as SimpleHTTPRequestHandler would map
    it (percent-decoded, normalised). After a 101 it reads raw lines and
    records them in `tunnel`. /switch-anyway answers 101 to anything, like an
    upstream that ignores what it was asked."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen = []
        self.tunnel = []
        origin = self

        class Handler(QuietHandler):
            def parse_request(self):
                ok = super().parse_request()
                if ok:
                    path = self.path.split("?", 1)[0]
                    if "://" in path:
                        path = "/" + path.split("://", 1)[1].partition("/")[2]
                    resource = posixpath.normpath(urllib.parse.unquote(path)) if path.startswith("/") else path
                    with origin.lock:
                        origin.seen.append((self.command, self.path, resource, self.headers.get("Host", ""),
                                            self.headers.get_all("Upgrade") or [], self.headers.get("X-Role", "")))
                return ok

            def raw_after_101(self, protocol):
                self.send_response(101)
                self.send_header("Upgrade", protocol)
                self.send_header("Connection", "Upgrade")
                self.end_headers()
                self.wfile.flush()
                while True:
                    try:
                        line = self.rfile.readline(65536)
                    except ConnectionResetError:  # shunt cuts an unasked-for switch off
                        break
                    if not line:
                        break
                    with origin.lock:
                        origin.tunnel.append(line)
                    self.wfile.write(line)
                    self.wfile.flush()
                self.close_connection = True

            def reply(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            break
                        self.rfile.read(size)
                        self.rfile.readline()
                elif int(self.headers.get("Content-Length", "0") or 0):
                    self.rfile.read(int(self.headers["Content-Length"]))
                upgrades = ",".join(self.headers.get_all("Upgrade") or []).lower()
                if self.path.startswith("/switch-anyway") and "upgrade" in self.headers.get("Connection", "").lower():
                    return self.raw_after_101("h2c")
                if self.path.startswith("/ws-h2c") and upgrades:  # asked one thing, switches to another
                    return self.raw_after_101("h2c")
                if "h2c" in upgrades:  # an h2c-capable upstream takes h2c first
                    return self.raw_after_101("h2c")
                if "websocket" in upgrades:
                    return self.raw_after_101("websocket")
                body = f"{self.command} {self.path}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_HEAD = do_OPTIONS = do_CONNECT = reply

        self._serve(Handler)



def config(d, host_entry="'admin.local.'"):
    rules = []
    for name, port in (("nginx", d["nginx"]), ("py", d["py"])):
        rules += [rule(f"{name}-api", port,
                       http=["{path: /api/}", "{method: GET, path: /ws}", "{method: GET, path: /switch-anyway}"]),
                  rule(f"{name}-deny", port, "deny",
                       http=["{path: /api/admin}", "{path_exact: /api/secret}", f"{{host: {host_entry}}}",
                             "{headers: {x-role: admin}}"])]
    return proxy_config([("to-nginx", d["listen_nginx"], d["nginx"]), ("to-py", d["listen_py"], d["py"])], rules,
                        datapath="sockmap", timeouts={"drain": "1s"}, admin=d["admin"], log="debug")


def exchange(port, payload, timeout=5):
    """Sends `payload` on a fresh connection, half-closes, and returns
    everything the proxy answered (b"" for a reset without an answer)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    out = b""
    try:
        s.sendall(payload)
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        while True:
            data = s.recv(65536)
            if not data:
                break
            out += data
    except (ConnectionResetError, BrokenPipeError, socket.timeout):
        pass
    finally:
        s.close()
    return out


def statuses(answer):
    """Status codes of every response in `answer`."""
    return [int(code) for code in re.findall(rb"(?:^|\n)HTTP/1\.[01] (\d{3}) ", answer)]


def head(method, target, host="api.local", extra=b"", version=b"HTTP/1.1"):
    line = method.encode() + b" " + (target if isinstance(target, bytes) else target.encode()) + b" " + version
    host_line = b"Host: " + host.encode() + b"\r\n" if host is not None else b""
    return line + b"\r\n" + host_line + extra + b"\r\n"


# A second, never-decided request smuggled behind the first: if any
# upstream ever sees it, it is in its log.
SMUGGLED = b"GET /api/admin/keys HTTP/1.1\r\nHost: api.local\r\n\r\n"

PERCENT = [head("GET", t) for t in (
    "/api/%61dmin", "/api/%61dmin/keys", "/api/adm%69n", "/api/%41dmin/../admin", "/api/x/%2e%2e/admin",
    "/api/x/%2E%2E/admin/keys", "/api/x/.%2e/admin", "/api/%2e/admin", "/api%2Fadmin", "/api/x%2F..%2Fadmin",
    "/api%2fadmin", "/api%5Cadmin", "/api/x\\..\\admin", "/api/admin%00", "/api/%zzadmin", "/api/secre%74",
    "/api/secret%2F", "/api/%73ecret", "/api/admin%2f", "/api/./admin", "/api//admin", "/api/..;/api/admin")]

WHITESPACE = [
    head("GET", "/api/x", host="admin.local "), head("GET", "/api/x", host="admin.local\t"),
    head("GET", "/api/x", host="ADMIN.LOCAL."), head("GET", "/api/x", host="admin.local.:80"),
    head("GET", "/api/x", extra=b"X-Role: admin \r\n"), head("GET", "/api/x", extra=b"X-Role:\tadmin\t\r\n"),
    head("GET", "/api/x", extra=b"X-Role: user\r\nX-Role: admin\r\n"),
    head("GET", "/api/x", extra=b"X-Role: user, admin\r\n"), head("GET", "/api/x", extra=b"X_Role: admin\r\n"),
    head("GET", "/api/secret/"), head("GET", "/api/secret/."), head("GET", "/api/secret/%2e"),
    head("GET", "/api/x/../secret/"),
    # whitespace between a field name and its colon
    b"GET /api/x HTTP/1.1\r\nHost : admin.local\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: api.local\r\nX-Role : admin\r\n\r\n",
]

WHICH_HOST = [
    head("GET", "http://admin.local/api/x"),  # Host: api.local disagrees
    head("GET", "http://admin.local/api/x", host="admin.local"),
    head("GET", "http://ADMIN.local./api/x", host=None),
    head("GET", "http://api.local/api/admin", host="api.local"),
    head("GET", "http://user@api.local/api/x"),
    head("CONNECT", "admin.local:80", host="api.local:80"),
    head("CONNECT", "api.local:80", host="api.local:80"),
    head("GET", "/api/x", host="api.local", extra=b"Host: admin.local\r\n"),
    head("GET", "/api/x", host=None),  # HTTP/1.1 without Host: the default vhost would guess
    head("GET", "/api/x", host=None, version=b"HTTP/1.0"),
]

FRAMING = [
    # bare CR inside a header: the upstream sees a Content-Length shunt did not
    b"GET /api/x HTTP/1.1\r\nHost: api.local\r\nFoo:\rXContent-Length: 49\r\n\r\n" + SMUGGLED,
    # a head ending in CRLF CR <byte>
    b"GET /api/x HTTP/1.1\r\nHost: api.local\r\n\rX" + SMUGGLED,
    b"GET /api/x HTTP/1.1\r\nHost: api.local\r\nX: a\rb\r\n\r\n" + SMUGGLED,
    # obs-fold
    b"GET /api/x HTTP/1.1\r\nHost: api.local\r\nX-A: 1\r\n Content-Length: 49\r\n\r\n" + SMUGGLED,
    b"POST /api/x HTTP/1.1\r\nHost: api.local\r\nContent-Length : 49\r\n\r\n" + SMUGGLED,
    b"POST /api/x HTTP/1.1\r\nHost: api.local\r\nContent-Length: 49\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    b"POST /api/x HTTP/1.1\r\nHost: api.local\r\nContent-Length: 0\r\nContent-Length: 49\r\n\r\n" + SMUGGLED,
    b"POST /api/x HTTP/1.1\r\nHost: api.local\r\nContent-Length: 0, 49\r\n\r\n" + SMUGGLED,
    b"POST /api/x HTTP/1.1\r\nHost: api.local\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLED,
    b"POST /api/x HTTP/1.1\r\nHost: api.local\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    b"POST /api/x HTTP/1.1\r\nHost: api.local\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n" + SMUGGLED,
    b"POST /api/x HTTP/1.0\r\nHost: api.local\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    b"GET /api/x HTTP/1.1\nHost: api.local\n\n" + SMUGGLED,
    b"GET /api/x HTTP/1.1\r\nHost: api.local\n\r\n" + SMUGGLED,
    b"GET /api/\x01admin HTTP/1.1\r\nHost: api.local\r\n\r\n",
    b"GET /api/x\tHTTP/1.1\r\nHost: api.local\r\n\r\n",
    b"GET  /api/admin HTTP/1.1\r\nHost: api.local\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: api.local\r\nX: a\x00b\r\n\r\n" + SMUGGLED,
]

ALLOWED = [
    # (request, nginx request_uri / python raw path as received, host received)
    (head("GET", "/api/ok"), "/api/ok", "api.local"),
    (head("GET", "/api/%6Fk"), "/api/ok", "api.local"),
    (head("GET", "/api//ok/./x/.."), "/api/ok/", "api.local"),
    (head("GET", "/api/ok?q=%61dmin&x=/api/admin"), "/api/ok?q=%61dmin&x=/api/admin", "api.local"),
    (head("GET", "/api/ok", host="API.Local."), "/api/ok", "api.local"),
    (head("GET", "/api/ok", extra=b"X-Role:  user \r\n"), "/api/ok", "api.local"),
    (head("GET", "/api/secrets"), "/api/secrets", "api.local"),
]


class Bypass(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.nginx = closing(cls, Nginx())
        cls.py = closing(cls, PyOrigin())
        cls.ports = dict(listen_nginx=free_port(), listen_py=free_port(), nginx=cls.nginx.port, py=cls.py.port,
                         admin=free_port())
        cls.shunt = start_class_shunt(cls, config(cls.ports), cls.ports["listen_py"])
        wait_for_port("127.0.0.1", cls.ports["listen_nginx"])

    def last_nginx_entry(self, count):
        """The newest access-log line once there are `count` (nginx logs after answering)."""
        for _ in range(100):
            entries = self.nginx.entries()
            if len(entries) >= count:
                return entries[-1]
            time.sleep(0.02)
        self.fail(f"nginx logged {len(self.nginx.entries())} requests, expected {count}")

    def upstream_state(self):
        with self.py.lock:
            return len(self.nginx.entries()), len(self.py.seen), len(self.py.tunnel)

    def quiet_state(self):
        """The upstream state once requests of earlier tests (a reset
        connection's head, say) have all been logged."""
        state = self.upstream_state()
        for _ in range(50):
            time.sleep(0.05)
            now = self.upstream_state()
            if now == state:
                return now
            state = now
        return state

    def assert_refused(self, payload):
        """`payload` is refused on both upstreams, and neither receives a byte of it."""
        for name in ("nginx", "py"):
            before = self.quiet_state()
            answer = exchange(self.ports["listen_" + name], payload)
            codes = statuses(answer)
            self.assertTrue(codes == [] or codes == [400] or codes == [403],
                            f"{name}: {payload!r} answered {answer[:200]!r}")
            self.assertEqual(self.quiet_state(), before, f"{name} received something of {payload!r}")

    def assert_nothing_denied_reached_upstreams(self):
        for server, host, request_uri, uri, role in self.nginx.entries():
            self.assertNotEqual(server, DENIED_HOST, (host, request_uri))
            self.assertNotEqual(host, DENIED_HOST, request_uri)
            self.assertFalse(uri.startswith(DENIED_PREFIXES), request_uri)
            self.assertNotIn(uri, DENIED_EXACT, request_uri)
            self.assertNotEqual(role.strip(), "admin", request_uri)
        with self.py.lock:
            seen, tunnel = list(self.py.seen), list(self.py.tunnel)
        for method, raw, resource, host, _upgrade, role in seen:
            self.assertFalse(resource.startswith(DENIED_PREFIXES), raw)
            self.assertNotIn(resource, DENIED_EXACT, raw)
            self.assertNotEqual(host.strip().rstrip(".").split(":")[0].lower(), DENIED_HOST, raw)
            self.assertNotEqual(role.strip(), "admin", raw)
            self.assertNotEqual(method, "CONNECT", raw)
        for line in tunnel:
            self.assertNotIn(b"/api/admin", line)

    def tearDown(self):
        self.assert_nothing_denied_reached_upstreams()

    # ---------------------------------------------------------- the classes

    def test_1_percent_encoding(self):
        for payload in PERCENT:
            with self.subTest(payload=payload):
                self.assert_refused(payload)

    def test_2_whitespace_and_trailing_characters(self):
        for payload in WHITESPACE:
            with self.subTest(payload=payload):
                self.assert_refused(payload)

    def test_3_which_host(self):
        for payload in WHICH_HOST:
            with self.subTest(payload=payload):
                self.assert_refused(payload)

    def test_4_framing(self):
        for payload in FRAMING:
            with self.subTest(payload=payload):
                self.assert_refused(payload)

    def test_4_smuggling_behind_an_allowed_request(self):
        """The first request is allowed and reaches the upstream; the bytes
        that some upstream would read as a second request never arrive as one."""
        for payload in (
                b"GET /api/ok HTTP/1.1\r\nHost: api.local\r\n\r\n" + FRAMING[0],
                b"GET /api/ok HTTP/1.1\r\nHost: api.local\r\n\r\n" + FRAMING[1],
                # chunked body with a smuggled request inside a chunk: data, not a request
                b"POST /api/ok HTTP/1.1\r\nHost: api.local\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)):
            for name in ("nginx", "py"):
                with self.subTest(payload=payload, upstream=name):
                    answer = exchange(self.ports["listen_" + name], payload)
                    self.assertEqual(statuses(answer)[0], 200, answer[:300])
                    self.assertIn(statuses(answer)[1:], ([], [400]), answer[:300])

    def test_4_chunked_framing_differentials(self):
        """Chunked bodies llhttp 8.1 frames leniently (two any bytes after
        chunk data, CR + any byte ending the trailers, whitespace before a
        trailer colon): the connection is cut at the break, so no upstream
        reads what follows as a request."""
        post = b"POST /api/ok HTTP/1.1\r\nHost: api.local\r\nTransfer-Encoding: chunked\r\n\r\n"
        for body in (b"5\r\nhelloXX0\r\n\r\n", b"0\r\n\rX", b"0\r\n\r\r", b"0\r\nX : y\r\n\r\n",
                     b"0\r\nX:\ry\r\n\r\n", b"0\r\n\n", b"5\r\nhello\r\r\n0\r\n\r\n",
                     b"%x\r\n%sXX0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)):
            for name in ("nginx", "py"):
                with self.subTest(body=body, upstream=name):
                    answer = exchange(self.ports["listen_" + name], post + body + SMUGGLED, timeout=3)
                    self.assertIn(statuses(answer), ([], [400]), answer[:300])

    def test_5_upgrade_decided_on_every_value(self):
        port = self.ports["listen_py"]
        # h2c and websocket: only websocket is forwarded, so an h2c-capable
        # upstream cannot take the connection out of inspection as HTTP/2.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(head("GET", "/ws", extra=b"Upgrade: h2c\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"))
            answer = s.recv(4096)
            self.assertTrue(answer.startswith(b"HTTP/1.1 101"), answer)
            self.assertIn(b"websocket", answer.lower())
        with self.py.lock:
            ws = [u for m, raw, _, _, u, _ in self.py.seen if raw == "/ws"]
        self.assertTrue(ws, "the upgrade request reached the upstream")
        self.assertEqual([v.lower() for v in ws[-1]], ["websocket"])

        # h2c alone: dropped, the request is answered as plain HTTP and the
        # connection stays inspected.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            f = s.makefile("rb")
            s.sendall(head("GET", "/api/h2c-only", extra=b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                           b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"))
            self.assertTrue(f.readline().startswith(b"HTTP/1.1 200"))
            while f.readline() not in (b"\r\n", b""):
                pass
            f.readline()  # body
            s.sendall(head("GET", "/api/admin/after-h2c"))
            self.assertTrue(f.readline().startswith(b"HTTP/1.1 403"))
        with self.py.lock:
            h2c = [u for m, raw, _, _, u, _ in self.py.seen if raw == "/api/h2c-only"]
        self.assertEqual(h2c, [[]], "no Upgrade value reached the upstream")

        # An upstream that switches protocol when nobody asked for an allowed
        # one is cut off: nothing after its 101 passes uninspected.
        payload = head("GET", "/switch-anyway", extra=b"Upgrade: h2c\r\nConnection: Upgrade\r\n")
        answer = exchange(port, payload + head("GET", "/api/admin/after-101"))
        self.assertNotIn(b"101", answer[:20])
        # An upstream that answers a WebSocket request with "101 Upgrade: h2c"
        # is cut off the same way.
        payload = head("GET", "/ws-h2c", extra=b"Upgrade: websocket\r\nConnection: Upgrade\r\n")
        answer = exchange(port, payload + b"GET /api/admin/after-h2c-101 HTTP/1.1\r\nHost: api.local\r\n\r\n")
        self.assertNotIn(b"101", answer[:20])

    def test_6_config_entries_are_normalised(self):
        # `host: 'admin.local.'` matched requests above (test_2, test_3);
        # `shunt check` says how it is matched, and warns on entries that
        # can never match.
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "c.yaml")
            text = config(self.ports).replace("- {path_exact: /api/secret}",
                                              "- {path_exact: /api/secret}\n        - {path: \"/api%2Fx\"}", 1)
            with open(path, "w") as f:
                f.write(text)
            out = subprocess.run([SHUNT_BIN, "check", "-c", path], capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertIn("host 'admin.local.' is matched as 'admin.local'", out.stdout)
            self.assertIn("warning:", out.stdout)
            self.assertIn("path '/api%2Fx' has no canonical form", out.stdout)
            out = subprocess.run([SHUNT_BIN, "explain", "-c", path, "--from", "127.0.0.1", "--to",
                                  f"127.0.0.1:{self.ports['nginx']}", "--path", "/api/%61dmin/./keys", "--host",
                                  "Admin.Local."], capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertIn("canonical:  GET /api/admin/keys host admin.local", out.stdout)
            self.assertIn("verdict:    deny (rule nginx-deny)", out.stdout)
            out = subprocess.run([SHUNT_BIN, "explain", "-c", path, "--from", "127.0.0.1", "--to",
                                  f"127.0.0.1:{self.ports['nginx']}", "--path", "/api%2Fadmin"],
                                 capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertIn("canonical:  none, the proxy answers 400: encoded '/' or '\\' in path", out.stdout)
            self.assertIn("verdict:    deny", out.stdout)

    # ------------------------------------------------- allowed forms still pass

    def test_allowed_forms_pass_in_canonical_form(self):
        for payload, want_uri, want_host in ALLOWED:
            with self.subTest(payload=payload):
                count = len(self.nginx.entries())
                answer = exchange(self.ports["listen_nginx"], payload)
                self.assertEqual(statuses(answer), [200], answer[:300])
                server, host, request_uri, _uri, _role = self.last_nginx_entry(count + 1)
                self.assertEqual((server, request_uri), ("api.local", want_uri))
                self.assertEqual(host, want_host)
                answer = exchange(self.ports["listen_py"], payload)
                self.assertEqual(statuses(answer), [200], answer[:300])
                with self.py.lock:
                    _m, raw, _r, host, _u, _role = self.py.seen[-1]
                self.assertEqual(raw, want_uri)
        # absolute-form naming the allowed host, keep-alive and pipelined
        count = len(self.nginx.entries())
        answer = exchange(self.ports["listen_nginx"], head("GET", "http://API.local./api/abs") +
                          head("GET", "/api/second"))
        self.assertEqual(statuses(answer), [200, 200], answer)
        self.last_nginx_entry(count + 2)
        server, host, request_uri, _uri, _role = self.nginx.entries()[-2]
        self.assertEqual((server, host), ("api.local", "api.local"))
        self.assertTrue(request_uri.endswith("/api/abs"), request_uri)


if __name__ == "__main__":
    run_tests()

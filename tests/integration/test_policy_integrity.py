"""Policy integrity, from the attacker's side (a pod that wants a denied
resource): what an adversarial review found still open after
test_http_bypass.py, each checked on what the upstreams received, not only
on shunt's answer. The upstreams: nginx (test_http_bypass.Nginx) and a
plain Python http.server whose handlers never read a GET/HEAD/DELETE/OPTIONS
body, as SimpleHTTPRequestHandler does: such a server reads that body as its
next request. docs/policy.md ("Framing", "What an adversarial review
probed") lists every class tried.
"""
import http.server
import threading
import time
import unittest

from shunt_harness import closing, free_port, proxy_config, rule, run_tests, start_class_shunt, wait_for_port
from test_http_bypass import Nginx, exchange, statuses

SMUGGLED = b"GET /api/admin/keys HTTP/1.1\r\nHost: api.local\r\n\r\n"


class PlainOrigin:
    """http.server (HTTP/1.1, keep-alive) as applications write it: GET,
    HEAD, DELETE and OPTIONS never read a body, POST does. `seen` holds every
    request line it parsed."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen = []
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle(self):
                try:
                    super().handle()
                except (ConnectionResetError, BrokenPipeError):
                    pass

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

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def lines(self):
        with self.lock:
            return list(self.seen)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def config(p):
    rules = []
    for name, port in (("nginx", p["nginx"]), ("py", p["py"])):
        rules += [rule(f"{name}-api", port, http=["{path: /api/}"]),
                  rule(f"{name}-deny", port, "deny", http=["{path: /api/admin}"])]
    return proxy_config([("to-nginx", p["listen_nginx"], p["nginx"]), ("to-py", p["listen_py"], p["py"])], rules,
                        datapath="sockmap", timeouts={"drain": "1s"}, admin=p["admin"], log="debug")


class PolicyIntegrity(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.nginx = closing(cls, Nginx())
        cls.py = closing(cls, PlainOrigin())
        cls.ports = dict(listen_nginx=free_port(), listen_py=free_port(), nginx=cls.nginx.port, py=cls.py.port,
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


if __name__ == "__main__":
    run_tests()

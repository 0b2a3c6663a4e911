"""HTTP/2 (prior-knowledge h2c) through a real shunt with real peers: nghttpd
as an h2c origin with nghttp and curl --http2-prior-knowledge as clients, and
a python3-grpcio server and channel. Streams are decided one by one on one
connection; denials are 403 / grpc-status 7 and leave the connection up;
bodies of 8 MiB are hash-checked both ways (the gRPC server reports the hash
of what it received); a reload ends a stream that is no longer allowed;
`Upgrade: h2c` is served over HTTP/1.1. Floods (rapid reset among them),
malformed frames, stalls, drain and upstream failures: test_http2_limits.py."""
import hashlib
import http.server
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import unittest
from concurrent import futures

import grpc

from admin_helpers import get_json, scrape, value, wait_ready
from h2_frames import frame, get_headers_block
from shunt_harness import closing, free_port, proxy_config, rule, run_tests, start_class_shunt, start_nghttpd

MIB = 1024 * 1024


def config(d):
    return proxy_config(
        [("h2c", d["listen"], d["nghttpd"]), ("grpc", d["listen_grpc"], d["grpc"]), ("h1", d["listen_h1"], d["h1"])],
        [rule("files", d["nghttpd"],
              http=["{method: GET, path_exact: /ok}", "{method: GET, path_exact: /big}",
                    "{method: POST, path_exact: /ok}"]),
         rule("grpc", d["grpc"], grpc=f"[test.Svc/Allowed, test.Svc/Bidi, test.Svc/Upload{d.get('extra', '')}]"),
         rule("h1", d["h1"], http=["{method: GET, path: /}"])],
        limits="max_connections: 1000, max_header_bytes: 8192", admin=d["admin"], log="debug")


def raw(b):
    return b


def grpc_server(port, stream_started):
    def allowed(request, context):
        return b"ok:" + request

    def denied(request, context):
        return b"reached the server"

    def upload(request, context):
        return hashlib.sha256(request).hexdigest().encode()

    def bidi(requests, context):
        for r in requests:
            yield r

    def ticks(request, context):
        stream_started.set()
        for i in range(600):
            if not context.is_active():
                return
            yield b"tick%d" % i
            time.sleep(0.05)

    methods = {
        "Allowed": grpc.unary_unary_rpc_method_handler(allowed, raw, raw),
        "Denied": grpc.unary_unary_rpc_method_handler(denied, raw, raw),
        "Upload": grpc.unary_unary_rpc_method_handler(upload, raw, raw),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, raw, raw),
        "Ticks": grpc.unary_stream_rpc_method_handler(ticks, raw, raw),
    }
    opts = [("grpc.max_receive_message_length", 32 * MIB), ("grpc.max_send_message_length", 32 * MIB)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=opts)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Svc", methods),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def h1_server(port, heads):
    """An HTTP/1.1 origin that records each request's headers and never upgrades."""
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            heads.append({k.lower(): v for k, v in self.headers.items()})
            body = b"h1:" + self.path.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Http2Inspection(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.big = os.urandom(8 * MIB)
        cls.ports = dict(listen=free_port(), listen_grpc=free_port(), grpc=free_port(), admin=free_port(),
                         listen_h1=free_port(), h1=free_port(),
                         nghttpd=start_nghttpd(cls, {"big": cls.big, "ok": b"hi\n", "secret": b"secret\n"}))
        cls.stream_started = threading.Event()
        cls.grpc = grpc_server(cls.ports["grpc"], cls.stream_started)
        cls.addClassCleanup(cls.grpc.stop, None)
        cls.h1_heads = []
        cls.h1 = h1_server(cls.ports["h1"], cls.h1_heads)
        cls.addClassCleanup(cls.h1.server_close)
        cls.addClassCleanup(cls.h1.shutdown)
        cls.shunt = start_class_shunt(cls, config(cls.ports), cls.ports["listen"])
        wait_ready(cls.ports["admin"])

    def url(self, path):
        return f"http://127.0.0.1:{self.ports['listen']}{path}"

    def channel(self):
        opts = [("grpc.max_receive_message_length", 32 * MIB), ("grpc.max_send_message_length", 32 * MIB)]
        ch = grpc.insecure_channel(f"127.0.0.1:{self.ports['listen_grpc']}", options=opts)
        self.addCleanup(ch.close)
        return ch

    def access(self):
        out = []
        for line in self.shunt.output().splitlines():
            if line.startswith("{"):
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if e.get("event") == "http" and e.get("protocol") == "h2":
                    out.append(e)
        return out

    # ------------------------------------------------------------ nghttp

    def test_streams_multiplexed_allowed_and_denied(self):
        # One connection (nghttp opens one), four streams at once.
        out = subprocess.run(["nghttp", "-n", "-s", self.url("/ok"), self.url("/secret"), self.url("/big"),
                              self.url("/ok?x=1")], capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        codes = {}
        for line in out.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 7 and parts[0].isdigit():
                codes[parts[-1]] = (int(parts[4]), parts[5])
        self.assertEqual(codes["/secret"], (403, "14"))
        self.assertEqual(codes["/ok"][0], 200)
        self.assertEqual(codes["/big"], (200, "8M"))
        self.assertEqual(codes["/ok?x=1"][0], 200)

    def test_big_download_hash(self):
        out = subprocess.run(["nghttp", self.url("/big")], capture_output=True, timeout=60)
        self.assertEqual(out.returncode, 0)
        self.assertEqual(hashlib.sha256(out.stdout).hexdigest(), hashlib.sha256(self.big).hexdigest())
        deadline = time.monotonic() + 5
        while not [e for e in self.access() if e["path"] == "/big" and e["bytes_down"] == 8 * MIB]:
            self.assertLess(time.monotonic(), deadline, "no access line for /big with its 8 MiB")
            time.sleep(0.05)

    def test_big_upload_to_nghttpd(self):
        upload = closing(self, tempfile.NamedTemporaryFile(), close="close")
        upload.write(self.big)
        upload.flush()
        out = subprocess.run(["nghttp", "-d", upload.name, self.url("/ok")], capture_output=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, b"hi\n")

    def test_curl_prior_knowledge(self):
        out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-w", "%{http_code} %{http_version}",
                              self.url("/ok")], capture_output=True, timeout=20)
        self.assertEqual(out.stdout, b"hi\n200 2")
        out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-w", "%{http_code}", self.url("/secret")],
                             capture_output=True, timeout=20)
        self.assertEqual(out.stdout, b"Access denied\n403")
        # :path is canonicalised like an HTTP/1.1 target: /./secret is /secret.
        out = subprocess.run(["curl", "-sS", "--path-as-is", "--http2-prior-knowledge", "-w", "%{http_code}",
                              self.url("/x/../ok")], capture_output=True, timeout=20)
        self.assertEqual(out.stdout, b"hi\n200")

    def test_authority_and_host_that_differ_are_refused(self):
        def status_of(extra):
            with socket.create_connection(("127.0.0.1", self.ports["listen"])) as s:
                block = get_headers_block(f"127.0.0.1:{self.ports['listen']}") + extra
                s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 0x5, 1, block))
                s.settimeout(10)
                data = b""
                while True:
                    i = 0
                    while i + 9 <= len(data):
                        length = int.from_bytes(data[i:i + 3], "big")
                        if data[i + 3] == 1 and int.from_bytes(data[i + 5:i + 9], "big") == 1:
                            return data[i + 9]  # first HPACK byte: an indexed :status
                        i += 9 + length
                    chunk = s.recv(65536)
                    self.assertTrue(chunk)
                    data += chunk

        def host(value):  # host: literal without indexing, static name index 38
            return bytes([0x0f, 38 - 15, len(value)]) + value.encode()

        # :path "/" is not allowed by the files rule: 403 (static index 12 (0x8c) is
        # :status 400, 403 is a literal), but a mismatching host is 400 first.
        self.assertEqual(status_of(host("other.example")), 0x8c)
        self.assertNotEqual(status_of(host(f"127.0.0.1:{self.ports['listen']}")), 0x8c)

    def test_upgrade_h2c_is_served_over_http11(self):
        # curl --http2 on http:// asks for Upgrade: h2c with HTTP2-Settings. shunt
        # declines by forwarding plain HTTP/1.1: the origin sees none of the
        # upgrade fields and curl gets an HTTP/1.1 answer on an inspected connection.
        self.h1_heads.clear()
        url = f"http://127.0.0.1:{self.ports['listen_h1']}"
        out = subprocess.run(["curl", "-sS", "--http2", "-w", " %{http_code} %{http_version}", url + "/a",
                              url + "/b"], capture_output=True, timeout=20)
        self.assertEqual(out.stdout, b"h1:/a 200 1.1h1:/b 200 1.1", out.stderr)
        self.assertEqual(len(self.h1_heads), 2)
        for head in self.h1_heads:
            self.assertNotIn("upgrade", head)
            self.assertNotIn("http2-settings", head)
            self.assertNotIn("upgrade", head.get("connection", "").lower())
        # The same connection is still inspected: a path outside the rule is refused.
        with socket.create_connection(("127.0.0.1", self.ports["listen_h1"])) as s:
            s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                      b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
                      b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            s.settimeout(10)
            data = b""
            while data.count(b"HTTP/1.1 ") < 2:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data)
        self.assertIn(b"HTTP/1.1 403 ", data)
        self.assertNotIn(b"101", data.split(b"\r\n")[0])

    # -------------------------------------------------------------- gRPC

    def test_grpc_unary_denied_then_allowed_on_one_channel(self):
        ch = self.channel()
        allowed = ch.unary_unary("/test.Svc/Allowed")
        denied = ch.unary_unary("/test.Svc/Denied")
        self.assertEqual(allowed(b"a", timeout=10), b"ok:a")
        with self.assertRaises(grpc.RpcError) as e:
            denied(b"b", timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(allowed(b"c", timeout=10), b"ok:c")
        before = len([e for e in self.access() if e["path"] == "/test.Svc/Denied"])
        self.assertGreaterEqual(before, 1)
        entry = [e for e in self.access() if e["path"] == "/test.Svc/Denied"][-1]
        self.assertEqual((entry["verdict"], entry["grpc_status"], entry["status"]), ("deny", 7, 200))
        ok = [e for e in self.access() if e["path"] == "/test.Svc/Allowed"][-1]
        self.assertEqual((ok["verdict"], ok["grpc_status"], ok["status"]), ("allow", 0, 200))
        m = scrape(self.ports["admin"])
        self.assertGreaterEqual(value(m, "shunt_http_requests_total", verdict="deny", protocol="h2"), 1)
        self.assertGreaterEqual(value(m, "shunt_http_requests_total", verdict="allow", protocol="h2"), 2)

    def test_grpc_upload_8mib_hash_at_server(self):
        ch = self.channel()
        upload = ch.unary_unary("/test.Svc/Upload")
        self.assertEqual(upload(self.big, timeout=60), hashlib.sha256(self.big).hexdigest().encode())

    def test_grpc_bidi_thousands_of_messages(self):
        ch = self.channel()
        bidi = ch.stream_stream("/test.Svc/Bidi")
        sent = [b"m%05d" % i + os.urandom(i % 200) for i in range(5000)]
        got = list(bidi(iter(sent), timeout=120))
        self.assertEqual(len(got), len(sent))
        self.assertEqual(got, sent)

    # ----------------------------------------------------------- reload

    def test_reload_revokes_a_running_server_stream(self):
        extra = ", test.Svc/Ticks"
        self.shunt.write_config(config(dict(self.ports, extra=extra)))
        self.reload()
        ch = self.channel()
        ticks = ch.unary_stream("/test.Svc/Ticks")
        self.stream_started.clear()
        call = ticks(b"", timeout=60)
        first = next(call)
        self.assertEqual(first, b"tick0")
        grpc_dst = f"127.0.0.1:{self.ports['grpc']}"
        conns = [c for c in get_json(self.ports["admin"], "/connections") if c["dst"] == grpc_dst]
        self.assertEqual([c["protocol"] for c in conns], ["h2"])
        self.shunt.write_config(config(self.ports))
        revoked_at = self.reload()
        with self.assertRaises(grpc.RpcError) as e:
            for _ in call:
                pass
        ended = time.monotonic()
        self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertLess(ended - revoked_at, 0.5)
        # The same channel still works for what is allowed.
        self.assertEqual(ch.unary_unary("/test.Svc/Allowed")(b"z", timeout=10), b"ok:z")

    def reload(self):
        gen = value(scrape(self.ports["admin"]), "shunt_config_generation")
        self.shunt.proc.send_signal(1)
        deadline = time.monotonic() + 10
        while value(scrape(self.ports["admin"]), "shunt_config_generation") == gen:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        return time.monotonic()


if __name__ == "__main__":
    run_tests()

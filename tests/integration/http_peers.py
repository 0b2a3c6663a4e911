"""HTTP peers for the inspection tests (stdlib only): an HTTP/1.1 origin
that keeps connections alive, answers pipelined requests in order, reads
Content-Length and chunked bodies, streams large bodies both ways and
switches to a raw echo after a WebSocket-style 101; and a small client-side
response reader for raw sockets."""
import hashlib
import http.server
import socket
import threading
import time

from shunt_harness import ThreadedServer, pattern


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """http.server's handler as the stdlib origins of the policy tests use
    it: HTTP/1.1 keep-alive, no log lines, and a connection shunt resets
    (it resets both sides when a request breaks its framing) ends quietly."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle(self):
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError):
            pass


class StdlibOrigin:
    """Serves a QuietHandler subclass from a ThreadingHTTPServer on
    127.0.0.1 (`port`) until close(): an upstream that parses requests the
    way Python applications do."""

    def _serve(self, handler):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class Origin:
    """The upstream. Every request it sees is recorded in `seen` as
    (connection index, method, target), in arrival order."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen = []
        self.connections = 0
        self.server = ThreadedServer(self._handle)
        self.port = self.server.port

    def close(self):
        self.server.close()  # also wakes and joins its accept thread

    def paths(self):
        with self.lock:
            return [target for _, _, target in self.seen]

    def _record(self, index, method, target):
        with self.lock:
            self.seen.append((index, method, target))

    def _handle(self, conn):
        with self.lock:
            index = self.connections
            self.connections += 1
        f = conn.makefile("rb", buffering=1 << 16)
        while True:
            line = f.readline(1 << 17)
            if not line:
                return index
            if line in (b"\r\n", b"\n"):
                continue
            method, target, _version = line.decode("latin-1").split()
            headers = {}
            while True:
                h = f.readline(1 << 17)
                if h in (b"\r\n", b"\n", b""):
                    break
                name, _, value = h.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            self._record(index, method, target)
            n, digest = read_body(f, headers)
            path, _, query = target.partition("?")
            params = dict(p.partition("=")[::2] for p in query.split("&") if p)

            if path.startswith("/ws") and headers.get("upgrade", "").lower() == "websocket":
                if path == "/ws-declined":
                    body = b"no upgrade here\n"
                    conn.sendall(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    continue
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                             b"server-first\n")
                raw_echo(conn, f)
                return index
            if path == "/slow":
                time.sleep(float(params.get("s", "0.3")))
            if path.startswith("/blob"):
                size = int(params.get("size", "0"))
                salt = int(params.get("salt", "0"))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: %d\r\n\r\n" % size)
                for chunk in pattern(size, salt):
                    conn.sendall(chunk)
                continue
            if path.startswith("/chunked-response"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for chunk in pattern(int(params.get("size", "100000")), int(params.get("salt", "0"))):
                    conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                conn.sendall(b"0\r\n\r\n")
                continue
            body = f"{method} {target} {n} {digest}\n".encode()
            close = path.startswith("/close")
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(body)
            if close:
                head += b"Connection: close\r\n"
            conn.sendall(head + b"\r\n" + (b"" if method == "HEAD" else body))
            if close:
                return index


def read_body(f, headers):
    """Reads a request body as framed; returns (length, sha256 hex)."""
    h = hashlib.sha256()
    n = 0
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                while f.readline() not in (b"\r\n", b"\n", b""):
                    pass
                break
            n += hash_exactly(f, size, h, "chunk")
            f.readline()
    elif "content-length" in headers:
        n = hash_exactly(f, int(headers["content-length"]), h, "body")
    return n, h.hexdigest()


def hash_exactly(f, size, h, what):
    """Feeds the next `size` bytes of `f` to hash `h`; returns `size`."""
    left = size
    while left:
        d = f.read(min(left, 1 << 20))
        if not d:
            raise EOFError(what + " cut short")
        h.update(d)
        left -= len(d)
    return size


def raw_echo(conn, f):
    """After a 101: echo every byte until EOF, then half-close."""
    while True:
        data = f.read1(1 << 16)
        if not data:
            break
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self):
        return f"Response({self.status}, {self.headers}, {self.body[:80]!r})"


def read_response(f, head_request=False):
    """Reads one response from a socket file; None at EOF before a status line."""
    line = f.readline()
    if not line:
        return None
    status = int(line.split()[1])
    headers = {}
    while True:
        h = f.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if head_request or status in (101, 204, 304) or 100 <= status < 200:
        return Response(status, headers, body)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(f.readline().split(b";")[0], 16)
            if size == 0:
                f.readline()
                break
            parts.append(f.read(size))
            f.readline()
        body = b"".join(parts)
    elif "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    else:
        body = f.read()
    return Response(status, headers, body)


def request(method, target, host="api.local", headers=(), body=b""):
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

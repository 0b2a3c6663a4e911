"""`shunt run --takeover`, protocol version 3: connections that were not
movable at the moment of the takeover move once they reach a boundary, in
the window the old process keeps open after the commit (takeover/late.h,
docs/operating.md "Upgrades"):

- an HTTP/1.1 connection with a request in flight (a slow upload): the
  request finishes through the old process, then the connection, at its
  request boundary, moves; its next request is decided by the new process,
  on the same client and upstream connections;
- a TLS connection whose ClientHello is half there: handed on with the
  bytes read, the new process completes the SNI decision with the rest;
- a half-closed copy (and splice) pair: the open direction keeps delivering
  after the takeover, from the new process.

Each checks the bytes on both sides (what the upstream received too) and
that the connection moved (the new process's log and metrics, and the old
process exiting while the connection is still open).
"""
import hashlib
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

from admin_helpers import get_json, scrape, value, wait_ready
from http_peers import Origin, read_response, request
from shunt_harness import (SHUNT_BIN, Shunt, ThreadedServer, echo_handler, free_port, pattern, pattern_digest,
                           proxy_config, recv_all_digest, recv_exact, rule, run_tests)
from test_takeover import kill, read_text, throttled_send, wait_log


def digest(data):
    return hashlib.sha256(data).hexdigest()


class InspectedTakeoverTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="shunt-takeover-inspected-")
        self.addCleanup(self.tmp.cleanup)
        self.control = os.path.join(self.tmp.name, "control.sock")
        self.admin = free_port()
        self.new_procs = []
        self.addCleanup(self.stop_new)

    def stop_new(self):
        for proc, log in self.new_procs:
            kill(proc)
            if os.environ.get("SHUNT_TEST_KEEP_LOGS"):
                print(f"---- {log} ----\n" + read_text(log)[-4000:])

    def config(self, listeners, rules, datapath="copy", timeouts=None):
        return proxy_config(listeners, rules, datapath=datapath, default="deny", admin=self.admin,
                            timeouts={"drain": "30s", **(timeouts or {})},
                            admin_extra=f", control_socket: {self.control}", access="off")

    def take_over(self, old):
        log = os.path.join(self.tmp.name, f"new-{len(self.new_procs)}.log")
        with open(log, "wb") as out:
            proc = subprocess.Popen([SHUNT_BIN, "run", "-c", old.config_path, "--takeover"], stdout=out,
                                    stderr=subprocess.STDOUT)
        self.new_procs.append((proc, log))
        wait_log(log, r"takeover: complete in \d+ ms", proc)
        return proc, log

    def finish(self, old, new):
        """The old process held nothing more and exited 0; the new one stops cleanly."""
        try:
            self.assertEqual(old.proc.wait(timeout=20), 0, old.output()[-3000:])
        except subprocess.TimeoutExpired:
            self.fail("the old process still runs: " + old.output()[-3000:])
        new.send_signal(signal.SIGTERM)
        self.assertEqual(new.wait(timeout=20), 0)

    def http_config(self, **timeouts):
        """An origin behind a per-request rule (GET and POST under /api/):
        (origin, listen port, config text)."""
        origin = Origin()
        self.addCleanup(origin.close)
        listen = free_port()
        text = self.config([("http", listen, origin.port)],
                           [rule("api", origin.port, http=["{method: GET, path: /api/}",
                                                           "{method: POST, path: /api/}"])],
                           timeouts={"header": "20s", **timeouts})
        return origin, listen, text

    def bulk_config(self, handler, datapath):
        """An upstream running `handler` behind an L4 allow: (upstream,
        listen port, config text)."""
        upstream = ThreadedServer(handler)
        self.addCleanup(upstream.close)
        listen = free_port()
        return upstream, listen, self.config([("bulk", listen, upstream.port)], [rule("bulk", upstream.port)],
                                             datapath=datapath)

    def client(self, listen):
        """A client connection and its reader."""
        c = socket.create_connection(("127.0.0.1", listen), timeout=20)
        self.addCleanup(c.close)
        return c, c.makefile("rb")

    def finish_upload(self, c, f, body):
        """The POST's body from 100 KiB on, slowly; the origin's answer
        names the body's length and hash."""
        for i in range(100 << 10, len(body), 39 << 10):
            c.sendall(body[i:i + (39 << 10)])
            time.sleep(0.1)
        r = read_response(f)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body.decode().split()[2:], [str(len(body)), digest(body)])

    def test_http_request_in_flight_moves_at_its_boundary(self):
        """A POST whose body is still coming at the takeover completes (the
        origin hashes the body it got), then the connection moves: the next
        request is decided by the new process and reaches the origin on the
        same upstream connection."""
        origin, listen, text = self.http_config()
        with Shunt(text, wait_port=listen) as old:
            wait_ready(self.admin, old.proc)
            c, f = self.client(listen)
            c.sendall(request("GET", "/api/first"))
            self.assertEqual(read_response(f).status, 200)
            body = os.urandom(256 << 10)
            c.sendall(request("POST", "/api/upload", headers=[("Content-Length", str(len(body)))])
                      + body[:100 << 10])
            time.sleep(0.3)  # the head is decided and forwarded; the body is in flight
            new, new_log = self.take_over(old)
            # The rest of the body, slowly, after the commit.
            self.finish_upload(c, f, body)
            # At its boundary the connection moved: the old process lets go
            # of it (and exits, holding nothing), the new one adopted it.
            wait_log(new_log, r"takeover: 1 connection\(s\) arrived from pid \d+ as they reached a boundary "
                              r"\(1 HTTP/1.1 after their request", new, timeout=15)
            self.assertEqual(old.proc.wait(timeout=20), 0, old.output()[-3000:])
            self.assertRegex(old.output(), r"boundary window closed after \d+ ms: 1 connection\(s\) moved as "
                                           r"they reached a boundary \(1 HTTP/1.1 after their request.*\); "
                                           r"0 still open here")
            c.sendall(request("GET", "/api/after"))
            r = read_response(f)
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body.decode().split()[:2], ["GET", "/api/after"])
            c.sendall(request("GET", "/private"))  # decided by the new process too: denied
            self.assertEqual(read_response(f).status, 403)
            # One upstream connection carried all three allowed requests.
            self.assertEqual(origin.seen, [(0, "GET", "/api/first"), (0, "POST", "/api/upload"),
                                           (0, "GET", "/api/after")])
            samples = scrape(self.admin)
            # The new process decided the last two requests only.
            self.assertEqual(value(samples, "shunt_http_requests_total", verdict="allow", protocol="h1"), 1)
            self.assertEqual(value(samples, "shunt_http_requests_total", verdict="deny", protocol="h1"), 1)
            self.assertEqual(value(samples, "shunt_takeover_connections_transferred_total", datapath="copy"), 1)
            f.close()
            c.close()
            self.finish(old, new)

    def test_second_takeover_in_the_window_waits_for_it(self):
        """Two upgrades back to back: a third process asks to take over the
        second while a request in flight still holds the second's window
        open. It waits (it used to be refused and exit 2), then completes
        once the connection arrived; the connection moves on to it and
        its next requests are decided there, on the same upstream
        connection."""
        origin, listen, text = self.http_config()
        with Shunt(text, wait_port=listen) as old:
            wait_ready(self.admin, old.proc)
            c, f = self.client(listen)
            body = os.urandom(256 << 10)
            c.sendall(request("POST", "/api/upload", headers=[("Content-Length", str(len(body)))])
                      + body[:100 << 10])
            time.sleep(0.3)  # the head is decided and forwarded; the body is in flight
            second, second_log = self.take_over(old)
            third_log = os.path.join(self.tmp.name, "third.log")
            with open(third_log, "wb") as out:
                third = subprocess.Popen([SHUNT_BIN, "run", "-c", old.config_path, "--takeover"], stdout=out,
                                         stderr=subprocess.STDOUT)
            self.new_procs.append((third, third_log))
            wait_log(second_log, r"takeover: a new process asks to take over while connections still arrive "
                                 r"from the previous takeover; it waits", second, timeout=15)
            self.assertNotIn("took over", read_text(second_log))
            self.finish_upload(c, f, body)
            wait_log(third_log, r"takeover: complete in \d+ ms", third, timeout=20)
            self.assertRegex(read_text(second_log), rf"\(pid {third.pid}\) took over")
            self.assertEqual(old.proc.wait(timeout=20), 0, old.output()[-3000:])
            self.assertEqual(second.wait(timeout=20), 0, read_text(second_log)[-3000:])
            c.sendall(request("GET", "/api/after"))
            r = read_response(f)
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body.decode().split()[:2], ["GET", "/api/after"])
            c.sendall(request("GET", "/private"))
            self.assertEqual(read_response(f).status, 403)
            self.assertEqual(origin.seen, [(0, "POST", "/api/upload"), (0, "GET", "/api/after")])
            samples = scrape(self.admin)  # the third process's
            self.assertEqual(value(samples, "shunt_http_requests_total", verdict="allow", protocol="h1"), 1)
            self.assertEqual(value(samples, "shunt_http_requests_total", verdict="deny", protocol="h1"), 1)
            f.close()
            c.close()
            third.send_signal(signal.SIGTERM)
            self.assertEqual(third.wait(timeout=20), 0)

    def test_new_process_stalled_in_the_window_the_old_keeps_the_connection(self):
        """The new process stops answering after the commit (SIGSTOP, then
        SIGKILL): the connection that reaches its boundary in the window is
        not adopted in time, so the old process takes it back and serves it
        on, the same upstream connection included."""
        origin, listen, text = self.http_config()
        with Shunt(text, wait_port=listen) as old:
            wait_ready(self.admin, old.proc)
            c, f = self.client(listen)
            body = os.urandom(64 << 10)
            c.sendall(request("POST", "/api/upload", headers=[("Content-Length", str(len(body)))]) + body[:1000])
            time.sleep(0.3)
            new, _ = self.take_over(old)
            new.send_signal(signal.SIGSTOP)
            c.sendall(body[1000:])  # the request completes: the connection reaches its boundary
            r = read_response(f)
            self.assertEqual(r.body.decode().split()[2:], [str(len(body)), digest(body)])
            wait_log(old.log_path, r"boundary window ended early", old.proc, timeout=20)
            new.send_signal(signal.SIGKILL)
            new.wait()
            c.sendall(request("GET", "/api/still-here"))
            r = read_response(f)
            self.assertEqual((r.status, r.body.decode().split()[:2]), (200, ["GET", "/api/still-here"]))
            self.assertEqual(origin.seen, [(0, "POST", "/api/upload"), (0, "GET", "/api/still-here")])
            self.assertRegex(old.output(), r"boundary window closed after \d+ ms: 0 connection\(s\) moved .*; "
                                           r"1 still open here")
            f.close()
            c.close()
            self.assertEqual(old.proc.wait(timeout=20), 0, old.output()[-3000:])

    def test_request_outlasting_the_window_drains_in_the_old_process(self):
        """A request still in flight when the window closes (at most half of
        timeouts.drain: 4 s here) stays: the old process says so and counts
        it, then serves it to its end and the connection's next request too,
        on the same upstream connection."""
        origin, listen, text = self.http_config(drain="8s")
        with Shunt(text, wait_port=listen) as old:
            wait_ready(self.admin, old.proc)
            c, f = self.client(listen)
            body = os.urandom(32 << 10)
            c.sendall(request("POST", "/api/slow-upload", headers=[("Content-Length", str(len(body)))])
                      + body[:100])
            time.sleep(0.3)
            new, new_log = self.take_over(old)
            wait_log(old.log_path, r"boundary window closed after (39|40|41)\d\d ms: 0 connection\(s\) moved .*; "
                                   r"1 still open here drain as before", old.proc, timeout=10)
            c.sendall(body[100:])
            r = read_response(f)
            self.assertEqual(r.body.decode().split()[2:], [str(len(body)), digest(body)])
            c.sendall(request("GET", "/api/next"))
            self.assertEqual(read_response(f).status, 200)
            self.assertEqual(origin.seen, [(0, "POST", "/api/slow-upload"), (0, "GET", "/api/next")])
            self.assertRegex(read_text(new_log), r"0 connection\(s\) arrived from pid")
            f.close()
            c.close()
            self.finish(old, new)

    def test_http_half_first_head_decided_by_the_new_process(self):
        """Half of the first request head before the takeover (no upstream
        yet), the rest after: the new process decides the whole head and
        forwards it (the origin sees one request, on its first connection);
        the old process never connected upstream."""
        origin, listen, text = self.http_config()
        head = request("GET", "/api/first-after", headers=[("X-Padding", "p" * 200)])
        with Shunt(text, wait_port=listen) as old:
            wait_ready(self.admin, old.proc)
            c, f = self.client(listen)
            c.sendall(head[:40])
            time.sleep(0.3)  # read by the old process's inspector
            new, new_log = self.take_over(old)
            wait_log(new_log, r"takeover: 1 connection\(s\) arrived from pid \d+ as they reached a boundary "
                              r"\(0 HTTP/1.1 after their request, 0 TLS before their ClientHello, 1 HTTP/1.1 "
                              r"before their first request", new, timeout=15)
            self.assertEqual(old.proc.wait(timeout=20), 0, old.output()[-3000:])
            self.assertEqual(origin.connections, 0)
            c.sendall(head[40:])
            r = read_response(f)
            self.assertEqual((r.status, r.body.decode().split()[:2]), (200, ["GET", "/api/first-after"]))
            c.sendall(request("GET", "/api/second"))
            self.assertEqual(read_response(f).status, 200)
            self.assertEqual(origin.seen, [(0, "GET", "/api/first-after"), (0, "GET", "/api/second")])
            samples = scrape(self.admin)
            self.assertEqual(value(samples, "shunt_http_requests_total", verdict="allow", protocol="h1"), 2)
            self.assertEqual(value(samples, "shunt_takeover_connections_transferred_total", datapath="copy"), 1)
            f.close()
            c.close()
            self.finish(old, new)

    def test_tls_half_hello_decided_by_the_new_process(self):
        self.tls_half_hello("copy")

    def test_tls_half_hello_then_kernel_spliced_by_the_new_process(self):
        self.tls_half_hello("sockmap")

    def tls_half_hello(self, datapath):
        """Half a ClientHello before the takeover, the rest after: the SNI
        is decided by the new process, which then runs the configured data
        path (the kernel's with sockmap), and the upstream receives the
        hello and what follows intact (it echoes them back, hashed)."""
        upstream = ThreadedServer(echo_handler)
        self.addCleanup(upstream.close)
        listen = free_port()
        text = self.config([("tls", listen, upstream.port)],
                           [rule("tls-api", upstream.port, tls="{sni: [api.example.com]}")],
                           datapath=datapath, timeouts={"header": "20s"})
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        outgoing = ssl.MemoryBIO()
        tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="api.example.com")
        with self.assertRaises(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()  # a real ClientHello naming api.example.com
        self.assertIn(b"api.example.com", hello)
        after = os.urandom(64 << 10)
        with Shunt(text, wait_port=listen) as old:
            wait_ready(self.admin, old.proc)
            c = socket.create_connection(("127.0.0.1", listen), timeout=15)
            self.addCleanup(c.close)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            half = len(hello) // 2
            c.sendall(hello[:half])
            time.sleep(0.3)  # read by the old process's inspector
            new, new_log = self.take_over(old)
            wait_log(new_log, r"takeover: 1 connection\(s\) arrived from pid \d+ as they reached a boundary "
                              r"\(0 HTTP/1.1 after their request, 1 TLS before their ClientHello", new, timeout=15)
            self.assertEqual(old.proc.wait(timeout=20), 0, old.output()[-3000:])
            c.sendall(hello[half:])
            time.sleep(0.2)  # a client waits for the ServerHello; the hello is decided alone
            c.sendall(after)
            sent = hello + after
            got = recv_exact(c, len(sent))
            self.assertEqual(digest(got), digest(sent))
            # The new process carries it on the configured data path.
            conns = get_json(self.admin, "/connections")
            self.assertEqual([(x["rule"], x["datapath"]) for x in conns], [("tls-api", datapath)], conns)
            c.shutdown(socket.SHUT_WR)
            self.assertEqual(c.recv(1), b"")
            self.assertEqual(upstream.wait_results(1, timeout=10), [len(sent)])
            samples = scrape(self.admin)
            self.assertEqual(value(samples, "shunt_policy_decisions_total", rule="tls-api", verdict="allow"), 1)
            self.assertEqual(value(samples, "shunt_takeover_connections_transferred_total", datapath="copy"), 1)
            c.close()
            self.finish(old, new)

    def half_closed_pair(self, datapath):
        """The client sends its bytes and half-closes; the upstream reads to
        EOF, then streams back slowly. A takeover during that stream moves
        the half-closed pair: the old process exits while the stream goes
        on, and the client gets every byte (hashed) and the FIN."""
        size = 3 << 20
        received = {}

        def stream_back(conn):
            received["up"] = recv_all_digest(conn)
            throttled_send(conn, size, 9, 1 << 20)  # 1 MiB/s
            return size

        upstream, listen, text = self.bulk_config(stream_back, datapath)
        with Shunt(text, wait_port=listen) as old:
            wait_ready(self.admin, old.proc)
            c, _ = self.client(listen)
            up = os.urandom(200 << 10)
            c.sendall(up)
            c.shutdown(socket.SHUT_WR)
            h = hashlib.sha256()
            n = 0

            def read_some(limit):
                nonlocal n
                while n < limit:
                    data = c.recv(min(1 << 16, limit - n))
                    if not data:
                        return
                    h.update(data)
                    n += len(data)

            read_some(256 << 10)  # the stream back has begun: the pair is half-closed
            reader = threading.Thread(target=read_some, args=(size,))
            reader.start()
            new, new_log = self.take_over(old)
            # Moved at the commit or in the window just after it.
            wait_log(new_log, r"arrived from pid \d+ as they reached a boundary", new, timeout=15)
            text_new = read_text(new_log)
            moved = ("0 kernel-spliced connection(s), 1 copy/splice" in text_new
                     or "1 copy/splice once flushed or half-closed" in text_new)
            self.assertTrue(moved, text_new[-3000:])
            # The old process holds nothing more while the stream goes on.
            self.assertEqual(old.proc.wait(timeout=20), 0, old.output()[-3000:])
            self.assertTrue(reader.is_alive(), "the old process exited only once the stream had ended")
            reader.join(timeout=30)
            self.assertFalse(reader.is_alive())
            self.assertEqual((n, h.hexdigest()), (size, pattern_digest(size, 9)))
            self.assertEqual(c.recv(1), b"")  # the upstream's FIN, passed on by the new process
            self.assertEqual(received["up"], (len(up), digest(up)))
            self.assertEqual(upstream.wait_results(1, timeout=10), [size])
            samples = scrape(self.admin)
            self.assertEqual(value(samples, "shunt_takeover_connections_transferred_total", datapath=datapath), 1)
            c.close()
            self.finish(old, new)

    def mid_write_pair(self, datapath):
        """At the commit the pair is mid-write (its client does not read,
        so the upstream's bytes wait in the proxy's write): not movable
        then. Once the client reads, the write completes and the pair
        freezes at its next read, in the window, and moves: the new process
        delivers the rest, every byte in order (hashed)."""
        size = 24 << 20
        got_up = {}

        def blast(conn):
            got_up["bytes"] = conn.recv(16)
            for chunk in pattern(size, 4):
                conn.sendall(chunk)
            return size

        upstream, listen, text = self.bulk_config(blast, datapath)
        with Shunt(text, wait_port=listen) as old:
            wait_ready(self.admin, old.proc)
            c, _ = self.client(listen)
            c.sendall(b"go")
            time.sleep(0.5)  # every buffer on the way fills: the proxy's write waits
            new, new_log = self.take_over(old)
            self.assertRegex(read_text(new_log), r"complete in \d+ ms: 0 kernel-spliced connection\(s\), 0 copy/splice")
            h = hashlib.sha256()
            n = 0
            while n < size:
                data = c.recv(1 << 16)
                if not data:
                    break
                h.update(data)
                n += len(data)
            self.assertEqual((n, h.hexdigest()), (size, pattern_digest(size, 4)))
            wait_log(new_log, r"1 connection\(s\) arrived from pid \d+ as they reached a boundary \(0 HTTP/1.1 "
                              r"after their request, 0 TLS before their ClientHello, 0 HTTP/1.1 before their first "
                              r"request, 1 copy/splice", new, timeout=15)
            self.assertEqual(got_up["bytes"], b"go")
            self.assertEqual(old.proc.wait(timeout=20), 0, old.output()[-3000:])
            samples = scrape(self.admin)
            self.assertEqual(value(samples, "shunt_takeover_connections_transferred_total", datapath=datapath), 1)
            c.shutdown(socket.SHUT_WR)
            self.assertEqual(c.recv(1), b"")  # the upstream's FIN, from the new process
            c.close()
            self.finish(old, new)

    def test_mid_write_copy_pair(self):
        self.mid_write_pair("copy")

    def test_mid_write_splice_pair(self):
        self.mid_write_pair("splice")

    def test_half_closed_copy_pair(self):
        self.half_closed_pair("copy")

    def test_half_closed_splice_pair(self):
        self.half_closed_pair("splice")


if __name__ == "__main__":
    run_tests()

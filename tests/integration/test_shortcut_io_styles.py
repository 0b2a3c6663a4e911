"""Applications on a short-circuited endpoint keep working however they do
I/O (issue 12, item 4; docs/datapath.md, "The endpoint short-circuit").

A captured client's socket runs tcp_bpf's protocol operations: its sends
go through the sk_msg program (and may be redirected), its reads through
tcp_bpf_recvmsg, and its readiness through tcp_bpf's poll. Each test pairs a
send style with a read style on one captured connection: 16 MiB up, sent
once the capture has happened, then SHUT_WR; the upstream hashes what it got
and answers 16 MiB, which the client reads in its style until EOF. Both
directions are hash-checked against the pattern, and the access log must say
the client's bytes went over sk_msg (or, for the styles shunt does not
capture, that it stayed on sk_skb and the fallback was counted).

Styles: sendall, sendfile(2), splice(2) from a pipe, sendmsg with many
buffers; recv, splice(2) into a pipe, MSG_PEEK before every read,
SO_RCVLOWAT with poll, edge-triggered epoll; and MSG_ZEROCOPY with
SO_ZEROCOPY set before the connection: not captured, counted, and every send
completed and notified on the error queue; SO_ZEROCOPY set, or the file
made blocking, after the capture: the client is released (counted) at its
next send, every send notified, its blocking read gets the whole late
reply (docs/datapath.md). And a real server as the local sender:
nginx serving a file with sendfile and tcp_nopush behind shunt with the
default configuration, its own socket captured. Needs root (BPF)."""
import errno
import hashlib
import os
import select
import socket
import tempfile
import time
import unittest

import test_datapath_shortcut as shortcut
from shunt_harness import (Shunt, ThreadedServer, digest_to_eof, free_port, pattern, pattern_digest, recv_all_digest,
                           run_tests, static_config)
from test_http_bypass import NGINX_HEAD, Nginx

SIZE = 16 << 20
# nginx as the local server, sending a static file with sendfile(2): the
# server's own socket is captured (it is non-blocking and in shunt's netns)
# and its sendfile goes through tcp_bpf's sendmsg.
NGINX_SENDFILE_CONF = NGINX_HEAD + """
    access_log off;
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port};
        root {dir};
    }}
}}
"""
UP_SALT, DOWN_SALT = 12, 21
# Long enough for the pair's handover and the capture that follows it.
CAPTURE_WAIT = 0.4


def answer_after_eof(conn, delay=0.0):
    """Upstream: hashes what it receives until EOF, then (after `delay`
    seconds) sends SIZE bytes of the down pattern and closes; returns
    (bytes, digest)."""
    got = recv_all_digest(conn)
    time.sleep(delay)
    for chunk in pattern(SIZE, DOWN_SALT):
        conn.sendall(chunk)
    return got


def wait_for(sock_or_fd, events, timeout=20):
    p = select.poll()
    p.register(sock_or_fd, events)
    if not p.poll(timeout * 1000):
        raise TimeoutError(f"no poll event {events:#x} in {timeout} s")


def up_bytes():
    return b"".join(pattern(SIZE, UP_SALT))


# --- send styles: each sends SIZE bytes of the up pattern --------------------


def send_sendall(sock):
    """sendall in 128 KiB writes: a single write larger than the target's
    send buffer never fits and stays on TCP (docs/datapath.md, the room
    check), which is correct but would not test the redirect."""
    data = memoryview(up_bytes())
    for off in range(0, SIZE, 128 << 10):
        sock.sendall(data[off:off + (128 << 10)])


def send_sendfile(sock):
    with tempfile.TemporaryFile() as f:
        f.write(up_bytes())
        f.flush()
        f.seek(0)
        assert sock.sendfile(f) == SIZE  # sendfile(2): the socket has a timeout


def send_splice(sock):
    """splice(2) from a pipe into the socket, as a proxy in a pod would."""
    data = memoryview(up_bytes())
    r, w = os.pipe()
    try:
        os.set_blocking(w, False)
        written = spliced = 0
        while spliced < SIZE:
            if written < SIZE:
                try:
                    written += os.write(w, data[written:written + (1 << 16)])
                except BlockingIOError:
                    pass
            try:
                n = os.splice(r, sock.fileno(), written - spliced, flags=os.SPLICE_F_NONBLOCK)
                spliced += n
            except BlockingIOError:
                wait_for(sock, select.POLLOUT)
    finally:
        os.close(r)
        os.close(w)


def send_sendmsg_vectors(sock):
    """sendmsg with 64 buffers of 4 KiB each (writev's shape)."""
    data = memoryview(up_bytes())
    off = 0
    while off < SIZE:
        buffers = [data[o:o + 4096] for o in range(off, min(off + (64 << 12), SIZE), 4096)]
        try:
            off += sock.sendmsg(buffers)
        except BlockingIOError:
            wait_for(sock, select.POLLOUT)


# --- read styles: each reads until EOF and returns (bytes, digest) ----------


def read_recv(sock):
    return digest_to_eof(sock.recv)


def read_splice(sock):
    """splice(2) from the socket into a pipe, as HAProxy does."""
    h = hashlib.sha256()
    n = 0
    r, w = os.pipe()
    try:
        while True:
            try:
                moved = os.splice(sock.fileno(), w, 1 << 16, flags=os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                wait_for(sock, select.POLLIN)
                continue
            if moved == 0:
                return n, h.hexdigest()
            while moved:
                data = os.read(r, moved)
                h.update(data)
                n += len(data)
                moved -= len(data)
    finally:
        os.close(r)
        os.close(w)


def read_peek(sock):
    """Every read is preceded by a MSG_PEEK of the same bytes."""
    h = hashlib.sha256()
    n = 0
    while True:
        peeked = sock.recv(1 << 16, socket.MSG_PEEK)
        if not peeked:
            # EOF seen by the peek: the read must agree.
            assert sock.recv(1) == b"", "a read after a peek at EOF returned bytes"
            return n, h.hexdigest()
        got = b""
        while len(got) < len(peeked):
            got += sock.recv(len(peeked) - len(got))
        assert got == peeked, f"peeked bytes differ from the read ones at offset {n}"
        h.update(got)
        n += len(got)


def read_rcvlowat(sock):
    """SO_RCVLOWAT 128 KiB, non-blocking reads after poll() says readable:
    the wake-up must come (at the mark, or at EOF)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 128 << 10)
    sock.setblocking(False)
    h = hashlib.sha256()
    n = 0
    while True:
        wait_for(sock, select.POLLIN)
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            continue
        if not data:
            return n, h.hexdigest()
        h.update(data)
        n += len(data)


def read_epoll_et(sock):
    """Edge-triggered epoll: read until EAGAIN on every edge; a lost edge
    is a hang, caught by the poll timeout."""
    sock.setblocking(False)
    ep = select.epoll()
    ep.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)
    h = hashlib.sha256()
    n = 0
    try:
        while True:
            if not ep.poll(20):
                raise TimeoutError(f"no edge in 20 s after {n} bytes")
            while True:
                try:
                    data = sock.recv(1 << 20)
                except BlockingIOError:
                    break
                if not data:
                    return n, h.hexdigest()
                h.update(data)
                n += len(data)
    finally:
        ep.close()


SO_ZEROCOPY = 60
MSG_ZEROCOPY = 0x4000000
SO_EE_ORIGIN_ZEROCOPY = 5


def zerocopy_send(sock, data=None):
    """MSG_ZEROCOPY sends of `data` (default: the whole up pattern), then
    waits for the kernel's completion notifications covering all of them
    (an application may not reuse its buffers before): a socket that never
    notifies hangs the application."""
    if data is None:
        data = memoryview(up_bytes())  # pinned by the kernel until notified: slices, not copies
    sends = 0
    off = 0
    while off < len(data):
        try:
            off += sock.send(data[off:off + (128 << 10)], MSG_ZEROCOPY)
            sends += 1
        except BlockingIOError:
            wait_for(sock, select.POLLOUT)
        except OSError as e:
            if e.errno != errno.ENOBUFS:  # optmem for notifications: drain them first
                raise
            time.sleep(0.01)
    notified = 0  # completion ranges cover send calls [lo, hi]
    deadline = time.monotonic() + 10
    while notified < sends:
        if time.monotonic() > deadline:
            raise AssertionError(f"{notified} of {sends} zerocopy sends notified in 10 s")
        try:
            _, ancdata, _, _ = sock.recvmsg(0, 1024, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except (BlockingIOError, TimeoutError):  # with a timeout, Python polls first
            time.sleep(0.01)
            continue
        for level, kind, payload in ancdata:
            # struct sock_extended_err: errno u32, origin u8, type u8, code u8,
            # pad u8, info u32 (lo), data u32 (hi).
            origin = payload[4]
            if origin == SO_EE_ORIGIN_ZEROCOPY:
                lo = int.from_bytes(payload[8:12], "little")
                hi = int.from_bytes(payload[12:16], "little")
                notified += hi - lo + 1


class IoStylesTest(unittest.TestCase):
    start = shortcut.ShortcutTest.start

    def transfer(self, send, read, before_connect=None, expect_path="sk_msg", fallback=None, delay=0.0):
        with ThreadedServer(lambda conn: answer_after_eof(conn, delay)) as server, \
                self.start(server.port) as shunt:
            with socket.socket() as c:
                if before_connect:
                    before_connect(c)
                c.settimeout(20)  # O_NONBLOCK underneath: capturable
                c.connect(("127.0.0.1", self.port))
                time.sleep(CAPTURE_WAIT)
                send(c)
                c.shutdown(socket.SHUT_WR)
                got = read(c)
            self.assertEqual(server.wait_results(1)[0], (SIZE, pattern_digest(SIZE, UP_SALT)), "upstream received")
            self.assertEqual(got, (SIZE, pattern_digest(SIZE, DOWN_SALT)), "client received")
            time.sleep(0.3)
            records = shortcut.access_lines(shunt)
            self.assertEqual(len(records), 1, records)
            self.assertEqual(records[0]["path_up"], expect_path, records[0])
            self.assertEqual(records[0]["bytes_up"], SIZE, records[0])
            self.assertEqual(records[0]["bytes_down"], SIZE, records[0])
            counted = shortcut.fallbacks(self.admin)
            for reason, n in counted.items():
                self.assertEqual(n, 1 if reason == fallback else 0, f"{reason}: {counted}")
            self.assertEqual(shunt.stop(), 0, shunt.output())

    def test_sendall_and_recv(self):
        self.transfer(send_sendall, read_recv)

    def test_sendfile_and_splice_reader(self):
        self.transfer(send_sendfile, read_splice)

    def test_splice_sender_and_peeking_reader(self):
        self.transfer(send_splice, read_peek)

    def test_vectored_sender_and_rcvlowat_reader(self):
        self.transfer(send_sendmsg_vectors, read_rcvlowat)

    def test_sendall_and_edge_triggered_reader(self):
        self.transfer(send_sendall, read_epoll_et)

    def test_zerocopy_set_before_connect_is_not_captured(self):
        self.transfer(zerocopy_send, read_recv, expect_path="sk_skb", fallback="shortcut_zerocopy",
                      before_connect=lambda c: c.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1))


    def test_zerocopy_set_after_capture_releases_the_client(self):
        """Captured, 4 MiB redirected, then SO_ZEROCOPY and MSG_ZEROCOPY
        sends: a redirected zerocopy send is never notified, so the sk_msg
        program sends this one over TCP (notified) and has shunt release
        the socket, counted as shortcut_zerocopy; every send is notified
        and every byte arrives."""

        def send(c):
            data = memoryview(up_bytes())
            head = 4 << 20
            for off in range(0, head, 128 << 10):
                c.sendall(data[off:off + (128 << 10)])
            c.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
            zerocopy_send(c, data[head:])

        self.transfer(send, read_recv, fallback="shortcut_zerocopy")

    def test_client_turning_blocking_after_capture_is_released(self):
        """Captured, 4 MiB redirected, then the client makes its socket
        blocking, sends the rest, shuts its write side and blocks in read()
        for a reply that comes 300 ms later: tcp_bpf's recvmsg could return
        EAGAIN to it there, so its first blocking send has shunt release the
        socket (counted as shortcut_blocking_socket) and the read gets the
        whole reply."""

        def send(c):
            data = memoryview(up_bytes())
            head = 4 << 20
            for off in range(0, head, 128 << 10):
                c.sendall(data[off:off + (128 << 10)])
            c.setblocking(True)
            c.sendall(data[head:])

        self.transfer(send, read_recv, fallback="shortcut_blocking_socket", delay=0.3)


class NginxSendfileTest(unittest.TestCase):
    def test_nginx_sendfile_server_with_the_default_config(self):
        """shunt with the default `proxy` keys (the short-circuit is on by
        default) in front of nginx serving a 32 MiB file with sendfile and
        tcp_nopush: three GETs on one keep-alive connection, each body
        hashed against the file; nginx's socket is captured (path_down
        sk_msg), and the access log counts the bytes each way exactly."""
        size = 32 << 20
        nginx = Nginx(NGINX_SENDFILE_CONF)
        try:
            with open(os.path.join(nginx.dir, "blob"), "wb") as f:
                for chunk in pattern(size, DOWN_SALT):
                    f.write(chunk)
            port, admin = free_port(), free_port()
            config = static_config(port, nginx.port, "sockmap")
            self.assertNotIn("endpoint_shortcut", config)
            config = config.replace("admin: {listen: 127.0.0.1:", f"admin: {{listen: 127.0.0.1:{admin}}}\n#")
            with Shunt(config, wait_port=port) as shunt:
                request = b"GET /blob HTTP/1.1\r\nHost: files\r\n\r\n"
                sent = received = 0
                # The reader is closed with the socket: an open makefile()
                # keeps the fd, and the client's FIN, from going.
                with socket.create_connection(("127.0.0.1", port), timeout=20) as c, c.makefile("rb") as f:
                    time.sleep(CAPTURE_WAIT)  # nginx has accepted; the capture's retries have run
                    for _ in range(3):
                        c.sendall(request)
                        sent += len(request)
                        head = b""
                        while not head.endswith(b"\r\n\r\n"):
                            line = f.readline()
                            self.assertTrue(line, "connection closed in the response head")
                            head += line
                        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
                        self.assertIn(b"content-length: %d\r\n" % size, head.lower())
                        body = hashlib.sha256()
                        left = size
                        while left:
                            piece = f.read1(min(left, 1 << 20))
                            self.assertTrue(piece, f"body ended {left} bytes short")
                            body.update(piece)
                            left -= len(piece)
                        self.assertEqual(body.hexdigest(), pattern_digest(size, DOWN_SALT))
                        received += len(head) + size
                time.sleep(0.3)
                records = shortcut.access_lines(shunt)
                self.assertEqual(len(records), 1, records)
                self.assertEqual(records[0]["path_down"], "sk_msg", records[0])
                self.assertEqual((records[0]["bytes_up"], records[0]["bytes_down"]), (sent, received), records[0])
                self.assertEqual(shunt.stop(), 0, shunt.output())
        finally:
            nginx.close()


if __name__ == "__main__":
    run_tests()

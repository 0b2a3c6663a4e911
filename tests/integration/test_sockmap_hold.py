"""A fast sender to a slow reader through `datapath: sockmap` (docs/datapath.md,
"Memory bound"): the kernel neither charges nor bounds a redirect target's
psock backlog, so without the verdict's hold a sender is told gigabytes
were delivered that sit in shunt's kernel memory. Each direction in turn:
the sender sends as fast as it can, the reader takes 1 MiB and stops for a
few seconds. While it stops, what the sender got through (its socket's
acknowledged bytes) may exceed what the reader read by no more than the
buffers of the path (plus the bulk boost); then the reader takes the rest
and every byte is checked by hash. Needs root (BPF sockmap)."""
import hashlib
import re
import socket
import struct
import threading
import time
import unittest

from admin_helpers import scrape, value
from shunt_harness import (Shunt, ThreadedServer, free_port, pattern, pattern_digest, recv_exact, run_tests,
                           static_config)

TOTAL = 1 << 30  # more than the bound below by far: a sender that is never held sends it all during the stall
STALL = 3.0
FIRST = 1 << 20
# Buffers a stalled direction may fill (the reader's receive buffer, both of
# shunt's socket queues with the 64 MiB bulk boost doubled by the kernel,
# the backlog limit) with a wide margin; unbounded, the stall lets the
# sender push several hundred MiB more (measured 1.1 GiB in 3 s before the
# hold).
BOUND = 256 << 20
TCP_INFO_BYTES_ACKED = 120  # offset of tcpi_bytes_acked in struct tcp_info (Linux >= 4.1)


def bytes_acked(sock):
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("Q", info, TCP_INFO_BYTES_ACKED)[0]


class Sender:
    """Sends the pattern as fast as the socket takes it, from a thread."""

    def __init__(self, sock, salt):
        self.sock = sock
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(salt,), daemon=True)
        self.thread.start()

    def _run(self, salt):
        try:
            for chunk in pattern(TOTAL, salt):
                self.sock.sendall(chunk)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.error = e


def read_rest_digest(sock, first):
    h = hashlib.sha256(first)
    n = len(first)
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return n, h.hexdigest()
        h.update(data)
        n += len(data)


class SockmapHoldTest(unittest.TestCase):
    def setUp(self):
        self.port = free_port()
        self.admin = free_port()

    def config(self, server_port):
        return re.sub(r"admin: \{listen: 127\.0\.0\.1:\d+\}", f"admin: {{listen: 127.0.0.1:{self.admin}}}",
                      static_config(self.port, server_port, "sockmap"))

    def stalled_reader(self, upstream_sends):
        """The sender is the upstream (`upstream_sends`) or the client; the
        other end reads FIRST bytes, stalls, then reads to EOF."""
        salt = 11 if upstream_sends else 13
        server_side = {}
        ready = threading.Event()
        finished = threading.Event()  # the upstream's socket stays open until measured

        def handler(conn):
            conn.settimeout(120)
            server_side["conn"] = conn
            if upstream_sends:
                server_side["sender"] = Sender(conn, salt)
                ready.set()
                server_side["sender"].thread.join(120)
                finished.wait(120)
                return None
            ready.set()
            first = recv_exact(conn, FIRST)
            server_side["stall_start"] = time.monotonic()
            time.sleep(STALL)
            server_side["stall_end"] = True
            return read_rest_digest(conn, first)

        with ThreadedServer(handler) as server, Shunt(self.config(server.port), wait_port=self.port) as shunt:
            before = scrape(self.admin)
            with socket.create_connection(("127.0.0.1", self.port), timeout=120) as c:
                self.assertTrue(ready.wait(10), "upstream never accepted")
                if upstream_sends:
                    sender, sending_sock, reader = server_side["sender"], server_side["conn"], c
                else:
                    sender, sending_sock, reader = Sender(c, salt), c, None
                if reader is not None:
                    first = recv_exact(reader, FIRST)
                    time.sleep(STALL)
                else:
                    deadline = time.monotonic() + 30
                    while "stall_end" not in server_side and time.monotonic() < deadline:
                        time.sleep(0.05)
                # What the sender was told got through, beyond what the reader took.
                ahead = bytes_acked(sending_sock) - FIRST
                finished.set()
                if reader is not None:
                    got = read_rest_digest(reader, first)
                else:
                    got = server.wait_results(1, timeout=120)[0]
                sender.thread.join(120)
                self.assertIsNone(sender.error)
            self.assertEqual(got, (TOTAL, pattern_digest(TOTAL, salt)), "bytes differ")
            self.assertLess(ahead, BOUND, f"sender got {ahead >> 20} MiB ahead of a stalled reader")
            after = scrape(self.admin)
            self.assertGreater(value(after, "shunt_sockmap_holds_total") - value(before, "shunt_sockmap_holds_total"),
                               0)
            self.assertGreater(value(after, "shunt_sockmap_held_bytes_total"), 0)
            self.assertEqual(value(after, "shunt_sockmap_backlog_dropped_bytes_total"), 0)
            self.assertEqual(shunt.stop(), 0, shunt.output())

    def test_upstream_sends_client_stalls(self):
        self.stalled_reader(upstream_sends=True)

    def test_client_sends_upstream_stalls(self):
        self.stalled_reader(upstream_sends=False)


if __name__ == "__main__":
    run_tests()

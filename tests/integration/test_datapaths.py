"""The three data paths (sockmap, splice, copy) over loopback with real
peers: byte-exact transfers both ways at once, half-close each way,
server-first protocols, resets each way, 1,000 concurrent connections,
early client close and a refusing upstream. Needs root (BPF sockmap)."""
import asyncio
import hashlib
import os
import socket
import struct
import threading
import time
import unittest

from shunt_harness import (Shunt, ThreadedServer, free_port, pattern, pattern_digest, recv_all_digest,
                           recv_exact, run_tests, send_pattern, static_config)

HEADER = struct.Struct("!QQQ")  # bytes client->server, bytes server->client, salt


def bidirectional_handler(conn):
    """Reads the header, then sends its share while receiving the client's,
    both at once; returns (bytes received, digest)."""
    up, down, salt = HEADER.unpack(recv_exact(conn, HEADER.size))
    sender = threading.Thread(target=lambda: (send_pattern(conn, down, salt + 1), conn.shutdown(socket.SHUT_WR)))
    sender.start()
    got = recv_all_digest(conn)
    sender.join()
    return got


class DatapathTests:
    datapath = None
    proxy_extra = ""
    # Set on the servers' accepted sockets (ThreadedServer's `timeout`):
    # a number makes them O_NONBLOCK, so a local server is captured too.
    server_timeout = None

    def setUp(self):
        self.port = free_port()

    def server(self, handler):
        return ThreadedServer(handler, timeout=self.server_timeout)

    def start(self, server_port, **kw):
        return Shunt(static_config(self.port, server_port, self.datapath, proxy_extra=self.proxy_extra),
                     wait_port=self.port, **kw)

    def transfer(self, up, down, salt=7):
        """Client sends `up` bytes and receives `down` bytes concurrently."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as c:
            c.sendall(HEADER.pack(up, down, salt))
            received = {}

            def receive():
                received["v"] = recv_all_digest(c)

            t = threading.Thread(target=receive)
            t.start()
            send_pattern(c, up, salt)
            c.shutdown(socket.SHUT_WR)
            t.join(120)
            self.assertFalse(t.is_alive(), "client receive did not finish")
            return received["v"]

    def check_sizes(self, sizes):
        with self.server(bidirectional_handler) as server, self.start(server.port) as shunt:
            for i, size in enumerate(sizes):
                got = self.transfer(size, size, salt=i * 10)
                self.assertEqual(got, (size, pattern_digest(size, i * 10 + 1)), f"client side, {size} bytes")
                results = server.wait_results(i + 1)
                self.assertEqual(results[i], (size, pattern_digest(size, i * 10)), f"server side, {size} bytes")
            self.assertEqual(server.errors, [])
            self.assertEqual(shunt.stop(), 0, shunt.output())

    def test_payload_sizes_both_directions(self):
        self.check_sizes([0, 1, 64 * 1024])

    def test_256mib_both_directions(self):
        self.check_sizes([256 * 1024 * 1024])

    def test_client_half_close_then_response(self):
        """Client sends, shuts its write side, and still gets the whole response."""
        def handler(conn):
            n, digest = recv_all_digest(conn)  # until the client's FIN
            response = (digest.encode() + b"\n") * 1000 + b"end"
            conn.sendall(response)
            return n, digest

        with self.server(handler) as server, self.start(server.port):
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as c:
                send_pattern(c, 3 * 1024 * 1024, 5)
                c.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := c.recv(65536):
                    data += chunk
            expected = pattern_digest(3 * 1024 * 1024, 5)
            self.assertEqual(data, (expected.encode() + b"\n") * 1000 + b"end")
            self.assertEqual(server.wait_results(1)[0], (3 * 1024 * 1024, expected))

    def test_server_half_close_client_keeps_sending(self):
        """Upstream shuts its write side first; the client still delivers."""
        def handler(conn):
            conn.sendall(b"ready\n")
            conn.shutdown(socket.SHUT_WR)
            got = recv_all_digest(conn)
            return got

        with self.server(handler) as server, self.start(server.port):
            with socket.create_connection(("127.0.0.1", self.port), timeout=30) as c:
                self.assertEqual(recv_exact(c, 6), b"ready\n")
                self.assertEqual(c.recv(10), b"", "FIN from upstream reaches the client")
                send_pattern(c, 2 * 1024 * 1024, 9)
                c.shutdown(socket.SHUT_WR)
            self.assertEqual(server.wait_results(1)[0], (2 * 1024 * 1024, pattern_digest(2 * 1024 * 1024, 9)))

    def test_upstream_half_closes_at_once(self):
        """The upstream sends its bytes and its FIN as soon as it accepts, so
        the FIN lands before, during or after the handover (on sockmap: a
        socket in CLOSE_WAIT is refused by the map, and between the pair's
        two inserts that leaves the client's socket already redirecting;
        shunt then copies the upstream's last bytes itself). Every
        connection keeps every byte both ways."""
        greeting = os.urandom(300_000)

        def handler(conn):
            conn.sendall(greeting)
            conn.shutdown(socket.SHUT_WR)
            return recv_all_digest(conn)

        rounds = 60
        with self.server(handler) as server, self.start(server.port):
            for i in range(rounds):
                with socket.create_connection(("127.0.0.1", self.port), timeout=30) as c:
                    send_pattern(c, 128 * 1024, i)
                    c.shutdown(socket.SHUT_WR)
                    self.assertEqual(hashlib.sha256(recv_exact(c, len(greeting))).digest(),
                                     hashlib.sha256(greeting).digest(), f"connection {i}")
                    self.assertEqual(c.recv(10), b"", f"connection {i}: the upstream's FIN")
            results = server.wait_results(rounds)
            self.assertEqual(sorted(results), sorted((128 * 1024, pattern_digest(128 * 1024, i))
                                                     for i in range(rounds)))

    def test_server_speaks_first(self):
        """A server-first protocol: upstream's greeting arrives before the
        client sends anything (and before or during the handover)."""
        greeting = b"220 " + os.urandom(200_000).hex().encode() + b"\r\n"

        def handler(conn):
            conn.sendall(greeting)
            line = recv_exact(conn, 6)
            conn.sendall(b"bye " + line)
            conn.shutdown(socket.SHUT_WR)
            return line

        with self.server(handler) as server, self.start(server.port):
            for _ in range(5):
                with socket.create_connection(("127.0.0.1", self.port), timeout=30) as c:
                    self.assertEqual(hashlib.sha256(recv_exact(c, len(greeting))).digest(),
                                     hashlib.sha256(greeting).digest())
                    c.sendall(b"QUIT\r\n")
                    self.assertEqual(recv_exact(c, 10), b"bye QUIT\r\n")

    def test_upstream_reset_reaches_client(self):
        def handler(conn):
            recv_exact(conn, 5)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return "reset"

        with self.server(handler) as server, self.start(server.port):
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as c:
                c.sendall(b"hello")
                start = time.time()
                with self.assertRaises(ConnectionResetError):
                    while c.recv(100):
                        pass
                self.assertLess(time.time() - start, 2.0)

    def test_client_reset_reaches_upstream(self):
        seen = {}

        def handler(conn):
            conn.sendall(b"x")
            start = time.time()
            try:
                while conn.recv(100):
                    pass
                seen["how"] = "eof"
            except ConnectionResetError:
                seen["how"] = "reset"
            seen["after"] = time.time() - start
            return seen["how"]

        with self.server(handler) as server, self.start(server.port):
            c = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            self.assertEqual(recv_exact(c, 1), b"x")
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
            server.wait_results(1, timeout=5)
            self.assertEqual(seen["how"], "reset")
            self.assertLess(seen["after"], 2.0)

    def test_1000_concurrent_connections_1mib_each(self):
        size = 1024 * 1024

        async def echo(reader, writer):
            try:
                while data := await reader.read(1 << 16):
                    writer.write(data)
                    await writer.drain()
            except ConnectionError:
                pass  # counted by the client's digest check
            writer.close()

        async def one_client(i, sem):
            async with sem:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            payload_digest = hashlib.sha256()
            got = hashlib.sha256()
            received = 0

            async def read_back():
                nonlocal received
                while data := await reader.read(1 << 16):
                    got.update(data)
                    received += len(data)

            reader_task = asyncio.create_task(read_back())
            try:
                for chunk in pattern(size, i):
                    payload_digest.update(chunk)
                    writer.write(chunk)
                    await writer.drain()
                writer.write_eof()
                await asyncio.wait_for(reader_task, 120)
            except (ConnectionError, asyncio.TimeoutError):
                reader_task.cancel()
                return False
            finally:
                writer.close()
            return received == size and got.digest() == payload_digest.digest()

        async def main(server_port):
            # Connect in waves of 200 so the listen backlog never overflows;
            # all 1,000 are open and transferring at once afterwards.
            sem = asyncio.Semaphore(200)
            return await asyncio.gather(*(one_client(i, sem) for i in range(1000)))

        async def run():
            server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=4096)
            port = server.sockets[0].getsockname()[1]
            with self.start(port) as shunt:
                results = await main(port)
                server.close()
                return results, shunt

        results, _ = asyncio.run(run())
        self.assertEqual(sum(results), 1000, f"{1000 - sum(results)} connections lost or corrupted bytes")

    def test_client_closes_before_upstream_connect_completes(self):
        # A listener whose accept queue is full drops SYNs: connect() hangs
        # until shunt's connect timeout (2 s here).
        blackhole = socket.socket()
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(0)
        bh_port = blackhole.getsockname()[1]
        filler = [socket.create_connection(("127.0.0.1", bh_port), timeout=2) for _ in range(1)]
        try:
            with self.start(bh_port) as shunt:
                for _ in range(10):
                    c = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                    c.close()
                time.sleep(3.5)
                # A connect that slipped into the queue anyway is a legitimate
                # half-closed pair (the client's FIN went upstream, which never
                # answers); every other one must be gone entirely.
                filler_ports = {f.getsockname()[1] for f in filler}
                upstream = [l for l in os.popen(f"ss -tanH '( dport = :{bh_port} )'").read().splitlines()
                            if "ESTAB" in l and int(l.split()[3].rsplit(":", 1)[1]) not in filler_ports]
                client_side = os.popen(f"ss -tanH '( sport = :{self.port} )'").read().splitlines()
                lingering = [l for l in client_side if "ESTAB" in l or "CLOSE-WAIT" in l]
                self.assertLessEqual(len(lingering), len(upstream), "\n".join(client_side))
                self.assertLess(len(lingering), 10)
                self.assertIsNone(shunt.proc.poll(), "shunt still running")
        finally:
            for f in filler:
                f.close()
            blackhole.close()

    def test_upstream_refusing_resets_client(self):
        closed_port = free_port()
        with self.start(closed_port):
            start = time.time()
            # On loopback the reset may already be there when connect()
            # returns, so the connect is inside the expectation too.
            with self.assertRaises((ConnectionResetError, BrokenPipeError)):
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as c:
                    c.sendall(b"hello")
                    while c.recv(10):
                        pass
                    raise AssertionError("clean EOF instead of a reset")
            self.assertLess(time.time() - start, 2.0)


class SockmapTest(DatapathTests, unittest.TestCase):
    """The sk_skb path alone: the short-circuit (on by default) turned off."""
    datapath = "sockmap"
    proxy_extra = "endpoint_shortcut: false"


class SockmapShortcutTest(DatapathTests, unittest.TestCase):
    """The same suite with both endpoints' own sockets in the sk_msg
    short-circuit: clients and servers are loopback sockets in shunt's
    netns, and Python's sockets with a timeout are O_NONBLOCK underneath, so
    both are captured (docs/datapath.md, "The endpoint short-circuit"); the
    1,000-connection test's asyncio server is non-blocking anyway."""
    datapath = "sockmap"
    proxy_extra = "endpoint_shortcut: true"
    server_timeout = 120


class SpliceTest(DatapathTests, unittest.TestCase):
    datapath = "splice"


class CopyTest(DatapathTests, unittest.TestCase):
    datapath = "copy"


if __name__ == "__main__":
    run_tests()

"""Bounded kernel memory with slow receivers (issue 2, "Speed must not be
bought with unbounded kernel memory"): 1,000 kernel-spliced connections whose
clients stop reading while upstream keeps sending must keep the machine's
TCP memory (/proc/net/sockstat `mem`, pages) under the bound documented in
docs/datapath.md, and every byte still arrives once the clients read again.
Needs root (BPF sockmap)."""
import asyncio
import hashlib
import os
import re
import subprocess
import socket
import time
import unittest

from admin_helpers import scrape, value
from shunt_harness import Shunt, free_port, pattern, pattern_digest, run_tests, static_config

# STALLED_CONNECTIONS: fewer, for a quick look by hand (the bounds scale with it).
CONNECTIONS = int(os.environ.get("STALLED_CONNECTIONS", 1000))
PER_CONNECTION = 4 * 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")


async def digest_to_eof_async(reader):
    """Reads an asyncio stream to EOF: (byte count, sha256 hex)."""
    h = hashlib.sha256()
    n = 0
    while data := await reader.read(1 << 16):
        h.update(data)
        n += len(data)
    return n, h.hexdigest()


def tcp_mem_pages():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1])
    raise RuntimeError("no TCP line in /proc/net/sockstat")


def proxy_socket_memory(listen_port, upstream_port):
    """Bytes queued on shunt's own sockets (receive + send queues from
    `ss -tm` skmem r and w), client-facing and upstream-facing."""
    total = 0
    for filt in (f"sport = :{listen_port}", f"dport = :{upstream_port}"):
        out = subprocess.run(["ss", "-tmnH", filt], capture_output=True, text=True).stdout
        for m in re.finditer(r"skmem:\(r(\d+),rb\d+,t\d+,tb\d+,f\d+,w(\d+)", out):
            total += int(m.group(1)) + int(m.group(2))
    return total


def sysctl_triple(name):
    with open(f"/proc/sys/net/ipv4/{name}") as f:
        return [int(v) for v in f.read().split()]


SPLICED_SEND_BUFFER = 256 * 1024  # proxy/datapath/buffer_budget.h kSplicedSendBufferBytes
BOOST_BUDGET = 1 << 30            # proxy/datapath/buffer_budget.h kDefaultBudgetBytes


def shunt_bound_bytes(connections):
    """docs/datapath.md, "Memory bound": a kernel-spliced pair pins at most
    its two send queues (SO_SNDBUF, which the kernel doubles) and its two
    receive queues (tcp_rmem default; redirected bytes stay charged to the
    receiving socket until sent), plus what the boost budget grants bulk
    pairs, for all connections together."""
    rmem_default = sysctl_triple("tcp_rmem")[1]
    per_connection = 2 * (2 * SPLICED_SEND_BUFFER) + 2 * rmem_default
    return connections * per_connection + BOOST_BUDGET


def machine_bound_bytes(connections):
    """The whole machine in this test: shunt's bound plus the peers' own
    sockets (each client's receive queue, each upstream's send queue up to
    tcp_wmem[2])."""
    return shunt_bound_bytes(connections) + connections * (sysctl_triple("tcp_rmem")[1] + sysctl_triple("tcp_wmem")[2])


class StalledReaders(unittest.TestCase):
    async def assert_bounded_once_full(self, label, baseline, port, server_port, shunt):
        """Waits until the machine's TCP memory stops growing (every queue on
        the way is full, at most 60 s), then asserts shunt's sockets and the
        machine are under their bounds and shunt is still running."""
        peak = 0
        stable_since = time.time()
        deadline = time.time() + 60
        while time.time() < deadline:
            await asyncio.sleep(0.5)
            now = tcp_mem_pages()
            if now > peak * 1.01:
                peak = now
                stable_since = time.time()
            elif time.time() - stable_since > 3:
                break
        used = (peak - baseline) * PAGE
        proxy_bytes = proxy_socket_memory(port, server_port)
        print(f"{label}: shunt's sockets hold {proxy_bytes / 2**20:.0f} MiB "
              f"({proxy_bytes / CONNECTIONS / 1024:.0f} KiB per connection), "
              f"bound {shunt_bound_bytes(CONNECTIONS) / 2**20:.0f} MiB")
        print(f"{label}: machine TCP memory {used / 2**20:.0f} MiB "
              f"({used / CONNECTIONS / 1024:.0f} KiB per connection), "
              f"bound {machine_bound_bytes(CONNECTIONS) / 2**20:.0f} MiB")
        self.assertLess(proxy_bytes, shunt_bound_bytes(CONNECTIONS))
        self.assertLess(used, machine_bound_bytes(CONNECTIONS))
        self.assertEqual(shunt.proc.poll(), None)

    def test_1000_stalled_sockmap_connections_stay_bounded(self):
        port = free_port()

        async def source(reader, writer):
            # Upstream: send this connection's pattern as fast as it drains.
            try:
                salt = int((await reader.readexactly(8)).decode())
                for chunk in pattern(PER_CONNECTION, salt):
                    writer.write(chunk)
                    await writer.drain()
                writer.write_eof()
                await reader.read()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            writer.close()

        async def scenario():
            server = await asyncio.start_server(source, "127.0.0.1", 0, backlog=4096)
            server_port = server.sockets[0].getsockname()[1]
            with Shunt(static_config(port, server_port, "sockmap"), wait_port=port) as shunt:
                baseline = tcp_mem_pages()
                sem = asyncio.Semaphore(200)
                clients = []

                async def open_one(i):
                    async with sem:
                        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
                    w.write(f"{i:08d}".encode())
                    await w.drain()
                    # Pause reading: the transport stops pulling from the socket.
                    w.transport.pause_reading()
                    clients.append((i, r, w))

                await asyncio.gather(*(open_one(i) for i in range(CONNECTIONS)))
                # Upstream keeps sending until every queue on the way is full.
                await self.assert_bounded_once_full("stalled", baseline, port, server_port, shunt)

                # Resume every reader: all bytes arrive, in order.
                async def drain_one(i, r, w):
                    w.transport.resume_reading()
                    got = await digest_to_eof_async(r)
                    w.close()
                    return got == (PER_CONNECTION, expected[i])

                expected = {i: pattern_digest(PER_CONNECTION, i) for i in range(CONNECTIONS)}
                results = await asyncio.wait_for(
                    asyncio.gather(*(drain_one(i, r, w) for i, r, w in clients)), 300)
                server.close()
                return sum(results)

        intact = asyncio.run(scenario())
        self.assertEqual(intact, CONNECTIONS, f"{CONNECTIONS - intact} connections lost or corrupted bytes")

    def test_1000_stalled_upstreams_with_the_short_circuit(self):
        """The other direction with the endpoint short-circuit on (issue 12,
        "Memory stays bounded"): 1,000 clients send while their upstreams
        stop reading. Client sockets are captured, so their bytes are pushed
        by sk_msg straight into shunt's upstream sockets; that push goes only
        where the upstream socket has room, so the same bound holds, and
        every byte arrives once the upstreams read again."""
        port, admin = free_port(), free_port()
        reading = asyncio.Event()
        digests = {}

        async def sink(reader, writer):
            # Upstream: take the salt, stall until told, then read to EOF.
            try:
                salt = int((await reader.readexactly(8)).decode())
                writer.transport.pause_reading()
                await reading.wait()
                writer.transport.resume_reading()
                digests[salt] = await digest_to_eof_async(reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            writer.close()

        async def scenario():
            server = await asyncio.start_server(sink, "127.0.0.1", 0, backlog=4096, limit=1 << 16)
            server_port = server.sockets[0].getsockname()[1]
            config = re.sub(r"admin: \{listen: 127\.0\.0\.1:\d+\}", f"admin: {{listen: 127.0.0.1:{admin}}}",
                            static_config(port, server_port, "sockmap", proxy_extra="endpoint_shortcut: true"))
            with Shunt(config, wait_port=port) as shunt:
                baseline = tcp_mem_pages()
                sem = asyncio.Semaphore(200)

                async def send_one(i):
                    async with sem:
                        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
                    w.write(f"{i:08d}".encode())
                    await w.drain()
                    # A pause after the first bytes lets the fence open (they
                    # are through and nothing is in flight): what follows is
                    # pushed by sk_msg while the upstream socket has room.
                    await asyncio.sleep(0.2)
                    for chunk in pattern(PER_CONNECTION, i):
                        w.write(chunk)
                        await w.drain()
                    w.write_eof()
                    await r.read()
                    w.close()

                senders = asyncio.gather(*(send_one(i) for i in range(CONNECTIONS)))
                # Clients keep sending until every queue on the way is full.
                await self.assert_bounded_once_full("stalled upstreams", baseline, port, server_port, shunt)

                reading.set()
                try:
                    await asyncio.wait_for(senders, 300)
                except asyncio.TimeoutError:
                    self.fail(f"{len(digests)} of {CONNECTIONS} upstreams saw EOF in 300 s after the stall; "
                              f"short-circuit {value(scrape(admin), 'shunt_shortcut_bytes_total', direction='up')} bytes\n"
                              + shunt.output()[-6000:])
                server.close()
                # Counted as each pair ends.
                for _ in range(50):
                    samples = scrape(admin)
                    if value(samples, "shunt_connections_active", datapath="sockmap") == 0:
                        break
                    await asyncio.sleep(0.1)
                return value(samples, "shunt_shortcut_bytes_total", direction="up")

        short_circuited = asyncio.run(scenario())
        expected = {i: (PER_CONNECTION, pattern_digest(PER_CONNECTION, i)) for i in range(CONNECTIONS)}
        wrong = [i for i in range(CONNECTIONS) if digests.get(i) != expected[i]]
        self.assertEqual(wrong, [], f"{len(wrong)} connections lost or corrupted bytes")
        print(f"stalled upstreams: {short_circuited / 2**20:.0f} MiB went by sk_msg")
        self.assertGreater(short_circuited, 0, "no client was short-circuited")


if __name__ == "__main__":
    run_tests()

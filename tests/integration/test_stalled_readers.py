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

from shunt_harness import Shunt, free_port, pattern, pattern_digest, run_tests, static_config

CONNECTIONS = 1000
PER_CONNECTION = 4 * 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")


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
                print(f"stalled: shunt's sockets hold {proxy_bytes / 2**20:.0f} MiB "
                      f"({proxy_bytes / CONNECTIONS / 1024:.0f} KiB per connection), "
                      f"bound {shunt_bound_bytes(CONNECTIONS) / 2**20:.0f} MiB")
                print(f"stalled: machine TCP memory {used / 2**20:.0f} MiB "
                      f"({used / CONNECTIONS / 1024:.0f} KiB per connection), "
                      f"bound {machine_bound_bytes(CONNECTIONS) / 2**20:.0f} MiB")
                self.assertLess(proxy_bytes, shunt_bound_bytes(CONNECTIONS))
                self.assertLess(used, machine_bound_bytes(CONNECTIONS))
                self.assertEqual(shunt.proc.poll(), None)

                # Resume every reader: all bytes arrive, in order.
                async def drain_one(i, r, w):
                    w.transport.resume_reading()
                    h = hashlib.sha256()
                    n = 0
                    while data := await r.read(1 << 16):
                        h.update(data)
                        n += len(data)
                    w.close()
                    return n == PER_CONNECTION and h.hexdigest() == expected[i]

                expected = {i: pattern_digest(PER_CONNECTION, i) for i in range(CONNECTIONS)}
                results = await asyncio.wait_for(
                    asyncio.gather(*(drain_one(i, r, w) for i, r, w in clients)), 300)
                server.close()
                return sum(results)

        intact = asyncio.run(scenario())
        self.assertEqual(intact, CONNECTIONS, f"{CONNECTIONS - intact} connections lost or corrupted bytes")


if __name__ == "__main__":
    run_tests()

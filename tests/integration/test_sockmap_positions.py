"""Bulk transfers both ways at once through `datapath: sockmap` with readers
that pause now and then, every byte checked against the stream position it
should hold (tests/tools/stream_positions.cpp), and shunt's own byte counts
checked against what was sent.

What it guards (docs/datapath.md, "Repeated bytes in a retransmitted
segment"): TCP queues a segment that partly repeats bytes already received
whole, and the sk_skb verdict, which gets whole skbs, must cut the repeat.
Until 2026-11-30 it cut at most 69,615 bytes and passed the rest on: the
peer got the repeat twice, and the verdict's count ran over what the peer
was written, so the FIN waited for bytes that never came. The pausing
readers make the hold run and the receive queues fill, which is when such
segments come (a few in a hundred 256 MiB transfers on a loaded 2-core
machine); the test cannot make one on demand (test_sockmap_repeat_cut.py
does, with hand-made TCP peers), so a pass here is no proof,
but a failure names the mechanism: the received offset, the offset the
bytes there came from, and shunt's counts. SHUNT_POSITIONS_ROUNDS runs more
rounds (the chase that found it ran ~300). Needs root (BPF sockmap)."""
import json
import os
import subprocess
import tempfile
import time
import unittest

from admin_helpers import scrape, value
from shunt_harness import Shunt, free_port, proxy_config, run_tests

TOOL = os.path.join(os.environ.get("SHUNT_BUILD_DIR", "build"), "tests", "tools", "stream_positions")
SIZE = 256 << 20
ROUNDS = int(os.environ.get("SHUNT_POSITIONS_ROUNDS", "3"))
# Each reader pauses up to 20 ms every 4 MiB: slower than the sender, so the
# verdict holds and the pump runs (test_sockmap_hold checks that part).
PACING = ["--jitter-every", str(4 << 20), "--jitter-ms", "20"]


class SockmapPositionsTest(unittest.TestCase):
    def test_positions_and_counts_both_ways(self):
        upstream_port, port, admin = free_port(), free_port(), free_port()
        server_log = tempfile.TemporaryFile("w+")  # one line per connection; emptied after each
        self.addCleanup(server_log.close)
        server = subprocess.Popen([TOOL, "server", str(upstream_port), str(SIZE), *PACING], stdout=server_log)
        self.addCleanup(server.wait)
        self.addCleanup(server.kill)
        deadline = time.monotonic() + 10
        while "LISTENING" not in self.read(server_log) and time.monotonic() < deadline:
            time.sleep(0.05)
        server_log.truncate(0)
        server_log.seek(0)
        config = proxy_config([("test", port, upstream_port)], datapath="sockmap", default="allow",
                              admin=admin, timeouts={"drain": "5s"})
        with Shunt(config, wait_port=port) as shunt:
            before = scrape(admin)
            for round_ in range(ROUNDS):
                client = subprocess.run([TOOL, "client", str(port), str(SIZE), *PACING], capture_output=True,
                                        text=True, timeout=300)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and "RESULT" not in self.read(server_log):
                    time.sleep(0.05)
                served = self.read(server_log)
                server_log.truncate(0)
                server_log.seek(0)
                report = f"round {round_}:\nclient: {client.stdout}{client.stderr}\nupstream: {served}"
                self.assertEqual(client.returncode, 0, report)
                self.assertIn(f"RESULT role=server received={SIZE} sent={SIZE} changes=0 ok", served, report)
            # The precondition was there: the verdict held and the pump ran.
            after = scrape(admin)
            self.assertGreater(value(after, "shunt_sockmap_holds_total") - value(before, "shunt_sockmap_holds_total"), 0)
            self.assertEqual(value(after, "shunt_sockmap_backlog_dropped_bytes_total"), 0)
            self.assertEqual(shunt.stop(), 0, shunt.output())
            # The counts shunt took from the kernel: more than was sent is the
            # verdict taking a repeat, or counting bytes it cut.
            conns = [json.loads(line) for line in shunt.output().splitlines()
                     if line.startswith("{") and '"event":"conn"' in line]
            self.assertEqual(len(conns), ROUNDS, shunt.output()[-4000:])
            for conn in conns:
                self.assertEqual((conn["bytes_up"], conn["bytes_down"]), (SIZE, SIZE), conn)

    @staticmethod
    def read(f):
        f.flush()
        f.seek(0)
        return f.read()


if __name__ == "__main__":
    run_tests()

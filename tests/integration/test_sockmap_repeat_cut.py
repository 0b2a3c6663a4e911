"""The sockmap verdict's repeat cut, made to happen on demand: the client is a
TCP written here, over a tun device, that sends segments overlapping bytes
the proxy's socket has already received.

What it guards (docs/datapath.md, "Repeated bytes in a retransmitted
segment"): TCP queues a segment that partly repeats bytes already received
(tcp_data_queue, "partial packet"; tcp_ofo_queue moving an out-of-order skb
the in-order bytes have partly caught up with) and leaves the repeated head
for the reader to skip by copied_seq. tcp_read_skb hands the sk_skb verdict
the whole skb, so `cut_repeated` (bpf/sockmap_redirect.bpf.c) must cut the
head by the verdict's own stream position, with bpf_skb_adjust_room in steps
of 4,095 bytes. A kernel TCP sender never makes such segments on purpose;
this one does, after the pair is in the kernel's hands, so the verdict and
not userspace meets them.

The set-up, all in a network namespace the test makes and removes: a tun
device (IFF_TUN, not persistent: it goes with its fd) with 10.255.77.1/30
and a 65,535-byte MTU; shunt listening on 10.255.77.1 with `datapath:
sockmap` and the endpoint short-circuit off, forwarding to
`tests/tools/stream_positions server` on loopback, which checks every byte
it gets against the stream position it should hold (each 8-byte word is its
own offset) and sends a known stream back. The test's TCP (10.255.77.2)
sends a first piece, waits until /connections shows the pair on the kernel
path, then sends each case's segments and checks the ACK that says TCP took
them as planned; then FIN, the stream back checked by position, the proxy's
FIN.

Kernel facts the constructions rest on (Linux 6.18, net/ipv4/tcp_input.c):
- tcp_sequence accepts a segment that starts below rcv_nxt and ends past
  it; tcp_data_queue queues it whole ("partial packet") after a D-SACK
  note. A segment must end within the advertised window (6.17+ drops one
  that ends past it while the receive queue holds anything), so every case
  checks its plan against the proxy's last window before it sends.
- tcp_data_queue_ofo coalesces an out-of-order segment into the previous one
  (tcp_ooo_try_coalesce) only as page fragments or into tailroom. A plain
  IFF_TUN write makes one linear kmalloc'd skb, whose head cannot become a
  fragment, so the device is opened with IFF_VNET_HDR and every write says
  hdr_len 40: the IPv4 and TCP headers go in the linear part, the payload
  in page fragments, and after TCP pulls its header the skb has no linear
  payload and coalesces. Whether it did shows in the repeated bytes: one
  coalesced skb repeats from its first byte, separate ones only from the
  segment the in-order bytes end in (the others are dropped whole).
- tcp_ofo_queue moves an out-of-order skb whose start the in-order bytes
  have passed to the receive queue whole (no trim), behind the in-order
  segment, and tcp_data_ready then runs the verdict on both, in order.

Each case is its own connection; after each the upstream must report the
exact stream (length, every byte by position), the access log must count
exactly it, and shunt_sockmap_repeated_bytes_total must have grown by
exactly the bytes the case repeats. Needs root (netns, tun, BPF)."""
import array
import ctypes
import fcntl
import json
import os
import random
import select
import struct
import subprocess
import tempfile
import time
import unittest

from admin_helpers import get_json, scrape, value
from shunt_harness import Shunt, free_port, proxy_config, run, run_tests, wait_until

TOOL = os.path.join(os.environ.get("SHUNT_BUILD_DIR", "build"), "tests", "tools", "stream_positions")

NET = "10.255.77."
PROXY_IP, CLIENT_IP = NET + "1", NET + "2"
MTU = 65535
MSS = MTU - 40
DOWN = 300_000  # what the upstream sends back on every connection
A = 1_000  # the first piece, sent before the pair is in the kernel's hands

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
CLONE_NEWNET = 0x40000000
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    """Moves this thread (the test's only one) into the network namespace of
    `fd`; processes started afterwards are born there."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def stream(tag, start, length):
    """Bytes [start, start + length) of the stream stream_positions speaks:
    every aligned 8-byte word at offset o is (tag << 56) | o, little-endian."""
    base = start & ~7
    words = (start - base + length + 7) // 8
    first = (ord(tag) << 56) | base
    data = struct.pack(f"<{words}Q", *range(first, first + 8 * words, 8))
    return data[start - base:start - base + length]


def first_difference(got, tag):
    """None when `got` is stream `tag` from offset 0, else the first offset
    that differs and, when the word there names one, the offset it came from."""
    want = stream(tag, 0, len(got))
    if got == want:
        return None
    at = next(i for i in range(len(got)) if got[i] != want[i])
    word = at & ~7
    came = struct.unpack_from("<Q", got, word)[0] if word + 8 <= len(got) else None
    origin = f", the word there names offset {came & ((1 << 56) - 1)}" if came and came >> 56 == ord(tag) else ""
    return f"first wrong byte at offset {at}{origin}"


def checksum(data):
    """The Internet checksum of `data`, as the two bytes to store."""
    if len(data) % 2:
        data += b"\0"
    total = sum(array.array("H", data))  # native order: so is the result
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return struct.pack("=H", ~total & 0xFFFF)


def ip_to_bytes(ip):
    return bytes(int(x) for x in ip.split("."))


class Tun:
    """A tun device in the current network namespace, gone when closed."""

    def __init__(self, name):
        self.name = name
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        try:
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
            for cmd in (["ip", "addr", "add", PROXY_IP + "/30", "dev", name],
                        ["ip", "link", "set", name, "mtu", str(MTU), "up"]):
                r = run(*cmd)
                if r.returncode:
                    raise RuntimeError(f"{' '.join(cmd)}: {r.stderr}")
        except Exception:
            os.close(self.fd)
            raise

    def write(self, packet):
        # struct virtio_net_hdr: no offloads, hdr_len 40 (the IPv4 and TCP
        # headers: the linear part; the payload goes into page fragments,
        # see the module's docstring).
        os.write(self.fd, struct.pack("=BBHHHH", 0, 0, 40, 0, 0, 0) + packet)

    def read(self, timeout):
        """One packet (without its virtio header), or None after `timeout` s."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return None
        try:
            return os.read(self.fd, 65536 + 10)[10:]
        except BlockingIOError:
            return None

    def close(self):
        os.close(self.fd)


class HandTcp:
    """The client end of one TCP connection, by hand: it sends the up stream
    ('U') at the sequence numbers the test picks and takes the down stream
    ('D') in order, ACKing each packet that carries bytes or a FIN."""

    def __init__(self, tun, dport):
        self.tun = tun
        self.sport = random.randint(20000, 60000)
        self.dport = dport
        self.iss = random.getrandbits(32)
        self.acked = 0  # up stream offset the proxy has acknowledged
        self.window = 0  # bytes, scaled
        self.wscale = 0
        self.rcv_nxt = None
        self.down = bytearray()
        self.fin_seen = False
        self.reset = False
        self.dupacks = 0

    def seq(self, offset):
        return (self.iss + 1 + offset) & 0xFFFFFFFF

    def segment(self, flags, offset, payload=b"", options=b""):
        ack = self.rcv_nxt if self.rcv_nxt is not None else 0
        tcp = struct.pack("!HHIIBBHHH", self.sport, self.dport, self.seq(offset), ack,
                          (20 + len(options)) // 4 << 4, flags, 65535, 0, 0) + options
        pseudo = ip_to_bytes(CLIENT_IP) + ip_to_bytes(PROXY_IP) + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
        tcp = tcp[:16] + checksum(pseudo + tcp + payload) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), random.getrandbits(16), 0x4000,
                         64, 6, 0, ip_to_bytes(CLIENT_IP), ip_to_bytes(PROXY_IP))
        ip = ip[:10] + checksum(ip) + ip[12:]
        self.tun.write(ip + tcp + payload)

    def connect(self):
        # MSS as large as the MTU lets; window scaling offered (shift 0 for
        # ours) so that the proxy may advertise more than 64 KiB.
        self.segment(SYN, -1, options=struct.pack("!BBHBBBB", 2, 4, MSS, 1, 3, 3, 0))
        if not self.pump(lambda: self.rcv_nxt is not None, 5):
            raise AssertionError("no SYN-ACK from the proxy")
        self.segment(ACK, 0)

    def send(self, start, end):
        """Up stream bytes [start, end) as one segment."""
        assert end - start <= MSS, (start, end)
        self.segment(ACK | PSH, start, stream("U", start, end - start))

    def fin(self, offset):
        self.segment(FIN | ACK, offset)

    def pump(self, until, timeout):
        """Handles packets until until() holds (True) or `timeout` s pass
        (False)."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            packet = self.tun.read(min(left, 0.05))
            if packet:
                self.handle(packet)
        return True

    def handle(self, packet):
        if len(packet) < 40 or packet[9] != 6 or packet[12:16] != ip_to_bytes(PROXY_IP):
            return
        ihl = (packet[0] & 15) * 4
        total = struct.unpack_from("!H", packet, 2)[0]
        sport, dport, seq, ack, off, flags, window = struct.unpack_from("!HHIIBBH", packet, ihl)
        if (sport, dport) != (self.dport, self.sport):
            return
        doff = (off >> 4) * 4
        payload = packet[ihl + doff:total]
        if flags & RST:
            self.reset = True
            return
        if flags & SYN:
            options = packet[ihl + 20:ihl + doff]
            i = 0
            while i < len(options) and options[i] != 0:
                if options[i] == 1:
                    i += 1
                    continue
                if options[i] == 3:
                    self.wscale = options[i + 2]
                i += options[i + 1]
            self.rcv_nxt = (seq + 1) & 0xFFFFFFFF
            self.window = window  # a SYN's window is never scaled
            return
        if flags & ACK:
            acked = (ack - self.iss - 1) & 0xFFFFFFFF
            if acked < 1 << 31 and acked >= self.acked:
                self.acked = acked
                self.window = window << self.wscale
        if not payload and not flags & FIN:
            return
        if seq == self.rcv_nxt and not self.fin_seen:
            self.down += payload
            self.rcv_nxt = (self.rcv_nxt + len(payload)) & 0xFFFFFFFF
            if flags & FIN:
                self.fin_seen = True
                self.rcv_nxt = (self.rcv_nxt + 1) & 0xFFFFFFFF
        else:
            self.dupacks += 1
        self.segment(ACK, self.acked)


class SockmapRepeatCutTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.netns = "s9cut%04d" % random.randint(0, 9999)
        r = run("ip", "netns", "add", cls.netns)
        if r.returncode:
            raise RuntimeError(f"ip netns add: {r.stderr}")
        cls.addClassCleanup(run, "ip", "netns", "del", cls.netns)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        cls.addClassCleanup(os.close, home)
        target = os.open(f"/run/netns/{cls.netns}", os.O_RDONLY)
        try:
            setns(target)
        finally:
            os.close(target)
        cls.addClassCleanup(setns, home)
        run("ip", "link", "set", "lo", "up")
        # Room in the proxy's socket for the out-of-order segments and a
        # window that takes them (this namespace's own setting).
        with open("/proc/sys/net/ipv4/tcp_rmem", "w") as f:
            f.write("4096 1048576 6291456")
        cls.tun = Tun("s9cut0")
        cls.addClassCleanup(cls.tun.close)

        cls.upstream_port, cls.port, cls.admin = free_port(), free_port(PROXY_IP), free_port()
        cls.server_log = tempfile.TemporaryFile("w+")
        cls.addClassCleanup(cls.server_log.close)
        server = subprocess.Popen([TOOL, "server", str(cls.upstream_port), str(DOWN), "--timeout-s", "20"],
                                  stdout=cls.server_log)
        cls.addClassCleanup(server.wait)
        cls.addClassCleanup(server.kill)
        if not wait_until(lambda: "LISTENING" in cls.read_server(), 10):
            raise RuntimeError("stream_positions server did not start")
        config = proxy_config([("cut", f"{PROXY_IP}:{cls.port}", cls.upstream_port)], datapath="sockmap",
                              admin=cls.admin, proxy_extra="endpoint_shortcut: false",
                              rules=[f"    - name: cut\n      from: {{cidr: {CLIENT_IP}/32}}\n"
                                     f"      to: {{cidr: 127.0.0.1/32, ports: [{cls.upstream_port}]}}\n"
                                     "      action: allow"])
        cls.shunt = Shunt(config, wait_port=cls.port)
        cls.shunt.__enter__()
        cls.addClassCleanup(cls.shunt.__exit__, None, None, None)

    @classmethod
    def read_server(cls):
        cls.server_log.flush()
        cls.server_log.seek(0)
        return cls.server_log.read()

    def server_result(self, timeout=10):
        """What the upstream printed for the last connection (cases run one
        at a time): its RESULT line and any MISMATCH lines before it."""
        wait_until(lambda: "RESULT" in self.read_server(), timeout)
        text = self.read_server()
        self.server_log.truncate(0)
        self.server_log.seek(0)
        return text

    def access_record(self, conn, timeout=10):
        mark = f'"src":"{CLIENT_IP}:{conn.sport}"'
        lines = []

        def found():
            lines[:] = [json.loads(line) for line in self.shunt.output().splitlines()
                        if line.startswith("{") and '"event":"conn"' in line and mark in line]
            return bool(lines)

        wait_until(found, timeout)
        self.assertEqual(len(lines), 1, self.shunt.output()[-3000:])
        return lines[0]

    def run_case(self, steps, total, repeated):
        """One connection: the first piece, the handover, `steps` (each a
        list of (start, end) segments sent back to back, then the up stream
        offset the proxy must acknowledge), FIN at `total`. Checks both
        streams by position, the access log's counts and that the verdict
        cut exactly `repeated` bytes."""
        name = self.id().rsplit(".", 1)[-1]
        before = value(scrape(self.admin), "shunt_sockmap_repeated_bytes_total")
        conn = HandTcp(self.tun, self.port)
        conn.connect()
        conn.send(0, A)
        self.assertTrue(conn.pump(lambda: conn.acked == A, 5), f"{name}: first piece not acknowledged")
        src = f"{CLIENT_IP}:{conn.sport}"

        def handed_over():
            entry = [c for c in get_json(self.admin, "/connections") if c["src"] == src]
            return entry and entry[0].get("path_up") == "sk_skb"

        self.assertTrue(wait_until(handed_over, 10) is not None, f"{name}: the pair never reached the kernel")
        for segments, ack in steps:
            end = max(e for _, e in segments)
            self.assertLessEqual(end, conn.acked + conn.window,
                                 f"{name}: segments up to {end} past the proxy's window "
                                 f"({conn.acked} + {conn.window}): the kernel would drop them")
            for start, stop in segments:
                conn.send(start, stop)
            self.assertTrue(conn.pump(lambda: conn.acked == ack, 5),
                            f"{name}: after {segments} the proxy acknowledged {conn.acked}, not {ack}: "
                            "TCP did not queue the segments as planned")
        conn.fin(total)
        done = conn.pump(lambda: conn.acked == total + 1 and conn.fin_seen, 15)
        served = self.server_result()
        self.assertTrue(done, f"{name}: no clean close (acked {conn.acked} of {total} + FIN, down "
                              f"{len(conn.down)} of {DOWN} bytes, FIN from the proxy: {conn.fin_seen}, "
                              f"reset: {conn.reset}); upstream: {served}")
        self.assertIn(f"RESULT role=server received={total} sent={DOWN} changes=0 ok", served,
                      f"{name}: the upstream did not get the up stream exactly (MISMATCH lines name the "
                      "offset where the bytes went wrong and the offset they came from)")
        self.assertEqual(len(conn.down), DOWN, f"{name}: down stream length")
        self.assertIsNone(first_difference(bytes(conn.down), "D"), f"{name}: down stream")
        record = self.access_record(conn)
        self.assertEqual((record["bytes_up"], record["bytes_down"]), (total, DOWN), record)
        self.assertEqual(record.get("path_up"), "sk_skb", record)
        self.assertEqual(value(scrape(self.admin), "shunt_sockmap_repeated_bytes_total") - before, repeated,
                         f"{name}: bytes the verdict cut")

    # Offsets are up stream offsets; every case starts where the first piece
    # ended (A). A step's segments go out back to back, then the proxy must
    # acknowledge the offset given: the bytes TCP took in order.

    def test_in_order_partial_overlap(self):
        """tcp_data_queue's partial packet: a segment that starts 2,000
        bytes below rcv_nxt, a repeat within one bpf_skb_adjust_room step."""
        self.run_case([([(A, A + 3_000)], A + 3_000),
                       ([(A + 1_000, A + 8_000)], A + 8_000)], A + 8_000, repeated=2_000)

    def test_in_order_repeat_of_several_steps(self):
        """The same with 25,000 bytes repeated: six 4,095-byte steps and
        a rest of 430."""
        self.run_case([([(A, A + 30_000)], A + 30_000),
                       ([(A + 5_000, A + 65_000)], A + 65_000)], A + 65_000, repeated=25_000)

    def test_out_of_order_caught_up_in_part(self):
        """tcp_ofo_queue: an out-of-order segment the in-order one then
        overtakes by 25,000 bytes, moved to the receive queue whole."""
        self.run_case([([(A + 5_000, A + 45_000)], A),
                       ([(A, A + 30_000)], A + 45_000)], A + 45_000, repeated=25_000)

    def test_coalesced_out_of_order_caught_up(self):
        """Three out-of-order segments the queue coalesces into one skb,
        overtaken by 48,000 bytes: the repeat spans all three (not
        coalesced, the first two would be dropped whole and only 8,000
        bytes of the third would repeat)."""
        self.run_case([([(A + 2_000, A + 12_000), (A + 12_000, A + 42_000), (A + 42_000, A + 72_000)], A),
                       ([(A, A + 50_000)], A + 72_000)], A + 72_000, repeated=48_000)

    def test_repeat_beyond_the_old_limit(self):
        """One skb repeating 121,000 bytes, over the 69,615 the cut gave up
        at until 2026-11-30 and over what one segment carries. Two
        out-of-order skbs grow in turns: S from A + 1,000 and T from
        A + 10,000, which partly overlaps S, so the queue keeps it apart
        (tcp_data_queue_ofo, "partial overlap"). A segment at S's end
        coalesces into S even where T already covers it (the queue looks
        for overlaps only when it does not coalesce), and one at T's end
        into T, so S grows to A + 131,000 inside T's range and T to
        A + 190,000. Then 2,000 bytes in order: tcp_ofo_queue moves S
        (1,000 repeated) and T behind it, of which 121,000 bytes are S's."""
        ofo = [(A + 1_000, A + 11_000), (A + 10_000, A + 70_000), (A + 11_000, A + 71_000),
               (A + 70_000, A + 130_000), (A + 71_000, A + 131_000), (A + 130_000, A + 190_000)]
        self.run_case([(ofo, A), ([(A, A + 2_000)], A + 190_000)], A + 190_000, repeated=1_000 + 121_000)


if __name__ == "__main__":
    run_tests()

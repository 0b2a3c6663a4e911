"""The sockmap verdict's repeat cut, made to happen on demand: both of shunt's
peers are TCP ends written here, over a tun device, and they send segments
that overlap bytes shunt's socket has already received.

What it guards (docs/datapath.md, "Repeated bytes in a retransmitted
segment"): TCP queues a segment that partly repeats bytes already received
(tcp_data_queue, "partial packet"; tcp_ofo_queue moving an out-of-order skb
the in-order bytes have partly caught up with) and leaves the repeated head
for the reader to skip by copied_seq. tcp_read_skb hands the sk_skb verdict
the whole skb, so `cut_repeated` (bpf/sockmap_redirect.bpf.c) must cut the
head by the verdict's own stream position, with bpf_skb_adjust_room in steps
of 4,095 bytes. A kernel TCP sender makes such segments only by chance;
these ends make them after the pair is in the kernel's hands, so the verdict
and not userspace meets them.

The set-up, in a network namespace the test makes and removes: a tun device
(IFF_TUN, not persistent: it goes with its fd) with 10.255.77.1/30 and a
65,535-byte MTU; shunt listening on 10.255.77.1 with `datapath: sockmap`
and the endpoint short-circuit off, forwarding to 10.255.77.2, which is the
tun's far side: the test answers the SYN shunt sends there too. So the
test's client (10.255.77.2 to shunt) and its server (shunt to 10.255.77.2)
are both `HandTcp` ends on the one tun. Each case is one connection: the
cutting end sends a first piece, waits until /connections shows the pair on
the kernel path both ways, then sends the case's segments and checks after
each step the ACK that says TCP took them as planned; the other end sends
its stream in order; FIN both ways. Every byte is checked at the receiving
end against the stream position it should hold (each aligned 8-byte word
names its own offset, as in tests/tools/stream_positions): a repeat reads as
"first wrong byte at offset P: the stream's bytes from offset P - N there
(N bytes repeated)". The
access log must count exactly the two streams, and
shunt_sockmap_repeated_bytes_total must grow by exactly the bytes the case
repeats. The cases run in both directions: UpRepeatCutTest on the client's
socket in shunt, DownRepeatCutTest on shunt's upstream socket.

Kernel facts the constructions rest on (Linux 6.18: net/ipv4/tcp_input.c,
drivers/net/tun.c, net/core/skbuff.c):
- tcp_sequence accepts a segment that starts below rcv_nxt and ends past
  it; tcp_data_queue queues it whole ("partial packet"). A segment that
  ends past the advertised window is dropped unless the receive queue is
  empty (tcp_sequence), so each step is checked against the last window
  shunt's socket advertised before it is sent; the namespace's tcp_rmem
  default of 1 MiB makes that window several hundred KB from the start.
- tcp_data_queue_ofo coalesces an out-of-order segment into the skb it
  continues (tcp_ooo_try_coalesce, skb_try_coalesce) only as page
  fragments or into tailroom. A plain IFF_TUN write becomes one linear
  kmalloc'd skb (tun_alloc_skb), whose head cannot become a fragment: with
  it the out-of-order cases below came out uncoalesced (measured: 8,000
  and 122,000 bytes cut). So the device is opened with IFF_VNET_HDR and
  every write says hdr_len 40: the IPv4 and TCP headers are the linear
  part, the payload goes into page fragments, and once TCP has pulled its
  header the skb has no linear payload and coalesces. (A write under a
  page is linear either way; every out-of-order segment here is longer.)
  The cases with coalescing say what the verdict would cut without it,
  and fail saying so (`apart`).
- tcp_ofo_queue moves an out-of-order skb whose start the in-order bytes
  have passed to the receive queue whole (no trim), behind the in-order
  segment, and tcp_data_ready then runs the verdict on both, in order.
Needs root (netns, tun, BPF)."""
import array
import ctypes
import fcntl
import itertools
import json
import os
import random
import select
import struct
import time
import unittest

from admin_helpers import get_json, scrape, value
from shunt_harness import Shunt, free_port, proxy_config, run, run_tests, wait_until

NET = "10.255.77."
PROXY_IP, PEER_IP = NET + "1", NET + "2"  # shunt's side of the tun; the test's
MTU = 65535
MSS = MTU - 40
A = 1_000  # the cutting end's first piece, sent before the pair is in the kernel's hands
OTHER = 300_000  # what the other end sends, in order

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
CLONE_NEWNET = 0x40000000
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
SYN_OPTIONS = struct.pack("!BBHBBBB", 2, 4, MSS, 1, 3, 3, 0)  # MSS; NOP; window scale, shift 0 for ours

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    """Moves this thread (the test's only one) into the network namespace of
    `fd`; processes started afterwards are born there."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def stream(tag, start, length):
    """Bytes [start, start + length) of stream `tag`: every aligned 8-byte
    word at offset o is (tag << 56) | o, little-endian."""
    base = start & ~7
    words = (start - base + length + 7) // 8
    first = (ord(tag) << 56) | base
    data = struct.pack(f"<{words}Q", *range(first, first + 8 * words, 8))
    return data[start - base:start - base + length]


def first_difference(got, tag):
    """None when `got` is stream `tag` from offset 0, else where it first
    differs and, when the bytes there are the stream's from elsewhere (a
    word naming its offset, followed by the next), which offset they are."""
    want = stream(tag, 0, len(got))
    if got == want:
        return None
    at = next(i for i in range(len(got)) if got[i] != want[i])
    for k in range(8):
        if at + k + 16 > len(got):
            break
        word, following = struct.unpack_from("<QQ", got, at + k)
        offset = word & ((1 << 56) - 1)
        if word >> 56 == ord(tag) and offset % 8 == 0 and following == word + 8 and offset >= k:
            came = offset - k
            shift = f"{at - came:,} bytes repeated" if came < at else f"{came - at:,} bytes missing"
            return f"first wrong byte at offset {at}: the stream's bytes from offset {came} there ({shift})"
    return f"first wrong byte at offset {at}: {got[at:at + 16].hex()}, not the stream's"


def checksum(data):
    """The Internet checksum of `data`, as the two bytes to store."""
    if len(data) % 2:
        data += b"\0"
    total = sum(array.array("H", data))  # in native order, and so is the result
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return struct.pack("=H", ~total & 0xFFFF)


IP_PROXY, IP_PEER = bytes(map(int, PROXY_IP.split("."))), bytes(map(int, PEER_IP.split(".")))


class Wire:
    """A tun device in the current network namespace (gone when closed) and
    the HandTcp ends on it, which every packet read is handed to by ports.
    A SYN to `listen_port` makes a new end (`accepted`)."""

    def __init__(self, name, listen_port):
        self.listen_port = listen_port
        self.ends = {}
        self.accepted = []
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

    def close(self):
        os.close(self.fd)

    def write(self, packet):
        # struct virtio_net_hdr: no offloads, hdr_len 40, the IPv4 and TCP
        # headers (the skb's linear part; the payload goes into page
        # fragments: the module's docstring says why).
        os.write(self.fd, struct.pack("=BBHHHH", 0, 0, 40, 0, 0, 0) + packet)

    def pump(self, until, timeout):
        """Handles packets until until() holds (True) or `timeout` s pass
        (False)."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if not select.select([self.fd], [], [], min(left, 0.05))[0]:
                continue
            try:
                packet = os.read(self.fd, 65536 + 10)[10:]  # after its virtio_net_hdr
            except BlockingIOError:
                continue
            if len(packet) < 40 or packet[9] != 6 or packet[12:16] != IP_PROXY or packet[16:20] != IP_PEER:
                continue
            ihl = (packet[0] & 15) * 4
            sport, dport, flags = *struct.unpack_from("!HH", packet, ihl), packet[ihl + 13]
            end = self.ends.get((dport, sport))
            if end is None and dport == self.listen_port and flags & (SYN | ACK) == SYN:
                end = HandTcp(self, dport, sport, "D", "U")
                self.accepted.append(end)
            if end is not None:
                end.handle(packet, ihl)
        return True


class HandTcp:
    """One end of a TCP connection, by hand: it sends stream `out_tag` at
    the offsets the test picks and takes stream `in_tag` in order, ACKing
    every packet that carries bytes or a FIN. No retransmissions: the tun
    loses nothing, and a segment TCP did not take shows as an ACK short of
    the one the test expects."""

    def __init__(self, wire, port, peer_port, out_tag, in_tag):
        self.wire = wire
        self.port, self.peer_port = port, peer_port
        self.out_tag, self.in_tag = out_tag, in_tag
        self.iss = random.getrandbits(32)
        self.acked = -1  # offset of our stream the peer has acknowledged; 0 once our SYN is
        self.snd_nxt = -1  # offset after the last we sent (the SYN and a FIN count one)
        self.window = 0  # bytes, scaled
        self.wscale = 0
        self.rcv_nxt = None
        self.received = bytearray()
        self.fin_seen = False
        self.reset = False
        wire.ends[(port, peer_port)] = self

    # A port of its own for each connection: one that met shunt's socket in
    # TIME_WAIT with a lower sequence number would get no SYN-ACK.
    _ports = itertools.count(random.randint(20000, 50000))

    @classmethod
    def connect(cls, wire, peer_port):
        end = cls(wire, next(cls._ports), peer_port, "U", "D")
        end.segment(SYN, -1, options=SYN_OPTIONS)
        if not wire.pump(lambda: end.rcv_nxt is not None, 5):
            raise AssertionError("no SYN-ACK from shunt")
        end.segment(ACK, 0)
        return end

    def segment(self, flags, offset, payload=b"", options=b""):
        """Sends one segment starting at `offset` of our stream (-1: the SYN)."""
        seq = (self.iss + 1 + offset) & 0xFFFFFFFF
        tcp = struct.pack("!HHIIBBHHH", self.port, self.peer_port, seq, self.rcv_nxt or 0,
                          (20 + len(options)) // 4 << 4, flags, 65535, 0, 0) + options
        pseudo = IP_PEER + IP_PROXY + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
        tcp = tcp[:16] + checksum(pseudo + tcp + payload) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), random.getrandbits(16), 0x4000,
                         64, 6, 0, IP_PEER, IP_PROXY)
        self.wire.write(ip[:10] + checksum(ip) + ip[12:] + tcp + payload)
        self.snd_nxt = max(self.snd_nxt, offset + len(payload) + (1 if flags & (SYN | FIN) else 0))

    def send(self, start, end):
        """Our stream's bytes [start, end), as one segment."""
        assert 0 < end - start <= MSS, (start, end)
        self.segment(ACK | PSH, start, stream(self.out_tag, start, end - start))

    def send_in_order(self, start, end, timeout=10):
        """[start, end) in segments the peer's window takes, each sent once it
        has room; True once all are acknowledged."""
        deadline = time.monotonic() + timeout
        sent = start
        while sent < end:
            if not self.wire.pump(lambda: self.acked + self.window > sent, deadline - time.monotonic()):
                return False
            n = min(MSS, end - sent, self.acked + self.window - sent)
            self.send(sent, sent + n)
            sent += n
        return self.wire.pump(lambda: self.acked == end, deadline - time.monotonic())

    def handle(self, packet, ihl):
        total = struct.unpack_from("!H", packet, 2)[0]
        seq, ack, off, flags, window = struct.unpack_from("!IIBBH", packet, ihl + 4)
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
            if not flags & ACK:  # shunt's connect: answer it
                self.segment(SYN | ACK, -1, options=SYN_OPTIONS)
                return
        if flags & ACK:
            acked = (ack - self.iss - 1) & 0xFFFFFFFF
            if acked < 1 << 31 and acked >= self.acked:
                self.acked = acked
                if not flags & SYN:
                    self.window = window << self.wscale
        if flags & SYN or (not payload and not flags & FIN):
            return
        # A retransmission may start below what we have: take its new part.
        skip = (self.rcv_nxt - seq) & 0xFFFFFFFF
        if skip <= len(payload) and not self.fin_seen:
            payload = payload[skip:]
            self.received += payload
            self.rcv_nxt = (self.rcv_nxt + len(payload) + (1 if flags & FIN else 0)) & 0xFFFFFFFF
            self.fin_seen = bool(flags & FIN)
        self.segment(ACK, self.snd_nxt)


def setUpModule():
    """One namespace, tun and shunt for every case; each case is a connection."""
    global NS, WIRE, SHUNT, ADMIN
    NS = "rcut%04d" % random.randint(0, 9999)
    r = run("ip", "netns", "add", NS)
    if r.returncode:
        raise RuntimeError(f"ip netns add: {r.stderr}")
    unittest.addModuleCleanup(run, "ip", "netns", "del", NS)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    unittest.addModuleCleanup(os.close, home)
    target = os.open(f"/run/netns/{NS}", os.O_RDONLY)
    try:
        setns(target)
    finally:
        os.close(target)
    unittest.addModuleCleanup(setns, home)
    run("ip", "link", "set", "lo", "up")
    # Room in shunt's sockets for the out-of-order cases, and a window that
    # takes them from the first segment on (this namespace's own setting).
    with open("/proc/sys/net/ipv4/tcp_rmem", "w") as f:
        f.write("4096 1048576 6291456")
    # Ports on the tun's addresses are the namespace's own: fixed ones do.
    upstream_port, port, ADMIN = 8080, 15080, free_port()
    WIRE = Wire("rcut0", upstream_port)
    unittest.addModuleCleanup(WIRE.close)
    WIRE.proxy_port = port
    rule = (f"    - name: cut\n      from: {{cidr: {PEER_IP}/32}}\n"
            f"      to: {{cidr: {PEER_IP}/32, ports: [{upstream_port}]}}\n      action: allow")
    config = proxy_config([("cut", f"{PROXY_IP}:{port}", f"{PEER_IP}:{upstream_port}")], [rule], datapath="sockmap",
                          admin=ADMIN, proxy_extra="endpoint_shortcut: false")
    SHUNT = Shunt(config, wait_port=port)
    SHUNT.__enter__()
    unittest.addModuleCleanup(SHUNT.__exit__, None, None, None)


class RepeatCuts:
    """The cases, each its own connection, for the direction `direction`
    names: "up" (the client's segments repeat, cut on shunt's client
    socket) or "down" (the server's, cut on its upstream socket). Offsets
    are those of the cutting end's stream; every case starts where the
    first piece ended (A). A step's segments go out back to back, then TCP
    must acknowledge the offset given: what it took in order. `apart`: what
    the verdict would cut had TCP not coalesced the case's out-of-order
    segments."""
    direction = None

    def run_case(self, steps, total, repeated, apart=None):
        name = f"{self.direction}: {self.id().rsplit('.', 1)[-1]}"
        before = value(scrape(ADMIN), "shunt_sockmap_repeated_bytes_total")
        client = HandTcp.connect(WIRE, WIRE.proxy_port)
        self.assertTrue(WIRE.pump(lambda: WIRE.accepted and WIRE.accepted[-1].acked == 0, 5),
                        f"{name}: shunt did not connect to the test's server")
        server = WIRE.accepted.pop()
        cutter, other = (client, server) if self.direction == "up" else (server, client)
        self.addCleanup(WIRE.ends.pop, (client.port, client.peer_port))
        self.addCleanup(WIRE.ends.pop, (server.port, server.peer_port))
        cutter.send(0, A)
        self.assertTrue(WIRE.pump(lambda: cutter.acked == A, 5), f"{name}: first piece not acknowledged")

        def handed_over():
            entry = [c for c in get_json(ADMIN, "/connections") if c["src"] == f"{PEER_IP}:{client.port}"]
            return entry and (entry[0].get("path_up"), entry[0].get("path_down")) == ("sk_skb", "sk_skb")

        self.assertIsNotNone(wait_until(handed_over, 10), f"{name}: the pair never reached the kernel")
        for segments, ack in steps:
            end = max(e for _, e in segments)
            self.assertLessEqual(end, cutter.acked + cutter.window,
                                 f"{name}: segments up to {end} past shunt's window "
                                 f"({cutter.acked} + {cutter.window}): TCP would drop them")
            for start, stop in segments:
                cutter.send(start, stop)
            self.assertTrue(WIRE.pump(lambda: cutter.acked == ack, 5),
                            f"{name}: after {segments} shunt acknowledged {cutter.acked}, not {ack}: "
                            "TCP did not take the segments as planned")
        self.assertTrue(other.send_in_order(0, OTHER), f"{name}: the other direction stalled at {other.acked}")
        cutter.segment(FIN | ACK, total)
        other.segment(FIN | ACK, OTHER)
        ends = ((cutter, total), (other, OTHER))
        closed = WIRE.pump(lambda: all(e.acked == n + 1 and e.fin_seen for e, n in ends), 10)
        # Bytes first: a repeat that got through is the failure to name.
        for end, n in ((other, total), (cutter, OTHER)):
            wrong = first_difference(bytes(end.received), end.in_tag)
            if wrong:
                self.fail(f"{name}: stream {end.in_tag}, {len(end.received)} bytes received of {n}: {wrong}")
            self.assertEqual(len(end.received), n, f"{name}: length of stream {end.in_tag}")
        self.assertTrue(closed, f"{name}: no clean close: acknowledged {cutter.acked} of {total} + FIN and "
                                f"{other.acked} of {OTHER} + FIN, FINs from shunt {cutter.fin_seen} and "
                                f"{other.fin_seen}, resets {cutter.reset} and {other.reset}")
        up, down = (total, OTHER) if self.direction == "up" else (OTHER, total)
        mark = f'"src":"{PEER_IP}:{client.port}"'
        records = []

        def logged():
            records[:] = [json.loads(line) for line in SHUNT.output().splitlines()
                          if line.startswith("{") and '"event":"conn"' in line and mark in line]
            return records

        wait_until(logged, 10)
        self.assertEqual(len(records), 1, SHUNT.output()[-3000:])
        self.assertEqual((records[0]["bytes_up"], records[0]["bytes_down"]), (up, down), records[0])
        # Counted as the pair is torn down (sockmap_path.cpp), before its
        # access log line is written; polled all the same, then exact.
        def cut():
            return value(scrape(ADMIN), "shunt_sockmap_repeated_bytes_total") - before

        wait_until(lambda: cut() >= repeated, 5)
        if apart is not None and cut() == apart:
            self.fail(f"{name}: the verdict cut {apart} bytes, as it would if TCP had not coalesced the "
                      "out-of-order segments: the construction failed, not (necessarily) the cut")
        self.assertEqual(cut(), repeated, f"{name}: bytes the verdict cut")

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
                       ([(A, A + 50_000)], A + 72_000)], A + 72_000, repeated=48_000, apart=8_000)

    def test_repeat_beyond_the_old_limit(self):
        """One skb repeating 121,000 bytes: over the 69,615 the cut gave up
        at until 2026-11-30, and over what one segment carries. Two
        out-of-order skbs grow in turns: S from A + 1,000 and T from
        A + 10,000, which partly overlaps S, so the queue keeps it apart
        (tcp_data_queue_ofo, "partial overlap"). A segment at S's end
        coalesces into S even where T already covers it (the queue looks
        for overlaps only when it does not coalesce), one at T's end into
        T, so S grows to A + 131,000 inside T's range and T to A + 190,000.
        Then 12,000 bytes in order: tcp_ofo_queue moves S (11,000 repeated)
        and T behind it, of which the first 121,000 bytes are S's. Had the
        segments stayed apart, S's first one would be dropped whole (the
        in-order bytes cover it) and the six would repeat 122,000 in all,
        none more than 59,000: the count tells the two apart."""
        ofo = [(A + 1_000, A + 11_000), (A + 10_000, A + 70_000), (A + 11_000, A + 71_000),
               (A + 70_000, A + 130_000), (A + 71_000, A + 131_000), (A + 130_000, A + 190_000)]
        self.run_case([(ofo, A), ([(A, A + 12_000)], A + 190_000)], A + 190_000, repeated=11_000 + 121_000,
                      apart=122_000)


class UpRepeatCutTest(RepeatCuts, unittest.TestCase):
    direction = "up"


class DownRepeatCutTest(RepeatCuts, unittest.TestCase):
    direction = "down"


if __name__ == "__main__":
    run_tests()

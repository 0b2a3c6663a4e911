"""HTTP/2 under abuse and under operations, through a real shunt with an
nghttpd origin and hand-made frames (h2_frames.py): CONTINUATION, SETTINGS
and PING floods and an HPACK bomb are cut off with the right answer while
shunt stays ready and their cost (CPU time, RSS of the shunt process) stays
bounded; streams whose reader holds its window at zero neither stall the
other streams nor grow memory past the stream windows; malformed frames
get GOAWAY with their error code; a reload ends a revoked stream within
100 ms of the reload being applied; SIGTERM sends GOAWAY and lets the
stream in flight finish; an upstream that refuses the connection gets 502
(grpc-status 14 for gRPC) per stream, and the connection carries on."""
import hashlib
import json
import os
import re
import struct
import time
import unittest
from datetime import datetime

import grpc

from admin_helpers import http_get, scrape, value, wait_ready
from h2_frames import (CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, RST_STREAM, SETTINGS,
                       Client, frame, goaways, settings, window_update)
from h2_frames import (CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR,
                       INTERNAL_ERROR, NO_ERROR, PROTOCOL_ERROR, get_headers_block)
from shunt_harness import (Shunt, ThreadedServer, closing, free_port, proxy_config, rule, run_tests,
                           start_class_shunt, start_nghttpd)

MIB = 1024 * 1024


def config(d, big_allowed=True, drain="2s"):
    files = ["{method: GET, path_exact: /ok}"] + (["{method: GET, path_exact: /big}"] if big_allowed else [])
    return proxy_config(
        [("h2c", d["listen"], d["nghttpd"]), ("dead", d["listen_dead"], d["dead"]),
         ("hangup", d["listen_hangup"], d["hangup"])],
        [rule("files", d["nghttpd"], http=files),
         rule("dead", [d["dead"], d["hangup"]], http=["{method: GET, path: /}"], grpc="[test.Svc/*]")],
        timeouts={"drain": drain}, limits="max_connections: 1000, max_header_bytes: 8192", admin=d["admin"])


def hang_up(conn):
    conn.settimeout(5)
    try:
        conn.recv(65536)
    except OSError:
        pass
    conn.close()


def proc_cost(pid):
    """(CPU seconds used so far, RSS bytes) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        rss = int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024
    return cpu, rss


class Http2Limits(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.big = os.urandom(8 * MIB)
        # An upstream that accepts, reads the request and closes without a word.
        cls.hangup = closing(cls, ThreadedServer(hang_up))
        cls.ports = dict(listen=free_port(), admin=free_port(), listen_dead=free_port(), dead=free_port(),
                         listen_hangup=free_port(), hangup=cls.hangup.port,
                         nghttpd=start_nghttpd(cls, {"ok": b"hi\n", "big": cls.big}))
        cls.shunt = start_class_shunt(cls, config(cls.ports), cls.ports["listen"])
        wait_ready(cls.ports["admin"], proc=cls.shunt.proc)

    def client(self, port=None):
        c = Client(port or self.ports["listen"])
        self.addCleanup(c.close)
        return c

    def assert_ready_and_serving(self):
        self.assertEqual(http_get(self.ports["admin"], "/readyz")[0], 200)
        c = self.client()
        c.request(1, "/ok")
        status, body, _ = c.response(1)
        self.assertEqual((status, body), (200, b"hi\n"))

    def flood(self, payload_frames, expect_code, cpu_budget=1.0, rss_budget=16 * MIB):
        """Sends a flood on one connection without reading, then reads what
        comes back: exactly one GOAWAY with `expect_code`; shunt's CPU time
        and RSS growth stay within the budgets; shunt still serves."""
        pid = self.shunt.proc.pid
        cpu0, rss0 = proc_cost(pid)
        before = value(scrape(self.ports["admin"]), "shunt_http2_goaways_total", code=expect_code[1])
        c = self.client()
        for chunk in payload_frames:
            if not c.send(chunk):
                break
        frames = c.read_to_eof(timeout=10)
        cpu1, rss1 = proc_cost(pid)
        self.assertEqual([code for _, code in goaways(frames)], [expect_code[0]],
                         [(f.type, f.flags, f.stream) for f in frames][:20])
        self.assertLess(cpu1 - cpu0, cpu_budget)
        self.assertLess(rss1 - rss0, rss_budget)
        after = value(scrape(self.ports["admin"]), "shunt_http2_goaways_total", code=expect_code[1])
        self.assertEqual(after, before + 1)
        self.assert_ready_and_serving()
        return frames

    # ------------------------------------------------------------ floods

    def test_continuation_flood(self):
        # One HEADERS without END_HEADERS, then CONTINUATIONs that never end the
        # block (CVE-2024-27316 class): cut off after proxy.http2.max_continuations (8).
        block = b"\x00\x04x-aa\x03val"  # literal header, not indexed
        first = frame(HEADERS, 0, 1, bytes([0x82, 0x86, 0x84]))
        conts = frame(CONTINUATION, 0, 1, block * 1000)  # ~10 KB each
        self.flood([first] + [conts] * 2000, (ENHANCE_YOUR_CALM, "enhance_your_calm"))

    def test_rapid_reset_flood_cost(self):
        # HEADERS then RST_STREAM, 5000 times (CVE-2023-44487): past
        # proxy.http2.reset_burst nghttp2 ends the connection with INTERNAL_ERROR.
        block = get_headers_block(f"127.0.0.1:{self.ports['listen']}")
        burst = b"".join(frame(HEADERS, END_HEADERS | END_STREAM, i, block) + frame(RST_STREAM, 0, i, b"\0\0\0\x08")
                         for i in range(1, 2 * 5000, 2))
        frames = self.flood([burst], (INTERNAL_ERROR, "internal_error"))
        self.assertLess(goaways(frames)[0][0], 2 * 1100)  # cut off near the burst of 1000

    def test_settings_flood(self):
        burst = b"".join(settings(enable_push=0) for _ in range(1000))
        self.flood([burst] * 100, (ENHANCE_YOUR_CALM, "enhance_your_calm"))

    def test_ping_flood(self):
        burst = b"".join(frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(1000))
        self.flood([burst] * 100, (ENHANCE_YOUR_CALM, "enhance_your_calm"))

    def test_hpack_bomb(self):
        # A 4 KB header value put into the dynamic table once, then referenced
        # by one byte 2000 times in each request: 8 MB of decoded headers per
        # 2 KB sent. Each such stream is reset at max_header_bytes; the
        # connection (and its HPACK state) carries on, and the cost is bounded.
        pid = self.shunt.proc.pid
        cpu0, rss0 = proc_cost(pid)
        c = self.client()
        value_4k = b"v" * 4000

        def hlen(n):  # an HPACK string length (7-bit prefix), no Huffman
            if n < 127:
                return bytes([n])
            n -= 127
            out = [127]
            while n >= 128:
                out.append((n & 0x7f) | 0x80)
                n >>= 7
            out.append(n)
            return bytes(out)

        # Literal with incremental indexing, new name (0x40), then the references.
        base = bytes([0x82, 0x86, 0x84]) + bytes([0x41]) + hlen(len(c.authority)) + c.authority.encode()
        first = base + bytes([0x40]) + hlen(6) + b"x-bomb" + hlen(len(value_4k)) + value_4k
        bomb = base + bytes([0xbe]) * 2000  # dynamic index 62: x-bomb
        c.send(frame(HEADERS, END_HEADERS | END_STREAM, 1, first))
        streams = list(range(3, 3 + 2 * 50, 2))
        for sid in streams:
            c.send(frame(HEADERS, END_HEADERS | END_STREAM, sid, bomb))
        resets = set()
        frames = c.frames_until(lambda f: f.type == RST_STREAM and resets.add(f.stream) is None and
                                resets >= set(streams), timeout=20)
        self.assertEqual(resets, set(streams), [(f.type, f.stream) for f in frames][-10:])
        self.assertEqual(goaways(frames), [])
        # The same connection still decodes headers right: its HPACK state is intact.
        c.request(201, "/ok")
        self.assertEqual(c.response(201)[:2], (200, b"hi\n"))
        cpu1, rss1 = proc_cost(pid)
        self.assertLess(cpu1 - cpu0, 2.0)  # 400 MB of decoded headers would take far longer to copy
        self.assertLess(rss1 - rss0, 16 * MIB)
        self.assert_ready_and_serving()

    def test_zero_window_streams_stall_alone(self):
        # 30 downloads of 8 MiB whose reader never opens their windows (the
        # client opens the connection window wide): each stream stops at its
        # window, shunt buffers at most proxy.http2.stream_window (256 KiB)
        # per stalled stream, and other streams of the same connection run.
        pid = self.shunt.proc.pid
        _, rss0 = proc_cost(pid)
        c = self.client()
        c.send(window_update(0, 1 << 30))
        stalled = list(range(1, 61, 2))
        for sid in stalled:
            c.request(sid, "/big")
        time.sleep(1.0)
        m = scrape(self.ports["admin"])
        self.assertGreaterEqual(value(m, "shunt_http2_active_streams"), len(stalled))
        t0 = time.monotonic()
        c.request(101, "/ok")
        status, body, frames = c.response(101, timeout=5)
        self.assertEqual((status, body), (200, b"hi\n"))
        self.assertLess(time.monotonic() - t0, 2.0)
        got = sum(len(f.payload) for f in frames if f.type == DATA and f.stream in stalled)
        self.assertLessEqual(got, len(stalled) * 65535)  # the client's default stream window, no more
        _, rss1 = proc_cost(pid)
        time.sleep(1.0)
        _, rss2 = proc_cost(pid)
        # Bounded by the stream windows (30 x 256 KiB = 7.5 MiB), not the 240 MiB asked for.
        self.assertLess(rss1 - rss0, 7.5 * MIB + 8 * MIB)
        self.assertLess(rss2 - rss1, 2 * MIB)  # and not growing
        c.close()
        deadline = time.monotonic() + 5
        while value(scrape(self.ports["admin"]), "shunt_http2_active_streams") > 0:
            self.assertLess(time.monotonic(), deadline, "streams still counted after the connection closed")
            time.sleep(0.05)

    # ---------------------------------------------------------- malformed

    def test_malformed_frames_get_goaway_with_their_code(self):
        cases = [
            ("DATA on stream 0", frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
            ("HPACK index that does not exist", frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\xff\xff\x7f"),
             COMPRESSION_ERROR),
            ("PING of 7 bytes", frame(PING, 0, 0, b"\x00" * 7), FRAME_SIZE_ERROR),
            ("window over 2^31-1", window_update(0, 0x7fffffff) + window_update(0, 0x7fffffff),
             FLOW_CONTROL_ERROR),
            ("SETTINGS ACK with a payload", frame(SETTINGS, 1, 0, b"\x00" * 6), FRAME_SIZE_ERROR),
            ("SETTINGS of 3 bytes", frame(SETTINGS, 0, 0, b"\x00\x01\x00"), FRAME_SIZE_ERROR),
            ("CONTINUATION without HEADERS", frame(CONTINUATION, END_HEADERS, 1, b"\x82"), PROTOCOL_ERROR),
            ("even stream id from a client", frame(HEADERS, END_HEADERS, 2, b"\x82\x86\x84"), PROTOCOL_ERROR),
        ]
        for name, data, code in cases:
            with self.subTest(name):
                c = self.client()
                c.send(data)
                frames = c.read_to_eof(timeout=10)
                self.assertEqual([g[1] for g in goaways(frames)], [code])
                self.assertTrue(c.closed)
        self.assert_ready_and_serving()

    # ------------------------------------------------------------- reload

    def reload_applied_at(self, generation):
        """Wall-clock time of the log line saying `generation` was applied."""
        pat = re.compile(r"^\[([0-9-]+ [0-9:.]+)\] \[info\] config reloaded \(.*\): generation " +
                         str(generation) + r",")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for line in self.shunt.output().splitlines():
                m = pat.match(line)
                if m:
                    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            time.sleep(0.01)
        self.fail(f"no reload line for generation {generation}")

    def test_reload_resets_a_revoked_stream_within_100ms(self):
        # Budget (docs/policy.md, "HTTP/2"): the reload wakes every HTTP/2
        # connection it keeps, which re-decides its streams at once; 100 ms is
        # SPEC's bound for revocation. Measured from the reload's own log line
        # (written after the wake-ups are posted, so it errs against shunt) to
        # the RST_STREAM's arrival here.
        c = self.client()
        c.send(window_update(0, 1 << 30))  # only the stream's window holds it
        c.request(1, "/big")  # held open: its window stays at 65535 of 8 MiB
        c.frames_until(lambda f: f.type == HEADERS and f.stream == 1, timeout=5)
        gen = value(scrape(self.ports["admin"]), "shunt_config_generation")
        try:
            self.shunt.write_config(config(self.ports, big_allowed=False))
            self.shunt.proc.send_signal(1)
            frames = c.frames_until(lambda f: f.type == RST_STREAM and f.stream == 1, timeout=5)
            self.assertEqual(frames[-1].type, RST_STREAM)
            self.assertEqual(frames[-1].error_code(), CANCEL)
            latency = frames[-1].at - self.reload_applied_at(int(gen) + 1)
            self.assertLess(latency, 0.100)
            # The connection carries on; a new /big is decided under the new policy.
            c.request(3, "/ok")
            self.assertEqual(c.response(3)[:2], (200, b"hi\n"))
            c.request(5, "/big")
            self.assertEqual(c.response(5)[:2], (403, b"Access denied\n"))
        finally:
            self.shunt.write_config(config(self.ports))
            self.shunt.proc.send_signal(1)
            deadline = time.monotonic() + 10
            while value(scrape(self.ports["admin"]), "shunt_config_generation") < gen + 2:
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.01)

    # ---------------------------------------------------- upstream failure

    def test_refused_upstream_is_502_per_stream(self):
        c = self.client(self.ports["listen_dead"])
        c.request(1, "/a")
        self.assertEqual(c.response(1)[:2], (502, b"Bad Gateway\n"))
        c.request(3, "/b")  # tried again, refused again, on the same connection
        self.assertEqual(c.response(3)[:2], (502, b"Bad Gateway\n"))
        c.request(5, "/denied", method="DELETE")
        self.assertEqual(c.response(5)[0], 403)
        with grpc.insecure_channel(f"127.0.0.1:{self.ports['listen_dead']}") as ch:
            with self.assertRaises(grpc.RpcError) as e:
                ch.unary_unary("/test.Svc/Call")(b"x", timeout=10)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)
        deadline = time.monotonic() + 5
        while True:
            lines = [json.loads(line) for line in self.shunt.output().splitlines()
                     if line.startswith('{"') and '"path":"/b"' in line]
            if lines or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual([(e["status"], e["verdict"], e["reason"]) for e in lines],
                         [(502, "allow", "upstream_connect_failed")])


    def test_upstream_gone_before_the_response_is_502(self):
        c = self.client(self.ports["listen_hangup"])
        c.request(1, "/a")
        status, body, frames = c.response(1)
        self.assertEqual((status, body), (502, b"Bad Gateway\n"))
        # The client is told to go elsewhere for more: GOAWAY(NO_ERROR).
        if not goaways(frames):
            frames = c.frames_until(lambda f: f.type == GOAWAY, timeout=5)
        self.assertEqual([code for _, code in goaways(frames)], [NO_ERROR])


class Http2Drain(unittest.TestCase):
    def test_sigterm_sends_goaway_and_the_stream_in_flight_finishes(self):
        big = os.urandom(8 * MIB)
        ports = dict(listen=free_port(), admin=free_port(), listen_dead=free_port(), dead=free_port(),
                     listen_hangup=free_port(), hangup=free_port(), nghttpd=start_nghttpd(self, {"big": big}))
        with Shunt(config(ports, drain="10s"), wait_port=ports["listen"]) as shunt:
            wait_ready(ports["admin"], proc=shunt.proc)
            c = Client(ports["listen"])
            self.addCleanup(c.close)
            c.request(1, "/big")  # in flight, held at its first 65535 bytes
            frames = c.frames_until(lambda f: f.type == HEADERS and f.stream == 1, timeout=5)
            shunt.proc.send_signal(15)
            frames += c.frames_until(lambda f: f.type == GOAWAY, timeout=5)
            self.assertEqual(goaways(frames), [(1, NO_ERROR)])
            # The stream finishes: open its windows and read to its end.
            c.send(window_update(0, 1 << 30) + window_update(1, 1 << 30))
            frames += c.frames_until(lambda f: f.stream == 1 and f.flags & END_STREAM, timeout=30)
            body = b"".join(f.payload for f in frames if f.type == DATA and f.stream == 1)
            self.assertEqual(len(body), len(big))
            self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(big).hexdigest())
            self.assertTrue(any(f.type == HEADERS and f.headers.get(":status") == "200" for f in frames))
            c.close()
            self.assertEqual(shunt.proc.wait(timeout=15), 0)


if __name__ == "__main__":
    run_tests()

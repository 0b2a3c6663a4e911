"""HTTP/2 frames by hand for tests that must send what no real client would
(floods, malformed frames, windows held at zero): frame building, request
header blocks (HPACK from python3-hpack), and a reader that splits what
comes back into frames with their arrival times."""
import socket
import struct
import time

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
FRAME_SIZE_ERROR, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 6, 8, 9, 11


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def settings(**values):
    ids = {"header_table_size": 1, "enable_push": 2, "max_concurrent_streams": 3, "initial_window_size": 4,
           "max_frame_size": 5, "max_header_list_size": 6}
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", ids[k], v) for k, v in values.items()))


def window_update(stream, increment):
    return frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", increment))


def get_headers_block(authority):
    # HPACK by hand: :method GET, :scheme http, :path / from the static
    # table, :authority as a literal with an indexed name.
    return bytes([0x82, 0x86, 0x84, 0x41, len(authority)]) + authority.encode()


def request_block(encoder, path, authority, method="GET", extra=()):
    return encoder.encode([(":method", method), (":scheme", "http"), (":path", path), (":authority", authority),
                           *extra])


class Frame:
    def __init__(self, ftype, flags, stream, payload, at):
        self.type, self.flags, self.stream, self.payload, self.at = ftype, flags, stream, payload, at

    def goaway(self):
        """(last stream id, error code) of a GOAWAY."""
        return (int.from_bytes(self.payload[0:4], "big") & 0x7fffffff, int.from_bytes(self.payload[4:8], "big"))

    def error_code(self):
        return int.from_bytes(self.payload[0:4], "big")


class Client:
    """A raw HTTP/2 client connection: sends bytes as given, reads frames."""

    def __init__(self, port, host="127.0.0.1", preface=True, timeout=10):
        self.sock = socket.create_connection((host, port))
        self.sock.settimeout(timeout)
        self.buf = b""
        self.closed = False
        self.decoder = hpack.Decoder()
        self.decoder.max_allowed_table_size = 65536
        self.encoder = hpack.Encoder()
        self.authority = f"{host}:{port}"
        if preface:
            self.send(PREFACE + frame(SETTINGS, 0, 0))

    def close(self):
        self.sock.close()

    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False  # the peer closed on us: what it said is in the frames

    def request(self, stream, path, method="GET", end_stream=True, extra=()):
        block = request_block(self.encoder, path, self.authority, method, extra)
        self.send(frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), stream, block))

    def next_frame(self, deadline=None):
        """The next frame, or None at EOF/reset/timeout. `closed` says
        which: set at EOF or reset only, so that a later call can still
        read what a slow peer sends after a timeout."""
        while True:
            if len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + length:
                    f = Frame(self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7fffffff,
                              self.buf[9:9 + length], time.time())
                    self.buf = self.buf[9 + length:]
                    return f
            if self.closed:
                return None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                return None
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
            self.buf += chunk

    def frames_until(self, stop, timeout=10):
        """Frames until `stop(frame)` is true (that frame included) or EOF."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            f = self.next_frame(deadline)
            if f is None:
                return out
            if f.type == HEADERS:
                f.headers = dict(self.decoder.decode(f.payload))
            out.append(f)
            if stop(f):
                return out

    def read_to_eof(self, timeout=10):
        return self.frames_until(lambda f: False, timeout)

    def response(self, stream, timeout=10):
        """(status, body, frames) of one stream (its body within the windows)."""
        frames = self.frames_until(
            lambda f: f.stream == stream and (f.flags & END_STREAM or f.type == RST_STREAM), timeout)
        status, body = None, b""
        for f in frames:
            if f.stream != stream:
                continue
            if f.type == HEADERS and status is None:
                status = int(f.headers[":status"])
            elif f.type == DATA:
                body += f.payload
        return status, body, frames


def goaways(frames):
    return [f.goaway() for f in frames if f.type == GOAWAY]

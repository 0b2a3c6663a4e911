"""Peers inside lab pods (`ip netns exec POD python3 pod_peer.py ...`), IPv4
or IPv6 by the address given; shunt_harness names them (POD_SERVE,
POD_ECHO, PodLab.serve/client).

  serve HOST PORT [echo|http|bulk][-nonblocking]
                         prints "listening" once bound, then per connection
                         (its socket O_NONBLOCK with -nonblocking, through a
                         timeout, as an event-loop server's is):
                         echo (the default): sends "peer=IP\\n", then echoes
                         to EOF; http: answers each HTTP/1.1 request with
                         "path=PATH peer=IP\\n"; bulk: sends "peer=IP\\n",
                         reads "UP DOWN\\n", sends DOWN pattern bytes (salt 2)
                         while hashing the upload, and prints "upload peer=IP
                         UP_BYTES UP_SHA256 SENT_DOWN_SHA256" at EOF
  client echo HOST PORT SIZE [TIMEOUT]
                         against an echo server: sends SIZE random bytes,
                         half-closes, prints "peer=IP SENT_SHA256 GOT_SHA256
                         GOT_BYTES"
  client bulk HOST PORT UP DOWN TIMEOUT [PAUSE [SOURCE_PORT]]
                         (after PAUSE seconds, once the server has greeted;
                         from SOURCE_PORT)
                         sends UP pattern bytes (salt 1) while reading, prints
                         "peer=IP DOWN_BYTES DOWN_SHA256 SENT_UP_SHA256"
  decoy LOCAL REMOTE PORT SOURCE_PORT BYTES
                         a connection inside this netns with the 4-tuple a
                         client LOCAL:SOURCE_PORT -> REMOTE:PORT elsewhere has
                         (both addresses must be local here): prints "ready",
                         waits for a line on stdin, sends BYTES pattern bytes
                         (salt 1) from the connecting socket, prints "decoy
                         GOT_BYTES GOT_SHA256 SENT_SHA256" as its peer saw them
A client that fails prints "error <kind>" (reset, timeout, eof, or the
OSError's class) instead. Each side hashes what it sent itself, so the test
compares the sender's hash with the receiver's.
"""
import hashlib
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shunt_harness import digest_to_eof, pattern_digest, send_pattern  # noqa: E402

UP_SALT, DOWN_SALT = 1, 2


def serve(host, port, mode):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(64)
    print("listening", flush=True)
    out = threading.Lock()

    def echo(c, peer):
        with c:
            c.sendall(("peer=%s\n" % peer[0]).encode())
            while True:
                d = c.recv(1 << 16)
                if not d:
                    break
                c.sendall(d)

    def http(c, peer):
        with c:
            f = c.makefile("rb")
            while True:
                line = f.readline()
                if not line:
                    break
                path = line.split()[1].decode()
                while f.readline() not in (b"\r\n", b"\n", b""):
                    pass
                body = ("path=%s peer=%s\n" % (path, peer[0])).encode()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    def bulk(c, peer):
        try:
            with c:
                c.sendall(("peer=%s\n" % peer[0]).encode())
                f = c.makefile("rb")
                up, down = (int(x) for x in f.readline().split())
                sender = threading.Thread(
                    target=lambda: (send_pattern(c, down, DOWN_SALT), c.shutdown(socket.SHUT_WR)))
                sender.start()
                n, sha = digest_to_eof(f.read1)
                sender.join()
            with out:
                print("upload peer=%s %d %s %s" % (peer[0], n, sha, pattern_digest(down, DOWN_SALT)), flush=True)
        except OSError:
            pass  # a reset the test provoked

    nonblocking = mode.endswith("-nonblocking")
    handler = {"echo": echo, "http": http, "bulk": bulk}[mode.removesuffix("-nonblocking")]
    while True:
        c, a = s.accept()
        if nonblocking:
            c.settimeout(120)
        threading.Thread(target=handler, args=(c, a), daemon=True).start()


def connect(host, port, timeout, io_timeout, source_port=0):
    """A connection to a server that first names the peer it saw: (socket,
    its reader, "peer=IP"), or None when it closed before saying so."""
    s = socket.create_connection((host, port), timeout=timeout,
                                 source_address=("", source_port) if source_port else None)
    f = s.makefile("rb")
    peer = f.readline().decode().strip()
    if not peer:
        return None
    s.settimeout(io_timeout)
    return s, f, peer


def read_digest_aside(f):
    """Starts reading `f` to EOF in a thread; returns the thread and the list
    that gets (bytes, sha256) when it is done."""
    result = []
    reader = threading.Thread(target=lambda: result.extend(digest_to_eof(f.read1)))
    reader.start()
    return reader, result


def echo_client(host, port, size, timeout=10.0):
    conn = connect(host, port, timeout, 60)
    if conn is None:
        return "error eof"
    s, f, peer = conn
    data = os.urandom(size)
    reader, result = read_digest_aside(f)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    reader.join(90)
    n, sha = result or (0, "unfinished")
    return "%s %s %s %d" % (peer, hashlib.sha256(data).hexdigest(), sha, n)


def bulk_client(host, port, up, down, timeout, pause=0.0, source_port=0):
    conn = connect(host, port, timeout, 90, source_port)
    if conn is None:
        return "error eof"
    s, f, peer = conn
    reader, result = read_digest_aside(f)
    time.sleep(pause)
    s.sendall(b"%d %d\n" % (up, down))
    send_pattern(s, up, UP_SALT)
    s.shutdown(socket.SHUT_WR)
    reader.join(120)
    return "%s %d %s %s" % (peer, result[0], result[1], pattern_digest(up, UP_SALT))


def decoy(local, remote, port, source_port, size):
    listener = socket.create_server((remote, port))
    # A timeout makes the socket non-blocking, as a capturable client's is.
    s = socket.create_connection((remote, port), timeout=30, source_address=(local, source_port))
    peer, _ = listener.accept()
    print("ready", flush=True)
    sys.stdin.readline()
    result = []
    reader = threading.Thread(target=lambda: result.extend(digest_to_eof(peer.recv)))
    reader.start()
    send_pattern(s, size, UP_SALT)
    s.shutdown(socket.SHUT_WR)
    reader.join(60)
    n, sha = result or (0, "unfinished")
    print("decoy %d %s %s" % (n, sha, pattern_digest(size, UP_SALT)), flush=True)


def main():
    if sys.argv[1] == "serve":  # serve HOST PORT [MODE]
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "echo")
        return
    if sys.argv[1] == "decoy":  # decoy LOCAL REMOTE PORT SOURCE_PORT BYTES
        decoy(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
        return
    mode, host, port, args = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
    try:
        if mode == "echo":  # client echo HOST PORT SIZE [TIMEOUT]
            print(echo_client(host, port, int(args[0]), *(float(a) for a in args[1:2])))
        else:  # client bulk HOST PORT UP DOWN TIMEOUT [PAUSE [SOURCE_PORT]]
            assert mode == "bulk", mode
            print(bulk_client(host, port, int(args[0]), int(args[1]), *(float(a) for a in args[2:4]),
                              *(int(a) for a in args[4:5])))
    except ConnectionResetError:
        print("error reset")
    except socket.timeout:
        print("error timeout")
    except OSError as e:
        print("error %s" % e.__class__.__name__)


if __name__ == "__main__":
    main()

"""Peers that run inside lab pods (`ip netns exec POD python3 pod_peer.py ...`).

IPv4 or IPv6 by the address given. Servers print "listening" once bound;
clients print one result line (or "error <kind>") and exit 0, so the test
decides what a result means.

  serve HOST PORT echo   first line "peer=IP\\n" (the address the server saw),
                         then every byte back; closes after the client's FIN
  serve HOST PORT http   HTTP/1.1 keep-alive, 200 with "path=P peer=IP\\n"
  serve HOST PORT bulk   "peer=IP\\n", then reads "UP DOWN\\n", sends DOWN
                         pattern bytes (salt 2) while hashing the upload; prints
                         "upload peer=IP UP_BYTES UP_SHA256 SENT_DOWN_SHA256" on
                         its stdout at EOF
  client echo HOST PORT SIZE TIMEOUT
                         prints "peer=IP SENT_SHA GOT_SHA GOT_BYTES"
  client bulk HOST PORT UP DOWN TIMEOUT
                         sends UP pattern bytes (salt 1), prints
                         "peer=IP DOWN_BYTES DOWN_SHA256 SENT_UP_SHA256"
Each side hashes what it sent itself (the pattern's filler is random per
process), so the test compares the sender's hash with the receiver's.
"""
import hashlib
import os
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shunt_harness import pattern, pattern_digest, send_pattern  # noqa: E402

UP_SALT, DOWN_SALT = 1, 2


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def serve(host, port, mode):
    s = socket.socket(family_of(host), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(64)
    print("listening", flush=True)
    out = threading.Lock()

    def echo(c, peer):
        c.sendall(("peer=%s\n" % peer[0]).encode())
        while True:
            d = c.recv(1 << 16)
            if not d:
                break
            c.sendall(d)

    def http(c, peer):
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
        c.sendall(("peer=%s\n" % peer[0]).encode())
        f = c.makefile("rb")
        up, down = (int(x) for x in f.readline().split())
        sender = threading.Thread(target=lambda: (send_pattern(c, down, DOWN_SALT), c.shutdown(socket.SHUT_WR)))
        sender.start()
        h, n = hashlib.sha256(), 0
        while True:
            d = f.read1(1 << 20)
            if not d:
                break
            h.update(d)
            n += len(d)
        sender.join()
        with out:
            print("upload peer=%s %d %s %s" % (peer[0], n, h.hexdigest(), pattern_digest(down, DOWN_SALT)),
                  flush=True)

    handler = {"echo": echo, "http": http, "bulk": bulk}[mode]

    def run(c, peer):
        try:
            with c:
                handler(c, peer)
        except OSError:
            pass  # a reset the test provoked

    while True:
        c, a = s.accept()
        threading.Thread(target=run, args=(c, a), daemon=True).start()


def client(mode, host, port, args):
    timeout = float(args[-1])
    s = socket.create_connection((host, port), timeout=timeout)
    f = s.makefile("rb")
    peer = f.readline().decode().strip()
    if not peer:
        return "error eof"
    s.settimeout(90)
    got, n = hashlib.sha256(), [0]

    def reader():
        while True:
            d = f.read1(1 << 20)
            if not d:
                break
            got.update(d)
            n[0] += len(d)

    t = threading.Thread(target=reader)
    t.start()
    if mode == "echo":
        data = os.urandom(int(args[0]))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        t.join(120)
        return "%s %s %s %d" % (peer, hashlib.sha256(data).hexdigest(), got.hexdigest(), n[0])
    up, down = int(args[0]), int(args[1])
    s.sendall(b"%d %d\n" % (up, down))
    for chunk in pattern(up, UP_SALT):
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    t.join(120)
    return "%s %d %s %s" % (peer, n[0], got.hexdigest(), pattern_digest(up, UP_SALT))


def main():
    role, rest = sys.argv[1], sys.argv[2:]
    if role == "serve":
        serve(rest[0], int(rest[1]), rest[2])
        return
    mode, host, port = rest[0], rest[1], int(rest[2])
    try:
        print(client(mode, host, port, rest[3:]))
    except ConnectionResetError:
        print("error reset")
    except socket.timeout:
        print("error timeout")
    except OSError as e:
        print("error %s" % e.__class__.__name__)


if __name__ == "__main__":
    main()

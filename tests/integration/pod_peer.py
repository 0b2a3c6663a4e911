"""Bulk peers for lab pods (`ip netns exec POD python3 pod_peer.py ...`),
IPv4 or IPv6 by the address given; the echo and HTTP peers are
shunt_harness.POD_SERVER / POD_ECHO_CLIENT.

  serve HOST PORT bulk   prints "listening" once bound; per connection sends
                         "peer=IP\\n", reads "UP DOWN\\n", sends DOWN pattern
                         bytes (salt 2) while hashing the upload, and prints
                         "upload peer=IP UP_BYTES UP_SHA256 SENT_DOWN_SHA256"
                         on its stdout at EOF
  client bulk HOST PORT UP DOWN TIMEOUT
                         sends UP pattern bytes (salt 1) while reading, prints
                         "peer=IP DOWN_BYTES DOWN_SHA256 SENT_UP_SHA256", or
                         "error <kind>"
Each side hashes what it sent itself (the pattern's filler is random per
process), so the test compares the sender's hash with the receiver's.
"""
import os
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shunt_harness import digest_to_eof, pattern_digest, send_pattern  # noqa: E402

UP_SALT, DOWN_SALT = 1, 2


def serve(host, port):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(64)
    print("listening", flush=True)
    out = threading.Lock()

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

    while True:
        c, a = s.accept()
        threading.Thread(target=bulk, args=(c, a), daemon=True).start()


def client(host, port, up, down, timeout):
    s = socket.create_connection((host, port), timeout=timeout)
    f = s.makefile("rb")
    peer = f.readline().decode().strip()
    if not peer:
        return "error eof"
    s.settimeout(90)
    result = []
    reader = threading.Thread(target=lambda: result.extend(digest_to_eof(f.read1)))
    reader.start()
    s.sendall(b"%d %d\n" % (up, down))
    send_pattern(s, up, UP_SALT)
    s.shutdown(socket.SHUT_WR)
    reader.join(120)
    return "%s %d %s %s" % (peer, result[0], result[1], pattern_digest(up, UP_SALT))


def main():
    if sys.argv[1] == "serve":  # serve HOST PORT bulk
        assert sys.argv[4] == "bulk", sys.argv[4]
        serve(sys.argv[2], int(sys.argv[3]))
        return
    mode, host, port = sys.argv[2], sys.argv[3], int(sys.argv[4])  # client bulk HOST PORT UP DOWN TIMEOUT
    assert mode == "bulk", mode
    try:
        print(client(host, port, int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])))
    except ConnectionResetError:
        print("error reset")
    except socket.timeout:
        print("error timeout")
    except OSError as e:
        print("error %s" % e.__class__.__name__)


if __name__ == "__main__":
    main()

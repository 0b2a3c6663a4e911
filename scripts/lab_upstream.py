#!/usr/bin/python3
"""The demo's HTTP upstream: python3 lab_upstream.py HOST PORT DIRECTORY.

Serves DIRECTORY like `python3 -m http.server`, with two differences the
demo and its test rely on:
- no DNS: http.server's HTTPServer.server_bind() calls socket.getfqdn(),
  a reverse lookup that times out inside a pod's network namespace (no
  resolver reachable) and delays listen() by 3-8 s;
- it prints "listening" once the socket accepts, and one line per request
  ("GET /path 200") on stdout, so a caller can wait for it and check what
  the upstream actually received.
"""
import functools
import http.server
import socketserver
import sys


class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        # socketserver's bind, without HTTPServer's getfqdn() (see above).
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_request(self, code="-", size="-"):
        print("%s %s %s" % (self.command, self.path, code), flush=True)

    def log_message(self, fmt, *args):  # errors etc.: keep stdout one line per request
        sys.stderr.write(fmt % args + "\n")


def main():
    host, port, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    server = Server((host, port), functools.partial(Handler, directory=directory))
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ (docs/fuzzing.md).

Seeds are committed; this script says where they came from and makes them
again (stdlib only). Each seed is one named file; re-running overwrites the
files it owns and leaves other seeds (added by hand, or crash reproducers
kept as regressions) alone.
"""
import os
import pathlib
import ssl
import struct

ROOT = pathlib.Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"


def write(target, name, data, keep=False):
    """keep: leave an existing file alone (for seeds that differ on every
    run, like ClientHellos with their random and key shares)."""
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if keep and (d / name).exists():
        return
    if isinstance(data, str):
        data = data.encode("latin-1")
    (d / name).write_bytes(data)


def crlf(text):
    return text.replace("\n", "\r\n")


# ------------------------------------------------------------------ HTTP
# One client's byte stream each. Allowed and denied forms under the fixed
# policy of fuzz_common.h, every framing llhttp knows, and one example of
# each bypass class of issue 9 (the canonical form and strict framing are
# what those classes are about).
HTTP = {
    "get-allowed": "GET /api/users HTTP/1.1\nHost: api.local\n\n",
    "get-denied-admin": "GET /api/admin/keys HTTP/1.1\nHost: api.local\n\n",
    "get-http10": "GET /api/x HTTP/1.0\n\n",
    "post-login-json": "POST /login HTTP/1.1\nHost: api.local\nContent-Type: application/json\n"
    "Content-Length: 13\n\n{\"user\":\"a\"}\n",
    "post-chunked": "POST /api/upload HTTP/1.1\nHost: api.local\nTransfer-Encoding: chunked\n\n"
    "5\nhello\n6;ext=1\n world\n0\nTrailer: x\n\n",
    "pipelined": "GET /api/a HTTP/1.1\nHost: api.local\n\nGET /v2/items HTTP/1.1\nHost: api.local\n\n"
    "GET /api/admin HTTP/1.1\nHost: api.local\n\n",
    "regex-match": "GET /v12/items HTTP/1.1\nHost: api.local\n\n",
    "host-public": "DELETE /anything HTTP/1.1\nHost: public.local:8080\n\n",
    "header-debug": "GET /api/x HTTP/1.1\nHost: api.local\nX-Debug: 1\n\n",
    "upgrade-websocket": "GET /api/ws HTTP/1.1\nHost: api.local\nConnection: Upgrade\nUpgrade: websocket\n"
    "Sec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\nGET /api/after HTTP/1.1\n"
    "Host: api.local\n\n",
    "upgrade-two-values": "GET /api/ws HTTP/1.1\nHost: api.local\nConnection: Upgrade, HTTP2-Settings\n"
    "Upgrade: h2c\nUpgrade: websocket\nHTTP2-Settings: AAMAAABkAAQAAP__\n\n",
    "connect": "CONNECT admin.local:443 HTTP/1.1\nHost: api.local\n\n",
    "h2-preface": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "absolute-form": "GET http://admin.local/api/x HTTP/1.1\nHost: api.local\n\n",
    "asterisk-options": "OPTIONS * HTTP/1.1\nHost: api.local\n\n",
    # issue 9, class 1: percent-encoding and dot-segments
    "pct-admin": "GET /api/%61dmin HTTP/1.1\nHost: api.local\n\n",
    "pct-dotdot": "GET /api/%2e%2e/api/admin HTTP/1.1\nHost: api.local\n\n",
    "pct-slash": "GET /api%2Fadmin HTTP/1.1\nHost: api.local\n\n",
    "pct-backslash-nul": "GET /api/x%5C..%5Cadmin%00 HTTP/1.1\nHost: api.local\n\n",
    "pct-invalid": "GET /api/%zz/%4 HTTP/1.1\nHost: api.local\n\n",
    "pct-last-char": "GET /api/secre%74 HTTP/1.1\nHost: api.local\n\n",
    "dot-segments": "GET /api/./x/../admin//keys?q=/api/admin#frag HTTP/1.1\nHost: api.local\n\n",
    # class 2: whitespace and trailing characters
    "host-trailing-space": "GET /api/x HTTP/1.1\nHost: admin.local \n\n",
    "host-trailing-dot": "GET /api/x HTTP/1.1\nHost: admin.local.\n\n",
    "header-trailing-tab": "GET /api/x HTTP/1.1\nHost: api.local\nX-Debug: 1\t\n\n",
    "secret-trailing-slash": "GET /api/secret/ HTTP/1.1\nHost: api.local\n\n",
    "secret-trailing-dot": "GET /api/secret/. HTTP/1.1\nHost: api.local\n\n",
    # class 4: framing
    "bare-cr-in-header": "POST /api/x HTTP/1.1\nHost: api.local\nFoo:\rXContent-Length: 49\n"
    "Content-Length: 0\n\n",
    "head-ends-cr-any": "GET /api/x HTTP/1.1\nHost: api.local\n\rXGET /api/admin/keys HTTP/1.1\nHost: api.local\n\n",
    "cl-and-te": "POST /api/x HTTP/1.1\nHost: api.local\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\n\n",
    "duplicate-cl": "POST /api/x HTTP/1.1\nHost: api.local\nContent-Length: 1\nContent-Length: 2\n\nab",
    "te-chunked-identity": "POST /api/x HTTP/1.1\nHost: api.local\nTransfer-Encoding: chunked, identity\n\n0\n\n",
    "obs-fold": "GET /api/x HTTP/1.1\nHost: api.local\nX-Debug: 0\n 1\n\n",
    "space-before-colon": "GET /api/x HTTP/1.1\nHost : admin.local\n\n",
    "ctl-in-target": "GET /api/\x01admin HTTP/1.1\nHost: api.local\n\n",
    "malformed-chunk": "POST /api/x HTTP/1.1\nHost: api.local\nTransfer-Encoding: chunked\n\nzz\nhello\n0\n\n",
}
BARE_LF = {
    "bare-lf": "GET /api/x HTTP/1.1\nHost: api.local\n\n",
}

for name, text in HTTP.items():
    write("http_request", name, crlf(text))
for name, text in BARE_LF.items():
    write("http_request", name, text)


# ------------------------------------------------------------- canonical
# One byte of options (bits 0-1: encoded_slash reject/keep/decode, bit 2:
# invalid_escape keep), then METHOD\nTARGET[\nHOST] (fuzz_canonical.cpp).
CANONICAL = {
    "origin": (0, "GET\n/api/users?x=1#f\napi.local"),
    "pct-unreserved": (0, "GET\n/api/%61dmin/%7Euser\napi.local"),
    "dot-segments": (0, "GET\n/api/./x/../..//admin/.\napi.local:8080"),
    "encoded-slash-keep": (1, "GET\n/api%2fadmin%5Cx\napi.local"),
    "encoded-slash-decode": (2, "GET\n/api%2F..%2Fadmin\napi.local"),
    "invalid-escape-keep": (4, "GET\n/api/%zz%00%4\napi.local"),
    "non-ascii": (0, "GET\n/caf\xc3\xa9/{x}|^\napi.local"),
    "path-parameter": (0, "GET\n/api/..;x/admin\napi.local"),
    "absolute": (0, "GET\nHTTP://Admin.Local:80/api/x?y\nadmin.local"),
    "absolute-disagrees": (0, "GET\nhttp://admin.local/api\napi.local"),
    "connect": (0, "CONNECT\nAdmin.Local.:443\n"),
    "asterisk": (0, "OPTIONS\n*\napi.local"),
    "ipv6-host": (0, "GET\n/\n[fd00::3]:8080"),
    "host-trailing-dot": (0, "GET\n/api/secret\nADMIN.local."),
    "target-only": (0, "/api/secret/."),
}
for name, (opts, text) in CANONICAL.items():
    write("canonical", name, bytes([opts]) + text.encode("latin-1"))

# ------------------------------------------------------------------- TLS
def client_hello(sni=None, alpn=None, max_version=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version:
        ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def fragment(hello, size):
    """The same handshake message split over TLS records of `size` bytes."""
    ctype, version, length = struct.unpack("!BHH", hello[:5])
    body = hello[5:5 + length]
    out = b""
    for i in range(0, len(body), size):
        part = body[i:i + size]
        out += struct.pack("!BHH", ctype, version, len(part)) + part
    return out + hello[5 + length:]


write("tls_client_hello", "sni", client_hello("api.local"), keep=True)
write("tls_client_hello", "sni-wildcard", client_hello("a.api.local", alpn=["h2", "http/1.1"]), keep=True)
write("tls_client_hello", "sni-denied", client_hello("internal.api.local"), keep=True)
write("tls_client_hello", "no-sni", client_hello(None), keep=True)
write("tls_client_hello", "tls12", client_hello("api.local", max_version=ssl.TLSVersion.TLSv1_2), keep=True)
write("tls_client_hello", "fragmented", fragment(client_hello("x.api.local"), 64), keep=True)
# Bodies of a server_name extension (RFC 6066 3): the target also wraps
# each input into a ClientHello as that body.


def server_name_list(*entries):
    body = b"".join(struct.pack("!BH", t, len(n)) + n for t, n in entries)
    return struct.pack("!H", len(body)) + body


write("tls_client_hello", "ext-host-name", server_name_list((0, b"api.local")))
write("tls_client_hello", "ext-other-type-first", server_name_list((1, b"xx"), (0, b"a.api.local")))
write("tls_client_hello", "ext-short-list", struct.pack("!HBH", 40, 0, 9) + b"api.local")
write("tls_client_hello", "not-tls", crlf("GET / HTTP/1.1\nHost: api.local\n\n"))

# ---------------------------------------------------------------- config
# The shipped examples, and small configs that reach each part of the
# loader (a config the loader refuses is as useful a seed as one it takes).
repo = ROOT.parent
for example in sorted((repo / "config" / "examples").glob("*.yaml")):
    write("config", "example-" + example.stem, example.read_bytes())
CONFIG = {
    "minimal": "proxy: {listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]}\n",
    "forward-ipv6": "proxy:\n  listeners:\n    - {name: f, listen: '[::1]:16001', forward: '[::1]:5201'}\n"
    "  datapath: splice\n  upstream_source: node\n  timeouts: {connect: 250ms, header: 2s, idle: 1m, drain: 0s}\n"
    "  limits: {max_connections: 10, max_header_bytes: 1024}\n"
    "steering: {intercept_ports: [80, 443], on_proxy_down: fail_open, attach: tc}\n"
    "admin: {listen: '[::1]:15000'}\nlog: {level: debug, access: /tmp/access.log}\n",
    "dual-stack-pods": "proxy: {listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]}\n"
    "pods:\n  - {name: a, ip: [10.0.0.1, 'fd00::1'], labels: {app: a}, dev: veth-a}\n"
    "  - {name: b, ip: 'fd00::2'}\n"
    "policy:\n  default: allow\n  rules:\n"
    "    - {name: r, from: {cidr: 'fd00::/64'}, to: {labels: {app: a}, ports: [8080]}, action: deny}\n",
    "http-and-tls-rules": "proxy: {listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]}\n"
    "pods: [{name: web, ip: 10.200.0.2}, {name: api, ip: 10.200.0.3}]\n"
    "policy:\n  rules:\n"
    "    - name: h\n      from: {pod: web}\n      to: {pod: api, ports: [80]}\n      action: allow\n"
    "      http:\n        - {method: GET, path: /api/, host: 'API.local:80'}\n"
    "        - {path_regex: '^/(a|b)+$', headers: {X-Team: blue}}\n        - {path_exact: /}\n"
    "    - name: t\n      from: {pod: web}\n      to: {pod: api, ports: [443]}\n      action: deny\n"
    "      tls: {sni: ['*.Example.COM', admin.local.]}\n",
    "errors": "proxy: {listeners: [{name: p, listen: 127.0.0.1:99999}], datapath: magic}\n"
    "pods: [{name: a, ip: 10.0.0.5/24}, {name: a, ip: 300.1.1.1}]\n"
    "policy:\n  default: maybe\n  rules:\n    - {name: x, from: {cidr: 10.0.0.5/24}, to: {pod: nope}, action: drop,"
    " http: [{path_regex: '('}], tls: {sni: []}}\n",
    "http-and-fairness": "proxy:\n  listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]\n"
    "  timeouts: {header: 1s, keepalive: 15s, refuse: 5s}\n"
    "  limits: {max_connections: 100, max_connections_per_source: 200, max_header_bytes: 8192}\n"
    "  http: {encoded_slash: decode, invalid_escape: keep, upgrade_protocols: [WebSocket, h2c, 'bad token']}\n",
    "http2-and-grpc": "proxy:\n  listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]\n"
    "  http2: {max_concurrent_streams: 10, stream_window: 65536, connection_window: 131072, max_continuations: 2,"
    " reset_burst: 5, reset_rate: 1, control_frame_burst: 20, control_frame_rate: 3}\n"
    "policy:\n  rules:\n    - {name: g, from: {cidr: 10.0.0.0/8}, to: {cidr: 10.0.0.0/8, ports: [9090]}, action: allow,"
    " http: [{path: /x}], grpc: [shop.Cart/Get, shop.v1.Catalog/*, /bad, 'a..b/c']}\n",
    "not-yaml": "proxy: [unclosed\n  - {a: b\n\t: : :\n",
}
for name, text in CONFIG.items():
    write("config", name, text)

"""Admin API helpers for the integration tests (stdlib only): one GET over a
plain socket (so 503s and headers are seen as they are), a strict parser for
the Prometheus text format and waits on /readyz."""
import json
import re
import socket
import time

METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*"'
SAMPLE_RE = re.compile(rf"^({METRIC_NAME})(\{{(?:{LABEL})(?:,{LABEL})*\}})? (-?[0-9.eE+]+|NaN|[+-]Inf)$")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\["\\n])*)"')


def http_get(port, path, method="GET", host="127.0.0.1", timeout=10, host_header="admin"):
    """One request with Connection: close; returns (status, headers dict
    lower-cased, body bytes)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def get_json(port, path):
    status, headers, body = http_get(port, path)
    assert status == 200, (path, status, body)
    assert headers["content-type"] == "application/json", headers
    return json.loads(body)


def parse_metrics(text):
    """Parses Prometheus text format 0.0.4 strictly: every sample belongs to a
    family declared by HELP and TYPE lines before it, names and labels are
    well-formed, no series repeats. Returns {(name, frozenset(labels)): value}."""
    declared = {}
    helped = set()
    samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helped, f"HELP twice for {name}"
            helped.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in declared, f"TYPE twice for {name}"
            declared[name] = kind
            continue
        assert not line.startswith("#"), f"stray comment: {line!r}"
        m = SAMPLE_RE.match(line)
        assert m, f"not a valid sample line: {line!r}"
        name = m.group(1)
        assert name in declared and name in helped, f"{name} has no HELP/TYPE before it"
        labels = frozenset(LABEL_RE.findall(m.group(2) or ""))
        key = (name, labels)
        assert key not in samples, f"series repeated: {line!r}"
        samples[key] = float(m.group(3))
        if declared[name] == "counter":
            assert samples[key] >= 0, line
    return samples


def scrape(port):
    status, headers, body = http_get(port, "/metrics")
    assert status == 200, status
    assert headers["content-type"].startswith("text/plain; version=0.0.4"), headers
    assert int(headers["content-length"]) == len(body)
    return parse_metrics(body.decode())


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_ready(port, proc=None, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"shunt exited with {proc.returncode} before it was ready")
        try:
            if http_get(port, "/readyz", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"/readyz on {port} not 200 after {timeout}s")


def admin_port_of(config_text):
    return int(re.search(r"admin: \{listen: [0-9.]+:([0-9]+)", config_text).group(1))

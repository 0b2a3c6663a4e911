"""Process management and the systems under test for bench/run.

Every process the benchmark starts goes through `Procs`, which kills whole
process groups on exit, error or signal, so an aborted run leaves nothing
listening. Systems are started and stopped per measurement block; the
backends (iperf3, echo server, HTTP origin) live for the whole run.
"""

import os
import shutil
import signal
import string
import subprocess
import sys
import time
import urllib.request

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
CONFIG_DIR = os.path.join(BENCH_DIR, "configs")


class BenchError(Exception):
    """A system or tool could not be run; the message becomes the n/a reason."""


class Procs:
    """Starts processes in their own process group and kills them all on exit."""

    def __init__(self, rundir):
        self.rundir = rundir
        self.live = []  # (name, Popen)
        self.sids = set()  # session ids of everything started (for CPU accounting)

    def start(self, name, argv, netns=None):
        if netns:
            argv = ["ip", "netns", "exec", netns] + argv
        log = open(os.path.join(self.rundir, name + ".log"), "wb")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.sids.add(p.pid)  # start_new_session: the session id is the pid
        p.bench_name = name
        self.live.append((name, p))
        return p

    def log_tail(self, name, lines=5):
        try:
            with open(os.path.join(self.rundir, name + ".log"), errors="replace") as f:
                return " | ".join(l.strip() for l in f.readlines()[-lines:] if l.strip())
        except OSError:
            return ""

    def stop(self, p, grace=3.0):
        """SIGTERM the process group, SIGKILL it if it lingers."""
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        self.live = [(n, q) for n, q in self.live if q is not p]

    def stop_all(self):
        for _, p in list(reversed(self.live)):
            self.stop(p, grace=2.0)


def _tcp_sockets(pid):
    """(local port, state hex) of every TCP socket, both families, in the
    network namespace of `pid`, from /proc/PID/net/tcp{,6}."""
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    yield int(fields[1].rsplit(":", 1)[1], 16), fields[3]
        except (OSError, StopIteration):
            pass


def listening_ports(pid):
    """TCP ports in LISTEN state in the network namespace of `pid`.

    Read from /proc/PID/net/tcp rather than by connecting, so that probing a
    proxy never opens a stray connection to a backend such as iperf3 (which
    would take it for a broken test)."""
    return {port for port, state in _tcp_sockets(pid) if state == "0A"}  # TCP_LISTEN


def busy_on_port(pid, port):
    """Connections on local `port` that are still open (ESTABLISHED or
    CLOSE_WAIT) in the netns of `pid`."""
    return sum(1 for p, state in _tcp_sockets(pid) if p == port and state in ("01", "08"))


def wait_idle(pid, port, timeout=5.0):
    """Waits until the server on `port` has no open connection left.

    iperf3's server runs one test at a time and refuses the next ("server is
    busy") until it has seen the previous test's connections close; through a
    proxy that close arrives a little later than directly. Waiting here keeps
    back-to-back runs from failing on that; a proxy that never propagates
    the close still fails the next run, as it should."""
    deadline = time.monotonic() + timeout
    while busy_on_port(pid, port) and time.monotonic() < deadline:
        time.sleep(0.05)


def wait_listening(procs, p, ports, timeout=10.0):
    """Waits until process `p` (or its netns) listens on every port in `ports`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise BenchError(f"{p.bench_name} exited with {p.returncode}: {procs.log_tail(p.bench_name)}")
        if set(ports) <= listening_ports(p.pid):
            return
        time.sleep(0.05)
    raise BenchError(f"{p.bench_name} not listening on {sorted(ports)} after {timeout:.0f}s: "
                     f"{procs.log_tail(p.bench_name)}")


def render(template, dest, **values):
    with open(os.path.join(CONFIG_DIR, template)) as f:
        text = string.Template(f.read()).substitute(**values)
    with open(dest, "w") as f:
        f.write(text)
    return dest


def http_status(url, timeout=3.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception as e:  # connection reset, timeout: report as text
        return f"{type(e).__name__}: {e}"


# --------------------------------------------------------------- topology

class Ports:
    """Port plan. Backends sit at base+200.., system k's listeners at base+10k.."""

    def __init__(self, base):
        self.base = base
        self.iperf = base + 201
        self.echo = base + 202
        self.http = base + 203

    def listeners(self, k):
        """(bulk, echo, http) listen ports of the k-th system."""
        b = self.base + 10 * (k + 1)
        return b, b + 1, b + 2

    def admin(self, k):
        return self.base + 300 + k


class Endpoints:
    """Where clients run, where servers run and which address each side uses."""

    def __init__(self, server_ip="127.0.0.1", proxy_ip="127.0.0.1", client_ns=None, server_ns=None,
                 proxy_ns=None):
        self.server_ip = server_ip   # backends bind here
        self.proxy_ip = proxy_ip     # proxies listen here
        self.client_ns = client_ns   # netns clients run in (None: host)
        self.server_ns = server_ns   # netns backends run in (None: host)
        self.proxy_ns = proxy_ns     # netns proxies run in (None: host)


# ---------------------------------------------------------------- pods

POD_CLIENT, POD_SERVER, POD_PROXY = "bench-cli", "bench-srv", "bench-px"
POD_NET = "10.231.0"


class PodTopology:
    """Three lab pods made with `shunt pod add`: clients in one, backends in
    another, and every proxy (shunt included, with a static listener) in a
    third. Lab pods have no gateway address on the host side, so a proxy pod
    is what gives each proxy an address the client pod can reach, and the
    same one for all of them: client pod -> proxy pod -> server pod, while
    direct is client pod -> server pod."""

    PODS = ((POD_CLIENT, 2), (POD_SERVER, 3), (POD_PROXY, 4))

    def __init__(self, shunt_bin):
        self.shunt_bin, self.made = shunt_bin, []

    def setup(self):
        if not self.shunt_bin:
            raise BenchError("pods topology needs the shunt binary (shunt pod add)")
        for name, host in self.PODS:
            subprocess.run([self.shunt_bin, "pod", "del", name], capture_output=True)  # leftovers
            r = subprocess.run([self.shunt_bin, "pod", "add", name, "--ip", f"{POD_NET}.{host}/24"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise BenchError(f"shunt pod add {name} failed: {(r.stderr or r.stdout).strip()[-200:]}")
            self.made.append(name)
            print(f"  pod {name}: {(r.stdout or r.stderr).strip().splitlines()[-1:]}", file=sys.stderr)
            # The connection-rate workload leaves tens of thousands of
            # TIME_WAIT sockets, all towards one server address and port from
            # the proxy pod. Loopback may reuse them (tcp_tw_reuse=2 means
            # "loopback only"); in the pods' own namespaces allow the same,
            # or whichever system runs late finds the port space full.
            subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"],
                           capture_output=True)
        # Ids for the client and server pods' netns inside the proxy pod's:
        # on a node, shunt runs in the host netns, where every pod's netns
        # has one (given when its veth was made), and the short-circuit
        # finds a pod's sockets through it (bpf_sk_lookup_tcp takes an
        # nsid): the client's for the upload direction, a local server's for
        # the responses. Here shunt runs in a pod of its own, which has ids
        # only for the host, so the bench gives it them; without them the
        # sockmap+sk_msg column captures nothing (docs/datapath.md).
        for pod in (POD_CLIENT, POD_SERVER):
            r = subprocess.run(["ip", "netns", "exec", POD_PROXY, "ip", "netns", "set", pod, "auto"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise BenchError(f"netns id for {pod} in {POD_PROXY}: {(r.stderr or r.stdout).strip()[-200:]}")
        return Endpoints(server_ip=f"{POD_NET}.3", proxy_ip=f"{POD_NET}.4",
                         client_ns=POD_CLIENT, server_ns=POD_SERVER, proxy_ns=POD_PROXY)

    def teardown(self):
        for name in self.made:
            subprocess.run([self.shunt_bin, "pod", "del", name], capture_output=True)
        self.made = []


# ---------------------------------------------------------------- systems

class System:
    """A way from client to backend. `targets` maps workload kind -> (ip, port)."""

    label = ""
    kinds = ("bulk", "echo")  # which backends it fronts

    def __init__(self, name, index, ports, ep):
        self.name, self.index, self.ports, self.ep = name, index, ports, ep
        self.proc = None

    def targets(self):
        bulk, echo, http = self.ports.listeners(self.index)
        return {"bulk": (self.ep.proxy_ip, bulk), "echo": (self.ep.proxy_ip, echo),
                "http": (self.ep.proxy_ip, http)}

    def listen_ports(self):
        t = self.targets()
        return [t[k][1] for k in self.kinds]

    def start(self, procs, rundir):
        raise NotImplementedError

    def stop(self, procs):
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def check(self):
        """Extra verification after start (e.g. an HTTP rule really denies)."""

    def alive(self):
        return self.proc is None or self.proc.poll() is None


class Direct(System):
    """No proxy: the client talks to the backend itself."""

    label = "direct"

    def __init__(self, name, index, ports, ep, kinds):
        super().__init__(name, index, ports, ep)
        self.kinds = kinds

    def targets(self):
        ip = self.ep.server_ip
        return {"bulk": (ip, self.ports.iperf), "echo": (ip, self.ports.echo), "http": (ip, self.ports.http)}

    def start(self, procs, rundir):
        pass


def _values(system):
    bulk, echo, http = system.ports.listeners(system.index)
    return dict(listen_ip=system.ep.proxy_ip, server_ip=system.ep.server_ip,
                bulk_port=bulk, echo_port=echo, http_port=http,
                iperf_port=system.ports.iperf, echo_backend=system.ports.echo,
                http_backend=system.ports.http, admin_port=system.ports.admin(system.index))


class Shunt(System):
    """`shunt run` with static listeners and the given data path."""

    def __init__(self, name, index, ports, ep, shunt_bin, datapath, template="shunt-tcp.yaml"):
        super().__init__(name, index, ports, ep)
        # "sockmap-msg": sockmap with the sk_msg endpoint short-circuit on.
        self.shortcut = datapath == "sockmap-msg"
        if self.shortcut:
            datapath = "sockmap"
        self.shunt_bin, self.datapath, self.template = shunt_bin, datapath, template
        self.label = "shunt sockmap+sk_msg" if self.shortcut else f"shunt {datapath}"

    def start(self, procs, rundir):
        if not self.shunt_bin:
            raise BenchError("shunt binary not found (set SHUNT_BIN or --shunt)")
        cfg = render(self.template, os.path.join(rundir, f"{self.name}.yaml"),
                     datapath=self.datapath, endpoint_shortcut="true" if self.shortcut else "false",
                     **_values(self))
        self.proc = procs.start(self.name, [self.shunt_bin, "run", "-c", cfg], netns=self.ep.proxy_ns)
        wait_listening(procs, self.proc, self.listen_ports())


    # Kernel-path counters read around each workload (bench/run), so a
    # figure says how its bytes moved: by the endpoint short-circuit, held
    # and forwarded by shunt, or (the rest) by the sk_skb verdict.
    COUNTERS = {"sk_msg_gb": "shunt_shortcut_bytes_total", "held_gb": "shunt_sockmap_held_bytes_total"}

    def counters(self):
        if self.proc is None or self.datapath != "sockmap":
            return {}
        url = f"http://127.0.0.1:{self.ports.admin(self.index)}/metrics"
        argv = ["curl", "-s", "--max-time", "5", url]
        if self.ep.proxy_ns:
            argv = ["ip", "netns", "exec", self.ep.proxy_ns] + argv
        r = subprocess.run(argv, capture_output=True, text=True)
        values = {}
        for line in r.stdout.splitlines():
            name, _, value = line.partition(" ")
            # Summed over label sets (shunt_shortcut_bytes_total has one per
            # direction).
            name = name.partition("{")[0]
            for key, metric in self.COUNTERS.items():
                if name == metric:
                    values[key] = values.get(key, 0.0) + float(value) / 1e9
        return values


class ShuntHttp(Shunt):
    """shunt with a per-request HTTP rule in front of the nginx origin."""

    kinds = ("http",)

    def __init__(self, name, index, ports, ep, shunt_bin):
        super().__init__(name, index, ports, ep, shunt_bin, "sockmap", "shunt-http.yaml")
        self.label = "shunt http rule"

    def start(self, procs, rundir):
        self.procs = procs
        super().start(procs, rundir)

    def check(self):
        try:
            check_http_rule(self)
        except BenchError as e:
            # shunt's own log usually says why (e.g. inspection not built yet).
            raise BenchError(f"{e}; shunt log: {self.procs.log_tail(self.name, 2)}")


class Socat(System):
    """Stand-in proxy for validating the harness before shunt runs (--stand-in socat)."""

    def __init__(self, name, index, ports, ep, label):
        super().__init__(name, index, ports, ep)
        self.label = label + " [socat stand-in]"
        self.procs_started = []

    def start(self, procs, rundir):
        t = self.targets()
        backends = {"bulk": self.ports.iperf, "echo": self.ports.echo}
        for kind in self.kinds:
            ip, port = t[kind]
            p = procs.start(f"{self.name}-{kind}", [
                "socat", f"TCP-LISTEN:{port},bind={ip},reuseaddr,fork,backlog=4096",
                f"TCP:{self.ep.server_ip}:{backends[kind]},nodelay"], netns=self.ep.proxy_ns)
            self.procs_started.append(p)
            wait_listening(procs, p, [port])

    def stop(self, procs):
        for p in self.procs_started:
            procs.stop(p)
        self.procs_started = []

    def alive(self):
        return all(p.poll() is None for p in self.procs_started)


class Haproxy(System):
    label = "HAProxy"

    def __init__(self, name, index, ports, ep, template="haproxy-tcp.cfg", kinds=("bulk", "echo")):
        super().__init__(name, index, ports, ep)
        self.template, self.kinds = template, kinds

    def start(self, procs, rundir):
        cfg = render(self.template, os.path.join(rundir, f"{self.name}.cfg"), **_values(self))
        # -db: stay in the foreground so the process group is ours to kill.
        self.proc = procs.start(self.name, ["haproxy", "-db", "-f", cfg], netns=self.ep.proxy_ns)
        wait_listening(procs, self.proc, self.listen_ports())


class HaproxyHttp(Haproxy):
    label = "HAProxy http ACL"

    def __init__(self, name, index, ports, ep):
        super().__init__(name, index, ports, ep, "haproxy-http.cfg", ("http",))

    def check(self):
        check_http_rule(self)


class Nginx(System):
    """nginx `stream` proxy, or (as origin) the HTTP backend."""

    label = "nginx stream"

    def __init__(self, name, index, ports, ep, template="nginx-stream.conf", netns=None):
        super().__init__(name, index, ports, ep)
        self.template, self.netns = template, netns or ep.proxy_ns

    def start(self, procs, rundir):
        prefix = os.path.join(rundir, self.name)
        os.makedirs(prefix, exist_ok=True)
        cfg = render(self.template, os.path.join(prefix, "nginx.conf"), prefix=prefix, **_values(self))
        self.proc = procs.start(self.name, ["nginx", "-p", prefix, "-c", cfg, "-e", os.path.join(prefix, "error.log")],
                                netns=self.netns)
        wait_listening(procs, self.proc, self.listen_ports())


class NginxOrigin(Nginx):
    """The HTTP origin every system of the HTTP workload forwards to."""

    def __init__(self, ports, ep):
        super().__init__("origin", 0, ports, ep, "nginx-origin.conf", netns=ep.server_ns)

    def listen_ports(self):
        return [self.ports.http]


def check_http_rule(system):
    """The HTTP workload only means something if the rule is really applied:
    an allowed path must give 200 and a path outside the rule 403."""
    ip, port = system.targets()["http"]
    ok = http_status(f"http://{ip}:{port}/api/items")
    denied = http_status(f"http://{ip}:{port}/private")
    if ok != 200 or denied != 403:
        raise BenchError(f"per-request rule not effective: GET /api/items -> {ok}, GET /private -> {denied}")


def find_shunt(explicit):
    """--shunt (binary or build dir), then $SHUNT_BIN, then the usual build dirs."""
    root = os.path.dirname(BENCH_DIR)
    candidates = []
    if explicit:
        candidates += [explicit, os.path.join(explicit, "proxy", "shunt")]
    if os.environ.get("SHUNT_BIN"):
        candidates.append(os.environ["SHUNT_BIN"])
    candidates += [os.path.join(root, "build", "proxy", "shunt")]
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.abspath(c)
    return None


def find_loadgen(shunt_bin, rundir, tool="shunt-loadgen", source="loadgen.cpp"):
    """A load tool (shunt-loadgen by default): from a build dir next to
    shunt, else compiled here from its one source file in bench/tools (they
    have no dependencies), so the bench works even when the project does not
    build at this moment."""
    dirs = [os.environ.get("SHUNT_BUILD_DIR")]
    if shunt_bin:
        dirs.append(os.path.dirname(os.path.dirname(shunt_bin)))
    root = os.path.dirname(BENCH_DIR)
    dirs += [os.path.join(root, "build"), os.path.join(root, "build-bench")]
    src = os.path.join(BENCH_DIR, "tools", source)
    for d in filter(None, dirs):
        path = os.path.join(d, "bench", "tools", tool)
        if os.access(path, os.X_OK) and os.path.getmtime(path) >= os.path.getmtime(src):
            return path
    cxx = shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise BenchError(f"{tool} not built and no C++ compiler found")
    out = os.path.join(rundir, tool)
    subprocess.run([cxx, "-std=c++20", "-O2", "-pthread", src, "-o", out], check=True)
    return out

"""The workloads of bench/run and how each one is measured.

A measurement returns {figure: value}; one measurement can give several
figures (a bulk run gives throughput and CPU per GB, a ping-pong run p50 and
p99). FIGURES describes every figure the report knows.
"""

import json
import os
import re
import subprocess
import threading
import time

from harness import BenchError

HZ = os.sysconf("SC_CLK_TCK")

# figure -> (title, unit, "higher"|"lower" is better, backend kind)
FIGURES = {
    "bulk_1": ("Bulk throughput, 1 stream", "Gbit/s", "higher", "bulk"),
    "bulk_4": ("Bulk throughput, 4 streams", "Gbit/s", "higher", "bulk"),
    "cpu_gb_1": ("CPU per GB, 1 stream (unpaced)", "CPU-s/GB", "lower", "bulk"),
    "cpu_gb_4": ("CPU per GB, 4 streams (unpaced)", "CPU-s/GB", "lower", "bulk"),
    "cpu_gb_paced": ("CPU per GB at a fixed rate", "CPU-s/GB", "lower", "bulk"),
    "rr_p50": ("Request/response latency p50", "µs", "lower", "echo"),
    "rr_p99": ("Request/response latency p99", "µs", "lower", "echo"),
    "conn_rate": ("New connections per second", "conn/s", "higher", "echo"),
    "http_rps": ("HTTP keep-alive, per-request rule", "req/s", "higher", "http"),
    # The many-connection workload (issue 12): keep-alive connections with
    # small request/response pairs at a fixed aggregate rate.
    "many_rate": ("Achieved rate", "req/s", "higher", "echo"),
    "many_cpu_req": ("CPU per request", "CPU-µs/req", "lower", "echo"),
    "many_cpu_added": ("CPU per request added over direct", "CPU-µs/req", "lower", "echo"),
    "many_p50": ("Latency p50, from the scheduled send", "µs", "lower", "echo"),
    "many_p99": ("Latency p99, from the scheduled send", "µs", "lower", "echo"),
}

# A many-connection round below this share of the target rate did not keep
# up: its figures are shown, marked, and not taken for the target's.
RATE_KEPT = 0.95


class CpuMeter:
    """Whole-system CPU time used while a workload runs.

    Busy time is derived from idle time: busy = CPUs x wall - (idle +
    iowait). On this tickless kernel /proc/stat's idle/iowait come from the
    precise NO_HZ idle clock, while user/system/softirq are tick samples that
    miss short busy bursts between idle periods (a paced iperf3 run showed 6
    busy ticks where iperf3 alone reported ~70). The tick-sampled sum
    (user+nice+system+irq+softirq) is kept beside it for reference.

    Steal is not subtracted: the NO_HZ idle clock runs across a whole idle
    period, time the hypervisor stole from the idle vCPU included, and that
    same time is added to steal when the CPU leaves idle. Subtracting both
    counted it twice, which is how rounds read an impossible 0 when the
    host was busy. Steal is kept beside the figure (`steal_s`); a round with
    much of it is one the host slowed.

    The machine is shared, so the CPU time of processes that are not ours
    (other users' compilers, tests) is measured from /proc/PID/stat and
    subtracted. Kernel threads are never subtracted: softirq and sockmap's
    backlog worker run there on our behalf.
    """

    def __init__(self, our_sids):
        self.our_sids = our_sids  # session ids of the processes bench/run started
        self.ncpu = 0
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu") and line[3].isdigit():
                    self.ncpu += 1

    @staticmethod
    def _system():
        with open("/proc/stat") as f:
            v = list(map(int, f.readline().split()[1:9]))
        user, nice, system, idle, iowait, irq, softirq, steal = v
        return user + nice + system + irq + softirq, idle + iowait, steal

    def _processes(self):
        """pid -> own + reaped children's CPU ticks, for processes not ours.
        A foreign job that ends mid-run is still counted: its time moves to
        its parent's cutime/cstime when reaped (init included)."""
        me = os.getpid()
        out = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == me:
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # fields[0] is field 3 (state): session = field 6, flags = 9, times = 14..17
            if int(fields[6]) & 0x00200000 or int(fields[3]) in self.our_sids:  # PF_KTHREAD / ours
                continue
            out[pid] = sum(int(x) for x in fields[11:15])
        return out

    def snapshot(self):
        ticks, idle, steal = self._system()
        return time.monotonic(), ticks, idle, steal, self._processes()

    def since(self, before):
        t0, ticks0, idle0, steal0, procs0 = before
        t1, ticks1, idle1, steal1, procs1 = self.snapshot()
        busy = self.ncpu * (t1 - t0) - (idle1 - idle0) / HZ
        # Sums, not per-pid differences: when a foreign job exits, its whole
        # lifetime moves into its parent's cutime/cstime, which a per-pid
        # difference would count again in full.
        foreign = max(0, sum(procs1.values()) - sum(procs0.values())) / HZ
        return {"busy_s": max(0.0, busy - foreign), "busy_raw_s": max(0.0, busy),
                "ticks_s": (ticks1 - ticks0) / HZ, "foreign_s": foreign, "steal_s": (steal1 - steal0) / HZ}


def background_load(meter, seconds=1.0):
    """Busy CPUs (in cores, others' processes included) while the benchmark
    itself is idle: shows how noisy the shared machine was."""
    before = meter.snapshot()
    time.sleep(seconds)
    return meter.since(before)["busy_raw_s"] / seconds


def run_tool(argv, timeout, netns=None, ok_codes=(0,)):
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{argv[0] if not netns else argv[4]} timed out after {timeout}s")
    return r


class Workloads:
    """Runs the measurements against one system's targets."""

    def __init__(self, profile, loadgen, meter, client_ns=None, before_iperf=None):
        self.p, self.loadgen, self.meter, self.ns = profile, loadgen, meter, client_ns
        self.before_iperf = before_iperf or (lambda: None)

    def _iperf(self, target, streams, seconds, pace=None):
        ip, port = target
        argv = ["iperf3", "-c", ip, "-p", str(port), "-t", str(seconds), "-P", str(streams), "-J"]
        if pace:
            argv += ["-b", pace]  # per stream
        self.before_iperf()
        before = self.meter.snapshot()
        r = run_tool(argv, timeout=seconds + 30, netns=self.ns)
        cpu = self.meter.since(before)
        try:
            j = json.loads(r.stdout)
        except ValueError:
            raise BenchError(f"iperf3 exited {r.returncode}: {(r.stderr or r.stdout).strip()[-200:]}")
        if j.get("error"):
            raise BenchError(f"iperf3: {j['error']}")
        received = j["end"]["sum_received"]
        gbytes = received["bytes"] / 1e9
        if gbytes <= 0:
            raise BenchError("iperf3 moved no data")
        per_gb = {k: v / gbytes for k, v in cpu.items() if k not in ("foreign_s", "steal_s")}
        return received["bits_per_second"] / 1e9, per_gb, cpu["foreign_s"]

    def bulk(self, targets, streams):
        gbit, cpu, foreign = self._iperf(targets["bulk"], streams, self.p["bulk_s"])
        return {f"bulk_{streams}": gbit, f"cpu_gb_{streams}": cpu["busy_s"],
                f"cpu_gb_{streams}_unadjusted": cpu["busy_raw_s"],
                f"cpu_gb_{streams}_ticks": cpu["ticks_s"], f"foreign_cpu_s_{streams}": foreign}

    def paced(self, targets):
        gbit, cpu, foreign = self._iperf(targets["bulk"], 1, self.p["paced_s"], pace=self.p["pace"])
        # The rate actually reached is kept beside the figure: CPU per GB is
        # only comparable between systems that all kept up with the pace.
        return {"cpu_gb_paced": cpu["busy_s"], "paced_gbit": gbit,
                "cpu_gb_paced_unadjusted": cpu["busy_raw_s"], "cpu_gb_paced_ticks": cpu["ticks_s"],
                "foreign_cpu_s_paced": foreign}

    def pingpong(self, targets):
        ip, port = targets["echo"]
        r = run_tool([self.loadgen, "pingpong", f"{ip}:{port}", "--size", str(self.p["rr_size"]),
                      "--count", str(self.p["rr_count"]), "--warmup", str(self.p["rr_warmup"])],
                     timeout=120, netns=self.ns)
        if r.returncode != 0:
            raise BenchError(r.stderr.strip().removeprefix("shunt-loadgen: ")[-200:])
        j = json.loads(r.stdout)
        return {"rr_p50": j["p50_us"], "rr_p99": j["p99_us"]}

    def connrate(self, targets):
        ip, port = targets["echo"]
        r = run_tool([self.loadgen, "connrate", f"{ip}:{port}", "--parallel", str(self.p["conn_parallel"]),
                      "--duration", str(self.p["conn_s"])], timeout=self.p["conn_s"] + 30, netns=self.ns)
        try:
            j = json.loads(r.stdout)
        except ValueError:
            raise BenchError(f"connrate exited {r.returncode}: {r.stderr.strip()[-200:]}")
        # A few failed connections under churn are reported, many are a failure.
        if j["errors"] > max(10, j["completed"] // 100):
            raise BenchError(f"connrate: {j['errors']} of {j['completed'] + j['errors']} connections failed")
        return {"conn_rate": j["conns_per_s"], "conn_errors": j["errors"]}

    def http(self, targets):
        ip, port = targets["http"]
        r = run_tool(["wrk", "-t", str(self.p["wrk_threads"]), "-c", str(self.p["wrk_conns"]),
                      "-d", f"{self.p['http_s']}s", "--latency", f"http://{ip}:{port}/api/items"],
                     timeout=self.p["http_s"] + 30, netns=self.ns)
        out = r.stdout
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if r.returncode != 0 or not m:
            raise BenchError(f"wrk exited {r.returncode}: {(r.stderr or out).strip()[-200:]}")
        total = re.search(r"(\d+) requests in", out)
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if bad and total and int(bad.group(1)) > int(total.group(1)) // 100:
            raise BenchError(f"wrk: {bad.group(1)} of {total.group(1)} responses were not 2xx/3xx")
        res = {"http_rps": float(m.group(1))}
        p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
        if p99:
            res["http_p99_us"] = float(p99.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[p99.group(2)]
        return res

    def many(self, targets):
        """Many keep-alive connections, small request/response at a fixed
        aggregate rate (`shunt-loadgen paced`). CPU is snapshot when the
        tool says its measured window opens and closes, so connection set-up,
        warm-up and drain are outside it."""
        ip, port = targets["echo"]
        p = self.p
        argv = [self.loadgen, "paced", f"{ip}:{port}", "--conns", str(p["many_conns"]),
                "--size", str(p["many_size"]), "--rate", str(p["many_rate"]),
                "--duration", str(p["many_s"]), "--warmup", str(p["many_warmup"])]
        if self.ns:
            argv = ["ip", "netns", "exec", self.ns] + argv
        # Its own session, counted as ours: it is still running at both
        # snapshots, so CpuMeter would otherwise subtract it as foreign.
        tool = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        self.meter.our_sids.add(tool.pid)
        watchdog = threading.Timer(p["many_s"] + p["many_warmup"] + 40, tool.kill)
        watchdog.start()
        before = cpu = None
        lines = []
        try:
            # Read to the end here: communicate() after a partial read would
            # miss lines already taken into this file object's buffer.
            for line in tool.stdout:
                lines.append(line)
                if '"phase": "measure"' in line:
                    before = self.meter.snapshot()
                elif '"phase": "end"' in line and before is not None:
                    cpu = self.meter.since(before)
            err = tool.stderr.read()
            tool.wait()
        finally:
            watchdog.cancel()
            if tool.poll() is None:
                tool.kill()
                tool.wait()
            self.meter.our_sids.discard(tool.pid)
        try:
            j = json.loads(lines[-1])
        except (ValueError, IndexError):
            raise BenchError(f"paced exited {tool.returncode}: {err.strip().removeprefix('shunt-loadgen: ')[-200:]}")
        # A dropped keep-alive connection is the system's failure, not noise.
        if j["errors"]:
            raise BenchError(f"paced: {j['errors']} of {j['conns']} connections failed")
        if cpu is None or tool.returncode != 0:
            raise BenchError(f"paced exited {tool.returncode}: {err.strip()[-200:] or 'no measured window'}")
        done = max(1, j["completed"])
        return {"many_rate": j["achieved_rate"], "many_cpu_req": cpu["busy_s"] / done * 1e6,
                "many_p50": j["p50_us"], "many_p99": j["p99_us"],
                "many_target_rate": j["target_rate"], "many_cpu_req_ticks": cpu["ticks_s"] / done * 1e6,
                "many_cpu_req_unadjusted": cpu["busy_raw_s"] / done * 1e6, "many_foreign_cpu_s": cpu["foreign_s"],
                "many_steal_s": cpu["steal_s"], "many_p999_us": j["p999_us"],
                "many_send_lag_p99_us": j["send_lag_p99_us"], "many_max_backlog": j["max_backlog"],
                "many_unanswered": j["incomplete"]}

    def run_all(self, kinds, targets, enabled):
        """Yields (measurement name, function) for the workloads this system serves."""
        plan = []
        if "bulk" in kinds:
            if "bulk_1" in enabled:
                plan.append(("bulk_1", lambda: self.bulk(targets, 1)))
            if "bulk_4" in enabled:
                plan.append(("bulk_4", lambda: self.bulk(targets, 4)))
            if "cpu_gb_paced" in enabled:
                plan.append(("cpu_gb_paced", lambda: self.paced(targets)))
        if "echo" in kinds:
            if "rr" in enabled:
                plan.append(("rr", lambda: self.pingpong(targets)))
            if "conn_rate" in enabled:
                plan.append(("conn_rate", lambda: self.connrate(targets)))
            if "many" in enabled:
                plan.append(("many", lambda: self.many(targets)))
        if "http" in kinds and "http_rps" in enabled:
            plan.append(("http_rps", lambda: self.http(targets)))
        return plan


# measurement name -> figures it produces (for n/a bookkeeping)
MEASUREMENT_FIGURES = {
    "bulk_1": ["bulk_1", "cpu_gb_1"],
    "bulk_4": ["bulk_4", "cpu_gb_4"],
    "cpu_gb_paced": ["cpu_gb_paced"],
    "rr": ["rr_p50", "rr_p99"],
    "conn_rate": ["conn_rate"],
    "many": ["many_rate", "many_cpu_req", "many_p50", "many_p99"],
    "http_rps": ["http_rps"],
}

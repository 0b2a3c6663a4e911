"""Pod steering on other kernels than this host's, tested in a VM.

Profiles (one ctest each):

  netkit  Debian bookworm-security linux-image-6.12.*-cloud-amd64
          (CONFIG_NETKIT=y): `pod add` makes netkit pods, steering is the
          netkit peer program + tcx.
  legacy  Debian bookworm linux-image-6.1.0-*-cloud-amd64: no netkit, no tcx
          (before 6.6), so pods are veth and `steering.attach: auto` falls
          back to legacy clsact tc filters.

Boots the kernel under qemu-system-x86_64 -cpu max with software emulation,
from an initramfs holding busybox-static, the shunt binary, the burst_peer
and stream_positions test tools (tests/tools, for the burst_stress and the
short-circuit checks) and their shared libraries, the kernel modules the profile needs, and tests/vm/init.sh as
/init. The kernel package is fetched once with `apt-get download` into the
cache dir (SHUNT_VM_CACHE, default /var/cache/shunt-vm) and reused.

Passes when every check init.sh reports for the profile is PASS and the VM
reached its end. Stdlib only; needs root for apt-get download into the
cache, not for qemu.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHUNT_BIN = os.environ.get("SHUNT_BIN", os.path.join(HERE, "../../build/proxy/shunt"))
BURST_PEER = os.environ.get("BURST_PEER", os.path.join(HERE, "../../build/tests/tools/burst_peer"))
# The short-circuit step's peer; next to burst_peer when only that is given.
STREAM_POSITIONS = os.environ.get("STREAM_POSITIONS", os.path.join(
    os.environ.get("SHUNT_BUILD_DIR", os.path.join(HERE, "../../build")), "tests/tools/stream_positions"))
CACHE = os.environ.get("SHUNT_VM_CACHE", "/var/cache/shunt-vm")
BOOT_TIMEOUT_S = int(os.environ.get("SHUNT_VM_TIMEOUT", "420"))
# SHUNT_VM_VERBOSE=1 prints the VM's console (and shunt's log) on success too.
# burst_stress size, "ITERATIONS,CLIENTS": ITERATIONS fresh instances (each after
# a SIGKILLed one) and as many rounds on a long-lived one, a burst of CLIENTS
# each. The default keeps the check near a minute under emulation; a soak
# raises it (and SHUNT_VM_TIMEOUT).
BURST_ITERATIONS, BURST_CLIENTS = (int(v) for v in os.environ.get("SHUNT_VM_BURST", "10,50").split(","))
# The short-circuit step's size, "CONNECTIONS,BYTES" (each way, per
# connection): the default keeps the step near 15 s under emulation.
SHORTCUT_CONNECTIONS, SHORTCUT_BYTES = (int(v) for v in os.environ.get("SHUNT_VM_SHORTCUT", "4,4194304").split(","))

COMMON_CHECKS = [
    "sk_msg_probe", "direct_without_shunt", "direct_without_shunt_v6", "shunt_ready", "source_preserved", "download_hash",
    "upload_hash", "direct_port_with_shunt", "source_preserved_v6", "download_hash_v6", "upload_hash_v6",
    "proxied_8080", "not_proxied_9090", "proxied_8080_v6", "shunt_exited", "fail_closed_blocks",
    "fail_closed_blocks_v6", "fail_closed_other_ports_flow", "rules_removed_on_exit", "pod_del", "nothing_left",
    "burst_stress", "reset_propagation",
]
# init.sh's takeover step (issue 14), run on both profiles.
TAKEOVER_CHECKS = ["takeover_complete", "takeover_during_transfers", "takeover_download_hash", "takeover_upload_hash",
                   "takeover_new_connections", "takeover_old_exited"]
# init.sh's endpoint short-circuit step (issue 12), run on both profiles; where
# the kernel's probe says no, the same checks assert the fallback.
SHORTCUT_CHECKS = ["shortcut_ready", "shortcut_positions", "shortcut_fin", "shortcut_access_log", "shortcut_path_up",
                   "shortcut_path_down", "shortcut_bytes_metric", "shortcut_reset_from_server",
                   "shortcut_reset_from_client", "shortcut_blocking_refused", "shortcut_exited"]
# Reported and shown, but not (yet) required: name -> why. A failing one prints
# the console like a failed check does, and the test still passes.
ADVISORY_CHECKS = {}


class Profile:
    def __init__(self, name, apt_prefix, package_re, deb_glob, abi_key, config_needs, modules, checks):
        self.name = name
        self.apt_prefix = apt_prefix
        self.package_re = re.compile(package_re)
        self.deb_glob = deb_glob
        self.abi_key = abi_key          # package name -> sort key, newest last
        self.config_needs = config_needs  # lines the kernel's config must have
        self.modules = modules          # .ko files loaded in this order by init.sh
        self.checks = checks


PROFILES = {
    "netkit": Profile(
        "netkit", "linux-image-6.12.", r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$", "linux-image-6.12.*-cloud-amd64_*.deb",
        lambda n: int(n.split(".")[2].split("+")[0]), ["CONFIG_NETKIT=y"], ["veth"],
        ["pod_add_client_netkit", "pod_add_server_netkit", *COMMON_CHECKS, *TAKEOVER_CHECKS, *SHORTCUT_CHECKS]),
    "legacy": Profile(
        "legacy", "linux-image-6.1.0-", r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$", "linux-image-6.1.0-*-cloud-amd64_*.deb",
        lambda n: int(n.split("-")[3]), ["CONFIG_NET_CLS_BPF=", "CONFIG_NET_SCH_INGRESS="],
        ["veth", "sch_ingress", "cls_bpf"],
        ["pod_add_client_veth", "pod_add_server_veth", *COMMON_CHECKS, *TAKEOVER_CHECKS, *SHORTCUT_CHECKS,
         "steering_legacy_tc"]),
}


def log(msg):
    print(f"[vm] {msg}", flush=True)


def kernel_package(profile):
    """Newest cached .deb, else download the newest candidate that apt has."""
    os.makedirs(CACHE, exist_ok=True)
    cached = lambda: sorted(glob.glob(os.path.join(CACHE, profile.deb_glob)))  # noqa: E731
    if cached():
        return cached()[-1]

    def candidates():
        prefix = profile.package_re.pattern.lstrip("^").split("[")[0].replace("\\", "")
        out = subprocess.run(["apt-cache", "pkgnames", prefix], capture_output=True, text=True)
        names = [n for n in out.stdout.split() if profile.package_re.match(n)]
        return sorted(names, key=profile.abi_key)

    names = candidates()
    if not names:
        log("no matching kernel in the apt lists; running apt-get update")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        names = candidates()
    # pkgnames also lists names only other packages mention: try newest first.
    for name in reversed(names):
        log(f"downloading {name} into {CACHE}")
        if subprocess.run(["apt-get", "download", "-q", name], cwd=CACHE).returncode == 0 and cached():
            return cached()[-1]
    raise SystemExit(f"no {profile.package_re.pattern} package could be downloaded (apt sources?)")


def extract_kernel(deb, profile):
    """vmlinuz and the profile's modules (decompressed: busybox insmod takes plain .ko)."""
    tag = os.path.basename(deb)[: -len(".deb")]
    root = os.path.join(CACHE, tag)
    vmlinuz_list = glob.glob(os.path.join(root, "boot", "vmlinuz-*"))
    if not vmlinuz_list:
        tmp = root + ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", deb, tmp], check=True)
        shutil.rmtree(root, ignore_errors=True)
        os.rename(tmp, root)
        vmlinuz_list = glob.glob(os.path.join(root, "boot", "vmlinuz-*"))
    config = glob.glob(os.path.join(root, "boot", "config-*"))
    text = open(config[0]).read() if config else ""
    for need in profile.config_needs:
        if need not in text:
            raise SystemExit(f"{deb} is not built with {need}")
    modules = []
    for name in profile.modules:
        found = [p for d in ("lib", "usr/lib") for p in glob.glob(os.path.join(root, d, "modules/*/kernel/**",
                                                                              name + ".ko*"), recursive=True)]
        # Built in (=y) needs nothing; =m must be there.
        if found:
            modules.append(found[0])
    return vmlinuz_list[0], modules


def shared_libs(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def install_binary(root, binary, name):
    """/bin/NAME plus the shared libraries it loads, at their host paths."""
    # Debug info makes the binary ~10x larger, and cpio + kernel unpacking
    # under emulation is paid per byte.
    subprocess.run(["strip", "--strip-debug", "-o", os.path.join(root, "bin", name), binary], check=True)
    for lib in shared_libs(binary):
        dst = os.path.join(root, lib.lstrip("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy(lib, dst)


def build_initramfs(workdir, modules):
    root = os.path.join(workdir, "root")
    for d in ("bin", "lib/shunt-modules", "www/cgi-bin", "etc", "sys/fs/bpf", "run/netns"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", os.path.join(root, "bin/busybox"))
    for binary, name in ((SHUNT_BIN, "shunt"), (BURST_PEER, "burst_peer"), (STREAM_POSITIONS, "stream_positions")):
        install_binary(root, binary, name)
    # Numbered so init.sh loads them in the profile's order.
    for i, ko in enumerate(modules):
        name = re.sub(r"\.ko(\.xz|\.zst)?$", ".ko", os.path.basename(ko))
        with open(os.path.join(root, "lib/shunt-modules", f"{i:02d}-{name}"), "wb") as f:
            if ko.endswith(".xz"):
                subprocess.run(["xz", "-dc", ko], stdout=f, check=True)
            elif ko.endswith(".zst"):
                subprocess.run(["zstd", "-dc", ko], stdout=f, check=True)
            else:
                f.write(open(ko, "rb").read())
    shutil.copy(os.path.join(HERE, "init.sh"), os.path.join(root, "init"))
    os.chmod(os.path.join(root, "init"), 0o755)
    with open(os.path.join(root, "www/blob"), "wb") as f:
        f.write(os.urandom(4 << 20))
    with open(os.path.join(root, "www/cgi-bin/peer"), "w") as f:
        f.write('#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n"\nprintf "peer=%s" "$REMOTE_ADDR"\n')
    with open(os.path.join(root, "www/cgi-bin/sum"), "w") as f:
        f.write('#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n"\n'
                'head -c "$CONTENT_LENGTH" | sha256sum | cut -d" " -f1 | tr -d "\\n"\n')
    # init.sh's takeover step: /www/blob in 16 KiB pieces 0.2 s apart until
    # /tmp/takeover.done exists, then at once; uploaded by init.sh and
    # downloaded from /cgi-bin/paced.
    with open(os.path.join(root, "bin/paced-blob"), "w") as f:
        f.write('#!/bin/sh\nn=$(($(stat -c %s /www/blob) / 16384))\ni=0\nwhile [ $i -lt $n ]; do\n'
                '\tdd if=/www/blob bs=16384 skip=$i count=1 2>/dev/null\n'
                '\t[ -f /tmp/takeover.done ] || sleep 0.2\n\ti=$((i + 1))\ndone\n')
    os.chmod(os.path.join(root, "bin/paced-blob"), 0o755)
    with open(os.path.join(root, "www/cgi-bin/paced"), "w") as f:
        f.write('#!/bin/sh\nprintf "Content-Type: application/octet-stream\\r\\n\\r\\n"\nexec /bin/paced-blob\n')
    for cgi in ("peer", "sum", "paced"):
        os.chmod(os.path.join(root, "www/cgi-bin", cgi), 0o755)
    image = os.path.join(workdir, "initramfs.cpio")
    files = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    with open(image, "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files, stdout=f, check=True)
    return image


def boot(vmlinuz, initramfs, profile):
    cmd = ["qemu-system-x86_64", "-cpu", "max", "-m", "1024", "-smp", "2", "-nographic", "-no-reboot",
           "-nic", "none", "-kernel", vmlinuz, "-initrd", initramfs,
           "-append", f"console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init shunt.profile={profile.name} "
           f"shunt.burst_iterations={BURST_ITERATIONS} shunt.burst_clients={BURST_CLIENTS} "
           f"shunt.shortcut_connections={SHORTCUT_CONNECTIONS} shunt.shortcut_bytes={SHORTCUT_BYTES}"]
    log(" ".join(cmd))
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        out, _ = proc.communicate(timeout=BOOT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        log(f"VM did not finish within {BOOT_TIMEOUT_S}s")
    log(f"VM ran {time.monotonic() - start:.1f}s")
    return out.decode(errors="replace")


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in PROFILES:
        raise SystemExit(f"usage: {sys.argv[0]} {'|'.join(PROFILES)}")
    profile = PROFILES[sys.argv[1]]
    for path, var in ((SHUNT_BIN, "SHUNT_BIN"), (BURST_PEER, "BURST_PEER"), (STREAM_POSITIONS, "STREAM_POSITIONS")):
        if not os.path.exists(path):
            raise SystemExit(f"{os.path.basename(path)} not found at {path} (build it, or set {var})")
    deb = kernel_package(profile)
    vmlinuz, modules = extract_kernel(deb, profile)
    log(f"kernel {vmlinuz}, modules {[os.path.basename(m) for m in modules]}")
    with tempfile.TemporaryDirectory(prefix="shunt-vm-") as work:
        console = boot(vmlinuz, build_initramfs(work, modules), profile)
    results = {}
    for line in console.splitlines():
        m = re.search(r"SHUNT-VM: RESULT (\S+) (PASS|FAIL) ?(.*)", line)
        if m:
            results[m.group(1)] = (m.group(2), m.group(3))
    done = "SHUNT-VM: DONE" in console
    failed = [n for n in profile.checks if results.get(n, ("MISSING",))[0] != "PASS"]
    for name in profile.checks:
        status, detail = results.get(name, ("MISSING", ""))
        print(f"{status:7} {name} {detail}")
    advisory_failed = []
    for name, why in ADVISORY_CHECKS.items():
        status, detail = results.get(name, ("MISSING", ""))
        print(f"{status:7} {name} {detail} (advisory: {why})")
        if status != "PASS":
            advisory_failed.append(name)
    if failed or not done or advisory_failed or os.environ.get("SHUNT_VM_VERBOSE"):
        print("---- VM console ----")
        print(console)
        print("--------------------")
    if failed or not done:
        raise SystemExit(f"{profile.name} VM test failed: {', '.join(failed) or 'VM did not reach the end'}")
    print(f"{profile.name} VM test: {len(profile.checks)} checks passed"
          + (f"; advisory check(s) failed: {', '.join(advisory_failed)}" if advisory_failed else ""))


if __name__ == "__main__":
    main()

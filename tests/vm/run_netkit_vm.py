"""netkit pod steering, tested in a VM (this host's kernel may lack netkit).

Boots Debian's bookworm-security linux-image-6.12.*-cloud-amd64 (CONFIG_NETKIT=y)
under qemu-system-x86_64 -cpu max with software emulation, from an initramfs
holding busybox-static, the shunt binary and its shared libraries, and
tests/vm/init.sh as /init. The kernel package is fetched once with
`apt-get download` into the cache dir (SHUNT_VM_CACHE, default
/var/cache/shunt-vm) and reused afterwards.

Passes when every check init.sh reports is PASS and the VM reached its end.
Stdlib only; needs root for apt-get download into the cache, not for qemu.
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
CACHE = os.environ.get("SHUNT_VM_CACHE", "/var/cache/shunt-vm")
BOOT_TIMEOUT_S = int(os.environ.get("SHUNT_VM_TIMEOUT", "420"))
PKG_RE = re.compile(r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$")
EXPECTED = [
    "pod_add_client_netkit", "pod_add_server_netkit", "direct_without_shunt", "shunt_ready",
    "source_preserved", "download_hash", "upload_hash", "direct_port_with_shunt", "proxied_8080",
    "not_proxied_9090", "shunt_exited", "fail_closed_blocks", "fail_closed_other_ports_flow",
    "rules_removed_on_exit", "pod_del", "nothing_left",
]


def log(msg):
    print(f"[vm] {msg}", flush=True)


def kernel_package():
    """Newest cached .deb, else download the newest candidate."""
    os.makedirs(CACHE, exist_ok=True)
    debs = sorted(glob.glob(os.path.join(CACHE, "linux-image-6.12.*-cloud-amd64_*.deb")))
    if debs:
        return debs[-1]

    def candidates():
        out = subprocess.run(["apt-cache", "pkgnames", "linux-image-6.12."], capture_output=True, text=True)
        names = [n for n in out.stdout.split() if PKG_RE.match(n)]
        return sorted(names, key=lambda n: int(n.split(".")[2].split("+")[0]))

    names = candidates()
    if not names:
        log("no linux-image-6.12 cloud kernel in the apt lists; running apt-get update")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        names = candidates()
    if not names:
        raise SystemExit("no linux-image-6.12.*-cloud-amd64 package available (bookworm-security missing from apt sources?)")
    log(f"downloading {names[-1]} into {CACHE}")
    subprocess.run(["apt-get", "download", "-q", names[-1]], cwd=CACHE, check=True)
    debs = sorted(glob.glob(os.path.join(CACHE, "linux-image-6.12.*-cloud-amd64_*.deb")))
    if not debs:
        raise SystemExit("apt-get download produced no .deb")
    return debs[-1]


def extract_kernel(deb):
    """vmlinuz and veth.ko (decompressed: busybox insmod takes plain .ko)."""
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
    if config and "CONFIG_NETKIT=y" not in open(config[0]).read():
        raise SystemExit(f"{deb} is not built with CONFIG_NETKIT=y")
    veth = glob.glob(os.path.join(root, "lib/modules/*/kernel/drivers/net/veth.ko*")) + glob.glob(
        os.path.join(root, "usr/lib/modules/*/kernel/drivers/net/veth.ko*"))
    return vmlinuz_list[0], (veth[0] if veth else None)


def shared_libs(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def build_initramfs(workdir, veth_ko):
    root = os.path.join(workdir, "root")
    for d in ("bin", "lib", "www/cgi-bin", "etc", "sys/fs/bpf", "run/netns"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", os.path.join(root, "bin/busybox"))
    # Debug info makes the binary ~10x larger, and cpio + kernel unpacking
    # under emulation is paid per byte.
    subprocess.run(["strip", "--strip-debug", "-o", os.path.join(root, "bin/shunt"), SHUNT_BIN], check=True)
    for lib in shared_libs(SHUNT_BIN):
        dst = os.path.join(root, lib.lstrip("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy(lib, dst)
    if veth_ko:
        with open(os.path.join(root, "lib/veth.ko"), "wb") as f:
            if veth_ko.endswith(".xz"):
                subprocess.run(["xz", "-dc", veth_ko], stdout=f, check=True)
            elif veth_ko.endswith(".zst"):
                subprocess.run(["zstd", "-dc", veth_ko], stdout=f, check=True)
            else:
                f.write(open(veth_ko, "rb").read())
    shutil.copy(os.path.join(HERE, "init.sh"), os.path.join(root, "init"))
    os.chmod(os.path.join(root, "init"), 0o755)
    with open(os.path.join(root, "www/blob"), "wb") as f:
        f.write(os.urandom(4 << 20))
    with open(os.path.join(root, "www/cgi-bin/peer"), "w") as f:
        f.write('#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n"\nprintf "peer=%s" "$REMOTE_ADDR"\n')
    with open(os.path.join(root, "www/cgi-bin/sum"), "w") as f:
        f.write('#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n"\n'
                'head -c "$CONTENT_LENGTH" | sha256sum | cut -d" " -f1 | tr -d "\\n"\n')
    for cgi in ("peer", "sum"):
        os.chmod(os.path.join(root, "www/cgi-bin", cgi), 0o755)
    image = os.path.join(workdir, "initramfs.cpio")
    files = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    with open(image, "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files, stdout=f, check=True)
    return image


def boot(vmlinuz, initramfs):
    cmd = ["qemu-system-x86_64", "-cpu", "max", "-m", "1024", "-smp", "2", "-nographic", "-no-reboot",
           "-nic", "none", "-kernel", vmlinuz, "-initrd", initramfs,
           "-append", "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init"]
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
    if not os.path.exists(SHUNT_BIN):
        raise SystemExit(f"shunt binary not found at {SHUNT_BIN} (set SHUNT_BIN)")
    deb = kernel_package()
    vmlinuz, veth = extract_kernel(deb)
    log(f"kernel {vmlinuz}")
    with tempfile.TemporaryDirectory(prefix="shunt-vm-") as work:
        console = boot(vmlinuz, build_initramfs(work, veth))
    results = {}
    for line in console.splitlines():
        m = re.search(r"SHUNT-VM: RESULT (\S+) (PASS|FAIL) ?(.*)", line)
        if m:
            results[m.group(1)] = (m.group(2), m.group(3))
    done = "SHUNT-VM: DONE" in console
    failed = [n for n in EXPECTED if results.get(n, ("MISSING",))[0] != "PASS"]
    for name in EXPECTED:
        status, detail = results.get(name, ("MISSING", ""))
        print(f"{status:7} {name} {detail}")
    if failed or not done:
        print("---- VM console ----")
        print(console)
        print("--------------------")
        raise SystemExit(f"netkit VM test failed: {', '.join(failed) or 'VM did not reach the end'}")
    print(f"netkit VM test: {len(EXPECTED)} checks passed")


if __name__ == "__main__":
    main()

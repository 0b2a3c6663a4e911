"""docker/ without a Docker engine: the manifests parse and agree with
shunt's config and code. The DaemonSet's embedded config passes `shunt
check`; probes hit /healthz and /readyz on its admin port over loopback;
the ConfigMap is mounted as a directory at the path the container runs
with; /sys/fs/bpf is mounted; capabilities are exactly the documented ones.
The Dockerfile builds on Debian bookworm through scripts/deps, and its
runtime packages provide every shared library the built binary links.
Needs python3-yaml (scripts/deps installs it)."""
import os
import re
import subprocess
import tempfile
import unittest

import yaml

from shunt_harness import SHUNT_BIN, SOURCE_DIR

DOCKER = os.path.join(SOURCE_DIR, "docker")
# docs/operating.md "Capabilities": what setup needs in a container.
CONTAINER_CAPS = {"NET_ADMIN", "BPF", "PERFMON"}
# In every Debian image: not installed by the Dockerfile.
BASE_PACKAGES = {"libc6", "libgcc-s1"}


def load_daemonset():
    with open(os.path.join(DOCKER, "daemonset.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {d["kind"]: d for d in docs}
    return by_kind


class DaemonSet(unittest.TestCase):
    def setUp(self):
        self.docs = load_daemonset()
        self.ds = self.docs["DaemonSet"]
        self.pod = self.ds["spec"]["template"]["spec"]
        self.container = self.pod["containers"][0]
        self.config_text = self.docs["ConfigMap"]["data"]["shunt.yaml"]
        self.config = yaml.safe_load(self.config_text)

    def test_embedded_config_is_valid(self):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(self.config_text)
            f.flush()
            r = subprocess.run([SHUNT_BIN, "check", "-c", f.name], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_probes_use_the_admin_endpoints(self):
        host, port = self.config["admin"]["listen"].rsplit(":", 1)
        self.assertEqual(host, "127.0.0.1")
        self.assertFalse(self.config["admin"].get("allow_remote", False))
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = self.container[probe]["httpGet"]
            self.assertEqual((get["host"], get["path"], get["port"]), (host, path, int(port)))
        self.assertIn({"name": "admin", "containerPort": int(port), "protocol": "TCP"}, self.container["ports"])

    def test_host_network_and_bpffs(self):
        self.assertTrue(self.pod["hostNetwork"])
        mounts = {m["name"]: m for m in self.container["volumeMounts"]}
        volumes = {v["name"]: v for v in self.pod["volumes"]}
        self.assertEqual(mounts["bpffs"]["mountPath"], "/sys/fs/bpf")
        self.assertEqual(volumes["bpffs"]["hostPath"]["path"], "/sys/fs/bpf")

    def test_config_map_is_a_directory_mount_matching_the_args(self):
        args = self.container["args"]
        self.assertEqual(args[:2], ["run", "-c"])
        config_path = args[2]
        mounts = [m for m in self.container["volumeMounts"] if m["name"] == "config"]
        self.assertEqual(len(mounts), 1)
        # subPath mounts never see ConfigMap updates: live reload needs the directory.
        self.assertNotIn("subPath", mounts[0])
        self.assertEqual(os.path.dirname(config_path), mounts[0]["mountPath"])
        volume = [v for v in self.pod["volumes"] if v["name"] == "config"][0]
        self.assertEqual(volume["configMap"]["name"], self.docs["ConfigMap"]["metadata"]["name"])
        self.assertIn(os.path.basename(config_path), self.docs["ConfigMap"]["data"])

    def test_upgrades_are_takeovers_over_a_shared_control_socket(self):
        # docs/operating.md "Upgrades": the new pod runs beside the old one
        # and finds its control socket on a hostPath.
        update = self.ds["spec"]["updateStrategy"]
        self.assertEqual(update["type"], "RollingUpdate")
        self.assertEqual(update["rollingUpdate"], {"maxSurge": 1, "maxUnavailable": 0})
        self.assertIn("--takeover", self.container["args"])
        control = self.config["admin"].get("control_socket", "/run/shunt/control.sock")
        mounts = {m["mountPath"]: m["name"] for m in self.container["volumeMounts"]}
        directory = os.path.dirname(control)
        self.assertIn(directory, mounts)
        volume = [v for v in self.pod["volumes"] if v["name"] == mounts[directory]][0]
        self.assertEqual(volume["hostPath"]["path"], directory)

    def test_capabilities_are_the_documented_ones(self):
        sc = self.container["securityContext"]
        self.assertFalse(sc.get("privileged", False))
        self.assertFalse(sc["allowPrivilegeEscalation"])
        self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
        self.assertEqual(set(sc["capabilities"]["add"]), CONTAINER_CAPS)
        with open(os.path.join(SOURCE_DIR, "docs", "operating.md")) as f:
            doc = f.read()
        for cap in CONTAINER_CAPS:
            self.assertIn("CAP_" + cap, doc)

    def test_grace_period_covers_drain(self):
        drain = self.config["proxy"]["timeouts"]["drain"]
        self.assertTrue(drain.endswith("s") and not drain.endswith("ms"), drain)
        self.assertGreater(self.pod["terminationGracePeriodSeconds"], int(drain[:-1]))


class Dockerfile(unittest.TestCase):
    def setUp(self):
        with open(os.path.join(DOCKER, "Dockerfile")) as f:
            self.text = f.read()
        # Continuation lines joined: one instruction per entry.
        joined = re.sub(r"\\\n", " ", self.text)
        self.instructions = [l.strip() for l in joined.splitlines() if l.strip() and not l.lstrip().startswith("#")]

    def test_stages_are_bookworm_and_build_goes_through_scripts_deps(self):
        froms = [i.split()[1] for i in self.instructions if i.startswith("FROM ")]
        self.assertEqual(len(froms), 2)
        for image in froms:
            self.assertRegex(image, r"^debian:bookworm(-slim)?$")
        runs = [i for i in self.instructions if i.startswith("RUN ")]
        self.assertEqual(runs[0], "RUN scripts/deps")
        self.assertIn("COPY scripts/deps scripts/deps", self.instructions)
        self.assertTrue(os.access(os.path.join(SOURCE_DIR, "scripts", "deps"), os.X_OK))
        self.assertTrue(any("--target shunt" in r for r in runs))
        self.assertIn('ENTRYPOINT ["/usr/local/bin/shunt"]', self.instructions)

    def test_runtime_packages_cover_the_binary(self):
        install = [i for i in self.instructions if i.startswith("RUN ") and "apt-get install" in i][-1]
        packages = {w for w in install.split("apt-get install", 1)[1].split("&&")[0].split() if not w.startswith("-")}
        ldd = subprocess.run(["ldd", SHUNT_BIN], capture_output=True, text=True, check=True).stdout
        missing = []
        for lib in re.findall(r"=> (/\S+)", ldd):
            owner = None
            for path in (lib, os.path.realpath(lib), "/usr" + lib):
                r = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
                if r.returncode == 0:
                    owner = r.stdout.split(":")[0]
                    break
            self.assertIsNotNone(owner, f"no Debian package owns {lib}")
            if owner not in packages and owner not in BASE_PACKAGES:
                missing.append(f"{os.path.basename(lib)} ({owner})")
        self.assertEqual(missing, [], "runtime stage lacks packages")


if __name__ == "__main__":
    unittest.main(verbosity=2)

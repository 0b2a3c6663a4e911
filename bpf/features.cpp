#include "bpf/features.h"

#include "bpf/sockmap.h"
#include "bpf/sockmap_shortcut.h"
#include "common/unique_fd.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/utsname.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

namespace shunt::bpf {

namespace {

// Attach types newer than bookworm's headers (include/uapi/linux/bpf.h).
constexpr int kTcxIngress = 46;
constexpr int kNetkitPrimary = 54;

std::string errno_text(int err) { return std::strerror(err); }

// What an EPERM/EACCES from bpf() means for a feature probe: the caller, not
// the kernel, lacks something.
constexpr const char* kNeedsPrivilege =
    "not probed: loading BPF needs CAP_BPF and CAP_NET_ADMIN (run `shunt version` as root)";
bool permission_error(int err) { return err == EPERM || err == EACCES; }

Feature probe_sockmap() {
  UniqueFd fd(bpf_map_create(BPF_MAP_TYPE_SOCKHASH, "probe", sizeof(__u64), sizeof(__u64), 1, nullptr));
  if (!fd) {
    if (permission_error(errno)) return {"sockmap", false, kNeedsPrivilege, false};
    return {"sockmap", false, "creating a SOCKHASH failed: " + errno_text(errno)};
  }
  return {"sockmap", true, "SOCKHASH map created"};
}

// Loads `return TC_ACT_OK` as a sched_cls program.
UniqueFd load_pass_program() {
  const bpf_insn insns[] = {
      {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0},
      {BPF_JMP | BPF_EXIT, 0, 0, 0, 0},
  };
  return UniqueFd(bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, "probe", "GPL", insns, 2, nullptr));
}

// libbpf's probe answers "not supported" (0) for any failed load, EPERM
// included: an unprivileged caller is told so first.
Feature probe_sk_skb() {
  if (UniqueFd prog = load_pass_program(); !prog && permission_error(errno))
    return {"sk_skb verdict", false, kNeedsPrivilege, false};
  const int rc = libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SK_SKB, nullptr);
  if (rc == 1) return {"sk_skb verdict", true, "BPF_PROG_TYPE_SK_SKB loads"};
  return {"sk_skb verdict", false, rc < 0 ? errno_text(-rc) : "program type not supported"};
}

// `missing`: what the kernel's lack of the attach type means for shunt.
Feature probe_link(const char* name, int attach_type, const char* ifname, int missing_errno,
                   const std::string& missing) {
  UniqueFd prog = load_pass_program();
  if (!prog) {
    if (permission_error(errno)) return {name, false, kNeedsPrivilege, false};
    return {name, false, "cannot load a probe program: " + errno_text(errno)};
  }
  const unsigned ifindex = if_nametoindex(ifname);
  UniqueFd link(bpf_link_create(prog.get(), static_cast<int>(ifindex),
                                static_cast<bpf_attach_type>(attach_type), nullptr));
  if (link) return {name, true, std::string("bpf_link attached to ") + ifname};
  const int err = errno;
  // For netkit on a non-netkit device the kernel says "wrong device" rather
  // than "unknown attach type": that still proves the attach type exists.
  if (missing_errno && err == missing_errno)
    return {name, true, "attach type known (probe device is not netkit)"};
  // An attach type the kernel does not know is EINVAL from link_create.
  if (err == EINVAL) return {name, false, missing};
  if (permission_error(err)) return {name, false, kNeedsPrivilege, false};
  return {name, false, "bpf_link_create: " + errno_text(err)};
}

Feature probe_ktls() {
  std::ifstream ulp("/proc/sys/net/ipv4/tcp_available_ulp");
  std::stringstream ss;
  ss << ulp.rdbuf();
  if (ss.str().find("tls") != std::string::npos) return {"kTLS", true, "tls ULP available"};
  return {"kTLS", false, "no tls ULP in tcp_available_ulp (module tls not loaded or not built)"};
}

Feature probe_sk_assign_reuseport() {
  utsname u{};
  ::uname(&u);
  const bool ok = sk_assign_takes_reuseport();
  return {"sk_assign_reuseport", ok,
          std::string("kernel ") + u.release +
              (ok ? ": steering spreads connections over the workers' SO_REUSEPORT listeners"
                  : " < 6.5: steered connections are accepted by one thread and handed to the workers")};
}

// The endpoint short-circuit: its programs load and a loopback socket,
// captured, has its byte redirected (EndpointShortcut's own start-up check).
Feature probe_sk_msg_shortcut() {
  const char* name = "sk_msg short-circuit";
  auto bridge = SockmapBridge::load(1, 4 << 20, 1 << 20);
  if (!bridge) return {name, false, bridge.error().message()};
  auto shortcut = EndpointShortcut::load(*bridge.value(), 1, 4 << 20);
  if (!shortcut) return {name, false, shortcut.error().message()};
  return {name, shortcut.value()->works(), shortcut.value()->probe_detail()};
}

}  // namespace

bool kernel_at_least(int want_major, int want_minor) {
  utsname u{};
  if (::uname(&u) != 0) return false;
  int major = 0;
  int minor = 0;
  if (std::sscanf(u.release, "%d.%d", &major, &minor) != 2) return false;
  return major > want_major || (major == want_major && minor >= want_minor);
}

bool sk_assign_takes_reuseport() { return kernel_at_least(6, 5); }

std::vector<Feature> probe_features() {
  std::vector<Feature> out;
  out.push_back(probe_sockmap());
  out.push_back(probe_sk_skb());
  // A kernel new enough may still be built without the feature.
  const auto missing = [](int major, int minor, const char* config, const char* instead) {
    return (kernel_at_least(major, minor) ? std::string("kernel built without it (") + config + ")"
                                          : "kernel has none (needs Linux " + std::to_string(major) + "." +
                                                std::to_string(minor) + "+)") +
           ": " + instead;
  };
  out.push_back(
      probe_link("tcx", kTcxIngress, "lo", 0,
                 missing(6, 6, "CONFIG_NET_XGRESS", "steering attaches legacy tc (clsact) filters")));
  // netkit_prog_attach answers ENXIO for a device that is not netkit; a
  // kernel without netkit rejects the attach type with EINVAL.
  out.push_back(probe_link("netkit", kNetkitPrimary, "lo", ENXIO,
                           missing(6, 7, "CONFIG_NETKIT", "`shunt pod add` creates veth pairs instead")));
  out.push_back(probe_ktls());
  out.push_back(probe_sk_assign_reuseport());
  out.push_back(probe_sk_msg_shortcut());
  return out;
}

}  // namespace shunt::bpf

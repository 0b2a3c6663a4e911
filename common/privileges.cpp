#include "common/privileges.h"

#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>

namespace shunt::proxy {

namespace {

// CAP_BPF (Linux 5.8) split BPF out of CAP_SYS_ADMIN; older kernels need
// the latter for the same map operations.
int last_cap() {
  std::ifstream in("/proc/sys/kernel/cap_last_cap");
  int last = CAP_AUDIT_READ;
  in >> last;
  return last;
}

int bpf_cap() { return last_cap() >= CAP_BPF ? CAP_BPF : CAP_SYS_ADMIN; }

// Why each is kept (checked against the code paths that run after setup):
//  - CAP_NET_ADMIN: IP_TRANSPARENT/IPV6_TRANSPARENT on upstream sockets
//    (upstream_source: client), SO_SNDBUFFORCE/SO_RCVBUFFORCE for bulk
//    sockmap pairs, tcx link creation and rtnetlink for steering updates on
//    reload, and removing the steering rule and route at exit.
//  - CAP_BPF: the bpf(2) map operations of the sockmap handover, the kernel
//    byte counters and steering updates; with kernel.unprivileged_bpf_disabled
//    set (Debian's default) every bpf(2) command needs it.
std::uint64_t wanted_mask(ThreadRole role) {
  switch (role) {
    case ThreadRole::runtime:
      return (1ull << CAP_NET_ADMIN) | (1ull << bpf_cap());
    case ThreadRole::admin:
      return 1ull << bpf_cap();
    case ThreadRole::none:
      return 0;
  }
  return 0;
}

struct CapSets {
  std::uint64_t effective = 0, permitted = 0, inheritable = 0;
};

Result<CapSets> get_caps() {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (::syscall(SYS_capget, &header, data) < 0) return SysError::from_errno("capget");
  auto join = [](std::uint32_t lo, std::uint32_t hi) {
    return std::uint64_t{lo} | (std::uint64_t{hi} << 32);
  };
  return CapSets{join(data[0].effective, data[1].effective), join(data[0].permitted, data[1].permitted),
                 join(data[0].inheritable, data[1].inheritable)};
}

Status set_caps(const CapSets& sets) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};  // pid 0: this thread
  __user_cap_data_struct data[2]{};
  for (int i = 0; i < 2; ++i) {
    data[i].effective = static_cast<std::uint32_t>(sets.effective >> (32 * i));
    data[i].permitted = static_cast<std::uint32_t>(sets.permitted >> (32 * i));
    data[i].inheritable = static_cast<std::uint32_t>(sets.inheritable >> (32 * i));
  }
  if (::syscall(SYS_capset, &header, data) < 0) return SysError::from_errno("capset");
  return ok_status();
}

const char* cap_name(int cap) {
  switch (cap) {
    case CAP_NET_ADMIN:
      return "cap_net_admin";
    case CAP_SYS_ADMIN:
      return "cap_sys_admin";
    case CAP_BPF:
      return "cap_bpf";
    default:
      return "cap_unknown";
  }
}

}  // namespace

Status drop_capabilities(ThreadRole role) {
  auto current = get_caps();
  if (!current) return current.error();
  const std::uint64_t keep = wanted_mask(role) & current->permitted;
  const int last = last_cap();

  // The bounding set first: dropping from it needs CAP_SETPCAP, which the
  // capset below takes away. Without CAP_SETPCAP the bounding set stays as
  // it is; no_new_privs still keeps execve from regaining anything.
  if (current->effective & (1ull << CAP_SETPCAP)) {
    for (int cap = 0; cap <= last; ++cap) {
      if (keep & (1ull << cap)) continue;
      if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
        return SysError::from_errno(std::string("drop ") + std::to_string(cap) + " from the bounding set");
    }
  }
  // Ambient capabilities survive execve; none are wanted. EINVAL: kernel
  // without ambient capabilities, nothing to clear.
  if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
    return SysError::from_errno("clear the ambient capability set");
  if (Status st = set_caps(CapSets{keep, keep, 0}); !st) return st;
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return SysError::from_errno("set no_new_privs");
  return ok_status();
}

std::vector<std::string> held_capabilities(ThreadRole role) {
  std::vector<std::string> names;
  auto current = get_caps();
  if (!current) return names;
  const std::uint64_t mask = wanted_mask(role) & current->effective;
  for (int cap = 0; cap < 64; ++cap)
    if (mask & (1ull << cap)) names.emplace_back(cap_name(cap));
  return names;
}

}  // namespace shunt::proxy

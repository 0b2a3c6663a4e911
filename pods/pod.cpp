#include "pods/pod.h"

#include "bpf/steering.h"
#include "pods/netns.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cstring>

namespace shunt::pods {
namespace {

Status write_sysctl(const std::string& path, std::string_view value) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return SysError::from_errno("open " + path);
  if (::write(fd.get(), value.data(), value.size()) < 0) return SysError::from_errno("write " + path);
  return ok_status();
}

bool netns_exists(const std::string& name) {
  struct stat st {};
  return ::stat((std::string(kNetnsRunDir) + "/" + name).c_str(), &st) == 0;
}

// Undoes a half-built pod unless dismissed: the device pair first (its
// routes go with it), then the namespace.
class PodRollback {
 public:
  explicit PodRollback(std::string name) : name_(std::move(name)) {}
  PodRollback(const PodRollback&) = delete;
  PodRollback& operator=(const PodRollback&) = delete;
  ~PodRollback() {
    if (!armed_) return;
    if (auto nl = NetlinkSocket::open()) (void)delete_link(*nl, host_device_name(name_));
    if (netns_created) (void)Netns::remove(name_);
  }
  void dismiss() { armed_ = false; }
  bool netns_created = false;

 private:
  std::string name_;
  bool armed_ = true;
};

Status configure_pod_side(const Netns& ns, const PodSpec& spec) {
  auto nl = NetlinkSocket::open_in(ns);
  if (!nl) return nl.error();
  auto lo = get_link(*nl, std::string("lo"));
  if (!lo) return lo.error();
  auto eth = get_link(*nl, std::string(kPodDevice));
  if (!eth) return eth.error();
  if (!*lo || !*eth) return SysError{ENODEV, "pod " + spec.name + ": lo or eth0 missing after creation"};
  if (Status st = set_link_up(*nl, (*lo)->ifindex); !st) return st;
  if (Status st = add_address(*nl, (*eth)->ifindex, spec.ip, spec.prefix); !st) return st;
  if (Status st = set_link_up(*nl, (*eth)->ifindex); !st) return st;
  // A default route straight out of eth0: on netkit (L3, no ARP) that is all
  // it takes; on veth the host side answers ARP for every destination
  // (proxy_arp), so the pod needs no gateway address either.
  RouteSpec def;
  def.family = spec.ip.is_v4() ? AF_INET : AF_INET6;
  def.oif = (*eth)->ifindex;
  return replace_route(*nl, def);
}

}  // namespace

std::string host_device_name(const std::string& pod) { return kHostDevicePrefix + pod; }

Status validate_pod_name(const std::string& pod) {
  if (pod.empty() || pod.size() > kMaxPodName)
    return SysError{EINVAL, "pod name '" + pod + "' must be 1-" + std::to_string(kMaxPodName) +
                                " characters (the host device sh-NAME must fit 15)"};
  for (char c : pod) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_')
      return SysError{EINVAL, "pod name '" + pod + "' may contain only letters, digits, '-' and '_'"};
  }
  return ok_status();
}

Result<AddedPod> add_pod(const PodSpec& spec) {
  if (Status st = validate_pod_name(spec.name); !st) return st.error();
  const unsigned max_prefix = spec.ip.is_v4() ? 32 : 128;
  if (spec.prefix == 0 || spec.prefix > max_prefix)
    return SysError{EINVAL, "prefix length /" + std::to_string(spec.prefix) + " is out of range"};

  const std::string host = host_device_name(spec.name);
  auto nl = NetlinkSocket::open();
  if (!nl) return nl.error();
  auto existing = get_link(*nl, host);
  if (!existing) return existing.error();
  if (*existing || netns_exists(spec.name)) return SysError{EEXIST, "pod " + spec.name + " already exists"};

  PodRollback rollback(spec.name);
  auto ns = Netns::create(spec.name);
  if (!ns) return ns.error();
  rollback.netns_created = true;

  AddedPod added;
  DeviceType type = spec.type.value_or(DeviceType::netkit);
  Status created = create_pair(*nl, type, host, kPodDevice, ns->fd());
  if (!created && created.error().code == EOPNOTSUPP) {
    if (spec.type)
      return SysError{
          EOPNOTSUPP,
          "--type netkit: netkit not supported by this kernel (omit --type to fall back to veth)"};
    added.why = "netkit not supported by this kernel (EOPNOTSUPP creating netkit); using veth";
    type = DeviceType::veth;
    created = create_pair(*nl, type, host, kPodDevice, ns->fd());
  } else if (spec.type) {
    added.why = std::string("--type ") + std::string(to_string(type)) + " requested";
  } else {
    added.why = "netkit supported by this kernel";
  }
  if (!created) return created.error();

  auto link = get_link(*nl, host);
  if (!link) return link.error();
  if (!*link) return SysError{ENODEV, "device " + host + " vanished after creation"};
  const int ifindex = (*link)->ifindex;

  if (type == DeviceType::veth && spec.ip.is_v4()) {
    // The host side has no address; it answers the pod's ARP for any
    // destination it routes elsewhere, at once (proxy_delay 0).
    if (Status st = write_sysctl("/proc/sys/net/ipv4/conf/" + host + "/proxy_arp", "1"); !st)
      return st.error();
    if (Status st = write_sysctl("/proc/sys/net/ipv4/neigh/" + host + "/proxy_delay", "0"); !st)
      return st.error();
  }
  if (Status st = set_link_up(*nl, ifindex); !st) return st.error();
  if (Status st = configure_pod_side(*ns, spec); !st) return st.error();

  RouteSpec back;
  back.family = spec.ip.is_v4() ? AF_INET : AF_INET6;
  back.dst = spec.ip;
  back.dst_len = max_prefix;
  back.oif = ifindex;
  if (Status st = replace_route(*nl, back); !st) return st.error();
  const char* forwarding =
      spec.ip.is_v4() ? "/proc/sys/net/ipv4/ip_forward" : "/proc/sys/net/ipv6/conf/all/forwarding";
  if (Status st = write_sysctl(forwarding, "1"); !st) return st.error();

  rollback.dismiss();
  added.info = PodInfo{spec.name, std::string(to_string(type)), host, spec.ip, spec.prefix};
  return added;
}

Status del_pod(const std::string& name) {
  if (Status st = validate_pod_name(name); !st) return st;
  const std::string host = host_device_name(name);
  auto nl = NetlinkSocket::open();
  if (!nl) return nl.error();
  auto link = get_link(*nl, host);
  if (!link) return link.error();
  const bool has_ns = netns_exists(name);
  if (!*link && !has_ns) return SysError{ENOENT, "no pod named " + name};

  Status first = ok_status();
  if (*link) {
    // Deleting one end removes the pair and every route through it.
    if (Status st = delete_link(*nl, host); !st && st.error().code != ENODEV) first = st;
  }
  if (Status st = bpf::remove_pinned_steering(host); !st && first) first = st;
  if (has_ns) {
    if (Status st = Netns::remove(name); !st && first) first = st;
  }
  return first;
}

Result<std::vector<PodInfo>> list_pods() {
  auto nl = NetlinkSocket::open();
  if (!nl) return nl.error();
  std::vector<PodInfo> pods;
  for (const auto& name : Netns::list()) {
    if (!validate_pod_name(name)) continue;
    const std::string host = host_device_name(name);
    auto link = get_link(*nl, host);
    if (!link) return link.error();
    if (!*link) continue;  // a namespace shunt did not make
    PodInfo info{name, (*link)->kind, host, std::nullopt, 0};
    if (auto ns = Netns::open(name)) {
      if (auto pnl = NetlinkSocket::open_in(*ns)) {
        if (auto eth = get_link(*pnl, std::string(kPodDevice)); eth && *eth) {
          if (auto addrs = list_addresses(*pnl, (**eth).ifindex); addrs && !addrs->empty()) {
            info.ip = addrs->front().address;
            info.prefix = addrs->front().prefix;
          }
        }
      }
    }
    pods.push_back(std::move(info));
  }
  return pods;
}

}  // namespace shunt::pods

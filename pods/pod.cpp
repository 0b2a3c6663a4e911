#include "pods/pod.h"

#include "bpf/steering.h"
#include "netlink/netns.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <linux/if_addr.h>
#include <linux/rtnetlink.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>

namespace shunt::pods {
namespace {

Status write_sysctl(const std::string& path, std::string_view value) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return SysError::from_errno("open " + path);
  if (::write(fd.get(), value.data(), value.size()) < 0) return SysError::from_errno("write " + path);
  return ok_status();
}

// `pod add` turns forwarding on (pod traffic is routed through the host).
// The values it found are kept in /run/shunt (gone at reboot, like the
// settings themselves), one "PATH VALUE" line per setting shunt changed, so
// the last `pod del` puts back what shunt changed and nothing else.
constexpr const char* kForwardingRecord = "/run/shunt/pod-forwarding";

std::string read_sysctl(const std::string& path) {
  std::ifstream in(path);
  std::string value;
  in >> value;
  return value;
}

// Sets the forwarding sysctl at `path` to 1; returns a line for the
// operator when this changed it (and records the old value), else "".
Result<std::string> enable_forwarding(const std::string& path, const std::string& name) {
  const std::string before = read_sysctl(path);
  if (before == "1") return std::string();
  if (Status st = write_sysctl(path, "1"); !st) return st.error();
  std::ifstream existing(kForwardingRecord);
  for (std::string p, v; existing >> p >> v;) {
    if (p == path) return std::string();  // an earlier pod add changed it; its record stands
  }
  ::mkdir("/run/shunt", 0755);
  std::ofstream(kForwardingRecord, std::ios::app) << path << ' ' << (before.empty() ? "0" : before) << '\n';
  return name + " was " + (before.empty() ? "0" : before) +
         ", set to 1; the last `shunt pod del` sets it back";
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

bool is_v6_link_local(const IpAddress& a) { return a.is_v6() && a.to_v6().is_link_local(); }

Status check_address(const PodAddress& a) {
  const unsigned max = a.ip.is_v4() ? 32 : 128;
  if (a.prefix == 0 || a.prefix > max)
    return SysError{EINVAL, "prefix length /" + std::to_string(a.prefix) + " is out of range"};
  const bool bad = a.ip.is_unspecified() || a.ip.is_multicast() || a.ip.is_loopback() ||
                   is_v6_link_local(a.ip) || (a.ip.is_v6() && a.ip.to_v6().is_v4_mapped());
  if (bad)
    return SysError{EINVAL, "address " + a.ip.to_string() +
                                " cannot be a pod address (unspecified, loopback, multicast, link-local "
                                "or IPv4-mapped)"};
  return ok_status();
}

bool has_family(const PodSpec& spec, bool v4) {
  for (const auto& a : spec.addresses)
    if (a.ip.is_v4() == v4) return true;
  return false;
}

// IPv6 duplicate address detection would keep a fresh address (and the
// link-local one the gateway is reached from) unusable for a second or more;
// addresses on a lab pair are unique by construction, so it is switched off
// for the device. Written before the device goes up, so its link-local
// address is born valid too. Must run in the device's namespace.
Status disable_dad(const std::string& dev) {
  return write_sysctl("/proc/sys/net/ipv6/conf/" + dev + "/accept_dad", "0");
}

Status configure_pod_side(const Netns& ns, const PodSpec& spec, DeviceType type) {
  if (has_family(spec, false)) {
    if (Status st = ns.run_inside([] { return disable_dad(kPodDevice); }); !st) return st;
  }
  auto nl = NetlinkSocket::open_in(ns);
  if (!nl) return nl.error();
  auto lo = get_link(*nl, std::string("lo"));
  if (!lo) return lo.error();
  auto eth = get_link(*nl, std::string(kPodDevice));
  if (!eth) return eth.error();
  if (!*lo || !*eth) return SysError{ENODEV, "pod " + spec.name + ": lo or eth0 missing after creation"};
  if (Status st = set_link_up(*nl, (*lo)->ifindex); !st) return st;
  for (const auto& a : spec.addresses) {
    // IPv6: no on-link prefix route, so another pod of the same /64 is
    // reached through the host like any other destination (the host side
    // has no proxy NDP for it, and steering must see the packet anyway).
    const std::uint32_t flags = a.ip.is_v6() ? IFA_F_NODAD | IFA_F_NOPREFIXROUTE : 0;
    if (Status st = add_address(*nl, (*eth)->ifindex, a.ip, a.prefix, flags); !st) return st;
  }
  if (Status st = set_link_up(*nl, (*eth)->ifindex); !st) return st;
  for (const auto& a : spec.addresses) {
    // A default route straight out of eth0: on netkit (L3, no ARP/NDP) that
    // is all it takes; on veth the host side answers ARP for every IPv4
    // destination (proxy_arp), and for IPv6 the pod routes via the host
    // side's link-local gateway address, which the host answers NDP for.
    RouteSpec def;
    def.family = a.ip.is_v4() ? AF_INET : AF_INET6;
    def.oif = (*eth)->ifindex;
    if (a.ip.is_v6() && type == DeviceType::veth) {
      def.gateway = boost::asio::ip::make_address(kPodGatewayV6);
      def.scope = RT_SCOPE_UNIVERSE;
    }
    if (Status st = replace_route(*nl, def); !st) return st;
  }
  return ok_status();
}

}  // namespace

std::string host_device_name(const std::string& pod) { return kHostDevicePrefix + pod; }

std::string to_string(const PodAddress& a) { return a.ip.to_string() + "/" + std::to_string(a.prefix); }

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
  if (spec.addresses.empty()) return SysError{EINVAL, "pod " + spec.name + " needs an address"};
  for (const auto& a : spec.addresses)
    if (Status st = check_address(a); !st) return st.error();
  if (spec.addresses.size() > 2 ||
      (spec.addresses.size() == 2 && has_family(spec, true) != has_family(spec, false)))
    return SysError{EINVAL, "a pod has at most one IPv4 and one IPv6 address"};

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

  const bool v4 = has_family(spec, true);
  const bool v6 = has_family(spec, false);
  if (type == DeviceType::veth && v4) {
    // The host side has no IPv4 address; it answers the pod's ARP for any
    // destination it routes elsewhere, at once (proxy_delay 0).
    if (Status st = write_sysctl("/proc/sys/net/ipv4/conf/" + host + "/proxy_arp", "1"); !st)
      return st.error();
    if (Status st = write_sysctl("/proc/sys/net/ipv4/neigh/" + host + "/proxy_delay", "0"); !st)
      return st.error();
  }
  if (v6) {
    if (Status st = disable_dad(host); !st) return st.error();
    if (type == DeviceType::veth) {
      // The pod's IPv6 gateway; NDP for it is answered by the host side.
      const auto gw = boost::asio::ip::make_address(kPodGatewayV6);
      if (Status st = add_address(*nl, ifindex, gw, 64, IFA_F_NODAD | IFA_F_NOPREFIXROUTE); !st)
        return st.error();
    }
  }
  if (Status st = set_link_up(*nl, ifindex); !st) return st.error();
  if (Status st = configure_pod_side(*ns, spec, type); !st) return st.error();

  for (const auto& a : spec.addresses) {
    RouteSpec back;
    back.family = a.ip.is_v4() ? AF_INET : AF_INET6;
    back.dst = a.ip;
    back.dst_len = a.ip.is_v4() ? 32 : 128;
    back.oif = ifindex;
    if (Status st = replace_route(*nl, back); !st) return st.error();
  }
  std::vector<std::string> notes;
  if (v4) {
    auto note = enable_forwarding("/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward");
    if (!note) return note.error();
    if (!note->empty()) notes.push_back(*note);
  }
  if (v6) {
    auto note = enable_forwarding("/proc/sys/net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding");
    if (!note) return note.error();
    if (!note->empty()) notes.push_back(*note);
  }

  rollback.dismiss();
  added.info = PodInfo{spec.name, std::string(to_string(type)), host, spec.addresses};
  added.forwarding = std::move(notes);
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

std::vector<std::string> restore_forwarding_if_no_pods() {
  std::vector<std::string> restored;
  auto pods = list_pods();
  if (!pods || !pods->empty()) return restored;
  std::ifstream record(kForwardingRecord);
  if (!record) return restored;
  for (std::string path, value; record >> path >> value;) {
    if (write_sysctl(path, value)) restored.push_back(path + " set back to " + value);
  }
  ::unlink(kForwardingRecord);
  return restored;
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
    PodInfo info{name, (*link)->kind, host, {}};
    if (auto ns = Netns::open(name)) {
      if (auto pnl = NetlinkSocket::open_in(*ns)) {
        if (auto eth = get_link(*pnl, std::string(kPodDevice)); eth && *eth) {
          if (auto addrs = list_addresses(*pnl, (**eth).ifindex)) {
            for (const auto& a : *addrs)
              if (!is_v6_link_local(a.address)) info.addresses.push_back({a.address, a.prefix});
            std::stable_partition(info.addresses.begin(), info.addresses.end(),
                                  [](const PodAddress& a) { return a.ip.is_v4(); });
          }
        }
      }
    }
    pods.push_back(std::move(info));
  }
  return pods;
}

}  // namespace shunt::pods

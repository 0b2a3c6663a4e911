#include "bpf/steering.h"

#include "bpf/owned.h"
#include "bpf/steering_attach.h"
#include "netlink/netlink.h"
#include "netlink/routing.h"
#include "netlink/rtnl.h"
#include "steer_netkit.skel.h"
#include "steer_tcx.skel.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <dirent.h>
#include <linux/magic.h>
#include <netinet/in.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <bitset>
#include <cstring>
#include <map>
#include <optional>
#include <set>

namespace shunt::bpf {
namespace {

constexpr std::array<const char*, SHUNT_STAT_MAX> kStatNames = {
    "assign_socket",   "assign_listener", "to_local_stack", "assign_failed", "deny_drop",
    "proxy_down_drop", "proxy_down_pass", "netkit_marked",  "node_local",
};

std::string device_pin_dir(const std::string& dev) { return std::string(kSteeringPinRoot) + "/" + dev; }

Status mkdir_p(const std::string& path) {
  for (std::size_t pos = 1;; ++pos) {
    pos = path.find('/', pos);
    const std::string part = path.substr(0, pos);
    if (::mkdir(part.c_str(), 0700) < 0 && errno != EEXIST) return SysError::from_errno("mkdir " + part);
    if (pos == std::string::npos) return ok_status();
  }
}

// Pins need bpffs at /sys/fs/bpf; hosts that do not mount it at boot get it
// mounted here (the same thing systemd does).
Status ensure_bpffs() {
  struct statfs st {};
  if (::statfs("/sys/fs/bpf", &st) == 0 && st.f_type == BPF_FS_MAGIC) return ok_status();
  if (::mount("bpf", "/sys/fs/bpf", "bpf", 0, nullptr) < 0)
    return SysError::from_errno("mount bpffs at /sys/fs/bpf (needed to pin fail_closed steering)");
  return ok_status();
}

void fill_addr(const config::IpAddress& addr, unsigned prefix, __u32 net[4], __u32 mask[4]) {
  std::array<unsigned char, 16> a{};
  std::array<unsigned char, 16> m{};
  std::size_t len = 4;
  if (addr.is_v4()) {
    auto b = addr.to_v4().to_bytes();
    std::memcpy(a.data(), b.data(), 4);
  } else {
    auto b = addr.to_v6().to_bytes();
    std::memcpy(a.data(), b.data(), 16);
    len = 16;
  }
  for (std::size_t i = 0; i < len; ++i) {
    const unsigned bits = prefix >= (i + 1) * 8 ? 8 : (prefix > i * 8 ? prefix - i * 8 : 0);
    m[i] = static_cast<unsigned char>(bits == 0 ? 0 : (0xff << (8 - bits)) & 0xff);
    a[i] &= m[i];
  }
  // Network byte order, as packets carry them: byte copies keep it.
  std::memcpy(net, a.data(), 16);
  std::memcpy(mask, m.data(), 16);
}

}  // namespace

Result<std::vector<shunt_deny_rule>> deny_table(const policy::Policy& policy) {
  std::vector<shunt_deny_rule> out;
  for (const auto& rule : policy.l4_denies()) {
    std::vector<std::uint16_t> ports = rule.ports;
    if (ports.empty()) ports.push_back(0);
    for (const auto& s : rule.from) {
      for (const auto& d : rule.to) {
        if (s.network.is_v4() != d.network.is_v4()) continue;
        for (std::uint16_t port : ports) {
          shunt_deny_rule e{};
          fill_addr(s.network, s.length, e.src_net, e.src_mask);
          fill_addr(d.network, d.length, e.dst_net, e.dst_mask);
          e.family = s.network.is_v4() ? 4 : 6;
          // With ports the rule is about TCP connections (all the proxy
          // handles); without, it is an L3 deny of every protocol.
          e.proto = port ? IPPROTO_TCP : 0;
          e.dport = htons(port);
          out.push_back(e);
        }
      }
    }
  }
  if (out.size() > SHUNT_DENY_MAX)
    return SysError{E2BIG,
                    "policy has " + std::to_string(out.size()) +
                        " L3/L4 deny entries after expanding pods and ports; the BPF deny table holds " +
                        std::to_string(SHUNT_DENY_MAX)};
  return out;
}

namespace {

struct Listener {
  std::uint32_t slot;
  int fd;
};

Result<std::vector<Listener>> check_listeners(const std::vector<int>& fds) {
  std::vector<Listener> out;
  bool seen[SHUNT_LISTENER_SLOTS] = {};
  for (int fd : fds) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0)
      return SysError::from_errno("inspect steering listener fd " + std::to_string(fd));
    int transparent = 0;
    socklen_t olen = sizeof(transparent);
    const bool v6 = ss.ss_family == AF_INET6;
    if (ss.ss_family != AF_INET && !v6)
      return SysError{EAFNOSUPPORT, "steering listener fd " + std::to_string(fd) + " is not an IP socket"};
    if (::getsockopt(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, &transparent,
                     &olen) < 0)
      return SysError::from_errno("inspect steering listener fd " + std::to_string(fd));
    if (!transparent)
      return SysError{EINVAL, "steering listener fd " + std::to_string(fd) +
                                  " lacks IP_TRANSPARENT: it could not accept connections for pod addresses"};
    const std::uint32_t slot = v6 ? SHUNT_LISTENER_V6 : SHUNT_LISTENER_V4;
    // One slot per family. Further listeners of the same family are the
    // proxy's per-worker SO_REUSEPORT siblings: since Linux 6.5 the kernel
    // runs reuseport selection on a socket assigned by BPF, so assigning
    // the first spreads connections over all of them.
    if (seen[slot]) continue;
    seen[slot] = true;
    out.push_back({slot, fd});
  }
  if (out.empty()) return SysError{EINVAL, "no transparent listener to steer pod traffic to"};
  return out;
}

}  // namespace

struct PodSteering::Impl {
  Owned<steer_tcx, steer_tcx__destroy> tcx;
  Owned<steer_netkit, steer_netkit__destroy> netkit;
  std::optional<pods::PolicyRouting> routing;

  struct Device {
    std::string name;
    int ifindex = 0;
    bool is_netkit = false;
    std::optional<DeviceAttachment> netkit_peer;
    std::optional<DeviceAttachment> ingress;  // tcx, or legacy tc
    auto attachments() { return std::array{&ingress, &netkit_peer}; }
    auto attachments() const { return std::array{&ingress, &netkit_peer}; }
  };
  std::map<std::string, Device> devices;

  bool fail_closed = true;
  config::SteeringAttach attach_mode = config::SteeringAttach::auto_detect;
  std::optional<bool> kernel_has_tcx;  // learnt from the first attach in auto mode
  std::bitset<65536> ports;            // what steer_ports holds now
  bool all_ports = false;
  std::uint32_t deny_count = 0;

  Status load();
  Status set_listeners(const std::vector<Listener>& listeners);
  Status apply_maps(const policy::Policy& policy);
  Status sync_devices(const config::Config& cfg);
  std::map<std::string, Device>::iterator drop(std::map<std::string, Device>::iterator it);
  Result<Device> attach(const std::string& dev);
  Result<DeviceAttachment> attach_ingress(int ifindex, const std::string& dev);
  [[nodiscard]] SteeringHook wanted_ingress_hook() const;
  Status apply_pinning(Device& d);
};

Status PodSteering::Impl::load() {
  tcx.reset(steer_tcx__open());
  if (!tcx) return SysError::from_errno("open BPF object steer_tcx");
  if (int err = steer_tcx__load(tcx.get()); err < 0) return SysError{-err, "load BPF program steer_tcx"};
  netkit.reset(steer_netkit__open());
  if (!netkit) return SysError::from_errno("open BPF object steer_netkit");
  // One set of maps for both programs: the netkit object adopts the tcx
  // object's maps before loading, so its relocations point at them.
  std::pair<bpf_map*, const bpf_map*> shared[] = {
      {netkit->maps.steer_cfg, tcx->maps.steer_cfg},     {netkit->maps.steer_ports, tcx->maps.steer_ports},
      {netkit->maps.steer_deny, tcx->maps.steer_deny},   {netkit->maps.steer_listen, tcx->maps.steer_listen},
      {netkit->maps.steer_stats, tcx->maps.steer_stats},
  };
  for (auto [mine, theirs] : shared) {
    if (int err = bpf_map__reuse_fd(mine, bpf_map__fd(theirs)); err < 0)
      return SysError{-err, std::string("share steering map ") + bpf_map__name(mine)};
  }
  if (int err = steer_netkit__load(netkit.get()); err < 0)
    return SysError{-err, "load BPF program steer_netkit"};
  return ok_status();
}

Status PodSteering::Impl::set_listeners(const std::vector<Listener>& listeners) {
  const int map_fd = bpf_map__fd(tcx->maps.steer_listen);
  for (const auto& l : listeners) {
    const std::uint64_t value = static_cast<std::uint64_t>(l.fd);
    if (bpf_map_update_elem(map_fd, &l.slot, &value, BPF_ANY) < 0)
      return SysError::from_errno("add transparent listener fd " + std::to_string(l.fd) +
                                  " to the steering sockmap");
  }
  return ok_status();
}

// Ordered so that no packet sees a state looser than either the old or the
// new config: new deny entries and ports first, the flags that widen or
// narrow interception last.
Status PodSteering::Impl::apply_maps(const policy::Policy& policy) {
  const config::Config& cfg = policy.config();
  auto deny = deny_table(policy);
  if (!deny) return deny.error();

  const int cfg_fd = bpf_map__fd(tcx->maps.steer_cfg);
  const int ports_fd = bpf_map__fd(tcx->maps.steer_ports);
  const int deny_fd = bpf_map__fd(tcx->maps.steer_deny);
  const std::uint32_t zero = 0;

  shunt_steer_config current{};
  if (bpf_map_lookup_elem(cfg_fd, &zero, &current) < 0)
    return SysError::from_errno("read steering config map");

  // Shrinking the deny table: publish the smaller count before entries move.
  const std::uint32_t new_count = static_cast<std::uint32_t>(deny->size());
  if (new_count < current.deny_count) {
    current.deny_count = new_count;
    if (bpf_map_update_elem(cfg_fd, &zero, &current, BPF_ANY) < 0)
      return SysError::from_errno("update steering config map");
  }
  for (std::uint32_t i = 0; i < new_count; ++i) {
    if (bpf_map_update_elem(deny_fd, &i, &(*deny)[i], BPF_ANY) < 0)
      return SysError::from_errno("update steering deny table");
  }

  std::bitset<65536> want;
  for (std::uint16_t p : cfg.steering.ports) want.set(p);
  for (std::uint32_t p = 0; p < 65536; ++p) {
    if (want[p] == ports[p]) continue;
    const std::uint8_t v = want[p] ? 1 : 0;
    if (bpf_map_update_elem(ports_fd, &p, &v, BPF_ANY) < 0)
      return SysError::from_errno("update steering port " + std::to_string(p));
    ports[p] = want[p];
  }

  shunt_steer_config next{};
  next.flags = (cfg.steering.all_ports ? SHUNT_STEER_F_ALL_PORTS : 0u) |
               (cfg.steering.on_proxy_down == config::OnProxyDown::fail_open ? SHUNT_STEER_F_FAIL_OPEN : 0u);
  next.deny_count = new_count;
  if (bpf_map_update_elem(cfg_fd, &zero, &next, BPF_ANY) < 0)
    return SysError::from_errno("update steering config map");
  all_ports = cfg.steering.all_ports;
  deny_count = new_count;
  return ok_status();
}

Result<PodSteering::Impl::Device> PodSteering::Impl::attach(const std::string& dev) {
  auto nl = pods::NetlinkSocket::open();
  if (!nl) return nl.error();
  auto link = pods::get_link(*nl, dev);
  if (!link) return link.error();
  if (!*link) return SysError{ENODEV, "steering device " + dev + " does not exist (create the pod first)"};
  const auto& info = **link;
  Device d;
  d.name = dev;
  d.ifindex = info.ifindex;
  d.is_netkit = info.kind == "netkit";
  if (d.is_netkit && !info.netkit_primary)
    return SysError{EINVAL,
                    "device " + dev + " is a netkit peer; steering attaches to the host-side primary"};

  // The ingress program first: once the netkit program marks packets,
  // something must be there to assign them.
  auto ingress = attach_ingress(info.ifindex, dev);
  if (!ingress) return ingress.error();
  d.ingress.emplace(std::move(*ingress));
  if (d.is_netkit) {
    auto peer = DeviceAttachment::attach(bpf_program__fd(netkit->progs.shunt_steer_netkit), info.ifindex, dev,
                                         SteeringHook::netkit_peer, device_pin_dir(dev) + "/netkit_peer");
    if (!peer) return peer.error();
    d.netkit_peer.emplace(std::move(*peer));
  }
  if (Status st = apply_pinning(d); !st) return st.error();
  return d;
}

SteeringHook PodSteering::Impl::wanted_ingress_hook() const {
  switch (attach_mode) {
    case config::SteeringAttach::tcx:
      return SteeringHook::tcx_ingress;
    case config::SteeringAttach::tc:
      return SteeringHook::tc_ingress;
    case config::SteeringAttach::auto_detect:
      break;
  }
  return kernel_has_tcx.value_or(true) ? SteeringHook::tcx_ingress : SteeringHook::tc_ingress;
}

// tcx where the kernel has it; in auto mode a kernel without tcx (before
// 6.6) gets the same program as a legacy clsact filter, said once.
Result<DeviceAttachment> PodSteering::Impl::attach_ingress(int ifindex, const std::string& dev) {
  const std::string dir = device_pin_dir(dev);
  const int prog_fd = bpf_program__fd(tcx->progs.shunt_steer_tcx);
  // The tc marker pin needs the directory whatever on_proxy_down says.
  if (Status st = mkdir_p(dir); !st) spdlog::debug("steering: {}", st.error().message());
  auto attach_at = [&](SteeringHook hook) {
    // Switching hooks (a config change, a kernel upgrade): an earlier run's
    // attachment of the other kind must not keep running beside this one.
    if (hook == SteeringHook::tc_ingress) {
      ::unlink((dir + "/tcx").c_str());
    } else if (::access((dir + "/tc").c_str(), F_OK) == 0) {
      (void)remove_tc_steering(dev);
      ::unlink((dir + "/tc").c_str());
    }
    return DeviceAttachment::attach(prog_fd, ifindex, dev, hook,
                                    dir + (hook == SteeringHook::tc_ingress ? "/tc" : "/tcx"));
  };
  const SteeringHook hook = wanted_ingress_hook();
  auto a = attach_at(hook);
  const bool probing = attach_mode == config::SteeringAttach::auto_detect && !kernel_has_tcx.has_value() &&
                       hook == SteeringHook::tcx_ingress;
  if (!probing) return a;
  kernel_has_tcx = a || !hook_missing(hook, a.error().code);
  if (*kernel_has_tcx) return a;
  spdlog::warn(
      "steering: this kernel lacks tcx (Linux 6.6+): attaching with legacy clsact tc filters instead");
  return attach_at(SteeringHook::tc_ingress);
}

// fail_closed: pin, so the programs stay attached and keep dropping
// intercepted traffic after the proxy exits (its listeners leave the
// sockmap when closed). fail_open: no pins, so exit or crash detaches and
// pod traffic flows directly.
Status PodSteering::Impl::apply_pinning(Device& d) {
  const std::string dir = device_pin_dir(d.name);
  if (fail_closed)
    if (Status st = mkdir_p(dir); !st) return st;
  for (auto* a : d.attachments())
    if (*a)
      if (Status st = (*a)->keep_after_exit(fail_closed); !st) return st;
  // Only once empty: a tc attachment keeps its marker pin in fail_open too.
  if (!fail_closed) ::rmdir(dir.c_str());
  return ok_status();
}

// Detaches: nothing is kept after exit, then the attachments are destroyed.
std::map<std::string, PodSteering::Impl::Device>::iterator PodSteering::Impl::drop(
    std::map<std::string, Device>::iterator it) {
  for (auto* a : it->second.attachments())
    if (*a) (void)(*a)->keep_after_exit(false);
  const std::string dir = device_pin_dir(it->first);
  auto next = devices.erase(it);
  ::rmdir(dir.c_str());
  return next;
}

Status PodSteering::Impl::sync_devices(const config::Config& cfg) {
  std::set<std::string> wanted;
  for (const auto& p : cfg.pods)
    if (!p.dev.empty()) wanted.insert(p.dev);

  for (auto it = devices.begin(); it != devices.end();) {
    if (wanted.count(it->first)) {
      ++it;
      continue;
    }
    it = drop(it);
  }
  for (auto& [name, d] : devices)
    if (Status st = apply_pinning(d); !st) return st;

  // Devices are looked up by name each time: a pod deleted and re-created
  // under the same name has a new ifindex and needs new links. A device that
  // does not exist (yet) is skipped with a warning and tried again on the
  // next update, so one missing pod cannot keep the proxy from starting.
  auto nl = pods::NetlinkSocket::open();
  if (!nl) return nl.error();
  for (const auto& dev : wanted) {
    auto link = pods::get_link(*nl, dev);
    if (!link) return link.error();
    auto it = devices.find(dev);
    if (!*link) {
      if (it != devices.end()) drop(it);
      spdlog::warn("steering: device {} does not exist; its pod is not steered until it does (next reload)",
                   dev);
      continue;
    }
    if (it != devices.end()) {
      // Same device and hook: nothing to do. A re-created device (new
      // ifindex) or a changed steering.attach needs a new attachment.
      if (it->second.ifindex == (*link)->ifindex && it->second.ingress->hook() == wanted_ingress_hook())
        continue;
      drop(it);
    }
    auto d = attach(dev);
    if (!d) return d.error();
    devices.emplace(dev, std::move(*d));
  }
  return ok_status();
}

PodSteering::PodSteering(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PodSteering::PodSteering(PodSteering&&) noexcept = default;
PodSteering& PodSteering::operator=(PodSteering&&) noexcept = default;

PodSteering::~PodSteering() {
  if (!impl_) return;
  // Attachments first (those not kept after exit detach here), then the
  // routing they relied on.
  std::vector<std::string> dirs;
  for (const auto& [name, d] : impl_->devices) dirs.push_back(device_pin_dir(name));
  impl_->devices.clear();
  for (const auto& dir : dirs) ::rmdir(dir.c_str());
  impl_->routing.reset();
  // Empty directories only (rmdir refuses otherwise): pins of fail_closed
  // devices, and anything else under /sys/fs/bpf/shunt, stay.
  ::rmdir(kSteeringPinRoot);
  ::rmdir("/sys/fs/bpf/shunt");
}

Result<std::unique_ptr<PodSteering>> PodSteering::start(const policy::Policy& policy,
                                                        std::vector<int> listener_fds) {
  const config::Config& config = policy.config();
  auto impl = std::make_unique<Impl>();
  impl->fail_closed = config.steering.on_proxy_down == config::OnProxyDown::fail_closed;
  impl->attach_mode = config.steering.attach;

  auto listeners = check_listeners(listener_fds);
  if (!listeners) return listeners.error();
  // A family without a listener looks like "proxy down" to the programs:
  // that pod traffic would be dropped (fail_closed) or bypass the proxy.
  for (const std::uint32_t slot : {std::uint32_t{SHUNT_LISTENER_V4}, std::uint32_t{SHUNT_LISTENER_V6}}) {
    const bool v4 = slot == SHUNT_LISTENER_V4;
    if (std::any_of(listeners->begin(), listeners->end(), [&](const Listener& l) { return l.slot == slot; }))
      continue;
    for (const auto& p : config.pods) {
      const auto ips = p.addresses();
      if (p.dev.empty() ||
          std::none_of(ips.begin(), ips.end(), [&](const auto& ip) { return ip.is_v4() == v4; }))
        continue;
      spdlog::warn(
          "steering: pod {} has an IPv{} address but no IPv{} transparent listener is configured: its "
          "IPv{} traffic to intercepted ports is handled as with the proxy down ({})",
          p.name, v4 ? 4 : 6, v4 ? 4 : 6, v4 ? 4 : 6, impl->fail_closed ? "dropped" : "not proxied");
      break;
    }
  }
  if (Status st = ensure_bpffs(); !st) {
    if (impl->fail_closed) return st.error();
    spdlog::warn("{}; steering state will not be pinned", st.error().message());
  }
  if (Status st = impl->load(); !st) return st.error();
  if (Status st = impl->apply_maps(policy); !st) return st.error();
  if (Status st = impl->set_listeners(*listeners); !st) return st.error();

  auto routing = pods::PolicyRouting::install({SHUNT_STEER_MARK, kSteeringTable, kSteeringRulePriority});
  if (!routing) return routing.error();
  impl->routing.emplace(std::move(*routing));

  // Pins of devices this config no longer steers are leftovers of an earlier
  // run: release them so those devices stop being steered.
  std::set<std::string> wanted;
  for (const auto& p : config.pods)
    if (!p.dev.empty()) wanted.insert(p.dev);
  if (DIR* dir = ::opendir(kSteeringPinRoot)) {
    std::vector<std::string> stale;
    while (const dirent* e = ::readdir(dir))
      if (e->d_name[0] != '.' && !wanted.count(e->d_name)) stale.emplace_back(e->d_name);
    ::closedir(dir);
    for (const auto& dev : stale) (void)remove_pinned_steering(dev);
  }

  if (Status st = impl->sync_devices(config); !st) return st.error();
  auto steering = std::unique_ptr<PodSteering>(new PodSteering(std::move(impl)));
  for (const auto& line : steering->describe()) spdlog::info("steering {}", line);
  return steering;
}

Status PodSteering::update(const policy::Policy& policy) {
  const config::Config& config = policy.config();
  impl_->fail_closed = config.steering.on_proxy_down == config::OnProxyDown::fail_closed;
  impl_->attach_mode = config.steering.attach;
  if (impl_->fail_closed) {
    if (Status st = ensure_bpffs(); !st) return st;
  }
  if (Status st = impl_->apply_maps(policy); !st) return st;
  return impl_->sync_devices(config);
}

std::vector<std::pair<std::string, std::uint64_t>> PodSteering::counters() const {
  std::vector<std::pair<std::string, std::uint64_t>> out;
  if (!impl_ || !impl_->tcx) return out;
  const int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) return out;
  std::vector<std::uint64_t> per_cpu(static_cast<std::size_t>(ncpu));
  const int fd = bpf_map__fd(impl_->tcx->maps.steer_stats);
  for (std::uint32_t i = 0; i < SHUNT_STAT_MAX; ++i) {
    std::uint64_t sum = 0;
    if (bpf_map_lookup_elem(fd, &i, per_cpu.data()) == 0)
      for (auto v : per_cpu) sum += v;
    out.emplace_back(kStatNames[i], sum);
  }
  return out;
}

std::vector<std::string> PodSteering::describe() const {
  std::vector<std::string> out;
  if (!impl_) return out;
  for (const auto& [name, d] : impl_->devices) {
    std::string s =
        name + (d.is_netkit ? " (netkit: peer program + " : " (") + std::string(to_string(d.ingress->hook()));
    s += impl_->fail_closed ? ", pinned: fail_closed)" : ", not pinned: fail_open)";
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<PodSteering::Attachment> PodSteering::attachments() const {
  std::vector<Attachment> out;
  if (!impl_) return out;
  for (const auto& [name, d] : impl_->devices)
    for (const auto* a : d.attachments())
      if (*a) out.push_back({name, std::string(label((*a)->hook()))});
  return out;
}

Status remove_pinned_steering(const std::string& dev) {
  const std::string dir = device_pin_dir(dev);
  // A tc filter outlives its pin: delete it first.
  if (::access((dir + "/tc").c_str(), F_OK) == 0)
    if (Status st = remove_tc_steering(dev); !st) return st;
  for (const char* leaf : {"/netkit_peer", "/tcx", "/tc"}) {
    const std::string path = dir + leaf;
    if (::unlink(path.c_str()) < 0 && errno != ENOENT) return SysError::from_errno("unpin " + path);
  }
  if (::rmdir(dir.c_str()) < 0 && errno != ENOENT) return SysError::from_errno("remove " + dir);
  // The parents go too once empty, so a host without steering has no trace.
  ::rmdir(kSteeringPinRoot);
  ::rmdir("/sys/fs/bpf/shunt");
  return ok_status();
}

}  // namespace shunt::bpf

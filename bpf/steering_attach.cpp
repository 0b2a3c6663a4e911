#include "bpf/steering_attach.h"

#include "netlink/netlink.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace shunt::bpf {
namespace {

// uapi bpf_attach_type and bpf_link_type values (6.6+ / 6.7+); bookworm's
// headers and libbpf 1.1 predate them.
constexpr std::uint32_t kAttachTcxIngress = 46;  // BPF_TCX_INGRESS
constexpr std::uint32_t kAttachNetkitPeer = 55;  // BPF_NETKIT_PEER
constexpr std::uint32_t kLinkTypeTcx = 11;       // BPF_LINK_TYPE_TCX
constexpr std::uint32_t kLinkTypeNetkit = 13;    // BPF_LINK_TYPE_NETKIT

// shunt's cls_bpf filter: "SH" as handle; priority 1 so it runs before
// filters added with tc's default priorities.
constexpr std::uint32_t kTcHandle = 0x5348;
constexpr std::uint32_t kTcPriority = 1;

// The head of uapi struct bpf_link_info as 6.7+ lays it out for tcx and
// netkit links: the union starts 8-byte aligned, at offset 16.
struct DeviceLinkInfo {
  std::uint32_t type;
  std::uint32_t id;
  std::uint32_t prog_id;
  alignas(8) std::uint32_t ifindex;
  std::uint32_t attach_type;
  std::uint8_t rest[64];
};

std::uint32_t attach_type(SteeringHook hook) {
  return hook == SteeringHook::tcx_ingress ? kAttachTcxIngress : kAttachNetkitPeer;
}

bool link_still_attached(int fd, int ifindex, SteeringHook hook) {
  DeviceLinkInfo info{};
  std::uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(fd, &info, &len) < 0) return false;
  const std::uint32_t want_type = hook == SteeringHook::tcx_ingress ? kLinkTypeTcx : kLinkTypeNetkit;
  // A link whose device went away reports ifindex 0 ("defunct").
  return info.type == want_type && info.attach_type == attach_type(hook) &&
         static_cast<int>(info.ifindex) == ifindex && ifindex != 0;
}

std::string feature_hint(SteeringHook hook, int err) {
  if (!hook_missing(hook, err)) return "";
  switch (hook) {
    case SteeringHook::tcx_ingress:
      return " (tcx needs Linux 6.6+; set steering.attach: tc or auto to use legacy clsact filters)";
    case SteeringHook::netkit_peer:
      return " (netkit peer programs need Linux 6.7+ and a netkit primary device)";
    case SteeringHook::tc_ingress:
      return " (this kernel lacks the clsact qdisc or cls_bpf: CONFIG_NET_CLS_ACT, CONFIG_NET_CLS_BPF)";
  }
  return "";
}

bpf_tc_hook ingress_hook(int ifindex) {
  bpf_tc_hook hook{};
  hook.sz = sizeof(hook);
  hook.ifindex = ifindex;
  hook.attach_point = BPF_TC_INGRESS;
  return hook;
}

bpf_tc_opts filter_opts() {
  bpf_tc_opts opts{};
  opts.sz = sizeof(opts);
  opts.handle = kTcHandle;
  opts.priority = kTcPriority;
  return opts;
}

// Whether the device's clsact qdisc holds any filter, either direction.
// Unknown (dump failed) counts as "in use".
bool clsact_in_use(int ifindex) {
  auto nl = pods::NetlinkSocket::open();
  if (!nl) return true;
  for (std::uint16_t minor : {TC_H_MIN_INGRESS, TC_H_MIN_EGRESS}) {
    pods::NlMessage msg(RTM_GETTFILTER, NLM_F_REQUEST);
    auto* tc = msg.header<tcmsg>();
    tc->tcm_family = AF_UNSPEC;
    tc->tcm_ifindex = ifindex;
    tc->tcm_parent = TC_H_MAKE(TC_H_CLSACT, minor);
    bool any = false;
    if (!nl->dump(
            msg, [&](const nlmsghdr*) { any = true; }, "list tc filters"))
      return true;
    if (any) return true;
  }
  return false;
}

// Deletes shunt's filter, then the clsact qdisc if it is left empty: an
// empty clsact does nothing, and `tc qdisc show` should not keep a trace of
// shunt after it is gone.
void detach_tc(int ifindex) {
  bpf_tc_hook hook = ingress_hook(ifindex);
  bpf_tc_opts opts = filter_opts();
  const int err = bpf_tc_detach(&hook, &opts);
  if (err < 0 && err != -ENOENT && err != -ENODEV && err != -EINVAL)
    spdlog::warn("steering: delete tc filter on ifindex {}: {}", ifindex, std::strerror(-err));
  if (err == -ENODEV || clsact_in_use(ifindex)) return;
  hook.attach_point = static_cast<bpf_tc_attach_point>(BPF_TC_INGRESS | BPF_TC_EGRESS);
  (void)bpf_tc_hook_destroy(&hook);
}

Status attach_tc(int prog_fd, int ifindex, const std::string& what) {
  bpf_tc_hook hook = ingress_hook(ifindex);
  if (int err = bpf_tc_hook_create(&hook); err < 0 && err != -EEXIST)
    return SysError{-err, what + ": create clsact qdisc" + feature_hint(SteeringHook::tc_ingress, -err)};
  bpf_tc_opts opts = filter_opts();
  opts.prog_fd = prog_fd;
  // REPLACE swaps an earlier run's filter at the same handle atomically.
  opts.flags = BPF_TC_F_REPLACE;
  if (int err = bpf_tc_attach(&hook, &opts); err < 0)
    return SysError{-err, what + feature_hint(SteeringHook::tc_ingress, -err)};
  return ok_status();
}

}  // namespace

std::string_view to_string(SteeringHook hook) {
  switch (hook) {
    case SteeringHook::tcx_ingress:
      return "tcx ingress";
    case SteeringHook::netkit_peer:
      return "netkit peer";
    case SteeringHook::tc_ingress:
      return "tc ingress (clsact)";
  }
  return "?";
}

std::string_view label(SteeringHook hook) {
  switch (hook) {
    case SteeringHook::tcx_ingress:
      return "tcx";
    case SteeringHook::netkit_peer:
      return "netkit_peer";
    case SteeringHook::tc_ingress:
      return "tc";
  }
  return "?";
}

bool hook_missing(SteeringHook hook, int err) {
  if (hook == SteeringHook::tc_ingress) return err == EOPNOTSUPP || err == ENOENT;
  return err == EINVAL || err == EOPNOTSUPP || err == ENXIO;
}

Result<DeviceAttachment> DeviceAttachment::attach(int prog_fd, int ifindex, const std::string& ifname,
                                                  SteeringHook hook, std::string pin_path) {
  const std::string what = "attach " + std::string(to_string(hook)) + " program to " + ifname;
  if (hook == SteeringHook::tc_ingress) {
    if (Status st = attach_tc(prog_fd, ifindex, what); !st) return st.error();
    UniqueFd prog(::fcntl(prog_fd, F_DUPFD_CLOEXEC, 3));
    if (!prog) {
      const int err = errno;
      detach_tc(ifindex);
      return SysError{err, what};
    }
    // pin() replaces an earlier run's marker: our filter replaced its filter.
    DeviceAttachment a(hook, std::move(prog), ifindex, std::move(pin_path), false, false);
    if (Status st = a.pin(); !st)
      spdlog::warn(
          "steering: {}; a crashed shunt's filter on {} would not be found and removed by the next start",
          st.error().message(), ifname);
    return a;
  }

  if (UniqueFd old(bpf_obj_get(pin_path.c_str())); old) {
    if (link_still_attached(old.get(), ifindex, hook) && bpf_link_update(old.get(), prog_fd, nullptr) == 0)
      return DeviceAttachment(hook, std::move(old), ifindex, std::move(pin_path), true, true);
    // Attached elsewhere or defunct (device re-created): let it go.
    ::unlink(pin_path.c_str());
  }
  const int fd = bpf_link_create(prog_fd, ifindex, static_cast<bpf_attach_type>(attach_type(hook)), nullptr);
  if (fd < 0) return SysError{-fd, what + feature_hint(hook, -fd)};
  return DeviceAttachment(hook, UniqueFd(fd), ifindex, std::move(pin_path), false, false);
}

DeviceAttachment::DeviceAttachment(DeviceAttachment&& other) noexcept
    : hook_(other.hook_),
      fd_(std::move(other.fd_)),
      ifindex_(std::exchange(other.ifindex_, 0)),
      pin_path_(std::move(other.pin_path_)),
      pinned_(std::exchange(other.pinned_, false)),
      keep_(other.keep_) {}

DeviceAttachment& DeviceAttachment::operator=(DeviceAttachment&& other) noexcept {
  if (this != &other) {
    release();
    hook_ = other.hook_;
    fd_ = std::move(other.fd_);
    ifindex_ = std::exchange(other.ifindex_, 0);
    pin_path_ = std::move(other.pin_path_);
    pinned_ = std::exchange(other.pinned_, false);
    keep_ = other.keep_;
  }
  return *this;
}

DeviceAttachment::~DeviceAttachment() { release(); }

// Links detach when fd_ closes (unless pinned); a tc filter must be deleted.
void DeviceAttachment::release() {
  if (ifindex_ == 0 || keep_) return;
  if (hook_ == SteeringHook::tc_ingress) {
    detach_tc(ifindex_);
    (void)unpin();
  }
  ifindex_ = 0;
}

Status DeviceAttachment::keep_after_exit(bool keep) {
  // A tc filter outlives the process by itself; its pin is only a marker.
  if (hook_ != SteeringHook::tc_ingress) {
    if (Status st = keep ? pin() : unpin(); !st) return st;
  }
  keep_ = keep;
  return ok_status();
}

Status DeviceAttachment::pin() {
  if (pinned_) return ok_status();
  if (bpf_obj_pin(fd_.get(), pin_path_.c_str()) < 0) {
    const int err = errno;
    if (err != EEXIST) return SysError{err, "pin steering program at " + pin_path_};
    // Someone left a pin here (a crashed run): ours replaces it.
    ::unlink(pin_path_.c_str());
    if (bpf_obj_pin(fd_.get(), pin_path_.c_str()) < 0)
      return SysError::from_errno("pin steering program at " + pin_path_);
  }
  pinned_ = true;
  return ok_status();
}

Status DeviceAttachment::unpin() {
  if (!pinned_) return ok_status();
  if (::unlink(pin_path_.c_str()) < 0 && errno != ENOENT) return SysError::from_errno("unpin " + pin_path_);
  pinned_ = false;
  return ok_status();
}

Status remove_tc_steering(const std::string& ifname) {
  const unsigned ifindex = ::if_nametoindex(ifname.c_str());
  if (ifindex == 0) return ok_status();
  detach_tc(static_cast<int>(ifindex));
  return ok_status();
}

}  // namespace shunt::bpf

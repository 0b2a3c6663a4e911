#include "bpf/steering_link.h"

#include <bpf/bpf.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace shunt::bpf {
namespace {

constexpr std::uint32_t kLinkTypeTcx = 11;     // BPF_LINK_TYPE_TCX
constexpr std::uint32_t kLinkTypeNetkit = 13;  // BPF_LINK_TYPE_NETKIT

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

bool still_attached(int fd, int ifindex, SteeringHook hook) {
  DeviceLinkInfo info{};
  std::uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(fd, &info, &len) < 0) return false;
  const std::uint32_t want_type = hook == SteeringHook::tcx_ingress ? kLinkTypeTcx : kLinkTypeNetkit;
  // A link whose device went away reports ifindex 0 ("defunct").
  return info.type == want_type && info.attach_type == static_cast<std::uint32_t>(hook) &&
         static_cast<int>(info.ifindex) == ifindex && ifindex != 0;
}

std::string feature_hint(SteeringHook hook, int err) {
  if (err != EINVAL && err != EOPNOTSUPP && err != ENXIO) return "";
  return hook == SteeringHook::tcx_ingress
             ? " (tcx needs Linux 6.6+; this kernel lacks it, pod steering is not attached)"
             : " (netkit peer programs need Linux 6.7+ and a netkit primary device)";
}

}  // namespace

std::string_view to_string(SteeringHook hook) {
  return hook == SteeringHook::tcx_ingress ? "tcx ingress" : "netkit peer";
}

Result<DeviceLink> DeviceLink::attach(int prog_fd, int ifindex, const std::string& ifname, SteeringHook hook,
                                      std::string pin_path) {
  const std::string what = "attach " + std::string(to_string(hook)) + " program to " + ifname;
  UniqueFd old(bpf_obj_get(pin_path.c_str()));
  if (old) {
    if (still_attached(old.get(), ifindex, hook) && bpf_link_update(old.get(), prog_fd, nullptr) == 0)
      return DeviceLink(std::move(old), std::move(pin_path), true);
    // Attached elsewhere or defunct (device re-created): let it go.
    ::unlink(pin_path.c_str());
  }
  const int fd = bpf_link_create(prog_fd, ifindex, static_cast<bpf_attach_type>(hook), nullptr);
  if (fd < 0) {
    const int err = -fd;
    return SysError{err, what + feature_hint(hook, err)};
  }
  return DeviceLink(UniqueFd(fd), std::move(pin_path), false);
}

Status DeviceLink::pin() {
  if (pinned_) return ok_status();
  if (bpf_obj_pin(fd_.get(), pin_path_.c_str()) < 0) {
    const int err = errno;
    if (err != EEXIST) return SysError{err, "pin steering link at " + pin_path_};
    // Someone left a pin here (a crashed run): ours replaces it.
    ::unlink(pin_path_.c_str());
    if (bpf_obj_pin(fd_.get(), pin_path_.c_str()) < 0)
      return SysError::from_errno("pin steering link at " + pin_path_);
  }
  pinned_ = true;
  return ok_status();
}

Status DeviceLink::unpin() {
  if (!pinned_) return ok_status();
  if (::unlink(pin_path_.c_str()) < 0 && errno != ENOENT) return SysError::from_errno("unpin " + pin_path_);
  pinned_ = false;
  return ok_status();
}

}  // namespace shunt::bpf

// Move-only owner of a bpf_link attaching a steering program to a device
// (tcx ingress or netkit peer), with optional pinning on bpffs.
//
// Why links: closing the last reference detaches the program, so a crashed
// proxy leaves nothing attached unless the link was pinned on purpose (the
// fail_closed case, see docs/steering.md).
#pragma once

#include "common/error.h"
#include "common/unique_fd.h"

#include <cstdint>
#include <string>

namespace shunt::bpf {

// bpf_attach_type values from uapi linux/bpf.h (6.6+ / 6.7+); bookworm's
// headers and libbpf 1.1 predate them.
enum class SteeringHook : std::uint32_t {
  tcx_ingress = 46,  // BPF_TCX_INGRESS
  netkit_peer = 55,  // BPF_NETKIT_PEER
};
std::string_view to_string(SteeringHook);

class DeviceLink {
 public:
  // Reuses the link pinned at `pin_path` when it is still attached to
  // `ifindex` at `hook` (swapping in `prog_fd` atomically, so there is no
  // window without a program), otherwise drops that pin and creates a new
  // link.
  static Result<DeviceLink> attach(int prog_fd, int ifindex, const std::string& ifname, SteeringHook hook,
                                   std::string pin_path);

  DeviceLink(DeviceLink&&) noexcept = default;
  DeviceLink& operator=(DeviceLink&&) noexcept = default;
  // Closing the fd detaches unless the link is pinned.
  ~DeviceLink() = default;

  Status pin();
  // Removes the pin; the link stays attached while this object lives.
  Status unpin();
  [[nodiscard]] bool pinned() const { return pinned_; }
  [[nodiscard]] const std::string& pin_path() const { return pin_path_; }

 private:
  DeviceLink(UniqueFd fd, std::string pin_path, bool pinned)
      : fd_(std::move(fd)), pin_path_(std::move(pin_path)), pinned_(pinned) {}
  UniqueFd fd_;
  std::string pin_path_;
  bool pinned_ = false;
};

}  // namespace shunt::bpf

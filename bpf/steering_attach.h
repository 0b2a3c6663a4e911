// Move-only owner of one steering program attached to one device, by
// whichever hook the kernel offers:
//
//   tcx_ingress  bpf_link, BPF_TCX_INGRESS (Linux 6.6+)
//   netkit_peer  bpf_link, BPF_NETKIT_PEER on a netkit primary (6.7+)
//   tc_ingress   legacy clsact qdisc + direct-action cls_bpf filter, for
//                kernels without tcx (or `steering.attach: tc`)
//
// The same program runs on tcx and tc: tcx verdicts (NEXT -1, PASS 0, DROP
// 2) are numerically tc's (UNSPEC, OK, SHOT).
//
// Lifetime. A link detaches when its last fd closes, so a crashed proxy
// leaves nothing attached unless it was pinned on purpose (fail_closed,
// docs/steering.md). A tc filter has no fd: it stays until deleted. So a tc
// attachment always pins its program at `pin_path` as a marker saying "shunt
// has a filter on this device" (what lets the next start, or `pod del`, find
// and remove a crashed run's filters), and keep_after_exit() decides whether
// the destructor deletes the filter.
#pragma once

#include "common/error.h"
#include "common/unique_fd.h"

#include <cstdint>
#include <string>
#include <string_view>

namespace shunt::bpf {

enum class SteeringHook { tcx_ingress, netkit_peer, tc_ingress };
std::string_view to_string(SteeringHook);  // for people: "tc ingress (clsact)"
std::string_view label(SteeringHook);      // for metric labels: "tc"

// True when `err` from attaching at `hook` means the kernel lacks the hook
// (as opposed to a bad device or a permission problem).
bool hook_missing(SteeringHook hook, int err);

class DeviceAttachment {
 public:
  // Replaces what an earlier run left at the same place (a pinned link still
  // attached to `ifindex`, a tc filter with shunt's handle) atomically, so
  // there is no window without a program; a defunct leftover is dropped.
  static Result<DeviceAttachment> attach(int prog_fd, int ifindex, const std::string& ifname,
                                         SteeringHook hook, std::string pin_path);

  DeviceAttachment(DeviceAttachment&& other) noexcept;
  DeviceAttachment& operator=(DeviceAttachment&& other) noexcept;
  DeviceAttachment(const DeviceAttachment&) = delete;
  DeviceAttachment& operator=(const DeviceAttachment&) = delete;
  // Detaches unless keep_after_exit(true) was set.
  ~DeviceAttachment();

  // true: the program stays attached after this object (and the process)
  // is gone; false: it goes with this object.
  Status keep_after_exit(bool keep);
  [[nodiscard]] bool kept_after_exit() const { return keep_; }
  [[nodiscard]] SteeringHook hook() const { return hook_; }

 private:
  DeviceAttachment(SteeringHook hook, UniqueFd fd, int ifindex, std::string pin_path, bool pinned, bool keep)
      : hook_(hook),
        fd_(std::move(fd)),
        ifindex_(ifindex),
        pin_path_(std::move(pin_path)),
        pinned_(pinned),
        keep_(keep) {}
  Status pin();
  Status unpin();
  void release();

  SteeringHook hook_;
  UniqueFd fd_;      // the link, or (tc) the program: what gets pinned
  int ifindex_ = 0;  // 0 once moved from
  std::string pin_path_;
  bool pinned_ = false;
  bool keep_ = false;
};

// Deletes shunt's tc filter from `ifname` (and the clsact qdisc when nothing
// else uses it). For `pod del` and stale-pin cleanup; a missing device or
// filter is not an error.
Status remove_tc_steering(const std::string& ifname);

}  // namespace shunt::bpf

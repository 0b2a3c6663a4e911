// Pod traffic steering: BPF on each configured pod device sends the pod's
// TCP traffic for intercepted ports to the proxy's transparent listener and
// replies to the proxy's upstream sockets (docs/steering.md).
//
// Thread-safety: one owner; start/update/destructor are not concurrent.
#pragma once

#include "bpf/steering_shared.h"
#include "common/error.h"
#include "config/config.h"
#include "policy/policy.h"

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace shunt::bpf {

// Everything that outlives the process lives here: one directory per
// steered device, holding pinned links when on_proxy_down is fail_closed.
inline constexpr const char* kSteeringPinRoot = "/sys/fs/bpf/shunt/steering";
// skb->mark bit, routing table and rule priority of the policy routing that
// delivers steered packets locally.
inline constexpr std::uint32_t kSteeringTable = 0x5348;  // "SH"
inline constexpr std::uint32_t kSteeringRulePriority = 100;

class PodSteering {  // move-only RAII: destructor detaches links and removes rules/routes it made
 public:
  // Attach steering for every pod in config.pods that has a `dev`. listener_fds: the proxy's
  // transparent listening sockets (IPv4 and/or IPv6, IP_TRANSPARENT set) that marked traffic
  // is assigned to with bpf_sk_assign; the first of each family is used (the rest are taken
  // to be its SO_REUSEPORT group, which the kernel balances over). The fds stay the caller's; closing a
  // listener removes it from steering (and, with the proxy down, on_proxy_down applies). Errors name the
  // missing kernel feature and what happens instead. A configured device that does not exist is logged and
  // skipped (steered once it exists and update() runs).
  // Everything but the deny entries comes from policy.config(); the deny entries are the policy's
  // own compiled L4 deny rules (deny_table()).
  static Result<std::unique_ptr<PodSteering>> start(const policy::Policy& policy,
                                                    std::vector<int> listener_fds);
  // Live reload: new intercept ports, new pod list, L3/L4 deny entries that BPF drops outright.
  // On error the previous state stays in force for everything not yet applied.
  Status update(const policy::Policy& policy);
  ~PodSteering();

  PodSteering(const PodSteering&) = delete;
  PodSteering& operator=(const PodSteering&) = delete;
  PodSteering(PodSteering&&) noexcept;
  PodSteering& operator=(PodSteering&&) noexcept;

  // Per-outcome packet counters summed over CPUs, e.g. {"assign_listener", 12};
  // for shunt_steering_packets_total{outcome}.
  [[nodiscard]] std::vector<std::pair<std::string, std::uint64_t>> counters() const;
  // Devices currently steered, with their hook(s), e.g. "sh-web (veth: tcx)".
  [[nodiscard]] std::vector<std::string> describe() const;
  // One entry per attached program, for shunt_steering_attachments{device,hook}:
  // hook is "tcx", "tc" (legacy clsact) or "netkit_peer".
  struct Attachment {
    std::string device;
    std::string hook;
  };
  [[nodiscard]] std::vector<Attachment> attachments() const;

  struct Impl;

 private:
  explicit PodSteering(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The BPF deny table for `policy`: its L4 deny rules (Policy::l4_denies(), selectors resolved once,
// by the policy) expanded into (source prefix, destination prefix, port) entries; no ports = every
// protocol, ports = TCP to those ports (docs/steering.md). E2BIG when over SHUNT_DENY_MAX entries.
Result<std::vector<shunt_deny_rule>> deny_table(const policy::Policy& policy);

// Drops the pinned steering of one device (what `shunt pod del` calls): with
// the pins gone the links detach. Missing pins are not an error.
Status remove_pinned_steering(const std::string& dev);

}  // namespace shunt::bpf

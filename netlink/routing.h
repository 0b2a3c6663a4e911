// Policy routing for transparent interception, as TPROXY setups do it:
//   ip rule add fwmark MARK/MARK lookup TABLE priority PRIO
//   ip route add local 0.0.0.0/0 dev lo table TABLE    (and the IPv6 pair)
// A packet carrying MARK is delivered to the local stack even though its
// destination is a pod address, so the socket BPF assigned can receive it.
#pragma once

#include "common/error.h"
#include "common/unique_fd.h"
#include "netlink/netlink.h"
#include "netlink/rtnl.h"

#include <cstdint>
#include <vector>

namespace shunt::pods {

struct PolicyRoutingSpec {
  std::uint32_t mark = 0;  // also used as the mask: one bit of skb->mark
  std::uint32_t table = 0;
  std::uint32_t priority = 0;
};

// Move-only owner of the rule and route pairs; the destructor removes them.
// Installing over leftovers of a crashed run adopts them instead of failing.
//
// The rule and route are host-wide while several shunt processes may steer
// at once (tests, a restart overlapping the old process). Each owner holds
// a shared flock on kLockPath for its lifetime; removal happens only if the
// lock can be taken exclusively, i.e. by the last owner. A crash releases
// the lock with the process.
class PolicyRouting {
 public:
  static constexpr const char* kLockPath = "/run/shunt/steering.lock";

  static Result<PolicyRouting> install(const PolicyRoutingSpec& spec);

  PolicyRouting(PolicyRouting&& other) noexcept;
  PolicyRouting& operator=(PolicyRouting&& other) noexcept;
  PolicyRouting(const PolicyRouting&) = delete;
  PolicyRouting& operator=(const PolicyRouting&) = delete;
  ~PolicyRouting();

  // Removes everything now; returns the first error (the rest is still tried).
  Status remove();
  [[nodiscard]] bool has_ipv6() const;

 private:
  PolicyRouting() = default;
  UniqueFd lock_;
  std::vector<RuleSpec> rules_;
  std::vector<RouteSpec> routes_;
};

}  // namespace shunt::pods

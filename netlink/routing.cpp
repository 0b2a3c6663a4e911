#include "netlink/routing.h"

#include <fcntl.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <spdlog/spdlog.h>

#include <utility>

namespace shunt::pods {

Result<PolicyRouting> PolicyRouting::install(const PolicyRoutingSpec& spec) {
  auto nl = NetlinkSocket::open();
  if (!nl) return nl.error();
  const int lo = static_cast<int>(::if_nametoindex("lo"));
  if (lo == 0) return SysError::from_errno("find loopback device");

  PolicyRouting pr;
  // Shared lock before installing: an owner that is removing holds it
  // exclusively, so our rule can't be deleted under us right after we add it.
  ::mkdir("/run/shunt", 0755);
  pr.lock_.reset(::open(kLockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!pr.lock_) return SysError::from_errno(std::string("open ") + kLockPath);
  if (::flock(pr.lock_.get(), LOCK_SH) < 0) return SysError::from_errno(std::string("lock ") + kLockPath);
  for (int family : {AF_INET, AF_INET6}) {
    RouteSpec route;
    route.family = family;
    route.table = spec.table;
    route.type = RTN_LOCAL;
    route.scope = RT_SCOPE_HOST;
    route.oif = lo;
    if (Status st = replace_route(*nl, route); !st) {
      // A host booted with ipv6.disable=1 has no IPv6 routing at all; IPv4
      // steering still works, so that is not fatal.
      if (family == AF_INET6 && (st.error().code == EAFNOSUPPORT || st.error().code == EOPNOTSUPP)) {
        spdlog::warn("IPv6 disabled on this host: pod steering is IPv4 only");
        continue;
      }
      return st.error();
    }
    pr.routes_.push_back(route);

    RuleSpec rule{family, spec.priority, spec.mark, spec.mark, spec.table};
    Status st = add_rule(*nl, rule);
    if (!st && st.error().code != EEXIST) return st.error();
    pr.rules_.push_back(rule);
  }
  return pr;
}

PolicyRouting::PolicyRouting(PolicyRouting&& other) noexcept
    : lock_(std::move(other.lock_)),
      rules_(std::exchange(other.rules_, {})),
      routes_(std::exchange(other.routes_, {})) {}

PolicyRouting& PolicyRouting::operator=(PolicyRouting&& other) noexcept {
  if (this != &other) {
    (void)remove();
    lock_ = std::move(other.lock_);
    rules_ = std::exchange(other.rules_, {});
    routes_ = std::exchange(other.routes_, {});
  }
  return *this;
}

PolicyRouting::~PolicyRouting() {
  if (Status st = remove(); !st) spdlog::warn("removing steering policy routing: {}", st.error().message());
}

bool PolicyRouting::has_ipv6() const {
  for (const auto& r : rules_)
    if (r.family == AF_INET6) return true;
  return false;
}

Status PolicyRouting::remove() {
  if (rules_.empty() && routes_.empty()) return ok_status();
  // Another shunt still steering keeps its shared lock: leave the rule and
  // route to it (the last one out removes them).
  if (lock_ && ::flock(lock_.get(), LOCK_EX | LOCK_NB) < 0) {
    spdlog::info("steering policy routing left in place: another shunt process still uses it");
    rules_.clear();
    routes_.clear();
    lock_.reset();
    return ok_status();
  }
  auto nl = NetlinkSocket::open();
  if (!nl) return nl.error();
  Status first = ok_status();
  // Rules first: with the rule gone nothing reaches the table any more.
  for (const auto& r : rules_) {
    Status st = delete_rule(*nl, r);
    if (!st && first) first = st;
  }
  for (const auto& r : routes_) {
    Status st = delete_route(*nl, r);
    if (!st && first) first = st;
  }
  rules_.clear();
  routes_.clear();
  lock_.reset();
  return first;
}

}  // namespace shunt::pods

#include "common/fd_limit.h"

#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

namespace shunt {

namespace {

// fs.nr_open: no process may have a hard limit above it, privileged or not.
std::uint64_t nr_open() {
  std::ifstream in("/proc/sys/fs/nr_open");
  std::uint64_t value = 0;
  if (in >> value) return value;
  return 1 << 20;  // the kernel's default
}

}  // namespace

FdBudget ensure_fd_budget(std::uint64_t max_connections) {
  FdBudget budget;
  const std::uint64_t needed = FdBudget::needed_for(max_connections);
  rlimit now{};
  if (::getrlimit(RLIMIT_NOFILE, &now) != 0) {
    budget.connections = max_connections;
    budget.shortfall = std::string("cannot read RLIMIT_NOFILE: ") + std::strerror(errno);
    return budget;
  }
  std::string why;
  if (now.rlim_cur < needed) {
    // First the hard limit as well (needs CAP_SYS_RESOURCE), then, failing
    // that, as far as the hard limit goes (allowed to anyone).
    const std::uint64_t ceiling = nr_open();
    rlimit want{std::min<rlim_t>(needed, ceiling),
                std::max<rlim_t>(now.rlim_max, std::min<rlim_t>(needed, ceiling))};
    if (::setrlimit(RLIMIT_NOFILE, &want) != 0) {
      why = std::strerror(errno);
      want = {std::min<rlim_t>(needed, now.rlim_max), now.rlim_max};
      if (want.rlim_cur > now.rlim_cur && ::setrlimit(RLIMIT_NOFILE, &want) != 0) why = std::strerror(errno);
    } else if (needed > ceiling) {
      why = "fs.nr_open is " + std::to_string(ceiling);
    }
    rlimit after{};
    if (::getrlimit(RLIMIT_NOFILE, &after) == 0) {
      budget.raised = after.rlim_cur > now.rlim_cur;
      now = after;
    }
  }
  budget.limit = now.rlim_cur;
  budget.connections = std::min(max_connections, FdBudget::connections_for(budget.limit));
  if (budget.connections < max_connections) {
    budget.shortfall = "limits.max_connections " + std::to_string(max_connections) + " needs " +
                       std::to_string(needed) + " file descriptors but RLIMIT_NOFILE stays at " +
                       std::to_string(budget.limit) + " (hard " + std::to_string(now.rlim_max) + ": " +
                       (why.empty() ? "not raised" : why) + "); holding at most " +
                       std::to_string(budget.connections) + " connections";
  }
  return budget;
}

}  // namespace shunt

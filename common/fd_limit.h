// The file-descriptor budget behind limits.max_connections. Every proxied
// connection holds two sockets (client and upstream), so a process left at
// the usual soft RLIMIT_NOFILE (1,024, or 20,000 under some service
// managers) would fail accept() with EMFILE long before the configured cap.
// `shunt run` raises its own limit at startup to what the cap needs; where
// the system does not allow that, it says so in one line and holds fewer
// connections (the acceptor enforces `connections`, refusing the rest as it
// refuses those over max_connections).
#pragma once

#include <cstdint>
#include <string>

namespace shunt {

struct FdBudget {
  // Descriptors one connection holds: its two sockets. A spliced connection
  // holds a pipe per direction on top only while bytes are in flight;
  // kFdSlack covers those and the process's own (listeners, epoll sets,
  // BPF maps and programs, admin, log, recycled pipes).
  static constexpr std::uint64_t kPerConnection = 2;
  static constexpr std::uint64_t kSlack = 1024;

  [[nodiscard]] static std::uint64_t needed_for(std::uint64_t max_connections) {
    return max_connections * kPerConnection + kSlack;
  }
  // Connections `fds` descriptors can hold.
  [[nodiscard]] static std::uint64_t connections_for(std::uint64_t fds) {
    return fds > kSlack ? (fds - kSlack) / kPerConnection : 0;
  }

  std::uint64_t limit = 0;        // the soft RLIMIT_NOFILE now in force
  std::uint64_t connections = 0;  // connections it can hold: min(max_connections, connections_for(limit))
  bool raised = false;            // this call raised the limit
  std::string shortfall;          // empty, or one line: why max_connections cannot be held and what will be
};

// Raises RLIMIT_NOFILE (soft, and the hard limit too when the process may:
// CAP_SYS_RESOURCE, up to fs.nr_open) to what `max_connections` needs.
// Never lowers it.
FdBudget ensure_fd_budget(std::uint64_t max_connections);

}  // namespace shunt

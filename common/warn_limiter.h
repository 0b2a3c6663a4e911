// At most one log line per period for an event that can repeat per
// connection (an upstream failing under load, a cap refusing a client that
// keeps connecting): the next line says how many were left out, while the
// counters and the access log still see every one. Lock-free, shared by
// every worker.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace shunt {

class WarnLimiter {
 public:
  explicit WarnLimiter(std::chrono::steady_clock::duration period = std::chrono::seconds(1))
      : period_(period.count()) {}

  // True when a line may be written now; `skipped` is then the number of
  // lines left out since the last one.
  bool allow(std::uint64_t& skipped) {
    const std::int64_t now = std::chrono::steady_clock::now().time_since_epoch().count();
    std::int64_t next = next_.load(std::memory_order_relaxed);
    if (now < next || !next_.compare_exchange_strong(next, now + period_, std::memory_order_relaxed)) {
      skipped_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    skipped = skipped_.exchange(0, std::memory_order_relaxed);
    return true;
  }

 private:
  const std::int64_t period_;
  std::atomic<std::int64_t> next_{0};
  std::atomic<std::uint64_t> skipped_{0};
};

}  // namespace shunt

#include "proxy/metrics.h"

namespace shunt::proxy {

Metrics& metrics() {
  static Metrics instance;
  return instance;
}

// Out of line (never inlined into a coroutine): the thread-local is looked
// up on the thread that makes the call. Only metrics()' single instance
// calls this, so the cached counters always belong to it.
[[gnu::noinline]] void Metrics::count_decision(const std::string& rule, bool allowed) {
  struct Last {
    std::string rule;
    std::atomic<std::uint64_t>* allow = nullptr;  // created on first use
    std::atomic<std::uint64_t>* deny = nullptr;
  };
  thread_local Last last;
  if (last.rule != rule) last = Last{rule};
  auto*& slot = allowed ? last.allow : last.deny;
  if (!slot) slot = &policy_decisions.slot(rule + '\x1f' + (allowed ? "allow" : "deny"));
  slot->fetch_add(1, std::memory_order_relaxed);
}

}  // namespace shunt::proxy

#include "proxy/metrics.h"

namespace shunt::proxy {

Metrics& metrics() {
  static Metrics instance;
  return instance;
}

// Out of line (never inlined into a coroutine): the thread-local is looked
// up on the thread that makes the call.
[[gnu::noinline]] void Metrics::count_decision(const std::string& rule, bool allowed) {
  struct Last {
    std::uint64_t owner = 0;  // Metrics::instance_id_, never reused
    std::string rule;
    std::atomic<std::uint64_t>* allow = nullptr;  // created on first use, as before
    std::atomic<std::uint64_t>* deny = nullptr;
  };
  thread_local Last last;
  if (last.owner != instance_id_ || last.rule != rule) {
    last.owner = instance_id_;
    last.rule = rule;
    last.allow = nullptr;
    last.deny = nullptr;
  }
  auto*& slot = allowed ? last.allow : last.deny;
  if (!slot) slot = &policy_decisions.slot(rule + '\x1f' + (allowed ? "allow" : "deny"));
  slot->fetch_add(1, std::memory_order_relaxed);
}

}  // namespace shunt::proxy

#include "proxy/metrics.h"

#include "bpf/sockmap.h"
#include "bpf/sockmap_shortcut.h"

namespace shunt::proxy {

namespace {

// Every label value a fallback can have, exported from 0 so rate() and
// alerts work before the first one: the kernel's refusals
// (bpf::HandoverFailure) and the two the sockmap path adds itself
// (proxy/datapath/sockmap_path.cpp).
Metrics& seeded(Metrics& m) {
  for (const auto f :
       {bpf::HandoverFailure::socket_state, bpf::HandoverFailure::map_full, bpf::HandoverFailure::other})
    m.datapath_fallbacks.slot(std::string(bpf::to_string(f)));
  for (const char* reason : {kFallbackSockmapUnavailable, kFallbackPartialHandover})
    m.datapath_fallbacks.slot(reason);
  // The endpoint short-circuit's reasons for leaving a sender on sk_skb,
  // both directions.
  for (LabeledCounter& direction : m.shortcut_fallbacks)
    for (const auto o : bpf::kCaptureFallbacks) direction.slot(std::string(bpf::to_string(o)));
  return m;
}

}  // namespace

Metrics& metrics() {
  static Metrics instance;
  static Metrics& ready = seeded(instance);
  return ready;
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
  if (!slot) slot = &policy_decisions.slot(decision_key(rule, allowed));
  slot->fetch_add(1, std::memory_order_relaxed);
}

}  // namespace shunt::proxy

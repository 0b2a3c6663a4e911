// Process-wide counters behind /metrics (SPEC.md "Admin API"). Hot-path
// counters are fixed-size atomic arrays indexed by enum; label sets that come
// from the config (rule names, fallback reasons) live in small mutex-guarded
// maps because they change only per decision, not per byte.
#pragma once

#include "config/config.h"

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace shunt::proxy {

inline constexpr std::size_t kDatapathCount = 3;  // config::Datapath values
inline std::size_t index_of(config::Datapath d) { return static_cast<std::size_t>(d); }

class LabeledCounter {
 public:
  void add(const std::string& label, std::uint64_t n = 1) {
    std::lock_guard lock(mu_);
    values_[label] += n;
  }
  [[nodiscard]] std::map<std::string, std::uint64_t> snapshot() const {
    std::lock_guard lock(mu_);
    return values_;
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::uint64_t> values_;
};

struct Metrics {
  // shunt_connections_active is derived from the registry at scrape time.
  std::atomic<std::uint64_t> connections_allowed{0};
  std::atomic<std::uint64_t> connections_denied{0};
  // Bytes per direction and data path: ConnectionRegistry::snapshot_with_totals().
  std::atomic<std::uint64_t> http_requests_allowed{0};
  std::atomic<std::uint64_t> http_requests_denied{0};
  LabeledCounter policy_decisions;  // label "rule\x1fverdict"
  std::atomic<std::uint64_t> config_generation{0};
  std::atomic<std::uint64_t> config_reloads_ok{0};
  std::atomic<std::uint64_t> config_reloads_error{0};
  LabeledCounter datapath_fallbacks;  // label: reason
  std::atomic<std::uint64_t> connections_revoked{0};
  std::atomic<std::uint64_t> buffer_boosts{0};
  std::atomic<std::uint64_t> buffer_boosts_refused{0};

  void count_decision(const std::string& rule, bool allowed) {
    policy_decisions.add(rule + '\x1f' + (allowed ? "allow" : "deny"));
  }
};

Metrics& metrics();

}  // namespace shunt::proxy

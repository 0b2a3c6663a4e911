// Process-wide counters behind /metrics (SPEC.md "Admin API"). Hot-path
// counters are fixed-size atomic arrays indexed by enum; label sets that come
// from the config (rule names, fallback reasons) live in small mutex-guarded
// maps because they change only per decision, not per byte.
#pragma once

#include "config/config.h"
#include "proxy/end_reason.h"

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

namespace shunt::proxy {

inline constexpr std::size_t kDatapathCount = 3;  // config::Datapath values
inline std::size_t index_of(config::Datapath d) { return static_cast<std::size_t>(d); }

class LabeledCounter {
 public:
  void add(const std::string& label, std::uint64_t n = 1) {
    slot(label).fetch_add(n, std::memory_order_relaxed);
  }
  // The counter behind a label; stays valid for the counter's lifetime
  // (std::map nodes do not move), so hot callers may keep it.
  std::atomic<std::uint64_t>& slot(const std::string& label) {
    std::lock_guard lock(mu_);
    return values_[label];
  }
  [[nodiscard]] std::map<std::string, std::uint64_t> snapshot() const {
    std::lock_guard lock(mu_);
    std::map<std::string, std::uint64_t> out;
    for (const auto& [label, value] : values_) out.emplace(label, value.load(std::memory_order_relaxed));
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::atomic<std::uint64_t>> values_;
};

// Connections refused at accept, before any policy work or upstream connect
// (shunt_connections_refused_total{reason}). The label is also the access
// log's `reason` for the refused connection.
enum class AcceptRefusal : std::size_t { max_connections, source_limit };
inline constexpr std::array<std::string_view, 2> kAcceptRefusalNames = {"max_connections", "source_limit"};
inline constexpr std::string_view to_string(AcceptRefusal r) {
  return kAcceptRefusalNames[static_cast<std::size_t>(r)];
}

// Why an upstream connect failed (shunt_upstream_failures_total{reason}).
// HTTP-inspected clients get 504 for connect_timeout and 502 for the others;
// the rest are reset (SPEC: an L4 or TLS-passthrough client sees the upstream
// as if it had connected directly).
enum class UpstreamFailure : std::size_t {
  connect_refused,
  connect_timeout,
  connect_unreachable,
  connect_error
};
inline constexpr std::array<std::string_view, 4> kUpstreamFailureNames = {
    "connect_refused", "connect_timeout", "connect_unreachable", "connect_error"};
inline constexpr std::string_view to_string(UpstreamFailure f) {
  return kUpstreamFailureNames[static_cast<std::size_t>(f)];
}

// shunt_datapath_fallbacks_total reasons that are not a bpf::HandoverFailure;
// proxy/datapath/sockmap_path.cpp counts them under these names.
inline constexpr const char* kFallbackSockmapUnavailable = "sockmap_unavailable";
inline constexpr const char* kFallbackPartialHandover = "partial_handover";

// shunt_takeovers_total{result}: a process counts each takeover it took part
// in, on either side (daemon/takeover.cpp); every name is exported from 0.
inline constexpr std::array<std::string_view, 4> kTakeoverResultNames = {"ok", "incompatible", "timeout",
                                                                         "failed"};

struct Metrics {
  // shunt_connections_active is derived from the registry at scrape time.
  std::atomic<std::uint64_t> connections_allowed{0};
  std::atomic<std::uint64_t> connections_denied{0};
  // Bytes per direction and data path: ConnectionRegistry::snapshot_with_totals().
  std::atomic<std::uint64_t> http_requests_allowed{0};
  std::atomic<std::uint64_t> http_requests_denied{0};
  std::atomic<std::uint64_t> http2_requests_allowed{0};  // HTTP/2 streams
  std::atomic<std::uint64_t> http2_requests_denied{0};
  // HTTP/2 streams open on client connections (each Stream of the inspector
  // counts itself from its first HEADERS to its end).
  std::atomic<std::int64_t> http2_active_streams{0};
  // GOAWAY frames shunt sent to HTTP/2 clients, by error code name
  // (no_error on drain or upstream loss; the others end a connection).
  LabeledCounter http2_goaways;
  LabeledCounter policy_decisions;  // label: decision_key(rule, allowed)
  static std::string decision_key(const std::string& rule, bool allowed) {
    return rule + '\x1f' + (allowed ? "allow" : "deny");
  }
  std::atomic<std::uint64_t> config_generation{0};
  std::atomic<std::uint64_t> config_reloads_ok{0};
  std::atomic<std::uint64_t> config_reloads_error{0};
  LabeledCounter datapath_fallbacks;  // label: reason
  // The endpoint short-circuit's reasons for leaving a direction's sender
  // on sk_skb (bpf::CaptureOutcome names), per direction (0 up, 1 down):
  // exported under shunt_datapath_fallbacks_total with a `direction` label,
  // since what they mean differs by side (a server on another node is the
  // common case, a client on another node is not).
  std::array<LabeledCounter, 2> shortcut_fallbacks;
  std::atomic<std::uint64_t> connections_revoked{0};
  std::atomic<std::uint64_t> buffer_boosts{0};
  std::atomic<std::uint64_t> buffer_boosts_refused{0};
  // Redirected by the sockmap verdict but still in the target's backlog
  // when the pair ended (proxy/datapath/sockmap_path.cpp).
  std::atomic<std::uint64_t> sockmap_backlog_dropped_bytes{0};
  // Holds of the sockmap verdict and the bytes held (sockmap_hold.h).
  std::atomic<std::uint64_t> sockmap_holds{0};
  std::atomic<std::uint64_t> sockmap_held_bytes{0};
  // Bytes the sockmap verdict cut because a segment repeated them.
  std::atomic<std::uint64_t> sockmap_repeated_bytes{0};
  // The endpoint short-circuit, per direction (0 up, 1 down), folded in
  // when a pair ends.
  struct Shortcut {
    std::atomic<std::uint64_t> bytes{0};
    std::atomic<std::uint64_t> switches{0};
    std::atomic<std::uint64_t> returns{0};
  };
  std::array<Shortcut, 2> shortcut{};
  // shunt_connection_ends_total{reason}, indexed by EndReason.
  std::array<std::atomic<std::uint64_t>, kEndReasonSlots> connection_ends{};
  std::array<std::atomic<std::uint64_t>, kAcceptRefusalNames.size()> accept_refusals{};
  std::array<std::atomic<std::uint64_t>, kUpstreamFailureNames.size()> upstream_failures{};
  std::array<std::atomic<std::uint64_t>, kTakeoverResultNames.size()> takeovers{};
  std::atomic<std::uint64_t> takeover_listeners{0};  // listening sockets handed on or received
  // Open connections handed on or adopted in takeovers, by data path
  // (config::Datapath; only sockmap pairs move so far).
  std::array<std::atomic<std::uint64_t>, 3> takeover_connections{};
  // Open connections the old process still held when a takeover's part of
  // moving them ended (its boundary window closed, or at the commit before
  // protocol version 3): they drain in the old process.
  std::atomic<std::uint64_t> takeover_connections_stayed{0};
  std::atomic<std::uint64_t> takeover_last_duration_us{0};  // hello to commit, of the last one that ended

  void count_takeover(std::string_view result) {
    for (std::size_t i = 0; i < kTakeoverResultNames.size(); ++i)
      if (kTakeoverResultNames[i] == result) takeovers[i].fetch_add(1, std::memory_order_relaxed);
  }
  void count(AcceptRefusal r) {
    accept_refusals[static_cast<std::size_t>(r)].fetch_add(1, std::memory_order_relaxed);
  }
  void count(UpstreamFailure f) {
    upstream_failures[static_cast<std::size_t>(f)].fetch_add(1, std::memory_order_relaxed);
  }

  // Once per connection (and per inspected request): the last rule's
  // counters are remembered per thread, so a run of decisions by the same
  // rule takes neither the lock nor a string allocation.
  void count_decision(const std::string& rule, bool allowed);
};

Metrics& metrics();

}  // namespace shunt::proxy

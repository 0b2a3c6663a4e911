// How the rest of shunt sees a connection while an inspector or a data path
// runs it: the access log, metrics, /connections and the reload re-check
// learn about it only through these calls. Connection implements them over
// its ConnectionInfo (proxy/connection.cpp); unit tests record them
// (tests/unit/proxy_fakes.h). Everything is called on the connection's
// thread.
//
// Why a connection ended is not reported here: inspectors and data paths
// return it (Ending, proxy/end_reason.h) and the connection records it.
#pragma once

#include "config/config.h"
#include "policy/policy.h"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shunt::proxy {

enum class Direction : std::uint8_t {
  up,    // client -> upstream
  down,  // upstream -> client
};

inline std::string_view to_string(Direction d) { return d == Direction::up ? "up" : "down"; }
// The slot of a per-direction counter (Metrics' arrays: up, then down).
constexpr std::size_t index_of(Direction d) { return static_cast<std::size_t>(d); }

// How the kernel moves a direction of a sockmap pair: the sk_skb verdict on
// shunt's socket, or the sk_msg short-circuit in the sender's own socket
// (the client's, or a local server's) for at least part of the bytes.
enum class KernelPath : std::uint8_t { none, sk_skb, sk_msg };
inline std::string_view to_string(KernelPath p) {
  switch (p) {
    case KernelPath::sk_skb:
      return "sk_skb";
    case KernelPath::sk_msg:
      return "sk_msg";
    case KernelPath::none:
      break;
  }
  return "";
}

// What a data path reports: the byte-count sink and the path's own events.
class DatapathSink {
 public:
  virtual ~DatapathSink() = default;

  // For log lines: the connection's id.
  [[nodiscard]] virtual std::uint64_t id() const = 0;
  // Bytes userspace moved (inspection, copy, splice, before a handover).
  virtual void moved(Direction direction, std::uint64_t bytes) = 0;
  // The path that carries the bytes from now on (/connections, `datapath`
  // in the access log).
  virtual void carried_by(config::Datapath path) = 0;
  // The configured path could not run and another took over:
  // shunt_datapath_fallbacks_total{reason}.
  virtual void fell_back(std::string_view reason) = 0;
  // The sender of `direction` stays on (or went back to) the sk_skb path
  // rather than the endpoint short-circuit, for `reason` (a
  // bpf::CaptureOutcome name): shunt_datapath_fallbacks_total{reason,
  // direction}.
  virtual void shortcut_fell_back(Direction direction, std::string_view reason) = 0;
  // The kernel moves the pair's bytes from now on: its counters are read
  // through the sockets' cookies until kernel_released() folds in the final
  // counts (bytes the kernel moved from each socket).
  virtual void kernel_spliced(std::uint64_t client_cookie, std::uint64_t upstream_cookie) = 0;
  virtual void kernel_released(std::uint64_t bytes_up, std::uint64_t bytes_down) = 0;
  // How the kernel moves `direction` (access log path_up/path_down).
  virtual void kernel_path(Direction direction, KernelPath path) = 0;
  // A bulk pair asked for a larger send buffer; `granted` when the budget
  // allowed it (shunt_buffer_boosts_total / _refused_total).
  virtual void buffer_boost(bool granted) = 0;
  // Bytes the kernel redirected that never reached the peer socket before
  // the pair closed (shunt_sockmap_backlog_dropped_bytes_total).
  virtual void backlog_dropped(std::uint64_t bytes) = 0;
  // The verdict held this pair's bytes `holds` times (its target's backlog
  // was over the limit) and userspace forwarded `bytes` of them
  // (shunt_sockmap_holds_total, shunt_sockmap_held_bytes_total).
  virtual void held(std::uint64_t holds, std::uint64_t bytes) = 0;
  // The verdict cut `bytes` that retransmitted segments repeated (bytes this
  // pair's sockets had received before; shunt_sockmap_repeated_bytes_total,
  // docs/datapath.md, "Repeated bytes in a retransmitted segment").
  virtual void repeated(std::uint64_t bytes) = 0;
  // The endpoint short-circuit moved `bytes` of `direction` by sk_msg; its
  // fence opened `switches` times and the sender returned to TCP `returns`
  // times (shunt_shortcut_bytes_total, _switches_total,
  // _returns_to_tcp_total, each by direction).
  virtual void short_circuited(Direction direction, std::uint64_t bytes, std::uint64_t switches,
                               std::uint64_t returns) = 0;
};

// One inspected HTTP request (HTTP/1.1 request or HTTP/2 stream) for its
// `http` access-log line; the observer adds the connection's addresses,
// pods and data path.
struct HttpExchange {
  std::string method, path, host, rule;
  bool allowed = false;
  int status = 0;  // 0: no response was seen
  std::string protocol;
  std::optional<int> grpc_status;
  std::uint64_t bytes_up = 0, bytes_down = 0;
  std::chrono::milliseconds duration{0};
  std::string reason;  // a status shunt answered itself: why (EndReason name)
  std::string error;
  // The data path named on the line; empty: the connection's current one.
  std::string datapath;
};

// What an inspector reports on top.
class ConnectionObserver : public DatapathSink {
 public:
  // A verdict (connection, ClientHello, request): the connection's rule,
  // shunt_policy_decisions_total.
  virtual void decided(const policy::Decision& decision) = 0;
  // What the verdict rests on, kept for the reload re-check (DecisionBasis).
  virtual void saw_sni(std::string sni) = 0;
  virtual void saw_request(std::string method, std::string path, std::string host,
                           std::vector<std::pair<std::string, std::string>> headers) = 0;
  // Every later request goes uninspected (handed to the data path): a
  // policy that inspects this flow again must revoke it.
  virtual void requests_uninspected() = 0;
  // HTTP/2 inspection runs the connection (/connections `protocol`).
  virtual void speaks_http2() = 0;
  // What a reload that keeps the connection, and the drain, call on the
  // control thread, so that its HTTP/2 streams are each decided again and
  // a drain's GOAWAY goes out now (empty: nothing any more). `recheck` must
  // be safe to call from any thread, and after the inspection has ended.
  virtual void rechecks_streams(std::function<void()> recheck) = 0;
  // HTTP/2 streams opened (+1) or gone (-1): shunt_http2_active_streams.
  virtual void http2_streams(int delta) = 0;
  // A GOAWAY sent to the client: shunt_http2_goaways_total{code}.
  virtual void http2_goaway(std::string_view code) = 0;
  // shunt_http_requests_total / shunt_http2_requests_total by verdict.
  virtual void counted_request(bool http2, bool allowed) = 0;
  // One `http` access-log line.
  virtual void exchanged(const HttpExchange& exchange) = 0;
};

}  // namespace shunt::proxy

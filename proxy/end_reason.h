// Why a connection ended: the access log's `reason` field and
// shunt_connection_ends_total{reason}. The first cause recorded wins (a
// reset on one side is why the other side was reset too), so every path
// that ends a connection records its cause before it acts on the sockets.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace shunt::proxy {

enum class EndReason : std::uint8_t {
  unknown,          // nothing recorded: the access log leaves the field out
  client_closed,    // the client's FIN came first; both directions completed
  upstream_closed,  // the upstream's FIN came first; both directions completed
  client_reset,     // RST or socket error on the client side (the upstream was reset)
  upstream_reset,   // RST or socket error on the upstream side (the client was reset)
  policy_deny,
  bad_request,      // malformed or ambiguous request (HTTP 400/431, bad ClientHello)
  request_timeout,  // the request head did not arrive in time (HTTP 408)
  revoked,          // a reload disallowed the open connection
  upstream_connect_failed,
  idle_timeout,
  keepalive_timeout,  // HTTP-inspected, silent between requests for timeouts.keepalive
  refuse_timeout,     // a refusal's status not delivered within timeouts.refuse (both sides reset)
  handover_failed,    // the kernel took one socket of the pair but not the other
  shutdown,           // drain at SIGTERM ran out
  proxy_error,        // an unexpected error inside shunt (logged at warn)
  proxy_loop,         // a transparent connection addressed to shunt's own listener
  taken_over,         // a takeover moved it to the new process, which logs its end (no line here)
};

inline constexpr std::array kEndReasons{
    EndReason::client_closed,   EndReason::upstream_closed,   EndReason::client_reset,
    EndReason::upstream_reset,  EndReason::policy_deny,       EndReason::bad_request,
    EndReason::request_timeout, EndReason::revoked,           EndReason::upstream_connect_failed,
    EndReason::idle_timeout,    EndReason::keepalive_timeout, EndReason::refuse_timeout,
    EndReason::handover_failed, EndReason::shutdown,          EndReason::proxy_error,
    EndReason::proxy_loop,      EndReason::taken_over,
};
inline constexpr std::size_t kEndReasonSlots = static_cast<std::size_t>(EndReason::taken_over) + 1;

constexpr std::string_view to_string(EndReason r) {
  switch (r) {
    case EndReason::unknown:
      return "unknown";
    case EndReason::client_closed:
      return "client_closed";
    case EndReason::upstream_closed:
      return "upstream_closed";
    case EndReason::client_reset:
      return "client_reset";
    case EndReason::upstream_reset:
      return "upstream_reset";
    case EndReason::policy_deny:
      return "policy_deny";
    case EndReason::bad_request:
      return "bad_request";
    case EndReason::request_timeout:
      return "request_timeout";
    case EndReason::revoked:
      return "revoked";
    case EndReason::upstream_connect_failed:
      return "upstream_connect_failed";
    case EndReason::idle_timeout:
      return "idle_timeout";
    case EndReason::keepalive_timeout:
      return "keepalive_timeout";
    case EndReason::refuse_timeout:
      return "refuse_timeout";
    case EndReason::handover_failed:
      return "handover_failed";
    case EndReason::shutdown:
      return "shutdown";
    case EndReason::proxy_error:
      return "proxy_error";
    case EndReason::proxy_loop:
      return "proxy_loop";
    case EndReason::taken_over:
      return "taken_over";
  }
  return "unknown";
}

// How an inspector or a data path saw its part of the connection end: the
// first cause it met (a reset on one side is why it reset the other) and
// the socket error behind it. It is returned, not recorded: the connection
// records it in one place (Connection::settle, proxy/connection.cpp), where
// a cause from outside (revoke, drain, idle timeout) that came first wins.
struct Ending {
  Ending() = default;
  explicit Ending(EndReason why, std::string why_error = {}, bool reset_both = false)
      : reason(why), error(std::move(why_error)), aborted(reset_both) {}

  EndReason reason = EndReason::unknown;
  std::string error;
  // The runner reset both sides itself (an upstream that broke HTTP
  // framing, a half-done handover): the connection counts as not allowed,
  // like one revoked.
  bool aborted = false;

  // Keeps the first cause; true when this call recorded it.
  bool note(EndReason why, std::string_view why_error = {}) {
    if (reason != EndReason::unknown) return false;
    reason = why;
    error = why_error;
    return true;
  }
};

}  // namespace shunt::proxy

// Why a connection ended: the access log's `reason` field and
// shunt_connection_ends_total{reason}. The first cause recorded wins (a
// reset on one side is why the other side was reset too), so every path
// that ends a connection records its cause before it acts on the sockets.
#pragma once

#include <array>
#include <cstdint>
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
};

inline constexpr std::array kEndReasons{
    EndReason::client_closed,   EndReason::upstream_closed,   EndReason::client_reset,
    EndReason::upstream_reset,  EndReason::policy_deny,       EndReason::bad_request,
    EndReason::request_timeout, EndReason::revoked,           EndReason::upstream_connect_failed,
    EndReason::idle_timeout,    EndReason::keepalive_timeout, EndReason::refuse_timeout,
    EndReason::handover_failed, EndReason::shutdown,          EndReason::proxy_error,
    EndReason::proxy_loop,
};
inline constexpr std::size_t kEndReasonSlots = static_cast<std::size_t>(EndReason::proxy_loop) + 1;

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
  }
  return "unknown";
}

}  // namespace shunt::proxy

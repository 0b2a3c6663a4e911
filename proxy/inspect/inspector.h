// The seam between a connection and its inspector. An inspector gets the
// client socket (owned), an upstream connector, the policy store (it
// decides under the snapshot current when the ClientHello or a request
// arrives, so a reload applies to the next one), the flow, an observer
// and a cancellation slot; it returns an outcome. It knows nothing of the
// connection, the registry or the process: tests drive it over loopback
// with a fake connector and observer (tests/unit/proxy_inspect_test.cpp).
#pragma once

#include <utility>  // before Asio: Boost 1.74 awaitable.hpp uses std::exchange unincluded

#include "common/cancel_slot.h"
#include "config/config.h"
#include "policy/policy.h"
#include "policy/store.h"
#include "proxy/datapath/datapath.h"
#include "proxy/end_reason.h"
#include "proxy/metrics.h"  // UpstreamFailure (header only)
#include "proxy/observer.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <chrono>
#include <optional>
#include <string>

namespace shunt::proxy {

// Opens the connection to the flow's destination when the inspector has
// decided it may (a denied request never reaches the upstream).
class UpstreamConnector {
 public:
  struct Connected {
    std::optional<boost::asio::ip::tcp::socket> socket;  // empty: the connect failed
    UpstreamFailure failure = UpstreamFailure::connect_error;
    std::string error;  // for the access log (the Ending and 502/504 lines)
  };
  virtual ~UpstreamConnector() = default;
  // Connects (from the configured source, within timeouts.connect); a
  // failure is counted and warned about here, and answering the client
  // (reset, 502/504) is the inspector's business.
  virtual boost::asio::awaitable<Connected> connect() = 0;
};

// Everything an inspector may use.
struct Inspection {
  boost::asio::ip::tcp::socket client;
  UpstreamConnector& upstream;
  const policy::Store& policy;
  policy::Flow flow;
  // Limits and timeouts, from the snapshot the connection was accepted under.
  const config::ProxySettings& settings;
  ConnectionObserver& observer;
  CancelSlot& cancel;
  // The accept: the first request head (or ClientHello) is due
  // timeouts.header after it.
  std::chrono::steady_clock::time_point started;
  // Set while the process drains (HTTP/2 sends GOAWAY).
  const std::atomic<bool>& draining;
};

struct InspectOutcome {
  // Both sockets, every byte read from either written to the other and no
  // read pending: the data path takes over. Empty: the connection is over
  // (denied, reset, or finished in userspace), both sockets closed.
  std::optional<SocketPair> handover;
  Ending ending;
};

// TLS: decides on the ClientHello's SNI (tls_inspector.cpp).
boost::asio::awaitable<InspectOutcome> inspect_tls(Inspection in);

}  // namespace shunt::proxy

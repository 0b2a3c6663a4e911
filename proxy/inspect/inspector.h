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
#include <functional>
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

// A coarse deadline for a long wait of an idle connection (the HTTP
// keep-alive), run by the worker's idle sweep rather than a timer per
// connection (proxy/idle_sweep.h): `on_due` runs on the connection's thread
// within one sweep tick after `at`, unless unwatch_quiet() came first. One
// at a time; `on_due` may watch again. Whoever watches unwatches before
// what `on_due` references goes away.
class QuietWatch {
 public:
  virtual ~QuietWatch() = default;
  virtual void watch_quiet(std::chrono::steady_clock::time_point at, std::function<void()> on_due) = 0;
  virtual void unwatch_quiet() = 0;
};

// A takeover's boundary window (takeover/late.h), as an inspector sees it:
// while requested, the inspector hands the connection back at its next
// boundary instead of waiting there (HTTP/1.1: parked once the request in
// flight is answered; TLS: client_pending while its ClientHello is
// incomplete), so that it can move to the new process. `poke`, installed
// by the inspector while it waits at a boundary, gets it out of that wait.
// One inspector at a time; on the connection's thread.
class BoundaryRequest {
 public:
  // What an inspector does when the window opens while it waits.
  class Poke {
   public:
    virtual void poke() = 0;

   protected:
    ~Poke() = default;
  };
  // A Poke from a callable (kept in the inspector's frame).
  template <typename F>
  class PokeFn final : public Poke {
   public:
    explicit PokeFn(F f) : f_(std::move(f)) {}
    void poke() override { f_(); }

   private:
    F f_;
  };

  [[nodiscard]] bool requested() const { return requested_; }
  void set(bool on) {
    requested_ = on;
    if (on && poke_) poke_->poke();
  }
  // While the returned guard lives, set(true) pokes `poke` (nothing when
  // `request` is null: the connection never moves). A plain pointer, not
  // a std::function: it is a member of every connection (issue 16).
  class Installed {
   public:
    explicit Installed(BoundaryRequest* request) : request_(request) {}
    Installed(const Installed&) = delete;
    Installed& operator=(const Installed&) = delete;
    ~Installed() {
      if (request_) request_->poke_ = nullptr;
    }

   private:
    BoundaryRequest* request_;
  };
  [[nodiscard]] static Installed install(BoundaryRequest* request, Poke& poke) {
    if (request) request->poke_ = &poke;
    return Installed(request);
  }

 private:
  Poke* poke_ = nullptr;
  bool requested_ = false;
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
  QuietWatch& quiet;
  // Null: the connection never moves in a takeover's boundary window.
  BoundaryRequest* boundary = nullptr;
};

// A connection handed back before its first decision (a boundary window,
// BoundaryRequest): a TLS one whose ClientHello is incomplete, an HTTP/1.1
// one whose first request head is (no upstream yet). The client socket, no
// read pending, and every byte read from it, none forwarded: inspect_tls
// (or inspect_http, HttpResume::initial) continues from these bytes, here
// or in the new process.
struct ClientPending {
  boost::asio::ip::tcp::socket client;
  std::string read;
};

// The connection opened with the HTTP/2 preface: the HTTP/2 inspector takes
// it from here (inspect_h2), with every byte read so far.
struct Http2Start {
  boost::asio::ip::tcp::socket client;
  std::string initial;  // the preface first
};

struct InspectOutcome {
  // Both sockets, every byte read from either written to the other and no
  // read pending: the data path takes over. Empty (and no `http2`): the
  // connection is over (denied, reset, or finished in userspace), both
  // sockets closed.
  std::optional<SocketPair> handover;
  std::optional<Http2Start> http2;
  // HTTP/1.1 keep-alive between requests (only when the caller offered to
  // hold it, HttpResume::may_park): every response delivered, nothing
  // buffered either way, no read pending, both sockets open. The caller
  // holds the pair with no coroutine and no buffer (an idle keep-alive
  // connection is most of a node's, issue 16), closes it after
  // timeouts.keepalive, and calls inspect_http again with the upstream in
  // HttpResume once either socket is readable.
  std::optional<SocketPair> parked;
  std::optional<ClientPending> client_pending;
  Ending ending;
};

// What inspect_http continues from.
struct HttpResume {
  // The caller can hold a parked connection (InspectOutcome::parked);
  // without it the inspector waits between requests itself.
  bool may_park = false;
  // How long the connection must be quiet between requests before it
  // parks: 0 parks as soon as the last answer is out (an idle connection
  // holds no session at all); a busy one (the caller's judgement) waits,
  // so a stream of keep-alive requests does not pay a park and a resume
  // each (checked on the keep-alive watch, so up to one sweep tick late).
  std::chrono::milliseconds park_after{0};
  // A parked connection's upstream, connected: the inspection goes on
  // between requests (the next head is due timeouts.header after its first
  // byte, as on any keep-alive connection). Empty: a new connection.
  std::optional<boost::asio::ip::tcp::socket> upstream;
  // A new connection handed back before its first head (ClientPending):
  // the bytes read then, parsed first (timeouts.header still counts from
  // the accept).
  std::string initial;
};

// TLS: decides on the ClientHello's SNI (tls_inspector.cpp). `initial`:
// bytes of the hello read before (ClientPending), fed first.
boost::asio::awaitable<InspectOutcome> inspect_tls(Inspection in, std::string initial = {});

// HTTP/1.1: decides every request head under the current snapshot,
// forwards what is allowed, answers 403/400/408/431/502/504 itself, and
// hands over once nothing on the connection can be denied any more
// (http_inspector.cpp has the whole story).
boost::asio::awaitable<InspectOutcome> inspect_http(Inspection in, HttpResume resume = {});

// HTTP/2 with prior knowledge, entered when inspect_http's outcome is
// `http2`; `initial` holds every byte read so far, preface first. Decides
// every stream on its own and finishes the connection in userspace: the
// outcome never hands over (h2_inspector.cpp has the whole story).
boost::asio::awaitable<InspectOutcome> inspect_h2(Inspection in, std::string initial);

}  // namespace shunt::proxy

// One proxied connection, from accept to close. The life of a connection:
//
//   accept -> original destination -> L4 decision (policy snapshot)
//     deny:    reset the client
//     inspect: HTTP/TLS inspection reads only the request head / ClientHello,
//              connects upstream when allowed, and returns once the verdict
//              can no longer change
//     allow:   connect upstream, then hand both sockets to the data path
//   data path (proxy/datapath/datapath.h): sockmap (kernel), splice, or copy
//   close -> access log line, metrics
//
// The connection wires the seams: it hands an inspector (proxy/inspect/
// inspector.h) or a data path (proxy/datapath/datapath.h) the sockets, its
// cancellation slot and itself as observer (proxy/observer.h: what the
// access log, metrics and /connections learn) and upstream connector, and
// records the Ending they return (settle). A Connection lives in one
// coroutine on one io_context thread; other threads reach it only through
// ConnectionInfo::revoke, which posts to that thread.
#pragma once

#include <utility>  // before Asio: Boost 1.74 awaitable.hpp uses std::exchange unincluded

#include "common/cancel_slot.h"
#include "common/reset.h"
#include "config/config.h"
#include "policy/policy.h"
#include "proxy/connection_registry.h"
#include "proxy/connection_transfer.h"
#include "proxy/datapath/datapath.h"
#include "proxy/idle_sweep.h"
#include "proxy/inspect/inspector.h"
#include "proxy/metrics.h"
#include "proxy/observer.h"
#include "proxy/source_limiter.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace shunt::proxy {

struct ProxyContext;
class HangupWatcher;

// Per-thread services a connection uses.
struct WorkerContext {
  boost::asio::io_context& io;
  HangupWatcher& hangups;
  IdleSweep& idle;       // timeouts.idle for every connection of the thread
  PairHandoff& handoff;  // the thread's kernel-spliced pairs, as a takeover moves them
};

struct ListenerContext {
  config::Listener listener;
};

class Connection : public std::enable_shared_from_this<Connection>,
                   public ConnectionObserver,
                   public UpstreamConnector,
                   public QuietWatch,
                   private IdleSweep::Entry,
                   private PairHandoff::Pair,
                   private PairHandoff::Inflight {
 public:
  using tcp = boost::asio::ip::tcp;

  // `peer`: the client's address as accept() returned it; `source_slot`: its
  // place under limits.max_connections_per_source, given back when the
  // connection finishes.
  Connection(ProxyContext& proxy, WorkerContext& worker, const config::Listener& listener, tcp::socket client,
             tcp::endpoint peer, SourceLimiter::Lease source_slot);

  // Runs the connection to completion; never throws. Takes the owning
  // pointer by value so the coroutine frame keeps the connection alive (a
  // member coroutine would only hold `this`, and Asio starts it lazily).
  static boost::asio::awaitable<void> run(std::shared_ptr<Connection> self);

  // A kernel-spliced connection the process this one took over handed on
  // (takeover): registered under a new id with what the old process
  // recorded; its pair starts frozen (PairHandoff) until the takeover
  // commits. On the worker's thread; returns once the pair is registered.
  // `listener` is the one it came through.
  static void adopt(ProxyContext& proxy, WorkerContext& worker, const config::Listener& listener,
                    AdoptedConnection adopted, SourceLimiter::Lease source_slot);

  // --- ConnectionObserver: what inspectors and data paths report ---
  [[nodiscard]] std::uint64_t id() const override { return info_ ? info_->id : 0; }
  void moved(Direction direction, std::uint64_t bytes) override;
  void carried_by(config::Datapath path) override;
  void fell_back(std::string_view reason) override;
  void shortcut_fell_back(Direction direction, std::string_view reason) override;
  void kernel_spliced(std::uint64_t client_cookie, std::uint64_t upstream_cookie) override;
  void kernel_released(std::uint64_t bytes_up, std::uint64_t bytes_down) override;
  void kernel_path(Direction direction, KernelPath path) override;
  void buffer_boost(bool granted) override;
  void backlog_dropped(std::uint64_t bytes) override;
  void held(std::uint64_t holds, std::uint64_t bytes) override;
  void repeated(std::uint64_t bytes) override;
  void short_circuited(Direction direction, std::uint64_t bytes, std::uint64_t switches,
                       std::uint64_t returns) override;
  void decided(const policy::Decision& decision) override;
  void saw_sni(std::string sni) override;
  void saw_request(std::string method, std::string path, std::string host,
                   std::vector<std::pair<std::string, std::string>> headers) override;
  void requests_uninspected() override;
  void speaks_http2() override;
  void rechecks_streams(std::function<void()> recheck) override;
  void http2_streams(int delta) override;
  void http2_goaway(std::string_view code) override;
  void counted_request(bool http2, bool allowed) override;
  void exchanged(const HttpExchange& exchange) override;

  // --- UpstreamConnector: to info().dst, with the configured source and
  // timeout; a failure is counted and warned about (rate-limited) ---
  boost::asio::awaitable<Connected> connect() override;

  // Called (on this connection's thread) by revoke: resets both sides and
  // cancels whatever runs the sockets. The first form records `why` as the
  // reason the connection ended (unless one is recorded already); the
  // second is for a path that has recorded its reason itself.
  void abort(EndReason why);
  void abort();
  // --- QuietWatch (inspector.h): checked by the worker's IdleSweep
  // (250 ms ticks) instead of a timer of the connection's own ---
  void watch_quiet(std::chrono::steady_clock::time_point at, std::function<void()> on_due) override;
  void unwatch_quiet() override { quiet_due_ = nullptr; }

 private:
  // Runs `body` (serve, or a parked connection's resumption) under the
  // connection's error policy, then finishes the connection unless it was
  // left detached_ (its frame holds `self` until then).
  static boost::asio::awaitable<void> drive(std::shared_ptr<Connection> self,
                                            boost::asio::awaitable<void> body);
  boost::asio::awaitable<void> serve();
  // A parked keep-alive connection whose client (or upstream) has bytes or
  // an end again: HTTP inspection goes on, between requests.
  boost::asio::awaitable<void> resume_http();
  // Holds an idle keep-alive connection (InspectOutcome::parked) as this
  // record and a readiness wait on each socket: no coroutine frame, no
  // buffer, no parser (issue 16). timeouts.keepalive runs through the
  // idle sweep (QuietWatch); revoke, idle timeout and shutdown reset the
  // sockets, which ends both waits.
  void park();
  void unpark(std::uint32_t generation, const boost::system::error_code& ec);
  // The keep-alive expired while parked: FIN both ways (nothing is owed)
  // and close; the park's waits end and finish the connection.
  void close_parked();
  // --- PairHandoff::Pair, while parked (a takeover moves the connection
  // between requests): freeze stops the park's waits and keep-alive timer,
  // thaw parks again, let_go closes this process's descriptors (not the
  // sockets' last) and finishes as taken over ---
  PairHandoff::Exported freeze() override;
  // Parked, handed back before its first decision (TLS ClientHello,
  // HTTP/1.1 first head), or (adopted) a copy/splice pair waiting to start.
  [[nodiscard]] PairKind kind() const override {
    if (parked_) return PairKind::parked_http;
    if (!client_pending_) return PairKind::userspace;
    return info_->basis.inspect == policy::Inspect::tls ? PairKind::tls_hello : PairKind::http_first;
  }
  // Only while parked or holding a pending hello: an adopted copy/splice
  // pair is frozen from its adoption until thaw() hands it to its data
  // path, which registers the pair itself.
  [[nodiscard]] bool can_freeze() const override { return parked_ || client_pending_; }
  // PairHandoff::Inflight: a takeover's boundary window opened (or closed)
  // while an inspector runs (BoundaryRequest).
  void nudge(bool on) override { boundary_.set(on); }
  // A connection handed back by its inspector before its first decision
  // (ClientPending) in a boundary window, thawed: inspected again from the
  // bytes read (in the new process, or here when the takeover failed).
  boost::asio::awaitable<void> resume_pending();
  void thaw() override;
  void let_go() override;
  [[nodiscard]] const config::ProxySettings& settings() const { return policy_->config().proxy; }
  // connect() into sockets_.upstream, for an L4 allow. On failure: records
  // the reason and error, resets the client and returns false.
  boost::asio::awaitable<bool> connect_upstream();
  // The seam an inspector is run through, over `client`.
  Inspection inspection(tcp::socket client, const policy::Flow& flow);
  // Lists the connection (registry, revoke) and starts its idle check.
  void register_open();
  [[nodiscard]] KernelSplice kernel_splice() const;
  // What the sockmap pair calls when it ends (it holds the connection).
  [[nodiscard]] std::function<void(Ending)> finish_on_end();
  // Runs the inspector `kind` asks for on the client socket; true when it
  // handed both sockets back (sockets_) for the data path. Its own
  // coroutine, so its frame (the Inspection, the outcome) is gone before
  // the data path starts.
  boost::asio::awaitable<bool> inspect(policy::Inspect kind, policy::Flow flow);
  // The configured data path on sockets_, until the connection ends.
  boost::asio::awaitable<void> forward();
  // The one place an inspector's, a data path's or the connection's own
  // ending is recorded: the first cause wins (ConnectionInfo::note_end), so
  // a revoke, drain or idle timeout that came first stays.
  void settle(const Ending& ending);
  // IdleSweep::Entry: closes the connection once no byte moved either way
  // for timeouts.idle.
  void check_idle(IdleSweep::Clock::time_point now) override;
  void finish();

  ProxyContext& proxy_;
  WorkerContext& worker_;
  config::Listener listener_;
  // The two sockets between owners: the accept's and the connect's, what an
  // inspector hands back, what the data path runs on. Kept here rather than
  // in coroutine frames, which live as long as the connection (an idle
  // spliced connection's memory is mostly its frames).
  SocketPair sockets_;
  tcp::endpoint peer_;
  std::shared_ptr<const policy::Policy> policy_;
  std::shared_ptr<ConnectionInfo> info_;
  bool allowed_ = false;
  bool aborted_ = false;
  bool finished_ = false;
  bool inspected_ = false;
  // No coroutine of this connection runs, and something else finishes it:
  // the kernel-spliced pair's callback (forward()) or the park's wake
  // (park()).
  bool detached_ = false;
  // HTTP keep-alive between requests with no coroutine (park()); the
  // generation tells a park's waits from a later park's.
  bool parked_ = false;
  // Adopted between reads of its copy or splice data path: thaw() runs
  // forward() on its sockets, with the directions closed before closed.
  bool adopted_pending_forward_ = false;
  // Handed back before its first decision (ClientPending: a TLS
  // ClientHello, an HTTP/1.1 first head): only the client socket is open;
  // the inspector continues from client_read_.
  bool client_pending_ = false;
  std::uint32_t park_generation_ = 0;
  HalfClosed adopted_closed_;
  // Frozen by a takeover while parked: nothing waits on the sockets, so
  // the connection holds itself until thawed or let go.
  std::shared_ptr<Connection> frozen_self_;
  std::chrono::steady_clock::time_point parked_at_{};  // the last park()
  // The bytes read before such a hand-back (on the heap: most connections
  // never have any, and each connection's size counts, issue 16).
  std::unique_ptr<std::string> client_read_;
  [[nodiscard]] std::string take_client_read() {
    std::string out = client_read_ ? std::move(*client_read_) : std::string();
    client_read_.reset();
    return out;
  }
  BoundaryRequest boundary_;
  CancelSlot cancel_;
  SourceLimiter::Lease source_slot_;
  // The idle check's state (check_idle): bytes at the last check and when
  // they last changed.
  std::chrono::milliseconds idle_timeout_{0};
  ConnectionBytes idle_bytes_;
  IdleSweep::Clock::time_point idle_since_{};
  IdleSweep::Clock::time_point idle_next_{};  // when the idle check is due
  IdleSweep::Clock::time_point quiet_at_{};   // watch_quiet
  std::function<void()> quiet_due_;
};

}  // namespace shunt::proxy

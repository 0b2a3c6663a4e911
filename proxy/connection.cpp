#include "proxy/connection.h"

#include "common/async.h"
#include "common/sockopt.h"
#include "common/warn_limiter.h"
#include "proxy/datapath/datapath.h"
#include "proxy/datapath/hangup_watcher.h"
#include "proxy/inspect/inspector.h"
#include "proxy/metrics.h"
#include "proxy/proxy_context.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cstring>

namespace shunt::proxy {

namespace asio = boost::asio;
using asio::use_awaitable;

namespace {

// At most one warn line per second for failed upstream connects, across all
// workers: a dead upstream under load would otherwise write a line per
// connection.
WarnLimiter upstream_failure_warnings;

UpstreamFailure classify_connect_error(const boost::system::error_code& ec, bool timed_out) {
  if (timed_out) return UpstreamFailure::connect_timeout;
  if (ec == asio::error::connection_refused) return UpstreamFailure::connect_refused;
  if (ec == asio::error::host_unreachable || ec == asio::error::network_unreachable)
    return UpstreamFailure::connect_unreachable;
  return UpstreamFailure::connect_error;
}

}  // namespace

Connection::Connection(ProxyContext& proxy, WorkerContext& worker, const config::Listener& listener,
                       tcp::socket client, tcp::endpoint peer, SourceLimiter::Lease source_slot)
    : proxy_(proxy),
      worker_(worker),
      listener_(listener),
      sockets_{std::move(client), tcp::socket(worker.io)},
      peer_(peer),
      source_slot_(std::move(source_slot)) {}

void Connection::adopt(ProxyContext& proxy, WorkerContext& worker, const config::Listener& listener,
                       AdoptedConnection adopted, SourceLimiter::Lease source_slot) {
  const TransferredConnection& t = adopted.connection;
  auto self = std::make_shared<Connection>(proxy, worker, listener, tcp::socket(worker.io), t.src,
                                           std::move(source_slot));
  self->policy_ = proxy.policy.current();
  auto info = std::make_shared<ConnectionInfo>();
  info->id = proxy.registry.next_id();
  info->listener = t.listener;
  info->src = t.src;
  info->dst = t.dst;
  info->src_pod = t.src_pod;
  info->dst_pod = t.dst_pod;
  info->started = t.started;
  info->started_wall = t.started_wall;
  info->datapath = config::Datapath::sockmap;
  info->path_up = t.path_up;
  info->path_down = t.path_down;
  info->bytes_up = t.bytes_up;
  info->bytes_down = t.bytes_down;
  info->rule = t.rule;
  info->basis = t.basis;
  info->basis.flow = policy::Flow{t.src.address(), t.dst.address(), t.dst.port()};
  self->info_ = std::move(info);
  self->allowed_ = true;
  self->inspected_ = t.basis.inspect != policy::Inspect::none;
  self->detached_ = true;
  self->register_open();
  spdlog::debug("connection {}: adopted (connection {} of the process taken over)", self->info_->id, t.id);
  if (t.kind != PairKind::kernel_spliced) {
    // Between requests (parked), between reads (copy, splice) or waiting
    // for its ClientHello (TLS, client socket only): frozen until the
    // takeover commits (thaw()).
    self->info_->datapath = t.datapath;
    auto assign = [](tcp::socket& socket, UniqueFd fd) {
      if (!fd) return;
      sockaddr_storage local{};
      socklen_t len = sizeof(local);
      ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&local), &len);
      boost::system::error_code ec;
      socket.assign(local.ss_family == AF_INET6 ? tcp::v6() : tcp::v4(), fd.get(), ec);
      if (!ec) (void)fd.release();
    };
    assign(self->sockets_.client, std::move(adopted.client));
    assign(self->sockets_.upstream, std::move(adopted.upstream));
    self->parked_ = t.kind == PairKind::parked_http;
    self->adopted_pending_forward_ = t.kind == PairKind::userspace;
    self->adopted_closed_ = HalfClosed{t.state.client_fin_forwarded, t.state.upstream_fin_forwarded};
    self->client_pending_ = t.kind == PairKind::tls_hello || t.kind == PairKind::http_first;
    if (!t.pending.empty()) self->client_read_ = std::make_unique<std::string>(t.pending);
    // The data path reads its baselines from the kernel, as after an
    // inspection (should it hand the pair to the sockmap).
    if (self->adopted_pending_forward_) self->inspected_ = true;
    self->frozen_self_ = self;
    worker.handoff.adopt_frozen(*self);
    return;
  }
  start_sockmap_adopted(std::move(adopted.client), std::move(adopted.upstream), t.state, *self, self->cancel_,
                        self->kernel_splice(), worker.io.get_executor(), self->finish_on_end());
}

asio::awaitable<void> Connection::run(std::shared_ptr<Connection> self) {
  Connection& c = *self;
  return drive(std::move(self), c.serve());
}

asio::awaitable<void> Connection::drive(std::shared_ptr<Connection> self, asio::awaitable<void> body) {
  self->detached_ = false;
  try {
    co_await std::move(body);
  } catch (const std::exception& e) {
    spdlog::warn("connection {}: {}", self->info_ ? self->info_->id : 0, e.what());
    if (self->info_) self->settle(Ending(EndReason::proxy_error, e.what()));
    reset_socket(self->sockets_.client);
    reset_socket(self->sockets_.upstream);
    self->detached_ = false;
  }
  // A pair the kernel carries on, or a parked keep-alive connection, is
  // finished from its own callback (forward(), park()).
  if (!self->detached_) self->finish();
}

void Connection::decided(const policy::Decision& decision) {
  // Revoked (the abort is on its way): keep the rule that revoked it for
  // the connection's log line.
  if (info_->end.load(std::memory_order_relaxed) == EndReason::revoked) return;
  allowed_ = decision.verdict == policy::Verdict::allow;
  {
    std::lock_guard lock(info_->mu);
    info_->rule = decision.rule;
  }
  metrics().count_decision(decision.rule, allowed_);
}

void Connection::abort(EndReason why) {
  if (info_) info_->note_end(why);
  abort();
}

void Connection::abort() {
  if (aborted_) return;
  aborted_ = true;
  allowed_ = false;
  // Frozen by a takeover, the sockets may be the other process's by now
  // (a new process that fails stops with everything it adopted, which the
  // old one takes back): thaw() resets them if this one keeps them.
  if (frozen_self_) return;
  reset_socket(sockets_.client);
  reset_socket(sockets_.upstream);
  cancel_.cancel();  // whoever holds the sockets now resets them
}

void Connection::settle(const Ending& ending) {
  if (ending.aborted) {
    // The runner reset both sides itself: counted like an abort.
    aborted_ = true;
    allowed_ = false;
  }
  if (ending.reason != EndReason::unknown) info_->note_end(ending.reason, ending.error);
}

void Connection::moved(Direction direction, std::uint64_t bytes) {
  (direction == Direction::up ? info_->bytes_up : info_->bytes_down)
      .fetch_add(bytes, std::memory_order_relaxed);
}

void Connection::carried_by(config::Datapath path) { info_->datapath = path; }

void Connection::fell_back(std::string_view reason) { metrics().datapath_fallbacks.add(std::string(reason)); }

void Connection::shortcut_fell_back(Direction direction, std::string_view reason) {
  metrics().shortcut_fallbacks[index_of(direction)].add(std::string(reason));
}

void Connection::kernel_spliced(std::uint64_t client_cookie, std::uint64_t upstream_cookie) {
  info_->client_cookie = client_cookie;
  info_->upstream_cookie = upstream_cookie;
}

void Connection::kernel_released(std::uint64_t bytes_up, std::uint64_t bytes_down) {
  // Under the connection's lock: ConnectionRegistry::bytes reads the
  // kernel's counters through the cookies under it, so a reader sees the
  // bytes either there or here, never both (which would count twice).
  std::lock_guard lock(info_->mu);
  info_->bytes_up += bytes_up;
  info_->bytes_down += bytes_down;
  info_->client_cookie = 0;
  info_->upstream_cookie = 0;
}

void Connection::kernel_path(Direction direction, KernelPath path) {
  (direction == Direction::up ? info_->path_up : info_->path_down).store(path, std::memory_order_relaxed);
}

void Connection::buffer_boost(bool granted) {
  (granted ? metrics().buffer_boosts : metrics().buffer_boosts_refused)
      .fetch_add(1, std::memory_order_relaxed);
}

void Connection::backlog_dropped(std::uint64_t bytes) {
  metrics().sockmap_backlog_dropped_bytes.fetch_add(bytes, std::memory_order_relaxed);
}

void Connection::held(std::uint64_t holds, std::uint64_t bytes) {
  metrics().sockmap_holds.fetch_add(holds, std::memory_order_relaxed);
  metrics().sockmap_held_bytes.fetch_add(bytes, std::memory_order_relaxed);
}

void Connection::repeated(std::uint64_t bytes) {
  metrics().sockmap_repeated_bytes.fetch_add(bytes, std::memory_order_relaxed);
}

void Connection::short_circuited(Direction direction, std::uint64_t bytes, std::uint64_t switches,
                                 std::uint64_t returns) {
  Metrics::Shortcut& m = metrics().shortcut[index_of(direction)];
  m.bytes.fetch_add(bytes, std::memory_order_relaxed);
  m.switches.fetch_add(switches, std::memory_order_relaxed);
  m.returns.fetch_add(returns, std::memory_order_relaxed);
}

void Connection::saw_sni(std::string sni) {
  std::lock_guard lock(info_->mu);
  info_->basis.sni = std::move(sni);
}

void Connection::saw_request(std::string method, std::string path, std::string host,
                             std::vector<std::pair<std::string, std::string>> headers) {
  std::lock_guard lock(info_->mu);
  info_->basis.last_request =
      DecisionBasis::Request{std::move(method), std::move(path), std::move(host), std::move(headers)};
}

void Connection::requests_uninspected() {
  std::lock_guard lock(info_->mu);
  info_->basis.requests_uninspected = true;
}

void Connection::speaks_http2() { info_->http2.store(true, std::memory_order_relaxed); }

void Connection::rechecks_streams(std::function<void()> recheck) {
  std::lock_guard lock(info_->mu);
  info_->recheck_streams = std::move(recheck);
}

void Connection::http2_streams(int delta) {
  metrics().http2_active_streams.fetch_add(delta, std::memory_order_relaxed);
}

void Connection::http2_goaway(std::string_view code) { metrics().http2_goaways.add(std::string(code)); }

void Connection::counted_request(bool http2, bool allowed) {
  auto& m = metrics();
  auto& counter = http2 ? (allowed ? m.http2_requests_allowed : m.http2_requests_denied)
                        : (allowed ? m.http_requests_allowed : m.http_requests_denied);
  counter.fetch_add(1, std::memory_order_relaxed);
}

void Connection::exchanged(const HttpExchange& x) {
  AccessRecord r;
  r.event = "http";
  r.src = info_->src;
  r.dst = info_->dst;
  r.src_pod = info_->src_pod;
  r.dst_pod = info_->dst_pod;
  r.allowed = x.allowed;
  r.rule = x.rule;
  r.datapath = x.datapath.empty() ? std::string(config::to_string(info_->datapath.load())) : x.datapath;
  r.bytes_up = x.bytes_up;
  r.bytes_down = x.bytes_down;
  r.duration = x.duration;
  r.reason = x.reason;
  r.error = x.error;
  r.method = x.method;
  r.path = x.path;
  r.host = x.host;
  r.status = x.status;
  r.protocol = x.protocol;
  r.grpc_status = x.grpc_status;
  proxy_.access_log.write(r);
}

void Connection::register_open() {
  std::weak_ptr<Connection> weak = shared_from_this();
  info_->revoke = [weak, executor = worker_.io.get_executor()](EndReason why) {
    asio::post(executor, [weak, why] {
      if (auto self = weak.lock()) self->abort(why);
    });
  };
  proxy_.registry.add(info_);
  // Checked a few times per idle period (IdleSweep): bytes are read from
  // the kernel's counters for spliced pairs, so no data path has to report
  // activity.
  idle_timeout_ = policy_->config().proxy.timeouts.idle;
  idle_bytes_ = proxy_.registry.bytes(*info_);
  idle_since_ = IdleSweep::Clock::now();
  const auto idle_period =
      std::max<std::chrono::milliseconds>(idle_timeout_ / 4, std::chrono::milliseconds(50));
  idle_next_ = idle_since_ + idle_period;
  worker_.idle.add(*this, idle_period);
}

std::function<void(Ending)> Connection::finish_on_end() {
  return [self = shared_from_this()](const Ending& e) {
    self->settle(e);
    self->finish();
  };
}

KernelSplice Connection::kernel_splice() const {
  return KernelSplice{proxy_.bridge.get(), proxy_.bulk_grants.get(), &worker_.hangups, proxy_.shortcut.get(),
                      info_->src_pod,      info_->dst_pod,           &worker_.handoff};
}

SHUNT_FRAME_ALLOC_WARNING_OFF  // common/async.h
asio::awaitable<void> Connection::serve() {
  policy_ = proxy_.policy.current();
  info_ = std::make_shared<ConnectionInfo>();
  info_->id = proxy_.registry.next_id();
  info_->listener = listener_.name;

  boost::system::error_code ec;
  info_->src = peer_;
  if (listener_.forward) {
    info_->dst = *listener_.forward;
  } else {
    // Transparent listener: the socket was assigned (TPROXY / bpf_sk_assign)
    // with its original destination as local address.
    info_->dst = sockets_.client.local_endpoint(ec);
    if (ec || info_->dst == listener_.listen) {
      // Connected to the listener itself: proxying would loop back to us.
      settle(Ending(EndReason::proxy_loop));
      reset_socket(sockets_.client);
      co_return;
    }
  }

  const policy::Flow flow{info_->src.address(), info_->dst.address(), info_->dst.port()};
  const policy::ConnectionDecision decision = policy_->decide_connection(flow);
  info_->src_pod = decision.src_pod;
  info_->dst_pod = decision.dst_pod;
  info_->basis.flow = flow;
  info_->basis.inspect = decision.inspect;

  register_open();

  if (decision.inspect == policy::Inspect::none) {
    decided(decision.decision);
    if (!allowed_) {
      settle(Ending(EndReason::policy_deny));
      reset_socket(sockets_.client);  // SPEC: L4 deny is a reset
      co_return;
    }
    if (!co_await connect_upstream()) co_return;
    co_await forward();
    co_return;
  }

  inspected_ = true;
  boost::system::error_code ignored;
  sockets_.client.set_option(tcp::no_delay(true), ignored);
  if (co_await inspect(decision.inspect, flow)) co_await forward();
}

Inspection Connection::inspection(tcp::socket client, const policy::Flow& flow) {
  return Inspection{.client = std::move(client),
                    .upstream = *this,
                    .policy = proxy_.policy,
                    .flow = flow,
                    .settings = settings(),
                    .observer = *this,
                    .cancel = cancel_,
                    .started = info_->started,
                    .draining = proxy_.draining,
                    .quiet = *this,
                    .boundary = &boundary_};
}

asio::awaitable<bool> Connection::inspect(policy::Inspect kind, policy::Flow flow) {
  // While an inspector runs, a takeover's boundary window reaches it
  // (nudge()); it stops being asked once it returns.
  struct Inflight {
    Connection& c;
    explicit Inflight(Connection& connection) : c(connection) { c.worker_.handoff.add_inflight(c); }
    ~Inflight() {
      c.worker_.handoff.remove_inflight(c);
      c.boundary_.set(false);
    }
  };
  InspectOutcome out;
  for (;;) {
    {
      const Inflight inflight(*this);
      if (kind == policy::Inspect::tls) {
        out = co_await inspect_tls(inspection(std::move(sockets_.client), flow), take_client_read());
      } else {
        // A parked connection comes back with its upstream (resume_http).
        HttpResume resume{.may_park = true, .upstream = std::nullopt, .initial = take_client_read()};
        if (sockets_.upstream.is_open()) {
          resume.upstream.emplace(std::move(sockets_.upstream));
          // Woken within a second of parking: a busy keep-alive client.
          // It parks again only after a second of quiet, so a stream of
          // requests does not pay a park and a resume each
          // (bench/http_park_ab: ~1.5x the proxy CPU per request when
          // every request did); an idle one parks at once.
          if (std::chrono::steady_clock::now() - parked_at_ < std::chrono::seconds(1))
            resume.park_after = std::chrono::seconds(1);
        }
        Inspection in = inspection(std::move(sockets_.client), flow);
        out = co_await inspect_http(std::move(in), std::move(resume));
      }
    }
    if (!out.client_pending) break;
    // Handed back in a boundary window before its first decision (a TLS
    // ClientHello or an HTTP/1.1 first head incomplete): frozen here until
    // the takeover collects it, or (the window closed meanwhile) inspected
    // again from the same bytes.
    settle(out.ending);
    sockets_.client = std::move(out.client_pending->client);
    client_read_ = std::make_unique<std::string>(std::move(out.client_pending->read));
    if (worker_.handoff.takes_now(kind == policy::Inspect::tls ? PairKind::tls_hello
                                                               : PairKind::http_first)) {
      client_pending_ = true;
      detached_ = true;
      worker_.handoff.add(*this);
      worker_.handoff.freeze_now(*this);
      co_return false;
    }
  }
  settle(out.ending);
  if (out.parked) {
    sockets_ = std::move(*out.parked);
    park();
    co_return false;
  }
  if (out.http2) {
    // Prior-knowledge HTTP/2: every stream is decided by the HTTP/2
    // inspector, which finishes the connection itself (never a handover).
    Http2Start h2 = std::move(*out.http2);
    out = co_await inspect_h2(inspection(std::move(h2.client), flow), std::move(h2.initial));
    settle(out.ending);
  }
  if (!out.handover) co_return false;
  sockets_ = std::move(*out.handover);
  co_return true;
}

SHUNT_FRAME_ALLOC_WARNING_ON

asio::awaitable<void> Connection::forward() {
  Ending ending;
  const HalfClosed closed = std::exchange(adopted_closed_, HalfClosed{});
  config::Datapath path = policy_->config().proxy.datapath;
  // A half-closed pair a takeover moved continues in userspace: the
  // sockmap path's FIN rule starts from two open directions.
  if (path == config::Datapath::sockmap && (closed.up || closed.down)) path = config::Datapath::splice;
  switch (path) {
    case config::Datapath::sockmap: {
      const KernelSplice kernel = kernel_splice();
      // Once the kernel has the pair, no coroutine waits on it: the pair
      // holds the connection and ends it through this callback. Named, not
      // a temporary in the co_await (GCC 12 bug, see run_sockmap).
      std::function<void(Ending)> on_end = finish_on_end();
      std::optional<Ending> ended =
          co_await start_sockmap(sockets_, *this, cancel_, kernel, inspected_, std::move(on_end));
      if (!ended) {
        detached_ = true;
        co_return;
      }
      ending = std::move(*ended);
      break;
    }
    case config::Datapath::splice:
      info_->datapath = config::Datapath::splice;
      ending = co_await run_splice(sockets_, *this, cancel_, &worker_.handoff, closed);
      break;
    case config::Datapath::copy:
      info_->datapath = config::Datapath::copy;
      ending = co_await run_copy(sockets_, *this, cancel_, &worker_.handoff, closed);
      break;
  }
  settle(ending);
}

asio::awaitable<UpstreamConnector::Connected> Connection::connect() {
  const auto& settings = policy_->config().proxy;
  Connected out;
  tcp::socket socket(worker_.io);
  // One exit for every failure: the kind and error for the caller (the
  // access log), the counter and a rate-limited warn line.
  auto fail = [&](UpstreamFailure kind, const std::string& error) {
    out.failure = kind;
    out.error = error;
    metrics().count(kind);
    std::uint64_t skipped = 0;
    if (upstream_failure_warnings.allow(skipped))
      spdlog::warn("connection {}: upstream {} failed ({}): {}{}", info_->id, config::to_string(info_->dst),
                   to_string(kind), error,
                   skipped ? fmt::format(" ({} more upstream failures in the last second)", skipped) : "");
    reset_socket(socket);
  };
  boost::system::error_code ec;
  socket.open(info_->dst.protocol(), ec);
  if (ec) {
    fail(UpstreamFailure::connect_error, "socket: " + ec.message());
    co_return out;
  }

  // Keep the pod's address as source for transparent traffic: the
  // destination sees who really called, and steering delivers its replies
  // back to this socket.
  if (listener_.transparent && settings.upstream_source == config::UpstreamSource::client) {
    const Status transparent = set_transparent(socket.native_handle(), info_->dst.address().is_v6());
    if (transparent) socket.bind(tcp::endpoint(info_->src.address(), 0), ec);
    if (!transparent || ec) {
      spdlog::warn("connection {}: cannot keep client source {} ({}); connecting from the node address",
                   info_->id, info_->src.address().to_string(),
                   !transparent ? transparent.error().message() : ec.message());
      socket.close(ec);
      socket.open(info_->dst.protocol(), ec);
    }
  }

  // The deadline and a cancel close the socket to abort the connect;
  // expired() tells the deadline's close (operation_aborted) from the
  // upstream's own answer. Both are gone before `socket` is.
  const auto on_cancel = cancel_.install([&socket] {
    boost::system::error_code ignored;
    socket.close(ignored);
  });
  Deadline deadline(worker_.io.get_executor());
  deadline.arm_after(settings.timeouts.connect, [&socket] {
    boost::system::error_code ignored;
    socket.close(ignored);
  });
  co_await socket.async_connect(info_->dst, asio::redirect_error(use_awaitable, ec));
  const bool timed_out = deadline.expired();
  deadline.disarm();
  if (cancel_.cancelled()) {
    // Revoked or shut down while connecting: the abort recorded why and
    // reset the client; the upstream did nothing wrong.
    out.error = "aborted";
    reset_socket(socket);
    co_return out;
  }
  if (ec) {
    const UpstreamFailure kind = classify_connect_error(ec, timed_out);
    fail(kind,
         kind == UpstreamFailure::connect_timeout
             ? fmt::format("no answer within timeouts.connect ({} ms)", settings.timeouts.connect.count())
             : ec.message());
    co_return out;
  }
  socket.set_option(tcp::no_delay(true), ec);
  out.socket.emplace(std::move(socket));
  co_return out;
}

asio::awaitable<bool> Connection::connect_upstream() {
  Connected upstream = co_await connect();
  if (!upstream.socket) {
    settle(Ending(EndReason::upstream_connect_failed, upstream.error));
    // SPEC: an upstream refusing means the client sees a reset.
    reset_socket(sockets_.client);
    co_return false;
  }
  sockets_.upstream = std::move(*upstream.socket);
  boost::system::error_code ignored;
  sockets_.client.set_option(tcp::no_delay(true), ignored);
  co_return true;
}

asio::awaitable<void> Connection::resume_http() {
  policy::Flow flow;
  {
    std::lock_guard lock(info_->mu);
    flow = info_->basis.flow;
  }
  if (co_await inspect(policy::Inspect::http, flow)) co_await forward();
}

asio::awaitable<void> Connection::resume_pending() {
  policy::Flow flow;
  policy::Inspect kind;
  {
    std::lock_guard lock(info_->mu);
    flow = info_->basis.flow;
    kind = info_->basis.inspect;
  }
  if (co_await inspect(kind, flow)) co_await forward();
}

void Connection::park() {
  parked_ = true;
  detached_ = true;
  parked_at_ = std::chrono::steady_clock::now();
  if (worker_.handoff.takes_now(PairKind::parked_http)) {
    // A takeover's boundary window is open: the connection moves from
    // this boundary (its request in flight has been answered), frozen
    // until the takeover collects it, rather than waiting for its next
    // request here.
    worker_.handoff.add(*this);
    worker_.handoff.freeze_now(*this);
    return;
  }
  const std::uint32_t generation = ++park_generation_;
  // Each wait holds the connection; whichever ends first resumes it (or
  // finishes it) and cancels the other, whose late completion the
  // generation turns away.
  auto self = shared_from_this();
  sockets_.client.async_wait(tcp::socket::wait_read, [self, generation](const boost::system::error_code& ec) {
    self->unpark(generation, ec);
  });
  sockets_.upstream.async_wait(tcp::socket::wait_read,
                               [self = std::move(self), generation](const boost::system::error_code& ec) {
                                 self->unpark(generation, ec);
                               });
  // A plain pointer: unpark() unwatches before the waits let go of the
  // connection.
  watch_quiet(std::chrono::steady_clock::now() + settings().timeouts.keepalive, [this] { close_parked(); });
  worker_.handoff.add(*this);
}

PairHandoff::Exported Connection::freeze() {
  frozen_self_ = shared_from_this();
  ++park_generation_;  // the waits' completions (cancelled now) are turned away
  unwatch_quiet();
  boost::system::error_code ignored;
  sockets_.client.cancel(ignored);
  sockets_.upstream.cancel(ignored);
  PairHandoff::Exported e;
  e.connection_id = info_->id;
  e.client_fd = sockets_.client.native_handle();
  e.upstream_fd = sockets_.upstream.native_handle();
  e.kind = kind();
  // A connection's first bytes before its decision (its upstream_fd is -1).
  if (client_read_) e.pending = *client_read_;
  // The cookies name the sockets, which the new process checks.
  auto client = bpf::socket_cookie(e.client_fd);
  e.state.client_cookie = client ? *client : 0;
  if (e.upstream_fd >= 0)
    if (auto upstream = bpf::socket_cookie(e.upstream_fd)) e.state.upstream_cookie = *upstream;
  return e;
}

void Connection::thaw() {
  const auto self = std::move(frozen_self_);  // park()'s waits (or forward()'s frame) hold it from here
  if (aborted_) {
    // Revoked, timed out or shut down while frozen (abort()).
    parked_ = false;
    adopted_pending_forward_ = false;
    client_pending_ = false;
    reset_socket(sockets_.client);
    reset_socket(sockets_.upstream);
    cancel_.cancel();
    finish();
    return;
  }
  if (adopted_pending_forward_) {
    // Its data path registers the pair itself from here (join.h).
    worker_.handoff.remove(*this);
    adopted_pending_forward_ = false;
    detached_ = false;
    guarded_spawn(worker_.io, "connection", drive(self, forward()), Failure::survivable);
    return;
  }
  if (client_pending_) {
    // The ClientHello or first request is decided here (the new process)
    // or again here (a takeover that failed), from the bytes read so far.
    worker_.handoff.remove(*this);
    client_pending_ = false;
    detached_ = false;
    guarded_spawn(worker_.io, "connection", drive(self, resume_pending()), Failure::survivable);
    return;
  }
  park();
}

void Connection::let_go() {
  const auto self = std::move(frozen_self_);
  worker_.handoff.remove(*this);
  parked_ = false;
  client_pending_ = false;
  // release(): out of this process's epoll; the close is not the sockets'
  // last (the new process holds them), so neither peer sees anything.
  for (tcp::socket* s : {&sockets_.client, &sockets_.upstream}) {
    boost::system::error_code ec;
    const int fd = s->release(ec);
    if (!ec && fd >= 0) ::close(fd);
  }
  settle(Ending(EndReason::taken_over));
  finish();
}

void Connection::unpark(std::uint32_t generation, const boost::system::error_code& ec) {
  if (!parked_ || generation != park_generation_) return;
  parked_ = false;
  worker_.handoff.remove(*this);
  const bool resumed = guarded_call("parked connection", [&] {
    unwatch_quiet();
    boost::system::error_code ignored;
    sockets_.client.cancel(ignored);  // the other wait
    sockets_.upstream.cancel(ignored);
    if (ec || aborted_ || finished_ || !sockets_.client.is_open() || !sockets_.upstream.is_open()) {
      // Closed or reset under the park (keep-alive expiry, revoke, idle
      // timeout, shutdown): the cause is recorded already.
      sockets_.client.close(ignored);
      sockets_.upstream.close(ignored);
      finish();
      return;
    }
    guarded_spawn(worker_.io, "connection", drive(shared_from_this(), resume_http()), Failure::survivable);
  });
  if (!resumed) {
    guarded_call("parked connection", [&] {
      settle(Ending(EndReason::proxy_error, "parked connection failed"));
      reset_socket(sockets_.client);
      reset_socket(sockets_.upstream);
      finish();
    });
  }
}

void Connection::close_parked() {
  if (!parked_) return;
  spdlog::debug("connection {}: no request for {} ms; closing", info_->id,
                settings().timeouts.keepalive.count());
  settle(Ending(EndReason::keepalive_timeout));
  boost::system::error_code ignored;
  sockets_.client.shutdown(tcp::socket::shutdown_send, ignored);
  sockets_.upstream.shutdown(tcp::socket::shutdown_send, ignored);
  sockets_.client.close(ignored);
  sockets_.upstream.close(ignored);
}

void Connection::watch_quiet(std::chrono::steady_clock::time_point at, std::function<void()> on_due) {
  quiet_at_ = at;
  quiet_due_ = std::move(on_due);
  next_check = std::min(next_check, at);
}

void Connection::check_idle(IdleSweep::Clock::time_point now) {
  if (finished_ || aborted_) return;
  if (quiet_due_ && now >= quiet_at_) {
    // Moved out first: the callback may watch again.
    auto due = std::move(quiet_due_);
    quiet_due_ = nullptr;
    due();
    if (aborted_) return;
  }
  if (now >= idle_next_) {
    idle_next_ = now + std::max<std::chrono::milliseconds>(idle_timeout_ / 4, std::chrono::milliseconds(50));
    const ConnectionBytes bytes = proxy_.registry.bytes(*info_);
    if (bytes.up != idle_bytes_.up || bytes.down != idle_bytes_.down) {
      idle_bytes_ = bytes;
      idle_since_ = now;
    } else if (now - idle_since_ >= idle_timeout_) {
      spdlog::debug("connection {}: idle for {} ms, closing", info_->id, idle_timeout_.count());
      abort(EndReason::idle_timeout);
      return;
    }
  }
  next_check = quiet_due_ ? std::min(idle_next_, quiet_at_) : idle_next_;
}

void Connection::finish() {
  if (finished_ || !info_) return;
  finished_ = true;
  worker_.idle.remove(*this);
  worker_.handoff.remove(*this);
  source_slot_.release();  // the pod may open another one now
  const ConnectionBytes bytes = proxy_.registry.bytes(*info_);
  proxy_.registry.retire(info_->id, info_->datapath.load(), bytes);

  auto& m = metrics();
  (allowed_ ? m.connections_allowed : m.connections_denied).fetch_add(1, std::memory_order_relaxed);
  const EndReason end = info_->end.load(std::memory_order_relaxed);
  if (end != EndReason::unknown)
    m.connection_ends[static_cast<std::size_t>(end)].fetch_add(1, std::memory_order_relaxed);
  // Its one line comes from the process it moved to, when it ends there.
  if (end == EndReason::taken_over) return;
  if (!proxy_.access_log.enabled()) return;

  AccessRecord record;
  record.src = info_->src;
  record.dst = info_->dst;
  record.src_pod = info_->src_pod;
  record.dst_pod = info_->dst_pod;
  record.allowed = allowed_;
  record.rule = info_->rule_name();
  record.datapath = std::string(config::to_string(info_->datapath.load()));
  record.path_up = std::string(to_string(info_->path_up.load()));
  record.path_down = std::string(to_string(info_->path_down.load()));
  record.bytes_up = bytes.up;
  record.bytes_down = bytes.down;
  record.duration = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                          info_->started);
  if (end != EndReason::unknown) {
    record.reason = std::string(to_string(end));
    std::lock_guard lock(info_->mu);
    record.error = info_->end_error;
  }
  proxy_.access_log.write(record);
}

}  // namespace shunt::proxy

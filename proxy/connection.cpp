#include "proxy/connection.h"

#include "common/async.h"
#include "common/sockopt.h"
#include "common/warn_limiter.h"
#include "proxy/datapath/datapath.h"
#include "proxy/hangup_watcher.h"
#include "proxy/inspect/inspect.h"
#include "proxy/metrics.h"
#include "proxy/proxy_context.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
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

void reset_socket(asio::ip::tcp::socket& socket) {
  if (!socket.is_open()) return;
  boost::system::error_code ec;
  socket.set_option(asio::socket_base::linger(true, 0), ec);
  socket.close(ec);
}

void reset_fd(int fd) {
  // A failure leaves a close that sends FIN instead of RST; the peer still
  // sees the end, so it is logged, not escalated.
  if (Status st = set_socket_option(fd, SOL_SOCKET, SO_LINGER, linger{1, 0}, "SO_LINGER"); !st)
    spdlog::debug("reset of fd {}: {}", fd, st.error().message());
}

Connection::Connection(ProxyContext& proxy, WorkerContext& worker, const config::Listener& listener,
                       tcp::socket client, tcp::endpoint peer, SourceLimiter::Lease source_slot)
    : proxy_(proxy),
      worker_(worker),
      listener_(listener),
      client_(std::move(client)),
      upstream_(worker.io),
      peer_(peer),
      source_slot_(std::move(source_slot)) {}

asio::awaitable<void> Connection::run(std::shared_ptr<Connection> self) {
  try {
    co_await self->serve();
  } catch (const std::exception& e) {
    spdlog::warn("connection {}: {}", self->info_ ? self->info_->id : 0, e.what());
    if (self->info_) self->info_->note_end(EndReason::proxy_error, e.what());
    reset_socket(self->client_);
    reset_socket(self->upstream_);
  }
  self->finish();
}

void Connection::set_rule(const policy::Decision& decision) {
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
  reset_socket(client_);
  reset_socket(upstream_);
  if (abort_hook_) abort_hook_();
}

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
    info_->dst = client_.local_endpoint(ec);
    if (ec || info_->dst == listener_.listen) {
      // Connected to the listener itself: proxying would loop back to us.
      info_->note_end(EndReason::proxy_loop);
      reset_socket(client_);
      co_return;
    }
  }

  const policy::Flow flow{info_->src.address(), info_->dst.address(), info_->dst.port()};
  const policy::ConnectionDecision decision = policy_->decide_connection(flow);
  info_->src_pod = decision.src_pod;
  info_->dst_pod = decision.dst_pod;
  info_->basis.flow = flow;
  info_->basis.inspect = decision.inspect;

  std::weak_ptr<Connection> weak = shared_from_this();
  auto executor = co_await asio::this_coro::executor;
  info_->revoke = [weak, executor](EndReason why) {
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

  if (decision.inspect == policy::Inspect::none) {
    set_rule(decision.decision);
    if (!allowed_) {
      info_->note_end(EndReason::policy_deny);
      reset_socket(client_);  // SPEC: L4 deny is a reset
      co_return;
    }
    if (!co_await connect_upstream()) co_return;
    co_await run_datapath();
    co_return;
  }

  inspected_ = true;
  const bool continue_on_datapath =
      decision.inspect == policy::Inspect::http ? co_await inspect_http(*this) : co_await inspect_tls(*this);
  if (continue_on_datapath && !aborted_) co_await run_datapath();
}

asio::awaitable<bool> Connection::connect_upstream(bool keep_client) {
  const auto& settings = policy_->config().proxy;
  // One exit for every failure: reason and error for the access log, the
  // counter, a rate-limited warn line, and the client reset unless the
  // caller answers it itself.
  auto fail = [&](UpstreamFailure kind, const std::string& error) {
    connect_failure_ = kind;
    info_->note_end(EndReason::upstream_connect_failed, error);
    metrics().count(kind);
    std::uint64_t skipped = 0;
    if (upstream_failure_warnings.allow(skipped))
      spdlog::warn("connection {}: upstream {} failed ({}): {}{}", info_->id, config::to_string(info_->dst),
                   to_string(kind), error,
                   skipped ? fmt::format(" ({} more upstream failures in the last second)", skipped) : "");
    if (!keep_client) reset_socket(client_);  // SPEC: upstream refusing = the client sees a reset
    reset_socket(upstream_);
  };
  boost::system::error_code ec;
  upstream_.open(info_->dst.protocol(), ec);
  if (ec) {
    fail(UpstreamFailure::connect_error, "socket: " + ec.message());
    co_return false;
  }

  // Keep the pod's address as source for transparent traffic: the
  // destination sees who really called, and steering delivers its replies
  // back to this socket.
  if (listener_.transparent && settings.upstream_source == config::UpstreamSource::client) {
    const Status transparent = set_transparent(upstream_.native_handle(), info_->dst.address().is_v6());
    if (transparent) upstream_.bind(tcp::endpoint(info_->src.address(), 0), ec);
    if (!transparent || ec) {
      spdlog::warn("connection {}: cannot keep client source {} ({}); connecting from the node address",
                   info_->id, info_->src.address().to_string(),
                   !transparent ? transparent.error().message() : ec.message());
      upstream_.close(ec);
      upstream_.open(info_->dst.protocol(), ec);
    }
  }

  // The deadline closes the socket to abort a connect that takes too long;
  // expired() tells that close (operation_aborted) from the upstream's own
  // answer.
  Deadline deadline(worker_.io.get_executor());
  deadline.arm_after(settings.timeouts.connect, [this, self = shared_from_this()] {
    boost::system::error_code ignored;
    upstream_.close(ignored);
  });
  co_await upstream_.async_connect(info_->dst, asio::redirect_error(use_awaitable, ec));
  const bool timed_out = deadline.expired();
  deadline.disarm();
  if (aborted_) {
    // Revoked or shut down while connecting: abort() recorded why and reset
    // both sides; the upstream did nothing wrong.
    info_->note_end(EndReason::upstream_connect_failed, "aborted");
    co_return false;
  }
  if (ec) {
    const UpstreamFailure kind = classify_connect_error(ec, timed_out);
    fail(kind,
         kind == UpstreamFailure::connect_timeout
             ? fmt::format("no answer within timeouts.connect ({} ms)", settings.timeouts.connect.count())
             : ec.message());
    co_return false;
  }
  upstream_.set_option(tcp::no_delay(true), ec);
  client_.set_option(tcp::no_delay(true), ec);
  co_return true;
}

asio::awaitable<void> Connection::run_datapath() {
  switch (policy_->config().proxy.datapath) {
    case config::Datapath::sockmap:
      co_await run_sockmap(*this);
      break;
    case config::Datapath::splice:
      info_->datapath = config::Datapath::splice;
      co_await run_splice(*this);
      break;
    case config::Datapath::copy:
      info_->datapath = config::Datapath::copy;
      co_await run_copy(*this);
      break;
  }
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
  source_slot_.release();  // the pod may open another one now
  const ConnectionBytes bytes = proxy_.registry.bytes(*info_);
  proxy_.registry.retire(info_->id, info_->datapath.load(), bytes);

  auto& m = metrics();
  (allowed_ ? m.connections_allowed : m.connections_denied).fetch_add(1, std::memory_order_relaxed);
  const EndReason end = info_->end.load(std::memory_order_relaxed);
  if (end != EndReason::unknown)
    m.connection_ends[static_cast<std::size_t>(end)].fetch_add(1, std::memory_order_relaxed);
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

#include "proxy/server.h"

#include "bpf/features.h"
#include "common/async.h"
#include "common/error.h"
#include "common/sockopt.h"
#include "common/warn_limiter.h"
#include "proxy/connection.h"
#include "proxy/datapath/hangup_watcher.h"
#include "proxy/metrics.h"

#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <array>
#include <atomic>
#include <future>
#include <optional>

namespace shunt::proxy {

namespace asio = boost::asio;
using asio::ip::tcp;

Worker::Worker()
    : hangups(std::make_unique<HangupWatcher>(io)),
      idle(std::make_unique<IdleSweep>(io)),
      context{io, *hangups, *idle, handoff} {}
Worker::~Worker() {
  if (thread.joinable()) thread.join();
}

namespace {

std::unique_ptr<tcp::acceptor> bind_listener(asio::io_context& io, const config::Listener& listener,
                                             bool reuseport) {
  auto acceptor = std::make_unique<tcp::acceptor>(io);
  boost::system::error_code ec;
  const auto& ep = listener.listen;
  acceptor->open(ep.protocol(), ec);
  if (ec) throw StartupError(kExitEnvironment, "listener " + listener.name + ": socket: " + ec.message());
  acceptor->set_option(tcp::acceptor::reuse_address(true), ec);
  if (reuseport) {
    if (Status st = set_socket_option(acceptor->native_handle(), SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT");
        !st)
      throw StartupError(kExitEnvironment, "listener " + listener.name + ": " + st.error().message());
  }
  if (ep.address().is_v6()) acceptor->set_option(asio::ip::v6_only(true), ec);
  if (listener.transparent) {
    // Connections assigned by BPF steering (or TPROXY) carry their original,
    // non-local destination as the local address.
    if (!set_transparent(acceptor->native_handle(), ep.address().is_v6()))
      throw StartupError(
          kExitEnvironment,
          "listener " + listener.name + ": IP_TRANSPARENT needs CAP_NET_ADMIN (run as root or grant it)");
  }
  acceptor->bind(ep, ec);
  if (ec)
    throw StartupError(kExitEnvironment,
                       "listener " + listener.name + ": bind " + config::to_string(ep) + ": " + ec.message());
  acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw StartupError(kExitEnvironment, "listener " + listener.name + ": listen: " + ec.message());
  return acceptor;
}

// A socket the previous process bound and listens on (takeover/): checked to
// be what the listener says, then accepted from as if bound here.
std::unique_ptr<tcp::acceptor> adopt_listener(asio::io_context& io, const config::Listener& listener,
                                              UniqueFd fd) {
  const std::string what = "listener " + listener.name + ": inherited socket: ";
  int listening = 0;
  socklen_t len = sizeof(listening);
  if (::getsockopt(fd.get(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0 || listening == 0)
    throw StartupError(kExitEnvironment, what + "not a listening socket");
  auto acceptor = std::make_unique<tcp::acceptor>(io);
  boost::system::error_code ec;
  acceptor->assign(listener.listen.protocol(), fd.get(), ec);
  if (ec) throw StartupError(kExitEnvironment, what + ec.message());
  fd.release();
  if (acceptor->local_endpoint(ec) != listener.listen || ec)
    throw StartupError(kExitEnvironment,
                       what + "bound to another address than " + config::to_string(listener.listen));
  if (listener.transparent && !set_transparent(acceptor->native_handle(), listener.listen.address().is_v6()))
    throw StartupError(kExitEnvironment, what + "IP_TRANSPARENT needs CAP_NET_ADMIN");
  return acceptor;
}

}  // namespace

Server::Server(ProxyContext& context, const config::Config& config, unsigned threads,
               InheritedSockets inherited)
    : context_(context), listeners_(config.proxy.listeners) {
  threads = std::max(1u, threads);
  // Kernels before 6.5 refuse bpf_sk_assign to SO_REUSEPORT sockets: there a
  // transparent listener is bound once, by the first worker, which hands
  // what it accepts to the workers in turn.
  const bool shared_transparent = !bpf::sk_assign_takes_reuseport();
  for (unsigned i = 0; i < threads; ++i) workers_.push_back(std::make_unique<Worker>());
  for (std::size_t l = 0; l < listeners_.size(); ++l) {
    const auto& listener = listeners_[l];
    const bool single = listener.transparent && shared_transparent;
    std::vector<UniqueFd> sockets;
    if (auto it = inherited.find(config::to_string(listener.listen)); it != inherited.end()) {
      sockets = std::move(it->second);
      inherited.erase(it);
    }
    for (unsigned i = 0; i < threads; ++i) {
      auto& acceptors = workers_[i]->acceptors;
      if (i < sockets.size())
        acceptors.push_back(adopt_listener(workers_[i]->io, listener, std::move(sockets[i])));
      else
        acceptors.push_back(single && i > 0 ? nullptr : bind_listener(workers_[i]->io, listener, !single));
    }
    for (std::size_t k = threads; k < sockets.size(); ++k) {
      Worker& w = single ? *workers_[0] : *workers_[k % threads];
      w.extra_acceptors.emplace_back(l, adopt_listener(w.io, listener, std::move(sockets[k])));
    }
    if (!sockets.empty())
      spdlog::info("listener {} on {}: accepting from {} inherited socket(s)", listener.name,
                   config::to_string(listener.listen), sockets.size());
  }
  for (const auto& [endpoint, fds] : inherited)
    spdlog::warn(
        "takeover: {} inherited socket(s) on {} match no listener of this config: closed (connections still "
        "in "
        "their backlog are reset)",
        fds.size(), endpoint);
  for (const auto& worker : workers_) {
    for (std::size_t l = 0; l < listeners_.size(); ++l)
      if (worker->acceptors[l])
        sockets_.push_back({listeners_[l].name, config::to_string(listeners_[l].listen),
                            listeners_[l].transparent, worker->acceptors[l]->native_handle()});
    for (const auto& [l, acceptor] : worker->extra_acceptors)
      sockets_.push_back({listeners_[l].name, config::to_string(listeners_[l].listen),
                          listeners_[l].transparent, acceptor->native_handle()});
  }
  for (const auto& l : listeners_)
    if (l.transparent && shared_transparent && threads > 1)
      spdlog::info(
          "listener {}: one acceptor handing connections to {} workers (kernel before 6.5: "
          "bpf_sk_assign cannot pick a SO_REUSEPORT listener)",
          l.name, threads);
}

Server::~Server() { stop(); }

void Server::start(bool accept) {
  for (auto& worker : workers_) {
    worker->thread = std::thread([w = worker.get()] {
      auto guard = asio::make_work_guard(w->io);
      w->io.run();
    });
  }
  if (accept) start_accepting();
  for (const auto& l : listeners_) {
    spdlog::info("listener {} on {} ({}){}", l.name, config::to_string(l.listen),
                 l.forward ? "forward to " + config::to_string(*l.forward) : std::string("transparent"),
                 accept ? "" : ": accepting once the takeover committed");
  }
}

void Server::start_accepting() {
  for (auto& worker : workers_) {
    asio::post(worker->io, [this, w = worker.get()] {
      for (std::size_t i = 0; i < listeners_.size(); ++i)
        if (w->acceptors[i]) accept_loop(*w, i, w->acceptors[i].get());
      for (auto& [i, acceptor] : w->extra_acceptors) accept_loop(*w, i, acceptor.get());
    });
  }
  listening_ = true;
}

void Server::accept_loop(Worker& worker, std::size_t listener_index, tcp::acceptor* acceptor) {
  // A listener only the first worker binds: its acceptor serves every worker.
  const bool for_all_workers = workers_.size() > 1 && !workers_[1]->acceptors[listener_index];
  // Fatal: a listener whose loop has ended accepts nothing more while the
  // process looks healthy.
  guarded_spawn(worker.io, "acceptor loop",
                accept_connections(&worker, acceptor, listeners_[listener_index], for_all_workers),
                Failure::fatal);
}

namespace {
// One warn line per second per cap: a full proxy or a client that keeps
// connecting over its cap would otherwise write a line per attempt.
std::array<WarnLimiter, kAcceptRefusalNames.size()> refusal_warnings;
}  // namespace

// Resets a connection a limit refused, counts it and logs it: a warn line at
// most once a second per cap (saying how many were left out), and an
// access-log line per attempt (the access log drops its oldest lines rather
// than slow the acceptor down).
void Server::refuse_at_accept(const policy::Policy& policy, const config::Listener& listener,
                              tcp::socket& socket, const tcp::endpoint& peer, AcceptRefusal why,
                              std::uint64_t cap) {
  metrics().count(why);
  std::uint64_t skipped = 0;
  if (refusal_warnings[static_cast<std::size_t>(why)].allow(skipped)) {
    const std::string others = skipped ? fmt::format(" ({} more refused in the last second)", skipped) : "";
    if (why == AcceptRefusal::max_connections)
      spdlog::warn("listener {}: {} refused: {} connections open, the limit{}", listener.name,
                   config::to_string(peer), cap, others);
    else
      spdlog::warn("listener {}: {} refused: the source holds limits.max_connections_per_source ({}){}",
                   listener.name, config::to_string(peer), cap, others);
  }
  if (context_.access_log.enabled()) {
    boost::system::error_code ec;
    AccessRecord record;
    record.src = peer;
    record.dst = listener.forward ? *listener.forward : socket.local_endpoint(ec);
    record.src_pod = policy.pod_name(peer.address());
    record.dst_pod = policy.pod_name(record.dst.address());
    record.allowed = false;
    record.reason = std::string(to_string(why));
    context_.access_log.write(record);
  }
  reset_socket(socket);
}

// A coroutine's parameters live in its frame (a lambda's captures would not).
asio::awaitable<void> Server::accept_connections(Worker* worker, tcp::acceptor* acceptor,
                                                 config::Listener listener, bool for_all_workers) {
  std::size_t turn = 0;
  for (;;) {
    boost::system::error_code ec;
    // The connection lives on the worker whose io_context its socket uses.
    Worker* target = for_all_workers ? workers_[turn++ % workers_.size()].get() : worker;
    // The peer address comes with accept(): no getpeername() per connection.
    tcp::endpoint peer;
    tcp::socket socket =
        co_await acceptor->async_accept(target->io, peer, asio::redirect_error(asio::use_awaitable, ec));
    if (ec == asio::error::operation_aborted || !acceptor->is_open()) co_return;
    if (ec) {
      // EMFILE and friends: back off briefly instead of spinning.
      spdlog::warn("listener {}: accept: {}", listener.name, ec.message());
      asio::steady_timer pause(worker->io, std::chrono::milliseconds(50));
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    // Limits are checked before anything else is spent on the connection:
    // no policy decision, no upstream connect, no buffer.
    const auto policy = context_.policy.current();
    const config::Limits& limits = policy->config().proxy.limits;
    std::optional<AcceptRefusal> refusal;
    SourceLimiter::Lease slot;
    const std::uint64_t cap = std::min<std::uint64_t>(
        limits.max_connections, context_.fd_connection_cap.load(std::memory_order_relaxed));
    if (context_.registry.size() >= cap) {
      refusal = AcceptRefusal::max_connections;
    } else {
      slot = context_.sources.acquire(peer.address(), limits.max_connections_per_source);
      if (!slot.held()) refusal = AcceptRefusal::source_limit;
    }
    if (refusal) {
      refuse_at_accept(*policy, listener, socket, peer, *refusal,
                       *refusal == AcceptRefusal::max_connections ? cap : limits.max_connections_per_source);
      continue;
    }
    auto conn = std::make_shared<Connection>(context_, target->context, listener, std::move(socket), peer,
                                             std::move(slot));
    guarded_spawn(target->io, "connection", Connection::run(std::move(conn)), Failure::survivable);
  }
}

void Server::stop_accepting() {
  for (auto& worker : workers_) {
    asio::post(worker->io, [w = worker.get()] {
      for (auto& acceptor : w->acceptors) {
        boost::system::error_code ec;
        if (acceptor) acceptor->close(ec);
      }
      for (auto& extra : w->extra_acceptors) {
        boost::system::error_code ec;
        extra.second->close(ec);
      }
    });
  }
  listening_ = false;
}

// release(), not close(): it takes the socket out of this process's epoll
// explicitly. close() would leave the registration behind (the socket lives
// on in the new process), and this epoll would keep waking for its SYNs.
void Server::pause_accepting() {
  for (auto& worker : workers_) {
    asio::post(worker->io, [w = worker.get()] {
      auto pause = [w](tcp::acceptor* a) {
        boost::system::error_code ec;
        if (!a->is_open()) return;
        const int fd = a->release(ec);
        if (!ec) w->paused.emplace_back(a, UniqueFd(fd));
      };
      for (auto& acceptor : w->acceptors)
        if (acceptor) pause(acceptor.get());
      for (auto& extra : w->extra_acceptors) pause(extra.second.get());
    });
  }
  listening_ = false;
}

void Server::resume_accepting() {
  for (auto& worker : workers_) {
    asio::post(worker->io, [this, w = worker.get()] {
      for (auto& [acceptor, fd] : std::exchange(w->paused, {})) {
        std::size_t index = 0;
        for (std::size_t i = 0; i < listeners_.size(); ++i)
          if (w->acceptors[i].get() == acceptor) index = i;
        for (const auto& [i, extra] : w->extra_acceptors)
          if (extra.get() == acceptor) index = i;
        boost::system::error_code ec;
        acceptor->assign(listeners_[index].listen.protocol(), fd.get(), ec);
        if (ec) {
          spdlog::error("listener {}: cannot accept again after a failed takeover: {}",
                        listeners_[index].name, ec.message());
          continue;
        }
        (void)fd.release();
        accept_loop(*w, index, acceptor);
      }
    });
  }
  listening_ = true;
}

void Server::release_paused() {
  for (auto& worker : workers_) asio::post(worker->io, [w = worker.get()] { w->paused.clear(); });
}

namespace {

// Runs `job(worker, index)` on every worker's thread and returns once all
// have run it.
template <typename Job>
void on_every_worker(std::vector<std::unique_ptr<Worker>>& workers, Job job) {
  std::vector<std::future<void>> done;
  for (std::size_t i = 0; i < workers.size(); ++i) {
    auto finished = std::make_shared<std::promise<void>>();
    done.push_back(finished->get_future());
    asio::post(workers[i]->io, [w = workers[i].get(), i, finished, &job] {
      job(*w, i);
      finished->set_value();
    });
  }
  for (auto& f : done) f.wait();
}

}  // namespace

std::vector<ExportedConnection> Server::freeze_pairs(const std::function<bool(PairKind)>& take) {
  std::mutex mu;
  std::vector<ExportedConnection> out;
  on_every_worker(workers_, [&](Worker& w, std::size_t) {
    std::vector<ExportedConnection> mine;
    for (const PairHandoff::Exported& e : w.handoff.freeze_all(take)) {
      auto info = context_.registry.find(e.connection_id);
      if (!info) continue;  // registered before any pair runs; never the case
      TransferredConnection t = describe(*info, e.state);
      t.kind = e.kind;
      t.pending = e.pending;
      mine.push_back({std::move(t), e.client_fd, e.upstream_fd});
    }
    std::lock_guard lock(mu);
    std::move(mine.begin(), mine.end(), std::back_inserter(out));
  });
  return out;
}

void Server::set_boundary_window(PairKindSet kinds) {
  on_every_worker(workers_, [kinds](Worker& w, std::size_t) { w.handoff.set_window(kinds); });
}

std::size_t Server::boundary_candidates() {
  std::atomic<std::size_t> n{0};
  on_every_worker(workers_, [&n](Worker& w, std::size_t) { n += w.handoff.candidates(); });
  return n;
}

void Server::let_go_frozen() {
  for (auto& worker : workers_) asio::post(worker->io, [w = worker.get()] { w->handoff.let_go_frozen(); });
}

void Server::thaw_frozen() {
  for (auto& worker : workers_) asio::post(worker->io, [w = worker.get()] { w->handoff.thaw_frozen(); });
}

void Server::adopt(std::vector<AdoptedConnection> connections) {
  if (workers_.empty() || connections.empty()) return;
  std::vector<std::vector<AdoptedConnection>> share(workers_.size());
  for (std::size_t i = 0; i < connections.size(); ++i)
    share[i % workers_.size()].push_back(std::move(connections[i]));
  on_every_worker(workers_, [&](Worker& w, std::size_t index) {
    for (AdoptedConnection& a : share[index]) {
      auto listener = std::find_if(listeners_.begin(), listeners_.end(), [&](const config::Listener& l) {
        return l.name == a.connection.listener;
      });
      config::Listener named;
      named.name = a.connection.listener;
      // Beyond the per-source cap if need be: the connection is open already.
      SourceLimiter::Lease slot = context_.sources.acquire(a.connection.src.address(), UINT32_MAX);
      Connection::adopt(context_, w.context, listener != listeners_.end() ? *listener : named, std::move(a),
                        std::move(slot));
    }
  });
}

void Server::stop() {
  if (workers_.empty()) return;
  stop_accepting();
  for (auto& info : context_.registry.snapshot())
    if (info->revoke) info->revoke(EndReason::shutdown);
  for (auto& worker : workers_) {
    // Let the posted revokes run, then stop.
    asio::post(worker->io, [w = worker.get()] { w->io.stop(); });
  }
  for (auto& worker : workers_)
    if (worker->thread.joinable()) worker->thread.join();
  workers_.clear();
}

std::vector<int> Server::transparent_listener_fds() const {
  std::vector<int> fds;
  for (const auto& worker : workers_)
    for (std::size_t i = 0; i < listeners_.size(); ++i)
      if (listeners_[i].transparent && worker->acceptors[i])
        fds.push_back(worker->acceptors[i]->native_handle());
  return fds;
}

}  // namespace shunt::proxy

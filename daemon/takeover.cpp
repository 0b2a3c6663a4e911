#include "daemon/takeover.h"

#include "common/async.h"
#include "common/error.h"
#include "daemon/transfer_codec.h"
#include "proxy/metrics.h"
#include "proxy/policy_recheck.h"
#include "takeover/handover.h"
#include "takeover/late.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace shunt::proxy {

namespace asio = boost::asio;
using Descriptor = asio::posix::stream_descriptor;

namespace {

void record(std::string_view result, std::chrono::steady_clock::time_point began) {
  auto& m = metrics();
  m.count_takeover(result);
  const auto us =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - began);
  m.takeover_last_duration_us.store(static_cast<std::uint64_t>(us.count()), std::memory_order_relaxed);
}

// The names kernel_maps messages give the sockmap's maps.
constexpr std::string_view kMapPeers = "sock_peers";
constexpr std::string_view kMapTargets = "redirect_targets";
constexpr std::string_view kMapBulkEvents = "bulk_events";
constexpr std::string_view kMapForwarded = "hold_forwarded";
constexpr std::string_view kMapVerdict = "verdict_sockets";  // one or more

bpf::KernelMaps to_kernel_maps(takeover::InheritedMaps maps) {
  bpf::KernelMaps out;
  out.version = maps.version;
  for (auto& [name, fd] : maps.maps) {
    if (name == kMapPeers)
      out.peers = std::move(fd);
    else if (name == kMapTargets)
      out.targets = std::move(fd);
    else if (name == kMapBulkEvents)
      out.bulk_events = std::move(fd);
    else if (name == kMapForwarded)
      out.forwarded = std::move(fd);
    else if (name == kMapVerdict)
      out.verdict.push_back(std::move(fd));
  }
  return out;
}

// How many of each kind moved, for the metrics and the log lines.
struct Moved {
  std::array<std::size_t, 3> by_datapath{};  // config::Datapath
  std::size_t kernel_spliced = 0;
  std::size_t userspace = 0;
  std::size_t parked_http = 0;
  std::size_t tls_hello = 0;
  std::size_t http_first = 0;

  void add(const TransferredConnection& t) {
    ++by_datapath[static_cast<std::size_t>(t.datapath)];
    switch (t.kind) {
      case PairKind::kernel_spliced:
        ++kernel_spliced;
        break;
      case PairKind::userspace:
        ++userspace;
        break;
      case PairKind::parked_http:
        ++parked_http;
        break;
      case PairKind::tls_hello:
        ++tls_hello;
        break;
      case PairKind::http_first:
        ++http_first;
        break;
    }
  }
  [[nodiscard]] std::size_t total() const {
    return kernel_spliced + userspace + parked_http + tls_hello + http_first;
  }
  void merge(const Moved& o) {
    for (std::size_t i = 0; i < by_datapath.size(); ++i) by_datapath[i] += o.by_datapath[i];
    kernel_spliced += o.kernel_spliced;
    userspace += o.userspace;
    parked_http += o.parked_http;
    tls_hello += o.tls_hello;
    http_first += o.http_first;
  }
  // The boundary window's line (version 3).
  [[nodiscard]] std::string at_boundary() const {
    return fmt::format(
        "{} HTTP/1.1 after their request, {} TLS before their ClientHello, {} HTTP/1.1 before their first "
        "request, {} copy/splice once flushed or half-closed, {} kernel-spliced",
        parked_http, tls_hello, http_first, userspace, kernel_spliced);
  }
  // "K kernel-spliced connection(s), U copy/splice ... and H HTTP/1.1 ...".
  [[nodiscard]] std::string text() const {
    return fmt::format(
        "{} kernel-spliced connection(s), {} copy/splice connection(s) between reads and {} HTTP/1.1 "
        "connection(s) between requests",
        kernel_spliced, userspace, parked_http);
  }
  // What follows "K kernel-spliced connection(s) ... in T ms" in the log.
  [[nodiscard]] std::string others() const {
    return fmt::format("{} copy/splice between reads, {} HTTP/1.1 between requests", userspace, parked_http);
  }
  void count() const {
    for (std::size_t i = 0; i < by_datapath.size(); ++i)
      metrics().takeover_connections[i].fetch_add(by_datapath[i], std::memory_order_relaxed);
  }
};

// The pairs as received, checked and decoded. Any that does not decode or
// whose sockets are not the ones its state names fails the takeover as a
// whole: the old process would otherwise let go of a pair nobody runs.
Result<std::vector<AdoptedConnection>> decode_pairs(std::vector<takeover::InheritedPair> pairs,
                                                    std::uint16_t version) {
  std::vector<AdoptedConnection> out;
  out.reserve(pairs.size());
  for (auto& p : pairs) {
    auto t = decode_connection(p.state, version);
    if (!t) return SysError{EBADMSG, "a transferred connection's state does not decode"};
    // A connection waiting for its ClientHello or first request head has
    // no upstream yet;
    // every other kind is a pair.
    const bool single = t->kind == PairKind::tls_hello || t->kind == PairKind::http_first;
    if (single != !p.upstream)
      return SysError{EBADMSG,
                      "connection " + std::to_string(t->id) + ": its sockets are not the ones it names"};
    auto client = bpf::socket_cookie(p.client.get());
    const bool upstream_ok = single || [&] {
      auto upstream = bpf::socket_cookie(p.upstream.get());
      return upstream && *upstream == t->state.upstream_cookie;
    }();
    if (!client || *client != t->state.client_cookie || !upstream_ok)
      return SysError{EBADMSG,
                      "connection " + std::to_string(t->id) + ": its sockets are not the ones it names"};
    out.push_back({std::move(*t), std::move(p.client), std::move(p.upstream)});
  }
  return out;
}

}  // namespace

void refuse_if_running(const config::Config& config) {
  const std::string& path = config.admin.control_socket;
  if (takeover::probe_control_socket(path) == takeover::ControlState::live)
    throw StartupError(kExitEnvironment, "another shunt is running on this node (control socket " + path +
                                             " answers); use `shunt run --takeover` to replace it");
}

std::optional<TakeoverStart> begin_takeover(const config::Config& config) {
  const std::string& path = config.admin.control_socket;
  const auto began = std::chrono::steady_clock::now();
  if (takeover::probe_control_socket(path) != takeover::ControlState::live) {
    spdlog::info("takeover: no shunt answers on {}: starting as the first process", path);
    return std::nullopt;
  }
  auto successor = takeover::Successor::begin(path, takeover::Timeouts{});
  if (!successor) {
    const SysError& e = successor.error();
    metrics().count_takeover(e.code == ETIMEDOUT ? "timeout" : "failed");
    throw StartupError(kExitEnvironment, "--takeover: " + e.message() + "; the running shunt keeps serving");
  }
  std::optional<TakeoverStart> out(TakeoverStart{std::move(*successor), {}, {}, {}, began});
  TakeoverStart& start = *out;
  const std::string admin_endpoint = config::to_string(config.admin.listen);
  std::size_t count = 0;
  for (auto& l : start.successor.take_listeners()) {
    ++count;
    if (l.entry.role == takeover::kRoleAdmin) {
      if (l.entry.endpoint == admin_endpoint)
        start.admin = std::move(l.fd);
      else
        spdlog::info("takeover: admin API moves from {} to {}", l.entry.endpoint, admin_endpoint);
      continue;
    }
    start.listeners[l.entry.endpoint].push_back(std::move(l.fd));
  }
  metrics().takeover_listeners.fetch_add(count, std::memory_order_relaxed);
  if (auto maps = start.successor.take_kernel_maps()) start.kernel_maps = to_kernel_maps(std::move(*maps));
  spdlog::info(
      "takeover: taking over from shunt {} (pid {}), protocol version {}: {} listening socket(s){} received",
      start.successor.peer_binary(), start.successor.peer_pid(), start.successor.version(), count,
      start.kernel_maps ? " and the sockmap's maps" : "");
  return out;
}

takeover::ControlListener finish_takeover(TakeoverStart& start, const config::Config& config,
                                          ProxyContext& context, Server& server) {
  const std::uint32_t old_pid = start.successor.peer_pid();
  bool alone = false;
  // Kernel-spliced pairs move only into a bridge that shares the old
  // process's maps; HTTP/1.1 connections parked between requests always.
  const bool takes_kernel_pairs = context.bridge && context.bridge->inherited_maps();
  if (start.kernel_maps && !takes_kernel_pairs)
    spdlog::info(
        "takeover: this process does not share pid {}'s sockmap; its kernel-spliced connections stay "
        "with it and drain there",
        old_pid);
  // And (version 3) whatever reaches a boundary after the commit.
  const std::uint8_t takes = takeover::kReadyParkedHttp | takeover::kReadyUserspace |
                             takeover::kReadyBoundary |
                             (takes_kernel_pairs ? takeover::kReadyKernelPairs : 0);
  if (Status st = start.successor.ready(takes); !st) {
    if (st.error().code != ECONNRESET) {
      start.successor.abort("no answer to ready: " + st.error().message());
      record(st.error().code == ETIMEDOUT ? "timeout" : "failed", start.began);
      throw StartupError(kExitEnvironment, "--takeover: " + st.error().message() + "; pid " +
                                               std::to_string(old_pid) +
                                               " takes its listeners back and keeps serving");
    }
    spdlog::warn("takeover: pid {} went away before it stopped accepting; carrying on alone", old_pid);
    alone = true;
  }
  // Each pair stays frozen (no FIN passed on, no reset) until the commit
  // reached the old process: until then it may take them back.
  Moved moved;
  if (!alone && start.successor.moves_pairs()) {
    const auto received_at = std::chrono::steady_clock::now();
    auto pairs = start.successor.receive_pairs();
    Result<std::vector<AdoptedConnection>> decoded =
        pairs ? decode_pairs(std::move(*pairs), start.successor.version())
              : Result<std::vector<AdoptedConnection>>(pairs.error());
    if (!decoded) {
      start.successor.abort("open connections: " + decoded.error().message());
      record(decoded.error().code == ETIMEDOUT ? "timeout" : "failed", start.began);
      throw StartupError(kExitEnvironment, "--takeover: open connections: " + decoded.error().message() +
                                               "; pid " + std::to_string(old_pid) +
                                               " takes everything back and keeps serving");
    }
    for (const AdoptedConnection& a : *decoded) moved.add(a.connection);
    server.adopt(std::move(*decoded));
    spdlog::info(
        "takeover: {} kernel-spliced connection(s) received and adopted in {} ms ({}); frozen until "
        "the commit",
        moved.kernel_spliced,
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - received_at)
            .count(),
        moved.others());
  }
  auto listener = takeover::ControlListener::bind(config.admin.control_socket);
  if (!listener) {
    start.successor.abort(listener.error().message());
    record("failed", start.began);
    throw StartupError(kExitEnvironment, "--takeover: " + listener.error().message() + "; pid " +
                                             std::to_string(old_pid) + " takes its listeners back");
  }
  if (!alone)
    if (Status st = start.successor.commit(); !st)
      spdlog::warn(
          "takeover: pid {} did not hear the commit ({}); it exits or takes back what it still holds",
          old_pid, st.error().message());
  // Only now: a connection accepted before the commit would die with this
  // process if it died before it, while the old one, taking its listeners
  // back, finds every SYN it has not accepted still in the shared backlogs.
  server.start_accepting();
  if (moved.total()) {
    server.thaw_frozen();
    moved.count();
  }
  record("ok", start.began);
  spdlog::info(
      "takeover: complete in {} ms: {} moved; pid {} drains the rest of its open connections and exits",
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start.began)
          .count(),
      moved.text(), old_pid);
  // Policy on arrival: this process's config decides every connection it
  // now holds, exactly as a reload would.
  if (moved.total()) {
    const std::size_t revoked = revoke_disallowed(*context.policy.current(), context.registry);
    spdlog::info("takeover: the {} adopted connection(s) re-checked against this configuration: {} revoked",
                 moved.total(), revoked);
  }
  if (!alone && start.successor.boundary_window())
    spdlog::info(
        "takeover: pid {} hands on the rest of its connections as they reach a boundary, for up to {} ms",
        old_pid, takeover::Timeouts{}.boundary.count());
  return std::move(*listener);
}

HandoverService::HandoverService(asio::io_context& io, takeover::ControlListener listener,
                                 ProxyContext& context, Server& server, AdminServer& admin,
                                 std::function<void()> handed_over)
    : io_(io),
      listener_(std::move(listener)),
      context_(context),
      server_(server),
      admin_(admin),
      handed_over_(std::move(handed_over)),
      arrivals_over_(io) {}

void HandoverService::start() {
  if (listener_.fd() < 0) return;  // no control socket (logged at start-up)
  acceptor_ = std::make_unique<Descriptor>(io_, listener_.take_fd().release());
  // Survivable: without it this process can no longer be taken over (an
  // upgrade then needs a restart), but traffic is not affected.
  guarded_spawn(io_, "takeover service", serve(), Failure::survivable);
}

void HandoverService::stop() {
  arrivals_over_.cancel();  // a takeover waiting for the window is refused
  if (!acceptor_) return;
  boost::system::error_code ec;
  acceptor_->close(ec);
}

// A failed new process may have renamed its control socket over the path
// already (it does so before its commit, so that the path never answers
// nothing): this process would serve on but could not be taken over again,
// and a plain `shunt run` would find a stale socket and start beside it.
// Called between two accepts, so replacing the acceptor is safe.
void HandoverService::reclaim_path() {
  if (listener_.owns_path()) return;
  const std::string path = listener_.path();
  auto bound = takeover::ControlListener::bind(path);
  if (!bound) {
    spdlog::error(
        "takeover: cannot take the control socket {} back: {}; this process can no longer be taken over",
        path, bound.error().message());
    return;
  }
  acceptor_ = std::make_unique<Descriptor>(io_, bound->take_fd().release());
  listener_ = std::move(*bound);
  spdlog::info("takeover: the failed process had taken the control socket {}; it is this process's again",
               path);
}

void HandoverService::receive_arrivals(TakeoverStart& start) {
  if (!start.successor.boundary_window()) return;
  UniqueFd fd = start.successor.take_socket();
  if (!fd) return;
  arriving_ = true;
  // Survivable: a failure leaves what did not arrive with the old process,
  // which drains it.
  guarded_spawn(io_, "takeover arrivals",
                arrivals(std::make_shared<Descriptor>(io_, fd.release()), start.successor.version(),
                         start.successor.peer_pid()),
                Failure::survivable);
}

asio::awaitable<void> HandoverService::arrivals(std::shared_ptr<Descriptor> peer, std::uint16_t version,
                                                std::uint32_t old_pid) {
  Moved moved;
  takeover::ArrivalHooks hooks;
  std::vector<TransferredConnection> batch_kinds;
  hooks.adopt = [&](std::vector<takeover::InheritedPair> pairs) -> Status {
    auto decoded = decode_pairs(std::move(pairs), version);
    if (!decoded) return decoded.error();
    batch_kinds.clear();
    for (const AdoptedConnection& a : *decoded) batch_kinds.push_back(a.connection);
    server_.adopt(std::move(*decoded));
    return ok_status();
  };
  hooks.thaw = [&] {
    server_.thaw_frozen();
    Moved batch;
    for (const TransferredConnection& t : batch_kinds) {
      batch.add(t);
      moved.add(t);
    }
    batch.count();
    spdlog::debug("takeover: {} connection(s) arrived at a boundary ({})", batch.total(),
                  batch.at_boundary());
    // Policy on arrival, as for those adopted at the commit.
    const std::size_t revoked = revoke_disallowed(*context_.policy.current(), context_.registry);
    if (revoked)
      spdlog::info("takeover: {} connection(s) arrived and revoked by this configuration", revoked);
  };
  hooks.let_go = [&] { server_.let_go_frozen(); };
  const takeover::ArrivalResult r =
      co_await takeover::receive_late(*peer, version, hooks, takeover::Timeouts{});
  boost::system::error_code ignored;
  peer->close(ignored);
  arriving_ = false;
  arrivals_over_.cancel();
  spdlog::info("takeover: {} connection(s) arrived from pid {} as they reached a boundary ({}){}",
               moved.total(), old_pid, moved.at_boundary(),
               r.failed ? "; then the window ended early: " + r.detail : "");
}

asio::awaitable<void> HandoverService::refuse(Descriptor& peer, const std::string& why) {
  // The hello first: closing a Unix socket with a message unread resets
  // the peer, whose next read then returns ECONNRESET, not this reason.
  (void)co_await takeover::receive(peer, takeover::Timeouts{}.step);
  (void)takeover::send_message(peer.native_handle(), takeover::kProtocolMin, takeover::MessageType::refuse,
                               takeover::Writer().str(why).take(), {},
                               takeover::Clock::now() + std::chrono::seconds(1));
}

asio::awaitable<void> HandoverService::serve() {
  const std::string path = listener_.path();
  for (;;) {
    boost::system::error_code ec;
    co_await acceptor_->async_wait(Descriptor::wait_read, asio::redirect_error(asio::use_awaitable, ec));
    if (ec == asio::error::operation_aborted || !acceptor_->is_open()) co_return;
    const int fd = ::accept4(acceptor_->native_handle(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EINTR)
        spdlog::warn("takeover: accept on {}: {}", path, std::strerror(errno));
      continue;
    }
    Descriptor peer(io_, fd);
    if (!takeover::peer_is_same_user(peer.native_handle())) {
      spdlog::warn("takeover: refused a connection on {} from another user", path);
      continue;
    }
    if (arriving_) {
      // A second takeover now would freeze and thaw the same pairs as the
      // window does (PairHandoff has one set of frozen pairs per worker),
      // so it waits for the window, which the old process ends within
      // Timeouts::boundary; the new process waits for its welcome that
      // long (takeover/successor.cpp). Refusing instead failed an upgrade
      // started right after the previous one.
      spdlog::info(
          "takeover: a new process asks to take over while connections still arrive from the previous "
          "takeover; it waits until they have (up to {} ms)",
          takeover::Timeouts{}.boundary.count());
      arrivals_over_.expires_after(takeover::Timeouts{}.boundary + takeover::Timeouts{}.step);
      co_await arrivals_over_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      if (arriving_ && acceptor_->is_open()) {
        co_await refuse(peer,
                        "this process is still receiving connections from the previous takeover; try again");
        continue;
      }
    }
    if (!server_.listening() || !acceptor_->is_open()) {
      // Its listening sockets are closed or paused: none to hand on.
      co_await refuse(peer, "this process is shutting down");
      continue;
    }
    const auto began = std::chrono::steady_clock::now();
    takeover::HandoverHooks hooks;
    hooks.listeners = [this] {
      std::vector<takeover::HandedListener> out;
      for (const auto& s : server_.listening_sockets())
        out.push_back({{std::string(takeover::kRoleListener), s.name, s.endpoint, s.transparent}, s.fd});
      out.push_back(
          {{std::string(takeover::kRoleAdmin), "admin", config::to_string(admin_.endpoint()), false},
           admin_.listening_fd()});
      return out;
    };
    hooks.pause = [this] { server_.pause_accepting(); };
    hooks.resume = [this] { server_.resume_accepting(); };
    if (context_.bridge) {
      hooks.kernel_maps = [this]() -> std::optional<takeover::HandedMaps> {
        const bpf::KernelMapFds maps = context_.bridge->kernel_maps();
        takeover::HandedMaps out;
        out.set.version = maps.version;
        out.set.names = {std::string(kMapPeers), std::string(kMapTargets), std::string(kMapBulkEvents),
                         std::string(kMapForwarded)};
        out.fds = {maps.peers, maps.targets, maps.bulk_events, maps.forwarded};
        for (int fd : maps.verdict) {
          out.set.names.emplace_back(kMapVerdict);
          out.fds.push_back(fd);
        }
        return out;
      };
    }
    // Kernel-spliced pairs (when the new process shares the maps), copy
    // and splice pairs between reads, HTTP/1.1 connections parked between
    // requests.
    Moved moved;
    hooks.freeze_pairs = [this, &moved](const takeover::PairKinds& kinds, std::uint16_t version) {
      const auto frozen_at = std::chrono::steady_clock::now();
      // The new process reads the shared event ring from here on.
      if (context_.bulk_grants && kinds.kernel_spliced) context_.bulk_grants->pause();
      std::vector<takeover::HandedPair> out;
      const auto take = [&kinds](PairKind kind) {
        switch (kind) {
          case PairKind::kernel_spliced:
            return kinds.kernel_spliced;
          case PairKind::parked_http:
            return kinds.parked_http;
          case PairKind::userspace:
            return kinds.userspace;
          case PairKind::tls_hello:  // exist only in the boundary window
          case PairKind::http_first:
            return false;
        }
        return false;
      };
      for (const ExportedConnection& e : server_.freeze_pairs(take)) {
        moved.add(e.connection);
        out.push_back({encode(e.connection, version), e.client_fd, e.upstream_fd});
      }
      spdlog::info(
          "takeover: {} kernel-spliced connection(s) frozen in {} ms ({}); sending them",
          moved.kernel_spliced,
          std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - frozen_at)
              .count(),
          moved.others());
      return out;
    };
    hooks.let_go_pairs = [this] { server_.let_go_frozen(); };
    hooks.thaw_pairs = [this] {
      spdlog::info("takeover: taking the frozen connections back");
      if (context_.bulk_grants) context_.bulk_grants->resume();
      server_.thaw_frozen();
    };
    const takeover::HandoverResult r = co_await takeover::hand_over(peer, hooks, takeover::Timeouts{});
    if (r.outcome == takeover::Outcome::probe) continue;
    record(takeover::to_string(r.outcome), began);
    if (r.outcome != takeover::Outcome::ok) {
      spdlog::warn("takeover by shunt {} (pid {}) failed: {} ({}); this process keeps serving", r.peer_binary,
                   r.peer_pid, r.detail, takeover::to_string(r.outcome));
      reclaim_path();
      continue;
    }
    metrics().takeover_listeners.fetch_add(r.listeners, std::memory_order_relaxed);
    moved.count();
    // The new process has every socket and the path: close our copies
    // (admin requests being served finish: their clients would see resets).
    server_.release_paused();
    admin_.stop_accepting();
    listener_.abandon();
    acceptor_->close(ec);
    spdlog::info(
        "takeover: shunt {} (pid {}) took over {} listening socket(s) and {} in {} ms (protocol version {}); "
        "this process stopped accepting",
        r.peer_binary, r.peer_pid, r.listeners, moved.text(),
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - began)
            .count(),
        r.version);
    handed_over_();
    if (r.boundary_window) {
      handing_over_ = true;
      co_await hand_over_at_boundaries(peer, r);
      handing_over_ = false;
    } else {
      (void)server_.boundary_candidates();  // runs after the let-go posted to every worker
      metrics().takeover_connections_stayed.fetch_add(context_.registry.size(), std::memory_order_relaxed);
    }
    co_return;
  }
}

asio::awaitable<void> HandoverService::hand_over_at_boundaries(Descriptor& peer,
                                                               const takeover::HandoverResult& handover) {
  PairKindSet kinds = kind_bit(PairKind::tls_hello) | kind_bit(PairKind::http_first);
  if (handover.kinds.parked_http) kinds |= kind_bit(PairKind::parked_http);
  if (handover.kinds.userspace) kinds |= kind_bit(PairKind::userspace);
  if (handover.kinds.kernel_spliced) kinds |= kind_bit(PairKind::kernel_spliced);
  Moved moved;  // adopted by the new process
  Moved batch;  // the batch in flight
  takeover::LateHooks hooks;
  hooks.window = [this, kinds](bool on) { server_.set_boundary_window(on ? kinds : 0); };
  hooks.collect = [this, kinds, &batch, version = handover.version] {
    batch = Moved{};
    std::vector<takeover::HandedPair> out;
    for (const ExportedConnection& e :
         server_.freeze_pairs([kinds](PairKind k) { return (kinds & kind_bit(k)) != 0; })) {
      batch.add(e.connection);
      out.push_back({encode(e.connection, version), e.client_fd, e.upstream_fd});
    }
    return out;
  };
  hooks.let_go = [this, &moved, &batch] {
    server_.let_go_frozen();
    batch.count();
    moved.merge(batch);
  };
  hooks.thaw = [this] { server_.thaw_frozen(); };
  hooks.candidates = [this] { return server_.boundary_candidates(); };
  // At most half of timeouts.drain: the drain runs meanwhile, and what
  // does not move must still have time to finish here.
  takeover::Timeouts timeouts;
  timeouts.boundary =
      std::min(timeouts.boundary, context_.policy.current()->config().proxy.timeouts.drain / 2);
  const takeover::LateResult r = co_await takeover::hand_over_late(peer, handover.version, hooks, timeouts);
  if (r.failed)
    spdlog::warn("takeover: the boundary window ended early ({}); what this process holds stays here",
                 r.detail);
  // Runs on every worker after the let-go and thaw posted there: the
  // registry no longer lists what moved.
  (void)server_.boundary_candidates();
  const std::size_t stayed = context_.registry.size();
  metrics().takeover_connections_stayed.fetch_add(stayed, std::memory_order_relaxed);
  spdlog::info(
      "takeover: boundary window closed after {} ms: {} connection(s) moved as they reached a boundary ({}); "
      "{} still open here drain as before",
      r.took.count(), moved.total(), moved.at_boundary(), stayed);
}

}  // namespace shunt::proxy

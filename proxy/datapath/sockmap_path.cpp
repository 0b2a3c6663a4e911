// The sockmap data path: the handover of an allowed connection to the kernel.
//
//   1. Userspace has written every byte it read (inspection flushes first).
//   2. Record how much each socket has had written to it so far (baseline).
//   3. SockmapBridge::handover(): peer entries, redirect targets, verdict
//      sockets, then a data_ready kick for bytes already queued.
//   4. Take both fds out of Asio's reactor: a spliced socket signals readable
//      on every redirected segment; HangupWatcher asks for hang-ups only.
//   5. On EOF from one side (the kernel does not forward FIN), wait until
//      every byte that side received has been through the verdict program
//      and the peer has been written all of them, then shutdown(SHUT_WR)
//      the peer. On an error/RST, reset the
//      peer. When both FINs are through, close both (which also removes them
//      from the sockmaps; unmapping a live socket would purge its queue).
//
// If the kernel refuses a socket (closing already, map full), the pair falls
// back to splice and shunt_datapath_fallbacks_total{reason} counts it.
#include "bpf/sockmap.h"
#include "bpf/sockmap_shortcut.h"
#include "common/reset.h"
#include "common/sockopt.h"
#include "common/unique_fd.h"
#include "proxy/datapath/bulk_grants.h"
#include "proxy/datapath/datapath.h"
#include "proxy/datapath/hangup_watcher.h"
#include "proxy/datapath/tcp_counters.h"
#include "proxy/metrics.h"  // the fallback reasons (names only)

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <netinet/in.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace shunt::proxy {

namespace asio = boost::asio;
using std::chrono::milliseconds;

namespace {

struct SocketState {
  bool read_closed = false;  // the peer sent FIN
  bool failed = false;       // reset or error
};

// `write_shut`: shunt has already shut this socket's write side (passed the
// other side's FIN on).
SocketState socket_state(int fd, bool write_shut) {
  pollfd p{fd, POLLRDHUP, 0};
  ::poll(&p, 1, 0);
  SocketState s;
  s.failed = (p.revents & (POLLERR | POLLNVAL)) != 0;
  s.read_closed = (p.revents & (POLLRDHUP | POLLHUP)) != 0;
  // A reset shows POLLERR only until someone reads the error: recvmsg
  // reports and clears it (the handover's kick does), leaving POLLHUP, which
  // looks like a FIN. A FIN leaves the socket in CLOSE_WAIT until shunt
  // shuts its write side; closed before that, it was reset.
  if (s.read_closed && !s.failed && !write_shut && tcp_closed(fd)) s.failed = true;
  return s;
}

// The pending socket error (SO_ERROR), for the access log's `error`.
std::string socket_error(int fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err == 0) return "reset";
  return std::strerror(err);
}

// One direction of a kernel-spliced pair.
struct SplicedDirection {
  int from = -1;
  int to = -1;
  std::uint64_t from_cookie = 0;
  std::uint64_t from_consumed_at_handover = 0;  // read by userspace before the handover
  std::uint64_t to_written_at_handover = 0;
  bool fin_forwarded = false;
};

// Sets a socket's send buffer (SO_SNDBUFFORCE: beyond wmem_max, needs
// CAP_NET_ADMIN; plain SO_SNDBUF otherwise). A failure keeps the buffer the
// socket has, which costs throughput or memory bound, never correctness:
// logged, not escalated.
void set_send_buffer(int fd, int bytes, bool force) {
  if (Status st = set_socket_option(fd, SOL_SOCKET, force ? SO_SNDBUFFORCE : SO_SNDBUF, bytes,
                                    force ? "SO_SNDBUFFORCE" : "SO_SNDBUF");
      !st)
    spdlog::debug("fd {}: send buffer stays as it was: {}", fd, st.error().message());
}

// An IPv4 peer of a dual-stack socket shows as ::ffff:a.b.c.d; the client's
// own socket is AF_INET and sk_msg_md describes it as such.
void unmap_v4(sockaddr_storage& a) {
  if (a.ss_family != AF_INET6) return;
  const auto v6 = reinterpret_cast<const sockaddr_in6&>(a);
  if (!IN6_IS_ADDR_V4MAPPED(&v6.sin6_addr)) return;
  sockaddr_in v4{};
  v4.sin_family = AF_INET;
  v4.sin_port = v6.sin6_port;
  std::memcpy(&v4.sin_addr, &v6.sin6_addr.s6_addr[12], 4);
  a = {};
  std::memcpy(&a, &v4, sizeof(v4));
}

// The client's own socket in the endpoint short-circuit (docs/datapath.md,
// "The endpoint short-circuit"), taken out again when the client can send
// no more or the pair ends. Not captured: `shortcut` is null.
class CapturedEndpoint {
 public:
  CapturedEndpoint() = default;
  CapturedEndpoint(const CapturedEndpoint&) = delete;
  CapturedEndpoint& operator=(const CapturedEndpoint&) = delete;
  ~CapturedEndpoint() { release(); }

  // Captures the endpoint behind `client_fd` (shunt's client-facing socket,
  // already handed over) with `upstream_cookie` as its target. The outcome
  // other than `captured` is counted as the reason the client stays on
  // sk_skb.
  bpf::CaptureOutcome capture(bpf::EndpointShortcut& shortcut, const std::string& pod, int client_fd,
                              std::uint64_t client_cookie, std::uint64_t upstream_cookie,
                              std::uint64_t consumed, std::uint64_t written) {
    socklen_t l = sizeof(address_.local), r = sizeof(address_.remote);
    if (::getpeername(client_fd, reinterpret_cast<sockaddr*>(&address_.local), &l) != 0 ||
        ::getsockname(client_fd, reinterpret_cast<sockaddr*>(&address_.remote), &r) != 0)
      return bpf::CaptureOutcome::error;
    unmap_v4(address_.local);
    unmap_v4(address_.remote);
    // The client's own netns: its pod's (by nsid), or shunt's own for host
    // processes and loopback clients.
    const bpf::CaptureOutcome outcome =
        shortcut.capture(address_, shortcut.netns_of(pod), upstream_cookie, client_cookie, consumed, written);
    if (outcome == bpf::CaptureOutcome::captured) {
      shortcut_ = &shortcut;
      proxy_cookie_ = client_cookie;
    }
    return outcome;
  }

  [[nodiscard]] bool captured() const { return shortcut_ != nullptr || final_.switches || final_.bytes; }

  // What the short-circuit moved, live or as it was at release.
  [[nodiscard]] bpf::EndpointStats stats() const { return shortcut_ ? shortcut_->stats(address_) : final_; }

  void release() {
    if (!shortcut_) return;
    final_ = shortcut_->stats(address_);
    shortcut_->release(address_, proxy_cookie_);
    shortcut_ = nullptr;
  }

 private:
  bpf::EndpointShortcut* shortcut_ = nullptr;
  bpf::EndpointAddress address_;
  std::uint64_t proxy_cookie_ = 0;
  bpf::EndpointStats final_;
};

}  // namespace

asio::awaitable<Ending> run_sockmap(SocketPair& pair, DatapathSink& sink, CancelSlot& cancel,
                                    const KernelSplice& kernel, bool inspected) {
  bpf::SockmapBridge* bridge = kernel.bridge;
  auto fall_back = [&](std::string_view reason) {
    sink.fell_back(reason);
    sink.carried_by(config::Datapath::splice);
  };
  if (!bridge) {
    fall_back(kFallbackSockmapUnavailable);
    co_return co_await run_splice(pair, sink, cancel);
  }
  if (cancel.cancelled()) {
    // Cancelled before the handover: nothing to hand over.
    reset_socket(pair.client);
    reset_socket(pair.upstream);
    co_return Ending{};
  }

  const std::uint64_t id = sink.id();
  const int client_fd = pair.client.native_handle();
  const int upstream_fd = pair.upstream.native_handle();
  // Baselines for the drain check: what userspace read from each socket
  // and wrote to it before the handover. After an L4 decision userspace has
  // done neither (the kernel counts payload only, not the handshake), so
  // they are 0 without four syscalls per connection.
  std::uint64_t client_consumed = 0, upstream_consumed = 0;
  std::uint64_t client_written = 0, upstream_written = 0;
  if (inspected) {
    const auto c = tcp_bytes_consumed(client_fd), u = tcp_bytes_consumed(upstream_fd);
    if (!c || !u) {
      // No exact baseline (a peer that never paused between the readings):
      // the drain check could not be trusted, so this pair is spliced.
      spdlog::debug("connection {}: no stable read baseline for the handover; splicing instead", id);
      fall_back("other");
      co_return co_await run_splice(pair, sink, cancel);
    }
    client_consumed = *c;
    upstream_consumed = *u;
    client_written = tcp_bytes_written(client_fd);
    upstream_written = tcp_bytes_written(upstream_fd);
  }
  SplicedDirection up{client_fd, upstream_fd, 0, client_consumed, upstream_written, false};
  SplicedDirection down{upstream_fd, client_fd, 0, upstream_consumed, client_written, false};

  // Bound what a stalled pair can pin before the kernel starts moving bytes
  // (docs/datapath.md, "Memory bound"); bulk pairs get more, within budget.
  set_send_buffer(client_fd, BufferBudget::kSplicedSendBufferBytes, false);
  set_send_buffer(upstream_fd, BufferBudget::kSplicedSendBufferBytes, false);

  const bpf::HandoverResult handover = bridge->handover(client_fd, upstream_fd);
  if (handover.failure != bpf::HandoverFailure::none) {
    spdlog::debug("connection {}: sockmap refused the pair ({}), {}", id, handover.error.message(),
                  handover.partial ? "resetting" : "splicing instead");
    if (handover.partial) {
      sink.fell_back(kFallbackPartialHandover);
      bridge->forget(handover.cookies);
      reset_socket(pair.client);
      reset_socket(pair.upstream);
      co_return Ending(EndReason::handover_failed, handover.error.message(), /*reset_both=*/true);
    }
    fall_back(bpf::to_string(handover.failure));
    co_return co_await run_splice(pair, sink, cancel);
  }
  up.from_cookie = handover.cookies.a;
  down.from_cookie = handover.cookies.b;
  sink.carried_by(config::Datapath::sockmap);
  sink.kernel_spliced(handover.cookies.a, handover.cookies.b);
  sink.kernel_path(Direction::up, KernelPath::sk_skb);
  sink.kernel_path(Direction::down, KernelPath::sk_skb);

  // The client's own socket into the short-circuit, if it is local and can
  // take it; its sk_msg program switches over when the fence allows. After
  // the handover, so shunt's client-facing socket already counts what the
  // verdict redirects and the upstream socket is already a target.
  //
  // A client still blocking at the handover is tried again a few times:
  // many set O_NONBLOCK only after their first bytes (iperf3 writes its
  // cookie first), and the fence makes a late capture as safe as an early
  // one. Only the last refusal is counted.
  CapturedEndpoint endpoint;
  using Clock = std::chrono::steady_clock;
  constexpr milliseconds kCaptureRetries[] = {milliseconds(5), milliseconds(50), milliseconds(500)};
  std::size_t capture_attempt = 0;
  Clock::time_point capture_retry_at = Clock::time_point::max();
  auto try_capture = [&] {
    const bpf::CaptureOutcome outcome =
        endpoint.capture(*kernel.shortcut, std::string(kernel.client_pod), client_fd, handover.cookies.a,
                         handover.cookies.b, up.from_consumed_at_handover, up.to_written_at_handover);
    capture_retry_at = Clock::time_point::max();
    if (outcome == bpf::CaptureOutcome::captured) return;
    if (outcome == bpf::CaptureOutcome::blocking && capture_attempt < std::size(kCaptureRetries)) {
      capture_retry_at = Clock::now() + kCaptureRetries[capture_attempt++];
      return;
    }
    sink.fell_back(bpf::to_string(outcome));
    spdlog::debug("connection {}: client stays on sk_skb ({})", id, bpf::to_string(outcome));
  };
  if (kernel.shortcut && !handover.consumed_error_a && !handover.consumed_error_b) try_capture();

  // From here on the fds are ours alone; Asio forgets them. The pair is
  // shared with bulk-buffer grants posted from the control thread
  // (proxy/datapath/bulk_grants.h).
  struct SplicedPair {
    UniqueFd client;
    UniqueFd upstream;
    std::uint64_t boosted_bytes = 0;
    bool open = true;
  };
  auto spliced = std::make_shared<SplicedPair>();
  spliced->client = UniqueFd(pair.client.release());
  spliced->upstream = UniqueFd(pair.upstream.release());
  UniqueFd& client = spliced->client;
  UniqueFd& upstream = spliced->upstream;

  auto executor = co_await asio::this_coro::executor;
  asio::steady_timer wake(executor);
  bool poked = false;
  auto poke = [&] {
    poked = true;
    wake.cancel();
  };
  HangupWatcher& hangups = *kernel.hangups;
  const auto client_watch = hangups.add(client.get(), [&](std::uint32_t) { poke(); });
  const auto upstream_watch = hangups.add(upstream.get(), [&](std::uint32_t) { poke(); });
  CancelSlot::Installed on_cancel = cancel.install(poke);

  BufferBudget& budget = kernel.bulk_grants->budget();
  // The grant runs on this thread while the pair is open (`open` is
  // cleared before this coroutine returns), so `sink` is still alive then.
  BulkGrants::Enrollment bulk = kernel.bulk_grants->enroll(
      handover.cookies.a, handover.cookies.b,
      [executor, spliced, client_cookie = handover.cookies.a, &budget, &sink](std::uint64_t source) {
        asio::post(executor, [spliced, source, client_cookie, &budget, &sink] {
          if (!spliced->open || spliced->boosted_bytes) return;
          if (!budget.try_acquire(BufferBudget::kBoostedBufferBytes)) {
            sink.buffer_boost(false);
            return;
          }
          spliced->boosted_bytes = BufferBudget::kBoostedBufferBytes;
          // Only the bulk direction's target needs room: the socket opposite the source.
          const int target = source == client_cookie ? spliced->upstream.get() : spliced->client.get();
          set_send_buffer(target, static_cast<int>(BufferBudget::kBoostedBufferBytes), true);
          sink.buffer_boost(true);
        });
      });

  // Only called once the source's FIN is visible. A direction may pass its
  // FIN on once every byte its source received
  // has been through the verdict program and written to the target. The
  // first half matters: TCP makes the FIN visible (tcp_fin, RCV_SHUTDOWN)
  // before the softirq that queued the last segment has run the verdict
  // over it, so "written >= redirected" alone could pass for an instant
  // with the tail not yet redirected, and the FIN would overtake it.
  auto drained = [&](const SplicedDirection& d) {
    const std::uint64_t redirected = bridge->redirected_bytes(d.from_cookie);
    // tcpi_bytes_received counts the FIN's sequence number too.
    const std::uint64_t received = tcp_bytes_received(d.from);
    const std::uint64_t payload =
        received > d.from_consumed_at_handover ? received - 1 - d.from_consumed_at_handover : 0;
    if (payload > redirected) return false;
    // The short-circuit's bytes were pushed into the target inside the
    // client's sendmsg, before its FIN left; they count towards what the
    // target must have been written, never towards what the source received.
    const std::uint64_t short_circuited = &d == &up ? endpoint.stats().bytes : 0;
    return tcp_bytes_written(d.to) - d.to_written_at_handover >= redirected + short_circuited;
  };

  // An error the handover's recv consumed (see SocketState) ends the pair.
  const int consumed_error =
      handover.consumed_error_a ? handover.consumed_error_a : handover.consumed_error_b;
  Ending ending;
  milliseconds drain_poll{1};
  for (;;) {
    if (cancel.cancelled()) {
      reset_fd(client.get());
      reset_fd(upstream.get());
      break;
    }
    const SocketState client_state = socket_state(client.get(), down.fin_forwarded);
    const SocketState upstream_state = socket_state(upstream.get(), up.fin_forwarded);
    if (client_state.failed || upstream_state.failed || consumed_error) {
      // RST (or error) on one side: reset the other, promptly.
      const bool client_failed = consumed_error ? handover.consumed_error_a != 0 : client_state.failed;
      spdlog::debug("connection {}: {} side reset; resetting the other", id,
                    client_failed ? "client" : "upstream");
      ending.note(client_failed ? EndReason::client_reset : EndReason::upstream_reset,
                  consumed_error ? std::strerror(consumed_error)
                                 : socket_error(client_failed ? client.get() : upstream.get()));
      reset_fd(client.get());
      reset_fd(upstream.get());
      break;
    }
    bool waiting_for_drain = false;
    for (auto* d : {&up, &down}) {
      const bool source_closed = d == &up ? client_state.read_closed : upstream_state.read_closed;
      if (!source_closed || d->fin_forwarded) continue;
      ending.note(d == &up ? EndReason::client_closed : EndReason::upstream_closed);
      if (drained(*d)) {
        if (spdlog::should_log(spdlog::level::debug))  // the byte count costs a map lookup
          spdlog::debug("connection {}: FIN from {} forwarded after its bytes drained ({} redirected)", id,
                        d == &up ? "client" : "upstream", bridge->redirected_bytes(d->from_cookie));
        ::shutdown(d->to, SHUT_WR);
        d->fin_forwarded = true;
        // The client can send no more: give its socket its own protocol ops
        // back now rather than at close.
        if (d == &up) endpoint.release();
      } else {
        waiting_for_drain = true;
      }
    }
    if (up.fin_forwarded && down.fin_forwarded) break;

    // Retry a blocking client's capture while it can still send.
    if (capture_retry_at != Clock::time_point::max() && !up.fin_forwarded && Clock::now() >= capture_retry_at)
      try_capture();

    poked = false;
    if (waiting_for_drain) {
      // The peer's backlog drains at the receiver's pace: back off to 50 ms.
      wake.expires_after(drain_poll);
      drain_poll = std::min(drain_poll * 2, milliseconds(50));
    } else {
      drain_poll = milliseconds(1);
      wake.expires_at(asio::steady_timer::time_point::max());
    }
    if (capture_retry_at < wake.expiry()) wake.expires_at(capture_retry_at);
    if (!poked) {
      boost::system::error_code ec;
      co_await wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
  }

  hangups.remove(client_watch);
  hangups.remove(upstream_watch);
  on_cancel.reset();
  bulk.reset();
  spliced->open = false;
  if (spliced->boosted_bytes) budget.release(spliced->boosted_bytes);

  // Bytes the verdict program took from one socket that never reached the
  // other's send queue: they sat in the target's psock backlog when the
  // pair ended, and closing discards them. None when both FINs went through
  // (the drain check waited for them); a reset may cut some. Counted so a
  // loss is visible without a debugger.
  endpoint.release();
  const bpf::EndpointStats shortcut_stats = endpoint.stats();
  if (shortcut_stats.switches) {
    sink.kernel_path(Direction::up, KernelPath::sk_msg);
    spdlog::debug(
        "connection {}: short-circuit moved {} byte(s) up, fence opened {} time(s), {} return(s) to TCP", id,
        shortcut_stats.bytes, shortcut_stats.switches, shortcut_stats.fallbacks);
  }
  std::uint64_t dropped = 0;
  for (const SplicedDirection* d : {&up, &down}) {
    const std::uint64_t redirected =
        bridge->redirected_bytes(d->from_cookie) + (d == &up ? shortcut_stats.bytes : 0);
    const std::uint64_t written = tcp_bytes_written(d->to) - d->to_written_at_handover;
    if (redirected > written) dropped += redirected - written;
  }
  if (dropped) {
    sink.backlog_dropped(dropped);
    // Both FINs passed on means the drain check held for both directions:
    // a drop then is a bug. Any other end (a reset, even after a first FIN)
    // may legitimately cut bytes in flight.
    const bool clean = up.fin_forwarded && down.fin_forwarded;
    spdlog::log(clean ? spdlog::level::err : spdlog::level::debug,
                "connection {}: {} redirected byte(s) never reached the peer socket ({})", id, dropped,
                cancel.cancelled() ? "cancelled" : to_string(ending.reason));
  }

  // Fold the kernel's counters into the connection before the peer entries
  // go, so the access log and metrics keep them.
  sink.kernel_released(bridge->redirected_bytes(handover.cookies.a) + shortcut_stats.bytes,
                       bridge->redirected_bytes(handover.cookies.b));
  client.reset();
  upstream.reset();
  bridge->forget(handover.cookies);
  co_return ending;
}

}  // namespace shunt::proxy

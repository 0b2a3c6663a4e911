// The sockmap data path: the handover of an allowed connection to the kernel.
//
//   1. Userspace has written every byte it read (inspection flushes first).
//   2. Record how much each socket has had written to it so far (baseline).
//   3. SockmapBridge::handover(): peer entries, redirect targets, verdict
//      sockets, then a data_ready kick for bytes already queued.
//   4. Take both fds out of Asio's reactor: a spliced socket signals readable
//      on every redirected segment; HangupWatcher asks for hang-ups only.
//      From here the pair is a record driven by callbacks (SplicedPair), no
//      coroutine waits on it.
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
#include "common/async.h"
#include "common/io_buffer.h"
#include "common/reset.h"
#include "common/sockopt.h"
#include "common/unique_fd.h"
#include "proxy/datapath/bulk_grants.h"
#include "proxy/datapath/datapath.h"
#include "proxy/datapath/hangup_watcher.h"
#include "proxy/datapath/sockmap_hold.h"
#include "proxy/datapath/tcp_counters.h"
#include "proxy/metrics.h"  // the fallback reasons (names only)

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <netinet/in.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>

namespace shunt::proxy {

namespace asio = boost::asio;
using asio::ip::tcp;
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

// One endpoint's own socket in the short-circuit (docs/datapath.md, "The
// endpoint short-circuit"): the client's for client -> upstream, the local
// server's for upstream -> client. Taken out again when the endpoint can
// send no more (its FIN is in) or the pair ends. Not captured: `shortcut_`
// is null.
class CapturedEndpoint {
 public:
  using Clock = std::chrono::steady_clock;

  CapturedEndpoint() = default;
  CapturedEndpoint(const CapturedEndpoint&) = delete;
  CapturedEndpoint& operator=(const CapturedEndpoint&) = delete;
  ~CapturedEndpoint() { release(); }

  // Captures the endpoint behind `facing_fd` (shunt's socket facing it,
  // already handed over: `request.proxy_cookie`). An outcome other than
  // `captured` is the reason the endpoint stays on sk_skb.
  bpf::CaptureOutcome capture(bpf::EndpointShortcut& shortcut, const std::string& pod, int facing_fd,
                              const bpf::CaptureRequest& request) {
    retry_at_ = Clock::time_point::max();
    socklen_t l = sizeof(address_.local), r = sizeof(address_.remote);
    if (::getpeername(facing_fd, reinterpret_cast<sockaddr*>(&address_.local), &l) != 0 ||
        ::getsockname(facing_fd, reinterpret_cast<sockaddr*>(&address_.remote), &r) != 0)
      return bpf::CaptureOutcome::error;
    unmap_v4(address_.local);
    unmap_v4(address_.remote);
    // The endpoint's own netns: its pod's (by nsid), or shunt's own for host
    // processes and loopback peers, then every other one shunt knows.
    const bpf::CaptureOutcome outcome = shortcut.capture_local(address_, pod, request);
    if (outcome == bpf::CaptureOutcome::captured) {
      shortcut_ = &shortcut;
      proxy_cookie_ = request.proxy_cookie;
    }
    return outcome;
  }

  // An endpoint that could not be captured yet is tried again, and the
  // fence makes a late capture as safe as an early one. A blocking one a
  // few times (kCaptureRetries): many set O_NONBLOCK only after their first
  // bytes (iperf3 writes its cookie first; a server sets it right after
  // accept()). A server that has not accept()ed its socket yet for longer
  // (kAcceptRetries, about 9 s in all), counting none of the blocking ones:
  // a busy server accepts late, and its socket is only judged once it has
  // a file. False when the outcome's retries are used up.
  bool retry_later(bpf::CaptureOutcome outcome) {
    const bool accepting = outcome == bpf::CaptureOutcome::not_accepted;
    std::size_t& used = accepting ? accept_waits_ : attempts_;
    const std::span<const std::chrono::milliseconds> schedule =
        accepting ? std::span<const std::chrono::milliseconds>(kAcceptRetries)
                  : std::span<const std::chrono::milliseconds>(kCaptureRetries);
    if (used >= schedule.size()) return false;
    retry_at_ = Clock::now() + schedule[used++];
    return true;
  }
  [[nodiscard]] Clock::time_point retry_at() const { return retry_at_; }
  [[nodiscard]] std::size_t attempts() const { return attempts_ + accept_waits_; }

  [[nodiscard]] bool captured() const { return shortcut_ != nullptr || final_.switches || final_.bytes; }
  // Still in the short-circuit (captured and not released).
  [[nodiscard]] bool live() const { return shortcut_ != nullptr; }

  // What the short-circuit moved, live or as it was at release.
  [[nodiscard]] bpf::EndpointStats stats() const { return shortcut_ ? shortcut_->stats(address_) : final_; }

  // Out of the short-circuit, and no retry from now on.
  void release() {
    retry_at_ = Clock::time_point::max();
    if (!shortcut_) return;
    final_ = shortcut_->stats(address_);
    shortcut_->release(address_, proxy_cookie_);
    shortcut_ = nullptr;
  }

 private:
  static constexpr std::chrono::milliseconds kCaptureRetries[] = {
      std::chrono::milliseconds(5), std::chrono::milliseconds(50), std::chrono::milliseconds(500)};
  static constexpr std::chrono::milliseconds kAcceptRetries[] = {
      std::chrono::milliseconds(5),    std::chrono::milliseconds(20),   std::chrono::milliseconds(50),
      std::chrono::milliseconds(100),  std::chrono::milliseconds(200),  std::chrono::milliseconds(500),
      std::chrono::milliseconds(1000), std::chrono::milliseconds(2000), std::chrono::milliseconds(5000)};

  bpf::EndpointShortcut* shortcut_ = nullptr;
  bpf::EndpointAddress address_;
  std::uint64_t proxy_cookie_ = 0;
  bpf::EndpointStats final_;
  std::size_t attempts_ = 0;      // retries while blocking
  std::size_t accept_waits_ = 0;  // retries while not accept()ed
  Clock::time_point retry_at_ = Clock::time_point::max();
};

// One direction of a kernel-spliced pair.
struct SplicedDirection {
  int from = -1;
  int to = -1;
  std::uint64_t from_cookie = 0;
  std::uint64_t from_consumed_at_handover = 0;  // read by userspace before the handover
  std::uint64_t to_written_at_handover = 0;
  bool fin_forwarded = false;
  // `to`'s write_seq at the handover, read only for a pair the short-circuit
  // may capture (the fence's base: sockmap_shortcut.bpf.c, fence_open).
  std::optional<std::uint32_t> to_seq_at_handover{};
  HeldBytes hold{};  // what the verdict kept on `from` (docs/datapath.md, "Memory bound")
  HeldBytes::Wait hold_wait = HeldBytes::Wait::nothing;
  // The short-circuit of this direction's sender (`from`'s peer), with the
  // short-circuit on only; and what it moved in the process this pair was
  // adopted from (released there at the freeze, never captured again).
  std::unique_ptr<CapturedEndpoint> endpoint{};
  std::uint64_t short_circuited_before = 0;
};

// A kernel-spliced pair after its handover, without a coroutine (issue
// 16): the kernel moves the bytes, and what is left for userspace (pass
// each FIN on once its bytes drained, pass a reset on, end when cancelled,
// retry a blocking client's capture) is step(), run when the worker's
// HangupWatcher reports either socket, when the connection's CancelSlot
// fires, and, only while a FIN waits for its bytes or a capture retry is
// due, from a timer taken for that wait. An idle pair is this record and
// its two hang-up watches; it used to be five suspended coroutine frames
// and a timer (~2.9 KB of the ~4.4 KB an idle spliced connection cost).
//
// It owns itself (keep_alive_) from start() until it ends, then gives its
// Ending to `on_end` from a handler of its own, on its thread: never from
// inside a call into it, so the owner may go away in `on_end`. An exception
// in a step is logged and counted like a coroutine's (common/async.h) and
// ends the pair with both sides reset.
//
// A takeover (pair_handoff.h) freezes it: while frozen it does nothing to
// its sockets (hang-ups and a cancel wait), and once let go it ends without
// touching them, the new process holding them.
class SplicedPair final : public std::enable_shared_from_this<SplicedPair>, public PairHandoff::Pair {
 public:
  using Clock = std::chrono::steady_clock;

  // `adopted`: handed over by the process this one took over (what its
  // endpoint short-circuit moved already is in each direction's
  // short_circuited_before); it starts frozen.
  struct Adopted {
    bool boosted = false;
  };

  SplicedPair(std::uint64_t id, UniqueFd client, UniqueFd upstream, SplicedDirection up,
              SplicedDirection down, const bpf::HandoverResult& handover, DatapathSink& sink,
              CancelSlot& cancel, const KernelSplice& kernel, asio::any_io_executor executor,
              std::optional<Adopted> adopted = std::nullopt)
      : id_(id),
        client_(std::move(client)),
        upstream_(std::move(upstream)),
        up_(std::move(up)),
        down_(std::move(down)),
        consumed_error_a_(handover.consumed_error_a),
        consumed_error_b_(handover.consumed_error_b),
        adopted_(adopted),
        handoff_(kernel.handoff),
        bridge_(*kernel.bridge),
        hangups_(*kernel.hangups),
        budget_(kernel.bulk_grants->budget()),
        sink_(sink),
        cancel_(cancel),
        executor_(std::move(executor)),
        shortcut_(kernel.shortcut),
        client_pod_(kernel.client_pod),
        server_pod_(kernel.server_pod) {}

  void start(std::function<void(Ending)> on_end, BulkGrants& grants) {
    keep_alive_ = shared_from_this();
    on_end_ = std::move(on_end);
    // Each endpoint's own socket (the client's, and the server's where it
    // is local too) into the short-circuit, if it can take it; its sk_msg
    // program switches over when the fence allows. After the handover, so
    // shunt's socket facing the endpoint already counts what the verdict
    // redirects and shunt's other socket is already a target. A direction
    // whose FIN is already through (an upstream that half-closed during
    // the handover) has nothing left to send.
    //
    // A blocking endpoint is retried (CapturedEndpoint::retry_later); only
    // the last refusal is counted.
    //
    // An adopted pair is not captured again: the old process released its
    // captures when it froze the pair (their bytes are in
    // short_circuited_before).
    if (shortcut_ && !adopted_ && !consumed_error_a_ && !consumed_error_b_)
      for (SplicedDirection* d : {&up_, &down_}) {
        if (d->fin_forwarded) continue;
        d->endpoint = std::make_unique<CapturedEndpoint>();
        try_capture(*d);
      }
    if (handoff_) {
      if (adopted_) {
        hold_ = Hold::frozen;
        handoff_->adopt_frozen(*this);
      } else {
        handoff_->add(*this);
      }
    }
    // It keeps the larger buffer it was granted in the old process if this
    // one's budget has room for it too.
    if (adopted_ && adopted_->boosted && budget_.try_acquire(BufferBudget::kBoostedBufferBytes))
      boosted_bytes_ = BufferBudget::kBoostedBufferBytes;
    // Raw `this` in the watches and the cancel hook: end() removes them
    // before keep_alive_ lets go.
    client_watch_ = hangups_.add(client_.get(), [this](std::uint32_t) { poke(); });
    upstream_watch_ = hangups_.add(upstream_.get(), [this](std::uint32_t) { poke(); });
    on_cancel_.emplace(cancel_.install([this] { poke(); }));
    // The grant comes from the control thread (proxy/datapath/bulk_grants.h)
    // and runs here while the pair is open (`open_` is cleared before
    // on_end), so `sink_` is still alive then.
    bulk_ =
        grants.enroll(up_.from_cookie, down_.from_cookie,
                      [self = shared_from_this()](std::uint64_t source, bpf::SockmapBridge::EventKind kind) {
                        asio::post(self->executor_, [self, source, kind] {
                          if (const auto why = bpf::released_for(kind))
                            self->release_endpoint(source, *why);
                          else if (kind == bpf::SockmapBridge::EventKind::hold)
                            self->start_hold(source);
                          else if (kind == bpf::SockmapBridge::EventKind::broken)
                            self->stream_broken(source);
                          else
                            self->grant_bulk(source);
                        });
                      });
    // A hold that began before this enrollment had its event dropped (no
    // pair known for the cookie yet), and an adopted pair may be holding.
    start_pending_holds();
    // The first look is posted too: on_end never runs before start_sockmap
    // has returned.
    poke();
  }

  // --- PairHandoff::Pair, on this thread ---
  PairHandoff::Exported freeze() override {
    hold_ = Hold::frozen;
    // Held bytes already in the target but not yet taken off the source
    // would be forwarded again by the new process.
    for (SplicedDirection* d : {&up_, &down_})
      if (!d->hold.settle_owed(d->from))
        spdlog::error(
            "connection {}: held bytes written to the peer are still on the source at the takeover; "
            "the new process may forward them again",
            id_);
    // The new process does not inherit this one's shortcut maps.
    for (SplicedDirection* d : {&up_, &down_})
      if (d->endpoint) d->endpoint->release();
    SplicedPairState state;
    state.client_cookie = up_.from_cookie;
    state.upstream_cookie = down_.from_cookie;
    state.client_consumed = up_.from_consumed_at_handover;
    state.upstream_consumed = down_.from_consumed_at_handover;
    state.client_written = down_.to_written_at_handover;
    state.upstream_written = up_.to_written_at_handover;
    state.short_circuited = short_circuited(up_);
    state.short_circuited_down = short_circuited(down_);
    if (state.short_circuited || state.short_circuited_down)
      spdlog::debug("connection {}: frozen for a takeover; the short-circuit moved {} byte(s) up, {} down",
                    id_, state.short_circuited, state.short_circuited_down);
    state.client_fin_forwarded = up_.fin_forwarded;
    state.upstream_fin_forwarded = down_.fin_forwarded;
    state.boosted = boosted_bytes_ != 0;
    return {id_, state, client_.get(), upstream_.get(), PairKind::kernel_spliced, {}};
  }
  [[nodiscard]] PairKind kind() const override { return PairKind::kernel_spliced; }
  void thaw() override {
    hold_ = Hold::running;
    // Hold events while frozen went to the other process (or nowhere).
    start_pending_holds();
    poke();
  }
  void let_go() override {
    hold_ = Hold::gone;
    poke();
  }

 private:
  // Runs step() from a handler of its own, once however many events come
  // before it.
  void poke() {
    if (step_posted_) return;
    step_posted_ = true;
    asio::post(executor_, [self = shared_from_this()] { self->step(); });
  }

  void step() {
    step_posted_ = false;
    if (!open_) return;
    bool running = false;
    try {
      running = advance();
    } catch (...) {
      coroutine_failed("kernel-spliced pair", std::current_exception(), Failure::survivable);
      ending_.note(EndReason::proxy_error, "internal error");
      reset_fd(client_.get());
      reset_fd(upstream_.get());
    }
    if (!running) end();
  }

  // Starts the pump of a direction with held bytes not yet forwarded.
  void start_pending_holds() {
    for (SplicedDirection* d : {&up_, &down_})
      if (bridge_.hold_state(d->from_cookie).held != bridge_.forwarded(d->from_cookie)) d->hold.start();
  }

  // The verdict dropped a segment repeating bytes it had taken, because it
  // could not cut the repeat (bpf/sockmap_redirect.bpf.c, cut_repeated):
  // the bytes behind the repeat are lost, so the stream cannot go on.
  void stream_broken(std::uint64_t source) {
    if (!open_) return;
    broken_ = true;
    spdlog::error(
        "connection {}: the {} socket received a retransmitted segment whose repeated bytes the "
        "kernel could not cut; resetting both sides rather than deliver a corrupt stream",
        id_, source == up_.from_cookie ? "client" : "upstream");
    poke();
  }

  void start_hold(std::uint64_t source) {
    if (!open_) return;
    (source == up_.from_cookie ? up_ : down_).hold.start();
    poke();
  }

  // Moves held bytes (sockmap_hold.h) and watches for readiness only while
  // a direction holds: on a redirecting socket every segment would wake
  // the worker. False when a socket failed (both were reset).
  bool pump_held(bool& waiting_for_backlog) {
    for (SplicedDirection* d : {&up_, &down_}) {
      if (d->fin_forwarded) continue;
      const HeldBytes::Step step = d->hold.pump(bridge_, d->from, d->to, d->from_cookie,
                                                d->to_written_at_handover, short_circuited(*d));
      d->hold_wait = step.wait;
      waiting_for_backlog = waiting_for_backlog || step.wait == HeldBytes::Wait::backlog;
      if (step.failed_fd >= 0) {
        const bool client_failed = step.failed_fd == client_.get();
        spdlog::debug("connection {}: {} side failed while shunt forwarded held bytes; resetting both", id_,
                      client_failed ? "client" : "upstream");
        ending_.note(client_failed ? EndReason::client_reset : EndReason::upstream_reset,
                     std::strerror(step.error));
        reset_fd(client_.get());
        reset_fd(upstream_.get());
        return false;
      }
    }
    auto wants = [](const SplicedDirection& d, HeldBytes::Wait which, std::uint32_t event) {
      return d.hold_wait == which ? event : 0u;
    };
    hangups_.set_extra_events(client_watch_, wants(up_, HeldBytes::Wait::readable, EPOLLIN) |
                                                 wants(down_, HeldBytes::Wait::writable, EPOLLOUT));
    hangups_.set_extra_events(upstream_watch_, wants(down_, HeldBytes::Wait::readable, EPOLLIN) |
                                                   wants(up_, HeldBytes::Wait::writable, EPOLLOUT));
    return true;
  }

  void grant_bulk(std::uint64_t source) {
    if (!open_ || boosted_bytes_) return;
    if (!budget_.try_acquire(BufferBudget::kBoostedBufferBytes)) {
      sink_.buffer_boost(false);
      return;
    }
    boosted_bytes_ = BufferBudget::kBoostedBufferBytes;
    // Only the bulk direction's target needs room: the socket opposite the source.
    const int target = source == up_.from_cookie ? upstream_.get() : client_.get();
    set_send_buffer(target, static_cast<int>(BufferBudget::kBoostedBufferBytes), true);
    sink_.buffer_boost(true);
    spdlog::debug("connection {}: bulk, {} send buffer boosted", id_,
                  source == up_.from_cookie ? "upstream" : "client");
  }

  // The sk_msg program of the endpoint facing `source` asks: a sender that
  // never pauses cannot reopen the fence, and on TCP its captured socket
  // only costs (docs/datapath.md, "Bulk senders"); or the application made
  // its socket one the capture would refuse (blocking, SO_ZEROCOPY, a ULP),
  // which its own protocol operations must serve.
  void release_endpoint(std::uint64_t source, bpf::CaptureOutcome why) {
    SplicedDirection& d = source == up_.from_cookie ? up_ : down_;
    // Not live any more: released meanwhile (its FIN, or a takeover froze
    // the pair); nothing to take out, nothing to count.
    if (!open_ || !d.endpoint || !d.endpoint->live()) return;
    spdlog::debug("connection {}: {} out of the short-circuit: {}", id_, sender_name(d), bpf::to_string(why));
    sink_.shortcut_fell_back(direction_of(d), bpf::to_string(why));
    d.endpoint->release();
  }

  [[nodiscard]] Direction direction_of(const SplicedDirection& d) const {
    return &d == &up_ ? Direction::up : Direction::down;
  }
  // Who sends in `d`, for log lines.
  [[nodiscard]] const char* sender_name(const SplicedDirection& d) const {
    return &d == &up_ ? "client" : "server";
  }

  // Captures `d`'s sender: shunt's socket facing it is `d.from`, its target
  // `d.to` (whose cookie is the other direction's source), its pod the
  // client's or the server's, and the server's socket is the accepted one.
  void try_capture(SplicedDirection& d) {
    const bool up = &d == &up_;
    // No base for the fence (the kernel refused the reading): never opened.
    const bpf::CaptureOutcome outcome =
        d.to_seq_at_handover
            ? d.endpoint->capture(*shortcut_, std::string(up ? client_pod_ : server_pod_), d.from,
                                  {.target_cookie = (up ? down_ : up_).from_cookie,
                                   .proxy_cookie = d.from_cookie,
                                   .proxy_consumed = d.from_consumed_at_handover,
                                   .target_seq = *d.to_seq_at_handover,
                                   .accepted = !up})
            : bpf::CaptureOutcome::error;
    if (outcome == bpf::CaptureOutcome::captured) {
      spdlog::debug("connection {}: {} captured for the short-circuit ({} retries)", id_, sender_name(d),
                    d.endpoint->attempts());
      return;
    }
    if ((outcome == bpf::CaptureOutcome::blocking || outcome == bpf::CaptureOutcome::not_accepted) &&
        d.endpoint->retry_later(outcome))
      return;
    sink_.shortcut_fell_back(direction_of(d), bpf::to_string(outcome));
    spdlog::debug("connection {}: {} stays on sk_skb ({})", id_, sender_name(d), bpf::to_string(outcome));
  }

  [[nodiscard]] static bpf::EndpointStats shortcut_stats(const SplicedDirection& d) {
    return d.endpoint ? d.endpoint->stats() : bpf::EndpointStats{};
  }
  // Bytes `d`'s sender's short-circuit moved, in this process and (adopted)
  // before, as counted: the last redirect's push is counted before it is
  // settled and may have fallen short (never low, so a wait on it can only
  // be too long: the hold's pump, and a takeover's figure).
  [[nodiscard]] static std::uint64_t short_circuited(const SplicedDirection& d) {
    return d.short_circuited_before + shortcut_stats(d).bytes;
  }
  // The same, as written to `d.to`, for when the sender can send no more
  // (its FIN is in, or the pair ends): settled pushes, and of the last,
  // unsettled ones what `d.to` shows beyond the verdict's bytes and the
  // settled ones. Only while the sender is still redirecting: then nothing
  // but those pushes wrote there since they began (the fence had opened;
  // sockmap_shortcut.bpf.c, settle_pushed). Back on TCP, unsettled bytes
  // (several threads' pushes) count in full. `redirected`: the verdict's
  // bytes from `d.from`.
  [[nodiscard]] static std::uint64_t short_circuited_written(const SplicedDirection& d,
                                                             std::uint64_t redirected) {
    const bpf::EndpointStats stats = shortcut_stats(d);
    if (!stats.redirecting) return short_circuited(d);
    const std::uint64_t settled = d.short_circuited_before + stats.bytes - stats.unsettled;
    const std::uint64_t written = tcp_bytes_written(d.to) - d.to_written_at_handover;
    const std::uint64_t beyond = written > redirected + settled ? written - redirected - settled : 0;
    return settled + std::min(stats.unsettled, beyond);
  }

  // Only called once the source's FIN is visible. A direction may pass its
  // FIN on once every byte its source received
  // has been through the verdict program and written to the target. The
  // first half matters: TCP makes the FIN visible (tcp_fin, RCV_SHUTDOWN)
  // before the softirq that queued the last segment has run the verdict
  // over it, so "written >= redirected" alone could pass for an instant
  // with the tail not yet redirected, and the FIN would overtake it.
  //
  // Held bytes (sockmap_hold.h) count as taken by the verdict and must all
  // have been forwarded too.
  [[nodiscard]] bool drained(const SplicedDirection& d) const {
    const bpf::HoldState hold = bridge_.hold_state(d.from_cookie);
    if (hold.held != bridge_.forwarded(d.from_cookie)) return false;
    const std::uint64_t redirected = hold.bytes;
    // tcpi_bytes_received counts the FIN's sequence number too.
    const std::uint64_t received = tcp_bytes_received(d.from);
    const std::uint64_t payload =
        received > d.from_consumed_at_handover ? received - 1 - d.from_consumed_at_handover : 0;
    if (payload > redirected) return false;
    // The short-circuit's bytes were pushed into the target inside the
    // sender's sendmsg, before its FIN left; they count towards what the
    // target must have been written, never towards what the source received.
    // As written, not as counted: a last push that fell short would
    // otherwise be waited for until the drain timeout (the sender sent
    // those bytes again, or gave up on them).
    const std::uint64_t shortcut_bytes = short_circuited_written(d, redirected);
    return tcp_bytes_written(d.to) - d.to_written_at_handover >= redirected + shortcut_bytes;
  }

  // One look at the pair (what one turn of the old coroutine's loop did);
  // false when it has ended, true when it waits for the next event.
  bool advance() {
    if (hold_ == Hold::gone) return false;
    if (hold_ == Hold::frozen) {
      wake_at(Clock::time_point::max());
      return true;
    }
    if (cancel_.cancelled()) {
      reset_fd(client_.get());
      reset_fd(upstream_.get());
      return false;
    }
    if (broken_) {
      ending_.note(EndReason::proxy_error, "a repeated segment could not be cut");
      reset_fd(client_.get());
      reset_fd(upstream_.get());
      return false;
    }
    // An error the handover's recv consumed (see SocketState) ends the pair.
    const int consumed_error = consumed_error_a_ ? consumed_error_a_ : consumed_error_b_;
    const SocketState client_state = socket_state(client_.get(), down_.fin_forwarded);
    const SocketState upstream_state = socket_state(upstream_.get(), up_.fin_forwarded);
    if (client_state.failed || upstream_state.failed || consumed_error) {
      // RST (or error) on one side: reset the other, promptly.
      const bool client_failed = consumed_error ? consumed_error_a_ != 0 : client_state.failed;
      spdlog::debug("connection {}: {} side reset; resetting the other", id_,
                    client_failed ? "client" : "upstream");
      ending_.note(client_failed ? EndReason::client_reset : EndReason::upstream_reset,
                   consumed_error ? std::strerror(consumed_error)
                                  : socket_error(client_failed ? client_.get() : upstream_.get()));
      reset_fd(client_.get());
      reset_fd(upstream_.get());
      return false;
    }
    // Held bytes move first: a FIN waits for them as for the backlog.
    bool waiting_for_backlog = false;
    if (!pump_held(waiting_for_backlog)) return false;

    bool waiting_for_drain = false;
    for (auto* d : {&up_, &down_}) {
      const bool source_closed = d == &up_ ? client_state.read_closed : upstream_state.read_closed;
      if (!source_closed || d->fin_forwarded) continue;
      ending_.note(d == &up_ ? EndReason::client_closed : EndReason::upstream_closed);
      if (drained(*d)) {
        if (spdlog::should_log(spdlog::level::debug))  // the byte count costs a map lookup
          spdlog::debug("connection {}: FIN from {} forwarded after its bytes drained ({} redirected)", id_,
                        d == &up_ ? "client" : "upstream", bridge_.redirected_bytes(d->from_cookie));
        ::shutdown(d->to, SHUT_WR);
        d->fin_forwarded = true;
        // The sender can send no more: give its socket its own protocol
        // ops back now rather than at close.
        if (d->endpoint) d->endpoint->release();
      } else {
        waiting_for_drain = true;
      }
    }
    if (up_.fin_forwarded && down_.fin_forwarded) return false;
    // A FIN waiting on held bytes that no pump moves: start it (the drain
    // poll below comes back here).
    if (waiting_for_drain) start_pending_holds();

    // Retry a blocking endpoint's capture while it can still send (its FIN
    // passed on released it, which ends its retries).
    Clock::time_point retry_at = Clock::time_point::max();
    for (SplicedDirection* d : {&up_, &down_}) {
      if (!d->endpoint) continue;
      if (Clock::now() >= d->endpoint->retry_at()) try_capture(*d);
      retry_at = std::min(retry_at, d->endpoint->retry_at());
    }

    Clock::time_point wake = Clock::time_point::max();
    if (waiting_for_drain || waiting_for_backlog) {
      // The peer's backlog drains at the receiver's pace: back off to 50 ms,
      // or to 4 ms while held bytes wait behind it (their sender is
      // stopped meanwhile).
      const milliseconds cap = waiting_for_backlog ? milliseconds(4) : milliseconds(50);
      drain_poll_ = std::min(drain_poll_, cap);
      wake = Clock::now() + drain_poll_;
      drain_poll_ = std::min(drain_poll_ * 2, cap);
    } else {
      drain_poll_ = milliseconds(1);
    }
    wake_at(std::min(wake, retry_at));
    return true;
  }

  // A timer only while something is due at a time (a drain poll, a capture
  // retry); an idle pair holds none.
  void wake_at(Clock::time_point at) {
    ++timer_generation_;
    if (at == Clock::time_point::max()) {
      timer_.reset();  // its pending wait completes as aborted and is ignored
      return;
    }
    if (!timer_) timer_ = std::make_unique<asio::steady_timer>(executor_);
    timer_->expires_at(at);
    timer_->async_wait([self = shared_from_this(), armed = timer_generation_](boost::system::error_code ec) {
      if (!ec && armed == self->timer_generation_) self->step();
    });
  }

  // Takes the pair out of every watch, folds the kernel's counters into the
  // connection, closes both sockets and hands the Ending over.
  void end() {
    const std::shared_ptr<SplicedPair> self = std::move(keep_alive_);  // this goes with `self`
    std::function<void(Ending)> on_end = std::move(on_end_);
    open_ = false;
    try {
      tear_down();
    } catch (...) {
      coroutine_failed("kernel-spliced pair", std::current_exception(), Failure::survivable);
      ending_.note(EndReason::proxy_error, "internal error");
    }
    try {
      on_end(std::move(ending_));
    } catch (...) {
      coroutine_failed("kernel-spliced pair's owner", std::current_exception(), Failure::survivable);
    }
  }

  void tear_down() {
    if (handoff_) handoff_->remove(*this);
    hangups_.remove(client_watch_);
    hangups_.remove(upstream_watch_);
    on_cancel_.reset();
    bulk_.reset();
    ++timer_generation_;
    timer_.reset();
    if (boosted_bytes_) budget_.release(boosted_bytes_);
    if (hold_ == Hold::gone) {
      // The new process holds both sockets through descriptors of its own:
      // closing ours is not their last close, so they stay in the sockmaps
      // (a last close would take them out, and their queues with them), and
      // their sock_peers entries stay for the new process's FIN rule.
      spdlog::debug("connection {}: handed to the new process", id_);
      ending_ = Ending(EndReason::taken_over);
      client_.reset();
      upstream_.reset();
      return;
    }

    // Bytes the verdict program took from one socket that never reached the
    // other's send queue: they sat in the target's psock backlog when the
    // pair ended, and closing discards them. None when both FINs went through
    // (the drain check waited for them); a reset may cut some. Counted so a
    // loss is visible without a debugger.
    //
    // Each direction's total: the verdict's bytes and, as written, what the
    // sender's short-circuit moved (tear_down's figures are final: the
    // endpoints are released first).
    std::uint64_t moved[2] = {0, 0};
    for (SplicedDirection* d : {&up_, &down_}) {
      if (d->endpoint) d->endpoint->release();
      const std::uint64_t redirected = bridge_.redirected_bytes(d->from_cookie);
      const std::uint64_t short_circuited = short_circuited_written(*d, redirected);
      moved[d == &up_ ? 0 : 1] = redirected + short_circuited;
      if (!d->endpoint || !d->endpoint->captured()) continue;
      const bpf::EndpointStats stats = d->endpoint->stats();
      sink_.short_circuited(direction_of(*d), short_circuited - d->short_circuited_before, stats.switches,
                            stats.fallbacks);
      if (!stats.switches) continue;
      sink_.kernel_path(direction_of(*d), KernelPath::sk_msg);
      spdlog::debug(
          "connection {}: short-circuit moved {} byte(s) {}, fence opened {} time(s), {} return(s) to TCP, "
          "{} push(es) short by {} byte(s), {} byte(s) written by others during a push",
          id_, short_circuited, d == &up_ ? "up" : "down", stats.switches, stats.fallbacks,
          stats.short_pushes, stats.short_bytes, stats.foreign_bytes);
    }
    if (const std::uint64_t holds = up_.hold.holds() + down_.hold.holds()) {
      const std::uint64_t forwarded = up_.hold.forwarded_here() + down_.hold.forwarded_here();
      sink_.held(holds, forwarded);
      spdlog::debug("connection {}: held {} time(s) for a slow receiver, {} byte(s) forwarded by shunt", id_,
                    holds, forwarded);
    }
    if (const std::uint64_t repeated =
            bridge_.repeated_bytes(up_.from_cookie) + bridge_.repeated_bytes(down_.from_cookie)) {
      sink_.repeated(repeated);
      spdlog::debug("connection {}: the verdict cut {} byte(s) that retransmitted segments repeated", id_,
                    repeated);
    }
    std::uint64_t dropped = 0;
    for (const SplicedDirection* d : {&up_, &down_}) {
      const std::uint64_t redirected = moved[d == &up_ ? 0 : 1];
      const std::uint64_t written = tcp_bytes_written(d->to) - d->to_written_at_handover;
      if (redirected > written) dropped += redirected - written;
    }
    if (dropped) {
      sink_.backlog_dropped(dropped);
      // Both FINs passed on means the drain check held for both directions:
      // a drop then is a bug. Any other end (a reset, even after a first FIN)
      // may legitimately cut bytes in flight.
      const bool clean = up_.fin_forwarded && down_.fin_forwarded;
      spdlog::log(clean ? spdlog::level::err : spdlog::level::debug,
                  "connection {}: {} redirected byte(s) never reached the peer socket ({})", id_, dropped,
                  cancel_.cancelled() ? "cancelled" : to_string(ending_.reason));
    }

    // Fold the kernel's counters into the connection before the peer entries
    // go, so the access log and metrics keep them.
    sink_.kernel_released(moved[0], moved[1]);
    client_.reset();
    upstream_.reset();
    bridge_.forget({up_.from_cookie, down_.from_cookie});
  }

  std::uint64_t id_;
  UniqueFd client_;
  UniqueFd upstream_;
  SplicedDirection up_;
  SplicedDirection down_;
  int consumed_error_a_;
  int consumed_error_b_;
  std::optional<Adopted> adopted_;
  PairHandoff* handoff_;  // null: never moved
  enum class Hold { running, frozen, gone };
  Hold hold_ = Hold::running;
  bpf::SockmapBridge& bridge_;
  HangupWatcher& hangups_;
  BufferBudget& budget_;
  DatapathSink& sink_;  // the owner's, alive until on_end
  CancelSlot& cancel_;  // the owner's, alive until on_end
  asio::any_io_executor executor_;
  bpf::EndpointShortcut* shortcut_;
  std::string_view client_pod_;  // the owner's, alive until on_end
  std::string_view server_pod_;  // likewise
  std::uint64_t client_watch_ = 0;
  std::uint64_t upstream_watch_ = 0;
  std::optional<CancelSlot::Installed> on_cancel_;
  BulkGrants::Enrollment bulk_;
  std::uint64_t boosted_bytes_ = 0;
  std::unique_ptr<asio::steady_timer> timer_;
  std::uint64_t timer_generation_ = 0;
  milliseconds drain_poll_{1};
  bool open_ = true;
  bool step_posted_ = false;
  bool broken_ = false;  // stream_broken(): reset at the next look
  Ending ending_;
  std::function<void(Ending)> on_end_;
  std::shared_ptr<SplicedPair> keep_alive_;
};

// The upstream's FIN arrived between the pair's two verdict inserts, so the
// kernel refused the upstream socket (sock_map takes ESTABLISHED sockets
// only) after the client's had started redirecting into it: the pair can go
// neither back to userspace (the client's bytes are already in the
// upstream's egress) nor whole into the kernel. But a half-closed upstream
// will send nothing beyond what is queued now, so userspace copies that to
// the client and passes the FIN on; the client's direction stays with the
// kernel. The bytes copied, or nothing when the copy failed (a reset, a
// cancel): the caller resets both.
asio::awaitable<std::optional<std::uint64_t>> finish_half_closed_upstream(tcp::socket& upstream,
                                                                          tcp::socket& client,
                                                                          DatapathSink& sink,
                                                                          CancelSlot& cancel) {
  auto on_cancel = cancel.install([&] {
    boost::system::error_code ignored;
    upstream.cancel(ignored);
    client.cancel(ignored);
  });
  boost::system::error_code ec;
  upstream.non_blocking(true, ec);
  std::uint64_t copied = 0;
  IoBuffer buffer;
  for (;;) {
    if (cancel.cancelled()) co_return std::nullopt;
    const std::size_t n = upstream.read_some(asio::buffer(buffer.data(), IoBuffer::size()), ec);
    if (ec == asio::error::eof) break;
    if (ec == asio::error::would_block || ec == asio::error::try_again) {
      // Not expected once the FIN is in; waited for all the same.
      co_await upstream.async_wait(tcp::socket::wait_read, asio::redirect_error(asio::use_awaitable, ec));
      if (ec) co_return std::nullopt;
      continue;
    }
    if (ec) co_return std::nullopt;
    co_await asio::async_write(client, asio::buffer(buffer.data(), n),
                               asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return std::nullopt;
    sink.moved(Direction::down, n);
    copied += n;
  }
  client.shutdown(tcp::socket::shutdown_send, ec);
  if (ec) co_return std::nullopt;
  co_return copied;
}

}  // namespace

asio::awaitable<std::optional<Ending>> start_sockmap(SocketPair& pair, DatapathSink& sink, CancelSlot& cancel,
                                                     const KernelSplice& kernel, bool inspected,
                                                     std::function<void(Ending)> on_end) {
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

  const bpf::HandoverResult handover = bridge->handover(
      client_fd, upstream_fd, client_written, upstream_written,
      kernel.shortcut ? bpf::SockmapBridge::WriteSeqs::read : bpf::SockmapBridge::WriteSeqs::skip);
  if (handover.write_seqs) {
    up.to_seq_at_handover = handover.write_seqs->second;
    down.to_seq_at_handover = handover.write_seqs->first;
  }
  if (handover.failure != bpf::HandoverFailure::none) {
    spdlog::debug("connection {}: sockmap refused the pair ({}), {}", id, handover.error.message(),
                  handover.partial ? "after the client's socket entered it" : "splicing instead");
    if (!handover.partial) {
      fall_back(bpf::to_string(handover.failure));
      co_return co_await run_splice(pair, sink, cancel);
    }
    sink.fell_back(kFallbackPartialHandover);
    std::optional<std::uint64_t> finished;
    if (handover.failure == bpf::HandoverFailure::socket_state && handover.consumed_error_a == 0 &&
        tcp_peer_half_closed(upstream_fd))
      finished = co_await finish_half_closed_upstream(pair.upstream, pair.client, sink, cancel);
    if (!finished) {
      bridge->forget(handover.cookies);
      reset_socket(pair.client);
      reset_socket(pair.upstream);
      co_return Ending(EndReason::handover_failed, handover.error.message(), /*reset_both=*/true);
    }
    spdlog::debug(
        "connection {}: upstream half-closed during the handover; its last {} byte(s) copied, "
        "the client's direction stays with the kernel",
        id, *finished);
    down.to_written_at_handover += *finished;
    if (down.to_seq_at_handover) *down.to_seq_at_handover += static_cast<std::uint32_t>(*finished);
    down.fin_forwarded = true;
  }
  up.from_cookie = handover.cookies.a;
  down.from_cookie = handover.cookies.b;
  sink.carried_by(config::Datapath::sockmap);
  sink.kernel_spliced(handover.cookies.a, handover.cookies.b);
  sink.kernel_path(Direction::up, KernelPath::sk_skb);
  if (!handover.partial) sink.kernel_path(Direction::down, KernelPath::sk_skb);

  // From here on the fds are the pair's alone; Asio forgets them.
  auto spliced = std::make_shared<SplicedPair>(
      id, UniqueFd(pair.client.release()), UniqueFd(pair.upstream.release()), std::move(up), std::move(down),
      handover, sink, cancel, kernel, co_await asio::this_coro::executor);
  spliced->start(std::move(on_end), *kernel.bulk_grants);
  co_return std::nullopt;
}

void start_sockmap_adopted(UniqueFd client, UniqueFd upstream, const SplicedPairState& state,
                           DatapathSink& sink, CancelSlot& cancel, const KernelSplice& kernel,
                           asio::any_io_executor executor, std::function<void(Ending)> on_end) {
  const int client_fd = client.get(), upstream_fd = upstream.get();
  SplicedDirection up{client_fd,
                      upstream_fd,
                      state.client_cookie,
                      state.client_consumed,
                      state.upstream_written,
                      state.client_fin_forwarded};
  SplicedDirection down{upstream_fd,           client_fd,
                        state.upstream_cookie, state.upstream_consumed,
                        state.client_written,  state.upstream_fin_forwarded};
  up.short_circuited_before = state.short_circuited;
  down.short_circuited_before = state.short_circuited_down;
  sink.carried_by(config::Datapath::sockmap);
  sink.kernel_spliced(state.client_cookie, state.upstream_cookie);
  auto spliced = std::make_shared<SplicedPair>(
      sink.id(), std::move(client), std::move(upstream), std::move(up), std::move(down),
      bpf::HandoverResult{}, sink, cancel, kernel, std::move(executor), SplicedPair::Adopted{state.boosted});
  spliced->start(std::move(on_end), *kernel.bulk_grants);
}

asio::awaitable<Ending> run_sockmap(SocketPair& pair, DatapathSink& sink, CancelSlot& cancel,
                                    const KernelSplice& kernel, bool inspected) {
  auto executor = co_await asio::this_coro::executor;
  // The pair's end, latched: the timer is only the wake-up.
  struct Latch {
    explicit Latch(const asio::any_io_executor& ex) : wake(ex, asio::steady_timer::time_point::max()) {}
    asio::steady_timer wake;
    std::optional<Ending> ending;
  };
  auto latch = std::make_shared<Latch>(executor);
  // A named function, not a lambda inside the co_await: GCC 12 lost the
  // capture of a lambda temporary in this co_await expression (the latch
  // it set was not the one waited on).
  std::function<void(Ending)> on_end = [latch](Ending e) {
    latch->ending = std::move(e);
    latch->wake.cancel();
  };
  std::optional<Ending> ended =
      co_await start_sockmap(pair, sink, cancel, kernel, inspected, std::move(on_end));
  if (ended) co_return std::move(*ended);
  while (!latch->ending) {
    boost::system::error_code ec;
    co_await latch->wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  co_return std::move(*latch->ending);
}

}  // namespace shunt::proxy

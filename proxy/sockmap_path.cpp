// The sockmap data path: the handover of an allowed connection to the kernel.
//
//   1. Userspace has written every byte it read (inspection flushes first).
//   2. Record how much each socket has had written to it so far (baseline).
//   3. SockmapBridge::handover(): peer entries, redirect targets, verdict
//      sockets, then a data_ready kick for bytes already queued.
//   4. Take both fds out of Asio's reactor: a spliced socket signals readable
//      on every redirected segment; HangupWatcher asks for hang-ups only.
//   5. On EOF from one side (the kernel does not forward FIN), wait until
//      the peer has been written everything the verdict program redirected
//      to it, then shutdown(SHUT_WR) the peer. On an error/RST, reset the
//      peer. When both FINs are through, close both (which also removes them
//      from the sockmaps; unmapping a live socket would purge its queue).
//
// If the kernel refuses a socket (closing already, map full), the pair falls
// back to splice and shunt_datapath_fallbacks_total{reason} counts it.
#include "bpf/sockmap.h"
#include "common/unique_fd.h"
#include "proxy/connection.h"
#include "proxy/datapath.h"
#include "proxy/hangup_watcher.h"
#include "proxy/metrics.h"
#include "proxy/proxy_context.h"
#include "proxy/tcp_counters.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>

namespace shunt::proxy {

namespace asio = boost::asio;
using std::chrono::milliseconds;

namespace {

struct SocketState {
  bool read_closed = false;  // the peer sent FIN
  bool failed = false;       // reset or error
};

SocketState socket_state(int fd) {
  pollfd p{fd, POLLRDHUP, 0};
  ::poll(&p, 1, 0);
  SocketState s;
  s.failed = (p.revents & (POLLERR | POLLNVAL)) != 0;
  s.read_closed = (p.revents & (POLLRDHUP | POLLHUP)) != 0;
  return s;
}

// One direction of a kernel-spliced pair.
struct SplicedDirection {
  int from = -1;
  int to = -1;
  std::uint64_t from_cookie = 0;
  std::uint64_t to_written_at_handover = 0;
  bool fin_forwarded = false;
};

void set_send_buffer(int fd, int bytes) {
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof(bytes));
}

}  // namespace

asio::awaitable<void> run_sockmap(Connection& conn) {
  ProxyContext& proxy = conn.proxy();
  ConnectionInfo& info = conn.info();
  bpf::SockmapBridge* bridge = proxy.bridge.get();
  auto fall_back = [&](std::string_view reason) {
    metrics().datapath_fallbacks.add(std::string(reason));
    info.datapath = config::Datapath::splice;
  };
  if (!bridge) {
    fall_back("sockmap_unavailable");
    co_await run_splice(conn);
    co_return;
  }

  const int client_fd = conn.client().native_handle();
  const int upstream_fd = conn.upstream().native_handle();
  // Baselines for the drain check. After an L4 decision nothing has been
  // written to either socket (the kernel counts payload only, not the
  // handshake), so they are 0 without two TCP_INFO reads per connection.
  const bool touched = conn.inspected();
  SplicedDirection up{client_fd, upstream_fd, 0, touched ? tcp_bytes_written(upstream_fd) : 0, false};
  SplicedDirection down{upstream_fd, client_fd, 0, touched ? tcp_bytes_written(client_fd) : 0, false};

  // Bound what a stalled pair can pin before the kernel starts moving bytes
  // (docs/datapath.md, "Memory bound"); bulk pairs get more, within budget.
  const int spliced_send_buffer = BufferBudget::kSplicedSendBufferBytes;
  ::setsockopt(client_fd, SOL_SOCKET, SO_SNDBUF, &spliced_send_buffer, sizeof(spliced_send_buffer));
  ::setsockopt(upstream_fd, SOL_SOCKET, SO_SNDBUF, &spliced_send_buffer, sizeof(spliced_send_buffer));

  const bpf::HandoverResult handover = bridge->handover(client_fd, upstream_fd);
  if (handover.failure != bpf::HandoverFailure::none) {
    spdlog::debug("connection {}: sockmap refused the pair ({}), {}", info.id, handover.error.message(),
                  handover.partial ? "resetting" : "splicing instead");
    if (handover.partial) {
      metrics().datapath_fallbacks.add("partial_handover");
      bridge->forget(handover.cookies);
      conn.abort();
      co_return;
    }
    fall_back(bpf::to_string(handover.failure));
    co_await run_splice(conn);
    co_return;
  }
  up.from_cookie = handover.cookies.a;
  down.from_cookie = handover.cookies.b;
  info.datapath = config::Datapath::sockmap;
  info.client_cookie = handover.cookies.a;
  info.upstream_cookie = handover.cookies.b;

  // From here on the fds are ours alone; Asio forgets them. The pair is
  // shared with bulk-buffer grants posted from the bulk event reader.
  struct SplicedPair {
    UniqueFd client;
    UniqueFd upstream;
    std::uint64_t boosted_bytes = 0;
    bool open = true;
  };
  auto pair = std::make_shared<SplicedPair>();
  pair->client = UniqueFd(conn.client().release());
  pair->upstream = UniqueFd(conn.upstream().release());
  UniqueFd& client = pair->client;
  UniqueFd& upstream = pair->upstream;

  auto executor = co_await asio::this_coro::executor;
  asio::steady_timer wake(executor);
  bool poked = false;
  auto poke = [&] {
    poked = true;
    wake.cancel();
  };
  HangupWatcher& hangups = conn.worker().hangups;
  const auto client_watch = hangups.add(client.get(), [&](std::uint32_t) { poke(); });
  const auto upstream_watch = hangups.add(upstream.get(), [&](std::uint32_t) { poke(); });
  conn.set_abort_hook(poke);

  {
    std::lock_guard lock(info.mu);
    const std::uint64_t client_cookie = handover.cookies.a;
    info.grant_bulk_buffers = [executor, pair, client_cookie,
                               &budget = proxy.buffer_budget](std::uint64_t source) {
      asio::post(executor, [pair, source, client_cookie, &budget] {
        if (!pair->open || pair->boosted_bytes) return;
        if (!budget.try_acquire(BufferBudget::kBoostedBufferBytes)) {
          metrics().buffer_boosts_refused.fetch_add(1, std::memory_order_relaxed);
          return;
        }
        pair->boosted_bytes = BufferBudget::kBoostedBufferBytes;
        // Only the bulk direction's target needs room: the socket opposite the source.
        const int target = source == client_cookie ? pair->upstream.get() : pair->client.get();
        set_send_buffer(target, static_cast<int>(BufferBudget::kBoostedBufferBytes));
        metrics().buffer_boosts.fetch_add(1, std::memory_order_relaxed);
      });
    };
  }

  auto drained = [&](const SplicedDirection& d) {
    return tcp_bytes_written(d.to) - d.to_written_at_handover >= bridge->redirected_bytes(d.from_cookie);
  };

  milliseconds drain_poll{1};
  for (;;) {
    if (conn.aborted()) {
      reset_fd(client.get());
      reset_fd(upstream.get());
      break;
    }
    const SocketState client_state = socket_state(client.get());
    const SocketState upstream_state = socket_state(upstream.get());
    if (client_state.failed || upstream_state.failed) {
      // RST (or error) on one side: reset the other, promptly.
      spdlog::debug("connection {}: {} side reset; resetting the other", info.id,
                    client_state.failed ? "client" : "upstream");
      reset_fd(client.get());
      reset_fd(upstream.get());
      break;
    }
    bool waiting_for_drain = false;
    for (auto* d : {&up, &down}) {
      const bool source_closed = d == &up ? client_state.read_closed : upstream_state.read_closed;
      if (!source_closed || d->fin_forwarded) continue;
      if (drained(*d)) {
        if (spdlog::should_log(spdlog::level::debug))  // the byte count costs a map lookup
          spdlog::debug("connection {}: FIN from {} forwarded after its bytes drained ({} redirected)",
                        info.id, d == &up ? "client" : "upstream", bridge->redirected_bytes(d->from_cookie));
        ::shutdown(d->to, SHUT_WR);
        d->fin_forwarded = true;
      } else {
        waiting_for_drain = true;
      }
    }
    if (up.fin_forwarded && down.fin_forwarded) break;

    poked = false;
    if (waiting_for_drain) {
      // The peer's backlog drains at the receiver's pace: back off to 50 ms.
      wake.expires_after(drain_poll);
      drain_poll = std::min(drain_poll * 2, milliseconds(50));
    } else {
      drain_poll = milliseconds(1);
      wake.expires_at(asio::steady_timer::time_point::max());
    }
    if (!poked) {
      boost::system::error_code ec;
      co_await wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
  }

  hangups.remove(client_watch);
  hangups.remove(upstream_watch);
  conn.set_abort_hook({});
  {
    std::lock_guard lock(info.mu);
    info.grant_bulk_buffers = nullptr;
  }
  pair->open = false;
  if (pair->boosted_bytes) proxy.buffer_budget.release(pair->boosted_bytes);

  // Fold the kernel's counters into the connection before the peer entries
  // go, so the access log and metrics keep them.
  {
    std::lock_guard lock(info.mu);  // see ConnectionRegistry::bytes
    info.bytes_up += bridge->redirected_bytes(handover.cookies.a);
    info.bytes_down += bridge->redirected_bytes(handover.cookies.b);
    info.client_cookie = 0;
    info.upstream_cookie = 0;
  }
  client.reset();
  upstream.reset();
  bridge->forget(handover.cookies);
}

}  // namespace shunt::proxy

// TLS inspection: decide on the ClientHello's SNI, then forward the hello
// and hand the connection to the data path. Only the ClientHello is read;
// the upstream is connected after the verdict, so a denied hello never
// reaches it. Deny, a non-TLS first flight, an oversized hello, or no
// complete hello within timeouts.header: reset (SPEC.md "Deny").
//
// In a takeover's boundary window (BoundaryRequest, takeover/late.h) a
// connection whose hello is incomplete is handed back (ClientPending) with
// the bytes read, at the moment it waits for more; the new process (or
// this one, should the takeover fail) runs inspect_tls again from them, so
// the decision is made on exactly the bytes the client sent, once.
#include "common/async.h"
#include "common/reset.h"
#include "proxy/inspect/client_hello.h"
#include "proxy/inspect/inspector.h"

#include <spdlog/spdlog.h>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <cstring>
#include <memory>
#include <vector>

namespace shunt::proxy {

namespace asio = boost::asio;
using asio::use_awaitable;
using asio::ip::tcp;

namespace {

// Reads the ClientHello and decides; the first half of inspect_tls, which
// owns the sockets and resets them on every way out but the handover.
asio::awaitable<InspectOutcome> read_and_decide(Inspection& in, std::optional<tcp::socket>& upstream,
                                                std::string& initial) {
  InspectOutcome out;
  const std::uint64_t id = in.observer.id();
  const std::size_t max_bytes = in.settings.limits.max_header_bytes;
  tls::ClientHelloReader reader(max_bytes);
  // Sized once the client is readable: a client that connects and sends
  // nothing holds no buffer while timeouts.header runs (issue 16).
  // +1: one byte over the limit says "too large".
  std::vector<char> hello;
  std::size_t have = 0;

  // The deadline closes nothing: it cancels the pending read, and
  // expired() tells the read apart from a cancel. The socket outlives it
  // (Deadline's destructor disarms).
  Deadline deadline(co_await asio::this_coro::executor);
  deadline.arm(in.started + in.settings.timeouts.header, [&client = in.client] {
    boost::system::error_code ignored;
    client.cancel(ignored);
  });

  tls::ClientHelloReader::State state = tls::ClientHelloReader::State::need_more;
  if (!initial.empty()) {
    // Read before a takeover's hand-back (ClientPending): fed as if just read.
    hello.resize(max_bytes + 1);
    have = std::min(initial.size(), hello.size());
    std::memcpy(hello.data(), initial.data(), have);
    state = reader.feed(hello.data(), have);
    initial.clear();
  }
  // Handed back at the wait for more bytes (BoundaryRequest): the wait is
  // cancelled by the poke, no read is pending.
  bool yielded = false;
  BoundaryRequest::PokeFn wake([&client = in.client, &yielded] {
    yielded = true;
    boost::system::error_code ignored;
    client.cancel(ignored);
  });
  const auto poke = BoundaryRequest::install(in.boundary, wake);
  boost::system::error_code nb;
  in.client.non_blocking(true, nb);  // the wait for data is the async_wait
  while (state == tls::ClientHelloReader::State::need_more && (hello.empty() || have < hello.size())) {
    boost::system::error_code ec;
    if (in.boundary && in.boundary->requested()) yielded = true;
    if (!yielded)
      co_await in.client.async_wait(tcp::socket::wait_read, asio::redirect_error(use_awaitable, ec));
    if (yielded && !in.cancel.cancelled() && !deadline.expired()) {
      deadline.disarm();
      out.client_pending.emplace(ClientPending{std::move(in.client), std::string(hello.data(), have)});
      co_return out;
    }
    std::size_t n = 0;
    if (!ec) {
      if (hello.empty()) hello.resize(max_bytes + 1);
      n = in.client.read_some(asio::buffer(hello.data() + have, hello.size() - have), ec);
      if (ec == asio::error::would_block || ec == asio::error::try_again) continue;
    }
    if (ec) {
      deadline.disarm();
      if (in.cancel.cancelled()) co_return out;
      if (deadline.expired()) {
        spdlog::info("connection {}: no ClientHello within {} ms; resetting", id,
                     in.settings.timeouts.header.count());
        out.ending.note(EndReason::request_timeout);
      } else {
        spdlog::debug("connection {}: client gone before its ClientHello: {}", id, ec.message());
        out.ending.note(ec == asio::error::eof ? EndReason::client_closed : EndReason::client_reset,
                        ec.message());
      }
      co_return out;
    }
    state = reader.feed(hello.data() + have, n);
    have += n;
  }
  deadline.disarm();

  if (state != tls::ClientHelloReader::State::done) {
    spdlog::info("connection {}: {}; resetting", id,
                 state == tls::ClientHelloReader::State::not_tls
                     ? "first bytes are not a TLS ClientHello with one well-formed server name"
                     : "ClientHello larger than limits.max_header_bytes");
    in.observer.decided(policy::Decision{policy::Verdict::deny, "", "no usable ClientHello"});
    out.ending.note(EndReason::bad_request);
    co_return out;
  }

  const std::string sni = reader.sni().value_or(std::string());
  in.observer.saw_sni(sni);
  // The current snapshot: a reload since the accept applies to this hello.
  const policy::Decision decision = in.policy.current()->decide_tls(in.flow, sni);
  in.observer.decided(decision);
  if (decision.verdict != policy::Verdict::allow) {
    spdlog::debug("connection {}: sni '{}' denied: {}", id, sni, decision.reason);
    out.ending.note(EndReason::policy_deny);
    co_return out;
  }
  UpstreamConnector::Connected connected = co_await in.upstream.connect();
  if (!connected.socket) {
    out.ending.note(EndReason::upstream_connect_failed, connected.error);
    co_return out;  // SPEC: an upstream refusing means the client sees a reset
  }
  upstream = std::move(connected.socket);
  if (in.cancel.cancelled()) co_return out;

  // Forward the hello (and anything that came with it) before the data
  // path starts: bytes written here must precede what the kernel moves.
  boost::system::error_code ec;
  co_await asio::async_write(*upstream, asio::buffer(hello.data(), have),
                             asio::redirect_error(use_awaitable, ec));
  if (ec) {
    spdlog::debug("connection {}: forwarding the ClientHello failed: {}", id, ec.message());
    out.ending.note(EndReason::upstream_reset, ec.message());
    co_return out;
  }
  in.observer.moved(Direction::up, have);
  if (in.cancel.cancelled()) co_return out;
  out.handover.emplace(SocketPair{std::move(in.client), std::move(*upstream)});
  co_return out;
}

}  // namespace

asio::awaitable<InspectOutcome> inspect_tls(Inspection in, std::string initial) {
  std::optional<tcp::socket> upstream;
  // A cancel resets both sides; the pending read or write then ends.
  const auto on_cancel = in.cancel.install([&] {
    reset_socket(in.client);
    if (upstream) reset_socket(*upstream);
  });
  InspectOutcome out;
  try {
    out = co_await read_and_decide(in, upstream, initial);
  } catch (const std::exception& e) {
    spdlog::warn("connection {}: TLS inspection: {}", in.observer.id(), e.what());
  }
  if (!out.handover && !out.client_pending) {
    reset_socket(in.client);
    if (upstream) reset_socket(*upstream);
  }
  co_return out;
}

}  // namespace shunt::proxy

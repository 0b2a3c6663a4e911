// TLS inspection: decide on the ClientHello's SNI, then forward the hello
// and hand the connection to the data path. Only the ClientHello is read;
// the upstream is connected after the verdict, so a denied hello never
// reaches it. Deny, a non-TLS first flight, an oversized hello, or no
// complete hello within timeouts.header: reset (SPEC.md "Deny").
#include "common/async.h"
#include "proxy/inspect/client_hello.h"

#include "proxy/connection.h"
#include "proxy/inspect/inspect.h"
#include "proxy/proxy_context.h"

#include <spdlog/spdlog.h>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <memory>
#include <vector>

namespace shunt::proxy {

namespace asio = boost::asio;
using asio::use_awaitable;

asio::awaitable<bool> inspect_tls(Connection& conn) {
  ConnectionInfo& info = conn.info();
  try {
    const config::ProxySettings& settings = conn.settings();
    const std::size_t max_bytes = settings.limits.max_header_bytes;
    tls::ClientHelloReader reader(max_bytes);
    // Sized once the client is readable: a client that connects and sends
    // nothing holds no buffer while timeouts.header runs (issue 16).
    // +1: one byte over the limit says "too large".
    std::vector<char> hello;
    std::size_t have = 0;

    // The deadline closes nothing: it cancels the pending read, and
    // expired() tells the read apart from an abort.
    Deadline deadline(conn.worker().io.get_executor());
    deadline.arm(info.started + settings.timeouts.header, [&conn, hold = conn.shared_from_this()] {
      boost::system::error_code ignored;
      conn.client().cancel(ignored);
    });

    tls::ClientHelloReader::State state = tls::ClientHelloReader::State::need_more;
    while (state == tls::ClientHelloReader::State::need_more && (hello.empty() || have < hello.size())) {
      boost::system::error_code ec;
      if (hello.empty()) {
        co_await conn.client().async_wait(asio::ip::tcp::socket::wait_read,
                                          asio::redirect_error(use_awaitable, ec));
        if (!ec) hello.resize(max_bytes + 1);
      }
      std::size_t n = 0;
      if (!ec)
        n = co_await conn.client().async_read_some(asio::buffer(hello.data() + have, hello.size() - have),
                                                   asio::redirect_error(use_awaitable, ec));
      if (ec) {
        deadline.disarm();
        if (conn.aborted()) co_return false;
        if (deadline.expired()) {
          spdlog::info("connection {}: no ClientHello within {} ms; resetting", info.id,
                       settings.timeouts.header.count());
          info.note_end(EndReason::request_timeout);
        } else {
          spdlog::debug("connection {}: client gone before its ClientHello: {}", info.id, ec.message());
          info.note_end(ec == asio::error::eof ? EndReason::client_closed : EndReason::client_reset,
                        ec.message());
        }
        reset_socket(conn.client());
        co_return false;
      }
      state = reader.feed(hello.data() + have, n);
      have += n;
    }
    deadline.disarm();

    if (state != tls::ClientHelloReader::State::done) {
      spdlog::info("connection {}: {}; resetting", info.id,
                   state == tls::ClientHelloReader::State::not_tls
                       ? "first bytes are not a TLS ClientHello"
                       : "ClientHello larger than limits.max_header_bytes");
      policy::Decision refused{policy::Verdict::deny, info.rule_name(), "no usable ClientHello"};
      conn.set_rule(refused);
      info.note_end(EndReason::bad_request);
      reset_socket(conn.client());
      co_return false;
    }

    const std::string sni = reader.sni().value_or(std::string());
    policy::Flow flow;
    {
      std::lock_guard lock(info.mu);
      info.basis.sni = sni;
      flow = info.basis.flow;
    }
    // The current snapshot: a reload since the accept applies to this hello.
    const policy::Decision decision = conn.proxy().policy.current()->decide_tls(flow, sni);
    conn.set_rule(decision);
    if (decision.verdict != policy::Verdict::allow) {
      spdlog::debug("connection {}: sni '{}' denied: {}", info.id, sni, decision.reason);
      info.note_end(EndReason::policy_deny);
      reset_socket(conn.client());
      co_return false;
    }
    if (!co_await conn.connect_upstream()) co_return false;

    // Forward the hello (and anything that came with it) before the data
    // path starts: bytes written here must precede what the kernel moves.
    boost::system::error_code ec;
    co_await asio::async_write(conn.upstream(), asio::buffer(hello.data(), have),
                               asio::redirect_error(use_awaitable, ec));
    if (ec) {
      spdlog::debug("connection {}: forwarding the ClientHello failed: {}", info.id, ec.message());
      info.note_end(EndReason::upstream_reset, ec.message());
      reset_socket(conn.client());
      reset_socket(conn.upstream());
      co_return false;
    }
    info.bytes_up.fetch_add(have, std::memory_order_relaxed);
    co_return !conn.aborted();
  } catch (const std::exception& e) {
    spdlog::warn("connection {}: TLS inspection: {}", info.id, e.what());
  }
  reset_socket(conn.client());
  reset_socket(conn.upstream());
  co_return false;
}

}  // namespace shunt::proxy

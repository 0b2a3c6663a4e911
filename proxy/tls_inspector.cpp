// TLS inspection: decide on the ClientHello's SNI, then forward the hello
// and hand the connection to the data path. Only the ClientHello is read;
// the upstream is connected after the verdict, so a denied hello never
// reaches it. Deny, a non-TLS first flight, an oversized hello, or no
// complete hello within timeouts.header: reset (SPEC.md "Deny").
#include "proxy/tls_inspector.h"

#include "proxy/connection.h"
#include "proxy/datapath.h"
#include "proxy/proxy_context.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/tls1.h>
#include <spdlog/spdlog.h>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <memory>
#include <vector>

namespace shunt::proxy {

namespace tls {

namespace {

// One shared context: SSL_new from it is thread-safe and it holds nothing
// per connection. It never completes a handshake, so it has no certificate.
SSL_CTX* hello_context() {
  static SSL_CTX* const ctx = [] {
    SSL_CTX* c = SSL_CTX_new(TLS_server_method());
    if (!c) return c;
    // Version limits are checked after the client-hello callback, but keep
    // the window wide anyway: the verdict is about SNI, not versions.
    SSL_CTX_set_min_proto_version(c, 0);
    SSL_CTX_set_max_proto_version(c, 0);
    SSL_CTX_set_client_hello_cb(c, &ClientHelloReader::on_client_hello, nullptr);
    return c;
  }();
  return ctx;
}

// server_name extension body (RFC 6066 3): ServerNameList
//   uint16 list length, then entries { uint8 type; uint16 length; bytes }.
// OpenSSL has located the extension; this only walks its list for the
// host_name entry.
std::optional<std::string> host_name_of(const unsigned char* p, std::size_t len) {
  if (len < 2) return std::nullopt;
  std::size_t list = (std::size_t{p[0]} << 8) | p[1];
  p += 2;
  len -= 2;
  if (list > len) return std::nullopt;
  while (list >= 3) {
    const unsigned type = p[0];
    const std::size_t n = (std::size_t{p[1]} << 8) | p[2];
    if (n > list - 3) return std::nullopt;
    if (type == TLSEXT_NAMETYPE_host_name) return std::string(reinterpret_cast<const char*>(p + 3), n);
    p += 3 + n;
    list -= 3 + n;
  }
  return std::nullopt;
}

}  // namespace

ClientHelloReader::ClientHelloReader(std::size_t max_bytes) : max_bytes_(max_bytes) {
  SSL_CTX* ctx = hello_context();
  if (!ctx) return;
  ssl_ = SSL_new(ctx);
  if (!ssl_) return;
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  if (!in || !out) {
    BIO_free(in);
    BIO_free(out);
    SSL_free(ssl_);
    ssl_ = nullptr;
    return;
  }
  SSL_set_bio(ssl_, in, out);  // the SSL owns both from here
  SSL_set_accept_state(ssl_);
  SSL_set_app_data(ssl_, this);
}

ClientHelloReader::~ClientHelloReader() {
  if (ssl_) SSL_free(ssl_);
}

int ClientHelloReader::on_client_hello(SSL* ssl, int* alert, void*) {
  auto* self = static_cast<ClientHelloReader*>(SSL_get_app_data(ssl));
  if (!self) return SSL_CLIENT_HELLO_ERROR;
  const unsigned char* ext = nullptr;
  std::size_t ext_len = 0;
  if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &ext, &ext_len) == 1) {
    self->sni_ = host_name_of(ext, ext_len);
  }
  self->hello_seen_ = true;
  // Suspend here: nothing past the ClientHello is wanted, and suspending
  // (unlike failing) writes no alert.
  return SSL_CLIENT_HELLO_RETRY;
}

ClientHelloReader::State ClientHelloReader::feed(const char* data, std::size_t n) {
  if (state_ != State::need_more) return state_;
  if (!ssl_) return state_ = State::not_tls;
  fed_ += n;
  if (fed_ > max_bytes_) return state_ = State::too_large;
  if (n > 0 && BIO_write(SSL_get_rbio(ssl_), data, static_cast<int>(n)) != static_cast<int>(n)) {
    return state_ = State::not_tls;
  }
  ERR_clear_error();
  const int rc = SSL_do_handshake(ssl_);
  if (hello_seen_) {
    state_ = State::done;
  } else if (rc <= 0 && SSL_get_error(ssl_, rc) == SSL_ERROR_WANT_READ) {
    state_ = State::need_more;
  } else {
    state_ = State::not_tls;
  }
  ERR_clear_error();  // OpenSSL's error queue is per thread: leave it clean for others
  return state_;
}

}  // namespace tls

namespace asio = boost::asio;
using asio::use_awaitable;

asio::awaitable<bool> inspect_tls(Connection& conn) {
  ConnectionInfo& info = conn.info();
  try {
    const config::ProxySettings& settings = conn.settings();
    const std::size_t max_bytes = settings.limits.max_header_bytes;
    tls::ClientHelloReader reader(max_bytes);
    std::vector<char> hello(max_bytes + 1);  // +1: one byte over the limit says "too large"
    std::size_t have = 0;

    // The deadline closes nothing: it cancels the pending read, and
    // `expired` tells the read apart from an abort.
    auto expired = std::make_shared<bool>(false);
    auto settled = std::make_shared<bool>(false);
    asio::steady_timer deadline(conn.worker().io);
    deadline.expires_at(info.started + settings.timeouts.header);
    deadline.async_wait(
        [&conn, expired, settled, hold = conn.shared_from_this()](boost::system::error_code ec) {
          if (ec || *settled) return;
          *expired = true;
          boost::system::error_code ignored;
          conn.client().cancel(ignored);
        });

    tls::ClientHelloReader::State state = tls::ClientHelloReader::State::need_more;
    while (state == tls::ClientHelloReader::State::need_more && have < hello.size()) {
      boost::system::error_code ec;
      const std::size_t n = co_await conn.client().async_read_some(
          asio::buffer(hello.data() + have, hello.size() - have), asio::redirect_error(use_awaitable, ec));
      if (ec) {
        *settled = true;
        deadline.cancel();
        if (conn.aborted()) co_return false;
        if (*expired) {
          spdlog::info("connection {}: no ClientHello within {} ms; resetting", info.id,
                       settings.timeouts.header.count());
        } else {
          spdlog::debug("connection {}: client gone before its ClientHello: {}", info.id, ec.message());
        }
        reset_socket(conn.client());
        co_return false;
      }
      state = reader.feed(hello.data() + have, n);
      have += n;
    }
    *settled = true;
    deadline.cancel();

    if (state != tls::ClientHelloReader::State::done) {
      spdlog::info("connection {}: {}; resetting", info.id,
                   state == tls::ClientHelloReader::State::not_tls
                       ? "first bytes are not a TLS ClientHello"
                       : "ClientHello larger than limits.max_header_bytes");
      policy::Decision refused{policy::Verdict::deny, info.rule_name(), "no usable ClientHello"};
      conn.set_rule(refused);
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

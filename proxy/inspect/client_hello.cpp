// ClientHelloReader (proxy/inspect/client_hello.h): OpenSSL parses, this file only
// suspends the handshake at the client-hello callback and reads server_name.
// Kept apart from the coroutine in tls_inspector.cpp so that it builds and
// fuzzes on its own (fuzz/fuzz_tls_client_hello.cpp).
#include "proxy/inspect/client_hello.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/tls1.h>

#include <algorithm>
#include <string_view>

namespace shunt::proxy::tls {

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
// OpenSSL has located the extension; this reads its list, which must be
// exactly one host_name entry filling it, naming a DNS host (letters,
// digits, '-', '_', '.'; one trailing dot allowed). Anything else is
// nullopt, and the hello is refused (feed: not_tls): servers disagree on
// it (with two names OpenSSL and Go refuse the hello, others take the
// first or the last; a NUL ends the name in C), so the name shunt decides
// on might not be the one the server routes by.
std::optional<std::string> host_name_of(const unsigned char* p, std::size_t len) {
  if (len < 5) return std::nullopt;
  const std::size_t list = (std::size_t{p[0]} << 8) | p[1];
  const unsigned type = p[2];
  const std::size_t n = (std::size_t{p[3]} << 8) | p[4];
  if (list != len - 2 || type != TLSEXT_NAMETYPE_host_name || n != list - 3 || n == 0 || n > 254)
    return std::nullopt;
  std::string name(reinterpret_cast<const char*>(p + 5), n);
  const bool chars = std::all_of(name.begin(), name.end(), [](char ch) {
    const auto c = static_cast<unsigned char>(ch);
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.';
  });
  std::string_view labels(name);
  if (labels.back() == '.') labels.remove_suffix(1);
  if (!chars || labels.empty() || labels.front() == '.' || labels.back() == '.' ||
      labels.find("..") != std::string_view::npos) {
    return std::nullopt;
  }
  return name;
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
    self->bad_sni_ = !self->sni_;
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
    state_ = bad_sni_ ? State::not_tls : State::done;
  } else if (rc <= 0 && SSL_get_error(ssl_, rc) == SSL_ERROR_WANT_READ) {
    state_ = State::need_more;
  } else {
    state_ = State::not_tls;
  }
  ERR_clear_error();  // OpenSSL's error queue is per thread: leave it clean for others
  return state_;
}

}  // namespace shunt::proxy::tls

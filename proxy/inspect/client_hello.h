// Reading a TLS ClientHello for an SNI decision, with OpenSSL doing the
// parsing: a server-side SSL over memory BIOs, whose client-hello callback
// captures server_name and suspends the handshake. Nothing is ever written
// back to the client; the bytes fed here are forwarded untouched upstream
// once the connection is allowed (proxy/inspect/tls_inspector.cpp).
#pragma once

#include <cstddef>
#include <optional>
#include <string>

struct ssl_st;

namespace shunt::proxy::tls {

class ClientHelloReader {
 public:
  enum class State {
    need_more,  // the ClientHello is not complete yet
    done,       // the callback fired: sni() is final
    not_tls,    // the bytes are not a TLS ClientHello, or its server_name is not one host name
    too_large,  // more than max_bytes fed without a complete ClientHello
  };

  explicit ClientHelloReader(std::size_t max_bytes);
  ~ClientHelloReader();
  ClientHelloReader(const ClientHelloReader&) = delete;
  ClientHelloReader& operator=(const ClientHelloReader&) = delete;

  // Feeds the next bytes from the client, in order, as they arrive (a
  // ClientHello may span TCP segments and TLS records).
  State feed(const char* data, std::size_t n);
  [[nodiscard]] State state() const { return state_; }
  // The host_name from server_name; nullopt when the hello has none.
  [[nodiscard]] const std::optional<std::string>& sni() const { return sni_; }

  // OpenSSL's client-hello callback (registered once on the shared context).
  static int on_client_hello(ssl_st* ssl, int* alert, void* arg);

 private:
  std::size_t max_bytes_;
  std::size_t fed_ = 0;
  ssl_st* ssl_ = nullptr;
  State state_ = State::need_more;
  bool hello_seen_ = false;
  bool bad_sni_ = false;  // a server_name that is not one well-formed host name: refused
  std::optional<std::string> sni_;
};

}  // namespace shunt::proxy::tls

// The admin API (SPEC.md "Admin API"): /healthz, /readyz, /metrics,
// /connections, /config over HTTP/1.1 on admin.listen.
//
// It runs on its own thread and io_context, never on a data-path worker, so
// a slow or stuck scraper cannot delay proxied traffic; everything it reads
// (registry, metrics, policy snapshot) is thread-safe. One request per
// connection (Connection: close): scrapers and probes open a connection per
// request anyway.
#pragma once

#include "common/unique_fd.h"
#include "config/config.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <string>
#include <string_view>
#include <thread>

namespace shunt::bpf {
class PodSteering;
}

namespace shunt::proxy {

struct ProxyContext;

struct AdminResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::string allow;  // Allow header, for 405
};

class AdminServer {
 public:
  // Binds `listen` now, so a port in use fails startup as a whole
  // (StartupError, exit code 2). Serves nothing until start().
  // `inherited`: the admin socket of the process this one takes over from
  // (already bound and listening), used instead of binding.
  AdminServer(ProxyContext& context, const config::Endpoint& listen, UniqueFd inherited = {});
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  void start();
  // Listeners are bound and accepting and steering (null: none) is in
  // place: /readyz answers 200 from now until the proxy starts draining.
  void set_ready(const bpf::PodSteering* steering);
  // Stops serving and joins the thread. Call before the context's steering
  // or bridge go away.
  void stop();
  // Closes this process's copy of the listening socket (after a takeover
  // the new process accepts from its own) and lets the requests it is
  // serving finish: stop() would cut them off.
  void stop_accepting();
  // The listening socket, for a takeover to hand on (borrowed).
  [[nodiscard]] int listening_fd() { return acceptor_.native_handle(); }
  [[nodiscard]] const config::Endpoint& endpoint() const { return listen_; }

  // The answer to one request; public so it can be tested without sockets.
  AdminResponse handle(std::string_view method, std::string_view target) const;

 private:
  boost::asio::awaitable<void> accept_loop();
  boost::asio::awaitable<void> serve(boost::asio::ip::tcp::socket socket);
  [[nodiscard]] std::string connections_json() const;

  ProxyContext& context_;
  config::Endpoint listen_;
  boost::asio::io_context io_{1};
  boost::asio::ip::tcp::acceptor acceptor_;
  std::thread thread_;
  std::atomic<bool> ready_{false};
  // Published before ready_ (release), read after it (acquire).
  std::atomic<const bpf::PodSteering*> steering_{nullptr};
  std::atomic<int> open_requests_{0};
};

}  // namespace shunt::proxy

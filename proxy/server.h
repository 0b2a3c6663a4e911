// The running proxy: one io_context per core, each with its own SO_REUSEPORT
// acceptor per listener so a connection is accepted, decided and served on
// one thread; a control thread (the caller's) handles signals, config
// reloads, bulk-transfer events and shutdown.
#pragma once

#include "config/config.h"
#include "proxy/connection.h"
#include "proxy/metrics.h"
#include "proxy/proxy_context.h"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace shunt::proxy {

class HangupWatcher;

struct Worker {
  Worker();
  ~Worker();
  boost::asio::io_context io{1};
  std::unique_ptr<HangupWatcher> hangups;
  std::unique_ptr<IdleSweep> idle;
  WorkerContext context;  // what connections on this thread reference
  // One per listener; null where another worker's acceptor serves this one.
  std::vector<std::unique_ptr<boost::asio::ip::tcp::acceptor>> acceptors;
  std::thread thread;
};

class Server {
 public:
  // Binds every listener on every worker before anything runs, so a port in
  // use fails startup as a whole (StartupError, exit code 2).
  Server(ProxyContext& context, const config::Config& config, unsigned threads);
  ~Server();

  void start();
  // Stops accepting; open connections continue.
  void stop_accepting();
  // Revokes every open connection (reset) and stops the workers.
  void stop();
  [[nodiscard]] bool listening() const { return listening_; }
  // The transparent listeners' fds (one per worker and listener), for BPF
  // steering's bpf_sk_assign.
  [[nodiscard]] std::vector<int> transparent_listener_fds() const;

 private:
  void accept_loop(Worker& worker, std::size_t listener_index);
  // for_all_workers: this is the only acceptor of its listener and spreads
  // connections over every worker.
  boost::asio::awaitable<void> accept_connections(Worker* worker, boost::asio::ip::tcp::acceptor* acceptor,
                                                  config::Listener listener, bool for_all_workers);

  void refuse_at_accept(const policy::Policy& policy, const config::Listener& listener,
                        boost::asio::ip::tcp::socket& socket, const boost::asio::ip::tcp::endpoint& peer,
                        AcceptRefusal why, std::uint64_t cap);

  ProxyContext& context_;
  std::vector<config::Listener> listeners_;
  std::vector<std::unique_ptr<Worker>> workers_;
  bool listening_ = false;
};

}  // namespace shunt::proxy

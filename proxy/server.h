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

#include "common/unique_fd.h"

#include <functional>
#include <map>
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
  PairHandoff handoff;
  WorkerContext context;  // what connections on this thread reference
  // One per listener; null where another worker's acceptor serves this one.
  std::vector<std::unique_ptr<boost::asio::ip::tcp::acceptor>> acceptors;
  // Inherited sockets beyond one per worker (the old process ran more
  // workers): every socket of a SO_REUSEPORT group gets its share of SYNs,
  // so each must be accepted from. (listener index, acceptor)
  std::vector<std::pair<std::size_t, std::unique_ptr<boost::asio::ip::tcp::acceptor>>> extra_acceptors;
  // While a takeover is under way: the sockets this worker stopped
  // accepting from, kept open so their backlog waits for the new process.
  // Touched only on this worker's thread.
  std::vector<std::pair<boost::asio::ip::tcp::acceptor*, UniqueFd>> paused;
  std::thread thread;
};

// Listening sockets inherited from the process this one takes over from
// (takeover/), by the listener's bound address as config::to_string prints it.
using InheritedSockets = std::map<std::string, std::vector<UniqueFd>>;

// One listening socket, as a takeover hands it on.
struct ListeningSocket {
  std::string name;
  std::string endpoint;
  bool transparent = false;
  int fd = -1;  // borrowed: open as long as the Server (or its paused copy) is
};

class Server {
 public:
  // Binds every listener on every worker before anything runs, so a port in
  // use fails startup as a whole (StartupError, exit code 2). A listener
  // whose address is in `inherited` accepts from those sockets instead of
  // binding (they are already bound and listening, with their backlog).
  Server(ProxyContext& context, const config::Config& config, unsigned threads,
         InheritedSockets inherited = {});
  ~Server();

  // Runs the workers and, with `accept`, the accept loops. A new process in
  // a takeover starts without and calls start_accepting() once the old one
  // let go (the commit): a connection it accepted before that would die
  // with it if it died, while the old process keeps every SYN it has not
  // accepted (in the shared backlog) and serves on.
  void start(bool accept = true);
  void start_accepting();
  // Stops accepting; open connections continue.
  void stop_accepting();
  // Revokes every open connection (reset) and stops the workers.
  void stop();
  [[nodiscard]] bool listening() const { return listening_; }
  // The transparent listeners' fds (one per worker and listener), for BPF
  // steering's bpf_sk_assign.
  [[nodiscard]] std::vector<int> transparent_listener_fds() const;

  // Takeover (daemon/): every listening socket, to hand on; pause keeps
  // them open but stops accepting, resume takes them back, release_paused
  // closes this process's copies once the new process owns them. Called
  // from the control thread; the work is posted to each worker.
  [[nodiscard]] const std::vector<ListeningSocket>& listening_sockets() const { return sockets_; }
  void pause_accepting();
  void resume_accepting();
  void release_paused();

  // Takeover of kernel-spliced pairs and of HTTP/1.1 connections parked
  // between requests (proxy/datapath/pair_handoff.h). The
  // old process: freeze_kernel_pairs() (returns once every worker froze its
  // pairs: a few microseconds a pair), then let_go_frozen() once the new
  // process holds them, or thaw_frozen() when it failed. The new process:
  // adopt() (returns once every pair is registered, frozen), then
  // thaw_frozen() once the takeover committed. Control thread only.
  // `take`: which kinds the new process takes.
  [[nodiscard]] std::vector<ExportedConnection> freeze_pairs(const std::function<bool(PairKind)>& take);
  void let_go_frozen();
  void thaw_frozen();
  void adopt(std::vector<AdoptedConnection> connections);
  // The old process, after the commit (protocol version 3,
  // takeover/late.h): opens the boundary window for `kinds` (0 closes it):
  // connections freeze as they reach a boundary and freeze_pairs collects
  // them. What could still move (inflight inspectors, pairs not frozen).
  void set_boundary_window(PairKindSet kinds);
  [[nodiscard]] std::size_t boundary_candidates();

 private:
  void accept_loop(Worker& worker, std::size_t listener_index, boost::asio::ip::tcp::acceptor* acceptor);
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
  std::vector<ListeningSocket> sockets_;
  bool listening_ = false;
};

}  // namespace shunt::proxy

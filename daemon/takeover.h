// Takeover, as the daemon wires it (the protocol is takeover/): the new
// process's steps around its start-up in run_proxy(), and the service on
// the control thread that hands a running process over.
#pragma once

#include "admin/admin_server.h"
#include "config/config.h"
#include "proxy/server.h"
#include "takeover/control_socket.h"
#include "takeover/handover.h"
#include "takeover/successor.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <optional>
#include <string>

namespace shunt::proxy {

// `shunt run` without --takeover: a live control socket means another
// process serves this node. Throws StartupError (exit 2) naming it.
void refuse_if_running(const config::Config& config);

// What the new process receives before it binds anything.
struct TakeoverStart {
  takeover::Successor successor;
  InheritedSockets listeners;  // by endpoint, for the Server
  UniqueFd admin;              // admin.listen's socket, when it did not move
  // The sockmap's maps, for SockmapBridge::load (version 2, when the old
  // process has a sockmap).
  std::optional<bpf::KernelMaps> kernel_maps;
  std::chrono::steady_clock::time_point began;
};

// Connects to the running process and receives its listening sockets.
// Nobody to take over from (no socket, or a stale one): nothing, and the
// caller starts as a first process would, so one command line serves a
// first start and every upgrade (docker/daemonset.yaml). Throws
// StartupError (exit 2) when the running process refuses or does not answer
// in time (it keeps serving, unchanged).
std::optional<TakeoverStart> begin_takeover(const config::Config& config);

// Once this process is set up on every listener (not accepting yet): waits
// for the old one to stop accepting, adopts its kernel-spliced pairs when
// its bridge shares the old one's maps, takes the control socket path, lets
// the old one go and starts accepting; then re-checks every connection
// against this process's policy, as a reload would. Throws StartupError when the old process is still there
// but a step failed (it takes everything back); an old process that
// vanished is logged and this one carries on alone.
takeover::ControlListener finish_takeover(TakeoverStart& start, const config::Config& config,
                                          ProxyContext& context, Server& server);

// The control thread's side: accepts on the control socket and hands this
// process over to one new process at a time. `handed_over` runs once a
// takeover completed (the listeners and the path are the new process's);
// the caller then drains what it still holds and exits.
class HandoverService {
 public:
  HandoverService(boost::asio::io_context& io, takeover::ControlListener listener, ProxyContext& context,
                  Server& server, AdminServer& admin, std::function<void()> handed_over);
  void start();
  void stop();
  // In the boundary window after a takeover (version 3): the drain waits
  // for it, so the control connection ends with the window, not mid-batch.
  [[nodiscard]] bool handing_over() const { return handing_over_; }
  // The new process, version 3: after finish_takeover, receives the
  // connections the old process hands on as they reach a boundary
  // (takeover/late.h), adopts them and re-checks them against this
  // configuration. Nothing when the old process does not. A takeover of
  // this process asked for meanwhile waits until the window is over.
  void receive_arrivals(TakeoverStart& start);

 private:
  boost::asio::awaitable<void> serve();
  // Answers a connection on the control socket with `refuse` and `why`.
  boost::asio::awaitable<void> refuse(boost::asio::posix::stream_descriptor& peer, const std::string& why);
  void reclaim_path();
  boost::asio::awaitable<void> arrivals(std::shared_ptr<boost::asio::posix::stream_descriptor> peer,
                                        std::uint16_t version, std::uint32_t old_pid);
  // Protocol version 3, after the commit: the boundary window
  // (takeover/late.h), while this process drains.
  boost::asio::awaitable<void> hand_over_at_boundaries(boost::asio::posix::stream_descriptor& peer,
                                                       const takeover::HandoverResult& handover);
  boost::asio::io_context& io_;
  takeover::ControlListener listener_;
  ProxyContext& context_;
  Server& server_;
  AdminServer& admin_;
  std::function<void()> handed_over_;
  // The listening control socket, wrapped only to wait on it (Asio 1.74
  // has no SOCK_SEQPACKET Unix protocol): accept4() does the rest.
  std::unique_ptr<boost::asio::posix::stream_descriptor> acceptor_;
  bool handing_over_ = false;
  bool arriving_ = false;
  // Cancelled when arriving_ turns false: a takeover asked for in the
  // window waits on it (both on the control thread, so no wake-up is lost).
  boost::asio::steady_timer arrivals_over_;
};

}  // namespace shunt::proxy

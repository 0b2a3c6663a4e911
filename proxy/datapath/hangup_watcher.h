// Wakes kernel-spliced connections on hang-up only. Asio registers every
// socket it owns in its epoll set with EPOLLIN|EPOLLOUT (edge-triggered), and
// a socket in a sockmap signals readable on every redirected segment, so a
// spliced pair left in Asio's reactor would wake the proxy per packet. The
// watcher keeps its own epoll set that asks only for EPOLLRDHUP (plus the
// always-reported EPOLLHUP/EPOLLERR) and is itself watched by Asio.
#pragma once

#include <utility>  // before Asio: Boost 1.74 awaitable.hpp uses std::exchange unincluded

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <cstdint>
#include <functional>
#include <unordered_map>

namespace shunt::proxy {

class HangupWatcher {
 public:
  using Callback = std::function<void(std::uint32_t epoll_events)>;

  explicit HangupWatcher(boost::asio::io_context& io);
  ~HangupWatcher();
  HangupWatcher(const HangupWatcher&) = delete;
  HangupWatcher& operator=(const HangupWatcher&) = delete;

  // Calls `on_event` on the io_context thread when fd half-closes, hangs up
  // or errors. Returns a token for remove(); must be removed before fd closes.
  std::uint64_t add(int fd, Callback on_event);
  void remove(std::uint64_t token);
  // Also wakes for `events` (EPOLLIN, EPOLLOUT) from now on, 0 for hang-ups
  // only again. Costly on a redirecting socket (a wake per segment): only
  // for a pair whose verdict holds (docs/datapath.md, "Memory bound").
  void set_extra_events(std::uint64_t token, std::uint32_t events);

 private:
  boost::asio::awaitable<void> dispatch_loop();

  struct Watch {
    int fd;
    Callback callback;
    std::uint32_t extra = 0;
  };
  int epoll_fd_ = -1;
  boost::asio::posix::stream_descriptor epoll_desc_;
  std::unordered_map<std::uint64_t, Watch> watches_;
  std::uint64_t next_token_ = 1;
};

}  // namespace shunt::proxy

#include "proxy/datapath/hangup_watcher.h"

#include "common/async.h"
#include "common/error.h"

#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <array>
#include <cstring>

namespace shunt::proxy {

namespace asio = boost::asio;

HangupWatcher::HangupWatcher(asio::io_context& io)
    : epoll_fd_(::epoll_create1(EPOLL_CLOEXEC)), epoll_desc_(io) {
  if (epoll_fd_ < 0)
    throw StartupError(kExitEnvironment,
                       "hang-up watcher: " + SysError::from_errno("epoll_create1").message());
  // The descriptor object owns epoll_fd_ from here on and closes it.
  epoll_desc_.assign(epoll_fd_);
  // Survivable: without it, sockmap pairs notice a hang-up only at
  // timeouts.idle; traffic still flows.
  guarded_spawn(io, "hang-up watcher", dispatch_loop(), Failure::survivable);
}

HangupWatcher::~HangupWatcher() {
  boost::system::error_code ec;
  epoll_desc_.close(ec);
}

std::uint64_t HangupWatcher::add(int fd, Callback on_event) {
  const std::uint64_t token = next_token_++;
  epoll_event ev{};
  // Edge-triggered: one wake for the FIN, another for a later RST/error.
  ev.events = EPOLLRDHUP | EPOLLET;
  ev.data.u64 = token;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    spdlog::warn("hang-up watcher: epoll_ctl add fd {}: {}", fd, std::strerror(errno));
  }
  watches_.emplace(token, Watch{fd, std::move(on_event)});
  return token;
}

void HangupWatcher::set_extra_events(std::uint64_t token, std::uint32_t events) {
  auto it = watches_.find(token);
  if (it == watches_.end() || it->second.extra == events) return;
  epoll_event ev{};
  ev.events = EPOLLRDHUP | EPOLLET | events;
  ev.data.u64 = token;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, it->second.fd, &ev) != 0) {
    spdlog::warn("hang-up watcher: epoll_ctl mod fd {}: {}", it->second.fd, std::strerror(errno));
    return;
  }
  it->second.extra = events;
}

void HangupWatcher::remove(std::uint64_t token) {
  auto it = watches_.find(token);
  if (it == watches_.end()) return;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, it->second.fd, nullptr);
  watches_.erase(it);
}

asio::awaitable<void> HangupWatcher::dispatch_loop() {
  std::array<epoll_event, 64> events;
  for (;;) {
    boost::system::error_code ec;
    co_await epoll_desc_.async_wait(asio::posix::descriptor_base::wait_read,
                                    asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;  // closed at shutdown
    int n;
    while ((n = ::epoll_wait(epoll_fd_, events.data(), events.size(), 0)) > 0) {
      for (int i = 0; i < n; ++i) {
        // A callback may remove other watches: look each one up afresh.
        auto it = watches_.find(events[i].data.u64);
        if (it == watches_.end()) continue;
        // Copied: the callback may remove its own watch while it runs.
        Callback callback = it->second.callback;
        callback(events[i].events);
      }
      if (n < static_cast<int>(events.size())) break;
    }
  }
}

}  // namespace shunt::proxy

#include "common/async.h"

#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace shunt {

std::atomic<std::uint64_t>& coroutine_failures() {
  static std::atomic<std::uint64_t> failures{0};
  return failures;
}

void coroutine_failed(const char* what, std::exception_ptr error, Failure on_failure) {
  coroutine_failures().fetch_add(1, std::memory_order_relaxed);
  std::string message = "unknown exception";
  try {
    std::rethrow_exception(std::move(error));
  } catch (const std::exception& e) {
    message = e.what();
  } catch (...) {
  }
  if (on_failure == Failure::survivable) {
    spdlog::error("{} failed: {}", what, message);
    return;
  }
  // Other threads are running and hold sockets, BPF links and locks: no
  // static destructors, no unwinding, just the line and the exit. Pinned
  // steering state stays, which is what steering.on_proxy_down describes.
  spdlog::critical("{} failed: {}; exiting", what, message);
  spdlog::shutdown();
  std::fprintf(stderr, "shunt: %s failed: %s\n", what, message.c_str());
  std::_Exit(2);
}

void Deadline::arm(Clock::time_point at, std::function<void()> on_expiry) {
  const std::uint64_t armed = ++*generation_;
  *expired_ = false;
  timer_.expires_at(at);
  timer_.async_wait([generation = generation_, expired = expired_, armed,
                     on_expiry = std::move(on_expiry)](boost::system::error_code ec) {
    // A cancel, a re-arm or a disarm after the timer had fired all bump the
    // generation: only the completion of the arm still current may act.
    if (ec || *generation != armed) return;
    *expired = true;
    on_expiry();
  });
}

void Deadline::disarm() {
  ++*generation_;
  timer_.cancel();
}

}  // namespace shunt

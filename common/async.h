// The error policy for coroutines, enforced in one place (common/error.h has
// the policy for values):
//
//  - guarded_spawn() is the only way to start a detached coroutine. An exception
//    that reaches its top is logged with the coroutine's name and counted
//    (coroutine_failures(), exported as shunt_coroutine_failures_total).
//    Failure::survivable keeps the process alive: the coroutine served one
//    connection, one admin request, or something the proxy runs without.
//    Failure::fatal ends the process with one clear line (exit code 2): the
//    coroutine was something the process cannot run without (an acceptor
//    loop, signal handling), and carrying on would leave a proxy that looks
//    alive but no longer serves or no longer stops.
//  - Deadline is the only way to put a time limit on an operation that is
//    not itself timed (a connect, a socket read).
#pragma once

#include <utility>  // before Asio: Boost 1.74 awaitable.hpp uses std::exchange unincluded

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>

// GCC 12 at -O2 sometimes inlines Asio's recycling frame allocator into a
// coroutine's frame teardown and then reports the frame's operator delete
// as not matching the ::operator new inside it (-Wmismatched-new-delete):
// a false positive, both go through awaitable_frame_base's own pair. Put
// these around the coroutine it names, never around a whole file.
#define SHUNT_FRAME_ALLOC_WARNING_OFF \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wmismatched-new-delete\"")
#define SHUNT_FRAME_ALLOC_WARNING_ON _Pragma("GCC diagnostic pop")

namespace shunt {

enum class Failure { survivable, fatal };

// Failures counted since start (every Failure kind).
std::atomic<std::uint64_t>& coroutine_failures();

// What guarded_spawn() does with an exception that ended coroutine `what`.
void coroutine_failed(const char* what, std::exception_ptr error, Failure on_failure);

// Starts `task` detached on `where` (an executor or an io_context). `what`
// names it in the log line and must outlive it (a string literal).
template <typename Where>
void guarded_spawn(Where&& where, const char* what, boost::asio::awaitable<void> task, Failure on_failure) {
  boost::asio::co_spawn(std::forward<Where>(where), std::move(task),
                        [what, on_failure](std::exception_ptr error) {
                          if (error) coroutine_failed(what, std::move(error), on_failure);
                        });
}

// Runs `f`, a callback that serves a connection outside any coroutine (a
// parked keep-alive connection's wake, a kernel-spliced pair's step),
// under the same policy as a survivable coroutine: an exception is logged
// with `what` and counted, never thrown into the io_context. True when `f`
// returned normally.
template <typename F>
bool guarded_call(const char* what, F&& f) noexcept {
  try {
    std::forward<F>(f)();
    return true;
  } catch (...) {
    coroutine_failed(what, std::current_exception(), Failure::survivable);
    return false;
  }
}

// A one-shot time limit on one thread's executor: arm() schedules
// `on_expiry` at a time point, disarm() (or destruction) takes it back.
// Once disarm() has returned, `on_expiry` does not run, even if the timer
// had already fired and its completion was queued behind the caller (the
// hazard the hand-rolled `settled` flags guarded against); so `on_expiry`
// may close or cancel the socket the caller has just finished with.
// `on_expiry` runs on the executor and must hold what it touches (a
// shared_ptr to the connection): it may run after the caller's frame is
// suspended, though never after disarm(). Not thread-safe: arm, disarm and
// the expiry all run on the one executor.
class Deadline {
 public:
  using Clock = boost::asio::steady_timer::clock_type;

  explicit Deadline(const boost::asio::any_io_executor& executor) : timer_(executor) {}
  ~Deadline() { disarm(); }
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

  // Replaces whatever was armed. expired() is false until `on_expiry` runs.
  void arm(Clock::time_point at, std::function<void()> on_expiry);
  void arm_after(Clock::duration after, std::function<void()> on_expiry) {
    arm(Clock::now() + after, std::move(on_expiry));
  }
  void disarm();
  // True once the armed expiry has run (until the next arm()).
  [[nodiscard]] bool expired() const { return *expired_; }

 private:
  boost::asio::steady_timer timer_;
  // Shared with the pending completion, which may outlive this object.
  std::shared_ptr<std::uint64_t> generation_ = std::make_shared<std::uint64_t>(0);
  std::shared_ptr<bool> expired_ = std::make_shared<bool>(false);
};

}  // namespace shunt

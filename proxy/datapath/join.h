// Runs two coroutines concurrently on the current executor and resumes when
// both have finished. Asio 1.74 has no awaitable operators, so completion is
// signalled through a timer used as an event. Callers keep everything the
// two coroutines reference alive until join_both returns.
#pragma once

#include <utility>  // before Asio: Boost 1.74 awaitable.hpp uses std::exchange unincluded

#include "common/cancel_slot.h"
#include "common/reset.h"
#include "proxy/datapath/datapath.h"
#include "proxy/datapath/pair_handoff.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <sys/socket.h>
#include <unistd.h>
#include <exception>
#include <memory>

namespace shunt::proxy {

inline boost::asio::awaitable<void> join_both(boost::asio::awaitable<void> first,
                                              boost::asio::awaitable<void> second) {
  namespace asio = boost::asio;
  auto executor = co_await asio::this_coro::executor;
  struct State {
    explicit State(const asio::any_io_executor& ex) : done(ex, asio::steady_timer::time_point::max()) {}
    asio::steady_timer done;
    int remaining = 2;
    std::exception_ptr error;
  };
  auto state = std::make_shared<State>(executor);
  auto on_finish = [state](std::exception_ptr e) {
    if (e && !state->error) state->error = e;
    if (--state->remaining == 0) state->done.cancel();
  };
  // Not detached (so not guarded_spawn, common/async.h): both are awaited
  // here and the first exception is rethrown into the caller, whose own
  // top-level guard handles it.
  asio::co_spawn(executor, std::move(first), on_finish);
  asio::co_spawn(executor, std::move(second), on_finish);
  while (state->remaining > 0) {
    boost::system::error_code ec;
    co_await state->done.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }
  if (state->error) std::rethrow_exception(state->error);
}

// A copy or splice pair as a takeover moves it (pair_handoff.h). Between
// reads nothing of it is in userspace (copy holds no buffer, splice's pipe
// is empty), so once every direction still open waits for its source to be
// readable it is only its two sockets and which directions are closed (a
// direction ends after passing its FIN on, so a half-closed pair is
// movable too): it can be frozen then (the waits are cancelled and the
// directions wait for thaw or let-go instead), and the new process starts
// its data path on them again, with the closed directions closed. A pair
// with a direction mid-write is not movable at that moment; during a
// takeover's boundary window (takeover/late.h) it freezes itself as soon
// as that write is done and the direction comes back to wait (freeze_now),
// so it moves then.
class UserspaceHold final : public PairHandoff::Pair {
 public:
  UserspaceHold(PairHandoff* handoff, SocketPair& pair, CancelSlot& cancel, std::uint64_t id,
                const boost::asio::any_io_executor& ex, HalfClosed closed = {})
      : handoff_(handoff),
        pair_(pair),
        cancel_(cancel),
        id_(id),
        thawed_(ex, boost::asio::steady_timer::time_point::max()),
        closed_(closed) {
    if (handoff_) handoff_->add(*this);
  }
  UserspaceHold(const UserspaceHold&) = delete;
  UserspaceHold& operator=(const UserspaceHold&) = delete;
  ~UserspaceHold() {
    if (handoff_) handoff_->remove(*this);
  }

  // A direction's wait for `from` to be readable (its result in `ec`);
  // false once the pair was let go: the direction ends without touching
  // the sockets.
  boost::asio::awaitable<bool> wait_readable(boost::asio::ip::tcp::socket& from,
                                             boost::system::error_code& ec) {
    namespace asio = boost::asio;
    for (;;) {
      if (state_ == State::running) {
        ++waiting_;
        // The last direction back from a write while a boundary window
        // is open: the pair is movable now, so it freezes here.
        if (can_freeze() && handoff_ && handoff_->takes_now(PairKind::userspace)) handoff_->freeze_now(*this);
        if (state_ == State::running)
          co_await from.async_wait(asio::ip::tcp::socket::wait_read,
                                   asio::redirect_error(asio::use_awaitable, ec));
        --waiting_;
        if (state_ == State::running) co_return true;
      }
      if (state_ == State::gone) co_return false;
      boost::system::error_code ignored;  // frozen: until thaw() or let_go()
      co_await thawed_.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
  }
  [[nodiscard]] bool gone() const { return state_ == State::gone; }
  // A direction passed its FIN on and ended (not a reset: that ends the pair).
  void closed(Direction d) { (d == Direction::up ? closed_.up : closed_.down) = true; }

  [[nodiscard]] PairKind kind() const override { return PairKind::userspace; }
  [[nodiscard]] bool can_freeze() const override {
    return state_ == State::running && waiting_ > 0 && waiting_ == 2 - int(closed_.up) - int(closed_.down);
  }
  PairHandoff::Exported freeze() override {
    state_ = State::frozen;
    boost::system::error_code ignored;
    pair_.client.cancel(ignored);  // both waits end; wait_readable waits for thawed_
    pair_.upstream.cancel(ignored);
    PairHandoff::Exported e;
    e.connection_id = id_;
    e.kind = PairKind::userspace;
    e.client_fd = pair_.client.native_handle();
    e.upstream_fd = pair_.upstream.native_handle();
    // The cookies name the sockets, which the new process checks.
    e.state.client_cookie = cookie(e.client_fd);
    e.state.upstream_cookie = cookie(e.upstream_fd);
    e.state.client_fin_forwarded = closed_.up;
    e.state.upstream_fin_forwarded = closed_.down;
    return e;
  }
  void thaw() override {
    state_ = State::running;
    thawed_.cancel();
    // A cancel while frozen left the sockets alone (run_both_directions).
    if (cancel_.cancelled()) {
      reset_socket(pair_.client);
      reset_socket(pair_.upstream);
    }
  }
  [[nodiscard]] bool frozen() const { return state_ != State::running; }
  void let_go() override {
    state_ = State::gone;
    thawed_.cancel();
  }

  // After both directions ended on let_go(): this process's descriptors
  // out of its epoll and closed, not the sockets' last (the new process
  // holds them), so neither peer sees anything.
  void close_quietly() {
    for (boost::asio::ip::tcp::socket* s : {&pair_.client, &pair_.upstream}) {
      boost::system::error_code ec;
      const int fd = s->release(ec);
      if (!ec && fd >= 0) ::close(fd);
    }
  }

 private:
  static std::uint64_t cookie(int fd) {
    std::uint64_t c = 0;
    socklen_t len = sizeof(c);
    return ::getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &len) == 0 ? c : 0;
  }
  enum class State { running, frozen, gone };
  PairHandoff* handoff_;
  SocketPair& pair_;
  CancelSlot& cancel_;
  std::uint64_t id_;
  boost::asio::steady_timer thawed_;
  State state_ = State::running;
  int waiting_ = 0;  // directions waiting for their source
  HalfClosed closed_;
};

// A userspace data path (copy, splice): both directions of `pair` at once,
// `direction(from, to, from_client, Direction, ending, hold)` making each
// one's coroutine, which waits for its source through hold.wait_readable().
// A cancel resets both sockets, which ends both directions; so does an
// exception, before it goes on to the connection's guard. `handoff`: this
// thread's (null: the pair never moves).
//
// `closed`: directions that ended before (a half-closed pair a takeover
// moved): they do not run. Their coroutine is made and dropped unstarted
// here rather than chosen with a conditional inside the co_await, which
// GCC 12 miscompiles (it destroyed a frame that was never made).
inline boost::asio::awaitable<void> unless_closed(bool closed, boost::asio::awaitable<void> run) {
  if (closed) co_return;
  co_await std::move(run);
}

template <typename MakeDirection>
boost::asio::awaitable<Ending> run_both_directions(SocketPair& pair, CancelSlot& cancel, PairHandoff* handoff,
                                                   std::uint64_t id, MakeDirection direction,
                                                   HalfClosed closed = {}) {
  UserspaceHold hold(handoff, pair, cancel, id, co_await boost::asio::this_coro::executor, closed);
  const auto on_cancel = cancel.install([&pair, &hold] {
    // Frozen, the sockets may be another process's now: thaw() resets
    // them if this one keeps them.
    if (hold.frozen()) return;
    reset_socket(pair.client);
    reset_socket(pair.upstream);
  });
  Ending ending;
  try {
    co_await join_both(
        unless_closed(closed.up, direction(pair.client, pair.upstream, true, Direction::up, ending, hold)),
        unless_closed(closed.down,
                      direction(pair.upstream, pair.client, false, Direction::down, ending, hold)));
  } catch (...) {
    reset_socket(pair.client);
    reset_socket(pair.upstream);
    throw;
  }
  if (hold.gone()) {
    hold.close_quietly();
    co_return Ending(EndReason::taken_over);
  }
  co_return ending;
}

}  // namespace shunt::proxy

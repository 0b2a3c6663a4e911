// Runs two coroutines concurrently on the current executor and resumes when
// both have finished. Asio 1.74 has no awaitable operators, so completion is
// signalled through a timer used as an event. Callers keep everything the
// two coroutines reference alive until join_both returns.
#pragma once

#include <utility>  // before Asio: Boost 1.74 awaitable.hpp uses std::exchange unincluded

#include "common/cancel_slot.h"
#include "common/reset.h"
#include "proxy/datapath/datapath.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

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

// A userspace data path (copy, splice): both directions of `pair` at once,
// `direction(from, to, from_client, Direction, ending)` making each one's
// coroutine. A cancel resets both sockets, which ends both directions; so
// does an exception, before it goes on to the connection's guard.
template <typename MakeDirection>
boost::asio::awaitable<Ending> run_both_directions(SocketPair& pair, CancelSlot& cancel,
                                                   MakeDirection direction) {
  const auto on_cancel = cancel.install([&pair] {
    reset_socket(pair.client);
    reset_socket(pair.upstream);
  });
  Ending ending;
  try {
    co_await join_both(direction(pair.client, pair.upstream, true, Direction::up, ending),
                       direction(pair.upstream, pair.client, false, Direction::down, ending));
  } catch (...) {
    reset_socket(pair.client);
    reset_socket(pair.upstream);
    throw;
  }
  co_return ending;
}

}  // namespace shunt::proxy

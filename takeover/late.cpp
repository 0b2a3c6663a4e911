#include "takeover/late.h"

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace shunt::takeover {

namespace asio = boost::asio;
using Socket = asio::posix::stream_descriptor;

namespace {

// Each step's failure ends the window where it is; written as separate
// coroutines with one co_return path each (GCC 12 mishandles locals of a
// coroutine that returns from deep inside a loop: it destroyed a Result it
// had not built).

// The old side's batch: sent, then `adopted` awaited.
asio::awaitable<Status> send_batch(Socket& peer, std::uint16_t version, const std::vector<HandedPair>& batch,
                                   const Timeouts& timeouts) {
  Status sent = send_pairs(peer, version, batch, timeouts);
  if (!sent) co_return sent;
  auto adopted = expect(co_await receive(peer, timeouts.step), MessageType::adopted,
                        "the new process refused the connections");
  if (!adopted) co_return adopted.error();
  co_return ok_status();
}

// The new side's batch, from its first message: collected, adopted,
// `adopted` sent, `handed` awaited. `n`: its size.
asio::awaitable<Status> receive_batch(Socket& peer, std::uint16_t version, Message first,
                                      const ArrivalHooks& hooks, const Timeouts& timeouts, std::size_t& n) {
  PairCollector collector(version);
  Result<bool> done = collector.feed(std::move(first));
  while (done && !*done) {
    auto next = co_await receive(peer, timeouts.step);
    if (!next) co_return next.error();
    done = collector.feed(std::move(*next));
  }
  if (!done) co_return done.error();
  std::vector<InheritedPair> batch = collector.take();
  n = batch.size();
  if (Status st = hooks.adopt(std::move(batch)); !st) {
    (void)send_message(peer.native_handle(), version, MessageType::refuse,
                       Writer().str(st.error().message()).take(), {}, Clock::now() + timeouts.step);
    co_return st;
  }
  if (Status st =
          send_message(peer.native_handle(), version, MessageType::adopted,
                       Writer().u32(static_cast<std::uint32_t>(n)).take(), {}, Clock::now() + timeouts.step);
      !st) {
    hooks.let_go();
    co_return st;
  }
  auto handed =
      expect(co_await receive(peer, timeouts.step), MessageType::handed, "the running shunt took them back");
  if (!handed) {
    // Taken back by the old process, or it went away: either way this
    // process must not act on the batch.
    hooks.let_go();
    co_return handed.error();
  }
  hooks.thaw();
  co_return ok_status();
}

}  // namespace

asio::awaitable<LateResult> hand_over_late(Socket& peer, std::uint16_t version, const LateHooks& hooks,
                                           const Timeouts& timeouts) {
  LateResult r;
  const auto began = Clock::now();
  const auto until = began + timeouts.boundary;
  hooks.window(true);
  asio::steady_timer tick(peer.get_executor());
  while (Clock::now() < until && !r.failed) {
    const std::vector<HandedPair> batch = hooks.collect();
    if (batch.empty()) {
      if (hooks.candidates() == 0) break;
      tick.expires_after(kBoundaryPoll);
      boost::system::error_code ignored;
      co_await tick.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
      continue;
    }
    const Status adopted = co_await send_batch(peer, version, batch, timeouts);
    if (!adopted) {
      // Nothing of this batch was acted on by the new process: it stays
      // (thawed below, with whatever else froze meanwhile).
      r.failed = true;
      r.detail = adopted.error().message();
      break;
    }
    hooks.let_go();
    r.moved += batch.size();
    ++r.batches;
    // The new process acts on the batch once this arrives. Should it not
    // (the new process is gone), the connections went with it.
    if (Status st = send_message(peer.native_handle(), version, MessageType::handed, {}, {},
                                 Clock::now() + timeouts.step);
        !st) {
      r.failed = true;
      r.detail = st.error().message();
    }
  }
  hooks.window(false);
  // What froze as the window closed (or in a batch the new process did not
  // take) goes back to work here.
  hooks.thaw();
  r.took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - began);
  if (!r.failed)
    (void)send_message(peer.native_handle(), version, MessageType::late_end,
                       Writer().u32(static_cast<std::uint32_t>(r.moved)).take(), {},
                       Clock::now() + timeouts.step);
  co_return r;
}

asio::awaitable<ArrivalResult> receive_late(Socket& peer, std::uint16_t version, const ArrivalHooks& hooks,
                                            const Timeouts& timeouts) {
  ArrivalResult r;
  // The old process sends a batch or late_end within the window; a step on
  // top for the last batch's round trip.
  const auto until = Clock::now() + timeouts.boundary + timeouts.step;
  for (;;) {
    const auto left = std::max(std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()),
                               std::chrono::milliseconds(1));
    auto m = co_await receive(peer, left);
    if (!m) {
      r.failed = true;
      r.detail = m.error().message();
      break;
    }
    if (m->type == MessageType::late_end) break;
    std::size_t n = 0;
    const Status st = co_await receive_batch(peer, version, std::move(*m), hooks, timeouts, n);
    if (!st) {
      r.failed = true;
      r.detail = st.error().message();
      break;
    }
    r.moved += n;
    ++r.batches;
  }
  co_return r;
}

}  // namespace shunt::takeover

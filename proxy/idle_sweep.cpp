#include "proxy/idle_sweep.h"

#include "common/async.h"

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>

namespace shunt::proxy {

namespace asio = boost::asio;

IdleSweep::IdleSweep(asio::io_context& io) : timer_(io) {
  // Survivable: without it no connection is closed for idleness, traffic
  // still flows (the per-connection watchdog it replaces was survivable too).
  guarded_spawn(io, "idle sweep", run(), Failure::survivable);
}

void IdleSweep::add(Entry& entry, std::chrono::milliseconds period) {
  if (entry.slot_ != kNone) return;
  entry.slot_ = entries_.size();
  entry.next_check = Clock::now() + period;
  entries_.push_back(&entry);
  if (period < tick_) {
    // A shorter timeout than any before: tick faster from now on (the wait
    // in progress still ends at its old time, at most 250 ms away).
    tick_ = std::max<std::chrono::milliseconds>(period, std::chrono::milliseconds(50));
  }
}

void IdleSweep::remove(Entry& entry) {
  if (entry.slot_ == kNone) return;
  // Swap with the last entry: O(1), order does not matter.
  Entry* last = entries_.back();
  entries_[entry.slot_] = last;
  last->slot_ = entry.slot_;
  entries_.pop_back();
  entry.slot_ = kNone;
}

asio::awaitable<void> IdleSweep::run() {
  for (;;) {
    timer_.expires_after(tick_);
    boost::system::error_code ec;
    co_await timer_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return;  // the worker is going away
    const auto now = Clock::now();
    // A check may end its connection (abort), which removes it from the
    // sweep only later, from the connection's own coroutine; indexes stay
    // valid through the loop.
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      Entry* e = entries_[i];
      if (e->next_check <= now) e->check_idle(now);
    }
  }
}

}  // namespace shunt::proxy

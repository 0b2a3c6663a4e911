// The idle watchdog of every connection on one worker thread, as one timer
// and a sweep, instead of a coroutine and a timer per connection (issue 16:
// ~0.7 KB per connection, most of it for a wait that fires a few times an
// hour).
//
// A connection is idle when no byte moved either way (the kernel's counters
// for a spliced pair, so no data path reports activity) for
// timeouts.idle. Each connection is checked every quarter of its idle
// timeout (at least 50 ms apart), as the per-connection watchdog did; the
// sweep ticks every 250 ms, or a quarter of the shortest idle timeout it
// has seen, and looks at the connections that are due. A tick over 100,000
// entries compares 100,000 time points: well under a millisecond.
//
// Everything runs on the worker's thread: add, remove and the checks.
#pragma once

#include <utility>  // before Asio: Boost 1.74 awaitable.hpp uses std::exchange unincluded

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstddef>
#include <vector>

namespace shunt::proxy {

class IdleSweep {
 public:
  using Clock = std::chrono::steady_clock;

  // What the sweep calls: a connection's own idle check. `slot_` is the
  // sweep's bookkeeping (the entry's index), so removal needs no search.
  class Entry {
   public:
    virtual void check_idle(Clock::time_point now) = 0;
    Clock::time_point next_check{};

   protected:
    ~Entry() = default;

   private:
    friend class IdleSweep;
    std::size_t slot_ = kNone;
  };
  static constexpr std::size_t kNone = static_cast<std::size_t>(-1);

  explicit IdleSweep(boost::asio::io_context& io);
  IdleSweep(const IdleSweep&) = delete;
  IdleSweep& operator=(const IdleSweep&) = delete;

  // `period`: how often `entry` wants its check.
  void add(Entry& entry, std::chrono::milliseconds period);
  void remove(Entry& entry);
  [[nodiscard]] std::size_t size() const { return entries_.size(); }

 private:
  boost::asio::awaitable<void> run();

  boost::asio::steady_timer timer_;
  std::chrono::milliseconds tick_{250};
  std::vector<Entry*> entries_;
};

}  // namespace shunt::proxy

// Version 3: the boundary window after the commit. A takeover moves what
// is movable at that moment; what is not (an HTTP/1.1 request in flight,
// a TLS connection whose ClientHello has not come, a copy or splice pair
// mid-write) becomes movable at its next boundary. So after the commit the
// old process keeps the control connection open for Timeouts::boundary and
// hands on, batch by batch, whatever reached a boundary:
//
//   old: pairs .. pairs_end      (the batch, frozen in the old process)
//   new: adopted                 (registered, still frozen)
//   old: handed                  (its fds of the batch closed)
//   new: acts on the batch       ...  and so on, then old: late_end.
//
// At every moment one process at most acts on a connection: the old one
// takes a batch back (thaws it) unless `adopted` came in time, and the new
// one acts on it only after `handed`; without `handed` (the old process
// timed out and took it back, or went away) it closes its copies without
// touching the sockets. Connections that reach no boundary in the window
// stay with the old process and drain there.
#pragma once

#include "takeover/handover.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace shunt::takeover {

// The old process's side; every hook runs on the caller's executor.
struct LateHooks {
  // Opens (true) or closes the window: while open, a connection that
  // reaches a boundary freezes there and waits to be collected.
  std::function<void(bool)> window;
  // What froze since the last call (or is freezable now), to send.
  std::function<std::vector<HandedPair>()> collect;
  std::function<void()> let_go;  // the new process adopted the last batch
  std::function<void()> thaw;    // it did not: the last batch stays here
  // Connections this process holds that could still move; none: the window
  // closes early.
  std::function<std::size_t()> candidates;
};

struct LateResult {
  std::size_t moved = 0;
  std::size_t batches = 0;
  bool failed = false;  // the new process went away or stalled: the window closed there
  std::string detail;
  std::chrono::milliseconds took{0};
};

// How often the old process looks for connections that reached a boundary
// (each batch is one round trip on the control socket).
inline constexpr std::chrono::milliseconds kBoundaryPoll{10};

boost::asio::awaitable<LateResult> hand_over_late(boost::asio::posix::stream_descriptor& peer,
                                                  std::uint16_t version, const LateHooks& hooks,
                                                  const Timeouts& timeouts);

// The new process's side.
struct ArrivalHooks {
  // A batch: register it frozen. An error refuses it (the old process
  // takes it back).
  std::function<Status(std::vector<InheritedPair>)> adopt;
  std::function<void()> thaw;    // `handed`: act on the batch
  std::function<void()> let_go;  // no `handed`: close this process's copies
};

struct ArrivalResult {
  std::size_t moved = 0;
  std::size_t batches = 0;
  bool failed = false;
  std::string detail;
};

boost::asio::awaitable<ArrivalResult> receive_late(boost::asio::posix::stream_descriptor& peer,
                                                   std::uint16_t version, const ArrivalHooks& hooks,
                                                   const Timeouts& timeouts);

}  // namespace shunt::takeover

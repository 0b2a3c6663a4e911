// One direction of a kernel-spliced pair while its verdict holds
// (docs/datapath.md, "Memory bound").
//
// The kernel neither charges nor bounds a redirect target's psock backlog:
// a redirected skb leaves the source socket's accounting at once, so a fast
// sender to a slow receiver would fill it without end. Once that backlog is
// over BufferBudget::kBacklogLimitBytes the verdict program passes the
// source's skbs to the source socket's own queue instead (charged there, so
// its receive window closes and the sender slows as for a slow reader) and
// reports the hold. HeldBytes then moves those bytes itself, in order:
//
//   1. it waits until the target has been written everything redirected
//      before the hold (its backlog is empty), so that held bytes cannot
//      overtake it;
//   2. it peeks at the held bytes, sends what the target takes, adds it to
//      the running total in `hold_forwarded` and consumes exactly that much
//      from the source (at once, or at the next call when recv() declines
//      for the moment). Nothing read waits in userspace between two calls,
//      so a takeover hands on a holding pair by its maps alone once the
//      bytes owed to the source are taken off (settle_owed(), at the
//      freeze);
//   3. the verdict redirects again once that total equals what it held and
//      the backlog is under the limit: the next skb then follows the held
//      bytes through the backlog.
//
// Hazards: the pump must run whenever held bytes wait (the hold event
// starts it; the verdict holds only when that event was delivered, and a
// pair checks for held bytes once it is enrolled for events), and nothing
// but this pump may write to the target between steps 1 and 3.
#pragma once

#include "bpf/sockmap.h"

#include <cstdint>

namespace shunt::proxy {

class HeldBytes {
 public:
  // What the pump waits for before it can move on.
  enum class Wait : std::uint8_t {
    nothing,   // nothing held: idle until the next hold event
    readable,  // the source, for more held bytes (or the verdict to resume)
    writable,  // the target, for room
    backlog,   // the target's backlog to drain (no event for it: poll)
  };
  struct Step {
    Wait wait = Wait::nothing;
    int failed_fd = -1;  // a socket that failed (send/recv error): reset the pair
    int error = 0;
  };

  // The hold event arrived (or held bytes were found): pump from now on.
  void start() {
    if (!active_) ++holds_;
    active_ = true;
  }
  [[nodiscard]] bool active() const { return active_; }

  // Moves what it can without blocking. `written_base`: bytes written to
  // `to` before the handover; `others`: bytes written to `to` since then by
  // something other than the verdict and this pump (the short-circuit).
  Step pump(bpf::SockmapBridge& bridge, int from, int to, std::uint64_t from_cookie,
            std::uint64_t written_base, std::uint64_t others);

  // Takes off the source what was written to the target and not yet
  // consumed (waiting up to 50 ms); before a takeover hands the pair on, as
  // the new process knows nothing of it. False if some remain.
  bool settle_owed(int from);

  // Holds this pump served, and the bytes it forwarded.
  [[nodiscard]] std::uint32_t holds() const { return holds_; }
  [[nodiscard]] std::uint64_t forwarded_here() const { return forwarded_here_; }

 private:
  // 24 bytes: every kernel-spliced pair carries two (issue 16's budget).
  bool active_ = false;
  std::uint16_t faulted_sends_ = 0;  // send()s in a row that failed with EFAULT (see pump)
  std::uint32_t holds_ = 0;
  std::uint32_t owed_ = 0;  // written to the target, not yet taken off the source (<= 1 MiB)
  std::uint64_t forwarded_here_ = 0;
};
static_assert(sizeof(HeldBytes) == 24, "two per kernel-spliced pair: keep it small (issue 16)");

}  // namespace shunt::proxy

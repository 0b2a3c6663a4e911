// Kernel-spliced pairs (and HTTP/1.1 connections parked between requests,
// proxy/connection.h) as a takeover moves them to a new process
// (docs/operating.md, "Upgrades"; the protocol is takeover/). Once a pair
// is in the sockmap its bytes need no userspace: what moves is the two
// sockets and the few numbers the sockmap path's FIN rule needs
// (SplicedPairState). One PairHandoff per worker thread, touched only on
// that thread.
//
// The sequence, on both sides:
//   old: freeze_all() -> (the new process holds the sockets) -> let_go_frozen()
//        or, when the new process fails, thaw_frozen();
//   new: each adopted pair starts frozen (adopt_frozen) -> commit -> thaw_frozen().
// Then (protocol version 3, takeover/late.h) the boundary window, batch by
// batch: old: set_window(kinds) -> pairs freeze as they reach a boundary
// (freeze_now) and inflight inspectors are nudged -> freeze_all collects
// them -> let_go_frozen() or thaw_frozen() as above -> set_window(0).
// While frozen a pair does nothing to its sockets (no FIN forwarded, no
// reset, a cancel deferred), so whichever process ends up holding it finds
// it as the other left it. The kernel moves its bytes all along.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

namespace shunt::proxy {

// What the sockmap path's loop knows about a pair beyond its sockets. The
// cookies identify the sockets (SO_COOKIE is per socket, not per fd, so it
// is the same in both processes) and key the shared sock_peers counters.
struct SplicedPairState {
  std::uint64_t client_cookie = 0;
  std::uint64_t upstream_cookie = 0;
  // Drain baselines (sockmap_path.cpp, `drained`): what userspace read from
  // each socket and wrote to it before the pair entered the sockmap.
  std::uint64_t client_consumed = 0;
  std::uint64_t upstream_consumed = 0;
  std::uint64_t client_written = 0;
  std::uint64_t upstream_written = 0;
  // Client -> upstream and (protocol version 4) upstream -> client bytes
  // the endpoint short-circuit moved. The captures are released when a pair
  // freezes (a new process does not inherit the old one's shortcut maps),
  // so these are final from then on.
  std::uint64_t short_circuited = 0;
  std::uint64_t short_circuited_down = 0;
  bool client_fin_forwarded = false;    // the client's FIN passed to the upstream
  bool upstream_fin_forwarded = false;  // the upstream's FIN passed to the client
  bool boosted = false;                 // holds a bulk send buffer (BufferBudget)
};

// What moves: the kinds differ in what the new process does with the two
// sockets once the takeover commits.
enum class PairKind : std::uint8_t {
  kernel_spliced,  // in the sockmap: its FIN rule runs on (SplicedPairState)
  parked_http,     // HTTP/1.1 between requests: parked, the next request inspected
  userspace,       // copy or splice between reads (nothing buffered): its data path starts again
  // Version 3 (takeover/late.h): a TLS connection waiting for its
  // ClientHello, with only its client socket and the bytes read so far; the
  // new process resumes the SNI decision with those bytes first.
  tls_hello,
  // Version 3 likewise: an HTTP/1.1 connection whose first request head
  // has not come whole (no upstream yet), with the bytes read so far.
  http_first,
};
// A set of kinds, for what the new process takes.
using PairKindSet = std::uint8_t;
constexpr PairKindSet kind_bit(PairKind kind) {
  return static_cast<PairKindSet>(1u << static_cast<unsigned>(kind));
}

class PairHandoff {
 public:
  struct Exported {
    std::uint64_t connection_id = 0;
    SplicedPairState state;
    int client_fd = -1;  // borrowed: open until let_go_frozen() or the pair ends
    int upstream_fd = -1;
    // `state` is a kernel-spliced pair's; for the others only its cookies
    // (which name the sockets) are set, and for a copy or splice pair the
    // directions already closed (its FIN flags).
    PairKind kind = PairKind::kernel_spliced;
    // tls_hello, http_first: the bytes read from the client, none
    // forwarded (upstream_fd -1).
    std::string pending;
  };

  // Implemented by the sockmap path's pair, by a Connection while it is
  // parked between HTTP/1.1 requests, and by a copy or splice pair
  // (join.h).
  class Pair {
   public:
    // Stop acting on the sockets; the state as it stands.
    virtual Exported freeze() = 0;
    [[nodiscard]] virtual PairKind kind() const = 0;
    // Whether it can be frozen now: a copy or splice pair only between
    // reads in both directions (its bytes flushed); one that cannot stays
    // with this process and drains here.
    [[nodiscard]] virtual bool can_freeze() const { return true; }
    // Act again (and check the sockets at once: a FIN or reset may have
    // come meanwhile).
    virtual void thaw() = 0;
    // Another process holds the sockets: close this process's descriptors
    // without touching the connection and end.
    virtual void let_go() = 0;

   protected:
    ~Pair() = default;
  };

  // A connection whose inspector could stop at its next boundary (an
  // HTTP/1.1 request in flight, a TLS connection waiting for its
  // ClientHello): nudged while a takeover's boundary window is open
  // (takeover/late.h), so that it hands itself back there.
  class Inflight {
   public:
    virtual void nudge(bool on) = 0;

   protected:
    ~Inflight() = default;
  };
  void add_inflight(Inflight& c) {
    inflight_.insert(&c);
    if (window_) c.nudge(true);
  }
  void remove_inflight(Inflight& c) { inflight_.erase(&c); }

  // The boundary window (takeover/late.h): `kinds` the new process takes
  // (0 closes it). While open, a pair of such a kind that reaches a
  // boundary freezes at once (freeze_now) and waits for the next
  // freeze_all, and every inflight connection is nudged.
  void set_window(PairKindSet kinds) {
    const bool was = window_ != 0;
    window_ = kinds;
    if (was != (kinds != 0))
      for (Inflight* c : std::vector<Inflight*>(inflight_.begin(), inflight_.end())) c->nudge(kinds != 0);
  }
  [[nodiscard]] bool takes_now(PairKind kind) const { return (window_ & kind_bit(kind)) != 0; }
  void freeze_now(Pair& pair) {
    if (pairs_.count(&pair) && frozen_.insert(&pair).second) ready_.emplace_back(&pair, pair.freeze());
  }
  // What could still move in a window: inflight connections, pairs not
  // frozen, and those frozen at a boundary but not collected yet.
  [[nodiscard]] std::size_t candidates() const {
    return inflight_.size() + pairs_.size() - frozen_.size() + ready_.size();
  }

  void add(Pair& pair) { pairs_.insert(&pair); }
  // A pair received from the old process: frozen until thaw_frozen().
  void adopt_frozen(Pair& pair) {
    pairs_.insert(&pair);
    frozen_.insert(&pair);
  }
  void remove(Pair& pair) {
    pairs_.erase(&pair);
    frozen_.erase(&pair);
    std::erase_if(ready_, [&pair](const auto& r) { return r.first == &pair; });
  }

  // Freezes every pair of the kinds `take(kind)` accepts that can be.
  template <typename Take>
  std::vector<Exported> freeze_all(Take take) {
    std::vector<Exported> out;
    out.reserve(pairs_.size());
    for (auto& [pair, exported] : std::exchange(ready_, {})) out.push_back(std::move(exported));
    for (Pair* p : pairs_)
      if (take(p->kind()) && p->can_freeze() && frozen_.insert(p).second) out.push_back(p->freeze());
    return out;
  }
  void let_go_frozen() {
    // let_go() ends the pair, which removes it: iterate over a copy.
    const std::vector<Pair*> frozen(frozen_.begin(), frozen_.end());
    frozen_.clear();
    ready_.clear();
    for (Pair* p : frozen) p->let_go();
  }
  void thaw_frozen() {
    const std::vector<Pair*> frozen(frozen_.begin(), frozen_.end());
    frozen_.clear();
    ready_.clear();
    for (Pair* p : frozen) p->thaw();
  }
  [[nodiscard]] std::size_t size() const { return pairs_.size(); }

 private:
  std::unordered_set<Pair*> pairs_;
  std::unordered_set<Pair*> frozen_;
  std::unordered_set<Inflight*> inflight_;
  // Frozen by freeze_now, not yet collected by freeze_all.
  std::vector<std::pair<Pair*, Exported>> ready_;
  PairKindSet window_ = 0;
};

}  // namespace shunt::proxy

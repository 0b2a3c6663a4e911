// SockmapBridge: the user-space half of the sockmap data path. It owns the
// loaded sockmap_redirect skeleton and performs the handover of an
// established socket pair to the kernel. Thread-safe: map operations are
// single syscalls and the kernel serialises them.
#pragma once

#include "common/error.h"
#include "common/unique_fd.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace shunt::bpf {

struct SocketCookies {
  std::uint64_t a = 0;
  std::uint64_t b = 0;
};

// Why a handover failed, for shunt_datapath_fallbacks_total{reason}.
enum class HandoverFailure {
  none,
  socket_state,  // kernel refused a socket (not ESTABLISHED: closing already)
  map_full,      // E2BIG/ENOMEM/ENOSPC from a map update
  other,
};
std::string_view to_string(HandoverFailure);

struct HandoverResult {
  HandoverFailure failure = HandoverFailure::none;
  // When true, `a` is in the verdict map and already redirects into `b`,
  // but `b` was refused: the pair cannot be spliced, and `b`'s direction
  // can only be finished by userspace (when `b` is half-closed: everything
  // it will receive is queued) or both reset.
  bool partial = false;
  SysError error;
  SocketCookies cookies;
  // A socket error the handover's recv() consumed (an RST that arrived
  // before or during the handover): recv returns it once and clears it, so
  // poll() no longer shows POLLERR. The caller must treat that socket as
  // reset. 0 when none.
  int consumed_error_a = 0;
  int consumed_error_b = 0;
  // Each socket's write_seq before anything but userspace wrote it, when the
  // caller asked (WriteSeqs::read) and the reading worked; see write_seqs().
  std::optional<std::pair<std::uint32_t, std::uint32_t>> write_seqs;
};

// The maps a takeover hands to the new process (docs/operating.md,
// "Upgrades"), so that the pairs it moves keep running in the kernel
// without a stall: the new process's program redirects through the same
// sock_peers (counters included) and redirect_targets, and it holds the old
// process's verdict_sockets, with those pairs in it and the verdict
// program each of their sockets carries, for as long as it runs. Its own
// new pairs go into a verdict_sockets of its own: the old process's
// attachment is never touched, so a new process that fails changes nothing.
//
// kKernelMapsVersion names the layout and meaning of the shared maps; bump
// it with any change to them (sockmap_shared.h, sockmap_maps.bpf.h). A new
// process that finds another version (or other key or value sizes) loads
// maps of its own and leaves the open pairs with the old process.
//
// 2: sock_peers gained the hold (held bytes, holding, the peer's written
// base) and hold_forwarded joined the shared maps.
// 3: sock_peers gained the verdict's stream position and the repeated bytes
// it cut (redirect_to_peer, cut_repeated).
// 4: sock_peers gained cut_failed, and the ring SHUNT_EVENT_BROKEN (a
// repeat the verdict could not cut: the pair must be reset).
// 5: sock_peers gained short_circuited (the short-circuit's bytes, for the
// live count).
inline constexpr std::uint32_t kKernelMapsVersion = 5;

struct KernelMaps {
  std::uint32_t version = kKernelMapsVersion;
  UniqueFd peers;
  UniqueFd targets;
  UniqueFd bulk_events;
  UniqueFd forwarded;             // hold_forwarded
  std::vector<UniqueFd> verdict;  // every verdict_sockets that may hold pairs
};

// The same, borrowed, for sending.
struct KernelMapFds {
  std::uint32_t version = kKernelMapsVersion;
  int peers = -1;
  int targets = -1;
  int bulk_events = -1;
  int forwarded = -1;
  std::vector<int> verdict;
};

// What the verdict program has done with one socket's bytes
// (docs/datapath.md, "Memory bound").
struct HoldState {
  std::uint64_t bytes = 0;  // payload through the verdict: redirected + held
  std::uint64_t held = 0;   // of which kept on the socket (its psock's ingress queue)
  bool holding = false;     // still holding: nothing is redirected
  bool broken = false;      // the verdict dropped a segment it could not cut: reset the pair
};

class SockmapBridge {
 public:
  // Loads and attaches the verdict program; sized for max_connections pairs.
  // With `inherited` (a takeover), the shared maps are those of the process
  // taken over when they are compatible (inherited_maps() says whether).
  // `backlog_limit_bytes`: most one direction may have redirected and not
  // yet in its target's send queue before the verdict holds
  // (docs/datapath.md, "Memory bound").
  static Result<std::unique_ptr<SockmapBridge>> load(std::uint32_t max_connections,
                                                     std::uint64_t bulk_threshold_bytes,
                                                     std::uint64_t backlog_limit_bytes,
                                                     KernelMaps* inherited = nullptr);

  // True when load() took over the maps it was given: pairs the old
  // process hands on can run here.
  [[nodiscard]] bool inherited_maps() const { return !inherited_verdict_.empty(); }
  // What a takeover hands on: the shared maps, this process's
  // verdict_sockets and each inherited one that still holds a socket.
  [[nodiscard]] KernelMapFds kernel_maps() const;
  ~SockmapBridge();
  SockmapBridge(const SockmapBridge&) = delete;
  SockmapBridge& operator=(const SockmapBridge&) = delete;

  // Moves the bytes of two established sockets kernel-side, in this order:
  //  1. peer entries (cookie -> peer cookie) so the verdict program knows
  //     where each socket's bytes go;
  //  2. both sockets into redirect_targets (no program), so neither can be
  //     redirected to before it is a valid target;
  //  3. a, then b, into verdict_sockets, which starts redirecting;
  //  4. a MSG_PEEK recv() on both, which makes the kernel run the verdict
  //     program over bytes that arrived before step 3, under the socket
  //     lock (kick_queued(); docs/datapath.md, "Bytes queued before the
  //     handover").
  // The caller must have written every byte it read from either socket
  // before calling, or the kernel path overtakes them. `written_a`/`_b`:
  // the bytes written to each socket so far (tcp_bytes_written()), the base
  // of the verdict's backlog bound. With WriteSeqs::read, each socket's
  // write_seq is read between steps 2 and 3 (write_seqs()), when nothing
  // can write either socket: the short-circuit's base.
  enum class WriteSeqs { skip, read };
  HandoverResult handover(int fd_a, int fd_b, std::uint64_t written_a, std::uint64_t written_b,
                          WriteSeqs seqs = WriteSeqs::skip);

  // The write_seq (sequence number of the next byte appended) of sockets in
  // redirect_targets, by cookie (0: not read, left 0); nullopt when one is
  // not there or the kernel refused the run. Exact, unlike byte counts read
  // without the socket's lock, but only meaningful as a base while nothing
  // else writes the socket (bpf/sockmap_redirect.bpf.c, read_write_seqs).
  [[nodiscard]] std::optional<std::pair<std::uint32_t, std::uint32_t>> write_seqs(
      const SocketCookies& cookies) const;

  // True when recv() on a verdict socket runs the verdict over bytes queued
  // before the socket entered the map (probed at load; Linux 6.4+ and the
  // stable kernels that took that fix). Otherwise handover() falls back to
  // the SO_RCVLOWAT kick, which is not serialised with the softirq.
  [[nodiscard]] bool recv_runs_verdict() const { return recv_runs_verdict_; }

  // Payload the verdict program took from this socket for its peer:
  // redirected, or held for userspace to forward (HoldState::bytes).
  [[nodiscard]] std::uint64_t redirected_bytes(std::uint64_t cookie) const;
  // Everything the kernel moved in this socket's direction so far: the
  // verdict's bytes plus what the endpoint short-circuit sent past it (for
  // the live byte counts of /connections; the drain checks keep the two
  // apart).
  [[nodiscard]] std::uint64_t moved_bytes(std::uint64_t cookie) const;
  // Bytes the verdict cut from segments that repeated bytes it had already
  // taken (a partly overlapping retransmission; redirect_to_peer).
  [[nodiscard]] std::uint64_t repeated_bytes(std::uint64_t cookie) const;

  // The socket's hold; zeros once forgotten.
  [[nodiscard]] HoldState hold_state(std::uint64_t cookie) const;
  // Held bytes of this socket userspace has written to its peer (a running
  // total, in hold_forwarded so that a takeover's new process carries on
  // from it); the verdict resumes redirecting once it equals
  // HoldState::held.
  [[nodiscard]] std::uint64_t forwarded(std::uint64_t cookie) const;
  Status set_forwarded(std::uint64_t cookie, std::uint64_t forwarded);

  // Drops the peer entries once both sockets are closed (closing a socket
  // removes it from the sockhashes by itself).
  void forget(const SocketCookies& cookies);

  // The maps bpf/sockmap_shortcut.cpp shares (bpf_map__reuse_fd).
  struct SharedMaps {
    int peers = -1;
    int targets = -1;
    int bulk_events = -1;
  };
  [[nodiscard]] SharedMaps shared_maps() const;

  // Events from the programs, one ring (`bulk_events`): a socket crossed
  // bulk_threshold, or a short-circuited endpoint is to be released (stuck
  // on TCP, or its application made the socket unsafe to short-circuit:
  // bpf/sockmap_shortcut.bpf.c, endpoint_send), or a verdict started
  // holding (docs/datapath.md, "Memory bound"). poll_bulk_events invokes
  // `on_event(cookie, kind)` for each pending one; call it when
  // bulk_events_fd() is readable.
  enum class EventKind {
    bulk,
    hold,
    shortcut_stuck,     // released: a sender that never pauses
    shortcut_zerocopy,  // released: SO_ZEROCOPY set after the capture
    shortcut_ulp,       // released: a ULP (kTLS) set after the capture
    shortcut_blocking,  // released: the file made blocking after the capture
    broken,             // the verdict dropped a segment whose repeat it could not cut: reset the pair
  };
  using EventHandler = std::function<void(std::uint64_t cookie, EventKind kind)>;
  [[nodiscard]] int bulk_events_fd() const;
  void poll_bulk_events(const EventHandler& on_event);

 private:
  // Runs the verdict over bytes queued on `fd` before it entered
  // verdict_sockets (handover() step 4).
  // Returns the socket error the recv consumed, or 0.
  int kick_queued(int fd, std::uint64_t cookie) const;
  // Legacy kick only: queued bytes that no verdict run has seen.
  [[nodiscard]] bool stranded(int fd, std::uint64_t cookie) const;
  // Sets recv_runs_verdict_ from a loopback socket pair.
  void probe_queued_kick();
  SockmapBridge();
  void erase_peer(std::uint64_t cookie);

  // The skeleton and the bulk ring (bpf/owned.h), defined in sockmap.cpp so
  // that this header does not pull in the generated skeleton.
  struct Objects;
  std::unique_ptr<Objects> objects_;
  EventHandler const* on_bulk_ = nullptr;
  int peers_fd_ = -1;
  int targets_fd_ = -1;
  int verdict_fd_ = -1;
  int forwarded_fd_ = -1;  // hold_forwarded
  int read_seqs_fd_ = -1;  // the read_write_seqs program
  bool recv_runs_verdict_ = false;
  // verdict_sockets maps of the processes taken over, kept open while
  // this one runs: closing the last reference would free a map and take
  // the pairs in it out of the kernel path.
  std::vector<UniqueFd> inherited_verdict_;
};

// Socket cookie (SO_COOKIE), stable for the socket's lifetime.
Result<std::uint64_t> socket_cookie(int fd);

}  // namespace shunt::bpf

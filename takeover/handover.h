// The running process's side of a takeover: answers one process that
// connected to the control socket, hands it the listening sockets and lets
// go of them only once the new process has said it accepts on every one and
// then that it owns the control socket. Until that last message the old
// process can take everything back, and does so when the new one refuses,
// disappears or stalls past a step's timeout.
#pragma once

#include "takeover/protocol.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace shunt::takeover {

struct HandedListener {
  ListenerEntry entry;
  int fd = -1;  // borrowed: stays open in the old process until its hooks release it
};

// Version 2: the sockmap's maps, borrowed like the listeners.
struct HandedMaps {
  KernelMapSet set;
  std::vector<int> fds;  // one per name
};

// Version 2: which pairs the new process takes (its `ready` says).
struct PairKinds {
  bool kernel_spliced = false;  // it shares the sockmap's maps
  bool parked_http = false;     // HTTP/1.1 connections between requests
  bool userspace = false;       // copy and splice pairs between reads
};

// Version 2: one kernel-spliced pair (or parked HTTP/1.1 connection), frozen (its state encoded by the
// proxy); the fds stay open in the old process until let_go_pairs.
struct HandedPair {
  std::string state;
  int client_fd = -1;
  int upstream_fd = -1;  // -1: a connection with no upstream yet (version 3 only)
};

// What the daemon does at each step; all run on the caller's executor.
struct HandoverHooks {
  std::function<std::vector<HandedListener>()> listeners;
  // Stop accepting, keeping every listening socket open: a SYN that
  // arrives meanwhile waits in the backlog the new process accepts from.
  std::function<void()> pause;
  // Take back: accept again (the new process failed after pause).
  std::function<void()> resume;

  // Version 2, all optional (empty: this process has no sockmap pairs).
  // The maps the new process shares with this one, sent with the listeners.
  std::function<std::optional<HandedMaps>()> kernel_maps;
  // After pause, when the new process said it takes pairs: every pair,
  // frozen (neither process acts on its sockets; the kernel moves its
  // bytes), each state in `version`'s layout. Then either let_go_pairs (the new process committed: close
  // this process's fds, which are not the sockets' last ones) or
  // thaw_pairs (it failed: carry on as before).
  std::function<std::vector<HandedPair>(const PairKinds& kinds, std::uint16_t version)> freeze_pairs;
  std::function<void()> let_go_pairs;
  std::function<void()> thaw_pairs;
};

enum class Outcome {
  ok,            // the new process owns the listeners and the control socket
  probe,         // connected and hung up without a hello (`shunt run` checking)
  incompatible,  // no common protocol version: refused, nothing changed
  timeout,       // the new process stalled: everything kept or taken back
  failed,        // the new process went away or spoke nonsense: same
};
std::string_view to_string(Outcome outcome);

struct HandoverResult {
  Outcome outcome = Outcome::failed;
  std::string detail;  // for the log line
  std::uint32_t peer_pid = 0;
  std::string peer_binary;
  std::size_t listeners = 0;  // sockets sent
  std::size_t pairs = 0;      // kernel-spliced pairs handed on (version 2)
  std::uint16_t version = 0;
  PairKinds kinds;               // what the new process takes
  bool boundary_window = false;  // version 3: it asked for the window after the commit (late.h)
};

// `peer`: a connection accepted on the control socket (SOCK_SEQPACKET),
// wrapped only to wait for it without blocking the caller's thread.
// Shared with late.cpp: one message within `within`, waited for on the
// caller's executor; a batch of pairs in the version's layout.
boost::asio::awaitable<Result<Message>> receive(boost::asio::posix::stream_descriptor& peer,
                                                std::chrono::milliseconds within);
Status send_pairs(boost::asio::posix::stream_descriptor& peer, std::uint16_t version,
                  const std::vector<HandedPair>& pairs, const Timeouts& t);

boost::asio::awaitable<HandoverResult> hand_over(boost::asio::posix::stream_descriptor& peer,
                                                 const HandoverHooks& hooks, const Timeouts& timeouts);

}  // namespace shunt::takeover

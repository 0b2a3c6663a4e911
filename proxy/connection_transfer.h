// A kernel-spliced connection as a takeover moves it to a new process
// (docs/operating.md, "Upgrades"): what its ConnectionInfo says (flow,
// pods, rule, what its verdict rests on, timestamps, bytes userspace
// moved) and its data path's state (pair_handoff.h). daemon/ puts it on
// the wire (takeover/); Server freezes, adopts and lets go of the pairs.
#pragma once

#include "common/unique_fd.h"
#include "config/config.h"
#include "proxy/connection_registry.h"
#include "proxy/datapath/pair_handoff.h"
#include "proxy/observer.h"

#include <chrono>
#include <cstdint>
#include <string>

namespace shunt::proxy {

struct TransferredConnection {
  std::uint64_t id = 0;  // in the process that handed it over, for log lines
  std::string listener;
  config::Endpoint src;
  config::Endpoint dst;
  std::string src_pod;
  std::string dst_pod;
  std::string rule;
  // steady_clock is CLOCK_MONOTONIC, one clock for every process of the
  // node: a connection's age carries over as it is.
  std::chrono::steady_clock::time_point started;
  std::chrono::system_clock::time_point started_wall;
  std::uint64_t bytes_up = 0;  // moved by userspace before the handover
  std::uint64_t bytes_down = 0;
  KernelPath path_up = KernelPath::sk_skb;
  KernelPath path_down = KernelPath::sk_skb;
  config::Datapath datapath = config::Datapath::sockmap;
  // What the new process does with it (pair_handoff.h); `state` is a
  // kernel-spliced pair's.
  PairKind kind = PairKind::kernel_spliced;
  DecisionBasis basis;  // basis.flow is rebuilt from src and dst
  // A kernel-spliced pair's; a copy or splice pair's cookies and closed
  // directions (its FIN flags); the others' cookies.
  SplicedPairState state;
  // tls_hello, http_first: the bytes read so far (none forwarded).
  std::string pending;
};

// The old process's side: the sockets stay its own until it lets go.
struct ExportedConnection {
  TransferredConnection connection;
  int client_fd = -1;    // borrowed
  int upstream_fd = -1;  // -1: none yet (tls_hello, http_first)
};

// The new process's side: received over SCM_RIGHTS.
struct AdoptedConnection {
  TransferredConnection connection;
  UniqueFd client;
  UniqueFd upstream;  // empty: none yet (tls_hello, http_first)
};

// What a connection's ConnectionInfo contributes (under its lock).
TransferredConnection describe(const ConnectionInfo& info, const SplicedPairState& state);

}  // namespace shunt::proxy

// State shared by every worker thread of one running proxy: the current
// policy snapshot, the connection registry, the sockmap bridge, the access
// log. Everything here is thread-safe.
#pragma once

#include "bpf/sockmap.h"
#include "bpf/sockmap_shortcut.h"
#include "bpf/steering.h"
#include "policy/store.h"
#include "proxy/access_log.h"
#include "proxy/connection_registry.h"
#include "proxy/datapath/bulk_grants.h"
#include "proxy/source_limiter.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

namespace shunt::proxy {

using PolicyStore = policy::Store;

struct ProxyContext {
  PolicyStore policy;
  ConnectionRegistry registry;
  SourceLimiter sources;                       // open connections per client address, taken at accept
  std::unique_ptr<bpf::SockmapBridge> bridge;  // null: sockmap unavailable
  std::unique_ptr<BulkGrants> bulk_grants;     // with the bridge
  // With the bridge when proxy.endpoint_shortcut is on and the kernel passed
  // its probe; null otherwise.
  std::unique_ptr<bpf::EndpointShortcut> shortcut;
  std::unique_ptr<bpf::PodSteering> steering;  // null: no pod has a `dev`
  AccessLog access_log;
  std::atomic<bool> draining{false};
  // Open connections the file-descriptor limit lets the process hold
  // (common/fd_limit.h); the acceptor enforces the smaller of this and
  // limits.max_connections.
  std::atomic<std::uint64_t> fd_connection_cap{UINT64_MAX};
};

}  // namespace shunt::proxy

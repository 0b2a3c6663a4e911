// Re-deciding open connections under a new policy snapshot, from what was
// recorded when they were decided (SPEC.md "Live policy").
#pragma once

#include "policy/policy.h"
#include "proxy/connection_registry.h"

namespace shunt::proxy {

// The verdict `policy` gives an open connection. A connection that was
// handed over at L4 but would now need inspection it never had is denied:
// it cannot be inspected mid-stream, and the client reconnects under the
// new rules.
policy::Decision recheck(const policy::Policy& policy, const ConnectionInfo& info);

// Re-checks every connection and revokes (resets) those no longer allowed.
// Returns how many were revoked.
std::size_t revoke_disallowed(const policy::Policy& policy, ConnectionRegistry& registry);

// Asks every connection that HTTP/2 inspection runs to look at the drain
// flag (and the policy) again now: the drain calls it once the flag is set,
// so each sends its GOAWAY at once, and an idle one needs no timer to
// notice (ConnectionInfo::recheck_streams).
void poke_http2(ConnectionRegistry& registry);

}  // namespace shunt::proxy

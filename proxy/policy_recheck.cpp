#include "proxy/policy_recheck.h"

#include "proxy/metrics.h"

#include <spdlog/spdlog.h>

namespace shunt::proxy {

policy::Decision recheck(const policy::Policy& policy, const ConnectionInfo& info) {
  DecisionBasis basis;
  {
    std::lock_guard lock(info.mu);
    basis = info.basis;
  }
  const policy::ConnectionDecision now = policy.decide_connection(basis.flow);
  switch (now.inspect) {
    case policy::Inspect::none:
      return now.decision;
    case policy::Inspect::http:
      if (basis.requests_uninspected && !now.all_requests_allowed) {
        return {
            policy::Verdict::deny, "reinspection-required",
            "requests after the hand-over were not inspected, and the new policy no longer allows them all"};
      }
      if (basis.last_request) {
        policy::HttpRequest request{basis.last_request->method, basis.last_request->path,
                                    basis.last_request->host, basis.last_request->headers};
        return policy.decide_http(basis.flow, request);
      }
      break;
    case policy::Inspect::tls:
      if (basis.sni) return policy.decide_tls(basis.flow, *basis.sni);
      break;
  }
  if (basis.inspect != policy::Inspect::none) {
    // Still being inspected and nothing seen yet: the inspector decides the
    // first request (or hello) under the new snapshot.
    return {policy::Verdict::allow, "pending-inspection", "no request seen yet; inspection decides it"};
  }
  return {policy::Verdict::deny, "reinspection-required",
          "the new policy inspects this flow, but the connection was admitted without inspection"};
}

namespace {

void poke(ConnectionInfo& info) {
  std::function<void()> streams;
  {
    std::lock_guard lock(info.mu);
    streams = info.recheck_streams;
  }
  if (streams) streams();
}

}  // namespace

void poke_http2(ConnectionRegistry& registry) {
  for (const auto& info : registry.snapshot()) poke(*info);
}

std::size_t revoke_disallowed(const policy::Policy& policy, ConnectionRegistry& registry) {
  std::size_t revoked = 0;
  for (const auto& info : registry.snapshot()) {
    const policy::Decision d = recheck(policy, *info);
    if (d.verdict == policy::Verdict::allow) {
      // The connection stays; its HTTP/2 streams are each decided again.
      poke(*info);
      continue;
    }
    spdlog::info("connection {} {} -> {} no longer allowed ({}: {}); resetting", info->id,
                 config::to_string(info->src), config::to_string(info->dst), d.rule, d.reason);
    // The line the connection ends with names the rule that denies it now
    // (not the one that had allowed it) and says it was revoked.
    {
      std::lock_guard lock(info->mu);
      info->rule = d.rule;
    }
    info->note_end(EndReason::revoked);
    if (info->revoke) info->revoke(EndReason::revoked);
    ++revoked;
  }
  metrics().connections_revoked.fetch_add(revoked, std::memory_order_relaxed);
  return revoked;
}

}  // namespace shunt::proxy

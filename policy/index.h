// Internal to policy/: the compiled rule set behind Policy. Not for the proxy,
// which only sees policy.h.
//
// Layout, chosen for decide_connection() on 10,000+ rules:
//  - Addresses become a fixed 128-bit value plus family (Addr), so masks and
//    hashes are a few integer operations, and IPv4-mapped IPv6 addresses are
//    folded into IPv4 once, on the way in.
//  - Every rule is filed under its destination: (network, prefix length,
//    port) -> rule indices, port 0 meaning "any port". A pod or label
//    selector files one /32 (or /128) entry per selected pod, a CIDR one
//    entry for its network. A lookup masks the destination once per prefix
//    length in use (a handful in practice) and reads two buckets each: exact
//    port and any port. Only those candidates have their source checked.
//  - Candidates may come from several buckets, so "first rule in file order"
//    is the minimum rule index seen, never the visiting order.
#pragma once

#include "policy/policy.h"

#include <re2/re2.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace shunt::policy::detail {

struct Addr {
  std::uint64_t hi = 0;
  std::uint64_t lo = 0;  // IPv4 lives in the low 32 bits
  bool v6 = false;
  friend bool operator==(const Addr&, const Addr&) = default;
  friend bool operator<(const Addr& a, const Addr& b) {
    if (a.v6 != b.v6) return b.v6;
    if (a.hi != b.hi) return a.hi < b.hi;
    return a.lo < b.lo;
  }
};

Addr to_addr(const IpAddress& addr);
unsigned full_prefix(const Addr& a);  // 32 or 128
Addr mask(Addr a, unsigned prefix);   // prefix counted in the address family's bits

// Where a selector points, resolved against `pods` at build time.
struct Endpoints {
  bool is_cidr = false;
  std::vector<Addr> ips;  // sorted pod IPs (pod or labels selector)
  Addr net;               // CIDR
  unsigned prefix = 0;

  [[nodiscard]] bool contains(const Addr& a) const {
    if (is_cidr) return a.v6 == net.v6 && mask(a, prefix) == net;
    return std::binary_search(ips.begin(), ips.end(), a);
  }
};

enum class RuleKind { l4, http, tls };

struct CompiledHttp {
  const config::HttpMatch* spec = nullptr;
  std::unique_ptr<RE2> regex;  // set when spec->path_regex is
};

struct CompiledRule {
  const config::Rule* spec = nullptr;
  RuleKind kind = RuleKind::l4;
  bool deny = false;
  Endpoints from;
  Endpoints to;
  std::vector<CompiledHttp> http;
};

// The request fields as matching needs them, computed once per request.
struct PreparedRequest {
  std::string_view method;
  std::string_view path;  // normalised, without query
  std::string_view host;  // without port, original case
  const HttpRequest* raw = nullptr;
  std::string storage;    // backs `path` when normalisation rewrote it
};
void prepare(const HttpRequest& request, PreparedRequest& out);

// Whether an entry matches; on a miss and when `why` is given, says which
// field failed.
bool http_entry_matches(const CompiledHttp& entry, const PreparedRequest& request,
                        std::string* why);
// Returns the index of the first matching sni pattern, or -1.
int sni_match(const config::TlsMatch& tls, std::string_view sni);

struct BucketKey {
  Addr net;
  unsigned prefix = 0;
  std::uint16_t port = 0;  // 0 = any port
  friend bool operator==(const BucketKey&, const BucketKey&) = default;
};

struct BucketKeyHash {
  std::size_t operator()(const BucketKey& k) const noexcept {
    std::uint64_t h = k.net.hi * 0x9E3779B97F4A7C15ull;
    h ^= (k.net.lo + 0x632BE59BD9B4E019ull) * 0xC2B2AE3D27D4EB4Full;
    h ^= (static_cast<std::uint64_t>(k.prefix) << 17) ^ k.port ^ (k.net.v6 ? 1ull << 40 : 0);
    return static_cast<std::size_t>(h ^ (h >> 29));
  }
};

struct AddrHash {
  std::size_t operator()(const Addr& a) const noexcept {
    return BucketKeyHash{}(BucketKey{a, 0, 0});
  }
};

}  // namespace shunt::policy::detail

namespace shunt::policy {

struct Policy::Index {
  explicit Index(const config::Config& config);

  std::vector<detail::CompiledRule> rules;  // same order as config.policy.rules
  std::unordered_map<detail::BucketKey, std::vector<std::uint32_t>, detail::BucketKeyHash> buckets;
  std::vector<unsigned> v4_prefixes;  // distinct prefix lengths in `buckets`, longest first
  std::vector<unsigned> v6_prefixes;
  std::unordered_map<detail::Addr, std::uint32_t, detail::AddrHash> pod_by_ip;

  // Calls visit(rule_index) for every rule whose from, to and ports match.
  // Each rule is visited at most once.
  template <typename Visit>
  void for_each_match(const detail::Addr& src, const detail::Addr& dst, std::uint16_t port,
                      Visit&& visit) const {
    const auto& prefixes = dst.v6 ? v6_prefixes : v4_prefixes;
    for (const unsigned prefix : prefixes) {
      const detail::Addr net = detail::mask(dst, prefix);
      // Port 0 is never a real destination, and would visit "any" twice.
      const std::uint16_t ports[2] = {std::uint16_t{0}, port};
      for (int k = port == 0 ? 0 : 1; k >= 0; --k) {
        const auto it = buckets.find(detail::BucketKey{net, prefix, ports[k]});
        if (it == buckets.end()) continue;
        for (const std::uint32_t i : it->second) {
          if (rules[i].from.contains(src)) visit(i);
        }
      }
    }
  }
};

}  // namespace shunt::policy

// Internal to policy/: the compiled rule set behind Policy. Not for the proxy,
// which only sees policy.h.
//
// Layout, chosen for decide_connection() on 10,000+ rules:
//  - Addresses become a fixed 128-bit value plus family (Addr), so masks and
//    hashes are a few integer operations, and IPv4-mapped IPv6 addresses are
//    folded into IPv4 once, on the way in.
//  - Every rule is filed under its destination (network, prefix length): a
//    pod or label selector files one /32 (or /128) entry per selected pod, a
//    CIDR one entry for its network. Each destination holds the rules for
//    any port plus a small sorted array of (port, rules). A lookup masks the
//    destination once per prefix length in use (a handful in practice): one
//    hash probe, then a binary search among that destination's ports. Only
//    those candidates have their source checked.
//  - Candidates may come from several destinations (a pod IP and the CIDRs
//    around it), so "first rule in file order" is the minimum rule index
//    seen, never the visiting order.
#pragma once

#include "policy/canonical.h"
#include "policy/policy.h"

#include <re2/re2.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
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
IpAddress from_addr(const Addr& a);   // IPv4 for a folded IPv4-mapped address
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

// An http entry with its host, paths and header values in the canonical
// form requests are matched in (canonical.h), so `host: admin.local.` and
// `Host: admin.local` meet. An entry whose values have no canonical form
// (say a path with %2F while encoded slashes are rejected) can never match
// a request that gets through; `never` says why and the entry matches
// nothing.
struct CompiledHttp {
  const config::HttpMatch* spec = nullptr;
  std::unique_ptr<RE2> regex;  // set when spec->path_regex is
  std::optional<std::string> path;
  std::optional<std::string> path_exact;
  std::optional<std::string> host;
  std::vector<std::pair<std::string, std::string>> headers;  // lower-case name, OWS-trimmed value
  std::string never;                                         // non-empty: matches nothing, and why
  std::vector<std::string> rewritten;                        // "host 'a.' is matched as 'a'", for check
};
CompiledHttp compile_http(const config::HttpMatch& spec, const config::HttpSettings& options);

struct CompiledRule {
  const config::Rule* spec = nullptr;
  RuleKind kind = RuleKind::l4;
  bool deny = false;
  Endpoints from;
  Endpoints to;
  std::vector<CompiledHttp> http;
  // Built once here rather than per decision: formatting strings would
  // otherwise cost more than the matching.
  std::string connection_reason;  // L4: allows/denies; http/tls: why inspection
};

// The request fields as matching needs them, computed once per request.
struct PreparedRequest {
  std::string_view method;
  canonical::Request canonical;  // path and host as matched; error set when the request has no canonical form
  // The canonical path without ";parameters" in its segments, as servlet
  // containers map it (/api;x/admin is /api/admin to Tomcat); empty when the
  // path has none. Deny entries match it too.
  std::string unparameterised;
  const HttpRequest* raw = nullptr;
};
void prepare(const HttpRequest& request, const config::HttpSettings& options, PreparedRequest& out);

// Whether an entry matches; on a miss and when `why` is given, says which
// field failed. `deny` selects how repeated header fields count: any line
// with the value is enough for a deny entry, every line must have it for an
// allow entry (the upstream may read any one of them).
bool http_entry_matches(const CompiledHttp& entry, const PreparedRequest& request, bool deny,
                        std::string* why);
// Returns the index of the first matching sni pattern, or -1.
int sni_match(const config::TlsMatch& tls, std::string_view sni);

struct DstKey {
  Addr net;
  unsigned prefix = 0;
  friend bool operator==(const DstKey&, const DstKey&) = default;
};

inline std::uint64_t mix64(std::uint64_t h) {
  // The 64-bit finaliser of MurmurHash3: every input bit affects every output bit.
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

struct AddrHash {
  std::uint64_t operator()(const Addr& a) const noexcept {
    return mix64(a.hi ^ mix64(a.lo ^ (a.v6 ? 0x8000000000000000ull : 0)));
  }
};

struct DstKeyHash {
  std::uint64_t operator()(const DstKey& k) const noexcept { return mix64(AddrHash{}(k.net) ^ k.prefix); }
};

// A hash map built once and then only read: open addressing with linear
// probing in one array, so a lookup usually touches a single cache line
// where std::unordered_map follows a pointer per node. Half empty at most,
// which keeps probe runs short.
template <typename Key, typename Value, typename Hash>
class FlatMap {
 public:
  void build(const std::vector<std::pair<Key, Value>>& entries) {
    std::size_t capacity = 16;
    while (capacity < entries.size() * 2) capacity *= 2;
    slots_.assign(capacity, Slot{});
    mask_ = capacity - 1;
    for (const auto& [key, value] : entries) {
      std::size_t i = Hash{}(key)&mask_;
      while (slots_[i].used) i = (i + 1) & mask_;
      slots_[i] = Slot{key, value, true};
    }
  }

  [[nodiscard]] const Value* find(const Key& key) const noexcept {
    if (slots_.empty()) return nullptr;
    for (std::size_t i = Hash{}(key)&mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (!s.used) return nullptr;
      if (s.key == key) return &s.value;
    }
  }

 private:
  struct Slot {
    Key key{};
    Value value{};
    bool used = false;
  };
  std::vector<Slot> slots_;
  std::size_t mask_ = 0;
};

// A run of rule indices inside Policy::Index::rule_lists.
struct RuleSpan {
  std::uint32_t offset = 0;
  std::uint32_t count = 0;
};

struct PortRules {
  std::uint16_t port = 0;
  RuleSpan rules;
};

// Everything filed under one destination network.
struct DstRules {
  RuleSpan any_port;
  std::uint32_t ports_offset = 0;  // into Policy::Index::port_rules, sorted by port
  std::uint32_t ports_count = 0;
};

}  // namespace shunt::policy::detail

namespace shunt::policy {

struct Policy::Index {
  explicit Index(const config::Config& config);

  std::vector<detail::CompiledRule> rules;  // same order as config.policy.rules
  detail::FlatMap<detail::DstKey, detail::DstRules, detail::DstKeyHash> destinations;
  std::vector<detail::PortRules> port_rules;
  std::vector<std::uint32_t> rule_lists;  // every RuleSpan's indices, back to back
  std::vector<unsigned> v4_prefixes;      // distinct prefix lengths in `destinations`, longest first
  std::vector<unsigned> v6_prefixes;
  detail::FlatMap<detail::Addr, std::uint32_t, detail::AddrHash> pod_by_ip;
  std::string default_connection_reason;

  // Calls visit(rule_index) for every rule whose from, to and ports match.
  // Each rule is visited at most once.
  template <typename Visit>
  void for_each_match(const detail::Addr& src, const detail::Addr& dst, std::uint16_t port,
                      Visit&& visit) const {
    const auto& prefixes = dst.v6 ? v6_prefixes : v4_prefixes;
    const auto visit_span = [&](const detail::RuleSpan& span) {
      for (std::uint32_t j = span.offset; j < span.offset + span.count; ++j) {
        const std::uint32_t i = rule_lists[j];
        if (rules[i].from.contains(src)) visit(i);
      }
    };
    for (const unsigned prefix : prefixes) {
      const detail::DstRules* d = destinations.find(detail::DstKey{detail::mask(dst, prefix), prefix});
      if (d == nullptr) continue;
      visit_span(d->any_port);
      const auto first = port_rules.begin() + d->ports_offset;
      const auto last = first + d->ports_count;
      const auto it = std::lower_bound(
          first, last, port, [](const detail::PortRules& p, std::uint16_t want) { return p.port < want; });
      if (it != last && it->port == port) visit_span(it->rules);
    }
  }
};

}  // namespace shunt::policy

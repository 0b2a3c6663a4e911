// Shared by the libFuzzer targets in fuzz/ (docs/fuzzing.md): the fixed
// policy they decide against, the split of an input into the reads a
// client's segments would give, and the check that turns a broken property
// into a crash libFuzzer records.
#pragma once

#include "config/config.h"
#include "policy/policy.h"

#include <boost/asio/ip/address.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace shunt::fuzz {

// A property the code under test must keep. Aborting is how a libFuzzer
// target reports something other than a memory or UB error: the input is
// saved as a crash artifact.
#define SHUNT_FUZZ_CHECK(cond, ...)                                                         \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      std::fprintf(stderr, "fuzz check failed: %s (%s:%d)\n  ", #cond, __FILE__, __LINE__); \
      std::fprintf(stderr, __VA_ARGS__);                                                    \
      std::fprintf(stderr, "\n");                                                           \
      std::abort();                                                                         \
    }                                                                                       \
  } while (0)

// The lab of config/examples/lab.yaml, cut down: web (10.200.0.2) calls api
// (10.200.0.3) on 80 (HTTP rules, allow and deny) and on 443 (SNI rules).
// The rules use every kind of HTTP and TLS match, and an allow and a deny
// that overlap, so the matcher's precedence is exercised on every input.
inline constexpr std::string_view kPolicyYaml = R"(
pods:
  - {name: web, ip: 10.200.0.2, labels: {app: web}}
  - {name: api, ip: 10.200.0.3, labels: {app: api}}
policy:
  default: deny
  rules:
    - name: web-to-api
      from: {labels: {app: web}}
      to: {pod: api, ports: [80]}
      action: allow
      http:
        - {method: GET, path: /api/}
        - {method: POST, path_exact: /login, headers: {content-type: application/json}}
        - {method: GET, path_regex: "^/v[0-9]+/items$"}
        - {host: public.local}
    - name: no-admin
      from: {cidr: 10.200.0.0/24}
      to: {pod: api, ports: [80]}
      action: deny
      http:
        - {path: /api/admin}
        - {path_exact: /api/secret}
        - {host: admin.local}
        - {headers: {x-debug: "1"}}
    - name: web-to-api-tls
      from: {pod: web}
      to: {pod: api, ports: [443]}
      action: allow
      tls: {sni: [api.local, "*.api.local"]}
    - name: no-internal-tls
      from: {pod: web}
      to: {pod: api, ports: [443]}
      action: deny
      tls: {sni: [internal.api.local]}
)";

// The same policy under each choice of proxy.http (docs/policy.md): the
// defaults first, then the other escape handlings and upgrade lists.
inline constexpr std::string_view kProxyVariants[] = {
    "proxy: {listeners: [{name: pods, listen: 127.0.0.1:15001, transparent: true}]}\n",
    "proxy:\n  listeners: [{name: pods, listen: 127.0.0.1:15001, transparent: true}]\n"
    "  http: {encoded_slash: keep, invalid_escape: keep, upgrade_protocols: [WebSocket, tls]}\n",
    "proxy:\n  listeners: [{name: pods, listen: 127.0.0.1:15001, transparent: true}]\n"
    "  http: {encoded_slash: decode, upgrade_protocols: []}\n",
};
inline constexpr std::size_t kPolicyVariants = std::size(kProxyVariants);

// Built once per process: a bad fixed policy is a bug in this file, not a
// finding, so it aborts with the diagnostics.
inline const policy::Policy& fixed_policy(std::size_t variant = 0) {
  static const std::vector<std::shared_ptr<const policy::Policy>> policies = [] {
    std::vector<std::shared_ptr<const policy::Policy>> out;
    for (const std::string_view proxy : kProxyVariants) {
      const config::LoadResult r =
          config::parse_config(std::string(proxy) + std::string(kPolicyYaml), "fuzz_common.h");
      for (const auto& d : r.diagnostics) std::fprintf(stderr, "%s\n", d.to_string().c_str());
      if (!r.config) std::abort();
      out.push_back(policy::Policy::build(r.config, 1));
    }
    return out;
  }();
  return *policies.at(variant);
}

inline policy::Flow web_to_api(std::uint16_t port) {
  return policy::Flow{boost::asio::ip::make_address("10.200.0.2"),
                      boost::asio::ip::make_address("10.200.0.3"), port};
}

// Where to cut `data` into the reads a client's TCP segments would give.
// The cuts follow from the bytes themselves (a hash seeds a small PRNG), so
// a crash reproduces from its input alone, and they mix single bytes (every
// parser state split at every byte) with larger pieces.
inline std::uint64_t input_hash(const std::uint8_t* data, std::size_t size) {
  std::uint64_t x = 0xcbf29ce484222325ULL;  // FNV-1a
  for (std::size_t i = 0; i < size; ++i) x = (x ^ data[i]) * 0x100000001b3ULL;
  return x;
}

inline std::vector<std::size_t> read_sizes(const std::uint8_t* data, std::size_t size) {
  std::uint64_t x = input_hash(data, size);
  auto next = [&x] {  // splitmix64
    std::uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  static constexpr std::size_t kPieces[] = {1, 1, 2, 3, 5, 8, 13, 64, 512};
  std::vector<std::size_t> sizes;
  for (std::size_t left = size; left > 0;) {
    const std::size_t n = std::min(left, kPieces[next() % std::size(kPieces)]);
    sizes.push_back(n);
    left -= n;
  }
  return sizes;
}

}  // namespace shunt::fuzz

// The compiled, immutable policy. Built once per config generation from a
// Config and shared by every connection decided under it (connections keep
// their shared_ptr<const Policy> so a reload never changes a decision halfway
// through one; re-checks after a reload use the new snapshot explicitly).
//
// Semantics (SPEC.md): a connection or request is allowed if some `allow` rule
// matches and no `deny` rule does; otherwise policy.default applies. Rules with
// `http` are decided per request, rules with `tls` on the ClientHello SNI,
// rules with neither at connection time (L4).
#pragma once

#include "config/config.h"
#include "policy/canonical.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shunt::policy {

using config::IpAddress;

enum class Verdict { allow, deny };
std::string_view to_string(Verdict);

// What the proxy must do with a new connection before a final verdict exists.
enum class Inspect {
  none,  // verdict is final at L4: hand to the data path (or reset)
  http,  // parse requests; decide each with decide_http()
  tls,   // read the ClientHello; decide with decide_tls()
};
std::string_view to_string(Inspect);

struct Flow {
  IpAddress src;
  IpAddress dst;
  std::uint16_t dst_port = 0;
};

// A request as the proxy read it; decide_http() matches its canonical form
// (canonical.h). The proxy passes the form it already canonicalised (and
// forwards), `shunt explain` whatever the user typed: canonicalising is
// idempotent, so both are matched alike.
struct HttpRequest {
  std::string_view method;
  std::string_view path;  // request-target (origin, absolute, authority or asterisk form), query included
  std::string_view host;  // Host header value, may carry :port; empty when absent
  // Header lookup by lower-case name; returns nullopt when absent.
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
};

struct Decision {
  Verdict verdict = Verdict::deny;
  std::string rule;    // deciding rule name, or "default"
  std::string reason;  // one line for people: why this rule decided
};

struct ConnectionDecision {
  Inspect inspect = Inspect::none;
  // Final when inspect == none. Otherwise provisional: verdict allow (the
  // connection is admitted for inspection) and `rule` names the first HTTP or
  // TLS rule that made inspection necessary.
  Decision decision;
  // True when, for this flow, every HTTP request is allowed whatever it is
  // (no http deny rule applies and an unconstrained allow does), so the
  // connection may be handed to the kernel after the first request head.
  bool all_requests_allowed = false;
  std::string src_pod;  // names from `pods`, empty when the IP is not a pod
  std::string dst_pod;
};

// Why each rule did or did not match, for `shunt explain`.
struct RuleTrace {
  std::string rule;
  bool matched = false;
  std::string why;  // "from: 10.1.2.3 is not in 10.200.0.0/24", ...
};

struct Explanation {
  ConnectionDecision connection;
  // The request as matched (canonical.h), when one was given.
  std::optional<canonical::Request> canonical;
  std::optional<Decision> request;  // when method/path/host or sni was given
  std::vector<RuleTrace> trace;
};

// What `shunt check` says about http entries: values it matches in another
// (canonical) form, and entries that can never match a request.
struct ConfigNote {
  int line = 0;  // the rule's line
  std::string rule;
  std::size_t entry = 0;  // 1-based http entry
  bool never = false;     // false: a rewrite note
  std::string message;
};
std::vector<ConfigNote> lint(const config::Config& config);

// An address prefix; a pod address is a /32 (IPv4) or /128 (IPv6).
struct Prefix {
  IpAddress network;
  unsigned length = 0;
  friend bool operator==(const Prefix&, const Prefix&) = default;
};

// A deny rule decided at L4 (neither http nor tls), its selectors resolved
// exactly as decide_connection() matches them: IPv4-mapped IPv6 folded into
// IPv4, pods by name or labels as their addresses. This is what BPF steering
// may drop before the proxy sees a packet (bpf/steering.cpp): with one
// resolution of selectors, the kernel cannot drop a flow that
// decide_connection() would allow.
struct L4Deny {
  std::string rule;
  std::vector<Prefix> from;          // empty: the selector matches no address
  std::vector<Prefix> to;            // likewise
  std::vector<std::uint16_t> ports;  // empty: any port
};

// How messages name the 1-based entry `index` of a rule's http list:
// "http entry 2", or "grpc entry pkg.Service/Method" for one written in `grpc:`.
std::string entry_label(const config::HttpMatch& entry, std::size_t index);

class Policy {
 public:
  static std::shared_ptr<const Policy> build(std::shared_ptr<const config::Config> config,
                                             std::uint64_t generation);
  ~Policy();
  Policy(const Policy&) = delete;
  Policy& operator=(const Policy&) = delete;

  [[nodiscard]] ConnectionDecision decide_connection(const Flow& flow) const;
  [[nodiscard]] Decision decide_http(const Flow& flow, const HttpRequest& request) const;
  [[nodiscard]] Decision decide_tls(const Flow& flow, std::string_view sni) const;

  // For `shunt explain`: sni and request are optional.
  [[nodiscard]] Explanation explain(const Flow& flow, const HttpRequest* request,
                                    std::optional<std::string_view> sni) const;

  [[nodiscard]] const config::Config& config() const { return *config_; }
  [[nodiscard]] std::shared_ptr<const config::Config> config_ptr() const { return config_; }
  [[nodiscard]] std::uint64_t generation() const { return generation_; }
  // The L4 deny rules in file order (see L4Deny).
  [[nodiscard]] std::vector<L4Deny> l4_denies() const;
  // Pod name for an address, empty when none.
  [[nodiscard]] std::string_view pod_name(const IpAddress& addr) const;

  struct Index;  // rule index, defined in policy.cpp

 private:
  Policy(std::shared_ptr<const config::Config> config, std::uint64_t generation);

  std::shared_ptr<const config::Config> config_;
  std::uint64_t generation_;
  std::unique_ptr<Index> index_;
};

}  // namespace shunt::policy

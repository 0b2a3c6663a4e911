// Policy: compiling a Config into the index of index.h and deciding
// connections, HTTP requests and TLS SNIs against it. Decisions run on the
// data path: they never throw and allocate only for the returned strings.
#include "policy/policy.h"

#include "policy/index.h"

#include <map>
#include <set>
#include <unordered_map>

namespace shunt::policy {

std::string_view to_string(Verdict v) { return v == Verdict::allow ? "allow" : "deny"; }

std::string_view to_string(Inspect i) {
  switch (i) {
    case Inspect::none:
      return "none";
    case Inspect::http:
      return "http";
    case Inspect::tls:
      return "tls";
  }
  return "?";
}

namespace detail {

Addr to_addr(const IpAddress& raw) {
  Addr a;
  if (raw.is_v4()) {
    a.lo = raw.to_v4().to_uint();
    return a;
  }
  const auto v6 = raw.to_v6();
  if (v6.is_v4_mapped()) {
    // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; rules
    // written in IPv4 must still see them.
    a.lo = boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, v6).to_uint();
    return a;
  }
  const auto bytes = v6.to_bytes();
  for (int i = 0; i < 8; ++i) a.hi = (a.hi << 8) | bytes[static_cast<std::size_t>(i)];
  for (int i = 8; i < 16; ++i) a.lo = (a.lo << 8) | bytes[static_cast<std::size_t>(i)];
  a.v6 = true;
  return a;
}

IpAddress from_addr(const Addr& a) {
  if (!a.v6) return boost::asio::ip::address_v4(static_cast<std::uint32_t>(a.lo));
  boost::asio::ip::address_v6::bytes_type bytes{};
  for (int i = 0; i < 8; ++i) {
    bytes[static_cast<std::size_t>(i)] = static_cast<unsigned char>(a.hi >> (56 - 8 * i));
    bytes[static_cast<std::size_t>(i + 8)] = static_cast<unsigned char>(a.lo >> (56 - 8 * i));
  }
  return boost::asio::ip::address_v6(bytes);
}

unsigned full_prefix(const Addr& a) { return a.v6 ? 128 : 32; }

Addr mask(Addr a, unsigned prefix) {
  if (!a.v6) {
    a.lo &= prefix == 0 ? 0 : (0xffffffffull << (32 - prefix)) & 0xffffffffull;
    return a;
  }
  if (prefix == 0) {
    a.hi = a.lo = 0;
  } else if (prefix <= 64) {
    a.hi &= ~std::uint64_t{0} << (64 - prefix);
    a.lo = 0;
  } else if (prefix < 128) {
    a.lo &= ~std::uint64_t{0} << (128 - prefix);
  }
  return a;
}

namespace {

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i];
    char y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

// Where upstreams commonly serve two spellings as one resource, a deny
// entry covers both and an allow entry only the one written (deny wins, so
// the generous reading is the safe one on the deny side only):
// `path_exact: /api/secret` denies /api/secret/ too (and so /api/secret/.
// after dot-segments), `path: /api/admin/` denies /api/admin itself.
std::string_view without_trailing_slash(std::string_view p) {
  if (p.size() > 1 && p.back() == '/') p.remove_suffix(1);
  return p;
}

bool prefix_matches(std::string_view path, std::string_view prefix, bool deny) {
  return path.substr(0, prefix.size()) == prefix || (deny && path == without_trailing_slash(prefix));
}

bool exact_matches(std::string_view path, std::string_view exact, bool deny) {
  return path == exact || (deny && without_trailing_slash(path) == without_trailing_slash(exact));
}

// Header names compare case-insensitively and with '_' equal to '-': CGI,
// WSGI and Rack present X-Role and X_Role as one variable (HTTP_X_ROLE).
bool same_header_name(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i] == '_' ? '-' : a[i];
    char y = b[i] == '_' ? '-' : b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

// For a deny entry, a line matches when its value, or one element of it
// read as a comma-separated list, is the entry's value: applications split
// lists. For an allow entry only the whole value counts.
bool value_matches(std::string_view have, std::string_view want, bool deny) {
  have = canonical::trim_ows(have);
  if (have == want) return true;
  if (!deny) return false;
  while (!have.empty()) {
    const auto comma = std::min(have.find(','), have.size());
    if (canonical::trim_ows(have.substr(0, comma)) == want) return true;
    have.remove_prefix(std::min(comma + 1, have.size()));
  }
  return false;
}

// Repeated fields: any line with the value makes a deny entry match, every
// line must have it for an allow entry (the upstream may read any of them).
bool header_matches(const HttpRequest& request, std::string_view name, std::string_view value, bool deny) {
  bool seen = false;
  for (const auto& [have_name, have_value] : request.headers) {
    if (!same_header_name(have_name, name)) continue;
    const bool same = value_matches(have_value, value, deny);
    if (deny && same) return true;
    if (!deny && !same) return false;
    seen = true;
  }
  return seen && !deny;
}

}  // namespace

CompiledHttp compile_http(const config::HttpMatch& spec, const config::HttpSettings& options) {
  CompiledHttp out;
  out.spec = &spec;
  if (spec.path_regex) {
    RE2::Options re_options;
    re_options.set_log_errors(false);
    out.regex = std::make_unique<RE2>(*spec.path_regex, re_options);
  }
  const auto never = [&](std::string why) {
    if (out.never.empty()) out.never = std::move(why);
  };
  const auto path = [&](const std::optional<std::string>& raw,
                        std::string_view key) -> std::optional<std::string> {
    if (!raw) return std::nullopt;
    canonical::Path p = canonical::path(*raw, options);
    if (!p.error.empty()) {
      never(std::string(key) + " '" + *raw + "' has no canonical form (" + std::string(p.error) +
            "), and requests that do are refused");
      return std::nullopt;
    }
    if (p.value != *raw) {
      out.rewritten.push_back(std::string(key) + " '" + *raw + "' is matched as '" + p.value + "'");
    }
    return std::move(p.value);
  };
  out.path = path(spec.path, "path");
  out.path_exact = path(spec.path_exact, "path_exact");
  if (spec.method && *spec.method == "CONNECT" && (spec.path || spec.path_exact || spec.path_regex)) {
    never("a CONNECT request has no path, so an entry with method CONNECT and a path never matches");
  }
  if (spec.host) {
    const canonical::Host h = canonical::host(*spec.host);
    if (!h.error.empty()) {
      never("host '" + *spec.host + "' is not a valid host name (" + std::string(h.error) +
            "), and requests naming one are refused");
    } else {
      if (h.name != *spec.host)
        out.rewritten.push_back("host '" + *spec.host + "' is matched as '" + h.name + "'");
      out.host = h.name;
    }
  }
  for (const auto& [name, value] : spec.headers) {
    if (name == "host") {
      // Header values are compared as sent (trimmed), so this would miss
      // ADMIN.local, admin.local. and an absolute-form target.
      out.rewritten.push_back("header host is compared as sent; use 'host:' to match the canonical host");
    }
    const std::string_view trimmed = canonical::trim_ows(value);
    if (trimmed.size() != value.size()) {
      out.rewritten.push_back("header " + name + " value '" + value + "' is matched as '" +
                              std::string(trimmed) + "'");
    }
    const bool control = std::any_of(trimmed.begin(), trimmed.end(), [](char c) {
      const auto u = static_cast<unsigned char>(c);
      return (u < 0x20 && c != '\t') || u == 0x7f;
    });
    if (control)
      never("header " + name + " value has a control character, and requests with one are refused");
    out.headers.emplace_back(name, std::string(trimmed));
  }
  return out;
}

void prepare(const HttpRequest& request, const config::HttpSettings& options, PreparedRequest& out) {
  out.raw = &request;
  out.method = request.method;
  std::optional<std::string_view> host;
  if (!request.host.empty()) host = canonical::trim_ows(request.host);
  out.canonical = canonical::request(request.method, request.path, host, options);
  out.unparameterised.clear();
  const std::string& path = out.canonical.path;
  if (path.find(';') == std::string::npos) return;
  for (std::size_t i = 0; i < path.size();) {
    if (path[i] == ';') {
      i = std::min(path.find('/', i), path.size());  // the parameters end with the segment
    } else if (path[i] == '/' && !out.unparameterised.empty() && out.unparameterised.back() == '/') {
      ++i;  // "/api/;x/admin" leaves an empty segment
    } else {
      out.unparameterised += path[i++];
    }
  }
}

bool http_entry_matches(const CompiledHttp& entry, const PreparedRequest& request, bool deny,
                        std::string* why) {
  const config::HttpMatch& m = *entry.spec;
  const auto miss = [&](auto&&... parts) {
    if (why != nullptr) {
      why->clear();
      ((*why += parts), ...);
    }
    return false;
  };
  if (!entry.never.empty()) return miss("never matches: ", entry.never);
  if (!request.canonical.error.empty()) return miss("the request is malformed: ", request.canonical.error);
  const std::string& path = request.canonical.path;
  const std::string& host = request.canonical.host;
  // HEAD is GET without the body (RFC 9110 §9.3.2): a deny on GET covers it.
  const bool head_as_get = deny && m.method && *m.method == "GET" && request.method == "HEAD";
  if (m.method && request.method != *m.method && !head_as_get) {
    return miss("method ", request.method, " is not ", *m.method);
  }
  // A tunnel escapes inspection for good: only an entry naming the method
  // lets one through.
  if (!deny && !m.method && request.method == "CONNECT") {
    return miss("CONNECT is allowed only by an entry with method: CONNECT");
  }
  // A deny entry also sees the path as a servlet container maps it.
  const auto either = [&](auto&& matches) {
    return matches(path) || (deny && !request.unparameterised.empty() && matches(request.unparameterised));
  };
  if (entry.path && !either([&](const std::string& p) { return prefix_matches(p, *entry.path, deny); })) {
    return miss("path ", path, " does not start with ", *entry.path);
  }
  if (entry.path_exact &&
      !either([&](const std::string& p) { return exact_matches(p, *entry.path_exact, deny); })) {
    return miss("path ", path, " is not ", *entry.path_exact);
  }
  if (m.path_regex) {
    // An uncompilable pattern (only possible in a Config built by hand,
    // since the loader checks them) matches nothing rather than everything.
    const bool ok = entry.regex && entry.regex->ok() && either([&](const std::string& p) {
                      return RE2::PartialMatch(re2::StringPiece(p.data(), p.size()), *entry.regex);
                    });
    if (!ok) return miss("path ", path, " does not match /", *m.path_regex, "/");
  }
  if (entry.host && host != *entry.host) {
    return miss("host '", host, "' is not ", *entry.host);
  }
  for (const auto& [name, value] : entry.headers) {
    if (!header_matches(*request.raw, name, value, deny)) {
      return miss("header ", name, " is not '", value, "'");
    }
  }
  return true;
}

int sni_match(const config::TlsMatch& tls, std::string_view sni) {
  if (!sni.empty() && sni.back() == '.') sni.remove_suffix(1);
  if (sni.empty()) return -1;
  for (std::size_t i = 0; i < tls.sni.size(); ++i) {
    const std::string& pattern = tls.sni[i];
    if (pattern.size() > 2 && pattern[0] == '*' && pattern[1] == '.') {
      // "*.example.com" covers a.example.com and a.b.example.com, never
      // example.com itself: the suffix must be preceded by a label.
      const std::string_view suffix = std::string_view(pattern).substr(1);  // ".example.com"
      if (sni.size() > suffix.size() && iequals(sni.substr(sni.size() - suffix.size()), suffix)) {
        return static_cast<int>(i);
      }
    } else if (iequals(sni, pattern)) {
      return static_cast<int>(i);
    }
  }
  return -1;
}

}  // namespace detail

using detail::Addr;
using detail::CompiledRule;
using detail::RuleKind;

namespace {

constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

void keep_first(std::uint32_t& slot, std::uint32_t index) {
  if (index < slot) slot = index;
}

}  // namespace

Policy::Index::Index(const config::Config& config) {
  {
    std::map<Addr, std::uint32_t> pods;
    for (std::uint32_t i = 0; i < config.pods.size(); ++i) {
      for (const auto& ip : config.pods[i].addresses())
        pods.emplace(detail::to_addr(ip), i);  // first pod wins
    }
    pod_by_ip.build({pods.begin(), pods.end()});
  }
  // Pods by (label, value), so a label selector costs its rarest label, not
  // a scan of every pod, when thousands of rules use labels.
  std::map<std::pair<std::string, std::string>, std::vector<std::uint32_t>> pods_by_label;
  std::unordered_map<std::string_view, std::uint32_t> pods_by_name;
  for (std::uint32_t i = 0; i < config.pods.size(); ++i) {
    for (const auto& label : config.pods[i].labels) pods_by_label[label].push_back(i);
    pods_by_name.emplace(config.pods[i].name, i);
  }

  const auto resolve = [&](const config::Selector& s) {
    detail::Endpoints e;
    if (s.cidr) {
      e.is_cidr = true;
      e.net = detail::to_addr(s.cidr->network);
      // An IPv4-mapped IPv6 CIDR is folded into IPv4 like addresses are.
      e.prefix = s.cidr->prefix;
      if (s.cidr->network.is_v6() && !e.net.v6) e.prefix = e.prefix >= 96 ? e.prefix - 96 : 0;
      e.net = detail::mask(e.net, e.prefix);
      return e;
    }
    if (s.pod) {
      // An unknown name (possible only in a hand-built Config) selects nothing.
      if (const auto it = pods_by_name.find(*s.pod); it != pods_by_name.end()) {
        for (const auto& ip : config.pods[it->second].addresses()) e.ips.push_back(detail::to_addr(ip));
      }
    } else if (!s.labels.empty()) {
      const std::vector<std::uint32_t>* rarest = nullptr;
      for (const auto& label : s.labels) {
        const auto it = pods_by_label.find(label);
        if (it == pods_by_label.end()) return e;  // no pod has this label
        if (rarest == nullptr || it->second.size() < rarest->size()) rarest = &it->second;
      }
      for (const std::uint32_t p : *rarest) {
        const auto& labels = config.pods[p].labels;
        const bool all = std::all_of(s.labels.begin(), s.labels.end(), [&](const auto& want) {
          const auto have = labels.find(want.first);
          return have != labels.end() && have->second == want.second;
        });
        if (all)
          for (const auto& ip : config.pods[p].addresses()) e.ips.push_back(detail::to_addr(ip));
      }
    }
    std::sort(e.ips.begin(), e.ips.end());
    e.ips.erase(std::unique(e.ips.begin(), e.ips.end()), e.ips.end());
    return e;
  };

  std::set<unsigned> v4;
  std::set<unsigned> v6;
  // Per destination: rules for any port, and rules per port (ordered, so
  // the flattened port arrays come out sorted for binary search).
  struct Staged {
    std::vector<std::uint32_t> any_port;
    std::map<std::uint16_t, std::vector<std::uint32_t>> by_port;
  };
  std::unordered_map<detail::DstKey, Staged, detail::DstKeyHash> staging;
  rules.reserve(config.policy.rules.size());
  for (std::uint32_t i = 0; i < config.policy.rules.size(); ++i) {
    const config::Rule& spec = config.policy.rules[i];
    CompiledRule rule;
    rule.spec = &spec;
    rule.deny = spec.action == config::Action::deny;
    rule.kind = !spec.http.empty() ? RuleKind::http : spec.tls ? RuleKind::tls : RuleKind::l4;
    rule.from = resolve(spec.from);
    rule.to = resolve(spec.to);
    const std::string quoted = "rule '" + spec.name + "'";
    switch (rule.kind) {
      case RuleKind::l4:
        rule.connection_reason =
            quoted + (rule.deny ? " denies this connection (deny wins)" : " allows this connection");
        break;
      case RuleKind::http:
        rule.connection_reason = quoted + " has http entries: each request is decided";
        break;
      case RuleKind::tls:
        rule.connection_reason = quoted + " has tls sni: decided on the ClientHello";
        break;
    }
    for (const auto& m : spec.http) rule.http.push_back(detail::compile_http(m, config.proxy.http));

    const auto file = [&](const Addr& net, unsigned prefix) {
      (net.v6 ? v6 : v4).insert(prefix);
      if (spec.to.ports.empty()) {
        staging[{net, prefix}].any_port.push_back(i);
        return;
      }
      for (const std::uint16_t port : spec.to.ports) {
        if (port != 0) staging[{net, prefix}].by_port[port].push_back(i);
      }
    };
    if (rule.to.is_cidr) {
      file(rule.to.net, rule.to.prefix);
    } else {
      for (const Addr& ip : rule.to.ips) file(ip, detail::full_prefix(ip));
    }
    rules.push_back(std::move(rule));
  }
  // Longest first is not needed for correctness (every match is visited),
  // but a stable order keeps the visit order reproducible.
  const auto flatten = [&](const std::vector<std::uint32_t>& list) {
    const detail::RuleSpan span{static_cast<std::uint32_t>(rule_lists.size()),
                                static_cast<std::uint32_t>(list.size())};
    rule_lists.insert(rule_lists.end(), list.begin(), list.end());
    return span;
  };
  std::vector<std::pair<detail::DstKey, detail::DstRules>> entries;
  for (const auto& [key, staged] : staging) {
    detail::DstRules d;
    d.any_port = flatten(staged.any_port);
    d.ports_offset = static_cast<std::uint32_t>(port_rules.size());
    d.ports_count = static_cast<std::uint32_t>(staged.by_port.size());
    for (const auto& [port, list] : staged.by_port) port_rules.push_back({port, flatten(list)});
    entries.emplace_back(key, d);
  }
  destinations.build(entries);

  const bool allow = config.policy.default_action == config::DefaultAction::allow;
  default_connection_reason = allow ? "no rule denies this connection, so policy.default (allow) applies"
                                    : "no rule allows this connection, so policy.default (deny) applies";
  v4_prefixes.assign(v4.rbegin(), v4.rend());
  v6_prefixes.assign(v6.rbegin(), v6.rend());
}

Policy::Policy(std::shared_ptr<const config::Config> config, std::uint64_t generation)
    : config_(config ? std::move(config) : std::make_shared<const config::Config>()),
      generation_(generation),
      index_(std::make_unique<Index>(*config_)) {}

Policy::~Policy() = default;

std::shared_ptr<const Policy> Policy::build(std::shared_ptr<const config::Config> config,
                                            std::uint64_t generation) {
  return std::shared_ptr<const Policy>(new Policy(std::move(config), generation));
}

std::vector<L4Deny> Policy::l4_denies() const {
  const auto prefixes = [](const detail::Endpoints& e) {
    std::vector<Prefix> out;
    if (e.is_cidr) {
      out.push_back({detail::from_addr(e.net), e.prefix});
    } else {
      for (const Addr& ip : e.ips) out.push_back({detail::from_addr(ip), detail::full_prefix(ip)});
    }
    return out;
  };
  std::vector<L4Deny> out;
  for (const CompiledRule& r : index_->rules) {
    if (r.kind != RuleKind::l4 || !r.deny) continue;
    // Port 0 is never filed (see Index::Index): a list of only zeros would
    // match nothing, not every port.
    std::vector<std::uint16_t> ports;
    for (const std::uint16_t p : r.spec->to.ports)
      if (p != 0) ports.push_back(p);
    if (!r.spec->to.ports.empty() && ports.empty()) continue;
    out.push_back({r.spec->name, prefixes(r.from), prefixes(r.to), std::move(ports)});
  }
  return out;
}

std::string_view Policy::pod_name(const IpAddress& addr) const {
  const std::uint32_t* pod = index_->pod_by_ip.find(detail::to_addr(addr));
  if (pod == nullptr) return {};
  return config_->pods[*pod].name;
}

namespace {

Decision decided(Verdict verdict, std::string rule, std::string reason) {
  return Decision{verdict, std::move(rule), std::move(reason)};
}

Decision by_default(const config::Config& config, std::string_view what) {
  const bool allow = config.policy.default_action == config::DefaultAction::allow;
  return decided(allow ? Verdict::allow : Verdict::deny, "default",
                 "no rule " + std::string(allow ? "denies" : "allows") + " " + std::string(what) +
                     ", so policy.default (" + (allow ? "allow" : "deny") + ") applies");
}

}  // namespace

ConnectionDecision Policy::decide_connection(const Flow& flow) const {
  ConnectionDecision out;
  try {
    const Addr src = detail::to_addr(flow.src);
    const Addr dst = detail::to_addr(flow.dst);
    out.src_pod = pod_name(flow.src);
    out.dst_pod = pod_name(flow.dst);

    std::uint32_t l4_deny = kNone;
    std::uint32_t l4_allow = kNone;
    std::uint32_t http = kNone;
    std::uint32_t tls = kNone;
    bool http_deny = false;
    index_->for_each_match(src, dst, flow.dst_port, [&](std::uint32_t i) {
      const CompiledRule& r = index_->rules[i];
      switch (r.kind) {
        case RuleKind::l4:
          keep_first(r.deny ? l4_deny : l4_allow, i);
          break;
        case RuleKind::http:
          keep_first(http, i);
          http_deny = http_deny || r.deny;
          break;
        case RuleKind::tls:
          keep_first(tls, i);
          break;
      }
    });

    const auto by_rule = [&](Verdict verdict, std::uint32_t i) {
      const CompiledRule& r = index_->rules[i];
      out.decision = Decision{verdict, r.spec->name, r.connection_reason};
    };
    if (l4_deny != kNone) {
      by_rule(Verdict::deny, l4_deny);
    } else if (http != kNone) {
      out.inspect = Inspect::http;
      out.all_requests_allowed = !http_deny && l4_allow != kNone;
      by_rule(Verdict::allow, http);
      if (out.all_requests_allowed) {
        out.decision.reason +=
            ", but rule '" + index_->rules[l4_allow].spec->name + "' allows every request on this connection";
      }
    } else if (tls != kNone) {
      out.inspect = Inspect::tls;
      by_rule(Verdict::allow, tls);
    } else if (l4_allow != kNone) {
      by_rule(Verdict::allow, l4_allow);
    } else {
      const bool allow = config_->policy.default_action == config::DefaultAction::allow;
      out.decision =
          Decision{allow ? Verdict::allow : Verdict::deny, "default", index_->default_connection_reason};
    }
  } catch (...) {
    // Only allocation can fail here; fail closed rather than unwind into
    // the proxy's accept loop.
    out = ConnectionDecision{};
    out.decision.rule = "default";
    out.decision.reason = "internal error while deciding";
  }
  return out;
}

Decision Policy::decide_http(const Flow& flow, const HttpRequest& request) const {
  try {
    detail::PreparedRequest req;
    detail::prepare(request, config_->proxy.http, req);
    if (!req.canonical.error.empty()) {
      // The proxy refuses these with a 400 before deciding; explain and a
      // re-check get a deny that says why.
      return decided(Verdict::deny, "default",
                     "the request is malformed: " + std::string(req.canonical.error));
    }
    // A tunnel leaves inspection for good: an L4 allow does not cover it.
    const bool connect = request.method == "CONNECT";
    // For people: the canonical path (the CONNECT authority for a tunnel).
    const std::string& shown = req.canonical.path.empty() ? req.canonical.target : req.canonical.path;
    const Addr src = detail::to_addr(flow.src);
    const Addr dst = detail::to_addr(flow.dst);

    std::uint32_t deny = kNone;
    std::uint32_t allow = kNone;
    std::size_t deny_entry = 0;  // 1-based; 0 = the rule is L4
    std::size_t allow_entry = 0;
    index_->for_each_match(src, dst, flow.dst_port, [&](std::uint32_t i) {
      const CompiledRule& r = index_->rules[i];
      std::uint32_t& slot = r.deny ? deny : allow;
      std::size_t& entry = r.deny ? deny_entry : allow_entry;
      if (r.kind == RuleKind::l4) {
        if (i < slot && (r.deny || !connect)) {
          slot = i;
          entry = 0;
        }
      } else if (r.kind == RuleKind::http && i < slot) {
        for (std::size_t e = 0; e < r.http.size(); ++e) {
          if (detail::http_entry_matches(r.http[e], req, r.deny, nullptr)) {
            slot = i;
            entry = e + 1;
            break;
          }
        }
      }
    });

    const auto explain = [&](std::uint32_t i, std::size_t entry, std::string_view verb) {
      const std::string& name = index_->rules[i].spec->name;
      std::string reason = "rule '" + name + "' " + std::string(verb) + " ";
      reason += entry == 0 ? std::string("every request on this connection (L4 rule)")
                           : std::string(req.method) + " " + shown + " (" +
                                 entry_label(index_->rules[i].spec->http[entry - 1], entry) + " matches)";
      return reason;
    };
    if (deny != kNone) {
      return decided(Verdict::deny, index_->rules[deny].spec->name, explain(deny, deny_entry, "denies"));
    }
    if (allow != kNone) {
      return decided(Verdict::allow, index_->rules[allow].spec->name, explain(allow, allow_entry, "allows"));
    }
    return by_default(*config_, std::string(req.method) + " " + shown);
  } catch (...) {
    return decided(Verdict::deny, "default", "internal error while deciding");
  }
}

Decision Policy::decide_tls(const Flow& flow, std::string_view sni) const {
  try {
    const Addr src = detail::to_addr(flow.src);
    const Addr dst = detail::to_addr(flow.dst);
    std::uint32_t deny = kNone;
    std::uint32_t allow = kNone;
    int deny_pattern = -1;  // -1 = the rule is L4
    int allow_pattern = -1;
    index_->for_each_match(src, dst, flow.dst_port, [&](std::uint32_t i) {
      const CompiledRule& r = index_->rules[i];
      std::uint32_t& slot = r.deny ? deny : allow;
      int& pattern = r.deny ? deny_pattern : allow_pattern;
      if (i >= slot) return;
      if (r.kind == RuleKind::l4) {
        slot = i;
        pattern = -1;
      } else if (r.kind == RuleKind::tls) {
        if (const int p = detail::sni_match(*r.spec->tls, sni); p >= 0) {
          slot = i;
          pattern = p;
        }
      }
    });

    const std::string shown = sni.empty() ? std::string("(no SNI)") : "'" + std::string(sni) + "'";
    const auto explain = [&](std::uint32_t i, int pattern, std::string_view verb) {
      const CompiledRule& r = index_->rules[i];
      if (pattern < 0) {
        return "rule '" + r.spec->name + "' " + std::string(verb) +
               " this connection whatever its SNI (L4 rule)";
      }
      return "rule '" + r.spec->name + "' " + std::string(verb) + " sni " + shown + " (matches " +
             r.spec->tls->sni[static_cast<std::size_t>(pattern)] + ")";
    };
    if (deny != kNone) {
      return decided(Verdict::deny, index_->rules[deny].spec->name, explain(deny, deny_pattern, "denies"));
    }
    if (allow != kNone) {
      return decided(Verdict::allow, index_->rules[allow].spec->name,
                     explain(allow, allow_pattern, "allows"));
    }
    return by_default(*config_, "sni " + shown);
  } catch (...) {
    return decided(Verdict::deny, "default", "internal error while deciding");
  }
}

std::vector<ConfigNote> lint(const config::Config& config) {
  std::vector<ConfigNote> out;
  for (const config::Rule& rule : config.policy.rules) {
    for (std::size_t e = 0; e < rule.http.size(); ++e) {
      const detail::CompiledHttp c = detail::compile_http(rule.http[e], config.proxy.http);
      for (const auto& note : c.rewritten) out.push_back({rule.line, rule.name, e + 1, false, note});
      if (!c.never.empty()) out.push_back({rule.line, rule.name, e + 1, true, c.never});
    }
  }
  return out;
}

std::string entry_label(const config::HttpMatch& entry, std::size_t index) {
  return entry.grpc ? "grpc entry " + *entry.grpc : "http entry " + std::to_string(index);
}

}  // namespace shunt::policy

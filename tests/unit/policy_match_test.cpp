// Matching semantics (SPEC.md "Config"): identities, ports, deny over allow,
// policy.default, inspection kinds, HTTP fields and SNI wildcards.
#include "policy/policy.h"

#include <gtest/gtest.h>

namespace shunt::policy {
namespace {

using boost::asio::ip::make_address;

constexpr const char* kPods = R"(
proxy: {listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]}
pods:
  - {name: web, ip: 10.200.0.2, labels: {app: web, tier: front}}
  - {name: web2, ip: 10.200.0.4, labels: {app: web, tier: canary}}
  - {name: api, ip: 10.200.0.3, labels: {app: api}}
  - {name: api6, ip: "fd00::3", labels: {app: api}}
  - {name: web6, ip: "fd00::2", labels: {app: web}}
)";

std::shared_ptr<const Policy> make(const std::string& policy) {
  const auto r = config::parse_config(std::string(kPods) + policy, "t.yaml");
  for (const auto& d : r.diagnostics) ADD_FAILURE() << d.to_string();
  return r.config ? Policy::build(r.config, 1) : nullptr;
}

Flow flow(const char* src, const char* dst, std::uint16_t port) {
  return Flow{make_address(src), make_address(dst), port};
}

HttpRequest get(std::string_view path, std::string_view host = "api.local", std::string_view method = "GET") {
  HttpRequest r;
  r.method = method;
  r.path = path;
  r.host = host;
  return r;
}

TEST(PolicyMatch, EmptyPolicyAppliesDefault) {
  auto p = make("policy: {default: deny}\n");
  auto d = p->decide_connection(flow("10.200.0.2", "10.200.0.3", 80));
  EXPECT_EQ(d.inspect, Inspect::none);
  EXPECT_EQ(d.decision.verdict, Verdict::deny);
  EXPECT_EQ(d.decision.rule, "default");
  EXPECT_EQ(d.decision.reason, "no rule allows this connection, so policy.default (deny) applies");

  p = make("policy: {default: allow}\n");
  d = p->decide_connection(flow("10.200.0.2", "10.200.0.3", 80));
  EXPECT_EQ(d.decision.verdict, Verdict::allow);
  EXPECT_EQ(d.decision.rule, "default");
}

TEST(PolicyMatch, AllowByLabelsPodAndPorts) {
  auto p = make(R"(
policy:
  rules:
    - {name: web-to-api, from: {labels: {app: web}}, to: {pod: api, ports: [8080, 9090]}, action: allow}
)");
  const auto allowed = p->decide_connection(flow("10.200.0.2", "10.200.0.3", 8080));
  EXPECT_EQ(allowed.inspect, Inspect::none);
  EXPECT_EQ(allowed.decision.verdict, Verdict::allow);
  EXPECT_EQ(allowed.decision.rule, "web-to-api");
  EXPECT_EQ(allowed.src_pod, "web");
  EXPECT_EQ(allowed.dst_pod, "api");
  EXPECT_EQ(p->decide_connection(flow("10.200.0.4", "10.200.0.3", 9090)).decision.verdict, Verdict::allow);
  // wrong port, wrong destination, wrong source, not a pod at all
  EXPECT_EQ(p->decide_connection(flow("10.200.0.2", "10.200.0.3", 8081)).decision.rule, "default");
  EXPECT_EQ(p->decide_connection(flow("10.200.0.2", "10.200.0.4", 8080)).decision.rule, "default");
  EXPECT_EQ(p->decide_connection(flow("10.200.0.3", "10.200.0.3", 8080)).decision.rule, "default");
  const auto stranger = p->decide_connection(flow("10.9.9.9", "10.200.0.3", 8080));
  EXPECT_EQ(stranger.decision.rule, "default");
  EXPECT_EQ(stranger.src_pod, "");
}

TEST(PolicyMatch, AllGivenLabelsMustMatch) {
  auto p = make(R"(
policy:
  rules:
    - {name: canary, from: {labels: {app: web, tier: canary}}, to: {pod: api}, action: allow}
)");
  EXPECT_EQ(p->decide_connection(flow("10.200.0.4", "10.200.0.3", 1)).decision.verdict, Verdict::allow);
  EXPECT_EQ(p->decide_connection(flow("10.200.0.2", "10.200.0.3", 1)).decision.verdict, Verdict::deny);
}

TEST(PolicyMatch, NoPortsMeansAnyPort) {
  auto p = make(R"(
policy:
  rules:
    - {name: any, from: {pod: web}, to: {labels: {app: api}}, action: allow}
)");
  for (std::uint16_t port : {1, 80, 65535}) {
    EXPECT_EQ(p->decide_connection(flow("10.200.0.2", "10.200.0.3", port)).decision.rule, "any");
  }
  EXPECT_EQ(p->decide_connection(flow("10.200.0.2", "fd00::3", 443)).decision.rule, "any");
}

TEST(PolicyMatch, CidrIpv4AndIpv6) {
  auto p = make(R"(
policy:
  rules:
    - {name: v4, from: {cidr: 10.0.0.0/8}, to: {cidr: 192.168.1.0/24, ports: [53]}, action: allow}
    - {name: v6, from: {cidr: "fd00::/16"}, to: {cidr: "2001:db8::/32"}, action: allow}
    - {name: host, from: {cidr: 0.0.0.0/0}, to: {cidr: 203.0.113.7/32}, action: allow}
)");
  EXPECT_EQ(p->decide_connection(flow("10.1.2.3", "192.168.1.9", 53)).decision.rule, "v4");
  EXPECT_EQ(p->decide_connection(flow("11.1.2.3", "192.168.1.9", 53)).decision.rule, "default");
  EXPECT_EQ(p->decide_connection(flow("10.1.2.3", "192.168.2.9", 53)).decision.rule, "default");
  EXPECT_EQ(p->decide_connection(flow("fd00:1::5", "2001:db8:1::1", 443)).decision.rule, "v6");
  EXPECT_EQ(p->decide_connection(flow("fd01::5", "2001:db8:1::1", 443)).decision.rule, "default");
  EXPECT_EQ(p->decide_connection(flow("8.8.8.8", "203.0.113.7", 80)).decision.rule, "host");
  EXPECT_EQ(p->decide_connection(flow("8.8.8.8", "203.0.113.8", 80)).decision.rule, "default");
  // An IPv4 peer seen through a dual-stack socket is still IPv4 to the policy.
  EXPECT_EQ(p->decide_connection(flow("::ffff:10.1.2.3", "::ffff:192.168.1.9", 53)).decision.rule, "v4");
  // Families never cross: an IPv6 source is not inside 0.0.0.0/0.
  EXPECT_EQ(p->decide_connection(flow("fd00::1", "203.0.113.7", 80)).decision.rule, "default");
  EXPECT_EQ(p->decide_connection(flow("fd00::1", "fd00::9", 80)).decision.rule, "default");
}

TEST(PolicyMatch, Ipv6Pods) {
  auto p = make(R"(
policy:
  rules:
    - {name: six, from: {pod: web6}, to: {pod: api6, ports: [8080]}, action: allow}
)");
  const auto d = p->decide_connection(flow("fd00::2", "fd00::3", 8080));
  EXPECT_EQ(d.decision.rule, "six");
  EXPECT_EQ(d.src_pod, "web6");
  EXPECT_EQ(d.dst_pod, "api6");
  EXPECT_EQ(p->pod_name(make_address("fd00::3")), "api6");
  EXPECT_EQ(p->pod_name(make_address("fd00::9")), "");
}

TEST(PolicyMatch, DualStackPodIsOneIdentity) {
  const auto r = config::parse_config(R"(
proxy: {listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]}
pods:
  - {name: web, ip: [10.200.0.2, "fd00::2"], labels: {app: web}}
  - {name: api, ip: ["fd00::3", 10.200.0.3]}
policy:
  rules:
    - {name: by-name, from: {pod: web}, to: {pod: api, ports: [8080]}, action: allow}
    - {name: by-label, from: {labels: {app: web}}, to: {pod: api, ports: [9090]}, action: deny}
)",
                                      "t.yaml");
  ASSERT_TRUE(r.config) << (r.diagnostics.empty() ? "" : r.diagnostics[0].to_string());
  const auto p = Policy::build(r.config, 1);
  for (const auto& [src, dst] : {std::pair{"10.200.0.2", "10.200.0.3"}, std::pair{"fd00::2", "fd00::3"}}) {
    const auto d = p->decide_connection(flow(src, dst, 8080));
    EXPECT_EQ(d.decision.rule, "by-name") << src;
    EXPECT_EQ(d.src_pod, "web") << src;
    EXPECT_EQ(d.dst_pod, "api") << dst;
    EXPECT_EQ(p->decide_connection(flow(src, dst, 9090)).decision.rule, "by-label") << src;
  }
}

TEST(PolicyMatch, DenyWinsWhateverTheOrder) {
  for (const bool deny_first : {true, false}) {
    const std::string allow =
        "    - {name: allow-all, from: {cidr: 10.0.0.0/8}, to: {cidr: 10.0.0.0/8}, action: allow}\n";
    const std::string deny =
        "    - {name: no-ssh, from: {pod: web}, to: {pod: api, ports: [22]}, action: deny}\n";
    auto p = make("policy:\n  default: allow\n  rules:\n" + (deny_first ? deny + allow : allow + deny));
    const auto d = p->decide_connection(flow("10.200.0.2", "10.200.0.3", 22));
    EXPECT_EQ(d.decision.verdict, Verdict::deny);
    EXPECT_EQ(d.decision.rule, "no-ssh");
    EXPECT_EQ(d.decision.reason, "rule 'no-ssh' denies this connection (deny wins)");
    EXPECT_EQ(p->decide_connection(flow("10.200.0.2", "10.200.0.3", 80)).decision.rule, "allow-all");
  }
}

TEST(PolicyMatch, FirstRuleInFileOrderIsReported) {
  // The CIDR rule is filed under a different bucket from the pod rule; the
  // report must still name the first one in the file.
  auto p = make(R"(
policy:
  rules:
    - {name: first, from: {pod: web}, to: {cidr: 10.200.0.0/24}, action: allow}
    - {name: second, from: {pod: web}, to: {pod: api, ports: [80]}, action: allow}
)");
  EXPECT_EQ(p->decide_connection(flow("10.200.0.2", "10.200.0.3", 80)).decision.rule, "first");
}

constexpr const char* kHttpPolicy = R"(
policy:
  rules:
    - name: web-to-api
      from: {labels: {app: web}}
      to: {pod: api, ports: [8080]}
      action: allow
      http:
        - {method: GET, path: /api/}
        - {method: POST, path_exact: /login, host: API.local, headers: {X-Team: blue}}
        - {path_regex: "^/v[0-9]+/items$"}
    - name: no-admin
      from: {cidr: 10.200.0.0/24}
      to: {pod: api, ports: [8080]}
      action: deny
      http: [{path: /api/admin}]
    - name: tls-in
      from: {pod: web}
      to: {pod: api, ports: [8443]}
      action: allow
      tls: {sni: [api.example.com, "*.apps.example.com"]}
    - name: raw
      from: {pod: web2}
      to: {pod: api, ports: [8080]}
      action: allow
)";

TEST(PolicyMatch, HttpRulesAskForInspection) {
  auto p = make(kHttpPolicy);
  const auto d = p->decide_connection(flow("10.200.0.2", "10.200.0.3", 8080));
  EXPECT_EQ(d.inspect, Inspect::http);
  EXPECT_FALSE(d.all_requests_allowed);
  EXPECT_EQ(d.decision.rule, "web-to-api");
  const auto t = p->decide_connection(flow("10.200.0.2", "10.200.0.3", 8443));
  EXPECT_EQ(t.inspect, Inspect::tls);
  EXPECT_EQ(t.decision.rule, "tls-in");
  // web2 has an L4 allow, but the HTTP deny rule still applies to it.
  const auto w2 = p->decide_connection(flow("10.200.0.4", "10.200.0.3", 8080));
  EXPECT_EQ(w2.inspect, Inspect::http);
  EXPECT_FALSE(w2.all_requests_allowed);
}

TEST(PolicyMatch, AllRequestsAllowedWhenAnL4AllowCoversTheFlow) {
  auto p = make(R"(
policy:
  rules:
    - {name: http, from: {pod: web}, to: {pod: api}, action: allow, http: [{path: /x}]}
    - {name: l4, from: {labels: {app: web}}, to: {pod: api, ports: [80]}, action: allow}
)");
  const auto d = p->decide_connection(flow("10.200.0.2", "10.200.0.3", 80));
  EXPECT_EQ(d.inspect, Inspect::http);
  EXPECT_TRUE(d.all_requests_allowed);
  EXPECT_EQ(p->decide_http(flow("10.200.0.2", "10.200.0.3", 80), get("/anything")).rule, "l4");
  // On another port the L4 rule is absent: each request counts.
  EXPECT_FALSE(p->decide_connection(flow("10.200.0.2", "10.200.0.3", 81)).all_requests_allowed);
}

TEST(PolicyMatch, L4DenyBeatsInspection) {
  auto p = make(R"(
policy:
  rules:
    - {name: http, from: {pod: web}, to: {pod: api}, action: allow, http: [{path: /}]}
    - {name: block, from: {pod: web}, to: {pod: api}, action: deny}
)");
  const auto d = p->decide_connection(flow("10.200.0.2", "10.200.0.3", 80));
  EXPECT_EQ(d.inspect, Inspect::none);
  EXPECT_EQ(d.decision.verdict, Verdict::deny);
  EXPECT_EQ(d.decision.rule, "block");
  EXPECT_EQ(p->decide_http(flow("10.200.0.2", "10.200.0.3", 80), get("/")).rule, "block");
}

TEST(PolicyMatch, HttpPathPrefixExactAndRegex) {
  auto p = make(kHttpPolicy);
  const Flow f = flow("10.200.0.2", "10.200.0.3", 8080);
  auto d = p->decide_http(f, get("/api/users?limit=5"));
  EXPECT_EQ(d.verdict, Verdict::allow);
  EXPECT_EQ(d.rule, "web-to-api");
  EXPECT_EQ(d.reason, "rule 'web-to-api' allows GET /api/users (http entry 1 matches)");
  EXPECT_EQ(p->decide_http(f, get("/api")).rule, "default");  // prefix is literal: /api/ needs the slash
  EXPECT_EQ(p->decide_http(f, get("/api/", "x", "DELETE")).rule, "default");
  EXPECT_EQ(p->decide_http(f, get("/v2/items")).verdict, Verdict::allow);
  EXPECT_EQ(p->decide_http(f, get("/v2/items?x=1")).verdict, Verdict::allow);  // query ignored
  EXPECT_EQ(p->decide_http(f, get("/v2/items/1")).verdict, Verdict::deny);     // anchored by the user
  EXPECT_EQ(p->decide_http(f, get("/vx/items")).verdict, Verdict::deny);
}

TEST(PolicyMatch, HttpDenyWins) {
  auto p = make(kHttpPolicy);
  const auto d = p->decide_http(flow("10.200.0.2", "10.200.0.3", 8080), get("/api/admin/users"));
  EXPECT_EQ(d.verdict, Verdict::deny);
  EXPECT_EQ(d.rule, "no-admin");
  EXPECT_EQ(d.reason, "rule 'no-admin' denies GET /api/admin/users (http entry 1 matches)");
  // Spelling the path differently does not walk around the deny.
  for (const char* sneaky : {"/api//admin", "/api/./admin", "/api/x/../admin", "/x/../api/admin/"}) {
    EXPECT_EQ(p->decide_http(flow("10.200.0.2", "10.200.0.3", 8080), get(sneaky)).rule, "no-admin") << sneaky;
  }
  // web2's L4 allow admits everything except what the HTTP deny catches.
  EXPECT_EQ(p->decide_http(flow("10.200.0.4", "10.200.0.3", 8080), get("/other")).rule, "raw");
  EXPECT_EQ(p->decide_http(flow("10.200.0.4", "10.200.0.3", 8080), get("/api/admin")).rule, "no-admin");
}

TEST(PolicyMatch, HttpRequestTargetForms) {
  auto p = make(kHttpPolicy);
  const Flow f = flow("10.200.0.2", "10.200.0.3", 8080);
  // Absolute-form, as a forward-proxy client sends it: only the path counts.
  EXPECT_EQ(p->decide_http(f, get("http://api.local:8080/api/x?y=1")).rule, "web-to-api");
  EXPECT_EQ(p->decide_http(f, get("http://api.local/api/admin")).rule, "no-admin");
  // Asterisk-form and an empty target match nothing path-based.
  EXPECT_EQ(p->decide_http(f, get("*", "api.local", "OPTIONS")).rule, "default");
  EXPECT_EQ(p->decide_http(f, get("")).rule, "default");
}

TEST(PolicyMatch, HttpHostAndHeaders) {
  auto p = make(kHttpPolicy);
  const Flow f = flow("10.200.0.2", "10.200.0.3", 8080);
  HttpRequest login = get("/login", "Api.LOCAL:8080", "POST");
  login.headers = {{"accept", "*/*"}, {"x-team", "blue"}};
  EXPECT_EQ(p->decide_http(f, login).verdict, Verdict::allow);
  login.host = "api.local";
  EXPECT_EQ(p->decide_http(f, login).verdict, Verdict::allow);
  login.headers = {{"X-Team", "blue"}};  // name compared case-insensitively
  EXPECT_EQ(p->decide_http(f, login).verdict, Verdict::allow);
  login.headers = {{"x-team", "Blue"}};  // value is exact
  EXPECT_EQ(p->decide_http(f, login).verdict, Verdict::deny);
  login.headers = {};
  EXPECT_EQ(p->decide_http(f, login).verdict, Verdict::deny);
  login.headers = {{"x-team", "blue"}};
  login.host = "other.local";
  EXPECT_EQ(p->decide_http(f, login).verdict, Verdict::deny);
  login.host = "api.local";
  login.path = "/login/";  // path_exact
  EXPECT_EQ(p->decide_http(f, login).verdict, Verdict::deny);
}

TEST(PolicyMatch, HttpDefaultAndOtherFlows) {
  auto p = make(kHttpPolicy);
  const auto d = p->decide_http(flow("10.200.0.3", "10.200.0.2", 8080), get("/api/"));
  EXPECT_EQ(d.verdict, Verdict::deny);
  EXPECT_EQ(d.rule, "default");
  EXPECT_EQ(d.reason, "no rule allows GET /api/, so policy.default (deny) applies");
}

TEST(PolicyMatch, TlsExactAndWildcard) {
  auto p = make(kHttpPolicy);
  const Flow f = flow("10.200.0.2", "10.200.0.3", 8443);
  auto d = p->decide_tls(f, "api.example.com");
  EXPECT_EQ(d.verdict, Verdict::allow);
  EXPECT_EQ(d.rule, "tls-in");
  EXPECT_EQ(d.reason, "rule 'tls-in' allows sni 'api.example.com' (matches api.example.com)");
  EXPECT_EQ(p->decide_tls(f, "API.Example.COM").verdict, Verdict::allow);
  EXPECT_EQ(p->decide_tls(f, "api.example.com.").verdict, Verdict::allow);
  EXPECT_EQ(p->decide_tls(f, "a.apps.example.com").verdict, Verdict::allow);
  EXPECT_EQ(p->decide_tls(f, "a.b.apps.example.com").verdict, Verdict::allow);
  EXPECT_EQ(p->decide_tls(f, "apps.example.com").verdict, Verdict::deny);  // not the bare domain
  EXPECT_EQ(p->decide_tls(f, "xapps.example.com").verdict, Verdict::deny);
  EXPECT_EQ(p->decide_tls(f, "example.com").verdict, Verdict::deny);
  const auto none = p->decide_tls(f, "");
  EXPECT_EQ(none.verdict, Verdict::deny);
  EXPECT_EQ(none.reason, "no rule allows sni (no SNI), so policy.default (deny) applies");
}

TEST(PolicyMatch, TlsDenyWinsAndL4Allow) {
  auto p = make(R"(
policy:
  default: deny
  rules:
    - {name: l4, from: {pod: web}, to: {pod: api}, action: allow}
    - {name: no-evil, from: {pod: web}, to: {pod: api}, action: deny, tls: {sni: ["*.evil.com"]}}
)");
  const Flow f = flow("10.200.0.2", "10.200.0.3", 443);
  EXPECT_EQ(p->decide_connection(f).inspect, Inspect::tls);
  EXPECT_EQ(p->decide_tls(f, "x.evil.com").rule, "no-evil");
  EXPECT_EQ(p->decide_tls(f, "x.evil.com").verdict, Verdict::deny);
  const auto ok = p->decide_tls(f, "good.com");
  EXPECT_EQ(ok.verdict, Verdict::allow);
  EXPECT_EQ(ok.rule, "l4");
}

TEST(PolicyMatch, SnapshotKeepsItsConfigAndGeneration) {
  auto p = make("policy: {default: allow}\n");
  EXPECT_EQ(p->generation(), 1u);
  EXPECT_EQ(p->config().source, "t.yaml");
  EXPECT_EQ(p->config_ptr()->pods.size(), 5u);
  EXPECT_EQ(to_string(Inspect::http), "http");
  EXPECT_EQ(to_string(Verdict::allow), "allow");
}

TEST(PolicyMatch, NullConfigDeniesEverything) {
  const auto p = Policy::build(nullptr, 0);
  EXPECT_EQ(p->decide_connection(flow("10.0.0.1", "10.0.0.2", 1)).decision.verdict, Verdict::deny);
}

// What BPF steering drops (bpf::deny_table) is made from these: only L4 deny
// rules, selectors resolved as decide_connection() matches them.
TEST(PolicyMatch, L4DeniesAreTheL4DenyRulesAsResolved) {
  auto p = make(R"(
policy:
  rules:
    - {name: allow, from: {labels: {app: web}}, to: {pod: api}, action: allow}
    - {name: by-labels, from: {labels: {app: web}}, to: {pod: api, ports: [9090, 8080]}, action: deny}
    - {name: http, from: {pod: web}, to: {pod: api}, action: deny, http: [{path: /admin}]}
    - {name: tls, from: {pod: web}, to: {pod: api}, action: deny, tls: {sni: [a.example]}}
    - {name: mapped, from: {cidr: "::ffff:10.9.0.0/112"}, to: {cidr: "fd00::/64"}, action: deny}
)");
  const auto denies = p->l4_denies();
  ASSERT_EQ(denies.size(), 2u);
  const auto host = [](const char* ip, unsigned len) { return Prefix{make_address(ip), len}; };
  EXPECT_EQ(denies[0].rule, "by-labels");
  EXPECT_EQ(denies[0].from,
            (std::vector<Prefix>{host("10.200.0.2", 32), host("10.200.0.4", 32), host("fd00::2", 128)}));
  EXPECT_EQ(denies[0].to, (std::vector<Prefix>{host("10.200.0.3", 32)}));
  EXPECT_EQ(denies[0].ports, (std::vector<std::uint16_t>{8080, 9090}));
  // An IPv4-mapped CIDR is the IPv4 network, as connections are matched.
  EXPECT_EQ(denies[1].rule, "mapped");
  EXPECT_EQ(denies[1].from, (std::vector<Prefix>{host("10.9.0.0", 16)}));
  EXPECT_EQ(denies[1].to, (std::vector<Prefix>{host("fd00::", 64)}));
  EXPECT_TRUE(denies[1].ports.empty());
}

}  // namespace
}  // namespace shunt::policy

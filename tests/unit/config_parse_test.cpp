// Loading valid configs: every section lands in the typed Config, and the
// small value parsers (durations, endpoints, CIDRs) accept what SPEC.md says.
#include "config/config.h"

#include <gtest/gtest.h>

namespace shunt::config {
namespace {

using boost::asio::ip::make_address;

std::shared_ptr<const Config> load_ok(const std::string& yaml) {
  const LoadResult r = parse_config(yaml, "test.yaml");
  for (const auto& d : r.diagnostics) ADD_FAILURE() << d.to_string();
  return r.config;
}

TEST(ConfigParse, EverySection) {
  const auto c = load_ok(R"(
proxy:
  listeners:
    - {name: pods, listen: 127.0.0.1:15001, transparent: true}
    - {name: bench, listen: "[::1]:16001", forward: 127.0.0.1:5201}
  datapath: splice
  upstream_source: node
  timeouts: {connect: 250ms, header: 2s, idle: 2m, drain: 1h, keepalive: 3s, refuse: 1500ms}
  limits: {max_connections: 500, max_connections_per_source: 20, max_header_bytes: 8192}
steering:
  intercept_ports: [80, 443, 8080]
  on_proxy_down: fail_open
  attach: tc
admin: {listen: "0.0.0.0:15000", allow_remote: true, control_socket: /run/shunt-test/c.sock}
log: {level: debug, access: /var/log/shunt.log}
pods:
  - {name: web, ip: 10.200.0.2, labels: {app: web}, dev: sh-web}
  - {name: v6, ip: "fd00::2"}
policy:
  default: allow
  rules:
    - name: r1
      from: {pod: web}
      to: {cidr: "fd00::/64", ports: [443, 80, 443]}
      action: deny
)");
  ASSERT_TRUE(c);
  ASSERT_EQ(c->proxy.listeners.size(), 2u);
  EXPECT_EQ(c->proxy.listeners[0].name, "pods");
  EXPECT_TRUE(c->proxy.listeners[0].transparent);
  EXPECT_FALSE(c->proxy.listeners[0].forward);
  EXPECT_EQ(to_string(c->proxy.listeners[1].listen), "[::1]:16001");
  ASSERT_TRUE(c->proxy.listeners[1].forward);
  EXPECT_EQ(to_string(*c->proxy.listeners[1].forward), "127.0.0.1:5201");
  EXPECT_EQ(c->proxy.datapath, Datapath::splice);
  EXPECT_EQ(c->proxy.upstream_source, UpstreamSource::node);
  EXPECT_EQ(c->proxy.timeouts.connect, Millis{250});
  EXPECT_EQ(c->proxy.timeouts.header, Millis{2'000});
  EXPECT_EQ(c->proxy.timeouts.idle, Millis{120'000});
  EXPECT_EQ(c->proxy.timeouts.drain, Millis{3'600'000});
  EXPECT_EQ(c->proxy.timeouts.keepalive, Millis{3'000});
  EXPECT_EQ(c->proxy.timeouts.refuse, Millis{1'500});
  EXPECT_EQ(c->proxy.limits.max_connections, 500u);
  EXPECT_EQ(c->proxy.limits.max_connections_per_source, 20u);
  EXPECT_EQ(c->proxy.limits.max_header_bytes, 8192u);
  EXPECT_FALSE(c->steering.all_ports);
  EXPECT_EQ(c->steering.ports, (std::vector<std::uint16_t>{80, 443, 8080}));
  EXPECT_EQ(c->steering.on_proxy_down, OnProxyDown::fail_open);
  EXPECT_EQ(c->steering.attach, SteeringAttach::tc);
  EXPECT_TRUE(c->admin.allow_remote);
  EXPECT_EQ(to_string(c->admin.listen), "0.0.0.0:15000");
  EXPECT_EQ(c->admin.control_socket, "/run/shunt-test/c.sock");
  EXPECT_EQ(c->log.level, "debug");
  EXPECT_EQ(c->log.access, "/var/log/shunt.log");
  ASSERT_EQ(c->pods.size(), 2u);
  EXPECT_EQ(c->pods[0].ip, make_address("10.200.0.2"));
  EXPECT_EQ(c->pods[0].labels.at("app"), "web");
  EXPECT_EQ(c->pods[0].dev, "sh-web");
  EXPECT_EQ(c->pods[1].ip, make_address("fd00::2"));
  EXPECT_EQ(c->policy.default_action, DefaultAction::allow);
  ASSERT_EQ(c->policy.rules.size(), 1u);
  const Rule& r = c->policy.rules[0];
  EXPECT_EQ(r.name, "r1");
  EXPECT_EQ(r.line, 22);  // the raw string starts with a newline: line 1 is empty
  EXPECT_EQ(r.from.pod, "web");
  ASSERT_TRUE(r.to.cidr);
  EXPECT_EQ(r.to.cidr->to_string(), "fd00::/64");
  EXPECT_EQ(r.to.ports, (std::vector<std::uint16_t>{80, 443}));  // sorted, de-duplicated
  EXPECT_EQ(r.action, Action::deny);
  EXPECT_EQ(c->source, "test.yaml");
}

TEST(ConfigParse, DualStackPod) {
  const auto c = load_ok(R"(
proxy:
  listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]
pods:
  - {name: web, ip: [10.200.0.2, "fd00::2"], dev: sh-web}
  - {name: one, ip: ["fd00::3"]}
)");
  ASSERT_TRUE(c);
  ASSERT_EQ(c->pods.size(), 2u);
  EXPECT_EQ(c->pods[0].ip, make_address("10.200.0.2"));
  EXPECT_EQ(c->pods[0].addresses(),
            (std::vector<IpAddress>{make_address("10.200.0.2"), make_address("fd00::2")}));
  EXPECT_EQ(c->pods[1].addresses(), (std::vector<IpAddress>{make_address("fd00::3")}));
}

TEST(ConfigParse, DefaultsWhenSectionsAreOmitted) {
  const auto c = load_ok("proxy: {listeners: [{name: p, listen: 127.0.0.1:1, transparent: true}]}\n");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->proxy.datapath, Datapath::sockmap);
  EXPECT_EQ(c->proxy.timeouts.header, Millis{10'000});
  // Fairness defaults: seconds between requests, not timeouts.idle's hour;
  // one source holds at most 1% of the connection budget.
  EXPECT_EQ(c->proxy.timeouts.keepalive, Millis{15'000});
  EXPECT_EQ(c->proxy.timeouts.refuse, Millis{5'000});
  EXPECT_EQ(c->proxy.timeouts.idle, Millis{3'600'000});
  EXPECT_EQ(c->proxy.limits.max_connections, 100'000u);
  EXPECT_EQ(c->proxy.limits.max_connections_per_source, 1'000u);
  EXPECT_TRUE(c->steering.all_ports);
  EXPECT_EQ(c->steering.on_proxy_down, OnProxyDown::fail_closed);
  EXPECT_EQ(c->steering.attach, SteeringAttach::auto_detect);
  EXPECT_EQ(to_string(c->admin.listen), "127.0.0.1:15000");
  EXPECT_EQ(c->log.level, "info");
  EXPECT_EQ(c->policy.default_action, DefaultAction::deny);
  EXPECT_TRUE(c->policy.rules.empty());
}

TEST(ConfigParse, PerSourceDefaultFollowsASmallMaxConnections) {
  const auto c = load_ok(
      "proxy:\n  listeners: [{name: p, listen: 127.0.0.1:1, transparent: true}]\n"
      "  limits: {max_connections: 300}\n");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->proxy.limits.max_connections_per_source, 300u);
  const auto equal = load_ok(
      "proxy:\n  listeners: [{name: p, listen: 127.0.0.1:1, transparent: true}]\n"
      "  limits: {max_connections: 300, max_connections_per_source: 300}\n");
  ASSERT_TRUE(equal);
  EXPECT_EQ(equal->proxy.limits.max_connections_per_source, 300u);
}

TEST(ConfigParse, BuiltInDefaultHasTheFairnessKeys) {
  const LoadResult r = parse_config(builtin_default_yaml(), "<built-in default>");
  ASSERT_TRUE(r.config);
  EXPECT_EQ(r.config->proxy.timeouts.keepalive, Millis{15'000});
  EXPECT_EQ(r.config->proxy.timeouts.refuse, Millis{5'000});
  EXPECT_EQ(r.config->proxy.limits.max_connections_per_source, 1'000u);
}

TEST(ConfigParse, HttpAndTlsEntriesAreNormalised) {
  const auto c = load_ok(R"(
proxy: {listeners: [{name: p, listen: 127.0.0.1:1, transparent: true}]}
pods: [{name: api, ip: 10.0.0.3, labels: {app: api}}]
policy:
  rules:
    - name: h
      from: {cidr: 0.0.0.0/0}
      to: {labels: {app: api}}
      action: allow
      http:
        - {method: POST, path_exact: /login, host: API.Local:8080, headers: {X-Team: Blue}}
        - {path: /api/, path_regex: "^/v[0-9]+/items$"}
    - name: t
      from: {cidr: "::/0"}
      to: {pod: api, ports: [443]}
      action: allow
      tls: {sni: [API.example.com., "*.Example.com"]}
)");
  ASSERT_TRUE(c);
  const HttpMatch& m = c->policy.rules[0].http[0];
  EXPECT_EQ(m.method, "POST");
  EXPECT_EQ(m.path_exact, "/login");
  EXPECT_EQ(m.host, "api.local");             // lower-cased, port dropped
  EXPECT_EQ(m.headers.at("x-team"), "Blue");  // name lower-cased, value kept
  EXPECT_EQ(c->policy.rules[0].http[1].path, "/api/");
  EXPECT_EQ(c->policy.rules[0].http[1].path_regex, "^/v[0-9]+/items$");
  ASSERT_TRUE(c->policy.rules[1].tls);
  EXPECT_EQ(c->policy.rules[1].tls->sni, (std::vector<std::string>{"api.example.com", "*.example.com"}));
}

TEST(ConfigParse, BuiltinDefaultIsValidAndAllowsAll) {
  const LoadResult r = parse_config(builtin_default_yaml(), "<built-in default>");
  ASSERT_TRUE(r.diagnostics.empty()) << r.diagnostics[0].to_string();
  EXPECT_EQ(r.config->policy.default_action, DefaultAction::allow);
  EXPECT_TRUE(r.config->policy.rules.empty());
  EXPECT_EQ(r.config->source, "<built-in default>");
}

TEST(ConfigParse, LabExampleLoads) {
  const LoadResult r = load_config_file("config/examples/lab.yaml");
  ASSERT_TRUE(r.diagnostics.empty()) << r.diagnostics[0].to_string();
  const Config& c = *r.config;
  ASSERT_EQ(c.pods.size(), 2u);
  EXPECT_EQ(c.pods[0].name, "web");
  EXPECT_EQ(c.pods[0].dev, "sh-web");
  EXPECT_EQ(c.pods[1].ip, make_address("10.200.0.3"));
  ASSERT_EQ(c.proxy.listeners.size(), 2u);
  EXPECT_EQ(to_string(c.proxy.listeners[0].listen), "127.0.0.1:15001");
  EXPECT_EQ(to_string(*c.proxy.listeners[1].forward), "127.0.0.1:5201");
  EXPECT_EQ(c.policy.default_action, DefaultAction::deny);
  EXPECT_EQ(c.policy.rules.at(0).name, "web-to-api");
}

TEST(ConfigParse, UnreadableFileIsOneDiagnostic) {
  const LoadResult r = load_config_file("/nonexistent/shunt.yaml");
  EXPECT_FALSE(r.config);
  ASSERT_EQ(r.diagnostics.size(), 1u);
  EXPECT_EQ(r.diagnostics[0].to_string().rfind("/nonexistent/shunt.yaml: cannot read", 0), 0u)
      << r.diagnostics[0].to_string();
}

TEST(Duration, Units) {
  EXPECT_EQ(parse_duration("250ms"), Millis{250});
  EXPECT_EQ(parse_duration("5s"), Millis{5'000});
  EXPECT_EQ(parse_duration("2m"), Millis{120'000});
  EXPECT_EQ(parse_duration("1h"), Millis{3'600'000});
  EXPECT_EQ(parse_duration("0s"), Millis{0});
}

TEST(Duration, Malformed) {
  for (const char* bad :
       {"", "5", "s", "5 s", "-5s", "5sec", "1.5s", "5S", "1h30m", "ms5", "99999999999999999999h"}) {
    EXPECT_FALSE(parse_duration(bad)) << bad;
  }
}

TEST(Endpoint, Ipv4AndIpv6) {
  auto ep = parse_endpoint("127.0.0.1:15001");
  ASSERT_TRUE(ep);
  EXPECT_EQ(ep->address(), make_address("127.0.0.1"));
  EXPECT_EQ(ep->port(), 15001);
  ep = parse_endpoint("[::1]:443");
  ASSERT_TRUE(ep);
  EXPECT_EQ(ep->address(), make_address("::1"));
  EXPECT_EQ(to_string(*ep), "[::1]:443");
  EXPECT_EQ(to_string(*parse_endpoint("[fd00::a:1]:65535")), "[fd00::a:1]:65535");
}

TEST(Endpoint, Malformed) {
  for (const char* bad :
       {"", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "localhost:80", "::1:80", "[::1]",
        "[::1]80", "[10.0.0.1]:80", "10.0.0:80", "127.0.0.1:80x", "127.0.0.1:-1"}) {
    EXPECT_FALSE(parse_endpoint(bad)) << bad;
  }
}

TEST(Cidr, ParseAndContain) {
  const auto v4 = parse_cidr("10.200.0.0/24");
  ASSERT_TRUE(v4);
  EXPECT_TRUE(v4->contains(make_address("10.200.0.2")));
  EXPECT_FALSE(v4->contains(make_address("10.200.1.2")));
  EXPECT_FALSE(v4->contains(make_address("fd00::1")));
  EXPECT_TRUE(v4->contains(make_address("::ffff:10.200.0.9")));  // dual-stack socket view
  EXPECT_EQ(v4->to_string(), "10.200.0.0/24");

  const auto v6 = parse_cidr("fd00:1::/32");
  ASSERT_TRUE(v6);
  EXPECT_TRUE(v6->contains(make_address("fd00:1:ffff::1")));
  EXPECT_FALSE(v6->contains(make_address("fd00:2::1")));
  EXPECT_FALSE(v6->contains(make_address("10.0.0.1")));

  EXPECT_TRUE(parse_cidr("0.0.0.0/0")->contains(make_address("192.0.2.1")));
  EXPECT_TRUE(parse_cidr("::/0")->contains(make_address("2001:db8::1")));
  EXPECT_TRUE(parse_cidr("10.0.0.7/32")->contains(make_address("10.0.0.7")));
  EXPECT_TRUE(parse_cidr("fd00::/127")->contains(make_address("fd00::1")));
  EXPECT_FALSE(parse_cidr("fd00::/127")->contains(make_address("fd00::2")));

  const auto mapped = parse_cidr("::ffff:10.0.0.0/104");
  ASSERT_TRUE(mapped);
  EXPECT_EQ(mapped->to_string(), "10.0.0.0/8");
  EXPECT_TRUE(mapped->contains(make_address("10.9.9.9")));
  const Cidr hand_built{make_address("::ffff:10.0.0.0"), 104};
  EXPECT_TRUE(hand_built.contains(make_address("10.9.9.9")));
  EXPECT_FALSE(hand_built.contains(make_address("11.0.0.1")));
}

TEST(Cidr, Malformed) {
  for (const char* bad : {"10.0.0.0", "10.0.0.0/33", "10.0.0.5/24", "fd00::/129", "fd00::1/64", "10.0.0.0/",
                          "/8", "10.0.0.0/8x", "host/8"}) {
    EXPECT_FALSE(parse_cidr(bad)) << bad;
  }
}

TEST(Diagnostic, Format) {
  EXPECT_EQ((Diagnostic{"a.yaml", 3, 7, "bad"}).to_string(), "a.yaml:3:7: bad");
  EXPECT_EQ((Diagnostic{"a.yaml", 0, 0, "unreadable"}).to_string(), "a.yaml: unreadable");
}

TEST(EnumNames, RoundTrip) {
  EXPECT_EQ(to_string(Datapath::sockmap), "sockmap");
  EXPECT_EQ(to_string(Datapath::copy), "copy");
  EXPECT_EQ(to_string(UpstreamSource::client), "client");
  EXPECT_EQ(to_string(OnProxyDown::fail_closed), "fail_closed");
  EXPECT_EQ(to_string(Action::deny), "deny");
  EXPECT_EQ(to_string(DefaultAction::allow), "allow");
}

}  // namespace
}  // namespace shunt::config

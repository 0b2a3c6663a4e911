// Invalid configs: each problem is reported as FILE:LINE:COL: message at the
// node that is wrong (1-based), and every problem in a file is reported at once.
#include "config/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace shunt::config {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// A valid proxy section, so each test only shows what it breaks. Two lines.
constexpr const char* kProxy =
    "proxy:\n"
    "  listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]\n";

std::vector<std::string> errors(const std::string& yaml) {
  const LoadResult r = parse_config(yaml, "t.yaml");
  EXPECT_EQ(r.config == nullptr, !r.diagnostics.empty());
  std::vector<std::string> out;
  for (const auto& d : r.diagnostics) out.push_back(d.to_string());
  return out;
}

// The single error a config produces.
std::string error(const std::string& yaml) {
  const auto all = errors(yaml);
  EXPECT_EQ(all.size(), 1u) << ::testing::PrintToString(all);
  return all.empty() ? std::string() : all[0];
}

TEST(ConfigValidation, YamlSyntaxErrorHasPosition) {
  EXPECT_THAT(error("proxy:\n  listeners: [a, b\n"), StartsWith("t.yaml:3:1: YAML syntax error: "));
  EXPECT_THAT(error("a: b\n c: d\n"), StartsWith("t.yaml:2:3: YAML syntax error"));
}

TEST(ConfigValidation, TabInIndentationIsNamed) {
  // yaml-cpp alone says "illegal map value" or similar, far from the cause.
  EXPECT_THAT(error(std::string(kProxy) + "log:\n\tlevel: info\n"),
              HasSubstr("line 4 has a tab: YAML indentation must be spaces"));
}

TEST(ConfigValidation, DirectoryIsNotAnEmptyConfig) {
  const LoadResult r = load_config_file("/tmp");
  ASSERT_EQ(r.diagnostics.size(), 1u);
  EXPECT_THAT(r.diagnostics[0].to_string(), HasSubstr("/tmp: is a directory; give the config file in it"));
}

TEST(ConfigValidation, EmptyOrNonMapConfig) {
  EXPECT_THAT(error(""), HasSubstr("the config is empty"));
  EXPECT_THAT(error("- a\n- b\n"), StartsWith("t.yaml:1:1: the config must be a map"));
}

TEST(ConfigValidation, UnknownKeysAtEveryLevel) {
  EXPECT_EQ(error(std::string(kProxy) + "polcy: {}\n"),
            "t.yaml:3:1: unknown key 'polcy' in the config (did you mean 'policy'?)");
  EXPECT_EQ(error("proxy:\n  listeners: [{name: p, listen: 127.0.0.1:1, transparent: true, mode: x}]\n"),
            "t.yaml:2:65: unknown key 'mode' in listener (expected: name, listen, transparent, forward)");
  EXPECT_EQ(error(std::string(kProxy) + "proxy2: 1\n"),
            "t.yaml:3:1: unknown key 'proxy2' in the config (did you mean 'proxy'?)");
  EXPECT_EQ(error(std::string(kProxy) + "log: {level: info, acces: off}\n"),
            "t.yaml:3:20: unknown key 'acces' in log (did you mean 'access'?)");
  EXPECT_EQ(error(std::string(kProxy) + "pods: [{name: a, ip: 10.0.0.1}]\n"
                                        "policy:\n"
                                        "  rules:\n"
                                        "    - name: r\n"
                                        "      from: {pod: a}\n"
                                        "      to: {pod: a}\n"
                                        "      action: allow\n"
                                        "      http: [{method: GET, query: x}]\n"),
            "t.yaml:10:28: unknown key 'query' in http entry (expected: method, path, path_exact, "
            "path_regex, host, headers)");
}

TEST(ConfigValidation, EmptyListItem) {
  EXPECT_EQ(error(std::string(kProxy) + "pods:\n  - {name: a, ip: 10.0.0.1}\n  -\n"),
            "t.yaml:4:3: 'pods[1]' is empty");  // an empty node has no position of its own: the list
}

TEST(ConfigValidation, DuplicateKey) {
  EXPECT_EQ(error(std::string(kProxy) + "log: {level: info}\nlog: {level: warn}\n"),
            "t.yaml:4:1: duplicate key 'log' in the config");
}

TEST(ConfigValidation, WrongTypes) {
  EXPECT_EQ(error("proxy:\n  listeners: {name: p}\n"), "t.yaml:2:14: 'listeners' must be a list, got a map");
  EXPECT_EQ(error(std::string(kProxy) + "admin: {listen: 127.0.0.1:1, allow_remote: maybe}\n"),
            "t.yaml:3:44: 'allow_remote' must be true or false");
  EXPECT_EQ(error(std::string(kProxy) + "proxy_x: 1\n").substr(0, 12), "t.yaml:3:1: ");
  EXPECT_EQ(error(std::string(kProxy) + "pods: [{name: [a], ip: 10.0.0.1}]\n"),
            "t.yaml:3:15: 'name' must be a string, got a list");
  EXPECT_EQ(error(std::string(kProxy) + "log: [info]\n"), "t.yaml:3:6: log must be a map, got a list");
  EXPECT_EQ(error(std::string(kProxy) + "steering: {intercept_ports: some}\n"),
            "t.yaml:3:29: 'intercept_ports' must be 'all' or a list of ports");
}

TEST(ConfigValidation, EnumsNameTheirChoices) {
  EXPECT_EQ(error("proxy:\n  listeners: [{name: p, listen: 127.0.0.1:1, transparent: true}]\n"
                  "  datapath: ebpf\n"),
            "t.yaml:3:13: 'datapath' must be one of sockmap | splice | copy, got 'ebpf'");
  EXPECT_EQ(error(std::string(kProxy) + "log: {level: verbose}\n"),
            "t.yaml:3:14: 'level' must be one of trace | debug | info | warn | error | off, got "
            "'verbose'");
  EXPECT_EQ(error(std::string(kProxy) + "policy: {default: reject}\n"),
            "t.yaml:3:19: 'default' must be one of deny | allow, got 'reject'");
  EXPECT_EQ(error(std::string(kProxy) + "steering: {on_proxy_down: open}\n"),
            "t.yaml:3:27: 'on_proxy_down' must be one of fail_closed | fail_open, got 'open'");
  EXPECT_EQ(error(std::string(kProxy) + "steering: {attach: clsact}\n"),
            "t.yaml:3:20: 'attach' must be one of auto | tcx | tc, got 'clsact'");
}

TEST(ConfigValidation, Listeners) {
  EXPECT_EQ(error("proxy:\n  listeners: []\n"), "t.yaml:2:14: proxy.listeners needs at least one listener");
  EXPECT_EQ(error("log: {level: info}\n"), "t.yaml:1:1: the config is missing required key 'proxy'");
  EXPECT_EQ(error("proxy:\n  listeners:\n    - {name: p, listen: 127.0.0.1:1}\n"),
            "t.yaml:3:7: listener 'p' needs transparent: true or forward: IP:PORT");
  EXPECT_EQ(error("proxy:\n  listeners:\n"
                  "    - {name: p, listen: 127.0.0.1:1, transparent: true, forward: 10.0.0.1:80}\n"),
            "t.yaml:3:66: listener 'p' has both transparent: true and forward; a listener is one "
            "or the other");
  EXPECT_EQ(error("proxy:\n  listeners:\n    - {name: p, listen: 127.0.0.1:99999, transparent: true}\n"),
            "t.yaml:3:25: 'listen': invalid address '127.0.0.1:99999', expected IPv4:PORT or "
            "[IPv6]:PORT with port 1-65535");
  EXPECT_EQ(error("proxy:\n  listeners:\n    - {name: p, listen: 127.0.0.1:1, transparent: true}\n"
                  "    - {name: p, listen: 127.0.0.1:2, transparent: true}\n"),
            "t.yaml:4:7: duplicate listener name 'p' (first defined at line 3)");
  EXPECT_EQ(error("proxy:\n  listeners:\n    - {name: p, listen: 127.0.0.1:1, transparent: true}\n"
                  "    - {name: q, listen: 127.0.0.1:1, transparent: true}\n"),
            "t.yaml:4:7: listener 'q' uses the same address 127.0.0.1:1 as listener 'p'");
  EXPECT_EQ(error("proxy:\n  listeners:\n    - {listen: 127.0.0.1:1, transparent: true}\n"),
            "t.yaml:3:7: listener is missing required key 'name'");
  EXPECT_EQ(error("proxy:\n  listeners: [{name: p, listen: \"[::1]:80\", transparent: true}]\n"
                  "admin: {listen: \"[::1]:80\"}\n"),
            "t.yaml:3:8: admin.listen [::1]:80 is also listener 'p'");
}

TEST(ConfigValidation, DurationsAndLimits) {
  EXPECT_EQ(error("proxy:\n  listeners: [{name: p, listen: 127.0.0.1:1, transparent: true}]\n"
                  "  timeouts: {connect: 5 s}\n"),
            "t.yaml:3:23: 'connect' must be a duration such as 250ms, 5s, 2m or 1h");
  EXPECT_EQ(error("proxy:\n  listeners: [{name: p, listen: 127.0.0.1:1, transparent: true}]\n"
                  "  timeouts: {idle: 0s}\n"),
            "t.yaml:3:20: 'idle' must be greater than zero");
  EXPECT_EQ(error("proxy:\n  listeners: [{name: p, listen: 127.0.0.1:1, transparent: true}]\n"
                  "  limits: {max_header_bytes: 10}\n"),
            "t.yaml:3:30: 'max_header_bytes' is 10, must be between 1024 and 1048576");
  EXPECT_EQ(error("proxy:\n  listeners: [{name: p, listen: 127.0.0.1:1, transparent: true}]\n"
                  "  limits: {max_connections: lots}\n"),
            "t.yaml:3:29: 'max_connections' must be an integer between 1 and 10000000");
  EXPECT_EQ(error("proxy:\n  listeners: [{name: p, listen: 127.0.0.1:1, transparent: true}]\n"
                  "  timeouts: {keepalive: 0s}\n"),
            "t.yaml:3:25: 'keepalive' must be greater than zero");
  EXPECT_EQ(error("proxy:\n  listeners: [{name: p, listen: 127.0.0.1:1, transparent: true}]\n"
                  "  timeouts: {refuse: never}\n"),
            "t.yaml:3:22: 'refuse' must be a duration such as 250ms, 5s, 2m or 1h");
  EXPECT_EQ(error("proxy:\n  listeners: [{name: p, listen: 127.0.0.1:1, transparent: true}]\n"
                  "  timeouts: {keep_alive: 5s}\n"),
            "t.yaml:3:14: unknown key 'keep_alive' in proxy.timeouts (did you mean 'keepalive'?)");
  EXPECT_EQ(error("proxy:\n  listeners: [{name: p, listen: 127.0.0.1:1, transparent: true}]\n"
                  "  limits: {max_connections_per_source: 0}\n"),
            "t.yaml:3:40: 'max_connections_per_source' is 0, must be between 1 and 10000000");
  EXPECT_EQ(error("proxy:\n  listeners: [{name: p, listen: 127.0.0.1:1, transparent: true}]\n"
                  "  limits: {max_connections: 10, max_connections_per_source: 11}\n"),
            "t.yaml:3:61: 'max_connections_per_source' (11) is larger than max_connections (10)");
}

TEST(ConfigValidation, AdminMustStayLocalUnlessAllowed) {
  EXPECT_EQ(error(std::string(kProxy) + "admin: {listen: 0.0.0.0:15000}\n"),
            "t.yaml:3:17: admin.listen 0.0.0.0:15000 is not a loopback address; set "
            "admin.allow_remote: true to expose the admin API beyond this node");
  EXPECT_TRUE(errors(std::string(kProxy) + "admin: {listen: \"[::1]:15000\"}\n").empty());
}

TEST(ConfigValidation, ControlSocketIsAnAbsoluteUnixPath) {
  EXPECT_EQ(error(std::string(kProxy) + "admin: {control_socket: run/c.sock}\n"),
            "t.yaml:3:25: admin.control_socket 'run/c.sock' must be an absolute path");
  EXPECT_EQ(error(std::string(kProxy) + "admin: {control_socket: /" + std::string(120, 'x') + "}\n"),
            "t.yaml:3:25: admin.control_socket is 121 bytes long; a Unix socket path holds at most 107");
  EXPECT_TRUE(errors(std::string(kProxy) + "admin: {control_socket: /tmp/shunt/c.sock}\n").empty());
}

TEST(ConfigValidation, Steering) {
  EXPECT_EQ(error(std::string(kProxy) + "steering: {intercept_ports: [80, 0]}\n"),
            "t.yaml:3:34: port 0 is out of range (1-65535)");
  EXPECT_EQ(error(std::string(kProxy) + "steering: {intercept_ports: [80, http]}\n"),
            "t.yaml:3:34: 'intercept_ports[1]' must be a port number (1-65535)");
}

TEST(ConfigValidation, Pods) {
  EXPECT_EQ(error(std::string(kProxy) + "pods:\n  - {name: a, ip: 10.0.0.256}\n"),
            "t.yaml:4:19: pod ip '10.0.0.256' is not an IPv4 or IPv6 address");
  EXPECT_EQ(error(std::string(kProxy) + "pods:\n  - {name: a, ip: 10.0.0.1}\n  - {name: a, ip: 10.0.0.2}\n"),
            "t.yaml:5:5: duplicate pod name 'a' (first defined at line 4)");
  EXPECT_EQ(error(std::string(kProxy) + "pods:\n  - {name: a, ip: 10.0.0.1}\n  - {name: b, ip: 10.0.0.1}\n"),
            "t.yaml:5:5: pod 'b' has the same IP 10.0.0.1 as pod 'a': pods are identified by IP");
  EXPECT_EQ(error(std::string(kProxy) + "pods:\n  - {name: a, ip: 10.0.0.1, dev: a-very-long-device}\n"),
            "t.yaml:4:34: dev 'a-very-long-device' is not a valid interface name (at most 15 "
            "characters, no '/', ':' or spaces)");
  EXPECT_EQ(error(std::string(kProxy) + "pods:\n  - {name: \"a b\", ip: 10.0.0.1}\n"),
            "t.yaml:4:12: pod name 'a b' may only use letters, digits, '-', '_' and '.'");
  // Dual-stack: a list of at most one address per family.
  EXPECT_EQ(error(std::string(kProxy) + "pods:\n  - {name: a, ip: [10.0.0.1, 10.0.0.2]}\n"),
            "t.yaml:4:30: pod ip list has two IPv4 addresses: a pod has at most one per family");
  EXPECT_EQ(error(std::string(kProxy) + "pods:\n  - {name: a, ip: []}\n"),
            "t.yaml:4:19: pod ip list must hold one or two addresses");
  EXPECT_EQ(error(std::string(kProxy) +
                  "pods:\n  - {name: a, ip: [10.0.0.1, \"fd00::1\"]}\n  - {name: b, ip: \"fd00::1\"}\n"),
            "t.yaml:5:5: pod 'b' has the same IP fd00::1 as pod 'a': pods are identified by IP");
}

// A policy section with one rule whose lines are numbered from 3.
std::string rule(const std::string& body) {
  return std::string(kProxy) +                                                                    // lines 1-2
         "pods: [{name: web, ip: 10.0.0.2, labels: {app: web}}, {name: api, ip: \"fd00::3\"}]\n"  // 3
         "policy:\n"                                                                              // 4
         "  rules:\n"                                                                             // 5
         "    - name: r\n" +                                                                      // 6
         body;  // from line 7
}

TEST(ConfigValidation, Selectors) {
  EXPECT_EQ(error(rule("      from: {pod: web}\n      to: {pod: db}\n      action: allow\n")),
            "t.yaml:8:17: unknown pod 'db' (pods: web, api)");
  EXPECT_EQ(
      error(rule("      from: {pod: web, cidr: 10.0.0.0/8}\n      to: {pod: api}\n      action: allow\n")),
      "t.yaml:7:13: 'from' takes exactly one of pod, labels or cidr, got pod and cidr");
  EXPECT_EQ(error(rule("      from: {}\n      to: {pod: api}\n      action: allow\n")),
            "t.yaml:7:13: 'from' needs one of pod, labels or cidr");
  EXPECT_EQ(error(rule("      from: {pod: web, ports: [80]}\n      to: {pod: api}\n      action: allow\n")),
            "t.yaml:7:24: 'ports' is only allowed on 'to': a client's source port is ephemeral");
  EXPECT_EQ(error(rule("      from: {cidr: 10.0.0.1/8}\n      to: {pod: api}\n      action: allow\n")),
            "t.yaml:7:20: CIDR '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?");
  EXPECT_EQ(error(rule("      from: {cidr: \"fd00::/200\"}\n      to: {pod: api}\n      action: allow\n")),
            "t.yaml:7:20: CIDR 'fd00::/200' has prefix length 200, at most 128 for IPv6");
  EXPECT_EQ(error(rule("      from: {cidr: 10.0.0.0}\n      to: {pod: api}\n      action: allow\n")),
            "t.yaml:7:20: '10.0.0.0' is not a CIDR such as 10.0.0.0/8 or fd00::/64");
  EXPECT_EQ(error(rule(
                "      from: {pod: web}\n      to: {pod: api, ports: [8080, 70000]}\n      action: allow\n")),
            "t.yaml:8:36: port 70000 is out of range (1-65535)");
  EXPECT_EQ(error(rule("      from: {pod: web}\n      to: {pod: api, ports: []}\n      action: allow\n")),
            "t.yaml:8:29: 'ports' is an empty list; omit it to mean any port");
  EXPECT_EQ(error(rule("      from: {labels: {}}\n      to: {pod: api}\n      action: allow\n")),
            "t.yaml:7:22: 'labels' must not be empty; use cidr to select by address");
}

TEST(ConfigValidation, Rules) {
  EXPECT_EQ(error(rule("      from: {pod: web}\n      to: {pod: api}\n")),
            "t.yaml:6:7: rule is missing required key 'action'");
  EXPECT_EQ(error(rule("      from: {pod: web}\n      to: {pod: api}\n      action: permit\n")),
            "t.yaml:9:15: 'action' must be one of allow | deny, got 'permit'");
  EXPECT_EQ(error(rule("      from: {pod: web}\n      to: {pod: api}\n      action: allow\n"
                       "      http: [{path: /}]\n"
                       "      tls: {sni: [a.example]}\n")),
            "t.yaml:11:7: rule 'r' has both http and tls; a connection is either plain HTTP or "
            "TLS, so write two rules");
  EXPECT_EQ(error(rule("      from: {pod: web}\n      to: {pod: api}\n      action: allow\n"
                       "    - name: r\n      from: {pod: web}\n      to: {pod: api}\n      action: deny\n")),
            "t.yaml:10:7: duplicate rule name 'r' (first defined at line 6)");
}

TEST(ConfigValidation, HttpEntries) {
  const std::string head = "      from: {pod: web}\n      to: {pod: api}\n      action: allow\n";
  EXPECT_EQ(error(rule(head + "      http:\n        - {path_regex: \"^/v[0-9+/items$\"}\n")),
            "t.yaml:11:24: invalid path_regex '^/v[0-9+/items$': missing ]: [0-9+/items$");
  EXPECT_EQ(error(rule(head + "      http:\n        - {method: get}\n")),
            "t.yaml:11:20: method 'get' must be upper-case (methods are case-sensitive)");
  EXPECT_EQ(error(rule(head + "      http:\n        - {path: api/}\n")),
            "t.yaml:11:18: 'path' must start with '/'");
  EXPECT_EQ(error(rule(head + "      http:\n        - {}\n")),
            "t.yaml:11:11: empty http entry would match every request; drop 'http' to make the "
            "rule L4");
  EXPECT_EQ(error(rule(head + "      http: []\n")),
            "t.yaml:10:13: 'http' needs at least one entry; drop it to make the rule L4");
  EXPECT_EQ(error(rule(head + "      http:\n        - {headers: {x-a: 1, X-A: 2}}\n")),
            "t.yaml:11:30: duplicate key 'X-A' in 'headers'");
}

TEST(ConfigValidation, TlsEntries) {
  const std::string head = "      from: {pod: web}\n      to: {pod: api}\n      action: allow\n";
  EXPECT_EQ(error(rule(head + "      tls: {sni: [\"a.*.com\"]}\n")),
            "t.yaml:10:19: sni 'a.*.com' is not a host name or a '*.domain' wildcard");
  EXPECT_EQ(error(rule(head + "      tls: {sni: []}\n")), "t.yaml:10:18: 'sni' needs at least one name");
  EXPECT_EQ(error(rule(head + "      tls: {}\n")), "t.yaml:10:12: tls is missing required key 'sni'");
}

TEST(ConfigValidation, AllErrorsAtOnceInFileOrder) {
  // pods come after policy in this file: the unknown pod is still found, and
  // the diagnostics are sorted by position, not by discovery.
  const auto all = errors(
      "proxy:\n"                                                          // 1
      "  listeners: [{name: p, listen: 1.2.3.4:0, transparent: true}]\n"  // 2
      "  timeouts: {header: soon}\n"                                      // 3
      "policy:\n"                                                         // 4
      "  default: deny\n"                                                 // 5
      "  rules:\n"                                                        // 6
      "    - name: r\n"                                                   // 7
      "      from: {pod: ghost}\n"                                        // 8
      "      to: {cidr: 10.0.0.0/40, ports: [0]}\n"                       // 9
      "      action: allow\n"                                             // 10
      "      colour: blue\n"                                              // 11
      "pods:\n"                                                           // 12
      "  - {name: web, ip: not-an-ip}\n");                                // 13
  EXPECT_THAT(
      all,
      ElementsAre(
          StartsWith("t.yaml:2:33: 'listen': invalid address '1.2.3.4:0'"),
          "t.yaml:3:22: 'header' must be a duration such as 250ms, 5s, 2m or 1h",
          "t.yaml:8:19: unknown pod 'ghost' (pods: web)",
          "t.yaml:9:18: CIDR '10.0.0.0/40' has prefix length 40, at most 32 for IPv4",
          "t.yaml:9:39: port 0 is out of range (1-65535)",
          "t.yaml:11:7: unknown key 'colour' in rule (expected: name, from, to, action, http, grpc, tls)",
          "t.yaml:13:21: pod ip 'not-an-ip' is not an IPv4 or IPv6 address"));
}

}  // namespace
}  // namespace shunt::config

namespace shunt::config {
namespace {

TEST(ConfigValidation, ProxyHttpSettings) {
  const std::string base = std::string(kProxy);
  const auto with = [&](const std::string& http) { return base + "  http: " + http + "\n"; };
  EXPECT_THAT(error(with("{encoded_slash: allow}")),
              HasSubstr("'encoded_slash' must be one of reject | keep | decode, got 'allow'"));
  EXPECT_THAT(error(with("{invalid_escape: decode}")),
              HasSubstr("'invalid_escape' must be one of reject | keep"));
  EXPECT_THAT(error(with("{unexpected_body: allow}")),
              HasSubstr("'unexpected_body' must be one of reject | forward"));
  EXPECT_THAT(error(with("{upgrade_protocols: [h2c]}")), HasSubstr("'h2c' cannot be allowed"));
  EXPECT_THAT(error(with("{upgrade_protocols: [\"web socket\"]}")), HasSubstr("is not an HTTP token"));
  EXPECT_THAT(error(with("{encoded_slashes: keep}")), HasSubstr("did you mean 'encoded_slash'?"));

  const LoadResult defaults = parse_config(base, "t.yaml");
  ASSERT_TRUE(defaults.config);
  EXPECT_EQ(defaults.config->proxy.http.encoded_slash, EncodedSlash::reject);
  EXPECT_EQ(defaults.config->proxy.http.invalid_escape, InvalidEscape::reject);
  EXPECT_EQ(defaults.config->proxy.http.unexpected_body, UnexpectedBody::reject);
  EXPECT_EQ(defaults.config->proxy.http.upgrade_protocols, std::vector<std::string>{"websocket"});
  const LoadResult set = parse_config(
      with("{encoded_slash: decode, unexpected_body: forward, upgrade_protocols: []}"), "t.yaml");
  ASSERT_TRUE(set.config);
  EXPECT_EQ(set.config->proxy.http.unexpected_body, UnexpectedBody::forward);
  EXPECT_EQ(set.config->proxy.http.encoded_slash, EncodedSlash::decode);
  EXPECT_TRUE(set.config->proxy.http.upgrade_protocols.empty());
}

}  // namespace
}  // namespace shunt::config

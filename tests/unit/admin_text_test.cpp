// The admin API's text formats without sockets: Prometheus escaping and
// layout, the JSON writer, Config -> JSON, and request routing.
#include "admin/admin_server.h"
#include "admin/config_json.h"
#include "admin/metrics_text.h"
#include "common/json_writer.h"
#include "config/config.h"
#include "proxy/proxy_context.h"

#include <gtest/gtest.h>

namespace shunt::proxy {
namespace {

TEST(PromText, EscapesLabelValuesAndHelp) {
  EXPECT_EQ(escape_label_value(R"(a"b\c)"
                               "\n"),
            R"(a\"b\\c\n)");
  EXPECT_EQ(escape_help("x\\y\nz\""), "x\\\\y\\nz\"");
}

TEST(PromText, FamilyThenSamples) {
  PromText p;
  p.family("shunt_x_total", "counter", "Things.");
  p.sample("shunt_x_total", {{"rule", "we\"ird"}, {"verdict", "allow"}}, std::uint64_t{3});
  p.sample("shunt_y", {}, 0.5);
  p.sample("shunt_y", {}, 1795316676.59);
  EXPECT_EQ(p.take(),
            "# HELP shunt_x_total Things.\n# TYPE shunt_x_total counter\n"
            "shunt_x_total{rule=\"we\\\"ird\",verdict=\"allow\"} 3\nshunt_y 0.5\nshunt_y 1795316676.59\n");
}

TEST(JsonWriter, CommasNestingAndEscapes) {
  JsonWriter w;
  w.begin_object()
      .field("a", std::uint64_t{1})
      .key("b")
      .begin_array()
      .value("x\"\n\x01")
      .value(true)
      .end_array();
  w.key("c").begin_object().end_object().key("d").fixed(1.23456, 3).end_object();
  EXPECT_EQ(w.take(), R"({"a":1,"b":["x\"\n\u0001",true],"c":{},"d":1.235})");
}

TEST(ConfigJson, DurationsUseTheLargestExactUnit) {
  EXPECT_EQ(format_duration(config::Millis(3'600'000)), "1h");
  EXPECT_EQ(format_duration(config::Millis(120'000)), "2m");
  EXPECT_EQ(format_duration(config::Millis(30'000)), "30s");
  EXPECT_EQ(format_duration(config::Millis(250)), "250ms");
  EXPECT_EQ(format_duration(config::Millis(0)), "0s");
}

TEST(ConfigJson, EveryFieldOfTheExample) {
  const auto loaded = config::parse_config(R"(
proxy:
  listeners:
    - {name: pods, listen: "[::1]:15001", transparent: true}
    - {name: bench, listen: 127.0.0.1:16001, forward: 127.0.0.1:5201}
  datapath: splice
  upstream_source: node
  timeouts: {connect: 250ms, header: 10s, idle: 1h, drain: 2m}
  limits: {max_connections: 10, max_header_bytes: 1024}
  http: {encoded_slash: decode, invalid_escape: keep, unexpected_body: forward, upgrade_protocols: [WebSocket, foo]}
steering: {intercept_ports: [80, 443], on_proxy_down: fail_open}
admin: {listen: 127.0.0.1:15000}
log: {level: debug, access: off}
pods:
  - {name: web, ip: 10.200.0.2, labels: {app: web}, dev: nk-web}
policy:
  default: deny
  rules:
    - name: r1
      from: {labels: {app: web}}
      to: {pod: web, ports: [8080]}
      action: allow
      http:
        - {method: POST, path_exact: /login, host: api.local, headers: {x-team: blue}}
    - name: r2
      from: {cidr: 10.0.0.0/8}
      to: {cidr: "fd00::/64"}
      action: deny
      tls: {sni: [api.example.com, "*.example.com"]}
)",
                                           "test.yaml");
  ASSERT_TRUE(loaded.config) << loaded.diagnostics.front().to_string();
  EXPECT_EQ(
      config_to_json(*loaded.config, 7),
      R"({"generation":7,"source":"test.yaml","proxy":{"listeners":[{"name":"pods","listen":"[::1]:15001","transparent":true},)"
      R"({"name":"bench","listen":"127.0.0.1:16001","transparent":false,"forward":"127.0.0.1:5201"}],)"
      R"("datapath":"splice","upstream_source":"node","timeouts":{"connect":"250ms","header":"10s","idle":"1h","drain":"2m",)"
      R"("keepalive":"15s","refuse":"5s"},"limits":{"max_connections":10,"max_connections_per_source":10,)"
      R"("max_header_bytes":1024},)"
      R"("http":{"encoded_slash":"decode","invalid_escape":"keep","unexpected_body":"forward",)"
      R"("upgrade_protocols":["websocket","foo"]},)"
      R"("http2":{"max_concurrent_streams":100,"stream_window":262144,"connection_window":4194304,)"
      R"("max_continuations":8,"reset_burst":1000,"reset_rate":33,"control_frame_burst":1000,)"
      R"("control_frame_rate":100}},"steering":{"intercept_ports":[80,443],"on_proxy_down":"fail_open","attach":"auto"},)"
      R"("admin":{"listen":"127.0.0.1:15000","allow_remote":false,"control_socket":"/run/shunt/control.sock"},)"
      R"("log":{"level":"debug","access":"off"},)"
      R"("pods":[{"name":"web","ip":"10.200.0.2","labels":{"app":"web"},"dev":"nk-web"}],)"
      R"("policy":{"default":"deny","rules":[{"name":"r1","from":{"labels":{"app":"web"}},"to":{"pod":"web","ports":[8080]},)"
      R"("action":"allow","http":[{"method":"POST","path_exact":"/login","host":"api.local","headers":{"x-team":"blue"}}]},)"
      R"({"name":"r2","from":{"cidr":"10.0.0.0/8"},"to":{"cidr":"fd00::/64"},"action":"deny","tls":{"sni":["api.example.com","*.example.com"]}}]}})");
}

TEST(AdminServer, RoutesWithoutSockets) {
  ProxyContext context;
  AdminServer admin(context, config::Endpoint(boost::asio::ip::make_address("127.0.0.1"), 0));
  EXPECT_EQ(admin.handle("GET", "/healthz").status, 200);
  EXPECT_EQ(admin.handle("GET", "/readyz").body, "not ready: no policy loaded\n");
  EXPECT_EQ(admin.handle("GET", "/nope").status, 404);
  const auto post = admin.handle("POST", "/metrics");
  EXPECT_EQ(post.status, 405);
  EXPECT_EQ(post.allow, "GET, HEAD");
  const auto conns = admin.handle("GET", "/connections?x=1");
  EXPECT_EQ(conns.status, 200);
  EXPECT_EQ(conns.body, "[]\n");

  auto loaded = config::parse_config(config::builtin_default_yaml(), "default");
  ASSERT_TRUE(loaded.config);
  context.policy.publish(policy::Policy::build(loaded.config, 3));
  EXPECT_EQ(admin.handle("GET", "/readyz").body, "not ready: listeners not accepting yet\n");
  admin.set_ready(nullptr);
  EXPECT_EQ(admin.handle("GET", "/readyz").status, 200);
  EXPECT_NE(admin.handle("GET", "/config").body.find("\"generation\":3"), std::string::npos);
  context.draining = true;
  EXPECT_EQ(admin.handle("GET", "/readyz").body, "not ready: draining\n");
  const auto metrics = admin.handle("GET", "/metrics");
  EXPECT_EQ(metrics.content_type, "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_NE(metrics.body.find("# TYPE shunt_bytes_total counter\n"), std::string::npos);
}

}  // namespace
}  // namespace shunt::proxy

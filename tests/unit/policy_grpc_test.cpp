// The `grpc:` shorthand: each name loads as an ordinary http entry (method
// POST, exact path or service prefix), so HTTP/1.1, HTTP/2 and explain all
// go through the one matcher; messages name the entry as written.
#include "config/config.h"
#include "policy/policy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace shunt::policy {
namespace {

using boost::asio::ip::make_address;
using ::testing::HasSubstr;

constexpr const char* kConfig = R"(proxy:
  listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]
policy:
  default: deny
  rules:
    - name: grpc-in
      from: {cidr: 10.0.0.0/8}
      to: {cidr: 10.0.0.0/8, ports: [9090]}
      action: allow
      http: [{method: GET, path_exact: /healthz}]
      grpc: [shop.Cart/GetCart, shop.v1.Catalog/*, Greeter/SayHello]
    - name: no-cart-admin
      from: {cidr: 10.0.0.0/8}
      to: {cidr: 10.0.0.0/8, ports: [9090]}
      action: deny
      grpc: [shop.Cart/Purge]
)";

std::shared_ptr<const Policy> build() {
  const auto r = config::parse_config(kConfig, "g.yaml");
  for (const auto& d : r.diagnostics) ADD_FAILURE() << d.to_string();
  return r.config ? Policy::build(r.config, 1) : nullptr;
}

const Flow kFlow{make_address("10.0.0.2"), make_address("10.0.0.3"), 9090};

Decision decide(const Policy& p, std::string_view method, std::string_view path) {
  return p.decide_http(kFlow, HttpRequest{method, path, "svc", {{"content-type", "application/grpc"}}});
}

TEST(PolicyGrpc, NamesCompileToPostEntries) {
  const auto p = build();
  ASSERT_TRUE(p);
  const auto& http = p->config().policy.rules[0].http;
  ASSERT_EQ(http.size(), 4u);  // the http entry first, then the grpc ones
  EXPECT_FALSE(http[0].grpc);
  EXPECT_EQ(http[1].grpc, "shop.Cart/GetCart");
  EXPECT_EQ(http[1].method, "POST");
  EXPECT_EQ(http[1].path_exact, "/shop.Cart/GetCart");
  EXPECT_FALSE(http[1].path);
  EXPECT_EQ(http[2].method, "POST");
  EXPECT_EQ(http[2].path, "/shop.v1.Catalog/");
  EXPECT_FALSE(http[2].path_exact);
  EXPECT_EQ(http[3].path_exact, "/Greeter/SayHello");
}

TEST(PolicyGrpc, DecidesLikeTheEntriesItStandsFor) {
  const auto p = build();
  ASSERT_TRUE(p);
  EXPECT_EQ(decide(*p, "POST", "/shop.Cart/GetCart").verdict, Verdict::allow);
  EXPECT_EQ(decide(*p, "POST", "/shop.v1.Catalog/List").verdict, Verdict::allow);
  EXPECT_EQ(decide(*p, "POST", "/Greeter/SayHello").verdict, Verdict::allow);
  EXPECT_EQ(decide(*p, "GET", "/healthz").verdict, Verdict::allow);
  // Not POST, another method of an exact service, a service that only shares a prefix.
  EXPECT_EQ(decide(*p, "GET", "/shop.Cart/GetCart").verdict, Verdict::deny);
  EXPECT_EQ(decide(*p, "POST", "/shop.Cart/GetCartX").verdict, Verdict::deny);
  EXPECT_EQ(decide(*p, "POST", "/shop.v1.CatalogAdmin/List").verdict, Verdict::deny);
  // Canonical form first: a dot-segment does not walk out of the service.
  EXPECT_EQ(decide(*p, "POST", "/shop.v1.Catalog/../shop.Cart/Purge").verdict, Verdict::deny);
  const Decision d = decide(*p, "POST", "/shop.Cart/Purge");
  EXPECT_EQ(d.verdict, Verdict::deny);
  EXPECT_EQ(d.rule, "no-cart-admin");
  EXPECT_THAT(d.reason, HasSubstr("(grpc entry shop.Cart/Purge matches)"));
  EXPECT_THAT(decide(*p, "POST", "/shop.Cart/GetCart").reason,
              HasSubstr("(grpc entry shop.Cart/GetCart matches)"));
}

TEST(PolicyGrpc, ExplainNamesGrpcEntries) {
  const auto p = build();
  ASSERT_TRUE(p);
  const HttpRequest hit{"POST", "/shop.v1.Catalog/List", "svc", {}};
  Explanation e = p->explain(kFlow, &hit, std::nullopt);
  ASSERT_FALSE(e.trace.empty());
  EXPECT_THAT(e.trace[0].why, HasSubstr("grpc entry shop.v1.Catalog/* matches: allow"));
  const HttpRequest miss{"POST", "/other.Svc/Call", "svc", {}};
  e = p->explain(kFlow, &miss, std::nullopt);
  EXPECT_THAT(e.trace[0].why, HasSubstr("(entry 1: "));
  EXPECT_THAT(e.trace[0].why, HasSubstr("grpc entry shop.Cart/GetCart: path /other.Svc/Call is not "
                                        "/shop.Cart/GetCart"));
  EXPECT_THAT(e.trace[1].why, HasSubstr("grpc entry shop.Cart/Purge: "));
}

std::vector<std::string> errors(const std::string& rule_tail) {
  const std::string yaml = std::string(R"(proxy:
  listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]
policy:
  rules:
    - name: r
      from: {cidr: 10.0.0.0/8}
      to: {cidr: 10.0.0.0/8}
      action: allow
)") + rule_tail;
  std::vector<std::string> out;
  for (const auto& d : config::parse_config(yaml, "g.yaml").diagnostics) out.push_back(d.to_string());
  return out;
}

TEST(PolicyGrpc, BadNamesAreErrorsWithPosition) {
  for (const char* bad : {"/shop.Cart/Get", "shop.Cart", "shop.Cart/", "shop..Cart/Get", "shop.Cart/Get/x",
                          "shop.Cart/G*", "1shop.Cart/Get", "shop.Ca-rt/Get", "*/Get"}) {
    const auto e = errors(std::string("      grpc: [\"") + bad + "\"]\n");
    ASSERT_EQ(e.size(), 1u) << bad;
    EXPECT_THAT(e[0], HasSubstr("g.yaml:9:14: grpc entry '"));
    EXPECT_THAT(e[0], HasSubstr("must be 'package.Service/Method' or 'package.Service/*'"));
  }
  EXPECT_THAT(errors("      grpc: []\n").at(0), HasSubstr("'grpc' needs at least one"));
  EXPECT_THAT(errors("      grpc: [a.B/C]\n      tls: {sni: [x]}\n").at(0),
              HasSubstr("has both grpc and tls"));
}

TEST(ConfigHttp2, LimitsLoadAndAreBounded) {
  const std::string base = "proxy:\n  listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]\n";
  auto r = config::parse_config(base +
                                    "  http2: {max_concurrent_streams: 10, stream_window: 65536, "
                                    "connection_window: 131072, max_continuations: 2, reset_burst: 5, "
                                    "reset_rate: 1, control_frame_burst: 20, control_frame_rate: 3}\n",
                                "h.yaml");
  ASSERT_TRUE(r.config) << (r.diagnostics.empty() ? "" : r.diagnostics[0].to_string());
  const config::Http2Settings& h = r.config->proxy.http2;
  EXPECT_EQ(h.max_concurrent_streams, 10u);
  EXPECT_EQ(h.stream_window, 65536u);
  EXPECT_EQ(h.connection_window, 131072u);
  EXPECT_EQ(h.max_continuations, 2u);
  EXPECT_EQ(h.reset_burst, 5u);
  EXPECT_EQ(h.reset_rate, 1u);
  EXPECT_EQ(h.control_frame_burst, 20u);
  EXPECT_EQ(h.control_frame_rate, 3u);

  r = config::parse_config(base, "h.yaml");
  ASSERT_TRUE(r.config);
  EXPECT_EQ(r.config->proxy.http2.max_concurrent_streams, 100u);
  EXPECT_EQ(r.config->proxy.http2.stream_window, 256u * 1024);

  r = config::parse_config(base + "  http2: {stream_window: 1024}\n", "h.yaml");
  ASSERT_EQ(r.diagnostics.size(), 1u);
  EXPECT_THAT(r.diagnostics[0].to_string(), HasSubstr("h.yaml:3:26:"));
  r = config::parse_config(base + "  http2: {stream_window: 1048576, connection_window: 524288}\n", "h.yaml");
  ASSERT_EQ(r.diagnostics.size(), 1u);
  EXPECT_THAT(r.diagnostics[0].to_string(), HasSubstr("is smaller than stream_window"));
  r = config::parse_config(base + "  http2: {max_streams: 5}\n", "h.yaml");
  ASSERT_EQ(r.diagnostics.size(), 1u);
  EXPECT_THAT(r.diagnostics[0].to_string(), HasSubstr("max_streams"));
}

}  // namespace
}  // namespace shunt::policy

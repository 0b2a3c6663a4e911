// Matching in the canonical request model (docs/policy.md): the bypass
// classes of issue 9 against the policy (percent-encoding, trailing
// characters, which host, CONNECT), how deny and allow entries read
// repeated headers and trailing slashes, config entries normalised the way
// requests are, lint() for `shunt check`, and explain's canonical form.
#include "policy/policy.h"

#include <gtest/gtest.h>

namespace shunt::policy {
namespace {

using boost::asio::ip::make_address;

constexpr const char* kConfig = R"(
proxy: {listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]}
pods:
  - {name: web, ip: 10.200.0.2}
  - {name: api, ip: 10.200.0.3}
  - {name: proxy, ip: 10.200.0.4}
policy:
  rules:
    - name: api
      from: {pod: web}
      to: {pod: api}
      action: allow
      http:
        - {path: /api/}
        - {method: GET, path: /team, headers: {x-team: "blue "}}
    - name: no-admin
      from: {pod: web}
      to: {pod: api}
      action: deny
      http:
        - {path: /api/admin}
        - {path_exact: /api/secret}
        - {path: /api/private/}
        - {host: 'admin.local.'}
        - {headers: {x-role: admin}}
        - {method: GET, path: /api/get-only}
    - name: egress-l4
      from: {pod: web}
      to: {pod: proxy, ports: [3128]}
      action: allow
    - name: egress-http
      from: {pod: web}
      to: {pod: proxy, ports: [3128]}
      action: allow
      http:
        - {method: CONNECT, host: allowed.example}
        - {path: /}
)";

std::shared_ptr<const Policy> make(const std::string& text = kConfig) {
  const auto r = config::parse_config(text, "t.yaml");
  for (const auto& d : r.diagnostics) ADD_FAILURE() << d.to_string();
  return r.config ? Policy::build(r.config, 1) : nullptr;
}

const Flow kApi{make_address("10.200.0.2"), make_address("10.200.0.3"), 80};
const Flow kProxy{make_address("10.200.0.2"), make_address("10.200.0.4"), 3128};

HttpRequest req(std::string_view target, std::string_view host = "api.local",
                std::string_view method = "GET") {
  HttpRequest r;
  r.method = method;
  r.path = target;
  r.host = host;
  return r;
}

Verdict verdict(const Policy& p, const HttpRequest& r, const Flow& f = kApi) {
  return p.decide_http(f, r).verdict;
}

TEST(CanonicalMatch, PercentEncodingAndDotSegments) {
  const auto p = make();
  EXPECT_EQ(verdict(*p, req("/api/users")), Verdict::allow);
  for (const char* t :
       {"/api/admin", "/api/%61dmin", "/api/%61%64%6d%69%6e/keys", "/api/x/%2e%2e/admin", "/api/./admin",
        "/api//admin", "/api/%2E%2E/api/admin", "/api/secre%74", "http://api.local/api/%61dmin"}) {
    EXPECT_EQ(verdict(*p, req(t)), Verdict::deny) << t;
  }
  // Encoded slashes and invalid escapes have no canonical form by default.
  for (const char* t : {"/api%2Fadmin", "/api/%2e%2e%2fapi/admin", "/api/x%00", "/api/%zz", "/api\\admin"}) {
    const Decision d = p->decide_http(kApi, req(t));
    EXPECT_EQ(d.verdict, Verdict::deny) << t;
    EXPECT_NE(d.reason.find("malformed"), std::string::npos) << d.reason;
  }
}

TEST(CanonicalMatch, TrailingSlashAndDotOnDenyEntries) {
  const auto p = make();
  for (const char* t : {"/api/secret", "/api/secret/", "/api/secret/.", "/api/x/../secret/", "/api/private",
                        "/api/private/", "/api/private/x"}) {
    EXPECT_EQ(verdict(*p, req(t)), Verdict::deny) << t;
  }
  EXPECT_EQ(verdict(*p, req("/api/secrets")), Verdict::allow);
}

TEST(CanonicalMatch, HostAndHeaderValues) {
  const auto p = make();
  for (const char* host :
       {"admin.local", "ADMIN.local", "admin.local.", "admin.local:80", " admin.local\t"}) {
    EXPECT_EQ(verdict(*p, req("/api/x", host)), Verdict::deny) << host;
  }
  // The absolute-form authority is the host; disagreeing with Host is malformed.
  EXPECT_EQ(verdict(*p, req("http://admin.local/api/x", "")), Verdict::deny);
  EXPECT_EQ(verdict(*p, req("http://admin.local/api/x", "api.local")), Verdict::deny);
  EXPECT_EQ(verdict(*p, req("http://api.local/api/x", "api.local")), Verdict::allow);

  HttpRequest team = req("/team");
  team.headers = {{"x-team", "blue"}};
  EXPECT_EQ(verdict(*p, team), Verdict::allow);  // the entry's "blue " is matched as "blue"
  team.headers = {{"x-team", " blue\t"}};
  EXPECT_EQ(verdict(*p, team), Verdict::allow);
  // Allow entries need every line to agree; deny entries any one line.
  team.headers = {{"x-team", "blue"}, {"x-team", "red"}};
  EXPECT_EQ(verdict(*p, team), Verdict::deny);
  HttpRequest role = req("/api/x");
  role.headers = {{"x-role", "guest"}, {"X-Role", "admin "}};
  EXPECT_EQ(verdict(*p, role), Verdict::deny);
  // CGI/WSGI read X_Role as X-Role; applications split lists.
  role.headers = {{"x_role", "admin"}};
  EXPECT_EQ(verdict(*p, role), Verdict::deny);
  role.headers = {{"x-role", "guest, admin"}};
  EXPECT_EQ(verdict(*p, role), Verdict::deny);
  role.headers = {{"x-role", "guest, administrator"}};
  EXPECT_EQ(verdict(*p, role), Verdict::allow);
  team.headers = {{"x-team", "blue"}, {"x_team", "red"}};
  EXPECT_EQ(verdict(*p, team), Verdict::deny);  // allow: every line of the name must agree
}

TEST(CanonicalMatch, DenyEntriesSeePathParametersStripped) {
  const auto p = make();
  for (const char* t : {"/api;x/admin", "/api/admin;jsessionid=1", "/api/secret;x", "/api/;x/admin",
                        "/api/x;y/../admin", "/api;a=b/secret;c/"}) {
    EXPECT_EQ(verdict(*p, req(t)), Verdict::deny) << t;
  }
  EXPECT_EQ(verdict(*p, req("/api/x;y")), Verdict::allow);
}

TEST(CanonicalMatch, DenyOnGetCoversHead) {
  const auto p = make();
  EXPECT_EQ(verdict(*p, req("/api/get-only", "api.local", "HEAD")), Verdict::deny);
  EXPECT_EQ(verdict(*p, req("/api/get-only", "api.local", "POST")), Verdict::allow);
}

TEST(CanonicalMatch, ConnectNeedsAnEntryNamingIt) {
  const auto p = make();
  // An L4 allow and an http entry without a method cover every other request...
  EXPECT_EQ(verdict(*p, req("/x", "proxy"), kProxy), Verdict::allow);
  // ...but not a tunnel.
  EXPECT_EQ(verdict(*p, req("other.example:443", "other.example:443", "CONNECT"), kProxy), Verdict::deny);
  EXPECT_EQ(verdict(*p, req("allowed.example:443", "allowed.example:443", "CONNECT"), kProxy),
            Verdict::allow);
  // The CONNECT target is the host, not the Host header.
  EXPECT_EQ(verdict(*p, req("other.example:443", "allowed.example:443", "CONNECT"), kProxy), Verdict::deny);
  EXPECT_EQ(verdict(*p, req("allowed.example:443", "", "CONNECT"), kProxy), Verdict::allow);
  const HttpRequest tunnel = req("other.example:443", "", "CONNECT");
  const Explanation e = p->explain(kProxy, &tunnel, std::nullopt);
  for (const auto& t : e.trace) {
    if (t.rule == "egress-l4") {
      EXPECT_FALSE(t.matched);
      EXPECT_NE(t.why.find("does not cover CONNECT"), std::string::npos) << t.why;
    }
  }
}

TEST(CanonicalMatch, LintNormalisesAndWarns) {
  const auto r = config::parse_config(std::string(kConfig) + R"(
    - name: odd
      from: {pod: web}
      to: {pod: api}
      action: deny
      http:
        - {path: "/api/%61dmin/./x"}
        - {path: "/api%2Fadmin"}
        - {host: "bad host"}
        - {method: CONNECT, path: /x}
)",
                                      "t.yaml");
  ASSERT_TRUE(r.config) << (r.diagnostics.empty() ? "" : r.diagnostics[0].to_string());
  const auto notes = lint(*r.config);
  std::vector<std::string> text;
  for (const auto& n : notes)
    text.push_back(n.rule + "#" + std::to_string(n.entry) + (n.never ? " never: " : ": ") + n.message);
  const auto has = [&](const std::string& needle) {
    return std::any_of(text.begin(), text.end(),
                       [&](const std::string& t) { return t.find(needle) != std::string::npos; });
  };
  EXPECT_TRUE(has("no-admin#4: host 'admin.local.' is matched as 'admin.local'"));
  EXPECT_TRUE(has("api#2: header x-team value 'blue ' is matched as 'blue'"));
  EXPECT_TRUE(has("odd#1: path '/api/%61dmin/./x' is matched as '/api/admin/x'"));
  EXPECT_TRUE(has("odd#2 never: path '/api%2Fadmin'"));
  EXPECT_TRUE(has("odd#3 never: host 'bad host'"));
  EXPECT_TRUE(has("odd#4 never: a CONNECT request has no path"));
  // An entry that can never match matches nothing (a deny no more than an allow).
  const auto p = Policy::build(r.config, 1);
  EXPECT_EQ(verdict(*p, req("/api%2Fadmin")), Verdict::deny);  // malformed, not matched
}

TEST(CanonicalMatch, ExplainShowsTheCanonicalForm) {
  const auto p = make();
  const HttpRequest r = req("/api/%61dmin/../admin/./keys", "Admin.Local.");
  const Explanation e = p->explain(kApi, &r, std::nullopt);
  ASSERT_TRUE(e.canonical);
  EXPECT_EQ(e.canonical->target, "/api/admin/keys");
  EXPECT_EQ(e.canonical->host, "admin.local");
  ASSERT_TRUE(e.request);
  EXPECT_EQ(e.request->verdict, Verdict::deny);
  EXPECT_EQ(e.request->rule, "no-admin");
}

}  // namespace
}  // namespace shunt::policy

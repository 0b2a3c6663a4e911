// Policy::explain(): the per-rule trace `shunt explain` prints, and a
// randomised check that the indexed decisions agree with that linear,
// rule-by-rule reading of the config.
#include "policy/policy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

namespace shunt::policy {
namespace {

using boost::asio::ip::make_address;
using ::testing::HasSubstr;

std::shared_ptr<const Policy> lab() {
  const auto r = config::load_config_file("config/examples/lab.yaml");
  for (const auto& d : r.diagnostics) ADD_FAILURE() << d.to_string();
  return r.config ? Policy::build(r.config, 7) : nullptr;
}

const RuleTrace& trace_of(const Explanation& e, const std::string& rule) {
  for (const auto& t : e.trace) {
    if (t.rule == rule) return t;
  }
  static const RuleTrace missing{};
  ADD_FAILURE() << "no trace for " << rule;
  return missing;
}

TEST(PolicyExplain, TraceSaysWhyEachRuleDidOrDidNotMatch) {
  const auto p = lab();
  const Flow f{make_address("10.200.0.2"), make_address("10.200.0.3"), 8080};
  const Explanation e = p->explain(f, nullptr, std::nullopt);
  EXPECT_EQ(e.connection.inspect, Inspect::http);
  EXPECT_FALSE(e.request);
  ASSERT_EQ(e.trace.size(), p->config().policy.rules.size());
  EXPECT_EQ(e.trace[0].rule, "web-to-api");  // file order

  const auto& allow = trace_of(e, "web-to-api");
  EXPECT_TRUE(allow.matched);
  EXPECT_EQ(allow.why,
            "from pod web (10.200.0.2) has app=web; to pod api (10.200.0.3) is pod api; port 8080 "
            "is in [8080]; allow per HTTP request (3 http entries; give --method/--path/--host to "
            "test one)");
  EXPECT_EQ(trace_of(e, "web-to-api-bulk").why, "port 8080 is not in [5201]");
  EXPECT_FALSE(trace_of(e, "web-to-api-bulk").matched);
  EXPECT_EQ(trace_of(e, "loopback-bench").why, "from pod web (10.200.0.2) is not in 127.0.0.0/8");
}

TEST(PolicyExplain, SelectorMisses) {
  const auto p = lab();
  // api calling web: wrong labels, wrong pod, and a stranger with no labels.
  Explanation e =
      p->explain({make_address("10.200.0.3"), make_address("10.200.0.3"), 8080}, nullptr, std::nullopt);
  EXPECT_EQ(trace_of(e, "web-to-api").why, "from pod api (10.200.0.3) has app=api, not app=web");
  EXPECT_EQ(trace_of(e, "web-to-api-tls").why, "from pod api (10.200.0.3) is not pod web");
  e = p->explain({make_address("192.0.2.1"), make_address("10.200.0.3"), 8080}, nullptr, std::nullopt);
  EXPECT_EQ(trace_of(e, "web-to-api").why,
            "from 192.0.2.1 is not a pod, so it has no labels (wanted app=web)");
  EXPECT_EQ(trace_of(e, "no-api-admin").why, "from 192.0.2.1 is not in 10.200.0.0/24");
  EXPECT_EQ(e.connection.decision.rule, "default");
  e = p->explain({make_address("10.200.0.2"), make_address("10.200.0.9"), 5201}, nullptr, std::nullopt);
  EXPECT_EQ(trace_of(e, "web-to-api-bulk").why, "to 10.200.0.9 is not pod api");
}

TEST(PolicyExplain, RequestDecisionAndEntryMisses) {
  const auto p = lab();
  const Flow f{make_address("10.200.0.2"), make_address("10.200.0.3"), 8080};
  HttpRequest req;
  req.method = "DELETE";
  req.path = "/api/users/1";
  req.host = "api";
  const Explanation e = p->explain(f, &req, std::nullopt);
  ASSERT_TRUE(e.request);
  EXPECT_EQ(e.request->verdict, Verdict::deny);
  EXPECT_EQ(e.request->rule, "default");
  const auto& t = trace_of(e, "web-to-api");
  EXPECT_FALSE(t.matched);
  EXPECT_THAT(t.why, HasSubstr("no http entry matches (entry 1: method DELETE is not GET; "
                               "entry 2: method DELETE is not POST; entry 3: method DELETE is not GET)"));
  // A TLS rule never applies to an HTTP request.
  const Explanation tls = p->explain({f.src, f.dst, 8443}, &req, std::nullopt);
  EXPECT_EQ(trace_of(tls, "web-to-api-tls").why.substr(trace_of(tls, "web-to-api-tls").why.rfind("; ") + 2),
            "tls rule, does not apply to an HTTP request");
}

TEST(PolicyExplain, RequestAllowedAndDenied) {
  const auto p = lab();
  const Flow f{make_address("10.200.0.2"), make_address("10.200.0.3"), 8080};
  HttpRequest req;
  req.method = "GET";
  req.path = "/api/admin/users";
  const Explanation e = p->explain(f, &req, std::nullopt);
  EXPECT_EQ(e.request->verdict, Verdict::deny);
  EXPECT_EQ(e.request->rule, "no-api-admin");
  EXPECT_THAT(trace_of(e, "web-to-api").why, HasSubstr("http entry 1 matches: allow"));
  EXPECT_THAT(trace_of(e, "no-api-admin").why, HasSubstr("http entry 1 matches: deny"));

  req.method = "POST";
  req.path = "/login";
  req.headers = {{"content-type", "application/json"}};
  EXPECT_EQ(p->explain(f, &req, std::nullopt).request->rule, "web-to-api");
  req.headers = {};
  EXPECT_THAT(trace_of(p->explain(f, &req, std::nullopt), "web-to-api").why,
              HasSubstr("entry 2: header content-type is not 'application/json'"));
}

TEST(PolicyExplain, SniDecision) {
  const auto p = lab();
  const Flow f{make_address("10.200.0.2"), make_address("10.200.0.3"), 8443};
  Explanation e = p->explain(f, nullptr, std::string_view("v2.api.lab.local"));
  ASSERT_TRUE(e.request);
  EXPECT_EQ(e.request->verdict, Verdict::allow);
  EXPECT_THAT(trace_of(e, "web-to-api-tls").why,
              HasSubstr("sni 'v2.api.lab.local' matches *.api.lab.local: allow"));
  e = p->explain(f, nullptr, std::string_view("lab.local"));
  EXPECT_EQ(e.request->verdict, Verdict::deny);
  EXPECT_THAT(trace_of(e, "web-to-api-tls").why,
              HasSubstr("sni 'lab.local' matches none of api.lab.local, *.api.lab.local"));
}

// ---------------------------------------------------------------------------
// Randomised agreement between the index and the linear trace.

std::string random_config(std::mt19937& rng) {
  const auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); };
  std::string y = "proxy: {listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]}\npods:\n";
  for (int i = 0; i < 12; ++i) {
    const std::string ip = i % 3 == 2 ? "\"fd00::" + std::to_string(i + 1) + "\""
                                      : "10.0." + std::to_string(i % 2) + "." + std::to_string(i + 1);
    y += "  - {name: p" + std::to_string(i) + ", ip: " + ip + ", labels: {app: a" + std::to_string(i % 4) +
         ", env: e" + std::to_string(i % 2) + "}}\n";
  }
  y += "policy:\n  default: " + std::string(pick(2) ? "allow" : "deny") + "\n  rules:\n";
  const auto selector = [&](bool to) {
    std::string s;
    switch (pick(3)) {
      case 0:
        s = "pod: p" + std::to_string(pick(12));
        break;
      case 1:
        s = "labels: {app: a" + std::to_string(pick(4)) +
            (pick(2) ? ", env: e" + std::to_string(pick(2)) : "") + "}";
        break;
      default: {
        const char* cidrs[] = {"10.0.0.0/24",   "10.0.1.0/24", "10.0.0.0/16", "0.0.0.0/0",
                               "\"fd00::/64\"", "\"::/0\"",    "10.0.0.4/30", "\"fd00::8/125\""};
        s = std::string("cidr: ") + cidrs[pick(8)];
      }
    }
    if (to && pick(2)) s += pick(2) ? ", ports: [80]" : ", ports: [80, 443]";
    return "{" + s + "}";
  };
  const int rules = 1 + pick(14);
  for (int r = 0; r < rules; ++r) {
    y += "    - name: r" + std::to_string(r) + "\n      from: " + selector(false) +
         "\n      to: " + selector(true) + "\n      action: " + (pick(3) == 0 ? "deny" : "allow") + "\n";
    const int kind = pick(4);
    if (kind == 0) y += "      http: [{path: /a}, {method: POST}]\n";
    if (kind == 1) y += "      tls: {sni: [\"*.x.com\"]}\n";
  }
  return y;
}

config::IpAddress random_ip(std::mt19937& rng) {
  const int i = static_cast<int>(rng() % 14);  // 12 pods and two strangers
  if (i == 12) return make_address("10.0.0.200");
  if (i == 13) return make_address("fd00::9");
  return make_address(i % 3 == 2 ? "fd00::" + std::to_string(i + 1)
                                 : "10.0." + std::to_string(i % 2) + "." + std::to_string(i + 1));
}

enum class Kind { l4, http, tls };

Kind kind_of(const config::Rule& r) { return !r.http.empty() ? Kind::http : r.tls ? Kind::tls : Kind::l4; }

TEST(PolicyExplain, IndexAgreesWithLinearTrace) {
  std::mt19937 rng(1234);
  int checked = 0;
  for (int round = 0; round < 300; ++round) {
    const std::string yaml = random_config(rng);
    const auto loaded = config::parse_config(yaml, "random.yaml");
    ASSERT_TRUE(loaded.config) << loaded.diagnostics[0].to_string() << "\n" << yaml;
    const auto p = Policy::build(loaded.config, 1);
    const auto& rules = loaded.config->policy.rules;
    const Verdict fallback =
        loaded.config->policy.default_action == config::DefaultAction::allow ? Verdict::allow : Verdict::deny;

    for (int k = 0; k < 40; ++k) {
      const Flow f{random_ip(rng), random_ip(rng), static_cast<std::uint16_t>(rng() % 2 ? 80 : 8080)};
      SCOPED_TRACE(yaml + "\nflow " + f.src.to_string() + " -> " + f.dst.to_string() + ":" +
                   std::to_string(f.dst_port));

      // Connection: the reference reads the trace's flow matches.
      const Explanation e = p->explain(f, nullptr, std::nullopt);
      std::string l4_deny, l4_allow, http, tls;
      bool http_deny = false;
      for (std::size_t i = 0; i < rules.size(); ++i) {
        if (!e.trace[i].matched) continue;
        const bool deny = rules[i].action == config::Action::deny;
        auto& slot = kind_of(rules[i]) == Kind::http  ? http
                     : kind_of(rules[i]) == Kind::tls ? tls
                     : deny                           ? l4_deny
                                                      : l4_allow;
        if (slot.empty()) slot = rules[i].name;
        if (kind_of(rules[i]) == Kind::http && deny) http_deny = true;
      }
      const ConnectionDecision& d = e.connection;
      if (!l4_deny.empty()) {
        EXPECT_EQ(d.inspect, Inspect::none);
        EXPECT_EQ(d.decision.verdict, Verdict::deny);
        EXPECT_EQ(d.decision.rule, l4_deny);
      } else if (!http.empty()) {
        EXPECT_EQ(d.inspect, Inspect::http);
        EXPECT_EQ(d.decision.rule, http);
        EXPECT_EQ(d.all_requests_allowed, !http_deny && !l4_allow.empty());
      } else if (!tls.empty()) {
        EXPECT_EQ(d.inspect, Inspect::tls);
        EXPECT_EQ(d.decision.rule, tls);
      } else {
        EXPECT_EQ(d.inspect, Inspect::none);
        EXPECT_EQ(d.decision.rule, l4_allow.empty() ? "default" : l4_allow);
        EXPECT_EQ(d.decision.verdict, l4_allow.empty() ? fallback : Verdict::allow);
      }

      // Request: the trace marks HTTP rules matched only when an entry matches.
      HttpRequest req;
      req.method = rng() % 2 ? "POST" : "GET";
      req.path = rng() % 2 ? "/a/b" : "/b";
      const Explanation er = p->explain(f, &req, std::nullopt);
      std::string deny, allow;
      for (std::size_t i = 0; i < rules.size(); ++i) {
        if (!er.trace[i].matched || kind_of(rules[i]) == Kind::tls) continue;
        auto& slot = rules[i].action == config::Action::deny ? deny : allow;
        if (slot.empty()) slot = rules[i].name;
      }
      const std::string want = !deny.empty() ? deny : !allow.empty() ? allow : "default";
      EXPECT_EQ(er.request->rule, want);
      EXPECT_EQ(er.request->verdict, !deny.empty()    ? Verdict::deny
                                     : !allow.empty() ? Verdict::allow
                                                      : fallback);

      // SNI, the same way.
      const std::string_view sni = rng() % 2 ? "a.x.com" : "x.com";
      const Explanation es = p->explain(f, nullptr, sni);
      deny.clear();
      allow.clear();
      for (std::size_t i = 0; i < rules.size(); ++i) {
        if (!es.trace[i].matched || kind_of(rules[i]) == Kind::http) continue;
        auto& slot = rules[i].action == config::Action::deny ? deny : allow;
        if (slot.empty()) slot = rules[i].name;
      }
      EXPECT_EQ(es.request->rule, !deny.empty() ? deny : !allow.empty() ? allow : "default");
      ++checked;
    }
    if (::testing::Test::HasFailure()) break;  // one readable failure, not thousands
  }
  EXPECT_EQ(checked, 300 * 40);
}

}  // namespace
}  // namespace shunt::policy

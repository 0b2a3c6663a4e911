// Policy decision cost with 10,000 rules (issue 3: "well under a
// microsecond"). Run: build/bench/policy_bench
//
// The rule set mixes what a large cluster has: pod-to-pod L4 rules, label
// rules, CIDR rules and HTTP rules with prefix, exact and regex entries, over
// 2,000 pods. Each benchmark cycles through 1,024 different flows so the
// numbers include realistic cache misses, not one hot bucket.
#include "policy/policy.h"

#include <benchmark/benchmark.h>

#include <random>

namespace {

using namespace shunt;

constexpr int kPods = 2'000;
constexpr int kRules = 10'000;

config::IpAddress pod_ip(int i) {
  return boost::asio::ip::make_address("10.1." + std::to_string(i / 250) + "." + std::to_string(i % 250 + 1));
}

std::shared_ptr<const config::Config> make_config() {
  auto c = std::make_shared<config::Config>();
  for (int i = 0; i < kPods; ++i) {
    c->pods.push_back({"pod" + std::to_string(i),
                       pod_ip(i),
                       {{"app", "svc" + std::to_string(i / 4)}, {"team", "t" + std::to_string(i % 10)}},
                       "",
                       {}});
  }
  std::mt19937 rng(42);
  const auto pod = [&] { return static_cast<int>(rng() % kPods); };
  const auto port = [&] { return static_cast<std::uint16_t>(1000 + rng() % 8000); };
  for (int i = 0; i < kRules; ++i) {
    config::Rule r;
    r.name = "rule" + std::to_string(i);
    r.action = i % 10 == 0 ? config::Action::deny : config::Action::allow;
    switch (i % 10) {
      case 0:
      case 1:
      case 2:
      case 3:
      case 4:
      case 5:
      case 6:  // 70%: pod -> pod:port
        r.from.pod = "pod" + std::to_string(pod());
        r.to.pod = "pod" + std::to_string(pod());
        r.to.ports = {port()};
        break;
      case 7:  // labels -> labels
        r.from.labels = {{"app", "svc" + std::to_string(pod() / 4)}};
        r.to.labels = {{"app", "svc" + std::to_string(pod() / 4)}};
        r.to.ports = {port(), port()};
        break;
      case 8:  // CIDR -> CIDR
        r.from.cidr = config::parse_cidr("10.1." + std::to_string(rng() % 8) + ".0/24");
        r.to.cidr = config::parse_cidr("172.16." + std::to_string(i % 250) + ".0/24");
        r.to.ports = {443};
        break;
      case 9: {  // HTTP
        r.action = config::Action::allow;
        r.from.labels = {{"team", "t" + std::to_string(rng() % 10)}};
        r.to.pod = "pod" + std::to_string(pod());
        r.to.ports = {8080};
        config::HttpMatch a;
        a.method = "GET";
        a.path = "/api/v" + std::to_string(i % 3) + "/";
        config::HttpMatch b;
        b.method = "POST";
        b.path_exact = "/login";
        b.headers = {{"x-team", "blue"}};
        config::HttpMatch re;
        re.path_regex = "^/items/[0-9]+$";
        r.http = {a, b, re};
        break;
      }
    }
    c->policy.rules.push_back(std::move(r));
  }
  return c;
}

const std::shared_ptr<const policy::Policy>& the_policy() {
  static const auto p = policy::Policy::build(make_config(), 1);
  return p;
}

// Flows taken from the rules themselves, so that each one hits.
std::vector<policy::Flow> hit_flows(int kind) {
  const auto& c = the_policy()->config();
  std::vector<policy::Flow> flows;
  for (const auto& r : c.policy.rules) {
    const bool want = kind == 9 ? !r.http.empty() : (r.from.pod && r.http.empty());
    if (!want) continue;
    const auto find = [&](const std::string& name) {
      for (const auto& p : c.pods) {
        if (p.name == name) return p.ip;
      }
      return config::IpAddress{};
    };
    config::IpAddress src = kind == 9 ? config::IpAddress{} : find(*r.from.pod);
    if (kind == 9) {
      for (const auto& p : c.pods) {
        if (p.labels.at("team") == r.from.labels.at("team")) {
          src = p.ip;
          break;
        }
      }
    }
    flows.push_back({src, find(*r.to.pod), r.to.ports.at(0)});
    if (flows.size() == 1024) break;
  }
  return flows;
}

// Decides the 1,024 flows in turn, one per iteration.
void decide_in_turn(benchmark::State& state, const std::vector<policy::Flow>& flows) {
  const auto& p = *the_policy();
  std::size_t i = 0;
  for (auto _ : state) {
    auto d = p.decide_connection(flows[i++ & 1023]);
    benchmark::DoNotOptimize(d);
  }
}

void BM_DecideConnectionHit(benchmark::State& state) {
  const auto& p = *the_policy();
  const auto flows = hit_flows(0);
  std::size_t i = 0;
  int inspected = 0;
  for (auto _ : state) {
    auto d = p.decide_connection(flows[i++ & 1023]);
    inspected += d.decision.rule == "default";
    benchmark::DoNotOptimize(d);
  }
  // Sanity: these flows were built to hit a rule.
  if (inspected != 0) state.SkipWithError("a hit flow fell through to the default");
}
BENCHMARK(BM_DecideConnectionHit);

void BM_DecideConnectionMiss(benchmark::State& state) {
  std::vector<policy::Flow> flows;
  for (int i = 0; i < 1024; ++i) {
    // Pods talking on a port no rule names: every index lookup comes back empty.
    flows.push_back({pod_ip(i), pod_ip((i * 7 + 3) % kPods), 9999});
  }
  decide_in_turn(state, flows);
}
BENCHMARK(BM_DecideConnectionMiss);

void BM_DecideConnectionExternal(benchmark::State& state) {
  // A non-pod source into the CIDR rules: exercises the prefix tables.
  std::vector<policy::Flow> flows;
  for (int i = 0; i < 1024; ++i) {
    flows.push_back({boost::asio::ip::make_address("10.1." + std::to_string(i % 8) + ".77"),
                     boost::asio::ip::make_address("172.16." + std::to_string(i % 250) + ".9"), 443});
  }
  decide_in_turn(state, flows);
}
BENCHMARK(BM_DecideConnectionExternal);

void BM_DecideHttp(benchmark::State& state) {
  const auto& p = *the_policy();
  const auto flows = hit_flows(9);
  const char* paths[] = {"/api/v1/users?limit=10", "/items/12345", "/login", "/nope/../api/v2/x"};
  std::size_t i = 0;
  for (auto _ : state) {
    policy::HttpRequest req;
    req.method = (i & 3) == 2 ? "POST" : "GET";
    req.path = paths[i & 3];
    req.host = "svc.local:8080";
    req.headers = {};
    auto d = p.decide_http(flows[i++ % flows.size()], req);
    benchmark::DoNotOptimize(d);
  }
}
BENCHMARK(BM_DecideHttp);

void BM_BuildPolicy(benchmark::State& state) {
  const auto config = make_config();
  for (auto _ : state) {
    auto p = policy::Policy::build(config, 2);
    benchmark::DoNotOptimize(p);
  }
  state.SetLabel("10,000 rules, 2,000 pods");
}
BENCHMARK(BM_BuildPolicy)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();

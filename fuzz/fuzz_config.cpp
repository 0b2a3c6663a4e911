// The config loader: YAML text -> Config -> Policy, the path of `shunt run`,
// `shunt check` and every reload (config/loader.cpp, policy/policy.cpp).
// A config that loads is then used the way the proxy and `shunt explain`
// use it, on flows between its own pods and the fixed lab addresses, so
// that whatever the loader accepted is also safe to match against.
//
// Checked besides memory and UB errors (an uncaught exception aborts too):
// a load gives a config or diagnostics, never both or neither, and every
// diagnostic says something.
#include "fuzz/fuzz_common.h"

#include <boost/asio/ip/address.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

using shunt::policy::Flow;
using shunt::policy::HttpRequest;

void use(const shunt::policy::Policy& policy, const Flow& flow) {
  const auto c = policy.decide_connection(flow);
  (void)policy.pod_name(flow.src);
  HttpRequest request;
  request.method = "GET";
  request.path = "/api/admin/../x?q=1";
  request.host = "api.local:8080";
  request.headers = {{"x-debug", "1"}, {"content-type", "application/json"}};
  (void)policy.decide_http(flow, request);
  (void)policy.decide_tls(flow, "a.api.local");
  const auto e = policy.explain(flow, &request, std::string_view("api.local"));
  SHUNT_FUZZ_CHECK(e.connection.inspect == c.inspect, "explain and decide_connection disagree");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const shunt::config::LoadResult r = shunt::config::parse_config(text, "fuzz.yaml");
  SHUNT_FUZZ_CHECK((r.config != nullptr) != !r.diagnostics.empty(), "config %s with %zu diagnostics",
                   r.config ? "loaded" : "refused", r.diagnostics.size());
  for (const auto& d : r.diagnostics) {
    SHUNT_FUZZ_CHECK(!d.message.empty(), "empty diagnostic at %d:%d", d.line, d.column);
    (void)d.to_string();
  }
  if (!r.config) return 0;

  const auto policy = shunt::policy::Policy::build(r.config, 1);
  SHUNT_FUZZ_CHECK(policy != nullptr, "a loaded config did not build");

  // Flows between the config's own pods (a few), and the lab's addresses.
  std::vector<shunt::config::IpAddress> addresses;
  for (const auto& pod : r.config->pods) {
    for (const auto& a : pod.addresses()) {
      if (addresses.size() < 4) addresses.push_back(a);
    }
  }
  addresses.push_back(boost::asio::ip::make_address("10.200.0.2"));
  addresses.push_back(boost::asio::ip::make_address("fd00::3"));
  std::vector<std::uint16_t> ports{80, 443};
  for (const auto& rule : r.config->policy.rules) {
    if (!rule.to.ports.empty() && ports.size() < 4) ports.push_back(rule.to.ports.front());
  }
  for (const auto& src : addresses) {
    for (const auto& dst : addresses) {
      for (const std::uint16_t port : ports) use(*policy, Flow{src, dst, port});
    }
  }
  return 0;
}

// Policy::explain(), for `shunt explain`: the decision plus, for every rule
// in file order, why it did or did not apply.
//
// The trace deliberately walks the rules linearly against the config as
// written (Cidr::contains, pod names and labels), not through the index:
// it is a second, simple reading of the same semantics, and the unit tests
// check the two agree.
#include "policy/index.h"
#include "policy/policy.h"

namespace shunt::policy {
namespace {

struct Side {
  bool ok = false;
  std::string text;
};

std::string labels_text(const std::map<std::string, std::string>& labels) {
  std::string out;
  for (const auto& [k, v] : labels) {
    if (!out.empty()) out += ',';
    out += k + '=' + v;
  }
  return out;
}

const config::Pod* pod_at(const config::Config& c, const IpAddress& addr) {
  const auto a = detail::to_addr(addr);
  for (const auto& pod : c.pods) {
    for (const auto& ip : pod.addresses())
      if (detail::to_addr(ip) == a) return &pod;
  }
  return nullptr;
}

Side check_side(std::string_view side, const config::Selector& s, const IpAddress& addr,
                const config::Pod* pod) {
  const std::string who =
      std::string(side) + " " +
      (pod != nullptr ? "pod " + pod->name + " (" + addr.to_string() + ")" : addr.to_string());
  if (s.cidr) {
    const bool in = s.cidr->contains(addr);
    return {in, who + (in ? " is in " : " is not in ") + s.cidr->to_string()};
  }
  if (s.pod) {
    if (pod != nullptr && pod->name == *s.pod) return {true, who + " is pod " + *s.pod};
    return {false, who + " is not pod " + *s.pod};
  }
  if (pod == nullptr) {
    return {false, who + " is not a pod, so it has no labels (wanted " + labels_text(s.labels) + ")"};
  }
  for (const auto& [key, value] : s.labels) {
    const auto it = pod->labels.find(key);
    if (it == pod->labels.end()) return {false, who + " has no label " + key};
    if (it->second != value) {
      return {false, who + " has " + key + '=' + it->second + ", not " + key + '=' + value};
    }
  }
  return {true, who + " has " + labels_text(s.labels)};
}

Side check_port(const config::Selector& to, std::uint16_t port) {
  if (to.ports.empty()) return {true, "any port"};
  std::string list;
  for (const auto p : to.ports) {
    if (!list.empty()) list += ',';
    list += std::to_string(p);
  }
  const bool in = std::find(to.ports.begin(), to.ports.end(), port) != to.ports.end();
  return {in, "port " + std::to_string(port) + (in ? " is in [" : " is not in [") + list + "]"};
}

}  // namespace

Explanation Policy::explain(const Flow& flow, const HttpRequest* request,
                            std::optional<std::string_view> sni) const {
  Explanation out;
  out.connection = decide_connection(flow);
  if (request != nullptr) {
    out.request = decide_http(flow, *request);
  } else if (sni) {
    out.request = decide_tls(flow, *sni);
  }

  detail::PreparedRequest prepared;
  if (request != nullptr) {
    detail::prepare(*request, config_->proxy.http, prepared);
    out.canonical = prepared.canonical;
  }

  const config::Pod* src_pod = pod_at(*config_, flow.src);
  const config::Pod* dst_pod = pod_at(*config_, flow.dst);
  for (std::size_t i = 0; i < config_->policy.rules.size(); ++i) {
    const config::Rule& rule = config_->policy.rules[i];
    const detail::CompiledRule& compiled = index_->rules[i];
    RuleTrace t;
    t.rule = rule.name;

    const Side from = check_side("from", rule.from, flow.src, src_pod);
    const Side to = check_side("to", rule.to, flow.dst, dst_pod);
    const Side port = check_port(rule.to, flow.dst_port);
    if (!from.ok || !to.ok || !port.ok) {
      t.why = !from.ok ? from.text : !to.ok ? to.text : port.text;
      out.trace.push_back(std::move(t));
      continue;
    }
    t.matched = true;
    t.why = from.text + "; " + to.text + "; " + port.text + "; ";
    const std::string action(config::to_string(rule.action));

    switch (compiled.kind) {
      case detail::RuleKind::l4:
        if (request != nullptr && request->method == "CONNECT" && !compiled.deny) {
          t.matched = false;
          t.why += "L4 allow, which does not cover CONNECT (only an http entry with method: CONNECT does)";
        } else {
          t.why += "L4 " + action;
        }
        break;
      case detail::RuleKind::http: {
        if (request == nullptr) {
          t.matched = sni ? false : true;
          t.why += sni ? "http rule, does not apply to a TLS SNI"
                       : action + " per HTTP request (" + std::to_string(rule.http.size()) +
                             (rule.http.size() == 1 ? " http entry" : " http entries") +
                             "; give --method/--path/--host to test one)";
          break;
        }
        std::string misses;
        std::string miss;
        bool hit = false;
        for (std::size_t e = 0; e < compiled.http.size(); ++e) {
          if (detail::http_entry_matches(compiled.http[e], prepared, compiled.deny, &miss)) {
            t.why += entry_label(rule.http[e], e + 1) + " matches: " + action;
            hit = true;
            break;
          }
          // "entry 2" in this list (already inside "no http entry matches").
          const std::string label =
              rule.http[e].grpc ? entry_label(rule.http[e], e + 1) : "entry " + std::to_string(e + 1);
          misses += (misses.empty() ? "" : "; ") + (label + ": " + miss);
        }
        if (!hit) {
          t.matched = false;
          t.why += "no http entry matches (" + misses + ")";
        }
        break;
      }
      case detail::RuleKind::tls: {
        if (!sni) {
          t.matched = request == nullptr;
          t.why += request != nullptr
                       ? "tls rule, does not apply to an HTTP request"
                       : action + " on SNI (" + std::to_string(rule.tls->sni.size()) +
                             (rule.tls->sni.size() == 1 ? " name" : " names") + "; give --sni to test one)";
          break;
        }
        const int p = detail::sni_match(*rule.tls, *sni);
        if (p >= 0) {
          t.why += "sni '" + std::string(*sni) + "' matches " + rule.tls->sni[static_cast<std::size_t>(p)] +
                   ": " + action;
        } else {
          t.matched = false;
          std::string names;
          for (const auto& n : rule.tls->sni) names += (names.empty() ? "" : ", ") + n;
          t.why += "sni '" + std::string(*sni) + "' matches none of " + names;
        }
        break;
      }
    }
    out.trace.push_back(std::move(t));
  }
  return out;
}

}  // namespace shunt::policy

// `shunt check` and `shunt explain` (SPEC.md "CLI"): offline views of a
// config file, with no proxy running and no privileges needed.
#include "cli/cli.h"
#include "cli/table.h"
#include "common/error.h"
#include "config/config.h"
#include "policy/policy.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

namespace shunt::cli {
namespace {

// Loads `path`, printing every diagnostic to stderr; null on failure.
std::shared_ptr<const config::Config> load_or_report(const std::string& path) {
  const config::LoadResult result = config::load_config_file(path);
  for (const auto& d : result.diagnostics) std::cerr << d.to_string() << '\n';
  return result.config;
}

std::string labels_text(const std::map<std::string, std::string>& labels) {
  std::string out;
  for (const auto& [k, v] : labels) out += (out.empty() ? "" : ",") + k + '=' + v;
  return out;
}

std::string selector_text(const config::Selector& s) {
  std::string out = s.pod    ? "pod " + *s.pod
                    : s.cidr ? "cidr " + s.cidr->to_string()
                             : "labels " + labels_text(s.labels);
  if (!s.ports.empty()) {
    out += " ports ";
    for (std::size_t i = 0; i < s.ports.size(); ++i) {
      out += (i == 0 ? "" : ",") + std::to_string(s.ports[i]);
    }
  }
  return out;
}

void print_summary(const config::Config& c) {
  std::cout << c.source << ": OK\n";
  std::cout << "datapath: " << config::to_string(c.proxy.datapath)
            << ", upstream source " << config::to_string(c.proxy.upstream_source)
            << ", steering " << (c.steering.all_ports ? std::string("all ports") : [&] {
                 std::string ports = "ports ";
                 for (std::size_t i = 0; i < c.steering.ports.size(); ++i) {
                   ports += (i == 0 ? "" : ",") + std::to_string(c.steering.ports[i]);
                 }
                 return ports;
               }())
            << ", on proxy down " << config::to_string(c.steering.on_proxy_down) << ", attach "
            << config::to_string(c.steering.attach) << '\n';
  std::cout << "admin: " << config::to_string(c.admin.listen) << '\n';

  std::cout << "listeners (" << c.proxy.listeners.size() << "):\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& l : c.proxy.listeners) {
    rows.push_back({l.name, config::to_string(l.listen),
                    l.transparent ? "transparent" : "forward " + config::to_string(*l.forward)});
  }
  print_table(rows, std::cout, "  ");

  std::cout << "pods (" << c.pods.size() << "):\n";
  rows.clear();
  for (const auto& p : c.pods) {
    std::string ips;
    for (const auto& ip : p.addresses()) ips += (ips.empty() ? "" : ",") + ip.to_string();
    rows.push_back({p.name, ips, labels_text(p.labels), p.dev.empty() ? "" : "dev " + p.dev});
  }
  print_table(rows, std::cout, "  ");

  std::cout << "rules (" << c.policy.rules.size() << "), default "
            << config::to_string(c.policy.default_action) << ":\n";
  rows.clear();
  for (const auto& r : c.policy.rules) {
    const auto count = [](std::size_t n, const char* one, const char* many) {
      return std::to_string(n) + ' ' + (n == 1 ? one : many);
    };
    const auto grpc = static_cast<std::size_t>(
        std::count_if(r.http.begin(), r.http.end(), [](const config::HttpMatch& m) { return m.grpc; }));
    const std::string entries = grpc == 0 ? count(r.http.size(), "entry", "entries")
                                : grpc == r.http.size()
                                    ? count(grpc, "gRPC entry", "gRPC entries")
                                    : count(r.http.size() - grpc, "entry", "entries") + ", " +
                                          count(grpc, "gRPC entry", "gRPC entries");
    const std::string kind = !r.http.empty() ? "http (" + entries + ")"
                             : r.tls         ? "tls (" + count(r.tls->sni.size(), "name", "names") + ")"
                                             : "l4";
    rows.push_back({r.name, std::string(config::to_string(r.action)), kind,
                    selector_text(r.from) + " -> " + selector_text(r.to)});
  }
  print_table(rows, std::cout, "  ");
}

// Entries matched in another (canonical) form, and entries that can never
// match: not errors (the file is valid), but what the author wrote is not
// what shunt compares.
void print_notes(const config::Config& c) {
  const auto notes = policy::lint(c);
  if (notes.empty()) return;
  std::cout << "http entries (matched in canonical form, docs/policy.md):\n";
  for (const auto& n : notes) {
    const auto rule = std::find_if(c.policy.rules.begin(), c.policy.rules.end(),
                                   [&](const config::Rule& r) { return r.name == n.rule; });
    const std::string label = rule != c.policy.rules.end() && n.entry - 1 < rule->http.size()
                                  ? policy::entry_label(rule->http[n.entry - 1], n.entry)
                                  : "http entry " + std::to_string(n.entry);
    std::cout << "  " << (n.never ? "warning: " : "note: ") << c.source << ":" << n.line << ": rule '"
              << n.rule << "' " << label << ": " << n.message
              << (n.never ? " (this entry can never match)" : "") << '\n';
  }
}

void add_check(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("check", "Validate a config file and summarise it");
  auto path = std::make_shared<std::string>();
  cmd->add_option("-c,--config", *path, "Config file")->required();
  cmd->callback([path, &exit_code] {
    const auto config = load_or_report(*path);
    if (!config) {
      exit_code = kExitBadInput;
      return;
    }
    print_summary(*config);
    print_notes(*config);
    exit_code = kExitOk;
  });
}

struct ExplainArgs {
  std::string config;
  std::string from;
  std::string to;
  std::string method;
  std::string path;
  std::string host;
  std::vector<std::string> headers;
  std::string sni;
};

std::string describe(const config::IpAddress& addr, const std::string& pod) {
  return pod.empty() ? addr.to_string() : addr.to_string() + " (pod " + pod + ")";
}

std::string describe(const policy::Decision& d) {
  return std::string(policy::to_string(d.verdict)) + ", rule " + d.rule + ": " + d.reason;
}

int run_explain(const ExplainArgs& args, bool http_given, bool sni_given) {
  const auto from = config::parse_ip(args.from);
  if (!from) {
    std::cerr << "shunt explain: --from '" << args.from << "' is not an IPv4 or IPv6 address\n";
    return kExitBadInput;
  }
  const auto to = config::parse_endpoint(args.to);
  if (!to) {
    std::cerr << "shunt explain: --to '" << args.to
              << "' is not IP:PORT (e.g. 10.200.0.3:8080 or [fd00::3]:8080)\n";
    return kExitBadInput;
  }
  policy::HttpRequest request;
  std::vector<std::pair<std::string, std::string>> headers;
  for (const auto& h : args.headers) {
    const auto colon = h.find(':');
    if (colon == std::string::npos || colon == 0) {
      std::cerr << "shunt explain: --header '" << h << "' is not NAME:VALUE\n";
      return kExitBadInput;
    }
    std::string name = h.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(),
                   [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    std::string value = h.substr(colon + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    request.headers.emplace_back(std::move(name), std::move(value));
  }
  const auto config = load_or_report(args.config);
  if (!config) return kExitBadInput;

  const auto pol = policy::Policy::build(config, 0);
  const policy::Flow flow{*from, to->address(), to->port()};
  request.method = args.method.empty() ? std::string_view("GET") : std::string_view(args.method);
  request.path = args.path.empty() ? std::string_view("/") : std::string_view(args.path);
  request.host = args.host;
  std::optional<std::string_view> sni;
  if (sni_given) sni = args.sni;
  const policy::Explanation e = pol->explain(flow, http_given ? &request : nullptr, sni);

  const auto& conn = e.connection;
  const std::string pod_suffix = conn.dst_pod.empty() ? "" : " (pod " + conn.dst_pod + ")";
  std::cout << "flow:       " << describe(flow.src, conn.src_pod) << " -> " << config::to_string(*to)
            << pod_suffix << '\n';
  if (conn.inspect == policy::Inspect::none) {
    std::cout << "connection: " << describe(conn.decision) << '\n';
  } else {
    std::cout << "connection: inspect " << policy::to_string(conn.inspect) << ", rule " << conn.decision.rule
              << ": " << conn.decision.reason << '\n';
    if (conn.all_requests_allowed) {
      std::cout << "            every request is allowed: handed to the kernel after the first "
                   "request head\n";
    }
  }
  if (e.request) {
    if (http_given) {
      std::cout << "request:    " << request.method << ' ' << request.path;
      if (!request.host.empty()) std::cout << " host " << request.host;
      for (const auto& [n, v] : request.headers) std::cout << ' ' << n << ": " << v;
      if (e.canonical && e.canonical->error.empty()) {
        std::cout << "\ncanonical:  " << request.method << ' ' << e.canonical->target;
        if (!e.canonical->host.empty()) std::cout << " host " << e.canonical->host;
        std::cout << " (path " << e.canonical->path << ")";
      } else if (e.canonical) {
        std::cout << "\ncanonical:  none, the proxy answers 400: " << e.canonical->error;
      }
      std::cout << "\n            " << describe(*e.request) << '\n';
    } else {
      std::cout << "sni:        " << (args.sni.empty() ? "(none)" : args.sni) << "\n            "
                << describe(*e.request) << '\n';
    }
  }
  std::string verdict;
  if (e.request) {
    verdict = std::string(policy::to_string(e.request->verdict)) + " (rule " + e.request->rule + ")";
  } else if (conn.inspect == policy::Inspect::none) {
    verdict = std::string(policy::to_string(conn.decision.verdict)) + " (rule " + conn.decision.rule + ")";
  } else if (conn.all_requests_allowed) {
    verdict = "allow (every request)";
  } else {
    verdict = conn.inspect == policy::Inspect::http ? "depends on each request: give --method/--path/--host"
                                                    : "depends on the SNI: give --sni";
  }
  std::cout << "verdict:    " << verdict << '\n';

  std::cout << "rules:\n";
  for (std::size_t i = 0; i < e.trace.size(); ++i) {
    const auto& t = e.trace[i];
    std::cout << "  " << (t.matched ? "match  " : "no     ") << t.rule << " (line "
              << config->policy.rules[i].line << "): " << t.why << '\n';
  }
  if (e.trace.empty()) std::cout << "  (no rules)\n";
  return kExitOk;
}

void add_explain(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand(
      "explain", "Show how the policy decides a connection and, optionally, a request or SNI");
  auto args = std::make_shared<ExplainArgs>();
  cmd->add_option("-c,--config", args->config, "Config file")->required();
  cmd->add_option("--from", args->from, "Client IP address")->required();
  cmd->add_option("--to", args->to, "Destination IP:PORT ([IPv6]:PORT)")->required();
  auto* method = cmd->add_option("--method", args->method, "HTTP method (default GET)");
  auto* path = cmd->add_option("--path", args->path, "HTTP request target (default /)");
  auto* host = cmd->add_option("--host", args->host, "HTTP Host header");
  auto* header = cmd->add_option("--header", args->headers, "HTTP header NAME:VALUE (repeatable)");
  auto* sni = cmd->add_option("--sni", args->sni, "TLS ClientHello server name");
  for (auto* http : {method, path, host, header}) sni->excludes(http);
  cmd->callback([args, method, path, host, header, sni, &exit_code] {
    const bool http_given = method->count() + path->count() + host->count() + header->count() > 0;
    exit_code = run_explain(*args, http_given, sni->count() > 0);
  });
}

}  // namespace

void add_check_commands(CLI::App& app, int& exit_code) {
  add_check(app, exit_code);
  add_explain(app, exit_code);
}

}  // namespace shunt::cli

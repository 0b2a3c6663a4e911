// `shunt status` and `shunt conns` (SPEC.md "CLI"): a person's view of a
// running proxy, read from its admin API (/readyz, /config, /metrics,
// /connections). `--json` prints what the API returned, for scripts.
#include "cli/cli.h"
#include "cli/table.h"
#include "common/error.h"
#include "config/config.h"

#include <CLI/CLI.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/property_tree/json_parser.hpp>
#include <boost/property_tree/ptree.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace shunt::cli {
namespace {

namespace asio = boost::asio;
namespace pt = boost::property_tree;
using asio::ip::tcp;

constexpr auto kRequestTimeout = std::chrono::seconds(5);

struct AdminOptions {
  std::string config_path;
  std::string admin;
  bool json = false;
};

// A failure that ends the command: exit code plus the one stderr line.
struct CommandError {
  int code;
  std::string message;
};

struct HttpReply {
  int status = 0;
  std::string body;
};

// Where the admin API listens: --admin, else the config's admin.listen,
// else the default. A wildcard listen address is reached over loopback.
config::Endpoint admin_endpoint(const AdminOptions& o) {
  if (!o.admin.empty()) {
    auto ep = config::parse_endpoint(o.admin);
    if (!ep)
      throw CommandError{kExitBadInput, "--admin " + o.admin + ": expected HOST:PORT, e.g. 127.0.0.1:15000"};
    return *ep;
  }
  const std::string path = config_path_or_system(o.config_path);
  config::Endpoint ep = config::Admin{}.listen;
  if (!path.empty()) {
    const auto loaded = config::load_config_file(path);
    if (!loaded.config) throw CommandError{kExitBadInput, loaded.diagnostics.front().to_string()};
    ep = loaded.config->admin.listen;
  }
  if (ep.address().is_unspecified())
    ep.address(ep.address().is_v6() ? asio::ip::address(asio::ip::address_v6::loopback())
                                    : asio::ip::address(asio::ip::address_v4::loopback()));
  return ep;
}

// One GET, with a deadline over connect, write and read.
HttpReply http_get(const config::Endpoint& ep, const std::string& path) {
  asio::io_context io;
  tcp::socket socket(io);
  boost::system::error_code ec = asio::error::timed_out;
  std::string response;
  socket.async_connect(ep, [&](boost::system::error_code connect_ec) {
    if (connect_ec) {
      ec = connect_ec;
      return;
    }
    static const std::string kHead =
        " HTTP/1.1\r\nHost: shunt\r\nUser-Agent: shunt-cli\r\nConnection: close\r\n\r\n";
    auto request = std::make_shared<std::string>("GET " + path + kHead);
    asio::async_write(
        socket, asio::buffer(*request), [&, request](boost::system::error_code write_ec, std::size_t) {
          if (write_ec) {
            ec = write_ec;
            return;
          }
          asio::async_read(socket, asio::dynamic_buffer(response),
                           [&](boost::system::error_code read_ec, std::size_t) {
                             ec = read_ec == asio::error::eof ? boost::system::error_code{} : read_ec;
                           });
        });
  });
  io.run_for(kRequestTimeout);
  const std::string where = "the admin API at " + config::to_string(ep);
  if (ec)
    throw CommandError{kExitEnvironment,
                       "cannot reach " + where + " (" + ec.message() + "); is `shunt run` running?"};
  HttpReply reply;
  const auto head_end = response.find("\r\n\r\n");
  if (response.rfind("HTTP/1.", 0) != 0 || head_end == std::string::npos)
    throw CommandError{kExitEnvironment, where + " sent no HTTP response to GET " + path};
  reply.status = std::atoi(response.c_str() + response.find(' ') + 1);
  reply.body = response.substr(head_end + 4);
  return reply;
}

std::string get_ok(const config::Endpoint& ep, const std::string& path) {
  HttpReply r = http_get(ep, path);
  if (r.status != 200)
    throw CommandError{kExitEnvironment,
                       "GET " + path + " on " + config::to_string(ep) + ": HTTP " + std::to_string(r.status)};
  return r.body;
}

pt::ptree parse_json(const std::string& text, const std::string& what) {
  pt::ptree tree;
  std::istringstream in(text);
  try {
    pt::read_json(in, tree);
  } catch (const pt::json_parser_error& e) {
    throw CommandError{kExitEnvironment, what + ": not valid JSON: " + e.message()};
  }
  return tree;
}

// Samples of a Prometheus text body: "name{labels}" -> value.
std::map<std::string, double> parse_metrics(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto sp = line.rfind(' ');
    if (sp == std::string::npos) continue;
    out[line.substr(0, sp)] = std::strtod(line.c_str() + sp + 1, nullptr);
  }
  return out;
}

std::string human_bytes(double n) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (n >= 1024 && u < 4) {
    n /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.1f %s", n, units[u]);
  return buf;
}

std::string count(double n) { return std::to_string(static_cast<unsigned long long>(n)); }

int run_status(const AdminOptions& o) {
  const config::Endpoint ep = admin_endpoint(o);
  const HttpReply ready = http_get(ep, "/readyz");
  const std::string config_text = get_ok(ep, "/config");
  const std::string metrics_text = get_ok(ep, "/metrics");
  if (o.json) {
    // One object: readiness, the config and the metrics as name -> value.
    std::cout << "{\"admin\":\"" << config::to_string(ep)
              << "\",\"ready\":" << (ready.status == 200 ? "true" : "false")
              << ",\"config\":" << config_text.substr(0, config_text.find_last_not_of("\n") + 1)
              << ",\"metrics\":{";
    bool first = true;
    for (const auto& [name, value] : parse_metrics(metrics_text)) {
      std::string escaped;
      for (char c : name) escaped += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
      char num[64];
      std::snprintf(num, sizeof(num), "%.17g", value);
      std::cout << (first ? "" : ",") << '"' << escaped << "\":" << num;
      first = false;
    }
    std::cout << "}}\n";
    return kExitOk;
  }

  const pt::ptree cfg = parse_json(config_text, "/config");
  const auto m = parse_metrics(metrics_text);
  auto metric = [&](const std::string& key) {
    auto it = m.find(key);
    return it == m.end() ? 0.0 : it->second;
  };
  auto ready_text = ready.body;
  while (!ready_text.empty() && ready_text.back() == '\n') ready_text.pop_back();

  std::vector<std::vector<std::string>> rows;
  rows.push_back({"admin", config::to_string(ep) + ": " + ready_text});
  rows.push_back({"config", cfg.get<std::string>("source", "?") + " (generation " +
                                cfg.get<std::string>("generation", "?") + ")"});
  rows.push_back({"datapath", cfg.get<std::string>("proxy.datapath", "?")});
  pt::ptree listeners;
  if (auto found = cfg.get_child_optional("proxy.listeners")) listeners = *found;
  for (const auto& [_, l] : listeners) {
    const auto forward = l.get_optional<std::string>("forward");
    rows.push_back({"listener", l.get<std::string>("name") + "  " + l.get<std::string>("listen") + "  " +
                                    (forward ? "forward to " + *forward : std::string("transparent"))});
  }
  std::string active;
  double active_total = 0;
  for (const char* dp : {"sockmap", "splice", "copy"}) {
    const double n = metric(std::string("shunt_connections_active{datapath=\"") + dp + "\"}");
    active_total += n;
    active += std::string(active.empty() ? "" : ", ") + dp + " " + count(n);
  }
  rows.push_back({"connections", count(active_total) + " open (" + active + ")"});
  rows.push_back({"closed", count(metric("shunt_connections_total{verdict=\"allow\"}")) + " allowed, " +
                                count(metric("shunt_connections_total{verdict=\"deny\"}")) + " denied"});
  double up = 0, down = 0;
  for (const char* dp : {"sockmap", "splice", "copy"}) {
    up += metric(std::string("shunt_bytes_total{direction=\"up\",datapath=\"") + dp + "\"}");
    down += metric(std::string("shunt_bytes_total{direction=\"down\",datapath=\"") + dp + "\"}");
  }
  rows.push_back({"bytes", human_bytes(up) + " up, " + human_bytes(down) + " down"});
  rows.push_back(
      {"http requests", count(metric("shunt_http_requests_total{verdict=\"allow\"}")) + " allowed, " +
                            count(metric("shunt_http_requests_total{verdict=\"deny\"}")) + " denied"});
  rows.push_back({"reloads", count(metric("shunt_config_reloads_total{result=\"ok\"}")) + " ok, " +
                                 count(metric("shunt_config_reloads_total{result=\"error\"}")) +
                                 " rejected"});
  // shunt_steering_attachments{device="sh-web",hook="tcx"} -> "sh-web tcx"
  std::map<std::string, std::string> steered;
  for (const auto& [key, n] : m) {
    const std::string prefix = "shunt_steering_attachments{device=\"";
    const auto hook_at = key.find("\",hook=\"");
    if (key.rfind(prefix, 0) != 0 || hook_at == std::string::npos) continue;
    const std::string device = key.substr(prefix.size(), hook_at - prefix.size());
    const std::string hook = key.substr(hook_at + 8, key.size() - hook_at - 10);
    steered[device] += (steered[device].empty() ? "" : "+") + hook;
  }
  std::string steering;
  for (const auto& [device, hooks] : steered)
    steering += (steering.empty() ? "" : ", ") + device + " " + hooks;
  rows.push_back({"steering", steering.empty() ? "none" : steering});
  std::string fallbacks;
  for (const auto& [key, n] : m) {
    const std::string prefix = "shunt_datapath_fallbacks_total{reason=\"";
    // Every reason is exported from 0; the status names only those seen.
    if (key.rfind(prefix, 0) == 0 && n > 0)
      fallbacks += (fallbacks.empty() ? "" : ", ") +
                   key.substr(prefix.size(), key.size() - prefix.size() - 2) + " " + count(n);
  }
  rows.push_back({"fallbacks", fallbacks.empty() ? "none" : fallbacks});
  rows.push_back({"access log", cfg.get<std::string>("log.access", "?") + " (" +
                                    count(metric("shunt_access_log_dropped_total")) + " lines dropped)"});
  rows.push_back({"process", human_bytes(metric("process_resident_memory_bytes")) + " resident, " +
                                 count(metric("process_open_fds")) + " open fds"});
  print_table(rows, std::cout);
  return kExitOk;
}

int run_conns(const AdminOptions& o) {
  const config::Endpoint ep = admin_endpoint(o);
  const std::string body = get_ok(ep, "/connections");
  if (o.json) {
    std::cout << body;
    return kExitOk;
  }
  const pt::ptree conns = parse_json(body, "/connections");
  std::vector<std::vector<std::string>> rows{
      {"ID", "SRC", "DST", "SRC_POD", "DST_POD", "RULE", "DATAPATH", "UP", "DOWN", "AGE"}};
  auto or_dash = [](std::string s) { return s.empty() ? std::string("-") : s; };
  for (const auto& [_, c] : conns) {
    char age[32];
    std::snprintf(age, sizeof(age), "%.1fs", c.get<double>("age_s", 0));
    rows.push_back({c.get<std::string>("id", ""), c.get<std::string>("src", ""),
                    c.get<std::string>("dst", ""), or_dash(c.get<std::string>("src_pod", "")),
                    or_dash(c.get<std::string>("dst_pod", "")), or_dash(c.get<std::string>("rule", "")),
                    c.get<std::string>("datapath", ""), human_bytes(c.get<double>("bytes_up", 0)),
                    human_bytes(c.get<double>("bytes_down", 0)), age});
  }
  print_table(rows, std::cout);
  std::cout << conns.size() << " open connection(s)\n";
  return kExitOk;
}

void add_admin_command(CLI::App& app, int& exit_code, const std::string& name, const std::string& help,
                       int (*run)(const AdminOptions&)) {
  auto options = std::make_shared<AdminOptions>();
  auto* cmd = app.add_subcommand(name, help);
  cmd->add_option("-c,--config", options->config_path,
                  std::string("Read admin.listen from this config (default: ") + kSystemConfig +
                      " if present, else 127.0.0.1:15000)");
  cmd->add_option("--admin", options->admin, "Admin API address HOST:PORT (overrides -c)");
  cmd->add_flag("--json", options->json, "Print the admin API's JSON instead of a table");
  cmd->callback([options, run, name, &exit_code] {
    try {
      exit_code = run(*options);
    } catch (const CommandError& e) {
      std::cerr << "shunt " << name << ": " << e.message << '\n';
      exit_code = e.code;
    } catch (const pt::ptree_error& e) {
      std::cerr << "shunt: unexpected admin API answer: " << e.what() << '\n';
      exit_code = kExitEnvironment;
    }
  });
}

}  // namespace

void add_admin_commands(CLI::App& app, int& exit_code) {
  add_admin_command(app, exit_code, "status", "Show the running proxy's state (admin API)", run_status);
  add_admin_command(app, exit_code, "conns", "List the running proxy's open connections (admin API)",
                    run_conns);
}

}  // namespace shunt::cli

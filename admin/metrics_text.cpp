#include "admin/metrics_text.h"

#include "common/async.h"
#include "proxy/metrics.h"
#include "proxy/observer.h"
#include "proxy/proxy_context.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace shunt::proxy {

namespace {

constexpr std::string_view kDatapaths[kDatapathCount] = {"sockmap", "splice", "copy"};

// The shortest form that reads back as the same double: "0.02", not
// "0.020000000000000001".
std::string format_double(double v) {
  char buf[64];
  for (int precision = 15; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

}  // namespace

std::string escape_label_value(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string escape_help(std::string_view help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

void PromText::family(std::string_view name, std::string_view type, std::string_view help) {
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  out_ += escape_help(help);
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += ' ';
  out_ += type;
  out_ += '\n';
}

void PromText::labels(std::initializer_list<Label> labels) {
  if (labels.size() == 0) return;
  out_ += '{';
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out_ += ',';
    first = false;
    out_ += k;
    out_ += "=\"";
    out_ += escape_label_value(v);
    out_ += '"';
  }
  out_ += '}';
}

void PromText::sample(std::string_view name, std::initializer_list<Label> l, std::uint64_t value) {
  out_ += name;
  labels(l);
  out_ += ' ';
  out_ += std::to_string(value);
  out_ += '\n';
}

void PromText::sample(std::string_view name, std::initializer_list<Label> l, double value) {
  out_ += name;
  labels(l);
  out_ += ' ';
  out_ += format_double(value);
  out_ += '\n';
}

ProcessStats read_process_stats() {
  ProcessStats s;
  const long page = ::sysconf(_SC_PAGESIZE);
  const long ticks = ::sysconf(_SC_CLK_TCK);
  {
    std::ifstream statm("/proc/self/statm");
    std::uint64_t size = 0, resident = 0;
    if (statm >> size >> resident) s.resident_bytes = resident * static_cast<std::uint64_t>(page);
  }
  if (DIR* dir = ::opendir("/proc/self/fd")) {
    while (const dirent* e = ::readdir(dir))
      if (e->d_name[0] != '.') ++s.open_fds;
    ::closedir(dir);
    if (s.open_fds > 0) --s.open_fds;  // the directory stream's own fd
  }
  rlimit nofile{};
  if (::getrlimit(RLIMIT_NOFILE, &nofile) == 0) s.max_fds = nofile.rlim_cur;

  // /proc/self/stat: the command name (field 2) may contain spaces, so
  // fields are counted from its closing parenthesis.
  std::ifstream stat_file("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
  const auto paren = stat.rfind(')');
  if (paren != std::string::npos && ticks > 0) {
    std::istringstream fields(stat.substr(paren + 2));
    std::string field;
    std::uint64_t utime = 0, stime = 0, start_ticks = 0;
    // After ")": field 3 (state) is index 0; utime is field 14, stime 15,
    // starttime 22.
    for (int i = 0; fields >> field; ++i) {
      if (i == 11) utime = std::stoull(field);
      if (i == 12) stime = std::stoull(field);
      if (i == 19) {
        start_ticks = std::stoull(field);
        break;
      }
    }
    s.cpu_seconds = static_cast<double>(utime + stime) / static_cast<double>(ticks);
    std::ifstream proc_stat("/proc/stat");
    std::string line;
    while (std::getline(proc_stat, line)) {
      if (line.rfind("btime ", 0) == 0) {
        s.start_time_seconds =
            static_cast<double>(std::stoull(line.substr(6))) + static_cast<double>(start_ticks) / ticks;
        break;
      }
    }
  }
  return s;
}

std::string render_metrics(const ProxyContext& context, const bpf::PodSteering* steering) {
  const auto& m = metrics();
  PromText p;

  // Live connections: count and bytes per data path, bytes from the kernel
  // counters for sockmap pairs. Closed connections' bytes were folded into
  // closed_bytes when they finished.
  std::uint64_t active[kDatapathCount] = {};
  std::uint64_t live[2][kDatapathCount] = {};
  // Open connections and closed totals from one snapshot: a connection
  // closing during the scrape is counted once, never dropped or doubled.
  const RegistrySnapshot registry = context.registry.snapshot_with_totals();
  for (const auto& info : registry.open) {
    const auto dp = index_of(info->datapath.load(std::memory_order_relaxed));
    const ConnectionBytes b = context.registry.bytes(*info);
    ++active[dp];
    live[0][dp] += b.up;
    live[1][dp] += b.down;
  }

  p.family("shunt_connections_active", "gauge", "Open proxied connections by data path.");
  for (std::size_t d = 0; d < kDatapathCount; ++d)
    p.sample("shunt_connections_active", {{"datapath", kDatapaths[d]}}, active[d]);

  p.family("shunt_connections_total", "counter", "Closed connections by final verdict.");
  p.sample("shunt_connections_total", {{"verdict", "allow"}}, m.connections_allowed.load());
  p.sample("shunt_connections_total", {{"verdict", "deny"}}, m.connections_denied.load());

  p.family("shunt_bytes_total", "counter",
           "Payload bytes proxied; up is client to server. Includes open connections, kernel-spliced ones "
           "read from BPF counters.");
  for (std::size_t dir = 0; dir < 2; ++dir) {
    for (std::size_t d = 0; d < kDatapathCount; ++d) {
      p.sample(
          "shunt_bytes_total",
          {{"direction", std::string(to_string(static_cast<Direction>(dir)))}, {"datapath", kDatapaths[d]}},
          registry.closed_bytes[dir][d] + live[dir][d]);
    }
  }

  p.family("shunt_http_requests_total", "counter",
           "Inspected HTTP requests (HTTP/1.1 requests, HTTP/2 streams) by verdict and protocol.");
  p.sample("shunt_http_requests_total", {{"verdict", "allow"}, {"protocol", "h1"}},
           m.http_requests_allowed.load());
  p.sample("shunt_http_requests_total", {{"verdict", "deny"}, {"protocol", "h1"}},
           m.http_requests_denied.load());
  p.sample("shunt_http_requests_total", {{"verdict", "allow"}, {"protocol", "h2"}},
           m.http2_requests_allowed.load());
  p.sample("shunt_http_requests_total", {{"verdict", "deny"}, {"protocol", "h2"}},
           m.http2_requests_denied.load());

  p.family("shunt_http2_active_streams", "gauge", "Open HTTP/2 streams on inspected client connections.");
  p.sample("shunt_http2_active_streams", {},
           static_cast<std::uint64_t>(
               std::max<std::int64_t>(0, m.http2_active_streams.load(std::memory_order_relaxed))));
  p.family("shunt_http2_goaways_total", "counter",
           "GOAWAY frames sent to HTTP/2 clients by error code (no_error: drain or upstream gone; "
           "enhance_your_calm, protocol_error, ...: the connection ended for what the client sent).");
  for (const auto& [code, n] : m.http2_goaways.snapshot())
    p.sample("shunt_http2_goaways_total", {{"code", code}}, n);

  p.family("shunt_policy_decisions_total", "counter",
           "Policy decisions by deciding rule (or default) and verdict.");
  // The rules of the running config at 0 with the verdict each decides
  // (its action; default: policy.default), so a rule that has not decided
  // yet is a series already.
  auto decisions = m.policy_decisions.snapshot();
  {
    const auto& policy = context.policy.current()->config().policy;
    for (const auto& rule : policy.rules)
      decisions.try_emplace(Metrics::decision_key(rule.name, rule.action == config::Action::allow), 0);
    decisions.try_emplace(
        Metrics::decision_key("default", policy.default_action == config::DefaultAction::allow), 0);
  }
  for (const auto& [key, n] : decisions) {
    const auto sep = key.find('\x1f');
    const std::string_view k(key);
    p.sample("shunt_policy_decisions_total", {{"rule", k.substr(0, sep)}, {"verdict", k.substr(sep + 1)}}, n);
  }

  p.family("shunt_config_generation", "gauge",
           "Generation of the active config; 1 at start, +1 per accepted reload.");
  p.sample("shunt_config_generation", {}, m.config_generation.load());

  p.family("shunt_coroutine_failures_total", "counter",
           "Coroutines ended by an exception (logged; common/async.h).");
  p.sample("shunt_coroutine_failures_total", {}, coroutine_failures().load());
  p.family("shunt_config_reloads_total", "counter",
           "Config reloads by result; error keeps the previous config.");
  p.sample("shunt_config_reloads_total", {{"result", "ok"}}, m.config_reloads_ok.load());
  p.sample("shunt_config_reloads_total", {{"result", "error"}}, m.config_reloads_error.load());

  p.family("shunt_takeovers_total", "counter",
           "Takeovers this process took part in (handing over or taking over), by result; anything but ok "
           "leaves the running process serving.");
  for (std::size_t i = 0; i < kTakeoverResultNames.size(); ++i)
    p.sample("shunt_takeovers_total", {{"result", kTakeoverResultNames[i]}}, m.takeovers[i].load());
  p.family("shunt_takeover_listeners_transferred_total", "counter",
           "Listening sockets handed on (old process) or received (new process) in takeovers.");
  p.sample("shunt_takeover_listeners_transferred_total", {}, m.takeover_listeners.load());
  p.family("shunt_takeover_connections_transferred_total", "counter",
           "Open connections handed on (old process) or adopted (new process) in takeovers, by data path; "
           "the others drain in the old process.");
  for (const config::Datapath d :
       {config::Datapath::sockmap, config::Datapath::splice, config::Datapath::copy})
    p.sample("shunt_takeover_connections_transferred_total",
             {{"datapath", std::string(config::to_string(d))}},
             m.takeover_connections[static_cast<std::size_t>(d)].load());
  p.family("shunt_takeover_connections_stayed_total", "counter",
           "Open connections the old process still held when a takeover stopped moving them (its boundary "
           "window closed); they drain in the old process.");
  p.sample("shunt_takeover_connections_stayed_total", {}, m.takeover_connections_stayed.load());
  p.family("shunt_takeover_duration_seconds", "gauge",
           "How long the last takeover took, from the new process's hello to the end (either side).");
  p.sample("shunt_takeover_duration_seconds", {},
           static_cast<double>(m.takeover_last_duration_us.load()) / 1e6);

  p.family(
      "shunt_datapath_fallbacks_total", "counter",
      "Connections the kernel refused for the sockmap, by reason (they continue on splice); and, with "
      "a direction, senders left on the sk_skb path rather than the endpoint short-circuit (shortcut_*; "
      "direction=\"down\" is a server's, which is on another node for most traffic: shortcut_not_local).");
  for (const auto& [reason, n] : m.datapath_fallbacks.snapshot())
    p.sample("shunt_datapath_fallbacks_total", {{"reason", reason}}, n);
  for (std::size_t dir = 0; dir < m.shortcut_fallbacks.size(); ++dir)
    for (const auto& [reason, n] : m.shortcut_fallbacks[dir].snapshot())
      p.sample("shunt_datapath_fallbacks_total",
               {{"reason", reason}, {"direction", std::string(to_string(static_cast<Direction>(dir)))}}, n);

  p.family("shunt_connection_ends_total", "counter",
           "Closed connections by why they ended (the access log's `reason`): which side closed or "
           "reset first, or shunt's own cause.");
  for (EndReason r : kEndReasons)
    p.sample("shunt_connection_ends_total", {{"reason", std::string(to_string(r))}},
             m.connection_ends[static_cast<std::size_t>(r)].load());

  p.family("shunt_sockmap_backlog_dropped_bytes_total", "counter",
           "Bytes the sockmap verdict redirected that had not reached the peer socket when the pair ended "
           "(a reset cut them; never expected after a clean close).");
  p.sample("shunt_sockmap_backlog_dropped_bytes_total", {}, m.sockmap_backlog_dropped_bytes.load());

  p.family("shunt_sockmap_holds_total", "counter",
           "Times a sockmap pair's verdict held bytes on the source socket because the target's backlog "
           "was over its limit (a receiver slower than its sender; docs/datapath.md, \"Memory bound\").");
  p.sample("shunt_sockmap_holds_total", {}, m.sockmap_holds.load());
  p.family("shunt_sockmap_held_bytes_total", "counter",
           "Bytes a holding sockmap verdict kept on the source socket, which shunt then wrote to the target "
           "itself.");
  p.sample("shunt_sockmap_held_bytes_total", {}, m.sockmap_held_bytes.load());
  p.family("shunt_sockmap_repeated_bytes_total", "counter",
           "Bytes the sockmap verdict cut from retransmitted segments because its socket had received them "
           "already (docs/datapath.md, \"Repeated bytes in a retransmitted segment\").");
  p.sample("shunt_sockmap_repeated_bytes_total", {}, m.sockmap_repeated_bytes.load());

  // The endpoint short-circuit's counters, each by direction (up: from a
  // local client, down: from a local server), counted when the pair ends.
  struct ShortcutFamily {
    const char* name;
    const char* help;
    std::atomic<std::uint64_t> Metrics::Shortcut::*counter;
  };
  for (const ShortcutFamily& f : {
           ShortcutFamily{
               "shunt_shortcut_bytes_total",
               "Bytes the endpoint short-circuit moved by sk_msg, by direction (up: from a local client, "
               "down: from a local server), counted when the pair ends (the rest of a kernel-spliced "
               "direction took sk_skb; docs/datapath.md).",
               &Metrics::Shortcut::bytes},
           ShortcutFamily{
               "shunt_shortcut_switches_total",
               "Times the short-circuit's fence opened: a captured sender switched from TCP to sk_msg, "
               "by direction.",
               &Metrics::Shortcut::switches},
           ShortcutFamily{"shunt_shortcut_returns_to_tcp_total",
                          "Times a short-circuited sender returned to TCP because its target (shunt's socket "
                          "towards the other endpoint) was short of room, by direction.",
                          &Metrics::Shortcut::returns},
       }) {
    p.family(f.name, "counter", f.help);
    for (std::size_t dir = 0; dir < m.shortcut.size(); ++dir)
      p.sample(f.name, {{"direction", std::string(to_string(static_cast<Direction>(dir)))}},
               (m.shortcut[dir].*f.counter).load());
  }

  p.family("shunt_connections_revoked_total", "counter",
           "Open connections reset because a reload disallowed them.");
  p.sample("shunt_connections_revoked_total", {}, m.connections_revoked.load());

  p.family("shunt_connections_refused_total", "counter",
           "Connections reset at accept, before any policy work or upstream connect, by the limit that "
           "refused them (limits.max_connections, limits.max_connections_per_source). Not in "
           "shunt_connections_total.");
  for (std::size_t i = 0; i < kAcceptRefusalNames.size(); ++i)
    p.sample("shunt_connections_refused_total", {{"reason", kAcceptRefusalNames[i]}},
             m.accept_refusals[i].load());

  p.family("shunt_upstream_failures_total", "counter",
           "Upstream connects that failed, by cause (HTTP-inspected clients got 502, or 504 for "
           "connect_timeout; others a reset).");
  for (std::size_t i = 0; i < kUpstreamFailureNames.size(); ++i)
    p.sample("shunt_upstream_failures_total", {{"reason", kUpstreamFailureNames[i]}},
             m.upstream_failures[i].load());

  p.family(
      "shunt_buffer_boosts_total", "counter",
      "Larger socket buffers for bulk kernel-spliced connections, by result (refused: budget exhausted).");
  p.sample("shunt_buffer_boosts_total", {{"result", "granted"}}, m.buffer_boosts.load());
  p.sample("shunt_buffer_boosts_total", {{"result", "refused"}}, m.buffer_boosts_refused.load());

  if (steering) {
    p.family("shunt_steering_packets_total", "counter",
             "Packets seen by pod steering BPF programs, by outcome.");
    for (const auto& [outcome, n] : steering->counters())
      p.sample("shunt_steering_packets_total", {{"outcome", outcome}}, n);
    p.family(
        "shunt_steering_attachments", "gauge",
        "Steering programs attached to pod devices (1 each), by device and hook (tcx, tc, netkit_peer).");
    for (const auto& a : steering->attachments())
      p.sample("shunt_steering_attachments", {{"device", a.device}, {"hook", a.hook}}, std::uint64_t{1});
  }

  p.family("shunt_access_log_dropped_total", "counter",
           "Access log lines dropped because the writer fell behind (the data path never waits for it).");
  p.sample("shunt_access_log_dropped_total", {}, context.access_log.dropped());

  p.family("shunt_build_info", "gauge", "Always 1; the version as a label.");
  p.sample("shunt_build_info", {{"version", SHUNT_VERSION}}, std::uint64_t{1});

  const ProcessStats proc = read_process_stats();
  p.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
  p.sample("process_resident_memory_bytes", {}, proc.resident_bytes);
  p.family("process_open_fds", "gauge", "Open file descriptors.");
  p.sample("process_open_fds", {}, proc.open_fds);
  p.family("process_max_fds", "gauge", "Limit on open file descriptors (RLIMIT_NOFILE).");
  p.sample("process_max_fds", {}, proc.max_fds);
  p.family("process_cpu_seconds_total", "counter", "User and system CPU time in seconds.");
  p.sample("process_cpu_seconds_total", {}, proc.cpu_seconds);
  p.family("process_start_time_seconds", "gauge",
           "Start time of the process since the Unix epoch in seconds.");
  p.sample("process_start_time_seconds", {}, proc.start_time_seconds);
  return p.take();
}

}  // namespace shunt::proxy

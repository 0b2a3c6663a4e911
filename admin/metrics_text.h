// Prometheus text exposition format 0.0.4 for GET /metrics: the metrics of
// SPEC.md "Admin API" plus steering, buffer, access-log and process metrics
// (docs/operating.md lists them all).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace shunt::proxy {

struct ProxyContext;
}  // namespace shunt::proxy

namespace shunt::bpf {
class PodSteering;
}

namespace shunt::proxy {

using Label = std::pair<std::string_view, std::string_view>;

// Builds one exposition: a family's HELP and TYPE lines, then its samples.
class PromText {
 public:
  void family(std::string_view name, std::string_view type, std::string_view help);
  void sample(std::string_view name, std::initializer_list<Label> labels, std::uint64_t value);
  void sample(std::string_view name, std::initializer_list<Label> labels, double value);
  [[nodiscard]] std::string take() { return std::move(out_); }

 private:
  void labels(std::initializer_list<Label> labels);
  std::string out_;
};

// Label values escape backslash, double quote and newline; HELP text
// escapes backslash and newline (the format's two escaping rules).
std::string escape_label_value(std::string_view value);
std::string escape_help(std::string_view help);

// What /proc says about this process.
struct ProcessStats {
  std::uint64_t resident_bytes = 0;
  std::uint64_t open_fds = 0;
  std::uint64_t max_fds = 0;
  double cpu_seconds = 0;
  double start_time_seconds = 0;  // since the Unix epoch
};
ProcessStats read_process_stats();

// The whole /metrics body. Reads the registry (live bytes, including the
// kernel counters of sockmap pairs) and the process counters; safe from any
// thread while the proxy runs. `steering` (null: no pod steering) is passed
// apart from the context because it is set up after the admin server starts.
std::string render_metrics(const ProxyContext& context, const bpf::PodSteering* steering);

}  // namespace shunt::proxy

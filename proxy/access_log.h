// Access log (SPEC.md "Access log"): one JSON object per line per closed
// connection (`event: conn`) and per inspected HTTP request (`event: http`).
// Written through an async spdlog logger with a bounded queue that drops
// rather than blocks when full; drops are counted.
#pragma once

#include "common/error.h"
#include "config/config.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

namespace spdlog {
class logger;
}

namespace shunt::proxy {

struct AccessRecord {
  std::string event = "conn";  // conn | http
  config::Endpoint src;
  config::Endpoint dst;
  std::string src_pod;
  std::string dst_pod;
  bool allowed = false;
  std::string rule;
  std::string datapath;
  std::string path_up;  // sockmap only: sk_skb | sk_msg
  std::string path_down;
  std::uint64_t bytes_up = 0;
  std::uint64_t bytes_down = 0;
  std::chrono::milliseconds duration{0};
  std::string reason;  // why it ended or was refused (EndReason); left out when unknown
  std::string error;   // the socket error behind `reason`, when there was one
  // http only
  std::string method;
  std::string path;
  std::string host;
  int status = 0;                  // 0: no response was seen; the field is left out
  std::string protocol;            // h1 | h2
  std::optional<int> grpc_status;  // gRPC streams: from the response, or 7 when shunt denied
};

class AccessLog {
 public:
  AccessLog();
  ~AccessLog();
  // target: "stdout", "off", or a file path (created, appended to). Safe to
  // call again (reload): the same target keeps its file; a new one is opened
  // before the old one is let go, so on error the previous target stays.
  Status open(const std::string& target);
  // Re-opens a file target at its path (log rotation, SIGUSR1): lines
  // already queued go to the old (renamed) file, new ones to a new file.
  Status reopen();
  void write(const AccessRecord& record);
  // False while the target is "off": callers skip building the record.
  [[nodiscard]] bool enabled() const { return enabled_.load(std::memory_order_relaxed); }
  // Lines dropped because the writer thread fell behind (bounded queue,
  // oldest dropped first): shunt_access_log_dropped_total.
  [[nodiscard]] std::uint64_t dropped() const;
  void flush();

  static std::string to_json(const AccessRecord& record);

 private:
  Status open_locked(const std::string& target);

  std::mutex mu_;
  std::string target_;
  std::shared_ptr<spdlog::logger> logger_;
  std::atomic<bool> enabled_{false};
};

}  // namespace shunt::proxy

// Access log (SPEC.md "Access log"): one JSON object per line per closed
// connection (`event: conn`) and per inspected HTTP request (`event: http`).
// Written through an async spdlog logger with a bounded queue that drops
// rather than blocks when full; drops are counted.
#pragma once

#include "config/config.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
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
  std::uint64_t bytes_up = 0;
  std::uint64_t bytes_down = 0;
  std::chrono::milliseconds duration{0};
  // http only
  std::string method;
  std::string path;
  std::string host;
  int status = 0;
};

class AccessLog {
 public:
  AccessLog();
  ~AccessLog();
  // target: "stdout", "off", or a file path. Safe to call again (reload).
  void open(const std::string& target);
  // Re-opens a file target (log rotation, SIGUSR1).
  void reopen();
  void write(const AccessRecord& record);
  [[nodiscard]] std::uint64_t dropped() const;
  void flush();

  static std::string to_json(const AccessRecord& record);

 private:
  std::mutex mu_;
  std::string target_;
  std::shared_ptr<spdlog::logger> logger_;
};

}  // namespace shunt::proxy

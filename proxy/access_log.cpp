#include "proxy/access_log.h"

#include <spdlog/async.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <ctime>

namespace shunt::proxy {

namespace {

constexpr std::size_t kQueueSize = 8192;

std::shared_ptr<spdlog::details::thread_pool> access_pool() {
  // One writer thread for access lines; overrun_oldest never blocks the
  // data path, and the pool counts what it dropped.
  static auto pool = std::make_shared<spdlog::details::thread_pool>(kQueueSize, 1);
  return pool;
}

void append_escaped(std::string& out, std::string_view s) {
  out.push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
}

std::string rfc3339_now() {
  const auto now = std::chrono::system_clock::now();
  const auto secs = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03lldZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<long long>(ms));
  return buf;
}

}  // namespace

AccessLog::AccessLog() = default;
AccessLog::~AccessLog() { flush(); }

std::string AccessLog::to_json(const AccessRecord& r) {
  std::string out;
  out.reserve(320);
  auto field = [&](std::string_view key, std::string_view value) {
    out += out.empty() ? "{" : ",";
    append_escaped(out, key);
    out.push_back(':');
    append_escaped(out, value);
  };
  auto number = [&](std::string_view key, std::uint64_t value) {
    out += ",";
    append_escaped(out, key);
    out.push_back(':');
    out += std::to_string(value);
  };
  field("ts", rfc3339_now());
  field("event", r.event);
  field("src", config::to_string(r.src));
  field("dst", config::to_string(r.dst));
  field("src_pod", r.src_pod);
  field("dst_pod", r.dst_pod);
  field("verdict", r.allowed ? "allow" : "deny");
  field("rule", r.rule);
  field("datapath", r.datapath);
  number("bytes_up", r.bytes_up);
  number("bytes_down", r.bytes_down);
  number("duration_ms", static_cast<std::uint64_t>(r.duration.count()));
  if (r.event == "http") {
    field("method", r.method);
    field("path", r.path);
    field("host", r.host);
    number("status", static_cast<std::uint64_t>(r.status));
  }
  out += "}";
  return out;
}

void AccessLog::open(const std::string& target) {
  std::lock_guard lock(mu_);
  if (logger_ && target == target_) return;
  if (logger_) logger_->flush();
  target_ = target;
  logger_.reset();
  if (target == "off") return;
  spdlog::sink_ptr sink;
  if (target == "stdout") {
    sink = std::make_shared<spdlog::sinks::stdout_sink_mt>();
  } else {
    sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(target, /*truncate=*/false);
  }
  logger_ = std::make_shared<spdlog::async_logger>("access", sink, access_pool(),
                                                   spdlog::async_overflow_policy::overrun_oldest);
  logger_->set_pattern("%v");
  logger_->set_level(spdlog::level::info);
  logger_->flush_on(spdlog::level::info);
}

void AccessLog::reopen() {
  std::string target;
  {
    std::lock_guard lock(mu_);
    target = target_;
    if (target == "stdout" || target == "off" || target.empty()) return;
    if (logger_) logger_->flush();
    logger_.reset();
    target_.clear();
  }
  open(target);
}

void AccessLog::write(const AccessRecord& record) {
  std::shared_ptr<spdlog::logger> logger;
  {
    std::lock_guard lock(mu_);
    logger = logger_;
  }
  if (logger) logger->info(to_json(record));
}

std::uint64_t AccessLog::dropped() const { return access_pool()->overrun_counter(); }

void AccessLog::flush() {
  std::lock_guard lock(mu_);
  if (logger_) logger_->flush();
}

}  // namespace shunt::proxy

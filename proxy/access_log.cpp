#include "proxy/access_log.h"

#include "common/json_writer.h"
#include "common/privileges.h"

#include <spdlog/async.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstdio>
#include <ctime>

namespace shunt::proxy {

namespace {

constexpr std::size_t kQueueSize = 8192;

std::shared_ptr<spdlog::details::thread_pool> access_pool() {
  // One writer thread for access lines; overrun_oldest never blocks the
  // data path, and the pool counts what it dropped. The writer only writes
  // to files opened by the control thread, so it gives up every capability
  // (it starts before the control thread drops its own).
  static auto pool = std::make_shared<spdlog::details::thread_pool>(kQueueSize, 1, [] {
    if (Status st = drop_capabilities(ThreadRole::none); !st)
      spdlog::warn("access log thread keeps its capabilities: {}", st.error().message());
  });
  return pool;
}

std::string rfc3339_now() {
  const auto now = std::chrono::system_clock::now();
  const auto secs = std::chrono::system_clock::to_time_t(now);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
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
    append_json_string(out, key);
    out.push_back(':');
    append_json_string(out, value);
  };
  auto number = [&](std::string_view key, std::uint64_t value) {
    out += ",";
    append_json_string(out, key);
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
  if (!r.datapath.empty()) field("datapath", r.datapath);  // empty: refused before it had one
  number("bytes_up", r.bytes_up);
  number("bytes_down", r.bytes_down);
  number("duration_ms", static_cast<std::uint64_t>(r.duration.count()));
  if (!r.reason.empty()) field("reason", r.reason);
  if (!r.error.empty()) field("error", r.error);
  // Sockmap only: which kernel path each direction took.
  if (!r.path_up.empty()) field("path_up", r.path_up);
  if (!r.path_down.empty()) field("path_down", r.path_down);
  if (r.event == "http") {
    field("method", r.method);
    field("path", r.path);
    field("host", r.host);
    // Left out when no response was seen: a 0 would read as a status.
    if (r.status > 0) number("status", static_cast<std::uint64_t>(r.status));
    if (!r.protocol.empty()) field("protocol", r.protocol);
    if (r.grpc_status) number("grpc_status", static_cast<std::uint64_t>(*r.grpc_status));
  }
  out += "}";
  return out;
}

Status AccessLog::open(const std::string& target) {
  std::lock_guard lock(mu_);
  if (target == target_ && (logger_ || target == "off")) return ok_status();
  return open_locked(target);
}

Status AccessLog::open_locked(const std::string& target) {
  std::shared_ptr<spdlog::logger> next;
  if (target != "off") {
    spdlog::sink_ptr sink;
    try {
      if (target == "stdout") {
        sink = std::make_shared<spdlog::sinks::stdout_sink_mt>();
      } else {
        errno = 0;
        sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(target, /*truncate=*/false);
      }
    } catch (const spdlog::spdlog_ex& e) {
      // errno still holds fopen's reason, which message() prints; spdlog's
      // text ends with the same strerror, so it is used only without one.
      const std::string fix = " (log.access takes a writable file, stdout or off)";
      if (errno != 0) return SysError{errno, "open access log " + target + fix};
      return SysError{EIO, std::string(e.what()) + fix};
    }
    next = std::make_shared<spdlog::async_logger>("access", sink, access_pool(),
                                                  spdlog::async_overflow_policy::overrun_oldest);
    next->set_pattern("%v");
    next->set_level(spdlog::level::info);
    next->flush_on(spdlog::level::info);
  }
  // Lines queued for the old logger still reach its sink: queued messages
  // hold their logger.
  if (logger_) logger_->flush();
  logger_ = std::move(next);
  enabled_.store(logger_ != nullptr, std::memory_order_relaxed);
  target_ = target;
  return ok_status();
}

Status AccessLog::reopen() {
  std::lock_guard lock(mu_);
  if (target_ == "stdout" || target_ == "off" || target_.empty()) return ok_status();
  return open_locked(target_);
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

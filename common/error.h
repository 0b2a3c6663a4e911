// shunt's error policy, in one place:
//  - Data path and kernel calls return Result<T>: a value or a SysError that
//    keeps errno and says what was being done. An exception that reaches
//    the top of a coroutine is handled by guarded_spawn (common/async.h).
//  - Startup and config loading may throw StartupError (or return
//    diagnostics); main() turns them into one stderr line and an exit code.
#pragma once

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>

namespace shunt {

// Exit codes from SPEC.md.
enum ExitCode : int { kExitOk = 0, kExitBadInput = 1, kExitEnvironment = 2 };

struct SysError {
  int code = 0;         // errno value (positive)
  std::string context;  // what was being attempted, e.g. "bind 127.0.0.1:15001"

  [[nodiscard]] std::string message() const { return context + ": " + std::strerror(code); }
  static SysError from_errno(std::string context) { return {errno, std::move(context)}; }
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}
  Result(SysError error) : v_(std::move(error)) {}

  [[nodiscard]] bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& value() const& { return std::get<0>(v_); }
  T* operator->() { return &value(); }
  T& operator*() & { return value(); }
  [[nodiscard]] const SysError& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, SysError> v_;
};

struct Ok {};
using Status = Result<Ok>;
inline Status ok_status() { return Ok{}; }

// Thrown only during startup (binding, loading BPF, privileges). Carries the
// exit code main() should use.
class StartupError : public std::runtime_error {
 public:
  StartupError(ExitCode code, const std::string& what) : std::runtime_error(what), code_(code) {}
  [[nodiscard]] ExitCode code() const { return code_; }

 private:
  ExitCode code_;
};

}  // namespace shunt

// Named network namespaces, compatible with `ip netns`: a bind mount of the
// namespace file under /run/netns/NAME keeps it alive without a process.
#pragma once

#include "common/error.h"
#include "common/unique_fd.h"

#include <functional>
#include <string>
#include <vector>

namespace shunt::pods {

inline constexpr const char* kNetnsRunDir = "/run/netns";

class Netns {
 public:
  // Creates /run/netns/NAME holding a fresh network namespace. EEXIST when
  // the name is taken.
  static Result<Netns> create(const std::string& name);
  static Result<Netns> open(const std::string& name);
  // Unmounts and removes /run/netns/NAME; the namespace itself dies with its
  // last user (processes still inside keep it, as with `ip netns del`).
  static Status remove(const std::string& name);
  static std::vector<std::string> list();

  Netns(Netns&&) noexcept = default;
  Netns& operator=(Netns&&) noexcept = default;

  [[nodiscard]] const std::string& name() const { return name_; }
  [[nodiscard]] int fd() const { return fd_.get(); }

  // Runs fn on a short-lived thread that has joined this namespace: only
  // that thread changes namespace, the caller's threads never do.
  Status run_inside(const std::function<Status()>& fn) const;

 private:
  Netns(std::string name, UniqueFd fd) : name_(std::move(name)), fd_(std::move(fd)) {}
  std::string name_;
  UniqueFd fd_;
};

}  // namespace shunt::pods

// The current policy snapshot, published whole by a reload and read by
// every new connection and every inspected request (docs/architecture.md,
// "Policy snapshots and reloads"). A reader keeps the shared_ptr it took, so
// a decision never sees half of two policies.
#pragma once

#include "policy/policy.h"

#include <memory>
#include <mutex>

namespace shunt::policy {

class Store {
 public:
  Store() = default;
  explicit Store(std::shared_ptr<const Policy> first) : policy_(std::move(first)) {}
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  [[nodiscard]] std::shared_ptr<const Policy> current() const {
    std::lock_guard lock(mu_);
    return policy_;
  }
  void publish(std::shared_ptr<const Policy> next) {
    std::lock_guard lock(mu_);
    policy_ = std::move(next);
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const Policy> policy_;
};

}  // namespace shunt::policy

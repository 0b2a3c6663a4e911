#include "proxy/datapath/bulk_grants.h"

#include <utility>

namespace shunt::proxy {

BulkGrants::Enrollment& BulkGrants::Enrollment::operator=(Enrollment&& other) noexcept {
  if (this != &other) {
    reset();
    owner_ = std::exchange(other.owner_, nullptr);
    a_ = other.a_;
    b_ = other.b_;
  }
  return *this;
}

void BulkGrants::Enrollment::reset() {
  if (owner_) std::exchange(owner_, nullptr)->withdraw(a_, b_);
}

BulkGrants::Enrollment BulkGrants::enroll(std::uint64_t cookie_a, std::uint64_t cookie_b, Grant grant) {
  auto shared = std::make_shared<const Grant>(std::move(grant));
  std::lock_guard lock(mu_);
  by_cookie_[cookie_a] = shared;
  by_cookie_[cookie_b] = std::move(shared);
  return Enrollment(this, cookie_a, cookie_b);
}

void BulkGrants::withdraw(std::uint64_t cookie_a, std::uint64_t cookie_b) {
  std::lock_guard lock(mu_);
  by_cookie_.erase(cookie_a);
  by_cookie_.erase(cookie_b);
}

void BulkGrants::poll() {
  if (paused()) return;
  bridge_.poll_bulk_events([this](std::uint64_t cookie, bpf::SockmapBridge::EventKind kind) {
    std::shared_ptr<const Grant> grant;
    {
      std::lock_guard lock(mu_);
      if (auto it = by_cookie_.find(cookie); it != by_cookie_.end()) grant = it->second;
    }
    // Outside the lock: a grant withdrawn meanwhile still posts, and the
    // pair's own thread sees that it has ended.
    if (grant) (*grant)(cookie, kind);
  });
}

}  // namespace shunt::proxy

#include "proxy/source_limiter.h"

#include <cstring>

namespace shunt::proxy {

SourceLimiter::Lease& SourceLimiter::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    release();
    limiter_ = other.limiter_;
    key_ = other.key_;
    other.limiter_ = nullptr;
  }
  return *this;
}

void SourceLimiter::Lease::release() {
  if (limiter_ == nullptr) return;
  limiter_->release(key_);
  limiter_ = nullptr;
}

std::size_t SourceLimiter::KeyHash::operator()(const Key& k) const noexcept {
  // FNV-1a: addresses of one pod CIDR differ in their last bytes, which a
  // plain truncation to size_t would mostly ignore.
  std::uint64_t h = 14695981039346656037ull;
  for (const std::uint8_t b : k) {
    h ^= b;
    h *= 1099511628211ull;
  }
  return static_cast<std::size_t>(h);
}

SourceLimiter::Key SourceLimiter::key_of(const config::IpAddress& address) {
  Key key{};
  if (address.is_v6()) {
    const auto v6 = address.to_v6();
    if (v6.is_v4_mapped()) return key_of(boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, v6));
    const auto bytes = v6.to_bytes();
    std::memcpy(key.data(), bytes.data(), key.size());
    return key;
  }
  // IPv4 as its IPv4-mapped IPv6 form: the two families never collide.
  const auto bytes = address.to_v4().to_bytes();
  key[10] = 0xff;
  key[11] = 0xff;
  std::memcpy(key.data() + 12, bytes.data(), bytes.size());
  return key;
}

SourceLimiter::Lease SourceLimiter::acquire(const config::IpAddress& source, std::uint32_t cap) {
  const Key key = key_of(source);
  Shard& shard = shard_of(key);
  std::lock_guard lock(shard.mu);
  const auto it = shard.open.try_emplace(key, 0).first;
  if (it->second >= cap) {
    if (it->second == 0) shard.open.erase(it);  // cap 0: keep the no-zero-entries invariant
    return Lease{};
  }
  ++it->second;
  return Lease{this, key};
}

std::uint32_t SourceLimiter::count(const config::IpAddress& source) const {
  const Key key = key_of(source);
  const Shard& shard = shard_of(key);
  std::lock_guard lock(shard.mu);
  const auto it = shard.open.find(key);
  return it == shard.open.end() ? 0 : it->second;
}

void SourceLimiter::release(const Key& key) {
  Shard& shard = shard_of(key);
  std::lock_guard lock(shard.mu);
  const auto it = shard.open.find(key);
  if (it == shard.open.end()) return;
  // Entries are erased at zero so the map holds only sources with open
  // connections, however many addresses have come and gone.
  if (--it->second == 0) shard.open.erase(it);
}

}  // namespace shunt::proxy

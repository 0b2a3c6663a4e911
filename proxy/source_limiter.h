// Per-client fairness at accept: counts open connections per source address
// so that one pod (one address) cannot hold the node's whole
// `limits.max_connections` budget and starve every other pod
// (limits.max_connections_per_source; docs/operating.md "Limits").
//
// A slot is taken by the acceptor before a Connection exists, so a client
// over its cap is refused before any policy work or upstream connect, and
// released when the connection's Lease goes away (RAII: every path that ends
// a connection, including an exception, gives the slot back).
#pragma once

#include "config/config.h"

#include <array>
#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace shunt::proxy {

class SourceLimiter {
 public:
  // One counted connection. Move-only; empty when default-constructed or
  // moved from.
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& other) noexcept { *this = std::move(other); }
    Lease& operator=(Lease&& other) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { release(); }

    [[nodiscard]] bool held() const { return limiter_ != nullptr; }
    void release();

   private:
    friend class SourceLimiter;
    using Key = std::array<std::uint8_t, 16>;
    Lease(SourceLimiter* limiter, const Key& key) : limiter_(limiter), key_(key) {}
    SourceLimiter* limiter_ = nullptr;
    Key key_{};
  };

  SourceLimiter() = default;
  SourceLimiter(const SourceLimiter&) = delete;
  SourceLimiter& operator=(const SourceLimiter&) = delete;

  // Takes a slot for `source` if it has fewer than `cap` open; an empty
  // Lease otherwise. An IPv4-mapped IPv6 address counts as its IPv4 address
  // (a dual-stack listener sees IPv4 clients that way).
  [[nodiscard]] Lease acquire(const config::IpAddress& source, std::uint32_t cap);
  // Open connections counted for `source` now.
  [[nodiscard]] std::uint32_t count(const config::IpAddress& source) const;

 private:
  using Key = Lease::Key;
  struct KeyHash {
    std::size_t operator()(const Key& k) const noexcept;
  };
  // Every accept takes one of these locks (and every close): sharding keeps
  // workers accepting from different clients off each other's lock.
  static constexpr std::size_t kShards = 16;
  struct Shard {
    mutable std::mutex mu;
    std::unordered_map<Key, std::uint32_t, KeyHash> open;  // no zero entries
  };

  static Key key_of(const config::IpAddress& address);
  Shard& shard_of(const Key& key) { return shards_[KeyHash{}(key) % kShards]; }
  const Shard& shard_of(const Key& key) const { return shards_[KeyHash{}(key) % kShards]; }
  void release(const Key& key);

  std::array<Shard, kShards> shards_;
};

}  // namespace shunt::proxy

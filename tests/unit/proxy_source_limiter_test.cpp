// The per-source connection count behind limits.max_connections_per_source:
// the cap per address, slots given back by the lease however it ends, and
// which addresses count as the same source.
#include "proxy/source_limiter.h"

#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace shunt::proxy {
namespace {

using boost::asio::ip::make_address;

TEST(SourceLimiter, CapsEachAddressOnItsOwn) {
  SourceLimiter limiter;
  const auto a = make_address("10.200.0.2");
  const auto b = make_address("10.200.0.3");
  std::vector<SourceLimiter::Lease> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(limiter.acquire(a, 3));
    EXPECT_TRUE(held.back().held());
  }
  EXPECT_FALSE(limiter.acquire(a, 3).held());
  EXPECT_EQ(limiter.count(a), 3u);
  // Another address is not affected by the first one's cap.
  SourceLimiter::Lease other = limiter.acquire(b, 3);
  EXPECT_TRUE(other.held());
  EXPECT_EQ(limiter.count(b), 1u);
  // A refused attempt takes nothing.
  EXPECT_EQ(limiter.count(a), 3u);
}

TEST(SourceLimiter, LeaseGivesTheSlotBackOnceHoweverItEnds) {
  SourceLimiter limiter;
  const auto a = make_address("fd00::2");
  {
    SourceLimiter::Lease scoped = limiter.acquire(a, 2);
    EXPECT_EQ(limiter.count(a), 1u);
  }
  EXPECT_EQ(limiter.count(a), 0u);

  SourceLimiter::Lease first = limiter.acquire(a, 2);
  SourceLimiter::Lease moved = std::move(first);
  EXPECT_FALSE(first.held());  // NOLINT(bugprone-use-after-move): moved-from is empty by contract
  EXPECT_TRUE(moved.held());
  EXPECT_EQ(limiter.count(a), 1u);
  moved.release();
  moved.release();  // idempotent
  EXPECT_EQ(limiter.count(a), 0u);

  SourceLimiter::Lease x = limiter.acquire(a, 2);
  SourceLimiter::Lease y = limiter.acquire(a, 2);
  x = std::move(y);  // x's own slot is given back, y's is now x's
  EXPECT_EQ(limiter.count(a), 1u);
}

TEST(SourceLimiter, MappedIpv4IsTheSameSource) {
  SourceLimiter limiter;
  SourceLimiter::Lease v4 = limiter.acquire(make_address("10.200.0.2"), 2);
  SourceLimiter::Lease mapped = limiter.acquire(make_address("::ffff:10.200.0.2"), 2);
  EXPECT_TRUE(mapped.held());
  EXPECT_EQ(limiter.count(make_address("10.200.0.2")), 2u);
  EXPECT_FALSE(limiter.acquire(make_address("::ffff:10.200.0.2"), 2).held());
  // A plain IPv6 address with the same low bytes is another source.
  EXPECT_TRUE(limiter.acquire(make_address("::a00:2"), 2).held());
}

TEST(SourceLimiter, ConcurrentAcquireNeverExceedsTheCap) {
  SourceLimiter limiter;
  const auto a = make_address("10.200.0.9");
  constexpr std::uint32_t kCap = 50;
  std::vector<std::vector<SourceLimiter::Lease>> per_thread(4);
  std::vector<std::thread> threads;
  for (auto& mine : per_thread) {
    threads.emplace_back([&limiter, &a, &mine] {
      for (int i = 0; i < 100; ++i) {
        SourceLimiter::Lease l = limiter.acquire(a, kCap);
        if (l.held()) mine.push_back(std::move(l));
      }
    });
  }
  for (auto& t : threads) t.join();
  std::size_t granted = 0;
  for (const auto& mine : per_thread) granted += mine.size();
  EXPECT_EQ(granted, kCap);
  EXPECT_EQ(limiter.count(a), kCap);
  per_thread.clear();
  EXPECT_EQ(limiter.count(a), 0u);
}

}  // namespace
}  // namespace shunt::proxy

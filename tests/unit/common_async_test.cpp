// guarded_spawn and Deadline (common/async.h), driven on one io_context.
#include "common/async.h"

#include <gtest/gtest.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <chrono>
#include <stdexcept>

namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

asio::awaitable<void> throws_boom() {
  throw std::runtime_error("boom");
  co_return;
}

TEST(GuardedSpawn, SurvivableFailureIsCountedAndTheLoopGoesOn) {
  asio::io_context io;
  const auto before = shunt::coroutine_failures().load();
  bool later_ran = false;
  shunt::guarded_spawn(io, "test coroutine", throws_boom(), shunt::Failure::survivable);
  asio::post(io, [&] { later_ran = true; });
  io.run();
  EXPECT_EQ(shunt::coroutine_failures().load(), before + 1);
  EXPECT_TRUE(later_ran);
}

TEST(GuardedSpawn, FatalFailureExitsWithCodeTwo) {
  EXPECT_EXIT(
      {
        asio::io_context io;
        shunt::guarded_spawn(io, "fatal test coroutine", throws_boom(), shunt::Failure::fatal);
        io.run();
        std::exit(0);
      },
      testing::ExitedWithCode(2), "fatal test coroutine failed: boom");
}

TEST(Deadline, ExpiresAtItsTime) {
  asio::io_context io;
  shunt::Deadline deadline(io.get_executor());
  int runs = 0;
  deadline.arm_after(1ms, [&] { ++runs; });
  io.run();
  EXPECT_EQ(runs, 1);
  EXPECT_TRUE(deadline.expired());
}

// The hazard the helper exists for: the timer has fired and its completion
// is queued when the owner disarms. Two deadlines due at the same instant
// expire in one pass of the timer queue, so both completions are queued
// before either runs; each disarms the other, and exactly one may run.
TEST(Deadline, DisarmWinsOverAQueuedExpiry) {
  asio::io_context io;
  shunt::Deadline a(io.get_executor());
  shunt::Deadline b(io.get_executor());
  int runs_a = 0, runs_b = 0;
  const auto due = shunt::Deadline::Clock::now() + 5ms;
  a.arm(due, [&] {
    ++runs_a;
    b.disarm();
  });
  b.arm(due, [&] {
    ++runs_b;
    a.disarm();
  });
  io.run();
  EXPECT_EQ(runs_a + runs_b, 1);
}

TEST(Deadline, RearmReplacesTheEarlierExpiry) {
  asio::io_context io;
  shunt::Deadline deadline(io.get_executor());
  int first = 0, second = 0;
  deadline.arm_after(1h, [&] { ++first; });
  deadline.arm_after(1ms, [&] { ++second; });
  io.run();
  EXPECT_EQ(first, 0);
  EXPECT_EQ(second, 1);
}

TEST(Deadline, DestructionTakesTheExpiryBack) {
  asio::io_context io;
  int runs = 0;
  {
    shunt::Deadline deadline(io.get_executor());
    deadline.arm_after(1ms, [&] { ++runs; });
  }
  io.run();
  EXPECT_EQ(runs, 0);
}

}  // namespace

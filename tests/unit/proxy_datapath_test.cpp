// The data paths on their seam (proxy/datapath/datapath.h), without the
// daemon: loopback pairs, bytes both ways compared end to end, byte counts,
// FIN and RST passed on, cancellation; the sockmap handover when BPF is
// there.
#include "bpf/loopback_pairs.h"
#include "bpf/sockmap.h"
#include "proxy/datapath/bulk_grants.h"
#include "proxy/datapath/datapath.h"
#include "proxy/datapath/hangup_watcher.h"
#include "tests/unit/proxy_fakes.h"

#include <gtest/gtest.h>
#include <poll.h>

#include <atomic>
#include <thread>

namespace shunt::proxy {
namespace {

using namespace shunt::proxy::testing;

enum class Path { copy, splice, sockmap };

std::string name(const ::testing::TestParamInfo<Path>& p) {
  switch (p.param) {
    case Path::copy:
      return "copy";
    case Path::splice:
      return "splice";
    case Path::sockmap:
      return "sockmap";
  }
  return "?";
}

class DatapathTest : public ::testing::TestWithParam<Path> {
 protected:
  void SetUp() override {
    client_link = loopback_link(io.io);
    upstream_link = loopback_link(io.io);
    if (GetParam() == Path::sockmap) {
      auto loaded = bpf::SockmapBridge::load(64, 1u << 30, BufferBudget::kBacklogLimitBytes);
      if (!loaded) GTEST_SKIP() << "sockmap unavailable here: " << loaded.error().message();
      bridge = std::move(loaded.value());
      grants = std::make_unique<BulkGrants>(*bridge);
      io.run([&] { hangups = std::make_unique<HangupWatcher>(io.io); });
      // The daemon's control thread reads the event ring (bulk grants, and
      // the hold events a slow reader causes, which start the pump).
      events = std::thread([this] {
        pollfd p{grants->events_fd(), POLLIN, 0};
        while (!stop_events) {
          if (::poll(&p, 1, 10) > 0) grants->poll();
        }
      });
    }
  }
  void TearDown() override {
    stop_events = true;
    if (events.joinable()) events.join();
    if (hangups) io.run([&] { hangups.reset(); });
  }

  // Starts the data path under test on the io thread.
  std::future<Ending> start() {
    pair.emplace(SocketPair{std::move(client_link.near), std::move(upstream_link.near)});
    switch (GetParam()) {
      case Path::copy:
        return io.start(run_copy(*pair, observer, cancel));
      case Path::splice:
        return io.start(run_splice(*pair, observer, cancel));
      case Path::sockmap:
        kernel = KernelSplice{bridge.get(), grants.get(), hangups.get(), nullptr, "", ""};
        return io.start(run_sockmap(*pair, observer, cancel, kernel, /*inspected=*/false));
    }
    return {};
  }
  // Bytes moved from the client (up) and from the upstream (down), by
  // userspace or the kernel.
  std::uint64_t total(Direction d) const {
    return d == Direction::up ? observer.up + observer.kernel_up : observer.down + observer.kernel_down;
  }

  IoThread io;
  LoopbackLink client_link{tcp::socket(io.io), UniqueFd()};    // far: the client
  LoopbackLink upstream_link{tcp::socket(io.io), UniqueFd()};  // far: the upstream server
  RecordingObserver observer;
  CancelSlot cancel;
  std::unique_ptr<bpf::SockmapBridge> bridge;
  std::unique_ptr<BulkGrants> grants;
  std::unique_ptr<HangupWatcher> hangups;
  std::atomic<bool> stop_events{false};
  std::thread events;
  KernelSplice kernel;
  std::optional<SocketPair> pair;  // the path's, until it returns
};

constexpr auto kWait = std::chrono::seconds(10);

TEST_P(DatapathTest, MovesBytesBothWaysAndPassesEachFinOn) {
  const std::string up = random_bytes(3 << 20, 1), down = random_bytes(2 << 20, 2);
  auto done = start();
  int client = client_link.far.get(), server = upstream_link.far.get();
  // Both directions at once, each writer on its own thread, so neither
  // side's buffers fill while the other is not read.
  std::string got_up, got_down;
  std::thread server_side([&] {
    got_up = read_to_end(server);  // until the client's FIN arrives here
    EXPECT_TRUE(send_all(server, down));
    ::shutdown(server, SHUT_WR);
  });
  EXPECT_TRUE(send_all(client, up));
  ::shutdown(client, SHUT_WR);
  got_down = read_to_end(client);
  server_side.join();
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  const Ending ending = done.get();

  EXPECT_TRUE(got_up == up) << "client -> upstream: " << got_up.size() << " of " << up.size() << " bytes";
  EXPECT_TRUE(got_down == down) << "upstream -> client: " << got_down.size() << " of " << down.size()
                                << " bytes";
  EXPECT_EQ(ending.reason, EndReason::client_closed);  // its FIN came first
  EXPECT_FALSE(ending.aborted);
  EXPECT_EQ(total(Direction::up), up.size());
  EXPECT_EQ(total(Direction::down), down.size());
  if (GetParam() == Path::sockmap) {
    EXPECT_TRUE(observer.spliced);
    EXPECT_EQ(observer.dropped, 0u);
    std::lock_guard lock(observer.mu);
    EXPECT_EQ(observer.paths, std::vector<config::Datapath>{config::Datapath::sockmap});
  }
}

TEST_P(DatapathTest, ResetOnOneSideResetsTheOther) {
  auto done = start();
  ASSERT_TRUE(send_all(client_link.far.get(), "hello"));
  char buf[5];
  ASSERT_EQ(::recv(upstream_link.far.get(), buf, sizeof(buf), MSG_WAITALL), 5);
  reset_far(upstream_link.far);
  set_receive_timeout(client_link.far.get(), kWait);
  int error = 0;
  EXPECT_EQ(read_to_end(client_link.far.get(), &error), "");
  EXPECT_EQ(error, ECONNRESET);
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(done.get().reason, EndReason::upstream_reset);
  EXPECT_EQ(total(Direction::up), 5u);
}

TEST_P(DatapathTest, CancelResetsBothSidesAtOnce) {
  auto done = start();
  ASSERT_TRUE(send_all(client_link.far.get(), "ping"));
  char buf[4];
  ASSERT_EQ(::recv(upstream_link.far.get(), buf, sizeof(buf), MSG_WAITALL), 4);
  io.run([&] { cancel.cancel(); });
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  // The owner recorded why (revoke, drain, idle): the path adds no cause.
  EXPECT_EQ(done.get().reason, EndReason::unknown);
  for (int fd : {client_link.far.get(), upstream_link.far.get()}) {
    set_receive_timeout(fd, kWait);
    int error = 0;
    read_to_end(fd, &error);
    EXPECT_EQ(error, ECONNRESET);
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, DatapathTest, ::testing::Values(Path::copy, Path::splice, Path::sockmap),
                         name);

TEST(SockmapPath, WithoutTheBridgeFallsBackToSplice) {
  IoThread io;
  auto client = loopback_link(io.io), upstream = loopback_link(io.io);
  RecordingObserver observer;
  CancelSlot cancel;
  const KernelSplice none;
  SocketPair pair{std::move(client.near), std::move(upstream.near)};
  auto done = io.start(run_sockmap(pair, observer, cancel, none, false));
  ASSERT_TRUE(send_all(client.far.get(), "abc"));
  ::shutdown(client.far.get(), SHUT_WR);
  EXPECT_EQ(read_to_end(upstream.far.get()), "abc");
  ::shutdown(upstream.far.get(), SHUT_WR);
  EXPECT_EQ(read_to_end(client.far.get()), "");
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(done.get().reason, EndReason::client_closed);
  std::lock_guard lock(observer.mu);
  EXPECT_EQ(observer.fallbacks, std::vector<std::string>{"sockmap_unavailable"});
  EXPECT_EQ(observer.paths, std::vector<config::Datapath>{config::Datapath::splice});
}

// The short-circuit's fence measures what the kernel path appended to a
// target from the target's write_seq at the handover
// (SockmapBridge::write_seqs). Checked here against bytes counted by hand:
// what shunt wrote before the handover is before the base, every byte the
// verdict redirects after it is counted once, and a socket not in the maps
// has no reading.
TEST(SockmapBridge, WriteSeqBaseCountsExactlyWhatTheKernelPathAppends) {
  auto loaded = bpf::SockmapBridge::load(64, 1u << 30, BufferBudget::kBacklogLimitBytes);
  if (!loaded) GTEST_SKIP() << "sockmap unavailable here: " << loaded.error().message();
  bpf::SockmapBridge& bridge = *loaded.value();
  bpf::LoopbackPairs pairs;
  ASSERT_EQ(bpf::make_loopback_pairs(pairs), nullptr) << std::strerror(errno);
  // client -> a (shunt's client-facing socket); b (shunt's upstream socket) -> server.
  const int client = pairs.first_out.get(), a = pairs.first_in.get();
  const int b = pairs.second_out.get(), server = pairs.second_in.get();
  const std::string before(1000, 'p'), after(70000, 'k');
  ASSERT_TRUE(send_all(b, before));  // userspace's bytes, before the handover
  ASSERT_EQ(read_exactly(server, before.size()), before);

  const bpf::HandoverResult handover =
      bridge.handover(a, b, 0, before.size(), bpf::SockmapBridge::WriteSeqs::read);
  ASSERT_EQ(handover.failure, bpf::HandoverFailure::none) << handover.error.message();
  ASSERT_TRUE(handover.write_seqs.has_value());
  const std::uint32_t base = handover.write_seqs->second;

  ASSERT_TRUE(send_all(client, after));
  EXPECT_EQ(read_exactly(server, after.size()), after);
  const auto now = bridge.write_seqs({.a = 0, .b = handover.cookies.b});
  ASSERT_TRUE(now.has_value());
  EXPECT_EQ(static_cast<std::uint32_t>(now->second - base), after.size());
  EXPECT_EQ(now->first, 0u);  // cookie 0: not read

  // Not a target (never handed over): no reading rather than a wrong one.
  auto stranger = bpf::socket_cookie(server);
  ASSERT_TRUE(stranger);
  EXPECT_FALSE(bridge.write_seqs({.a = *stranger, .b = 0}).has_value());
  bridge.forget(handover.cookies);
}

// Copy and splice pairs as a takeover moves them (join.h, UserspaceHold):
// in a boundary window a pair freezes itself once every open direction
// waits for its source, nothing moves while it is frozen, and thawing it
// resumes; a half-closed one is movable, its closed direction named in its
// state, and a pair started half-closed (as the new process starts a moved
// one) runs only its open direction.
class UserspaceHandoffTest : public ::testing::TestWithParam<Path> {
 protected:
  std::future<Ending> start(HalfClosed closed = {}) {
    pair.emplace(SocketPair{std::move(client_link.near), std::move(upstream_link.near)});
    return GetParam() == Path::copy ? io.start(run_copy(*pair, observer, cancel, &handoff, closed))
                                    : io.start(run_splice(*pair, observer, cancel, &handoff, closed));
  }
  // What froze (collected as the boundary window's poll does), within a second.
  std::vector<PairHandoff::Exported> wait_frozen() {
    std::vector<PairHandoff::Exported> out;
    for (int i = 0; i < 100 && out.empty(); ++i) {
      io.run([&] { out = handoff.freeze_all([](PairKind k) { return k == PairKind::userspace; }); });
      if (out.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return out;
  }
  IoThread io;
  LoopbackLink client_link = loopback_link(io.io);
  LoopbackLink upstream_link = loopback_link(io.io);
  std::optional<SocketPair> pair;
  RecordingObserver observer;
  CancelSlot cancel;
  PairHandoff handoff;  // touched on the io thread only
};

TEST_P(UserspaceHandoffTest, FreezesItselfInAWindowAndThawsWhereItWas) {
  const int client = client_link.far.get(), server = upstream_link.far.get();
  set_receive_timeout(server, kWait);
  auto done = start();
  ASSERT_TRUE(send_all(client, "before"));
  char buf[6];
  ASSERT_EQ(::recv(server, buf, sizeof(buf), MSG_WAITALL), 6);
  io.run([&] { handoff.set_window(kind_bit(PairKind::userspace)); });
  // Both directions are back at their reads: frozen, waiting to be collected.
  const std::vector<PairHandoff::Exported> frozen = wait_frozen();
  ASSERT_EQ(frozen.size(), 1u);
  EXPECT_EQ(frozen[0].kind, PairKind::userspace);
  EXPECT_FALSE(frozen[0].state.client_fin_forwarded);
  ASSERT_TRUE(send_all(client, "while"));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(observer.up, 6u);  // nothing moved while frozen
  io.run([&] {
    handoff.set_window(0);
    handoff.thaw_frozen();
  });
  ASSERT_EQ(::recv(server, buf, 5, MSG_WAITALL), 5);
  EXPECT_EQ(std::string(buf, 5), "while");
  ::shutdown(client, SHUT_WR);
  ::shutdown(server, SHUT_WR);
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  EXPECT_FALSE(done.get().aborted);
}

TEST_P(UserspaceHandoffTest, HalfClosedPairIsMovableWithItsClosedDirection) {
  const int client = client_link.far.get(), server = upstream_link.far.get();
  auto done = start();
  ASSERT_TRUE(send_all(client, "up"));
  ::shutdown(client, SHUT_WR);
  EXPECT_EQ(read_to_end(server), "up");  // with the FIN passed on
  io.run([&] { handoff.set_window(kind_bit(PairKind::userspace)); });
  const std::vector<PairHandoff::Exported> frozen = wait_frozen();
  ASSERT_EQ(frozen.size(), 1u);
  EXPECT_TRUE(frozen[0].state.client_fin_forwarded);
  EXPECT_FALSE(frozen[0].state.upstream_fin_forwarded);
  // Let go (another process holds the sockets): the path ends quietly.
  io.run([&] { handoff.let_go_frozen(); });
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(done.get().reason, EndReason::taken_over);
}

TEST_P(UserspaceHandoffTest, StartedHalfClosedRunsOnlyTheOpenDirection) {
  const int client = client_link.far.get(), server = upstream_link.far.get();
  auto done = start(HalfClosed{.up = true, .down = false});
  const std::string down = random_bytes(1 << 20, 3);
  std::thread server_side([&] {
    EXPECT_TRUE(send_all(server, down));
    ::shutdown(server, SHUT_WR);
  });
  EXPECT_TRUE(read_to_end(client) == down);
  server_side.join();
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(done.get().reason, EndReason::upstream_closed);
  EXPECT_EQ(observer.up, 0u);
  EXPECT_EQ(observer.down, down.size());
}

INSTANTIATE_TEST_SUITE_P(Paths, UserspaceHandoffTest, ::testing::Values(Path::copy, Path::splice), name);

}  // namespace
}  // namespace shunt::proxy

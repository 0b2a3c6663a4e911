// The takeover protocol without a proxy: framing, fd batches, versions, and
// the old side's decisions (keep, take back, let go) against a scripted
// new side.
#include "takeover/control_socket.h"
#include "takeover/handover.h"
#include "takeover/late.h"
#include "takeover/protocol.h"
#include "takeover/successor.h"
#include "takeover/wire.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <filesystem>
#include <thread>

namespace shunt::takeover {
namespace {

using namespace std::chrono_literals;

struct Pair {
  UniqueFd a, b;
  Pair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds), 0);
    a.reset(fds[0]);
    b.reset(fds[1]);
  }
};

ino_t inode(int fd) {
  struct stat st {};
  ::fstat(fd, &st);
  return st.st_ino;
}

TEST(TakeoverWire, MessageRoundTrip) {
  Pair p;
  const std::string payload = Writer().u16(7).u32(0xdeadbeef).u64(1ull << 40).str("héllo").u8(1).take();
  ASSERT_TRUE(send_message(p.a.get(), 3, MessageType::welcome, payload, {}, Clock::now() + 1s));
  auto m = recv_message(p.b.get(), Clock::now() + 1s);
  ASSERT_TRUE(m) << m.error().message();
  EXPECT_EQ(m->version, 3);
  EXPECT_EQ(m->type, MessageType::welcome);
  Reader r(m->payload);
  EXPECT_EQ(r.u16(), 7);
  EXPECT_EQ(r.u32(), 0xdeadbeefu);
  EXPECT_EQ(r.u64(), 1ull << 40);
  EXPECT_EQ(r.str(), "héllo");
  EXPECT_EQ(r.u8(), 1);
  EXPECT_TRUE(r.complete());
  EXPECT_EQ(r.u8(), 0);  // past the end: fails and stays failed
  EXPECT_FALSE(r.ok());
}

TEST(TakeoverWire, FileDescriptorsUpToScmMaxFdPerMessage) {
  Pair p;
  std::vector<UniqueFd> owned;
  std::vector<int> fds;
  for (std::size_t i = 0; i < kMaxFdsPerMessage + 1; ++i) {
    owned.emplace_back(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    fds.push_back(owned.back().get());
  }
  const auto too_many = send_message(p.a.get(), 1, MessageType::listeners, "x", fds, Clock::now() + 1s);
  ASSERT_FALSE(too_many);
  EXPECT_EQ(too_many.error().code, EMSGSIZE);
  fds.pop_back();
  ASSERT_TRUE(send_message(p.a.get(), 1, MessageType::listeners, "x", fds, Clock::now() + 1s));
  auto m = recv_message(p.b.get(), Clock::now() + 1s);
  ASSERT_TRUE(m) << m.error().message();
  ASSERT_EQ(m->fds.size(), kMaxFdsPerMessage);
  for (std::size_t i = 0; i < fds.size(); ++i) EXPECT_EQ(inode(m->fds[i].get()), inode(fds[i])) << i;
}

TEST(TakeoverWire, TimeoutPeerGoneAndGarbage) {
  Pair p;
  auto none = recv_message(p.b.get(), Clock::now() + 30ms);
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().code, ETIMEDOUT);

  ASSERT_EQ(::send(p.a.get(), "not a shunt message", 19, 0), 19);
  auto bad = recv_message(p.b.get(), Clock::now() + 1s);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, EBADMSG);

  // Right magic, a length that disagrees with the datagram.
  std::string lying = Writer().u32(kMagic).u16(1).u16(1).u32(100).take() + "short";
  ASSERT_EQ(::send(p.a.get(), lying.data(), lying.size(), 0), static_cast<ssize_t>(lying.size()));
  auto short_msg = recv_message(p.b.get(), Clock::now() + 1s);
  ASSERT_FALSE(short_msg);
  EXPECT_EQ(short_msg.error().code, EBADMSG);

  p.a.reset();
  auto gone = recv_message(p.b.get(), Clock::now() + 1s);
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error().code, ECONNRESET);
}

TEST(TakeoverProtocol, Versions) {
  Hello same;
  EXPECT_EQ(negotiate(same), kProtocolMax);
  Hello wider{1, 9, "9.0", 1};
  EXPECT_EQ(negotiate(wider), kProtocolMax);
  Hello newer{kProtocolMax + 1, kProtocolMax + 3, "9.0", 1};
  EXPECT_FALSE(negotiate(newer));
  EXPECT_NE(incompatible(newer).find("incompatible takeover protocol"), std::string::npos);
  EXPECT_NE(incompatible(newer).find("shunt 9.0"), std::string::npos);

  // hello's layout is frozen but may grow: a later version's extra fields
  // are ignored. Other messages must be exact.
  auto grown = decode_hello(encode(newer) + "extra");
  ASSERT_TRUE(grown);
  EXPECT_EQ(grown->max_version, kProtocolMax + 3);
  EXPECT_FALSE(decode_welcome(encode(Welcome{1, "x", 2}) + "x"));
  const std::vector<ListenerEntry> batch{{"listener", "pods", "127.0.0.1:15001", true},
                                         {"admin", "admin", "[::1]:15000", false}};
  auto back = decode_listeners(encode(batch));
  ASSERT_TRUE(back);
  ASSERT_EQ(back->size(), 2u);
  EXPECT_EQ((*back)[0].endpoint, "127.0.0.1:15001");
  EXPECT_TRUE((*back)[0].transparent);
  EXPECT_EQ((*back)[1].role, "admin");
  EXPECT_FALSE(decode_listeners(encode(batch).substr(0, 20)));
}

// The old side on its own thread and io_context, against whatever the test
// does as the new side. Hooks only record.
struct OldSide {
  std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("shunt-takeover-test-" + std::to_string(::getpid()));
  std::string path = (dir / "control.sock").string();
  ControlListener listener;
  std::vector<UniqueFd> sockets;
  std::atomic<int> paused{0}, resumed{0};
  // Version 2: pairs (two sockets each) the hooks freeze, let go or thaw.
  std::vector<UniqueFd> pair_sockets;
  std::atomic<int> frozen{0}, let_go{0}, thawed{0};
  HandoverResult result;
  std::thread thread;
  Timeouts timeouts{200ms, 200ms};

  explicit OldSide(std::size_t n_sockets, std::size_t n_pairs = 0) {
    for (std::size_t i = 0; i < 2 * n_pairs; ++i)
      pair_sockets.emplace_back(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    auto l = ControlListener::bind(path);
    EXPECT_TRUE(l);
    listener = std::move(*l);
    for (std::size_t i = 0; i < n_sockets; ++i)
      sockets.emplace_back(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    thread = std::thread([this] { serve_one(); });
  }
  ~OldSide() {
    if (thread.joinable()) thread.join();
    std::filesystem::remove_all(dir);
  }
  void serve_one() {
    pollfd pfd{listener.fd(), POLLIN, 0};
    if (::poll(&pfd, 1, 5000) != 1) return;
    const int fd = ::accept4(listener.fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    boost::asio::io_context io;
    boost::asio::posix::stream_descriptor peer(io, fd);
    HandoverHooks hooks;
    hooks.listeners = [this] {
      std::vector<HandedListener> out;
      for (std::size_t i = 0; i < sockets.size(); ++i)
        out.push_back({{"listener", "l", "127.0.0.1:" + std::to_string(i), false}, sockets[i].get()});
      return out;
    };
    hooks.pause = [this] { ++paused; };
    hooks.resume = [this] { ++resumed; };
    if (!pair_sockets.empty()) {
      hooks.kernel_maps = [this] {
        return std::optional<HandedMaps>(HandedMaps{{7, {"m"}}, {pair_sockets[0].get()}});
      };
      hooks.freeze_pairs = [this](const PairKinds&, std::uint16_t) {
        ++frozen;
        std::vector<HandedPair> out;
        for (std::size_t i = 0; i < pair_sockets.size(); i += 2)
          out.push_back({"pair " + std::to_string(i / 2) + std::string(400, '.'), pair_sockets[i].get(),
                         pair_sockets[i + 1].get()});
        return out;
      };
      hooks.let_go_pairs = [this] { ++let_go; };
      hooks.thaw_pairs = [this] { ++thawed; };
    }
    boost::asio::co_spawn(
        io, [&]() -> boost::asio::awaitable<void> { result = co_await hand_over(peer, hooks, timeouts); },
        boost::asio::detached);
    io.run();
  }
  HandoverResult finish() {
    thread.join();
    return result;
  }
};

TEST(TakeoverHandover, CompletesWithBatchesBeyondScmMaxFd) {
  OldSide old(300);  // two listeners messages
  auto s = Successor::begin(old.path, Timeouts{1s, 1s});
  ASSERT_TRUE(s) << s.error().message();
  auto got = s->take_listeners();
  ASSERT_EQ(got.size(), 300u);
  EXPECT_EQ(got[299].entry.endpoint, "127.0.0.1:299");
  EXPECT_EQ(inode(got[299].fd.get()), inode(old.sockets[299].get()));
  ASSERT_TRUE(s->ready(0));
  ASSERT_TRUE(s->commit());
  const auto r = old.finish();
  EXPECT_EQ(r.outcome, Outcome::ok) << r.detail;
  EXPECT_EQ(r.listeners, 300u);
  EXPECT_EQ(old.paused, 1);
  EXPECT_EQ(old.resumed, 0);
}

// Version 2: the maps with the listeners; 300 pairs in batches bounded by
// both SCM_MAX_FD (126 pairs) and the payload (~400 bytes a state), each
// with its two sockets; the old side lets go only after the commit.
TEST(TakeoverHandover, PairsMoveInBatchesAndAreLetGoAfterCommit) {
  OldSide old(2, 300);
  auto s = Successor::begin(old.path, Timeouts{1s, 1s});
  ASSERT_TRUE(s) << s.error().message();
  EXPECT_EQ(s->version(), kProtocolMax);
  auto maps = s->take_kernel_maps();
  ASSERT_TRUE(maps);
  EXPECT_EQ(maps->version, 7u);
  ASSERT_EQ(maps->maps.size(), 1u);
  EXPECT_EQ(inode(maps->maps[0].second.get()), inode(old.pair_sockets[0].get()));
  ASSERT_TRUE(s->ready(kReadyKernelPairs));
  auto pairs = s->receive_pairs();
  ASSERT_TRUE(pairs) << pairs.error().message();
  ASSERT_EQ(pairs->size(), 300u);
  EXPECT_EQ((*pairs)[299].state.substr(0, 8), "pair 299");
  EXPECT_EQ(inode((*pairs)[299].upstream.get()), inode(old.pair_sockets[599].get()));
  EXPECT_EQ(old.let_go, 0);
  ASSERT_TRUE(s->commit());
  const auto r = old.finish();
  EXPECT_EQ(r.outcome, Outcome::ok) << r.detail;
  EXPECT_EQ(r.pairs, 300u);
  EXPECT_EQ(old.frozen, 1);
  EXPECT_EQ(old.let_go, 1);
  EXPECT_EQ(old.thawed, 0);
}

TEST(TakeoverHandover, NewProcessGoneAfterThePairsIsTakenBack) {
  OldSide old(2, 3);
  {
    auto s = Successor::begin(old.path, Timeouts{1s, 1s});
    ASSERT_TRUE(s) << s.error().message();
    ASSERT_TRUE(s->ready(kReadyKernelPairs));
    auto pairs = s->receive_pairs();
    ASSERT_TRUE(pairs);
    EXPECT_EQ(pairs->size(), 3u);
  }  // gone without commit
  const auto r = old.finish();
  EXPECT_EQ(r.outcome, Outcome::failed);
  EXPECT_EQ(old.let_go, 0);
  EXPECT_EQ(old.thawed, 1);
  EXPECT_EQ(old.resumed, 1);
}

// A new process that takes no pairs (ready(0)) gets none.
TEST(TakeoverHandover, PairsStayWhenTheNewProcessDoesNotTakeThem) {
  OldSide old(2, 3);
  auto s = Successor::begin(old.path, Timeouts{1s, 1s});
  ASSERT_TRUE(s) << s.error().message();
  ASSERT_TRUE(s->ready(0));
  auto pairs = s->receive_pairs();
  ASSERT_TRUE(pairs);
  EXPECT_TRUE(pairs->empty());
  ASSERT_TRUE(s->commit());
  const auto r = old.finish();
  EXPECT_EQ(r.outcome, Outcome::ok) << r.detail;
  EXPECT_EQ(old.frozen, 0);
  EXPECT_EQ(r.pairs, 0u);
}

TEST(TakeoverHandover, NewProcessGoneAfterReadyIsTakenBack) {
  OldSide old(2);
  {
    auto s = Successor::begin(old.path, Timeouts{1s, 1s});
    ASSERT_TRUE(s) << s.error().message();
    ASSERT_TRUE(s->ready(0));
  }  // gone without commit
  const auto r = old.finish();
  EXPECT_EQ(r.outcome, Outcome::failed);
  EXPECT_EQ(old.paused, 1);
  EXPECT_EQ(old.resumed, 1);
}

TEST(TakeoverHandover, StalledNewProcessTimesOutBeforeAnythingChanges) {
  OldSide old(2);
  auto s = Successor::begin(old.path, Timeouts{1s, 1s});
  ASSERT_TRUE(s) << s.error().message();
  const auto r = old.finish();  // never ready: the 200 ms start timeout
  EXPECT_EQ(r.outcome, Outcome::timeout);
  EXPECT_EQ(old.paused, 0);
  EXPECT_EQ(old.resumed, 0);
}

TEST(TakeoverHandover, IncompatibleVersionIsRefusedWithItsReason) {
  OldSide old(1);
  auto fd = connect_control_socket(old.path);
  ASSERT_TRUE(fd);
  const Hello future{kProtocolMax + 1, kProtocolMax + 1, "99.0", 42};
  ASSERT_TRUE(
      send_message(fd->get(), kProtocolMax + 1, MessageType::hello, encode(future), {}, Clock::now() + 1s));
  auto answer = recv_message(fd->get(), Clock::now() + 1s);
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->type, MessageType::refuse);
  EXPECT_NE(Reader(answer->payload).str().find("incompatible takeover protocol"), std::string::npos);
  const auto r = old.finish();
  EXPECT_EQ(r.outcome, Outcome::incompatible);
  EXPECT_EQ(old.paused, 0);
}

// Version 3 `pairs`: each entry names its fd count (a TLS connection
// waiting for its ClientHello has only its client socket); the collector
// checks states against fds and pairs_end's count, in both layouts.
TEST(TakeoverProtocol, Version3PairEntriesAndCollector) {
  const std::vector<std::pair<std::string_view, std::uint8_t>> entries{{"a", 2}, {"tls", 1}, {"b", 2}};
  const std::string payload = encode_pairs(entries);
  auto back = decode_pair_entries(payload);
  ASSERT_TRUE(back);
  ASSERT_EQ(back->size(), 3u);
  EXPECT_EQ((*back)[1].state, "tls");
  EXPECT_EQ((*back)[1].fds, 1);
  EXPECT_FALSE(decode_pair_entries(payload + "x"));
  EXPECT_FALSE(decode_pair_entries(
      encode_pairs(std::vector<std::pair<std::string_view, std::uint8_t>>{{"a", 3}})));  // 1 or 2 fds

  auto message = [](MessageType type, std::string payload, std::size_t fds) {
    Message m;
    m.version = kProtocolBoundary;
    m.type = type;
    m.payload = std::move(payload);
    for (std::size_t i = 0; i < fds; ++i)
      m.fds.emplace_back(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    return m;
  };
  PairCollector v3(kProtocolBoundary);
  auto more = v3.feed(message(MessageType::pairs, payload, 5));
  ASSERT_TRUE(more);
  EXPECT_FALSE(*more);
  auto done = v3.feed(message(MessageType::pairs_end, Writer().u32(3).take(), 0));
  ASSERT_TRUE(done);
  EXPECT_TRUE(*done);
  auto pairs = v3.take();
  ASSERT_EQ(pairs.size(), 3u);
  EXPECT_TRUE(pairs[0].upstream);
  EXPECT_FALSE(pairs[1].upstream);
  EXPECT_TRUE(pairs[2].upstream);

  PairCollector wrong(kProtocolBoundary);
  EXPECT_FALSE(wrong.feed(message(MessageType::pairs, payload, 4)));  // fds disagree
  PairCollector count(kProtocolBoundary);
  ASSERT_TRUE(count.feed(message(MessageType::pairs, payload, 5)));
  EXPECT_FALSE(count.feed(message(MessageType::pairs_end, Writer().u32(2).take(), 0)));
  // Version 2's layout: two fds each, no counts.
  PairCollector v2(2);
  ASSERT_TRUE(v2.feed(message(MessageType::pairs, encode_pairs(std::vector<std::string_view>{"x"}), 2)));
  auto v2_done = v2.feed(message(MessageType::pairs_end, Writer().u32(1).take(), 0));
  ASSERT_TRUE(v2_done);
  EXPECT_TRUE(*v2_done);
}

// The two ends of a boundary window (late.h) over a socketpair: the old
// side's window on a thread of its own, the new side's on the caller's.
std::thread old_window(UniqueFd fd, const LateHooks& hooks, const Timeouts& t, LateResult& result) {
  return std::thread([fd = std::move(fd), &hooks, t, &result]() mutable {
    boost::asio::io_context io;
    boost::asio::posix::stream_descriptor peer(io, fd.release());
    boost::asio::co_spawn(
        io,
        [&]() -> boost::asio::awaitable<void> {
          result = co_await hand_over_late(peer, kProtocolBoundary, hooks, t);
        },
        boost::asio::detached);
    io.run();
  });
}

ArrivalResult new_window(UniqueFd fd, const ArrivalHooks& hooks, const Timeouts& t) {
  ArrivalResult result;
  boost::asio::io_context io;
  boost::asio::posix::stream_descriptor peer(io, fd.release());
  boost::asio::co_spawn(
      io,
      [&]() -> boost::asio::awaitable<void> {
        result = co_await receive_late(peer, kProtocolBoundary, hooks, t);
      },
      boost::asio::detached);
  io.run();
  return result;
}

// The boundary window (late.h) between two real ends over a socketpair:
// batches with one and two fds each move, each let go by the old side
// only after `adopted` and acted on by the new side only after `handed`;
// the window ends early once nothing could move any more.
TEST(TakeoverLate, BatchesMoveThenTheWindowCloses) {
  Pair control;
  std::vector<UniqueFd> sockets;
  for (int i = 0; i < 3; ++i) sockets.emplace_back(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  std::atomic<int> windows_open{0}, windows_closed{0}, let_go{0}, old_thawed{0};
  std::atomic<int> adopted{0}, thawed{0}, new_let_go{0};
  std::atomic<int> collected{0};
  LateResult old_result;
  ArrivalResult new_result;
  Timeouts t{1s, 1s, 2s};
  LateHooks hooks;
  hooks.window = [&](bool on) { ++(on ? windows_open : windows_closed); };
  hooks.collect = [&] {
    std::vector<HandedPair> out;
    const int n = collected++;
    if (n == 0) out.push_back({"pair", sockets[0].get(), sockets[1].get()});
    if (n == 2) out.push_back({"tls", sockets[2].get(), -1});
    return out;
  };
  hooks.let_go = [&] { ++let_go; };
  hooks.thaw = [&] { ++old_thawed; };
  hooks.candidates = [&] { return collected < 4 ? std::size_t{1} : std::size_t{0}; };
  std::thread old_side = old_window(std::move(control.a), hooks, t, old_result);
  std::vector<std::size_t> batch_sizes;
  std::vector<bool> has_upstream;
  ArrivalHooks arrivals;
  arrivals.adopt = [&](std::vector<InheritedPair> pairs) -> Status {
    ++adopted;
    // The old side holds on until `adopted`.
    EXPECT_EQ(let_go.load(), static_cast<int>(batch_sizes.size()));
    batch_sizes.push_back(pairs.size());
    for (const auto& p : pairs) has_upstream.push_back(static_cast<bool>(p.upstream));
    return ok_status();
  };
  arrivals.thaw = [&] { ++thawed; };
  arrivals.let_go = [&] { ++new_let_go; };
  new_result = new_window(std::move(control.b), arrivals, t);
  old_side.join();
  EXPECT_FALSE(old_result.failed) << old_result.detail;
  EXPECT_FALSE(new_result.failed) << new_result.detail;
  EXPECT_EQ(old_result.moved, 2u);
  EXPECT_EQ(new_result.moved, 2u);
  EXPECT_EQ(batch_sizes, (std::vector<std::size_t>{1, 1}));
  EXPECT_EQ(has_upstream, (std::vector<bool>{true, false}));
  EXPECT_EQ(let_go, 2);
  EXPECT_EQ(thawed, 2);
  EXPECT_EQ(new_let_go, 0);
  EXPECT_EQ(windows_open, 1);
  EXPECT_EQ(windows_closed, 1);
  EXPECT_LT(old_result.took, 1s);  // closed early: nothing left to move
}

// The new process refuses a batch (or is gone): the old one takes it back
// and closes the window; nothing was let go.
TEST(TakeoverLate, RefusedBatchIsTakenBack) {
  Pair control;
  UniqueFd a(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)),
      b(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  std::atomic<int> let_go{0}, thawed{0}, closed{0}, new_let_go{0}, new_thawed{0};
  LateResult old_result;
  Timeouts t{1s, 1s, 2s};
  LateHooks hooks;
  hooks.window = [&](bool on) {
    if (!on) ++closed;
  };
  hooks.collect = [&] { return std::vector<HandedPair>{{"pair", a.get(), b.get()}}; };
  hooks.let_go = [&] { ++let_go; };
  hooks.thaw = [&] { ++thawed; };
  hooks.candidates = [] { return std::size_t{1}; };
  std::thread old_side = old_window(std::move(control.a), hooks, t, old_result);
  ArrivalResult new_result;
  ArrivalHooks arrivals;
  arrivals.adopt = [](std::vector<InheritedPair>) -> Status { return SysError{EBADMSG, "no"}; };
  arrivals.thaw = [&] { ++new_thawed; };
  arrivals.let_go = [&] { ++new_let_go; };
  new_result = new_window(std::move(control.b), arrivals, t);
  old_side.join();
  EXPECT_TRUE(old_result.failed);
  EXPECT_NE(old_result.detail.find("no"), std::string::npos) << old_result.detail;
  EXPECT_EQ(old_result.moved, 0u);
  EXPECT_EQ(let_go, 0);
  EXPECT_EQ(thawed, 1);
  EXPECT_EQ(closed, 1);
  EXPECT_TRUE(new_result.failed);
  EXPECT_EQ(new_thawed, 0);
}

TEST(TakeoverControlSocket, ProbeAndOwnership) {
  const auto dir = std::filesystem::temp_directory_path() / ("shunt-ctl-test-" + std::to_string(::getpid()));
  const std::string path = (dir / "c.sock").string();
  EXPECT_EQ(probe_control_socket(path), ControlState::absent);
  {
    auto first = ControlListener::bind(path);
    ASSERT_TRUE(first);
    EXPECT_EQ(probe_control_socket(path), ControlState::live);
    struct stat st {};
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    // A second one renames itself over the path; the first no longer
    // removes it when it goes.
    auto second = ControlListener::bind(path);
    ASSERT_TRUE(second);
    EXPECT_FALSE(first->owns_path());
    EXPECT_TRUE(second->owns_path());
    { auto gone = std::move(*first); }
    EXPECT_EQ(probe_control_socket(path), ControlState::live);
  }
  EXPECT_EQ(probe_control_socket(path), ControlState::absent);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shunt::takeover

// burst_peer: the byte-checking peers of the data-path burst stress (issue 15)
// for places without Python, i.e. the VM legs (tests/vm/init.sh). Speaks the
// protocol of the burst case in tests/integration/stress_datapath.py:
//
//   burst_peer server PORT BYTES
//       Listens on 127.0.0.1:PORT. Per connection: reads exactly BYTES, answers
//       SHA-256(bytes) followed by a 1 KiB tail derived from them
//       (SHA-256("down" + bytes) 32 times), then reads until the client closes.
//       Bytes starting with kResetMagic are answered with an RST instead (the
//       upstream-side reset of `reset`). Prints "listening" once bound, and
//       one line per connection that ended before its BYTES (the peer port is
//       the proxy's upstream socket); runs until killed.
//   burst_peer burst HOST PORT CLIENTS BYTES
//       CLIENTS threads connect at once (released together by a latch) and each
//       sends BYTES pseudo-random bytes right after connect(), before any
//       handover can have happened, then reads the 32 + 1024-byte answer and
//       checks both parts: a wrong digest means the upstream received other
//       bytes, a wrong tail that the client did. One line per failure (client
//       index, source port, what), then a summary; exits 1 on any failure.
//   burst_peer reset HOST PORT CONNECTIONS BYTES [HOLD]
//       CONNECTIONS connections one after the other, in turn: the client resets
//       (SO_LINGER {1,0}) half-way through its bytes; the client resets with
//       the answer unread and more bytes in flight; the upstream resets after
//       reading all BYTES, which the client must see as an RST within
//       kResetWaitS (else the upstream never got the bytes, or the proxy did
//       not pass the reset on: a failure line). Then HOLD connections are left
//       open (half idle mid-request, half streaming) and "holding" is printed:
//       the caller SIGKILLs the proxy under them, then ends this process with
//       SIGTERM. Exits 1 after any failure, 2 if the proxy cannot be reached.
//
// Plain blocking sockets and a thread per connection: the peers must be
// obviously right, not fast. Links only libc and libcrypto (for SHA-256).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <latch>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"

namespace {

using shunt::Result;
using shunt::Status;
using shunt::SysError;
using shunt::UniqueFd;
using Clock = std::chrono::steady_clock;
using Digest = std::array<unsigned char, 32>;

constexpr size_t kTailBytes = 1024;
constexpr size_t kAnswerBytes = sizeof(Digest) + kTailBytes;
// Random client bytes start with this with probability 2^-128.
constexpr std::string_view kResetMagic = "burst_peer:reset";
// Generous: under software emulation a burst of a hundred connections through
// the proxy takes seconds, and a stuck connection must still end as a failure
// line rather than hang the VM until its own timeout.
constexpr int kIoTimeoutS = 60;
// The upstream's RST is due right after the request (milliseconds, even under
// emulation); short, so a lost one costs the caller's time budget little.
constexpr int kResetWaitS = 2;

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: burst_peer server PORT BYTES\n"
               "       burst_peer burst HOST PORT CLIENTS BYTES\n"
               "       burst_peer reset HOST PORT CONNECTIONS BYTES [HOLD]\n");
  std::exit(shunt::kExitBadInput);
}

[[noreturn]] void die(const SysError& e) {
  std::fprintf(stderr, "burst_peer: %s\n", e.message().c_str());
  std::exit(shunt::kExitEnvironment);
}

long number(const char* s, long min, long max) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < min || v > max) usage();
  return v;
}

Digest sha256(std::string_view prefix, const std::vector<unsigned char>& data) {
  Digest out{};
  const std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  // Failure here is an allocation failure in libcrypto: nothing to recover.
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1 ||
      EVP_DigestUpdate(ctx.get(), prefix.data(), prefix.size()) != 1 ||
      EVP_DigestUpdate(ctx.get(), data.data(), data.size()) != 1 ||
      EVP_DigestFinal_ex(ctx.get(), out.data(), nullptr) != 1) {
    std::fprintf(stderr, "burst_peer: SHA-256 failed\n");
    std::abort();
  }
  return out;
}

// What the server answers to `data`, and what the client expects.
std::vector<unsigned char> answer_for(const std::vector<unsigned char>& data) {
  const Digest digest = sha256("", data);
  const Digest seed = sha256("down", data);
  std::vector<unsigned char> out(digest.begin(), digest.end());
  for (size_t i = 0; i < kTailBytes / seed.size(); ++i) out.insert(out.end(), seed.begin(), seed.end());
  return out;
}

void set_timeouts(int fd, int seconds = kIoTimeoutS) {
  const timeval tv{seconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

int peer_port(int fd, bool local) {
  sockaddr_storage sa{};
  socklen_t len = sizeof(sa);
  auto* p = reinterpret_cast<sockaddr*>(&sa);
  if ((local ? ::getsockname(fd, p, &len) : ::getpeername(fd, p, &len)) != 0) return 0;
  return ntohs(sa.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&sa)->sin6_port
                                        : reinterpret_cast<sockaddr_in*>(&sa)->sin_port);
}
int source_port(int fd) { return peer_port(fd, true); }

// close() then sends an RST instead of a FIN.
void arm_reset(int fd) {
  const linger l{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
}

Status send_all(int fd, const unsigned char* p, size_t n) {
  while (n > 0) {
    const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) return SysError::from_errno("send");
    p += k;
    n -= static_cast<size_t>(k);
  }
  return shunt::ok_status();
}

// Reads until `out` is full or EOF; the count read, so EOF is a short count.
// A receive timeout is an error (EAGAIN).
Result<size_t> recv_exact(int fd, std::vector<unsigned char>& out) {
  size_t got = 0;
  while (got < out.size()) {
    const ssize_t k = ::recv(fd, out.data() + got, out.size() - got, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) return SysError{errno, "recv after " + std::to_string(got) + " bytes"};
    if (k == 0) break;
    got += static_cast<size_t>(k);
  }
  return got;
}

void drain_until_close(int fd) {
  std::array<unsigned char, 65536> sink;
  while (::recv(fd, sink.data(), sink.size(), 0) > 0 || errno == EINTR) {
  }
}

// ---- server -------------------------------------------------------------------

void serve_one(UniqueFd conn, size_t bytes) {
  // Taken now: after an RST getpeername() fails.
  const int port = peer_port(conn.get(), false);
  set_timeouts(conn.get());
  std::vector<unsigned char> data(bytes);
  auto got = recv_exact(conn.get(), data);
  // The client reset cases end here on purpose; anything else that does is
  // the other half of a failure the client reports.
  if (!got || *got != bytes) {
    const std::string why = got ? "EOF after " + std::to_string(*got) + " bytes" : got.error().message();
    std::printf("burst_peer server: connection from port %d ended before its %zu bytes: %s\n", port, bytes,
                why.c_str());
    std::fflush(stdout);
    return;
  }
  if (bytes >= kResetMagic.size() && std::equal(kResetMagic.begin(), kResetMagic.end(), data.begin())) {
    // Logged so that a client that never sees this RST can tell whether the
    // upstream got its bytes.
    std::printf("burst_peer server: resetting connection from port %d as asked\n", port);
    std::fflush(stdout);
    arm_reset(conn.get());
    return;
  }
  const auto answer = answer_for(data);
  if (!send_all(conn.get(), answer.data(), answer.size())) return;
  drain_until_close(conn.get());
}

int run_server(int argc, char** argv) {
  if (argc != 4) usage();
  const auto port = static_cast<uint16_t>(number(argv[2], 1, 65535));
  const auto bytes = static_cast<size_t>(number(argv[3], 1, 1 << 30));
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener) die(SysError::from_errno("socket"));
  const int one = 1;
  ::setsockopt(listener.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0)
    die(SysError::from_errno("bind 127.0.0.1:" + std::to_string(port)));
  // The whole burst may be queued at once.
  if (::listen(listener.get(), 4096) != 0) die(SysError::from_errno("listen"));
  std::printf("burst_peer server: listening on 127.0.0.1:%u, %zu bytes per connection\n", port, bytes);
  std::fflush(stdout);
  for (;;) {
    UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE) continue;
      die(SysError::from_errno("accept"));
    }
    // Detached: the server runs until it is killed, and every handler ends on
    // its own (EOF, error, or the I/O timeout).
    std::thread(serve_one, std::move(conn), bytes).detach();
  }
}

// ---- clients ------------------------------------------------------------------

struct Target {
  sockaddr_storage addr{};
  socklen_t len = 0;
};

Target parse_target(const char* host, const char* port_text) {
  const auto port = htons(static_cast<uint16_t>(number(port_text, 1, 65535)));
  Target t;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&t.addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&t.addr);
  if (::inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = port;
    t.len = sizeof(*v4);
  } else if (::inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = port;
    t.len = sizeof(*v6);
  } else {
    usage();
  }
  return t;
}

Result<UniqueFd> connect_to(const Target& t) {
  UniqueFd fd(::socket(t.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return SysError::from_errno("socket");
  set_timeouts(fd.get());
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&t.addr), t.len) != 0)
    return SysError::from_errno("connect");
  return fd;
}

std::vector<unsigned char> random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<unsigned char> out(n);
  for (auto& b : out) b = static_cast<unsigned char>(rng());
  return out;
}

struct Failure {
  int index;
  int sport;  // 0 if the connection never got one
  std::string what;
};

// One burst client: empty on success, else what went wrong.
std::string burst_client(const Target& target, const std::vector<unsigned char>& data, std::latch& start,
                         int& sport) {
  start.arrive_and_wait();
  auto conn = connect_to(target);
  if (!conn) return conn.error().message();
  sport = source_port(conn->get());
  if (auto sent = send_all(conn->get(), data.data(), data.size()); !sent) return sent.error().message();
  std::vector<unsigned char> answer(kAnswerBytes);
  auto got = recv_exact(conn->get(), answer);
  if (!got) return got.error().message();
  if (*got != kAnswerBytes)
    return "EOF after " + std::to_string(*got) + " of " + std::to_string(kAnswerBytes) +
           " answer bytes (the upstream did not get all bytes, or the answer was cut)";
  const auto expected = answer_for(data);
  if (!std::equal(answer.begin(), answer.begin() + sizeof(Digest), expected.begin()))
    return "upstream received different bytes (digest mismatch)";
  if (!std::equal(answer.begin() + sizeof(Digest), answer.end(), expected.begin() + sizeof(Digest)))
    return "client received different bytes (tail mismatch)";
  return {};
}

int run_burst(int argc, char** argv) {
  if (argc != 6) usage();
  const Target target = parse_target(argv[2], argv[3]);
  const auto clients = static_cast<int>(number(argv[4], 1, 10000));
  const auto bytes = static_cast<size_t>(number(argv[5], 1, 1 << 30));
  // Printed so a failing client's bytes can be regenerated.
  const uint64_t seed = static_cast<uint64_t>(Clock::now().time_since_epoch().count()) ^ ::getpid();

  std::vector<std::vector<unsigned char>> data;
  data.reserve(clients);
  for (int i = 0; i < clients; ++i) data.push_back(random_bytes(bytes, seed + i));
  std::latch start(clients);
  std::mutex mu;
  std::vector<Failure> failures;
  const auto began = Clock::now();
  {
    std::vector<std::jthread> threads;
    threads.reserve(clients);
    for (int i = 0; i < clients; ++i) {
      threads.emplace_back([&, i] {
        int sport = 0;
        std::string what = burst_client(target, data[i], start, sport);
        if (what.empty()) return;
        std::lock_guard lock(mu);
        failures.push_back({i, sport, std::move(what)});
      });
    }
  }
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - began).count();
  std::sort(failures.begin(), failures.end(), [](const auto& a, const auto& b) { return a.index < b.index; });
  for (const auto& f : failures)
    std::printf("burst FAIL client %d source port %d: %s\n", f.index, f.sport, f.what.c_str());
  std::printf("burst: %d clients x %zu bytes to %s:%s, %zu failures, %lld ms, seed %llu\n", clients, bytes,
              argv[2], argv[3], failures.size(), static_cast<long long>(ms),
              static_cast<unsigned long long>(seed));
  return failures.empty() ? 0 : 1;
}

// Keeps writing until stopped or the connection breaks (the proxy was killed).
void pump(int fd, const std::atomic<bool>& stop) {
  const timeval tv{0, 200 * 1000};  // so `stop` is seen while the window is closed
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  std::vector<unsigned char> chunk(65536, 'y');
  while (!stop) {
    if (::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL) < 0 && errno != EAGAIN && errno != EINTR) return;
  }
}

int run_reset(int argc, char** argv) {
  if (argc != 6 && argc != 7) usage();
  const Target target = parse_target(argv[2], argv[3]);
  const auto connections = static_cast<int>(number(argv[4], 0, 10000));
  const auto bytes = static_cast<size_t>(number(argv[5], kResetMagic.size(), 1 << 30));
  const auto hold = argc == 7 ? static_cast<int>(number(argv[6], 0, 1000)) : 0;
  const auto data = random_bytes(bytes, static_cast<uint64_t>(::getpid()));
  auto reset_request = data;
  std::copy(kResetMagic.begin(), kResetMagic.end(), reset_request.begin());
  int failures = 0;

  for (int i = 0; i < connections; ++i) {
    auto conn = connect_to(target);
    if (!conn) die(conn.error());
    const int fd = conn->get();
    switch (i % 3) {
      case 0:  // client resets mid-request: the upstream is still reading
        (void)send_all(fd, data.data(), bytes / 2);
        arm_reset(fd);
        break;
      case 1: {  // client resets with its answer unread and more bytes in flight
        (void)send_all(fd, data.data(), bytes);
        const std::vector<unsigned char> more(256 << 10, 'x');
        const timeval tv{0, 100 * 1000};  // in flight, not necessarily all sent
        ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        (void)::send(fd, more.data(), more.size(), MSG_NOSIGNAL);
        arm_reset(fd);
        break;
      }
      default: {  // the upstream resets after reading the request
        set_timeouts(fd, kResetWaitS);
        const auto sent = send_all(fd, reset_request.data(), bytes);
        std::vector<unsigned char> sink(1);
        auto got = recv_exact(fd, sink);
        if (sent && !got && got.error().code == ECONNRESET) break;
        const std::string what = !sent ? sent.error().message()
                                 : got ? (*got ? "an answer" : "EOF") + std::string(" instead of an RST")
                                       : got.error().message() + ", no RST";
        std::printf("reset FAIL connection %d source port %d: upstream reset: %s\n", i, source_port(fd),
                    what.c_str());
        ++failures;
        break;
      }
    }
  }

  // Held pairs for the SIGKILL: they are still in the proxy's maps, one side
  // mid-request and idle, the other streaming, when the proxy dies. SIGTERM
  // ends the hold; it is blocked before the pump threads start so that they
  // inherit the mask and sigwait() below is the one place it is taken.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::atomic<bool> stop{false};
  std::vector<UniqueFd> held;
  std::vector<std::jthread> pumps;
  for (int i = 0; i < hold; ++i) {
    auto conn = connect_to(target);
    if (!conn) die(conn.error());
    if (i % 2 == 0) {
      (void)send_all(conn->get(), data.data(), bytes / 2);
    } else {
      (void)send_all(conn->get(), data.data(), bytes);
      pumps.emplace_back(pump, conn->get(), std::cref(stop));
    }
    held.push_back(std::move(*conn));
  }
  std::printf("burst_peer reset: %d connections reset, %d failures, holding %d\n", connections, failures,
              hold);
  std::fflush(stdout);
  if (hold > 0) {
    int sig = 0;
    sigwait(&stop_signals, &sig);
  }
  stop = true;
  pumps.clear();  // joins before `held` closes their fds
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) usage();
  const std::string_view mode = argv[1];
  if (mode == "server") return run_server(argc, argv);
  if (mode == "burst") return run_burst(argc, argv);
  if (mode == "reset") return run_reset(argc, argv);
  usage();
}

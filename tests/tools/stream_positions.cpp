// A TCP peer whose bytes name their own stream position, for chasing
// duplicated, lost or misplaced bytes on shunt's data paths
// (docs/datapath.md): every aligned 8-byte word at stream offset o is
// (tag << 56) | o, little-endian. The receiver checks every byte and, at a
// mismatch, says which stream (tag) and which offset the bytes there came
// from, then follows the new mapping, so that a repeated segment reads as
// "at received offset P: bytes from offset P - N" and the point where the
// stream resumes is reported as another mapping change.
//
//   stream_positions server PORT DOWN_BYTES [pacing...]  (one connection at a time, until killed)
//   stream_positions client PORT UP_BYTES [pacing...]    (one connection, to 127.0.0.1:PORT)
//
// pacing: --stall-after BYTES --stall-ms MS (one pause of the reader),
//         --jitter-every BYTES --jitter-ms MS (a random pause up to MS every BYTES read).
// Both ends send their share and read the other's to EOF at once. Each
// connection prints one line "RESULT role=... received=N sent=N changes=K ok|BAD";
// mapping changes print "MISMATCH ..." lines before it. Exit status 1 on a
// mismatch (client) or a failed connection.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr std::uint64_t kOffsetMask = (std::uint64_t{1} << 56) - 1;
constexpr std::uint8_t kUpTag = 'U';    // client -> upstream
constexpr std::uint8_t kDownTag = 'D';  // upstream -> client

struct Pacing {
  std::uint64_t stall_after = 0;
  int stall_ms = 0;
  std::uint64_t jitter_every = 0;
  int jitter_ms = 0;
};

std::uint64_t word_at(std::uint8_t tag, std::uint64_t offset) {
  return (std::uint64_t{tag} << 56) | (offset & ~std::uint64_t{7});
}

std::uint8_t byte_at(std::uint8_t tag, std::uint64_t offset) {
  const std::uint64_t w = word_at(tag, offset);
  return static_cast<std::uint8_t>(w >> (8 * (offset & 7)));
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

bool wait_for(int fd, short events) {
  pollfd p{fd, events, 0};
  for (;;) {
    const int n = ::poll(&p, 1, 120000);
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR) return false;
  }
}

// Sends `total` bytes of stream `tag`, then shuts the write side.
bool send_stream(int fd, std::uint8_t tag, std::uint64_t total, std::uint64_t& sent) {
  std::vector<std::uint64_t> buffer((1 << 20) / 8 + 1);
  sent = 0;
  while (sent < total) {
    const std::uint64_t base = sent & ~std::uint64_t{7};
    for (std::size_t i = 0; i < buffer.size(); ++i) buffer[i] = word_at(tag, base + 8 * i);
    const auto* bytes = reinterpret_cast<const char*>(buffer.data()) + (sent - base);
    const std::size_t len = static_cast<std::size_t>(std::min<std::uint64_t>(total - sent, 1 << 20));
    const ssize_t n = ::send(fd, bytes, len, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::uint64_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!wait_for(fd, POLLOUT)) return false;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      std::fprintf(stderr, "send: %s\n", std::strerror(errno));
      return false;
    }
  }
  ::shutdown(fd, SHUT_WR);
  return true;
}

// Checks stream `tag` to EOF: every byte against the position it should hold.
class Checker {
 public:
  Checker(std::uint8_t tag, const char* role) : tag_(tag), role_(role) {}

  void feed(const std::uint8_t* data, std::size_t n) {
    std::size_t i = 0;
    while (i < n && !lost_) {
      if (diagnosing_) {
        diag_.push_back(data[i++]);
        ++received_;
        if (diag_.size() == kDiagBytes) diagnose();
        continue;
      }
      const std::uint64_t src = received_ + delta_;
      if ((src & 7) == 0 && i + 8 <= n) {
        std::uint64_t w;
        std::memcpy(&w, data + i, 8);
        if (w == word_at(tag_, src)) {
          i += 8;
          received_ += 8;
          continue;
        }
      }
      if (data[i] == byte_at(tag_, src)) {
        ++i;
        ++received_;
        continue;
      }
      // First wrong byte: gather what follows and find where it came from.
      diagnosing_ = true;
      diag_start_ = received_;
      diag_.clear();
    }
  }

  void finish() {
    if (diagnosing_) {
      std::printf("MISMATCH role=%s at=%" PRIu64 " (stream ended within %zu bytes of it)\n", role_,
                  diag_start_, diag_.size());
      ++changes_;
    }
  }

  [[nodiscard]] std::uint64_t received() const { return received_; }
  [[nodiscard]] int changes() const { return changes_; }
  // Stopped checking: bytes of the other stream, or unrecognised ones.
  [[nodiscard]] bool lost() const { return lost_; }

 private:
  static constexpr std::size_t kDiagBytes = 64;

  void diagnose() {
    diagnosing_ = false;
    ++changes_;
    for (std::size_t k = 0; k < 8; ++k) {
      std::uint64_t w, next;
      std::memcpy(&w, diag_.data() + k, 8);
      std::memcpy(&next, diag_.data() + k + 8, 8);
      const auto tag = static_cast<std::uint8_t>(w >> 56);
      const std::uint64_t offset = w & kOffsetMask;
      if ((tag != kUpTag && tag != kDownTag) || (offset & 7) || next != w + 8) continue;
      const std::uint64_t src = offset - k;
      std::printf("MISMATCH role=%s t=%.6f at=%" PRIu64 " expected_src=%" PRIu64
                  " found_tag=%c found_src=%" PRIu64 " shift=%" PRId64 " (found_src - expected_src)\n",
                  role_, now_s(), diag_start_, diag_start_ + delta_, tag, src,
                  static_cast<std::int64_t>(src - (diag_start_ + delta_)));
      std::fflush(stdout);
      if (tag != tag_) {
        // Another stream's bytes: no mapping to follow; count the rest.
        lost_ = true;
        return;
      }
      delta_ = src - diag_start_;
      // Re-check the gathered bytes under the new mapping.
      std::vector<std::uint8_t> again;
      again.swap(diag_);
      received_ = diag_start_;
      feed(again.data(), again.size());
      return;
    }
    std::printf("MISMATCH role=%s t=%.6f at=%" PRIu64 " expected_src=%" PRIu64 " unrecognised bytes:", role_,
                now_s(), diag_start_, diag_start_ + delta_);
    for (std::size_t k = 0; k < 32; ++k) std::printf(" %02x", diag_[k]);
    std::printf("\n");
    std::fflush(stdout);
    lost_ = true;
  }

  std::uint8_t tag_;
  const char* role_;
  std::uint64_t received_ = 0;
  std::uint64_t delta_ = 0;  // source offset = received offset + delta
  bool diagnosing_ = false;
  std::uint64_t diag_start_ = 0;
  std::vector<std::uint8_t> diag_;
  int changes_ = 0;
  bool lost_ = false;
};

bool receive_stream(int fd, Checker& checker, const Pacing& pacing, std::uint64_t& total) {
  std::vector<std::uint8_t> buffer(1 << 20);
  std::mt19937 rng(static_cast<unsigned>(now_s() * 1e6));
  std::uint64_t next_jitter = pacing.jitter_every;
  total = 0;
  bool stalled = false;
  for (;;) {
    const ssize_t n = ::recv(fd, buffer.data(), buffer.size(), 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (!wait_for(fd, POLLIN)) {
          std::fprintf(stderr, "receive: no bytes for 120 s after %" PRIu64 "\n", total);
          return false;
        }
        continue;
      }
      std::fprintf(stderr, "recv: %s\n", std::strerror(errno));
      return false;
    }
    total += static_cast<std::uint64_t>(n);
    if (!checker.lost()) checker.feed(buffer.data(), static_cast<std::size_t>(n));
    if (!stalled && pacing.stall_ms && total >= pacing.stall_after) {
      stalled = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(pacing.stall_ms));
    }
    if (pacing.jitter_every && total >= next_jitter) {
      next_jitter = total + pacing.jitter_every;
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % (1000 * pacing.jitter_ms + 1)));
    }
  }
  checker.finish();
  return true;
}

// One connection: send `total` of `send_tag`, check `recv_tag` to EOF.
bool run_connection(int fd, const char* role, std::uint8_t send_tag, std::uint8_t recv_tag,
                    std::uint64_t total, const Pacing& pacing) {
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  std::uint64_t sent = 0;
  std::atomic<bool> send_ok{false};
  std::thread sender([&] { send_ok = send_stream(fd, send_tag, total, sent); });
  Checker checker(recv_tag, role);
  std::uint64_t received = 0;
  const bool recv_ok = receive_stream(fd, checker, pacing, received);
  sender.join();
  const bool ok = recv_ok && send_ok && checker.changes() == 0;
  std::printf("RESULT role=%s received=%" PRIu64 " sent=%" PRIu64 " changes=%d %s\n", role, received, sent,
              checker.changes(), ok ? "ok" : "BAD");
  std::fflush(stdout);
  return ok;
}

Pacing parse_pacing(int argc, char** argv, int first) {
  Pacing p;
  for (int i = first; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    const auto value = std::strtoull(argv[i + 1], nullptr, 0);
    if (key == "--stall-after")
      p.stall_after = value;
    else if (key == "--stall-ms")
      p.stall_ms = static_cast<int>(value);
    else if (key == "--jitter-every")
      p.jitter_every = value;
    else if (key == "--jitter-ms")
      p.jitter_ms = static_cast<int>(value);
    else
      std::fprintf(stderr, "unknown option %s\n", key.c_str());
  }
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s server|client PORT BYTES [pacing...]\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1];
  const auto port = static_cast<std::uint16_t>(std::atoi(argv[2]));
  const std::uint64_t total = std::strtoull(argv[3], nullptr, 0);
  const Pacing pacing = parse_pacing(argc, argv, 4);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

  if (mode == "client") {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      std::perror("connect");
      return 1;
    }
    const bool ok = run_connection(fd, "client", kUpTag, kDownTag, total, pacing);
    ::close(fd);
    return ok ? 0 : 1;
  }
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  const int one = 1;
  ::setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener, 16) != 0) {
    std::perror("bind/listen");
    return 1;
  }
  std::printf("LISTENING\n");
  std::fflush(stdout);
  for (;;) {
    const int fd = ::accept(listener, nullptr, nullptr);
    if (fd < 0) {
      if (errno == EINTR) continue;
      std::perror("accept");
      return 1;
    }
    run_connection(fd, "server", kDownTag, kUpTag, total, pacing);
    ::close(fd);
  }
}

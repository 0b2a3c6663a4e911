// A TCP peer whose bytes name their own stream position, for chasing
// duplicated, lost or misplaced bytes on shunt's data paths
// (docs/datapath.md): every aligned 8-byte word at stream offset o is
// (tag << 56) | o, little-endian. The receiver checks every byte and, at a
// mismatch, says which stream (tag) and which offset the bytes there came
// from, then follows the new mapping, so that a repeated segment reads as
// "at received offset P: bytes from offset P - N" and the point where the
// stream resumes is reported as another mapping change.
//
//   stream_positions server [ADDR:]PORT DOWN_BYTES [options...]  (a thread per connection, until killed)
//   stream_positions client [ADDR:]PORT UP_BYTES [options...]
//
// ADDR is IPv4, 127.0.0.1 when left out. Options:
//   --stall-after BYTES --stall-ms MS     one pause of the reader;
//   --jitter-every BYTES --jitter-ms MS   a random pause of the reader up to MS every BYTES read;
//   --send-chunk BYTES                    the most one send() offers (default 1 MiB);
//   --send-pause-every BYTES --send-pause-ms MS
//                                         the sender sleeps MS before every BYTES it sends, the
//                                         first time before its first byte (so a proxy can hand
//                                         the connection over, and a fence that needs the sender
//                                         quiet can open);
//   --send-at-once BYTES                  ... except that the first BYTES go out right after
//                                         connect, with no pause before them (bytes a proxy
//                                         receives before it can switch paths);
//   --reset-after BYTES                   once this end has received BYTES, it stops sending and
//                                         resets (SO_LINGER {1,0}), without a FIN before;
//   --expect-reset                        the connection passes only if it ends in a reset
//                                         (ECONNRESET or EPIPE on either direction);
//   --blocking                            a blocking socket (its calls bounded by --timeout-s):
//                                         EAGAIN from send() or recv() is a failure (shunt's endpoint
//                                         short-circuit must refuse such a socket, docs/datapath.md "Blocking
//                                         readers"); without it the client's socket is O_NONBLOCK from
//                                         creation (connect included), the server's from
//                                         accept;
//   --connections N                       client: N connections at once, one thread each;
//   --timeout-s S                         no progress for S seconds fails (default 120).
// Both ends send their share and read the other's to EOF at once. Each
// connection prints one line "RESULT role=... received=N sent=N changes=K ok|BAD
// [reset=seen|none|sent] local=ADDR:PORT peer=ADDR:PORT [error=...]"; mapping
// changes print "MISMATCH ..." lines before it. The client exits 1 if any
// connection failed or had a mismatch.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
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

struct Options {
  // Reader pacing.
  std::uint64_t stall_after = 0;
  int stall_ms = 0;
  std::uint64_t jitter_every = 0;
  int jitter_ms = 0;
  // Sender.
  std::uint64_t send_chunk = 1 << 20;
  std::uint64_t send_pause_every = 0;
  std::uint64_t send_at_once = 0;  // sent before the first pause
  int send_pause_ms = 0;
  // Resets, blocking, connections.
  std::uint64_t reset_after = 0;  // 0: never
  bool expect_reset = false;
  bool blocking = false;
  int connections = 1;
  int timeout_s = 120;
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

// One connection's state shared by its sender thread and its reader.
struct Conn {
  Conn(int fd_, const Options& opt_) : fd(fd_), opt(opt_) {}
  int fd;
  const Options& opt;
  std::atomic<bool> stop_sending{false};  // the reader is about to reset
  std::atomic<bool> reset_seen{false};    // ECONNRESET or EPIPE on either direction
  std::string error;                      // the first failure, for the RESULT line
  std::atomic_flag error_set = ATOMIC_FLAG_INIT;

  void fail(const std::string& what) {
    if (!error_set.test_and_set()) error = what;
  }
  // A reset by the peer (or by the proxy between): true if it was one.
  bool note_reset(int err) {
    if (err != ECONNRESET && err != EPIPE) return false;
    reset_seen = true;
    return true;
  }
};

// Polls in short slices, so that a sender the reader stops does not sit out
// the whole timeout. False on timeout or when stopped.
bool wait_for(Conn& c, short events) {
  pollfd p{c.fd, events, 0};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(c.opt.timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    if (events == POLLOUT && c.stop_sending) return false;
    const int n = ::poll(&p, 1, 100);
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
  return false;
}

void sleep_ms(Conn& c, int ms) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (!c.stop_sending && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
        until - std::chrono::steady_clock::now(), std::chrono::milliseconds(20)));
}

// Sends `total` bytes of stream `tag` (paced as asked), then shuts the write
// side, unless this end is to reset: its peer must see the RST, not a FIN.
// False on a failure; a reset by the peer (noted in `c`) or a stop by the
// reader is not one.
bool send_stream(Conn& c, std::uint8_t tag, std::uint64_t total, std::uint64_t& sent) {
  const Options& o = c.opt;
  std::vector<std::uint64_t> buffer(o.send_chunk / 8 + 2);
  std::uint64_t next_pause = o.send_pause_ms ? o.send_at_once : UINT64_MAX;
  sent = 0;
  while (sent < total && !c.stop_sending) {
    if (sent >= next_pause) {
      sleep_ms(c, o.send_pause_ms);
      next_pause = o.send_pause_every ? sent + o.send_pause_every : UINT64_MAX;
      continue;
    }
    const std::uint64_t len = std::min({total - sent, o.send_chunk, next_pause - sent});
    const std::uint64_t base = sent & ~std::uint64_t{7};
    const std::size_t words = static_cast<std::size_t>((sent - base + len + 7) / 8);
    for (std::size_t i = 0; i < words; ++i) buffer[i] = word_at(tag, base + 8 * i);
    const auto* bytes = reinterpret_cast<const char*>(buffer.data()) + (sent - base);
    const double started = now_s();
    const ssize_t n = ::send(c.fd, bytes, static_cast<std::size_t>(len), MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::uint64_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (o.blocking) {
        c.fail(now_s() - started >= o.timeout_s - 1
                   ? "send: no room for " + std::to_string(o.timeout_s) + " s"
                   : std::string("send: EAGAIN on a blocking socket"));
        return false;
      }
      if (!wait_for(c, POLLOUT) && !c.stop_sending) {
        c.fail("send: no room for " + std::to_string(o.timeout_s) + " s at " + std::to_string(sent));
        return false;
      }
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      if (c.note_reset(errno)) return true;
      c.fail(std::string("send: ") + std::strerror(errno));
      return false;
    }
  }
  if (!o.reset_after && !c.stop_sending) ::shutdown(c.fd, SHUT_WR);
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

enum class ReceiveEnd { eof, reset, reached, failed };

// Reads and checks until EOF, a reset, or (with --reset-after) the count.
ReceiveEnd receive_stream(Conn& c, Checker& checker, std::uint64_t& total) {
  const Options& o = c.opt;
  std::vector<std::uint8_t> buffer(1 << 20);
  std::mt19937 rng(static_cast<unsigned>(now_s() * 1e6));
  std::uint64_t next_jitter = o.jitter_every;
  total = 0;
  bool stalled = false;
  ReceiveEnd end = ReceiveEnd::eof;
  for (;;) {
    const double started = now_s();
    const ssize_t n = ::recv(c.fd, buffer.data(), buffer.size(), 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (o.blocking) {
          c.fail((now_s() - started >= o.timeout_s - 1
                      ? "recv: no bytes for " + std::to_string(o.timeout_s) + " s"
                      : std::string("recv: EAGAIN on a blocking socket")) +
                 " after " + std::to_string(total));
          end = ReceiveEnd::failed;
          break;
        }
        if (!wait_for(c, POLLIN)) {
          c.fail("recv: no bytes for " + std::to_string(o.timeout_s) + " s after " + std::to_string(total));
          end = ReceiveEnd::failed;
          break;
        }
        continue;
      }
      if (c.note_reset(errno)) {
        end = ReceiveEnd::reset;
        break;
      }
      c.fail(std::string("recv: ") + std::strerror(errno));
      end = ReceiveEnd::failed;
      break;
    }
    total += static_cast<std::uint64_t>(n);
    if (!checker.lost()) checker.feed(buffer.data(), static_cast<std::size_t>(n));
    if (o.reset_after && total >= o.reset_after) {
      end = ReceiveEnd::reached;
      break;
    }
    if (!stalled && o.stall_ms && total >= o.stall_after) {
      stalled = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(o.stall_ms));
    }
    if (o.jitter_every && total >= next_jitter) {
      next_jitter = total + o.jitter_every;
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % (1000 * o.jitter_ms + 1)));
    }
  }
  checker.finish();
  return end;
}

std::string address_of(int fd, bool peer) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  if ((peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len)
            : ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len)) != 0)
    return "?";
  char text[INET_ADDRSTRLEN] = "?";
  ::inet_ntop(AF_INET, &a.sin_addr, text, sizeof text);
  return std::string(text) + ":" + std::to_string(ntohs(a.sin_port));
}

// One connection: send `total` of `send_tag`, check `recv_tag` to EOF (or
// to the reset asked for); then, with --reset-after, reset it. Closes fd.
bool run_connection(int fd, const char* role, std::uint8_t send_tag, std::uint8_t recv_tag,
                    std::uint64_t total, const Options& opt) {
  if (!opt.blocking) {
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  } else {
    // A blocking call on a stalled path would wait forever: bounded by the
    // timeout, after which it fails with EAGAIN (told apart below by the
    // time it took).
    const timeval limit{opt.timeout_s, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
  }
  const std::string local = address_of(fd, false), peer = address_of(fd, true);
  Conn c(fd, opt);
  std::uint64_t sent = 0;
  std::atomic<bool> send_ok{false};
  std::thread sender([&] { send_ok = send_stream(c, send_tag, total, sent); });
  Checker checker(recv_tag, role);
  std::uint64_t received = 0;
  const ReceiveEnd end = receive_stream(c, checker, received);
  if (end == ReceiveEnd::reached) c.stop_sending = true;
  sender.join();
  const char* reset = "";
  bool ok = send_ok && checker.changes() == 0;
  if (opt.reset_after) {
    ok = ok && end == ReceiveEnd::reached;
    if (end == ReceiveEnd::eof) c.fail("EOF before --reset-after");
    const linger abort{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort, sizeof abort);
    reset = " reset=sent";
  } else if (opt.expect_reset) {
    ok = ok && c.reset_seen && end != ReceiveEnd::failed;
    if (!c.reset_seen && end == ReceiveEnd::eof) c.fail("EOF, no reset");
    reset = c.reset_seen ? " reset=seen" : " reset=none";
  } else {
    ok = ok && end == ReceiveEnd::eof && !c.reset_seen;
    if (c.reset_seen) c.fail("reset");
  }
  ::close(fd);
  std::printf("RESULT role=%s received=%" PRIu64 " sent=%" PRIu64 " changes=%d %s%s local=%s peer=%s%s%s\n",
              role, received, sent, checker.changes(), ok ? "ok" : "BAD", reset, local.c_str(), peer.c_str(),
              c.error.empty() ? "" : " error=", c.error.c_str());
  std::fflush(stdout);
  return ok;
}

// The client's socket: O_NONBLOCK from creation unless --blocking, so that
// it is non-blocking whenever a proxy first looks at it.
int connect_to(const sockaddr_in& addr, const Options& opt) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | (opt.blocking ? 0 : SOCK_NONBLOCK), 0);
  if (fd < 0) return -1;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) return fd;
  if (errno == EINPROGRESS) {
    pollfd p{fd, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof err;
    if (::poll(&p, 1, opt.timeout_s * 1000) == 1 && ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 &&
        err == 0)
      return fd;
    errno = err ? err : ETIMEDOUT;
  }
  const int saved = errno;
  ::close(fd);
  errno = saved;
  return -1;
}

Options parse_options(int argc, char** argv, int first) {
  Options o;
  for (int i = first; i < argc; ++i) {
    const std::string key = argv[i];
    if (key == "--expect-reset") {
      o.expect_reset = true;
      continue;
    }
    if (key == "--blocking") {
      o.blocking = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s needs a value\n", key.c_str());
      std::exit(2);
    }
    const auto value = std::strtoull(argv[++i], nullptr, 0);
    if (key == "--stall-after")
      o.stall_after = value;
    else if (key == "--stall-ms")
      o.stall_ms = static_cast<int>(value);
    else if (key == "--jitter-every")
      o.jitter_every = value;
    else if (key == "--jitter-ms")
      o.jitter_ms = static_cast<int>(value);
    else if (key == "--send-chunk")
      o.send_chunk = std::max<std::uint64_t>(value, 8);
    else if (key == "--send-at-once")
      o.send_at_once = value;
    else if (key == "--send-pause-every")
      o.send_pause_every = value;
    else if (key == "--send-pause-ms")
      o.send_pause_ms = static_cast<int>(value);
    else if (key == "--reset-after")
      o.reset_after = value;
    else if (key == "--connections")
      o.connections = std::max(1, static_cast<int>(value));
    else if (key == "--timeout-s")
      o.timeout_s = std::max(1, static_cast<int>(value));
    else {
      std::fprintf(stderr, "unknown option %s\n", key.c_str());
      std::exit(2);
    }
  }
  return o;
}

// "[ADDR:]PORT", IPv4.
bool parse_address(const std::string& text, sockaddr_in& addr) {
  addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const auto colon = text.rfind(':');
  if (colon != std::string::npos && ::inet_pton(AF_INET, text.substr(0, colon).c_str(), &addr.sin_addr) != 1)
    return false;
  const int port = std::atoi(text.c_str() + (colon == std::string::npos ? 0 : colon + 1));
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  return port > 0 && port < 65536;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s server|client [ADDR:]PORT BYTES [options...]\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1];
  sockaddr_in addr{};
  if (!parse_address(argv[2], addr)) {
    std::fprintf(stderr, "bad address %s\n", argv[2]);
    return 2;
  }
  const std::uint64_t total = std::strtoull(argv[3], nullptr, 0);
  const Options opt = parse_options(argc, argv, 4);

  if (mode == "client") {
    std::atomic<int> failed{0};
    std::vector<std::thread> clients;
    for (int i = 0; i < opt.connections; ++i)
      clients.emplace_back([&] {
        const int fd = connect_to(addr, opt);
        if (fd < 0) {
          std::printf("RESULT role=client BAD error=connect: %s\n", std::strerror(errno));
          std::fflush(stdout);
          ++failed;
        } else if (!run_connection(fd, "client", kUpTag, kDownTag, total, opt)) {
          ++failed;
        }
      });
    for (auto& t : clients) t.join();
    return failed ? 1 : 0;
  }
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  const int one = 1;
  ::setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener, 64) != 0) {
    std::perror("bind/listen");
    return 1;
  }
  std::printf("LISTENING\n");
  std::fflush(stdout);
  for (;;) {
    // Non-blocking from accept on (unless --blocking): a proxy that
    // captures the server's socket may look at it before this
    // connection's thread runs.
    const int fd = ::accept4(listener, nullptr, nullptr, opt.blocking ? 0 : SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EINTR) continue;
      std::perror("accept");
      return 1;
    }
    // Detached: the process runs until killed, and a connection's thread
    // touches nothing but its fd, `opt` and stdout.
    std::thread([fd, &opt, total] { run_connection(fd, "server", kDownTag, kUpTag, total, opt); }).detach();
  }
}

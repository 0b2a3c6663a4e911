// shunt-scale-client: holds tens of thousands of idle connections through a
// proxy, cheaply, and measures what the proxy does while it holds them
// (bench/scale, tests/integration/test_scale.py).
//
//   shunt-scale-client --http ADDR:PORT --tcp ADDR:PORT [--per-source N]
//                      [--parallel N] [--http-share F]
//
// Two kinds of idle connection:
//   http  connect, one `GET /api/items` answered with 200, then idle
//         (a keep-alive connection in some client's pool);
//   tcp   connect to an echo service, 16 bytes out and echoed back, then
//         idle (an L4-allowed connection, kernel-spliced by shunt).
// Each connection binds a source address of its own range in 127.0.0.0/8
// (at most --per-source connections per address, IP_BIND_ADDRESS_NO_PORT),
// so neither the client's ephemeral ports nor a per-source cap limit the
// count.
//
// It reads commands on stdin, one per line, and answers each with one JSON
// line on stdout once it is done, so a driver can measure the proxy between
// steps while every connection stays open:
//
//   open KIND N       open N more idle connections (KIND: http, tcp, mix);
//                     --parallel of them in flight at once; reports the
//                     rate at which they completed (connect + first exchange)
//   busy N RATE       start N http and N tcp connections that each do one
//                     exchange RATE times a second until quit
//   probe K           K GETs one after another on a keep-alive connection of
//                     its own, then K new connections each doing one GET;
//                     latency percentiles of both, in µs
//   verify            one exchange on every idle connection: a GET that must
//                     answer 200 "ok\n" on http ones, 1 KiB of a per-
//                     connection pattern echoed back byte for byte on tcp ones
//   close             closes every idle connection
//   stats             counts
//   quit
//
// Single-threaded epoll, edge-triggered, a few dozen bytes of state per idle
// connection: the client must stay small next to the proxy it measures.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tool_util.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

const char* const kToolName = "shunt-scale-client";

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: shunt-scale-client --http ADDR:PORT --tcp ADDR:PORT [--per-source N] "
               "[--parallel N] [--http-share F]\n");
  std::exit(1);
}

sockaddr_in endpoint_or_usage(const std::string& s) {
  sockaddr_in sa{};
  if (!parse_endpoint(s, sa)) usage();
  return sa;
}

constexpr std::string_view kRequest = "GET /api/items HTTP/1.1\r\nHost: scale.test\r\n\r\n";
constexpr std::size_t kHelloBytes = 16;     // the tcp kind's first exchange
constexpr std::size_t kVerifyBytes = 1024;  // the tcp kind's verify exchange
constexpr std::size_t kBusyBytes = 64;      // the busy tcp connections' message
constexpr auto kStallTimeout = std::chrono::seconds(15);

// Byte `k` of connection `id`'s pattern for exchange `round`: a position in
// the stream that any loss, duplication, reordering or mix-up between
// connections changes.
uint8_t pattern_byte(uint32_t id, uint32_t round, std::size_t k) {
  uint64_t x = (uint64_t{id} << 32 | round) * 0x9E3779B97F4A7C15ull + k * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  return static_cast<uint8_t>(x >> 56);
}

enum class Kind : uint8_t { http, tcp };
enum class Role : uint8_t { idle, busy, probe, probe_new };
enum class State : uint8_t { connecting, exchanging, idle, closed };

// One connection. Kept small: 100,000 of them live at once.
struct Conn {
  int fd = -1;
  uint32_t id = 0;
  Kind kind = Kind::http;
  Role role = Role::idle;
  State state = State::connecting;
  bool in_job = false;  // counted by the running job
  uint32_t round = 0;   // exchanges done (the pattern's round)
  uint32_t sent = 0;    // of this exchange's request
  uint32_t got = 0;     // of this exchange's response
  uint32_t want = 0;    // response bytes expected (tcp: echo of what was sent)
  bool mismatch = false;
  std::string* head = nullptr;  // http: the response head while it is read (only during an exchange)
  Clock::time_point began{};
};

struct Latencies {
  std::vector<double> us;
  void add(Clock::duration d) { us.push_back(std::chrono::duration<double, std::micro>(d).count()); }
  double pct(double p) {
    if (us.empty()) return 0;
    std::sort(us.begin(), us.end());
    return us[std::min(us.size() - 1, static_cast<std::size_t>(p * static_cast<double>(us.size())))];
  }
};

class Client {
 public:
  Client(sockaddr_in http, sockaddr_in tcp, uint32_t per_source, uint32_t parallel, double http_share)
      : http_(http), tcp_(tcp), per_source_(per_source), parallel_(parallel), http_share_(http_share) {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) die("epoll_create1");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kStdin;
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, 0, &ev) != 0) die("epoll_ctl stdin");
  }

  int run() {
    std::vector<epoll_event> events(1024);
    for (;;) {
      const int n = epoll_wait(ep_, events.data(), static_cast<int>(events.size()), 5);
      if (n < 0 && errno != EINTR) die("epoll_wait");
      for (int i = 0; i < n; ++i) {
        if (events[i].data.u64 == kStdin) {
          if (!read_commands()) return 0;
          continue;
        }
        on_event(static_cast<uint32_t>(events[i].data.u64), events[i].events);
      }
      tick();
    }
  }

 private:
  static constexpr uint64_t kStdin = ~uint64_t{0};

  // ------------------------------------------------------------ connections

  // Source address for the n-th connection of a role: 127.S.M.L with L in
  // 1..254; idle connections from 127.1.0.1 on, busy and probe ones from
  // ranges of their own so they never share a per-source budget with them.
  in_addr source_for(uint32_t n, uint8_t first) const {
    const uint32_t s = n / per_source_;
    const uint32_t last = 1 + s % 254, mid = (s / 254) % 256, second = first + s / (254 * 256);
    in_addr a{};
    a.s_addr = htonl((127u << 24) | (second << 16) | (mid << 8) | last);
    return a;
  }

  // Starts a connection; its id, or -1 (counted) when the socket calls fail at once.
  int64_t start(Kind kind, Role role, uint32_t source_index) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      note_failure("socket", errno);
      return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in src{};
    src.sin_family = AF_INET;
    const uint8_t range = role == Role::idle ? 1 : role == Role::busy ? 250 : role == Role::probe ? 252 : 253;
    src.sin_addr = source_for(source_index, range);
    if (bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0) {
      note_failure("bind", errno);
      close(fd);
      return -1;
    }
    const sockaddr_in& dst = kind == Kind::http ? http_ : tcp_;
    if (connect(fd, reinterpret_cast<const sockaddr*>(&dst), sizeof dst) != 0 && errno != EINPROGRESS) {
      note_failure("connect", errno);
      close(fd);
      return -1;
    }
    uint32_t id;
    if (!free_ids_.empty()) {
      id = free_ids_.back();
      free_ids_.pop_back();
    } else {
      id = static_cast<uint32_t>(conns_.size());
      conns_.emplace_back();
    }
    Conn& c = conns_[id];
    c = Conn{};
    c.fd = fd;
    c.id = id;
    c.kind = kind;
    c.role = role;
    c.state = State::connecting;
    c.began = Clock::now();
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = id;
    if (epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl add");
    if (role == Role::busy) busy_ids_.push_back(id);
    track(c);
    return id;
  }

  void track(Conn& c) {
    c.in_job = true;
    inflight_.insert(c.id);
    last_progress_ = Clock::now();
  }

  void release(Conn& c) {
    if (c.role == Role::idle && c.round > 0) (c.kind == Kind::http ? open_http_ : open_tcp_) -= 1;
    if (c.role == Role::probe) probe_conn_ = -1;
    if (c.role == Role::busy) busy_ids_.erase(std::find(busy_ids_.begin(), busy_ids_.end(), c.id));
    if (c.fd >= 0) {
      epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
      close(c.fd);
    }
    delete c.head;
    c.head = nullptr;
    c.fd = -1;
    c.state = State::closed;
    inflight_.erase(c.id);
    free_ids_.push_back(c.id);
  }

  void note_failure(const char* what, int err) {
    ++job_failed_;
    std::string key = std::string(what) + ": " + std::strerror(err);
    ++failure_reasons_[key];
  }

  void begin_exchange(Conn& c) {
    c.state = State::exchanging;
    c.sent = 0;
    c.got = 0;
    c.mismatch = false;
    c.began = Clock::now();
    if (c.kind == Kind::http) {
      c.want = 0;  // known once the head is read
      c.head = new std::string;
    } else {
      c.want = static_cast<uint32_t>(exchange_bytes(c));
    }
    pump(c);
  }

  std::size_t exchange_bytes(const Conn& c) const {
    if (c.kind == Kind::http) return kRequest.size();
    if (c.role == Role::busy) return kBusyBytes;
    return c.round == 0 ? kHelloBytes : kVerifyBytes;
  }

  // Writes what is left of the request and reads what has come of the
  // response; finishes the exchange when the response is complete.
  void pump(Conn& c) {
    const std::size_t total = exchange_bytes(c);
    while (c.sent < total) {
      char buf[kVerifyBytes];
      const std::size_t n = std::min(sizeof buf, total - c.sent);
      if (c.kind == Kind::http) {
        std::memcpy(buf, kRequest.data() + c.sent, n);
      } else {
        for (std::size_t k = 0; k < n; ++k)
          buf[k] = static_cast<char>(pattern_byte(c.id, c.round, c.sent + k));
      }
      const ssize_t w = send(c.fd, buf, n, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EAGAIN) break;
        return fail(c, "send", errno);
      }
      c.sent += static_cast<uint32_t>(w);
    }
    char buf[16384];
    for (;;) {
      const ssize_t r = recv(c.fd, buf, sizeof buf, 0);
      if (r < 0) {
        if (errno == EAGAIN) return;
        return fail(c, "recv", errno);
      }
      if (r == 0) return fail(c, "recv", ECONNRESET, "closed by the proxy");
      if (c.kind == Kind::tcp) {
        for (ssize_t k = 0; k < r; ++k)
          if (static_cast<uint8_t>(buf[k]) !=
              pattern_byte(c.id, c.round, c.got + static_cast<std::size_t>(k)))
            c.mismatch = true;
        c.got += static_cast<uint32_t>(r);
        if (c.got > c.want) return fail(c, "echo", EPROTO, "more bytes than sent");
        if (c.got == c.want) return finish(c);
        continue;
      }
      if (!read_http(c, buf, static_cast<std::size_t>(r))) return;
      if (c.want && c.got >= c.want) return finish(c);
    }
  }

  // Collects the response head, then counts body bytes. False when the
  // connection failed.
  bool read_http(Conn& c, const char* data, std::size_t n) {
    if (c.want == 0) {
      c.head->append(data, n);
      const auto end = c.head->find("\r\n\r\n");
      if (end == std::string::npos) {
        if (c.head->size() > 16384) {
          fail(c, "http", EPROTO, "response head too long");
          return false;
        }
        return true;
      }
      if (c.head->compare(0, 12, "HTTP/1.1 200") != 0) {
        fail(c, "http", EPROTO, "status " + c.head->substr(9, 3));
        return false;
      }
      std::size_t length = 0;
      for (const char* key : {"\r\ncontent-length:", "\r\nContent-Length:"}) {
        const auto at = c.head->find(key);
        if (at != std::string::npos)
          length = std::strtoul(c.head->c_str() + at + std::strlen(key), nullptr, 10);
      }
      const std::size_t body = c.head->size() - (end + 4);
      // The origin answers "ok\n" under /api/; anything else reached the wrong place.
      if (length != 3 || (body >= 3 && c.head->compare(end + 4, 3, "ok\n") != 0)) {
        fail(c, "http", EPROTO, "unexpected body");
        return false;
      }
      c.want = static_cast<uint32_t>(end + 4 + length);
      c.got = static_cast<uint32_t>(c.head->size());
      return true;
    }
    c.got += static_cast<uint32_t>(n);
    return true;
  }

  void fail(Conn& c, const char* what, int err, const std::string& detail = {}) {
    ++job_failed_;
    ++failure_reasons_[std::string(what) + ": " + (detail.empty() ? std::strerror(err) : detail)];
    if (c.role == Role::busy) ++busy_failed_;
    release(c);
  }

  void finish(Conn& c) {
    delete c.head;
    c.head = nullptr;
    if (c.mismatch) return fail(c, "echo", EPROTO, "bytes differ from what was sent");
    const auto took = Clock::now() - c.began;
    ++c.round;
    c.state = State::idle;
    if (c.in_job) {
      c.in_job = false;
      inflight_.erase(c.id);
      ++job_done_;
      last_progress_ = Clock::now();
    }
    switch (c.role) {
      case Role::idle:
        if (c.round == 1) (c.kind == Kind::http ? open_http_ : open_tcp_) += 1;
        break;
      case Role::busy:
        ++busy_done_;
        break;
      case Role::probe:
        probe_keepalive_.add(took);
        break;
      case Role::probe_new:
        probe_new_.add(took);
        release(c);
        break;
    }
  }

  void on_event(uint32_t id, uint32_t events) {
    Conn& c = conns_[id];
    if (c.state == State::closed) return;
    if (c.state == State::connecting) {
      if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err) return fail(c, "connect", err);
      return begin_exchange(c);
    }
    if (c.state == State::exchanging) return pump(c);
    // Idle: the only news can be that the proxy closed or reset it.
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
      char b;
      const ssize_t r = recv(c.fd, &b, 1, MSG_PEEK);
      if (r > 0) {
        ++unexpected_bytes_;
        return;
      }
      ++lost_;
      release(c);
    }
  }

  // ------------------------------------------------------------------ jobs

  enum class Job { none, open, probe_keepalive, probe_new, verify, busy_start };

  void start_job(Job job) {
    job_ = job;
    job_done_ = job_failed_ = 0;
    failure_reasons_.clear();
    job_started_ = last_progress_ = Clock::now();
    second_started_ = job_started_;
    second_done_ = 0;
    per_second_.clear();
  }

  bool read_commands() {
    char buf[4096];
    const ssize_t n = read(0, buf, sizeof buf);
    if (n <= 0) return false;
    input_.append(buf, static_cast<std::size_t>(n));
    return true;
  }

  // Takes the next command when no job runs.
  bool next_command() {
    const auto nl = input_.find('\n');
    if (nl == std::string::npos) return false;
    const std::string line = input_.substr(0, nl);
    input_.erase(0, nl + 1);
    char word[32] = {}, arg[32] = {};
    long a = 0, b = 0;
    const int fields = std::sscanf(line.c_str(), "%31s %31s %ld", word, arg, &a);
    const std::string cmd = word;
    if (cmd == "open" && fields == 3) {
      const std::string kind = arg;
      if (kind != "http" && kind != "tcp" && kind != "mix") return reply_error("open KIND N");
      open_kind_ = kind;
      open_left_ = static_cast<uint64_t>(a);
      start_job(Job::open);
      return true;
    }
    if (cmd == "busy" && std::sscanf(line.c_str(), "%*s %ld %ld", &a, &b) == 2) {
      busy_rate_ = static_cast<double>(b);
      start_job(Job::busy_start);
      for (long i = 0; i < a; ++i) {
        start(Kind::http, Role::busy, static_cast<uint32_t>(busy_started_));
        start(Kind::tcp, Role::busy, static_cast<uint32_t>(busy_started_));
        ++busy_started_;
      }
      return true;
    }
    if (cmd == "probe" && std::sscanf(line.c_str(), "%*s %ld", &a) == 1) {
      probe_left_ = static_cast<uint64_t>(a);
      probe_count_ = probe_left_;
      probe_keepalive_ = {};
      probe_new_ = {};
      start_job(Job::probe_keepalive);
      return true;
    }
    if (cmd == "verify") {
      verify_next_ = 0;
      start_job(Job::verify);
      return true;
    }
    if (cmd == "close") {
      uint64_t closed = 0;
      for (auto& c : conns_)
        if (c.state == State::idle && c.role == Role::idle) {
          release(c);
          ++closed;
        }
      std::printf("{\"cmd\": \"close\", \"closed\": %llu}\n", static_cast<unsigned long long>(closed));
      std::fflush(stdout);
      return false;
    }
    if (cmd == "stats") {
      reply_stats();
      return false;
    }
    if (cmd == "quit") std::exit(0);
    return reply_error("unknown command");
  }

  bool reply_error(const char* what) {
    std::printf("{\"error\": \"%s\"}\n", what);
    std::fflush(stdout);
    return false;
  }

  void reply_stats() {
    std::printf(
        "{\"cmd\": \"stats\", \"open_http\": %llu, \"open_tcp\": %llu, \"lost\": %llu, \"busy_done\": %llu, "
        "\"busy_failed\": %llu, \"unexpected_bytes\": %llu}\n",
        static_cast<unsigned long long>(open_http_), static_cast<unsigned long long>(open_tcp_),
        static_cast<unsigned long long>(lost_), static_cast<unsigned long long>(busy_done_),
        static_cast<unsigned long long>(busy_failed_), static_cast<unsigned long long>(unexpected_bytes_));
    std::fflush(stdout);
  }

  std::string failures_json() const {
    std::string out = "{";
    for (const auto& [reason, count] : failure_reasons_) {
      if (out.size() > 1) out += ", ";
      out += "\"" + reason + "\": " + std::to_string(count);
    }
    return out + "}";
  }

  void tick() {
    const auto now = Clock::now();
    run_busy(now);
    while (job_ == Job::none && input_.find('\n') != std::string::npos) next_command();
    if (job_ == Job::none) return;
    // A job whose connections stopped making progress fails them.
    if (!inflight_.empty() && now - last_progress_ > kStallTimeout) {
      std::vector<uint32_t> stuck(inflight_.begin(), inflight_.end());
      for (uint32_t id : stuck) fail(conns_[id], "timeout", ETIMEDOUT, "no progress for 15 s");
    }
    if (now - second_started_ >= std::chrono::seconds(1)) {
      per_second_.push_back(job_done_ - second_done_);
      second_done_ = job_done_;
      second_started_ = now;
    }
    switch (job_) {
      case Job::open:
        while (open_left_ > 0 && inflight_.size() < parallel_) {
          Kind kind = open_kind_ == "tcp" ? Kind::tcp : Kind::http;
          if (open_kind_ == "mix") {
            // Keeps the share of http connections at http_share_ as they open.
            const double opened = static_cast<double>(mix_http_ + mix_tcp_);
            kind = static_cast<double>(mix_http_) <= http_share_ * opened ? Kind::http : Kind::tcp;
            (kind == Kind::http ? mix_http_ : mix_tcp_) += 1;
          }
          start(kind, Role::idle, idle_started_++);
          --open_left_;
        }
        if (open_left_ == 0 && inflight_.empty()) {
          const double s = std::chrono::duration<double>(now - job_started_).count();
          uint64_t slowest = 0;
          for (std::size_t i = 0; i < per_second_.size(); ++i)
            slowest = i == 0 ? per_second_[i] : std::min(slowest, per_second_[i]);
          std::printf(
              "{\"cmd\": \"open\", \"kind\": \"%s\", \"opened\": %llu, \"failed\": %llu, \"seconds\": %.3f, "
              "\"rate\": %.1f, \"slowest_second\": %llu, \"open_http\": %llu, \"open_tcp\": %llu, "
              "\"failures\": %s}\n",
              open_kind_.c_str(), static_cast<unsigned long long>(job_done_),
              static_cast<unsigned long long>(job_failed_), s,
              s > 0 ? static_cast<double>(job_done_) / s : 0.0, static_cast<unsigned long long>(slowest),
              static_cast<unsigned long long>(open_http_), static_cast<unsigned long long>(open_tcp_),
              failures_json().c_str());
          std::fflush(stdout);
          job_ = Job::none;
        }
        break;
      case Job::busy_start:
        if (inflight_.empty()) {
          std::printf("{\"cmd\": \"busy\", \"started\": %llu, \"failed\": %llu, \"failures\": %s}\n",
                      static_cast<unsigned long long>(job_done_),
                      static_cast<unsigned long long>(job_failed_), failures_json().c_str());
          std::fflush(stdout);
          job_ = Job::none;
        }
        break;
      case Job::probe_keepalive:
        if (!inflight_.empty()) break;
        if (probe_left_ == 0) {
          probe_left_ = probe_count_;
          job_ = Job::probe_new;
          break;
        }
        if (probe_conn_ < 0) {
          // The keep-alive probe connection; its first exchange is not timed.
          probe_conn_ = start(Kind::http, Role::probe, 0);
          if (probe_conn_ < 0) probe_left_ = 0;
          probe_first_ = true;
          break;
        }
        if (probe_first_) {
          probe_first_ = false;
          probe_keepalive_ = {};
        }
        {
          Conn& c = conns_[static_cast<uint32_t>(probe_conn_)];
          track(c);
          begin_exchange(c);
          --probe_left_;
        }
        break;
      case Job::probe_new:
        if (!inflight_.empty()) break;
        if (probe_left_ == 0) {
          const double s = std::chrono::duration<double>(now - job_started_).count();
          std::printf(
              "{\"cmd\": \"probe\", \"count\": %llu, \"failed\": %llu, \"seconds\": %.3f, "
              "\"keepalive_us\": {\"p50\": %.1f, \"p99\": %.1f, \"max\": %.1f, \"n\": %zu}, "
              "\"new_conn_us\": {\"p50\": %.1f, \"p99\": %.1f, \"max\": %.1f, \"n\": %zu}, \"failures\": "
              "%s}\n",
              static_cast<unsigned long long>(probe_count_), static_cast<unsigned long long>(job_failed_), s,
              probe_keepalive_.pct(0.5), probe_keepalive_.pct(0.99), probe_keepalive_.pct(1.0),
              probe_keepalive_.us.size(), probe_new_.pct(0.5), probe_new_.pct(0.99), probe_new_.pct(1.0),
              probe_new_.us.size(), failures_json().c_str());
          std::fflush(stdout);
          job_ = Job::none;
          break;
        }
        // Source addresses rotate over a range of their own: the new
        // connections' TIME_WAITs never crowd one address's ports.
        start(Kind::http, Role::probe_new, static_cast<uint32_t>(probe_new_started_++ % (per_source_ * 200)));
        --probe_left_;
        break;
      case Job::verify:
        while (verify_next_ < conns_.size() && inflight_.size() < parallel_) {
          Conn& c = conns_[verify_next_++];
          if (c.state != State::idle || c.role != Role::idle) continue;
          track(c);
          begin_exchange(c);
        }
        if (verify_next_ >= conns_.size() && inflight_.empty()) {
          const double s = std::chrono::duration<double>(now - job_started_).count();
          std::printf(
              "{\"cmd\": \"verify\", \"ok\": %llu, \"failed\": %llu, \"seconds\": %.3f, \"open_http\": %llu, "
              "\"open_tcp\": %llu, \"failures\": %s}\n",
              static_cast<unsigned long long>(job_done_), static_cast<unsigned long long>(job_failed_), s,
              static_cast<unsigned long long>(open_http_), static_cast<unsigned long long>(open_tcp_),
              failures_json().c_str());
          std::fflush(stdout);
          job_ = Job::none;
        }
        break;
      case Job::none:
        break;
    }
  }

  // Busy connections do one exchange each every 1/busy_rate_ seconds,
  // outside any job.
  void run_busy(Clock::time_point now) {
    if (busy_rate_ <= 0 || now < next_busy_) return;
    next_busy_ = now + std::chrono::microseconds(static_cast<int64_t>(1e6 / busy_rate_));
    for (const uint32_t id : std::vector<uint32_t>(busy_ids_)) {
      Conn& c = conns_[id];
      if (c.state == State::idle) begin_exchange(c);
    }
  }

  sockaddr_in http_, tcp_;
  uint32_t per_source_, parallel_;
  double http_share_;
  int ep_ = -1;
  std::string input_;
  std::vector<Conn> conns_;
  std::vector<uint32_t> free_ids_;
  std::unordered_set<uint32_t> inflight_;
  std::vector<uint32_t> busy_ids_;

  Job job_ = Job::none;
  Clock::time_point job_started_, last_progress_, second_started_;
  uint64_t job_done_ = 0, job_failed_ = 0, second_done_ = 0;
  std::vector<uint64_t> per_second_;
  std::map<std::string, uint64_t> failure_reasons_;

  std::string open_kind_;
  uint64_t open_left_ = 0;
  uint32_t idle_started_ = 0;
  uint64_t mix_http_ = 0, mix_tcp_ = 0;
  uint64_t open_http_ = 0, open_tcp_ = 0, lost_ = 0, unexpected_bytes_ = 0;

  double busy_rate_ = 0;
  uint64_t busy_started_ = 0, busy_done_ = 0, busy_failed_ = 0;
  Clock::time_point next_busy_{};

  uint64_t probe_left_ = 0, probe_count_ = 0, probe_new_started_ = 0;
  int64_t probe_conn_ = -1;
  bool probe_first_ = false;
  Latencies probe_keepalive_, probe_new_;

  std::size_t verify_next_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  std::string http, tcp;
  uint32_t per_source = 200, parallel = 256;
  double http_share = 0.5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    if (key == "--http") {
      http = argv[i + 1];
    } else if (key == "--tcp") {
      tcp = argv[i + 1];
    } else if (key == "--per-source") {
      per_source = static_cast<uint32_t>(std::atol(argv[i + 1]));
    } else if (key == "--parallel") {
      parallel = static_cast<uint32_t>(std::atol(argv[i + 1]));
    } else if (key == "--http-share") {
      http_share = std::atof(argv[i + 1]);
    } else {
      usage();
    }
  }
  if (http.empty() || tcp.empty() || per_source == 0 || parallel == 0) usage();
  // As many descriptors as the system allows a process: one per connection.
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  setvbuf(stdout, nullptr, _IOLBF, 0);
  Client client(endpoint_or_usage(http), endpoint_or_usage(tcp), per_source, parallel, http_share);
  return client.run();
}

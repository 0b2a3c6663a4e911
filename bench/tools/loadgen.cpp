// shunt-loadgen: the small TCP load tools the side-by-side benchmark needs and
// iperf3/wrk do not provide.
//
//   shunt-loadgen echo-server ADDR:PORT [--threads N]
//       Echoes every byte back. Serves both the ping-pong and the
//       connection-rate workloads. epoll, one loop per thread (SO_REUSEPORT).
//   shunt-loadgen pingpong ADDR:PORT [--size 64] [--count 20000] [--warmup 500]
//       One connection, TCP_NODELAY; send SIZE bytes, wait for SIZE bytes
//       back, COUNT times. Prints JSON with round-trip percentiles in µs.
//   shunt-loadgen connrate ADDR:PORT [--parallel 16] [--duration 3]
//       Keeps PARALLEL connections in flight, each: connect, send 1 byte,
//       read 1 byte, close. Prints JSON with completed connections per second.
//
// Everything is deliberately plain blocking/epoll socket code: the point is
// to add as little client-side overhead as possible, and the same overhead
// for every system under test.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
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
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

const char* const kToolName = "shunt-loadgen";

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: shunt-loadgen echo-server ADDR:PORT [--threads N]\n"
               "       shunt-loadgen pingpong ADDR:PORT [--size B] [--count N] [--warmup N]\n"
               "       shunt-loadgen connrate ADDR:PORT [--parallel N] [--duration S]\n");
  std::exit(1);
}

sockaddr_in endpoint_or_usage(const std::string& s) {
  sockaddr_in sa{};
  if (!parse_endpoint(s, sa)) usage();
  return sa;
}

// --name value options after the positional endpoint.
long option(int argc, char** argv, const char* name, long fallback) {
  for (int i = 3; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return std::atol(argv[i + 1]);
  return fallback;
}

void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// ---------------------------------------------------------------- echo-server

// Pending output per connection: echo writes are normally complete at once
// (small messages), but a slow reader must not make us drop bytes.
struct EchoConn {
  std::string pending;
};

void echo_loop(const sockaddr_in& addr) {
  const int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (lfd < 0) die("socket");
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  if (bind(lfd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0) die("bind");
  if (listen(lfd, 4096) < 0) die("listen");

  const int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = lfd;
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);

  std::unordered_map<int, EchoConn> conns;
  std::vector<char> buf(64 * 1024);
  std::vector<epoll_event> events(256);

  auto close_conn = [&](int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
    close(fd);
    conns.erase(fd);
  };
  // Returns false when the connection was closed.
  auto flush = [&](int fd, EchoConn& c) {
    while (!c.pending.empty()) {
      const ssize_t n = send(fd, c.pending.data(), c.pending.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN) break;
        close_conn(fd);
        return false;
      }
      c.pending.erase(0, static_cast<size_t>(n));
    }
    epoll_event mod{};
    mod.events = EPOLLIN | EPOLLRDHUP | (c.pending.empty() ? 0u : static_cast<uint32_t>(EPOLLOUT));
    mod.data.fd = fd;
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &mod);
    return true;
  };

  for (;;) {
    const int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == lfd) {
        for (;;) {
          const int cfd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (cfd < 0) break;
          set_nodelay(cfd);
          conns.emplace(cfd, EchoConn{});
          epoll_event cev{};
          cev.events = EPOLLIN | EPOLLRDHUP;
          cev.data.fd = cfd;
          epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
        }
        continue;
      }
      auto it = conns.find(fd);
      if (it == conns.end()) continue;
      EchoConn& c = it->second;
      if (events[i].events & EPOLLOUT) {
        if (!flush(fd, c)) continue;
      }
      if (events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        bool closed = false;
        for (;;) {
          const ssize_t r = recv(fd, buf.data(), buf.size(), 0);
          if (r > 0) {
            c.pending.append(buf.data(), static_cast<size_t>(r));
            // Stop reading while the peer is not taking our echo.
            if (c.pending.size() > (1u << 20)) break;
            continue;
          }
          if (r < 0 && errno == EAGAIN) break;
          closed = true;  // EOF or error: the client is done.
          break;
        }
        if (closed) {
          close_conn(fd);
          continue;
        }
        flush(fd, c);
      }
    }
  }
}

int echo_server(int argc, char** argv) {
  const sockaddr_in addr = endpoint_or_usage(argv[2]);
  const long threads = std::max(1L, option(argc, argv, "--threads", 1));
  std::vector<std::thread> pool;
  for (long i = 1; i < threads; ++i) pool.emplace_back(echo_loop, addr);
  echo_loop(addr);
  return 0;
}

// ------------------------------------------------------------------- pingpong

bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0) {
      if (w < 0 && errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool read_all(int fd, char* p, size_t n) {
  while (n > 0) {
    const ssize_t r = recv(fd, p, n, 0);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

double percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const size_t idx = std::min(sorted.size() - 1, static_cast<size_t>(q * static_cast<double>(sorted.size())));
  return sorted[idx];
}

int pingpong(int argc, char** argv) {
  const sockaddr_in addr = endpoint_or_usage(argv[2]);
  const size_t size = static_cast<size_t>(std::max(1L, option(argc, argv, "--size", 64)));
  const long count = std::max(1L, option(argc, argv, "--count", 20000));
  const long warmup = std::max(0L, option(argc, argv, "--warmup", 500));

  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  set_nodelay(fd);
  // A proxy that accepts but never forwards must fail the run, not hang it.
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0) die("connect");

  std::vector<char> out(size, 'x'), in(size);
  std::vector<double> rtt_us;
  rtt_us.reserve(static_cast<size_t>(count));
  const auto start = Clock::now();
  for (long i = 0; i < warmup + count; ++i) {
    const auto t0 = Clock::now();
    if (!write_all(fd, out.data(), size) || !read_all(fd, in.data(), size)) {
      std::fprintf(stderr, "shunt-loadgen: pingpong: connection lost after %ld round trips\n", i);
      return 2;
    }
    const auto t1 = Clock::now();
    if (i >= warmup) rtt_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  close(fd);

  std::sort(rtt_us.begin(), rtt_us.end());
  double sum = 0;
  for (double v : rtt_us) sum += v;
  std::printf(
      "{\"round_trips\": %zu, \"size\": %zu, \"p50_us\": %.2f, \"p90_us\": %.2f, \"p99_us\": %.2f, "
      "\"min_us\": %.2f, \"max_us\": %.2f, \"mean_us\": %.2f, \"elapsed_s\": %.3f}\n",
      rtt_us.size(), size, percentile(rtt_us, 0.50), percentile(rtt_us, 0.90), percentile(rtt_us, 0.99),
      rtt_us.front(), rtt_us.back(), sum / static_cast<double>(rtt_us.size()), elapsed);
  return 0;
}

// ------------------------------------------------------------------- connrate

// One connection slot of the connrate client: a small state machine driven
// by epoll so PARALLEL connections stay in flight from a single thread (no
// client thread scheduling noise on a 2-core box).
enum class Phase { Connecting, AwaitingEcho };

int connrate(int argc, char** argv) {
  const sockaddr_in addr = endpoint_or_usage(argv[2]);
  const long parallel = std::max(1L, option(argc, argv, "--parallel", 16));
  const double duration = static_cast<double>(std::max(1L, option(argc, argv, "--duration", 3)));

  const int ep = epoll_create1(EPOLL_CLOEXEC);
  std::unordered_map<int, Phase> slots;
  long completed = 0, errors = 0;

  auto open_one = [&]() {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    set_nodelay(fd);
    const int rc = connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
    if (rc < 0 && errno != EINPROGRESS) {
      ++errors;
      close(fd);
      return false;
    }
    slots[fd] = Phase::Connecting;
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.fd = fd;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return true;
  };
  auto finish = [&](int fd, bool ok) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
    close(fd);
    slots.erase(fd);
    ok ? ++completed : ++errors;
  };

  const auto start = Clock::now();
  const auto deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(duration));
  for (long i = 0; i < parallel; ++i) open_one();

  std::vector<epoll_event> events(256);
  bool stopping = false;
  long counted = 0;
  double elapsed = duration;
  while (!slots.empty()) {
    const int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 100);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    const bool past = Clock::now() >= deadline;
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      auto it = slots.find(fd);
      if (it == slots.end()) continue;
      bool done = false, ok = false;
      if (it->second == Phase::Connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        const char byte = 'c';
        if (err != 0 || send(fd, &byte, 1, MSG_NOSIGNAL) != 1) {
          done = true;
        } else {
          it->second = Phase::AwaitingEcho;
          epoll_event ev{};
          ev.events = EPOLLIN;
          ev.data.fd = fd;
          epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
        }
      } else {
        char byte;
        const ssize_t r = recv(fd, &byte, 1, 0);
        if (r < 0 && errno == EAGAIN) continue;
        done = true;
        ok = (r == 1);
      }
      if (done) {
        finish(fd, ok);
        if (!past) open_one();
      }
    }
    if (past && !stopping) {
      // The rate counts what completed inside the window; in-flight ones
      // finish afterwards (so nothing is left half-open) but do not count.
      stopping = true;
      counted = completed;
      elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    }
    // Safety net: a proxy that swallows connections must not hang the run.
    if (stopping && Clock::now() > deadline + std::chrono::seconds(5)) {
      std::vector<int> stuck;
      for (const auto& slot : slots) stuck.push_back(slot.first);
      for (int fd : stuck) finish(fd, false);
    }
  }
  if (!stopping) {  // every slot failed before the window ended
    counted = completed;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  }
  std::printf(
      "{\"completed\": %ld, \"errors\": %ld, \"parallel\": %ld, \"elapsed_s\": %.3f, \"conns_per_s\": "
      "%.1f}\n",
      counted, errors, parallel, elapsed, static_cast<double>(counted) / elapsed);
  return errors > completed ? 2 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) usage();
  const std::string cmd = argv[1];
  if (cmd == "echo-server") return echo_server(argc, argv);
  if (cmd == "pingpong") return pingpong(argc, argv);
  if (cmd == "connrate") return connrate(argc, argv);
  usage();
}

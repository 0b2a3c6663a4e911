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
//   shunt-loadgen paced ADDR:PORT [--conns 1000] [--size 512] [--rate 20000]
//                 [--duration 5] [--warmup 1]
//       The node-proxy workload: CONNS keep-alive connections, each carrying
//       one SIZE-byte request at a time and waiting for SIZE bytes back, at a
//       fixed aggregate RATE (open loop). Request k is scheduled at
//       start + k/RATE on connection k mod CONNS; latency runs from that
//       scheduled time, not from when it could be sent, so a system that
//       falls behind shows its queueing (no coordinated omission). Prints
//       {"phase": "measure"} and {"phase": "end"} lines when the measured
//       window opens and closes (bench/run takes its CPU snapshots there),
//       then the JSON result.
//
// Everything is deliberately plain blocking/epoll socket code: the point is
// to add as little client-side overhead as possible, and the same overhead
// for every system under test.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
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
#include <deque>
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
               "       shunt-loadgen connrate ADDR:PORT [--parallel N] [--duration S]\n"
               "       shunt-loadgen paced ADDR:PORT [--conns N] [--size B] [--rate R/s] [--duration S] "
               "[--warmup S]\n");
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

// --------------------------------------------------------------------- paced

// One keep-alive connection of the paced client. `due` holds the scheduled
// send times of requests that are due but not yet sent because the previous
// one's response has not come back (one request in flight per connection,
// like HTTP/1.1 without pipelining).
struct PacedConn {
  int fd = -1;
  bool connected = false, dead = false, in_flight = false;
  size_t sent = 0, received = 0;  // bytes of the request in flight
  Clock::time_point sched{};      // scheduled time of the request in flight
  std::deque<Clock::time_point> due;
};

int paced(int argc, char** argv) {
  const sockaddr_in addr = endpoint_or_usage(argv[2]);
  const long nconns = std::max(1L, option(argc, argv, "--conns", 1000));
  const size_t size = static_cast<size_t>(std::max(1L, option(argc, argv, "--size", 512)));
  const double rate = static_cast<double>(std::max(1L, option(argc, argv, "--rate", 20000)));
  const double duration = static_cast<double>(std::max(1L, option(argc, argv, "--duration", 5)));
  const double warmup = static_cast<double>(std::max(0L, option(argc, argv, "--warmup", 1)));
  // Wake-ups on time: the default 50 µs timer slack would be added to
  // every scheduled send (and so to every latency) at these intervals.
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);

  const int ep = epoll_create1(EPOLL_CLOEXEC);
  std::vector<PacedConn> conns(static_cast<size_t>(nconns));
  auto watch = [&](size_t i, uint32_t events, int op) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = i;
    epoll_ctl(ep, op, conns[i].fd, &ev);
  };

  // Connect every connection before the clock starts: the workload is
  // requests on open connections, not connection setup.
  for (size_t i = 0; i < conns.size(); ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    set_nodelay(fd);
    if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0 && errno != EINPROGRESS)
      die("connect");
    conns[i].fd = fd;
    watch(i, EPOLLOUT, EPOLL_CTL_ADD);
  }
  std::vector<epoll_event> events(512);
  size_t open = 0;
  const auto connect_deadline = Clock::now() + std::chrono::seconds(15);
  while (open < conns.size()) {
    if (Clock::now() > connect_deadline) {
      std::fprintf(stderr, "shunt-loadgen: paced: only %zu of %zu connections open after 15 s\n", open,
                   conns.size());
      return 2;
    }
    const int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 100);
    for (int i = 0; i < n; ++i) {
      PacedConn& c = conns[events[i].data.u64];
      if (c.connected) continue;
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        errno = err;
        die("connect");
      }
      c.connected = true;
      ++open;
      watch(events[i].data.u64, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_MOD);
    }
  }

  const std::vector<char> out(size, 'r');
  std::vector<char> buf(64 * 1024);
  const auto to_dur = [](double s) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  };
  const auto start = Clock::now() + std::chrono::milliseconds(10);
  const auto window_begin = start + to_dur(warmup);
  const auto window_end = window_begin + to_dur(duration);
  const auto drain_deadline = window_end + std::chrono::seconds(3);
  const double interval_ns = 1e9 / rate;
  auto sched_of = [&](long k) {
    return start + std::chrono::nanoseconds(static_cast<long long>(static_cast<double>(k) * interval_ns));
  };

  std::vector<double> latency_us, send_lag_us;
  latency_us.reserve(static_cast<size_t>(rate * duration * 1.1));
  send_lag_us.reserve(latency_us.capacity());
  long next = 0;  // next request to schedule
  long scheduled_in_window = 0, completed_in_window = 0, errors = 0;
  size_t max_backlog = 0, backlog = 0, in_flight = 0;
  bool measuring = false, ended = false;
  const auto in_window = [&](Clock::time_point t) { return t >= window_begin && t < window_end; };

  // Writes what is left of the request in flight; false when the
  // connection failed.
  auto push = [&](size_t i) {
    PacedConn& c = conns[i];
    while (c.sent < size) {
      const ssize_t w = send(c.fd, out.data() + c.sent, size - c.sent, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EAGAIN) {
          watch(i, EPOLLIN | EPOLLRDHUP | EPOLLOUT, EPOLL_CTL_MOD);
          return true;
        }
        return false;
      }
      c.sent += static_cast<size_t>(w);
    }
    return true;
  };
  auto fail = [&](size_t i) {
    PacedConn& c = conns[i];
    if (c.dead) return;
    c.dead = true;
    ++errors;
    if (c.in_flight) --in_flight;
    backlog -= c.due.size();
    c.due.clear();
    epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
  };
  // Starts the oldest due request of an idle connection.
  auto start_next = [&](size_t i) {
    PacedConn& c = conns[i];
    if (c.dead || c.in_flight || c.due.empty()) return;
    c.sched = c.due.front();
    c.due.pop_front();
    --backlog;
    c.in_flight = true;
    ++in_flight;
    c.sent = c.received = 0;
    if (in_window(c.sched))
      send_lag_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - c.sched).count());
    if (!push(i)) fail(i);
  };

  for (;;) {
    auto now = Clock::now();
    if (!measuring && now >= window_begin) {
      measuring = true;
      std::printf("{\"phase\": \"measure\"}\n");
      std::fflush(stdout);
    }
    if (!ended && now >= window_end) {
      ended = true;
      std::printf("{\"phase\": \"end\"}\n");
      std::fflush(stdout);
    }
    // Hand every request now due to its connection.
    for (auto t = sched_of(next); t <= now && t < window_end; t = sched_of(++next)) {
      const size_t i = static_cast<size_t>(next % nconns);
      if (in_window(t)) ++scheduled_in_window;
      if (conns[i].dead) continue;
      conns[i].due.push_back(t);
      max_backlog = std::max(max_backlog, ++backlog);
      start_next(i);
    }
    if (ended && ((backlog == 0 && in_flight == 0) || now >= drain_deadline)) break;

    // Sleep until the next scheduled send or an event, whichever is first.
    timespec timeout{0, 100'000'000};
    if (!ended) {
      const auto wait = std::max(Clock::duration::zero(), std::min(sched_of(next), window_end) - now);
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count();
      timeout = {static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    }
    const int n = epoll_pwait2(ep, events.data(), static_cast<int>(events.size()), &timeout, nullptr);
    if (n < 0 && errno != EINTR) die("epoll_pwait2");
    now = Clock::now();
    for (int e = 0; e < n; ++e) {
      const size_t i = events[e].data.u64;
      PacedConn& c = conns[i];
      if (c.dead) continue;
      if (events[e].events & EPOLLOUT) {
        if (!push(i)) {
          fail(i);
          continue;
        }
        if (c.sent == size) watch(i, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_MOD);
      }
      if (!(events[e].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) continue;
      for (;;) {
        const ssize_t r = recv(c.fd, buf.data(), buf.size(), 0);
        if (r > 0) {
          c.received += static_cast<size_t>(r);
          continue;
        }
        if (r < 0 && errno == EAGAIN) break;
        fail(i);  // EOF or error mid-run: the system under test dropped it
        break;
      }
      if (c.dead) continue;
      if (c.received > size || (c.received > 0 && !c.in_flight)) {
        std::fprintf(stderr, "shunt-loadgen: paced: %zu bytes back for a %zu-byte request\n", c.received,
                     size);
        return 2;
      }
      if (c.in_flight && c.received == size) {
        c.in_flight = false;
        --in_flight;
        if (in_window(c.sched))
          latency_us.push_back(std::chrono::duration<double, std::micro>(now - c.sched).count());
        if (in_window(now)) ++completed_in_window;
        start_next(i);
      }
    }
  }
  // Requests of the window still unanswered at the drain deadline (a
  // system that fell behind, or lost them): they enter the percentiles at
  // their age so far, a lower bound, rather than vanish from them.
  const auto stop = Clock::now();
  long incomplete = 0;
  for (const auto& c : conns) {
    auto count = [&](Clock::time_point t) {
      if (!in_window(t)) return;
      ++incomplete;
      latency_us.push_back(std::chrono::duration<double, std::micro>(stop - t).count());
    };
    if (c.in_flight) count(c.sched);
    for (const auto t : c.due) count(t);
    close(c.fd);
  }

  std::sort(latency_us.begin(), latency_us.end());
  std::sort(send_lag_us.begin(), send_lag_us.end());
  std::printf(
      "{\"conns\": %ld, \"size\": %zu, \"target_rate\": %.0f, \"duration_s\": %.3f, \"scheduled\": %ld, "
      "\"completed\": %ld, \"achieved_rate\": %.1f, \"incomplete\": %ld, \"errors\": %ld, "
      "\"max_backlog\": %zu, \"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, "
      "\"max_us\": %.1f, \"send_lag_p99_us\": %.1f}\n",
      nconns, size, rate, duration, scheduled_in_window, completed_in_window,
      static_cast<double>(completed_in_window) / duration, incomplete, errors, max_backlog,
      percentile(latency_us, 0.50), percentile(latency_us, 0.90), percentile(latency_us, 0.99),
      percentile(latency_us, 0.999), latency_us.empty() ? 0.0 : latency_us.back(),
      percentile(send_lag_us, 0.99));
  return errors > nconns / 100 ? 2 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) usage();
  const std::string cmd = argv[1];
  if (cmd == "echo-server") return echo_server(argc, argv);
  if (cmd == "pingpong") return pingpong(argc, argv);
  if (cmd == "connrate") return connrate(argc, argv);
  if (cmd == "paced") return paced(argc, argv);
  usage();
}

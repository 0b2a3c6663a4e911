// What the proxy unit tests drive inspectors and data paths with, instead
// of a daemon: loopback TCP pairs, an observer that records, a connector
// that connects where the test says, and an io_context on its own thread.
#pragma once

#include <utility>  // before Asio: Boost 1.74 awaitable.hpp uses std::exchange unincluded

#include "common/unique_fd.h"
#include "config/config.h"
#include "policy/policy.h"
#include "proxy/inspect/inspector.h"
#include "proxy/observer.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/bio.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace shunt::proxy::testing {

namespace asio = boost::asio;
using asio::ip::tcp;

// An io_context running on its own thread for the test's lifetime; the test
// thread plays the client and the server with blocking sockets.
class IoThread {
 public:
  IoThread() : guard_(asio::make_work_guard(io)), thread_([this] { io.run(); }) {}
  ~IoThread() {
    guard_.reset();
    io.stop();
    thread_.join();
  }
  // Runs `task` on the io thread; the future has its result.
  template <typename T>
  std::future<T> start(asio::awaitable<T> task) {
    auto promise = std::make_shared<std::promise<T>>();
    auto future = promise->get_future();
    asio::co_spawn(io, std::move(task), [promise](std::exception_ptr e, T value) {
      if (e) {
        promise->set_exception(e);
      } else {
        promise->set_value(std::move(value));
      }
    });
    return future;
  }
  // Runs `f` on the io thread and waits for it.
  template <typename F>
  void run(F f) {
    std::promise<void> done;
    asio::post(io, [&] {
      f();
      done.set_value();
    });
    done.get_future().wait();
  }

  asio::io_context io;

 private:
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::thread thread_;
};

// One TCP connection over loopback: `near` as an Asio socket on `io` (the
// proxy's side), `far` as a blocking fd (the test's side).
struct LoopbackLink {
  tcp::socket near;
  UniqueFd far;
};

inline LoopbackLink loopback_link(asio::io_context& io) {
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  UniqueFd far(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const auto at = acceptor.local_endpoint();
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(at.port());
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(far.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
  tcp::socket near(io);
  acceptor.accept(near);
  return LoopbackLink{std::move(near), std::move(far)};
}

inline std::string random_bytes(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// Blocking helpers for the test's side of a link.
inline bool send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Reads until EOF (or an error, reported in `error`: ECONNRESET for a reset).
inline std::string read_to_end(int fd, int* error = nullptr) {
  std::string out;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n > 0) {
      out.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (error) *error = n < 0 ? errno : 0;
    return out;
  }
}

// Reads exactly `n` bytes, or fewer at EOF, an error or a 10 s silence.
inline std::string read_exactly(int fd, std::size_t n) {
  std::string out;
  char buf[65536];
  while (out.size() < n) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 10000) != 1) break;
    const ssize_t got = ::recv(fd, buf, std::min(sizeof(buf), n - out.size()), 0);
    if (got <= 0) break;
    out.append(buf, static_cast<std::size_t>(got));
  }
  return out;
}

inline void set_receive_timeout(int fd, std::chrono::milliseconds t) {
  timeval tv{static_cast<time_t>(t.count() / 1000), static_cast<suseconds_t>((t.count() % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

// Closes with RST (SO_LINGER {1, 0}).
inline void reset_far(UniqueFd& fd) {
  linger l{1, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  fd.reset();
}

// Records every call, readable from the test thread.
class RecordingObserver : public ConnectionObserver {
 public:
  std::uint64_t id() const override { return 7; }
  void moved(Direction d, std::uint64_t n) override { (d == Direction::up ? up : down) += n; }
  void carried_by(config::Datapath p) override {
    std::lock_guard lock(mu);
    paths.push_back(p);
  }
  void fell_back(std::string_view reason) override {
    std::lock_guard lock(mu);
    fallbacks.emplace_back(reason);
  }
  void shortcut_fell_back(Direction, std::string_view reason) override { fell_back(reason); }
  void kernel_spliced(std::uint64_t, std::uint64_t) override { spliced = true; }
  void kernel_released(std::uint64_t u, std::uint64_t d) override {
    kernel_up += u;
    kernel_down += d;
  }
  void kernel_path(Direction, KernelPath) override {}
  void buffer_boost(bool) override {}
  void backlog_dropped(std::uint64_t n) override { dropped += n; }
  void held(std::uint64_t h, std::uint64_t b) override {
    holds += h;
    held_bytes += b;
  }
  void repeated(std::uint64_t) override {}
  void short_circuited(Direction, std::uint64_t, std::uint64_t, std::uint64_t) override {}
  void decided(const policy::Decision& d) override {
    std::lock_guard lock(mu);
    decisions.push_back(d);
  }
  void saw_sni(std::string s) override {
    std::lock_guard lock(mu);
    sni = std::move(s);
  }
  void saw_request(std::string method, std::string path, std::string,
                   std::vector<std::pair<std::string, std::string>>) override {
    std::lock_guard lock(mu);
    requests.push_back(method + " " + path);
  }
  void requests_uninspected() override { uninspected = true; }
  void speaks_http2() override { http2 = true; }
  void rechecks_streams(std::function<void()> recheck) override {
    std::lock_guard lock(mu);
    recheck_streams = std::move(recheck);
  }
  void http2_streams(int delta) override { active_streams += delta; }
  void http2_goaway(std::string_view code) override {
    std::lock_guard lock(mu);
    goaways.emplace_back(code);
  }
  void counted_request(bool, bool allowed) override { (allowed ? allowed_requests : denied_requests) += 1; }
  void exchanged(const HttpExchange& x) override {
    std::lock_guard lock(mu);
    exchanges.push_back(x);
  }

  std::atomic<std::uint64_t> up{0}, down{0}, kernel_up{0}, kernel_down{0}, dropped{0}, holds{0},
      held_bytes{0};
  std::atomic<int> allowed_requests{0}, denied_requests{0}, active_streams{0};
  std::atomic<bool> spliced{false}, uninspected{false}, http2{false};
  std::mutex mu;
  std::vector<config::Datapath> paths;
  std::vector<std::string> fallbacks;
  std::vector<policy::Decision> decisions;
  std::optional<std::string> sni;
  std::vector<std::string> requests;
  std::vector<HttpExchange> exchanges;
  std::vector<std::string> goaways;
  std::function<void()> recheck_streams;
};

// Connects to a test-side listener, or fails as told; counts its calls.
class FakeConnector : public UpstreamConnector {
 public:
  FakeConnector(asio::io_context& io, tcp::endpoint to) : io_(io), to_(to) {}
  asio::awaitable<Connected> connect() override {
    ++calls;
    Connected out;
    if (fail) {
      out.failure = UpstreamFailure::connect_refused;
      out.error = "refused by the test";
      co_return out;
    }
    tcp::socket s(io_);
    boost::system::error_code ec;
    s.connect(to_, ec);  // loopback: immediate
    if (ec) {
      out.error = ec.message();
      co_return out;
    }
    out.socket.emplace(std::move(s));
    co_return out;
  }
  std::atomic<int> calls{0};
  bool fail = false;

 private:
  asio::io_context& io_;
  tcp::endpoint to_;
};

// The keep-alive deadline on a timer of its own (the daemon uses the
// worker's idle sweep).
class TimerQuietWatch : public QuietWatch {
 public:
  explicit TimerQuietWatch(asio::io_context& io) : timer_(io) {}
  void watch_quiet(std::chrono::steady_clock::time_point at, std::function<void()> on_due) override {
    due_ = std::move(on_due);
    timer_.expires_at(at);
    timer_.async_wait([this, generation = ++generation_](boost::system::error_code ec) {
      if (ec || generation != generation_ || !due_) return;
      auto due = std::move(due_);
      due_ = nullptr;
      due();
    });
  }
  void unwatch_quiet() override {
    ++generation_;
    due_ = nullptr;
    timer_.cancel();
  }

 private:
  asio::steady_timer timer_;
  std::function<void()> due_;
  std::uint64_t generation_ = 0;
};

// One end of an HTTP/2 connection, played by the test with real nghttp2
// frames over a blocking fd: a client that sends requests, or a server (the
// upstream) that answers them with `respond`. Single-threaded, on the test
// thread; pump() reads and writes until a condition holds or the peer
// closes (the fd's receive timeout bounds each read).
class H2Peer {
 public:
  struct Stream {
    int status = 0;
    std::vector<std::pair<std::string, std::string>> headers;  // request or response, pseudo-headers too
    std::string body;
    bool ended = false;  // END_STREAM received
    bool closed = false;
    std::uint32_t error = 0;  // RST_STREAM code (or NO_ERROR)
  };
  enum class Role { client, server };

  H2Peer(Role role, int fd) : fd_(fd) {
    nghttp2_session_callbacks* cbs = nullptr;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_close);
    nghttp2_session* s = nullptr;
    if (role == Role::client)
      nghttp2_session_client_new(&s, cbs, this);
    else
      nghttp2_session_server_new(&s, cbs, this);
    nghttp2_session_callbacks_del(cbs);
    session_.reset(s);
    nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, nullptr, 0);
  }
  H2Peer(const H2Peer&) = delete;  // nghttp2 holds `this`
  H2Peer& operator=(const H2Peer&) = delete;

  // A request; returns its stream id.
  std::int32_t request(const std::string& method, const std::string& path, const std::string& authority,
                       const std::string& body = {}) {
    const std::vector<std::pair<std::string, std::string>> h{
        {":method", method}, {":scheme", "http"}, {":path", path}, {":authority", authority}};
    const auto nv = to_nv(h);
    const std::int32_t id = nghttp2_submit_request(session_.get(), nullptr, nv.data(), nv.size(),
                                                   body.empty() ? nullptr : provide(body), nullptr);
    streams[id];
    return id;
  }
  // A server's response on stream `id` (sent at the next flush or pump).
  void answer(std::int32_t id, int status, const std::string& body) {
    const std::vector<std::pair<std::string, std::string>> h{{":status", std::to_string(status)}};
    const auto nv = to_nv(h);
    nghttp2_submit_response(session_.get(), id, nv.data(), nv.size(), provide(body));
  }
  // The server's answer to every complete request: status and body.
  std::function<std::pair<int, std::string>(const Stream& request)> respond;

  // Reads and writes until `done()` or the peer closes or a read times out;
  // returns done().
  bool pump(const std::function<bool()>& done) {
    for (;;) {
      if (!flush()) return done();
      if (done()) return true;
      char buf[16384];
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) {
        eof = true;
        return done();
      }
      if (nghttp2_session_mem_recv(session_.get(), reinterpret_cast<const std::uint8_t*>(buf),
                                   static_cast<std::size_t>(n)) < 0)
        return done();
    }
  }
  bool flush() {
    const std::uint8_t* data = nullptr;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(session_.get(), &data)) > 0) {
      if (!send_all(fd_, std::string_view(reinterpret_cast<const char*>(data), static_cast<std::size_t>(n))))
        return false;
    }
    return n == 0;
  }
  bool closed(std::int32_t id) { return streams[id].closed; }

  std::map<std::int32_t, Stream> streams;
  bool goaway = false;
  std::uint32_t goaway_code = 0;
  std::int32_t goaway_last_stream = -1;
  bool eof = false;

 private:
  struct Deleter {
    void operator()(nghttp2_session* s) const { nghttp2_session_del(s); }
  };
  static std::vector<nghttp2_nv> to_nv(const std::vector<std::pair<std::string, std::string>>& h) {
    std::vector<nghttp2_nv> nv;
    for (const auto& [n, v] : h)
      nv.push_back({reinterpret_cast<std::uint8_t*>(const_cast<char*>(n.data())),
                    reinterpret_cast<std::uint8_t*>(const_cast<char*>(v.data())), n.size(), v.size(),
                    NGHTTP2_NV_FLAG_NONE});
    return nv;
  }
  // A body from `bodies_` (kept until the session is gone).
  nghttp2_data_provider* provide(const std::string& body) {
    bodies_.push_back(std::make_unique<Body>(Body{body, 0, {}}));
    Body& b = *bodies_.back();
    b.provider.source.ptr = &b;
    b.provider.read_callback = [](nghttp2_session*, std::int32_t, std::uint8_t* buf, std::size_t len,
                                  std::uint32_t* flags, nghttp2_data_source* src, void*) -> ssize_t {
      auto& body = *static_cast<Body*>(src->ptr);
      const std::size_t n = std::min(len, body.data.size() - body.off);
      std::memcpy(buf, body.data.data() + body.off, n);
      body.off += n;
      if (body.off == body.data.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
      return static_cast<ssize_t>(n);
    };
    return &b.provider;
  }
  static int on_header(nghttp2_session*, const nghttp2_frame* f, const std::uint8_t* name, std::size_t nlen,
                       const std::uint8_t* value, std::size_t vlen, std::uint8_t, void* user) {
    auto& st = static_cast<H2Peer*>(user)->streams[f->hd.stream_id];
    std::string n(reinterpret_cast<const char*>(name), nlen), v(reinterpret_cast<const char*>(value), vlen);
    if (n == ":status") st.status = std::stoi(v);
    st.headers.emplace_back(std::move(n), std::move(v));
    return 0;
  }
  static int on_data(nghttp2_session*, std::uint8_t, std::int32_t id, const std::uint8_t* data,
                     std::size_t len, void* user) {
    static_cast<H2Peer*>(user)->streams[id].body.append(reinterpret_cast<const char*>(data), len);
    return 0;
  }
  static int on_frame(nghttp2_session* session, const nghttp2_frame* f, void* user) {
    auto& self = *static_cast<H2Peer*>(user);
    if (f->hd.type == NGHTTP2_GOAWAY) {
      self.goaway = true;
      self.goaway_code = f->goaway.error_code;
      self.goaway_last_stream = f->goaway.last_stream_id;
    }
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
      auto& st = self.streams[f->hd.stream_id];
      st.ended = true;
      if (self.respond && nghttp2_session_check_server_session(session)) {
        const auto [status, body] = self.respond(st);
        self.answer(f->hd.stream_id, status, body);
      }
    }
    return 0;
  }
  static int on_close(nghttp2_session*, std::int32_t id, std::uint32_t code, void* user) {
    auto& st = static_cast<H2Peer*>(user)->streams[id];
    st.closed = true;
    st.error = code;
    return 0;
  }

  struct Body {
    std::string data;
    std::size_t off;
    nghttp2_data_provider provider;
  };
  int fd_;
  std::vector<std::unique_ptr<Body>> bodies_;
  std::unique_ptr<nghttp2_session, Deleter> session_;  // last: deleted before the bodies
};

// A compiled policy from the YAML of a `policy:` section (and pods).
inline std::shared_ptr<const policy::Policy> compile(const std::string& yaml) {
  const auto r = config::parse_config(yaml, "test.yaml");
  for (const auto& d : r.diagnostics) ADD_FAILURE() << d.to_string();
  return r.config ? policy::Policy::build(r.config, 1) : nullptr;
}

// The first flight of a TLS client, as bytes, made by OpenSSL over a
// memory BIO. `max_fragment` > 0 makes the client split its records (a
// ClientHello spanning several TLS records).
inline std::string client_hello(const char* sni, unsigned max_fragment = 0) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL* ssl = SSL_new(ctx);
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, in, out);
  if (sni) SSL_set_tlsext_host_name(ssl, sni);
  if (max_fragment) {
    // A long ALPN list makes the hello larger than one record may carry.
    std::string alpn;
    for (int i = 0; i < 60; ++i) {
      const std::string proto = "protocol-number-" + std::to_string(i);
      alpn += static_cast<char>(proto.size());
      alpn += proto;
    }
    SSL_set_alpn_protos(ssl, reinterpret_cast<const unsigned char*>(alpn.data()),
                        static_cast<unsigned>(alpn.size()));
    SSL_set_max_send_fragment(ssl, max_fragment);
  }
  SSL_connect(ssl);  // WANT_READ: the hello is in `out`
  std::string bytes;
  char buf[4096];
  int n;
  while ((n = BIO_read(out, buf, sizeof(buf))) > 0) bytes.append(buf, static_cast<std::size_t>(n));
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  return bytes;
}

}  // namespace shunt::proxy::testing

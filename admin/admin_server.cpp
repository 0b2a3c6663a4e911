#include "admin/admin_server.h"

#include "admin/config_json.h"
#include "admin/metrics_text.h"
#include "common/async.h"
#include "common/error.h"
#include "common/http_status.h"
#include "common/json_writer.h"
#include "common/privileges.h"
#include "proxy/proxy_context.h"

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <chrono>

namespace shunt::proxy {

namespace asio = boost::asio;
using asio::use_awaitable;
using asio::ip::tcp;

namespace {

// A request head larger than this is not a probe or a scrape.
constexpr std::size_t kMaxRequestHead = 16 * 1024;
// A client that has not sent its head by then is dropped.
constexpr auto kRequestTimeout = std::chrono::seconds(10);
// Concurrent admin connections; more are closed at once, so a flood of
// scrapers costs the admin thread little and the data path nothing.
constexpr int kMaxOpenRequests = 64;

std::string serialize(const AdminResponse& r, bool head_only) {
  std::string out = status_line(r.status);
  out += "Content-Type: " + r.content_type + "\r\n";
  out += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
  if (!r.allow.empty()) out += "Allow: " + r.allow + "\r\n";
  out += "Cache-Control: no-store\r\nConnection: close\r\n\r\n";
  if (!head_only) out += r.body;
  return out;
}

AdminResponse text(int status, std::string body) {
  AdminResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

}  // namespace

AdminServer::AdminServer(ProxyContext& context, const config::Endpoint& listen, UniqueFd inherited)
    : context_(context), listen_(listen), acceptor_(io_) {
  boost::system::error_code ec;
  const std::string where = "admin API: " + config::to_string(listen);
  if (inherited) {
    acceptor_.assign(listen.protocol(), inherited.get(), ec);
    if (ec) throw StartupError(kExitEnvironment, where + ": inherited socket: " + ec.message());
    (void)inherited.release();
    return;
  }
  acceptor_.open(listen.protocol(), ec);
  if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_.bind(listen, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw StartupError(kExitEnvironment, where + ": " + ec.message());
}

AdminServer::~AdminServer() { stop(); }

void AdminServer::start() {
  // Survivable: traffic does not need the admin API; /healthz stops
  // answering, which is what a liveness probe acts on.
  guarded_spawn(io_, "admin accept loop", accept_loop(), Failure::survivable);
  thread_ = std::thread([this] {
    // Created before the control thread drops its capabilities, so this
    // thread drops its own (capabilities are per thread).
    if (Status st = drop_capabilities(ThreadRole::admin); !st)
      spdlog::warn("admin API thread keeps its capabilities: {}", st.error().message());
    io_.run();
  });
  spdlog::info("admin API on {}", config::to_string(acceptor_.local_endpoint()));
}

void AdminServer::set_ready(const bpf::PodSteering* steering) {
  steering_.store(steering, std::memory_order_release);
  ready_.store(true, std::memory_order_release);
}

void AdminServer::stop() {
  if (!thread_.joinable()) return;
  asio::post(io_, [this] {
    boost::system::error_code ec;
    acceptor_.close(ec);
    io_.stop();
  });
  thread_.join();
  steering_.store(nullptr, std::memory_order_release);
}

void AdminServer::stop_accepting() {
  asio::post(io_, [this] {
    boost::system::error_code ec;
    acceptor_.close(ec);
  });
}

asio::awaitable<void> AdminServer::accept_loop() {
  for (;;) {
    boost::system::error_code ec;
    tcp::socket socket = co_await acceptor_.async_accept(asio::redirect_error(use_awaitable, ec));
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
    if (ec) {
      spdlog::warn("admin API: accept: {}", ec.message());
      asio::steady_timer pause(io_, std::chrono::milliseconds(50));
      co_await pause.async_wait(asio::redirect_error(use_awaitable, ec));
      continue;
    }
    if (open_requests_.load() >= kMaxOpenRequests) {
      socket.close(ec);
      continue;
    }
    guarded_spawn(io_, "admin request", serve(std::move(socket)), Failure::survivable);
  }
}

asio::awaitable<void> AdminServer::serve(tcp::socket socket) {
  struct Counted {
    std::atomic<int>& n;
    explicit Counted(std::atomic<int>& counter) : n(counter) { ++n; }
    ~Counted() { --n; }
  } counted(open_requests_);
  try {
    // The deadline closes the socket when the head does not arrive in
    // time, which ends the read below with an error.
    Deadline deadline(io_.get_executor());
    deadline.arm_after(kRequestTimeout, [&socket] {
      boost::system::error_code ignored;
      socket.close(ignored);
    });
    asio::streambuf buf(kMaxRequestHead);
    boost::system::error_code ec;
    co_await asio::async_read_until(socket, buf, "\r\n\r\n", asio::redirect_error(use_awaitable, ec));
    deadline.disarm();
    AdminResponse response;
    bool head_only = false;
    if (ec == asio::error::not_found) {
      response = text(431, "request head too large\n");
    } else if (ec) {
      co_return;  // client gone or too slow
    } else {
      const std::string head(asio::buffers_begin(buf.data()), asio::buffers_end(buf.data()));
      const std::string_view line = std::string_view(head).substr(0, head.find("\r\n"));
      const auto sp1 = line.find(' ');
      const auto sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
      if (sp2 == std::string_view::npos || line.substr(sp2 + 1).rfind("HTTP/1.", 0) != 0) {
        response = text(400, "malformed request line\n");
      } else {
        const std::string_view method = line.substr(0, sp1);
        head_only = method == "HEAD";
        response = handle(method, line.substr(sp1 + 1, sp2 - sp1 - 1));
      }
    }
    co_await asio::async_write(socket, asio::buffer(serialize(response, head_only)),
                               asio::redirect_error(use_awaitable, ec));
    socket.shutdown(tcp::socket::shutdown_both, ec);
    socket.close(ec);
  } catch (const std::exception& e) {
    spdlog::warn("admin API: {}", e.what());
  }
}

AdminResponse AdminServer::handle(std::string_view method, std::string_view target) const {
  const std::string_view path = target.substr(0, target.find('?'));
  static constexpr std::string_view kPaths[] = {"/healthz", "/readyz", "/metrics", "/connections", "/config"};
  if (std::find(std::begin(kPaths), std::end(kPaths), path) == std::end(kPaths))
    return text(404, "not found; endpoints: /healthz /readyz /metrics /connections /config\n");
  if (method != "GET" && method != "HEAD") {
    AdminResponse r = text(405, "only GET and HEAD\n");
    r.allow = "GET, HEAD";
    return r;
  }

  if (path == "/healthz") return text(200, "ok\n");
  if (path == "/readyz") {
    // Ready means: a policy is loaded, every listener is bound and
    // accepting, and the proxy is not draining (so a load balancer stops
    // sending new connections as soon as shutdown begins).
    if (!context_.policy.current()) return text(503, "not ready: no policy loaded\n");
    if (!ready_.load(std::memory_order_acquire)) return text(503, "not ready: listeners not accepting yet\n");
    if (context_.draining.load()) return text(503, "not ready: draining\n");
    return text(200, "ready\n");
  }
  if (path == "/metrics") {
    AdminResponse r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = render_metrics(context_, steering_.load(std::memory_order_acquire));
    return r;
  }
  if (path == "/connections") {
    AdminResponse r;
    r.content_type = "application/json";
    r.body = connections_json();
    return r;
  }
  // /config
  const auto policy = context_.policy.current();
  if (!policy) return text(503, "no config loaded\n");
  AdminResponse r;
  r.content_type = "application/json";
  r.body = config_to_json(policy->config(), policy->generation()) + "\n";
  return r;
}

std::string AdminServer::connections_json() const {
  auto snapshot = context_.registry.snapshot();
  std::sort(snapshot.begin(), snapshot.end(), [](const auto& a, const auto& b) { return a->id < b->id; });
  const auto now = std::chrono::steady_clock::now();
  JsonWriter w;
  w.begin_array();
  for (const auto& info : snapshot) {
    const ConnectionBytes bytes = context_.registry.bytes(*info);
    const std::chrono::duration<double> age = now - info->started;
    w.begin_object();
    w.field("id", info->id);
    w.field("src", config::to_string(info->src));
    w.field("dst", config::to_string(info->dst));
    w.field("src_pod", info->src_pod);
    w.field("dst_pod", info->dst_pod);
    w.field("rule", info->rule_name());
    w.field("datapath", config::to_string(info->datapath.load(std::memory_order_relaxed)));
    w.field("protocol", info->protocol());
    w.field("bytes_up", bytes.up);
    w.field("bytes_down", bytes.down);
    w.key("age_s").fixed(age.count(), 3);
    // Sockmap only, after the fields every connection has.
    if (const KernelPath up = info->path_up.load(std::memory_order_relaxed); up != KernelPath::none)
      w.field("path_up", to_string(up));
    if (const KernelPath down = info->path_down.load(std::memory_order_relaxed); down != KernelPath::none)
      w.field("path_down", to_string(down));
    w.end_object();
  }
  w.end_array();
  return w.take() + "\n";
}

}  // namespace shunt::proxy

#include "daemon/control.h"

#include "admin/admin_server.h"
#include "bpf/sockmap.h"
#include "common/async.h"
#include "common/fd_limit.h"
#include "common/privileges.h"
#include "daemon/takeover.h"
#include "proxy/metrics.h"
#include "proxy/policy_recheck.h"
#include "proxy/proxy_context.h"
#include "proxy/server.h"

#include <spdlog/spdlog.h>
#include <sys/inotify.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

namespace shunt::proxy {

namespace asio = boost::asio;
using asio::use_awaitable;

namespace {

// Bytes a socket moves before its pair may get large buffers.
constexpr std::uint64_t kBulkThresholdBytes = 4ull << 20;
// Reload triggers (inotify events, SIGHUP) within this window of the first
// one are a single reload: an editor's save is a burst of events, and a
// script's `write && kill -HUP` lands within it too. A later SIGHUP on the
// same bytes is skipped by reload() itself. Short, because revocations
// wait for it (SPEC: reset within 100 ms of the reload).
constexpr auto kReloadWindow = std::chrono::milliseconds(50);
constexpr std::string_view kFileChanged = "file changed";

void apply_log_level(const std::string& level) { spdlog::set_level(spdlog::level::from_str(level)); }

// Raises RLIMIT_NOFILE to what `max_connections` needs, or says in one line
// why it cannot and how many connections the acceptor will hold instead.
void apply_fd_budget(ProxyContext& context, std::uint64_t max_connections) {
  const FdBudget budget = ensure_fd_budget(max_connections);
  context.fd_connection_cap.store(budget.connections, std::memory_order_relaxed);
  if (!budget.shortfall.empty())
    spdlog::warn("{}", budget.shortfall);
  else if (budget.raised)
    spdlog::info("RLIMIT_NOFILE raised to {} for limits.max_connections {}", budget.limit, max_connections);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class Control {
 public:
  Control(ProxyContext& context, Server& server, AdminServer& admin, takeover::ControlListener control_socket,
          const RunOptions& options, std::string loaded_text)
      : context_(context),
        server_(server),
        options_(options),
        tried_text_(std::move(loaded_text)),
        signals_(io_, SIGHUP, SIGTERM, SIGINT),
        usr1_(io_, SIGUSR1),
        handover_(io_, std::move(control_socket), context, server, admin, [this] { handed_over(); }) {}

  // The new process's side of a takeover's boundary window.
  void receive_arrivals(TakeoverStart& start) { handover_.receive_arrivals(start); }

  int run() {
    handover_.start();
    // Fatal: without it SIGTERM no longer drains and SIGHUP no longer
    // reloads, and the process would have to be killed.
    guarded_spawn(io_, "signal handler", handle_signals(), Failure::fatal);
    // The rest degrade one feature each (log reopening, reload on file
    // change, larger buffers for bulk pairs); traffic is not affected.
    guarded_spawn(io_, "SIGUSR1 handler", handle_usr1(), Failure::survivable);
    if (!options_.config_path.empty())
      guarded_spawn(io_, "config watcher", watch_config(), Failure::survivable);
    if (context_.bulk_grants)
      guarded_spawn(io_, "bulk-buffer events", handle_bulk_events(), Failure::survivable);
    io_.run();
    return exit_code_;
  }

 private:
  asio::awaitable<void> handle_signals() {
    for (;;) {
      boost::system::error_code ec;
      const int signo = co_await signals_.async_wait(asio::redirect_error(use_awaitable, ec));
      if (ec) co_return;
      if (signo == SIGHUP) {
        request_reload("SIGHUP");
        continue;
      }
      if (shutting_down_ && handed_over_ && !told_to_stop_) {
        // Kubernetes deletes the old pod (SIGTERM) as soon as the new one
        // is ready: that must not cut short the drain after a takeover.
        told_to_stop_ = true;
        spdlog::info(
            "signal {}: already draining after a takeover; exiting once drained (a second signal stops now)",
            signo);
        if (drained_) finish();
        continue;
      }
      if (shutting_down_) {
        spdlog::warn("second signal: stopping now");
        finish();
        co_return;
      }
      shutting_down_ = true;
      // Nothing to take over from a process that is going: a `--takeover`
      // now finds no one answering and starts as a first process would.
      handover_.stop();
      spdlog::info("shutting down: draining {} connection(s) for up to {} ms", context_.registry.size(),
                   context_.policy.current()->config().proxy.timeouts.drain.count());
      guarded_spawn(io_, "drain", drain(), Failure::fatal);  // else SIGTERM would never end the process
    }
  }

  // A new process owns the listeners now: this one finishes what it holds,
  // as on SIGTERM, and no longer follows the config (the new one does).
  void handed_over() {
    if (shutting_down_) return;
    shutting_down_ = true;
    handed_over_ = true;
    boost::system::error_code ec;
    if (inotify_) inotify_->close(ec);
    spdlog::info("takeover: draining {} connection(s) this process still holds for up to {} ms, then exiting",
                 context_.registry.size(), context_.policy.current()->config().proxy.timeouts.drain.count());
    guarded_spawn(io_, "drain", drain(), Failure::fatal);
  }

  asio::awaitable<void> handle_usr1() {
    for (;;) {
      boost::system::error_code ec;
      co_await usr1_.async_wait(asio::redirect_error(use_awaitable, ec));
      if (ec) co_return;
      spdlog::info("SIGUSR1: reopening the access log");
      if (auto st = context_.access_log.reopen(); !st)
        spdlog::error("access log not reopened, lines go to the previous file: {}", st.error().message());
    }
  }

  // SIGTERM: stop accepting, let connections finish up to timeouts.drain,
  // then reset what remains.
  asio::awaitable<void> drain() {
    const auto drain_for = context_.policy.current()->config().proxy.timeouts.drain;
    context_.draining = true;
    poke_http2(context_.registry);  // GOAWAY now, from every HTTP/2 connection
    server_.stop_accepting();
    const auto deadline = std::chrono::steady_clock::now() + drain_for;
    asio::steady_timer tick(io_);
    // A takeover's boundary window still hands connections on: the drain
    // ends after it (it is shorter than any sensible timeouts.drain).
    while ((context_.registry.size() > 0 || handover_.handing_over()) &&
           std::chrono::steady_clock::now() < deadline && !finished_) {
      tick.expires_after(std::chrono::milliseconds(50));
      boost::system::error_code ec;
      co_await tick.async_wait(asio::redirect_error(use_awaitable, ec));
    }
    if (context_.registry.size() > 0)
      spdlog::info("drain timeout: resetting {} connection(s)", context_.registry.size());
    // A container's main process that exits is restarted, and a restarted
    // `run --takeover` would take the node back from its successor: as PID 1
    // a process taken over waits for its pod to be deleted.
    if (handed_over_ && ::getpid() == 1 && !told_to_stop_ && !finished_) {
      drained_ = true;
      spdlog::info("takeover: drained; waiting for SIGTERM (PID 1: exiting would restart the container)");
      co_return;
    }
    finish();
  }

  void finish() {
    if (finished_) return;
    finished_ = true;
    handover_.stop();
    server_.stop();
    boost::system::error_code ec;
    signals_.cancel(ec);
    usr1_.cancel(ec);
    if (inotify_) inotify_->close(ec);
    if (bulk_) bulk_->release();  // the ring buffer owns its epoll fd
    io_.stop();
  }

  // Every trigger comes here; the first one opens kReloadWindow and the
  // others within it only add their name to the reload's log line.
  void request_reload(std::string_view why) {
    if (!pending_why_.empty()) {
      if (pending_why_.find(why) == std::string::npos) pending_why_ += " + " + std::string(why);
      return;
    }
    pending_why_ = why;
    guarded_spawn(io_, "config reload", reload_after_window(), Failure::survivable);
  }

  asio::awaitable<void> reload_after_window() {
    asio::steady_timer window(io_, kReloadWindow);
    boost::system::error_code ec;
    co_await window.async_wait(asio::redirect_error(use_awaitable, ec));
    const std::string why = std::exchange(pending_why_, {});
    if (!finished_) reload(why);
  }

  // Never throws: a reload that fails for any reason is a counted error
  // that keeps the previous configuration, and the caller goes on.
  void reload(const std::string& why) {
    try {
      apply_reload(why);
    } catch (const std::exception& e) {
      spdlog::error("config reload ({}) failed: {}; keeping configuration generation {}", why, e.what(),
                    context_.policy.current()->generation());
      metrics().config_reloads_error.fetch_add(1, std::memory_order_relaxed);
      tried_text_.clear();  // a SIGHUP may retry the same bytes
    }
  }

  // Loads the file unless its bytes are the ones last tried (loaded or
  // rejected): however an edit was announced, it is one generation or one
  // error. SIGHUP on an unchanged file therefore does nothing (logged).
  void apply_reload(const std::string& why) {
    const std::string text = read_file(options_.config_path);
    if (!text.empty() && text == tried_text_) {
      spdlog::info("config reload ({}): file unchanged, generation {} stays", why,
                   context_.policy.current()->generation());
      return;
    }
    // Truncated for a rewrite, or removed for a rename: the write's own
    // event brings the new bytes. An explicit SIGHUP gets the diagnostic.
    if (text.empty() && why == kFileChanged) return;
    tried_text_ = text;
    auto result = text.empty() ? config::load_config_file(options_.config_path)
                               : config::parse_config(text, options_.config_path);
    auto& m = metrics();
    if (!result.diagnostics.empty()) {
      for (const auto& d : result.diagnostics) spdlog::error("config reload rejected: {}", d.to_string());
      spdlog::error("keeping configuration generation {}", context_.policy.current()->generation());
      m.config_reloads_error.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    const auto previous = context_.policy.current();
    const std::uint64_t generation = previous->generation() + 1;
    auto next = policy::Policy::build(result.config, generation);
    // Steering first, and the policy only once steering carries it: the
    // proxy never runs a policy the kernel does not (docs/architecture.md,
    // "Policy snapshots and reloads").
    if (context_.steering) {
      if (auto st = context_.steering->update(*next); !st) {
        m.config_reloads_error.fetch_add(1, std::memory_order_relaxed);
        tried_text_.clear();  // not the file's fault: a SIGHUP may retry the same bytes
        spdlog::error(
            "config reload ({}) rejected: steering update failed: {}; keeping configuration generation {}",
            why, st.error().message(), previous->generation());
        // update() may have applied part of the new entries: put the
        // previous configuration's back.
        if (auto back = context_.steering->update(*previous); !back)
          spdlog::error(
              "steering not restored to generation {}: {}; the kernel may drop what the proxy "
              "allows until the next successful reload",
              previous->generation(), back.error().message());
        return;
      }
    }
    context_.policy.publish(next);
    // Capabilities are gone by now: a larger cap may raise the soft limit
    // up to the hard one, no further.
    if (next->config().proxy.limits.max_connections != previous->config().proxy.limits.max_connections)
      apply_fd_budget(context_, next->config().proxy.limits.max_connections);
    m.config_generation.store(generation, std::memory_order_relaxed);
    m.config_reloads_ok.fetch_add(1, std::memory_order_relaxed);
    apply_log_level(next->config().log.level);
    if (auto st = context_.access_log.open(next->config().log.access); !st)
      spdlog::error("access log stays on its previous target: {}", st.error().message());
    if (next->config().proxy.listeners.size() != previous->config().proxy.listeners.size())
      spdlog::warn("listener changes take effect at the next restart");
    // The sockmap object is loaded at start only when the data path needs it
    // (a start without the privilege to load it has said so already).
    if (next->config().proxy.datapath == config::Datapath::sockmap &&
        previous->config().proxy.datapath != config::Datapath::sockmap && !context_.bridge)
      spdlog::warn(
          "proxy.datapath changed to sockmap: its BPF program is loaded only at start, so connections use "
          "splice until shunt restarts");
    const std::size_t revoked = revoke_disallowed(*next, context_.registry);
    spdlog::info("config reloaded ({}): generation {}, {} connection(s) revoked", why, generation, revoked);
  }

  // Watches the config file's directory: editors save by rename, and a
  // Kubernetes ConfigMap swaps a `..data` symlink, so events on the file
  // itself are not enough. Any change in the directory asks for a reload
  // (request_reload: coalesced, skipped when the file's bytes are unchanged).
  asio::awaitable<void> watch_config() {
    namespace fs = std::filesystem;
    const fs::path path = fs::absolute(options_.config_path);
    const int fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) {
      spdlog::warn("inotify unavailable ({}); reload with SIGHUP", std::strerror(errno));
      co_return;
    }
    inotify_ = std::make_unique<asio::posix::stream_descriptor>(io_, fd);
    const auto mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB;
    if (::inotify_add_watch(fd, path.parent_path().c_str(), mask) < 0) {
      spdlog::warn("cannot watch {} ({}); reload with SIGHUP", path.parent_path().string(),
                   std::strerror(errno));
      co_return;
    }
    char buf[4096];
    for (;;) {
      boost::system::error_code ec;
      co_await inotify_->async_wait(asio::posix::descriptor_base::wait_read,
                                    asio::redirect_error(use_awaitable, ec));
      if (ec) co_return;
      while (::read(fd, buf, sizeof(buf)) > 0) {
      }
      request_reload(kFileChanged);
    }
  }

  asio::awaitable<void> handle_bulk_events() {
    bulk_ = std::make_unique<asio::posix::stream_descriptor>(io_, context_.bulk_grants->events_fd());
    asio::steady_timer paused(io_);
    for (;;) {
      boost::system::error_code ec;
      if (context_.bulk_grants->paused()) {
        // Handed its pairs to a new process, which reads the shared ring
        // now (BulkGrants::pause); the fd would stay readable.
        paused.expires_after(std::chrono::milliseconds(100));
        co_await paused.async_wait(asio::redirect_error(use_awaitable, ec));
        continue;
      }
      co_await bulk_->async_wait(asio::posix::descriptor_base::wait_read,
                                 asio::redirect_error(use_awaitable, ec));
      if (ec) co_return;
      context_.bulk_grants->poll();
    }
  }

  ProxyContext& context_;
  Server& server_;
  RunOptions options_;
  std::string tried_text_;   // the config bytes last loaded or rejected
  std::string pending_why_;  // non-empty while a reload waits out kReloadWindow
  asio::io_context io_{1};
  asio::signal_set signals_;
  asio::signal_set usr1_;
  std::unique_ptr<asio::posix::stream_descriptor> inotify_;
  std::unique_ptr<asio::posix::stream_descriptor> bulk_;
  HandoverService handover_;
  bool shutting_down_ = false;
  bool handed_over_ = false;   // a takeover completed: the drain is the takeover's
  bool told_to_stop_ = false;  // a signal arrived during that drain
  bool drained_ = false;       // that drain ended, PID 1 waits for the signal
  bool finished_ = false;
  int exit_code_ = kExitOk;
};

}  // namespace

int run_proxy(const RunOptions& options) {
  config::LoadResult loaded;
  std::string loaded_text;
  if (options.config_path.empty()) {
    loaded = config::parse_config(config::builtin_default_yaml(), "<built-in default>");
    loaded_text = std::string(config::builtin_default_yaml());
  } else {
    loaded = config::load_config_file(options.config_path);
    loaded_text = read_file(options.config_path);
  }
  if (!loaded.diagnostics.empty()) {
    for (const auto& d : loaded.diagnostics) std::cerr << d.to_string() << "\n";
    return kExitBadInput;
  }
  const config::Config& cfg = *loaded.config;
  apply_log_level(cfg.log.level);

  try {
    // Before anything is bound: either nobody else serves this node, or
    // this process takes over from the one that does (daemon/takeover.h).
    std::optional<TakeoverStart> takeover;
    if (options.takeover)
      takeover = begin_takeover(cfg);
    else
      refuse_if_running(cfg);
    ProxyContext context;
    if (auto st = context.access_log.open(cfg.log.access); !st) {
      std::cerr << "shunt: " << st.error().message() << "\n";
      return kExitEnvironment;
    }
    context.policy.publish(policy::Policy::build(loaded.config, 1));
    // Before capabilities are dropped: raising the hard limit needs
    // CAP_SYS_RESOURCE.
    apply_fd_budget(context, cfg.proxy.limits.max_connections);
    metrics().config_generation = 1;
    // A first process answers from here, so probes get an answer (503)
    // while BPF loads and listeners bind; ready once the workers accept. A
    // new process in a takeover shares the admin socket with the old one,
    // which answers (ready) until the commit: this one starts answering
    // after it, ready (its 503s meanwhile would reach the old one's probes,
    // and a request it held would die with it if it failed).
    AdminServer admin(context, cfg.admin.listen, takeover ? std::move(takeover->admin) : UniqueFd{});
    if (!takeover) admin.start();

    // Only the sockmap data path needs its BPF object: with copy or splice
    // nothing is loaded (and libbpf has nothing to say).
    config::Datapath datapath = cfg.proxy.datapath;
    if (datapath == config::Datapath::sockmap) {
      // In a takeover, with the running process's maps: the pairs it hands
      // on keep their counters and targets (bpf/sockmap.h, KernelMaps).
      auto bridge = bpf::SockmapBridge::load(
          cfg.proxy.limits.max_connections, kBulkThresholdBytes, BufferBudget::kBacklogLimitBytes,
          takeover && takeover->kernel_maps ? &*takeover->kernel_maps : nullptr);
      if (bridge) {
        context.bridge = std::move(bridge.value());
        context.bulk_grants = std::make_unique<BulkGrants>(*context.bridge);
        context.registry.set_kernel_counter(
            [bridge = context.bridge.get()](std::uint64_t cookie) { return bridge->moved_bytes(cookie); });
        if (cfg.proxy.endpoint_shortcut) {
          auto shortcut = bpf::EndpointShortcut::load(*context.bridge, cfg.proxy.limits.max_connections,
                                                      kBulkThresholdBytes);
          if (!shortcut)
            spdlog::warn("endpoint short-circuit unavailable ({}); the sockmap path runs without it",
                         shortcut.error().message());
          else if (!shortcut.value()->works())
            spdlog::warn(
                "endpoint short-circuit failed its start-up check ({}); the sockmap path runs without it",
                shortcut.value()->probe_detail());
          else
            context.shortcut = std::move(shortcut.value());
          if (context.shortcut) {
            std::vector<std::pair<std::string, std::string>> pod_devices;
            for (const config::Pod& pod : cfg.pods)
              if (!pod.dev.empty()) pod_devices.emplace_back(pod.name, pod.dev);
            context.shortcut->learn_pods(pod_devices);
          }
        }
      } else {
        spdlog::warn("sockmap data path unavailable ({}); connections use splice instead",
                     bridge.error().message());
        datapath = config::Datapath::splice;
      }
    }

    const unsigned threads =
        options.threads ? options.threads : std::max(1u, std::thread::hardware_concurrency());
    Server server(context, cfg, threads, takeover ? std::move(takeover->listeners) : InheritedSockets{});
    const bool steers_pods =
        std::any_of(cfg.pods.begin(), cfg.pods.end(), [](const config::Pod& p) { return !p.dev.empty(); });
    if (steers_pods) {
      auto steering = bpf::PodSteering::start(*context.policy.current(), server.transparent_listener_fds());
      if (!steering) {
        std::cerr << "shunt: pod steering: " << steering.error().message() << "\n";
        server.stop();
        return kExitEnvironment;
      }
      context.steering = std::move(steering.value());
    }
    // Setup done (BPF loaded, listeners bound, steering attached): keep only
    // what running needs. Before server.start(), so the worker threads
    // inherit the reduced sets (capabilities are per thread).
    if (auto st = drop_capabilities(ThreadRole::runtime); !st)
      spdlog::warn("could not drop capabilities, running with all of them: {}", st.error().message());
    else if (const auto held = held_capabilities(ThreadRole::runtime); held.empty())
      spdlog::info("capabilities: none held (an unprivileged run: no BPF data path or steering)");
    else
      spdlog::info("capabilities reduced to {}", fmt::join(held, ", "));
    // A new process accepts once the old one let go (finish_takeover):
    // until then the old one serves, and SYNs wait in the shared backlogs.
    server.start(!takeover);
    // Serving from here. A new process takes the control socket only once
    // the old one has stopped accepting; a first one binds it now.
    takeover::ControlListener control_socket;
    if (takeover) {
      control_socket = finish_takeover(*takeover, cfg, context, server);
    } else {
      // Traffic first: a proxy that cannot be taken over still serves (an
      // upgrade then means a restart), so this is an error line, not an exit.
      if (auto bound = takeover::ControlListener::bind(cfg.admin.control_socket); bound)
        control_socket = std::move(*bound);
      else
        spdlog::error("admin.control_socket: {}; this process cannot be taken over (upgrades need a restart)",
                      bound.error().message());
    }
    admin.set_ready(context.steering.get());
    if (takeover) admin.start();
    spdlog::info("shunt {} running: datapath {}{}, {} worker thread(s), config {}, control socket {}",
                 SHUNT_VERSION, config::to_string(datapath),
                 datapath == cfg.proxy.datapath ? "" : " (sockmap unavailable)", threads, cfg.source,
                 cfg.admin.control_socket);

    Control control(context, server, admin, std::move(control_socket), options, loaded_text);
    if (takeover) control.receive_arrivals(*takeover);
    const int rc = control.run();
    // The admin thread reads steering counters and the registry: stop it first.
    admin.stop();
    // Detach pod steering (links, rules, routes) before the listeners close.
    context.steering.reset();
    context.access_log.flush();
    spdlog::info("shunt stopped");
    return rc;
  } catch (const StartupError& e) {
    std::cerr << "shunt: " << e.what() << "\n";
    return e.code();
  }
}

}  // namespace shunt::proxy

// Every open proxied connection is listed here, for /connections, metrics,
// and the policy re-check after a reload. A ConnectionInfo is shared between
// the connection's coroutine (its only writer, on one io_context thread) and
// readers on other threads: fields that change after registration are
// atomics or guarded by `mu`.
#pragma once

#include "config/config.h"
#include "policy/policy.h"
#include "proxy/end_reason.h"
#include "proxy/observer.h"  // KernelPath

#include <boost/asio/any_io_executor.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace shunt::proxy {

// An optional kept on the heap, for a member most instances never fill:
// std::optional's interface as used here, deep copies. Filling one that
// holds a value reuses its storage.
template <typename T>
class HeapOptional {
 public:
  HeapOptional() = default;
  HeapOptional(const HeapOptional& other)
      : value_(other.value_ ? std::make_unique<T>(*other.value_) : nullptr) {}
  HeapOptional(HeapOptional&&) noexcept = default;
  HeapOptional& operator=(const HeapOptional& other) {
    if (this != &other) value_ = other.value_ ? std::make_unique<T>(*other.value_) : nullptr;
    return *this;
  }
  HeapOptional& operator=(HeapOptional&&) noexcept = default;
  ~HeapOptional() = default;
  HeapOptional& operator=(T value) {
    if (value_) {
      *value_ = std::move(value);
    } else {
      value_ = std::make_unique<T>(std::move(value));
    }
    return *this;
  }
  explicit operator bool() const { return value_ != nullptr; }
  T* operator->() { return value_.get(); }
  const T* operator->() const { return value_.get(); }
  T& operator*() { return *value_; }
  const T& operator*() const { return *value_; }
  void reset() { value_.reset(); }

 private:
  std::unique_ptr<T> value_;
};

// What a connection's current verdict rests on, so a new policy can decide
// it again without the bytes: the flow, and what inspection saw last.
struct DecisionBasis {
  policy::Flow flow;
  policy::Inspect inspect = policy::Inspect::none;
  std::optional<std::string> sni;
  struct Request {
    std::string method, path, host;
    std::vector<std::pair<std::string, std::string>> headers;
  };
  // On the heap: an L4 or TLS connection (most of a node's) never has one,
  // and inline it cost ~130 bytes each (issue 16).
  HeapOptional<Request> last_request;
  // Set when HTTP inspection handed the rest of the connection to the data
  // path because every request of the flow was allowed: later requests are
  // never seen, so a policy that inspects the flow again must revoke it.
  bool requests_uninspected = false;
};

struct ConnectionInfo {
  std::uint64_t id = 0;
  config::Endpoint src;
  config::Endpoint dst;
  std::string listener;
  std::string src_pod;
  std::string dst_pod;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::chrono::system_clock::time_point started_wall = std::chrono::system_clock::now();

  std::atomic<config::Datapath> datapath{config::Datapath::copy};
  // On the sockmap path, how each direction moved: the sk_skb verdict on
  // shunt's socket, or (client -> upstream only) the sk_msg short-circuit
  // in the client's own socket for at least part of the bytes.
  std::atomic<KernelPath> path_up{KernelPath::none};
  std::atomic<KernelPath> path_down{KernelPath::none};
  // HTTP/2 inspection runs the connection (each stream decided on its own).
  std::atomic<bool> http2{false};
  // Bytes moved by userspace (copy, splice, inspection, pre-handover).
  std::atomic<std::uint64_t> bytes_up{0};
  std::atomic<std::uint64_t> bytes_down{0};
  // Socket cookies once the pair is in the sockmap (0 before): the kernel's
  // counters are read through them.
  std::atomic<std::uint64_t> client_cookie{0};
  std::atomic<std::uint64_t> upstream_cookie{0};

  mutable std::mutex mu;  // guards rule and basis
  std::string rule;
  DecisionBasis basis;

  // Why the connection ended; the first cause recorded wins (note_end).
  std::atomic<EndReason> end{EndReason::unknown};
  std::string end_error;  // guarded by mu: the socket error behind a reset or failed connect

  // Records why the connection ends unless a cause is already recorded;
  // true when this call recorded it.
  bool note_end(EndReason reason, std::string_view error = {}) {
    EndReason expected = EndReason::unknown;
    if (!end.compare_exchange_strong(expected, reason, std::memory_order_relaxed)) return false;
    if (!error.empty()) {
      std::lock_guard lock(mu);
      end_error = error;
    }
    return true;
  }

  // Ends the connection with a reset, from any thread (posted to its
  // executor), recording `why` (revoked, shutdown).
  std::function<void(EndReason why)> revoke;
  // Set (under mu) while the HTTP/2 inspector runs the connection: asks it,
  // from any thread, to look at the policy and the drain flag again now
  // (re-deciding its open streams, sending GOAWAY). Called after each
  // reload that keeps the connection itself, and when the drain starts
  // (poke_http2); the inspector has no timer of its own for either.
  std::function<void()> recheck_streams;

  // What /connections shows: h2, http/1.1 (HTTP-inspected), tls (SNI) or tcp.
  [[nodiscard]] std::string_view protocol() const {
    if (http2.load(std::memory_order_relaxed)) return "h2";
    std::lock_guard lock(mu);
    switch (basis.inspect) {
      case policy::Inspect::http:
        return "http/1.1";
      case policy::Inspect::tls:
        return "tls";
      case policy::Inspect::none:
        break;
    }
    return "tcp";
  }

  [[nodiscard]] std::string rule_name() const {
    std::lock_guard lock(mu);
    return rule;
  }
};

struct ConnectionBytes {
  std::uint64_t up = 0;
  std::uint64_t down = 0;
};

// Open connections and the bytes of closed ones, taken under one lock so a
// connection is counted exactly once: either open or closed.
struct RegistrySnapshot {
  std::vector<std::shared_ptr<ConnectionInfo>> open;
  // [direction: 0 up, 1 down][datapath]
  std::array<std::array<std::uint64_t, 3>, 2> closed_bytes{};
};

class ConnectionRegistry {
 public:
  std::uint64_t next_id() { return next_id_.fetch_add(1, std::memory_order_relaxed); }
  void add(std::shared_ptr<ConnectionInfo> info);
  // Removes a finished connection and adds its final bytes to the closed totals.
  void retire(std::uint64_t id, config::Datapath datapath, ConnectionBytes final_bytes);
  [[nodiscard]] std::vector<std::shared_ptr<ConnectionInfo>> snapshot() const;
  [[nodiscard]] RegistrySnapshot snapshot_with_totals() const;
  [[nodiscard]] std::size_t size() const;
  // The open connection with this id, or null.
  [[nodiscard]] std::shared_ptr<ConnectionInfo> find(std::uint64_t id) const;
  // Bytes the kernel moved from the socket with this cookie (the sockmap
  // bridge's counter); read for connections whose pair is kernel-spliced.
  // Set once, before the workers start.
  using KernelCounter = std::function<std::uint64_t(std::uint64_t cookie)>;
  void set_kernel_counter(KernelCounter counter) { kernel_counter_ = std::move(counter); }
  [[nodiscard]] ConnectionBytes bytes(const ConnectionInfo& info) const;

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::uint64_t, std::shared_ptr<ConnectionInfo>> connections_;
  // connections_.size(), readable without the lock (checked on every accept).
  std::atomic<std::size_t> open_{0};
  std::array<std::array<std::uint64_t, 3>, 2> closed_bytes_{};
  std::atomic<std::uint64_t> next_id_{1};
  KernelCounter kernel_counter_;
};

}  // namespace shunt::proxy

#include "proxy/connection_registry.h"

namespace shunt::proxy {

void ConnectionRegistry::add(std::shared_ptr<ConnectionInfo> info) {
  std::lock_guard lock(mu_);
  connections_.emplace(info->id, std::move(info));
  open_.store(connections_.size(), std::memory_order_relaxed);
}

void ConnectionRegistry::retire(std::uint64_t id, config::Datapath datapath, ConnectionBytes final_bytes) {
  const auto d = static_cast<std::size_t>(datapath);
  std::lock_guard lock(mu_);
  connections_.erase(id);
  open_.store(connections_.size(), std::memory_order_relaxed);
  closed_bytes_[0][d] += final_bytes.up;
  closed_bytes_[1][d] += final_bytes.down;
}

RegistrySnapshot ConnectionRegistry::snapshot_with_totals() const {
  RegistrySnapshot out;
  std::lock_guard lock(mu_);
  out.open.reserve(connections_.size());
  for (const auto& [id, info] : connections_) out.open.push_back(info);
  out.closed_bytes = closed_bytes_;
  return out;
}

std::vector<std::shared_ptr<ConnectionInfo>> ConnectionRegistry::snapshot() const {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<ConnectionInfo>> out;
  out.reserve(connections_.size());
  for (const auto& [id, info] : connections_) out.push_back(info);
  return out;
}

std::shared_ptr<ConnectionInfo> ConnectionRegistry::find(std::uint64_t id) const {
  std::lock_guard lock(mu_);
  auto it = connections_.find(id);
  return it == connections_.end() ? nullptr : it->second;
}

std::size_t ConnectionRegistry::size() const { return open_.load(std::memory_order_relaxed); }

ConnectionBytes ConnectionRegistry::bytes(const ConnectionInfo& info) const {
  // Under the connection's lock: the sockmap path folds the kernel counters
  // into bytes_up/down and clears the cookies under it, so a reader sees
  // either before or after, never both (which would count twice).
  std::lock_guard lock(info.mu);
  ConnectionBytes b{info.bytes_up.load(std::memory_order_relaxed),
                    info.bytes_down.load(std::memory_order_relaxed)};
  if (kernel_counter_) {
    if (auto c = info.client_cookie.load(std::memory_order_relaxed)) b.up += kernel_counter_(c);
    if (auto u = info.upstream_cookie.load(std::memory_order_relaxed)) b.down += kernel_counter_(u);
  }
  return b;
}

}  // namespace shunt::proxy

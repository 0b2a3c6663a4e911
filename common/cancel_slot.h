// One-shot cancellation from a connection's owner to whatever runs its
// sockets at the moment (an inspector, the upstream connect inside it, a
// data path). Boost 1.74's Asio has no per-operation cancellation slots, so
// this is the seam instead: the owner calls cancel() (revoke, drain, idle
// timeout); each runner installs what cancelling means for it (reset the
// sockets it holds, wake its loop) for as long as it runs, and checks
// cancelled() after every wait. Single-threaded: everything runs on the
// connection's executor.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

namespace shunt {

class CancelSlot {
 public:
  CancelSlot() = default;
  CancelSlot(const CancelSlot&) = delete;
  CancelSlot& operator=(const CancelSlot&) = delete;

  [[nodiscard]] bool cancelled() const { return cancelled_; }

  // Marks the slot cancelled and runs every installed handler, the latest
  // first, once.
  void cancel() {
    if (cancelled_) return;
    cancelled_ = true;
    // A handler may remove its own entry (or another's) while it runs.
    auto handlers = handlers_;
    for (auto it = handlers.rbegin(); it != handlers.rend(); ++it) it->second();
  }

  // While the returned guard lives, cancel() runs `handler`. Installed after
  // a cancel, it runs at once: a runner that starts late still ends.
  class Installed {
   public:
    Installed(Installed&& other) noexcept : slot_(std::exchange(other.slot_, nullptr)), key_(other.key_) {}
    Installed& operator=(Installed&&) = delete;
    ~Installed() { reset(); }
    // Removes the handler now, before the guard's end of scope.
    void reset() {
      if (!slot_) return;
      auto& handlers = std::exchange(slot_, nullptr)->handlers_;
      std::erase_if(handlers, [this](const auto& entry) { return entry.first == key_; });
    }

   private:
    friend class CancelSlot;
    Installed(CancelSlot* slot, std::uint64_t key) : slot_(slot), key_(key) {}
    CancelSlot* slot_;
    std::uint64_t key_;
  };
  [[nodiscard]] Installed install(std::function<void()> handler) {
    const std::uint64_t key = next_key_++;
    if (cancelled_) handler();
    handlers_.emplace_back(key, std::move(handler));
    return Installed(this, key);
  }

 private:
  bool cancelled_ = false;
  std::uint64_t next_key_ = 1;
  std::vector<std::pair<std::uint64_t, std::function<void()>>> handlers_;
};

}  // namespace shunt

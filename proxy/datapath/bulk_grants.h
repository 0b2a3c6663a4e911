// Larger send buffers for bulk kernel-spliced pairs, in one owner.
//
// The verdict program reports a socket once it has moved bulk_threshold
// bytes (ring buffer `bulk_events`, bpf/sockmap_redirect.bpf.c). The control
// thread reads the ring (poll()), finds the pair by socket cookie (a hash
// lookup, no scan) and calls the grant its data path enrolled, which posts
// to the pair's own thread; there the buffer is enlarged if the process-wide
// BufferBudget allows (proxy/datapath/buffer_budget.h has the why). The registry and
// ConnectionInfo know nothing of it.
#pragma once

#include "bpf/sockmap.h"
#include "proxy/datapath/buffer_budget.h"

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>

namespace shunt::proxy {

class BulkGrants {
 public:
  // Called on the control thread with the cookie of the socket that went
  // bulk (or whose short-circuited endpoint got stuck on TCP: `kind`); must
  // only post (it runs under no lock, but on the control thread).
  using Grant = std::function<void(std::uint64_t source_cookie, bpf::SockmapBridge::EventKind kind)>;

  explicit BulkGrants(bpf::SockmapBridge& bridge,
                      std::uint64_t budget_bytes = BufferBudget::kDefaultBudgetBytes)
      : bridge_(bridge), budget_(budget_bytes) {}
  BulkGrants(const BulkGrants&) = delete;
  BulkGrants& operator=(const BulkGrants&) = delete;

  // While it lives, bulk events for either socket of the pair call `grant`.
  class Enrollment {
   public:
    Enrollment() = default;
    Enrollment(Enrollment&& other) noexcept { *this = std::move(other); }
    Enrollment& operator=(Enrollment&& other) noexcept;
    ~Enrollment() { reset(); }
    void reset();

   private:
    friend class BulkGrants;
    Enrollment(BulkGrants* owner, std::uint64_t a, std::uint64_t b) : owner_(owner), a_(a), b_(b) {}
    BulkGrants* owner_ = nullptr;
    std::uint64_t a_ = 0, b_ = 0;
  };
  [[nodiscard]] Enrollment enroll(std::uint64_t cookie_a, std::uint64_t cookie_b, Grant grant);

  // Control thread, when events_fd() is readable: calls the grants of the
  // pairs reported since the last poll. Does nothing while paused.
  void poll();

  // A takeover's old process stops reading events once it has frozen its
  // pairs: the ring is shared with the new process (bpf/sockmap.h,
  // KernelMaps), and an event read here for a pair the new process now runs
  // would be lost to it (a hold event, which starts a pump, must not be).
  // Resumed when the pairs are taken back; the caller waits on something
  // other than events_fd() meanwhile, which stays readable.
  void pause() { paused_.store(true, std::memory_order_relaxed); }
  void resume() { paused_.store(false, std::memory_order_relaxed); }
  [[nodiscard]] bool paused() const { return paused_.load(std::memory_order_relaxed); }
  [[nodiscard]] int events_fd() const { return bridge_.bulk_events_fd(); }

  BufferBudget& budget() { return budget_; }

 private:
  void withdraw(std::uint64_t cookie_a, std::uint64_t cookie_b);

  bpf::SockmapBridge& bridge_;
  BufferBudget budget_;
  std::atomic<bool> paused_{false};
  std::mutex mu_;  // the map: enroll/withdraw on workers, lookups on the control thread
  std::unordered_map<std::uint64_t, std::shared_ptr<const Grant>> by_cookie_;
};

}  // namespace shunt::proxy

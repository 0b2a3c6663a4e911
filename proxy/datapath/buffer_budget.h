// Bounds the kernel memory that kernel-spliced connections may pin.
//
// A sockmap redirect whose target send buffer is full is retried by the
// kernel's backlog worker about a jiffy later, so bulk transfers need large
// send buffers to run at splice speed. Large buffers on every connection
// would let tens of thousands of slow receivers pin gigabytes, so only
// connections the verdict program reports as bulk (see bulk_threshold in
// bpf/sockmap_redirect.bpf.c) are boosted, and only while the process-wide
// budget lasts. Budget accounting is by the buffer size granted, which is
// the most the boosted sockets can queue beyond the default.
#pragma once

#include <atomic>
#include <cstdint>

namespace shunt::proxy {

class BufferBudget {
 public:
  // Send buffer of every kernel-spliced socket until it proves to be bulk.
  // Setting it also stops send-buffer autotuning, which would otherwise let
  // a socket whose reader stalled grow to tcp_wmem[2] (4 MiB by default).
  static constexpr int kSplicedSendBufferBytes = 256 << 10;
  static constexpr std::uint64_t kBoostedBufferBytes = 64ull << 20;
  static constexpr std::uint64_t kDefaultBudgetBytes = 1ull << 30;
  // Most one direction of a pair may have redirected and not yet in its
  // target's send queue: the target psock's backlog, which the kernel
  // neither charges nor bounds. Above it the verdict holds the source's
  // bytes on the source socket, whose receive window then closes
  // (docs/datapath.md, "Memory bound").
  static constexpr std::uint64_t kBacklogLimitBytes = 1ull << 20;

  explicit BufferBudget(std::uint64_t budget_bytes = kDefaultBudgetBytes) : available_(budget_bytes) {}

  // Reserves `bytes`; false when the budget is spent.
  bool try_acquire(std::uint64_t bytes) {
    std::uint64_t have = available_.load(std::memory_order_relaxed);
    while (have >= bytes) {
      if (available_.compare_exchange_weak(have, have - bytes, std::memory_order_acq_rel)) return true;
    }
    return false;
  }
  void release(std::uint64_t bytes) { available_.fetch_add(bytes, std::memory_order_acq_rel); }
  [[nodiscard]] std::uint64_t available() const { return available_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> available_;
};

}  // namespace shunt::proxy

// The buffer a connection reads into while bytes are in flight, and only
// then: an idle connection holds none (issue 16). A reader waits for the
// socket to be readable first, takes an IoBuffer, reads, writes what it read
// on, and gives the buffer back (destruction) before it waits again.
//
// Buffers come from a per-thread pool (common/thread_recycler.h), so the
// busy connections of a worker share a few dozen buffers and a fresh
// connection pays neither malloc nor zeroing for 64 KiB: a short
// connection used to spend ~10% of its proxy CPU time in memset for
// value-initialised buffers (perf, connrate workload, docs/benchmarks.md).
// At most kPooled idle per thread: 2 MiB; the rest are freed.
#pragma once

#include "common/thread_recycler.h"

#include <cstddef>
#include <memory>

namespace shunt {

class IoBuffer {
 public:
  static constexpr std::size_t kBytes = 64 * 1024;  // one read's worth: what one direction holds in flight
  static constexpr std::size_t kPooled = 32;

  IoBuffer() {
    if (auto recycled = Pool::take()) {
      data_ = std::move(*recycled);
    } else {
      data_.reset(new char[kBytes]);  // not make_unique: no zeroing
    }
  }
  IoBuffer(IoBuffer&&) noexcept = default;
  IoBuffer& operator=(IoBuffer&& other) noexcept {
    if (this != &other) {
      give_back();
      data_ = std::move(other.data_);
    }
    return *this;
  }
  IoBuffer(const IoBuffer&) = delete;
  IoBuffer& operator=(const IoBuffer&) = delete;
  ~IoBuffer() { give_back(); }

  [[nodiscard]] char* data() const { return data_.get(); }
  [[nodiscard]] static constexpr std::size_t size() { return kBytes; }

 private:
  using Pool = ThreadRecycler<std::unique_ptr<char[]>, kPooled>;
  void give_back() {
    if (data_) Pool::give(std::move(data_));
  }
  std::unique_ptr<char[]> data_;
};

}  // namespace shunt

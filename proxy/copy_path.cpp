// The plain-copy data path: the baseline the kernel paths are measured
// against, and the most portable fallback.
#include "proxy/connection.h"
#include "proxy/datapath.h"
#include "proxy/join.h"

#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <memory>
#include <vector>

namespace shunt::proxy {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

constexpr std::size_t kCopyBufferBytes = 64 * 1024;  // per direction: bounds memory per connection
// Idle buffers kept per worker thread for the next connection.
constexpr std::size_t kPooledBuffersPerThread = 32;  // at most 2 MiB idle per thread

// Copy buffers are recycled per thread and never zeroed: a short
// connection used to spend ~10% of its proxy CPU time in memset for two
// freshly value-initialised 64 KiB buffers (perf, connrate workload). A
// connection lives on one thread, so the pool needs no lock; a buffer freed
// on another thread (io_context torn down at exit) goes to that thread's pool.
class BufferPool {
 public:
  BufferPool() = default;
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;
  ~BufferPool() {
    for (char* b : free_) delete[] b;
    gone = true;
  }
  // Set once this thread's pool is destroyed (thread exit): later frees delete.
  static thread_local bool gone;
  char* take() {
    if (free_.empty()) return new char[kCopyBufferBytes];
    char* b = free_.back();
    free_.pop_back();
    return b;
  }
  void give(char* b) {
    if (free_.size() < kPooledBuffersPerThread) {
      free_.push_back(b);
    } else {
      delete[] b;
    }
  }

 private:
  std::vector<char*> free_;
};

thread_local bool BufferPool::gone = false;

// Out of line on purpose: the thread-local is looked up on the thread that
// makes the call, never cached in a coroutine frame across a suspension.
[[gnu::noinline]] BufferPool* this_thread_pool() {
  thread_local BufferPool pool;
  return BufferPool::gone ? nullptr : &pool;
}

struct PooledBuffer {
  PooledBuffer() {
    BufferPool* pool = this_thread_pool();
    data = pool ? pool->take() : new char[kCopyBufferBytes];
  }
  PooledBuffer(const PooledBuffer&) = delete;
  PooledBuffer& operator=(const PooledBuffer&) = delete;
  ~PooledBuffer() {
    if (BufferPool* pool = this_thread_pool()) {
      pool->give(data);
    } else {
      delete[] data;
    }
  }
  [[nodiscard]] char* get() const { return data; }
  char* data;
};

asio::awaitable<void> copy_direction(Connection& conn, tcp::socket& from, tcp::socket& to,
                                     std::atomic<std::uint64_t>& counter) {
  PooledBuffer buffer;
  for (;;) {
    boost::system::error_code ec;
    const std::size_t n = co_await from.async_read_some(asio::buffer(buffer.get(), kCopyBufferBytes),
                                                        asio::redirect_error(asio::use_awaitable, ec));
    if (ec == asio::error::eof) {
      // Half-close: pass the FIN on and keep the other direction running.
      to.shutdown(tcp::socket::shutdown_send, ec);
      co_return;
    }
    if (ec) {
      // A reset (or an abort): the other side gets a reset too.
      if (!conn.aborted()) {
        reset_socket(to);
        reset_socket(from);
      }
      co_return;
    }
    co_await asio::async_write(to, asio::buffer(buffer.get(), n),
                               asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      reset_socket(from);
      reset_socket(to);
      co_return;
    }
    counter.fetch_add(n, std::memory_order_relaxed);
  }
}

}  // namespace

asio::awaitable<void> run_copy(Connection& conn) {
  auto& info = conn.info();
  co_await join_both(copy_direction(conn, conn.client(), conn.upstream(), info.bytes_up),
                     copy_direction(conn, conn.upstream(), conn.client(), info.bytes_down));
}

}  // namespace shunt::proxy

// The plain-copy data path: the baseline the kernel paths are measured
// against, and the most portable fallback.
#include "proxy/connection.h"
#include "proxy/datapath/datapath.h"
#include "proxy/datapath/join.h"
#include "proxy/datapath/thread_recycler.h"

#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <memory>

namespace shunt::proxy {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

constexpr std::size_t kCopyBufferBytes = 64 * 1024;  // per direction: bounds memory per connection
// Copy buffers are recycled per thread and never zeroed: a short
// connection used to spend ~10% of its proxy CPU time in memset for two
// freshly value-initialised 64 KiB buffers (perf, connrate workload).
// At most 32 idle per thread: 2 MiB.
using BufferRecycler = ThreadRecycler<std::unique_ptr<char[]>, 32>;

struct PooledBuffer {
  PooledBuffer() {
    if (auto recycled = BufferRecycler::take()) {
      data = std::move(*recycled);
    } else {
      data.reset(new char[kCopyBufferBytes]);  // not make_unique: no zeroing
    }
  }
  PooledBuffer(const PooledBuffer&) = delete;
  PooledBuffer& operator=(const PooledBuffer&) = delete;
  ~PooledBuffer() { BufferRecycler::give(std::move(data)); }
  [[nodiscard]] char* get() const { return data.get(); }
  std::unique_ptr<char[]> data;
};

asio::awaitable<void> copy_direction(Connection& conn, tcp::socket& from, tcp::socket& to,
                                     std::atomic<std::uint64_t>& counter) {
  PooledBuffer buffer;
  for (;;) {
    boost::system::error_code ec;
    const std::size_t n = co_await from.async_read_some(asio::buffer(buffer.get(), kCopyBufferBytes),
                                                        asio::redirect_error(asio::use_awaitable, ec));
    const bool from_client = &from == &conn.client();
    if (ec == asio::error::eof) {
      conn.info().note_end(from_client ? EndReason::client_closed : EndReason::upstream_closed);
      // Half-close: pass the FIN on and keep the other direction running.
      to.shutdown(tcp::socket::shutdown_send, ec);
      co_return;
    }
    if (ec) {
      // A reset (or an abort): the other side gets a reset too.
      if (!conn.aborted()) {
        conn.info().note_end(from_client ? EndReason::client_reset : EndReason::upstream_reset, ec.message());
        reset_socket(to);
        reset_socket(from);
      }
      co_return;
    }
    co_await asio::async_write(to, asio::buffer(buffer.get(), n),
                               asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      if (!conn.aborted())
        conn.info().note_end(from_client ? EndReason::upstream_reset : EndReason::client_reset, ec.message());
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

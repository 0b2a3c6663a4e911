// The plain-copy data path: the baseline the kernel paths are measured
// against, and the most portable fallback.
#include "common/io_buffer.h"
#include "common/reset.h"
#include "proxy/datapath/datapath.h"
#include "proxy/datapath/join.h"

#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <optional>

namespace shunt::proxy {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

// `from_client`: which side `from` is, for the cause an end records.
asio::awaitable<void> copy_direction(tcp::socket& from, tcp::socket& to, bool from_client,
                                     Direction direction, DatapathSink& sink, CancelSlot& cancel,
                                     Ending& ending, UserspaceHold& hold) {
  boost::system::error_code ec;
  // Reads below never block: the wait for data is the async_wait.
  from.non_blocking(true, ec);
  for (;;) {
    // Readable first, then a buffer (common/io_buffer.h): an idle direction
    // holds none, a busy one only until its bytes are written on.
    if (!co_await hold.wait_readable(from, ec)) co_return;  // taken over
    std::optional<IoBuffer> buffer;
    std::size_t n = 0;
    if (!ec) {
      buffer.emplace();
      n = from.read_some(asio::buffer(buffer->data(), IoBuffer::size()), ec);
      if (ec == asio::error::would_block || ec == asio::error::try_again) continue;
    }
    if (ec == asio::error::eof) {
      ending.note(from_client ? EndReason::client_closed : EndReason::upstream_closed);
      // Half-close: pass the FIN on and keep the other direction running.
      to.shutdown(tcp::socket::shutdown_send, ec);
      hold.closed(direction);  // the pair stays movable with this direction closed
      co_return;
    }
    if (ec) {
      // A reset (or an abort): the other side gets a reset too.
      if (!cancel.cancelled()) {
        ending.note(from_client ? EndReason::client_reset : EndReason::upstream_reset, ec.message());
        reset_socket(to);
        reset_socket(from);
      }
      co_return;
    }
    co_await asio::async_write(to, asio::buffer(buffer->data(), n),
                               asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      if (!cancel.cancelled())
        ending.note(from_client ? EndReason::upstream_reset : EndReason::client_reset, ec.message());
      reset_socket(from);
      reset_socket(to);
      co_return;
    }
    sink.moved(direction, n);
  }
}

}  // namespace

asio::awaitable<Ending> run_copy(SocketPair& pair, DatapathSink& sink, CancelSlot& cancel,
                                 PairHandoff* handoff, HalfClosed closed) {
  co_return co_await run_both_directions(
      pair, cancel, handoff, sink.id(),
      [&](tcp::socket& from, tcp::socket& to, bool from_client, Direction d, Ending& ending,
          UserspaceHold& hold) {
        return copy_direction(from, to, from_client, d, sink, cancel, ending, hold);
      },
      closed);
}

}  // namespace shunt::proxy

// The splice(2) data path: socket -> pipe -> socket per direction, so
// payload stays in kernel pages, driven by Asio readiness on both sockets.
// Also the fallback when the sockmap refuses a socket.
#include "common/error.h"
#include "common/reset.h"
#include "common/thread_recycler.h"
#include "common/unique_fd.h"
#include "proxy/datapath/datapath.h"
#include "proxy/datapath/join.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cerrno>
#include <cstring>

namespace shunt::proxy {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

// A pipe holds at most this much per direction: the bound on what one
// spliced direction keeps in flight outside the socket buffers.
constexpr int kPipeBytes = 1 << 20;

enum class Step { more, eof, failed };

struct Pipe {
  UniqueFd read_end;
  UniqueFd write_end;
};

// A direction holds a pipe only while bytes are in flight (from the source
// readable until it is drained and the pipe emptied), so idle connections
// hold none. Empty pipes are recycled per thread: a fresh one costs pipe2,
// F_SETPIPE_SZ and two closes (and the kernel's pipe set-up and tear-down),
// which showed up in the connrate profile. Only a pipe known to be empty is
// given back. At most 16 idle per thread: 32 fds.
using PipeRecycler = ThreadRecycler<Pipe, 16>;

Result<Pipe> make_pipe() {
  int fds[2];
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return SysError::from_errno("pipe2");
  Pipe p{UniqueFd(fds[0]), UniqueFd(fds[1])};
  // Larger pipes mean fewer wake-ups per MB; the default (64 KiB) still works.
  ::fcntl(p.write_end.get(), F_SETPIPE_SZ, kPipeBytes);
  return p;
}

Result<Pipe> take_pipe() {
  if (auto recycled = PipeRecycler::take()) return std::move(*recycled);
  return make_pipe();
}

// `from_client`: which side `from` is, for the cause an end records.
asio::awaitable<void> splice_direction(tcp::socket& from, tcp::socket& to, bool from_client,
                                       Direction direction, DatapathSink& sink, CancelSlot& cancel,
                                       Ending& ending, UserspaceHold& hold) {
  boost::system::error_code ec;
  from.native_non_blocking(true, ec);
  to.native_non_blocking(true, ec);

  // `failed_side_is_source`: which socket's error ends the pair (the access
  // log names the side that reset first).
  auto fail = [&](bool failed_side_is_source, std::string_view error) {
    if (!cancel.cancelled()) {
      const bool client_failed = failed_side_is_source == from_client;
      ending.note(client_failed ? EndReason::client_reset : EndReason::upstream_reset, error);
      reset_socket(to);
      reset_socket(from);
    }
  };

  for (;;) {
    // Readable first, then a pipe: an idle direction holds none (issue 16);
    // the pipe goes back, empty, once the source has nothing more for now.
    if (!co_await hold.wait_readable(from, ec)) co_return;  // taken over
    if (ec) {
      fail(true, ec.message());
      co_return;
    }
    Result<Pipe> pipe = take_pipe();
    if (!pipe) {
      spdlog::warn("connection {}: {}", sink.id(), pipe.error().message());
      reset_socket(from);
      reset_socket(to);
      co_return;
    }
    for (;;) {
      // Fill the pipe from the source socket.
      const ssize_t in = ::splice(from.native_handle(), nullptr, pipe->write_end.get(), nullptr, kPipeBytes,
                                  SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (in < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) break;  // drained: the pipe is empty, back it goes
        fail(true, std::strerror(errno));
        co_return;
      }
      if (in == 0) {
        ending.note(from_client ? EndReason::client_closed : EndReason::upstream_closed);
        to.shutdown(tcp::socket::shutdown_send, ec);
        hold.closed(direction);  // the pair stays movable with this direction closed
        // Everything read was drained below before reading again: the pipe is empty.
        PipeRecycler::give(std::move(*pipe));
        co_return;
      }
      // Drain it completely into the destination before reading more, so the
      // pipe never holds more than one fill; a pipe with bytes in it is never
      // given back (a failure closes it with them).
      std::size_t pending = static_cast<std::size_t>(in);
      while (pending > 0) {
        const ssize_t out = ::splice(pipe->read_end.get(), nullptr, to.native_handle(), nullptr, pending,
                                     SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (out > 0) {
          pending -= static_cast<std::size_t>(out);
          sink.moved(direction, static_cast<std::uint64_t>(out));
          continue;
        }
        if (out < 0 && errno == EINTR) continue;
        if (out < 0 && errno == EAGAIN) {
          co_await to.async_wait(tcp::socket::wait_write, asio::redirect_error(asio::use_awaitable, ec));
          if (!ec) continue;
        }
        fail(false, out < 0 ? std::strerror(errno) : ec.message());
        co_return;
      }
    }
    PipeRecycler::give(std::move(*pipe));
  }
}

}  // namespace

asio::awaitable<Ending> run_splice(SocketPair& pair, DatapathSink& sink, CancelSlot& cancel,
                                   PairHandoff* handoff, HalfClosed closed) {
  co_return co_await run_both_directions(
      pair, cancel, handoff, sink.id(),
      [&](tcp::socket& from, tcp::socket& to, bool from_client, Direction d, Ending& ending,
          UserspaceHold& hold) {
        return splice_direction(from, to, from_client, d, sink, cancel, ending, hold);
      },
      closed);
}

}  // namespace shunt::proxy

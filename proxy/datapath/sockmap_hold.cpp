#include "proxy/datapath/sockmap_hold.h"

#include "proxy/datapath/tcp_counters.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <memory>

namespace shunt::proxy {

namespace {

ssize_t retry_eintr(auto call) {
  ssize_t n;
  do n = call();
  while (n < 0 && errno == EINTR);
  return n;
}

bool would_block() { return errno == EAGAIN || errno == EWOULDBLOCK; }

// One per worker thread, taken at its first hold: a pump call runs to its
// end before the thread runs another, and nothing stays in it between
// calls. Large, because the pump has to catch up with a sender that the
// closing window only slows: each 1 MiB costs three syscalls (peek, send,
// consume) where 64 KiB chunks cost sixteen times that.
constexpr std::size_t kPumpBytes = 1 << 20;

// Sends failed with EFAULT in a row before the pair is given up: about
// five seconds at the backlog's 4 ms poll.
constexpr std::uint16_t kFaultedSendRetries = 1250;
char* pump_buffer() {
  thread_local std::unique_ptr<char[]> buffer(new char[kPumpBytes]);
  return buffer.get();
}

}  // namespace

HeldBytes::Step HeldBytes::pump(bpf::SockmapBridge& bridge, int from, int to, std::uint64_t from_cookie,
                                std::uint64_t written_base, std::uint64_t others) {
  if (!active_) return {};
  std::uint64_t forwarded = bridge.forwarded(from_cookie);
  char* buffer = pump_buffer();
  for (;;) {
    // Bytes already written to the target are taken off the source before
    // anything is peeked again (a second peek would see them again).
    if (owed_ > 0) {
      const ssize_t consumed = retry_eintr([&] { return ::recv(from, buffer, owed_, MSG_DONTWAIT); });
      if (consumed > 0) {
        owed_ -= static_cast<std::uint32_t>(consumed);
        continue;
      }
      // Not now (recv() declines while segments wait in the receive queue
      // behind the verdict): again at the next poll.
      if (consumed < 0 && would_block()) return {.wait = Wait::backlog};
      spdlog::debug("sockmap hold: {} byte(s) written to the peer could not be taken off the source: {}",
                    owed_, consumed == 0 ? "EOF" : std::strerror(errno));
      return {.failed_fd = from, .error = consumed == 0 ? EIO : errno};
    }
    // Step 1: everything redirected before the hold is in the target once
    // the target has been written it, plus what was forwarded here and
    // what the short-circuit wrote.
    const bpf::HoldState state = bridge.hold_state(from_cookie);
    // The verdict dropped a segment it could not cut (its ring event may
    // have been lost): the stream is broken, reset the pair.
    if (state.broken) return {.failed_fd = from, .error = EPROTO};
    if (tcp_bytes_written(to) - written_base < state.bytes - state.held + forwarded + others)
      return {.wait = Wait::backlog};
    if (state.held == forwarded && !state.holding) {
      active_ = false;  // the verdict redirects again
      return {};
    }
    // Step 2: peek, send what the target takes, consume exactly that.
    const ssize_t peeked =
        retry_eintr([&] { return ::recv(from, buffer, kPumpBytes, MSG_PEEK | MSG_DONTWAIT); });
    if (peeked < 0 && !would_block()) return {.failed_fd = from, .error = errno};
    if (peeked <= 0) {
      // Nothing to read yet. Held bytes may still be on their way to the
      // psock's readable queue: a held skb queues behind the skbs the other
      // direction redirected to this same socket (its psock backlog), and
      // recv() reports EOF as soon as the FIN is in while that queue is
      // empty. The socket signals readable when they arrive. All forwarded
      // and EOF: nothing more can be held.
      if (peeked == 0 && state.held == forwarded) {
        active_ = false;
        return {};
      }
      return {.wait = Wait::readable};
    }
    const ssize_t sent = retry_eintr(
        [&] { return ::send(to, buffer, static_cast<std::size_t>(peeked), MSG_DONTWAIT | MSG_NOSIGNAL); });
    if (sent < 0) {
      if (would_block()) return {.wait = Wait::writable};
      // EFAULT from our own valid buffer is the kernel's, and nothing was
      // sent: tcp_wmem_schedule() returns min(copy, sk_forward_alloc),
      // which is negative while the target's forward allocation is (a
      // socket that holds charges its held skbs to the same account,
      // skb_set_owner_r without scheduling), and tcp_sendmsg_locked then
      // copies a negative length (WARN in check_copy_size, Linux 6.18) and
      // fails. Seen as pairs reset with "Bad address" under load
      // (docs/datapath.md). The account recovers as memory is freed: try
      // again at the next poll; a few seconds of it in a row give the pair
      // up rather than stall it for good.
      if (errno == EFAULT && faulted_sends_ < kFaultedSendRetries) {
        if (faulted_sends_++ == 0)
          spdlog::warn("sockmap hold: the kernel failed a send into the peer socket with EFAULT; retrying");
        return {.wait = Wait::backlog};
      }
      return {.failed_fd = to, .error = errno};
    }
    faulted_sends_ = 0;
    // In the target now: owed to the source, taken off at the loop's top.
    owed_ = static_cast<std::uint32_t>(sent);
    forwarded += static_cast<std::uint64_t>(sent);
    forwarded_here_ += static_cast<std::uint64_t>(sent);
    // Published as it goes: the verdict compares it with what it held.
    if (Status st = bridge.set_forwarded(from_cookie, forwarded); !st) {
      spdlog::error("sockmap hold: {}", st.error().message());
      return {.failed_fd = from, .error = st.error().code};
    }
  }
}

bool HeldBytes::settle_owed(int from) {
  char* buffer = pump_buffer();
  // The decline is momentary (segments behind the verdict), and bytes left
  // owed here would be forwarded twice by the new process, so this waits:
  // a few immediate tries, then 1 ms naps for at most 50 ms. It runs only
  // when a takeover freezes a holding pair with owed bytes (the last recv
  // declined), on the worker thread that is freezing all its pairs for the
  // takeover: its other connections wait that long at most.
  for (int attempt = 0; owed_ > 0 && attempt < 58; ++attempt) {
    if (attempt >= 8) ::usleep(1000);
    const ssize_t consumed = retry_eintr([&] { return ::recv(from, buffer, owed_, MSG_DONTWAIT); });
    if (consumed > 0)
      owed_ -= static_cast<std::uint32_t>(consumed);
    else if (consumed == 0 || !would_block())
      break;
  }
  return owed_ == 0;
}

}  // namespace shunt::proxy

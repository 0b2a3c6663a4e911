#include "proxy/datapath/tcp_counters.h"

#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

namespace shunt::proxy {

namespace {

bool read_tcp_info(int fd, tcp_info& ti) {
  socklen_t len = sizeof(ti);
  return ::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0;
}

}  // namespace

std::uint64_t tcp_bytes_written(int fd) {
  tcp_info ti{};
  if (!read_tcp_info(fd, ti)) return 0;
  return ti.tcpi_bytes_sent - ti.tcpi_bytes_retrans + ti.tcpi_notsent_bytes;
}

std::uint64_t tcp_bytes_received(int fd) {
  tcp_info ti{};
  if (!read_tcp_info(fd, ti)) return 0;
  return ti.tcpi_bytes_received;
}

bool tcp_closed(int fd) {
  tcp_info ti{};
  constexpr std::uint8_t kTcpClose = 7;  // TCP_CLOSE, include/net/tcp_states.h (not in the UAPI headers)
  return read_tcp_info(fd, ti) && ti.tcpi_state == kTcpClose;
}

bool tcp_peer_half_closed(int fd) {
  tcp_info ti{};
  constexpr std::uint8_t kTcpCloseWait = 8;  // TCP_CLOSE_WAIT, include/net/tcp_states.h
  return read_tcp_info(fd, ti) && ti.tcpi_state == kTcpCloseWait;
}

std::optional<std::uint64_t> tcp_bytes_consumed(int fd) {
  // received - queued, with `received` unchanged across the SIOCINQ call: a
  // segment arriving in between would otherwise count as consumed. Nobody
  // reads the socket meanwhile, so only arrivals move the readings and one
  // quiet moment settles it; bounded all the same, so a peer that never
  // pauses cannot hold the worker here. Either way of guessing after that
  // would break the drain check (too little: a FIN held forever; too much:
  // a FIN before the tail), so the caller gets no answer instead.
  constexpr int kAttempts = 8;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    const std::uint64_t before = tcp_bytes_received(fd);
    int queued = 0;
    if (::ioctl(fd, SIOCINQ, &queued) != 0) return std::nullopt;
    if (tcp_bytes_received(fd) == before) return before - static_cast<std::uint64_t>(queued);
  }
  return std::nullopt;
}

}  // namespace shunt::proxy

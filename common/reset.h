// Ending a TCP connection with RST instead of FIN: SO_LINGER {on, 0}, then
// close. Used wherever one side's reset or a refusal must reach the other
// side as a reset (SPEC.md "Deny"), by the connection, inspectors and data
// paths alike.
#pragma once

#include "common/sockopt.h"

#include <utility>  // before Asio: Boost 1.74 headers use std::exchange unincluded

#include <spdlog/spdlog.h>
#include <boost/asio/ip/tcp.hpp>

namespace shunt {

// Resets and closes `socket`; nothing when it is closed already.
inline void reset_socket(boost::asio::ip::tcp::socket& socket) {
  if (!socket.is_open()) return;
  boost::system::error_code ec;
  socket.set_option(boost::asio::socket_base::linger(true, 0), ec);
  socket.close(ec);
}

// Arms the reset on a raw fd the caller closes afterwards (the sockmap path
// owns its fds outside Asio).
inline void reset_fd(int fd) {
  // A failure leaves a close that sends FIN instead of RST; the peer still
  // sees the end, so it is logged, not escalated.
  if (Status st = set_socket_option(fd, SOL_SOCKET, SO_LINGER, linger{1, 0}, "SO_LINGER"); !st)
    spdlog::debug("reset of fd {}: {}", fd, st.error().message());
}

}  // namespace shunt

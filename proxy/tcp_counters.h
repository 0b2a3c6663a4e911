// TCP_INFO readings the sockmap path needs. Kept apart because the kernel's
// <linux/tcp.h> (which has the fields) cannot share a translation unit with
// glibc's <netinet/tcp.h> (which Asio includes and which lacks them).
#pragma once

#include <cstdint>

namespace shunt::proxy {

// Everything ever queued for sending on a TCP socket: bytes sent once plus
// bytes not yet sent, from one consistent tcp_info snapshot. 0 on error.
std::uint64_t tcp_bytes_written(int fd);

}  // namespace shunt::proxy

// TCP_INFO readings the sockmap path needs. Kept apart because the kernel's
// <linux/tcp.h> (which has the fields) cannot share a translation unit with
// glibc's <netinet/tcp.h> (which Asio includes and which lacks them).
#pragma once

#include <cstdint>
#include <optional>

namespace shunt::proxy {

// Everything ever queued for sending on a TCP socket: bytes sent once plus
// bytes not yet sent, from one consistent tcp_info snapshot. 0 on error.
std::uint64_t tcp_bytes_written(int fd);

// Sequence space the socket has received in order (tcpi_bytes_received):
// payload, plus one for the FIN once it has arrived. The payload is
// read by userspace, queued, or taken by a sockmap verdict. It moves before
// the socket's data_ready (and so the verdict program) runs over the new
// bytes, and it is final once the peer's FIN is visible. 0 on error.
std::uint64_t tcp_bytes_received(int fd);

// True when the socket is in TCP_CLOSE (reset, or both FINs exchanged).
bool tcp_closed(int fd);

// True when the socket is in TCP_CLOSE_WAIT: the peer's FIN is in (so every
// byte the peer will ever send is already queued) and nothing was reset.
bool tcp_peer_half_closed(int fd);

// Bytes userspace has consumed from the socket (received minus still
// queued), read so that no segment lands between the two readings. For a
// socket not yet in a sockmap. Empty on error, or when segments kept
// landing between the readings for every one of a few attempts.
std::optional<std::uint64_t> tcp_bytes_consumed(int fd);

}  // namespace shunt::proxy

// Two connected TCP pairs on 127.0.0.1, for the start-up probes that check
// what this kernel's sockmap does with real sockets (sockmap.cpp's queued-byte
// kick, sockmap_shortcut.cpp's sk_msg redirect). Each probe needs two pairs so
// that a redirect has a target that is not the sender's own peer.
#pragma once

#include "common/unique_fd.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

namespace shunt::bpf {

struct LoopbackPairs {
  // first_out talks to first_in, second_out to second_in.
  UniqueFd first_out, first_in, second_out, second_in;
};

// Fills `pairs`; on failure returns what failed (errno is left as the failing
// call set it) and nullptr on success.
inline const char* make_loopback_pairs(LoopbackPairs& pairs) {
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (!listener || ::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listener.get(), 4) != 0 ||
      ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    return "loopback listener";
  auto connected_pair = [&](UniqueFd& out, UniqueFd& in) {
    out = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!out || ::connect(out.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return false;
    in = UniqueFd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    return static_cast<bool>(in);
  };
  if (!connected_pair(pairs.first_out, pairs.first_in) || !connected_pair(pairs.second_out, pairs.second_in))
    return "loopback connect";
  return nullptr;
}

}  // namespace shunt::bpf

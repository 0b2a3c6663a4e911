// The takeover wire format: one message per SOCK_SEQPACKET datagram, a fixed
// header (magic, protocol version, type, payload length) and a payload of
// little-endian integers and length-prefixed strings, with file descriptors
// riding along as SCM_RIGHTS.
//
// Compatibility rule: a message's layout never changes within a protocol
// version. `hello` is the one message every version must read: its layout
// is frozen (versions offered, binary version, pid), so a process can always
// tell a peer it does not speak its version and change nothing.
#pragma once

#include "common/error.h"
#include "common/unique_fd.h"

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace shunt::takeover {

inline constexpr std::uint32_t kMagic = 0x4f544853;  // "SHTO"
// SCM_MAX_FD in the kernel: more fds in one message fail with EINVAL.
inline constexpr std::size_t kMaxFdsPerMessage = 253;
// One datagram's payload. SEQPACKET messages are atomic; a larger one
// would need a bigger send buffer than a default one guarantees.
inline constexpr std::size_t kMaxPayloadBytes = 60 * 1024;

enum class MessageType : std::uint16_t {
  hello = 1,          // new -> old: versions offered, binary version, pid
  welcome = 2,        // old -> new: version chosen, binary version, pid
  refuse = 3,         // either way: why, in words; the sender changes nothing
  listeners = 4,      // old -> new: a batch of listening sockets, one fd each
  listeners_end = 5,  // old -> new: how many were sent in all
  ready = 6,          // new -> old: accepting on every listener it was given
  released = 7,       // old -> new: the old one stopped accepting
  commit = 8,         // new -> old: the control socket is the new one's; old may let go
  // Version 2:
  kernel_maps = 9,  // old -> new, before listeners_end: the sockmap's maps, one fd each
  pairs = 10,       // old -> new, after released: a batch of kernel-spliced pairs, two fds each
  pairs_end = 11,   // old -> new: how many pairs were sent in all
  // Version 3, the boundary window after the commit (late.h):
  adopted = 12,   // new -> old: the last batch (pairs .. pairs_end) is adopted, frozen
  handed = 13,    // old -> new: the old process closed its fds of that batch; act on it
  late_end = 14,  // old -> new: the window is over (moved and stayed counts)
};

std::string_view to_string(MessageType type);

using Clock = std::chrono::steady_clock;

struct Message {
  std::uint16_t version = 0;
  MessageType type{};
  std::string payload;
  std::vector<UniqueFd> fds;
};

// Payload builder and reader. A Reader that runs past the end or finds a
// string longer than what is left fails once and stays failed; complete()
// tells a whole, well-formed payload from a short or padded one.
class Writer {
 public:
  Writer& u8(std::uint8_t v);
  Writer& u16(std::uint16_t v);
  Writer& u32(std::uint32_t v);
  Writer& u64(std::uint64_t v);
  Writer& str(std::string_view v);
  [[nodiscard]] std::string take() { return std::move(out_); }
  [[nodiscard]] std::size_t size() const { return out_.size(); }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  std::uint8_t u8() { return static_cast<std::uint8_t>(get(1)); }
  std::uint16_t u16() { return static_cast<std::uint16_t>(get(2)); }
  std::uint32_t u32() { return static_cast<std::uint32_t>(get(4)); }
  std::uint64_t u64() { return get(8); }
  std::string str();
  [[nodiscard]] bool ok() const { return ok_; }
  [[nodiscard]] bool complete() const { return ok_ && in_.empty(); }

 private:
  std::uint64_t get(std::size_t n);
  std::string_view in_;
  bool ok_ = true;
};

// Sends one message on a SOCK_SEQPACKET socket, waiting for room until
// `deadline` (ETIMEDOUT). At most kMaxFdsPerMessage fds and
// kMaxPayloadBytes of payload (EMSGSIZE otherwise). The fds stay the caller's.
Status send_message(int sock, std::uint16_t version, MessageType type, std::string_view payload,
                    std::span<const int> fds, Clock::time_point deadline);

// Receives one message, waiting until `deadline` (ETIMEDOUT). The peer
// closing is ECONNRESET ("peer closed the control connection"). A datagram
// that is truncated, carries a wrong magic or a length that disagrees with
// its size is EBADMSG; fds that came with it are closed.
Result<Message> recv_message(int sock, Clock::time_point deadline);

}  // namespace shunt::takeover

#include "takeover/wire.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

namespace shunt::takeover {

namespace {

constexpr std::size_t kHeaderBytes = 12;  // magic u32, version u16, type u16, length u32

int millis_until(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<long long>(left, 0, 1'000'000));
}

// poll() until `events` or the deadline; EINTR restarts with the time left.
Status wait_for(int sock, short events, Clock::time_point deadline, const char* what) {
  for (;;) {
    pollfd p{sock, events, 0};
    const int n = ::poll(&p, 1, millis_until(deadline));
    if (n > 0) return ok_status();
    if (n == 0) return SysError{ETIMEDOUT, what};
    if (errno != EINTR) return SysError::from_errno(what);
  }
}

}  // namespace

std::string_view to_string(MessageType type) {
  switch (type) {
    case MessageType::hello:
      return "hello";
    case MessageType::welcome:
      return "welcome";
    case MessageType::refuse:
      return "refuse";
    case MessageType::listeners:
      return "listeners";
    case MessageType::listeners_end:
      return "listeners_end";
    case MessageType::ready:
      return "ready";
    case MessageType::released:
      return "released";
    case MessageType::commit:
      return "commit";
    case MessageType::kernel_maps:
      return "kernel_maps";
    case MessageType::pairs:
      return "pairs";
    case MessageType::pairs_end:
      return "pairs_end";
    case MessageType::adopted:
      return "adopted";
    case MessageType::handed:
      return "handed";
    case MessageType::late_end:
      return "late_end";
  }
  return "unknown";
}

Writer& Writer::u8(std::uint8_t v) {
  out_.push_back(static_cast<char>(v));
  return *this;
}
Writer& Writer::u16(std::uint16_t v) {
  for (int i = 0; i < 2; ++i) out_.push_back(static_cast<char>(v >> (8 * i)));
  return *this;
}
Writer& Writer::u32(std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>(v >> (8 * i)));
  return *this;
}
Writer& Writer::u64(std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out_.push_back(static_cast<char>(v >> (8 * i)));
  return *this;
}
Writer& Writer::str(std::string_view v) {
  u32(static_cast<std::uint32_t>(v.size()));
  out_.append(v);
  return *this;
}

std::uint64_t Reader::get(std::size_t n) {
  if (!ok_ || in_.size() < n) {
    ok_ = false;
    return 0;
  }
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < n; ++i) v |= std::uint64_t{static_cast<unsigned char>(in_[i])} << (8 * i);
  in_.remove_prefix(n);
  return v;
}

std::string Reader::str() {
  const std::uint32_t n = u32();
  if (!ok_ || in_.size() < n) {
    ok_ = false;
    return {};
  }
  std::string s(in_.substr(0, n));
  in_.remove_prefix(n);
  return s;
}

Status send_message(int sock, std::uint16_t version, MessageType type, std::string_view payload,
                    std::span<const int> fds, Clock::time_point deadline) {
  if (fds.size() > kMaxFdsPerMessage || payload.size() > kMaxPayloadBytes)
    return SysError{EMSGSIZE, "takeover message " + std::string(to_string(type))};
  Writer header;
  header.u32(kMagic)
      .u16(version)
      .u16(static_cast<std::uint16_t>(type))
      .u32(static_cast<std::uint32_t>(payload.size()));
  std::string datagram = header.take();
  datagram.append(payload);

  iovec iov{datagram.data(), datagram.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (!fds.empty()) {
    control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  const std::string what = "send takeover " + std::string(to_string(type));
  for (;;) {
    const ssize_t n = ::sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n == static_cast<ssize_t>(datagram.size())) return ok_status();
    if (n >= 0) return SysError{EMSGSIZE, what + " (sent in part)"};
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return SysError::from_errno(what);
    if (Status st = wait_for(sock, POLLOUT, deadline, what.c_str()); !st) return st;
  }
}

Result<Message> recv_message(int sock, Clock::time_point deadline) {
  std::string buf(kHeaderBytes + kMaxPayloadBytes + 1, '\0');
  std::vector<char> control(CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage));
  for (;;) {
    iovec iov{buf.data(), buf.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    const ssize_t n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      if (Status st = wait_for(sock, POLLIN, deadline, "wait for a takeover message"); !st) return st.error();
      continue;
    }
    if (n < 0) return SysError::from_errno("receive takeover message");
    if (n == 0) return SysError{ECONNRESET, "peer closed the control connection"};

    // Own every fd first, so that an error below closes them.
    Message m;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        m.fds.emplace_back(fd);
      }
    }
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
      return SysError{EBADMSG, "takeover message truncated (payload or file descriptors)"};
    Reader header(std::string_view(buf.data(), kHeaderBytes));
    const std::uint32_t magic = header.u32();
    m.version = header.u16();
    m.type = static_cast<MessageType>(header.u16());
    const std::uint32_t length = header.u32();
    if (static_cast<std::size_t>(n) < kHeaderBytes || magic != kMagic)
      return SysError{EBADMSG, "not a shunt takeover message (bad magic)"};
    if (length != static_cast<std::size_t>(n) - kHeaderBytes)
      return SysError{EBADMSG, "takeover message length " + std::to_string(length) +
                                   " disagrees with its size " +
                                   std::to_string(n - static_cast<ssize_t>(kHeaderBytes))};
    m.payload.assign(buf.data() + kHeaderBytes, length);
    return m;
  }
}

}  // namespace shunt::takeover

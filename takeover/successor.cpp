#include "takeover/successor.h"

#include "takeover/control_socket.h"

#include <unistd.h>

namespace shunt::takeover {

Result<Message> Successor::expect(MessageType type, std::chrono::milliseconds within) {
  return takeover::expect(recv_message(sock_.get(), Clock::now() + within), type,
                          "the running shunt refused");
}

Result<Successor> Successor::begin(const std::string& control_socket, const Timeouts& timeouts) {
  Successor s;
  s.timeouts_ = timeouts;
  auto fd = connect_control_socket(control_socket);
  if (!fd) return fd.error();
  s.sock_ = std::move(*fd);
  if (!peer_is_same_user(s.sock_.get()))
    return SysError{EPERM, "the process on control socket " + control_socket + " runs as another user"};

  const Hello hello{kProtocolMin, kProtocolMax, SHUNT_VERSION, static_cast<std::uint32_t>(::getpid())};
  if (Status st = send_message(s.sock_.get(), kProtocolMin, MessageType::hello, encode(hello), {},
                               Clock::now() + timeouts.step);
      !st)
    return st.error();
  // A process still receiving connections from its own takeover answers
  // once that window is over (daemon/takeover.cpp, HandoverService::serve).
  auto welcome_msg = s.expect(MessageType::welcome, timeouts.step + timeouts.boundary);
  if (!welcome_msg) return welcome_msg.error();
  const auto welcome = decode_welcome(welcome_msg->payload);
  if (!welcome || welcome->version < kProtocolMin || welcome->version > kProtocolMax)
    return SysError{EPROTO, "the running shunt answered with a version this one does not speak"};
  s.version_ = welcome->version;
  s.peer_pid_ = welcome->pid;
  s.peer_binary_ = welcome->binary;

  for (;;) {
    auto m = recv_message(s.sock_.get(), Clock::now() + timeouts.step);
    if (!m) return m.error();
    if (m->type == MessageType::listeners_end) {
      Reader r(m->payload);
      const std::uint32_t total = r.u32();
      if (!r.complete() || total != s.listeners_.size())
        return SysError{EBADMSG, "listeners_end says " + std::to_string(total) + " listening sockets, " +
                                     std::to_string(s.listeners_.size()) + " arrived"};
      return s;
    }
    if (m->type == MessageType::kernel_maps && s.version_ >= kProtocolPairs) {
      auto set = decode_kernel_maps(m->payload);
      if (!set || set->names.size() != m->fds.size())
        return SysError{EBADMSG, "a kernel_maps message whose names and file descriptors disagree"};
      InheritedMaps maps{set->version, {}};
      for (std::size_t i = 0; i < set->names.size(); ++i)
        maps.maps.emplace_back(std::move(set->names[i]), std::move(m->fds[i]));
      s.maps_ = std::move(maps);
      continue;
    }
    if (m->type != MessageType::listeners)
      return SysError{EPROTO, "expected listeners, got " + std::string(to_string(m->type))};
    auto batch = decode_listeners(m->payload);
    if (!batch || batch->size() != m->fds.size())
      return SysError{EBADMSG, "a listeners batch whose entries and file descriptors disagree"};
    for (std::size_t i = 0; i < batch->size(); ++i)
      s.listeners_.push_back({std::move((*batch)[i]), std::move(m->fds[i])});
  }
}

Status Successor::ready(std::uint8_t takes) {
  if (version_ < kProtocolBoundary) takes &= static_cast<std::uint8_t>(~kReadyBoundary);
  takes_pairs_ = (takes & ~kReadyBoundary) != 0 && version_ >= kProtocolPairs;
  boundary_ = (takes & kReadyBoundary) != 0;
  const std::string payload = version_ >= kProtocolPairs ? Writer().u8(takes).take() : "";
  if (Status st =
          send_message(sock_.get(), version_, MessageType::ready, payload, {}, Clock::now() + timeouts_.step);
      !st)
    return st;
  auto released = expect(MessageType::released, timeouts_.step);
  if (!released) return released.error();
  return ok_status();
}

Result<std::vector<InheritedPair>> Successor::receive_pairs() {
  if (!takes_pairs_) return std::vector<InheritedPair>{};
  PairCollector batch(version_);
  for (;;) {
    auto m = recv_message(sock_.get(), Clock::now() + timeouts_.step);
    if (!m) return m.error();
    auto done = batch.feed(std::move(*m));
    if (!done) return done.error();
    if (*done) return batch.take();
  }
}

Status Successor::commit() {
  return send_message(sock_.get(), version_, MessageType::commit, {}, {}, Clock::now() + timeouts_.step);
}

void Successor::abort(const std::string& why) {
  if (!sock_) return;
  (void)send_message(sock_.get(), version_ ? version_ : kProtocolMin, MessageType::refuse,
                     Writer().str(why).take(), {}, Clock::now() + timeouts_.step);
  sock_.reset();
}

}  // namespace shunt::takeover

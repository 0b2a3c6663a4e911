// The new process's side of a takeover, run before it serves anything
// (blocking, each step bounded by Timeouts): connect to the control socket,
// agree on a version, receive the listening sockets; later, once it accepts
// on all of them, `ready()` waits for the old process to stop accepting and
// `commit()` tells it to let go.
#pragma once

#include "common/error.h"
#include "common/unique_fd.h"
#include "takeover/protocol.h"

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace shunt::takeover {

struct InheritedListener {
  ListenerEntry entry;
  UniqueFd fd;
};

// Version 2: the sockmap's maps the old process shares, by name.
struct InheritedMaps {
  std::uint32_t version = 0;
  std::vector<std::pair<std::string, UniqueFd>> maps;
};

class Successor {
 public:
  // Errors: ECONNREFUSED/ENOENT (nobody to take over from), EPROTO with the
  // old process's reason (e.g. incompatible versions: it changed nothing),
  // ETIMEDOUT, EBADMSG.
  static Result<Successor> begin(const std::string& control_socket, const Timeouts& timeouts);

  [[nodiscard]] std::vector<InheritedListener> take_listeners() { return std::move(listeners_); }
  // Empty unless the old process sent them (version 2, and it has a sockmap).
  [[nodiscard]] std::optional<InheritedMaps> take_kernel_maps() { return std::exchange(maps_, std::nullopt); }
  [[nodiscard]] std::uint32_t peer_pid() const { return peer_pid_; }
  [[nodiscard]] const std::string& peer_binary() const { return peer_binary_; }
  [[nodiscard]] std::uint16_t version() const { return version_; }

  // Accepting on every listener: wait until the old process stopped.
  // `takes` (version 2): the pairs this process takes (kernel-spliced ones
  // when it shares the old one's maps, parked HTTP/1.1 connections), which
  // receive_pairs() then returns.
  Status ready(std::uint8_t takes);  // kReady* flags, or 0
  [[nodiscard]] bool moves_pairs() const { return takes_pairs_; }
  // After ready(true): every pair the old process froze for this one. It
  // keeps its own fds until commit(), so dying before that loses nothing.
  Result<std::vector<InheritedPair>> receive_pairs();
  // The control socket path is ours: the old process closes its copies.
  Status commit();
  // Tells the old process this one gives up (it keeps everything).
  void abort(const std::string& why);
  // Version 3, after commit(): whether the old process goes on into the
  // boundary window (this process asked for it in ready()), and the
  // control connection for it (late.h).
  [[nodiscard]] bool boundary_window() const { return boundary_; }
  [[nodiscard]] UniqueFd take_socket() { return std::move(sock_); }

 private:
  Result<Message> expect(MessageType type, std::chrono::milliseconds within);
  UniqueFd sock_;
  Timeouts timeouts_;
  std::uint16_t version_ = 0;
  std::uint32_t peer_pid_ = 0;
  std::string peer_binary_;
  std::vector<InheritedListener> listeners_;
  std::optional<InheritedMaps> maps_;
  bool takes_pairs_ = false;
  bool boundary_ = false;
};

}  // namespace shunt::takeover

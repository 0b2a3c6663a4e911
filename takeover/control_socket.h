// admin.control_socket: the Unix SOCK_SEQPACKET socket a running shunt
// listens on and a `shunt run --takeover` connects to. Mode 0600 and a
// SO_PEERCRED check: only the running process's user may take it over.
#pragma once

#include "common/error.h"
#include "common/unique_fd.h"

#include <sys/types.h>
#include <string>

namespace shunt::takeover {

enum class ControlState {
  absent,  // no file at the path
  stale,   // a socket file nobody listens on (a crashed process's)
  live,    // a process accepts on it
};

// Connects and hangs up: the running process reads that as a probe and
// logs nothing. Errors other than "nobody there" are live: when in doubt,
// `shunt run` does not fight over ports and BPF state.
ControlState probe_control_socket(const std::string& path);

Result<UniqueFd> connect_control_socket(const std::string& path);

// The listening side. bind() creates the parent directory, binds a
// temporary name and renames it over `path`, so a process taking the path
// over (or starting beside a stale file) leaves no moment where the path
// answers nothing. The destructor removes the path only while it is still
// this socket's (after a takeover it is the new process's).
class ControlListener {
 public:
  static Result<ControlListener> bind(const std::string& path);
  ControlListener() = default;
  ControlListener(ControlListener&& other) noexcept { *this = std::move(other); }
  ControlListener& operator=(ControlListener&&) noexcept;
  ~ControlListener();

  [[nodiscard]] int fd() const { return fd_.get(); }
  // Hands the listening socket to its user (an Asio acceptor); the path
  // stays this object's to remove.
  [[nodiscard]] UniqueFd take_fd() { return std::move(fd_); }
  [[nodiscard]] const std::string& path() const { return path_; }
  // Gives up the listening socket without touching the path (the new
  // process owns it now).
  void abandon();
  // True while the path is still this listener's socket. A new process
  // renames its own over it before its commit; one that dies or stalls
  // after that leaves the path on a socket nobody accepts on.
  [[nodiscard]] bool owns_path() const;

 private:
  void remove_if_ours();
  UniqueFd fd_;
  std::string path_;
  ino_t inode_ = 0;
  dev_t device_ = 0;
};

// True when the peer of a connected control socket runs as this process's
// effective user (root in production).
bool peer_is_same_user(int sock);

}  // namespace shunt::takeover

#include "takeover/control_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

namespace shunt::takeover {

namespace {

Result<sockaddr_un> address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof(a.sun_path)) return SysError{ENAMETOOLONG, "control socket " + path};
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

}  // namespace

Result<UniqueFd> connect_control_socket(const std::string& path) {
  auto a = address(path);
  if (!a) return a.error();
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd) return SysError::from_errno("control socket");
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*a), sizeof(*a)) < 0)
    return SysError::from_errno("connect to control socket " + path);
  return fd;
}

ControlState probe_control_socket(const std::string& path) {
  auto fd = connect_control_socket(path);
  if (fd) return ControlState::live;
  if (fd.error().code == ENOENT) return ControlState::absent;
  if (fd.error().code == ECONNREFUSED) return ControlState::stale;
  return ControlState::live;
}

Result<ControlListener> ControlListener::bind(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  if (ec) return SysError{ec.value(), "create the directory of control socket " + path};
  const std::string tmp = path + ".new." + std::to_string(::getpid());
  auto a = address(tmp);
  if (!a) return a.error();
  ControlListener l;
  l.fd_ = UniqueFd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!l.fd_) return SysError::from_errno("control socket");
  ::unlink(tmp.c_str());
  if (::bind(l.fd_.get(), reinterpret_cast<const sockaddr*>(&*a), sizeof(*a)) < 0)
    return SysError::from_errno("bind control socket " + tmp);
  // Whoever may connect may take the proxy over: the owner only.
  if (::chmod(tmp.c_str(), 0600) < 0 || ::listen(l.fd_.get(), 4) < 0) {
    const SysError e = SysError::from_errno("set up control socket " + tmp);
    ::unlink(tmp.c_str());
    return e;
  }
  struct stat st {};
  if (::stat(tmp.c_str(), &st) < 0 || ::rename(tmp.c_str(), path.c_str()) < 0) {
    const SysError e = SysError::from_errno("install control socket " + path);
    ::unlink(tmp.c_str());
    return e;
  }
  l.path_ = path;
  l.inode_ = st.st_ino;
  l.device_ = st.st_dev;
  return l;
}

ControlListener& ControlListener::operator=(ControlListener&& other) noexcept {
  if (this != &other) {
    remove_if_ours();
    fd_ = std::move(other.fd_);
    path_ = std::move(other.path_);
    inode_ = std::exchange(other.inode_, 0);
    device_ = std::exchange(other.device_, 0);
  }
  return *this;
}

ControlListener::~ControlListener() { remove_if_ours(); }

void ControlListener::abandon() {
  fd_.reset();
  path_.clear();
}

bool ControlListener::owns_path() const {
  struct stat st {};
  return !path_.empty() && ::stat(path_.c_str(), &st) == 0 && st.st_ino == inode_ && st.st_dev == device_;
}

void ControlListener::remove_if_ours() {
  if (path_.empty()) return;
  // Another process may have renamed its socket over the path since.
  if (owns_path()) ::unlink(path_.c_str());
  path_.clear();
  fd_.reset();
}

bool peer_is_same_user(int sock) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return false;
  return cred.uid == ::geteuid();
}

}  // namespace shunt::takeover

#include "netlink/netns.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <optional>
#include <thread>

namespace shunt::pods {
namespace {

std::string path_of(const std::string& name) { return std::string(kNetnsRunDir) + "/" + name; }

// `ip netns` makes /run/netns a shared mount so that namespace mounts made
// here propagate into mount namespaces created later (ip netns exec).
Status prepare_run_dir() {
  if (::mkdir(kNetnsRunDir, 0755) < 0 && errno != EEXIST)
    return SysError::from_errno(std::string("mkdir ") + kNetnsRunDir);
  if (::mount("", kNetnsRunDir, "none", MS_SHARED | MS_REC, nullptr) == 0) return ok_status();
  if (errno != EINVAL) return SysError::from_errno(std::string("make ") + kNetnsRunDir + " shared");
  // Not a mount point yet: bind it onto itself first.
  if (::mount(kNetnsRunDir, kNetnsRunDir, "none", MS_BIND | MS_REC, nullptr) < 0)
    return SysError::from_errno(std::string("bind-mount ") + kNetnsRunDir);
  if (::mount("", kNetnsRunDir, "none", MS_SHARED | MS_REC, nullptr) < 0)
    return SysError::from_errno(std::string("make ") + kNetnsRunDir + " shared");
  return ok_status();
}

}  // namespace

Result<Netns> Netns::create(const std::string& name) {
  if (Status st = prepare_run_dir(); !st) return st.error();
  const std::string path = path_of(name);
  {
    UniqueFd placeholder(::open(path.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0));
    if (!placeholder) return SysError::from_errno("create " + path);
  }
  // unshare() moves only the calling thread; a throwaway thread keeps this
  // process's own threads in the host namespace.
  SysError failure;
  std::thread([&] {
    if (::unshare(CLONE_NEWNET) < 0) {
      failure = SysError::from_errno("unshare(CLONE_NEWNET) for " + name);
      return;
    }
    if (::mount("/proc/thread-self/ns/net", path.c_str(), "none", MS_BIND, nullptr) < 0)
      failure = SysError::from_errno("bind-mount network namespace onto " + path);
  }).join();
  if (failure.code != 0) {
    ::unlink(path.c_str());
    return failure;
  }
  return open(name);
}

Result<Netns> Netns::open(const std::string& name) {
  const std::string path = path_of(name);
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return SysError::from_errno("open network namespace " + path);
  return Netns(name, std::move(fd));
}

Status Netns::remove(const std::string& name) {
  const std::string path = path_of(name);
  if (::umount2(path.c_str(), MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
    return SysError::from_errno("unmount " + path);
  if (::unlink(path.c_str()) < 0) return SysError::from_errno("remove " + path);
  return ok_status();
}

std::vector<std::string> Netns::list() {
  std::vector<std::string> names;
  DIR* dir = ::opendir(kNetnsRunDir);
  if (!dir) return names;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    names.emplace_back(e->d_name);
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

Status Netns::run_inside(const std::function<Status()>& fn) const {
  std::optional<Status> result;
  std::thread([&] {
    if (::setns(fd_.get(), CLONE_NEWNET) < 0) {
      result.emplace(SysError::from_errno("enter network namespace " + name_));
      return;
    }
    result.emplace(fn());
  }).join();
  return std::move(*result);
}

}  // namespace shunt::pods

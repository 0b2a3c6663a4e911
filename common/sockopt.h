// setsockopt(2) with its result. Every call site decides what a failure
// means there (a StartupError at start-up, a logged fallback on a
// connection), so none can ignore it by accident.
#pragma once

#include "common/error.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <string>

namespace shunt {

template <typename T>
Status set_socket_option(int fd, int level, int name, const T& value, const char* what) {
  if (::setsockopt(fd, level, name, &value, sizeof(value)) != 0)
    return SysError::from_errno(std::string("setsockopt ") + what);
  return ok_status();
}

// IP_TRANSPARENT (IPV6_TRANSPARENT for v6): lets a listener accept for
// non-local destinations and an upstream socket bind the client's address.
// Needs CAP_NET_ADMIN.
inline Status set_transparent(int fd, bool v6) {
  return v6 ? set_socket_option(fd, SOL_IPV6, IPV6_TRANSPARENT, 1, "IPV6_TRANSPARENT")
            : set_socket_option(fd, SOL_IP, IP_TRANSPARENT, 1, "IP_TRANSPARENT");
}

}  // namespace shunt

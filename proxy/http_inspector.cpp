// Placeholder until HTTP inspection lands: connections that need it are
// reset rather than let through uninspected.
#include "proxy/connection.h"
#include "proxy/datapath.h"

#include <spdlog/spdlog.h>

namespace shunt::proxy {

boost::asio::awaitable<bool> inspect_http(Connection& conn) {
  spdlog::warn("connection {}: HTTP inspection is not available in this build; resetting", conn.info().id);
  reset_socket(conn.client());
  co_return false;
}

}  // namespace shunt::proxy

// The three ways bytes move once a connection's verdict is final. Each runs
// until both directions have ended (FIN forwarded each way) or one side
// resets, in which case the other side is reset too. Bytes moved are
// accounted in the connection's ConnectionInfo as they go.
#pragma once

#include <utility>  // before Asio: Boost 1.74 awaitable.hpp uses std::exchange unincluded

#include <boost/asio/awaitable.hpp>

namespace shunt::proxy {

class Connection;

// Asio async read/write through a 64 KiB buffer per direction, held only
// while bytes are in flight (common/io_buffer.h).
boost::asio::awaitable<void> run_copy(Connection& conn);
// splice(2) through a pipe per direction, held only while bytes are in
// flight, driven by Asio readiness.
boost::asio::awaitable<void> run_splice(Connection& conn);
// Hands both sockets to the BPF sockmap (proxy/datapath/sockmap_path.cpp); falls back
// to run_splice when the kernel refuses them.
boost::asio::awaitable<void> run_sockmap(Connection& conn);

}  // namespace shunt::proxy

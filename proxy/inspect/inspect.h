// The two inspectors a connection's L4 decision can ask for (policy::Inspect).
#pragma once

#include <utility>  // before Asio: Boost 1.74 awaitable.hpp uses std::exchange unincluded

#include <boost/asio/awaitable.hpp>

#include <string>

namespace shunt::proxy {

class Connection;

// HTTP inspection (http_inspector.cpp): reads and forwards what it must
// until the verdict cannot change any more. Returns true when the
// connection should continue on the data path, false when it has been
// closed (denied, reset, or finished entirely in userspace). TLS inspection
// is on the narrow seam already (inspector.h).
boost::asio::awaitable<bool> inspect_http(Connection& conn);

// HTTP/2 with prior knowledge (h2_inspector.cpp), entered from inspect_http
// when the connection opens with the HTTP/2 preface; `initial` holds every
// byte read so far, preface first. Always finishes the connection in
// userspace (returns false).
boost::asio::awaitable<bool> inspect_h2(Connection& conn, std::string initial);

}  // namespace shunt::proxy

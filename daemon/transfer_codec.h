// A kernel-spliced connection's state on the takeover wire (version 2):
// the proxy's TransferredConnection as the opaque state of one pair in a
// `pairs` message (takeover/protocol.h). Its layout is frozen within a
// protocol version, like every message's.
#pragma once

#include "proxy/connection_transfer.h"

#include <optional>
#include <string>
#include <string_view>

namespace shunt::proxy {

std::string encode(const TransferredConnection& connection);
// Nothing when the bytes are short, padded or name an address that is not one.
std::optional<TransferredConnection> decode_connection(std::string_view state);

}  // namespace shunt::proxy

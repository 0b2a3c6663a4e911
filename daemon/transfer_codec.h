// A kernel-spliced connection's state on the takeover wire (version 2):
// the proxy's TransferredConnection as the opaque state of one pair in a
// `pairs` message (takeover/protocol.h). Its layout is frozen within a
// protocol version, like every message's.
#pragma once

#include "proxy/connection_transfer.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace shunt::proxy {

// `version`: the takeover protocol's. Version 3 appends the bytes an
// inspector had read (TransferredConnection::pending) and knows
// PairKind::tls_hello; version 2's layout is what it was.
std::string encode(const TransferredConnection& connection, std::uint16_t version);
// Nothing when the bytes are short, padded, name an address that is not
// one or a kind the version does not know.
std::optional<TransferredConnection> decode_connection(std::string_view state, std::uint16_t version);

}  // namespace shunt::proxy

#include "takeover/protocol.h"

#include <algorithm>

namespace shunt::takeover {

std::string encode(const Hello& h) {
  return Writer().u16(h.min_version).u16(h.max_version).str(h.binary).u32(h.pid).take();
}

std::optional<Hello> decode_hello(std::string_view payload) {
  Reader r(payload);
  Hello h;
  h.min_version = r.u16();
  h.max_version = r.u16();
  h.binary = r.str();
  h.pid = r.u32();
  // Later versions may append to hello; what is here is all this one reads.
  if (!r.ok()) return std::nullopt;
  return h;
}

std::string encode(const Welcome& w) { return Writer().u16(w.version).str(w.binary).u32(w.pid).take(); }

std::optional<Welcome> decode_welcome(std::string_view payload) {
  Reader r(payload);
  Welcome w;
  w.version = r.u16();
  w.binary = r.str();
  w.pid = r.u32();
  if (!r.complete()) return std::nullopt;
  return w;
}

std::optional<std::uint16_t> negotiate(const Hello& peer) {
  const std::uint16_t low = std::max(peer.min_version, kProtocolMin);
  const std::uint16_t high = std::min(peer.max_version, kProtocolMax);
  if (low > high) return std::nullopt;
  return high;
}

std::string incompatible(const Hello& peer) {
  return "incompatible takeover protocol: the running process speaks versions " +
         std::to_string(kProtocolMin) + "-" + std::to_string(kProtocolMax) + ", the new one (shunt " +
         peer.binary + ") " + std::to_string(peer.min_version) + "-" + std::to_string(peer.max_version);
}

std::string encode(const std::vector<ListenerEntry>& batch) {
  Writer w;
  w.u32(static_cast<std::uint32_t>(batch.size()));
  for (const auto& e : batch) w.str(e.role).str(e.name).str(e.endpoint).u8(e.transparent ? 1 : 0);
  return w.take();
}

std::optional<std::vector<ListenerEntry>> decode_listeners(std::string_view payload) {
  Reader r(payload);
  const std::uint32_t n = r.u32();
  if (!r.ok() || n > kMaxFdsPerMessage) return std::nullopt;
  std::vector<ListenerEntry> out(n);
  for (auto& e : out) {
    e.role = r.str();
    e.name = r.str();
    e.endpoint = r.str();
    e.transparent = r.u8() != 0;
  }
  if (!r.complete()) return std::nullopt;
  return out;
}

std::string encode(const KernelMapSet& maps) {
  Writer w;
  w.u32(maps.version).u32(static_cast<std::uint32_t>(maps.names.size()));
  for (const auto& n : maps.names) w.str(n);
  return w.take();
}

std::optional<KernelMapSet> decode_kernel_maps(std::string_view payload) {
  Reader r(payload);
  KernelMapSet m;
  m.version = r.u32();
  const std::uint32_t n = r.u32();
  if (!r.ok() || n > kMaxFdsPerMessage) return std::nullopt;
  m.names.resize(n);
  for (auto& name : m.names) name = r.str();
  if (!r.complete()) return std::nullopt;
  return m;
}

std::string encode_pairs(const std::vector<std::string_view>& states) {
  Writer w;
  w.u32(static_cast<std::uint32_t>(states.size()));
  for (auto st : states) w.str(st);
  return w.take();
}

std::optional<std::vector<std::string>> decode_pairs(std::string_view payload) {
  Reader r(payload);
  const std::uint32_t n = r.u32();
  if (!r.ok() || n > kMaxPairsPerMessage) return std::nullopt;
  std::vector<std::string> out(n);
  for (auto& st : out) st = r.str();
  if (!r.complete()) return std::nullopt;
  return out;
}

std::string encode_pairs(const std::vector<std::pair<std::string_view, std::uint8_t>>& entries) {
  Writer w;
  w.u32(static_cast<std::uint32_t>(entries.size()));
  for (const auto& [state, fds] : entries) w.u8(fds).str(state);
  return w.take();
}

std::optional<std::vector<PairEntry>> decode_pair_entries(std::string_view payload) {
  Reader r(payload);
  const std::uint32_t n = r.u32();
  if (!r.ok() || n > kMaxPairsPerMessage) return std::nullopt;
  std::vector<PairEntry> out(n);
  for (auto& e : out) {
    e.fds = r.u8();
    if (e.fds != 1 && e.fds != 2) return std::nullopt;
    e.state = r.str();
  }
  if (!r.complete()) return std::nullopt;
  return out;
}

Result<bool> PairCollector::feed(Message m) {
  if (m.type == MessageType::pairs_end) {
    Reader r(m.payload);
    const std::uint32_t total = r.u32();
    if (!r.complete() || total != pairs_.size())
      return SysError{EBADMSG, "pairs_end says " + std::to_string(total) + " pairs, " +
                                   std::to_string(pairs_.size()) + " arrived"};
    return true;
  }
  if (m.type == MessageType::refuse)
    return SysError{EPROTO, "the running shunt refused: " + Reader(m.payload).str()};
  if (m.type != MessageType::pairs)
    return SysError{EPROTO, "expected pairs, got " + std::string(to_string(m.type))};
  if (version_ < kProtocolBoundary) {
    auto states = decode_pairs(m.payload);
    if (!states || 2 * states->size() != m.fds.size())
      return SysError{EBADMSG, "a pairs batch whose states and file descriptors disagree"};
    for (std::size_t i = 0; i < states->size(); ++i)
      pairs_.push_back({std::move((*states)[i]), std::move(m.fds[2 * i]), std::move(m.fds[2 * i + 1])});
    return false;
  }
  auto entries = decode_pair_entries(m.payload);
  std::size_t fds = 0;
  if (entries)
    for (const PairEntry& e : *entries) fds += e.fds;
  if (!entries || fds != m.fds.size())
    return SysError{EBADMSG, "a pairs batch whose states and file descriptors disagree"};
  std::size_t next = 0;
  for (PairEntry& e : *entries) {
    InheritedPair p{std::move(e.state), std::move(m.fds[next++]), {}};
    if (e.fds == 2) p.upstream = std::move(m.fds[next++]);
    pairs_.push_back(std::move(p));
  }
  return false;
}

Result<Message> expect(Result<Message> got, MessageType type, std::string_view refused) {
  if (!got) return got;
  if (got->type == MessageType::refuse)
    return SysError{EPROTO, std::string(refused) + ": " + Reader(got->payload).str()};
  if (got->type != type)
    return SysError{
        EPROTO, "expected " + std::string(to_string(type)) + ", got " + std::string(to_string(got->type))};
  return got;
}

}  // namespace shunt::takeover

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

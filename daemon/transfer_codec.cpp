#include "daemon/transfer_codec.h"

#include "takeover/protocol.h"

namespace shunt::proxy {

using takeover::Reader;
using takeover::Writer;

namespace {

void put(Writer& w, const config::Endpoint& e) { w.str(e.address().to_string()).u16(e.port()); }

bool get(Reader& r, config::Endpoint& e) {
  const std::string address = r.str();
  const std::uint16_t port = r.u16();
  boost::system::error_code ec;
  const auto parsed = boost::asio::ip::make_address(address, ec);
  if (!r.ok() || ec) return false;
  e = config::Endpoint(parsed, port);
  return true;
}

template <typename Clock>
std::uint64_t ticks(typename Clock::time_point t) {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count());
}

template <typename Clock>
typename Clock::time_point from_ticks(std::uint64_t ns) {
  return typename Clock::time_point(std::chrono::duration_cast<typename Clock::duration>(
      std::chrono::nanoseconds(static_cast<std::int64_t>(ns))));
}

}  // namespace

std::string encode(const TransferredConnection& t, std::uint16_t version) {
  Writer w;
  w.u64(t.id).str(t.listener);
  put(w, t.src);
  put(w, t.dst);
  w.str(t.src_pod).str(t.dst_pod).str(t.rule);
  w.u64(ticks<std::chrono::steady_clock>(t.started)).u64(ticks<std::chrono::system_clock>(t.started_wall));
  w.u64(t.bytes_up).u64(t.bytes_down);
  w.u8(static_cast<std::uint8_t>(t.path_up)).u8(static_cast<std::uint8_t>(t.path_down));
  w.u8(static_cast<std::uint8_t>(t.datapath)).u8(static_cast<std::uint8_t>(t.kind));
  // What the verdict rests on (DecisionBasis; its flow is src and dst).
  const DecisionBasis& b = t.basis;
  w.u8(static_cast<std::uint8_t>(b.inspect)).u8(b.requests_uninspected ? 1 : 0);
  w.u8(b.sni ? 1 : 0).str(b.sni.value_or(""));
  w.u8(b.last_request ? 1 : 0);
  if (b.last_request) {
    w.str(b.last_request->method).str(b.last_request->path).str(b.last_request->host);
    w.u32(static_cast<std::uint32_t>(b.last_request->headers.size()));
    for (const auto& [name, value] : b.last_request->headers) w.str(name).str(value);
  }
  const SplicedPairState& s = t.state;
  // Before version 4 the state has no upstream -> client short-circuit
  // figure. Those bytes were written to the client socket by something
  // other than the verdict, exactly as bytes written before the handover
  // were, so the baseline carries them: the FIN rule (written - baseline >=
  // redirected + short-circuited) and the hold's pump read the same. Only
  // shunt_shortcut_bytes_total in the new process misses them, and those
  // bytes were counted nowhere else either.
  const bool down_figure = version >= takeover::kProtocolShortcutDown;
  const std::uint64_t client_written = s.client_written + (down_figure ? 0 : s.short_circuited_down);
  w.u64(s.client_cookie).u64(s.upstream_cookie);
  w.u64(s.client_consumed).u64(s.upstream_consumed).u64(client_written).u64(s.upstream_written);
  w.u64(s.short_circuited);
  if (down_figure) w.u64(s.short_circuited_down);
  w.u8(s.client_fin_forwarded ? 1 : 0).u8(s.upstream_fin_forwarded ? 1 : 0).u8(s.boosted ? 1 : 0);
  if (version >= takeover::kProtocolBoundary) w.str(t.pending);
  return w.take();
}

std::optional<TransferredConnection> decode_connection(std::string_view state, std::uint16_t version) {
  Reader r(state);
  TransferredConnection t;
  t.id = r.u64();
  t.listener = r.str();
  if (!get(r, t.src) || !get(r, t.dst)) return std::nullopt;
  t.src_pod = r.str();
  t.dst_pod = r.str();
  t.rule = r.str();
  t.started = from_ticks<std::chrono::steady_clock>(r.u64());
  t.started_wall = from_ticks<std::chrono::system_clock>(r.u64());
  t.bytes_up = r.u64();
  t.bytes_down = r.u64();
  const std::uint8_t up = r.u8(), down = r.u8();
  if (up > static_cast<std::uint8_t>(KernelPath::sk_msg) ||
      down > static_cast<std::uint8_t>(KernelPath::sk_msg))
    return std::nullopt;
  t.path_up = static_cast<KernelPath>(up);
  t.path_down = static_cast<KernelPath>(down);
  const std::uint8_t datapath = r.u8();
  if (datapath > static_cast<std::uint8_t>(config::Datapath::copy)) return std::nullopt;
  t.datapath = static_cast<config::Datapath>(datapath);
  const std::uint8_t kind = r.u8();
  const PairKind last = version >= takeover::kProtocolBoundary ? PairKind::http_first : PairKind::userspace;
  if (kind > static_cast<std::uint8_t>(last)) return std::nullopt;
  t.kind = static_cast<PairKind>(kind);
  DecisionBasis& b = t.basis;
  const std::uint8_t inspect = r.u8();
  if (inspect > static_cast<std::uint8_t>(policy::Inspect::tls)) return std::nullopt;
  b.inspect = static_cast<policy::Inspect>(inspect);
  b.requests_uninspected = r.u8() != 0;
  const bool has_sni = r.u8() != 0;
  std::string sni = r.str();
  if (has_sni) b.sni = std::move(sni);
  if (r.u8() != 0) {
    DecisionBasis::Request request;
    request.method = r.str();
    request.path = r.str();
    request.host = r.str();
    const std::uint32_t headers = r.u32();
    for (std::uint32_t i = 0; i < headers && r.ok(); ++i) {
      std::string name = r.str();
      request.headers.emplace_back(std::move(name), r.str());
    }
    b.last_request = std::move(request);
  }
  SplicedPairState& s = t.state;
  s.client_cookie = r.u64();
  s.upstream_cookie = r.u64();
  s.client_consumed = r.u64();
  s.upstream_consumed = r.u64();
  s.client_written = r.u64();
  s.upstream_written = r.u64();
  s.short_circuited = r.u64();
  if (version >= takeover::kProtocolShortcutDown) s.short_circuited_down = r.u64();
  s.client_fin_forwarded = r.u8() != 0;
  s.upstream_fin_forwarded = r.u8() != 0;
  s.boosted = r.u8() != 0;
  if (version >= takeover::kProtocolBoundary) t.pending = r.str();
  if (!r.complete()) return std::nullopt;
  return t;
}

}  // namespace shunt::proxy

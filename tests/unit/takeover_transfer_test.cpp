// A kernel-spliced connection's state on the takeover wire
// (daemon/transfer_codec.h): every field survives the trip, and damaged
// bytes are refused rather than half-read.
#include "daemon/transfer_codec.h"

#include "takeover/protocol.h"

#include <gtest/gtest.h>

namespace shunt::proxy {
namespace {

constexpr std::uint16_t kV2 = 2;
constexpr std::uint16_t kV3 = takeover::kProtocolBoundary;
constexpr std::uint16_t kV4 = takeover::kProtocolShortcutDown;

TransferredConnection sample() {
  TransferredConnection t;
  t.id = 42;
  t.listener = "pods";
  t.src = config::Endpoint(boost::asio::ip::make_address("10.200.0.2"), 40123);
  t.dst = config::Endpoint(boost::asio::ip::make_address("fd00::3"), 8080);
  t.src_pod = "web";
  t.dst_pod = "api";
  t.rule = "api-get";
  t.started = std::chrono::steady_clock::now();
  t.started_wall = std::chrono::system_clock::now();
  t.bytes_up = 123;
  t.bytes_down = 456;
  t.path_up = KernelPath::sk_msg;
  t.datapath = config::Datapath::copy;
  t.kind = PairKind::userspace;
  t.basis.inspect = policy::Inspect::http;
  t.basis.requests_uninspected = true;
  t.basis.sni = "api.example";
  t.basis.last_request = DecisionBasis::Request{"GET", "/api/x", "api", {{"x-a", "1"}, {"x-b", ""}}};
  t.state = SplicedPairState{1, 2, 3, 4, 5, 6, 7, 8, true, false, true};
  return t;
}

TEST(TakeoverTransfer, RoundTrip) {
  const TransferredConnection t = sample();
  const auto back = decode_connection(encode(t, kV2), kV2);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->id, 42u);
  EXPECT_EQ(back->listener, "pods");
  EXPECT_EQ(back->src, t.src);
  EXPECT_EQ(back->dst, t.dst);
  EXPECT_EQ(back->src_pod, "web");
  EXPECT_EQ(back->dst_pod, "api");
  EXPECT_EQ(back->rule, "api-get");
  EXPECT_EQ(back->started, t.started);
  EXPECT_EQ(std::chrono::duration_cast<std::chrono::nanoseconds>(back->started_wall - t.started_wall).count(),
            0);
  EXPECT_EQ(back->bytes_up, 123u);
  EXPECT_EQ(back->bytes_down, 456u);
  EXPECT_EQ(back->path_up, KernelPath::sk_msg);
  EXPECT_EQ(back->path_down, KernelPath::sk_skb);
  EXPECT_EQ(back->datapath, config::Datapath::copy);
  EXPECT_EQ(back->kind, PairKind::userspace);
  EXPECT_EQ(back->basis.inspect, policy::Inspect::http);
  EXPECT_TRUE(back->basis.requests_uninspected);
  EXPECT_EQ(back->basis.sni, "api.example");
  ASSERT_TRUE(back->basis.last_request);
  EXPECT_EQ(back->basis.last_request->path, "/api/x");
  ASSERT_EQ(back->basis.last_request->headers.size(), 2u);
  EXPECT_EQ(back->basis.last_request->headers[0].first, "x-a");
  EXPECT_EQ(back->basis.last_request->headers[0].second, "1");
  const SplicedPairState& s = back->state;
  EXPECT_EQ(s.client_cookie, 1u);
  EXPECT_EQ(s.upstream_cookie, 2u);
  EXPECT_EQ(s.client_consumed, 3u);
  EXPECT_EQ(s.upstream_consumed, 4u);
  EXPECT_EQ(s.client_written, 13u);
  EXPECT_EQ(s.upstream_written, 6u);
  EXPECT_EQ(s.short_circuited, 7u);
  // Version 2 has no upstream -> client figure: it rides in the client
  // socket's written baseline (5 + 8), which the FIN rule reads the same.
  EXPECT_EQ(s.short_circuited_down, 0u);
  EXPECT_TRUE(s.client_fin_forwarded);
  EXPECT_FALSE(s.upstream_fin_forwarded);
  EXPECT_TRUE(s.boosted);
}

TEST(TakeoverTransfer, DamagedBytesAreRefused) {
  const std::string bytes = encode(sample(), kV2);
  EXPECT_FALSE(decode_connection(bytes.substr(0, bytes.size() - 1), kV2));
  EXPECT_FALSE(decode_connection(bytes + "x", kV2));
  EXPECT_FALSE(decode_connection("", kV2));
  TransferredConnection no_request = sample();
  no_request.basis.last_request.reset();
  no_request.basis.sni.reset();
  const auto back = decode_connection(encode(no_request, kV2), kV2);
  ASSERT_TRUE(back);
  EXPECT_FALSE(back->basis.sni);
  EXPECT_FALSE(back->basis.last_request);
}

// Version 3: a TLS connection waiting for its ClientHello carries the bytes
// read so far (binary, NULs included) and its kind; version 2 knows
// neither, and the two layouts are not each other's.
TEST(TakeoverTransfer, Version3CarriesAPendingHello) {
  TransferredConnection t = sample();
  t.kind = PairKind::tls_hello;
  t.basis.inspect = policy::Inspect::tls;
  t.pending = std::string("\x16\x03\x01\x00\x05\0hel", 9);
  const auto back = decode_connection(encode(t, kV3), kV3);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->kind, PairKind::tls_hello);
  EXPECT_EQ(back->pending, t.pending);
  EXPECT_EQ(back->src, t.src);
  // A version 2 peer never receives one, and could not read it.
  EXPECT_FALSE(decode_connection(encode(t, kV3), kV2));
  EXPECT_FALSE(decode_connection(encode(t, kV2), kV2));  // tls_hello is no version 2 kind
  t.kind = PairKind::http_first;
  t.basis.inspect = policy::Inspect::http;
  t.pending = "GET /api/x HT";
  const auto http = decode_connection(encode(t, kV3), kV3);
  ASSERT_TRUE(http);
  EXPECT_EQ(http->kind, PairKind::http_first);
  EXPECT_EQ(http->pending, "GET /api/x HT");
  // Version 3 without pending bytes is still one field longer than version 2.
  const TransferredConnection plain = sample();
  EXPECT_EQ(encode(plain, kV3).size(), encode(plain, kV2).size() + 4);
  EXPECT_FALSE(decode_connection(encode(plain, kV2), kV3));
  const std::string bytes = encode(t, kV3);
  EXPECT_FALSE(decode_connection(bytes.substr(0, bytes.size() - 1), kV3));
}

// Version 4 carries the upstream -> client short-circuit figure as its own
// field (and the client's written baseline as it was); a version 3 peer
// could not read it.
TEST(TakeoverTransfer, Version4CarriesTheDownShortCircuit) {
  const TransferredConnection t = sample();
  const auto back = decode_connection(encode(t, kV4), kV4);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->state.short_circuited, 7u);
  EXPECT_EQ(back->state.short_circuited_down, 8u);
  EXPECT_EQ(back->state.client_written, 5u);
  EXPECT_TRUE(back->state.boosted);
  EXPECT_EQ(encode(t, kV4).size(), encode(t, kV3).size() + 8);
  EXPECT_FALSE(decode_connection(encode(t, kV4), kV3));
  EXPECT_FALSE(decode_connection(encode(t, kV3), kV4));
}

// A copy or splice pair's closed directions ride in its FIN flags.
TEST(TakeoverTransfer, HalfClosedUserspacePair) {
  TransferredConnection t = sample();
  t.kind = PairKind::userspace;
  t.state = SplicedPairState{};
  t.state.client_cookie = 11;
  t.state.upstream_cookie = 12;
  t.state.client_fin_forwarded = true;
  const auto back = decode_connection(encode(t, kV3), kV3);
  ASSERT_TRUE(back);
  EXPECT_TRUE(back->state.client_fin_forwarded);
  EXPECT_FALSE(back->state.upstream_fin_forwarded);
  EXPECT_EQ(back->state.upstream_cookie, 12u);
}

}  // namespace
}  // namespace shunt::proxy

// The first flight of a TLS client as the TLS inspector reads it
// (proxy/inspect/tls_inspector.cpp): fed to ClientHelloReader, and the SNI it
// finds decided under a fixed policy (fuzz_common.h).
//
// OpenSSL is not instrumented in this build, so coverage guides the fuzzer
// only through shunt's side (the callback and the server_name walk); the
// seeds (real ClientHellos from fuzz/make_seeds.py) carry the structure.
//
// Each input is used twice:
//  - as the client's first flight. Checked besides memory and UB errors: the
//    same bytes fed whole and in the pieces read_sizes() picks end in the
//    same state with the same SNI (a ClientHello spans TCP segments and TLS
//    records as the client likes);
//  - as the body of the server_name extension of an otherwise valid
//    ClientHello. OpenSSL hands that body over unparsed and shunt's own
//    walk (host_name_of) reads it, so this reaches that code with any bytes
//    at all, which mutating whole hellos through uninstrumented OpenSSL
//    rarely does. The hello must be read, and an SNI found must be bytes of
//    the body.
#include "fuzz/fuzz_common.h"
#include "proxy/inspect/client_hello.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace {

using shunt::proxy::tls::ClientHelloReader;

// limits.max_header_bytes by default.
constexpr std::size_t kMaxHello = 65'536;

const char* name(ClientHelloReader::State s) {
  switch (s) {
    case ClientHelloReader::State::need_more:
      return "need_more";
    case ClientHelloReader::State::done:
      return "done";
    case ClientHelloReader::State::not_tls:
      return "not_tls";
    case ClientHelloReader::State::too_large:
      return "too_large";
  }
  return "?";
}

void put16(std::string& out, std::size_t n) {
  out += static_cast<char>((n >> 8) & 0xff);
  out += static_cast<char>(n & 0xff);
}

void put24(std::string& out, std::size_t n) {
  out += static_cast<char>((n >> 16) & 0xff);
  put16(out, n);
}

// A minimal TLS 1.2 ClientHello in one record whose only extension is
// server_name with `body`. Empty when it would not fit a record.
std::string hello_with_server_name(std::string_view body) {
  std::string ext;
  put16(ext, 0);  // server_name
  put16(ext, body.size());
  ext += body;

  std::string hello;
  hello += "\x03\x03";                          // client_version TLS 1.2
  hello += std::string(32, '\x5a');             // random
  hello += '\x00';                              // session_id
  hello += std::string("\x00\x02\xc0\x2f", 4);  // one cipher suite
  hello += std::string("\x01\x00", 2);          // compression: null
  put16(hello, ext.size());
  hello += ext;

  std::string handshake;
  handshake += '\x01';  // client_hello
  put24(handshake, hello.size());
  handshake += hello;
  if (handshake.size() > 16'384) return {};

  std::string record("\x16\x03\x01", 3);
  put16(record, handshake.size());
  return record + handshake;
}

void check_server_name_walk(std::string_view body) {
  const std::string hello = hello_with_server_name(body);
  if (hello.empty()) return;
  ClientHelloReader reader(kMaxHello);
  reader.feed(hello.data(), hello.size());
  // A body that is not one well-formed host_name entry is refused whole
  // (not_tls): servers disagree on which name such a list names.
  SHUNT_FUZZ_CHECK(
      reader.state() == ClientHelloReader::State::done || reader.state() == ClientHelloReader::State::not_tls,
      "hello read as %s", name(reader.state()));
  if (reader.state() == ClientHelloReader::State::done) {
    SHUNT_FUZZ_CHECK(
        reader.sni() && body.size() == reader.sni()->size() + 5 && body.substr(5) == *reader.sni(),
        "sni '%s' is not the extension's one name", reader.sni().value_or("<none>").c_str());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > kMaxHello) return 0;  // too_large whole, and maybe done in pieces: not comparable
  const char* bytes = reinterpret_cast<const char*>(data);
  check_server_name_walk(std::string_view(bytes, size));

  ClientHelloReader whole(kMaxHello);
  whole.feed(bytes, size);

  ClientHelloReader pieces(kMaxHello);
  std::size_t at = 0;
  for (const std::size_t n : shunt::fuzz::read_sizes(data, size)) {
    // The inspector stops reading once the state is final.
    if (pieces.state() != ClientHelloReader::State::need_more) break;
    pieces.feed(bytes + at, n);
    at += n;
  }

  SHUNT_FUZZ_CHECK(whole.state() == pieces.state(), "whole: %s, in pieces: %s", name(whole.state()),
                   name(pieces.state()));
  SHUNT_FUZZ_CHECK(whole.sni() == pieces.sni(), "sni whole '%s', in pieces '%s'",
                   whole.sni().value_or("<none>").c_str(), pieces.sni().value_or("<none>").c_str());
  SHUNT_FUZZ_CHECK(whole.state() == ClientHelloReader::State::done || !whole.sni(), "sni set in state %s",
                   name(whole.state()));

  if (whole.state() == ClientHelloReader::State::done) {
    const std::string sni = whole.sni().value_or(std::string());
    const shunt::policy::Decision d =
        shunt::fuzz::fixed_policy().decide_tls(shunt::fuzz::web_to_api(443), sni);
    SHUNT_FUZZ_CHECK(d.verdict == shunt::policy::Verdict::deny || d.rule == "web-to-api-tls",
                     "sni '%s' allowed by '%s'", sni.c_str(), d.rule.c_str());
  }
  return 0;
}

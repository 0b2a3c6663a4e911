// ClientHelloReader: real ClientHellos made by an OpenSSL client over a
// memory BIO, fed whole, byte by byte, and record-fragmented; without SNI;
// non-TLS input; the size bound.
#include "proxy/inspect/client_hello.h"
#include "tests/unit/proxy_fakes.h"

#include <gtest/gtest.h>

#include <string>

namespace shunt::proxy::tls {
namespace {

using shunt::proxy::testing::client_hello;

TEST(ClientHelloReader, WholeHello) {
  const std::string hello = client_hello("api.example.com");
  ASSERT_GT(hello.size(), 100u);
  ClientHelloReader reader(65536);
  EXPECT_EQ(reader.feed(hello.data(), hello.size()), ClientHelloReader::State::done);
  ASSERT_TRUE(reader.sni().has_value());
  EXPECT_EQ(*reader.sni(), "api.example.com");
}

TEST(ClientHelloReader, ByteByByte) {
  const std::string hello = client_hello("split.example.org");
  ClientHelloReader reader(65536);
  for (std::size_t i = 0; i + 1 < hello.size(); ++i) {
    ASSERT_EQ(reader.feed(hello.data() + i, 1), ClientHelloReader::State::need_more) << "at byte " << i;
  }
  EXPECT_EQ(reader.feed(hello.data() + hello.size() - 1, 1), ClientHelloReader::State::done);
  EXPECT_EQ(reader.sni().value_or(""), "split.example.org");
}

TEST(ClientHelloReader, HelloAcrossSeveralRecords) {
  const std::string hello = client_hello("records.example.net", 512);
  // More than one record: the first one ends before the hello does.
  ASSERT_GT(hello.size(), 5u);
  const std::size_t first_record =
      5 + ((static_cast<unsigned char>(hello[3]) << 8) | static_cast<unsigned char>(hello[4]));
  ASSERT_LT(first_record, hello.size());
  EXPECT_EQ(hello[first_record], '\x16');
  ClientHelloReader reader(65536);
  ClientHelloReader::State state = ClientHelloReader::State::need_more;
  for (std::size_t i = 0; i < hello.size(); i += 100) {
    state = reader.feed(hello.data() + i, std::min<std::size_t>(100, hello.size() - i));
  }
  EXPECT_EQ(state, ClientHelloReader::State::done);
  EXPECT_EQ(reader.sni().value_or(""), "records.example.net");
}

TEST(ClientHelloReader, NoServerName) {
  const std::string hello = client_hello(nullptr);
  ClientHelloReader reader(65536);
  EXPECT_EQ(reader.feed(hello.data(), hello.size()), ClientHelloReader::State::done);
  EXPECT_FALSE(reader.sni().has_value());
}

// A real hello whose server_name list (25 bytes for a 20-byte name) is
// overwritten with `list`, same length: servers disagree on such lists, so
// none of them is decided on.
TEST(ClientHelloReader, ServerNameOtherThanOneHostNameIsRefused) {
  const std::string name = "api0123.example.com.";
  ASSERT_EQ(name.size(), 20u);
  const std::string hello = client_hello(name.c_str());
  const std::size_t at = hello.find(name);
  ASSERT_NE(at, std::string::npos);
  ASSERT_EQ(hello.substr(at - 5, 5), std::string("\x00\x17\x00\x00\x14", 5));
  {
    ClientHelloReader reader(65536);
    EXPECT_EQ(reader.feed(hello.data(), hello.size()), ClientHelloReader::State::done);
    EXPECT_EQ(reader.sni().value_or(""), name);  // one trailing dot is a host name (policy drops it)
  }
  const std::string bad[] = {
      // two host_name entries: OpenSSL and Go refuse, other servers pick one
      std::string("\x00\x17\x00\x00\x0b"
                  "api.example"
                  "\x00\x00\x06"
                  "admin.",
                  25),
      // another type first, then a host name
      std::string("\x00\x17\x01\x00\x03"
                  "xyz"
                  "\x00\x00\x0e"
                  "admin.example.",
                  25),
      // a NUL, a space, a slash, an empty label, a leading dot
      std::string("\x00\x17\x00\x00\x14"
                  "api.example.com\0evil",
                  25),
      std::string("\x00\x17\x00\x00\x14"
                  "api.example.com evil",
                  25),
      std::string("\x00\x17\x00\x00\x14"
                  "api.example.com/evil",
                  25),
      std::string("\x00\x17\x00\x00\x14"
                  "api..example.com.xyz",
                  25),
      std::string("\x00\x17\x00\x00\x14"
                  ".api.example.com.xyz",
                  25),
      // an entry shorter than the list: the rest is junk another reader may take
      std::string("\x00\x17\x00\x00\x0b"
                  "api.example"
                  "\xff\xff\xff\xff\xff\xff\xff\xff\xff",
                  25),
  };
  for (const std::string& list : bad) {
    std::string patched = hello;
    patched.replace(at - 5, 25, list);
    ClientHelloReader reader(65536);
    EXPECT_EQ(reader.feed(patched.data(), patched.size()), ClientHelloReader::State::not_tls)
        << ::testing::PrintToString(list);
    EXPECT_FALSE(reader.sni().has_value());
  }
}

TEST(ClientHelloReader, NotTls) {
  ClientHelloReader reader(65536);
  const std::string http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  EXPECT_EQ(reader.feed(http.data(), http.size()), ClientHelloReader::State::not_tls);
}

TEST(ClientHelloReader, TooLarge) {
  const std::string hello = client_hello("big.example.com");
  ClientHelloReader reader(hello.size() - 1);
  EXPECT_EQ(reader.feed(hello.data(), hello.size()), ClientHelloReader::State::too_large);
}

TEST(ClientHelloReader, ReadersAreIndependent) {
  const std::string a = client_hello("a.example"), b = client_hello("b.example");
  ClientHelloReader ra(65536), rb(65536);
  ra.feed(a.data(), 10);
  rb.feed(b.data(), b.size());
  ra.feed(a.data() + 10, a.size() - 10);
  EXPECT_EQ(ra.sni().value_or(""), "a.example");
  EXPECT_EQ(rb.sni().value_or(""), "b.example");
}

}  // namespace
}  // namespace shunt::proxy::tls

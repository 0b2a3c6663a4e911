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

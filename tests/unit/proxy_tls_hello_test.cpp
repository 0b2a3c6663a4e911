// ClientHelloReader: real ClientHellos made by an OpenSSL client over a
// memory BIO, fed whole, byte by byte, and record-fragmented; without SNI;
// non-TLS input; the size bound.
#include "proxy/inspect/client_hello.h"

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/ssl.h>

#include <string>

namespace shunt::proxy::tls {
namespace {

// The first flight of a TLS client, as bytes. `max_fragment` > 0 makes the
// client split its records (a ClientHello spanning several TLS records).
std::string client_hello(const char* sni, unsigned max_fragment = 0) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  SSL* ssl = SSL_new(ctx);
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, in, out);
  if (sni) SSL_set_tlsext_host_name(ssl, sni);
  if (max_fragment) {
    // A long ALPN list makes the hello larger than one record may carry.
    std::string alpn;
    for (int i = 0; i < 60; ++i) {
      const std::string proto = "protocol-number-" + std::to_string(i);
      alpn += static_cast<char>(proto.size());
      alpn += proto;
    }
    SSL_set_alpn_protos(ssl, reinterpret_cast<const unsigned char*>(alpn.data()),
                        static_cast<unsigned>(alpn.size()));
    SSL_set_max_send_fragment(ssl, max_fragment);
  }
  SSL_connect(ssl);  // WANT_READ: the hello is in `out`
  std::string bytes;
  char buf[4096];
  int n;
  while ((n = BIO_read(out, buf, sizeof(buf))) > 0) bytes.append(buf, static_cast<std::size_t>(n));
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  return bytes;
}

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

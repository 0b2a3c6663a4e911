// The canonical request model (policy/canonical.h): table tests for paths,
// hosts and whole request targets, including every bypass class of issue 9
// that the model must close, and the idempotence the fuzz target relies on.
#include "policy/canonical.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace shunt::policy::canonical {
namespace {

Options with(config::EncodedSlash slash, config::InvalidEscape invalid = config::InvalidEscape::reject) {
  Options o;
  o.encoded_slash = slash;
  o.invalid_escape = invalid;
  return o;
}

void expect_path(std::string_view raw, std::string_view want, const Options& o = {}) {
  const Path p = path(raw, o);
  EXPECT_TRUE(p.error.empty()) << raw << ": " << p.error;
  EXPECT_EQ(p.value, want) << raw;
  // Idempotent: the canonical form is its own canonical form.
  const Path again = path(p.value, o);
  EXPECT_TRUE(again.error.empty()) << p.value;
  EXPECT_EQ(again.value, p.value);
}

void expect_path_error(std::string_view raw, const Options& o = {}) {
  EXPECT_FALSE(path(raw, o).error.empty()) << raw << " gave " << path(raw, o).value;
}

TEST(CanonicalPath, UnreservedEscapesAreDecoded) {
  expect_path("/api/%61dmin", "/api/admin");
  expect_path("/api/%41DMIN", "/api/ADMIN");
  expect_path("/api/admi%6E", "/api/admin");
  expect_path("/%7Euser/%2d%2E%5f", "/~user/-._");
}

TEST(CanonicalPath, OtherEscapesAreKeptUpperCase) {
  expect_path("/a%3fb", "/a%3Fb");
  expect_path("/a%20b", "/a%20b");
  expect_path("/a%25b", "/a%25b");  // never decoded twice
  expect_path("/%c3%a9", "/%C3%A9");
}

TEST(CanonicalPath, LiteralsThatMayNotAppearAreEncoded) {
  expect_path("/a|b", "/a%7Cb");
  expect_path("/\xc3\xa9", "/%C3%A9");
  expect_path("/a;b=c,d:e@f!$&'()*+", "/a;b=c,d:e@f!$&'()*+");
}

TEST(CanonicalPath, DotSegmentsAndSlashes) {
  expect_path("/api/../admin", "/admin");
  expect_path("/api/%2e%2e/admin", "/admin");
  expect_path("/api/%2E./admin", "/admin");
  expect_path("/api/.%2e/admin", "/admin");
  expect_path("/api//admin", "/api/admin");
  expect_path("/api/./admin", "/api/admin");
  expect_path("/../../etc", "/etc");
  expect_path("/api/secret/.", "/api/secret/");
  expect_path("/api/secret/", "/api/secret/");
  expect_path("/api/x/..", "/api/");
  expect_path("/", "/");
  expect_path("//", "/");
  expect_path("/.", "/");
}

TEST(CanonicalPath, EncodedSlashesPerOption) {
  for (const char* raw : {"/api%2Fadmin", "/api%2fadmin", "/api%5Cadmin", "/api\\admin"}) {
    expect_path_error(raw);
  }
  const Options keep = with(config::EncodedSlash::keep);
  expect_path("/api%2fadmin", "/api%2Fadmin", keep);
  expect_path("/api\\admin", "/api%5Cadmin", keep);
  // Kept encoded, so not a separator: "..%2F" is one segment.
  expect_path("/a/..%2Fb", "/a/..%2Fb", keep);
  const Options decode = with(config::EncodedSlash::decode);
  expect_path("/api%2Fadmin", "/api/admin", decode);
  expect_path("/api%5cadmin", "/api/admin", decode);
  expect_path("/api\\..\\admin", "/admin", decode);
  expect_path("/x/%2e%2e%2fadmin", "/admin", decode);
}

TEST(CanonicalPath, NulAndInvalidEscapesPerOption) {
  for (const char* raw : {"/a%00", "/a%", "/a%4", "/a%zz", "/a%%41"}) expect_path_error(raw);
  const Options keep = with(config::EncodedSlash::reject, config::InvalidEscape::keep);
  expect_path("/a%00b", "/a%00b", keep);
  expect_path("/a%zz", "/a%25zz", keep);
  expect_path("/a%", "/a%25", keep);
  expect_path("/a%%41", "/a%25A", keep);
}

TEST(CanonicalPath, ControlsSpacesAndServletDotSegments) {
  for (const std::string& raw :
       {std::string("/a b"), std::string("/a\tb"), std::string("/a\x7f"), std::string("/a\0b", 4),
        std::string("/a?b"), std::string("/a#b"), std::string("a"), std::string(""),
        std::string("/api/..;/admin"), std::string("/api/.;x/admin")}) {
    expect_path_error(raw);
  }
}

TEST(CanonicalHost, NormalisedForms) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"admin.local", "admin.local"},  {"Admin.LOCAL", "admin.local"},
      {"admin.local.", "admin.local"}, {"admin.local:80", "admin.local"},
      {"[::1]:8080", "[::1]"},         {"[FD00::1]", "[fd00::1]"},
      {"10.0.0.1:443", "10.0.0.1"},    {"under_score.local", "under_score.local"}};
  for (const auto& [raw, name] : cases) {
    const Host h = host(raw);
    EXPECT_TRUE(h.error.empty()) << raw << ": " << h.error;
    EXPECT_EQ(h.name, name) << raw;
    const Host again = host(h.authority());
    EXPECT_EQ(again.authority(), h.authority()) << raw;
  }
  EXPECT_EQ(host("Admin.Local.:8080").authority(), "admin.local:8080");
}

TEST(CanonicalHost, Rejected) {
  for (
      const char* raw :
      {"",     "admin.local..", "admin.local..:80", "admin local", "admin.local ", "a..b", ".a",      ".",
       "a/b",  "a@b",           "user@a",           "a%2eb",       "a:",           "a:x",  "a:99999", "a:1:2",
       "[::1", "[zz]",          "[::1]x",           "[]",          "a\\b",         "*"}) {
    EXPECT_FALSE(host(raw).error.empty()) << raw;
  }
}

TEST(CanonicalRequest, OriginForm) {
  const Request r = request("GET", "/api/%61dmin?x=%61#frag", "Api.Local.:8080", {});
  ASSERT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(r.form, Form::origin);
  EXPECT_EQ(r.target, "/api/admin?x=%61");  // query kept as sent, fragment dropped
  EXPECT_EQ(r.path, "/api/admin");
  EXPECT_EQ(r.host, "api.local");
  EXPECT_EQ(r.authority, "api.local:8080");
  EXPECT_EQ(request("GET", "/x", std::nullopt, {}).host, "");
}

TEST(CanonicalRequest, AbsoluteFormAuthorityIsTheHost) {
  Request r = request("GET", "HTTP://Admin.Local/api/x", "admin.local", {});
  ASSERT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(r.form, Form::absolute);
  EXPECT_EQ(r.target, "http://admin.local/api/x");
  EXPECT_EQ(r.host, "admin.local");
  EXPECT_EQ(r.path, "/api/x");
  r = request("GET", "http://admin.local:8080?q", "admin.local:8080", {});
  ASSERT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(r.target, "http://admin.local:8080/?q");
  // The Host header naming another host is refused, not overridden.
  EXPECT_FALSE(request("GET", "http://admin.local/api/x", "api.local", {}).error.empty());
  EXPECT_FALSE(request("GET", "http://admin.local:1/x", "admin.local:2", {}).error.empty());
  EXPECT_TRUE(request("GET", "http://admin.local/x", std::nullopt, {}).error.empty());
  for (const char* bad :
       {"http://user@admin.local/", "ftp://a/", "http:///x", "admin.local/x", "http://a b/"}) {
    EXPECT_FALSE(request("GET", bad, "a", {}).error.empty()) << bad;
  }
}

TEST(CanonicalRequest, ConnectAndAsterisk) {
  Request r = request("CONNECT", "Admin.Local:443", "api.local:443", {});
  EXPECT_FALSE(r.error.empty());
  r = request("CONNECT", "Admin.Local:443", "admin.local:443", {});
  ASSERT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(r.form, Form::authority);
  EXPECT_EQ(r.target, "admin.local:443");
  EXPECT_EQ(r.host, "admin.local");
  EXPECT_EQ(r.path, "");
  for (const char* bad : {"admin.local", "/x", "http://a:1/", "a:1/x"}) {
    EXPECT_FALSE(request("CONNECT", bad, std::nullopt, {}).error.empty()) << bad;
  }
  EXPECT_TRUE(request("OPTIONS", "*", "a", {}).error.empty());
  EXPECT_FALSE(request("GET", "*", "a", {}).error.empty());
}

TEST(CanonicalRequest, TargetIsStable) {
  for (const char* raw : {"/a/%2e%2e/b?q=%2e", "http://H./x//y/./z", "/~%7e/%C3%a9", "/"}) {
    const Request r = request("GET", raw, "h", {});
    ASSERT_TRUE(r.error.empty()) << raw;
    const Request again = request("GET", r.target, r.authority, {});
    ASSERT_TRUE(again.error.empty()) << r.target;
    EXPECT_EQ(again.target, r.target);
    EXPECT_EQ(again.host, r.host);
  }
}

TEST(CanonicalOws, Trim) {
  EXPECT_EQ(trim_ows(" \tadmin.local \t"), "admin.local");
  EXPECT_EQ(trim_ows("a b"), "a b");
  EXPECT_EQ(trim_ows(" \t "), "");
}

}  // namespace
}  // namespace shunt::policy::canonical

namespace shunt::policy::canonical {
namespace {

// A cheap property check until the fuzz targets run: random targets over
// the characters that matter, in every option mode; every success is a
// fixed point and contains no dot-segment, no "//", no decodable escape.
TEST(CanonicalPath, RandomTargetsAreFixedPoints) {
  static constexpr std::string_view kAlphabet = "/./.%%2e2E2f2F5c5C00614a7e;?#\\a ~:@\x80";
  std::uint64_t seed = 42;
  const auto next = [&] {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<std::size_t>(seed >> 33);
  };
  int ok = 0;
  for (const auto slash :
       {config::EncodedSlash::reject, config::EncodedSlash::keep, config::EncodedSlash::decode}) {
    for (const auto invalid : {config::InvalidEscape::reject, config::InvalidEscape::keep}) {
      const Options o = with(slash, invalid);
      for (int n = 0; n < 20000; ++n) {
        std::string raw = "/";
        const std::size_t len = next() % 16;
        for (std::size_t i = 0; i < len; ++i) raw += kAlphabet[next() % kAlphabet.size()];
        const Request r = request("GET", raw, "h", o);
        if (!r.error.empty()) continue;
        ++ok;
        const Request again = request("GET", r.target, r.authority, o);
        ASSERT_TRUE(again.error.empty()) << raw << " -> " << r.target << ": " << again.error;
        ASSERT_EQ(again.target, r.target) << raw;
        EXPECT_EQ(r.path.find("//"), std::string::npos) << raw;
        EXPECT_EQ(r.path.find("/./"), std::string::npos) << raw;
        EXPECT_EQ(r.path.find("/../"), std::string::npos) << raw;
        EXPECT_EQ(r.path.find("%2E"), std::string::npos) << raw;
      }
    }
  }
  EXPECT_GT(ok, 10000);
}

}  // namespace
}  // namespace shunt::policy::canonical

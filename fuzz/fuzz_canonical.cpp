// The canonical request model (policy/canonical.h, docs/policy.md) on its
// own, as a differential: canonicalising the canonical form again must
// change nothing. That is what lets the inspector match the form it has
// canonicalised and forward it, the upstream read that same form, and
// `shunt check`/`shunt explain` normalise config entries and typed requests
// the same way.
//
// Input: one byte of options (proxy.http.encoded_slash: reject, keep,
// decode; invalid_escape: reject, keep), then "METHOD\nTARGET\nHOST" (no
// second '\n': no Host header; no '\n' at all: GET with the rest as target,
// no Host). Checked, besides memory and UB errors:
//  - trim_ows, path, host and request are idempotent on success, and a
//    canonical path has no empty, "." or ".." segment;
//  - a request read again as the upstream gets it (canonical target, Host
//    set to the canonical authority) is the same request;
//  - the matcher decides a request as typed and its canonical form alike
//    (policy.h: the proxy passes the canonical form, `shunt explain` the
//    raw one), and a request that does not canonicalise is denied.
#include "fuzz/fuzz_common.h"
#include "policy/canonical.h"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace {

namespace canonical = shunt::policy::canonical;
using shunt::config::EncodedSlash;
using shunt::config::HttpSettings;
using shunt::config::InvalidEscape;

std::string printable(std::string_view s) {
  std::string out;
  for (const char c : s) {
    const auto b = static_cast<unsigned char>(c);
    if (b >= 0x20 && b < 0x7f) {
      out += c;
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[b >> 4];
      out += kHex[b & 0xf];
    }
  }
  return out;
}

#define P(s) printable(s).c_str()

void check_path(std::string_view raw, const HttpSettings& options) {
  // path()'s domain: the path component of an origin-form target.
  if (raw.empty() || raw.front() != '/' || raw.find_first_of("?#") != std::string_view::npos) return;
  const canonical::Path p = canonical::path(raw, options);
  if (!p.error.empty()) return;
  SHUNT_FUZZ_CHECK(!p.value.empty() && p.value.front() == '/', "path '%s' -> '%s'", P(raw), P(p.value));
  const canonical::Path again = canonical::path(p.value, options);
  SHUNT_FUZZ_CHECK(again.error.empty() && again.value == p.value, "path '%s' -> '%s' -> '%s' (%.*s)", P(raw),
                   P(p.value), P(again.value), static_cast<int>(again.error.size()), again.error.data());
  // Every segment but a trailing empty one is a real name.
  std::string_view rest = std::string_view(p.value).substr(1);
  while (!rest.empty()) {
    const std::size_t slash = rest.find('/');
    const std::string_view seg = rest.substr(0, slash);
    SHUNT_FUZZ_CHECK(!seg.empty() && seg != "." && seg != "..", "path '%s' -> '%s' keeps segment '%s'",
                     P(raw), P(p.value), P(seg));
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);
  }
}

void check_host(std::string_view raw) {
  const canonical::Host h = canonical::host(raw);
  if (!h.error.empty()) return;
  for (const char c : h.name)
    SHUNT_FUZZ_CHECK(!(c >= 'A' && c <= 'Z'), "host '%s' -> '%s'", P(raw), P(h.name));
  const canonical::Host again = canonical::host(h.authority());
  SHUNT_FUZZ_CHECK(again.error.empty() && again.name == h.name && again.port == h.port,
                   "host '%s' -> '%s' -> '%s'", P(raw), P(h.authority()), P(again.authority()));
}

std::optional<std::string_view> header(std::string_view authority) {
  if (authority.empty()) return std::nullopt;
  return authority;
}

void check_request(std::string_view method, std::string_view target, std::optional<std::string_view> host,
                   const HttpSettings& options) {
  const canonical::Request r = canonical::request(method, target, host, options);
  if (!r.error.empty()) return;
  // What the upstream receives: the canonical target, Host: the authority.
  const canonical::Request again = canonical::request(method, r.target, header(r.authority), options);
  SHUNT_FUZZ_CHECK(again.error.empty() && again.form == r.form && again.target == r.target &&
                       again.path == r.path && again.host == r.host && again.authority == r.authority,
                   "%s '%s' host '%s' -> '%s' host '%s' path '%s' -> '%s' host '%s' path '%s' (%.*s)",
                   P(method), P(target), host ? P(*host) : "<none>", P(r.target), P(r.authority), P(r.path),
                   P(again.target), P(again.authority), P(again.path), static_cast<int>(again.error.size()),
                   again.error.data());
}

// Under the fixed policy with these options (or the defaults'): a request
// as typed and its canonical form decide alike.
// The fixed policy whose proxy.http settings are `options` (the defaults'
// when none is).
const shunt::policy::Policy& policy_for(const HttpSettings& options) {
  for (std::size_t v = 0; v < shunt::fuzz::kPolicyVariants; ++v) {
    const HttpSettings& s = shunt::fuzz::fixed_policy(v).config().proxy.http;
    if (s.encoded_slash == options.encoded_slash && s.invalid_escape == options.invalid_escape) {
      return shunt::fuzz::fixed_policy(v);
    }
  }
  return shunt::fuzz::fixed_policy();
}

void check_matcher(std::string_view method, std::string_view target, std::optional<std::string_view> host,
                   const HttpSettings& options) {
  const shunt::policy::Policy& policy = policy_for(options);
  const shunt::policy::Flow flow = shunt::fuzz::web_to_api(80);
  const shunt::policy::HttpRequest raw{method, target, host.value_or(""), {}};
  const shunt::policy::Decision typed = policy.decide_http(flow, raw);
  const canonical::Request r = canonical::request(method, target, host, policy.config().proxy.http);
  if (!r.error.empty()) {
    SHUNT_FUZZ_CHECK(typed.verdict == shunt::policy::Verdict::deny,
                     "'%s' is malformed (%.*s) yet allowed by '%s'", P(target),
                     static_cast<int>(r.error.size()), r.error.data(), typed.rule.c_str());
    return;
  }
  const shunt::policy::HttpRequest canon{method, r.target, r.authority, {}};
  const shunt::policy::Decision d = policy.decide_http(flow, canon);
  SHUNT_FUZZ_CHECK(d.verdict == typed.verdict && d.rule == typed.rule,
                   "%s '%s' host '%s': %s by '%s'; as '%s' host '%s': %s by '%s'", P(method), P(target),
                   host ? P(*host) : "<none>", std::string(to_string(typed.verdict)).c_str(),
                   typed.rule.c_str(), P(r.target), P(r.authority), std::string(to_string(d.verdict)).c_str(),
                   d.rule.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  HttpSettings options;
  static constexpr EncodedSlash kSlash[] = {EncodedSlash::reject, EncodedSlash::keep, EncodedSlash::decode};
  options.encoded_slash = kSlash[(data[0] & 3) % 3];
  options.invalid_escape = (data[0] & 4) != 0 ? InvalidEscape::keep : InvalidEscape::reject;
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);

  std::string_view method = "GET";
  std::string_view target = input;
  std::optional<std::string_view> host;
  if (const std::size_t nl = input.find('\n'); nl != std::string_view::npos) {
    method = input.substr(0, nl);
    target = input.substr(nl + 1);
    if (const std::size_t nl2 = target.find('\n'); nl2 != std::string_view::npos) {
      host = target.substr(nl2 + 1);
      target = target.substr(0, nl2);
    }
  }
  // The parser hands over a Host value without surrounding whitespace, and
  // an empty one as no Host at all (HttpRequest::host).
  if (host) host = canonical::trim_ows(*host);
  if (host && host->empty()) host.reset();

  const std::string_view trimmed = canonical::trim_ows(input);
  SHUNT_FUZZ_CHECK(canonical::trim_ows(trimmed) == trimmed, "trim_ows is not idempotent on '%s'", P(input));
  check_path(target, options);
  if (host) check_host(*host);
  check_host(target);
  check_request(method, target, host, options);
  check_matcher(method, target, host, options);
  return 0;
}

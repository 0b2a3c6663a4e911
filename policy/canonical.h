// The canonical request model (docs/policy.md): the one reading of a request
// target, host and header value that shunt matches policy against and
// forwards. Pure functions, no state, no I/O; the HTTP inspector, the policy
// matcher, `shunt check` (config entries) and `shunt explain` all call them,
// so a request and a rule entry are normalised the same way.
//
// Every result carries `error`: empty on success, otherwise a short static
// reason (fit for a debug log and a 400), and then the other fields are
// unspecified. Canonicalisation is idempotent: feeding a successful result
// back in returns it unchanged (the fuzz target checks that).
#pragma once

#include "config/config.h"

#include <optional>
#include <string>
#include <string_view>

namespace shunt::policy::canonical {

// Only encoded_slash and invalid_escape are read.
using Options = config::HttpSettings;

// Surrounding SP/HTAB removed (RFC 9110 §5.5: OWS is not part of a field value).
std::string_view trim_ows(std::string_view value);

struct Path {
  std::string value;
  std::string_view error;
};
// `raw` is the path component of an origin-form target: starts with '/',
// no query, no fragment. Percent-escapes of unreserved characters are
// decoded, other escapes upper-cased, bytes that may not appear literally in
// a path (non-ASCII, "<>^`{|}) percent-encoded, %2F/%5C/'\' and %00/invalid
// escapes handled per `options`, then dot-segments resolved and runs of '/'
// collapsed (RFC 3986 §6.2.2). Control characters and spaces are errors.
Path path(std::string_view raw, const Options& options);

struct Host {
  std::string name;  // lower-case, one trailing dot removed; "[v6]" kept bracketed
  std::string port;  // digits as sent, empty when absent
  std::string_view error;
  // name[:port]: the value shunt forwards as Host.
  [[nodiscard]] std::string authority() const { return port.empty() ? name : name + ":" + port; }
};
// A Host header value (already OWS-trimmed) or the authority of a target:
// reg-name letters, digits, '-', '.', '_' or a bracketed IPv6 literal, an
// optional port. No userinfo, no percent-escapes, no empty labels.
Host host(std::string_view raw);

enum class Form { origin, absolute, authority, asterisk };

struct Request {
  Form form = Form::origin;
  std::string target;     // canonical request-target: what the upstream receives
  std::string path;       // for matching: canonical path; "*" (asterisk-form); "" (CONNECT)
  std::string host;       // for matching: host name without port; "" when the request names none
  std::string authority;  // what the upstream receives as Host; "" when none
  std::string_view error;
};
// The whole request model from the request line and the Host header
// (nullopt when absent). The authority of an absolute-form target or a
// CONNECT target is the host; a Host header that names another host is an
// error. The query is kept as sent (validated, never decoded), a fragment
// is dropped.
Request request(std::string_view method, std::string_view target, std::optional<std::string_view> host_header,
                const Options& options);

}  // namespace shunt::policy::canonical

// The canonical request model; see canonical.h and docs/policy.md.
//
// Hazard: every rule here is there because some upstream (nginx, Python's
// http.server, Tomcat, IIS) reads the raw form differently from a naive
// prefix match. Loosening one reopens a bypass; the unit tests and
// tests/integration/test_http_bypass.py hold the cases.
#include "policy/canonical.h"

#include <algorithm>
#include <vector>

namespace shunt::policy::canonical {
namespace {

constexpr char kHex[] = "0123456789ABCDEF";

bool is_alpha(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

// RFC 3986 §2.3.
bool is_unreserved(unsigned char c) {
  return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

// Literal in a canonical path besides unreserved: sub-delims, ':' and '@' (pchar), and '/'.
bool is_path_literal(unsigned char c) {
  static constexpr std::string_view kExtra = "!$&'()*+,;=:@/";
  return is_unreserved(c) || kExtra.find(static_cast<char>(c)) != std::string_view::npos;
}

int hex_value(unsigned char c) {
  if (is_digit(c)) return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool is_control_or_space(unsigned char c) { return c <= 0x20 || c == 0x7f; }

void append_escape(std::string& out, unsigned char b) {
  out += '%';
  out += kHex[b >> 4];
  out += kHex[b & 0xf];
}

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

// Resolves "." and ".." segments and drops empty ones ("//"), keeping a
// trailing slash where the last segment was empty, "." or "..". `decoded`
// contains no escape that decodes to '/', so splitting at '/' is splitting
// where every upstream splits.
std::string_view resolve_segments(std::string_view decoded, std::string& out) {
  std::vector<std::string_view> segments;
  std::size_t pos = 1;
  bool trailing_slash = false;
  while (pos <= decoded.size()) {
    const auto next = std::min(decoded.find('/', pos), decoded.size());
    const std::string_view seg = decoded.substr(pos, next - pos);
    trailing_slash = next == decoded.size() && (seg.empty() || seg == "." || seg == "..");
    // "..;x" is ".." on servlet containers (path parameters are stripped
    // before resolving); nothing legitimate looks like that.
    if (seg.rfind(".;", 0) == 0 || seg.rfind("..;", 0) == 0) return "dot-segment with a path parameter";
    if (seg == "..") {
      if (!segments.empty()) segments.pop_back();
    } else if (!seg.empty() && seg != ".") {
      segments.push_back(seg);
    }
    pos = next + 1;
  }
  out.clear();
  for (const auto seg : segments) {
    out += '/';
    out += seg;
  }
  if (out.empty() || trailing_slash) out += '/';
  return {};
}

}  // namespace

std::string_view trim_ows(std::string_view value) {
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
  return value;
}

Path path(std::string_view raw, const Options& options) {
  Path result;
  if (raw.empty() || raw.front() != '/') {
    result.error = "path does not start with '/'";
    return result;
  }
  std::string decoded;
  decoded.reserve(raw.size());
  // What an escaped or literal slash or backslash becomes; false = reject.
  const auto slash = [&](unsigned char b) {
    switch (options.encoded_slash) {
      case config::EncodedSlash::reject:
        result.error = "encoded '/' or '\\' in path";
        return false;
      case config::EncodedSlash::keep:
        append_escape(decoded, b);
        return true;
      case config::EncodedSlash::decode:
        decoded += '/';
        return true;
    }
    return false;
  };
  for (std::size_t i = 0; i < raw.size(); ++i) {
    const auto c = static_cast<unsigned char>(raw[i]);
    if (c == '%') {
      const int hi = i + 2 < raw.size() ? hex_value(static_cast<unsigned char>(raw[i + 1])) : -1;
      const int lo = hi >= 0 ? hex_value(static_cast<unsigned char>(raw[i + 2])) : -1;
      if (lo < 0) {
        if (options.invalid_escape == config::InvalidEscape::reject) {
          result.error = "invalid percent-encoding in path";
          return result;
        }
        decoded += "%25";  // what a lenient upstream reads: a literal '%'
        continue;
      }
      i += 2;
      const auto b = static_cast<unsigned char>(hi * 16 + lo);
      if (is_unreserved(b)) {
        decoded += static_cast<char>(b);
      } else if (b == '/' || b == '\\') {
        if (!slash(b)) return result;
      } else if (b == 0 && options.invalid_escape == config::InvalidEscape::reject) {
        result.error = "encoded NUL in path";
        return result;
      } else {
        append_escape(decoded, b);
      }
    } else if (c == '\\') {
      // IIS and others read a literal backslash as a separator.
      if (!slash(c)) return result;
    } else if (is_control_or_space(c) || c == '?' || c == '#') {
      result.error = "control character, space, '?' or '#' in path";
      return result;
    } else if (is_path_literal(c)) {
      decoded += static_cast<char>(c);
    } else {
      append_escape(decoded, c);  // non-ASCII, "<>^`{|}: what a browser sends encoded
    }
  }
  if (const auto error = resolve_segments(decoded, result.value); !error.empty()) result.error = error;
  return result;
}

Host host(std::string_view raw) {
  Host result;
  if (raw.empty()) {
    result.error = "empty host";
    return result;
  }
  std::string_view name = raw;
  std::string_view port;
  bool has_port = false;
  if (!raw.empty() && raw.front() == '[') {
    const auto close = raw.find(']');
    if (close == std::string_view::npos) {
      result.error = "unterminated IPv6 literal in host";
      return result;
    }
    name = raw.substr(0, close + 1);
    const std::string_view inside = name.substr(1, name.size() - 2);
    const bool valid = !inside.empty() && inside.find(':') != std::string_view::npos &&
                       inside.find_first_not_of("0123456789abcdefABCDEF:.") == std::string_view::npos;
    if (!valid) {
      result.error = "invalid IPv6 literal in host";
      return result;
    }
    const std::string_view rest = raw.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        result.error = "junk after IPv6 literal in host";
        return result;
      }
      has_port = true;
      port = rest.substr(1);
    }
  } else if (const auto colon = raw.find(':'); colon != std::string_view::npos) {
    name = raw.substr(0, colon);
    has_port = true;
    port = raw.substr(colon + 1);
  }
  if (has_port) {
    const bool digits =
        !port.empty() && port.size() <= 5 && port.find_first_not_of("0123456789") == std::string_view::npos;
    if (!digits || std::stoul(std::string(port)) > 65535) {
      result.error = "invalid port in host";
      return result;
    }
    result.port = std::string(port);
  }
  if (name.empty() || name.front() != '[') {
    if (!name.empty() && name.back() == '.') name.remove_suffix(1);  // FQDN form names the same host
    const bool chars = std::all_of(name.begin(), name.end(), [](char ch) {
      const auto c = static_cast<unsigned char>(ch);
      return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_';
    });
    // "admin.local.." would still end in a dot: servers that strip every
    // trailing dot read admin.local, others refuse it.
    if (name.empty() || !chars || name.front() == '.' || name.back() == '.' ||
        name.find("..") != std::string_view::npos) {
      result.error = "invalid host name";
      return result;
    }
  }
  result.name.reserve(name.size());
  for (const char c : name) result.name += lower(c);
  return result;
}

Request request(std::string_view method, std::string_view target, std::optional<std::string_view> host_header,
                const Options& options) {
  Request r;
  const auto fail = [&](std::string_view why) {
    r.error = why;
    return r;
  };
  if (target.empty()) return fail("empty request target");
  for (const char ch : target) {
    if (is_control_or_space(static_cast<unsigned char>(ch)))
      return fail("control character or space in request target");
  }

  Host named;  // the host the target names (absolute-form, CONNECT)
  if (method == "CONNECT") {
    // Authority-form only (RFC 9112 §3.2.3): host and port, nothing else.
    r.form = Form::authority;
    if (target.find_first_of("/?#@") != std::string_view::npos)
      return fail("CONNECT target is not host:port");
    named = host(target);
    if (!named.error.empty()) return fail(named.error);
    if (named.port.empty()) return fail("CONNECT target has no port");
    r.target = named.authority();
  } else if (target == "*") {
    if (method != "OPTIONS") return fail("asterisk-form target on a method other than OPTIONS");
    r.form = Form::asterisk;
    r.target = r.path = "*";
  } else {
    std::string_view rest = target.substr(0, target.find('#'));  // a fragment is never the server's
    if (rest.empty()) return fail("request target is only a fragment");
    std::string prefix;
    if (rest.front() != '/') {
      // Absolute-form: scheme "://" authority [path] [query].
      r.form = Form::absolute;
      const auto sep = rest.find("://");
      if (sep == std::string_view::npos || sep == 0)
        return fail("request target is neither a path nor an absolute URI");
      std::string scheme;
      for (const char c : rest.substr(0, sep)) scheme += lower(c);
      if (scheme != "http" && scheme != "https")
        return fail("absolute-form target with a scheme other than http(s)");
      rest.remove_prefix(sep + 3);
      const auto end = std::min(rest.find_first_of("/?"), rest.size());
      const std::string_view authority = rest.substr(0, end);
      if (authority.find('@') != std::string_view::npos) return fail("userinfo in request target");
      named = host(authority);
      if (!named.error.empty()) return fail(named.error);
      rest.remove_prefix(end);
      prefix = scheme + "://" + named.authority();
    }
    const auto q = std::min(rest.find('?'), rest.size());
    const std::string_view raw_path = q == 0 ? std::string_view("/") : rest.substr(0, q);
    const std::string_view query = rest.substr(q);
    Path p = path(raw_path, options);
    if (!p.error.empty()) return fail(p.error);
    r.path = std::move(p.value);
    r.target = prefix + r.path + std::string(query);
  }

  if (r.form == Form::absolute || r.form == Form::authority) {
    r.host = named.name;
    r.authority = named.authority();
    if (host_header) {
      // RFC 9112 §3.2.2 lets the target win; an upstream that reads the
      // Host header instead would route elsewhere, so disagreement is refused.
      const Host h = host(*host_header);
      if (!h.error.empty()) return fail(h.error);
      if (h.name != named.name || (!h.port.empty() && !named.port.empty() && h.port != named.port)) {
        return fail("Host header disagrees with the request target");
      }
    }
  } else if (host_header) {
    const Host h = host(*host_header);
    if (!h.error.empty()) return fail(h.error);
    r.host = h.name;
    r.authority = h.authority();
  }
  return r;
}

}  // namespace shunt::policy::canonical

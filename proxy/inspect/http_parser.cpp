#include "proxy/inspect/http_parser.h"

#include "policy/canonical.h"

#include <algorithm>
#include <optional>

namespace shunt::proxy::http {

namespace {

namespace canonical = policy::canonical;

// Bytes of one head kept at most: more than limits.max_header_bytes allows
// (the inspector answers 431 first), so this only bounds a misuse.
constexpr std::size_t kMaxHeadBytes = 2 << 20;
// Capacity the head buffer keeps between requests (most heads are smaller).
constexpr std::size_t kKeptHeadCapacity = 4096;

// ASCII only, whatever the locale: <cctype> may take 0xE9 for a letter.
char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool is_alnum(unsigned char c) {
  const unsigned char l = c | 0x20;
  return (c >= '0' && c <= '9') || (l >= 'a' && l <= 'z');
}

int hex_digit(unsigned char c) {
  const unsigned char l = c | 0x20;
  if (c >= '0' && c <= '9') return c - '0';
  if (l >= 'a' && l <= 'f') return l - 'a' + 10;
  return -1;
}

void lower_in_place(std::string& s) { std::transform(s.begin(), s.end(), s.begin(), ascii_lower); }

bool is_tchar(unsigned char c) {
  static constexpr std::string_view kExtra = "!#$%&'*+-.^_`|~";
  return is_alnum(c) || kExtra.find(static_cast<char>(c)) != std::string_view::npos;
}

bool is_token(std::string_view s) {
  return !s.empty() &&
         std::all_of(s.begin(), s.end(), [](char c) { return is_tchar(static_cast<unsigned char>(c)); });
}

// field-vchar, SP or HTAB: what a field value may hold (RFC 9110 §5.5).
bool is_field_char(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                            [](char x, char y) { return ascii_lower(x) == ascii_lower(y); });
}

// Calls `each` with every non-empty element of a comma-separated list,
// trimmed; false when `each` does.
template <typename F>
bool for_each_element(std::string_view list, F&& each) {
  while (!list.empty()) {
    const auto comma = std::min(list.find(','), list.size());
    const std::string_view item = canonical::trim_ows(list.substr(0, comma));
    if (!item.empty() && !each(item)) return false;
    list.remove_prefix(std::min(comma + 1, list.size()));
  }
  return true;
}

// One CRLF-terminated line from `rest`; false when there is no CRLF or a
// CR or LF appears anywhere else in the line.
bool take_line(std::string_view& rest, std::string_view& line) {
  const auto lf = rest.find('\n');
  if (lf == std::string_view::npos || lf == 0 || rest[lf - 1] != '\r') return false;
  line = rest.substr(0, lf - 1);
  if (line.find('\r') != std::string_view::npos) return false;
  rest.remove_prefix(lf + 1);
  return true;
}

// RFC 9110 §9.3: content on these has no generally defined semantics
// (TRACE: must not be sent), so handlers commonly leave it unread.
bool body_without_semantics(std::string_view method) {
  return method == "GET" || method == "HEAD" || method == "DELETE" || method == "OPTIONS" ||
         method == "TRACE";
}

}  // namespace

void RequestHead::clear() {
  method.clear();
  target.clear();
  raw_target.clear();
  host.clear();
  authority.clear();
  headers.clear();
  upgrade = false;
  connect = false;
  chunked = false;
  upgrade_protocols.clear();
  http_major = 1;
  http_minor = 1;
}

std::string_view parse_head(std::string_view bytes, const config::HttpSettings& options, RequestHead& out) {
  out.clear();
  // RFC 9112 §2.2: empty lines before the request line are ignored (CRLF only).
  while (bytes.substr(0, 2) == "\r\n") bytes.remove_prefix(2);
  std::string_view rest = bytes;
  std::string_view line;
  if (!take_line(rest, line)) return "request line not ended by CRLF, or a bare CR or LF in it";

  // request-line = method SP request-target SP HTTP-version, single spaces.
  const auto sp1 = line.find(' ');
  const auto sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) {
    return "request line is not METHOD SP TARGET SP VERSION";
  }
  const std::string_view method = line.substr(0, sp1);
  const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = line.substr(sp2 + 1);
  if (!is_token(method)) return "invalid method";
  if (version == "HTTP/1.1") {
    out.http_minor = 1;
  } else if (version == "HTTP/1.0") {
    out.http_minor = 0;
  } else {
    return "unsupported HTTP version";
  }
  out.http_major = 1;
  out.method = std::string(method);
  out.raw_target = std::string(target);

  std::optional<std::string_view> host;
  bool host_seen = false;
  bool content_length = false;
  bool transfer_encoding = false;
  bool has_body = false;  // Content-Length other than 0, or Transfer-Encoding
  for (;;) {
    if (!take_line(rest, line)) return "header line not ended by CRLF, or a bare CR or LF in it";
    if (line.empty()) break;
    if (line.front() == ' ' || line.front() == '\t') return "obs-fold (header line starting with whitespace)";
    const auto colon = line.find(':');
    if (colon == std::string_view::npos) return "header line without ':'";
    const std::string_view name = line.substr(0, colon);
    if (!is_token(name)) return "invalid header name (or whitespace before ':')";
    const std::string_view raw_value = line.substr(colon + 1);
    if (!std::all_of(raw_value.begin(), raw_value.end(),
                     [](char c) { return is_field_char(static_cast<unsigned char>(c)); })) {
      return "control character in a header value";
    }
    const std::string_view value = canonical::trim_ows(raw_value);
    std::string lname(name);
    lower_in_place(lname);

    if (lname == "host") {
      if (host_seen) return "more than one Host header";
      host_seen = true;
      host = value;
    } else if (lname == "content-length") {
      // One value, digits only: "5, 5", "+5" or a second header are read
      // differently by different servers.
      if (content_length) return "more than one Content-Length";
      content_length = true;
      if (value.empty() || value.size() > 18 ||
          value.find_first_not_of("0123456789") != std::string_view::npos) {
        return "invalid Content-Length";
      }
      has_body = value.find_first_not_of('0') != std::string_view::npos;
    } else if (lname == "transfer-encoding") {
      // Only plain `chunked`: anything else (a list, `identity`, a second
      // header) leaves some server guessing where the body ends.
      if (transfer_encoding) return "more than one Transfer-Encoding";
      transfer_encoding = true;
      if (!iequals(value, "chunked")) return "Transfer-Encoding other than chunked";
      out.chunked = true;
      has_body = true;
    } else if (lname == "connection") {
      // A hop-by-hop proxy behind shunt drops the fields Connection names:
      // `Connection: Content-Length` leaves the body unframed there, to be
      // read as the next request; `Connection: Host` routes it elsewhere.
      const bool ok = for_each_element(value, [](std::string_view item) {
        return !iequals(item, "content-length") && !iequals(item, "transfer-encoding") &&
               !iequals(item, "host");
      });
      if (!ok) return "Connection names Content-Length, Transfer-Encoding or Host";
    } else if (lname == "upgrade") {
      const bool ok = for_each_element(value, [&](std::string_view item) {
        const auto slash = item.find('/');
        if (!is_token(item.substr(0, slash)) ||
            (slash != std::string_view::npos && !is_token(item.substr(slash + 1)))) {
          return false;
        }
        std::string p(item);
        lower_in_place(p);
        out.upgrade_protocols.push_back(std::move(p));
        return true;
      });
      if (!ok) return "invalid Upgrade value";
    }
    out.headers.emplace_back(std::move(lname), std::string(value));
  }
  if (!rest.empty()) return "bytes after the end of the head";
  if (content_length && transfer_encoding) return "both Content-Length and Transfer-Encoding";
  if (transfer_encoding && out.http_minor == 0) return "Transfer-Encoding in an HTTP/1.0 request";
  // CL.0 smuggling: a server whose handler never reads the body of a GET
  // (Python's http.server, CGI-style frameworks) reads it as its next
  // request, one policy never saw. RFC 9110 §9.3.1 names the hazard.
  if (has_body && options.unexpected_body == config::UnexpectedBody::reject &&
      body_without_semantics(method)) {
    return "a body on a method whose body has no defined semantics (GET, HEAD, DELETE, OPTIONS, TRACE)";
  }
  if (out.http_minor == 1 && !host_seen) return "HTTP/1.1 request without Host";

  canonical::Request c = canonical::request(method, target, host, options);
  if (!c.error.empty()) return c.error;
  // An HTTP/1.0 request naming no host goes to the upstream's default
  // server, which policy cannot know (Envoy refuses HTTP/1.0 by default).
  if (c.authority.empty()) return "request names no host (no Host header, no absolute-form target)";
  out.target = std::move(c.target);
  out.host = std::move(c.host);
  out.authority = std::move(c.authority);
  return {};
}

std::vector<std::string> allowed_upgrades(const RequestHead& head, const std::vector<std::string>& allowed) {
  std::vector<std::string> out;
  for (const auto& p : head.upgrade_protocols) {
    const std::string_view name = std::string_view(p).substr(0, p.find('/'));
    if (std::find(allowed.begin(), allowed.end(), name) != allowed.end()) out.push_back(p);
  }
  return out;
}

std::string serialise(const RequestHead& head, const std::vector<std::string>& upgrades_kept) {
  std::string out;
  out.reserve(256);
  out += head.method;
  out += ' ';
  out += head.target;
  out += head.http_minor == 0 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n";
  bool upgrade_written = false;
  for (const auto& [name, value] : head.headers) {
    std::string_view v = value;
    std::string joined;
    if (name == "host") {
      v = head.authority;
    } else if (name == "upgrade") {
      // Every Upgrade line becomes one line, at the first one's place, with
      // only the protocols that may leave inspection.
      if (upgrade_written || upgrades_kept.empty()) continue;
      upgrade_written = true;
      for (const auto& p : upgrades_kept) joined += (joined.empty() ? "" : ", ") + p;
      v = joined;
    } else if (name == "http2-settings") {
      // Belongs to `Upgrade: h2c` (RFC 7540 §3.2.1), which is never
      // forwarded: the request goes on as HTTP/1.1.
      continue;
    } else if (name == "connection") {
      // The options naming what was dropped go with it (`Connection:
      // Upgrade, HTTP2-Settings` from an h2c client), so the upstream sees
      // a plain HTTP/1.1 request; other options (close, keep-alive) stay.
      for_each_element(value, [&](std::string_view item) {
        if (iequals(item, "http2-settings") || (upgrades_kept.empty() && iequals(item, "upgrade")))
          return true;
        joined += (joined.empty() ? "" : ", ") + std::string(item);
        return true;
      });
      if (joined.empty()) continue;
      v = joined;
    }
    out += name;
    out += ": ";
    out += v;
    out += "\r\n";
  }
  out += "\r\n";
  return out;
}

bool ChunkedFraming::feed(std::string_view bytes) {
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    switch (state_) {
      case State::size:
        if (const int v = hex_digit(c); v >= 0 && digits_ < 15) {
          remaining_ = remaining_ * 16 + static_cast<unsigned>(v);
          ++digits_;
        } else if (digits_ > 0 && c == ';') {
          state_ = State::extension;
        } else if (digits_ > 0 && c == '\r') {
          state_ = State::size_lf;
        } else {
          state_ = State::broken;
        }
        break;
      case State::extension:  // printable, SP or HTAB up to CR
        if (c == '\r') {
          state_ = State::size_lf;
        } else if (!(c == '\t' || (c >= 0x20 && c < 0x7f))) {
          state_ = State::broken;
        }
        break;
      case State::size_lf:
        state_ = c != '\n' ? State::broken : remaining_ == 0 ? State::trailer : State::data;
        break;
      case State::data: {
        const std::size_t take = std::min<std::uint64_t>(remaining_, bytes.size() - i);
        remaining_ -= take;
        i += take - 1;
        if (remaining_ == 0) state_ = State::data_cr;
        break;
      }
      case State::data_cr:
        state_ = c == '\r' ? State::data_lf : State::broken;
        break;
      case State::data_lf:
        state_ = c == '\n' ? State::size : State::broken;
        digits_ = 0;
        break;
      case State::trailer:
        state_ = c == '\r' ? State::end_lf : is_tchar(c) ? State::trailer_name : State::broken;
        break;
      case State::trailer_name:
        if (c == ':') {
          state_ = State::trailer_value;
        } else if (!is_tchar(c)) {
          state_ = State::broken;
        }
        break;
      case State::trailer_value:
        if (c == '\r') {
          state_ = State::trailer_lf;
        } else if (!is_field_char(c)) {
          state_ = State::broken;
        }
        break;
      case State::trailer_lf:
        state_ = c == '\n' ? State::trailer : State::broken;
        break;
      case State::end_lf:
        state_ = c == '\n' ? State::done : State::broken;
        break;
      case State::done:
      case State::broken:
        state_ = State::broken;
        break;
    }
    if (state_ == State::broken) return false;
  }
  return true;
}

// ---------------------------------------------------------------- requests

RequestParser::RequestParser(config::HttpSettings options) : options_(std::move(options)) {
  llhttp_settings_init(&settings_);
  settings_.on_message_begin = &RequestParser::on_message_begin;
  settings_.on_headers_complete = &RequestParser::on_headers_complete;
  settings_.on_message_complete = &RequestParser::on_message_complete;
  llhttp_init(&parser_, HTTP_REQUEST, &settings_);
  parser_.data = this;
}

int RequestParser::on_message_begin(llhttp_t* p) {
  auto* self = static_cast<RequestParser*>(p->data);
  self->head_.clear();
  self->in_message_ = true;
  return 0;
}

int RequestParser::on_headers_complete(llhttp_t* p) {
  auto* self = static_cast<RequestParser*>(p->data);
  self->llhttp_upgrade_ = p->upgrade != 0;
  // Stop right after the head: the caller decides before any byte of this
  // request is forwarded. Resuming carries on as if we had returned 0.
  return HPE_PAUSED;
}

int RequestParser::on_message_complete(llhttp_t* p) {
  auto* self = static_cast<RequestParser*>(p->data);
  self->in_message_ = false;
  // Read here: llhttp clears the flags it answers from once this returns.
  self->keep_alive_ = llhttp_should_keep_alive(p) != 0;
  // Stop at the boundary so the caller can flush this request's bytes
  // before looking at the next head.
  return HPE_PAUSED;
}

RequestParser::Result RequestParser::parse(std::string_view data) {
  Result r;
  if (upgrade_pending_) {
    // Nothing after an upgrade request is HTTP until the caller says so.
    r.event = RequestEvent::upgrade;
    return r;
  }
  const llhttp_errno_t err = llhttp_execute(&parser_, data.data(), data.size());
  if (err == HPE_OK) {
    r.consumed = data.size();
  } else {
    const char* pos = llhttp_get_error_pos(&parser_);
    r.consumed = pos ? static_cast<std::size_t>(pos - data.data()) : 0;
  }
  if (collecting_) {
    if (head_bytes_.size() + r.consumed > kMaxHeadBytes) {
      r.event = RequestEvent::error;
      r.reason = "request head too large";
      return r;
    }
    head_bytes_.append(data.data(), r.consumed);
  }
  if (chunked_ && !chunked_->feed(data.substr(0, r.consumed))) {
    r.event = RequestEvent::error;
    r.reason = "invalid chunked body framing";
    return r;
  }
  switch (err) {
    case HPE_OK:
      return r;
    case HPE_PAUSED:
      // The pause reason tells which callback paused.
      llhttp_resume(&parser_);
      if (!in_message_) {
        // llhttp and the strict reading must agree on where the body ends.
        if (chunked_ && !chunked_->done()) {
          r.event = RequestEvent::error;
          r.reason = "invalid chunked body framing";
          return r;
        }
        chunked_.reset();
        collecting_ = true;
        r.event = RequestEvent::message_end;
        return r;
      }
      collecting_ = false;
      r.reason = parse_head(head_bytes_, options_, head_);
      // Idle keep-alive connections are many: do not keep a large head's
      // capacity between requests.
      if (head_bytes_.capacity() > kKeptHeadCapacity) {
        std::string().swap(head_bytes_);
      } else {
        head_bytes_.clear();
      }
      if (!r.reason.empty()) {
        r.event = RequestEvent::error;
        return r;
      }
      if (head_.chunked) chunked_.emplace();
      head_.connect = head_.method == "CONNECT";
      head_.upgrade = head_.connect || (llhttp_upgrade_ && !head_.upgrade_protocols.empty());
      r.event = RequestEvent::head;
      return r;
    case HPE_PAUSED_UPGRADE:
      upgrade_pending_ = true;
      r.event = RequestEvent::upgrade;
      return r;
    case HPE_PAUSED_H2_UPGRADE:
      r.event = RequestEvent::http2;
      return r;
    default:
      r.event = RequestEvent::error;
      r.reason = parser_.reason ? std::string_view(parser_.reason) : std::string_view(llhttp_errno_name(err));
      return r;
  }
}

void RequestParser::resume_after_declined_upgrade() {
  if (!upgrade_pending_) return;
  upgrade_pending_ = false;
  llhttp_resume_after_upgrade(&parser_);
}

// --------------------------------------------------------------- responses

ResponseParser::ResponseParser() {
  llhttp_settings_init(&settings_);
  settings_.on_message_begin = &ResponseParser::on_message_begin;
  settings_.on_header_field = &ResponseParser::on_header_field;
  settings_.on_header_value = &ResponseParser::on_header_value;
  settings_.on_header_value_complete = &ResponseParser::on_header_value_complete;
  settings_.on_headers_complete = &ResponseParser::on_headers_complete;
  settings_.on_message_complete = &ResponseParser::on_message_complete;
  llhttp_init(&parser_, HTTP_RESPONSE, &settings_);
  parser_.data = this;
}

bool RequestParser::idle_keep_alive() const {
  return !in_message_ && collecting_ && head_bytes_.empty() && !upgrade_pending_ && !chunked_ && keep_alive_;
}

bool ResponseParser::idle_keep_alive() const { return expected_.empty() && !in_message_ && keep_alive_; }

int ResponseParser::on_message_begin(llhttp_t* p) {
  auto* self = static_cast<ResponseParser*>(p->data);
  self->in_message_ = true;
  self->field_.clear();
  self->value_.clear();
  self->switched_to_.clear();
  return 0;
}

// Longer field names or values than this are not an Upgrade worth reading.
constexpr std::size_t kMaxKeptField = 256;

int ResponseParser::on_header_field(llhttp_t* p, const char* at, std::size_t n) {
  auto* self = static_cast<ResponseParser*>(p->data);
  if (p->status_code == 101 && self->field_.size() + n <= kMaxKeptField) self->field_.append(at, n);
  return 0;
}

int ResponseParser::on_header_value(llhttp_t* p, const char* at, std::size_t n) {
  auto* self = static_cast<ResponseParser*>(p->data);
  if (p->status_code == 101 && self->value_.size() + n <= kMaxKeptField) self->value_.append(at, n);
  return 0;
}

int ResponseParser::on_header_value_complete(llhttp_t* p) {
  auto* self = static_cast<ResponseParser*>(p->data);
  if (p->status_code == 101 && iequals(self->field_, "upgrade")) {
    std::string v(policy::canonical::trim_ows(self->value_));
    lower_in_place(v);
    self->switched_to_ += (self->switched_to_.empty() ? "" : ", ") + v;
  }
  self->field_.clear();
  self->value_.clear();
  return 0;
}

int ResponseParser::on_headers_complete(llhttp_t* p) {
  auto* self = static_cast<ResponseParser*>(p->data);
  const int status = p->status_code;
  const ResponseExpectation e = self->expected_.empty() ? ResponseExpectation{} : self->expected_.front();
  // Return values (llhttp): 0 body as framed, 1 no body, 2 no body and the
  // stream switches protocol after this message.
  if (status == 101) return 2;  // even without the Upgrade/Connection pair llhttp wants
  if (e.connect_request && status / 100 == 2) return 2;
  // RFC 9112 6.3: these never have a body, whatever Content-Length says
  // (llhttp honours a Content-Length on 304, which would swallow the next
  // response).
  if (e.head_request || status / 100 == 1 || status == 204 || status == 304) return 1;
  return 0;
}

int ResponseParser::on_message_complete(llhttp_t* p) {
  auto* self = static_cast<ResponseParser*>(p->data);
  self->in_message_ = false;
  // Read here: llhttp clears the flags it answers from once this returns.
  self->keep_alive_ = llhttp_should_keep_alive(p) != 0;
  const int status = p->status_code;
  if (status / 100 == 1 && status != 101) return 0;  // interim: the final response is still to come
  if (!self->expected_.empty()) self->expected_.pop_front();
  if (self->completed_) self->completed_->push_back(status);
  return 0;
}

ResponseParser::Result ResponseParser::result_of(llhttp_errno_t err, const char* base) {
  Result r;
  if (err == HPE_OK) return r;
  const char* pos = llhttp_get_error_pos(&parser_);
  r.consumed = pos && base ? static_cast<std::size_t>(pos - base) : 0;
  if (err == HPE_PAUSED_UPGRADE) {
    r.event = ResponseEvent::tunnel;
    return r;
  }
  r.event = ResponseEvent::error;
  r.reason = parser_.reason ? std::string_view(parser_.reason) : std::string_view(llhttp_errno_name(err));
  return r;
}

ResponseParser::Result ResponseParser::parse(std::string_view data, std::vector<int>& completed) {
  completed_ = &completed;
  const llhttp_errno_t err = llhttp_execute(&parser_, data.data(), data.size());
  completed_ = nullptr;
  Result r = result_of(err, data.data());
  if (err == HPE_OK) r.consumed = data.size();
  return r;
}

ResponseParser::Result ResponseParser::finish(std::vector<int>& completed) {
  completed_ = &completed;
  const llhttp_errno_t err = llhttp_finish(&parser_);
  completed_ = nullptr;
  return result_of(err, nullptr);
}

}  // namespace shunt::proxy::http

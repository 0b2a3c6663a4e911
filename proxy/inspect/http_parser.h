// HTTP/1.x requests and responses for inspection (proxy/inspect/http_inspector.cpp).
//
// Two readings of every request head, on purpose:
//  - llhttp finds where things end: each request head (so a verdict exists
//    before any byte of it is forwarded), each message end (so the bytes of
//    an allowed request can be flushed before the next head is looked at),
//    and where the stream stops being HTTP.
//  - parse_head() reads the head's bytes again under a strict grammar (RFC
//    9112 with no leniency: CRLF only, no obs-fold, no whitespace before a
//    colon, no control characters, one Host, well-formed framing headers)
//    and builds the canonical request model (policy/canonical.h). Any head
//    llhttp accepted but the strict reading does not is a 400, so llhttp's
//    leniencies (Debian ships 8.1) cannot make shunt and the upstream see
//    different heads.
// The inspector forwards serialise(head), not the bytes it read: what the
// upstream parses is exactly what policy decided on. Bodies are forwarded as
// read, framed by llhttp under headers the strict reading has checked.
//
// ResponseParser only follows response framing: which responses are final,
// which requests they answer, and where the stream stops being HTTP (101,
// CONNECT 2xx).
//
// Both are bounded: RequestParser keeps the bytes of the current head only
// (the caller limits its size, limits.max_header_bytes), ResponseParser none.
#pragma once

#include "config/config.h"

#include <llhttp.h>

#include <cstddef>
#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shunt::proxy::http {

struct RequestHead {
  std::string method;
  std::string target;      // canonical request-target: matched and forwarded
  std::string raw_target;  // as sent, for logs
  std::string host;        // canonical host (no port) matched by policy; empty when none
  std::string authority;   // forwarded as Host (canonical host[:port]); empty when none
  // In order, names lower-cased, values without surrounding whitespace.
  std::vector<std::pair<std::string, std::string>> headers;
  // CONNECT, or Upgrade with Connection: upgrade (llhttp's view, which
  // decides whether it stops parsing after this message).
  bool upgrade = false;
  bool connect = false;
  bool chunked = false;  // Transfer-Encoding: chunked (checked: the only coding allowed)
  std::vector<std::string> upgrade_protocols;  // every Upgrade value, lower-cased, in order
  int http_major = 1;
  int http_minor = 1;

  void clear();
};

// Reads `bytes` (one request head: optional leading CRLFs, request line,
// field lines, the empty line, nothing after) strictly into `out` (every
// field but upgrade/connect, which are llhttp's). Returns an empty string
// on success, else why the head is refused (400).
std::string_view parse_head(std::string_view bytes, const config::HttpSettings& options, RequestHead& out);

// The head to forward: canonical request line, the fields as read (names
// lower-case, values trimmed), Host set to the canonical authority, and the
// Upgrade values reduced to those in `upgrades_kept` (the field dropped when
// none is left, with the `upgrade` Connection option), and HTTP2-Settings
// (with its Connection option) dropped: `Upgrade: h2c` is declined by
// forwarding the request as plain HTTP/1.1.
std::string serialise(const RequestHead& head, const std::vector<std::string>& upgrades_kept);

// The Upgrade protocols of `head` that may leave inspection: those whose
// name (before any '/version') is in `allowed`.
std::vector<std::string> allowed_upgrades(const RequestHead& head, const std::vector<std::string>& allowed);

// Strict chunked framing (RFC 9112 §7.1) over the body bytes llhttp
// consumes, so a body ends where every upstream ends it: llhttp 8.1 skips
// any two bytes after chunk data, ends trailers on CR plus any byte, and
// takes whitespace before a trailer's colon or a bare CR in its value.
class ChunkedFraming {
 public:
  // False at the first byte that breaks the grammar (and from then on).
  bool feed(std::string_view bytes);
  [[nodiscard]] bool done() const { return state_ == State::done; }

 private:
  enum class State {
    size,
    extension,
    size_lf,
    data,
    data_cr,
    data_lf,
    trailer,
    trailer_name,
    trailer_value,
    trailer_lf,
    end_lf,
    done,
    broken
  };
  State state_ = State::size;
  std::uint64_t remaining_ = 0;
  int digits_ = 0;
};

enum class RequestEvent {
  need_more,    // every byte given was consumed; nothing to report yet
  head,         // a request head is complete: head() is valid
  message_end,  // the current request (head and body) has ended
  upgrade,      // after message_end of a CONNECT/Upgrade request: what follows is not parsed
  http2,        // the HTTP/2 connection preface (prior knowledge)
  error,        // malformed request
};

class RequestParser {
 public:
  explicit RequestParser(config::HttpSettings options = {});
  RequestParser(const RequestParser&) = delete;
  RequestParser& operator=(const RequestParser&) = delete;

  struct Result {
    RequestEvent event = RequestEvent::need_more;
    std::size_t consumed = 0;  // bytes of `data` consumed up to the event
    std::string_view reason;   // for `error`: llhttp's reason
  };
  // Parses from the start of `data` up to the first event. Call again with
  // the rest (data.substr(consumed)) to go on.
  Result parse(std::string_view data);

  // After `upgrade` when the server declined (no 101 / no 2xx to CONNECT):
  // the bytes that follow are HTTP again.
  void resume_after_declined_upgrade();

  // The head of the current request; valid from `head` until the next
  // request's first byte.
  [[nodiscard]] const RequestHead& head() const { return head_; }
  // True between a request's first byte and its message_end.
  [[nodiscard]] bool in_message() const { return in_message_; }
  // Between requests, no upgrade pending, and the last request left the
  // connection open for more (no `Connection: close`): a fresh parser reads
  // what follows exactly as this one would. A parked keep-alive connection
  // keeps no parser (proxy/inspect/http_inspector.cpp).
  [[nodiscard]] bool idle_keep_alive() const;

 private:
  static int on_message_begin(llhttp_t* p);
  static int on_headers_complete(llhttp_t* p);
  static int on_message_complete(llhttp_t* p);

  config::HttpSettings options_;
  llhttp_settings_t settings_{};
  llhttp_t parser_{};
  RequestHead head_;
  std::string head_bytes_;  // the current head as read, while collecting_
  bool collecting_ = true;  // between a message end (or the start) and the next head
  bool llhttp_upgrade_ = false;
  std::optional<ChunkedFraming> chunked_;  // while in a chunked body
  bool in_message_ = false;
  bool upgrade_pending_ = false;  // llhttp said PAUSED_UPGRADE; the caller has not resumed
  bool keep_alive_ = false;       // the last request left the connection open
};

// What the inspector tells the response side about each forwarded request.
struct ResponseExpectation {
  bool head_request = false;     // a response to HEAD has no body whatever it says
  bool connect_request = false;  // a 2xx to CONNECT opens a tunnel
};

enum class ResponseEvent {
  need_more,  // all consumed
  tunnel,     // a 101, or a 2xx to CONNECT, completed: the rest is another protocol
  error,      // malformed response, or a response nobody asked for that cannot be framed
};

class ResponseParser {
 public:
  ResponseParser();
  ResponseParser(const ResponseParser&) = delete;
  ResponseParser& operator=(const ResponseParser&) = delete;

  // Announces a forwarded request, in order.
  void expect(ResponseExpectation e) { expected_.push_back(e); }
  [[nodiscard]] std::size_t outstanding() const { return expected_.size(); }
  // No response expected or under way, and the last one kept the
  // connection open: a fresh parser frames what follows the same way.
  [[nodiscard]] bool idle_keep_alive() const;

  struct Result {
    ResponseEvent event = ResponseEvent::need_more;
    std::size_t consumed = 0;
    std::string_view reason;
  };
  // Parses `data`; each final response completed along the way is appended
  // to `completed` (its status code) and its expectation retired. Interim
  // 1xx responses (100 Continue, 103) complete nothing.
  Result parse(std::string_view data, std::vector<int>& completed);
  // The upstream closed: completes a response delimited by EOF.
  Result finish(std::vector<int>& completed);
  // The Upgrade value of the last 101 (lower-cased, every line joined by
  // ", "): what the upstream says it switched to.
  [[nodiscard]] const std::string& switched_to() const { return switched_to_; }

 private:
  static int on_message_begin(llhttp_t* p);
  static int on_header_field(llhttp_t* p, const char* at, std::size_t n);
  static int on_header_value(llhttp_t* p, const char* at, std::size_t n);
  static int on_header_value_complete(llhttp_t* p);
  static int on_headers_complete(llhttp_t* p);
  static int on_message_complete(llhttp_t* p);
  Result result_of(llhttp_errno_t err, const char* base);

  llhttp_settings_t settings_{};
  llhttp_t parser_{};
  // A list, not a deque: libstdc++'s deque allocates ~0.6 KB when
  // constructed, for every idle keep-alive connection (issue 16); this
  // queue rarely holds more than one entry.
  std::list<ResponseExpectation> expected_;
  std::vector<int>* completed_ = nullptr;
  // Fields are kept only for a 101, and only while short: nothing else of a
  // response is needed.
  std::string field_;
  std::string value_;
  std::string switched_to_;
  bool in_message_ = false;
  bool keep_alive_ = false;  // the last response left the connection open
};

}  // namespace shunt::proxy::http

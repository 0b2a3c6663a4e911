// Incremental HTTP/1.x framing over llhttp, for inspection (proxy/http_inspector.cpp).
//
// The inspector never rewrites bytes: it forwards exactly what it read, so
// all it needs from a parser is *where* things end. RequestParser stops at
// each request head (so a verdict exists before any byte of it is forwarded)
// and at each message end (so the bytes of an allowed request can be flushed
// before the next head is looked at). ResponseParser only follows response
// framing: which responses are final, which requests they answer, and where
// the stream stops being HTTP (101, CONNECT 2xx).
//
// Both are bounded: they keep no bytes, only the fields of the current
// request head, whose size the caller limits (limits.max_header_bytes).
#pragma once

#include <llhttp.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shunt::proxy::http {

struct RequestHead {
  std::string method;
  std::string target;  // request-target as sent
  std::string host;    // first Host header, empty when absent
  // Header names lower-cased, values as sent (surrounding blanks trimmed by llhttp).
  std::vector<std::pair<std::string, std::string>> headers;
  // llhttp's view: CONNECT, or Upgrade + Connection: upgrade. What follows
  // the head may be another protocol once the server agrees.
  bool upgrade = false;
  bool connect = false;
  std::string upgrade_protocol;  // Upgrade header value, lower-cased
  int http_major = 1;
  int http_minor = 1;

  void clear();
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
  RequestParser();
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

 private:
  static int on_message_begin(llhttp_t* p);
  static int on_method(llhttp_t* p, const char* at, std::size_t n);
  static int on_url(llhttp_t* p, const char* at, std::size_t n);
  static int on_header_field(llhttp_t* p, const char* at, std::size_t n);
  static int on_header_value(llhttp_t* p, const char* at, std::size_t n);
  static int on_header_value_complete(llhttp_t* p);
  static int on_headers_complete(llhttp_t* p);
  static int on_message_complete(llhttp_t* p);

  llhttp_settings_t settings_{};
  llhttp_t parser_{};
  RequestHead head_;
  std::string field_;
  std::string value_;
  bool in_message_ = false;
  bool upgrade_pending_ = false;  // llhttp said PAUSED_UPGRADE; the caller has not resumed
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

 private:
  static int on_headers_complete(llhttp_t* p);
  static int on_message_complete(llhttp_t* p);
  Result result_of(llhttp_errno_t err, const char* base);

  llhttp_settings_t settings_{};
  llhttp_t parser_{};
  std::deque<ResponseExpectation> expected_;
  std::vector<int>* completed_ = nullptr;
};

}  // namespace shunt::proxy::http

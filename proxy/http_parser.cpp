#include "proxy/http_parser.h"

#include <algorithm>
#include <cctype>

namespace shunt::proxy::http {

namespace {

void lower_in_place(std::string& s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
}

}  // namespace

void RequestHead::clear() {
  method.clear();
  target.clear();
  host.clear();
  headers.clear();
  upgrade = false;
  connect = false;
  upgrade_protocol.clear();
  http_major = 1;
  http_minor = 1;
}

// ---------------------------------------------------------------- requests

RequestParser::RequestParser() {
  llhttp_settings_init(&settings_);
  settings_.on_message_begin = &RequestParser::on_message_begin;
  settings_.on_method = &RequestParser::on_method;
  settings_.on_url = &RequestParser::on_url;
  settings_.on_header_field = &RequestParser::on_header_field;
  settings_.on_header_value = &RequestParser::on_header_value;
  settings_.on_header_value_complete = &RequestParser::on_header_value_complete;
  settings_.on_headers_complete = &RequestParser::on_headers_complete;
  settings_.on_message_complete = &RequestParser::on_message_complete;
  llhttp_init(&parser_, HTTP_REQUEST, &settings_);
  parser_.data = this;
}

int RequestParser::on_message_begin(llhttp_t* p) {
  auto* self = static_cast<RequestParser*>(p->data);
  self->head_.clear();
  self->field_.clear();
  self->value_.clear();
  self->in_message_ = true;
  return 0;
}

int RequestParser::on_method(llhttp_t* p, const char* at, std::size_t n) {
  static_cast<RequestParser*>(p->data)->head_.method.append(at, n);
  return 0;
}

int RequestParser::on_url(llhttp_t* p, const char* at, std::size_t n) {
  static_cast<RequestParser*>(p->data)->head_.target.append(at, n);
  return 0;
}

int RequestParser::on_header_field(llhttp_t* p, const char* at, std::size_t n) {
  static_cast<RequestParser*>(p->data)->field_.append(at, n);
  return 0;
}

int RequestParser::on_header_value(llhttp_t* p, const char* at, std::size_t n) {
  static_cast<RequestParser*>(p->data)->value_.append(at, n);
  return 0;
}

int RequestParser::on_header_value_complete(llhttp_t* p) {
  auto* self = static_cast<RequestParser*>(p->data);
  lower_in_place(self->field_);
  if (self->field_ == "host" && self->head_.host.empty()) self->head_.host = self->value_;
  if (self->field_ == "upgrade") {
    self->head_.upgrade_protocol = self->value_;
    lower_in_place(self->head_.upgrade_protocol);
  }
  self->head_.headers.emplace_back(std::move(self->field_), std::move(self->value_));
  self->field_.clear();
  self->value_.clear();
  return 0;
}

int RequestParser::on_headers_complete(llhttp_t* p) {
  auto* self = static_cast<RequestParser*>(p->data);
  self->head_.upgrade = p->upgrade != 0;
  self->head_.connect = p->method == HTTP_CONNECT;
  self->head_.http_major = p->http_major;
  self->head_.http_minor = p->http_minor;
  // Stop right after the head: the caller decides before any byte of this
  // request is forwarded. Resuming carries on as if we had returned 0.
  return HPE_PAUSED;
}

int RequestParser::on_message_complete(llhttp_t* p) {
  static_cast<RequestParser*>(p->data)->in_message_ = false;
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
    return r;
  }
  const char* pos = llhttp_get_error_pos(&parser_);
  r.consumed = pos ? static_cast<std::size_t>(pos - data.data()) : 0;
  switch (err) {
    case HPE_PAUSED:
      // The pause reason tells which callback paused.
      llhttp_resume(&parser_);
      r.event = in_message_ ? RequestEvent::head : RequestEvent::message_end;
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
  settings_.on_headers_complete = &ResponseParser::on_headers_complete;
  settings_.on_message_complete = &ResponseParser::on_message_complete;
  llhttp_init(&parser_, HTTP_RESPONSE, &settings_);
  parser_.data = this;
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

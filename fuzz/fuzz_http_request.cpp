// Requests as the HTTP inspector reads them (proxy/inspect/http_inspector.cpp): the
// input is what one client sends on one connection. It is parsed the way
// run_requests() drives RequestParser (llhttp for framing, parse_head() for
// the strict reading and the canonical model): stop at each head, decide
// it, carry on; a declined upgrade resumes HTTP; an error or the HTTP/2
// preface ends the connection. Every head is decided by the matcher under
// a fixed policy (fuzz_common.h) on its canonical form, as the inspector
// does, and serialised as the inspector forwards it. The input's hash picks
// which proxy.http settings (escape handling, upgrade list) the parser and
// the policy run under.
//
// Besides memory and UB errors, these properties are checked:
//  - the parser's contract with the inspector: need_more means every byte
//    given was consumed, and no event claims more bytes than it was given;
//  - segmentation does not matter: the same bytes read whole and read in
//    the pieces read_sizes() picks give the same events at the same stream
//    offsets, the same heads and the same verdicts. A difference would let
//    a client choose the verdict by how it splits its segments;
//  - shunt forwards what it decided on: the serialised head, read again by
//    a fresh parser as the upstream would, is one complete head with the
//    same method, target, host and authority, the same verdict, and
//    serialises to the same bytes;
//  - a head that passed is strict (RFC 9112, issue 9): token method and
//    field names, no control character or space in the target, no CR, LF
//    or NUL in a value and no whitespace around it, a host named, at most
//    one Host, Content-Length and Transfer-Encoding and not the last two
//    together;
//  - framing agrees with the forwarded head: a request without chunked
//    coding ends exactly Content-Length (or zero) bytes after its head, so
//    llhttp's idea of where the body ends is the upstream's.
#include "fuzz/fuzz_common.h"
#include "proxy/inspect/http_parser.h"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using shunt::proxy::http::RequestEvent;
using shunt::proxy::http::RequestHead;
using shunt::proxy::http::RequestParser;

// One thing the inspector would act on, at a stream offset.
struct Step {
  RequestEvent event = RequestEvent::need_more;
  std::size_t offset = 0;  // stream offset just after the event
  RequestHead head;        // for `head`
  shunt::policy::Verdict verdict = shunt::policy::Verdict::deny;
  std::string rule;

  bool operator==(const Step& o) const {
    // Where an error is reported does not matter: the inspector refuses at
    // any error and forwards nothing after its last need_more, up to which
    // every body byte has passed the strict chunked framing either way (in
    // one read, llhttp's lenient chunk parser may run past the byte where
    // the strict one broke, and the error is reported where llhttp stopped).
    const bool same_offset = offset == o.offset || event == RequestEvent::error;
    return event == o.event && same_offset && verdict == o.verdict && rule == o.rule &&
           head.method == o.head.method && head.target == o.head.target &&
           head.raw_target == o.head.raw_target && head.host == o.head.host &&
           head.authority == o.head.authority && head.headers == o.head.headers &&
           head.upgrade == o.head.upgrade && head.connect == o.head.connect &&
           head.chunked == o.head.chunked && head.upgrade_protocols == o.head.upgrade_protocols &&
           head.http_major == o.head.http_major && head.http_minor == o.head.http_minor;
  }
};

const char* name(RequestEvent e) {
  switch (e) {
    case RequestEvent::need_more:
      return "need_more";
    case RequestEvent::head:
      return "head";
    case RequestEvent::message_end:
      return "message_end";
    case RequestEvent::upgrade:
      return "upgrade";
    case RequestEvent::http2:
      return "http2";
    case RequestEvent::error:
      return "error";
  }
  return "?";
}

// The policy (and with it the proxy.http settings) one input runs under.
const shunt::policy::Policy* policy = nullptr;

const shunt::config::HttpSettings& options() { return policy->config().proxy.http; }

shunt::policy::Decision decide(const RequestHead& h) {
  // What the inspector matches: the canonical target and authority.
  const shunt::policy::HttpRequest request{h.method, h.target, h.authority, h.headers};
  return policy->decide_http(shunt::fuzz::web_to_api(80), request);
}

std::string serialised(const RequestHead& h) {
  return shunt::proxy::http::serialise(h,
                                       shunt::proxy::http::allowed_upgrades(h, options().upgrade_protocols));
}

// The upstream's reading of what the inspector forwards for `head`.
void check_forwarded(const RequestHead& head, const shunt::policy::Decision& decision) {
  const std::string out = serialised(head);
  RequestParser upstream(options());
  const RequestParser::Result r = upstream.parse(out);
  SHUNT_FUZZ_CHECK(r.event == RequestEvent::head && r.consumed == out.size(),
                   "the forwarded head reads as %s after %zu of %zu bytes (%.*s): %s", name(r.event),
                   r.consumed, out.size(), static_cast<int>(r.reason.size()), r.reason.data(), out.c_str());
  const RequestHead& again = upstream.head();
  SHUNT_FUZZ_CHECK(again.method == head.method && again.target == head.target && again.host == head.host &&
                       again.authority == head.authority,
                   "forwarded %s %s (host %s, authority %s), read back %s %s (host %s, authority %s)",
                   head.method.c_str(), head.target.c_str(), head.host.c_str(), head.authority.c_str(),
                   again.method.c_str(), again.target.c_str(), again.host.c_str(), again.authority.c_str());
  const shunt::policy::Decision d = decide(again);
  SHUNT_FUZZ_CHECK(d.verdict == decision.verdict && d.rule == decision.rule,
                   "decided %s by '%s', the forwarded head %s by '%s': %s",
                   std::string(to_string(decision.verdict)).c_str(), decision.rule.c_str(),
                   std::string(to_string(d.verdict)).c_str(), d.rule.c_str(), out.c_str());
  const std::string twice = serialised(again);
  SHUNT_FUZZ_CHECK(twice == out, "serialising the forwarded head again changes it:\n%s---\n%s", out.c_str(),
                   twice.c_str());
}

bool is_tchar(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (const char c : s) {
    if (!is_tchar(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// What the strict reading guarantees about a head it let through, checked
// on the result rather than trusted from the code that produced it.
// Returns the Content-Length (0 when absent).
std::uint64_t check_strict(const RequestHead& h) {
  SHUNT_FUZZ_CHECK(is_token(h.method), "method '%s'", h.method.c_str());
  for (const char c : h.target) {
    const auto b = static_cast<unsigned char>(c);
    SHUNT_FUZZ_CHECK(b > 0x20 && b != 0x7f, "byte 0x%02x in target '%s'", b, h.target.c_str());
  }
  SHUNT_FUZZ_CHECK(!h.host.empty(), "%s %s names no host", h.method.c_str(), h.target.c_str());
  int hosts = 0, lengths = 0, codings = 0;
  std::uint64_t length = 0;
  for (const auto& [field, value] : h.headers) {
    SHUNT_FUZZ_CHECK(is_token(field), "field name '%s'", field.c_str());
    for (const char c : field) SHUNT_FUZZ_CHECK(!(c >= 'A' && c <= 'Z'), "field name '%s'", field.c_str());
    for (const char c : value) {
      const auto b = static_cast<unsigned char>(c);
      SHUNT_FUZZ_CHECK(b != '\r' && b != '\n' && b != 0 && (b >= 0x20 || b == '\t') && b != 0x7f,
                       "byte 0x%02x in the value of %s", b, field.c_str());
    }
    SHUNT_FUZZ_CHECK(value.empty() || (value.front() != ' ' && value.front() != '\t' && value.back() != ' ' &&
                                       value.back() != '\t'),
                     "whitespace around the value of %s: '%s'", field.c_str(), value.c_str());
    if (field == "host") ++hosts;
    if (field == "transfer-encoding") ++codings;
    if (field == "content-length") {
      ++lengths;
      SHUNT_FUZZ_CHECK(
          !value.empty() && value.size() <= 18 && value.find_first_not_of("0123456789") == std::string::npos,
          "Content-Length '%s'", value.c_str());
      length = std::stoull(value);
    }
  }
  SHUNT_FUZZ_CHECK(hosts <= 1 && lengths <= 1 && codings <= 1 && !(lengths && codings),
                   "%d Host, %d Content-Length, %d Transfer-Encoding", hosts, lengths, codings);
  SHUNT_FUZZ_CHECK(h.chunked == (codings == 1), "chunked %d with %d Transfer-Encoding", h.chunked, codings);
  return length;
}

// Feeds `stream` to a fresh parser in reads of `sizes` (their sum is the
// stream's length) and returns what the inspector would have done.
std::vector<Step> inspect(std::string_view stream, const std::vector<std::size_t>& sizes) {
  RequestParser parser(options());
  std::vector<Step> steps;
  std::size_t received = 0;  // bytes the client has sent so far
  std::size_t parsed = 0;
  std::size_t next_read = 0;
  // Where the current request's body must end, when not chunked.
  std::optional<std::size_t> body_end;
  for (;;) {
    const std::string_view unparsed = stream.substr(parsed, received - parsed);
    const RequestParser::Result r = parser.parse(unparsed);
    SHUNT_FUZZ_CHECK(r.consumed <= unparsed.size(), "%s consumed %zu of %zu bytes", name(r.event), r.consumed,
                     unparsed.size());
    parsed += r.consumed;
    Step step;
    step.event = r.event;
    step.offset = parsed;
    switch (r.event) {
      case RequestEvent::need_more:
        // The inspector forwards body bytes up to `parsed` here and reads
        // on: a byte left unconsumed would be neither forwarded nor parsed.
        SHUNT_FUZZ_CHECK(r.consumed == unparsed.size(), "need_more consumed %zu of %zu bytes", r.consumed,
                         unparsed.size());
        if (next_read == sizes.size()) return steps;  // the client is done
        received += sizes[next_read++];
        continue;
      case RequestEvent::head: {
        step.head = parser.head();
        const shunt::policy::Decision d = decide(step.head);
        step.verdict = d.verdict;
        step.rule = d.rule;
        // policy.default is deny: an allow can only come from the allow rule.
        SHUNT_FUZZ_CHECK(d.verdict == shunt::policy::Verdict::deny || d.rule == "web-to-api",
                         "allowed by '%s'", d.rule.c_str());
        check_forwarded(step.head, d);
        const std::uint64_t length = check_strict(step.head);
        body_end.reset();
        if (!step.head.chunked) body_end = parsed + length;
        steps.push_back(std::move(step));
        continue;
      }
      case RequestEvent::message_end:
        SHUNT_FUZZ_CHECK(!body_end || *body_end == parsed, "the body ended at %zu, its head says %zu", parsed,
                         *body_end);
        body_end.reset();
        steps.push_back(std::move(step));
        continue;
      case RequestEvent::upgrade:
        // The upstream declined: what follows is HTTP again. (An accepted
        // upgrade ends inspection; there is nothing left to parse.)
        steps.push_back(std::move(step));
        parser.resume_after_declined_upgrade();
        continue;
      case RequestEvent::http2:
      case RequestEvent::error:
        steps.push_back(std::move(step));
        return steps;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view stream(reinterpret_cast<const char*>(data), size);
  policy = &shunt::fuzz::fixed_policy(shunt::fuzz::input_hash(data, size) % shunt::fuzz::kPolicyVariants);
  const std::vector<Step> whole = inspect(stream, {size});
  const std::vector<Step> pieces = inspect(stream, shunt::fuzz::read_sizes(data, size));
  const std::size_t n = std::min(whole.size(), pieces.size());
  for (std::size_t i = 0; i < n; ++i) {
    SHUNT_FUZZ_CHECK(whole[i] == pieces[i],
                     "step %zu differs when read in pieces: %s at %zu (%s %s, %s) vs %s at %zu (%s %s, %s)",
                     i, name(whole[i].event), whole[i].offset, whole[i].head.method.c_str(),
                     whole[i].head.target.c_str(), whole[i].rule.c_str(), name(pieces[i].event),
                     pieces[i].offset, pieces[i].head.method.c_str(), pieces[i].head.target.c_str(),
                     pieces[i].rule.c_str());
  }
  SHUNT_FUZZ_CHECK(whole.size() == pieces.size(), "%zu steps read whole, %zu read in pieces", whole.size(),
                   pieces.size());
  return 0;
}

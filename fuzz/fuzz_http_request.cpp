// Request heads as the HTTP inspector reads them (proxy/http_inspector.cpp):
// the input is what one client sends on one connection. It is parsed the
// way run_requests() drives RequestParser (stop at each head, decide it,
// carry on; a declined upgrade resumes HTTP; an error or the HTTP/2
// preface ends the connection), and every head is decided by the matcher
// under a fixed policy (fuzz_common.h).
//
// Besides memory and UB errors, two properties are checked:
//  - the parser's contract with the inspector: need_more means every byte
//    given was consumed, and no event claims more bytes than it was given;
//  - segmentation does not matter: the same bytes read whole and read in
//    the pieces read_sizes() picks give the same events at the same stream
//    offsets, the same heads and the same verdicts. A difference would let
//    a client choose the verdict by how it splits its segments.
#include "fuzz/fuzz_common.h"
#include "proxy/http_parser.h"

#include <cstddef>
#include <cstdint>
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
    return event == o.event && offset == o.offset && verdict == o.verdict && rule == o.rule &&
           head.method == o.head.method && head.target == o.head.target && head.host == o.head.host &&
           head.headers == o.head.headers && head.upgrade == o.head.upgrade &&
           head.connect == o.head.connect && head.upgrade_protocol == o.head.upgrade_protocol &&
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

// Feeds `stream` to a fresh parser in reads of `sizes` (their sum is the
// stream's length) and returns what the inspector would have done.
std::vector<Step> inspect(std::string_view stream, const std::vector<std::size_t>& sizes) {
  const shunt::policy::Policy& policy = shunt::fuzz::fixed_policy();
  const shunt::policy::Flow flow = shunt::fuzz::web_to_api(80);
  RequestParser parser;
  std::vector<Step> steps;
  std::size_t received = 0;  // bytes the client has sent so far
  std::size_t parsed = 0;
  std::size_t next_read = 0;
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
        const RequestHead& h = step.head;
        const shunt::policy::HttpRequest request{h.method, h.target, h.host, h.headers};
        const shunt::policy::Decision d = policy.decide_http(flow, request);
        step.verdict = d.verdict;
        step.rule = d.rule;
        // policy.default is deny: an allow can only come from the allow rule.
        SHUNT_FUZZ_CHECK(d.verdict == shunt::policy::Verdict::deny || d.rule == "web-to-api",
                         "allowed by '%s'", d.rule.c_str());
        steps.push_back(std::move(step));
        continue;
      }
      case RequestEvent::message_end:
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
  const std::vector<Step> whole = inspect(stream, {size});
  const std::vector<Step> pieces = inspect(stream, shunt::fuzz::read_sizes(data, size));
  const std::size_t n = std::min(whole.size(), pieces.size());
  for (std::size_t i = 0; i < n; ++i) {
    SHUNT_FUZZ_CHECK(whole[i] == pieces[i],
                     "step %zu differs when read in pieces: %s at %zu (%s %s, %s) vs %s at %zu (%s %s, %s)", i,
                     name(whole[i].event), whole[i].offset, whole[i].head.method.c_str(),
                     whole[i].head.target.c_str(), whole[i].rule.c_str(), name(pieces[i].event),
                     pieces[i].offset, pieces[i].head.method.c_str(), pieces[i].head.target.c_str(),
                     pieces[i].rule.c_str());
  }
  SHUNT_FUZZ_CHECK(whole.size() == pieces.size(), "%zu steps read whole, %zu read in pieces", whole.size(),
                   pieces.size());
  return 0;
}

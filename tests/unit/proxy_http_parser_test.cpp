// The llhttp wrapper used by HTTP inspection: where heads and messages end
// (the inspector forwards by these offsets, so they must be exact), what a
// head carries, upgrades, the HTTP/2 preface, malformed input, and response
// framing (HEAD, 1xx, 204/304, 101, CONNECT, EOF-delimited).
#include "proxy/inspect/http_parser.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace shunt::proxy::http {
namespace {

struct Event {
  RequestEvent kind;
  std::size_t offset;  // absolute offset in the input where the event happened
  bool operator==(const Event&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Event& e) {
  return os << "{" << static_cast<int>(e.kind) << " @" << e.offset << "}";
}

// Feeds `input` in pieces of `step` bytes, collecting events.
std::vector<Event> events_of(RequestParser& parser, const std::string& input, std::size_t step = SIZE_MAX,
                             std::vector<RequestHead>* heads = nullptr) {
  std::vector<Event> out;
  std::size_t pos = 0;
  std::size_t avail = std::min(step, input.size());
  for (int guard = 0; guard < 100000; ++guard) {
    const auto r = parser.parse(std::string_view(input).substr(pos, avail - pos));
    pos += r.consumed;
    if (r.event == RequestEvent::need_more) {
      if (avail == input.size()) break;
      avail = std::min(input.size(), avail + step);
      continue;
    }
    out.push_back({r.event, pos});
    if (r.event == RequestEvent::head && heads) heads->push_back(parser.head());
    if (r.event == RequestEvent::error || r.event == RequestEvent::http2 || r.event == RequestEvent::upgrade)
      break;
  }
  return out;
}

TEST(HttpRequestParser, PipelinedRequestsSplitExactly) {
  const std::string a = "GET /a HTTP/1.1\r\nHost: example.test\r\n\r\n";
  const std::string b = "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
  const std::string c = "GET http://c.example/c HTTP/1.0\r\n\r\n";
  RequestParser parser;
  std::vector<RequestHead> heads;
  const auto events = events_of(parser, a + b + c, SIZE_MAX, &heads);
  const std::size_t b_head = a.size() + b.size() - 5;
  EXPECT_EQ(events, (std::vector<Event>{{RequestEvent::head, a.size()},
                                        {RequestEvent::message_end, a.size()},
                                        {RequestEvent::head, b_head},
                                        {RequestEvent::message_end, a.size() + b.size()},
                                        {RequestEvent::head, a.size() + b.size() + c.size()},
                                        {RequestEvent::message_end, a.size() + b.size() + c.size()}}));
  ASSERT_EQ(heads.size(), 3u);
  EXPECT_EQ(heads[0].method, "GET");
  EXPECT_EQ(heads[0].target, "/a");
  EXPECT_EQ(heads[0].host, "example.test");
  EXPECT_EQ(heads[1].method, "POST");
  EXPECT_EQ(heads[1].host, "x");
  EXPECT_EQ(heads[2].host, "c.example");  // HTTP/1.0 names its host in the target
}

TEST(HttpRequestParser, ByteByByteGivesTheSameOffsets) {
  const std::string input =
      "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\n"
      "GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
  RequestParser whole, bytewise;
  const auto a = events_of(whole, input);
  const auto b = events_of(bytewise, input, 1);
  EXPECT_EQ(a, b);
  ASSERT_EQ(a.size(), 4u);
  EXPECT_EQ(a[1].kind, RequestEvent::message_end);
  EXPECT_EQ(a[1].offset, input.find("GET /next"));
  EXPECT_EQ(a[3].offset, input.size());
}

TEST(HttpRequestParser, HeadersLowerCasedValuesKept) {
  RequestParser parser;
  std::vector<RequestHead> heads;
  events_of(parser, "GET /p?q=1 HTTP/1.1\r\nHOST: Api.Local:8080\r\nX-Team: Blue\r\nx-team: red\r\n\r\n",
            SIZE_MAX, &heads);
  ASSERT_EQ(heads.size(), 1u);
  EXPECT_EQ(heads[0].target, "/p?q=1");
  EXPECT_EQ(heads[0].host, "api.local");  // canonical: lower-case, no port
  EXPECT_EQ(heads[0].authority, "api.local:8080");
  ASSERT_EQ(heads[0].headers.size(), 3u);
  EXPECT_EQ(heads[0].headers[1], (std::pair<std::string, std::string>{"x-team", "Blue"}));
  EXPECT_EQ(heads[0].headers[2], (std::pair<std::string, std::string>{"x-team", "red"}));
}

TEST(HttpRequestParser, HeadSplitAcrossReadsKeepsFields) {
  const std::string input = "GET /split/path HTTP/1.1\r\nHost: split.example\r\nX-Long: abcdefghij\r\n\r\n";
  RequestParser parser;
  std::vector<RequestHead> heads;
  events_of(parser, input, 3, &heads);
  ASSERT_EQ(heads.size(), 1u);
  EXPECT_EQ(heads[0].target, "/split/path");
  EXPECT_EQ(heads[0].host, "split.example");
  EXPECT_EQ(heads[0].headers.back().second, "abcdefghij");
}

TEST(HttpRequestParser, WebSocketUpgradeStopsAtTheHeadEnd) {
  const std::string head =
      "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: "
      "13\r\n\r\n";
  RequestParser parser;
  std::vector<RequestHead> heads;
  const auto events = events_of(parser, head + "\x81\x05hello", SIZE_MAX, &heads);
  EXPECT_EQ(events, (std::vector<Event>{{RequestEvent::head, head.size()},
                                        {RequestEvent::message_end, head.size()},
                                        {RequestEvent::upgrade, head.size()}}));
  ASSERT_EQ(heads.size(), 1u);
  EXPECT_TRUE(heads[0].upgrade);
  EXPECT_EQ(heads[0].upgrade_protocols, std::vector<std::string>{"websocket"});
  // Until resumed, nothing more is parsed.
  EXPECT_EQ(parser.parse("GET / HTTP/1.1\r\n\r\n").event, RequestEvent::upgrade);
}

TEST(HttpRequestParser, UpgradeWithNothingAfterItStillReportsUpgrade) {
  const std::string head = "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
  RequestParser parser;
  const auto events = events_of(parser, head);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[2], (Event{RequestEvent::upgrade, head.size()}));
}

TEST(HttpRequestParser, DeclinedUpgradeParsesHttpAgain) {
  const std::string head = "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
  RequestParser parser;
  events_of(parser, head);
  parser.resume_after_declined_upgrade();
  const auto r = parser.parse("GET /again HTTP/1.1\r\nHost: h\r\n\r\n");
  EXPECT_EQ(r.event, RequestEvent::head);
  EXPECT_EQ(parser.head().target, "/again");
  EXPECT_FALSE(parser.head().upgrade);
}

TEST(HttpRequestParser, ConnectIsAnUpgrade) {
  RequestParser parser;
  std::vector<RequestHead> heads;
  const auto events =
      events_of(parser, "CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\nbinary", SIZE_MAX, &heads);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[2].kind, RequestEvent::upgrade);
  EXPECT_TRUE(heads[0].connect);
}

TEST(HttpRequestParser, Http2PrefaceIsReported) {
  RequestParser parser;
  const auto events = events_of(parser, std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04", 28), 5);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().kind, RequestEvent::http2);
}

TEST(HttpRequestParser, MalformedInputIsAnError) {
  for (const std::string& bad :
       {std::string("\x16\x03\x01\x02\x00", 5), std::string("GET / HTTP/1.1\r\nHost x\r\n\r\n"),
        std::string("GET / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
        std::string("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
        std::string("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")}) {
    RequestParser parser;
    const auto events = events_of(parser, bad);
    ASSERT_FALSE(events.empty()) << bad;
    EXPECT_EQ(events.back().kind, RequestEvent::error) << bad;
  }
}

TEST(HttpRequestParser, InMessageTracksRequestBoundaries) {
  RequestParser parser;
  EXPECT_FALSE(parser.in_message());
  auto r = parser.parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nab");
  EXPECT_EQ(r.event, RequestEvent::head);
  EXPECT_TRUE(parser.in_message());
  r = parser.parse(std::string_view("ab"));
  EXPECT_EQ(r.event, RequestEvent::need_more);
  EXPECT_TRUE(parser.in_message());
  r = parser.parse("c");
  EXPECT_EQ(r.event, RequestEvent::message_end);
  EXPECT_EQ(r.consumed, 1u);
  EXPECT_FALSE(parser.in_message());
}

// The strict second reading (parse_head): every head llhttp 8.1 is lenient
// about, and every ambiguous framing, is an error before any decision.
TEST(HttpRequestParser, StrictHeadRefusesAmbiguity) {
  const std::vector<std::string> bad = {
      // bare CR inside a header, and a head ending in CRLF CR <byte>
      "GET /api/x HTTP/1.1\r\nHost: h\r\nFoo:\rXContent-Length: 49\r\n\r\n",
      "GET /api/x HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
      "GET /api/x HTTP/1.1\r\nHost: h\r\n\rX",
      "GET /api/x HTTP/1.1\r\nHost: h\r\n\r\r\n",
      // bare LF
      "GET /api/x HTTP/1.1\nHost: h\n\n",
      "GET /api/x HTTP/1.1\r\nHost: h\n\r\n",
      // obs-fold, whitespace before the colon
      "GET /api/x HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n",
      "GET /api/x HTTP/1.1\r\nHost : h\r\n\r\n",
      "GET /api/x HTTP/1.1\r\nHost\t: h\r\n\r\n",
      // control characters in the target or a value
      std::string("GET /api/\x01x HTTP/1.1\r\nHost: h\r\n\r\n"),
      std::string("GET /api/x HTTP/1.1\r\nHost: h\r\nX: a\x7f\r\n\r\n"),
      std::string("GET /api/x HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n", 40),
      // request line shapes
      "GET  /api/x HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET /api/x  HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET /api/x HTTP/1.2\r\nHost: h\r\n\r\n",
      // framing headers
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: "
      "chunked\r\n\r\n0\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
      "POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      "GET / HTTP/1.0\r\n\r\n",  // no host at all: the upstream's default server would guess
      // hosts: two, none on 1.1, invalid, disagreeing with the target
      "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
      "GET / HTTP/1.1\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
      "GET http://admin.local/api/x HTTP/1.1\r\nHost: api.local\r\n\r\n",
      "CONNECT admin.local:443 HTTP/1.1\r\nHost: api.local:443\r\n\r\n",
      // escapes refused by default
      "GET /api%2Fadmin HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET /api/admin%00 HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET /api/%zz HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET /api\\admin HTTP/1.1\r\nHost: h\r\n\r\n",
      // Upgrade values that are not tokens
      "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: web socket\r\n\r\n",
      // a body where handlers do not read one (proxy.http.unexpected_body)
      "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
      "HEAD / HTTP/1.1\r\nHost: h\r\nContent-Length: 05\r\n\r\nhello",
      "DELETE / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
      "OPTIONS / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
      "TRACE / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
      "GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      // Connection naming framing or routing fields: a hop-by-hop proxy upstream drops them
      "POST / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Content-Length\r\nContent-Length: "
      "5\r\n\r\nhello",
      "POST / HTTP/1.1\r\nHost: h\r\nConnection: transfer-encoding\r\nTransfer-Encoding: "
      "chunked\r\n\r\n0\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nConnection: HOST\r\n\r\n",
  };
  for (const std::string& input : bad) {
    RequestParser parser;
    std::vector<RequestHead> heads;
    const auto events = events_of(parser, input, SIZE_MAX, &heads);
    ASSERT_FALSE(events.empty()) << input;
    EXPECT_EQ(events.back().kind, RequestEvent::error) << input;
    EXPECT_TRUE(heads.empty()) << input;  // no head is ever reported for these
  }
}

TEST(HttpRequestParser, UnexpectedBodyPerOption) {
  // CL.0: Python's http.server reads an unread GET body as the next request.
  const std::string get =
      "GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
  {
    RequestParser parser;
    const auto events = events_of(parser, get);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].kind, RequestEvent::error);
  }
  {
    config::HttpSettings forward;
    forward.unexpected_body = config::UnexpectedBody::forward;
    RequestParser parser(forward);
    const auto events = events_of(parser, get);
    const std::vector<Event> want = {{RequestEvent::head, 47},
                                     {RequestEvent::message_end, 52},
                                     {RequestEvent::head, 80},
                                     {RequestEvent::message_end, 80}};
    EXPECT_EQ(events, want);
  }
  // An empty body says nothing ambiguous; POST and PUT bodies are theirs.
  for (const std::string input :
       {"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
        "DELETE / HTTP/1.1\r\nHost: h\r\nContent-Length: 000\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        "PUT / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"}) {
    RequestParser parser;
    const auto events = events_of(parser, input);
    ASSERT_EQ(events.size(), 2u) << input;
    EXPECT_EQ(events[1].kind, RequestEvent::message_end) << input;
  }
}

TEST(HttpRequestParser, CanonicalHeadIsWhatIsForwarded) {
  RequestParser parser;
  std::vector<RequestHead> heads;
  events_of(parser,
            "\r\nGET /api/%61dmin/./x//y?q=%61 HTTP/1.1\r\nHOST: Admin.Local.:8080 \r\nX-Team:\tblue \r\n"
            "Upgrade: h2c, WebSocket/13\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n",
            SIZE_MAX, &heads);
  ASSERT_EQ(heads.size(), 1u);
  const RequestHead& h = heads[0];
  EXPECT_EQ(h.raw_target, "/api/%61dmin/./x//y?q=%61");
  EXPECT_EQ(h.target, "/api/admin/x/y?q=%61");
  EXPECT_EQ(h.host, "admin.local");
  EXPECT_EQ(h.authority, "admin.local:8080");
  EXPECT_EQ(h.upgrade_protocols, (std::vector<std::string>{"h2c", "websocket/13", "foo"}));
  EXPECT_TRUE(h.upgrade);
  const auto kept = allowed_upgrades(h, {"websocket"});
  EXPECT_EQ(kept, std::vector<std::string>{"websocket/13"});
  EXPECT_EQ(serialise(h, kept),
            "GET /api/admin/x/y?q=%61 HTTP/1.1\r\nhost: admin.local:8080\r\nx-team: blue\r\n"
            "upgrade: websocket/13\r\nconnection: Upgrade\r\n\r\n");
  // No allowed protocol left: the Upgrade field is gone, the request is plain HTTP.
  EXPECT_EQ(serialise(h, {}),
            "GET /api/admin/x/y?q=%61 HTTP/1.1\r\nhost: admin.local:8080\r\nx-team: blue\r\n\r\n");
  // The forwarded head reads back as itself.
  RequestHead again;
  EXPECT_EQ(parse_head(serialise(h, kept), {}, again), "");
  EXPECT_EQ(again.target, h.target);
  EXPECT_EQ(serialise(again, kept), serialise(h, kept));
}

TEST(HttpRequestParser, H2cUpgradeIsDeclinedAsPlainHttp11) {
  // curl --http2 on http://: Upgrade: h2c with HTTP2-Settings, both named in
  // Connection. h2c can never be kept: the request goes on without any of it.
  RequestHead h;
  ASSERT_EQ(parse_head("GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, keep-alive\r\n"
                       "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nAccept: */*\r\n\r\n",
                       {}, h),
            "");
  const auto kept = allowed_upgrades(h, {"websocket"});
  EXPECT_TRUE(kept.empty());
  EXPECT_EQ(serialise(h, kept),
            "GET /x HTTP/1.1\r\nhost: a\r\nconnection: keep-alive\r\naccept: */*\r\n\r\n");
  // With only the dropped options, the Connection field goes too.
  ASSERT_EQ(parse_head("GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                       "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
                       {}, h),
            "");
  EXPECT_EQ(serialise(h, {}), "GET /x HTTP/1.1\r\nhost: a\r\n\r\n");
  // A kept WebSocket upgrade keeps its Connection option; h2c's go.
  ASSERT_EQ(parse_head("GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                       "Upgrade: h2c, websocket\r\nHTTP2-Settings: AA\r\n\r\n",
                       {}, h),
            "");
  EXPECT_EQ(serialise(h, allowed_upgrades(h, {"websocket"})),
            "GET /x HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n");
}

TEST(HttpRequestParser, EncodedSlashOptions) {
  config::HttpSettings decode;
  decode.encoded_slash = config::EncodedSlash::decode;
  RequestParser parser(decode);
  std::vector<RequestHead> heads;
  events_of(parser, "GET /api%2F..%2Fadmin HTTP/1.1\r\nHost: h\r\n\r\n", SIZE_MAX, &heads);
  ASSERT_EQ(heads.size(), 1u);
  EXPECT_EQ(heads[0].target, "/admin");
}

TEST(HttpRequestParser, TrailersDoNotTouchTheHead) {
  RequestParser parser;
  std::vector<RequestHead> heads;
  const std::string input =
      "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nHost: evil\r\n\r\n"
      "GET /next HTTP/1.1\r\nHost: h2\r\n\r\n";
  const auto events = events_of(parser, input, 7, &heads);
  ASSERT_EQ(heads.size(), 2u);
  EXPECT_EQ(heads[0].host, "h");
  EXPECT_EQ(heads[1].host, "h2");
  EXPECT_EQ(heads[1].target, "/next");
}

// Chunked framing llhttp 8.1 accepts but a strict upstream reads
// differently: each is an error before the bytes after it are reported.
TEST(HttpRequestParser, StrictChunkedFraming) {
  const std::string head = "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
  const std::string next = "GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
  for (const std::string body :
       {"5\r\nhelloXX0\r\n\r\n", "5\r\nhello\n0\r\n\r\n", "5;a\rb\r\nhello\r\n0\r\n\r\n", "0\r\n\r\r",
        "0\r\n\rX", "0\r\nX : y\r\n\r\n", "0\r\nX:\ry\r\n\r\n", "0\r\n\n", "5\r\nhello\r\r\n0\r\n\r\n"}) {
    for (const std::size_t step : {std::size_t{1}, SIZE_MAX}) {
      RequestParser parser;
      const auto events = events_of(parser, head + body + next, step);
      ASSERT_FALSE(events.empty());
      EXPECT_EQ(events.back().kind, RequestEvent::error) << body << " step " << step;
      EXPECT_LE(events.back().offset, head.size() + body.size()) << body;
    }
  }
  // Extensions and trailers that are well-formed still pass.
  RequestParser parser;
  const auto events = events_of(parser, head + "5;ext=\"v\"\r\nhello\r\n0\r\nX-T: a b\r\n\r\n" + next, 3);
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[3].kind, RequestEvent::message_end);
}

// ---------------------------------------------------------------- responses

TEST(HttpResponseParser, CompletesResponsesInOrder) {
  ResponseParser parser;
  parser.expect({});
  parser.expect({});
  std::vector<int> done;
  const auto r = parser.parse(
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 404 Not Found\r\nTransfer-Encoding: "
      "chunked\r\n\r\n"
      "3\r\nabc\r\n0\r\n\r\n",
      done);
  EXPECT_EQ(r.event, ResponseEvent::need_more);
  EXPECT_EQ(done, (std::vector<int>{200, 404}));
  EXPECT_EQ(parser.outstanding(), 0u);
}

TEST(HttpResponseParser, InterimResponsesCompleteNothing) {
  ResponseParser parser;
  parser.expect({});
  std::vector<int> done;
  parser.parse("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", done);
  EXPECT_TRUE(done.empty());
  EXPECT_EQ(parser.outstanding(), 1u);
  parser.parse("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", done);
  EXPECT_EQ(done, (std::vector<int>{201}));
}

TEST(HttpResponseParser, HeadAnd304And204HaveNoBody) {
  ResponseParser parser;
  parser.expect({.head_request = true});
  parser.expect({});
  parser.expect({});
  parser.expect({});
  std::vector<int> done;
  const auto r = parser.parse(
      "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
      "HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n"
      "HTTP/1.1 204 No Content\r\n\r\n"
      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
      done);
  EXPECT_EQ(r.event, ResponseEvent::need_more);
  EXPECT_EQ(done, (std::vector<int>{200, 304, 204, 200}));
}

TEST(HttpResponseParser, SwitchingProtocolsIsATunnel) {
  ResponseParser parser;
  parser.expect({});
  std::vector<int> done;
  const std::string head =
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
  const auto r = parser.parse(head + "\x81\x02hi", done);
  EXPECT_EQ(r.event, ResponseEvent::tunnel);
  EXPECT_EQ(r.consumed, head.size());
  EXPECT_EQ(done, (std::vector<int>{101}));
}

TEST(HttpResponseParser, DeclinedUpgradeIsOrdinary) {
  ResponseParser parser;
  parser.expect({});
  std::vector<int> done;
  const auto r = parser.parse(
      "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Content-Length: 4\r\n\r\nnope",
      done);
  EXPECT_EQ(r.event, ResponseEvent::need_more);
  EXPECT_EQ(done, (std::vector<int>{426}));
}

TEST(HttpResponseParser, ConnectSuccessIsATunnelFailureIsNot) {
  {
    ResponseParser parser;
    parser.expect({.connect_request = true});
    std::vector<int> done;
    EXPECT_EQ(parser.parse("HTTP/1.1 200 Connection established\r\n\r\nraw", done).event,
              ResponseEvent::tunnel);
  }
  {
    ResponseParser parser;
    parser.expect({.connect_request = true});
    std::vector<int> done;
    EXPECT_EQ(parser.parse("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", done).event,
              ResponseEvent::need_more);
    EXPECT_EQ(done, (std::vector<int>{403}));
  }
}

TEST(HttpResponseParser, EofDelimitedBodyCompletesAtFinish) {
  ResponseParser parser;
  parser.expect({});
  std::vector<int> done;
  parser.parse("HTTP/1.0 200 OK\r\n\r\nuntil the end", done);
  EXPECT_TRUE(done.empty());
  EXPECT_EQ(parser.finish(done).event, ResponseEvent::need_more);
  EXPECT_EQ(done, (std::vector<int>{200}));
}

TEST(HttpResponseParser, GarbageIsAnError) {
  ResponseParser parser;
  parser.expect({});
  std::vector<int> done;
  EXPECT_EQ(parser.parse("SSH-2.0-OpenSSH\r\n", done).event, ResponseEvent::error);
}

TEST(HttpResponseParser, SwitchedToIsTheUpgradeOfThe101) {
  ResponseParser parser;
  parser.expect({});
  std::vector<int> done;
  auto r =
      parser.parse("HTTP/1.1 101 Switching\r\nUpgrade: WebSocket \r\nConnection: upgrade\r\n\r\nraw", done);
  EXPECT_EQ(r.event, ResponseEvent::tunnel);
  EXPECT_EQ(parser.switched_to(), "websocket");
  ResponseParser two;
  two.expect({});
  r = two.parse("HTTP/1.1 101 S\r\nUpgrade: h2c\r\nUpgrade: websocket\r\n\r\n", done);
  EXPECT_EQ(r.event, ResponseEvent::tunnel);
  EXPECT_EQ(two.switched_to(), "h2c, websocket");
  ResponseParser none;
  none.expect({});
  r = none.parse("HTTP/1.1 101 S\r\nConnection: upgrade\r\n\r\n", done);
  EXPECT_EQ(r.event, ResponseEvent::tunnel);
  EXPECT_EQ(none.switched_to(), "");
}

}  // namespace
}  // namespace shunt::proxy::http

// Inspectors on their seam (proxy/inspect/inspector.h), without the
// daemon: a compiled policy, the client over loopback, a fake upstream
// connector, a recording observer; the outcome and what each side saw.
#include "tests/unit/proxy_fakes.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace shunt::proxy {
namespace {

using namespace shunt::proxy::testing;

constexpr auto kWait = std::chrono::seconds(10);

// The listener and the two pods of every policy here.
constexpr const char* kPods = R"(
proxy:
  listeners: [{name: p, listen: 127.0.0.1:15001, transparent: true}]
  timeouts: {header: 500ms}
pods:
  - {name: web, ip: 10.200.0.2}
  - {name: api, ip: 10.200.0.3}
)";

constexpr const char* kPolicy = R"(
policy:
  default: deny
  rules:
    - {name: tls-in, from: {pod: web}, to: {pod: api, ports: [8443]}, action: allow, tls: {sni: [api.example.com]}}
    - {name: http-ok, from: {pod: web}, to: {pod: api, ports: [8080]}, action: allow, http: [{path: /ok}]}
    # 8081: HTTP rules, but an L4 allow covers every request (handed over)
    - {name: http-x, from: {pod: web}, to: {pod: api, ports: [8081]}, action: allow, http: [{path: /x}]}
    - {name: l4-all, from: {pod: web}, to: {pod: api, ports: [8081]}, action: allow}
)";

// One inspection of a connection from pod web to api:8443, whose upstream
// is a loopback listener the test accepts on.
class InspectTest : public ::testing::Test {
 protected:
  void SetUp() override {
    policy = compile(std::string(kPods) + kPolicy);
    ASSERT_TRUE(policy);
    store.publish(policy);
    ASSERT_EQ(::listen(listener.get(), 8), 0);
    client = loopback_link(io.io);
    set_receive_timeout(client.far.get(), kWait);
  }

  std::future<InspectOutcome> start_tls() { return io.start(inspect_tls(inspection())); }
  // HTTP/2 from the first byte: what Connection::inspect runs when the
  // HTTP/1.1 inspector's outcome is `http2` (here with nothing read yet).
  std::future<InspectOutcome> start_h2(std::uint16_t port) {
    flow.dst_port = port;
    return io.start(inspect_h2(inspection(), std::string()));
  }
  // The test's HTTP/2 client (`h2`) sends GET `path`; the origin (`origin`,
  // on the connector's upstream) has received it and not answered yet.
  // Returns the client's stream id.
  std::int32_t h2_request_at_origin(const std::string& path) {
    h2.emplace(H2Peer::Role::client, client.far.get());
    const std::int32_t id = h2->request("GET", path, "api");
    EXPECT_TRUE(h2->flush());
    upstream = accept_upstream();
    origin.emplace(H2Peer::Role::server, upstream.get());
    EXPECT_TRUE(origin->pump([&] { return origin->streams[1].ended; }));
    return id;
  }
  // GET `path` from the test's HTTP/2 client (made on first use), answered
  // (by shunt or through it) before this returns; returns the stream id.
  std::int32_t h2_get(const std::string& path) {
    if (!h2) h2.emplace(H2Peer::Role::client, client.far.get());
    const std::int32_t id = h2->request("GET", path, "api");
    EXPECT_TRUE(h2->pump([&] { return h2->closed(id); }));
    return id;
  }
  // The client is done sending: the inspection winds down and ends.
  InspectOutcome h2_finish(std::future<InspectOutcome>& done) {
    ::shutdown(client.far.get(), SHUT_WR);
    if (done.wait_for(kWait) != std::future_status::ready) {
      ADD_FAILURE() << "the HTTP/2 inspection did not end";
      return {};
    }
    return done.get();
  }
  std::future<InspectOutcome> start_http(std::uint16_t port) {
    flow.dst_port = port;
    return io.start(inspect_http(inspection()));
  }
  Inspection inspection() {
    return Inspection{std::move(client.near),
                      connector,
                      store,
                      flow,
                      policy->config().proxy,
                      observer,
                      cancel,
                      started,
                      draining,
                      quiet,
                      &boundary};
  }
  // Reads one HTTP message head (up to the blank line) and `body` bytes more.
  static std::string read_message(int fd, std::size_t body = 0) {
    std::string out;
    char c;
    while (out.find("\r\n\r\n") == std::string::npos && ::recv(fd, &c, 1, 0) == 1) out += c;
    std::string rest(body, '\0');
    if (body && ::recv(fd, rest.data(), body, MSG_WAITALL) == static_cast<ssize_t>(body)) out += rest;
    return out;
  }
  // The upstream side of the connector's connection.
  UniqueFd accept_upstream() {
    UniqueFd fd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    set_receive_timeout(fd.get(), kWait);
    return fd;
  }
  static tcp::endpoint bound(int fd) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    return tcp::endpoint(asio::ip::make_address("127.0.0.1"), ntohs(addr.sin_port));
  }

  IoThread io;
  std::shared_ptr<const policy::Policy> policy;
  policy::Store store;
  UniqueFd listener{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  FakeConnector connector{io.io, bound(listener.get())};
  LoopbackLink client{tcp::socket(io.io), UniqueFd()};
  policy::Flow flow{asio::ip::make_address("10.200.0.2"), asio::ip::make_address("10.200.0.3"), 8443};
  RecordingObserver observer;
  CancelSlot cancel;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::atomic<bool> draining{false};
  TimerQuietWatch quiet{io.io};
  BoundaryRequest boundary;  // a takeover's boundary window (set on the io thread)
  // HTTP/2 tests: the test's client and origin peers.
  std::optional<H2Peer> h2;
  UniqueFd upstream;
  std::optional<H2Peer> origin;
};

TEST_F(InspectTest, TlsAllowedSniForwardsTheHelloAndHandsOver) {
  const std::string hello = client_hello("api.example.com");
  auto done = start_tls();
  ASSERT_TRUE(send_all(client.far.get(), hello));
  UniqueFd upstream = accept_upstream();
  std::string got(hello.size(), '\0');
  ASSERT_EQ(::recv(upstream.get(), got.data(), got.size(), MSG_WAITALL), static_cast<ssize_t>(hello.size()));
  EXPECT_EQ(got, hello);
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  InspectOutcome out = done.get();
  ASSERT_TRUE(out.handover);
  EXPECT_EQ(out.ending.reason, EndReason::unknown);
  EXPECT_EQ(observer.up, hello.size());
  std::lock_guard lock(observer.mu);
  EXPECT_EQ(observer.sni, "api.example.com");
  ASSERT_EQ(observer.decisions.size(), 1u);
  EXPECT_EQ(observer.decisions[0].rule, "tls-in");
  EXPECT_EQ(observer.decisions[0].verdict, policy::Verdict::allow);
  io.run([&] { out.handover.reset(); });
}

TEST_F(InspectTest, TlsDeniedSniResetsTheClientAndNeverConnects) {
  auto done = start_tls();
  ASSERT_TRUE(send_all(client.far.get(), client_hello("evil.example.com")));
  int error = 0;
  EXPECT_EQ(read_to_end(client.far.get(), &error), "");
  EXPECT_EQ(error, ECONNRESET);
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  const InspectOutcome out = done.get();
  EXPECT_FALSE(out.handover);
  EXPECT_EQ(out.ending.reason, EndReason::policy_deny);
  EXPECT_EQ(connector.calls, 0);
  std::lock_guard lock(observer.mu);
  EXPECT_EQ(observer.sni, "evil.example.com");
  ASSERT_EQ(observer.decisions.size(), 1u);
  EXPECT_EQ(observer.decisions[0].verdict, policy::Verdict::deny);
}

TEST_F(InspectTest, TlsNotAHelloIsABadRequest) {
  auto done = start_tls();
  ASSERT_TRUE(send_all(client.far.get(), "GET / HTTP/1.1\r\nHost: api\r\n\r\n"));
  int error = 0;
  read_to_end(client.far.get(), &error);
  EXPECT_EQ(error, ECONNRESET);
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(done.get().ending.reason, EndReason::bad_request);
  EXPECT_EQ(connector.calls, 0);
}

TEST_F(InspectTest, TlsNoHelloInTimeIsARequestTimeout) {
  auto done = start_tls();  // timeouts.header is 500 ms
  int error = 0;
  read_to_end(client.far.get(), &error);
  EXPECT_EQ(error, ECONNRESET);
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(done.get().ending.reason, EndReason::request_timeout);
}

TEST_F(InspectTest, TlsUpstreamRefusingResetsTheClient) {
  connector.fail = true;
  auto done = start_tls();
  ASSERT_TRUE(send_all(client.far.get(), client_hello("api.example.com")));
  int error = 0;
  read_to_end(client.far.get(), &error);
  EXPECT_EQ(error, ECONNRESET);
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  const InspectOutcome out = done.get();
  EXPECT_EQ(out.ending.reason, EndReason::upstream_connect_failed);
  EXPECT_EQ(out.ending.error, "refused by the test");
}

TEST_F(InspectTest, TlsCancelWhileWaitingForTheHelloResets) {
  auto done = start_tls();
  ASSERT_TRUE(send_all(client.far.get(), client_hello("api.example.com").substr(0, 20)));  // a partial hello
  io.run([&] { cancel.cancel(); });
  int error = 0;
  read_to_end(client.far.get(), &error);
  EXPECT_EQ(error, ECONNRESET);
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  const InspectOutcome out = done.get();
  EXPECT_FALSE(out.handover);
  EXPECT_EQ(out.ending.reason, EndReason::unknown);  // the canceller records why
}

TEST_F(InspectTest, HttpAllowedRequestGoesThroughAndTheNextIsDenied) {
  auto done = start_http(8080);
  ASSERT_TRUE(send_all(client.far.get(), "GET /ok HTTP/1.1\r\nHost: api\r\n\r\n"));
  UniqueFd upstream = accept_upstream();
  const std::string head = read_message(upstream.get());
  EXPECT_EQ(head.rfind("GET /ok HTTP/1.1\r\n", 0), 0u) << head;
  ASSERT_TRUE(send_all(upstream.get(), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"));
  const std::string response = read_message(client.far.get(), 2);
  EXPECT_EQ(response.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << response;
  EXPECT_EQ(response.substr(response.size() - 2), "hi");

  // The next request on the connection is decided again, and denied.
  ASSERT_TRUE(send_all(client.far.get(), "GET /admin HTTP/1.1\r\nHost: api\r\n\r\n"));
  ::shutdown(client.far.get(), SHUT_WR);  // the client has nothing more to say
  const std::string refusal = read_to_end(client.far.get());
  EXPECT_EQ(refusal.rfind("HTTP/1.1 403 Forbidden\r\n", 0), 0u) << refusal;
  EXPECT_NE(refusal.find("Connection: close\r\n"), std::string::npos) << refusal;
  EXPECT_EQ(read_to_end(upstream.get()), "");  // /admin never reached it: a FIN after the first response

  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  const InspectOutcome out = done.get();
  EXPECT_FALSE(out.handover);
  EXPECT_EQ(out.ending.reason, EndReason::policy_deny);
  EXPECT_EQ(connector.calls, 1);
  EXPECT_EQ(observer.allowed_requests, 1);
  EXPECT_EQ(observer.denied_requests, 1);
  std::lock_guard lock(observer.mu);
  ASSERT_EQ(observer.exchanges.size(), 2u);
  EXPECT_EQ(observer.exchanges[0].status, 200);
  EXPECT_TRUE(observer.exchanges[0].allowed);
  EXPECT_EQ(observer.exchanges[1].path, "/admin");
  EXPECT_EQ(observer.exchanges[1].status, 403);
  EXPECT_FALSE(observer.exchanges[1].allowed);
  EXPECT_EQ(observer.requests, (std::vector<std::string>{"GET /ok", "GET /admin"}));
}

// Between requests, with the caller able to hold it, the connection comes
// back parked (both sockets, nothing owed); a second inspection resumed
// with its upstream decides the next request as the first one would have.
TEST_F(InspectTest, HttpIdleKeepAliveParksAndResumes) {
  flow.dst_port = 8080;
  auto done = io.start(
      inspect_http(inspection(), HttpResume{.may_park = true, .upstream = std::nullopt, .initial = {}}));
  ASSERT_TRUE(send_all(client.far.get(), "GET /ok HTTP/1.1\r\nHost: api\r\n\r\n"));
  UniqueFd upstream = accept_upstream();
  EXPECT_EQ(read_message(upstream.get()).rfind("GET /ok HTTP/1.1\r\n", 0), 0u);
  ASSERT_TRUE(send_all(upstream.get(), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"));
  EXPECT_EQ(read_message(client.far.get(), 2).rfind("HTTP/1.1 200 OK\r\n", 0), 0u);
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  InspectOutcome out = done.get();
  ASSERT_TRUE(out.parked);
  EXPECT_FALSE(out.handover);
  EXPECT_EQ(out.ending.reason, EndReason::unknown);
  EXPECT_TRUE(out.parked->client.is_open());
  EXPECT_TRUE(out.parked->upstream.is_open());

  // Resumed: the next request is decided (denied here) under the policy.
  client.near = std::move(out.parked->client);
  auto again = io.start(
      inspect_http(inspection(),
                   HttpResume{.may_park = true, .upstream = std::move(out.parked->upstream), .initial = {}}));
  ASSERT_TRUE(send_all(client.far.get(), "GET /admin HTTP/1.1\r\nHost: api\r\n\r\n"));
  ::shutdown(client.far.get(), SHUT_WR);
  const std::string refusal = read_to_end(client.far.get());
  EXPECT_EQ(refusal.rfind("HTTP/1.1 403 Forbidden\r\n", 0), 0u) << refusal;
  EXPECT_EQ(read_to_end(upstream.get()), "");  // /admin never reached it
  ASSERT_EQ(again.wait_for(kWait), std::future_status::ready);
  const InspectOutcome second = again.get();
  EXPECT_FALSE(second.parked);
  EXPECT_EQ(second.ending.reason, EndReason::policy_deny);
  EXPECT_EQ(connector.calls, 1);  // the resumed inspection kept the upstream
  EXPECT_EQ(observer.allowed_requests, 1);
  EXPECT_EQ(observer.denied_requests, 1);
}

// A busy connection (park_after) stays in the inspector between requests
// and parks only after that long without one.
TEST_F(InspectTest, HttpBusyConnectionParksAfterAQuietSpell) {
  flow.dst_port = 8080;
  auto done = io.start(inspect_http(inspection(), HttpResume{.may_park = true,
                                                             .park_after = std::chrono::milliseconds(400),
                                                             .upstream = std::nullopt,
                                                             .initial = {}}));
  UniqueFd upstream;
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(send_all(client.far.get(), "GET /ok HTTP/1.1\r\nHost: api\r\n\r\n"));
    if (i == 0) upstream = accept_upstream();
    read_message(upstream.get());
    ASSERT_TRUE(send_all(upstream.get(), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"));
    EXPECT_EQ(read_message(client.far.get(), 2).rfind("HTTP/1.1 200 OK\r\n", 0), 0u);
    EXPECT_EQ(done.wait_for(std::chrono::milliseconds(150)), std::future_status::timeout);  // not yet
  }
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  InspectOutcome out = done.get();
  ASSERT_TRUE(out.parked);
  EXPECT_EQ(connector.calls, 1);
  io.run([&] { out.parked.reset(); });
}

// A takeover's boundary window: a TLS connection waiting for the rest of
// its ClientHello is handed back with the bytes read (none forwarded, no
// upstream), and an inspection resumed from them (as the new process runs
// it) decides on the whole hello and forwards it intact.
TEST_F(InspectTest, TlsBoundaryHandsBackThePartialHelloAndResumesFromIt) {
  const std::string hello = client_hello("api.example.com");
  auto first = start_tls();
  ASSERT_TRUE(send_all(client.far.get(), hello.substr(0, 40)));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // read, waiting for more
  io.run([&] { boundary.set(true); });
  ASSERT_EQ(first.wait_for(kWait), std::future_status::ready);
  InspectOutcome out = first.get();
  ASSERT_TRUE(out.client_pending);
  EXPECT_FALSE(out.handover);
  EXPECT_EQ(out.client_pending->read, hello.substr(0, 40));
  EXPECT_EQ(connector.calls, 0);
  EXPECT_EQ(observer.up, 0u);
  {
    std::lock_guard lock(observer.mu);
    EXPECT_TRUE(observer.decisions.empty());
  }
  io.run([&] {
    boundary.set(false);
    client.near = std::move(out.client_pending->client);
  });
  auto resumed = io.start(inspect_tls(inspection(), out.client_pending->read));
  ASSERT_TRUE(send_all(client.far.get(), hello.substr(40)));
  UniqueFd upstream = accept_upstream();
  std::string got(hello.size(), '\0');
  ASSERT_EQ(::recv(upstream.get(), got.data(), got.size(), MSG_WAITALL), static_cast<ssize_t>(hello.size()));
  EXPECT_EQ(got, hello);
  ASSERT_EQ(resumed.wait_for(kWait), std::future_status::ready);
  InspectOutcome done = resumed.get();
  ASSERT_TRUE(done.handover);
  std::lock_guard lock(observer.mu);
  EXPECT_EQ(observer.sni, "api.example.com");
  ASSERT_EQ(observer.decisions.size(), 1u);
  EXPECT_EQ(observer.decisions[0].verdict, policy::Verdict::allow);
  io.run([&] { done.handover.reset(); });
}

// A boundary window before the first request head is whole: the HTTP/1.1
// inspector hands the connection back with the bytes read (no upstream was
// connected, nothing forwarded), and an inspection resumed from them
// decides the whole head and forwards it as one request.
TEST_F(InspectTest, HttpBoundaryHandsBackAnIncompleteFirstHeadAndResumesFromIt) {
  flow.dst_port = 8080;
  const std::string head = "GET /ok HTTP/1.1\r\nHost: api\r\n\r\n";
  auto first = io.start(
      inspect_http(inspection(), HttpResume{.may_park = true, .upstream = std::nullopt, .initial = {}}));
  ASSERT_TRUE(send_all(client.far.get(), head.substr(0, 12)));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // read, waiting for more
  io.run([&] { boundary.set(true); });
  ASSERT_EQ(first.wait_for(kWait), std::future_status::ready);
  InspectOutcome out = first.get();
  ASSERT_TRUE(out.client_pending);
  EXPECT_FALSE(out.handover || out.parked);
  EXPECT_EQ(out.client_pending->read, head.substr(0, 12));
  EXPECT_EQ(connector.calls, 0);
  io.run([&] {
    boundary.set(false);
    client.near = std::move(out.client_pending->client);
  });
  auto resumed = io.start(inspect_http(
      inspection(),
      HttpResume{.may_park = true, .upstream = std::nullopt, .initial = out.client_pending->read}));
  ASSERT_TRUE(send_all(client.far.get(), head.substr(12)));
  UniqueFd upstream = accept_upstream();
  EXPECT_EQ(read_message(upstream.get()).rfind("GET /ok HTTP/1.1\r\n", 0), 0u);
  ASSERT_TRUE(send_all(upstream.get(), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"));
  EXPECT_EQ(read_message(client.far.get(), 2), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
  ASSERT_EQ(resumed.wait_for(kWait), std::future_status::ready);
  InspectOutcome done = resumed.get();
  ASSERT_TRUE(done.parked);
  EXPECT_EQ(observer.allowed_requests, 1);
  EXPECT_EQ(connector.calls, 1);
  io.run([&] { done.parked.reset(); });
}

// In a boundary window a busy connection (which would otherwise park only
// after a quiet spell) parks at its next request boundary: the request in
// flight when the window opens is answered first.
TEST_F(InspectTest, HttpBoundaryWindowParksAfterTheRequestInFlight) {
  flow.dst_port = 8080;
  auto done = io.start(inspect_http(inspection(), HttpResume{.may_park = true,
                                                             .park_after = std::chrono::seconds(30),
                                                             .upstream = std::nullopt,
                                                             .initial = {}}));
  ASSERT_TRUE(send_all(client.far.get(), "GET /ok HTTP/1.1\r\nHost: api\r\n\r\n"));
  UniqueFd upstream = accept_upstream();
  read_message(upstream.get());
  io.run([&] { boundary.set(true); });  // the request is in flight
  EXPECT_EQ(done.wait_for(std::chrono::milliseconds(150)), std::future_status::timeout);
  ASSERT_TRUE(send_all(upstream.get(), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"));
  EXPECT_EQ(read_message(client.far.get(), 2), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
  ASSERT_EQ(done.wait_for(std::chrono::seconds(2)), std::future_status::ready);  // not park_after's 30 s
  InspectOutcome out = done.get();
  ASSERT_TRUE(out.parked);
  EXPECT_EQ(observer.allowed_requests, 1);
  io.run([&] { out.parked.reset(); });
}

// A request that closes the connection (or a response that does) leaves
// nothing to park: the inspection waits for the end as before.
TEST_F(InspectTest, HttpConnectionCloseDoesNotPark) {
  flow.dst_port = 8080;
  auto done = io.start(
      inspect_http(inspection(), HttpResume{.may_park = true, .upstream = std::nullopt, .initial = {}}));
  ASSERT_TRUE(send_all(client.far.get(), "GET /ok HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"));
  UniqueFd upstream = accept_upstream();
  read_message(upstream.get());
  ASSERT_TRUE(
      send_all(upstream.get(), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"));
  EXPECT_EQ(read_message(client.far.get(), 2).rfind("HTTP/1.1 200 OK\r\n", 0), 0u);
  EXPECT_EQ(done.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout);  // not parked
  upstream.reset();  // the upstream closes as it said
  ::shutdown(client.far.get(), SHUT_WR);
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  EXPECT_FALSE(done.get().parked);
}

TEST_F(InspectTest, HttpDeniedFirstRequestNeverConnects) {
  auto done = start_http(8080);
  ASSERT_TRUE(send_all(client.far.get(), "GET /secret HTTP/1.1\r\nHost: api\r\n\r\n"));
  ::shutdown(client.far.get(), SHUT_WR);  // no linger: the refusal ends at the client's FIN
  const std::string refusal = read_to_end(client.far.get());
  EXPECT_EQ(refusal.rfind("HTTP/1.1 403 Forbidden\r\n", 0), 0u) << refusal;
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(done.get().ending.reason, EndReason::policy_deny);
  EXPECT_EQ(connector.calls, 0);
}

TEST_F(InspectTest, HttpMalformedRequestIsA400) {
  auto done = start_http(8080);
  ASSERT_TRUE(send_all(client.far.get(), "GET /ok HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"));
  ::shutdown(client.far.get(), SHUT_WR);  // no linger: the refusal ends at the client's FIN  // two Hosts
  const std::string refusal = read_to_end(client.far.get());
  EXPECT_EQ(refusal.rfind("HTTP/1.1 400 Bad Request\r\n", 0), 0u) << refusal;
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(done.get().ending.reason, EndReason::bad_request);
  EXPECT_EQ(connector.calls, 0);
  EXPECT_EQ(observer.denied_requests, 1);
}

TEST_F(InspectTest, HttpUpstreamRefusingIsA502) {
  connector.fail = true;
  auto done = start_http(8080);
  ASSERT_TRUE(send_all(client.far.get(), "GET /ok HTTP/1.1\r\nHost: api\r\n\r\n"));
  ::shutdown(client.far.get(), SHUT_WR);
  const std::string refusal = read_to_end(client.far.get());
  EXPECT_EQ(refusal.rfind("HTTP/1.1 502 Bad Gateway\r\n", 0), 0u) << refusal;
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  const InspectOutcome out = done.get();
  EXPECT_EQ(out.ending.reason, EndReason::upstream_connect_failed);
  EXPECT_EQ(out.ending.error, "refused by the test");
  std::lock_guard lock(observer.mu);
  ASSERT_EQ(observer.exchanges.size(), 1u);
  EXPECT_EQ(observer.exchanges[0].status, 502);
  EXPECT_EQ(observer.exchanges[0].error, "refused by the test");
}

TEST_F(InspectTest, HttpEveryRequestAllowedHandsOver) {
  auto done = start_http(8081);
  ASSERT_TRUE(send_all(client.far.get(), "GET /any HTTP/1.1\r\nHost: api\r\n\r\n"));
  UniqueFd upstream = accept_upstream();
  EXPECT_EQ(read_message(upstream.get()).rfind("GET /any HTTP/1.1\r\n", 0), 0u);
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  InspectOutcome out = done.get();
  ASSERT_TRUE(out.handover);  // nothing on this flow can be denied: the data path takes it
  EXPECT_TRUE(observer.uninspected);
  EXPECT_EQ(out.ending.reason, EndReason::unknown);
  io.run([&] { out.handover.reset(); });
}

TEST_F(InspectTest, HttpPrefaceIsHandedToTheHttp2Inspector) {
  auto done = start_http(8080);
  const std::string preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  ASSERT_TRUE(send_all(client.far.get(), preface));
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  InspectOutcome out = done.get();
  ASSERT_TRUE(out.http2);
  EXPECT_EQ(out.http2->initial, preface);
  EXPECT_EQ(connector.calls, 0);
  io.run([&] { out.http2.reset(); });
}

// --- HTTP/2: real nghttp2 frames from a test client and a test origin ---

TEST_F(InspectTest, Http2AllowedStreamIsForwardedBothWays) {
  auto done = start_h2(8080);
  h2.emplace(H2Peer::Role::client, client.far.get());
  const std::int32_t id = h2->request("POST", "/ok", "api", "ping");
  ASSERT_TRUE(h2->flush());
  upstream = accept_upstream();
  origin.emplace(H2Peer::Role::server, upstream.get());
  origin->respond = [](const H2Peer::Stream& request) { return std::pair{200, "pong:" + request.body}; };
  ASSERT_TRUE(origin->pump([&] { return origin->streams[1].ended; }));
  const auto& seen = origin->streams[1].headers;
  EXPECT_NE(std::find(seen.begin(), seen.end(), std::pair<std::string, std::string>{":path", "/ok"}),
            seen.end());
  EXPECT_NE(std::find(seen.begin(), seen.end(), std::pair<std::string, std::string>{":authority", "api"}),
            seen.end());
  ASSERT_TRUE(h2->pump([&] { return h2->closed(id); }));
  EXPECT_EQ(h2->streams[id].status, 200);
  EXPECT_EQ(h2->streams[id].body, "pong:ping");

  const InspectOutcome out = h2_finish(done);
  EXPECT_FALSE(out.handover);  // HTTP/2 is finished in userspace
  EXPECT_EQ(out.ending.reason, EndReason::unknown);
  EXPECT_EQ(connector.calls, 1);
  EXPECT_TRUE(observer.http2);
  EXPECT_EQ(observer.allowed_requests, 1);
  EXPECT_EQ(observer.up, 4u);    // DATA payload each way
  EXPECT_EQ(observer.down, 9u);  // "pong:ping"
  EXPECT_EQ(observer.active_streams, 0);
  std::lock_guard lock(observer.mu);
  EXPECT_FALSE(observer.recheck_streams);  // cleared when the inspection ended
  ASSERT_EQ(observer.exchanges.size(), 1u);
  const HttpExchange& x = observer.exchanges[0];
  EXPECT_EQ(x.protocol, "h2");
  EXPECT_EQ(x.method, "POST");
  EXPECT_EQ(x.path, "/ok");
  EXPECT_EQ(x.status, 200);
  EXPECT_TRUE(x.allowed);
  EXPECT_EQ(x.rule, "http-ok");
  EXPECT_EQ(x.bytes_up, 4u);
  EXPECT_EQ(x.bytes_down, 9u);
  EXPECT_EQ(x.reason, "");
}

TEST_F(InspectTest, Http2DeniedStreamIs403AndTheConnectionStays) {
  auto done = start_h2(8080);
  const std::int32_t denied = h2_get("/admin");
  EXPECT_EQ(h2->streams[denied].status, 403);
  EXPECT_EQ(h2->streams[denied].body, "Access denied\n");
  // Denials answer on the stream only: the next stream is decided too.
  const std::int32_t again = h2_get("/secret");
  EXPECT_EQ(h2->streams[again].status, 403);
  EXPECT_FALSE(h2->goaway);

  EXPECT_EQ(h2_finish(done).ending.reason, EndReason::unknown);
  EXPECT_EQ(connector.calls, 0);  // a denied stream never reaches the upstream
  EXPECT_EQ(observer.denied_requests, 2);
  EXPECT_EQ(observer.active_streams, 0);
  std::lock_guard lock(observer.mu);
  ASSERT_EQ(observer.decisions.size(), 2u);
  EXPECT_EQ(observer.decisions[0].verdict, policy::Verdict::deny);
  ASSERT_EQ(observer.exchanges.size(), 2u);
  EXPECT_EQ(observer.exchanges[0].path, "/admin");
  EXPECT_EQ(observer.exchanges[0].status, 403);
  EXPECT_FALSE(observer.exchanges[0].allowed);
  EXPECT_EQ(observer.exchanges[0].reason, "policy_deny");
}

TEST_F(InspectTest, Http2DrainSendsGoawayAndTheOpenStreamFinishes) {
  auto done = start_h2(8080);
  const std::int32_t id = h2_request_at_origin("/ok");

  // The daemon drains: it sets the flag, then pokes every HTTP/2
  // connection (poke_http2), which sends GOAWAY at once.
  draining = true;
  std::function<void()> poke;
  {
    std::lock_guard lock(observer.mu);
    poke = observer.recheck_streams;
  }
  ASSERT_TRUE(poke);
  poke();
  ASSERT_TRUE(h2->pump([&] { return h2->goaway; }));
  EXPECT_EQ(h2->goaway_code, static_cast<std::uint32_t>(NGHTTP2_NO_ERROR));
  EXPECT_EQ(h2->goaway_last_stream, id);  // the open stream may finish
  EXPECT_FALSE(h2->closed(id));

  origin->answer(1, 200, "late");
  ASSERT_TRUE(origin->flush());
  ASSERT_TRUE(h2->pump([&] { return h2->closed(id); }));
  EXPECT_EQ(h2->streams[id].status, 200);
  EXPECT_EQ(h2->streams[id].body, "late");

  EXPECT_EQ(h2_finish(done).ending.reason, EndReason::unknown);
  std::lock_guard lock(observer.mu);
  EXPECT_EQ(observer.goaways, std::vector<std::string>{"no_error"});
}

TEST_F(InspectTest, Http2UpstreamRefusingIsA502OnTheStream) {
  connector.fail = true;
  auto done = start_h2(8080);
  const std::int32_t id = h2_get("/ok");
  EXPECT_EQ(h2->streams[id].status, 502);
  EXPECT_EQ(h2->streams[id].body, "Bad Gateway\n");

  const InspectOutcome out = h2_finish(done);
  EXPECT_EQ(out.ending.reason, EndReason::upstream_connect_failed);
  EXPECT_EQ(out.ending.error, "refused by the test");
  std::lock_guard lock(observer.mu);
  ASSERT_EQ(observer.exchanges.size(), 1u);
  EXPECT_EQ(observer.exchanges[0].status, 502);
  EXPECT_TRUE(observer.exchanges[0].allowed);  // the verdict stays allow
  EXPECT_EQ(observer.exchanges[0].reason, "upstream_connect_failed");
}

TEST_F(InspectTest, Http2ReloadEndsAStreamNoLongerAllowed) {
  auto done = start_h2(8080);
  const std::int32_t id = h2_request_at_origin("/ok");

  // A reload that denies /ok: the hook the connection keeps for it
  // re-decides the open stream at once.
  auto denying = compile(std::string(kPods) + R"(
policy:
  default: deny
  rules:
    - {name: http-other, from: {pod: web}, to: {pod: api, ports: [8080]}, action: allow, http: [{path: /other}]}
)");
  ASSERT_TRUE(denying);
  store.publish(denying);
  std::function<void()> recheck;
  {
    std::lock_guard lock(observer.mu);
    recheck = observer.recheck_streams;
  }
  ASSERT_TRUE(recheck);
  recheck();
  ASSERT_TRUE(h2->pump([&] { return h2->closed(id); }));
  EXPECT_EQ(h2->streams[id].error, static_cast<std::uint32_t>(NGHTTP2_CANCEL));
  EXPECT_EQ(h2->streams[id].status, 0);  // no response reached the client

  h2_finish(done);
  std::lock_guard lock(observer.mu);
  ASSERT_EQ(observer.exchanges.size(), 1u);
  EXPECT_EQ(observer.exchanges[0].reason, "revoked");
  EXPECT_EQ(observer.exchanges[0].rule, "default");
}

TEST_F(InspectTest, Http2CancelResetsBothSides) {
  auto done = start_h2(8080);
  h2_request_at_origin("/ok");
  io.run([&] { cancel.cancel(); });  // revoke, drain timeout, idle: whoever holds the sockets resets them
  int error = 0;
  read_to_end(client.far.get(), &error);
  EXPECT_EQ(error, ECONNRESET);
  read_to_end(upstream.get(), &error);
  EXPECT_EQ(error, ECONNRESET);
  ASSERT_EQ(done.wait_for(kWait), std::future_status::ready);
  const InspectOutcome out = done.get();
  EXPECT_FALSE(out.handover);
  EXPECT_EQ(out.ending.reason, EndReason::unknown);  // the canceller records why
  EXPECT_EQ(observer.active_streams, 0);
}

}  // namespace
}  // namespace shunt::proxy

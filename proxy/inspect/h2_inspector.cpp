// HTTP/2 inspection (cleartext, prior knowledge): every stream on a
// connection whose flow has HTTP rules is decided on its own, with the same
// rule entries and the same canonical request model as HTTP/1.1.
//
// nghttp2 does the framing, HPACK and HTTP/2 semantics checks; this file
// joins two sessions:
//
//   client --(server session)--> shunt --(client session)--> upstream
//
// One upstream HTTP/2 connection per client connection, opened at the first
// allowed stream (a denied first stream never reaches the upstream). Why not
// a pool: the upstream is the client's original destination, so a pool could
// only be shared by connections of the same flow, and sharing one would mix
// the streams of different clients on one upstream connection (one client's
// flood or GOAWAY would hit others, and the transparent source address could
// not be kept). One-to-one keeps a client's failures its own.
//
// Flow control is end to end per stream: neither session sends
// WINDOW_UPDATE on its own (no_auto_window_update); bytes received on a
// stream are consumed on that stream (and so open its window again) only
// when the other side's data provider has taken them into a frame, i.e.
// when the other peer's window accepted them. The connection window is
// given back as soon as bytes are buffered: were it tied to forwarding too,
// a few streams whose readers stall would hold all of it and stall every
// other stream of the connection (head-of-line blocking). So a slow reader
// stops its own stream only, and per-connection memory is bounded by
// proxy.http2.stream_window per open stream (max_concurrent_streams of
// them), each direction.
//
// Denials answer on the stream only: gRPC (content-type application/grpc*)
// gets a trailers-only response with grpc-status 7, anything else
// `:status 403` and `Access denied\n`. The connection stays up.
//
// Bad input: nghttp2 answers framing/HPACK/semantics errors with GOAWAY and
// the right code, limits acknowledgements it would queue (flood),
// CONTINUATION frames per header block and stream resets per second
// (CVE-2023-44487, Debian's backports in 1.52.0-1+deb12u*); SETTINGS/PING
// frames go through a token bucket here, and header lists are bounded by
// limits.max_header_bytes here (counted as RFC 9113 §6.5.2 does). Every
// budget is in proxy.http2 (config.h, Http2Settings). A fatal error lingers
// (linger()) so the GOAWAY reaches a client that is still sending.
//
// A reload re-checks open streams at once (the observer's
// rechecks_streams hook, called by the reload for every connection it
// keeps, pokes the tick): a stream no longer allowed is ended, grpc-status
// 7 for gRPC, RST_STREAM(CANCEL) otherwise. The drain pokes it too, and the
// tick sends GOAWAY. The tick runs only when poked: an idle connection has
// no timer that fires.
//
// On the inspector seam (inspector.h) like the HTTP/1.1 and TLS
// inspectors: it owns the client socket and the upstream one it connects,
// reports through the observer (one `http` line per stream, counters), and
// returns only once every coroutine it started has ended, so the
// references in the Inspection outlive every use. It never hands over: an
// HTTP/2 connection is finished in userspace.
#include "common/async.h"
#include "common/io_buffer.h"
#include "common/reset.h"
#include "policy/canonical.h"
#include "proxy/end_reason.h"
#include "proxy/inspect/inspector.h"

#include <nghttp2/nghttp2.h>
#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace shunt::proxy {

namespace asio = boost::asio;
using asio::use_awaitable;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

// Reads and frame batches use pooled IoBuffers (common/io_buffer.h), taken
// when a socket is readable or a session has frames to send and given back
// once they are passed on: an idle connection holds no buffer (issue 16).
// What an idle connection still holds is mostly nghttp2's: each session
// keeps a frame buffer of ~16 KiB; the upstream session exists only once an
// allowed stream has connected (docs/benchmarks.md, "Idle HTTP/2").
constexpr std::size_t kReadChunk = IoBuffer::kBytes;
// Windows, stream and flood limits come from proxy.http2 (config/config.h,
// Http2Settings; docs/config.md). Rapid reset (CVE-2023-44487): nghttp2's
// token bucket of stream resets ends the connection with
// GOAWAY(INTERNAL_ERROR) past it, as nghttp2 1.57+ does by default.
// How long input is read and dropped after a fatal client error (linger()).
constexpr auto kLinger = std::chrono::seconds(1);

// A token bucket: `burst` tokens, refilled at `rate` per second.
class TokenBucket {
 public:
  TokenBucket(std::uint32_t burst, std::uint32_t rate) : burst_(burst), rate_(rate), tokens_(burst) {}
  bool take() {
    const auto now = Clock::now();
    tokens_ = std::min<double>(burst_, tokens_ + std::chrono::duration<double>(now - last_).count() * rate_);
    last_ = now;
    if (tokens_ < 1) return false;
    tokens_ -= 1;
    return true;
  }

 private:
  double burst_, rate_, tokens_;
  Clock::time_point last_ = Clock::now();
};

// shunt_http2_active_streams counts every Stream object alive. Every
// Stream is gone before inspect_h2 returns (H2Proxy::release), so the
// observer outlives the count.
struct ActiveStream {
  explicit ActiveStream(ConnectionObserver& o) : observer(o) { observer.http2_streams(+1); }
  ~ActiveStream() { observer.http2_streams(-1); }
  ActiveStream(const ActiveStream&) = delete;
  ActiveStream& operator=(const ActiveStream&) = delete;
  ConnectionObserver& observer;
};

std::string goaway_code_name(std::uint32_t code) {
  switch (code) {
    case NGHTTP2_NO_ERROR:
      return "no_error";
    case NGHTTP2_PROTOCOL_ERROR:
      return "protocol_error";
    case NGHTTP2_INTERNAL_ERROR:
      return "internal_error";
    case NGHTTP2_FLOW_CONTROL_ERROR:
      return "flow_control_error";
    case NGHTTP2_FRAME_SIZE_ERROR:
      return "frame_size_error";
    case NGHTTP2_COMPRESSION_ERROR:
      return "compression_error";
    case NGHTTP2_ENHANCE_YOUR_CALM:
      return "enhance_your_calm";
    default:
      return "other";
  }
}

using Header = std::pair<std::string, std::string>;
using Headers = std::vector<Header>;

// Bytes received on one side of a stream, waiting for the other side's
// window, and how that direction ends.
struct Pipe {
  std::string buf;
  std::size_t off = 0;
  bool eof = false;                 // END_STREAM received (or the answer is complete)
  std::optional<Headers> trailers;  // sent after the data, carrying END_STREAM
  [[nodiscard]] std::size_t size() const { return buf.size() - off; }
  // Drained: the storage goes too, so a quiet stream (a gRPC stream
  // between messages) holds none.
  void clear() {
    std::string().swap(buf);
    off = 0;
  }
};

struct Stream {
  explicit Stream(ConnectionObserver& observer) : gauge(observer) {}
  std::int32_t id = 0;           // on the client connection
  std::int32_t upstream_id = 0;  // 0: not (yet) sent upstream
  Headers collecting;            // the header block being received (either side)
  std::size_t header_bytes = 0;
  std::string method, path, authority, host, scheme;
  Headers headers;  // regular request headers, as matched and forwarded
  bool decided = false;
  bool allowed = false;
  bool grpc = false;
  bool revoked = false;
  bool response_started = false;
  bool upstream_closed = false;
  std::string rule;
  int status = 0;
  std::optional<int> grpc_status;
  std::uint64_t bytes_up = 0;  // DATA payload forwarded each way (the access log's)
  std::uint64_t bytes_down = 0;
  Pipe up;    // client -> upstream
  Pipe down;  // upstream -> client
  Clock::time_point started = Clock::now();
  std::optional<EndReason> failed;  // answered by shunt for the upstream (502/504, grpc-status 14)
  ActiveStream gauge;
};

std::optional<int> parse_int(std::string_view v) {
  int n = 0;
  if (v.empty() || v.size() > 9) return std::nullopt;
  for (char c : v) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + (c - '0');
  }
  return n;
}

const std::string* find_header(const Headers& h, std::string_view name) {
  for (const auto& [n, v] : h)
    if (n == name) return &v;
  return nullptr;
}

// nghttp2 copies name/value pairs on submit, so views into `h` suffice.
std::vector<nghttp2_nv> to_nv(const Headers& h) {
  std::vector<nghttp2_nv> nv;
  nv.reserve(h.size());
  for (const auto& [n, v] : h) {
    nv.push_back(nghttp2_nv{reinterpret_cast<std::uint8_t*>(const_cast<char*>(n.data())),
                            reinterpret_cast<std::uint8_t*>(const_cast<char*>(v.data())), n.size(), v.size(),
                            NGHTTP2_NV_FLAG_NONE});
  }
  return nv;
}

struct SessionDeleter {
  void operator()(nghttp2_session* s) const { nghttp2_session_del(s); }
};
using SessionPtr = std::unique_ptr<nghttp2_session, SessionDeleter>;

class H2Proxy : public std::enable_shared_from_this<H2Proxy> {
 public:
  H2Proxy(Inspection& in, const asio::any_io_executor& ex)
      : in_(in),
        flow_(in.flow),
        policy_(in.policy.current()),
        limits_(in.settings.http2),
        control_frames_(limits_.control_frame_burst, limits_.control_frame_rate),
        upstream_(ex),
        client_wake_(ex, Clock::time_point::max()),
        upstream_wake_(ex, Clock::time_point::max()),
        done_wake_(ex, Clock::time_point::max()),
        tick_(ex) {}

  // Sets up both sessions and reads the client until it is done.
  asio::awaitable<void> run(std::string initial);
  asio::awaitable<void> wind_down();
  void wake_all() {
    client_wake_.cancel();
    upstream_wake_.cancel();
    done_wake_.cancel();
  }
  // Runs the tick: a reload re-checks the streams, a drain sends GOAWAY.
  void poke() { tick_.cancel(); }
  // Cancelled from outside (revoke, drain timeout, idle) or ended from
  // inside (a task failed): both sockets are reset and every wait ends.
  [[nodiscard]] bool aborted() const { return self_aborted_ || in_.cancel.cancelled(); }
  void abort() {
    if (aborted()) return;
    self_aborted_ = true;
    ending_.aborted = true;
    reset_both();
  }
  void reset_both() {
    reset_socket(in_.client);
    reset_socket(upstream_);
    tick_.cancel();
    wake_all();
  }
  // After run(): the streams (their gauge reports to the observer) and the
  // sessions go now, not whenever the last reference to this object does.
  void release() {
    by_upstream_.clear();
    streams_.clear();
    client_.reset();
    server_.reset();
  }
  Ending take_ending() { return std::move(ending_); }
  [[nodiscard]] tcp::socket& upstream() { return upstream_; }
  [[nodiscard]] std::uint64_t id() const { return in_.observer.id(); }

 private:
  // A session toward the client (server) or the upstream (client), with
  // its callbacks, limits, SETTINGS and connection window; null on failure.
  SessionPtr open_session(bool server);
  // Feeds what `socket` has to `session`; false when the socket or the
  // session failed (the error is in `ec` or `rv`). Waits for readability
  // first and holds a buffer only for the read.
  asio::awaitable<bool> receive(tcp::socket& socket, nghttp2_session* session, boost::system::error_code& ec,
                                ssize_t& rv);
  asio::awaitable<void> read_client(std::string initial);
  asio::awaitable<void> read_upstream();
  asio::awaitable<void> linger();
  asio::awaitable<void> write_loop(bool to_client);
  asio::awaitable<void> write_frames(bool to_client);
  enum class Sent { nothing, some, failed };
  asio::awaitable<Sent> send_pending(nghttp2_session* session, tcp::socket& socket);
  asio::awaitable<void> tick();
  asio::awaitable<void> connect_upstream();
  void spawn(asio::awaitable<void> a);

  Stream* stream(std::int32_t id) {
    auto it = streams_.find(id);
    return it == streams_.end() ? nullptr : it->second.get();
  }
  Stream* upstream_stream(std::int32_t up_id) {
    auto it = by_upstream_.find(up_id);
    return it == by_upstream_.end() ? nullptr : stream(it->second);
  }

  void decide(Stream& s);
  void answer(Stream& s, int status, std::string_view body, bool allowed);
  void deny(Stream& s, std::string_view message);
  void fail_upstream(Stream& s, EndReason why, int status);
  void grpc_answer(Stream& s, int code, std::string_view message);
  void submit_upstream(Stream& s);
  void upstream_gone();
  void recheck(const policy::Policy& policy);
  void log_stream(const Stream& s);

  // --- nghttp2 callbacks (user_data is the H2Proxy) ---
  static int on_begin_headers(nghttp2_session*, const nghttp2_frame*, void*);
  static int on_header(nghttp2_session*, const nghttp2_frame*, const std::uint8_t*, std::size_t,
                       const std::uint8_t*, std::size_t, std::uint8_t, void*);
  static int on_frame_recv(nghttp2_session*, const nghttp2_frame*, void*);
  static int on_data(nghttp2_session*, std::uint8_t, std::int32_t, const std::uint8_t*, std::size_t, void*);
  static int on_stream_close(nghttp2_session*, std::int32_t, std::uint32_t, void*);
  static int on_frame_send(nghttp2_session*, const nghttp2_frame*, void*);
  static ssize_t read_up(nghttp2_session*, std::int32_t, std::uint8_t*, std::size_t, std::uint32_t*,
                         nghttp2_data_source*, void*);
  static ssize_t read_down(nghttp2_session*, std::int32_t, std::uint8_t*, std::size_t, std::uint32_t*,
                           nghttp2_data_source*, void*);

  bool is_server(nghttp2_session* s) const { return s == server_.get(); }
  ssize_t pull(Pipe& pipe, nghttp2_session* session, std::int32_t stream_id, nghttp2_session* source,
               std::int32_t source_id, std::uint8_t* buf, std::size_t length, std::uint32_t* flags);

  Inspection& in_;  // inspect_h2's, which outlives every task (run() waits for them)
  const policy::Flow flow_;
  std::shared_ptr<const policy::Policy> policy_;  // the snapshot streams were last decided under
  const config::Http2Settings limits_;            // from the snapshot the connection started under
  TokenBucket control_frames_;                    // SETTINGS and PING from the client
  SessionPtr server_;                             // toward the client
  SessionPtr client_;     // toward the upstream; null until the first connect succeeded
  tcp::socket upstream_;  // connected at the first allowed stream
  Ending ending_;         // the first cause this inspection met
  bool self_aborted_ = false;
  std::map<std::int32_t, std::unique_ptr<Stream>> streams_;
  std::unordered_map<std::int32_t, std::int32_t> by_upstream_;
  std::vector<std::int32_t> waiting_;  // allowed, waiting for the upstream connection
  bool connecting_ = false;
  bool upstream_dead_ = false;
  bool closing_ = false;
  bool goaway_sent_ = false;
  int running_ = 0;  // spawned coroutines still alive
  asio::steady_timer client_wake_, upstream_wake_, done_wake_;
  asio::steady_timer tick_;
};

SessionPtr H2Proxy::open_session(bool server) {
  nghttp2_session_callbacks* cbs = nullptr;
  if (nghttp2_session_callbacks_new(&cbs) != 0) return nullptr;
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
  nghttp2_option* opt = nullptr;
  if (nghttp2_option_new(&opt) != 0) {
    nghttp2_session_callbacks_del(cbs);
    return nullptr;
  }
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_option_set_stream_reset_rate_limit(opt, limits_.reset_burst, limits_.reset_rate);
  nghttp2_option_set_max_continuations(opt, limits_.max_continuations);
  // ACKs (SETTINGS, PING) and RST_STREAMs queued for a peer that does not
  // read: past it nghttp2 fails the session (NGHTTP2_ERR_FLOODED). Twice
  // the control-frame burst, so a client that floods while reading meets
  // the bucket in on_frame_recv first (and a clean GOAWAY); this cap is for
  // the one whose ACKs pile up unread.
  nghttp2_option_set_max_outbound_ack(opt, std::size_t{2} * limits_.control_frame_burst);
  nghttp2_session* raw = nullptr;
  const int rv = server ? nghttp2_session_server_new2(&raw, cbs, this, opt)
                        : nghttp2_session_client_new2(&raw, cbs, this, opt);
  SessionPtr session(raw);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);
  if (rv != 0) return nullptr;

  const auto max_header = in_.settings.limits.max_header_bytes;
  const nghttp2_settings_entry server_settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, limits_.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, limits_.stream_window},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, max_header},
  };
  const nghttp2_settings_entry client_settings[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, limits_.stream_window},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, max_header},
  };
  const auto& settings = server ? server_settings : client_settings;
  if (nghttp2_submit_settings(session.get(), NGHTTP2_FLAG_NONE, settings, std::size(settings)) != 0 ||
      nghttp2_session_set_local_window_size(session.get(), NGHTTP2_FLAG_NONE, 0,
                                            static_cast<std::int32_t>(limits_.connection_window)) != 0) {
    return nullptr;
  }
  return session;
}

void H2Proxy::spawn(asio::awaitable<void> a) {
  ++running_;
  // running_ counts the coroutine until it ends, however it ends; an
  // exception also ends the connection, then goes to guarded_spawn's log.
  guarded_spawn(
      tick_.get_executor(), "HTTP/2 proxy task",
      [](std::shared_ptr<H2Proxy> self, asio::awaitable<void> body) -> asio::awaitable<void> {
        struct Done {
          H2Proxy& p;
          ~Done() {
            --p.running_;
            p.done_wake_.cancel();
          }
        } done{*self};
        try {
          co_await std::move(body);
        } catch (...) {
          self->abort();
          throw;
        }
      }(shared_from_this(), std::move(a)),
      Failure::survivable);
}

// ------------------------------------------------------------------ streams

void H2Proxy::log_stream(const Stream& s) {
  std::string reason;
  if (s.failed)
    reason = to_string(*s.failed);
  else if (s.revoked)
    reason = to_string(EndReason::revoked);
  else if (!s.allowed)
    reason =
        to_string(s.status == 403 || s.grpc_status == 7 ? EndReason::policy_deny : EndReason::bad_request);
  in_.observer.exchanged(HttpExchange{
      .method = s.method,
      .path = s.path,
      .host = s.host,
      .rule = s.rule,
      .allowed = s.allowed && !s.revoked,
      .status = s.status,
      .protocol = "h2",
      .grpc_status = s.grpc_status,
      .bytes_up = s.bytes_up,
      .bytes_down = s.bytes_down,
      .duration = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - s.started),
      .reason = std::move(reason),
      .error = {},
      // The configured data path, as HTTP/2 lines have always named it
      // (the bytes are moved here, in userspace, whatever it says).
      .datapath = std::string(config::to_string(in_.settings.datapath)),
  });
}

// A complete answer from shunt itself (403 deny, 400 bad request).
void H2Proxy::answer(Stream& s, int status, std::string_view body, bool allowed) {
  s.allowed = allowed;
  s.status = status;
  s.response_started = true;
  s.down.clear();
  s.down.buf = body;
  s.down.eof = true;
  const std::string code = std::to_string(status);
  const Headers h{
      {":status", code}, {"content-type", "text/plain"}, {"content-length", std::to_string(body.size())}};
  const auto nv = to_nv(h);
  nghttp2_data_provider provider{};
  provider.read_callback = read_down;
  nghttp2_submit_response(server_.get(), s.id, nv.data(), nv.size(), &provider);
}

// A trailers-only gRPC answer (gRPC over HTTP/2: one HEADERS frame with
// END_STREAM) carrying `code` and `message`.
void H2Proxy::grpc_answer(Stream& s, int code, std::string_view message) {
  s.status = 200;
  s.grpc_status = code;
  s.response_started = true;
  s.down.clear();
  s.down.eof = true;
  const Headers h{{":status", "200"},
                  {"content-type", "application/grpc"},
                  {"grpc-status", std::to_string(code)},
                  {"grpc-message", std::string(message)}};
  const auto nv = to_nv(h);
  nghttp2_submit_response(server_.get(), s.id, nv.data(), nv.size(), nullptr);
}

void H2Proxy::deny(Stream& s, std::string_view message) {
  s.allowed = false;
  if (s.grpc) {
    grpc_answer(s, 7, message);  // PERMISSION_DENIED
    return;
  }
  answer(s, 403, "Access denied\n", false);
}

// An allowed stream the upstream could not take: what Envoy answers too,
// 502 (504 when the connect timed out) or, for gRPC, UNAVAILABLE (14),
// which gRPC clients may retry. The verdict stays allow; the access log
// says why it failed.
void H2Proxy::fail_upstream(Stream& s, EndReason why, int status) {
  s.failed = why;
  if (s.grpc) {
    grpc_answer(s, 14, status == 504 ? "upstream connect timed out" : "upstream unavailable");
    return;
  }
  answer(s, status, status == 504 ? "Gateway Timeout\n" : "Bad Gateway\n", true);
}

void H2Proxy::decide(Stream& s) {
  s.decided = true;
  const config::ProxySettings& settings = in_.settings;
  const std::string* host_header = find_header(s.headers, "host");
  std::string_view reject;
  if (s.method == "CONNECT") reject = "CONNECT over HTTP/2 is not inspected";
  // Methods are case-sensitive and `{method: DELETE}` matches only that
  // spelling, but some upstreams fold case (Werkzeug upper-cases the
  // method): `delete` would pass the deny and be served as DELETE. HTTP/1.1
  // never gets here with one (llhttp knows upper-case methods only).
  else if (std::any_of(s.method.begin(), s.method.end(), [](char c) { return c >= 'a' && c <= 'z'; }))
    reject = ":method with lower-case letters";
  // :authority and Host naming different hosts is ambiguous (RFC 9113 §8.3.1
  // says to prefer :authority; shunt refuses instead of choosing).
  else if (host_header && !s.authority.empty() && *host_header != s.authority)
    reject = ":authority and host differ";
  else if (s.path.empty() || (s.path[0] != '/' && !(s.path == "*" && s.method == "OPTIONS")))
    reject = ":path is not origin-form";
  std::optional<std::string_view> authority;
  if (!s.authority.empty())
    authority = s.authority;
  else if (host_header)
    authority = *host_header;
  policy::canonical::Request canonical;
  if (reject.empty()) {
    canonical = policy::canonical::request(s.method, s.path, authority, settings.http);
    reject = canonical.error;
  }
  if (!reject.empty()) {
    spdlog::debug("connection {}: stream {} refused: {}", id(), s.id, reject);
    in_.observer.counted_request(true, false);
    answer(s, 400, "Bad Request\n", false);
    return;
  }
  // Decided and forwarded: the canonical target and authority, never the raw ones.
  s.path = canonical.target;
  s.authority = canonical.authority;
  s.host = canonical.host;
  std::erase_if(s.headers, [](const Header& h) { return h.first == "host"; });
  if (const std::string* ct = find_header(s.headers, "content-type"))
    s.grpc = ct->starts_with("application/grpc");

  const policy::HttpRequest request{s.method, s.path, s.authority, s.headers};
  const policy::Decision decision = policy_->decide_http(flow_, request);
  in_.observer.decided(decision);
  s.rule = decision.rule;
  if (decision.verdict != policy::Verdict::allow) {
    in_.observer.counted_request(true, false);
    spdlog::debug("connection {}: stream {} {} {} denied: {}", id(), s.id, s.method, s.path, decision.reason);
    deny(s, "denied by shunt policy");
    return;
  }
  in_.observer.counted_request(true, true);
  s.allowed = true;
  if (upstream_dead_) {
    nghttp2_submit_rst_stream(server_.get(), NGHTTP2_FLAG_NONE, s.id, NGHTTP2_REFUSED_STREAM);
    return;
  }
  if (upstream_.is_open() && !connecting_) {
    submit_upstream(s);
    return;
  }
  waiting_.push_back(s.id);
  if (!connecting_) {
    connecting_ = true;
    spawn(connect_upstream());
  }
}

void H2Proxy::submit_upstream(Stream& s) {
  Headers h{{":method", s.method}, {":scheme", s.scheme.empty() ? "http" : s.scheme}, {":path", s.path}};
  if (!s.authority.empty()) h.emplace_back(":authority", s.authority);
  h.insert(h.end(), s.headers.begin(), s.headers.end());
  const auto nv = to_nv(h);
  nghttp2_data_provider provider{};
  provider.read_callback = read_up;
  const bool body = !(s.up.eof && s.up.size() == 0 && !s.up.trailers);
  const std::int32_t id = nghttp2_submit_request(client_.get(), nullptr, nv.data(), nv.size(),
                                                 body ? &provider : nullptr, nullptr);
  if (id < 0) {
    spdlog::debug("connection {}: stream {}: upstream refused a new stream: {}", in_.observer.id(), s.id,
                  nghttp2_strerror(id));
    nghttp2_submit_rst_stream(server_.get(), NGHTTP2_FLAG_NONE, s.id, NGHTTP2_REFUSED_STREAM);
    return;
  }
  s.upstream_id = id;
  by_upstream_[id] = s.id;
}

// The upstream connection ended (EOF, error, or its session finished):
// streams still waiting for it are refused, and the client is told to open
// a new connection for more.
void H2Proxy::upstream_gone() {
  if (upstream_dead_) return;
  upstream_dead_ = true;
  for (auto& [id, s] : streams_) {
    if (s->upstream_id > 0 && !s->upstream_closed) {
      s->upstream_closed = true;
      if (s->revoked || nghttp2_session_find_stream(server_.get(), id) == nullptr) continue;
      // No response yet: the client gets one (502 / grpc-status 14); a
      // response cut short can only be reset.
      if (!s->response_started)
        fail_upstream(*s, EndReason::upstream_reset, 502);
      else if (!s->down.eof)
        nghttp2_submit_rst_stream(server_.get(), NGHTTP2_FLAG_NONE, id, NGHTTP2_INTERNAL_ERROR);
    }
  }
  for (std::int32_t id : waiting_)
    nghttp2_submit_rst_stream(server_.get(), NGHTTP2_FLAG_NONE, id, NGHTTP2_REFUSED_STREAM);
  waiting_.clear();
  if (!goaway_sent_) {
    goaway_sent_ = true;
    nghttp2_submit_goaway(server_.get(), NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(server_.get()), NGHTTP2_NO_ERROR, nullptr,
                          0);
  }
  client_wake_.cancel();
}

// After a reload: streams decided under the old snapshot are decided again;
// one no longer allowed ends now.
void H2Proxy::recheck(const policy::Policy& policy) {
  for (auto& [id, sp] : streams_) {
    Stream& s = *sp;
    if (!s.decided || !s.allowed || s.revoked) continue;
    if (nghttp2_session_find_stream(server_.get(), id) == nullptr) continue;
    const policy::HttpRequest request{s.method, s.path, s.authority, s.headers};
    const policy::Decision d = policy.decide_http(flow_, request);
    if (d.verdict == policy::Verdict::allow) continue;
    spdlog::info("connection {}: stream {} {} {} no longer allowed ({}); ending it", in_.observer.id(), id,
                 s.method, s.path, d.rule);
    s.revoked = true;
    s.rule = d.rule;
    if (s.upstream_id > 0 && !s.upstream_closed)
      nghttp2_submit_rst_stream(client_.get(), NGHTTP2_FLAG_NONE, s.upstream_id, NGHTTP2_CANCEL);
    std::erase(waiting_, id);
    if (s.grpc && !s.response_started) {
      deny(s, "revoked by shunt policy");
    } else if (s.grpc) {
      // The response has begun: end its data now and close with grpc-status 7.
      s.down.clear();
      s.down.eof = true;
      s.down.trailers = Headers{{"grpc-status", "7"}, {"grpc-message", "revoked by shunt policy"}};
      s.grpc_status = 7;
      nghttp2_session_resume_data(server_.get(), id);
    } else {
      nghttp2_submit_rst_stream(server_.get(), NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
    }
  }
}

// ---------------------------------------------------------------- callbacks

int H2Proxy::on_begin_headers(nghttp2_session* session, const nghttp2_frame* frame, void* user) {
  auto& self = *static_cast<H2Proxy*>(user);
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  if (self.is_server(session)) {
    if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
      auto s = std::make_unique<Stream>(self.in_.observer);
      s->id = frame->hd.stream_id;
      self.streams_[s->id] = std::move(s);
    } else if (Stream* s = self.stream(frame->hd.stream_id)) {
      s->collecting.clear();
      s->header_bytes = 0;
    }
  } else if (Stream* s = self.upstream_stream(frame->hd.stream_id)) {
    s->collecting.clear();
    s->header_bytes = 0;
  }
  return 0;
}

int H2Proxy::on_header(nghttp2_session* session, const nghttp2_frame* frame, const std::uint8_t* name,
                       std::size_t namelen, const std::uint8_t* value, std::size_t valuelen, std::uint8_t,
                       void* user) {
  auto& self = *static_cast<H2Proxy*>(user);
  Stream* s =
      self.is_server(session) ? self.stream(frame->hd.stream_id) : self.upstream_stream(frame->hd.stream_id);
  if (s == nullptr) return 0;
  // RFC 9113 §6.5.2 size: name + value + 32 per field. Over the limit the
  // stream is reset (HPACK state stays in sync: nghttp2 keeps decoding).
  s->header_bytes += namelen + valuelen + 32;
  if (s->header_bytes > self.in_.settings.limits.max_header_bytes) {
    spdlog::debug("connection {}: header list over limits.max_header_bytes; resetting stream", self.id());
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  s->collecting.emplace_back(std::string(reinterpret_cast<const char*>(name), namelen),
                             std::string(reinterpret_cast<const char*>(value), valuelen));
  return 0;
}

int H2Proxy::on_frame_send(nghttp2_session* session, const nghttp2_frame* frame, void* user) {
  auto& self = *static_cast<H2Proxy*>(user);
  if (self.is_server(session) && frame->hd.type == NGHTTP2_GOAWAY)
    self.in_.observer.http2_goaway(goaway_code_name(frame->goaway.error_code));
  return 0;
}

int H2Proxy::on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame, void* user) {
  auto& self = *static_cast<H2Proxy*>(user);
  const bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  if (self.is_server(session)) {
    // SETTINGS/PING flood: each costs an ACK and a pass through nghttp2;
    // past the client's budget the connection ends with ENHANCE_YOUR_CALM
    // (the callback failure stops nghttp2 reading the rest of the input).
    if ((frame->hd.type == NGHTTP2_PING || frame->hd.type == NGHTTP2_SETTINGS) &&
        (frame->hd.flags & NGHTTP2_FLAG_ACK) == 0 && !self.control_frames_.take()) {
      spdlog::debug("connection {}: SETTINGS/PING over proxy.http2.control_frame_* budget; GOAWAY",
                    self.id());
      self.ending_.note(EndReason::bad_request, "SETTINGS/PING flood");
      nghttp2_session_terminate_session(session, NGHTTP2_ENHANCE_YOUR_CALM);
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    Stream* s = self.stream(frame->hd.stream_id);
    if (s == nullptr) return 0;
    if (frame->hd.type == NGHTTP2_HEADERS) {
      if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        for (auto& [n, v] : s->collecting) {
          if (n == ":method")
            s->method = v;
          else if (n == ":path")
            s->path = v;
          else if (n == ":authority")
            s->authority = v;
          else if (n == ":scheme")
            s->scheme = v;
          else if (!n.starts_with(':'))
            s->headers.emplace_back(std::move(n), std::move(v));
        }
        s->collecting.clear();
        s->up.eof = end_stream;
        self.decide(*s);
      } else {
        s->up.trailers = std::move(s->collecting);
        s->up.eof = true;
      }
    } else if (frame->hd.type == NGHTTP2_DATA && end_stream) {
      s->up.eof = true;
    } else {
      return 0;
    }
    if (s->upstream_id > 0 && !s->upstream_closed)
      nghttp2_session_resume_data(self.client_.get(), s->upstream_id);
    self.upstream_wake_.cancel();
    return 0;
  }

  Stream* s = self.upstream_stream(frame->hd.stream_id);
  if (s == nullptr || s->revoked) return 0;
  if (frame->hd.type == NGHTTP2_HEADERS) {
    if (frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
      const std::string* st = find_header(s->collecting, ":status");
      const int status = st ? parse_int(*st).value_or(0) : 0;
      const auto nv = to_nv(s->collecting);
      if (status >= 100 && status < 200) {
        nghttp2_submit_headers(self.server_.get(), NGHTTP2_FLAG_NONE, s->id, nullptr, nv.data(), nv.size(),
                               nullptr);
      } else {
        s->status = status;
        s->response_started = true;
        if (const std::string* g = find_header(s->collecting, "grpc-status")) s->grpc_status = parse_int(*g);
        nghttp2_data_provider provider{};
        provider.read_callback = read_down;
        s->down.eof = end_stream;
        nghttp2_submit_response(self.server_.get(), s->id, nv.data(), nv.size(),
                                end_stream ? nullptr : &provider);
      }
      s->collecting.clear();
    } else {
      if (const std::string* g = find_header(s->collecting, "grpc-status")) s->grpc_status = parse_int(*g);
      s->down.trailers = std::move(s->collecting);
      s->down.eof = true;
    }
  } else if (frame->hd.type == NGHTTP2_DATA && end_stream) {
    s->down.eof = true;
  } else {
    return 0;
  }
  if (s->response_started && nghttp2_session_find_stream(self.server_.get(), s->id))
    nghttp2_session_resume_data(self.server_.get(), s->id);
  self.client_wake_.cancel();
  return 0;
}

int H2Proxy::on_data(nghttp2_session* session, std::uint8_t, std::int32_t stream_id, const std::uint8_t* data,
                     std::size_t len, void* user) {
  auto& self = *static_cast<H2Proxy*>(user);
  // The connection window comes back at once; the stream's when forwarded.
  nghttp2_session_consume_connection(session, len);
  if (self.is_server(session)) {
    Stream* s = self.stream(stream_id);
    const bool forward =
        s && s->allowed && !s->revoked && !(s->upstream_id > 0 && s->upstream_closed) && !self.upstream_dead_;
    if (!forward) {
      // Nobody will read it: give the window back now.
      nghttp2_session_consume_stream(session, stream_id, len);
      return 0;
    }
    s->up.buf.append(reinterpret_cast<const char*>(data), len);
    s->bytes_up += len;
    if (s->upstream_id > 0) nghttp2_session_resume_data(self.client_.get(), s->upstream_id);
    self.upstream_wake_.cancel();
    self.in_.observer.moved(Direction::up, len);
    return 0;
  }
  Stream* s = self.upstream_stream(stream_id);
  if (s == nullptr || s->revoked || nghttp2_session_find_stream(self.server_.get(), s->id) == nullptr) {
    nghttp2_session_consume_stream(session, stream_id, len);
    return 0;
  }
  s->down.buf.append(reinterpret_cast<const char*>(data), len);
  s->bytes_down += len;
  nghttp2_session_resume_data(self.server_.get(), s->id);
  self.client_wake_.cancel();
  self.in_.observer.moved(Direction::down, len);
  return 0;
}

int H2Proxy::on_stream_close(nghttp2_session* session, std::int32_t stream_id, std::uint32_t code,
                             void* user) {
  auto& self = *static_cast<H2Proxy*>(user);
  if (self.is_server(session)) {
    Stream* s = self.stream(stream_id);
    if (s == nullptr) return 0;
    if (s->decided) self.log_stream(*s);
    // The client side is over (complete, or reset by either end): the
    // upstream stream has nothing more to give it.
    if (s->upstream_id > 0 && !s->upstream_closed && !self.upstream_dead_) {
      nghttp2_submit_rst_stream(self.client_.get(), NGHTTP2_FLAG_NONE, s->upstream_id,
                                code == NGHTTP2_NO_ERROR ? static_cast<std::uint32_t>(NGHTTP2_CANCEL) : code);
      self.upstream_wake_.cancel();
    }
    std::erase(self.waiting_, stream_id);
    // Bytes buffered for the upstream are dropped (their connection window
    // was given back when they arrived).
    s->up.clear();
    s->up.eof = true;
    // Closed in nghttp2 only after this callback returns: erase by hand.
    const bool upstream_open = s->upstream_id > 0 && !s->upstream_closed && !self.upstream_dead_;
    if (!upstream_open) {
      if (s->upstream_id > 0) self.by_upstream_.erase(s->upstream_id);
      self.streams_.erase(stream_id);
    } else {
      s->id = stream_id;
      s->revoked = true;  // nothing more goes to the client
    }
    return 0;
  }
  Stream* s = self.upstream_stream(stream_id);
  if (s == nullptr) return 0;
  s->upstream_closed = true;
  const bool client_open = nghttp2_session_find_stream(self.server_.get(), s->id) != nullptr && !s->revoked;
  if (client_open && (code != NGHTTP2_NO_ERROR || !s->down.eof)) {
    // Reset by the upstream, or closed before its response ended.
    nghttp2_submit_rst_stream(
        self.server_.get(), NGHTTP2_FLAG_NONE, s->id,
        code == NGHTTP2_NO_ERROR ? static_cast<std::uint32_t>(NGHTTP2_INTERNAL_ERROR) : code);
    self.client_wake_.cancel();
  }
  self.by_upstream_.erase(stream_id);
  if (nghttp2_session_find_stream(self.server_.get(), s->id) == nullptr) self.streams_.erase(s->id);
  return 0;
}

// Moves buffered bytes of `pipe` into a DATA frame of `session`'s stream and
// consumes them on `source`'s stream (the session they came in on), which
// reopens that peer's stream window by exactly what this peer's window took.
ssize_t H2Proxy::pull(Pipe& pipe, nghttp2_session* session, std::int32_t stream_id, nghttp2_session* source,
                      std::int32_t source_id, std::uint8_t* buf, std::size_t length, std::uint32_t* flags) {
  const std::size_t n = std::min(length, pipe.size());
  std::memcpy(buf, pipe.buf.data() + pipe.off, n);
  pipe.off += n;
  if (pipe.off == pipe.buf.size())
    pipe.clear();
  else if (pipe.off > kReadChunk && pipe.off > pipe.buf.size() / 2) {
    pipe.buf.erase(0, pipe.off);
    pipe.off = 0;
  }
  if (n > 0 && source != nullptr && source_id > 0) {
    nghttp2_session_consume_stream(source, source_id, n);
    // The WINDOW_UPDATE this may queue goes out with the source's writer,
    // which may be asleep with nothing else to send.
    (source == server_.get() ? client_wake_ : upstream_wake_).cancel();
  }
  if (pipe.size() == 0 && pipe.eof) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (pipe.trailers) {
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      const auto nv = to_nv(*pipe.trailers);
      nghttp2_submit_trailer(session, stream_id, nv.data(), nv.size());
    }
    return static_cast<ssize_t>(n);
  }
  if (n == 0) return NGHTTP2_ERR_DEFERRED;
  return static_cast<ssize_t>(n);
}

ssize_t H2Proxy::read_up(nghttp2_session* session, std::int32_t stream_id, std::uint8_t* buf,
                         std::size_t length, std::uint32_t* flags, nghttp2_data_source*, void* user) {
  auto& self = *static_cast<H2Proxy*>(user);
  Stream* s = self.upstream_stream(stream_id);
  if (s == nullptr) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  return self.pull(s->up, session, stream_id, self.server_.get(), s->id, buf, length, flags);
}

ssize_t H2Proxy::read_down(nghttp2_session* session, std::int32_t stream_id, std::uint8_t* buf,
                           std::size_t length, std::uint32_t* flags, nghttp2_data_source*, void* user) {
  auto& self = *static_cast<H2Proxy*>(user);
  Stream* s = self.stream(stream_id);
  if (s == nullptr) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  // A closed upstream stream has no window left to reopen (the connection's
  // was given back on arrival).
  nghttp2_session* source = s->upstream_id > 0 && !s->upstream_closed ? self.client_.get() : nullptr;
  return self.pull(s->down, session, stream_id, source, s->upstream_id, buf, length, flags);
}

// ---------------------------------------------------------------------- I/O

asio::awaitable<void> H2Proxy::connect_upstream() {
  // The connector counts and logs a failure; it answers the waiting
  // streams, not the connection.
  UpstreamConnector::Connected up = co_await in_.upstream.connect();
  connecting_ = false;
  if (aborted()) {
    if (up.socket) reset_socket(*up.socket);
    closing_ = true;
    co_return;
  }
  if (!up.socket) {
    ending_.note(EndReason::upstream_connect_failed, up.error);
    const int status = up.failure == UpstreamFailure::connect_timeout ? 504 : 502;
    for (std::int32_t id : std::exchange(waiting_, {})) {
      if (Stream* s = stream(id); s && !s->revoked && nghttp2_session_find_stream(server_.get(), id))
        fail_upstream(*s, EndReason::upstream_connect_failed, status);
    }
    // The next allowed stream tries again, as Envoy does per request.
    client_wake_.cancel();
    co_return;
  }
  upstream_ = std::move(*up.socket);
  // The upstream session once there is an upstream: a connection whose
  // streams are all denied never pays for one.
  if (!client_ && !(client_ = open_session(false))) {
    spdlog::warn("connection {}: HTTP/2 upstream session setup failed", id());
    ending_.note(EndReason::proxy_error, "HTTP/2 upstream session setup failed");
    abort();
    co_return;
  }
  for (std::int32_t id : std::exchange(waiting_, {})) {
    if (Stream* s = stream(id); s && !s->revoked && nghttp2_session_find_stream(server_.get(), id))
      submit_upstream(*s);
  }
  spawn(read_upstream());
  spawn(write_loop(false));
  upstream_wake_.cancel();
  client_wake_.cancel();
}

asio::awaitable<bool> H2Proxy::receive(tcp::socket& socket, nghttp2_session* session,
                                       boost::system::error_code& ec, ssize_t& rv) {
  rv = 0;
  for (;;) {
    co_await socket.async_wait(tcp::socket::wait_read, asio::redirect_error(use_awaitable, ec));
    if (ec) co_return false;
    const IoBuffer buffer;
    const std::size_t n = socket.read_some(asio::buffer(buffer.data(), kReadChunk), ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) continue;
    if (ec) co_return false;
    // nghttp2 takes all of it now (what it keeps, it copies: header
    // fields, DATA into the stream's Pipe), so the buffer goes back here.
    rv = nghttp2_session_mem_recv(session, reinterpret_cast<const std::uint8_t*>(buffer.data()), n);
    co_return rv >= 0;
  }
}

// `initial`: what the connection read before it knew this was HTTP/2 (the
// preface and whatever followed), taken like any later read: a flood may
// already be in it.
asio::awaitable<void> H2Proxy::read_client(std::string initial) {
  boost::system::error_code ec;
  in_.client.non_blocking(true, ec);  // the wait for data is receive()'s async_wait
  ssize_t rv = nghttp2_session_mem_recv(server_.get(), reinterpret_cast<const std::uint8_t*>(initial.data()),
                                        initial.size());
  std::string().swap(initial);  // the frame lives as long as the connection
  for (bool first = true;; first = false) {
    if (!first) {
      if (aborted() || closing_) co_return;
      if (!co_await receive(in_.client, server_.get(), ec, rv) && rv == 0) {
        spdlog::debug("connection {}: client read: {}", id(), ec.message());
        co_return;
      }
    }
    client_wake_.cancel();
    upstream_wake_.cancel();
    if (rv < 0) {
      // Fatal for the session (bad preface, flood, callback failure):
      // nghttp2 has queued GOAWAY where one applies; the writer sends it and ends.
      spdlog::debug("connection {}: HTTP/2 from client: {}", id(), nghttp2_strerror(static_cast<int>(rv)));
      ending_.note(EndReason::bad_request, nghttp2_strerror(static_cast<int>(rv)));
      // The budgets nghttp2 enforces by failing mem_recv queue no GOAWAY of
      // their own (CONTINUATION count in Debian's 1.52 backport).
      if (rv == NGHTTP2_ERR_FLOODED || rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS)
        nghttp2_session_terminate_session(server_.get(), NGHTTP2_ENHANCE_YOUR_CALM);
      client_wake_.cancel();
      co_await linger();
      co_return;
    }
  }
}

// After a fatal error the client may still be sending (a flood is): closing
// with its bytes unread makes the kernel answer with a reset, which can
// overtake the GOAWAY on its way. So the input is read and dropped for at
// most kLinger while the writer flushes GOAWAY and half-closes (nginx's
// lingering close); the cost is bounded by that time (one pooled buffer).
asio::awaitable<void> H2Proxy::linger() {
  const IoBuffer buf;
  Deadline deadline(tick_.get_executor());
  deadline.arm_after(kLinger, [this, hold = shared_from_this()] {
    boost::system::error_code ignored;
    in_.client.cancel(ignored);
  });
  while (!deadline.expired() && !aborted()) {
    boost::system::error_code ec;
    co_await in_.client.async_wait(tcp::socket::wait_read, asio::redirect_error(use_awaitable, ec));
    // The writer cancels the client's read once GOAWAY is out: keep dropping.
    if (ec == asio::error::operation_aborted) continue;
    if (!ec) in_.client.read_some(asio::buffer(buf.data(), kReadChunk), ec);
    if (ec && ec != asio::error::would_block && ec != asio::error::try_again) break;
  }
}

asio::awaitable<void> H2Proxy::read_upstream() {
  boost::system::error_code ec;
  upstream_.non_blocking(true, ec);
  for (;;) {
    if (aborted() || closing_) break;
    ssize_t rv = 0;
    const bool ok = co_await receive(upstream_, client_.get(), ec, rv);
    client_wake_.cancel();
    upstream_wake_.cancel();
    if (!ok) {
      if (rv < 0)
        spdlog::debug("connection {}: HTTP/2 from upstream: {}", id(),
                      nghttp2_strerror(static_cast<int>(rv)));
      else
        spdlog::debug("connection {}: upstream read: {}", id(), ec.message());
      break;
    }
  }
  // Only the upstream side ends here; the client side winds down on its own.
  upstream_gone();
}

// Generates what `session` has queued into a pooled buffer and writes it:
// the buffer is held only while frames are in flight. A frame that does not
// fit behind the batch goes out after it from a copy (nghttp2's pointer is
// valid only until its next mem_send).
asio::awaitable<H2Proxy::Sent> H2Proxy::send_pending(nghttp2_session* session, tcp::socket& socket) {
  std::optional<IoBuffer> batch;
  std::size_t used = 0;
  std::string overflow;
  for (;;) {
    const std::uint8_t* data = nullptr;
    const ssize_t n = nghttp2_session_mem_send(session, &data);
    if (n < 0) {
      spdlog::debug("connection {}: HTTP/2 send: {}", id(), nghttp2_strerror(static_cast<int>(n)));
      co_return Sent::failed;
    }
    if (n == 0) break;
    const auto size = static_cast<std::size_t>(n);
    if (!batch) batch.emplace();
    if (used + size > IoBuffer::size()) {
      overflow.assign(reinterpret_cast<const char*>(data), size);
      break;
    }
    std::memcpy(batch->data() + used, data, size);
    used += size;
  }
  if (used == 0 && overflow.empty()) co_return Sent::nothing;
  boost::system::error_code ec;
  if (used > 0)
    co_await asio::async_write(socket, asio::buffer(batch->data(), used),
                               asio::redirect_error(use_awaitable, ec));
  if (!ec && !overflow.empty())
    co_await asio::async_write(socket, asio::buffer(overflow), asio::redirect_error(use_awaitable, ec));
  co_return ec ? Sent::failed : Sent::some;
}

// One writer per socket: generates frames from its session and writes them.
// Frames are generated only as fast as the socket drains, which is what
// keeps DATA (and so window consumption) tied to what the peer accepted.
asio::awaitable<void> H2Proxy::write_frames(bool to_client) {
  nghttp2_session* session = to_client ? server_.get() : client_.get();
  tcp::socket& socket = to_client ? in_.client : upstream_;
  asio::steady_timer& wake = to_client ? client_wake_ : upstream_wake_;
  for (;;) {
    if (aborted()) co_return;
    const Sent sent = co_await send_pending(session, socket);
    if (sent == Sent::failed) co_return;
    if (sent == Sent::some) continue;
    if (!to_client && (upstream_dead_ || closing_)) co_return;
    const bool finished = nghttp2_session_want_read(session) == 0 && nghttp2_session_want_write(session) == 0;
    if (finished || (to_client && closing_)) {
      spdlog::debug("connection {}: {} side of HTTP/2 done", id(), to_client ? "client" : "upstream");
      boost::system::error_code ignored;
      socket.shutdown(tcp::socket::shutdown_send, ignored);
      if (to_client) closing_ = true;
      co_return;
    }
    boost::system::error_code ignored;
    co_await wake.async_wait(asio::redirect_error(use_awaitable, ignored));
  }
}

asio::awaitable<void> H2Proxy::write_loop(bool to_client) {
  co_await write_frames(to_client);
  if (to_client) {
    // Nothing more can reach the client: end the connection's client read.
    closing_ = true;
    boost::system::error_code ignored;
    in_.client.cancel(ignored);
  }
}

// Wakes only when poked (a reload, the drain: poke(), posted here by the
// rechecks_streams hook) or when the connection ends. It looks before it
// waits, so a poke that came before its first wait, when no wait was there
// to cancel, is not lost: the reload had published, the drain had set the
// flag, before poking.
asio::awaitable<void> H2Proxy::tick() {
  for (;;) {
    if (closing_ || aborted()) co_return;
    if (auto now = in_.policy.current(); now != policy_) {
      policy_ = now;
      recheck(*now);
      client_wake_.cancel();
      upstream_wake_.cancel();
    }
    if (in_.draining.load() && !goaway_sent_) {
      // Drain: no new streams; in-flight ones finish (the daemon resets
      // what is left after timeouts.drain).
      goaway_sent_ = true;
      nghttp2_submit_goaway(server_.get(), NGHTTP2_FLAG_NONE,
                            nghttp2_session_get_last_proc_stream_id(server_.get()), NGHTTP2_NO_ERROR, nullptr,
                            0);
      client_wake_.cancel();
    }
    tick_.expires_at(Clock::time_point::max());
    boost::system::error_code ignored;
    co_await tick_.async_wait(asio::redirect_error(use_awaitable, ignored));
  }
}

asio::awaitable<void> H2Proxy::run(std::string initial) {
  if (!(server_ = open_session(true))) {
    spdlog::warn("connection {}: HTTP/2 session setup failed", id());
    reset_socket(in_.client);
    co_return;
  }
  in_.observer.speaks_http2();
  // A reload re-checks this connection's streams at once: the hook is
  // called on the control thread and posts the work here. It may outlive
  // this object (weak) and the inspection (cleared by inspect_h2).
  in_.observer.rechecks_streams([weak = weak_from_this(), ex = tick_.get_executor()] {
    asio::post(ex, [weak] {
      if (auto self = weak.lock()) self->poke();
    });
  });
  spawn(write_loop(true));
  spawn(tick());
  co_await read_client(std::move(initial));
}

// The client stopped sending (or the session finished, or run() failed):
// lets the writers flush what is queued (GOAWAY, last frames), then closes
// both sides. Every task has ended when this returns, aborted or not: they
// use `in_`.
asio::awaitable<void> H2Proxy::wind_down() {
  closing_ = true;
  wake_all();
  tick_.cancel();  // it waits for nothing but a poke
  while (running_ > 0) {
    done_wake_.expires_at(Clock::time_point::max());
    boost::system::error_code ignored;
    co_await done_wake_.async_wait(asio::redirect_error(use_awaitable, ignored));
    if (running_ > 0) {
      // Something still waits on a socket: end the waits.
      tick_.cancel();
      boost::system::error_code ec;
      if (upstream_.is_open()) upstream_.cancel(ec);
      in_.client.cancel(ec);
      upstream_wake_.cancel();
      client_wake_.cancel();
    }
  }
}

}  // namespace

SHUNT_FRAME_ALLOC_WARNING_OFF  // common/async.h
asio::awaitable<InspectOutcome> inspect_h2(Inspection in, std::string initial) {
  auto proxy = std::make_shared<H2Proxy>(in, co_await asio::this_coro::executor);
  const auto on_cancel = in.cancel.install([&p = *proxy] { p.reset_both(); });
  try {
    co_await proxy->run(std::move(initial));
  } catch (const std::exception& e) {
    // The client side failed (the tasks catch their own): reset both, and
    // wind_down() ends the tasks on their failing sockets.
    spdlog::warn("connection {}: HTTP/2 inspection: {}", proxy->id(), e.what());
    proxy->abort();
  }
  co_await proxy->wind_down();
  in.observer.rechecks_streams(nullptr);
  proxy->release();
  InspectOutcome out;
  out.ending = proxy->take_ending();
  // Finished (a graceful end shut both write sides already) or reset.
  boost::system::error_code ignored;
  in.client.close(ignored);
  proxy->upstream().close(ignored);
  co_return out;
}
SHUNT_FRAME_ALLOC_WARNING_ON

}  // namespace shunt::proxy

// HTTP inspection: every request on a connection whose flow has HTTP rules
// is decided before a byte of it reaches the upstream.
//
// Two coroutines share one Session:
//
//   request loop (inspect_http)   client -> parse -> decide -> upstream
//   response pump                 upstream -> frame -> client
//
// The request loop reads the client, stops the parser at each request head,
// decides it under the *current* policy snapshot (so a reload applies to the
// next request), and forwards an allowed request as decided: the head
// serialised from its canonical model (http::parse_head, docs/policy.md),
// the body exactly as read (llhttp finds where a Content-Length or chunked
// body ends, under framing headers the strict reading checked). The upstream is
// connected at the first allowed request, so a denied first request never
// reaches it. The pump forwards responses as they come and follows their
// framing only to know which request each final response answers (for the
// deny path and the access log) and where the stream stops being HTTP (101
// after an Upgrade request, 2xx after CONNECT).
//
// Handover to the data path (return true) happens when the verdict can no
// longer change: every request of this flow is allowed, or a WebSocket (or
// other non-HTTP/2) upgrade got its 101. At that point every byte read from
// either socket has been written to the other one and no read is pending on
// either: the pump has been stopped (or stopped itself after the 101), and
// the request loop flushes what it still holds. That is what the sockmap
// path needs before it takes the fds out of Asio.
//
// Deny (403) and the error statuses (400, 408, 431) stop forwarding at the
// offending request, wait until every request forwarded before it has its
// response delivered, then send the status with `Connection: close`, shut
// the client's write side and discard what the client still sends for a
// short while (closing with unread bytes would send a reset that can
// overtake the status line at the client). The client is read throughout,
// and every wait has a deadline (timeouts.refuse, then a short linger), so
// a refused connection never holds its slot or its upstream connection for
// long, whatever the client or the upstream do.
//
// Between requests (a response delivered, no byte of the next request)
// timeouts.keepalive applies; it is much shorter than timeouts.idle, so
// idle keep-alive connections do not pile up.
//
// Parking (HttpResume::may_park, issue 16): most of a node's connections
// are idle keep-alive ones, and a suspended inspection costs its coroutine
// frames, parser and session (~9 KB). So once every answer is delivered,
// nothing is buffered, both parsers are between messages and neither side
// said `Connection: close`, the request loop stops the pump and returns
// the pair as InspectOutcome::parked. The caller (Connection::park) holds
// it with a readiness wait per socket and runs timeouts.keepalive through
// the idle sweep; when either side has bytes (or ends) it calls
// inspect_http again with the upstream, and a fresh session and parsers
// read what follows exactly as the old ones would have (that is what the
// conditions guarantee). The last answer usually completes while the
// request loop already waits for the client: retire_request then cancels
// that wait (Session::park_wake) so the loop parks. A park and a resume
// cost a session, parsers and frames each time, so a busy connection
// (HttpResume::park_after, the caller's call) parks only after a quiet
// spell, found by the keep-alive watch. In a takeover's boundary window
// (BoundaryRequest, takeover/late.h) every connection parks at its next
// boundary, busy or not, so that it moves to the new process there: a
// request in flight finishes first (its response delivered), then the
// connection parks and is handed on.
#include "common/async.h"
#include "common/http_status.h"
#include "common/io_buffer.h"
#include "common/reset.h"
#include "proxy/end_reason.h"
#include "proxy/inspect/http_parser.h"
#include "proxy/inspect/inspector.h"

#include <spdlog/spdlog.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <iterator>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace shunt::proxy {

namespace asio = boost::asio;
using asio::use_awaitable;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

// One read per direction, into an IoBuffer taken when the socket is readable
// and given back once what was read is written on: an idle keep-alive
// connection holds no buffer (issue 16).
constexpr std::size_t kReadChunk = IoBuffer::kBytes;
// Pipelined requests forwarded but not yet answered. Beyond this the request
// loop stops reading the client until responses catch up, so a client that
// pipelines thousands of tiny requests cannot grow the queues without bound.
constexpr std::size_t kMaxOutstanding = 64;
// After a refusal's status has gone out, how long and how much of the
// client's remaining input is read and dropped before closing.
constexpr auto kLingerTime = std::chrono::seconds(2);
constexpr std::size_t kLingerBytes = 1 << 20;

// The request side's bytes not yet forwarded. No storage while nothing is
// held (between requests), a pooled IoBuffer while a head or body is read,
// and a larger heap block only for a head that outgrows it or reads that
// keep filling it (a bulk upload), up to one maximal head plus one read.
class RequestBuffer {
 public:
  [[nodiscard]] char* data() const { return big_ ? big_.get() : pooled_ ? pooled_->data() : nullptr; }
  [[nodiscard]] std::size_t capacity() const { return big_ ? big_size_ : pooled_ ? IoBuffer::size() : 0; }
  // Room to read after the first `used` bytes (kept): a buffer when there
  // is none, twice the size (up to `limit`) when the last read filled it or
  // less than a quarter is free.
  void make_room(std::size_t used, std::size_t limit, bool last_read_filled) {
    if (capacity() == 0) pooled_.emplace();
    const std::size_t cap = capacity();
    if (cap >= limit || !(last_read_filled || cap - used < cap / 4)) return;
    const std::size_t grown = std::min(limit, cap * 2);
    std::unique_ptr<char[]> bigger(new char[grown]);  // not zeroed: only [0, used) is read
    std::memcpy(bigger.get(), data(), used);
    big_ = std::move(bigger);
    big_size_ = grown;
    pooled_.reset();
  }
  // Gives the storage back; only when nothing is held in it.
  void release() {
    pooled_.reset();
    big_.reset();
    big_size_ = 0;
  }

 private:
  std::optional<IoBuffer> pooled_;
  std::unique_ptr<char[]> big_;
  std::size_t big_size_ = 0;
};

struct PendingRequest {
  std::string method;
  std::string path;
  std::string host;
  std::string rule;
  // CONNECT, or an Upgrade forwarded with a protocol that may leave
  // inspection: only then may a 101 / 2xx switch protocol.
  bool opens_tunnel = false;
  bool connect = false;
  std::vector<std::string> upgrades;  // the Upgrade values forwarded
  Clock::time_point decided = Clock::now();
  // What went through for this request, for its access-log line: its head
  // and body bytes sent upstream, its response bytes sent to the client
  // (a read that ends one pipelined response and starts the next counts
  // for the first).
  std::uint64_t bytes_up = 0;
  std::uint64_t bytes_down = 0;
};

// State shared by the request loop and the response pump. Both run on the
// connection's executor (one thread), so plain fields are enough; `event`
// wakes the request loop whenever the pump changes something it waits on.
// The session owns both sockets; inspect_http returns only once every
// coroutine it started has ended, so the references in `in` (observer,
// connector, cancellation slot: the connection's) outlive every use.
struct Session : std::enable_shared_from_this<Session> {
  Session(Inspection& inspection, const asio::any_io_executor& ex)
      : in(inspection), upstream(ex), event(ex, Clock::time_point::max()), read_deadline(ex) {}

  Inspection& in;
  tcp::socket& client() { return in.client; }
  tcp::socket upstream;  // connected at the first allowed request
  Ending ending;         // the first cause this inspection met
  [[nodiscard]] std::uint64_t id() const { return in.observer.id(); }
  [[nodiscard]] const config::ProxySettings& settings() const { return in.settings; }

  // Cancelled from outside (revoke, drain, idle) or ended from inside
  // (abort): both sockets are reset and every wait ends.
  [[nodiscard]] bool aborted() const { return self_aborted || in.cancel.cancelled(); }
  bool self_aborted = false;
  // Ends the connection from inside: a reset on one side (or a broken
  // response) resets both; `why`, when given, is its cause.
  void abort(std::optional<EndReason> why = std::nullopt) {
    if (aborted()) return;
    if (why) ending.note(*why);
    self_aborted = true;
    ending.aborted = true;
    reset_both();
  }
  void reset_both() {
    reset_socket(in.client);
    reset_socket(upstream);
    notify();
  }

  http::ResponseParser responses;
  // Forwarded, final response not yet complete. A list, not a deque:
  // libstdc++'s deque allocates ~0.6 KB when constructed, for every idle
  // keep-alive connection (issue 16); at most kMaxOutstanding entries.
  std::list<PendingRequest> pending;
  asio::steady_timer event;
  Deadline read_deadline;  // of the client wait in progress (wait_client)
  bool reading_client = false;

  bool pump_running = false;
  bool stop_pump = false;
  bool tunnel = false;          // the pump forwarded a 101 / CONNECT 2xx and stopped
  bool upstream_ended = false;  // EOF, reset or protocol error from the upstream
  // The request loop is about to write a final status to the client: the
  // pump must not shut the client's write side when the upstream ends.
  bool client_write_reserved = false;

  // Since when no forwarded request has been waiting for its response
  // (kept by retire_request): the keep-alive deadline counts from here.
  Clock::time_point quiet_since = Clock::now();
  bool read_timed_out = false;  // the deadline of the client read in progress passed

  // refuse(): its client reader (drain_client) runs, the status is out.
  bool draining_client = false;
  bool refusal_delivered = false;

  // The connection opened with the HTTP/2 preface: every byte read so far,
  // for the HTTP/2 inspector (InspectOutcome::http2).
  std::optional<std::string> http2_initial;

  // HttpResume: the caller can hold a parked connection; this inspection
  // continues one (its upstream was connected before).
  bool may_park = false;
  std::chrono::milliseconds park_after{0};  // HttpResume::park_after
  bool resumed = false;
  bool parked = false;  // run_requests stopped to park (InspectOutcome::parked)
  // The request loop waits for the client between requests (the
  // keep-alive wait); park_wake: retire_request cancelled that wait so the
  // loop parks.
  bool keepalive_wait = false;
  bool park_wake = false;
  // A boundary window's poke cancelled the wait for the first head
  // (ReadResult::yield); first_pending: the bytes read then, handed back
  // (InspectOutcome::client_pending). `initial`: HttpResume::initial.
  bool first_yield = false;
  std::optional<std::string> first_pending;
  std::string initial;

  // A takeover's boundary window is open: park at the next boundary.
  [[nodiscard]] bool boundary_requested() const { return in.boundary && in.boundary->requested(); }

  void notify() { event.cancel(); }
  asio::awaitable<void> wait() {
    boost::system::error_code ec;
    co_await event.async_wait(asio::redirect_error(use_awaitable, ec));
  }
};

// True when no request of this flow can be denied under `policy`, so the
// rest of the connection may go to the kernel.
bool every_request_allowed(const policy::Policy& policy, const policy::Flow& flow) {
  const policy::ConnectionDecision d = policy.decide_connection(flow);
  if (d.inspect == policy::Inspect::http) return d.all_requests_allowed;
  // The flow lost its HTTP rules in a reload and an L4 allow covers it now.
  return d.inspect == policy::Inspect::none && d.decision.verdict == policy::Verdict::allow;
}

// Why a connection refused with this status ends (the access log's
// `reason`, on the refused request's line too).
EndReason refusal_reason(int status) {
  switch (status) {
    case 403:
      return EndReason::policy_deny;
    case 408:
      return EndReason::request_timeout;
    case 502:
    case 504:
      return EndReason::upstream_connect_failed;
    default:  // 400, 431
      return EndReason::bad_request;
  }
}

// One `http` access-log line. `status` 0: no response was seen (the field is
// left out); `bytes_up`/`bytes_down` are this request's own (PendingRequest);
// `error`: why a status shunt answered itself failed upstream (502/504).
void log_request(Session& s, const std::string& method, const std::string& path, const std::string& host,
                 const std::string& rule, bool allowed, int status, Clock::time_point since,
                 std::uint64_t bytes_up = 0, std::uint64_t bytes_down = 0, const std::string& error = {}) {
  HttpExchange x;
  x.allowed = allowed;
  x.rule = rule;
  // The data path named is the connection's current one: copy while
  // inspected (the inspector moves the bytes), whatever proxy.datapath says.
  x.bytes_up = bytes_up;
  x.bytes_down = bytes_down;
  x.duration = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - since);
  x.method = method;
  x.path = path;
  x.host = host;
  x.status = status;
  x.protocol = "h1";
  if (!allowed || status == 502 || status == 504) {
    // A status shunt answered itself (an upstream's own 502 is forwarded by
    // the response pump, never logged here with allowed=false, and gets no
    // reason: the connection went on).
    x.reason = std::string(to_string(refusal_reason(status)));
    if (allowed) x.error = error;
  }
  s.in.observer.exchanged(x);
}

// The access-log line of a forwarded request, once its final response status
// is known (0: the inspector stopped watching before it came).
void retire_request(Session& s, int status) {
  if (s.pending.empty()) return;
  const PendingRequest& p = s.pending.front();
  log_request(s, p.method, p.path, p.host, p.rule, true, status, p.decided, p.bytes_up, p.bytes_down);
  s.pending.pop_front();
  if (!s.pending.empty()) return;
  s.quiet_since = Clock::now();
  if (s.may_park && (s.park_after.count() == 0 || s.boundary_requested()) && s.keepalive_wait) {
    // The last answer is out while the request loop waits for the client
    // between requests: wake it to park (run_requests).
    s.park_wake = true;
    boost::system::error_code ignored;
    s.client().cancel(ignored);
  }
}

// Writes all of `data`. A cancel() aimed at the other operation on the same
// socket (the header deadline cancels the client read; Asio 1.74 can only
// cancel every operation on a socket) aborts a write part-way, with the
// count of bytes already written: carry on from there.
asio::awaitable<bool> write_all(Session& s, tcp::socket& to, const char* data, std::size_t n) {
  while (n > 0) {
    boost::system::error_code ec;
    const std::size_t w =
        co_await asio::async_write(to, asio::buffer(data, n), asio::redirect_error(use_awaitable, ec));
    data += w;
    n -= w;
    if (!ec) continue;
    if (ec == asio::error::operation_aborted && !s.aborted() && to.is_open()) continue;
    co_return false;
  }
  co_return true;
}

// ---------------------------------------------------------------- responses

// Whether the 101 just parsed names one protocol, among those the request
// forwarded: an upstream answering "Upgrade: h2c" to a WebSocket request
// would take the connection out of inspection as HTTP/2.
bool switched_as_asked(const Session& s, const PendingRequest& opener) {
  const std::string& to = s.responses.switched_to();
  if (to.empty() || to.find(',') != std::string::npos) return false;
  const std::string_view name = std::string_view(to).substr(0, to.find('/'));
  for (const auto& asked : opener.upgrades) {
    if (std::string_view(asked).substr(0, asked.find('/')) == name) return true;
  }
  return false;
}

asio::awaitable<void> pump_responses(std::shared_ptr<Session> self) {
  Session& s = *self;
  try {
    std::vector<int> completed;
    boost::system::error_code ec;
    s.upstream.non_blocking(true, ec);  // the wait for data is the async_wait
    for (;;) {
      if (s.stop_pump || s.aborted()) break;
      // Readable first, then a buffer: held until the bytes are written to
      // the client, none while the upstream is quiet.
      co_await s.upstream.async_wait(tcp::socket::wait_read, asio::redirect_error(use_awaitable, ec));
      std::optional<IoBuffer> buffer;
      std::size_t n = 0;
      if (!ec) {
        buffer.emplace();
        n = s.upstream.read_some(asio::buffer(buffer->data(), kReadChunk), ec);
        if (ec == asio::error::would_block || ec == asio::error::try_again) continue;
      }
      completed.clear();
      if (ec == asio::error::eof) {
        const auto r = s.responses.finish(completed);
        for (const int status : completed) retire_request(s, status);
        if (r.event == http::ResponseEvent::error && !s.pending.empty()) {
          spdlog::debug("connection {}: upstream closed mid-response ({})", s.id(), r.reason);
        }
        s.upstream_ended = true;
        if (!s.client_write_reserved) {
          // Half-close passes through: the client sees the upstream's FIN.
          boost::system::error_code ignored;
          s.client().shutdown(tcp::socket::shutdown_send, ignored);
        }
        break;
      }
      if (ec) {
        if (ec == asio::error::operation_aborted && s.stop_pump && !s.aborted()) break;  // clean stop
        if (!s.aborted()) {
          spdlog::debug("connection {}: upstream read failed: {}", s.id(), ec.message());
          s.upstream_ended = true;
          s.abort();  // a reset on one side resets the other
        }
        break;
      }

      const auto r = s.responses.parse(std::string_view(buffer->data(), n), completed);
      if (r.event == http::ResponseEvent::error) {
        // Framing is lost: the deny path could no longer tell when earlier
        // responses are complete, nor a 101 from body bytes. Fail closed.
        spdlog::warn("connection {}: malformed response from upstream ({}); resetting", s.id(), r.reason);
        s.upstream_ended = true;
        s.abort();
        break;
      }
      if (r.event == http::ResponseEvent::tunnel) {
        // The last completed response switched protocol; check the request
        // that asked for it before forwarding the switch.
        const std::size_t index = completed.empty() ? 0 : completed.size() - 1;
        const PendingRequest* opener =
            index < s.pending.size() ? &*std::next(s.pending.begin(), static_cast<std::ptrdiff_t>(index))
                                     : nullptr;
        // Upgrade values outside proxy.http.upgrade_protocols (h2c, say)
        // were never forwarded, so a 101 here is an upstream ignoring what
        // it was asked.
        if (!opener || !opener->opens_tunnel || (!opener->connect && !switched_as_asked(s, *opener))) {
          spdlog::warn(
              "connection {}: upstream switched protocol without being asked for an allowed one; resetting",
              s.id());
          s.upstream_ended = true;
          s.abort();
          break;
        }
      }
      // Every byte read is forwarded, including any bytes of the new
      // protocol that came with the 101: the handover needs nothing held.
      if (!co_await write_all(s, s.client(), buffer->data(), n)) {
        s.abort();
        break;
      }
      s.in.observer.moved(Direction::down, n);
      if (!s.pending.empty()) s.pending.front().bytes_down += n;
      for (const int status : completed) retire_request(s, status);
      if (r.event == http::ResponseEvent::tunnel) {
        s.tunnel = true;
        break;  // no read pending from here: the connection can be handed over
      }
      s.notify();
    }
  } catch (const std::exception& e) {
    spdlog::warn("connection {}: response pump: {}", s.id(), e.what());
    s.upstream_ended = true;
    s.abort();
  }
  s.pump_running = false;
  s.notify();
}

// Stops the pump at a point where everything it read has been written to
// the client, and waits until it has returned (no upstream read pending).
asio::awaitable<void> stop_pump(Session& s) {
  s.stop_pump = true;
  if (s.pump_running) {
    boost::system::error_code ignored;
    s.upstream.cancel(ignored);
  }
  while (s.pump_running) co_await s.wait();
}

// Waits until every forwarded request has its final response (or the
// upstream is gone, or the connection aborted). Unbounded by itself:
// refuse() bounds it with timeouts.refuse; the other callers wait for
// answers the client asked for, which timeouts.idle bounds.
asio::awaitable<void> wait_for_responses(Session& s) {
  while (s.pump_running && !s.pending.empty() && !s.aborted()) co_await s.wait();
}

// ----------------------------------------------------------------- requests

struct ReadResult {
  std::size_t n = 0;
  boost::system::error_code ec;
  bool timed_out = false;
  bool park = false;   // woken to park (Session::park_wake)
  bool yield = false;  // woken to hand the connection back (Session::first_yield)
};

// How long a client read may wait: no limit (inside a body: the upstream
// paces it, timeouts.idle bounds it), until a fixed deadline (a request
// head, timeouts.header), or the keep-alive deadline between requests.
struct ReadLimit {
  std::optional<Clock::time_point> deadline;
  // timeouts.keepalive after the last response was delivered; it does not
  // run while a forwarded request still waits for its answer (a slow
  // upstream is not an idle client).
  bool keepalive = false;
};

// Cancels the client wait in progress at `at` (a request head's
// timeouts.header). wait_client disarms it when its wait ends, so a late
// expiry never cancels the next wait.
void arm_read_deadline(const std::shared_ptr<Session>& self, Clock::time_point at) {
  self->read_deadline.arm(at, [self] {
    Session& s = *self;
    if (!s.reading_client) return;
    s.read_timed_out = true;
    boost::system::error_code ignored;
    s.client().cancel(ignored);
  });
}

// The keep-alive deadline: looks at `at` and re-arms until the connection
// has really been quiet for timeouts.keepalive, then cancels the client
// wait. Checked by the worker's idle sweep (QuietWatch, inspector.h), not a
// timer of the connection's own: it is armed on every idle keep-alive
// connection, for seconds to minutes (issue 16), and 250 ms of slack is
// nothing next to it. `s` is a plain pointer (no allocation for the
// callback): wait_client, which holds the session, unwatches before it
// returns.
//
// The same watch parks a connection that may park only after a quiet spell
// (Session::park_after, a busy one): quiet for park_after, the wait is
// cancelled with park_wake instead.
void arm_keepalive(Session& s, Clock::time_point at) {
  s.in.quiet.watch_quiet(at, [session = &s] {
    Session& s = *session;
    if (!s.reading_client) return;
    const auto period = s.settings().timeouts.keepalive;
    const bool deferred_park = s.may_park && s.park_after.count() > 0;
    const auto now = Clock::now();
    if (!s.pending.empty()) {
      arm_keepalive(s, now + (deferred_park ? std::min<Clock::duration>(period, s.park_after) : period));
      return;
    }
    if (deferred_park && now >= s.quiet_since + s.park_after) {
      s.park_wake = true;
      boost::system::error_code ignored;
      s.client().cancel(ignored);
      return;
    }
    if (const auto due = s.quiet_since + period; now < due) {
      arm_keepalive(s, deferred_park ? std::min(due, s.quiet_since + s.park_after) : due);
      return;
    }
    s.read_timed_out = true;
    boost::system::error_code ignored;
    s.client().cancel(ignored);
  });
}

// Waits until the client is readable (or at EOF, or failed), giving up
// when `limit` says so (timed_out). No buffer is held meanwhile: the caller
// takes one once there is something to read.
asio::awaitable<ReadResult> wait_client(std::shared_ptr<Session> self, ReadLimit limit) {
  Session& s = *self;
  ReadResult r;
  if (limit.deadline && Clock::now() >= *limit.deadline) {
    r.timed_out = true;
    co_return r;
  }
  s.read_timed_out = false;
  if (limit.deadline) {
    arm_read_deadline(self, *limit.deadline);
  } else if (limit.keepalive) {
    // The client has finished a request; if its answer is already out, the
    // quiet starts now, else when the answer completes (retire_request).
    if (s.pending.empty()) s.quiet_since = Clock::now();
    Clock::duration first_check = s.settings().timeouts.keepalive;
    if (s.may_park && s.park_after.count() > 0)
      first_check = std::min<Clock::duration>(first_check, s.park_after);
    arm_keepalive(s, Clock::now() + first_check);
  }
  s.reading_client = true;
  s.keepalive_wait = limit.keepalive;
  s.park_wake = false;
  co_await s.client().async_wait(tcp::socket::wait_read, asio::redirect_error(use_awaitable, r.ec));
  s.reading_client = false;
  s.keepalive_wait = false;
  s.read_deadline.disarm();
  s.in.quiet.unwatch_quiet();
  r.timed_out = r.ec == asio::error::operation_aborted && s.read_timed_out && !s.aborted();
  r.park = r.ec == asio::error::operation_aborted && s.park_wake && !r.timed_out && !s.aborted();
  r.yield = r.ec == asio::error::operation_aborted && s.first_yield && !r.timed_out && !s.aborted();
  s.park_wake = false;
  s.first_yield = false;
  co_return r;
}

std::string status_response(int status) {
  std::string_view body;
  switch (status) {
    case 400:
      body = "Bad request\n";
      break;
    case 403:
      body = "Access denied\n";
      break;
    case 408:
      body = "Request timeout\n";
      break;
    case 502:
      body = "Upstream connect failed\n";
      break;
    case 504:
      body = "Upstream connect timed out\n";
      break;
    case 431:
      body = "Request header fields too large\n";
      break;
    default:
      body = "Error\n";
      break;
  }
  std::string out = status_line(status);
  out += "Content-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  out += "Connection: close\r\n\r\n";
  out += body;
  return out;
}

// Reads and drops what the client sends while a refusal is under way:
// nothing it sends after the refused request will be served, a client that
// leaves is seen at once, and one that keeps sending cannot stall on a full
// window. Ends at EOF (a half-close: the client may still read, so the
// refusal goes on), at a reset (the client is gone: so is the connection),
// when the refusal closes the client, or kLingerBytes after the status
// went out.
asio::awaitable<void> drain_client(std::shared_ptr<Session> self) {
  Session& s = *self;
  try {
    IoBuffer scratch;  // only for the few seconds a refusal lasts
    std::size_t after_status = 0;
    for (;;) {
      boost::system::error_code ec;
      const std::size_t n = co_await s.client().async_read_some(asio::buffer(scratch.data(), kReadChunk),
                                                                asio::redirect_error(use_awaitable, ec));
      if (ec == asio::error::eof) break;
      if (ec) {
        if (ec == asio::error::operation_aborted && s.client().is_open() && !s.aborted()) continue;
        if (ec != asio::error::operation_aborted && !s.aborted()) {
          spdlog::debug("connection {}: client gone during a refusal: {}", s.id(), ec.message());
          s.abort(EndReason::client_reset);
        }
        break;
      }
      if (s.refusal_delivered && (after_status += n) >= kLingerBytes) break;
    }
  } catch (const std::exception& e) {
    spdlog::warn("connection {}: refusal client reader: {}", s.id(), e.what());
    s.abort();
  }
  s.draining_client = false;
  s.notify();
}

// Refuses the current request with `status` (after the responses of the
// requests before it) and closes the connection. Always returns false.
//
// Every wait is bounded: until the status is out by timeouts.refuse (then
// both sides are reset), after it by kLingerTime; and the client is read
// throughout (drain_client), so a client that resets frees the slot and
// the upstream connection at once.
asio::awaitable<bool> refuse(std::shared_ptr<Session> self, int status) {
  Session& s = *self;
  // The refusal's own reason is recorded once its status is out: until
  // then, a client reset or the deadline is why the connection ends.
  s.client_write_reserved = true;

  Deadline deadline(co_await asio::this_coro::executor);
  deadline.arm_after(s.settings().timeouts.refuse, [self] {
    Session& s = *self;
    if (s.refusal_delivered || s.aborted()) return;
    spdlog::debug("connection {}: refusal not delivered within timeouts.refuse; resetting", s.id());
    s.abort(EndReason::refuse_timeout);
  });
  s.draining_client = true;
  guarded_spawn(co_await asio::this_coro::executor, "refusal's client reader", drain_client(self),
                Failure::survivable);

  co_await wait_for_responses(s);
  co_await stop_pump(s);
  while (!s.pending.empty()) retire_request(s, 0);

  const std::string response = status_response(status);
  if (!s.aborted() && co_await write_all(s, s.client(), response.data(), response.size())) {
    s.refusal_delivered = true;
    deadline.disarm();
    s.ending.note(refusal_reason(status));
    boost::system::error_code ec;
    s.client().shutdown(tcp::socket::shutdown_send, ec);
    if (s.upstream.is_open()) s.upstream.shutdown(tcp::socket::shutdown_send, ec);

    // Lingering close: let the client's own close (it has been told
    // `Connection: close`) come before ours, so ours sends no reset that
    // could overtake the status at the client.
    Deadline linger(co_await asio::this_coro::executor);
    linger.arm_after(kLingerTime, [self] { self->notify(); });
    const auto until = Clock::now() + kLingerTime;
    while (s.draining_client && !s.aborted() && Clock::now() < until) co_await s.wait();
  } else if (!s.aborted()) {
    s.ending.note(EndReason::client_reset, "the refusal's status could not be written");
    reset_socket(s.client());
    reset_socket(s.upstream);
  }
  deadline.disarm();
  // Ends drain_client if it still reads.
  boost::system::error_code ignored;
  s.client().close(ignored);
  while (s.draining_client) co_await s.wait();
  co_return false;
}

// Refusals that happen before or instead of a policy decision (400, 408,
// 431) are logged and counted like a denied request.
asio::awaitable<bool> refuse_malformed(std::shared_ptr<Session> self, int status,
                                       const http::RequestHead* head) {
  self->in.observer.counted_request(false, false);
  static const std::string none;
  log_request(*self, head ? head->method : none, head ? head->target : none, head ? head->host : none, "",
              false, status, Clock::now(), 0, status_response(status).size());
  co_return co_await refuse(self, status);
}

// Closes the connection from the request side once the client is done
// (EOF) or the upstream is gone: lets the responses already asked for
// arrive, then stops. Always returns false.
asio::awaitable<bool> finish_quietly(Session& s) {
  co_await wait_for_responses(s);
  co_await stop_pump(s);
  while (!s.pending.empty()) retire_request(s, 0);
  co_return false;
}

// Ends a keep-alive connection that was silent between requests for
// timeouts.keepalive. Nothing is owed either way, so a FIN to both sides
// loses nothing; a request that crosses it meets a closed connection, the
// race every keep-alive client already retries. Always returns false.
asio::awaitable<bool> close_idle(std::shared_ptr<Session> self) {
  Session& s = *self;
  spdlog::debug("connection {}: no request for {} ms; closing", s.id(),
                s.settings().timeouts.keepalive.count());
  s.ending.note(EndReason::keepalive_timeout);
  co_await stop_pump(s);
  boost::system::error_code ignored;
  s.client().shutdown(tcp::socket::shutdown_send, ignored);
  if (s.upstream.is_open()) s.upstream.shutdown(tcp::socket::shutdown_send, ignored);
  co_return false;
}

asio::awaitable<bool> run_requests(std::shared_ptr<Session> self) {
  Session& s = *self;
  const std::uint64_t id = s.id();
  const config::ProxySettings& settings = s.settings();
  const std::size_t max_head = settings.limits.max_header_bytes;
  const auto header_timeout = settings.timeouts.header;
  const policy::Flow& flow = s.in.flow;

  // Holds at most one request head (max_head) plus one read: body bytes are
  // flushed as soon as they are parsed, so this is the whole per-connection
  // request-side memory, and none of it while nothing is held.
  const std::size_t buffer_limit = max_head + kReadChunk;
  RequestBuffer in;
  bool last_read_filled = false;
  boost::system::error_code nb;
  s.client().non_blocking(true, nb);  // the wait for data is wait_client's
  std::size_t start = 0;              // first byte not yet forwarded
  std::size_t parsed = 0;             // first byte not yet parsed
  std::size_t end = 0;                // end of buffered bytes
  if (!s.initial.empty()) {
    // Read before a takeover's hand-back (ClientPending): parsed as if just
    // read (room for them even if this process's limit is smaller).
    const std::size_t limit = std::max(buffer_limit, s.initial.size() + kReadChunk);
    in.make_room(0, limit, false);
    while (in.capacity() < s.initial.size()) in.make_room(in.capacity(), limit, true);
    std::memcpy(in.data(), s.initial.data(), s.initial.size());
    end = s.initial.size();
    s.initial.clear();
  }
  http::RequestParser parser(settings.http);
  bool in_body = false;  // between an allowed head and its message end
  // Upstream connected (lazily, at the first allowed request; before a
  // parked connection was resumed).
  bool connected = s.upstream.is_open();
  // The first head must be complete within timeouts.header of the accept;
  // later ones within timeouts.header of their first byte (before that
  // byte, timeouts.keepalive applies). A resumed connection is between
  // requests.
  std::optional<Clock::time_point> deadline;
  if (!s.resumed) deadline = s.in.started + header_timeout;
  // A resumed connection was woken by bytes (or an end) on one side: it
  // parks again only after it has read from the client.
  bool read_since_resume = !s.resumed;
  bool park_requested = false;  // the last client wait ended to park (ReadResult::park)
  if (connected) {
    // Resumed: the pump watches the upstream again (its FIN, a late byte).
    s.pump_running = true;
    guarded_spawn(co_await asio::this_coro::executor, "HTTP response pump", pump_responses(self),
                  Failure::survivable);
  }

  auto forward_bytes = [&](const char* data, std::size_t n) -> asio::awaitable<bool> {
    if (n == 0) co_return true;
    if (!co_await write_all(s, s.upstream, data, n)) {
      spdlog::debug("connection {}: upstream write failed", id);
      s.abort();
      co_return false;
    }
    s.in.observer.moved(Direction::up, n);
    // The head just queued, or the body of the request being read.
    if (!s.pending.empty()) s.pending.back().bytes_up += n;
    co_return true;
  };
  auto forward = [&](std::size_t from, std::size_t to) -> asio::awaitable<bool> {
    if (to <= from) co_return true;
    co_return co_await forward_bytes(in.data() + from, to - from);
  };

  // Everything buffered goes upstream, the pump stops, the data path takes over.
  auto hand_over = [&]() -> asio::awaitable<bool> {
    co_await stop_pump(s);
    if (s.aborted()) co_return false;
    if (!co_await forward(start, end)) co_return false;
    start = parsed = end;
    while (!s.pending.empty()) retire_request(s, 0);
    co_return true;
  };

  for (;;) {
    if (s.aborted()) co_return false;
    const auto r = parser.parse(std::string_view(in.data() + parsed, end - parsed));
    parsed += r.consumed;

    switch (r.event) {
      case http::RequestEvent::need_more:
        if (in_body) {
          if (!co_await forward(start, parsed)) co_return false;
          start = parsed;
        } else if (parsed - start > max_head) {
          co_return co_await refuse_malformed(self, 431, nullptr);
        }
        break;

      case http::RequestEvent::head: {
        const http::RequestHead& head = parser.head();
        if (parsed - start > max_head) co_return co_await refuse_malformed(self, 431, &head);
        // Bound the pipelining queue before adding to it.
        while (s.pump_running && s.pending.size() >= kMaxOutstanding && !s.aborted()) co_await s.wait();
        if (s.aborted()) co_return false;

        const auto policy = s.in.policy.current();
        // The canonical form (parse_head) is decided on and forwarded.
        const policy::HttpRequest request{head.method, head.target, head.authority, head.headers};
        const policy::Decision decision = policy->decide_http(flow, request);
        s.in.observer.decided(decision);
        s.in.observer.saw_request(head.method, head.target, head.authority, head.headers);
        if (decision.verdict != policy::Verdict::allow) {
          s.in.observer.counted_request(false, false);
          spdlog::debug("connection {}: {} {} denied: {}", id, head.method, head.target, decision.reason);
          log_request(s, head.method, head.target, head.host, decision.rule, false, 403, Clock::now(), 0,
                      status_response(403).size());
          co_return co_await refuse(self, 403);
        }
        s.in.observer.counted_request(false, true);

        if (connected && !s.pump_running) {
          // The upstream has gone (closed after its last response): nothing
          // can answer this request. The client sees the close and retries,
          // as after any keep-alive race.
          log_request(s, head.method, head.target, head.host, decision.rule, true, 0, Clock::now());
          co_return co_await finish_quietly(s);
        }
        if (!connected) {
          // A failed connect is answered like a gateway would (502, or 504
          // when the upstream never answered), not with a reset the client
          // cannot tell from a policy deny.
          UpstreamConnector::Connected up = co_await s.in.upstream.connect();
          if (s.aborted()) co_return false;  // revoked or shut down meanwhile: reset already
          if (!up.socket) {
            s.ending.note(EndReason::upstream_connect_failed, up.error);
            const int status = up.failure == UpstreamFailure::connect_timeout ? 504 : 502;
            log_request(s, head.method, head.target, head.host, decision.rule, true, status, Clock::now(), 0,
                        status_response(status).size(), up.error);
            co_return co_await refuse(self, status);
          }
          s.upstream = std::move(*up.socket);
          connected = true;
        }
        // Only protocols in proxy.http.upgrade_protocols are forwarded in
        // Upgrade; with none left the request goes on as plain HTTP.
        const std::vector<std::string> upgrades =
            http::allowed_upgrades(head, settings.http.upgrade_protocols);
        const bool opens_tunnel = head.connect || (head.upgrade && !upgrades.empty());
        s.pending.push_back(PendingRequest{head.method, head.target, head.host, decision.rule, opens_tunnel,
                                           head.connect, upgrades, Clock::now()});
        s.responses.expect({head.method == "HEAD", head.connect});

        // The head goes out as serialised from what was decided, never as read.
        const std::string out_head = http::serialise(head, upgrades);
        if (!co_await forward_bytes(out_head.data(), out_head.size())) co_return false;
        start = parsed;
        if (!head.upgrade && !head.connect && every_request_allowed(*policy, flow)) {
          // Nothing on this connection can be denied any more.
          s.in.observer.requests_uninspected();
          co_return co_await hand_over();
        }
        if (!s.pump_running) {
          s.pump_running = true;
          guarded_spawn(co_await asio::this_coro::executor, "HTTP response pump", pump_responses(self),
                        Failure::survivable);
        }
        in_body = true;
        deadline.reset();
        continue;
      }

      case http::RequestEvent::message_end:
        if (!co_await forward(start, parsed)) co_return false;
        start = parsed;
        in_body = false;
        if (end > parsed) deadline = Clock::now() + header_timeout;  // the next head has begun
        continue;

      case http::RequestEvent::upgrade: {
        // The bytes after an Upgrade/CONNECT request belong to the new
        // protocol if the server agrees, or are HTTP again if it declines:
        // hold them until the answer.
        if (!co_await forward(start, parsed)) co_return false;
        start = parsed;
        co_await wait_for_responses(s);
        if (s.aborted()) co_return false;
        if (s.tunnel) {
          while (s.pump_running) co_await s.wait();
          co_return co_await hand_over();
        }
        if (!s.pump_running) co_return co_await finish_quietly(s);
        parser.resume_after_declined_upgrade();
        continue;
      }

      case http::RequestEvent::http2:
        if (!connected && s.pending.empty() && start == 0) {
          // Prior-knowledge HTTP/2 from the first byte: every stream is
          // decided by the HTTP/2 inspector, from the preface on.
          s.http2_initial = std::string(in.data(), end);
          co_return false;
        }
        spdlog::warn(
            "connection {}: HTTP/2 preface after HTTP/1.1 requests on the same connection; "
            "resetting",
            id);
        s.stop_pump = true;
        reset_socket(s.client());
        reset_socket(s.upstream);
        co_await stop_pump(s);
        co_return false;

      case http::RequestEvent::error:
        // llhttp's error, or a head it accepted that the strict reading
        // (http::parse_head) refuses.
        spdlog::debug("connection {}: malformed request: {}", id, r.reason);
        if (in_body) {
          // The body of a request already forwarded breaks its framing: the
          // upstream waits for bytes that can never complete it, and no
          // status can be sent in order. Both sides are reset, so nothing
          // after the break is read by the upstream as a request.
          s.in.observer.counted_request(false, false);
          s.ending.note(EndReason::bad_request, r.reason);
          s.stop_pump = true;
          reset_socket(s.client());
          reset_socket(s.upstream);
          co_await stop_pump(s);
          while (!s.pending.empty()) retire_request(s, 0);
          co_return false;
        }
        co_return co_await refuse_malformed(self, 400, nullptr);
    }

    // Need more bytes from the client.
    if (start > 0) {
      std::memmove(in.data(), in.data() + start, end - start);
      parsed -= start;
      end -= start;
      start = 0;
    }
    // Nothing held: the buffer goes back while the client is quiet.
    if (end == 0) in.release();
    // Between requests: a request has ended and no byte of the next one has
    // come (else `deadline` runs). The keep-alive deadline applies.
    const bool between_requests = !in_body && !deadline;
    // Park: nothing owed either way and both parsers between messages of a
    // connection that stays open, so a fresh session reads what comes next
    // exactly as this one would. The pump is stopped first (no read
    // pending); an upstream that ended meanwhile keeps the connection here,
    // where the next request finds it gone.
    // A busy connection (park_after) parks only once the keep-alive watch
    // woke it for a quiet spell (park_requested).
    if (between_requests && end == 0 && s.may_park &&
        (s.park_after.count() == 0 || park_requested || s.boundary_requested()) && read_since_resume &&
        connected && s.pump_running && s.pending.empty() && parser.idle_keep_alive() &&
        s.responses.idle_keep_alive()) {
      co_await stop_pump(s);
      if (s.aborted()) co_return false;
      if (!s.upstream_ended && s.pending.empty()) {
        s.parked = true;
        co_return false;
      }
    }
    // A boundary window while the first head is incomplete (nothing
    // forwarded, no upstream): the connection goes back to its owner with
    // the bytes read, to move to the new process (ClientPending).
    if (!connected && !s.resumed && s.pending.empty() && start == 0 && !in_body && s.boundary_requested()) {
      s.first_pending.emplace(in.data() ? std::string(in.data(), end) : std::string());
      co_return false;
    }
    const ReadLimit limit = in_body            ? ReadLimit{}
                            : between_requests ? ReadLimit{std::nullopt, true}
                                               : ReadLimit{deadline, false};
    ReadResult got;
    for (;;) {
      got = co_await wait_client(self, limit);
      if (got.park || got.yield || got.ec || got.timed_out) break;
      in.make_room(end, buffer_limit, last_read_filled);
      const std::size_t room = in.capacity() - end;
      got.n = s.client().read_some(asio::buffer(in.data() + end, room), got.ec);
      last_read_filled = got.n == room;
      if (got.ec != asio::error::would_block && got.ec != asio::error::try_again) break;
    }
    park_requested = got.park;
    if (got.park) continue;   // the last answer went out, or a quiet spell: park now (above)
    if (got.yield) continue;  // a boundary window: hand back (above)
    if (got.timed_out && between_requests) co_return co_await close_idle(self);
    if (got.timed_out) co_return co_await refuse_malformed(self, 408, nullptr);
    if (got.ec == asio::error::eof) {
      // The client is done sending. A partial head is dropped (it was never
      // forwarded); an unfinished body is cut short exactly as the client
      // cut it. The upstream gets the FIN and answers what it was asked.
      if (connected) {
        boost::system::error_code ignored;
        s.upstream.shutdown(tcp::socket::shutdown_send, ignored);
        co_return co_await finish_quietly(s);
      }
      co_return false;
    }
    if (got.ec) {
      if (!s.aborted()) {
        spdlog::debug("connection {}: client read failed: {}", id, got.ec.message());
        s.abort();
      }
      co_await stop_pump(s);
      co_return false;
    }
    if (!in_body && !deadline) deadline = Clock::now() + header_timeout;
    end += got.n;
    read_since_resume = true;
  }
}

}  // namespace

SHUNT_FRAME_ALLOC_WARNING_OFF  // common/async.h
asio::awaitable<InspectOutcome> inspect_http(Inspection in, HttpResume resume) {
  auto session = std::make_shared<Session>(in, co_await asio::this_coro::executor);
  Session& s = *session;
  s.may_park = resume.may_park;
  s.park_after = resume.park_after;
  s.initial = std::move(resume.initial);
  if (resume.upstream) {
    s.upstream = std::move(*resume.upstream);
    s.resumed = true;
  }
  // A cancel resets both sockets and wakes the request loop if it is
  // waiting for the pump.
  const auto on_cancel = in.cancel.install([&s] { s.reset_both(); });
  // A boundary window opened while the loop waits between requests with
  // every answer out: wake it to park (as retire_request does). Mid-request
  // the loop finds the request at its next boundary by itself.
  // Before the first head is whole (no upstream yet), wake the wait for
  // it so the loop hands the connection back.
  BoundaryRequest::PokeFn wake([&s] {
    boost::system::error_code ignored;
    if (s.reading_client && !s.upstream.is_open() && !s.resumed && s.pending.empty()) {
      s.first_yield = true;
      s.client().cancel(ignored);
      return;
    }
    if (!s.may_park || !s.keepalive_wait || !s.pending.empty()) return;
    s.park_wake = true;
    s.client().cancel(ignored);
  });
  const auto poke = BoundaryRequest::install(in.boundary, wake);
  bool hand_over = false;
  try {
    hand_over = co_await run_requests(session);
  } catch (const std::exception& e) {
    spdlog::warn("connection {}: HTTP inspection: {}", s.id(), e.what());
    s.stop_pump = true;
    reset_socket(s.client());
    reset_socket(s.upstream);
  }
  // Nothing started here outlives this call: the pump and the refusal's
  // client reader end (every way out above has stopped them, or reset the
  // sockets they wait on); until then the session's references hold.
  s.stop_pump = true;
  {
    boost::system::error_code ignored;
    if (s.pump_running) s.upstream.cancel(ignored);
  }
  while (s.pump_running || s.draining_client) co_await s.wait();

  InspectOutcome out;
  out.ending = std::move(s.ending);
  if (s.http2_initial) {
    out.http2.emplace(Http2Start{std::move(in.client), std::move(*s.http2_initial)});
  } else if (s.first_pending && !s.aborted()) {
    out.client_pending.emplace(ClientPending{std::move(in.client), std::move(*s.first_pending)});
  } else if (s.parked && !s.aborted()) {
    out.parked.emplace(SocketPair{std::move(in.client), std::move(s.upstream)});
  } else if (hand_over && !s.aborted()) {
    out.handover.emplace(SocketPair{std::move(in.client), std::move(s.upstream)});
  } else {
    // Denied, finished or reset: whatever is still open closes here (a
    // graceful end shut both write sides already).
    boost::system::error_code ignored;
    in.client.close(ignored);
    s.upstream.close(ignored);
  }
  co_return out;
}

SHUNT_FRAME_ALLOC_WARNING_ON

}  // namespace shunt::proxy

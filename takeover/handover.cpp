#include "takeover/handover.h"

#include "common/async.h"

#include <unistd.h>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace shunt::takeover {

namespace asio = boost::asio;
using Socket = asio::posix::stream_descriptor;

std::string_view to_string(Outcome outcome) {
  switch (outcome) {
    case Outcome::ok:
      return "ok";
    case Outcome::probe:
      return "probe";
    case Outcome::incompatible:
      return "incompatible";
    case Outcome::timeout:
      return "timeout";
    case Outcome::failed:
      return "failed";
  }
  return "failed";
}

// One message, waited for without blocking the control thread: signals and
// reloads go on while a new process takes its time.
asio::awaitable<Result<Message>> receive(Socket& peer, std::chrono::milliseconds within) {
  Deadline deadline(peer.get_executor());
  deadline.arm_after(within, [&peer] {
    boost::system::error_code ignored;
    peer.cancel(ignored);
  });
  boost::system::error_code ec;
  co_await peer.async_wait(Socket::wait_read, asio::redirect_error(asio::use_awaitable, ec));
  deadline.disarm();
  if (deadline.expired()) co_return SysError{ETIMEDOUT, "no answer from the new process"};
  if (ec) co_return SysError{ec.value(), "control connection: " + ec.message()};
  co_return recv_message(peer.native_handle(), Clock::now());
}

namespace {

Status send(Socket& peer, std::uint16_t version, MessageType type, std::string_view payload,
            std::span<const int> fds, const Timeouts& t) {
  return send_message(peer.native_handle(), version, type, payload, fds, Clock::now() + t.step);
}

HandoverResult fail(HandoverResult r, const SysError& e) {
  r.outcome = e.code == ETIMEDOUT ? Outcome::timeout : Outcome::failed;
  r.detail = e.message();
  return r;
}

Result<Message> expect(Result<Message> got, MessageType type) {
  return takeover::expect(std::move(got), type, "the new process gave up");
}

}  // namespace

// Batches of at most kMaxPairsPerMessage pairs and kMaxPayloadBytes, then
// pairs_end with the count. Version 3 names each entry's fd count.
Status send_pairs(Socket& peer, std::uint16_t version, const std::vector<HandedPair>& pairs,
                  const Timeouts& t) {
  std::vector<std::pair<std::string_view, std::uint8_t>> entries;
  std::vector<int> fds;
  std::size_t payload = 4;
  auto flush = [&]() -> Status {
    if (entries.empty()) return ok_status();
    std::string encoded;
    if (version >= kProtocolBoundary) {
      encoded = encode_pairs(entries);
    } else {
      std::vector<std::string_view> states;
      for (const auto& e : entries) states.push_back(e.first);
      encoded = encode_pairs(states);
    }
    Status st = send(peer, version, MessageType::pairs, encoded, fds, t);
    entries.clear();
    fds.clear();
    payload = 4;
    return st;
  };
  for (const HandedPair& p : pairs) {
    // Before version 3 every entry is a pair; the caller offers singles
    // only to a process that takes them.
    if (p.upstream_fd < 0 && version < kProtocolBoundary)
      return SysError{EPROTO,
                      "a connection with no upstream for a version " + std::to_string(version) + " peer"};
    const std::size_t size = pair_payload_size(p.state);
    if (4 + size > kMaxPayloadBytes) return SysError{EMSGSIZE, "a pair's state does not fit a message"};
    if (entries.size() == kMaxPairsPerMessage || payload + size > kMaxPayloadBytes)
      if (Status st = flush(); !st) return st;
    entries.emplace_back(p.state, p.upstream_fd < 0 ? 1 : 2);
    fds.push_back(p.client_fd);
    if (p.upstream_fd >= 0) fds.push_back(p.upstream_fd);
    payload += size;
  }
  if (Status st = flush(); !st) return st;
  return send(peer, version, MessageType::pairs_end,
              Writer().u32(static_cast<std::uint32_t>(pairs.size())).take(), {}, t);
}

asio::awaitable<HandoverResult> hand_over(Socket& peer, const HandoverHooks& hooks,
                                          const Timeouts& timeouts) {
  HandoverResult r;
  auto hello_msg = co_await receive(peer, timeouts.step);
  if (!hello_msg && hello_msg.error().code == ECONNRESET) {
    r.outcome = Outcome::probe;
    co_return r;
  }
  hello_msg = expect(std::move(hello_msg), MessageType::hello);
  if (!hello_msg) co_return fail(r, hello_msg.error());
  const auto hello = decode_hello(hello_msg->payload);
  if (!hello) co_return fail(r, SysError{EBADMSG, "malformed hello"});
  r.peer_pid = hello->pid;
  r.peer_binary = hello->binary;
  const auto version = negotiate(*hello);
  if (!version) {
    r.outcome = Outcome::incompatible;
    r.detail = incompatible(*hello);
    // The refusal carries the reason so the new process can print it.
    (void)send(peer, kProtocolMax, MessageType::refuse, Writer().str(r.detail).take(), {}, timeouts);
    co_return r;
  }
  const Welcome welcome{*version, SHUNT_VERSION, static_cast<std::uint32_t>(::getpid())};
  if (Status st = send(peer, *version, MessageType::welcome, encode(welcome), {}, timeouts); !st)
    co_return fail(r, st.error());

  // Listening sockets in batches of at most SCM_MAX_FD.
  const std::vector<HandedListener> listeners = hooks.listeners();
  for (std::size_t first = 0; first < listeners.size(); first += kMaxFdsPerMessage) {
    const std::size_t n = std::min(kMaxFdsPerMessage, listeners.size() - first);
    std::vector<ListenerEntry> batch;
    std::vector<int> fds;
    for (std::size_t i = first; i < first + n; ++i) {
      batch.push_back(listeners[i].entry);
      fds.push_back(listeners[i].fd);
    }
    if (Status st = send(peer, *version, MessageType::listeners, encode(batch), fds, timeouts); !st)
      co_return fail(r, st.error());
  }
  r.listeners = listeners.size();
  r.version = *version;
  if (*version >= kProtocolPairs && hooks.kernel_maps) {
    if (const std::optional<HandedMaps> maps = hooks.kernel_maps()) {
      if (Status st = send(peer, *version, MessageType::kernel_maps, encode(maps->set), maps->fds, timeouts);
          !st)
        co_return fail(r, st.error());
    }
  }
  if (Status st = send(peer, *version, MessageType::listeners_end,
                       Writer().u32(static_cast<std::uint32_t>(listeners.size())).take(), {}, timeouts);
      !st)
    co_return fail(r, st.error());

  // Until `ready` both processes may accept from the same sockets; nothing
  // has been given up yet, so a failure here needs no taking back.
  auto ready = expect(co_await receive(peer, timeouts.start), MessageType::ready);
  if (!ready) co_return fail(r, ready.error());
  // Version 2: whether the new process shares our maps and takes pairs.
  // Version 2: which pairs the new process takes.
  const std::uint8_t flags = *version >= kProtocolPairs ? Reader(ready->payload).u8() : 0;
  const PairKinds kinds{(flags & kReadyKernelPairs) != 0, (flags & kReadyParkedHttp) != 0,
                        (flags & kReadyUserspace) != 0};
  r.kinds = kinds;
  r.boundary_window = *version >= kProtocolBoundary && (flags & kReadyBoundary) != 0;
  const bool takes_pairs =
      hooks.freeze_pairs && (kinds.kernel_spliced || kinds.parked_http || kinds.userspace);

  hooks.pause();
  bool frozen = false;
  // Taking back: the pairs first (they act on their sockets again), then
  // the listeners.
  auto take_back = [&] {
    if (frozen) hooks.thaw_pairs();
    hooks.resume();
  };
  if (Status st = send(peer, *version, MessageType::released, {}, {}, timeouts); !st) {
    take_back();
    co_return fail(r, st.error());
  }
  if (takes_pairs) {
    frozen = true;
    const std::vector<HandedPair> pairs = hooks.freeze_pairs(kinds, *version);
    if (Status st = send_pairs(peer, *version, pairs, timeouts); !st) {
      take_back();
      co_return fail(r, st.error());
    }
    r.pairs = pairs.size();
  }
  // The new process adopts the pairs before it commits.
  auto commit = expect(co_await receive(peer, timeouts.step), MessageType::commit);
  if (!commit) {
    take_back();
    co_return fail(r, commit.error());
  }
  if (frozen) hooks.let_go_pairs();
  r.outcome = Outcome::ok;
  co_return r;
}

}  // namespace shunt::takeover

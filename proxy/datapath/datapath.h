// The three ways bytes move once a connection's verdict is final. A data
// path gets what it needs and nothing else:
//
//   - the socket pair, taken over: it closes (or resets) both before it
//     returns (by reference, so the pair is not copied into every frame of
//     a connection that may stay open for hours; the caller keeps the
//     storage alive until the path returns);
//   - a DatapathSink (proxy/observer.h) for bytes moved and its own events;
//   - a CancelSlot (common/cancel_slot.h): the connection's owner cancels it
//     (revoke, drain, idle timeout) and the path resets both sides at once;
//   - for the sockmap path, the kernel side injected (KernelSplice).
//
// Each runs until both directions have ended (FIN forwarded each way) or
// one side resets, in which case the other side is reset too, and returns
// how it ended (Ending): the first cause it met, which the connection
// records (proxy/connection.cpp). Nothing here knows the connection, the
// registry or the policy.
#pragma once

#include <utility>  // before Asio: Boost 1.74 awaitable.hpp uses std::exchange unincluded

#include "common/cancel_slot.h"
#include "common/unique_fd.h"
#include "proxy/datapath/pair_handoff.h"
#include "proxy/end_reason.h"
#include "proxy/observer.h"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <functional>
#include <optional>
#include <string_view>

namespace shunt::bpf {
class SockmapBridge;
class EndpointShortcut;
}  // namespace shunt::bpf

namespace shunt::proxy {

class BulkGrants;
class HangupWatcher;

// A connected client and upstream socket, handed from the connection (or
// an inspector) to a data path.
struct SocketPair {
  boost::asio::ip::tcp::socket client;
  boost::asio::ip::tcp::socket upstream;
};

// Directions of a pair that ended before the data path started (FIN passed
// on): a half-closed pair a takeover moved (join.h).
struct HalfClosed {
  bool up = false;    // client -> upstream
  bool down = false;  // upstream -> client
};

// Asio async read/write through a 64 KiB buffer per direction, held only
// while bytes are in flight (common/io_buffer.h).
// `handoff`: this thread's, through which a takeover may move the pair
// between reads (join.h, UserspaceHold); null: it never moves.
boost::asio::awaitable<Ending> run_copy(SocketPair& pair, DatapathSink& sink, CancelSlot& cancel,
                                        PairHandoff* handoff = nullptr, HalfClosed closed = {});

// splice(2) through a pipe per direction, held only while bytes are in
// flight, driven by Asio readiness.
boost::asio::awaitable<Ending> run_splice(SocketPair& pair, DatapathSink& sink, CancelSlot& cancel,
                                          PairHandoff* handoff = nullptr, HalfClosed closed = {});

// What the sockmap path needs from the process, injected by whoever wires
// the connection (the server's ProxyContext and the worker's watcher).
struct KernelSplice {
  bpf::SockmapBridge* bridge = nullptr;  // null: sockmap unavailable, the pair is spliced
  BulkGrants* bulk_grants = nullptr;     // with the bridge
  HangupWatcher* hangups = nullptr;      // this thread's; with the bridge
  // The endpoint short-circuit (proxy.endpoint_shortcut; null: off) and the
  // client's and the server's pods, whose netns hold the endpoints' own
  // sockets (empty: not a known pod; searched for).
  bpf::EndpointShortcut* shortcut = nullptr;
  std::string_view client_pod;
  std::string_view server_pod;
  // This thread's pairs as a takeover moves them (null: never moved).
  PairHandoff* handoff = nullptr;
};

// Hands both sockets to the BPF sockmap (sockmap_path.cpp); falls back to
// run_splice when the kernel refuses them. `inspected`: inspection may have
// read from or written to either socket (the handover then reads its
// baselines from the kernel instead of assuming 0).
//
// After the handover the pair needs no coroutine (an idle spliced
// connection is a small record and two hang-up watches, issue 16), so this
// returns as soon as the kernel has the pair: nothing, and `on_end` gets
// the Ending later, exactly once, on this thread, from a handler of the
// pair's own (the owner may go away in it). `sink`, `cancel`,
// `kernel.client_pod` and `kernel.server_pod` must stay alive until then. When the path ended
// before that (a refusal, the splice fallback, a cancel), its Ending is
// returned and `on_end` is never called.
boost::asio::awaitable<std::optional<Ending>> start_sockmap(SocketPair& pair, DatapathSink& sink,
                                                            CancelSlot& cancel, const KernelSplice& kernel,
                                                            bool inspected,
                                                            std::function<void(Ending)> on_end);

// start_sockmap awaited to the pair's end (tests, and callers that keep a
// coroutine anyway).
boost::asio::awaitable<Ending> run_sockmap(SocketPair& pair, DatapathSink& sink, CancelSlot& cancel,
                                           const KernelSplice& kernel, bool inspected);

// A pair another process handed over in a takeover: both sockets already in
// the sockmap, `state` as that process left it. It starts frozen
// (kernel.handoff, required) and acts on its sockets once thawed; `on_end`
// as for start_sockmap.
void start_sockmap_adopted(UniqueFd client, UniqueFd upstream, const SplicedPairState& state,
                           DatapathSink& sink, CancelSlot& cancel, const KernelSplice& kernel,
                           boost::asio::any_io_executor executor, std::function<void(Ending)> on_end);

}  // namespace shunt::proxy

// What the takeover messages say (layouts in wire.h's format) and how two
// processes agree on a protocol version. The steps themselves are in
// handover.h (the running process) and successor.h (the one taking over);
// docs/operating.md, "Upgrades", tells them as a story.
#pragma once

#include "common/unique_fd.h"
#include "takeover/wire.h"

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace shunt::takeover {

// The versions this build speaks. Version 1: listeners (proxy and admin)
// move; open connections stay with the old process, which drains them.
// Version 2 adds the sockmap's maps (kernel_maps) and the kernel-spliced
// pairs (pairs, pairs_end; `ready` says whether the new process takes
// them); other open connections still drain in the old process.
// Version 3 adds the boundary window after the commit (late.h): the old
// process keeps the control connection open and hands on, batch by batch,
// every connection that reaches a boundary within Timeouts::boundary
// (HTTP/1.1 once its request in flight is answered, TLS connections
// waiting for their ClientHello with the bytes read so far, copy and
// splice pairs once flushed or half-closed); `pairs` entries then say how
// many fds each carries (one for a connection with no upstream yet), and
// a connection's state carries the bytes an inspector had read and the
// directions already closed.
// Version 4: a kernel-spliced pair's state carries a second short-circuit
// figure, the upstream -> client bytes a local server's sk_msg moved (the
// proxy's SplicedPairState::short_circuited_down); at version 3 the old
// process folds it into the client socket's written baseline, which the
// FIN rule reads the same way.
inline constexpr std::uint16_t kProtocolMin = 1;
inline constexpr std::uint16_t kProtocolMax = 4;
inline constexpr std::uint16_t kProtocolPairs = 2;         // the first version that moves pairs
inline constexpr std::uint16_t kProtocolBoundary = 3;      // the first with the boundary window
inline constexpr std::uint16_t kProtocolShortcutDown = 4;  // the first with short_circuited_down
// `ready`'s flags (version 2): the pairs the new process takes.
inline constexpr std::uint8_t kReadyKernelPairs = 1;  // kernel-spliced (it shares the maps)
inline constexpr std::uint8_t kReadyParkedHttp = 2;   // HTTP/1.1 connections between requests
inline constexpr std::uint8_t kReadyUserspace = 4;    // copy and splice pairs between reads
// Version 3: connections that reach a boundary after the commit (late.h).
inline constexpr std::uint8_t kReadyBoundary = 8;

// Every step is bounded: a peer that stalls longer is treated as gone and
// the old process keeps (or takes back) everything.
struct Timeouts {
  std::chrono::milliseconds step{5'000};
  // From the listeners sent to `ready`: the new process loads BPF, binds
  // what is new and attaches steering in between. Generous, because the
  // old process serves throughout and only a hung successor waits it out:
  // loading and attaching took 21 s on the legacy VM leg (6.1 under qemu
  // without KVM), and 20 s here failed 1 takeover in 5 there.
  std::chrono::milliseconds start{60'000};
  // Version 3: how long after the commit the old process keeps handing on
  // connections as they reach a boundary; what has not by then drains in
  // the old process.
  std::chrono::milliseconds boundary{10'000};
};

struct Hello {  // layout frozen for every version (wire.h)
  std::uint16_t min_version = kProtocolMin;
  std::uint16_t max_version = kProtocolMax;
  std::string binary;  // SHUNT_VERSION, for the log lines
  std::uint32_t pid = 0;
};
std::string encode(const Hello& h);
std::optional<Hello> decode_hello(std::string_view payload);

struct Welcome {
  std::uint16_t version = 0;
  std::string binary;
  std::uint32_t pid = 0;
};
std::string encode(const Welcome& w);
std::optional<Welcome> decode_welcome(std::string_view payload);

// The highest version both speak, or nothing.
std::optional<std::uint16_t> negotiate(const Hello& peer);
// "incompatible takeover protocol: ..." naming both ranges, for both logs.
std::string incompatible(const Hello& peer);

// One listening socket. `role` is "listener" (proxy.listeners[], by name)
// or "admin"; `endpoint` the bound address as config::to_string prints it,
// which is what the new process matches its own listeners by.
struct ListenerEntry {
  std::string role;
  std::string name;
  std::string endpoint;
  bool transparent = false;
};
// A batch: entries in order, one fd per entry in the same order.
std::string encode(const std::vector<ListenerEntry>& batch);
std::optional<std::vector<ListenerEntry>> decode_listeners(std::string_view payload);

// The sockmap's maps (version 2): a layout version the data path defines
// and the maps' names, one fd per name in the same order.
struct KernelMapSet {
  std::uint32_t version = 0;
  std::vector<std::string> names;
};
std::string encode(const KernelMapSet& maps);
std::optional<KernelMapSet> decode_kernel_maps(std::string_view payload);

// A batch of pairs: each an opaque state the proxy encodes, with its fds in
// the same order (client, then upstream). Version 2: two fds each. Version
// 3: each entry says how many (1: a connection with no upstream yet, such
// as a TLS one waiting for its ClientHello; 2: a pair).
inline constexpr std::size_t kMaxPairsPerMessage = kMaxFdsPerMessage / 2;
struct PairEntry {
  std::string state;
  std::uint8_t fds = 2;
};
std::string encode_pairs(const std::vector<std::string_view>& states);  // version 2
std::optional<std::vector<std::string>> decode_pairs(std::string_view payload);
std::string encode_pairs(const std::vector<std::pair<std::string_view, std::uint8_t>>& entries);  // version 3
std::optional<std::vector<PairEntry>> decode_pair_entries(std::string_view payload);
// The payload bytes one more state adds to a batch (either version).
inline std::size_t pair_payload_size(std::string_view state) { return 5 + state.size(); }

// One pair (or single connection) as received: its state, its client
// socket and, for a pair, its upstream.
struct InheritedPair {
  std::string state;
  UniqueFd client;
  UniqueFd upstream;  // empty: a connection with no upstream yet (version 3)
};

// Collects a batch: `pairs` messages until `pairs_end`, in either
// version's layout.
class PairCollector {
 public:
  explicit PairCollector(std::uint16_t version) : version_(version) {}
  // True once pairs_end came and its count agrees; an error for a refusal,
  // another type, or states and fds that disagree.
  Result<bool> feed(Message m);
  [[nodiscard]] std::vector<InheritedPair> take() { return std::move(pairs_); }

 private:
  std::uint16_t version_;
  std::vector<InheritedPair> pairs_;
};

// `got` if it is a message of `type`. A refusal becomes EPROTO with the
// peer's reason after `refused` ("the running shunt refused"); any other
// type, EPROTO naming both.
Result<Message> expect(Result<Message> got, MessageType type, std::string_view refused);

inline constexpr std::string_view kRoleListener = "listener";
inline constexpr std::string_view kRoleAdmin = "admin";

}  // namespace shunt::takeover

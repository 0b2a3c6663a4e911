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
inline constexpr std::uint16_t kProtocolMin = 1;
inline constexpr std::uint16_t kProtocolMax = 2;
inline constexpr std::uint16_t kProtocolPairs = 2;  // the first version that moves pairs
// `ready`'s flags (version 2): the pairs the new process takes.
inline constexpr std::uint8_t kReadyKernelPairs = 1;  // kernel-spliced (it shares the maps)
inline constexpr std::uint8_t kReadyParkedHttp = 2;   // HTTP/1.1 connections between requests
inline constexpr std::uint8_t kReadyUserspace = 4;    // copy and splice pairs between reads

// Every step is bounded: a peer that stalls longer is treated as gone and
// the old process keeps (or takes back) everything.
struct Timeouts {
  std::chrono::milliseconds step{5'000};
  // From the listeners sent to `ready`: the new process loads BPF, binds
  // what is new and attaches steering in between.
  std::chrono::milliseconds start{20'000};
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

// A batch of kernel-spliced pairs (version 2): each an opaque state the
// proxy encodes, with two fds per pair in the same order (client, upstream).
inline constexpr std::size_t kMaxPairsPerMessage = kMaxFdsPerMessage / 2;
std::string encode_pairs(const std::vector<std::string_view>& states);
std::optional<std::vector<std::string>> decode_pairs(std::string_view payload);
// The payload bytes one more state adds to a batch.
inline std::size_t pair_payload_size(std::string_view state) { return 4 + state.size(); }

// `got` if it is a message of `type`. A refusal becomes EPROTO with the
// peer's reason after `refused` ("the running shunt refused"); any other
// type, EPROTO naming both.
Result<Message> expect(Result<Message> got, MessageType type, std::string_view refused);

inline constexpr std::string_view kRoleListener = "listener";
inline constexpr std::string_view kRoleAdmin = "admin";

}  // namespace shunt::takeover

// EndpointShortcut: the loader of sockmap_shortcut.bpf.c, the sk_msg
// short-circuit for a local client's own socket (docs/datapath.md, "The
// endpoint short-circuit"). It shares the peer counters, the redirect
// targets and the bulk-event ring with SockmapBridge, and is used only for
// pairs SockmapBridge has already handed to the kernel.
#pragma once

#include "bpf/sockmap.h"
#include "common/error.h"

#include <sys/socket.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shunt::bpf {

// Why an endpoint was not captured; also the
// shunt_datapath_fallbacks_total{reason} label (to_string).
enum class CaptureOutcome {
  captured,
  not_local,        // no socket with that 4-tuple in the endpoint's netns (a remote client)
  not_established,  // the endpoint already sent its FIN
  blocking,         // blocking socket: tcp_bpf's recvmsg can return EAGAIN to it
  not_accepted,     // a server's socket its application has not accept()ed yet
  zerocopy,         // SO_ZEROCOPY: tcp_bpf's sendmsg sends no completions
  ulp,              // kTLS (or another ULP) already on the socket
  foreign_psock,    // already in another sockmap
  refused,          // the kernel refused the map update
  error,            // BPF_PROG_TEST_RUN itself failed
  // Not a capture outcome: captured, then taken out again because it sent
  // shortcut_give_up bytes over TCP without the fence opening (a sender that
  // never pauses; sockmap_shortcut.bpf.c, pass_over_tcp). An endpoint whose
  // application turns blocking, SO_ZEROCOPY or a ULP on after the capture
  // is taken out too, counted as `blocking`, `zerocopy` or `ulp`.
  stuck_on_tcp,
};
std::string_view to_string(CaptureOutcome);
// Why a ring event asks to release a captured endpoint, as the fallback
// it counts; nullopt for events that are not releases.
std::optional<CaptureOutcome> released_for(SockmapBridge::EventKind kind);
// Every outcome but `captured`, for the metric's zero-initialised labels.
inline constexpr CaptureOutcome kCaptureFallbacks[] = {
    CaptureOutcome::not_local,     CaptureOutcome::not_established, CaptureOutcome::blocking,
    CaptureOutcome::not_accepted,  CaptureOutcome::zerocopy,        CaptureOutcome::ulp,
    CaptureOutcome::foreign_psock, CaptureOutcome::refused,         CaptureOutcome::error,
    CaptureOutcome::stuck_on_tcp};

// One captured endpoint, as the short-circuit sees it.
struct EndpointStats {
  std::uint64_t bytes = 0;      // redirected by sk_msg: settled, plus `unsettled`
  std::uint64_t switches = 0;   // times the fence opened (TCP -> redirect)
  std::uint64_t fallbacks = 0;  // times the target was short of room (redirect -> TCP)
  // Of `bytes`, counted for the last redirect, whose push the next message
  // settles (sockmap_shortcut.bpf.c, settle_pushed); nonzero at the end when
  // the last message before the FIN was redirected.
  std::uint64_t unsettled = 0;
  std::uint64_t short_pushes = 0;   // pushes found short, and the bytes they
  std::uint64_t short_bytes = 0;    // did not write (taken off `bytes`)
  std::uint64_t foreign_bytes = 0;  // written to the target by another writer during a push
  bool redirecting = false;
};

// The endpoint's 4-tuple as its own socket sees it: the peer (local) and
// name (remote) of shunt's socket facing it.
struct EndpointAddress {
  sockaddr_storage local{};
  sockaddr_storage remote{};
};

// What a capture puts in the endpoint's entry besides its address: the
// same for either direction, client -> upstream (the client's socket, with
// shunt's upstream socket as target) or upstream -> client (a local
// server's accepted socket, with shunt's client-facing socket as target).
struct CaptureRequest {
  std::uint64_t target_cookie = 0;   // where the endpoint's bytes go: shunt's other socket
  std::uint64_t proxy_cookie = 0;    // shunt's socket facing the endpoint (already in the sockmap)
  std::uint64_t proxy_consumed = 0;  // what userspace read from it before the handover
  // The target's write_seq at the handover (SockmapBridge::HandoverResult::
  // write_seqs), which the fence measures the target's writes from.
  std::uint32_t target_seq = 0;
  // The endpoint's socket was accepted (a server), not connected (a
  // client): its bytes_acked does not count the handshake (the fence's
  // second condition, sockmap_shared.h `acked_base`).
  bool accepted = false;
};

class EndpointShortcut {
 public:
  // Loads the programs onto `bridge`'s maps and attaches the sk_msg program.
  // Fails on kernels without the pieces (the caller then runs without it).
  static Result<std::unique_ptr<EndpointShortcut>> load(const SockmapBridge& bridge,
                                                        std::uint32_t max_connections,
                                                        std::uint64_t bulk_threshold_bytes);
  ~EndpointShortcut();
  EndpointShortcut(const EndpointShortcut&) = delete;
  EndpointShortcut& operator=(const EndpointShortcut&) = delete;

  // Finds the endpoint socket in the caller's network namespace (`netns_id`
  // -1) or in the one with that nsid, and puts it in the short-circuit:
  // from its next sendmsg on, the fence decides when its bytes start to go
  // straight to `request.target_cookie`.
  CaptureOutcome capture(const EndpointAddress& endpoint, std::int64_t netns_id,
                         const CaptureRequest& request);

  // capture() wherever the endpoint lives on this node: first in its pod's
  // netns (learn_pods), or shunt's own when the pod is unknown; not found
  // there, in each other netns shunt's netns has an id for (at most
  // kMaxSearchedNetns of them). The capture program takes only a socket that
  // is the TCP peer of `proxy_cookie`'s socket (sequence numbers), so a
  // socket with the same 4-tuple in another netns is never captured. An
  // endpoint on another node (most servers) costs one BPF_PROG_TEST_RUN per
  // netns searched.
  CaptureOutcome capture_local(const EndpointAddress& endpoint, const std::string& pod,
                               const CaptureRequest& request);
  static constexpr std::size_t kMaxSearchedNetns = 64;

  [[nodiscard]] EndpointStats stats(const EndpointAddress& endpoint) const;

  // Where sockets live, for capture_local(): for each (pod name, host-side
  // device), the nsid (in shunt's netns) of the netns the device's peer is
  // in (IFLA_LINK_NETNSID); and every nsid shunt's netns knows (RTM_GETNSID;
  // a pod without `dev`, or shunt itself inside a pod, as in the bench's pods
  // topology). Learned once at start-up. Not thread-safe: call before the
  // workers run; read-only afterwards.
  void learn_pods(const std::vector<std::pair<std::string, std::string>>& pod_devices);
  [[nodiscard]] std::int64_t netns_of(const std::string& pod) const;

  // Takes the endpoint out. Deleting (rather than waiting for its close) is
  // safe here where it is not for shunt's own sockets: nothing is ever
  // queued in the endpoint's psock (no verdict program runs on it and nothing
  // is redirected into it), so sk_psock_drop purges empty queues, and it
  // restores the socket's own protocol ops at once.
  void release(const EndpointAddress& endpoint, std::uint64_t proxy_cookie);

  // Whether a loopback pair was captured and its bytes short-circuited at
  // load (the kernel accepts every piece); false means the caller should not
  // use it.
  [[nodiscard]] bool works() const { return works_; }
  [[nodiscard]] const std::string& probe_detail() const { return probe_detail_; }

 private:
  EndpointShortcut();
  void probe(const SockmapBridge& bridge);

  struct Objects;  // the skeleton, owned (bpf/owned.h)
  std::unique_ptr<Objects> objects_;
  int capture_fd_ = -1;
  int endpoints_fd_ = -1;
  int sockets_fd_ = -1;
  std::map<std::string, std::int64_t, std::less<>> pod_netns_;
  std::vector<std::int32_t> known_netns_;  // every nsid in shunt's netns, at start-up
  bool works_ = false;
  std::string probe_detail_;
};

}  // namespace shunt::bpf

#include "bpf/sockmap_shortcut.h"

#include "bpf/features.h"
#include "bpf/loopback_pairs.h"
#include "bpf/owned.h"
#include "bpf/sockmap.h"
#include "bpf/sockmap_shared.h"
#include "common/unique_fd.h"
#include "netlink/netlink.h"
#include "netlink/rtnl.h"
#include "sockmap_shortcut.skel.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace shunt::bpf {

std::string_view to_string(CaptureOutcome o) {
  switch (o) {
    case CaptureOutcome::captured:
      return "captured";
    case CaptureOutcome::not_local:
      return "shortcut_not_local";
    case CaptureOutcome::not_established:
      return "shortcut_not_established";
    case CaptureOutcome::blocking:
      return "shortcut_blocking_socket";
    case CaptureOutcome::not_accepted:
      return "shortcut_not_accepted";
    case CaptureOutcome::zerocopy:
      return "shortcut_zerocopy";
    case CaptureOutcome::ulp:
      return "shortcut_ulp";
    case CaptureOutcome::foreign_psock:
      return "shortcut_foreign_psock";
    case CaptureOutcome::refused:
      return "shortcut_refused";
    case CaptureOutcome::error:
      return "shortcut_error";
    case CaptureOutcome::stuck_on_tcp:
      return "shortcut_stuck_on_tcp";
  }
  return "shortcut_error";
}

std::optional<CaptureOutcome> released_for(SockmapBridge::EventKind kind) {
  switch (kind) {
    case SockmapBridge::EventKind::shortcut_stuck:
      return CaptureOutcome::stuck_on_tcp;
    case SockmapBridge::EventKind::shortcut_zerocopy:
      return CaptureOutcome::zerocopy;
    case SockmapBridge::EventKind::shortcut_ulp:
      return CaptureOutcome::ulp;
    case SockmapBridge::EventKind::shortcut_blocking:
      return CaptureOutcome::blocking;
    case SockmapBridge::EventKind::bulk:
    case SockmapBridge::EventKind::hold:
    case SockmapBridge::EventKind::broken:
      break;
  }
  return std::nullopt;
}

namespace {

// sk_msg_md's view of the endpoint's 4-tuple (see shunt_endpoint_key).
shunt_endpoint_key key_of(const EndpointAddress& a) {
  shunt_endpoint_key k{};
  k.family = a.local.ss_family;
  if (a.local.ss_family == AF_INET) {
    const auto& l = reinterpret_cast<const sockaddr_in&>(a.local);
    const auto& r = reinterpret_cast<const sockaddr_in&>(a.remote);
    k.local_ip[0] = l.sin_addr.s_addr;
    k.remote_ip[0] = r.sin_addr.s_addr;
    k.local_port = ntohs(l.sin_port);
    k.remote_port = ntohs(r.sin_port);
  } else {
    const auto& l = reinterpret_cast<const sockaddr_in6&>(a.local);
    const auto& r = reinterpret_cast<const sockaddr_in6&>(a.remote);
    std::memcpy(k.local_ip, &l.sin6_addr, 16);
    std::memcpy(k.remote_ip, &r.sin6_addr, 16);
    k.local_port = ntohs(l.sin6_port);
    k.remote_port = ntohs(r.sin6_port);
  }
  return k;
}

CaptureOutcome outcome_of(std::uint32_t ret) {
  switch (ret) {
    case SHUNT_CAPTURE_OK:
      return CaptureOutcome::captured;
    case SHUNT_CAPTURE_NOT_LOCAL:
      return CaptureOutcome::not_local;
    case SHUNT_CAPTURE_NOT_ESTABLISHED:
      return CaptureOutcome::not_established;
    case SHUNT_CAPTURE_BLOCKING:
      return CaptureOutcome::blocking;
    case SHUNT_CAPTURE_NOT_ACCEPTED:
      return CaptureOutcome::not_accepted;
    case SHUNT_CAPTURE_ZEROCOPY:
      return CaptureOutcome::zerocopy;
    case SHUNT_CAPTURE_ULP:
      return CaptureOutcome::ulp;
    case SHUNT_CAPTURE_PSOCK:
      return CaptureOutcome::foreign_psock;
    case SHUNT_CAPTURE_REFUSED:
      return CaptureOutcome::refused;
    default:
      return CaptureOutcome::error;
  }
}

}  // namespace

// Destroying the skeleton closes the maps and the programs; the sk_msg
// attachment goes with endpoint_sockets, and endpoints still in it get their
// protocol ops back as the map is freed. The shared maps stay open through
// the SockmapBridge's own descriptors.
struct EndpointShortcut::Objects {
  Owned<sockmap_shortcut, sockmap_shortcut__destroy> skel;
};

EndpointShortcut::EndpointShortcut() : objects_(std::make_unique<Objects>()) {}
EndpointShortcut::~EndpointShortcut() = default;

Result<std::unique_ptr<EndpointShortcut>> EndpointShortcut::load(const SockmapBridge& bridge,
                                                                 std::uint32_t max_connections,
                                                                 std::uint64_t bulk_threshold_bytes) {
  std::unique_ptr<EndpointShortcut> self(new EndpointShortcut());
  auto& skel = self->objects_->skel;
  skel.reset(sockmap_shortcut__open());
  if (!skel) return SysError::from_errno("open sockmap_shortcut BPF object");
  const SockmapBridge::SharedMaps shared = bridge.shared_maps();
  const std::uint32_t sockets = std::max<std::uint32_t>(2 * max_connections, 2);
  auto& maps = skel->maps;
  // Reused maps must match the originals' definitions, sizes included.
  for (bpf_map* m : {maps.sock_peers, maps.redirect_targets, maps.endpoint_sockets, maps.endpoints})
    bpf_map__set_max_entries(m, sockets);
  if (bpf_map__reuse_fd(maps.sock_peers, shared.peers) != 0 ||
      bpf_map__reuse_fd(maps.redirect_targets, shared.targets) != 0 ||
      bpf_map__reuse_fd(maps.bulk_events, shared.bulk_events) != 0)
    return SysError::from_errno("share the sockmap maps with the short-circuit");
  skel->rodata->bulk_threshold = bulk_threshold_bytes;
  if (int err = sockmap_shortcut__load(skel.get()); err != 0)
    return SysError{-err, "load sockmap_shortcut BPF programs"};
  self->capture_fd_ = bpf_program__fd(skel->progs.capture_endpoint);
  self->endpoints_fd_ = bpf_map__fd(maps.endpoints);
  self->sockets_fd_ = bpf_map__fd(maps.endpoint_sockets);
  if (bpf_prog_attach(bpf_program__fd(skel->progs.endpoint_send), self->sockets_fd_, BPF_SK_MSG_VERDICT, 0) !=
      0)
    return SysError::from_errno("attach sk_msg program to endpoint_sockets");
  self->probe(bridge);
  return self;
}

CaptureOutcome EndpointShortcut::capture(const EndpointAddress& endpoint, std::int64_t netns_id,
                                         const CaptureRequest& request) {
  struct {
    unsigned char eth[14];
    shunt_capture_req req;
  } __attribute__((packed)) packet{};
  packet.req.key = key_of(endpoint);
  packet.req.netns_id = static_cast<std::uint64_t>(netns_id);
  packet.req.target_cookie = request.target_cookie;
  packet.req.proxy_cookie = request.proxy_cookie;
  packet.req.proxy_consumed = request.proxy_consumed;
  packet.req.target_seq = request.target_seq;
  packet.req.acked_base = request.accepted ? 0 : 1;
  LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = &packet, .data_size_in = sizeof(packet));
  if (bpf_prog_test_run_opts(capture_fd_, &opts) != 0) {
    spdlog::debug("short-circuit capture: BPF_PROG_TEST_RUN: {}", std::strerror(errno));
    return CaptureOutcome::error;
  }
  return outcome_of(opts.retval);
}

CaptureOutcome EndpointShortcut::capture_local(const EndpointAddress& endpoint, const std::string& pod,
                                               const CaptureRequest& request) {
  const std::int64_t first = netns_of(pod);
  CaptureOutcome outcome = capture(endpoint, first, request);
  std::size_t searched = 1;
  std::int64_t where = first;
  for (const std::int32_t nsid : known_netns_) {
    if (outcome != CaptureOutcome::not_local) break;
    if (nsid == first) continue;
    outcome = capture(endpoint, nsid, request);
    ++searched;
    where = nsid;
  }
  if (searched > 1)
    spdlog::debug("short-circuit: {} after {} netns searched (last nsid {})", to_string(outcome), searched,
                  where);
  return outcome;
}

void EndpointShortcut::learn_pods(const std::vector<std::pair<std::string, std::string>>& pod_devices) {
  auto nl = pods::NetlinkSocket::open();
  if (!nl) {
    spdlog::warn("short-circuit: netlink: {}; pod clients stay on sk_skb", nl.error().message());
    return;
  }
  if (auto ids = pods::list_nsids(*nl); !ids) {
    spdlog::info("short-circuit: {}; only clients in shunt's netns or a pod with `dev` are captured",
                 ids.error().message());
  } else {
    known_netns_ = std::move(ids.value());
    if (known_netns_.size() > kMaxSearchedNetns) known_netns_.resize(kMaxSearchedNetns);
    spdlog::debug("short-circuit: {} other netns to search for clients", known_netns_.size());
  }
  for (const auto& [pod, dev] : pod_devices) {
    auto link = pods::get_link(*nl, dev);
    if (link && *link && (*link)->link_netnsid >= 0) {
      pod_netns_[pod] = (*link)->link_netnsid;
      spdlog::debug("short-circuit: pod {} sockets in nsid {} (device {})", pod, (*link)->link_netnsid, dev);
    } else {
      spdlog::info("short-circuit: no peer netns for pod {} (device {}); its clients stay on sk_skb", pod,
                   dev);
    }
  }
}

std::int64_t EndpointShortcut::netns_of(const std::string& pod) const {
  const auto it = pod_netns_.find(pod);
  return it == pod_netns_.end() ? -1 : it->second;
}

EndpointStats EndpointShortcut::stats(const EndpointAddress& endpoint) const {
  const shunt_endpoint_key key = key_of(endpoint);
  shunt_endpoint e{};
  if (bpf_map_lookup_elem(endpoints_fd_, &key, &e) != 0) return {};
  return {.bytes = e.bytes,
          .switches = e.switches,
          .fallbacks = e.fallbacks,
          .unsettled = e.unsettled,
          .short_pushes = e.short_pushes,
          .short_bytes = e.short_bytes,
          .foreign_bytes = e.foreign_bytes,
          .redirecting = e.state == SHUNT_ENDPOINT_REDIRECT};
}

void EndpointShortcut::release(const EndpointAddress& endpoint, std::uint64_t proxy_cookie) {
  // The socket first, so no sendmsg finds it in the map without its entry
  // (which would only pass, but the order keeps that case out entirely).
  bpf_map_delete_elem(sockets_fd_, &proxy_cookie);
  const shunt_endpoint_key key = key_of(endpoint);
  bpf_map_delete_elem(endpoints_fd_, &key);
}

// A loopback check that every piece works on this kernel: endpoint E
// (non-blocking) talks to F; F's bytes are to go to G's egress (G talks to
// H). E is captured with G as target; one byte sent on E must arrive at H,
// not at F.
void EndpointShortcut::probe(const SockmapBridge& bridge) {
  auto fail = [this](const char* what) {
    probe_detail_ = std::string(what) + (errno ? std::string(": ") + std::strerror(errno) : std::string());
    works_ = false;
  };
  // Before 6.5, tcp_sendmsg_locked has no MSG_SPLICE_PAGES path: a stable
  // kernel whose tcp_bpf push sends with that flag (Debian's 6.1.192) takes
  // the copy path, and into a socket whose memory account is in debt (one
  // that holds: docs/datapath.md, "A push into a target in memory debt")
  // the copy fails with a negative length and the endpoint's own send()
  // returns EFAULT to the application. endpoint_send declines a target
  // already in debt, but a debt that begins between its check and the push
  // cannot be seen from BPF. A proxy must not fail an application's send(),
  // so these kernels keep the sk_skb path. Decided from the release: the
  // failure needs memory pressure to show.
  if (!kernel_at_least(6, 5)) {
    probe_detail_ =
        "Linux < 6.5: a redirected push can fail the endpoint's own send() with EFAULT (docs/datapath.md, "
        "\"A push into a target in memory debt\"); the sk_skb path carries every connection";
    works_ = false;
    return;
  }
  LoopbackPairs pairs;
  errno = 0;
  if (const char* failed = make_loopback_pairs(pairs)) return fail(failed);
  UniqueFd& e = pairs.first_out;
  UniqueFd& f = pairs.first_in;
  UniqueFd& g = pairs.second_out;
  UniqueFd& h = pairs.second_in;
  ::fcntl(e.get(), F_SETFL, ::fcntl(e.get(), F_GETFL) | O_NONBLOCK);
  int sndbuf = 256 << 10;  // as the sockmap path sets it on shunt's sockets
  ::setsockopt(g.get(), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
  auto cf = socket_cookie(f.get());
  auto cg = socket_cookie(g.get());
  if (!cf || !cg) return fail("cookies");
  const SockmapBridge::SharedMaps shared = bridge.shared_maps();
  shunt_sock_peer f_to_g{};
  f_to_g.peer_cookie = *cg;
  std::uint64_t g_fd = static_cast<std::uint64_t>(g.get());
  // F too, as the handover puts shunt's client-facing socket there: the
  // capture program checks E is F's TCP peer.
  std::uint64_t f_fd = static_cast<std::uint64_t>(f.get());
  if (bpf_map_update_elem(shared.peers, &*cf, &f_to_g, BPF_NOEXIST) != 0 ||
      bpf_map_update_elem(shared.targets, &*cg, &g_fd, BPF_NOEXIST) != 0 ||
      bpf_map_update_elem(shared.targets, &*cf, &f_fd, BPF_NOEXIST) != 0)
    return fail("sockmap insert");
  EndpointAddress endpoint;
  socklen_t l = sizeof(endpoint.local), r = sizeof(endpoint.remote);
  ::getsockname(e.get(), reinterpret_cast<sockaddr*>(&endpoint.local), &l);
  ::getpeername(e.get(), reinterpret_cast<sockaddr*>(&endpoint.remote), &r);
  const auto seqs = bridge.write_seqs({.a = *cg, .b = 0});
  if (!seqs) return fail("read the target's write_seq");
  const CaptureOutcome captured =
      capture(endpoint, -1, {.target_cookie = *cg, .proxy_cookie = *cf, .target_seq = seqs->first});
  const char* wrong = nullptr;
  if (captured == CaptureOutcome::captured) {
    pollfd p{h.get(), POLLIN, 0};
    char byte = 0;
    if (::send(e.get(), "x", 1, 0) != 1)
      wrong = "send on the captured socket failed";
    else if (::poll(&p, 1, 1000) != 1)
      wrong = "the byte did not arrive at the target's peer";
    else if (::recv(h.get(), &byte, 1, MSG_DONTWAIT) != 1 || byte != 'x')
      wrong = "the target's peer read something else";
    else if (::recv(f.get(), &byte, 1, MSG_DONTWAIT) >= 0)
      wrong = "the byte also went over TCP";
    else if (stats(endpoint).bytes != 1)
      wrong = "the redirect was not counted";
  }
  release(endpoint, *cf);
  bpf_map_delete_elem(shared.peers, &*cf);
  errno = 0;
  if (captured != CaptureOutcome::captured)
    return fail(std::string("capture: ").append(to_string(captured)).c_str());
  if (wrong) return fail(wrong);
  works_ = true;
  probe_detail_ = "sk_msg redirect from a captured loopback socket";
}

}  // namespace shunt::bpf

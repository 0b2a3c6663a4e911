#include "bpf/sockmap.h"

#include "bpf/sockmap_shared.h"
#include "sockmap_redirect.skel.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <thread>
#include <utility>

namespace shunt::bpf {

std::string_view to_string(HandoverFailure f) {
  switch (f) {
    case HandoverFailure::none:
      return "none";
    case HandoverFailure::socket_state:
      return "socket_state";
    case HandoverFailure::map_full:
      return "map_full";
    case HandoverFailure::other:
      return "other";
  }
  return "other";
}

Result<std::uint64_t> socket_cookie(int fd) {
  std::uint64_t cookie = 0;
  socklen_t len = sizeof(cookie);
  if (::getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) != 0)
    return SysError::from_errno("getsockopt(SO_COOKIE)");
  return cookie;
}

Result<std::unique_ptr<SockmapBridge>> SockmapBridge::load(std::uint32_t max_connections,
                                                           std::uint64_t bulk_threshold_bytes) {
  std::unique_ptr<SockmapBridge> bridge(new SockmapBridge());
  bridge->skel_ = sockmap_redirect__open();
  if (!bridge->skel_) return SysError::from_errno("open sockmap_redirect BPF object");

  const std::uint32_t sockets = std::max<std::uint32_t>(2 * max_connections, 2);
  bpf_map__set_max_entries(bridge->skel_->maps.sock_peers, sockets);
  bpf_map__set_max_entries(bridge->skel_->maps.redirect_targets, sockets);
  bpf_map__set_max_entries(bridge->skel_->maps.verdict_sockets, sockets);
  bridge->skel_->rodata->bulk_threshold = bulk_threshold_bytes;

  if (int err = sockmap_redirect__load(bridge->skel_); err != 0)
    return SysError{-err, "load sockmap_redirect BPF program (needs CAP_BPF and a kernel with sockmap)"};

  bridge->peers_fd_ = bpf_map__fd(bridge->skel_->maps.sock_peers);
  bridge->targets_fd_ = bpf_map__fd(bridge->skel_->maps.redirect_targets);
  bridge->verdict_fd_ = bpf_map__fd(bridge->skel_->maps.verdict_sockets);

  // BPF_SK_SKB_VERDICT (not STREAM_VERDICT): no strparser, one verdict per
  // skb as tcp_read_skb hands it over; see docs/datapath.md.
  const int prog_fd = bpf_program__fd(bridge->skel_->progs.redirect_to_peer);
  if (bpf_prog_attach(prog_fd, bridge->verdict_fd_, BPF_SK_SKB_VERDICT, 0) != 0)
    return SysError::from_errno("attach sk_skb verdict program to verdict_sockets");

  bridge->bulk_ring_ = ring_buffer__new(
      bpf_map__fd(bridge->skel_->maps.bulk_events),
      [](void* ctx, void* data, size_t size) -> int {
        auto* self = static_cast<SockmapBridge*>(ctx);
        if (size >= sizeof(shunt_bulk_event) && self->on_bulk_)
          (*self->on_bulk_)(static_cast<const shunt_bulk_event*>(data)->cookie);
        return 0;
      },
      bridge.get(), nullptr);
  if (!bridge->bulk_ring_) return SysError::from_errno("create bulk event ring buffer");
  return bridge;
}

SockmapBridge::~SockmapBridge() {
  if (bulk_ring_) ring_buffer__free(bulk_ring_);
  // Destroying the skeleton closes the maps and the program; the attachment
  // to verdict_sockets goes with the map.
  if (skel_) sockmap_redirect__destroy(skel_);
}

static HandoverFailure classify(int err) {
  switch (err) {
    case EOPNOTSUPP:  // sock_map only takes ESTABLISHED (or listening) TCP sockets
    case ENOTCONN:
    case EINVAL:
      return HandoverFailure::socket_state;
    case E2BIG:
    case ENOMEM:
    case ENOSPC:
      return HandoverFailure::map_full;
    default:
      return HandoverFailure::other;
  }
}

void SockmapBridge::erase_peer(std::uint64_t cookie) { bpf_map_delete_elem(peers_fd_, &cookie); }

HandoverResult SockmapBridge::handover(int fd_a, int fd_b) {
  HandoverResult result;
  auto fail = [&](const char* what) {
    result.error = SysError::from_errno(what);
    result.failure = classify(result.error.code);
    return result;
  };

  auto cookie_a = socket_cookie(fd_a);
  auto cookie_b = socket_cookie(fd_b);
  if (!cookie_a || !cookie_b) return fail("getsockopt(SO_COOKIE)");
  result.cookies = {*cookie_a, *cookie_b};
  const std::uint64_t a = *cookie_a, b = *cookie_b;

  const shunt_sock_peer peer_of_a{.peer_cookie = b, .bytes = 0, .bulk_reported = 0, .pad = 0};
  const shunt_sock_peer peer_of_b{.peer_cookie = a, .bytes = 0, .bulk_reported = 0, .pad = 0};
  if (bpf_map_update_elem(peers_fd_, &a, &peer_of_a, BPF_NOEXIST) != 0) return fail("sock_peers insert");
  if (bpf_map_update_elem(peers_fd_, &b, &peer_of_b, BPF_NOEXIST) != 0) {
    fail("sock_peers insert");
    erase_peer(a);
    return result;
  }

  // Until step 3 nothing redirects, so undoing steps 1-2 loses no byte: the
  // sockets carry no verdict program and their queues are untouched.
  auto undo_targets = [&](bool remove_a, bool remove_b) {
    if (remove_a) bpf_map_delete_elem(targets_fd_, &a);
    if (remove_b) bpf_map_delete_elem(targets_fd_, &b);
    erase_peer(a);
    erase_peer(b);
  };
  std::uint64_t fd_value = static_cast<std::uint64_t>(fd_a);
  if (bpf_map_update_elem(targets_fd_, &a, &fd_value, BPF_NOEXIST) != 0) {
    fail("redirect_targets insert");
    undo_targets(false, false);
    return result;
  }
  fd_value = static_cast<std::uint64_t>(fd_b);
  if (bpf_map_update_elem(targets_fd_, &b, &fd_value, BPF_NOEXIST) != 0) {
    fail("redirect_targets insert");
    undo_targets(true, false);
    return result;
  }

  fd_value = static_cast<std::uint64_t>(fd_a);
  if (bpf_map_update_elem(verdict_fd_, &a, &fd_value, BPF_NOEXIST) != 0) {
    fail("verdict_sockets insert");
    undo_targets(true, true);
    return result;
  }
  fd_value = static_cast<std::uint64_t>(fd_b);
  if (bpf_map_update_elem(verdict_fd_, &b, &fd_value, BPF_NOEXIST) != 0) {
    // a already redirects into b: b's direction cannot go back to userspace
    // without reordering, and deleting a would purge what the kernel queued.
    fail("verdict_sockets insert");
    result.partial = true;
    return result;
  }

  // Bytes queued before the verdict program was attached: 6.12 and 6.18
  // usually run the verdict over them when the socket enters the map, older
  // kernels leave them until the next data_ready, which a client waiting
  // for its answer never sends. Stranded bytes get a kick: SO_RCVLOWAT runs
  // tcp_data_ready(), i.e. the verdict program, from process context.
  const int one = 1;
  for (auto [fd, cookie] : {std::pair{fd_a, a}, std::pair{fd_b, b}})
    if (stranded(fd, cookie)) ::setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
  return result;
}

// A kick beside the softirq that is handing queued segments to the verdict
// runs tcp_read_skb twice over them: a 256 MiB transfer arrived with ~128
// KiB duplicated when the kick followed a bare MSG_PEEK. Bytes in flight
// are visible to a peek only for an instant and make the socket's
// redirected-byte counter move; stranded bytes stay and the counter stays
// at 0. So: queued, nothing redirected yet, and still so 200 µs later.
bool SockmapBridge::stranded(int fd, std::uint64_t cookie) const {
  auto untouched = [&] {
    char probe;
    return ::recv(fd, &probe, 1, MSG_PEEK | MSG_DONTWAIT) > 0 && redirected_bytes(cookie) == 0;
  };
  if (!untouched()) return false;
  std::this_thread::sleep_for(std::chrono::microseconds(200));
  return untouched();
}

std::uint64_t SockmapBridge::redirected_bytes(std::uint64_t cookie) const {
  shunt_sock_peer entry{};
  if (bpf_map_lookup_elem(peers_fd_, &cookie, &entry) != 0) return 0;
  return entry.bytes;
}

void SockmapBridge::forget(const SocketCookies& cookies) {
  erase_peer(cookies.a);
  erase_peer(cookies.b);
}

int SockmapBridge::bulk_events_fd() const { return ring_buffer__epoll_fd(bulk_ring_); }

void SockmapBridge::poll_bulk_events(const std::function<void(std::uint64_t)>& on_bulk) {
  on_bulk_ = &on_bulk;
  ring_buffer__consume(bulk_ring_);
  on_bulk_ = nullptr;
}

}  // namespace shunt::bpf

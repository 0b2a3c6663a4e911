// SPDX-License-Identifier: GPL-2.0
/* Kernel half of the sockmap data path: every skb that arrives on a socket
 * in `verdict_sockets` is redirected to the egress of its peer socket, so
 * payload never visits userspace. The handover order that makes this safe is
 * in bpf/sockmap.cpp (SockmapBridge::handover). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "sockmap_shared.h"

#include "sockmap_maps.bpf.h"

/* Sockets whose receive path runs redirect_to_peer (attached as
 * BPF_SK_SKB_VERDICT by the loader). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, __u64);
} verdict_sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} bulk_events SEC(".maps");

/* Bytes a socket must move before userspace hears about it (see
 * docs/datapath.md, "Buffer sizing"). */
const volatile __u64 bulk_threshold = 4 << 20;

SEC("sk_skb")
int redirect_to_peer(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct shunt_sock_peer *peer = bpf_map_lookup_elem(&sock_peers, &cookie);

	/* Not ours (or being torn down): leave the bytes on the socket. */
	if (!peer)
		return SK_PASS;

	/* tcp_read_skb hands over the FIN as an empty skb. Redirected, it would
	 * reach the peer's backlog worker after userspace has already shut the
	 * peer's write side (the byte counts say "drained"), and the worker's
	 * send would fail with EPIPE and report an error on the peer. The FIN
	 * itself is already known to TCP; the empty skb carries nothing. */
	if (skb->len == 0)
		return SK_DROP;

	__u64 before = __sync_fetch_and_add(&peer->bytes, skb->len);
	if (before < bulk_threshold && before + skb->len >= bulk_threshold &&
	    !peer->bulk_reported) {
		peer->bulk_reported = 1;
		struct shunt_bulk_event ev = { .cookie = cookie };
		bpf_ringbuf_output(&bulk_events, &ev, sizeof(ev), 0);
	}
	return bpf_sk_redirect_hash(skb, &redirect_targets, &peer->peer_cookie, 0);
}

char LICENSE[] SEC("license") = "GPL";

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

/* Held bytes userspace has written to the peer, by the holding socket's
 * cookie; written only by userspace (docs/datapath.md, "Memory bound").
 * Entries exist only while a socket holds or has held. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __u64);
} hold_forwarded SEC(".maps");

/* Bytes a socket must move before userspace hears about it (see
 * docs/datapath.md, "Buffer sizing"). */
const volatile __u64 bulk_threshold = 4 << 20;

/* Most a pair direction may have redirected and not yet in its target's
 * send queue (the target psock's backlog, which nothing charges or
 * bounds) while the target's send queue is nearly full, i.e. the receiver
 * is the bottleneck. Above it the verdict holds. A backlog behind a target
 * with room is the backlog worker lagging a burst (it runs after the
 * softirq that redirected, and on loopback bursts of 64 KiB skbs outrun it
 * by over a MiB now and then): that one drains by itself, and holding for
 * it turned fast streams into userspace copies (a held direction resumes
 * only once the pump empties the source's queue, which a sender that
 * never pauses refills as fast). It is still bounded, at eight times the
 * limit, in case the worker falls behind for good. */
const volatile __u64 backlog_limit = 1 << 20;

static __always_inline long report(__u64 cookie, __u32 kind)
{
	struct shunt_bulk_event ev = { .cookie = cookie, .kind = kind };

	return bpf_ringbuf_output(&bulk_events, &ev, sizeof(ev), 0);
}

/* Whether the peer's psock backlog (bytes redirected to it and not yet in
 * its send queue) is under backlog_limit. "Written" is what userspace's
 * tcp_bytes_written() reads through TCP_INFO: bytes sent, less
 * retransmissions, plus bytes queued and not sent. The caller only asks
 * when every held byte has been forwarded, so everything through the
 * verdict (`bytes`) is what the peer must have been written. The endpoint
 * short-circuit writes into the same peer without passing here; it moves
 * peer_written_base by what it wrote, so the difference stays this
 * verdict's backlog. */
static __always_inline int peer_has_room(struct shunt_sock_peer *peer)
{
	struct bpf_sock *sk = bpf_map_lookup_elem(&redirect_targets, &peer->peer_cookie);
	struct tcp_sock *tp;
	int room = 1;

	if (!sk)
		return 1; /* gone: the redirect fails and says so */
	tp = bpf_skc_to_tcp_sock(sk);
	if (tp) {
		__u64 written =
		    tp->bytes_sent - tp->bytes_retrans + (__u32)(tp->write_seq - tp->snd_nxt);
		__s64 backlog = (__s64)(peer->bytes - (written - peer->peer_written_base));
		/* Three quarters full: tcp_sendmsg, and so the backlog worker,
		 * waits for memory at full. */
		__u32 sndbuf = (__u32)tp->inet_conn.icsk_inet.sk.sk_sndbuf;
		__u32 queued = (__u32)tp->inet_conn.icsk_inet.sk.sk_wmem_queued;
		int congested = queued >= sndbuf - (sndbuf >> 2);

		room = backlog < (__s64)backlog_limit ||
		       (!congested && backlog < (__s64)(backlog_limit << 3));
	}
	bpf_sk_release(sk);
	return room;
}

/* Every byte through the verdict, redirected or held, counts towards the
 * bulk boost. Held bytes used not to: a stream held before it had moved
 * bulk_threshold never got its target's larger buffer, so the hold's pump
 * kept pushing into a 256 KiB send buffer and the hold never ended (every
 * byte of a 448 MiB transfer through userspace, measured 2026-11-30). */
static __always_inline void count(__u64 cookie, struct shunt_sock_peer *peer, __u32 len)
{
	__u64 before = __sync_fetch_and_add(&peer->bytes, len);

	if (before < bulk_threshold && before + len >= bulk_threshold && !peer->bulk_reported) {
		peer->bulk_reported = 1;
		report(cookie, SHUNT_EVENT_BULK);
	}
}

/* Keeps the skb on this socket: SK_PASS queues it on the socket's own
 * psock (ingress_msg), charged to its receive buffer, so its receive window
 * closes and the sender is slowed as by a slow reader. Every later skb is
 * held too, in order, until userspace has written all of them to the peer
 * (hold_forwarded) and the peer's backlog is under the limit again; then
 * redirecting resumes behind them. */
static __always_inline int hold(__u64 cookie, struct shunt_sock_peer *peer, __u32 len)
{
	count(cookie, peer, len);
	__sync_fetch_and_add(&peer->held, len);
	return SK_PASS;
}

/* bpf_skb_adjust_room removes at most 4095 bytes from an sk_skb per call.
 * CUT_MAX_STEPS calls cover any repeat shorter than 1 MiB: more than any
 * skb a TCP receive queue holds (a coalesced skb carries at most
 * MAX_SKB_FRAGS page fragments; the largest seen repeating was 327,415
 * bytes, five loopback segments, 296,148 of them repeated). */
#define CUT_STEP 4095
#define CUT_MAX_STEPS 256

/* Removes the first `n` bytes of `skb` (n < 1 MiB); -1 when it could not
 * (no memory to pull the head; the skb may then be cut in part). Whole
 * steps first, then the rest: one exit per step keeps the verifier's walk
 * linear in CUT_MAX_STEPS. */
static __always_inline int cut_head(struct __sk_buff *skb, __u32 n)
{
	__u32 steps = n / CUT_STEP;
	__u32 rest = n % CUT_STEP;

	if (steps > CUT_MAX_STEPS)
		return -1;
	for (__u32 i = 0; i < CUT_MAX_STEPS; i++) {
		if (i >= steps)
			break;
		if (bpf_skb_adjust_room(skb, -CUT_STEP, 0, 0))
			return -1;
	}
	if (rest && bpf_skb_adjust_room(skb, -(__s32)rest, 0, 0))
		return -1;
	return 0;
}

/* Cuts from `skb` the bytes this socket's verdict has already taken.
 *
 * tcp_read_skb hands the verdict whole skbs, without the offset
 * tcp_recvmsg and tcp_read_sock take from copied_seq, and TCP queues a
 * segment that partly overlaps bytes already received as it came
 * (tcp_data_queue, "partial packet"; tcp_ofo_queue moves an out-of-order
 * skb that the in-order bytes have partly caught up with whole, and that
 * queue coalesces segments into skbs of several hundred KB). Redirected
 * whole, its head would reach the peer a second time: the intermittent
 * duplication of docs/datapath.md, "Repeated bytes in a retransmitted
 * segment".
 *
 * The segment's sequence number is the first word of skb->cb (struct
 * tcp_skb_cb, `seq`), which an sk_skb program reads as __sk_buff cb[0]
 * (struct sk_skb_cb's data starts the same control block). The position
 * starts at copied_seq the first time: what userspace read before the
 * handover, which a queued skb may also overlap. Returns the bytes left,
 * 0 when the whole skb repeats (drop it), or -1 when the repeat could not
 * be cut. */
static __always_inline int cut_repeated(struct __sk_buff *skb, struct shunt_sock_peer *peer,
					__u32 len)
{
	__u32 seq = skb->cb[0];
	__s32 repeat;

	if (!peer->seq_known) {
		struct bpf_sock *sk = skb->sk;
		struct tcp_sock *tp = sk ? bpf_skc_to_tcp_sock(sk) : 0;

		if (!tp)
			return len;
		peer->next_seq = tp->copied_seq;
		peer->seq_known = 1;
	}
	repeat = (__s32)(peer->next_seq - seq);
	if (repeat <= 0) {
		peer->next_seq = seq + len;
		return len;
	}
	if ((__u32)repeat >= len) {
		/* Dropped, it would still move copied_seq on by its length
		 * (tcp_eat_skb), past bytes that socket has not been handed
		 * yet, and tcp_data_ready runs the verdict only while rcv_nxt
		 * is ahead of copied_seq: the last segments of a stream could
		 * wait in the receive queue for good. Emptied first, it moves
		 * nothing; if the cut fails, it is dropped all the same (its
		 * bytes were all taken). */
		cut_head(skb, len);
		peer->repeated += len;
		return 0;
	}
	/* Past here the skb ends beyond what was taken: whatever happens to
	 * it, the stream position is its end. */
	peer->next_seq = seq + len;
	if (cut_head(skb, (__u32)repeat))
		return -1;
	peer->repeated += repeat;
	return len - repeat;
}

SEC("sk_skb")
int redirect_to_peer(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct shunt_sock_peer *peer = bpf_map_lookup_elem(&sock_peers, &cookie);
	__u32 len = skb->len;

	/* Not ours (or being torn down): leave the bytes on the socket. */
	if (!peer)
		return SK_PASS;

	/* tcp_read_skb hands over the FIN as an empty skb. Redirected, it would
	 * reach the peer's backlog worker after userspace has already shut the
	 * peer's write side (the byte counts say "drained"), and the worker's
	 * send would fail with EPIPE and report an error on the peer. The FIN
	 * itself is already known to TCP; the empty skb carries nothing. */
	if (len == 0)
		return SK_DROP;

	int left = cut_repeated(skb, peer, len);
	if (left == 0)
		return SK_DROP;
	if (left < 0) {
		/* Repeated bytes that could not be cut (no memory to pull the
		 * head): passed on, they would corrupt the stream, and dropped,
		 * the new bytes behind them are lost (TCP has acknowledged
		 * them). Neither is a stream the peer may see: drop it and have
		 * userspace reset the pair. Until 2026-11-30 the verdict passed
		 * such an skb on whole and counted its length from before the
		 * cut, so the peer got the repeat and the FIN rule waited for
		 * bytes that never came. */
		peer->cut_failed = 1;
		report(cookie, SHUNT_EVENT_BROKEN);
		return SK_DROP;
	}
	len = left;

	if (peer->holding) {
		__u64 *forwarded = bpf_map_lookup_elem(&hold_forwarded, &cookie);

		if (!forwarded || *forwarded != peer->held || !peer_has_room(peer))
			return hold(cookie, peer, len);
		/* Every held byte is in the peer's send queue: this one may
		 * follow them through the backlog. */
		peer->holding = 0;
	} else if (!peer_has_room(peer) && report(cookie, SHUNT_EVENT_HOLD) == 0) {
		/* Only with the event delivered: held bytes wait for userspace,
		 * and a hold nobody hears of would stall the direction. A full
		 * ring (the control thread not reading) redirects as before. */
		peer->holding = 1;
		return hold(cookie, peer, len);
	}

	count(cookie, peer, len);
	return bpf_sk_redirect_hash(skb, &redirect_targets, &peer->peer_cookie, 0);
}

/* Run by the loader with BPF_PROG_TEST_RUN, never attached
 * (SockmapBridge::write_seqs): each socket's write_seq, the sequence number
 * its next appended byte gets. Userspace has no way to read it (TCP_INFO
 * gives counts, not sequence numbers; TCP_QUEUE_SEQ needs repair mode).
 * Read at the handover while nothing can write the sockets (the verdict
 * does not run on either yet, and shunt has written what it read), it is
 * the base the short-circuit's fence measures the target's writes from:
 * write_seq moves only when bytes are appended to the send queue, under
 * the socket's lock, so "write_seq - base" counts exactly what was
 * appended, where the byte counts of TCP_INFO read without the lock run a
 * segment ahead while it is being transmitted (sockmap_shortcut.bpf.c,
 * fence_open). The "packet" is an Ethernet header and struct
 * shunt_write_seqs; returns 0, or 1 when a socket is not in
 * redirect_targets (or not TCP). */
SEC("tc")
int read_write_seqs(struct __sk_buff *skb)
{
	struct shunt_write_seqs req;
	int i;

	if (bpf_skb_load_bytes(skb, 14, &req, sizeof(req)))
		return 1;
	for (i = 0; i < 2; i++) {
		struct bpf_sock *sk;
		struct tcp_sock *tp;

		if (!req.cookie[i])
			continue;
		sk = bpf_map_lookup_elem(&redirect_targets, &req.cookie[i]);
		if (!sk)
			return 1;
		tp = bpf_skc_to_tcp_sock(sk);
		if (tp)
			req.write_seq[i] = tp->write_seq;
		bpf_sk_release(sk);
		if (!tp)
			return 1;
	}
	if (bpf_skb_store_bytes(skb, 14, &req, sizeof(req), 0))
		return 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

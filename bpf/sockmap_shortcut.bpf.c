// SPDX-License-Identifier: GPL-2.0
/* The endpoint short-circuit: a local client's own socket hands what it sends
 * straight to shunt's upstream socket in its sendmsg (sk_msg,
 * bpf_msg_redirect_hash, synchronous: tcp_bpf_sendmsg_redir pushes into the
 * target under its lock, no psock backlog kworker), instead of sending it
 * over TCP to shunt's client-facing socket, whose sk_skb verdict then
 * queues it for the target's backlog worker.
 *
 * Two programs:
 *  - capture_endpoint (tc, run only through BPF_PROG_TEST_RUN by the
 *    loader, never attached): finds the one endpoint socket of a connection
 *    shunt has just handed to the kernel, by 4-tuple, checks it can be
 *    short-circuited, and puts it in endpoint_sockets. Nothing else on the
 *    node is ever captured, and no program runs for sockets shunt does not
 *    splice.
 *  - endpoint_send (sk_msg, on endpoint_sockets): per message, the fence,
 *    then redirect or pass.
 *
 * The loader (bpf/sockmap_shortcut.cpp) shares sock_peers, redirect_targets
 * and bulk_events with sockmap_redirect.bpf.c. docs/datapath.md, "The
 * endpoint short-circuit", explains the fence. */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "sockmap_shared.h"

#define AF_INET 2
#define AF_INET6 10
#define O_NONBLOCK 04000
#define BPF_F_CURRENT_NETNS_ID (-1L)

/* Shared with sockmap_redirect (bpf_map__reuse_fd; sized by the loader). */
#include "sockmap_maps.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} bulk_events SEC(".maps");

/* Endpoint sockets, keyed by the cookie of shunt's socket facing them
 * (the loader knows it; the endpoint's own cookie is not needed). The
 * loader attaches endpoint_send here as BPF_SK_MSG_VERDICT. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, __u64);
} endpoint_sockets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct shunt_endpoint_key);
	__type(value, struct shunt_endpoint);
} endpoints SEC(".maps");

const volatile __u64 bulk_threshold = 4 << 20;
/* Bytes an endpoint may send over TCP, without the fence opening once, before
 * userspace is asked to take it out of the short-circuit. A sender that never
 * pauses (bulk into a slower receiver: the target fills, the endpoint returns
 * to TCP) never again shows the quiet point the fence needs, and on TCP a
 * captured socket is dearer than a plain one: tcp_bpf_sendmsg copies every
 * message into an sk_msg (fresh pages) and runs this program before pushing
 * it. 64 MiB is tens of milliseconds of bulk; paced and request/response
 * senders reopen the fence long before (docs/datapath.md, "Bulk senders"). */
const volatile __u64 shortcut_give_up = 64 << 20;
/* Room a message must find in the target's send buffer, beyond its own
 * size, to be redirected: skb overhead is charged on top of the payload
 * (truesize: about 1.3 KiB per skb of up to 64 KiB), and a push that does
 * not fit would block the sender or fail it with EAGAIN and no later
 * wake-up (see endpoint_send). One eighth of the message plus 4 KiB. */
static __always_inline __s64 needed_room(__u32 size) { return (__s64)size + size / 8 + 4096; }

/* Whether the target can take `size` more bytes without its push waiting
 * for memory, or failing.
 *
 * Failing: a target that holds (the verdict's SK_PASS charges each held skb
 * with skb_set_owner_r, which does not schedule memory) can have a negative
 * sk_forward_alloc, and under protocol memory pressure tcp_wmem_schedule()
 * then returns min(copy, sk_forward_alloc) < 0. On Debian's 6.1 (6.1.192)
 * tcp_bpf_push sends with MSG_SPLICE_PAGES through a tcp_sendmsg_locked that
 * does not know that flag, so the push takes the copy path, the negative
 * length fails the copy, and the endpoint's own sendmsg returns EFAULT to
 * the application (the 6.1 VM leg at soak size; docs/datapath.md, "A push
 * into a target in memory debt"). Such a target gets the message over TCP.
 *
 * sk_msg programs cannot release a socket reference, so they cannot look
 * the target up in a sockhash; the capture program stored its address
 * instead, read here with bpf_probe_read_kernel. The target outlives the
 * entry: shunt takes the endpoint out before it closes its sockets. Should
 * a read race a close anyway, the worst it can cause is a redirect that
 * finds no target, which passes. */
static __always_inline int target_room(struct shunt_endpoint *e, __u32 size)
{
	struct sock *sk = (void *)e->target_sk;
	__s64 free_bytes;

	if (!sk)
		return 0;
	if (BPF_CORE_READ(sk, sk_forward_alloc) < 0)
		return 0;
	free_bytes = (__s64)BPF_CORE_READ(sk, sk_sndbuf) - BPF_CORE_READ(sk, sk_wmem_queued);
	return free_bytes > needed_room(size);
}

/* The fence (docs/datapath.md): redirecting may start only when every byte
 * the endpoint ever sent over TCP is already in the target's send queue,
 * because a redirect appends there at once and would overtake anything
 * still on the way. Checked under the endpoint's socket lock, before this
 * message is sent either way:
 *  1. nothing unacknowledged or unsent on the endpoint (snd_una ==
 *     write_seq): all it sent has reached shunt's socket facing it;
 *  2. shunt's verdict program has redirected all of it: the endpoint's
 *     acknowledged payload (bytes_acked less acked_base: a client's counts
 *     its SYN, an accepted socket's does not count its SYN-ACK) equals what
 *     that socket's verdict counted plus what userspace read before the
 *     handover; the counter moves in the same softirq pass that queues
 *     the segment, before the ACK is sent;
 *  3. the target has been written all of that plus every byte redirected
 *     here before (its psock backlog is empty of this direction's bytes;
 *     after a return to TCP, earlier redirected bytes in the target must
 *     not be mistaken for the verdict's). Measured on the target's
 *     write_seq from its value at the handover (target_seq): write_seq
 *     moves only when bytes are appended to the send queue, so this reads
 *     exactly, without the target's lock. (Until 2026-12-01 it read
 *     bytes_sent - bytes_retrans + write_seq - snd_nxt, which runs one
 *     segment ahead while a segment is being transmitted: bytes_sent has
 *     moved, snd_nxt not yet; the fence could have opened that early.)
 *     The comparison is modular: the two differ by at most the bytes in
 *     flight on this path, far below 2^31.
 * The reverse switch, redirect -> TCP, needs no fence: redirected bytes are
 * in the target's queue before sendmsg returns, so bytes sent over TCP
 * afterwards reach the target behind them. */
static __always_inline int fence_open(struct sk_msg_md *msg, struct shunt_endpoint *e,
				      __u32 target_write_seq)
{
	struct bpf_sock *sk = msg->sk;
	struct shunt_sock_peer *proxy;
	struct tcp_sock *tp;

	if (!sk)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp || tp->write_seq != tp->snd_una || tp->bytes_acked < e->acked_base)
		return 0;
	proxy = bpf_map_lookup_elem(&sock_peers, &e->proxy_cookie);
	if (!proxy)
		return 0;
	if (proxy->bytes + e->proxy_consumed != tp->bytes_acked - e->acked_base)
		return 0;
	return (__s32)(target_write_seq - e->target_seq - (__u32)(proxy->bytes + e->bytes)) >= 0;
}

/* sk_flags moved into sock_common (skc_flags) in Linux 6.16; 6.1 and 6.12
 * have it in struct sock. */
struct sock___pre_6_16 {
	unsigned long sk_flags;
} __attribute__((preserve_access_index));

static __always_inline unsigned long sock_flags(struct sock *s)
{
	struct sock___pre_6_16 *old = (void *)s;

	if (bpf_core_field_exists(old->sk_flags))
		return BPF_CORE_READ(old, sk_flags);
	return BPF_CORE_READ(s, __sk_common.skc_flags);
}

/* Why the endpoint's socket must not be short-circuited, as a capture
 * refusal (SHUNT_CAPTURE_*), or SHUNT_CAPTURE_OK. The capture checks it, and
 * every send checks it again: an application may turn any of these on
 * after the capture. */
static __always_inline int unsafe_socket(struct tcp_sock *tp)
{
	struct sock *s = (struct sock *)tp;

	/* A blocking reader on a socket with a psock can get EAGAIN: the
	 * tcp_bpf recvmsg waits once (tcp_msg_wait_data) and any wake-up
	 * without data, such as the state change when its FIN is acknowledged,
	 * ends the wait with -EAGAIN. Only non-blocking sockets, whose readers
	 * expect EAGAIN, are captured. */
	if (!(BPF_CORE_READ(s, sk_socket, file, f_flags) & O_NONBLOCK))
		return SHUNT_CAPTURE_BLOCKING;
	/* A redirected MSG_ZEROCOPY send is never notified on the error queue:
	 * an application waiting for its completions would wait forever. */
	if (sock_flags(s) & (1UL << SOCK_ZEROCOPY))
		return SHUNT_CAPTURE_ZEROCOPY;
	if (BPF_CORE_READ(tp, inet_conn.icsk_ulp_ops))
		return SHUNT_CAPTURE_ULP;
	return SHUNT_CAPTURE_OK;
}

static __always_inline void report_release(struct shunt_endpoint *e, __u32 reason)
{
	struct shunt_bulk_event ev = { .cookie = e->proxy_cookie,
				       .kind = SHUNT_EVENT_SHORTCUT_RELEASE,
				       .reason = reason };

	if (e->release_reported)
		return;
	e->release_reported = 1;
	bpf_ringbuf_output(&bulk_events, &ev, sizeof(ev), 0);
}

static __always_inline void count_redirected(struct shunt_endpoint *e, __u32 size)
{
	struct shunt_sock_peer *proxy = bpf_map_lookup_elem(&sock_peers, &e->proxy_cookie);
	__u64 before = __sync_fetch_and_add(&e->bytes, size);

	/* The verdict on shunt's socket facing the endpoint bounds the target's
	 * psock backlog as "through the verdict - written to the target since
	 * the base". Bytes pushed here are written to the same target without
	 * passing that verdict: moving the base by them keeps the bound exact.
	 * Without it the bound was loose by everything short-circuited so far,
	 * and after a return to TCP the backlog grew to hundreds of MB before
	 * the verdict held (measured through pods, 2026-11-30). */
	if (proxy) {
		__sync_fetch_and_add(&proxy->peer_written_base, size);
		__sync_fetch_and_add(&proxy->short_circuited, size);
	}

	if (before < bulk_threshold && before + size >= bulk_threshold && !e->bulk_reported) {
		/* The grant goes to the socket opposite the source: the target. */
		struct shunt_bulk_event ev = { .cookie = e->proxy_cookie };

		e->bulk_reported = 1;
		bpf_ringbuf_output(&bulk_events, &ev, sizeof(ev), 0);
	}
}

/* The target's write_seq: advanced only by what is appended to its send
 * queue (tcp_sendmsg_locked, under its lock) and by its FIN, never by
 * transmission or ACKs, so the difference between two readings is exactly
 * what was written in between, without the target's lock. (A byte count
 * such as bytes_sent - bytes_retrans + write_seq - snd_nxt is not: read
 * without the lock while a segment is being transmitted, bytes_sent has
 * moved and snd_nxt not yet, and it is one segment high.) */
static __always_inline __u32 target_write_seq(struct shunt_endpoint *e)
{
	struct tcp_sock *tp = (void *)e->target_sk;

	return tp ? BPF_CORE_READ(tp, write_seq) : 0;
}

/* A redirect is counted when it is decided, but the push that follows
 * (tcp_bpf_sendmsg_redir -> tcp_bpf_push -> tcp_sendmsg_locked, with the
 * sender's flags, so MSG_DONTWAIT for a non-blocking client) can fall short:
 * the target's send buffer or the protocol's memory runs out after the room
 * check (which reads the target without its lock), the push returns
 * -EAGAIN, tcp_bpf frees what is left and sendmsg returns less; the
 * application sends those bytes again and they would be counted twice. A
 * count above what reached the target makes the FIN rule, the hold's pump
 * and the verdict's backlog bound wait for bytes that never come.
 *
 * So the next message on this endpoint, before it goes anywhere, settles
 * the last push against the target's write_seq: while a redirect is
 * unsettled nothing else writes to the target (the fence opened only once
 * the TCP path had delivered everything, and no byte goes over TCP while
 * redirecting), and this program runs under the endpoint's socket lock.
 * What the target was not written comes off `bytes` and off the verdict's
 * peer_written_base, where count_redirected put it. More written than
 * pushed means another writer (the fence opened early): counted in
 * foreign_bytes, not corrected.
 *
 * The push runs after this program has returned and with the endpoint's
 * lock released (tcp_bpf_send_verdict), so only the thread that made it
 * knows it is over: its next message comes after its sendmsg went on. A
 * message from another thread may find it still under way, and settling
 * then would take off bytes that are yet to be written, a count below what
 * the target gets (the fence would open early, the FIN pass too soon). So
 * only the same thread settles; another one adds its redirect to the
 * unsettled ones (push_task ~0), which stay counted in full from then on:
 * never low, at worst waited for in vain, as before settling existed.
 *
 * The last message before the FIN stays unsettled; userspace's FIN rule
 * takes of it what the target shows beyond everything else (it was pushed,
 * or fell short, inside a sendmsg that returned before the FIN left). */
static __always_inline void settle_pushed(struct shunt_endpoint *e, __u32 write_seq, __u64 task)
{
	__u64 pushed = (__u32)(write_seq - e->push_seq);
	__u64 counted = e->unsettled;
	struct shunt_sock_peer *proxy;

	if (!counted || e->push_task != task)
		return;
	e->unsettled = 0;
	if (pushed >= counted) {
		e->foreign_bytes += pushed - counted;
		return;
	}
	e->short_pushes++;
	e->short_bytes += counted - pushed;
	__sync_fetch_and_add(&e->bytes, -(counted - pushed));
	proxy = bpf_map_lookup_elem(&sock_peers, &e->proxy_cookie);
	if (proxy) {
		__sync_fetch_and_add(&proxy->peer_written_base, -(counted - pushed));
		__sync_fetch_and_add(&proxy->short_circuited, -(counted - pushed));
	}
}

/* A message goes over TCP (SK_PASS). Past shortcut_give_up bytes without the
 * fence opening, userspace is told once (it deletes the endpoint from
 * endpoint_sockets, which gives the socket its own tcp_sendmsg back: safe, as
 * nothing is ever queued in its psock). */
static __always_inline int pass_over_tcp(struct shunt_endpoint *e, __u32 size)
{
	e->passed += size;
	if (e->passed >= shortcut_give_up)
		report_release(e, SHUNT_RELEASE_STUCK);
	return SK_PASS;
}

/* sk_msg_md::remote_port holds the port in network byte order; this
 * kernel (6.18) hands it over in the upper 16 bits of the word (seen:
 * 0xE5B40000 for port 46309, 0xB4E5), others in the lower 16. Normalised to
 * host order either way. */
static __always_inline __u32 remote_port(__u32 raw)
{
	if (raw > 0xffff)
		raw >>= 16;
	return bpf_ntohs((__u16)raw);
}

SEC("sk_msg")
int endpoint_send(struct sk_msg_md *msg)
{
	struct shunt_endpoint_key key = {};
	struct shunt_endpoint *e;
	__u32 size = msg->size;
	__u32 write_seq;
	__u64 task;

	key.family = msg->family;
	key.local_port = msg->local_port;
	key.remote_port = remote_port(msg->remote_port);
	if (msg->family == AF_INET) {
		key.local_ip[0] = msg->local_ip4;
		key.remote_ip[0] = msg->remote_ip4;
	} else {
		key.local_ip[0] = msg->local_ip6[0];
		key.local_ip[1] = msg->local_ip6[1];
		key.local_ip[2] = msg->local_ip6[2];
		key.local_ip[3] = msg->local_ip6[3];
		key.remote_ip[0] = msg->remote_ip6[0];
		key.remote_ip[1] = msg->remote_ip6[1];
		key.remote_ip[2] = msg->remote_ip6[2];
		key.remote_ip[3] = msg->remote_ip6[3];
	}
	e = bpf_map_lookup_elem(&endpoints, &key);
	if (!e || size == 0)
		return SK_PASS;
	/* Before this message goes anywhere: this thread's last push is over. */
	write_seq = target_write_seq(e);
	task = bpf_get_current_pid_tgid();
	settle_pushed(e, write_seq, task);

	/* Changed since the capture into a socket the capture would refuse:
	 * over TCP from this message on (redirect -> TCP needs no fence), and
	 * userspace takes it out, which gives the socket its own protocol
	 * operations back. Until then its sends go through tcp_bpf's push:
	 * MSG_ZEROCOPY ones are notified, with ids that count pushes. */
	if (msg->sk) {
		struct tcp_sock *tp = bpf_skc_to_tcp_sock(msg->sk);
		__u32 why = 0;

		if (tp) {
			switch (unsafe_socket(tp)) {
			case SHUNT_CAPTURE_BLOCKING:
				why = SHUNT_RELEASE_BLOCKING;
				break;
			case SHUNT_CAPTURE_ZEROCOPY:
				why = SHUNT_RELEASE_ZEROCOPY;
				break;
			case SHUNT_CAPTURE_ULP:
				why = SHUNT_RELEASE_ULP;
				break;
			}
		}
		if (why) {
			e->state = SHUNT_ENDPOINT_TCP;
			report_release(e, why);
			return SK_PASS;
		}
	}

	/* Short of room in the target: over TCP, where the endpoint's own send
	 * buffer and the window give the application the back-pressure and
	 * the wake-ups it expects. A redirect that cannot push would either
	 * block a non-blocking sender inside sendmsg or fail it with EAGAIN
	 * while its own socket stays writable, so an edge-triggered writer
	 * would never hear about room again. */
	if (!target_room(e, size)) {
		if (e->state == SHUNT_ENDPOINT_REDIRECT) {
			e->state = SHUNT_ENDPOINT_TCP;
			e->fallbacks++;
		}
		return pass_over_tcp(e, size);
	}
	if (e->state != SHUNT_ENDPOINT_REDIRECT) {
		if (!fence_open(msg, e, write_seq))
			return pass_over_tcp(e, size);
		e->state = SHUNT_ENDPOINT_REDIRECT;
		e->switches++;
		e->passed = 0;
	}
	/* A failed redirect (the target left the map: the pair is ending)
	 * returns SK_DROP, which would fail the sender's write: pass instead. */
	if (bpf_msg_redirect_hash(msg, &redirect_targets, &e->target_cookie, 0) != SK_PASS) {
		e->state = SHUNT_ENDPOINT_TCP;
		return SK_PASS;
	}
	count_redirected(e, size);
	if (e->unsettled) {
		/* Another thread's push, perhaps still under way. */
		e->push_task = ~0ULL;
	} else {
		e->push_seq = write_seq;
		e->push_task = task;
	}
	e->unsettled += size;
	return SK_PASS;
}

/* Whether `ep` is the TCP peer of shunt's socket `px`, not merely a socket
 * with the same 4-tuple (another netns can hold one: the loader searches
 * several, and overlapping pod addresses exist). Each side's sequence space
 * must hold the other's: ep.snd_una <= px.rcv_nxt <= ep.write_seq and
 * px.snd_una <= ep.rcv_nxt <= px.write_seq. Read without the socket locks, in
 * this order, so the true peer passes however the two move meanwhile (px can
 * have received only what ep has queued, and ep's snd_una only moves up to
 * what px has ACKed); a stranger passes only if both random initial sequence
 * numbers line up within the bytes queued.
 *
 * The upper bound is write_seq, not snd_nxt: the sender advances snd_nxt
 * only after tcp_transmit_skb returns, and over veth the receiver can have
 * processed the segment (moved rcv_nxt past it) by then. With snd_nxt, 1
 * capture in 5 of a client already sending at full speed failed as "not
 * local" (measured through the bench pods, 2026-11-30). */
static __always_inline int is_peer(struct tcp_sock *ep, struct tcp_sock *px)
{
	__u32 e_una = BPF_CORE_READ(ep, snd_una);
	__u32 p_rcv = BPF_CORE_READ(px, rcv_nxt);
	__u32 e_end = BPF_CORE_READ(ep, write_seq);
	__u32 p_una = BPF_CORE_READ(px, snd_una);
	__u32 e_rcv = BPF_CORE_READ(ep, rcv_nxt);
	__u32 p_end = BPF_CORE_READ(px, write_seq);

	return (__s32)(p_rcv - e_una) >= 0 && (__s32)(e_end - p_rcv) >= 0 &&
	       (__s32)(e_rcv - p_una) >= 0 && (__s32)(p_end - e_rcv) >= 0;
}

/* Run by the loader with BPF_PROG_TEST_RUN; the "packet" is an Ethernet
 * header followed by struct shunt_capture_req. */
SEC("tc")
int capture_endpoint(struct __sk_buff *skb)
{
	struct shunt_capture_req req;
	struct bpf_sock_tuple tuple = {};
	struct shunt_endpoint e = {};
	struct bpf_sock *sk, *t, *p;
	struct tcp_sock *tp, *ptp;
	struct sock *s;
	__u32 tuple_size;
	int ret = SHUNT_CAPTURE_OK;

	if (bpf_skb_load_bytes(skb, 14, &req, sizeof(req)))
		return SHUNT_CAPTURE_BAD_REQUEST;
	/* Looked up as the endpoint's stack would look up a segment arriving
	 * for it: from its remote address to its local one. */
	if (req.key.family == AF_INET) {
		tuple.ipv4.saddr = req.key.remote_ip[0];
		tuple.ipv4.daddr = req.key.local_ip[0];
		tuple.ipv4.sport = bpf_htons((__u16)req.key.remote_port);
		tuple.ipv4.dport = bpf_htons((__u16)req.key.local_port);
		tuple_size = sizeof(tuple.ipv4);
	} else if (req.key.family == AF_INET6) {
		__builtin_memcpy(tuple.ipv6.saddr, req.key.remote_ip, 16);
		__builtin_memcpy(tuple.ipv6.daddr, req.key.local_ip, 16);
		tuple.ipv6.sport = bpf_htons((__u16)req.key.remote_port);
		tuple.ipv6.dport = bpf_htons((__u16)req.key.local_port);
		tuple_size = sizeof(tuple.ipv6);
	} else {
		return SHUNT_CAPTURE_BAD_REQUEST;
	}
	sk = bpf_sk_lookup_tcp(skb, &tuple, tuple_size, req.netns_id, 0);
	if (!sk)
		return SHUNT_CAPTURE_NOT_LOCAL;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp) {
		ret = SHUNT_CAPTURE_NOT_LOCAL;
		goto out;
	}
	s = (struct sock *)tp;
	/* A socket with the right 4-tuple that is not the peer of shunt's
	 * client-facing socket is someone else's: not ours to capture. */
	p = bpf_map_lookup_elem(&redirect_targets, &req.proxy_cookie);
	if (!p) {
		ret = SHUNT_CAPTURE_BAD_REQUEST;
		goto out;
	}
	ptp = bpf_skc_to_tcp_sock(p);
	if (!ptp || !is_peer(tp, ptp)) {
		bpf_sk_release(p);
		ret = SHUNT_CAPTURE_NOT_LOCAL;
		goto out;
	}
	bpf_sk_release(p);
	if (sk->state != BPF_TCP_ESTABLISHED) {
		ret = SHUNT_CAPTURE_NOT_ESTABLISHED;
		goto out;
	}
	/* A server's accepted socket before its accept(): no struct socket
	 * yet (sock_graft sets it), so no file flags to judge. Not blocking:
	 * it may be a non-blocking server that is slow to accept, and is tried
	 * again for longer (sockmap_path.cpp, CapturedEndpoint). */
	if (!BPF_CORE_READ(s, sk_socket, file)) {
		ret = SHUNT_CAPTURE_NOT_ACCEPTED;
		goto out;
	}
	ret = unsafe_socket(tp);
	if (ret != SHUNT_CAPTURE_OK)
		goto out;
	if (BPF_CORE_READ(s, sk_user_data)) {
		ret = SHUNT_CAPTURE_PSOCK;
		goto out;
	}

	t = bpf_map_lookup_elem(&redirect_targets, &req.target_cookie);
	if (!t) {
		ret = SHUNT_CAPTURE_BAD_REQUEST;
		goto out;
	}
	e.target_sk = (__u64)t;
	bpf_sk_release(t);
	e.target_cookie = req.target_cookie;
	e.proxy_cookie = req.proxy_cookie;
	e.proxy_consumed = req.proxy_consumed;
	e.target_seq = req.target_seq;
	e.acked_base = req.acked_base;
	e.state = SHUNT_ENDPOINT_TCP;
	/* The entry first: the sk_msg program passes whatever finds none. */
	if (bpf_map_update_elem(&endpoints, &req.key, &e, BPF_NOEXIST)) {
		ret = SHUNT_CAPTURE_REFUSED;
		goto out;
	}
	if (bpf_map_update_elem(&endpoint_sockets, &req.proxy_cookie, sk, BPF_NOEXIST)) {
		bpf_map_delete_elem(&endpoints, &req.key);
		ret = SHUNT_CAPTURE_REFUSED;
	}
out:
	bpf_sk_release(sk);
	return ret;
}

char LICENSE[] SEC("license") = "GPL";

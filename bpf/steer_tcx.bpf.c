// SPDX-License-Identifier: GPL-2.0
/* tcx ingress on the host-side device of a pod (veth, or the netkit
 * primary): traffic leaving the pod. Intercepted TCP goes to the proxy:
 *
 *  1. A socket already owning the 4-tuple wins (bpf_skc_lookup_tcp): the
 *     proxy's accepted connection, or its upstream socket bound to the
 *     client pod's address with IP_TRANSPARENT when this packet is the
 *     destination pod's reply. Lookups run when either port is intercepted,
 *     which covers both directions.
 *  2. Otherwise a SYN to an intercepted port is assigned to the transparent
 *     listener of its family (steer_listen).
 *  3. No listener = the proxy is down: drop (fail_closed) or pass untouched
 *     (fail_open, L3/L4 deny entries still enforced).
 *
 * Everything assigned is also marked: bpf_sk_assign only picks the socket,
 * the fwmark rule and the `local` route table make the kernel deliver a
 * packet addressed to a pod locally instead of forwarding it (forwarding
 * drops skbs that carry a socket).
 */
#include "steer_common.h"

char LICENSE[] SEC("license") = "GPL";

static __always_inline struct bpf_sock *steer_lookup(struct __sk_buff *skb,
						     const struct steer_flow *f)
{
	struct bpf_sock_tuple t = {};
	__u32 len;

	if (f->family == 4) {
		t.ipv4.saddr = f->saddr[0];
		t.ipv4.daddr = f->daddr[0];
		t.ipv4.sport = f->sport;
		t.ipv4.dport = f->dport;
		len = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, f->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, f->daddr, 16);
		t.ipv6.sport = f->sport;
		t.ipv6.dport = f->dport;
		len = sizeof(t.ipv6);
	}
	return bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
}

/* Returns 1 if the packet was assigned to a socket of the proxy. A found
 * listener is never used: a host service bound to 0.0.0.0:port would match
 * any destination address, and the proxy's own listener comes from the map.
 */
static __always_inline int steer_to_socket(struct __sk_buff *skb, const struct steer_flow *f)
{
	struct bpf_sock *sk = steer_lookup(skb, f);

	if (!sk)
		return 0;
	if (sk->state == BPF_TCP_LISTEN || (sk->state == BPF_TCP_TIME_WAIT && f->syn)) {
		/* TIME_WAIT + SYN: a new connection reusing the tuple belongs to
		 * the listener, which the kernel would look up among host
		 * sockets, not ours.
		 */
		bpf_sk_release(sk);
		return 0;
	}
	if (sk->state == BPF_TCP_TIME_WAIT) {
		/* Local delivery finds the timewait socket by itself. */
		bpf_sk_release(sk);
		skb->mark |= SHUNT_STEER_MARK;
		steer_count(SHUNT_STAT_TO_LOCAL_STACK);
		return 1;
	}
	long err = bpf_sk_assign(skb, sk, 0);

	bpf_sk_release(sk);
	if (err) {
		steer_count(SHUNT_STAT_ASSIGN_FAILED);
		return 0;
	}
	skb->mark |= SHUNT_STEER_MARK;
	steer_count(SHUNT_STAT_ASSIGN_SOCKET);
	return 1;
}

/* A pod talking to the node itself (an address of the host) is not proxied:
 * the host's reply would be generated locally and routed straight to the
 * pod, never passing a tcx hook that could hand it to shunt's upstream
 * socket. Asked once per connection attempt, not per packet.
 */
static __always_inline int steer_dst_is_local(struct __sk_buff *skb, const struct steer_flow *f)
{
	struct bpf_fib_lookup p = {};

	p.ifindex = skb->ingress_ifindex;
	if (f->family == 4) {
		p.family = 2; /* AF_INET */
		p.ipv4_src = f->saddr[0];
		p.ipv4_dst = f->daddr[0];
	} else {
		p.family = 10; /* AF_INET6 */
		__builtin_memcpy(p.ipv6_src, f->saddr, 16);
		__builtin_memcpy(p.ipv6_dst, f->daddr, 16);
	}
	return bpf_fib_lookup(skb, &p, sizeof(p), BPF_FIB_LOOKUP_SKIP_NEIGH) ==
	       BPF_FIB_LKUP_RET_NOT_FWDED;
}

SEC("tc")
int shunt_steer_tcx(struct __sk_buff *skb)
{
	const struct shunt_steer_config *cfg = steer_config();
	struct steer_flow f = {};

	if (!cfg || steer_parse(skb, &f) < 0)
		return SHUNT_ACT_NEXT;

	if (f.proto != SHUNT_IPPROTO_TCP || !f.tcp_flags_valid) {
		if (steer_denied(cfg, &f)) {
			steer_count(SHUNT_STAT_DENY_DROP);
			return SHUNT_ACT_DROP;
		}
		return SHUNT_ACT_NEXT;
	}

	/* On netkit the peer program classified already; the mark is its verdict. */
	int intercept = (skb->mark & SHUNT_STEER_MARK) || steer_port_intercepted(cfg, f.dport);
	int reply = steer_port_intercepted(cfg, f.sport);

	if ((intercept || reply) && steer_to_socket(skb, &f))
		return SHUNT_ACT_PASS;

	if (!intercept) {
		if (steer_denied(cfg, &f)) {
			steer_count(SHUNT_STAT_DENY_DROP);
			return SHUNT_ACT_DROP;
		}
		return SHUNT_ACT_NEXT;
	}

	if (f.syn && steer_dst_is_local(skb, &f)) {
		skb->mark &= ~SHUNT_STEER_MARK;
		steer_count(SHUNT_STAT_NODE_LOCAL);
		return SHUNT_ACT_NEXT;
	}

	__u32 slot = f.family == 4 ? SHUNT_LISTENER_V4 : SHUNT_LISTENER_V6;
	struct bpf_sock *listener = bpf_map_lookup_elem(&steer_listen, &slot);

	if (listener) {
		if (!f.syn) {
			/* A segment of no connection the proxy knows (e.g. one opened
			 * directly while the proxy was down in fail_open): the local
			 * stack answers with a reset instead of letting it bypass
			 * policy.
			 */
			bpf_sk_release(listener);
			skb->mark |= SHUNT_STEER_MARK;
			steer_count(SHUNT_STAT_TO_LOCAL_STACK);
			return SHUNT_ACT_PASS;
		}
		long err = bpf_sk_assign(skb, listener, 0);

		bpf_sk_release(listener);
		if (err) {
			steer_count(SHUNT_STAT_ASSIGN_FAILED);
			return SHUNT_ACT_DROP;
		}
		skb->mark |= SHUNT_STEER_MARK;
		steer_count(SHUNT_STAT_ASSIGN_LISTENER);
		return SHUNT_ACT_PASS;
	}

	skb->mark &= ~SHUNT_STEER_MARK;
	if (cfg->flags & SHUNT_STEER_F_FAIL_OPEN) {
		if (steer_denied(cfg, &f)) {
			steer_count(SHUNT_STAT_DENY_DROP);
			return SHUNT_ACT_DROP;
		}
		steer_count(SHUNT_STAT_PROXY_DOWN_PASS);
		return SHUNT_ACT_NEXT;
	}
	steer_count(SHUNT_STAT_PROXY_DOWN_DROP);
	return SHUNT_ACT_DROP;
}

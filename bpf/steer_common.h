/* BPF-side pieces shared by steer_tcx.bpf.c and steer_netkit.bpf.c: the maps
 * (declared identically in both objects; the loader makes the netkit object
 * reuse the tcx object's map fds, so both programs see one set), packet
 * parsing, and the port and deny classification. Kernel side only.
 */
#pragma once

#include "vmlinux.h"
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "steering_shared.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define SHUNT_IPPROTO_TCP 6
#define SHUNT_IPPROTO_UDP 17
/* Ethernet + the largest IPv4 header + the largest TCP header: what the
 * parser may touch. Pulled into the linear area when it is not there yet.
 */
/* tcx and netkit program verdicts (uapi enums tcx_action_base and
 * netkit_action share these values). Spelled out because vmlinux.h only has
 * the enums when the build kernel has the feature, and the build machine
 * need not have netkit.
 */
#define SHUNT_ACT_NEXT (-1)
#define SHUNT_ACT_PASS 0
#define SHUNT_ACT_DROP 2
#define SHUNT_PARSE_MAX (14 + 60 + 60)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct shunt_steer_config);
} steer_cfg SEC(".maps");

/* Indexed by destination port (host order); non-zero = intercepted.
 * Ignored when SHUNT_STEER_F_ALL_PORTS is set.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} steer_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SHUNT_DENY_MAX);
	__type(key, __u32);
	__type(value, struct shunt_deny_rule);
} steer_deny SEC(".maps");

/* The proxy's transparent listeners, slot per family. The kernel removes a
 * socket from a sockmap when it is closed, so an empty slot means "the proxy
 * is not running": that is how on_proxy_down is decided without any
 * userspace heartbeat.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, SHUNT_LISTENER_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} steer_listen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SHUNT_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} steer_stats SEC(".maps");

struct steer_flow {
	__u32 saddr[4]; /* network order; IPv4 in word 0 */
	__u32 daddr[4];
	__u16 sport; /* network order; 0 when the protocol has no ports */
	__u16 dport;
	__u8 family; /* 4 or 6 */
	__u8 proto;
	__u8 syn; /* SYN without ACK: a connection attempt */
	__u8 tcp_flags_valid;
};

static __always_inline void steer_count(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&steer_stats, &reason);

	if (v)
		*v += 1;
}

/* Returns 0 when the packet is IPv4/IPv6 and f is filled, -1 otherwise
 * (non-IP traffic is never steered). IPv6 extension headers are not walked:
 * such packets are treated as "no L4 header" and only L3 deny entries apply.
 */
static __always_inline int steer_parse(struct __sk_buff *skb, struct steer_flow *f)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (data + SHUNT_PARSE_MAX > end && skb->len > (__u32)(end - data)) {
		__u32 want = skb->len < SHUNT_PARSE_MAX ? skb->len : SHUNT_PARSE_MAX;

		bpf_skb_pull_data(skb, want);
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
	}

	struct ethhdr *eth = data;
	void *l4;

	if ((void *)(eth + 1) > end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return -1;
		f->family = 4;
		f->proto = ip->protocol;
		f->saddr[0] = ip->saddr;
		f->daddr[0] = ip->daddr;
		/* Non-first fragments carry no L4 header. */
		if (ip->frag_off & bpf_htons(0x1fff))
			return 0;
		l4 = (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return -1;
		f->family = 6;
		f->proto = ip6->nexthdr;
		__builtin_memcpy(f->saddr, &ip6->saddr, 16);
		__builtin_memcpy(f->daddr, &ip6->daddr, 16);
		l4 = (void *)(ip6 + 1);
	} else {
		return -1;
	}

	if (f->proto == SHUNT_IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > end)
			return 0;
		f->sport = th->source;
		f->dport = th->dest;
		f->syn = th->syn && !th->ack;
		f->tcp_flags_valid = 1;
	} else if (f->proto == SHUNT_IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > end)
			return 0;
		f->sport = uh->source;
		f->dport = uh->dest;
	}
	return 0;
}

static __always_inline const struct shunt_steer_config *steer_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&steer_cfg, &zero);
}

static __always_inline int steer_port_intercepted(const struct shunt_steer_config *cfg,
						  __u16 port_be)
{
	if (cfg->flags & SHUNT_STEER_F_ALL_PORTS)
		return 1;
	__u32 key = bpf_ntohs(port_be);
	__u8 *v = bpf_map_lookup_elem(&steer_ports, &key);

	return v && *v;
}

/* TCP is matched on connection attempts only: dropping a SYN denies the
 * connection, while dropping every segment would also break replies to
 * connections the destination opened itself. Other protocols have no such
 * notion, so every packet is matched.
 */
static __always_inline int steer_denied(const struct shunt_steer_config *cfg,
					const struct steer_flow *f)
{
	__u32 count = cfg->deny_count;

	if (f->proto == SHUNT_IPPROTO_TCP && !f->syn)
		return 0;
	for (__u32 i = 0; i < SHUNT_DENY_MAX; i++) {
		if (i >= count)
			break;
		__u32 key = i;
		struct shunt_deny_rule *r = bpf_map_lookup_elem(&steer_deny, &key);

		if (!r)
			break;
		if (r->family != f->family)
			continue;
		if (r->proto && r->proto != f->proto)
			continue;
		if (r->dport && r->dport != f->dport)
			continue;
		if ((f->saddr[0] & r->src_mask[0]) != r->src_net[0] ||
		    (f->saddr[1] & r->src_mask[1]) != r->src_net[1] ||
		    (f->saddr[2] & r->src_mask[2]) != r->src_net[2] ||
		    (f->saddr[3] & r->src_mask[3]) != r->src_net[3])
			continue;
		if ((f->daddr[0] & r->dst_mask[0]) != r->dst_net[0] ||
		    (f->daddr[1] & r->dst_mask[1]) != r->dst_net[1] ||
		    (f->daddr[2] & r->dst_mask[2]) != r->dst_net[2] ||
		    (f->daddr[3] & r->dst_mask[3]) != r->dst_net[3])
			continue;
		return 1;
	}
	return 0;
}

/* Types and constants shared by the steering BPF programs (steer_*.bpf.c)
 * and their loader (steering.cpp). Layouts are part of the kernel/user
 * contract: change both sides together. Addresses and ports are stored in
 * network byte order, exactly as they appear in packets, so the programs
 * compare without converting.
 */
#pragma once

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* skb->mark bit meaning "deliver this packet to the local stack": set by the
 * netkit peer program for traffic to intercepted ports and by the tcx ingress
 * program for everything it assigns. The fwmark rule routes it through
 * SHUNT_STEER_TABLE, whose `local` default route makes the kernel deliver
 * packets for pod addresses locally (as TPROXY setups do). One bit, so other
 * users of skb->mark (CNI plugins, kube-proxy) keep theirs.
 */
#define SHUNT_STEER_MARK 0x00200000u

/* Listener sockmap slots: one transparent listener per address family. */
#define SHUNT_LISTENER_V4 0u
#define SHUNT_LISTENER_V6 1u
#define SHUNT_LISTENER_SLOTS 2u

/* Upper bound of the L3/L4 deny table; the programs scan it linearly with a
 * bounded loop, so it must stay small enough for the verifier and the fast
 * path. The loader refuses configs that need more entries.
 */
#define SHUNT_DENY_MAX 256u

#define SHUNT_STEER_F_ALL_PORTS (1u << 0) /* intercept_ports: all */
#define SHUNT_STEER_F_FAIL_OPEN (1u << 1) /* on_proxy_down: fail_open */

struct shunt_steer_config {
	__u32 flags;
	__u32 deny_count; /* valid entries at the front of the deny table */
};

/* One L3/L4 deny entry: (src & src_mask) == src_net && (dst & dst_mask) ==
 * dst_net, optional destination port and protocol. IPv4 addresses use word
 * 0 only; the other words are zero in both address and mask.
 */
struct shunt_deny_rule {
	__u32 src_net[4];
	__u32 src_mask[4];
	__u32 dst_net[4];
	__u32 dst_mask[4];
	__u16 dport; /* network order; 0 = any port */
	__u8 family; /* 4 or 6 */
	__u8 proto;  /* IPPROTO_*; 0 = any protocol */
};

/* Every outcome the programs reach is counted by reason (per-CPU). */
enum shunt_steer_stat {
	SHUNT_STAT_ASSIGN_SOCKET = 0, /* to an existing proxy socket */
	SHUNT_STAT_ASSIGN_LISTENER,   /* SYN to the transparent listener */
	SHUNT_STAT_TO_LOCAL_STACK,    /* intercepted, no socket: kernel answers (RST) */
	SHUNT_STAT_ASSIGN_FAILED,     /* bpf_sk_assign refused: dropped */
	SHUNT_STAT_DENY_DROP,	      /* L3/L4 deny entry matched */
	SHUNT_STAT_PROXY_DOWN_DROP,   /* no listener, fail_closed */
	SHUNT_STAT_PROXY_DOWN_PASS,   /* no listener, fail_open */
	SHUNT_STAT_NETKIT_MARKED,     /* netkit peer program marked for interception */
	SHUNT_STAT_NODE_LOCAL,	      /* SYN to an address of the node itself: not proxied */
	SHUNT_STAT_MAX,
};

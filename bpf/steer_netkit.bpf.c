// SPDX-License-Identifier: GPL-2.0
/* netkit peer program, attached as BPF_NETKIT_PEER on the host-side
 * primary: it runs when the pod transmits, before the packet reaches the
 * host. It cannot assign sockets (bpf_sk_assign needs tc ingress), so it
 * only classifies: traffic to intercepted ports is marked for the tcx
 * ingress program on the primary, and what an L3/L4 deny entry matches and
 * the proxy will never see is dropped before it costs the host anything.
 * Intercepted traffic is left to the proxy, which answers an L4 deny with
 * a reset rather than silence.
 */
#include "steer_common.h"

char LICENSE[] SEC("license") = "GPL";

SEC("tc")
int shunt_steer_netkit(struct __sk_buff *skb)
{
	const struct shunt_steer_config *cfg = steer_config();
	struct steer_flow f = {};

	if (!cfg || steer_parse(skb, &f) < 0)
		return SHUNT_ACT_NEXT;

	if (f.proto == SHUNT_IPPROTO_TCP && f.tcp_flags_valid &&
	    steer_port_intercepted(cfg, f.dport)) {
		skb->mark |= SHUNT_STEER_MARK;
		steer_count(SHUNT_STAT_NETKIT_MARKED);
		return SHUNT_ACT_NEXT;
	}
	if (steer_denied(cfg, &f)) {
		steer_count(SHUNT_STAT_DENY_DROP);
		return SHUNT_ACT_DROP;
	}
	return SHUNT_ACT_NEXT;
}

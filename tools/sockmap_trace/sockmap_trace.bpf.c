// SPDX-License-Identifier: GPL-2.0
/* A diagnostic for the sk_skb data path (docs/datapath.md, "Repeated bytes
 * in a retransmitted segment"): at every sk_data_ready of a socket
 * whose data_ready is the verdict's (sk_psock_verdict_data_ready), walks its
 * receive queue and reports an skb that starts before the socket's
 * copied_seq or before the end of the skb ahead of it. tcp_read_skb hands
 * whole skbs to the verdict, so such an overlap would be redirected twice.
 * Also counts TCP retransmissions. Tracepoints only (tp_btf): this kernel
 * has no kprobes or fentry. Not part of shunt; built and run by run.sh.
 * It never saw the overlaps that were there: the skb ahead has usually been
 * taken by the verdict already, and copied_seq lags by the bytes a hold
 * keeps unread, so neither comparison sees it. The verdict's own position
 * (sock_peers.next_seq, `repeated`) is the reliable witness. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

/* Set by the loader from /proc/kallsyms. */
const volatile __u64 verdict_data_ready = 0;

enum { SEEN, OVERLAPS, RETRANSMITS, NCOUNTS };
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NCOUNTS);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

static void bump(__u32 k)
{
	__u64 *v = bpf_map_lookup_elem(&counts, &k);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __u32 cb_u32(struct sk_buff *skb, int off)
{
	__u32 v = 0;

	bpf_probe_read_kernel(&v, sizeof(v), &skb->cb[off]);
	return v;
}

SEC("tp_btf/sk_data_ready")
int BPF_PROG(on_ready, const struct sock *sk)
{
	struct sk_buff *head = (struct sk_buff *)&sk->sk_receive_queue;
	struct sk_buff *skb;
	__u32 expect;

	if ((__u64)BPF_CORE_READ(sk, sk_data_ready) != verdict_data_ready)
		return 0;
	bump(SEEN);
	expect = BPF_CORE_READ((struct tcp_sock *)sk, copied_seq);
	skb = BPF_CORE_READ(sk, sk_receive_queue.next);
	for (int i = 0; i < 64 && skb && skb != head; i++) {
		__u32 seq = cb_u32(skb, 0), end = cb_u32(skb, 4); /* TCP_SKB_CB seq, end_seq */

		/* A gap (seq ahead) is normal while the verdict holds: held bytes
		 * advance copied_seq only when userspace reads them. */
		if ((int)(seq - expect) < 0) {
			bump(OVERLAPS);
			bpf_printk("sockmap_trace: overlap at %d: seq %u before %u, len %u", i, seq, expect,
				   BPF_CORE_READ(skb, len));
		}
		expect = end;
		skb = BPF_CORE_READ(skb, next);
	}
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(on_retransmit, const struct sock *sk, const struct sk_buff *skb)
{
	bump(RETRANSMITS);
	return 0;
}

/* Types shared by sockmap_redirect.bpf.c and its loader (bpf/sockmap.cpp). */
#ifndef SHUNT_SOCKMAP_SHARED_H
#define SHUNT_SOCKMAP_SHARED_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* One entry per socket handed to the kernel, keyed by its socket cookie.
 * Written by userspace before the socket enters any sockmap, then only by
 * the verdict program (one run at a time per socket: it runs under the
 * socket's lock). Userspace's side of a hold is in `hold_forwarded`, a map
 * of its own, because a userspace update replaces the whole value and would
 * lose the program's concurrent increments. */
struct shunt_sock_peer {
	__u64 peer_cookie;	 /* where this socket's bytes go */
	__u64 bytes;		 /* payload through the verdict: redirected + held */
	__u64 held;		 /* of `bytes`, passed to this socket's own queue */
	__u64 peer_written_base; /* bytes written to the peer before the handover, plus
				  * what the endpoint short-circuit wrote to it since */
	__u32 bulk_reported;	 /* set once the bulk-transfer event has been sent */
	__u32 holding;		 /* the peer's backlog is over the limit: hold, do not redirect */
	/* The stream position the verdict has taken bytes up to (TCP sequence
	 * number), once `seq_known`: a segment that starts before it repeats
	 * bytes already taken (see redirect_to_peer). */
	__u32 next_seq;
	__u32 seq_known;
	__u64 repeated;	  /* bytes cut because they were taken before */
	__u32 cut_failed; /* a repeat could not be cut: the stream is broken, reset the pair */
	__u32 pad;
	/* Bytes the endpoint short-circuit moved in this socket's direction
	 * past it (the endpoint this socket faces sent them by sk_msg, settled
	 * as shunt_endpoint.bytes is), for the live byte count; written by
	 * sockmap_shortcut.bpf.c only. */
	__u64 short_circuited;
};

/* Ring buffer record. SHUNT_EVENT_BULK (0, what sockmap_redirect sends):
 * this socket has moved bulk data (crossed the bulk_threshold), so
 * userspace may grant its pair larger buffers. SHUNT_EVENT_SHORTCUT_RELEASE
 * (sockmap_shortcut only): userspace takes the endpoint facing socket
 * `cookie` out of the short-circuit, for `reason` (see endpoint_send).
 * SHUNT_EVENT_HOLD (sockmap_redirect): socket `cookie`'s peer backlog
 * crossed backlog_limit and the verdict holds its bytes; userspace forwards
 * them (docs/datapath.md, "Memory bound"). SHUNT_EVENT_BROKEN
 * (sockmap_redirect): socket `cookie` received a segment repeating bytes
 * already taken that the verdict could not cut; it dropped the segment, so
 * userspace must reset the pair. */
enum shunt_event_kind {
	SHUNT_EVENT_BULK = 0,
	SHUNT_EVENT_SHORTCUT_RELEASE = 1,
	SHUNT_EVENT_HOLD = 2,
	SHUNT_EVENT_BROKEN = 3,
};

/* Why a captured endpoint is released (SHUNT_EVENT_SHORTCUT_RELEASE). */
enum shunt_release_reason {
	/* shortcut_give_up bytes sent over TCP without the fence opening: a
	 * sender that never pauses */
	SHUNT_RELEASE_STUCK = 0,
	/* the application changed its socket since the capture into one the
	 * capture refuses (SO_ZEROCOPY, a ULP, blocking): seen at its next send */
	SHUNT_RELEASE_ZEROCOPY = 1,
	SHUNT_RELEASE_ULP = 2,
	SHUNT_RELEASE_BLOCKING = 3,
};

struct shunt_bulk_event {
	__u64 cookie;
	__u32 kind;   /* enum shunt_event_kind; zero-initialised = bulk */
	__u32 reason; /* enum shunt_release_reason, for SHUNT_EVENT_SHORTCUT_RELEASE */
};

/* The endpoint short-circuit (sockmap_shortcut.bpf.c): a local client's own
 * socket redirects what it sends straight into shunt's upstream socket with
 * an sk_msg program. Keyed by the endpoint socket's 4-tuple as that socket
 * sees it (local = the client, remote = the address it connected to), which
 * is what sk_msg_md offers. IPv4 addresses sit in word 0, network order. */
struct shunt_endpoint_key {
	__u32 family; /* AF_INET or AF_INET6 */
	__u32 local_ip[4];
	__u32 remote_ip[4];
	__u32 local_port;  /* host order, as sk_msg_md::local_port */
	__u32 remote_port; /* host order (endpoint_send normalises sk_msg_md's) */
};

enum shunt_endpoint_state {
	SHUNT_ENDPOINT_TCP = 0,	     /* sending over TCP; the fence is checked per message */
	SHUNT_ENDPOINT_REDIRECT = 1, /* sendmsg redirects into `target_cookie` */
};

/* One per captured endpoint. Written by the capture program; `state`,
 * `bytes` and the counters are updated by the sk_msg program only. */
struct shunt_endpoint {
	__u64 target_cookie;  /* shunt's upstream socket: where the bytes go */
	__u64 target_sk;      /* its struct sock, for bpf_probe_read_kernel */
	__u64 proxy_cookie;   /* shunt's socket facing the endpoint (its TCP peer) */
	__u64 proxy_consumed; /* bytes userspace read from proxy_cookie before the handover */
	__u32 target_seq;     /* target's write_seq at the handover (SockmapBridge::write_seqs) */
	/* The endpoint's bytes_acked with no payload acknowledged yet: 1 for a
	 * socket that connected (a client: its SYN counts), 0 for an accepted
	 * one (a server: the child socket starts past its SYN-ACK, which
	 * tcp_ack never counts). */
	__u32 acked_base;
	__u64 bytes;	 /* bytes redirected by sk_msg: settled, plus `unsettled` */
	__u64 switches;	 /* TCP -> redirect transitions (the fence opened) */
	__u64 fallbacks; /* redirect -> TCP transitions (target short of room) */
	__u64 passed;	 /* bytes sent over TCP since the fence last opened (or the capture) */
	__u32 state;	 /* enum shunt_endpoint_state */
	__u32 bulk_reported;
	__u32 release_reported; /* SHUNT_EVENT_SHORTCUT_RELEASE sent */
	/* Settling (endpoint_send, settle_pushed): a redirect is counted when
	 * it is decided, and its push into the target can fall short; the next
	 * message settles it against the target's write_seq. */
	__u32 push_seq;	     /* the target's write_seq before the unsettled push(es) */
	__u64 push_task;     /* pid_tgid of the thread that made them; ~0: several threads */
	__u64 unsettled;     /* of `bytes`, counted for them, not yet settled */
	__u64 short_bytes;   /* counted, then found never pushed (short pushes) */
	__u64 short_pushes;  /* pushes that fell short */
	__u64 foreign_bytes; /* written to the target during a push by someone else */
};

/* Capture request: the input "packet" of capture_endpoint, run through
 * BPF_PROG_TEST_RUN after a 14-byte Ethernet header. */
struct shunt_capture_req {
	struct shunt_endpoint_key key;
	__u64 netns_id; /* BPF_F_CURRENT_NETNS (-1) or an nsid in the caller's netns */
	__u64 target_cookie;
	__u64 proxy_cookie;
	__u64 proxy_consumed;
	__u32 target_seq; /* as in shunt_endpoint */
	__u32 acked_base; /* as in shunt_endpoint */
};

/* Input and output "packet" of read_write_seqs (sockmap_redirect.bpf.c),
 * after a 14-byte Ethernet header: two sockets in redirect_targets by
 * cookie (0: skip), their write_seq written back. */
struct shunt_write_seqs {
	__u64 cookie[2];
	__u32 write_seq[2];
};

/* capture_endpoint's return value. */
enum shunt_capture_result {
	SHUNT_CAPTURE_OK = 0,
	SHUNT_CAPTURE_NOT_LOCAL = 1,	   /* no such socket in that netns */
	SHUNT_CAPTURE_NOT_ESTABLISHED = 2, /* closing already (FIN sent) */
	SHUNT_CAPTURE_BLOCKING = 3,	   /* file without O_NONBLOCK */
	SHUNT_CAPTURE_ZEROCOPY = 4,	   /* SO_ZEROCOPY: tcp_bpf sends no completions */
	SHUNT_CAPTURE_ULP = 5,		   /* kTLS or another ULP already on */
	SHUNT_CAPTURE_PSOCK = 6,	   /* already in someone's sockmap */
	SHUNT_CAPTURE_REFUSED = 7,	   /* the sockhash update failed */
	SHUNT_CAPTURE_BAD_REQUEST = 8,
	SHUNT_CAPTURE_NOT_ACCEPTED = 9, /* a server's socket before its accept() */
};

#endif

/* Types shared by sockmap_redirect.bpf.c and its loader (bpf/sockmap.cpp). */
#ifndef SHUNT_SOCKMAP_SHARED_H
#define SHUNT_SOCKMAP_SHARED_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* One entry per socket handed to the kernel, keyed by its socket cookie.
 * Written by userspace before the socket enters any sockmap; `bytes` is
 * updated by the verdict program for every skb it redirects. */
struct shunt_sock_peer {
	__u64 peer_cookie;   /* where this socket's bytes go */
	__u64 bytes;	     /* payload redirected from this socket to its peer */
	__u32 bulk_reported; /* set once the bulk-transfer event has been sent */
	__u32 pad;
};

/* Ring buffer record: this socket has moved bulk data (crossed the
 * bulk_threshold), so userspace may grant its pair larger buffers. */
struct shunt_bulk_event {
	__u64 cookie;
};

#endif

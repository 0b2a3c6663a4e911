/* SPDX-License-Identifier: GPL-2.0 */
/* The two maps both sockmap programs use: sockmap_redirect declares them and
 * owns them, sockmap_shortcut's loader reuses its fds (bpf_map__reuse_fd), so
 * the declarations must match exactly; one header keeps them so. BPF side
 * only: include after vmlinux.h, bpf_helpers.h and sockmap_shared.h. */
#pragma once

/* Sized at load time to 2 x max_connections. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, struct shunt_sock_peer);
} sock_peers SEC(".maps");

/* Redirect targets. No program is attached to this map: a socket is put
 * here before its peer starts redirecting to it, because a redirect to a
 * socket that is in no map drops bytes the sender has already ACKed. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, __u64);
} redirect_targets SEC(".maps");

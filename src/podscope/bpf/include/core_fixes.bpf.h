/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Kernel differences, in one place. Each shim names the kernel change it covers.
 * Callers pass BTF pointers (tp_btf and iterator arguments), so fields are read directly:
 * plain loads, much cheaper than a bpf_probe_read_kernel() call per field. */
#ifndef PODSCOPE_CORE_FIXES_BPF_H
#define PODSCOPE_CORE_FIXES_BPF_H

#include <bpf/bpf_core_read.h>

/* Before v5.15 (commit 8520e224f547 "bpf, cgroups: Fix cgroup v2 fallback on v1/v2 mixed mode")
 * struct sock_cgroup_data was a union whose 'val' held the cgroup pointer when bit 0 is clear. */
struct sock_cgroup_data___old {
	union {
		struct {
			__u8 is_data : 1;
			__u8 no_refcnt : 1;
			__u8 unused : 6;
			__u8 padding;
			__u16 prioidx;
			__u32 classid;
		};
		__u64 val;
	};
} __attribute__((preserve_access_index));

/* The cgroup v2 id of a full socket: the inode number of the cgroup directory its creator was in.
 * Listener children inherit the listener's cgroup (cgroup_sk_clone), so a server's accepted
 * sockets belong to the server's pod even when the last packet arrives in softirq context. */
static __always_inline __u64 sk_cgroup_id(const struct sock *sk)
{
	struct cgroup *cgrp;

	if (bpf_core_field_exists(struct sock_cgroup_data, cgroup)) {
		cgrp = sk->sk_cgrp_data.cgroup;
	} else {
		struct sock_cgroup_data___old *d = (void *)&sk->sk_cgrp_data;
		__u64 val = BPF_CORE_READ(d, val);

		if (val & 1)
			return 0;
		cgrp = (struct cgroup *)(unsigned long)val;
	}
	if (!cgrp)
		return 0;
	return cgrp->kn->id;
}

/* Network namespace inode number of any socket, full or not (lives in sock_common). */
static __always_inline __u32 skc_netns(const struct sock_common *skc)
{
	return skc->skc_net.net->ns.inum;
}

static __always_inline __u32 dev_netns(const struct net_device *dev)
{
	if (!dev)
		return 0;
	return dev->nd_net.net->ns.inum;
}

#endif

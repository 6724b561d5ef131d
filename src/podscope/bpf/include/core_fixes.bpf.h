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

/* A length the verifier can see is at most max. clang drops a bound it proves redundant, and the
 * verifiers of v5.10 and v6.1 cannot always follow clang's proof (a 64-bit register bounded only
 * through its 32-bit half: "R2 min value is negative", "unbounded memory access"): the compare
 * is written in assembly so that it stays, on the register that is passed on. */
static __always_inline __u64 clamp_len(__u64 v, const __u64 max)
{
	asm volatile("if %[v] <= %[max] goto +1; %[v] = %[max]" : [v] "+r"(v) : [max] "i"(max));
	return v;
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

/* The current task as a plain address, its fields read with CO-RE probe reads: works on every
 * kernel. bpf_get_current_task_btf() (direct loads) needs v5.11 (commit 3ca1032ab7ab "bpf: Add
 * bpf_get_current_task_btf helper"); callers that need a BTF pointer check has_task_btf first. */
static __always_inline struct task_struct *current_task(void)
{
	return (struct task_struct *)bpf_get_current_task();
}

/* Before v5.14 (commit 2f064a59a11f "sched: Change task_struct::state") the field was 'state'. */
struct task_struct___old {
	long state;
} __attribute__((preserve_access_index));

static __always_inline unsigned int task_state(const struct task_struct *t)
{
	if (bpf_core_field_exists(struct task_struct, __state))
		return BPF_CORE_READ(t, __state);
	return BPF_CORE_READ((const struct task_struct___old *)t, state);
}

/* sched_switch's prev_state argument arrived in v5.18 (commit fa2c3254d7cf "sched/tracing: Don't
 * re-read p->state when emitting sched_switch event"). Before it, the state is read from the task,
 * as the tracepoint itself did: a preempted task counts as running. has_prev_state is a setting
 * of the including object (user space reads the tracepoint's arity from kernel BTF). */
#define SCHED_SWITCH_PREV_STATE(ctx, preempt, prev, has_prev_state)                              \
	((has_prev_state) ? (unsigned int)(ctx)[3] : ((preempt) ? 0 : task_state(prev)))

/* Before v5.18 (commit f3fa33acca9f "block: remove the ->rq_disk field in struct request") a
 * request named its disk itself; since, through its queue. */
struct request___old {
	struct gendisk *rq_disk;
} __attribute__((preserve_access_index));

/* A request's device as user space names it, MAJOR:MINOR of the whole disk (0: none). */
static __always_inline __u32 rq_devt(const struct request *rq)
{
	struct gendisk *disk;

	if (bpf_core_field_exists(struct request___old, rq_disk))
		disk = BPF_CORE_READ((struct request___old *)rq, rq_disk);
	else
		disk = BPF_CORE_READ(rq, q, disk);
	if (!disk)
		return 0;
	return (__u32)BPF_CORE_READ(disk, major) << 20 | (__u32)BPF_CORE_READ(disk, first_minor);
}

#endif

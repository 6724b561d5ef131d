// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Stack sampling for a bounded window: on-CPU (a software CPU-clock perf event on every CPU,
 * sampling kernel and user stacks of the watched cgroups) and, when asked, off-CPU (the stacks
 * where watched tasks blocked, weighted by how long they stayed off the CPU).
 *
 * Only loaded while a profile runs (`podscope profile`, or a trigger): the off-CPU half puts a
 * program on sched_switch, which costs every context switch of the node while it is attached
 * (bench/RESULTS.md). User stacks need frame pointers in the profiled binaries. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "maps.bpf.h"
#include "core_fixes.bpf.h"
#include "task_store.bpf.h"
#include "profile.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile bool has_prev_state = true; /* sched_switch's prev_state argument (v5.18) */

DEFINE_ERR_MAP(profile_errors);

const struct profile_key *unused_profile_key __attribute__((unused));

/* cgroup ids of the containers profiled, written by user space */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
} profile_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, PROFILE_MAX_STACKS);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, PROFILE_STACK_DEPTH * sizeof(__u64));
} profile_stacks SEC(".maps");

/* on-CPU samples per key */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PROFILE_MAX_KEYS);
	__type(key, struct profile_key);
	__type(value, __u64);
} profile_samples SEC(".maps");

/* off-CPU nanoseconds per key */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PROFILE_MAX_KEYS);
	__type(key, struct profile_key);
	__type(value, __u64);
} profile_offcpu SEC(".maps");

/* per task (task storage, or a hash by thread id before v5.11: see task_store.bpf.h) */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct profile_blocked);
} profile_blocked_tasks SEC(".maps");

static const struct profile_blocked zero_blocked;

static __always_inline void add(void *map, struct profile_key *k, __u64 v)
{
	static const __u64 zero;
	__u64 *n = lookup_or_init(map, k, &zero, &profile_errors);

	if (n)
		__sync_fetch_and_add(n, v);
}

SEC("perf_event")
int profile_sample(struct bpf_perf_event_data *ctx)
{
	__u64 cgid = bpf_get_current_cgroup_id(), id = bpf_get_current_pid_tgid();
	struct profile_key k = {};

	if (!(__u32)id || !bpf_map_lookup_elem(&profile_cgroups, &cgid))
		return 0; /* the idle task, or not profiled */
	k.cgroup_id = cgid;
	k.tgid = id >> 32;
	k.kstack = bpf_get_stackid(ctx, &profile_stacks, 0);
	k.ustack = bpf_get_stackid(ctx, &profile_stacks, BPF_F_USER_STACK);
	bpf_get_current_comm(k.comm, sizeof(k.comm));
	add(&profile_samples, &k, 1);
	return 0;
}

/* Off-CPU: prev (the current task) blocks: remember when, and where. next comes back: add the
 * time it was away to where it blocked. Preempted tasks are waiting for a CPU, not blocked:
 * they are left out. */
SEC("tp_btf/sched_switch")
int BPF_PROG(profile_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	unsigned int prev_state = SCHED_SWITCH_PREV_STATE(ctx, preempt, prev, has_prev_state);
	__u64 cgid = bpf_get_current_cgroup_id();
	struct profile_blocked *b;
	struct profile_key k = {};

	if (prev_state && bpf_map_lookup_elem(&profile_cgroups, &cgid)) {
		b = task_store_get(&profile_blocked_tasks, prev, true, &zero_blocked);
		if (b) {
			b->ts_ns = bpf_ktime_get_ns();
			b->kstack = bpf_get_stackid(ctx, &profile_stacks, 0);
			b->ustack = bpf_get_stackid(ctx, &profile_stacks, BPF_F_USER_STACK);
		}
	}
	b = task_store_get(&profile_blocked_tasks, next, false, 0);
	if (!b || !b->ts_ns)
		return 0;
	k.cgroup_id = next->cgroups->dfl_cgrp->kn->id;
	k.tgid = next->tgid;
	k.kstack = b->kstack;
	k.ustack = b->ustack;
	__builtin_memcpy(k.comm, next->comm, sizeof(k.comm));
	add(&profile_offcpu, &k, bpf_ktime_get_ns() - b->ts_ns);
	b->ts_ns = 0;
	return 0;
}

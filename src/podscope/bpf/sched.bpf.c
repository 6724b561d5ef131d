// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* CPU per pod and container: context switches, off-CPU time (voluntary: blocked; involuntary:
 * preempted) and run-queue delay (runnable to running).
 *
 * Cost: sched_switch and sched_wakeup fire at the highest rates in the kernel. The task leaving
 * the CPU is looked up by its cgroup id in sched_watch, which user space fills with the
 * containers of pods only; only those get task-local storage, and the storage is all the woken
 * or incoming task is checked for. Other tasks stop after one lookup each. Watched tasks add
 * into their container's slot with atomic adds. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "maps.bpf.h"
#include "sched.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

DEFINE_ERR_MAP(sched_errors);

/* cgroup id -> slot in sched_stats, written by user space */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SCHED_SLOTS);
	__type(key, __u64);
	__type(value, __u32);
} sched_watch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SCHED_SLOTS);
	__type(key, __u32);
	__type(value, struct sched_stats);
} sched_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sched_task);
} sched_tasks SEC(".maps");

/* Only a watched task that left the CPU has task-local storage: for the task being woken or
 * switched in, its storage is the test (no cgroup read, no hash lookup). */
SEC("tp_btf/sched_wakeup")
int BPF_PROG(sched_wake, struct task_struct *p)
{
	struct sched_task *st;

	st = bpf_task_storage_get(&sched_tasks, p, 0, 0);
	if (st && st->off_ns && !st->ready_ns)
		st->ready_ns = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	__u64 now = 0;
	struct sched_stats *s;
	struct sched_task *st;
	__u32 *slot;

	/* the task leaving the CPU is the current one: its cgroup id is a helper call away */
	__u64 cgid = bpf_get_current_cgroup_id();

	slot = bpf_map_lookup_elem(&sched_watch, &cgid);
	if (slot) {
		now = bpf_ktime_get_ns();
		st = bpf_task_storage_get(&sched_tasks, prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		s = bpf_map_lookup_elem(&sched_stats, slot);
		if (st && s) {
			/* still runnable (TASK_RUNNING == 0): preempted, queued from now on */
			st->voluntary = prev_state != 0;
			st->off_ns = now;
			st->ready_ns = st->voluntary ? 0 : now;
			st->slot = *slot;
			if (st->voluntary)
				__sync_fetch_and_add(&s->switches_voluntary, 1);
			else
				__sync_fetch_and_add(&s->switches_involuntary, 1);
		}
	}
	st = bpf_task_storage_get(&sched_tasks, next, 0, 0);
	if (!st || !st->off_ns)
		return 0;
	if (!now)
		now = bpf_ktime_get_ns();
	s = bpf_map_lookup_elem(&sched_stats, &st->slot);
	if (s) {
		__u64 off = now - st->off_ns;

		if (st->voluntary)
			__sync_fetch_and_add(&s->off_voluntary_ns, off);
		else
			__sync_fetch_and_add(&s->off_involuntary_ns, off);
		if (st->ready_ns)
			hist_add(&s->runq, (now - st->ready_ns) / 1000);
	}
	st->off_ns = 0;
	st->ready_ns = 0;
	return 0;
}

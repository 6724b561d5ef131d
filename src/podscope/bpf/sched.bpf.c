// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* CPU per pod and container: context switches, off-CPU time (voluntary: blocked; involuntary:
 * runnable but waiting for a CPU) and run-queue delay.
 *
 * No scheduler hook. Any program on sched_switch costs every context switch of the node; here
 * an empty one already cost 4 % of a pipe ping-pong (bench/RESULTS.md). The scheduler keeps
 * what is needed in every task anyway: time on a CPU (se.sum_exec_runtime), time waiting in
 * run queues and the number of times it was switched in (sched_info.run_delay, .pcount), and
 * its voluntary and involuntary switches (nvcsw, nivcsw). A task iterator, run by user space
 * about once a second and at every scrape, adds what each task of a watched container did since
 * it last looked into the container's slot; a task that exits adds its last part from
 * sched_process_exit. Blocked time is the rest of the task's life: wall time minus running
 * minus waiting.
 *
 * The run-queue histogram is built from the same deltas: each task's switch-ins of an interval
 * go into the bucket of that task's mean wait in the interval. Its _count and _sum are exact;
 * its buckets are as fine as the refresh interval. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "maps.bpf.h"
#include "task_store.bpf.h"
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

/* per task (task storage, or a hash by thread id before v5.11: see task_store.bpf.h) */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sched_task);
} sched_tasks SEC(".maps");

static const struct sched_task zero_task;

static __always_inline __u64 since(__u64 now, __u64 *last)
{
	__u64 d = now > *last ? now - *last : 0;

	if (now > *last)
		*last = now;
	return d;
}

/* Add what task t did since it was last looked at to its container's slot. */
static __always_inline void account(struct task_struct *t, __u64 now)
{
	__u64 cgid = t->cgroups->dfl_cgrp->kn->id;
	__u64 ran, waited, life, blocked, switched_in;
	struct sched_stats *s;
	struct sched_task *st;
	__u32 *slot;

	slot = bpf_map_lookup_elem(&sched_watch, &cgid);
	if (!slot)
		return;
	s = bpf_map_lookup_elem(&sched_stats, slot);
	st = task_store_get(&sched_tasks, t, true, &zero_task);
	if (!s || !st)
		return;
	if (st->start_ns != t->start_time) {
		/* a thread id the hash last saw on a task that is gone: this one starts afresh */
		__builtin_memset(st, 0, sizeof(*st));
		st->start_ns = t->start_time;
	}
	ran = t->se.sum_exec_runtime;
	waited = t->sched_info.run_delay;
	life = now > t->start_time ? now - t->start_time : 0;
	blocked = life > ran + waited ? life - ran - waited : 0;
	if (st->cgid && st->cgid != cgid) {
		/* it moved from another watched container: start over here, count nothing yet */
		st->ran_ns = ran;
		st->run_delay = waited;
		st->blocked_ns = blocked;
		st->pcount = t->sched_info.pcount;
		st->nvcsw = t->nvcsw;
		st->nivcsw = t->nivcsw;
	}
	/* a task seen for the first time counts from its birth */
	st->cgid = cgid;
	since(ran, &st->ran_ns);
	waited = since(waited, &st->run_delay);
	switched_in = since(t->sched_info.pcount, &st->pcount);
	__sync_fetch_and_add(&s->off_involuntary_ns, waited);
	__sync_fetch_and_add(&s->off_voluntary_ns, since(blocked, &st->blocked_ns));
	__sync_fetch_and_add(&s->switches_voluntary, since(t->nvcsw, &st->nvcsw));
	__sync_fetch_and_add(&s->switches_involuntary, since(t->nivcsw, &st->nivcsw));
	hist_add_n(&s->runq, waited / 1000, switched_in);
}

SEC("iter/task")
int sched_iter(struct bpf_iter__task *ctx)
{
	struct task_struct *t = ctx->task;

	if (t)
		account(t, bpf_ktime_get_ns());
	return 0;
}

/* the last part of a task's life, before it is gone from the iterator */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(sched_exit, struct task_struct *p)
{
	account(p, bpf_ktime_get_ns());
	task_store_forget(&sched_tasks, p);
	return 0;
}

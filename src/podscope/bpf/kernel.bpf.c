// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Kernel and runtime failures per pod: process creation and mounts failing (syscall exit
 * tracepoints: only those syscalls pay), OOM kills (the victim's cgroup, not the task that
 * triggered reclaim), and processes ended by a signal. Counters are aggregated here per
 * (cgroup, netns, kind, errno or signal); a record per event goes to user space only when
 * records are wanted. These events are rare by nature: no per-event cost on normal paths. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "maps.bpf.h"
#include "core_fixes.bpf.h"
#include "kernel.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile bool emit_records = false;

DEFINE_ERR_MAP(kernel_errors);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LABELED);
	__type(key, struct label_key);
	__type(value, __u64);
} kernel_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} kernel_events SEC(".maps");

static const __u64 zero_count;

/* So that the record type and the kinds are in the object's BTF for user space. */
const struct kernel_event *unused_kernel_event __attribute__((unused));
const enum kernel_kind *unused_kernel_kind __attribute__((unused));

static __always_inline __u32 task_netns(struct task_struct *t)
{
	return BPF_CORE_READ(t, nsproxy, net_ns, ns.inum);
}

static __always_inline __u64 task_cgroup(struct task_struct *t)
{
	return BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
}

static __always_inline void record(struct task_struct *t, __u32 kind, __s32 value, __u32 nr,
				   __u8 core)
{
	struct label_key key = {};
	struct kernel_event *e;
	__u64 *n;

	key.pod.cgroup_id = task_cgroup(t);
	key.pod.netns = task_netns(t);
	key.kind = kind;
	key.value = (__u32)value;
	n = lookup_or_init(&kernel_counts, &key, &zero_count, &kernel_errors);
	if (n)
		__sync_fetch_and_add(n, 1);
	if (!emit_records)
		return;
	e = bpf_ringbuf_reserve(&kernel_events, sizeof(*e), 0);
	if (!e) {
		count_err(&kernel_errors, ERR_EVENTS_LOST);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = key.pod.cgroup_id;
	e->netns = key.pod.netns;
	e->pid = BPF_CORE_READ(t, pid);
	e->tgid = BPF_CORE_READ(t, tgid);
	e->kind = kind;
	e->value = value;
	e->syscall = nr;
	e->core_dumped = core;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	BPF_CORE_READ_STR_INTO(&e->comm, t, comm);
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int on_exit(struct trace_event_raw_sys_exit *ctx, __u32 kind)
{
	long ret = ctx->ret;

	if (ret >= 0 || ret < -4095)
		return 0;
	record(current_task(), kind, (__s32)-ret, (__u32)ctx->id, 0);
	return 0;
}

/* ---- process creation ---- */
SEC("tracepoint/syscalls/sys_exit_clone")
int kern_clone(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx, KERNEL_FORK_FAILURE); }

SEC("tracepoint/syscalls/sys_exit_clone3")
int kern_clone3(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx, KERNEL_FORK_FAILURE); }

SEC("tracepoint/syscalls/sys_exit_fork")
int kern_fork(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx, KERNEL_FORK_FAILURE); }

SEC("tracepoint/syscalls/sys_exit_vfork")
int kern_vfork(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx, KERNEL_FORK_FAILURE); }

/* ---- mounts ---- */
SEC("tracepoint/syscalls/sys_exit_mount")
int kern_mount(struct trace_event_raw_sys_exit *ctx) { return on_exit(ctx, KERNEL_MOUNT_FAILURE); }

SEC("tracepoint/syscalls/sys_exit_fsmount")
int kern_fsmount(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx, KERNEL_MOUNT_FAILURE);
}

SEC("tracepoint/syscalls/sys_exit_move_mount")
int kern_move_mount(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx, KERNEL_MOUNT_FAILURE);
}

SEC("tracepoint/syscalls/sys_exit_open_tree")
int kern_open_tree(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx, KERNEL_MOUNT_FAILURE);
}

/* ---- OOM kills: the victim's own cgroup ---- */
SEC("tp_btf/mark_victim")
int BPF_PROG(kern_oom, struct task_struct *task)
{
	record(task, KERNEL_OOM_KILL, 0, 0, 0);
	return 0;
}

/* ---- processes ended by a signal (counted once, when the thread-group leader exits) ---- */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(kern_exit, struct task_struct *task)
{
	int code = BPF_CORE_READ(task, exit_code);
	int sig = code & 0x7f;

	if (!sig || BPF_CORE_READ(task, pid) != BPF_CORE_READ(task, tgid))
		return 0;
	record(task, KERNEL_SIGNAL_EXIT, sig, 0, (code & 0x80) != 0);
	return 0;
}

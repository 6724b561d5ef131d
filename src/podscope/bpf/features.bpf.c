// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Tiny programs that `podscope check` loads one at a time to learn, by trying, what this kernel
 * allows. Each is loaded alone (the others' autoload turned off), so one refusal costs nothing. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "features.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} probe_ring SEC(".maps");

SEC("fentry/tcp_v4_connect")
int BPF_PROG(probe_fentry, struct sock *sk)
{
	return 0;
}

SEC("kprobe/tcp_v4_connect")
int probe_kprobe(void *ctx)
{
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(probe_ringbuf)
{
	__u64 *v = bpf_ringbuf_reserve(&probe_ring, sizeof(*v), 0);

	if (v) {
		*v = 1;
		bpf_ringbuf_submit(v, 0);
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_connect")
int probe_syscall_tp(void *ctx)
{
	return 0;
}

/* Attach-kind probes: each counts how often it fired, so tests can see it run. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} probe_hits SEC(".maps");

const volatile __u32 probe_tgid = 0; /* only count events of this process (0: any) */

static __always_inline void hit_any(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&probe_hits, &slot);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline void hit(__u32 slot)
{
	if (probe_tgid && (bpf_get_current_pid_tgid() >> 32) != probe_tgid)
		return;
	hit_any(slot);
}

SEC("uprobe")
int probe_uprobe(void *ctx)
{
	hit(0);
	return 0;
}

SEC("perf_event")
int probe_perf(void *ctx)
{
	hit(1);
	return 0;
}

SEC("cgroup_skb/egress")
int probe_cgroup_skb(struct __sk_buff *skb)
{
	hit_any(2); /* no current task here: the cgroup it is attached to is the filter */
	return 1; /* allow */
}

SEC("raw_tp/sys_enter")
int probe_raw_tp(void *ctx)
{
	hit(3);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int probe_tracepoint(void *ctx)
{
	hit(4);
	return 0;
}

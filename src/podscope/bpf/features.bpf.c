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

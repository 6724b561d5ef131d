// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Memory reclaim stalls per cgroup: the time a task spends reclaiming pages before its
 * allocation can go on, from the vmscan tracepoints' begin and end around direct reclaim (the
 * node is short of memory) and memory-cgroup reclaim (the cgroup is at memory.max or over
 * memory.high, or at its v1 limit). Both fire in the stalled task itself: its own cgroup is the
 * right one (no softirq here). A histogram per (cgroup, kind), in nanoseconds. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "maps.bpf.h"
#include "pressure.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

DEFINE_ERR_MAP(pressure_errors);

const struct reclaim_key *unused_reclaim_key __attribute__((unused));
const enum reclaim_kind *unused_reclaim_kind __attribute__((unused));

/* thread id -> when its reclaim began */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} reclaim_start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PODS);
	__type(key, struct reclaim_key);
	__type(value, struct hist);
} reclaim_stalls SEC(".maps");

static __always_inline int reclaim_begin(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 now = bpf_ktime_get_ns();

	if (bpf_map_update_elem(&reclaim_start, &tid, &now, BPF_ANY))
		count_err(&pressure_errors, ERR_MAP_FULL);
	return 0;
}

static __always_inline int reclaim_end(__u32 kind)
{
	static const struct hist zero;
	struct reclaim_key k = {};
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *start = bpf_map_lookup_elem(&reclaim_start, &tid), t0;
	struct hist *h;

	if (!start) /* began before the agent */
		return 0;
	t0 = *start;
	bpf_map_delete_elem(&reclaim_start, &tid);
	k.cgroup_id = bpf_get_current_cgroup_id();
	k.kind = kind;
	h = lookup_or_init(&reclaim_stalls, &k, &zero, &pressure_errors);
	if (h)
		hist_add(h, bpf_ktime_get_ns() - t0);
	return 0;
}

SEC("tp_btf/mm_vmscan_direct_reclaim_begin")
int BPF_PROG(prs_direct_b)
{
	return reclaim_begin();
}

SEC("tp_btf/mm_vmscan_direct_reclaim_end")
int BPF_PROG(prs_direct_e)
{
	return reclaim_end(RECLAIM_DIRECT);
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_begin")
int BPF_PROG(prs_memcg_b)
{
	return reclaim_begin();
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_end")
int BPF_PROG(prs_memcg_e)
{
	return reclaim_end(RECLAIM_MEMCG);
}

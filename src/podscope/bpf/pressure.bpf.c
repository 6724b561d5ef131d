// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Memory reclaim stalls and block I/O latency per cgroup.
 *
 * Reclaim: the time a task spends reclaiming pages before its allocation can go on, from the
 * vmscan tracepoints' begin and end around direct reclaim (the node is short of memory) and
 * memory-cgroup reclaim (the cgroup is at memory.max or over memory.high, or at its v1 limit).
 * Both fire in the stalled task itself: its own cgroup is the right one (no softirq here). A
 * histogram per (cgroup, kind), in nanoseconds.
 *
 * Block I/O: each request from its issue to the device to its completion (the device's time, as
 * iostat's r_await less the block layer's queueing), per (cgroup, disk, direction). Who it is
 * for: the task that submitted the bio, when a task did (direct, synchronous and readahead I/O:
 * its own cgroup, even where the io controller is on only higher up and the bio's blkcg is an
 * ancestor's); the bio's cgroup v2 blkcg when a kernel thread did (the io controller tags
 * writeback with the cgroup that dirtied the pages; without it, the flusher's: the node's).
 * Taken at block_bio_queue (the submitter's context) and found again from the request's first
 * bio at block_rq_issue: a request's merged bios are counted as the first one's. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "maps.bpf.h"
#include "core_fixes.bpf.h"
#include "pressure.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

DEFINE_ERR_MAP(pressure_errors);

const struct reclaim_key *unused_reclaim_key __attribute__((unused));
const enum reclaim_kind *unused_reclaim_kind __attribute__((unused));
const struct io_key *unused_io_key __attribute__((unused));
const struct io_stats *unused_io_stats __attribute__((unused));
const enum io_dir *unused_io_dir __attribute__((unused));
const struct io_start *unused_io_start __attribute__((unused));

/* Before v5.11 (commit a54895fa057c "block: remove the request_queue to argument request based
 * tracepoints") block_bio_queue and block_rq_issue had the request_queue first: user space reads
 * the arity from kernel BTF. */
const volatile bool block_queue_arg = false;

#define PF_KTHREAD 0x00200000 /* include/linux/sched.h */

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

/* --- block I/O ---------------------------------------------------------------------------- */

/* bio -> when it was queued, and for whom, unless its cgroup v2 blkcg is its submitter's own
 * cgroup (the tag is read again at the issue: no entry). A request's merged bios are never
 * looked up again:
 * user space drops entries older than a minute (an LRU map would also drop young ones under
 * load, and requests with them) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct io_start);
} bio_owner SEC(".maps");

/* request -> when it was issued to the device, and for whom (its first bio's owner; an aborted
 * request's entry: dropped by age like the bios') */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct io_start);
} rq_start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PODS * 4);
	__type(key, struct io_key);
	__type(value, struct io_stats);
} io_requests SEC(".maps");

/* The cgroup v2 a bio's blkcg stands for, 0 when it is the root's or a v1 hierarchy's. */
static __always_inline __u64 bio_blkcg_id(struct bio *bio)
{
	struct blkcg_gq *blkg;
	struct cgroup *cgrp;

	if (!bpf_core_field_exists(bio->bi_blkg))
		return 0;
	blkg = BPF_CORE_READ(bio, bi_blkg);
	if (!blkg)
		return 0;
	cgrp = BPF_CORE_READ(blkg, blkcg, css.cgroup);
	if (!cgrp || BPF_CORE_READ(cgrp, root, hierarchy_id) != 0 || !BPF_CORE_READ(cgrp, level))
		return 0;
	return BPF_CORE_READ(cgrp, kn, id);
}

SEC("tp_btf/block_bio_queue")
int prs_bio_q(unsigned long long *ctx)
{
	struct bio *bio = (struct bio *)(block_queue_arg ? ctx[1] : ctx[0]);
	__u64 key = (__u64)(unsigned long)bio;
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	__u64 cur = bpf_get_current_cgroup_id(), blk = bio_blkcg_id(bio);
	struct io_start st = {};

	if (blk && blk == cur) /* tagged with the submitter's own: block_rq_issue reads it there */
		return 0;
	/* A task submits its own I/O (its blkcg may be an ancestor's, the nearest cgroup with the io
	 * controller on); a kernel thread (the flusher) submits others': their blkcg says whose */
	st.ts = bpf_ktime_get_ns();
	st.cgroup_id = blk && (BPF_CORE_READ(t, flags) & PF_KTHREAD) ? blk : cur;
	if (bpf_map_update_elem(&bio_owner, &key, &st, BPF_ANY))
		count_err(&pressure_errors, ERR_MAP_FULL);
	return 0;
}

SEC("tp_btf/block_rq_issue")
int prs_rq_issue(unsigned long long *ctx)
{
	struct request *rq = (struct request *)(block_queue_arg ? ctx[1] : ctx[0]);
	struct bio *first = BPF_CORE_READ(rq, bio);
	__u64 bio = (__u64)(unsigned long)first, key = (__u64)(unsigned long)rq;
	struct io_start st = {.ts = bpf_ktime_get_ns()}; /* the time counts from the issue */
	struct io_start *queued;
	struct task_struct *t;

	queued = bio ? bpf_map_lookup_elem(&bio_owner, &bio) : 0;
	if (queued) { /* whose block_bio_queue said */
		st.cgroup_id = queued->cgroup_id;
		bpf_map_delete_elem(&bio_owner, &bio);
	} else if (first) {
		/* its submitter's own tag, or a bio block_bio_queue never saw: the part of a bio split
		 * off for the device's limits (bio_split: only the rest is queued again). A task that
		 * issues it is the submitter (its plug); a kernel thread is not: the tag says whose */
		t = (struct task_struct *)bpf_get_current_task();
		st.cgroup_id = bio_blkcg_id(first);
		if (!(BPF_CORE_READ(t, flags) & PF_KTHREAD))
			st.cgroup_id = bpf_get_current_cgroup_id();
	}
	if (bpf_map_update_elem(&rq_start, &key, &st, BPF_ANY))
		count_err(&pressure_errors, ERR_MAP_FULL);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(prs_rq_done, struct request *rq, int error, unsigned int nr_bytes)
{
	static const struct io_stats zero;
	__u64 key = (__u64)(unsigned long)rq, t0, cg;
	struct io_start *st = bpf_map_lookup_elem(&rq_start, &key);
	struct io_key k = {};
	struct io_stats *v;
	__u32 op;

	if (!st) /* issued before the agent */
		return 0;
	t0 = st->ts;
	cg = st->cgroup_id;
	bpf_map_delete_elem(&rq_start, &key);
	op = BPF_CORE_READ(rq, cmd_flags) & 0xff; /* REQ_OP_MASK */
	k.cgroup_id = cg;
	k.dev = rq_devt(rq);
	k.dir = op == 0 ? IO_READ : op == 1 ? IO_WRITE : op == 3 ? IO_DISCARD : IO_OTHER;
	v = lookup_or_init(&io_requests, &k, &zero, &pressure_errors);
	if (!v)
		return 0;
	hist_add(&v->lat, bpf_ktime_get_ns() - t0);
	__sync_fetch_and_add(&v->bytes, nr_bytes);
	return 0;
}

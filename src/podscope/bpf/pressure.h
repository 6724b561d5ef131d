/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Memory reclaim stalls per cgroup: what pressure.bpf.c shares with collectors/pressure.py. */
#ifndef PODSCOPE_PRESSURE_H
#define PODSCOPE_PRESSURE_H

#include "common.h"

enum reclaim_kind {
	RECLAIM_DIRECT = 0, /* the page allocator reclaiming for the node (mm_vmscan_direct_*) */
	RECLAIM_MEMCG = 1,  /* a memory cgroup at its limit or memory.high (mm_vmscan_memcg_*) */
};

struct reclaim_key {
	__u64 cgroup_id; /* the stalled task's cgroup v2 id */
	__u32 kind;	 /* enum reclaim_kind */
	__u32 _pad;
};

enum io_dir {
	IO_READ = 0,
	IO_WRITE = 1,
	IO_DISCARD = 2,
	IO_OTHER = 3, /* flush, write zeroes, ... */
};

/* Block I/O requests per (cgroup, device, direction): issue to completion in the device. */
struct io_key {
	__u64 cgroup_id; /* who the I/O is for (see pressure.bpf.c); 0: the node */
	__u32 dev;	 /* MAJOR << 20 | MINOR of the disk */
	__u32 dir;	 /* enum io_dir */
};

/* A bio or request in flight: when its (first) bio was queued, and for whom. */
struct io_start {
	__u64 ts; /* CLOCK_MONOTONIC */
	__u64 cgroup_id;
};

struct io_stats {
	struct hist lat; /* nanoseconds; the count is the sum of the slots */
	__u64 bytes;
};

#endif

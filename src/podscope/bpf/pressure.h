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

#endif

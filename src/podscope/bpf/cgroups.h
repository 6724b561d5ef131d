/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* cgroup v2 directories as they are made and removed: what cgroups.bpf.c shares with
 * metadata/cgroups.py. */
#ifndef PODSCOPE_CGROUPS_H
#define PODSCOPE_CGROUPS_H

#define CGROUP_PATH_MAX 512 /* kubelet's and the runtimes' paths are below 200 bytes */

enum cgroup_event_kind {
	CGROUP_MADE = 1,
	CGROUP_REMOVED = 2,
};

struct cgroup_event {
	__u64 id;    /* the directory's kernfs id: what BPF programs see as the cgroup id */
	__u64 ts_ns; /* CLOCK_MONOTONIC */
	__u32 kind;  /* enum cgroup_event_kind */
	__u32 len;   /* bytes of path, the terminating zero included */
	char path[CGROUP_PATH_MAX]; /* below the cgroup2 mount, from "/" */
};

#endif

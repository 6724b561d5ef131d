/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Types every collector shares with user space. Fixed-width fields, explicit padding.
 * User space reads their layout from the BTF of each .bpf.o (never restated by hand). */
#ifndef PODSCOPE_COMMON_H
#define PODSCOPE_COMMON_H

/* Log2 histogram: slot 0 holds value 0, slot i (i >= 1) holds [2^(i-1), 2^i). */
#define HIST_SLOTS 40

/* Who a datum belongs to: the socket's (or task's) cgroup v2 id and its network namespace.
 * cgroup_id == 0 means "known only by its network namespace" (e.g. a packet with no socket). */
struct pod_key {
	__u64 cgroup_id;
	__u32 netns;
	__u32 _pad;
};

struct hist {
	__u64 slots[HIST_SLOTS];
	__u64 sum; /* in the histogram's unit (microseconds unless its name says otherwise) */
};

/* A counter with one extra label value (drop reason, errno, ...). */
struct label_key {
	struct pod_key pod;
	__u32 kind;
	__u32 value;
};

#endif

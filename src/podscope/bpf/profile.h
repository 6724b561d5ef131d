/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Profiler: the only definition of what profile.bpf.c shares with collectors/profile.py. */
#ifndef PODSCOPE_PROFILE_H
#define PODSCOPE_PROFILE_H

#include "common.h"

#define PROFILE_STACK_DEPTH 127	  /* frames per stack (the kernel's limit for stack maps) */
#define PROFILE_MAX_STACKS  16384 /* distinct stacks kept */
#define PROFILE_MAX_KEYS    65536 /* distinct (cgroup, process, thread name, stacks) counted */

/* What a count is about. A stack id < 0 is the error bpf_get_stackid gave (no user stack: a
 * kernel thread; -EEXIST / -ENOMEM: the stack map was full). */
struct profile_key {
	__u64 cgroup_id;
	__u32 tgid;
	__s32 kstack;
	__s32 ustack;
	__u32 _pad;
	__u8 comm[16];
};

/* Off-CPU: per task, from the moment it blocked. */
struct profile_blocked {
	__u64 ts_ns;
	__s32 kstack;
	__s32 ustack;
};

#endif

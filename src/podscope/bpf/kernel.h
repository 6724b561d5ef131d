/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Kernel failures collector: the only definition of what kernel.bpf.c shares with
 * collectors/kernel.py. */
#ifndef PODSCOPE_KERNEL_H
#define PODSCOPE_KERNEL_H

#include "common.h"

/* What a counter or a record is about (label_key.kind); label_key.value is the errno or
 * the signal number. */
enum kernel_kind {
	KERNEL_FORK_FAILURE = 1,  /* clone, clone3, fork, vfork returned -errno */
	KERNEL_MOUNT_FAILURE = 2, /* mount, fsmount, move_mount, open_tree returned -errno */
	KERNEL_OOM_KILL = 3,	  /* the OOM killer chose this task (value 0) */
	KERNEL_SIGNAL_EXIT = 4,	  /* a process ended by a signal (value: the signal) */
};

/* One record per failure, OOM kill or fatal signal (only when records are wanted). */
struct kernel_event {
	__u64 ts_ns; /* CLOCK_MONOTONIC */
	__u64 cgroup_id;
	__u32 netns;
	__u32 pid;  /* thread id */
	__u32 tgid; /* process id */
	__u32 kind; /* enum kernel_kind */
	__s32 value; /* errno or signal */
	__u32 syscall; /* the syscall's number, for failures */
	__u8 comm[16];
	__u8 core_dumped;
	__u8 _pad[7];
};

#endif

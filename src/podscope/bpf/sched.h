/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* CPU collector: the only definition of what sched.bpf.c shares with collectors/sched.py. */
#ifndef PODSCOPE_SCHED_H
#define PODSCOPE_SCHED_H

#include "common.h"

#define SCHED_SLOTS 4096 /* containers watched at once */

/* Per watched container cgroup (its slot is given by user space in sched_watch). */
struct sched_stats {
	__u64 switches_voluntary;   /* the task blocked (slept, waited for I/O, a lock, ...) */
	__u64 switches_involuntary; /* the task was preempted while it could still run */
	__u64 off_voluntary_ns;	    /* time off the CPU after blocking, until running again */
	__u64 off_involuntary_ns;   /* time off the CPU after preemption (all of it queued) */
	struct hist runq;	    /* wake-up (or preemption) to running, microseconds */
};

/* Per task, while it is off the CPU. */
struct sched_task {
	__u64 off_ns;	/* when it left the CPU */
	__u64 ready_ns; /* when it became runnable again (preemption: off_ns; wake-up) */
	__u32 slot;
	__u32 voluntary;
};

#endif

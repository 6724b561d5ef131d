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
	__u64 off_voluntary_ns;	    /* time blocked: neither running nor runnable */
	__u64 off_involuntary_ns;   /* time runnable, waiting in a run queue */
	struct hist runq;	    /* run-queue waits, microseconds (see sched.bpf.c) */
};

/* Per watched task, its scheduler counters as they were when it was last looked at. */
struct sched_task {
	__u64 start_ns;	  /* the task's start_time: tells a reused thread id apart (hash fallback) */
	__u64 cgid;	  /* its cgroup then */
	__u64 ran_ns;	  /* se.sum_exec_runtime: time on a CPU */
	__u64 run_delay;  /* sched_info.run_delay: time runnable, waiting in a run queue */
	__u64 blocked_ns; /* the rest of its life so far */
	__u64 pcount;	  /* sched_info.pcount: times switched in */
	__u64 nvcsw;	  /* voluntary context switches */
	__u64 nivcsw;	  /* involuntary context switches */
};

#endif

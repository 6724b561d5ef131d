/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Per-thread state: task-local storage where the kernel has it (v5.11, commit 4cf1bc1f1045 "bpf:
 * Implement task local storage"), else a hash keyed by thread id. The map is declared as
 * BPF_MAP_TYPE_TASK_STORAGE; on older kernels user space turns it into a preallocated hash
 * (bpf_map__set_type before load) and sets has_task_storage = false. The branch not taken is
 * dead code for the verifier (a frozen .rodata constant), so its helpers are never checked. */
#ifndef PODSCOPE_TASK_STORE_BPF_H
#define PODSCOPE_TASK_STORE_BPF_H

#include <bpf/bpf_helpers.h>

const volatile bool has_task_storage = true;

/* The state of task t (a BTF pointer: a tp_btf or iterator argument); with create, a zeroed
 * one is made when missing (a full fallback hash returns NULL). */
static __always_inline void *task_store_get(void *map, struct task_struct *t, bool create,
					    const void *zero)
{
	__u32 tid;
	void *v;

	if (has_task_storage)
		return bpf_task_storage_get(map, t, 0, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
	tid = t->pid;
	v = bpf_map_lookup_elem(map, &tid);
	if (v || !create)
		return v;
	bpf_map_update_elem(map, &tid, zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(map, &tid);
}

/* The state of the current thread. */
static __always_inline void *current_store_get(void *map, bool create, const void *zero)
{
	__u32 tid;
	void *v;

	if (has_task_storage)
		return bpf_task_storage_get(map, bpf_get_current_task_btf(), 0,
					    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
	tid = (__u32)bpf_get_current_pid_tgid();
	v = bpf_map_lookup_elem(map, &tid);
	if (v || !create)
		return v;
	bpf_map_update_elem(map, &tid, zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(map, &tid);
}

/* Forget a thread that exits (task storage frees itself; the hash does not). */
static __always_inline void task_store_forget(void *map, struct task_struct *t)
{
	__u32 tid;

	if (has_task_storage)
		return;
	tid = t->pid;
	bpf_map_delete_elem(map, &tid);
}

#endif

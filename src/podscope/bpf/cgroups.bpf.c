// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* cgroup v2 directories as they are made and removed (tp_btf/cgroup_mkdir, cgroup_rmdir), with
 * the path the kernel gives the tracepoint. Attribution turns the cgroup ids the other programs
 * record into pods and containers later (at a scrape, a drain): a container that lived for a
 * moment is gone from the file system by then, and only this record keeps its name. Rare by
 * nature (a few per container start). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "maps.bpf.h"
#include "cgroups.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

DEFINE_ERR_MAP(cgroup_errors);

const struct cgroup_event *unused_cgroup_event __attribute__((unused));
const enum cgroup_event_kind *unused_cgroup_event_kind __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} cgroup_events SEC(".maps");

static __always_inline int on_dir(struct cgroup *cgrp, const char *path, __u32 kind)
{
	struct cgroup_event *e;
	long n;

	if (cgrp->root->hierarchy_id != 0) /* v1 hierarchies: BPF sees v2 ids only */
		return 0;
	e = bpf_ringbuf_reserve(&cgroup_events, sizeof(*e), 0);
	if (!e) {
		count_err(&cgroup_errors, ERR_EVENTS_LOST);
		return 0;
	}
	e->id = cgrp->kn->id;
	e->ts_ns = bpf_ktime_get_ns();
	e->kind = kind;
	n = bpf_probe_read_kernel_str(e->path, sizeof(e->path), path);
	e->len = n > 0 ? n : 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(cgroup_made, struct cgroup *cgrp, const char *path)
{
	return on_dir(cgrp, path, CGROUP_MADE);
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(cgroup_removed, struct cgroup *cgrp, const char *path)
{
	return on_dir(cgrp, path, CGROUP_REMOVED);
}

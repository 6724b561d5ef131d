/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Map sizes (defaults; user space may resize before load) and small map helpers. */
#ifndef PODSCOPE_MAPS_BPF_H
#define PODSCOPE_MAPS_BPF_H

#include <bpf/bpf_helpers.h>
#include "common.h"

#define MAX_PODS	  4096	 /* (cgroup, netns) pairs per collector */
#define MAX_SOCKETS	  65536	 /* TCP connections tracked at once (per node) */
#define MAX_LABELED	  (MAX_PODS * 8)
#define EVENTS_RINGBUF_SZ (1 << 20)

/* Errors counted by every collector; exported as podscope_events_lost_total{source} and
 * podscope_bpf_map_full_total{map}. */
enum podscope_err {
	ERR_EVENTS_LOST = 0,
	ERR_MAP_FULL = 1,
	ERR_MAX = 2,
};

#define DEFINE_ERR_MAP(name)                                                                       \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                                            \
		__uint(max_entries, ERR_MAX);                                                       \
		__type(key, __u32);                                                                 \
		__type(value, __u64);                                                               \
	} name SEC(".maps")

static __always_inline void count_err(void *err_map, __u32 which)
{
	__u64 *v = bpf_map_lookup_elem(err_map, &which);

	if (v)
		*v += 1;
}

/* Look a key up, inserting a zeroed value first when it is missing. A full map is counted. */
static __always_inline void *lookup_or_init(void *map, const void *key, const void *zero,
					    void *err_map)
{
	void *v = bpf_map_lookup_elem(map, key);
	long ret;

	if (v)
		return v;
	ret = bpf_map_update_elem(map, key, zero, BPF_NOEXIST);
	if (ret && ret != -17 /* EEXIST: another CPU was first */) {
		count_err(err_map, ERR_MAP_FULL);
		return 0;
	}
	return bpf_map_lookup_elem(map, key);
}

static __always_inline __u32 log2_slot(__u64 v)
{
	__u32 slot = 0;

	/* slot = floor(log2(v)) + 1 for v >= 1, 0 for v == 0 */
#pragma unroll
	for (int shift = 32; shift > 0; shift >>= 1) {
		if (v >> shift) {
			v >>= shift;
			slot += shift;
		}
	}
	if (v)
		slot += 1;
	return slot < HIST_SLOTS ? slot : HIST_SLOTS - 1;
}

static __always_inline void hist_add(struct hist *h, __u64 value)
{
	__u32 slot = log2_slot(value);

	__sync_fetch_and_add(&h->slots[slot], 1);
	__sync_fetch_and_add(&h->sum, value);
}

/* n observations whose values add up to total, all placed in the bucket of their mean */
static __always_inline void hist_add_n(struct hist *h, __u64 total, __u64 n)
{
	__u32 slot;

	if (!n)
		return;
	slot = log2_slot(total / n);
	__sync_fetch_and_add(&h->slots[slot], n);
	__sync_fetch_and_add(&h->sum, total);
}

#endif

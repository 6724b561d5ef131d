// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Network stack latency, a deep probe (attached only while a trigger window or the config asks
 * for it: it costs a hash update for every packet of the node).
 *
 * Transmit: from net_dev_start_xmit on the first device a packet leaves by to the skb's release
 * (consume_skb after the NIC's transmit completion, or kfree_skb), per device and the sending
 * socket's pod. On a veth pair the skb is not released at transmit but handed to the peer, so
 * there it runs until the receiver is done with it.
 * Receive: from netif_receive_skb (the last device the packet arrived on) to the copy of its
 * data to the application (skb_copy_datagram_iovec), per device and the reading pod: the time
 * spent in the stack and, mostly, queued on the socket. Both are log2 histograms in
 * microseconds, aggregated in the kernel. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "maps.bpf.h"
#include "core_fixes.bpf.h"
#include "netlat.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

DEFINE_ERR_MAP(netlat_errors);

const enum netlat_kind *unused_netlat_kind __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct netlat_skb);
} netlat_tx SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct netlat_skb);
} netlat_rx SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LABELED);
	__type(key, struct label_key);
	__type(value, struct hist);
} netlat_hists SEC(".maps");

static __always_inline void observe(__u32 kind, const struct netlat_skb *v, __u64 cgroup_id,
				    __u32 netns, __u64 now)
{
	static const struct hist zero;
	struct label_key k = {};
	struct hist *h;

	k.pod.cgroup_id = cgroup_id;
	k.pod.netns = netns;
	k.kind = kind;
	k.value = v->ifindex;
	h = lookup_or_init(&netlat_hists, &k, &zero, &netlat_errors);
	if (h)
		hist_add(h, (now - v->ts_ns) / 1000);
}

SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(netlat_xmit, struct sk_buff *skb, struct net_device *dev)
{
	__u64 key = (__u64)(unsigned long)skb;
	struct netlat_skb v = {}, *seen;
	struct sock *sk = skb->sk;

	v.ts_ns = bpf_ktime_get_ns();
	/* forwarded (veth -> bridge -> veth): it counts from the first device, where its socket
	 * and pod were still known; an entry older than a second is a stale address's */
	seen = bpf_map_lookup_elem(&netlat_tx, &key);
	if (seen && v.ts_ns - seen->ts_ns < 1000000000ULL)
		return 0;
	v.ifindex = dev->ifindex;
	if (sk) {
		v.cgroup_id = sk_cgroup_id(sk);
		v.netns = skc_netns(&sk->__sk_common);
	} else {
		v.netns = dev_netns(dev);
	}
	bpf_map_update_elem(&netlat_tx, &key, &v, BPF_ANY);
	return 0;
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(netlat_recv, struct sk_buff *skb)
{
	__u64 key = (__u64)(unsigned long)skb;
	struct netlat_skb v = {};

	v.ts_ns = bpf_ktime_get_ns();
	v.ifindex = skb->dev ? skb->dev->ifindex : 0;
	bpf_map_update_elem(&netlat_rx, &key, &v, BPF_ANY); /* the last device it came in on */
	return 0;
}

SEC("tp_btf/skb_copy_datagram_iovec")
int BPF_PROG(netlat_copy, const struct sk_buff *skb, int len)
{
	__u64 key = (__u64)(unsigned long)skb, now;
	struct netlat_skb *v = bpf_map_lookup_elem(&netlat_rx, &key);

	if (!v)
		return 0;
	now = bpf_ktime_get_ns();
	observe(NETLAT_RX_SOCK, v, bpf_get_current_cgroup_id(),
		BPF_CORE_READ(current_task(), nsproxy, net_ns, ns.inum), now);
	bpf_map_delete_elem(&netlat_rx, &key); /* the first read of it: later ones add nothing */
	return 0;
}

static __always_inline int released(struct sk_buff *skb)
{
	__u64 key = (__u64)(unsigned long)skb;
	struct netlat_skb *v = bpf_map_lookup_elem(&netlat_tx, &key);

	if (v) {
		observe(NETLAT_TX, v, v->cgroup_id, v->netns, bpf_ktime_get_ns());
		bpf_map_delete_elem(&netlat_tx, &key);
	}
	bpf_map_delete_elem(&netlat_rx, &key); /* freed before anyone read it */
	return 0;
}

SEC("tp_btf/consume_skb")
int BPF_PROG(netlat_consume, struct sk_buff *skb)
{
	return released(skb);
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(netlat_free, struct sk_buff *skb)
{
	return released(skb);
}

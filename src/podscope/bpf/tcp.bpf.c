// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* TCP golden signals per pod, aggregated in the kernel.
 *
 * Cost model: nothing here runs per packet on the normal path. Counters come from the socket
 * itself (bytes_acked, bytes_received, total_retrans, srtt) and are read at state changes and
 * when user space runs the iter/tcp program (once per scrape, per network namespace). Only
 * state changes, resets and packet drops have hooks, and those are rare by nature. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "maps.bpf.h"
#include "core_fixes.bpf.h"
#include "tcp.h"

#define AF_INET	    2
#define AF_INET6    10
#define IPPROTO_TCP 6

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Settings, written by user space between open and load. */
const volatile bool emit_close_events = false; /* one ring-buffer record per closed connection */
/* kfree_skb's arguments (user space reads the arity from kernel BTF): the drop reason arrived in
 * v5.17 (commit c504e5c2f964 "net: skb: introduce kfree_skb_reason()"), the receiving socket in
 * v6.12 (commit ba8de796baf4 "net: introduce sk_skb_reason_drop function"). */
const volatile bool kfree_skb_has_reason = true;
const volatile bool kfree_skb_has_rx_sk = false;

DEFINE_ERR_MAP(tcp_errors);

/* Per-socket state, keyed by the socket's address, from SYN (or first sight) to close.
 * A preallocated hash costs far less per connection than BPF_MAP_TYPE_SK_STORAGE, whose
 * create/delete allocate and free through RCU (measured: bench/RESULTS.md). */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, __u64);
	__type(value, struct sk_state);
} tcp_socks SEC(".maps");

static const struct sk_state zero_sk_state;

/* The iterator pass user space is running (see tcp.h, struct sk_state.seen_pass). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} tcp_pass SEC(".maps");

static __always_inline __u32 current_pass(void)
{
	__u32 zero = 0, *v = bpf_map_lookup_elem(&tcp_pass, &zero);

	return v ? *v : 0;
}

static __always_inline struct sk_state *sk_state_get(const void *sk)
{
	__u64 key = (__u64)(unsigned long)sk;

	return bpf_map_lookup_elem(&tcp_socks, &key);
}

/* A fresh state for a socket (replacing any left by a socket that lived at this address). */
static __always_inline void sk_state_put(const void *sk, const struct sk_state *st)
{
	__u64 key = (__u64)(unsigned long)sk;

	if (bpf_map_update_elem(&tcp_socks, &key, st, BPF_ANY))
		count_err(&tcp_errors, ERR_MAP_FULL);
}

static __always_inline void sk_state_del(const void *sk)
{
	__u64 key = (__u64)(unsigned long)sk;

	bpf_map_delete_elem(&tcp_socks, &key);
}

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PODS);
	__type(key, struct pod_key);
	__type(value, struct tcp_pod);
} tcp_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LABELED);
	__type(key, struct label_key);
	__type(value, __u64);
} tcp_labeled SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RINGBUF_SZ);
} tcp_events SEC(".maps");

/* Zero values for lookup_or_init (kept off the 512-byte stack). */
static const struct tcp_pod zero_pod;
static const __u64 zero_u64;

/* So that the record type is in the object's BTF for user space. */
const struct tcp_close_event *unused_close_event __attribute__((unused));
const struct tcp_listener *unused_listener __attribute__((unused));
const enum tcp_label_kind *unused_label_kind __attribute__((unused));

static __always_inline bool sk_is_full(__u8 state)
{
	return state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV;
}

static __always_inline void pod_of_sk(const struct sock *sk, struct pod_key *key)
{
	key->cgroup_id = sk_cgroup_id(sk);
	key->netns = skc_netns(&sk->__sk_common);
	key->_pad = 0;
}

/* Any socket the tracepoints hand over: full, TIME_WAIT or a request (attributed to its listener). */
static __always_inline void pod_of_any_sk(const struct sock *sk, struct pod_key *key)
{
	__u8 state = sk->__sk_common.skc_state;

	if (state == TCP_NEW_SYN_RECV) {
		/* a request sock starts with sock_common: skc_listener is its listener */
		const struct sock *listener = sk->__sk_common.skc_listener;

		/* the verifier sees a union member as a scalar: read through probe_read (rare path) */
		if (listener) {
			key->cgroup_id = BPF_CORE_READ(listener, sk_cgrp_data.cgroup, kn, id);
			key->netns = BPF_CORE_READ(listener, __sk_common.skc_net.net, ns.inum);
			key->_pad = 0;
			return;
		}
	}
	if (sk_is_full(state)) {
		pod_of_sk(sk, key);
		return;
	}
	key->cgroup_id = 0;
	key->netns = skc_netns(&sk->__sk_common);
	key->_pad = 0;
}

static __always_inline struct tcp_pod *pod_get(const struct pod_key *key)
{
	return lookup_or_init(&tcp_pods, key, &zero_pod, &tcp_errors);
}

static __always_inline void labeled_add(const struct pod_key *pod, __u32 kind, __u32 value)
{
	struct label_key key = { .pod = *pod, .kind = kind, .value = value };
	__u64 *v = lookup_or_init(&tcp_labeled, &key, &zero_u64, &tcp_errors);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline void save_tuple(const struct sock *sk, struct sk_state *st)
{
	st->family = sk->__sk_common.skc_family;
	st->sport = sk->__sk_common.skc_num;
	st->dport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (st->family == AF_INET6) {
		BPF_CORE_READ_INTO(&st->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&st->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	} else {
		BPF_CORE_READ_INTO(&st->saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO(&st->daddr, sk, __sk_common.skc_daddr);
	}
}

/* Add what the socket counted since the last flush. Every caller holds the socket lock: state
 * changes run under it, and since v5.15 (commit 04c7820b776f "bpf: tcp: Bpf iter batching and
 * lock_sock") the iterator takes it too, so a plain read and write count each byte once. (On
 * older kernels an iterator pass racing a state change on another CPU could count one delta
 * twice; an atomic exchange would close that window but needs v5.12, so none is used.) */
static __always_inline void flush_counters(const struct tcp_sock *tp, struct sk_state *st,
					   struct tcp_pod_stats *s)
{
	__u64 acked = tp->bytes_acked;
	__u64 received = tp->bytes_received;
	__u32 retrans = tp->total_retrans;

	if (acked > st->acked) {
		__sync_fetch_and_add(&s->sent_bytes, acked - st->acked);
		st->acked = acked;
	}
	if (received > st->received) {
		__sync_fetch_and_add(&s->received_bytes, received - st->received);
		st->received = received;
	}
	if (retrans > st->retrans) {
		__sync_fetch_and_add(&s->retransmits, retrans - st->retrans);
		st->retrans = retrans;
	}
}

static __always_inline void emit_close(const struct tcp_sock *tp, const struct pod_key *pod,
				       const struct sk_state *st, __u64 now, __u64 sent,
				       __u64 received, __u32 retrans)
{
	struct tcp_close_event *e = bpf_ringbuf_reserve(&tcp_events, sizeof(*e), 0);

	if (!e) {
		count_err(&tcp_errors, ERR_EVENTS_LOST);
		return;
	}
	e->ts_ns = now;
	e->cgroup_id = pod->cgroup_id;
	e->netns = pod->netns;
	e->duration_ns = st->est_ns ? now - st->est_ns : 0;
	e->sent_bytes = sent;
	e->received_bytes = received;
	e->retransmits = retrans;
	e->srtt_us = tp->srtt_us >> 3;
	e->family = st->family;
	e->direction = st->direction;
	__builtin_memcpy(e->saddr, st->saddr, sizeof(e->saddr));
	__builtin_memcpy(e->daddr, st->daddr, sizeof(e->daddr));
	e->sport = st->sport;
	e->dport = st->dport;
	e->_pad = 0;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void on_connect_start(const struct sock *sk)
{
	struct sk_state st = {
		.start_ns = bpf_ktime_get_ns(),
		.direction = TCP_DIR_OUTBOUND,
		.seen_pass = current_pass(),
	};

	sk_state_put(sk, &st);
}

static __always_inline void on_established(const struct sock *sk, int oldstate)
{
	struct pod_key pod;
	struct tcp_pod *p;
	struct sk_state *st;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);
	__u64 now = bpf_ktime_get_ns();

	if (!tp)
		return;
	pod_of_sk(sk, &pod);
	p = pod_get(&pod);
	if (!p)
		return;
	if (oldstate != TCP_SYN_SENT) {
		/* inbound: the whole state in one map update */
		struct sk_state fresh = {
			.est_ns = now,
			.acked = tp->bytes_acked,
			.received = tp->bytes_received,
			.direction = TCP_DIR_INBOUND,
			.seen_pass = current_pass(),
		};

		__sync_fetch_and_add(&p->stats.opened_inbound, 1);
		save_tuple(sk, &fresh);
		sk_state_put(sk, &fresh);
		return;
	}
	__sync_fetch_and_add(&p->stats.opened_outbound, 1);
	st = sk_state_get(sk);
	if (!st)
		return;
	if (st->start_ns)
		hist_add(&p->connect, (now - st->start_ns) / 1000);
	st->est_ns = now;
	/* Count payload only: the SYN's sequence number is already in bytes_acked here. */
	st->acked = tp->bytes_acked;
	st->received = tp->bytes_received;
	save_tuple(sk, st);
}

static __always_inline void on_close(const struct sock *sk, int oldstate)
{
	struct pod_key pod;
	struct tcp_pod *p;
	struct sk_state *st;
	__u64 now, acked0, received0;
	__u32 retrans0, srtt;
	struct tcp_sock *tp;

	if (oldstate == TCP_LISTEN || oldstate == TCP_CLOSE || oldstate == TCP_SYN_RECV ||
	    oldstate == TCP_NEW_SYN_RECV)
		return;
	tp = bpf_skc_to_tcp_sock((void *)sk);
	if (!tp)
		return;
	pod_of_sk(sk, &pod);
	p = pod_get(&pod);
	if (!p)
		return;
	st = sk_state_get(sk);
	if (oldstate == TCP_SYN_SENT) {
		__u32 err = sk->sk_err;

		if (!err)
			err = sk->sk_err_soft;
		labeled_add(&pod, TCP_LABEL_CONNECT_FAILURE, err);
		if (st)
			flush_counters(tp, st, &p->stats); /* SYN retransmissions */
		goto out;
	}
	__sync_fetch_and_add(&p->stats.closed, 1);
	if (!st)
		return; /* opened before podscope and never seen by the iterator */
	now = bpf_ktime_get_ns();
	acked0 = st->acked;
	received0 = st->received;
	retrans0 = st->retrans;
	flush_counters(tp, st, &p->stats);
	if (st->est_ns)
		hist_add(&p->duration, (now - st->est_ns) / 1000);
	srtt = tp->srtt_us >> 3;
	if (srtt)
		hist_add(&p->rtt, srtt);
	if (emit_close_events)
		emit_close(tp, &pod, st, now, st->acked - acked0, st->received - received0,
			   st->retrans - retrans0);
out:
	if (st)
		sk_state_del(sk);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tcp_state, const struct sock *sk, const int oldstate, const int newstate)
{
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	if (newstate == TCP_SYN_SENT)
		on_connect_start(sk);
	else if (newstate == TCP_ESTABLISHED &&
		 (oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV))
		on_established(sk, oldstate);
	else if (newstate == TCP_CLOSE)
		on_close(sk, oldstate);
	return 0;
}

static __always_inline void count_reset(const struct pod_key *pod, bool sent)
{
	struct tcp_pod *p = pod_get(pod);

	if (!p)
		return;
	if (sent)
		__sync_fetch_and_add(&p->stats.resets_sent, 1);
	else
		__sync_fetch_and_add(&p->stats.resets_received, 1);
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(tcp_rst_send, const struct sock *sk, const struct sk_buff *skb)
{
	struct pod_key pod = {};

	if (sk)
		pod_of_any_sk(sk, &pod);
	else if (skb)
		pod.netns = dev_netns(skb->dev);
	count_reset(&pod, true);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(tcp_rst_recv, struct sock *sk)
{
	struct pod_key pod;

	pod_of_any_sk(sk, &pod);
	count_reset(&pod, false);
	return 0;
}

/* Every packet the kernel drops, by drop reason. Listen-queue overflows are not among them: a SYN
 * refused for a full accept queue is freed with consume_skb (no reason), so overflows come from
 * the pod namespace's own LINUX_MIB_LISTENOVERFLOWS and per-listener sk_drops (iter/tcp). */
SEC("tp_btf/kfree_skb")
int BPF_PROG(tcp_drop, struct sk_buff *skb)
{
	struct pod_key pod = {};
	struct sock *sk = skb->sk;
	int reason = 0; /* SKB_DROP_REASON_NOT_SPECIFIED's value before v5.17 had reasons */

	if (kfree_skb_has_reason)
		reason = (int)ctx[2];
	if (!sk && kfree_skb_has_rx_sk)
		sk = (struct sock *)ctx[3];
	if (sk)
		pod_of_any_sk(sk, &pod);
	else
		pod.netns = dev_netns(skb->dev);
	labeled_add(&pod, TCP_LABEL_DROP_REASON, reason);
	return 0;
}

/* sk_drops, or its NUMA-split form (v6.18, "net: add numa_drop_counters"). */
static __always_inline __u32 sk_drop_count(const struct sock *sk)
{
	if (bpf_core_field_exists(struct sock, sk_drop_counters)) {
		struct numa_drop_counters *ndc = BPF_CORE_READ(sk, sk_drop_counters);

		if (ndc)
			return BPF_CORE_READ(ndc, drops0.counter) + BPF_CORE_READ(ndc, drops1.counter);
	}
	return BPF_CORE_READ(sk, sk_drops.counter);
}

static __always_inline bool established_like(__u8 state)
{
	return state == TCP_ESTABLISHED || state == TCP_FIN_WAIT1 || state == TCP_FIN_WAIT2 ||
	       state == TCP_CLOSE_WAIT || state == TCP_LAST_ACK || state == TCP_CLOSING;
}

/* Run by user space once per network namespace at scrape time: writes one record per listener
 * (queue depths) and brings the pod counters of live connections up to date. */
SEC("iter/tcp")
int tcp_iter(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct seq_file *seq = ctx->meta->seq;
	struct tcp_sock *tp;
	struct sock *sk;
	struct sk_state *st;
	struct tcp_pod *p;
	struct pod_key pod;
	__u8 state;

	if (!skc)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	sk = (struct sock *)tp;
	state = sk->__sk_common.skc_state;
	pod_of_sk(sk, &pod);
	if (state == TCP_LISTEN) {
		struct tcp_listener l = {
			.cgroup_id = pod.cgroup_id,
			.netns = pod.netns,
			.family = sk->__sk_common.skc_family,
			.port = sk->__sk_common.skc_num,
			.accept_depth = sk->sk_ack_backlog,
			.accept_limit = sk->sk_max_ack_backlog,
			.syn_depth = tp->inet_conn.icsk_accept_queue.qlen.counter,
			.drops = sk_drop_count(sk),
		};
		bpf_seq_write(seq, &l, sizeof(l));
		return 0;
	}
	st = sk_state_get(sk);
	if (st) {
		st->seen_pass = current_pass(); /* still alive: not garbage */
		if (!established_like(state))
			return 0;
		p = pod_get(&pod);
		if (p)
			flush_counters(tp, st, &p->stats);
		return 0;
	}
	if (!established_like(state))
		return 0;
	/* Established before podscope started: count from now on. */
	{
		__u64 key = (__u64)(unsigned long)sk;

		if (bpf_map_update_elem(&tcp_socks, &key, &zero_sk_state, BPF_NOEXIST))
			return 0;
		st = bpf_map_lookup_elem(&tcp_socks, &key);
	}
	if (!st)
		return 0;
	st->acked = tp->bytes_acked;
	st->received = tp->bytes_received;
	st->retrans = tp->total_retrans;
	st->direction = TCP_DIR_UNKNOWN;
	st->seen_pass = current_pass();
	save_tuple(sk, st);
	return 0;
}

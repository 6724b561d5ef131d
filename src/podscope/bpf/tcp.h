/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* TCP collector: the only definition of what tcp.bpf.c shares with collectors/tcp.py. */
#ifndef PODSCOPE_TCP_H
#define PODSCOPE_TCP_H

#include "common.h"

/* Counters per pod key. User space maps each field name to a metric. */
struct tcp_pod_stats {
	__u64 opened_outbound;
	__u64 opened_inbound;
	__u64 closed;
	__u64 sent_bytes;
	__u64 received_bytes;
	__u64 retransmits;
	__u64 resets_sent;
	__u64 resets_received;
};

/* Everything kept per pod key, in one map value: one lookup per event. Histograms in
 * microseconds. */
struct tcp_pod {
	struct tcp_pod_stats stats;
	struct hist connect;	/* SYN sent -> established */
	struct hist duration;	/* established -> closed */
	struct hist rtt;	/* smoothed RTT at close */
};

enum tcp_label_kind {
	TCP_LABEL_CONNECT_FAILURE = 0, /* value: errno (0 = closed by the application) */
	TCP_LABEL_DROP_REASON = 1,     /* value: enum skb_drop_reason */
};

enum tcp_direction {
	TCP_DIR_UNKNOWN = 0,	/* established before podscope started */
	TCP_DIR_OUTBOUND = 1,
	TCP_DIR_INBOUND = 2,
};

/* Per-socket state, keyed by the socket's address, from SYN (or first sight) to close.
 * User space reads it only to remove entries whose close was never seen: the iterator stamps
 * every live socket's entry with the pass it is running, so an entry missed by two complete
 * passes belongs to a socket that no longer exists. */
struct sk_state {
	__u64 start_ns;	 /* SYN sent (outbound only) */
	__u64 est_ns;	 /* established; 0 when that happened before podscope started */
	__u64 acked;	 /* bytes_acked already added to the pod's counters */
	__u64 received;	 /* bytes_received already added */
	__u32 retrans;	 /* total_retrans already added */
	__u16 direction; /* enum tcp_direction */
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u32 seen_pass; /* last iterator pass that saw the socket alive */
	__u8 saddr[16];
	__u8 daddr[16];
};

/* One record per closed connection (only when record exports are on). */
struct tcp_close_event {
	__u64 ts_ns;		/* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	__u64 cgroup_id;
	__u64 duration_ns;	/* 0 when the start was not seen */
	__u64 sent_bytes;	/* bytes acked by the peer while podscope watched */
	__u64 received_bytes;
	__u32 netns;
	__u32 retransmits;
	__u32 srtt_us;
	__u16 family;		/* AF_INET / AF_INET6 */
	__u16 direction;	/* enum tcp_direction */
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;		/* host byte order */
	__u16 dport;
	__u32 _pad;
};

/* One record per listening socket, written by the iter/tcp program to its seq_file. */
struct tcp_listener {
	__u64 cgroup_id;
	__u32 netns;
	__u16 family;
	__u16 port;
	__u32 accept_depth;	/* sk_ack_backlog */
	__u32 accept_limit;	/* sk_max_ack_backlog */
	__u32 syn_depth;	/* icsk_accept_queue.qlen: half-open requests */
	__u32 drops;		/* sk_drops: packets this listener dropped (tcp_listendrop) */
};

#endif

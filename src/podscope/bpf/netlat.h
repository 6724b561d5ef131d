/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Network stack latency (deep probe): the only definition of what netlat.bpf.c shares with
 * collectors/netlat.py. */
#ifndef PODSCOPE_NETLAT_H
#define PODSCOPE_NETLAT_H

#include "common.h"

enum netlat_kind {
	NETLAT_TX = 1,	   /* net_dev_start_xmit -> the skb freed (consume_skb / kfree_skb) */
	NETLAT_RX_SOCK = 2, /* netif_receive_skb -> its data copied to the application */
};

/* label_key.kind = enum netlat_kind, label_key.value = the device's ifindex (RX: the device the
 * packet last arrived on); the pod is the socket's (TX) or the reader's (RX). */

/* In flight, per skb. */
struct netlat_skb {
	__u64 ts_ns;
	__u64 cgroup_id;
	__u32 netns;
	__u32 ifindex;
};

#endif

/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* DNS collector: the only definition of what dns.bpf.c shares with collectors/dns.py. */
#ifndef PODSCOPE_DNS_H
#define PODSCOPE_DNS_H

#include "common.h"

#define DNS_PORT 53
#define DNS_CAP	 512 /* bytes of one syscall's data captured (header and question fit) */

enum dns_dir {
	DNS_SENT = 0,	  /* the pod sent it (a query) */
	DNS_RECEIVED = 1, /* the pod received it (a response) */
};

/* One socket syscall that carried DNS data to or from port 53. UDP: one message. TCP: bytes of
 * the stream (messages are length-prefixed; user space frames them). */
struct dns_event {
	__u64 ts_ns; /* CLOCK_MONOTONIC */
	__u64 cgroup_id;
	__u64 sock; /* the socket's cookie: a response is paired with a query of the same socket */
	__u32 netns;
	__u32 tgid;
	__u8 server[16]; /* the server's address (IPv4: the first 4 bytes), when known */
	__u16 server_port;
	__u8 family; /* AF_INET, AF_INET6; 0 when the server is not known */
	__u8 dir;    /* enum dns_dir */
	__u8 proto;  /* IPPROTO_UDP, IPPROTO_TCP */
	__u8 _pad[3];
	__u32 len;	/* bytes the syscall moved */
	__u32 captured; /* bytes of them in data */
	__u8 comm[16];
	__u8 data[DNS_CAP];
};

#endif

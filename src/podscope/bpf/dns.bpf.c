// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* DNS queries and responses of pods, from socket syscalls (UDP and TCP, port 53).
 *
 * Hooks (include/sockio.bpf.h), like the HTTP collector: the socket tracepoints where the kernel
 * has them (they fire for the data syscalls of sockets only, once per message of sendmmsg and
 * recvmmsg), else the syscall tracepoints of read, write, readv, writev, recvfrom, sendto,
 * recvmsg, sendmsg, recvmmsg and sendmmsg (their enter keeps only UDP sockets and TCP sockets
 * connected to port 53). A syscall on a socket connected to port 53 (glibc connects its UDP
 * socket) or sending to port 53 (sendto / sendmsg with an address: dig, musl, Go) is copied
 * (<= 512 bytes) to a ring buffer, and so are the receives of a socket that sent to port 53
 * unconnected. User space parses the messages and pairs each response with its query by socket
 * and transaction id.
 *
 * Cost for other sockets: the protocol and peer port are read from the socket; only
 * unconnected UDP sockets cost one hash lookup more. DNS itself is a few messages per lookup:
 * each is one ring buffer record. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "maps.bpf.h"
#include "core_fixes.bpf.h"
#include "sockio.bpf.h"
#include "dns.h"

#define AF_INET	     2
#define AF_INET6     10
#define IPPROTO_TCP  6
#define IPPROTO_UDP  17
#define MMSGHDR_SIZE 64 /* struct mmsghdr: a user_msghdr (56) and an unsigned int, padded */
#define MMSG_LEN_OFF 56 /* its msg_len: the bytes of that message */
#define DNS_MMSG_MAX 8	/* messages of one sendmmsg / recvmmsg looked at (syscall hooks) */

char LICENSE[] SEC("license") = "Dual BSD/GPL";

DEFINE_ERR_MAP(dns_errors);

/* user space reads this layout from BTF */
const struct dns_event *unused_dns_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RINGBUF_SZ);
} dns_events SEC(".maps");

/* Unconnected UDP sockets that sent to port 53: what they receive is a response (or junk,
 * which user space counts as unparsed). Value: the server port they sent to. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u32);
} dns_socks SEC(".maps");

/* Syscall hooks: the socket calls in flight, per thread (sys_enter -> sys_exit). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SX_CALLS_MAX);
	__type(key, __u64);
	__type(value, struct sx_call);
} dns_calls SEC(".maps");

/* sendmmsg / recvmmsg with the socket tracepoints: they fire once per message; which message of
 * the vector a thread is at. */
struct mmsg_pos {
	__u64 vec;
	__u32 next;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct mmsg_pos);
} dns_mmsg SEC(".maps");

/* What a DNS event needs of its socket: from a BTF pointer (socket tracepoints: proto, dport and
 * id are filled by the caller first) or with probe reads of an address found through the fd table
 * (syscall hooks). */
struct dns_sk {
	__u64 id; /* socket cookie (socket tracepoints) or address (syscall hooks) */
	__u32 netns;
	__u16 proto;
	__u16 dport;
	__u16 family;
	__u8 daddr[16];
};

static __always_inline void dns_sk_read(struct dns_sk *k, struct sock *sk, bool btf)
{
	if (btf) {
		k->netns = skc_netns(&sk->__sk_common);
		k->family = sk->__sk_common.skc_family;
	} else {
		k->proto = BPF_CORE_READ(sk, sk_protocol);
		k->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
		k->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
		k->family = BPF_CORE_READ(sk, __sk_common.skc_family);
		k->id = (__u64)(unsigned long)sk;
	}
	if (k->family == AF_INET6)
		BPF_CORE_READ_INTO(&k->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	else
		BPF_CORE_READ_INTO(&k->daddr, sk, __sk_common.skc_daddr);
}

/* The port of a user sockaddr (sin_port and sin6_port are at the same offset). */
static __always_inline __u16 sockaddr_port(__u64 uaddr, __u16 *family)
{
	struct sockaddr_in sa = {};

	if (!uaddr || bpf_probe_read_user(&sa, sizeof(sa), (void *)uaddr))
		return 0;
	*family = sa.sin_family;
	return bpf_ntohs(sa.sin_port);
}

static __always_inline void copy_out(struct dns_event *e, const struct io_desc *d, __u64 ret)
{
	__u64 n = d->len < ret ? d->len : ret, n2;
	struct iovec second;

	if (n > DNS_CAP)
		n = DNS_CAP;
	n = clamp_len(n, DNS_CAP);
	if (bpf_probe_read_user(e->data, n, (void *)d->base))
		return;
	e->captured = n;
	/* TCP: glibc writes the two-byte length prefix as a buffer of its own (writev) */
	if (n != 2 || !d->iov_ptr || d->cnt < 2 || ret <= 2)
		return;
	if (bpf_probe_read_user(&second, sizeof(second), (void *)(d->iov_ptr + sizeof(second))))
		return;
	n2 = second.iov_len < ret - 2 ? second.iov_len : ret - 2;
	if (n2 > DNS_CAP - 2)
		n2 = DNS_CAP - 2;
	n2 = clamp_len(n2, DNS_CAP - 2);
	if (!bpf_probe_read_user(e->data + 2, n2, second.iov_base))
		e->captured = 2 + n2;
}

/* One message of `len` bytes in d (name: the destination of sendto / sendmsg, 0 if none). */
static __always_inline void dns_msg(const struct dns_sk *k, const struct io_desc *d, __u64 name,
				    __u64 len, bool inbound)
{
	__u16 family = 0, port = k->dport;
	struct dns_event *e;

	if (k->dport != DNS_PORT && !inbound) {
		port = sockaddr_port(name, &family);
		if (port != DNS_PORT)
			return;
		if (!bpf_map_lookup_elem(&dns_socks, &k->id)) {
			__u32 p = port;

			bpf_map_update_elem(&dns_socks, &k->id, &p, BPF_ANY);
		}
	}
	e = bpf_ringbuf_reserve(&dns_events, sizeof(*e), 0);
	if (!e) {
		count_err(&dns_errors, ERR_EVENTS_LOST);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id(); /* the process doing the I/O */
	e->netns = k->netns;
	e->sock = k->id;
	e->tgid = bpf_get_current_pid_tgid() >> 32;
	e->dir = inbound ? DNS_RECEIVED : DNS_SENT;
	e->proto = k->proto;
	e->len = len;
	e->captured = 0;
	e->server_port = DNS_PORT;
	__builtin_memset(e->server, 0, sizeof(e->server));
	e->family = 0;
	if (k->dport == DNS_PORT) {
		e->family = k->family;
		__builtin_memcpy(e->server, k->daddr, sizeof(e->server));
	} else if (name && family == AF_INET) {
		bpf_probe_read_user(e->server, 4, (void *)(name + 4)); /* sin_addr */
		e->family = AF_INET;
	} else if (name && family == AF_INET6) {
		bpf_probe_read_user(e->server, 16, (void *)(name + 8)); /* sin6_addr */
		e->family = AF_INET6;
	}
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	copy_out(e, d, len);
	bpf_ringbuf_submit(e, 0);
}

/* Whether a socket may carry DNS: connected to port 53, or an unconnected UDP socket that sends
 * (to be checked against its destination) or that sent to port 53 before. */
static __always_inline bool dns_socket(const struct dns_sk *k, bool inbound)
{
	if (k->proto != IPPROTO_UDP && k->proto != IPPROTO_TCP)
		return false;
	if (k->dport == DNS_PORT)
		return true;
	if (k->proto != IPPROTO_UDP || k->dport)
		return false;
	return !inbound || bpf_map_lookup_elem(&dns_socks, &k->id);
}

/* ---- hook set 1: the socket tracepoints (v6.3), once per message ---- */

/* The data and the destination address (sendto / sendmsg) of the current message. */
static __always_inline bool dns_io(struct io_desc *d, __u64 *name)
{
	__u64 id = bpf_get_current_pid_tgid(), vec, vlen;
	struct mmsg_pos *pos, fresh = {};
	struct sys_args a;

	*name = 0;
	if (!sys_args_from_regs(&a))
		return false;
	if (a.nr == NR_sendto) {
		*name = a.a5;
		return io_desc_get(d, &a);
	}
	if (a.nr == NR_sendmsg)
		return io_desc_msghdr(d, a.a2, name);
	if (a.nr != NR_sendmmsg && a.nr != NR_recvmmsg)
		return io_desc_get(d, &a);
	vec = a.a2;
	vlen = a.a3;
	pos = bpf_map_lookup_elem(&dns_mmsg, &id);
	if (!pos || pos->vec != vec || pos->next >= vlen) {
		/* a new call (a call that ended early leaves the next call misplaced only when it
		 * reuses the same vector: user space then sees a message twice or not at all) */
		fresh.vec = vec;
		bpf_map_update_elem(&dns_mmsg, &id, &fresh, BPF_ANY);
		pos = bpf_map_lookup_elem(&dns_mmsg, &id);
		if (!pos)
			return false;
	}
	vec += (__u64)pos->next * MMSGHDR_SIZE;
	pos->next += 1;
	return io_desc_msghdr(d, vec, a.nr == NR_sendmmsg ? name : 0);
}

static __always_inline int on_dns(struct sock *sk, int ret, bool inbound)
{
	struct dns_sk k = {};
	struct io_desc d = {};
	__u64 name = 0;

	if (ret <= 0)
		return 0;
	/* every socket's I/O comes here: the cheap tests first */
	k.proto = sk->sk_protocol;
	k.dport = bpf_ntohs(sk->__sk_common.skc_dport);
	if ((k.proto != IPPROTO_UDP && k.proto != IPPROTO_TCP) ||
	    (k.dport != DNS_PORT && (k.proto != IPPROTO_UDP || k.dport)))
		return 0;
	k.id = bpf_get_socket_cookie(sk);
	if (!dns_socket(&k, inbound))
		return 0;
	dns_sk_read(&k, sk, true);
	if (!dns_io(&d, &name))
		return 0;
	dns_msg(&k, &d, name, ret, inbound);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(dns_recv, struct sock *sk, int ret, int flags)
{
	if (flags & MSG_PEEK) /* the same bytes will be read again */
		return 0;
	return on_dns(sk, ret, true);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(dns_send, struct sock *sk, int ret, int flags)
{
	return on_dns(sk, ret, false);
}

/* ---- hook set 2: the syscall tracepoints (every kernel) ---- */

static __always_inline int sx_enter(struct trace_event_raw_sys_enter *ctx, __u64 nr, bool inbound,
				    int peek_arg)
{
	__u16 type = 0, proto = 0;
	struct dns_sk k = {};
	__u64 sk;

	if (sx_flags(ctx, peek_arg) & MSG_PEEK)
		return 0;
	sk = fd_socket(ctx->args[0], &type, &proto);
	if (!sk || (proto != IPPROTO_UDP && proto != IPPROTO_TCP))
		return 0;
	k.id = sk;
	k.proto = proto;
	k.dport = bpf_ntohs(BPF_CORE_READ((struct sock *)sk, __sk_common.skc_dport));
	if (!dns_socket(&k, inbound))
		return 0;
	/* only sendto has a 5th argument: reading past a tracepoint's own arguments makes the
	 * kernel refuse to attach the program (EACCES) */
	sx_save(&dns_calls, sk, nr, ctx->args[1], ctx->args[2], nr == NR_sendto ? ctx->args[4] : 0);
	return 0;
}

static __always_inline int sx_exit(struct trace_event_raw_sys_exit *ctx, bool inbound)
{
	struct sx_call c;
	struct dns_sk k = {};
	struct io_desc d = {};
	__u64 name = 0, len;
	long ret = ctx->ret;

	if (!sx_take(&dns_calls, &c) || ret <= 0)
		return 0;
	dns_sk_read(&k, (struct sock *)(unsigned long)c.sk, false);
	if (c.a.nr == NR_sendmmsg || c.a.nr == NR_recvmmsg) {
		/* ret messages, each with its own length */
		for (int i = 0; i < DNS_MMSG_MAX; i++) {
			__u64 m = c.a.a2 + (__u64)i * MMSGHDR_SIZE;
			__u32 mlen = 0;

			if (i >= ret)
				break;
			if (bpf_probe_read_user(&mlen, sizeof(mlen), (void *)(m + MMSG_LEN_OFF)) ||
			    !io_desc_msghdr(&d, m, c.a.nr == NR_sendmmsg ? &name : 0))
				break;
			dns_msg(&k, &d, name, mlen, inbound);
		}
		return 0;
	}
	if (c.a.nr == NR_sendto)
		name = c.a.a5;
	if (c.a.nr == NR_sendmsg ? !io_desc_msghdr(&d, c.a.a2, &name) : !io_desc_get(&d, &c.a))
		return 0;
	len = ret;
	dns_msg(&k, &d, name, len, inbound);
	return 0;
}

SX_PROGS(dns, read, true, 0)
SX_PROGS(dns, readv, true, 0)
SX_PROGS(dns, recvfrom, true, 4)
SX_PROGS(dns, recvmsg, true, 3)
SX_PROGS(dns, recvmmsg, true, 0)
SX_PROGS(dns, write, false, 0)
SX_PROGS(dns, writev, false, 0)
SX_PROGS(dns, sendto, false, 0)
SX_PROGS(dns, sendmsg, false, 0)
SX_PROGS(dns, sendmmsg, false, 0)

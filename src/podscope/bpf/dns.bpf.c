// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* DNS queries and responses of pods, from socket syscalls (UDP and TCP, port 53).
 *
 * Hooks: tp_btf/sock_send_length and sock_recv_length, like the HTTP collector: they fire for
 * the data syscalls of sockets only (send, sendto, sendmsg, sendmmsg, write, and their receive
 * sides). A syscall on a socket connected to port 53 (glibc connects its UDP socket) or sending
 * to port 53 (sendto / sendmsg with an address: dig, musl, Go) is copied (<= 512 bytes) to a
 * ring buffer, and so are the receives of a socket that sent to port 53 unconnected. User space
 * parses the messages and pairs each response with its query by socket and transaction id.
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
#define MSG_PEEK     2
#define MMSGHDR_SIZE 64 /* struct mmsghdr: a user_msghdr (56) and an unsigned int, padded */

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

/* sendmmsg / recvmmsg: the tracepoint fires once per message; which message of the vector a
 * thread is at. */
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

/* The data and the destination address (sendto / sendmsg) of the current syscall. */
static __always_inline bool dns_io(struct io_desc *d, __u64 *name)
{
	struct pt_regs *r = syscall_regs();
	__u64 id = bpf_get_current_pid_tgid(), vec, vlen;
	struct mmsg_pos *pos, fresh = {};
	long nr;

	*name = 0;
	if (!r)
		return false;
	nr = SYSCALL_NR(r);
	if (nr == NR_sendto) {
		*name = SYSCALL_ARG5(r);
		return io_desc_get(d);
	}
	if (nr == NR_sendmsg)
		return io_desc_msghdr(d, SYSCALL_ARG2(r), name);
	if (nr != NR_sendmmsg && nr != NR_recvmmsg)
		return io_desc_get(d);
	vec = SYSCALL_ARG2(r);
	vlen = SYSCALL_ARG3(r);
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
	return io_desc_msghdr(d, vec, nr == NR_sendmmsg ? name : 0);
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

static __always_inline void copy_out(struct dns_event *e, const struct io_desc *d, int ret)
{
	__u64 n = d->len < (__u64)ret ? d->len : (__u64)ret, n2;
	struct iovec second;

	if (n > DNS_CAP)
		n = DNS_CAP;
	if (bpf_probe_read_user(e->data, n, (void *)d->base))
		return;
	e->captured = n;
	/* TCP: glibc writes the two-byte length prefix as a buffer of its own (writev) */
	if (n != 2 || !d->iov_ptr || d->cnt < 2 || (__u64)ret <= 2)
		return;
	if (bpf_probe_read_user(&second, sizeof(second), (void *)(d->iov_ptr + sizeof(second))))
		return;
	n2 = second.iov_len < (__u64)ret - 2 ? second.iov_len : (__u64)ret - 2;
	if (n2 > DNS_CAP - 2)
		n2 = DNS_CAP - 2;
	if (!bpf_probe_read_user(e->data + 2, n2, second.iov_base))
		e->captured = 2 + n2;
}

static __always_inline int on_dns(struct sock *sk, int ret, bool inbound)
{
	__u16 proto, dport, family = 0, port;
	__u64 name = 0, cookie;
	struct dns_event *e;
	struct io_desc d = {};
	__u32 *known = 0;

	if (ret <= 0)
		return 0;
	proto = sk->sk_protocol;
	if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
		return 0;
	dport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (dport != DNS_PORT) {
		/* only an unconnected UDP socket may still be talking to port 53 */
		if (proto != IPPROTO_UDP || dport)
			return 0;
		cookie = bpf_get_socket_cookie(sk);
		known = bpf_map_lookup_elem(&dns_socks, &cookie);
		if (inbound && !known)
			return 0;
	}
	if (!dns_io(&d, &name))
		return 0;
	port = dport;
	if (dport != DNS_PORT && !inbound) {
		port = sockaddr_port(name, &family);
		if (port != DNS_PORT)
			return 0;
		if (!known) {
			__u32 p = port;

			bpf_map_update_elem(&dns_socks, &cookie, &p, BPF_ANY);
		}
	}
	e = bpf_ringbuf_reserve(&dns_events, sizeof(*e), 0);
	if (!e) {
		count_err(&dns_errors, ERR_EVENTS_LOST);
		return 0;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id(); /* the process doing the I/O */
	e->netns = skc_netns(&sk->__sk_common);
	e->sock = bpf_get_socket_cookie(sk);
	e->tgid = bpf_get_current_pid_tgid() >> 32;
	e->dir = inbound ? DNS_RECEIVED : DNS_SENT;
	e->proto = proto;
	e->len = ret;
	e->captured = 0;
	e->server_port = DNS_PORT;
	__builtin_memset(e->server, 0, sizeof(e->server));
	e->family = 0;
	if (dport == DNS_PORT) {
		e->family = sk->__sk_common.skc_family;
		if (e->family == AF_INET6)
			BPF_CORE_READ_INTO(&e->server, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
		else
			BPF_CORE_READ_INTO(&e->server, sk, __sk_common.skc_daddr);
	} else if (name && family == AF_INET) {
		bpf_probe_read_user(e->server, 4, (void *)(name + 4)); /* sin_addr */
		e->family = AF_INET;
	} else if (name && family == AF_INET6) {
		bpf_probe_read_user(e->server, 16, (void *)(name + 8)); /* sin6_addr */
		e->family = AF_INET6;
	}
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	copy_out(e, &d, ret);
	bpf_ringbuf_submit(e, 0);
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

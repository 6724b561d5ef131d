/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The data of a socket syscall, for the collectors that read socket payloads (HTTP, DNS).
 * Two hook sets, chosen by user space from what the kernel has:
 *  - socket tracepoints: tp_btf/sock_send_length and sock_recv_length (v6.3) fire inside the
 *    data syscalls of sockets only, with the socket and the byte count; the syscall's own
 *    arguments (buffer, iovec, msghdr) come from its saved registers (bpf_task_pt_regs, v5.15).
 *  - syscall tracepoints (every kernel): sys_enter_<call> finds the socket behind the fd (the
 *    task's fd table, CO-RE probe reads) and, when the collector wants it, saves the arguments
 *    per thread; sys_exit_<call> takes them with the byte count. Every process's every such
 *    syscall pays the tracepoint; only those on wanted sockets pay a map update. */
#ifndef PODSCOPE_SOCKIO_BPF_H
#define PODSCOPE_SOCKIO_BPF_H

#include "core_fixes.bpf.h"

#define PF_KTHREAD  0x00200000
#define S_IFMT	    00170000
#define S_IFSOCK    0140000
#define SOCK_STREAM 1
#define SOCK_DGRAM  2
#define MSG_PEEK    2

/* Syscall numbers whose arguments name the buffer (asm/unistd_64.h of each architecture). */
#if defined(__TARGET_ARCH_x86)
#define NR_read	    0
#define NR_write    1
#define NR_readv    19
#define NR_writev   20
#define NR_sendto   44
#define NR_recvfrom 45
#define NR_sendmsg  46
#define NR_recvmsg  47
#define NR_recvmmsg 299
#define NR_sendmmsg 307
#define SYSCALL_NR(r)	((long)(r)->orig_ax)
#define SYSCALL_ARG1(r) ((r)->di)
#define SYSCALL_ARG2(r) ((r)->si)
#define SYSCALL_ARG3(r) ((r)->dx)
#define SYSCALL_ARG4(r) ((r)->r10)
#define SYSCALL_ARG5(r) ((r)->r8)
#elif defined(__TARGET_ARCH_arm64)
#define NR_readv    65
#define NR_writev   66
#define NR_read	    63
#define NR_write    64
#define NR_sendto   206
#define NR_recvfrom 207
#define NR_sendmsg  211
#define NR_recvmsg  212
#define NR_recvmmsg 243
#define NR_sendmmsg 269
#define SYSCALL_NR(r)	((long)(r)->syscallno)
#define SYSCALL_ARG1(r) ((r)->orig_x0)
#define SYSCALL_ARG2(r) ((r)->regs[1])
#define SYSCALL_ARG3(r) ((r)->regs[2])
#define SYSCALL_ARG4(r) ((r)->regs[3])
#define SYSCALL_ARG5(r) ((r)->regs[4])
#else
#error "podscope: sockio.bpf.h knows the syscall numbers of x86 and arm64 only"
#endif

/* The arguments of a data syscall that say where its data is. */
struct sys_args {
	__u64 nr;
	__u64 a2; /* buffer, iovec array, msghdr or mmsghdr vector */
	__u64 a3; /* length, iovec count or vector length */
	__u64 a5; /* sendto: the destination address */
};

/* A syscall on a socket, saved at sys_enter for its sys_exit (syscall-tracepoint hooks). */
struct sx_call {
	__u64 sk; /* the socket's address */
	struct sys_args a;
};

#define SX_CALLS_MAX 16384 /* threads inside a watched socket syscall at once (LRU beyond) */

/* Where the syscall's data is: the iovec list (a single buffer is a list of one). */
struct io_desc {
	__u64 iov_ptr; /* user address of the iovec array; 0 for a single buffer */
	__u64 base;    /* first buffer */
	__u64 len;
	__u64 cnt;
};

/* Socket tracepoints: the current syscall's arguments from its saved registers; false for kernel
 * threads (NFS, iSCSI...: a kernel socket has no user buffer). Needs bpf_task_pt_regs: only
 * programs of that hook set call it. */
static __always_inline bool sys_args_from_regs(struct sys_args *a)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct pt_regs *r;

	if (t->flags & PF_KTHREAD)
		return false;
	r = (struct pt_regs *)bpf_task_pt_regs(t);
	a->nr = SYSCALL_NR(r);
	a->a2 = SYSCALL_ARG2(r);
	a->a3 = SYSCALL_ARG3(r);
	a->a5 = SYSCALL_ARG5(r);
	return true;
}

/* Syscall tracepoints: the socket behind fd in the current task's fd table, with its type and
 * protocol; 0 when fd is not a socket. */
static __always_inline __u64 fd_socket(long fd, __u16 *type, __u16 *proto)
{
	struct task_struct *t = current_task();
	struct file **fds, *f = 0;
	struct socket *so;
	struct sock *sk;

	if (fd < 0 || fd > 0xfffff)
		return 0;
	fds = BPF_CORE_READ(t, files, fdt, fd);
	if (!fds || bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return 0;
	if ((BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	so = BPF_CORE_READ(f, private_data);
	if (!so)
		return 0;
	sk = BPF_CORE_READ(so, sk);
	if (!sk)
		return 0;
	*type = BPF_CORE_READ(so, type);
	*proto = BPF_CORE_READ(sk, sk_protocol);
	return (__u64)(unsigned long)sk;
}

/* sys_enter: the flags argument (recvfrom: the 4th, recvmsg: the 3rd; 0: none). Each read has a
 * constant offset from ctx, as the verifier wants for tracepoint contexts. */
static __always_inline __u64 sx_flags(const struct trace_event_raw_sys_enter *ctx, int arg)
{
	if (arg == 4)
		return ctx->args[3];
	if (arg == 3)
		return ctx->args[2];
	return 0;
}

/* sys_enter: remember the call for its exit. */
static __always_inline void sx_save(void *calls, __u64 sk, __u64 nr, __u64 a2, __u64 a3, __u64 a5)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct sx_call c = { .sk = sk, .a = { .nr = nr, .a2 = a2, .a3 = a3, .a5 = a5 } };

	bpf_map_update_elem(calls, &id, &c, BPF_ANY);
}

/* sys_exit: the call saved at its enter (taken out of the map), false when there is none. */
static __always_inline bool sx_take(void *calls, struct sx_call *out)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct sx_call *c = bpf_map_lookup_elem(calls, &id);

	if (!c)
		return false;
	*out = *c;
	bpf_map_delete_elem(calls, &id);
	return true;
}

/* The enter and exit programs of one data syscall, <prefix>_e_<call> and <prefix>_x_<call>: they
 * call the including object's sx_enter(ctx, nr, inbound, flags_arg) and sx_exit(ctx, inbound).
 * flags_arg: which argument holds the flags (MSG_PEEK), 0 for none. */
#define SX_PROGS(prefix, name, inbound, flags_arg)                                                 \
	SEC("tracepoint/syscalls/sys_enter_" #name)                                                \
	int prefix##_e_##name(struct trace_event_raw_sys_enter *ctx)                               \
	{                                                                                          \
		return sx_enter(ctx, NR_##name, inbound, flags_arg);                               \
	}                                                                                          \
	SEC("tracepoint/syscalls/sys_exit_" #name)                                                 \
	int prefix##_x_##name(struct trace_event_raw_sys_exit *ctx)                                \
	{                                                                                          \
		return sx_exit(ctx, inbound);                                                      \
	}

/* The first buffer of an iovec list. */
static __always_inline bool io_desc_first(struct io_desc *d)
{
	struct iovec first;

	if (!d->cnt || bpf_probe_read_user(&first, sizeof(first), (void *)d->iov_ptr))
		return false;
	d->base = (__u64)(unsigned long)first.iov_base;
	d->len = first.iov_len;
	return true;
}

/* The data of a user msghdr; its msg_name (the peer address of sendmsg) in *name. first: read
 * where the first buffer is (base, len), which only a look at the data's start needs. */
static __always_inline bool io_desc_msghdr_at(struct io_desc *d, __u64 uptr, __u64 *name,
					      bool first)
{
	struct user_msghdr m;

	if (bpf_probe_read_user(&m, sizeof(m), (void *)uptr))
		return false;
	d->iov_ptr = (__u64)(unsigned long)m.msg_iov;
	d->cnt = m.msg_iovlen;
	if (name)
		*name = (__u64)(unsigned long)m.msg_name;
	if (!first) {
		d->base = d->len = 0;
		return d->cnt > 0;
	}
	return io_desc_first(d);
}

static __always_inline bool io_desc_msghdr(struct io_desc *d, __u64 uptr, __u64 *name)
{
	return io_desc_msghdr_at(d, uptr, name, true);
}

/* Where a data syscall's bytes are; with first, where its first buffer is too (a streamed
 * connection's copy walks the iovec array itself: one user read fewer). */
static __always_inline bool io_desc_get_at(struct io_desc *d, const struct sys_args *a, bool first)
{
	switch (a->nr) {
	case NR_read:
	case NR_write:
	case NR_recvfrom:
	case NR_sendto:
		d->iov_ptr = 0;
		d->base = a->a2;
		d->len = a->a3;
		d->cnt = 1;
		return true;
	case NR_readv:
	case NR_writev:
		d->iov_ptr = a->a2;
		d->cnt = a->a3;
		break;
	case NR_recvmsg:
	case NR_sendmsg:
		return io_desc_msghdr_at(d, a->a2, 0, first);
	default:
		return false; /* sendfile, splice, io_uring: bytes are counted, not read */
	}
	if (!first) {
		d->base = d->len = 0;
		return d->cnt > 0;
	}
	return io_desc_first(d);
}

static __always_inline bool io_desc_get(struct io_desc *d, const struct sys_args *a)
{
	return io_desc_get_at(d, a, true);
}

#endif

/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The data of a socket syscall, from tp_btf/sock_send_length or sock_recv_length: those give the
 * socket and the byte count; the syscall's own arguments (buffer, iovec, msghdr) come from its
 * saved registers (bpf_task_pt_regs). Shared by the collectors that read socket payloads. */
#ifndef PODSCOPE_SOCKIO_BPF_H
#define PODSCOPE_SOCKIO_BPF_H

#define PF_KTHREAD 0x00200000

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

/* Where the syscall's data is: the iovec list (a single buffer is a list of one). */
struct io_desc {
	__u64 iov_ptr; /* user address of the iovec array; 0 for a single buffer */
	__u64 base;    /* first buffer */
	__u64 len;
	__u64 cnt;
};

/* The registers of the current task's syscall; NULL for kernel threads (NFS, iSCSI...: a
 * kernel socket has no user buffer). */
static __always_inline struct pt_regs *syscall_regs(void)
{
	struct task_struct *t = bpf_get_current_task_btf();

	if (t->flags & PF_KTHREAD)
		return 0;
	return (struct pt_regs *)bpf_task_pt_regs(t);
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

/* The data of a user msghdr; its msg_name (the peer address of sendmsg) in *name. */
static __always_inline bool io_desc_msghdr(struct io_desc *d, __u64 uptr, __u64 *name)
{
	struct user_msghdr m;

	if (bpf_probe_read_user(&m, sizeof(m), (void *)uptr))
		return false;
	d->iov_ptr = (__u64)(unsigned long)m.msg_iov;
	d->cnt = m.msg_iovlen;
	if (name)
		*name = (__u64)(unsigned long)m.msg_name;
	return io_desc_first(d);
}

static __always_inline bool io_desc_get(struct io_desc *d)
{
	struct pt_regs *r = syscall_regs();
	long nr;

	if (!r)
		return false;
	nr = SYSCALL_NR(r);
	switch (nr) {
	case NR_read:
	case NR_write:
	case NR_recvfrom:
	case NR_sendto:
		d->iov_ptr = 0;
		d->base = SYSCALL_ARG2(r);
		d->len = SYSCALL_ARG3(r);
		d->cnt = 1;
		return true;
	case NR_readv:
	case NR_writev:
		d->iov_ptr = SYSCALL_ARG2(r);
		d->cnt = SYSCALL_ARG3(r);
		break;
	case NR_recvmsg:
	case NR_sendmsg:
		return io_desc_msghdr(d, SYSCALL_ARG2(r), 0);
	default:
		return false; /* sendfile, splice, io_uring: bytes are counted, not read */
	}
	return io_desc_first(d);
}

#endif

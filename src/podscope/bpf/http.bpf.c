// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* HTTP/1.x requests from socket syscalls, paired and timed in the kernel.
 *
 * Hooks (include/sockio.bpf.h): the socket tracepoints where the kernel has them (v6.3: only
 * socket I/O pays, no syscall-tracing slow path), else the syscall tracepoints of read, write,
 * readv, writev, recvfrom, sendto, recvmsg and sendmsg, whose exits hand the call to one worker
 * program (a tail call: the verifier checks the parser once, not once per syscall).
 *
 * Cost model, per data syscall on a TCP socket: one hash lookup. For a connection that carries
 * HTTP/1.x: an 8-byte read of the buffer to see whether a message starts; at a request head the
 * method and path (<= 64 bytes); at a response head the head itself (<= 512 bytes) to find the
 * status and the body's framing. A completed request adds to an in-kernel histogram. Nothing
 * goes to user space per request unless records are asked for. Connections the kernel cannot
 * follow (pipelining, header capture) are streamed to user space, which parses them fully.
 *
 * Kernels (one object for all, v5.10 up): the parser's steps are global functions that take
 * only scalars (pointer arguments to global functions need v5.12) and find their state in the
 * per-CPU scratch map and the connection map; loops are bounded loops around such calls (no
 * bpf_loop, v5.17); no atomic fetch or exchange (v5.12); per-thread state goes through
 * task_store.bpf.h (task storage, v5.11, or a hash). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "maps.bpf.h"
#include "core_fixes.bpf.h"
#include "sockio.bpf.h"
#include "task_store.bpf.h"
#include "http.h"
#include "tls.bpf.h"
#include "db.bpf.h"

#define AF_INET6    10
#define IPPROTO_TCP 6

#define HTTP_MAX_CONNS 32768
#define HTTP_MAX_AGG   16384
#define HEAD_MASK      (2 * HTTP_HEAD_MAX - 1)
#define HTTP_EMPTY_MAX 16 /* CR and LF bytes skipped before a message (RFC 9112 section 2.2) */
#define HTTP_REQ_MIN   16 /* "X / HTTP/1.1" CRLF CRLF: the shortest request */

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Settings, written by user space between open and load. */
const volatile bool emit_records = false; /* one ring-buffer record per request */
const volatile bool stream_all = false;	  /* stream every HTTP connection (header capture) */
const volatile __u32 max_tries = 16;	  /* data syscalls without an HTTP head before giving up */
const volatile bool detect_db = true;	  /* database and cache protocols (db.bpf.h) */
const volatile bool has_prev_state = true;   /* sched_switch's prev_state argument (v5.18) */
const volatile bool has_task_pt_regs = true; /* bpf_task_pt_regs (v5.15): why a thread blocked */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HTTP_C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} http_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, HTTP_MAX_CONNS);
	__type(key, __u64);
	__type(value, struct http_conn);
} http_conns SEC(".maps");

/* Two aggregate maps: the kernel adds to the one http_cfg[0] names, user space drains the other. */
#define DEFINE_AGG_MAP(name)                                                                       \
	struct {                                                                                   \
		__uint(type, BPF_MAP_TYPE_PERCPU_HASH);                                             \
		__uint(map_flags, BPF_F_NO_PREALLOC); /* memory grows with use, not with CPUs */    \
		__uint(max_entries, HTTP_MAX_AGG);                                                  \
		__type(key, struct http_agg_key);                                                   \
		__type(value, struct http_agg);                                                     \
	} name SEC(".maps")
DEFINE_AGG_MAP(http_agg0);
DEFINE_AGG_MAP(http_agg1);

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, HTTP_MAX_AGG);
	__type(key, __u64);
	__type(value, struct http_path);
} http_paths SEC(".maps");

/* Written by user space: [0] the aggregate map in use, [1] 1 while the off-CPU probe
 * (http_offcpu) is attached (blocked time by reason), [2] 1 while the reclaim probe (http_rcl_*)
 * is. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u32);
} http_cfg SEC(".maps");

static __always_inline bool reasons_on(void)
{
	__u32 one = 1, *on = bpf_map_lookup_elem(&http_cfg, &one);

	return on && *on;
}

static __always_inline bool reclaim_on(void)
{
	__u32 two = 2, *on = bpf_map_lookup_elem(&http_cfg, &two);

	return on && *on;
}

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RINGBUF_SZ);
} http_records SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * EVENTS_RINGBUF_SZ);
} http_stream SEC(".maps");

/* Records only: the server request each thread is handling, by thread id (struct http_serving). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384); /* 1 when records are off (user space) */
	__type(key, __u32);
	__type(value, struct http_serving);
} http_serving SEC(".maps");

/* Syscall hooks: the socket calls in flight, per thread (sys_enter -> sys_exit). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SX_CALLS_MAX);
	__type(key, __u64);
	__type(value, struct sx_call);
} http_calls SEC(".maps");

/* Syscall hooks: slot 0 holds the worker (http_x_work), filled by user space after load. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} http_work SEC(".maps");

/* Head scanning state (one syscall's head at a time, per CPU). */
struct scan_ctx {
	__u32 n;	/* bytes copied to s->head */
	__u32 head_len; /* offset after the empty line, 0 if not within n */
	__u64 clen;	/* Content-Length value */
	__u32 from;	/* where the start line begins (after empty lines, RFC 9112 section 2.2) */
	__u32 eol1;	/* offset after the start line's '\n', 0 if not within n */
	__u32 te_at;	/* a Transfer-Encoding value begins here; its line's end is pending */
	__u32 tp_at;	/* a traceparent value begins here (records only) */
	__u8 has_clen;
	__u8 has_te;
	__u8 chunked; /* the last coding of the last Transfer-Encoding line is chunked */
	__u8 want_fields; /* look for Content-Length and Transfer-Encoding */
	__u8 bad; /* framing the kernel does not follow (repeated or odd values): user space parses */
	__u8 _pad[7];
};

#define HTTP_IOV_BATCH 8 /* iovec entries read at once (gRPC, nginx: 2 to 6 per write) */

struct iov_ctx {
	__u64 iov_ptr;
	__u64 cnt;
	__u32 cap;  /* bytes copied so far */
	__u32 left; /* bytes still to copy */
};

/* Per-CPU scratch space: far larger than the 512-byte stack, and where the global functions
 * below find what their callers prepared (tracepoint programs do not preempt each other). */
struct scratch {
	__u8 head[2 * HTTP_HEAD_MAX]; /* twice the size: a masked index plus a small offset stays inside */
	struct scan_ctx cx;
	struct iov_ctx iov;
	struct iovec iovs[HTTP_IOV_BATCH]; /* the first entries of an iovec array, in one read */
	struct sx_call call; /* the syscall's socket and arguments */
	struct io_desc io;   /* where its data is */
	__u64 next_id;	     /* connection ids made on this CPU */
	__s64 ret;	     /* syscall hooks: the syscall's result, for the worker */
	__u8 have;	     /* io is valid */
	__u8 inbound;	     /* syscall hooks: a read, for the worker */
	__u8 link_req;	     /* records: a request started in this syscall (http_link_request) */
	__u8 serve_req;	     /* records: a streamed server connection's bytes (http_serve_stream) */
	__u8 _pad[4];
	struct http_agg agg;
	struct http_path path;
	struct http_conn conn;
	struct http_link lk;	     /* a request's traceparent, parsed */
	struct http_h2_hint hint;    /* Go's HTTP/2 header blocks */
	__u64 hf_ptr;		     /* the []hpack.HeaderField being read */
	__u64 hf_len;
	struct http_stream_event ev; /* followed by data: one contiguous ring-buffer record */
	__u8 data[2 * HTTP_CHUNK_MAX];
};

/* Two per CPU: slot 0 for the data hooks (process context), slot 1 for http_close, which may
 * run in a softirq that interrupted a data hook on the same CPU. */
#define SLOT_TASK    0
#define SLOT_SOFTIRQ 1

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct scratch);
} http_scratch SEC(".maps");

/* So that the record types are in the object's BTF for user space. */
const struct http_record *unused_record __attribute__((unused));
const struct http_stream_event *unused_stream_event __attribute__((unused));
const enum http_counter *unused_counter __attribute__((unused));
const enum http_link_flags *unused_link_flags __attribute__((unused));
const enum http_block_reason *unused_block_reason __attribute__((unused));
const enum http_method *unused_method __attribute__((unused));
const enum http_stream_kind *unused_stream_kind __attribute__((unused));
const enum http_phase *unused_phase __attribute__((unused));
const enum http_mode *unused_mode __attribute__((unused));
const enum http_proto *unused_proto __attribute__((unused));
const struct http_proc_event *unused_proc_event __attribute__((unused));
const struct tls_call *unused_tls_call __attribute__((unused));
const struct http_h2_hint *unused_h2_hint __attribute__((unused));

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&http_counters, &which);

	if (v)
		*v += 1;
}

static __always_inline struct scratch *scratch_at(__u32 slot)
{
	return bpf_map_lookup_elem(&http_scratch, &slot);
}

static __always_inline struct scratch *scratch(void)
{
	return scratch_at(SLOT_TASK);
}

/* A socket's address as a plain number (a map key): global functions take scalars only, and a
 * value loaded from a map is one. */
static __always_inline __u64 sk_key(struct scratch *s, const void *sk)
{
	s->call.sk = (__u64)(unsigned long)sk;
	return *(volatile __u64 *)&s->call.sk;
}

static __always_inline struct http_conn *conn_get(__u64 key)
{
	return bpf_map_lookup_elem(&http_conns, &key);
}

/* The first 8 bytes of the data as a little-endian word, 0 when unreadable. A first buffer shorter
 * than that (memcaslap writes "set " alone, then the key) is completed from the second one. */
static __always_inline __u64 peek8(const struct io_desc *d, int ret)
{
	struct iovec v[2];
	__u64 w = 0, w1 = 0, n0;

	if (ret < 8)
		return 0;
	if (d->len >= 8) {
		bpf_probe_read_user(&w, sizeof(w), (void *)d->base);
		return w;
	}
	n0 = d->len;
	if (!d->iov_ptr || d->cnt < 2 || !n0 || n0 > 7 ||
	    bpf_probe_read_user(v, sizeof(v), (void *)d->iov_ptr) || v[1].iov_len < 8 - n0 ||
	    bpf_probe_read_user(&w, clamp_len(n0, 7), (void *)d->base) ||
	    bpf_probe_read_user(&w1, sizeof(w1), v[1].iov_base))
		return 0;
	return w | w1 << ((n0 & 7) * 8);
}

/* The first bytes as a word for is_tls_record: OpenSSL reads a record's 5-byte header alone. */
static __always_inline __u64 peek_record(const struct io_desc *d, int ret, __u64 w)
{
	if (w || ret < 5 || d->len < 5)
		return w;
	bpf_probe_read_user(&w, 5, (void *)d->base);
	return w;
}

#define W4(a, b, c, d)                                                                             \
	((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24)
#define W8(a, b, c, d, e, f, g, h) (W4(a, b, c, d) | W4(e, f, g, h) << 32)
#define M4 0xffffffffULL
#define M5 0xffffffffffULL
#define M6 0xffffffffffffULL
#define M7 0xffffffffffffffULL
#define M8 0xffffffffffffffffULL

/* enum http_method of a request head, with the offset of the target; 0xff: not a request. */
static __always_inline __u8 method_of(__u64 w, __u32 *target)
{
	if ((w & M4) == W4('G', 'E', 'T', ' ')) {
		*target = 4;
		return HTTP_M_GET;
	}
	if ((w & M5) == W8('P', 'O', 'S', 'T', ' ', 0, 0, 0)) {
		*target = 5;
		return HTTP_M_POST;
	}
	if ((w & M4) == W4('P', 'U', 'T', ' ')) {
		*target = 4;
		return HTTP_M_PUT;
	}
	if ((w & M5) == W8('H', 'E', 'A', 'D', ' ', 0, 0, 0)) {
		*target = 5;
		return HTTP_M_HEAD;
	}
	if ((w & M7) == W8('D', 'E', 'L', 'E', 'T', 'E', ' ', 0)) {
		*target = 7;
		return HTTP_M_DELETE;
	}
	if ((w & M6) == W8('P', 'A', 'T', 'C', 'H', ' ', 0, 0)) {
		*target = 6;
		return HTTP_M_PATCH;
	}
	if (w == W8('O', 'P', 'T', 'I', 'O', 'N', 'S', ' ')) {
		*target = 8;
		return HTTP_M_OPTIONS;
	}
	if (w == W8('C', 'O', 'N', 'N', 'E', 'C', 'T', ' ')) {
		*target = 8;
		return HTTP_M_CONNECT;
	}
	if ((w & M6) == W8('T', 'R', 'A', 'C', 'E', ' ', 0, 0)) {
		*target = 6;
		return HTTP_M_TRACE;
	}
	return 0xff;
}

static __always_inline bool is_response(__u64 w)
{
	return (w & M7) == W8('H', 'T', 'T', 'P', '/', '1', '.', 0);
}

/* The start of the HTTP/2 client preface, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n". */
static __always_inline bool is_h2_preface(__u64 w)
{
	return w == W8('P', 'R', 'I', ' ', '*', ' ', 'H', 'T');
}

/* A plausible HTTP/2 frame header (RFC 9113 section 4.1, 6): known type, flags of that type,
 * the stream rules of that type, a length within the default maximum. */
static __always_inline bool h2_frame_ok(const __u8 *h)
{
	__u32 len = (__u32)h[0] << 16 | (__u32)h[1] << 8 | h[2];
	__u32 sid = (__u32)h[5] << 24 | (__u32)h[6] << 16 | (__u32)h[7] << 8 | h[8];
	__u8 flags = h[4];

	if (len > 16384 || (sid & 0x80000000))
		return false;
	switch (h[3]) {
	case 0: /* DATA */
		return sid && !(flags & ~0x09);
	case 1: /* HEADERS */
		return sid && len && !(flags & ~0x2d);
	case 3: /* RST_STREAM */
		return sid && len == 4 && !flags;
	case 4: /* SETTINGS */
		return !sid && len % 6 == 0 && !(flags & ~0x01);
	case 6: /* PING */
		return !sid && len == 8 && !(flags & ~0x01);
	case 7: /* GOAWAY */
		return !sid && len >= 8 && !flags;
	case 8: /* WINDOW_UPDATE */
		return len == 4 && !flags;
	}
	return false;
}

/* HTTP/2 frames on a connection whose start podscope did not see: the syscall's data must
 * start with a plausible frame, and hold a second plausible one right after it if it is longer. */
static __always_inline bool looks_like_h2_midway(const struct io_desc *d, int ret)
{
	__u8 h[16] = {};
	__u32 len;

	if (ret < 9 || d->len < 9 || bpf_probe_read_user(h, 9, (void *)d->base) || !h2_frame_ok(h))
		return false;
	len = 9 + ((__u32)h[0] << 16 | (__u32)h[1] << 8 | h[2]);
	if ((__u32)ret < len)
		return false; /* a write holds whole frames; a read may not: wait for a better one */
	if ((__u32)ret >= len + 9 && d->len >= len + 9) {
		if (bpf_probe_read_user(h, 9, (void *)(d->base + len)) || !h2_frame_ok(h))
			return false;
	}
	return true;
}

/* ---- head scanning: 8 bytes per step, a closer look only at line starts ---- */

static __always_inline __u64 load8(const struct scratch *s, __u32 off)
{
	return *(const __u64 *)&s->head[off & HEAD_MASK];
}

#define LOWER8 0x2020202020202020ULL

/* Content-Length's value at p (after the name): optional spaces, up to 19 digits, optional
 * spaces, the line's end. Anything else (a list, a sign, a second line with another value: RFC
 * 9112 section 6.3) is left to user space, which parses the message whole. */
static __always_inline void parse_clen(const struct scratch *s, __u32 p, struct scan_ctx *cx)
{
	__u64 v = 0;
	__u8 ch = 0;
	int d;

	if (s->head[p & HEAD_MASK] == ' ' || s->head[p & HEAD_MASK] == '\t')
		p++;
	for (d = 0; d < 19; d++) {
		ch = s->head[(p + d) & HEAD_MASK];
		if (ch < '0' || ch > '9')
			break;
		v = v * 10 + (ch - '0');
	}
	if (ch == ' ' || ch == '\t')
		ch = s->head[(p + d + 1) & HEAD_MASK];
	if (d == 0 || (ch != '\r' && ch != '\n') || (cx->has_clen && cx->clen != v))
		cx->bad = 1;
	cx->clen = v;
	cx->has_clen = 1;
}

static __always_inline bool is_ows(__u8 ch)
{
	return ch == ' ' || ch == '\t';
}

/* The Transfer-Encoding line whose value began at cx->te_at ended with the '\n' at eol: the
 * body is chunked when its last coding is (RFC 9112 section 6.1: "gzip, chunked" is; "chunked"
 * then a line "identity" is not). A global function: verified once, not at every line start. */
__noinline int http_te_end(__u32 eol)
{
	struct scratch *s = scratch();
	struct scan_ctx *cx;
	__u32 e = eol, v;

	if (!s)
		return 0;
	cx = &s->cx;
	v = cx->te_at;

	if (e > v && s->head[(e - 1) & HEAD_MASK] == '\r')
		e--;
	if (e > v && is_ows(s->head[(e - 1) & HEAD_MASK]))
		e--;
	if (e > v && is_ows(s->head[(e - 1) & HEAD_MASK]))
		e--;
	cx->chunked = e >= v + 7 &&
		      ((load8(s, e - 7) | LOWER8) & M7) == W8('c', 'h', 'u', 'n', 'k', 'e', 'd', 0) &&
		      (e == v + 7 || is_ows(s->head[(e - 8) & HEAD_MASK]) ||
		       s->head[(e - 8) & HEAD_MASK] == ',');
	cx->te_at = 0;
	return 0;
}

/* A line starts at p. Returns 1 at the empty line that ends the head. */
static __always_inline int scan_line_at(const struct scratch *s, __u32 p, struct scan_ctx *cx)
{
	__u8 c0;

	c0 = s->head[p & HEAD_MASK];
	if (c0 == '\r' || c0 == '\n') {
		cx->head_len = p + (c0 == '\r' ? 2 : 1);
		return 1;
	}
	if (!cx->want_fields)
		return 0;
	c0 |= 0x20;
	if (c0 == 'c' && (load8(s, p) | LOWER8) == W8('c', 'o', 'n', 't', 'e', 'n', 't', '-') &&
	    ((load8(s, p + 8) | LOWER8) & M7) == W8('l', 'e', 'n', 'g', 't', 'h', ':', 0)) {
		parse_clen(s, p + 15, cx);
	} else if (c0 == 't' &&
		   (load8(s, p) | LOWER8) == W8('t', 'r', 'a', 'n', 's', 'f', 'e', 'r') &&
		   (load8(s, p + 8) | LOWER8) == W8('-', 'e', 'n', 'c', 'o', 'd', 'i', 'n') &&
		   ((load8(s, p + 16) | LOWER8) & 0xffff) == W4('g', ':', 0, 0)) {
		cx->te_at = p + 18; /* its last coding is known at the line's end */
		cx->has_te = 1;
	} else if (emit_records && c0 == 't' &&
		   (load8(s, p) | LOWER8) == W8('t', 'r', 'a', 'c', 'e', 'p', 'a', 'r') &&
		   ((load8(s, p + 8) | LOWER8) & M4) == W4('e', 'n', 't', ':')) {
		cx->tp_at = p + 12; /* W3C Trace Context: parsed once the head is scanned */
	}
	return 0;
}

/* The lines starting in the 8 bytes at off. Returns 1 when the scan is over. */
static __always_inline long scan_word_at(const struct scratch *s, __u32 off, struct scan_ctx *cx)
{
	__u64 v, x, t;

	if (off >= cx->n)
		return 1;
	v = load8(s, off);
	x = v ^ 0x0a0a0a0a0a0a0a0aULL; /* '\n' bytes become 0 */
	t = (x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL;
	/* one step per '\n': the lowest flagged byte's index from a multiply (no ctz in BPF) */
	for (int i = 0; i < 8 && t; i++) {
		__u64 low = t & -t;
		__u32 p = off + (((low >> 7) * 0x0001020304050607ULL) >> 56) + 1;
		__u8 c0;

		t &= t - 1;
		if (s->head[(p - 1) & HEAD_MASK] != '\n') /* a false match above a real one */
			continue;
		if (p <= cx->from) /* empty lines before the start line */
			continue;
		if (!cx->eol1)
			cx->eol1 = p;
		if (cx->te_at)
			http_te_end(p - 1);
		if (p >= cx->n)
			return 1;
		/* most lines cannot matter: only the empty line, Content-*, Transfer-* */
		c0 = s->head[p & HEAD_MASK];
		if ((c0 == '\r' || c0 == '\n' || (cx->want_fields && ((c0 | 0x20) == 'c' ||
							       (c0 | 0x20) == 't'))) &&
		    scan_line_at(s, p, cx))
			return 1;
	}
	return 0;
}

/* 32 bytes of the head in s->head, with the scan state in s->cx. Returns 1 when the scan is
 * over. A global function: verified once, whatever the head's length. */
__noinline int http_scan_block(__u32 b)
{
	struct scratch *s = scratch();
	__u32 off = (b & 31) * 32;

	if (!s)
		return 1;
	return scan_word_at(s, off, &s->cx) || scan_word_at(s, off + 8, &s->cx) ||
	       scan_word_at(s, off + 16, &s->cx) || scan_word_at(s, off + 24, &s->cx);
}

/* Find the end of the head (and, for responses, the body's framing) in s->head[0..n). */
static __always_inline void scan_words(void)
{
	for (__u32 b = 0; b < HTTP_HEAD_MAX / 32; b++)
		if (http_scan_block(b))
			break;
}

/* s->cx.from: past the CR and LF bytes before the message. A global function: verified once. */
__noinline int http_skip_empty(__u32 slot)
{
	struct scratch *s = scratch_at(slot);
	__u32 i;

	if (!s)
		return 0;
	for (i = 0; i < HTTP_EMPTY_MAX; i++) {
		__u8 ch = s->head[i];

		if (ch != '\r' && ch != '\n')
			break;
	}
	s->cx.from = i;
	return 0;
}

/* Copy up to HTTP_HEAD_MAX bytes of the syscall's first buffer into s->head. */
static __always_inline int fetch_head(struct scratch *s, const struct io_desc *d, int ret,
				      bool want_fields)
{
	__u64 n = ret > 0 ? ret : 0;

	if (n > d->len)
		n = d->len;
	if (n > HTTP_HEAD_MAX)
		n = HTTP_HEAD_MAX;
	n = clamp_len(n, HTTP_HEAD_MAX);
	if (n < 8 || bpf_probe_read_user(s->head, n, (void *)d->base)) {
		if (n >= 8)
			count(HTTP_C_UNREADABLE);
		return -1;
	}
	/* zeros after the data: a line cut at n never matches */
	*(__u64 *)&s->head[n & HEAD_MASK] = 0;
	*(__u64 *)&s->head[(n + 8) & HEAD_MASK] = 0;
	*(__u64 *)&s->head[(n + 16) & HEAD_MASK] = 0;
	s->cx.n = n;
	s->cx.head_len = 0;
	s->cx.clen = 0;
	s->cx.eol1 = 0;
	s->cx.te_at = 0;
	s->cx.tp_at = 0;
	s->cx.has_clen = 0;
	s->cx.has_te = 0;
	s->cx.chunked = 0;
	s->cx.bad = 0;
	s->cx.want_fields = want_fields;
	/* empty lines before a message are ignored (RFC 9112 section 2.2): a stray CRLF after a
	 * body, a 304 or a 100 Continue */
	s->cx.from = 0;
	http_skip_empty(SLOT_TASK);
	return 0;
}

static __always_inline bool is_tchar(__u8 ch)
{
	/* RFC 9110 section 5.6.2, as two bitmaps of the ASCII range: few branches to verify */
	__u64 m = ch < 64 ? 0x03ff6cfa00000000ULL : ch < 128 ? 0x57ffffffc7fffffeULL : 0;

	return (m >> (ch & 63)) & 1;
}

/* Could a request start in these 8 bytes, other than with one of the nine known methods? Empty
 * lines first, or a method podscope does not know (REPORT, PURGE, M-SEARCH, PROPFIND, QUERY). */
static __always_inline bool maybe_request(__u64 w)
{
	__u8 c0 = w & 0xff, c1 = (w >> 8) & 0xff;

	return c0 == '\r' || c0 == '\n' || (is_tchar(c0) && (is_tchar(c1) || c1 == ' '));
}

/* After fetch_head and scan_words: the request line at s->cx.from, as (method << 16) | the
 * target's offset, or -1. A method outside the nine is HTTP_M_OTHER: any token (RFC 9110
 * section 9.1), when the line ends in " HTTP/1.x" (so that "SET k v" of another protocol is
 * not taken for one). A global function: verified once. */
__noinline int http_req_line(__u32 slot)
{
	struct scratch *s = scratch_at(slot);
	__u32 from, target = 0, i, e;
	__u8 m;

	if (!s)
		return -1;
	from = s->cx.from & (2 * HTTP_EMPTY_MAX - 1);
	m = method_of(load8(s, from), &target);
	if (m != 0xff)
		return (int)((__u32)m << 16 | (from + target));
	for (i = 0; i < 25; i++) {
		__u8 ch = s->head[(from + i) & HEAD_MASK];

		if (ch == ' ')
			break;
		if (!is_tchar(ch))
			return -1;
	}
	if (i == 0 || i > 24)
		return -1;
	e = s->cx.eol1; /* after the '\n' */
	if (e < from + i + 11)
		return -1;
	e--;
	if (s->head[(e - 1) & HEAD_MASK] == '\r')
		e--;
	if (((load8(s, e - 8) & M7) != W8('H', 'T', 'T', 'P', '/', '1', '.', 0)) ||
	    s->head[(e - 9) & HEAD_MASK] != ' ' || s->head[(e - 1) & HEAD_MASK] < '0' ||
	    s->head[(e - 1) & HEAD_MASK] > '9')
		return -1;
	return (int)((__u32)HTTP_M_OTHER << 16 | (from + i + 1));
}

/* ---- connections ---- */

/* btf: sk is a BTF pointer (socket tracepoints: direct loads); otherwise an address found through
 * the fd table (syscall tracepoints), read with probe reads. A constant at every call site. */
static __always_inline void conn_init(struct http_conn *c, struct scratch *s, const struct sock *sk,
				      __u8 role, bool btf)
{
	c->pod.cgroup_id = bpf_get_current_cgroup_id(); /* the process doing the I/O */
	c->role = role;
	c->id = (1ULL << 63) | ((__u64)bpf_get_smp_processor_id() << 40) |
		(s->next_id++ & 0xffffffffffULL);
	if (btf) {
		c->pod.netns = skc_netns(&sk->__sk_common);
		c->family = sk->__sk_common.skc_family;
		c->local_port = sk->__sk_common.skc_num;
		c->peer_port = bpf_ntohs(sk->__sk_common.skc_dport);
	} else {
		c->pod.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
		c->family = BPF_CORE_READ(sk, __sk_common.skc_family);
		c->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
		c->peer_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	}
	if (c->family == AF_INET6)
		BPF_CORE_READ_INTO(&c->peer_addr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	else
		BPF_CORE_READ_INTO(&c->peer_addr, sk, __sk_common.skc_daddr);
}

/* ---- where a server request's time went (on CPU, run queue, blocked) ----
 * The handling thread's own scheduler counters, read at the request head and at the first
 * response byte: no scheduler hook. Blocked time by reason needs one (http_offcpu, a deep
 * probe that is attached only when asked for, as it costs every context switch). */

/* per thread (task storage, or a hash by thread id before v5.11: see task_store.bpf.h) */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct http_thread);
} http_threads SEC(".maps");

static const struct http_thread zero_thread;

static __always_inline void breakdown_start(struct http_conn *c)
{
	struct task_struct *t = current_task();
	struct http_thread *th = 0;

	c->bd_state = HTTP_BD_TOTALS;
	c->bd_tid = (__u32)bpf_get_current_pid_tgid();
	c->bd_ran = BPF_CORE_READ(t, se.sum_exec_runtime);
	c->bd_waited = BPF_CORE_READ(t, sched_info.run_delay);
	c->bd_majflt = BPF_CORE_READ(t, maj_flt);
	c->bd_rcl_on = reclaim_on();
	if (reasons_on())
		th = current_store_get(&http_threads, true, &zero_thread);
	else if (c->bd_rcl_on) /* made by the reclaim probe when the thread first reclaims */
		th = current_store_get(&http_threads, false, 0);
	c->bd_reclaim = th ? th->reclaim_ns : 0;
	if (th && reasons_on()) {
		__builtin_memcpy(c->bd_blocked, th->blocked_ns, sizeof(c->bd_blocked));
		c->bd_state = HTTP_BD_REASONS;
	}
}

static __always_inline void breakdown_end(struct http_conn *c, __u64 now)
{
	struct task_struct *t = current_task();
	struct http_thread *th = 0;
	__u64 wall, busy;

	if (c->bd_state == HTTP_BD_NONE || (__u32)bpf_get_current_pid_tgid() != c->bd_tid) {
		c->bd_state = HTTP_BD_NONE; /* another thread answers: its history is not this one's */
		return;
	}
	wall = now > c->req_start ? now - c->req_start : 0;
	c->bd.on_cpu_ns = BPF_CORE_READ(t, se.sum_exec_runtime) - c->bd_ran;
	c->bd.runqueue_ns = BPF_CORE_READ(t, sched_info.run_delay) - c->bd_waited;
	busy = c->bd.on_cpu_ns + c->bd.runqueue_ns;
	c->bd.blocked_ns = wall > busy ? wall - busy : 0;
	c->bd.major_faults = BPF_CORE_READ(t, maj_flt) - c->bd_majflt;
	if ((c->bd_state == HTTP_BD_REASONS && reasons_on()) || c->bd_rcl_on)
		th = current_store_get(&http_threads, false, 0);
	c->bd_rcl_on = c->bd_rcl_on && reclaim_on();
	c->bd.reclaim_ns = th && c->bd_rcl_on ? th->reclaim_ns - c->bd_reclaim : 0;
	if (!th || c->bd_state != HTTP_BD_REASONS || !reasons_on()) {
		__builtin_memset(c->bd.by_reason_ns, 0, sizeof(c->bd.by_reason_ns));
		if (c->bd_state == HTTP_BD_REASONS)
			c->bd_state = HTTP_BD_TOTALS;
		return;
	}
#pragma unroll
	for (int i = 0; i < HTTP_BLOCK_REASONS; i++)
		c->bd.by_reason_ns[i] = th->blocked_ns[i] - c->bd_blocked[i];
}

/* ---- links between requests (records only) ---- */

/* The server request whose head this thread read is answered (or will not be): it no longer
 * counts as open for the thread. */
static __always_inline void serving_done(struct http_conn *c)
{
	struct http_serving *e;
	__u32 tid = c->serve_tid;

	if (!c->serving)
		return;
	c->serving = 0;
	e = bpf_map_lookup_elem(&http_serving, &tid);
	if (e && e->open > 0)
		e->open--;
}

static __always_inline int hexval(__u8 ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	return -1; /* upper case is not valid in a traceparent */
}

/* n bytes of hex digits at the head's offset `at` into out. */
static __always_inline bool hex_bytes(const struct scratch *s, __u32 at, __u8 *out, int n)
{
	for (int i = 0; i < n; i++) {
		int hi = hexval(s->head[(at + 2 * i) & HEAD_MASK]);
		int lo = hexval(s->head[(at + 2 * i + 1) & HEAD_MASK]);

		if (hi < 0 || lo < 0)
			return false;
		out[i] = hi << 4 | lo;
	}
	return true;
}

/* The traceparent value at s->cx.tp_at into s->lk (W3C Trace Context level 1, section 3.2:
 * version "-" trace-id "-" parent-id "-" flags; all-zero ids and version ff are invalid, a
 * version-00 value ends after its flags). Returns 1 when valid. A global function: verified
 * once. */
__noinline int http_traceparent(__u32 slot)
{
	struct scratch *s = scratch_at(slot);
	__u8 ver, fl, end;
	__u64 any = 0;
	__u32 at;

	if (!s)
		return 0;
	at = s->cx.tp_at;
	if (is_ows(s->head[at & HEAD_MASK]))
		at++;
	if (at + 55 > s->cx.n || at > HTTP_HEAD_MAX)
		return 0;
	if (!hex_bytes(s, at, &ver, 1) || ver == 0xff || s->head[(at + 2) & HEAD_MASK] != '-' ||
	    s->head[(at + 35) & HEAD_MASK] != '-' || s->head[(at + 52) & HEAD_MASK] != '-' ||
	    !hex_bytes(s, at + 53, &fl, 1) || !hex_bytes(s, at + 3, s->lk.tp_trace, 16) ||
	    !hex_bytes(s, at + 36, s->lk.tp_span, 8))
		return 0;
	end = s->head[(at + 55) & HEAD_MASK];
	if (ver == 0 && end != '\r' && end != '\n' && !is_ows(end))
		return 0;
	for (int i = 0; i < 16; i += 8)
		any |= *(__u64 *)&s->lk.tp_trace[i];
	if (!any || !*(__u64 *)s->lk.tp_span)
		return 0;
	s->lk.tp_sampled = fl & 1;
	return 1;
}

/* The server request this thread is handling, into *out, when it is the only one open
 * (several at once: an event loop, whose calls cannot be told apart). */
static __always_inline void serving_parent(struct http_link *out)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct http_serving *e = bpf_map_lookup_elem(&http_serving, &tid);
	struct http_conn *pc;

	out->flags = 0;
	if (!e || e->open != 1)
		return;
	pc = conn_get(e->sk);
	if (pc && pc->serving && pc->serve_tid == tid && pc->req_start == e->req_start)
		*out = e->link;
}

static const struct http_serving zero_serving;

/* This thread read the head of a server request on connection c: it is the thread's current
 * one, and counts as open until its response starts (serving_done). */
static __always_inline void serving_start(struct http_conn *c, __u64 key)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct http_serving *e = bpf_map_lookup_elem(&http_serving, &tid);

	if (c->serving && c->serve_tid != tid)
		serving_done(c); /* another thread reads the next request (a pipelined one) */
	if (!e) {
		bpf_map_update_elem(&http_serving, &tid, &zero_serving, BPF_NOEXIST);
		e = bpf_map_lookup_elem(&http_serving, &tid);
		if (!e)
			return;
	}
	e->link = c->link;
	e->sk = key;
	e->req_start = c->req_start;
	if (!c->serving)
		e->open++;
	c->serve_tid = tid;
	c->serving = 1;
}

/* The socket's local address and port into l. */
static __always_inline void link_local(struct http_link *l, const struct http_conn *c,
				       const struct tcp_sock *tp)
{
	l->family = c->family;
	l->client_port = c->local_port;
	if (c->family == AF_INET6)
		BPF_CORE_READ_INTO(&l->client_addr, &tp->inet_conn.icsk_inet.sk,
				   __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
	else
		BPF_CORE_READ_INTO(&l->client_addr, &tp->inet_conn.icsk_inet.sk,
				   __sk_common.skc_rcv_saddr);
}

/* The connection's client address and port into l (the client's own socket: its local ones). */
static __always_inline void link_client(struct http_link *l, const struct http_conn *c,
					const struct tcp_sock *tp)
{
	if (c->role != HTTP_ROLE_SERVER) {
		link_local(l, c, tp);
		return;
	}
	l->family = c->family;
	__builtin_memcpy(l->client_addr, c->peer_addr, sizeof(l->client_addr));
	l->client_port = c->peer_port;
}

/* The request that just started on connection `key` (its head is in s->head; ret bytes were
 * moved, inbound: read): where it sits in the TCP stream, the traceparent it carries; a server
 * request becomes its thread's current one, a client request takes the thread's current one as
 * its parent when that is the only one open. A global function: verified once. */
__noinline int http_link_request(__u64 key, __s32 ret, __u32 inbound)
{
	struct http_conn *c = conn_get(key);
	struct scratch *s = scratch();
	struct tcp_sock *tp = (struct tcp_sock *)key;
	__u32 seq;
	bool tp_ok;

	if (!c || !s)
		return 0;
	/* after the syscall: copied_seq (read) or write_seq (written) is past its bytes */
	seq = inbound ? BPF_CORE_READ(tp, copied_seq) : BPF_CORE_READ(tp, write_seq);
	seq = seq - (__u32)ret + (s->cx.from & (2 * HTTP_EMPTY_MAX - 1));
	tp_ok = s->cx.tp_at && http_traceparent(SLOT_TASK);
	link_client(&c->link, c, tp);
	c->link.seq = seq;
	c->link.flags = HTTP_LINK_SEQ | (tp_ok ? HTTP_LINK_TP : 0);
	if (tp_ok) {
		__builtin_memcpy(c->link.tp_trace, s->lk.tp_trace, sizeof(c->link.tp_trace));
		__builtin_memcpy(c->link.tp_span, s->lk.tp_span, sizeof(c->link.tp_span));
		c->link.tp_sampled = s->lk.tp_sampled;
	}
	if (c->role == HTTP_ROLE_SERVER)
		serving_start(c, key);
	else
		serving_parent(&c->parent);
	return 0;
}

/* A streamed HTTP/1 server connection (header capture, pipelining): a request head read makes
 * it the thread's current request, a response head written ends that (records only). User
 * space parses the request; here the first bytes of the syscall (s->io) decide. */
__noinline int http_serve_stream(__u64 key, __s32 ret, __u32 inbound)
{
	struct http_conn *c = conn_get(key);
	struct scratch *s = scratch();
	struct tcp_sock *tp = (struct tcp_sock *)key;
	__u32 target;
	__u64 w;

	if (!c || !s || !s->have)
		return 0;
	w = peek8(&s->io, ret);
	if (!inbound) {
		if (is_response(w))
			serving_done(c);
		return 0;
	}
	if (method_of(w, &target) == 0xff)
		return 0;
	link_client(&c->link, c, tp);
	c->link.seq = BPF_CORE_READ(tp, copied_seq) - (__u32)ret;
	c->link.flags = HTTP_LINK_SEQ; /* a traceparent is user space's to read */
	c->req_start = bpf_ktime_get_ns();
	serving_start(c, key);
	return 0;
}

static __always_inline void conn_reset_exchange(struct http_conn *c)
{
	serving_done(c);
	c->bd_state = HTTP_BD_NONE;
	c->phase = HTTP_PHASE_IDLE;
	c->req_start = 0;
	c->resp_start = 0;
	c->req_bytes = 0;
	c->req_expect = 0;
	c->resp_bytes = 0;
	c->resp_expect = 0;
	c->status = 0;
	c->framing = HTTP_FRAMING_UNKNOWN;
}

/* Method and target: target bytes go to c->path (query included, for records); the hash covers
 * the path only (up to '?'), which is what routes are made of. */
static __always_inline void read_target(struct http_conn *c, const struct scratch *s, __u32 off)
{
	__u64 h = 14695981039346656037ULL; /* FNV-1a */
	__u32 i, plen = 0, n = s->cx.n;
	bool in_path = true;

#pragma unroll
	for (i = 0; i < HTTP_PATH_MAX / 8; i++)
		*(__u64 *)&c->path[i * 8] = load8(s, off + i * 8);
	for (i = 0; i < HTTP_PATH_MAX; i++) {
		__u8 ch;

		if (off + i >= n)
			break;
		ch = c->path[i];
		if (ch == ' ' || ch == '\r' || ch == '\n')
			break;
		if (ch == '?' || ch == '#')
			in_path = false;
		if (in_path) {
			h = (h ^ ch) * 1099511628211ULL;
			plen = i + 1;
		}
	}
	c->path_len = i;
	c->path_hash = h ^ plen;
}

static __always_inline void *agg_map(void)
{
	__u32 zero = 0, *slot = bpf_map_lookup_elem(&http_cfg, &zero);

	return (slot && *slot) ? (void *)&http_agg1 : (void *)&http_agg0;
}

/* The current exchange of connection `key` ended at end_ns: add it to the aggregates (and
 * records), start afresh. */
__noinline int http_finish(__u64 key, __u64 end_ns, __u32 slot)
{
	struct http_conn *c = conn_get(key);
	struct http_agg_key k = {};
	struct http_agg *a;
	struct scratch *s;
	void *m = agg_map();
	__u64 dur;

	if (!c)
		return 0;
	dur = end_ns > c->req_start ? end_ns - c->req_start : 0;
	k.pod = c->pod;
	k.path_hash = c->path_hash;
	k.status = c->phase == HTTP_PHASE_RESPONSE ? c->status : 0;
	k.method = c->method;
	k.role = c->role;
	k.family = c->family;
	k.tls = c->tls;
	if (c->role == HTTP_ROLE_CLIENT) {
		__builtin_memcpy(k.peer_addr, c->peer_addr, sizeof(k.peer_addr));
		k.peer_port = c->peer_port;
	}
	a = bpf_map_lookup_elem(m, &k);
	if (!a && (s = scratch_at(slot))) {
		__builtin_memset(&s->agg, 0, sizeof(s->agg));
		bpf_map_update_elem(m, &k, &s->agg, BPF_NOEXIST);
		a = bpf_map_lookup_elem(m, &k);
		if (!a)
			count(HTTP_C_MAP_FULL);
		__builtin_memcpy(s->path.path, c->path, sizeof(s->path.path));
		s->path.len = c->path_len;
		bpf_map_update_elem(&http_paths, &k.path_hash, &s->path, BPF_ANY);
	}
	if (a) { /* this CPU's copy: plain adds */
		a->duration.slots[log2_slot(dur)] += 1;
		a->duration.sum += dur;
		if (k.status && c->resp_start >= c->req_start) {
			__u64 fb = c->resp_start - c->req_start;

			a->first_byte.slots[log2_slot(fb)] += 1;
			a->first_byte.sum += fb;
		}
		a->req_bytes += c->req_bytes;
		a->resp_bytes += c->resp_bytes;
	}
	if (emit_records) {
		struct http_record *r = bpf_ringbuf_reserve(&http_records, sizeof(*r), 0);

		if (r) {
			r->conn_id = c->id;
			r->cgroup_id = c->pod.cgroup_id;
			r->netns = c->pod.netns;
			r->req_start = c->req_start;
			r->resp_start = c->resp_start;
			r->end_ns = end_ns;
			r->req_bytes = c->req_bytes;
			r->resp_bytes = c->resp_bytes;
			r->pid = c->pid;
			r->status = k.status;
			r->path_len = c->path_len;
			r->local_port = c->local_port;
			r->peer_port = c->peer_port;
			r->method = c->method;
			r->role = c->role;
			r->family = c->family;
			r->framing = c->framing;
			r->tls = c->tls;
			r->breakdown = c->phase == HTTP_PHASE_RESPONSE ? c->bd_state : HTTP_BD_NONE;
			r->bd_reclaim = r->breakdown != HTTP_BD_NONE && c->bd_rcl_on;
			__builtin_memcpy(&r->bd, &c->bd, sizeof(r->bd));
			__builtin_memcpy(r->peer_addr, c->peer_addr, sizeof(r->peer_addr));
			__builtin_memcpy(r->path, c->path, sizeof(r->path));
			r->link = c->link;
			r->parent = c->parent;
			bpf_ringbuf_submit(r, 0);
		} else {
			count(HTTP_C_RECORDS_LOST);
		}
	}
	conn_reset_exchange(c);
	return 0;
}

/* ---- streaming (user space parses) ---- */

/* One iovec entry's bytes into s->data, state in s->iov. Returns 1 when done. */
__noinline int http_copy_iov(__u32 i, __u32 slot)
{
	struct scratch *s = scratch_at(slot);
	struct iovec v;
	__u64 take, cap;

	if (!s || i >= s->iov.cnt || !s->iov.left)
		return 1;
	if (bpf_probe_read_user(&v, sizeof(v), (void *)(s->iov.iov_ptr + i * sizeof(v))))
		return 1;
	take = v.iov_len < s->iov.left ? v.iov_len : s->iov.left;
	if (take > HTTP_CHUNK_MAX)
		take = HTTP_CHUNK_MAX;
	cap = s->iov.cap;
	if (bpf_probe_read_user(&s->data[cap & (HTTP_CHUNK_MAX - 1)], clamp_len(take, HTTP_CHUNK_MAX),
				v.iov_base))
		return 1;
	s->iov.cap = cap + take;
	s->iov.left -= take;
	return 0;
}

#define EMIT_INBOUND 1
#define EMIT_HAVE_IO 2 /* s->io describes the syscall's data: copy it */
#define EMIT_SOFTIRQ 4 /* use the softirq scratch slot */
#define EMIT_KIND(k) ((k) << 4)
#define EMIT_SKIP(n) ((n) << 16)

/* One stream event of connection `key`: the syscall's bytes (ret of them) or a close. */
__noinline int http_stream_emit(__u64 key, __s32 ret, __u32 flags)
{
	__u32 slot = flags & EMIT_SOFTIRQ ? SLOT_SOFTIRQ : SLOT_TASK;
	struct http_conn *c = conn_get(key);
	struct scratch *s = scratch_at(slot);
	struct http_stream_event *ev;
	__u8 kind = (flags >> 4) & 0xf;
	__u64 cap = 0, left;
	long err;

	if (!s || !c)
		return 0;
	ev = &s->ev;
	left = ret > 0 ? ret : 0;
	if (left > HTTP_CHUNK_MAX)
		left = HTTP_CHUNK_MAX;
	if ((flags & EMIT_HAVE_IO) && kind == HTTP_S_DATA) {
		if (!s->io.iov_ptr) {
			__u64 take = s->io.len < left ? s->io.len : left;

			if (!bpf_probe_read_user(s->data, clamp_len(take, HTTP_CHUNK_MAX),
						 (void *)s->io.base))
				cap = take;
		} else {
			/* gRPC and friends write many small buffers at once: the first entries
			 * are read in one go, any beyond them one by one */
			__u32 n = s->io.cnt < HTTP_IOV_BATCH ? s->io.cnt : HTTP_IOV_BATCH, i = 0;

			s->iov.iov_ptr = s->io.iov_ptr;
			s->iov.cnt = s->io.cnt;
			s->iov.cap = 0;
			s->iov.left = left;
			if (bpf_probe_read_user(s->iovs, clamp_len(n, HTTP_IOV_BATCH) * sizeof(struct iovec),
						(void *)s->io.iov_ptr))
				n = 0;
			for (; i < HTTP_IOV_BATCH; i++) {
				__u64 take = s->iovs[i].iov_len;

				if (i >= n || !s->iov.left)
					break;
				if (take > s->iov.left)
					take = s->iov.left;
				if (take > HTTP_CHUNK_MAX)
					take = HTTP_CHUNK_MAX;
				if (bpf_probe_read_user(&s->data[s->iov.cap & (HTTP_CHUNK_MAX - 1)],
							clamp_len(take, HTTP_CHUNK_MAX),
							s->iovs[i].iov_base))
					break;
				s->iov.cap += take;
				s->iov.left -= take;
			}
			if (i == n && s->iov.left)
				for (i = n; i < HTTP_IOV_STREAM_MAX; i++)
					if (http_copy_iov(i, slot))
						break;
			cap = s->iov.cap;
		}
	}
	if (cap > HTTP_CHUNK_MAX)
		cap = HTTP_CHUNK_MAX;
	ev->conn_id = c->id;
	ev->cgroup_id = c->pod.cgroup_id;
	ev->ts_ns = bpf_ktime_get_ns();
	ev->netns = c->pod.netns;
	ev->pid = bpf_get_current_pid_tgid() >> 32;
	ev->len = ret > 0 ? ret : 0;
	ev->captured = cap;
	ev->kind = kind;
	ev->inbound = flags & EMIT_INBOUND;
	ev->role = c->role;
	ev->family = c->family;
	ev->local_port = c->local_port;
	ev->peer_port = c->peer_port;
	__builtin_memcpy(ev->peer_addr, c->peer_addr, sizeof(ev->peer_addr));
	ev->method = c->method;
	ev->proto = c->proto;
	ev->sk = c->sk;
	ev->gap = c->stream_gap;
	ev->tls = c->tls;
	ev->skip = flags >> 16;
	ev->link.flags = 0;
	ev->parent.flags = 0;
	if (emit_records && kind == HTTP_S_DATA && !c->tls) {
		struct tcp_sock *tp = (struct tcp_sock *)key;
		__u32 seq = ev->inbound ? BPF_CORE_READ(tp, copied_seq) : BPF_CORE_READ(tp, write_seq);

		link_local(&ev->link, c, tp); /* user space knows the role (mid-way: the kernel not) */
		ev->link.seq = seq - ev->len;
		ev->link.flags = HTTP_LINK_SEQ;
		if (c->role == HTTP_ROLE_CLIENT && !ev->inbound)
			serving_parent(&ev->parent);
	}
	err = bpf_ringbuf_output(&http_stream, ev, sizeof(*ev) + clamp_len(cap, HTTP_CHUNK_MAX), 0);
	if (err) {
		count(HTTP_C_STREAM_LOST);
		c->stream_gap = 1; /* user space resets this connection at its next event */
	} else {
		c->stream_gap = 0;
	}
	return 0;
}

/* Hand a connection to user space from this syscall on. A request still waiting for its response
 * goes first, as a seed: its method and target, its start and its size so far. */
static __always_inline void to_stream(struct http_conn *c, struct scratch *s, int ret, bool inbound,
				      __u32 skip)
{
	c->mode = HTTP_MODE_STREAM;
	c->proto = HTTP_PROTO_1;
	if (c->phase == HTTP_PHASE_REQUEST) {
		__builtin_memcpy(s->data, c->path, HTTP_PATH_MAX);
		s->ev.conn_id = c->id;
		s->ev.cgroup_id = c->pod.cgroup_id;
		s->ev.ts_ns = c->req_start;
		s->ev.netns = c->pod.netns;
		s->ev.pid = c->pid;
		s->ev.len = c->req_bytes;
		s->ev.captured = c->path_len;
		s->ev.kind = HTTP_S_SEED;
		s->ev.inbound = c->role == HTTP_ROLE_SERVER;
		s->ev.role = c->role;
		s->ev.family = c->family;
		s->ev.method = c->method;
		s->ev.proto = HTTP_PROTO_1;
		s->ev.sk = c->sk;
		s->ev.gap = 0;
		s->ev.tls = c->tls;
		s->ev.skip = 0;
		s->ev.local_port = c->local_port;
		s->ev.peer_port = c->peer_port;
		__builtin_memcpy(s->ev.peer_addr, c->peer_addr, sizeof(s->ev.peer_addr));
		s->ev.link = c->link;
		s->ev.parent = c->parent;
		if (bpf_ringbuf_output(&http_stream, &s->ev,
				       sizeof(s->ev) + clamp_len(c->path_len, HTTP_PATH_MAX), 0))
			count(HTTP_C_STREAM_LOST);
	}
	conn_reset_exchange(c);
	count(HTTP_C_STREAMED);
	s->serve_req = emit_records && c->role == HTTP_ROLE_SERVER && !skip; /* on_data calls */
	http_stream_emit(c->sk, ret, (inbound ? EMIT_INBOUND : 0) | (s->have ? EMIT_HAVE_IO : 0) |
					     EMIT_KIND(HTTP_S_DATA) | EMIT_SKIP(skip & 0xffff));
}

/* ---- the in-kernel state machine ---- */

/* A request line (any method, after empty lines) at the start of the syscall's data (s->io)?
 * The head read and scanned; a global function: verified once, however many callers. */
__noinline int http_req_start(__s32 ret)
{
	struct scratch *s = scratch();

	if (!s || !s->have || fetch_head(s, &s->io, ret, true))
		return 0;
	scan_words();
	return http_req_line(SLOT_TASK) >= 0;
}

/* Does a request start at this syscall's data? The nine known methods from the first 8 bytes;
 * empty lines first or another method only after reading the head. */
static __always_inline bool starts_request(struct scratch *s, int ret)
{
	__u32 target;
	__u64 w;

	if (!s->have)
		return false;
	w = peek8(&s->io, ret);
	return method_of(w, &target) != 0xff || (maybe_request(w) && http_req_start(ret));
}

/* Bytes in the request direction (server: read; client: write); the data is s->io. */
__noinline int http_on_request(__u64 key, __s32 ret, __u32 inbound)
{
	__u64 now = bpf_ktime_get_ns();
	struct http_conn *c = conn_get(key);
	struct scratch *s = scratch();
	__u32 head_len;
	int line;

	if (!c || !s)
		return 0;
	if (c->phase == HTTP_PHASE_REQUEST) {
		/* body bytes, unless a second request comes before the first was answered
		 * (pipelining across syscalls): then user space takes over, told where in these
		 * bytes the body ends when its length is known */
		if (c->req_expect && c->req_bytes + ret <= c->req_expect) {
			c->req_bytes += ret; /* within the body, whatever the bytes look like */
		} else if (c->req_expect) {
			/* past the request's end: the next one, before this one was answered (or a
			 * stray CRLF: user space skips it), however small the pieces it comes in */
			if (c->req_expect - c->req_bytes < 0xffff)
				to_stream(c, s, ret, inbound, c->req_expect - c->req_bytes);
			else
				c->req_bytes += ret;
		} else if (starts_request(s, ret)) { /* a head longer than the kernel reads */
			to_stream(c, s, ret, inbound, 0);
		} else {
			c->req_bytes += ret;
		}
		return 0;
	}
	if (s->have && ret < HTTP_REQ_MIN) {
		/* fewer bytes than the shortest request: a request read in pieces (Go's server
		 * reads one byte ahead while a handler runs), or a stray CRLF: user space joins
		 * the pieces */
		to_stream(c, s, ret, inbound, 0);
		return 0;
	}
	if (!s->have || fetch_head(s, &s->io, ret, true))
		return 0;
	scan_words();
	line = http_req_line(SLOT_TASK);
	if (line < 0)
		return 0;
	head_len = s->cx.head_len;
	if (c->phase == HTTP_PHASE_RESPONSE)
		http_finish(key, c->last_ns, SLOT_TASK); /* the previous response ran until now */
	/* User space parses everything when asked to (header capture), and whatever the kernel
	 * does not follow: a method outside the nine (its name goes to records), a chunked body
	 * (where it ends, and so whether a request follows it, needs its framing parsed), framing
	 * it leaves alone, bytes after this request in the same syscall (pipelining; a stray CRLF) */
	if (stream_all || (line >> 16) == HTTP_M_OTHER || s->cx.bad || s->cx.has_te ||
	    (head_len && (__u64)head_len + s->cx.clen < (__u64)ret)) {
		to_stream(c, s, ret, inbound, 0);
		return 0;
	}
	c->method = line >> 16;
	c->phase = HTTP_PHASE_REQUEST;
	c->req_expect = head_len ? head_len + s->cx.clen : 0;
	c->req_start = now;
	c->last_ns = now;
	c->req_bytes = ret;
	c->pid = bpf_get_current_pid_tgid() >> 32;
	if (c->role == HTTP_ROLE_SERVER)
		breakdown_start(c);
	read_target(c, s, line & 0xffff);
	s->link_req = emit_records; /* on_data calls http_link_request: a shallower stack */
	return 0;
}

static __always_inline bool chunked_end(const struct io_desc *d, int ret)
{
	__u64 tail = 0;

	/* the terminating "0\r\n\r\n" at the end of this syscall's data (first buffer only) */
	if (ret < 5 || d->len < (__u64)ret)
		return false;
	if (bpf_probe_read_user(&tail, 5, (void *)(d->base + ret - 5)))
		return false;
	return tail == W8('0', '\r', '\n', '\r', '\n', 0, 0, 0);
}

static __always_inline bool chunked_end_iov(const struct io_desc *d, int ret)
{
	struct iovec v;
	__u64 tail = 0;
	__u64 last;

	if (!d->iov_ptr || d->cnt <= 1)
		return chunked_end(d, ret);
	/* writev/sendmsg: the last buffer ends the data when the whole list was sent */
	last = d->cnt - 1;
	if (last >= 1024)
		return false;
	if (bpf_probe_read_user(&v, sizeof(v), (void *)(d->iov_ptr + last * sizeof(v))))
		return false;
	if (v.iov_len < 5 ||
	    bpf_probe_read_user(&tail, 5, (void *)((unsigned long)v.iov_base + v.iov_len - 5)))
		return false;
	return tail == W8('0', '\r', '\n', '\r', '\n', 0, 0, 0);
}

/* After a 101: does an HTTP/2 SETTINGS frame follow the head (at head_len) in s->head? (The v5.10
 * verifier does not carry a bound checked on a copy or through a stack spill to the register
 * that indexes: mask it behind a barrier.) */
__noinline int http_h2c_settings(__u32 head_len)
{
	struct scratch *s = scratch();

	if (!s || !head_len || head_len > HTTP_HEAD_MAX - 9 || head_len + 9 > s->cx.n)
		return 0;
	barrier_var(head_len); /* the compiler checked a copy: bound the register itself */
	head_len &= HTTP_HEAD_MAX - 1;
	return s->head[(head_len + 3) & HEAD_MASK] == 4 && h2_frame_ok(&s->head[head_len]);
}

/* Bytes in the response direction (server: write; client: read); the data is s->io. */
__noinline int http_on_response(__u64 key, __s32 ret)
{
	__u64 now = bpf_ktime_get_ns();
	struct http_conn *c = conn_get(key);
	struct scratch *s = scratch();
	__u32 head_len, from;
	__u8 st[4] = {};
	__u16 status;
	bool tunnel;

	if (!c || !s)
		return 0;
	if (c->phase == HTTP_PHASE_RESPONSE) {
		c->resp_bytes += ret;
		c->last_ns = now;
		if ((c->framing == HTTP_FRAMING_LENGTH && c->resp_bytes >= c->resp_expect) ||
		    (c->framing == HTTP_FRAMING_CHUNKED && s->have && chunked_end_iov(&s->io, ret)))
			http_finish(key, now, SLOT_TASK);
		return 0;
	}
	if (c->phase != HTTP_PHASE_REQUEST || !s->have)
		return 0; /* no request is waiting: not ours */
	if (fetch_head(s, &s->io, ret, true))
		return 0;
	from = s->cx.from & (2 * HTTP_EMPTY_MAX - 1);
	if (!is_response(load8(s, from)))
		return 0;
	scan_words();
	st[0] = s->head[(from + 9) & HEAD_MASK];
	st[1] = s->head[(from + 10) & HEAD_MASK];
	st[2] = s->head[(from + 11) & HEAD_MASK];
	if (s->head[(from + 8) & HEAD_MASK] != ' ' || st[0] < '1' || st[0] > '5' || st[1] < '0' ||
	    st[1] > '9' || st[2] < '0' || st[2] > '9') {
		count(HTTP_C_BAD_STATUS_LINE);
		return 0;
	}
	status = (st[0] - '0') * 100 + (st[1] - '0') * 10 + (st[2] - '0');
	tunnel = status == 101 || (c->method == HTTP_M_CONNECT && status >= 200 && status < 300);
	/* framing the kernel does not follow (a repeated Content-Length with another value, a
	 * Transfer-Encoding whose last coding is not chunked): user space parses the exchange */
	if (!tunnel && status >= 200 && c->method != HTTP_M_HEAD && status != 204 &&
	    status != 304 && (s->cx.bad || (s->cx.has_te && !s->cx.chunked))) {
		to_stream(c, s, ret, c->role == HTTP_ROLE_CLIENT, 0);
		return 0;
	}
	if (status < 200 && status != 101) {
		/* 100 Continue, 103 Early Hints: the final response follows, in a later syscall;
		 * when in this one (or the head does not end in it), user space parses them */
		if (!s->cx.head_len || s->cx.head_len < (__u32)ret)
			to_stream(c, s, ret, c->role == HTTP_ROLE_CLIENT, 0);
		else
			c->resp_bytes += ret;
		return 0;
	}
	c->status = status;
	c->phase = HTTP_PHASE_RESPONSE;
	c->resp_start = now;
	if (c->role == HTTP_ROLE_SERVER)
		breakdown_end(c, now);
	serving_done(c);
	c->last_ns = now;
	c->resp_bytes += ret;
	head_len = s->cx.head_len;
	if (!head_len) {
		count(HTTP_C_HEAD_INCOMPLETE);
		c->framing = HTTP_FRAMING_UNKNOWN;
	} else if (c->method == HTTP_M_HEAD || c->status == 204 || c->status == 304 || tunnel) {
		c->framing = HTTP_FRAMING_EMPTY;
	} else if (s->cx.chunked) {
		c->framing = HTTP_FRAMING_CHUNKED;
	} else if (s->cx.has_clen) {
		c->framing = HTTP_FRAMING_LENGTH;
		/* interim responses (100 Continue) already counted come first */
		c->resp_expect = c->resp_bytes - ret + head_len + s->cx.clen;
	}
	if (c->framing == HTTP_FRAMING_EMPTY ||
	    (c->framing == HTTP_FRAMING_LENGTH && c->resp_bytes >= c->resp_expect) ||
	    (c->framing == HTTP_FRAMING_CHUNKED && chunked_end_iov(&s->io, ret))) {
		bool upgraded = c->status == 101;

		http_finish(key, now, SLOT_TASK);
		if (tunnel && !upgraded) {
			/* a 2xx to CONNECT: the bytes that follow are the tunnel's, not HTTP
			 * (RFC 9110 section 9.3.6) */
			c->mode = HTTP_MODE_OFF;
			c->tries = 0;
		} else if (upgraded) { /* WebSocket or h2c: look at the connection afresh (h2c: a preface) */
			c->mode = HTTP_MODE_NEW;
			c->tries = 0;
			/* h2c whose server SETTINGS came in the same buffer as the 101: HTTP/2 from here,
			 * or the stream's first frames (and HPACK table entries) would be missed */
			if (http_h2c_settings(head_len)) {
				c->mode = HTTP_MODE_STREAM;
				c->proto = HTTP_PROTO_2;
				count(HTTP_C_STREAMED);
				http_stream_emit(key, ret,
						 (c->role == HTTP_ROLE_CLIENT ? EMIT_INBOUND : 0) |
							 EMIT_HAVE_IO | EMIT_KIND(HTTP_S_DATA) |
							 EMIT_SKIP(head_len & (HTTP_HEAD_MAX - 1)));
			}
		}
	}
	return 0;
}

static __always_inline struct http_conn *conn_new(struct scratch *s, __u64 key)
{
	struct http_conn *c;

	__builtin_memset(&s->conn, 0, sizeof(s->conn));
	s->conn.sk = key;
	bpf_map_update_elem(&http_conns, &key, &s->conn, BPF_NOEXIST);
	c = bpf_map_lookup_elem(&http_conns, &key);
	if (!c)
		count(HTTP_C_MAP_FULL);
	return c;
}

/* Data on a TCP socket: ret bytes moved (<= 0: end of file or error). btf: the socket tracepoints
 * (sk is a BTF pointer; the syscall's arguments from its registers); otherwise the syscall hooks'
 * worker (the arguments are in s->call). */
static __always_inline int on_data(struct sock *sk, int ret, bool inbound, bool btf, bool plain)
{
	struct scratch *s = scratch();
	struct http_conn *c;
	__u32 target;
	bool have;
	__u64 w, key;
	__u8 role, proto;

	if (!s)
		return 0;
	key = sk_key(s, sk);
	c = conn_get(key);
	if (!plain && c && c->tls) { /* ciphertext: the plaintext comes from the TLS library */
		tls_socket_io(key, inbound);
		return 0;
	}
	if (ret <= 0) {
		/* end of file from the peer: a response delimited by the close is complete */
		if (ret == 0 && inbound && c && c->mode == HTTP_MODE_KERNEL &&
		    c->role == HTTP_ROLE_CLIENT && c->phase != HTTP_PHASE_IDLE)
			http_finish(key, c->phase == HTTP_PHASE_RESPONSE ? c->last_ns :
									    bpf_ktime_get_ns(), SLOT_TASK);
		return 0;
	}
	/* not HTTP (or a tunnel): every 64th syscall looks again for an HTTP/1.x head, so that a
	 * connection first seen in the middle of a long body (the agent started then, or
	 * streamed events were lost) finds the next message */
	if (c && c->mode == HTTP_MODE_OFF && (++c->tries & 63))
		return 0;
	have = btf ? sys_args_from_regs(&s->call.a) : true;
	/* a streamed connection's bytes are copied as they are: no look at the first buffer */
	have = have && io_desc_get_at(&s->io, &s->call.a, !(c && c->mode == HTTP_MODE_STREAM));
	s->have = have;
	if (c && c->mode == HTTP_MODE_OFF) {
		w = have ? peek8(&s->io, ret) : 0;
		if (method_of(w, &target) == 0xff && !is_response(w) &&
		    !(detect_db && db_detect(w, ret))) {
			if (!plain && have && is_tls_record(peek_record(&s->io, ret, w))) {
				c->tls = 1; /* STARTTLS, or TLS first seen mid-way */
				tls_socket_io(key, inbound);
			}
			return 0;
		}
		c->mode = HTTP_MODE_NEW;
	}
	if (c && c->mode == HTTP_MODE_STREAM) {
		if (emit_records && c->proto == HTTP_PROTO_1 && c->role == HTTP_ROLE_SERVER)
			http_serve_stream(key, ret, inbound);
		http_stream_emit(key, ret, (inbound ? EMIT_INBOUND : 0) | (have ? EMIT_HAVE_IO : 0) |
						   EMIT_KIND(HTTP_S_DATA));
		return 0;
	}
	if (!c || c->mode == HTTP_MODE_NEW) {
		w = have ? peek8(&s->io, ret) : 0;
		if (!plain && have && is_tls_record(peek_record(&s->io, ret, w))) {
			if (!c && !(c = conn_new(s, key)))
				return 0;
			c->tls = 1;
			tls_socket_io(key, inbound);
			return 0;
		}
		if (is_h2_preface(w)) {
			/* HTTP/2: user space decodes it (HPACK state lives there) */
			if (!c && !(c = conn_new(s, key)))
				return 0;
			conn_init(c, s, sk, inbound ? HTTP_ROLE_SERVER : HTTP_ROLE_CLIENT, btf);
			c->mode = HTTP_MODE_STREAM;
			c->proto = HTTP_PROTO_2;
			count(HTTP_C_STREAMED);
			http_stream_emit(key, ret, (inbound ? EMIT_INBOUND : 0) | EMIT_HAVE_IO |
							   EMIT_KIND(HTTP_S_DATA));
			return 0;
		}
		if (have && !is_response(w) && method_of(w, &target) == 0xff &&
		    looks_like_h2_midway(&s->io, ret)) {
			if (!c && !(c = conn_new(s, key)))
				return 0;
			/* the role is unknown from a frame: user space works it out */
			conn_init(c, s, sk, 0, btf);
			c->mode = HTTP_MODE_STREAM;
			c->proto = HTTP_PROTO_2_MIDWAY;
			count(HTTP_C_STREAMED);
			http_stream_emit(key, ret, (inbound ? EMIT_INBOUND : 0) | EMIT_HAVE_IO |
							   EMIT_KIND(HTTP_S_DATA));
			return 0;
		}
		if (detect_db && have && (proto = db_detect(w, ret))) {
			/* a database or cache: user space parses it, from this request (or the
			 * server's greeting) on; who wrote it is the client, or the server */
			if (!c && !(c = conn_new(s, key)))
				return 0;
			conn_init(c, s, sk,
				  inbound != !!(proto & DB_SERVER_WROTE) ? HTTP_ROLE_SERVER :
									 HTTP_ROLE_CLIENT,
				  btf);
			c->mode = HTTP_MODE_STREAM;
			c->proto = proto & ~DB_SERVER_WROTE;
			count(HTTP_C_STREAMED);
			http_stream_emit(key, ret, (inbound ? EMIT_INBOUND : 0) | EMIT_HAVE_IO |
							   EMIT_KIND(HTTP_S_DATA));
			return 0;
		}
		if (method_of(w, &target) != 0xff)
			role = inbound ? HTTP_ROLE_SERVER : HTTP_ROLE_CLIENT;
		else if (is_response(w))
			role = inbound ? HTTP_ROLE_CLIENT : HTTP_ROLE_SERVER;
		else if (have && maybe_request(w) && http_req_start(ret))
			role = inbound ? HTTP_ROLE_SERVER : HTTP_ROLE_CLIENT;
		else
			role = 0;
		if (!c && !(c = conn_new(s, key)))
			return 0;
		if (!role) {
			if (++c->tries >= max_tries)
				c->mode = HTTP_MODE_OFF;
			return 0;
		}
		conn_init(c, s, sk, role, btf);
		c->mode = HTTP_MODE_KERNEL;
	}
	s->link_req = 0;
	s->serve_req = 0;
	if ((c->role == HTTP_ROLE_SERVER) == inbound)
		http_on_request(key, ret, inbound);
	else
		http_on_response(key, ret);
	if (emit_records && s->link_req)
		http_link_request(key, ret, inbound);
	if (emit_records && s->serve_req)
		http_serve_stream(key, ret, inbound);
	return 0;
}

/* ---- hook set 1: the socket tracepoints (v6.3) ---- */

SEC("tp_btf/sock_recv_length")
int BPF_PROG(http_recv, struct sock *sk, int ret, int flags)
{
	if (flags & MSG_PEEK /* the same bytes will be read again */)
		return 0;
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	return on_data(sk, ret, true, true, false);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(http_send, struct sock *sk, int ret, int flags)
{
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	return on_data(sk, ret, false, true, false);
}

/* ---- hook set 2: the syscall tracepoints (every kernel) ----
 * sys_enter keeps the calls on TCP sockets that may carry HTTP (not those already found not to);
 * sys_exit hands the call and its result to the worker. */

static __always_inline int sx_enter(struct trace_event_raw_sys_enter *ctx, __u64 nr, bool inbound,
				    int peek_arg)
{
	__u16 type = 0, proto = 0;
	struct http_conn *c;
	__u64 sk;

	if (sx_flags(ctx, peek_arg) & MSG_PEEK)
		return 0;
	sk = fd_socket(ctx->args[0], &type, &proto);
	if (!sk || type != SOCK_STREAM || proto != IPPROTO_TCP)
		return 0;
	c = conn_get(sk);
	if (c && c->tls) {
		tls_socket_io(sk, inbound);
		return 0;
	}
	if (c && c->mode == HTTP_MODE_OFF)
		return 0;
	sx_save(&http_calls, sk, nr, ctx->args[1], ctx->args[2], 0);
	return 0;
}

static __always_inline int sx_exit(struct trace_event_raw_sys_exit *ctx, bool inbound)
{
	struct scratch *s;
	long ret = ctx->ret;

	/* taken out of the map first, whatever the result: a call left there would be taken by the
	 * thread's next exit, which may not be a socket's */
	if (!(s = scratch()) || !sx_take(&http_calls, &s->call) || ret < 0)
		return 0;
	s->ret = ret;
	s->inbound = inbound;
	bpf_tail_call(ctx, &http_work, 0);
	count(HTTP_C_WORK_LOST);
	return 0;
}

SX_PROGS(http, read, true, 0)
SX_PROGS(http, readv, true, 0)
SX_PROGS(http, recvfrom, true, 4)
SX_PROGS(http, recvmsg, true, 3)
SX_PROGS(http, write, false, 0)
SX_PROGS(http, writev, false, 0)
SX_PROGS(http, sendto, false, 0)
SX_PROGS(http, sendmsg, false, 0)

/* The worker (tail-called from every sys_exit program above; never attached itself). */
SEC("tracepoint")
int http_x_work(void *ctx)
{
	struct scratch *s = scratch();

	if (!s)
		return 0;
	return on_data((struct sock *)(unsigned long)s->call.sk, (int)s->ret, s->inbound, false,
		       false);
}

/* ---- hook set 3: TLS libraries (uprobes; see include/tls.bpf.h) ----
 * OpenSSL 1.1 and 3, BoringSSL, shared or linked into a binary. Entry uprobes remember the call
 * per thread; one uretprobe takes its plaintext to on_data, by the socket underneath. */

/* Uprobes fire in every process that maps a probed file: never in the agent's own (its calls to
 * the Kubernetes API, to an OTLP collector). */
const volatile __u32 self_tgid = 0;

static __always_inline bool tls_self(void)
{
	return (bpf_get_current_pid_tgid() >> 32) == self_tgid;
}

static __always_inline int tls_enter(struct pt_regs *ctx, __u32 op, bool ex)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_call tc = {};

	if (tls_self())
		return 0;

	/* a handshake inside a read or write (renegotiation) is part of that call */
	if (op == TLS_OP_HANDSHAKE && bpf_map_lookup_elem(&tls_calls, &id))
		return 0;
	tc.ssl = PT_REGS_PARM1(ctx);
	tc.buf = PT_REGS_PARM2(ctx);
	tc.len_ptr = ex ? PT_REGS_PARM4(ctx) : 0;
	tc.op = op;
	if (op == TLS_OP_READ)
		tc.hint_sk = tls_take_read_hint();
	bpf_map_update_elem(&tls_calls, &id, &tc, BPF_ANY);
	return 0;
}

SEC("uprobe")
int tls_rd_e(struct pt_regs *ctx) /* SSL_read(ssl, buf, num) */
{
	return tls_enter(ctx, TLS_OP_READ, false);
}

SEC("uprobe")
int tls_rdx_e(struct pt_regs *ctx) /* SSL_read_ex(ssl, buf, num, &readbytes) */
{
	return tls_enter(ctx, TLS_OP_READ, true);
}

SEC("uprobe")
int tls_wr_e(struct pt_regs *ctx) /* SSL_write(ssl, buf, num) */
{
	return tls_enter(ctx, TLS_OP_WRITE, false);
}

SEC("uprobe")
int tls_wrx_e(struct pt_regs *ctx) /* SSL_write_ex(ssl, buf, num, &written) */
{
	return tls_enter(ctx, TLS_OP_WRITE, true);
}

SEC("uprobe")
int tls_hs_e(struct pt_regs *ctx) /* SSL_do_handshake(ssl) */
{
	return tls_enter(ctx, TLS_OP_HANDSHAKE, false);
}

SEC("uprobe")
int tls_setfd(struct pt_regs *ctx) /* SSL_set_fd(ssl, fd): the exact binding */
{
	__u16 type = 0, proto = 0;
	__u64 sk = fd_socket((int)PT_REGS_PARM2(ctx), &type, &proto);

	if (sk && type == SOCK_STREAM && proto == IPPROTO_TCP)
		tls_bind(PT_REGS_PARM1(ctx), sk);
	return 0;
}

SEC("uprobe")
int tls_free(struct pt_regs *ctx) /* SSL_free(ssl): its address may be reused */
{
	struct tls_ssl_key k = { .ssl = PT_REGS_PARM1(ctx),
				 .tgid = bpf_get_current_pid_tgid() >> 32 };

	bpf_map_delete_elem(&tls_socks, &k);
	return 0;
}

SEC("uretprobe")
int tls_ret(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid(), sk, n = 0;
	struct tls_call *p = bpf_map_lookup_elem(&tls_calls, &id), tc;
	long rc = PT_REGS_RC(ctx);
	struct http_conn *c;
	struct scratch *s;

	if (!p)
		return 0;
	tc = *p;
	bpf_map_delete_elem(&tls_calls, &id);
	if (tc.op != TLS_OP_HANDSHAKE) {
		if (tc.len_ptr) { /* the _ex calls return 1 and write the count */
			if (rc == 1 && bpf_probe_read_user(&n, sizeof(n), (void *)tc.len_ptr))
				n = 0;
		} else if (rc > 0) {
			n = rc;
		}
	}
	if (n > 0x7fffffff)
		n = 0;
	/* also without data: an object with no socket yet is remembered (memory BIOs) */
	sk = tls_call_sock(&tc, n > 0);
	if (!n)
		return 0;
	if (!sk) {
		count(HTTP_C_TLS_UNBOUND);
		return 0;
	}
	s = scratch();
	if (!s)
		return 0;
	c = conn_get(sk);
	if (!c && !(c = conn_new(s, sk)))
		return 0;
	c->tls = 1;
	count(HTTP_C_TLS_PLAINTEXT);
	s->call.a.nr = tc.op == TLS_OP_READ ? NR_read : NR_write;
	s->call.a.a2 = tc.buf;
	s->call.a.a3 = n;
	return on_data((struct sock *)(unsigned long)sk, (int)n, tc.op == TLS_OP_READ, false, true);
}

/* Go crypto/tls (include/tls.bpf.h). Offsets of the fields on the way from a tls.Conn to its
 * descriptor: the same from Go 1.17 (the register ABI) to today (user space's table). */
const volatile __u32 go_tls_conn_off = 0;    /* crypto/tls.Conn.conn (net.Conn interface) */
const volatile __u32 go_tcpconn_fd_off = 0;  /* net.conn.fd (*netFD) */
const volatile __u32 go_netfd_sysfd_off = 16; /* net.netFD.pfd (poll.FD) + poll.FD.Sysfd */

#if defined(__TARGET_ARCH_x86)
#define GO_PARAM1(x) ((x)->ax)
#define GO_PARAM2(x) ((x)->bx)
#define GO_PARAM3(x) ((x)->cx)
#define GO_G(x)	     ((x)->r14)
#elif defined(__TARGET_ARCH_arm64)
#define GO_PARAM1(x) ((x)->regs[0])
#define GO_PARAM2(x) ((x)->regs[1])
#define GO_PARAM3(x) ((x)->regs[2])
#define GO_G(x)	     ((x)->regs[28])
#endif

/* The socket of a tls.Conn; 0 (and *closed) once the connection is closed (poll.FD.Sysfd -1:
 * Go's HTTP/2 reader and close_notify meet a closed descriptor). */
static __always_inline __u64 go_conn_sock(__u64 conn, bool *closed)
{
	__u64 data = 0, netfd = 0;
	__s64 fd = -1;
	__u16 type = 0, proto = 0;
	__u64 sk;

	if (bpf_probe_read_user(&data, sizeof(data), (void *)(conn + go_tls_conn_off + 8)) || !data)
		return 0;
	if (bpf_probe_read_user(&netfd, sizeof(netfd), (void *)(data + go_tcpconn_fd_off)) || !netfd)
		return 0;
	if (bpf_probe_read_user(&fd, sizeof(fd), (void *)(netfd + go_netfd_sysfd_off)))
		return 0;
	if (fd < 0) {
		*closed = true;
		return 0;
	}
	sk = fd_socket(fd, &type, &proto);
	return sk && type == SOCK_STREAM && proto == IPPROTO_TCP ? sk : 0;
}

static __always_inline int go_tls_enter(struct pt_regs *ctx, __u32 op)
{
	struct go_call_key k = { .g = GO_G(ctx), .tgid = bpf_get_current_pid_tgid() >> 32 };
	struct tls_call tc = {};

	if (tls_self())
		return 0;

	bool closed = false;

	tc.ssl = GO_PARAM1(ctx);
	tc.buf = GO_PARAM2(ctx);
	tc.op = op;
	tc.sk = go_conn_sock(tc.ssl, &closed);
	if (!tc.sk) {
		if (!closed)
			count(HTTP_C_TLS_UNBOUND);
		return 0;
	}
	bpf_map_update_elem(&go_calls, &k, &tc, BPF_ANY);
	return 0;
}

SEC("uprobe")
int go_tls_rd_e(struct pt_regs *ctx) /* crypto/tls.(*Conn).Read */
{
	return go_tls_enter(ctx, TLS_OP_READ);
}

static __always_inline int go_tls_data(struct tls_call *tc, __s64 n)
{
	struct http_conn *c;
	struct scratch *s;

	if (n <= 0 || n > 0x7fffffff || !(s = scratch()))
		return 0;
	c = conn_get(tc->sk);
	if (!c && !(c = conn_new(s, tc->sk)))
		return 0;
	c->tls = 1;
	count(HTTP_C_TLS_PLAINTEXT);
	s->call.a.nr = tc->op == TLS_OP_READ ? NR_read : NR_write;
	s->call.a.a2 = tc->buf;
	s->call.a.a3 = n;
	return on_data((struct sock *)(unsigned long)tc->sk, (int)n, tc->op == TLS_OP_READ, false,
		       true);
}

/* Write returns once all of b is written (or on an error that ends the connection): its bytes
 * are taken at the entry, before the peer can answer them. Another goroutine reads the answer
 * (net/http's client and HTTP/2 have a reader and a writer per connection): its Read may return
 * before this Write's RET probe runs. */
SEC("uprobe")
int go_tls_wr_e(struct pt_regs *ctx) /* crypto/tls.(*Conn).Write */
{
	struct tls_call tc = { .op = TLS_OP_WRITE };

	if (tls_self())
		return 0;
	bool closed = false;

	tc.sk = go_conn_sock(GO_PARAM1(ctx), &closed);
	tc.buf = GO_PARAM2(ctx);
	if (!tc.sk) {
		if (!closed)
			count(HTTP_C_TLS_UNBOUND);
		return 0;
	}
	return go_tls_data(&tc, (__s64)GO_PARAM3(ctx));
}

/* A Read whose entry was not seen: it was already waiting when the probes came (an idle
 * keep-alive connection's reader, at the agent's start). Its receiver and slice are in their
 * spill slots, which the register ABI reserves in the caller's frame just above the return
 * address: Read keeps both across its calls, so they are there at its RET. */
static __always_inline int go_tls_ret_unseen(struct pt_regs *ctx)
{
#if defined(__TARGET_ARCH_x86)
	struct tls_call tc = { .op = TLS_OP_READ };
	bool closed = false;
	__u64 conn = 0;

	if (tls_self() || bpf_probe_read_user(&conn, sizeof(conn), (void *)(ctx->sp + 8)) ||
	    bpf_probe_read_user(&tc.buf, sizeof(tc.buf), (void *)(ctx->sp + 16)))
		return 0;
	tc.sk = go_conn_sock(conn, &closed);
	if (!tc.sk)
		return 0;
	return go_tls_data(&tc, (__s64)GO_PARAM1(ctx));
#else
	return 0;
#endif
}

SEC("uprobe")
int go_tls_ret(struct pt_regs *ctx) /* every RET of Read */
{
	struct go_call_key k = { .g = GO_G(ctx), .tgid = bpf_get_current_pid_tgid() >> 32 };
	struct tls_call *p = bpf_map_lookup_elem(&go_calls, &k), tc = { .op = TLS_OP_READ };

	if (!p)
		return go_tls_ret_unseen(ctx);
	tc = *p;
	bpf_map_delete_elem(&go_calls, &k);
	return go_tls_data(&tc, (__s64)GO_PARAM1(ctx));
}

/* ---- Go's HTTP/2 and gRPC header blocks before HPACK ----
 * net/http's bundled HTTP/2 and grpc-go, server and client: the fields of each header block
 * sent or received, named by (socket, stream id), go to user space beside the connection's
 * frames (a HTTP_S_HINT stream event): the decoder there names the streams whose HPACK state it
 * does not have. Struct offsets come per process from the binary's DWARF (go_offsets). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct go_h2_offsets);
} go_offsets SEC(".maps");

/* net/http's client: the request encodeHeaders saw, until writeHeaders gives its stream id. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TLS_MAX_CALLS);
	__type(key, struct go_call_key);
	__type(value, struct http_h2_hint);
} go_h2_requests SEC(".maps");

static __always_inline struct go_h2_offsets *go_offs(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	return bpf_map_lookup_elem(&go_offsets, &tgid);
}

static __always_inline __u64 go_read_ptr(__u64 addr)
{
	__u64 v = 0;

	bpf_probe_read_user(&v, sizeof(v), (void *)addr);
	return v;
}

/* The socket behind a net.Conn interface stored at addr: a *net.TCPConn, or a *tls.Conn over
 * one (told apart by the interface's type descriptor). */
static __always_inline __u64 go_iface_sock(const struct go_h2_offsets *o, __u64 addr,
					   bool *tls)
{
	__u64 itab = go_read_ptr(addr), data = go_read_ptr(addr + 8), typ;
	bool closed = false;
	__u16 type = 0, proto = 0;
	__s64 fd = -1;
	__u64 netfd;

	if (!itab || !data)
		return 0;
	typ = go_read_ptr(itab + 8);
	if (typ && typ == o->type_wrap_conn) { /* the net.Conn it embeds first */
		itab = go_read_ptr(data);
		data = go_read_ptr(data + 8);
		if (!itab || !data)
			return 0;
		typ = go_read_ptr(itab + 8);
	}
	*tls = typ == o->type_tls_conn;
	if (*tls)
		return go_conn_sock(data, &closed);
	if (typ != o->type_tcp_conn)
		return 0;
	netfd = go_read_ptr(data + go_tcpconn_fd_off);
	if (!netfd || bpf_probe_read_user(&fd, sizeof(fd), (void *)(netfd + go_netfd_sysfd_off)) ||
	    fd < 0)
		return 0;
	addr = fd_socket(fd, &type, &proto);
	return addr && type == SOCK_STREAM && proto == IPPROTO_TCP ? addr : 0;
}

#define GO_STR(dst, max, lenf, ptr, len)                                                         \
	do {                                                                                       \
		__u64 _n = (len) < (max) ? (len) : (max);                                          \
		if (!bpf_probe_read_user((dst), _n & ((max) - 1 | (max)), (void *)(ptr)))          \
			(lenf) = _n;                                                               \
	} while (0)

/* One hpack.HeaderField {Name, Value string; Sensitive bool} of s->hf_ptr into s->hint. */
__noinline int go_h2_field(__u32 i)
{
	struct scratch *s = scratch();
	__u64 f[4] = {}; /* name ptr, name len, value ptr, value len */
	__u64 name[2] = {};
	__u8 v[12] = {};

	if (!s || i >= s->hf_len)
		return 1;
	if (bpf_probe_read_user(f, sizeof(f), (void *)(s->hf_ptr + i * 40)))
		return 1;
	if (f[1] < 5 || f[1] > 16 ||
	    bpf_probe_read_user(name, f[1] & 15 ? f[1] & 15 : 16, (void *)f[0]))
		return 0;
	switch (f[1]) {
	case 7:
		if ((name[0] & M7) == W8(':', 'm', 'e', 't', 'h', 'o', 'd', 0)) {
			GO_STR(s->hint.method, H2_HINT_METHOD, s->hint.method_len, f[2], f[3]);
		} else if ((name[0] & M7) == W8(':', 's', 't', 'a', 't', 'u', 's', 0) &&
			   f[3] == 3 && !bpf_probe_read_user(v, 3, (void *)f[2])) {
			s->hint.status = (v[0] - '0') * 100 + (v[1] - '0') * 10 + (v[2] - '0');
		}
		break;
	case 5:
		if ((name[0] & M5) == W8(':', 'p', 'a', 't', 'h', 0, 0, 0))
			GO_STR(s->hint.path, H2_HINT_PATH, s->hint.path_len, f[2], f[3]);
		break;
	case 10:
		if (name[0] == W8(':', 'a', 'u', 't', 'h', 'o', 'r', 'i') &&
		    (name[1] & 0xffff) == ('t' | 'y' << 8))
			GO_STR(s->hint.authority, H2_HINT_AUTH, s->hint.authority_len, f[2], f[3]);
		break;
	case 11:
		if (name[0] == W8('g', 'r', 'p', 'c', '-', 's', 't', 'a') &&
		    (name[1] & 0xffffff) == ('t' | 'u' << 8 | 's' << 16) && f[3] >= 1 && f[3] <= 2 &&
		    !bpf_probe_read_user(v, 2, (void *)f[2])) {
			s->hint.grpc_status = v[0] - '0';
			if (f[3] == 2)
				s->hint.grpc_status = s->hint.grpc_status * 10 + (v[1] - '0');
		}
		break;
	case 12:
		if (name[0] == W8('c', 'o', 'n', 't', 'e', 'n', 't', '-') &&
		    (name[1] & M4) == W4('t', 'y', 'p', 'e') && f[3] >= 16 &&
		    !bpf_probe_read_user(v, 12, (void *)(f[2] + 4)) &&
		    *(__u64 *)v == W8('i', 'c', 'a', 't', 'i', 'o', 'n', '/') &&
		    *(__u32 *)&v[8] == W4('g', 'r', 'p', 'c'))
			s->hint.grpc = 1;
		break;
	}
	return 0;
}

static __always_inline void go_h2_hint_reset(struct scratch *s, __u32 sid, __u8 sent)
{
	__builtin_memset(&s->hint, 0, sizeof(s->hint));
	s->hint.stream_id = sid;
	s->hint.sent = sent;
	s->hint.grpc_status = -1;
}

/* s->hint to user space, on the stream of connection sk. A connection not seen yet (opened
 * before the agent, quiet since) is HTTP/2 met mid-way: the program speaks HTTP/2 on it. */
__noinline int go_h2_emit(__u64 sk, __u32 tls)
{
	struct scratch *s = scratch();
	struct http_conn *c = conn_get(sk);

	if (!s)
		return 0;
	if (!c || c->mode == HTTP_MODE_NEW || c->mode == HTTP_MODE_OFF) {
		if (!c && !(c = conn_new(s, sk)))
			return 0;
		conn_init(c, s, (struct sock *)(unsigned long)sk, 0, false);
		c->tls = tls;
		c->mode = HTTP_MODE_STREAM;
		c->proto = HTTP_PROTO_2_MIDWAY;
		count(HTTP_C_STREAMED);
	}
	if (c->mode != HTTP_MODE_STREAM || c->proto == HTTP_PROTO_1) {
		count(HTTP_C_H2_HINT_MISSED);
		return 0;
	}
	s->ev.conn_id = c->id;
	s->ev.cgroup_id = c->pod.cgroup_id;
	s->ev.ts_ns = bpf_ktime_get_ns();
	s->ev.netns = c->pod.netns;
	s->ev.pid = bpf_get_current_pid_tgid() >> 32;
	s->ev.len = 0;
	s->ev.captured = sizeof(s->hint);
	s->ev.kind = HTTP_S_HINT;
	s->ev.inbound = 0;
	s->ev.role = c->role;
	s->ev.family = c->family;
	s->ev.local_port = c->local_port;
	s->ev.peer_port = c->peer_port;
	__builtin_memcpy(s->ev.peer_addr, c->peer_addr, sizeof(s->ev.peer_addr));
	s->ev.method = 0;
	s->ev.proto = c->proto;
	s->ev.sk = sk;
	s->ev.gap = 0;
	s->ev.tls = c->tls;
	s->ev.skip = 0;
	__builtin_memcpy(s->data, &s->hint, sizeof(s->hint));
	if (bpf_ringbuf_output(&http_stream, &s->ev, sizeof(s->ev) + sizeof(s->hint), 0))
		count(HTTP_C_STREAM_LOST);
	else
		count(HTTP_C_H2_HINTS);
	return 0;
}

/* A received MetaHeadersFrame (its fields decoded) on the connection whose net.Conn is at
 * conn_addr. */
static __always_inline int go_h2_meta(const struct go_h2_offsets *o, __u64 conn_addr, __u64 frame)
{
	struct scratch *s = scratch();
	__u64 hf = 0, sk;
	__u32 sid = 0;
	bool tls = false;

	if (!s || !frame)
		return 0;
	sk = go_iface_sock(o, conn_addr, &tls);
	if (!sk)
		return 0;
	hf = go_read_ptr(frame); /* the embedded *HeadersFrame, which starts with its FrameHeader */
	if (!hf || bpf_probe_read_user(&sid, sizeof(sid), (void *)(hf + o->frame_stream_id)))
		return 0;
	go_h2_hint_reset(s, sid, 0);
	s->hf_ptr = go_read_ptr(frame + o->meta_fields);
	s->hf_len = go_read_ptr(frame + o->meta_fields + 8);
	for (__u32 i = 0; i < 16; i++)
		if (go_h2_field(i))
			break;
	return go_h2_emit(sk, tls);
}

SEC("uprobe")
int go_grpc_srv_rh(struct pt_regs *ctx) /* transport.(*http2Server).operateHeaders(t, frame) */
{
	struct go_h2_offsets *o = go_offs();

	if (!o || tls_self())
		return 0;
	return go_h2_meta(o, GO_PARAM1(ctx) + o->grpc_server_conn, GO_PARAM2(ctx));
}

SEC("uprobe")
int go_grpc_cli_rh(struct pt_regs *ctx) /* transport.(*http2Client).operateHeaders(t, frame) */
{
	struct go_h2_offsets *o = go_offs();

	if (!o || tls_self())
		return 0;
	return go_h2_meta(o, GO_PARAM1(ctx) + o->grpc_client_conn, GO_PARAM2(ctx));
}

SEC("uprobe")
int go_nh_srv_rh(struct pt_regs *ctx) /* net/http.(*http2serverConn).processHeaders(sc, f) */
{
	struct go_h2_offsets *o = go_offs();

	if (!o || tls_self())
		return 0;
	return go_h2_meta(o, GO_PARAM1(ctx) + o->nh_sc_conn, GO_PARAM2(ctx));
}

SEC("uprobe")
int go_nh_cli_rh(struct pt_regs *ctx) /* net/http.(*http2clientConnReadLoop).processHeaders */
{
	struct go_h2_offsets *o = go_offs();
	__u64 cc;

	if (!o || tls_self())
		return 0;
	cc = go_read_ptr(GO_PARAM1(ctx) + o->nh_rl_cc);
	if (!cc)
		return 0;
	return go_h2_meta(o, cc + o->nh_cc_tconn, GO_PARAM2(ctx));
}

/* grpc-go sends every header block through loopyWriter.writeHeader(streamID, endStream, hf,
 * onWrite): the fields before HPACK. The connection: l.framer.writer.conn. */
SEC("uprobe")
int go_grpc_wh(struct pt_regs *ctx)
{
	struct go_h2_offsets *o = go_offs();
	struct scratch *s = scratch();
	__u64 fr, w, sk;
	bool tls = false;

	if (!o || !s || tls_self())
		return 0;
	fr = go_read_ptr(GO_PARAM1(ctx) + o->grpc_loopy_framer);
	w = fr ? go_read_ptr(fr + o->grpc_framer_writer) : 0;
	sk = w ? go_iface_sock(o, w + o->grpc_bufwriter_conn, &tls) : 0;
	if (!sk)
		return 0;
	go_h2_hint_reset(s, (__u32)GO_PARAM2(ctx), 1);
#if defined(__TARGET_ARCH_x86)
	s->hf_ptr = ctx->di;
	s->hf_len = ctx->si;
#else
	s->hf_ptr = ctx->regs[3];
	s->hf_len = ctx->regs[4];
#endif
	for (__u32 i = 0; i < 16; i++)
		if (go_h2_field(i))
			break;
	return go_h2_emit(sk, tls);
}

/* net/http's server writes response headers with writeHeaders(st, headerData): the status. */
SEC("uprobe")
int go_nh_srv_wh(struct pt_regs *ctx)
{
	struct go_h2_offsets *o = go_offs();
	struct scratch *s = scratch();
	__u64 hd = GO_PARAM3(ctx), code = 0, sk;
	__u32 sid = 0;
	bool tls = false;

	if (!o || !s || !hd || tls_self())
		return 0;
	sk = go_iface_sock(o, GO_PARAM1(ctx) + o->nh_sc_conn, &tls);
	if (!sk || bpf_probe_read_user(&sid, sizeof(sid), (void *)(hd + o->nh_res_stream_id)))
		return 0;
	code = go_read_ptr(hd + o->nh_res_code);
	if (!code)
		return 0; /* trailers */
	go_h2_hint_reset(s, sid, 1);
	s->hint.status = code;
	return go_h2_emit(sk, tls);
}

/* net/http's client: encodeHeaders(cc, req, ...) has the request, writeHeaders(cc, streamID,
 * ...) right after on the same goroutine gives its stream. */
SEC("uprobe")
int go_nh_cli_enc(struct pt_regs *ctx)
{
	struct go_call_key k = { .g = GO_G(ctx), .tgid = bpf_get_current_pid_tgid() >> 32 };
	struct go_h2_offsets *o = go_offs();
	struct scratch *s = scratch();
	__u64 req = GO_PARAM2(ctx), str[2], url;

	if (!o || !s || !req || tls_self())
		return 0;
	go_h2_hint_reset(s, 0, 1);
	if (!bpf_probe_read_user(str, sizeof(str), (void *)(req + o->req_method)))
		GO_STR(s->hint.method, H2_HINT_METHOD, s->hint.method_len, str[0], str[1]);
	if (!s->hint.method_len) {
		__builtin_memcpy(s->hint.method, "GET", 3);
		s->hint.method_len = 3;
	}
	url = go_read_ptr(req + o->req_url);
	if (url && !bpf_probe_read_user(str, sizeof(str), (void *)(url + o->url_path)))
		GO_STR(s->hint.path, H2_HINT_PATH, s->hint.path_len, str[0], str[1]);
	if (!bpf_probe_read_user(str, sizeof(str), (void *)(req + o->req_host)))
		GO_STR(s->hint.authority, H2_HINT_AUTH, s->hint.authority_len, str[0], str[1]);
	bpf_map_update_elem(&go_h2_requests, &k, &s->hint, BPF_ANY);
	return 0;
}

SEC("uprobe")
int go_nh_cli_wh(struct pt_regs *ctx)
{
	struct go_call_key k = { .g = GO_G(ctx), .tgid = bpf_get_current_pid_tgid() >> 32 };
	struct go_h2_offsets *o = go_offs();
	struct scratch *s = scratch();
	struct http_h2_hint *h = bpf_map_lookup_elem(&go_h2_requests, &k);
	bool tls = false;
	__u64 sk;

	if (!o || !s || !h || tls_self())
		return 0;
	__builtin_memcpy(&s->hint, h, sizeof(s->hint));
	bpf_map_delete_elem(&go_h2_requests, &k);
	s->hint.stream_id = (__u32)GO_PARAM2(ctx);
	sk = go_iface_sock(o, GO_PARAM1(ctx) + o->nh_cc_tconn, &tls);
	return sk ? go_h2_emit(sk, tls) : 0;
}

/* Processes to look at for TLS libraries and Go binaries (user space reads their maps). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} http_procs SEC(".maps");

static __always_inline void proc_event(__u32 kind)
{
	struct http_proc_event ev = { .cgroup_id = bpf_get_current_cgroup_id(),
				      .pid = bpf_get_current_pid_tgid() >> 32,
				      .kind = kind };

	if (bpf_ringbuf_output(&http_procs, &ev, sizeof(ev), 0))
		count(HTTP_C_PROC_LOST);
}

SEC("tracepoint/sched/sched_process_exec")
int http_exec(void *ctx)
{
	proc_event(HTTP_PROC_EXEC);
	return 0;
}

/* The dynamic linker (glibc's and musl's ld.so) calls _dl_debug_state after each change to the
 * loaded libraries, at start-up and at every dlopen (debuggers put their breakpoint there): a
 * uprobe on it says a process has new libraries without tracing a syscall (a syscall
 * tracepoint would put every syscall of every process on the slow path). */
SEC("uprobe")
int http_dlmap(struct pt_regs *ctx)
{
	if (!tls_self())
		proc_event(HTTP_PROC_LIBS);
	return 0;
}

/* ---- the end of a connection (both hook sets) ---- */

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(http_close, struct sock *sk)
{
	struct scratch *s = scratch_at(SLOT_SOFTIRQ);
	struct http_conn *c;
	__u64 key;

	if (!s)
		return 0;
	key = sk_key(s, sk);
	c = conn_get(key);
	if (!c)
		return 0;
	if (c->mode == HTTP_MODE_KERNEL && c->phase != HTTP_PHASE_IDLE)
		http_finish(key, c->phase == HTTP_PHASE_RESPONSE ? c->last_ns : bpf_ktime_get_ns(),
			    SLOT_SOFTIRQ);
	else if (c->mode == HTTP_MODE_STREAM)
		http_stream_emit(key, 0, EMIT_KIND(HTTP_S_CLOSE) | EMIT_SOFTIRQ);
	serving_done(c);
	bpf_map_delete_elem(&http_conns, &key);
	return 0;
}

/* ---- the off-CPU probe (deep: attached only when asked for) ----
 * For the threads that handle server requests (they have http_threads storage): when one
 * blocks, why (its syscall, or the uninterruptible state); when it runs again, how long. */

#if defined(__TARGET_ARCH_x86)
#define NR_poll		  7
#define NR_select	  23
#define NR_pause	  34
#define NR_nanosleep	  35
#define NR_connect	  42
#define NR_accept	  43
#define NR_futex	  202
#define NR_clock_nanosleep 230
#define NR_epoll_wait	  232
#define NR_pselect6	  270
#define NR_ppoll	  271
#define NR_epoll_pwait	  281
#define NR_accept4	  288
#define NR_epoll_pwait2	  441
#define NR_futex_waitv	  449
#elif defined(__TARGET_ARCH_arm64)
#define NR_poll		  -1
#define NR_select	  -1
#define NR_pause	  -1
#define NR_nanosleep	  101
#define NR_connect	  203
#define NR_accept	  202
#define NR_futex	  98
#define NR_clock_nanosleep 115
#define NR_epoll_wait	  -1
#define NR_pselect6	  72
#define NR_ppoll	  73
#define NR_epoll_pwait	  22
#define NR_accept4	  242
#define NR_epoll_pwait2	  441
#define NR_futex_waitv	  449
#endif
#define TASK_UNINTERRUPTIBLE 0x2

/* Before v5.15 (no bpf_task_pt_regs) the syscall a thread blocked in is not known: only disk
 * (D state) and other are told apart. */
static __always_inline __u32 block_reason(struct task_struct *t, unsigned int state)
{
	struct pt_regs *r = has_task_pt_regs ? (struct pt_regs *)bpf_task_pt_regs(t) : 0;
	long nr = r ? SYSCALL_NR(r) : -1;

	/* PSI marks a task in a memory stall (psi_memstall_enter): sleeping over memory.high
	 * (mem_cgroup_handle_over_high), on a refaulting page, or in reclaim (CONFIG_PSI) */
	if (bpf_core_field_exists(t->in_memstall) && BPF_CORE_READ_BITFIELD_PROBED(t, in_memstall))
		return HTTP_BLOCKED_MEMORY;
	if (nr == NR_futex || nr == NR_futex_waitv)
		return HTTP_BLOCKED_LOCK;
	if (nr == NR_nanosleep || nr == NR_clock_nanosleep || nr == NR_pause)
		return HTTP_BLOCKED_SLEEP;
	if (state & TASK_UNINTERRUPTIBLE)
		return HTTP_BLOCKED_DISK;
	switch (nr) {
	case NR_read:
	case NR_readv:
	case NR_recvfrom:
	case NR_recvmsg:
	case NR_write:
	case NR_writev:
	case NR_sendto:
	case NR_sendmsg:
	case NR_connect:
	case NR_accept:
	case NR_accept4:
	case NR_poll:
	case NR_ppoll:
	case NR_select:
	case NR_pselect6:
	case NR_epoll_wait:
	case NR_epoll_pwait:
	case NR_epoll_pwait2:
		return HTTP_BLOCKED_NETWORK;
	}
	return HTTP_BLOCKED_OTHER;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(http_offcpu, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	unsigned int prev_state = SCHED_SWITCH_PREV_STATE(ctx, preempt, prev, has_prev_state);
	struct http_thread *th;
	__u64 now;

	th = task_store_get(&http_threads, prev, false, 0);
	if (th && prev_state) {
		th->off_ns = bpf_ktime_get_ns();
		th->reason = block_reason(prev, prev_state);
	}
	th = task_store_get(&http_threads, next, false, 0);
	if (!th || !th->off_ns)
		return 0;
	now = bpf_ktime_get_ns();
	if (th->reason < HTTP_BLOCK_REASONS)
		th->blocked_ns[th->reason] += now - th->off_ns;
	th->off_ns = 0;
	return 0;
}

/* ---- the reclaim probe: time each request-handling thread spends reclaiming memory ----
 * Around direct reclaim (the node is short) and memory-cgroup reclaim (the cgroup is at
 * memory.max or over memory.high): both run in the stalled task. Reclaim is rare, so this is
 * on with the breakdown; a thread's storage is made at its first reclaim. */
static __always_inline int reclaim_mark(bool begin)
{
	struct http_thread *th = current_store_get(&http_threads, begin, &zero_thread);
	__u64 now = bpf_ktime_get_ns();

	if (!th)
		return 0;
	if (begin) {
		th->reclaim_t0 = now;
	} else if (th->reclaim_t0) {
		th->reclaim_ns += now - th->reclaim_t0;
		th->reclaim_t0 = 0;
	}
	return 0;
}

SEC("tp_btf/mm_vmscan_direct_reclaim_begin")
int BPF_PROG(http_rcl_db)
{
	return reclaim_mark(true);
}

SEC("tp_btf/mm_vmscan_direct_reclaim_end")
int BPF_PROG(http_rcl_de)
{
	return reclaim_mark(false);
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_begin")
int BPF_PROG(http_rcl_mb)
{
	return reclaim_mark(true);
}

SEC("tp_btf/mm_vmscan_memcg_reclaim_end")
int BPF_PROG(http_rcl_me)
{
	return reclaim_mark(false);
}

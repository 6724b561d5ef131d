/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* HTTP/1.x collector: the only definition of what http.bpf.c shares with collectors/http.py. */
#ifndef PODSCOPE_HTTP_H
#define PODSCOPE_HTTP_H

#include "common.h"

#define HTTP_PATH_MAX  64   /* bytes of the request target kept (query cut off) */
#define HTTP_HEAD_MAX  512  /* bytes of a message head the kernel scans (power of 2) */
#define HTTP_CHUNK_MAX 8192 /* bytes of one syscall's data streamed to user space (power of 2) */
#define HTTP_IOV_STREAM_MAX 256 /* iovec entries copied per syscall of a streamed connection */

enum http_role {
	HTTP_ROLE_SERVER = 1, /* the pod received the request */
	HTTP_ROLE_CLIENT = 2, /* the pod sent the request */
};

/* How the kernel handles a connection. */
enum http_mode {
	HTTP_MODE_NEW = 0,    /* no HTTP head seen yet */
	HTTP_MODE_KERNEL = 1, /* parsed, paired and timed in the kernel */
	HTTP_MODE_STREAM = 2, /* every syscall's bytes go to user space (pipelining, header capture) */
	HTTP_MODE_OFF = 3,    /* not HTTP/1.x: only the lookup is paid */
};

/* What a streamed connection carries. */
enum http_proto {
	HTTP_PROTO_1 = 1,	  /* HTTP/1.x (pipelining, header capture) */
	HTTP_PROTO_2 = 2,	  /* HTTP/2 from its client preface */
	HTTP_PROTO_2_MIDWAY = 3, /* HTTP/2 frames on a connection whose start was not seen */
	HTTP_PROTO_REDIS = 4,	  /* RESP (bpf/include/db.bpf.h): parsed in native/dbengine.c */
	HTTP_PROTO_MEMCACHED = 5, /* memcached's text and meta protocols (the same) */
	HTTP_PROTO_POSTGRES = 6,  /* PostgreSQL's protocol 3 from its startup (the same) */
	HTTP_PROTO_MYSQL = 7,	  /* MySQL/MariaDB: the server's greeting, or a COM_QUERY (the same) */
	HTTP_PROTO_NATS = 8,	  /* NATS: the server's INFO, a client's CONNECT or PUB (the same) */
};

enum http_phase {
	HTTP_PHASE_IDLE = 0,
	HTTP_PHASE_REQUEST = 1,	 /* request head seen, waiting for the final response */
	HTTP_PHASE_RESPONSE = 2, /* final response head seen, body in progress */
};

enum http_framing {
	HTTP_FRAMING_UNKNOWN = 0, /* ends at the next request or when the connection closes */
	HTTP_FRAMING_LENGTH = 1,  /* Content-Length */
	HTTP_FRAMING_CHUNKED = 2,
	HTTP_FRAMING_EMPTY = 3, /* HEAD, 204, 304 */
};

enum http_method {
	HTTP_M_OTHER = 0,
	HTTP_M_GET,
	HTTP_M_HEAD,
	HTTP_M_POST,
	HTTP_M_PUT,
	HTTP_M_DELETE,
	HTTP_M_OPTIONS,
	HTTP_M_PATCH,
	HTTP_M_CONNECT,
	HTTP_M_TRACE,
};

/* Counters of the collector itself (per-CPU array, index = enum). */
enum http_counter {
	HTTP_C_RECORDS_LOST = 0,    /* http_records ring buffer full */
	HTTP_C_STREAM_LOST = 1,	    /* http_stream ring buffer full: that connection is dropped */
	HTTP_C_MAP_FULL = 2,	    /* a connection or aggregate could not be stored */
	HTTP_C_BAD_STATUS_LINE = 3, /* "HTTP/1." without a three-digit status */
	HTTP_C_HEAD_INCOMPLETE = 4, /* response head not within one syscall's first HTTP_HEAD_MAX bytes:
				     * framing unknown, the response ends at the next request or close */
	HTTP_C_UNREADABLE = 5,	    /* the syscall's buffer could not be read */
	HTTP_C_STREAMED = 6,	    /* connections handed to user space */
	HTTP_C_WORK_LOST = 7,	    /* syscall hooks: the worker program could not be reached */
	HTTP_C_TLS_UNBOUND = 8,	    /* TLS plaintext whose socket was not known: not counted */
	HTTP_C_TLS_PLAINTEXT = 9,   /* TLS library calls whose plaintext was followed */
	HTTP_C_PROC_LOST = 10,	    /* http_procs ring buffer full: a process is found by the rescan */
	HTTP_C_H2_HINTS = 11,	    /* HTTP/2 header blocks read from Go programs */
	HTTP_C_H2_HINT_MISSED = 12, /* ... whose connection was not known (or no offsets) */
	HTTP_C_MAX = 13,
};

/* Aggregates per (pod, role, method, status, path, peer), per CPU (no atomics, no shared cache
 * lines) and double-buffered: the kernel adds to slot http_cfg[0], user space drains the other
 * one. status 0 = the request got no response. */
struct http_agg_key {
	struct pod_key pod;
	__u64 path_hash;
	__u8 peer_addr[16]; /* client role: the server's address (IPv4 in the first 4 bytes) */
	__u16 peer_port;    /* client role: the server's port */
	__u16 status;
	__u8 method;	    /* enum http_method */
	__u8 role;	    /* enum http_role */
	__u8 family;	    /* 2 or 10 */
	__u8 tls;	    /* 1: seen through a TLS library (uprobes) */
};

struct http_agg {
	struct hist duration;	/* nanoseconds */
	struct hist first_byte; /* nanoseconds: request head to the first response byte (client: read,
				 * server: written); requests with a response only */
	__u64 req_bytes;
	__u64 resp_bytes;
};

/* The path a path_hash stands for (written when an aggregate for it is created). */
struct http_path {
	__u32 len;
	__u8 path[HTTP_PATH_MAX];
};

/* Why a thread was blocked (the off-CPU probe tells them apart; see http.bpf.c). */
enum http_block_reason {
	HTTP_BLOCKED_SLEEP = 0,	  /* nanosleep, clock_nanosleep, pause */
	HTTP_BLOCKED_LOCK = 1,	  /* futex */
	HTTP_BLOCKED_DISK = 2,	  /* uninterruptible (D state): disk and other kernel I/O */
	HTTP_BLOCKED_NETWORK = 3, /* waiting in a socket read/write/accept/connect or poll/epoll */
	HTTP_BLOCKED_OTHER = 4,
	HTTP_BLOCKED_MEMORY = 5, /* in a memory stall (PSI's in_memstall): throttled over
				  * memory.high, waiting on a refault or on reclaim's writeback */
	HTTP_BLOCK_REASONS = 6,
};

/* Per thread that handled a server request, while the off-CPU probe runs. */
struct http_thread {
	__u64 off_ns; /* when it blocked, 0 while on a CPU or runnable */
	__u32 reason; /* enum http_block_reason, of the current block */
	__u32 _pad;
	__u64 blocked_ns[HTTP_BLOCK_REASONS]; /* off the CPU after blocking, until back on */
	__u64 reclaim_ns; /* in direct or memory-cgroup reclaim, in all (the reclaim probe) */
	__u64 reclaim_t0; /* when the current reclaim began, 0 outside one */
};

/* Where a server request's handling thread spent the time from the read of the request head to
 * the write of the first response byte. */
struct http_breakdown {
	__u64 on_cpu_ns;   /* se.sum_exec_runtime grew by (to a scheduler tick) */
	__u64 runqueue_ns; /* sched_info.run_delay grew by: runnable, waiting for a CPU */
	__u64 blocked_ns;  /* the rest */
	__u64 by_reason_ns[HTTP_BLOCK_REASONS]; /* raw off-CPU time by reason (the probe) */
	__u64 reclaim_ns;   /* of all three, in direct or memory-cgroup reclaim (the probe) */
	__u64 major_faults; /* page faults that waited for a read from disk (task maj_flt) */
};

enum http_breakdown_state {
	HTTP_BD_NONE = 0,    /* not a server request, or another thread wrote the response */
	HTTP_BD_TOTALS = 1,  /* on CPU, run queue, blocked */
	HTTP_BD_REASONS = 2, /* and blocked by reason */
};

/* What joins a request's two ends and its place in a trace (records only). Both ends of a
 * TCP connection see the client's address and port (a DNAT in the client's network namespace
 * changes only the server's) and the sequence number of the request's first byte: the ids of
 * its spans are derived from those, on each side, without a word between the agents. */
enum http_link_flags {
	HTTP_LINK_SEQ = 1, /* client_addr, client_port and seq are known */
	HTTP_LINK_TP = 2,  /* tp_*: the request carried a W3C traceparent */
};

struct http_link {
	__u8 client_addr[16]; /* IPv4 in the first 4 bytes when family is 2 */
	__u32 seq;	      /* TCP sequence number of the request's first byte */
	__u16 client_port;
	__u8 family;	      /* of client_addr */
	__u8 flags;	      /* enum http_link_flags */
	__u8 tp_trace[16];    /* traceparent: trace-id */
	__u8 tp_span[8];      /* ... parent-id */
	__u8 tp_sampled;      /* ... flags & 1 */
	__u8 _pad[7];
};

/* The server request a thread is handling (records only: http_serving, by thread id). */
struct http_serving {
	struct http_link link; /* the request's */
	__u64 sk;	       /* its connection (the key of http_conns) ... */
	__u64 req_start;       /* ... and its start there: still waiting for its response? */
	__s32 open;	       /* server requests whose head this thread read, not answered yet */
	__u32 _pad;
};

/* Per connection, keyed by the socket's address, from first HTTP data to close. */
struct http_conn {
	__u64 id; /* made when the connection is first seen: never reused while the agent runs */
	__u64 sk; /* the key: the socket's address */
	struct pod_key pod;
	__u64 req_start; /* ns: the read (server) or write (client) that carried the request head */
	__u64 resp_start;
	__u64 last_ns; /* last byte of the current message */
	__u64 req_bytes;
	__u64 resp_bytes;
	__u64 resp_expect; /* total response bytes when the framing says so (head + Content-Length) */
	__u64 req_expect;  /* total request bytes (head + Content-Length); 0: chunked or not known */
	__u64 path_hash;
	__u32 pid;
	__u16 status;
	__u16 path_len;
	__u8 mode;    /* enum http_mode */
	__u8 role;    /* enum http_role */
	__u8 phase;   /* enum http_phase */
	__u8 framing; /* enum http_framing */
	__u8 method;
	__u8 tries; /* data syscalls seen before the first HTTP head */
	__u8 family;
	__u8 proto; /* enum http_proto, in HTTP_MODE_STREAM */
	__u16 local_port;
	__u16 peer_port;
	__u8 peer_addr[16];
	__u8 path[HTTP_PATH_MAX];
	__u8 stream_gap; /* a stream event was lost: the next one says so */
	__u8 bd_state;	 /* enum http_breakdown_state of the current request */
	__u8 tls;	 /* TLS records on the socket: its bytes are ciphertext, the plaintext comes
			  * from the TLS library's uprobes (tls_*) */
	__u8 bd_rcl_on; /* the reclaim probe ran from the request head on */
	__u32 bd_tid; /* the thread that read the request head, and its counters then */
	__u64 bd_ran;
	__u64 bd_waited;
	__u64 bd_blocked[HTTP_BLOCK_REASONS];
	__u64 bd_reclaim;
	__u64 bd_majflt;
	struct http_breakdown bd; /* at the first response byte */
	__u32 serve_tid; /* server role: the thread whose http_serving.open counts this request */
	__u8 serving;	 /* ... while it is open there */
	__u8 _pad2[3];
	struct http_link link;	 /* the current request's (records only) */
	struct http_link parent; /* client role: the server request its thread was handling */
};

/* One record per completed request (only when record exports or `trace` are on). */
struct http_record {
	__u64 conn_id;
	__u64 cgroup_id;
	__u64 req_start; /* CLOCK_MONOTONIC ns */
	__u64 resp_start;
	__u64 end_ns;
	__u64 req_bytes;
	__u64 resp_bytes;
	__u32 netns;
	__u32 pid;
	__u16 status; /* 0: no response (connection closed first) */
	__u16 path_len;
	__u16 local_port;
	__u16 peer_port;
	__u8 method;
	__u8 role;
	__u8 family;
	__u8 framing;
	__u8 breakdown; /* enum http_breakdown_state */
	__u8 tls;
	__u8 bd_reclaim; /* 1: bd.reclaim_ns was measured (the reclaim probe ran) */
	__u8 _pad;
	__u8 peer_addr[16];
	__u8 path[HTTP_PATH_MAX]; /* the target as sent, query included, cut at HTTP_PATH_MAX */
	struct http_breakdown bd;
	struct http_link link;	 /* the request's own */
	struct http_link parent; /* client role: the request's parent (flags 0: none found) */
};

enum http_stream_kind {
	HTTP_S_DATA = 0,
	HTTP_S_CLOSE = 1,
	HTTP_S_SEED = 2, /* a request the kernel saw before streaming began: ts_ns = its start,
			  * len = its bytes so far, data = its target, method set */
	HTTP_S_HINT = 3, /* data = a struct http_h2_hint: one HTTP/2 header block as the Go program
			  * that sent or received it had it before HPACK */
};

#define H2_HINT_METHOD 16
#define H2_HINT_PATH   128
#define H2_HINT_AUTH   64

/* The fields of one HTTP/2 header block that a request's metrics need, read from a Go program
 * (net/http's HTTP/2, grpc-go) before HPACK encoding or after decoding: the stream is named on
 * connections whose HPACK state the decoder in user space does not have (opened before the
 * agent started). */
struct http_h2_hint {
	__u32 stream_id;
	__u8 sent;	   /* 1: this side sent the block; 0: it received it */
	__u8 grpc;	   /* content-type application/grpc... */
	__u16 status;	   /* :status, 0 if none */
	__s32 grpc_status; /* -1 if none */
	__u8 method_len;
	__u8 path_len;
	__u8 authority_len;
	__u8 _pad;
	__u8 method[H2_HINT_METHOD];
	__u8 path[H2_HINT_PATH];
	__u8 authority[H2_HINT_AUTH];
};

/* Go programs: where the fields are, per process (user space, from the binary's DWARF). */
struct go_h2_offsets {
	__u32 grpc_server_conn;	 /* transport.http2Server.conn */
	__u32 grpc_client_conn;	 /* transport.http2Client.conn */
	__u32 grpc_loopy_framer; /* transport.loopyWriter.framer */
	__u32 grpc_framer_writer; /* transport.framer.writer */
	__u32 grpc_bufwriter_conn; /* transport.bufWriter.conn */
	__u32 meta_fields;	 /* http2.MetaHeadersFrame.Fields (both packages) */
	__u32 frame_stream_id;	 /* http2.FrameHeader.StreamID (HeadersFrame starts with it) */
	__u32 nh_sc_conn;	 /* net/http.http2serverConn.conn */
	__u32 nh_res_stream_id;	 /* net/http.http2writeResHeaders.streamID */
	__u32 nh_res_code;	 /* net/http.http2writeResHeaders.httpResCode */
	__u32 nh_rl_cc;		 /* net/http.http2clientConnReadLoop.cc */
	__u32 nh_cc_tconn;	 /* net/http.http2ClientConn.tconn */
	__u32 req_method;	 /* net/http.Request.Method */
	__u32 req_url;		 /* net/http.Request.URL */
	__u32 req_host;		 /* net/http.Request.Host */
	__u32 url_path;		 /* net/url.URL.Path */
	__u32 _pad;
	__u64 type_tcp_conn;	 /* runtime addresses of the type descriptors of *net.TCPConn and */
	__u64 type_tls_conn;	 /* *crypto/tls.Conn: what a net.Conn interface holds */
	__u64 type_wrap_conn;	 /* grpc-go's *credentials.syscallConn: a net.Conn (first field)
				  * around the *tls.Conn */
};

/* Streamed data of a connection in HTTP_MODE_STREAM, followed by `captured` bytes. */
struct http_stream_event {
	__u64 conn_id;
	__u64 cgroup_id;
	__u64 ts_ns;
	__u32 netns;
	__u32 pid;
	__u32 len;	/* bytes the syscall moved */
	__u32 captured; /* bytes that follow this header (<= len; 0 for sendfile and friends) */
	__u8 kind;	/* enum http_stream_kind */
	__u8 inbound;	/* 1: the pod read these bytes; 0: it wrote them */
	__u8 role;
	__u8 family;
	__u16 local_port;
	__u16 peer_port;
	__u8 peer_addr[16];
	__u8 method; /* HTTP_S_SEED only */
	__u8 proto;  /* enum http_proto */
	__u8 gap;    /* 1: events of this connection were lost before this one */
	__u8 tls;
	__u16 skip;  /* leading captured bytes that are not the stream's (the 101 head before h2c) */
	__u8 _pad[2];
	__u64 sk;    /* the socket's address: the key of http_conns */
	/* records only. DATA: link.seq is the TCP sequence number of this event's first byte (in
	 * its direction), link.client_addr and client_port the socket's local ones (flags 0: not
	 * known: TLS); parent: of a client's outbound bytes, the server request the writing
	 * thread was handling (flags 0: none). SEED: the request's own, as the kernel had them. */
	struct http_link link;
	struct http_link parent;
};

/* TLS libraries: which call a thread is in, from its entry uprobe to its return. */
enum tls_op {
	TLS_OP_READ = 1,
	TLS_OP_WRITE = 2,
	TLS_OP_HANDSHAKE = 3,
};

struct tls_call {
	__u64 ssl;     /* the library's connection object (SSL *) */
	__u64 buf;     /* the plaintext */
	__u64 len_ptr; /* SSL_read_ex/SSL_write_ex: where the byte count is written (0: the return) */
	__u64 sk;      /* the socket the thread used inside the call (0: none yet) */
	__u64 hint_sk; /* memory BIOs: the TLS socket the thread read just before this read call */
	__u32 op;      /* enum tls_op */
	__u32 _pad;
};

/* Processes whose mappings changed (exec, or libraries loaded): user space looks at
 * /proc/PID/maps for TLS libraries and Go binaries. */
enum http_proc_kind {
	HTTP_PROC_EXEC = 1,
	HTTP_PROC_LIBS = 2,
};

struct http_proc_event {
	__u64 cgroup_id;
	__u32 pid;
	__u32 kind; /* enum http_proc_kind */
};

#endif

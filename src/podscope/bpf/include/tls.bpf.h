/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* TLS: which socket a TLS library's connection object writes to and reads from.
 *
 * The plaintext comes from uprobes on the library's read and write calls; the socket from one of
 * (most exact first):
 *  1. SSL_set_fd(ssl, fd): the fd's socket in the calling process (nginx, curl, Python, ab);
 *  2. the socket the same thread reads or writes inside an SSL call (a socket BIO set up another
 *     way, SSL_set_bio);
 *  3. libraries fed through memory BIOs by an event loop (Node.js): the TLS socket the thread read
 *     just before an SSL_read that returned data, or the one it writes just after an SSL call
 *     whose object has no socket yet (a handshake starts that way).
 * The socket hooks see only ciphertext on such sockets (http_conn.tls): they leave it alone. */
#ifndef PODSCOPE_TLS_BPF_H
#define PODSCOPE_TLS_BPF_H

#include "http.h"

#define TLS_MAX_CALLS 16384 /* threads inside a TLS call at once */
#define TLS_MAX_SSL   65536 /* TLS connection objects with a known socket */

struct tls_ssl_key {
	__u64 ssl;
	__u32 tgid;
	__u32 _pad;
};

/* Per thread, from the entry of an SSL call to its return. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TLS_MAX_CALLS);
	__type(key, __u64);
	__type(value, struct tls_call);
} tls_calls SEC(".maps");

/* (process, SSL *) -> the socket's address. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TLS_MAX_SSL);
	__type(key, struct tls_ssl_key);
	__type(value, __u64);
} tls_socks SEC(".maps");

/* Per thread, outside SSL calls (memory BIOs): the TLS socket it read last, and the SSL object
 * whose socket is not known yet that it used last. */
struct tls_thread {
	__u64 read_sk;
	__u64 pending_ssl;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TLS_MAX_CALLS);
	__type(key, __u64);
	__type(value, struct tls_thread);
} tls_threads SEC(".maps");

/* A TLS record header (RFC 8446 section 5.1): content type 20-24, legacy version 3.x, a length
 * within a record's limit. Any record: a connection first seen mid-way carries application data. */
static __always_inline bool is_tls_record(__u64 w)
{
	__u8 type = w & 0xff, major = (w >> 8) & 0xff, minor = (w >> 16) & 0xff;
	__u16 len = ((w >> 24) & 0xff) << 8 | ((w >> 32) & 0xff);

	return type >= 20 && type <= 24 && major == 3 && minor <= 4 && len > 0 && len <= 18432;
}

static __always_inline void tls_bind(__u64 ssl, __u64 sk)
{
	struct tls_ssl_key k = { .ssl = ssl, .tgid = bpf_get_current_pid_tgid() >> 32 };

	bpf_map_update_elem(&tls_socks, &k, &sk, BPF_ANY);
}

static __always_inline __u64 tls_sock_of(__u64 ssl)
{
	struct tls_ssl_key k = { .ssl = ssl, .tgid = bpf_get_current_pid_tgid() >> 32 };
	__u64 *sk = bpf_map_lookup_elem(&tls_socks, &k);

	return sk ? *sk : 0;
}

/* The socket hooks saw this thread move ciphertext on TLS socket sk. */
static __always_inline void tls_socket_io(__u64 sk, bool inbound)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_call *tc = bpf_map_lookup_elem(&tls_calls, &id);
	struct tls_thread *th, zero = {};

	if (tc) { /* inside an SSL call: this is its socket */
		if (tc->sk != sk) {
			tc->sk = sk;
			tls_bind(tc->ssl, sk);
		}
		return;
	}
	th = bpf_map_lookup_elem(&tls_threads, &id);
	if (!th) {
		if (!inbound)
			return;
		bpf_map_update_elem(&tls_threads, &id, &zero, BPF_ANY);
		th = bpf_map_lookup_elem(&tls_threads, &id);
		if (!th)
			return;
	}
	if (inbound) {
		th->read_sk = sk;
	} else if (th->pending_ssl) {
		tls_bind(th->pending_ssl, sk);
		th->pending_ssl = 0;
	}
}

/* Memory BIOs: a read call takes the TLS socket the thread read last (its ciphertext is what the
 * call decrypts); a later read call does not (the event loop may have moved on). */
static __always_inline __u64 tls_take_read_hint(void)
{
	__u64 id = bpf_get_current_pid_tgid(), sk;
	struct tls_thread *th = bpf_map_lookup_elem(&tls_threads, &id);

	if (!th)
		return 0;
	sk = th->read_sk;
	th->read_sk = 0;
	return sk;
}

/* The socket of an SSL call that returned: learned inside it, bound before, or (memory BIOs) the
 * TLS socket the thread read just before a read call that returned data; 0 when not known (the
 * object is remembered for the thread's next TLS write: a handshake message or a request). */
static __always_inline __u64 tls_call_sock(const struct tls_call *tc, bool got_data)
{
	__u64 id = bpf_get_current_pid_tgid(), sk;
	struct tls_thread *th;

	if (tc->sk)
		return tc->sk;
	sk = tls_sock_of(tc->ssl);
	if (sk)
		return sk;
	if (tc->op == TLS_OP_READ && got_data && tc->hint_sk) {
		tls_bind(tc->ssl, tc->hint_sk);
		return tc->hint_sk;
	}
	th = bpf_map_lookup_elem(&tls_threads, &id);
	if (th) {
		th->pending_ssl = tc->ssl;
	} else {
		struct tls_thread t = { .pending_ssl = tc->ssl };

		bpf_map_update_elem(&tls_threads, &id, &t, BPF_ANY);
	}
	return 0;
}

/* ---- Go crypto/tls ----
 * (*Conn).Write at its entry (the whole buffer is written), (*Conn).Read with uprobes at the entry
 * and at every RET (a uretprobe would rewrite the return address on a goroutine stack, which Go
 * moves). Go's register ABI (1.17):
 * the receiver in RAX, the slice in RBX (pointer) and RCX (length), the result n in RAX; R14
 * holds the goroutine, the key from entry to return (a goroutine that blocks in Read may come
 * back on another thread). The socket: tls.Conn.conn (an interface: its data word) -> the
 * net.TCPConn's netFD -> poll.FD.Sysfd, a descriptor of the process. */
struct go_call_key {
	__u64 g;
	__u32 tgid;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TLS_MAX_CALLS);
	__type(key, struct go_call_key);
	__type(value, struct tls_call);
} go_calls SEC(".maps");

#endif

/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Database and cache protocols on the socket layer: which one a connection's first bytes speak.
 * Found here, the connection's bytes are streamed to user space (HTTP_MODE_STREAM with the
 * protocol in http_conn.proto), where native/dbengine.c parses and pairs them.
 * Detection is by the protocol's own signature in the first 8 bytes of a syscall's data, never by
 * port; a signature only a request has sets the role (the side that wrote it is the client). */
#ifndef PODSCOPE_DB_BPF_H
#define PODSCOPE_DB_BPF_H

#include "http.h"

static __always_inline bool db_digit(__u8 c)
{
	return c >= '0' && c <= '9';
}

/* Redis (RESP): a command is an array of bulk strings, "*<n>\r\n$<len>\r\n" (n < 10000). */
static __always_inline bool db_is_redis_request(__u64 w)
{
	__u8 b[8];

	__builtin_memcpy(b, &w, 8);
	if (b[0] != '*' || b[1] < '1' || b[1] > '9')
		return false;
	if (b[2] == '\r')
		return b[3] == '\n' && b[4] == '$';
	if (!db_digit(b[2]))
		return false;
	if (b[3] == '\r')
		return b[4] == '\n' && b[5] == '$';
	if (!db_digit(b[3]))
		return false;
	if (b[4] == '\r')
		return b[5] == '\n' && b[6] == '$';
	return db_digit(b[4]) && b[5] == '\r' && b[6] == '\n' && b[7] == '$';
}

#define DB_W4(a, b, c, d) ((__u32)(a) | (__u32)(b) << 8 | (__u32)(c) << 16 | (__u32)(d) << 24)

/* memcached's text and meta protocols: a command in lower case and a space (or CRLF). Classic:
 * get gets gat gats set add cas replace append prepend delete incr decr touch; meta: mg ms md
 * ma mn me; and version, stats. */
static __always_inline bool db_is_memcached_request(__u64 w)
{
	__u32 lo = (__u32)w, hi = (__u32)(w >> 32);
	__u8 b4 = hi & 0xff, b5 = (hi >> 8) & 0xff, b6 = (hi >> 16) & 0xff;

	switch (lo) {
	case DB_W4('g', 'e', 't', ' '):
	case DB_W4('s', 'e', 't', ' '):
	case DB_W4('a', 'd', 'd', ' '):
	case DB_W4('c', 'a', 's', ' '):
	case DB_W4('g', 'a', 't', ' '):
		return true;
	case DB_W4('g', 'e', 't', 's'):
	case DB_W4('g', 'a', 't', 's'):
	case DB_W4('i', 'n', 'c', 'r'):
	case DB_W4('d', 'e', 'c', 'r'):
		return b4 == ' ';
	case DB_W4('d', 'e', 'l', 'e'):
		return (hi & 0xffffff) == DB_W4('t', 'e', ' ', 0);
	case DB_W4('t', 'o', 'u', 'c'):
		return b4 == 'h' && b5 == ' ';
	case DB_W4('r', 'e', 'p', 'l'):
		return hi == DB_W4('a', 'c', 'e', ' ');
	case DB_W4('a', 'p', 'p', 'e'):
		return b4 == 'n' && b5 == 'd' && b6 == ' ';
	case DB_W4('p', 'r', 'e', 'p'):
		return hi == DB_W4('e', 'n', 'd', ' ');
	case DB_W4('v', 'e', 'r', 's'):
		return hi == DB_W4('i', 'o', 'n', '\r');
	case DB_W4('s', 't', 'a', 't'):
		return b4 == 's' && (b5 == '\r' || b5 == ' ');
	}
	if ((lo & 0xff) != 'm' || (((lo >> 16) & 0xff) != ' ' && ((lo >> 16) & 0xff) != '\r'))
		return false;
	switch ((lo >> 8) & 0xff) { /* mg ms md ma mn me */
	case 'g':
	case 's':
	case 'd':
	case 'a':
	case 'n':
	case 'e':
		return true;
	}
	return false;
}

/* PostgreSQL: the client's first message, a StartupMessage (length, then protocol 3.0) or an
 * SSLRequest / GSSENCRequest (length 8, then its code). */
static __always_inline bool db_is_postgres_start(__u64 w)
{
	__u32 lo = (__u32)w, hi = (__u32)(w >> 32);
	__u32 len = bpf_ntohl(lo);

	if (hi == 0x00000300) /* 00 03 00 00: protocol 3.0 */
		return len >= 8 && len <= 10000;
	return len == 8 && (hi == 0x2f16d204 || hi == 0x3016d204); /* 80877103, 80877104 */
}

/* The protocol a request's first bytes speak (enum http_proto), 0 for none known. */
static __always_inline __u8 db_request_proto(__u64 w)
{
	if (db_is_redis_request(w))
		return HTTP_PROTO_REDIS;
	if (db_is_memcached_request(w))
		return HTTP_PROTO_MEMCACHED;
	if (db_is_postgres_start(w))
		return HTTP_PROTO_POSTGRES;
	return 0;
}

#endif

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

/* Byte i of the first eight, read from the word itself: no copy on the stack */
#define DB_B(w, i) ((__u8)((w) >> (8 * (i))))

/* Redis (RESP): a command is an array of bulk strings, "*<n>\r\n$<len>\r\n" (n < 10000). */
static __always_inline bool db_is_redis_request(__u64 w)
{
	if (DB_B(w, 0) != '*' || DB_B(w, 1) < '1' || DB_B(w, 1) > '9')
		return false;
	if (DB_B(w, 2) == '\r')
		return DB_B(w, 3) == '\n' && DB_B(w, 4) == '$';
	if (!db_digit(DB_B(w, 2)))
		return false;
	if (DB_B(w, 3) == '\r')
		return DB_B(w, 4) == '\n' && DB_B(w, 5) == '$';
	if (!db_digit(DB_B(w, 3)))
		return false;
	if (DB_B(w, 4) == '\r')
		return DB_B(w, 5) == '\n' && DB_B(w, 6) == '$';
	return db_digit(DB_B(w, 4)) && DB_B(w, 5) == '\r' && DB_B(w, 6) == '\n' &&
	       DB_B(w, 7) == '$';
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

static __always_inline bool db_letter(__u8 c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* PostgreSQL after its startup (a connection opened before the agent): a simple Query ('Q') or
 * a Parse of the unnamed statement ('P', then an empty name) that the data holds whole (length
 * under 1 MB), then a statement's first letters. */
static __always_inline bool db_is_postgres_query(__u64 w, int ret)
{
	__u32 len = (__u32)DB_B(w, 1) << 24 | (__u32)DB_B(w, 2) << 16 | (__u32)DB_B(w, 3) << 8 |
		    DB_B(w, 4);

	if (len < 8 || len >= (1u << 20) || len + 1 > (__u32)ret)
		return false;
	if (DB_B(w, 0) == 'Q')
		return db_letter(DB_B(w, 5)) && db_letter(DB_B(w, 6)) && db_letter(DB_B(w, 7));
	return DB_B(w, 0) == 'P' && DB_B(w, 5) == 0 && db_letter(DB_B(w, 6)) &&
	       db_letter(DB_B(w, 7));
}

/* MySQL/MariaDB: a COM_QUERY packet as a whole syscall (a connection whose login was not seen):
 * a 3-byte length that is the rest of the data, sequence 0, command 3, then a statement's first
 * letters (SELECT, insert, ...). */
static __always_inline bool db_is_mysql_query(__u64 w, int ret)
{
	return DB_B(w, 3) == 0 && DB_B(w, 4) == 0x03 && ret > 8 &&
	       (__u32)(w & 0xffffff) + 4 == (__u32)ret && db_letter(DB_B(w, 5)) &&
	       db_letter(DB_B(w, 6)) && db_letter(DB_B(w, 7));
}

/* MySQL/MariaDB: a COM_QUERY's body read alone (the server reads a packet's 4-byte header, then
 * its body): command 3, then a statement's first four letters in either case. */
static __always_inline bool db_is_mysql_query_body(__u64 w)
{
	__u32 word = (__u32)(w >> 8) | 0x20202020; /* bytes 1-4, letters in lower case */

	if ((w & 0xff) != 0x03)
		return false;
	switch (word) {
	case DB_W4('s', 'e', 'l', 'e'):
	case DB_W4('i', 'n', 's', 'e'):
	case DB_W4('u', 'p', 'd', 'a'):
	case DB_W4('d', 'e', 'l', 'e'):
	case DB_W4('r', 'e', 'p', 'l'):
	case DB_W4('b', 'e', 'g', 'i'):
	case DB_W4('c', 'o', 'm', 'm'):
	case DB_W4('r', 'o', 'l', 'l'):
	case DB_W4('s', 't', 'a', 'r'):
	case DB_W4('s', 'e', 't', ' '):
	case DB_W4('s', 'h', 'o', 'w'):
	case DB_W4('c', 'a', 'l', 'l'):
	case DB_W4('w', 'i', 't', 'h'):
		return true;
	}
	return false;
}

/* MySQL/MariaDB: the server's greeting, the connection's first bytes (the side that writes it is
 * the server): a packet under 1 KB at sequence 0, protocol 10, a version "<digit>.<...>". */
static __always_inline bool db_is_mysql_greeting(__u64 w)
{
	return DB_B(w, 2) == 0 && DB_B(w, 1) < 4 && (w & 0xffff) && DB_B(w, 3) == 0 &&
	       DB_B(w, 4) == 0x0a && db_digit(DB_B(w, 5)) &&
	       (DB_B(w, 6) == '.' || (db_digit(DB_B(w, 6)) && DB_B(w, 7) == '.'));
}

/* NATS: a client's CONNECT (its first line), or a PUB or HPUB of a connection met after its
 * start. */
static __always_inline bool db_is_nats_request(__u64 w)
{
	__u32 lo = (__u32)w, hi = (__u32)(w >> 32);

	if (lo == DB_W4('C', 'O', 'N', 'N'))
		return hi == DB_W4('E', 'C', 'T', ' ');
	return lo == DB_W4('P', 'U', 'B', ' ') ||
	       (lo == DB_W4('H', 'P', 'U', 'B') && (hi & 0xff) == ' ');
}

/* The protocol a server's first bytes speak (the side that writes them is the server): MySQL's
 * greeting; NATS's INFO (its first line), or a MSG delivered on a connection met mid-way. */
static __always_inline __u8 db_response_proto(__u64 w)
{
	__u32 lo = (__u32)w, hi = (__u32)(w >> 32);

	if (db_is_mysql_greeting(w))
		return HTTP_PROTO_MYSQL;
	if ((lo == DB_W4('I', 'N', 'F', 'O') && (hi & 0xffff) == (' ' | '{' << 8)) ||
	    lo == DB_W4('M', 'S', 'G', ' ') || (lo == DB_W4('H', 'M', 'S', 'G') && (hi & 0xff) == ' '))
		return HTTP_PROTO_NATS;
	return 0;
}

/* The protocol a request's first bytes speak (enum http_proto), 0 for none known. */
static __always_inline __u8 db_request_proto(__u64 w, int ret)
{
	if (db_is_redis_request(w))
		return HTTP_PROTO_REDIS;
	if (db_is_memcached_request(w))
		return HTTP_PROTO_MEMCACHED;
	if (db_is_postgres_start(w))
		return HTTP_PROTO_POSTGRES;
	if (db_is_mysql_query(w, ret) || db_is_mysql_query_body(w))
		return HTTP_PROTO_MYSQL;
	if (db_is_postgres_query(w, ret))
		return HTTP_PROTO_POSTGRES;
	if (db_is_nats_request(w))
		return HTTP_PROTO_NATS;
	return 0;
}

/* What a connection's bytes speak: the protocol, with DB_SERVER_WROTE set when they are a
 * server's (a greeting, a delivery: the side that wrote them is the server); 0 for none. Not
 * inlined: go_tls_ret's own frame is what v5.10 allows (512 bytes for the frames of its deepest
 * call chain, each rounded up to 32), and these checks inlined there took 8 more. */
#define DB_SERVER_WROTE 0x80
static __noinline __u8 db_detect(__u64 w, int ret)
{
	__u8 p = db_request_proto(w, ret);

	if (p)
		return p;
	p = db_response_proto(w);
	return p ? p | DB_SERVER_WROTE : 0;
}

#endif

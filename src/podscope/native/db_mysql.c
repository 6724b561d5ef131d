/* MySQL and MariaDB for the database engine (native/dbengine.c). */
#include "db.h"

#include <stdlib.h>

/* --- MySQL and MariaDB (the client/server protocol) ------------------------------------------ */

#define MY_CLIENT_COMPRESS 0x20u
#define MY_CLIENT_SSL 0x800u
#define MY_CLIENT_DEPRECATE_EOF 0x01000000u
#define MY_MORE_RESULTS 0x0008u

static const char *const my_commands[] = {
	[0x02] = "INIT_DB",  [0x04] = "FIELD_LIST", [0x05] = "CREATE_DB",
	[0x06] = "DROP_DB",  [0x07] = "REFRESH",    [0x08] = "SHUTDOWN",
	[0x09] = "STATISTICS", [0x0a] = "PROCESS_INFO", [0x0c] = "PROCESS_KILL",
	[0x0d] = "DEBUG",    [0x0e] = "PING",	     [0x11] = "CHANGE_USER",
	[0x1a] = "STMT_RESET", [0x1b] = "SET_OPTION", [0x1c] = "FETCH",
	[0x1f] = "RESET_CONNECTION",
};

static uint32_t le32(const uint8_t *b)
{
	return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* A length-encoded integer at *pos of n bytes (-1: not all there). */
static long long my_lenenc(const uint8_t *b, uint32_t n, uint32_t *pos)
{
	if (*pos >= n)
		return -1;
	uint8_t f = b[(*pos)++];
	uint32_t w = f < 0xfb ? 0 : f == 0xfc ? 2 : f == 0xfd ? 3 : f == 0xfe ? 8 : 99;
	if (w == 0)
		return f;
	if (w == 99 || *pos + w > n)
		return -1;
	unsigned long long v = 0;
	for (uint32_t i = 0; i < w; i++)
		v |= (unsigned long long)b[*pos + i] << (8 * i);
	*pos += w;
	return (long long)(v & 0x7fffffffffffffffULL);
}

/* The server status flags of an OK packet (0x00 or 0xfe) or an old EOF packet. */
static unsigned my_status_flags(const struct mydir *d)
{
	if (d->body_len && d->body[0] == 0xfe && d->pkt_len < 9) /* EOF: warnings, status */
		return d->body_len >= 5 ? d->body[3] | d->body[4] << 8 : 0;
	uint32_t pos = 1;
	if (my_lenenc(d->body, d->body_len, &pos) < 0 || my_lenenc(d->body, d->body_len, &pos) < 0 ||
	    pos + 2 > d->body_len)
		return 0;
	return d->body[pos] | d->body[pos + 1] << 8;
}

static int my_done(struct dbconn *c, uint64_t ts)
{
	struct mydir *d = &c->myresp;
	struct op *o = pop_op(c);
	if (o && !c->my_status_len && o->aux_len && o->cmd != 0x16) { /* INIT_DB, USE: agreed */
		memcpy(c->ns, o->aux, o->aux_len);
		c->ns_len = o->aux_len;
	}
	uint8_t sl = c->my_status_len;
	c->my_status_len = 0;
	c->my_state = MY_R_FIRST;
	uint64_t bytes = d->bytes;
	d->bytes = 0;
	if (!o)
		return 0;
	struct op done = *o;
	return finish(c, &done, ts, bytes, c->my_status, sl);
}

static void my_error(struct dbconn *c)
{
	const struct mydir *d = &c->myresp;
	if (d->body_len >= 3) {
		unsigned code = d->body[1] | d->body[2] << 8;
		c->my_status_len = (uint8_t)snprintf(c->my_status, sizeof(c->my_status), "%u", code);
	}
}

/* The end of a result set (an EOF or OK packet): another may follow (a procedure's, or several
 * statements in one query). */
static int my_result_end(struct dbconn *c, uint64_t ts)
{
	if (my_status_flags(&c->myresp) & MY_MORE_RESULTS) {
		c->my_state = MY_R_FIRST;
		return 0;
	}
	return my_done(c, ts);
}

/* A prepare's definitions: parameters, then columns; each list ends in an EOF packet unless
 * CLIENT_DEPRECATE_EOF was agreed (not known for a connection met after its login: then a
 * list ends with its count, and an EOF that comes after all is passed over). */
static int my_prepare_packet(struct dbconn *c, const struct mydir *d, uint64_t ts)
{
	int eof = d->body_len && d->body[0] == 0xfe && d->pkt_len == 5;
	if (eof) {
		c->my_deprecate_eof = 0;
		if (c->my_section == 1 && c->my_left == c->my_cols)
			return 0; /* the parameters' EOF, come after their count */
	} else {
		if (c->my_left)
			c->my_left--;
		if (c->my_left || c->my_deprecate_eof == 0)
			return 0; /* more definitions, or the list's EOF, to come */
		c->my_skip_eof = c->my_deprecate_eof < 0;
	}
	if (c->my_section == 0 && c->my_cols) {
		c->my_section = 1;
		c->my_left = c->my_cols;
		return 0;
	}
	return my_done(c, ts);
}

/* A whole server packet (its first MY_KEEP bytes) while commands are answered. */
static int my_response(struct dbconn *c, uint64_t ts)
{
	const struct mydir *d = &c->myresp;
	uint8_t t = d->body_len ? d->body[0] : 0;
	int eof_like = t == 0xfe && d->pkt_len < 0xffffff &&
		       (c->my_deprecate_eof != 0 || d->pkt_len < 9);
	if (c->my_skip_eof && c->my_state == MY_R_FIRST && t == 0xfe && d->pkt_len == 5) {
		c->my_skip_eof = 0; /* the last list's EOF of a prepare */
		c->myresp.bytes = 0;
		return 0;
	}
	c->my_skip_eof = 0;
	if (!c->count) { /* nothing asked: passed over, counted */
		c->myresp.bytes = 0;
		return bump((DbEngineObject *)c->engine, "mysql_unsolicited", 1);
	}
	struct op *o = &c->ops[c->head];
	switch (c->my_state) {
	case MY_R_FIRST:
		if (t == 0xff) {
			my_error(c);
			return my_done(c, ts);
		}
		if (t == 0x00 && o->cmd == 0x16 && d->body_len >= 9) { /* COM_STMT_PREPARE_OK */
			uint32_t id = le32(d->body + 1);
			struct pgstmt *st = pg_stmt(c, (const char *)&id, 4, 1);
			if (st) {
				memcpy(st->op, o->aux, o->aux_len);
				st->op_len = o->aux_len;
				memcpy(st->coll, o->coll, o->coll_len);
				st->coll_len = o->coll_len;
				stmt_query(st, o->query, o->query_len);
			}
			c->my_last_stmt = id;
			c->my_cols = d->body[5] | d->body[6] << 8;
			c->my_left = d->body[7] | d->body[8] << 8;
			c->my_section = 0;
			if (!c->my_left) {
				c->my_section = 1;
				c->my_left = c->my_cols;
			}
			if (!c->my_left)
				return my_done(c, ts);
			c->my_state = MY_R_PREPARE;
			return 0;
		}
		if (t == 0x00)
			return my_result_end(c, ts);
		if (t == 0xfb && (o->cmd == 0x03)) {
			c->my_state = MY_R_INFILE;
			return 0;
		}
		if (t == 0xfe && o->cmd == 0x11) {
			c->my_state = MY_R_AUTH; /* an authentication switch */
			return 0;
		}
		if (o->cmd == 0x03 || o->cmd == 0x17) { /* a result set: its column count */
			uint32_t pos = 0;
			long long n = my_lenenc(d->body, d->body_len, &pos);
			if (n <= 0)
				return desync(c, "mysql_bad_column_count");
			/* MariaDB's metadata cache: a byte after the count says whether definitions
			 * follow */
			int defs = !(pos + 1 == d->pkt_len && pos < d->body_len && d->body[pos] == 0);
			c->my_left = defs ? (uint64_t)n : 0;
			c->my_state = defs ? MY_R_COLS : MY_R_COLS_END;
			return 0;
		}
		if (o->cmd == 0x1c) { /* COM_STMT_FETCH: rows */
			c->my_state = MY_R_ROWS;
			return eof_like ? my_result_end(c, ts) : 0;
		}
		if (o->cmd == 0x04) {
			c->my_state = MY_R_LIST;
			return eof_like ? my_done(c, ts) : 0;
		}
		return my_done(c, ts); /* one packet: a string, an EOF */
	case MY_R_COLS:
		if (--c->my_left == 0)
			c->my_state = MY_R_COLS_END;
		return 0;
	case MY_R_COLS_END:
		if (t == 0xfe && d->pkt_len == 5) { /* the columns' EOF: rows follow */
			c->my_deprecate_eof = 0;
			c->my_state = MY_R_ROWS;
			return 0;
		}
		if (t == 0xff) {
			my_error(c);
			return my_done(c, ts);
		}
		if (t == 0xfe && d->pkt_len < 0xffffff) { /* no rows, and no EOF before them */
			c->my_deprecate_eof = 1;
			return my_result_end(c, ts);
		}
		c->my_state = MY_R_ROWS;
		return 0;
	case MY_R_ROWS:
		if (t == 0xff) {
			my_error(c);
			return my_done(c, ts);
		}
		return eof_like ? my_result_end(c, ts) : 0;
	case MY_R_PREPARE:
		return my_prepare_packet(c, d, ts);
	case MY_R_INFILE:
	case MY_R_AUTH:
		if (t == 0xff)
			my_error(c);
		return (t == 0x00 || t == 0xff) ? my_done(c, ts) : 0;
	case MY_R_LIST:
		if (t == 0xff)
			my_error(c);
		return (t == 0xff || eof_like) ? my_done(c, ts) : 0;
	}
	return 0;
}

/* A whole client packet at sequence 0: a command. */
static int my_command(struct dbconn *c, uint64_t ts)
{
	struct mydir *d = &c->myreq;
	const char *b = (const char *)d->body;
	uint32_t n = d->body_len;
	uint8_t cmd = n ? d->body[0] : 0;
	char op[OP_MAX];
	uint8_t len = 0;
	const char *name = op, *sql = NULL;
	uint32_t sql_n = 0;
	struct pgstmt *st = NULL;
	switch (cmd) {
	case 0x01: /* COM_QUIT, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE: no answer */
	case 0x18:
	case 0x19:
		d->bytes = 0;
		return 0;
	case 0x03: { /* COM_QUERY; with query attributes (MySQL 8), none: 0x00 0x01 first */
		uint32_t at = (n >= 3 && b[1] == 0 && b[2] == 1) ? 3 : 1;
		sql = b + at;
		sql_n = n > at ? n - at : 0;
		sql_op(sql, sql_n, op, &len);
		break;
	}
	case 0x16: /* COM_STMT_PREPARE */
		name = "PREPARE";
		len = 7;
		break;
	case 0x17: { /* COM_STMT_EXECUTE: the statement's own operation */
		uint32_t id = n >= 5 ? le32(d->body + 1) : 0;
		if (id == 0xffffffffu) /* MariaDB: the statement just prepared */
			id = c->my_last_stmt;
		st = pg_stmt(c, (const char *)&id, 4, 0);
		if (st && st->op_len) {
			memcpy(op, st->op, st->op_len);
			len = st->op_len;
		} else {
			name = "EXECUTE";
			len = 7;
		}
		break;
	}
	case 0x12: /* COM_BINLOG_DUMP: a replica's stream, not operations */
	case 0x1e:
		c->opaque = 1;
		return bump((DbEngineObject *)c->engine, "mysql_replication", 1);
	default:
		name = cmd < sizeof(my_commands) / sizeof(my_commands[0]) && my_commands[cmd] ?
			       my_commands[cmd] :
			       "_OTHER";
		len = (uint8_t)strlen(name);
	}
	if (push_op(c, name, len, ts, d->bytes))
		return -1;
	d->bytes = 0;
	struct op *o = newest_op(c);
	if (!o)
		return 0;
	o->cmd = cmd;
	if (cmd == 0x16) { /* the statement's own operation and table, for its executions */
		sql_op(b + 1, n > 1 ? n - 1 : 0, o->aux, &o->aux_len);
		sql_collection(b + 1, n > 1 ? n - 1 : 0, o->aux, o->aux_len, o->coll, &o->coll_len);
		if (records_on(c))
			o->query_len = sql_normalise(b + 1, n > 1 ? n - 1 : 0, 1, o->query);
	} else if (st && st->op_len) {
		memcpy(o->coll, st->coll, st->coll_len);
		o->coll_len = st->coll_len;
		if (st->query_len)
			memcpy(o->query, st->query, st->query_len);
		o->query_len = st->query_len;
	} else if (sql && sql_word_is(op, len, "USE")) { /* the database, if the server agrees */
		uint8_t k = 0;
		sql_collection(sql, sql_n, "UPDATE", 6, o->aux, &k); /* the name after the keyword */
		o->aux_len = k;
	} else if (sql) {
		sql_collection(sql, sql_n, op, len, o->coll, &o->coll_len);
	}
	if (sql && records_on(c))
		o->query_len = sql_normalise(sql, sql_n, 1, o->query); else if (cmd == 0x02 && n > 1 && n - 1 <= OP_MAX) { /* COM_INIT_DB */
		memcpy(o->aux, b + 1, n - 1);
		o->aux_len = (uint8_t)(n - 1);
	}
	return 0;
}

/* The server's greeting (protocol 10): its capabilities. */
static void my_greeting(struct dbconn *c)
{
	const struct mydir *d = &c->myresp;
	uint32_t v = (uint32_t)strnlen((const char *)d->body + 1, d->body_len - 1);
	uint32_t at = 1 + v + 1 + 4 + 8 + 1; /* version, its NUL, thread id, scramble, filler */
	c->my_phase = MY_LOGIN;
	if (at + 2 <= d->body_len)
		c->my_server_caps = d->body[at] | d->body[at + 1] << 8;
	if (at + 7 <= d->body_len)
		c->my_server_caps |= (uint32_t)(d->body[at + 5] | d->body[at + 6] << 8) << 16;
}

/* The database a handshake response names (CLIENT_CONNECT_WITH_DB): after the user's name and
 * the authentication data. */
static void my_login_database(struct dbconn *c, uint32_t caps)
{
	const struct mydir *d = &c->myreq;
	uint32_t n = d->body_len, at = 32;
	if (!(caps & 0x8u) || at >= n)
		return;
	at += (uint32_t)strnlen((const char *)d->body + at, n - at) + 1; /* the user */
	if (caps & 0x200000u) { /* CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA */
		long long l = my_lenenc(d->body, n, &at);
		if (l < 0)
			return;
		at += (uint32_t)(l < n ? l : n);
	} else if (caps & 0x8000u) { /* CLIENT_SECURE_CONNECTION */
		if (at >= n)
			return;
		at += 1 + d->body[at];
	} else {
		at += (uint32_t)strnlen((const char *)d->body + at, n > at ? n - at : 0) + 1;
	}
	if (at >= n)
		return;
	size_t l = strnlen((const char *)d->body + at, n - at);
	if (at + l < n && l <= OP_MAX) { /* whole within the bytes kept */
		memcpy(c->ns, d->body + at, l);
		c->ns_len = (uint8_t)l;
	}
}

/* A whole packet. */
static int my_packet(struct dbconn *c, int request, uint64_t ts)
{
	struct mydir *d = request ? &c->myreq : &c->myresp;
	int cont = d->cont;
	d->cont = d->next_cont;
	if (cont)
		return 0; /* the rest of a packet of 16 MB or more: its start was looked at */
	if (c->my_phase == MY_UNKNOWN) {
		if (!request && d->seq == 0 && d->body_len && d->body[0] == 0x0a) {
			my_greeting(c);
			d->bytes = 0;
			return 0;
		}
		if (!request) { /* before the first command, met after the connection's start */
			d->bytes = 0;
			return 0;
		}
		c->my_phase = d->seq == 0 ? MY_COMMANDS : MY_LOGIN;
	}
	if (c->my_phase == MY_LOGIN) {
		if (request && d->seq == 1 && d->body_len >= 4) { /* the handshake response */
			uint32_t caps = le32(d->body) & (c->my_server_caps ? c->my_server_caps : ~0u);
			if (caps & MY_CLIENT_SSL && d->pkt_len == 32) {
				c->opaque = 1;
				return bump((DbEngineObject *)c->engine, "mysql_encrypted", 1);
			}
			if (caps & MY_CLIENT_COMPRESS) {
				c->opaque = 1;
				return bump((DbEngineObject *)c->engine, "mysql_compressed", 1);
			}
			if (c->my_server_caps)
				c->my_deprecate_eof = (caps & MY_CLIENT_DEPRECATE_EOF) != 0;
			my_login_database(c, le32(d->body));
		}
		if (!request && d->body_len && (d->body[0] == 0x00 || d->body[0] == 0xff))
			c->my_phase = MY_COMMANDS; /* logged in (or refused: the server closes) */
		d->bytes = 0;
		return 0;
	}
	if (!request)
		return my_response(c, ts);
	if (d->seq != 0) { /* a file for LOAD DATA LOCAL, authentication data */
		return 0;
	}
	return my_command(c, ts);
}

int my_feed(struct dbconn *c, int request, const uint8_t *p, size_t n, uint64_t uncaptured,
	    uint64_t ts)
{
	struct mydir *d = request ? &c->myreq : &c->myresp;
	size_t pos = 0;
	if (c->opaque)
		return 0;
	if (request && c->my_phase == MY_UNKNOWN && !d->hdr_len && !d->body_left && n >= 4 &&
	    p[0] == 0x03 && ((p[1] | 0x20) >= 'a' && (p[1] | 0x20) <= 'z') && p[3] != 0) {
		/* a COM_QUERY's body, read after its header: the kernel found the connection here
		 * (a header has the sequence 0 at its fourth byte) */
		d->pkt_len = (uint32_t)(n + uncaptured);
		d->seq = 0;
		d->next_cont = 0;
		d->body_len = 0;
		d->body_left = d->pkt_len;
		d->bytes += 4;
	}
	while (pos < n) {
		if (d->body_left) {
			pos += take_body(p + pos, n - pos, d->body, MY_KEEP, &d->body_len,
					 &d->body_left, &d->bytes);
			if (!d->body_left && my_packet(c, request, ts))
				return -1;
			if (c->opaque)
				return 0;
			continue;
		}
		while (d->hdr_len < 4 && pos < n)
			d->hdr[d->hdr_len++] = p[pos++];
		if (d->hdr_len < 4)
			break;
		d->hdr_len = 0;
		d->pkt_len = d->hdr[0] | d->hdr[1] << 8 | (uint32_t)d->hdr[2] << 16;
		d->seq = d->hdr[3];
		d->next_cont = d->pkt_len == 0xffffff;
		d->body_len = 0;
		d->body_left = d->pkt_len;
		d->bytes += 4;
		if (!d->body_left && my_packet(c, request, ts))
			return -1;
	}
	if (uncaptured) {
		if (d->body_left >= uncaptured) { /* inside a large packet (a row, a long query) */
			d->body_left -= uncaptured;
			d->bytes += uncaptured;
			if (!d->body_left && my_packet(c, request, ts))
				return -1;
		} else if (request) {
			return desync(c, "db_bytes_not_captured");
		} else {
			c->reply_lost = 1;
			c->lost_ts = ts;
			c->lost_bytes = d->bytes + uncaptured;
			memset(d, 0, sizeof(*d));
			c->my_state = MY_R_FIRST;
		}
	}
	return 0;
}

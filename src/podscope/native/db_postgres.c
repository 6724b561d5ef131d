/* PostgreSQL (protocol 3) for the database engine (native/dbengine.c). */
#include "db.h"

#include <stdlib.h>

/* --- PostgreSQL (protocol 3) ----------------------------------------------------------------- */

/* A whole message (its first PG_KEEP bytes in d->body). */
static int pg_message(struct dbconn *c, int request, char type, uint64_t ts)
{
	struct pgdir *d = request ? &c->preq : &c->presp;
	const char *b = d->body;
	size_t n = d->body_len;
	if (request) {
		switch (type) {
		case 'Q': { /* a simple query: one operation, answered by ReadyForQuery */
			char op[OP_MAX];
			uint8_t len;
			sql_op(b, n, op, &len);
			if (push_op(c, op, len, ts, d->bytes))
				return -1;
			struct op *o = newest_op(c);
			if (o)
				sql_collection(b, n, op, len, o->coll, &o->coll_len);
			if (o && records_on(c))
				o->query_len = sql_normalise(b, n, 0, o->query);
			d->bytes = 0;
			return 0;
		}
		case 'P': { /* Parse: a statement's name, then its SQL */
			size_t nl = strnlen(b, n);
			char op[OP_MAX];
			uint8_t len = 0;
			c->batch_coll_len = 0;
			if (nl < n) {
				sql_op(b + nl + 1, n - nl - 1, op, &len);
				sql_collection(b + nl + 1, n - nl - 1, op, len, c->batch_coll,
					       &c->batch_coll_len);
			}
			c->batch_query_len = nl < n && records_on(c) ?
				sql_normalise(b + nl + 1, n - nl - 1, 0, c->batch_query) : 0;
			memcpy(c->batch_op, op, len);
			c->batch_op_len = len;
			c->batch_parsed = 1;
			struct pgstmt *st = pg_stmt(c, b, nl, 1);
			if (st) {
				memcpy(st->op, op, len);
				st->op_len = len;
				memcpy(st->coll, c->batch_coll, c->batch_coll_len);
				st->coll_len = c->batch_coll_len;
				stmt_query(st, c->batch_query, c->batch_query_len);
			}
			return 0;
		}
		case 'B': { /* Bind: a portal's name, then the statement's */
			size_t pl = strnlen(b, n);
			if (pl < n && !c->batch_op_len) {
				const char *sn = b + pl + 1;
				struct pgstmt *st = pg_stmt(c, sn, strnlen(sn, n - pl - 1), 0);
				if (st) {
					memcpy(c->batch_op, st->op, st->op_len);
					c->batch_op_len = st->op_len;
					memcpy(c->batch_coll, st->coll, st->coll_len);
					c->batch_coll_len = st->coll_len;
					if (st->query_len)
						memcpy(c->batch_query, st->query, st->query_len);
					c->batch_query_len = st->query_len;
				}
			}
			return 0;
		}
		case 'E':
			c->batch_executed = 1;
			return 0;
		case 'S': { /* Sync: what was sent since the last one is one operation; a statement
			     * only prepared (PQprepare) is PREPARE; a Sync alone is answered too */
			int prepare = c->batch_parsed && !c->batch_executed;
			int silent = !c->batch_parsed && !c->batch_executed;
			if (push_op(c, prepare ? "PREPARE" : c->batch_op,
				    prepare ? 7 : c->batch_op_len, ts, d->bytes))
				return -1;
			struct op *o = newest_op(c);
			if (o && silent)
				o->silent = 1;
			if (o && !prepare) {
				memcpy(o->coll, c->batch_coll, c->batch_coll_len);
				o->coll_len = c->batch_coll_len;
			}
			if (o && !silent) {
				memcpy(o->query, c->batch_query, c->batch_query_len);
				o->query_len = c->batch_query_len;
			}
			c->batch_op_len = c->batch_parsed = c->batch_executed = 0;
			c->batch_coll_len = c->batch_query_len = 0;
			d->bytes = 0;
			return 0;
		}
		default: /* Execute, Describe, Close, Flush, copy data, passwords: part of it */
			return 0;
		}
	}
	switch (type) {
	case 'E': /* ErrorResponse: fields of a code byte and a string; C is the SQLSTATE */
		for (size_t i = 0; i < n && b[i];) {
			size_t l = strnlen(b + i + 1, n - i - 1);
			if (b[i] == 'C' && l <= sizeof(d->status)) {
				memcpy(d->status, b + i + 1, l);
				d->status_len = (uint8_t)l;
				break;
			}
			i += l + 2;
		}
		return 0;
	case 'Z': { /* ReadyForQuery: the operation is done (the first one follows the login) */
		struct op *o = pop_op(c);
		uint8_t sl = d->status_len;
		d->status_len = 0;
		if (!o) {
			d->bytes = 0;
			return 0;
		}
		struct op done = *o;
		int r = done.silent ? 0 : finish(c, &done, ts, d->bytes, d->status, sl);
		d->bytes = 0;
		return r;
	}
	default:
		return 0;
	}
}

/* A message is whole: a typed one is looked at; the client's first (untyped) one is the startup
 * message, or an SSLRequest or GSSENCRequest after which the startup comes again. */
static int pg_done(struct dbconn *c, struct pgdir *d, int request, uint64_t ts)
{
	if (d->started)
		return pg_message(c, request, (char)d->hdr[0], ts);
	const uint8_t *b = (const uint8_t *)d->body;
	uint32_t code = d->body_len >= 4 ? (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 |
						   (uint32_t)b[2] << 8 | b[3] : 0;
	if (d->body_len == 4 && (code == 80877103 || code == 80877104)) {
		d->ssl_asked = 1; /* one byte answers; the startup message follows */
		return 0;
	}
	d->started = 1;
	/* the startup's parameters, names and values: the database (by default the user's name) */
	const char *kv = d->body + 4, *end = d->body + d->body_len;
	while (kv < end && *kv) {
		size_t kl = strnlen(kv, (size_t)(end - kv));
		const char *v = kv + kl + 1;
		if (v >= end)
			break;
		size_t vl = strnlen(v, (size_t)(end - v));
		if (v + vl >= end) /* cut at the bytes kept */
			break;
		int db = kl == 8 && !memcmp(kv, "database", 8);
		if ((db || (kl == 4 && !memcmp(kv, "user", 4) && !c->ns_len)) && vl <= OP_MAX) {
			memcpy(c->ns, v, vl);
			c->ns_len = (uint8_t)vl;
		}
		if (db)
			break;
		kv = v + vl + 1;
	}
	return 0;
}

/* A startup message, SSLRequest or GSSENCRequest: a length, then protocol 3.0 or the code. */
static int pg_startup_like(const uint8_t *p)
{
	uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
	uint32_t code = (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
	return (code == 0x00030000 && len >= 8 && len <= 10000) ||
	       (len == 8 && (code == 80877103 || code == 80877104));
}

int pg_feed(struct dbconn *c, int request, const uint8_t *p, size_t n,
	    uint64_t uncaptured, uint64_t ts)
{
	struct pgdir *d = request ? &c->preq : &c->presp;
	size_t pos = 0;
	if (c->opaque)
		return 0;
	if (!request && c->preq.ssl_asked && n) { /* one byte: S (or G) encrypts, N does not */
		c->preq.ssl_asked = 0;
		if (p[0] != 'N') {
			c->opaque = 1;
			return bump((DbEngineObject *)c->engine, "postgres_encrypted", 1);
		}
		pos = 1;
	}
	if (request && !d->started && !d->hdr_len && !d->body_left && n - pos >= 8 &&
	    !pg_startup_like(p + pos))
		d->started = 1; /* met after its start (the engine forgot it while idle) */
	while (pos < n) {
		if (d->body_left) {
			pos += take_body(p + pos, n - pos, d->body, PG_KEEP, &d->body_len,
					 &d->body_left, &d->bytes);
			if (!d->body_left && pg_done(c, d, request, ts))
				return -1;
			continue;
		}
		/* a header: the client's first message has only the length */
		uint32_t need = (request && !d->started) ? 4 : 5;
		while (d->hdr_len < need && pos < n)
			d->hdr[d->hdr_len++] = p[pos++];
		if (d->hdr_len < need)
			break;
		const uint8_t *l = d->hdr + (need - 4);
		uint32_t len = (uint32_t)l[0] << 24 | (uint32_t)l[1] << 16 | (uint32_t)l[2] << 8 | l[3];
		if (len < 4 || len > (1u << 30))
			return desync(c, "postgres_bad_length");
		if (need == 5 && !((d->hdr[0] >= 'A' && d->hdr[0] <= 'Z') ||
				   (d->hdr[0] >= 'a' && d->hdr[0] <= 'z') ||
				   (d->hdr[0] >= '1' && d->hdr[0] <= '3')))
			return desync(c, "postgres_bad_type");
		d->bytes += need;
		d->hdr_len = 0;
		d->body_len = 0;
		d->body_left = len - 4;
		if (!d->body_left && pg_done(c, d, request, ts))
			return -1;
	}
	if (uncaptured) {
		if (d->body_left >= uncaptured) { /* inside a large message (rows, COPY data) */
			d->body_left -= uncaptured;
			d->bytes += uncaptured;
			if (!d->body_left && pg_done(c, d, request, ts))
				return -1;
		} else if (request) {
			return desync(c, "db_bytes_not_captured");
		} else {
			c->reply_lost = 1;
			c->lost_ts = ts;
			c->lost_bytes = d->bytes + uncaptured;
			memset(d, 0, sizeof(*d));
			d->started = 1;
		}
	}
	return 0;
}

/* Redis (RESP2 and RESP3) for the database engine (native/dbengine.c). */
#include "db.h"

#include <stdlib.h>

/* --- RESP (Redis) -------------------------------------------------------------------------- */

long long resp_int(const char *s, uint32_t n, int *ok)
{
	long long v = 0;
	int neg = 0;
	uint32_t i = 0;
	*ok = 0;
	if (i < n && (s[i] == '-' || s[i] == '+'))
		neg = s[i++] == '-';
	if (i == n || n - i > 18)
		return 0;
	for (; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return 0;
		v = v * 10 + (s[i] - '0');
	}
	*ok = 1;
	return neg ? -v : v;
}

static void upper_into(char *dst, uint8_t *len, const char *src, size_t n)
{
	if (n > OP_MAX)
		n = OP_MAX;
	for (size_t i = 0; i < n; i++) {
		char ch = src[i];
		dst[i] = (ch >= 'a' && ch <= 'z') ? (char)(ch - 32) : ch;
	}
	*len = (uint8_t)n;
}

static int is_subscribe(const struct resp *r)
{
	return (r->name_len == 9 && !memcmp(r->name, "SUBSCRIBE", 9)) ||
	       (r->name_len == 10 && !memcmp(r->name, "PSUBSCRIBE", 10)) ||
	       (r->name_len == 10 && !memcmp(r->name, "SSUBSCRIBE", 10));
}

/* A whole top-level value of one side. */
static int resp_value(struct dbconn *c, struct resp *r, int request, uint64_t ts)
{
	if (request) {
		if (!r->is_cmd && !r->name_len)
			return 0; /* an empty command (a bare CRLF, an empty array): no reply follows */
		if (c->pubsub)
			return 0; /* (UN)SUBSCRIBE, PING in subscribed mode: messages, not replies */
		if (push_op(c, r->name, r->name_len, ts, r->bytes))
			return -1;
		if (is_subscribe(r))
			c->pubsub = 1; /* replies from here on are confirmations and messages */
		return 0;
	}
	if (r->kind) /* a push (out of band) or an attribute (the reply follows) */
		return 0;
	struct op *o = pop_op(c);
	if (!o) {
		if (c->pubsub)
			return 0;
		return bump((DbEngineObject *)c->engine, "db_unrequested_reply", 1);
	}
	struct op done = *o;
	if (c->pubsub) /* the subscription's first confirmation answers it; the rest is messages */
		c->head = c->count = 0;
	return finish(c, &done, ts, r->bytes, r->error ? r->name : "", r->error ? r->name_len : 0);
}

/* An element of the current value is complete: close the aggregates it completes. 1: the
 * top-level value is complete. */
static int resp_element(struct resp *r)
{
	while (r->depth) {
		if (--r->left[r->depth - 1])
			return 0;
		r->depth--;
	}
	return 1;
}

/* An aggregate of n elements opens (n <= 0: it is an element itself, complete). */
static int resp_open(struct resp *r, long long n, int *done)
{
	*done = 0;
	if (n <= 0) {
		*done = resp_element(r);
		return 0;
	}
	if (r->depth >= DEPTH_MAX)
		return -1;
	r->left[r->depth++] = (uint64_t)n;
	return 0;
}

/* One line of a side (its type byte first, CRLF stripped). 0, 1 (a value is complete), or -1
 * (not RESP). */
static int resp_line(struct resp *r, int request, const char *s, uint32_t n)
{
	int ok = 1, done = 0;
	int top = !r->depth;
	if (!n)
		return request && top ? 1 : -1; /* requests: an empty inline command */
	char t = s[0];
	long long v = 0;
	if (strchr("*$%~>|!=(:,#", t))
		v = resp_int(s + 1, n - 1, &ok);
	if (request) {
		if (t == '*') {
			if (!ok)
				return -1;
			if (top) {
				r->want_name = 1;
				r->is_cmd = v > 0;
			}
			return resp_open(r, v, &done) ? -1 : done;
		}
		if (t == '$') {
			if (!ok)
				return -1;
			if (v < 0) {
				r->want_name = 0;
				return resp_element(r);
			}
			r->skip = (uint64_t)v + 2;
			return 0;
		}
		if (!top)
			return -1;
		/* an inline command: its first word names it */
		uint32_t w = 0;
		while (w < n && s[w] != ' ')
			w++;
		upper_into(r->name, &r->name_len, s, w);
		return 1;
	}
	if (top)
		r->kind = t == '>' ? 1 : t == '|' ? 2 : 0;
	switch (t) {
	case '-': { /* an error: its first word is the status (ERR, WRONGTYPE, MOVED...) */
		uint32_t w = 1;
		while (w < n && s[w] != ' ')
			w++;
		if (top) {
			r->error = 1;
			memcpy(r->name, s + 1, w - 1 < OP_MAX ? w - 1 : OP_MAX);
			r->name_len = (uint8_t)(w - 1 < OP_MAX ? w - 1 : OP_MAX);
		}
		return resp_element(r);
	}
	case '+':
	case '_':
		return resp_element(r);
	case ':':
	case ',':
	case '#':
	case '(':
		return ok ? resp_element(r) : -1;
	case '$':
	case '!':
	case '=':
		if (!ok)
			return -1;
		if (v < 0)
			return resp_element(r);
		if (t == '!' && top) {
			r->error = 1; /* a blob error: its first word, read from the payload */
			r->want_name = 1;
		}
		r->skip = (uint64_t)v + 2;
		return 0;
	case '*':
	case '~':
	case '>':
		return ok && !resp_open(r, v, &done) ? done : -1;
	case '%':
	case '|':
		return ok && v < (1LL << 40) && !resp_open(r, v * 2, &done) ? done : -1;
	default:
		return -1;
	}
}

/* One side's bytes (n of them captured, then `uncaptured` more that were not). */
int resp_feed(struct dbconn *c, int request, const uint8_t *p, size_t n,
	      uint64_t uncaptured, uint64_t ts)
{
	struct resp *r = request ? &c->req : &c->resp;
	size_t pos = 0;
	while (pos < n) {
		if (!r->in_value) { /* a top-level value begins */
			r->in_value = 1;
			r->bytes = 0;
			r->name_len = 0;
			r->want_name = r->is_cmd = r->kind = r->error = 0;
		}
		if (r->skip) { /* a bulk string's payload: its first bytes may name the command */
			size_t take = r->skip < n - pos ? (size_t)r->skip : n - pos;
			if (r->want_name && r->skip > 2) { /* a piece of it: the name may span syscalls */
				size_t body = r->skip - 2 < take ? (size_t)(r->skip - 2) : take;
				for (size_t i = 0; i < body && r->name_len < OP_MAX; i++) {
					char ch = (char)p[pos + i];
					if (!request && ch == ' ') { /* a blob error: its first word */
						r->want_name = 0;
						break;
					}
					r->name[r->name_len++] =
						request && ch >= 'a' && ch <= 'z' ? (char)(ch - 32) : ch;
				}
			}
			r->skip -= take;
			r->bytes += take;
			pos += take;
			if (!r->skip) {
				r->want_name = 0;
				if (resp_element(r)) {
					r->in_value = 0;
					if (resp_value(c, r, request, ts))
						return -1;
				}
			}
			continue;
		}
		int whole;
		size_t used = take_line(p + pos, n - pos, r->line, RESP_LINE, &r->line_len,
					&r->line_over, &whole);
		r->bytes += used;
		pos += used;
		if (!whole)
			break;
		uint32_t ll = r->line_len;
		if (ll && r->line[ll - 1] == '\r')
			ll--;
		else if (!r->line_over && (request ? r->depth || (ll && r->line[0] == '*') : 1))
			return desync(c, "redis_bad_line"); /* RESP lines end in CRLF */
		int got = resp_line(r, request, r->line, ll);
		r->line_len = r->line_over = 0;
		if (got < 0)
			return desync(c, "redis_not_resp");
		if (got) {
			r->in_value = 0;
			if (resp_value(c, r, request, ts))
				return -1;
		}
	}
	if (uncaptured) {
		if (r->skip >= uncaptured) { /* inside a large value: passed over as it would be */
			r->skip -= uncaptured;
			r->bytes += uncaptured;
			if (!r->skip) {
				r->want_name = 0;
				if (resp_element(r)) {
					r->in_value = 0;
					if (resp_value(c, r, request, ts))
						return -1;
				}
			}
		} else if (request) {
			/* a request larger than the kernel copies (MSET of thousands of keys): it is
			 * whole at this syscall's end, as requests almost always are */
			r->bytes += uncaptured;
			if (r->in_value && (r->is_cmd || r->name_len) && resp_value(c, r, 1, ts))
				return -1;
			memset(r, 0, sizeof(*r));
		} else {
			/* a reply larger than the kernel copies (LRANGE, KEYS, COMMAND DOCS): what is
			 * answered ends with the last bytes read before the client's next request */
			c->reply_lost = 1;
			c->lost_ts = ts;
			c->lost_bytes = r->bytes + uncaptured;
			memset(r, 0, sizeof(*r));
		}
	}
	return 0;
}

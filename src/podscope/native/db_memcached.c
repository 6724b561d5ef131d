/* memcached (text and meta protocols) for the database engine (native/dbengine.c). */
#include "db.h"

#include <stdlib.h>

/* --- memcached (text and meta protocols) ----------------------------------------------------- */

/* The n-th space-separated token of a line (0: the command), its length in *len; NULL if none. */
const char *mc_token(const char *s, uint32_t n, int idx, uint32_t *len)
{
	uint32_t i = 0;
	for (int t = 0;; t++) {
		while (i < n && s[i] == ' ')
			i++;
		if (i >= n)
			return NULL;
		uint32_t start = i;
		while (i < n && s[i] != ' ')
			i++;
		if (t == idx) {
			*len = i - start;
			return s + start;
		}
	}
}

int mc_is(const char *w, uint32_t n, const char *want)
{
	size_t l = strlen(want);
	return n == l && !memcmp(w, want, l);
}

long long mc_num(const char *w, uint32_t n)
{
	int ok;
	long long v = w ? resp_int(w, n, &ok) : 0;
	return w && ok && v >= 0 ? v : -1;
}

/* The idx-th token as a number (-1: none, or not a number). */
long long mc_num_at(const char *s, uint32_t n, int idx)
{
	uint32_t len = 0;
	const char *w = mc_token(s, n, idx, &len);
	return mc_num(w, len);
}

/* The last token is "noreply" (classic), or a meta command has the q (quiet) flag: no response
 * comes unless there is something to say, so the request is not paired. */
static int mc_quiet(const char *s, uint32_t n, int meta)
{
	uint32_t len;
	const char *w;
	int last = -1;
	for (int i = 1; (w = mc_token(s, n, i, &len)); i++) {
		last = i;
		if (meta && len == 1 && w[0] == 'q')
			return 1;
	}
	if (last < 1)
		return 0;
	w = mc_token(s, n, last, &len);
	return !meta && mc_is(w, len, "noreply");
}

/* A request line: the command, and the data block that follows (storage commands). 0, or -1
 * (not memcached). */
static int mc_request_line(struct mcdir *d, const char *s, uint32_t n)
{
	uint32_t cl;
	const char *cmd = mc_token(s, n, 0, &cl);
	if (!cmd)
		return -1;
	for (uint32_t i = 0; i < cl; i++)
		if (!((cmd[i] >= 'a' && cmd[i] <= 'z') || cmd[i] == '_'))
			return -1;
	d->name_len = (uint8_t)(cl < OP_MAX ? cl : OP_MAX);
	memcpy(d->name, cmd, d->name_len);
	int meta = cl == 2 && cmd[0] == 'm';
	d->reply = !mc_quiet(s, n, meta) && !mc_is(cmd, cl, "quit");
	long long bytes = -1;
	if (mc_is(cmd, cl, "set") || mc_is(cmd, cl, "add") || mc_is(cmd, cl, "replace") ||
	    mc_is(cmd, cl, "append") || mc_is(cmd, cl, "prepend") || mc_is(cmd, cl, "cas"))
		bytes = mc_num_at(s, n, 4); /* not a number: the server answers CLIENT_ERROR, and */
	else if (mc_is(cmd, cl, "ms"))	    /* reads what follows as commands, as done here */
		bytes = mc_num_at(s, n, 2);
	if (bytes >= 0) {
		d->skip = (uint64_t)bytes + 2;
		d->done_after = 1;
		return 0;
	}
	return 1; /* complete */
}

/* A response line. 1: the response is complete; 0: more follows; -1: not memcached. */
static int mc_response_line(struct mcdir *d, const char *s, uint32_t n, int *error)
{
	uint32_t wl;
	const char *w = mc_token(s, n, 0, &wl);
	*error = 0;
	if (!w)
		return -1;
	if (mc_is(w, wl, "VALUE")) {
		long long bytes = mc_num_at(s, n, 3);
		if (bytes < 0)
			return -1;
		d->multi = 1;
		d->skip = (uint64_t)bytes + 2;
		return 0;
	}
	if (mc_is(w, wl, "VA")) {
		long long bytes = mc_num_at(s, n, 1);
		if (bytes < 0)
			return -1;
		d->skip = (uint64_t)bytes + 2;
		d->done_after = 1;
		return 0;
	}
	if (mc_is(w, wl, "STAT")) {
		d->multi = 1;
		return 0;
	}
	if (mc_is(w, wl, "ERROR") || mc_is(w, wl, "CLIENT_ERROR") || mc_is(w, wl, "SERVER_ERROR")) {
		*error = 1;
		d->name_len = (uint8_t)(wl < OP_MAX ? wl : OP_MAX);
		memcpy(d->name, w, d->name_len);
		return 1;
	}
	if (d->multi && !mc_is(w, wl, "END"))
		return -1; /* within a retrieval only VALUE, STAT and END come */
	for (uint32_t i = 0; i < wl; i++) /* STORED, END, HD, EN, a number... */
		if (!((w[i] >= 'A' && w[i] <= 'Z') || (w[i] >= '0' && w[i] <= '9') || w[i] == '_'))
			return -1;
	return 1;
}

static int mc_done(struct dbconn *c, int request, uint64_t ts, int error)
{
	struct mcdir *d = request ? &c->mreq : &c->mresp;
	d->in_value = d->multi = d->done_after = 0;
	if (request)
		return d->reply ? push_op(c, d->name, d->name_len, ts, d->bytes) : 0;
	struct op *o = pop_op(c);
	if (!o)
		return bump((DbEngineObject *)c->engine, "db_unrequested_reply", 1);
	struct op done = *o;
	return finish(c, &done, ts, d->bytes, error ? d->name : "", error ? d->name_len : 0);
}

int mc_feed(struct dbconn *c, int request, const uint8_t *p, size_t n,
	    uint64_t uncaptured, uint64_t ts)
{
	struct mcdir *d = request ? &c->mreq : &c->mresp;
	size_t pos = 0;
	int error;
	while (pos < n) {
		if (!d->in_value) {
			d->in_value = 1;
			d->bytes = 0;
			d->name_len = 0;
		}
		if (d->skip) {
			size_t take = d->skip < n - pos ? (size_t)d->skip : n - pos;
			d->skip -= take;
			d->bytes += take;
			pos += take;
			if (!d->skip && d->done_after && mc_done(c, request, ts, 0))
				return -1;
			continue;
		}
		int whole;
		size_t used = take_line(p + pos, n - pos, d->line, MC_LINE, &d->line_len,
					&d->line_over, &whole);
		d->bytes += used;
		pos += used;
		if (!whole)
			break;
		uint32_t ll = d->line_len;
		if (ll && d->line[ll - 1] == '\r')
			ll--;
		int got = request ? mc_request_line(d, d->line, ll) :
				    mc_response_line(d, d->line, ll, &error);
		d->line_len = d->line_over = 0;
		if (got < 0)
			return desync(c, "memcached_not_text");
		if (got && mc_done(c, request, ts, request ? 0 : error))
			return -1;
	}
	if (uncaptured) {
		if (d->skip >= uncaptured) { /* inside a large value */
			d->skip -= uncaptured;
			d->bytes += uncaptured;
			if (!d->skip && d->done_after && mc_done(c, request, ts, 0))
				return -1;
		} else if (request) {
			d->bytes += uncaptured;
			if (d->in_value && d->name_len && mc_done(c, 1, ts, 0))
				return -1;
			memset(d, 0, sizeof(*d));
		} else {
			c->reply_lost = 1;
			c->lost_ts = ts;
			c->lost_bytes = d->bytes + uncaptured;
			memset(d, 0, sizeof(*d));
		}
	}
	return 0;
}

/* NATS for the database engine (native/dbengine.c): messages, not operations. */
#include "db.h"

#include <stdlib.h>

/* --- NATS (the client protocol: text lines, payloads of a given size) ------------------------- */

/* A subject as a destination: reply inboxes (_INBOX.<unique>...) are one, "_INBOX". */
static void nats_destination(const char *s, uint32_t n, char *out, uint8_t *len)
{
	if (n >= 7 && !memcmp(s, "_INBOX.", 7)) {
		memcpy(out, "_INBOX", 6);
		*len = 6;
		return;
	}
	*len = (uint8_t)(n < OP_MAX ? n : OP_MAX);
	memcpy(out, s, *len);
}

static uint64_t nats_hash(const char *s, uint32_t n)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for (uint32_t i = 0; i < n; i++)
		h = (h ^ (uint8_t)s[i]) * 1099511628211ULL;
	return h | 1;
}

/* One message or event counted: a cell of its own kind (publish, receive, deliver, error), or a
 * request answered (its round trip). */
static int nats_count(struct dbconn *c, const char *what, const char *dest, uint32_t dn,
		      const char *status, size_t sl, uint64_t start, uint64_t end, uint64_t bytes)
{
	struct op o;
	memset(&o, 0, sizeof(o));
	o.ts = start;
	o.bytes = bytes;
	o.len = (uint8_t)strlen(what);
	memcpy(o.name, what, o.len);
	if (dest)
		nats_destination(dest, dn, o.coll, &o.coll_len);
	return finish(c, &o, end, 0, status, sl);
}

/* A whole control line (CRLF gone). 1: a message's payload follows (d->skip set). */
static int nats_line(struct dbconn *c, int request, const char *s, uint32_t n, uint64_t ts)
{
	struct mcdir *d = request ? &c->mreq : &c->mresp;
	uint32_t wl, subj_n, reply_n = 0;
	const char *w = mc_token(s, n, 0, &wl), *subj, *reply = NULL;
	if (!w)
		return 0;
	int pub = mc_is(w, wl, "PUB") || mc_is(w, wl, "HPUB") || mc_is(w, wl, "pub") ||
		  mc_is(w, wl, "hpub");
	int msg = mc_is(w, wl, "MSG") || mc_is(w, wl, "HMSG");
	if (pub || msg) {
		int hdr = wl == 4; /* HPUB, HMSG: header size, then total size */
		int toks = 0;
		while (mc_token(s, n, toks, &wl))
			toks++;
		/* PUB subject [reply] size; MSG subject sid [reply] size; H*: one size more */
		int base = pub ? 2 : 3;
		if (toks < base + 1 + hdr || toks > base + 2 + hdr)
			return -1;
		long long size = mc_num_at(s, n, toks - 1);
		if (size < 0)
			return -1;
		subj = mc_token(s, n, 1, &subj_n);
		if (toks == base + 2 + hdr)
			reply = mc_token(s, n, base, &reply_n);
		d->skip = (uint64_t)size + 2;
		d->done_after = 0;
		/* the client's publish (and a request, when it names a reply subject); what the
		 * server delivers to a subscriber; in the server pod, what it received and sent */
		int client = c->role == HTTP_ROLE_CLIENT;
		const char *what = pub ? "publish" : client ? "receive" : "deliver";
		if (client && msg && c->nats_reqs) { /* the answer to a request? */
			uint64_t h = nats_hash(subj, subj_n);
			for (uint32_t i = 0; i < NATS_REQS; i++) {
				struct natsreq *r = &c->nats_reqs[i];
				if (r->hash == h) {
					r->hash = 0;
					if (nats_count(c, "request", r->dest, r->dest_len, "", 0, r->ts,
						       ts, r->bytes))
						return -1;
					break;
				}
			}
		}
		if (client && pub && reply) {
			if (!c->nats_reqs && !(c->nats_reqs = calloc(NATS_REQS, sizeof(struct natsreq))))
				return -1;
			struct natsreq *r = &c->nats_reqs[c->nats_next++ % NATS_REQS];
			if (r->hash && bump((DbEngineObject *)c->engine, "nats_requests_unanswered", 1))
				return -1;
			r->hash = nats_hash(reply, reply_n);
			r->ts = ts;
			r->bytes = (uint64_t)size;
			nats_destination(subj, subj_n, r->dest, &r->dest_len);
		}
		if (nats_count(c, what, subj, subj_n, "", 0, ts, ts, (uint64_t)size))
			return -1;
		return 1;
	}
	if (mc_is(w, wl, "-ERR")) { /* -ERR 'Permissions Violation for Publish to "x"' */
		char code[OP_MAX];
		uint32_t k = 0;
		for (uint32_t i = wl; i < n && k < OP_MAX; i++) {
			char ch = s[i];
			if (ch == '\'' || (ch == ' ' && !k))
				continue;
			if (ch == ' ' && k && code[k - 1] == '_')
				continue;
			if (ch == ' ' && i + 4 < n && !memcmp(s + i, " for ", 5))
				break; /* "Permissions Violation for Publish to ...": the kind only */
			if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z'))
				code[k++] = (char)(ch | 0x20);
			else if (ch == ' ')
				code[k++] = '_';
			else
				break; /* the details (a subject, a name): not part of the kind */
		}
		while (k && code[k - 1] == '_')
			k--;
		return nats_count(c, "error", NULL, 0, code, k, ts, ts, 0) ? -1 : 0;
	}
	static const char *const known[] = {"INFO", "CONNECT", "SUB", "UNSUB", "PING", "PONG",
					    "+OK", "sub", "unsub", "ping", "pong", "connect"};
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		if (mc_is(w, wl, known[i]))
			return 0;
	return -1;
}

int nats_feed(struct dbconn *c, int request, const uint8_t *p, size_t n,
	      uint64_t uncaptured, uint64_t ts)
{
	struct mcdir *d = request ? &c->mreq : &c->mresp;
	size_t pos = 0;
	while (pos < n) {
		if (d->skip) { /* a payload and its CRLF */
			size_t take = d->skip < n - pos ? (size_t)d->skip : n - pos;
			d->skip -= take;
			pos += take;
			continue;
		}
		int whole;
		pos += take_line(p + pos, n - pos, d->line, MC_LINE, &d->line_len, &d->line_over,
				 &whole);
		if (!whole)
			break;
		uint32_t ll = d->line_len;
		if (ll && d->line[ll - 1] == '\r')
			ll--;
		int over = d->line_over;
		d->line_len = d->line_over = 0;
		if (over && (mc_is(d->line, 5, "INFO ") || mc_is(d->line, 8, "CONNECT ")))
			continue; /* a long JSON of options: nothing counted in it */
		if (over)
			return desync(c, "nats_line_too_long");
		if (nats_line(c, request, d->line, ll, ts) < 0)
			return PyErr_Occurred() ? -1 : desync(c, "nats_not_text");
	}
	if (uncaptured) {
		if (d->skip >= uncaptured) /* inside a large payload */
			d->skip -= uncaptured;
		else
			return desync(c, "db_bytes_not_captured");
	}
	return 0;
}

/* HTTP/2 requests at full speed: the stream events of HTTP/2 connections (struct
 * http_stream_event, bpf/http.h) go from a ring buffer batch to H2Wire and to the requests'
 * bookkeeping here, with no Python per event or per request. Finished requests are aggregated
 * per (connection identity, method, path, status, gRPC status, reset, outcome): Python folds
 * those few cells into its series once a second (collectors/http.py), applying routes,
 * budgets and labels as it does for every other request.
 *
 * The engine takes only the common case: a connection whose client preface it saw, so that its
 * HPACK state is whole (the hints of probed Go programs name nothing new there: counted, not
 * applied). Everything else is Python's path: a connection seen mid-way; one whose events
 * were lost or whose bytes were malformed, which Python then starts over mid-way. Bounded: connections (MAX_CONNS, the least
 * recently used evicted and counted), streams per connection (MAX_STREAMS), aggregate cells
 * per second (MAX_CELLS, beyond which each request is its own cell).
 *
 * With records (H2Engine(records=True)), each finished request is also kept as a tuple of what
 * the collector's record of it needs (take_records(), after each batch): its fields, its
 * times and sizes, and what links it into a trace (the TCP sequence number of its HEADERS
 * frame's first byte, its sender's thread's server request, its traceparent), as the Python
 * path's H2Connection keeps them. */
#include <linux/types.h>

#include "h2.h"
#include "http.h"

#include <string.h>
#include <time.h>

#define MAX_CONNS 20000
#define MAX_STREAMS 4096
#define MAX_CELLS 16384
#define MAX_PENDING 4096 /* connections whose first events wait for the bytes that decide */
#define MAX_STASH 32	 /* events kept per such connection */
#define SLOTS 40 /* collectors/base.py HIST_SLOTS_DEFAULT */
#define CONN_MEMO 1024 /* connections found lately, by id: most events skip the dict */
#define STR_MEMO 512
#define STR_MEMO_LEN 256

/* The cell of one aggregate, as bytes (collectors/http.py reads it with struct). */
struct cell {
	uint64_t count, sum_ns, req_bytes, resp_bytes, fb_count, fb_sum_ns;
	uint64_t slots[SLOTS], fb_slots[SLOTS];
};

struct req {
	uint32_t sid;
	PyObject *method, *path, *authority, *content_type, *grpc_message; /* str or NULL */
	long long status, grpc_status;
	uint64_t req_bytes, resp_bytes, start, end, first_byte;
	uint8_t reset, req_done, resp_done, outcome; /* outcome: 0 full, 1 partial, 2 none */
	/* records: the TCP sequence number of its HEADERS frame's first byte (-1: not known),
	 * the server request its sender's thread was serving (flags 0: none), its traceparent */
	int64_t seq;
	struct http_link parent;
	PyObject *traceparent;
};

struct engine;

struct conn {
	struct engine *engine;
	uint64_t conn_id, last_ts, ts; /* ts: of the event being fed */
	uint8_t role;
	unsigned long decoded;
	PyObject *ident;   /* (cgroup_id, netns, role, tls, family, peer_addr, peer_port) */
	WireObject *wire;
	struct req *streams; /* open streams, unordered */
	uint32_t count, cap;
	int error; /* a reason from the bookkeeping (too_many_streams) */
	/* the cell of this connection's last request and what keyed it (the same objects: the
	 * engine's string memo), valid while the engine's cells are of generation last_gen */
	PyObject *last_cell, *last_method, *last_path;
	long long last_status, last_grpc;
	int last_flags;
	unsigned long long last_gen;
	/* records: the process, the local port, the socket's local link (has_local) and the
	 * peer's address as the kernel has them; bytes fed per side (uncaptured ones included);
	 * of the bytes being fed: where they begin, their sequence number (-1: none), the parent */
	uint32_t pid;
	uint16_t local_port;
	uint8_t has_local;
	uint8_t peer_raw[16];
	struct http_link local, at_parent;
	uint64_t fed[2], at_off;
	int64_t at_seq;
};

typedef struct engine {
	PyObject_HEAD PyObject *conns; /* conn_id -> capsule(struct conn) */
	PyObject *python;	       /* the collector's own streamed connections (a dict) */
	PyObject *adopt;	       /* adopt(event): Python takes the connection, mid-way */
	struct cells agg;	       /* key -> struct cell, past MAX_CELLS one per request */
	PyObject *left;		       /* connections with an event left to Python in this batch:
					* their later events follow it there, in order */
	PyObject *pending;	       /* conn_id -> [events] waiting for the bytes that decide */
	PyObject *strs[STR_MEMO];      /* short field values made lately, one per hash slot: the
					* same method, path and authority come on every request */
	struct conn *memo[CONN_MEMO];  /* connections of conns by id slot (conn_free clears its) */
	unsigned long long events, requests, hints;
	unsigned long long gen; /* take()s so far: the cells' generation */
	PyObject *records;	/* records=True: finished requests since take_records() (a list) */
} EngineObject;

static struct conn **memo_slot(struct engine *e, uint64_t conn_id)
{
	return &e->memo[(conn_id ^ (conn_id >> 17)) % CONN_MEMO];
}

static const char CAPSULE[] = "podscope.h2conn";
static const char *const OUTCOME[] = {"full", "partial", "none"};
static PyObject *outcome_str[3]; /* the same three, as interned str (h2engine_init) */

/* --- streams ------------------------------------------------------------------------------- */

static void req_clear(struct req *r)
{
	Py_CLEAR(r->method);
	Py_CLEAR(r->path);
	Py_CLEAR(r->authority);
	Py_CLEAR(r->content_type);
	Py_CLEAR(r->grpc_message);
	Py_CLEAR(r->traceparent);
}

static struct req *stream_get(struct conn *c, uint32_t sid)
{
	for (uint32_t i = 0; i < c->count; i++)
		if (c->streams[i].sid == sid)
			return &c->streams[i];
	return NULL;
}

static struct req *stream_new(struct conn *c, uint32_t sid, uint64_t ts, int outcome)
{
	if (c->count >= MAX_STREAMS)
		return NULL;
	if (c->count == c->cap) {
		uint32_t cap = c->cap ? c->cap * 2 : 16;
		struct req *s = realloc(c->streams, cap * sizeof(*s));
		if (!s)
			return NULL;
		c->streams = s;
		c->cap = cap;
	}
	struct req *r = &c->streams[c->count++];
	memset(r, 0, sizeof(*r));
	r->sid = sid;
	r->status = 0;
	r->grpc_status = -1;
	r->start = ts;
	r->outcome = (uint8_t)outcome;
	r->seq = -1;
	return r;
}

/* Removes r (its references move to *out when out is given, else are dropped). */
static void stream_remove(struct conn *c, struct req *r, struct req *out)
{
	if (out)
		*out = *r;
	else
		req_clear(r);
	*r = c->streams[--c->count];
}

static struct conn **memo_slot(struct engine *e, uint64_t conn_id);

static void conn_free(struct conn *c)
{
	struct conn **m = c->engine ? memo_slot(c->engine, c->conn_id) : NULL;
	if (m && *m == c)
		*m = NULL;
	for (uint32_t i = 0; i < c->count; i++)
		req_clear(&c->streams[i]);
	free(c->streams);
	Py_XDECREF(c->last_cell);
	Py_XDECREF(c->last_method);
	Py_XDECREF(c->last_path);
	Py_XDECREF(c->ident);
	Py_XDECREF(c->wire);
	free(c);
}

static void capsule_free(PyObject *cap)
{
	struct conn *c = PyCapsule_GetPointer(cap, CAPSULE);
	if (c)
		conn_free(c);
}

/* --- finished requests: aggregated ---------------------------------------------------------- */


static int content_is_grpc(PyObject *ct)
{
	if (!ct)
		return 0;
	Py_ssize_t n;
	const char *s = PyUnicode_AsUTF8AndSize(ct, &n);
	return s && n >= 16 && !memcmp(s, "application/grpc", 16);
}

static int bump(EngineObject *e, const char *reason)
{
	return cells_bump(&e->agg, reason, 1);
}

static PyObject *or_none(PyObject *o)
{
	return o ? o : Py_None;
}

static PyObject *link_bytes(const struct http_link *l)
{
	if (!l->flags)
		return PyBytes_FromStringAndSize(NULL, 0);
	return PyBytes_FromStringAndSize((const char *)l, sizeof(*l));
}

/* The record of a finished request, appended to e->records: (conn_id, ident, pid, local_port,
 * stream id, method, path, status, grpc_status, reset, outcome, start, end, first_byte,
 * req_bytes, resp_bytes, seq, parent, traceparent, local, peer_raw); None where the Python
 * path's H2Request has its default (method, path) or nothing (seq, traceparent), b"" for a
 * link not known. */
static int record(struct conn *c, const struct req *r)
{
	EngineObject *e = (EngineObject *)c->engine;
	PyObject *seq = r->seq >= 0 ? PyLong_FromLongLong(r->seq) : Py_NewRef(Py_None);
	PyObject *parent = link_bytes(&r->parent);
	PyObject *local = c->has_local ? PyBytes_FromStringAndSize((const char *)&c->local,
								   sizeof(c->local))
				       : PyBytes_FromStringAndSize(NULL, 0);
	PyObject *t = (seq && parent && local)
			      ? Py_BuildValue("(KOIHIOOLLOOKKKKKOOOOy#)",
					      (unsigned long long)c->conn_id, c->ident, c->pid,
					      c->local_port, r->sid, or_none(r->method),
					      or_none(r->path), r->status, r->grpc_status,
					      r->reset ? Py_True : Py_False, outcome_str[r->outcome],
					      (unsigned long long)r->start,
					      (unsigned long long)r->end,
					      (unsigned long long)r->first_byte,
					      (unsigned long long)r->req_bytes,
					      (unsigned long long)r->resp_bytes, seq, parent,
					      or_none(r->traceparent), local,
					      (const char *)c->peer_raw, (Py_ssize_t)sizeof(c->peer_raw))
			      : NULL;
	Py_XDECREF(seq);
	Py_XDECREF(parent);
	Py_XDECREF(local);
	int rc = t ? PyList_Append(e->records, t) : -1;
	Py_XDECREF(t);
	return rc;
}

/* A finished request (its references are dropped here). */
static int finish(struct conn *c, struct req *r)
{
	EngineObject *e = (EngineObject *)c->engine;
	int rc = -1;
	if (e->records && record(c, r)) {
		req_clear(r);
		return -1;
	}
	e->requests++;
	c->decoded++;
	int is_grpc = content_is_grpc(r->content_type);
	int flags = is_grpc | (r->reset ? 2 : 0) | (r->outcome << 2);
	PyObject *key = NULL;
	struct cell *cl, one;
	if (c->last_cell && c->last_gen == e->gen && c->last_method == r->method &&
	    c->last_path == r->path && c->last_status == r->status &&
	    c->last_grpc == r->grpc_status && c->last_flags == flags) {
		cl = (struct cell *)PyByteArray_AS_STRING(c->last_cell);
		goto count;
	}
	PyObject *status = PyLong_FromLongLong(r->status);
	PyObject *grpc = PyLong_FromLongLong(r->grpc_status);
	key = (status && grpc) ? PyTuple_Pack(8, c->ident, or_none(r->method), or_none(r->path),
					      status, grpc, is_grpc ? Py_True : Py_False,
					      r->reset ? Py_True : Py_False,
					      outcome_str[r->outcome])
			       : NULL;
	Py_XDECREF(status);
	Py_XDECREF(grpc);
	if (!key)
		goto out;
	PyObject *v;
	if (!(cl = cells_get(&e->agg, key, &one, &v)))
		goto out_key;
	if (cl != &one) {
		Py_XSETREF(c->last_cell, Py_NewRef(v));
		Py_XSETREF(c->last_method, Py_XNewRef(r->method));
		Py_XSETREF(c->last_path, Py_XNewRef(r->path));
		c->last_status = r->status;
		c->last_grpc = r->grpc_status;
		c->last_flags = flags;
		c->last_gen = e->gen;
	}
count:;
	uint64_t dur = r->end > r->start ? r->end - r->start : 0;
	cl->count++;
	cl->sum_ns += dur;
	cl->slots[log2_slot(dur, SLOTS)]++;
	cl->req_bytes += r->req_bytes;
	cl->resp_bytes += r->resp_bytes;
	if (r->first_byte) {
		uint64_t fb = r->first_byte > r->start ? r->first_byte - r->start : 0;
		cl->fb_count++;
		cl->fb_sum_ns += fb;
		cl->fb_slots[log2_slot(fb, SLOTS)]++;
	}
	if (cl == &one && cells_spill(&e->agg, key, &one))
		goto out_key;
	rc = 0;
out_key:
	Py_XDECREF(key);
out:
	req_clear(r);
	return rc;
}

/* --- the wire's events ----------------------------------------------------------------------- */

static PyObject *latin1(const char *p, uint32_t n)
{
	return PyUnicode_DecodeLatin1(p, (Py_ssize_t)n, NULL);
}

static int set_str(EngineObject *e, PyObject **slot, const char *p, uint32_t n)
{
	PyObject **m = NULL;
	if (n <= STR_MEMO_LEN) {
		uint32_t h = 2166136261u ^ n;
		for (uint32_t i = 0; i < n; i++)
			h = (h ^ (uint8_t)p[i]) * 16777619u;
		m = &e->strs[(h ^ (h >> 16)) % STR_MEMO];
		if (*m && PyUnicode_GET_LENGTH(*m) == n && PyUnicode_KIND(*m) == PyUnicode_1BYTE_KIND &&
		    !memcmp(PyUnicode_1BYTE_DATA(*m), p, n)) {
			Py_INCREF(*m);
			Py_XSETREF(*slot, *m);
			return 0;
		}
	}
	PyObject *s = latin1(p, n);
	if (!s)
		return -1;
	if (m) {
		Py_INCREF(s);
		Py_XSETREF(*m, s);
	}
	Py_XSETREF(*slot, s);
	return 0;
}

static int end_stream(struct conn *c, int is_client, struct req *r)
{
	if (is_client) {
		r->req_done = 1;
	} else {
		r->resp_done = 1;
		r->end = c->ts;
	}
	if (!r->resp_done)
		return 0;
	/* a response that ends first ends the exchange (the server is done) */
	struct req done;
	stream_remove(c, r, &done);
	return finish(c, &done);
}

static int on_headers(struct conn *c, int is_client, const struct wire_event *ev)
{
	struct req *r = stream_get(c, ev->sid);
	const struct summary *s = ev->s;
	EngineObject *e = (EngineObject *)c->engine;
	if (is_client && !r) {
		r = stream_new(c, ev->sid, c->ts, ev->outcome);
		if (!r) {
			c->error = 1; /* too_many_streams (or memory) */
			return 0;
		}
		if (c->at_seq >= 0) { /* records: where its HEADERS frame began, in the TCP stream */
			r->seq = (uint32_t)((uint64_t)c->at_seq + ev->off - c->at_off);
			r->parent = c->at_parent;
			if (s->traceparent &&
			    set_str(e, &r->traceparent, s->traceparent, s->traceparent_len))
				return -1;
		}
	}
	if (!r)
		return 0; /* the server speaks on a stream whose request was never seen */
	if (!is_client && !r->first_byte)
		r->first_byte = c->ts;
	if (ev->outcome && r->outcome != 2)
		r->outcome = (uint8_t)ev->outcome;
	if ((s->method && set_str(e, &r->method, s->method, s->method_len)) ||
	    (s->path && set_str(e, &r->path, s->path, s->path_len)) ||
	    (s->authority && set_str(e, &r->authority, s->authority, s->authority_len)) ||
	    (s->grpc_message && set_str(e, &r->grpc_message, s->grpc_message, s->grpc_message_len)))
		return -1;
	if (s->status >= 0)
		r->status = s->status;
	if (s->grpc_status >= 0)
		r->grpc_status = s->grpc_status;
	if (s->content_type && s->content_type_len &&
	    (!r->content_type || !PyUnicode_GET_LENGTH(r->content_type)) &&
	    set_str(e, &r->content_type, s->content_type, s->content_type_len))
		return -1;
	if (ev->flags & 0x1)
		return end_stream(c, is_client, r);
	return 0;
}

static int sink_engine(void *ctx, int from_client, const struct wire_event *ev)
{
	struct conn *c = ctx;
	struct req *r, done;
	switch (ev->kind) {
	case EV_HEADERS:
		return on_headers(c, from_client, ev);
	case EV_DATA:
		r = stream_get(c, ev->sid);
		if (!r)
			return 0;
		if (from_client)
			r->req_bytes += ev->n;
		else
			r->resp_bytes += ev->n;
		return (ev->flags & 0x1) ? end_stream(c, from_client, r) : 0;
	case EV_RST:
		r = stream_get(c, ev->sid);
		if (!r)
			return 0;
		stream_remove(c, r, &done);
		done.reset = 1;
		done.end = c->ts;
		return finish(c, &done);
	case EV_GOAWAY:
		for (uint32_t i = 0; i < c->count;) {
			if (c->streams[i].sid > ev->n) {
				stream_remove(c, &c->streams[i], &done);
				done.reset = 1;
				done.end = c->ts;
				if (finish(c, &done))
					return -1;
			} else {
				i++;
			}
		}
		return 0;
	default:
		return 0;
	}
}

/* --- connections ------------------------------------------------------------------------------ */

static int drop(EngineObject *e, PyObject *key)
{
	return PyDict_DelItem(e->conns, key);
}

/* Hands the connection over to Python after malformed bytes: adopt(event) starts it over
 * mid-way there, as Python's own path does after an H2Error. */
static int hand_over(EngineObject *e, PyObject *key, const char *rec, size_t size)
{
	PyObject *res = PyObject_CallFunction(e->adopt, "(y#)", rec, (Py_ssize_t)size);
	if (!res)
		return -1;
	Py_DECREF(res);
	return drop(e, key);
}

static int evict_one(EngineObject *e)
{
	PyObject *k, *v, *oldest = NULL;
	Py_ssize_t pos = 0;
	uint64_t ts = UINT64_MAX;
	while (PyDict_Next(e->conns, &pos, &k, &v)) {
		struct conn *c = PyCapsule_GetPointer(v, CAPSULE);
		if (c && c->last_ts < ts) {
			ts = c->last_ts;
			oldest = k;
		}
	}
	if (!oldest)
		return 0;
	Py_INCREF(oldest);
	int r = drop(e, oldest);
	Py_DECREF(oldest);
	return r ? r : bump(e, "streamed_connections_evicted");
}

static struct conn *conn_new(EngineObject *e, PyObject *key, const struct http_stream_event *ev,
			     int role)
{
	if (PyDict_GET_SIZE(e->conns) >= MAX_CONNS && evict_one(e))
		return NULL;
	struct conn *c = calloc(1, sizeof(*c));
	if (!c)
		return (struct conn *)PyErr_NoMemory();
	c->engine = e;
	c->conn_id = ev->conn_id;
	c->role = (uint8_t)role;
	c->pid = ev->pid;
	c->local_port = ev->local_port;
	c->at_seq = -1;
	memcpy(c->peer_raw, ev->peer_addr, sizeof(c->peer_raw));
	c->ident = Py_BuildValue("(KIiiiy#i)", (unsigned long long)ev->cgroup_id,
				 (unsigned)ev->netns, role, ev->tls ? 1 : 0, ev->family,
				 (const char *)ev->peer_addr, (Py_ssize_t)sizeof(ev->peer_addr),
				 ev->peer_port);
	c->wire = (WireObject *)PyObject_CallFunction((PyObject *)&WireType, "(i)", 1);
	PyObject *cap = (c->ident && c->wire) ? PyCapsule_New(c, CAPSULE, capsule_free) : NULL;
	if (!cap) {
		conn_free(c);
		return NULL;
	}
	int err = PyDict_SetItem(e->conns, key, cap);
	Py_DECREF(cap); /* the dict owns it, and c with it */
	return err ? NULL : c;
}

static int feed_conn(EngineObject *e, PyObject *key, struct conn *c,
		     const struct http_stream_event *ev, const char *rec, size_t size)
{
	const char *payload = rec + sizeof(*ev);
	size_t cap = size - sizeof(*ev);
	if (ev->captured < cap)
		cap = ev->captured;
	size_t skip = ev->skip < cap ? ev->skip : cap;
	uint64_t uncaptured = ev->len > cap ? ev->len - cap : 0;
	int from_client = (c->role == HTTP_ROLE_SERVER) == (ev->inbound != 0);
	c->ts = c->last_ts = ev->ts_ns;
	if (e->records) { /* as H2Connection.feed keeps them */
		c->at_off = c->fed[from_client];
		c->at_seq = -1;
		memset(&c->at_parent, 0, sizeof(c->at_parent));
		if (ev->link.flags & HTTP_LINK_SEQ) {
			c->at_seq = (uint32_t)(ev->link.seq + ev->skip);
			if (!c->has_local) {
				c->local = ev->link;
				c->has_local = 1;
				memcpy(c->peer_raw, ev->peer_addr, sizeof(c->peer_raw));
			}
			if (ev->parent.flags & HTTP_LINK_SEQ)
				c->at_parent = ev->parent;
		}
		c->fed[from_client] += (cap - skip) + uncaptured;
	}
	c->wire->sink = sink_engine;
	c->wire->sink_ctx = c;
	int r = wire_feed(c->wire, from_client, (const uint8_t *)payload + skip, cap - skip,
			  uncaptured);
	c->wire->sink_ctx = NULL;
	if (r < 0)
		return -1;
	if (r > 0 || c->error) {
		/* as Python's path: counted, and the connection starts over mid-way (in Python) */
		char reason[64];
		snprintf(reason, sizeof(reason), "http2_%s",
			 r > 0 ? wire_reason(r) : "too_many_streams");
		if (bump(e, reason))
			return -1;
		if (key)
			return hand_over(e, key, rec, size);
		key = PyLong_FromUnsignedLongLong(ev->conn_id);
		r = key ? hand_over(e, key, rec, size) : -1;
		Py_XDECREF(key);
		return r;
	}
	return 0;
}

static int close_conn(EngineObject *e, PyObject *key, struct conn *c, uint64_t ts)
{
	struct req done;
	while (c->count) {
		stream_remove(c, &c->streams[0], &done);
		done.reset = 1;
		done.end = ts;
		if (finish(c, &done))
			return -1;
	}
	return drop(e, key);
}

/* The hints stashed for key go to Python (appended to left, before what comes next). */
static int flush(EngineObject *e, PyObject *key, PyObject *stash, PyObject *left)
{
	Py_INCREF(stash);
	Py_ssize_t n = PyList_GET_SIZE(stash);
	int r = 0;
	for (Py_ssize_t i = 0; !r && i < n; i++)
		r = PyList_Append(left, PyList_GET_ITEM(stash, i));
	Py_DECREF(stash);
	if (!r)
		r = PyDict_DelItem(e->pending, key);
	return r ? r : PySet_Add(e->left, key);
}

#define STASH_NS 1000000000ULL /* how long events may wait for the bytes that decide */

static uint64_t first_ts(PyObject *stash)
{
	struct http_stream_event ev;
	PyObject *b = PyList_GET_ITEM(stash, 0);
	memcpy(&ev, PyBytes_AS_STRING(b), sizeof(ev));
	return ev.ts_ns;
}

/* The waiting connections whose first event is older than age_ns (0: all) go to Python. */
static int flush_waiting(EngineObject *e, PyObject *left, uint64_t age_ns)
{
	if (!PyDict_GET_SIZE(e->pending))
		return 0;
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	uint64_t t = (uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec;
	PyObject *items = PyDict_Items(e->pending);
	if (!items)
		return -1;
	int r = 0;
	for (Py_ssize_t i = 0; !r && i < PyList_GET_SIZE(items); i++) {
		PyObject *kv = PyList_GET_ITEM(items, i);
		if (!age_ns || t - first_ts(PyTuple_GET_ITEM(kv, 1)) >= age_ns)
			r = flush(e, PyTuple_GET_ITEM(kv, 0), PyTuple_GET_ITEM(kv, 1), left);
	}
	Py_DECREF(items);
	return r;
}

static int starts_with_preface(const struct http_stream_event *ev, const char *rec, size_t size)
{
	static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
	size_t cap = size - sizeof(*ev);
	if (ev->captured < cap)
		cap = ev->captured;
	size_t skip = ev->skip < cap ? ev->skip : cap;
	return cap - skip >= 24 && !memcmp(rec + sizeof(*ev) + skip, preface, 24);
}

/* An event of a connection neither here nor in Python, that the kernel takes for HTTP/2.
 * Its first events do not always say whether its start was seen: a Go client names its request
 * (a hint) before writing it, a Go server writes its SETTINGS before it reads the client's
 * preface. Such events wait (a second at most, MAX_STASH of them), and the preface decides: a
 * connection whose preface comes is decoded here whole (hints name nothing new there), any other
 * goes to Python, its waiting events first. 1: Python's, 0: done here, -1: error. */
static int unknown(EngineObject *e, PyObject *key, const struct http_stream_event *ev,
		   const char *rec, size_t size, PyObject *left)
{
	PyObject *stash = PyDict_GetItemWithError(e->pending, key);
	if (!stash && PyErr_Occurred())
		return -1;
	int h2 = !ev->gap && (ev->proto == HTTP_PROTO_2 || ev->proto == HTTP_PROTO_2_MIDWAY);
	int data = h2 && ev->kind == HTTP_S_DATA;
	int preface = data && starts_with_preface(ev, rec, size);
	if (data && (ev->proto == HTTP_PROTO_2 || preface)) {
		/* the preface's sender is the client; a connection the kernel saw start knows */
		int role = !preface ? ev->role : ev->inbound ? HTTP_ROLE_SERVER : HTTP_ROLE_CLIENT;
		struct conn *c = conn_new(e, key, ev, role);
		if (!c)
			return -1;
		if (stash) { /* what waited: the other side's first frames, and hints */
			Py_INCREF(stash);
			int err = PyDict_DelItem(e->pending, key);
			for (Py_ssize_t i = 0; !err && i < PyList_GET_SIZE(stash); i++) {
				PyObject *b = PyList_GET_ITEM(stash, i);
				struct http_stream_event sev;
				memcpy(&sev, PyBytes_AS_STRING(b), sizeof(sev));
				int mine = PyDict_Contains(e->conns, key);
				if (mine <= 0) /* handed over on the way: the rest is Python's, in order */
					err = mine < 0 || PyList_Append(left, b);
				else if (sev.kind == HTTP_S_HINT)
					e->hints++;
				else
					err = feed_conn(e, key, c, &sev, PyBytes_AS_STRING(b),
							(size_t)PyBytes_GET_SIZE(b));
			}
			Py_DECREF(stash);
			if (err)
				return -1;
			int mine = PyDict_Contains(e->conns, key);
			if (mine <= 0)
				return mine < 0 ? -1 : 1;
		}
		return feed_conn(e, key, c, ev, rec, size) ? -1 : 0;
	}
	if (h2 && (ev->kind == HTTP_S_HINT || data) &&
	    (!stash || (PyList_GET_SIZE(stash) < MAX_STASH && ev->ts_ns - first_ts(stash) < STASH_NS))) {
		if (!stash) {
			if (PyDict_GET_SIZE(e->pending) >= MAX_PENDING && flush_waiting(e, left, 0))
				return -1;
			stash = PyList_New(0);
			int err = !stash || PyDict_SetItem(e->pending, key, stash);
			Py_XDECREF(stash);
			if (err)
				return -1;
		}
		PyObject *b = PyBytes_FromStringAndSize(rec, (Py_ssize_t)size);
		int err = !b || PyList_Append(stash, b);
		Py_XDECREF(b);
		return err ? -1 : 0;
	}
	if (stash && flush(e, key, stash, left))
		return -1;
	return 1;
}

/* One stream event: 1 when it is Python's to handle, 0 when done here, -1 on error. */
static int one(EngineObject *e, const char *rec, size_t size, PyObject *leftlist)
{
	struct http_stream_event ev;
	if (size < sizeof(ev))
		return 1; /* Python counts it (short_event) */
	memcpy(&ev, rec, sizeof(ev));
	if (ev.proto >= HTTP_PROTO_REDIS)
		return 0; /* a database's: native/dbengine.c takes it from the same batch */
	struct conn **m = memo_slot(e, ev.conn_id);
	if (*m && (*m)->conn_id == ev.conn_id && ev.kind == HTTP_S_DATA && !ev.gap &&
	    !PySet_GET_SIZE(e->left)) /* the common case: no Python object made */
		return feed_conn(e, NULL, *m, &ev, rec, size) ? -1 : 0;
	PyObject *key = PyLong_FromUnsignedLongLong(ev.conn_id);
	if (!key)
		return -1;
	int rc = 1;
	int left = PySet_Contains(e->left, key);
	PyObject *cap = left ? NULL : PyDict_GetItemWithError(e->conns, key);
	if (left) {
		rc = left < 0 ? -1 : 1;
	} else if (cap) {
		struct conn *c = PyCapsule_GetPointer(cap, CAPSULE);
		if (c)
			*m = c;
		if (!c)
			rc = -1;
		else if (ev.kind == HTTP_S_HINT)
			/* a Go program's hint names what a decoder without HPACK state could not: this
			 * connection was decoded from its start, so it names nothing new */
			e->hints++, rc = 0;
		else if (ev.gap) /* its state is void: Python starts it over mid-way */
			rc = drop(e, key) ? -1 : 1;
		else if (ev.kind == HTTP_S_CLOSE)
			rc = close_conn(e, key, c, ev.ts_ns) ? -1 : 0;
		else if (ev.kind == HTTP_S_DATA)
			rc = feed_conn(e, key, c, &ev, rec, size) ? -1 : 0;
		else
			rc = 0;
	} else if (PyErr_Occurred()) {
		rc = -1;
	} else {
		int mine = PyDict_Contains(e->python, key);
		rc = mine < 0 ? -1 : mine ? 1 : unknown(e, key, &ev, rec, size, leftlist);
	}
	if (rc == 1 && PySet_Add(e->left, key))
		rc = -1;
	Py_DECREF(key);
	return rc;
}

/* process(batch) -> the events that are Python's (bytes each) */
static PyObject *Engine_process(EngineObject *e, PyObject *arg)
{
	Py_buffer view;
	if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE))
		return NULL;
	PyObject *left = PySet_Clear(e->left) ? NULL : PyList_New(0);
	/* waiting events older than STASH_NS go to Python (an empty batch: each second) */
	if (left && flush_waiting(e, left, STASH_NS))
		Py_CLEAR(left);
	size_t pos = 0, size;
	const char *data;
	int r;
	while (left && (r = batch_next(view.buf, (size_t)view.len, &pos, &data, &size)) != 0) {
		if (r < 0) {
			PyErr_SetString(PyExc_ValueError, "malformed batch");
			Py_CLEAR(left);
			break;
		}
		e->events++;
		int rc = one(e, data, size, left);
		if (rc < 0) {
			Py_CLEAR(left);
			break;
		}
		if (rc == 1) {
			PyObject *b = PyBytes_FromStringAndSize(data, (Py_ssize_t)size);
			if (!b || PyList_Append(left, b))
				Py_CLEAR(left);
			Py_XDECREF(b);
		}
	}
	PyBuffer_Release(&view);
	return left;
}

/* take() -> ([(key, cell bytes)], {reason: count}): what finished since the last take */
static PyObject *Engine_take(EngineObject *e, PyObject *unused)
{
	PyObject *out = cells_take(&e->agg);
	if (out)
		e->gen++; /* the connections' last cells are not the new dict's */
	return out;
}

static PyObject *Engine_forget(EngineObject *e, PyObject *key)
{
	if (PyDict_DelItem(e->conns, key) && PyErr_ExceptionMatches(PyExc_KeyError))
		PyErr_Clear();
	if (PyErr_Occurred())
		return NULL;
	Py_RETURN_NONE;
}

/* take_records() -> [record tuple]: the requests finished since the last call (records=True) */
static PyObject *Engine_take_records(EngineObject *e, PyObject *unused)
{
	if (!e->records)
		return PyList_New(0);
	PyObject *fresh = PyList_New(0);
	if (!fresh)
		return NULL;
	PyObject *out = e->records;
	e->records = fresh;
	return out;
}

static int Engine_init(EngineObject *e, PyObject *args, PyObject *kw)
{
	static char *names[] = {"python", "adopt", "records", NULL};
	PyObject *python, *adopt;
	int records = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O|p", names, &PyDict_Type, &python, &adopt,
					 &records))
		return -1;
	if (records && !(e->records = PyList_New(0)))
		return -1;
	Py_INCREF(python);
	Py_INCREF(adopt);
	e->python = python;
	e->adopt = adopt;
	e->conns = PyDict_New();
	e->left = PySet_New(NULL);
	e->pending = PyDict_New();
	return (e->conns && e->left && e->pending &&
		!cells_init(&e->agg, sizeof(struct cell), MAX_CELLS)) ? 0 : -1;
}

static void Engine_dealloc(EngineObject *e)
{
	Py_XDECREF(e->python);
	Py_XDECREF(e->adopt);
	Py_XDECREF(e->conns);
	cells_free(&e->agg);
	Py_XDECREF(e->left);
	Py_XDECREF(e->pending);
	Py_XDECREF(e->records);
	for (int i = 0; i < STR_MEMO; i++)
		Py_XDECREF(e->strs[i]);
	Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyObject *Engine_get_connections(EngineObject *e, void *closure)
{
	return PyLong_FromSsize_t(PyDict_GET_SIZE(e->conns) + PyDict_GET_SIZE(e->pending));
}

static PyObject *Engine_get_events(EngineObject *e, void *closure)
{
	return PyLong_FromUnsignedLongLong(e->events);
}

static PyObject *Engine_get_requests(EngineObject *e, void *closure)
{
	return PyLong_FromUnsignedLongLong(e->requests);
}

static PyObject *Engine_get_hints(EngineObject *e, void *closure)
{
	return PyLong_FromUnsignedLongLong(e->hints);
}

static PyMethodDef Engine_methods[] = {
	{"process", (PyCFunction)Engine_process, METH_O,
	 "process(batch of stream events) -> the events that are Python's, as bytes each"},
	{"take", (PyCFunction)Engine_take, METH_NOARGS,
	 "take() -> ([(key, cell)], {error reason: count}) since the last take"},
	{"forget", (PyCFunction)Engine_forget, METH_O, "forget(conn_id): drop a connection"},
	{"take_records", (PyCFunction)Engine_take_records, METH_NOARGS,
	 "take_records() -> [(conn_id, ident, pid, local_port, stream id, method, path, status, "
	 "grpc_status, reset, outcome, start, end, first_byte, req_bytes, resp_bytes, seq, parent, "
	 "traceparent, local, peer_raw)] finished since the last call (records=True)"},
	{NULL},
};

static PyGetSetDef Engine_getset[] = {
	{"connections", (getter)Engine_get_connections, NULL, "connections held", NULL},
	{"events", (getter)Engine_get_events, NULL, "stream events seen", NULL},
	{"requests", (getter)Engine_get_requests, NULL, "requests finished here", NULL},
	{"hints", (getter)Engine_get_hints, NULL, "hints on connections decoded here", NULL},
	{NULL},
};

static PyTypeObject EngineType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "podscope._fast.H2Engine",
	.tp_basicsize = sizeof(EngineObject),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "HTTP/2 connections' stream events to aggregated requests (native/h2engine.c).",
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)Engine_init,
	.tp_dealloc = (destructor)Engine_dealloc,
	.tp_methods = Engine_methods,
	.tp_getset = Engine_getset,
};

int h2engine_init(PyObject *m)
{
	for (int i = 0; i < 3; i++)
		if (!(outcome_str[i] = PyUnicode_InternFromString(OUTCOME[i])))
			return -1;
	if (PyType_Ready(&EngineType) < 0)
		return -1;
	Py_INCREF(&EngineType);
	if (PyModule_AddObject(m, "H2Engine", (PyObject *)&EngineType) < 0)
		return -1;
	return PyModule_AddIntConstant(m, "H2_CELL_SIZE", sizeof(struct cell));
}

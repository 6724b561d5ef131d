/* Databases and caches at full speed: the stream events of connections the kernel found speaking
 * a database or cache protocol (bpf/include/db.bpf.h) go from a ring-buffer batch to that
 * protocol's parser here, with no Python per event or per operation. Requests are paired with
 * their responses in order (pipelining: a bounded queue per connection) and aggregated per
 * (connection identity, system, operation, status); Python folds the cells into its series once
 * a second (collectors/http.py), as it does for HTTP/2.
 *
 * Protocols, each in a file of its own (db.h holds what they share): Redis (db_redis.c: RESP2
 * and RESP3, pipelining, errors by prefix, MULTI/EXEC, pushes and attributes that are not
 * replies, pub/sub left unpaired); memcached (db_memcached.c: text and meta); PostgreSQL
 * (db_postgres.c: protocol 3, simple and extended queries up to their Sync, SQLSTATE); MySQL and
 * MariaDB (db_mysql.c: text and prepared statements, result sets with or without EOF packets,
 * error numbers); NATS (db_nats.c: messages published, received and delivered per subject,
 * request-reply round trips, -ERR); SQL statements' operation, table and sanitised text
 * (db_sql.c).
 *
 * Bad input never stops anything: a byte that is not the protocol's, a value nested too deep or
 * bytes lost (not captured by the kernel, or events lost) void the connection's parse state,
 * counted by reason; the requests in flight are counted as unpaired, and the parser starts
 * again at the next syscall's data. Bounded: connections (DB_MAX_CONNS, the least recently used
 * go first), requests in flight per connection (DB_MAX_PENDING), cells (DB_MAX_CELLS, beyond
 * which each operation is its own cell). */
#include "db.h"

#include <stdlib.h>

static const char CAPSULE[] = "podscope.dbconn";

/* --- bookkeeping --------------------------------------------------------------------------- */

int bump(DbEngineObject *e, const char *reason, long n)
{
	return cells_bump(&e->agg, reason, n);
}

static void conn_free(struct dbconn *c)
{
	for (int i = 0; i < PG_STMTS; i++)
		free(c->stmts[i].query);
	free(c->nats_reqs);
	free(c->ops);
	Py_XDECREF(c->ident);
	free(c);
}

static void capsule_free(PyObject *cap)
{
	struct dbconn *c = PyCapsule_GetPointer(cap, CAPSULE);
	if (c)
		conn_free(c);
}

/* A name from the wire as a label value: command and error names are short words of letters,
 * digits and a few marks; anything else (garbage, a binary key) is `other`, so that no byte a
 * client sends becomes a series of its own. */
static PyObject *label(const char *s, size_t n, const char *other)
{
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
		      ch == '_' || ch == '-' || ch == '.' || ch == ':'))
			return PyUnicode_FromString(other);
	}
	return PyUnicode_FromStringAndSize(s, (Py_ssize_t)n);
}

/* One operation done: into its cell. */
int finish(struct dbconn *c, const struct op *o, uint64_t end, uint64_t resp_bytes,
	   const char *status, size_t status_len)
{
	DbEngineObject *e = (DbEngineObject *)c->engine;
	e->operations++;
	PyObject *sys = e->system[c->proto & 15];
	PyObject *op = label(o->name, o->len, "_OTHER");
	PyObject *st = op ? label(status, status_len, "_OTHER") : NULL;
	PyObject *coll = st ? label(o->coll, o->coll_len, "_OTHER") : NULL;
	PyObject *ns = coll ? label(c->ns, c->ns_len, "_OTHER") : NULL;
	PyObject *key = ns ? PyTuple_Pack(6, c->ident, sys ? sys : Py_None, op, st, coll, ns) : NULL;
	Py_XDECREF(op);
	Py_XDECREF(st);
	Py_XDECREF(coll);
	Py_XDECREF(ns);
	if (!key)
		return -1;
	struct db_cell one, *cl;
	PyObject *held;
	int rc = -1;
	if (!(cl = cells_get(&e->agg, key, &one, &held)))
		goto out;
	uint64_t dur = end > o->ts ? end - o->ts : 0;
	cl->count++;
	cl->sum_ns += dur;
	cl->slots[log2_slot(dur, SLOTS)]++;
	cl->req_bytes += o->bytes;
	cl->resp_bytes += resp_bytes;
	if (!e->recs || c->proto == HTTP_PROTO_NATS) { /* messages are counted, not recorded */
	} else if (PyList_GET_SIZE(e->recs) >= DB_MAX_RECORDS) {
		e->records_dropped++;
	} else { /* (key, start, end, request bytes, response bytes, conn, statement) */
		/* the statement's bytes are the client's: not UTF-8 is replaced, never an error */
		PyObject *q = o->query_len ? PyUnicode_DecodeUTF8(o->query, o->query_len, "replace")
					   : Py_NewRef(Py_None);
		PyObject *r = q ? Py_BuildValue("(OKKKKKN)", key, (unsigned long long)o->ts,
						(unsigned long long)end, (unsigned long long)o->bytes,
						(unsigned long long)resp_bytes,
						(unsigned long long)c->conn_id, q)
				: NULL;
		if (!r || PyList_Append(e->recs, r)) {
			Py_XDECREF(r);
			goto out;
		}
		Py_DECREF(r);
	}
	if (cl == &one && cells_spill(&e->agg, key, &one))
		goto out;
	rc = 0;
out:
	Py_DECREF(key);
	return rc;
}

int push_op(struct dbconn *c, const char *name, size_t len, uint64_t ts, uint64_t bytes)
{
	if (c->count >= DB_MAX_PENDING)
		return bump((DbEngineObject *)c->engine, "db_too_many_in_flight", 1) ? -1 : 0;
	if (c->count == c->cap) {
		uint32_t cap = c->cap ? c->cap * 2 : 8;
		struct op *r = malloc(cap * sizeof(*r));
		if (!r) {
			PyErr_NoMemory();
			return -1;
		}
		for (uint32_t i = 0; i < c->count; i++)
			r[i] = c->ops[(c->head + i) % c->cap];
		free(c->ops);
		c->ops = r;
		c->cap = cap;
		c->head = 0;
	}
	struct op *o = &c->ops[(c->head + c->count) % c->cap];
	o->ts = ts;
	o->bytes = bytes;
	o->len = (uint8_t)(len < OP_MAX ? len : OP_MAX);
	o->silent = o->cmd = o->aux_len = o->coll_len = o->query_len = 0;
	memcpy(o->name, name, o->len);
	c->count++;
	return 0;
}

struct op *pop_op(struct dbconn *c)
{
	if (!c->count)
		return NULL;
	struct op *o = &c->ops[c->head];
	c->head = (c->head + 1) % c->cap;
	c->count--;
	return o;
}

struct op *newest_op(struct dbconn *c)
{
	return c->count ? &c->ops[(c->head + c->count - 1) % c->cap] : NULL;
}

/* Each protocol's parser of one direction (or both) back at a message's start. */
static void reset_parse(struct dbconn *c, int request, int response)
{
	if (request) {
		memset(&c->req, 0, sizeof(c->req));
		memset(&c->mreq, 0, sizeof(c->mreq));
		int started = c->preq.started;
		memset(&c->preq, 0, sizeof(c->preq));
		c->preq.started = started;
		memset(&c->myreq, 0, sizeof(c->myreq));
	}
	if (response) {
		memset(&c->resp, 0, sizeof(c->resp));
		memset(&c->mresp, 0, sizeof(c->mresp));
		memset(&c->presp, 0, sizeof(c->presp));
		c->presp.started = 1;
		memset(&c->myresp, 0, sizeof(c->myresp));
		c->my_state = MY_R_FIRST;
		c->my_skip_eof = 0;
		c->my_status_len = 0;
	}
}

/* The parse state is void (reason counted): what was in flight is not paired. */
int desync(struct dbconn *c, const char *reason)
{
	DbEngineObject *e = (DbEngineObject *)c->engine;
	long lost = c->count;
	reset_parse(c, 1, 1);
	c->head = c->count = 0;
	c->broken = 1;
	c->reply_lost = 0;
	if (bump(e, reason, 1))
		return -1;
	return lost ? bump(e, "db_unpaired", lost) : 0;
}

/* The client sends again after replies it read only in part: those in flight were answered by
 * then (their status: the reply's start was not an error, or it would have been whole). */
static int replies_lost(struct dbconn *c)
{
	c->reply_lost = 0;
	reset_parse(c, 0, 1);
	for (int first = 1; c->count; first = 0) {
		struct op done = *pop_op(c);
		if (finish(c, &done, c->lost_ts, first ? c->lost_bytes : 0, "", 0))
			return -1;
	}
	return 0;
}

/* The rest of a message of a known length (at most *body_left of n bytes): its first `cap` bytes
 * kept in body, the rest passed over; the bytes consumed. */
size_t take_body(const uint8_t *p, size_t n, void *body, uint32_t cap, uint32_t *body_len,
		 uint64_t *body_left, uint64_t *bytes)
{
	size_t take = *body_left < n ? (size_t)*body_left : n;
	size_t keep = cap - *body_len < take ? cap - *body_len : take;
	memcpy((char *)body + *body_len, p, keep);
	*body_len += (uint32_t)keep;
	*body_left -= take;
	*bytes += take;
	return take;
}

/* The bytes up to the next newline into a line of at most `cap` bytes (the rest of a longer line
 * is passed over: *over); the bytes consumed, *whole: the newline was among them. */
size_t take_line(const uint8_t *p, size_t n, char *line, uint32_t cap, uint32_t *line_len,
		 uint32_t *over, int *whole)
{
	const uint8_t *nl = memchr(p, '\n', n);
	size_t len = nl ? (size_t)(nl - p) : n;
	if (!*over) {
		size_t room = cap - *line_len;
		size_t k = len < room ? len : room;
		memcpy(line + *line_len, p, k);
		*line_len += (uint32_t)k;
		if (k < len)
			*over = 1;
	}
	*whole = nl != NULL;
	return len + (nl ? 1 : 0);
}

/* --- the engine ---------------------------------------------------------------------------- */

static int db_proto(int proto)
{
	return proto == HTTP_PROTO_REDIS || proto == HTTP_PROTO_MEMCACHED ||
	       proto == HTTP_PROTO_POSTGRES || proto == HTTP_PROTO_MYSQL || proto == HTTP_PROTO_NATS;
}

static struct dbconn *conn_new(DbEngineObject *e, PyObject *key, const struct http_stream_event *ev)
{
	if (PyDict_GET_SIZE(e->conns) >= DB_MAX_CONNS) { /* the oldest goes, counted */
		Py_ssize_t pos = 0;
		PyObject *k, *v;
		if (PyDict_Next(e->conns, &pos, &k, &v)) {
			Py_INCREF(k);
			int err = PyDict_DelItem(e->conns, k) || bump(e, "db_connections_evicted", 1);
			Py_DECREF(k);
			if (err)
				return NULL;
		}
	}
	struct dbconn *c = calloc(1, sizeof(*c));
	if (!c)
		return (struct dbconn *)PyErr_NoMemory();
	c->engine = e;
	c->conn_id = ev->conn_id;
	c->role = ev->role;
	c->proto = ev->proto;
	c->my_deprecate_eof = -1;
	c->ident = Py_BuildValue("(KIiiiy#i)", (unsigned long long)ev->cgroup_id,
				 (unsigned)ev->netns, ev->role, ev->tls ? 1 : 0, ev->family,
				 (const char *)ev->peer_addr, (Py_ssize_t)sizeof(ev->peer_addr),
				 ev->peer_port);
	PyObject *cap = c->ident ? PyCapsule_New(c, CAPSULE, capsule_free) : NULL;
	if (!cap) {
		conn_free(c);
		return NULL;
	}
	int err = PyDict_SetItem(e->conns, key, cap);
	Py_DECREF(cap);
	return err ? NULL : c;
}

static int one(DbEngineObject *e, const char *rec, size_t size)
{
	struct http_stream_event ev;
	if (size < sizeof(ev))
		return 0;
	memcpy(&ev, rec, sizeof(ev));
	if (!db_proto(ev.proto) || (ev.kind != HTTP_S_DATA && ev.kind != HTTP_S_CLOSE))
		return 0;
	e->events++;
	PyObject *key = PyLong_FromUnsignedLongLong(ev.conn_id);
	if (!key)
		return -1;
	int rc = 0;
	PyObject *cap = PyDict_GetItemWithError(e->conns, key);
	struct dbconn *c = cap ? PyCapsule_GetPointer(cap, CAPSULE) : NULL;
	if (PyErr_Occurred()) {
		rc = -1;
	} else if (ev.kind == HTTP_S_CLOSE) {
		if (c && c->reply_lost)
			rc = replies_lost(c);
		if (c && c->count && !rc)
			rc = bump(e, "db_unanswered", c->count);
		if (c && !rc)
			rc = PyDict_DelItem(e->conns, key);
	} else {
		if (!c)
			c = conn_new(e, key, &ev);
		if (!c) {
			rc = -1;
		} else {
			const uint8_t *payload = (const uint8_t *)rec + sizeof(ev);
			size_t cap_n = size - sizeof(ev);
			if (ev.captured < cap_n)
				cap_n = ev.captured;
			uint64_t uncaptured = ev.len > cap_n ? ev.len - cap_n : 0;
			int request = (c->role == HTTP_ROLE_SERVER) == (ev.inbound != 0);
			c->last_ts = ev.ts_ns;
			if (ev.gap)
				rc = desync(c, "db_events_lost");
			if (!rc && c->broken) { /* start over at this syscall's data */
				c->broken = 0;
				reset_parse(c, 1, 1);
			}
			if (!rc && c->reply_lost && !request) { /* the rest of the large reply */
				c->lost_ts = ev.ts_ns;
				c->lost_bytes += ev.len;
			} else if (!rc) {
				if (c->reply_lost && (rc = replies_lost(c)))
					goto done;
				rc = c->proto == HTTP_PROTO_MEMCACHED ?
					     mc_feed(c, request, payload, cap_n, uncaptured, ev.ts_ns) :
				     c->proto == HTTP_PROTO_POSTGRES ?
					     pg_feed(c, request, payload, cap_n, uncaptured, ev.ts_ns) :
				     c->proto == HTTP_PROTO_MYSQL ?
					     my_feed(c, request, payload, cap_n, uncaptured, ev.ts_ns) :
				     c->proto == HTTP_PROTO_NATS ?
					     nats_feed(c, request, payload, cap_n, uncaptured, ev.ts_ns) :
					     resp_feed(c, request, payload, cap_n, uncaptured, ev.ts_ns);
			}
		}
	}
done:
	Py_DECREF(key);
	return rc;
}

static PyObject *Db_process(DbEngineObject *e, PyObject *arg)
{
	Py_buffer view;
	if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE))
		return NULL;
	size_t pos = 0, size;
	const char *data;
	int r, err = 0;
	while (!err && (r = batch_next(view.buf, (size_t)view.len, &pos, &data, &size)) != 0) {
		if (r < 0) {
			PyErr_SetString(PyExc_ValueError, "malformed batch");
			err = 1;
			break;
		}
		err = one(e, data, size) < 0;
	}
	PyBuffer_Release(&view);
	if (err)
		return NULL;
	Py_RETURN_NONE;
}

static PyObject *Db_process_one(DbEngineObject *e, PyObject *arg)
{
	Py_buffer view;
	if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE))
		return NULL;
	int err = one(e, view.buf, (size_t)view.len) < 0;
	PyBuffer_Release(&view);
	if (err)
		return NULL;
	Py_RETURN_NONE;
}

static PyObject *Db_take(DbEngineObject *e, PyObject *unused)
{
	return cells_take(&e->agg);
}

static PyObject *Db_expire(DbEngineObject *e, PyObject *arg)
{
	/* connections idle since before `ts` (CLOCK_MONOTONIC ns): their closes were lost */
	unsigned long long before = PyLong_AsUnsignedLongLong(arg);
	if (PyErr_Occurred())
		return NULL;
	PyObject *gone = PyList_New(0);
	Py_ssize_t pos = 0;
	PyObject *k, *v;
	while (gone && PyDict_Next(e->conns, &pos, &k, &v)) {
		struct dbconn *c = PyCapsule_GetPointer(v, CAPSULE);
		if (c && c->last_ts < before && PyList_Append(gone, k))
			Py_CLEAR(gone);
	}
	for (Py_ssize_t i = 0; gone && i < PyList_GET_SIZE(gone); i++)
		if (PyDict_DelItem(e->conns, PyList_GET_ITEM(gone, i)))
			Py_CLEAR(gone);
	if (!gone)
		return NULL;
	Py_ssize_t n = PyList_GET_SIZE(gone);
	Py_DECREF(gone);
	return PyLong_FromSsize_t(n);
}

static int Db_init(DbEngineObject *e, PyObject *args, PyObject *kw)
{
	static char *names[] = {"records", NULL};
	int records = 0;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "|p", names, &records))
		return -1;
	if (records && !(e->recs = PyList_New(0)))
		return -1;
	e->conns = PyDict_New();
	if (cells_init(&e->agg, sizeof(struct db_cell), DB_MAX_CELLS))
		return -1;
	e->system[HTTP_PROTO_REDIS] = PyUnicode_InternFromString("redis");
	e->system[HTTP_PROTO_MEMCACHED] = PyUnicode_InternFromString("memcached");
	e->system[HTTP_PROTO_POSTGRES] = PyUnicode_InternFromString("postgresql");
	e->system[HTTP_PROTO_MYSQL] = PyUnicode_InternFromString("mysql");
	e->system[HTTP_PROTO_NATS] = PyUnicode_InternFromString("nats");
	return (e->conns && e->system[HTTP_PROTO_REDIS] &&
		e->system[HTTP_PROTO_MEMCACHED] && e->system[HTTP_PROTO_POSTGRES] &&
		e->system[HTTP_PROTO_MYSQL] && e->system[HTTP_PROTO_NATS])
		       ? 0
		       : -1;
}

static void Db_dealloc(DbEngineObject *e)
{
	Py_XDECREF(e->conns);
	cells_free(&e->agg);
	Py_XDECREF(e->recs);
	for (int i = 0; i < 16; i++)
		Py_XDECREF(e->system[i]);
	Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyObject *Db_get_connections(DbEngineObject *e, void *closure)
{
	return PyLong_FromSsize_t(PyDict_GET_SIZE(e->conns));
}

static PyObject *Db_get_events(DbEngineObject *e, void *closure)
{
	return PyLong_FromUnsignedLongLong(e->events);
}

static PyObject *Db_take_records(DbEngineObject *e, PyObject *unused)
{
	if (!e->recs)
		return PyList_New(0);
	PyObject *fresh = PyList_New(0);
	if (!fresh)
		return NULL;
	PyObject *out = e->recs;
	e->recs = fresh;
	return out;
}

static PyObject *Db_get_records_dropped(DbEngineObject *e, void *closure)
{
	return PyLong_FromUnsignedLongLong(e->records_dropped);
}

static PyObject *Db_get_operations(DbEngineObject *e, void *closure)
{
	return PyLong_FromUnsignedLongLong(e->operations);
}

static PyMethodDef Db_methods[] = {
	{"process", (PyCFunction)Db_process, METH_O,
	 "process(batch of stream events): those of database connections, parsed and paired"},
	{"process_one", (PyCFunction)Db_process_one, METH_O, "process_one(one stream event)"},
	{"take", (PyCFunction)Db_take, METH_NOARGS,
	 "take() -> ([(key, cell)], {error reason: count}) since the last take"},
	{"take_records", (PyCFunction)Db_take_records, METH_NOARGS,
	 "take_records() -> [((ident, system, operation, status, collection, namespace), start_ns, "
	 "end_ns, request_bytes, response_bytes, conn_id, statement or None)] since the last take "
	 "(DbEngine(records=True) only)"},
	{"expire", (PyCFunction)Db_expire, METH_O,
	 "expire(before_ns) -> connections idle since before then, forgotten"},
	{NULL},
};

static PyGetSetDef Db_getset[] = {
	{"connections", (getter)Db_get_connections, NULL, "connections held", NULL},
	{"events", (getter)Db_get_events, NULL, "stream events of database connections", NULL},
	{"operations", (getter)Db_get_operations, NULL, "operations paired", NULL},
	{"records_dropped", (getter)Db_get_records_dropped, NULL,
	 "records not kept: more than DB_MAX_RECORDS between two takes", NULL},
	{NULL},
};

static PyTypeObject DbEngineType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "podscope._fast.DbEngine",
	.tp_basicsize = sizeof(DbEngineObject),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)Db_init,
	.tp_dealloc = (destructor)Db_dealloc,
	.tp_methods = Db_methods,
	.tp_getset = Db_getset,
	.tp_doc = "Database and cache protocols of streamed connections: parsed, paired, aggregated",
};

int dbengine_init(PyObject *m)
{
	if (PyType_Ready(&DbEngineType) < 0)
		return -1;
	Py_INCREF(&DbEngineType);
	if (PyModule_AddObject(m, "DbEngine", (PyObject *)&DbEngineType) < 0)
		return -1;
	return PyModule_AddIntConstant(m, "DB_CELL_SIZE", sizeof(struct db_cell));
}

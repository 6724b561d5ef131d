/* HTTP records (struct http_record, bpf/http.h) to JSON lines, a batch at a time.
 *
 * The line is the one the Python path writes (collectors/http.py _publish + sinks/files.py),
 * key for key. What needs policy stays in Python and is asked once per distinct value: the
 * labels of a (cgroup id, netns), the redacted path and route template of a target, the text
 * of a peer address. Each answer is a ready JSON fragment kept in a bounded dict. */
#include <linux/types.h>

#include "fast.h"
#include "http.h"
#include "links.h"

#include <string.h>

#define MAX_CACHED 10000 /* targets and peers kept (then the cache starts over) */
#define N_METHODS 10
#define N_REASONS HTTP_BLOCK_REASONS

typedef struct {
	PyObject_HEAD PyObject *labels_of; /* (cgroup_id, netns) -> bytes fragment */
	PyObject *target_of;		     /* bytes target -> bytes fragment ("path":..,"route":..) */
	PyObject *peer_of;		     /* (family, bytes16) -> bytes JSON string */
	PyObject *text_of;		     /* str -> bytes JSON string (HTTP/2 methods), or NULL */
	PyObject *labels, *targets, *peers, *texts; /* the caches (dicts) */
	PyObject *methods;		     /* tuple of N_METHODS bytes: JSON strings */
	PyObject *reasons;		     /* tuple of N_REASONS bytes: JSON keys */
	double mono_to_wall;
	unsigned long long lines, short_records;
} EncoderObject;

static int Encoder_init(EncoderObject *self, PyObject *args, PyObject *kw)
{
	static char *names[] = {"labels_of", "target_of", "peer_of", "methods", "reasons",
				"mono_to_wall", "text_of", NULL};
	PyObject *labels_of, *target_of, *peer_of, *methods, *reasons, *text_of = NULL;
	double m2w;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO!O!d|O", names, &labels_of, &target_of,
					 &peer_of, &PyTuple_Type, &methods, &PyTuple_Type,
					 &reasons, &m2w, &text_of))
		return -1;
	if (PyTuple_GET_SIZE(methods) != N_METHODS || PyTuple_GET_SIZE(reasons) != N_REASONS) {
		PyErr_Format(PyExc_ValueError,
			     "HttpJsonl: %d method names and %d block reasons expected (bpf/http.h)",
			     N_METHODS, N_REASONS);
		return -1;
	}
	for (Py_ssize_t i = 0; i < N_METHODS; i++)
		if (!PyBytes_Check(PyTuple_GET_ITEM(methods, i)))
			return PyErr_SetString(PyExc_TypeError, "method names: bytes"), -1;
	for (Py_ssize_t i = 0; i < N_REASONS; i++)
		if (!PyBytes_Check(PyTuple_GET_ITEM(reasons, i)))
			return PyErr_SetString(PyExc_TypeError, "reason keys: bytes"), -1;
	Py_INCREF(labels_of);
	Py_INCREF(target_of);
	Py_INCREF(peer_of);
	Py_INCREF(methods);
	Py_INCREF(reasons);
	self->labels_of = labels_of;
	self->target_of = target_of;
	self->peer_of = peer_of;
	self->methods = methods;
	self->reasons = reasons;
	self->mono_to_wall = m2w;
	self->text_of = text_of && text_of != Py_None ? Py_NewRef(text_of) : NULL;
	self->labels = PyDict_New();
	self->targets = PyDict_New();
	self->peers = PyDict_New();
	self->texts = PyDict_New();
	if (!self->labels || !self->targets || !self->peers || !self->texts)
		return -1;
	return 0;
}

static void Encoder_dealloc(EncoderObject *self)
{
	Py_XDECREF(self->labels_of);
	Py_XDECREF(self->target_of);
	Py_XDECREF(self->peer_of);
	Py_XDECREF(self->methods);
	Py_XDECREF(self->reasons);
	Py_XDECREF(self->labels);
	Py_XDECREF(self->targets);
	Py_XDECREF(self->peers);
	Py_XDECREF(self->text_of);
	Py_XDECREF(self->texts);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The cached answer for key, else fn(*args) kept under key. A new reference (a resolver runs
 * Python code: another thread may clear a cache meanwhile); NULL with an exception set when fn
 * fails or does not return bytes. */
static PyObject *cached(PyObject *cache, PyObject *key, PyObject *fn, PyObject *args, int bound)
{
	PyObject *v = PyDict_GetItemWithError(cache, key);
	if (v || PyErr_Occurred()) {
		Py_XINCREF(v);
		return v;
	}
	v = PyObject_CallObject(fn, args);
	if (!v)
		return NULL;
	if (!PyBytes_Check(v)) {
		Py_DECREF(v);
		PyErr_SetString(PyExc_TypeError, "HttpJsonl: a resolver must return bytes");
		return NULL;
	}
	if (bound && PyDict_GET_SIZE(cache) >= MAX_CACHED)
		PyDict_Clear(cache);
	if (PyDict_SetItem(cache, key, v)) {
		Py_DECREF(v);
		return NULL;
	}
	return v;
}

static void put_bytes(struct out *o, PyObject *b)
{
	out_put(o, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
}

/* What an HTTP/2 request's line has that a kernel record has not (encode_h2) */
struct h2_extra {
	PyObject *method;     /* its JSON string */
	long long status;     /* 0: none (reset, or not decoded) */
	long long grpc_status; /* -1: none */
	const char *decode;   /* full, partial, none */
	uint32_t stream;      /* its stream id: a part of its span's key */
};

static void put_line(EncoderObject *self, struct out *o, const struct http_record *r,
		     PyObject *labels, PyObject *target, PyObject *peer,
		     const struct h2_extra *x);

/* The line of r, whose target is path[0:plen] (x: an HTTP/2 request's, else the kernel's) */
static int encode_one(EncoderObject *self, struct out *o, const struct http_record *r,
		      const char *path, size_t plen, const struct h2_extra *x)
{
	PyObject *key, *args, *labels, *target, *peer;

	key = Py_BuildValue("(KI)", (unsigned long long)r->cgroup_id, (unsigned)r->netns);
	if (!key)
		return -1;
	labels = cached(self->labels, key, self->labels_of, key, 0);
	Py_DECREF(key);
	if (!labels)
		return -1;

	key = PyBytes_FromStringAndSize(path, (Py_ssize_t)plen);
	if (!key)
		return -1;
	args = PyTuple_Pack(1, key);
	target = args ? cached(self->targets, key, self->target_of, args, 1) : NULL;
	Py_XDECREF(args);
	Py_DECREF(key);
	if (!target) {
		Py_DECREF(labels);
		return -1;
	}

	key = Py_BuildValue("(By#)", (unsigned char)r->family, (const char *)r->peer_addr,
			    (Py_ssize_t)sizeof(r->peer_addr));
	if (!key)
		return -1;
	peer = cached(self->peers, key, self->peer_of, key, 1);
	Py_DECREF(key);
	if (peer)
		put_line(self, o, r, labels, target, peer, x);
	Py_DECREF(labels);
	Py_DECREF(target);
	Py_XDECREF(peer);
	return peer ? 0 : -1;
}

/* "trace_id", "span_id", "parent_span_id" (links.h), null when the request has no link */
static void put_ids(struct out *o, const struct http_record *r, uint32_t stream)
{
	struct span_ids ids;
	char hex[32];

	link_ids(&r->link, stream, &r->parent, 0, r->role, &ids);
	if (!ids.linked) {
		out_str(o, ",\"trace_id\":null,\"span_id\":null,\"parent_span_id\":null");
		return;
	}
	out_str(o, ",\"trace_id\":\"");
	hex_trace(ids.trace, hex);
	out_put(o, hex, 32);
	out_str(o, "\",\"span_id\":\"");
	hex_span(ids.span, hex);
	out_put(o, hex, 16);
	if (ids.parent) {
		out_str(o, "\",\"parent_span_id\":\"");
		hex_span(ids.parent, hex);
		out_put(o, hex, 16);
		out_str(o, "\"");
	} else {
		out_str(o, "\",\"parent_span_id\":null");
	}
}

static void put_line(EncoderObject *self, struct out *o, const struct http_record *r,
		     PyObject *labels, PyObject *target, PyObject *peer,
		     const struct h2_extra *x)
{
	long long status = x ? x->status : r->status;
	if (out_reserve(o, 1024))
		return;
	out_str(o, "{\"type\":\"http_request\",\"time\":");
	{
		char t[40];
		double wall = (double)r->req_start / 1e9 + self->mono_to_wall;
		int n = snprintf(t, sizeof(t), "%.6f", wall);
		out_put(o, t, (size_t)n);
	}
	out_str(o, ",");
	put_bytes(o, labels);
	out_str(o, r->role == HTTP_ROLE_SERVER	  ? ",\"role\":\"server\""
		   : r->role == HTTP_ROLE_CLIENT ? ",\"role\":\"client\""
						 : ",\"role\":\"?\"");
	out_str(o, ",\"peer_addr\":");
	put_bytes(o, peer);
	out_str(o, ",\"peer_port\":");
	out_u64(o, r->peer_port);
	out_str(o, ",\"local_port\":");
	out_u64(o, r->local_port);
	out_str(o, ",\"method\":");
	put_bytes(o, x ? x->method
		       : PyTuple_GET_ITEM(self->methods, r->method < N_METHODS ? r->method : 0));
	out_str(o, ",\"method_original\":null,");
	put_bytes(o, target);
	out_str(o, ",\"status\":");
	if (status)
		out_u64(o, (unsigned long long)status); /* >= 0 */
	else
		out_str(o, "null");
	out_str(o, ",\"duration_seconds\":");
	out_seconds(o, r->end_ns > r->req_start ? r->end_ns - r->req_start : 0);
	out_str(o, ",\"first_byte_seconds\":");
	if (r->resp_start && status)
		out_seconds(o, r->resp_start > r->req_start ? r->resp_start - r->req_start : 0);
	else
		out_str(o, "null");
	out_str(o, ",\"request_bytes\":");
	out_u64(o, r->req_bytes);
	out_str(o, ",\"response_bytes\":");
	out_u64(o, r->resp_bytes);
	out_str(o, ",\"connection_id\":");
	out_u64(o, r->conn_id);
	out_str(o, ",\"pid\":");
	out_u64(o, r->pid);
	if (!x) {
		out_str(o, ",\"capture\":\"kernel\",\"protocol\":\"1.1\",\"grpc_status\":null,"
			   "\"decode\":\"full\"");
	} else {
		out_str(o, ",\"capture\":\"stream\",\"protocol\":\"2\",\"grpc_status\":");
		if (x->grpc_status >= 0)
			out_u64(o, (unsigned long long)x->grpc_status);
		else
			out_str(o, "null");
		out_str(o, ",\"decode\":\"");
		out_str(o, x->decode);
		out_str(o, "\"");
	}
	out_str(o, r->tls ? ",\"url_scheme\":\"https\",\"tls\":true"
			  : ",\"url_scheme\":\"http\",\"tls\":false");
	put_ids(o, r, x ? x->stream : 0);
	if (!r->breakdown) {
		out_str(o, ",\"on_cpu_seconds\":null,\"runqueue_seconds\":null,"
			   "\"blocked_seconds\":null");
		for (int i = 0; i < N_REASONS; i++) {
			out_str(o, ",");
			put_bytes(o, PyTuple_GET_ITEM(self->reasons, i));
			out_str(o, ":null");
		}
		out_str(o, ",\"reclaim_seconds\":null,\"major_faults\":null");
	} else {
		const struct http_breakdown *bd = &r->bd;
		out_str(o, ",\"on_cpu_seconds\":");
		out_double(o, (double)bd->on_cpu_ns / 1e9);
		out_str(o, ",\"runqueue_seconds\":");
		out_double(o, (double)bd->runqueue_ns / 1e9);
		out_str(o, ",\"blocked_seconds\":");
		out_double(o, (double)bd->blocked_ns / 1e9);
		unsigned long long total = 0;
		for (int i = 0; i < N_REASONS; i++)
			total += bd->by_reason_ns[i];
		for (int i = 0; i < N_REASONS; i++) {
			out_str(o, ",");
			put_bytes(o, PyTuple_GET_ITEM(self->reasons, i));
			out_str(o, ":");
			if (r->breakdown != HTTP_BD_REASONS) {
				out_str(o, "null");
			} else if (!total) {
				out_str(o, "0.0");
			} else {
				/* the raw share of blocked time, scaled to the blocked total */
				long double ns = (long double)bd->by_reason_ns[i] *
						 (long double)bd->blocked_ns / (long double)total;
				char t[48];
				int n = snprintf(t, sizeof(t), "%.9Lf", ns / 1e9L);
				out_put(o, t, (size_t)n);
			}
		}
		out_str(o, ",\"reclaim_seconds\":");
		if (r->bd_reclaim)
			out_double(o, (double)bd->reclaim_ns / 1e9);
		else
			out_str(o, "null");
		out_str(o, ",\"major_faults\":");
		out_u64(o, bd->major_faults);
	}
	out_str(o, "}\n");
	self->lines++;
}

#define CHUNK (256 * 1024) /* output handed to write() at a time: memory stays bounded */

static int flush_chunk(struct out *o, PyObject *write, long *n)
{
	if (o->failed) {
		PyErr_NoMemory();
		return -1;
	}
	if (!o->len)
		return 0;
	PyObject *r = PyObject_CallFunction(write, "y#l", o->buf, (Py_ssize_t)o->len, *n);
	o->len = 0;
	*n = 0;
	Py_XDECREF(r);
	return r ? 0 : -1;
}

/* encode(batch, write) -> lines: write(JSON lines, how many) is called per chunk */
static PyObject *Encoder_encode(EncoderObject *self, PyObject *args)
{
	Py_buffer view;
	PyObject *arg, *write;
	if (!PyArg_ParseTuple(args, "OO", &arg, &write))
		return NULL;
	if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE))
		return NULL;
	struct out o = {0};
	long total = 0;
	size_t pos = 0, size;
	const char *data;
	long n = 0;
	int r, err = 0;
	while ((r = batch_next(view.buf, (size_t)view.len, &pos, &data, &size)) != 0) {
		if (r < 0) {
			PyErr_SetString(PyExc_ValueError, "malformed batch");
			err = 1;
			break;
		}
		if (size < sizeof(struct http_record)) {
			self->short_records++;
			continue;
		}
		struct http_record rec;
		memcpy(&rec, data, sizeof(rec)); /* the batch keeps 8-byte alignment; copy anyway */
		size_t plen = rec.path_len < HTTP_PATH_MAX ? rec.path_len : HTTP_PATH_MAX;
		if (encode_one(self, &o, &rec, (const char *)rec.path, plen, NULL)) {
			err = 1;
			break;
		}
		n++;
		total++;
		if (o.len >= CHUNK && flush_chunk(&o, write, &n)) {
			err = 1;
			break;
		}
	}
	PyBuffer_Release(&view);
	if (!err && flush_chunk(&o, write, &n))
		err = 1;
	out_free(&o);
	return err ? NULL : PyLong_FromLong(total);
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* n lowercase hex digits at p into out (n / 2 bytes); 0 if not all hex, else 1 */
static int unhex(const char *p, int n, uint8_t *out)
{
	for (int i = 0; i < n; i += 2) {
		int a = hexval(p[i]), b = hexval(p[i + 1]);
		if (a < 0 || b < 0)
			return 0;
		out[i / 2] = (uint8_t)(a << 4 | b);
	}
	return 1;
}

static int all_zero(const uint8_t *p, int n)
{
	for (int i = 0; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

/* A W3C traceparent value into the link's tp_* (Trace Context level 1, 3.2, as
 * collectors/http.py traceparent() reads it: spaces and tabs around it ignored, version ff
 * invalid, version 00 with anything after the flags invalid, a later version's "-..." kept
 * unread, all-zero ids invalid). 1: valid. */
static int parse_traceparent(const char *v, Py_ssize_t n, struct http_link *l)
{
	while (n && (*v == ' ' || *v == '\t'))
		v++, n--;
	while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
		n--;
	uint8_t ver, flags, trace[16], span[8];
	if (n < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' || !unhex(v, 2, &ver) ||
	    !unhex(v + 3, 32, trace) || !unhex(v + 36, 16, span) || !unhex(v + 53, 2, &flags))
		return 0;
	if (n > 55) { /* "-" and anything but a line break (the regex's "(-.*)?") */
		if (v[55] != '-' || memchr(v + 55, '\n', (size_t)(n - 55)))
			return 0;
	}
	if (ver == 0xff || (ver == 0 && n > 55) || all_zero(trace, 16) || all_zero(span, 8))
		return 0;
	memcpy(l->tp_trace, trace, 16);
	memcpy(l->tp_span, span, 8);
	l->tp_sampled = flags & 1;
	return 1;
}

#define H2_UNKNOWN "__unknown__" /* protocols/http2.py UNKNOWN: a field not decoded */

/* One record tuple of H2Engine.take_records() as the line _h2_record and _publish make */
static int encode_h2_one(EncoderObject *self, struct out *o, PyObject *t)
{
	unsigned long long conn_id, start, end, fb, reqb, respb, cgroup_id;
	unsigned int pid, sid, netns;
	int local_port, role, tls, family, peer_port;
	long long status, grpc;
	PyObject *ident, *method, *path, *reset, *outcome, *seq, *parent, *tp, *local;
	const char *peer, *peer_raw;
	Py_ssize_t peer_len, peer_raw_len;

	if (!PyTuple_Check(t) ||
	    !PyArg_ParseTuple(t, "KOIiIOOLLOOKKKKKOOOOy#", &conn_id, &ident, &pid, &local_port,
			      &sid, &method, &path, &status, &grpc, &reset, &outcome, &start, &end,
			      &fb, &reqb, &respb, &seq, &parent, &tp, &local, &peer_raw,
			      &peer_raw_len) ||
	    !PyTuple_Check(ident) ||
	    !PyArg_ParseTuple(ident, "KIiiiy#i", &cgroup_id, &netns, &role, &tls, &family, &peer,
			      &peer_len, &peer_port)) {
		if (!PyErr_Occurred())
			PyErr_SetString(PyExc_TypeError, "encode_h2: a record of H2Engine expected");
		return -1;
	}
	struct http_record r;
	memset(&r, 0, sizeof(r));
	r.conn_id = conn_id;
	r.cgroup_id = cgroup_id;
	r.req_start = start;
	r.resp_start = fb;
	r.end_ns = end;
	r.req_bytes = reqb;
	r.resp_bytes = respb;
	r.netns = netns;
	r.pid = pid;
	r.local_port = (uint16_t)local_port;
	r.peer_port = (uint16_t)peer_port;
	r.role = (uint8_t)role;
	r.family = (uint8_t)family;
	r.tls = tls ? 1 : 0;
	memcpy(r.peer_addr, peer, peer_len < 16 ? (size_t)peer_len : 16);
	/* the links, as _link_of makes them: the request's own from the socket's local one */
	if (seq != Py_None && PyBytes_Check(local) && PyBytes_GET_SIZE(local) == sizeof(r.link)) {
		memcpy(&r.link, PyBytes_AS_STRING(local), sizeof(r.link));
		if (role == HTTP_ROLE_SERVER) {
			memcpy(r.link.client_addr, peer_raw,
			       peer_raw_len < 16 ? (size_t)peer_raw_len : 16);
			r.link.client_port = (uint16_t)peer_port;
		}
		r.link.seq = (uint32_t)PyLong_AsUnsignedLongLongMask(seq);
		r.link.flags = HTTP_LINK_SEQ;
		memset(r.link.tp_trace, 0, sizeof(r.link.tp_trace));
		memset(r.link.tp_span, 0, sizeof(r.link.tp_span));
		r.link.tp_sampled = 0;
		if (PyUnicode_Check(tp)) {
			Py_ssize_t n;
			const char *v = PyUnicode_AsUTF8AndSize(tp, &n);
			if (!v)
				return -1;
			if (parse_traceparent(v, n, &r.link))
				r.link.flags |= HTTP_LINK_TP;
		}
	}
	if (PyBytes_Check(parent) && PyBytes_GET_SIZE(parent) == sizeof(r.parent))
		memcpy(&r.parent, PyBytes_AS_STRING(parent), sizeof(r.parent));

	PyObject *m = method == Py_None ? PyUnicode_FromString(H2_UNKNOWN) : Py_NewRef(method);
	PyObject *args = m ? PyTuple_Pack(1, m) : NULL;
	PyObject *mjson = args ? cached(self->texts, m, self->text_of, args, 1) : NULL;
	Py_XDECREF(args);
	Py_XDECREF(m);
	if (!mjson)
		return -1;
	PyObject *pb = path == Py_None ? PyBytes_FromString(H2_UNKNOWN)
				       : PyUnicode_AsLatin1String(path);
	const char *decode = PyUnicode_Check(outcome) ? PyUnicode_AsUTF8(outcome) : NULL;
	int rc = -1;
	if (pb && decode) {
		struct h2_extra x = {mjson, PyObject_IsTrue(reset) ? 0 : status, grpc, decode, sid};
		rc = encode_one(self, o, &r, PyBytes_AS_STRING(pb), (size_t)PyBytes_GET_SIZE(pb),
				&x);
	} else if (!PyErr_Occurred()) {
		PyErr_SetString(PyExc_TypeError, "encode_h2: the outcome is a str");
	}
	Py_XDECREF(pb);
	Py_DECREF(mjson);
	return rc;
}

/* encode_h2(records, write) -> lines: H2Engine.take_records()'s tuples as JSON lines */
static PyObject *Encoder_encode_h2(EncoderObject *self, PyObject *args)
{
	PyObject *list, *write;
	if (!PyArg_ParseTuple(args, "O!O", &PyList_Type, &list, &write))
		return NULL;
	if (!self->text_of)
		return PyErr_Format(PyExc_ValueError, "HttpJsonl: encode_h2 needs text_of");
	struct out o = {0};
	long n = 0, total = 0;
	int err = 0;
	for (Py_ssize_t i = 0; !err && i < PyList_GET_SIZE(list); i++) {
		if (encode_h2_one(self, &o, PyList_GET_ITEM(list, i))) {
			err = 1;
			break;
		}
		n++;
		total++;
		if (o.len >= CHUNK && flush_chunk(&o, write, &n))
			err = 1;
	}
	if (!err && flush_chunk(&o, write, &n))
		err = 1;
	out_free(&o);
	return err ? NULL : PyLong_FromLong(total);
}

static PyObject *Encoder_clear_labels(EncoderObject *self, PyObject *unused)
{
	PyDict_Clear(self->labels);
	Py_RETURN_NONE;
}

static PyObject *Encoder_get_short(EncoderObject *self, void *closure)
{
	return PyLong_FromUnsignedLongLong(self->short_records);
}

static PyObject *Encoder_get_cached(EncoderObject *self, void *closure)
{
	return PyLong_FromSsize_t(PyDict_GET_SIZE(self->labels) + PyDict_GET_SIZE(self->targets) +
				  PyDict_GET_SIZE(self->peers) + PyDict_GET_SIZE(self->texts));
}

static PyMethodDef Encoder_methods[] = {
	{"encode", (PyCFunction)Encoder_encode, METH_VARARGS,
	 "encode(batch, write): a batch of struct http_record (Batch) as JSON lines, handed to\n"
	 "write(lines, how many) a chunk at a time. Returns the number of lines."},
	{"encode_h2", (PyCFunction)Encoder_encode_h2, METH_VARARGS,
	 "encode_h2(records, write): H2Engine.take_records()'s tuples as JSON lines, handed to\n"
	 "write(lines, how many) a chunk at a time. Returns the number of lines."},
	{"clear_labels", (PyCFunction)Encoder_clear_labels, METH_NOARGS,
	 "Forget the cached labels (names can change: call at every aggregate drain)."},
	{NULL},
};

static PyGetSetDef Encoder_getset[] = {
	{"short_records", (getter)Encoder_get_short, NULL, "records shorter than the struct", NULL},
	{"cached", (getter)Encoder_get_cached, NULL, "entries in the caches", NULL},
	{NULL},
};

static PyTypeObject EncoderType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "podscope._fast.HttpJsonl",
	.tp_basicsize = sizeof(EncoderObject),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "struct http_record batches to the JSON lines of the jsonl export.",
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)Encoder_init,
	.tp_dealloc = (destructor)Encoder_dealloc,
	.tp_methods = Encoder_methods,
	.tp_getset = Encoder_getset,
};

int records_init(PyObject *m)
{
	if (PyType_Ready(&EncoderType) < 0)
		return -1;
	Py_INCREF(&EncoderType);
	if (PyModule_AddObject(m, "HttpJsonl", (PyObject *)&EncoderType) < 0)
		return -1;
	if (PyModule_AddIntConstant(m, "HTTP_RECORD_SIZE", sizeof(struct http_record)) < 0)
		return -1;
	return 0;
}

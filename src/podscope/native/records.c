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
	PyObject *labels, *targets, *peers;  /* the caches (dicts) */
	PyObject *methods;		     /* tuple of N_METHODS bytes: JSON strings */
	PyObject *reasons;		     /* tuple of N_REASONS bytes: JSON keys */
	double mono_to_wall;
	unsigned long long lines, short_records;
} EncoderObject;

static int Encoder_init(EncoderObject *self, PyObject *args, PyObject *kw)
{
	static char *names[] = {"labels_of", "target_of", "peer_of", "methods", "reasons",
				"mono_to_wall", NULL};
	PyObject *labels_of, *target_of, *peer_of, *methods, *reasons;
	double m2w;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO!O!d", names, &labels_of, &target_of,
					 &peer_of, &PyTuple_Type, &methods, &PyTuple_Type,
					 &reasons, &m2w))
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
	self->labels = PyDict_New();
	self->targets = PyDict_New();
	self->peers = PyDict_New();
	if (!self->labels || !self->targets || !self->peers)
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

static void put_line(EncoderObject *self, struct out *o, const struct http_record *r,
		     PyObject *labels, PyObject *target, PyObject *peer);

static int encode_one(EncoderObject *self, struct out *o, const struct http_record *r)
{
	PyObject *key, *args, *labels, *target, *peer;

	key = Py_BuildValue("(KI)", (unsigned long long)r->cgroup_id, (unsigned)r->netns);
	if (!key)
		return -1;
	labels = cached(self->labels, key, self->labels_of, key, 0);
	Py_DECREF(key);
	if (!labels)
		return -1;

	size_t plen = r->path_len < HTTP_PATH_MAX ? r->path_len : HTTP_PATH_MAX;
	key = PyBytes_FromStringAndSize((const char *)r->path, (Py_ssize_t)plen);
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
		put_line(self, o, r, labels, target, peer);
	Py_DECREF(labels);
	Py_DECREF(target);
	Py_XDECREF(peer);
	return peer ? 0 : -1;
}

/* "trace_id", "span_id", "parent_span_id" (links.h), null when the request has no link */
static void put_ids(struct out *o, const struct http_record *r)
{
	struct span_ids ids;
	char hex[32];

	link_ids(&r->link, 0, &r->parent, 0, r->role, &ids);
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
		     PyObject *labels, PyObject *target, PyObject *peer)
{
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
	put_bytes(o, PyTuple_GET_ITEM(self->methods, r->method < N_METHODS ? r->method : 0));
	out_str(o, ",\"method_original\":null,");
	put_bytes(o, target);
	out_str(o, ",\"status\":");
	if (r->status)
		out_u64(o, r->status);
	else
		out_str(o, "null");
	out_str(o, ",\"duration_seconds\":");
	out_seconds(o, r->end_ns > r->req_start ? r->end_ns - r->req_start : 0);
	out_str(o, ",\"first_byte_seconds\":");
	if (r->resp_start && r->status)
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
	out_str(o, ",\"capture\":\"kernel\",\"protocol\":\"1.1\",\"grpc_status\":null,"
		   "\"decode\":\"full\"");
	out_str(o, r->tls ? ",\"url_scheme\":\"https\",\"tls\":true"
			  : ",\"url_scheme\":\"http\",\"tls\":false");
	put_ids(o, r);
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
		if (encode_one(self, &o, &rec)) {
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
				  PyDict_GET_SIZE(self->peers));
}

static PyMethodDef Encoder_methods[] = {
	{"encode", (PyCFunction)Encoder_encode, METH_VARARGS,
	 "encode(batch, write): a batch of struct http_record (Batch) as JSON lines, handed to\n"
	 "write(lines, how many) a chunk at a time. Returns the number of lines."},
	{"clear_labels", (PyCFunction)Encoder_clear_labels, METH_NOARGS,
	 "Forget the cached labels (names can change: call at every aggregate drain)."},
	{NULL},
};

static PyGetSetDef Encoder_getset[] = {
	{"short_records", (getter)Encoder_get_short, NULL, "records shorter than the struct", NULL},
	{"cached", (getter)Encoder_get_cached, NULL, "entries in the three caches", NULL},
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

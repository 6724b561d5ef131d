/* podscope._fast: ring buffers drained by compiled code, a batch per poll for Python.
 *
 * libbpf calls a ring buffer's sample callback once per record. A ctypes callback costs a trip
 * into Python per record (~1-2 us); here the callback is this file's C function: it appends the
 * record to a Batch (no Python object is touched: it runs while ring_buffer__poll holds no GIL),
 * and Python takes the whole batch as one bytes object after the poll. */
#include "h2.h"
#include "links.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- output buffer ----------------------------------------------------------------------- */

int out_reserve(struct out *o, size_t more)
{
	if (o->failed)
		return -1;
	if (o->len + more <= o->cap)
		return 0;
	size_t cap = o->cap ? o->cap : 4096;
	while (cap < o->len + more)
		cap *= 2;
	char *p = realloc(o->buf, cap);
	if (!p) {
		o->failed = 1;
		return -1;
	}
	o->buf = p;
	o->cap = cap;
	return 0;
}

void out_put(struct out *o, const void *p, size_t n)
{
	if (!n || out_reserve(o, n)) /* memcpy of nothing may still not take NULL */
		return;
	memcpy(o->buf + o->len, p, n);
	o->len += n;
}

void out_str(struct out *o, const char *s)
{
	out_put(o, s, strlen(s));
}

void out_u64(struct out *o, unsigned long long v)
{
	char tmp[24];
	int i = sizeof(tmp);
	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	out_put(o, tmp + i, sizeof(tmp) - i);
}

void out_seconds(struct out *o, unsigned long long ns)
{
	char frac[10];
	unsigned long long f = ns % 1000000000ULL;
	out_u64(o, ns / 1000000000ULL);
	for (int i = 8; i >= 0; i--) {
		frac[i + 1] = (char)('0' + f % 10);
		f /= 10;
	}
	frac[0] = '.';
	out_put(o, frac, sizeof(frac));
}

void out_double(struct out *o, double v)
{
	char tmp[40];
	int n = 0;
	for (int digits = 15; digits <= 17; digits++) { /* the shortest that reads back as v */
		n = snprintf(tmp, sizeof(tmp), "%.*g", digits, v);
		if (n > 0 && n < (int)sizeof(tmp) && strtod(tmp, NULL) == v)
			break;
	}
	if (n <= 0 || n >= (int)sizeof(tmp) || strpbrk(tmp, "ni")) { /* nan, inf: not JSON */
		out_str(o, "null");
		return;
	}
	out_put(o, tmp, (size_t)n);
	if (!strpbrk(tmp, ".e"))
		out_str(o, ".0");
}

void out_free(struct out *o)
{
	free(o->buf);
	o->buf = NULL;
	o->len = o->cap = 0;
}

int batch_next(const char *buf, size_t len, size_t *pos, const char **data, size_t *size)
{
	if (*pos >= len)
		return 0;
	if (len - *pos < BATCH_HDR)
		return -1;
	uint32_t n;
	memcpy(&n, buf + *pos, sizeof(n));
	size_t step = BATCH_HDR + BATCH_ALIGN((size_t)n);
	if (step > len - *pos)
		return -1;
	*data = buf + *pos + BATCH_HDR;
	*size = n;
	*pos += step;
	return 1;
}

/* --- Batch --------------------------------------------------------------------------------- */

struct batch {
	char *buf;
	size_t len, cap;
	size_t limit;		  /* bytes held at most between two takes */
	unsigned long long dropped; /* records that did not fit (or memory ran out) */
};

typedef struct {
	PyObject_HEAD struct batch b;
	Py_ssize_t exports; /* views handed out: the buffer must not move while any is alive */
} BatchObject;

/* libbpf's ring_buffer_sample_fn. Never fails: a record that cannot be kept is counted. */
static int sample_cb(void *ctx, void *data, size_t size)
{
	struct batch *b = ctx;
	size_t need = BATCH_HDR + BATCH_ALIGN(size);
	if (size > UINT32_MAX || b->len + need > b->limit) {
		b->dropped++;
		return 0;
	}
	if (b->len + need > b->cap) {
		size_t cap = b->cap ? b->cap : 1 << 16;
		while (cap < b->len + need)
			cap *= 2;
		char *p = realloc(b->buf, cap);
		if (!p) {
			b->dropped++;
			return 0;
		}
		b->buf = p;
		b->cap = cap;
	}
	uint32_t hdr[2] = {(uint32_t)size, 0};
	memcpy(b->buf + b->len, hdr, sizeof(hdr));
	memcpy(b->buf + b->len + BATCH_HDR, data, size);
	memset(b->buf + b->len + BATCH_HDR + size, 0, BATCH_ALIGN(size) - size);
	b->len += need;
	return 0;
}

static int Batch_init(BatchObject *self, PyObject *args, PyObject *kw)
{
	static char *names[] = {"limit", NULL};
	Py_ssize_t limit = 256 << 20;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "|n", names, &limit))
		return -1;
	if (limit < 4096) {
		PyErr_SetString(PyExc_ValueError, "Batch limit below 4096 bytes");
		return -1;
	}
	self->b.limit = (size_t)limit;
	return 0;
}

static void Batch_dealloc(BatchObject *self)
{
	free(self->b.buf);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The gathered records in place (no copy): memoryview(batch). Only between polls. */
static int Batch_getbuffer(BatchObject *self, Py_buffer *view, int flags)
{
	if (PyBuffer_FillInfo(view, (PyObject *)self, self->b.buf ? self->b.buf : "",
			      (Py_ssize_t)self->b.len, 1, flags) < 0)
		return -1;
	self->exports++;
	return 0;
}

static void Batch_releasebuffer(BatchObject *self, Py_buffer *view)
{
	self->exports--;
}

static PyBufferProcs Batch_as_buffer = {
	.bf_getbuffer = (getbufferproc)Batch_getbuffer,
	.bf_releasebuffer = (releasebufferproc)Batch_releasebuffer,
};

static void batch_shrink(struct batch *b)
{
	/* a burst's buffer is given back once it is mostly idle: memory stays bounded */
	if (b->cap > (1u << 20) && b->len < b->cap / 8) {
		free(b->buf);
		b->buf = NULL;
		b->cap = 0;
	}
}

static PyObject *Batch_clear(BatchObject *self, PyObject *unused)
{
	if (self->exports) {
		PyErr_SetString(PyExc_BufferError, "Batch.clear() while a view of it is alive");
		return NULL;
	}
	self->b.len = 0;
	batch_shrink(&self->b);
	Py_RETURN_NONE;
}

static PyObject *Batch_take(BatchObject *self, PyObject *unused)
{
	if (self->exports) {
		PyErr_SetString(PyExc_BufferError, "Batch.take() while a view of it is alive");
		return NULL;
	}
	PyObject *r = PyBytes_FromStringAndSize(self->b.buf, (Py_ssize_t)self->b.len);
	if (!r)
		return NULL;
	self->b.len = 0;
	batch_shrink(&self->b);
	return r;
}

static PyObject *Batch_get_ctx(BatchObject *self, void *closure)
{
	return PyLong_FromVoidPtr(&self->b);
}

static PyObject *Batch_get_dropped(BatchObject *self, void *closure)
{
	return PyLong_FromUnsignedLongLong(self->b.dropped);
}

static PyObject *Batch_get_pending(BatchObject *self, void *closure)
{
	return PyLong_FromSize_t(self->b.len);
}

static PyMethodDef Batch_methods[] = {
	{"take", (PyCFunction)Batch_take, METH_NOARGS,
	 "The records gathered since the last take, as one bytes object (see split)."},
	{"clear", (PyCFunction)Batch_clear, METH_NOARGS,
	 "Forget the gathered records (after reading them in place: memoryview(batch))."},
	{NULL},
};

static PyGetSetDef Batch_getset[] = {
	{"ctx", (getter)Batch_get_ctx, NULL, "the address libbpf passes to the callback", NULL},
	{"dropped", (getter)Batch_get_dropped, NULL, "records not kept (limit or memory)", NULL},
	{"pending", (getter)Batch_get_pending, NULL, "bytes gathered and not taken yet", NULL},
	{NULL},
};

static PyTypeObject BatchType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "podscope._fast.Batch",
	.tp_basicsize = sizeof(BatchObject),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "Where a ring buffer's records gather between polls (SAMPLE_CALLBACK's ctx).",
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)Batch_init,
	.tp_dealloc = (destructor)Batch_dealloc,
	.tp_methods = Batch_methods,
	.tp_getset = Batch_getset,
	.tp_as_buffer = &Batch_as_buffer,
};

/* --- module -------------------------------------------------------------------------------- */

static PyObject *split(PyObject *mod, PyObject *arg)
{
	Py_buffer view;
	if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE))
		return NULL;
	PyObject *list = PyList_New(0);
	size_t pos = 0, size;
	const char *data;
	int r;
	while (list && (r = batch_next(view.buf, (size_t)view.len, &pos, &data, &size)) != 0) {
		if (r < 0) {
			PyErr_SetString(PyExc_ValueError, "malformed batch");
			Py_CLEAR(list);
			break;
		}
		PyObject *b = PyBytes_FromStringAndSize(data, (Py_ssize_t)size);
		if (!b || PyList_Append(list, b)) {
			Py_XDECREF(b);
			Py_CLEAR(list);
			break;
		}
		Py_DECREF(b);
	}
	PyBuffer_Release(&view);
	return list;
}

/* --- aggregate cells (fast.h) --------------------------------------------------------------- */

int cells_init(struct cells *a, size_t size, Py_ssize_t max)
{
	a->size = size;
	a->max = max;
	a->cells = PyDict_New();
	a->overflow = PyList_New(0);
	a->errors = PyDict_New();
	return a->cells && a->overflow && a->errors ? 0 : -1;
}

void cells_free(struct cells *a)
{
	Py_CLEAR(a->cells);
	Py_CLEAR(a->overflow);
	Py_CLEAR(a->errors);
}

void *cells_get(struct cells *a, PyObject *key, void *scratch, PyObject **held)
{
	PyObject *v = PyDict_GetItemWithError(a->cells, key);
	*held = NULL;
	if (!v && PyErr_Occurred())
		return NULL;
	if (!v && PyDict_GET_SIZE(a->cells) >= a->max) {
		memset(scratch, 0, a->size);
		return scratch;
	}
	if (!v) {
		v = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)a->size);
		if (!v)
			return NULL;
		memset(PyByteArray_AS_STRING(v), 0, a->size);
		int err = PyDict_SetItem(a->cells, key, v);
		Py_DECREF(v); /* the dict holds it */
		if (err)
			return NULL;
	}
	*held = v;
	return PyByteArray_AS_STRING(v);
}

int cells_spill(struct cells *a, PyObject *key, const void *scratch)
{
	PyObject *item = Py_BuildValue("(Oy#)", key, (const char *)scratch, (Py_ssize_t)a->size);
	int err = !item || PyList_Append(a->overflow, item);
	Py_XDECREF(item);
	return err ? -1 : 0;
}

PyObject *cells_take(struct cells *a)
{
	PyObject *k, *v;
	Py_ssize_t pos = 0;
	while (PyDict_Next(a->cells, &pos, &k, &v)) {
		PyObject *t = Py_BuildValue("(Oy#)", k, PyByteArray_AS_STRING(v),
					    PyByteArray_GET_SIZE(v));
		if (!t || PyList_Append(a->overflow, t)) {
			Py_XDECREF(t);
			return NULL;
		}
		Py_DECREF(t);
	}
	PyObject *cells = PyDict_New(), *overflow = PyList_New(0), *errs = PyDict_New();
	if (!cells || !overflow || !errs) {
		Py_XDECREF(cells);
		Py_XDECREF(overflow);
		Py_XDECREF(errs);
		return NULL;
	}
	PyObject *out = PyTuple_Pack(2, a->overflow, a->errors);
	if (!out) {
		Py_DECREF(cells);
		Py_DECREF(overflow);
		Py_DECREF(errs);
		return NULL;
	}
	Py_SETREF(a->cells, cells);
	Py_SETREF(a->overflow, overflow);
	Py_SETREF(a->errors, errs);
	return out;
}

int cells_bump(struct cells *a, const char *reason, long n)
{
	PyObject *k = PyUnicode_FromString(reason);
	if (!k)
		return -1;
	PyObject *v = PyDict_GetItemWithError(a->errors, k);
	long was = v ? PyLong_AsLong(v) : 0;
	PyObject *nv = PyErr_Occurred() ? NULL : PyLong_FromLong(was + n);
	int r = nv ? PyDict_SetItem(a->errors, k, nv) : -1;
	Py_XDECREF(nv);
	Py_DECREF(k);
	return r;
}

int log2_slot(uint64_t ns, int slots)
{
	if (!ns)
		return 0;
	int s = 64 - __builtin_clzll(ns);
	return s < slots ? s : slots - 1;
}

static PyMethodDef module_methods[] = {
	{"split", split, METH_O, "The records of a batch (Batch.take()), as a list of bytes."},
	{NULL},
};

static struct PyModuleDef fast_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "podscope._fast",
	.m_doc = "podscope's per-event paths in compiled code.",
	.m_size = -1,
	.m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fast(void)
{
	if (PyType_Ready(&BatchType) < 0)
		return NULL;
	PyObject *m = PyModule_Create(&fast_module);
	if (!m)
		return NULL;
	Py_INCREF(&BatchType);
	if (PyModule_AddObject(m, "Batch", (PyObject *)&BatchType) < 0 ||
	    PyModule_AddObject(m, "SAMPLE_CALLBACK", PyLong_FromVoidPtr((void *)sample_cb)) < 0 ||
	    records_init(m) < 0 || h2_init(m) < 0 || h2engine_init(m) < 0 ||
	    dbengine_init(m) < 0 || links_init(m) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}

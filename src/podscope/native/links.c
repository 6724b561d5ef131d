/* Span and trace ids from the TCP position of a request (see links.h and docs/traces.md).
 *
 * A request's key is what both of its ends see: the client's address (IPv4 as ::ffff:a.b.c.d)
 * and port, the sequence number of its first byte in the client-to-server direction, and its
 * HTTP/2 stream id. Its client span is C(key), its server span S(key), the server span's parent
 * C(key). A client span's trace is the one of the request its thread was serving (the parent),
 * else T(key); a server span's trace is T(key): an agent cannot know whether the client it
 * answers was itself serving someone (`podscope join` re-keys such trees). A W3C traceparent on
 * the request wins on both ends: its trace id, and on the client end its parent-id. */
#include "fast.h"
#include "links.h"

#include <string.h>

#define TAG_CLIENT 0x706f642d636c6e74ULL /* "pod-clnt" */
#define TAG_SERVER 0x706f642d73727672ULL /* "pod-srvr" */
#define TAG_TRACE1 0x706f642d74726331ULL /* "pod-trc1" */
#define TAG_TRACE2 0x706f642d74726332ULL /* "pod-trc2" */

static uint64_t mix(uint64_t z) /* splitmix64's finaliser */
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t be64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

/* The key as four words: the address as IPv6 (IPv4-mapped), port and sequence, stream. */
static void key_words(const struct http_link *l, uint32_t stream, uint64_t w[4])
{
	uint8_t a[16];

	if (l->family == 2) {
		memset(a, 0, 10);
		a[10] = a[11] = 0xff;
		memcpy(a + 12, l->client_addr, 4);
	} else {
		memcpy(a, l->client_addr, 16);
	}
	w[0] = be64(a);
	w[1] = be64(a + 8);
	w[2] = (uint64_t)l->client_port << 32 | l->seq;
	w[3] = stream;
}

static uint64_t hash(uint64_t tag, const uint64_t w[4])
{
	uint64_t h = mix(tag);
	for (int i = 0; i < 4; i++)
		h = mix(h ^ w[i]) + 0x9e3779b97f4a7c15ULL;
	h = mix(h);
	return h ? h : 1; /* 0 is not a valid id */
}

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static void trace_of(const uint64_t w[4], uint8_t out[16])
{
	put_be64(out, hash(TAG_TRACE1, w));
	put_be64(out + 8, hash(TAG_TRACE2, w));
}

void link_ids(const struct http_link *own, uint32_t stream, const struct http_link *parent,
	      uint32_t parent_stream, int role, struct span_ids *out)
{
	uint64_t w[4], pw[4];

	memset(out, 0, sizeof(*out));
	if (!(own->flags & HTTP_LINK_SEQ))
		return;
	out->linked = 1;
	key_words(own, stream, w);
	if (role == HTTP_ROLE_SERVER) {
		out->span = hash(TAG_SERVER, w);
		out->parent = hash(TAG_CLIENT, w);
		if (own->flags & HTTP_LINK_TP)
			memcpy(out->trace, own->tp_trace, 16);
		else
			trace_of(w, out->trace);
		return;
	}
	out->span = hash(TAG_CLIENT, w);
	if (own->flags & HTTP_LINK_TP) { /* the application's own context */
		memcpy(out->trace, own->tp_trace, 16);
		out->parent = be64(own->tp_span);
	} else if (parent && (parent->flags & HTTP_LINK_SEQ)) {
		key_words(parent, parent_stream, pw);
		out->parent = hash(TAG_SERVER, pw);
		if (parent->flags & HTTP_LINK_TP)
			memcpy(out->trace, parent->tp_trace, 16);
		else
			trace_of(pw, out->trace);
	} else {
		trace_of(w, out->trace);
	}
}

static const char HEX[] = "0123456789abcdef";

void hex_trace(const uint8_t trace[16], char out[32])
{
	for (int i = 0; i < 16; i++) {
		out[2 * i] = HEX[trace[i] >> 4];
		out[2 * i + 1] = HEX[trace[i] & 15];
	}
}

void hex_span(uint64_t span, char out[16])
{
	for (int i = 15; i >= 0; i--, span >>= 4)
		out[i] = HEX[span & 15];
}

/* span_ids(role, link, stream, parent, parent_stream) -> (trace, span, parent or None) as hex, or
 * None when the link has no position */
static PyObject *py_span_ids(PyObject *self, PyObject *args)
{
	Py_buffer own, par;
	unsigned int stream, pstream;
	int role;
	struct http_link a, b;
	struct span_ids ids;
	char t[32], s[16], p[16];

	if (!PyArg_ParseTuple(args, "iy*Iy*I", &role, &own, &stream, &par, &pstream))
		return NULL;
	if (own.len != sizeof(a) || (par.len != sizeof(b) && par.len != 0)) {
		PyBuffer_Release(&own);
		PyBuffer_Release(&par);
		return PyErr_Format(PyExc_ValueError, "span_ids: a struct http_link is %zu bytes",
				    sizeof(a));
	}
	memcpy(&a, own.buf, sizeof(a));
	if (par.len)
		memcpy(&b, par.buf, sizeof(b));
	PyBuffer_Release(&own);
	PyBuffer_Release(&par);
	link_ids(&a, stream, par.len ? &b : NULL, pstream, role, &ids);
	if (!ids.linked)
		Py_RETURN_NONE;
	hex_trace(ids.trace, t);
	hex_span(ids.span, s);
	if (!ids.parent)
		return Py_BuildValue("(s#s#O)", t, (Py_ssize_t)32, s, (Py_ssize_t)16, Py_None);
	hex_span(ids.parent, p);
	return Py_BuildValue("(s#s#s#)", t, (Py_ssize_t)32, s, (Py_ssize_t)16, p, (Py_ssize_t)16);
}

static PyMethodDef links_methods[] = {
	{"span_ids", py_span_ids, METH_VARARGS,
	 "span_ids(role, link, stream, parent, parent_stream): (trace_id, span_id, parent_span_id)\n"
	 "as hex of a request's struct http_link (parent: its parent's, or b''), or None."},
	{NULL},
};

int links_init(PyObject *m)
{
	if (PyModule_AddFunctions(m, links_methods) < 0)
		return -1;
	return PyModule_AddIntConstant(m, "HTTP_LINK_SIZE", sizeof(struct http_link));
}

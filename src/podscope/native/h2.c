/* HTTP/2 on the wire, in compiled code: frames and HPACK of one connection, both directions.
 *
 * H2Wire takes each direction's bytes as the syscalls delivered them and returns what the
 * request bookkeeping (protocols/http2.py H2Connection) needs, as a list of small tuples:
 *   (EV_HEADERS, stream, flags, outcome, method, path, authority, status, grpc_status,
 *    grpc_message, content_type, has_status, has_method)   one whole header block, decoded
 *   (EV_DATA, stream, flags, length)                          a DATA frame (payload not kept)
 *   (EV_RST, stream)   (EV_GOAWAY, last stream)   (EV_PREFACE,)
 * Header fields that are absent are None; `outcome` is 0 (decoded), 1 (partial: a reference
 * to a dynamic-table entry this side never saw) or 2 (not decodable). Malformed input ends
 * the call with the reason as the second item of the result (the events before it stand).
 *
 * State is bounded: a frame or header block larger than MAX_HEADER_BLOCK is an error, the
 * dynamic table is capped at MAX_TABLE bytes, a header list at MAX_HEADER_LIST. The Huffman
 * code is not restated here: h2_huffman() takes it from the hpack library at import. */
#include "h2.h"

#include <string.h>

#define MAX_FRAME (1u << 24)
#define MAX_HEADER_BLOCK (256u * 1024)
#define MAX_TABLE (64u * 1024)
#define MAX_HEADER_LIST (64u * 1024) /* as hpack's Decoder: the decoded size of one block */
#define DEFAULT_TABLE 4096
#define STATIC_ENTRIES 61

enum { DATA = 0, HEADERS = 1, RST_STREAM = 3, SETTINGS = 4, PUSH_PROMISE = 5, GOAWAY = 7,
       CONTINUATION = 9 };
enum { F_END_STREAM = 0x1, F_ACK = 0x1, F_END_HEADERS = 0x4, F_PADDED = 0x8, F_PRIORITY = 0x20 };

static const char PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define PREFACE_LEN 24

/* --- Huffman (RFC 7541 appendix B), as a binary tree built from the code table ------------- */

#define HUFF_NODES 512
static int16_t huff_tree[HUFF_NODES][2]; /* child node, or -(symbol + 1) at a leaf; 0: none */
static int huff_ready;
static int huff_build_steps(void);
static void huff_memo_clear(void);

static PyObject *h2_huffman(PyObject *mod, PyObject *args)
{
	PyObject *codes, *lengths;
	if (!PyArg_ParseTuple(args, "OO", &codes, &lengths))
		return NULL;
	PyObject *c = PySequence_Fast(codes, "codes: a sequence");
	PyObject *l = c ? PySequence_Fast(lengths, "lengths: a sequence") : NULL;
	if (!l) {
		Py_XDECREF(c);
		return NULL;
	}
	int ok = PySequence_Fast_GET_SIZE(c) == 257 && PySequence_Fast_GET_SIZE(l) == 257;
	int used = 1;
	memset(huff_tree, 0, sizeof(huff_tree));
	huff_memo_clear();
	for (int sym = 0; ok && sym < 257; sym++) {
		unsigned long code = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(c, sym));
		long len = PyLong_AsLong(PySequence_Fast_GET_ITEM(l, sym));
		if (PyErr_Occurred() || len < 1 || len > 30) {
			ok = 0;
			break;
		}
		int node = 0;
		for (long bit = len - 1; ok && bit >= 0; bit--) {
			int b = (code >> bit) & 1;
			if (bit == 0) {
				if (huff_tree[node][b] != 0)
					ok = 0;
				huff_tree[node][b] = (int16_t)(-(sym + 1));
			} else if (huff_tree[node][b] == 0) {
				if (used >= HUFF_NODES) {
					ok = 0;
					break;
				}
				huff_tree[node][b] = (int16_t)used;
				node = used++;
			} else if (huff_tree[node][b] < 0) {
				ok = 0; /* not a prefix code */
			} else {
				node = huff_tree[node][b];
			}
		}
	}
	Py_DECREF(c);
	Py_DECREF(l);
	if (!ok) {
		if (!PyErr_Occurred())
			PyErr_SetString(PyExc_ValueError, "h2_huffman: not HPACK's 257-symbol code");
		return NULL;
	}
	if (huff_build_steps()) {
		PyErr_SetString(PyExc_ValueError, "h2_huffman: too many tree nodes");
		return NULL;
	}
	huff_ready = 1;
	Py_RETURN_NONE;
}

/* Decoding 4 bits at a time: from each internal node of the tree (a state) and a nibble, the
 * state reached, the symbol completed on the way (at most one: codes are 5 bits or more), or
 * a failure (EOS, or a code that does not exist). Built once from huff_tree. */
#define HUFF_STATES 256
struct huff_step {
	uint8_t next;	/* the state after the nibble */
	uint8_t emit;	/* 1: sym completed */
	uint8_t fail;	/* 1: EOS or no such code */
	uint8_t sym;
};
static struct huff_step huff_steps[HUFF_STATES][16];
static uint8_t huff_accept[HUFF_STATES]; /* a valid end: all ones since the last symbol, < 8 */
static int16_t huff_state_of[HUFF_NODES]; /* tree node -> state */

static int huff_build_steps(void)
{
	int states = 0;
	for (int i = 0; i < HUFF_NODES; i++)
		huff_state_of[i] = -1;
	/* the internal nodes are 0..used-1 in huff_tree; each is a state */
	for (int node = 0; node < HUFF_NODES; node++) {
		if (node && !huff_tree[node][0] && !huff_tree[node][1])
			continue;
		if (states >= HUFF_STATES)
			return -1;
		huff_state_of[node] = (int16_t)states++;
	}
	memset(huff_accept, 0, sizeof(huff_accept));
	for (int node = 0, depth = 0; depth < 8 && node >= 0; depth++) {
		huff_accept[huff_state_of[node]] = 1;
		int next = huff_tree[node][1];
		if (next <= 0)
			break;
		node = next;
	}
	for (int node = 0; node < HUFF_NODES; node++) {
		int st = huff_state_of[node];
		if (st < 0)
			continue;
		for (int x = 0; x < 16; x++) {
			struct huff_step step = {0};
			int cur = node;
			for (int bit = 3; bit >= 0; bit--) {
				int next = huff_tree[cur][(x >> bit) & 1];
				if (next < 0) {
					int sym = -next - 1;
					if (sym == 256 || step.emit) {
						step.fail = 1;
						break;
					}
					step.emit = 1;
					step.sym = (uint8_t)sym;
					cur = 0;
				} else if (next == 0) {
					step.fail = 1;
					break;
				} else {
					cur = next;
				}
			}
			step.next = step.fail ? 0 : (uint8_t)huff_state_of[cur];
			huff_steps[st][x] = step;
		}
	}
	return 0;
}

/* Decodes n bytes into out (grown as needed). 0, or -1 on a malformed string (EOS inside,
 * padding longer than 7 bits or not all ones). */
static int huff_decode(const uint8_t *p, size_t n, struct out *o)
{
	if (out_reserve(o, n * 8 / 5 + 1))
		return -1;
	char *w = o->buf + o->len;
	uint8_t st = 0;
	for (size_t i = 0; i < n; i++) {
		const struct huff_step *a = &huff_steps[st][p[i] >> 4];
		if (a->fail)
			return -1;
		if (a->emit)
			*w++ = (char)a->sym;
		const struct huff_step *b = &huff_steps[a->next][p[i] & 15];
		if (b->fail)
			return -1;
		if (b->emit)
			*w++ = (char)b->sym;
		st = b->next;
	}
	o->len = (size_t)(w - o->buf);
	return huff_accept[st] ? 0 : -1;
}

/* Short Huffman strings decoded lately, by their code (one slot per hash): a server repeats its
 * own values on every response (date, server, content-type sent as literals), and the same
 * bytes decode the same way, errors included, so a hit is exact. */
#define HUFF_MEMO_ENC 48
#define HUFF_MEMO_SLOTS 256
static struct {
	uint8_t enc_len, dec_len;
	uint8_t enc[HUFF_MEMO_ENC];
	char dec[HUFF_MEMO_ENC * 8 / 5 + 1];
} huff_memo_slots[HUFF_MEMO_SLOTS];

static void huff_memo_clear(void)
{
	memset(huff_memo_slots, 0, sizeof(huff_memo_slots));
}

static int huff_memo(const uint8_t *p, uint32_t n, struct out *o)
{
	uint32_t h = 2166136261u ^ n;
	for (uint32_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 16777619u;
	typeof(&huff_memo_slots[0]) m = &huff_memo_slots[(h ^ (h >> 16)) % HUFF_MEMO_SLOTS];
	if (n && m->enc_len == n && !memcmp(m->enc, p, n)) {
		out_put(o, m->dec, m->dec_len);
		return 0;
	}
	size_t at = o->len;
	if (huff_decode(p, n, o))
		return -1;
	if (!o->failed && o->len - at <= sizeof(m->dec)) {
		m->enc_len = (uint8_t)n;
		memcpy(m->enc, p, n);
		m->dec_len = (uint8_t)(o->len - at);
		memcpy(m->dec, o->buf + at, m->dec_len);
	}
	return 0;
}

/* --- the static table ------------------------------------------------------------------------ */

static const char *const STATIC[STATIC_ENTRIES][2] = {
	{":authority", ""}, {":method", "GET"}, {":method", "POST"}, {":path", "/"},
	{":path", "/index.html"}, {":scheme", "http"}, {":scheme", "https"}, {":status", "200"},
	{":status", "204"}, {":status", "206"}, {":status", "304"}, {":status", "400"},
	{":status", "404"}, {":status", "500"}, {"accept-charset", ""},
	{"accept-encoding", "gzip, deflate"}, {"accept-language", ""}, {"accept-ranges", ""},
	{"accept", ""}, {"access-control-allow-origin", ""}, {"age", ""}, {"allow", ""},
	{"authorization", ""}, {"cache-control", ""}, {"content-disposition", ""},
	{"content-encoding", ""}, {"content-language", ""}, {"content-length", ""},
	{"content-location", ""}, {"content-range", ""}, {"content-type", ""}, {"cookie", ""},
	{"date", ""}, {"etag", ""}, {"expect", ""}, {"expires", ""}, {"from", ""}, {"host", ""},
	{"if-match", ""}, {"if-modified-since", ""}, {"if-none-match", ""}, {"if-range", ""},
	{"if-unmodified-since", ""}, {"last-modified", ""}, {"link", ""}, {"location", ""},
	{"max-forwards", ""}, {"proxy-authenticate", ""}, {"proxy-authorization", ""},
	{"range", ""}, {"referer", ""}, {"refresh", ""}, {"retry-after", ""}, {"server", ""},
	{"set-cookie", ""}, {"strict-transport-security", ""}, {"transfer-encoding", ""},
	{"user-agent", ""}, {"vary", ""}, {"via", ""}, {"www-authenticate", ""},
};

static uint32_t static_len[STATIC_ENTRIES][2]; /* strlen of each, once (h2_init) */

/* --- one direction's HPACK decoder ------------------------------------------------------------ */

static void table_evict(struct table *t, uint32_t room)
{
	while (t->count && t->size + room > t->maxsize) {
		struct entry *e = &t->ring[(t->head + t->count - 1) % t->cap];
		t->size -= e->name_len + e->value_len + 32;
		t->count--;
	}
}

/* Room for `need` more bytes at the arena's end: the live entries moved to its start (oldest
 * first, so every move goes down), in a larger arena when they fill more than 3/4 of it. */
static int table_compact(struct table *t, uint32_t need)
{
	uint32_t live = 0;
	for (uint32_t i = 0; i < t->count; i++) {
		const struct entry *e = &t->ring[(t->head + i) % t->cap];
		live += e->name_len + e->value_len;
	}
	uint32_t cap = t->arena_cap;
	char *dst = t->arena;
	if (!dst || (uint64_t)live + need > (uint64_t)cap * 3 / 4) {
		cap = (live + need) / 2 * 3 + 256;
		if (!(dst = malloc(cap)))
			return -1;
	}
	uint32_t pos = 0;
	for (uint32_t i = t->count; i-- > 0;) {
		struct entry *e = &t->ring[(t->head + i) % t->cap];
		uint32_t len = e->name_len + e->value_len;
		if (len)
			memmove(dst + pos, t->arena + e->off, len);
		e->off = pos;
		pos += len;
	}
	if (dst != t->arena) {
		free(t->arena);
		t->arena = dst;
		t->arena_cap = cap;
	}
	t->arena_len = pos;
	return 0;
}

static int table_add(struct table *t, const char *name, uint32_t nl, const char *value,
		     uint32_t vl)
{
	uint32_t sz = nl + vl + 32;
	if (sz > t->maxsize) { /* larger than the table: it empties (RFC 7541 4.4) */
		table_evict(t, t->maxsize + 1);
		return 0;
	}
	table_evict(t, sz);
	if (t->count == t->cap) {
		uint32_t cap = t->cap ? t->cap * 2 : 32;
		struct entry *r = calloc(cap, sizeof(*r));
		if (!r)
			return -1;
		for (uint32_t i = 0; i < t->count; i++)
			r[i] = t->ring[(t->head + i) % t->cap];
		free(t->ring);
		t->ring = r;
		t->cap = cap;
		t->head = 0;
	}
	if ((!t->arena || t->arena_len + nl + vl > t->arena_cap) && table_compact(t, nl + vl))
		return -1;
	char *d = t->arena + t->arena_len;
	if (nl) /* an empty name or value may have no storage at all */
		memcpy(d, name, nl);
	if (vl)
		memcpy(d + nl, value, vl);
	t->head = (t->head + t->cap - 1) % t->cap;
	t->ring[t->head] = (struct entry){t->arena_len, nl, vl};
	t->arena_len += nl + vl;
	t->count++;
	t->size += sz;
	return 0;
}

static void table_free(struct table *t)
{
	free(t->ring);
	free(t->arena);
	memset(t, 0, sizeof(*t));
}

static const char UNKNOWN_NAME[] = "__unknown__";

/* The (name, value) of an index; the marker for one never seen when not synced. -1: error. */
static int table_get(struct table *t, uint64_t idx, const char **n, uint32_t *nl, const char **v,
		     uint32_t *vl)
{
	if (idx >= 1 && idx <= STATIC_ENTRIES) {
		*n = STATIC[idx - 1][0];
		*nl = static_len[idx - 1][0];
		*v = STATIC[idx - 1][1];
		*vl = static_len[idx - 1][1];
		return 0;
	}
	if (idx > STATIC_ENTRIES && idx - STATIC_ENTRIES - 1 < t->count) {
		struct entry *e = &t->ring[(t->head + (idx - STATIC_ENTRIES - 1)) % t->cap];
		*n = t->arena + e->off;
		*nl = e->name_len;
		*v = t->arena + e->off + e->name_len;
		*vl = e->value_len;
		return 0;
	}
	if (t->synced)
		return -1;
	t->misses++;
	*n = *v = UNKNOWN_NAME;
	*nl = *vl = sizeof(UNKNOWN_NAME) - 1;
	return 0;
}

static int hp_int(const uint8_t *p, size_t n, size_t *pos, int prefix, uint64_t *val)
{
	if (*pos >= n)
		return -1;
	uint64_t max = (1u << prefix) - 1, v = p[(*pos)++] & max;
	if (v == max) {
		int shift = 0;
		for (;;) {
			if (*pos >= n || shift > 56)
				return -1;
			uint8_t b = p[(*pos)++];
			v += (uint64_t)(b & 0x7f) << shift;
			if (!(b & 0x80))
				break;
			shift += 7;
		}
	}
	*val = v;
	return 0;
}

/* A string literal into o (its start at *at). */
static int hp_str(const uint8_t *p, size_t n, size_t *pos, struct out *o, size_t *at,
		  uint32_t *len)
{
	if (*pos >= n)
		return -1;
	int huff = p[*pos] & 0x80;
	uint64_t l;
	if (hp_int(p, n, pos, 7, &l) || l > n - *pos)
		return -1;
	*at = o->len;
	if (huff && l <= HUFF_MEMO_ENC) {
		if (huff_memo(p + *pos, (uint32_t)l, o))
			return -1;
	} else if (huff) {
		if (huff_decode(p + *pos, (size_t)l, o))
			return -1;
	} else {
		out_put(o, p + *pos, (size_t)l);
	}
	*pos += (size_t)l;
	*len = (uint32_t)(o->len - *at);
	return o->failed ? -1 : 0;
}

static int is_name(const char *n, uint32_t nl, const char *want)
{
	size_t wl = strlen(want);
	return nl == wl && !memcmp(n, want, wl);
}

static long long digits(const char *v, uint32_t vl)
{
	if (!vl)
		return -1;
	while (vl > 1 && v[0] == '0') /* "0000000000000000001" is 1, as int() reads it */
		v++, vl--;
	if (vl > 18)
		return -1;
	long long x = 0;
	for (uint32_t i = 0; i < vl; i++) {
		if (v[i] < '0' || v[i] > '9')
			return -1;
		x = x * 10 + (v[i] - '0');
	}
	return x;
}

/* Decodes a block. 0 (the summary set), or -1: not decodable. */
static int hpack_block(struct table *t, const uint8_t *p, size_t n, struct summary *s,
		       struct out *strings)
{
	size_t pos = 0, inflated = 0;
	int headers = 0;
	memset(s, 0, sizeof(*s));
	s->status = s->grpc_status = -1;
	strings->len = 0;
	/* offsets into strings of each field, resolved to pointers at the end (it may move) */
	struct {
		size_t at;
		uint32_t len;
		int set;
	} f[6] = {{0}};
	enum { M, P, A, G, C, T };
	while (pos < n) {
		uint8_t b = p[pos];
		const char *name, *value;
		uint32_t nl, vl;
		size_t nat, vat;
		int add = 0;
		if (b & 0x80) { /* indexed */
			uint64_t idx;
			if (hp_int(p, n, &pos, 7, &idx) || table_get(t, idx, &name, &nl, &value, &vl))
				return -1;
		} else if ((b & 0xe0) == 0x20) { /* dynamic table size update */
			uint64_t sz;
			if (headers || hp_int(p, n, &pos, 5, &sz) || sz > t->max_allowed)
				return -1;
			t->maxsize = (uint32_t)sz;
			table_evict(t, 0);
			continue;
		} else { /* a literal: with incremental indexing (01), without (0000), never (0001) */
			int prefix = (b & 0x40) ? 6 : 4;
			uint64_t idx;
			add = (b & 0x40) != 0;
			if (hp_int(p, n, &pos, prefix, &idx))
				return -1;
			if (idx) {
				const char *in, *iv;
				uint32_t inl, ivl;
				if (table_get(t, idx, &in, &inl, &iv, &ivl))
					return -1;
				nat = strings->len;
				out_put(strings, in, inl);
				nl = inl;
			} else if (hp_str(p, n, &pos, strings, &nat, &nl)) {
				return -1;
			}
			if (hp_str(p, n, &pos, strings, &vat, &vl) || strings->failed)
				return -1;
			name = strings->buf + nat;
			value = strings->buf + vat;
			if (add && table_add(t, name, nl, value, vl))
				return -1;
			goto found;
		}
		/* an indexed field: name and value are the table's (copied below if kept) */
		vat = SIZE_MAX;
	found:
		headers++;
		inflated += nl + vl + 32;
		if (inflated > MAX_HEADER_LIST)
			return -1;
		{
			int which = -1;
			if (is_name(name, nl, ":method"))
				which = M, s->has_method = 1;
			else if (is_name(name, nl, ":path"))
				which = P;
			else if (is_name(name, nl, ":authority"))
				which = A;
			else if (is_name(name, nl, "grpc-message"))
				which = G;
			else if (is_name(name, nl, ":status")) {
				s->has_status = 1;
				long long d = digits(value, vl);
				if (d >= 0)
					s->status = d;
			} else if (is_name(name, nl, "grpc-status")) {
				long long d = digits(value, vl);
				if (d >= 0)
					s->grpc_status = d;
			} else if (is_name(name, nl, "content-type") && !f[C].len) {
				which = C;
			} else if (is_name(name, nl, "traceparent") && !f[T].set) {
				which = T; /* W3C Trace Context: the first one counts */
			}
			if (which >= 0 && vat == SIZE_MAX) { /* kept: into strings (the table moves) */
				vat = strings->len;
				out_put(strings, value, vl);
				if (strings->failed)
					return -1;
			}
			if (which >= 0) {
				f[which].at = vat;
				f[which].len = vl;
				f[which].set = 1;
			}
		}
	}
	if (t->maxsize > t->max_allowed) /* a SETTINGS shrank it and the encoder did not follow */
		return -1;
	const char **ptr[6] = {&s->method, &s->path, &s->authority, &s->grpc_message,
			       &s->content_type, &s->traceparent};
	uint32_t *len[6] = {&s->method_len, &s->path_len, &s->authority_len, &s->grpc_message_len,
			    &s->content_type_len, &s->traceparent_len};
	for (int i = 0; i < 6; i++) {
		*ptr[i] = f[i].set ? strings->buf + f[i].at : NULL;
		*len[i] = f[i].len;
	}
	return 0;
}

/* --- H2Wire ----------------------------------------------------------------------------------- */

static PyObject *str_or_none(const char *p, uint32_t n)
{
	if (!p)
		Py_RETURN_NONE;
	return PyUnicode_DecodeLatin1(p, (Py_ssize_t)n, NULL);
}

static PyObject *int_or_none(long long v)
{
	if (v < 0)
		Py_RETURN_NONE;
	return PyLong_FromLongLong(v);
}

static int sink_list(void *ctx, int from_client, const struct wire_event *ev);

static int Wire_init(WireObject *self, PyObject *args, PyObject *kw)
{
	static char *names[] = {"seen_start", NULL};
	int seen = 1;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "|p", names, &seen))
		return -1;
	if (!huff_ready) {
		PyErr_SetString(PyExc_RuntimeError, "H2Wire: h2_huffman() was not called");
		return -1;
	}
	self->seen_start = seen;
	self->client.is_client = 1;
	struct direction *ds[2] = {&self->client, &self->server};
	for (int i = 0; i < 2; i++) {
		ds[i]->table.maxsize = DEFAULT_TABLE;
		ds[i]->table.max_allowed = MAX_TABLE;
		ds[i]->table.synced = seen;
	}
	if (seen)
		self->client.preface_left = PREFACE_LEN;
	return 0;
}

static void Wire_dealloc(WireObject *self)
{
	struct direction *ds[2] = {&self->client, &self->server};
	for (int i = 0; i < 2; i++) {
		out_free(&ds[i]->buf);
		out_free(&ds[i]->block);
		table_free(&ds[i]->table);
	}
	out_free(&self->strings);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static int emit(WireObject *self, int kind, uint32_t sid, int flags, uint32_t n, int outcome,
		const struct summary *s)
{
	const struct direction *d = self->from_client ? &self->client : &self->server;
	struct wire_event ev = {kind, sid, flags, n, outcome, s, d->block_off};
	return self->sink(self->sink_ctx, self->from_client, &ev);
}

static int sink_list(void *ctx, int from_client, const struct wire_event *e)
{
	PyObject *ev;
	const struct summary *s = e->s;
	switch (e->kind) {
	case EV_HEADERS:
		ev = Py_BuildValue("(iIiiNNNNNNNiiKN)", EV_HEADERS, e->sid, e->flags, e->outcome,
				   str_or_none(s->method, s->method_len),
				   str_or_none(s->path, s->path_len),
				   str_or_none(s->authority, s->authority_len), int_or_none(s->status),
				   int_or_none(s->grpc_status),
				   str_or_none(s->grpc_message, s->grpc_message_len),
				   str_or_none(s->content_type, s->content_type_len), s->has_status,
				   s->has_method, (unsigned long long)e->off,
				   str_or_none(s->traceparent, s->traceparent_len));
		break;
	case EV_DATA:
		ev = Py_BuildValue("(iIiI)", EV_DATA, e->sid, e->flags, e->n);
		break;
	case EV_PREFACE:
		ev = Py_BuildValue("(i)", EV_PREFACE);
		break;
	default: /* RST (stream), GOAWAY (last stream) */
		ev = Py_BuildValue("(iI)", e->kind, e->kind == EV_GOAWAY ? e->n : e->sid);
	}
	if (!ev)
		return -1;
	int r = PyList_Append((PyObject *)ctx, ev);
	Py_DECREF(ev);
	return r;
}

/* A whole header block of d: decoded, and its event emitted. */
static int headers_done(WireObject *self, struct direction *d)
{
	struct summary s;
	unsigned long misses = d->table.misses;
	int outcome;
	d->in_block = 0;
	if (hpack_block(&d->table, (const uint8_t *)d->block.buf, d->block.len, &s,
			&self->strings)) {
		if (d->table.synced) {
			d->block.len = 0;
			return 1; /* "hpack" */
		}
		outcome = 2;
		memset(&s, 0, sizeof(s));
		s.status = s.grpc_status = -1;
	} else {
		outcome = d->table.misses > misses ? 1 : 0;
	}
	d->block.len = 0;
	if (d->block.cap > 65536) /* a large block's memory is not kept */
		out_free(&d->block);
	return emit(self, EV_HEADERS, d->block_stream, d->block_flags, 0, outcome, &s) ? -1 : 0;
}

/* One whole frame (not DATA outside a block). 0, -1 (Python error), or a reason > 0. */
static const char *const REASONS[] = {
	NULL, "hpack", "continuation_expected", "unexpected_continuation", "headers_too_large",
	"bad_padding", "frame_too_large", "truncated", "bad_preface", "role_swapped",
};
enum { R_HPACK = 1, R_CONT_EXPECTED, R_UNEXPECTED_CONT, R_HEADERS_TOO_LARGE, R_BAD_PADDING,
       R_FRAME_TOO_LARGE, R_TRUNCATED, R_BAD_PREFACE, R_ROLE_SWAPPED };

static int frame(WireObject *self, struct direction *d, uint8_t type, uint8_t flags, uint32_t sid,
		 const uint8_t *p, uint32_t len)
{
	if (d->in_block && type != CONTINUATION)
		return R_CONT_EXPECTED;
	switch (type) {
	case DATA:
		return emit(self, EV_DATA, sid, flags, len, 0, NULL) ? -1 : 0;
	case HEADERS: {
		uint32_t pos = 0, end = len;
		if (flags & F_PADDED) {
			if (!len)
				return R_BAD_PADDING;
			end -= p[0];
			pos = 1;
		}
		if (flags & F_PRIORITY)
			pos += 5;
		if (end < pos || end > len)
			return R_BAD_PADDING;
		d->block.len = 0;
		out_put(&d->block, p + pos, end - pos);
		if (d->block.failed)
			return -1;
		d->in_block = 1;
		d->block_stream = sid;
		d->block_flags = flags;
		d->block_off = d->frame_off;
		if (flags & F_END_HEADERS) {
			int r = headers_done(self, d);
			return r > 0 ? R_HPACK : r;
		}
		return 0;
	}
	case PUSH_PROMISE: /* a promised stream's headers: not a request of this client */
		return 0;
	case CONTINUATION:
		if (!d->in_block || sid != d->block_stream)
			return R_UNEXPECTED_CONT;
		out_put(&d->block, p, len);
		if (d->block.failed)
			return -1;
		if (d->block.len > MAX_HEADER_BLOCK)
			return R_HEADERS_TOO_LARGE;
		if (flags & F_END_HEADERS) {
			int r = headers_done(self, d);
			return r > 0 ? R_HPACK : r;
		}
		return 0;
	case RST_STREAM:
		return emit(self, EV_RST, sid, flags, 0, 0, NULL) ? -1 : 0;
	case SETTINGS:
		if (flags & F_ACK)
			return 0;
		for (uint32_t i = 0; i + 6 <= len; i += 6) {
			if (((p[i] << 8) | p[i + 1]) == 0x1) { /* HEADER_TABLE_SIZE */
				uint32_t v = (uint32_t)p[i + 2] << 24 | p[i + 3] << 16 | p[i + 4] << 8 |
					     p[i + 5];
				/* the sender's decoder limit binds the other side's encoder */
				struct direction *other = d->is_client ? &self->server : &self->client;
				other->table.max_allowed = v < MAX_TABLE ? v : MAX_TABLE;
			}
		}
		return 0;
	case GOAWAY:
		if (len >= 4) {
			uint32_t last = ((uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]) &
					0x7fffffffu;
			return emit(self, EV_GOAWAY, sid, flags, last, 0, NULL) ? -1 : 0;
		}
		return 0;
	default:
		return 0;
	}
}

/* The frames in d->buf: as many as are whole; DATA payload is passed over, not kept. */
/* The whole frames of b[0..n): *used set to the bytes consumed (the rest is an incomplete frame);
 * DATA payload is passed over, not kept. 0 or a reason. */
static int frames(WireObject *self, struct direction *d, const uint8_t *b, size_t n, size_t *used)
{
	size_t pos = 0;
	int r = 0;
	for (;;) {
		if (d->skip) {
			uint64_t take = d->skip < n - pos ? d->skip : n - pos;
			d->skip -= take;
			pos += (size_t)take;
			if (d->skip)
				break;
		}
		if (n - pos < 9)
			break;
		d->frame_off = d->base + pos;
		uint32_t len = (uint32_t)b[pos] << 16 | b[pos + 1] << 8 | b[pos + 2];
		uint8_t type = b[pos + 3], flags = b[pos + 4];
		uint32_t sid = ((uint32_t)b[pos + 5] << 24 | b[pos + 6] << 16 | b[pos + 7] << 8 |
				b[pos + 8]) &
			       0x7fffffffu;
		if (len > MAX_FRAME) {
			r = R_FRAME_TOO_LARGE;
			break;
		}
		if (type == DATA && n - pos < 9 + (size_t)len) {
			/* DATA payload is only counted: do not wait for (or keep) its bytes */
			size_t avail = n - pos - 9;
			if ((r = frame(self, d, type, flags, sid, NULL, len)) != 0)
				break;
			d->skip = len - avail;
			pos = n;
			break;
		}
		if (n - pos < 9 + (size_t)len) {
			if (len > MAX_HEADER_BLOCK)
				r = R_FRAME_TOO_LARGE;
			break;
		}
		if (type == DATA && !d->in_block) {
			pos += 9 + (size_t)len;
			if ((r = frame(self, d, type, flags, sid, NULL, len)) != 0)
				break;
			continue;
		}
		const uint8_t *payload = b + pos + 9;
		pos += 9 + (size_t)len;
		if ((r = frame(self, d, type, flags, sid, payload, len)) != 0)
			break;
	}
	*used = pos;
	return r;
}

static int feed_dir(WireObject *self, int from_client, const uint8_t *data, size_t n,
		    uint64_t uncaptured);

int wire_feed(WireObject *self, int from_client, const uint8_t *data, size_t n,
	      uint64_t uncaptured)
{
	self->from_client = from_client;
	int r = feed_dir(self, from_client, data, n, uncaptured);
	if (r > 0) { /* the direction's state is void: the caller starts the connection over */
		struct direction *d = from_client ? &self->client : &self->server;
		d->buf.len = 0;
		d->in_block = 0;
	}
	return r;
}

const char *wire_reason(int r)
{
	return r > 0 && r < (int)(sizeof(REASONS) / sizeof(REASONS[0])) ? REASONS[r] : "error";
}

static int feed_dir(WireObject *self, int from_client, const uint8_t *data, size_t n,
		    uint64_t uncaptured)
{
	struct direction *d = from_client ? &self->client : &self->server;
	uint64_t at = d->fed; /* of data[0] */
	d->fed += n + uncaptured;
	if (!self->seen_start && !d->buf.len && n >= PREFACE_LEN && !memcmp(data, PREFACE,
									   PREFACE_LEN)) {
		/* taken for mid-way (a server's SETTINGS can come first), but this is the start */
		if (!from_client)
			return R_ROLE_SWAPPED;
		self->seen_start = 1;
		self->client.table.synced = self->server.table.synced = 1;
		if (emit(self, EV_PREFACE, 0, 0, 0, 0, NULL))
			return -1;
		data += PREFACE_LEN;
		n -= PREFACE_LEN;
		at += PREFACE_LEN;
	}
	if (d->preface_left) {
		size_t take = d->preface_left < n ? d->preface_left : n;
		if (memcmp(PREFACE + PREFACE_LEN - d->preface_left, data, take))
			return R_BAD_PREFACE;
		d->preface_left -= (uint32_t)take;
		data += take;
		n -= take;
		at += take;
	}
	size_t used;
	int r;
	if (!d->buf.len) { /* the common case: frames read where the bytes are, the tail kept */
		d->base = at;
		if ((r = frames(self, d, data, n, &used)) != 0)
			return r;
		out_put(&d->buf, data + used, n - used);
	} else {
		d->base = at - d->buf.len;
		out_put(&d->buf, data, n);
		if (d->buf.failed)
			return -1;
		if ((r = frames(self, d, (const uint8_t *)d->buf.buf, d->buf.len, &used)) != 0)
			return r;
		if (used && d->buf.len > used)
			memmove(d->buf.buf, d->buf.buf + used, d->buf.len - used);
		d->buf.len -= used;
	}
	if (d->buf.failed)
		return -1;
	if (d->buf.len > MAX_HEADER_BLOCK + 9)
		return R_FRAME_TOO_LARGE;
	if (!d->buf.len && d->buf.cap > 65536)
		out_free(&d->buf);
	if (uncaptured) { /* bytes we did not see: only DATA payload can be passed over */
		if (d->buf.len || uncaptured > d->skip)
			return R_TRUNCATED;
		d->skip -= uncaptured;
	}
	return 0;
}

/* feed(from_client, data, uncaptured=0) -> (events, error reason or None) */
static PyObject *Wire_feed(WireObject *self, PyObject *args)
{
	int from_client;
	Py_buffer view;
	unsigned long long uncaptured = 0;
	if (!PyArg_ParseTuple(args, "py*|K", &from_client, &view, &uncaptured))
		return NULL;
	PyObject *events = PyList_New(0);
	if (!events) {
		PyBuffer_Release(&view);
		return NULL;
	}
	self->sink = sink_list;
	self->sink_ctx = events;
	int r = wire_feed(self, from_client, view.buf, (size_t)view.len, uncaptured);
	PyBuffer_Release(&view);
	self->sink_ctx = NULL;
	if (r < 0) {
		Py_DECREF(events);
		if (!PyErr_Occurred())
			PyErr_NoMemory();
		return NULL;
	}
	return Py_BuildValue("(Nz)", events, r ? REASONS[r] : NULL);
}

static PyObject *Wire_buffered(WireObject *self, PyObject *args)
{
	int from_client;
	if (!PyArg_ParseTuple(args, "p", &from_client))
		return NULL;
	struct direction *d = from_client ? &self->client : &self->server;
	return PyLong_FromSize_t(d->buf.len);
}

static PyObject *Wire_get_seen_start(WireObject *self, void *closure)
{
	return PyBool_FromLong(self->seen_start);
}

static PyMethodDef Wire_methods[] = {
	{"feed", (PyCFunction)Wire_feed, METH_VARARGS,
	 "feed(from_client, data, uncaptured=0) -> (events, error reason or None)"},
	{"buffered", (PyCFunction)Wire_buffered, METH_VARARGS,
	 "buffered(from_client) -> bytes of an incomplete frame held"},
	{NULL},
};

static PyGetSetDef Wire_getset[] = {
	{"seen_start", (getter)Wire_get_seen_start, NULL, "the client preface was seen", NULL},
	{NULL},
};

PyTypeObject WireType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "podscope._fast.H2Wire",
	.tp_basicsize = sizeof(WireObject),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "HTTP/2 frames and HPACK of one connection (see native/h2.c).",
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)Wire_init,
	.tp_dealloc = (destructor)Wire_dealloc,
	.tp_methods = Wire_methods,
	.tp_getset = Wire_getset,
};

static PyMethodDef h2_functions[] = {
	{"h2_huffman", h2_huffman, METH_VARARGS,
	 "h2_huffman(codes, lengths): HPACK's Huffman code (257 symbols), before any H2Wire."},
	{NULL},
};

int h2_init(PyObject *m)
{
	for (int i = 0; i < STATIC_ENTRIES; i++) {
		static_len[i][0] = (uint32_t)strlen(STATIC[i][0]);
		static_len[i][1] = (uint32_t)strlen(STATIC[i][1]);
	}
	if (PyType_Ready(&WireType) < 0)
		return -1;
	Py_INCREF(&WireType);
	if (PyModule_AddObject(m, "H2Wire", (PyObject *)&WireType) < 0)
		return -1;
	if (PyModule_AddFunctions(m, h2_functions) < 0)
		return -1;
	const int consts[][1] = {{EV_DATA}, {EV_HEADERS}, {EV_RST}, {EV_GOAWAY}, {EV_PREFACE}};
	const char *names[] = {"EV_DATA", "EV_HEADERS", "EV_RST", "EV_GOAWAY", "EV_PREFACE"};
	for (int i = 0; i < 5; i++)
		if (PyModule_AddIntConstant(m, names[i], consts[i][0]) < 0)
			return -1;
	return 0;
}

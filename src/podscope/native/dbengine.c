/* Databases and caches at full speed: the stream events of connections the kernel found speaking
 * a database or cache protocol (bpf/include/db.bpf.h) go from a ring-buffer batch to that
 * protocol's parser here, with no Python per event or per operation. Requests are paired with
 * their responses in order (pipelining: a bounded queue per connection) and aggregated per
 * (connection identity, system, operation, status); Python folds the cells into its series once
 * a second (collectors/http.py), as it does for HTTP/2.
 *
 * Protocols: Redis (RESP2 and RESP3: pipelining, errors by prefix, MULTI/EXEC, pushes and
 * attributes that are not replies, pub/sub left unpaired); memcached (text and meta); PostgreSQL
 * (protocol 3: simple and extended queries up to their Sync, SQLSTATE); MySQL and MariaDB (text
 * and prepared statements, result sets with or without EOF packets, error numbers); NATS
 * (messages published, received and delivered per subject, request-reply round trips, -ERR).
 *
 * Bad input never stops anything: a byte that is not the protocol's, a value nested too deep or
 * bytes lost (not captured by the kernel, or events lost) void the connection's parse state,
 * counted by reason; the requests in flight are counted as unpaired, and the parser starts
 * again at the next syscall's data. Bounded: connections (DB_MAX_CONNS, the least recently used
 * go first), requests in flight per connection (DB_MAX_PENDING), cells (DB_MAX_CELLS, beyond
 * which each operation is its own cell). */
#include <linux/types.h>

#include "fast.h"
#include "http.h"

#include <stdio.h>
#include <string.h>

#define DB_MAX_CONNS 20000
#define DB_MAX_PENDING 1024
#define DB_MAX_CELLS 16384
#define SLOTS 40 /* collectors/base.py HIST_SLOTS_DEFAULT */
#define OP_MAX 32
#define STATUS_MAX 32
#define RESP_LINE 64
#define DEPTH_MAX 16
#define QUERY_MAX 128	     /* a normalised statement in a record, "..." when cut */
#define DB_MAX_RECORDS 65536 /* records between two take_records(); beyond, dropped (counted) */

/* The cell of one aggregate, as bytes (collectors/http.py reads it with struct). */
struct db_cell {
	uint64_t count, sum_ns, req_bytes, resp_bytes;
	uint64_t slots[SLOTS];
};

struct op {
	uint64_t ts; /* when the request was complete */
	uint64_t bytes;
	uint8_t len;
	uint8_t silent; /* answered, but not an operation (PostgreSQL: a Sync alone) */
	uint8_t cmd;	/* MySQL: the command byte */
	uint8_t aux_len;
	uint8_t coll_len;
	uint8_t query_len;
	char name[OP_MAX];
	char aux[OP_MAX];  /* MySQL: a prepared statement's own operation; a database to use */
	char coll[OP_MAX]; /* the table the statement names first (db_collection_name) */
	char query[QUERY_MAX]; /* records: the statement, normalised (no literal values) */
};

/* One direction of RESP: where the parser is in the current top-level value. */
struct resp {
	char line[RESP_LINE]; /* the current line's first bytes (type byte included) */
	uint32_t line_len;
	uint32_t line_over; /* the line went past RESP_LINE: the rest is passed over */
	uint64_t skip;	    /* bulk payload (and its CRLF) still to pass over */
	uint64_t left[DEPTH_MAX]; /* elements still to come in each open aggregate */
	uint32_t depth;
	uint32_t in_value; /* a top-level value has begun */
	uint64_t bytes;	   /* of the current top-level value */
	int want_name;	   /* requests: the next bulk string is the command's name */
	int is_cmd;	   /* requests: a command array with elements (a reply will follow) */
	int kind;	   /* replies: 0 a reply, 1 a push, 2 an attribute (the reply follows) */
	char name[OP_MAX]; /* requests: the command; replies: the error's prefix */
	uint8_t name_len;
	int error; /* replies: an error (its prefix in name) */
};

/* One direction of memcached's text protocol: lines, and data blocks of a known size. */
#define MC_LINE 320 /* a key is up to 250 bytes: "VALUE <key> <flags> <bytes> <cas>" fits */

struct mcdir {
	char line[MC_LINE];
	uint32_t line_len, line_over;
	uint64_t skip;	  /* a data block (and its CRLF) still to pass over */
	uint64_t bytes;	  /* of the current request or response */
	int in_value;	  /* a request or response has begun */
	int multi;	  /* responses: a retrieval's VALUE (or STAT) lines, until END */
	int done_after;	  /* the message is complete when the data block ends */
	int reply;	  /* requests: a response will come (not noreply, not quiet) */
	char name[OP_MAX]; /* requests: the command */
	uint8_t name_len;
};

/* One direction of PostgreSQL's protocol (v3): messages of a type byte and a length. */
#define PG_KEEP 160 /* bytes of a message's body kept (the SQL's start, an error's fields) */
#define PG_STMTS 32 /* named prepared statements remembered per connection */
struct pgdir {
	uint8_t hdr[5];	   /* the type byte and length being read */
	uint32_t hdr_len;
	uint64_t body_left; /* of the current message */
	char body[PG_KEEP]; /* its first bytes */
	uint32_t body_len;
	uint64_t bytes; /* of the current operation's messages */
	int started;	/* client: the startup message is behind (the server's start at once) */
	int ssl_asked;	/* client sent SSLRequest or GSSENCRequest: one byte answers */
	char status[6]; /* the SQLSTATE of an error in the current operation */
	uint8_t status_len;
};

struct pgstmt {
	char name[24];
	uint8_t name_len, op_len, coll_len, query_len;
	char op[OP_MAX];
	char coll[OP_MAX];
	char *query; /* records: the statement, normalised (malloc'd, QUERY_MAX) */
};

/* One direction of MySQL's protocol: packets of a 3-byte length and a sequence id. */
#define MY_KEEP 160 /* bytes of a packet kept (the SQL's start, an error's code, an OK's fields) */
struct mydir {
	uint8_t hdr[4];
	uint32_t hdr_len;
	uint32_t pkt_len;   /* of the current packet */
	uint64_t body_left; /* of it */
	uint8_t body[MY_KEEP];
	uint32_t body_len;
	uint8_t seq;
	uint8_t cont;	   /* the current packet goes on from one of 0xffffff bytes */
	uint8_t next_cont; /* and the next one does */
	uint64_t bytes;	   /* of the current command or response */
};

enum { MY_UNKNOWN, MY_LOGIN, MY_COMMANDS };
enum {
	MY_R_FIRST,   /* the response's first packet */
	MY_R_COLS,    /* column definitions (my_left to come) */
	MY_R_COLS_END, /* after them: an EOF (old servers and clients), a row, or the end */
	MY_R_ROWS,    /* rows, up to an EOF or OK packet (0xfe) or an error */
	MY_R_PREPARE, /* a prepared statement's parameter and column definitions */
	MY_R_INFILE,  /* LOAD DATA LOCAL: the client sends a file, then the server answers */
	MY_R_AUTH,    /* COM_CHANGE_USER: authentication packets, up to OK or ERR */
	MY_R_LIST,    /* COM_FIELD_LIST: definitions up to an EOF */
};

/* NATS: a request sent (a publish naming a reply subject), until a message on that subject. */
#define NATS_REQS 64 /* per connection; beyond, the oldest is counted unanswered */
struct natsreq {
	uint64_t hash; /* of the reply subject; 0: free */
	uint64_t ts, bytes;
	char dest[OP_MAX];
	uint8_t dest_len;
};

struct dbconn {
	struct dbengine *engine;
	uint64_t conn_id, last_ts;
	uint8_t role, proto;
	PyObject *ident; /* (cgroup_id, netns, role, tls, family, peer_addr, peer_port) */
	struct resp req, resp;	/* Redis */
	struct mcdir mreq, mresp; /* memcached */
	struct pgdir preq, presp; /* PostgreSQL */
	struct pgstmt stmts[PG_STMTS]; /* named prepared statements: what each one does */
	uint32_t stmt_next;
	char batch_op[OP_MAX]; /* the extended query being sent (up to its Sync): its operation */
	uint8_t batch_op_len;
	char batch_coll[OP_MAX]; /* and its table */
	uint8_t batch_coll_len;
	char batch_query[QUERY_MAX]; /* and (records) its statement */
	uint8_t batch_query_len;
	char ns[OP_MAX]; /* the database the connection uses (db_namespace) */
	uint8_t ns_len;
	uint8_t batch_parsed, batch_executed; /* it has a Parse, an Execute */
	struct mydir myreq, myresp; /* MySQL */
	uint8_t my_phase;	    /* MY_UNKNOWN, MY_LOGIN (from the greeting), MY_COMMANDS */
	int8_t my_deprecate_eof;    /* result sets end without EOF packets: -1 not known yet */
	uint8_t my_state;	    /* where the response to the oldest command is (MY_R_*) */
	uint8_t my_section;	    /* prepare: 0 parameters, 1 columns */
	uint8_t my_skip_eof;	    /* an EOF packet may still come after a prepare's columns */
	uint32_t my_server_caps;    /* from the greeting */
	uint32_t my_last_stmt;	    /* the statement prepared last (MariaDB's execute of -1) */
	uint64_t my_left;	    /* definitions still to come */
	uint64_t my_cols;	    /* prepare: the statement's columns */
	char my_status[8];	    /* the error number of the current response */
	uint8_t my_status_len;
	struct natsreq *nats_reqs; /* NATS requests in flight (allocated at the first) */
	uint32_t nats_next;
	int opaque; /* encrypted (SSL or GSS accepted): nothing more to read */
	struct op *ops; /* requests waiting for their responses: a ring */
	uint32_t head, count, cap;
	int pubsub; /* a subscriber: what comes is messages, not replies */
	int reply_lost;	     /* replies not all captured: they end before the next request */
	uint64_t lost_ts;    /* the last reply bytes read meanwhile */
	uint64_t lost_bytes; /* and how many */
	int broken; /* the parse state is void until the next syscall's data */
};

typedef struct dbengine {
	PyObject_HEAD PyObject *conns; /* conn_id -> capsule(struct dbconn), oldest first */
	struct cells agg;	       /* (ident, system, op, status, coll, ns) -> struct db_cell */
	PyObject *system[16];	       /* the system's name per proto (db_system_name) */
	PyObject *recs;		       /* records: one tuple per operation, or NULL (not wanted) */
	unsigned long long events, operations, records_dropped;
} DbEngineObject;

static const char CAPSULE[] = "podscope.dbconn";

/* --- bookkeeping --------------------------------------------------------------------------- */

static int bump(DbEngineObject *e, const char *reason, long n)
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
static int finish(struct dbconn *c, const struct op *o, uint64_t end, uint64_t resp_bytes,
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

static int push_op(struct dbconn *c, const char *name, size_t len, uint64_t ts, uint64_t bytes)
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

static struct op *pop_op(struct dbconn *c)
{
	if (!c->count)
		return NULL;
	struct op *o = &c->ops[c->head];
	c->head = (c->head + 1) % c->cap;
	c->count--;
	return o;
}

static struct op *newest_op(struct dbconn *c)
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
static int desync(struct dbconn *c, const char *reason)
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

/* The bytes up to the next newline into a line of at most `cap` bytes (the rest of a longer line
 * is passed over: *over); the bytes consumed, *whole: the newline was among them. */
static size_t take_line(const uint8_t *p, size_t n, char *line, uint32_t cap, uint32_t *line_len,
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

/* --- RESP (Redis) -------------------------------------------------------------------------- */

static long long resp_int(const char *s, uint32_t n, int *ok)
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
static int resp_feed(struct dbconn *c, int request, const uint8_t *p, size_t n,
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

/* --- memcached (text and meta protocols) ----------------------------------------------------- */

/* The n-th space-separated token of a line (0: the command), its length in *len; NULL if none. */
static const char *mc_token(const char *s, uint32_t n, int idx, uint32_t *len)
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

static int mc_is(const char *w, uint32_t n, const char *want)
{
	size_t l = strlen(want);
	return n == l && !memcmp(w, want, l);
}

static long long mc_num(const char *w, uint32_t n)
{
	int ok;
	long long v = w ? resp_int(w, n, &ok) : 0;
	return w && ok && v >= 0 ? v : -1;
}

/* The idx-th token as a number (-1: none, or not a number). */
static long long mc_num_at(const char *s, uint32_t n, int idx)
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

static int mc_feed(struct dbconn *c, int request, const uint8_t *p, size_t n,
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

/* --- PostgreSQL (protocol 3) ----------------------------------------------------------------- */

/* The operation of a statement: its first keyword in capitals (SELECT, INSERT, BEGIN...), after
 * blanks, comments and opening parentheses. */
static void sql_op(const char *s, size_t n, char *out, uint8_t *len)
{
	size_t i = 0;
	for (;;) {
		while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r' ||
				 s[i] == '('))
			i++;
		if (i + 1 < n && s[i] == '-' && s[i + 1] == '-') {
			while (i < n && s[i] != '\n')
				i++;
			continue;
		}
		if (i + 1 < n && s[i] == '/' && s[i + 1] == '*') {
			i += 2;
			while (i + 1 < n && !(s[i] == '*' && s[i + 1] == '/'))
				i++;
			i += 2;
			continue;
		}
		break;
	}
	size_t k = 0;
	while (i < n && k < OP_MAX && ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z')))
		out[k++] = (s[i] >= 'a' && s[i] <= 'z') ? (char)(s[i++] - 32) : s[i++];
	*len = (uint8_t)k;
}

static int sql_word_is(const char *w, size_t n, const char *want)
{
	size_t k = strlen(want);
	if (n != k)
		return 0;
	for (size_t i = 0; i < k; i++)
		if ((w[i] >= 'a' && w[i] <= 'z' ? w[i] - 32 : w[i]) != want[i])
			return 0;
	return 1;
}

/* The table a statement names first (OpenTelemetry's db.collection.name): SELECT and DELETE
 * ... FROM t, INSERT and REPLACE ... INTO t, UPDATE t. Quotes are dropped, a schema is kept
 * (`db`.`t`: db.t); a subquery, or a table past the bytes kept, gives none. */
static void sql_collection(const char *s, size_t n, const char *op, uint8_t oplen, char *out,
			   uint8_t *len)
{
	const char *after;
	*len = 0;
	if (sql_word_is(op, oplen, "SELECT") || sql_word_is(op, oplen, "DELETE"))
		after = "FROM";
	else if (sql_word_is(op, oplen, "INSERT") || sql_word_is(op, oplen, "REPLACE"))
		after = "INTO";
	else if (sql_word_is(op, oplen, "UPDATE"))
		after = NULL; /* the table comes next */
	else
		return;
	int want = after == NULL, seen_op = 0;
	size_t i = 0;
	while (i < n) {
		char ch = s[i];
		if (ch == '-' && i + 1 < n && s[i + 1] == '-') {
			while (i < n && s[i] != '\n')
				i++;
			continue;
		}
		if (ch == '/' && i + 1 < n && s[i + 1] == '*') {
			for (i += 2; i + 1 < n && !(s[i] == '*' && s[i + 1] == '/'); i++)
				;
			i += 2;
			continue;
		}
		int word = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
		if (want && seen_op && (word || ch == '"' || ch == '`')) {
			size_t k = 0, j = i;
			while (j < n) { /* an identifier: parts, quoted or not, joined by dots */
				char q = s[j];
				if (q == '"' || q == '`') {
					for (j++; j < n && s[j] != q; j++)
						if (k < OP_MAX)
							out[k++] = s[j];
					j++;
				} else if ((q >= 'a' && q <= 'z') || (q >= 'A' && q <= 'Z') ||
					   (q >= '0' && q <= '9') || q == '_' || q == '$' || q == '.') {
					if (k < OP_MAX)
						out[k++] = q;
					j++;
				} else {
					break;
				}
			}
			if (j > n) /* a quote not closed within the bytes kept */
				return;
			if (!(word && !after && (sql_word_is(s + i, j - i, "ONLY") ||
						 sql_word_is(s + i, j - i, "IGNORE") ||
						 sql_word_is(s + i, j - i, "LOW_PRIORITY")))) {
				*len = (uint8_t)k;
				return;
			}
			i = j;
			continue;
		}
		if (word) {
			size_t j = i;
			while (j < n && ((s[j] >= 'a' && s[j] <= 'z') || (s[j] >= 'A' && s[j] <= 'Z') ||
					 (s[j] >= '0' && s[j] <= '9') || s[j] == '_' || s[j] == '$'))
				j++;
			if (!seen_op)
				seen_op = 1; /* the operation's own keyword */
			else if (after && sql_word_is(s + i, j - i, after))
				want = 1;
			i = j;
			continue;
		}
		if (want && seen_op && ch == '(')
			return; /* a subquery */
		if (ch == '\'' || ch == '"' || ch == '`') { /* a literal or a quoted name, passed */
			for (i++; i < n && s[i] != ch; i++)
				if (s[i] == '\\')
					i++;
		}
		i++;
	}
}

/* A statement with its literal values replaced (OpenTelemetry's sanitised db.query.text): strings
 * and numbers become ?, a list of them one ?, comments go, blanks are one space; names, keywords
 * and placeholders ($1, ?) stay. Double quotes quote names in PostgreSQL and strings in MySQL,
 * where a backslash escapes within a string.
 * At most QUERY_MAX - 1 bytes, ending in "..." when cut. */
static uint8_t sql_normalise(const char *s, size_t n, int mysql, char *out)
{
	size_t k = 0, i = 0;
	const size_t cap = QUERY_MAX - 4;
#define PUT(ch)                                                                                    \
	do {                                                                                       \
		if (k < cap)                                                                       \
			out[k++] = (ch);                                                           \
		else                                                                               \
			goto full;                                                                 \
	} while (0)
	while (i < n && s[i]) {
		char ch = s[i];
		if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' ||
		    (ch == '-' && i + 1 < n && s[i + 1] == '-') ||
		    (ch == '/' && i + 1 < n && s[i + 1] == '*')) {
			if (ch == '-') {
				while (i < n && s[i] != '\n')
					i++;
			} else if (ch == '/') {
				for (i += 2; i + 1 < n && !(s[i] == '*' && s[i + 1] == '/'); i++)
					;
				i += 2;
			} else {
				i++;
			}
			if (k && out[k - 1] != ' ')
				PUT(' ');
			continue;
		}
		int ident = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' ||
			    ch == '$' || (unsigned char)ch >= 0x80;
		if (ident) { /* a name or keyword, digits and all */
			while (i < n && ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
					 (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '$' ||
					 (unsigned char)s[i] >= 0x80))
				PUT(s[i++]);
			continue;
		}
		int lit = ch == '\'' || (ch == '"' && mysql) ||
			  (ch >= '0' && ch <= '9') || (ch == '.' && i + 1 < n && s[i + 1] >= '0' &&
							 s[i + 1] <= '9');
		if (ch == '"' || ch == '`') {
			if (!lit) { /* a quoted name: as it is */
				PUT(s[i++]);
				while (i < n && s[i] != ch)
					PUT(s[i++]);
				if (i < n)
					PUT(s[i++]);
				continue;
			}
		}
		if (lit) {
			if (ch == '\'' || ch == '"') {
				for (i++; i < n; i++) {
					if (s[i] == '\\' && mysql) { /* MySQL escapes; SQL does not */
						i++;
					} else if (s[i] == ch) {
						if (i + 1 < n && s[i + 1] == ch)
							i++; /* '' inside */
						else
							break;
					}
				}
				i++;
			} else { /* a number: digits, a point, an exponent, hex */
				while (i < n && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.' ||
						 s[i] == 'x' || s[i] == 'X' ||
						 (s[i] >= 'a' && s[i] <= 'f') ||
						 (s[i] >= 'A' && s[i] <= 'F') ||
						 ((s[i] == '+' || s[i] == '-') &&
						  (s[i - 1] == 'e' || s[i - 1] == 'E'))))
					i++;
			}
			/* "?, ?" is one ?: a list of values says nothing its first does not */
			size_t t = k;
			while (t && out[t - 1] == ' ')
				t--;
			if (t && out[t - 1] == ',') {
				size_t u = t - 1;
				while (u && out[u - 1] == ' ')
					u--;
				if (u && out[u - 1] == '?') {
					k = u;
					continue;
				}
			}
			PUT('?');
			continue;
		}
		PUT(ch);
		i++;
	}
	while (k && out[k - 1] == ' ')
		k--;
	return (uint8_t)k;
full:
	memcpy(out + k, "...", 3);
	return (uint8_t)(k + 3);
#undef PUT
}

static int records_on(const struct dbconn *c)
{
	return ((DbEngineObject *)c->engine)->recs != NULL;
}

/* A prepared statement's text (records only), owned by its slot. */
static void stmt_query(struct pgstmt *st, const char *q, uint8_t len)
{
	free(st->query);
	st->query = NULL;
	st->query_len = 0;
	if (len && (st->query = malloc(len))) {
		memcpy(st->query, q, len);
		st->query_len = len;
	}
}

static struct pgstmt *pg_stmt(struct dbconn *c, const char *name, size_t n, int make)
{
	if (!n || n > sizeof(c->stmts[0].name))
		return NULL; /* the unnamed statement is parsed again each time */
	for (uint32_t i = 0; i < PG_STMTS; i++)
		if (c->stmts[i].name_len == n && !memcmp(c->stmts[i].name, name, n))
			return &c->stmts[i];
	if (!make)
		return NULL;
	struct pgstmt *st = &c->stmts[c->stmt_next++ % PG_STMTS]; /* the oldest goes */
	memcpy(st->name, name, n);
	st->name_len = (uint8_t)n;
	st->op_len = st->coll_len = 0;
	stmt_query(st, NULL, 0);
	return st;
}

/* A whole message (its first PG_KEEP bytes in d->body). */
static int pg_message(struct dbconn *c, int request, char type, uint64_t ts)
{
	struct pgdir *d = request ? &c->preq : &c->presp;
	const char *b = d->body;
	size_t n = d->body_len;
	if (request) {
		switch (type) {
		case 'Q': { /* a simple query: one operation, answered by ReadyForQuery */
			char op[OP_MAX];
			uint8_t len;
			sql_op(b, n, op, &len);
			if (push_op(c, op, len, ts, d->bytes))
				return -1;
			struct op *o = newest_op(c);
			if (o)
				sql_collection(b, n, op, len, o->coll, &o->coll_len);
			if (o && records_on(c))
				o->query_len = sql_normalise(b, n, 0, o->query);
			d->bytes = 0;
			return 0;
		}
		case 'P': { /* Parse: a statement's name, then its SQL */
			size_t nl = strnlen(b, n);
			char op[OP_MAX];
			uint8_t len = 0;
			c->batch_coll_len = 0;
			if (nl < n) {
				sql_op(b + nl + 1, n - nl - 1, op, &len);
				sql_collection(b + nl + 1, n - nl - 1, op, len, c->batch_coll,
					       &c->batch_coll_len);
			}
			c->batch_query_len = nl < n && records_on(c) ?
				sql_normalise(b + nl + 1, n - nl - 1, 0, c->batch_query) : 0;
			memcpy(c->batch_op, op, len);
			c->batch_op_len = len;
			c->batch_parsed = 1;
			struct pgstmt *st = pg_stmt(c, b, nl, 1);
			if (st) {
				memcpy(st->op, op, len);
				st->op_len = len;
				memcpy(st->coll, c->batch_coll, c->batch_coll_len);
				st->coll_len = c->batch_coll_len;
				stmt_query(st, c->batch_query, c->batch_query_len);
			}
			return 0;
		}
		case 'B': { /* Bind: a portal's name, then the statement's */
			size_t pl = strnlen(b, n);
			if (pl < n && !c->batch_op_len) {
				const char *sn = b + pl + 1;
				struct pgstmt *st = pg_stmt(c, sn, strnlen(sn, n - pl - 1), 0);
				if (st) {
					memcpy(c->batch_op, st->op, st->op_len);
					c->batch_op_len = st->op_len;
					memcpy(c->batch_coll, st->coll, st->coll_len);
					c->batch_coll_len = st->coll_len;
					if (st->query_len)
						memcpy(c->batch_query, st->query, st->query_len);
					c->batch_query_len = st->query_len;
				}
			}
			return 0;
		}
		case 'E':
			c->batch_executed = 1;
			return 0;
		case 'S': { /* Sync: what was sent since the last one is one operation; a statement
			     * only prepared (PQprepare) is PREPARE; a Sync alone is answered too */
			int prepare = c->batch_parsed && !c->batch_executed;
			int silent = !c->batch_parsed && !c->batch_executed;
			if (push_op(c, prepare ? "PREPARE" : c->batch_op,
				    prepare ? 7 : c->batch_op_len, ts, d->bytes))
				return -1;
			struct op *o = newest_op(c);
			if (o && silent)
				o->silent = 1;
			if (o && !prepare) {
				memcpy(o->coll, c->batch_coll, c->batch_coll_len);
				o->coll_len = c->batch_coll_len;
			}
			if (o && !silent) {
				memcpy(o->query, c->batch_query, c->batch_query_len);
				o->query_len = c->batch_query_len;
			}
			c->batch_op_len = c->batch_parsed = c->batch_executed = 0;
			c->batch_coll_len = c->batch_query_len = 0;
			d->bytes = 0;
			return 0;
		}
		default: /* Execute, Describe, Close, Flush, copy data, passwords: part of it */
			return 0;
		}
	}
	switch (type) {
	case 'E': /* ErrorResponse: fields of a code byte and a string; C is the SQLSTATE */
		for (size_t i = 0; i < n && b[i];) {
			size_t l = strnlen(b + i + 1, n - i - 1);
			if (b[i] == 'C' && l <= sizeof(d->status)) {
				memcpy(d->status, b + i + 1, l);
				d->status_len = (uint8_t)l;
				break;
			}
			i += l + 2;
		}
		return 0;
	case 'Z': { /* ReadyForQuery: the operation is done (the first one follows the login) */
		struct op *o = pop_op(c);
		uint8_t sl = d->status_len;
		d->status_len = 0;
		if (!o) {
			d->bytes = 0;
			return 0;
		}
		struct op done = *o;
		int r = done.silent ? 0 : finish(c, &done, ts, d->bytes, d->status, sl);
		d->bytes = 0;
		return r;
	}
	default:
		return 0;
	}
}

/* A message is whole: a typed one is looked at; the client's first (untyped) one is the startup
 * message, or an SSLRequest or GSSENCRequest after which the startup comes again. */
static int pg_done(struct dbconn *c, struct pgdir *d, int request, uint64_t ts)
{
	if (d->started)
		return pg_message(c, request, (char)d->hdr[0], ts);
	const uint8_t *b = (const uint8_t *)d->body;
	uint32_t code = d->body_len >= 4 ? (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 |
						   (uint32_t)b[2] << 8 | b[3] : 0;
	if (d->body_len == 4 && (code == 80877103 || code == 80877104)) {
		d->ssl_asked = 1; /* one byte answers; the startup message follows */
		return 0;
	}
	d->started = 1;
	/* the startup's parameters, names and values: the database (by default the user's name) */
	const char *kv = d->body + 4, *end = d->body + d->body_len;
	while (kv < end && *kv) {
		size_t kl = strnlen(kv, (size_t)(end - kv));
		const char *v = kv + kl + 1;
		if (v >= end)
			break;
		size_t vl = strnlen(v, (size_t)(end - v));
		if (v + vl >= end) /* cut at the bytes kept */
			break;
		int db = kl == 8 && !memcmp(kv, "database", 8);
		if ((db || (kl == 4 && !memcmp(kv, "user", 4) && !c->ns_len)) && vl <= OP_MAX) {
			memcpy(c->ns, v, vl);
			c->ns_len = (uint8_t)vl;
		}
		if (db)
			break;
		kv = v + vl + 1;
	}
	return 0;
}

/* A startup message, SSLRequest or GSSENCRequest: a length, then protocol 3.0 or the code. */
static int pg_startup_like(const uint8_t *p)
{
	uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
	uint32_t code = (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
	return (code == 0x00030000 && len >= 8 && len <= 10000) ||
	       (len == 8 && (code == 80877103 || code == 80877104));
}

static int pg_feed(struct dbconn *c, int request, const uint8_t *p, size_t n,
		   uint64_t uncaptured, uint64_t ts)
{
	struct pgdir *d = request ? &c->preq : &c->presp;
	size_t pos = 0;
	if (c->opaque)
		return 0;
	if (!request && c->preq.ssl_asked && n) { /* one byte: S (or G) encrypts, N does not */
		c->preq.ssl_asked = 0;
		if (p[0] != 'N') {
			c->opaque = 1;
			return bump((DbEngineObject *)c->engine, "postgres_encrypted", 1);
		}
		pos = 1;
	}
	if (request && !d->started && !d->hdr_len && !d->body_left && n - pos >= 8 &&
	    !pg_startup_like(p + pos))
		d->started = 1; /* met after its start (the engine forgot it while idle) */
	while (pos < n) {
		if (d->body_left) {
			size_t take = d->body_left < n - pos ? (size_t)d->body_left : n - pos;
			size_t keep = PG_KEEP - d->body_len < take ? PG_KEEP - d->body_len : take;
			memcpy(d->body + d->body_len, p + pos, keep);
			d->body_len += (uint32_t)keep;
			d->body_left -= take;
			d->bytes += take;
			pos += take;
			if (!d->body_left && pg_done(c, d, request, ts))
				return -1;
			continue;
		}
		/* a header: the client's first message has only the length */
		uint32_t need = (request && !d->started) ? 4 : 5;
		while (d->hdr_len < need && pos < n)
			d->hdr[d->hdr_len++] = p[pos++];
		if (d->hdr_len < need)
			break;
		const uint8_t *l = d->hdr + (need - 4);
		uint32_t len = (uint32_t)l[0] << 24 | (uint32_t)l[1] << 16 | (uint32_t)l[2] << 8 | l[3];
		if (len < 4 || len > (1u << 30))
			return desync(c, "postgres_bad_length");
		if (need == 5 && !((d->hdr[0] >= 'A' && d->hdr[0] <= 'Z') ||
				   (d->hdr[0] >= 'a' && d->hdr[0] <= 'z') ||
				   (d->hdr[0] >= '1' && d->hdr[0] <= '3')))
			return desync(c, "postgres_bad_type");
		d->bytes += need;
		d->hdr_len = 0;
		d->body_len = 0;
		d->body_left = len - 4;
		if (!d->body_left && pg_done(c, d, request, ts))
			return -1;
	}
	if (uncaptured) {
		if (d->body_left >= uncaptured) { /* inside a large message (rows, COPY data) */
			d->body_left -= uncaptured;
			d->bytes += uncaptured;
			if (!d->body_left && pg_done(c, d, request, ts))
				return -1;
		} else if (request) {
			return desync(c, "db_bytes_not_captured");
		} else {
			c->reply_lost = 1;
			c->lost_ts = ts;
			c->lost_bytes = d->bytes + uncaptured;
			memset(d, 0, sizeof(*d));
			d->started = 1;
		}
	}
	return 0;
}

/* --- MySQL and MariaDB (the client/server protocol) ------------------------------------------ */

#define MY_CLIENT_COMPRESS 0x20u
#define MY_CLIENT_SSL 0x800u
#define MY_CLIENT_DEPRECATE_EOF 0x01000000u
#define MY_MORE_RESULTS 0x0008u

static const char *const my_commands[] = {
	[0x02] = "INIT_DB",  [0x04] = "FIELD_LIST", [0x05] = "CREATE_DB",
	[0x06] = "DROP_DB",  [0x07] = "REFRESH",    [0x08] = "SHUTDOWN",
	[0x09] = "STATISTICS", [0x0a] = "PROCESS_INFO", [0x0c] = "PROCESS_KILL",
	[0x0d] = "DEBUG",    [0x0e] = "PING",	     [0x11] = "CHANGE_USER",
	[0x1a] = "STMT_RESET", [0x1b] = "SET_OPTION", [0x1c] = "FETCH",
	[0x1f] = "RESET_CONNECTION",
};

static uint32_t le32(const uint8_t *b)
{
	return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* A length-encoded integer at *pos of n bytes (-1: not all there). */
static long long my_lenenc(const uint8_t *b, uint32_t n, uint32_t *pos)
{
	if (*pos >= n)
		return -1;
	uint8_t f = b[(*pos)++];
	uint32_t w = f < 0xfb ? 0 : f == 0xfc ? 2 : f == 0xfd ? 3 : f == 0xfe ? 8 : 99;
	if (w == 0)
		return f;
	if (w == 99 || *pos + w > n)
		return -1;
	unsigned long long v = 0;
	for (uint32_t i = 0; i < w; i++)
		v |= (unsigned long long)b[*pos + i] << (8 * i);
	*pos += w;
	return (long long)(v & 0x7fffffffffffffffULL);
}

/* The server status flags of an OK packet (0x00 or 0xfe) or an old EOF packet. */
static unsigned my_status_flags(const struct mydir *d)
{
	if (d->body_len && d->body[0] == 0xfe && d->pkt_len < 9) /* EOF: warnings, status */
		return d->body_len >= 5 ? d->body[3] | d->body[4] << 8 : 0;
	uint32_t pos = 1;
	if (my_lenenc(d->body, d->body_len, &pos) < 0 || my_lenenc(d->body, d->body_len, &pos) < 0 ||
	    pos + 2 > d->body_len)
		return 0;
	return d->body[pos] | d->body[pos + 1] << 8;
}

static int my_done(struct dbconn *c, uint64_t ts)
{
	struct mydir *d = &c->myresp;
	struct op *o = pop_op(c);
	if (o && !c->my_status_len && o->aux_len && o->cmd != 0x16) { /* INIT_DB, USE: agreed */
		memcpy(c->ns, o->aux, o->aux_len);
		c->ns_len = o->aux_len;
	}
	uint8_t sl = c->my_status_len;
	c->my_status_len = 0;
	c->my_state = MY_R_FIRST;
	uint64_t bytes = d->bytes;
	d->bytes = 0;
	if (!o)
		return 0;
	struct op done = *o;
	return finish(c, &done, ts, bytes, c->my_status, sl);
}

static void my_error(struct dbconn *c)
{
	const struct mydir *d = &c->myresp;
	if (d->body_len >= 3) {
		unsigned code = d->body[1] | d->body[2] << 8;
		c->my_status_len = (uint8_t)snprintf(c->my_status, sizeof(c->my_status), "%u", code);
	}
}

/* The end of a result set (an EOF or OK packet): another may follow (a procedure's, or several
 * statements in one query). */
static int my_result_end(struct dbconn *c, uint64_t ts)
{
	if (my_status_flags(&c->myresp) & MY_MORE_RESULTS) {
		c->my_state = MY_R_FIRST;
		return 0;
	}
	return my_done(c, ts);
}

/* A prepare's definitions: parameters, then columns; each list ends in an EOF packet unless
 * CLIENT_DEPRECATE_EOF was agreed (not known for a connection met after its login: then a
 * list ends with its count, and an EOF that comes after all is passed over). */
static int my_prepare_packet(struct dbconn *c, const struct mydir *d, uint64_t ts)
{
	int eof = d->body_len && d->body[0] == 0xfe && d->pkt_len == 5;
	if (eof) {
		c->my_deprecate_eof = 0;
		if (c->my_section == 1 && c->my_left == c->my_cols)
			return 0; /* the parameters' EOF, come after their count */
	} else {
		if (c->my_left)
			c->my_left--;
		if (c->my_left || c->my_deprecate_eof == 0)
			return 0; /* more definitions, or the list's EOF, to come */
		c->my_skip_eof = c->my_deprecate_eof < 0;
	}
	if (c->my_section == 0 && c->my_cols) {
		c->my_section = 1;
		c->my_left = c->my_cols;
		return 0;
	}
	return my_done(c, ts);
}

/* A whole server packet (its first MY_KEEP bytes) while commands are answered. */
static int my_response(struct dbconn *c, uint64_t ts)
{
	const struct mydir *d = &c->myresp;
	uint8_t t = d->body_len ? d->body[0] : 0;
	int eof_like = t == 0xfe && d->pkt_len < 0xffffff &&
		       (c->my_deprecate_eof != 0 || d->pkt_len < 9);
	if (c->my_skip_eof && c->my_state == MY_R_FIRST && t == 0xfe && d->pkt_len == 5) {
		c->my_skip_eof = 0; /* the last list's EOF of a prepare */
		c->myresp.bytes = 0;
		return 0;
	}
	c->my_skip_eof = 0;
	if (!c->count) { /* nothing asked: passed over, counted */
		c->myresp.bytes = 0;
		return bump((DbEngineObject *)c->engine, "mysql_unsolicited", 1);
	}
	struct op *o = &c->ops[c->head];
	switch (c->my_state) {
	case MY_R_FIRST:
		if (t == 0xff) {
			my_error(c);
			return my_done(c, ts);
		}
		if (t == 0x00 && o->cmd == 0x16 && d->body_len >= 9) { /* COM_STMT_PREPARE_OK */
			uint32_t id = le32(d->body + 1);
			struct pgstmt *st = pg_stmt(c, (const char *)&id, 4, 1);
			if (st) {
				memcpy(st->op, o->aux, o->aux_len);
				st->op_len = o->aux_len;
				memcpy(st->coll, o->coll, o->coll_len);
				st->coll_len = o->coll_len;
				stmt_query(st, o->query, o->query_len);
			}
			c->my_last_stmt = id;
			c->my_cols = d->body[5] | d->body[6] << 8;
			c->my_left = d->body[7] | d->body[8] << 8;
			c->my_section = 0;
			if (!c->my_left) {
				c->my_section = 1;
				c->my_left = c->my_cols;
			}
			if (!c->my_left)
				return my_done(c, ts);
			c->my_state = MY_R_PREPARE;
			return 0;
		}
		if (t == 0x00)
			return my_result_end(c, ts);
		if (t == 0xfb && (o->cmd == 0x03)) {
			c->my_state = MY_R_INFILE;
			return 0;
		}
		if (t == 0xfe && o->cmd == 0x11) {
			c->my_state = MY_R_AUTH; /* an authentication switch */
			return 0;
		}
		if (o->cmd == 0x03 || o->cmd == 0x17) { /* a result set: its column count */
			uint32_t pos = 0;
			long long n = my_lenenc(d->body, d->body_len, &pos);
			if (n <= 0)
				return desync(c, "mysql_bad_column_count");
			/* MariaDB's metadata cache: a byte after the count says whether definitions
			 * follow */
			int defs = !(pos + 1 == d->pkt_len && pos < d->body_len && d->body[pos] == 0);
			c->my_left = defs ? (uint64_t)n : 0;
			c->my_state = defs ? MY_R_COLS : MY_R_COLS_END;
			return 0;
		}
		if (o->cmd == 0x1c) { /* COM_STMT_FETCH: rows */
			c->my_state = MY_R_ROWS;
			return eof_like ? my_result_end(c, ts) : 0;
		}
		if (o->cmd == 0x04) {
			c->my_state = MY_R_LIST;
			return eof_like ? my_done(c, ts) : 0;
		}
		return my_done(c, ts); /* one packet: a string, an EOF */
	case MY_R_COLS:
		if (--c->my_left == 0)
			c->my_state = MY_R_COLS_END;
		return 0;
	case MY_R_COLS_END:
		if (t == 0xfe && d->pkt_len == 5) { /* the columns' EOF: rows follow */
			c->my_deprecate_eof = 0;
			c->my_state = MY_R_ROWS;
			return 0;
		}
		if (t == 0xff) {
			my_error(c);
			return my_done(c, ts);
		}
		if (t == 0xfe && d->pkt_len < 0xffffff) { /* no rows, and no EOF before them */
			c->my_deprecate_eof = 1;
			return my_result_end(c, ts);
		}
		c->my_state = MY_R_ROWS;
		return 0;
	case MY_R_ROWS:
		if (t == 0xff) {
			my_error(c);
			return my_done(c, ts);
		}
		return eof_like ? my_result_end(c, ts) : 0;
	case MY_R_PREPARE:
		return my_prepare_packet(c, d, ts);
	case MY_R_INFILE:
	case MY_R_AUTH:
		if (t == 0xff)
			my_error(c);
		return (t == 0x00 || t == 0xff) ? my_done(c, ts) : 0;
	case MY_R_LIST:
		if (t == 0xff)
			my_error(c);
		return (t == 0xff || eof_like) ? my_done(c, ts) : 0;
	}
	return 0;
}

/* A whole client packet at sequence 0: a command. */
static int my_command(struct dbconn *c, uint64_t ts)
{
	struct mydir *d = &c->myreq;
	const char *b = (const char *)d->body;
	uint32_t n = d->body_len;
	uint8_t cmd = n ? d->body[0] : 0;
	char op[OP_MAX];
	uint8_t len = 0;
	const char *name = op, *sql = NULL;
	uint32_t sql_n = 0;
	struct pgstmt *st = NULL;
	switch (cmd) {
	case 0x01: /* COM_QUIT, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE: no answer */
	case 0x18:
	case 0x19:
		d->bytes = 0;
		return 0;
	case 0x03: { /* COM_QUERY; with query attributes (MySQL 8), none: 0x00 0x01 first */
		uint32_t at = (n >= 3 && b[1] == 0 && b[2] == 1) ? 3 : 1;
		sql = b + at;
		sql_n = n > at ? n - at : 0;
		sql_op(sql, sql_n, op, &len);
		break;
	}
	case 0x16: /* COM_STMT_PREPARE */
		name = "PREPARE";
		len = 7;
		break;
	case 0x17: { /* COM_STMT_EXECUTE: the statement's own operation */
		uint32_t id = n >= 5 ? le32(d->body + 1) : 0;
		if (id == 0xffffffffu) /* MariaDB: the statement just prepared */
			id = c->my_last_stmt;
		st = pg_stmt(c, (const char *)&id, 4, 0);
		if (st && st->op_len) {
			memcpy(op, st->op, st->op_len);
			len = st->op_len;
		} else {
			name = "EXECUTE";
			len = 7;
		}
		break;
	}
	case 0x12: /* COM_BINLOG_DUMP: a replica's stream, not operations */
	case 0x1e:
		c->opaque = 1;
		return bump((DbEngineObject *)c->engine, "mysql_replication", 1);
	default:
		name = cmd < sizeof(my_commands) / sizeof(my_commands[0]) && my_commands[cmd] ?
			       my_commands[cmd] :
			       "_OTHER";
		len = (uint8_t)strlen(name);
	}
	if (push_op(c, name, len, ts, d->bytes))
		return -1;
	d->bytes = 0;
	struct op *o = newest_op(c);
	if (!o)
		return 0;
	o->cmd = cmd;
	if (cmd == 0x16) { /* the statement's own operation and table, for its executions */
		sql_op(b + 1, n > 1 ? n - 1 : 0, o->aux, &o->aux_len);
		sql_collection(b + 1, n > 1 ? n - 1 : 0, o->aux, o->aux_len, o->coll, &o->coll_len);
		if (records_on(c))
			o->query_len = sql_normalise(b + 1, n > 1 ? n - 1 : 0, 1, o->query);
	} else if (st && st->op_len) {
		memcpy(o->coll, st->coll, st->coll_len);
		o->coll_len = st->coll_len;
		if (st->query_len)
			memcpy(o->query, st->query, st->query_len);
		o->query_len = st->query_len;
	} else if (sql && sql_word_is(op, len, "USE")) { /* the database, if the server agrees */
		uint8_t k = 0;
		sql_collection(sql, sql_n, "UPDATE", 6, o->aux, &k); /* the name after the keyword */
		o->aux_len = k;
	} else if (sql) {
		sql_collection(sql, sql_n, op, len, o->coll, &o->coll_len);
	}
	if (sql && records_on(c))
		o->query_len = sql_normalise(sql, sql_n, 1, o->query); else if (cmd == 0x02 && n > 1 && n - 1 <= OP_MAX) { /* COM_INIT_DB */
		memcpy(o->aux, b + 1, n - 1);
		o->aux_len = (uint8_t)(n - 1);
	}
	return 0;
}

/* The server's greeting (protocol 10): its capabilities. */
static void my_greeting(struct dbconn *c)
{
	const struct mydir *d = &c->myresp;
	uint32_t v = (uint32_t)strnlen((const char *)d->body + 1, d->body_len - 1);
	uint32_t at = 1 + v + 1 + 4 + 8 + 1; /* version, its NUL, thread id, scramble, filler */
	c->my_phase = MY_LOGIN;
	if (at + 2 <= d->body_len)
		c->my_server_caps = d->body[at] | d->body[at + 1] << 8;
	if (at + 7 <= d->body_len)
		c->my_server_caps |= (uint32_t)(d->body[at + 5] | d->body[at + 6] << 8) << 16;
}

/* The database a handshake response names (CLIENT_CONNECT_WITH_DB): after the user's name and
 * the authentication data. */
static void my_login_database(struct dbconn *c, uint32_t caps)
{
	const struct mydir *d = &c->myreq;
	uint32_t n = d->body_len, at = 32;
	if (!(caps & 0x8u) || at >= n)
		return;
	at += (uint32_t)strnlen((const char *)d->body + at, n - at) + 1; /* the user */
	if (caps & 0x200000u) { /* CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA */
		long long l = my_lenenc(d->body, n, &at);
		if (l < 0)
			return;
		at += (uint32_t)(l < n ? l : n);
	} else if (caps & 0x8000u) { /* CLIENT_SECURE_CONNECTION */
		if (at >= n)
			return;
		at += 1 + d->body[at];
	} else {
		at += (uint32_t)strnlen((const char *)d->body + at, n > at ? n - at : 0) + 1;
	}
	if (at >= n)
		return;
	size_t l = strnlen((const char *)d->body + at, n - at);
	if (at + l < n && l <= OP_MAX) { /* whole within the bytes kept */
		memcpy(c->ns, d->body + at, l);
		c->ns_len = (uint8_t)l;
	}
}

/* A whole packet. */
static int my_packet(struct dbconn *c, int request, uint64_t ts)
{
	struct mydir *d = request ? &c->myreq : &c->myresp;
	int cont = d->cont;
	d->cont = d->next_cont;
	if (cont)
		return 0; /* the rest of a packet of 16 MB or more: its start was looked at */
	if (c->my_phase == MY_UNKNOWN) {
		if (!request && d->seq == 0 && d->body_len && d->body[0] == 0x0a) {
			my_greeting(c);
			d->bytes = 0;
			return 0;
		}
		if (!request) { /* before the first command, met after the connection's start */
			d->bytes = 0;
			return 0;
		}
		c->my_phase = d->seq == 0 ? MY_COMMANDS : MY_LOGIN;
	}
	if (c->my_phase == MY_LOGIN) {
		if (request && d->seq == 1 && d->body_len >= 4) { /* the handshake response */
			uint32_t caps = le32(d->body) & (c->my_server_caps ? c->my_server_caps : ~0u);
			if (caps & MY_CLIENT_SSL && d->pkt_len == 32) {
				c->opaque = 1;
				return bump((DbEngineObject *)c->engine, "mysql_encrypted", 1);
			}
			if (caps & MY_CLIENT_COMPRESS) {
				c->opaque = 1;
				return bump((DbEngineObject *)c->engine, "mysql_compressed", 1);
			}
			if (c->my_server_caps)
				c->my_deprecate_eof = (caps & MY_CLIENT_DEPRECATE_EOF) != 0;
			my_login_database(c, le32(d->body));
		}
		if (!request && d->body_len && (d->body[0] == 0x00 || d->body[0] == 0xff))
			c->my_phase = MY_COMMANDS; /* logged in (or refused: the server closes) */
		d->bytes = 0;
		return 0;
	}
	if (!request)
		return my_response(c, ts);
	if (d->seq != 0) { /* a file for LOAD DATA LOCAL, authentication data */
		return 0;
	}
	return my_command(c, ts);
}

static int my_feed(struct dbconn *c, int request, const uint8_t *p, size_t n, uint64_t uncaptured,
		   uint64_t ts)
{
	struct mydir *d = request ? &c->myreq : &c->myresp;
	size_t pos = 0;
	if (c->opaque)
		return 0;
	if (request && c->my_phase == MY_UNKNOWN && !d->hdr_len && !d->body_left && n >= 4 &&
	    p[0] == 0x03 && ((p[1] | 0x20) >= 'a' && (p[1] | 0x20) <= 'z') && p[3] != 0) {
		/* a COM_QUERY's body, read after its header: the kernel found the connection here
		 * (a header has the sequence 0 at its fourth byte) */
		d->pkt_len = (uint32_t)(n + uncaptured);
		d->seq = 0;
		d->next_cont = 0;
		d->body_len = 0;
		d->body_left = d->pkt_len;
		d->bytes += 4;
	}
	while (pos < n) {
		if (d->body_left) {
			size_t take = d->body_left < n - pos ? (size_t)d->body_left : n - pos;
			size_t keep = MY_KEEP - d->body_len < take ? MY_KEEP - d->body_len : take;
			memcpy(d->body + d->body_len, p + pos, keep);
			d->body_len += (uint32_t)keep;
			d->body_left -= take;
			d->bytes += take;
			pos += take;
			if (!d->body_left && my_packet(c, request, ts))
				return -1;
			if (c->opaque)
				return 0;
			continue;
		}
		while (d->hdr_len < 4 && pos < n)
			d->hdr[d->hdr_len++] = p[pos++];
		if (d->hdr_len < 4)
			break;
		d->hdr_len = 0;
		d->pkt_len = d->hdr[0] | d->hdr[1] << 8 | (uint32_t)d->hdr[2] << 16;
		d->seq = d->hdr[3];
		d->next_cont = d->pkt_len == 0xffffff;
		d->body_len = 0;
		d->body_left = d->pkt_len;
		d->bytes += 4;
		if (!d->body_left && my_packet(c, request, ts))
			return -1;
	}
	if (uncaptured) {
		if (d->body_left >= uncaptured) { /* inside a large packet (a row, a long query) */
			d->body_left -= uncaptured;
			d->bytes += uncaptured;
			if (!d->body_left && my_packet(c, request, ts))
				return -1;
		} else if (request) {
			return desync(c, "db_bytes_not_captured");
		} else {
			c->reply_lost = 1;
			c->lost_ts = ts;
			c->lost_bytes = d->bytes + uncaptured;
			memset(d, 0, sizeof(*d));
			c->my_state = MY_R_FIRST;
		}
	}
	return 0;
}

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

static int nats_feed(struct dbconn *c, int request, const uint8_t *p, size_t n,
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

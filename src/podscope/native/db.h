/* The database engine's shared definitions (native/dbengine.c and its protocols, native/db_*.c):
 * a connection's state, its operations in flight, and what each protocol's parser calls. */
#ifndef PODSCOPE_DB_H
#define PODSCOPE_DB_H

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


/* --- shared by the protocols (dbengine.c) --- */
int bump(DbEngineObject *e, const char *reason, long n);
int finish(struct dbconn *c, const struct op *o, uint64_t end, uint64_t resp_bytes,
	   const char *status, size_t status_len);
int push_op(struct dbconn *c, const char *name, size_t len, uint64_t ts, uint64_t bytes);
struct op *pop_op(struct dbconn *c);
struct op *newest_op(struct dbconn *c);
int desync(struct dbconn *c, const char *reason);
size_t take_line(const uint8_t *p, size_t n, char *line, uint32_t cap, uint32_t *line_len,
		 uint32_t *over, int *whole);

size_t take_body(const uint8_t *p, size_t n, void *body, uint32_t cap, uint32_t *body_len,
		 uint64_t *body_left, uint64_t *bytes);

/* --- each protocol: its bytes of one direction (request: from the client) --- */
int resp_feed(struct dbconn *c, int request, const uint8_t *p, size_t n,
	      uint64_t uncaptured, uint64_t ts);
int mc_feed(struct dbconn *c, int request, const uint8_t *p, size_t n,
	    uint64_t uncaptured, uint64_t ts);
int pg_feed(struct dbconn *c, int request, const uint8_t *p, size_t n,
	    uint64_t uncaptured, uint64_t ts);
int my_feed(struct dbconn *c, int request, const uint8_t *p, size_t n, uint64_t uncaptured,
	    uint64_t ts);
int nats_feed(struct dbconn *c, int request, const uint8_t *p, size_t n,
	      uint64_t uncaptured, uint64_t ts);

/* --- helpers one protocol lends another --- */
long long resp_int(const char *s, uint32_t n, int *ok);
const char *mc_token(const char *s, uint32_t n, int idx, uint32_t *len);
int mc_is(const char *w, uint32_t n, const char *want);
long long mc_num(const char *w, uint32_t n);
long long mc_num_at(const char *s, uint32_t n, int idx);
void sql_op(const char *s, size_t n, char *out, uint8_t *len);
int sql_word_is(const char *w, size_t n, const char *want);
void sql_collection(const char *s, size_t n, const char *op, uint8_t oplen, char *out,
		    uint8_t *len);
uint8_t sql_normalise(const char *s, size_t n, int mysql, char *out);
int records_on(const struct dbconn *c);
void stmt_query(struct pgstmt *st, const char *q, uint8_t len);
struct pgstmt *pg_stmt(struct dbconn *c, const char *name, size_t n, int make);

#endif

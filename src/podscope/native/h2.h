/* HTTP/2 frames and HPACK (h2.c), shared with the request engine (h2engine.c). */
#ifndef PODSCOPE_H2_H
#define PODSCOPE_H2_H

#include "fast.h"

enum { EV_DATA = 0, EV_HEADERS = 1, EV_RST = 3, EV_GOAWAY = 7, EV_PREFACE = 16 };

/* What a header block says about its stream (the fields H2Connection sets). */
struct summary {
	const char *method, *path, *authority, *grpc_message, *content_type, *traceparent;
	uint32_t method_len, path_len, authority_len, grpc_message_len, content_type_len,
		traceparent_len;
	long long status, grpc_status; /* -1: absent */
	int has_status, has_method;
};

/* One event of the frames: what a request's bookkeeping needs. */
struct wire_event {
	int kind;		 /* EV_* */
	uint32_t sid;		 /* the stream */
	int flags;		 /* the frame's flags (END_STREAM) */
	uint32_t n;		 /* DATA: payload length; GOAWAY: the last stream */
	int outcome;		 /* HEADERS: 0 decoded, 1 partial, 2 not decodable */
	const struct summary *s; /* HEADERS: the block's fields (valid during the call) */
	uint64_t off;		 /* HEADERS: where the block's HEADERS frame began in the side's
				  * bytes (all fed to wire_feed, uncaptured ones included) */
};

typedef int (*wire_sink)(void *ctx, int from_client, const struct wire_event *ev);

struct entry {
	uint32_t off; /* name then value, at arena + off */
	uint32_t name_len, value_len;
};

struct table {
	struct entry *ring; /* newest at ring[head], then older ones */
	uint32_t cap, head, count;
	char *arena; /* the entries' bytes, oldest first: appended, compacted when full (an
		      * encoder that indexes every response header adds and evicts per block) */
	uint32_t arena_cap, arena_len;
	uint32_t size, maxsize, max_allowed;
	int synced;	      /* the connection's start was seen: every reference must resolve */
	unsigned long misses; /* references to entries never seen */
};

struct direction {
	int is_client;
	struct out buf; /* bytes of a frame not complete yet */
	uint32_t preface_left;
	uint64_t skip;	  /* DATA payload bytes still to pass over (not captured) */
	struct out block; /* header block being assembled */
	int in_block;
	uint32_t block_stream;
	uint8_t block_flags;
	struct table table;
	uint64_t fed;	    /* bytes of this side fed so far (uncaptured ones included) */
	uint64_t base;	    /* where the bytes frames() is parsing begin, in those */
	uint64_t frame_off; /* where the frame being handled begins */
	uint64_t block_off; /* where the current header block's HEADERS frame began */
};

typedef struct {
	PyObject_HEAD struct direction client, server;
	int seen_start;
	struct out strings; /* scratch for decoded names and values */
	wire_sink sink;	    /* where wire_feed() sends events, and its context */
	void *sink_ctx;
	int from_client;
} WireObject;

extern PyTypeObject WireType;

/* A direction's bytes: 0, -1 (a Python error is set, or memory) or a reason > 0 (wire_reason):
 * the connection's state is void then. Events go to self->sink as they are found. */
int wire_feed(WireObject *self, int from_client, const uint8_t *data, size_t n,
	      uint64_t uncaptured);
const char *wire_reason(int r);


#endif

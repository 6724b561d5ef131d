/* Span and trace ids of a request from its struct http_link (bpf/http.h): the same on the two
 * ends of the request, computed by two agents that never talk. */
#ifndef PODSCOPE_LINKS_H
#define PODSCOPE_LINKS_H

#include <linux/types.h>
#include <stdint.h>

#include "fast.h"
#include "http.h"

struct span_ids {
	uint8_t trace[16];
	uint64_t span;
	uint64_t parent; /* 0: none (a root span) */
	int linked;	 /* 0: the request had no link (the ids are random-free zeros: the caller
			  * makes its own) */
};

/* role: HTTP_ROLE_SERVER or HTTP_ROLE_CLIENT; stream: the HTTP/2 stream id (0 for HTTP/1);
 * parent_stream likewise for the parent's. */
void link_ids(const struct http_link *own, uint32_t stream, const struct http_link *parent,
	      uint32_t parent_stream, int role, struct span_ids *out);

/* out gets 32 (trace) or 16 (span) lower-case hex digits. */
void hex_trace(const uint8_t trace[16], char out[32]);
void hex_span(uint64_t span, char out[16]);

int links_init(PyObject *module);

#endif

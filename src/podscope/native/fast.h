/* podscope._fast: the per-event paths in compiled code (shared declarations). */
#ifndef PODSCOPE_FAST_H
#define PODSCOPE_FAST_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

/* A batch as Batch.take() returns it: records one after another, each as a u32 length, a u32
 * zero, then the record's bytes padded to 8. */
#define BATCH_HDR 8
#define BATCH_ALIGN(n) (((n) + 7) & ~(size_t)7)

/* A growable output buffer (malloc'd; the caller frees or hands it to Python). */
struct out {
	char *buf;
	size_t len, cap;
	int failed; /* an allocation failed: the buffer's content is incomplete */
};

int out_reserve(struct out *o, size_t more);
void out_put(struct out *o, const void *p, size_t n);
void out_str(struct out *o, const char *s);
void out_u64(struct out *o, unsigned long long v);
/* ns as seconds with nine decimals: exact, no float */
void out_seconds(struct out *o, unsigned long long ns);
/* a double as JSON: the fewest digits (15 to 17) that read back as the same double; always
 * with a point or an exponent, so it reads as a float */
void out_double(struct out *o, double v);
void out_free(struct out *o);

/* The next record of a batch: 1 and (*data, *size) set, or 0 at its end; -1 if malformed. */
int batch_next(const char *buf, size_t len, size_t *pos, const char **data, size_t *size);

/* Aggregate cells of the engines: fixed-size records in bytearrays keyed by Python tuples, at most
 * `max` of them between two takes; past it a sample is a cell of its own, handed over in
 * `overflow`. Errors are counted by reason. */
struct cells {
	PyObject *cells;    /* key -> bytearray(size) */
	PyObject *overflow; /* [(key, bytes(size))] */
	PyObject *errors;   /* reason -> count */
	Py_ssize_t max;
	size_t size;
};

int cells_init(struct cells *a, size_t size, Py_ssize_t max);
void cells_free(struct cells *a);
/* The cell of key (zeroed when new; *held: its bytearray, borrowed), or `scratch` (zeroed, size
 * bytes, *held NULL) past max: fill it, then cells_spill. NULL with an exception set. */
void *cells_get(struct cells *a, PyObject *key, void *scratch, PyObject **held);
int cells_spill(struct cells *a, PyObject *key, const void *scratch);
/* ([(key, bytes)], {reason: count}) since the last take; the containers start empty again */
PyObject *cells_take(struct cells *a);
int cells_bump(struct cells *a, const char *reason, long n);
/* floor(log2(ns)) + 1 (0 for 0), at most slots - 1: the slot of a log2 histogram */
int log2_slot(uint64_t ns, int slots);

int records_init(PyObject *module);
int h2_init(PyObject *module);
int h2engine_init(PyObject *module);
int dbengine_init(PyObject *module);

#endif

/*
 * The in-memory vector index of cache-semantic: every entry's vectors,
 * grouped per model so a lookup scans only the entries it may match.
 *
 * Each model has one matrix of built-in embeddings (one row per entry)
 * and one matrix of model embeddings per dimension (a row per entry
 * stored with such a vector).  A matrix keeps its rows contiguous twice:
 * as float32 (exact) and as int8 with one scale per row (a quarter of
 * the bytes).  A search scans the int8 copy — a float32 scan of 10k x 768
 * is bound by memory bandwidth (30 MB, ~1.1 ms here; the int8 scan reads
 * 7.7 MB in ~0.4 ms, bench/cache_bench.c) — and rescores in float32 every
 * row the quantisation error bound cannot rule out, so the answer is the
 * exact float32 best (see vindex_search in index.c).
 *
 * Entries also sit on two lists: least to most recently used (LRU
 * eviction) and oldest to newest `created` (TTL expiry).  Handles are
 * stable until the entry is removed.  Not thread-safe.
 */
#ifndef SOVMESH_CACHE_SEMANTIC_INDEX_H
#define SOVMESH_CACHE_SEMANTIC_INDEX_H

#include <stddef.h>
#include <stdint.h>

#define VINDEX_NONE UINT32_MAX
/* Model embeddings longer than this are refused (the int8 dot product
 * accumulates in int32: 127 * 127 * dim must not overflow). */
#define VINDEX_MAX_DIM 65536

typedef struct vindex vindex;

typedef struct vindex_item {
	int64_t id; /* the database row; unique */
	const char *model;
	int64_t created, last_used;
	const float *builtin; /* builtin_dim floats, L2-normalised */
	const float *mvec;    /* model embedding, L2-normalised, or NULL */
	size_t mdim;          /* its length, 1..VINDEX_MAX_DIM */
} vindex_item;

typedef struct vindex_hit {
	uint32_t handle;
	int64_t id;
	float similarity;
} vindex_hit;

/* An empty index whose built-in embeddings have builtin_dim floats.
 * exact != 0 scans float32 rows only (the bench's comparison). */
vindex *vindex_new(size_t builtin_dim, int exact);
void vindex_free(vindex *ix);
/* Remove every entry. */
void vindex_clear(vindex *ix);

/* Make room for one more entry of `model` with a model embedding of mdim
 * floats (0: none), so that the next vindex_add of it cannot fail.
 * 0 or -ENOMEM. */
int vindex_reserve(vindex *ix, const char *model, size_t mdim);
/* Add an entry as the most recently used one.  0 or -ENOMEM (never
 * after vindex_reserve for the same model and mdim), -EINVAL for a bad
 * dimension or an id already present. */
int vindex_add(vindex *ix, const vindex_item *it, uint32_t *handle);
void vindex_remove(vindex *ix, uint32_t h);

/* Bulk loading: between begin and end, vindex_add appends to the age
 * list unsorted; end sorts it once (O(n log n) instead of O(n^2)). */
void vindex_bulk_begin(vindex *ix);
int vindex_bulk_end(vindex *ix);

/* The best entry of `model` at or above min_sim (cosine), compared by
 * built-in embedding (mdim == 0, q has builtin_dim floats) or by model
 * embedding of exactly mdim floats.  q need not be normalised.  1 and
 * *hit filled, 0 for none, -ENOMEM. */
int vindex_search(vindex *ix, const char *model, const float *q, size_t mdim, float min_sim,
                  vindex_hit *hit);

/* Mark h as just used at `now`. */
void vindex_touch(vindex *ix, uint32_t h, int64_t now);

size_t vindex_count(const vindex *ix);
uint32_t vindex_find(const vindex *ix, int64_t id);
int64_t vindex_id(const vindex *ix, uint32_t h);
int64_t vindex_created(const vindex *ix, uint32_t h);
/* The least recently used entry and the next more recently used one. */
uint32_t vindex_lru_first(const vindex *ix);
uint32_t vindex_lru_next(const vindex *ix, uint32_t h);
/* The entry with the oldest `created` and the next newer one. */
uint32_t vindex_age_first(const vindex *ix);
uint32_t vindex_age_next(const vindex *ix, uint32_t h);

/* Scale v to unit length; returns its former length (0: left as is). */
double vindex_normalize(float *v, size_t n);

#endif

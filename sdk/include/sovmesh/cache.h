/* SPDX-License-Identifier: MIT */
/*
 * sovmesh plugin SDK — answer caches (kind SOVMESH_KIND_CACHE, files
 * cache-<name>.so).  A cache stores answers served locally or by a peer
 * (never template answers) and looks them up by query similarity.
 * Cached text never leaves the device.  Calls are synchronous on the loop
 * thread and must be fast (the bench target is < 1 ms at 10k entries).
 */
#ifndef SOVMESH_CACHE_H
#define SOVMESH_CACHE_H

#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sovmesh_cache_query {
	uint32_t size;          /* sizeof(sovmesh_cache_query) */
	const char *model;      /* only entries of this model match */
	const char *query;      /* the user's question */
	const float *embedding; /* dim floats from the backend, or NULL: the
	                           cache then uses its own built-in embedding */
	size_t dim;
	double min_similarity; /* cosine; <= 0 means the plugin's default */
} sovmesh_cache_query;

typedef struct sovmesh_cache_hit {
	uint32_t size; /* sizeof(sovmesh_cache_hit), set by the caller */
	char *answer;  /* host-allocated (api->alloc); caller frees */
	char *query;   /* the cached question; host-allocated; caller frees */
	double similarity;
	int64_t created_unix;
} sovmesh_cache_hit;

typedef struct sovmesh_cache_entry {
	uint32_t size; /* sizeof(sovmesh_cache_entry) */
	const char *model;
	const char *query;
	const char *answer;
	const float *embedding; /* as in sovmesh_cache_query */
	size_t dim;
	int64_t created_unix;
} sovmesh_cache_entry;

typedef struct sovmesh_cache_stats {
	uint32_t size; /* sizeof(sovmesh_cache_stats), set by the caller */
	uint64_t entries;
	uint64_t hits;
	uint64_t misses;
	uint64_t evictions;
	uint64_t bytes; /* storage used, approximately */
} sovmesh_cache_stats;

typedef struct sovmesh_cache_ops {
	uint32_t size; /* sizeof(sovmesh_cache_ops) as built */

	/* Best entry at or above the threshold: 1 and *hit filled, 0 for a
	 * miss, or -errno (a broken store: the router treats it as a miss). */
	int (*lookup)(void *instance, const sovmesh_cache_query *q, sovmesh_cache_hit *hit,
	              sovmesh_error *err);
	/* Store an answer (evicting as the plugin's bounds require). */
	int (*store)(void *instance, const sovmesh_cache_entry *e, sovmesh_error *err);
	/* Counters.  May be NULL. */
	int (*stats)(void *instance, sovmesh_cache_stats *out, sovmesh_error *err);
	/* Remove every entry.  May be NULL. */
	int (*clear)(void *instance, sovmesh_error *err);
} sovmesh_cache_ops;

#ifdef __cplusplus
}
#endif
#endif

/* SPDX-License-Identifier: MIT */
/*
 * cache-semantic: answers to earlier questions, found again by meaning.
 *
 * Every entry (model, question, answer, created, last used) carries the
 * built-in embedding of its question (embed.h) and, when the host had
 * one from the backend, the model's embedding too.  A lookup with a
 * model embedding compares it with the model embeddings of the same
 * length; one without compares built-in embeddings.  Only entries of the
 * lookup's model match.  The threshold is the lookup's min_similarity,
 * or CACHE_DEFAULT_MIN_SIMILARITY (0.80) when that is <= 0.
 *
 * Entries live in <plugin_state_dir>/cache.db (store.c) and, all of
 * their vectors, in memory (index.c), loaded at create: a lookup is a
 * scan in memory plus one row read and one UPDATE for a hit.
 *
 * Bounds: an entry expires ttl_secs after it was stored (expired entries
 * are misses and are deleted on the next lookup or store); beyond
 * max_entries the least recently used entry is evicted.
 *
 * A database that cannot be used (corrupt, not a database, from a newer
 * version) is moved aside to cache.db.corrupt-<unix time> and an empty
 * one started; if even that fails the cache runs disabled: every lookup
 * misses and stores do nothing.  The daemon never fails for its cache.
 *
 * Question and answer text is never logged (DESIGN.md §6.7).
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sovmesh/cache.h>
#include <sovmesh/plugin.h>

#include "embed.h"
#include "index.h"
#include "store.h"

#define CACHE_DEFAULT_MIN_SIMILARITY 0.80
#define CACHE_DB_NAME                "cache.db"

typedef struct cache {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	char path[PATH_MAX];
	store *st;          /* NULL: disabled */
	char *disabled_why; /* why it is disabled */
	vindex *ix;
	int64_t ttl; /* seconds; 0 = never expires */
	size_t max_entries;
	uint64_t hits, misses, evictions;
	int warned_touch, warned_expire;
	float builtin[EMBED_BUILTIN_DIM]; /* scratch */
} cache;

static const sovmesh_setting_def cache_settings[] = {
    {
        .name = "ttl_secs",
        .type = SOVMESH_SETTING_INT,
        .default_value = "604800",
        .min = 0,
        .max = 3153600000.0,
        .help = "an answer expires this many seconds after it was stored (0 = never)",
    },
    {
        .name = "max_entries",
        .type = SOVMESH_SETTING_INT,
        .default_value = "10000",
        .min = 1,
        .max = 10000000,
        .help = "keep at most this many answers; the least recently used go first",
    },
    {.name = NULL},
};

/* Members of a size-first struct the other side may have built shorter. */
#define COVERS(s, type, member) ((s)->size >= offsetof(type, member) + sizeof((s)->member))

static int64_t now_of(const cache *c)
{
	return c->api->wall_time(c->host);
}

static int is_expired(const cache *c, int64_t created, int64_t now)
{
	return c->ttl > 0 && now - created >= c->ttl;
}

/* ---- opening --------------------------------------------------------- */

static int load_row(void *ud, const store_row *row)
{
	cache *c = ud;
	if (row->mdim > VINDEX_MAX_DIM)
		return -EBADMSG;
	vindex_item it = {
	    .id = row->id,
	    .model = row->model,
	    .created = row->created,
	    .last_used = row->last_used,
	    .builtin = row->builtin,
	    .mvec = row->memb,
	    .mdim = row->mdim,
	};
	/* Stored vectors are normalised; a tampered row is merely useless. */
	return vindex_add(c->ix, &it, NULL) == -ENOMEM ? -ENOMEM : 0;
}

/*
 * Room for `room` more entries: the expired ones go, and as many least
 * recently used ones as max_entries requires.  `keep` (VINDEX_NONE or the
 * entry a store is replacing) is neither.  room_delete deletes them from
 * the database inside the caller's transaction and says how many to
 * evict; after the commit, room_apply drops the same entries from memory.
 */
static int room_delete(cache *c, int64_t now, size_t room, uint32_t keep, size_t *evict,
                       sovmesh_error *err)
{
	size_t expired = 0, live;
	uint32_t h;
	for (h = vindex_age_first(c->ix);
	     h != VINDEX_NONE && is_expired(c, vindex_created(c->ix, h), now);
	     h = vindex_age_next(c->ix, h))
		expired += h != keep;
	live = vindex_count(c->ix) - expired - (keep != VINDEX_NONE);
	size_t want = live + room > c->max_entries ? live + room - c->max_entries : 0;

	int r = 0;
	for (h = vindex_age_first(c->ix);
	     r == 0 && h != VINDEX_NONE && is_expired(c, vindex_created(c->ix, h), now);
	     h = vindex_age_next(c->ix, h))
		if (h != keep)
			r = store_delete(c->st, vindex_id(c->ix, h), err);
	size_t n = 0;
	for (h = vindex_lru_first(c->ix); r == 0 && n < want && h != VINDEX_NONE;
	     h = vindex_lru_next(c->ix, h)) {
		if (h == keep || is_expired(c, vindex_created(c->ix, h), now))
			continue;
		r = store_delete(c->st, vindex_id(c->ix, h), err);
		n++;
	}
	*evict = n;
	return r;
}

static void room_apply(cache *c, int64_t now, uint32_t keep, size_t evict)
{
	uint32_t h, next;
	for (h = vindex_age_first(c->ix);
	     h != VINDEX_NONE && is_expired(c, vindex_created(c->ix, h), now); h = next) {
		next = vindex_age_next(c->ix, h);
		if (h != keep)
			vindex_remove(c->ix, h);
	}
	size_t n = 0;
	for (h = vindex_lru_first(c->ix); h != VINDEX_NONE && n < evict; h = next) {
		next = vindex_lru_next(c->ix, h);
		if (h == keep)
			continue;
		vindex_remove(c->ix, h);
		n++;
	}
	c->evictions += n;
}

/* room_delete and room_apply in a transaction of their own. */
static int make_room(cache *c, int64_t now, sovmesh_error *err)
{
	uint32_t h = vindex_age_first(c->ix);
	if (vindex_count(c->ix) <= c->max_entries &&
	    (h == VINDEX_NONE || !is_expired(c, vindex_created(c->ix, h), now)))
		return 0;
	size_t evict = 0;
	int r = store_begin(c->st, err);
	if (r == 0)
		r = room_delete(c, now, 0, VINDEX_NONE, &evict, err);
	if (r == 0)
		r = store_commit(c->st, err);
	if (r < 0) {
		store_rollback(c->st);
		return r;
	}
	room_apply(c, now, VINDEX_NONE, evict);
	return 0;
}

/* Open and load; -EBADMSG means set the file aside. */
static int try_open(cache *c, sovmesh_error *err)
{
	int r = store_open(c->path, EMBED_BUILTIN_DIM, &c->st, err);
	if (r < 0)
		return r;
	vindex_bulk_begin(c->ix);
	r = store_load(c->st, load_row, c, err);
	if (r == 0)
		r = vindex_bulk_end(c->ix);
	if (r == -ENOMEM)
		sovmesh_fail(err, r, "out of memory loading the entries");
	if (r == -EBADMSG && !err->message[0]) /* from load_row */
		sovmesh_fail(err, r, "an entry has a model embedding of more than %d dimensions",
		             VINDEX_MAX_DIM);
	if (r < 0) {
		store_close(c->st);
		c->st = NULL;
		vindex_clear(c->ix);
		return r;
	}
	/* Not fatal: lookups skip expired entries, the next store evicts. */
	sovmesh_error rerr = {0};
	if (make_room(c, now_of(c), &rerr) < 0)
		c->api->log(c->host, SOVMESH_LOG_WARNING,
		            "cannot delete expired or excess answers from %s: %s", c->path,
		            rerr.message);
	return 0;
}

static void disable(cache *c, const char *fmt, ...) SOVMESH_PRINTF(2, 3);
static void disable(cache *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (vasprintf(&c->disabled_why, fmt, ap) < 0)
		c->disabled_why = NULL;
	va_end(ap);
	c->api->log(c->host, SOVMESH_LOG_ERROR, "%s; the cache is disabled (every lookup misses)",
	            c->disabled_why ? c->disabled_why : "cannot open the cache database");
}

static void open_db(cache *c)
{
	sovmesh_error err = {0};
	int r = try_open(c, &err);
	if (r == 0)
		return;
	if (r != -EBADMSG) {
		disable(c, "cannot use the cache database %s: %s", c->path, err.message);
		return;
	}
	char aside[PATH_MAX + 64];
	sovmesh_error merr = {0};
	if (store_move_aside(c->path, now_of(c), aside, sizeof(aside), &merr) < 0) {
		disable(c, "the cache database %s is unusable (%s) and cannot be moved aside: %s",
		        c->path, err.message, merr.message);
		return;
	}
	c->api->log(c->host, SOVMESH_LOG_ERROR,
	            "the cache database %s is unusable (%s); moved it to %s and started an "
	            "empty one",
	            c->path, err.message, aside);
	err = (sovmesh_error){0};
	if (try_open(c, &err) < 0)
		disable(c, "cannot start an empty cache database %s: %s", c->path, err.message);
}

static void cache_destroy(void *instance)
{
	cache *c = instance;
	if (!c)
		return;
	store_close(c->st);
	vindex_free(c->ix);
	free(c->disabled_why);
	free(c);
}

static int cache_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                        sovmesh_error *err)
{
	if (!api->alloc || !api->free || !api->log || !api->wall_time || !api->setting_int)
		return sovmesh_fail(err, -EINVAL,
		                    "the host lacks memory, log, clock or settings slots");
	const char *dir = SOVMESH_HAS_SLOT(api, sovmesh_host_api, plugin_state_dir)
	                      ? api->plugin_state_dir(host)
	                      : NULL;
	if (!dir || !*dir)
		return sovmesh_fail(err, -ENOTSUP,
		                    "the host gives no state directory (plugin_state_dir); "
		                    "cache-semantic keeps its answers in "
		                    "<state_dir>/cache-semantic/" CACHE_DB_NAME);
	cache *c = calloc(1, sizeof(*c));
	if (!c)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	c->host = host;
	c->api = api;
	c->ttl = api->setting_int(host, "ttl_secs");
	int64_t max = api->setting_int(host, "max_entries");
	c->max_entries = max < 1 ? 1 : (size_t)max;
	if (c->ttl < 0)
		c->ttl = 0;
	if ((size_t)snprintf(c->path, sizeof(c->path), "%s/%s", dir, CACHE_DB_NAME) >=
	    sizeof(c->path)) {
		free(c);
		return sovmesh_fail(err, -ENAMETOOLONG, "the state directory path %s is too long",
		                    dir);
	}
	c->ix = vindex_new(EMBED_BUILTIN_DIM, 0);
	if (!c->ix) {
		free(c);
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	}
	open_db(c);
	if (c->st)
		api->log(host, SOVMESH_LOG_INFO, "%zu answers in %s (ttl %llds, at most %zu)",
		         vindex_count(c->ix), c->path, (long long)c->ttl, c->max_entries);
	*instance = c;
	return 0;
}

/* ---- ops ------------------------------------------------------------- */

/* A backend vector: 1..VINDEX_MAX_DIM finite floats. */
static int check_vector(const float *v, size_t dim, const char *what, sovmesh_error *err)
{
	if (dim == 0 || dim > VINDEX_MAX_DIM)
		return sovmesh_fail(err, -EINVAL, "%s has %zu dimensions (1..%d allowed)", what,
		                    dim, VINDEX_MAX_DIM);
	for (size_t i = 0; i < dim; i++)
		if (!isfinite(v[i]))
			return sovmesh_fail(err, -EINVAL, "%s has a non-finite value at %zu", what,
			                    i);
	return 0;
}

/* Drop expired entries before a lookup.  A failure to delete them from
 * the database is logged once and retried later; they leave memory
 * anyway (they are misses), and go from the file at the next sweep. */
static void expire(cache *c, int64_t now)
{
	uint32_t h = vindex_age_first(c->ix);
	if (h == VINDEX_NONE || !is_expired(c, vindex_created(c->ix, h), now))
		return;
	sovmesh_error err = {0};
	if (make_room(c, now, &err) == 0)
		return;
	if (!c->warned_expire++)
		c->api->log(c->host, SOVMESH_LOG_WARNING,
		            "cannot delete expired answers from %s: %s", c->path, err.message);
	while ((h = vindex_age_first(c->ix)) != VINDEX_NONE &&
	       is_expired(c, vindex_created(c->ix, h), now))
		vindex_remove(c->ix, h);
}

static char *host_strdup(cache *c, const char *s, size_t n)
{
	char *d = c->api->alloc(c->host, n + 1);
	if (d) {
		memcpy(d, s, n);
		d[n] = '\0';
	}
	return d;
}

static int cache_lookup(void *instance, const sovmesh_cache_query *q, sovmesh_cache_hit *hit,
                        sovmesh_error *err)
{
	cache *c = instance;
	if (!c || !q || !hit || q->size < sizeof(*q) || !q->model || !q->query)
		return sovmesh_fail(err, -EINVAL, "lookup without a query, model or question");
	if (q->embedding) {
		int r = check_vector(q->embedding, q->dim, "the query embedding", err);
		if (r < 0)
			return r;
	}
	if (!c->st) {
		c->misses++;
		return 0;
	}
	double min_sim = q->min_similarity > 0 ? q->min_similarity : CACHE_DEFAULT_MIN_SIMILARITY;
	int64_t now = now_of(c);
	expire(c, now);

	vindex_hit vh;
	int r;
	if (q->embedding) {
		r = vindex_search(c->ix, q->model, q->embedding, q->dim, (float)min_sim, &vh);
	} else {
		embed_builtin(q->query, strlen(q->query), c->builtin);
		r = vindex_search(c->ix, q->model, c->builtin, 0, (float)min_sim, &vh);
	}
	if (r < 0)
		return sovmesh_fail(err, r, "out of memory");
	if (r == 0) {
		c->misses++;
		return 0;
	}

	const char *qt, *at;
	size_t ql, al;
	r = store_fetch(c->st, vh.id, &qt, &ql, &at, &al, err);
	if (r < 0)
		return r;
	if (r == 0) { /* gone from the file behind our back */
		vindex_remove(c->ix, vh.handle);
		c->misses++;
		return 0;
	}
	char *answer = COVERS(hit, sovmesh_cache_hit, answer) ? host_strdup(c, at, al) : NULL;
	char *query = COVERS(hit, sovmesh_cache_hit, query) ? host_strdup(c, qt, ql) : NULL;
	store_fetch_end(c->st);
	if ((COVERS(hit, sovmesh_cache_hit, answer) && !answer) ||
	    (COVERS(hit, sovmesh_cache_hit, query) && !query)) {
		c->api->free(c->host, answer);
		c->api->free(c->host, query);
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	}
	if (COVERS(hit, sovmesh_cache_hit, answer))
		hit->answer = answer;
	if (COVERS(hit, sovmesh_cache_hit, query))
		hit->query = query;
	if (COVERS(hit, sovmesh_cache_hit, similarity))
		hit->similarity = vh.similarity;
	if (COVERS(hit, sovmesh_cache_hit, created_unix))
		hit->created_unix = vindex_created(c->ix, vh.handle);

	vindex_touch(c->ix, vh.handle, now);
	sovmesh_error terr = {0};
	if (store_touch(c->st, vh.id, now, &terr) < 0 && !c->warned_touch++)
		c->api->log(c->host, SOVMESH_LOG_WARNING,
		            "cannot record a hit in %s (the order of eviction may be off after a "
		            "restart): %s",
		            c->path, terr.message);
	c->hits++;
	c->api->log(c->host, SOVMESH_LOG_DEBUG, "hit (%.3f) for '%s': '%s'", vh.similarity,
	            q->query, query ? query : "");
	return 1;
}

static int cache_store(void *instance, const sovmesh_cache_entry *e, sovmesh_error *err)
{
	cache *c = instance;
	if (!c || !e || e->size < sizeof(*e) || !e->model || !e->query || !e->answer)
		return sovmesh_fail(err, -EINVAL, "store without a model, question or answer");
	if (e->embedding) {
		int r = check_vector(e->embedding, e->dim, "the entry's embedding", err);
		if (r < 0)
			return r;
	}
	if (!c->st)
		return 0;

	int64_t now = now_of(c);
	float *memb = NULL;
	if (e->embedding) {
		memb = malloc(e->dim * sizeof(float));
		if (!memb)
			return sovmesh_fail(err, -ENOMEM, "out of memory");
		memcpy(memb, e->embedding, e->dim * sizeof(float));
		vindex_normalize(memb, e->dim);
	}
	embed_builtin(e->query, strlen(e->query), c->builtin);
	vindex_normalize(c->builtin, EMBED_BUILTIN_DIM);
	store_row row = {
	    .model = e->model,
	    .query = e->query,
	    .answer = e->answer,
	    .created = e->created_unix > 0 ? e->created_unix : now,
	    .last_used = now,
	    .builtin = c->builtin,
	    .memb = memb,
	    .mdim = memb ? e->dim : 0,
	};

	/* Everything that could fail after the commit is done before it. */
	int r = vindex_reserve(c->ix, e->model, row.mdim);
	if (r < 0) {
		free(memb);
		return sovmesh_fail(err, r, "out of memory");
	}
	sovmesh_error derr = {0};
	int64_t id = 0;
	uint32_t old = VINDEX_NONE;
	size_t evict = 0;
	r = store_begin(c->st, &derr);
	if (r == 0)
		r = store_upsert(c->st, &row, &id, &derr);
	if (r == 0) {
		/* The same (model, question) again replaces the old answer. */
		old = vindex_find(c->ix, id);
		r = room_delete(c, now, 1, old, &evict, &derr);
	}
	if (r == 0)
		r = store_commit(c->st, &derr);
	if (r < 0) {
		store_rollback(c->st);
		free(memb);
		return sovmesh_fail(err, -EIO, "cannot store the answer in %s: %s", c->path,
		                    derr.message);
	}
	room_apply(c, now, old, evict);
	if (old != VINDEX_NONE)
		vindex_remove(c->ix, old);
	vindex_item it = {
	    .id = id,
	    .model = e->model,
	    .created = row.created,
	    .last_used = now,
	    .builtin = c->builtin,
	    .mvec = memb,
	    .mdim = row.mdim,
	};
	r = vindex_add(c->ix, &it, NULL);
	free(memb);
	if (r < 0) /* cannot happen after vindex_reserve; the row loads next start */
		return sovmesh_fail(err, r, "cannot index the stored answer");
	c->api->log(c->host, SOVMESH_LOG_DEBUG, "stored an answer for '%s'", e->query);
	return 0;
}

static int cache_stats(void *instance, sovmesh_cache_stats *out, sovmesh_error *err)
{
	cache *c = instance;
	if (!c || !out)
		return sovmesh_fail(err, -EINVAL, "stats without an output");
	if (!c->st)
		c->api->log(c->host, SOVMESH_LOG_WARNING, "the cache is disabled: %s",
		            c->disabled_why ? c->disabled_why : "cannot open the cache database");
	if (COVERS(out, sovmesh_cache_stats, entries))
		out->entries = vindex_count(c->ix);
	if (COVERS(out, sovmesh_cache_stats, hits))
		out->hits = c->hits;
	if (COVERS(out, sovmesh_cache_stats, misses))
		out->misses = c->misses;
	if (COVERS(out, sovmesh_cache_stats, evictions))
		out->evictions = c->evictions;
	if (COVERS(out, sovmesh_cache_stats, bytes))
		out->bytes = c->st ? store_bytes(c->st) : 0;
	return 0;
}

static int cache_clear(void *instance, sovmesh_error *err)
{
	cache *c = instance;
	if (!c)
		return sovmesh_fail(err, -EINVAL, "no instance");
	if (!c->st)
		return 0;
	sovmesh_error derr = {0};
	if (store_clear(c->st, &derr) < 0)
		return sovmesh_fail(err, -EIO, "cannot clear %s: %s", c->path, derr.message);
	vindex_clear(c->ix);
	c->api->log(c->host, SOVMESH_LOG_INFO, "cleared every answer");
	return 0;
}

static const sovmesh_cache_ops cache_ops = {
    .size = sizeof(sovmesh_cache_ops),
    .lookup = cache_lookup,
    .store = cache_store,
    .stats = cache_stats,
    .clear = cache_clear,
};

static const sovmesh_plugin_descriptor cache_descriptor = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_CACHE,
    .name = "semantic",
    .version = "1.0.0",
    .license = "MIT",
    .description = "answers to earlier questions by cosine similarity (default threshold 0.80), "
                   "in SQLite",
    .settings = cache_settings,
    .create = cache_create,
    .destroy = cache_destroy,
    .ops = &cache_ops,
};

SOVMESH_PLUGIN_DEFINE(cache_descriptor)

/*
 * cache-semantic's persistence: one SQLite database, <state_dir>/cache.db.
 *
 * Table `entries` (schema version STORE_SCHEMA_VERSION, in PRAGMA
 * user_version): one row per (model, query) with the answer, created and
 * last_used (Unix seconds), the built-in embedding of the query and,
 * when the backend gave one, the model's embedding.  Vectors are
 * L2-normalised float32 in this machine's byte order (the file never
 * leaves the device).
 */
#ifndef SOVMESH_CACHE_SEMANTIC_STORE_H
#define SOVMESH_CACHE_SEMANTIC_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <sovmesh/plugin.h>

#define STORE_SCHEMA_VERSION 1

typedef struct store store;

typedef struct store_row {
	int64_t id; /* set by store_load; ignored by store_upsert */
	const char *model;
	const char *query;  /* NULL in store_load */
	const char *answer; /* NULL in store_load */
	int64_t created, last_used;
	const float *builtin; /* builtin_dim floats */
	const float *memb;    /* model embedding or NULL */
	size_t mdim;
} store_row;

/*
 * Open (creating if needed) the database at `path` and check it: the
 * header, PRAGMA quick_check and the schema version.  Returns 0, or
 *   -EBADMSG  the file is unusable: corrupt, not a database, written by a
 *             newer schema, or cannot be opened; set it aside (err says why)
 *   -EBUSY    another process holds it locked
 *   -ENOMEM, -EIO
 */
int store_open(const char *path, size_t builtin_dim, store **out, sovmesh_error *err);
void store_close(store *st);

/* Call fn for every row, least recently used first.  Vectors are valid
 * during the call only.  A row whose vectors have the wrong size is
 * corruption: -EBADMSG.  fn's negative return stops the walk and is
 * returned. */
int store_load(store *st, int (*fn)(void *ud, const store_row *row), void *ud, sovmesh_error *err);

int store_begin(store *st, sovmesh_error *err);
int store_commit(store *st, sovmesh_error *err);
void store_rollback(store *st);

/* Insert, or replace the answer and vectors of the same (model, query).
 * *id is the row's id (the old one when replaced). */
int store_upsert(store *st, const store_row *row, int64_t *id, sovmesh_error *err);
int store_delete(store *st, int64_t id, sovmesh_error *err);
int store_touch(store *st, int64_t id, int64_t last_used, sovmesh_error *err);
int store_clear(store *st, sovmesh_error *err);

/* The query and answer of row id: 1 with pointers valid until
 * store_fetch_end, 0 if there is no such row, or -EIO. */
int store_fetch(store *st, int64_t id, const char **query, size_t *query_len, const char **answer,
                size_t *answer_len, sovmesh_error *err);
void store_fetch_end(store *st);

/* Bytes on disk: the database and its write-ahead log. */
uint64_t store_bytes(const store *st);

/*
 * Rename `path` (and its -wal and -shm files) to <path>.corrupt-<now>
 * (with -1, -2, ... if that name is taken), written into aside.
 * 0 or -errno.
 */
int store_move_aside(const char *path, int64_t now, char *aside, size_t aside_len,
                     sovmesh_error *err);

#endif

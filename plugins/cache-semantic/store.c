/* SPDX-License-Identifier: MIT */
/*
 * cache-semantic's SQLite store (see store.h).  All statements are
 * prepared once at open.  Durability: WAL with synchronous=NORMAL.  A
 * commit is in the WAL file, i.e. in the OS page cache, when COMMIT
 * returns, so an application crash or kill -9 loses nothing committed;
 * only a power loss or OS crash may lose the last commits (never
 * corrupting the file) — acceptable for a cache, and it spares the loop
 * thread an fsync per stored answer and per hit.
 */
#include "store.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

/* Wait this long for a lock held by another process (there should be
 * none: the state directory is this daemon's). */
#define BUSY_TIMEOUT_MS 1000

enum { S_UPSERT, S_DELETE, S_TOUCH, S_FETCH, S_CLEAR, S_BEGIN, S_COMMIT, S_ROLLBACK, S_COUNT };

static const char *const sql_text[S_COUNT] = {
    [S_UPSERT] = "INSERT INTO entries (model, query, answer, created, last_used, builtin, "
                 "model_dim, model_emb) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) "
                 "ON CONFLICT (model, query) DO UPDATE SET answer = excluded.answer, "
                 "created = excluded.created, last_used = excluded.last_used, "
                 "builtin = excluded.builtin, model_dim = excluded.model_dim, "
                 "model_emb = excluded.model_emb RETURNING id",
    [S_DELETE] = "DELETE FROM entries WHERE id = ?1",
    [S_TOUCH] = "UPDATE entries SET last_used = ?2 WHERE id = ?1",
    [S_FETCH] = "SELECT query, answer FROM entries WHERE id = ?1",
    [S_CLEAR] = "DELETE FROM entries",
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
};

static const char schema_sql[] = "CREATE TABLE IF NOT EXISTS entries ("
                                 " id INTEGER PRIMARY KEY,"
                                 " model TEXT NOT NULL,"
                                 " query TEXT NOT NULL,"
                                 " answer TEXT NOT NULL,"
                                 " created INTEGER NOT NULL,"
                                 " last_used INTEGER NOT NULL,"
                                 " builtin BLOB NOT NULL,"
                                 " model_dim INTEGER NOT NULL DEFAULT 0,"
                                 " model_emb BLOB,"
                                 " UNIQUE (model, query))";

struct store {
	sqlite3 *db;
	char *path;
	size_t builtin_dim;
	sqlite3_stmt *st[S_COUNT];
};

/* An error at open: which ones mean "this file is unusable, set it
 * aside" (as opposed to "try again later" or "out of memory"). */
static int open_code(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_NOMEM:
		return -ENOMEM;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EBUSY;
	case SQLITE_IOERR:
	case SQLITE_FULL:
		return -EIO;
	default: /* CORRUPT, NOTADB, CANTOPEN, FORMAT, READONLY, PERM, ... */
		return -EBADMSG;
	}
}

static int fail_db(store *st, sovmesh_error *err, int code, const char *what)
{
	return sovmesh_fail(err, code, "%s: %s", what, sqlite3_errmsg(st->db));
}

void store_close(store *st)
{
	if (!st)
		return;
	for (int i = 0; i < S_COUNT; i++)
		sqlite3_finalize(st->st[i]);
	/* Closing checkpoints the WAL into the database and removes it. */
	if (st->db)
		sqlite3_close(st->db);
	free(st->path);
	free(st);
}

/* One statement that returns at most one row; its first column as an
 * integer, or as text into buf. */
static int pragma(store *st, const char *sql, int64_t *ival, char *buf, size_t buflen)
{
	sqlite3_stmt *s = NULL;
	int rc = sqlite3_prepare_v2(st->db, sql, -1, &s, NULL);
	if (rc == SQLITE_OK) {
		rc = sqlite3_step(s);
		if (rc == SQLITE_ROW) {
			if (ival)
				*ival = sqlite3_column_int64(s, 0);
			if (buf) {
				const unsigned char *t = sqlite3_column_text(s, 0);
				snprintf(buf, buflen, "%s", t ? (const char *)t : "");
			}
			rc = SQLITE_OK;
		} else if (rc == SQLITE_DONE) {
			rc = SQLITE_OK;
		}
	}
	sqlite3_finalize(s);
	return rc;
}

static int open_checked(store *st, sovmesh_error *err)
{
	int64_t version = 0;
	char check[256] = "";

	int rc =
	    sqlite3_open_v2(st->path, &st->db,
	                    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK)
		return sovmesh_fail(err, open_code(rc), "cannot open it: %s",
		                    st->db ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc));
	sqlite3_busy_timeout(st->db, BUSY_TIMEOUT_MS);

	/* The first read of the file: a non-database fails here. */
	rc = pragma(st, "PRAGMA user_version", &version, NULL, 0);
	if (rc != SQLITE_OK)
		return fail_db(st, err, open_code(rc), "cannot read it");
	if (version > STORE_SCHEMA_VERSION)
		return sovmesh_fail(
		    err, -EBADMSG,
		    "it was written by a newer cache-semantic (schema version %lld; "
		    "this one knows %d)",
		    (long long)version, STORE_SCHEMA_VERSION);
	if (version < 0)
		return sovmesh_fail(err, -EBADMSG, "it has an invalid schema version %lld",
		                    (long long)version);
	rc = pragma(st, "PRAGMA quick_check", NULL, check, sizeof(check));
	if (rc != SQLITE_OK)
		return fail_db(st, err, open_code(rc), "integrity check failed");
	if (strcmp(check, "ok") != 0) {
		for (char *p = check; *p; p++) /* several problems, one log line */
			if (*p == '\n')
				*p = ' ';
		return sovmesh_fail(err, -EBADMSG, "integrity check failed: %s", check);
	}

	char mode[32] = "";
	rc = pragma(st, "PRAGMA journal_mode = WAL", NULL, mode, sizeof(mode));
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(st->db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		return fail_db(st, err, open_code(rc), "cannot set the journal mode");

	if (version == 0) {
		char sql[sizeof(schema_sql) + 64];
		snprintf(sql, sizeof(sql), "BEGIN; %s; PRAGMA user_version = %d; COMMIT",
		         schema_sql, STORE_SCHEMA_VERSION);
		rc = sqlite3_exec(st->db, sql, NULL, NULL, NULL);
		if (rc != SQLITE_OK) {
			int code = open_code(rc);
			fail_db(st, err, code, "cannot create the schema");
			sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
			return code;
		}
	}
	/* A table of another shape (a foreign file) fails to prepare. */
	for (int i = 0; i < S_COUNT; i++) {
		rc = sqlite3_prepare_v3(st->db, sql_text[i], -1, SQLITE_PREPARE_PERSISTENT,
		                        &st->st[i], NULL);
		if (rc != SQLITE_OK)
			return fail_db(st, err, rc == SQLITE_NOMEM ? -ENOMEM : -EBADMSG,
			               "it is not a cache-semantic database");
	}
	return 0;
}

int store_open(const char *path, size_t builtin_dim, store **out, sovmesh_error *err)
{
	*out = NULL;
	store *st = calloc(1, sizeof(*st));
	if (!st || !(st->path = strdup(path))) {
		free(st);
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	}
	st->builtin_dim = builtin_dim;
	int r = open_checked(st, err);
	if (r < 0) {
		store_close(st);
		return r;
	}
	*out = st;
	return 0;
}

/* Blob b as floats into a growing, aligned scratch buffer. */
static const float *blob_floats(const void *b, size_t bytes, float **buf, size_t *cap)
{
	size_t n = bytes / sizeof(float);
	if (n > *cap) {
		float *nb = realloc(*buf, n * sizeof(float));
		if (!nb)
			return NULL;
		*buf = nb;
		*cap = n;
	}
	memcpy(*buf, b, bytes);
	return *buf;
}

int store_load(store *st, int (*fn)(void *ud, const store_row *row), void *ud, sovmesh_error *err)
{
	sqlite3_stmt *s = NULL;
	float *bbuf = NULL, *mbuf = NULL;
	size_t bcap = 0, mcap = 0;
	int r = 0, rc = sqlite3_prepare_v2(st->db,
	                                   "SELECT id, model, created, last_used, builtin, "
	                                   "model_dim, model_emb FROM entries "
	                                   "ORDER BY last_used, id",
	                                   -1, &s, NULL);
	if (rc != SQLITE_OK) {
		r = fail_db(st, err, open_code(rc), "cannot read the entries");
		goto out;
	}
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		store_row row = {
		    .id = sqlite3_column_int64(s, 0),
		    .model = (const char *)sqlite3_column_text(s, 1),
		    .created = sqlite3_column_int64(s, 2),
		    .last_used = sqlite3_column_int64(s, 3),
		};
		const void *b = sqlite3_column_blob(s, 4);
		size_t blen = (size_t)sqlite3_column_bytes(s, 4);
		int64_t mdim = sqlite3_column_int64(s, 5);
		const void *m = sqlite3_column_blob(s, 6);
		size_t mlen = (size_t)sqlite3_column_bytes(s, 6);
		if (!row.model || !b || blen != st->builtin_dim * sizeof(float) || mdim < 0 ||
		    mdim > INT32_MAX || (mdim == 0) != (m == NULL) ||
		    (m && mlen != (size_t)mdim * sizeof(float))) {
			r = sovmesh_fail(err, -EBADMSG, "entry %lld has malformed vectors",
			                 (long long)row.id);
			goto out;
		}
		row.builtin = blob_floats(b, blen, &bbuf, &bcap);
		row.memb = m ? blob_floats(m, mlen, &mbuf, &mcap) : NULL;
		row.mdim = (size_t)mdim;
		if (!row.builtin || (m && !row.memb)) {
			r = sovmesh_fail(err, -ENOMEM, "out of memory");
			goto out;
		}
		r = fn(ud, &row);
		if (r < 0)
			goto out;
	}
	if (rc != SQLITE_DONE)
		r = fail_db(st, err, open_code(rc), "cannot read the entries");
out:
	sqlite3_finalize(s);
	free(bbuf);
	free(mbuf);
	return r;
}

/* Step a statement without result rows (or whose rows are ignored). */
static int run(store *st, int which, sovmesh_error *err, const char *what)
{
	sqlite3_stmt *s = st->st[which];
	int rc;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW)
		;
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	if (rc != SQLITE_DONE)
		return fail_db(st, err, -EIO, what);
	return 0;
}

int store_begin(store *st, sovmesh_error *err)
{
	return run(st, S_BEGIN, err, "cannot begin a transaction");
}

int store_commit(store *st, sovmesh_error *err)
{
	return run(st, S_COMMIT, err, "cannot commit");
}

void store_rollback(store *st)
{
	if (!sqlite3_get_autocommit(st->db))
		run(st, S_ROLLBACK, NULL, "rollback");
}

int store_upsert(store *st, const store_row *row, int64_t *id, sovmesh_error *err)
{
	sqlite3_stmt *s = st->st[S_UPSERT];
	sqlite3_bind_text(s, 1, row->model, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 2, row->query, -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 3, row->answer, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 4, row->created);
	sqlite3_bind_int64(s, 5, row->last_used);
	sqlite3_bind_blob64(s, 6, row->builtin, st->builtin_dim * sizeof(float), SQLITE_STATIC);
	sqlite3_bind_int64(s, 7, row->memb ? (sqlite3_int64)row->mdim : 0);
	if (row->memb)
		sqlite3_bind_blob64(s, 8, row->memb, row->mdim * sizeof(float), SQLITE_STATIC);
	else
		sqlite3_bind_null(s, 8);
	int rc = sqlite3_step(s);
	if (rc == SQLITE_ROW)
		*id = sqlite3_column_int64(s, 0);
	while (rc == SQLITE_ROW)
		rc = sqlite3_step(s);
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	if (rc != SQLITE_DONE)
		return fail_db(st, err, -EIO, "cannot store the entry");
	return 0;
}

int store_delete(store *st, int64_t id, sovmesh_error *err)
{
	sqlite3_bind_int64(st->st[S_DELETE], 1, id);
	return run(st, S_DELETE, err, "cannot delete an entry");
}

int store_touch(store *st, int64_t id, int64_t last_used, sovmesh_error *err)
{
	sqlite3_bind_int64(st->st[S_TOUCH], 1, id);
	sqlite3_bind_int64(st->st[S_TOUCH], 2, last_used);
	return run(st, S_TOUCH, err, "cannot update an entry");
}

int store_clear(store *st, sovmesh_error *err)
{
	return run(st, S_CLEAR, err, "cannot delete the entries");
}

int store_fetch(store *st, int64_t id, const char **query, size_t *query_len, const char **answer,
                size_t *answer_len, sovmesh_error *err)
{
	sqlite3_stmt *s = st->st[S_FETCH];
	sqlite3_bind_int64(s, 1, id);
	int rc = sqlite3_step(s);
	if (rc == SQLITE_DONE) {
		store_fetch_end(st);
		return 0;
	}
	if (rc != SQLITE_ROW) {
		fail_db(st, err, -EIO, "cannot read an entry");
		store_fetch_end(st);
		return -EIO;
	}
	*query = (const char *)sqlite3_column_text(s, 0);
	*query_len = (size_t)sqlite3_column_bytes(s, 0);
	*answer = (const char *)sqlite3_column_text(s, 1);
	*answer_len = (size_t)sqlite3_column_bytes(s, 1);
	if (!*query || !*answer) {
		store_fetch_end(st);
		return sovmesh_fail(err, -EIO, "cannot read an entry: out of memory");
	}
	return 1;
}

void store_fetch_end(store *st)
{
	sqlite3_reset(st->st[S_FETCH]);
	sqlite3_clear_bindings(st->st[S_FETCH]);
}

static uint64_t file_size(const char *path, const char *suffix)
{
	char p[PATH_MAX];
	struct stat sb;
	if ((size_t)snprintf(p, sizeof(p), "%s%s", path, suffix) >= sizeof(p) || stat(p, &sb) < 0)
		return 0;
	return (uint64_t)sb.st_size;
}

uint64_t store_bytes(const store *st)
{
	return file_size(st->path, "") + file_size(st->path, "-wal");
}

int store_move_aside(const char *path, int64_t now, char *aside, size_t aside_len,
                     sovmesh_error *err)
{
	int found = 0;
	for (int k = 0; k < 100 && !found; k++) {
		int n =
		    k ? snprintf(aside, aside_len, "%s.corrupt-%lld-%d", path, (long long)now, k)
		      : snprintf(aside, aside_len, "%s.corrupt-%lld", path, (long long)now);
		if (n < 0 || (size_t)n + 5 >= aside_len)
			return sovmesh_fail(err, -ENAMETOOLONG, "the path %s is too long", path);
		found = access(aside, F_OK) < 0 && errno == ENOENT;
	}
	if (!found)
		return sovmesh_fail(err, -EEXIST, "too many %s.corrupt-%lld* files", path,
		                    (long long)now);
	if (rename(path, aside) < 0) {
		int e = errno;
		return sovmesh_fail(err, -e, "cannot rename %s to %s: %s", path, aside,
		                    strerror(e));
	}
	/* A stale WAL must not be replayed into the new database: move it
	 * along, or failing that, remove it. */
	static const char *const sfx[] = {"-wal", "-shm"};
	for (size_t i = 0; i < 2; i++) {
		char from[PATH_MAX], to[PATH_MAX];
		if ((size_t)snprintf(from, sizeof(from), "%s%s", path, sfx[i]) >= sizeof(from) ||
		    (size_t)snprintf(to, sizeof(to), "%s%s", aside, sfx[i]) >= sizeof(to))
			return sovmesh_fail(err, -ENAMETOOLONG, "the path %s is too long", path);
		if (rename(from, to) < 0 && errno != ENOENT && unlink(from) < 0 &&
		    errno != ENOENT) {
			int e = errno;
			return sovmesh_fail(err, -e, "cannot remove %s: %s", from, strerror(e));
		}
	}
	return 0;
}

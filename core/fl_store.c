/*
 * The federated-learning store (see fl_store.h): samples, rounds, the
 * privacy-budget ledger, the inbox of received deltas and per-peer sync
 * times in one SQLite database.
 *
 * Durability: WAL with synchronous=FULL, so COMMIT returns only after the
 * WAL is fsync'd: a charge that fl_store_charge() reported survives kill
 * -9 and power loss.  A file that is not ours, newer, or corrupt is
 * refused and left exactly as it was: starting over would refill the
 * privacy budget.
 *
 * Every statement is prepared once at open; user text is only ever bound.
 */
#include "fl_store.h"
#include "privacy_accountant.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>
#include <sovmesh/trainer.h>

/* "SMFL": marks the file as ours in the SQLite header. */
#define FL_APPLICATION_ID 0x534d464c
/* 1: first release; 2: charges keep the noise family and multiplier (for
 * the RDP accountant); version 1 files are migrated in place. */
#define FL_SCHEMA_VERSION 2
#define BUSY_TIMEOUT_MS   5000
/* Float sums of ε may be off by an ulp or so (ten charges of 0.1 must fit
 * a budget of 1); this much slack never lets a whole release through. */
#define BUDGET_SLACK 1e-9
#define FP_HEX_LEN   64
#define NAME_MAX_LEN 256  /* sender names, mechanisms */
#define LINE_MAX_LEN 1024 /* round outcomes, period reasons */

enum {
	S_BEGIN,
	S_COMMIT,
	S_ROLLBACK,
	S_SAMPLE_ADD,
	S_PENDING_COUNT,
	S_SAMPLE_COUNT,
	S_ROUND_ADD,
	S_ROUND_TAKE,
	S_ROUND_SET_COUNT,
	S_ROUND_SAMPLES,
	S_ROUND_STATE,
	S_ROUND_FINISH,
	S_ROUND_RELEASE,
	S_ROUNDS_DONE,
	S_LAST_ROUND,
	S_RECOVER_SAMPLES,
	S_RECOVER_ROUNDS,
	S_PERIOD_CURRENT,
	S_PERIOD_ADD,
	S_PERIOD_COUNT,
	S_PERIOD_LOWER,
	S_PERIOD_RELEASES,
	S_PERIODS,
	S_CHARGE_ADD,
	S_HISTORY,
	S_INBOX_ADD,
	S_INBOX_PENDING,
	S_INBOX_DONE,
	S_SYNC_SENT,
	S_SYNC_RECEIVED,
	S_SYNC_ALL,
	S_COUNT
};

static const char *const sql_text[S_COUNT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_SAMPLE_ADD] = "INSERT INTO samples (created, model, prompt, response, correction, rating) "
                     "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [S_PENDING_COUNT] = "SELECT count(*) FROM samples WHERE round_id IS NULL",
    [S_SAMPLE_COUNT] = "SELECT count(*) FROM samples",
    [S_ROUND_ADD] = "INSERT INTO rounds (started, state) VALUES (?1, 'running')",
    [S_ROUND_TAKE] = "UPDATE samples SET round_id = ?1 WHERE id IN (SELECT id FROM samples "
                     "WHERE round_id IS NULL ORDER BY id LIMIT ?2)",
    [S_ROUND_SET_COUNT] = "UPDATE rounds SET samples = ?2 WHERE id = ?1",
    [S_ROUND_SAMPLES] = "SELECT id, created, model, prompt, response, correction, rating "
                        "FROM samples WHERE round_id = ?1 ORDER BY id",
    [S_ROUND_STATE] = "SELECT state FROM rounds WHERE id = ?1",
    [S_ROUND_FINISH] = "UPDATE rounds SET state = ?2, finished = ?3, outcome = ?4, "
                       "peers_sent = ?5 WHERE id = ?1",
    [S_ROUND_RELEASE] = "UPDATE samples SET round_id = NULL WHERE round_id = ?1",
    [S_ROUNDS_DONE] = "SELECT count(*) FROM rounds WHERE state = 'done'",
    [S_LAST_ROUND] = "SELECT r.id, r.started, r.finished, r.state, r.samples, r.outcome, "
                     "r.peers_sent, (SELECT COALESCE(SUM(c.epsilon), 0.0) FROM charges c "
                     "WHERE c.round_id = r.id) FROM rounds r ORDER BY r.id DESC LIMIT 1",
    [S_RECOVER_SAMPLES] = "UPDATE samples SET round_id = NULL WHERE round_id IN "
                          "(SELECT id FROM rounds WHERE state = 'running')",
    [S_RECOVER_ROUNDS] = "UPDATE rounds SET state = 'interrupted', outcome = COALESCE(outcome, "
                         "'interrupted: the daemon stopped during the round') "
                         "WHERE state = 'running'",
    [S_PERIOD_CURRENT] = "SELECT p.id, p.started, p.total, COALESCE(SUM(c.epsilon), 0.0), "
                         "COALESCE(SUM(c.delta), 0.0), count(c.id) FROM periods p "
                         "LEFT JOIN charges c ON c.period_id = p.id "
                         "WHERE p.id = (SELECT max(id) FROM periods) GROUP BY p.id",
    [S_PERIOD_ADD] = "INSERT INTO periods (started, total, reason) VALUES (?1, ?2, ?3)",
    [S_PERIOD_COUNT] = "SELECT count(*) FROM periods",
    /* A lowered total is written into the period: raising the key later
     * cannot bring the old, higher total back (fl_store.h). */
    [S_PERIOD_RELEASES] = "SELECT family, noise_multiplier, epsilon, delta FROM charges "
                          "WHERE period_id = ?1 ORDER BY id",
    [S_PERIOD_LOWER] = "UPDATE periods SET total = ?1 WHERE id = (SELECT max(id) FROM periods) "
                       "AND total > ?1",
    [S_PERIODS] = "SELECT p.id, p.started, p.total, (SELECT COALESCE(SUM(c.epsilon), 0.0) "
                  "FROM charges c WHERE c.period_id = p.id), p.reason FROM periods p "
                  "ORDER BY p.id DESC",
    [S_CHARGE_ADD] = "INSERT INTO charges (period_id, time, round_id, epsilon, delta, "
                     "mechanism, peers, family, noise_multiplier) "
                     "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    [S_HISTORY] = "SELECT time, round_id, epsilon, delta, mechanism, peers, period_id, "
                  "family, noise_multiplier FROM charges ORDER BY id DESC LIMIT ?1",
    [S_INBOX_ADD] = "INSERT INTO inbox (sender_fp, sender_name, path, received, samples, "
                    "sender_round) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [S_INBOX_PENDING] = "SELECT id, sender_fp, sender_name, path, received, samples, "
                        "sender_round FROM inbox WHERE done = 0 ORDER BY id",
    [S_INBOX_DONE] = "UPDATE inbox SET done = 1 WHERE id = ?1",
    [S_SYNC_SENT] = "INSERT INTO peer_sync (fingerprint, last_sent) VALUES (?1, ?2) "
                    "ON CONFLICT (fingerprint) DO UPDATE SET last_sent = excluded.last_sent",
    [S_SYNC_RECEIVED] = "INSERT INTO peer_sync (fingerprint, last_received) VALUES (?1, ?2) "
                        "ON CONFLICT (fingerprint) DO UPDATE SET "
                        "last_received = excluded.last_received",
    [S_SYNC_ALL] = "SELECT fingerprint, last_sent, last_received FROM peer_sync "
                   "ORDER BY fingerprint",
};

/* Schema version 1.  IF NOT EXISTS: two processes may race to create it. */
static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS periods ("
    " id INTEGER PRIMARY KEY,"
    " started INTEGER NOT NULL,"
    " total REAL NOT NULL CHECK (total > 0),"
    " reason TEXT);"
    "CREATE TABLE IF NOT EXISTS rounds ("
    " id INTEGER PRIMARY KEY,"
    " started INTEGER NOT NULL,"
    " finished INTEGER,"
    " state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed', 'interrupted')),"
    " samples INTEGER NOT NULL DEFAULT 0,"
    " outcome TEXT,"
    " peers_sent INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX IF NOT EXISTS rounds_state ON rounds (state);"
    "CREATE TABLE IF NOT EXISTS samples ("
    " id INTEGER PRIMARY KEY,"
    " created INTEGER NOT NULL,"
    " model TEXT,"
    " prompt TEXT NOT NULL,"
    " response TEXT,"
    " correction TEXT,"
    " rating INTEGER NOT NULL CHECK (rating IN (-1, 0, 1)),"
    " round_id INTEGER REFERENCES rounds (id));"
    "CREATE INDEX IF NOT EXISTS samples_round ON samples (round_id, id);"
    "CREATE TABLE IF NOT EXISTS charges ("
    " id INTEGER PRIMARY KEY,"
    " period_id INTEGER NOT NULL REFERENCES periods (id),"
    " time INTEGER NOT NULL,"
    " round_id INTEGER REFERENCES rounds (id),"
    " epsilon REAL NOT NULL CHECK (epsilon > 0),"
    " delta REAL NOT NULL CHECK (delta >= 0),"
    " mechanism TEXT NOT NULL,"
    " peers TEXT NOT NULL,"
    " family INTEGER NOT NULL DEFAULT 0,"
    " noise_multiplier REAL NOT NULL DEFAULT 0);"
    "CREATE INDEX IF NOT EXISTS charges_period ON charges (period_id);"
    "CREATE INDEX IF NOT EXISTS charges_round ON charges (round_id);"
    "CREATE TABLE IF NOT EXISTS inbox ("
    " id INTEGER PRIMARY KEY,"
    " sender_fp TEXT NOT NULL,"
    " sender_name TEXT NOT NULL,"
    " path TEXT NOT NULL,"
    " received INTEGER NOT NULL,"
    " samples INTEGER NOT NULL,"
    " sender_round INTEGER NOT NULL,"
    " done INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (done, id);"
    /* A replayed delta must not weigh twice in one aggregation. */
    "CREATE UNIQUE INDEX IF NOT EXISTS inbox_once ON inbox (sender_fp, sender_round)"
    " WHERE done = 0;"
    "CREATE TABLE IF NOT EXISTS peer_sync ("
    " fingerprint TEXT PRIMARY KEY,"
    " last_sent INTEGER,"
    " last_received INTEGER);";

struct fl_store {
	sqlite3 *db;
	char *path;
	int had_wal; /* a -wal file was there before we opened it */
	int64_t version; /* the file's schema version when opened (0: new) */
	accountant_kind acct;
	double target_delta;
	sqlite3_stmt *st[S_COUNT];
};

/* ---- helpers ------------------------------------------------------------ */

/* Every SQLite failure: -EIO, naming the file and what was being done. */
static int fail_db(fl_store *s, sovmesh_error *err, const char *what)
{
	return sovmesh_fail(err, -EIO, "%s: %s: %s", s->path, what, sqlite3_errmsg(s->db));
}

static void done_stmt(sqlite3_stmt *st)
{
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
}

/* Step a statement to its end (rows ignored); SQLITE_DONE on success. */
static int step_all(sqlite3_stmt *st)
{
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		;
	return rc;
}

static int run(fl_store *s, int which, sovmesh_error *err, const char *what)
{
	int rc = step_all(s->st[which]);
	done_stmt(s->st[which]);
	return rc == SQLITE_DONE ? 0 : fail_db(s, err, what);
}

/* A statement whose first row's first column is an integer (0 without
 * rows); -EIO on failure. */
static int query_int(fl_store *s, int which, int64_t *out, sovmesh_error *err, const char *what)
{
	sqlite3_stmt *st = s->st[which];
	int rc = sqlite3_step(st);
	*out = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	if (rc == SQLITE_ROW)
		rc = step_all(st);
	done_stmt(st);
	return rc == SQLITE_DONE ? 0 : fail_db(s, err, what);
}

/* Ratchet the current period's total down to `configured_total`. */
static int lower_total(fl_store *s, double configured_total, sovmesh_error *err)
{
	sqlite3_bind_double(s->st[S_PERIOD_LOWER], 1, configured_total);
	return run(s, S_PERIOD_LOWER, err, "cannot record the lowered privacy budget");
}

static int begin(fl_store *s, sovmesh_error *err)
{
	return run(s, S_BEGIN, err, "cannot begin a transaction");
}

static int commit(fl_store *s, sovmesh_error *err)
{
	return run(s, S_COMMIT, err, "cannot commit");
}

static void rollback(fl_store *s)
{
	if (!sqlite3_get_autocommit(s->db))
		run(s, S_ROLLBACK, NULL, "rollback");
}

/* Length of the well-formed UTF-8 sequence at p (n bytes left), or 0:
 * no overlongs, surrogates or code points past U+10FFFF. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
	unsigned c = p[0];
	size_t len;
	uint32_t cp, min;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2, cp = c & 0x1f, min = 0x80;
	} else if ((c & 0xf0) == 0xe0) {
		len = 3, cp = c & 0x0f, min = 0x800;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4, cp = c & 0x07, min = 0x10000;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (size_t k = 1; k < len; k++) {
		if ((p[k] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[k] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

static int utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	for (size_t i = 0, k; i < n; i += k)
		if (!(k = utf8_seq(p + i, n - i)))
			return 0;
	return 1;
}

/* A one-line copy for display: bad bytes and control characters become
 * '?', cut at `max` bytes on a character boundary.  NULL stays NULL. */
static char *display_line(const char *in, size_t max)
{
	if (!in)
		return NULL;
	size_t n = strlen(in), o = 0;
	char *out = malloc((n < max ? n : max) + 1);
	if (!out)
		return NULL;
	const unsigned char *p = (const unsigned char *)in;
	for (size_t i = 0; i < n;) {
		size_t k = utf8_seq(p + i, n - i);
		size_t w = k ? k : 1;
		if (o + w > max)
			break;
		if (!k || (k == 1 && (p[i] < 0x20 || p[i] == 0x7f)))
			out[o++] = '?';
		else
			memcpy(out + o, p + i, k), o += k;
		i += w;
	}
	out[o] = '\0';
	return out;
}

/* Optional text field: NULL/empty → NULL, else check length and UTF-8. */
static int check_text(const char *what, const char *field, const char *v, size_t max,
                      sovmesh_error *err)
{
	if (!v)
		return 0;
	size_t n = strnlen(v, max + 1);
	if (n > max)
		return sovmesh_fail(err, -EINVAL, "%s: '%s' is longer than %zu bytes", what, field,
		                    max);
	if (!utf8_valid(v, n))
		return sovmesh_fail(err, -EINVAL, "%s: '%s' is not valid UTF-8", what, field);
	return 0;
}

/* 64 hex digits, either case, to lowercase in out. */
static int fp_normalize(const char *fp, char out[FP_HEX_LEN + 1], sovmesh_error *err)
{
	if (!fp || strnlen(fp, FP_HEX_LEN + 1) != FP_HEX_LEN)
		return sovmesh_fail(err, -EINVAL, "a fingerprint must be %d hex digits",
		                    FP_HEX_LEN);
	for (size_t i = 0; i < FP_HEX_LEN; i++) {
		if (!isxdigit((unsigned char)fp[i]))
			return sovmesh_fail(err, -EINVAL, "a fingerprint must be %d hex digits",
			                    FP_HEX_LEN);
		out[i] = (char)tolower((unsigned char)fp[i]);
	}
	out[FP_HEX_LEN] = '\0';
	return 0;
}

static int bad_total(double t)
{
	return !isfinite(t) || t <= 0;
}

static char *col_strdup(sqlite3_stmt *st, int col, int *oom)
{
	const unsigned char *t = sqlite3_column_text(st, col);
	if (!t) {
		if (sqlite3_column_type(st, col) != SQLITE_NULL)
			*oom = 1;
		return NULL;
	}
	char *d = strdup((const char *)t);
	if (!d)
		*oom = 1;
	return d;
}

/* ---- open / close ------------------------------------------------------- */

static void store_free(fl_store *s, int refused)
{
	if (!s)
		return;
	for (int i = 0; i < S_COUNT; i++)
		sqlite3_finalize(s->st[i]);
	if (s->db) {
		/* A refused file is left as it was: no checkpoint of a WAL
		 * that was there before we came.  (A WAL of our own making
		 * is empty; the normal close removes it again.) */
		if (refused && s->had_wal)
			sqlite3_db_config(s->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
		sqlite3_close(s->db);
	}
	free(s->path);
	free(s);
}

void fl_store_close(fl_store *s)
{
	/* Closing checkpoints the WAL into the database and removes it. */
	store_free(s, 0);
}

/* A fixed statement's single integer or text result (pragmas). */
static int pragma(fl_store *s, const char *sql, int64_t *ival, char *buf, size_t buflen)
{
	sqlite3_stmt *st = NULL;
	int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
	if (rc == SQLITE_OK) {
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW) {
			if (ival)
				*ival = sqlite3_column_int64(st, 0);
			if (buf) {
				const unsigned char *t = sqlite3_column_text(st, 0);
				snprintf(buf, buflen, "%s", t ? (const char *)t : "");
			}
			rc = SQLITE_OK;
		} else if (rc == SQLITE_DONE) {
			rc = SQLITE_OK;
		}
	}
	sqlite3_finalize(st);
	return rc;
}

/* Is the file ours and readable?  Only reads: a refused file is not
 * touched.  *fresh: an empty database to initialise. */
static int check_file(fl_store *s, int *fresh, sovmesh_error *err)
{
	int64_t app_id = 0, version = 0, objects = 0;
	char check[256] = "";

	/* The first read of the file: a non-database fails here. */
	if (pragma(s, "PRAGMA application_id", &app_id, NULL, 0) != SQLITE_OK ||
	    pragma(s, "PRAGMA user_version", &version, NULL, 0) != SQLITE_OK ||
	    pragma(s, "SELECT count(*) FROM sqlite_master", &objects, NULL, 0) != SQLITE_OK)
		return fail_db(s, err, "cannot read it");
	*fresh = app_id == 0 && version == 0 && objects == 0;
	s->version = version;
	if (*fresh)
		return 0;
	if (app_id != FL_APPLICATION_ID)
		return sovmesh_fail(err, -EINVAL,
		                    "%s: not a sovmesh federated-learning database (application_id "
		                    "%lld); refusing to use it",
		                    s->path, (long long)app_id);
	if (version > FL_SCHEMA_VERSION)
		return sovmesh_fail(err, -EINVAL,
		                    "%s: written by a newer sovmesh (schema version %lld; this one "
		                    "knows %d); refusing to use it",
		                    s->path, (long long)version, FL_SCHEMA_VERSION);
	if (version < 1)
		return sovmesh_fail(err, -EINVAL, "%s: invalid schema version %lld", s->path,
		                    (long long)version);
	if (pragma(s, "PRAGMA quick_check", NULL, check, sizeof(check)) != SQLITE_OK)
		return fail_db(s, err, "integrity check failed");
	if (strcmp(check, "ok") != 0) {
		for (char *p = check; *p; p++) /* several problems, one line */
			if (*p == '\n')
				*p = ' ';
		return sovmesh_fail(err, -EIO,
		                    "%s: integrity check failed: %s (the file is left as it is)",
		                    s->path, check);
	}
	return 0;
}

/* The database is private (prompts, the ledger): 0600, with its WAL. */
static int make_private(fl_store *s, sovmesh_error *err)
{
	static const char *const sfx[] = {"", "-wal", "-shm"};
	for (size_t i = 0; i < 3; i++) {
		char p[PATH_MAX];
		struct stat sb;
		if ((size_t)snprintf(p, sizeof(p), "%s%s", s->path, sfx[i]) >= sizeof(p))
			return sovmesh_fail(err, -ENAMETOOLONG, "%s: path too long", s->path);
		if (stat(p, &sb) < 0) {
			if (errno == ENOENT && i > 0)
				continue;
			int e = errno;
			return sovmesh_fail(err, -e, "%s: %s", p, strerror(e));
		}
		if ((sb.st_mode & 07777) != 0600 && chmod(p, 0600) < 0) {
			int e = errno;
			return sovmesh_fail(err, -e, "%s: cannot make it private: %s", p,
			                    strerror(e));
		}
	}
	return 0;
}

static int open_checked(fl_store *s, double configured_total, sovmesh_error *err)
{
	int fresh = 0, r;

	/* Create it 0600 ourselves (SQLite would use 0644 & ~umask).  Only
	 * when missing: closing an fd of a file this process has open in
	 * SQLite would drop SQLite's POSIX locks on it. */
	int fd = open(s->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd >= 0) {
		close(fd);
	} else if (errno != EEXIST) {
		int e = errno;
		return sovmesh_fail(err, -e, "%s: cannot create it: %s", s->path, strerror(e));
	} else {
		struct stat sb;
		if (stat(s->path, &sb) < 0) {
			int e = errno;
			return sovmesh_fail(err, -e, "%s: %s", s->path, strerror(e));
		}
		if (!S_ISREG(sb.st_mode))
			return sovmesh_fail(err, -EINVAL, "%s: not a regular file", s->path);
	}

	char wal[PATH_MAX];
	if ((size_t)snprintf(wal, sizeof(wal), "%s-wal", s->path) >= sizeof(wal))
		return sovmesh_fail(err, -ENAMETOOLONG, "%s: path too long", s->path);
	s->had_wal = access(wal, F_OK) == 0;

	int rc =
	    sqlite3_open_v2(s->path, &s->db,
	                    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK)
		return sovmesh_fail(err, -EIO, "%s: cannot open it: %s", s->path,
		                    s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
	sqlite3_extended_result_codes(s->db, 1);
	sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);

	r = check_file(s, &fresh, err);
	if (r < 0)
		return r;
	r = make_private(s, err);
	if (r < 0)
		return r;

	/* WAL + FULL: each COMMIT fsyncs the WAL before returning.  Should a
	 * file system refuse WAL, the rollback journal with FULL is just as
	 * durable, so the mode SQLite settled on is accepted. */
	char mode[32] = "";
	if (pragma(s, "PRAGMA journal_mode = WAL", NULL, mode, sizeof(mode)) != SQLITE_OK ||
	    sqlite3_exec(s->db, "PRAGMA synchronous = FULL", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_exec(s->db, "PRAGMA foreign_keys = ON", NULL, NULL, NULL) != SQLITE_OK)
		return fail_db(s, err, "cannot configure it");

	if (fresh) {
		char sql[sizeof(schema_sql) + 160];
		snprintf(sql, sizeof(sql),
		         "BEGIN IMMEDIATE; %s PRAGMA application_id = %d; "
		         "PRAGMA user_version = %d; COMMIT",
		         schema_sql, FL_APPLICATION_ID, FL_SCHEMA_VERSION);
		if (sqlite3_exec(s->db, sql, NULL, NULL, NULL) != SQLITE_OK) {
			r = fail_db(s, err, "cannot create the schema");
			if (!sqlite3_get_autocommit(s->db))
				sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
			return r;
		}
	}
	if (!fresh && s->version == 1) {
		static const char migrate[] =
		    "BEGIN IMMEDIATE;"
		    "ALTER TABLE charges ADD COLUMN family INTEGER NOT NULL DEFAULT 0;"
		    "ALTER TABLE charges ADD COLUMN noise_multiplier REAL NOT NULL DEFAULT 0;"
		    "PRAGMA user_version = 2; COMMIT";
		if (sqlite3_exec(s->db, migrate, NULL, NULL, NULL) != SQLITE_OK) {
			r = fail_db(s, err, "cannot upgrade its schema from version 1");
			if (!sqlite3_get_autocommit(s->db))
				sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
			return r;
		}
	}
	for (int i = 0; i < S_COUNT; i++)
		if (sqlite3_prepare_v3(s->db, sql_text[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i],
		                       NULL) != SQLITE_OK)
			return fail_db(s, err, "its tables are not as expected");

	/* Crash recovery and the first period, atomically. */
	int64_t periods = 0;
	r = begin(s, err);
	if (r == 0)
		r = run(s, S_RECOVER_SAMPLES, err, "cannot recover interrupted rounds");
	if (r == 0)
		r = run(s, S_RECOVER_ROUNDS, err, "cannot recover interrupted rounds");
	if (r == 0)
		r = query_int(s, S_PERIOD_COUNT, &periods, err, "cannot read the budget periods");
	if (r == 0 && periods == 0) {
		sqlite3_stmt *st = s->st[S_PERIOD_ADD];
		sqlite3_bind_int64(st, 1, (sqlite3_int64)time(NULL));
		sqlite3_bind_double(st, 2, configured_total);
		sqlite3_bind_text(st, 3, "first period", -1, SQLITE_STATIC);
		r = run(s, S_PERIOD_ADD, err, "cannot start the first budget period");
	}
	if (r == 0)
		r = lower_total(s, configured_total, err);
	if (r == 0)
		r = commit(s, err);
	if (r < 0)
		rollback(s);
	return r;
}

int fl_store_open(const char *path, double configured_total, fl_store **out, sovmesh_error *err)
{
	*out = NULL;
	if (!path || !*path)
		return sovmesh_fail(err, -EINVAL, "no path for the federated-learning store");
	if (bad_total(configured_total))
		return sovmesh_fail(err, -EINVAL,
		                    "%s: the privacy budget must be a finite number > 0, not %g",
		                    path, configured_total);
	fl_store *s = calloc(1, sizeof(*s));
	if (!s || !(s->path = strdup(path))) {
		free(s);
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	}
	int r = open_checked(s, configured_total, err);
	if (r < 0) {
		store_free(s, 1);
		return r;
	}
	*out = s;
	return 0;
}

/* ---- samples ------------------------------------------------------------ */

static int validate_feedback(const fl_feedback *fb, sovmesh_error *err)
{
	static const char W[] = "feedback";
	int r;

	if (!fb)
		return sovmesh_fail(err, -EINVAL, "feedback: missing");
	if (!fb->prompt || !*fb->prompt)
		return sovmesh_fail(err, -EINVAL, "feedback: 'prompt' is required");
	if ((r = check_text(W, "model", fb->model, FL_SAMPLE_MODEL_MAX, err)) < 0 ||
	    (r = check_text(W, "prompt", fb->prompt, FL_SAMPLE_TEXT_MAX, err)) < 0 ||
	    (r = check_text(W, "response", fb->response, FL_SAMPLE_TEXT_MAX, err)) < 0 ||
	    (r = check_text(W, "correction", fb->correction, FL_SAMPLE_TEXT_MAX, err)) < 0)
		return r;
	if (fb->rating != SOVMESH_RATING_UP && fb->rating != SOVMESH_RATING_DOWN &&
	    fb->rating != SOVMESH_RATING_NONE)
		return sovmesh_fail(
		    err, -EINVAL,
		    "feedback: 'rating' must be 1 (up), -1 (down) or 0 (none), not %d", fb->rating);
	if (fb->correction && !*fb->correction)
		return sovmesh_fail(err, -EINVAL, "feedback: 'correction' is empty");
	if (fb->rating != SOVMESH_RATING_NONE && (!fb->response || !*fb->response))
		return sovmesh_fail(err, -EINVAL, "feedback: 'response' is required with a rating");
	if (fb->rating == SOVMESH_RATING_NONE && !fb->correction)
		return sovmesh_fail(err, -EINVAL,
		                    "feedback: 'correction' is required when there is no rating");
	return 0;
}

/* Bind text, or NULL for NULL and "". */
static void bind_opt(sqlite3_stmt *st, int i, const char *v)
{
	if (v && *v)
		sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, i);
}

int fl_store_add_sample(fl_store *s, const fl_feedback *fb, int64_t now, int64_t *id,
                        sovmesh_error *err)
{
	int r = validate_feedback(fb, err);
	if (r < 0)
		return r;
	sqlite3_stmt *st = s->st[S_SAMPLE_ADD];
	sqlite3_bind_int64(st, 1, now);
	bind_opt(st, 2, fb->model);
	sqlite3_bind_text(st, 3, fb->prompt, -1, SQLITE_STATIC);
	bind_opt(st, 4, fb->response);
	bind_opt(st, 5, fb->correction);
	sqlite3_bind_int(st, 6, fb->rating);
	r = run(s, S_SAMPLE_ADD, err, "cannot store the sample");
	if (r == 0 && id)
		*id = sqlite3_last_insert_rowid(s->db);
	return r;
}

int64_t fl_store_pending_count(fl_store *s)
{
	int64_t n;
	int r = query_int(s, S_PENDING_COUNT, &n, NULL, "");
	return r < 0 ? r : n;
}

int64_t fl_store_sample_count(fl_store *s)
{
	int64_t n;
	int r = query_int(s, S_SAMPLE_COUNT, &n, NULL, "");
	return r < 0 ? r : n;
}

void fl_sample_list_free(fl_sample_list *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->count; i++) {
		free(l->rows[i].model);
		free(l->rows[i].prompt);
		free(l->rows[i].response);
		free(l->rows[i].correction);
	}
	free(l->rows);
	l->rows = NULL;
	l->count = 0;
}

/* ---- rounds ------------------------------------------------------------- */

static int load_round_samples(fl_store *s, int64_t round_id, size_t n, fl_sample_list *out,
                              sovmesh_error *err)
{
	sqlite3_stmt *st = s->st[S_ROUND_SAMPLES];
	int rc, oom = 0;

	out->rows = calloc(n ? n : 1, sizeof(*out->rows));
	if (!out->rows)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	sqlite3_bind_int64(st, 1, round_id);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW && out->count < n) {
		fl_sample_row *row = &out->rows[out->count++];
		row->id = sqlite3_column_int64(st, 0);
		row->created = sqlite3_column_int64(st, 1);
		row->model = col_strdup(st, 2, &oom);
		row->prompt = col_strdup(st, 3, &oom);
		row->response = col_strdup(st, 4, &oom);
		row->correction = col_strdup(st, 5, &oom);
		row->rating = sqlite3_column_int(st, 6);
		if (oom)
			break;
	}
	if (rc == SQLITE_ROW && !oom)
		rc = step_all(st);
	int r = oom                 ? sovmesh_fail(err, -ENOMEM, "out of memory")
	        : rc == SQLITE_DONE ? 0
	                            : fail_db(s, err, "cannot load the samples");
	done_stmt(st);
	if (r < 0)
		fl_sample_list_free(out);
	return r;
}

int fl_store_round_begin(fl_store *s, int64_t now, size_t max_samples, int64_t *round_id,
                         fl_sample_list *samples, sovmesh_error *err)
{
	samples->rows = NULL;
	samples->count = 0;
	*round_id = 0;
	if (max_samples == 0)
		return sovmesh_fail(err, -EINVAL, "a round needs at least one sample");
	if (max_samples > INT32_MAX)
		max_samples = INT32_MAX;

	int r = begin(s, err);
	if (r < 0)
		return r;
	sqlite3_bind_int64(s->st[S_ROUND_ADD], 1, now);
	r = run(s, S_ROUND_ADD, err, "cannot start a round");
	int64_t id = sqlite3_last_insert_rowid(s->db);
	int64_t taken = 0;
	if (r == 0) {
		sqlite3_bind_int64(s->st[S_ROUND_TAKE], 1, id);
		sqlite3_bind_int64(s->st[S_ROUND_TAKE], 2, (sqlite3_int64)max_samples);
		r = run(s, S_ROUND_TAKE, err, "cannot assign samples to the round");
		taken = sqlite3_changes(s->db);
	}
	if (r == 0 && taken == 0)
		r = sovmesh_fail(err, -ENOENT, "no pending samples");
	if (r == 0) {
		sqlite3_bind_int64(s->st[S_ROUND_SET_COUNT], 1, id);
		sqlite3_bind_int64(s->st[S_ROUND_SET_COUNT], 2, taken);
		r = run(s, S_ROUND_SET_COUNT, err, "cannot start a round");
	}
	if (r == 0)
		r = load_round_samples(s, id, (size_t)taken, samples, err);
	if (r == 0)
		r = commit(s, err);
	if (r < 0) {
		rollback(s);
		fl_sample_list_free(samples);
		return r;
	}
	*round_id = id;
	return 0;
}

/* The state of round `id` into buf; -ENOENT when there is none. */
static int round_state(fl_store *s, int64_t id, char *buf, size_t len, sovmesh_error *err)
{
	sqlite3_stmt *st = s->st[S_ROUND_STATE];
	sqlite3_bind_int64(st, 1, id);
	int rc = sqlite3_step(st), r = 0;
	if (rc == SQLITE_ROW) {
		const unsigned char *t = sqlite3_column_text(st, 0);
		snprintf(buf, len, "%s", t ? (const char *)t : "");
	} else if (rc == SQLITE_DONE) {
		r = sovmesh_fail(err, -ENOENT, "no round %lld", (long long)id);
	} else {
		r = fail_db(s, err, "cannot read the round");
	}
	done_stmt(st);
	return r;
}

int fl_store_round_end(fl_store *s, int64_t round_id, int64_t now, int ok, const char *outcome,
                       int peers_sent, sovmesh_error *err)
{
	char state[32];
	/* The outcome may quote a plugin's error: made safe to print rather
	 * than refused, so a round always ends. */
	char *line = display_line(outcome, LINE_MAX_LEN);
	if (outcome && !line)
		return sovmesh_fail(err, -ENOMEM, "out of memory");

	int r = begin(s, err);
	if (r == 0)
		r = round_state(s, round_id, state, sizeof(state), err);
	if (r == 0 && strcmp(state, "running") != 0)
		r = sovmesh_fail(err, -EINVAL, "round %lld is not running (it is %s)",
		                 (long long)round_id, state);
	if (r == 0) {
		sqlite3_stmt *st = s->st[S_ROUND_FINISH];
		sqlite3_bind_int64(st, 1, round_id);
		sqlite3_bind_text(st, 2, ok ? "done" : "failed", -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, now);
		bind_opt(st, 4, line);
		sqlite3_bind_int(st, 5, peers_sent < 0 ? 0 : peers_sent);
		r = run(s, S_ROUND_FINISH, err, "cannot finish the round");
	}
	/* A failed round loses nothing: its samples are pending again. */
	if (r == 0 && !ok) {
		sqlite3_bind_int64(s->st[S_ROUND_RELEASE], 1, round_id);
		r = run(s, S_ROUND_RELEASE, err, "cannot release the round's samples");
	}
	if (r == 0)
		r = commit(s, err);
	if (r < 0)
		rollback(s);
	free(line);
	return r;
}

int64_t fl_store_rounds_done(fl_store *s)
{
	int64_t n;
	int r = query_int(s, S_ROUNDS_DONE, &n, NULL, "");
	return r < 0 ? r : n;
}

static json_t *col_json_int(sqlite3_stmt *st, int col)
{
	return sqlite3_column_type(st, col) == SQLITE_NULL
	           ? json_null()
	           : json_integer((json_int_t)sqlite3_column_int64(st, col));
}

static json_t *col_json_text(sqlite3_stmt *st, int col)
{
	const unsigned char *t = sqlite3_column_text(st, col);
	return t ? json_string((const char *)t) : json_null();
}

/* Set or fail (json_object_set_new steals even on failure). */
static int jset(json_t *o, const char *k, json_t *v)
{
	return v && json_object_set_new(o, k, v) == 0 ? 0 : -1;
}

json_t *fl_store_last_round_json(fl_store *s)
{
	sqlite3_stmt *st = s->st[S_LAST_ROUND];
	json_t *o = NULL;
	int rc = sqlite3_step(st);
	if (rc == SQLITE_DONE) {
		o = json_null();
	} else if (rc == SQLITE_ROW) {
		o = json_object();
		if (!o || jset(o, "id", json_integer(sqlite3_column_int64(st, 0))) ||
		    jset(o, "started", json_integer(sqlite3_column_int64(st, 1))) ||
		    jset(o, "finished", col_json_int(st, 2)) ||
		    jset(o, "state", col_json_text(st, 3)) ||
		    jset(o, "samples", json_integer(sqlite3_column_int64(st, 4))) ||
		    jset(o, "outcome", col_json_text(st, 5)) ||
		    jset(o, "peers_sent", json_integer(sqlite3_column_int64(st, 6))) ||
		    jset(o, "epsilon", json_real(sqlite3_column_double(st, 7)))) {
			json_decref(o);
			o = NULL;
		}
	}
	done_stmt(st);
	return o;
}

/* ---- privacy ledger ----------------------------------------------------- */

typedef struct period_row {
	int64_t id, started, charges;
	double total, spent, delta;
} period_row;

static int current_period(fl_store *s, period_row *p, sovmesh_error *err)
{
	sqlite3_stmt *st = s->st[S_PERIOD_CURRENT];
	int rc = sqlite3_step(st), r = 0;
	if (rc == SQLITE_ROW) {
		p->id = sqlite3_column_int64(st, 0);
		p->started = sqlite3_column_int64(st, 1);
		p->total = sqlite3_column_double(st, 2);
		p->spent = sqlite3_column_double(st, 3);
		p->delta = sqlite3_column_double(st, 4);
		p->charges = sqlite3_column_int64(st, 5);
	} else if (rc == SQLITE_DONE) {
		r = sovmesh_fail(err, -EIO, "%s: no budget period", s->path);
	} else {
		r = fail_db(s, err, "cannot read the privacy budget");
	}
	done_stmt(st);
	return r;
}

/*
 * ε and δ spent in period `period_id` under the store's accountant, with
 * `extra` (may be NULL) as one more release: basic composition adds the
 * charges up; RDP composes Laplace and Gaussian ones (privacy_accountant.h).
 */
static int period_spent(fl_store *s, int64_t period_id, const accountant_release *extra,
                        double *eps, double *delta, sovmesh_error *err)
{
	accountant_release *rel = NULL;
	size_t n = 0, cap = 0;
	sqlite3_stmt *st = s->st[S_PERIOD_RELEASES];
	sqlite3_bind_int64(st, 1, period_id);
	int rc, r = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap ? 2 * cap : 16;
			accountant_release *g = realloc(rel, (cap + 1) * sizeof(*g));
			if (!g) {
				r = sovmesh_fail(err, -ENOMEM, "out of memory");
				break;
			}
			rel = g;
		}
		rel[n++] = (accountant_release){
		    .family = (sovmesh_noise_family)sqlite3_column_int(st, 0),
		    .noise_multiplier = sqlite3_column_double(st, 1),
		    .epsilon = sqlite3_column_double(st, 2),
		    .delta = sqlite3_column_double(st, 3),
		};
	}
	if (r == 0 && rc != SQLITE_DONE)
		r = fail_db(s, err, "cannot read the privacy ledger");
	done_stmt(st);
	if (r == 0 && extra) {
		accountant_release *g = realloc(rel, (n + 1) * sizeof(*g));
		if (!g)
			r = sovmesh_fail(err, -ENOMEM, "out of memory");
		else
			(rel = g)[n++] = *extra;
	}
	if (r == 0)
		r = accountant_compose(s->acct, rel, n, s->target_delta, eps, delta, err);
	free(rel);
	return r;
}

void fl_store_set_accountant(fl_store *s, accountant_kind kind, double target_delta)
{
	s->acct = kind;
	s->target_delta = target_delta;
}

static int check_configured(double configured_total, sovmesh_error *err)
{
	if (bad_total(configured_total))
		return sovmesh_fail(err, -EINVAL,
		                    "the privacy budget must be a finite number > 0, not %g",
		                    configured_total);
	return 0;
}

int fl_store_budget(fl_store *s, double configured_total, fl_budget *out, sovmesh_error *err)
{
	period_row p;
	memset(out, 0, sizeof(*out));
	int r = check_configured(configured_total, err);
	if (r == 0)
		r = lower_total(s, configured_total, err);
	if (r == 0)
		r = current_period(s, &p, err);
	if (r < 0)
		return r;
	r = period_spent(s, p.id, NULL, &p.spent, &p.delta, err);
	if (r < 0)
		return r;
	out->period = p.id;
	out->period_started = p.started;
	out->total = fmin(configured_total, p.total);
	out->spent = p.spent;
	out->remaining = out->total > p.spent ? out->total - p.spent : 0;
	out->delta_spent = p.delta;
	out->charges = p.charges;
	return 0;
}

int fl_store_charge(fl_store *s, double configured_total, int64_t round_id, double epsilon,
                    double delta, const char *mechanism, json_t *peers, int64_t now,
                    sovmesh_error *err)
{
	accountant_release rel = {
	    .family = SOVMESH_NOISE_OTHER, .noise_multiplier = 0, .epsilon = epsilon, .delta = delta};
	return fl_store_charge_release(s, configured_total, round_id, &rel, mechanism, peers, now,
	                               err);
}

int fl_store_charge_release(fl_store *s, double configured_total, int64_t round_id,
                            const accountant_release *rel, const char *mechanism, json_t *peers,
                            int64_t now, sovmesh_error *err)
{
	period_row p;
	double epsilon = rel->epsilon, delta = rel->delta;
	int r = check_configured(configured_total, err);
	if (r < 0)
		return r;
	if (!isfinite(epsilon) || epsilon <= 0)
		return sovmesh_fail(err, -EINVAL, "a charge needs a finite epsilon > 0, not %g",
		                    epsilon);
	if (!isfinite(delta) || delta < 0)
		return sovmesh_fail(err, -EINVAL, "a charge needs a finite delta >= 0, not %g",
		                    delta);
	if (round_id < 0)
		return sovmesh_fail(err, -EINVAL, "invalid round %lld", (long long)round_id);
	if (!mechanism || !*mechanism)
		return sovmesh_fail(err, -EINVAL, "a charge needs the noise mechanism's name");
	if ((r = check_text("charge", "mechanism", mechanism, NAME_MAX_LEN, err)) < 0)
		return r;
	if (peers && !json_is_array(peers))
		return sovmesh_fail(err, -EINVAL, "a charge's peers must be a JSON array");
	char *peers_text = peers ? json_dumps(peers, JSON_COMPACT) : strdup("[]");
	if (!peers_text)
		return sovmesh_fail(err, -ENOMEM, "out of memory");

	r = begin(s, err);
	if (r == 0)
		r = lower_total(s, configured_total, err);
	if (r == 0)
		r = current_period(s, &p, err);
	double after = 0, after_delta = 0;
	if (r == 0)
		r = period_spent(s, p.id, NULL, &p.spent, &p.delta, err);
	if (r == 0)
		r = period_spent(s, p.id, rel, &after, &after_delta, err);
	if (r == 0) {
		double total = fmin(configured_total, p.total);
		if (after > total + BUDGET_SLACK)
			r = sovmesh_fail(
			    err, -ENOSPC,
			    "privacy budget exhausted: spent %g of %g, this sync needs %g", p.spent,
			    total, after - p.spent);
	}
	if (r == 0 && round_id > 0) {
		char state[32];
		r = round_state(s, round_id, state, sizeof(state), err);
	}
	if (r == 0) {
		sqlite3_stmt *st = s->st[S_CHARGE_ADD];
		sqlite3_bind_int64(st, 1, p.id);
		sqlite3_bind_int64(st, 2, now);
		if (round_id > 0)
			sqlite3_bind_int64(st, 3, round_id);
		else
			sqlite3_bind_null(st, 3);
		sqlite3_bind_double(st, 4, epsilon);
		sqlite3_bind_double(st, 5, delta);
		sqlite3_bind_text(st, 6, mechanism, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 7, peers_text, -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 8, (int)rel->family);
		sqlite3_bind_double(st, 9, rel->noise_multiplier);
		r = run(s, S_CHARGE_ADD, err, "cannot record the charge");
	}
	/* Only a successful COMMIT (the WAL fsync'd) lets the delta go. */
	if (r == 0)
		r = commit(s, err);
	if (r < 0)
		rollback(s);
	free(peers_text);
	return r;
}

static const char *family_name(int family)
{
	switch (family) {
	case SOVMESH_NOISE_LAPLACE:
		return "laplace";
	case SOVMESH_NOISE_GAUSSIAN:
		return "gaussian";
	case SOVMESH_NOISE_NONE:
		return "none";
	default:
		return "other";
	}
}

static json_t *history_json(fl_store *s, size_t max_history)
{
	sqlite3_stmt *st = s->st[S_HISTORY];
	json_t *a = json_array();
	int rc = SQLITE_DONE;
	if (!a)
		return NULL;
	sqlite3_bind_int64(st, 1, max_history > INT64_MAX ? INT64_MAX : (sqlite3_int64)max_history);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const unsigned char *pt = sqlite3_column_text(st, 5);
		json_t *peers = pt ? json_loads((const char *)pt, 0, NULL) : NULL;
		if (!json_is_array(peers)) {
			json_decref(peers);
			peers = json_array();
		}
		json_t *o = json_object();
		if (!o || json_array_append_new(a, o)) {
			json_decref(peers);
			rc = SQLITE_NOMEM;
			break;
		}
		if (jset(o, "peers", peers) ||
		    jset(o, "time", json_integer(sqlite3_column_int64(st, 0))) ||
		    jset(o, "round", col_json_int(st, 1)) ||
		    jset(o, "epsilon", json_real(sqlite3_column_double(st, 2))) ||
		    jset(o, "delta", json_real(sqlite3_column_double(st, 3))) ||
		    jset(o, "mechanism", col_json_text(st, 4)) ||
		    jset(o, "period", json_integer(sqlite3_column_int64(st, 6))) ||
		    jset(o, "family", json_string(family_name(sqlite3_column_int(st, 7)))) ||
		    jset(o, "noise_multiplier", json_real(sqlite3_column_double(st, 8)))) {
			rc = SQLITE_NOMEM;
			break;
		}
	}
	done_stmt(st);
	if (rc != SQLITE_DONE) {
		json_decref(a);
		return NULL;
	}
	return a;
}

static json_t *periods_json(fl_store *s)
{
	sqlite3_stmt *st = s->st[S_PERIODS];
	json_t *a = json_array();
	int rc = SQLITE_DONE;
	if (!a)
		return NULL;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		json_t *o = json_object();
		if (!o || json_array_append_new(a, o) ||
		    jset(o, "period", json_integer(sqlite3_column_int64(st, 0))) ||
		    jset(o, "started", json_integer(sqlite3_column_int64(st, 1))) ||
		    jset(o, "total", json_real(sqlite3_column_double(st, 2))) ||
		    jset(o, "spent", json_real(sqlite3_column_double(st, 3))) ||
		    jset(o, "reason", col_json_text(st, 4))) {
			rc = SQLITE_NOMEM;
			break;
		}
	}
	done_stmt(st);
	if (rc != SQLITE_DONE) {
		json_decref(a);
		return NULL;
	}
	/* Spent as the accountant composes it (the query's sum is basic). */
	size_t i;
	json_t *o;
	json_array_foreach(a, i, o)
	{
		double eps = 0, delta = 0;
		if (period_spent(s, json_integer_value(json_object_get(o, "period")), NULL, &eps,
		                 &delta, NULL) == 0)
			json_object_set_new(o, "spent", json_real(eps));
	}
	return a;
}

json_t *fl_store_budget_json(fl_store *s, double configured_total, size_t max_history)
{
	fl_budget b;
	if (fl_store_budget(s, configured_total, &b, NULL) < 0)
		return NULL;
	json_t *o = json_object();
	if (!o || jset(o, "period", json_integer(b.period)) ||
	    jset(o, "period_started", json_integer(b.period_started)) ||
	    jset(o, "total", json_real(b.total)) || jset(o, "spent", json_real(b.spent)) ||
	    jset(o, "remaining", json_real(b.remaining)) ||
	    jset(o, "delta_spent", json_real(b.delta_spent)) ||
	    jset(o, "accountant", json_string(accountant_name(s->acct))) ||
	    jset(o, "target_delta", s->acct == ACCOUNTANT_RDP ? json_real(s->target_delta)
	                                                      : json_null()) ||
	    jset(o, "charges", json_integer(b.charges)) ||
	    jset(o, "history", history_json(s, max_history)) ||
	    jset(o, "periods", periods_json(s))) {
		json_decref(o);
		return NULL;
	}
	return o;
}

int fl_store_new_period(fl_store *s, double total, int64_t now, const char *reason,
                        sovmesh_error *err)
{
	if (bad_total(total))
		return sovmesh_fail(err, -EINVAL,
		                    "a budget period's total must be a finite number > 0, not %g",
		                    total);
	int r = check_text("new period", "reason", reason, LINE_MAX_LEN, err);
	if (r < 0)
		return r;
	sqlite3_stmt *st = s->st[S_PERIOD_ADD];
	sqlite3_bind_int64(st, 1, now);
	sqlite3_bind_double(st, 2, total);
	bind_opt(st, 3, reason);
	return run(s, S_PERIOD_ADD, err, "cannot start a budget period");
}

/* ---- inbox -------------------------------------------------------------- */

void fl_inbox_list_free(fl_inbox_list *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->count; i++) {
		free(l->rows[i].sender_fp);
		free(l->rows[i].sender_name);
		free(l->rows[i].path);
	}
	free(l->rows);
	l->rows = NULL;
	l->count = 0;
}

int fl_store_inbox_add(fl_store *s, const char *sender_fp, const char *sender_name,
                       const char *path, int64_t samples, int64_t sender_round, int64_t now,
                       int64_t *id, sovmesh_error *err)
{
	char fp[FP_HEX_LEN + 1];
	int r = fp_normalize(sender_fp, fp, err);
	if (r < 0)
		return r;
	if ((r = check_text("inbox", "sender_name", sender_name, NAME_MAX_LEN, err)) < 0)
		return r;
	if (!path || !*path)
		return sovmesh_fail(err, -EINVAL, "inbox: 'path' is required");
	if ((r = check_text("inbox", "path", path, PATH_MAX, err)) < 0)
		return r;
	if (samples <= 0)
		return sovmesh_fail(err, -EINVAL, "inbox: 'samples' must be > 0, not %lld",
		                    (long long)samples);
	if (sender_round < 0)
		return sovmesh_fail(err, -EINVAL, "inbox: invalid sender round %lld",
		                    (long long)sender_round);
	sqlite3_stmt *st = s->st[S_INBOX_ADD];
	sqlite3_bind_text(st, 1, fp, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, sender_name ? sender_name : "", -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, path, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, now);
	sqlite3_bind_int64(st, 5, samples);
	sqlite3_bind_int64(st, 6, sender_round);
	int rc = step_all(st);
	done_stmt(st);
	if (rc == SQLITE_CONSTRAINT_UNIQUE)
		return sovmesh_fail(
		    err, -EEXIST, "round %lld of peer %.16s... is already waiting for aggregation",
		    (long long)sender_round, fp);
	if (rc != SQLITE_DONE)
		return fail_db(s, err, "cannot record the received delta");
	if (id)
		*id = sqlite3_last_insert_rowid(s->db);
	return 0;
}

int fl_store_inbox_pending(fl_store *s, fl_inbox_list *out, sovmesh_error *err)
{
	sqlite3_stmt *st = s->st[S_INBOX_PENDING];
	size_t cap = 0;
	int rc, oom = 0;

	out->rows = NULL;
	out->count = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (out->count == cap) {
			size_t nc = cap ? cap * 2 : 8;
			fl_inbox_row *nr = realloc(out->rows, nc * sizeof(*nr));
			if (!nr) {
				oom = 1;
				break;
			}
			out->rows = nr;
			cap = nc;
		}
		fl_inbox_row *row = &out->rows[out->count++];
		memset(row, 0, sizeof(*row));
		row->id = sqlite3_column_int64(st, 0);
		row->sender_fp = col_strdup(st, 1, &oom);
		row->sender_name = col_strdup(st, 2, &oom);
		row->path = col_strdup(st, 3, &oom);
		row->received = sqlite3_column_int64(st, 4);
		row->samples = sqlite3_column_int64(st, 5);
		row->sender_round = sqlite3_column_int64(st, 6);
		if (oom)
			break;
	}
	done_stmt(st);
	int r = oom                 ? sovmesh_fail(err, -ENOMEM, "out of memory")
	        : rc == SQLITE_DONE ? 0
	                            : fail_db(s, err, "cannot read the inbox");
	if (r < 0)
		fl_inbox_list_free(out);
	return r;
}

int fl_store_inbox_done(fl_store *s, const int64_t *ids, size_t n, sovmesh_error *err)
{
	if (n == 0)
		return 0;
	if (!ids)
		return sovmesh_fail(err, -EINVAL, "no inbox ids");
	int r = begin(s, err);
	for (size_t i = 0; r == 0 && i < n; i++) {
		sqlite3_bind_int64(s->st[S_INBOX_DONE], 1, ids[i]);
		r = run(s, S_INBOX_DONE, err, "cannot update the inbox");
	}
	if (r == 0)
		r = commit(s, err);
	if (r < 0)
		rollback(s);
	return r;
}

/* ---- per-peer sync times ------------------------------------------------ */

int fl_store_note_sync(fl_store *s, const char *fingerprint_hex, int sent, int64_t now)
{
	char fp[FP_HEX_LEN + 1];
	int r = fp_normalize(fingerprint_hex, fp, NULL);
	if (r < 0)
		return r;
	int which = sent ? S_SYNC_SENT : S_SYNC_RECEIVED;
	sqlite3_bind_text(s->st[which], 1, fp, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s->st[which], 2, now);
	return run(s, which, NULL, "");
}

json_t *fl_store_sync_json(fl_store *s)
{
	sqlite3_stmt *st = s->st[S_SYNC_ALL];
	json_t *o = json_object();
	int rc = SQLITE_DONE;
	if (!o)
		return NULL;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const unsigned char *fp = sqlite3_column_text(st, 0);
		json_t *e = fp ? json_object() : NULL;
		if (!e || json_object_set_new(o, (const char *)fp, e) ||
		    jset(e, "last_sent", col_json_int(st, 1)) ||
		    jset(e, "last_received", col_json_int(st, 2))) {
			rc = SQLITE_NOMEM;
			break;
		}
	}
	done_stmt(st);
	if (rc != SQLITE_DONE) {
		json_decref(o);
		return NULL;
	}
	return o;
}

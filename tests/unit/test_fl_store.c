/*
 * fl_store.c: samples validated and stored; rounds that finish, fail or
 * are interrupted by a crash; the privacy ledger (exact boundary, lowered
 * and raised totals, new periods, restarts that never refill, charges
 * that survive kill -9); foreign, newer and corrupt files refused and
 * left byte for byte; the inbox and per-peer sync times.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include <sqlite3.h>
#include <sovmesh/trainer.h>

#include "fl_store.h"

#define FP_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define FP_B "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static char tmpdir[256];
static char dbpath[512];

static int setup_tmp(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_fl_store.XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	snprintf(dbpath, sizeof(dbpath), "%s/fl.db", tmpdir);
	return 0;
}

static int teardown_tmp(void **state)
{
	(void)state;
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static fl_store *open_ok(double total)
{
	fl_store *s = NULL;
	sovmesh_error err = {0};
	int r = fl_store_open(dbpath, total, &s, &err);
	if (r != 0)
		print_error("open: %s\n", err.message);
	assert_int_equal(r, 0);
	assert_non_null(s);
	return s;
}

static int64_t add_sample(fl_store *s, const char *prompt, int64_t now)
{
	fl_feedback fb = {.model = "m", .prompt = prompt, .response = "r", .rating = 1};
	sovmesh_error err = {0};
	int64_t id = 0;
	assert_int_equal(fl_store_add_sample(s, &fb, now, &id, &err), 0);
	assert_true(id > 0);
	return id;
}

static int charge(fl_store *s, double configured, double eps, sovmesh_error *err)
{
	return fl_store_charge(s, configured, 0, eps, 1e-6, "gaussian", NULL, 100, err);
}

static void budget_ok(fl_store *s, double configured, fl_budget *b)
{
	sovmesh_error err = {0};
	assert_int_equal(fl_store_budget(s, configured, b, &err), 0);
}

static char *slurp(const char *p, size_t *len)
{
	FILE *f = fopen(p, "rb");
	assert_non_null(f);
	size_t cap = 1 << 16, n = 0, k;
	char *buf = malloc(cap);
	assert_non_null(buf);
	while ((k = fread(buf + n, 1, cap - n, f)) > 0) {
		n += k;
		if (n == cap) {
			cap *= 2;
			buf = realloc(buf, cap);
			assert_non_null(buf);
		}
	}
	fclose(f);
	*len = n;
	return buf;
}

/* Entries in tmpdir (the database's siblings included). */
static int dir_entries(void)
{
	DIR *d = opendir(tmpdir);
	assert_non_null(d);
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

/* Open must fail with `code` and a message containing `what` and the
 * path, leaving the file and its directory exactly as they were. */
static void refused_untouched(double total, int code, const char *what)
{
	size_t n0, n1;
	char *before = slurp(dbpath, &n0);
	int entries = dir_entries();
	struct stat st0, st1;
	assert_int_equal(stat(dbpath, &st0), 0);

	fl_store *s = (fl_store *)1;
	sovmesh_error err = {0};
	assert_int_equal(fl_store_open(dbpath, total, &s, &err), code);
	assert_null(s);
	assert_non_null(strstr(err.message, dbpath));
	if (!strstr(err.message, what))
		fail_msg("message '%s' lacks '%s'", err.message, what);

	char *after = slurp(dbpath, &n1);
	assert_int_equal(n0, n1);
	assert_memory_equal(before, after, n0);
	assert_int_equal(stat(dbpath, &st1), 0);
	assert_int_equal(st0.st_mode, st1.st_mode);
	assert_int_equal(dir_entries(), entries);
	free(before);
	free(after);
}

/* ---- samples ------------------------------------------------------------ */

static void test_samples_add_count(void **state)
{
	(void)state;
	fl_store *s = open_ok(10);
	sovmesh_error err = {0};
	int64_t id1 = 0, id2 = 0, id3 = 0;
	assert_int_equal(fl_store_sample_count(s), 0);
	assert_int_equal(fl_store_pending_count(s), 0);

	fl_feedback up = {.model = "llama3", .prompt = "hi", .response = "hello", .rating = 1};
	fl_feedback down = {.prompt = "2+2?", .response = "5", .correction = "4", .rating = -1};
	/* A correction alone, no response and no rating; a 4-byte emoji. */
	fl_feedback fix = {
	    .model = "", .prompt = "p \xf0\x9f\x98\x80", .correction = "c", .rating = 0};
	assert_int_equal(fl_store_add_sample(s, &up, 10, &id1, &err), 0);
	assert_int_equal(fl_store_add_sample(s, &down, 11, &id2, &err), 0);
	assert_int_equal(fl_store_add_sample(s, &fix, 12, &id3, &err), 0);
	assert_int_equal(fl_store_add_sample(s, &up, 13, NULL, &err), 0);
	assert_true(id1 < id2 && id2 < id3);
	assert_int_equal(fl_store_sample_count(s), 4);
	assert_int_equal(fl_store_pending_count(s), 4);

	/* What went in comes out (via a round). */
	int64_t rid = 0;
	fl_sample_list l = {0};
	assert_int_equal(fl_store_round_begin(s, 20, 3, &rid, &l, &err), 0);
	assert_int_equal(l.count, 3);
	assert_int_equal(l.rows[0].id, id1);
	assert_int_equal(l.rows[0].created, 10);
	assert_string_equal(l.rows[0].model, "llama3");
	assert_string_equal(l.rows[0].prompt, "hi");
	assert_string_equal(l.rows[0].response, "hello");
	assert_null(l.rows[0].correction);
	assert_int_equal(l.rows[0].rating, 1);
	assert_null(l.rows[1].model);
	assert_string_equal(l.rows[1].correction, "4");
	assert_int_equal(l.rows[1].rating, -1);
	assert_null(l.rows[2].model); /* "" is stored as absent */
	assert_null(l.rows[2].response);
	assert_string_equal(l.rows[2].prompt, "p \xf0\x9f\x98\x80");
	assert_int_equal(l.rows[2].rating, 0);
	fl_sample_list_free(&l);
	assert_int_equal(l.count, 0);
	fl_store_close(s);
}

static void test_samples_validation(void **state)
{
	(void)state;
	fl_store *s = open_ok(10);
	char *big = malloc(FL_SAMPLE_TEXT_MAX + 2);
	assert_non_null(big);
	memset(big, 'x', FL_SAMPLE_TEXT_MAX + 1);
	big[FL_SAMPLE_TEXT_MAX + 1] = '\0';
	char model[FL_SAMPLE_MODEL_MAX + 2];
	memset(model, 'm', sizeof(model) - 1);
	model[sizeof(model) - 1] = '\0';

	const struct {
		fl_feedback fb;
		const char *msg;
	} bad[] = {
	    {{.prompt = NULL, .response = "r", .rating = 1}, "feedback: 'prompt' is required"},
	    {{.prompt = "", .response = "r", .rating = 1}, "feedback: 'prompt' is required"},
	    {{.prompt = big, .response = "r", .rating = 1},
	     "feedback: 'prompt' is longer than 65536 bytes"},
	    {{.prompt = "p", .response = big, .rating = 1},
	     "feedback: 'response' is longer than 65536 bytes"},
	    {{.prompt = "p", .response = "r", .correction = big, .rating = -1},
	     "feedback: 'correction' is longer than 65536 bytes"},
	    {{.model = model, .prompt = "p", .response = "r", .rating = 1},
	     "feedback: 'model' is longer than 256 bytes"},
	    /* overlong '/' */
	    {{.prompt = "p", .response = "a\xc0\xaf", .rating = 1},
	     "feedback: 'response' is not valid UTF-8"},
	    /* overlong 3-byte */
	    {{.prompt = "\xe0\x80\xaf", .response = "r", .rating = 1},
	     "feedback: 'prompt' is not valid UTF-8"},
	    /* a surrogate, U+D800 */
	    {{.prompt = "p", .response = "\xed\xa0\x80", .rating = 1},
	     "feedback: 'response' is not valid UTF-8"},
	    /* past U+10FFFF */
	    {{.prompt = "p", .correction = "\xf4\x90\x80\x80", .rating = 0},
	     "feedback: 'correction' is not valid UTF-8"},
	    /* truncated sequence, stray continuation byte */
	    {{.prompt = "p", .response = "\xe2\x82", .rating = 1},
	     "feedback: 'response' is not valid UTF-8"},
	    {{.model = "\x80", .prompt = "p", .response = "r", .rating = 1},
	     "feedback: 'model' is not valid UTF-8"},
	    {{.prompt = "p", .response = "r", .rating = 2},
	     "feedback: 'rating' must be 1 (up), -1 (down) or 0 (none), not 2"},
	    {{.prompt = "p", .response = "r", .rating = 0},
	     "feedback: 'correction' is required when there is no rating"},
	    {{.prompt = "p", .rating = 1}, "feedback: 'response' is required with a rating"},
	    {{.prompt = "p", .response = "", .correction = "c", .rating = -1},
	     "feedback: 'response' is required with a rating"},
	    {{.prompt = "p", .response = "r", .correction = "", .rating = -1},
	     "feedback: 'correction' is empty"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		sovmesh_error err = {0};
		int64_t id = -7;
		assert_int_equal(fl_store_add_sample(s, &bad[i].fb, 1, &id, &err), -EINVAL);
		assert_string_equal(err.message, bad[i].msg);
		assert_int_equal(id, -7);
	}
	sovmesh_error err = {0};
	assert_int_equal(fl_store_add_sample(s, NULL, 1, NULL, &err), -EINVAL);
	assert_int_equal(fl_store_sample_count(s), 0);

	/* Exactly at the limits is fine. */
	big[FL_SAMPLE_TEXT_MAX] = '\0';
	model[FL_SAMPLE_MODEL_MAX] = '\0';
	fl_feedback edge = {
	    .model = model, .prompt = big, .response = big, .correction = big, .rating = -1};
	assert_int_equal(fl_store_add_sample(s, &edge, 1, NULL, &err), 0);
	assert_int_equal(fl_store_sample_count(s), 1);
	free(big);
	fl_store_close(s);
}

/* ---- rounds ------------------------------------------------------------- */

static void test_round_done_and_failed(void **state)
{
	(void)state;
	fl_store *s = open_ok(10);
	sovmesh_error err = {0};
	int64_t rid = 0, ids[5];
	fl_sample_list l = {0};

	assert_int_equal(fl_store_round_begin(s, 1, 10, &rid, &l, &err), -ENOENT);
	assert_int_equal(l.count, 0);
	assert_int_equal(fl_store_rounds_done(s), 0);
	json_t *j = fl_store_last_round_json(s);
	assert_true(json_is_null(j)); /* no rounds at all: not even the failed begin */
	json_decref(j);

	for (int i = 0; i < 5; i++)
		ids[i] = add_sample(s, "p", i);
	assert_int_equal(fl_store_round_begin(s, 10, 0, &rid, &l, &err), -EINVAL);

	/* Oldest first, at most max_samples. */
	assert_int_equal(fl_store_round_begin(s, 10, 3, &rid, &l, &err), 0);
	assert_int_equal(l.count, 3);
	for (int i = 0; i < 3; i++)
		assert_int_equal(l.rows[i].id, ids[i]);
	fl_sample_list_free(&l);
	assert_int_equal(fl_store_pending_count(s), 2);
	j = fl_store_last_round_json(s);
	assert_string_equal(json_string_value(json_object_get(j, "state")), "running");
	assert_true(json_is_null(json_object_get(j, "finished")));
	assert_int_equal(json_integer_value(json_object_get(j, "samples")), 3);
	json_decref(j);

	assert_int_equal(fl_store_round_end(s, rid, 11, 1, "synced with 2 peers", 2, &err), 0);
	assert_int_equal(fl_store_rounds_done(s), 1);
	assert_int_equal(fl_store_pending_count(s), 2); /* used samples stay used */
	/* Ending it twice, or a round that does not exist. */
	assert_int_equal(fl_store_round_end(s, rid, 12, 1, "x", 0, &err), -EINVAL);
	assert_non_null(strstr(err.message, "is not running"));
	assert_int_equal(fl_store_round_end(s, 999, 12, 1, "x", 0, &err), -ENOENT);

	j = fl_store_last_round_json(s);
	assert_int_equal(json_integer_value(json_object_get(j, "id")), rid);
	assert_int_equal(json_integer_value(json_object_get(j, "started")), 10);
	assert_int_equal(json_integer_value(json_object_get(j, "finished")), 11);
	assert_string_equal(json_string_value(json_object_get(j, "state")), "done");
	assert_string_equal(json_string_value(json_object_get(j, "outcome")),
	                    "synced with 2 peers");
	assert_int_equal(json_integer_value(json_object_get(j, "peers_sent")), 2);
	assert_true(json_real_value(json_object_get(j, "epsilon")) == 0.0);
	json_decref(j);

	/* A failed round gives its samples back. */
	int64_t rid2 = 0;
	assert_int_equal(fl_store_round_begin(s, 20, 10, &rid2, &l, &err), 0);
	assert_true(rid2 > rid);
	assert_int_equal(l.count, 2);
	assert_int_equal(l.rows[0].id, ids[3]);
	fl_sample_list_free(&l);
	assert_int_equal(fl_store_pending_count(s), 0);
	/* An outcome quoting junk is made printable, not refused. */
	assert_int_equal(fl_store_round_end(s, rid2, 21, 0, "training failed: \xff\x01ok", 0, &err),
	                 0);
	assert_int_equal(fl_store_pending_count(s), 2);
	assert_int_equal(fl_store_rounds_done(s), 1);
	j = fl_store_last_round_json(s);
	assert_string_equal(json_string_value(json_object_get(j, "state")), "failed");
	assert_string_equal(json_string_value(json_object_get(j, "outcome")),
	                    "training failed: ??ok");
	json_decref(j);

	/* They are taken again by the next round. */
	assert_int_equal(fl_store_round_begin(s, 30, 10, &rid, &l, &err), 0);
	assert_int_equal(l.count, 2);
	assert_int_equal(l.rows[1].id, ids[4]);
	fl_sample_list_free(&l);
	assert_int_equal(fl_store_round_end(s, rid, 31, 1, NULL, 0, &err), 0);
	j = fl_store_last_round_json(s);
	assert_true(json_is_null(json_object_get(j, "outcome")));
	json_decref(j);
	assert_int_equal(fl_store_rounds_done(s), 2);
	fl_store_close(s);
}

static void test_round_interrupted_on_reopen(void **state)
{
	(void)state;
	fl_store *s = open_ok(10);
	sovmesh_error err = {0};
	int64_t rid = 0;
	fl_sample_list l = {0};
	for (int i = 0; i < 4; i++)
		add_sample(s, "p", i);
	assert_int_equal(fl_store_round_begin(s, 10, 3, &rid, &l, &err), 0);
	fl_sample_list_free(&l);
	assert_int_equal(fl_store_pending_count(s), 1);
	fl_store_close(s); /* as if the daemon died mid-round */

	s = open_ok(10);
	assert_int_equal(fl_store_pending_count(s), 4);
	assert_int_equal(fl_store_rounds_done(s), 0);
	json_t *j = fl_store_last_round_json(s);
	assert_int_equal(json_integer_value(json_object_get(j, "id")), rid);
	assert_string_equal(json_string_value(json_object_get(j, "state")), "interrupted");
	assert_non_null(json_string_value(json_object_get(j, "outcome")));
	json_decref(j);
	/* An interrupted round cannot be ended any more. */
	assert_int_equal(fl_store_round_end(s, rid, 11, 1, "late", 1, &err), -EINVAL);
	assert_int_equal(fl_store_pending_count(s), 4);
	fl_store_close(s);
}

/* ---- ledger ------------------------------------------------------------- */

static void test_charge_within_budget(void **state)
{
	(void)state;
	fl_store *s = open_ok(10);
	sovmesh_error err = {0};
	fl_budget b;
	budget_ok(s, 10, &b);
	assert_int_equal(b.period, 1);
	assert_true(b.total == 10 && b.spent == 0 && b.remaining == 10);
	assert_int_equal(b.charges, 0);

	int64_t rid = 0;
	fl_sample_list l = {0};
	add_sample(s, "p", 1);
	assert_int_equal(fl_store_round_begin(s, 5, 10, &rid, &l, &err), 0);
	fl_sample_list_free(&l);
	json_t *peers = json_pack("[ss]", FP_A, FP_B);
	assert_int_equal(fl_store_charge(s, 10, rid, 1.5, 1e-5, "gaussian", peers, 100, &err), 0);
	assert_int_equal(fl_store_charge(s, 10, rid, 0.25, 0, "laplace", peers, 101, &err), 0);
	json_decref(peers);

	budget_ok(s, 10, &b);
	assert_true(b.spent == 1.75);
	assert_true(b.remaining == 8.25);
	assert_true(b.delta_spent == 1e-5);
	assert_int_equal(b.charges, 2);
	json_t *j = fl_store_last_round_json(s);
	assert_true(json_real_value(json_object_get(j, "epsilon")) == 1.75);
	json_decref(j);
	fl_store_close(s);
}

static void test_charge_bad_arguments(void **state)
{
	(void)state;
	fl_store *s = open_ok(10);
	sovmesh_error err = {0};
	json_t *obj = json_object();
	assert_int_equal(charge(s, 10, 0, &err), -EINVAL);
	assert_int_equal(charge(s, 10, -1, &err), -EINVAL);
	assert_int_equal(charge(s, 10, NAN, &err), -EINVAL);
	assert_int_equal(charge(s, 10, INFINITY, &err), -EINVAL);
	assert_int_equal(charge(s, NAN, 1, &err), -EINVAL);
	assert_int_equal(charge(s, 0, 1, &err), -EINVAL);
	assert_int_equal(charge(s, -INFINITY, 1, &err), -EINVAL);
	assert_int_equal(fl_store_charge(s, 10, 0, 1, -1, "g", NULL, 1, &err), -EINVAL);
	assert_int_equal(fl_store_charge(s, 10, 0, 1, NAN, "g", NULL, 1, &err), -EINVAL);
	assert_int_equal(fl_store_charge(s, 10, 0, 1, 0, NULL, NULL, 1, &err), -EINVAL);
	assert_int_equal(fl_store_charge(s, 10, 0, 1, 0, "", NULL, 1, &err), -EINVAL);
	assert_int_equal(fl_store_charge(s, 10, 0, 1, 0, "g", obj, 1, &err), -EINVAL);
	assert_int_equal(fl_store_charge(s, 10, -2, 1, 0, "g", NULL, 1, &err), -EINVAL);
	assert_int_equal(fl_store_charge(s, 10, 42, 1, 0, "g", NULL, 1, &err), -ENOENT);
	assert_string_equal(err.message, "no round 42");
	json_decref(obj);
	fl_budget b;
	budget_ok(s, 10, &b);
	assert_int_equal(b.charges, 0);
	assert_int_equal(fl_store_budget(s, NAN, &b, &err), -EINVAL);
	fl_store_close(s);
}

static void test_charge_refused_at_boundary(void **state)
{
	(void)state;
	fl_store *s = open_ok(3);
	sovmesh_error err = {0};
	for (int i = 0; i < 3; i++)
		assert_int_equal(charge(s, 3, 1, &err), 0);
	assert_int_equal(charge(s, 3, 1, &err), -ENOSPC);
	assert_string_equal(err.message,
	                    "privacy budget exhausted: spent 3 of 3, this sync needs 1");
	/* Nothing recorded by the refusal; a smaller charge is refused too. */
	assert_int_equal(charge(s, 3, 1e-6, &err), -ENOSPC);
	fl_budget b;
	budget_ok(s, 3, &b);
	assert_int_equal(b.charges, 3);
	assert_true(b.spent == 3 && b.remaining == 0);
	json_t *j = fl_store_budget_json(s, 3, 100);
	assert_int_equal(json_array_size(json_object_get(j, "history")), 3);
	json_decref(j);
	fl_store_close(s);

	/* 0.1 + 0.1 + 0.1 is 0.30000000000000004: three charges of 0.1 still
	 * fit a budget of 0.3, a fourth does not. */
	assert_int_equal(unlink(dbpath), 0);
	s = open_ok(0.3);
	for (int i = 0; i < 3; i++)
		assert_int_equal(charge(s, 0.3, 0.1, &err), 0);
	assert_int_equal(charge(s, 0.3, 0.1, &err), -ENOSPC);
	budget_ok(s, 0.3, &b);
	assert_int_equal(b.charges, 3);
	assert_true(b.remaining == 0);
	fl_store_close(s);
}

static void test_configured_total_lower_and_raise(void **state)
{
	(void)state;
	fl_store *s = open_ok(3);
	sovmesh_error err = {0};
	fl_budget b;

	/* Lowering the key takes effect at once. */
	budget_ok(s, 2, &b);
	assert_true(b.total == 2 && b.remaining == 2);
	assert_int_equal(charge(s, 2, 1, &err), 0);
	assert_int_equal(charge(s, 2, 1, &err), 0);
	assert_int_equal(charge(s, 2, 1, &err), -ENOSPC);
	assert_string_equal(err.message,
	                    "privacy budget exhausted: spent 2 of 2, this sync needs 1");

	/* Raising it again does not undo the lowering (the period now
	 * records 2), even to the period's original total... */
	budget_ok(s, 3, &b);
	assert_true(b.total == 2 && b.spent == 2 && b.remaining == 0);
	assert_int_equal(charge(s, 10, 1, &err), -ENOSPC);
	assert_string_equal(err.message,
	                    "privacy budget exhausted: spent 2 of 2, this sync needs 1");
	fl_store_close(s);
	/* ...nor does a restart with a higher key. */
	s = open_ok(10);
	budget_ok(s, 10, &b);
	assert_int_equal(b.period, 1);
	assert_true(b.total == 2 && b.spent == 2 && b.remaining == 0);
	assert_int_equal(charge(s, 10, 1, &err), -ENOSPC);
	assert_int_equal(charge(s, 10, 1, &err), -ENOSPC);

	/* A new period does; the history stays. */
	assert_int_equal(fl_store_new_period(s, 0, 50, "x", &err), -EINVAL);
	assert_int_equal(fl_store_new_period(s, NAN, 50, "x", &err), -EINVAL);
	assert_int_equal(fl_store_new_period(s, INFINITY, 50, "x", &err), -EINVAL);
	assert_int_equal(fl_store_new_period(s, 1, 50, "\xff", &err), -EINVAL);
	assert_int_equal(fl_store_new_period(s, 10, 50, "monthly reset", &err), 0);
	budget_ok(s, 10, &b);
	assert_int_equal(b.period, 2);
	assert_int_equal(b.period_started, 50);
	assert_true(b.total == 10 && b.spent == 0 && b.remaining == 10);
	assert_int_equal(b.charges, 0);
	assert_int_equal(charge(s, 10, 4, &err), 0);
	/* The key still caps the new period. */
	budget_ok(s, 5, &b);
	assert_true(b.total == 5 && b.remaining == 1);

	json_t *j = fl_store_budget_json(s, 10, 100);
	assert_int_equal(json_array_size(json_object_get(j, "history")), 3);
	json_t *periods = json_object_get(j, "periods");
	assert_int_equal(json_array_size(periods), 2);
	json_t *p2 = json_array_get(periods, 0), *p1 = json_array_get(periods, 1);
	assert_int_equal(json_integer_value(json_object_get(p2, "period")), 2);
	assert_true(json_real_value(json_object_get(p2, "spent")) == 4);
	assert_true(json_real_value(json_object_get(p2, "total")) == 5); /* lowered for good */
	assert_string_equal(json_string_value(json_object_get(p2, "reason")), "monthly reset");
	assert_int_equal(json_integer_value(json_object_get(p1, "period")), 1);
	assert_true(json_real_value(json_object_get(p1, "spent")) == 2);
	assert_true(json_real_value(json_object_get(p1, "total")) == 2);

	/* reason may be NULL. */
	assert_int_equal(fl_store_new_period(s, 1, 60, NULL, &err), 0);
	json_decref(j);
	j = fl_store_budget_json(s, 10, 100);
	periods = json_object_get(j, "periods");
	assert_true(json_is_null(json_object_get(json_array_get(periods, 0), "reason")));
	assert_true(json_real_value(json_object_get(j, "total")) == 1);
	json_decref(j);
	fl_store_close(s);
}

static void test_budget_survives_reopen(void **state)
{
	(void)state;
	fl_store *s = open_ok(5);
	sovmesh_error err = {0};
	assert_int_equal(charge(s, 5, 2, &err), 0);
	fl_store_close(s);
	for (int i = 0; i < 3; i++) {
		s = open_ok(5);
		fl_budget b;
		budget_ok(s, 5, &b);
		assert_int_equal(b.period, 1);
		assert_true(b.spent == 2 + i);
		assert_int_equal(b.charges, 1 + i);
		assert_int_equal(charge(s, 5, 1, &err), 0);
		fl_store_close(s);
	}
	s = open_ok(5);
	assert_int_equal(charge(s, 5, 1, &err), -ENOSPC);
	json_t *j = fl_store_budget_json(s, 5, 100);
	assert_int_equal(json_array_size(json_object_get(j, "periods")), 1);
	json_decref(j);
	fl_store_close(s);
}

static void test_charge_survives_kill(void **state)
{
	(void)state;
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		fl_store *s = NULL;
		sovmesh_error err = {0};
		if (fl_store_open(dbpath, 5, &s, &err) < 0)
			_exit(2);
		if (fl_store_charge(s, 5, 0, 1.25, 1e-6, "gaussian", NULL, 7, &err) != 0)
			_exit(3);
		raise(SIGKILL); /* no close, no checkpoint */
		_exit(4);
	}
	int status = 0;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(WTERMSIG(status), SIGKILL);

	fl_store *s = open_ok(5);
	fl_budget b;
	budget_ok(s, 5, &b);
	assert_int_equal(b.charges, 1);
	assert_true(b.spent == 1.25);
	json_t *j = fl_store_budget_json(s, 5, 10);
	json_t *h = json_array_get(json_object_get(j, "history"), 0);
	assert_int_equal(json_integer_value(json_object_get(h, "time")), 7);
	json_decref(j);
	fl_store_close(s);
}

static void test_kill_during_charges_consistent(void **state)
{
	(void)state;
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(fds[0]);
		fl_store *s = NULL;
		sovmesh_error err = {0};
		if (fl_store_open(dbpath, 1e9, &s, &err) < 0)
			_exit(2);
		for (;;) {
			if (fl_store_charge(s, 1e9, 0, 0.5, 0, "laplace", NULL, 1, &err) != 0)
				_exit(3);
			if (write(fds[1], "c", 1) != 1)
				_exit(4);
		}
	}
	close(fds[1]);
	/* Kill it once it is well under way, wherever it is. */
	char c;
	size_t acked = 0;
	while (acked < 25 && read(fds[0], &c, 1) == 1)
		acked++;
	assert_int_equal(acked, 25);
	assert_int_equal(kill(pid, SIGKILL), 0);
	int status = 0;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	while (read(fds[0], &c, 1) == 1)
		acked++;
	close(fds[0]);

	fl_store *s = open_ok(1e9);
	fl_budget b;
	budget_ok(s, 1e9, &b);
	/* Every acknowledged charge is there, at most one more (committed
	 * but not yet acknowledged), and spent is exactly their sum. */
	assert_true((size_t)b.charges >= acked);
	assert_true((size_t)b.charges <= acked + 1);
	assert_true(b.spent == 0.5 * (double)b.charges);
	json_t *j = fl_store_budget_json(s, 1e9, SIZE_MAX);
	assert_int_equal(json_array_size(json_object_get(j, "history")), (size_t)b.charges);
	json_decref(j);
	fl_store_close(s);
}

/* ---- refused files ------------------------------------------------------ */

static void exec_sql(const char *sql)
{
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
	char *msg = NULL;
	int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
	if (rc != SQLITE_OK)
		fail_msg("%s: %s", sql, msg);
	assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

static void test_refuses_foreign_database(void **state)
{
	(void)state;
	/* Some other program's database, no application_id. */
	exec_sql("CREATE TABLE t (x); INSERT INTO t VALUES (1)");
	refused_untouched(10, -EINVAL, "not a sovmesh federated-learning database");
	/* Another application_id, even if otherwise empty. */
	assert_int_equal(unlink(dbpath), 0);
	exec_sql("PRAGMA application_id = 12345");
	refused_untouched(10, -EINVAL, "application_id 12345");
	/* A foreign database in WAL mode. */
	assert_int_equal(unlink(dbpath), 0);
	exec_sql("PRAGMA journal_mode = WAL; CREATE TABLE t (x)");
	refused_untouched(10, -EINVAL, "not a sovmesh federated-learning database");
}

static void test_refuses_newer_schema(void **state)
{
	(void)state;
	fl_store *s = open_ok(10);
	sovmesh_error err = {0};
	assert_int_equal(charge(s, 10, 1, &err), 0);
	fl_store_close(s);
	exec_sql("PRAGMA user_version = 3");
	refused_untouched(10, -EINVAL, "newer sovmesh (schema version 3");
	exec_sql("PRAGMA user_version = 0");
	refused_untouched(10, -EINVAL, "invalid schema version 0");
	/* Back to 2 it is ours again, the charge still there. */
	exec_sql("PRAGMA user_version = 2");
	s = open_ok(10);
	fl_budget b;
	budget_ok(s, 10, &b);
	assert_int_equal(b.charges, 1);
	fl_store_close(s);
}

/* A version 1 file (charges without family and noise multiplier) is
 * upgraded in place, its ledger intact. */
static void test_migrates_version_1(void **state)
{
	(void)state;
	fl_store *s = open_ok(10);
	sovmesh_error err = {0};
	assert_int_equal(charge(s, 10, 1.5, &err), 0);
	fl_store_close(s);
	exec_sql("ALTER TABLE charges DROP COLUMN noise_multiplier;"
	         "ALTER TABLE charges DROP COLUMN family; PRAGMA user_version = 1");
	s = open_ok(10);
	fl_budget b;
	budget_ok(s, 10, &b);
	assert_true(b.spent == 1.5 && b.charges == 1);
	assert_int_equal(charge(s, 10, 1, &err), 0);
	budget_ok(s, 10, &b);
	assert_true(b.spent == 2.5);
	fl_store_close(s);
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
	sqlite3_stmt *st = NULL;
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int(st, 0), 2);
	sqlite3_finalize(st);
	sqlite3_close(db);
}

/* Under the RDP accountant many small Laplace charges cost less than
 * their sum, and the budget check composes the candidate too. */
static void test_rdp_accountant(void **state)
{
	(void)state;
	fl_store *s = open_ok(6);
	sovmesh_error err = {0};
	fl_store_set_accountant(s, ACCOUNTANT_RDP, 1e-6);
	/* Laplace at ε = 0.1: b/Δ = 1/ε = 10. */
	accountant_release rel = {.family = SOVMESH_NOISE_LAPLACE, .noise_multiplier = 10,
	                          .epsilon = 0.1, .delta = 0};
	int ok = 0;
	while (fl_store_charge_release(s, 6, 0, &rel, "laplace", NULL, 1, &err) == 0)
		ok++;
	assert_int_equal(err.code, -ENOSPC);
	/* Basic composition would have stopped at 60 charges. */
	assert_true(ok > 60);
	fl_budget b;
	budget_ok(s, 6, &b);
	assert_true(b.spent <= 6 + 1e-9 && b.spent > 5);
	assert_true(b.delta_spent == 1e-6);
	json_t *j = fl_store_budget_json(s, 6, 5);
	assert_string_equal(json_string_value(json_object_get(j, "accountant")), "rdp");
	assert_true(json_real_value(json_object_get(j, "target_delta")) == 1e-6);
	json_decref(j);
	/* Back to basic: the same ledger now counts as its plain sum. */
	fl_store_set_accountant(s, ACCOUNTANT_BASIC, 0);
	budget_ok(s, 6, &b);
	assert_true(fabs(b.spent - 0.1 * ok) < 1e-9);
	assert_true(b.remaining == 0);
	fl_store_close(s);
}

static void test_refuses_garbage_and_corrupt(void **state)
{
	(void)state;
	FILE *f = fopen(dbpath, "wb");
	assert_non_null(f);
	for (int i = 0; i < 8192; i++)
		fputc((i * 7 + 3) & 0xff, f);
	fclose(f);
	assert_int_equal(chmod(dbpath, 0600), 0);
	refused_untouched(10, -EIO, "cannot read it");

	/* A real store whose samples table is damaged (nothing that open
	 * itself reads): only the integrity check can tell. */
	assert_int_equal(unlink(dbpath), 0);
	fl_store *s = open_ok(10);
	char text[3000];
	memset(text, 't', sizeof(text) - 1);
	text[sizeof(text) - 1] = '\0';
	for (int i = 0; i < 40; i++)
		add_sample(s, text, i);
	fl_store_close(s);
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db,
	                                    "SELECT rootpage, (SELECT page_size FROM "
	                                    "pragma_page_size) FROM sqlite_master "
	                                    "WHERE name = 'samples'",
	                                    -1, &st, NULL),
	                 SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	size_t root = (size_t)sqlite3_column_int64(st, 0);
	size_t page = (size_t)sqlite3_column_int64(st, 1);
	sqlite3_finalize(st);
	assert_int_equal(sqlite3_close(db), SQLITE_OK);
	size_t n;
	char *buf = slurp(dbpath, &n);
	assert_true(root > 1 && n >= root * page);
	memset(buf + (root - 1) * page, 0xaa, page);
	f = fopen(dbpath, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(buf, 1, n, f), n);
	fclose(f);
	free(buf);
	refused_untouched(10, -EIO, "integrity check failed");
}

static void test_bad_configured_total(void **state)
{
	(void)state;
	const double bad[] = {0, -1, NAN, INFINITY};
	for (size_t i = 0; i < 4; i++) {
		fl_store *s = (fl_store *)1;
		sovmesh_error err = {0};
		assert_int_equal(fl_store_open(dbpath, bad[i], &s, &err), -EINVAL);
		assert_null(s);
		assert_non_null(strstr(err.message, "privacy budget"));
	}
	assert_int_equal(dir_entries(), 0); /* nothing created */
	/* A missing directory. */
	char p[600];
	snprintf(p, sizeof(p), "%s/nope/fl.db", tmpdir);
	fl_store *s = NULL;
	sovmesh_error err = {0};
	assert_int_equal(fl_store_open(p, 1, &s, &err), -ENOENT);
	assert_non_null(strstr(err.message, p));
}

static void test_file_mode_0600(void **state)
{
	(void)state;
	mode_t old = umask(0);
	fl_store *s = open_ok(10);
	umask(old);
	struct stat st;
	assert_int_equal(stat(dbpath, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	add_sample(s, "p", 1);
	char wal[600];
	snprintf(wal, sizeof(wal), "%s-wal", dbpath);
	assert_int_equal(stat(wal, &st), 0); /* WAL mode */
	assert_int_equal(st.st_mode & 07777, 0600);
	fl_store_close(s);

	/* An existing store of ours with a loose mode is tightened. */
	assert_int_equal(chmod(dbpath, 0644), 0);
	s = open_ok(10);
	assert_int_equal(stat(dbpath, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	assert_int_equal(fl_store_sample_count(s), 1);
	fl_store_close(s);
}

/* ---- inbox and sync ----------------------------------------------------- */

static void test_inbox(void **state)
{
	(void)state;
	fl_store *s = open_ok(10);
	sovmesh_error err = {0};
	int64_t id1 = 0, id2 = 0, id3 = 0;
	fl_inbox_list l = {0};

	assert_int_equal(fl_store_inbox_pending(s, &l, &err), 0);
	assert_int_equal(l.count, 0);
	assert_int_equal(
	    fl_store_inbox_add(s, FP_A, "kitchen", "/x/a.safetensors", 5, 3, 100, &id1, &err), 0);
	/* Uppercase fingerprints are normalised. */
	char upper[65];
	for (int i = 0; i < 64; i++)
		upper[i] = (char)(FP_B[i] >= 'a' ? FP_B[i] - 32 : FP_B[i]);
	upper[64] = '\0';
	assert_int_equal(
	    fl_store_inbox_add(s, upper, NULL, "/x/b.safetensors", 7, 1, 101, &id2, &err), 0);
	/* The same round of the same peer while it waits: a replay. */
	assert_int_equal(
	    fl_store_inbox_add(s, FP_A, "kitchen", "/x/c.safetensors", 5, 3, 102, &id3, &err),
	    -EEXIST);
	/* Bad input. */
	assert_int_equal(fl_store_inbox_add(s, "abc", "n", "/p", 1, 1, 1, NULL, &err), -EINVAL);
	assert_int_equal(fl_store_inbox_add(s, FP_A "0", "n", "/p", 1, 1, 1, NULL, &err), -EINVAL);
	char nonhex[65];
	memcpy(nonhex, FP_A, 65);
	nonhex[10] = 'g';
	assert_int_equal(fl_store_inbox_add(s, nonhex, "n", "/p", 1, 1, 1, NULL, &err), -EINVAL);
	assert_int_equal(fl_store_inbox_add(s, FP_A, "n", "", 1, 9, 1, NULL, &err), -EINVAL);
	assert_int_equal(fl_store_inbox_add(s, FP_A, "n", NULL, 1, 9, 1, NULL, &err), -EINVAL);
	assert_int_equal(fl_store_inbox_add(s, FP_A, "n", "/p", 0, 9, 1, NULL, &err), -EINVAL);
	assert_int_equal(fl_store_inbox_add(s, FP_A, "\xc3", "/p", 1, 9, 1, NULL, &err), -EINVAL);

	assert_int_equal(fl_store_inbox_pending(s, &l, &err), 0);
	assert_int_equal(l.count, 2);
	assert_int_equal(l.rows[0].id, id1);
	assert_string_equal(l.rows[0].sender_fp, FP_A);
	assert_string_equal(l.rows[0].sender_name, "kitchen");
	assert_string_equal(l.rows[0].path, "/x/a.safetensors");
	assert_int_equal(l.rows[0].received, 100);
	assert_int_equal(l.rows[0].samples, 5);
	assert_int_equal(l.rows[0].sender_round, 3);
	assert_int_equal(l.rows[1].id, id2);
	assert_string_equal(l.rows[1].sender_fp, FP_B);
	assert_string_equal(l.rows[1].sender_name, "");
	fl_inbox_list_free(&l);

	assert_int_equal(fl_store_inbox_done(s, &id1, 1, &err), 0);
	assert_int_equal(fl_store_inbox_done(s, NULL, 0, &err), 0);
	fl_store_close(s);
	s = open_ok(10);
	assert_int_equal(fl_store_inbox_pending(s, &l, &err), 0);
	assert_int_equal(l.count, 1);
	assert_int_equal(l.rows[0].id, id2);
	fl_inbox_list_free(&l);
	/* Once aggregated, the same peer round may arrive again. */
	assert_int_equal(
	    fl_store_inbox_add(s, FP_A, "kitchen", "/x/c.safetensors", 5, 3, 103, &id3, &err), 0);
	int64_t both[2] = {id2, id3};
	assert_int_equal(fl_store_inbox_done(s, both, 2, &err), 0);
	assert_int_equal(fl_store_inbox_pending(s, &l, &err), 0);
	assert_int_equal(l.count, 0);
	fl_inbox_list_free(&l);
	fl_store_close(s);
}

static void test_sync_notes(void **state)
{
	(void)state;
	fl_store *s = open_ok(10);
	json_t *j = fl_store_sync_json(s);
	assert_true(json_is_object(j));
	assert_int_equal(json_object_size(j), 0);
	json_decref(j);

	assert_int_equal(fl_store_note_sync(s, FP_A, 1, 100), 0);
	assert_int_equal(fl_store_note_sync(s, FP_B, 0, 200), 0);
	assert_int_equal(fl_store_note_sync(s, FP_A, 0, 300), 0);
	assert_int_equal(fl_store_note_sync(s, FP_A, 1, 400), 0);
	assert_int_equal(fl_store_note_sync(s, "xyz", 1, 1), -EINVAL);
	assert_int_equal(fl_store_note_sync(s, NULL, 1, 1), -EINVAL);
	fl_store_close(s);

	s = open_ok(10);
	j = fl_store_sync_json(s);
	assert_int_equal(json_object_size(j), 2);
	json_t *a = json_object_get(j, FP_A), *b = json_object_get(j, FP_B);
	assert_int_equal(json_integer_value(json_object_get(a, "last_sent")), 400);
	assert_int_equal(json_integer_value(json_object_get(a, "last_received")), 300);
	assert_true(json_is_null(json_object_get(b, "last_sent")));
	assert_int_equal(json_integer_value(json_object_get(b, "last_received")), 200);
	json_decref(j);
	fl_store_close(s);
}

static void test_budget_json_shape(void **state)
{
	(void)state;
	fl_store *s = open_ok(10);
	sovmesh_error err = {0};
	int64_t rid = 0;
	fl_sample_list l = {0};
	add_sample(s, "p", 1);
	assert_int_equal(fl_store_round_begin(s, 2, 1, &rid, &l, &err), 0);
	fl_sample_list_free(&l);
	json_t *peers = json_pack("[s]", FP_A);
	assert_int_equal(fl_store_charge(s, 10, rid, 1, 1e-6, "gaussian", peers, 10, &err), 0);
	json_decref(peers);
	assert_int_equal(fl_store_charge(s, 10, 0, 2, 0, "laplace", NULL, 20, &err), 0);
	assert_int_equal(fl_store_charge(s, 10, 0, 0.5, 0, "laplace", NULL, 30, &err), 0);

	json_t *j = fl_store_budget_json(s, 8, 2);
	assert_non_null(j);
	assert_int_equal(json_integer_value(json_object_get(j, "period")), 1);
	assert_true(json_is_integer(json_object_get(j, "period_started")));
	assert_true(json_real_value(json_object_get(j, "total")) == 8);
	assert_true(json_real_value(json_object_get(j, "spent")) == 3.5);
	assert_true(json_real_value(json_object_get(j, "remaining")) == 4.5);
	assert_true(json_real_value(json_object_get(j, "delta_spent")) == 1e-6);
	assert_int_equal(json_integer_value(json_object_get(j, "charges")), 3);

	/* Newest first, capped. */
	json_t *h = json_object_get(j, "history");
	assert_int_equal(json_array_size(h), 2);
	json_t *h0 = json_array_get(h, 0), *h1 = json_array_get(h, 1);
	assert_int_equal(json_integer_value(json_object_get(h0, "time")), 30);
	assert_true(json_is_null(json_object_get(h0, "round")));
	assert_true(json_real_value(json_object_get(h0, "epsilon")) == 0.5);
	assert_true(json_real_value(json_object_get(h0, "delta")) == 0);
	assert_string_equal(json_string_value(json_object_get(h0, "mechanism")), "laplace");
	assert_int_equal(json_array_size(json_object_get(h0, "peers")), 0);
	assert_int_equal(json_integer_value(json_object_get(h0, "period")), 1);
	assert_int_equal(json_integer_value(json_object_get(h1, "time")), 20);
	json_decref(j);

	j = fl_store_budget_json(s, 10, 10);
	h = json_object_get(j, "history");
	assert_int_equal(json_array_size(h), 3);
	json_t *h2 = json_array_get(h, 2);
	assert_int_equal(json_integer_value(json_object_get(h2, "round")), rid);
	assert_string_equal(json_string_value(json_array_get(json_object_get(h2, "peers"), 0)),
	                    FP_A);
	json_t *periods = json_object_get(j, "periods");
	assert_int_equal(json_array_size(periods), 1);
	json_t *p = json_array_get(periods, 0);
	assert_int_equal(json_integer_value(json_object_get(p, "period")), 1);
	assert_true(json_is_integer(json_object_get(p, "started")));
	/* Reading the budget with 8 above lowered the period for good. */
	assert_true(json_real_value(json_object_get(p, "total")) == 8);
	assert_true(json_real_value(json_object_get(p, "spent")) == 3.5);
	assert_true(json_is_string(json_object_get(p, "reason")));
	json_decref(j);

	/* The round's epsilon counts only its own charges. */
	j = fl_store_last_round_json(s);
	assert_true(json_real_value(json_object_get(j, "epsilon")) == 1);
	json_decref(j);
	assert_null(fl_store_budget_json(s, NAN, 10));
	fl_store_close(s);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup_tmp, teardown_tmp)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(test_samples_add_count),
	    T(test_samples_validation),
	    T(test_round_done_and_failed),
	    T(test_round_interrupted_on_reopen),
	    T(test_charge_within_budget),
	    T(test_charge_bad_arguments),
	    T(test_charge_refused_at_boundary),
	    T(test_configured_total_lower_and_raise),
	    T(test_budget_survives_reopen),
	    T(test_charge_survives_kill),
	    T(test_kill_during_charges_consistent),
	    T(test_refuses_foreign_database),
	    T(test_refuses_newer_schema),
	    T(test_migrates_version_1),
	    T(test_rdp_accountant),
	    T(test_refuses_garbage_and_corrupt),
	    T(test_bad_configured_total),
	    T(test_file_mode_0600),
	    T(test_inbox),
	    T(test_sync_notes),
	    T(test_budget_json_shape),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

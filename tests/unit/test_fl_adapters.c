/*
 * fl_adapters.c: the adapter history — "initial" then a000001, ...;
 * loading the current adapter; reopening; rollback (and its directory
 * removed); pruning that keeps "initial"; sequence numbers that never
 * repeat; malformed history files refused and left byte for byte; the
 * history written atomically, and a failed write leaving the history as
 * it was.  Each test works in its own mkdtemp directory.
 */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include <jansson.h>

#include "fl_adapters.h"
#include "tensor_set.h"

static char tmpdir[256];
static char adir[512]; /* the adapters directory, not yet created */

static int setup_tmp(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_fl_adapters.XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	snprintf(adir, sizeof(adir), "%s/adapters", tmpdir);
	return 0;
}

static int teardown_tmp(void **state)
{
	(void)state;
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static const char *in_adir(const char *rel)
{
	static char p[768];
	snprintf(p, sizeof(p), "%s/%s", adir, rel);
	return p;
}

static int exists(const char *rel)
{
	struct stat st;
	return stat(in_adir(rel), &st) == 0;
}

/* Two F32 tensors whose values all start at `base`. */
static sovmesh_tensor_set *adapter_set(double base)
{
	sovmesh_tensor_set *set = tset_new(NULL, 2);
	assert_non_null(set);
	uint64_t sa[2] = {2, 3}, sb[2] = {3, 2};
	assert_int_equal(tset_init_tensor(set, 0, "m.q_proj.lora_A.weight", SOVMESH_DTYPE_F32, 2, sa),
	                 0);
	assert_int_equal(tset_init_tensor(set, 1, "m.q_proj.lora_B.weight", SOVMESH_DTYPE_F32, 2, sb),
	                 0);
	for (size_t k = 0; k < 2; k++)
		for (uint64_t i = 0; i < 6; i++)
			sovmesh_tensor_set_value(&set->tensors[k], i, base + (double)(k * 10 + i));
	return set;
}

static fl_adapters *open_ok(void)
{
	fl_adapters *a = NULL;
	sovmesh_error err = {0};
	if (fl_adapters_open(adir, &a, &err) != 0)
		fail_msg("open: %s", err.message);
	return a;
}

/* Commit adapter_set(base); returns the name through a static buffer. */
static const char *commit(fl_adapters *a, double base)
{
	static char name[FL_ADAPTER_NAME_MAX];
	sovmesh_tensor_set *set = adapter_set(base);
	sovmesh_error err = {0};
	memset(name, 'X', sizeof(name));
	if (fl_adapters_commit(a, set, NULL, name, &err) != 0)
		fail_msg("commit: %s", err.message);
	tset_free(set);
	return name;
}

/* The history as a comma-separated string ("initial,a000001"). */
static const char *history(const fl_adapters *a)
{
	static char out[512];
	out[0] = 0;
	json_t *j = fl_adapters_json(a);
	assert_non_null(j);
	size_t i;
	json_t *v;
	json_array_foreach(json_object_get(j, "history"), i, v)
	{
		if (i)
			strcat(out, ",");
		strcat(out, json_string_value(v));
	}
	json_decref(j);
	return out;
}

/* First value of the current adapter, loaded from disk. */
static double current_first(const fl_adapters *a)
{
	sovmesh_tensor_set *set = NULL;
	sovmesh_error err = {0};
	if (fl_adapters_load_current(a, &set, NULL, &err) != 0)
		fail_msg("load: %s", err.message);
	double v = sovmesh_tensor_get(&set->tensors[0], 0);
	tset_free(set);
	return v;
}

static char *read_all(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	char *buf = malloc(1 << 16);
	assert_non_null(buf);
	*len = fread(buf, 1, (1 << 16) - 1, f);
	buf[*len] = 0;
	fclose(f);
	return buf;
}

static void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static void test_empty(void **state)
{
	(void)state;
	fl_adapters *a = open_ok();
	struct stat st;
	assert_int_equal(stat(adir, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0700);
	assert_int_equal(fl_adapters_count(a), 0);
	assert_null(fl_adapters_current(a));
	assert_null(fl_adapters_previous(a));
	sovmesh_tensor_set *set = (void *)1;
	char *cfg = (void *)1;
	sovmesh_error err = {0};
	assert_int_equal(fl_adapters_load_current(a, &set, &cfg, &err), -ENOENT);
	assert_non_null(strstr(err.message, "no adapter yet"));
	assert_int_equal(fl_adapters_rollback(a, &err), -ENOENT);
	/* Opening writes nothing. */
	assert_false(exists("history.json"));
	json_t *j = fl_adapters_json(a);
	assert_true(json_is_null(json_object_get(j, "current")));
	assert_true(json_is_null(json_object_get(j, "previous")));
	assert_int_equal(json_array_size(json_object_get(j, "history")), 0);
	json_decref(j);
	fl_adapters_free(a);
	fl_adapters_free(NULL);
}

static void test_commit_names_and_load(void **state)
{
	(void)state;
	fl_adapters *a = open_ok();
	assert_string_equal(commit(a, 0), "initial");
	assert_int_equal(fl_adapters_count(a), 1);
	assert_string_equal(fl_adapters_current(a), "initial");
	assert_null(fl_adapters_previous(a));
	assert_string_equal(commit(a, 100), "a000001");
	assert_string_equal(commit(a, 200), "a000002");
	assert_int_equal(fl_adapters_count(a), 3);
	assert_string_equal(fl_adapters_current(a), "a000002");
	assert_string_equal(fl_adapters_previous(a), "a000001");
	assert_string_equal(history(a), "initial,a000001,a000002");
	assert_true(exists("initial/adapter_model.safetensors"));
	assert_true(exists("a000001/adapter_config.json"));

	char dir[4096];
	fl_adapters_dir(a, "a000001", dir, sizeof(dir));
	assert_string_equal(dir, in_adir("a000001"));

	/* The current adapter, with its config, equal to what was committed. */
	const char *cfg_in = "{\"peft_type\":\"LORA\",\"r\":2,\"lora_alpha\":4}";
	sovmesh_tensor_set *set = adapter_set(300);
	char name[FL_ADAPTER_NAME_MAX];
	sovmesh_error err = {0};
	assert_int_equal(fl_adapters_commit(a, set, cfg_in, name, &err), 0);
	assert_string_equal(name, "a000003");
	/* name_out may be NULL. */
	sovmesh_tensor_set *back = NULL;
	char *cfg = NULL;
	if (fl_adapters_load_current(a, &back, &cfg, &err) != 0)
		fail_msg("%s", err.message);
	assert_int_equal(back->count, 2);
	for (size_t k = 0; k < 2; k++) {
		assert_string_equal(back->tensors[k].name, set->tensors[k].name);
		assert_int_equal(back->tensors[k].dtype, SOVMESH_DTYPE_F32);
		assert_int_equal(back->tensors[k].nbytes, set->tensors[k].nbytes);
		assert_memory_equal(back->tensors[k].data, set->tensors[k].data,
		                    set->tensors[k].nbytes);
	}
	assert_string_equal(cfg, cfg_in);
	free(cfg);

	json_t *j = fl_adapters_json(a);
	assert_string_equal(json_string_value(json_object_get(j, "current")), "a000003");
	assert_string_equal(json_string_value(json_object_get(j, "previous")), "a000002");
	json_decref(j);

	/* The loaded copy outlives the directory it came from. */
	assert_int_equal(fl_adapters_rollback(a, &err), 0);
	assert_false(exists("a000003"));
	assert_true(((float *)back->tensors[1].data)[5] == 315.0f);
	tset_free(back);

	assert_int_equal(fl_adapters_commit(a, set, NULL, NULL, &err), 0);
	assert_string_equal(fl_adapters_current(a), "a000004");
	tset_free(set);
	fl_adapters_free(a);
}

static void test_reopen(void **state)
{
	(void)state;
	fl_adapters *a = open_ok();
	commit(a, 0);
	commit(a, 1);
	commit(a, 2);
	fl_adapters_free(a);

	a = open_ok();
	assert_int_equal(fl_adapters_count(a), 3);
	assert_string_equal(history(a), "initial,a000001,a000002");
	assert_string_equal(fl_adapters_current(a), "a000002");
	assert_true(current_first(a) == 2.0);
	assert_string_equal(commit(a, 3), "a000003");
	fl_adapters_free(a);

	a = open_ok();
	assert_string_equal(history(a), "initial,a000001,a000002,a000003");
	fl_adapters_free(a);
}

static void test_rollback(void **state)
{
	(void)state;
	fl_adapters *a = open_ok();
	commit(a, 0);
	sovmesh_error err = {0};
	/* One entry: nothing to go back to. */
	assert_int_equal(fl_adapters_rollback(a, &err), -ENOENT);
	assert_non_null(strstr(err.message, "there is no previous adapter to roll back to"));
	assert_string_equal(fl_adapters_current(a), "initial");
	assert_true(exists("initial"));

	commit(a, 10);
	commit(a, 20);
	assert_true(current_first(a) == 20.0);
	assert_int_equal(fl_adapters_rollback(a, &err), 0);
	assert_string_equal(fl_adapters_current(a), "a000001");
	assert_string_equal(fl_adapters_previous(a), "initial");
	assert_true(current_first(a) == 10.0);
	assert_false(exists("a000002"));
	assert_true(exists("a000001"));

	/* It is on disk. */
	fl_adapters_free(a);
	a = open_ok();
	assert_string_equal(history(a), "initial,a000001");

	assert_int_equal(fl_adapters_rollback(a, &err), 0);
	assert_string_equal(fl_adapters_current(a), "initial");
	assert_true(current_first(a) == 0.0);
	assert_false(exists("a000001"));
	memset(&err, 0, sizeof(err));
	assert_int_equal(fl_adapters_rollback(a, &err), -ENOENT);
	assert_non_null(strstr(err.message, "no previous adapter"));
	assert_true(exists("initial"));
	fl_adapters_free(a);
}

/* Rolled-back names are never handed out again, across restarts too. */
static void test_names_never_repeat(void **state)
{
	(void)state;
	fl_adapters *a = open_ok();
	sovmesh_error err = {0};
	commit(a, 0);
	assert_string_equal(commit(a, 1), "a000001");
	assert_string_equal(commit(a, 2), "a000002");
	assert_int_equal(fl_adapters_rollback(a, &err), 0);
	assert_int_equal(fl_adapters_rollback(a, &err), 0);
	assert_string_equal(fl_adapters_current(a), "initial");
	assert_string_equal(commit(a, 3), "a000003");
	assert_int_equal(fl_adapters_rollback(a, &err), 0);
	fl_adapters_free(a);

	/* Only "initial" is left in the history; the file remembers the rest. */
	a = open_ok();
	assert_string_equal(history(a), "initial");
	assert_string_equal(commit(a, 4), "a000004");
	assert_string_equal(history(a), "initial,a000004");
	assert_true(current_first(a) == 4.0);
	fl_adapters_free(a);
}

static void test_prune_keeps_initial(void **state)
{
	(void)state;
	fl_adapters *a = open_ok();
	for (int i = 0; i < FL_ADAPTERS_KEPT; i++)
		commit(a, i);
	assert_int_equal(fl_adapters_count(a), FL_ADAPTERS_KEPT);
	assert_true(exists("a000001"));

	char want[32];
	for (int i = FL_ADAPTERS_KEPT; i < FL_ADAPTERS_KEPT + 3; i++) {
		commit(a, i);
		assert_int_equal(fl_adapters_count(a), FL_ADAPTERS_KEPT);
		/* The oldest non-initial directory went. */
		snprintf(want, sizeof(want), "a%06d", i - FL_ADAPTERS_KEPT + 1);
		assert_false(exists(want));
		snprintf(want, sizeof(want), "a%06d", i - FL_ADAPTERS_KEPT + 2);
		assert_true(exists(want));
	}
	assert_true(exists("initial/adapter_model.safetensors"));
	/* "initial" is still first, then the newest. */
	char expect[256] = "initial";
	for (int i = 4; i <= FL_ADAPTERS_KEPT + 2; i++) {
		snprintf(want, sizeof(want), ",a%06d", i);
		strcat(expect, want);
	}
	assert_string_equal(history(a), expect);
	fl_adapters_free(a);

	a = open_ok();
	assert_string_equal(history(a), expect);
	assert_true(current_first(a) == (double)(FL_ADAPTERS_KEPT + 2));
	/* Rolling all the way back ends at "initial". */
	sovmesh_error err = {0};
	while (fl_adapters_count(a) > 1)
		assert_int_equal(fl_adapters_rollback(a, &err), 0);
	assert_string_equal(fl_adapters_current(a), "initial");
	assert_true(current_first(a) == 0.0);
	fl_adapters_free(a);
}

/* history.json: replaced atomically, private, nothing left behind. */
static void test_history_file(void **state)
{
	(void)state;
	fl_adapters *a = open_ok();
	commit(a, 0);
	commit(a, 1);
	sovmesh_error err = {0};
	assert_int_equal(fl_adapters_rollback(a, &err), 0);
	commit(a, 2);
	fl_adapters_free(a);

	struct stat st;
	assert_int_equal(stat(in_adir("history.json"), &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0600);
	size_t len;
	char *text = read_all(in_adir("history.json"), &len);
	assert_non_null(text);
	json_t *root = json_loads(text, 0, NULL);
	assert_non_null(root);
	assert_int_equal(json_integer_value(json_object_get(root, "version")), 1);
	json_t *h = json_object_get(root, "history");
	assert_int_equal(json_array_size(h), 2);
	assert_string_equal(json_string_value(json_array_get(h, 0)), "initial");
	assert_string_equal(json_string_value(json_array_get(h, 1)), "a000002");
	json_decref(root);
	free(text);

	/* Only the adapters and the history: no temporary files. */
	DIR *d = opendir(adir);
	assert_non_null(d);
	struct dirent *e;
	int n = 0;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		n++;
		if (strcmp(e->d_name, "history.json") && strcmp(e->d_name, "initial") &&
		    strcmp(e->d_name, "a000002"))
			fail_msg("unexpected entry '%s'", e->d_name);
	}
	closedir(d);
	assert_int_equal(n, 3);
}

/* A history write that fails leaves the history, in memory and on disk,
 * as it was; the next good commit prunes what it should. */
static void test_failed_write(void **state)
{
	(void)state;
	fl_adapters *a = open_ok();
	for (int i = 0; i < FL_ADAPTERS_KEPT; i++)
		commit(a, i);
	char before[512];
	snprintf(before, sizeof(before), "%s", history(a));

	/* rename() over a directory fails, whoever runs the test. */
	assert_int_equal(unlink(in_adir("history.json")), 0);
	assert_int_equal(mkdir(in_adir("history.json"), 0700), 0);
	sovmesh_tensor_set *set = adapter_set(50);
	char name[FL_ADAPTER_NAME_MAX] = "unset";
	sovmesh_error err = {0};
	assert_true(fl_adapters_commit(a, set, NULL, name, &err) < 0);
	assert_non_null(strstr(err.message, "history.json"));
	assert_string_equal(name, "unset");
	assert_int_equal(fl_adapters_count(a), FL_ADAPTERS_KEPT);
	assert_string_equal(history(a), before);
	assert_true(current_first(a) == (double)(FL_ADAPTERS_KEPT - 1));
	assert_true(exists("a000001"));
	/* A rollback that cannot be written changes nothing either. */
	assert_true(fl_adapters_rollback(a, &err) < 0);
	assert_string_equal(history(a), before);
	assert_true(exists(fl_adapters_current(a)));

	assert_int_equal(rmdir(in_adir("history.json")), 0);
	assert_int_equal(fl_adapters_commit(a, set, NULL, name, &err), 0);
	assert_int_equal(fl_adapters_count(a), FL_ADAPTERS_KEPT);
	assert_string_equal(fl_adapters_current(a), name);
	assert_false(exists("a000001"));
	assert_true(current_first(a) == 50.0);
	tset_free(set);
	fl_adapters_free(a);

	/* Only what the history names is left on disk. */
	a = open_ok();
	DIR *d = opendir(adir);
	assert_non_null(d);
	struct dirent *e;
	int n = 0;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' || strcmp(e->d_name, "history.json") == 0)
			continue;
		n++;
		if (!strstr(history(a), e->d_name))
			fail_msg("'%s' is not in the history %s", e->d_name, history(a));
	}
	closedir(d);
	assert_int_equal(n, FL_ADAPTERS_KEPT);
	fl_adapters_free(a);
}

/* Each malformed history is refused with -EINVAL and left byte for byte. */
static void test_malformed_history(void **state)
{
	(void)state;
	static const char *const bad[] = {
	    "not json at all",
	    "",
	    "[\"initial\"]",
	    "{\"history\":[\"initial\"]}",
	    "{\"version\":2,\"history\":[\"initial\"]}",
	    "{\"version\":\"1\",\"history\":[\"initial\"]}",
	    "{\"version\":1}",
	    "{\"version\":1,\"history\":\"initial\"}",
	    "{\"version\":1,\"history\":[\"initial\",\"../x\"]}",
	    "{\"version\":1,\"history\":[\"initial\",\"a00001\"]}",
	    "{\"version\":1,\"history\":[\"initial\",\"a0000001\"]}",
	    "{\"version\":1,\"history\":[\"initial\",\"a00000x\"]}",
	    "{\"version\":1,\"history\":[\"initial\",\"b000001\"]}",
	    "{\"version\":1,\"history\":[\"initial\",7]}",
	    "{\"version\":1,\"history\":[\"initial\",\"\"]}",
	    ("{\"version\":1,\"history\":[\"initial\",\"a000001\",\"a000002\",\"a000003\","
	     "\"a000004\",\"a000005\",\"a000006\"]}"),
	    /* A repeated name: a rollback would delete the current adapter. */
	    "{\"version\":1,\"history\":[\"initial\",\"a000001\",\"a000001\"]}",
	    "{\"version\":1,\"history\":[\"initial\",\"initial\"]}",
	    /* "initial" is only ever the oldest entry. */
	    "{\"version\":1,\"history\":[\"a000001\",\"initial\"]}",
	};
	assert_int_equal(mkdir(adir, 0700), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		write_text(in_adir("history.json"), bad[i]);
		fl_adapters *a = (void *)1;
		sovmesh_error err = {0};
		int r = fl_adapters_open(adir, &a, &err);
		if (r != -EINVAL)
			fail_msg("history %s: got %d '%s', want -EINVAL", bad[i], r, err.message);
		assert_ptr_equal(a, (void *)1);
		assert_non_null(strstr(err.message, "history.json"));
		assert_null(strchr(err.message, '\n'));
		size_t len;
		char *text = read_all(in_adir("history.json"), &len);
		assert_non_null(text);
		assert_int_equal(len, strlen(bad[i]));
		assert_string_equal(text, bad[i]);
		free(text);
	}

	/* The same shape with good names opens; "next" is honoured. */
	write_text(in_adir("history.json"),
	           "{\"version\":1,\"history\":[\"initial\",\"a000003\"],\"next\":9}");
	fl_adapters *a = open_ok();
	assert_int_equal(fl_adapters_count(a), 2);
	assert_string_equal(fl_adapters_current(a), "a000003");
	assert_string_equal(fl_adapters_previous(a), "initial");
	fl_adapters_free(a);
	/* (The adapter directories are not there: only names are checked.) */
	assert_int_equal(mkdir(in_adir("a000003"), 0700), 0);
	a = open_ok();
	assert_string_equal(commit(a, 1), "a000009");
	fl_adapters_free(a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_empty, setup_tmp, teardown_tmp),
	    cmocka_unit_test_setup_teardown(test_commit_names_and_load, setup_tmp, teardown_tmp),
	    cmocka_unit_test_setup_teardown(test_reopen, setup_tmp, teardown_tmp),
	    cmocka_unit_test_setup_teardown(test_rollback, setup_tmp, teardown_tmp),
	    cmocka_unit_test_setup_teardown(test_names_never_repeat, setup_tmp, teardown_tmp),
	    cmocka_unit_test_setup_teardown(test_prune_keeps_initial, setup_tmp, teardown_tmp),
	    cmocka_unit_test_setup_teardown(test_history_file, setup_tmp, teardown_tmp),
	    cmocka_unit_test_setup_teardown(test_failed_write, setup_tmp, teardown_tmp),
	    cmocka_unit_test_setup_teardown(test_malformed_history, setup_tmp, teardown_tmp),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

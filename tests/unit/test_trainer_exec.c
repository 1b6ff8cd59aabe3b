/*
 * trainer-exec (plugins/trainer-exec), loaded as the built .so with the
 * core's plugin loader and run against tests/fixtures/fake_peft_trainer.py
 * ($SOVMESH_FAKE_TRAINER, run by $SOVMESH_TEST_PYTHON).
 *
 * mini_host has no adapter I/O and no state directory, so this file has
 * its own small host (th_*): settings validated by the core's
 * plugin_settings, tensor sets and adapter directories by the core's
 * tset_* and adapter_*, a state directory per test, and every log line
 * kept.  The fixture selects its misbehaviour from fixed arguments in the
 * `command` setting, as an operator's wrapper script would take options.
 * Timeouts are short; nothing asserts on elapsed time.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
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
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include <sovmesh/trainer.h>

#include "adapter.h"
#include "plugin_loader.h"
#include "plugin_settings.h"
#include "tensor_set.h"

#define MAX_LOGS 256
#define NAME_A   "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
#define NAME_B   "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
#define STEP     0.001

typedef struct th {
	sovmesh_host_api api;
	loaded_plugin *lp;
	const sovmesh_trainer_ops *ops;
	plugin_settings *ps;
	void *instance;
	char state_dir[300];
	char work_dir[320];
	/* Every log line: the first MAX_LOGS kept, all counted by level. */
	char logs[MAX_LOGS][700];
	int levels[MAX_LOGS];
	unsigned nlogs;
	unsigned by_level[8];
} th;

struct sovmesh_host {
	th *t;
};

static struct sovmesh_host handle;
static char tmp_root[256];

/* ---- the host ---------------------------------------------------------- */

static void h_vlog(sovmesh_host *host, sovmesh_log_level level, const char *fmt, va_list ap)
{
	th *t = host->t;
	char line[700];
	vsnprintf(line, sizeof(line), fmt, ap);
	if ((unsigned)level < 8)
		t->by_level[level]++;
	if (t->nlogs < MAX_LOGS) {
		memcpy(t->logs[t->nlogs], line, sizeof(line));
		t->levels[t->nlogs] = (int)level;
	}
	t->nlogs++;
	if (getenv("MINI_HOST_VERBOSE"))
		fprintf(stderr, "th: trainer-exec <%d>: %s\n", (int)level, line);
}

static void h_log(sovmesh_host *host, sovmesh_log_level level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	h_vlog(host, level, fmt, ap);
	va_end(ap);
}

static void *h_alloc(sovmesh_host *host, size_t n)
{
	(void)host;
	return malloc(n);
}

static void *h_calloc(sovmesh_host *host, size_t n, size_t size)
{
	(void)host;
	return calloc(n, size);
}

static void *h_realloc(sovmesh_host *host, void *p, size_t n)
{
	(void)host;
	return realloc(p, n);
}

static void h_free(sovmesh_host *host, void *p)
{
	(void)host;
	free(p);
}

static const plugin_setting_value *h_setting(sovmesh_host *host, const char *name)
{
	const plugin_setting_value *v = plugin_settings_get(host->t->ps, name);
	if (!v)
		fail_msg("the plugin read an undeclared setting '%s'", name);
	return v;
}

static int64_t h_setting_int(sovmesh_host *host, const char *name)
{
	return h_setting(host, name)->i;
}

static const char *h_setting_string(sovmesh_host *host, const char *name)
{
	return h_setting(host, name)->s;
}

static const char *h_state_dir(sovmesh_host *host)
{
	return host->t->state_dir;
}

static sovmesh_tensor_set *h_set_new(sovmesh_host *host, const sovmesh_tensor_set *layout,
                                     size_t count)
{
	(void)host;
	return tset_new(layout, count);
}

static int h_tensor_init(sovmesh_host *host, sovmesh_tensor_set *set, size_t index,
                         const char *name, sovmesh_dtype dtype, uint32_t ndim,
                         const uint64_t *shape)
{
	(void)host;
	return tset_init_tensor(set, index, name, dtype, ndim, shape);
}

static void h_set_free(sovmesh_host *host, sovmesh_tensor_set *set)
{
	(void)host;
	tset_free(set);
}

static int h_adapter_read(sovmesh_host *host, const char *dir, sovmesh_tensor_set **out,
                          sovmesh_error *err)
{
	(void)host;
	return adapter_read(dir, out, NULL, err);
}

static int h_adapter_write(sovmesh_host *host, const char *dir, const sovmesh_tensor_set *set,
                           const char *config_json, sovmesh_error *err)
{
	(void)host;
	return adapter_write(dir, set, config_json, err);
}

/* Load the plugin (first call only), validate `params` and create an
 * instance.  Returns the settings' or create()'s code. */
static int th_open(th *t, const char *const *params, size_t n, sovmesh_error *err)
{
	memset(err, 0, sizeof(*err));
	const char *dir = getenv("SOVMESH_BUILD_PLUGIN_DIR");
	assert_non_null(dir);
	char path[512];
	snprintf(path, sizeof(path), "%s/trainer-exec.so", dir);
	int rc = plugin_load_file(path, SOVMESH_KIND_TRAINER, "exec", &t->lp, err);
	if (rc < 0)
		fail_msg("%s", err->message);
	t->ops = t->lp->ops;
	rc = plugin_settings_from_params("trainer-exec", t->lp->desc->settings, params, n, &t->ps,
	                                 err);
	if (rc < 0)
		return rc;
	t->api = (sovmesh_host_api){
	    .size = sizeof(sovmesh_host_api),
	    .abi_major = SOVMESH_ABI_MAJOR,
	    .abi_minor = SOVMESH_ABI_MINOR,
	    .log = h_log,
	    .vlog = h_vlog,
	    .alloc = h_alloc,
	    .calloc = h_calloc,
	    .realloc = h_realloc,
	    .free = h_free,
	    .setting_int = h_setting_int,
	    .setting_string = h_setting_string,
	    .plugin_state_dir = h_state_dir,
	    .tensor_set_new = h_set_new,
	    .tensor_init = h_tensor_init,
	    .tensor_set_free = h_set_free,
	    .adapter_read = h_adapter_read,
	    .adapter_write = h_adapter_write,
	};
	handle.t = t;
	return t->lp->desc->create(&handle, &t->api, &t->instance, err);
}

static void th_close(th *t)
{
	if (t->instance)
		t->lp->desc->destroy(t->instance);
	t->instance = NULL;
	plugin_settings_free(t->ps);
	t->ps = NULL;
	if (t->lp)
		plugin_release(t->lp, 0);
	t->lp = NULL;
}

/* Index of the first log line containing `text` at `level` (-1 = any), or -1. */
static int find_log(const th *t, int level, const char *text)
{
	for (unsigned i = 0; i < t->nlogs && i < MAX_LOGS; i++)
		if ((level < 0 || t->levels[i] == level) && strstr(t->logs[i], text))
			return (int)i;
	return -1;
}

/* ---- fixtures ---------------------------------------------------------- */

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
	(void)st;
	(void)f;
	if (flag == FTW_DP)
		return rmdir(p);
	return unlink(p);
}

static int setup(void **state)
{
	th *t = calloc(1, sizeof(*t));
	if (!t)
		return -1;
	snprintf(tmp_root, sizeof(tmp_root), "%s/texec-XXXXXX",
	         getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(tmp_root))
		return -1;
	snprintf(t->state_dir, sizeof(t->state_dir), "%s/trainer-exec", tmp_root);
	if (mkdir(t->state_dir, 0700) < 0)
		return -1;
	snprintf(t->work_dir, sizeof(t->work_dir), "%s/work", t->state_dir);
	*state = t;
	return 0;
}

static int teardown(void **state)
{
	th *t = *state;
	th_close(t);
	nftw(tmp_root, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	free(t);
	return 0;
}

/* "command=PYTHON FIXTURE <args>" (static buffer). */
static const char *command(const char *fmt, ...) SOVMESH_PRINTF(1, 2);
static const char *command(const char *fmt, ...)
{
	static char buf[2048];
	const char *py = getenv("SOVMESH_TEST_PYTHON");
	const char *fx = getenv("SOVMESH_FAKE_TRAINER");
	assert_non_null(py);
	assert_non_null(fx);
	int n = snprintf(buf, sizeof(buf), "command=%s %s ", py, fx);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
	va_end(ap);
	return buf;
}

/* Open with the fixture in `mode` and max_stderr_lines etc. from extra. */
static void open_mode(th *t, const char *args, const char *extra)
{
	const char *params[3] = {command("%s", args), extra, NULL};
	sovmesh_error err;
	int rc = th_open(t, params, extra ? 2 : 1, &err);
	if (rc < 0)
		fail_msg("create: %s", err.message);
}

static int train(th *t, const sovmesh_train_input *in, sovmesh_tensor_set **out,
                 sovmesh_train_report *rep, sovmesh_error *err)
{
	memset(err, 0, sizeof(*err));
	*rep = (sovmesh_train_report){.size = sizeof(*rep), .loss_before = -1, .loss_after = -1};
	*out = (sovmesh_tensor_set *)(uintptr_t)1; /* must be reset */
	return t->ops->train(t->instance, in, out, rep, err);
}

static sovmesh_train_input input(const sovmesh_sample *s, size_t n)
{
	return (sovmesh_train_input){
	    .size = sizeof(sovmesh_train_input),
	    .samples = s,
	    .n_samples = n,
	    .base_model = "llama3.2:1b",
	    .seed = 42,
	};
}

static sovmesh_sample sample(const char *prompt, int rating)
{
	return (sovmesh_sample){
	    .size = sizeof(sovmesh_sample),
	    .prompt = prompt,
	    .response = "an answer",
	    .rating = rating,
	    .label = -1,
	};
}

/* The fixture's initial adapter value i of tensor A or B. */
static double initial(int b, unsigned i)
{
	return b ? ((double)((int)((i * 5) % 11) - 5)) / 1000.0
	         : ((double)((int)((i * 7) % 13) - 6)) / 100.0;
}

/* Check `set` is the initial adapter moved by STEP * n (A up, B down). */
static void check_values(const sovmesh_tensor_set *set, unsigned n)
{
	assert_int_equal(set->count, 2);
	assert_string_equal(set->tensors[0].name, NAME_A);
	assert_string_equal(set->tensors[1].name, NAME_B);
	assert_int_equal(set->tensors[0].dtype, SOVMESH_DTYPE_F32);
	assert_int_equal(set->tensors[0].ndim, 2);
	assert_int_equal(set->tensors[0].shape[0], 4);
	assert_int_equal(set->tensors[0].shape[1], 16);
	assert_int_equal(set->tensors[1].shape[0], 16);
	assert_int_equal(set->tensors[1].shape[1], 4);
	for (int b = 0; b < 2; b++)
		for (unsigned i = 0; i < 64; i++) {
			double want = initial(b, i) + (b ? -1.0 : 1.0) * STEP * n;
			double got = sovmesh_tensor_get(&set->tensors[b], i);
			if (fabs(got - want) > 1e-6)
				fail_msg("tensor %d element %u: %g, expected %g", b, i, got, want);
		}
}

/* Entries in the work directory other than "." and "..". */
static int work_entries(const th *t)
{
	DIR *d = opendir(t->work_dir);
	if (!d)
		return -1;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

/* 1 when pid is running (exists and is not a zombie). */
static int running(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	const char *p = strrchr(buf, ')');
	return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

/* Wait (bounded, generously) until pid stops running: a SIGKILL is
 * delivered asynchronously.  1 when it stopped. */
static int gone(pid_t pid)
{
	for (int i = 0; i < 500; i++) {
		if (!running(pid))
			return 1;
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	return 0;
}

static int read_pids(const char *path, pid_t *pids, int max)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	int n = 0, v;
	while (n < max && fscanf(f, "%d", &v) == 1)
		pids[n++] = v;
	fclose(f);
	return n;
}

/* ---- tests ------------------------------------------------------------- */

static void test_descriptor(void **state)
{
	th *t = *state;
	open_mode(t, "", NULL);
	const sovmesh_plugin_descriptor *d = t->lp->desc;
	assert_string_equal(d->name, "exec");
	assert_int_equal(d->kind, SOVMESH_KIND_TRAINER);
	assert_non_null(t->ops->train);
	assert_null(t->ops->evaluate);
	const char *want[][2] = {{"command", ""},
	                         {"timeout_secs", "3600"},
	                         {"max_stderr_lines", "200"},
	                         {"work_dir", ""}};
	for (size_t i = 0; i < 4; i++) {
		assert_non_null(d->settings[i].name);
		assert_string_equal(d->settings[i].name, want[i][0]);
		assert_string_equal(d->settings[i].default_value, want[i][1]);
	}
	assert_null(d->settings[4].name);
	/* The default work_dir was made under the state directory. */
	struct stat st;
	assert_int_equal(stat(t->work_dir, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0700);
}

static void expect_create_fails(th *t, const char *param, int code, const char *text)
{
	const char *params[] = {param};
	sovmesh_error err;
	int rc = th_open(t, params, param ? 1 : 0, &err);
	if (rc != code || !strstr(err.message, text))
		fail_msg("'%s': got %d '%s', expected %d '%s'", param ? param : "(none)", rc,
		         err.message, code, text);
	assert_null(t->instance);
	th_close(t);
}

static void test_command_checks(void **state)
{
	th *t = *state;
	char notexec[400], dirpath[400], garbage[400];
	snprintf(notexec, sizeof(notexec), "%s/tool.sh", tmp_root);
	snprintf(garbage, sizeof(garbage), "%s/garbage", tmp_root);
	snprintf(dirpath, sizeof(dirpath), "command=%s", tmp_root);
	FILE *f = fopen(notexec, "w");
	assert_non_null(f);
	fputs("#!/bin/sh\nexit 0\n", f);
	fclose(f);
	chmod(notexec, 0644);

	expect_create_fails(t, NULL, -EINVAL, "plugin_settings.trainer-exec.command is not set");
	expect_create_fails(t, "command= \t ", -EINVAL,
	                    "plugin_settings.trainer-exec.command is not set");
	expect_create_fails(t, "command=python3 train.py", -EINVAL,
	                    "'python3' is not an absolute path");
	expect_create_fails(t, "command=/nonexistent/trainer --x", -ENOENT,
	                    "/nonexistent/trainer: No such file or directory");
	expect_create_fails(t, dirpath, -EINVAL, "is not a regular file");
	char param[500];
	snprintf(param, sizeof(param), "command=%s", notexec);
	expect_create_fails(t, param, -EACCES, "is not executable");
	/* The range of timeout_secs is the host's check, from the declaration. */
	const char *params[] = {command("%s", ""), "timeout_secs=0"};
	sovmesh_error err;
	assert_int_equal(th_open(t, params, 2, &err), -EINVAL);
	assert_non_null(strstr(err.message, "timeout_secs"));
	th_close(t);

	/* Executable but not a program: the exec error comes from train(). */
	f = fopen(garbage, "w");
	assert_non_null(f);
	fputs("\x7f\x45\x4c\x46garbage", f);
	fclose(f);
	chmod(garbage, 0755);
	snprintf(param, sizeof(param), "command=%s --flag", garbage);
	const char *p2[] = {param};
	assert_int_equal(th_open(t, p2, 1, &err), 0);
	sovmesh_train_input in = input(NULL, 0);
	sovmesh_tensor_set *out;
	sovmesh_train_report rep;
	int rc = train(t, &in, &out, &rep, &err);
	assert_int_equal(rc, -ENOEXEC);
	assert_null(out);
	assert_non_null(strstr(err.message, "cannot run"));
	assert_non_null(strstr(err.message, garbage));
	assert_int_equal(work_entries(t), 0);
}

static void test_work_dir_setting(void **state)
{
	th *t = *state;
	const char *params[] = {command("%s", ""), "work_dir=relative/dir"};
	sovmesh_error err;
	assert_int_equal(th_open(t, params, 2, &err), -EINVAL);
	assert_non_null(strstr(err.message, "work_dir: 'relative/dir' is not an absolute path"));
	th_close(t);

	char wd[400], param[420], rec[420];
	snprintf(wd, sizeof(wd), "%s/elsewhere", tmp_root);
	snprintf(param, sizeof(param), "work_dir=%s", wd);
	snprintf(rec, sizeof(rec), "--record %s/rec.json", tmp_root);
	/* Without PATH the tool gets a default one. */
	char *path = getenv("PATH") ? strdup(getenv("PATH")) : NULL;
	unsetenv("PATH");
	open_mode(t, rec, param);
	if (path)
		setenv("PATH", path, 1);
	free(path);
	sovmesh_train_input in = input(NULL, 0);
	sovmesh_tensor_set *out;
	sovmesh_train_report rep;
	assert_int_equal(train(t, &in, &out, &rep, &err), 0);
	t->api.tensor_set_free(&handle, out);
	char recpath[420];
	snprintf(recpath, sizeof(recpath), "%s/rec.json", tmp_root);
	json_t *r = json_load_file(recpath, 0, NULL);
	assert_non_null(r);
	const char *cwd = json_string_value(json_object_get(r, "cwd"));
	assert_non_null(cwd);
	assert_true(strncmp(cwd, wd, strlen(wd)) == 0);
	assert_string_equal(json_string_value(json_object_get(json_object_get(r, "env"), "PATH")),
	                    "/usr/local/bin:/usr/bin:/bin");
	json_decref(r);
	assert_int_equal(access(cwd, F_OK), -1);
}

/* Zero samples, no current adapter: the initial adapter, the same twice. */
static void test_initial_adapter(void **state)
{
	th *t = *state;
	open_mode(t, "", NULL);
	sovmesh_train_input in = input(NULL, 0);
	sovmesh_tensor_set *a, *b;
	sovmesh_train_report rep;
	sovmesh_error err;
	assert_int_equal(train(t, &in, &a, &rep, &err), 0);
	check_values(a, 0);
	assert_int_equal(rep.samples_used, 0);
	assert_true(rep.loss_before == 2.0 && rep.loss_after == 2.0);
	in.seed = 7; /* the initial adapter never depends on the seed */
	assert_int_equal(train(t, &in, &b, &rep, &err), 0);
	assert_true(sovmesh_tensor_set_same_layout(a, b, NULL));
	for (size_t k = 0; k < a->count; k++)
		assert_memory_equal(a->tensors[k].data, b->tensors[k].data, a->tensors[k].nbytes);
	t->api.tensor_set_free(&handle, a);
	t->api.tensor_set_free(&handle, b);
	assert_int_equal(work_entries(t), 0);
	/* stdout went to the log at debug. */
	assert_true(find_log(t, SOVMESH_LOG_DEBUG, "stdout: fake trainer: 0 samples, current -") >=
	            0);
	assert_true(find_log(t, SOVMESH_LOG_INFO, "stderr: epoch 1/1") >= 0);
}

/* Training from a current adapter, given as a set only (the plugin
 * writes it out) and as a set plus its directory. */
static void test_train_from_current(void **state)
{
	th *t = *state;
	open_mode(t, "", NULL);
	sovmesh_train_input in = input(NULL, 0);
	sovmesh_tensor_set *init, *out;
	sovmesh_train_report rep;
	sovmesh_error err;
	assert_int_equal(train(t, &in, &init, &rep, &err), 0);

	sovmesh_sample s[3] = {sample("a", SOVMESH_RATING_UP), sample("b", SOVMESH_RATING_DOWN),
	                       sample("c", SOVMESH_RATING_NONE)};
	in = input(s, 3);
	in.current = init;
	assert_int_equal(train(t, &in, &out, &rep, &err), 0);
	check_values(out, 3);
	assert_int_equal(rep.samples_used, 3);
	assert_true(rep.loss_before == 2.0);
	assert_true(fabs(rep.loss_after - 0.5) < 1e-12);

	/* From the previous output, through a directory of the caller's. */
	char dir[400];
	snprintf(dir, sizeof(dir), "%s/current", tmp_root);
	assert_int_equal(adapter_write(dir, out, NULL, &err), 0);
	sovmesh_tensor_set *out2;
	in = input(s, 2);
	in.current = out;
	in.current_dir = dir;
	assert_int_equal(train(t, &in, &out2, &rep, &err), 0);
	check_values(out2, 5);
	assert_int_equal(rep.samples_used, 2);
	/* The caller's directory is not the plugin's to remove. */
	assert_int_equal(access(dir, F_OK), 0);

	/* current_dir without current is the caller's mistake. */
	sovmesh_tensor_set *bad;
	in.current = NULL;
	assert_int_equal(train(t, &in, &bad, &rep, &err), -EINVAL);
	assert_null(bad);
	assert_non_null(strstr(err.message, "current_dir is set but current is NULL"));

	t->api.tensor_set_free(&handle, init);
	t->api.tensor_set_free(&handle, out);
	t->api.tensor_set_free(&handle, out2);
	assert_int_equal(work_entries(t), 0);
}

static void test_no_report(void **state)
{
	th *t = *state;
	open_mode(t, "--no-report", NULL);
	sovmesh_sample s = sample("q", SOVMESH_RATING_UP);
	sovmesh_train_input in = input(&s, 1);
	sovmesh_tensor_set *out;
	sovmesh_train_report rep;
	sovmesh_error err;
	assert_int_equal(train(t, &in, &out, &rep, &err), 0);
	check_values(out, 1);
	assert_int_equal(rep.samples_used, 1);
	assert_true(isnan(rep.loss_before) && isnan(rep.loss_after));
	t->api.tensor_set_free(&handle, out);
	th_close(t);

	/* A report that is not JSON: the adapter still counts, losses unknown. */
	open_mode(t, "--bad-report", NULL);
	assert_int_equal(train(t, &in, &out, &rep, &err), 0);
	check_values(out, 1);
	assert_true(isnan(rep.loss_before) && isnan(rep.loss_after));
	assert_true(find_log(t, SOVMESH_LOG_WARNING, "train_report.json is not a JSON object") >=
	            0);
	t->api.tensor_set_free(&handle, out);
}

/* The samples file, argv, environment and cwd the tool sees. */
static void test_samples_and_contract(void **state)
{
	th *t = *state;
	char keep[400], rec[400];
	snprintf(keep, sizeof(keep), "%s/kept.jsonl", tmp_root);
	snprintf(rec, sizeof(rec), "%s/rec.json", tmp_root);
	setenv("SOVMESH_TEST_SECRET", "must not leak", 1);
	char args[900];
	snprintf(args, sizeof(args), "--keep-samples %s --record %s", keep, rec);
	open_mode(t, args, NULL);

	static const float feats[3] = {0.5f, -1.25f, 3.0f};
	sovmesh_sample s[4] = {
	    sample("Wie spät ist es? \"quoted\"\nline2", SOVMESH_RATING_UP),
	    sample("second", SOVMESH_RATING_DOWN),
	    sample("third", SOVMESH_RATING_NONE),
	    sample(NULL, SOVMESH_RATING_NONE),
	};
	s[1].correction = "the better answer";
	s[2].response = NULL;
	s[3].features = feats;
	s[3].n_features = 3;
	s[3].label = 7;
	sovmesh_train_input in = input(s, 4);
	in.timeout_ms = 2500;
	/* A descriptor the daemon opened without O_CLOEXEC stays its own. */
	int leak = open("/dev/null", O_RDONLY);
	assert_true(leak >= 0);
	assert_int_equal(dup2(leak, 200), 200);
	close(leak);
	sovmesh_tensor_set *out;
	sovmesh_train_report rep;
	sovmesh_error err;
	int rc = train(t, &in, &out, &rep, &err);
	if (rc < 0)
		fail_msg("train: %s", err.message);
	check_values(out, 4);
	t->api.tensor_set_free(&handle, out);
	close(200);

	/* The JSONL, line by line. */
	FILE *f = fopen(keep, "r");
	assert_non_null(f);
	char line[1024];
	const char *want[4] = {
	    "{\"prompt\": \"Wie spät ist es? \\\"quoted\\\"\\nline2\", \"response\": \"an "
	    "answer\", "
	    "\"correction\": null, \"rating\": \"up\"}",
	    "{\"prompt\": \"second\", \"response\": \"an answer\", \"correction\": \"the better "
	    "answer\", \"rating\": \"down\"}",
	    "{\"prompt\": \"third\", \"response\": null, \"correction\": null, \"rating\": null}",
	    "{\"prompt\": null, \"response\": \"an answer\", \"correction\": null, \"rating\": "
	    "null, \"features\": [0.5, -1.25, 3.0], \"label\": 7}",
	};
	int n = 0;
	while (fgets(line, sizeof(line), f)) {
		assert_true(n < 4);
		assert_non_null(strchr(line, '\n')); /* one object per line */
		json_error_t je;
		json_t *got = json_loads(line, 0, &je);
		json_t *exp = json_loads(want[n], 0, &je);
		assert_non_null(got);
		assert_non_null(exp);
		if (!json_equal(got, exp))
			fail_msg("line %d: %s", n + 1, line);
		json_decref(got);
		json_decref(exp);
		n++;
	}
	fclose(f);
	assert_int_equal(n, 4);

	/* What the tool saw. */
	json_t *r = json_load_file(rec, 0, NULL);
	assert_non_null(r);
	assert_int_equal(json_integer_value(json_object_get(r, "samples_mode")), 0600);
	assert_true(json_is_true(json_object_get(r, "stdin_is_devnull")));
	/* 0-2 and the one Python used to list /proc/self/fd, nothing more. */
	json_t *fds = json_object_get(r, "fds");
	assert_true(json_array_size(fds) <= 4);
	for (size_t i = 0; i < json_array_size(fds); i++)
		assert_int_not_equal(json_integer_value(json_array_get(fds, i)), 200);
	json_t *argv = json_object_get(r, "argv");
	size_t argc = json_array_size(argv);
	assert_true(argc >= 4);
	const char *samples = json_string_value(json_array_get(argv, argc - 3));
	const char *current = json_string_value(json_array_get(argv, argc - 2));
	const char *outdir = json_string_value(json_array_get(argv, argc - 1));
	const char *cwd = json_string_value(json_object_get(r, "cwd"));
	assert_string_equal(current, "-");
	assert_true(strncmp(cwd, t->work_dir, strlen(t->work_dir)) == 0);
	assert_true(strncmp(samples, cwd, strlen(cwd)) == 0);
	assert_true(strncmp(outdir, cwd, strlen(cwd)) == 0);
	assert_non_null(strstr(samples, "samples.jsonl"));
	json_t *env = json_object_get(r, "env");
	const char *k;
	json_t *v;
	json_object_foreach(env, k, v)
	{
		/* LC_CTYPE: Python sets it itself under the C locale (PEP 538). */
		if (strcmp(k, "PATH") && strcmp(k, "HOME") && strcmp(k, "LANG") &&
		    strncmp(k, "SOVMESH_", 8) && strcmp(k, "LC_CTYPE"))
			fail_msg("unexpected environment variable %s", k);
	}
	assert_null(json_object_get(env, "SOVMESH_TEST_SECRET"));
	assert_string_equal(json_string_value(json_object_get(env, "SOVMESH_BASE_MODEL")),
	                    "llama3.2:1b");
	assert_string_equal(json_string_value(json_object_get(env, "SOVMESH_SEED")), "42");
	assert_string_equal(json_string_value(json_object_get(env, "SOVMESH_SAMPLES")), "4");
	assert_string_equal(json_string_value(json_object_get(env, "SOVMESH_TIMEOUT_SECS")), "3");
	assert_non_null(json_object_get(env, "PATH"));

	/* Afterwards: samples and run directory gone. */
	assert_int_equal(access(samples, F_OK), -1);
	assert_int_equal(access(cwd, F_OK), -1);
	assert_int_equal(work_entries(t), 0);
	json_decref(r);
	unsetenv("SOVMESH_TEST_SECRET");
}

static void test_bad_samples(void **state)
{
	th *t = *state;
	open_mode(t, "", NULL);
	sovmesh_sample s[2] = {sample("ok", SOVMESH_RATING_UP), sample("bad", 5)};
	sovmesh_train_input in = input(s, 2);
	sovmesh_tensor_set *out;
	sovmesh_train_report rep;
	sovmesh_error err;
	assert_int_equal(train(t, &in, &out, &rep, &err), -EINVAL);
	assert_null(out);
	assert_non_null(strstr(err.message, "sample 1: rating 5"));
	s[1] = sample("\xff\xfe not utf-8", SOVMESH_RATING_UP);
	assert_int_equal(train(t, &in, &out, &rep, &err), -EINVAL);
	assert_non_null(strstr(err.message, "sample 1: the prompt is not valid UTF-8"));
	float nanf_ = NAN;
	s[1] = sample("x", SOVMESH_RATING_UP);
	s[1].features = &nanf_;
	s[1].n_features = 1;
	assert_int_equal(train(t, &in, &out, &rep, &err), -EINVAL);
	assert_non_null(strstr(err.message, "sample 1: feature 0 is not finite"));
	in.samples = NULL;
	assert_int_equal(train(t, &in, &out, &rep, &err), -EINVAL);
	assert_int_equal(work_entries(t), 0);
}

typedef struct failure {
	const char *mode;
	int code;
	const char *text[2];
} failure;

static void run_failure(th *t, const failure *fc, const sovmesh_tensor_set *current)
{
	char args[64];
	snprintf(args, sizeof(args), "--mode %s", fc->mode);
	open_mode(t, args, NULL);
	sovmesh_sample s = sample("q", SOVMESH_RATING_UP);
	sovmesh_train_input in = input(&s, 1);
	in.current = current;
	sovmesh_tensor_set *out;
	sovmesh_train_report rep;
	sovmesh_error err;
	int rc = train(t, &in, &out, &rep, &err);
	if (rc != fc->code)
		fail_msg("mode %s: got %d (%s), expected %d", fc->mode, rc, err.message, fc->code);
	assert_null(out);
	for (int i = 0; i < 2; i++)
		if (fc->text[i] && !strstr(err.message, fc->text[i]))
			fail_msg("mode %s: message '%s' lacks '%s'", fc->mode, err.message,
			         fc->text[i]);
	assert_int_equal(err.code, fc->code);
	assert_int_equal(work_entries(t), 0);
	th_close(t);
}

static void test_exit_statuses(void **state)
{
	th *t = *state;
	static const failure cases[] = {
	    {"exit2", -EINVAL, {"samples unusable", "every sample lacks a response"}},
	    {"exit75", -EAGAIN, {"exit 75", "the GPU is busy"}},
	    {"exit1", -EIO, {"exited with status 1", "CUDA out of memory"}},
	    {"signal", -EIO, {"killed by signal 10 (SIGUSR1)", "about to die"}},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		run_failure(t, &cases[i], NULL);
}

static void test_bad_output(void **state)
{
	th *t = *state;
	static const failure cases[] = {
	    {"no-output", -EINVAL, {"wrote no adapter_model.safetensors", NULL}},
	    {"no-config", -EINVAL, {"wrote no adapter_config.json", NULL}},
	    {"bad-output", -EINVAL, {"not a valid adapter", "adapter_model.safetensors"}},
	    {"nan-output", -EINVAL, {"element 3 is NaN", NAME_A}},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		run_failure(t, &cases[i], NULL);

	/* A layout change is only one relative to a current adapter. */
	open_mode(t, "", NULL);
	sovmesh_train_input in = input(NULL, 0);
	sovmesh_tensor_set *init;
	sovmesh_train_report rep;
	sovmesh_error err;
	assert_int_equal(train(t, &in, &init, &rep, &err), 0);
	th_close(t);
	static const failure layout[] = {
	    {"layout-change",
	     -EINVAL,
	     {"the trainer changed the adapter layout: tensor '" NAME_A "' is F32 [4,16] in the "
	      "current adapter but F32 [8,16] in the output",
	      NULL}},
	    {"extra-tensor",
	     -EINVAL,
	     {"the trainer changed the adapter layout: tensor "
	      "'base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight' of the output is "
	      "not in the current adapter",
	      NULL}},
	    {"drop-tensor",
	     -EINVAL,
	     {"the trainer changed the adapter layout: tensor '" NAME_B "' is missing", NULL}},
	};
	for (size_t i = 0; i < sizeof(layout) / sizeof(layout[0]); i++)
		run_failure(t, &layout[i], init);
	t->api.tensor_set_free(&handle, init);
}

/* A current adapter whose tensors are not in name order: the output
 * comes back in the current adapter's order. */
static void test_output_in_current_order(void **state)
{
	th *t = *state;
	open_mode(t, "", NULL);
	sovmesh_train_input in = input(NULL, 0);
	sovmesh_tensor_set *init, *out;
	sovmesh_train_report rep;
	sovmesh_error err;
	assert_int_equal(train(t, &in, &init, &rep, &err), 0);
	sovmesh_tensor_set *rev = tset_new(NULL, 2);
	assert_non_null(rev);
	for (size_t k = 0; k < 2; k++) {
		const sovmesh_tensor *src = &init->tensors[1 - k];
		assert_int_equal(
		    tset_init_tensor(rev, k, src->name, src->dtype, src->ndim, src->shape), 0);
		memcpy(rev->tensors[k].data, src->data, src->nbytes);
	}
	sovmesh_sample s = sample("q", SOVMESH_RATING_UP);
	in = input(&s, 1);
	in.current = rev;
	assert_int_equal(train(t, &in, &out, &rep, &err), 0);
	assert_true(sovmesh_tensor_set_same_layout(rev, out, NULL));
	assert_string_equal(out->tensors[0].name, NAME_B);
	/* Put back in name order, the values are as expected. */
	sovmesh_tensor_set sorted = {
	    .count = 2, .tensors = (sovmesh_tensor[]){out->tensors[1], out->tensors[0]}};
	check_values(&sorted, 1);
	tset_free(rev);
	t->api.tensor_set_free(&handle, init);
	t->api.tensor_set_free(&handle, out);
}

/* Timeout from the input: SIGTERM to the group; the tool and its child
 * are gone afterwards. */
static void check_timeout(th *t, const char *mode, uint32_t timeout_ms, const char *signal_text)
{
	char pidfile[400], args[500];
	snprintf(pidfile, sizeof(pidfile), "%s/pids-%s", tmp_root, mode);
	snprintf(args, sizeof(args), "--mode %s --pid-file %s", mode, pidfile);
	open_mode(t, args, timeout_ms ? NULL : "timeout_secs=1");
	sovmesh_train_input in = input(NULL, 0);
	in.timeout_ms = timeout_ms;
	sovmesh_tensor_set *out;
	sovmesh_train_report rep;
	sovmesh_error err;
	int rc = train(t, &in, &out, &rep, &err);
	assert_int_equal(rc, -ETIMEDOUT);
	assert_null(out);
	assert_non_null(strstr(err.message, signal_text));
	pid_t pids[2];
	/* The fixture writes its pid file once started; on a very slow
	 * machine the timeout may have come first (then there is nothing
	 * to check but that no run directory is left). */
	int n = read_pids(pidfile, pids, 2);
	for (int i = 0; i < n; i++)
		if (!gone(pids[i]))
			fail_msg("%s: process %d is still running", mode, (int)pids[i]);
	assert_int_equal(work_entries(t), 0);
	th_close(t);
}

static void test_timeout(void **state)
{
	/* 2 s gives the interpreter time to start on a busy machine. */
	check_timeout(*state, "sleep", 2000, "was stopped with SIGTERM");
}

static void test_timeout_setting(void **state)
{
	/* No input limit: timeout_secs = 1 applies. */
	check_timeout(*state, "sleep", 0, "ran longer than 1000 ms");
}

static void test_ignore_sigterm(void **state)
{
	check_timeout(*state, "ignore-sigterm", 2000, "was stopped with SIGKILL");
}

static void test_leftover_child(void **state)
{
	th *t = *state;
	char pidfile[400], args[500];
	snprintf(pidfile, sizeof(pidfile), "%s/pids-left", tmp_root);
	snprintf(args, sizeof(args), "--mode leave-child --pid-file %s", pidfile);
	open_mode(t, args, NULL);
	sovmesh_train_input in = input(NULL, 0);
	sovmesh_tensor_set *out;
	sovmesh_train_report rep;
	sovmesh_error err;
	int rc = train(t, &in, &out, &rep, &err);
	if (rc < 0)
		fail_msg("train: %s", err.message);
	check_values(out, 0);
	t->api.tensor_set_free(&handle, out);
	pid_t pid = 0;
	assert_int_equal(read_pids(pidfile, &pid, 1), 1);
	assert_true(gone(pid));
}

/* A child that left the process group keeps the pipes open: train()
 * does not wait for it (beyond a short drain) and says so. */
static void test_escaped_child(void **state)
{
	th *t = *state;
	char pidfile[400], args[500];
	snprintf(pidfile, sizeof(pidfile), "%s/pids-escape", tmp_root);
	snprintf(args, sizeof(args), "--mode escape --pid-file %s", pidfile);
	open_mode(t, args, NULL);
	sovmesh_train_input in = input(NULL, 0);
	sovmesh_tensor_set *out;
	sovmesh_train_report rep;
	sovmesh_error err;
	int rc = train(t, &in, &out, &rep, &err);
	pid_t pid = 0;
	int n = read_pids(pidfile, &pid, 1);
	if (n == 1 && running(pid))
		kill(pid, SIGKILL); /* ours to clean up: it sleeps 3 s anyway */
	if (rc < 0)
		fail_msg("train: %s", err.message);
	check_values(out, 0);
	t->api.tensor_set_free(&handle, out);
	assert_int_equal(n, 1);
	assert_true(find_log(t, SOVMESH_LOG_WARNING, "still holds its output open") >= 0);
}

static void test_stderr_flood(void **state)
{
	th *t = *state;
	open_mode(t, "--mode stderr-flood --flood 3000", "max_stderr_lines=5");
	sovmesh_train_input in = input(NULL, 0);
	sovmesh_tensor_set *out;
	sovmesh_train_report rep;
	sovmesh_error err;
	assert_int_equal(train(t, &in, &out, &rep, &err), 0);
	t->api.tensor_set_free(&handle, out);
	unsigned stderr_lines = 0;
	for (unsigned i = 0; i < t->nlogs && i < MAX_LOGS; i++)
		if (strncmp(t->logs[i], "stderr: ", 8) == 0)
			stderr_lines++;
	assert_int_equal(stderr_lines, 5);
	assert_true(t->nlogs < 20);
	/* 3000 flood lines, "flood done", "epoch 1/1" */
	assert_true(find_log(t, SOVMESH_LOG_WARNING,
	                     "2997 more stderr lines not logged (max_stderr_lines = 5)") >= 0);
}

/* A run directory left by a daemon that died mid-run holds samples: the
 * next create() removes it; one of a live process stays. */
static void test_stale_runs_swept(void **state)
{
	th *t = *state;
	pid_t dead = fork();
	if (dead == 0)
		_exit(0);
	assert_true(dead > 0);
	assert_int_equal(waitpid(dead, NULL, 0), dead);
	assert_int_equal(mkdir(t->work_dir, 0700), 0);
	char stale[600], live[600], other[600], file[700];
	snprintf(stale, sizeof(stale), "%s/run-%d-abcdef", t->work_dir, (int)dead);
	snprintf(live, sizeof(live), "%s/run-%d-abcdef", t->work_dir, (int)getppid());
	snprintf(other, sizeof(other), "%s/keep-me", t->work_dir);
	assert_int_equal(mkdir(stale, 0700), 0);
	assert_int_equal(mkdir(live, 0700), 0);
	assert_int_equal(mkdir(other, 0700), 0);
	snprintf(file, sizeof(file), "%s/samples.jsonl", stale);
	FILE *f = fopen(file, "w");
	assert_non_null(f);
	fputs("{}\n", f);
	fclose(f);
	open_mode(t, "", NULL);
	assert_int_equal(access(stale, F_OK), -1);
	assert_int_equal(access(live, F_OK), 0);
	assert_int_equal(access(other, F_OK), 0);
	assert_true(find_log(t, SOVMESH_LOG_NOTICE, "removed the stale run directory") >= 0);
}

int main(void)
{
	/* A daemon may ignore or block signals; the tool must not inherit
	 * that.  With SIGTERM ignored here, "sleep" would need SIGKILL, and
	 * with SIGUSR1 blocked, "signal" would not die of it. */
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigprocmask(SIG_BLOCK, &block, NULL);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_descriptor, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_command_checks, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_work_dir_setting, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_initial_adapter, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_train_from_current, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_no_report, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_samples_and_contract, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_samples, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_exit_statuses, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_output, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_output_in_current_order, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_timeout_setting, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_ignore_sigterm, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_leftover_child, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_escaped_child, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_stderr_flood, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_stale_runs_swept, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/*
 * trainer-exec: fine-tune a real LLM adapter with an external command
 * (a PEFT or Unsloth script, llama.cpp's finetune in a wrapper).
 * docs/trainer-exec.md is the operator's version of this contract.
 *
 * Invocation, without a shell (setting `command`, split on whitespace;
 * no quoting, so paths with spaces cannot be used):
 *
 *   COMMAND [ARGS...] SAMPLES_JSONL CURRENT_DIR OUT_DIR
 *
 *   SAMPLES_JSONL  one JSON object per line and sample:
 *                  {"prompt": s|null, "response": s|null,
 *                   "correction": s|null, "rating": "up"|"down"|null}
 *                  plus "features": [numbers] and "label": n when the
 *                  sample has them.  Mode 0600, deleted after the run.
 *   CURRENT_DIR    the adapter to improve (a PEFT directory), or "-" when
 *                  there is none: the tool then starts from its initial
 *                  adapter.  With zero samples and "-" it must write that
 *                  initial adapter untrained, deterministic from its own
 *                  configuration (every node must get the same one).
 *   OUT_DIR        an existing empty directory; the tool writes
 *                  adapter_model.safetensors and adapter_config.json there,
 *                  and optionally train_report.json
 *                  {"loss_before": x, "loss_after": y}.
 *
 * Environment: PATH, HOME and LANG of the daemon (PATH defaults to
 * /usr/local/bin:/usr/bin:/bin) and SOVMESH_BASE_MODEL, SOVMESH_SEED,
 * SOVMESH_TIMEOUT_SECS, SOVMESH_SAMPLES; nothing else.  cwd: a fresh
 * per-run directory under work_dir (0700, removed afterwards).  stdin:
 * /dev/null; no other descriptors; default signal dispositions.  stdout
 * lines are logged at debug, stderr lines at info (at most
 * max_stderr_lines of each; the rest are counted).  The command gets its
 * own process group; when it exits, anything left in the group is killed.
 *
 * Outcome:
 *   exit 0              the adapter in OUT_DIR (must keep the current
 *                       adapter's tensor names, dtypes and shapes; it is
 *                       returned in the current adapter's order); missing
 *                       or invalid output, NaN/Inf values: -EINVAL
 *   exit 2              samples unusable: -EINVAL (last stderr line)
 *   exit 75 EX_TEMPFAIL try again later: -EAGAIN
 *   other exit, signal  -EIO (status or signal, last stderr line)
 *   timeout             min(timeout_secs, input timeout_ms): SIGTERM to
 *                       the group, 5 s grace, SIGKILL: -ETIMEDOUT
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sovmesh/plugin.h>
#include <sovmesh/trainer.h>

#include "spawn.h"

#define GRACE_MS       5000
#define EXIT_UNUSABLE  2
#define EXIT_TEMPFAIL  75 /* EX_TEMPFAIL of sysexits.h */
#define DEFAULT_PATH   "/usr/local/bin:/usr/bin:/bin"
#define RUN_PREFIX     "run-"
#define TMP_RUN_PREFIX "sovmesh-trainer-exec-"
#define SAMPLES_FILE   "samples.jsonl"
#define WEIGHTS_FILE   "adapter_model.safetensors"
#define CONFIG_FILE    "adapter_config.json"
#define REPORT_FILE    "train_report.json"
#define SETTING        "plugin_settings.trainer-exec."

typedef struct texec {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	char **argv; /* command and fixed arguments, NULL-ended */
	size_t n_argv;
	char *work_dir;
	const char *run_prefix;
	uint64_t timeout_ms;
	uint64_t max_lines;
	char *env_keep[3]; /* "PATH=...", "HOME=...", "LANG=..." or NULL */
} texec;

static const sovmesh_setting_def texec_settings[] = {
    {
        .name = "command",
        .type = SOVMESH_SETTING_STRING,
        .default_value = "",
        .help = "absolute path of the training tool and fixed arguments, split on "
                "whitespace (no shell, no quoting); required",
    },
    {
        .name = "timeout_secs",
        .type = SOVMESH_SETTING_INT,
        .default_value = "3600",
        .min = 1,
        .max = 604800,
        .help = "longest one training run may take; then SIGTERM, 5 s later SIGKILL",
    },
    {
        .name = "max_stderr_lines",
        .type = SOVMESH_SETTING_INT,
        .default_value = "200",
        .min = 0,
        .max = 1000000,
        .help = "lines of the tool's stderr (and of its stdout, at debug) copied to the "
                "log per run; the rest are counted",
    },
    {
        .name = "work_dir",
        .type = SOVMESH_SETTING_STRING,
        .default_value = "",
        .help = "where per-run directories are made; \"\" = <state_dir>/trainer-exec/work",
    },
    {.name = NULL},
};

/* ---- create / destroy -------------------------------------------------- */

static void texec_free(texec *te)
{
	if (!te)
		return;
	if (te->argv)
		for (size_t i = 0; i < te->n_argv; i++)
			free(te->argv[i]);
	free(te->argv);
	free(te->work_dir);
	for (size_t i = 0; i < 3; i++)
		free(te->env_keep[i]);
	te->api->free(te->host, te);
}

/* Split `command` on whitespace into te->argv. */
static int split_command(texec *te, const char *command, sovmesh_error *err)
{
	size_t cap = 4;
	te->argv = calloc(cap, sizeof(char *));
	if (!te->argv)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	const char *p = command;
	for (;;) {
		p += strspn(p, " \t\r\n");
		if (!*p)
			break;
		size_t len = strcspn(p, " \t\r\n");
		if (te->n_argv + 2 > cap) {
			char **n = realloc(te->argv, 2 * cap * sizeof(char *));
			if (!n)
				return sovmesh_fail(err, -ENOMEM, "out of memory");
			te->argv = n;
			cap *= 2;
		}
		te->argv[te->n_argv] = strndup(p, len);
		if (!te->argv[te->n_argv])
			return sovmesh_fail(err, -ENOMEM, "out of memory");
		te->argv[++te->n_argv] = NULL;
		p += len;
	}
	if (te->n_argv == 0)
		return sovmesh_fail(err, -EINVAL, SETTING "command is not set");
	const char *exe = te->argv[0];
	if (exe[0] != '/')
		return sovmesh_fail(err, -EINVAL,
		                    SETTING "command: '%s' is not an absolute path (the command "
		                            "runs without a shell or PATH search)",
		                    exe);
	struct stat st;
	if (stat(exe, &st) < 0)
		return sovmesh_fail(err, -errno, SETTING "command: %s: %s", exe, strerror(errno));
	if (!S_ISREG(st.st_mode))
		return sovmesh_fail(err, -EINVAL, SETTING "command: %s is not a regular file", exe);
	if (access(exe, X_OK) < 0)
		return sovmesh_fail(err, -EACCES, SETTING "command: %s is not executable", exe);
	return 0;
}

/* 1 when `name` is RUN_PREFIX<pid>-XXXXXX of a process that is gone. */
static int stale_run(const char *name)
{
	if (strncmp(name, RUN_PREFIX, strlen(RUN_PREFIX)) != 0)
		return 0;
	char *end;
	long pid = strtol(name + strlen(RUN_PREFIX), &end, 10);
	if (end == name + strlen(RUN_PREFIX) || *end != '-' || pid <= 0 || pid == getpid())
		return 0;
	return kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (flag == FTW_DP)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

/* Remove a directory tree; 0 or -errno (the tree is then partly left). */
static int remove_tree(const char *dir)
{
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	if (access(dir, F_OK) == 0 || errno != ENOENT)
		return -EIO;
	return 0;
}

/* Run directories of a daemon that died mid-run hold private samples:
 * remove them.  Only our own naming, only when their process is gone. */
static void sweep_stale_runs(texec *te)
{
	DIR *d = opendir(te->work_dir);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!stale_run(de->d_name))
			continue;
		char *path;
		if (asprintf(&path, "%s/%s", te->work_dir, de->d_name) < 0)
			break;
		if (remove_tree(path) < 0)
			te->api->log(te->host, SOVMESH_LOG_WARNING,
			             "cannot remove the stale run directory %s", path);
		else
			te->api->log(te->host, SOVMESH_LOG_NOTICE,
			             "removed the stale run directory %s", path);
		free(path);
	}
	closedir(d);
}

static int setup_work_dir(texec *te, const char *setting, sovmesh_error *err)
{
	te->run_prefix = RUN_PREFIX;
	if (setting && *setting) {
		if (setting[0] != '/')
			return sovmesh_fail(err, -EINVAL,
			                    SETTING "work_dir: '%s' is not an absolute path",
			                    setting);
		te->work_dir = strdup(setting);
	} else {
		const char *state =
		    te->api->plugin_state_dir ? te->api->plugin_state_dir(te->host) : NULL;
		if (state) {
			if (asprintf(&te->work_dir, "%s/work", state) < 0)
				te->work_dir = NULL;
		} else {
			/* Offline tools have no state directory: per-run
			 * directories (0700) go straight into $TMPDIR. */
			const char *tmp = getenv("TMPDIR");
			te->work_dir = strdup(tmp && tmp[0] == '/' ? tmp : "/tmp");
			te->run_prefix = TMP_RUN_PREFIX;
			return te->work_dir ? 0 : sovmesh_fail(err, -ENOMEM, "out of memory");
		}
	}
	if (!te->work_dir)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	if (mkdir(te->work_dir, 0700) < 0 && errno != EEXIST)
		return sovmesh_fail(err, -errno, SETTING "work_dir: cannot create %s: %s",
		                    te->work_dir, strerror(errno));
	struct stat st;
	if (stat(te->work_dir, &st) < 0 || !S_ISDIR(st.st_mode))
		return sovmesh_fail(err, -ENOTDIR, SETTING "work_dir: %s is not a directory",
		                    te->work_dir);
	if (access(te->work_dir, W_OK | X_OK) < 0)
		return sovmesh_fail(err, -EACCES, SETTING "work_dir: %s is not writable",
		                    te->work_dir);
	sweep_stale_runs(te);
	return 0;
}

static int keep_env(texec *te, size_t i, const char *name, const char *fallback)
{
	const char *v = getenv(name);
	if (!v)
		v = fallback;
	if (!v)
		return 0;
	return asprintf(&te->env_keep[i], "%s=%s", name, v) < 0 ? -ENOMEM : 0;
}

static int texec_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                        sovmesh_error *err)
{
	if (!api->calloc || !api->free || !api->setting_string || !api->setting_int || !api->log ||
	    !SOVMESH_HAS_SLOT(api, sovmesh_host_api, adapter_write))
		return sovmesh_fail(err, -EINVAL, "the host lacks slots trainer-exec needs");
	texec *te = api->calloc(host, 1, sizeof(*te));
	if (!te)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	te->host = host;
	te->api = api;
	const char *command = api->setting_string(host, "command");
	int rc = split_command(te, command ? command : "", err);
	if (rc == 0)
		rc = setup_work_dir(te, api->setting_string(host, "work_dir"), err);
	if (rc == 0) {
		te->timeout_ms = (uint64_t)api->setting_int(host, "timeout_secs") * 1000u;
		te->max_lines = (uint64_t)api->setting_int(host, "max_stderr_lines");
		/* The environment is read here, on the loop thread: getenv
		 * on a worker could race a setenv elsewhere. */
		if (keep_env(te, 0, "PATH", DEFAULT_PATH) < 0 ||
		    keep_env(te, 1, "HOME", NULL) < 0 || keep_env(te, 2, "LANG", NULL) < 0)
			rc = sovmesh_fail(err, -ENOMEM, "out of memory");
	}
	if (rc < 0) {
		texec_free(te);
		return rc;
	}
	*instance = te;
	return 0;
}

static void texec_destroy(void *instance)
{
	texec_free(instance);
}

/* ---- the samples file -------------------------------------------------- */

static int set_text(json_t *o, const char *key, const char *text, size_t i, sovmesh_error *err)
{
	json_t *v = text ? json_string(text) : json_null();
	if (!v)
		return sovmesh_fail(err, -EINVAL, "sample %zu: the %s is not valid UTF-8", i, key);
	if (json_object_set_new(o, key, v) < 0)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	return 0;
}

/* One sample as a JSON line (malloc'd, with the newline). */
static int sample_line(const sovmesh_sample *s, size_t i, char **line, sovmesh_error *err)
{
	json_t *o = json_object();
	if (!o)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	int rc = set_text(o, "prompt", s->prompt, i, err);
	if (rc == 0)
		rc = set_text(o, "response", s->response, i, err);
	if (rc == 0)
		rc = set_text(o, "correction", s->correction, i, err);
	if (rc == 0) {
		json_t *r = s->rating == SOVMESH_RATING_UP     ? json_string("up")
		            : s->rating == SOVMESH_RATING_DOWN ? json_string("down")
		            : s->rating == SOVMESH_RATING_NONE ? json_null()
		                                               : NULL;
		if (!r)
			rc = sovmesh_fail(err, -EINVAL,
			                  "sample %zu: rating %d is not -1 (down), 0 or 1 (up)", i,
			                  s->rating);
		else if (json_object_set_new(o, "rating", r) < 0)
			rc = sovmesh_fail(err, -ENOMEM, "out of memory");
	}
	/* features/label exist in every ABI 1 sample; `size` is checked
	 * anyway so a truncated struct never reads past its end. */
	int has_numeric = s->size >= offsetof(sovmesh_sample, label) + sizeof(s->label);
	if (rc == 0 && has_numeric && s->features) {
		json_t *a = json_array();
		rc = a ? 0 : sovmesh_fail(err, -ENOMEM, "out of memory");
		for (size_t k = 0; rc == 0 && k < s->n_features; k++) {
			if (!isfinite(s->features[k]))
				rc = sovmesh_fail(err, -EINVAL,
				                  "sample %zu: feature %zu is not finite", i, k);
			else if (json_array_append_new(a, json_real(s->features[k])) < 0)
				rc = sovmesh_fail(err, -ENOMEM, "out of memory");
		}
		if (rc == 0 && json_object_set(o, "features", a) < 0)
			rc = sovmesh_fail(err, -ENOMEM, "out of memory");
		json_decref(a);
	}
	if (rc == 0 && has_numeric && s->label >= 0 &&
	    json_object_set_new(o, "label", json_integer(s->label)) < 0)
		rc = sovmesh_fail(err, -ENOMEM, "out of memory");
	char *text = rc == 0 ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	if (rc < 0)
		return rc;
	if (!text || asprintf(line, "%s\n", text) < 0) {
		free(text);
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	}
	free(text);
	return 0;
}

static int write_all(int fd, const char *p, size_t len)
{
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int write_samples(const char *path, const sovmesh_sample *samples, size_t n,
                         sovmesh_error *err)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return sovmesh_fail(err, -errno, "%s: %s", path, strerror(errno));
	int rc = 0;
	for (size_t i = 0; i < n && rc == 0; i++) {
		char *line = NULL;
		rc = sample_line(&samples[i], i, &line, err);
		if (rc == 0) {
			rc = write_all(fd, line, strlen(line));
			if (rc < 0)
				sovmesh_fail(err, rc, "%s: %s", path, strerror(-rc));
		}
		free(line);
	}
	if (close(fd) < 0 && rc == 0)
		rc = sovmesh_fail(err, -errno, "%s: %s", path, strerror(errno));
	return rc;
}

/* ---- the tool's output ------------------------------------------------- */

typedef struct run_log {
	texec *te;
	uint64_t lines[3]; /* by stream */
	char last_err[SPAWN_LINE_MAX + 1];
} run_log;

static void on_line(void *ud, int stream, const char *line)
{
	run_log *rl = ud;
	texec *te = rl->te;
	char clean[SPAWN_LINE_MAX + 1];
	size_t n = 0;
	/* The tool's output may not forge log lines. */
	for (; line[n] && n < SPAWN_LINE_MAX; n++)
		clean[n] = (unsigned char)line[n] < 0x20 || line[n] == 0x7f ? '?' : line[n];
	clean[n] = '\0';
	if (stream == 2 && clean[strspn(clean, " \t")])
		memcpy(rl->last_err, clean, n + 1);
	if (rl->lines[stream]++ >= te->max_lines)
		return;
	if (stream == 2)
		te->api->log(te->host, SOVMESH_LOG_INFO, "stderr: %s", clean);
	else
		te->api->log(te->host, SOVMESH_LOG_DEBUG, "stdout: %s", clean);
}

static const char *last_line(const run_log *rl)
{
	return rl->last_err[0] ? rl->last_err : "(nothing on stderr)";
}

static void describe_tensor(const sovmesh_tensor *t, char *buf, size_t len)
{
	char shape[128];
	sovmesh_tensor_shape_text(t, shape, sizeof(shape));
	snprintf(buf, len, "%s %s", sovmesh_dtype_name(t->dtype), shape);
}

static const sovmesh_tensor *find_tensor(const sovmesh_tensor_set *set, const char *name)
{
	for (size_t i = 0; i < set->count; i++)
		if (strcmp(set->tensors[i].name, name) == 0)
			return &set->tensors[i];
	return NULL;
}

/* The output must hold exactly the current adapter's tensors (names,
 * dtypes, shapes), in any order. */
static int check_layout(const sovmesh_tensor_set *cur, const sovmesh_tensor_set *got,
                        sovmesh_error *err)
{
	char a[160], b[160];
	for (size_t k = 0; k < cur->count; k++) {
		const sovmesh_tensor *c = &cur->tensors[k];
		const sovmesh_tensor *g = find_tensor(got, c->name);
		if (!g)
			return sovmesh_fail(
			    err, -EINVAL,
			    "the trainer changed the adapter layout: tensor '%s' is "
			    "missing from the output",
			    c->name);
		int same = c->dtype == g->dtype && c->ndim == g->ndim;
		for (uint32_t d = 0; same && d < c->ndim; d++)
			same = c->shape[d] == g->shape[d];
		if (!same) {
			describe_tensor(c, a, sizeof(a));
			describe_tensor(g, b, sizeof(b));
			return sovmesh_fail(
			    err, -EINVAL,
			    "the trainer changed the adapter layout: tensor '%s' is %s "
			    "in the current adapter but %s in the output",
			    c->name, a, b);
		}
	}
	for (size_t k = 0; k < got->count; k++)
		if (!find_tensor(cur, got->tensors[k].name))
			return sovmesh_fail(
			    err, -EINVAL,
			    "the trainer changed the adapter layout: tensor '%s' of "
			    "the output is not in the current adapter",
			    got->tensors[k].name);
	return 0;
}

static int check_finite(const sovmesh_tensor_set *set, sovmesh_error *err)
{
	for (size_t k = 0; k < set->count; k++) {
		const sovmesh_tensor *t = &set->tensors[k];
		if (!sovmesh_dtype_is_float(t->dtype))
			continue;
		uint64_t n = sovmesh_tensor_numel(t);
		for (uint64_t j = 0; j < n; j++) {
			double v = sovmesh_tensor_get(t, j);
			if (!isfinite(v))
				return sovmesh_fail(err, -EINVAL,
				                    "the trainer's " WEIGHTS_FILE ": tensor '%s' "
				                    "element %" PRIu64 " is %s",
				                    t->name, j, isnan(v) ? "NaN" : "infinite");
		}
	}
	return 0;
}

/* Read OUT_DIR into a host set of our own (the file's mmap goes with the
 * run directory). */
static int read_output(texec *te, const char *out_dir, const sovmesh_tensor_set *current,
                       sovmesh_tensor_set **out, sovmesh_error *err)
{
	static const char *const need[] = {WEIGHTS_FILE, CONFIG_FILE};
	for (size_t i = 0; i < 2; i++) {
		char path[4096];
		struct stat st;
		snprintf(path, sizeof(path), "%s/%s", out_dir, need[i]);
		if (stat(path, &st) < 0 || !S_ISREG(st.st_mode))
			return sovmesh_fail(err, -EINVAL,
			                    "the trainer exited 0 but wrote no %s to OUT_DIR",
			                    need[i]);
	}
	sovmesh_tensor_set *got = NULL;
	sovmesh_error e = {0};
	int rc = te->api->adapter_read(te->host, out_dir, &got, &e);
	if (rc < 0)
		return sovmesh_fail(err, -EINVAL, "the trainer's output is not a valid adapter: %s",
		                    e.message);
	if (got->count == 0)
		rc = sovmesh_fail(err, -EINVAL, "the trainer's " WEIGHTS_FILE " holds no tensors");
	if (rc == 0 && current)
		rc = check_layout(current, got, err);
	if (rc == 0)
		rc = check_finite(got, err);
	/* The copy takes the current adapter's order when there is one, so
	 * the caller can line the two up index by index. */
	const sovmesh_tensor_set *layout = current ? current : got;
	sovmesh_tensor_set *copy = NULL;
	if (rc == 0) {
		copy = te->api->tensor_set_new(te->host, layout, layout->count);
		if (!copy)
			rc = sovmesh_fail(err, -ENOMEM, "out of memory");
	}
	for (size_t k = 0; rc == 0 && k < copy->count; k++) {
		sovmesh_tensor *dst = &copy->tensors[k];
		const sovmesh_tensor *src = find_tensor(got, dst->name);
		if (!src || src->nbytes != dst->nbytes) {
			rc = sovmesh_fail(err, -EINVAL,
			                  "tensor '%s': %llu bytes of data, expected %llu",
			                  dst->name, src ? (unsigned long long)src->nbytes : 0ULL,
			                  (unsigned long long)dst->nbytes);
			break;
		}
		if (src->nbytes)
			memcpy(dst->data, src->data, src->nbytes);
	}
	te->api->tensor_set_free(te->host, got);
	if (rc < 0) {
		if (copy)
			te->api->tensor_set_free(te->host, copy);
		return rc;
	}
	*out = copy;
	return 0;
}

static double report_value(texec *te, json_t *root, const char *key)
{
	json_t *v = json_object_get(root, key);
	if (json_is_number(v))
		return json_number_value(v);
	if (v && !json_is_null(v))
		te->api->log(te->host, SOVMESH_LOG_WARNING,
		             REPORT_FILE ": \"%s\" is not a number; ignored", key);
	return NAN;
}

static void read_report(texec *te, const char *out_dir, sovmesh_train_report *report)
{
	report->loss_before = NAN;
	report->loss_after = NAN;
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", out_dir, REPORT_FILE);
	if (access(path, F_OK) < 0)
		return; /* optional */
	json_error_t jerr;
	json_t *root = json_load_file(path, 0, &jerr);
	if (!root || !json_is_object(root)) {
		te->api->log(te->host, SOVMESH_LOG_WARNING,
		             "the trainer's " REPORT_FILE " is not a JSON object (%s); losses "
		             "unknown",
		             root ? "wrong type" : jerr.text);
		json_decref(root);
		return;
	}
	report->loss_before = report_value(te, root, "loss_before");
	report->loss_after = report_value(te, root, "loss_after");
	json_decref(root);
}

/* ---- train ------------------------------------------------------------- */

static const char *signal_name(int sig)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
	const char *n = sigabbrev_np(sig);
	return n ? n : "?";
#else
	(void)sig;
	return "?";
#endif
}

/* Turn what happened to the process into a return code. */
static int outcome(texec *te, const spawn_result *res, const run_log *rl, uint64_t timeout_ms,
                   sovmesh_error *err)
{
	const char *exe = te->argv[0];
	if (res->timed_out)
		return sovmesh_fail(err, -ETIMEDOUT,
		                    "%s ran longer than %" PRIu64 " ms and was stopped with %s; "
		                    "last stderr line: %s",
		                    exe, timeout_ms, res->killed ? "SIGKILL" : "SIGTERM",
		                    last_line(rl));
	if (res->lost)
		return sovmesh_fail(err, -EIO,
		                    "the exit status of %s was lost (is SIGCHLD ignored?)", exe);
	if (!res->exited)
		return sovmesh_fail(err, -EIO,
		                    "%s was killed by signal %d (SIG%s); last stderr line: %s", exe,
		                    res->sig, signal_name(res->sig), last_line(rl));
	switch (res->code) {
	case 0:
		return 0;
	case EXIT_UNUSABLE:
		return sovmesh_fail(err, -EINVAL, "%s found the samples unusable (exit 2): %s", exe,
		                    last_line(rl));
	case EXIT_TEMPFAIL:
		return sovmesh_fail(err, -EAGAIN,
		                    "%s asked to be run again later (exit 75, EX_TEMPFAIL): %s",
		                    exe, last_line(rl));
	default:
		return sovmesh_fail(err, -EIO, "%s exited with status %d; last stderr line: %s",
		                    exe, res->code, last_line(rl));
	}
}

static int run_tool(texec *te, const sovmesh_train_input *in, const char *run_dir,
                    const char *samples, const char *current, const char *out_dir,
                    uint64_t timeout_ms, sovmesh_error *err)
{
	char env_model[1024], env_seed[64], env_timeout[64], env_samples[64];
	snprintf(env_model, sizeof(env_model), "SOVMESH_BASE_MODEL=%s",
	         in->base_model ? in->base_model : "");
	snprintf(env_seed, sizeof(env_seed), "SOVMESH_SEED=%" PRIu64, in->seed);
	snprintf(env_timeout, sizeof(env_timeout), "SOVMESH_TIMEOUT_SECS=%" PRIu64,
	         (timeout_ms + 999) / 1000);
	snprintf(env_samples, sizeof(env_samples), "SOVMESH_SAMPLES=%zu", in->n_samples);
	const char *envp[8];
	size_t ne = 0;
	for (size_t i = 0; i < 3; i++)
		if (te->env_keep[i])
			envp[ne++] = te->env_keep[i];
	envp[ne++] = env_model;
	envp[ne++] = env_seed;
	envp[ne++] = env_timeout;
	envp[ne++] = env_samples;
	envp[ne] = NULL;

	const char **argv = calloc(te->n_argv + 4, sizeof(char *));
	if (!argv)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	for (size_t i = 0; i < te->n_argv; i++)
		argv[i] = te->argv[i];
	argv[te->n_argv] = samples;
	argv[te->n_argv + 1] = current;
	argv[te->n_argv + 2] = out_dir;

	run_log *rl = calloc(1, sizeof(*rl));
	if (!rl) {
		free(argv);
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	}
	rl->te = te;
	spawn_spec spec = {
	    .argv = argv,
	    .envp = envp,
	    .cwd = run_dir,
	    .timeout_ms = timeout_ms,
	    .grace_ms = GRACE_MS,
	    .on_line = on_line,
	    .ud = rl,
	};
	spawn_result res;
	te->api->log(te->host, SOVMESH_LOG_INFO,
	             "running %s on %zu samples (timeout %" PRIu64 " s)", te->argv[0],
	             in->n_samples, (timeout_ms + 999) / 1000);
	int rc = spawn_run(&spec, &res, err);
	if (rc == 0) {
		for (int s = 1; s <= 2; s++)
			if (rl->lines[s] > te->max_lines)
				te->api->log(
				    te->host, s == 2 ? SOVMESH_LOG_WARNING : SOVMESH_LOG_DEBUG,
				    "%" PRIu64 " more %s lines not logged (max_stderr_lines = "
				    "%" PRIu64 ")",
				    rl->lines[s] - te->max_lines, s == 2 ? "stderr" : "stdout",
				    te->max_lines);
		if (res.leftovers)
			te->api->log(te->host, SOVMESH_LOG_DEBUG,
			             "killed what %s left running in its process group",
			             te->argv[0]);
		if (res.held_open)
			te->api->log(te->host, SOVMESH_LOG_WARNING,
			             "a process %s started outside its process group still holds "
			             "its output open; not waiting for it",
			             te->argv[0]);
		rc = outcome(te, &res, rl, timeout_ms, err);
	}
	free(rl);
	free(argv);
	return rc;
}

static int texec_train(void *instance, const sovmesh_train_input *in, sovmesh_tensor_set **out,
                       sovmesh_train_report *report, sovmesh_error *err)
{
	texec *te = instance;
	if (out)
		*out = NULL;
	if (!te || !in || !out)
		return sovmesh_fail(err, -EINVAL, "train: instance, input or output is NULL");
	if (in->size < sizeof(sovmesh_train_input))
		return sovmesh_fail(err, -EINVAL, "train: input size %u, expected at least %zu",
		                    in->size, sizeof(sovmesh_train_input));
	if (in->n_samples && !in->samples)
		return sovmesh_fail(err, -EINVAL, "train: %zu samples but no sample array",
		                    in->n_samples);
	if (in->current_dir && !in->current)
		return sovmesh_fail(err, -EINVAL, "train: current_dir is set but current is NULL");

	uint64_t timeout_ms = te->timeout_ms;
	if (in->timeout_ms && in->timeout_ms < timeout_ms)
		timeout_ms = in->timeout_ms;

	char *run_dir = NULL, *samples = NULL, *cur_dir = NULL, *out_dir = NULL;
	int rc = 0;
	/* The pid in the name lets a later start tell a stale directory
	 * (its daemon died mid-run) from one in use. */
	if (asprintf(&run_dir, "%s/%s%ld-XXXXXX", te->work_dir, te->run_prefix, (long)getpid()) < 0)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	if (!mkdtemp(run_dir)) {
		rc = sovmesh_fail(err, -errno, "cannot create a run directory in %s: %s",
		                  te->work_dir, strerror(errno));
		free(run_dir);
		return rc;
	}
	if (asprintf(&samples, "%s/" SAMPLES_FILE, run_dir) < 0)
		samples = NULL;
	if (asprintf(&out_dir, "%s/out", run_dir) < 0)
		out_dir = NULL;
	if (!samples || !out_dir) {
		rc = sovmesh_fail(err, -ENOMEM, "out of memory");
		goto done;
	}
	rc = write_samples(samples, in->samples, in->n_samples, err);
	if (rc < 0)
		goto done;
	if (mkdir(out_dir, 0700) < 0) {
		rc = sovmesh_fail(err, -errno, "%s: %s", out_dir, strerror(errno));
		goto done;
	}
	const char *current = "-";
	if (in->current_dir) {
		current = in->current_dir;
	} else if (in->current) {
		if (asprintf(&cur_dir, "%s/current", run_dir) < 0) {
			cur_dir = NULL;
			rc = sovmesh_fail(err, -ENOMEM, "out of memory");
			goto done;
		}
		sovmesh_error e = {0};
		rc = te->api->adapter_write(te->host, cur_dir, in->current, NULL, &e);
		if (rc < 0) {
			sovmesh_fail(err, rc,
			             "cannot write the current adapter for the trainer: %s",
			             e.message);
			goto done;
		}
		current = cur_dir;
	}

	rc = run_tool(te, in, run_dir, samples, current, out_dir, timeout_ms, err);
	/* The samples go as soon as the tool is done with them. */
	unlink(samples);
	if (rc < 0)
		goto done;
	rc = read_output(te, out_dir, in->current, out, err);
	if (rc < 0)
		goto done;
	if (report) {
		report->samples_used = in->n_samples;
		read_report(te, out_dir, report);
	}
done:
	if (remove_tree(run_dir) < 0)
		te->api->log(te->host, SOVMESH_LOG_WARNING, "cannot remove the run directory %s",
		             run_dir);
	free(run_dir);
	free(samples);
	free(cur_dir);
	free(out_dir);
	return rc;
}

static const sovmesh_trainer_ops texec_ops = {
    .size = sizeof(sovmesh_trainer_ops),
    .train = texec_train,
    .evaluate = NULL,
};

static const sovmesh_plugin_descriptor texec_descriptor = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_TRAINER,
    .name = "exec",
    .version = "1.0.0",
    .license = "MIT",
    .description = "Fine-tunes a LoRA adapter with an external command (PEFT, Unsloth, ...)",
    .settings = texec_settings,
    .create = texec_create,
    .destroy = texec_destroy,
    .ops = &texec_ops,
};

SOVMESH_PLUGIN_DEFINE(texec_descriptor)

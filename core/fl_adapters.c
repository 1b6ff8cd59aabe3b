/* Adapter history of federated learning (see fl_adapters.h). */
#include "fl_adapters.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapter.h"
#include "safetensors.h"
#include "state_file.h"
#include "tensor_set.h"

#define HISTORY_FILE    "history.json"
#define HISTORY_VERSION 1
#define HISTORY_MAX     (64 * 1024)

struct fl_adapters {
	char *dir;
	char names[FL_ADAPTERS_KEPT][FL_ADAPTER_NAME_MAX];
	size_t n;
	long next_seq; /* the number of the next "aNNNNNN" */
};

static int valid_name(const char *s)
{
	if (strcmp(s, "initial") == 0)
		return 1;
	if (s[0] != 'a' || strlen(s) != 7)
		return 0;
	for (int i = 1; i < 7; i++)
		if (s[i] < '0' || s[i] > '9')
			return 0;
	return 1;
}

static void history_path(const fl_adapters *a, char *buf, size_t len)
{
	snprintf(buf, len, "%s/" HISTORY_FILE, a->dir);
}

void fl_adapters_dir(const fl_adapters *a, const char *name, char *buf, size_t len)
{
	snprintf(buf, len, "%s/%s", a->dir, name);
}

static int load_history(fl_adapters *a, sovmesh_error *err)
{
	char path[PATH_MAX];
	history_path(a, path, sizeof(path));
	char *text = NULL;
	size_t len = 0;
	int r = state_file_read(path, HISTORY_MAX, &text, &len, NULL, err);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	json_error_t jerr;
	json_t *root = json_loadb(text, len, 0, &jerr);
	free(text);
	json_t *h = json_object_get(root, "history");
	if (!json_is_object(root) ||
	    json_integer_value(json_object_get(root, "version")) != HISTORY_VERSION ||
	    !json_is_array(h) || json_array_size(h) > FL_ADAPTERS_KEPT) {
		json_decref(root);
		return sovmesh_fail(err, -EINVAL,
		                    "%s: not an adapter history of version %d (fix or move it; "
		                    "sovmesh does not reset it)",
		                    path, HISTORY_VERSION);
	}
	size_t i;
	json_t *v;
	json_array_foreach(h, i, v)
	{
		const char *s = json_string_value(v);
		if (!s || !valid_name(s)) {
			json_decref(root);
			return sovmesh_fail(err, -EINVAL, "%s: history entry %zu is not an adapter name",
			                    path, i);
		}
		/* A repeated name would let a rollback delete the current
		 * adapter's directory; "initial" is only ever the oldest. */
		int repeated = i > 0 && strcmp(s, "initial") == 0;
		for (size_t k = 0; !repeated && k < a->n; k++)
			repeated = strcmp(a->names[k], s) == 0;
		if (repeated) {
			sovmesh_fail(err, -EINVAL, "%s: history entry %zu repeats or misplaces '%s'",
			             path, i, s);
			json_decref(root);
			return -EINVAL;
		}
		snprintf(a->names[a->n++], FL_ADAPTER_NAME_MAX, "%s", s);
		if (s[0] == 'a' && atol(s + 1) >= a->next_seq)
			a->next_seq = atol(s + 1) + 1;
	}
	json_int_t seq = json_integer_value(json_object_get(root, "next"));
	if (seq > a->next_seq && seq < 10000000)
		a->next_seq = (long)seq;
	json_decref(root);
	return 0;
}

int fl_adapters_open(const char *dir, fl_adapters **out, sovmesh_error *err)
{
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return sovmesh_fail(err, -errno, "%s: cannot create: %s", dir, strerror(errno));
	fl_adapters *a = calloc(1, sizeof(*a));
	if (!a || !(a->dir = strdup(dir))) {
		free(a);
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	}
	a->next_seq = 1;
	int r = load_history(a, err);
	if (r < 0) {
		fl_adapters_free(a);
		return r;
	}
	*out = a;
	return 0;
}

void fl_adapters_free(fl_adapters *a)
{
	if (!a)
		return;
	free(a->dir);
	free(a);
}

size_t fl_adapters_count(const fl_adapters *a)
{
	return a->n;
}

const char *fl_adapters_current(const fl_adapters *a)
{
	return a->n ? a->names[a->n - 1] : NULL;
}

const char *fl_adapters_previous(const fl_adapters *a)
{
	return a->n > 1 ? a->names[a->n - 2] : NULL;
}

int fl_adapters_load_current(const fl_adapters *a, sovmesh_tensor_set **out, char **config_json,
                             sovmesh_error *err)
{
	if (!a->n)
		return sovmesh_fail(err, -ENOENT, "no adapter yet");
	char dir[PATH_MAX];
	fl_adapters_dir(a, fl_adapters_current(a), dir, sizeof(dir));
	sovmesh_tensor_set *mapped = NULL;
	int r = adapter_read(dir, &mapped, config_json, err);
	if (r < 0)
		return r;
	/* A heap copy: the caller may keep it across a later commit that
	 * prunes the directory it was mapped from. */
	sovmesh_tensor_set *copy = tset_new(mapped, mapped->count);
	if (!copy) {
		tset_free(mapped);
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < mapped->count; i++)
		memcpy(copy->tensors[i].data, mapped->tensors[i].data, mapped->tensors[i].nbytes);
	tset_free(mapped);
	*out = copy;
	return 0;
}

static int save_history(const fl_adapters *a, sovmesh_error *err)
{
	json_t *h = json_array();
	for (size_t i = 0; h && i < a->n; i++)
		json_array_append_new(h, json_string(a->names[i]));
	json_t *root = h ? json_pack("{s:i,s:o,s:I}", "version", HISTORY_VERSION, "history", h,
	                             "next", (json_int_t)a->next_seq)
	                 : NULL;
	char *text = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
	json_decref(root);
	if (!text)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	char path[PATH_MAX];
	history_path(a, path, sizeof(path));
	struct iovec iov[2] = {{text, strlen(text)}, {"\n", 1}};
	int r = state_file_write(path, iov, 2, err);
	free(text);
	return r;
}

/* Delete an adapter directory (its two files, then the directory). */
static void remove_adapter_dir(const fl_adapters *a, const char *name)
{
	char dir[PATH_MAX];
	fl_adapters_dir(a, name, dir, sizeof(dir));
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] != '.')
			unlinkat(dirfd(d), e->d_name, 0);
	}
	closedir(d);
	rmdir(dir);
}

int fl_adapters_commit(fl_adapters *a, const sovmesh_tensor_set *set, const char *config_json,
                       char *name_out, sovmesh_error *err)
{
	char name[FL_ADAPTER_NAME_MAX];
	if (a->n == 0)
		snprintf(name, sizeof(name), "initial");
	else
		snprintf(name, sizeof(name), "a%06ld", a->next_seq % 1000000);
	char dir[PATH_MAX];
	fl_adapters_dir(a, name, dir, sizeof(dir));
	int r = adapter_write(dir, set, config_json, err);
	if (r < 0)
		return r;
	/* Undo point: a failed history write must leave the history (and the
	 * pruned entry, whose directory is still there) as it was. */
	struct fl_adapters saved = *a;
	char dropped[FL_ADAPTER_NAME_MAX] = "";
	if (a->n == FL_ADAPTERS_KEPT) {
		/* Keep "initial" when it is the oldest: it is every node's start. */
		size_t drop = strcmp(a->names[0], "initial") == 0 ? 1 : 0;
		snprintf(dropped, sizeof(dropped), "%s", a->names[drop]);
		memmove(a->names[drop], a->names[drop + 1],
		        (a->n - drop - 1) * FL_ADAPTER_NAME_MAX);
		a->n--;
	}
	snprintf(a->names[a->n++], FL_ADAPTER_NAME_MAX, "%s", name);
	if (strcmp(name, "initial") != 0)
		a->next_seq++;
	r = save_history(a, err);
	if (r < 0) {
		/* The directory exists but is not current: harmless, its name
		 * is reused by the next commit and overwritten atomically. */
		*a = saved;
		return r;
	}
	if (dropped[0])
		remove_adapter_dir(a, dropped);
	if (name_out)
		snprintf(name_out, FL_ADAPTER_NAME_MAX, "%s", name);
	return 0;
}

int fl_adapters_rollback(fl_adapters *a, sovmesh_error *err)
{
	if (a->n < 2)
		return sovmesh_fail(err, -ENOENT,
		                    "there is no previous adapter to roll back to");
	char gone[FL_ADAPTER_NAME_MAX];
	snprintf(gone, sizeof(gone), "%s", a->names[a->n - 1]);
	a->n--;
	int r = save_history(a, err);
	if (r < 0) {
		a->n++;
		return r;
	}
	remove_adapter_dir(a, gone);
	return 0;
}

json_t *fl_adapters_json(const fl_adapters *a)
{
	json_t *h = json_array();
	for (size_t i = 0; h && i < a->n; i++)
		json_array_append_new(h, json_string(a->names[i]));
	const char *cur = fl_adapters_current(a), *prev = fl_adapters_previous(a);
	return json_pack("{s:o,s:o,s:o}", "current", cur ? json_string(cur) : json_null(),
	                 "previous", prev ? json_string(prev) : json_null(), "history",
	                 h ? h : json_array());
}

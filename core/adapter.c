/*
 * PEFT LoRA adapter directories: adapter_model.safetensors (the weights)
 * and adapter_config.json (PEFT's LoraConfig).  The core only needs the
 * config to be a JSON object; it keeps the text so it can be written back
 * unchanged next to new weights.  See docs/adapter-files.md.
 */
#include "adapter.h"

#include "state_file.h"

#include "safetensors.h"
#include "tensor_set.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* adapter_config.json is a few hundred bytes; anything near this is not a
 * PEFT config and is refused before it is read into memory. */
#define ADAPTER_CONFIG_MAX (1024u * 1024u)

static char *join_path(const char *dir, const char *file)
{
	char *p;
	if (asprintf(&p, "%s/%s", dir, file) < 0)
		return NULL;
	return p;
}

/* 0 when `text` (len bytes) is a JSON object; else -EINVAL prefixed `where`. */
static int check_config_text(const char *where, const char *text, size_t len, sovmesh_error *err)
{
	json_error_t jerr;
	json_t *root = json_loadb(text, len, 0, &jerr);
	if (!root)
		return tset_fail(err, -EINVAL, "%s: not valid JSON: %s (line %d, column %d)", where,
		                 jerr.text, jerr.line, jerr.column);
	int ok = json_is_object(root);
	json_decref(root);
	if (!ok)
		return tset_fail(err, -EINVAL, "%s: not a JSON object", where);
	return 0;
}

/* See adapter.h.  *out is mmap-backed (tset_free unmaps); *config_json,
 * when asked for, is malloc'd.  Nothing is returned on error. */
int adapter_read(const char *dir, sovmesh_tensor_set **out, char **config_json, sovmesh_error *err)
{
	*out = NULL;
	if (config_json)
		*config_json = NULL;
	char *cfg_path = join_path(dir, ADAPTER_CONFIG_FILE);
	char *w_path = join_path(dir, ADAPTER_WEIGHTS_FILE);
	char *text = NULL;
	size_t len = 0;
	int r;
	if (!cfg_path || !w_path) {
		r = tset_fail(err, -ENOMEM, "%s: out of memory", dir);
		goto out;
	}
	r = state_file_read(cfg_path, ADAPTER_CONFIG_MAX, &text, &len, NULL, err);
	if (r < 0)
		goto out;
	r = check_config_text(cfg_path, text, len, err);
	if (r < 0)
		goto out;
	r = safetensors_read_file(w_path, out, err);
	if (r < 0)
		goto out;
	if (config_json) {
		*config_json = text;
		text = NULL;
	}
out:
	free(text);
	free(cfg_path);
	free(w_path);
	return r;
}

/* The module name a PEFT key targets: "...q_proj.lora_A.weight" -> "q_proj";
 * NULL if `name` has no ".lora_A." component. */
static char *lora_module(const char *name)
{
	const char *a = strstr(name, ".lora_A.");
	if (!a)
		return NULL;
	const char *start = a;
	while (start > name && start[-1] != '.')
		start--;
	if (start == a)
		return NULL;
	return strndup(start, (size_t)(a - start));
}

/*
 * The minimal LoRA config written when the caller has none: rank from the
 * first lora_A weight (PEFT stores it as [r, in_features]), lora_alpha equal
 * to r so the scaling alpha/r is 1, and target_modules from the lora_A names.
 */
static int minimal_config(const sovmesh_tensor_set *set, char **text, sovmesh_error *err)
{
	json_int_t rank = 8;
	int have_rank = 0;
	json_t *modules = json_array();
	json_t *root = json_object();
	int bad = !modules || !root;
	for (size_t i = 0; i < set->count && !bad; i++) {
		const sovmesh_tensor *t = &set->tensors[i];
		char *mod = t->name ? lora_module(t->name) : NULL;
		if (!mod)
			continue;
		if (!have_rank && t->ndim == 2 && t->shape[0] > 0 && t->shape[0] <= INT32_MAX) {
			rank = (json_int_t)t->shape[0];
			have_rank = 1;
		}
		size_t k;
		json_t *v;
		int seen = 0;
		json_array_foreach(modules, k, v)
		{
			if (strcmp(json_string_value(v), mod) == 0)
				seen = 1;
		}
		/* A name that is not UTF-8 cannot be listed; skip it. */
		json_t *s = seen ? NULL : json_string(mod);
		if (s)
			bad = json_array_append_new(modules, s) < 0;
		free(mod);
	}
	if (!bad) {
		bad = json_object_set_new(root, "peft_type", json_string("LORA")) ||
		      json_object_set_new(root, "task_type", json_string("CAUSAL_LM")) ||
		      json_object_set_new(root, "r", json_integer(rank)) ||
		      json_object_set_new(root, "lora_alpha", json_integer(rank)) ||
		      json_object_set(root, "target_modules", modules);
	}
	*text = bad ? NULL : json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
	json_decref(modules);
	json_decref(root);
	if (!*text)
		return tset_fail(err, -ENOMEM, "out of memory building adapter_config.json");
	return 0;
}

/* See adapter.h.  Only the last path component is created.  The weights
 * go first: each file is replaced atomically, and a crash between the two
 * leaves new weights beside the old config (which names the same modules
 * for an adapter being updated). */
int adapter_write(const char *dir, const sovmesh_tensor_set *set, const char *config_json,
                  sovmesh_error *err)
{
	char *cfg_path = join_path(dir, ADAPTER_CONFIG_FILE);
	char *w_path = join_path(dir, ADAPTER_WEIGHTS_FILE);
	char *generated = NULL;
	int r = 0;
	if (!cfg_path || !w_path) {
		r = tset_fail(err, -ENOMEM, "%s: out of memory", dir);
		goto out;
	}
	/* Refuse a bad config before anything is touched on disk. */
	if (config_json) {
		r = check_config_text("adapter config", config_json, strlen(config_json), err);
		if (r < 0)
			goto out;
	} else {
		r = minimal_config(set, &generated, err);
		if (r < 0)
			goto out;
	}
	if (mkdir(dir, 0700) < 0) {
		int e = errno;
		struct stat st;
		if (e != EEXIST) {
			r = tset_fail(err, -e, "%s: cannot create directory: %s", dir, strerror(e));
			goto out;
		}
		if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
			r = tset_fail(err, -ENOTDIR, "%s: exists and is not a directory", dir);
			goto out;
		}
	}
	r = safetensors_write_file(w_path, set, err);
	if (r < 0)
		goto out;
	const char *text = config_json ? config_json : generated;
	struct iovec part = {.iov_base = (void *)text, .iov_len = strlen(text)};
	r = state_file_write(cfg_path, &part, 1, err);
out:
	free(generated);
	free(cfg_path);
	free(w_path);
	return r;
}

/* See adapter.h.  A directory is read as an adapter; anything else as a
 * safetensors file.  *out is caller-owned (tset_free). */
int adapter_load_path(const char *path, sovmesh_tensor_set **out, sovmesh_error *err)
{
	*out = NULL;
	struct stat st;
	if (stat(path, &st) < 0)
		return tset_fail(err, -errno, "%s: %s", path, strerror(errno));
	if (S_ISDIR(st.st_mode))
		return adapter_read(path, out, NULL, err);
	return safetensors_read_file(path, out, err);
}

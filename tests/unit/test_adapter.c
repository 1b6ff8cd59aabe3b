/* adapter.c: PEFT adapter directories written and read back, the minimal
 * config, and every refusal naming the file at fault. */
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

#include "adapter.h"
#include "safetensors.h"
#include "tensor_set.h"

static char tmpdir[256];
static char path[512];

static int setup_tmp(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_adapter.XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmp(void **state)
{
	(void)state;
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static const char *sub(const char *rel)
{
	snprintf(path, sizeof(path), "%s/%s", tmpdir, rel);
	return path;
}

static void write_text(const char *p, const char *text)
{
	FILE *f = fopen(p, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

/* A small LoRA adapter: q_proj and v_proj of one layer, rank 4, plus an
 * unrelated tensor. */
static sovmesh_tensor_set *lora_set(void)
{
	static const char *const names[] = {
	    "base_model.model.layers.0.self_attn.v_proj.lora_B.weight",
	    "base_model.model.layers.0.self_attn.q_proj.lora_A.weight",
	    "base_model.model.layers.0.self_attn.q_proj.lora_B.weight",
	    "base_model.model.layers.0.self_attn.v_proj.lora_A.weight",
	    "base_model.model.layers.1.self_attn.q_proj.lora_A.weight",
	    "extra.bias",
	};
	sovmesh_tensor_set *set = tset_new(NULL, 6);
	uint64_t a[2] = {4, 16}, b[2] = {16, 4};
	for (size_t i = 0; i < 6; i++) {
		const uint64_t *shape = strstr(names[i], "lora_A") ? a : b;
		assert_int_equal(
		    tset_init_tensor(set, i, names[i], SOVMESH_DTYPE_F32, i == 5 ? 1 : 2, shape),
		    0);
		for (uint64_t k = 0; k < sovmesh_tensor_numel(&set->tensors[i]); k++)
			sovmesh_tensor_set_value(&set->tensors[i], k, (double)(i * 100 + k));
	}
	return set;
}

static void test_write_read_minimal_config(void **state)
{
	(void)state;
	sovmesh_tensor_set *set = lora_set();
	sovmesh_error err = {0};
	const char *dir = strdup(sub("ad1"));
	if (adapter_write(dir, set, NULL, &err) != 0)
		fail_msg("%s", err.message);
	struct stat st;
	assert_int_equal(stat(dir, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);

	sovmesh_tensor_set *back = NULL;
	char *cfg = NULL;
	if (adapter_read(dir, &back, &cfg, &err) != 0)
		fail_msg("%s", err.message);
	assert_int_equal(back->count, 6);
	/* Sorted by name, data intact. */
	assert_string_equal(back->tensors[0].name,
	                    "base_model.model.layers.0.self_attn.q_proj.lora_A.weight");
	assert_true(sovmesh_tensor_get(&back->tensors[0], 5) == 105.0);
	assert_string_equal(back->tensors[5].name, "extra.bias");

	json_error_t jerr;
	json_t *root = json_loads(cfg, 0, &jerr);
	assert_non_null(root);
	assert_string_equal(json_string_value(json_object_get(root, "peft_type")), "LORA");
	assert_string_equal(json_string_value(json_object_get(root, "task_type")), "CAUSAL_LM");
	assert_int_equal(json_integer_value(json_object_get(root, "r")), 4);
	assert_int_equal(json_integer_value(json_object_get(root, "lora_alpha")), 4);
	json_t *mods = json_object_get(root, "target_modules");
	assert_int_equal(json_array_size(mods), 2);
	assert_string_equal(json_string_value(json_array_get(mods, 0)), "q_proj");
	assert_string_equal(json_string_value(json_array_get(mods, 1)), "v_proj");
	json_decref(root);
	free(cfg);
	tset_free(back);
	tset_free(set);

	/* No lora_A at all: rank defaults to 8, no target modules. */
	set = tset_new(NULL, 0);
	assert_int_equal(adapter_write(dir, set, NULL, &err), 0);
	assert_int_equal(adapter_read(dir, &back, &cfg, &err), 0);
	root = json_loads(cfg, 0, &jerr);
	assert_int_equal(json_integer_value(json_object_get(root, "r")), 8);
	assert_int_equal(json_array_size(json_object_get(root, "target_modules")), 0);
	json_decref(root);
	free(cfg);
	tset_free(back);
	tset_free(set);
	free((void *)dir);
}

static void test_write_keeps_given_config(void **state)
{
	(void)state;
	sovmesh_tensor_set *set = lora_set();
	sovmesh_error err = {0};
	const char *given = "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 32}\n";
	char *dir = strdup(sub("ad2"));
	assert_int_equal(mkdir(dir, 0755), 0); /* existing directory is fine */
	assert_int_equal(adapter_write(dir, set, given, &err), 0);
	sovmesh_tensor_set *back = NULL;
	char *cfg = NULL;
	assert_int_equal(adapter_read(dir, &back, &cfg, &err), 0);
	assert_string_equal(cfg, given);
	free(cfg);
	tset_free(back);

	/* The config is checked before anything on disk changes. */
	assert_int_equal(adapter_write(dir, set, "[1, 2]", &err), -EINVAL);
	assert_non_null(strstr(err.message, "not a JSON object"));
	assert_int_equal(adapter_write(dir, set, "{\"r\": ", &err), -EINVAL);
	assert_non_null(strstr(err.message, "not valid JSON"));
	assert_int_equal(adapter_read(dir, &back, &cfg, &err), 0);
	assert_string_equal(cfg, given);
	free(cfg);
	tset_free(back);

	/* Only the last component is created. */
	char deep[600];
	snprintf(deep, sizeof(deep), "%s/no/such", dir);
	assert_int_equal(adapter_write(deep, set, NULL, &err), -ENOENT);
	assert_true(strncmp(err.message, deep, strlen(deep)) == 0);
	assert_non_null(strstr(err.message, "cannot create directory"));

	/* A file where the directory should be. */
	snprintf(deep, sizeof(deep), "%s/adapter_config.json", dir);
	assert_int_equal(adapter_write(deep, set, NULL, &err), -ENOTDIR);
	assert_non_null(strstr(err.message, "not a directory"));
	tset_free(set);
	free(dir);
}

static void test_read_refusals(void **state)
{
	(void)state;
	sovmesh_error err = {0};
	sovmesh_tensor_set *set = lora_set(), *out = (void *)1;
	char *cfg = (void *)1;
	char *dir = strdup(sub("ad3"));
	assert_int_equal(adapter_write(dir, set, NULL, &err), 0);
	char cfg_path[600], w_path[600];
	snprintf(cfg_path, sizeof(cfg_path), "%s/" ADAPTER_CONFIG_FILE, dir);
	snprintf(w_path, sizeof(w_path), "%s/" ADAPTER_WEIGHTS_FILE, dir);

	write_text(cfg_path, "[\"not\", \"an object\"]");
	assert_int_equal(adapter_read(dir, &out, &cfg, &err), -EINVAL);
	assert_null(out);
	assert_null(cfg);
	assert_true(strncmp(err.message, cfg_path, strlen(cfg_path)) == 0);
	assert_non_null(strstr(err.message, "not a JSON object"));

	write_text(cfg_path, "{\"r\": 4,}");
	assert_int_equal(adapter_read(dir, &out, NULL, &err), -EINVAL);
	assert_true(strncmp(err.message, cfg_path, strlen(cfg_path)) == 0);
	assert_non_null(strstr(err.message, "not valid JSON"));

	unlink(cfg_path);
	assert_int_equal(adapter_read(dir, &out, NULL, &err), -ENOENT);
	assert_true(strncmp(err.message, cfg_path, strlen(cfg_path)) == 0);

	write_text(cfg_path, "{}");
	write_text(w_path, "garbage!garbage!"); /* "garbage!" is a huge length */
	assert_int_equal(adapter_read(dir, &out, NULL, &err), -E2BIG);
	assert_true(strncmp(err.message, w_path, strlen(w_path)) == 0);
	assert_non_null(strstr(err.message, "header length"));

	unlink(w_path);
	assert_int_equal(adapter_read(dir, &out, NULL, &err), -ENOENT);
	assert_true(strncmp(err.message, w_path, strlen(w_path)) == 0);
	assert_null(out);
	tset_free(set);
	free(dir);
}

static void test_load_path(void **state)
{
	(void)state;
	sovmesh_error err = {0};
	sovmesh_tensor_set *set = lora_set(), *out = NULL;
	char *dir = strdup(sub("ad4"));
	assert_int_equal(adapter_write(dir, set, NULL, &err), 0);

	assert_int_equal(adapter_load_path(dir, &out, &err), 0);
	assert_int_equal(out->count, 6);
	tset_free(out);

	char file[600];
	snprintf(file, sizeof(file), "%s/" ADAPTER_WEIGHTS_FILE, dir);
	assert_int_equal(adapter_load_path(file, &out, &err), 0);
	assert_int_equal(out->count, 6);
	tset_free(out);

	snprintf(file, sizeof(file), "%s/nothing-here", dir);
	assert_int_equal(adapter_load_path(file, &out, &err), -ENOENT);
	assert_null(out);
	assert_true(strncmp(err.message, file, strlen(file)) == 0);

	/* A directory without adapter files names the missing config. */
	assert_int_equal(adapter_load_path(tmpdir, &out, &err), -ENOENT);
	assert_non_null(strstr(err.message, ADAPTER_CONFIG_FILE));
	tset_free(set);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_write_read_minimal_config),
	    cmocka_unit_test(test_write_keeps_given_config),
	    cmocka_unit_test(test_read_refusals),
	    cmocka_unit_test(test_load_path),
	};
	return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}

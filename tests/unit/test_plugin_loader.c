/*
 * The plugin loader against the deliberately broken plugins of
 * tests/plugins/ ($SOVMESH_TEST_PLUGIN_DIR): each refusal gives its
 * return code and one line naming the file and the reason; the good
 * plugin loads by name and works; the search path has its documented
 * order; short ops tables are zero-extended.
 */
#include <errno.h>
#include <limits.h>
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

#include <sovmesh/sovmesh.h>

#include "build_config.h"
#include "plugin_loader.h"

static const char *plugin_dir(void)
{
	const char *d = getenv("SOVMESH_TEST_PLUGIN_DIR");
	if (!d)
		fail_msg("SOVMESH_TEST_PLUGIN_DIR is not set (run through meson test)");
	return d;
}

static char *variant_path(const char *file)
{
	char *p;
	assert_true(asprintf(&p, "%s/%s", plugin_dir(), file) > 0);
	return p;
}

/* The message is one line and contains every given phrase. */
static void assert_message(const sovmesh_error *err, const char *first, ...)
{
	assert_null(strchr(err->message, '\n'));
	va_list ap;
	va_start(ap, first);
	for (const char *s = first; s; s = va_arg(ap, const char *))
		if (!strstr(err->message, s))
			fail_msg("message \"%s\" lacks \"%s\"", err->message, s);
	va_end(ap);
}

static void test_kind_tables(void **state)
{
	(void)state;
	assert_string_equal(plugin_kind_prefix(SOVMESH_KIND_DISCOVERY), "discovery");
	assert_string_equal(plugin_kind_prefix(SOVMESH_KIND_BACKEND), "backend");
	assert_string_equal(plugin_kind_prefix(SOVMESH_KIND_CACHE), "cache");
	assert_string_equal(plugin_kind_prefix(SOVMESH_KIND_AGGREGATOR), "agg");
	assert_string_equal(plugin_kind_prefix(SOVMESH_KIND_NOISE), "dp");
	assert_string_equal(plugin_kind_prefix(SOVMESH_KIND_TRAINER), "trainer");
	assert_null(plugin_kind_prefix(0));
	assert_null(plugin_kind_prefix(7));
	assert_string_equal(plugin_kind_label(SOVMESH_KIND_AGGREGATOR), "aggregator");
	assert_string_equal(plugin_kind_label(SOVMESH_KIND_NOISE), "noise mechanism");
	assert_int_equal(plugin_kind_ops_size(SOVMESH_KIND_BACKEND), sizeof(sovmesh_backend_ops));
	assert_int_equal(plugin_kind_ops_size(SOVMESH_KIND_TRAINER), sizeof(sovmesh_trainer_ops));
	assert_int_equal(plugin_kind_ops_size(42), 0);
}

static void test_search_path_order(void **state)
{
	(void)state;
	const char *config_dirs[] = {"/cfg/one", NULL, "", "/cfg/two"};
	setenv("SOVMESH_PLUGIN_PATH", "::/env/a:::/env/b:/cfg/one:", 1);
	plugin_search_path sp;
	assert_int_equal(plugin_search_path_build(config_dirs, 4, &sp), 0);
	unsetenv("SOVMESH_PLUGIN_PATH");

	/* Config, then env (empties ignored, duplicates dropped), then the
	 * build tree (this test runs from it), then the install dir. */
	assert_int_equal(sp.count, 6);
	assert_string_equal(sp.dirs[0], "/cfg/one");
	assert_string_equal(sp.dirs[1], "/cfg/two");
	assert_string_equal(sp.dirs[2], "/env/a");
	assert_string_equal(sp.dirs[3], "/env/b");
	assert_string_equal(sp.dirs[4], SOVMESH_BUILD_PLUGIN_DIR);
	assert_string_equal(sp.dirs[5], SOVMESH_PLUGIN_INSTALL_DIR);
	plugin_search_path_free(&sp);
	assert_int_equal(sp.count, 0);
	plugin_search_path_free(&sp); /* twice is harmless */
	plugin_search_path_free(NULL);

	assert_int_equal(plugin_search_path_build(NULL, 0, &sp), 0);
	assert_int_equal(sp.count, 2);
	plugin_search_path_free(&sp);
}

/* A one-tensor F32 set of 3 values. */
typedef struct small_set {
	sovmesh_tensor t;
	sovmesh_tensor_set set;
	float v[3];
} small_set;

static void small_set_init(small_set *s, float a, float b, float c)
{
	memset(s, 0, sizeof(*s));
	s->v[0] = a;
	s->v[1] = b;
	s->v[2] = c;
	s->t.name = "w";
	s->t.dtype = SOVMESH_DTYPE_F32;
	s->t.ndim = 1;
	s->t.shape[0] = 3;
	s->t.data = s->v;
	s->t.nbytes = sizeof(s->v);
	s->set.count = 1;
	s->set.tensors = &s->t;
}

static void test_good_by_name(void **state)
{
	(void)state;
	const char *dirs[] = {"/nonexistent/sovmesh-plugins", plugin_dir()};
	plugin_search_path sp;
	assert_int_equal(plugin_search_path_build(dirs, 2, &sp), 0);

	loaded_plugin *p = NULL;
	sovmesh_error err = {0, ""};
	int r = plugin_load_by_name(&sp, SOVMESH_KIND_AGGREGATOR, "good", &p, &err);
	if (r != 0)
		fail_msg("load failed: %d %s", r, err.message);
	char *want = variant_path("agg-good.so");
	assert_string_equal(p->path, want);
	free(want);
	assert_string_equal(p->label, "agg-good");
	assert_int_equal(p->kind, SOVMESH_KIND_AGGREGATOR);
	assert_non_null(p->dl);
	assert_string_equal(p->desc->name, "good");
	assert_string_equal(p->desc->version, "0.0.1");

	/* The copied table works: weighted mean with weights 1 and 3. */
	const sovmesh_aggregator_ops *ops = p->ops;
	assert_int_equal(ops->size, sizeof(sovmesh_aggregator_ops));
	assert_true(SOVMESH_HAS_SLOT(ops, sovmesh_aggregator_ops, aggregate));
	void *inst = (void *)1;
	assert_int_equal(p->desc->create(NULL, NULL, &inst, &err), 0);
	small_set a, b, out;
	small_set_init(&a, 1, 2, 3);
	small_set_init(&b, 5, 6, -1);
	small_set_init(&out, 0, 0, 0);
	const sovmesh_tensor_set *inputs[] = {&a.set, &b.set};
	const double weights[] = {1, 3};
	assert_int_equal(ops->aggregate(inst, inputs, weights, 2, &out.set, &err), 0);
	assert_float_equal(out.v[0], 4.0, 1e-6);
	assert_float_equal(out.v[1], 5.0, 1e-6);
	assert_float_equal(out.v[2], 0.0, 1e-6);
	assert_int_equal(ops->aggregate(inst, inputs, weights, 0, &out.set, &err), -EINVAL);

	plugin_release(p, 1);
	plugin_search_path_free(&sp);
}

/* Each broken plugin: file, expected code, phrases the message must hold. */
typedef struct refusal {
	const char *file;
	uint32_t kind;
	const char *name; /* asked for; NULL = any */
	int code;
	const char *phrase1, *phrase2;
} refusal;

static const refusal refusals[] = {
    {"agg-badmagic.so", SOVMESH_KIND_AGGREGATOR, "badmagic", -ELIBBAD, "bad magic",
     "0x04d5a90000300000"},
    {"agg-smalldesc.so", SOVMESH_KIND_AGGREGATOR, "smalldesc", -ELIBBAD, "descriptor too small",
     "(8 bytes"},
    {"agg-abimajor.so", SOVMESH_KIND_AGGREGATOR, "abimajor", -ELIBBAD,
     "ABI major 2 is not supported", "ABI 1.0"},
    {"agg-abiminor.so", SOVMESH_KIND_AGGREGATOR, "abiminor", -ELIBBAD,
     "ABI 1.1 is newer than this host's ABI 1.0", NULL},
    {"agg-unknownkind.so", SOVMESH_KIND_AGGREGATOR, "unknownkind", -ELIBBAD,
     "unknown plugin kind 99", NULL},
    {"agg-wrongkind.so", SOVMESH_KIND_AGGREGATOR, "wrongkind", -ELIBBAD,
     "it is a noise mechanism plugin", "expected an aggregator"},
    {"agg-wrongname.so", SOVMESH_KIND_AGGREGATOR, "wrongname", -ELIBBAD,
     "descriptor says 'othername'", "asked for 'wrongname'"},
    {"agg-nosymbol.so", SOVMESH_KIND_AGGREGATOR, "nosymbol", -ELIBBAD,
     "missing symbol sovmesh_plugin_entry", NULL},
    {"agg-nulldesc.so", SOVMESH_KIND_AGGREGATOR, "nulldesc", -ELIBBAD,
     "sovmesh_plugin_entry() returned NULL", NULL},
    {"agg-noversion.so", SOVMESH_KIND_AGGREGATOR, "noversion", -ELIBBAD, "no version", NULL},
    {"agg-nocreate.so", SOVMESH_KIND_AGGREGATOR, "nocreate", -ELIBBAD, "no create function", NULL},
    {"agg-noops.so", SOVMESH_KIND_AGGREGATOR, "noops", -ELIBBAD, "no ops table", NULL},
    {"agg-smallops.so", SOVMESH_KIND_AGGREGATOR, "smallops", -ELIBBAD,
     "ops table too small (4 bytes", "needs at least 16"},
    {"agg-nullslot.so", SOVMESH_KIND_AGGREGATOR, "nullslot", -ELIBBAD,
     "mandatory ops slot 'aggregate' is NULL", NULL},
    {"agg-unresolved.so", SOVMESH_KIND_AGGREGATOR, "unresolved", -ELIBBAD,
     "dlopen failed: undefined symbol: sovmesh_test_symbol_that_does_not_exist", NULL},
    /* The good plugin, asked for as another kind or name. */
    {"agg-good.so", SOVMESH_KIND_NOISE, "good", -ELIBBAD, "it is an aggregator plugin",
     "expected a noise mechanism"},
    {"agg-good.so", SOVMESH_KIND_AGGREGATOR, "fedavg", -ELIBBAD, "name mismatch",
     "asked for 'fedavg'"},
    {"agg-absent.so", SOVMESH_KIND_AGGREGATOR, "absent", -ENOENT, "No such file or directory",
     NULL},
};

static void test_refusals(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++) {
		const refusal *f = &refusals[i];
		char *path = variant_path(f->file);
		loaded_plugin *p = (loaded_plugin *)&p; /* must be reset to NULL */
		sovmesh_error err = {0, ""};
		int r = plugin_load_file(path, f->kind, f->name, &p, &err);
		print_message("%s -> %d: %s\n", f->file, r, err.message);
		if (r != f->code)
			fail_msg("%s: got %d (%s), want %d", f->file, r, err.message, f->code);
		assert_null(p);
		assert_int_equal(err.code, f->code);
		assert_message(&err, "plugin ", path, f->phrase1, f->phrase2, NULL);
		free(path);
	}
}

/* Refusals come out of load_by_name the same way: first match, no skip. */
static void test_refusal_by_name(void **state)
{
	(void)state;
	const char *dirs[] = {plugin_dir()};
	plugin_search_path sp;
	assert_int_equal(plugin_search_path_build(dirs, 1, &sp), 0);
	loaded_plugin *p = NULL;
	sovmesh_error err = {0, ""};
	assert_int_equal(plugin_load_by_name(&sp, SOVMESH_KIND_AGGREGATOR, "wrongname", &p, &err),
	                 -ELIBBAD);
	assert_null(p);
	assert_message(&err, "agg-wrongname.so", "name mismatch", "'othername'", NULL);
	assert_int_equal(plugin_load_by_name(&sp, SOVMESH_KIND_AGGREGATOR, "abimajor", &p, &err),
	                 -ELIBBAD);
	assert_message(&err, "agg-abimajor.so", "ABI major 2", NULL);
	plugin_search_path_free(&sp);
}

/* Asking for any name takes the descriptor's name for the label. */
static void test_any_name(void **state)
{
	(void)state;
	char *path = variant_path("agg-wrongname.so");
	loaded_plugin *p = NULL;
	sovmesh_error err = {0, ""};
	assert_int_equal(plugin_load_file(path, SOVMESH_KIND_AGGREGATOR, NULL, &p, &err), 0);
	assert_string_equal(p->label, "agg-othername");
	plugin_release(p, 0);
	free(path);
	plugin_release(NULL, 1);
}

typedef struct tmpdirs {
	char a[64], b[64];
} tmpdirs;

static void make_tmpdirs(tmpdirs *t)
{
	strcpy(t->a, "/tmp/sovmesh-loader-a-XXXXXX");
	strcpy(t->b, "/tmp/sovmesh-loader-b-XXXXXX");
	assert_non_null(mkdtemp(t->a));
	assert_non_null(mkdtemp(t->b));
}

static void link_into(const char *dir, const char *as, const char *target_file)
{
	char *target = variant_path(target_file);
	char link[PATH_MAX];
	snprintf(link, sizeof(link), "%s/%s", dir, as);
	assert_int_equal(symlink(target, link), 0);
	free(target);
}

static void remove_tmpdir(const char *dir, const char *file)
{
	char p[PATH_MAX];
	snprintf(p, sizeof(p), "%s/%s", dir, file);
	unlink(p);
	assert_int_equal(rmdir(dir), 0);
}

/* The same file name in two directories: the first on the path wins,
 * even when it is the broken one. */
static void test_env_path_first_match(void **state)
{
	(void)state;
	tmpdirs t;
	make_tmpdirs(&t);
	link_into(t.a, "agg-good.so", "agg-good.so");
	link_into(t.b, "agg-good.so", "agg-badmagic.so");

	char env[256];
	plugin_search_path sp;
	loaded_plugin *p = NULL;
	sovmesh_error err = {0, ""};
	char want[PATH_MAX];

	snprintf(env, sizeof(env), "%s:%s", t.a, t.b);
	setenv("SOVMESH_PLUGIN_PATH", env, 1);
	assert_int_equal(plugin_search_path_build(NULL, 0, &sp), 0);
	assert_int_equal(plugin_load_by_name(&sp, SOVMESH_KIND_AGGREGATOR, "good", &p, &err), 0);
	snprintf(want, sizeof(want), "%s/agg-good.so", t.a);
	assert_string_equal(p->path, want);
	plugin_release(p, 0);
	plugin_search_path_free(&sp);

	snprintf(env, sizeof(env), ":%s::%s:", t.b, t.a);
	setenv("SOVMESH_PLUGIN_PATH", env, 1);
	assert_int_equal(plugin_search_path_build(NULL, 0, &sp), 0);
	assert_int_equal(plugin_load_by_name(&sp, SOVMESH_KIND_AGGREGATOR, "good", &p, &err),
	                 -ELIBBAD);
	snprintf(want, sizeof(want), "%s/agg-good.so", t.b);
	assert_message(&err, want, "bad magic", NULL);
	plugin_search_path_free(&sp);

	/* A config directory comes before the environment. */
	const char *cfg[] = {t.a};
	assert_int_equal(plugin_search_path_build(cfg, 1, &sp), 0);
	assert_int_equal(plugin_load_by_name(&sp, SOVMESH_KIND_AGGREGATOR, "good", &p, &err), 0);
	snprintf(want, sizeof(want), "%s/agg-good.so", t.a);
	assert_string_equal(p->path, want);
	plugin_release(p, 0);
	plugin_search_path_free(&sp);
	unsetenv("SOVMESH_PLUGIN_PATH");

	remove_tmpdir(t.a, "agg-good.so");
	remove_tmpdir(t.b, "agg-good.so");
}

static void test_not_found_lists_dirs(void **state)
{
	(void)state;
	tmpdirs t;
	make_tmpdirs(&t);
	const char *cfg[] = {t.a, t.b};
	plugin_search_path sp;
	assert_int_equal(plugin_search_path_build(cfg, 2, &sp), 0);
	loaded_plugin *p = NULL;
	sovmesh_error err = {0, ""};
	assert_int_equal(plugin_load_by_name(&sp, SOVMESH_KIND_NOISE, "nothere", &p, &err),
	                 -ENOENT);
	assert_null(p);
	assert_int_equal(err.code, -ENOENT);
	assert_message(&err, "plugin dp-nothere.so not found", t.a, t.b, SOVMESH_PLUGIN_INSTALL_DIR,
	               NULL);
	/* Listed in search order. */
	assert_true(strstr(err.message, t.a) < strstr(err.message, t.b));
	plugin_search_path_free(&sp);

	/* An empty path still says where it looked (nowhere). */
	plugin_search_path empty = {0, NULL};
	assert_int_equal(plugin_load_by_name(&empty, SOVMESH_KIND_NOISE, "nothere", &p, &err),
	                 -ENOENT);
	assert_message(&err, "dp-nothere.so not found", "(no directories)", NULL);

	assert_int_equal(rmdir(t.a), 0);
	assert_int_equal(rmdir(t.b), 0);
}

/* Not an ELF file at all: dlopen's own text reaches the message. */
static void test_garbage_file(void **state)
{
	(void)state;
	tmpdirs t;
	make_tmpdirs(&t);
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/agg-garbage.so", t.a);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs("this is not a shared object\n", f);
	fclose(f);

	const char *cfg[] = {t.a};
	plugin_search_path sp;
	assert_int_equal(plugin_search_path_build(cfg, 1, &sp), 0);
	loaded_plugin *p = NULL;
	sovmesh_error err = {0, ""};
	assert_int_equal(plugin_load_by_name(&sp, SOVMESH_KIND_AGGREGATOR, "garbage", &p, &err),
	                 -ELIBBAD);
	assert_message(&err, path, "dlopen failed", NULL);
	plugin_search_path_free(&sp);

	/* A directory where a file should be. */
	snprintf(path, sizeof(path), "%s/agg-dir.so", t.b);
	assert_int_equal(mkdir(path, 0700), 0);
	assert_int_equal(plugin_load_file(path, SOVMESH_KIND_AGGREGATOR, "dir", &p, &err),
	                 -ELIBBAD);
	assert_message(&err, path, "not a regular file", NULL);
	assert_int_equal(rmdir(path), 0);

	remove_tmpdir(t.a, "agg-garbage.so");
	assert_int_equal(rmdir(t.b), 0);
}

static void test_invalid_names(void **state)
{
	(void)state;
	const char *dirs[] = {plugin_dir()};
	plugin_search_path sp;
	assert_int_equal(plugin_search_path_build(dirs, 1, &sp), 0);
	const char *bad[] = {"../x",
	                     "A",
	                     "",
	                     "a/b",
	                     "-x",
	                     "_x",
	                     "good.so",
	                     "go od",
	                     "Good",
	                     "x-y",
	                     "a123456789012345678901234567890123456789012345678901234567890123456"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		loaded_plugin *p = NULL;
		sovmesh_error err = {0, ""};
		int r = plugin_load_by_name(&sp, SOVMESH_KIND_AGGREGATOR, bad[i], &p, &err);
		if (r != -EINVAL)
			fail_msg("name '%s': got %d (%s)", bad[i], r, err.message);
		assert_null(p);
		assert_message(&err, "plugin name", NULL);
	}
	loaded_plugin *p = NULL;
	sovmesh_error err = {0, ""};
	assert_int_equal(plugin_load_by_name(&sp, SOVMESH_KIND_AGGREGATOR, NULL, &p, &err),
	                 -EINVAL);
	char *path = variant_path("agg-good.so");
	assert_int_equal(plugin_load_file(path, SOVMESH_KIND_AGGREGATOR, "Good", &p, &err),
	                 -EINVAL);
	assert_int_equal(plugin_load_file(path, 0, "good", &p, &err), -EINVAL);
	assert_int_equal(plugin_load_by_name(&sp, 77, "good", &p, &err), -EINVAL);
	assert_message(&err, "unknown plugin kind 77", NULL);
	/* Digits first and underscores inside are fine (not found here). */
	assert_int_equal(plugin_load_by_name(&sp, SOVMESH_KIND_AGGREGATOR, "9lives_x", &p, &err),
	                 -ENOENT);
	free(path);
	plugin_search_path_free(&sp);
}

/* An older plugin's shorter table: the host's copy has NULL beyond it,
 * even though the plugin's object has those slots set. */
static void test_short_ops_zero_extended(void **state)
{
	(void)state;
	const char *dirs[] = {plugin_dir()};
	plugin_search_path sp;
	assert_int_equal(plugin_search_path_build(dirs, 1, &sp), 0);
	loaded_plugin *p = NULL;
	sovmesh_error err = {0, ""};
	int r = plugin_load_by_name(&sp, SOVMESH_KIND_DISCOVERY, "oldminor", &p, &err);
	if (r != 0)
		fail_msg("load failed: %d %s", r, err.message);
	assert_string_equal(p->label, "discovery-oldminor");

	const sovmesh_discovery_ops *raw = p->desc->ops;
	assert_non_null(raw->stop); /* there in the plugin's memory ... */
	const sovmesh_discovery_ops *ops = p->ops;
	size_t start_end = offsetof(sovmesh_discovery_ops, start) + sizeof(ops->start);
	assert_int_equal(ops->size, start_end);
	assert_non_null(ops->start);
	assert_null(ops->stop); /* ... but not in the host's copy */
	assert_null(ops->update);
	assert_null(ops->refresh);
	assert_true(SOVMESH_HAS_SLOT(ops, sovmesh_discovery_ops, start));
	assert_false(SOVMESH_HAS_SLOT(ops, sovmesh_discovery_ops, stop));
	assert_int_equal(ops->start(NULL, NULL, NULL, NULL, &err), 0);
	plugin_release(p, 1);
	plugin_search_path_free(&sp);
}

/* A failed test must not leave its search path to the next one. */
static int clear_env(void **state)
{
	(void)state;
	unsetenv("SOVMESH_PLUGIN_PATH");
	return 0;
}

#define LOADER_TEST(f) cmocka_unit_test_setup_teardown(f, clear_env, clear_env)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    LOADER_TEST(test_kind_tables),
	    LOADER_TEST(test_search_path_order),
	    LOADER_TEST(test_good_by_name),
	    LOADER_TEST(test_refusals),
	    LOADER_TEST(test_refusal_by_name),
	    LOADER_TEST(test_any_name),
	    LOADER_TEST(test_env_path_first_match),
	    LOADER_TEST(test_not_found_lists_dirs),
	    LOADER_TEST(test_garbage_file),
	    LOADER_TEST(test_invalid_names),
	    LOADER_TEST(test_short_ops_zero_extended),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

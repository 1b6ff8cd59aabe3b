/* A plugin's declared settings from config sections and --param (plugin_settings.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "plugin_settings.h"

static const sovmesh_setting_def trimmed_defs[] = {
    {"beta", SOVMESH_SETTING_DOUBLE, "0.1", 0, 0.5, "fraction trimmed at each end"},
    {"rounds", SOVMESH_SETTING_INT, "3", 1, 10, "rounds"},
    {"verbose", SOVMESH_SETTING_BOOL, "false", 0, 0, "log more"},
    {"mode", SOVMESH_SETTING_STRING, "median", 0, 0, "centre"},
    {"offset", SOVMESH_SETTING_INT, "-5", 0, 0, "unbounded"},
    {"scale", SOVMESH_SETTING_DOUBLE, "2.5", 0, 0, "unbounded"},
    {NULL, 0, NULL, 0, 0, NULL},
};
#define TRIMMED_ACCEPTS "agg-trimmed accepts: beta, rounds, verbose, mode, offset, scale"

static const sovmesh_setting_def beta_only[] = {
    {"beta", SOVMESH_SETTING_DOUBLE, "0.1", 0, 0.5, "fraction trimmed"},
    {NULL, 0, NULL, 0, 0, NULL},
};

static int setup(void **state)
{
	(void)state;
	setenv("SOVMESH_STATE_DIR", "/tmp/sovmesh-test-state", 1);
	return 0;
}

static const plugin_setting_value *get(const plugin_settings *ps, const char *name)
{
	const plugin_setting_value *v = plugin_settings_get(ps, name);
	if (!v)
		fail_msg("setting %s missing", name);
	return v;
}

static void test_defaults(void **state)
{
	(void)state;
	plugin_settings *ps = NULL;
	sovmesh_error err = {0};
	assert_int_equal(plugin_settings_from_config("agg-trimmed", trimmed_defs, NULL, &ps, &err),
	                 0);
	assert_int_equal(ps->count, 6);
	assert_true(get(ps, "beta")->d == 0.1);
	assert_int_equal(get(ps, "rounds")->i, 3);
	assert_int_equal(get(ps, "verbose")->b, 0);
	assert_string_equal(get(ps, "mode")->s, "median");
	assert_int_equal(get(ps, "offset")->i, -5);
	assert_true(get(ps, "scale")->d == 2.5);
	for (size_t i = 0; i < ps->count; i++)
		assert_int_equal(ps->values[i].given, 0);
	assert_ptr_equal(get(ps, "beta")->def, &trimmed_defs[0]);
	assert_null(plugin_settings_get(ps, "betta"));
	assert_null(plugin_settings_get(NULL, "beta"));
	plugin_settings_free(ps);
	plugin_settings_free(NULL);

	/* No declared settings at all. */
	assert_int_equal(plugin_settings_from_params("agg-x", NULL, NULL, 0, &ps, &err), 0);
	assert_int_equal(ps->count, 0);
	plugin_settings_free(ps);
}

static sovmesh_config *load(const char *text)
{
	sovmesh_config *cfg = NULL;
	sovmesh_error err = {0};
	if (config_load_string(text, "t.conf", &cfg, &err) != 0)
		fail_msg("%s", err.message);
	return cfg;
}

static void test_from_config(void **state)
{
	(void)state;
	sovmesh_config *cfg = load("plugin_settings = {\n"
	                           "  agg-trimmed = {\n"
	                           "    beta = 0;\n"    /* int for a number */
	                           "    rounds = 10;\n" /* inclusive bound */
	                           "    verbose = true;\n"
	                           "    mode = \"mean\";\n"
	                           "    offset = -9000000000L;\n"
	                           "  };\n"
	                           "};\n");
	plugin_settings *ps = NULL;
	sovmesh_error err = {0};
	int r = plugin_settings_from_config("agg-trimmed", trimmed_defs,
	                                    config_plugin_section(cfg, "agg-trimmed"), &ps, &err);
	if (r)
		fail_msg("%s", err.message);
	assert_true(get(ps, "beta")->d == 0.0);
	assert_int_equal(get(ps, "beta")->given, 1);
	assert_int_equal(get(ps, "rounds")->i, 10);
	assert_int_equal(get(ps, "verbose")->b, 1);
	assert_string_equal(get(ps, "mode")->s, "mean");
	assert_true(get(ps, "offset")->i == -9000000000LL);
	assert_true(get(ps, "scale")->d == 2.5);
	assert_int_equal(get(ps, "scale")->given, 0);
	plugin_settings_free(ps);
	config_free(cfg);
}

static void expect_config_error(const char *body, const sovmesh_setting_def *defs, const char *want)
{
	char text[1024];
	snprintf(text, sizeof(text), "plugin_settings = {\n  agg-trimmed = {\n%s\n  };\n};\n",
	         body);
	sovmesh_config *cfg = load(text);
	plugin_settings *ps = (plugin_settings *)&ps;
	sovmesh_error err = {0};
	int r = plugin_settings_from_config("agg-trimmed", defs,
	                                    config_plugin_section(cfg, "agg-trimmed"), &ps, &err);
	if (r == 0)
		fail_msg("accepted:\n%s\nexpected %s", body, want);
	assert_int_equal(r, -EINVAL);
	assert_null(ps);
	assert_string_equal(err.message, want);
	config_free(cfg);
}

static void test_config_refusals(void **state)
{
	(void)state;
	expect_config_error("    beta = 0.2;\n    betta = 0.1;", beta_only,
	                    "t.conf:4: plugin_settings.agg-trimmed.betta: unknown setting; "
	                    "agg-trimmed accepts: beta");
	expect_config_error(
	    "    betta = 0.1;", trimmed_defs,
	    "t.conf:3: plugin_settings.agg-trimmed.betta: unknown setting; " TRIMMED_ACCEPTS);
	expect_config_error("    beta = 0.1;", NULL,
	                    "t.conf:3: plugin_settings.agg-trimmed.beta: unknown setting; "
	                    "agg-trimmed accepts no settings");
	expect_config_error("    beta = \"0.2\";", trimmed_defs,
	                    "t.conf:3: plugin_settings.agg-trimmed.beta: expected a number, got a "
	                    "string");
	expect_config_error(
	    "    rounds = 2.0;", trimmed_defs,
	    "t.conf:3: plugin_settings.agg-trimmed.rounds: expected an integer, got "
	    "a fractional number");
	expect_config_error(
	    "    verbose = 1;", trimmed_defs,
	    "t.conf:3: plugin_settings.agg-trimmed.verbose: expected true or false, "
	    "got an integer");
	expect_config_error("    mode = [\"a\"];", trimmed_defs,
	                    "t.conf:3: plugin_settings.agg-trimmed.mode: expected a string, got an "
	                    "array");
	expect_config_error("    beta = 0.7;", trimmed_defs,
	                    "t.conf:3: plugin_settings.agg-trimmed.beta: must be a number in [0, "
	                    "0.5], got 0.7");
	expect_config_error("    beta = -0.01;", trimmed_defs,
	                    "t.conf:3: plugin_settings.agg-trimmed.beta: must be a number in [0, "
	                    "0.5], got -0.01");
	expect_config_error("    rounds = 11;", trimmed_defs,
	                    "t.conf:3: plugin_settings.agg-trimmed.rounds: must be an integer in "
	                    "[1, 10], got 11");
	expect_config_error("    rounds = 0;", trimmed_defs,
	                    "t.conf:3: plugin_settings.agg-trimmed.rounds: must be an integer in "
	                    "[1, 10], got 0");
	expect_config_error("    scale = 1e999;", trimmed_defs,
	                    "t.conf:3: plugin_settings.agg-trimmed.scale: must be a finite number, "
	                    "got inf");
}

/* Errors name the real file, also for a section from a file. */
static void test_config_file_error(void **state)
{
	(void)state;
	char *path = NULL;
	assert_true(
	    asprintf(&path, "%s/config/plugin-settings.conf", getenv("SOVMESH_TEST_DATA_DIR")) > 0);
	sovmesh_config *cfg = NULL;
	sovmesh_error err = {0};
	if (config_load(path, &cfg, &err) != 0)
		fail_msg("%s", err.message);
	plugin_settings *ps = NULL;
	assert_int_equal(plugin_settings_from_config("agg-trimmed", beta_only,
	                                             config_plugin_section(cfg, "agg-trimmed"), &ps,
	                                             &err),
	                 0);
	assert_true(get(ps, "beta")->d == 0.2);
	plugin_settings_free(ps);

	static const sovmesh_setting_def laplace_defs[] = {
	    {"sensitivity_factor", SOVMESH_SETTING_DOUBLE, "1.0", 0, 0, ""},
	    {NULL, 0, NULL, 0, 0, NULL},
	};
	assert_int_equal(plugin_settings_from_config("dp-laplace", laplace_defs,
	                                             config_plugin_section(cfg, "dp-laplace"), &ps,
	                                             &err),
	                 -EINVAL);
	char want[1024];
	snprintf(want, sizeof(want),
	         "%s:8: plugin_settings.dp-laplace.betta: unknown setting; dp-laplace accepts: "
	         "sensitivity_factor",
	         path);
	assert_string_equal(err.message, want);
	config_free(cfg);
	free(path);
}

static void test_from_params(void **state)
{
	(void)state;
	const char *params[] = {"beta=0.25", "rounds=+7",  "verbose=true",
	                        "mode=",     "offset=-12", "scale=1e3"};
	plugin_settings *ps = NULL;
	sovmesh_error err = {0};
	int r = plugin_settings_from_params("agg-trimmed", trimmed_defs, params, 6, &ps, &err);
	if (r)
		fail_msg("%s", err.message);
	assert_true(get(ps, "beta")->d == 0.25);
	assert_int_equal(get(ps, "rounds")->i, 7);
	assert_int_equal(get(ps, "verbose")->b, 1);
	assert_string_equal(get(ps, "mode")->s, "");
	assert_int_equal(get(ps, "offset")->i, -12);
	assert_true(get(ps, "scale")->d == 1000.0);
	for (size_t i = 0; i < ps->count; i++)
		assert_int_equal(ps->values[i].given, 1);
	plugin_settings_free(ps);

	/* Bounds are inclusive; a value may itself contain '='. */
	const char *edge[] = {"beta=0.5", "rounds=1", "mode=a=b"};
	assert_int_equal(
	    plugin_settings_from_params("agg-trimmed", trimmed_defs, edge, 3, &ps, &err), 0);
	assert_true(get(ps, "beta")->d == 0.5);
	assert_string_equal(get(ps, "mode")->s, "a=b");
	plugin_settings_free(ps);
}

static void expect_param_error(const sovmesh_setting_def *defs, const char *const *params, size_t n,
                               const char *want)
{
	plugin_settings *ps = (plugin_settings *)&ps;
	sovmesh_error err = {0};
	int r = plugin_settings_from_params("agg-trimmed", defs, params, n, &ps, &err);
	if (r == 0)
		fail_msg("accepted %s; expected %s", params[n - 1], want);
	assert_int_equal(r, -EINVAL);
	assert_null(ps);
	assert_string_equal(err.message, want);
}

static void test_param_refusals(void **state)
{
	(void)state;
	const char *unknown[] = {"betta=0.1"};
	expect_param_error(beta_only, unknown, 1,
	                   "--param betta=0.1: unknown setting; agg-trimmed accepts: beta");
	const char *dup[] = {"beta=0.1", "rounds=2", "beta=0.2"};
	expect_param_error(trimmed_defs, dup, 3,
	                   "--param beta=0.2: beta was already given (--param beta=0.1)");
	const char *noeq[] = {"beta"};
	expect_param_error(trimmed_defs, noeq, 1, "--param beta: expected KEY=VALUE");
	const char *nokey[] = {"=1"};
	expect_param_error(trimmed_defs, nokey, 1, "--param =1: expected KEY=VALUE");
	const char *notnum[] = {"beta=abc"};
	expect_param_error(trimmed_defs, notnum, 1, "--param beta=abc: expected a number");
	const char *empty[] = {"beta="};
	expect_param_error(trimmed_defs, empty, 1, "--param beta=: expected a number");
	const char *range[] = {"beta=0.7"};
	expect_param_error(trimmed_defs, range, 1,
	                   "--param beta=0.7: must be a number in [0, 0.5]");
	const char *inf[] = {"scale=inf"};
	expect_param_error(trimmed_defs, inf, 1, "--param scale=inf: must be a finite number");
	const char *frac[] = {"rounds=3.5"};
	expect_param_error(trimmed_defs, frac, 1, "--param rounds=3.5: expected an integer");
	const char *irange[] = {"rounds=11"};
	expect_param_error(trimmed_defs, irange, 1,
	                   "--param rounds=11: must be an integer in [1, 10]");
	const char *big[] = {"offset=99999999999999999999"};
	expect_param_error(trimmed_defs, big, 1,
	                   "--param offset=99999999999999999999: must be an integer that fits in "
	                   "64 bits");
	const char *yes[] = {"verbose=yes"};
	expect_param_error(trimmed_defs, yes, 1, "--param verbose=yes: expected true or false");
}

static void expect_def_error(const sovmesh_setting_def *defs, const char *want)
{
	plugin_settings *ps = (plugin_settings *)&ps;
	sovmesh_error err = {0};
	int r = plugin_settings_from_config("agg-x", defs, NULL, &ps, &err);
	assert_int_equal(r, -EINVAL);
	assert_null(ps);
	assert_string_equal(err.message, want);
	/* The same declarations are refused for --param too. */
	r = plugin_settings_from_params("agg-x", defs, NULL, 0, &ps, &err);
	assert_int_equal(r, -EINVAL);
	assert_string_equal(err.message, want);
}

/* A bad declaration is the plugin's fault and says so. */
static void test_bad_declarations(void **state)
{
	(void)state;
	const sovmesh_setting_def notnum[] = {{"beta", SOVMESH_SETTING_DOUBLE, "abc", 0, 0, ""},
	                                      {NULL, 0, NULL, 0, 0, NULL}};
	expect_def_error(notnum, "plugin agg-x declares setting 'beta' with default 'abc' that is "
	                         "not a number");
	const sovmesh_setting_def notint[] = {{"n", SOVMESH_SETTING_INT, "1.5", 0, 0, ""},
	                                      {NULL, 0, NULL, 0, 0, NULL}};
	expect_def_error(notint, "plugin agg-x declares setting 'n' with default '1.5' that is not "
	                         "an integer");
	const sovmesh_setting_def notbool[] = {{"on", SOVMESH_SETTING_BOOL, "yes", 0, 0, ""},
	                                       {NULL, 0, NULL, 0, 0, NULL}};
	expect_def_error(notbool, "plugin agg-x declares setting 'on' with default 'yes' that is "
	                          "not true or false");
	const sovmesh_setting_def outside[] = {{"beta", SOVMESH_SETTING_DOUBLE, "0.7", 0, 0.5, ""},
	                                       {NULL, 0, NULL, 0, 0, NULL}};
	expect_def_error(outside, "plugin agg-x declares setting 'beta' with default '0.7' outside "
	                          "its own range: it must be a number in [0, 0.5]");
	const sovmesh_setting_def nodefault[] = {{"beta", SOVMESH_SETTING_DOUBLE, NULL, 0, 0, ""},
	                                         {NULL, 0, NULL, 0, 0, NULL}};
	expect_def_error(nodefault, "plugin agg-x declares setting 'beta' without a default");
	const sovmesh_setting_def badname[] = {{"Beta", SOVMESH_SETTING_DOUBLE, "0.1", 0, 0, ""},
	                                       {NULL, 0, NULL, 0, 0, NULL}};
	expect_def_error(badname, "plugin agg-x declares a setting named 'Beta', which is not "
	                          "[a-z][a-z0-9_]*");
	const sovmesh_setting_def twice[] = {{"beta", SOVMESH_SETTING_DOUBLE, "0.1", 0, 0, ""},
	                                     {"beta", SOVMESH_SETTING_INT, "1", 0, 0, ""},
	                                     {NULL, 0, NULL, 0, 0, NULL}};
	expect_def_error(twice, "plugin agg-x declares setting 'beta' twice");
	const sovmesh_setting_def badtype[] = {{"beta", (sovmesh_setting_type)9, "0.1", 0, 0, ""},
	                                       {NULL, 0, NULL, 0, 0, NULL}};
	expect_def_error(badtype, "plugin agg-x declares setting 'beta' with unknown type 9");
	const sovmesh_setting_def badrange[] = {{"beta", SOVMESH_SETTING_DOUBLE, "0.1", 1, 0, ""},
	                                        {NULL, 0, NULL, 0, 0, NULL}};
	expect_def_error(badrange, "plugin agg-x declares setting 'beta' with bounds [1, 0] that "
	                           "are not a range");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_defaults),         cmocka_unit_test(test_from_config),
	    cmocka_unit_test(test_config_refusals),  cmocka_unit_test(test_config_file_error),
	    cmocka_unit_test(test_from_params),      cmocka_unit_test(test_param_refusals),
	    cmocka_unit_test(test_bad_declarations),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}

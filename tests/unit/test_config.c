/* Loading and validating the daemon configuration (config.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

#define TEST_STATE "/tmp/sovmesh-test-state"

/* Every key of the schema; each must be in the embedded default and in
 * docs/configuration.md. */
static const char *const all_keys[] = {
    "node.name",
    "node.state_dir",
    "node.log_level",
    "node.plugin_path",
    "control.socket",
    "mesh.enabled",
    "mesh.discovery",
    "mesh.serve_inference",
    "mesh.max_concurrent_peer_requests",
    "mesh.request_timeout_secs",
    "api.enabled",
    "api.listen",
    "api.max_body_bytes",
    "inference.backend",
    "inference.default_model",
    "cache.enabled",
    "cache.plugin",
    "cache.embedding_model",
    "cache.hit_similarity",
    "cache.near_miss_similarity",
    "cache.model_hit_similarity",
    "cache.model_near_miss_similarity",
    "template.enabled",
    "template.text",
    "template.near_miss_text",
    "mesh.peer_listen",
    "mesh.health_interval_ms",
    "mesh.thermal_limit_c",
    "mesh.thermal_sysfs_root",
    "pairing.listen",
    "pairing.code_ttl_secs",
    "pairing.max_attempts",
    "federated_learning.enabled",
    "federated_learning.sync_after_n_samples",
    "federated_learning.max_peers",
    "federated_learning.noise_epsilon",
    "federated_learning.aggregation_method",
    "federated_learning.noise_mechanism",
    "federated_learning.noise_clip",
    "federated_learning.noise_delta",
    "federated_learning.accountant",
    "federated_learning.target_delta",
    "federated_learning.allow_no_noise",
    "federated_learning.privacy_budget",
    "federated_learning.trainer",
    "federated_learning.train_timeout_secs",
    "federated_learning.aggregation_wait_secs",
    "federated_learning.max_delta_bytes",
    "federated_learning.base_model",
    "federated_learning.adapted_model",
    "plugin_settings",
};

static int setup(void **state)
{
	(void)state;
	setenv("SOVMESH_STATE_DIR", TEST_STATE, 1);
	return 0;
}

static char *data_path(const char *leaf)
{
	const char *dir = getenv("SOVMESH_TEST_DATA_DIR");
	assert_non_null(dir);
	char *p = NULL;
	assert_true(asprintf(&p, "%s/config/%s", dir, leaf) > 0);
	return p;
}

static char *read_all(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return NULL;
	static char buf[1 << 18];
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	return strdup(buf);
}

static sovmesh_config *load_ok(const char *text)
{
	sovmesh_config *cfg = NULL;
	sovmesh_error err = {0};
	int r = config_load_string(text, "t.conf", &cfg, &err);
	if (r != 0)
		fail_msg("unexpected error: %s", err.message);
	assert_non_null(cfg);
	return cfg;
}

static void expect_error(const char *text, const char *want)
{
	sovmesh_config *cfg = (sovmesh_config *)&cfg;
	sovmesh_error err = {0};
	int r = config_load_string(text, "t.conf", &cfg, &err);
	if (r == 0)
		fail_msg("'%s' loaded; expected \"%s\"", text, want);
	assert_int_equal(r, -EINVAL);
	assert_null(cfg);
	assert_string_equal(err.message, want);
}

static void expect_file_error(const char *leaf, const char *want_after_path)
{
	char *path = data_path(leaf);
	sovmesh_config *cfg = NULL;
	sovmesh_error err = {0};
	assert_int_equal(config_load(path, &cfg, &err), -EINVAL);
	assert_null(cfg);
	char want[1024];
	snprintf(want, sizeof(want), "%s%s", path, want_after_path);
	assert_string_equal(err.message, want);
	free(path);
}

static void assert_defaults(const sovmesh_config *cfg)
{
	char host[256] = "";
	assert_int_equal(gethostname(host, sizeof(host) - 1), 0);
	host[63] = '\0';
	assert_string_equal(cfg->node_name, host);
	assert_string_equal(cfg->state_dir, TEST_STATE);
	assert_int_equal(cfg->log_level, SOVMESH_LOG_INFO);
	assert_int_equal(cfg->plugin_path_len, 0);
	assert_non_null(cfg->plugin_path);
	assert_null(cfg->plugin_path[0]);
	assert_string_equal(cfg->control_socket, TEST_STATE "/control.sock");
	assert_int_equal(cfg->mesh_enabled, 1);
	assert_string_equal(cfg->mesh_discovery, "mdns");
	assert_int_equal(cfg->serve_inference, 1);
	assert_int_equal(cfg->max_concurrent_peer_requests, 2);
	assert_int_equal(cfg->request_timeout_secs, 60);
	assert_int_equal(cfg->fl_enabled, 1);
	assert_int_equal(cfg->sync_after_n_samples, 5);
	assert_int_equal(cfg->max_peers, 10);
	assert_true(cfg->noise_epsilon == 1.0);
	assert_string_equal(cfg->aggregation_method, "fedavg");
	assert_string_equal(cfg->noise_mechanism, "laplace");
	assert_true(cfg->noise_clip == 1.0);
	assert_true(cfg->privacy_budget == 10.0);
	assert_true(cfg->noise_delta == 0.0);
	assert_string_equal(cfg->fl_accountant, "basic");
	assert_true(cfg->target_delta == 1e-6);
	assert_int_equal(cfg->allow_no_noise, 0);
	assert_string_equal(cfg->fl_trainer, "reference");
	assert_int_equal(cfg->train_timeout_secs, 3600);
	assert_int_equal(cfg->aggregation_wait_secs, 60);
	assert_int_equal(cfg->max_delta_bytes, 67108864);
	assert_string_equal(cfg->fl_base_model, "");
	assert_string_equal(cfg->fl_adapted_model, "");
}

static void test_embedded_default(void **state)
{
	(void)state;
	sovmesh_config *cfg = NULL;
	sovmesh_error err = {0};
	assert_int_equal(config_load(NULL, &cfg, &err), 0);
	assert_string_equal(cfg->source, "<embedded default>");
	assert_defaults(cfg);
	/* The seed keys of DESIGN.md §5, verbatim. */
	const char *text = config_default_text();
	assert_non_null(strstr(text, "  max_concurrent_peer_requests = 2;\n"));
	assert_non_null(strstr(text, "  noise_epsilon = 1.0;              # ε spent per sync\n"));
	assert_non_null(
	    strstr(text, "  aggregation_method = \"fedavg\";    # plugin agg-fedavg.so\n"));
	config_free(cfg);
}

/* The schema's defaults and the embedded file must agree. */
static void test_empty_file_gets_defaults(void **state)
{
	(void)state;
	sovmesh_config *cfg = load_ok("");
	assert_string_equal(cfg->source, "t.conf");
	assert_defaults(cfg);
	config_free(cfg);
}

static void test_every_key_in_default_and_docs(void **state)
{
	(void)state;
	sovmesh_config *cfg = NULL;
	sovmesh_error err = {0};
	assert_int_equal(config_load(NULL, &cfg, &err), 0);
	char *docs_path = NULL;
	assert_true(asprintf(&docs_path, "%s/../../docs/configuration.md",
	                     getenv("SOVMESH_TEST_DATA_DIR")) > 0);
	char *docs = read_all(docs_path);
	if (!docs)
		fail_msg("cannot read %s", docs_path);
	for (size_t i = 0; i < sizeof(all_keys) / sizeof(all_keys[0]); i++) {
		if (!config_lookup(&cfg->tree, all_keys[i]))
			fail_msg("%s is not in config_default.conf", all_keys[i]);
		char quoted[128];
		snprintf(quoted, sizeof(quoted), "`%s`", all_keys[i]);
		if (!strstr(docs, quoted))
			fail_msg("%s is not in docs/configuration.md", quoted);
	}
	free(docs);
	free(docs_path);
	config_free(cfg);
}

static void test_full_file(void **state)
{
	(void)state;
	char *path = data_path("full.conf");
	sovmesh_config *cfg = NULL;
	sovmesh_error err = {0};
	if (config_load(path, &cfg, &err) != 0)
		fail_msg("%s", err.message);
	assert_string_equal(cfg->source, path);
	assert_string_equal(cfg->node_name, "kitchen-pi");
	assert_string_equal(cfg->state_dir, "/srv/sovmesh"); /* trailing '/' trimmed */
	assert_int_equal(cfg->log_level, SOVMESH_LOG_DEBUG);
	assert_int_equal(cfg->plugin_path_len, 2);
	assert_string_equal(cfg->plugin_path[0], "/opt/sovmesh/plugins");
	assert_string_equal(cfg->plugin_path[1], "/usr/local/lib/sovmesh/plugins");
	assert_null(cfg->plugin_path[2]);
	assert_string_equal(cfg->control_socket, "/run/sovmesh/control.sock");
	assert_int_equal(cfg->mesh_enabled, 0);
	assert_string_equal(cfg->mesh_discovery, "static");
	assert_int_equal(cfg->serve_inference, 0);
	assert_int_equal(cfg->max_concurrent_peer_requests, 0);
	assert_int_equal(cfg->request_timeout_secs, 3600);
	assert_int_equal(cfg->fl_enabled, 0);
	assert_int_equal(cfg->sync_after_n_samples, 1000000);
	assert_int_equal(cfg->max_peers, 1);
	assert_true(cfg->noise_epsilon == 2.0);
	assert_string_equal(cfg->aggregation_method, "trimmed_mean");
	assert_string_equal(cfg->noise_mechanism, "gaussian");
	assert_true(cfg->noise_clip == 0.25);

	const config_setting_t *sec = config_plugin_section(cfg, "agg-trimmed_mean");
	assert_non_null(sec);
	double beta = 0;
	assert_true(config_setting_lookup_float(sec, "beta", &beta));
	assert_true(beta == 0.1);
	assert_non_null(config_plugin_section(cfg, "dp-gaussian"));
	assert_null(config_plugin_section(cfg, "dp-laplace"));
	assert_null(config_plugin_section(cfg, NULL));
	assert_null(config_plugin_section(NULL, "dp-gaussian"));
	config_free(cfg);
	free(path);
}

static void test_partial_file(void **state)
{
	(void)state;
	char *path = data_path("partial.conf");
	sovmesh_config *cfg = NULL;
	sovmesh_error err = {0};
	if (config_load(path, &cfg, &err) != 0)
		fail_msg("%s", err.message);
	assert_true(cfg->noise_epsilon == 0.5);
	assert_int_equal(cfg->log_level, SOVMESH_LOG_WARNING);
	/* untouched keys, in and out of the groups that were given */
	assert_int_equal(cfg->sync_after_n_samples, 5);
	assert_string_equal(cfg->aggregation_method, "fedavg");
	assert_int_equal(cfg->request_timeout_secs, 60);
	assert_string_equal(cfg->state_dir, TEST_STATE);
	assert_null(config_plugin_section(cfg, "agg-fedavg"));
	config_free(cfg);
	free(path);
}

static void test_file_errors(void **state)
{
	(void)state;
	expect_file_error("unknown-key.conf",
	                  ":3: federated_learning.noise_epsilom: unknown key; did you mean "
	                  "'noise_epsilon'?");
	expect_file_error("wrong-type.conf",
	                  ":4: mesh.request_timeout_secs: expected an integer, got a string");
	expect_file_error("out-of-range.conf",
	                  ":2: federated_learning.max_peers: must be between 1 and 1000, got 0");
	expect_file_error("syntax.conf", ":3: syntax error");
}

static void test_include_error_names_included_file(void **state)
{
	(void)state;
	char *path = data_path("include/main.conf");
	char *inc = data_path("include/mesh.inc");
	sovmesh_config *cfg = NULL;
	sovmesh_error err = {0};
	assert_int_equal(config_load(path, &cfg, &err), -EINVAL);
	char want[1024];
	snprintf(want, sizeof(want),
	         "%s:3: mesh.request_timeout_secs: must be between 1 and 3600, got 0", inc);
	assert_string_equal(err.message, want);
	free(path);
	free(inc);
}

static void test_io_errors(void **state)
{
	(void)state;
	sovmesh_config *cfg = (sovmesh_config *)&cfg;
	sovmesh_error err = {0};
	assert_int_equal(config_load("/nonexistent/sovmeshd.conf", &cfg, &err), -ENOENT);
	assert_null(cfg);
	assert_string_equal(err.message,
	                    "/nonexistent/sovmeshd.conf: cannot open: No such file or directory");

	char *dir = data_path("include");
	assert_int_equal(config_load(dir, &cfg, &err), -EINVAL);
	char want[1024];
	snprintf(want, sizeof(want), "%s: not a regular file", dir);
	assert_string_equal(err.message, want);
	free(dir);
}

static void test_type_errors(void **state)
{
	(void)state;
	expect_error("mesh = {\n  max_concurrent_peer_requests = 1.5;\n};",
	             "t.conf:2: mesh.max_concurrent_peer_requests: expected an integer, got 1.5");
	expect_error("federated_learning = { noise_epsilon = \"1\"; };",
	             "t.conf:1: federated_learning.noise_epsilon: expected a number, got a string");
	expect_error("mesh = { enabled = 1; };",
	             "t.conf:1: mesh.enabled: expected true or false, got an integer");
	expect_error("mesh = 5;", "t.conf:1: mesh: expected a group { ... }, got an integer");
	expect_error("node = { name = [\"a\"]; };",
	             "t.conf:1: node.name: expected a string, got an array");
	expect_error("node = { plugin_path = \"/x\"; };",
	             "t.conf:1: node.plugin_path: expected a list of strings [ \"...\", ... ], "
	             "got a string");
	expect_error(
	    "node = {\n  plugin_path = [\n    \"/ok\",\n    \"/also\" ];\n  log_level = 7; };",
	    "t.conf:5: node.log_level: expected a string, got an integer");
	expect_error("node = { plugin_path = (\"/ok\",\n 3); };",
	             "t.conf:2: node.plugin_path[1]: expected a string, got an integer");
	expect_error("mesh = { discovery = true; };",
	             "t.conf:1: mesh.discovery: expected a string, got a boolean");

	/* An integer is a fine number. */
	sovmesh_config *cfg =
	    load_ok("federated_learning = { noise_epsilon = 1; noise_clip = 3; };");
	assert_true(cfg->noise_epsilon == 1.0);
	assert_true(cfg->noise_clip == 3.0);
	config_free(cfg);
}

static void test_listen_addresses(void **state)
{
	(void)state;
	expect_error("mesh = { peer_listen = \"localhost:47470\"; };",
	             "t.conf:1: mesh.peer_listen: 'localhost:47470' is not a listen address: host "
	             "must be a numeric IPv4 or [IPv6] address");
	expect_error("pairing = { listen = \"127.0.0.1\"; };",
	             "t.conf:1: pairing.listen: '127.0.0.1' is not a listen address: missing "
	             "':port'");
	expect_error("pairing = { listen = \"127.0.0.1:70000\"; };",
	             "t.conf:1: pairing.listen: '127.0.0.1:70000' is not a listen address: port "
	             "must be 0..65535");
	expect_error("pairing = { listen = \"[::1:5\"; };",
	             "t.conf:1: pairing.listen: '[::1:5' is not a listen address: missing ']' "
	             "after an IPv6 address");
	expect_error("pairing = { max_attempts = 0; };",
	             "t.conf:1: pairing.max_attempts: must be between 1 and 20, got 0");
	sovmesh_config *cfg = load_ok("mesh = { peer_listen = \"[::1]:0\"; };\n"
	                              "pairing = { listen = \"127.0.0.2:4000\"; code_ttl_secs = "
	                              "60; };");
	assert_string_equal(cfg->peer_listen, "[::1]:0");
	assert_string_equal(cfg->pairing_listen, "127.0.0.2:4000");
	assert_int_equal(cfg->pairing_code_ttl_secs, 60);
	assert_int_equal(cfg->pairing_max_attempts, 5);
	config_free(cfg);
}

static void test_range_errors(void **state)
{
	(void)state;
	expect_error("mesh = { max_concurrent_peer_requests = 1025; };",
	             "t.conf:1: mesh.max_concurrent_peer_requests: must be between 0 and 1024, "
	             "got 1025");
	expect_error("mesh = { request_timeout_secs = 0; };",
	             "t.conf:1: mesh.request_timeout_secs: must be between 1 and 3600, got 0");
	expect_error("federated_learning = { sync_after_n_samples = 1000001; };",
	             "t.conf:1: federated_learning.sync_after_n_samples: must be between 1 and "
	             "1000000, got 1000001");
	expect_error("federated_learning = { noise_epsilon = 0.0; };",
	             "t.conf:1: federated_learning.noise_epsilon: must be greater than 0 and at "
	             "most 100, got 0");
	expect_error("federated_learning = { noise_epsilon = 100.5; };",
	             "t.conf:1: federated_learning.noise_epsilon: must be greater than 0 and at "
	             "most 100, got 100.5");
	expect_error("federated_learning = { noise_epsilon = -1; };",
	             "t.conf:1: federated_learning.noise_epsilon: must be greater than 0 and at "
	             "most 100, got -1");
	expect_error("federated_learning = { accountant = \"moments\"; };",
	             "t.conf:1: federated_learning.accountant: unknown accountant 'moments'; "
	             "expected \"basic\" (add up ε) or \"rdp\" (Rényi DP for Laplace and "
	             "Gaussian noise)");
	expect_error("federated_learning = { target_delta = 0.0; };",
	             "t.conf:1: federated_learning.target_delta: must be greater than 0 and at "
	             "most 0.1, got 0");
	expect_error("federated_learning = { noise_delta = 0.5; };",
	             "t.conf:1: federated_learning.noise_delta: must be between 0 and 0.1, got 0.5");
	expect_error("federated_learning = {\n  noise_mechanism = \"none\"; };",
	             "t.conf:2: federated_learning.noise_mechanism: \"none\" adds no noise: deltas "
	             "would leave this device without differential privacy; set "
	             "federated_learning.allow_no_noise = true to allow it for experiments");
	{
		sovmesh_config *ok = load_ok(
		    "federated_learning = { noise_mechanism = \"none\"; allow_no_noise = true; };");
		assert_int_equal(ok->allow_no_noise, 1);
		config_free(ok);
		ok = load_ok("federated_learning = { enabled = false; noise_mechanism = \"none\"; };");
		config_free(ok);
	}
	expect_error("federated_learning = { noise_mechanism = \"gaussian\"; };",
	             "t.conf:1: federated_learning.noise_delta: the Gaussian mechanism needs a δ > 0 "
	             "per sync (e.g. 1e-6)");
	{
		sovmesh_config *ok = load_ok(
		    "federated_learning = { noise_mechanism = \"gaussian\"; noise_delta = 1e-6; };");
		config_free(ok);
	}
	expect_error("federated_learning = { noise_clip = 1e999; };",
	             "t.conf:1: federated_learning.noise_clip: must be a finite number");
	expect_error("federated_learning = { noise_clip = 2e6; };",
	             "t.conf:1: federated_learning.noise_clip: must be greater than 0 and at most "
	             "1000000, got 2000000");
	/* Bounds are inclusive where the docs say "between". */
	sovmesh_config *cfg = load_ok("mesh = { request_timeout_secs = 1; };\n"
	                              "federated_learning = { noise_epsilon = 100; max_peers = "
	                              "1000; };");
	assert_int_equal(cfg->request_timeout_secs, 1);
	assert_true(cfg->noise_epsilon == 100.0);
	assert_int_equal(cfg->max_peers, 1000);
	config_free(cfg);
}

/* libconfig 1.5 reads 4294967297 as 1; we must not accept that. */
static void test_wrapped_integer_refused(void **state)
{
	(void)state;
	expect_error("# 99999999999 in a comment is fine\nnode = { name = \"x 99999999999\"; };\n"
	             "federated_learning = {\n  sync_after_n_samples = 4294967297;\n};",
	             "t.conf:4: federated_learning.sync_after_n_samples: integer 4294967297 does "
	             "not fit in 32 bits and libconfig would wrap it; write 4294967297L if you "
	             "mean it");
	expect_error("mesh = { request_timeout_secs = 0xFFFFFFFF; };",
	             "t.conf:1: mesh.request_timeout_secs: integer 0xFFFFFFFF does not fit in 32 "
	             "bits and libconfig would wrap it; write 0xFFFFFFFFL if you mean it");
	expect_error("federated_learning = { sync_after_n_samples = 4294967297L; };",
	             "t.conf:1: federated_learning.sync_after_n_samples: must be between 1 and "
	             "1000000, got 4294967297");
	/* Names with digits and floats with exponents are not integers. */
	sovmesh_config *cfg = load_ok("federated_learning = { noise_clip = 12345678901.5e-6; };\n"
	                              "plugin_settings = { agg-x12345678901 = { v = 1.0; }; };");
	config_free(cfg);
}

static void test_string_checks(void **state)
{
	(void)state;
	expect_error("node = { log_level = \"verbose\"; };",
	             "t.conf:1: node.log_level: unknown log level 'verbose'; expected one of "
	             "error, warning, notice, info, debug");
	expect_error("federated_learning = { aggregation_method = \"Fed-Avg\"; };",
	             "t.conf:1: federated_learning.aggregation_method: 'Fed-Avg' is not a plugin "
	             "name: it must match [a-z0-9][a-z0-9_]* and be at most 64 characters (it "
	             "names the file agg-NAME.so)");
	expect_error("federated_learning = { noise_mechanism = \"../../tmp/x\"; };",
	             "t.conf:1: federated_learning.noise_mechanism: '../../tmp/x' is not a plugin "
	             "name: it must match [a-z0-9][a-z0-9_]* and be at most 64 characters (it "
	             "names the file dp-NAME.so)");
	/* mesh.discovery is a comma-separated list; "" runs no discovery. */
	expect_error("mesh = { discovery = \"mdns, Bad\"; };",
	             "t.conf:1: mesh.discovery: 'Bad' is not a plugin name: each comma-separated "
	             "name must match [a-z0-9][a-z0-9_]* (it names the file discovery-NAME.so)");
	sovmesh_config *lists = load_ok("mesh = { discovery = \"\"; };");
	assert_string_equal(lists->mesh_discovery, "");
	config_free(lists);
	lists = load_ok("mesh = { discovery = \"mdns, static\"; };");
	assert_string_equal(lists->mesh_discovery, "mdns, static");
	config_free(lists);
	expect_error("node = { state_dir = \"relative/dir\"; };",
	             "t.conf:1: node.state_dir: must be an absolute path, got 'relative/dir'");
	expect_error("node = { plugin_path = [\"/ok\", \"plugins\"]; };",
	             "t.conf:1: node.plugin_path[1]: must be an absolute path, got 'plugins'");
	expect_error("control = { socket = \"control.sock\"; };",
	             "t.conf:1: control.socket: must be an absolute path, got 'control.sock'");
	char text[400];
	char long_path[200];
	memset(long_path, 'a', sizeof(long_path) - 1);
	long_path[0] = '/';
	long_path[sizeof(long_path) - 1] = '\0';
	snprintf(text, sizeof(text), "control = { socket = \"%s\"; };", long_path);
	expect_error(text, "t.conf:1: control.socket: is 199 bytes long; a Unix socket path may "
	                   "have at most 107");
	expect_error("node = { name = \"0123456789012345678901234567890123456789012345678901234567"
	             "890123\"; };",
	             "t.conf:1: node.name: is 64 bytes long; at most 63 are allowed");
	expect_error("node = { name = \"bad\\x01name\"; };",
	             "t.conf:1: node.name: must be UTF-8 text without control characters");
	expect_error("node = { name = \"bad\\xffname\"; };",
	             "t.conf:1: node.name: must be UTF-8 text without control characters");
	sovmesh_config *cfg = load_ok("node = { name = \"Küche 🍳\"; };");
	assert_string_equal(cfg->node_name, "Küche 🍳");
	config_free(cfg);
}

static void test_unknown_keys(void **state)
{
	(void)state;
	expect_error("mesh = {\n  frobnicate = 1;\n};", "t.conf:2: mesh.frobnicate: unknown key");
	expect_error("mesh = { enabeld = true; };",
	             "t.conf:1: mesh.enabeld: unknown key; did you mean 'enabled'?");
	expect_error(
	    "federated_learnin = { };",
	    "t.conf:1: federated_learnin: unknown key; did you mean 'federated_learning'?");
	/* A key in the wrong group is named by its full path. */
	expect_error("mesh = { noise_epsilon = 1.0; };",
	             "t.conf:1: mesh.noise_epsilon: unknown key; did you mean "
	             "'federated_learning.noise_epsilon'?");
	expect_error("log_level = \"debug\";",
	             "t.conf:1: log_level: unknown key; did you mean 'node.log_level'?");
	expect_error("mesh = { enabled = true; };\nmesh = { enabled = false; };",
	             "t.conf:2: duplicate setting name");
}

static void test_plugin_settings_shape(void **state)
{
	(void)state;
	expect_error("plugin_settings = {\n  laplace = { x = 1; };\n};",
	             "t.conf:2: plugin_settings.laplace: not a plugin label: expected KIND-NAME "
	             "as in the plugin's file name, e.g. dp-laplace");
	expect_error("plugin_settings = { dp-Laplace = { }; };",
	             "t.conf:1: plugin_settings.dp-Laplace: not a plugin label: expected "
	             "KIND-NAME as in the plugin's file name, e.g. dp-laplace");
	expect_error("plugin_settings = { dp-laplace = 5; };",
	             "t.conf:1: plugin_settings.dp-laplace: expected a group { ... }, got an "
	             "integer");
	expect_error("plugin_settings = 5;",
	             "t.conf:1: plugin_settings: expected a group { ... }, got an integer");
	/* Keys inside a section are checked when the plugin is loaded. */
	sovmesh_config *cfg =
	    load_ok("plugin_settings = { agg-trimmed = { whatever = \"x\"; }; };");
	const config_setting_t *sec = config_plugin_section(cfg, "agg-trimmed");
	assert_non_null(sec);
	assert_int_equal(config_setting_source_line(
	                     config_setting_get_member((config_setting_t *)sec, "whatever")),
	                 1);
	config_free(cfg);
}

/* state_dir and control.socket defaults. */
static void test_state_dir_env_and_explicit(void **state)
{
	(void)state;
	setenv("SOVMESH_STATE_DIR", "/tmp/elsewhere/", 1);
	sovmesh_config *cfg = load_ok("");
	assert_string_equal(cfg->state_dir, "/tmp/elsewhere");
	assert_string_equal(cfg->control_socket, "/tmp/elsewhere/control.sock");
	config_free(cfg);

	/* An explicit state_dir wins over the environment. */
	cfg = load_ok("node = { state_dir = \"/srv/x\"; };");
	assert_string_equal(cfg->state_dir, "/srv/x");
	assert_string_equal(cfg->control_socket, "/srv/x/control.sock");
	config_free(cfg);

	cfg = load_ok(
	    "node = { state_dir = \"/srv/x\"; };\ncontrol = { socket = \"/run/s.sock\"; };");
	assert_string_equal(cfg->control_socket, "/run/s.sock");
	config_free(cfg);

	setenv("SOVMESH_STATE_DIR", "relative", 1);
	expect_error("", "SOVMESH_STATE_DIR: must be an absolute path, got 'relative'");

	char long_dir[120];
	memset(long_dir, 'd', sizeof(long_dir) - 1);
	long_dir[0] = '/';
	long_dir[sizeof(long_dir) - 1] = '\0';
	setenv("SOVMESH_STATE_DIR", long_dir, 1);
	sovmesh_config *out = NULL;
	sovmesh_error err = {0};
	assert_int_equal(config_load_string("", "t.conf", &out, &err), -EINVAL);
	assert_non_null(strstr(err.message, "t.conf: control.socket: the default /ddd"));
	assert_non_null(strstr(err.message, "/control.sock is 132 bytes long; a Unix socket path "
	                                    "may have at most 107: set control.socket"));
	setenv("SOVMESH_STATE_DIR", TEST_STATE, 1);
}

/* The non-root defaults; returns a description of the first mismatch. */
static const char *check_user_defaults(void)
{
	static char why[600];
	sovmesh_config *cfg = NULL;
	static sovmesh_error err;
	unsetenv("SOVMESH_STATE_DIR");
	setenv("XDG_STATE_HOME", "/xdg/state", 1);
	setenv("HOME", "/home/someone", 1);
	if (config_load_string("", "t.conf", &cfg, &err) != 0)
		return err.message;
	if (strcmp(cfg->state_dir, "/xdg/state/sovmesh") != 0) {
		snprintf(why, sizeof(why), "XDG: got %s", cfg->state_dir);
		return why;
	}
	config_free(cfg);
	/* A relative XDG_STATE_HOME is ignored (XDG spec). */
	setenv("XDG_STATE_HOME", "rel", 1);
	if (config_load_string("", "t.conf", &cfg, &err) != 0)
		return err.message;
	if (strcmp(cfg->state_dir, "/home/someone/.local/state/sovmesh") != 0) {
		snprintf(why, sizeof(why), "HOME: got %s", cfg->state_dir);
		return why;
	}
	if (strcmp(cfg->control_socket, "/home/someone/.local/state/sovmesh/control.sock") != 0) {
		snprintf(why, sizeof(why), "socket: got %s", cfg->control_socket);
		return why;
	}
	config_free(cfg);
	return NULL;
}

static void test_state_dir_defaults(void **state)
{
	(void)state;
	if (geteuid() != 0) {
		const char *why = check_user_defaults();
		if (why)
			fail_msg("%s", why);
		setenv("SOVMESH_STATE_DIR", TEST_STATE, 1);
		return;
	}
	/* As root: /var/lib/sovmesh, whatever XDG says... */
	unsetenv("SOVMESH_STATE_DIR");
	setenv("XDG_STATE_HOME", "/xdg/state", 1);
	sovmesh_config *cfg = load_ok("");
	assert_string_equal(cfg->state_dir, "/var/lib/sovmesh");
	assert_string_equal(cfg->control_socket, "/var/lib/sovmesh/control.sock");
	config_free(cfg);
	setenv("SOVMESH_STATE_DIR", TEST_STATE, 1);

	/* ...and the user branch in a child that dropped to nobody. */
	int pipefd[2];
	assert_int_equal(pipe(pipefd), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(pipefd[0]);
		const char *why = NULL;
		if (setgid(65534) != 0 || setuid(65534) != 0)
			why = "cannot drop to uid 65534";
		if (!why)
			why = check_user_defaults();
		if (why) {
			ssize_t w = write(pipefd[1], why, strlen(why));
			(void)w;
		}
		_exit(why ? 1 : 0);
	}
	close(pipefd[1]);
	char why[400] = "";
	ssize_t n = read(pipefd[0], why, sizeof(why) - 1);
	if (n > 0)
		why[n] = '\0';
	close(pipefd[0]);
	int status = 0;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fail_msg("non-root defaults: %s", why);
}

static void test_node_name_default(void **state)
{
	(void)state;
	sovmesh_config *cfg = load_ok("node = { name = \"\"; };");
	char host[256] = "";
	gethostname(host, sizeof(host) - 1);
	host[63] = '\0';
	assert_string_equal(cfg->node_name, host);
	config_free(cfg);
	cfg = load_ok("node = { name = \"pi\"; };");
	assert_string_equal(cfg->node_name, "pi");
	config_free(cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_embedded_default),
	    cmocka_unit_test(test_empty_file_gets_defaults),
	    cmocka_unit_test(test_every_key_in_default_and_docs),
	    cmocka_unit_test(test_full_file),
	    cmocka_unit_test(test_partial_file),
	    cmocka_unit_test(test_file_errors),
	    cmocka_unit_test(test_include_error_names_included_file),
	    cmocka_unit_test(test_io_errors),
	    cmocka_unit_test(test_type_errors),
	    cmocka_unit_test(test_range_errors),
	    cmocka_unit_test(test_listen_addresses),
	    cmocka_unit_test(test_wrapped_integer_refused),
	    cmocka_unit_test(test_string_checks),
	    cmocka_unit_test(test_unknown_keys),
	    cmocka_unit_test(test_plugin_settings_shape),
	    cmocka_unit_test(test_state_dir_env_and_explicit),
	    cmocka_unit_test(test_state_dir_defaults),
	    cmocka_unit_test(test_node_name_default),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}

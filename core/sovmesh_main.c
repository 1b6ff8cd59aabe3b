/*
 * sovmesh — the command-line client.  Daemon commands talk to sovmeshd
 * over its control socket; `fl aggregate` and `fl noise` run plugins
 * offline, without a daemon.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "build_config.h"
#include "config.h"
#include "control_client.h"
#include "fl_tools.h"
#include "log.h"
#include "plugin_loader.h"
#include "random.h"

static const char usage_text[] =
    "Usage: sovmesh [--json] [--socket PATH] [-c CONFIG] COMMAND [ARGS]\n"
    "\n"
    "Commands answered by the running daemon:\n"
    "  status                 the daemon's state\n"
    "  plugins                loaded plugins with their versions and settings\n"
    "\n"
    "Offline research tools (no daemon needed):\n"
    "  fl aggregate --method NAME [--param K=V ...] --out OUT IN[:WEIGHT] ...\n"
    "                         combine adapter files with an aggregator plugin\n"
    "  fl noise --mechanism NAME --epsilon E --clip C [--delta D]\n"
    "           [--param K=V ...] IN OUT\n"
    "                         clip and noise one adapter with a noise plugin\n"
    "\n"
    "Options:\n"
    "  --json                 machine-readable output\n"
    "  --socket PATH          the daemon's control socket (default: from the config)\n"
    "  -c, --config FILE      read the control socket path from this config\n"
    "  -h, --help             this text;  sovmesh COMMAND --help for a command\n"
    "  --version              print the version\n"
    "\n"
    "IN and OUT are .safetensors files or PEFT adapter directories.\n"
    "See docs/user-guide.md and docs/research-guide.md.\n";

static const char aggregate_usage[] =
    "Usage: sovmesh fl aggregate --method NAME [--param K=V ...] --out OUT IN[:WEIGHT] ...\n"
    "\n"
    "Loads the aggregator plugin agg-NAME.so (search path: node.plugin_path,\n"
    "$SOVMESH_PLUGIN_PATH, the built-in directory) and combines the inputs,\n"
    "each weighted by WEIGHT (default 1; the sample count in a real round).\n"
    "OUT ending in .safetensors is written as one file, else as an adapter\n"
    "directory.  --param sets the plugin's declared settings.\n";

static const char noise_usage[] =
    "Usage: sovmesh fl noise --mechanism NAME --epsilon E --clip C [--delta D]\n"
    "                        [--param K=V ...] IN OUT\n"
    "\n"
    "Loads the noise plugin dp-NAME.so, clips IN to norm C, adds noise for\n"
    "(E, D)-differential privacy and writes OUT (F32, or F64 for F64 input).\n"
    "Prints the privacy cost.\n"
    "\n"
    "Testing only:\n"
    "  --seed N --insecure-deterministic\n"
    "        make the noise reproducible from N.  The output is then NOT\n"
    "        private: anyone who knows N can subtract the noise.  Both flags\n"
    "        are required together; never use them on real data.\n";

typedef struct cli {
	int json;
	const char *socket_path;
	const char *config_path;
} cli;

static int fail(const char *fmt, ...) SOVMESH_PRINTF(1, 2);
static int fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("error: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	return 1;
}

/* The config the daemon would use: -c, else the system file, else the
 * embedded default (same rule as sovmeshd). */
static int load_config(const cli *c, sovmesh_config **cfg)
{
	sovmesh_error err = {0};
	const char *path = c->config_path;
	FILE *f = NULL;
	if (!path && (f = fopen(SOVMESH_SYSTEM_CONFIG, "r"))) {
		fclose(f);
		path = SOVMESH_SYSTEM_CONFIG;
	}
	if (config_load(path, cfg, &err) < 0)
		return fail("%s", err.message);
	return 0;
}

static int build_search_path(const cli *c, plugin_search_path *sp)
{
	sovmesh_config *cfg = NULL;
	if (load_config(c, &cfg))
		return 1;
	int r = plugin_search_path_build((const char *const *)cfg->plugin_path,
	                                 cfg->plugin_path_len, sp);
	config_free(cfg);
	if (r < 0)
		return fail("cannot build the plugin search path: %s", strerror(-r));
	return 0;
}

/* GET a control endpoint; on success *reply is owned by the caller. */
static int control_get(const cli *c, const char *path, json_t **reply)
{
	char socket_buf[4096];
	const char *socket_path = c->socket_path;
	if (!socket_path) {
		sovmesh_config *cfg = NULL;
		if (load_config(c, &cfg))
			return 1;
		snprintf(socket_buf, sizeof(socket_buf), "%s", cfg->control_socket);
		config_free(cfg);
		socket_path = socket_buf;
	}
	char err[512] = "";
	long status = 0;
	if (control_client_get(socket_path, path, reply, &status, err, sizeof(err)) < 0)
		return fail("%s", err);
	if (status != 200) {
		json_t *msg = *reply ? json_object_get(*reply, "error") : NULL;
		fail("sovmeshd answered %ld: %s", status,
		     json_is_string(msg) ? json_string_value(msg) : "no details");
		json_decref(*reply);
		*reply = NULL;
		return 1;
	}
	return 0;
}

static void print_json(json_t *j)
{
	char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
	if (s)
		puts(s);
	free(s);
}

static const char *jstr(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	return json_is_string(v) ? json_string_value(v) : "-";
}

static int cmd_status(const cli *c)
{
	json_t *reply = NULL;
	if (control_get(c, "/v1/status", &reply))
		return 1;
	if (c->json) {
		print_json(reply);
	} else {
		printf("sovmeshd %s, pid %lld, up %lld s\n", jstr(reply, "version"),
		       (long long)json_integer_value(json_object_get(reply, "pid")),
		       (long long)json_integer_value(json_object_get(reply, "uptime_secs")));
		printf("node:        %s\n", jstr(reply, "node_name"));
		printf("state dir:   %s\n", jstr(reply, "state_dir"));
		printf("config:      %s\n", jstr(reply, "config"));
		printf("log level:   %s\n", jstr(reply, "log_level"));
		printf("mesh:        %s\n", json_is_true(json_object_get(reply, "mesh_enabled"))
		                                ? "enabled"
		                                : "disabled");
		printf("federated:   %s\n",
		       json_is_true(json_object_get(reply, "federated_learning_enabled"))
		           ? "enabled"
		           : "disabled");
		printf("plugins:     %zu loaded\n",
		       (size_t)json_integer_value(json_object_get(reply, "plugins_loaded")));
	}
	json_decref(reply);
	return 0;
}

static int cmd_plugins(const cli *c)
{
	json_t *reply = NULL;
	if (control_get(c, "/v1/plugins", &reply))
		return 1;
	if (c->json) {
		print_json(reply);
		json_decref(reply);
		return 0;
	}
	json_t *list = json_object_get(reply, "plugins");
	size_t i;
	json_t *p;
	printf("%-12s %-16s %-10s %-10s %s\n", "KIND", "NAME", "VERSION", "ABI", "FILE");
	json_array_foreach(list, i, p)
	{
		printf("%-12s %-16s %-10s %-10s %s\n", jstr(p, "kind"), jstr(p, "name"),
		       jstr(p, "version"), jstr(p, "abi"), jstr(p, "file"));
		json_t *settings = json_object_get(p, "settings");
		size_t k;
		json_t *s;
		json_array_foreach(settings, k, s)
		{
			printf("    %s = %s    # %s\n", jstr(s, "name"), jstr(s, "value"),
			       jstr(s, "help"));
		}
	}
	json_decref(reply);
	return 0;
}

/* Collects repeated --param values. */
typedef struct str_list {
	const char **items;
	size_t count;
} str_list;

static int str_list_add(str_list *l, const char *s)
{
	const char **n = realloc(l->items, (l->count + 1) * sizeof(*n));
	if (!n)
		return -ENOMEM;
	n[l->count++] = s;
	l->items = n;
	return 0;
}

static int parse_double(const char *flag, const char *s, double *out)
{
	char *end = NULL;
	errno = 0;
	double v = strtod(s, &end);
	if (!*s || *end || errno || !isfinite(v))
		return fail("%s: '%s' is not a number", flag, s);
	*out = v;
	return 0;
}

static int cmd_fl_aggregate(const cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"method", required_argument, NULL, 'm'},
	    {"param", required_argument, NULL, 'p'},
	    {"out", required_argument, NULL, 'o'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	const char *method = NULL, *out_path = NULL;
	str_list params = {0};
	int opt, rc = 1;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "m:p:o:h", opts, NULL)) != -1) {
		switch (opt) {
		case 'm':
			method = optarg;
			break;
		case 'p':
			if (str_list_add(&params, optarg) < 0)
				goto out;
			break;
		case 'o':
			out_path = optarg;
			break;
		case 'h':
			fputs(aggregate_usage, stdout);
			rc = 0;
			goto out;
		default:
			fputs(aggregate_usage, stderr);
			goto out;
		}
	}
	if (!method) {
		fail("fl aggregate: --method NAME is required (e.g. --method fedavg)");
		goto out;
	}
	if (!out_path) {
		fail("fl aggregate: --out OUT is required");
		goto out;
	}
	if (optind >= argc) {
		fail("fl aggregate: give at least one input file");
		goto out;
	}
	size_t n = (size_t)(argc - optind);
	fl_input *inputs = calloc(n, sizeof(*inputs));
	if (!inputs)
		goto out;
	sovmesh_error err = {0};
	plugin_search_path sp = {0};
	int ok = 1;
	for (size_t i = 0; i < n && ok; i++)
		if (fl_input_parse(argv[optind + (int)i], &inputs[i], &err) < 0)
			ok = !fail("%s", err.message);
	if (ok && build_search_path(c, &sp) == 0) {
		fl_aggregate_args a = {
		    .method = method,
		    .params = params.items,
		    .n_params = params.count,
		    .out_path = out_path,
		    .inputs = inputs,
		    .n_inputs = n,
		};
		if (fl_aggregate_run(&sp, &a, &err) < 0) {
			fail("%s", err.message);
		} else {
			rc = 0;
			if (c->json)
				printf("{\"method\": \"%s\", \"inputs\": %zu, \"out\": \"%s\"}\n",
				       method, n, out_path);
			else
				printf("aggregated %zu inputs with %s into %s\n", n, method,
				       out_path);
		}
		plugin_search_path_free(&sp);
	}
	for (size_t i = 0; i < n; i++)
		free(inputs[i].path);
	free(inputs);
out:
	free(params.items);
	return rc;
}

static const char *family_name(sovmesh_noise_family f)
{
	switch (f) {
	case SOVMESH_NOISE_LAPLACE:
		return "laplace";
	case SOVMESH_NOISE_GAUSSIAN:
		return "gaussian";
	case SOVMESH_NOISE_NONE:
		return "none";
	default:
		return "other";
	}
}

static int cmd_fl_noise(const cli *c, int argc, char **argv)
{
	static const struct option opts[] = {
	    {"mechanism", required_argument, NULL, 'm'},
	    {"epsilon", required_argument, NULL, 'e'},
	    {"clip", required_argument, NULL, 'C'},
	    {"delta", required_argument, NULL, 'd'},
	    {"param", required_argument, NULL, 'p'},
	    {"seed", required_argument, NULL, 's'},
	    {"insecure-deterministic", no_argument, NULL, 'I'},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	const char *mechanism = NULL, *seed_text = NULL;
	double epsilon = NAN, clip = NAN, delta = 0;
	int insecure = 0, opt, rc = 1;
	str_list params = {0};
	optind = 1;
	while ((opt = getopt_long(argc, argv, "m:e:C:d:p:s:Ih", opts, NULL)) != -1) {
		switch (opt) {
		case 'm':
			mechanism = optarg;
			break;
		case 'e':
			if (parse_double("--epsilon", optarg, &epsilon))
				goto out;
			break;
		case 'C':
			if (parse_double("--clip", optarg, &clip))
				goto out;
			break;
		case 'd':
			if (parse_double("--delta", optarg, &delta))
				goto out;
			break;
		case 'p':
			if (str_list_add(&params, optarg) < 0)
				goto out;
			break;
		case 's':
			seed_text = optarg;
			break;
		case 'I':
			insecure = 1;
			break;
		case 'h':
			fputs(noise_usage, stdout);
			rc = 0;
			goto out;
		default:
			fputs(noise_usage, stderr);
			goto out;
		}
	}
	if (!mechanism) {
		fail("fl noise: --mechanism NAME is required (e.g. --mechanism laplace)");
		goto out;
	}
	if (isnan(epsilon) || isnan(clip)) {
		fail("fl noise: --epsilon E and --clip C are required");
		goto out;
	}
	if (argc - optind != 2) {
		fail("fl noise: give exactly one input and one output (IN OUT)");
		goto out;
	}
	if (seed_text || insecure) {
		if (!seed_text || !insecure) {
			fail("fl noise: --seed needs --insecure-deterministic (and the other way "
			     "round): seeded noise is NOT private, for tests only");
			goto out;
		}
		char *end = NULL;
		errno = 0;
		unsigned long long seed = strtoull(seed_text, &end, 0);
		if (!*seed_text || *end || errno) {
			fail("--seed: '%s' is not a non-negative integer", seed_text);
			goto out;
		}
		rng_insecure_seed(seed);
	}
	plugin_search_path sp = {0};
	if (build_search_path(c, &sp))
		goto out;
	fl_noise_args a = {
	    .mechanism = mechanism,
	    .params = params.items,
	    .n_params = params.count,
	    .epsilon = epsilon,
	    .delta = delta,
	    .clip = clip,
	    .in_path = argv[optind],
	    .out_path = argv[optind + 1],
	};
	sovmesh_privacy_cost cost;
	sovmesh_error err = {0};
	if (fl_noise_run(&sp, &a, &cost, &err) < 0) {
		fail("%s", err.message);
	} else {
		rc = 0;
		if (c->json)
			printf("{\"mechanism\": \"%s\", \"epsilon\": %.17g, \"delta\": %.17g, "
			       "\"family\": \"%s\", \"noise_multiplier\": %.17g, "
			       "\"sensitivity\": %.17g, \"deterministic\": %s}\n",
			       mechanism, cost.epsilon, cost.delta, family_name(cost.family),
			       cost.noise_multiplier, cost.sensitivity,
			       rng_is_deterministic() ? "true" : "false");
		else
			printf("wrote %s: spent epsilon %g, delta %g (%s, sensitivity %g, noise "
			       "scale %g x sensitivity)%s\n",
			       a.out_path, cost.epsilon, cost.delta, family_name(cost.family),
			       cost.sensitivity, cost.noise_multiplier,
			       rng_is_deterministic() ? " -- DETERMINISTIC, NOT PRIVATE" : "");
	}
	plugin_search_path_free(&sp);
out:
	free(params.items);
	return rc;
}

static int cmd_fl(const cli *c, int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		fputs(aggregate_usage, argc < 2 ? stderr : stdout);
		fputc('\n', argc < 2 ? stderr : stdout);
		fputs(noise_usage, argc < 2 ? stderr : stdout);
		return argc < 2 ? 1 : 0;
	}
	if (strcmp(argv[1], "aggregate") == 0)
		return cmd_fl_aggregate(c, argc - 1, argv + 1);
	if (strcmp(argv[1], "noise") == 0)
		return cmd_fl_noise(c, argc - 1, argv + 1);
	return fail("unknown command 'fl %s' (try: fl aggregate, fl noise)", argv[1]);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"json", no_argument, NULL, 'j'},         {"socket", required_argument, NULL, 's'},
	    {"config", required_argument, NULL, 'c'}, {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},      {0},
	};
	cli c = {0};
	int opt;
	/* "+": stop at the command so its own options are left to it. */
	while ((opt = getopt_long(argc, argv, "+jc:h", opts, NULL)) != -1) {
		switch (opt) {
		case 'j':
			c.json = 1;
			break;
		case 's':
			c.socket_path = optarg;
			break;
		case 'c':
			c.config_path = optarg;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		case 'V':
			printf("sovmesh %s (plugin ABI %d.%d)\n", SOVMESH_VERSION,
			       SOVMESH_ABI_MAJOR, SOVMESH_ABI_MINOR);
			return 0;
		default:
			fputs(usage_text, stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		fputs(usage_text, stderr);
		return 2;
	}
	/* Offline tools log warnings (e.g. deterministic noise) to stderr. */
	log_set_level(SOVMESH_LOG_WARNING);
	const char *cmd = argv[optind];
	int sub_argc = argc - optind;
	char **sub_argv = argv + optind;
	/* `sovmesh plugins --json` as well as `sovmesh --json plugins`. */
	for (int i = 1; i < sub_argc; i++)
		if (strcmp(sub_argv[i], "--json") == 0 &&
		    (strcmp(cmd, "status") == 0 || strcmp(cmd, "plugins") == 0))
			c.json = 1;
	if (strcmp(cmd, "status") == 0)
		return cmd_status(&c);
	if (strcmp(cmd, "plugins") == 0)
		return cmd_plugins(&c);
	if (strcmp(cmd, "fl") == 0)
		return cmd_fl(&c, sub_argc, sub_argv);
	if (strcmp(cmd, "help") == 0) {
		fputs(usage_text, stdout);
		return 0;
	}
	fail("unknown command '%s'", cmd);
	fputs(usage_text, stderr);
	return 2;
}

/* sovmesh fl aggregate / fl noise: offline research tools (no daemon). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "fl_tools.h"
#include "random.h"

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
		return cli_fail("%s: '%s' is not a number", flag, s);
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
		cli_fail("fl aggregate: --method NAME is required (e.g. --method fedavg)");
		goto out;
	}
	if (!out_path) {
		cli_fail("fl aggregate: --out OUT is required");
		goto out;
	}
	if (optind >= argc) {
		cli_fail("fl aggregate: give at least one input file");
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
			ok = !cli_fail("%s", err.message);
	if (ok && cli_search_path(c, &sp) == 0) {
		fl_aggregate_args a = {
		    .method = method,
		    .params = params.items,
		    .n_params = params.count,
		    .out_path = out_path,
		    .inputs = inputs,
		    .n_inputs = n,
		};
		if (fl_aggregate_run(&sp, &a, &err) < 0) {
			cli_fail("%s", err.message);
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
		cli_fail("fl noise: --mechanism NAME is required (e.g. --mechanism laplace)");
		goto out;
	}
	if (isnan(epsilon) || isnan(clip)) {
		cli_fail("fl noise: --epsilon E and --clip C are required");
		goto out;
	}
	if (argc - optind != 2) {
		cli_fail("fl noise: give exactly one input and one output (IN OUT)");
		goto out;
	}
	if (seed_text || insecure) {
		if (!seed_text || !insecure) {
			cli_fail(
			    "fl noise: --seed needs --insecure-deterministic (and the other way "
			    "round): seeded noise is NOT private, for tests only");
			goto out;
		}
		char *end = NULL;
		errno = 0;
		unsigned long long seed = strtoull(seed_text, &end, 0);
		if (!*seed_text || *end || errno) {
			cli_fail("--seed: '%s' is not a non-negative integer", seed_text);
			goto out;
		}
		rng_insecure_seed(seed);
	}
	plugin_search_path sp = {0};
	if (cli_search_path(c, &sp))
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
		cli_fail("%s", err.message);
	} else {
		rc = 0;
		/* JSON has no infinity: a mechanism without privacy (none)
		 * reports epsilon null. */
		char eps[40];
		if (isfinite(cost.epsilon))
			snprintf(eps, sizeof(eps), "%.17g", cost.epsilon);
		else
			snprintf(eps, sizeof(eps), "null");
		/* Sensitivity and multiplier mean something for the families
		 * the accountant knows (Laplace, Gaussian) only. */
		int known = cost.family == SOVMESH_NOISE_LAPLACE || cost.family == SOVMESH_NOISE_GAUSSIAN;
		if (c->json)
			printf("{\"mechanism\": \"%s\", \"epsilon\": %s, \"delta\": %.17g, "
			       "\"family\": \"%s\", \"noise_multiplier\": %.17g, "
			       "\"sensitivity\": %.17g, \"deterministic\": %s}\n",
			       mechanism, eps, cost.delta, family_name(cost.family),
			       cost.noise_multiplier, cost.sensitivity,
			       rng_is_deterministic() ? "true" : "false");
		else if (known)
			printf("wrote %s: spent epsilon %g, delta %g (%s, sensitivity %g, noise "
			       "scale %g x sensitivity)%s\n",
			       a.out_path, cost.epsilon, cost.delta, family_name(cost.family),
			       cost.sensitivity, cost.noise_multiplier,
			       rng_is_deterministic() ? " -- DETERMINISTIC, NOT PRIVATE" : "");
		else
			printf("wrote %s: spent epsilon %g, delta %g (%s)%s\n", a.out_path,
			       cost.epsilon, cost.delta, family_name(cost.family),
			       cost.family == SOVMESH_NOISE_NONE ? " -- NO PRIVACY"
			       : rng_is_deterministic()           ? " -- DETERMINISTIC, NOT PRIVATE"
			                                          : "");
	}
	plugin_search_path_free(&sp);
out:
	free(params.items);
	return rc;
}

int cli_cmd_fl(const cli *c, int argc, char **argv)
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
	return cli_fail("unknown command 'fl %s' (try: fl aggregate, fl noise)", argv[1]);
}

/*
 * sovmesh-sim: the federated-learning simulator.  K virtual clients in one
 * process train with the real trainer, noise and aggregator plugins
 * (loaded by name along the normal search path, a third party's .so
 * included) on a labelled CSV, by default the UCI digits.  Options are
 * parsed here; data and shards are sim_data.c, rounds and attackers
 * sim_run.c, the SVG sim_plot.c.  docs/simulator.md is the user's guide.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "build_config.h"
#include "config.h"
#include "log.h"
#include "plugin_loader.h"
#include "sim_data.h"
#include "sim_plot.h"
#include "privacy_accountant.h"
#include "sim_run.h"

#ifndef SIM_DIGITS_INSTALLED
#define SIM_DIGITS_INSTALLED "/usr/share/sovmesh/digits.csv.gz"
#endif
#ifndef SIM_DIGITS_SOURCE
#define SIM_DIGITS_SOURCE "tests/data/digits.csv.gz"
#endif

#define MAX_RUNS 64

static const char usage[] =
    "Usage: sovmesh-sim [OPTIONS]\n"
    "\n"
    "Simulates federated learning: K virtual clients in one process train the\n"
    "trainer plugin on their shard of a labelled data set, optionally noise\n"
    "their updates with a noise plugin, and an aggregator plugin combines\n"
    "them, for R rounds.  Prints test accuracy per round and a summary table.\n"
    "Plugins are loaded by name like the daemon loads them.\n"
    "\n"
    "Data:\n"
    "  --data FILE           CSV or .csv.gz: numeric features, then an integer\n"
    "                        label in the last column; a header row is skipped\n"
    "                        (default: the UCI digits, 1797 rows, 64 features)\n"
    "  --label-column N      the label is column N (1-based) instead of the last\n"
    "  --scale X             divide every feature by X (default: the largest\n"
    "                        absolute feature value, so features lie in [-1, 1])\n"
    "  --test-fraction F     rows held out for the test (default 0.2)\n"
    "\n"
    "Federation:\n"
    "  --clients K           virtual clients (default 10)\n"
    "  --rounds R            rounds (default 20)\n"
    "  --local-epochs E      local passes per round: the trainer's `epochs`\n"
    "                        (default 1)\n"
    "  --seed S              seeds the shuffle, the shards, training, attacks\n"
    "                        and the noise (default 1); same seed, same output\n"
    "  --split SPLIT         iid (default) or dirichlet:ALPHA: label skew, each\n"
    "                        class spread over the clients by Dirichlet(ALPHA)\n"
    "                        shares (0.1 = very skewed, 100 = nearly IID)\n"
    "\n"
    "Plugins (search path: --plugin-dir, node.plugin_path of the config,\n"
    "$SOVMESH_PLUGIN_PATH, the built-in directory):\n"
    "  --trainer NAME        trainer-NAME.so (default reference)\n"
    "  --trainer-param K=V   a trainer setting (repeatable); the simulator sets\n"
    "                        rank=0, classes, text_features and epochs from the\n"
    "                        data unless given here\n"
    "  --aggregator NAME     agg-NAME.so (default fedavg)\n"
    "  --agg-param [A.]K=V   an aggregator setting (repeatable); with A. only for\n"
    "                        aggregator A (e.g. krum.f=2 with --compare)\n"
    "  --noise NAME          noise each honest update with dp-NAME.so (default:\n"
    "                        no noise step at all)\n"
    "  --epsilon E           epsilon per client and round (default 1)\n"
    "  --clip C              norm bound C (default 1; the mechanism picks the norm)\n"
    "  --delta D             delta per client and round (default 0)\n"
    "  --accountant A        basic (add up epsilon, default) or rdp (Renyi DP for\n"
    "                        Laplace and Gaussian noise, reported at --target-delta)\n"
    "  --target-delta D      delta the rdp accountant reports at (default 1e-6)\n"
    "  --noise-param K=V     a noise setting (repeatable)\n"
    "  --plugin-dir DIR      search DIR first (repeatable)\n"
    "  -c, --config FILE     read node.plugin_path from FILE (default: the system\n"
    "                        config when it exists)\n"
    "\n"
    "Attackers (the first N clients):\n"
    "  --byzantine N:KIND    KIND gaussian: send N(0, s^2) values; signflip: send\n"
    "                        -s x its own delta; labelflip: train on labels\n"
    "                        y -> classes-1-y (repeatable; fewer than K in all)\n"
    "  --byz-scale S         gaussian: s (default 10 x the L2 norm of the round's\n"
    "                        median honest delta); signflip: s (default 1)\n"
    "\n"
    "Comparisons (same data, shards, seeds and attackers in every run):\n"
    "  --compare A,B,...     one run per aggregator (instead of --aggregator)\n"
    "  --compare-noise E,... one run per epsilon (needs --noise; inf = a run\n"
    "                        without noise)\n"
    "\n"
    "Output:\n"
    "  --csv FILE            run,round,accuracy,loss,epsilon_spent (round 0 is\n"
    "                        the initial adapter)\n"
    "  --svg FILE            test accuracy against round, one line per run\n"
    "  -q, --quiet           no progress, no setup lines\n"
    "  -v, --verbose         show the plugins' warnings\n"
    "  -h, --help            this text\n"
    "  --version\n"
    "\n"
    "The noise comes from a stream seeded with --seed so that runs repeat:\n"
    "in the simulator it is NOT private.  docs/simulator.md has the details.\n";

enum {
	OPT_DATA = 256,
	OPT_LABEL_COLUMN,
	OPT_SCALE,
	OPT_TEST_FRACTION,
	OPT_CLIENTS,
	OPT_ROUNDS,
	OPT_LOCAL_EPOCHS,
	OPT_SEED,
	OPT_SPLIT,
	OPT_TRAINER,
	OPT_TRAINER_PARAM,
	OPT_AGGREGATOR,
	OPT_AGG_PARAM,
	OPT_NOISE,
	OPT_EPSILON,
	OPT_CLIP,
	OPT_DELTA,
	OPT_ACCOUNTANT,
	OPT_TARGET_DELTA,
	OPT_NOISE_PARAM,
	OPT_PLUGIN_DIR,
	OPT_BYZANTINE,
	OPT_BYZ_SCALE,
	OPT_COMPARE,
	OPT_COMPARE_NOISE,
	OPT_CSV,
	OPT_SVG,
	OPT_VERSION,
};

static const struct option long_opts[] = {
    {"data", required_argument, NULL, OPT_DATA},
    {"label-column", required_argument, NULL, OPT_LABEL_COLUMN},
    {"scale", required_argument, NULL, OPT_SCALE},
    {"test-fraction", required_argument, NULL, OPT_TEST_FRACTION},
    {"clients", required_argument, NULL, OPT_CLIENTS},
    {"rounds", required_argument, NULL, OPT_ROUNDS},
    {"local-epochs", required_argument, NULL, OPT_LOCAL_EPOCHS},
    {"seed", required_argument, NULL, OPT_SEED},
    {"split", required_argument, NULL, OPT_SPLIT},
    {"trainer", required_argument, NULL, OPT_TRAINER},
    {"trainer-param", required_argument, NULL, OPT_TRAINER_PARAM},
    {"aggregator", required_argument, NULL, OPT_AGGREGATOR},
    {"agg-param", required_argument, NULL, OPT_AGG_PARAM},
    {"noise", required_argument, NULL, OPT_NOISE},
    {"epsilon", required_argument, NULL, OPT_EPSILON},
    {"clip", required_argument, NULL, OPT_CLIP},
    {"delta", required_argument, NULL, OPT_DELTA},
    {"accountant", required_argument, NULL, OPT_ACCOUNTANT},
    {"target-delta", required_argument, NULL, OPT_TARGET_DELTA},
    {"noise-param", required_argument, NULL, OPT_NOISE_PARAM},
    {"plugin-dir", required_argument, NULL, OPT_PLUGIN_DIR},
    {"config", required_argument, NULL, 'c'},
    {"byzantine", required_argument, NULL, OPT_BYZANTINE},
    {"byz-scale", required_argument, NULL, OPT_BYZ_SCALE},
    {"compare", required_argument, NULL, OPT_COMPARE},
    {"compare-noise", required_argument, NULL, OPT_COMPARE_NOISE},
    {"csv", required_argument, NULL, OPT_CSV},
    {"svg", required_argument, NULL, OPT_SVG},
    {"quiet", no_argument, NULL, 'q'},
    {"verbose", no_argument, NULL, 'v'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

/* ---- small helpers ---- */

static int fail(const char *fmt, ...) SOVMESH_PRINTF(1, 2);
static int fail(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_one_line(msg);
	fprintf(stderr, "sovmesh-sim: error: %s\n", msg);
	return 1;
}

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

static int parse_u32(const char *flag, const char *s, unsigned long lo, unsigned long hi,
                     uint32_t *out)
{
	char *end = NULL;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (!*s || *s == '-' || *s == '+' || *end || errno || v < lo || v > hi)
		return fail("%s '%s': expected a whole number from %lu to %lu", flag, s, lo, hi);
	*out = (uint32_t)v;
	return 0;
}

/* A finite number in (lo, hi) or [lo, hi) per lo_open. */
static int parse_num(const char *flag, const char *s, double lo, int lo_open, double hi,
                     double *out)
{
	char *end = NULL;
	errno = 0;
	double v = strtod(s, &end);
	if (!*s || *end || errno || !isfinite(v) || v < lo || (lo_open && v == lo) || v >= hi) {
		if (isinf(hi))
			return fail("%s '%s': expected a number %s %g", flag, s,
			            lo_open ? ">" : ">=", lo);
		return fail("%s '%s': expected a number in %s%g, %g)", flag, s, lo_open ? "(" : "[",
		            lo, hi);
	}
	*out = v;
	return 0;
}

/* Split a comma list in place into `out` (at most max items). */
static int split_list(const char *flag, char *text, char **out, size_t max, size_t *n)
{
	*n = 0;
	for (char *p = text;;) {
		char *comma = strchr(p, ',');
		if (comma)
			*comma = '\0';
		if (!*p)
			return fail("%s: empty item in the list", flag);
		if (*n == max)
			return fail("%s: at most %zu items", flag, max);
		out[(*n)++] = p;
		if (!comma)
			return 0;
		p = comma + 1;
	}
}

static const char *default_data(void)
{
	if (access(SIM_DIGITS_INSTALLED, R_OK) == 0)
		return SIM_DIGITS_INSTALLED;
	if (access(SIM_DIGITS_SOURCE, R_OK) == 0)
		return SIM_DIGITS_SOURCE;
	return NULL;
}

static const char *base_name(const char *path)
{
	const char *s = strrchr(path, '/');
	return s ? s + 1 : path;
}

static void fmt_eps(char *buf, size_t len, double eps)
{
	if (isinf(eps))
		snprintf(buf, len, "inf");
	else
		snprintf(buf, len, "%.10g", eps);
}

/* ---- progress ---- */

typedef struct progress {
	int tty, quiet;
	uint32_t rounds;
	size_t run_ix, n_runs;
} progress;

static void on_round(void *ctx, const sim_run *run, uint32_t round)
{
	progress *p = ctx;
	if (p->quiet)
		return;
	char eps[32];
	fmt_eps(eps, sizeof(eps), run->eps_spent[round]);
	if (p->tty) {
		enum { BAR = 24 };
		char bar[BAR + 1];
		uint32_t fill = (uint32_t)((uint64_t)round * BAR / p->rounds);
		for (uint32_t i = 0; i < BAR; i++)
			bar[i] = i < fill ? '#' : '.';
		bar[BAR] = '\0';
		fprintf(stderr, "\r\033[K[%zu/%zu] %-16.16s [%s] round %u/%u  accuracy %.3f",
		        p->run_ix + 1, p->n_runs, run->label, bar, round, p->rounds,
		        run->accuracy[round]);
		if (round == p->rounds)
			fputc('\n', stderr);
		fflush(stderr);
	} else {
		fprintf(stderr, "%s: round %u/%u accuracy %.4f loss %.4f epsilon_spent %s\n",
		        run->label, round, p->rounds, run->accuracy[round], run->loss[round], eps);
	}
}

/* ---- output ---- */

static int write_csv(const char *path, sim_run *runs, size_t n_runs, uint32_t rounds)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return fail("cannot write %s: %s", path, strerror(errno));
	fputs("run,round,accuracy,loss,epsilon_spent\n", f);
	for (size_t i = 0; i < n_runs; i++)
		for (uint32_t r = 0; r <= rounds; r++) {
			char eps[32];
			fmt_eps(eps, sizeof(eps), runs[i].eps_spent[r]);
			fprintf(f, "%s,%u,%.6f,%.6f,%s\n", runs[i].label, r, runs[i].accuracy[r],
			        runs[i].loss[r], eps);
		}
	int bad = ferror(f);
	if (fclose(f) != 0 || bad)
		return fail("cannot write %s: %s", path, errno ? strerror(errno) : "write error");
	return 0;
}

static void print_summary(sim_run *runs, size_t n_runs, uint32_t rounds)
{
	size_t w = 3;
	for (size_t i = 0; i < n_runs; i++)
		if (strlen(runs[i].label) > w)
			w = strlen(runs[i].label);
	int any_delta = 0;
	for (size_t i = 0; i < n_runs; i++)
		any_delta |= runs[i].delta_spent > 0;
	printf("%-*s  %14s  %10s  %13s%s\n", (int)w, "run", "final accuracy", "final loss",
	       "epsilon spent", any_delta ? "  delta spent" : "");
	for (size_t i = 0; i < n_runs; i++) {
		char eps[32];
		fmt_eps(eps, sizeof(eps), runs[i].eps_spent[rounds]);
		printf("%-*s  %14.4f  %10.4f  %13s", (int)w, runs[i].label,
		       runs[i].accuracy[rounds], runs[i].loss[rounds], eps);
		if (any_delta)
			printf("  %11.3g", runs[i].delta_spent);
		putchar('\n');
	}
	for (size_t i = 0; i < n_runs; i++) {
		if (runs[i].diverged)
			printf(
			    "%s: %zu of %zu local trainings diverged (those clients sat the round "
			    "out)\n",
			    runs[i].label, runs[i].diverged, runs[i].trainings);
		if (runs[i].skipped_updates)
			printf("%s: %zu rounds' aggregates overflowed the adapter and were not "
			       "applied\n",
			       runs[i].label, runs[i].skipped_updates);
	}
}

/* ---- main ---- */

typedef struct opts {
	const char *data, *config, *csv, *svg, *trainer, *aggregator, *noise;
	char *compare, *compare_noise;
	unsigned label_column;
	double scale, test_fraction, epsilon, clip, delta, byz_scale, target_delta;
	int eps_given;
	int accountant; /* accountant_kind */
	uint32_t clients, rounds, local_epochs;
	uint64_t seed;
	sim_split_kind split;
	str_list trainer_params, agg_params, noise_params, plugin_dirs;
	sim_byzantine byz[16];
	size_t n_byz;
	int quiet, verbose;
} opts;

static int parse_args(int argc, char **argv, opts *o)
{
	o->trainer = "reference";
	o->clients = 10;
	o->rounds = 20;
	o->local_epochs = 1;
	o->seed = 1;
	o->test_fraction = 0.2;
	o->epsilon = 1;
	o->clip = 1;
	o->target_delta = 1e-6;
	o->byz_scale = NAN;
	sovmesh_error err = {0};
	int c;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":c:qvh", long_opts, NULL)) != -1) {
		int r = 0;
		switch (c) {
		case OPT_DATA:
			o->data = optarg;
			break;
		case OPT_LABEL_COLUMN: {
			uint32_t v;
			r = parse_u32("--label-column", optarg, 1, 1000000, &v);
			o->label_column = v;
			break;
		}
		case OPT_SCALE:
			r = parse_num("--scale", optarg, 0, 1, INFINITY, &o->scale);
			break;
		case OPT_TEST_FRACTION:
			r = parse_num("--test-fraction", optarg, 0, 1, 1, &o->test_fraction);
			break;
		case OPT_CLIENTS:
			r = parse_u32("--clients", optarg, 1, 10000, &o->clients);
			break;
		case OPT_ROUNDS:
			r = parse_u32("--rounds", optarg, 1, 100000, &o->rounds);
			break;
		case OPT_LOCAL_EPOCHS:
			r = parse_u32("--local-epochs", optarg, 1, 1000, &o->local_epochs);
			break;
		case OPT_SEED: {
			char *end = NULL;
			errno = 0;
			unsigned long long v = strtoull(optarg, &end, 10);
			if (!*optarg || *optarg == '-' || *end || errno)
				return fail("--seed '%s': expected a whole number >= 0", optarg);
			o->seed = v;
			break;
		}
		case OPT_SPLIT:
			if (sim_split_parse(optarg, &o->split, &err) < 0)
				return fail("%s", err.message);
			break;
		case OPT_TRAINER:
			o->trainer = optarg;
			break;
		case OPT_TRAINER_PARAM:
			r = str_list_add(&o->trainer_params, optarg);
			break;
		case OPT_AGGREGATOR:
			o->aggregator = optarg;
			break;
		case OPT_AGG_PARAM:
			r = str_list_add(&o->agg_params, optarg);
			break;
		case OPT_NOISE:
			o->noise = optarg;
			break;
		case OPT_EPSILON:
			r = parse_num("--epsilon", optarg, 0, 1, INFINITY, &o->epsilon);
			o->eps_given = 1;
			break;
		case OPT_CLIP:
			r = parse_num("--clip", optarg, 0, 1, INFINITY, &o->clip);
			break;
		case OPT_DELTA:
			r = parse_num("--delta", optarg, 0, 0, 1, &o->delta);
			break;
		case OPT_ACCOUNTANT: {
			accountant_kind k;
			if (accountant_parse(optarg, &k) < 0)
				return fail("--accountant '%s': expected basic or rdp", optarg);
			o->accountant = (int)k;
			break;
		}
		case OPT_TARGET_DELTA:
			r = parse_num("--target-delta", optarg, 0, 1, 1, &o->target_delta);
			break;
		case OPT_NOISE_PARAM:
			r = str_list_add(&o->noise_params, optarg);
			break;
		case OPT_PLUGIN_DIR:
			r = str_list_add(&o->plugin_dirs, optarg);
			break;
		case 'c':
			o->config = optarg;
			break;
		case OPT_BYZANTINE:
			if (o->n_byz == sizeof(o->byz) / sizeof(o->byz[0]))
				return fail("--byzantine: at most 16 times");
			if (sim_byzantine_parse(optarg, &o->byz[o->n_byz], &err) < 0)
				return fail("%s", err.message);
			o->n_byz++;
			break;
		case OPT_BYZ_SCALE:
			r = parse_num("--byz-scale", optarg, 0, 0, INFINITY, &o->byz_scale);
			break;
		case OPT_COMPARE:
			o->compare = optarg;
			break;
		case OPT_COMPARE_NOISE:
			o->compare_noise = optarg;
			break;
		case OPT_CSV:
			o->csv = optarg;
			break;
		case OPT_SVG:
			o->svg = optarg;
			break;
		case 'q':
			o->quiet = 1;
			break;
		case 'v':
			o->verbose = 1;
			break;
		case 'h':
			fputs(usage, stdout);
			return -1;
		case OPT_VERSION:
			printf("sovmesh-sim %s\n", SOVMESH_VERSION);
			return -1;
		case ':':
			return fail("%s needs a value (see --help)", argv[optind - 1]);
		default:
			return fail("unknown option '%s' (see --help)", argv[optind - 1]);
		}
		if (r == -ENOMEM)
			return fail("out of memory");
		if (r)
			return r;
	}
	if (optind < argc)
		return fail("unexpected argument '%s' (see --help)", argv[optind]);
	if (o->aggregator && o->compare)
		return fail("give --aggregator or --compare, not both");
	if (o->compare_noise && !o->noise)
		return fail("--compare-noise needs --noise NAME (e.g. --noise laplace)");
	if (o->compare_noise && o->eps_given)
		return fail("give --epsilon or --compare-noise, not both");
	if (!o->noise && (o->eps_given || o->noise_params.count))
		return fail("--epsilon and --noise-param need --noise NAME (there is no noise "
		            "step without it)");
	uint64_t attackers = 0;
	for (size_t i = 0; i < o->n_byz; i++)
		attackers += o->byz[i].count;
	if (attackers >= o->clients)
		return fail("--byzantine: %llu attackers among %u clients leave no honest client",
		            (unsigned long long)attackers, o->clients);
	if (!isnan(o->byz_scale) && o->n_byz == 0)
		return fail("--byz-scale needs --byzantine");
	return 0;
}

/* The search path: --plugin-dir, the config's node.plugin_path, then
 * plugin_search_path_build's own ($SOVMESH_PLUGIN_PATH, build tree,
 * install dir). */
static int build_search_path(const opts *o, plugin_search_path *sp)
{
	sovmesh_config *cfg = NULL;
	const char *path = o->config;
	if (!path && access(SOVMESH_SYSTEM_CONFIG, R_OK) == 0)
		path = SOVMESH_SYSTEM_CONFIG;
	if (path) {
		sovmesh_error err = {0};
		if (config_load(path, &cfg, &err) < 0)
			return fail("%s", err.message);
	}
	size_t n = o->plugin_dirs.count + (cfg ? cfg->plugin_path_len : 0);
	const char **dirs = calloc(n + 1, sizeof(*dirs));
	if (!dirs) {
		config_free(cfg);
		return fail("out of memory");
	}
	size_t k = 0;
	for (size_t i = 0; i < o->plugin_dirs.count; i++)
		dirs[k++] = o->plugin_dirs.items[i];
	for (size_t i = 0; cfg && i < cfg->plugin_path_len; i++)
		dirs[k++] = cfg->plugin_path[i];
	int r = plugin_search_path_build(dirs, k, sp);
	free(dirs);
	config_free(cfg);
	if (r < 0)
		return fail("cannot build the plugin search path: %s", strerror(-r));
	return 0;
}

/* The aggregator params that apply to `name`: plain K=V, and A.K=V with
 * A == name (as K=V).  `store` keeps the stripped strings alive. */
static int agg_params_for(const opts *o, const char *name, const char ***out, size_t *n)
{
	*out = calloc(o->agg_params.count + 1, sizeof(**out));
	if (!*out)
		return -ENOMEM;
	*n = 0;
	for (size_t i = 0; i < o->agg_params.count; i++) {
		const char *p = o->agg_params.items[i], *eq = strchr(p, '='), *dot = strchr(p, '.');
		if (dot && (!eq || dot < eq)) {
			size_t len = (size_t)(dot - p);
			if (strlen(name) == len && strncmp(p, name, len) == 0)
				(*out)[(*n)++] = dot + 1;
		} else {
			(*out)[(*n)++] = p;
		}
	}
	return 0;
}

/* Every A. prefix must name an aggregator of some run. */
static int check_agg_prefixes(const opts *o, char **aggs, size_t n_aggs)
{
	for (size_t i = 0; i < o->agg_params.count; i++) {
		const char *p = o->agg_params.items[i], *eq = strchr(p, '='), *dot = strchr(p, '.');
		if (!dot || (eq && dot > eq))
			continue;
		size_t len = (size_t)(dot - p), j;
		for (j = 0; j < n_aggs; j++)
			if (strlen(aggs[j]) == len && strncmp(p, aggs[j], len) == 0)
				break;
		if (j == n_aggs)
			return fail(
			    "--agg-param %s: '%.*s' is not an aggregator of this simulation", p,
			    (int)len, p);
	}
	return 0;
}

/* Everything after the options; 0, 1 (failed) or 2 (bad usage). */
static int simulate(opts *o)
{
	log_set_level(o->verbose ? SOVMESH_LOG_WARNING : SOVMESH_LOG_ERROR);

	char *aggs[MAX_RUNS], *eps_text[MAX_RUNS];
	double eps_list[MAX_RUNS];
	size_t n_aggs = 1, n_eps = 1;
	aggs[0] = (char *)(o->aggregator ? o->aggregator : "fedavg");
	eps_list[0] = o->noise ? o->epsilon : INFINITY;
	if (o->compare) {
		if (split_list("--compare", o->compare, aggs, MAX_RUNS, &n_aggs))
			return 2;
		for (size_t i = 0; i < n_aggs; i++)
			for (size_t j = 0; j < i; j++)
				if (strcmp(aggs[i], aggs[j]) == 0) {
					fail("--compare: %s is listed twice", aggs[i]);
					return 2;
				}
	}
	if (o->compare_noise) {
		if (split_list("--compare-noise", o->compare_noise, eps_text, MAX_RUNS, &n_eps))
			return 2;
		for (size_t i = 0; i < n_eps; i++) {
			if (strcmp(eps_text[i], "inf") == 0)
				eps_list[i] = INFINITY;
			else if (parse_num("--compare-noise", eps_text[i], 0, 1, INFINITY,
			                   &eps_list[i]))
				return 2;
		}
	}
	if (n_aggs * n_eps > MAX_RUNS) {
		fail("--compare x --compare-noise gives %zu runs; at most %d", n_aggs * n_eps,
		     MAX_RUNS);
		return 2;
	}
	if (check_agg_prefixes(o, aggs, n_aggs))
		return 2;

	if (!o->data && !(o->data = default_data()))
		return fail("no data set: give --data FILE (the digits were not found at %s nor "
		            "%s)",
		            SIM_DIGITS_INSTALLED, SIM_DIGITS_SOURCE);

	sim_data data;
	sim_split split;
	plugin_search_path sp = {0};
	sim_env env;
	sim_run runs[MAX_RUNS];
	const char **agg_param_lists[MAX_RUNS] = {0};
	uint8_t *attacker = NULL;
	size_t n_runs = 0;
	sovmesh_error err = {0};
	memset(&data, 0, sizeof(data));
	memset(&split, 0, sizeof(split));
	memset(&env, 0, sizeof(env));
	memset(runs, 0, sizeof(runs));
	int status = 1;

	if (sim_data_load(o->data, o->label_column, o->scale, &data, &err) < 0 ||
	    sim_split_make(&data, o->test_fraction, o->clients, &o->split, o->seed, &split, &err) <
	        0) {
		fail("%s", err.message);
		goto out;
	}
	attacker = calloc(o->clients, 1);
	if (!attacker) {
		fail("out of memory");
		goto out;
	}
	for (size_t i = 0, k = 0; i < o->n_byz; i++)
		for (uint32_t j = 0; j < o->byz[i].count; j++)
			attacker[k++] = (uint8_t)o->byz[i].kind;
	if (build_search_path(o, &sp))
		goto out;
	if (sim_env_open(&env, &sp, &err) < 0) {
		fail("%s", err.message);
		goto out;
	}

	sim_setup setup = {
	    .data = &data,
	    .split = &split,
	    .rounds = o->rounds,
	    .local_epochs = o->local_epochs,
	    .seed = o->seed,
	    .attacker = attacker,
	    .byz_scale = o->byz_scale,
	    .trainer = o->trainer,
	    .trainer_params = o->trainer_params.items,
	    .n_trainer_params = o->trainer_params.count,
	    .noise = o->noise,
	    .noise_params = o->noise_params.items,
	    .n_noise_params = o->noise_params.count,
	    .clip = o->clip,
	    .delta = o->delta,
	    .accountant = o->accountant,
	    .target_delta = o->target_delta,
	};

	/* Open every run's plugins before the first round: a bad name or
	 * setting is reported at once. */
	for (size_t a = 0; a < n_aggs; a++)
		for (size_t e = 0; e < n_eps; e++) {
			sim_run *run = &runs[n_runs];
			char eps[32];
			fmt_eps(eps, sizeof(eps), eps_list[e]);
			if (o->compare_noise && n_aggs > 1)
				snprintf(run->label, sizeof(run->label), "%s eps=%s", aggs[a], eps);
			else if (o->compare_noise)
				snprintf(run->label, sizeof(run->label), "eps=%s", eps);
			else
				snprintf(run->label, sizeof(run->label), "%s", aggs[a]);
			size_t np = 0;
			if (agg_params_for(o, aggs[a], &agg_param_lists[n_runs], &np) < 0) {
				fail("out of memory");
				goto out;
			}
			run->aggregator = aggs[a];
			run->agg_params = agg_param_lists[n_runs];
			run->n_agg_params = np;
			run->epsilon = o->noise ? eps_list[e] : INFINITY;
			n_runs++;
			if (sim_run_open(&env, &setup, run, &err) < 0) {
				fail("%s", err.message);
				goto out;
			}
		}

	if (!o->quiet) {
		size_t lo = SIZE_MAX, hi = 0;
		for (uint32_t k = 0; k < split.clients; k++) {
			size_t m = split.off[k + 1] - split.off[k];
			lo = m < lo ? m : lo;
			hi = m > hi ? m : hi;
		}
		fprintf(stderr,
		        "sovmesh-sim: %s: %zu rows%s, %zu features / %g, %u classes; %zu train, "
		        "%zu test\n",
		        base_name(data.path), data.n, data.had_header ? " (header skipped)" : "",
		        data.d, data.scale, data.classes, split.n_train, split.n_test);
		fprintf(stderr,
		        "sovmesh-sim: %u clients (%s), shards of %zu..%zu rows%s; %u rounds "
		        "of %u local epoch%s; trainer %s; seed %llu\n",
		        o->clients, o->split.dirichlet ? "Dirichlet" : "iid", lo, hi,
		        split.empty ? " (some empty: they sit out)" : "", o->rounds,
		        o->local_epochs, o->local_epochs == 1 ? "" : "s", o->trainer,
		        (unsigned long long)o->seed);
		for (size_t i = 0, k = 0; i < o->n_byz; k += o->byz[i].count, i++)
			fprintf(stderr, "sovmesh-sim: clients %zu..%zu are Byzantine (%s)\n", k + 1,
			        k + o->byz[i].count, sim_byz_kind_name(o->byz[i].kind));
	}
	if (o->noise)
		fprintf(stderr,
		        "sovmesh-sim: WARNING: the noise is drawn from a stream seeded with "
		        "--seed %llu: reproducible and NOT private (a simulation, never a "
		        "deployment)\n",
		        (unsigned long long)o->seed);

	progress prog = {
	    .tty = isatty(STDERR_FILENO), .quiet = o->quiet, .rounds = o->rounds, .n_runs = n_runs};
	clock_t t0 = clock();
	for (size_t i = 0; i < n_runs; i++) {
		prog.run_ix = i;
		if (sim_run_exec(&setup, &runs[i], on_round, &prog, &err) < 0) {
			if (prog.tty && !o->quiet)
				fputc('\n', stderr);
			fail("run %s: %s", runs[i].label, err.message);
			goto out;
		}
	}
	double cpu = (double)(clock() - t0) / CLOCKS_PER_SEC;

	if (o->csv && write_csv(o->csv, runs, n_runs, o->rounds))
		goto out;
	if (o->svg) {
		sim_plot_series series[MAX_RUNS];
		for (size_t i = 0; i < n_runs; i++)
			series[i] = (sim_plot_series){
			    .label = runs[i].label, .y = runs[i].accuracy, .n = o->rounds + 1};
		char title[256], sub[512];
		snprintf(title, sizeof(title), "Test accuracy by round: %s", base_name(data.path));
		int n = snprintf(sub, sizeof(sub), "%u clients, %s", o->clients,
		                 o->split.dirichlet ? "Dirichlet" : "iid");
		if (o->split.dirichlet)
			n += snprintf(sub + n, sizeof(sub) - (size_t)n, "(%g)", o->split.alpha);
		n += snprintf(sub + n, sizeof(sub) - (size_t)n, ", %u local epoch%s, seed %llu",
		              o->local_epochs, o->local_epochs == 1 ? "" : "s",
		              (unsigned long long)o->seed);
		for (size_t i = 0; i < o->n_byz && n < (int)sizeof(sub) - 40; i++)
			n += snprintf(sub + n, sizeof(sub) - (size_t)n, ", %u %s attacker%s",
			              o->byz[i].count, sim_byz_kind_name(o->byz[i].kind),
			              o->byz[i].count == 1 ? "" : "s");
		if (o->noise && n < (int)sizeof(sub) - 80) {
			if (o->compare_noise)
				snprintf(sub + n, sizeof(sub) - (size_t)n, ", noise %s, clip %g",
				         o->noise, o->clip);
			else
				snprintf(sub + n, sizeof(sub) - (size_t)n,
				         ", noise %s eps %g, clip %g", o->noise, o->epsilon,
				         o->clip);
		}
		if (sim_plot_svg(o->svg, title, sub, series, n_runs, &err) < 0) {
			fail("%s", err.message);
			goto out;
		}
	}
	print_summary(runs, n_runs, o->rounds);
	if (!o->quiet)
		fprintf(stderr, "sovmesh-sim: %zu run%s, %.2f s CPU\n", n_runs,
		        n_runs == 1 ? "" : "s", cpu);
	status = 0;
out:
	for (size_t i = 0; i < n_runs; i++) {
		sim_run_close(&runs[i]);
		free(agg_param_lists[i]);
	}
	sim_env_close(&env);
	plugin_search_path_free(&sp);
	sim_split_free(&split);
	sim_data_free(&data);
	free(attacker);
	return status;
}

int main(int argc, char **argv)
{
	opts o;
	memset(&o, 0, sizeof(o));
	int r = parse_args(argc, argv, &o);
	int status = r < 0 ? 0 : r > 0 ? 2 : simulate(&o);
	free(o.trainer_params.items);
	free(o.agg_params.items);
	free(o.noise_params.items);
	free(o.plugin_dirs.items);
	return status;
}

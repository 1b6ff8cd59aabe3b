/*
 * fl_dp_accuracy: what federated learning with local Laplace noise
 * achieves, measured with the shipped plugins (trainer-reference,
 * dp-laplace, agg-fedavg) on the UCI digits (tests/data/digits.csv.gz).
 *
 *   meson setup build-rel-bench -Dbuildtype=release -Dbench=true
 *   meson compile -C build-rel-bench && build-rel-bench/bench/fl_dp_accuracy
 *
 * Per seed: the 1797 digits (pixels / 16) are shuffled and split 80/20
 * into train and test; the train part is cut into K equal IID shards.
 * Each of R rounds, every client trains one epoch from the current
 * global adapter on its shard, takes delta = new - global, and (unless
 * ε = ∞) has dp-laplace clip it to L1 norm C and add noise for ε; the
 * server averages the K deltas with agg-fedavg weighted by shard size
 * and adds the average to the global adapter; the table shows the test
 * accuracy after the last round.  "local only" is one client on one shard of K, without noise;
 * "centralised" one client on the whole train part.
 *
 * The noise comes from the plugins' host random_bytes, switched for this
 * process only to the core's seeded stream (rng_insecure_seed), reseeded
 * per run so every cell of the table is reproducible on its own.  That
 * noise is NOT private; it is an experiment.
 *
 * The larger clip C per (rank, K) is the median L1 norm of the clients'
 * unclipped deltas in the noise-free federated run, rounded to two
 * significant figures, so about half of the clean deltas are clipped.
 *
 * Columns: final test accuracy (mean ± sd over the seeds); the median L1
 * norm of the clients' deltas before clipping (every client, round and
 * seed of the cell: in noisy cells they grow, as the noisy global adapter
 * has large gradients); the expected L1 norm of one noise draw, d·b with
 * b = noise_multiplier × sensitivity from dp-laplace's cost() (2C/ε);
 * and min(L1, C) / (d·b), the clipped signal against the noise of one
 * client (ε / 2d once deltas are clipped; averaging K clients lowers the
 * noise only by about √K).
 *
 * Options: --data FILE, --rounds R (20), --seeds N (3).  Tables go to
 * stdout, progress to stderr.  Not a test.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>
#include <zlib.h>

#include <sovmesh/aggregator.h>
#include <sovmesh/noise.h>
#include <sovmesh/trainer.h>

#include "fl_delta.h"
#include "host.h"
#include "log.h"
#include "plugin_settings.h"
#include "random.h"
#include "tensor_set.h"

#ifndef DIGITS_CSV_GZ
#define DIGITS_CSV_GZ "tests/data/digits.csv.gz"
#endif

#define DIGITS    1797
#define PIXELS    64
#define CLASSES   10
#define MAX_SEEDS 16
#define MAX_K     10

static float pixels[DIGITS][PIXELS];
static int32_t labels[DIGITS];

static int load_digits(const char *path, sovmesh_error *err)
{
	gzFile f = gzopen(path, "rb");
	if (!f)
		return sovmesh_fail(err, -ENOENT, "cannot open %s (give --data FILE)", path);
	char line[1024];
	size_t n = 0;
	int r = 0;
	while (r == 0 && gzgets(f, line, sizeof(line))) {
		if (n >= DIGITS) {
			r = sovmesh_fail(err, -EINVAL, "%s: more than %d rows", path, DIGITS);
			break;
		}
		char *p = line;
		for (int j = 0; j <= PIXELS; j++) {
			char *end;
			long v = strtol(p, &end, 10);
			char want = j < PIXELS ? ',' : '\n';
			if (end == p || *end != want || v < 0 || v > (j < PIXELS ? 16 : 9)) {
				r = sovmesh_fail(
				    err, -EINVAL, "%s:%zu: column %d is not %s", path, n + 1, j + 1,
				    j < PIXELS ? "a pixel 0..16 and ','"
				               : "a label 0..9 and the end of the line");
				break;
			}
			p = end + 1;
			if (j < PIXELS)
				pixels[n][j] = (float)v / 16.0f;
			else
				labels[n] = (int32_t)v;
		}
		n++;
	}
	gzclose(f);
	if (r == 0 && n != DIGITS)
		r = sovmesh_fail(err, -EINVAL, "%s: %zu rows, expected %d", path, n, DIGITS);
	return r;
}

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

/* A seed from several numbers, for the trainer's and the noise's streams. */
static uint64_t mix(uint64_t a, uint64_t b, uint64_t c)
{
	uint64_t s = a * UINT64_C(0x2545f4914f6cdd1d) ^ b;
	s = splitmix(&s) ^ c;
	return splitmix(&s);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- plugins: one loop, one host runtime, instances by name ---- */

typedef struct bench_env {
	uv_loop_t loop;
	int loop_ready;
	host_runtime *rt;
	plugin_search_path sp;
	plugin_instance *noise, *agg;
} bench_env;

/* Several instances on one runtime. */
static int instance_open(bench_env *env, uint32_t kind, const char *name, const char *const *params,
                         size_t n_params, plugin_instance **out, sovmesh_error *err)
{
	return plugin_instance_open(env->rt, &env->sp, kind, name, params, n_params, out, err);
}

static int env_open(bench_env *env, sovmesh_error *err)
{
	memset(env, 0, sizeof(*env));
	int r = uv_loop_init(&env->loop);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot start event loop: %s", uv_strerror(r));
	env->loop_ready = 1;
	r = host_runtime_new(&env->loop, NULL, "fl_dp_accuracy", &env->rt);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot start plugin host: %s", strerror(-r));
	r = plugin_search_path_build(NULL, 0, &env->sp);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot build the plugin search path: %s",
		                    strerror(-r));
	r = instance_open(env, SOVMESH_KIND_NOISE, "laplace", NULL, 0, &env->noise, err);
	if (r < 0)
		return r;
	return instance_open(env, SOVMESH_KIND_AGGREGATOR, "fedavg", NULL, 0, &env->agg, err);
}

static void env_close(bench_env *env)
{
	if (env->noise)
		plugin_instance_free(env->noise);
	if (env->agg)
		plugin_instance_free(env->agg);
	plugin_search_path_free(&env->sp);
	if (env->rt)
		host_runtime_free(env->rt);
	if (env->loop_ready)
		uv_loop_close(&env->loop);
}

/* ---- one federated run ---- */

typedef enum { MODE_FED, MODE_LOCAL, MODE_CENTRAL } run_mode;

static const char *mode_name(run_mode m)
{
	return m == MODE_FED ? "federated" : m == MODE_LOCAL ? "local only" : "centralised";
}

typedef struct run_cfg {
	run_mode mode;
	uint32_t k;     /* shards of the train part */
	double epsilon; /* INFINITY: no clipping, no noise */
	double clip;
	uint32_t rounds;
} run_cfg;

/* What the runs of one cell collected over all seeds. */
typedef struct cell {
	run_cfg cfg;
	double acc[MAX_SEEDS];
	double *l1; /* unclipped delta L1 norms, every client and round */
	size_t n_l1, cap_l1;
	size_t trainings, failed, loss_up;
	double noise_l1; /* expected L1 of one noise draw, d * b */
} cell;

static int push_l1(cell *c, double v, sovmesh_error *err)
{
	if (c->n_l1 == c->cap_l1) {
		size_t cap = c->cap_l1 ? 2 * c->cap_l1 : 256;
		double *p = realloc(c->l1, cap * sizeof(*p));
		if (!p)
			return sovmesh_fail(err, -ENOMEM, "out of memory");
		c->l1 = p;
		c->cap_l1 = cap;
	}
	c->l1[c->n_l1++] = v;
	return 0;
}

static double set_l1(const sovmesh_tensor_set *s)
{
	double sum = 0;
	for (size_t k = 0; k < s->count; k++) {
		const sovmesh_tensor *t = &s->tensors[k];
		const float *v = t->data;
		for (size_t i = 0; i < t->nbytes / sizeof(float); i++)
			sum += fabs((double)v[i]);
	}
	return sum;
}

static size_t set_numel(const sovmesh_tensor_set *s)
{
	size_t n = 0;
	for (size_t k = 0; k < s->count; k++)
		n += s->tensors[k].nbytes / sizeof(float);
	return n;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double median(double *v, size_t n)
{
	if (n == 0)
		return NAN;
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef struct experiment {
	bench_env *env;
	plugin_instance *trainer;
	uint32_t rank;
	size_t d; /* values in the adapter */
} experiment;

static int run_one(experiment *ex, cell *c, unsigned seed_ix, uint64_t seed, sovmesh_error *err)
{
	const run_cfg *cfg = &c->cfg;
	const sovmesh_trainer_ops *tops = ex->trainer->plugin->ops;
	const sovmesh_noise_ops *nops = ex->env->noise->plugin->ops;
	const sovmesh_aggregator_ops *aops = ex->env->agg->plugin->ops;
	void *tinst = ex->trainer->instance;

	/* Shuffle and split: depends on the seed only, so every cell of a
	 * seed sees the same train and test parts. */
	static size_t order[DIGITS];
	static sovmesh_sample samples[DIGITS];
	uint64_t s = mix(seed, 0x5eed, 0);
	for (size_t i = 0; i < DIGITS; i++)
		order[i] = i;
	for (size_t i = DIGITS - 1; i > 0; i--) {
		size_t j = (size_t)(splitmix(&s) % (i + 1));
		size_t t = order[i];
		order[i] = order[j];
		order[j] = t;
	}
	for (size_t i = 0; i < DIGITS; i++)
		samples[i] = (sovmesh_sample){
		    .size = sizeof(sovmesh_sample),
		    .rating = SOVMESH_RATING_NONE,
		    .features = pixels[order[i]],
		    .n_features = PIXELS,
		    .label = labels[order[i]],
		};
	const size_t n_train = DIGITS * 4 / 5, n_test = DIGITS - n_train;
	const sovmesh_sample *test = samples + n_train;
	uint32_t active = cfg->mode == MODE_FED ? cfg->k : 1;

	/* The noise stream of this cell and seed. */
	uint64_t eps_bits = isfinite(cfg->epsilon) ? (uint64_t)(cfg->epsilon * 1e3) : UINT64_MAX;
	uint64_t noise_seed = mix(seed, (uint64_t)cfg->mode << 32 | cfg->k,
	                          mix(ex->rank, eps_bits, (uint64_t)(cfg->clip * 1e6)));
	rng_insecure_seed(noise_seed);

	sovmesh_tensor_set *global = NULL, *deltas[MAX_K] = {0}, *avg = NULL;
	double weights[MAX_K];
	sovmesh_error perr = {0};
	sovmesh_train_report rep = {.size = sizeof(rep)};
	sovmesh_train_input in = {.size = sizeof(in)};
	int r = tops->train(tinst, &in, &global, &rep, &perr);
	if (r < 0) {
		r = sovmesh_fail(err, r, "initial adapter: %s", perr.message);
		goto done;
	}
	ex->d = set_numel(global);
	if (seed_ix == 0 && isfinite(cfg->epsilon)) {
		sovmesh_noise_params np = {
		    .size = sizeof(np), .epsilon = cfg->epsilon, .clip = cfg->clip};
		sovmesh_privacy_cost cost = {.size = sizeof(cost)};
		r = nops->cost(ex->env->noise->instance, &np, &cost, &perr);
		if (r < 0) {
			r = sovmesh_fail(err, r, "dp-laplace cost: %s", perr.message);
			goto done;
		}
		/* Laplace family: noise_multiplier = b / sensitivity. */
		c->noise_l1 = (double)ex->d * cost.noise_multiplier * cost.sensitivity;
	}

	double acc = NAN;
	for (uint32_t round = 1; round <= cfg->rounds; round++) {
		size_t n_in = 0;
		for (uint32_t k = 0; k < active; k++) {
			size_t lo = n_train * k / cfg->k, hi = n_train * (k + 1) / cfg->k;
			sovmesh_tensor_set *trained = NULL;
			in = (sovmesh_train_input){
			    .size = sizeof(in),
			    .samples = samples + lo,
			    .n_samples = hi - lo,
			    .current = global,
			    .seed = mix(seed, round, k),
			};
			rep = (sovmesh_train_report){.size = sizeof(rep)};
			c->trainings++;
			r = tops->train(tinst, &in, &trained, &rep, &perr);
			if (r == -ERANGE) {
				/* Diverged from a noisy adapter: this client skips
				 * the round, as a failed node would. */
				c->failed++;
				continue;
			}
			if (r < 0) {
				r = sovmesh_fail(err, r, "round %u client %u: %s", round, k,
				                 perr.message);
				goto done;
			}
			if (rep.loss_after > rep.loss_before)
				c->loss_up++;
			r = fl_delta_subtract(trained, global, &deltas[n_in], err);
			tset_free(trained);
			if (r < 0)
				goto done;
			r = push_l1(c, set_l1(deltas[n_in]), err);
			if (r < 0)
				goto done;
			if (isfinite(cfg->epsilon)) {
				sovmesh_noise_params np = {
				    .size = sizeof(np), .epsilon = cfg->epsilon, .clip = cfg->clip};
				sovmesh_privacy_cost cost = {.size = sizeof(cost)};
				r = nops->perturb(ex->env->noise->instance, deltas[n_in], &np,
				                  &cost, &perr);
				if (r < 0) {
					r = sovmesh_fail(err, r, "dp-laplace: %s", perr.message);
					goto done;
				}
			}
			weights[n_in++] = (double)(hi - lo);
		}
		if (n_in > 0) {
			avg = tset_new(deltas[0], 0);
			if (!avg) {
				r = sovmesh_fail(err, -ENOMEM, "out of memory");
				goto done;
			}
			r = aops->aggregate(ex->env->agg->instance,
			                    (const sovmesh_tensor_set *const *)deltas, weights,
			                    n_in, avg, &perr);
			if (r < 0) {
				r = sovmesh_fail(err, r, "agg-fedavg: %s", perr.message);
				goto done;
			}
			r = fl_delta_add(global, avg, err);
			if (r < 0)
				goto done;
			tset_free(avg);
			avg = NULL;
		}
		for (size_t i = 0; i < n_in; i++) {
			tset_free(deltas[i]);
			deltas[i] = NULL;
		}
		double loss;
		r = tops->evaluate(tinst, global, test, n_test, &loss, &acc, &perr);
		if (r < 0) {
			r = sovmesh_fail(err, r, "evaluate: %s", perr.message);
			goto done;
		}
	}
	c->acc[seed_ix] = acc;
	r = 0;
done:
	tset_free(avg);
	for (size_t i = 0; i < MAX_K; i++)
		tset_free(deltas[i]);
	tset_free(global);
	return r;
}

static int run_cell(experiment *ex, cell *c, unsigned n_seeds, sovmesh_error *err)
{
	double t0 = now_s();
	for (unsigned i = 0; i < n_seeds; i++) {
		int r = run_one(ex, c, i, i + 1, err);
		if (r < 0)
			return r;
	}
	double mean = 0;
	for (unsigned i = 0; i < n_seeds; i++)
		mean += c->acc[i] / n_seeds;
	fprintf(stderr,
	        "  rank %u %-11s K=%-2u eps=%-4g C=%-4g acc %.3f, %zu of %zu trainings raised "
	        "their loss (%.2f s)\n",
	        ex->rank, mode_name(c->cfg.mode), c->cfg.k, c->cfg.epsilon, c->cfg.clip, mean,
	        c->loss_up, c->trainings, now_s() - t0);
	return 0;
}

/* Two significant figures. */
static double round2(double x)
{
	if (!(x > 0))
		return x;
	double p = pow(10, floor(log10(x)) - 1);
	return round(x / p) * p;
}

/* Three significant figures, without an exponent from 100 up. */
static void fmt_num(char *buf, size_t len, double x)
{
	snprintf(buf, len, fabs(x) >= 100 ? "%.0f" : "%.3g", x);
}

static void print_row(cell *c, unsigned n_seeds)
{
	double mean = 0, var = 0;
	for (unsigned i = 0; i < n_seeds; i++)
		mean += c->acc[i] / n_seeds;
	for (unsigned i = 0; i < n_seeds; i++)
		var += (c->acc[i] - mean) * (c->acc[i] - mean) / (n_seeds > 1 ? n_seeds - 1 : 1);
	double l1 = median(c->l1, c->n_l1);
	const run_cfg *g = &c->cfg;
	char k[8], eps[16], clip[16], l1s[24], noise[24], snr[24];
	fmt_num(l1s, sizeof(l1s), l1);
	snprintf(k, sizeof(k), "%u", g->mode == MODE_CENTRAL ? 1 : g->k);
	if (isfinite(g->epsilon)) {
		snprintf(eps, sizeof(eps), "%g", g->epsilon);
		snprintf(clip, sizeof(clip), "%g", g->clip);
		fmt_num(noise, sizeof(noise), c->noise_l1);
		snprintf(snr, sizeof(snr), "%.2g", fmin(l1, g->clip) / c->noise_l1);
	} else {
		snprintf(eps, sizeof(eps), "∞");
		snprintf(clip, sizeof(clip), "–");
		snprintf(noise, sizeof(noise), "0");
		snprintf(snr, sizeof(snr), "–");
	}
	printf("| %s | %s | %s | %s | %.3f ± %.3f | %s | %s | %s |\n", mode_name(g->mode), k, eps,
	       clip, mean, sqrt(var), l1s, noise, snr);
}

static void cell_free(cell *c)
{
	free(c->l1);
	c->l1 = NULL;
}

static const double EPSILONS[] = {100, 10, 1};
#define N_EPS (sizeof(EPSILONS) / sizeof(EPSILONS[0]))
static const uint32_t KS[] = {3, 10};
#define N_K (sizeof(KS) / sizeof(KS[0]))
/* centralised, local x2, per K: no noise + eps x {1, C*} */
#define MAX_CELLS (1 + N_K + N_K * (1 + 2 * N_EPS))

static int run_rank(bench_env *env, uint32_t rank, uint32_t rounds, unsigned n_seeds,
                    sovmesh_error *err)
{
	char p_rank[32], p_classes[32], p_feat[32];
	snprintf(p_rank, sizeof(p_rank), "rank=%u", rank);
	snprintf(p_classes, sizeof(p_classes), "classes=%d", CLASSES);
	snprintf(p_feat, sizeof(p_feat), "text_features=%d", PIXELS);
	const char *params[] = {p_rank, p_classes, p_feat, "epochs=1"};
	experiment ex = {.env = env, .rank = rank};
	int r = instance_open(env, SOVMESH_KIND_TRAINER, "reference", params, 4, &ex.trainer, err);
	if (r < 0)
		return r;

	cell cells[MAX_CELLS];
	size_t n = 0;
	memset(cells, 0, sizeof(cells));
	double t0 = now_s();
	cells[n++].cfg = (run_cfg){MODE_CENTRAL, 1, INFINITY, 0, rounds};
	for (size_t i = 0; i < N_K; i++)
		cells[n++].cfg = (run_cfg){MODE_LOCAL, KS[i], INFINITY, 0, rounds};
	for (size_t i = 0; i < n && r == 0; i++)
		r = run_cell(&ex, &cells[i], n_seeds, err);
	for (size_t i = 0; i < N_K && r == 0; i++) {
		cell *base = &cells[n++];
		base->cfg = (run_cfg){MODE_FED, KS[i], INFINITY, 0, rounds};
		r = run_cell(&ex, base, n_seeds, err);
		if (r < 0)
			break;
		double big = round2(median(base->l1, base->n_l1));
		for (size_t e = 0; e < N_EPS && r == 0; e++) {
			double clips[2] = {1, big};
			for (size_t j = 0; j < 2 && r == 0; j++) {
				cell *c = &cells[n++];
				c->cfg = (run_cfg){MODE_FED, KS[i], EPSILONS[e], clips[j], rounds};
				r = run_cell(&ex, c, n_seeds, err);
			}
		}
	}
	if (r == 0) {
		printf("\n### trainer-reference rank %u (%s), d = %zu values\n\n", rank,
		       rank == 0 ? "softmax regression" : "LoRA head", ex.d);
		printf("| setting | K | ε | C | test accuracy (mean ± sd, %u seeds) | "
		       "delta L1, unclipped (median) | noise L1 d·b | min(L1, C) / noise |\n",
		       n_seeds);
		printf("|---|---|---|---|---|---|---|---|\n");
		for (size_t i = 0; i < n; i++)
			print_row(&cells[i], n_seeds);
		size_t up = 0, tr = 0, failed = 0;
		for (size_t i = 0; i < n; i++) {
			up += cells[i].loss_up;
			tr += cells[i].trainings;
			failed += cells[i].failed;
		}
		printf("\nOf %zu local trainings, %zu diverged (-ERANGE: the client skipped the "
		       "round) and %zu ended with a higher training loss than they started "
		       "with; %.1f s.\n",
		       tr, failed, up, now_s() - t0);
		fflush(stdout);
	}
	for (size_t i = 0; i < MAX_CELLS; i++)
		cell_free(&cells[i]);
	plugin_instance_free(ex.trainer);
	return r;
}

static int parse_uint(const char *s, unsigned lo, unsigned hi, unsigned *out)
{
	char *end = NULL;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (!*s || *end || errno || v < lo || v > hi)
		return -EINVAL;
	*out = (unsigned)v;
	return 0;
}

int main(int argc, char **argv)
{
	const char *data = DIGITS_CSV_GZ;
	unsigned rounds = 20, n_seeds = 3;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--data") == 0 && i + 1 < argc) {
			data = argv[++i];
		} else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
			if (parse_uint(argv[++i], 1, 1000, &rounds) < 0) {
				fprintf(stderr, "fl_dp_accuracy: --rounds must be 1..1000\n");
				return 2;
			}
		} else if (strcmp(argv[i], "--seeds") == 0 && i + 1 < argc) {
			if (parse_uint(argv[++i], 1, MAX_SEEDS, &n_seeds) < 0) {
				fprintf(stderr, "fl_dp_accuracy: --seeds must be 1..%d\n",
				        MAX_SEEDS);
				return 2;
			}
		} else {
			fprintf(stderr, "usage: fl_dp_accuracy [--data digits.csv.gz] [--rounds R] "
			                "[--seeds N]\n");
			return 2;
		}
	}

	sovmesh_error err = {0};
	bench_env env;
	memset(&env, 0, sizeof(env));
	int r = load_digits(data, &err);
	if (r == 0)
		r = env_open(&env, &err);
	if (r < 0) {
		fprintf(stderr, "fl_dp_accuracy: %s\n", err.message);
		env_close(&env);
		return 1;
	}
	printf("fl_dp_accuracy: digits (%d rows, pixels / 16), 80/20 split, IID shards, "
	       "%u rounds of 1 epoch,\ntrainer-reference (learning_rate default), dp-laplace "
	       "(sensitivity 2C), agg-fedavg by shard size,\n%u seeds.  Noise from "
	       "rng_insecure_seed: reproducible and NOT private (an experiment).\n",
	       DIGITS, rounds, n_seeds);
	/* The core warns once that the stream is seeded; every run reseeds
	 * it, and the trainer's "training raised the loss" warnings are
	 * counted in the progress lines instead, so only errors are logged
	 * from here on. */
	rng_insecure_seed(0);
	log_set_level(SOVMESH_LOG_ERROR);
	for (uint32_t rank = 0; rank <= 4 && r == 0; rank += 4)
		r = run_rank(&env, rank, rounds, n_seeds, &err);
	env_close(&env);
	if (r < 0) {
		fprintf(stderr, "fl_dp_accuracy: %s\n", err.message);
		return 1;
	}
	return 0;
}

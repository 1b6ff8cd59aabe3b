/*
 * agg_bench: aggregation throughput for large adapters, against a
 * memory-bandwidth baseline measured in the same run on the same buffers.
 *
 *   meson setup build-rel-bench -Dbuildtype=release -Dbench=true
 *   meson compile -C build-rel-bench && build-rel-bench/bench/agg_bench
 *
 * Inputs: N tensor sets (--inputs, default 10) of P F32 values each
 * (--params, default 20,000,000), split into 4 tensors like an adapter,
 * filled with deterministic pseudo-random values in [-1, 1); weights
 * 1..N.  About (N + 2) * P * 4 bytes of memory (880 MB by default).
 *
 * Baseline: out[i] = sum_k w_k in_k[i] in float over the same buffers,
 * 16 coordinates at a time across all inputs, so that it reads every
 * input once and writes the output once (the least memory traffic a
 * weighted mean can have), in a plain loop the compiler vectorises.  Its
 * rate is the bytes it must move, (N + 1) * P * 4, over the best of
 * --base-runs (5) timed runs after a warm-up.
 *
 * Then every agg-*.so on the plugin search path (the build tree's
 * plugins/ when run from the build tree, $SOVMESH_PLUGIN_PATH first) is
 * loaded by name with the core's loader, at its default settings, and
 * aggregate() is timed on the same inputs: best of --runs (3) after a
 * warm-up.  Its rate is the input it consumed, N * P * 4 bytes, over
 * that time; "ratio" is baseline time / aggregator time, i.e. the share
 * of the baseline's speed (both in the same accounting), against the
 * baseline measured again just before that aggregator, so that load from
 * other processes on a shared machine moves both.  The output is
 * checked: finite, and for fedavg equal to the baseline's mean within
 * float rounding.
 *
 * One thread throughout (the plugins use one).  Not a test.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include <sovmesh/aggregator.h>

#include "host.h"
#include "plugin_loader.h"
#include "plugin_settings.h"
#include "tensor_set.h"

#define N_TENSORS  4
#define MAX_INPUTS 64
#define MAX_AGGS   32
/* Coordinates the baseline sums at once (a cache line per input; 32
 * spilled the sums out of the 16 SSE registers and ran at half speed). */
#define BASE_LANES 16

/* The aggregators the issue names, measured first and reported missing. */
static const char *const EXPECTED[] = {"fedavg", "fedmedian", "trimmed",
                                       "krum",   "multikrum", "fedavgm"};
#define N_EXPECTED (sizeof(EXPECTED) / sizeof(EXPECTED[0]))

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

/* Input `k`: N_TENSORS tensors of about P / N_TENSORS values in [-1, 1). */
static int make_input(uint64_t p, unsigned k, sovmesh_tensor_set **out, sovmesh_error *err)
{
	sovmesh_tensor_set *s = tset_new(NULL, N_TENSORS);
	if (!s)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	uint64_t seed = UINT64_C(0xa99b3c) + k;
	for (unsigned t = 0; t < N_TENSORS; t++) {
		uint64_t lo = p * t / N_TENSORS, hi = p * (t + 1) / N_TENSORS;
		uint64_t shape[1] = {hi - lo};
		char name[64];
		snprintf(name, sizeof(name), "layers.%u.self_attn.%s_proj.lora_%c", t / 2,
		         t / 2 ? "v" : "q", t % 2 ? 'B' : 'A');
		int r = tset_init_tensor(s, t, name, SOVMESH_DTYPE_F32, 1, shape);
		if (r < 0) {
			tset_free(s);
			return sovmesh_fail(err, r, "cannot make a %llu-value tensor: %s",
			                    (unsigned long long)shape[0], strerror(-r));
		}
		float *v = s->tensors[t].data;
		for (uint64_t i = 0; i < shape[0]; i++)
			v[i] = (float)((double)(splitmix(&seed) >> 40) * 0x1p-23 - 1.0);
	}
	*out = s;
	return 0;
}

/* ---- the baseline ---- */

/*
 * out = sum_k w[k] in[k], BASE_LANES coordinates at a time: the partial
 * sums stay in registers while all N inputs are read in lockstep, so each
 * input is read once as one sequential stream and out is written once.
 * (Summing one whole input before the next instead re-reads and rewrites
 * the partial sums N times; blocks of a few thousand coordinates avoid
 * that but restart N prefetch streams per block, and ran at a third of
 * this speed here.)
 */
static void base_mean(float *restrict out, const float *const *in, const float *w, size_t n,
                      uint64_t numel)
{
	uint64_t j = 0;
	for (; j + BASE_LANES <= numel; j += BASE_LANES) {
		float a[BASE_LANES];
		const float *x = in[0] + j;
		for (unsigned q = 0; q < BASE_LANES; q++)
			a[q] = w[0] * x[q];
		for (size_t k = 1; k < n; k++) {
			const float *y = in[k] + j;
			const float wk = w[k];
			for (unsigned q = 0; q < BASE_LANES; q++)
				a[q] += wk * y[q];
		}
		memcpy(out + j, a, sizeof(a));
	}
	for (; j < numel; j++) {
		float s = w[0] * in[0][j];
		for (size_t k = 1; k < n; k++)
			s += w[k] * in[k][j];
		out[j] = s;
	}
}

static void base_once(sovmesh_tensor_set *out, sovmesh_tensor_set *const *in, const float *w,
                      size_t n)
{
	for (size_t t = 0; t < out->count; t++) {
		const float *ins[MAX_INPUTS];
		for (size_t k = 0; k < n; k++)
			ins[k] = in[k]->tensors[t].data;
		base_mean(out->tensors[t].data, ins, w, n, out->tensors[t].nbytes / sizeof(float));
	}
}

/* Best of `runs` timed baselines after a warm-up. */
static double base_time(sovmesh_tensor_set *out, sovmesh_tensor_set *const *in, const float *w,
                        size_t n, unsigned runs)
{
	double best = INFINITY;
	for (unsigned i = 0; i <= runs; i++) {
		double t0 = now_s();
		base_once(out, in, w, n);
		double dt = now_s() - t0;
		if (i > 0 && dt < best)
			best = dt;
	}
	return best;
}

/* ---- plugins by name ---- */

static int add_name(char **names, size_t *n, const char *name)
{
	for (size_t i = 0; i < *n; i++)
		if (strcmp(names[i], name) == 0)
			return 0;
	if (*n >= MAX_AGGS)
		return 0;
	names[*n] = strdup(name);
	if (!names[*n])
		return -ENOMEM;
	(*n)++;
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every "agg-NAME.so" in the search path's directories, NAME as the
 * loader accepts it ([a-z0-9][a-z0-9_]*). */
static int find_aggregators(const plugin_search_path *sp, char **names, size_t *n)
{
	*n = 0;
	for (size_t d = 0; d < sp->count; d++) {
		DIR *dir = opendir(sp->dirs[d]);
		if (!dir)
			continue;
		struct dirent *e;
		while ((e = readdir(dir))) {
			size_t len = strlen(e->d_name);
			if (len <= 7 || strncmp(e->d_name, "agg-", 4) != 0 ||
			    strcmp(e->d_name + len - 3, ".so") != 0)
				continue;
			char name[256];
			snprintf(name, sizeof(name), "%.*s", (int)(len - 7), e->d_name + 4);
			int ok = name[0] >= 'a' && name[0] <= 'z';
			for (const char *c = name; *c && ok; c++)
				ok = (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
				     *c == '_';
			if (ok && add_name(names, n, name) < 0) {
				closedir(dir);
				return -ENOMEM;
			}
		}
		closedir(dir);
	}
	qsort(names, *n, sizeof(*names), cmp_str);
	return 0;
}

typedef struct bench_env {
	uv_loop_t loop;
	int loop_ready;
	host_runtime *rt;
	plugin_search_path sp;
} bench_env;

static int env_open(bench_env *env, sovmesh_error *err)
{
	memset(env, 0, sizeof(*env));
	int r = uv_loop_init(&env->loop);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot start event loop: %s", uv_strerror(r));
	env->loop_ready = 1;
	r = host_runtime_new(&env->loop, NULL, "agg_bench", &env->rt);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot start plugin host: %s", strerror(-r));
	r = plugin_search_path_build(NULL, 0, &env->sp);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot build the plugin search path: %s",
		                    strerror(-r));
	return 0;
}

static void env_close(bench_env *env)
{
	plugin_search_path_free(&env->sp);
	if (env->rt)
		host_runtime_free(env->rt);
	if (env->loop_ready)
		uv_loop_close(&env->loop);
}

/* On the shared runtime, default settings. */
static int instance_open(bench_env *env, const char *name, plugin_instance **out,
                         sovmesh_error *err)
{
	return plugin_instance_open(env->rt, &env->sp, SOVMESH_KIND_AGGREGATOR, name, NULL, 0, out, err);
}

/* ---- one aggregator ---- */

typedef struct agg_result {
	double best_s;
	double max_abs_err; /* fedavg only: against the baseline's mean */
} agg_result;

/* Largest |a - b| over the set (fedavg's check; values are in [-1, 1)). */
static double max_abs_diff(const sovmesh_tensor_set *a, const sovmesh_tensor_set *b)
{
	double worst = 0;
	for (size_t t = 0; t < a->count; t++) {
		const float *x = a->tensors[t].data, *y = b->tensors[t].data;
		size_t n = a->tensors[t].nbytes / sizeof(float);
		for (size_t i = 0; i < n; i++) {
			double d = fabs((double)x[i] - (double)y[i]);
			worst = d > worst ? d : worst;
		}
	}
	return worst;
}

static int time_aggregator(plugin_instance *pi, sovmesh_tensor_set *const *in,
                           const double *weights, size_t n, unsigned runs,
                           const sovmesh_tensor_set *base_out, agg_result *res, sovmesh_error *err)
{
	const sovmesh_aggregator_ops *ops = pi->plugin->ops;
	if (!ops->aggregate)
		return sovmesh_fail(err, -ENOTSUP, "%s: has no aggregate slot", pi->plugin->path);
	/* Made once, as the host makes it; every call overwrites it. */
	sovmesh_tensor_set *out = tset_new(in[0], 0);
	if (!out)
		return sovmesh_fail(err, -ENOMEM, "out of memory for the output set");
	res->best_s = INFINITY;
	res->max_abs_err = NAN;
	int r = 0;
	for (unsigned i = 0; i <= runs && r == 0; i++) {
		sovmesh_error perr = {0};
		double t0 = now_s();
		r = ops->aggregate(pi->instance, (const sovmesh_tensor_set *const *)in, weights, n,
		                   out, &perr);
		double dt = now_s() - t0;
		if (r < 0) {
			r = sovmesh_fail(err, r, "%s refused the inputs: %s", pi->plugin->label,
			                 perr.message[0] ? perr.message : strerror(-r));
			break;
		}
		if (i > 0 && dt < res->best_s) /* run 0 is the warm-up */
			res->best_s = dt;
	}
	if (r == 0)
		r = tset_check_finite(out, err);
	if (r == 0 && strcmp(pi->plugin->desc->name, "fedavg") == 0) {
		/* The baseline sums in float: a few ulps of 1 at most. */
		res->max_abs_err = max_abs_diff(out, base_out);
		if (!(res->max_abs_err < 1e-5))
			r = sovmesh_fail(err, -EPROTO,
			                 "fedavg differs from the baseline's mean by up to %.3g",
			                 res->max_abs_err);
	}
	tset_free(out);
	return r;
}

/* ---- main ---- */

/* `name` is one of the comma-separated `list`. */
static int in_list(const char *list, const char *name)
{
	size_t len = strlen(name);
	for (const char *p = list; *p;) {
		const char *end = strchr(p, ',');
		size_t l = end ? (size_t)(end - p) : strlen(p);
		if (l == len && strncmp(p, name, len) == 0)
			return 1;
		p += l + (end != NULL);
	}
	return 0;
}

static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
	char *end = NULL;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (!*s || *s == '-' || *end || errno || v < lo || v > hi)
		return -EINVAL;
	*out = v;
	return 0;
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: agg_bench [--inputs N] [--params P] [--runs R] [--base-runs B] "
	        "[--agg NAME,...]\n"
	        "  N inputs (2..%d, default 10) of P F32 values (>= %d, default "
	        "20000000);\n"
	        "  best of R timed aggregate() calls (default 3) and of B baseline "
	        "runs (default 5);\n"
	        "  --agg: only these aggregators (default: every agg-*.so found)\n",
	        MAX_INPUTS, N_TENSORS);
}

int main(int argc, char **argv)
{
	uint64_t n = 10, p = 20000000, runs = 3, base_runs = 5;
	const char *only = NULL;
	for (int i = 1; i < argc; i++) {
		uint64_t *dst = NULL, lo = 1, hi = 1000;
		if (strcmp(argv[i], "--agg") == 0 && i + 1 < argc) {
			only = argv[++i];
			continue;
		}
		if (strcmp(argv[i], "--inputs") == 0)
			dst = &n, lo = 2, hi = MAX_INPUTS;
		else if (strcmp(argv[i], "--params") == 0)
			dst = &p, lo = N_TENSORS, hi = UINT64_C(1) << 36;
		else if (strcmp(argv[i], "--runs") == 0)
			dst = &runs;
		else if (strcmp(argv[i], "--base-runs") == 0)
			dst = &base_runs;
		if (!dst || i + 1 >= argc || parse_u64(argv[i + 1], lo, hi, dst) < 0) {
			if (dst)
				fprintf(stderr, "agg_bench: %s must be a number in %llu..%llu\n",
				        argv[i], (unsigned long long)lo, (unsigned long long)hi);
			usage();
			return 2;
		}
		i++;
	}

	sovmesh_error err = {0};
	sovmesh_tensor_set *in[MAX_INPUTS] = {0}, *base_out = NULL;
	double weights[MAX_INPUTS];
	float wf[MAX_INPUTS];
	char *names[MAX_AGGS];
	size_t n_names = 0;
	bench_env env;
	memset(&env, 0, sizeof(env));
	int r = env_open(&env, &err);

	double t0 = now_s();
	for (size_t k = 0; k < n && r == 0; k++)
		r = make_input(p, (unsigned)k, &in[k], &err);
	if (r == 0 && !(base_out = tset_new(in[0], 0)))
		r = sovmesh_fail(&err, -ENOMEM, "out of memory for the output set");
	if (r < 0) {
		fprintf(stderr, "agg_bench: %s\n", err.message);
		goto done;
	}
	double wsum = 0;
	for (size_t k = 0; k < n; k++)
		wsum += (double)(k + 1);
	for (size_t k = 0; k < n; k++) {
		weights[k] = (double)(k + 1);
		wf[k] = (float)(weights[k] / wsum);
	}
	const double in_bytes = (double)n * (double)p * 4, out_bytes = (double)p * 4;
	printf("agg_bench: %llu inputs x %llu F32 values (%d tensors each, %.0f MB per "
	       "input), weights 1..%llu; one thread; inputs made in %.1f s\n",
	       (unsigned long long)n, (unsigned long long)p, N_TENSORS, out_bytes / 1e6,
	       (unsigned long long)n, now_s() - t0);

	double base_first = base_time(base_out, in, wf, n, (unsigned)base_runs);
	double base_best = base_first;
	printf("\n| method | best time (s) | GB/s | GB/s of input | baseline just before (s) | "
	       "ratio to baseline |\n");
	printf("|---|---|---|---|---|---|\n");
	printf("| baseline (streaming weighted sum, reads %.2f GB + writes %.2f GB) | %.4f | "
	       "%.2f (read + written) | %.2f | – | 1 |\n",
	       in_bytes / 1e9, out_bytes / 1e9, base_first,
	       (in_bytes + out_bytes) / base_first / 1e9, in_bytes / base_first / 1e9);
	fflush(stdout);

	r = find_aggregators(&env.sp, names, &n_names);
	if (r < 0) {
		fprintf(stderr, "agg_bench: out of memory\n");
		goto done;
	}
	/* The named ones first, in the order, then any others. */
	char *order[MAX_AGGS + N_EXPECTED];
	size_t n_order = 0;
	char missing[256] = "";
	for (size_t e = 0; e < N_EXPECTED; e++) {
		size_t j = 0;
		while (j < n_names && strcmp(names[j], EXPECTED[e]) != 0)
			j++;
		if (j < n_names)
			order[n_order++] = names[j];
		else
			snprintf(missing + strlen(missing), sizeof(missing) - strlen(missing),
			         "%sagg-%s.so", missing[0] ? ", " : "", EXPECTED[e]);
	}
	for (size_t j = 0; j < n_names; j++) {
		size_t e = 0;
		while (e < N_EXPECTED && strcmp(names[j], EXPECTED[e]) != 0)
			e++;
		if (e == N_EXPECTED)
			order[n_order++] = names[j];
	}

	if (only) { /* keep the order, drop what was not asked for */
		size_t kept = 0;
		for (size_t j = 0; j < n_order; j++)
			if (in_list(only, order[j]))
				order[kept++] = order[j];
		n_order = kept;
		missing[0] = '\0'; /* now: the asked-for ones not found */
		for (const char *p = only; *p;) {
			size_t l = strcspn(p, ",");
			size_t j = 0;
			while (j < n_names &&
			       (strlen(names[j]) != l || strncmp(names[j], p, l) != 0))
				j++;
			if (l > 0 && j == n_names)
				snprintf(missing + strlen(missing),
				         sizeof(missing) - strlen(missing), "%sagg-%.*s.so",
				         missing[0] ? ", " : "", (int)l, p);
			p += l + (p[l] == ',');
		}
	}
	int failed = 0;
	double fedavg_err = NAN;
	for (size_t j = 0; j < n_order; j++) {
		plugin_instance *pi = NULL;
		agg_result res = {0};
		/* The baseline again right before, so that both see the same
		 * machine (other load on a shared box moves both). */
		double base_now =
		    j == 0 ? base_first : base_time(base_out, in, wf, n, (unsigned)base_runs);
		base_best = base_now < base_best ? base_now : base_best;
		r = instance_open(&env, order[j], &pi, &err);
		if (r == 0)
			r = time_aggregator(pi, in, weights, n, (unsigned)runs, base_out, &res,
			                    &err);
		if (pi)
			plugin_instance_free(pi);
		if (r < 0) {
			printf("| %s | – | – | – | %.4f | failed: %s |\n", order[j], base_now,
			       err.message);
			failed = 1;
			continue;
		}
		if (strcmp(order[j], "fedavg") == 0)
			fedavg_err = res.max_abs_err;
		printf("| %s | %.4f | – | %.2f | %.4f | %.3f |\n", order[j], res.best_s,
		       in_bytes / res.best_s / 1e9, base_now, base_now / res.best_s);
		fflush(stdout);
	}
	printf("\nBaseline: best of %llu runs after a warm-up; aggregators: best of %llu "
	       "aggregate() calls after a warm-up, default settings.\n",
	       (unsigned long long)base_runs, (unsigned long long)runs);
	printf("Ratio = the baseline's time, measured again just before the aggregator, over "
	       "the aggregator's\n(its share of the baseline's speed).  Fastest baseline of "
	       "the run: %.4f s = %.2f GB/s read + written.\n",
	       base_best, (in_bytes + out_bytes) / base_best / 1e9);
	if (!isnan(fedavg_err))
		printf("fedavg's output matches the baseline's float mean within %.2g.\n",
		       fedavg_err);
	if (missing[0])
		printf("Not on the search path, skipped: %s.\n", missing);
	if (n_order == 0)
		printf("No %s on the search path (set SOVMESH_PLUGIN_PATH).\n",
		       only ? "aggregator named by --agg" : "agg-*.so");
	r = failed ? -EIO : 0;
done:
	for (size_t j = 0; j < n_names; j++)
		free(names[j]);
	for (size_t k = 0; k < MAX_INPUTS; k++)
		tset_free(in[k]);
	tset_free(base_out);
	env_close(&env);
	return r < 0 ? 1 : 0;
}

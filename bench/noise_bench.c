/*
 * noise_bench: how fast each noise mechanism perturbs an update.
 *
 *   meson setup build-rel-bench -Dbuildtype=release -Dbench=true
 *   meson compile -C build-rel-bench && build-rel-bench/bench/noise_bench
 *
 * Every dp-*.so on the plugin search path (the build tree's plugins/ when
 * run from the build tree, $SOVMESH_PLUGIN_PATH first) is loaded by name
 * with the core's loader, at its default settings, and perturb() is
 * timed on a set of --values F32 values (default 1,000,000, in 4 tensors
 * like an adapter, pseudo-random in [-1e-3, 1e-3)) with ε = 1, δ = 1e-6,
 * clip 1: best of --runs (3) after a warm-up, each run on a fresh copy of
 * the same input.  When 10 × the best time is under 10 s the same is done
 * with 10 × the values (--big 0 turns that off).
 *
 * The randomness is the real one: the host's random_bytes, i.e. the
 * core's rng_bytes (GnuTLS's CSPRNG), not seeded.  To see what it costs,
 * this binary is linked with -Wl,--wrap=rng_bytes: __wrap_rng_bytes below
 * counts the bytes and the time and calls the real rng_bytes, so the
 * noise is unchanged.  "random bytes / value" are the bytes the
 * mechanism fetched (whole 4 KB buffers) over the values perturbed;
 * "CSPRNG share" is the part of the perturb() time spent in rng_bytes.
 *
 * One thread.  Not a test.
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

#include <sovmesh/noise.h>

#include "host.h"
#include "plugin_loader.h"
#include "plugin_settings.h"
#include "random.h"
#include "tensor_set.h"

#define N_TENSORS 4
#define MAX_MECHS 32
/* Run the larger set only when it should take less than this. */
#define BIG_LIMIT_S 10.0

static const char *const EXPECTED[] = {"laplace", "gaussian", "none"};
#define N_EXPECTED (sizeof(EXPECTED) / sizeof(EXPECTED[0]))

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- counting the real CSPRNG (see -Wl,--wrap in bench/meson.build) ---- */

int __real_rng_bytes(void *buf, size_t len);
int __wrap_rng_bytes(void *buf, size_t len);

static uint64_t rng_count; /* bytes, since the last reset */
static double rng_time;    /* seconds inside rng_bytes */

int __wrap_rng_bytes(void *buf, size_t len)
{
	double t0 = now_s();
	int r = __real_rng_bytes(buf, len);
	rng_time += now_s() - t0;
	if (r == 0)
		rng_count += len;
	return r;
}

/* ---- inputs ---- */

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

static int make_set(uint64_t p, sovmesh_tensor_set **out, sovmesh_error *err)
{
	sovmesh_tensor_set *s = tset_new(NULL, N_TENSORS);
	if (!s)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	uint64_t seed = UINT64_C(0x7015e);
	for (unsigned t = 0; t < N_TENSORS; t++) {
		uint64_t shape[1] = {p * (t + 1) / N_TENSORS - p * t / N_TENSORS};
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
			v[i] = (float)(((double)(splitmix(&seed) >> 40) * 0x1p-23 - 1.0) * 1e-3);
	}
	*out = s;
	return 0;
}

static void copy_values(sovmesh_tensor_set *dst, const sovmesh_tensor_set *src)
{
	for (size_t t = 0; t < src->count; t++)
		memcpy(dst->tensors[t].data, src->tensors[t].data, src->tensors[t].nbytes);
}

/* ---- plugins by name ---- */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every "dp-NAME.so" in the search path's directories, NAME as the
 * loader accepts it ([a-z0-9][a-z0-9_]*). */
static int find_mechanisms(const plugin_search_path *sp, char **names, size_t *n)
{
	*n = 0;
	for (size_t d = 0; d < sp->count; d++) {
		DIR *dir = opendir(sp->dirs[d]);
		if (!dir)
			continue;
		struct dirent *e;
		while ((e = readdir(dir)) && *n < MAX_MECHS) {
			size_t len = strlen(e->d_name);
			if (len <= 6 || strncmp(e->d_name, "dp-", 3) != 0 ||
			    strcmp(e->d_name + len - 3, ".so") != 0)
				continue;
			char name[256];
			snprintf(name, sizeof(name), "%.*s", (int)(len - 6), e->d_name + 3);
			int ok = (name[0] >= 'a' && name[0] <= 'z') ||
			         (name[0] >= '0' && name[0] <= '9');
			for (const char *c = name; *c && ok; c++)
				ok = (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
				     *c == '_';
			for (size_t i = 0; i < *n && ok; i++)
				ok = strcmp(names[i], name) != 0;
			if (!ok)
				continue;
			if (!(names[*n] = strdup(name))) {
				closedir(dir);
				return -ENOMEM;
			}
			(*n)++;
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
	r = host_runtime_new(&env->loop, NULL, "noise_bench", &env->rt);
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
	return plugin_instance_open(env->rt, &env->sp, SOVMESH_KIND_NOISE, name, NULL, 0, out, err);
}

/* ---- one mechanism on one set size ---- */

typedef struct noise_result {
	double best_s;
	double bytes_per_value; /* mean over the timed runs */
	double rng_share;       /* rng time / perturb time, over the timed runs */
} noise_result;

static int time_perturb(plugin_instance *pi, const sovmesh_tensor_set *pristine,
                        sovmesh_tensor_set *work, uint64_t numel, unsigned runs, noise_result *res,
                        sovmesh_error *err)
{
	const sovmesh_noise_ops *ops = pi->plugin->ops;
	if (!ops->perturb)
		return sovmesh_fail(err, -ENOTSUP, "%s: has no perturb slot", pi->plugin->path);
	const sovmesh_noise_params np = {
	    .size = sizeof(np), .epsilon = 1, .delta = 1e-6, .clip = 1};
	uint64_t bytes = 0;
	double total = 0, in_rng = 0;
	res->best_s = INFINITY;
	for (unsigned i = 0; i <= runs; i++) {
		copy_values(work, pristine);
		sovmesh_privacy_cost cost = {.size = sizeof(cost)};
		sovmesh_error perr = {0};
		rng_count = 0;
		rng_time = 0;
		double t0 = now_s();
		int r = ops->perturb(pi->instance, work, &np, &cost, &perr);
		double dt = now_s() - t0;
		if (r < 0)
			return sovmesh_fail(err, r, "%s refused ε = 1, δ = 1e-6, clip 1: %s",
			                    pi->plugin->label,
			                    perr.message[0] ? perr.message : strerror(-r));
		if (i == 0) /* the warm-up */
			continue;
		bytes += rng_count;
		total += dt;
		in_rng += rng_time;
		if (dt < res->best_s)
			res->best_s = dt;
	}
	int r = tset_check_finite(work, err);
	if (r < 0)
		return r;
	res->bytes_per_value = (double)bytes / ((double)numel * runs);
	res->rng_share = total > 0 ? in_rng / total : 0;
	return 0;
}

static void print_row(const char *name, uint64_t numel, const noise_result *res)
{
	printf("| %s | %llu | %.4f | %.3g | %.2f | %.0f%% |\n", name, (unsigned long long)numel,
	       res->best_s, (double)numel / res->best_s, res->bytes_per_value,
	       100 * res->rng_share);
	fflush(stdout);
}

/* ---- main ---- */

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

int main(int argc, char **argv)
{
	uint64_t values = 1000000, big = 10, runs = 3;
	for (int i = 1; i < argc; i++) {
		uint64_t *dst = NULL, lo = 1, hi = 1000;
		if (strcmp(argv[i], "--values") == 0)
			dst = &values, lo = N_TENSORS, hi = UINT64_C(1) << 32;
		else if (strcmp(argv[i], "--big") == 0)
			dst = &big, lo = 0, hi = 100;
		else if (strcmp(argv[i], "--runs") == 0)
			dst = &runs;
		if (!dst || i + 1 >= argc || parse_u64(argv[i + 1], lo, hi, dst) < 0) {
			if (dst)
				fprintf(stderr, "noise_bench: %s must be a number in %llu..%llu\n",
				        argv[i], (unsigned long long)lo, (unsigned long long)hi);
			fprintf(stderr, "usage: noise_bench [--values N] [--big F] [--runs R]\n"
			                "  N F32 values (default 1000000); then F x N (default "
			                "10, 0 = off) when that should take < 10 s;\n"
			                "  best of R timed perturb() calls (default 3)\n");
			return 2;
		}
		i++;
	}

	sovmesh_error err = {0};
	sovmesh_tensor_set *pristine = NULL, *work = NULL, *big_pristine = NULL, *big_work = NULL;
	char *names[MAX_MECHS];
	size_t n_names = 0;
	bench_env env;
	int failed = 0;
	int r = env_open(&env, &err);
	if (r == 0)
		r = make_set(values, &pristine, &err);
	if (r == 0 && !(work = tset_new(pristine, 0)))
		r = sovmesh_fail(&err, -ENOMEM, "out of memory");
	if (r == 0 && find_mechanisms(&env.sp, names, &n_names) < 0)
		r = sovmesh_fail(&err, -ENOMEM, "out of memory");
	if (r < 0) {
		fprintf(stderr, "noise_bench: %s\n", err.message);
		goto done;
	}
	if (rng_is_deterministic()) {
		fprintf(stderr, "noise_bench: the process RNG is seeded; refusing to time it\n");
		r = -EINVAL;
		goto done;
	}
	printf("noise_bench: perturb() with ε = 1, δ = 1e-6, clip 1 on F32 values in %d "
	       "tensors; the real CSPRNG (rng_bytes, not seeded); one thread\n\n",
	       N_TENSORS);
	printf("| mechanism | values | best time (s) | values/s | random bytes / value | "
	       "CSPRNG share |\n");
	printf("|---|---|---|---|---|---|\n");

	/* The mechanisms first, then any others. */
	const char *order[MAX_MECHS + N_EXPECTED];
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
			         "%sdp-%s.so", missing[0] ? ", " : "", EXPECTED[e]);
	}
	for (size_t j = 0; j < n_names; j++) {
		size_t e = 0;
		while (e < N_EXPECTED && strcmp(names[j], EXPECTED[e]) != 0)
			e++;
		if (e == N_EXPECTED)
			order[n_order++] = names[j];
	}

	for (size_t j = 0; j < n_order; j++) {
		plugin_instance *pi = NULL;
		noise_result res = {0};
		r = instance_open(&env, order[j], &pi, &err);
		if (r == 0)
			r = time_perturb(pi, pristine, work, values, (unsigned)runs, &res, &err);
		if (r == 0) {
			print_row(order[j], values, &res);
			uint64_t n_big = values * big;
			if (big > 1 && res.best_s * (double)big < BIG_LIMIT_S) {
				if (!big_pristine) {
					r = make_set(n_big, &big_pristine, &err);
					if (r == 0 && !(big_work = tset_new(big_pristine, 0)))
						r = sovmesh_fail(&err, -ENOMEM, "out of memory");
				}
				if (r == 0)
					r = time_perturb(pi, big_pristine, big_work, n_big,
					                 (unsigned)runs, &res, &err);
				if (r == 0)
					print_row(order[j], n_big, &res);
			} else if (big > 1) {
				printf("| %s | %llu | skipped: would take ~%.0f s | | | |\n",
				       order[j], (unsigned long long)n_big,
				       res.best_s * (double)big);
			}
		}
		if (pi)
			plugin_instance_free(pi);
		if (r < 0) {
			printf("| %s | – | failed: %s | | | |\n", order[j], err.message);
			failed = 1;
		}
	}
	printf("\nBest of %llu perturb() calls after a warm-up, each on a fresh copy of the "
	       "input; default settings.\n",
	       (unsigned long long)runs);
	if (missing[0])
		printf("Not on the search path, skipped: %s.\n", missing);
	if (n_order == 0)
		printf("No dp-*.so on the search path (set SOVMESH_PLUGIN_PATH).\n");
	r = failed ? -EIO : 0;
done:
	for (size_t j = 0; j < n_names; j++)
		free(names[j]);
	tset_free(pristine);
	tset_free(work);
	tset_free(big_pristine);
	tset_free(big_work);
	env_close(&env);
	return r < 0 ? 1 : 0;
}

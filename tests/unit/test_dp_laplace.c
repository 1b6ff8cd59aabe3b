/* dp-laplace (plugins/dp-laplace/laplace.c), loaded through mini_host. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <sovmesh/noise.h>

#include "mini_host.h"

static uint64_t rng_state = 0x243f6a8885a308d3u;

/* splitmix64: test data only, never noise. */
static uint64_t next_u64(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
	return z ^ (z >> 31);
}

static double next_signed(void)
{
	return (double)(next_u64() >> 11) * 0x1p-52 - 1.0;
}

static mini_host *open_plugin(const mini_setting *settings)
{
	mini_host *mh = NULL;
	sovmesh_error err = {0};
	if (mini_host_open("dp-laplace", settings, &mh, &err) < 0)
		fail_msg("cannot load dp-laplace: %s", err.message);
	return mh;
}

static const sovmesh_noise_ops *ops_of(mini_host *mh)
{
	return mh->desc->ops;
}

static sovmesh_noise_params params(double eps, double clip)
{
	sovmesh_noise_params p = {.size = sizeof(p), .epsilon = eps, .delta = 0, .clip = clip};
	return p;
}

/* Two F64 (or F32) tensors of n1 and n2 elements, zeroed. */
static sovmesh_tensor_set *make2(mini_host *mh, sovmesh_dtype dt, uint64_t n1, uint64_t n2)
{
	static const char *const nm[2] = {"a.lora_A", "b.lora_B"};
	static const uint32_t nd[2] = {1, 1};
	uint64_t sh[2][SOVMESH_TENSOR_MAX_DIMS] = {{n1}, {n2}};
	sovmesh_tensor_set *s =
	    mini_host_make_set(mh, 2, nm, dt, nd, (const uint64_t(*)[SOVMESH_TENSOR_MAX_DIMS])sh);
	assert_non_null(s);
	return s;
}

static void free_set(mini_host *mh, sovmesh_tensor_set *s)
{
	mh->api.tensor_set_free(mh->host, s);
}

static uint64_t numel(const sovmesh_tensor_set *s)
{
	return sovmesh_tensor_numel(&s->tensors[0]) + sovmesh_tensor_numel(&s->tensors[1]);
}

/* Element i of the set as if its tensors were one vector. */
static double get(const sovmesh_tensor_set *s, uint64_t i)
{
	uint64_t n0 = sovmesh_tensor_numel(&s->tensors[0]);
	return i < n0 ? sovmesh_tensor_get(&s->tensors[0], i)
	              : sovmesh_tensor_get(&s->tensors[1], i - n0);
}

static void set(sovmesh_tensor_set *s, uint64_t i, double v)
{
	uint64_t n0 = sovmesh_tensor_numel(&s->tensors[0]);
	if (i < n0)
		sovmesh_tensor_set_value(&s->tensors[0], i, v);
	else
		sovmesh_tensor_set_value(&s->tensors[1], i - n0, v);
}

static double l1(const sovmesh_tensor_set *s)
{
	double sum = 0;
	for (uint64_t i = 0; i < numel(s); i++)
		sum += fabs(get(s, i));
	return sum;
}

static int perturb(mini_host *mh, sovmesh_tensor_set *s, double eps, double clip,
                   sovmesh_privacy_cost *cost, sovmesh_error *err)
{
	sovmesh_noise_params p = params(eps, clip);
	memset(cost, 0, sizeof(*cost));
	memset(err, 0, sizeof(*err));
	return ops_of(mh)->perturb(mh->instance, s, &p, cost, err);
}

static void expect_msg(const sovmesh_error *err, const char *frag)
{
	assert_null(strchr(err->message, '\n'));
	if (!strstr(err->message, frag))
		fail_msg("message '%s' lacks '%s'", err->message, frag);
}

static void test_descriptor(void **state)
{
	(void)state;
	mini_host *mh = open_plugin(NULL);
	const sovmesh_plugin_descriptor *d = mh->desc;
	assert_string_equal(d->name, "laplace");
	assert_int_equal(d->kind, SOVMESH_KIND_NOISE);
	assert_string_equal(d->settings[0].name, "sensitivity_factor");
	assert_int_equal(d->settings[0].type, SOVMESH_SETTING_DOUBLE);
	assert_true(strtod(d->settings[0].default_value, NULL) == 2.0);
	assert_null(d->settings[1].name);
	mini_host_close(mh);
}

static void test_cost(void **state)
{
	(void)state;
	mini_host *mh = open_plugin(NULL);
	sovmesh_noise_params p = params(0.5, 3.0);
	p.delta = 1e-5; /* pure DP: accepted, nothing spent */
	sovmesh_privacy_cost c = {0};
	sovmesh_error err = {0};
	assert_int_equal(ops_of(mh)->cost(mh->instance, &p, &c, &err), 0);
	assert_int_equal(c.size, sizeof(c));
	assert_true(c.epsilon == 0.5);
	assert_true(c.delta == 0);
	assert_int_equal(c.family, SOVMESH_NOISE_LAPLACE);
	assert_true(c.sensitivity == 6.0); /* replace-one: 2C */
	assert_true(c.noise_multiplier == 2.0);
	assert_int_equal(mh->random_bytes_served, 0);
	mini_host_close(mh);

	static const mini_setting add_remove[] = {{"sensitivity_factor", "1"}, {NULL, NULL}};
	mh = open_plugin(add_remove);
	assert_int_equal(ops_of(mh)->cost(mh->instance, &p, &c, &err), 0);
	assert_true(c.sensitivity == 3.0);
	assert_true(c.noise_multiplier == 2.0);
	mini_host_close(mh);
}

static void test_bad_params(void **state)
{
	(void)state;
	mini_host *mh = open_plugin(NULL);
	struct {
		double eps, delta, clip;
		const char *frag;
	} cases[] = {
	    {0, 0, 1, "epsilon 0 must be"},     {-1, 0, 1, "epsilon -1 must be"},
	    {NAN, 0, 1, "epsilon nan must be"}, {INFINITY, 0, 1, "epsilon inf must be"},
	    {1, 0, 0, "clip 0 must be"},        {1, 0, -2, "clip -2 must be"},
	    {1, 0, NAN, "clip nan must be"},    {1, 0, INFINITY, "clip inf must be"},
	    {1, -1, 1, "delta -1 must be"},     {1, NAN, 1, "delta nan must be"},
	};
	sovmesh_tensor_set *s = make2(mh, SOVMESH_DTYPE_F64, 3, 4);
	set(s, 2, 0.25);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		sovmesh_noise_params p = params(cases[i].eps, cases[i].clip);
		p.delta = cases[i].delta;
		sovmesh_privacy_cost c = {0};
		sovmesh_error err = {0};
		assert_int_equal(ops_of(mh)->cost(mh->instance, &p, &c, &err), -EINVAL);
		expect_msg(&err, cases[i].frag);
		memset(&err, 0, sizeof(err));
		assert_int_equal(ops_of(mh)->perturb(mh->instance, s, &p, &c, &err), -EINVAL);
		expect_msg(&err, cases[i].frag);
		assert_true(get(s, 2) == 0.25 && l1(s) == 0.25); /* untouched */
	}
	sovmesh_noise_params p = params(1, 1);
	p.size = 0;
	sovmesh_privacy_cost c;
	sovmesh_error err = {0};
	assert_int_equal(ops_of(mh)->cost(mh->instance, &p, &c, &err), -EINVAL);
	expect_msg(&err, "size 0 is too small");
	/* So small an epsilon that the noise leaves the sampler's range. */
	assert_int_equal(perturb(mh, s, 1e-300, 1, &c, &err), -EINVAL);
	expect_msg(&err, "epsilon 1e-300 is too small for 7 values");
	assert_int_equal(mh->random_bytes_served, 0);
	free_set(mh, s);
	mini_host_close(mh);
}

static void test_bad_setting(void **state)
{
	(void)state;
	static const mini_setting zero[] = {{"sensitivity_factor", "0"}, {NULL, NULL}};
	mini_host *mh = NULL;
	sovmesh_error err = {0};
	assert_int_equal(mini_host_open("dp-laplace", zero, &mh, &err), -EINVAL);
	expect_msg(&err, "sensitivity_factor 0 must be in (0, 1000]");
}

static void test_bad_set(void **state)
{
	(void)state;
	mini_host *mh = open_plugin(NULL);
	sovmesh_privacy_cost c;
	sovmesh_error err;

	static const char *const nm[1] = {"h"};
	static const uint32_t nd[1] = {1};
	static const uint64_t sh[1][SOVMESH_TENSOR_MAX_DIMS] = {{4}};
	sovmesh_tensor_set *h = mini_host_make_set(mh, 1, nm, SOVMESH_DTYPE_F16, nd, sh);
	assert_int_equal(perturb(mh, h, 1, 1, &c, &err), -ENOTSUP);
	expect_msg(&err, "tensor 'h' has dtype F16");
	free_set(mh, h);

	sovmesh_tensor_set *s = make2(mh, SOVMESH_DTYPE_F32, 5, 6);
	for (uint64_t i = 0; i < 11; i++)
		set(s, i, 0.01 * (double)i);
	set(s, 8, NAN);
	assert_int_equal(perturb(mh, s, 1, 1, &c, &err), -EINVAL);
	expect_msg(&err, "tensor 'b.lora_B' element 3 is NaN");
	set(s, 8, -INFINITY);
	assert_int_equal(perturb(mh, s, 1, 1, &c, &err), -EINVAL);
	expect_msg(&err, "tensor 'b.lora_B' element 3 is -Inf");
	for (uint64_t i = 0; i < 11; i++)
		if (i != 8)
			assert_true(get(s, i) == (double)(float)(0.01 * (double)i));
	assert_int_equal(mh->random_bytes_served, 0);
	free_set(mh, s);
	mini_host_close(mh);
}

/* With epsilon so large the noise is ~1e-12 of C, the L1 clip shows. */
static void test_clip_exact(void **state)
{
	(void)state;
	mini_host *mh = open_plugin(NULL);
	sovmesh_tensor_set *s = make2(mh, SOVMESH_DTYPE_F64, 100, 37);
	sovmesh_tensor_set *orig = make2(mh, SOVMESH_DTYPE_F64, 100, 37);
	uint64_t n = numel(s);
	for (uint64_t i = 0; i < n; i++) {
		double v = next_signed() * 3.0;
		set(s, i, v);
		set(orig, i, v);
	}
	double norm = l1(orig), clip = norm / 7.3;
	sovmesh_privacy_cost c;
	sovmesh_error err;
	assert_int_equal(perturb(mh, s, 1e13, clip, &c, &err), 0);
	assert_true(fabs(l1(s) / clip - 1) < 1e-9);
	for (uint64_t i = 0; i < n; i++) /* direction kept */
		assert_true(fabs(get(s, i) - get(orig, i) * clip / norm) < 1e-9 * clip / (double)n);

	/* Under the bound: unchanged but for the tiny noise. */
	for (uint64_t i = 0; i < n; i++)
		set(s, i, get(orig, i));
	assert_int_equal(perturb(mh, s, 1e13, 2 * norm, &c, &err), 0);
	assert_true(fabs(l1(s) / norm - 1) < 1e-9);
	int moved = 0;
	for (uint64_t i = 0; i < n; i++) {
		assert_true(fabs(get(s, i) - get(orig, i)) < 1e-9 * norm / (double)n);
		moved += get(s, i) != get(orig, i);
	}
	assert_true(moved > 0); /* noise was still added */

	/* F32 tensors are clipped the same way (to float precision). */
	sovmesh_tensor_set *f = make2(mh, SOVMESH_DTYPE_F32, 100, 37);
	for (uint64_t i = 0; i < n; i++)
		set(f, i, get(orig, i));
	assert_int_equal(perturb(mh, f, 1e13, clip, &c, &err), 0);
	assert_true(fabs(l1(f) / clip - 1) < 1e-6);
	free_set(mh, f);
	free_set(mh, s);
	free_set(mh, orig);
	mini_host_close(mh);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double laplace_cdf(double x, double b)
{
	return x < 0 ? 0.5 * exp(x / b) : 1 - 0.5 * exp(-x / b);
}

/* Kolmogorov-Smirnov statistic of sorted v[0..n-1] against Laplace(0, b). */
static double ks_stat(const double *v, size_t n, double b)
{
	double d = 0;
	for (size_t i = 0; i < n; i++) {
		double f = laplace_cdf(v[i], b);
		double lo = f - (double)i / (double)n, hi = (double)(i + 1) / (double)n - f;
		d = fmax(d, fmax(lo, hi));
	}
	return d;
}

/*
 * 10^6 draws of the noise (a zero set) against continuous Laplace(Delta/
 * epsilon).  A fixed seed keeps the test deterministic; the bound is the
 * alpha = 0.01 critical value.  The same test must reject a scale 5% off,
 * so it can fail.
 */
static void test_noise_distribution(void **state)
{
	(void)state;
	mini_host *mh = open_plugin(NULL);
	assert_int_equal(mini_host_seed(mh, 1), 0);
	const double eps = 0.5, clip = 1.5, b = 2 * clip / eps; /* b = 6 */
	sovmesh_tensor_set *s = make2(mh, SOVMESH_DTYPE_F64, 500000, 500000);
	size_t n = (size_t)numel(s);
	sovmesh_privacy_cost c;
	sovmesh_error err;
	assert_int_equal(perturb(mh, s, eps, clip, &c, &err), 0);
	assert_true(c.epsilon == eps && c.delta == 0 && c.sensitivity == 2 * clip);
	assert_true(c.noise_multiplier == 1 / eps);
	assert_int_equal(c.family, SOVMESH_NOISE_LAPLACE);
	assert_true(mh->random_bytes_served > 0);
	if (!strstr(mh->last_log, "grid 2^"))
		fail_msg("no grid in the debug log: '%s'", mh->last_log);

	double *v = malloc(n * sizeof(double));
	assert_non_null(v);
	double sum = 0, sq = 0;
	for (size_t i = 0; i < n; i++) {
		v[i] = get(s, i);
		sum += v[i];
		sq += v[i] * v[i];
	}
	double mean = sum / (double)n, var = sq / (double)n - mean * mean;
	/* sd of the mean is sqrt(2) b / sqrt(n); allow 5 of them. */
	assert_true(fabs(mean) < 5 * sqrt(2.0) * b / sqrt((double)n));
	assert_true(fabs(var / (2 * b * b) - 1) < 0.01);

	qsort(v, n, sizeof(double), cmp_double);
	size_t ties = 0;
	for (size_t i = 1; i < n; i++)
		ties += v[i] == v[i - 1];
	assert_true(ties < n / 1000); /* the grid is far finer than the noise */
	double crit = 1.63 / sqrt((double)n);
	double d_ok = ks_stat(v, n, b);
	double d_off = ks_stat(v, n, 1.05 * b), d_double = ks_stat(v, n, 2 * b);
	if (!(d_ok < crit))
		fail_msg("KS D = %g against Laplace(%g), critical %g", d_ok, b, crit);
	assert_true(d_off > crit);
	assert_true(d_double > 0.05);
	free(v);
	free_set(mh, s);
	mini_host_close(mh);
}

/* F32 tensors get the same noise, rounded to float; the input's mean
 * survives (noise is added, not substituted). */
static void test_noise_f32_mean(void **state)
{
	(void)state;
	mini_host *mh = open_plugin(NULL);
	assert_int_equal(mini_host_seed(mh, 2), 0);
	const double eps = 2.0, clip = 1.0, b = 2 * clip / eps;
	sovmesh_tensor_set *s = make2(mh, SOVMESH_DTYPE_F32, 60000, 40000);
	uint64_t n = numel(s);
	const double x = 0.5 / (double)n; /* L1 norm 0.5 < clip */
	for (uint64_t i = 0; i < n; i++)
		set(s, i, x);
	sovmesh_privacy_cost c;
	sovmesh_error err;
	assert_int_equal(perturb(mh, s, eps, clip, &c, &err), 0);
	double sum = 0, sq = 0;
	for (uint64_t i = 0; i < n; i++) {
		double e = get(s, i) - x;
		sum += e;
		sq += e * e;
	}
	double mean = sum / (double)n, var = sq / (double)n;
	assert_true(fabs(mean) < 5 * sqrt(2.0) * b / sqrt((double)n));
	assert_true(fabs(var / (2 * b * b) - 1) < 0.05);
	free_set(mh, s);
	mini_host_close(mh);
}

/*
 * The sampler is exact, not only for large t: with epsilon so large that
 * t is 1 or 3, the grid indices must follow the discrete Laplace pmf
 * P(z) = (1-q)/(1+q) q^|z|, q = e^(-1/t) (chi-square over z = -5..5 plus
 * the two tails, 12 degrees of freedom, 0.1% critical value 32.9).  This
 * is what catches a doubled zero or a wrong Bernoulli(exp(-gamma)).
 */
static void check_small_t(double eps, unsigned long long want_t)
{
	mini_host *mh = open_plugin(NULL);
	assert_int_equal(mini_host_seed(mh, 3), 0);
	sovmesh_tensor_set *s = make2(mh, SOVMESH_DTYPE_F64, 50000, 50000);
	uint64_t n = numel(s);
	sovmesh_privacy_cost c;
	sovmesh_error err;
	assert_int_equal(perturb(mh, s, eps, 1.0, &c, &err), 0);
	int k = 0;
	unsigned long long t = 0;
	char logline[sizeof(mh->last_log)];
	snprintf(logline, sizeof(logline), "%s", mh->last_log);
	const char *g = strstr(logline, "grid 2^");
	assert_non_null(g);
	assert_int_equal(sscanf(g, "grid 2^%d, discrete Laplace t = %llu", &k, &t), 2);
	assert_int_equal(t, want_t);

	enum { ZMAX = 5, BINS = 2 * ZMAX + 3 };
	double count[BINS] = {0};
	for (uint64_t i = 0; i < n; i++) {
		double z = ldexp(get(s, i), -k);
		assert_true(z == floor(z)); /* on the grid */
		int bin = z < -ZMAX ? 0 : z > ZMAX ? BINS - 1 : (int)z + ZMAX + 1;
		count[bin]++;
	}
	const double q = exp(-1.0 / (double)t), norm = (1 - q) / (1 + q);
	double chi2 = 0;
	for (int b = 0; b < BINS; b++) {
		double p = b == 0 || b == BINS - 1 ? norm * pow(q, ZMAX + 1) / (1 - q)
		                                   : norm * pow(q, fabs((double)(b - ZMAX - 1)));
		double e = p * (double)n;
		chi2 += (count[b] - e) * (count[b] - e) / e;
	}
	if (!(chi2 < 32.9))
		fail_msg("chi-square %g against discrete Laplace(%llu)", chi2, t);
	free_set(mh, s);
	mini_host_close(mh);
}

static void test_sampler_exact_small_t(void **state)
{
	(void)state;
	/* clip 1: the grid is 2^-51 (clip/g <= 2^52), so Delta/g = 2^52. */
	check_small_t(1e17, 1);
	check_small_t(0x1p52 / 2.5, 3);
}

static void fill_seq(sovmesh_tensor_set *s)
{
	for (uint64_t i = 0; i < numel(s); i++)
		set(s, i, 0.001 * (double)(i % 17) - 0.008);
}

/* Noise comes only from the host's random_bytes: a seeded host gives the
 * same output twice, another seed or the real CSPRNG gives another. */
static void test_randomness_from_host(void **state)
{
	(void)state;
	mini_host *mh = open_plugin(NULL);
	sovmesh_tensor_set *a = make2(mh, SOVMESH_DTYPE_F64, 300, 200);
	sovmesh_tensor_set *b = make2(mh, SOVMESH_DTYPE_F64, 300, 200);
	sovmesh_privacy_cost c;
	sovmesh_error err;
	size_t bytes0 = a->tensors[0].nbytes, bytes1 = a->tensors[1].nbytes;

	fill_seq(a);
	fill_seq(b);
	assert_int_equal(mini_host_seed(mh, 7), 0);
	assert_int_equal(perturb(mh, a, 1, 1, &c, &err), 0);
	assert_int_equal(mini_host_seed(mh, 7), 0);
	assert_int_equal(perturb(mh, b, 1, 1, &c, &err), 0);
	assert_memory_equal(a->tensors[0].data, b->tensors[0].data, bytes0);
	assert_memory_equal(a->tensors[1].data, b->tensors[1].data, bytes1);

	fill_seq(b);
	assert_int_equal(mini_host_seed(mh, 8), 0);
	assert_int_equal(perturb(mh, b, 1, 1, &c, &err), 0);
	assert_memory_not_equal(a->tensors[0].data, b->tensors[0].data, bytes0);
	mini_host_close(mh);

	mini_host *secure = open_plugin(NULL); /* gnutls_rnd */
	fill_seq(a);
	fill_seq(b);
	assert_int_equal(perturb(secure, a, 1, 1, &c, &err), 0);
	assert_int_equal(perturb(secure, b, 1, 1, &c, &err), 0);
	assert_memory_not_equal(a->tensors[0].data, b->tensors[0].data, bytes0);
	assert_true(secure->random_bytes_served > 0);

	secure->random_fail = 1;
	assert_int_equal(perturb(secure, a, 1, 1, &c, &err), -EIO);
	expect_msg(&err, "random_bytes failed");
	free_set(secure, a);
	free_set(secure, b);
	mini_host_close(secure);
}

static void test_empty_set(void **state)
{
	(void)state;
	mini_host *mh = open_plugin(NULL);
	sovmesh_tensor_set *s = make2(mh, SOVMESH_DTYPE_F64, 0, 0);
	sovmesh_privacy_cost c;
	sovmesh_error err;
	assert_int_equal(perturb(mh, s, 1, 1, &c, &err), 0);
	assert_true(c.epsilon == 1 && c.sensitivity == 2);
	free_set(mh, s);
	mini_host_close(mh);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_descriptor),
	    cmocka_unit_test(test_cost),
	    cmocka_unit_test(test_bad_params),
	    cmocka_unit_test(test_bad_setting),
	    cmocka_unit_test(test_bad_set),
	    cmocka_unit_test(test_clip_exact),
	    cmocka_unit_test(test_noise_distribution),
	    cmocka_unit_test(test_noise_f32_mean),
	    cmocka_unit_test(test_sampler_exact_small_t),
	    cmocka_unit_test(test_randomness_from_host),
	    cmocka_unit_test(test_empty_set),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

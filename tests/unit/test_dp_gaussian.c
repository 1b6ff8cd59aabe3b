/*
 * dp-gaussian (plugins/dp-gaussian/): the plugin loaded through mini_host,
 * and its exact discrete Gaussian sampler (dgauss.c, compiled in) checked
 * against the exact pmf.
 */
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

#include "dgauss.h"
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
	if (mini_host_open("dp-gaussian", settings, &mh, &err) < 0)
		fail_msg("cannot load dp-gaussian: %s", err.message);
	return mh;
}

/* The plugin with noise_multiplier = nm (0: calibrate). */
static mini_host *open_with_multiplier(double nm)
{
	static char text[64];
	static mini_setting s[2] = {{"noise_multiplier", text}, {NULL, NULL}};
	snprintf(text, sizeof(text), "%.17g", nm);
	return open_plugin(s);
}

static const sovmesh_noise_ops *ops_of(mini_host *mh)
{
	return mh->desc->ops;
}

static sovmesh_noise_params params(double eps, double delta, double clip)
{
	sovmesh_noise_params p = {.size = sizeof(p), .epsilon = eps, .delta = delta, .clip = clip};
	return p;
}

static sovmesh_privacy_cost cost_of(mini_host *mh, double eps, double delta, double clip)
{
	sovmesh_noise_params p = params(eps, delta, clip);
	sovmesh_privacy_cost c = {0};
	sovmesh_error err = {0};
	if (ops_of(mh)->cost(mh->instance, &p, &c, &err) != 0)
		fail_msg("cost(%g, %g, %g): %s", eps, delta, clip, err.message);
	return c;
}

/* Two tensors of n1 and n2 elements, zeroed. */
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

static double l2(const sovmesh_tensor_set *s)
{
	long double sum = 0;
	for (uint64_t i = 0; i < numel(s); i++)
		sum += (long double)get(s, i) * get(s, i);
	return (double)sqrtl(sum);
}

static double l1(const sovmesh_tensor_set *s)
{
	double sum = 0;
	for (uint64_t i = 0; i < numel(s); i++)
		sum += fabs(get(s, i));
	return sum;
}

static int perturb(mini_host *mh, sovmesh_tensor_set *s, double eps, double delta, double clip,
                   sovmesh_privacy_cost *cost, sovmesh_error *err)
{
	sovmesh_noise_params p = params(eps, delta, clip);
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

/* ---- an independent analytic Gaussian mechanism (Balle & Wang 2018) ---- */

static double ref_delta(double eps, double nm)
{
	double mu = 1 / nm;
	return 0.5 * erfc(-(mu / 2 - eps / mu) / sqrt(2.0)) -
	       exp(eps) * 0.5 * erfc((mu / 2 + eps / mu) / sqrt(2.0));
}

/* Plain bisection on sigma (Delta = 1). */
static double ref_sigma(double eps, double delta)
{
	double lo = 1e-4, hi = 1e7;
	for (int i = 0; i < 300; i++) {
		double mid = sqrt(lo * hi);
		if (ref_delta(eps, mid) > delta)
			lo = mid;
		else
			hi = mid;
	}
	return hi;
}

/* ---- tests ---- */

static void test_descriptor(void **state)
{
	(void)state;
	mini_host *mh = open_plugin(NULL);
	const sovmesh_plugin_descriptor *d = mh->desc;
	assert_string_equal(d->name, "gaussian");
	assert_int_equal(d->kind, SOVMESH_KIND_NOISE);
	assert_string_equal(d->settings[0].name, "sensitivity_factor");
	assert_int_equal(d->settings[0].type, SOVMESH_SETTING_DOUBLE);
	assert_true(strtod(d->settings[0].default_value, NULL) == 2.0);
	assert_string_equal(d->settings[1].name, "noise_multiplier");
	assert_int_equal(d->settings[1].type, SOVMESH_SETTING_DOUBLE);
	assert_true(strtod(d->settings[1].default_value, NULL) == 0.0);
	assert_null(d->settings[2].name);
	mini_host_close(mh);
}

/*
 * Calibration against the analytic Gaussian mechanism computed with
 * mpmath at 50 digits (sigma for Delta = 1), then against the test's own
 * bisection over a grid of (epsilon, delta).  The plugin's sigma is never
 * below the exact one (its margins only add noise) and at most 1e-7 above.
 */
static void test_calibration_reference(void **state)
{
	(void)state;
	static const struct {
		double eps, delta, sigma;
	} pub[] = {
	    {1, 1e-5, 3.7306316348159418},
	    {0.5, 1e-10, 11.436239995092029},
	    {1.0986122886681098, 1e-7, 4.2832085905166148}, /* ln 3 */
	    {5, 1e-6, 0.98004900030920991},
	    {0.1, 1e-5, 30.749566131977448},
	    {20, 1e-9, 0.35981208665459255},
	    {1e-3, 1e-5, 1724.2590335838075},
	    {100, 1e-5, 0.094669907014746388},
	    {1, 1e-100, 21.009409042300621},
	    {1e-6, 0.5, 0.74130067693110439},
	    /* Large epsilon: e^eps Phi(b) with Phi(b) below the double range. */
	    {1e6, 1e-5, 0.00070924208686592788},
	    {1000, 1e-100, 0.035379541289937311},
	};
	mini_host *mh = open_plugin(NULL);
	for (size_t i = 0; i < sizeof(pub) / sizeof(pub[0]); i++) {
		/* clip 0.5, replace-one: Delta = 1. */
		sovmesh_privacy_cost c = cost_of(mh, pub[i].eps, pub[i].delta, 0.5);
		assert_true(c.sensitivity == 1.0);
		double rel = c.noise_multiplier / pub[i].sigma - 1;
		if (!(rel > -1e-12 && rel < 1e-7))
			fail_msg("eps %g delta %g: sigma %.17g, reference %.17g", pub[i].eps,
			         pub[i].delta, c.noise_multiplier, pub[i].sigma);
		assert_true(c.epsilon == pub[i].eps && c.delta == pub[i].delta);
	}
	/* The analytic sigma beats the classic sqrt(2 ln(1.25/delta))/eps. */
	sovmesh_privacy_cost c = cost_of(mh, 1, 1e-5, 0.5);
	assert_true(c.noise_multiplier < 3.731 && sqrt(2 * log(1.25e5)) > 4.84);

	static const double eps[] = {0.01, 0.1, 0.5, 1, 2, 5, 10, 50};
	static const double del[] = {1e-3, 1e-5, 1e-8, 1e-12};
	for (size_t i = 0; i < sizeof(eps) / sizeof(eps[0]); i++)
		for (size_t j = 0; j < sizeof(del) / sizeof(del[0]); j++) {
			double want = ref_sigma(eps[i], del[j]);
			c = cost_of(mh, eps[i], del[j], 0.5);
			double rel = c.noise_multiplier / want - 1;
			if (!(fabs(rel) < 1e-6))
				fail_msg("eps %g delta %g: sigma %.17g, bisection %.17g", eps[i],
				         del[j], c.noise_multiplier, want);
			assert_true(ref_delta(eps[i], c.noise_multiplier) <= del[j] * (1 + 1e-9));
		}
	/* Delta = sensitivity_factor x clip scales sigma, not the multiplier. */
	c = cost_of(mh, 1, 1e-5, 3);
	assert_true(c.sensitivity == 6 && fabs(c.noise_multiplier / 3.7306316348159418 - 1) < 1e-7);
	assert_int_equal(mh->random_bytes_served, 0);
	mini_host_close(mh);
}

/* noise_multiplier mode reports the epsilon that calibration would need
 * for that sigma, and calibrating that epsilon gives the sigma back. */
static void test_multiplier_round_trip(void **state)
{
	(void)state;
	/* Balle & Wang, Theorem 8 at sigma = Delta, eps = 1: 0.12693673750664395. */
	mini_host *mh = open_with_multiplier(1.0);
	sovmesh_privacy_cost c = cost_of(mh, 7, 0.12693673750664395, 1);
	assert_true(fabs(c.epsilon - 1) < 1e-6 && c.epsilon >= 1 - 1e-9);
	assert_true(c.noise_multiplier == 1.0 && c.delta == 0.12693673750664395);
	assert_int_equal(c.family, SOVMESH_NOISE_GAUSSIAN);
	mini_host_close(mh);

	mh = open_with_multiplier(3.7306316348159418);
	c = cost_of(mh, 0.1, 1e-5, 1); /* the epsilon parameter is not used */
	assert_true(fabs(c.epsilon - 1) < 1e-6 && c.epsilon >= 1 - 1e-9);
	mini_host_close(mh);

	mini_host *cal = open_plugin(NULL);
	static const double nms[] = {0.3, 1, 3.7306316348159418, 30, 1000};
	static const double del[] = {1e-5, 1e-9};
	for (size_t i = 0; i < sizeof(nms) / sizeof(nms[0]); i++)
		for (size_t j = 0; j < sizeof(del) / sizeof(del[0]); j++) {
			mh = open_with_multiplier(nms[i]);
			c = cost_of(mh, 1, del[j], 1);
			mini_host_close(mh);
			assert_true(c.epsilon > 0 && c.noise_multiplier == nms[i]);
			assert_true(ref_delta(c.epsilon, nms[i]) <= del[j] * (1 + 1e-9));
			sovmesh_privacy_cost back = cost_of(cal, c.epsilon, del[j], 1);
			double rel = back.noise_multiplier / nms[i] - 1;
			if (!(fabs(rel) < 1e-8))
				fail_msg("nm %g delta %g: epsilon %.17g calibrates to %.17g",
				         nms[i], del[j], c.epsilon, back.noise_multiplier);
		}
	mini_host_close(cal);

	/* So much noise that even epsilon ~ 0 meets delta: a tiny epsilon,
	 * never 0 or negative. */
	mh = open_with_multiplier(1e5);
	c = cost_of(mh, 1, 0.5, 1);
	assert_true(c.epsilon > 0 && c.epsilon < 1e-15);
	mini_host_close(mh);
}

static void test_cost(void **state)
{
	(void)state;
	mini_host *mh = open_plugin(NULL);
	sovmesh_privacy_cost c = cost_of(mh, 0.5, 1e-6, 3.0);
	assert_int_equal(c.size, sizeof(c));
	assert_int_equal(c.family, SOVMESH_NOISE_GAUSSIAN);
	assert_true(c.epsilon == 0.5 && c.delta == 1e-6);
	assert_true(c.sensitivity == 6.0); /* replace-one: 2C */
	assert_true(fabs(c.noise_multiplier - ref_sigma(0.5, 1e-6)) < 1e-6 * c.noise_multiplier);
	assert_int_equal(mh->random_bytes_served, 0);
	mini_host_close(mh);

	static const mini_setting add_remove[] = {{"sensitivity_factor", "1"}, {NULL, NULL}};
	mh = open_plugin(add_remove);
	sovmesh_privacy_cost c1 = cost_of(mh, 0.5, 1e-6, 3.0);
	assert_true(c1.sensitivity == 3.0 && c1.noise_multiplier == c.noise_multiplier);
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
	    {0, 1e-5, 1, "epsilon 0 must be"},
	    {-1, 1e-5, 1, "epsilon -1 must be"},
	    {NAN, 1e-5, 1, "epsilon nan must be"},
	    {INFINITY, 1e-5, 1, "epsilon inf must be"},
	    {1, 1e-5, 0, "clip 0 must be"},
	    {1, 1e-5, -2, "clip -2 must be"},
	    {1, 1e-5, NAN, "clip nan must be"},
	    {1, 1e-5, INFINITY, "clip inf must be"},
	    {1, 0, 1, "delta 0: the Gaussian mechanism needs 0 < delta < 1"},
	    {1, -1e-5, 1, "delta -1e-05: the Gaussian mechanism needs 0 < delta < 1"},
	    {1, 1, 1, "delta 1: the Gaussian mechanism needs 0 < delta < 1"},
	    {1, 2, 1, "delta 2: the Gaussian mechanism needs"},
	    {1, NAN, 1, "delta nan: the Gaussian mechanism needs"},
	    {1, 1e-200, 1, "delta 1e-200 is below 1e-100"},
	    /* (epsilon ~ 0, delta)-DP takes sigma ~ 0.4 Delta / delta: fine
	     * for delta 1e-5, beyond the range for 1e-10. */
	    {1e-12, 1e-10, 1, "epsilon 1e-12 with delta 1e-10 needs a noise multiplier above 2^30"},
	    {1e-19, 1e-5, 1, "epsilon 1e-19 is too small to calibrate"},
	};
	sovmesh_tensor_set *s = make2(mh, SOVMESH_DTYPE_F64, 3, 4);
	set(s, 2, 0.25);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		sovmesh_noise_params p = params(cases[i].eps, cases[i].delta, cases[i].clip);
		sovmesh_privacy_cost c = {0};
		sovmesh_error err = {0};
		assert_int_equal(ops_of(mh)->cost(mh->instance, &p, &c, &err), -EINVAL);
		expect_msg(&err, cases[i].frag);
		memset(&err, 0, sizeof(err));
		assert_int_equal(ops_of(mh)->perturb(mh->instance, s, &p, &c, &err), -EINVAL);
		expect_msg(&err, cases[i].frag);
		assert_true(get(s, 2) == 0.25 && l1(s) == 0.25); /* untouched */
	}
	sovmesh_noise_params p = params(1, 1e-5, 1);
	p.size = 0;
	sovmesh_privacy_cost c;
	sovmesh_error err = {0};
	assert_int_equal(ops_of(mh)->cost(mh->instance, &p, &c, &err), -EINVAL);
	expect_msg(&err, "size 0 is too small");
	assert_int_equal(ops_of(mh)->cost(mh->instance, NULL, &c, &err), -EINVAL);
	expect_msg(&err, "no noise parameters");
	assert_int_equal(mh->random_bytes_served, 0);
	free_set(mh, s);
	mini_host_close(mh);

	/* sigma ~ 0.4 Delta / delta = 8e8 Delta: fine for one value, but for
	 * 2^23 values the noise would leave the sampler's range
	 * (8e8 x sqrt(2^23) > 2^40 grid steps whatever the grid). */
	mh = open_plugin(NULL);
	s = make2(mh, SOVMESH_DTYPE_F32, 1u << 22, 1u << 22);
	assert_int_equal(perturb(mh, s, 1e-15, 5e-10, 1, &c, &err), -EINVAL);
	expect_msg(&err, "is too large for 8388608 values");
	assert_int_equal(mh->random_bytes_served, 0);
	free_set(mh, s);
	mini_host_close(mh);
}

static void test_bad_settings(void **state)
{
	(void)state;
	static const mini_setting zero[] = {{"sensitivity_factor", "0"}, {NULL, NULL}};
	static const mini_setting neg[] = {{"noise_multiplier", "-1"}, {NULL, NULL}};
	mini_host *mh = NULL;
	sovmesh_error err = {0};
	assert_int_equal(mini_host_open("dp-gaussian", zero, &mh, &err), -EINVAL);
	expect_msg(&err, "sensitivity_factor 0 must be in (0, 1000]");
	memset(&err, 0, sizeof(err));
	assert_int_equal(mini_host_open("dp-gaussian", neg, &mh, &err), -EINVAL);
	expect_msg(&err, "noise_multiplier");
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
	sovmesh_tensor_set *h = mini_host_make_set(mh, 1, nm, SOVMESH_DTYPE_I32, nd, sh);
	assert_non_null(h);
	assert_int_equal(perturb(mh, h, 1, 1e-5, 1, &c, &err), -ENOTSUP);
	expect_msg(&err, "tensor 'h' has dtype I32");
	free_set(mh, h);
	h = mini_host_make_set(mh, 1, nm, SOVMESH_DTYPE_F16, nd, sh);
	assert_int_equal(perturb(mh, h, 1, 1e-5, 1, &c, &err), -ENOTSUP);
	expect_msg(&err, "tensor 'h' has dtype F16");
	free_set(mh, h);

	sovmesh_tensor_set *s = make2(mh, SOVMESH_DTYPE_F32, 5, 6);
	for (uint64_t i = 0; i < 11; i++)
		set(s, i, 0.01 * (double)i);
	set(s, 8, NAN);
	assert_int_equal(perturb(mh, s, 1, 1e-5, 1, &c, &err), -EINVAL);
	expect_msg(&err, "tensor 'b.lora_B' element 3 is NaN");
	set(s, 8, INFINITY);
	assert_int_equal(perturb(mh, s, 1, 1e-5, 1, &c, &err), -EINVAL);
	expect_msg(&err, "tensor 'b.lora_B' element 3 is +Inf");
	for (uint64_t i = 0; i < 11; i++)
		if (i != 8)
			assert_true(get(s, i) == (double)(float)(0.01 * (double)i));
	assert_int_equal(mh->random_bytes_served, 0);
	free_set(mh, s);
	mini_host_close(mh);
}

/* What perturb logs about its grid and noise. */
typedef struct noise_log {
	int k;
	double steps;
	unsigned long long t, m, den;
} noise_log;

static noise_log parse_log(const mini_host *mh)
{
	noise_log nl = {0};
	/* A copy: gcc -O3 misreads a pointer into *mh as dangling. */
	char line[sizeof(mh->last_log)];
	snprintf(line, sizeof(line), "%s", mh->last_log);
	const char *g = strstr(line, "grid 2^");
	if (!g || sscanf(g,
	                 "grid 2^%d, sensitivity %lg steps, discrete Gaussian variance "
	                 "%llu*%llu/%llu",
	                 &nl.k, &nl.steps, &nl.t, &nl.m, &nl.den) != 5)
		fail_msg("unexpected debug log: '%s'", mh->last_log);
	return nl;
}

static long double variance_of(const noise_log *nl)
{
	return (long double)nl->t * (long double)nl->m / (long double)nl->den;
}

/*
 * The accounting of the last perturb of n values, from its debug log:
 * the snap's extra sensitivity is absorbed (D >= Delta/g + sqrt(n)) and
 * the variance pays for the multiplier and the discreteness
 * (v - 4 >= (nm D)^2).  Returns the realised sigma.
 */
static double check_accounting(const mini_host *mh, const sovmesh_privacy_cost *c, uint64_t n)
{
	noise_log nl = parse_log(mh);
	double g = ldexp(1, nl.k), nm = c->noise_multiplier;
	assert_true(nl.steps >= c->sensitivity / g + sqrt((double)n));
	long double var = variance_of(&nl);
	assert_true(var - 4 >= (long double)nm * nl.steps * nm * nl.steps);
	return g * sqrt((double)var);
}

/*
 * With epsilon 1e12 the noise is ~1e-6 of C: the L2 clip shows, the
 * direction is kept, and an input inside the bound is not scaled.
 */
static void test_clip_l2(void **state)
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
	double norm = l2(orig), clip = norm / 7.3;
	sovmesh_privacy_cost c;
	sovmesh_error err;
	assert_int_equal(perturb(mh, s, 1e12, 1e-5, clip, &c, &err), 0);
	double sigma = check_accounting(mh, &c, n);
	assert_true(sigma < 1e-5 * clip);
	assert_true(fabs(l2(s) / clip - 1) < 1e-4);
	for (uint64_t i = 0; i < n; i++) /* direction kept */
		assert_true(fabs(get(s, i) - get(orig, i) * clip / norm) < 6 * sigma);

	for (uint64_t i = 0; i < n; i++)
		set(s, i, get(orig, i));
	assert_int_equal(perturb(mh, s, 1e12, 1e-5, 2 * norm, &c, &err), 0);
	sigma = c.noise_multiplier * c.sensitivity;
	int moved = 0;
	for (uint64_t i = 0; i < n; i++) {
		assert_true(fabs(get(s, i) - get(orig, i)) < 6 * sigma);
		moved += get(s, i) != get(orig, i);
	}
	assert_true(moved > 0); /* noise was still added */

	/* epsilon 1e30: sigma = nm Delta is ~6 grid steps of 2^-52 C, and
	 * the 4 steps^2 for the discreteness are a real part of the noise. */
	for (uint64_t i = 0; i < n; i++)
		set(s, i, get(orig, i));
	assert_int_equal(perturb(mh, s, 1e30, 1e-5, clip, &c, &err), 0);
	sigma = check_accounting(mh, &c, n);
	assert_true(sigma < 1e-14 * clip && sigma > c.noise_multiplier * c.sensitivity);
	assert_true(fabs(l2(s) / clip - 1) < 1e-12);
	free_set(mh, s);
	free_set(mh, orig);
	mini_host_close(mh);
}

/*
 * The release is the clipped input plus zero-mean noise: averaged over
 * 3000 perturbations each value converges to the L2-clipped input (not
 * the raw input, not an L1 clip), within 4.5 standard errors.
 */
static void check_mean(mini_host *mh, const double *x, const double *want, size_t n)
{
	enum { RUNS = 3000 };
	double sum[32] = {0};
	assert_true(n <= 32);
	sovmesh_tensor_set *s = make2(mh, SOVMESH_DTYPE_F64, n / 2, n - n / 2);
	sovmesh_privacy_cost c;
	sovmesh_error err;
	double sigma = 0;
	for (int r = 0; r < RUNS; r++) {
		for (size_t i = 0; i < n; i++)
			set(s, i, x[i]);
		assert_int_equal(perturb(mh, s, 1, 1e-5, 1.0, &c, &err), 0);
		sigma = c.noise_multiplier * c.sensitivity;
		for (size_t i = 0; i < n; i++)
			sum[i] += get(s, i);
	}
	double se = sigma * (1 + 0x1p-18) / sqrt((double)RUNS);
	for (size_t i = 0; i < n; i++) {
		double z = (sum[i] / RUNS - want[i]) / se;
		if (!(fabs(z) < 4.5))
			fail_msg("value %zu: mean %g, clipped input %g (z = %g)", i, sum[i] / RUNS,
			         want[i], z);
	}
	free_set(mh, s);
}

static void test_mean_is_clipped_input(void **state)
{
	(void)state;
	mini_host *mh = open_with_multiplier(0.05); /* sigma = 0.05 x 2C = 0.1 */
	assert_int_equal(mini_host_seed(mh, 11), 0);
	enum { N = 20 };
	double x[N], want[N], l2sq = 0, l1n = 0;
	for (int i = 0; i < N; i++) {
		x[i] = next_signed();
		l2sq += x[i] * x[i];
		l1n += fabs(x[i]);
	}
	/* L2 norm 3: clipped to 1 by scaling with 1/3. */
	double f = 3 / sqrt(l2sq);
	for (int i = 0; i < N; i++) {
		x[i] *= f;
		want[i] = x[i] / 3;
	}
	check_mean(mh, x, want, N);
	/* L2 norm 0.8 < C but L1 norm > C: left as it is. */
	f = 0.8 / 3;
	for (int i = 0; i < N; i++) {
		x[i] *= f;
		want[i] = x[i];
	}
	assert_true(l1n / sqrt(l2sq) * 0.8 > 1);
	check_mean(mh, x, want, N);
	mini_host_close(mh);
}

static double normal_cdf(double x, double sigma)
{
	return 0.5 * erfc(-x / (sigma * sqrt(2.0)));
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double ks_stat(const double *v, size_t n, double sigma)
{
	double d = 0;
	for (size_t i = 0; i < n; i++) {
		double f = normal_cdf(v[i], sigma);
		double lo = f - (double)i / (double)n, hi = (double)(i + 1) / (double)n - f;
		d = fmax(d, fmax(lo, hi));
	}
	return d;
}

/*
 * 200 000 values of noise (a zero set) at epsilon 1, delta 1e-5, Delta 1:
 * the grid and the variance obey the accounting (snap sensitivity
 * absorbed, variance >= (nm D)^2 + 4), the values lie on the grid, and
 * they follow N(0, sigma^2) (moments and Kolmogorov-Smirnov at alpha 0.01;
 * the same test rejects a sigma 5% off).
 */
static void test_noise_distribution(void **state)
{
	(void)state;
	mini_host *mh = open_plugin(NULL);
	assert_int_equal(mini_host_seed(mh, 1), 0);
	sovmesh_tensor_set *s = make2(mh, SOVMESH_DTYPE_F64, 120000, 80000);
	size_t n = (size_t)numel(s);
	sovmesh_privacy_cost c, c0 = cost_of(mh, 1, 1e-5, 0.5);
	sovmesh_error err;
	assert_int_equal(perturb(mh, s, 1, 1e-5, 0.5, &c, &err), 0);
	/* perturb reports what cost() said */
	assert_true(c.size == c0.size && c.epsilon == c0.epsilon && c.delta == c0.delta);
	assert_true(c.family == c0.family && c.noise_multiplier == c0.noise_multiplier);
	assert_true(c.sensitivity == c0.sensitivity);
	assert_true(mh->random_bytes_served > 0);

	noise_log nl = parse_log(mh);
	double g = ldexp(1, nl.k), nm = c.noise_multiplier, sens = c.sensitivity;
	assert_true(g * sqrt((double)n) <= 0x1p-20 * sens); /* snap's extra sensitivity */
	assert_true(g <= 0x1p-20 * nm * sens);
	double sigma = check_accounting(mh, &c, n);
	assert_true(sigma / (nm * sens) - 1 >= 0 && sigma / (nm * sens) - 1 < 0x1p-18);

	double *v = malloc(n * sizeof(double));
	assert_non_null(v);
	double sum = 0, sq = 0;
	for (size_t i = 0; i < n; i++) {
		v[i] = get(s, i);
		assert_true(ldexp(v[i], -nl.k) == floor(ldexp(v[i], -nl.k))); /* on the grid */
		sum += v[i];
		sq += v[i] * v[i];
	}
	double mean = sum / (double)n, var_hat = sq / (double)n;
	assert_true(fabs(mean) < 4 * sigma / sqrt((double)n));
	assert_true(fabs(var_hat / (sigma * sigma) - 1) < 4 * sqrt(2.0 / (double)n));
	qsort(v, n, sizeof(double), cmp_double);
	double crit = 1.63 / sqrt((double)n);
	double d_ok = ks_stat(v, n, sigma);
	if (!(d_ok < crit))
		fail_msg("KS D = %g against N(0, %g^2), critical %g", d_ok, sigma, crit);
	assert_true(ks_stat(v, n, 1.05 * sigma) > crit);
	free(v);
	free_set(mh, s);
	mini_host_close(mh);
}

/* noise_multiplier mode: sigma is nm x Delta (plus the ~2^-20 for the
 * snap), in F32 too. */
static void test_multiplier_sigma(void **state)
{
	(void)state;
	static const mini_setting st[] = {
	    {"noise_multiplier", "0.8"}, {"sensitivity_factor", "1"}, {NULL, NULL}};
	mini_host *mh = open_plugin(st);
	assert_int_equal(mini_host_seed(mh, 5), 0);
	sovmesh_tensor_set *s = make2(mh, SOVMESH_DTYPE_F32, 30000, 20000);
	size_t n = (size_t)numel(s);
	sovmesh_privacy_cost c;
	sovmesh_error err;
	assert_int_equal(perturb(mh, s, 1, 1e-6, 2.0, &c, &err), 0);
	assert_true(c.noise_multiplier == 0.8 && c.sensitivity == 2.0);
	assert_true(c.epsilon > 0);
	assert_true(ref_delta(c.epsilon, 0.8) <= 1e-6 * (1 + 1e-9));
	noise_log nl = parse_log(mh);
	double sigma = ldexp(sqrt((double)variance_of(&nl)), nl.k);
	assert_true(sigma / 1.6 - 1 >= 0 && sigma / 1.6 - 1 < 0x1p-18);
	double sq = 0;
	for (size_t i = 0; i < n; i++)
		sq += get(s, i) * get(s, i);
	assert_true(fabs(sq / (double)n / (sigma * sigma) - 1) < 4 * sqrt(2.0 / (double)n));
	free_set(mh, s);
	mini_host_close(mh);
}

static void fill_seq(sovmesh_tensor_set *s)
{
	for (uint64_t i = 0; i < numel(s); i++)
		set(s, i, 0.001 * (double)(i % 17) - 0.008);
}

/* Noise comes only from the host's random_bytes. */
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
	assert_int_equal(perturb(mh, a, 1, 1e-5, 1, &c, &err), 0);
	assert_int_equal(mini_host_seed(mh, 7), 0);
	assert_int_equal(perturb(mh, b, 1, 1e-5, 1, &c, &err), 0);
	assert_memory_equal(a->tensors[0].data, b->tensors[0].data, bytes0);
	assert_memory_equal(a->tensors[1].data, b->tensors[1].data, bytes1);

	fill_seq(b);
	assert_int_equal(mini_host_seed(mh, 8), 0);
	assert_int_equal(perturb(mh, b, 1, 1e-5, 1, &c, &err), 0);
	assert_memory_not_equal(a->tensors[0].data, b->tensors[0].data, bytes0);
	mini_host_close(mh);

	mini_host *secure = open_plugin(NULL); /* gnutls_rnd */
	fill_seq(a);
	fill_seq(b);
	assert_int_equal(perturb(secure, a, 1, 1e-5, 1, &c, &err), 0);
	assert_int_equal(perturb(secure, b, 1, 1e-5, 1, &c, &err), 0);
	assert_memory_not_equal(a->tensors[0].data, b->tensors[0].data, bytes0);
	assert_true(secure->random_bytes_served > 0);

	secure->random_fail = 1;
	assert_int_equal(perturb(secure, a, 1, 1e-5, 1, &c, &err), -EIO);
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
	assert_int_equal(perturb(mh, s, 1, 1e-5, 1, &c, &err), 0);
	assert_true(c.epsilon == 1 && c.delta == 1e-5 && c.sensitivity == 2);
	assert_int_equal(mh->random_bytes_served, 0);
	free_set(mh, s);
	mini_host_close(mh);
}

/* ---- the sampler itself (dgauss.c) ---- */

/* Exact moments of N_Z(0, v) by summing the pmf (|y| <= 40 sigma). */
static void exact_moments(long double v, long double *p0, long double *m2, long double *m4)
{
	long double s = sqrtl(v), z = 0, a2 = 0, a4 = 0;
	long long lim = (long long)(40 * s) + 10;
	for (long long y = -lim; y <= lim; y++) {
		long double w = expl(-(long double)y * y / (2 * v));
		z += w;
		a2 += w * y * y;
		a4 += w * y * y * y * y;
	}
	*p0 = 1 / z;
	*m2 = a2 / z;
	*m4 = a4 / z;
}

/* Wilson-Hilferty: the chi-square quantile at 0.1% upper tail. */
static double chi2_crit(int df)
{
	double h = 2.0 / (9 * df), z = 3.09;
	return df * pow(1 - h + z * sqrt(h), 3);
}

static void check_sampler(mini_host *mh, double var, uint64_t seed)
{
	enum { N = 200000 };
	dg_params p;
	assert_int_equal(dg_params_for(var, &p), 0);
	long double vr = (long double)p.t * p.m / p.den;
	/* Rounded up, and only just. */
	assert_true(vr >= var && vr <= var * (1 + 0x1p-30));

	static dg_rng r;
	assert_int_equal(mini_host_seed(mh, seed), 0);
	dg_rng_init(&r, mh->host, mh->api.random_bytes);
	int64_t *y = malloc(N * sizeof(*y));
	assert_non_null(y);
	for (int i = 0; i < N; i++) {
		dg_i128 v = dg_sample(&r, &p);
		assert_true(v > -((dg_i128)1 << 62) && v < ((dg_i128)1 << 62));
		y[i] = (int64_t)v;
	}
	assert_int_equal(r.err, 0);

	long double p0, m2, m4, sigma = sqrtl(vr);
	if (sigma <= 1000) {
		exact_moments(vr, &p0, &m2, &m4);
	} else { /* the Gaussian's, up to exp(-2 pi^2 v) */
		p0 = 0;
		m2 = vr;
		m4 = 3 * vr * vr;
	}
	long double sum = 0, sq = 0;
	long long zeros = 0, up = 0, down = 0, inside = 0;
	long long c = (long long)ceill(sigma);
	for (int i = 0; i < N; i++) {
		sum += y[i];
		sq += (long double)y[i] * y[i];
		zeros += y[i] == 0;
		up += y[i] >= c;
		down += y[i] <= -c;
		inside += llabs(y[i]) <= (long long)floorl(sigma);
	}
	double mean = (double)(sum / N), z_mean = mean / sqrt((double)(m2 / N));
	double z_var = (double)((sq / N - m2) / sqrtl((m4 - m2 * m2) / N));
	if (!(fabs(z_mean) < 4 && fabs(z_var) < 4))
		fail_msg("variance %g: mean %g (z %g), second moment %g vs %g (z %g)", var, mean,
		         z_mean, (double)(sq / N), (double)m2, z_var);
	assert_true(fabs((double)(up - down)) < 4 * sqrt((double)(up + down) + 1));
	if (p0 > 0) {
		double e0 = (double)p0 * N, sd = sqrt(e0 * (1 - (double)p0));
		if (!(fabs((double)zeros - e0) < 4 * sd + 1))
			fail_msg("variance %g: %lld zeros, expected %g", var, zeros, e0);
	} else {
		/* P(|Y| <= sigma) of the Gaussian, 0.6827. */
		double e = erf((floor((double)sigma) + 0.5) / ((double)sigma * sqrt(2.0)));
		assert_true(fabs((double)inside / N - e) < 4 * sqrt(e * (1 - e) / N));
	}

	/* Small variances: chi-square against the exact pmf over the cells
	 * -kmax..kmax, the outer two holding the tails too, each with an
	 * expected count >= 20. */
	if (sigma <= 10) {
		long double z = 0;
		for (long long k = -1000; k <= 1000; k++)
			z += expl(-(long double)k * k / (2 * vr));
		long long kmax = 1;
		while (expl(-(long double)(kmax + 1) * (kmax + 1) / (2 * vr)) / z * N >= 20)
			kmax++;
		int cells = (int)(2 * kmax + 1);
		double *obs = calloc((size_t)cells, sizeof(double));
		double *exp_count = calloc((size_t)cells, sizeof(double));
		assert_non_null(obs);
		assert_non_null(exp_count);
		for (long long k = -1000; k <= 1000; k++) {
			long long b = k < -kmax ? -kmax : k > kmax ? kmax : k;
			exp_count[b + kmax] +=
			    (double)(expl(-(long double)k * k / (2 * vr)) / z) * N;
		}
		for (int i = 0; i < N; i++) {
			long long b = y[i] < -kmax ? -kmax : y[i] > kmax ? kmax : y[i];
			obs[b + kmax]++;
		}
		double chi2 = 0;
		for (int b = 0; b < cells; b++)
			chi2 += (obs[b] - exp_count[b]) * (obs[b] - exp_count[b]) / exp_count[b];
		if (!(chi2 < chi2_crit(cells - 1)))
			fail_msg("variance %g: chi-square %g over %d cells (critical %g)", var,
			         chi2, cells, chi2_crit(cells - 1));
		free(obs);
		free(exp_count);
	}
	free(y);
}

static void test_sampler(void **state)
{
	(void)state;
	mini_host *mh = open_plugin(NULL);
	check_sampler(mh, 0.25, 21);
	check_sampler(mh, 1, 22);
	check_sampler(mh, 3.7 * 3.7, 23);
	check_sampler(mh, 1000.0 * 1000.0, 24);
	check_sampler(mh, 0x1p40, 25);
	check_sampler(mh, 0x1p70, 26);
	mini_host_close(mh);
}

/* The rational form of the variance across the whole range. */
static void test_sampler_params(void **state)
{
	(void)state;
	dg_params p;
	for (double v = DG_VAR_MIN; v <= DG_VAR_MAX; v *= 3.3) {
		assert_int_equal(dg_params_for(v, &p), 0);
		long double vr = (long double)p.t * p.m / p.den;
		assert_true(vr >= v && vr <= v * (1 + 0x1p-30));
		assert_true(p.t == (uint64_t)floor(sqrt(v)) + 1);
		assert_true((long double)p.t * p.den <= 0x1p62L && p.m <= (UINT64_C(1) << 62));
		assert_true(2.0L * p.t * p.m * p.den <= 0x1p96L);
	}
	assert_int_equal(dg_params_for(DG_VAR_MAX, &p), 0);
	assert_int_equal(dg_params_for(DG_VAR_MAX * 2, &p), -ERANGE);
	assert_int_equal(dg_params_for(DG_VAR_MIN / 2, &p), -ERANGE);
	assert_int_equal(dg_params_for(NAN, &p), -ERANGE);
}

static dg_u128 u128_of(uint64_t hi, uint64_t lo)
{
	return (dg_u128)hi << 64 | lo;
}

/* The acceptance test's exact a^2 = qB + r, against values computed
 * with Python's big integers (the 256-bit path is the one for a >= 2^64,
 * which the sampler reaches only with a vanishing probability). */
static void test_square_divmod(void **state)
{
	(void)state;
	static const struct {
		uint64_t a[2], b[2], q1[2], q0[2], r[2];
	} cases[] = {
	    /* a = 2^100, B = 3 */
	    {{1ull << 36, 0},
	     {0, 3},
	     {0x55, 0x5555555555555555ull},
	     {0x5555555555555555ull, 0x5555555555555555ull},
	     {0, 1}},
	    /* a = 2^125 + 12345, B = 2^96 - 3 */
	    {{1ull << 61, 12345},
	     {0xffffffffull, 0xfffffffffffffffdull},
	     {0, 0x4000000},
	     {0, 0xc000c0e40000000ull},
	     {0, 0x2400242ac9156cb1ull}},
	    /* a = 2^64 + 1, B = 2^96 */
	    {{1, 1}, {1ull << 32, 0}, {0, 0}, {0, 0x100000000ull}, {2, 1}},
	    /* a = 0xffffffffffff, B = 1000003 (the fast path) */
	    {{0, 0xffffffffffffull}, {0, 1000003}, {0, 0}, {0, 0}, {0, 0}},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		dg_u128 q[2], r;
		dg_u128 a = u128_of(cases[i].a[0], cases[i].a[1]);
		dg_u128 B = u128_of(cases[i].b[0], cases[i].b[1]);
		dg_square_divmod(a, B, q, &r);
		if (i == 3) { /* checked by identity: a^2 fits */
			assert_true(q[1] == 0 && q[0] * B + r == a * a && r < B);
			continue;
		}
		if (q[1] != u128_of(cases[i].q1[0], cases[i].q1[1]) ||
		    q[0] != u128_of(cases[i].q0[0], cases[i].q0[1]) ||
		    r != u128_of(cases[i].r[0], cases[i].r[1]))
			fail_msg("case %zu: wrong quotient or remainder", i);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_descriptor),
	    cmocka_unit_test(test_calibration_reference),
	    cmocka_unit_test(test_multiplier_round_trip),
	    cmocka_unit_test(test_cost),
	    cmocka_unit_test(test_bad_params),
	    cmocka_unit_test(test_bad_settings),
	    cmocka_unit_test(test_bad_set),
	    cmocka_unit_test(test_clip_l2),
	    cmocka_unit_test(test_mean_is_clipped_input),
	    cmocka_unit_test(test_noise_distribution),
	    cmocka_unit_test(test_multiplier_sigma),
	    cmocka_unit_test(test_randomness_from_host),
	    cmocka_unit_test(test_empty_set),
	    cmocka_unit_test(test_sampler),
	    cmocka_unit_test(test_sampler_params),
	    cmocka_unit_test(test_square_divmod),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

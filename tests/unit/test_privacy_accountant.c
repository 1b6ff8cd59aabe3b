/*
 * privacy_accountant.c: the RDP curves against published values and an
 * independent quadrature, the composed ε against a brute-force reference
 * (the same conversion minimised over a dense grid of orders), the
 * basic-vs-RDP choice, monotonicity, and refusals of bad input.
 *
 * Published values used (cited where they are checked):
 *  [TFP]  TensorFlow Privacy, rdp_accountant_test.py,
 *         test_compute_rdp_no_sampling: compute_rdp(q=1, σ=10, steps=1,
 *         order=20) == 0.1.
 *  [DPA]  google/differential-privacy, python/dp_accounting/dp_accounting/
 *         rdp/rdp_privacy_accountant_test.py:
 *         - test_compute_rdp_gaussian: RDP at α = 3.14159, σ = 2.71828 is
 *           α/(2σ²);
 *         - test_compute_epsilon_delta_pure_dp: constant RDP 1.1 on orders
 *           2..32 at δ = 1e-5 gives ε = 1.32783806176 at order 32 (the
 *           improved conversion);
 *         - test_compute_epsilon_delta_gaussian: the plain Gaussian (q = 1)
 *           with noise multiplier 4.530877117 is exactly (1, 1e-6)-DP
 *           (orders 1.0..99.999 in steps of 0.001);
 *         - test_laplace: a huge order gives back basic composition ε·count.
 *  [Mir]  I. Mironov, "Rényi Differential Privacy", CSF 2017, Prop. 6
 *         (Laplace) and Prop. 7 (Gaussian, α/(2σ²)).
 *  [BS]   M. Bun, T. Steinke, "Concentrated Differential Privacy", TCC 2016,
 *         Lemma 3.5: ρ-zCDP gives (ρ + 2√(ρ log(1/δ)), δ)-DP.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "privacy_accountant.h"

/* |a - b| <= tol, with both values in the message (this cmocka has no
 * assert_double_equal). */
#define assert_near(a, b, tol) near_impl((a), (b), (tol), #a, __LINE__)
static void near_impl(double a, double b, double tol, const char *what, int line)
{
	if (!(fabs(a - b) <= tol))
		fail_msg("line %d: %s = %.17g, expected %.17g (tolerance %g)", line, what, a, b,
		         tol);
}

/* ---- the test's own reference ------------------------------------------ */

/* Mironov Prop. 6 written directly as a log-sum-exp (not the module's
 * log1p form), Δ = 1, b = z. */
static double ref_laplace_rdp(double z, double alpha)
{
	double e = 1 / z;
	double a = log(alpha / (2 * alpha - 1)) + (alpha - 1) * e;
	double b = log((alpha - 1) / (2 * alpha - 1)) - alpha * e;
	double m = fmax(a, b);
	return (m + log(exp(a - m) + exp(b - m))) / (alpha - 1);
}

/* The conversion, Canonne–Kamath–Steinke Prop. 12 / Balle et al. Thm 21. */
static double ref_conv(double alpha, double rdp, double delta)
{
	return rdp + log((alpha - 1) / alpha) - (log(delta) + log(alpha)) / (alpha - 1);
}

/* Brute force: min over α = 1.01, 1.011, ..., 1100 (a superset, to
 * rounding, of the module's grid) of ref_conv for k_l Laplace releases at
 * multiplier zl plus k_g Gaussian releases at zg. */
static double ref_epsilon(int k_l, double zl, int k_g, double zg, double delta)
{
	double best = INFINITY;
	for (long i = 10; i <= 1099000; i++) {
		double alpha = 1 + (double)i / 1000;
		double rdp = 0;
		if (k_l)
			rdp += k_l * ref_laplace_rdp(zl, alpha);
		if (k_g)
			rdp += k_g * alpha / (2 * zg * zg);
		best = fmin(best, ref_conv(alpha, rdp, delta));
	}
	return fmax(best, 0);
}

/* The same for Laplace releases at m different multipliers z[i], k[i]
 * of each. */
static double ref_epsilon_laplace_mix(const double *z, const int *k, size_t m, double delta)
{
	double best = INFINITY;
	for (long i = 10; i <= 1099000; i++) {
		double alpha = 1 + (double)i / 1000, rdp = 0;
		for (size_t j = 0; j < m; j++)
			rdp += k[j] * ref_laplace_rdp(z[j], alpha);
		best = fmin(best, ref_conv(alpha, rdp, delta));
	}
	return fmax(best, 0);
}

static accountant_release laplace(double eps)
{
	return (accountant_release){SOVMESH_NOISE_LAPLACE, 1 / eps, eps, 0};
}

static accountant_release gaussian(double z, double eps, double delta)
{
	return (accountant_release){SOVMESH_NOISE_GAUSSIAN, z, eps, delta};
}

static void compose_ok(accountant_kind k, const accountant_release *r, size_t n, double target,
                       double *eps, double *delta)
{
	sovmesh_error err = {0};
	int rc = accountant_compose(k, r, n, target, eps, delta, &err);
	if (rc != 0)
		fail_msg("compose failed: %s", err.message);
	assert_false(isnan(*eps));
	assert_false(isnan(*delta));
}

/* n copies of one release. */
static accountant_release *repeat(accountant_release r, size_t n)
{
	accountant_release *v = calloc(n ? n : 1, sizeof(*v));
	assert_non_null(v);
	for (size_t i = 0; i < n; i++)
		v[i] = r;
	return v;
}

/* ---- names ------------------------------------------------------------- */

static void test_parse_and_name(void **state)
{
	(void)state;
	accountant_kind k = (accountant_kind)99;
	assert_int_equal(accountant_parse("basic", &k), 0);
	assert_int_equal(k, ACCOUNTANT_BASIC);
	assert_int_equal(accountant_parse("rdp", &k), 0);
	assert_int_equal(k, ACCOUNTANT_RDP);
	const char *bad[] = {"", "RDP", "Basic", "rdp ", "renyi", "zcdp"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		k = (accountant_kind)99;
		assert_int_equal(accountant_parse(bad[i], &k), -EINVAL);
		assert_int_equal(k, 99); /* untouched */
	}
	assert_int_equal(accountant_parse(NULL, &k), -EINVAL);
	assert_string_equal(accountant_name(ACCOUNTANT_BASIC), "basic");
	assert_string_equal(accountant_name(ACCOUNTANT_RDP), "rdp");
	assert_string_equal(accountant_name((accountant_kind)7), "unknown");
}

/* ---- RDP curves -------------------------------------------------------- */

static void test_gaussian_rdp_published(void **state)
{
	(void)state;
	/* z = 1, one step: RDP at α = 2 is exactly 2/(2·1) = 1 [Mir Prop. 7]. */
	assert_true(accountant_rdp(SOVMESH_NOISE_GAUSSIAN, 1, 2) == 1.0);
	/* [TFP] q = 1, σ = 10, order 20 -> 0.1. */
	assert_near(accountant_rdp(SOVMESH_NOISE_GAUSSIAN, 10, 20), 0.1, 1e-15);
	/* [DPA] test_compute_rdp_gaussian. */
	double a = 3.14159, s = 2.71828;
	assert_near(accountant_rdp(SOVMESH_NOISE_GAUSSIAN, s, a), a / (2 * s * s), 1e-15);
	/* Linear in α: the zCDP view, ρ = 1/(2z²). */
	for (double alpha = 1.5; alpha < 1000; alpha *= 1.7)
		assert_near(accountant_rdp(SOVMESH_NOISE_GAUSSIAN, 3, alpha), alpha * (1.0 / 18),
		            1e-12 * alpha);
}

/* ∫ Lap(y; 0, z)^α · Lap(y; 1, z)^{1−α} dy by composite Simpson, split at
 * the kinks 0 and 1, tails to 80·z (the integrand decays as e^{−|y|/z}
 * there, so the cut-off leaves e^{−80}). */
static double simpson(double (*f)(double, double, double), double z, double alpha, double lo,
                      double hi, int n)
{
	double h = (hi - lo) / n, s = f(lo, z, alpha) + f(hi, z, alpha);
	for (int i = 1; i < n; i++)
		s += (i % 2 ? 4 : 2) * f(lo + i * h, z, alpha);
	return s * h / 3;
}

static double integrand(double y, double z, double alpha)
{
	double lp = -fabs(y) / z - log(2 * z);     /* log Lap(y; 0, z) */
	double lq = -fabs(y - 1) / z - log(2 * z); /* log Lap(y; 1, z) */
	return exp(alpha * lp + (1 - alpha) * lq);
}

static void test_laplace_rdp_quadrature(void **state)
{
	(void)state;
	const double zs[] = {0.5, 1, 2, 10, 100};
	const double alphas[] = {1.1, 1.5, 2, 5, 16, 32};
	for (size_t i = 0; i < sizeof(zs) / sizeof(zs[0]); i++) {
		for (size_t j = 0; j < sizeof(alphas) / sizeof(alphas[0]); j++) {
			double z = zs[i], a = alphas[j];
			double integral = simpson(integrand, z, a, -80 * z, 0, 40000) +
			                  simpson(integrand, z, a, 0, 1, 40000) +
			                  simpson(integrand, z, a, 1, 1 + 80 * z, 40000);
			double numeric = log(integral) / (a - 1);
			double got = accountant_rdp(SOVMESH_NOISE_LAPLACE, z, a);
			double tol = 1e-7 * numeric + 1e-13;
			if (fabs(got - numeric) > tol)
				fail_msg("Laplace z=%g α=%g: rdp %.15g, quadrature %.15g", z, a,
				         got, numeric);
			/* and the closed form written the other way */
			assert_near(got, ref_laplace_rdp(z, a), 1e-12 * got + 1e-15);
			/* Bounds: e-DP and Bun–Steinke αe²/2. */
			assert_true(got <= 1 / z);
			assert_true(got <= a / (2 * z * z) * (1 + 1e-15));
		}
	}
	/* [DPA] test_laplace: the order -> ∞ limit is the pure ε = 1/z. */
	assert_true(accountant_rdp(SOVMESH_NOISE_LAPLACE, 4, INFINITY) == 0.25);
	assert_near(accountant_rdp(SOVMESH_NOISE_LAPLACE, 4, 1e12), 0.25, 1e-9);
	/* Never above the two caps, however small e (rounding included). */
	for (double z = 10; z < 1e200; z *= 3.7)
		for (double a = 1.1; a < 2000; a *= 1.9) {
			double e = 1 / z, got = accountant_rdp(SOVMESH_NOISE_LAPLACE, z, a);
			if (!(got <= a * e * e / 2 && got <= e && got >= 0))
				fail_msg("z=%g α=%g: %.17g above αe²/2 = %.17g", z, a, got,
				         a * e * e / 2);
		}
	/* small e: ≈ αe²/2, not 0 and not negative despite the cancellation */
	double tiny = accountant_rdp(SOVMESH_NOISE_LAPLACE, 1e6, 2);
	assert_true(tiny > 0);
	assert_near(tiny, 1e-12, 1e-15);
}

static void test_rdp_special_values(void **state)
{
	(void)state;
	assert_true(isinf(accountant_rdp(SOVMESH_NOISE_NONE, 1, 2)));
	assert_true(isinf(accountant_rdp(SOVMESH_NOISE_OTHER, 1, 2)));
	assert_true(isinf(accountant_rdp((sovmesh_noise_family)42, 1, 2)));
	sovmesh_noise_family fam[] = {SOVMESH_NOISE_LAPLACE, SOVMESH_NOISE_GAUSSIAN};
	for (size_t f = 0; f < 2; f++) {
		assert_true(isinf(accountant_rdp(fam[f], 0, 2)));
		assert_true(accountant_rdp(fam[f], INFINITY, 2) == 0);
		assert_true(isnan(accountant_rdp(fam[f], 1, 1)));
		assert_true(isnan(accountant_rdp(fam[f], 1, 0.5)));
		assert_true(isnan(accountant_rdp(fam[f], 1, NAN)));
		assert_true(isnan(accountant_rdp(fam[f], -1, 2)));
		assert_true(isnan(accountant_rdp(fam[f], NAN, 2)));
		/* Huge and tiny multipliers: finite or +inf, never NaN. */
		const double zs[] = {1e-300, 5e-324, 1e-20, 1e20, 1e300, DBL_MAX};
		const double as[] = {1.0000001, 1.1, 2, 64, 1024, 1e300, INFINITY};
		for (size_t i = 0; i < sizeof(zs) / sizeof(zs[0]); i++)
			for (size_t j = 0; j < sizeof(as) / sizeof(as[0]); j++) {
				double r = accountant_rdp(fam[f], zs[i], as[j]);
				assert_false(isnan(r));
				assert_true(r >= 0);
			}
	}
}

/* ---- composition: published and reference values ----------------------- */

static void test_reference_conversion_pinned(void **state)
{
	(void)state;
	/* [DPA] test_compute_epsilon_delta_pure_dp: validates ref_conv itself. */
	double best = INFINITY;
	int best_order = 0;
	for (int a = 2; a <= 32; a++) {
		double e = ref_conv(a, 1.1, 1e-5);
		if (e < best) {
			best = e;
			best_order = a;
		}
	}
	assert_near(best, 1.32783806176, 1e-10);
	assert_int_equal(best_order, 32);
}

static void test_gaussian_published_one_release(void **state)
{
	(void)state;
	/* [DPA] test_compute_epsilon_delta_gaussian: z = 4.530877117 is exactly
	 * (1, 1e-6)-DP on a dense grid; ours is a subset of it (its optimum,
	 * α ≈ 25, is on our integer grid), so ε is 1 up to that grid. */
	accountant_release r = gaussian(4.530877117, 1, 1e-6);
	double eps, delta;
	compose_ok(ACCOUNTANT_RDP, &r, 1, 1e-6, &eps, &delta);
	print_message("Gaussian z=4.530877117, 1 step, delta=1e-6: eps = %.9f (published 1)\n",
	              eps);
	assert_true(eps >= 1 - 1e-6);
	assert_true(eps <= 1 + 1e-3);
	assert_true(delta == 1e-6);
}

static void test_gaussian_z1_ten_steps(void **state)
{
	(void)state;
	accountant_release *r = repeat(gaussian(1, 5, 1e-6), 10);
	double eps, delta;
	compose_ok(ACCOUNTANT_RDP, r, 10, 1e-5, &eps, &delta);
	double ref = ref_epsilon(0, 0, 10, 1, 1e-5);
	double rho = 10 / 2.0; /* k/(2z²) */
	double zcdp = rho + 2 * sqrt(rho * log(1 / 1e-5));
	print_message("Gaussian z=1, 10 steps, delta=1e-5: eps = %.6f (dense-grid reference %.6f, "
	              "zCDP bound %.6f)\n",
	              eps, ref, zcdp);
	/* Our grid is (to rounding) part of the dense one: never below it. */
	assert_true(eps >= ref - 1e-9);
	assert_true(eps <= ref + 0.02);
	/* [BS]: the zCDP conversion is looser. */
	assert_true(eps <= zcdp);
	/* δ: the target, not the releases' own δ (those are replaced by RDP). */
	assert_true(delta == 1e-5);
	/* basic composition of their own (5, 1e-6) each */
	compose_ok(ACCOUNTANT_BASIC, r, 10, 0, &eps, &delta);
	assert_near(eps, 50, 1e-12);
	assert_near(delta, 1e-5, 1e-18);
	free(r);
}

static void test_laplace_single_release_is_basic(void **state)
{
	(void)state;
	const double epss[] = {0.01, 0.1, 1, 5, 20};
	for (size_t i = 0; i < sizeof(epss) / sizeof(epss[0]); i++) {
		accountant_release r = laplace(epss[i]);
		double eps, delta;
		compose_ok(ACCOUNTANT_RDP, &r, 1, 1e-6, &eps, &delta);
		assert_true(eps <= epss[i]);
		/* one release: the RDP route cannot beat its own pure ε */
		assert_true(eps == epss[i]);
		assert_true(delta == 0);
	}
}

static void test_laplace_many_releases_beat_basic(void **state)
{
	(void)state;
	double eps, delta, basic_eps, basic_delta;

	/* 100 syncs at ε = 0.1 */
	accountant_release *r = repeat(laplace(0.1), 100);
	compose_ok(ACCOUNTANT_BASIC, r, 100, 0, &basic_eps, &basic_delta);
	compose_ok(ACCOUNTANT_RDP, r, 100, 1e-6, &eps, &delta);
	double ref = ref_epsilon(100, 10, 0, 0, 1e-6);
	print_message("100 Laplace syncs at eps=0.1: basic %.6f, RDP (delta=1e-6) %.6f "
	              "(dense-grid reference %.6f), saving %.1f%%\n",
	              basic_eps, eps, ref, 100 * (1 - eps / basic_eps));
	assert_near(basic_eps, 10, 1e-9);
	assert_true(basic_delta == 0);
	assert_true(eps < 0.6 * basic_eps);
	assert_true(eps >= ref - 1e-9);
	assert_true(eps <= ref + 0.02);
	assert_true(delta == 1e-6);
	free(r);

	/* 10 syncs at ε = 1: about break-even; the smaller bound is returned,
	 * with its own δ. */
	r = repeat(laplace(1), 10);
	compose_ok(ACCOUNTANT_RDP, r, 10, 1e-6, &eps, &delta);
	ref = ref_epsilon(10, 1, 0, 0, 1e-6);
	print_message("10 Laplace syncs at eps=1: basic 10, RDP (delta=1e-6) %.6f "
	              "(reference %.6f), returned %.6f with delta %g\n",
	              fmin(eps, 10), ref, eps, delta);
	assert_true(eps <= 10);
	assert_true(eps >= ref - 1e-9);
	assert_true(delta == (eps < 10 ? 1e-6 : 0));
	free(r);

	/* 3 syncs at ε = 1: RDP alone would be worse, so basic (δ = 0). */
	r = repeat(laplace(1), 3);
	compose_ok(ACCOUNTANT_RDP, r, 3, 1e-6, &eps, &delta);
	ref = ref_epsilon(3, 1, 0, 0, 1e-6);
	print_message("3 Laplace syncs at eps=1: RDP alone %.6f, returned %.6f with delta %g\n",
	              ref, eps, delta);
	assert_true(ref > 3);
	assert_near(eps, 3, 1e-12);
	assert_true(delta == 0);
	free(r);

	/* 1000 syncs at ε = 0.1, δ = 1e-6 */
	r = repeat(laplace(0.1), 1000);
	compose_ok(ACCOUNTANT_RDP, r, 1000, 1e-6, &eps, &delta);
	ref = ref_epsilon(1000, 10, 0, 0, 1e-6);
	print_message("1000 Laplace syncs at eps=0.1: basic 100, RDP (delta=1e-6) %.6f "
	              "(reference %.6f)\n",
	              eps, ref);
	assert_true(eps >= ref - 1e-9 && eps <= ref + 0.02);
	assert_true(eps < 30);
	free(r);
}

/* ---- composition: rules ------------------------------------------------ */

static void test_empty(void **state)
{
	(void)state;
	double eps = -1, delta = -1;
	compose_ok(ACCOUNTANT_BASIC, NULL, 0, 0, &eps, &delta);
	assert_true(eps == 0 && delta == 0);
	eps = delta = -1;
	compose_ok(ACCOUNTANT_RDP, NULL, 0, 1e-6, &eps, &delta);
	assert_true(eps == 0 && delta == 0);
}

static void test_basic_sums_every_family(void **state)
{
	(void)state;
	accountant_release r[] = {
	    laplace(0.5),
	    gaussian(2, 1.25, 1e-6),
	    {SOVMESH_NOISE_OTHER, 0, 0.25, 1e-7},
	    {(sovmesh_noise_family)42, 0, 0.125, 0},
	};
	double eps, delta;
	compose_ok(ACCOUNTANT_BASIC, r, 4, 0, &eps, &delta);
	assert_near(eps, 2.125, 1e-15);
	assert_near(delta, 1.1e-6, 1e-20);
	/* target_delta means nothing to basic, even out of range */
	compose_ok(ACCOUNTANT_BASIC, r, 4, 7, &eps, &delta);
	assert_near(eps, 2.125, 1e-15);
}

static void test_none_is_infinite(void **state)
{
	(void)state;
	accountant_release r[] = {laplace(0.5), {SOVMESH_NOISE_NONE, 0, 0, 0}, laplace(0.5)};
	double eps, delta;
	compose_ok(ACCOUNTANT_BASIC, r, 3, 0, &eps, &delta);
	assert_true(isinf(eps) && eps > 0);
	compose_ok(ACCOUNTANT_RDP, r, 3, 1e-6, &eps, &delta);
	assert_true(isinf(eps) && eps > 0);
	/* a Laplace or Gaussian release with no noise at all */
	accountant_release z0[] = {{SOVMESH_NOISE_GAUSSIAN, 0, INFINITY, 0}};
	compose_ok(ACCOUNTANT_RDP, z0, 1, 1e-6, &eps, &delta);
	assert_true(isinf(eps) && eps > 0);
	z0[0] = (accountant_release){SOVMESH_NOISE_LAPLACE, 0, INFINITY, 0};
	compose_ok(ACCOUNTANT_RDP, z0, 1, 1e-6, &eps, &delta);
	assert_true(isinf(eps) && eps > 0);
}

static void test_rdp_other_added_on_top(void **state)
{
	(void)state;
	double eps, delta, g_eps, g_delta;
	accountant_release *g = repeat(gaussian(2, 3, 1e-6), 5);
	compose_ok(ACCOUNTANT_RDP, g, 5, 1e-6, &g_eps, &g_delta);
	assert_true(g_delta == 1e-6);

	accountant_release *mix = repeat(gaussian(2, 3, 1e-6), 7);
	mix[5] = (accountant_release){SOVMESH_NOISE_OTHER, 0, 0.3, 2e-7};
	mix[6] = (accountant_release){(sovmesh_noise_family)42, 5, 0.2, 1e-7};
	compose_ok(ACCOUNTANT_RDP, mix, 7, 1e-6, &eps, &delta);
	assert_near(eps, g_eps + 0.5, 1e-12);
	assert_near(delta, 1e-6 + 3e-7, 1e-20);
	free(g);
	free(mix);

	/* Only OTHER releases: no RDP part, so no target δ is spent. */
	accountant_release o[] = {{SOVMESH_NOISE_OTHER, 0, 0.3, 2e-7},
	                          {SOVMESH_NOISE_OTHER, 0, 0.4, 0}};
	compose_ok(ACCOUNTANT_RDP, o, 2, 1e-6, &eps, &delta);
	assert_near(eps, 0.7, 1e-15);
	assert_near(delta, 2e-7, 1e-22);

	/* Laplace history plus a pure OTHER: the basic bound of the Laplace
	 * part still applies (δ = 0), the OTHER ε on top. */
	accountant_release lo[] = {laplace(1), laplace(1), {SOVMESH_NOISE_OTHER, 0, 0.5, 0}};
	compose_ok(ACCOUNTANT_RDP, lo, 3, 1e-6, &eps, &delta);
	assert_near(eps, 2.5, 1e-15);
	assert_true(delta == 0);
}

static void test_laplace_different_epsilons(void **state)
{
	(void)state;
	/* 25 each of ε = 0.05, 0.1, 0.15, 0.2, interleaved: every curve counts. */
	const double epss[] = {0.05, 0.1, 0.15, 0.2};
	double z[4];
	int k[4] = {25, 25, 25, 25};
	accountant_release r[100];
	for (int i = 0; i < 100; i++)
		r[i] = laplace(epss[i % 4]);
	for (int j = 0; j < 4; j++)
		z[j] = 1 / epss[j];
	double eps, delta;
	compose_ok(ACCOUNTANT_RDP, r, 100, 1e-6, &eps, &delta);
	double ref = ref_epsilon_laplace_mix(z, k, 4, 1e-6);
	print_message("25 Laplace syncs each at eps=0.05/0.1/0.15/0.2: basic 12.5, RDP %.6f "
	              "(reference %.6f)\n",
	              eps, ref);
	assert_true(eps >= ref - 1e-9 && eps <= ref + 0.02);
	assert_true(delta == 1e-6);
}

static void test_gaussian_and_laplace_together(void **state)
{
	(void)state;
	/* 50 Laplace at ε = 0.1 and 10 Gaussian at z = 5: one RDP sum. */
	accountant_release r[60];
	for (int i = 0; i < 60; i++)
		r[i] = i % 6 == 5 ? gaussian(5, 1, 1e-6) : laplace(0.1);
	double eps, delta;
	compose_ok(ACCOUNTANT_RDP, r, 60, 1e-6, &eps, &delta);
	double ref = ref_epsilon(50, 10, 10, 5, 1e-6);
	print_message(
	    "50 Laplace eps=0.1 + 10 Gaussian z=5, delta=1e-6: eps %.6f (reference %.6f)\n", eps,
	    ref);
	assert_true(eps >= ref - 1e-9 && eps <= ref + 0.02);
	assert_true(delta == 1e-6);
}

static void test_basic_shortcut_only_for_pure_laplace(void **state)
{
	(void)state;
	double eps, delta;
	/* A Gaussian claiming (0, 0) is still accounted by its curve. */
	accountant_release g = gaussian(10, 0, 0);
	compose_ok(ACCOUNTANT_RDP, &g, 1, 1e-6, &eps, &delta);
	assert_true(eps > 0.4);
	assert_true(delta == 1e-6);
	/* A Laplace release that reports a δ is not pure: RDP bound only. */
	accountant_release l = {SOVMESH_NOISE_LAPLACE, 1, 1, 1e-9};
	compose_ok(ACCOUNTANT_RDP, &l, 1, 1e-6, &eps, &delta);
	assert_true(eps > 1);
	assert_near(eps, ref_epsilon(1, 1, 0, 0, 1e-6), 0.02);
	assert_true(delta == 1e-6);
	/* One pure Laplace among Gaussians: no shortcut either. */
	accountant_release lg[] = {laplace(1), gaussian(100, 0.05, 1e-7)};
	compose_ok(ACCOUNTANT_RDP, lg, 2, 1e-6, &eps, &delta);
	assert_true(eps > 1);
	assert_true(delta == 1e-6);
}

static void test_total_variation_bound(void **state)
{
	(void)state;
	/* z = 1e5: rdp(1.1) = 5.5e-11 ≤ δ² = 1e-10, so (0, δ) by total
	 * variation, while the conversion alone stops at its α = 1024 floor
	 * (≈ 0.0035 at δ = 1e-5). */
	accountant_release g = gaussian(1e5, 0, 1e-9);
	double eps, delta;
	compose_ok(ACCOUNTANT_RDP, &g, 1, 1e-5, &eps, &delta);
	assert_true(eps == 0);
	assert_true(delta == 1e-5);
	assert_true(ref_conv(1024, accountant_rdp(SOVMESH_NOISE_GAUSSIAN, 1e5, 1024), 1e-5) >
	            0.003);
	/* a little more loss and the rule no longer applies */
	g.noise_multiplier = 1e3;
	compose_ok(ACCOUNTANT_RDP, &g, 1, 1e-5, &eps, &delta);
	assert_true(eps > 0.003);
}

static void check_monotone(accountant_kind k, const accountant_release *r, size_t n)
{
	double prev = 0;
	for (size_t m = 0; m <= n; m++) {
		double eps, delta;
		compose_ok(k, r, m, 1e-6, &eps, &delta);
		if (eps < prev)
			fail_msg("%s: %zu releases give ε %.17g < %.17g for %zu",
			         accountant_name(k), m, eps, prev, m - 1);
		prev = eps;
	}
}

static void test_monotone(void **state)
{
	(void)state;
	/* Across the basic/RDP crossover (at 9 syncs for ε = 0.5, δ = 1e-6). */
	accountant_release *r = repeat(laplace(0.5), 200);
	double eps, delta;
	compose_ok(ACCOUNTANT_RDP, r, 8, 1e-6, &eps, &delta);
	assert_true(eps == 4 && delta == 0);
	compose_ok(ACCOUNTANT_RDP, r, 9, 1e-6, &eps, &delta);
	assert_true(eps < 4.5 && delta == 1e-6);
	check_monotone(ACCOUNTANT_RDP, r, 200);
	check_monotone(ACCOUNTANT_BASIC, r, 200);
	/* A pseudo-random mix of every family but NONE. */
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (int i = 0; i < 200; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		double u = (double)(x >> 11) / 9007199254740992.0;
		switch ((x >> 3) % 4) {
		case 0:
			r[i] = laplace(0.05 + 2 * u);
			break;
		case 1:
			r[i] = gaussian(0.5 + 10 * u, 1, 1e-7);
			break;
		case 2:
			r[i] = (accountant_release){SOVMESH_NOISE_OTHER, 0, u, 1e-8 * u};
			break;
		default:
			r[i] = laplace(0.01 + 0.1 * u);
			break;
		}
	}
	check_monotone(ACCOUNTANT_RDP, r, 200);
	check_monotone(ACCOUNTANT_BASIC, r, 200);
	free(r);
}

static void test_extreme_multipliers(void **state)
{
	(void)state;
	const double zs[] = {5e-324, 1e-300, 1e-8, 1e8, 1e300, INFINITY};
	sovmesh_noise_family fam[] = {SOVMESH_NOISE_LAPLACE, SOVMESH_NOISE_GAUSSIAN};
	for (size_t f = 0; f < 2; f++)
		for (size_t i = 0; i < sizeof(zs) / sizeof(zs[0]); i++) {
			accountant_release *r =
			    repeat((accountant_release){fam[f], zs[i], 1 / zs[i], 0}, 1000);
			double eps, delta;
			compose_ok(ACCOUNTANT_RDP, r, 1000, 1e-9, &eps, &delta);
			assert_true(eps >= 0);
			if (zs[i] <= 1e-8)
				assert_true(eps > 1e6); /* huge or +inf */
			if (zs[i] == INFINITY)          /* no loss at all: not even δ */
				assert_true(eps == 0 && delta == 0);
			/* nearly no loss: the grid's floor at α = 1024 remains,
			 * (log(1/δ) − log 1024)/1023 − 1/1024 ≈ 0.0125 at δ = 1e-9 */
			if (zs[i] >= 1e8 && fam[f] == SOVMESH_NOISE_GAUSSIAN)
				assert_true(isfinite(eps) && eps < 0.013);
			compose_ok(ACCOUNTANT_BASIC, r, 1000, 0, &eps, &delta);
			free(r);
		}
}

/* ---- refusals ---------------------------------------------------------- */

static void expect_einval(accountant_kind k, const accountant_release *r, size_t n, double target,
                          const char *needle)
{
	sovmesh_error err = {0};
	double eps = 123, delta = 456;
	assert_int_equal(accountant_compose(k, r, n, target, &eps, &delta, &err), -EINVAL);
	assert_int_equal(err.code, -EINVAL);
	if (!strstr(err.message, needle))
		fail_msg("message '%s' lacks '%s'", err.message, needle);
	assert_true(eps == 123 && delta == 456); /* untouched */
}

static void test_refusals(void **state)
{
	(void)state;
	accountant_release r[3] = {laplace(1), laplace(1), laplace(1)};
	expect_einval((accountant_kind)5, r, 3, 1e-6, "unknown kind");
	expect_einval(ACCOUNTANT_RDP, NULL, 3, 1e-6, "no array");
	const double targets[] = {0, 1, -1e-6, 2, NAN, INFINITY};
	for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++)
		expect_einval(ACCOUNTANT_RDP, r, 3, targets[i], "target delta");

	r[2].epsilon = NAN;
	expect_einval(ACCOUNTANT_BASIC, r, 3, 0, "release 2 has epsilon");
	expect_einval(ACCOUNTANT_RDP, r, 3, 1e-6, "release 2 has epsilon");
	r[2] = laplace(1);
	r[1].delta = -1e-9;
	expect_einval(ACCOUNTANT_RDP, r, 3, 1e-6, "release 1 has delta");
	r[1] = laplace(1);
	r[0].noise_multiplier = -1;
	expect_einval(ACCOUNTANT_RDP, r, 3, 1e-6, "release 0 has noise_multiplier");
	r[0].noise_multiplier = NAN;
	expect_einval(ACCOUNTANT_BASIC, r, 3, 0, "noise_multiplier");
	r[0] = laplace(1);

	double eps;
	assert_int_equal(accountant_compose(ACCOUNTANT_RDP, r, 3, 1e-6, &eps, NULL, NULL), -EINVAL);
	assert_int_equal(accountant_compose(ACCOUNTANT_RDP, r, 3, 1e-6, NULL, &eps, NULL), -EINVAL);
	/* a NULL err is fine */
	assert_int_equal(accountant_compose((accountant_kind)5, r, 3, 1e-6, &eps, &eps, NULL),
	                 -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_and_name),
	    cmocka_unit_test(test_gaussian_rdp_published),
	    cmocka_unit_test(test_laplace_rdp_quadrature),
	    cmocka_unit_test(test_rdp_special_values),
	    cmocka_unit_test(test_reference_conversion_pinned),
	    cmocka_unit_test(test_gaussian_published_one_release),
	    cmocka_unit_test(test_gaussian_z1_ten_steps),
	    cmocka_unit_test(test_laplace_single_release_is_basic),
	    cmocka_unit_test(test_laplace_many_releases_beat_basic),
	    cmocka_unit_test(test_empty),
	    cmocka_unit_test(test_basic_sums_every_family),
	    cmocka_unit_test(test_none_is_infinite),
	    cmocka_unit_test(test_rdp_other_added_on_top),
	    cmocka_unit_test(test_laplace_different_epsilons),
	    cmocka_unit_test(test_gaussian_and_laplace_together),
	    cmocka_unit_test(test_basic_shortcut_only_for_pure_laplace),
	    cmocka_unit_test(test_total_variation_bound),
	    cmocka_unit_test(test_monotone),
	    cmocka_unit_test(test_extreme_multipliers),
	    cmocka_unit_test(test_refusals),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

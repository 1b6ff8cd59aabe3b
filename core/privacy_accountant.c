/* Privacy accounting: basic composition and RDP (see privacy_accountant.h). */
#include "privacy_accountant.h"

#include <errno.h>
#include <math.h>
#include <string.h>

/* The grid of orders (header comment): 99 + 54 + 12. */
#define FINE_ORDERS    99 /* 1.1 .. 10.9 */
#define INTEGER_ORDERS 54 /* 11 .. 64 */
static const double coarse_orders[] = {80, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024};
#define COARSE_ORDERS (sizeof(coarse_orders) / sizeof(coarse_orders[0]))
#define N_ORDERS      (FINE_ORDERS + INTEGER_ORDERS + COARSE_ORDERS)

static double order_at(size_t i)
{
	if (i < FINE_ORDERS)
		return 1.0 + (double)(i + 1) / 10.0;
	i -= FINE_ORDERS;
	if (i < INTEGER_ORDERS)
		return 11.0 + (double)i;
	return coarse_orders[i - INTEGER_ORDERS];
}

int accountant_parse(const char *name, accountant_kind *out)
{
	if (name && strcmp(name, "basic") == 0) {
		*out = ACCOUNTANT_BASIC;
		return 0;
	}
	if (name && strcmp(name, "rdp") == 0) {
		*out = ACCOUNTANT_RDP;
		return 0;
	}
	return -EINVAL;
}

const char *accountant_name(accountant_kind k)
{
	switch (k) {
	case ACCOUNTANT_BASIC:
		return "basic";
	case ACCOUNTANT_RDP:
		return "rdp";
	}
	return "unknown";
}

static double laplace_rdp(double z, double alpha)
{
	double e = 1.0 / z; /* the pure ε of the release; z = 0 -> +inf */
	if (e == 0)
		return 0;
	if (isinf(e))
		return INFINITY;
	if (isinf(alpha))
		return e;
	/* Factor e^{(α−1)e} out of Mironov's sum: the log1p argument lies in
	 * (−1/2, 0], so nothing overflows however large α·e is. */
	double c = (alpha - 1) / (2 * alpha - 1);
	double r = e + log1p(c * expm1(-(2 * alpha - 1) * e)) / (alpha - 1);
	/* r <= e even after rounding (the log1p term is <= 0).  For small e
	 * the sum cancels (r ≈ αe²/2 ≪ e) and may keep a few ulps of e: cap
	 * by αe²/2 (ε-DP implies ε²/2-zCDP, Bun & Steinke 2016), floor at 0. */
	r = fmin(r, alpha * e * e / 2);
	return fmax(r, 0);
}

static double gaussian_rdp(double z, double alpha)
{
	if (isinf(alpha))
		return z == INFINITY ? 0 : INFINITY;
	/* z = 0 or z² underflowing gives +inf; z² overflowing gives 0. */
	return alpha / (2 * (z * z));
}

double accountant_rdp(sovmesh_noise_family family, double noise_multiplier, double alpha)
{
	if (isnan(alpha) || alpha <= 1 || isnan(noise_multiplier) || noise_multiplier < 0)
		return NAN;
	switch (family) {
	case SOVMESH_NOISE_LAPLACE:
		return laplace_rdp(noise_multiplier, alpha);
	case SOVMESH_NOISE_GAUSSIAN:
		return gaussian_rdp(noise_multiplier, alpha);
	default:
		return INFINITY;
	}
}

/* ε at one order for (α, rdp) and target δ; may be negative (caller clamps). */
static double rdp_to_epsilon(double alpha, double rdp, double delta)
{
	/* Total variation ≤ √(1 − e^{−KL}) ≤ √(1 − e^{−rdp}) (KL ≤ D_α), so
	 * once that is ≤ δ the releases are (0, δ)-DP (dp_accounting's
	 * compute_epsilon does the same). */
	if (delta * delta >= -expm1(-rdp))
		return 0;
	return rdp + log1p(-1 / alpha) - (log(delta) + log(alpha)) / (alpha - 1);
}

static int has_curve(sovmesh_noise_family f)
{
	return f == SOVMESH_NOISE_LAPLACE || f == SOVMESH_NOISE_GAUSSIAN;
}

static int check_field(size_t i, const char *name, double v, sovmesh_error *err)
{
	if (isnan(v) || v < 0)
		return sovmesh_fail(err, -EINVAL,
		                    "privacy accountant: release %zu has %s %g (must be >= 0)", i,
		                    name, v);
	return 0;
}

int accountant_compose(accountant_kind k, const accountant_release *releases, size_t n,
                       double target_delta, double *epsilon_out, double *delta_out,
                       sovmesh_error *err)
{
	if (k != ACCOUNTANT_BASIC && k != ACCOUNTANT_RDP)
		return sovmesh_fail(err, -EINVAL, "privacy accountant: unknown kind %d", (int)k);
	if (!epsilon_out || !delta_out)
		return sovmesh_fail(err, -EINVAL, "privacy accountant: no place for the result");
	if (n > 0 && !releases)
		return sovmesh_fail(err, -EINVAL, "privacy accountant: %zu releases but no array",
		                    n);
	if (k == ACCOUNTANT_RDP && !(target_delta > 0 && target_delta < 1))
		return sovmesh_fail(err, -EINVAL,
		                    "privacy accountant: target delta %g must be in (0, 1) for rdp",
		                    target_delta);

	/* Validate everything first, and take the basic sums on the way. */
	double eps_sum = 0, delta_sum = 0;
	int none = 0;
	for (size_t i = 0; i < n; i++) {
		const accountant_release *r = &releases[i];
		int rc = check_field(i, "epsilon", r->epsilon, err);
		if (rc == 0)
			rc = check_field(i, "delta", r->delta, err);
		if (rc == 0)
			rc = check_field(i, "noise_multiplier", r->noise_multiplier, err);
		if (rc < 0)
			return rc;
		eps_sum += r->epsilon;
		delta_sum += r->delta;
		if (r->family == SOVMESH_NOISE_NONE)
			none = 1;
	}
	if (none) {
		*epsilon_out = INFINITY;
		*delta_out = delta_sum;
		return 0;
	}
	if (k == ACCOUNTANT_BASIC || n == 0) {
		*epsilon_out = eps_sum;
		*delta_out = delta_sum;
		return 0;
	}

	/* RDP: sum the curves of the releases that have one; the others, and
	 * the basic sum of the curved ones, go aside. */
	double rdp[N_ORDERS] = {0}, cur[N_ORDERS];
	double curved_eps = 0, other_eps = 0, other_delta = 0;
	int curved = 0, curved_pure = 1;
	sovmesh_noise_family last_family = SOVMESH_NOISE_OTHER;
	double last_z = -1;
	for (size_t i = 0; i < n; i++) {
		const accountant_release *r = &releases[i];
		if (!has_curve(r->family)) {
			other_eps += r->epsilon;
			other_delta += r->delta;
			continue;
		}
		curved = 1;
		curved_eps += r->epsilon;
		/* Only Laplace is pure ε-DP by construction; a Gaussian
		 * release never qualifies, whatever it reported. */
		if (r->family != SOVMESH_NOISE_LAPLACE || r->delta != 0)
			curved_pure = 0;
		/* A ledger is mostly the same release over and over: reuse. */
		if (r->family != last_family || r->noise_multiplier != last_z) {
			for (size_t j = 0; j < N_ORDERS; j++)
				cur[j] =
				    accountant_rdp(r->family, r->noise_multiplier, order_at(j));
			last_family = r->family;
			last_z = r->noise_multiplier;
		}
		for (size_t j = 0; j < N_ORDERS; j++)
			rdp[j] += cur[j];
	}

	double eps = 0, delta = 0;
	/* RDP grows with α: zero at the largest order means no loss at all
	 * (every curved release had z = +inf). */
	if (curved && rdp[N_ORDERS - 1] > 0) {
		double best = INFINITY;
		for (size_t j = 0; j < N_ORDERS; j++)
			best = fmin(best, rdp_to_epsilon(order_at(j), rdp[j], target_delta));
		eps = fmax(best, 0);
		delta = target_delta;
		/* Pure Laplace releases are also bounded by their plain sum, with
		 * no δ. */
		if (curved_pure && curved_eps <= eps) {
			eps = curved_eps;
			delta = 0;
		}
	}
	*epsilon_out = eps + other_eps;
	*delta_out = delta + other_delta;
	return 0;
}

/* SPDX-License-Identifier: MIT */
/*
 * dp-gaussian: the Gaussian mechanism for one party's update, done so that
 * floating point cannot leak (docs/differential-privacy.md, "Gaussian
 * mechanism", has the math and the privacy proof).
 *
 *   1. Clip the whole set (all tensors together) to L2 norm C.
 *   2. Snap every value to a power-of-two grid g: k = round(x / g).
 *   3. Add integer noise Z ~ N_Z(0, v), the discrete Gaussian, with
 *      v >= (nm * D)^2 + 4, where nm = sigma / Delta is the noise
 *      multiplier and D = Delta/g + sqrt(d) bounds ||k - k'||_2 (the snap
 *      may move each of the d values by g/2, which the sensitivity must
 *      absorb; the 4 pays for the discreteness, see the doc).
 *   4. Release g * (k + Z).
 *
 * nm is the `noise_multiplier` setting, or calibrated from (epsilon,
 * delta) with the analytic Gaussian mechanism (Balle & Wang 2018), exact
 * for every epsilon > 0.  Z is drawn exactly with integer arithmetic from
 * the host's random bytes (dgauss.c, Canonne, Kamath & Steinke 2020).
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <sovmesh/noise.h>
#include <sovmesh/plugin.h>

#include "dgauss.h"

/* The grid is at most 2^-GRID_BITS of sigma (so discreteness is
 * invisible next to the noise) and of Delta/sqrt(d) (so the snap's extra
 * sensitivity g*sqrt(d) is at most 2^-GRID_BITS * Delta). */
#define GRID_BITS 20
/* Relative margins: the clipped norm's rounding (a few ulps), and the
 * few roundings in computing the variance, so it is never too small. */
#define CLIP_SLACK 0x1p-40
#define VAR_SLACK  0x1p-45
/* Variance added (in grid steps^2) so that the discrete Gaussian is a
 * post-processing of a continuous one up to a factor exp(+-3e-34) per
 * value (the doc's "discreteness" argument). */
#define TAU2 4.0
/* Calibration margins: (epsilon, delta) are met with epsilon * 2^-32 +
 * 2^-60 and delta * 2^-32 to spare, which covers the discreteness terms
 * (<= 2e-19 for d <= 2^48 values). */
#define CAL_REL   0x1p-32
#define CAL_ETA   0x1p-60
#define NM_MAX    0x1p30
#define DELTA_MIN 1e-100
#define D_MAX     (UINT64_C(1) << 48)

static const double SQRT1_2 = 0.70710678118654752440;
static const double HALF_LOG_2PI = 0.91893853320467274178;

typedef struct gauss {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	double factor;     /* Delta = factor * clip */
	double multiplier; /* the noise_multiplier setting; 0 = calibrate */
} gauss;

static const sovmesh_setting_def gauss_settings[] = {
    {
        .name = "sensitivity_factor",
        .type = SOVMESH_SETTING_DOUBLE,
        .default_value = "2.0",
        .min = 0,
        .max = 1000,
        .help = "L2 sensitivity = factor x clip: 2 = replace-one neighbours (default), "
                "1 = add/remove-one",
    },
    {
        .name = "noise_multiplier",
        .type = SOVMESH_SETTING_DOUBLE,
        .default_value = "0",
        .min = 0,
        .max = 1e6,
        .help = "sigma / L2 sensitivity; the epsilon spent then follows from it and delta. "
                "0 (default): calibrate sigma from epsilon and delta",
    },
    {.name = NULL},
};

static int gauss_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                        sovmesh_error *err)
{
	if (!SOVMESH_HAS_SLOT(api, sovmesh_host_api, random_bytes))
		return sovmesh_fail(
		    err, -ENOTSUP,
		    "the host offers no random_bytes slot; gaussian draws its noise "
		    "only from the host's cryptographic RNG");
	if (!api->calloc || !api->free)
		return sovmesh_fail(err, -EINVAL, "the host offers no memory slots");
	double factor = 2.0, multiplier = 0;
	if (api->setting_double) {
		factor = api->setting_double(host, "sensitivity_factor");
		multiplier = api->setting_double(host, "noise_multiplier");
	}
	if (!isfinite(factor) || factor <= 0 || factor > 1000)
		return sovmesh_fail(err, -EINVAL, "sensitivity_factor %g must be in (0, 1000]",
		                    factor);
	if (!isfinite(multiplier) || multiplier < 0 || multiplier > 1e6)
		return sovmesh_fail(err, -EINVAL,
		                    "noise_multiplier %g must be 0 (calibrate) or in (0, 1e6]",
		                    multiplier);
	gauss *gs = api->calloc(host, 1, sizeof(*gs));
	if (!gs)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	gs->host = host;
	gs->api = api;
	gs->factor = factor;
	gs->multiplier = multiplier;
	*instance = gs;
	return 0;
}

static void gauss_destroy(void *instance)
{
	gauss *gs = instance;
	if (gs)
		gs->api->free(gs->host, gs);
}

/* ---- the analytic Gaussian mechanism (Balle & Wang 2018) ---- */

/* The log of a lower bound on P(N(0,1) <= x) (-inf if 0).  For x < -30,
 * where erfc nears underflow, the Mills-ratio series cut after a negative
 * term, which is below the true value. */
static double log_phi_lower(double x)
{
	if (x >= -30)
		return log(0.5 * erfc(-x * SQRT1_2));
	double y = 1 / (x * x);
	return -0.5 * x * x - HALF_LOG_2PI - log(-x) + log1p(-y * (1 - y * (3 - 15 * y)));
}

/*
 * An upper bound on the delta at which the Gaussian mechanism with
 * sigma = nm * Delta is (eps, delta)-DP (Balle & Wang, Theorem 8):
 *   delta = Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu),  mu = 1/nm.
 * `err` bounds the floating-point error: arguments a, b are off by a few
 * ulps of |b|, which moves Phi by (|x| + 1) times that relatively; the
 * 2^-40 factor is a thousandfold margin over that analysis.  NaN (from an
 * overflow) compares false, so callers treat it as "not private enough".
 */
static double agm_delta_bound(double eps, double nm)
{
	double mu = 1 / nm;
	double a = mu / 2 - eps / mu, b = -mu / 2 - eps / mu;
	double t1 = 0.5 * erfc(-a * SQRT1_2);
	double t2 = exp(eps + log_phi_lower(b));
	double w = t1 + t2; /* both 0: delta underflows, no error to bound */
	double err = w > 0 ? 0x1p-40 * (1 + a * a + b * b + eps) * w : 0;
	return fmax(t1 - t2, 0) + err;
}

/* The smallest noise multiplier that gives (eps, delta) with the margins
 * (bisection on sigma for Delta = 1); -EDOM if eps is within the margin,
 * -ERANGE above NM_MAX. */
static int agm_calibrate(double eps, double delta, double *nm)
{
	double ec = eps * (1 - CAL_REL) - CAL_ETA, dc = delta * (1 - CAL_REL);
	if (!(ec > 0))
		return -EDOM;
	double hi = 1;
	while (!(agm_delta_bound(ec, hi) <= dc)) {
		hi *= 2;
		if (hi > NM_MAX)
			return -ERANGE;
	}
	double lo = hi / 2;
	while (agm_delta_bound(ec, lo) <= dc && lo > 1e-200) {
		hi = lo;
		lo /= 2;
	}
	for (int i = 0; i < 200 && hi - lo > hi * 0x1p-52; i++) {
		double mid = lo + (hi - lo) / 2;
		if (agm_delta_bound(ec, mid) <= dc)
			hi = mid;
		else
			lo = mid;
	}
	*nm = hi;
	return 0;
}

/* The smallest epsilon the multiplier nm gives at delta, plus the
 * margins (so agm_calibrate of the result gives nm back, from above);
 * -ERANGE if no finite epsilon does. */
static int agm_epsilon(double nm, double delta, double *eps)
{
	double dc = delta * (1 - CAL_REL), e = 0;
	if (!(agm_delta_bound(0, nm) <= dc)) {
		double lo = 0, hi = 1;
		while (!(agm_delta_bound(hi, nm) <= dc)) {
			lo = hi;
			hi *= 2;
			if (hi > 1e300)
				return -ERANGE;
		}
		for (int i = 0; i < 200 && hi - lo > hi * 0x1p-52; i++) {
			double mid = lo + (hi - lo) / 2;
			if (agm_delta_bound(mid, nm) <= dc)
				hi = mid;
			else
				lo = mid;
		}
		e = hi;
	}
	*eps = e * (1 + CAL_REL) + CAL_ETA;
	return 0;
}

/* ---- parameters and cost ---- */

typedef struct plan {
	double sens; /* Delta = factor * clip */
	double nm;   /* sigma / Delta the noise is at least */
	double eps;  /* what one release spends */
	double delta;
} plan;

static int make_plan(const gauss *gs, const sovmesh_noise_params *p, plan *pl, sovmesh_error *err)
{
	if (!p)
		return sovmesh_fail(err, -EINVAL, "no noise parameters given");
	if (p->size < offsetof(sovmesh_noise_params, clip) + sizeof(p->clip))
		return sovmesh_fail(err, -EINVAL,
		                    "noise parameters size %u is too small (need %zu)", p->size,
		                    offsetof(sovmesh_noise_params, clip) + sizeof(p->clip));
	if (!isfinite(p->epsilon) || p->epsilon <= 0)
		return sovmesh_fail(err, -EINVAL, "epsilon %g must be a finite number > 0",
		                    p->epsilon);
	if (!isfinite(p->clip) || p->clip <= 0)
		return sovmesh_fail(err, -EINVAL, "clip %g must be a finite number > 0", p->clip);
	if (!(p->delta > 0 && p->delta < 1))
		return sovmesh_fail(
		    err, -EINVAL, "delta %g: the Gaussian mechanism needs 0 < delta < 1", p->delta);
	if (p->delta < DELTA_MIN)
		return sovmesh_fail(err, -EINVAL,
		                    "delta %g is below 1e-100, beyond the double-precision "
		                    "calibration",
		                    p->delta);
	pl->sens = gs->factor * p->clip;
	if (!isfinite(pl->sens) || pl->sens < DBL_MIN)
		return sovmesh_fail(err, -EINVAL,
		                    "sensitivity %g x clip %g = %g is outside the double range",
		                    gs->factor, p->clip, pl->sens);
	pl->delta = p->delta;
	if (gs->multiplier > 0) {
		pl->nm = gs->multiplier;
		if (agm_epsilon(pl->nm, p->delta, &pl->eps) < 0)
			return sovmesh_fail(err, -EINVAL,
			                    "noise_multiplier %g gives no finite epsilon at "
			                    "delta %g",
			                    pl->nm, p->delta);
	} else {
		pl->eps = p->epsilon;
		int rc = agm_calibrate(p->epsilon, p->delta, &pl->nm);
		if (rc == -EDOM)
			return sovmesh_fail(err, -EINVAL,
			                    "epsilon %g is too small to calibrate (the margin for "
			                    "the discrete noise is 2^-60)",
			                    p->epsilon);
		if (rc < 0)
			return sovmesh_fail(err, -EINVAL,
			                    "epsilon %g with delta %g needs a noise multiplier "
			                    "above 2^30; use a larger epsilon or delta",
			                    p->epsilon, p->delta);
	}
	if (!isfinite(pl->nm * pl->sens))
		return sovmesh_fail(err, -EINVAL,
		                    "sigma = %g x sensitivity %g is outside the double range",
		                    pl->nm, pl->sens);
	return 0;
}

static void fill_cost(const plan *pl, sovmesh_privacy_cost *cost)
{
	cost->size = sizeof(*cost);
	cost->epsilon = pl->eps;
	cost->delta = pl->delta;
	cost->family = SOVMESH_NOISE_GAUSSIAN;
	/* The real sigma / Delta, counting the snap's extra sensitivity,
	 * is never below this. */
	cost->noise_multiplier = pl->nm;
	cost->sensitivity = pl->sens;
}

static int gauss_cost(void *instance, const sovmesh_noise_params *params,
                      sovmesh_privacy_cost *cost, sovmesh_error *err)
{
	plan pl;
	int rc = make_plan(instance, params, &pl, err);
	if (rc < 0)
		return rc;
	if (!cost)
		return sovmesh_fail(err, -EINVAL, "no cost struct to fill");
	fill_cost(&pl, cost);
	return 0;
}

/* ---- the mechanism ---- */

typedef struct grid {
	int k; /* g = 2^k */
	double g;
	double steps; /* D >= ||k - k'||_2, in grid steps */
	dg_params dg;
} grid;

/*
 * Pick the grid g = 2^k for d values: the largest power of two
 * <= 2^-GRID_BITS * min(sigma, Delta/sqrt(d)), raised if needed so that
 * clip/g <= 2^52 (grid indices exact) and the variance fits the sampler
 * (DG_VAR_MAX); then
 *   D = Delta (1 + CLIP_SLACK) / g + sqrt(d),
 *   v = ((nm D (1 + VAR_SLACK))^2 + TAU2) (1 + VAR_SLACK), rounded up by
 * dg_params_for (the margins cover the roundings: v >= (nm D)^2 + TAU2).
 */
static int choose_grid(const plan *pl, double clip, uint64_t d, grid *gr, sovmesh_error *err)
{
	if (d > D_MAX)
		return sovmesh_fail(err, -EINVAL,
		                    "%llu values are more than gaussian handles (2^48)",
		                    (unsigned long long)d);
	double rd = sqrt((double)d) * (1 + 0x1p-50); /* >= sqrt(d) */
	double far = pl->nm * rd * (1 + VAR_SLACK);
	if ((far * far + TAU2) * (1 + VAR_SLACK) > DG_VAR_MAX)
		return sovmesh_fail(err, -EINVAL,
		                    "noise multiplier %g is too large for %llu values: the noise "
		                    "would exceed the sampler's range (2^40 grid steps)",
		                    pl->nm, (unsigned long long)d);
	int e;
	frexp(fmin(pl->nm * pl->sens, pl->sens / rd), &e);
	int k = e - 1 - GRID_BITS;
	frexp(clip, &e); /* clip < 2^e */
	if (k < e - 52)
		k = e - 52;
	for (;; k++) {
		if (k < DBL_MIN_EXP - 1 || k > DBL_MAX_EXP - 65)
			return sovmesh_fail(
			    err, -EINVAL,
			    "clip %g with sensitivity %g and noise multiplier %g needs a noise "
			    "grid 2^%d outside the double range",
			    clip, pl->sens, pl->nm, k);
		double g = ldexp(1.0, k);
		double steps = pl->sens * (1 + CLIP_SLACK) / g + rd;
		double s = pl->nm * steps * (1 + VAR_SLACK);
		double var = (s * s + TAU2) * (1 + VAR_SLACK);
		if (var <= DG_VAR_MAX) {
			if (dg_params_for(var, &gr->dg) < 0)
				return sovmesh_fail(err, -EINVAL, "variance %g is out of range",
				                    var);
			gr->k = k;
			gr->g = g;
			gr->steps = steps;
			return 0;
		}
	}
}

static int check_set(const sovmesh_tensor_set *set, uint64_t *d, sovmesh_error *err)
{
	if (!set || (set->count && !set->tensors))
		return sovmesh_fail(err, -EINVAL, "no tensor set to perturb");
	*d = 0;
	for (size_t i = 0; i < set->count; i++) {
		const sovmesh_tensor *t = &set->tensors[i];
		if (t->dtype != SOVMESH_DTYPE_F32 && t->dtype != SOVMESH_DTYPE_F64)
			return sovmesh_fail(
			    err, -ENOTSUP,
			    "tensor '%s' has dtype %s; gaussian perturbs F32 and F64 "
			    "only (the host converts others first)",
			    t->name, sovmesh_dtype_name(t->dtype));
		uint64_t numel = sovmesh_tensor_numel(t);
		if (t->nbytes != numel * sovmesh_dtype_size(t->dtype) || (t->nbytes && !t->data))
			return sovmesh_fail(
			    err, -EINVAL, "tensor '%s' has %llu bytes of data, expected %llu",
			    t->name, (unsigned long long)t->nbytes,
			    (unsigned long long)(numel * sovmesh_dtype_size(t->dtype)));
		*d += numel;
	}
	return 0;
}

/*
 * The L2 norm of the whole set, refusing non-finite values.  Values are
 * scaled by a power of two (exact) so that squares neither overflow nor
 * underflow, and summed with Neumaier compensation, so the clipped norm
 * is C to a few ulps whatever the number of values.
 */
static int l2_norm(const sovmesh_tensor_set *set, double *norm, sovmesh_error *err)
{
	double amax = 0;
	for (size_t i = 0; i < set->count; i++) {
		const sovmesh_tensor *t = &set->tensors[i];
		uint64_t n = sovmesh_tensor_numel(t);
		for (uint64_t j = 0; j < n; j++) {
			double v = sovmesh_tensor_get(t, j);
			if (!isfinite(v))
				return sovmesh_fail(err, -EINVAL, "tensor '%s' element %llu is %s",
				                    t->name, (unsigned long long)j,
				                    isnan(v) ? "NaN"
				                    : v > 0  ? "+Inf"
				                             : "-Inf");
			amax = fmax(amax, fabs(v));
		}
	}
	*norm = 0;
	if (amax == 0)
		return 0;
	int e;
	frexp(amax, &e);
	double sum = 0, comp = 0;
	for (size_t i = 0; i < set->count; i++) {
		const sovmesh_tensor *t = &set->tensors[i];
		uint64_t n = sovmesh_tensor_numel(t);
		for (uint64_t j = 0; j < n; j++) {
			double a = ldexp(sovmesh_tensor_get(t, j), -e);
			double sq = a * a, s = sum + sq;
			comp += sum >= sq ? (sum - s) + sq : (sq - s) + sum;
			sum = s;
		}
	}
	*norm = ldexp(sqrt(sum + comp), e);
	if (!isfinite(*norm))
		return sovmesh_fail(err, -EINVAL, "the L2 norm of the set overflows a double");
	return 0;
}

/*
 * The perturb op (noise.h).  The set is untouched when 0 is not returned
 * because of its input or params; if the host's RNG fails midway (-EIO)
 * the set is partly noised and must be discarded.
 */
static int gauss_perturb(void *instance, sovmesh_tensor_set *set,
                         const sovmesh_noise_params *params, sovmesh_privacy_cost *cost,
                         sovmesh_error *err)
{
	gauss *gs = instance;
	plan pl;
	double norm = 0;
	uint64_t d = 0;
	int rc = make_plan(gs, params, &pl, err);
	if (rc == 0)
		rc = check_set(set, &d, err);
	if (rc == 0)
		rc = l2_norm(set, &norm, err);
	if (rc < 0)
		return rc;
	if (!cost)
		return sovmesh_fail(err, -EINVAL, "no cost struct to fill");
	grid gr = {0};
	if (d > 0 && (rc = choose_grid(&pl, params->clip, d, &gr, err)) < 0)
		return rc;

	double scale = norm > params->clip ? params->clip / norm : 1.0;
	dg_rng *r = gs->api->calloc(gs->host, 1, sizeof(*r));
	if (!r)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	dg_rng_init(r, gs->host, gs->api->random_bytes);
	for (size_t i = 0; i < set->count && d > 0; i++) {
		sovmesh_tensor *t = &set->tensors[i];
		uint64_t n = sovmesh_tensor_numel(t);
		for (uint64_t j = 0; j < n; j++) {
			double x = sovmesh_tensor_get(t, j) * scale;
			/* |x / g| <= clip / g <= 2^52: exact in int64. */
			int64_t k = (int64_t)rint(x / gr.g);
			dg_i128 m = (dg_i128)k + dg_sample(r, &gr.dg);
			sovmesh_tensor_set_value(t, j, (double)m * gr.g);
		}
	}
	rc = r->err;
	gs->api->free(gs->host, r);
	if (rc < 0)
		return sovmesh_fail(err, -EIO,
		                    "the host's random_bytes failed (%d); the set is "
		                    "partly noised and must be discarded",
		                    rc);

	fill_cost(&pl, cost);
	if (gs->api->log && d > 0)
		gs->api->log(gs->host, SOVMESH_LOG_DEBUG,
		             "perturbed %llu values: L2 norm %g clipped to %g, sensitivity %g, "
		             "noise multiplier %.17g, epsilon %g, delta %g, grid 2^%d, "
		             "sensitivity %.17g steps, discrete Gaussian variance %llu*%llu/%llu "
		             "steps^2 (sigma %g)",
		             (unsigned long long)d, norm, params->clip, pl.sens, pl.nm, pl.eps,
		             pl.delta, gr.k, gr.steps, (unsigned long long)gr.dg.t,
		             (unsigned long long)gr.dg.m, (unsigned long long)gr.dg.den,
		             gr.g * sqrt(dg_variance(&gr.dg)));
	return 0;
}

static const sovmesh_noise_ops gauss_ops = {
    .size = sizeof(sovmesh_noise_ops),
    .cost = gauss_cost,
    .perturb = gauss_perturb,
};

static const sovmesh_plugin_descriptor gauss_descriptor = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_NOISE,
    .name = "gaussian",
    .version = "1.0.0",
    .license = "MIT",
    .description = "L2 clipping + discrete Gaussian noise on a power-of-two grid "
                   "((epsilon, delta)-DP, analytic calibration)",
    .settings = gauss_settings,
    .create = gauss_create,
    .destroy = gauss_destroy,
    .ops = &gauss_ops,
};

SOVMESH_PLUGIN_DEFINE(gauss_descriptor)

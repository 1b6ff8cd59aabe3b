/* SPDX-License-Identifier: MIT */
/*
 * dp-laplace: the Laplace mechanism for one party's update, done so that
 * floating point cannot leak (docs/differential-privacy.md has the math).
 *
 *   1. Clip the whole set (all tensors together) to L1 norm C.
 *   2. Snap every value to a power-of-two grid g: k = round(x / g).
 *   3. Add integer noise Z ~ discrete Laplace, P(Z = z) ~ exp(-|z| / t),
 *      with t >= (Delta/g + d) / epsilon (d = number of values: the snap
 *      may move each value by g/2, which the sensitivity must absorb).
 *   4. Release g * (k + Z).
 *
 * Z is sampled exactly with integer arithmetic from the host's random
 * bytes (Canonne, Kamath & Steinke 2020, Algorithms 1 and 2), so the set
 * of possible outputs never depends on the input the way -b*log(u) on
 * doubles does (Mironov 2012).  Releasing g * (k + Z) is post-processing
 * of the integer k + Z.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <sovmesh/noise.h>
#include <sovmesh/plugin.h>

#ifndef __SIZEOF_INT128__
#error "dp-laplace needs a compiler with __int128 (any 64-bit GCC or clang target)"
#endif
/* k + Z computed exactly: |k| <= 2^52 + 1, |Z| = u + t*v with t <= 2^62. */
__extension__ typedef __int128 i128;
__extension__ typedef unsigned __int128 u128;

/* The grid is at most 2^-GRID_BITS of the noise scale b = Delta/epsilon
 * (so discreteness is invisible next to the noise) and of Delta/d (so the
 * snap's extra sensitivity d*g is at most 2^-GRID_BITS * Delta). */
#define GRID_BITS 20
/* Largest discrete Laplace parameter: keeps uniform draws in 64 bits. */
#define T_MAX 0x1p62
/* Relative margins that absorb floating-point rounding in the clipped
 * norm (a few ulps) and in computing t, so t is never too small. */
#define CLIP_SLACK 0x1p-40
#define T_SLACK    0x1p-45

typedef struct laplace {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	double factor; /* Delta = factor * clip */
} laplace;

static const sovmesh_setting_def laplace_settings[] = {
    {
        .name = "sensitivity_factor",
        .type = SOVMESH_SETTING_DOUBLE,
        .default_value = "2.0",
        .min = 0,
        .max = 1000,
        .help = "L1 sensitivity = factor x clip: 2 = replace-one neighbours (default), "
                "1 = add/remove-one",
    },
    {.name = NULL},
};

static int laplace_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                          sovmesh_error *err)
{
	if (!SOVMESH_HAS_SLOT(api, sovmesh_host_api, random_bytes))
		return sovmesh_fail(err, -ENOTSUP,
		                    "the host offers no random_bytes slot; laplace draws its noise "
		                    "only from the host's cryptographic RNG");
	if (!api->calloc || !api->free)
		return sovmesh_fail(err, -EINVAL, "the host offers no memory slots");
	double factor = api->setting_double ? api->setting_double(host, "sensitivity_factor") : 2.0;
	if (!isfinite(factor) || factor <= 0 || factor > 1000)
		return sovmesh_fail(err, -EINVAL, "sensitivity_factor %g must be in (0, 1000]",
		                    factor);
	laplace *lp = api->calloc(host, 1, sizeof(*lp));
	if (!lp)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	lp->host = host;
	lp->api = api;
	lp->factor = factor;
	*instance = lp;
	return 0;
}

static void laplace_destroy(void *instance)
{
	laplace *lp = instance;
	if (lp)
		lp->api->free(lp->host, lp);
}

/* Validate params; *sens gets Delta = factor * clip. */
static int check_params(const laplace *lp, const sovmesh_noise_params *p, double *sens,
                        sovmesh_error *err)
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
	if (!isfinite(p->delta) || p->delta < 0)
		return sovmesh_fail(err, -EINVAL,
		                    "delta %g must be a finite number >= 0 (laplace is pure "
		                    "epsilon-DP and spends delta = 0)",
		                    p->delta);
	*sens = lp->factor * p->clip;
	if (!isfinite(*sens) || *sens < DBL_MIN)
		return sovmesh_fail(err, -EINVAL,
		                    "sensitivity %g x clip %g = %g is outside the double range",
		                    lp->factor, p->clip, *sens);
	return 0;
}

static void fill_cost(const sovmesh_noise_params *p, double sens, sovmesh_privacy_cost *cost)
{
	cost->size = sizeof(*cost);
	cost->epsilon = p->epsilon;
	cost->delta = 0;
	cost->family = SOVMESH_NOISE_LAPLACE;
	/* b / Delta for the nominal b = Delta / epsilon.  The real scale
	 * g*t is at least b, so this under-states the noise, never over. */
	cost->noise_multiplier = 1.0 / p->epsilon;
	cost->sensitivity = sens;
}

static int laplace_cost(void *instance, const sovmesh_noise_params *params,
                        sovmesh_privacy_cost *cost, sovmesh_error *err)
{
	double sens = 0;
	int rc = check_params(instance, params, &sens, err);
	if (rc < 0)
		return rc;
	if (!cost)
		return sovmesh_fail(err, -EINVAL, "no cost struct to fill");
	fill_cost(params, sens, cost);
	return 0;
}

/* ---- the exact sampler ---- */

/* Random bits from the host, fetched a buffer at a time. */
typedef struct rstream {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	uint64_t bits; /* the low nbits are unused random bits, the rest 0 */
	unsigned nbits;
	size_t pos, len;
	int err; /* first random_bytes failure; then every draw is 0 */
	unsigned char buf[4096];
} rstream;

static uint64_t next_word(rstream *r)
{
	if (r->pos + 8 > r->len) {
		if (r->err)
			return 0;
		int rc = r->api->random_bytes(r->host, r->buf, sizeof(r->buf));
		if (rc < 0) {
			r->err = rc;
			return 0;
		}
		r->pos = 0;
		r->len = sizeof(r->buf);
	}
	uint64_t w;
	memcpy(&w, r->buf + r->pos, sizeof(w));
	r->pos += sizeof(w);
	return w;
}

static inline uint64_t low_bits(uint64_t w, unsigned n)
{
	return n >= 64 ? w : w & ((UINT64_C(1) << n) - 1);
}

/* n (1..64) uniform random bits. */
static uint64_t take_bits(rstream *r, unsigned n)
{
	if (n <= r->nbits) {
		uint64_t v = low_bits(r->bits, n);
		r->bits = n >= 64 ? 0 : r->bits >> n;
		r->nbits -= n;
		return v;
	}
	unsigned have = r->nbits, need = n - have; /* have < 64, 1 <= need <= 64 */
	uint64_t w = next_word(r);
	uint64_t v = r->bits | (low_bits(w, need) << have);
	r->bits = need >= 64 ? 0 : w >> need;
	r->nbits = 64 - need;
	return v;
}

/* Uniform on {0, ..., n-1}, n >= 1, by rejection (no modulo bias). */
static uint64_t uniform(rstream *r, uint64_t n)
{
	if (n <= 1)
		return 0;
	unsigned width = 64u - (unsigned)__builtin_clzll(n - 1);
	for (;;) {
		uint64_t v = take_bits(r, width);
		if (v < n)
			return v;
		if (r->err)
			return 0;
	}
}

/*
 * Bernoulli(exp(-u/t)) for 0 <= u < t (CKS Algorithm 1): count K while
 * Bernoulli(gamma/K) succeeds; P(K odd) = exp(-gamma).  Bernoulli(u/(tK))
 * is Bernoulli(u/t) AND Bernoulli(1/K), drawn independently, which keeps
 * every draw within 64 bits.
 */
static int bernoulli_exp_frac(rstream *r, uint64_t u, uint64_t t)
{
	uint64_t k = 1;
	while (!r->err && uniform(r, t) < u && uniform(r, k) == 0)
		k++;
	return (int)(k & 1);
}

/* Bernoulli(exp(-1)), the same algorithm with gamma = 1. */
static int bernoulli_exp_minus_one(rstream *r)
{
	uint64_t k = 1;
	while (!r->err && uniform(r, k) == 0)
		k++;
	return (int)(k & 1);
}

/*
 * Discrete Laplace with integer parameter t >= 1, P(z) ~ exp(-|z|/t)
 * (CKS Algorithm 2 with s = 1): X = u + t*v where u is uniform on
 * [0, t) accepted with probability exp(-u/t) and v is geometric with
 * P(v) ~ exp(-v), so P(X) ~ exp(-X/t); then a random sign, rejecting
 * "-0" so that 0 is not counted twice.
 */
static i128 discrete_laplace(rstream *r, uint64_t t)
{
	while (!r->err) {
		uint64_t u = uniform(r, t);
		if (!bernoulli_exp_frac(r, u, t))
			continue;
		uint64_t v = 0;
		while (!r->err && bernoulli_exp_minus_one(r))
			v++;
		int negative = (int)take_bits(r, 1);
		if (negative && u == 0 && v == 0)
			continue;
		u128 x = (u128)t * v + u;
		return negative ? -(i128)x : (i128)x;
	}
	return 0;
}

/* ---- the mechanism ---- */

typedef struct grid {
	int k; /* g = 2^k */
	double g;
	uint64_t t; /* discrete Laplace parameter, in grid steps */
} grid;

/*
 * Pick the grid g = 2^k and t for d values.  g is the largest power of
 * two <= Delta / (max(d, epsilon) * 2^GRID_BITS), raised if needed so
 * that clip/g <= 2^52 (grid indices exact) and t <= T_MAX; then
 *   t = ceil((Delta (1 + CLIP_SLACK) / g + d) / epsilon * (1 + T_SLACK)),
 * which makes the integer mechanism epsilon-DP (see the doc).
 */
static int choose_grid(double sens, double clip, double eps, uint64_t d, grid *gr,
                       sovmesh_error *err)
{
	double dd = (double)d;
	int e;
	frexp(sens / (dd > eps ? dd : eps), &e);
	int k = e - 1 - GRID_BITS;
	frexp(clip, &e); /* clip < 2^e */
	if (k < e - 52)
		k = e - 52;
	if (dd / eps * (1 + T_SLACK) >= T_MAX)
		return sovmesh_fail(err, -EINVAL,
		                    "epsilon %g is too small for %llu values: the noise would "
		                    "exceed the sampler's range (2^62 grid steps)",
		                    eps, (unsigned long long)d);
	for (;; k++) {
		if (k < DBL_MIN_EXP - 1 || k > DBL_MAX_EXP - 65)
			return sovmesh_fail(
			    err, -EINVAL,
			    "clip %g with sensitivity %g and epsilon %g needs a noise "
			    "grid 2^%d outside the double range",
			    clip, sens, eps, k);
		double g = ldexp(1.0, k);
		double tr = (sens * (1 + CLIP_SLACK) / g + dd) / eps * (1 + T_SLACK);
		if (tr <= T_MAX) {
			gr->k = k;
			gr->g = g;
			gr->t = tr <= 1 ? 1 : (uint64_t)ceil(tr);
			return 0;
		}
	}
}

static const char *dtype_name(sovmesh_dtype dt)
{
	switch (dt) {
	case SOVMESH_DTYPE_F16:
		return "F16";
	case SOVMESH_DTYPE_BF16:
		return "BF16";
	default:
		return sovmesh_dtype_size(dt) ? "integer or 8-bit" : "unknown";
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
			    "tensor '%s' has dtype %s; laplace perturbs F32 and F64 "
			    "only (the host converts others first)",
			    t->name, dtype_name(t->dtype));
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

/* The L1 norm of the whole set (Neumaier-compensated, so the clipped
 * norm is C to a few ulps), refusing non-finite values. */
static int l1_norm(const sovmesh_tensor_set *set, double *norm, sovmesh_error *err)
{
	double sum = 0, comp = 0;
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
			double a = fabs(v), s = sum + a;
			comp += fabs(sum) >= a ? (sum - s) + a : (a - s) + sum;
			sum = s;
		}
	}
	*norm = sum + comp;
	if (!isfinite(*norm))
		return sovmesh_fail(err, -EINVAL, "the L1 norm of the set overflows a double");
	return 0;
}

/*
 * The perturb op (noise.h).  The set is untouched when 0 is not returned
 * because of its input; if the host's RNG fails midway (-EIO) the set is
 * partly noised and must be discarded.
 */
static int laplace_perturb(void *instance, sovmesh_tensor_set *set,
                           const sovmesh_noise_params *params, sovmesh_privacy_cost *cost,
                           sovmesh_error *err)
{
	laplace *lp = instance;
	double sens = 0, norm = 0;
	uint64_t d = 0;
	int rc = check_params(lp, params, &sens, err);
	if (rc == 0)
		rc = check_set(set, &d, err);
	if (rc == 0)
		rc = l1_norm(set, &norm, err);
	if (rc < 0)
		return rc;
	if (!cost)
		return sovmesh_fail(err, -EINVAL, "no cost struct to fill");
	grid gr = {0};
	if (d > 0 && (rc = choose_grid(sens, params->clip, params->epsilon, d, &gr, err)) < 0)
		return rc;

	double scale = norm > params->clip ? params->clip / norm : 1.0;
	rstream *r = lp->api->calloc(lp->host, 1, sizeof(*r));
	if (!r)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	r->host = lp->host;
	r->api = lp->api;
	for (size_t i = 0; i < set->count && d > 0; i++) {
		sovmesh_tensor *t = &set->tensors[i];
		uint64_t n = sovmesh_tensor_numel(t);
		for (uint64_t j = 0; j < n; j++) {
			double x = sovmesh_tensor_get(t, j) * scale;
			/* |x / g| <= clip / g <= 2^52: exact in int64. */
			int64_t k = (int64_t)rint(x / gr.g);
			i128 m = (i128)k + discrete_laplace(r, gr.t);
			sovmesh_tensor_set_value(t, j, (double)m * gr.g);
		}
	}
	rc = r->err;
	lp->api->free(lp->host, r);
	if (rc < 0)
		return sovmesh_fail(err, -EIO,
		                    "the host's random_bytes failed (%d); the set is "
		                    "partly noised and must be discarded",
		                    rc);

	fill_cost(params, sens, cost);
	if (lp->api->log)
		lp->api->log(lp->host, SOVMESH_LOG_DEBUG,
		             "perturbed %llu values: L1 norm %g clipped to %g, sensitivity %g, "
		             "epsilon %g, grid 2^%d, discrete Laplace t = %llu (scale %g)",
		             (unsigned long long)d, norm, params->clip, sens, params->epsilon, gr.k,
		             (unsigned long long)gr.t, gr.g * (double)gr.t);
	return 0;
}

static const sovmesh_noise_ops laplace_ops = {
    .size = sizeof(sovmesh_noise_ops),
    .cost = laplace_cost,
    .perturb = laplace_perturb,
};

static const sovmesh_plugin_descriptor laplace_descriptor = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_NOISE,
    .name = "laplace",
    .version = "1.0.0",
    .license = "MIT",
    .description = "L1 clipping + discrete Laplace noise on a power-of-two grid (pure epsilon-DP)",
    .settings = laplace_settings,
    .create = laplace_create,
    .destroy = laplace_destroy,
    .ops = &laplace_ops,
};

SOVMESH_PLUGIN_DEFINE(laplace_descriptor)

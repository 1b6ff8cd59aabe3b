/* SPDX-License-Identifier: MIT */
/*
 * dp-signrr — example sovmesh noise mechanism: randomized response on
 * the signs of an update ("signSGD with randomized response").
 *
 * The template to copy for a noise plugin of your own.  It shows:
 *   1. settings with help text, checked again in create();
 *   2. cost(): what one release spends, computed from the parameters
 *      alone, so the daemon can charge its budget ledger BEFORE any data
 *      is touched;
 *   3. perturb(): check the whole input first (an input error leaves the
 *      set untouched), then release;
 *   4. randomness only from the host's random_bytes, used through exact
 *      integer comparisons.
 *
 * The mechanism.  The set's d values (all tensors together) are one
 * vector x.  For each value j:
 *
 *     s_j = -1 if x_j < 0, else +1        (a zero counts as +1)
 *     y_j = s_j with probability p = e^e' / (1 + e^e'), else -s_j
 *     e'  = epsilon / d
 *     out_j = m * y_j
 *
 * where the magnitude m is the same for every value and depends only on
 * public numbers: m = C / d (setting magnitude = "l1", the default: the
 * release has L1 norm exactly C, like a delta dp-laplace clipped to C) or
 * m = C ("linf").  With debias = true, m is divided by (2p - 1), so that
 * E[out_j] = (C/d or C) * s_j.
 *
 * Privacy (replace-one: the party's whole delta may be any other delta).
 * Each y_j depends only on s_j and its own coin, and for one value
 * P(y | s) / P(y | s') <= p / (1 - p) = e^e'.  The coins are independent,
 * so for two inputs whose signs differ in k <= d places the ratio is at
 * most e^(k e') <= e^(d e') = e^epsilon: the release is epsilon-DP, delta
 * = 0.  out = m * y is post-processing of y.  The magnitudes of x never
 * enter, which is why clipping is not needed (and C only sets m).
 *
 * This is the honest per-value split of epsilon: every value gets e' =
 * epsilon / d.  For a realistic d it is very noisy (d = 650, epsilon = 1:
 * each sign survives with probability 0.50038) — that is the price of
 * releasing d bits under pure DP, not a flaw of the code.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* The SDK is header-only: no symbol of the daemon is linked. */
#include <sovmesh/noise.h>

#define SIGNRR_VERSION "1.0.0"

/*
 * The keep threshold.  A value keeps its sign iff a uniform 64-bit random
 * integer u satisfies u < T, which happens with probability exactly
 * p_hat = T / 2^64.  T is the one floating-point quantity of the
 * mechanism, so it is rounded in the SAFE direction: p_hat must never
 * exceed p, or the release would spend more than the epsilon reported.
 *
 *   q = 1 / (1 + exp(-e'))      p to a few ulps (libm's exp is within
 *                               1 ulp; the add and divide round once each;
 *                               rounding e' = epsilon / d moves q by less
 *                               than an ulp, since dq/q = e' (1 - q) de'/e')
 *   T = floor(q * (1 - 2^-40) * 2^64), at least 2^63
 *
 * The 2^-40 margin is far larger than any rounding of q, so p_hat < p and
 * p_hat / (1 - p_hat) < e^e'.  T >= 2^63 keeps p_hat >= 1/2: for a tiny
 * e' (below about 2^-39) the margin itself would push p_hat under 1/2,
 * and then the other ratio, (1 - p_hat) / p_hat, could exceed e^e'.  q * (1 - 2^-40) <= 1 - 2^-40
 * (rounding is monotone and 1 - 2^-40 is a double), so T < 2^64 fits.
 */
#define KEEP_MARGIN 0x1p-40

/* 1. Settings.  The host checks names and types before create(); a STRING
 * has no list of allowed values in the ABI, so create() checks it. */
static const sovmesh_setting_def signrr_settings[] = {
    {
        .name = "magnitude",
        .type = SOVMESH_SETTING_STRING,
        .default_value = "l1",
        .help = "size of each released value: \"l1\" = clip/d (the release has L1 norm clip) "
                "or \"linf\" = clip",
    },
    {
        .name = "debias",
        .type = SOVMESH_SETTING_BOOL,
        .default_value = "false",
        .help = "divide each released value by (2p-1), so its mean is the true sign times "
                "the magnitude (much larger values at small epsilon)",
    },
    {.name = NULL},
};

typedef struct signrr {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	int linf;   /* magnitude = "linf" */
	int debias; /* debias = true */
} signrr;

/* 2. create()/destroy().  Loop thread: read the settings here and keep
 * them, because perturb() may run on a worker thread where the setting_*
 * slots are not allowed. */
static int signrr_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                         sovmesh_error *err)
{
	/* random_bytes is in ABI 1.0, but a noise mechanism that cannot get
	 * cryptographic randomness must refuse to exist, never fall back. */
	if (!SOVMESH_HAS_SLOT(api, sovmesh_host_api, random_bytes))
		return sovmesh_fail(err, -ENOTSUP,
		                    "the host offers no random_bytes slot; signrr draws its coins "
		                    "only from the host's cryptographic RNG");
	const char *mag = api->setting_string(host, "magnitude");
	int linf;
	if (mag && strcmp(mag, "l1") == 0)
		linf = 0;
	else if (mag && strcmp(mag, "linf") == 0)
		linf = 1;
	else
		return sovmesh_fail(err, -EINVAL,
		                    "setting magnitude: must be \"l1\" or \"linf\", got \"%s\"",
		                    mag ? mag : "(none)");
	signrr *s = api->calloc(host, 1, sizeof(*s));
	if (!s)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	s->host = host;
	s->api = api;
	s->linf = linf;
	s->debias = api->setting_bool(host, "debias") != 0;
	*instance = s;
	return 0;
}

static void signrr_destroy(void *instance)
{
	signrr *s = instance;
	if (s)
		s->api->free(s->host, s);
}

/* The parameters, checked the same way by cost() and perturb(). */
static int check_params(const sovmesh_noise_params *p, sovmesh_error *err)
{
	if (!p)
		return sovmesh_fail(err, -EINVAL, "no noise parameters given");
	/* A host may pass a longer struct (newer ABI); never a shorter one
	 * than the members we read. */
	if (p->size < offsetof(sovmesh_noise_params, clip) + sizeof(p->clip))
		return sovmesh_fail(err, -EINVAL, "noise parameters size %u is too small (need %zu)",
		                    p->size, offsetof(sovmesh_noise_params, clip) + sizeof(p->clip));
	if (!isfinite(p->epsilon) || p->epsilon <= 0)
		return sovmesh_fail(err, -EINVAL, "epsilon %g must be a finite number > 0",
		                    p->epsilon);
	if (!isfinite(p->clip) || p->clip <= 0)
		return sovmesh_fail(err, -EINVAL, "clip %g must be a finite number > 0", p->clip);
	if (!isfinite(p->delta) || p->delta < 0)
		return sovmesh_fail(err, -EINVAL,
		                    "delta %g must be a finite number >= 0 (signrr is pure "
		                    "epsilon-DP and spends delta = 0)",
		                    p->delta);
	return 0;
}

/*
 * What one release costs.  Family OTHER: the core knows no tighter
 * composition for this mechanism, so its ledger (basic or rdp) adds this
 * (epsilon, 0) on top of everything else.  noise_multiplier and
 * sensitivity are meaningful only for LAPLACE and GAUSSIAN; 0 here.
 */
static void fill_cost(const sovmesh_noise_params *p, sovmesh_privacy_cost *cost)
{
	cost->epsilon = p->epsilon;
	cost->delta = 0;
	cost->family = SOVMESH_NOISE_OTHER;
	cost->noise_multiplier = 0;
	cost->sensitivity = 0;
}

static int signrr_cost(void *instance, const sovmesh_noise_params *params,
                       sovmesh_privacy_cost *cost, sovmesh_error *err)
{
	(void)instance;
	int r = check_params(params, err);
	if (r < 0)
		return r;
	if (!cost)
		return sovmesh_fail(err, -EINVAL, "no cost struct to fill");
	fill_cost(params, cost);
	return 0;
}

/* T for e' (see KEEP_MARGIN). */
static uint64_t keep_threshold(double eps_value)
{
	double q = 1.0 / (1.0 + exp(-eps_value));
	double t = floor(q * (1.0 - KEEP_MARGIN) * 0x1p64);
	if (!(t > 0x1p63)) /* also catches a NaN */
		return UINT64_C(1) << 63;
	return (uint64_t)t;
}

/* Random 64-bit words from the host, a buffer at a time. */
typedef struct rwords {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	size_t pos; /* next unused byte of buf; sizeof(buf) = empty */
	int err;    /* first random_bytes failure */
	unsigned char buf[4096];
} rwords;

static int next_word(rwords *r, uint64_t *w)
{
	if (r->pos + sizeof(*w) > sizeof(r->buf)) {
		int rc = r->api->random_bytes(r->host, r->buf, sizeof(r->buf));
		if (rc < 0)
			return r->err = rc;
		r->pos = 0;
	}
	memcpy(w, r->buf + r->pos, sizeof(*w));
	r->pos += sizeof(*w);
	return 0;
}

/* Dtype and size of every tensor, and every value finite; *d = count. */
static int check_set(const sovmesh_tensor_set *set, uint64_t *d, sovmesh_error *err)
{
	if (!set || (set->count && !set->tensors))
		return sovmesh_fail(err, -EINVAL, "no tensor set to perturb");
	*d = 0;
	for (size_t i = 0; i < set->count; i++) {
		const sovmesh_tensor *t = &set->tensors[i];
		if (t->dtype != SOVMESH_DTYPE_F32 && t->dtype != SOVMESH_DTYPE_F64)
			return sovmesh_fail(err, -ENOTSUP,
			                    "tensor '%s' has dtype %s; signrr perturbs F32 and F64 "
			                    "only (the host converts others first)",
			                    t->name, sovmesh_dtype_name(t->dtype));
		uint64_t n = sovmesh_tensor_numel(t);
		if (t->nbytes != n * sovmesh_dtype_size(t->dtype) || (t->nbytes && !t->data))
			return sovmesh_fail(err, -EINVAL,
			                    "tensor '%s' has %llu bytes of data, expected %llu",
			                    t->name, (unsigned long long)t->nbytes,
			                    (unsigned long long)(n * sovmesh_dtype_size(t->dtype)));
		for (uint64_t j = 0; j < n; j++) {
			double v = sovmesh_tensor_get(t, j);
			if (!isfinite(v))
				return sovmesh_fail(err, -EINVAL, "tensor '%s' element %llu is %s",
				                    t->name, (unsigned long long)j,
				                    isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf");
		}
		*d += n;
	}
	return 0;
}

/*
 * 3. The release.  May run on a worker thread: only the any-thread host
 * slots (log, memory, random_bytes) are used.  An input error returns
 * before anything is written; a failing random_bytes (-EIO) leaves the
 * set partly released, and the host discards it.
 */
static int signrr_perturb(void *instance, sovmesh_tensor_set *set,
                          const sovmesh_noise_params *params, sovmesh_privacy_cost *cost,
                          sovmesh_error *err)
{
	signrr *s = instance;
	uint64_t d = 0;
	int r = check_params(params, err);
	if (r == 0)
		r = check_set(set, &d, err);
	if (r < 0)
		return r;
	if (!cost)
		return sovmesh_fail(err, -EINVAL, "no cost struct to fill");
	if (d == 0) { /* nothing to release; the charge stands (conservative) */
		fill_cost(params, cost);
		return 0;
	}

	/* Everything below depends on public numbers only (epsilon, clip,
	 * d, the settings) — never on the values of x. */
	double eps_value = params->epsilon / (double)d;
	uint64_t keep_below = keep_threshold(eps_value);
	double p_hat = (double)keep_below * 0x1p-64;
	double m = s->linf ? params->clip : params->clip / (double)d;
	if (s->debias) {
		/* 2 p_hat - 1 > 0 unless p_hat is exactly 1/2 (tiny e'): then
		 * the output carries no signal and cannot be debiased. */
		double bias = 2.0 * p_hat - 1.0;
		if (!(bias > 0))
			return sovmesh_fail(err, -EINVAL,
			                    "debias: epsilon %g over %llu values leaves each sign "
			                    "kept with probability 1/2; nothing to debias",
			                    params->epsilon, (unsigned long long)d);
		m /= bias;
		if (!isfinite(m))
			return sovmesh_fail(err, -EINVAL,
			                    "debias: clip %g / (2p-1 = %g) overflows a double",
			                    params->clip, 2.0 * p_hat - 1.0);
	}

	/* An F32 tensor cannot hold a magnitude beyond FLT_MAX: refuse rather
	 * than release infinities. */
	for (size_t i = 0; i < set->count; i++)
		if (set->tensors[i].dtype == SOVMESH_DTYPE_F32 && m > (double)FLT_MAX)
			return sovmesh_fail(err, -EINVAL,
			                    "magnitude %g does not fit tensor '%s' (F32); lower "
			                    "the clip",
			                    m, set->tensors[i].name);

	rwords *rw = s->api->calloc(s->host, 1, sizeof(*rw));
	if (!rw)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	rw->host = s->host;
	rw->api = s->api;
	rw->pos = sizeof(rw->buf);
	for (size_t i = 0; i < set->count && !rw->err; i++) {
		sovmesh_tensor *t = &set->tensors[i];
		uint64_t n = sovmesh_tensor_numel(t);
		for (uint64_t j = 0; j < n; j++) {
			uint64_t u;
			if (next_word(rw, &u) < 0)
				break;
			double sign = sovmesh_tensor_get(t, j) < 0 ? -1.0 : 1.0;
			/* The coin: an exact integer comparison, no float. */
			if (u >= keep_below)
				sign = -sign;
			sovmesh_tensor_set_value(t, j, sign * m);
		}
	}
	r = rw->err;
	s->api->free(s->host, rw);
	if (r < 0)
		return sovmesh_fail(err, -EIO,
		                    "the host's random_bytes failed (%d); the set is partly "
		                    "released and must be discarded",
		                    r);
	fill_cost(params, cost);
	/* Public numbers only.  Never log the coins (e.g. how many signs
	 * were flipped): with the release they give the input's signs away. */
	s->api->log(s->host, SOVMESH_LOG_DEBUG,
	            "released %llu signs: epsilon %g per release, %g per value, keep "
	            "probability %.17g (threshold %llu / 2^64), magnitude %g",
	            (unsigned long long)d, params->epsilon, eps_value, p_hat,
	            (unsigned long long)keep_below, m);
	return 0;
}

static const sovmesh_noise_ops signrr_ops = {
    .size = sizeof(sovmesh_noise_ops),
    .cost = signrr_cost,
    .perturb = signrr_perturb,
};

/* 4. The descriptor; the file must be dp-<name>.so = dp-signrr.so. */
static const sovmesh_plugin_descriptor signrr_descriptor = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_NOISE,
    .name = "signrr",
    .version = SIGNRR_VERSION,
    .license = "MIT",
    .description = "randomized response on signs: each sign kept with probability "
                   "e^(eps/d)/(1+e^(eps/d)) (pure epsilon-DP)",
    .settings = signrr_settings,
    .create = signrr_create,
    .destroy = signrr_destroy,
    .ops = &signrr_ops,
};

/* The one exported symbol. */
SOVMESH_PLUGIN_DEFINE(signrr_descriptor)

/* SPDX-License-Identifier: MIT */
/*
 * dp-none: NO PRIVACY.  The baseline for experiments: the update is
 * checked (F32/F64, finite) and, by default, clipped to L2 norm C exactly
 * as dp-gaussian clips it, but no noise is added; cost() says epsilon =
 * +inf.  It lets a researcher measure what the noise of a real mechanism
 * costs in accuracy.  The daemon refuses it unless the config explicitly
 * allows it (docs/differential-privacy.md, "No noise (baseline)").
 */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <sovmesh/noise.h>
#include <sovmesh/plugin.h>

typedef struct none {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	int clip; /* clip to L2 norm params->clip before passing through */
} none;

static const sovmesh_setting_def none_settings[] = {
    {
        .name = "clip",
        .type = SOVMESH_SETTING_BOOL,
        .default_value = "true",
        .help = "clip the set to L2 norm noise_clip like gaussian does (true, default), "
                "or pass it through unchanged",
    },
    {.name = NULL},
};

static int none_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                       sovmesh_error *err)
{
	if (!api || !api->calloc || !api->free)
		return sovmesh_fail(err, -EINVAL, "the host offers no memory slots");
	none *nn = api->calloc(host, 1, sizeof(*nn));
	if (!nn)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	nn->host = host;
	nn->api = api;
	nn->clip = api->setting_bool ? api->setting_bool(host, "clip") : 1;
	if (api->log)
		api->log(host, SOVMESH_LOG_WARNING,
		         "NO PRIVACY: updates leave %s but without noise (epsilon = inf); "
		         "a baseline for experiments only",
		         nn->clip ? "clipped" : "unchanged");
	*instance = nn;
	return 0;
}

static void none_destroy(void *instance)
{
	none *nn = instance;
	if (nn)
		nn->api->free(nn->host, nn);
}

/* Epsilon and delta are ignored (nothing is protected); clip is checked
 * only when clipping. */
static int check_params(const none *nn, const sovmesh_noise_params *p, sovmesh_error *err)
{
	if (!p)
		return sovmesh_fail(err, -EINVAL, "no noise parameters given");
	if (p->size < offsetof(sovmesh_noise_params, clip) + sizeof(p->clip))
		return sovmesh_fail(err, -EINVAL,
		                    "noise parameters size %u is too small (need %zu)", p->size,
		                    offsetof(sovmesh_noise_params, clip) + sizeof(p->clip));
	if (nn->clip && (!isfinite(p->clip) || p->clip <= 0))
		return sovmesh_fail(err, -EINVAL, "clip %g must be a finite number > 0", p->clip);
	return 0;
}

static void fill_cost(sovmesh_privacy_cost *cost)
{
	cost->size = sizeof(*cost);
	cost->epsilon = INFINITY;
	cost->delta = 0;
	cost->family = SOVMESH_NOISE_NONE;
	cost->noise_multiplier = 0;
	cost->sensitivity = 0; /* no noise was calibrated to anything */
}

static int none_cost(void *instance, const sovmesh_noise_params *params, sovmesh_privacy_cost *cost,
                     sovmesh_error *err)
{
	int rc = check_params(instance, params, err);
	if (rc < 0)
		return rc;
	if (!cost)
		return sovmesh_fail(err, -EINVAL, "no cost struct to fill");
	fill_cost(cost);
	return 0;
}

static int check_set(const sovmesh_tensor_set *set, uint64_t *d, sovmesh_error *err)
{
	if (!set || (set->count && !set->tensors))
		return sovmesh_fail(err, -EINVAL, "no tensor set to perturb");
	*d = 0;
	for (size_t i = 0; i < set->count; i++) {
		const sovmesh_tensor *t = &set->tensors[i];
		if (t->dtype != SOVMESH_DTYPE_F32 && t->dtype != SOVMESH_DTYPE_F64)
			return sovmesh_fail(err, -ENOTSUP,
			                    "tensor '%s' has dtype %s; none takes F32 and F64 only "
			                    "(the host converts others first)",
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

/* The L2 norm of the whole set (as dp-gaussian computes it: power-of-two
 * scaling, Neumaier-compensated sum), refusing non-finite values. */
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

/* The perturb op (noise.h): check, clip, nothing else.  The set is
 * untouched when an error is returned. */
static int none_perturb(void *instance, sovmesh_tensor_set *set, const sovmesh_noise_params *params,
                        sovmesh_privacy_cost *cost, sovmesh_error *err)
{
	none *nn = instance;
	double norm = 0;
	uint64_t d = 0;
	int rc = check_params(nn, params, err);
	if (rc == 0)
		rc = check_set(set, &d, err);
	if (rc == 0)
		rc = l2_norm(set, &norm, err);
	if (rc < 0)
		return rc;
	if (!cost)
		return sovmesh_fail(err, -EINVAL, "no cost struct to fill");
	if (nn->clip && norm > params->clip) {
		double scale = params->clip / norm;
		for (size_t i = 0; i < set->count; i++) {
			sovmesh_tensor *t = &set->tensors[i];
			uint64_t n = sovmesh_tensor_numel(t);
			for (uint64_t j = 0; j < n; j++)
				sovmesh_tensor_set_value(t, j, sovmesh_tensor_get(t, j) * scale);
		}
	}
	fill_cost(cost);
	if (nn->api->log && nn->clip)
		nn->api->log(nn->host, SOVMESH_LOG_DEBUG,
		             "passed %llu values WITHOUT noise: L2 norm %g clipped to %g",
		             (unsigned long long)d, norm, params->clip);
	else if (nn->api->log)
		nn->api->log(nn->host, SOVMESH_LOG_DEBUG,
		             "passed %llu values WITHOUT noise or clipping: L2 norm %g",
		             (unsigned long long)d, norm);
	return 0;
}

static const sovmesh_noise_ops none_ops = {
    .size = sizeof(sovmesh_noise_ops),
    .cost = none_cost,
    .perturb = none_perturb,
};

static const sovmesh_plugin_descriptor none_descriptor = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_NOISE,
    .name = "none",
    .version = "1.0.0",
    .license = "MIT",
    .description = "NO PRIVACY: baseline for experiments (L2 clipping, no noise, epsilon = inf)",
    .settings = none_settings,
    .create = none_create,
    .destroy = none_destroy,
    .ops = &none_ops,
};

SOVMESH_PLUGIN_DEFINE(none_descriptor)

/* SPDX-License-Identifier: MIT */
/*
 * One source, many test plugins: tests/plugins/meson.build builds it once
 * per variant with a -DTP_<VARIANT> flag.  TP_GOOD is a working averaging
 * aggregator; every other variant breaks exactly one thing the loader
 * must refuse (or, TP_OLDMINOR, must accept).  Uses only the SDK.
 */
#include <errno.h>
#include <math.h>

#include <sovmesh/sovmesh.h>

/* Each variant leaves out some piece on purpose; no warning for that. */
#define TP_UNUSED __attribute__((unused))

#ifdef TP_UNRESOLVED
/* Defined nowhere: dlopen(RTLD_NOW) must fail on it. */
extern int sovmesh_test_symbol_that_does_not_exist(void);
#endif

TP_UNUSED static int tp_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                               sovmesh_error *err)
{
	(void)host;
	(void)api;
	(void)err;
#ifdef TP_UNRESOLVED
	if (sovmesh_test_symbol_that_does_not_exist())
		return -EINVAL;
#endif
	*instance = NULL; /* stateless */
	return 0;
}

#ifdef TP_WRONGKIND
/* A noise mechanism's descriptor in an agg-*.so file. */
static int tp_cost(void *instance, const sovmesh_noise_params *params, sovmesh_privacy_cost *cost,
                   sovmesh_error *err)
{
	(void)instance;
	(void)params;
	(void)cost;
	return sovmesh_fail(err, -ENOTSUP, "test plugin");
}

static int tp_perturb(void *instance, sovmesh_tensor_set *set, const sovmesh_noise_params *params,
                      sovmesh_privacy_cost *cost, sovmesh_error *err)
{
	(void)set;
	return tp_cost(instance, params, cost, err);
}

static const sovmesh_noise_ops tp_ops = {
    .size = sizeof(sovmesh_noise_ops),
    .cost = tp_cost,
    .perturb = tp_perturb,
};
#define TP_KIND SOVMESH_KIND_NOISE

#elif defined(TP_OLDMINOR)
/*
 * A discovery plugin "built against an older minor": its table is declared
 * to end after start(), so the host must see stop/update/refresh as NULL
 * even though this object happens to have them set.
 */
static int tp_start(void *instance, const sovmesh_local_service *self,
                    const sovmesh_discovery_sink *sink, void *ctx, sovmesh_error *err)
{
	(void)instance;
	(void)self;
	(void)sink;
	(void)ctx;
	(void)err;
	return 0;
}

static void tp_stop(void *instance)
{
	(void)instance;
}

static int tp_update(void *instance, const sovmesh_local_service *self, sovmesh_error *err)
{
	(void)instance;
	(void)self;
	(void)err;
	return 0;
}

static const sovmesh_discovery_ops tp_ops = {
    .size = offsetof(sovmesh_discovery_ops, start) + sizeof(void (*)(void)),
    .start = tp_start,
    .stop = tp_stop,
    .update = tp_update,
    .refresh = tp_stop,
};
#define TP_KIND SOVMESH_KIND_DISCOVERY

#else
/* Weighted mean of the inputs, element by element. */
TP_UNUSED static int tp_aggregate(void *instance, const sovmesh_tensor_set *const *inputs,
                                  const double *weights, size_t n, sovmesh_tensor_set *out,
                                  sovmesh_error *err)
{
	(void)instance;
	if (n == 0)
		return sovmesh_fail(err, -EINVAL, "no inputs to aggregate");
	double total = 0;
	for (size_t i = 0; i < n; i++) {
		size_t bad;
		if (!sovmesh_tensor_set_same_layout(inputs[0], inputs[i], &bad))
			return sovmesh_fail(err, -EINVAL,
			                    "input %zu: tensor %zu differs from input 0's layout",
			                    i, bad);
		if (!isfinite(weights[i]) || weights[i] <= 0)
			return sovmesh_fail(err, -EINVAL,
			                    "input %zu: weight must be finite and > 0", i);
		total += weights[i];
	}
	for (size_t t = 0; t < out->count; t++) {
		sovmesh_tensor *o = &out->tensors[t];
		if (!sovmesh_dtype_is_float(o->dtype))
			return sovmesh_fail(err, -ENOTSUP, "tensor '%s': not a float dtype",
			                    o->name);
		uint64_t numel = sovmesh_tensor_numel(o);
		for (uint64_t e = 0; e < numel; e++) {
			double sum = 0;
			for (size_t i = 0; i < n; i++) {
				double v = sovmesh_tensor_get(&inputs[i]->tensors[t], e);
				if (!isfinite(v))
					return sovmesh_fail(
					    err, -EINVAL,
					    "input %zu: tensor '%s' has a non-finite value", i,
					    o->name);
				sum += weights[i] * v;
			}
			sovmesh_tensor_set_value(o, e, sum / total);
		}
	}
	return 0;
}

TP_UNUSED static const sovmesh_aggregator_ops tp_ops = {
#if defined(TP_SMALLOPS)
    .size = sizeof(uint32_t), /* ends before aggregate */
#else
    .size = sizeof(sovmesh_aggregator_ops),
#endif
#if defined(TP_NULLSLOT)
    .aggregate = NULL,
#else
    .aggregate = tp_aggregate,
#endif
};
#define TP_KIND SOVMESH_KIND_AGGREGATOR
#endif

#ifndef TP_NAME
#error "build with -DTP_NAME=\"...\""
#endif

static const sovmesh_setting_def tp_settings[] = {
    {"scale", SOVMESH_SETTING_DOUBLE, "1.0", 0, 10, "unused; shows a declared setting"},
    {NULL, 0, NULL, 0, 0, NULL},
};

static const sovmesh_plugin_descriptor tp_descriptor = {
#ifdef TP_BADMAGIC
    .magic = UINT64_C(0x4d5a90000300000),
#else
    .magic = SOVMESH_PLUGIN_MAGIC,
#endif
#ifdef TP_SMALLDESC
    .size = 8,
#else
    .size = sizeof(sovmesh_plugin_descriptor),
#endif
#ifdef TP_ABIMAJOR
    .abi_major = SOVMESH_ABI_MAJOR + 1,
#else
    .abi_major = SOVMESH_ABI_MAJOR,
#endif
#ifdef TP_ABIMINOR
    .abi_minor = SOVMESH_ABI_MINOR + 1,
#else
    .abi_minor = SOVMESH_ABI_MINOR,
#endif
#ifdef TP_UNKNOWNKIND
    .kind = 99,
#else
    .kind = TP_KIND,
#endif
    .name = TP_NAME,
#ifdef TP_NOVERSION
    .version = NULL,
#else
    .version = "0.0.1",
#endif
    .license = "MIT",
    .description = "sovmesh loader test plugin",
    .settings = tp_settings,
#ifdef TP_NOCREATE
    .create = NULL,
#else
    .create = tp_create,
#endif
    .destroy = NULL,
#ifdef TP_NOOPS
    .ops = NULL,
#else
    .ops = &tp_ops,
#endif
};

#if defined(TP_NOSYMBOL)
/* Exports an entry under another name: the loader finds no entry symbol. */
SOVMESH_EXPORT const sovmesh_plugin_descriptor *sovmesh_plugin_entry_v0(void);
SOVMESH_EXPORT const sovmesh_plugin_descriptor *sovmesh_plugin_entry_v0(void)
{
	return &tp_descriptor;
}
#elif defined(TP_NULLDESC)
SOVMESH_EXPORT const sovmesh_plugin_descriptor *sovmesh_plugin_entry(void);
SOVMESH_EXPORT const sovmesh_plugin_descriptor *sovmesh_plugin_entry(void)
{
	return tp_descriptor.name ? NULL : &tp_descriptor;
}
#else
SOVMESH_PLUGIN_DEFINE(tp_descriptor)
#endif

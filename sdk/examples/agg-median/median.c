/* SPDX-License-Identifier: MIT */
/*
 * agg-median — example sovmesh aggregator: the coordinate-wise median.
 *
 * This file is the template to copy when writing a plugin of your own.
 * It shows every part a plugin needs:
 *   1. a settings list           (what `plugin_settings.agg-median` and
 *                                 `--param` may set),
 *   2. create()/destroy()        (one instance per use; reads settings),
 *   3. the kind's ops table      (here sovmesh_aggregator_ops),
 *   4. the descriptor and SOVMESH_PLUGIN_DEFINE (the one exported symbol).
 *
 * Output element j of each tensor is the median of element j over the n
 * inputs.  The median is robust: up to half the parties can send garbage
 * and the result stays within the range of the honest values.  Weights
 * (the parties' sample counts) are validated but otherwise IGNORED — a
 * weighted median would let one party claiming many samples decide the
 * result, which is what a robust aggregator is meant to prevent.
 *
 * For an even n the setting even_rule picks the value: "mean" (default,
 * the mean of the two middle values) or "lower" (the lower middle value,
 * which is always one of the inputs).
 *
 * Build out of tree with the Makefile beside this file (pkg-config
 * sovmesh-plugin); the file must be named agg-median.so: "agg" is the
 * aggregator kind's prefix and "median" the descriptor's name.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The SDK is header-only: the plugin links no symbol of the daemon and
 * reaches it only through the host API table passed to create(). */
#include <sovmesh/aggregator.h>

#define MEDIAN_VERSION "1.0.0"

/*
 * 1. Settings.  The host validates names and types (an unknown key or a
 * non-string value is refused before create() runs); a STRING setting has
 * no allowed-values list in the ABI, so create() checks the value itself.
 */
static const sovmesh_setting_def median_settings[] = {
    {
        .name = "even_rule",
        .type = SOVMESH_SETTING_STRING,
        .default_value = "mean",
        .help = "even number of inputs: \"mean\" of the two middle values or \"lower\" one",
    },
    {.name = NULL}, /* the list ends with a NULL name */
};

/* Per-instance state.  Keep the host and api pointers: every host slot
 * takes `host` as its first argument. */
typedef struct median_instance {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	int even_lower; /* 1: even_rule = "lower" */
} median_instance;

/*
 * 2. create()/destroy().  create() runs on the loop thread, so the
 * setting_* slots may be used here (they may not be used in aggregate(),
 * which can run on a worker thread).  On failure fill err and return a
 * negative errno; destroy() is then not called.
 */
static int median_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                         sovmesh_error *err)
{
	/* Every slot used here exists since ABI 1.0.  A slot added in a later
	 * minor version must be checked first:
	 *   if (!SOVMESH_HAS_SLOT(api, sovmesh_host_api, new_slot)) ...  */
	const char *rule = api->setting_string(host, "even_rule");
	int lower;
	if (rule == NULL) /* cannot happen for a declared setting */
		return sovmesh_fail(err, -EINVAL, "setting even_rule: no value");
	if (strcmp(rule, "mean") == 0)
		lower = 0;
	else if (strcmp(rule, "lower") == 0)
		lower = 1;
	else
		/* Name the setting and the bad value; the host adds where it
		 * came from (config file and line, or --param). */
		return sovmesh_fail(err, -EINVAL,
		                    "setting even_rule: must be \"mean\" or \"lower\", got \"%s\"",
		                    rule);

	/* Allocate through the host so memory accounting and out-of-memory
	 * tests cover plugins too. */
	median_instance *m = api->calloc(host, 1, sizeof(*m));
	if (!m)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	m->host = host;
	m->api = api;
	m->even_lower = lower;
	*instance = m;
	return 0;
}

static void median_destroy(void *instance)
{
	median_instance *m = instance;
	if (m)
		m->api->free(m->host, m);
}

/* qsort comparator for finite doubles (NaN was refused earlier). */
static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/*
 * Check what aggregator.h requires before touching any data: n >= 1,
 * weights finite and > 0, every input laid out as inputs[0], float dtypes.
 * Every message names the input index and, where there is one, the tensor,
 * so the user can tell which file is at fault.
 */
static int median_check(const sovmesh_tensor_set *const *inputs, const double *weights, size_t n,
                        const sovmesh_tensor_set *out, sovmesh_error *err)
{
	if (n == 0)
		return sovmesh_fail(err, -EINVAL, "median needs at least one input, got 0");
	for (size_t k = 0; k < n; k++) {
		if (!isfinite(weights[k]) || weights[k] <= 0)
			return sovmesh_fail(err, -EINVAL,
			                    "input %zu: weight %g is not a finite number > 0", k,
			                    weights[k]);
	}
	const sovmesh_tensor_set *ref = inputs[0];
	for (size_t t = 0; t < ref->count; t++) {
		if (!sovmesh_dtype_is_float(ref->tensors[t].dtype))
			return sovmesh_fail(err, -ENOTSUP,
			                    "input 0: tensor '%s' has dtype %s; median supports "
			                    "F32, F16, BF16 and F64",
			                    ref->tensors[t].name,
			                    sovmesh_dtype_name(ref->tensors[t].dtype));
	}
	/* The SDK's helper says which input differs and how. */
	int r = sovmesh_check_same_layouts(inputs, n, err);
	if (r < 0)
		return r;
	/* The host made `out` from inputs[0]; trust but verify. */
	if (!sovmesh_tensor_set_same_layout(ref, out, NULL))
		return sovmesh_fail(err, -EINVAL, "output set does not have input 0's layout");
	return 0;
}

/*
 * 3. The operation.  May run on a worker thread: only the any-thread host
 * slots (log, alloc/calloc/realloc/free, random_bytes, tensor helpers) are
 * allowed here.
 */
static int median_aggregate(void *instance, const sovmesh_tensor_set *const *inputs,
                            const double *weights, size_t n, sovmesh_tensor_set *out,
                            sovmesh_error *err)
{
	median_instance *m = instance;
	int r = median_check(inputs, weights, n, out, err);
	if (r < 0)
		return r;

	/* One scratch column: element j of every input. */
	double *col = m->api->alloc(m->host, n * sizeof(*col));
	if (!col)
		return sovmesh_fail(err, -ENOMEM, "out of memory for %zu inputs", n);

	/* Debug level only: never log tensor values at the default level. */
	m->api->log(m->host, SOVMESH_LOG_DEBUG, "median of %zu inputs, %zu tensors, even_rule=%s",
	            n, out->count, m->even_lower ? "lower" : "mean");

	for (size_t t = 0; t < out->count; t++) {
		sovmesh_tensor *dst = &out->tensors[t];
		uint64_t numel = sovmesh_tensor_numel(dst);
		for (uint64_t j = 0; j < numel; j++) {
			for (size_t k = 0; k < n; k++) {
				/* sovmesh_tensor_get widens any float dtype to
				 * double and copes with unaligned data. */
				double v = sovmesh_tensor_get(&inputs[k]->tensors[t], j);
				if (!isfinite(v)) {
					r = sovmesh_fail(err, -EINVAL,
					                 "input %zu: tensor '%s' element %llu is "
					                 "not finite",
					                 k, dst->name, (unsigned long long)j);
					goto out;
				}
				col[k] = v;
			}
			qsort(col, n, sizeof(*col), cmp_double);
			double med;
			if (n % 2 == 1 || m->even_lower)
				med = col[(n - 1) / 2];
			else
				/* Halve first: a + b could overflow for F64. */
				med = col[n / 2 - 1] / 2 + col[n / 2] / 2;
			/* Rounds to the tensor's dtype (F16/BF16 round to nearest
			 * even). */
			sovmesh_tensor_set_value(dst, j, med);
		}
	}
	r = 0;
out:
	m->api->free(m->host, col);
	return r;
}

static const sovmesh_aggregator_ops median_ops = {
    .size = sizeof(sovmesh_aggregator_ops), /* lets the host see what we know */
    .aggregate = median_aggregate,
};

/*
 * 4. The descriptor: a static const object that lives as long as the
 * library.  `name` must match the file name agg-<name>.so.
 */
static const sovmesh_plugin_descriptor median_descriptor = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_AGGREGATOR,
    .name = "median",
    .version = MEDIAN_VERSION,
    .license = "MIT",
    .description = "coordinate-wise median of the inputs (weights ignored)",
    .settings = median_settings,
    .create = median_create,
    .destroy = median_destroy,
    .ops = &median_ops,
};

/* The one exported symbol (sovmesh_plugin_entry).  Everything else is
 * static, and -fvisibility=hidden from sovmesh-plugin.pc keeps it so. */
SOVMESH_PLUGIN_DEFINE(median_descriptor)

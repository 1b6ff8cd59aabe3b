/* SPDX-License-Identifier: MIT */
/*
 * agg-krum: Krum (Blanchard et al. 2017, "Machine Learning with
 * Adversaries: Byzantine Tolerant Gradient Descent").
 *
 *   score(i) = sum of ||x_i - x_j||^2 over the n - f - 2 inputs j != i
 *              nearest to x_i          (all tensors taken as one vector)
 *   out      = x_i* with i* = argmin score (ties: the lowest index)
 *
 * The output is one of the inputs, copied bit for bit.  Setting `f`
 * (default 1) is the number of Byzantine inputs to tolerate; Krum needs
 * n > 2f + 2 and refuses fewer.  The weights (sample counts) are checked
 * but not used.  O(n^2 d) time; memory n^2 + n B doubles.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <sovmesh/aggregator.h>
#include <sovmesh/plugin.h>

#include "../agg-common/agg_common.h"

typedef struct krum {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	size_t f;
} krum;

static const sovmesh_setting_def krum_settings[] = {
    {"f", SOVMESH_SETTING_INT, "1", 0, 100000,
     "number of Byzantine inputs to tolerate; needs more than 2f+2 inputs"},
    {NULL, 0, NULL, 0, 0, NULL},
};

static int krum_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                       sovmesh_error *err)
{
	if (!api->calloc || !api->alloc || !api->free || !api->setting_int)
		return sovmesh_fail(err, -EINVAL, "the host offers no memory or settings slots");
	int64_t f = api->setting_int(host, "f");
	if (f < 0 || f > 100000)
		return sovmesh_fail(err, -EINVAL, "setting 'f' is %lld; it must be in [0, 100000]",
		                    (long long)f);
	krum *kr = api->calloc(host, 1, sizeof(*kr));
	if (!kr)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	kr->host = host;
	kr->api = api;
	kr->f = (size_t)f;
	*instance = kr;
	return 0;
}

static void krum_destroy(void *instance)
{
	krum *kr = instance;
	if (kr)
		kr->api->free(kr->host, kr);
}

/* The aggregate op (aggregator.h).  On failure `out` is untouched. */
static int krum_aggregate(void *instance, const sovmesh_tensor_set *const *inputs,
                          const double *weights, size_t n, sovmesh_tensor_set *out,
                          sovmesh_error *err)
{
	krum *kr = instance;
	int rc = agg_check_inputs("krum", inputs, weights, n, out, NULL, NULL, err);
	if (rc < 0)
		return rc;
	if (n <= 2 * kr->f + 2)
		return sovmesh_fail(err, -EINVAL,
		                    "krum needs more than 2f+2 inputs (n=%zu, f=%zu); lower the "
		                    "setting 'f' or aggregate more inputs",
		                    n, kr->f);
	double *score = kr->api->alloc(kr->host, n * sizeof(double));
	if (!score)
		return sovmesh_fail(err, -ENOMEM, "out of memory for %zu scores", n);
	rc = agg_krum_scores(kr->host, kr->api, inputs, n, kr->f, score, err);
	if (rc == 0) {
		size_t best = 0;
		for (size_t i = 1; i < n; i++)
			if (score[i] < score[best])
				best = i;
		for (size_t k = 0; k < out->count; k++)
			memcpy(out->tensors[k].data, inputs[best]->tensors[k].data,
			       out->tensors[k].nbytes);
		if (kr->api->log)
			kr->api->log(kr->host, SOVMESH_LOG_INFO,
			             "krum selected input %zu of %zu (score %.6g, f=%zu)", best, n,
			             score[best], kr->f);
	}
	kr->api->free(kr->host, score);
	return rc;
}

static const sovmesh_aggregator_ops krum_ops = {
    .size = sizeof(sovmesh_aggregator_ops),
    .aggregate = krum_aggregate,
};

static const sovmesh_plugin_descriptor krum_descriptor = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_AGGREGATOR,
    .name = "krum",
    .version = "1.0.0",
    .license = "MIT",
    .description = "Krum: the input closest to its n-f-2 nearest others (tolerates f attackers)",
    .settings = krum_settings,
    .create = krum_create,
    .destroy = krum_destroy,
    .ops = &krum_ops,
};

SOVMESH_PLUGIN_DEFINE(krum_descriptor)

/* SPDX-License-Identifier: MIT */
/*
 * agg-fedmedian: coordinate-wise median (Yin et al. 2018).
 *
 *   out[c] = median_i x_i[c]    (n even: the mean of the two middle values)
 *
 * Unweighted: the weights (sample counts) are checked like every
 * aggregator's but do not enter the result, so one party cannot buy
 * influence by claiming many samples.  Robust to fewer than n/2 arbitrary
 * inputs per coordinate.
 *
 * Streaming: per block of B coordinates the n inputs are decoded into an
 * n x B matrix whose columns one sorting network sorts (agg_common.h);
 * the middle row(s) are the medians.  Memory: n x B doubles per call.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <sovmesh/aggregator.h>
#include <sovmesh/plugin.h>

#include "../agg-common/agg_common.h"

typedef struct fedmedian {
	sovmesh_host *host;
	const sovmesh_host_api *api;
} fedmedian;

static int fedmedian_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                            sovmesh_error *err)
{
	if (!api->calloc || !api->alloc || !api->free)
		return sovmesh_fail(err, -EINVAL, "the host offers no memory slots");
	fedmedian *fm = api->calloc(host, 1, sizeof(*fm));
	if (!fm)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	fm->host = host;
	fm->api = api;
	*instance = fm;
	return 0;
}

static void fedmedian_destroy(void *instance)
{
	fedmedian *fm = instance;
	if (fm)
		fm->api->free(fm->host, fm);
}

/* res[c] = the median of column c of the sorted n x B matrix m. */
static void median_of_sorted(const double *m, size_t B, size_t n, size_t len, double *res)
{
	const double *lo = m + (n - 1) / 2 * B, *hi = m + n / 2 * B;
	if (lo == hi) {
		memcpy(res, lo, len * sizeof(double));
		return;
	}
	for (size_t c = 0; c < len; c++) {
		double s = lo[c] + hi[c];
		/* lo + hi overflows only for huge values of one sign; halve first then. */
		res[c] = fabs(s) <= DBL_MAX ? 0.5 * s : 0.5 * lo[c] + 0.5 * hi[c];
	}
}

/* The aggregate op (aggregator.h).  On failure `out` is partial. */
static int fedmedian_aggregate(void *instance, const sovmesh_tensor_set *const *inputs,
                               const double *weights, size_t n, sovmesh_tensor_set *out,
                               sovmesh_error *err)
{
	fedmedian *fm = instance;
	int rc = agg_check_inputs("fedmedian", inputs, weights, n, out, NULL, NULL, err);
	if (rc < 0)
		return rc;

	size_t B = agg_block_len(n), npairs = agg_network(n, NULL);
	if (n > SIZE_MAX / sizeof(double) / (B + 1) || npairs > SIZE_MAX / sizeof(uint32_t[2]))
		return sovmesh_fail(err, -ENOMEM, "too many inputs (%zu)", n);
	double *m = fm->api->alloc(fm->host, (n + 1) * B * sizeof(double));
	uint32_t(*pairs)[2] = fm->api->alloc(fm->host, (npairs ? npairs : 1) * sizeof(*pairs));
	if (!m || !pairs) {
		rc = sovmesh_fail(err, -ENOMEM, "out of memory for %zu inputs", n);
		goto out;
	}
	agg_network(n, pairs);
	double *res = m + n * B; /* the extra row */

	const sovmesh_tensor_set *ref = inputs[0];
	for (size_t k = 0; k < ref->count && rc == 0; k++) {
		uint64_t numel = sovmesh_tensor_numel(&ref->tensors[k]);
		for (uint64_t j0 = 0; j0 < numel && rc == 0; j0 += B) {
			size_t len = numel - j0 < B ? (size_t)(numel - j0) : B;
			for (size_t i = 0; i < n; i++) {
				const sovmesh_tensor *t = &inputs[i]->tensors[k];
				if (agg_load(t, j0, len, m + i * B)) {
					rc = agg_value_error(t, i, j0, len, err);
					break;
				}
			}
			if (rc < 0)
				break;
			agg_sort_columns(m, B, len, (const uint32_t(*)[2])pairs, npairs);
			median_of_sorted(m, B, n, len, res);
			agg_store(&out->tensors[k], j0, len, res);
		}
	}
out:
	fm->api->free(fm->host, pairs);
	fm->api->free(fm->host, m);
	return rc;
}

static const sovmesh_aggregator_ops fedmedian_ops = {
    .size = sizeof(sovmesh_aggregator_ops),
    .aggregate = fedmedian_aggregate,
};

static const sovmesh_plugin_descriptor fedmedian_descriptor = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_AGGREGATOR,
    .name = "fedmedian",
    .version = "1.0.0",
    .license = "MIT",
    .description = "Coordinate-wise median (unweighted: sample counts are ignored)",
    .settings = NULL,
    .create = fedmedian_create,
    .destroy = fedmedian_destroy,
    .ops = &fedmedian_ops,
};

SOVMESH_PLUGIN_DEFINE(fedmedian_descriptor)

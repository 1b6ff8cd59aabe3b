/* SPDX-License-Identifier: MIT */
/*
 * agg-trimmed: coordinate-wise trimmed mean (Yin et al. 2018).
 *
 *   k = floor(beta * n);  out[c] = mean of x_(k+1)[c] .. x_(n-k)[c]
 *
 * where x_(1)[c] <= ... <= x_(n)[c] are the n values at coordinate c in
 * order: the k smallest and the k largest are dropped.  Setting `beta`
 * (default 0.2, [0, 0.5)) is the fraction trimmed from EACH tail; beta 0
 * is the plain unweighted mean.  n with 2k >= n is refused (nothing would
 * be left).  Unweighted: the weights are checked but do not enter the
 * result.  Robust to up to k arbitrary inputs per coordinate.
 *
 * Streaming as agg-fedmedian: per block, a sorting network sorts the
 * columns of the n x B matrix, and the kept rows are summed in ascending
 * order (so the result does not depend on the order of the inputs).
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <sovmesh/aggregator.h>
#include <sovmesh/plugin.h>

#include "../agg-common/agg_common.h"

typedef struct trimmed {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	double beta;
} trimmed;

static const sovmesh_setting_def trimmed_settings[] = {
    /* Closed bounds just inside the open end, so config validation
     * (sovmeshd --check-config) already refuses 0.5. */
    {"beta", SOVMESH_SETTING_DOUBLE, "0.2", 0, 0.49999999999999,
     "fraction of the values trimmed from EACH end per coordinate, in [0, 0.5)"},
    {NULL, 0, NULL, 0, 0, NULL},
};

static int trimmed_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                          sovmesh_error *err)
{
	if (!api->calloc || !api->alloc || !api->free || !api->setting_double)
		return sovmesh_fail(err, -EINVAL, "the host offers no memory or settings slots");
	/* The host checks [0, 0.5]; the upper end itself would trim everything. */
	double beta = api->setting_double(host, "beta");
	if (!(beta >= 0 && beta < 0.5))
		return sovmesh_fail(err, -EINVAL, "setting 'beta' is %g; it must be in [0, 0.5)",
		                    beta);
	trimmed *tm = api->calloc(host, 1, sizeof(*tm));
	if (!tm)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	tm->host = host;
	tm->api = api;
	tm->beta = beta;
	*instance = tm;
	return 0;
}

static void trimmed_destroy(void *instance)
{
	trimmed *tm = instance;
	if (tm)
		tm->api->free(tm->host, tm);
}

/*
 * k = floor(beta * n).  The tiny slack keeps a decimal beta whose double
 * is just below the intended value (0.3 * 10 = 2.9999...) from losing one.
 */
static size_t trim_count(double beta, size_t n)
{
	return (size_t)floor(beta * (double)n + 1e-9);
}

/* res[c] = the mean of rows k .. n-k-1 of column c of the sorted matrix. */
static void mean_of_middle(const double *m, size_t B, size_t n, size_t k, size_t len, double *res)
{
	size_t kept = n - 2 * k;
	memcpy(res, m + k * B, len * sizeof(double));
	for (size_t r = k + 1; r < n - k; r++) {
		const double *row = m + r * B;
		for (size_t c = 0; c < len; c++)
			res[c] += row[c];
	}
	for (size_t c = 0; c < len; c++) {
		if (fabs(res[c]) <= DBL_MAX) {
			res[c] /= (double)kept;
			continue;
		}
		/* The sum overflowed (values near DBL_MAX): divide each first. */
		double s = 0;
		for (size_t r = k; r < n - k; r++)
			s += m[r * B + c] / (double)kept;
		res[c] = s;
	}
}

/* The aggregate op (aggregator.h).  On failure `out` is partial. */
static int trimmed_aggregate(void *instance, const sovmesh_tensor_set *const *inputs,
                             const double *weights, size_t n, sovmesh_tensor_set *out,
                             sovmesh_error *err)
{
	trimmed *tm = instance;
	int rc = agg_check_inputs("trimmed", inputs, weights, n, out, NULL, NULL, err);
	if (rc < 0)
		return rc;
	size_t k = trim_count(tm->beta, n);
	if (2 * k >= n)
		return sovmesh_fail(err, -EINVAL,
		                    "trimmed: beta=%g drops k=%zu values from each end of n=%zu "
		                    "inputs, leaving none (need 2k < n); lower the setting 'beta' "
		                    "or aggregate more inputs",
		                    tm->beta, k, n);

	size_t B = agg_block_len(n), npairs = agg_network(n, NULL);
	if (n > SIZE_MAX / sizeof(double) / (B + 1) || npairs > SIZE_MAX / sizeof(uint32_t[2]))
		return sovmesh_fail(err, -ENOMEM, "too many inputs (%zu)", n);
	double *m = tm->api->alloc(tm->host, (n + 1) * B * sizeof(double));
	uint32_t(*pairs)[2] = tm->api->alloc(tm->host, (npairs ? npairs : 1) * sizeof(*pairs));
	if (!m || !pairs) {
		rc = sovmesh_fail(err, -ENOMEM, "out of memory for %zu inputs", n);
		goto out;
	}
	agg_network(n, pairs);
	double *res = m + n * B; /* the extra row */

	const sovmesh_tensor_set *ref = inputs[0];
	for (size_t t_i = 0; t_i < ref->count && rc == 0; t_i++) {
		uint64_t numel = sovmesh_tensor_numel(&ref->tensors[t_i]);
		for (uint64_t j0 = 0; j0 < numel && rc == 0; j0 += B) {
			size_t len = numel - j0 < B ? (size_t)(numel - j0) : B;
			for (size_t i = 0; i < n; i++) {
				const sovmesh_tensor *t = &inputs[i]->tensors[t_i];
				if (agg_load(t, j0, len, m + i * B)) {
					rc = agg_value_error(t, i, j0, len, err);
					break;
				}
			}
			if (rc < 0)
				break;
			/* With k == 0 order does not matter for which values are
			 * kept, but summing sorted keeps the result independent of
			 * the input order. */
			agg_sort_columns(m, B, len, (const uint32_t(*)[2])pairs, npairs);
			mean_of_middle(m, B, n, k, len, res);
			agg_store(&out->tensors[t_i], j0, len, res);
		}
	}
out:
	tm->api->free(tm->host, pairs);
	tm->api->free(tm->host, m);
	return rc;
}

static const sovmesh_aggregator_ops trimmed_ops = {
    .size = sizeof(sovmesh_aggregator_ops),
    .aggregate = trimmed_aggregate,
};

static const sovmesh_plugin_descriptor trimmed_descriptor = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_AGGREGATOR,
    .name = "trimmed",
    .version = "1.0.0",
    .license = "MIT",
    .description = "Coordinate-wise trimmed mean (drops beta*n values per end; unweighted)",
    .settings = trimmed_settings,
    .create = trimmed_create,
    .destroy = trimmed_destroy,
    .ops = &trimmed_ops,
};

SOVMESH_PLUGIN_DEFINE(trimmed_descriptor)

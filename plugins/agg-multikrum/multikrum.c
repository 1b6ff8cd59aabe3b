/* SPDX-License-Identifier: MIT */
/*
 * agg-multikrum: Multi-Krum (Blanchard et al. 2017, §4; El Mhamdi et al.
 * 2018).
 *
 *   score(i) = the Krum score of input i (agg-krum), computed ONCE
 *   S        = the m inputs with the lowest scores (ties: lower index)
 *   out      = sum_{i in S} w_i x_i / sum_{i in S} w_i   (w = sample counts)
 *
 * This is the simple variant: the scores are not recomputed after each
 * selection (the iterated variant applies Krum, removes the winner and
 * repeats).  Settings: `f` (default 1) as for krum, needs n > 2f + 2;
 * `m` (default 0 = n - f) inputs to average, 1 <= m <= n.  m = 1 is
 * Krum; m = n is FedAvg.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <sovmesh/aggregator.h>
#include <sovmesh/plugin.h>

#include "../agg-common/agg_common.h"

typedef struct multikrum {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	size_t f;
	size_t m; /* 0 = n - f */
} multikrum;

static const sovmesh_setting_def multikrum_settings[] = {
    {"f", SOVMESH_SETTING_INT, "1", 0, 100000,
     "number of Byzantine inputs to tolerate; needs more than 2f+2 inputs"},
    {"m", SOVMESH_SETTING_INT, "0", 0, 100000,
     "inputs with the lowest Krum scores to average (weighted); 0 = n - f"},
    {NULL, 0, NULL, 0, 0, NULL},
};

static int multikrum_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                            sovmesh_error *err)
{
	if (!api->calloc || !api->alloc || !api->free || !api->setting_int)
		return sovmesh_fail(err, -EINVAL, "the host offers no memory or settings slots");
	int64_t f = api->setting_int(host, "f"), m = api->setting_int(host, "m");
	if (f < 0 || f > 100000)
		return sovmesh_fail(err, -EINVAL, "setting 'f' is %lld; it must be in [0, 100000]",
		                    (long long)f);
	if (m < 0 || m > 100000)
		return sovmesh_fail(
		    err, -EINVAL, "setting 'm' is %lld; it must be in [1, 100000], or 0 for n - f",
		    (long long)m);
	multikrum *mk = api->calloc(host, 1, sizeof(*mk));
	if (!mk)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	mk->host = host;
	mk->api = api;
	mk->f = (size_t)f;
	mk->m = (size_t)m;
	*instance = mk;
	return 0;
}

static void multikrum_destroy(void *instance)
{
	multikrum *mk = instance;
	if (mk)
		mk->api->free(mk->host, mk);
}

/* idx[0..n) = 0..n-1 ordered by (score, index): stable insertion sort. */
static void rank_by_score(const double *score, size_t *idx, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		size_t j = i;
		for (; j > 0 && score[idx[j - 1]] > score[i]; j--)
			idx[j] = idx[j - 1];
		idx[j] = i;
	}
}

/* out = the weighted mean of inputs idx[0..m) with normalised weights w. */
static int weighted_mean(multikrum *mk, const sovmesh_tensor_set *const *inputs, const size_t *idx,
                         const double *w, size_t m, sovmesh_tensor_set *out, sovmesh_error *err)
{
	size_t B = AGG_BLOCK_MAX;
	double *acc = mk->api->alloc(mk->host, 2 * B * sizeof(double));
	if (!acc)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	double *row = acc + B;
	for (size_t k = 0; k < out->count; k++) {
		uint64_t numel = sovmesh_tensor_numel(&out->tensors[k]);
		for (uint64_t j0 = 0; j0 < numel; j0 += B) {
			size_t len = numel - j0 < B ? (size_t)(numel - j0) : B;
			for (size_t q = 0; q < m; q++) {
				/* Finite: agg_krum_scores checked every value. */
				agg_load(&inputs[idx[q]]->tensors[k], j0, len, row);
				agg_axpy(acc, row, w[q], len, q == 0);
			}
			agg_store(&out->tensors[k], j0, len, acc);
		}
	}
	mk->api->free(mk->host, acc);
	return 0;
}

/* The aggregate op (aggregator.h).  On failure `out` is partial. */
static int multikrum_aggregate(void *instance, const sovmesh_tensor_set *const *inputs,
                               const double *weights, size_t n, sovmesh_tensor_set *out,
                               sovmesh_error *err)
{
	multikrum *mk = instance;
	int rc = agg_check_inputs("multikrum", inputs, weights, n, out, NULL, NULL, err);
	if (rc < 0)
		return rc;
	if (n <= 2 * mk->f + 2)
		return sovmesh_fail(err, -EINVAL,
		                    "multikrum needs more than 2f+2 inputs (n=%zu, f=%zu); lower "
		                    "the setting 'f' or aggregate more inputs",
		                    n, mk->f);
	size_t m = mk->m ? mk->m : n - mk->f;
	if (m > n)
		return sovmesh_fail(
		    err, -EINVAL,
		    "multikrum: setting 'm' is %zu but only n=%zu inputs were given "
		    "(need 1 <= m <= n; 0 means n - f)",
		    m, n);

	double *score = mk->api->alloc(mk->host, n * (2 * sizeof(double) + sizeof(size_t)));
	if (!score)
		return sovmesh_fail(err, -ENOMEM, "out of memory for %zu scores", n);
	double *w = score + n;
	size_t *idx = (size_t *)(w + n);
	rc = agg_krum_scores(mk->host, mk->api, inputs, n, mk->f, score, err);
	if (rc == 0) {
		rank_by_score(score, idx, n);
		agg_normalise_weights(weights, idx, m, w);
		rc = weighted_mean(mk, inputs, idx, w, m, out, err);
	}
	if (rc == 0 && mk->api->log) {
		char list[256];
		size_t used = 0;
		for (size_t q = 0; q < m && used < sizeof(list); q++)
			used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%zu",
			                         q ? "," : "", idx[q]);
		mk->api->log(mk->host, SOVMESH_LOG_INFO,
		             "multikrum averaged %zu of %zu inputs (f=%zu): %s", m, n, mk->f, list);
	}
	mk->api->free(mk->host, score);
	return rc;
}

static const sovmesh_aggregator_ops multikrum_ops = {
    .size = sizeof(sovmesh_aggregator_ops),
    .aggregate = multikrum_aggregate,
};

static const sovmesh_plugin_descriptor multikrum_descriptor = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_AGGREGATOR,
    .name = "multikrum",
    .version = "1.0.0",
    .license = "MIT",
    .description = "Multi-Krum: weighted mean of the m inputs with the lowest Krum scores",
    .settings = multikrum_settings,
    .create = multikrum_create,
    .destroy = multikrum_destroy,
    .ops = &multikrum_ops,
};

SOVMESH_PLUGIN_DEFINE(multikrum_descriptor)

/* SPDX-License-Identifier: MIT */
/*
 * agg-fedavgm: FedAvg with server momentum (Hsu et al. 2019, "Measuring
 * the Effects of Non-Identical Data Distribution for Federated Visual
 * Classification").
 *
 *   avg = sum_i w_i x_i / sum_i w_i     (the FedAvg of this round's deltas)
 *   v  <- momentum * v + avg            (v starts at 0)
 *   out = server_lr * v
 *
 * The inputs are deltas (new - current adapter) and sovmesh adds the
 * output to the current adapter, so this is Hsu et al.'s update with the
 * pseudo-gradient's sign flipped: their x <- x - lr * v with
 * v <- beta v + (x - avg(x_i)) is ours with the delta d_i = x_i - x.
 * momentum 0 and server_lr 1 is FedAvg.
 *
 * v lives in the instance, in double, one value per parameter; it is
 * allocated on the first call and kept while the adapter layout (names
 * and shapes) stays the same; a new layout resets it with a warning.  It
 * is not persisted: a restart starts from v = 0.  A refused call leaves v
 * unchanged: pass 1 computes and checks the output without touching v,
 * pass 2 recomputes the same values and commits v.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <sovmesh/aggregator.h>
#include <sovmesh/plugin.h>

#include "../agg-common/agg_common.h"

/* The layout v belongs to: names and shapes (not dtypes, as v is F64). */
typedef struct layout_entry {
	char *name;
	uint32_t ndim;
	uint64_t shape[SOVMESH_TENSOR_MAX_DIMS];
} layout_entry;

typedef struct fedavgm {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	double server_lr, momentum;
	layout_entry *layout; /* NULL until the first call */
	size_t count;
	double *v; /* total parameters of the layout */
	uint64_t total;
	uint64_t rounds; /* calls that updated v since the last reset */
} fedavgm;

static const sovmesh_setting_def fedavgm_settings[] = {
    /* Closed bounds just inside the open ends, so config validation
     * (sovmeshd --check-config) already refuses server_lr 0, momentum 1. */
    {"server_lr", SOVMESH_SETTING_DOUBLE, "1.0", 1e-9, 1000,
     "server learning rate: output = server_lr * v; must be > 0"},
    {"momentum", SOVMESH_SETTING_DOUBLE, "0.9", 0, 0.99999999999999,
     "server momentum: v = momentum * v + mean of the deltas; in [0, 1)"},
    {NULL, 0, NULL, 0, 0, NULL},
};

static int fedavgm_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                          sovmesh_error *err)
{
	if (!api->calloc || !api->alloc || !api->free || !api->setting_double)
		return sovmesh_fail(err, -EINVAL, "the host offers no memory or settings slots");
	/* The host checks the closed bounds; the open ends are ours. */
	double lr = api->setting_double(host, "server_lr");
	double mu = api->setting_double(host, "momentum");
	if (!(lr > 0 && lr <= 1000))
		return sovmesh_fail(err, -EINVAL,
		                    "setting 'server_lr' is %g; it must be > 0 (and at most 1000)",
		                    lr);
	if (!(mu >= 0 && mu < 1))
		return sovmesh_fail(
		    err, -EINVAL,
		    "setting 'momentum' is %g; it must be in [0, 1) (1 never forgets "
		    "and diverges)",
		    mu);
	fedavgm *fm = api->calloc(host, 1, sizeof(*fm));
	if (!fm)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	fm->host = host;
	fm->api = api;
	fm->server_lr = lr;
	fm->momentum = mu;
	*instance = fm;
	return 0;
}

static void state_free(fedavgm *fm)
{
	for (size_t k = 0; fm->layout && k < fm->count; k++)
		fm->api->free(fm->host, fm->layout[k].name);
	fm->api->free(fm->host, fm->layout);
	fm->api->free(fm->host, fm->v);
	fm->layout = NULL;
	fm->v = NULL;
	fm->count = 0;
	fm->total = 0;
	fm->rounds = 0;
}

static void fedavgm_destroy(void *instance)
{
	fedavgm *fm = instance;
	if (!fm)
		return;
	state_free(fm);
	fm->api->free(fm->host, fm);
}

/* -1 when `set` has v's layout, else the index of the first tensor that
 * differs (count if one set is shorter). */
static long layout_differs(const fedavgm *fm, const sovmesh_tensor_set *set)
{
	size_t n = fm->count < set->count ? fm->count : set->count;
	for (size_t k = 0; k < n; k++) {
		const layout_entry *e = &fm->layout[k];
		const sovmesh_tensor *t = &set->tensors[k];
		int same = strcmp(e->name, t->name) == 0 && e->ndim == t->ndim;
		for (uint32_t d = 0; same && d < e->ndim; d++)
			same = e->shape[d] == t->shape[d];
		if (!same)
			return (long)k;
	}
	return fm->count == set->count ? -1 : (long)n;
}

static void layout_free(fedavgm *fm, layout_entry *layout, size_t count)
{
	for (size_t k = 0; layout && k < count; k++)
		fm->api->free(fm->host, layout[k].name);
	fm->api->free(fm->host, layout);
}

/* Start over with v = 0 for the layout of `set`.  The new state is built
 * first, so on -ENOMEM the old one is kept. */
static int state_reset(fedavgm *fm, const sovmesh_tensor_set *set, uint64_t total,
                       sovmesh_error *err)
{
	if (total > SIZE_MAX / sizeof(double))
		return sovmesh_fail(err, -ENOMEM, "%llu parameters do not fit in memory",
		                    (unsigned long long)total);
	layout_entry *layout =
	    fm->api->calloc(fm->host, set->count ? set->count : 1, sizeof(layout_entry));
	double *v = fm->api->calloc(fm->host, total ? (size_t)total : 1, sizeof(double));
	int ok = layout && v;
	for (size_t k = 0; ok && k < set->count; k++) {
		const sovmesh_tensor *t = &set->tensors[k];
		size_t len = strlen(t->name) + 1;
		layout[k].name = fm->api->alloc(fm->host, len);
		ok = layout[k].name != NULL;
		if (ok)
			memcpy(layout[k].name, t->name, len);
		layout[k].ndim = t->ndim;
		memcpy(layout[k].shape, t->shape, sizeof(t->shape));
	}
	if (!ok) {
		layout_free(fm, layout, set->count);
		fm->api->free(fm->host, v);
		return sovmesh_fail(err, -ENOMEM,
		                    "out of memory for the momentum of %llu parameters",
		                    (unsigned long long)total);
	}
	state_free(fm);
	fm->layout = layout;
	fm->count = set->count;
	fm->v = v;
	fm->total = total;
	return 0;
}

/*
 * One pass over all blocks: acc = the weighted mean of the inputs, then
 * next = momentum * v + acc.  commit == 0: out = server_lr * next,
 * checking the inputs are finite and the output fits its dtype; v is
 * not written, and NULL stands for v = 0 (a reset still to come).
 * commit == 1: fm->v = next (the inputs are known good).
 */
static int run_pass(fedavgm *fm, const double *vold, const sovmesh_tensor_set *const *inputs,
                    const double *w, size_t n, sovmesh_tensor_set *out, double *scratch, int commit,
                    sovmesh_error *err)
{
	size_t B = AGG_BLOCK_MAX;
	double *acc = scratch, *row = scratch + B;
	uint64_t off = 0;
	for (size_t k = 0; k < out->count; k++) {
		sovmesh_tensor *o = &out->tensors[k];
		uint64_t numel = sovmesh_tensor_numel(o);
		for (uint64_t j0 = 0; j0 < numel; j0 += B) {
			size_t len = numel - j0 < B ? (size_t)(numel - j0) : B;
			for (size_t i = 0; i < n; i++) {
				const sovmesh_tensor *t = &inputs[i]->tensors[k];
				if (agg_load(t, j0, len, row) && !commit)
					return agg_value_error(t, i, j0, len, err);
				agg_axpy(acc, row, w[i], len, i == 0);
			}
			if (commit) {
				double *v = fm->v + off + j0;
				for (size_t c = 0; c < len; c++)
					v[c] = fm->momentum * v[c] + acc[c];
				continue;
			}
			if (vold)
				for (size_t c = 0; c < len; c++)
					acc[c] = fm->momentum * vold[off + j0 + c] + acc[c];
			for (size_t c = 0; c < len; c++)
				acc[c] *= fm->server_lr;
			agg_store(o, j0, len, acc);
			/* Reading back catches values beyond the dtype's range
			 * (e.g. F16 above 65504) after rounding. */
			if (agg_load(o, j0, len, row)) {
				for (size_t c = 0; c < len; c++)
					if (!isfinite(sovmesh_tensor_get(o, j0 + c)))
						return sovmesh_fail(
						    err, -ERANGE,
						    "fedavgm: output tensor '%s' element %llu "
						    "(%g) does not fit %s; lower the settings "
						    "'server_lr' or 'momentum'",
						    o->name, (unsigned long long)(j0 + c), acc[c],
						    sovmesh_dtype_name(o->dtype));
				return sovmesh_fail(err, -ERANGE, "fedavgm: output overflow");
			}
		}
		off += numel;
	}
	return 0;
}

/* The aggregate op (aggregator.h).  On failure `out` is partial and v is
 * as before the call. */
static int fedavgm_aggregate(void *instance, const sovmesh_tensor_set *const *inputs,
                             const double *weights, size_t n, sovmesh_tensor_set *out,
                             sovmesh_error *err)
{
	fedavgm *fm = instance;
	uint64_t total = 0;
	int rc = agg_check_inputs("fedavgm", inputs, weights, n, out, NULL, &total, err);
	if (rc < 0)
		return rc;

	long at = fm->layout ? layout_differs(fm, inputs[0]) : -1;
	int fresh = !fm->layout || at >= 0;

	double *w = fm->api->alloc(fm->host, (n + 2 * AGG_BLOCK_MAX) * sizeof(double));
	if (!w)
		return sovmesh_fail(err, -ENOMEM, "out of memory for %zu weights", n);
	agg_normalise_weights(weights, NULL, n, w);
	rc = run_pass(fm, fresh ? NULL : fm->v, inputs, w, n, out, w + n, 0, err);
	if (rc == 0 && fresh) {
		if (fm->layout && fm->api->log)
			fm->api->log(fm->host, SOVMESH_LOG_WARNING,
			             "the adapter layout changed (tensor %ld: '%s' now, '%s' "
			             "before); server momentum reset to 0 after %llu rounds",
			             at,
			             (size_t)at < inputs[0]->count ? inputs[0]->tensors[at].name
			                                           : "(none)",
			             (size_t)at < fm->count ? fm->layout[at].name : "(none)",
			             (unsigned long long)fm->rounds);
		rc = state_reset(fm, inputs[0], total, err);
	}
	if (rc == 0) {
		run_pass(fm, fm->v, inputs, w, n, out, w + n, 1, err);
		fm->rounds++;
	}
	fm->api->free(fm->host, w);
	return rc;
}

static const sovmesh_aggregator_ops fedavgm_ops = {
    .size = sizeof(sovmesh_aggregator_ops),
    .aggregate = fedavgm_aggregate,
};

static const sovmesh_plugin_descriptor fedavgm_descriptor = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_AGGREGATOR,
    .name = "fedavgm",
    .version = "1.0.0",
    .license = "MIT",
    .description = "FedAvg with server momentum: v = momentum*v + mean delta, out = server_lr*v",
    .settings = fedavgm_settings,
    .create = fedavgm_create,
    .destroy = fedavgm_destroy,
    .ops = &fedavgm_ops,
};

SOVMESH_PLUGIN_DEFINE(fedavgm_descriptor)

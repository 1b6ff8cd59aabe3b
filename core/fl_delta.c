/* Federated-learning deltas (see fl_delta.h). */
#include "fl_delta.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sovmesh/aggregator.h>

#include "safetensors.h"
#include "tensor_set.h"

static int float_dtype(sovmesh_dtype d)
{
	return d == SOVMESH_DTYPE_F32 || d == SOVMESH_DTYPE_F64;
}

static size_t elements(const sovmesh_tensor *t)
{
	return (size_t)(t->nbytes / sovmesh_dtype_size(t->dtype));
}

static int check_pair(const sovmesh_tensor_set *a, const sovmesh_tensor_set *b,
                      sovmesh_error *err)
{
	const sovmesh_tensor_set *both[2] = {a, b};
	int r = sovmesh_check_same_layouts(both, 2, err);
	if (r < 0)
		return r;
	if (a->count != b->count)
		return sovmesh_fail(err, -EINVAL, "the adapters have %zu and %zu tensors", a->count,
		                    b->count);
	for (size_t i = 0; i < a->count; i++)
		if (!float_dtype(a->tensors[i].dtype))
			return sovmesh_fail(err, -ENOTSUP, "tensor '%s' is %s, not F32 or F64",
			                    a->tensors[i].name,
			                    tset_dtype_name(a->tensors[i].dtype));
	return 0;
}

static double get(const sovmesh_tensor *t, size_t i)
{
	return t->dtype == SOVMESH_DTYPE_F32 ? (double)((const float *)t->data)[i]
	                                     : ((const double *)t->data)[i];
}

static void put(sovmesh_tensor *t, size_t i, double v)
{
	if (t->dtype == SOVMESH_DTYPE_F32)
		((float *)t->data)[i] = (float)v;
	else
		((double *)t->data)[i] = v;
}

int fl_delta_subtract(const sovmesh_tensor_set *a, const sovmesh_tensor_set *b,
                      sovmesh_tensor_set **out, sovmesh_error *err)
{
	int r = check_pair(a, b, err);
	if (r < 0)
		return r;
	sovmesh_tensor_set *d = tset_new(a, a->count);
	if (!d)
		return sovmesh_fail(err, -ENOMEM, "out of memory for a delta");
	for (size_t k = 0; k < a->count; k++) {
		const sovmesh_tensor *x = &a->tensors[k], *y = &b->tensors[k];
		for (size_t i = 0, n = elements(x); i < n; i++)
			put(&d->tensors[k], i, get(x, i) - get(y, i));
	}
	r = tset_check_finite(d, err);
	if (r < 0) {
		tset_free(d);
		return r;
	}
	*out = d;
	return 0;
}

int fl_delta_add(sovmesh_tensor_set *target, const sovmesh_tensor_set *delta,
                 sovmesh_error *err)
{
	int r = check_pair(target, delta, err);
	if (r < 0)
		return r;
	for (size_t k = 0; k < target->count; k++) {
		sovmesh_tensor *x = &target->tensors[k];
		const sovmesh_tensor *y = &delta->tensors[k];
		for (size_t i = 0, n = elements(x); i < n; i++) {
			double v = get(x, i) + get(y, i);
			if (!isfinite(v) || (x->dtype == SOVMESH_DTYPE_F32 && !isfinite((float)v)))
				return sovmesh_fail(err, -ERANGE,
				                    "tensor '%s' element %zu overflows when the "
				                    "delta is added",
				                    x->name, i);
			put(x, i, v);
		}
	}
	return 0;
}

int fl_delta_encode(const sovmesh_tensor_set *noisy, int64_t samples, int64_t round,
                    void **out, size_t *out_len, sovmesh_error *err)
{
	if (samples < 1 || samples > FL_DELTA_MAX_SAMPLES || round < 1)
		return sovmesh_fail(err, -EINVAL, "delta: samples %" PRId64 " or round %" PRId64
		                                  " out of range", samples, round);
	char meta[160];
	snprintf(meta, sizeof(meta),
	         "{\"sovmesh_fl\":\"" FL_DELTA_VERSION "\",\"samples\":\"%" PRId64
	         "\",\"round\":\"%" PRId64 "\"}",
	         samples, round);
	/* A shallow copy that carries only our metadata, whatever the
	 * trainer's set had. */
	sovmesh_tensor_set view = *noisy;
	view.metadata_json = meta;
	return safetensors_serialize(&view, out, out_len, err);
}

/* A decimal integer in [lo, hi] from a metadata string. */
static int meta_int(json_t *meta, const char *key, int64_t lo, int64_t hi, int64_t *v,
                    sovmesh_error *err)
{
	const char *s = json_string_value(json_object_get(meta, key));
	if (!s)
		return sovmesh_fail(err, -EINVAL, "delta metadata lacks \"%s\"", key);
	/* Canonical decimal only: strtoll alone would also take " 7" and "+7". */
	char *end = NULL;
	errno = 0;
	long long x = strtoll(s, &end, 10);
	if (s[0] < '0' || s[0] > '9' || *end || errno || x < lo || x > hi ||
	    (s[0] == '0' && s[1]))
		return sovmesh_fail(err, -EINVAL,
		                    "delta metadata \"%s\" must be an integer from %" PRId64
		                    " to %" PRId64,
		                    key, lo, hi);
	*v = x;
	return 0;
}

static int check_metadata(const sovmesh_tensor_set *set, fl_delta *out, sovmesh_error *err)
{
	if (!set->metadata_json)
		return sovmesh_fail(err, -EINVAL, "delta has no \"__metadata__\" (not a sovmesh delta)");
	json_t *meta = json_loads(set->metadata_json, 0, NULL);
	if (!json_is_object(meta)) {
		json_decref(meta);
		return sovmesh_fail(err, -EINVAL, "delta metadata is not an object");
	}
	int r = 0;
	const char *key;
	json_t *val;
	json_object_foreach(meta, key, val)
	{
		if (strcmp(key, "sovmesh_fl") && strcmp(key, "samples") && strcmp(key, "round")) {
			r = sovmesh_fail(err, -EINVAL, "delta metadata has an unexpected key");
			goto done;
		}
	}
	const char *ver = json_string_value(json_object_get(meta, "sovmesh_fl"));
	if (!ver || strcmp(ver, FL_DELTA_VERSION) != 0) {
		r = sovmesh_fail(err, -EINVAL, "delta format version is not " FL_DELTA_VERSION);
		goto done;
	}
	r = meta_int(meta, "samples", 1, FL_DELTA_MAX_SAMPLES, &out->samples, err);
	if (r == 0)
		r = meta_int(meta, "round", 1, INT64_MAX, &out->round, err);
done:
	json_decref(meta);
	return r;
}

static int check_layout(const sovmesh_tensor_set *got, const sovmesh_tensor_set *want,
                        sovmesh_error *err)
{
	size_t n = got->count < want->count ? got->count : want->count;
	for (size_t i = 0; i < n; i++) {
		const sovmesh_tensor *g = &got->tensors[i], *w = &want->tensors[i];
		if (strcmp(g->name, w->name) != 0)
			return tset_fail(err, -EINVAL,
			                 "has tensor '%s' where this node's adapter has '%s'",
			                 g->name, w->name);
		if (g->dtype != w->dtype)
			return tset_fail(err, -EINVAL,
			                 "tensor '%s' is %s, this node's adapter has %s", g->name,
			                 tset_dtype_name(g->dtype), tset_dtype_name(w->dtype));
		int same = g->ndim == w->ndim;
		for (uint32_t d = 0; same && d < g->ndim; d++)
			same = g->shape[d] == w->shape[d];
		if (!same) {
			char sg[160], sw[160];
			sovmesh_tensor_shape_text(g, sg, sizeof(sg));
			sovmesh_tensor_shape_text(w, sw, sizeof(sw));
			return tset_fail(err, -EINVAL,
			                 "tensor '%s' has shape %s, this node's adapter has %s",
			                 g->name, sg, sw);
		}
	}
	if (got->count != want->count)
		return sovmesh_fail(err, -EINVAL, "has %zu tensors, this node's adapter has %zu",
		                    got->count, want->count);
	for (size_t i = 0; i < got->count; i++)
		if (!float_dtype(got->tensors[i].dtype))
			return tset_fail(err, -EINVAL, "tensor '%s' is %s, not F32 or F64",
			                 got->tensors[i].name, tset_dtype_name(got->tensors[i].dtype));
	return 0;
}

int fl_delta_decode(const void *buf, size_t len, const sovmesh_tensor_set *layout,
                    size_t max_bytes, fl_delta *out, sovmesh_error *err)
{
	memset(out, 0, sizeof(*out));
	if (len > max_bytes)
		return sovmesh_fail(err, -E2BIG, "delta is %zu bytes, the limit is %zu", len,
		                    max_bytes);
	sovmesh_tensor_set *set = NULL;
	sovmesh_error perr = {0};
	int r = safetensors_parse(buf, len, 1, &set, &perr);
	if (r == -ENOMEM)
		return sovmesh_fail(err, r, "out of memory");
	if (r < 0)
		return sovmesh_fail(err, -EINVAL, "not safetensors: %s", perr.message);
	r = check_metadata(set, out, err);
	if (r == 0)
		r = check_layout(set, layout, err);
	if (r == 0)
		r = tset_check_finite(set, err);
	if (r < 0) {
		tset_free(set);
		memset(out, 0, sizeof(*out));
		return r;
	}
	out->set = set;
	return 0;
}

void fl_delta_clear(fl_delta *d)
{
	if (!d)
		return;
	tset_free(d->set);
	memset(d, 0, sizeof(*d));
}

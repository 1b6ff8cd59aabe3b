/* SPDX-License-Identifier: MIT */
/*
 * agg-fedavg: weighted federated averaging (McMahan et al. 2017).
 *
 *   out = sum_i w_i x_i / sum_i w_i,   w_i = party i's sample count
 *
 * Inputs are F32, F16, BF16 or F64 tensor sets of one layout; the sum is
 * accumulated in double and rounded once into `out`, in the inputs'
 * dtype.  This is a memory-bound hot loop: we walk tensor by tensor and,
 * within a tensor, input by input, into one double scratch buffer the
 * size of the largest tensor (so it stays in cache for adapter-sized
 * tensors), check for NaN/Inf on the raw bits in the same pass, and
 * normalise the weights once.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <sovmesh/aggregator.h>
#include <sovmesh/plugin.h>

typedef struct fedavg {
	sovmesh_host *host;
	const sovmesh_host_api *api;
} fedavg;

static int fedavg_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                         sovmesh_error *err)
{
	if (!api->calloc || !api->alloc || !api->free)
		return sovmesh_fail(err, -EINVAL, "the host offers no memory slots");
	fedavg *fa = api->calloc(host, 1, sizeof(*fa));
	if (!fa)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	fa->host = host;
	fa->api = api;
	*instance = fa;
	return 0;
}

static void fedavg_destroy(void *instance)
{
	fedavg *fa = instance;
	if (fa)
		fa->api->free(fa->host, fa);
}

/* Every check that needs no data pass.  *max_numel gets the largest
 * tensor's element count (the scratch size). */
static int check_inputs(const sovmesh_tensor_set *const *inputs, const double *weights, size_t n,
                        const sovmesh_tensor_set *out, uint64_t *max_numel, sovmesh_error *err)
{
	if (n == 0)
		return sovmesh_fail(err, -EINVAL, "no inputs to average (n == 0)");
	if (!inputs || !weights || !out)
		return sovmesh_fail(err, -EINVAL, "inputs, weights or output is NULL");
	for (size_t i = 0; i < n; i++) {
		if (!inputs[i])
			return sovmesh_fail(err, -EINVAL, "input %zu is NULL", i);
		if (!isfinite(weights[i]) || weights[i] <= 0)
			return sovmesh_fail(
			    err, -EINVAL,
			    "input %zu: weight %g is not a positive finite sample count", i,
			    weights[i]);
	}
	int r = sovmesh_check_same_layouts(inputs, n, err);
	if (r < 0)
		return r;
	const sovmesh_tensor_set *ref = inputs[0];
	size_t at = 0;
	if (!sovmesh_tensor_set_same_layout(ref, out, &at))
		return sovmesh_fail(err, -EINVAL,
		                    "the output set does not have input 0's layout "
		                    "(tensor %zu differs)",
		                    at);
	*max_numel = 0;
	for (size_t k = 0; k < ref->count; k++) {
		const sovmesh_tensor *t = &ref->tensors[k];
		if (!sovmesh_dtype_is_float(t->dtype))
			return sovmesh_fail(
			    err, -ENOTSUP,
			    "input 0: tensor '%s' has dtype %s; fedavg averages F32, "
			    "F16, BF16 and F64 only",
			    t->name, sovmesh_dtype_name(t->dtype));
		uint64_t numel = sovmesh_tensor_numel(t);
		uint64_t want = numel * sovmesh_dtype_size(t->dtype);
		for (size_t i = 0; i <= n; i++) {
			const sovmesh_tensor *x = i < n ? &inputs[i]->tensors[k] : &out->tensors[k];
			if (x->nbytes != want || (want && !x->data)) {
				if (i == n)
					return sovmesh_fail(
					    err, -EINVAL,
					    "output tensor '%s' has %llu bytes of data, "
					    "expected %llu",
					    x->name, (unsigned long long)x->nbytes,
					    (unsigned long long)want);
				return sovmesh_fail(
				    err, -EINVAL,
				    "input %zu: tensor '%s' has %llu bytes of data, "
				    "expected %llu",
				    i, x->name, (unsigned long long)x->nbytes,
				    (unsigned long long)want);
			}
		}
		if (numel > *max_numel)
			*max_numel = numel;
	}
	return 0;
}

/*
 * IEEE binary16 bits -> float, branch-free so the loop vectorises (F.
 * Giesen's "half to float" with a magic multiply, exact for normals and
 * subnormals).  Inf/NaN come out wrong, but their bits are flagged as bad
 * by the caller before the value is used.
 */
static inline float f16_bits_to_float(uint16_t h)
{
	uint32_t u = (uint32_t)(h & 0x7fffu) << 13;
	float f;
	memcpy(&f, &u, sizeof(f));
	f *= 0x1p112f; /* rebias the exponent from 15 to 127 */
	memcpy(&u, &f, sizeof(u));
	u |= (uint32_t)(h & 0x8000u) << 16;
	memcpy(&f, &u, sizeof(f));
	return f;
}

/*
 * acc[j] = (first ? 0 : acc[j]) + w * x[j] for the n elements at p (any
 * alignment).  Returns 1 when some x[j] is Inf or NaN, detected on the
 * exponent bits in the same pass.  One function per dtype with the
 * decode inlined keeps the inner loop free of switches.
 */
#define ACC_BLOCK 8
#define DEFINE_ACCUMULATE(NAME, BITS_T, DECODE, IS_BAD)                                            \
	static int NAME(double *restrict acc, const unsigned char *restrict p, uint64_t n,         \
	                double w, int first)                                                       \
	{                                                                                          \
		BITS_T bad = 0;                                                                    \
		uint64_t j = 0;                                                                    \
		if (first) {                                                                       \
			for (; j + ACC_BLOCK <= n; j += ACC_BLOCK) {                               \
				for (unsigned q = 0; q < ACC_BLOCK; q++) {                         \
					BITS_T b;                                                  \
					memcpy(&b, p + (j + q) * sizeof(b), sizeof(b));            \
					acc[j + q] = w * (double)(DECODE);                         \
					bad |= (BITS_T)(IS_BAD);                                   \
				}                                                                  \
			}                                                                          \
			for (; j < n; j++) {                                                       \
				BITS_T b;                                                          \
				memcpy(&b, p + j * sizeof(b), sizeof(b));                          \
				acc[j] = w * (double)(DECODE);                                     \
				bad |= (BITS_T)(IS_BAD);                                           \
			}                                                                          \
		} else {                                                                           \
			for (; j + ACC_BLOCK <= n; j += ACC_BLOCK) {                               \
				for (unsigned q = 0; q < ACC_BLOCK; q++) {                         \
					BITS_T b;                                                  \
					memcpy(&b, p + (j + q) * sizeof(b), sizeof(b));            \
					acc[j + q] += w * (double)(DECODE);                        \
					bad |= (BITS_T)(IS_BAD);                                   \
				}                                                                  \
			}                                                                          \
			for (; j < n; j++) {                                                       \
				BITS_T b;                                                          \
				memcpy(&b, p + j * sizeof(b), sizeof(b));                          \
				acc[j] += w * (double)(DECODE);                                    \
				bad |= (BITS_T)(IS_BAD);                                           \
			}                                                                          \
		}                                                                                  \
		return (int)(bad >> (8 * sizeof(BITS_T) - 1));                                     \
	}

static inline float f32_of_bits(uint32_t b)
{
	float f;
	memcpy(&f, &b, sizeof(f));
	return f;
}

static inline double f64_of_bits(uint64_t b)
{
	double d;
	memcpy(&d, &b, sizeof(d));
	return d;
}

/* IS_BAD sets the top bit exactly when the exponent field is all ones
 * (Inf or NaN): adding one exponent unit to it carries into the sign
 * position.  Branch-free and the width of the element, so it vectorises. */
DEFINE_ACCUMULATE(acc_f64, uint64_t, f64_of_bits(b),
                  (b & UINT64_C(0x7ff0000000000000)) + UINT64_C(0x0010000000000000))
DEFINE_ACCUMULATE(acc_f32, uint32_t, f32_of_bits(b), (b & 0x7f800000u) + 0x00800000u)
DEFINE_ACCUMULATE(acc_bf16, uint16_t, f32_of_bits((uint32_t)b << 16), (b & 0x7f80u) + 0x0080u)
DEFINE_ACCUMULATE(acc_f16, uint16_t, f16_bits_to_float(b), (b & 0x7c00u) + 0x0400u)

/*
 * d rounded to float with round-to-odd: truncate, then set the last bit
 * if inexact.  Rounding that to binary16/bfloat16 (>= 2 fewer bits) with
 * round-to-nearest-even gives the correctly rounded result of d, which
 * plain double -> float -> half does not near ties (Boldo & Melquiond).
 */
static inline float f32_round_odd(double d)
{
	float f = (float)d;
	if ((double)f != d && !isnan(d)) {
		uint32_t b;
		memcpy(&b, &f, sizeof(b));
		if (!(b & 1u)) /* the odd neighbour is the one on d's side */
			b = fabs((double)f) > fabs(d) ? b - 1 : b + 1;
		memcpy(&f, &b, sizeof(f));
	}
	return f;
}

static void store(const double *acc, sovmesh_tensor *t, uint64_t n)
{
	unsigned char *p = t->data;
	switch (t->dtype) {
	case SOVMESH_DTYPE_F64:
		memcpy(p, acc, n * sizeof(double));
		break;
	case SOVMESH_DTYPE_F32:
		for (uint64_t j = 0; j < n; j++) {
			float f = (float)acc[j];
			memcpy(p + 4 * j, &f, 4);
		}
		break;
	case SOVMESH_DTYPE_F16:
		for (uint64_t j = 0; j < n; j++) {
			uint16_t h = sovmesh_f32_to_f16(f32_round_odd(acc[j]));
			memcpy(p + 2 * j, &h, 2);
		}
		break;
	case SOVMESH_DTYPE_BF16:
		for (uint64_t j = 0; j < n; j++) {
			uint16_t h = sovmesh_f32_to_bf16(f32_round_odd(acc[j]));
			memcpy(p + 2 * j, &h, 2);
		}
		break;
	default:
		break;
	}
}

/* Name the first non-finite element of `t` (only on the error path). */
static int value_error(const sovmesh_tensor *t, size_t input, sovmesh_error *err)
{
	uint64_t n = sovmesh_tensor_numel(t);
	for (uint64_t j = 0; j < n; j++) {
		double v = sovmesh_tensor_get(t, j);
		if (!isfinite(v))
			return sovmesh_fail(err, -EINVAL,
			                    "input %zu: tensor '%s' element %llu is %s", input,
			                    t->name, (unsigned long long)j,
			                    isnan(v) ? "NaN"
			                    : v > 0  ? "+Inf"
			                             : "-Inf");
	}
	return sovmesh_fail(err, -EINVAL, "input %zu: tensor '%s' has a non-finite value", input,
	                    t->name);
}

/*
 * The aggregate op (aggregator.h).  On failure `out` holds partial
 * results and must be discarded by the caller.
 */
static int fedavg_aggregate(void *instance, const sovmesh_tensor_set *const *inputs,
                            const double *weights, size_t n, sovmesh_tensor_set *out,
                            sovmesh_error *err)
{
	fedavg *fa = instance;
	uint64_t max_numel = 0;
	int rc = check_inputs(inputs, weights, n, out, &max_numel, err);
	if (rc < 0)
		return rc;

	/* Normalise once.  Dividing by the largest weight first keeps the
	 * sum finite even for weights near DBL_MAX. */
	double wmax = 0, wsum = 0;
	for (size_t i = 0; i < n; i++)
		wmax = weights[i] > wmax ? weights[i] : wmax;
	for (size_t i = 0; i < n; i++)
		wsum += weights[i] / wmax;
	double *w = fa->api->alloc(fa->host, n * sizeof(double));
	if (max_numel > SIZE_MAX / sizeof(double) || !w) {
		fa->api->free(fa->host, w);
		return sovmesh_fail(err, -ENOMEM, "out of memory for %zu weights", n);
	}
	for (size_t i = 0; i < n; i++)
		w[i] = weights[i] / wmax / wsum;

	double *acc = fa->api->alloc(fa->host, (max_numel ? max_numel : 1) * sizeof(double));
	if (!acc) {
		fa->api->free(fa->host, w);
		return sovmesh_fail(err, -ENOMEM, "out of memory for a %llu-element scratch tensor",
		                    (unsigned long long)max_numel);
	}

	const sovmesh_tensor_set *ref = inputs[0];
	for (size_t k = 0; k < ref->count && rc == 0; k++) {
		uint64_t numel = sovmesh_tensor_numel(&ref->tensors[k]);
		for (size_t i = 0; i < n; i++) {
			const sovmesh_tensor *t = &inputs[i]->tensors[k];
			const unsigned char *p = t->data;
			int bad = 0;
			switch (t->dtype) {
			case SOVMESH_DTYPE_F64:
				bad = acc_f64(acc, p, numel, w[i], i == 0);
				break;
			case SOVMESH_DTYPE_F32:
				bad = acc_f32(acc, p, numel, w[i], i == 0);
				break;
			case SOVMESH_DTYPE_BF16:
				bad = acc_bf16(acc, p, numel, w[i], i == 0);
				break;
			case SOVMESH_DTYPE_F16:
				bad = acc_f16(acc, p, numel, w[i], i == 0);
				break;
			default:
				break;
			}
			if (bad) {
				rc = value_error(t, i, err);
				break;
			}
		}
		if (rc == 0)
			store(acc, &out->tensors[k], numel);
	}
	fa->api->free(fa->host, acc);
	fa->api->free(fa->host, w);
	return rc;
}

static const sovmesh_aggregator_ops fedavg_ops = {
    .size = sizeof(sovmesh_aggregator_ops),
    .aggregate = fedavg_aggregate,
};

static const sovmesh_plugin_descriptor fedavg_descriptor = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_AGGREGATOR,
    .name = "fedavg",
    .version = "1.0.0",
    .license = "MIT",
    .description = "Weighted federated averaging (weight = sample count), accumulated in F64",
    .settings = NULL,
    .create = fedavg_create,
    .destroy = fedavg_destroy,
    .ops = &fedavg_ops,
};

SOVMESH_PLUGIN_DEFINE(fedavg_descriptor)

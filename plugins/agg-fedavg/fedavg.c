/* SPDX-License-Identifier: MIT */
/*
 * agg-fedavg: weighted federated averaging (McMahan et al. 2017).
 *
 *   out = sum_i w_i x_i / sum_i w_i,   w_i = party i's sample count
 *
 * Inputs are F32, F16, BF16 or F64 tensor sets of one layout; the sum is
 * accumulated in double and rounded once into `out`, in the inputs'
 * dtype.  This is a memory-bound hot loop: we walk tensor by tensor and,
 * within a tensor, 16 coordinates at a time across all inputs (so each
 * input is read once and `out` written once, see DEFINE_AVERAGE), check
 * for NaN/Inf on the raw bits in the same pass, and normalise the
 * weights once.
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

/* Every check that needs no data pass. */
static int check_inputs(const sovmesh_tensor_set *const *inputs, const double *weights, size_t n,
                        const sovmesh_tensor_set *out, sovmesh_error *err)
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
	}
	return 0;
}

/*
 * IEEE binary16 bits -> float, branch-free so the loop vectorises (F.
 * Giesen's "half to float" with a magic multiply, exact for normals and
 * subnormals).  The multiply takes Inf/NaN to 2^16 and up; setting every
 * exponent bit when the input's were all ones makes them Inf/NaN again.
 */
static inline float f16_bits_to_float(uint16_t h)
{
	uint32_t u = (uint32_t)(h & 0x7fffu) << 13;
	uint32_t special = ((uint32_t)(h & 0x7c00u) + 0x0400u) >> 15; /* exponent 31 */
	float f;
	memcpy(&f, &u, sizeof(f));
	f *= 0x1p112f; /* rebias the exponent from 15 to 127 */
	memcpy(&u, &f, sizeof(u));
	u |= (0u - special) & 0x7f800000u;
	u |= (uint32_t)(h & 0x8000u) << 16;
	memcpy(&f, &u, sizeof(f));
	return f;
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

/* The sum rounded once into the output dtype, stored at p (any alignment). */
static inline void put_f64(unsigned char *p, double d)
{
	memcpy(p, &d, sizeof(d));
}

static inline void put_f32(unsigned char *p, double d)
{
	float f = (float)d;
	memcpy(p, &f, sizeof(f));
}

static inline void put_f16(unsigned char *p, double d)
{
	uint16_t h = sovmesh_f32_to_f16(f32_round_odd(d));
	memcpy(p, &h, sizeof(h));
}

static inline void put_bf16(unsigned char *p, double d)
{
	uint16_t h = sovmesh_f32_to_bf16(f32_round_odd(d));
	memcpy(p, &h, sizeof(h));
}

/*
 * out[j] = sum_i w[i] x_i[j] for one tensor of `numel` elements, the x_i
 * at in[i] and out at `out` (any alignment).  Returns 1 as soon as some
 * x_i[j] is Inf or NaN (out is then partly written).
 *
 * LANES coordinates are summed at a time across all inputs, in input
 * order: the partial sums stay in registers and the inputs are read in
 * lockstep, each once as a sequential stream, and out is written once.
 * Summing one whole input into a tensor-sized scratch before the next
 * instead re-read and rewrote the scratch (twice the values' size, in
 * double) for every input: 2-3x slower for adapters larger than the
 * cache.  The sum of each element is the same, operation for operation.
 *
 * NaN/Inf: a non-finite input makes its sum NaN or Inf (w[i] is finite
 * and >= 0), and then the block's total too, so only that is tested,
 * once per block, off the hot loop.  A flagged block is then checked on
 * the inputs' bits, since finite F64 values near DBL_MAX may overflow a
 * sum or the total (such an Inf sum is stored, as it always was; the
 * host's finiteness check refuses it).
 * One function per dtype with decode and store inlined keeps the inner
 * loops free of switches.
 */
#define LANES 16
/* No per-CPU clones (target_clones/ifunc): the portable loop already
 * reaches ~0.6 of the memory-bandwidth baseline (bench/README.md); an
 * AVX2 copy measured ~0.8 but ties the plugin to glibc's ifunc. */
#define AVERAGE_CLONES
#define DEFINE_AVERAGE(NAME, BITS_T, DECODE, IS_BAD, PUT)                                          \
	/* 1 when an input has Inf/NaN bits in [j, j + m). */                                      \
	static int NAME##_bad_bits(const unsigned char *const *in, size_t n, uint64_t j,           \
	                           unsigned m)                                                     \
	{                                                                                          \
		for (size_t i = 0; i < n; i++)                                                     \
			for (unsigned q = 0; q < m; q++) {                                         \
				BITS_T b;                                                          \
				memcpy(&b, in[i] + (j + q) * sizeof(b), sizeof(b));                \
				if ((BITS_T)(IS_BAD) >> (8 * sizeof(BITS_T) - 1))                  \
					return 1;                                                  \
			}                                                                          \
		return 0;                                                                          \
	}                                                                                          \
	AVERAGE_CLONES static int NAME(unsigned char *restrict out,                                \
	                               const unsigned char *const *in, const double *w, size_t n,  \
	                               uint64_t numel)                                             \
	{                                                                                          \
		const size_t sz = sizeof(BITS_T);                                                  \
		uint64_t j = 0;                                                                    \
		for (; j + LANES <= numel; j += LANES) {                                           \
			double a[LANES];                                                           \
			const unsigned char *p = in[0] + j * sz;                                   \
			for (unsigned q = 0; q < LANES; q++) {                                     \
				BITS_T b;                                                          \
				memcpy(&b, p + q * sz, sz);                                        \
				a[q] = w[0] * (double)(DECODE);                                    \
			}                                                                          \
			for (size_t i = 1; i < n; i++) {                                           \
				const double wi = w[i];                                            \
				p = in[i] + j * sz;                                                \
				for (unsigned q = 0; q < LANES; q++) {                             \
					BITS_T b;                                                  \
					memcpy(&b, p + q * sz, sz);                                \
					a[q] += wi * (double)(DECODE);                             \
				}                                                                  \
			}                                                                          \
			double all = 0; /* NaN or Inf when some a[q] is */                         \
			for (unsigned q = 0; q < LANES; q++)                                       \
				all += a[q];                                                       \
			if (all - all != 0 && NAME##_bad_bits(in, n, j, LANES))                    \
				return 1;                                                          \
			for (unsigned q = 0; q < LANES; q++)                                       \
				PUT(out + (j + q) * sz, a[q]);                                     \
		}                                                                                  \
		for (; j < numel; j++) { /* the tail, one coordinate at a time */                  \
			BITS_T b;                                                                  \
			memcpy(&b, in[0] + j * sz, sz);                                            \
			double a = w[0] * (double)(DECODE);                                        \
			for (size_t i = 1; i < n; i++) {                                           \
				memcpy(&b, in[i] + j * sz, sz);                                    \
				a += w[i] * (double)(DECODE);                                      \
			}                                                                          \
			if (a - a != 0 && NAME##_bad_bits(in, n, j, 1))                            \
				return 1;                                                          \
			PUT(out + j * sz, a);                                                      \
		}                                                                                  \
		return 0;                                                                          \
	}

/* IS_BAD sets the top bit exactly when the exponent field is all ones
 * (Inf or NaN): adding one exponent unit to it carries into the sign
 * position. */
DEFINE_AVERAGE(avg_f64, uint64_t, f64_of_bits(b),
               (b & UINT64_C(0x7ff0000000000000)) + UINT64_C(0x0010000000000000), put_f64)
DEFINE_AVERAGE(avg_f32, uint32_t, f32_of_bits(b), (b & 0x7f800000u) + 0x00800000u, put_f32)
DEFINE_AVERAGE(avg_bf16, uint16_t, f32_of_bits((uint32_t)b << 16), (b & 0x7f80u) + 0x0080u,
               put_bf16)
DEFINE_AVERAGE(avg_f16, uint16_t, f16_bits_to_float(b), (b & 0x7c00u) + 0x0400u, put_f16)

/* -EINVAL naming the first non-finite element of `t`, or 0 when there is
 * none (only on the error path). */
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
	return 0;
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
	int rc = check_inputs(inputs, weights, n, out, err);
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
	if (!w)
		return sovmesh_fail(err, -ENOMEM, "out of memory for %zu weights", n);
	for (size_t i = 0; i < n; i++)
		w[i] = weights[i] / wmax / wsum;

	const unsigned char **src = fa->api->alloc(fa->host, n * sizeof(*src));
	if (!src) {
		fa->api->free(fa->host, w);
		return sovmesh_fail(err, -ENOMEM, "out of memory for %zu input pointers", n);
	}

	const sovmesh_tensor_set *ref = inputs[0];
	for (size_t k = 0; k < ref->count && rc == 0; k++) {
		const sovmesh_tensor *t0 = &ref->tensors[k];
		uint64_t numel = sovmesh_tensor_numel(t0);
		unsigned char *dst = out->tensors[k].data;
		for (size_t i = 0; i < n; i++)
			src[i] = inputs[i]->tensors[k].data;
		int bad = 0;
		switch (t0->dtype) {
		case SOVMESH_DTYPE_F64:
			bad = avg_f64(dst, src, w, n, numel);
			break;
		case SOVMESH_DTYPE_F32:
			bad = avg_f32(dst, src, w, n, numel);
			break;
		case SOVMESH_DTYPE_BF16:
			bad = avg_bf16(dst, src, w, n, numel);
			break;
		case SOVMESH_DTYPE_F16:
			bad = avg_f16(dst, src, w, n, numel);
			break;
		default:
			break;
		}
		/* Name the first input (in order) with a bad value here. */
		for (size_t i = 0; bad && i < n && rc == 0; i++)
			rc = value_error(&inputs[i]->tensors[k], i, err);
		if (bad && rc == 0)
			rc = sovmesh_fail(err, -EINVAL, "tensor '%s' has a non-finite value",
			                  t0->name);
	}
	fa->api->free(fa->host, src);
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

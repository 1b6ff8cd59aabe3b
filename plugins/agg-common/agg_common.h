/* SPDX-License-Identifier: MIT */
/*
 * agg-common: header-only helpers of the research aggregators (fedmedian,
 * trimmed, krum, multikrum, fedavgm).  Everything is static inline, so
 * each plugin stays one self-contained .so that links no core symbol and
 * shares no code with the others at link level.
 *
 * The aggregators stream.  A tensor is walked in blocks of B coordinates
 * (agg_block_len); each input's block is decoded to double into row i of
 * an n x B scratch matrix, so every input is read once and in order, and
 * the per-coordinate work runs on L1/L2-resident rows.  Coordinate-wise
 * statistics (median, trimmed mean) sort the *columns* of that matrix
 * with one sorting network applied row against row: every compare-
 * exchange is a branch-free min/max over B lanes that the compiler turns
 * into vector code, instead of one qsort per coordinate.
 */
#ifndef SOVMESH_AGG_COMMON_H
#define SOVMESH_AGG_COMMON_H

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <sovmesh/aggregator.h>
#include <sovmesh/plugin.h>

/* Scratch budget: n rows of B doubles, about 32 KiB (L1-sized). */
#define AGG_SCRATCH_DOUBLES 4096u
#define AGG_BLOCK_MIN       16u
#define AGG_BLOCK_MAX       1024u

/* The block length B for n inputs: a multiple of 8 in [16, 1024]. */
static inline size_t agg_block_len(size_t n)
{
	size_t b = n ? AGG_SCRATCH_DOUBLES / n : AGG_BLOCK_MAX;
	if (b < AGG_BLOCK_MIN)
		b = AGG_BLOCK_MIN;
	if (b > AGG_BLOCK_MAX)
		b = AGG_BLOCK_MAX;
	return b & ~(size_t)7;
}

/*
 * The checks that need no data pass, shared by every aggregator (the same
 * rules and messages as agg-fedavg): n > 0, no NULLs, weights finite and
 * > 0, every input with input 0's layout (names, dtypes, shapes), `out`
 * with that layout too, float dtypes only (-ENOTSUP otherwise, naming
 * `plugin`), and nbytes consistent with the shapes.  *max_numel and
 * *total_numel get the largest tensor's and the whole set's element
 * counts.
 */
static inline int agg_check_inputs(const char *plugin, const sovmesh_tensor_set *const *inputs,
                                   const double *weights, size_t n, const sovmesh_tensor_set *out,
                                   uint64_t *max_numel, uint64_t *total_numel, sovmesh_error *err)
{
	if (n == 0)
		return sovmesh_fail(err, -EINVAL, "no inputs to aggregate (n == 0)");
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
	uint64_t mx = 0, total = 0;
	for (size_t k = 0; k < ref->count; k++) {
		const sovmesh_tensor *t = &ref->tensors[k];
		if (!sovmesh_dtype_is_float(t->dtype))
			return sovmesh_fail(err, -ENOTSUP,
			                    "input 0: tensor '%s' has dtype %s; %s combines F32, "
			                    "F16, BF16 and F64 only",
			                    t->name, sovmesh_dtype_name(t->dtype), plugin);
		uint64_t numel = sovmesh_tensor_numel(t);
		uint64_t want = numel * sovmesh_dtype_size(t->dtype);
		for (size_t i = 0; i <= n; i++) {
			const sovmesh_tensor *x = i < n ? &inputs[i]->tensors[k] : &out->tensors[k];
			if (x->nbytes == want && (!want || x->data))
				continue;
			if (i == n)
				return sovmesh_fail(err, -EINVAL,
				                    "output tensor '%s' has %llu bytes of data, "
				                    "expected %llu",
				                    x->name, (unsigned long long)x->nbytes,
				                    (unsigned long long)want);
			return sovmesh_fail(err, -EINVAL,
			                    "input %zu: tensor '%s' has %llu bytes of data, "
			                    "expected %llu",
			                    i, x->name, (unsigned long long)x->nbytes,
			                    (unsigned long long)want);
		}
		if (numel > mx)
			mx = numel;
		total += numel;
	}
	if (max_numel)
		*max_numel = mx;
	if (total_numel)
		*total_numel = total;
	return 0;
}

/*
 * IEEE binary16 bits -> float, branch-free (F. Giesen's magic multiply;
 * exact for normals and subnormals).  Inf/NaN come out wrong, but their
 * bits are flagged by the caller first.
 */
static inline float agg_f16_bits_to_float(uint16_t h)
{
	uint32_t u = (uint32_t)(h & 0x7fffu) << 13;
	float f;
	memcpy(&f, &u, sizeof(f));
	f *= 0x1p112f;
	memcpy(&u, &f, sizeof(u));
	u |= (uint32_t)(h & 0x8000u) << 16;
	memcpy(&f, &u, sizeof(f));
	return f;
}

/*
 * dst[0..len) = elements [j0, j0 + len) of float tensor `t` as doubles.
 * Returns 1 when one of them is Inf or NaN, else 0.  The test is on the
 * exponent bits (all ones), branch-free: adding one exponent unit carries
 * into the sign position exactly then.
 */
static inline int agg_load(const sovmesh_tensor *t, uint64_t j0, size_t len, double *restrict dst)
{
	const unsigned char *p = (const unsigned char *)t->data + j0 * sovmesh_dtype_size(t->dtype);
	switch (t->dtype) {
	case SOVMESH_DTYPE_F64: {
		uint64_t bad = 0;
		for (size_t j = 0; j < len; j++) {
			uint64_t b;
			memcpy(&b, p + 8 * j, 8);
			memcpy(&dst[j], &b, 8);
			bad |= (b & UINT64_C(0x7ff0000000000000)) + UINT64_C(0x0010000000000000);
		}
		return (int)(bad >> 63);
	}
	case SOVMESH_DTYPE_F32: {
		/* The common case: fixed-size inner blocks let GCC's -O2
		 * (very cheap) vectoriser take the loop, as in agg-fedavg. */
		uint32_t bad = 0;
		size_t j = 0;
		for (; j + 8 <= len; j += 8) {
			for (unsigned q = 0; q < 8; q++) {
				uint32_t b;
				float f;
				memcpy(&b, p + 4 * (j + q), 4);
				memcpy(&f, &b, 4);
				dst[j + q] = f;
				bad |= (b & 0x7f800000u) + 0x00800000u;
			}
		}
		for (; j < len; j++) {
			uint32_t b;
			float f;
			memcpy(&b, p + 4 * j, 4);
			memcpy(&f, &b, 4);
			dst[j] = f;
			bad |= (b & 0x7f800000u) + 0x00800000u;
		}
		return (int)(bad >> 31);
	}
	case SOVMESH_DTYPE_BF16: {
		uint16_t bad = 0;
		for (size_t j = 0; j < len; j++) {
			uint16_t b;
			memcpy(&b, p + 2 * j, 2);
			uint32_t u = (uint32_t)b << 16;
			float f;
			memcpy(&f, &u, 4);
			dst[j] = f;
			bad |= (uint16_t)((b & 0x7f80u) + 0x0080u);
		}
		return bad >> 15;
	}
	case SOVMESH_DTYPE_F16: {
		uint16_t bad = 0;
		for (size_t j = 0; j < len; j++) {
			uint16_t b;
			memcpy(&b, p + 2 * j, 2);
			dst[j] = agg_f16_bits_to_float(b);
			bad |= (uint16_t)((b & 0x7c00u) + 0x0400u);
		}
		return bad >> 15;
	}
	default:
		return 1;
	}
}

/* Name the first non-finite element of t[j0, j0 + len) (error path only). */
static inline int agg_value_error(const sovmesh_tensor *t, size_t input, uint64_t j0, size_t len,
                                  sovmesh_error *err)
{
	for (uint64_t j = j0; j < j0 + len; j++) {
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
 * d rounded to float with round-to-odd (truncate, set the last bit if
 * inexact): rounding that to binary16/bfloat16 then gives the correctly
 * rounded result of d, which plain double -> float -> half does not near
 * ties (Boldo & Melquiond).  Same as agg-fedavg.
 */
static inline float agg_f32_round_odd(double d)
{
	float f = (float)d;
	if ((double)f != d && !isnan(d)) {
		uint32_t b;
		memcpy(&b, &f, sizeof(b));
		if (!(b & 1u))
			b = fabs((double)f) > fabs(d) ? b - 1 : b + 1;
		memcpy(&f, &b, sizeof(f));
	}
	return f;
}

/* Store src[0..len) as elements [j0, j0 + len) of float tensor `t`,
 * rounding once to its dtype. */
static inline void agg_store(sovmesh_tensor *t, uint64_t j0, size_t len, const double *src)
{
	unsigned char *p = (unsigned char *)t->data + j0 * sovmesh_dtype_size(t->dtype);
	switch (t->dtype) {
	case SOVMESH_DTYPE_F64:
		memcpy(p, src, len * sizeof(double));
		break;
	case SOVMESH_DTYPE_F32:
		for (size_t j = 0; j < len; j++) {
			float f = (float)src[j];
			memcpy(p + 4 * j, &f, 4);
		}
		break;
	case SOVMESH_DTYPE_F16:
		for (size_t j = 0; j < len; j++) {
			uint16_t h = sovmesh_f32_to_f16(agg_f32_round_odd(src[j]));
			memcpy(p + 2 * j, &h, 2);
		}
		break;
	case SOVMESH_DTYPE_BF16:
		for (size_t j = 0; j < len; j++) {
			uint16_t h = sovmesh_f32_to_bf16(agg_f32_round_odd(src[j]));
			memcpy(p + 2 * j, &h, 2);
		}
		break;
	default:
		break;
	}
}

/*
 * Batcher's merge-exchange sorting network for any n (Knuth, TAOCP 3,
 * §5.2.2, Algorithm M): O(n log^2 n) compare-exchanges, e.g. 31 for n =
 * 10.  Writes the pairs (lo, hi) to pairs[0..] when pairs is non-NULL and
 * returns their number; call once with NULL to size the array.  After
 * applying every pair in order (min to lo, max to hi) any n values are
 * sorted ascending.
 */
static inline size_t agg_network(size_t n, uint32_t (*pairs)[2])
{
	if (n < 2)
		return 0;
	unsigned t = 0;
	while (((size_t)1 << t) < n)
		t++;
	size_t count = 0;
	for (size_t p = (size_t)1 << (t - 1); p > 0; p >>= 1) {
		size_t q = (size_t)1 << (t - 1), r = 0, d = p;
		for (;;) {
			for (size_t i = 0; i + d < n; i++) {
				if ((i & p) != r)
					continue;
				if (pairs) {
					pairs[count][0] = (uint32_t)i;
					pairs[count][1] = (uint32_t)(i + d);
				}
				count++;
			}
			if (q == p)
				break;
			d = q - p;
			q >>= 1;
			r = p;
		}
	}
	return count;
}

/*
 * Compare-exchange two rows lane by lane: lo gets the minima, hi the
 * maxima.  GCC does not if-convert `b < a ? b : a` on doubles without
 * -ffinite-math-only (NaN semantics), so the loop stays scalar and
 * branchy; with 16-byte vector extensions (SSE2 on x86-64, NEON on
 * aarch64, scalar code elsewhere) it is a compare and three XOR/ANDs per
 * two lanes.  The values are finite, so the mask is exact.
 */
#if defined(__GNUC__)
typedef double agg_v2df __attribute__((vector_size(16)));
typedef int64_t agg_v2di __attribute__((vector_size(16)));
#endif

static inline void agg_cmpx_rows(double *restrict lo, double *restrict hi, size_t len)
{
	size_t c = 0;
#if defined(__GNUC__)
	for (; c + 2 <= len; c += 2) {
		agg_v2df a, b;
		memcpy(&a, lo + c, sizeof(a));
		memcpy(&b, hi + c, sizeof(b));
		agg_v2di m = b < a;
		agg_v2di x = ((agg_v2di)a ^ (agg_v2di)b) & m;
		agg_v2df mn = (agg_v2df)((agg_v2di)a ^ x), mx = (agg_v2df)((agg_v2di)b ^ x);
		memcpy(lo + c, &mn, sizeof(mn));
		memcpy(hi + c, &mx, sizeof(mx));
	}
#endif
	for (; c < len; c++) {
		double a = lo[c], b = hi[c];
		lo[c] = b < a ? b : a;
		hi[c] = b < a ? a : b;
	}
}

/* Sort each column c < len of the n x stride matrix m ascending (row 0
 * smallest), with the network of agg_network(n). */
static inline void agg_sort_columns(double *m, size_t stride, size_t len,
                                    const uint32_t (*pairs)[2], size_t npairs)
{
	for (size_t k = 0; k < npairs; k++)
		agg_cmpx_rows(m + (size_t)pairs[k][0] * stride, m + (size_t)pairs[k][1] * stride,
		              len);
}

/*
 * w[k] = weights[idx[k]] / sum over the m selected weights (idx NULL:
 * the first m).  Dividing by the largest weight first keeps the sum
 * finite even for weights near DBL_MAX.
 */
static inline void agg_normalise_weights(const double *weights, const size_t *idx, size_t m,
                                         double *w)
{
	double wmax = 0, wsum = 0;
	for (size_t k = 0; k < m; k++) {
		double x = weights[idx ? idx[k] : k];
		wmax = x > wmax ? x : wmax;
	}
	for (size_t k = 0; k < m; k++)
		wsum += weights[idx ? idx[k] : k] / wmax;
	for (size_t k = 0; k < m; k++)
		w[k] = weights[idx ? idx[k] : k] / wmax / wsum;
}

/* acc[c] = (first ? 0 : acc[c]) + w * x[c]. */
static inline void agg_axpy(double *restrict acc, const double *restrict x, double w, size_t len,
                            int first)
{
	if (first)
		for (size_t c = 0; c < len; c++)
			acc[c] = w * x[c];
	else
		for (size_t c = 0; c < len; c++)
			acc[c] += w * x[c];
}

/* Sum of (a[c] - b[c])^2 with four partial sums (keeps the adds pipelined). */
static inline double agg_sqdist(const double *a, const double *b, size_t len)
{
	double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	size_t c = 0;
	for (; c + 4 <= len; c += 4) {
		double d0 = a[c] - b[c], d1 = a[c + 1] - b[c + 1];
		double d2 = a[c + 2] - b[c + 2], d3 = a[c + 3] - b[c + 3];
		s0 += d0 * d0;
		s1 += d1 * d1;
		s2 += d2 * d2;
		s3 += d3 * d3;
	}
	for (; c < len; c++) {
		double d = a[c] - b[c];
		s0 += d * d;
	}
	return (s0 + s1) + (s2 + s3);
}

/* Ascending insertion sort of a few doubles (per-call bookkeeping only). */
static inline void agg_sort_small(double *v, size_t n)
{
	for (size_t i = 1; i < n; i++) {
		double x = v[i];
		size_t j = i;
		for (; j > 0 && v[j - 1] > x; j--)
			v[j] = v[j - 1];
		v[j] = x;
	}
}

/*
 * Krum scores (Blanchard et al. 2017), shared by krum and multikrum.
 * dist = the n x n squared L2 distances between the inputs taken as one
 * vector each (all tensors together), accumulated in double block by
 * block; score[i] = the sum of the n - f - 2 smallest dist[i][j], j != i.
 * The caller has checked the inputs (agg_check_inputs) and n > 2f + 2.
 * Non-finite values are refused here, naming input, tensor and element.
 * O(n^2 d) time, O(n^2 + n B) memory.
 */
static inline int agg_krum_scores(sovmesh_host *host, const sovmesh_host_api *api,
                                  const sovmesh_tensor_set *const *inputs, size_t n, size_t f,
                                  double *score, sovmesh_error *err)
{
	size_t B = agg_block_len(n);
	if (n > SIZE_MAX / sizeof(double) / (n > B ? n : B))
		return sovmesh_fail(err, -ENOMEM, "too many inputs (%zu)", n);
	double *dist = api->calloc(host, n * n, sizeof(double));
	double *rows = api->alloc(host, n * B * sizeof(double));
	int rc = 0;
	if (!dist || !rows) {
		rc = sovmesh_fail(err, -ENOMEM, "out of memory for %zu inputs", n);
		goto out;
	}
	const sovmesh_tensor_set *ref = inputs[0];
	for (size_t k = 0; k < ref->count && rc == 0; k++) {
		uint64_t numel = sovmesh_tensor_numel(&ref->tensors[k]);
		for (uint64_t j0 = 0; j0 < numel && rc == 0; j0 += B) {
			size_t len = numel - j0 < B ? (size_t)(numel - j0) : B;
			for (size_t i = 0; i < n; i++) {
				const sovmesh_tensor *t = &inputs[i]->tensors[k];
				if (agg_load(t, j0, len, rows + i * B)) {
					rc = agg_value_error(t, i, j0, len, err);
					break;
				}
			}
			for (size_t i = 0; i < n && rc == 0; i++)
				for (size_t j = i + 1; j < n; j++)
					dist[i * n + j] +=
					    agg_sqdist(rows + i * B, rows + j * B, len);
		}
	}
	if (rc < 0)
		goto out;
	/* rows is at least n doubles: reuse it for one input's distances. */
	size_t keep = n - f - 2;
	for (size_t i = 0; i < n; i++) {
		size_t m = 0;
		for (size_t j = 0; j < n; j++)
			if (j != i)
				rows[m++] = i < j ? dist[i * n + j] : dist[j * n + i];
		agg_sort_small(rows, m);
		double s = 0;
		for (size_t q = 0; q < keep; q++)
			s += rows[q];
		score[i] = s;
	}
out:
	api->free(host, rows);
	api->free(host, dist);
	return rc;
}

#endif /* SOVMESH_AGG_COMMON_H */

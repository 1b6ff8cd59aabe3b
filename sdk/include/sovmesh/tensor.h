/* SPDX-License-Identifier: MIT */
/*
 * sovmesh plugin SDK — tensor sets.
 *
 * A tensor set is what aggregators combine, what noise mechanisms perturb
 * and what trainers produce: the named tensors of a LoRA adapter (the
 * contents of adapter_model.safetensors).  Plain C structs, no ownership
 * magic: who allocates and frees a set is stated by each slot that passes
 * one.  The host API (plugin.h) has tensor_set_new/tensor_set_free and
 * adapter file I/O so a plugin never parses safetensors itself.
 */
#ifndef SOVMESH_TENSOR_H
#define SOVMESH_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element types: the safetensors dtypes.  Values are part of the ABI. */
typedef enum sovmesh_dtype {
	SOVMESH_DTYPE_INVALID = 0,
	SOVMESH_DTYPE_F32 = 1,
	SOVMESH_DTYPE_F16 = 2,
	SOVMESH_DTYPE_BF16 = 3,
	SOVMESH_DTYPE_F64 = 4,
	SOVMESH_DTYPE_I8 = 5,
	SOVMESH_DTYPE_U8 = 6,
	SOVMESH_DTYPE_I16 = 7,
	SOVMESH_DTYPE_U16 = 8,
	SOVMESH_DTYPE_I32 = 9,
	SOVMESH_DTYPE_U32 = 10,
	SOVMESH_DTYPE_I64 = 11,
	SOVMESH_DTYPE_U64 = 12,
	SOVMESH_DTYPE_BOOL = 13,
	SOVMESH_DTYPE_F8_E4M3 = 14,
	SOVMESH_DTYPE_F8_E5M2 = 15,
} sovmesh_dtype;

#define SOVMESH_TENSOR_MAX_DIMS 8

/*
 * One tensor.  `data` points at nbytes bytes, row-major, little-endian,
 * no padding; nbytes == element size * product(shape) (1 for ndim == 0).
 * `name` and `data` are owned by whoever owns the enclosing set.
 */
typedef struct sovmesh_tensor {
	const char *name;
	sovmesh_dtype dtype;
	uint32_t ndim;
	uint64_t shape[SOVMESH_TENSOR_MAX_DIMS];
	void *data;
	uint64_t nbytes;
} sovmesh_tensor;

/*
 * An ordered list of tensors with unique names.  Sets produced by the host
 * are sorted by name (as safetensors headers are), so two sets of the same
 * adapter line up index by index; plugins may rely on that for host-made
 * sets and must check names anyway (sovmesh_tensor_set_same_layout).
 * `metadata_json` is the safetensors "__metadata__" object as JSON text,
 * or NULL.
 */
typedef struct sovmesh_tensor_set {
	size_t count;
	sovmesh_tensor *tensors;
	const char *metadata_json;
} sovmesh_tensor_set;

/* Size in bytes of one element of `dtype`, 0 for an unknown dtype. */
static inline size_t sovmesh_dtype_size(sovmesh_dtype dtype)
{
	switch (dtype) {
	case SOVMESH_DTYPE_F64:
	case SOVMESH_DTYPE_I64:
	case SOVMESH_DTYPE_U64:
		return 8;
	case SOVMESH_DTYPE_F32:
	case SOVMESH_DTYPE_I32:
	case SOVMESH_DTYPE_U32:
		return 4;
	case SOVMESH_DTYPE_F16:
	case SOVMESH_DTYPE_BF16:
	case SOVMESH_DTYPE_I16:
	case SOVMESH_DTYPE_U16:
		return 2;
	case SOVMESH_DTYPE_I8:
	case SOVMESH_DTYPE_U8:
	case SOVMESH_DTYPE_BOOL:
	case SOVMESH_DTYPE_F8_E4M3:
	case SOVMESH_DTYPE_F8_E5M2:
		return 1;
	default:
		return 0;
	}
}

/* The safetensors spelling of a dtype ("F32", "BF16", ...), "unknown"
 * for a value outside the enum.  For messages and file headers. */
/* clang-format off */
static inline const char *sovmesh_dtype_name(sovmesh_dtype dtype)
{
	/* A switch, not a designated-initializer table: C++ plugins include
	 * this header too. */
	switch (dtype) {
	case SOVMESH_DTYPE_F32: return "F32";
	case SOVMESH_DTYPE_F16: return "F16";
	case SOVMESH_DTYPE_BF16: return "BF16";
	case SOVMESH_DTYPE_F64: return "F64";
	case SOVMESH_DTYPE_I8: return "I8";
	case SOVMESH_DTYPE_U8: return "U8";
	case SOVMESH_DTYPE_I16: return "I16";
	case SOVMESH_DTYPE_U16: return "U16";
	case SOVMESH_DTYPE_I32: return "I32";
	case SOVMESH_DTYPE_U32: return "U32";
	case SOVMESH_DTYPE_I64: return "I64";
	case SOVMESH_DTYPE_U64: return "U64";
	case SOVMESH_DTYPE_BOOL: return "BOOL";
	case SOVMESH_DTYPE_F8_E4M3: return "F8_E4M3";
	case SOVMESH_DTYPE_F8_E5M2: return "F8_E5M2";
	default: return "unknown";
	}
}
/* clang-format on */

/* 1 for the floating-point dtypes aggregators and noise accept. */
static inline int sovmesh_dtype_is_float(sovmesh_dtype dtype)
{
	return dtype == SOVMESH_DTYPE_F32 || dtype == SOVMESH_DTYPE_F16 ||
	       dtype == SOVMESH_DTYPE_BF16 || dtype == SOVMESH_DTYPE_F64;
}

/* Number of elements of `t` (product of its shape; 1 for a scalar). */
static inline uint64_t sovmesh_tensor_numel(const sovmesh_tensor *t)
{
	uint64_t n = 1;
	for (uint32_t i = 0; i < t->ndim; i++)
		n *= t->shape[i];
	return n;
}

/* Write `t`'s shape as "[4,16]" into buf (truncated to len - 1 bytes). */
static inline void sovmesh_tensor_shape_text(const sovmesh_tensor *t, char *buf, size_t len)
{
	if (len == 0)
		return;
	size_t used = (size_t)snprintf(buf, len, "[");
	for (uint32_t d = 0; d < t->ndim && used < len; d++)
		used += (size_t)snprintf(buf + used, len - used, "%s%llu", d ? "," : "",
		                         (unsigned long long)t->shape[d]);
	if (used < len)
		snprintf(buf + used, len - used, "]");
}

/* IEEE 754 binary16 -> binary32, exact (subnormals, inf, NaN kept). */
static inline float sovmesh_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t man = h & 0x3ffu;
	uint32_t bits;
	if (exp == 0) {
		if (man == 0) {
			bits = sign;
		} else { /* subnormal: normalise */
			exp = 127 - 15 + 1;
			while (!(man & 0x400u)) {
				man <<= 1;
				exp--;
			}
			man &= 0x3ffu;
			bits = sign | (exp << 23) | (man << 13);
		}
	} else if (exp == 0x1f) {
		bits = sign | 0x7f800000u | (man << 13);
	} else {
		bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
	}
	float f;
	memcpy(&f, &bits, sizeof(f));
	return f;
}

/* binary32 -> binary16, round to nearest even; overflow gives inf. */
static inline uint16_t sovmesh_f32_to_f16(float f)
{
	uint32_t x;
	memcpy(&x, &f, sizeof(x));
	uint32_t sign = (x >> 16) & 0x8000u;
	uint32_t exp = (x >> 23) & 0xffu;
	uint32_t man = x & 0x7fffffu;
	if (exp == 0xff) /* inf or NaN (keep NaN quiet and non-zero) */
		return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0));
	int32_t e = (int32_t)exp - 127 + 15;
	if (e >= 0x1f)
		return (uint16_t)(sign | 0x7c00u);
	if (e <= 0) {
		if (e < -10)
			return (uint16_t)sign;
		man |= 0x800000u;
		uint32_t shift = (uint32_t)(14 - e);
		uint32_t half = 1u << (shift - 1);
		uint32_t rest = man & ((1u << shift) - 1);
		uint32_t r = man >> shift;
		if (rest > half || (rest == half && (r & 1)))
			r++;
		return (uint16_t)(sign | r);
	}
	uint32_t r = ((uint32_t)e << 10) | (man >> 13);
	uint32_t rest = man & 0x1fffu;
	if (rest > 0x1000u || (rest == 0x1000u && (r & 1)))
		r++; /* may carry into the exponent: still correct */
	return (uint16_t)(sign | r);
}

/* bfloat16 -> binary32, exact. */
static inline float sovmesh_bf16_to_f32(uint16_t b)
{
	uint32_t bits = (uint32_t)b << 16;
	float f;
	memcpy(&f, &bits, sizeof(f));
	return f;
}

/* binary32 -> bfloat16, round to nearest even; NaN stays NaN. */
static inline uint16_t sovmesh_f32_to_bf16(float f)
{
	uint32_t x;
	memcpy(&x, &f, sizeof(x));
	if ((x & 0x7f800000u) == 0x7f800000u && (x & 0x7fffffu))
		return (uint16_t)((x >> 16) | 0x40u);
	x += 0x7fffu + ((x >> 16) & 1u);
	return (uint16_t)(x >> 16);
}

/*
 * Element `i` of a float tensor as double.  The caller checks the dtype is
 * a float dtype and i < numel; data is read with memcpy (no alignment
 * needed, as mmap'd safetensors data may be unaligned).
 */
static inline double sovmesh_tensor_get(const sovmesh_tensor *t, uint64_t i)
{
	const unsigned char *p = (const unsigned char *)t->data;
	switch (t->dtype) {
	case SOVMESH_DTYPE_F64: {
		double d;
		memcpy(&d, p + i * 8, 8);
		return d;
	}
	case SOVMESH_DTYPE_F32: {
		float f;
		memcpy(&f, p + i * 4, 4);
		return f;
	}
	case SOVMESH_DTYPE_F16: {
		uint16_t h;
		memcpy(&h, p + i * 2, 2);
		return sovmesh_f16_to_f32(h);
	}
	case SOVMESH_DTYPE_BF16: {
		uint16_t h;
		memcpy(&h, p + i * 2, 2);
		return sovmesh_bf16_to_f32(h);
	}
	default:
		return 0.0;
	}
}

/* Store `v` as element `i` of a float tensor, rounding to its dtype. */
static inline void sovmesh_tensor_set_value(sovmesh_tensor *t, uint64_t i, double v)
{
	unsigned char *p = (unsigned char *)t->data;
	switch (t->dtype) {
	case SOVMESH_DTYPE_F64:
		memcpy(p + i * 8, &v, 8);
		break;
	case SOVMESH_DTYPE_F32: {
		float f = (float)v;
		memcpy(p + i * 4, &f, 4);
		break;
	}
	case SOVMESH_DTYPE_F16: {
		uint16_t h = sovmesh_f32_to_f16((float)v);
		memcpy(p + i * 2, &h, 2);
		break;
	}
	case SOVMESH_DTYPE_BF16: {
		uint16_t h = sovmesh_f32_to_bf16((float)v);
		memcpy(p + i * 2, &h, 2);
		break;
	}
	default:
		break;
	}
}

/*
 * 1 when `a` and `b` hold the same tensor names, dtypes and shapes in the
 * same order, else 0.  On 0 and when `why` is non-NULL, *why is set to the
 * index of the first tensor that differs (a->count or b->count if one set
 * is shorter).
 */
static inline int sovmesh_tensor_set_same_layout(const sovmesh_tensor_set *a,
                                                 const sovmesh_tensor_set *b, size_t *why)
{
	size_t n = a->count < b->count ? a->count : b->count;
	for (size_t i = 0; i < n; i++) {
		const sovmesh_tensor *x = &a->tensors[i], *y = &b->tensors[i];
		int same =
		    strcmp(x->name, y->name) == 0 && x->dtype == y->dtype && x->ndim == y->ndim;
		for (uint32_t d = 0; same && d < x->ndim; d++)
			same = x->shape[d] == y->shape[d];
		if (!same) {
			if (why)
				*why = i;
			return 0;
		}
	}
	if (a->count != b->count) {
		if (why)
			*why = n;
		return 0;
	}
	return 1;
}

#ifdef __cplusplus
}
#endif
#endif /* SOVMESH_TENSOR_H */

/*
 * Tensor sets owned by the core.  Every set is a struct tset whose first
 * member is the public sovmesh_tensor_set, so tset_free() can release it
 * whatever produced it.  What the set owns (name copies, heap data, the
 * metadata copy, an mmap region) is recorded in private arrays, not read
 * back from the public fields: a plugin that reorders or repoints tensors
 * cannot make tset_free() free the wrong thing.
 */
#include "tensor_set.h"

#include "log.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define TSET_MAGIC 0x74736574u /* "tset" */

struct tset {
	sovmesh_tensor_set pub; /* first: a sovmesh_tensor_set * is a struct tset * */
	uint32_t magic;
	size_t capacity; /* pub.count, kept privately */
	sovmesh_tensor *tensors;
	char **names;     /* owned name copies by init slot (not current order); NULL = blank */
	void **heap_data; /* owned data buffers, by init slot; NULL for views */
	char *metadata;   /* owned copy of pub.metadata_json */
	void *map;        /* mmap region from tset_adopt_mapping(), or NULL */
	size_t map_len;
};

static struct tset *tset_of(sovmesh_tensor_set *set)
{
	struct tset *t = (struct tset *)set;
	assert(t->magic == TSET_MAGIC); /* only sets made here may be freed here */
	return t;
}

/* See tensor_set.h.  Returns `code`; `err` may be NULL. */
int tset_fail(sovmesh_error *err, int code, const char *fmt, ...)
{
	if (!err)
		return code;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	err->code = code;
	log_one_line(err->message);
	return code;
}

/* The last enum value: names come from the SDK's sovmesh_dtype_name(). */
#define LAST_DTYPE SOVMESH_DTYPE_F8_E5M2

/* Returns the static name, or NULL for an unknown dtype. */
const char *tset_dtype_name(sovmesh_dtype dtype)
{
	if (dtype <= SOVMESH_DTYPE_INVALID || dtype > LAST_DTYPE)
		return NULL;
	return sovmesh_dtype_name(dtype);
}

/* SOVMESH_DTYPE_INVALID for NULL or an unknown name (names are case-sensitive,
 * as in the safetensors spec). */
sovmesh_dtype tset_dtype_from_name(const char *name)
{
	if (!name)
		return SOVMESH_DTYPE_INVALID;
	for (int i = SOVMESH_DTYPE_INVALID + 1; i <= LAST_DTYPE; i++)
		if (strcmp(sovmesh_dtype_name((sovmesh_dtype)i), name) == 0)
			return (sovmesh_dtype)i;
	return SOVMESH_DTYPE_INVALID;
}

/* Byte size of a tensor, or -EINVAL on a bad dtype/ndim or overflow. */
static int tensor_nbytes(sovmesh_dtype dtype, uint32_t ndim, const uint64_t *shape,
                         uint64_t *nbytes)
{
	uint64_t n = sovmesh_dtype_size(dtype);
	if (n == 0 || ndim > SOVMESH_TENSOR_MAX_DIMS || (ndim > 0 && !shape))
		return -EINVAL;
	for (uint32_t i = 0; i < ndim; i++) {
		if (shape[i] != 0 && n > UINT64_MAX / shape[i])
			return -EINVAL;
		n *= shape[i];
	}
	if (n > SIZE_MAX)
		return -EINVAL;
	*nbytes = n;
	return 0;
}

/* A blank set of `count` tensors, or NULL on out-of-memory (or a count
 * whose arrays would not fit in memory). */
static struct tset *tset_alloc(size_t count)
{
	struct tset *t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->magic = TSET_MAGIC;
	t->capacity = count;
	/* calloc(0, ..) may return NULL; allocate at least one slot so a NULL
	 * always means out-of-memory. */
	size_t n = count ? count : 1;
	t->tensors = calloc(n, sizeof(*t->tensors));
	t->names = calloc(n, sizeof(*t->names));
	t->heap_data = calloc(n, sizeof(*t->heap_data));
	if (!t->tensors || !t->names || !t->heap_data) {
		tset_free(&t->pub);
		return NULL;
	}
	t->pub.count = count;
	t->pub.tensors = t->tensors;
	return t;
}

/* Name, type and shape slot `index`; data is either `view` (not owned) or,
 * when view_data is 0, a fresh zeroed buffer. */
static int init_slot(sovmesh_tensor_set *set, size_t index, const char *name, sovmesh_dtype dtype,
                     uint32_t ndim, const uint64_t *shape, int view_data, void *view)
{
	if (!set || !name)
		return -EINVAL;
	struct tset *t = tset_of(set);
	if (index >= t->capacity || t->names[index])
		return -EINVAL;
	uint64_t nbytes;
	int r = tensor_nbytes(dtype, ndim, shape, &nbytes);
	if (r < 0)
		return r;
	if (view_data && !view && nbytes > 0)
		return -EINVAL;

	char *name_copy = strdup(name);
	if (!name_copy)
		return -ENOMEM;
	void *data = view;
	void *owned = NULL;
	if (!view_data) {
		/* One byte for empty tensors keeps data non-NULL (memcpy with a
		 * NULL pointer is undefined even for zero bytes). */
		owned = calloc(1, nbytes ? (size_t)nbytes : 1);
		if (!owned) {
			free(name_copy);
			return -ENOMEM;
		}
		data = owned;
	}
	t->names[index] = name_copy;
	t->heap_data[index] = owned;

	sovmesh_tensor *ten = &t->tensors[index];
	memset(ten, 0, sizeof(*ten));
	ten->name = name_copy;
	ten->dtype = dtype;
	ten->ndim = ndim;
	for (uint32_t i = 0; i < ndim; i++)
		ten->shape[i] = shape[i];
	ten->data = data;
	ten->nbytes = nbytes;
	return 0;
}

/* See tensor_set.h.  Caller owns the result; free with tset_free(). */
int tset_init_tensor(sovmesh_tensor_set *set, size_t index, const char *name, sovmesh_dtype dtype,
                     uint32_t ndim, const uint64_t *shape)
{
	return init_slot(set, index, name, dtype, ndim, shape, 0, NULL);
}

/* See tensor_set.h: `data` stays owned by the caller (or an adopted mapping). */
int tset_init_view(sovmesh_tensor_set *set, size_t index, const char *name, sovmesh_dtype dtype,
                   uint32_t ndim, const uint64_t *shape, void *data)
{
	return init_slot(set, index, name, dtype, ndim, shape, 1, data);
}

/* The set takes ownership of [addr, addr+len) and munmaps it when freed. */
void tset_adopt_mapping(sovmesh_tensor_set *set, void *addr, size_t len)
{
	struct tset *t = tset_of(set);
	assert(!t->map);
	t->map = addr;
	t->map_len = len;
}

/* Copies `json` (NULL clears).  0 or -ENOMEM. */
int tset_set_metadata(sovmesh_tensor_set *set, const char *json)
{
	struct tset *t = tset_of(set);
	char *copy = NULL;
	if (json) {
		copy = strdup(json);
		if (!copy)
			return -ENOMEM;
	}
	free(t->metadata);
	t->metadata = copy;
	t->pub.metadata_json = copy;
	return 0;
}

/* See tensor_set.h.  With a layout, `count` is ignored: the new set has
 * layout->count tensors; blank layout tensors stay blank.  The metadata
 * is copied too. */
sovmesh_tensor_set *tset_new(const sovmesh_tensor_set *layout, size_t count)
{
	struct tset *t = tset_alloc(layout ? layout->count : count);
	if (!t)
		return NULL;
	if (!layout)
		return &t->pub;
	for (size_t i = 0; i < layout->count; i++) {
		const sovmesh_tensor *src = &layout->tensors[i];
		if (!src->name)
			continue;
		int r = tset_init_tensor(&t->pub, i, src->name, src->dtype, src->ndim, src->shape);
		if (r < 0) {
			/* A malformed layout is a caller bug; NULL is all the
			 * contract lets us say. */
			tset_free(&t->pub);
			return NULL;
		}
	}
	if (layout->metadata_json && tset_set_metadata(&t->pub, layout->metadata_json) < 0) {
		tset_free(&t->pub);
		return NULL;
	}
	return &t->pub;
}

/* Frees everything the set owns, whatever its public fields now say. */
void tset_free(sovmesh_tensor_set *set)
{
	if (!set)
		return;
	struct tset *t = tset_of(set);
	for (size_t i = 0; i < t->capacity; i++) {
		if (t->names)
			free(t->names[i]);
		if (t->heap_data)
			free(t->heap_data[i]);
	}
	free(t->names);
	free(t->heap_data);
	free(t->tensors);
	free(t->metadata);
	if (t->map)
		munmap(t->map, t->map_len);
	t->magic = 0;
	free(t);
}

/* -EINVAL unless `t` is initialised with nbytes matching its dtype and shape,
 * so readers never run past its data. */
static int check_tensor(const sovmesh_tensor *t, size_t index, sovmesh_error *err)
{
	uint64_t nbytes;
	if (!t->name)
		return tset_fail(err, -EINVAL, "tensor %zu has no name", index);
	if (tensor_nbytes(t->dtype, t->ndim, t->shape, &nbytes) < 0)
		return tset_fail(err, -EINVAL, "tensor '%s' has an invalid dtype (%d) or shape",
		                 t->name, (int)t->dtype);
	if (nbytes != t->nbytes || (nbytes > 0 && !t->data))
		return tset_fail(err, -EINVAL,
		                 "tensor '%s' has %" PRIu64
		                 " bytes of data, its shape needs %" PRIu64,
		                 t->name, t->data ? t->nbytes : 0, nbytes);
	return 0;
}

/* See tensor_set.h.  `src` may be any set; *out is a new heap set in the
 * same order.  F64 -> F16/BF16 rounds through F32 (two roundings). */
int tset_convert(const sovmesh_tensor_set *src, sovmesh_dtype dtype, sovmesh_tensor_set **out,
                 sovmesh_error *err)
{
	*out = NULL;
	if (!sovmesh_dtype_is_float(dtype))
		return tset_fail(err, -ENOTSUP, "cannot convert to %s: not a float dtype",
		                 tset_dtype_name(dtype) ? tset_dtype_name(dtype)
		                                        : "an unknown dtype");
	for (size_t i = 0; i < src->count; i++) {
		const sovmesh_tensor *s = &src->tensors[i];
		int r = check_tensor(s, i, err);
		if (r < 0)
			return r;
		if (!sovmesh_dtype_is_float(s->dtype))
			return tset_fail(err, -ENOTSUP, "tensor '%s' is %s, not a float dtype",
			                 s->name, tset_dtype_name(s->dtype));
	}
	sovmesh_tensor_set *set = tset_new(NULL, src->count);
	if (!set)
		return tset_fail(err, -ENOMEM, "out of memory converting a tensor set");
	int r = 0;
	for (size_t i = 0; i < src->count && r == 0; i++) {
		const sovmesh_tensor *s = &src->tensors[i];
		r = tset_init_tensor(set, i, s->name, dtype, s->ndim, s->shape);
		if (r < 0)
			break;
		sovmesh_tensor *d = &set->tensors[i];
		if (s->dtype == dtype) {
			if (s->nbytes)
				memcpy(d->data, s->data, s->nbytes);
			continue;
		}
		uint64_t n = sovmesh_tensor_numel(s);
		for (uint64_t k = 0; k < n; k++)
			sovmesh_tensor_set_value(d, k, sovmesh_tensor_get(s, k));
	}
	if (r == 0 && src->metadata_json)
		r = tset_set_metadata(set, src->metadata_json);
	if (r < 0) {
		tset_free(set);
		return tset_fail(err, r, "converting a tensor set: %s",
		                 r == -ENOMEM ? "out of memory" : "invalid tensor");
	}
	*out = set;
	return 0;
}

static int cmp_tensor_name(const void *a, const void *b)
{
	const sovmesh_tensor *x = a, *y = b;
	return strcmp(x->name, y->name);
}

/* See tensor_set.h.  Works on any set (it only permutes set->tensors);
 * byte-wise strcmp order, as the safetensors reference sorts. */
int tset_sort_by_name(sovmesh_tensor_set *set, sovmesh_error *err)
{
	for (size_t i = 0; i < set->count; i++)
		if (!set->tensors[i].name)
			return tset_fail(err, -EINVAL, "tensor %zu has no name", i);
	if (set->count > 1)
		qsort(set->tensors, set->count, sizeof(set->tensors[0]), cmp_tensor_name);
	for (size_t i = 1; i < set->count; i++)
		if (strcmp(set->tensors[i - 1].name, set->tensors[i].name) == 0)
			return tset_fail(err, -EINVAL, "duplicate tensor name '%s'",
			                 set->tensors[i].name);
	return 0;
}

/* See tensor_set.h.  Non-float tensors are skipped. */
int tset_check_finite(const sovmesh_tensor_set *set, sovmesh_error *err)
{
	for (size_t i = 0; i < set->count; i++) {
		const sovmesh_tensor *t = &set->tensors[i];
		if (!sovmesh_dtype_is_float(t->dtype))
			continue;
		int r = check_tensor(t, i, err);
		if (r < 0)
			return r;
		uint64_t n = sovmesh_tensor_numel(t);
		for (uint64_t k = 0; k < n; k++) {
			double v = sovmesh_tensor_get(t, k);
			if (!isfinite(v))
				return tset_fail(err, -EINVAL,
				                 "tensor '%s' element %" PRIu64 " is %s", t->name,
				                 k, isnan(v) ? "NaN" : (v > 0 ? "+inf" : "-inf"));
		}
	}
	return 0;
}

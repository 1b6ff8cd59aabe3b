/*
 * Tensor sets owned by the core.  Every set the core hands out (new, read
 * from a file, converted) is allocated here and freed with tset_free(),
 * whatever backs it (heap or an mmap'd safetensors file).
 */
#ifndef SOVMESH_CORE_TENSOR_SET_H
#define SOVMESH_CORE_TENSOR_SET_H

#include <sovmesh/plugin.h>

/* A set shaped like `layout` (names, dtypes, shapes copied, data zeroed),
 * or with `layout` NULL, `count` blank tensors for tset_init_tensor().
 * NULL on out-of-memory.  Caller owns; free with tset_free(). */
sovmesh_tensor_set *tset_new(const sovmesh_tensor_set *layout, size_t count);

/* Name, type and shape tensor `index` of a blank set and allocate zeroed
 * data.  0, -EINVAL (bad index, dtype, ndim, already set, overflow) or
 * -ENOMEM. */
int tset_init_tensor(sovmesh_tensor_set *set, size_t index, const char *name,
                     sovmesh_dtype dtype, uint32_t ndim, const uint64_t *shape);

/* Free a set from any tset_* / safetensors_* function; NULL is a no-op. */
void tset_free(sovmesh_tensor_set *set);

/* A heap copy of `src` with every float tensor converted to `dtype`
 * (F32, F64, F16 or BF16); non-float tensors refused with -ENOTSUP.
 * Caller owns *out. */
int tset_convert(const sovmesh_tensor_set *src, sovmesh_dtype dtype,
                 sovmesh_tensor_set **out, sovmesh_error *err);

/* Sort tensors by name (safetensors order).  Names must be unique:
 * -EINVAL naming the duplicate otherwise. */
int tset_sort_by_name(sovmesh_tensor_set *set, sovmesh_error *err);

/* 0 when every value of every float tensor is finite, else -EINVAL naming
 * the tensor and element. */
int tset_check_finite(const sovmesh_tensor_set *set, sovmesh_error *err);

/* Safetensors dtype names ("F32", "BF16", ...) <-> enum. */
const char *tset_dtype_name(sovmesh_dtype dtype);
sovmesh_dtype tset_dtype_from_name(const char *name);

/*
 * For safetensors.c and adapter.c only.  tset_fail() is sovmesh_fail() that
 * turns control characters into '?', so a tensor name or path taken from
 * a file cannot break the one-line message.
 */
int tset_fail(sovmesh_error *err, int code, const char *fmt, ...) SOVMESH_PRINTF(3, 4);

/*
 * How a parsed file's set borrows its bytes.
 * tset_init_view() is tset_init_tensor() with `data` (nbytes long) used in
 * place instead of allocated; the set never frees it.  tset_adopt_mapping()
 * hands the set an mmap region that tset_free() unmaps.  tset_set_metadata()
 * stores a copy of `json` (NULL clears).  Same errors as tset_init_tensor.
 */
int tset_init_view(sovmesh_tensor_set *set, size_t index, const char *name,
                   sovmesh_dtype dtype, uint32_t ndim, const uint64_t *shape, void *data);
void tset_adopt_mapping(sovmesh_tensor_set *set, void *addr, size_t len);
int tset_set_metadata(sovmesh_tensor_set *set, const char *json);

#endif

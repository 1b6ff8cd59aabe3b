/*
 * The safetensors format, exactly: 8-byte little-endian header length N,
 * N bytes of JSON header ({"name": {"dtype", "shape", "data_offsets"}},
 * optional "__metadata__" of string values), then the data, contiguous,
 * every byte belonging to exactly one tensor.  Header <= 100 MB.
 */
#ifndef SOVMESH_CORE_SAFETENSORS_H
#define SOVMESH_CORE_SAFETENSORS_H

#include <stddef.h>
#include <sovmesh/plugin.h>

#define SAFETENSORS_MAX_HEADER (100u * 1000u * 1000u)

/*
 * Parse a whole file image.  On success *out is a set (sorted by name)
 * whose tensor data points INTO buf when `copy` is 0 (buf must outlive
 * the set), or into fresh heap copies when `copy` is 1.  Every malformed
 * input is refused with -EINVAL (-E2BIG for a header over the limit,
 * -ENOMEM) and a message saying what is wrong.  Caller frees *out with
 * tset_free().
 */
int safetensors_parse(const void *buf, size_t len, int copy, sovmesh_tensor_set **out,
                      sovmesh_error *err);

/* mmap `path` read-only and parse it; the set keeps the mapping and
 * tset_free() unmaps it.  Messages start with the path. */
int safetensors_read_file(const char *path, sovmesh_tensor_set **out,
                          sovmesh_error *err);

/* Serialize `set` (any order; written sorted by name, as the reference
 * implementation does).  *out heap-allocated, caller frees with free(). */
int safetensors_serialize(const sovmesh_tensor_set *set, void **out, size_t *out_len,
                          sovmesh_error *err);

/* Write atomically: temp file in the same directory, fsync, rename, fsync
 * the directory.  Messages start with the path. */
int safetensors_write_file(const char *path, const sovmesh_tensor_set *set,
                           sovmesh_error *err);

#endif

/*
 * Federated-learning deltas: the arithmetic (delta = new - current,
 * adapter + delta) and the one message format that leaves the device.
 *
 * Wire plaintext (sealed with HPKE before it is sent, fl_exchange.h): a
 * safetensors file holding the NOISY delta, every tensor of the adapter's
 * layout, and "__metadata__" with exactly these string keys:
 *   "sovmesh_fl"  "1"           format version
 *   "samples"     "N"           the sender's sample count (FedAvg weight), 1..FL_DELTA_MAX_SAMPLES
 *   "round"       "R"           the sender's round id, >= 1
 * Nothing else: no sample text, no model name, no node name (the peer
 * knows who sent it from the pinned TLS certificate).
 *
 * fl_delta_decode() is the receiving side's parser and the target of
 * tests/fuzz/fuzz_fl_delta.c: malformed bytes, unknown metadata, another
 * layout, non-F32/F64 or non-finite values, sizes over the limit are all
 * refused with a one-line reason.
 */
#ifndef SOVMESH_CORE_FL_DELTA_H
#define SOVMESH_CORE_FL_DELTA_H

#include <stddef.h>
#include <stdint.h>
#include <sovmesh/plugin.h>

#define FL_DELTA_VERSION     "1"
#define FL_DELTA_MAX_SAMPLES 1000000

/* A decoded delta; `set` owned (tset_free). */
typedef struct fl_delta {
	sovmesh_tensor_set *set;
	int64_t samples;
	int64_t round;
} fl_delta;

/* *out = a - b, tensor by tensor (same layout, F32 or F64).  Caller
 * frees *out with tset_free().  -EINVAL naming the tensor otherwise. */
int fl_delta_subtract(const sovmesh_tensor_set *a, const sovmesh_tensor_set *b,
                      sovmesh_tensor_set **out, sovmesh_error *err);

/* target += delta (same layout, F32 or F64); the result must stay finite. */
int fl_delta_add(sovmesh_tensor_set *target, const sovmesh_tensor_set *delta,
                 sovmesh_error *err);

/* Serialise `noisy` with the metadata above into *out (malloc'd). */
int fl_delta_encode(const sovmesh_tensor_set *noisy, int64_t samples, int64_t round,
                    void **out, size_t *out_len, sovmesh_error *err);

/*
 * Parse and check a received plaintext against `layout` (this node's
 * current adapter): names, dtypes and shapes equal, every value finite,
 * len <= max_bytes.  0 and *out filled, or -EINVAL / -E2BIG / -ENOMEM
 * with err saying what is wrong ("tensor 'x' has shape [4,8], this node's
 * adapter has [4,16]").
 */
int fl_delta_decode(const void *buf, size_t len, const sovmesh_tensor_set *layout,
                    size_t max_bytes, fl_delta *out, sovmesh_error *err);

void fl_delta_clear(fl_delta *d);

#endif

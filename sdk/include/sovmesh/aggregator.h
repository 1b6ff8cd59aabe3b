/* SPDX-License-Identifier: MIT */
/*
 * sovmesh plugin SDK — aggregators (kind SOVMESH_KIND_AGGREGATOR, files
 * agg-<name>.so).  An aggregator combines N weighted tensor sets (the
 * noisy LoRA deltas of N parties) into one.
 */
#ifndef SOVMESH_AGGREGATOR_H
#define SOVMESH_AGGREGATOR_H

#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sovmesh_aggregator_ops {
	uint32_t size; /* sizeof(sovmesh_aggregator_ops) as built */

	/*
	 * Combine inputs[0..n-1] with weights[0..n-1] (the parties' sample
	 * counts) into `out`.
	 *
	 * n may be 0: refuse it with -EINVAL.  For n >= 1, `out` was made by
	 * the host with the layout of inputs[0] (same names, dtypes, shapes,
	 * zeroed data) and is owned by the host; for n == 0 it is empty.
	 * The plugin must check that every input has the layout of inputs[0]
	 * (sovmesh_tensor_set_same_layout), that weights are finite and > 0,
	 * that values are finite, and refuse anything else with -EINVAL and
	 * a message naming the input index and tensor.  Unsupported dtypes:
	 * -ENOTSUP.  Parameters come from the plugin's declared settings.
	 * May run on a worker thread (only the any-thread host slots then).
	 * Instances may keep state across calls (server momentum).
	 */
	int (*aggregate)(void *instance, const sovmesh_tensor_set *const *inputs,
	                 const double *weights, size_t n, sovmesh_tensor_set *out,
	                 sovmesh_error *err);
} sovmesh_aggregator_ops;

#ifdef __cplusplus
}
#endif
#endif

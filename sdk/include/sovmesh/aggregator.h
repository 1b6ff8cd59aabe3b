/* SPDX-License-Identifier: MIT */
/*
 * sovmesh plugin SDK — aggregators (kind SOVMESH_KIND_AGGREGATOR, files
 * agg-<name>.so).  An aggregator combines N weighted tensor sets (the
 * noisy LoRA deltas of N parties) into one.
 */
#ifndef SOVMESH_AGGREGATOR_H
#define SOVMESH_AGGREGATOR_H

#include <errno.h>
#include <string.h>

#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * 0 when every inputs[1..n-1] has the layout of inputs[0] (names, dtypes,
 * shapes, in order); else -EINVAL with a message naming the input and
 * saying how it differs ("input 2: tensor 'x.lora_A' has shape [4,8],
 * input 0 has [4,16]").  The check every aggregator starts with.
 */
static inline int sovmesh_check_same_layouts(const sovmesh_tensor_set *const *inputs, size_t n,
                                             sovmesh_error *err)
{
	const sovmesh_tensor_set *ref = inputs[0];
	for (size_t k = 1; k < n; k++) {
		size_t at = 0;
		if (sovmesh_tensor_set_same_layout(ref, inputs[k], &at))
			continue;
		if (at >= ref->count || at >= inputs[k]->count)
			return sovmesh_fail(err, -EINVAL,
			                    "input %zu has %zu tensors, input 0 has %zu", k,
			                    inputs[k]->count, ref->count);
		const sovmesh_tensor *a = &ref->tensors[at], *b = &inputs[k]->tensors[at];
		if (strcmp(a->name, b->name) != 0)
			return sovmesh_fail(
			    err, -EINVAL,
			    "input %zu: has tensor '%s' where input 0 has '%s' (the "
			    "inputs are different adapters)",
			    k, b->name, a->name);
		if (a->dtype != b->dtype)
			return sovmesh_fail(
			    err, -EINVAL, "input %zu: tensor '%s' has dtype %s, input 0 has %s", k,
			    b->name, sovmesh_dtype_name(b->dtype), sovmesh_dtype_name(a->dtype));
		char sa[160], sb[160];
		sovmesh_tensor_shape_text(a, sa, sizeof(sa));
		sovmesh_tensor_shape_text(b, sb, sizeof(sb));
		return sovmesh_fail(err, -EINVAL,
		                    "input %zu: tensor '%s' has shape %s, input 0 has %s", k,
		                    b->name, sb, sa);
	}
	return 0;
}

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

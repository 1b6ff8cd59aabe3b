/* SPDX-License-Identifier: MIT */
/*
 * sovmesh plugin SDK — noise mechanisms (kind SOVMESH_KIND_NOISE, files
 * dp-<name>.so).  A mechanism clips a tensor set (one party's delta) and
 * perturbs it for differential privacy, and says what that costs.
 */
#ifndef SOVMESH_NOISE_H
#define SOVMESH_NOISE_H

#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Per-call privacy parameters, from the node's config (noise_epsilon,
 * noise_clip, ...) or the offline tool's flags. */
typedef struct sovmesh_noise_params {
	uint32_t size;  /* sizeof(sovmesh_noise_params) */
	double epsilon; /* > 0; ε this release may spend */
	double delta;   /* >= 0; 0 for pure ε-DP mechanisms */
	double clip;    /* > 0; norm bound C (the mechanism picks the norm) */
} sovmesh_noise_params;

/* Accounting families, so the core's ledger can compose tighter than
 * basic composition (RDP) for the mechanisms it knows. */
typedef enum sovmesh_noise_family {
	SOVMESH_NOISE_OTHER = 0,    /* only (ε, δ) is meaningful */
	SOVMESH_NOISE_LAPLACE = 1,  /* noise_multiplier = scale b / sensitivity */
	SOVMESH_NOISE_GAUSSIAN = 2, /* noise_multiplier = σ / L2 sensitivity */
	SOVMESH_NOISE_NONE = 3,     /* no privacy: ε = +inf */
} sovmesh_noise_family;

/* What one release costs. */
typedef struct sovmesh_privacy_cost {
	uint32_t size;  /* sizeof(sovmesh_privacy_cost) */
	double epsilon; /* ε spent (basic composition adds these) */
	double delta;   /* δ spent */
	sovmesh_noise_family family;
	double noise_multiplier; /* see sovmesh_noise_family */
	double sensitivity;      /* Δ the noise was calibrated to */
} sovmesh_privacy_cost;

typedef struct sovmesh_noise_ops {
	uint32_t size; /* sizeof(sovmesh_noise_ops) as built */

	/*
	 * The cost one perturb() with `params` would spend, without touching
	 * any data; lets the core charge the budget ledger first.  0, or
	 * -EINVAL with a message for unusable params (ε <= 0, clip <= 0, a
	 * δ the mechanism cannot use).
	 */
	int (*cost)(void *instance, const sovmesh_noise_params *params, sovmesh_privacy_cost *cost,
	            sovmesh_error *err);

	/*
	 * Clip `set` in place to the mechanism's norm bound params->clip, then
	 * add noise calibrated to its sensitivity and params->epsilon; fill
	 * *cost exactly as cost() would.  Tensors are F32 or F64 (the host
	 * converts others first); other dtypes: -ENOTSUP.  Non-finite input
	 * values: -EINVAL.  Randomness only from the host's random_bytes.
	 * May run on a worker thread.
	 */
	int (*perturb)(void *instance, sovmesh_tensor_set *set, const sovmesh_noise_params *params,
	               sovmesh_privacy_cost *cost, sovmesh_error *err);
} sovmesh_noise_ops;

#ifdef __cplusplus
}
#endif
#endif

/* SPDX-License-Identifier: MIT */
/*
 * sovmesh plugin SDK — trainers (kind SOVMESH_KIND_TRAINER, files
 * trainer-<name>.so).  A trainer turns local samples plus the current
 * adapter into a new adapter.
 */
#ifndef SOVMESH_TRAINER_H
#define SOVMESH_TRAINER_H

#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Feedback ratings. */
#define SOVMESH_RATING_DOWN (-1)
#define SOVMESH_RATING_NONE 0
#define SOVMESH_RATING_UP   1

/* One training sample.  Text fields are UTF-8 or NULL; `features` is set
 * by callers that already have a numeric input (the simulator), else NULL. */
typedef struct sovmesh_sample {
	uint32_t size;          /* sizeof(sovmesh_sample) */
	const char *prompt;     /* the user's question */
	const char *response;   /* the answer that was rated */
	const char *correction; /* the user's better answer, or NULL */
	int rating;             /* SOVMESH_RATING_* */
	const float *features;  /* n_features values, or NULL */
	size_t n_features;
	int32_t label; /* class label with features, else -1 */
} sovmesh_sample;

typedef struct sovmesh_train_input {
	uint32_t size; /* sizeof(sovmesh_train_input) */
	const sovmesh_sample *samples;
	size_t n_samples;
	/* The adapter being improved, or NULL: the trainer then starts from
	 * its initial adapter.  With n_samples == 0 and current == NULL the
	 * trainer returns that initial adapter untrained, and it must be the
	 * same on every node with the same settings (derived from a fixed
	 * seed, not from `seed`): federated rounds start from it, so the
	 * deltas of different nodes refer to the same point.  Owned by the
	 * host. */
	const sovmesh_tensor_set *current;
	/* Directory holding `current` as a PEFT adapter, or NULL; for trainers
	 * that run external tools. */
	const char *current_dir;
	const char *base_model; /* e.g. "llama3.2:1b" */
	uint32_t timeout_ms;    /* 0 = no limit */
	uint64_t seed;          /* for reproducible simulator runs */
} sovmesh_train_input;

typedef struct sovmesh_train_report {
	uint32_t size; /* sizeof(sovmesh_train_report) */
	size_t samples_used;
	double loss_before; /* NaN if unknown */
	double loss_after;  /* NaN if unknown */
} sovmesh_train_report;

typedef struct sovmesh_trainer_ops {
	uint32_t size; /* sizeof(sovmesh_trainer_ops) as built */

	/*
	 * Train.  Runs on a worker thread: only the any-thread host slots may
	 * be used.  On success *out is a new set from the host's
	 * tensor_set_new that the host frees; *report filled.  -ETIMEDOUT
	 * when timeout_ms passed; -EINVAL for unusable samples.
	 */
	int (*train)(void *instance, const sovmesh_train_input *in, sovmesh_tensor_set **out,
	             sovmesh_train_report *report, sovmesh_error *err);

	/*
	 * Optional (may be NULL): measure `adapter` (NULL: the trainer's
	 * initial adapter) on labelled samples: mean loss and accuracy in
	 * [0, 1].  For the simulator and tests; trainers of real LLMs leave it
	 * NULL.  Any thread.  -EINVAL for samples it cannot score.
	 */
	int (*evaluate)(void *instance, const sovmesh_tensor_set *adapter,
	                const sovmesh_sample *samples, size_t n_samples, double *loss,
	                double *accuracy, sovmesh_error *err);
} sovmesh_trainer_ops;

#ifdef __cplusplus
}
#endif
#endif

/*
 * The offline research tools behind `sovmesh fl aggregate` and
 * `sovmesh fl noise`: load an aggregator or noise plugin by name (the
 * same loader the daemon uses, so a third party's .so works) and run it
 * on adapter files, without a daemon.
 */
#ifndef SOVMESH_CORE_FL_TOOLS_H
#define SOVMESH_CORE_FL_TOOLS_H

#include <stddef.h>
#include <sovmesh/plugin.h>
#include <sovmesh/noise.h>

#include "plugin_loader.h"

/* One input of fl aggregate: "PATH" or "PATH:WEIGHT". */
typedef struct fl_input {
	char *path;    /* owned */
	double weight; /* 1 if not given */
} fl_input;

/* Split "PATH[:WEIGHT]".  The weight must be a finite number > 0.
 * 0 or -EINVAL with a message naming the argument. */
int fl_input_parse(const char *arg, fl_input *out, sovmesh_error *err);

typedef struct fl_aggregate_args {
	const char *method;           /* aggregator name, e.g. "fedavg" */
	const char *const *params;    /* "KEY=VALUE" */
	size_t n_params;
	const char *out_path;         /* .safetensors file or adapter dir */
	const fl_input *inputs;
	size_t n_inputs;
} fl_aggregate_args;

/* Run the aggregator; write the result to out_path.  0 or -errno with a
 * one-line message (which file, which plugin, what was wrong). */
int fl_aggregate_run(const plugin_search_path *sp, const fl_aggregate_args *a,
                     sovmesh_error *err);

typedef struct fl_noise_args {
	const char *mechanism;        /* noise plugin name, e.g. "laplace" */
	const char *const *params;
	size_t n_params;
	double epsilon;
	double delta;
	double clip;
	const char *in_path;
	const char *out_path;
} fl_noise_args;

/* Clip and perturb in_path, write out_path (F32 or F64 tensors), and
 * report the privacy cost in *cost.  0 or -errno with a message. */
int fl_noise_run(const plugin_search_path *sp, const fl_noise_args *a,
                 sovmesh_privacy_cost *cost, sovmesh_error *err);

#endif

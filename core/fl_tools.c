/* The offline research tools: fl aggregate and fl noise (see fl_tools.h). */
#include "fl_tools.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>
#include <sovmesh/aggregator.h>

#include "adapter.h"
#include "host.h"
#include "plugin_settings.h"
#include "safetensors.h"
#include "tensor_set.h"

int fl_input_parse(const char *arg, fl_input *out, sovmesh_error *err)
{
	memset(out, 0, sizeof(*out));
	out->weight = 1.0;
	if (!arg || !*arg)
		return sovmesh_fail(err, -EINVAL, "empty input argument");
	const char *colon = strrchr(arg, ':');
	size_t path_len = strlen(arg);
	if (colon) {
		/* A suffix that parses as a number is a weight; otherwise the
		 * colon belongs to the path. */
		char *end = NULL;
		errno = 0;
		double w = strtod(colon + 1, &end);
		if (colon[1] && end && *end == '\0' && errno == 0) {
			if (!isfinite(w) || w <= 0)
				return sovmesh_fail(err, -EINVAL,
				                    "input '%s': weight must be a number > 0", arg);
			out->weight = w;
			path_len = (size_t)(colon - arg);
		}
	}
	if (path_len == 0)
		return sovmesh_fail(err, -EINVAL, "input '%s': missing path", arg);
	out->path = strndup(arg, path_len);
	if (!out->path)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	return 0;
}

/* One plugin instance on a private loop, for the length of one tool run. */
typedef struct tool_env {
	uv_loop_t loop;
	int loop_ready;
	host_runtime *rt;
	plugin_instance *pi;
} tool_env;

static int tool_env_open(tool_env *env, const plugin_search_path *sp, uint32_t kind,
                         const char *name, const char *const *params, size_t n_params,
                         sovmesh_error *err)
{
	memset(env, 0, sizeof(*env));
	int r = uv_loop_init(&env->loop);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot start event loop: %s", uv_strerror(r));
	env->loop_ready = 1;
	r = host_runtime_new(&env->loop, NULL, "offline", &env->rt);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot start plugin host: %s", strerror(-r));
	return plugin_instance_open(env->rt, sp, kind, name, params, n_params, &env->pi, err);
}

static void tool_env_close(tool_env *env)
{
	if (env->pi)
		plugin_instance_free(env->pi);
	if (env->rt)
		host_runtime_free(env->rt);
	if (env->loop_ready)
		uv_loop_close(&env->loop);
}

static int ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int is_dir(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/*
 * Write `set` to a .safetensors file, or else to an adapter directory
 * whose adapter_config.json is copied from `config_from` when that is an
 * adapter directory (so the result stays loadable by PEFT).
 */
static int write_output(const char *out_path, const sovmesh_tensor_set *set,
                        const char *config_from, sovmesh_error *err)
{
	if (ends_with(out_path, ".safetensors"))
		return safetensors_write_file(out_path, set, err);
	char *config_json = NULL;
	if (config_from && is_dir(config_from)) {
		sovmesh_tensor_set *ignored = NULL;
		int r = adapter_read(config_from, &ignored, &config_json, err);
		tset_free(ignored);
		if (r < 0)
			return r;
	}
	int r = adapter_write(out_path, set, config_json, err);
	free(config_json);
	return r;
}

/* Refuse NaN/Inf in an input file, naming the file. */
static int check_finite_file(const char *path, const sovmesh_tensor_set *set, sovmesh_error *err)
{
	int r = tset_check_finite(set, err);
	if (r < 0) {
		sovmesh_error inner = *err;
		return sovmesh_fail(err, r, "%s: %s", path, inner.message);
	}
	return 0;
}

int fl_aggregate_run(const plugin_search_path *sp, const fl_aggregate_args *a, sovmesh_error *err)
{
	if (a->n_inputs == 0)
		return sovmesh_fail(err, -EINVAL, "no input files given");
	if (!a->out_path || !*a->out_path)
		return sovmesh_fail(err, -EINVAL, "no output given (--out)");

	sovmesh_tensor_set **sets = calloc(a->n_inputs, sizeof(*sets));
	double *weights = calloc(a->n_inputs, sizeof(*weights));
	sovmesh_tensor_set *out = NULL;
	tool_env env;
	int r = 0;
	memset(&env, 0, sizeof(env));
	if (!sets || !weights) {
		r = sovmesh_fail(err, -ENOMEM, "out of memory");
		goto done;
	}
	/* Read inputs first: a bad file is reported before any plugin runs. */
	for (size_t i = 0; i < a->n_inputs; i++) {
		r = adapter_load_path(a->inputs[i].path, &sets[i], err);
		if (r < 0)
			goto done;
		r = check_finite_file(a->inputs[i].path, sets[i], err);
		if (r < 0)
			goto done;
		weights[i] = a->inputs[i].weight;
	}
	r = tool_env_open(&env, sp, SOVMESH_KIND_AGGREGATOR, a->method, a->params, a->n_params,
	                  err);
	if (r < 0)
		goto done;
	out = tset_new(sets[0], 0);
	if (!out) {
		r = sovmesh_fail(err, -ENOMEM, "out of memory");
		goto done;
	}
	const sovmesh_aggregator_ops *ops = env.pi->plugin->ops;
	if (!ops->aggregate) {
		r = sovmesh_fail(err, -ENOTSUP, "%s: has no aggregate slot", env.pi->plugin->path);
		goto done;
	}
	sovmesh_error perr = {0};
	r = ops->aggregate(env.pi->instance, (const sovmesh_tensor_set *const *)sets, weights,
	                   a->n_inputs, out, &perr);
	if (r < 0) {
		r = sovmesh_fail(err, r, "aggregator %s refused the inputs: %s",
		                 env.pi->plugin->label,
		                 perr.message[0] ? perr.message : strerror(-r));
		goto done;
	}
	r = tset_check_finite(out, err);
	if (r < 0) {
		sovmesh_error inner = *err;
		r = sovmesh_fail(err, r, "aggregator %s produced a non-finite value: %s",
		                 env.pi->plugin->label, inner.message);
		goto done;
	}
	r = write_output(a->out_path, out, a->inputs[0].path, err);
done:
	tset_free(out);
	tool_env_close(&env);
	if (sets)
		for (size_t i = 0; i < a->n_inputs; i++)
			tset_free(sets[i]);
	free(sets);
	free(weights);
	return r;
}

/* A heap copy in F32, or F64 when the input is all F64 (noise plugins
 * accept only these two). */
static int to_noise_dtype(const sovmesh_tensor_set *in, sovmesh_tensor_set **out,
                          sovmesh_error *err)
{
	sovmesh_dtype dtype = SOVMESH_DTYPE_F64;
	for (size_t i = 0; i < in->count; i++)
		if (in->tensors[i].dtype != SOVMESH_DTYPE_F64)
			dtype = SOVMESH_DTYPE_F32;
	return tset_convert(in, dtype, out, err);
}

int fl_noise_run(const plugin_search_path *sp, const fl_noise_args *a, sovmesh_privacy_cost *cost,
                 sovmesh_error *err)
{
	sovmesh_tensor_set *in = NULL, *work = NULL;
	tool_env env;
	int r;
	memset(&env, 0, sizeof(env));
	if (!(a->epsilon > 0) || !isfinite(a->epsilon))
		return sovmesh_fail(err, -EINVAL, "--epsilon must be a number > 0");
	if (!(a->clip > 0) || !isfinite(a->clip))
		return sovmesh_fail(err, -EINVAL, "--clip must be a number > 0");
	if (!(a->delta >= 0) || !(a->delta < 1))
		return sovmesh_fail(err, -EINVAL, "--delta must be in [0, 1)");

	r = adapter_load_path(a->in_path, &in, err);
	if (r < 0)
		goto done;
	r = check_finite_file(a->in_path, in, err);
	if (r < 0)
		goto done;
	r = to_noise_dtype(in, &work, err);
	if (r < 0)
		goto done;
	r = tool_env_open(&env, sp, SOVMESH_KIND_NOISE, a->mechanism, a->params, a->n_params, err);
	if (r < 0)
		goto done;
	const sovmesh_noise_ops *ops = env.pi->plugin->ops;
	if (!ops->perturb) {
		r = sovmesh_fail(err, -ENOTSUP, "%s: has no perturb slot", env.pi->plugin->path);
		goto done;
	}
	sovmesh_noise_params params = {
	    .size = sizeof(params), .epsilon = a->epsilon, .delta = a->delta, .clip = a->clip};
	memset(cost, 0, sizeof(*cost));
	cost->size = sizeof(*cost);
	sovmesh_error perr = {0};
	r = ops->perturb(env.pi->instance, work, &params, cost, &perr);
	if (r < 0) {
		r = sovmesh_fail(err, r, "noise mechanism %s refused: %s", env.pi->plugin->label,
		                 perr.message[0] ? perr.message : strerror(-r));
		goto done;
	}
	r = write_output(a->out_path, work, a->in_path, err);
done:
	tset_free(work);
	tset_free(in);
	tool_env_close(&env);
	return r;
}

/* sovmesh-sim's rounds and attackers (see sim_run.h). */
#include "sim_run.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sovmesh/aggregator.h>
#include <sovmesh/noise.h>
#include <sovmesh/trainer.h>

#include "fl_delta.h"
#include "plugin_settings.h"
#include "privacy_accountant.h"
#include "random.h"
#include "tensor_set.h"

/* ---- attackers ---- */

static const char *const byz_names[] = {
    [SIM_HONEST] = "honest",
    [SIM_BYZ_GAUSSIAN] = "gaussian",
    [SIM_BYZ_SIGNFLIP] = "signflip",
    [SIM_BYZ_LABELFLIP] = "labelflip",
};

const char *sim_byz_kind_name(sim_byz_kind kind)
{
	return kind <= SIM_BYZ_LABELFLIP ? byz_names[kind] : "?";
}

int sim_byzantine_parse(const char *text, sim_byzantine *out, sovmesh_error *err)
{
	const char *colon = strchr(text, ':');
	char *end = NULL;
	errno = 0;
	unsigned long n = colon ? strtoul(text, &end, 10) : 0;
	if (!colon || end != colon || text[0] < '0' || text[0] > '9' || errno || n < 1 ||
	    n > 100000)
		return sovmesh_fail(err, -EINVAL,
		                    "--byzantine %s: expected N:KIND, N >= 1 (e.g. 2:gaussian)",
		                    text);
	for (int k = SIM_BYZ_GAUSSIAN; k <= SIM_BYZ_LABELFLIP; k++)
		if (strcmp(colon + 1, byz_names[k]) == 0) {
			out->count = (uint32_t)n;
			out->kind = (sim_byz_kind)k;
			return 0;
		}
	return sovmesh_fail(err, -EINVAL,
	                    "--byzantine %s: unknown kind '%s'; expected gaussian, signflip or "
	                    "labelflip",
	                    text, colon + 1);
}

/* ---- host ---- */

int sim_env_open(sim_env *env, const plugin_search_path *sp, sovmesh_error *err)
{
	memset(env, 0, sizeof(*env));
	env->sp = sp;
	int r = uv_loop_init(&env->loop);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot start event loop: %s", uv_strerror(r));
	env->loop_ready = 1;
	r = host_runtime_new(&env->loop, NULL, "sovmesh-sim", &env->rt);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot start plugin host: %s", strerror(-r));
	return 0;
}

void sim_env_close(sim_env *env)
{
	if (env->rt)
		host_runtime_free(env->rt);
	if (env->loop_ready)
		uv_loop_close(&env->loop);
	memset(env, 0, sizeof(*env));
}

/* ---- opening plugins ---- */

static int declares(const loaded_plugin *lp, const char *name)
{
	for (const sovmesh_setting_def *d = lp->desc->settings; d && d->name; d++)
		if (strcmp(d->name, name) == 0)
			return 1;
	return 0;
}

static int user_gave(const char *const *params, size_t n, const char *name)
{
	size_t len = strlen(name);
	for (size_t i = 0; i < n; i++)
		if (strncmp(params[i], name, len) == 0 && params[i][len] == '=')
			return 1;
	return 0;
}

/*
 * Load kind-NAME by name and create an instance with the user's params
 * plus `defaults` ("key=value") for the keys the plugin declares and the
 * user left out.  Messages about params say which flag (`flag`) set them.
 */
static int open_instance(sim_env *env, uint32_t kind, const char *name, const char *flag,
                         const char *const *params, size_t n_params, const char *const *defaults,
                         size_t n_defaults, plugin_instance **out, sovmesh_error *err)
{
	loaded_plugin *lp = NULL;
	int r = plugin_load_by_name(env->sp, kind, name, &lp, err);
	if (r < 0)
		return r;
	const char **all = calloc(n_params + n_defaults + 1, sizeof(*all));
	if (!all) {
		plugin_release(lp, 1);
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	}
	size_t n = 0;
	for (size_t i = 0; i < n_params; i++)
		all[n++] = params[i];
	for (size_t i = 0; i < n_defaults; i++) {
		char key[80];
		const char *eq = strchr(defaults[i], '=');
		size_t klen = (size_t)(eq - defaults[i]);
		if (klen >= sizeof(key))
			continue;
		memcpy(key, defaults[i], klen);
		key[klen] = '\0';
		if (declares(lp, key) && !user_gave(params, n_params, key))
			all[n++] = defaults[i];
	}
	plugin_settings *settings = NULL;
	r = plugin_settings_from_params(lp->label, lp->desc->settings, all, n, &settings, err);
	free(all);
	if (r < 0) {
		/* "--param k=v: ..." -> "--agg-param k=v: ...", or for a
		 * value the simulator chose, say so. */
		if (strncmp(err->message, "--param ", 8) == 0) {
			const char *what = err->message + 8;
			char msg[sizeof(err->message)];
			snprintf(msg, sizeof(msg), "%s: %s %s", lp->label, flag, what);
			for (size_t i = 0; i < n_defaults; i++) {
				size_t len = strlen(defaults[i]);
				if (strncmp(what, defaults[i], len) == 0 && what[len] == ':')
					snprintf(msg, sizeof(msg),
					         "%s: %s (set by the simulator from the data"
					         " and options)%s",
					         lp->label, defaults[i], what + len);
			}
			snprintf(err->message, sizeof(err->message), "%s", msg);
		}
		plugin_release(lp, 1);
		return r;
	}
	return plugin_instance_new(env->rt, lp, settings, out, err);
}

int sim_run_open(sim_env *env, const sim_setup *s, sim_run *run, sovmesh_error *err)
{
	char p_rank[32], p_classes[32], p_feat[48], p_epochs[32];
	snprintf(p_rank, sizeof(p_rank), "rank=0");
	snprintf(p_classes, sizeof(p_classes), "classes=%u", s->data->classes);
	snprintf(p_feat, sizeof(p_feat), "text_features=%zu", s->data->d);
	snprintf(p_epochs, sizeof(p_epochs), "epochs=%u", s->local_epochs);
	const char *tdefaults[] = {p_rank, p_classes, p_feat, p_epochs};
	int r =
	    open_instance(env, SOVMESH_KIND_TRAINER, s->trainer, "--trainer-param",
	                  s->trainer_params, s->n_trainer_params, tdefaults, 4, &run->trainer, err);
	if (r < 0)
		return r;
	const sovmesh_trainer_ops *tops = run->trainer->plugin->ops;
	if (!tops->train || !tops->evaluate)
		return sovmesh_fail(err, -ENOTSUP,
		                    "%s: has no %s slot; the simulator needs train() and "
		                    "evaluate()",
		                    run->trainer->plugin->path, tops->train ? "evaluate" : "train");

	if (s->noise && isfinite(run->epsilon)) {
		r = open_instance(env, SOVMESH_KIND_NOISE, s->noise, "--noise-param",
		                  s->noise_params, s->n_noise_params, NULL, 0, &run->noise, err);
		if (r < 0)
			return r;
		const sovmesh_noise_ops *nops = run->noise->plugin->ops;
		if (!nops->perturb || !nops->cost)
			return sovmesh_fail(err, -ENOTSUP, "%s: has no %s slot",
			                    run->noise->plugin->path,
			                    nops->perturb ? "cost" : "perturb");
		sovmesh_noise_params np = {.size = sizeof(np),
		                           .epsilon = run->epsilon,
		                           .delta = s->delta,
		                           .clip = s->clip};
		sovmesh_privacy_cost cost = {.size = sizeof(cost)};
		sovmesh_error perr = {0};
		r = nops->cost(run->noise->instance, &np, &cost, &perr);
		if (r < 0)
			return sovmesh_fail(err, r,
			                    "noise mechanism %s refused epsilon %g, delta %g, "
			                    "clip %g: %s",
			                    run->noise->plugin->label, run->epsilon, s->delta,
			                    s->clip, perr.message[0] ? perr.message : strerror(-r));
	}

	r = open_instance(env, SOVMESH_KIND_AGGREGATOR, run->aggregator, "--agg-param",
	                  run->agg_params, run->n_agg_params, NULL, 0, &run->agg, err);
	if (r < 0)
		return r;
	const sovmesh_aggregator_ops *aops = run->agg->plugin->ops;
	if (!aops->aggregate)
		return sovmesh_fail(err, -ENOTSUP, "%s: has no aggregate slot",
		                    run->agg->plugin->path);

	size_t n = (size_t)s->rounds + 1;
	run->accuracy = calloc(n, sizeof(double));
	run->loss = calloc(n, sizeof(double));
	run->eps_spent = calloc(n, sizeof(double));
	if (!run->accuracy || !run->loss || !run->eps_spent)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	return 0;
}

void sim_run_close(sim_run *run)
{
	if (run->trainer)
		plugin_instance_free(run->trainer);
	if (run->noise)
		plugin_instance_free(run->noise);
	if (run->agg)
		plugin_instance_free(run->agg);
	run->trainer = run->noise = run->agg = NULL;
	free(run->accuracy);
	free(run->loss);
	free(run->eps_spent);
	run->accuracy = run->loss = run->eps_spent = NULL;
}

/* ---- tensor helpers ---- */

static size_t set_numel(const sovmesh_tensor_set *s)
{
	size_t n = 0;
	for (size_t k = 0; k < s->count; k++)
		n += (size_t)sovmesh_tensor_numel(&s->tensors[k]);
	return n;
}

static double set_l2(const sovmesh_tensor_set *s)
{
	double sum = 0;
	for (size_t k = 0; k < s->count; k++) {
		const sovmesh_tensor *t = &s->tensors[k];
		for (uint64_t i = 0, n = sovmesh_tensor_numel(t); i < n; i++) {
			double v = sovmesh_tensor_get(t, i);
			sum += v * v;
		}
	}
	return sqrt(sum);
}

static void set_scale(sovmesh_tensor_set *s, double f)
{
	for (size_t k = 0; k < s->count; k++) {
		sovmesh_tensor *t = &s->tensors[k];
		for (uint64_t i = 0, n = sovmesh_tensor_numel(t); i < n; i++)
			sovmesh_tensor_set_value(t, i, f * sovmesh_tensor_get(t, i));
	}
}

static void set_gaussian(sovmesh_tensor_set *s, double sigma, uint64_t *rng)
{
	for (size_t k = 0; k < s->count; k++) {
		sovmesh_tensor *t = &s->tensors[k];
		for (uint64_t i = 0, n = sovmesh_tensor_numel(t); i < n; i++)
			sovmesh_tensor_set_value(t, i, sigma * sim_rng_normal(rng));
	}
}

/* global += add when every sum is finite in global's dtype; else leave
 * global as it was and return -ERANGE. */
static int add_if_finite(sovmesh_tensor_set *global, const sovmesh_tensor_set *add)
{
	for (int pass = 0; pass < 2; pass++)
		for (size_t k = 0; k < global->count; k++) {
			sovmesh_tensor *t = &global->tensors[k];
			const sovmesh_tensor *a = &add->tensors[k];
			for (uint64_t i = 0, n = sovmesh_tensor_numel(t); i < n; i++) {
				double v = sovmesh_tensor_get(t, i) + sovmesh_tensor_get(a, i);
				if (pass == 0 && (!isfinite(v) || (t->dtype == SOVMESH_DTYPE_F32 &&
				                                   !isfinite((float)v))))
					return -ERANGE;
				if (pass == 1)
					sovmesh_tensor_set_value(t, i, v);
			}
		}
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* ---- a run ---- */

/* Stream ids for sim_rng_mix, so no two uses share a stream. */
#define STREAM_NOISE  UINT64_C(0x6e6f697365)
#define STREAM_ATTACK UINT64_C(0xa77ac4)

int sim_run_exec(const sim_setup *s, sim_run *run, sim_progress_fn progress, void *ctx,
                 sovmesh_error *err)
{
	const sim_split *sp = s->split;
	const uint32_t K = sp->clients;
	const sovmesh_trainer_ops *tops = run->trainer->plugin->ops;
	const sovmesh_aggregator_ops *aops = run->agg->plugin->ops;
	const sovmesh_noise_ops *nops = run->noise ? run->noise->plugin->ops : NULL;
	void *tinst = run->trainer->instance;
	const char *tlabel = run->trainer->plugin->label;
	accountant_release *rels = NULL; /* one per round with a release */
	size_t n_rels = 0;

	sovmesh_tensor_set *global = NULL, *avg = NULL;
	sovmesh_tensor_set **deltas = calloc(K, sizeof(*deltas));
	double *weights = calloc(K, sizeof(*weights));
	double *norms = calloc(K, sizeof(*norms));
	uint32_t *who = calloc(K, sizeof(*who));
	sovmesh_sample **flipped = calloc(K, sizeof(*flipped));
	sovmesh_error perr = {0};
	int r = 0;
	if (!deltas || !weights || !norms || !who || !flipped) {
		r = sovmesh_fail(err, -ENOMEM, "out of memory");
		goto done;
	}
	/* Label flippers train on their own copy with y -> classes-1-y. */
	for (uint32_t k = 0; k < K; k++) {
		if (s->attacker[k] != SIM_BYZ_LABELFLIP || sp->off[k + 1] == sp->off[k])
			continue;
		size_t m = sp->off[k + 1] - sp->off[k];
		flipped[k] = malloc(m * sizeof(**flipped));
		if (!flipped[k]) {
			r = sovmesh_fail(err, -ENOMEM, "out of memory");
			goto done;
		}
		memcpy(flipped[k], sp->train + sp->off[k], m * sizeof(**flipped));
		for (size_t i = 0; i < m; i++)
			flipped[k][i].label = (int32_t)s->data->classes - 1 - flipped[k][i].label;
	}

	/* Every run sees the same noise stream: runs differ only in what the
	 * user varied. */
	rng_insecure_seed(sim_rng_mix(s->seed, STREAM_NOISE, 0));

	sovmesh_train_input in = {.size = sizeof(in)};
	sovmesh_train_report rep = {.size = sizeof(rep)};
	r = tops->train(tinst, &in, &global, &rep, &perr);
	if (r < 0) {
		r = sovmesh_fail(err, r, "%s: the initial adapter: %s", tlabel,
		                 perr.message[0] ? perr.message : strerror(-r));
		goto done;
	}
	run->params = set_numel(global);
	r = tops->evaluate(tinst, global, sp->test, sp->n_test, &run->loss[0], &run->accuracy[0],
	                   &perr);
	if (r < 0) {
		r = sovmesh_fail(err, r, "%s: evaluate: %s", tlabel,
		                 perr.message[0] ? perr.message : strerror(-r));
		goto done;
	}
	run->eps_spent[0] = 0;
	if (progress)
		progress(ctx, run, 0);

	double spent = 0;
	/* One release per round for each client (the privacy unit is one
	 * client's data), composed by the chosen accountant. */
	rels = calloc(s->rounds + 1, sizeof(*rels));
	if (!rels) {
		r = sovmesh_fail(err, -ENOMEM, "out of memory");
		goto done;
	}
	for (uint32_t round = 1; round <= s->rounds; round++) {
		size_t n_in = 0, n_norms = 0;
		double eps_round = 0, delta_round = 0;
		accountant_release rel_round = {.family = SOVMESH_NOISE_OTHER};
		int released = 0;
		for (uint32_t k = 0; k < K; k++) {
			size_t lo = sp->off[k], hi = sp->off[k + 1];
			if (lo == hi)
				continue; /* an empty Dirichlet shard: nothing to train on */
			sim_byz_kind kind = (sim_byz_kind)s->attacker[k];
			sovmesh_tensor_set *trained = NULL;
			in = (sovmesh_train_input){
			    .size = sizeof(in),
			    .samples = flipped[k] ? flipped[k] : sp->train + lo,
			    .n_samples = hi - lo,
			    .current = global,
			    .seed = sim_rng_mix(s->seed, round, k),
			};
			rep = (sovmesh_train_report){.size = sizeof(rep)};
			perr.message[0] = '\0';
			run->trainings++;
			r = tops->train(tinst, &in, &trained, &rep, &perr);
			if (r == -ERANGE) {
				/* Diverged (a wrecked global adapter): this client
				 * sits the round out, as a failed node would. */
				run->diverged++;
				continue;
			}
			if (r < 0) {
				r = sovmesh_fail(err, r, "%s: round %u, client %u: %s", tlabel,
				                 round, k + 1,
				                 perr.message[0] ? perr.message : strerror(-r));
				goto done;
			}
			sovmesh_tensor_set *delta = NULL;
			r = fl_delta_subtract(trained, global, &delta, err);
			tset_free(trained);
			if (r < 0)
				goto done;
			if (kind == SIM_HONEST)
				norms[n_norms++] = set_l2(delta);
			if (kind == SIM_BYZ_SIGNFLIP)
				set_scale(delta, -(isnan(s->byz_scale) ? 1.0 : s->byz_scale));
			if ((kind == SIM_HONEST || kind == SIM_BYZ_LABELFLIP) && nops) {
				sovmesh_noise_params np = {.size = sizeof(np),
				                           .epsilon = run->epsilon,
				                           .delta = s->delta,
				                           .clip = s->clip};
				sovmesh_privacy_cost cost = {.size = sizeof(cost)};
				r = nops->perturb(run->noise->instance, delta, &np, &cost, &perr);
				if (r < 0) {
					tset_free(delta);
					r = sovmesh_fail(err, r,
					                 "noise mechanism %s: round %u, client "
					                 "%u: %s",
					                 run->noise->plugin->label, round, k + 1,
					                 perr.message[0] ? perr.message
					                                 : strerror(-r));
					goto done;
				}
				if (cost.epsilon >= eps_round)
					rel_round = (accountant_release){
					    .family = cost.family,
					    .noise_multiplier = cost.noise_multiplier,
					    .epsilon = cost.epsilon,
					    .delta = cost.delta};
				eps_round = fmax(eps_round, cost.epsilon);
				delta_round = fmax(delta_round, cost.delta);
			}
			if (kind == SIM_HONEST || kind == SIM_BYZ_LABELFLIP)
				released = 1;
			deltas[n_in] = delta;
			weights[n_in] = (double)(hi - lo);
			who[n_in++] = k;
		}
		/* Gaussian attackers: sigma = --byz-scale, or 10x the median
		 * L2 norm of this round's honest deltas, per value (so the
		 * attack's norm is about 10 sqrt(d) honest norms).  A tenth of
		 * that spread over d values (attack norm 10x honest) barely
		 * moves FedAvg on the digits: docs/simulator.md. */
		double sigma = s->byz_scale;
		if (isnan(sigma)) {
			double typical = 1;
			if (n_norms > 0) {
				qsort(norms, n_norms, sizeof(*norms), cmp_double);
				typical = n_norms % 2
				              ? norms[n_norms / 2]
				              : 0.5 * (norms[n_norms / 2 - 1] + norms[n_norms / 2]);
			}
			sigma = 10 * typical;
		}
		for (size_t i = 0; i < n_in; i++)
			if (s->attacker[who[i]] == SIM_BYZ_GAUSSIAN) {
				uint64_t g = sim_rng_mix(s->seed, STREAM_ATTACK ^ round, who[i]);
				set_gaussian(deltas[i], sigma, &g);
			}

		if (n_in > 0) {
			avg = tset_new(deltas[0], 0);
			if (!avg) {
				r = sovmesh_fail(err, -ENOMEM, "out of memory");
				goto done;
			}
			perr.message[0] = '\0';
			r = aops->aggregate(run->agg->instance,
			                    (const sovmesh_tensor_set *const *)deltas, weights,
			                    n_in, avg, &perr);
			if (r < 0) {
				r = sovmesh_fail(err, r,
				                 "aggregator %s refused round %u (%zu inputs): %s",
				                 run->agg->plugin->label, round, n_in,
				                 perr.message[0] ? perr.message : strerror(-r));
				goto done;
			}
			if (add_if_finite(global, avg) < 0)
				run->skipped_updates++;
			tset_free(avg);
			avg = NULL;
		}
		for (size_t i = 0; i < n_in; i++) {
			tset_free(deltas[i]);
			deltas[i] = NULL;
		}
		/* Basic composition: each release of a client costs eps_round;
		 * without a noise step a released delta is not private at all. */
		if (released && !nops) {
			spent = INFINITY;
		} else if (released) {
			rel_round.epsilon = eps_round;
			rel_round.delta = delta_round;
			rels[n_rels++] = rel_round;
			double d = 0;
			sovmesh_error aerr = {0};
			if (accountant_compose((accountant_kind)s->accountant, rels, n_rels,
			                       s->target_delta, &spent, &d, &aerr) < 0) {
				r = sovmesh_fail(err, -EINVAL, "accountant: %s", aerr.message);
				goto done;
			}
			run->delta_spent = d;
		}
		run->eps_spent[round] = spent;
		r = tops->evaluate(tinst, global, sp->test, sp->n_test, &run->loss[round],
		                   &run->accuracy[round], &perr);
		if (r < 0) {
			r = sovmesh_fail(err, r, "%s: evaluate after round %u: %s", tlabel, round,
			                 perr.message[0] ? perr.message : strerror(-r));
			goto done;
		}
		if (progress)
			progress(ctx, run, round);
	}
	r = 0;
done:
	free(rels);
	tset_free(avg);
	tset_free(global);
	if (deltas)
		for (uint32_t k = 0; k < K; k++)
			tset_free(deltas[k]);
	if (flipped)
		for (uint32_t k = 0; k < K; k++)
			free(flipped[k]);
	free(flipped);
	free(deltas);
	free(weights);
	free(norms);
	free(who);
	return r;
}

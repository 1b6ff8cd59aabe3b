/*
 * sovmesh-sim's rounds: K virtual clients in one process, with the real
 * trainer, noise and aggregator plugins loaded by name, and Byzantine
 * clients that attack on purpose.
 *
 * One round: every client with a non-empty shard trains from the global
 * adapter on its shard (seed = mix(seed, round, client)), delta = new -
 * global; honest and labelflip clients pass the delta through the noise
 * plugin (if any; the cost is charged to the run's accountant); the
 * aggregator combines the deltas weighted by shard size; global +=
 * aggregate; the trainer's evaluate() scores the test part.
 *
 * Randomness: the shuffles, shards, training seeds and Gaussian attacks
 * come from sim_data.h's PRNG; the plugins' random_bytes (the noise) from
 * the core's RNG switched to a seeded stream (rng_insecure_seed),
 * reseeded identically at the start of every run.  So a run depends only
 * on its own settings and --seed, and its noise is NOT private.
 */
#ifndef SOVMESH_SIM_RUN_H
#define SOVMESH_SIM_RUN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <sovmesh/plugin.h>

#include "host.h"
#include "plugin_loader.h"
#include "sim_data.h"

/* ---- attackers ---- */

typedef enum sim_byz_kind {
	SIM_HONEST = 0,
	SIM_BYZ_GAUSSIAN,  /* sends N(0, sigma^2) values instead of its delta */
	SIM_BYZ_SIGNFLIP,  /* sends -s * its delta */
	SIM_BYZ_LABELFLIP, /* trains on labels y -> classes-1-y, otherwise honest */
} sim_byz_kind;

typedef struct sim_byzantine {
	uint32_t count;
	sim_byz_kind kind;
} sim_byzantine;

/* "N:KIND" with KIND gaussian | signflip | labelflip, N >= 1. */
int sim_byzantine_parse(const char *text, sim_byzantine *out, sovmesh_error *err);
const char *sim_byz_kind_name(sim_byz_kind kind);

/* ---- the plugin host ---- */

typedef struct sim_env {
	uv_loop_t loop;
	int loop_ready;
	host_runtime *rt;
	const plugin_search_path *sp; /* not owned */
} sim_env;

int sim_env_open(sim_env *env, const plugin_search_path *sp, sovmesh_error *err);
void sim_env_close(sim_env *env);

/* ---- what every run shares ---- */

typedef struct sim_setup {
	const sim_data *data;
	const sim_split *split;
	uint32_t rounds;
	uint32_t local_epochs; /* the trainer's `epochs`, unless --trainer-param sets it */
	uint64_t seed;
	const uint8_t *attacker; /* per client: sim_byz_kind */
	double byz_scale;        /* NAN: the kind's default */
	const char *trainer;
	const char *const *trainer_params;
	size_t n_trainer_params;
	const char *noise; /* NULL: no noise step in any run */
	const char *const *noise_params;
	size_t n_noise_params;
	double clip, delta; /* noise params (epsilon is per run) */
	int accountant;      /* accountant_kind (core/privacy_accountant.h) */
	double target_delta; /* for the RDP accountant */
} sim_setup;

/* ---- one run ---- */

typedef struct sim_run {
	/* Filled by the caller before sim_run_open. */
	char label[96];
	const char *aggregator;
	const char *const *agg_params;
	size_t n_agg_params;
	double epsilon; /* per client and round; INFINITY: this run has no noise step */

	/* Plugin instances (sim_run_open). */
	plugin_instance *trainer, *noise, *agg;

	/* Results: index 0 is the initial adapter, 1..rounds after each round. */
	double *accuracy, *loss, *eps_spent;
	double delta_spent;
	size_t params;          /* values in the adapter */
	size_t trainings;       /* local trainings run */
	size_t diverged;        /* of them, failed with -ERANGE (client sat the round out) */
	size_t skipped_updates; /* rounds whose aggregate was refused as non-finite */
} sim_run;

/* Load the run's trainer, noise (if the setup has one and the run's
 * epsilon is finite) and aggregator and check that they can serve it
 * (evaluate slot, noise cost() for the params).  Errors name the plugin
 * file or the flag. */
int sim_run_open(sim_env *env, const sim_setup *s, sim_run *run, sovmesh_error *err);

/* Called after round 0 (the initial adapter) and each round. */
typedef void (*sim_progress_fn)(void *ctx, const sim_run *run, uint32_t round);

/* Run every round; fills run's results. */
int sim_run_exec(const sim_setup *s, sim_run *run, sim_progress_fn progress, void *ctx,
                 sovmesh_error *err);

/* Free the instances and results. */
void sim_run_close(sim_run *run);

#endif

/*
 * sovmesh-sim's data: a labelled CSV (plain or gzip) of numeric features,
 * the deterministic train/test split, and the clients' shards (IID or
 * Dirichlet label skew).  Also the simulator's seeded PRNG, which the
 * shuffles, the Dirichlet draws and the Gaussian attackers share.
 */
#ifndef SOVMESH_SIM_DATA_H
#define SOVMESH_SIM_DATA_H

#include <stddef.h>
#include <stdint.h>
#include <sovmesh/plugin.h>
#include <sovmesh/trainer.h>

/* ---- PRNG (splitmix64; not for anything secret) ---- */

uint64_t sim_rng_next(uint64_t *state);
/* A seed from three numbers (e.g. run seed, round, client). */
uint64_t sim_rng_mix(uint64_t a, uint64_t b, uint64_t c);
/* Uniform in [0, 1) with 53 random bits. */
double sim_rng_uniform(uint64_t *state);
/* Standard normal (Marsaglia's polar method). */
double sim_rng_normal(uint64_t *state);
/* log of a Gamma(alpha, 1) draw, alpha > 0 (Marsaglia & Tsang 2000; for
 * alpha < 1 the boost Gamma(alpha + 1) * U^(1/alpha), kept in logs so tiny
 * alphas do not underflow). */
double sim_rng_log_gamma(uint64_t *state, double alpha);

/* ---- the data set ---- */

typedef struct sim_data {
	char *path;        /* as given */
	size_t n;          /* rows */
	size_t d;          /* features per row */
	uint32_t classes;  /* distinct labels */
	float *x;          /* n * d, already divided by scale */
	int32_t *y;        /* n class indices 0..classes-1 */
	int64_t *label_of; /* classes: the label value each index stands for */
	double scale;      /* what the features were divided by */
	int had_header;    /* 1 when the first row was a header and skipped */
} sim_data;

/*
 * Read `path` (CSV, gzip-compressed or not: zlib reads both): one row a
 * line, comma-separated numbers, every row with the same number of
 * columns; the label is column `label_column` (1-based; 0 = the last)
 * and must be an integer.  A first row that is not all numbers is a
 * header and is skipped.  Blank lines are skipped.  The distinct labels,
 * sorted, become class indices 0..classes-1 (so 0..9 stay 0..9).
 * Features are divided by `scale` (0: the largest absolute feature value
 * in the file, so they lie in [-1, 1]; 1 if every value is 0).
 * Errors name the file and line: "x.csv:7: column 3: 'abc' is not a
 * number".  Caller frees with sim_data_free().
 */
int sim_data_load(const char *path, unsigned label_column, double scale, sim_data *out,
                  sovmesh_error *err);
void sim_data_free(sim_data *d);

/* ---- split and shards ---- */

typedef struct sim_split_kind {
	int dirichlet; /* 0: IID */
	double alpha;  /* Dirichlet concentration, > 0 */
} sim_split_kind;

/* "iid" or "dirichlet:ALPHA" (ALPHA a number > 0).  -EINVAL with a message. */
int sim_split_parse(const char *text, sim_split_kind *out, sovmesh_error *err);

typedef struct sim_split {
	size_t n_train, n_test;
	sovmesh_sample *test; /* n_test samples (features point into the data) */
	uint32_t clients;
	/* Client k's shard is train[off[k] .. off[k+1]); `train` holds every
	 * training row exactly once. */
	sovmesh_sample *train;
	size_t *off;    /* clients + 1 */
	uint32_t empty; /* clients whose shard is empty (Dirichlet only) */
} sim_split;

/*
 * Shuffle the rows with `seed`, keep floor(n * (1 - test_fraction)) for
 * training and the rest for the test, and cut the training part into
 * `clients` shards: IID = equal consecutive pieces of the shuffled
 * rows; Dirichlet(alpha) = for each class, shares p ~ Dir(alpha) over
 * the clients and that class's rows cut at n_c * cumsum(p).  Errors
 * (-EINVAL): fewer training rows than clients, an empty test part.
 * `d` must outlive the split.  Caller frees with sim_split_free().
 */
int sim_split_make(const sim_data *d, double test_fraction, uint32_t clients,
                   const sim_split_kind *kind, uint64_t seed, sim_split *out, sovmesh_error *err);
void sim_split_free(sim_split *s);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * Exact discrete Gaussian sampling for dp-gaussian (internal to the
 * plugin; tests/unit/test_dp_gaussian.c compiles it in to check the
 * distribution directly).
 *
 * N_Z(0, v) is the distribution on the integers with P(y) ~ exp(-y^2/(2v)).
 * It is drawn with Canonne, Kamath & Steinke 2020, Algorithm 3: a discrete
 * Laplace proposal (their Algorithm 2) accepted with probability
 * exp(-gamma) for a rational gamma (their Algorithm 1).  Only integer
 * arithmetic on the host's random bytes is used; the variance is a
 * rational v = t*m/den with integers chosen so that every intermediate
 * fits in 128 bits.
 */
#ifndef SOVMESH_DP_GAUSSIAN_DGAUSS_H
#define SOVMESH_DP_GAUSSIAN_DGAUSS_H

#include <stddef.h>
#include <stdint.h>

#include <sovmesh/plugin.h>

#ifndef __SIZEOF_INT128__
#error "dp-gaussian needs a compiler with __int128 (any 64-bit GCC or clang target)"
/*
 * a^2 = (q[1] 2^128 + q[0]) B + *rem exactly, 0 <= *rem < B, for
 * a < 2^126 and 1 <= B <= 2^126 (exposed for the unit test).
 */
void dg_square_divmod(dg_u128 a, dg_u128 B, dg_u128 q[2], dg_u128 *rem);

#endif
__extension__ typedef __int128 dg_i128;
__extension__ typedef unsigned __int128 dg_u128;

/* Variances dg_params_for() accepts (sigma from 2^-10 to 2^40). */
#define DG_VAR_MIN 0x1p-20
#define DG_VAR_MAX 0x1p80
/* The acceptance test's denominator 2*t*m*den is at most 2^DG_B_BITS. */
#define DG_B_BITS 96

/* Random bits from the host's random_bytes, fetched 4 KiB at a time. */
typedef struct dg_rng {
	sovmesh_host *host;
	int (*random_bytes)(sovmesh_host *host, void *buf, size_t len);
	uint64_t bits; /* the low nbits are unused random bits, the rest 0 */
	unsigned nbits;
	size_t pos, len;
	int err; /* first random_bytes failure; every draw after it is 0 */
	unsigned char buf[4096];
} dg_rng;

void dg_rng_init(dg_rng *r, sovmesh_host *host,
                 int (*random_bytes)(sovmesh_host *host, void *buf, size_t len));

/*
 * A discrete Gaussian of variance parameter v = t * m / den (t is also
 * the integer scale of the discrete Laplace proposal, about sqrt(v)).
 * t * den <= 2^62, m <= 2^62 and 2 * t * m * den <= 2^DG_B_BITS.
 */
typedef struct dg_params {
	uint64_t t, m, den;
} dg_params;

/*
 * The parameters for variance `var` in [DG_VAR_MIN, DG_VAR_MAX], rounded
 * UP: t*m/den >= var, and at most var * (1 + 2^-30).
 * 0, or -ERANGE for a var outside the range (or not a number).
 */
int dg_params_for(double var, dg_params *p);

/* t*m/den as a double (rounded; for logs and tests). */
double dg_variance(const dg_params *p);

/*
 * One draw from N_Z(0, t*m/den).  When the host's random_bytes fails,
 * r->err is set (and kept) and 0 is returned: check r->err after a batch.
 */
dg_i128 dg_sample(dg_rng *r, const dg_params *p);

/*
 * a^2 = (q[1] 2^128 + q[0]) B + *rem exactly, 0 <= *rem < B, for
 * a < 2^126 and 1 <= B <= 2^126 (exposed for the unit test).
 */
void dg_square_divmod(dg_u128 a, dg_u128 B, dg_u128 q[2], dg_u128 *rem);

#endif

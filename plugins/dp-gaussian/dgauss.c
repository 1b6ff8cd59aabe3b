/* SPDX-License-Identifier: MIT */
/*
 * Exact discrete Gaussian sampler (see dgauss.h and the "Gaussian
 * mechanism" section of docs/differential-privacy.md).  The bit stream,
 * uniform draws, Bernoulli(exp(-gamma)) and discrete Laplace follow
 * plugins/dp-laplace/laplace.c; plugins link nothing of each other, so
 * they are repeated here.
 */
#include "dgauss.h"

#include <errno.h>
#include <math.h>
#include <string.h>

void dg_rng_init(dg_rng *r, sovmesh_host *host,
                 int (*random_bytes)(sovmesh_host *host, void *buf, size_t len))
{
	memset(r, 0, offsetof(dg_rng, buf));
	r->host = host;
	r->random_bytes = random_bytes;
}

static uint64_t next_word(dg_rng *r)
{
	if (r->pos + 8 > r->len) {
		if (r->err)
			return 0;
		int rc = r->random_bytes(r->host, r->buf, sizeof(r->buf));
		if (rc < 0) {
			r->err = rc;
			return 0;
		}
		r->pos = 0;
		r->len = sizeof(r->buf);
	}
	uint64_t w;
	memcpy(&w, r->buf + r->pos, sizeof(w));
	r->pos += sizeof(w);
	return w;
}

static inline uint64_t low_bits(uint64_t w, unsigned n)
{
	return n >= 64 ? w : w & ((UINT64_C(1) << n) - 1);
}

/* n (1..64) uniform random bits. */
static uint64_t take_bits(dg_rng *r, unsigned n)
{
	if (n <= r->nbits) {
		uint64_t v = low_bits(r->bits, n);
		r->bits = n >= 64 ? 0 : r->bits >> n;
		r->nbits -= n;
		return v;
	}
	unsigned have = r->nbits, need = n - have; /* have < 64, 1 <= need <= 64 */
	uint64_t w = next_word(r);
	uint64_t v = r->bits | (low_bits(w, need) << have);
	r->bits = need >= 64 ? 0 : w >> need;
	r->nbits = 64 - need;
	return v;
}

/* Uniform on {0, ..., n-1}, n >= 1, by rejection (no modulo bias). */
static uint64_t uniform(dg_rng *r, uint64_t n)
{
	if (n <= 1)
		return 0;
	unsigned width = 64u - (unsigned)__builtin_clzll(n - 1);
	for (;;) {
		uint64_t v = take_bits(r, width);
		if (v < n)
			return v;
		if (r->err)
			return 0;
	}
}

/* Uniform on {0, ..., n-1}, 1 <= n <= 2^127. */
static dg_u128 uniform128(dg_rng *r, dg_u128 n)
{
	if (n >> 64 == 0)
		return uniform(r, (uint64_t)n);
	dg_u128 top = (n - 1) >> 64; /* >= 1 */
	unsigned width = 64u - (unsigned)__builtin_clzll((uint64_t)top);
	for (;;) {
		dg_u128 v = (dg_u128)take_bits(r, width) << 64;
		v |= take_bits(r, 64);
		if (v < n)
			return v;
		if (r->err)
			return 0;
	}
}

/*
 * Bernoulli(exp(-u/t)) for 0 <= u < t <= 2^127 (CKS Algorithm 1): count
 * K while Bernoulli(gamma/K) succeeds; P(K odd) = exp(-gamma).
 * Bernoulli(u/(tK)) is Bernoulli(u/t) AND Bernoulli(1/K), drawn
 * independently.  0 once the RNG has failed.
 */
static int bernoulli_exp_frac(dg_rng *r, dg_u128 u, dg_u128 t)
{
	uint64_t k = 1;
	while (!r->err && uniform128(r, t) < u && uniform(r, k) == 0)
		k++;
	return r->err ? 0 : (int)(k & 1);
}

/* Bernoulli(exp(-1)), the same algorithm with gamma = 1. */
static int bernoulli_exp_minus_one(dg_rng *r)
{
	uint64_t k = 1;
	while (!r->err && uniform(r, k) == 0)
		k++;
	return r->err ? 0 : (int)(k & 1);
}

void dg_square_divmod(dg_u128 a, dg_u128 B, dg_u128 q[2], dg_u128 *rem)
{
	if (a >> 64 == 0) { /* the usual case: a^2 fits */
		dg_u128 a2 = a * a;
		q[1] = 0;
		q[0] = a2 / B;
		*rem = a2 % B;
		return;
	}
	/* a^2 = hi 2^128 + lo, from the 64-bit halves. */
	uint64_t a1 = (uint64_t)(a >> 64), a0 = (uint64_t)a;
	dg_u128 p00 = (dg_u128)a0 * a0, p01 = (dg_u128)a0 * a1, p11 = (dg_u128)a1 * a1;
	dg_u128 lo = p00 + (p01 << 65);
	dg_u128 hi = p11 + (p01 >> 63) + (lo < p00);
	/* Long division, one bit at a time; r < 2B <= 2^127 never overflows. */
	dg_u128 r = 0;
	q[0] = q[1] = 0;
	for (int i = 255; i >= 0; i--) {
		unsigned bit =
		    i >= 128 ? (unsigned)(hi >> (i - 128)) & 1u : (unsigned)(lo >> i) & 1u;
		r = (r << 1) | bit;
		if (r >= B) {
			r -= B;
			q[i >> 7] |= (dg_u128)1 << (i & 127);
		}
	}
	*rem = r;
}

/*
 * Bernoulli(exp(-a^2/B)) for 0 < B <= 2^126, a < 2^126, exactly: with
 * a^2 = qB + f, q Bernoulli(exp(-1)) trials and one Bernoulli(exp(-f/B))
 * must all succeed.  The trials stop at the first failure (each fails
 * with probability 0.63), so even a huge q costs nothing.
 */
static int bernoulli_exp_square(dg_rng *r, dg_u128 a, dg_u128 B)
{
	dg_u128 q[2], f;
	dg_square_divmod(a, B, q, &f);
	for (dg_u128 i = 0; i < q[1]; i++) {
		dg_u128 j = 0;
		do { /* 2^128 trials */
			if (!bernoulli_exp_minus_one(r))
				return 0;
		} while (++j != 0);
	}
	for (dg_u128 j = 0; j < q[0]; j++)
		if (!bernoulli_exp_minus_one(r))
			return 0;
	return bernoulli_exp_frac(r, f, B);
}

/*
 * Discrete Laplace with integer scale t >= 1, P(y) ~ exp(-|y|/t) (CKS
 * Algorithm 2 with s = 1): |y| = u + t*v with u uniform on [0, t)
 * accepted with probability exp(-u/t) and v geometric, P(v) ~ exp(-v);
 * a random sign, rejecting "-0" so 0 is not counted twice.
 */
static void discrete_laplace(dg_rng *r, uint64_t t, dg_u128 *mag, int *negative)
{
	while (!r->err) {
		uint64_t u = uniform(r, t);
		if (!bernoulli_exp_frac(r, u, t))
			continue;
		uint64_t v = 0;
		while (bernoulli_exp_minus_one(r))
			v++;
		int neg = (int)take_bits(r, 1);
		if (neg && u == 0 && v == 0)
			continue;
		*mag = (dg_u128)t * v + u;
		*negative = neg;
		return;
	}
	*mag = 0;
	*negative = 0;
}

/*
 * CKS Algorithm 3 with sigma^2 = v = t*m/den: draw Y from the discrete
 * Laplace of scale t, accept with probability
 *   exp(-(|Y| - v/t)^2 / (2v)) = exp(-(|Y|*den - m)^2 / (2*t*m*den)),
 * which makes P(Y = y) ~ exp(-|y|/t) exp(-(|y| - v/t)^2/(2v))
 *                      ~ exp(-y^2/(2v))  (the rest does not depend on y).
 * |Y|*den < 2^126: |Y| < t*2^64 and t*den <= 2^62.
 */
dg_i128 dg_sample(dg_rng *r, const dg_params *p)
{
	dg_u128 B = (dg_u128)2 * p->t * p->m * p->den;
	while (!r->err) {
		dg_u128 mag;
		int neg;
		discrete_laplace(r, p->t, &mag, &neg);
		dg_u128 x = mag * p->den;
		dg_u128 a = x >= p->m ? x - p->m : p->m - x;
		if (bernoulli_exp_square(r, a, B) && !r->err)
			return neg ? -(dg_i128)mag : (dg_i128)mag;
	}
	return 0;
}

int dg_params_for(double var, dg_params *p)
{
	if (!(var >= DG_VAR_MIN && var <= DG_VAR_MAX))
		return -ERANGE;
	/* Any t >= 1 is correct; about sigma keeps the acceptance high. */
	uint64_t t = (uint64_t)floor(sqrt(var)) + 1;
	/* The finest den = 2^j with t*den <= 2^62 and 2*t*m*den <= 2^96,
	 * where m is var*den/t rounded up: the rounding error of the double
	 * quotient is at most two ulps, which the 2^-50 margin covers, so
	 * t*m/den >= var. */
	for (int j = 62; j >= 0; j--) {
		if ((dg_u128)t << j > (dg_u128)1 << 62)
			continue;
		double mr = ldexp(var, j) / (double)t * (1 + 0x1p-50);
		if (mr > 0x1p62)
			continue;
		uint64_t m = (uint64_t)ceil(mr);
		if (m == 0)
			m = 1;
		/* 2*t*m < 2^104: no overflow in the test. */
		if (j <= DG_B_BITS && (dg_u128)2 * t * m <= (dg_u128)1 << (DG_B_BITS - j)) {
			p->t = t;
			p->m = m;
			p->den = UINT64_C(1) << j;
			return 0;
		}
	}
	return -ERANGE; /* not reached for var in range */
}

double dg_variance(const dg_params *p)
{
	return (double)p->t * (double)p->m / (double)p->den;
}

/*
 * The core's randomness: GnuTLS's CSPRNG (gnutls_rnd, GNUTLS_RND_RANDOM).
 * For reproducible experiments only, the offline tools may switch the
 * whole process to a seeded ChaCha stream, loudly (rng_insecure_seed).
 */
#ifndef SOVMESH_CORE_RANDOM_H
#define SOVMESH_CORE_RANDOM_H

#include <stddef.h>
#include <stdint.h>

/* Fill buf with len random bytes.  0 or -EIO.  Thread-safe. */
int rng_bytes(void *buf, size_t len);

/* Replace the CSPRNG by a deterministic stream from `seed` for the rest
 * of the process, and log a warning that the output is not private. */
void rng_insecure_seed(uint64_t seed);

/* 1 when rng_insecure_seed() was called. */
int rng_is_deterministic(void);

#endif

/*
 * The core's randomness.  Normally every byte comes from GnuTLS's CSPRNG.
 * rng_insecure_seed() replaces it for the rest of the process by a ChaCha20
 * keystream keyed from the seed, so offline experiments can be replayed;
 * that output is predictable by anyone who knows the seed, hence the
 * warning.
 */
#include "random.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <nettle/chacha.h>
#include <nettle/sha2.h>

#include "log.h"

static atomic_int deterministic;
static pthread_mutex_t det_lock = PTHREAD_MUTEX_INITIALIZER;
static struct chacha_ctx det_ctx;
/* Keystream is produced a whole block at a time and handed out byte by
 * byte, so the stream does not depend on how callers split their reads. */
static uint8_t det_block[CHACHA_BLOCK_SIZE];
static size_t det_used = CHACHA_BLOCK_SIZE;

static void det_fill(uint8_t *out, size_t len)
{
	pthread_mutex_lock(&det_lock);
	while (len > 0) {
		if (det_used == CHACHA_BLOCK_SIZE) {
			static const uint8_t zero[CHACHA_BLOCK_SIZE];
			chacha_crypt(&det_ctx, sizeof(det_block), det_block, zero);
			det_used = 0;
		}
		size_t n = CHACHA_BLOCK_SIZE - det_used;
		if (n > len)
			n = len;
		memcpy(out, det_block + det_used, n);
		det_used += n;
		out += n;
		len -= n;
	}
	pthread_mutex_unlock(&det_lock);
}

int rng_bytes(void *buf, size_t len)
{
	if (len == 0)
		return 0;
	if (atomic_load(&deterministic)) {
		det_fill(buf, len);
		return 0;
	}
	if (gnutls_rnd(GNUTLS_RND_RANDOM, buf, len) < 0)
		return -EIO;
	return 0;
}

void rng_insecure_seed(uint64_t seed)
{
	/* Hash the seed with a label so that the key is spread over all 256
	 * bits and cannot collide with a key used for anything else. */
	static const char label[] = "sovmesh insecure deterministic rng v1";
	uint8_t seed_le[8];
	for (int i = 0; i < 8; i++)
		seed_le[i] = (uint8_t)(seed >> (8 * i));
	uint8_t key[SHA256_DIGEST_SIZE];
	struct sha256_ctx h;
	sha256_init(&h);
	sha256_update(&h, sizeof(label) - 1, (const uint8_t *)label);
	sha256_update(&h, sizeof(seed_le), seed_le);
	sha256_digest(&h, sizeof(key), key);

	static const uint8_t nonce[CHACHA_NONCE_SIZE];
	pthread_mutex_lock(&det_lock);
	chacha_set_key(&det_ctx, key);
	chacha_set_nonce(&det_ctx, nonce);
	det_used = CHACHA_BLOCK_SIZE;
	atomic_store(&deterministic, 1);
	pthread_mutex_unlock(&det_lock);
	memset(key, 0, sizeof(key));

	log_msg(SOVMESH_LOG_WARNING, "random",
	        "deterministic RNG seeded with %llu: random output (including "
	        "differential-privacy noise) is reproducible and NOT private",
	        (unsigned long long)seed);
}

int rng_is_deterministic(void)
{
	return atomic_load(&deterministic);
}

/*
 * HPKE base mode (RFC 9180) from Nettle primitives.  Section numbers in
 * comments are RFC 9180's.
 */
#include "hpke.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <nettle/aes.h>
#include <nettle/chacha-poly1305.h>
#include <nettle/curve25519.h>
#include <nettle/gcm.h>
#include <nettle/hkdf.h>
#include <nettle/hmac.h>
#include <nettle/memops.h>

/* Plain stores do not survive dead-store elimination; this does. */
static void wipe(void *p, size_t n)
{
	if (p != NULL && n > 0)
		gnutls_memset(p, 0, n);
}

#define HPKE_V1      "HPKE-v1"
#define HPKE_V1_LEN  7
#define SUITE_ID_MAX 10 /* "HPKE" + 3 ids; "KEM" + 1 id is 5 */

size_t hpke_aead_nk(uint16_t aead_id)
{
	switch (aead_id) {
	case HPKE_AEAD_AES128GCM:
		return 16;
	case HPKE_AEAD_CHACHA20POLY1305:
		return 32;
	default:
		return 0;
	}
}

int hpke_suite_check(const struct hpke_suite *suite)
{
	if (suite == NULL || suite->kem_id != HPKE_KEM_X25519_SHA256 ||
	    suite->kdf_id != HPKE_KDF_HKDF_SHA256 || hpke_aead_nk(suite->aead_id) == 0)
		return -ENOTSUP;
	return 0;
}

void hpke_hkdf_extract(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                       uint8_t prk[HPKE_NH])
{
	struct hmac_sha256_ctx mac;
	static const uint8_t empty[1];
	/* An empty salt is HMAC keyed with "", the same as Nh zero bytes. */
	hmac_sha256_set_key(&mac, salt_len, salt_len ? salt : empty);
	hkdf_extract(&mac, (nettle_hash_update_func *)hmac_sha256_update,
	             (nettle_hash_digest_func *)hmac_sha256_digest, SHA256_DIGEST_SIZE, ikm_len,
	             ikm_len ? ikm : empty, prk);
	wipe(&mac, sizeof(mac));
}

int hpke_hkdf_expand(const uint8_t prk[HPKE_NH], const uint8_t *info, size_t info_len,
                     size_t out_len, uint8_t *out)
{
	static const uint8_t empty[1];
	struct hmac_sha256_ctx mac;
	if (out_len > 255 * HPKE_NH)
		return -EINVAL;
	if (out_len == 0)
		return 0;
	hmac_sha256_set_key(&mac, HPKE_NH, prk);
	hkdf_expand(&mac, (nettle_hash_update_func *)hmac_sha256_update,
	            (nettle_hash_digest_func *)hmac_sha256_digest, SHA256_DIGEST_SIZE, info_len,
	            info_len ? info : empty, out_len, out);
	wipe(&mac, sizeof(mac));
	return 0;
}

/* LabeledExtract (§4): Extract(salt, "HPKE-v1" || suite_id || label || ikm). */
static int labeled_extract(const uint8_t *suite_id, size_t suite_len, const uint8_t *salt,
                           size_t salt_len, const char *label, const uint8_t *ikm, size_t ikm_len,
                           uint8_t prk[HPKE_NH])
{
	size_t label_len = strlen(label);
	size_t n = HPKE_V1_LEN + suite_len + label_len + ikm_len;
	uint8_t *buf = malloc(n);
	if (buf == NULL)
		return -ENOMEM;
	uint8_t *p = buf;
	memcpy(p, HPKE_V1, HPKE_V1_LEN);
	p += HPKE_V1_LEN;
	memcpy(p, suite_id, suite_len);
	p += suite_len;
	memcpy(p, label, label_len);
	p += label_len;
	if (ikm_len)
		memcpy(p, ikm, ikm_len);
	hpke_hkdf_extract(salt, salt_len, buf, n, prk);
	wipe(buf, n);
	free(buf);
	return 0;
}

/* LabeledExpand (§4): Expand(prk, I2OSP(L, 2) || "HPKE-v1" || suite_id ||
 * label || info, L). */
static int labeled_expand(const uint8_t *suite_id, size_t suite_len, const uint8_t prk[HPKE_NH],
                          const char *label, const uint8_t *info, size_t info_len, size_t L,
                          uint8_t *out)
{
	if (L > 255 * HPKE_NH)
		return -EINVAL;
	size_t label_len = strlen(label);
	size_t n = 2 + HPKE_V1_LEN + suite_len + label_len + info_len;
	uint8_t *buf = malloc(n);
	if (buf == NULL)
		return -ENOMEM;
	uint8_t *p = buf;
	*p++ = (uint8_t)(L >> 8);
	*p++ = (uint8_t)L;
	memcpy(p, HPKE_V1, HPKE_V1_LEN);
	p += HPKE_V1_LEN;
	memcpy(p, suite_id, suite_len);
	p += suite_len;
	memcpy(p, label, label_len);
	p += label_len;
	if (info_len)
		memcpy(p, info, info_len);
	int r = hpke_hkdf_expand(prk, buf, n, L, out);
	free(buf);
	return r;
}

static const uint8_t kem_suite_id[5] = {'K', 'E', 'M', 0x00, 0x20};

static size_t hpke_suite_id(const struct hpke_suite *s, uint8_t id[SUITE_ID_MAX])
{
	memcpy(id, "HPKE", 4);
	id[4] = (uint8_t)(s->kem_id >> 8);
	id[5] = (uint8_t)s->kem_id;
	id[6] = (uint8_t)(s->kdf_id >> 8);
	id[7] = (uint8_t)s->kdf_id;
	id[8] = (uint8_t)(s->aead_id >> 8);
	id[9] = (uint8_t)s->aead_id;
	return 10;
}

int hpke_derive_keypair(const uint8_t *ikm, size_t ikm_len, uint8_t sk[HPKE_NSK],
                        uint8_t pk[HPKE_NPK])
{
	uint8_t prk[HPKE_NH];
	if (ikm == NULL && ikm_len > 0)
		return -EINVAL;
	int r = labeled_extract(kem_suite_id, sizeof(kem_suite_id), NULL, 0, "dkp_prk", ikm,
	                        ikm_len, prk);
	if (r == 0)
		r = labeled_expand(kem_suite_id, sizeof(kem_suite_id), prk, "sk", NULL, 0, HPKE_NSK,
		                   sk);
	wipe(prk, sizeof(prk));
	if (r == 0)
		curve25519_mul_g(pk, sk);
	return r;
}

int hpke_generate_keypair(uint8_t sk[HPKE_NSK], uint8_t pk[HPKE_NPK])
{
	uint8_t ikm[HPKE_NSK];
	if (gnutls_rnd(GNUTLS_RND_KEY, ikm, sizeof(ikm)) < 0)
		return -EIO;
	int r = hpke_derive_keypair(ikm, sizeof(ikm), sk, pk);
	wipe(ikm, sizeof(ikm));
	return r;
}

/* X25519 with the all-zero check of RFC 7748 §6.1 (low-order points). */
static int dh(const uint8_t sk[HPKE_NSK], const uint8_t pk[HPKE_NPK], uint8_t out[32])
{
	static const uint8_t zero[32];
	curve25519_mul(out, sk, pk);
	if (memeql_sec(out, zero, 32)) {
		wipe(out, 32);
		return -EINVAL;
	}
	return 0;
}

/* ExtractAndExpand (§4.1) over dh with kem_context = enc || pkRm. */
static int extract_and_expand(const uint8_t dhv[32], const uint8_t enc[HPKE_NENC],
                              const uint8_t pkR[HPKE_NPK], uint8_t shared[HPKE_NSECRET])
{
	uint8_t kem_context[HPKE_NENC + HPKE_NPK];
	uint8_t prk[HPKE_NH];
	memcpy(kem_context, enc, HPKE_NENC);
	memcpy(kem_context + HPKE_NENC, pkR, HPKE_NPK);
	int r =
	    labeled_extract(kem_suite_id, sizeof(kem_suite_id), NULL, 0, "eae_prk", dhv, 32, prk);
	if (r == 0)
		r = labeled_expand(kem_suite_id, sizeof(kem_suite_id), prk, "shared_secret",
		                   kem_context, sizeof(kem_context), HPKE_NSECRET, shared);
	wipe(prk, sizeof(prk));
	return r;
}

int hpke_encap(const uint8_t pkR[HPKE_NPK], const uint8_t *skE, uint8_t shared_secret[HPKE_NSECRET],
               uint8_t enc[HPKE_NENC])
{
	uint8_t sk[HPKE_NSK], dhv[32];
	int r = 0;
	if (skE != NULL) {
		memcpy(sk, skE, HPKE_NSK);
		curve25519_mul_g(enc, sk);
	} else {
		r = hpke_generate_keypair(sk, enc);
	}
	if (r == 0)
		r = dh(sk, pkR, dhv);
	if (r == 0)
		r = extract_and_expand(dhv, enc, pkR, shared_secret);
	wipe(sk, sizeof(sk));
	wipe(dhv, sizeof(dhv));
	return r;
}

int hpke_decap(const uint8_t enc[HPKE_NENC], const uint8_t skR[HPKE_NSK],
               uint8_t shared_secret[HPKE_NSECRET])
{
	uint8_t dhv[32], pkR[HPKE_NPK];
	int r = dh(skR, enc, dhv);
	if (r == 0) {
		curve25519_mul_g(pkR, skR);
		r = extract_and_expand(dhv, enc, pkR, shared_secret);
	}
	wipe(dhv, sizeof(dhv));
	return r;
}

/* KeySchedule (§5.1) for mode_base: empty psk and psk_id. */
static int key_schedule_base(const struct hpke_suite *suite, const uint8_t shared[HPKE_NSECRET],
                             const uint8_t *info, size_t info_len, struct hpke_ctx **ctx_out)
{
	uint8_t sid[SUITE_ID_MAX];
	size_t sl = hpke_suite_id(suite, sid);
	struct hpke_ctx *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return -ENOMEM;
	c->suite = *suite;
	c->nk = hpke_aead_nk(suite->aead_id);

	uint8_t *ksc = c->key_schedule_context;
	ksc[0] = 0x00; /* mode_base */
	int r = labeled_extract(sid, sl, NULL, 0, "psk_id_hash", NULL, 0, ksc + 1);
	if (r == 0)
		r = labeled_extract(sid, sl, NULL, 0, "info_hash", info, info_len,
		                    ksc + 1 + HPKE_NH);
	if (r == 0)
		r = labeled_extract(sid, sl, shared, HPKE_NSECRET, "secret", NULL, 0, c->secret);
	if (r == 0)
		r = labeled_expand(sid, sl, c->secret, "key", ksc, HPKE_KSC_LEN, c->nk, c->key);
	if (r == 0)
		r = labeled_expand(sid, sl, c->secret, "base_nonce", ksc, HPKE_KSC_LEN, HPKE_NN,
		                   c->base_nonce);
	if (r == 0)
		r = labeled_expand(sid, sl, c->secret, "exp", ksc, HPKE_KSC_LEN, HPKE_NH,
		                   c->exporter_secret);
	if (r < 0) {
		hpke_ctx_free(c);
		return r;
	}
	*ctx_out = c;
	return 0;
}

static int setup_s(const struct hpke_suite *suite, const uint8_t pkR[HPKE_NPK], const uint8_t *info,
                   size_t info_len, const uint8_t *skE, struct hpke_ctx **ctx_out,
                   uint8_t enc[HPKE_NENC])
{
	uint8_t shared[HPKE_NSECRET];
	int r = hpke_suite_check(suite);
	if (r < 0)
		return r;
	if (pkR == NULL || ctx_out == NULL || enc == NULL || (info == NULL && info_len))
		return -EINVAL;
	r = hpke_encap(pkR, skE, shared, enc);
	if (r == 0)
		r = key_schedule_base(suite, shared, info, info_len, ctx_out);
	wipe(shared, sizeof(shared));
	return r;
}

int hpke_setup_base_s_sk(const struct hpke_suite *suite, const uint8_t pkR[HPKE_NPK],
                         const uint8_t *info, size_t info_len, const uint8_t *skE,
                         struct hpke_ctx **ctx_out, uint8_t enc[HPKE_NENC])
{
	return setup_s(suite, pkR, info, info_len, skE, ctx_out, enc);
}

int hpke_setup_base_s(const struct hpke_suite *suite, const uint8_t pkR[HPKE_NPK],
                      const uint8_t *info, size_t info_len, const uint8_t *ikmE, size_t ikmE_len,
                      struct hpke_ctx **ctx_out, uint8_t enc[HPKE_NENC])
{
	if (ikmE == NULL)
		return setup_s(suite, pkR, info, info_len, NULL, ctx_out, enc);
	uint8_t skE[HPKE_NSK], pkE[HPKE_NPK];
	int r = hpke_derive_keypair(ikmE, ikmE_len, skE, pkE);
	if (r == 0)
		r = setup_s(suite, pkR, info, info_len, skE, ctx_out, enc);
	wipe(skE, sizeof(skE));
	return r;
}

int hpke_setup_base_r(const struct hpke_suite *suite, const uint8_t enc[HPKE_NENC],
                      const uint8_t skR[HPKE_NSK], const uint8_t *info, size_t info_len,
                      struct hpke_ctx **ctx_out)
{
	uint8_t shared[HPKE_NSECRET];
	int r = hpke_suite_check(suite);
	if (r < 0)
		return r;
	if (enc == NULL || skR == NULL || ctx_out == NULL || (info == NULL && info_len))
		return -EINVAL;
	r = hpke_decap(enc, skR, shared);
	if (r == 0)
		r = key_schedule_base(suite, shared, info, info_len, ctx_out);
	wipe(shared, sizeof(shared));
	return r;
}

void hpke_ctx_nonce(const struct hpke_ctx *ctx, uint64_t seq, uint8_t nonce[HPKE_NN])
{
	memcpy(nonce, ctx->base_nonce, HPKE_NN);
	for (int i = 0; i < 8; i++)
		nonce[HPKE_NN - 1 - i] ^= (uint8_t)(seq >> (8 * i));
}

int hpke_aead_seal(uint16_t aead_id, const uint8_t *key, const uint8_t nonce[HPKE_NN],
                   const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len,
                   uint8_t *ct)
{
	switch (aead_id) {
	case HPKE_AEAD_AES128GCM: {
		struct gcm_aes128_ctx g;
		gcm_aes128_set_key(&g, key);
		gcm_aes128_set_iv(&g, HPKE_NN, nonce);
		if (aad_len)
			gcm_aes128_update(&g, aad_len, aad);
		if (pt_len)
			gcm_aes128_encrypt(&g, pt_len, ct, pt);
		gcm_aes128_digest(&g, HPKE_NT, ct + pt_len);
		wipe(&g, sizeof(g));
		return 0;
	}
	case HPKE_AEAD_CHACHA20POLY1305: {
		struct chacha_poly1305_ctx c;
		chacha_poly1305_set_key(&c, key);
		chacha_poly1305_set_nonce(&c, nonce);
		if (aad_len)
			chacha_poly1305_update(&c, aad_len, aad);
		if (pt_len)
			chacha_poly1305_encrypt(&c, pt_len, ct, pt);
		chacha_poly1305_digest(&c, HPKE_NT, ct + pt_len);
		wipe(&c, sizeof(c));
		return 0;
	}
	default:
		return -ENOTSUP;
	}
}

int hpke_aead_open(uint16_t aead_id, const uint8_t *key, const uint8_t nonce[HPKE_NN],
                   const uint8_t *aad, size_t aad_len, const uint8_t *ct, size_t ct_len,
                   uint8_t *pt)
{
	uint8_t tag[HPKE_NT];
	if (ct_len < HPKE_NT)
		return -EBADMSG;
	size_t pt_len = ct_len - HPKE_NT;
	switch (aead_id) {
	case HPKE_AEAD_AES128GCM: {
		struct gcm_aes128_ctx g;
		gcm_aes128_set_key(&g, key);
		gcm_aes128_set_iv(&g, HPKE_NN, nonce);
		if (aad_len)
			gcm_aes128_update(&g, aad_len, aad);
		if (pt_len)
			gcm_aes128_decrypt(&g, pt_len, pt, ct);
		gcm_aes128_digest(&g, HPKE_NT, tag);
		wipe(&g, sizeof(g));
		break;
	}
	case HPKE_AEAD_CHACHA20POLY1305: {
		struct chacha_poly1305_ctx c;
		chacha_poly1305_set_key(&c, key);
		chacha_poly1305_set_nonce(&c, nonce);
		if (aad_len)
			chacha_poly1305_update(&c, aad_len, aad);
		if (pt_len)
			chacha_poly1305_decrypt(&c, pt_len, pt, ct);
		chacha_poly1305_digest(&c, HPKE_NT, tag);
		wipe(&c, sizeof(c));
		break;
	}
	default:
		return -ENOTSUP;
	}
	if (!memeql_sec(tag, ct + pt_len, HPKE_NT)) {
		/* Unauthenticated plaintext must not reach the caller. */
		wipe(pt, pt_len);
		return -EBADMSG;
	}
	return 0;
}

/* §5.2: the sequence number must stay below 2^(8*Nn) - 1; a uint64 is the
 * tighter bound here, so UINT64_MAX itself is never used. */
int hpke_seal(struct hpke_ctx *ctx, const uint8_t *aad, size_t aad_len, const uint8_t *pt,
              size_t pt_len, uint8_t *ct)
{
	uint8_t nonce[HPKE_NN];
	if (ctx->seq == UINT64_MAX)
		return -EOVERFLOW;
	hpke_ctx_nonce(ctx, ctx->seq, nonce);
	int r = hpke_aead_seal(ctx->suite.aead_id, ctx->key, nonce, aad, aad_len, pt, pt_len, ct);
	if (r == 0)
		ctx->seq++;
	return r;
}

int hpke_open(struct hpke_ctx *ctx, const uint8_t *aad, size_t aad_len, const uint8_t *ct,
              size_t ct_len, uint8_t *pt)
{
	uint8_t nonce[HPKE_NN];
	if (ctx->seq == UINT64_MAX)
		return -EOVERFLOW;
	hpke_ctx_nonce(ctx, ctx->seq, nonce);
	int r = hpke_aead_open(ctx->suite.aead_id, ctx->key, nonce, aad, aad_len, ct, ct_len, pt);
	if (r == 0)
		ctx->seq++;
	return r;
}

int hpke_export(const struct hpke_ctx *ctx, const uint8_t *exporter_context,
                size_t exporter_context_len, size_t L, uint8_t *out)
{
	uint8_t sid[SUITE_ID_MAX];
	size_t sl = hpke_suite_id(&ctx->suite, sid);
	if (exporter_context == NULL && exporter_context_len)
		return -EINVAL;
	return labeled_expand(sid, sl, ctx->exporter_secret, "sec", exporter_context,
	                      exporter_context_len, L, out);
}

void hpke_ctx_free(struct hpke_ctx *ctx)
{
	if (ctx == NULL)
		return;
	wipe(ctx, sizeof(*ctx));
	free(ctx);
}

/*
 * HPKE (RFC 9180), base mode only, for one KEM and one KDF:
 * DHKEM(X25519, HKDF-SHA256) and HKDF-SHA256, with AES-128-GCM or
 * ChaCha20-Poly1305.  Built from Nettle primitives (curve25519, hkdf,
 * hmac-sha256, gcm/aes, chacha-poly1305); randomness from gnutls_rnd.
 * Payload encryption between peers (DESIGN.md §6.4) uses it through
 * sealed_message.h.  Proven against RFC 9180 A.1/A.2 (tests/unit/test_hpke.c).
 */
#ifndef SOVMESH_CORE_HPKE_H
#define SOVMESH_CORE_HPKE_H

#include <stddef.h>
#include <stdint.h>

#define HPKE_KEM_X25519_SHA256     0x0020
#define HPKE_KDF_HKDF_SHA256       0x0001
#define HPKE_AEAD_AES128GCM        0x0001
#define HPKE_AEAD_CHACHA20POLY1305 0x0003

#define HPKE_NSK     32 /* X25519 private key */
#define HPKE_NPK     32 /* X25519 public key */
#define HPKE_NENC    32 /* encapsulated key = ephemeral public key */
#define HPKE_NSECRET 32 /* KEM shared secret */
#define HPKE_NH      32 /* SHA-256 output */
#define HPKE_NN      12 /* AEAD nonce, both AEADs */
#define HPKE_NT      16 /* AEAD tag, both AEADs */
#define HPKE_NK_MAX  32
/* 1 (mode) + 2 * Nh */
#define HPKE_KSC_LEN (1 + 2 * HPKE_NH)

struct hpke_suite {
	uint16_t kem_id;  /* HPKE_KEM_X25519_SHA256 */
	uint16_t kdf_id;  /* HPKE_KDF_HKDF_SHA256 */
	uint16_t aead_id; /* HPKE_AEAD_* */
};

/*
 * A base-mode context.  Fields are readable (tests check them against the
 * RFC vectors); change them only through the functions below.  Every
 * secret is wiped by hpke_ctx_free().
 */
struct hpke_ctx {
	struct hpke_suite suite;
	size_t nk; /* key length of the AEAD */
	uint8_t key[HPKE_NK_MAX];
	uint8_t base_nonce[HPKE_NN];
	uint8_t exporter_secret[HPKE_NH];
	uint8_t secret[HPKE_NH]; /* key-schedule secret */
	uint8_t key_schedule_context[HPKE_KSC_LEN];
	uint64_t seq; /* next sequence number */
};

/* Key length Nk of an AEAD id, or 0 when unsupported. */
size_t hpke_aead_nk(uint16_t aead_id);

/* 0 when the suite is one this file implements, else -ENOTSUP. */
int hpke_suite_check(const struct hpke_suite *suite);

/* DeriveKeyPair (RFC 9180 §7.1.3) for X25519: sk and pk (32 bytes each)
 * from ikm (at least 32 bytes recommended; any length accepted).
 * 0 or -EINVAL. */
int hpke_derive_keypair(const uint8_t *ikm, size_t ikm_len, uint8_t sk[HPKE_NSK],
                        uint8_t pk[HPKE_NPK]);

/* GenerateKeyPair: a fresh random X25519 pair.  0 or -EIO. */
int hpke_generate_keypair(uint8_t sk[HPKE_NSK], uint8_t pk[HPKE_NPK]);

/* Encap with the ephemeral private key skE given (skE == NULL: random).
 * Writes shared_secret and enc.  -EINVAL when the DH result is all zero
 * (pkR a low-order point), -EIO when randomness fails. */
int hpke_encap(const uint8_t pkR[HPKE_NPK], const uint8_t *skE, uint8_t shared_secret[HPKE_NSECRET],
               uint8_t enc[HPKE_NENC]);

/* Decap.  0, or -EINVAL for a low-order enc. */
int hpke_decap(const uint8_t enc[HPKE_NENC], const uint8_t skR[HPKE_NSK],
               uint8_t shared_secret[HPKE_NSECRET]);

/*
 * SetupBaseS: encapsulate to pkR and build the sender context.
 * ikmE: DeriveKeyPair input for the ephemeral key (the RFC vectors), or NULL
 * for a random one (normal use).  *ctx_out is owned by the caller
 * (hpke_ctx_free).  info may be NULL when info_len is 0.
 * 0, -ENOTSUP (suite), -EINVAL (bad pkR), -ENOMEM, -EIO.
 */
int hpke_setup_base_s(const struct hpke_suite *suite, const uint8_t pkR[HPKE_NPK],
                      const uint8_t *info, size_t info_len, const uint8_t *ikmE, size_t ikmE_len,
                      struct hpke_ctx **ctx_out, uint8_t enc[HPKE_NENC]);

/* As hpke_setup_base_s, with the ephemeral private key itself given
 * (skE == NULL: random); used to replay RFC 9458's example. */
int hpke_setup_base_s_sk(const struct hpke_suite *suite, const uint8_t pkR[HPKE_NPK],
                         const uint8_t *info, size_t info_len, const uint8_t *skE,
                         struct hpke_ctx **ctx_out, uint8_t enc[HPKE_NENC]);

/* SetupBaseR: decapsulate enc with skR and build the receiver context.
 * *ctx_out owned by the caller.  Same errors as hpke_setup_base_s. */
int hpke_setup_base_r(const struct hpke_suite *suite, const uint8_t enc[HPKE_NENC],
                      const uint8_t skR[HPKE_NSK], const uint8_t *info, size_t info_len,
                      struct hpke_ctx **ctx_out);

/* The nonce for sequence number seq: base_nonce XOR I2OSP(seq, Nn). */
void hpke_ctx_nonce(const struct hpke_ctx *ctx, uint64_t seq, uint8_t nonce[HPKE_NN]);

/* Seal pt (pt_len bytes) at the context's sequence number into ct, which
 * must hold pt_len + HPKE_NT bytes, then advance the sequence number.
 * -EOVERFLOW once the sequence number is exhausted (nothing written). */
int hpke_seal(struct hpke_ctx *ctx, const uint8_t *aad, size_t aad_len, const uint8_t *pt,
              size_t pt_len, uint8_t *ct);

/* Open ct (ct_len >= HPKE_NT) into pt (ct_len - HPKE_NT bytes).  The
 * sequence number advances only on success.  -EBADMSG when authentication
 * fails (pt is zeroed), -EOVERFLOW as for hpke_seal. */
int hpke_open(struct hpke_ctx *ctx, const uint8_t *aad, size_t aad_len, const uint8_t *ct,
              size_t ct_len, uint8_t *pt);

/* Export (RFC 9180 §5.3): L bytes (at most 255 * Nh) into out.
 * 0 or -EINVAL (L too large), -ENOMEM. */
int hpke_export(const struct hpke_ctx *ctx, const uint8_t *exporter_context,
                size_t exporter_context_len, size_t L, uint8_t *out);

/* Wipe and free; NULL is fine. */
void hpke_ctx_free(struct hpke_ctx *ctx);

/* --- primitives shared with sealed_message.c (no HPKE labels) --- */

/* HKDF-Extract with SHA-256; salt may be NULL when salt_len is 0. */
void hpke_hkdf_extract(const uint8_t *salt, size_t salt_len, const uint8_t *ikm, size_t ikm_len,
                       uint8_t prk[HPKE_NH]);

/* HKDF-Expand with SHA-256; out_len at most 255 * Nh (-EINVAL otherwise). */
int hpke_hkdf_expand(const uint8_t prk[HPKE_NH], const uint8_t *info, size_t info_len,
                     size_t out_len, uint8_t *out);

/* One AEAD operation with an explicit key (hpke_aead_nk bytes) and a
 * 12-byte nonce.  Seal: ct holds pt_len + HPKE_NT.  Open: pt holds
 * ct_len - HPKE_NT; -EBADMSG on failure (pt zeroed).  -ENOTSUP for an
 * unknown aead_id. */
int hpke_aead_seal(uint16_t aead_id, const uint8_t *key, const uint8_t nonce[HPKE_NN],
                   const uint8_t *aad, size_t aad_len, const uint8_t *pt, size_t pt_len,
                   uint8_t *ct);
int hpke_aead_open(uint16_t aead_id, const uint8_t *key, const uint8_t nonce[HPKE_NN],
                   const uint8_t *aad, size_t aad_len, const uint8_t *ct, size_t ct_len,
                   uint8_t *pt);

#endif

/*
 * This node's identity, created on first start in <state_dir>/identity/
 * (directory 0700, private keys 0600):
 *   tls-key.pem   Ed25519 private key (PKCS#8 PEM)
 *   tls-cert.pem  self-signed X.509 certificate for that key (CN = node name)
 *   x25519.key    X25519 private key, 32 raw bytes (payload encryption, HPKE)
 *   x25519.pub    its public key, 32 raw bytes
 * The fingerprint is SHA-256 of the certificate's SubjectPublicKeyInfo
 * (DER), so re-issuing the certificate for the same key keeps it.
 */
#ifndef SOVMESH_CORE_IDENTITY_H
#define SOVMESH_CORE_IDENTITY_H

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdint.h>
#include <sovmesh/plugin.h>

#define IDENTITY_FP_LEN 32
#define IDENTITY_FP_HEX_LEN 64   /* lowercase hex, no separators */
#define IDENTITY_SHORT_FP_LEN 19 /* "ABCD-EFGH-JKMN-PQRS" */

typedef struct identity {
	char *node_name;                    /* owned */
	char *cert_pem;                     /* owned, NUL-terminated */
	char *key_pem;                      /* owned, NUL-terminated */
	gnutls_certificate_credentials_t creds; /* cert + key, for TLS */
	uint8_t fingerprint[IDENTITY_FP_LEN];
	char fingerprint_hex[IDENTITY_FP_HEX_LEN + 1];
	char short_fp[IDENTITY_SHORT_FP_LEN + 1];
	uint8_t x25519_public[32];
	uint8_t x25519_private[32];
} identity;

/*
 * Load the identity from <state_dir>/identity/, creating any missing part
 * (keys are generated with GnuTLS's CSPRNG; creation is atomic per file).
 * A private key file with group/other permissions is refused (it may have
 * leaked).  Caller frees *out with identity_free().  0 or -errno with a
 * one-line message naming the file.
 */
int identity_load_or_create(const char *state_dir, const char *node_name, identity **out,
                            sovmesh_error *err);

/* Wipes the private keys from memory.  NULL is a no-op. */
void identity_free(identity *id);

/* SHA-256 of the SubjectPublicKeyInfo of a DER / PEM certificate. */
int identity_fingerprint_der(const gnutls_datum_t *cert_der, uint8_t out[IDENTITY_FP_LEN]);
int identity_fingerprint_pem(const char *cert_pem, uint8_t out[IDENTITY_FP_LEN]);

/* 64 lowercase hex chars + NUL. */
void identity_fp_to_hex(const uint8_t fp[IDENTITY_FP_LEN], char out[IDENTITY_FP_HEX_LEN + 1]);
/* Parse 64 hex chars (either case).  0 or -EINVAL. */
int identity_fp_from_hex(const char *hex, uint8_t out[IDENTITY_FP_LEN]);

/*
 * The short form people compare by eye: the first 80 bits in Crockford
 * base32 (no I, L, O, U), as four groups of four: "7K3Q-9XWD-M2PA-4HJN".
 */
void identity_fp_short(const uint8_t fp[IDENTITY_FP_LEN], char out[IDENTITY_SHORT_FP_LEN + 1]);

#endif

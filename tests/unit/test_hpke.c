/*
 * HPKE (hpke.c) against RFC 9180 A.1 and A.2, read from
 * $SOVMESH_TEST_DATA_DIR/hpke-rfc9180-base-x25519.txt, plus round trips
 * and tamper checks.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hpke.h"

/* --- the vector file: "## " starts a suite; "key: hex" lines, where the
 * hex may continue on following lines; everything else is ignored. --- */

#define MAX_ENTRIES 128
#define MAX_SUITES  4

struct entry {
	char key[1024];
	char hex[2048];
};
struct section {
	char title[1024];
	struct entry e[MAX_ENTRIES];
	size_t n;
};
static struct section suites[MAX_SUITES];
static size_t n_suites;

static void trim(char *s)
{
	size_t n = strlen(s);
	while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' '))
		s[--n] = '\0';
}

static int load_vectors(void **state)
{
	(void)state;
	const char *dir = getenv("SOVMESH_TEST_DATA_DIR");
	assert_non_null(dir);
	char path[1024];
	snprintf(path, sizeof(path), "%s/hpke-rfc9180-base-x25519.txt", dir);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	char line[1024];
	struct section *cur = NULL;
	struct entry *last = NULL;
	while (fgets(line, sizeof(line), f) != NULL) {
		trim(line);
		if (strncmp(line, "## ", 3) == 0) {
			assert_true(n_suites < MAX_SUITES);
			cur = &suites[n_suites++];
			snprintf(cur->title, sizeof(cur->title), "%s", line + 3);
			last = NULL;
			continue;
		}
		if (cur == NULL || line[0] == '#' || line[0] == '~' || line[0] == '\0')
			continue;
		char *colon = strchr(line, ':');
		if (colon != NULL) {
			assert_true(cur->n < MAX_ENTRIES);
			last = &cur->e[cur->n++];
			*colon = '\0';
			snprintf(last->key, sizeof(last->key), "%s", line);
			const char *v = colon + 1;
			while (*v == ' ')
				v++;
			snprintf(last->hex, sizeof(last->hex), "%s", v);
		} else {
			assert_non_null(last);
			assert_true(strlen(last->hex) + strlen(line) < sizeof(last->hex));
			strcat(last->hex, line);
		}
	}
	fclose(f);
	assert_int_equal(n_suites, 2);
	return 0;
}

/* Decode hex into a malloc'd buffer (caller frees); *len set. */
static uint8_t *unhex(const char *hex, size_t *len)
{
	size_t n = strlen(hex);
	assert_int_equal(n % 2, 0);
	uint8_t *out = malloc(n / 2 + 1);
	assert_non_null(out);
	for (size_t i = 0; i < n / 2; i++) {
		unsigned v;
		assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
		out[i] = (uint8_t)v;
	}
	*len = n / 2;
	return out;
}

/* The first value for key at or after index *pos (advanced past it). */
static const char *find_from(const struct section *s, size_t *pos, const char *key)
{
	for (size_t i = *pos; i < s->n; i++) {
		if (strcmp(s->e[i].key, key) == 0) {
			*pos = i + 1;
			return s->e[i].hex;
		}
	}
	fail_msg("vector %s: key %s missing", s->title, key);
	return NULL;
}

static void assert_hex_equal(const uint8_t *got, size_t got_len, const char *hex)
{
	size_t n;
	uint8_t *want = unhex(hex, &n);
	assert_int_equal(got_len, n);
	assert_memory_equal(got, want, n);
	free(want);
}

static uint8_t *get(const struct section *s, const char *key, size_t *len)
{
	size_t pos = 0;
	return unhex(find_from(s, &pos, key), len);
}

static size_t counted;

static void check_suite(const struct section *s)
{
	size_t len, info_len, ikmE_len, ikmR_len;
	size_t pos = 0;
	struct hpke_suite suite = {
	    .kem_id = (uint16_t)atoi(find_from(s, &pos, "kem_id")),
	    .kdf_id = (uint16_t)atoi(find_from(s, &pos, "kdf_id")),
	    .aead_id = (uint16_t)atoi(find_from(s, &pos, "aead_id")),
	};
	pos = 0;
	assert_string_equal(find_from(s, &pos, "mode"), "0");
	uint8_t *info = get(s, "info", &info_len);
	uint8_t *ikmE = get(s, "ikmE", &ikmE_len);
	uint8_t *ikmR = get(s, "ikmR", &ikmR_len);

	uint8_t skE[HPKE_NSK], pkE[HPKE_NPK], skR[HPKE_NSK], pkR[HPKE_NPK];
	assert_int_equal(hpke_derive_keypair(ikmE, ikmE_len, skE, pkE), 0);
	assert_int_equal(hpke_derive_keypair(ikmR, ikmR_len, skR, pkR), 0);
	pos = 0;
	assert_hex_equal(pkE, sizeof(pkE), find_from(s, &pos, "pkEm"));
	assert_hex_equal(skE, sizeof(skE), find_from(s, &pos, "skEm"));
	assert_hex_equal(pkR, sizeof(pkR), find_from(s, &pos, "pkRm"));
	assert_hex_equal(skR, sizeof(skR), find_from(s, &pos, "skRm"));
	counted += 4;

	uint8_t shared[HPKE_NSECRET], enc[HPKE_NENC];
	assert_int_equal(hpke_encap(pkR, skE, shared, enc), 0);
	pos = 0;
	assert_hex_equal(enc, sizeof(enc), find_from(s, &pos, "enc"));
	assert_hex_equal(shared, sizeof(shared), find_from(s, &pos, "shared_secret"));
	uint8_t shared_r[HPKE_NSECRET];
	assert_int_equal(hpke_decap(enc, skR, shared_r), 0);
	assert_memory_equal(shared, shared_r, sizeof(shared));
	counted += 2;

	struct hpke_ctx *cs = NULL, *cr = NULL;
	uint8_t enc2[HPKE_NENC];
	assert_int_equal(hpke_setup_base_s(&suite, pkR, info, info_len, ikmE, ikmE_len, &cs, enc2),
	                 0);
	assert_memory_equal(enc, enc2, sizeof(enc));
	assert_int_equal(hpke_setup_base_r(&suite, enc, skR, info, info_len, &cr), 0);
	for (int side = 0; side < 2; side++) {
		const struct hpke_ctx *c = side ? cr : cs;
		pos = 0;
		assert_hex_equal(c->key_schedule_context, HPKE_KSC_LEN,
		                 find_from(s, &pos, "key_schedule_context"));
		assert_hex_equal(c->secret, HPKE_NH, find_from(s, &pos, "secret"));
		assert_hex_equal(c->key, c->nk, find_from(s, &pos, "key"));
		assert_hex_equal(c->base_nonce, HPKE_NN, find_from(s, &pos, "base_nonce"));
		assert_hex_equal(c->exporter_secret, HPKE_NH,
		                 find_from(s, &pos, "exporter_secret"));
	}
	counted += 5;

	/* Encryptions: each record is sequence number, pt, aad, nonce, ct. */
	size_t n_enc = 0;
	for (size_t i = 0; i < s->n; i++) {
		if (strcmp(s->e[i].key, "sequence number") != 0)
			continue;
		uint64_t seq = strtoull(s->e[i].hex, NULL, 10);
		size_t p = i + 1, pt_len, aad_len, ct_len;
		uint8_t *pt = unhex(find_from(s, &p, "pt"), &pt_len);
		uint8_t *aad = unhex(find_from(s, &p, "aad"), &aad_len);
		const char *nonce_hex = find_from(s, &p, "nonce");
		uint8_t *ct_want = unhex(find_from(s, &p, "ct"), &ct_len);
		uint8_t nonce[HPKE_NN];
		hpke_ctx_nonce(cs, seq, nonce);
		assert_hex_equal(nonce, sizeof(nonce), nonce_hex);

		/* Advance both sides through the skipped sequence numbers the
		 * way a real exchange would: seal, then open. */
		uint8_t *ct = malloc(pt_len + HPKE_NT), *out = malloc(pt_len + 1);
		assert_true(cs->seq <= seq);
		while (cs->seq < seq) {
			assert_int_equal(hpke_seal(cs, aad, aad_len, pt, pt_len, ct), 0);
			assert_int_equal(hpke_open(cr, aad, aad_len, ct, pt_len + HPKE_NT, out), 0);
		}
		assert_int_equal(hpke_seal(cs, aad, aad_len, pt, pt_len, ct), 0);
		assert_int_equal(ct_len, pt_len + HPKE_NT);
		assert_memory_equal(ct, ct_want, ct_len);
		assert_int_equal(hpke_open(cr, aad, aad_len, ct_want, ct_len, out), 0);
		assert_memory_equal(out, pt, pt_len);
		assert_int_equal(cs->seq, seq + 1);
		assert_int_equal(cr->seq, seq + 1);
		free(ct);
		free(out);
		free(pt);
		free(aad);
		free(ct_want);
		n_enc++;
		counted += 2;
	}
	assert_int_equal(n_enc, 6);

	/* Exported values: exporter_context, L, exported_value. */
	size_t n_exp = 0;
	for (size_t i = 0; i < s->n; i++) {
		if (strcmp(s->e[i].key, "exporter_context") != 0)
			continue;
		size_t p = i + 1, ectx_len;
		uint8_t *ectx = unhex(s->e[i].hex, &ectx_len);
		size_t L = (size_t)atoi(find_from(s, &p, "L"));
		const char *want = find_from(s, &p, "exported_value");
		uint8_t *out = malloc(L);
		assert_int_equal(hpke_export(cs, ectx, ectx_len, L, out), 0);
		assert_hex_equal(out, L, want);
		assert_int_equal(hpke_export(cr, ectx, ectx_len, L, out), 0);
		assert_hex_equal(out, L, want);
		free(out);
		free(ectx);
		n_exp++;
		counted++;
	}
	assert_int_equal(n_exp, 3);

	hpke_ctx_free(cs);
	hpke_ctx_free(cr);
	free(info);
	free(ikmE);
	free(ikmR);
	(void)len;
}

static void test_rfc9180_vectors(void **state)
{
	(void)state;
	counted = 0;
	for (size_t i = 0; i < n_suites; i++)
		check_suite(&suites[i]);
	/* 4 keys + enc/shared + 5 schedule + 6 x (nonce, ct) + 3 exports */
	assert_int_equal(counted, 2 * (4 + 2 + 5 + 12 + 3));
	print_message("RFC 9180 values reproduced: %zu\n", counted);
}

static void roundtrip(uint16_t aead_id)
{
	struct hpke_suite suite = {HPKE_KEM_X25519_SHA256, HPKE_KDF_HKDF_SHA256, aead_id};
	uint8_t skR[HPKE_NSK], pkR[HPKE_NPK], enc[HPKE_NENC], enc2[HPKE_NENC];
	assert_int_equal(hpke_generate_keypair(skR, pkR), 0);
	struct hpke_ctx *cs, *cr, *cs2;
	const uint8_t info[] = "sovmesh test";
	assert_int_equal(hpke_setup_base_s(&suite, pkR, info, sizeof(info), NULL, 0, &cs, enc), 0);
	assert_int_equal(hpke_setup_base_s(&suite, pkR, info, sizeof(info), NULL, 0, &cs2, enc2),
	                 0);
	/* Fresh ephemeral keys each time. */
	assert_memory_not_equal(enc, enc2, HPKE_NENC);
	assert_memory_not_equal(cs->key, cs2->key, cs->nk);
	hpke_ctx_free(cs2);
	assert_int_equal(hpke_setup_base_r(&suite, enc, skR, info, sizeof(info), &cr), 0);

	const uint8_t aad[] = "aad";
	const uint8_t msg[] = "the last user message and the model name";
	uint8_t ct[sizeof(msg) + HPKE_NT], pt[sizeof(msg)];
	assert_int_equal(hpke_seal(cs, aad, sizeof(aad), msg, sizeof(msg), ct), 0);

	/* Every single flipped bit, in ciphertext or tag, is refused and the
	 * receiver's sequence number stays put. */
	for (size_t bit = 0; bit < sizeof(ct) * 8; bit++) {
		ct[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		memset(pt, 0xAA, sizeof(pt));
		assert_int_equal(hpke_open(cr, aad, sizeof(aad), ct, sizeof(ct), pt), -EBADMSG);
		/* Nothing unauthenticated leaks out. */
		for (size_t i = 0; i < sizeof(pt); i++)
			assert_int_equal(pt[i], 0);
		ct[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	assert_int_equal(cr->seq, 0);
	/* Wrong AAD. */
	assert_int_equal(hpke_open(cr, aad, sizeof(aad) - 1, ct, sizeof(ct), pt), -EBADMSG);
	/* Truncated below a tag. */
	assert_int_equal(hpke_open(cr, aad, sizeof(aad), ct, HPKE_NT - 1, pt), -EBADMSG);
	assert_int_equal(hpke_open(cr, aad, sizeof(aad), ct, sizeof(ct), pt), 0);
	assert_memory_equal(pt, msg, sizeof(msg));
	/* The same ciphertext again is out of sequence: refused. */
	assert_int_equal(hpke_open(cr, aad, sizeof(aad), ct, sizeof(ct), pt), -EBADMSG);

	/* Empty plaintext works. */
	uint8_t tag_only[HPKE_NT];
	assert_int_equal(hpke_seal(cs, NULL, 0, NULL, 0, tag_only), 0);
	assert_int_equal(hpke_open(cr, NULL, 0, tag_only, sizeof(tag_only), NULL), 0);

	/* A wrong private key derives other keys: refused. */
	uint8_t skX[HPKE_NSK], pkX[HPKE_NPK];
	struct hpke_ctx *cx;
	assert_int_equal(hpke_generate_keypair(skX, pkX), 0);
	assert_int_equal(hpke_setup_base_r(&suite, enc, skX, info, sizeof(info), &cx), 0);
	assert_int_equal(hpke_seal(cs, aad, sizeof(aad), msg, sizeof(msg), ct), 0);
	cx->seq = cs->seq - 1;
	assert_int_equal(hpke_open(cx, aad, sizeof(aad), ct, sizeof(ct), pt), -EBADMSG);
	hpke_ctx_free(cx);
	/* Different info: refused. */
	assert_int_equal(hpke_setup_base_r(&suite, enc, skR, info, sizeof(info) - 1, &cx), 0);
	cx->seq = cs->seq - 1;
	assert_int_equal(hpke_open(cx, aad, sizeof(aad), ct, sizeof(ct), pt), -EBADMSG);
	hpke_ctx_free(cx);

	/* Exports agree between the two sides and differ by context. */
	uint8_t e1[40], e2[40], e3[40];
	assert_int_equal(hpke_export(cs, (const uint8_t *)"x", 1, sizeof(e1), e1), 0);
	assert_int_equal(hpke_export(cr, (const uint8_t *)"x", 1, sizeof(e2), e2), 0);
	assert_int_equal(hpke_export(cr, (const uint8_t *)"y", 1, sizeof(e3), e3), 0);
	assert_memory_equal(e1, e2, sizeof(e1));
	assert_memory_not_equal(e1, e3, sizeof(e1));
	uint8_t big[1];
	assert_int_equal(hpke_export(cs, NULL, 0, 255 * HPKE_NH + 1, big), -EINVAL);

	/* Sequence number exhaustion is refused before any output. */
	cs->seq = UINT64_MAX;
	cr->seq = UINT64_MAX;
	memset(ct, 0x55, sizeof(ct));
	assert_int_equal(hpke_seal(cs, aad, sizeof(aad), msg, sizeof(msg), ct), -EOVERFLOW);
	assert_int_equal(ct[0], 0x55);
	assert_int_equal(hpke_open(cr, aad, sizeof(aad), ct, sizeof(ct), pt), -EOVERFLOW);
	cs->seq = UINT64_MAX - 1;
	assert_int_equal(hpke_seal(cs, aad, sizeof(aad), msg, sizeof(msg), ct), 0);
	assert_int_equal(hpke_seal(cs, aad, sizeof(aad), msg, sizeof(msg), ct), -EOVERFLOW);

	hpke_ctx_free(cs);
	hpke_ctx_free(cr);
	hpke_ctx_free(NULL);
}

static void test_roundtrip_aes128gcm(void **state)
{
	(void)state;
	roundtrip(HPKE_AEAD_AES128GCM);
}

static void test_roundtrip_chacha20poly1305(void **state)
{
	(void)state;
	roundtrip(HPKE_AEAD_CHACHA20POLY1305);
}

static void test_bad_inputs(void **state)
{
	(void)state;
	struct hpke_suite bad_aead = {HPKE_KEM_X25519_SHA256, HPKE_KDF_HKDF_SHA256, 0x0002};
	struct hpke_suite bad_kem = {0x0010, HPKE_KDF_HKDF_SHA256, HPKE_AEAD_AES128GCM};
	struct hpke_suite ok = {HPKE_KEM_X25519_SHA256, HPKE_KDF_HKDF_SHA256, HPKE_AEAD_AES128GCM};
	uint8_t sk[HPKE_NSK], pk[HPKE_NPK], enc[HPKE_NENC];
	struct hpke_ctx *c = NULL;
	assert_int_equal(hpke_generate_keypair(sk, pk), 0);
	assert_int_equal(hpke_setup_base_s(&bad_aead, pk, NULL, 0, NULL, 0, &c, enc), -ENOTSUP);
	assert_int_equal(hpke_setup_base_s(&bad_kem, pk, NULL, 0, NULL, 0, &c, enc), -ENOTSUP);
	assert_null(c);
	/* A low-order public key (all zero) gives an all-zero DH: refused. */
	uint8_t zero[HPKE_NPK] = {0};
	assert_int_equal(hpke_setup_base_s(&ok, zero, NULL, 0, NULL, 0, &c, enc), -EINVAL);
	assert_int_equal(hpke_setup_base_r(&ok, zero, sk, NULL, 0, &c), -EINVAL);
	assert_null(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rfc9180_vectors),
	    cmocka_unit_test(test_roundtrip_aes128gcm),
	    cmocka_unit_test(test_roundtrip_chacha20poly1305),
	    cmocka_unit_test(test_bad_inputs),
	};
	return cmocka_run_group_tests(tests, load_vectors, NULL);
}

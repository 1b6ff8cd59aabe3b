/* identity.c: files and modes on first start, the fingerprint and its
 * short form, stable reloads, and refusals of leaked or corrupt keys that
 * leave the files as they were. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <nettle/curve25519.h>

#include "identity.h"

static char tmpdir[256];
static char path[512];

static int setup_tmp(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_identity.XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmp(void **state)
{
	(void)state;
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static const char *sub(const char *rel)
{
	snprintf(path, sizeof(path), "%s/%s", tmpdir, rel);
	return path;
}

static unsigned mode_of(const char *p)
{
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	return (unsigned)(st.st_mode & 07777);
}

/* The whole file, NUL-terminated; *len its size. */
static char *slurp(const char *p, size_t *len)
{
	FILE *f = fopen(p, "rb");
	assert_non_null(f);
	char *buf = malloc(70000);
	assert_non_null(buf);
	size_t n = fread(buf, 1, 69999, f);
	fclose(f);
	buf[n] = '\0';
	if (len)
		*len = n;
	return buf;
}

static void spit(const char *p, const void *data, size_t len)
{
	FILE *f = fopen(p, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	fclose(f);
}

static identity *load_ok(const char *name)
{
	identity *id = NULL;
	sovmesh_error err = {0};
	int r = identity_load_or_create(tmpdir, name, &id, &err);
	if (r != 0)
		fail_msg("identity_load_or_create: %d %s", r, err.message);
	assert_non_null(id);
	return id;
}

static gnutls_x509_crt_t import_cert(const char *pem)
{
	gnutls_x509_crt_t crt;
	assert_int_equal(gnutls_x509_crt_init(&crt), 0);
	gnutls_datum_t d = {(unsigned char *)(uintptr_t)pem, (unsigned)strlen(pem)};
	assert_int_equal(gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_PEM), 0);
	return crt;
}

/* The subject CN as stored (not RFC 4514-escaped). */
static void get_cn(gnutls_x509_crt_t crt, char *out, size_t len)
{
	gnutls_x509_dn_t dn;
	gnutls_x509_ava_st ava;
	assert_int_equal(gnutls_x509_crt_get_subject(crt, &dn), 0);
	assert_int_equal(gnutls_x509_dn_get_rdn_ava(dn, 0, 0, &ava), 0);
	/* The OID as text; GnuTLS counts its NUL in the size. */
	assert_true(ava.oid.size == 7 || (ava.oid.size == 8 && ava.oid.data[7] == 0));
	assert_memory_equal(ava.oid.data, GNUTLS_OID_X520_COMMON_NAME,
	                    strlen(GNUTLS_OID_X520_COMMON_NAME));
	assert_true(ava.value.size < len);
	memcpy(out, ava.value.data, ava.value.size);
	out[ava.value.size] = '\0';
	/* Only one RDN: nothing else in the subject. */
	assert_true(gnutls_x509_dn_get_rdn_ava(dn, 1, 0, &ava) < 0);
}

static void test_first_start_files_and_modes(void **state)
{
	(void)state;
	identity *id = load_ok("node-a");
	assert_int_equal(mode_of(sub("identity")), 0700);
	assert_int_equal(mode_of(sub("identity/tls-key.pem")), 0600);
	assert_int_equal(mode_of(sub("identity/x25519.key")), 0600);
	assert_int_equal(access(sub("identity/tls-cert.pem"), R_OK), 0);
	size_t len;
	char *key = slurp(sub("identity/tls-key.pem"), &len);
	assert_non_null(strstr(key, "-----BEGIN PRIVATE KEY-----"));
	assert_string_equal(key, id->key_pem);
	free(key);
	char *cert = slurp(sub("identity/tls-cert.pem"), &len);
	assert_string_equal(cert, id->cert_pem);
	free(cert);
	assert_string_equal(id->node_name, "node-a");
	assert_non_null(id->creds);

	/* No temporary files left behind by the atomic writes. */
	char cmd[600];
	snprintf(cmd, sizeof(cmd),
	         "test \"$(ls -A '%s/identity' | tr '\\n' ' ')\" = "
	         "'tls-cert.pem tls-key.pem x25519.key x25519.pub '",
	         tmpdir);
	assert_int_equal(system(cmd), 0);
	identity_free(id);
}

static void test_existing_dir_is_tightened(void **state)
{
	(void)state;
	assert_int_equal(mkdir(sub("identity"), 0755), 0);
	assert_int_equal(chmod(sub("identity"), 0755), 0);
	identity *id = load_ok("n");
	assert_int_equal(mode_of(sub("identity")), 0700);
	identity_free(id);
}

static void test_fingerprint_format_and_stability(void **state)
{
	(void)state;
	identity *a = load_ok("node-a");
	assert_int_equal(strlen(a->fingerprint_hex), 64);
	for (size_t i = 0; i < 64; i++)
		assert_non_null(strchr("0123456789abcdef", a->fingerprint_hex[i]));
	assert_int_equal(strlen(a->short_fp), 19);
	for (size_t i = 0; i < 19; i++) {
		if (i % 5 == 4)
			assert_int_equal(a->short_fp[i], '-');
		else
			assert_non_null(strchr("0123456789ABCDEFGHJKMNPQRSTVWXYZ", a->short_fp[i]));
	}
	char hex[65], shortf[20];
	identity_fp_to_hex(a->fingerprint, hex);
	assert_string_equal(hex, a->fingerprint_hex);
	identity_fp_short(a->fingerprint, shortf);
	assert_string_equal(shortf, a->short_fp);

	/* A reload (even under a new node name) is the same identity. */
	identity *b = load_ok("renamed");
	assert_memory_equal(a->fingerprint, b->fingerprint, IDENTITY_FP_LEN);
	assert_string_equal(a->key_pem, b->key_pem);
	assert_string_equal(a->cert_pem, b->cert_pem);
	assert_memory_equal(a->x25519_public, b->x25519_public, 32);
	assert_memory_equal(a->x25519_private, b->x25519_private, 32);
	identity_free(a);
	identity_free(b);

	/* Another state dir is another identity. */
	char other[300];
	snprintf(other, sizeof(other), "%s/other", tmpdir);
	assert_int_equal(mkdir(other, 0700), 0);
	identity *c = NULL, *d = NULL;
	assert_int_equal(identity_load_or_create(other, "c", &c, NULL), 0);
	d = load_ok("node-a");
	assert_memory_not_equal(c->fingerprint, d->fingerprint, IDENTITY_FP_LEN);
	assert_memory_not_equal(c->x25519_public, d->x25519_public, 32);
	identity_free(c);
	identity_free(d);
}

/* The fingerprint is SHA-256 of the SPKI, computed here by another path:
 * GnuTLS's SHA-256 key id of the certificate is that same hash, and the
 * private key's public half gives the same SPKI. */
static void test_fingerprint_is_sha256_of_spki(void **state)
{
	(void)state;
	identity *id = load_ok("node-a");
	gnutls_x509_crt_t crt = import_cert(id->cert_pem);
	unsigned char kid[64];
	size_t kid_len = sizeof(kid);
	assert_int_equal(gnutls_x509_crt_get_key_id(crt, GNUTLS_KEYID_USE_SHA256, kid, &kid_len),
	                 0);
	assert_int_equal(kid_len, 32);
	assert_memory_equal(kid, id->fingerprint, 32);

	gnutls_privkey_t priv;
	gnutls_pubkey_t pub;
	gnutls_datum_t k = {(unsigned char *)id->key_pem, (unsigned)strlen(id->key_pem)};
	gnutls_datum_t spki;
	uint8_t h[32];
	assert_int_equal(gnutls_privkey_init(&priv), 0);
	assert_int_equal(gnutls_privkey_import_x509_raw(priv, &k, GNUTLS_X509_FMT_PEM, NULL, 0), 0);
	assert_int_equal(gnutls_privkey_get_pk_algorithm(priv, NULL), GNUTLS_PK_EDDSA_ED25519);
	assert_int_equal(gnutls_pubkey_init(&pub), 0);
	assert_int_equal(gnutls_pubkey_import_privkey(pub, priv, 0, 0), 0);
	assert_int_equal(gnutls_pubkey_export2(pub, GNUTLS_X509_FMT_DER, &spki), 0);
	/* Ed25519 SPKI: 12-byte header + 32-byte key. */
	assert_int_equal(spki.size, 44);
	assert_int_equal(gnutls_hash_fast(GNUTLS_DIG_SHA256, spki.data, spki.size, h), 0);
	assert_memory_equal(h, id->fingerprint, 32);
	gnutls_free(spki.data);
	gnutls_pubkey_deinit(pub);
	gnutls_privkey_deinit(priv);

	/* The PEM and DER entry points agree. */
	uint8_t fp_pem[32], fp_der[32];
	gnutls_datum_t der;
	assert_int_equal(identity_fingerprint_pem(id->cert_pem, fp_pem), 0);
	assert_int_equal(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_DER, &der), 0);
	assert_int_equal(identity_fingerprint_der(&der, fp_der), 0);
	assert_memory_equal(fp_pem, id->fingerprint, 32);
	assert_memory_equal(fp_der, id->fingerprint, 32);
	gnutls_free(der.data);
	gnutls_x509_crt_deinit(crt);

	assert_int_equal(identity_fingerprint_pem("not a certificate", fp_pem), -EINVAL);
	gnutls_datum_t junk = {(unsigned char *)"\x30\x03\x02\x01\x00", 5};
	assert_int_equal(identity_fingerprint_der(&junk, fp_der), -EINVAL);
	identity_free(id);
}

static void test_certificate_fields(void **state)
{
	(void)state;
	identity *id = load_ok("a,b=c+\"d\" <x>");
	gnutls_x509_crt_t crt = import_cert(id->cert_pem);
	assert_int_equal(gnutls_x509_crt_get_version(crt), 3);
	char cn[128];
	get_cn(crt, cn, sizeof(cn));
	assert_string_equal(cn, "a,b=c+\"d\" <x>");
	assert_int_equal(gnutls_x509_crt_get_pk_algorithm(crt, NULL), GNUTLS_PK_EDDSA_ED25519);

	time_t now = time(NULL);
	time_t from = gnutls_x509_crt_get_activation_time(crt);
	time_t until = gnutls_x509_crt_get_expiration_time(crt);
	assert_true(from <= now - 23 * 3600 && from >= now - 25 * 3600);
	assert_true(until >= now + (time_t)20 * 365 * 86400 - 3600);

	unsigned usage = 0, critical = 0;
	assert_true(gnutls_x509_crt_get_key_usage(crt, &usage, &critical) >= 0);
	assert_true(usage & GNUTLS_KEY_DIGITAL_SIGNATURE);
	int server = 0, client = 0;
	for (unsigned i = 0;; i++) {
		char oid[128];
		size_t oid_len = sizeof(oid);
		if (gnutls_x509_crt_get_key_purpose_oid(crt, i, oid, &oid_len, NULL) < 0)
			break;
		server |= strcmp(oid, GNUTLS_KP_TLS_WWW_SERVER) == 0;
		client |= strcmp(oid, GNUTLS_KP_TLS_WWW_CLIENT) == 0;
	}
	assert_true(server && client);

	unsigned char serial[40];
	size_t serial_len = sizeof(serial);
	assert_int_equal(gnutls_x509_crt_get_serial(crt, serial, &serial_len), 0);
	assert_int_equal(serial_len, 16);
	assert_int_equal(serial[0] & 0x80, 0);

	/* Self-signed by its own key. */
	unsigned status = 99;
	assert_int_equal(gnutls_x509_crt_verify(crt, &crt, 1, 0, &status), 0);
	assert_int_equal(status, 0);
	gnutls_x509_crt_deinit(crt);

	/* The TLS credentials hold this certificate. */
	gnutls_x509_crt_t *crts = NULL;
	unsigned n = 0;
	assert_int_equal(gnutls_certificate_get_x509_crt(id->creds, 0, &crts, &n), 0);
	assert_int_equal(n, 1);
	uint8_t fp[32];
	gnutls_datum_t der;
	assert_int_equal(gnutls_x509_crt_export2(crts[0], GNUTLS_X509_FMT_DER, &der), 0);
	assert_int_equal(identity_fingerprint_der(&der, fp), 0);
	assert_memory_equal(fp, id->fingerprint, 32);
	gnutls_free(der.data);
	for (unsigned i = 0; i < n; i++)
		gnutls_x509_crt_deinit(crts[i]);
	gnutls_free(crts);
	gnutls_x509_privkey_t key = NULL;
	assert_int_equal(gnutls_certificate_get_x509_key(id->creds, 0, &key), 0);
	assert_non_null(key);
	gnutls_x509_privkey_deinit(key);
	identity_free(id);
}

static void test_long_and_control_names(void **state)
{
	(void)state;
	/* 40 x "é" (2 bytes each): cut at 64 bytes, on a character boundary. */
	char name[100] = "";
	for (int i = 0; i < 40; i++)
		strcat(name, "\xc3\xa9");
	identity *id = load_ok(name);
	assert_string_equal(id->node_name, name);
	gnutls_x509_crt_t crt = import_cert(id->cert_pem);
	char cn[256];
	get_cn(crt, cn, sizeof(cn));
	assert_int_equal(strlen(cn), 64);
	assert_memory_equal(cn, name, 64);
	gnutls_x509_crt_deinit(crt);
	identity_free(id);

	char other[300];
	snprintf(other, sizeof(other), "%s/ctl", tmpdir);
	assert_int_equal(mkdir(other, 0700), 0);
	assert_int_equal(identity_load_or_create(other, "evil\nname\x7f", &id, NULL), 0);
	crt = import_cert(id->cert_pem);
	get_cn(crt, cn, sizeof(cn));
	assert_string_equal(cn, "evil_name_");
	gnutls_x509_crt_deinit(crt);
	identity_free(id);
}

static void test_short_form_vectors(void **state)
{
	(void)state;
	uint8_t fp[32];
	char s[20];
	memset(fp, 0, sizeof(fp));
	identity_fp_short(fp, s);
	assert_string_equal(s, "0000-0000-0000-0000");
	memset(fp, 0xff, sizeof(fp));
	identity_fp_short(fp, s);
	assert_string_equal(s, "ZZZZ-ZZZZ-ZZZZ-ZZZZ");
	/* Python: base32 of bytes 0x10..0x19 mapped to the Crockford alphabet. */
	for (int i = 0; i < 32; i++)
		fp[i] = (uint8_t)(0x10 + i);
	identity_fp_short(fp, s);
	assert_string_equal(s, "208H-44RM-2MB1-E60S");

	char hex[65];
	identity_fp_to_hex(fp, hex);
	assert_string_equal(hex,
	                    "101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f");
	uint8_t back[32];
	assert_int_equal(
	    identity_fp_from_hex("101112131415161718191A1B1C1D1E1F202122232425262728292A2B2C2D2E2F",
	                         back),
	    0);
	assert_memory_equal(back, fp, 32);
	memset(back, 0xAA, sizeof(back));
	assert_int_equal(identity_fp_from_hex("1011", back), -EINVAL);
	assert_int_equal(
	    identity_fp_from_hex("g01112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f",
	                         back),
	    -EINVAL);
	assert_int_equal(
	    identity_fp_from_hex(
	        "101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f0", back),
	    -EINVAL);
	assert_int_equal(identity_fp_from_hex(NULL, back), -EINVAL);
	assert_int_equal(back[0], 0xAA); /* untouched on failure */
}

static void test_x25519_pair(void **state)
{
	(void)state;
	identity *id = load_ok("n");
	uint8_t pub[32];
	curve25519_mul_g(pub, id->x25519_private);
	assert_memory_equal(pub, id->x25519_public, 32);
	/* RFC 7748 clamping. */
	assert_int_equal(id->x25519_private[0] & 7, 0);
	assert_int_equal(id->x25519_private[31] & 0xC0, 0x40);
	size_t len;
	char *file = slurp(sub("identity/x25519.pub"), &len);
	assert_int_equal(len, 32);
	assert_memory_equal(file, id->x25519_public, 32);
	free(file);
	file = slurp(sub("identity/x25519.key"), &len);
	assert_int_equal(len, 32);
	assert_memory_equal(file, id->x25519_private, 32);
	free(file);
	identity_free(id);

	/* A missing public half is recomputed; a wrong one is refused. */
	identity *a = load_ok("n");
	assert_int_equal(unlink(sub("identity/x25519.pub")), 0);
	identity *b = load_ok("n");
	assert_memory_equal(a->x25519_public, b->x25519_public, 32);
	file = slurp(sub("identity/x25519.pub"), &len);
	assert_memory_equal(file, a->x25519_public, 32);
	free(file);
	uint8_t wrong[32];
	memset(wrong, 9, sizeof(wrong));
	spit(sub("identity/x25519.pub"), wrong, sizeof(wrong));
	identity *c = NULL;
	sovmesh_error err = {0};
	assert_int_equal(identity_load_or_create(tmpdir, "n", &c, &err), -EINVAL);
	assert_null(c);
	assert_non_null(strstr(err.message, "x25519.pub"));
	identity_free(a);
	identity_free(b);
}

static void check_mode_refused(const char *rel, unsigned mode)
{
	identity *id = load_ok("n");
	identity_free(id);
	assert_int_equal(chmod(sub(rel), mode), 0);
	sovmesh_error err = {0};
	id = NULL;
	assert_int_equal(identity_load_or_create(tmpdir, "n", &id, &err), -EPERM);
	assert_null(id);
	assert_non_null(strstr(err.message, rel));
	char m[16];
	snprintf(m, sizeof(m), "mode %03o", mode);
	assert_non_null(strstr(err.message, m));
	assert_null(strchr(err.message, '\n'));
	assert_int_equal(mode_of(sub(rel)), mode); /* not "fixed" behind our back */
	assert_int_equal(chmod(sub(rel), 0600), 0);
	id = load_ok("n");
	identity_free(id);
}

static void test_readable_tls_key_refused(void **state)
{
	(void)state;
	check_mode_refused("identity/tls-key.pem", 0644);
}

static void test_readable_x25519_key_refused(void **state)
{
	(void)state;
	check_mode_refused("identity/x25519.key", 0640);
}

/* Corrupt the file, expect a refusal naming it, and the bytes untouched. */
static void check_corrupt_refused(const char *rel, const void *junk, size_t junk_len)
{
	identity *id = load_ok("n");
	char fp[65];
	memcpy(fp, id->fingerprint_hex, sizeof(fp));
	identity_free(id);
	spit(sub(rel), junk, junk_len);
	assert_int_equal(chmod(sub(rel), 0600), 0);
	sovmesh_error err = {0};
	id = NULL;
	assert_int_equal(identity_load_or_create(tmpdir, "n", &id, &err), -EINVAL);
	assert_null(id);
	assert_non_null(strstr(err.message, rel));
	size_t len;
	char *after = slurp(sub(rel), &len);
	assert_int_equal(len, junk_len);
	assert_memory_equal(after, junk, junk_len);
	free(after);
}

static void test_corrupt_tls_key_refused(void **state)
{
	(void)state;
	static const char junk[] = "-----BEGIN PRIVATE KEY-----\nnot base64!\n"
	                           "-----END PRIVATE KEY-----\n";
	check_corrupt_refused("identity/tls-key.pem", junk, sizeof(junk) - 1);
	/* Empty is corrupt too, not "missing". */
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s/identity'", tmpdir);
	assert_int_equal(system(cmd), 0);
	check_corrupt_refused("identity/tls-key.pem", "", 0);
}

static void test_corrupt_x25519_key_refused(void **state)
{
	(void)state;
	check_corrupt_refused("identity/x25519.key", "short", 5);
}

static void test_corrupt_cert_refused(void **state)
{
	(void)state;
	check_corrupt_refused("identity/tls-cert.pem", "garbage\n", 8);
}

static void test_missing_cert_reissued_same_fingerprint(void **state)
{
	(void)state;
	identity *a = load_ok("n");
	assert_int_equal(unlink(sub("identity/tls-cert.pem")), 0);
	identity *b = load_ok("n");
	assert_memory_equal(a->fingerprint, b->fingerprint, IDENTITY_FP_LEN);
	assert_string_equal(a->key_pem, b->key_pem);
	assert_string_not_equal(a->cert_pem, b->cert_pem); /* a new serial */
	char *file = slurp(sub("identity/tls-cert.pem"), NULL);
	assert_string_equal(file, b->cert_pem);
	free(file);
	identity_free(a);
	identity_free(b);
}

static void test_missing_key_with_cert_refused(void **state)
{
	(void)state;
	identity *a = load_ok("n");
	identity_free(a);
	assert_int_equal(unlink(sub("identity/tls-key.pem")), 0);
	sovmesh_error err = {0};
	identity *b = NULL;
	assert_int_equal(identity_load_or_create(tmpdir, "n", &b, &err), -ENOENT);
	assert_non_null(strstr(err.message, "tls-key.pem"));
	assert_int_equal(access(sub("identity/tls-key.pem"), F_OK), -1);

	/* Same for the X25519 key when its public half is still there. */
	char other[300];
	snprintf(other, sizeof(other), "%s/x", tmpdir);
	assert_int_equal(mkdir(other, 0700), 0);
	assert_int_equal(identity_load_or_create(other, "n", &b, NULL), 0);
	identity_free(b);
	b = NULL;
	assert_int_equal(unlink(sub("x/identity/x25519.key")), 0);
	assert_int_equal(identity_load_or_create(other, "n", &b, &err), -ENOENT);
	assert_non_null(strstr(err.message, "x25519.key"));
	assert_int_equal(access(sub("x/identity/x25519.key"), F_OK), -1);
}

static void test_cert_of_another_key_refused(void **state)
{
	(void)state;
	char other[300];
	snprintf(other, sizeof(other), "%s/b", tmpdir);
	assert_int_equal(mkdir(other, 0700), 0);
	identity *a = load_ok("a"), *b = NULL;
	assert_int_equal(identity_load_or_create(other, "b", &b, NULL), 0);
	spit(sub("identity/tls-cert.pem"), b->cert_pem, strlen(b->cert_pem));
	identity *c = NULL;
	sovmesh_error err = {0};
	assert_int_equal(identity_load_or_create(tmpdir, "a", &c, &err), -EINVAL);
	assert_non_null(strstr(err.message, "tls-cert.pem"));
	assert_non_null(strstr(err.message, "another key"));
	identity_free(a);
	identity_free(b);
}

static void test_bad_arguments(void **state)
{
	(void)state;
	identity *id = (identity *)1;
	assert_int_equal(identity_load_or_create("", "n", &id, NULL), -EINVAL);
	assert_null(id);
	identity_free(NULL);
	/* A state dir that does not exist: a clear error, not a crash. */
	sovmesh_error err = {0};
	assert_int_equal(identity_load_or_create("/nonexistent/sovmesh-test", "n", &id, &err),
	                 -ENOENT);
	assert_non_null(strstr(err.message, "/nonexistent/sovmesh-test/identity"));
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup_tmp, teardown_tmp)

int main(void)
{
	const struct CMUnitTest tests[] = {
	    T(test_first_start_files_and_modes),
	    T(test_existing_dir_is_tightened),
	    T(test_fingerprint_format_and_stability),
	    T(test_fingerprint_is_sha256_of_spki),
	    T(test_certificate_fields),
	    T(test_long_and_control_names),
	    cmocka_unit_test(test_short_form_vectors),
	    T(test_x25519_pair),
	    T(test_readable_tls_key_refused),
	    T(test_readable_x25519_key_refused),
	    T(test_corrupt_tls_key_refused),
	    T(test_corrupt_x25519_key_refused),
	    T(test_corrupt_cert_refused),
	    T(test_missing_cert_reissued_same_fingerprint),
	    T(test_missing_key_with_cert_refused),
	    T(test_cert_of_another_key_refused),
	    T(test_bad_arguments),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

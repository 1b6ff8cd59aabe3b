/*
 * This node's identity (see identity.h): an Ed25519 TLS key with a
 * self-signed certificate, and an X25519 key pair.  Existing files are
 * never replaced: a new key would change the fingerprint peers pinned, so
 * anything unreadable is refused and left for a person to look at.
 */
#include "identity.h"

#include "state_file.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <nettle/curve25519.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* A PEM key or certificate is a few hundred bytes; anything much larger
 * is not ours and is refused before it is read into memory. */
#define IDENTITY_FILE_MAX (64u * 1024u)
/* X.520 ub-common-name. */
#define CN_MAX          64
#define CERT_VALID_SECS ((time_t)20 * 365 * 24 * 3600)

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/* sovmesh_fail() whose message is safe as one log line (paths echo input). */
static int id_fail(sovmesh_error *err, int code, const char *fmt, ...) SOVMESH_PRINTF(3, 4);
static int id_fail(sovmesh_error *err, int code, const char *fmt, ...)
{
	if (!err)
		return code;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	err->code = code;
	log_one_line(err->message);
	return code;
}

static void wipe_free(void *p, size_t len)
{
	if (!p)
		return;
	gnutls_memset(p, 0, len);
	free(p);
}

void identity_fp_to_hex(const uint8_t fp[IDENTITY_FP_LEN], char out[IDENTITY_FP_HEX_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	for (size_t i = 0; i < IDENTITY_FP_LEN; i++) {
		out[2 * i] = hex[fp[i] >> 4];
		out[2 * i + 1] = hex[fp[i] & 15];
	}
	out[IDENTITY_FP_HEX_LEN] = '\0';
}

static int hex_val(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int identity_fp_from_hex(const char *hex, uint8_t out[IDENTITY_FP_LEN])
{
	if (!hex || strlen(hex) != IDENTITY_FP_HEX_LEN)
		return -EINVAL;
	uint8_t tmp[IDENTITY_FP_LEN];
	for (size_t i = 0; i < IDENTITY_FP_LEN; i++) {
		int hi = hex_val(hex[2 * i]), lo = hex_val(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -EINVAL;
		tmp[i] = (uint8_t)(hi << 4 | lo);
	}
	memcpy(out, tmp, IDENTITY_FP_LEN);
	return 0;
}

void identity_fp_short(const uint8_t fp[IDENTITY_FP_LEN], char out[IDENTITY_SHORT_FP_LEN + 1])
{
	/* 80 bits = 10 bytes = 16 groups of 5 bits, most significant first. */
	uint32_t acc = 0;
	int bits = 0;
	size_t in = 0, o = 0;
	for (int c = 0; c < 16; c++) {
		if (bits < 5) {
			acc = (acc << 8) | fp[in++];
			bits += 8;
		}
		bits -= 5;
		if (c > 0 && c % 4 == 0)
			out[o++] = '-';
		out[o++] = crockford[(acc >> bits) & 31];
	}
	out[o] = '\0';
}

/* SHA-256 of the certificate's SubjectPublicKeyInfo. */
static int fingerprint_crt(gnutls_x509_crt_t crt, uint8_t out[IDENTITY_FP_LEN])
{
	gnutls_pubkey_t pub = NULL;
	gnutls_datum_t spki = {NULL, 0};
	int r = gnutls_pubkey_init(&pub);
	if (r < 0)
		return -ENOMEM;
	r = gnutls_pubkey_import_x509(pub, crt, 0);
	if (r >= 0)
		r = gnutls_pubkey_export2(pub, GNUTLS_X509_FMT_DER, &spki);
	if (r >= 0)
		r = gnutls_hash_fast(GNUTLS_DIG_SHA256, spki.data, spki.size, out);
	gnutls_free(spki.data);
	gnutls_pubkey_deinit(pub);
	return r < 0 ? -EINVAL : 0;
}

static int fingerprint_datum(const gnutls_datum_t *cert, gnutls_x509_crt_fmt_t fmt,
                             uint8_t out[IDENTITY_FP_LEN])
{
	gnutls_x509_crt_t crt;
	if (gnutls_x509_crt_init(&crt) < 0)
		return -ENOMEM;
	int r = gnutls_x509_crt_import(crt, cert, fmt) < 0 ? -EINVAL : fingerprint_crt(crt, out);
	gnutls_x509_crt_deinit(crt);
	return r;
}

/* See identity.h.  `cert_der` is borrowed.  0 or -EINVAL (not a
 * certificate) / -ENOMEM. */
int identity_fingerprint_der(const gnutls_datum_t *cert_der, uint8_t out[IDENTITY_FP_LEN])
{
	if (!cert_der || !cert_der->data)
		return -EINVAL;
	return fingerprint_datum(cert_der, GNUTLS_X509_FMT_DER, out);
}

/* See identity.h.  `cert_pem` is borrowed, NUL-terminated. */
int identity_fingerprint_pem(const char *cert_pem, uint8_t out[IDENTITY_FP_LEN])
{
	if (!cert_pem)
		return -EINVAL;
	gnutls_datum_t d = {(unsigned char *)(uintptr_t)cert_pem, (unsigned)strlen(cert_pem)};
	return fingerprint_datum(&d, GNUTLS_X509_FMT_PEM, out);
}

/* ---- files ---- */

typedef struct id_paths {
	char *dir, *key, *cert, *xpriv, *xpub;
} id_paths;

static void paths_free(id_paths *p)
{
	free(p->dir);
	free(p->key);
	free(p->cert);
	free(p->xpriv);
	free(p->xpub);
}

static int paths_make(const char *state_dir, id_paths *p)
{
	memset(p, 0, sizeof(*p));
	if (asprintf(&p->dir, "%s/identity", state_dir) < 0) {
		p->dir = NULL;
		return -ENOMEM;
	}
	struct {
		char **dst;
		const char *name;
	} files[] = {{&p->key, "tls-key.pem"},
	             {&p->cert, "tls-cert.pem"},
	             {&p->xpriv, "x25519.key"},
	             {&p->xpub, "x25519.pub"}};
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		if (asprintf(files[i].dst, "%s/%s", p->dir, files[i].name) < 0) {
			*files[i].dst = NULL;
			paths_free(p);
			return -ENOMEM;
		}
	}
	return 0;
}

/*
 * Read a small identity file into a NUL-terminated buffer (*out, caller
 * wipes and frees).  -ENOENT is returned without a message so the caller
 * can decide to create the file.  With `private_key`, a file group or
 * others may access is refused: the key may have been copied by someone
 * else.
 */
static int read_file(const char *path, int private_key, char **out, size_t *len, sovmesh_error *err)
{
	struct stat st;
	sovmesh_error inner = {0};
	int r = state_file_read(path, IDENTITY_FILE_MAX, out, len, &st, &inner);
	if (r == -ENOENT)
		return r;
	if (r == -E2BIG)
		return id_fail(err, -EINVAL, "%s: over the %u-byte limit: not an identity file",
		               path, IDENTITY_FILE_MAX);
	if (r < 0)
		return id_fail(err, r, "%s", inner.message);
	if (private_key && (st.st_mode & 0077) != 0) {
		wipe_free(*out, *len);
		*out = NULL;
		*len = 0;
		return id_fail(err, -EPERM,
		               "%s: private key has mode %03o (group/other may read it); refusing "
		               "to use a key that may have leaked; check it, then chmod 600 it",
		               path, (unsigned)(st.st_mode & 0777));
	}
	return 0;
}

static int write_file(const char *path, const void *data, size_t len, sovmesh_error *err)
{
	struct iovec iov = {(void *)(uintptr_t)data, len};
	return state_file_write(path, &iov, 1, err);
}

/* <state_dir>/identity, 0700; an existing one with wider access is
 * tightened (the daemon does the same for the state directory). */
static int ensure_dir(const char *dir, sovmesh_error *err)
{
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return id_fail(err, -errno, "cannot create %s: %s", dir, strerror(errno));
	struct stat st;
	if (stat(dir, &st) < 0)
		return id_fail(err, -errno, "%s: cannot stat: %s", dir, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return id_fail(err, -ENOTDIR, "%s: not a directory", dir);
	if ((st.st_mode & 0077) != 0) {
		log_warning("identity directory %s was mode %03o; setting 0700", dir,
		            (unsigned)(st.st_mode & 0777));
		if (chmod(dir, 0700) < 0)
			return id_fail(err, -errno, "cannot chmod %s: %s", dir, strerror(errno));
	}
	return 0;
}

/* ---- the TLS key and certificate ---- */

static int load_key(const char *path, const char *pem, size_t len, gnutls_x509_privkey_t *out,
                    sovmesh_error *err)
{
	gnutls_x509_privkey_t key;
	if (gnutls_x509_privkey_init(&key) < 0)
		return id_fail(err, -ENOMEM, "%s: out of memory", path);
	gnutls_datum_t d = {(unsigned char *)(uintptr_t)pem, (unsigned)len};
	int r = gnutls_x509_privkey_import2(key, &d, GNUTLS_X509_FMT_PEM, NULL, GNUTLS_PKCS_PLAIN);
	if (r < 0) {
		gnutls_x509_privkey_deinit(key);
		return id_fail(err, -EINVAL,
		               "%s: not a readable PEM private key (%s); refusing to replace an "
		               "existing identity, repair or move the file",
		               path, gnutls_strerror(r));
	}
	if (gnutls_x509_privkey_get_pk_algorithm(key) != GNUTLS_PK_EDDSA_ED25519) {
		gnutls_x509_privkey_deinit(key);
		return id_fail(err, -EINVAL, "%s: not an Ed25519 key", path);
	}
	*out = key;
	return 0;
}

static int generate_key(const char *path, gnutls_x509_privkey_t *out, char **pem,
                        sovmesh_error *err)
{
	gnutls_x509_privkey_t key;
	gnutls_datum_t d = {NULL, 0};
	if (gnutls_x509_privkey_init(&key) < 0)
		return id_fail(err, -ENOMEM, "%s: out of memory", path);
	int r = gnutls_x509_privkey_generate2(key, GNUTLS_PK_EDDSA_ED25519,
	                                      GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_ED25519), 0,
	                                      NULL, 0);
	if (r >= 0)
		r = gnutls_x509_privkey_export2_pkcs8(key, GNUTLS_X509_FMT_PEM, NULL,
		                                      GNUTLS_PKCS_PLAIN, &d);
	if (r < 0) {
		gnutls_x509_privkey_deinit(key);
		return id_fail(err, -EIO, "%s: cannot generate an Ed25519 key: %s", path,
		               gnutls_strerror(r));
	}
	char *s = malloc(d.size + 1);
	if (!s) {
		gnutls_memset(d.data, 0, d.size);
		gnutls_free(d.data);
		gnutls_x509_privkey_deinit(key);
		return id_fail(err, -ENOMEM, "%s: out of memory", path);
	}
	memcpy(s, d.data, d.size);
	s[d.size] = '\0';
	gnutls_memset(d.data, 0, d.size);
	gnutls_free(d.data);
	*out = key;
	*pem = s;
	return 0;
}

/*
 * The CN: the node name cut to 64 bytes on a UTF-8 boundary, control
 * characters replaced, so any configured name makes a valid certificate.
 * Peers pin the key, not the name; the CN is only for people.
 */
static void make_cn(const char *name, char cn[CN_MAX + 1])
{
	size_t n = strlen(name);
	if (n > CN_MAX) {
		n = CN_MAX;
		while (n > 0 && ((unsigned char)name[n] & 0xC0) == 0x80)
			n--;
	}
	for (size_t i = 0; i < n; i++)
		cn[i] = ((unsigned char)name[i] < 0x20 || name[i] == 0x7f) ? '_' : name[i];
	cn[n] = '\0';
	if (n == 0)
		snprintf(cn, CN_MAX + 1, "sovmesh");
}

static int issue_cert(const char *path, gnutls_x509_privkey_t key, const char *node_name,
                      char **pem, sovmesh_error *err)
{
	gnutls_x509_crt_t crt;
	gnutls_datum_t d = {NULL, 0};
	unsigned char serial[16];
	char cn[CN_MAX + 1];
	const char *what = "serial";
	if (gnutls_x509_crt_init(&crt) < 0)
		return id_fail(err, -ENOMEM, "%s: out of memory", path);
	make_cn(node_name, cn);
	time_t now = time(NULL);
	int r = gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof(serial));
	if (r < 0)
		goto out;
	/* A positive INTEGER with no leading zero octet: top bit clear, next set. */
	serial[0] = (unsigned char)((serial[0] & 0x7f) | 0x40);
	what = "version";
	r = gnutls_x509_crt_set_version(crt, 3);
	if (r < 0)
		goto out;
	what = "serial";
	r = gnutls_x509_crt_set_serial(crt, serial, sizeof(serial));
	if (r < 0)
		goto out;
	/* By OID, not a DN string: the name needs no escaping this way. */
	what = "subject";
	r = gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, cn,
	                                  (unsigned)strlen(cn));
	if (r < 0)
		goto out;
	what = "key";
	r = gnutls_x509_crt_set_key(crt, key);
	if (r < 0)
		goto out;
	/* A day of slack for peers whose clocks are behind. */
	what = "validity";
	r = gnutls_x509_crt_set_activation_time(crt, now - 24 * 3600);
	if (r < 0)
		goto out;
	r = gnutls_x509_crt_set_expiration_time(crt, now + CERT_VALID_SECS);
	if (r < 0)
		goto out;
	what = "basic constraints";
	r = gnutls_x509_crt_set_basic_constraints(crt, 0, -1);
	if (r < 0)
		goto out;
	what = "key usage";
	r = gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE);
	if (r < 0)
		goto out;
	what = "extended key usage";
	r = gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_SERVER, 0);
	if (r < 0)
		goto out;
	r = gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_CLIENT, 0);
	if (r < 0)
		goto out;
	/* Ed25519 fixes its own hash; GnuTLS picks it. */
	what = "signature";
	r = gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_UNKNOWN, 0);
	if (r < 0)
		goto out;
	what = "export";
	r = gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &d);
out:
	gnutls_x509_crt_deinit(crt);
	if (r < 0)
		return id_fail(err, -EIO, "%s: cannot make the certificate (%s): %s", path, what,
		               gnutls_strerror(r));
	char *s = strndup((const char *)d.data, d.size);
	gnutls_free(d.data);
	if (!s)
		return id_fail(err, -ENOMEM, "%s: out of memory", path);
	*pem = s;
	return 0;
}

/* The certificate must carry the public half of `key`, or the fingerprint
 * would name a key we cannot sign with. */
static int check_cert(const char *path, const char *pem, size_t len, gnutls_x509_privkey_t key,
                      uint8_t fp[IDENTITY_FP_LEN], sovmesh_error *err)
{
	gnutls_x509_crt_t crt = NULL;
	gnutls_privkey_t priv = NULL;
	gnutls_pubkey_t pub = NULL;
	gnutls_datum_t spki = {NULL, 0};
	uint8_t key_fp[IDENTITY_FP_LEN];
	int r = gnutls_x509_crt_init(&crt);
	if (r < 0)
		return id_fail(err, -ENOMEM, "%s: out of memory", path);
	gnutls_datum_t d = {(unsigned char *)(uintptr_t)pem, (unsigned)len};
	r = gnutls_x509_crt_import(crt, &d, GNUTLS_X509_FMT_PEM);
	if (r < 0) {
		r = id_fail(
		    err, -EINVAL,
		    "%s: not a readable PEM certificate (%s); delete it to have it re-issued "
		    "for the same key",
		    path, gnutls_strerror(r));
		goto out;
	}
	if (fingerprint_crt(crt, fp) < 0) {
		r = id_fail(err, -EINVAL, "%s: cannot read the certificate's public key", path);
		goto out;
	}
	r = gnutls_privkey_init(&priv);
	if (r >= 0)
		r = gnutls_privkey_import_x509(priv, key, 0);
	if (r >= 0)
		r = gnutls_pubkey_init(&pub);
	if (r >= 0)
		r = gnutls_pubkey_import_privkey(pub, priv, 0, 0);
	if (r >= 0)
		r = gnutls_pubkey_export2(pub, GNUTLS_X509_FMT_DER, &spki);
	if (r >= 0)
		r = gnutls_hash_fast(GNUTLS_DIG_SHA256, spki.data, spki.size, key_fp);
	if (r < 0) {
		r = id_fail(err, -EIO, "%s: cannot derive the public key: %s", path,
		            gnutls_strerror(r));
		goto out;
	}
	if (memcmp(fp, key_fp, IDENTITY_FP_LEN) != 0) {
		r = id_fail(
		    err, -EINVAL,
		    "%s: certificate is for another key than tls-key.pem; delete it to have "
		    "it re-issued for the key",
		    path);
		goto out;
	}
	r = 0;
out:
	gnutls_free(spki.data);
	if (pub)
		gnutls_pubkey_deinit(pub);
	if (priv)
		gnutls_privkey_deinit(priv);
	gnutls_x509_crt_deinit(crt);
	return r;
}

static int tls_part(const id_paths *p, const char *node_name, identity *id, sovmesh_error *err)
{
	gnutls_x509_privkey_t key = NULL;
	char *cert = NULL;
	size_t key_len = 0, cert_len = 0;
	int r = read_file(p->key, 1, &id->key_pem, &key_len, err);
	if (r == -ENOENT) {
		/* A certificate without its key means an identity existed: a new
		 * key would silently change the fingerprint peers pinned. */
		if (access(p->cert, F_OK) == 0)
			return id_fail(
			    err, -ENOENT,
			    "%s: missing, but %s exists; refusing to create a new identity "
			    "(paired peers pinned the old one); restore the key, or move "
			    "%s away to start over",
			    p->key, p->cert, p->dir);
		r = generate_key(p->key, &key, &id->key_pem, err);
		if (r < 0)
			return r;
		key_len = strlen(id->key_pem);
		r = write_file(p->key, id->key_pem, key_len, err);
		if (r < 0)
			goto out;
		log_notice("created a new TLS identity key %s", p->key);
	} else if (r < 0) {
		return r;
	} else {
		r = load_key(p->key, id->key_pem, key_len, &key, err);
		if (r < 0)
			return r;
	}

	r = read_file(p->cert, 0, &cert, &cert_len, err);
	if (r == -ENOENT) {
		r = issue_cert(p->cert, key, node_name, &cert, err);
		if (r < 0)
			goto out;
		cert_len = strlen(cert);
		r = write_file(p->cert, cert, cert_len, err);
		if (r < 0)
			goto out;
	} else if (r < 0) {
		goto out;
	}
	r = check_cert(p->cert, cert, cert_len, key, id->fingerprint, err);
	if (r < 0)
		goto out;
	id->cert_pem = cert;
	cert = NULL;

	r = gnutls_certificate_allocate_credentials(&id->creds);
	if (r < 0) {
		id->creds = NULL;
		r = id_fail(err, -ENOMEM, "%s: cannot allocate TLS credentials", p->dir);
		goto out;
	}
	gnutls_datum_t c = {(unsigned char *)id->cert_pem, (unsigned)strlen(id->cert_pem)};
	gnutls_datum_t k = {(unsigned char *)id->key_pem, (unsigned)key_len};
	r = gnutls_certificate_set_x509_key_mem2(id->creds, &c, &k, GNUTLS_X509_FMT_PEM, NULL, 0);
	if (r < 0) {
		r = id_fail(err, -EINVAL, "%s: GnuTLS refused the key and certificate: %s", p->dir,
		            gnutls_strerror(r));
		goto out;
	}
	r = 0;
out:
	free(cert);
	if (key)
		gnutls_x509_privkey_deinit(key);
	return r;
}

/* ---- X25519 ---- */

static int x25519_part(const id_paths *p, identity *id, sovmesh_error *err)
{
	char *buf = NULL;
	size_t len = 0;
	uint8_t pub[32];
	int r = read_file(p->xpriv, 1, &buf, &len, err);
	if (r == -ENOENT) {
		if (access(p->xpub, F_OK) == 0)
			return id_fail(
			    err, -ENOENT,
			    "%s: missing, but %s exists; refusing to create a new key "
			    "(paired peers know the old one); restore it, or delete both",
			    p->xpriv, p->xpub);
		/* GNUTLS_RND_KEY, not rng_bytes(): keys must never come from the
		 * seeded stream the offline tools can switch to. */
		if (gnutls_rnd(GNUTLS_RND_KEY, id->x25519_private, 32) < 0)
			return id_fail(err, -EIO, "%s: the random generator failed", p->xpriv);
		/* RFC 7748 §5 clamping. */
		id->x25519_private[0] &= 248;
		id->x25519_private[31] &= 127;
		id->x25519_private[31] |= 64;
		r = write_file(p->xpriv, id->x25519_private, 32, err);
		if (r < 0)
			return r;
	} else if (r < 0) {
		return r;
	} else {
		if (len != 32) {
			wipe_free(buf, len);
			return id_fail(err, -EINVAL,
			               "%s: %zu bytes, expected a 32-byte X25519 key; refusing to "
			               "replace it, repair or move the file",
			               p->xpriv, len);
		}
		memcpy(id->x25519_private, buf, 32);
		wipe_free(buf, len);
	}
	curve25519_mul_g(id->x25519_public, id->x25519_private);

	r = read_file(p->xpub, 0, &buf, &len, err);
	if (r == -ENOENT)
		return write_file(p->xpub, id->x25519_public, 32, err);
	if (r < 0)
		return r;
	int ok = len == 32;
	if (ok)
		memcpy(pub, buf, 32);
	free(buf);
	if (!ok || memcmp(pub, id->x25519_public, 32) != 0)
		return id_fail(
		    err, -EINVAL,
		    "%s: does not hold the public key of x25519.key; delete it to have it "
		    "recomputed",
		    p->xpub);
	return 0;
}

/* See identity.h.  `state_dir` and `node_name` are borrowed; *out is
 * owned by the caller (identity_free).  Loop or main thread. */
int identity_load_or_create(const char *state_dir, const char *node_name, identity **out,
                            sovmesh_error *err)
{
	*out = NULL;
	if (!state_dir || !*state_dir || !node_name)
		return id_fail(err, -EINVAL, "identity: no state directory or node name");
	id_paths p;
	if (paths_make(state_dir, &p) < 0)
		return id_fail(err, -ENOMEM, "identity: out of memory");
	identity *id = calloc(1, sizeof(*id));
	int r;
	if (!id || !(id->node_name = strdup(node_name))) {
		r = id_fail(err, -ENOMEM, "identity: out of memory");
		goto out;
	}
	r = ensure_dir(p.dir, err);
	if (r >= 0)
		r = tls_part(&p, node_name, id, err);
	if (r >= 0)
		r = x25519_part(&p, id, err);
	if (r < 0)
		goto out;
	identity_fp_to_hex(id->fingerprint, id->fingerprint_hex);
	identity_fp_short(id->fingerprint, id->short_fp);
	*out = id;
	id = NULL;
out:
	identity_free(id);
	paths_free(&p);
	return r;
}

/* See identity.h.  Takes ownership of `id`. */
void identity_free(identity *id)
{
	if (!id)
		return;
	if (id->creds)
		gnutls_certificate_free_credentials(id->creds);
	if (id->key_pem)
		wipe_free(id->key_pem, strlen(id->key_pem));
	free(id->cert_pem);
	free(id->node_name);
	gnutls_memset(id, 0, sizeof(*id));
	free(id);
}

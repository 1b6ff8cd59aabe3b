/* Pairing channel messages (see pair_messages.h). */
#include "pair_messages.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <jansson.h>
#include <nettle/base64.h>

#include "log.h"

#define T_HELLO   "pair-hello"
#define T_CONFIRM "pair-confirm"
#define T_ERROR   "pair-error"

void pair_hello_clear(pair_hello *h)
{
	if (!h)
		return;
	free(h->cert_pem);
	memset(h, 0, sizeof(*h));
}

void pair_msg_clear(pair_msg *m)
{
	if (!m)
		return;
	pair_hello_clear(&m->hello);
	memset(m, 0, sizeof(*m));
}

int pair_hello_copy(pair_hello *dst, const pair_hello *src)
{
	char *pem = NULL;
	if (src->cert_pem && !(pem = strdup(src->cert_pem)))
		return -ENOMEM;
	*dst = *src;
	dst->cert_pem = pem;
	return 0;
}

/* Only keys in `allowed` (NULL-terminated) may appear. */
static int check_keys(const char *type, json_t *obj, const char *const *allowed, sovmesh_error *err)
{
	const char *key;
	json_t *v;
	json_object_foreach(obj, key, v)
	{
		bool ok = false;
		for (size_t i = 0; allowed[i]; i++)
			if (strcmp(key, allowed[i]) == 0)
				ok = true;
		if (!ok) {
			sovmesh_fail(err, -EINVAL, "%s: unknown field \"%.32s\"", type, key);
			if (err)
				log_one_line(err->message);
			return -EINVAL;
		}
	}
	return 0;
}

static json_t *need(const char *type, json_t *obj, const char *key, json_type t, const char *tname,
                    sovmesh_error *err)
{
	json_t *v = json_object_get(obj, key);
	if (!v) {
		sovmesh_fail(err, -EINVAL, "%s: field \"%s\" is missing", type, key);
		return NULL;
	}
	if (json_typeof(v) != t) {
		sovmesh_fail(err, -EINVAL, "%s: field \"%s\" must be %s", type, key, tname);
		return NULL;
	}
	return v;
}

/* Exactly one PEM certificate that GnuTLS imports; its fingerprint. */
static int check_cert(const char *pem, size_t len, pair_hello *h, sovmesh_error *err)
{
	static const char begin[] = "-----BEGIN CERTIFICATE-----";
	if (len == 0 || len > PAIR_CERT_PEM_MAX)
		return sovmesh_fail(err, -EINVAL,
		                    "pair-hello: field \"cert\" must be 1..%d bytes, got %zu",
		                    PAIR_CERT_PEM_MAX, len);
	const char *first = strstr(pem, "-----BEGIN ");
	if (!first || strncmp(first, begin, sizeof(begin) - 1) != 0)
		return sovmesh_fail(
		    err, -EINVAL, "pair-hello: field \"cert\" is not a PEM certificate (no \"%s\")",
		    begin);
	if (strstr(first + 1, "-----BEGIN "))
		return sovmesh_fail(err, -EINVAL,
		                    "pair-hello: field \"cert\" holds more than one PEM block");
	gnutls_x509_crt_t crt = NULL;
	gnutls_datum_t in = {(unsigned char *)pem, (unsigned)len};
	gnutls_datum_t der = {NULL, 0};
	int rc = gnutls_x509_crt_init(&crt);
	if (rc < 0)
		return sovmesh_fail(err, -ENOMEM, "pair-hello: cannot check the certificate: %s",
		                    gnutls_strerror(rc));
	rc = gnutls_x509_crt_import(crt, &in, GNUTLS_X509_FMT_PEM);
	if (rc < 0) {
		rc = sovmesh_fail(err, -EINVAL,
		                  "pair-hello: field \"cert\" is not an X.509 certificate GnuTLS "
		                  "can import: %s",
		                  gnutls_strerror(rc));
		goto out;
	}
	rc = gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_DER, &der);
	if (rc < 0 || identity_fingerprint_der(&der, h->fingerprint) < 0) {
		rc = sovmesh_fail(
		    err, -EINVAL,
		    "pair-hello: field \"cert\": cannot compute the fingerprint of its "
		    "public key");
		goto out;
	}
	identity_fp_to_hex(h->fingerprint, h->fingerprint_hex);
	identity_fp_short(h->fingerprint, h->short_fp);
	rc = 0;
out:
	gnutls_free(der.data);
	gnutls_x509_crt_deinit(crt);
	return rc;
}

/* Canonical standard base64 of exactly 32 bytes (44 characters). */
static int check_x25519(const char *b64, size_t len, uint8_t out[32], sovmesh_error *err)
{
	char again[BASE64_ENCODE_RAW_LENGTH(32) + 1];
	uint8_t buf[BASE64_DECODE_LENGTH(sizeof(again))];
	size_t n = sizeof(buf);
	struct base64_decode_ctx ctx;
	if (len != BASE64_ENCODE_RAW_LENGTH(32))
		goto bad;
	base64_decode_init(&ctx);
	if (!base64_decode_update(&ctx, &n, buf, len, b64) || !base64_decode_final(&ctx) || n != 32)
		goto bad;
	base64_encode_raw(again, 32, buf);
	if (memcmp(again, b64, len) != 0)
		goto bad;
	memcpy(out, buf, 32);
	return 0;
bad:
	return sovmesh_fail(err, -EINVAL,
	                    "pair-hello: field \"x25519\" must be base64 of exactly 32 bytes "
	                    "(44 characters)");
}

static int parse_hello(json_t *o, pair_hello *h, sovmesh_error *err)
{
	static const char *const keys[] = {"type",   "version",   "name",      "cert",
	                                   "x25519", "peer_port", "addresses", NULL};
	json_t *v;
	int rc;
	if ((rc = check_keys(T_HELLO, o, keys, err)) < 0)
		return rc;
	if (!(v = need(T_HELLO, o, "version", JSON_INTEGER, "an integer", err)))
		return -EINVAL;
	if (json_integer_value(v) != PAIR_PROTO_VERSION)
		return sovmesh_fail(err, -EINVAL,
		                    "pair-hello: version %lld is not supported (only %d)",
		                    (long long)json_integer_value(v), PAIR_PROTO_VERSION);
	if (!(v = need(T_HELLO, o, "name", JSON_STRING, "a string", err)))
		return -EINVAL;
	size_t len = json_string_length(v);
	if ((rc = pair_name_check("pair-hello: field \"name\"", json_string_value(v), len, err)) <
	    0)
		return rc;
	memcpy(h->name, json_string_value(v), len);
	h->name[len] = '\0';
	if (!(v = need(T_HELLO, o, "cert", JSON_STRING, "a string", err)))
		return -EINVAL;
	if ((rc = check_cert(json_string_value(v), json_string_length(v), h, err)) < 0)
		return rc;
	if (!(h->cert_pem = strdup(json_string_value(v))))
		return sovmesh_fail(err, -ENOMEM, "pair-hello: out of memory");
	if (!(v = need(T_HELLO, o, "x25519", JSON_STRING, "a string", err)))
		return -EINVAL;
	if ((rc = check_x25519(json_string_value(v), json_string_length(v), h->x25519_public,
	                       err)) < 0)
		return rc;
	if (!(v = need(T_HELLO, o, "peer_port", JSON_INTEGER, "an integer", err)))
		return -EINVAL;
	json_int_t port = json_integer_value(v);
	if (port < 1 || port > 65535)
		return sovmesh_fail(err, -EINVAL,
		                    "pair-hello: field \"peer_port\" must be 1..65535");
	h->peer_port = (uint16_t)port;
	if (!(v = need(T_HELLO, o, "addresses", JSON_ARRAY, "an array of \"host:port\" strings",
	               err)))
		return -EINVAL;
	if (json_array_size(v) > PAIR_MAX_ADDRS)
		return sovmesh_fail(err, -EINVAL,
		                    "pair-hello: field \"addresses\" has %zu entries, at most %d",
		                    json_array_size(v), PAIR_MAX_ADDRS);
	size_t i;
	json_t *a;
	json_array_foreach(v, i, a)
	{
		char what[64];
		snprintf(what, sizeof(what), "pair-hello: field \"addresses\" entry %zu", i + 1);
		if (!json_is_string(a))
			return sovmesh_fail(err, -EINVAL, "%s must be a string", what);
		size_t alen = json_string_length(a);
		if (alen > PAIR_HOSTPORT_MAX)
			return sovmesh_fail(err, -EINVAL, "%s is too long (%zu bytes)", what, alen);
		if ((rc = pair_hostport_check(what, json_string_value(a), NULL, err)) < 0)
			return rc;
		memcpy(h->addresses[i], json_string_value(a), alen + 1);
	}
	h->n_addresses = json_array_size(v);
	return 0;
}

int pair_msg_parse(const char *line, size_t len, pair_msg *out, sovmesh_error *err)
{
	json_error_t jerr;
	json_t *o = NULL, *t;
	int rc = -EINVAL;
	memset(out, 0, sizeof(*out));
	if (len > PAIR_MSG_MAX)
		return sovmesh_fail(err, -EINVAL, "pairing message is %zu bytes long, at most %d",
		                    len, PAIR_MSG_MAX);
	if (memchr(line, '\0', len))
		return sovmesh_fail(err, -EINVAL, "pairing message contains a NUL byte");
	o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!o) {
		rc =
		    sovmesh_fail(err, -EINVAL, "pairing message is not valid JSON: %s (at byte %d)",
		                 jerr.text, jerr.position);
		if (err)
			log_one_line(err->message);
		return rc;
	}
	if (!json_is_object(o)) {
		rc = sovmesh_fail(err, -EINVAL, "pairing message must be a JSON object");
		goto out;
	}
	if (!(t = need("pairing message", o, "type", JSON_STRING, "a string", err)))
		goto out;
	const char *type = json_string_value(t);
	if (strcmp(type, T_HELLO) == 0) {
		out->type = PAIR_MSG_HELLO;
		rc = parse_hello(o, &out->hello, err);
	} else if (strcmp(type, T_CONFIRM) == 0) {
		static const char *const keys[] = {"type", NULL};
		out->type = PAIR_MSG_CONFIRM;
		rc = check_keys(T_CONFIRM, o, keys, err);
	} else if (strcmp(type, T_ERROR) == 0) {
		static const char *const keys[] = {"type", "message", NULL};
		json_t *m;
		out->type = PAIR_MSG_ERROR;
		if ((rc = check_keys(T_ERROR, o, keys, err)) < 0)
			goto out;
		rc = -EINVAL;
		if (!(m = need(T_ERROR, o, "message", JSON_STRING, "a string", err)))
			goto out;
		size_t mlen = json_string_length(m);
		if (mlen == 0 || mlen > PAIR_ERROR_MAX) {
			rc = sovmesh_fail(
			    err, -EINVAL,
			    "pair-error: field \"message\" must be 1..%d bytes, got %zu",
			    PAIR_ERROR_MAX, mlen);
			goto out;
		}
		memcpy(out->error, json_string_value(m), mlen + 1);
		log_one_line(out->error);
		rc = 0;
	} else {
		rc = sovmesh_fail(err, -EINVAL,
		                  "pairing message: unknown type \"%.32s\" (expected pair-hello, "
		                  "pair-confirm or pair-error)",
		                  type);
		if (err)
			log_one_line(err->message);
	}
out:
	json_decref(o);
	if (rc < 0)
		pair_msg_clear(out);
	return rc;
}

static int check_hello(const pair_hello *h, sovmesh_error *err)
{
	int rc;
	if ((rc = pair_name_check("pair-hello: name", h->name, strnlen(h->name, sizeof(h->name)),
	                          err)) < 0)
		return rc;
	if (!h->cert_pem || !*h->cert_pem || strlen(h->cert_pem) > PAIR_CERT_PEM_MAX)
		return sovmesh_fail(err, -EINVAL, "pair-hello: cert must be 1..%d bytes of PEM",
		                    PAIR_CERT_PEM_MAX);
	if (h->peer_port == 0)
		return sovmesh_fail(err, -EINVAL, "pair-hello: peer_port must be 1..65535");
	if (h->n_addresses > PAIR_MAX_ADDRS)
		return sovmesh_fail(err, -EINVAL, "pair-hello: more than %d addresses",
		                    PAIR_MAX_ADDRS);
	for (size_t i = 0; i < h->n_addresses; i++) {
		if (!memchr(h->addresses[i], '\0', sizeof(h->addresses[i])))
			return sovmesh_fail(err, -EINVAL, "pair-hello: address %zu is too long",
			                    i + 1);
		if ((rc = pair_hostport_check("pair-hello: address", h->addresses[i], NULL, err)) <
		    0)
			return rc;
	}
	return 0;
}

int pair_hello_from_identity(const identity *self, uint16_t peer_port, const char *const *addresses,
                             size_t n, pair_hello *out, sovmesh_error *err)
{
	memset(out, 0, sizeof(*out));
	size_t len = self->node_name ? strlen(self->node_name) : 0;
	int rc = pair_name_check("node name", self->node_name ? self->node_name : "", len, err);
	if (rc < 0)
		return rc;
	memcpy(out->name, self->node_name, len + 1);
	if (n > PAIR_MAX_ADDRS)
		return sovmesh_fail(err, -EINVAL,
		                    "pairing: more than %d peer addresses to announce",
		                    PAIR_MAX_ADDRS);
	for (size_t i = 0; i < n; i++) {
		if (strlen(addresses[i]) > PAIR_HOSTPORT_MAX)
			return sovmesh_fail(err, -EINVAL, "pairing: peer address %zu is too long",
			                    i + 1);
		if ((rc = pair_hostport_check("pairing: peer address", addresses[i], NULL, err)) <
		    0)
			return rc;
		strcpy(out->addresses[i], addresses[i]);
	}
	out->n_addresses = n;
	out->peer_port = peer_port;
	memcpy(out->fingerprint, self->fingerprint, sizeof(out->fingerprint));
	memcpy(out->fingerprint_hex, self->fingerprint_hex, sizeof(out->fingerprint_hex));
	memcpy(out->short_fp, self->short_fp, sizeof(out->short_fp));
	memcpy(out->x25519_public, self->x25519_public, 32);
	if (!self->cert_pem || !(out->cert_pem = strdup(self->cert_pem)))
		return sovmesh_fail(err, self->cert_pem ? -ENOMEM : -EINVAL,
		                    "pairing: this node has no certificate");
	if ((rc = check_hello(out, err)) < 0) {
		pair_hello_clear(out);
		return rc;
	}
	return 0;
}

/* Serialise `o` (reference stolen) compactly plus '\n'. */
static int dump_line(json_t *o, char **out)
{
	if (!o)
		return -ENOMEM;
	char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (!s)
		return -ENOMEM;
	size_t n = strlen(s);
	char *line = malloc(n + 2);
	if (!line) {
		free(s);
		return -ENOMEM;
	}
	memcpy(line, s, n);
	line[n] = '\n';
	line[n + 1] = '\0';
	free(s);
	*out = line;
	return 0;
}

int pair_hello_build(const pair_hello *h, char **out, sovmesh_error *err)
{
	int rc = check_hello(h, err);
	if (rc < 0)
		return rc;
	char b64[BASE64_ENCODE_RAW_LENGTH(32) + 1];
	base64_encode_raw(b64, 32, h->x25519_public);
	b64[sizeof(b64) - 1] = '\0';
	json_t *addrs = json_array();
	for (size_t i = 0; addrs && i < h->n_addresses; i++)
		if (json_array_append_new(addrs, json_string(h->addresses[i])) < 0) {
			json_decref(addrs);
			addrs = NULL;
		}
	if (!addrs)
		return sovmesh_fail(err, -ENOMEM, "pair-hello: out of memory");
	json_t *o = json_pack("{s:s, s:i, s:s, s:s, s:s, s:i, s:o}", "type", T_HELLO, "version",
	                      PAIR_PROTO_VERSION, "name", h->name, "cert", h->cert_pem, "x25519",
	                      b64, "peer_port", (int)h->peer_port, "addresses", addrs);
	if ((rc = dump_line(o, out)) < 0)
		return sovmesh_fail(err, rc, "pair-hello: cannot encode (out of memory)");
	return 0;
}

int pair_confirm_build(char **out)
{
	return dump_line(json_pack("{s:s}", "type", T_CONFIRM), out);
}

int pair_error_build(const char *message, char **out)
{
	char buf[PAIR_ERROR_MAX + 1];
	size_t n = strlen(message ? message : "");
	if (n > PAIR_ERROR_MAX) {
		n = PAIR_ERROR_MAX;
		/* Do not cut inside a UTF-8 sequence. */
		while (n > 0 && ((unsigned char)message[n] & 0xc0) == 0x80)
			n--;
	}
	memcpy(buf, message ? message : "", n);
	buf[n] = '\0';
	log_one_line(buf);
	if (!buf[0])
		snprintf(buf, sizeof(buf), "pairing refused");
	json_t *s = json_string(buf);
	if (!s) {
		/* Not valid UTF-8: keep the ASCII. */
		for (size_t i = 0; buf[i]; i++)
			if ((unsigned char)buf[i] >= 0x80)
				buf[i] = '?';
		s = json_string(buf);
	}
	if (!s)
		return -ENOMEM;
	return dump_line(json_pack("{s:s, s:o}", "type", T_ERROR, "message", s), out);
}

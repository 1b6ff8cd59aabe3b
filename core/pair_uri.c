/* Pairing codes, names and the sovmesh://pair URI (see pair_uri.h). */
#include "pair_uri.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#include "log.h"

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
static const char uri_prefix[] = "sovmesh://pair?";

int pair_code_generate(char out[PAIR_CODE_LEN + 1])
{
	uint8_t raw[PAIR_CODE_LEN];
	/* 32 divides 256, so taking 5 bits of each byte stays uniform. */
	if (gnutls_rnd(GNUTLS_RND_KEY, raw, sizeof(raw)) < 0)
		return -EIO;
	for (size_t i = 0; i < PAIR_CODE_LEN; i++)
		out[i] = crockford[raw[i] & 31];
	out[PAIR_CODE_LEN] = '\0';
	gnutls_memset(raw, 0, sizeof(raw));
	return 0;
}

int pair_code_normalize(const char *in, char out[PAIR_CODE_LEN + 1], sovmesh_error *err)
{
	size_t n = 0;
	if (!in)
		return sovmesh_fail(err, -EINVAL, "pairing code is missing");
	for (size_t i = 0; in[i]; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c == '-' || c == ' ')
			continue;
		if (c >= 'a' && c <= 'z')
			c = (unsigned char)(c - 'a' + 'A');
		if (c == 'I' || c == 'L')
			c = '1';
		else if (c == 'O')
			c = '0';
		if (c == 'U' || !strchr(crockford, c) || c == '\0') {
			if (c >= 0x21 && c < 0x7f)
				return sovmesh_fail(
				    err, -EINVAL,
				    "pairing code: '%c' at position %zu is not a code "
				    "character (0-9 and A-Z without U)",
				    c, i + 1);
			return sovmesh_fail(
			    err, -EINVAL,
			    "pairing code: byte 0x%02x at position %zu is not a code "
			    "character (0-9 and A-Z without U)",
			    c, i + 1);
		}
		if (n == PAIR_CODE_LEN)
			return sovmesh_fail(err, -EINVAL,
			                    "pairing code has more than %d characters (dashes and "
			                    "spaces not counted)",
			                    PAIR_CODE_LEN);
		out[n++] = (char)c;
	}
	if (n != PAIR_CODE_LEN)
		return sovmesh_fail(
		    err, -EINVAL,
		    "pairing code has %zu characters, expected %d (dashes and spaces "
		    "not counted)",
		    n, PAIR_CODE_LEN);
	out[n] = '\0';
	return 0;
}

void pair_code_format(const char code[PAIR_CODE_LEN + 1], char out[PAIR_CODE_DISPLAY_LEN + 1])
{
	memcpy(out, code, 5);
	out[5] = '-';
	memcpy(out + 6, code + 5, 5);
	out[PAIR_CODE_DISPLAY_LEN] = '\0';
}

/* Decode one UTF-8 sequence at s[0..len); the code point, or -1 if the
 * sequence is invalid (overlong, surrogate, > U+10FFFF, truncated). */
static long utf8_next(const unsigned char *s, size_t len, size_t *used)
{
	unsigned char c = s[0];
	size_t n;
	long cp;
	if (c < 0x80) {
		*used = 1;
		return c;
	} else if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		cp = c & 0x07;
	} else {
		return -1;
	}
	if (len < n)
		return -1;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return -1;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return -1;
	*used = n;
	return cp;
}

static bool invisible(long cp)
{
	return cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f) || cp == 0x200e ||
	       cp == 0x200f || (cp >= 0x2028 && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069) ||
	       cp == 0xfeff;
}

int pair_name_check(const char *what, const char *name, size_t len, sovmesh_error *err)
{
	if (len == 0)
		return sovmesh_fail(err, -EINVAL, "%s is empty", what);
	if (len > PAIR_NAME_MAX)
		return sovmesh_fail(err, -EINVAL, "%s is %zu bytes long, at most %d allowed", what,
		                    len, PAIR_NAME_MAX);
	const unsigned char *s = (const unsigned char *)name;
	for (size_t i = 0; i < len;) {
		size_t used = 0;
		long cp = utf8_next(s + i, len - i, &used);
		if (cp < 0)
			return sovmesh_fail(err, -EINVAL, "%s is not valid UTF-8 (at byte %zu)",
			                    what, i + 1);
		if (invisible(cp))
			return sovmesh_fail(err, -EINVAL,
			                    "%s contains a control or invisible character (U+%04lX "
			                    "at byte %zu)",
			                    what, (unsigned long)cp, i + 1);
		i += used;
	}
	return 0;
}

int pair_hostport_check(const char *what, const char *text, hostport *out, sovmesh_error *err)
{
	hostport hp;
	const char *why = NULL;
	if (hostport_parse(text, 0, &hp, &why) < 0)
		return sovmesh_fail(err, -EINVAL, "%s: %s (expected IPv4:PORT or [IPv6]:PORT)",
		                    what, why);
	if (out)
		*out = hp;
	return 0;
}

static int fp_check(const char *what, const char *hex, size_t len,
                    char out[IDENTITY_FP_HEX_LEN + 1], sovmesh_error *err)
{
	if (len != IDENTITY_FP_HEX_LEN)
		return sovmesh_fail(err, -EINVAL, "%s must be %d hex digits, got %zu characters",
		                    what, IDENTITY_FP_HEX_LEN, len);
	for (size_t i = 0; i < len; i++) {
		char c = hex[i];
		if (c >= 'A' && c <= 'F')
			c = (char)(c - 'A' + 'a');
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return sovmesh_fail(err, -EINVAL, "%s: character %zu is not a hex digit",
			                    what, i + 1);
		out[i] = c;
	}
	out[len] = '\0';
	return 0;
}

static int port_check(const char *what, const char *s, uint16_t *out, sovmesh_error *err)
{
	size_t len = strlen(s);
	unsigned long v = 0;
	if (len == 0 || len > 5)
		goto bad;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			goto bad;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v == 0 || v > 65535)
		goto bad;
	*out = (uint16_t)v;
	return 0;
bad:
	return sovmesh_fail(err, -EINVAL, "%s must be a port number 1..65535", what);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Percent-decode s[0..len) into out (room for len + 1 bytes). */
static int pct_decode(const char *key, const char *s, size_t len, char *out, size_t *out_len,
                      sovmesh_error *err)
{
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] != '%') {
			out[n++] = s[i];
			continue;
		}
		int hi = i + 1 < len ? hexval(s[i + 1]) : -1;
		int lo = i + 2 < len ? hexval(s[i + 2]) : -1;
		if (hi < 0 || lo < 0)
			return sovmesh_fail(
			    err, -EINVAL,
			    "pairing URI: parameter \"%s\": bad percent escape (expected "
			    "%%XX with two hex digits)",
			    key);
		if (hi == 0 && lo == 0)
			return sovmesh_fail(err, -EINVAL,
			                    "pairing URI: parameter \"%s\" contains %%00", key);
		out[n++] = (char)(hi * 16 + lo);
		i += 2;
	}
	out[n] = '\0';
	*out_len = n;
	return 0;
}

enum { P_V, P_NAME, P_FP, P_CODE, P_ADDR, P_PORT, P_COUNT };
static const char *const param_names[P_COUNT] = {"v", "name", "fp", "code", "addr", "port"};

int pair_uri_parse(const char *uri, pair_uri *out, sovmesh_error *err)
{
	static const size_t prefix_len = sizeof(uri_prefix) - 1;
	if (!uri)
		return sovmesh_fail(err, -EINVAL, "pairing URI is missing");
	size_t len = strlen(uri);
	if (len > PAIR_URI_MAX)
		return sovmesh_fail(err, -EINVAL,
		                    "pairing URI is %zu bytes long, at most %d allowed", len,
		                    PAIR_URI_MAX);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)uri[i];
		if (c <= 0x20 || c >= 0x7f)
			return sovmesh_fail(
			    err, -EINVAL,
			    "pairing URI: byte %zu is a space, a control or a non-ASCII "
			    "character (those must be percent-encoded)",
			    i + 1);
	}
	if (len < prefix_len || memcmp(uri, uri_prefix, prefix_len) != 0)
		return sovmesh_fail(err, -EINVAL,
		                    "not a sovmesh pairing URI: it must start with \"%s\"",
		                    uri_prefix);
	if (strchr(uri, '#'))
		return sovmesh_fail(err, -EINVAL, "pairing URI must not have a fragment ('#')");

	pair_uri u;
	memset(&u, 0, sizeof(u));
	bool seen[P_COUNT] = {false};
	char *val = malloc(len + 1);
	if (!val)
		return sovmesh_fail(err, -ENOMEM, "pairing URI: out of memory");
	int rc = 0;
	const char *p = uri + prefix_len;
	for (;;) {
		const char *amp = strchr(p, '&');
		size_t plen = amp ? (size_t)(amp - p) : strlen(p);
		const char *eq = memchr(p, '=', plen);
		if (plen == 0) {
			rc = sovmesh_fail(err, -EINVAL, "pairing URI has an empty parameter");
			goto out;
		}
		if (!eq) {
			rc = sovmesh_fail(err, -EINVAL,
			                  "pairing URI: parameter \"%.*s\" has no '=value'",
			                  (int)(plen > 32 ? 32 : plen), p);
			goto out;
		}
		size_t klen = (size_t)(eq - p);
		int k = -1;
		for (int i = 0; i < P_COUNT; i++)
			if (strlen(param_names[i]) == klen && memcmp(param_names[i], p, klen) == 0)
				k = i;
		if (k < 0) {
			rc = sovmesh_fail(
			    err, -EINVAL,
			    "pairing URI: unknown parameter \"%.*s\" (v=1 knows v, name, "
			    "fp, code, addr, port)",
			    (int)(klen > 32 ? 32 : klen), p);
			goto out;
		}
		const char *key = param_names[k];
		if (k != P_ADDR && seen[k]) {
			rc = sovmesh_fail(err, -EINVAL, "pairing URI: parameter \"%s\" given twice",
			                  key);
			goto out;
		}
		seen[k] = true;
		size_t vlen = 0;
		rc = pct_decode(key, eq + 1, plen - klen - 1, val, &vlen, err);
		if (rc < 0)
			goto out;
		char what[48];
		snprintf(what, sizeof(what), "pairing URI: parameter \"%s\"", key);
		switch (k) {
		case P_V:
			if (strcmp(val, "1") != 0) {
				rc = sovmesh_fail(
				    err, -EINVAL,
				    "pairing URI: parameter \"v\": version \"%.16s\" is "
				    "not supported (only 1)",
				    vlen ? val : "");
				if (err)
					log_one_line(err->message);
				goto out;
			}
			break;
		case P_NAME:
			rc = pair_name_check(what, val, vlen, err);
			if (rc < 0)
				goto out;
			memcpy(u.name, val, vlen + 1);
			break;
		case P_FP:
			rc = fp_check(what, val, vlen, u.fingerprint_hex, err);
			if (rc < 0)
				goto out;
			break;
		case P_CODE: {
			sovmesh_error cerr = {0};
			rc = pair_code_normalize(val, u.code, &cerr);
			if (rc < 0) {
				rc = sovmesh_fail(err, rc, "%s: %s", what, cerr.message);
				goto out;
			}
			break;
		}
		case P_ADDR:
			if (u.n_addrs == PAIR_MAX_ADDRS) {
				rc = sovmesh_fail(err, -EINVAL,
				                  "pairing URI: more than %d \"addr\" parameters",
				                  PAIR_MAX_ADDRS);
				goto out;
			}
			if (vlen > PAIR_HOSTPORT_MAX) {
				rc = sovmesh_fail(err, -EINVAL, "%s is too long (%zu bytes)", what,
				                  vlen);
				goto out;
			}
			rc = pair_hostport_check(what, val, NULL, err);
			if (rc < 0)
				goto out;
			memcpy(u.addrs[u.n_addrs++], val, vlen + 1);
			break;
		case P_PORT:
			rc = port_check(what, val, &u.port, err);
			if (rc < 0)
				goto out;
			break;
		}
		if (!amp)
			break;
		p = amp + 1;
	}
	for (int k = 0; k < P_COUNT; k++) {
		if (!seen[k]) {
			rc = sovmesh_fail(err, -EINVAL, "pairing URI: parameter \"%s\" is missing",
			                  param_names[k]);
			goto out;
		}
	}
	*out = u;
out:
	free(val);
	return rc;
}

/* Append s[0..len) percent-encoded (all but unreserved and ':'). */
static char *pct_encode(char *o, const char *s, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '.' || c == '_' || c == '~' || c == ':') {
			*o++ = (char)c;
		} else {
			*o++ = '%';
			*o++ = hex[c >> 4];
			*o++ = hex[c & 15];
		}
	}
	return o;
}

int pair_uri_build(const pair_uri *u, char **out, sovmesh_error *err)
{
	char fp[IDENTITY_FP_HEX_LEN + 1];
	char code[PAIR_CODE_LEN + 1], shown[PAIR_CODE_DISPLAY_LEN + 1];
	sovmesh_error cerr = {0};
	int rc;
	size_t name_len = strnlen(u->name, sizeof(u->name));
	if ((rc = pair_name_check("pairing URI: name", u->name, name_len, err)) < 0)
		return rc;
	if ((rc = fp_check("pairing URI: fp", u->fingerprint_hex,
	                   strnlen(u->fingerprint_hex, sizeof(u->fingerprint_hex)), fp, err)) < 0)
		return rc;
	if (memchr(u->code, '\0', sizeof(u->code)) == NULL)
		return sovmesh_fail(err, -EINVAL, "pairing URI: code is not terminated");
	if ((rc = pair_code_normalize(u->code, code, &cerr)) < 0)
		return sovmesh_fail(err, rc, "pairing URI: %s", cerr.message);
	pair_code_format(code, shown);
	if (u->n_addrs == 0 || u->n_addrs > PAIR_MAX_ADDRS)
		return sovmesh_fail(err, -EINVAL, "pairing URI: needs 1..%d addr entries, got %zu",
		                    PAIR_MAX_ADDRS, u->n_addrs);
	size_t need = sizeof(uri_prefix) + 64 + 3 * name_len + sizeof(fp) + sizeof(shown);
	for (size_t i = 0; i < u->n_addrs; i++) {
		if (!memchr(u->addrs[i], '\0', sizeof(u->addrs[i])))
			return sovmesh_fail(err, -EINVAL, "pairing URI: addr %zu is not terminated",
			                    i + 1);
		if ((rc = pair_hostport_check("pairing URI: addr", u->addrs[i], NULL, err)) < 0)
			return rc;
		need += 6 + 3 * strlen(u->addrs[i]);
	}
	if (u->port == 0)
		return sovmesh_fail(err, -EINVAL, "pairing URI: port must be 1..65535");
	char *buf = malloc(need);
	if (!buf)
		return sovmesh_fail(err, -ENOMEM, "pairing URI: out of memory");
	char *o = buf;
	o += sprintf(o, "%sv=1&name=", uri_prefix);
	o = pct_encode(o, u->name, name_len);
	o += sprintf(o, "&fp=%s&code=%s", fp, shown);
	for (size_t i = 0; i < u->n_addrs; i++) {
		o += sprintf(o, "&addr=");
		o = pct_encode(o, u->addrs[i], strlen(u->addrs[i]));
	}
	o += sprintf(o, "&port=%u", (unsigned)u->port);
	if ((size_t)(o - buf) > PAIR_URI_MAX) {
		free(buf);
		return sovmesh_fail(err, -EINVAL,
		                    "pairing URI would be %zu bytes, at most %d allowed",
		                    (size_t)(o - buf), PAIR_URI_MAX);
	}
	*out = buf;
	return 0;
}

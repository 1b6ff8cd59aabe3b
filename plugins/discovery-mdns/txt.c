/* SPDX-License-Identifier: MIT */
/*
 * TXT record validation for discovery-mdns (see txt.h).  Every rule is
 * strict: a record that breaks one is dropped whole, so a half-valid
 * announcement can never name a peer.
 */
#include "txt.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int why_set(char *why, size_t why_len, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int why_set(char *why, size_t why_len, int code, const char *fmt, ...)
{
	if (why && why_len) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(why, why_len, fmt, ap);
		va_end(ap);
	}
	return code;
}

static int hexval(uint8_t c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int mdns_txt_fp_ok(const uint8_t *s, size_t len)
{
	if (!s || len != MDNS_TXT_FP_LEN)
		return 0;
	for (size_t i = 0; i < len; i++)
		if (hexval(s[i]) < 0)
			return 0;
	return 1;
}

/* Decode one UTF-8 sequence at s[0..len); returns its length and sets
 * *cp, or 0 if malformed (overlong, surrogate, > U+10FFFF, truncated). */
static size_t utf8_next(const uint8_t *s, size_t len, uint32_t *cp)
{
	uint8_t c = s[0];
	size_t n;
	uint32_t v, min;
	if (c < 0x80) {
		*cp = c;
		return 1;
	} else if (c >= 0xc2 && c <= 0xdf) {
		n = 2, v = c & 0x1f, min = 0x80;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3, v = c & 0x0f, min = 0x800;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4, v = c & 0x07, min = 0x10000;
	} else {
		return 0;
	}
	if (len < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		v = (v << 6) | (s[i] & 0x3f);
	}
	if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
		return 0;
	*cp = v;
	return n;
}

int mdns_txt_name_ok(const uint8_t *s, size_t len)
{
	if (!s || len == 0 || len > MDNS_TXT_MAX_NAME)
		return 0;
	for (size_t i = 0; i < len;) {
		uint32_t cp;
		size_t n = utf8_next(s + i, len - i, &cp);
		if (n == 0)
			return 0;
		/* C0, DEL and C1 controls: they would let a name rewrite the
		 * terminal or the log line it is shown in. */
		if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
			return 0;
		i += n;
	}
	return 1;
}

/* Decimal without sign or leading zero, at most `max`; -1 if not. */
static int64_t parse_uint(const uint8_t *s, size_t len, uint32_t max)
{
	if (len == 0 || len > 10 || (len > 1 && s[0] == '0'))
		return -1;
	int64_t v = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v > (int64_t)max ? -1 : v;
}

static int key_is(const uint8_t *k, size_t klen, const char *name)
{
	size_t n = strlen(name);
	if (klen != n)
		return 0;
	for (size_t i = 0; i < n; i++) {
		uint8_t c = k[i];
		if (c >= 'A' && c <= 'Z')
			c = (uint8_t)(c - 'A' + 'a');
		if (c != (uint8_t)name[i])
			return 0;
	}
	return 1;
}

static int keys_equal(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
	if (alen != blen)
		return 0;
	for (size_t i = 0; i < alen; i++) {
		uint8_t x = a[i], y = b[i];
		if (x >= 'A' && x <= 'Z')
			x = (uint8_t)(x - 'A' + 'a');
		if (y >= 'A' && y <= 'Z')
			y = (uint8_t)(y - 'A' + 'a');
		if (x != y)
			return 0;
	}
	return 1;
}

int mdns_txt_parse(const mdns_txt_item *items, size_t n, mdns_txt *out, char *why, size_t why_len)
{
	if (!out || (n > 0 && !items))
		return why_set(why, why_len, -EINVAL, "no TXT record given");
	memset(out, 0, sizeof(*out));

	size_t total = 0;
	for (size_t i = 0; i < n; i++) {
		if (items[i].len > MDNS_TXT_MAX_RECORD)
			return why_set(why, why_len, -EBADMSG,
			               "TXT string %zu is %zu bytes, more than %u", i, items[i].len,
			               MDNS_TXT_MAX_RECORD);
		total += 1 + items[i].len;
		if (total > MDNS_TXT_MAX_TOTAL)
			return why_set(why, why_len, -EBADMSG, "TXT record is longer than %u bytes",
			               MDNS_TXT_MAX_TOTAL);
	}

	int have_v = 0, have_fp = 0, have_name = 0;
	int64_t version = 0;
	for (size_t i = 0; i < n; i++) {
		const uint8_t *s = items[i].data;
		size_t len = items[i].len;
		if (len == 0)
			continue; /* RFC 6763 §6.1: an empty record is one empty string */
		const uint8_t *eq = memchr(s, '=', len);
		if (!eq)
			return why_set(why, why_len, -EBADMSG, "TXT string %zu is not key=value",
			               i);
		size_t klen = (size_t)(eq - s);
		if (klen == 0)
			return why_set(why, why_len, -EBADMSG, "TXT string %zu has an empty key",
			               i);
		for (size_t j = 0; j < klen; j++)
			if (s[j] < 0x20 || s[j] > 0x7e)
				return why_set(
				    why, why_len, -EBADMSG,
				    "TXT string %zu has a key that is not printable ASCII", i);
		for (size_t j = 0; j < i; j++) {
			const uint8_t *o = items[j].data;
			const uint8_t *oeq = items[j].len ? memchr(o, '=', items[j].len) : NULL;
			if (oeq && keys_equal(s, klen, o, (size_t)(oeq - o)))
				return why_set(why, why_len, -EBADMSG,
				               "TXT string %zu repeats an earlier key", i);
		}
		const uint8_t *val = eq + 1;
		size_t vlen = len - klen - 1;
		if (key_is(s, klen, "v")) {
			version = parse_uint(val, vlen, UINT32_MAX);
			if (version < 0)
				return why_set(why, why_len, -EBADMSG,
				               "v= is not a decimal version number");
			have_v = 1;
		} else if (key_is(s, klen, "fp")) {
			if (!mdns_txt_fp_ok(val, vlen))
				return why_set(why, why_len, -EBADMSG,
				               "fp= is not %u hex digits (%zu bytes)",
				               MDNS_TXT_FP_LEN, vlen);
			for (size_t j = 0; j < vlen; j++) {
				uint8_t c = val[j];
				out->fingerprint[j] =
				    (char)(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c);
			}
			out->fingerprint[vlen] = '\0';
			have_fp = 1;
		} else if (key_is(s, klen, "name")) {
			if (!mdns_txt_name_ok(val, vlen))
				return why_set(why, why_len, -EBADMSG,
				               "name= is not 1..%u bytes of UTF-8 without control "
				               "characters (%zu bytes)",
				               MDNS_TXT_MAX_NAME, vlen);
			memcpy(out->name, val, vlen);
			out->name[vlen] = '\0';
			have_name = 1;
		} else if (key_is(s, klen, "pair")) {
			int64_t port = parse_uint(val, vlen, 65535);
			if (port <= 0)
				return why_set(why, why_len, -EBADMSG,
				               "pair= is not a port number 1..65535");
			out->pairing_port = (uint16_t)port;
		}
		/* Other keys: ignored, for announcements of later versions. */
	}
	if (!have_v)
		return why_set(why, why_len, -EBADMSG, "TXT record has no v=");
	if (!have_fp)
		return why_set(why, why_len, -EBADMSG, "TXT record has no fp=");
	if (!have_name)
		return why_set(why, why_len, -EBADMSG, "TXT record has no name=");
	out->version = (uint32_t)version;
	if (version != MDNS_TXT_VERSION)
		return why_set(why, why_len, -EPROTONOSUPPORT,
		               "peer protocol version %u is not supported (this node speaks %u)",
		               (unsigned)version, MDNS_TXT_VERSION);
	return 0;
}

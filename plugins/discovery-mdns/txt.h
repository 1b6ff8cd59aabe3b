/* SPDX-License-Identifier: MIT */
/*
 * TXT records of `_sovmesh._tcp` services: parsing and validation of what
 * other hosts announce.  Pure C, no Avahi types, so it can be unit-tested
 * and fuzzed on its own.  Everything here comes from the network and is
 * untrusted.
 */
#ifndef SOVMESH_MDNS_TXT_H
#define SOVMESH_MDNS_TXT_H

#include <stddef.h>
#include <stdint.h>

#define MDNS_TXT_VERSION    1u    /* the only `v=` we report */
#define MDNS_TXT_MAX_RECORD 255u  /* bytes of one key=value string */
#define MDNS_TXT_MAX_TOTAL  1300u /* wire bytes: sum of (1 + length) */
#define MDNS_TXT_MAX_NAME   63u   /* bytes of name= */
#define MDNS_TXT_FP_LEN     64u   /* hex digits of fp= */

/* One character-string of the TXT record, not NUL-terminated. */
typedef struct mdns_txt_item {
	const uint8_t *data;
	size_t len;
} mdns_txt_item;

/* The validated facts of one TXT record. */
typedef struct mdns_txt {
	uint32_t version;                      /* always MDNS_TXT_VERSION on success */
	char fingerprint[MDNS_TXT_FP_LEN + 1]; /* lowercase hex */
	char name[MDNS_TXT_MAX_NAME + 1];      /* UTF-8, no control characters */
	uint16_t pairing_port;                 /* 0 = no pair= */
} mdns_txt;

/*
 * Parse and validate the `n` strings of a TXT record (`items` may be NULL
 * when n is 0).  Rules: every non-empty string is key=value with a key of
 * printable ASCII; keys compare case-insensitively and must not repeat;
 * each string <= MDNS_TXT_MAX_RECORD bytes, all together <=
 * MDNS_TXT_MAX_TOTAL wire bytes; v, fp and name are required; unknown
 * keys are ignored.  Returns 0 with *out filled, -EPROTONOSUPPORT when the
 * record is well-formed but v is not 1, or -EBADMSG; on failure *out is
 * unspecified and `why` (may be NULL) gets one line saying which rule
 * failed (it never quotes the untrusted bytes).
 */
int mdns_txt_parse(const mdns_txt_item *items, size_t n, mdns_txt *out, char *why, size_t why_len);

/* Non-zero when `s` (len bytes) is a valid node name: 1..63 bytes of
 * valid UTF-8 without control characters.  Also used for our own name. */
int mdns_txt_name_ok(const uint8_t *s, size_t len);

/* Non-zero when `s` (len bytes) is exactly 64 hex digits (any case). */
int mdns_txt_fp_ok(const uint8_t *s, size_t len);

#endif

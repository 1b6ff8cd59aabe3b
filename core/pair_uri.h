/*
 * Pairing input syntax: the one-time pairing code, node names as pairing
 * shows them, and the sovmesh://pair?... URI a QR code carries
 * (docs/protocol.md, "Pairing URI").  Everything here parses untrusted
 * input (typed by a user, scanned from a photo): strict, and each refusal
 * is one line naming the parameter.
 */
#ifndef SOVMESH_CORE_PAIR_URI_H
#define SOVMESH_CORE_PAIR_URI_H

#include <stddef.h>
#include <stdint.h>
#include <sovmesh/plugin.h>

#include "hostport.h"
#include "identity.h"

/* 10 Crockford base32 characters = 50 bits. */
#define PAIR_CODE_LEN 10
/* "XXXXX-XXXXX" */
#define PAIR_CODE_DISPLAY_LEN 11
/* Node names in pairing: bytes of UTF-8. */
#define PAIR_NAME_MAX 63
/* "[v6%zone]:65535" */
#define PAIR_HOSTPORT_MAX (HOSTPORT_HOST_MAX + 8)
/* addr entries in a URI, addresses in a pair-hello. */
#define PAIR_MAX_ADDRS 8
/* Longest URI accepted (a QR code must hold it). */
#define PAIR_URI_MAX 2048

/*
 * A fresh code from GnuTLS's key-grade RNG (GNUTLS_RND_KEY; never the
 * seeded stream of rng_insecure_seed), in normalised form (10 characters
 * of "0123456789ABCDEFGHJKMNPQRSTVWXYZ").  0 or -EIO.  Thread-safe.
 */
int pair_code_generate(char out[PAIR_CODE_LEN + 1]);

/*
 * Normalise what a person typed: case-insensitive, I and L read as 1, O as
 * 0, dashes and spaces dropped; anything else (U included) is refused, as
 * is a length other than 10.  0, or -EINVAL with a message that starts
 * "pairing code".  `in` is borrowed.
 */
int pair_code_normalize(const char *in, char out[PAIR_CODE_LEN + 1], sovmesh_error *err);

/* The display form "XXXXX-XXXXX" of a normalised code. */
void pair_code_format(const char code[PAIR_CODE_LEN + 1], char out[PAIR_CODE_DISPLAY_LEN + 1]);

/*
 * A node name as pairing accepts it: 1..63 bytes of valid UTF-8 with no
 * control characters (C0, DEL, C1) and no invisible characters that can
 * disguise a name shown for confirmation (bidi controls U+202A-202E,
 * U+2066-2069, U+200E/F, line/paragraph separators U+2028/9, U+FEFF).
 * `what` names the field in the message ("parameter \"name\"").
 * 0 or -EINVAL.
 */
int pair_name_check(const char *what, const char *name, size_t len, sovmesh_error *err);

/*
 * hostport_parse() for pairing input: numeric host, port 1..65535.  `what`
 * names the field.  `out` may be NULL.  0 or -EINVAL.
 */
int pair_hostport_check(const char *what, const char *text, hostport *out, sovmesh_error *err);

typedef struct pair_uri {
	char name[PAIR_NAME_MAX + 1];                      /* issuer's node name */
	char fingerprint_hex[IDENTITY_FP_HEX_LEN + 1];     /* lowercase */
	char code[PAIR_CODE_LEN + 1];                      /* normalised */
	char addrs[PAIR_MAX_ADDRS][PAIR_HOSTPORT_MAX + 1]; /* pairing listener */
	size_t n_addrs;                                    /* 1..8 */
	uint16_t port;                                     /* issuer's peer port */
} pair_uri;

/*
 * Parse sovmesh://pair?v=1&name=..&fp=..&code=..&addr=..[&addr=..]&port=..
 * Parameters may come in any order.  Refused, with one line naming the
 * parameter: more than 2048 bytes; a byte that is not printable ASCII (a
 * space, a control, raw UTF-8: those must be percent-encoded); another
 * scheme or host, a path, a fragment; an empty parameter or one without
 * '='; a bad percent escape or %00; an unknown parameter (a v=1 URI has one
 * meaning: anything new comes with a new v); a single-valued parameter
 * given twice; a missing one; v other than 1; a name failing
 * pair_name_check; fp not 64 hex digits; a code failing
 * pair_code_normalize; 0 or more than 8 addr, or one failing
 * pair_hostport_check; port not 1..65535.  '+' is a literal plus, not a
 * space.  0 or -EINVAL; `out` is filled only on success.
 */
int pair_uri_parse(const char *uri, pair_uri *out, sovmesh_error *err);

/*
 * Build the URI for `u` (borrowed; every field checked as pair_uri_parse
 * would; the URI carries the code in display form "XXXXX-XXXXX").  The name and addresses are
 * percent-encoded (all but unreserved characters and ':').  *out is malloc'd, caller frees. 0,
 * -EINVAL with a message, or -ENOMEM.
 */
int pair_uri_build(const pair_uri *u, char **out, sovmesh_error *err);

#endif

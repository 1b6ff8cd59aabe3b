/*
 * The messages exchanged inside the TLS-SRP pairing channel: one JSON
 * object per line (docs/protocol.md, "Pairing").
 *   {"type":"pair-hello","version":1,"name":..,"cert":PEM,"x25519":B64,
 *    "peer_port":N,"addresses":["host:port",..]}
 *   {"type":"pair-confirm"}
 *   {"type":"pair-error","message":..}
 * Everything received is untrusted: parsed with jansson, every field
 * checked, unknown fields and types refused, one error line naming the
 * field.  The fingerprint is always computed here from the certificate,
 * never taken from the sender.
 */
#ifndef SOVMESH_CORE_PAIR_MESSAGES_H
#define SOVMESH_CORE_PAIR_MESSAGES_H

#include <stddef.h>
#include <stdint.h>
#include <sovmesh/plugin.h>

#include "identity.h"
#include "pair_uri.h"

/* Longest message line, JSON text without its '\n'. */
#define PAIR_MSG_MAX 65536
/* Longest certificate PEM in a pair-hello. */
#define PAIR_CERT_PEM_MAX 16384
/* Longest pair-error message, bytes. */
#define PAIR_ERROR_MAX     512
#define PAIR_PROTO_VERSION 1

typedef struct pair_hello {
	char name[PAIR_NAME_MAX + 1];
	char *cert_pem; /* owned, NUL-terminated */
	/* Computed by the receiver (pair_msg_parse) from cert_pem. */
	uint8_t fingerprint[IDENTITY_FP_LEN];
	char fingerprint_hex[IDENTITY_FP_HEX_LEN + 1];
	char short_fp[IDENTITY_SHORT_FP_LEN + 1];
	uint8_t x25519_public[32];
	uint16_t peer_port;
	char addresses[PAIR_MAX_ADDRS][PAIR_HOSTPORT_MAX + 1];
	size_t n_addresses; /* 0..PAIR_MAX_ADDRS */
} pair_hello;

typedef enum pair_msg_type {
	PAIR_MSG_HELLO = 1,
	PAIR_MSG_CONFIRM,
	PAIR_MSG_ERROR,
} pair_msg_type;

typedef struct pair_msg {
	pair_msg_type type;
	pair_hello hello;               /* PAIR_MSG_HELLO */
	char error[PAIR_ERROR_MAX + 1]; /* PAIR_MSG_ERROR; control characters made '?' */
} pair_msg;

/*
 * Parse one line (`len` bytes at `line`, without the '\n'; need not be
 * NUL-terminated; borrowed).  Refused with -EINVAL and one line naming
 * the field: more than PAIR_MSG_MAX bytes, a NUL byte, not one JSON
 * object, a duplicate key, a missing or unknown "type", any key the type
 * does not define, a field of the wrong type; for pair-hello: version
 * other than 1, a name failing pair_name_check, a cert that is not exactly
 * one PEM certificate GnuTLS imports (at most PAIR_CERT_PEM_MAX bytes),
 * x25519 that is not canonical base64 of exactly 32 bytes, peer_port not
 * 1..65535, addresses not an array of at most 8 pair_hostport_check
 * strings; for pair-error: a message that is empty or longer than
 * PAIR_ERROR_MAX.  On success *out is filled (release with
 * pair_msg_clear()); on failure *out is left cleared.  0, -EINVAL, -ENOMEM.
 */
int pair_msg_parse(const char *line, size_t len, pair_msg *out, sovmesh_error *err);

/* Free what a parsed message owns and zero it.  NULL is a no-op. */
void pair_msg_clear(pair_msg *m);
void pair_hello_clear(pair_hello *h);

/* Deep copy (dst gets its own cert_pem).  0 or -ENOMEM. */
int pair_hello_copy(pair_hello *dst, const pair_hello *src);

/*
 * Fill *out (cleared first) with this node's hello: name and cert_pem from
 * `self` (borrowed), its fingerprint fields and X25519 public key, the
 * peer port and the announced peer-port addresses (`addresses[0..n)`,
 * borrowed).  Every field is checked as pair_msg_parse would, so a node
 * never sends a hello its peer must refuse.  Release with
 * pair_hello_clear().  0, -EINVAL or -ENOMEM with a message.
 */
int pair_hello_from_identity(const identity *self, uint16_t peer_port, const char *const *addresses,
                             size_t n, pair_hello *out, sovmesh_error *err);

/*
 * Serialise as one line ending in '\n'.  *out is malloc'd, caller frees.
 * pair_hello_build checks `h` (borrowed) first: 0, -EINVAL with a message,
 * -ENOMEM.  pair_error_build cuts `message` to PAIR_ERROR_MAX bytes (at a
 * UTF-8 boundary) and replaces control characters.
 */
int pair_hello_build(const pair_hello *h, char **out, sovmesh_error *err);
int pair_confirm_build(char **out);
int pair_error_build(const char *message, char **out);

#endif

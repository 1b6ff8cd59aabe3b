/*
 * Paired peers, pinned by fingerprint, persisted in <state_dir>/peers.json
 * (0600) with atomic replacement (state_file.c), so it survives restart
 * and kill -9.  Nothing is trusted that is not in here (DESIGN.md §6.1).
 */
#ifndef SOVMESH_CORE_TRUST_STORE_H
#define SOVMESH_CORE_TRUST_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <sovmesh/plugin.h>

#include "identity.h"

typedef struct trusted_peer {
	char fingerprint_hex[IDENTITY_FP_HEX_LEN + 1];
	char *name;              /* owned; as the peer announced it when pairing */
	uint8_t x25519_public[32];
	char **addresses;        /* owned; "host:port" last seen, newest first */
	size_t n_addresses;
	int64_t paired_at;       /* Unix seconds */
	int64_t last_sync;       /* Unix seconds, 0 = never */
} trusted_peer;

typedef struct trust_store trust_store;

/* Called after a peer is added (removed == 0) or removed (removed == 1),
 * on the caller's thread; `peer` is valid during the call only. */
typedef void (*trust_change_fn)(void *ud, const trusted_peer *peer, int removed);

/* Load <state_dir>/peers.json (a missing file is an empty store; a corrupt
 * one is refused with the file and reason, never silently emptied). */
int trust_store_open(const char *state_dir, trust_store **out, sovmesh_error *err);
void trust_store_free(trust_store *ts);

void trust_store_on_change(trust_store *ts, trust_change_fn fn, void *ud);

size_t trust_store_count(const trust_store *ts);
const trusted_peer *trust_store_at(const trust_store *ts, size_t i);
/* By full fingerprint (hex, either case); NULL if not trusted. */
const trusted_peer *trust_store_find(const trust_store *ts, const char *fingerprint_hex);

/*
 * Resolve what a user typed for `sovmesh peers remove PEER`: an exact
 * name, a full fingerprint, or a unique fingerprint prefix (>= 8 hex) or
 * short form.  -ENOENT (no match) or -EINVAL (ambiguous, listing matches).
 */
int trust_store_resolve(const trust_store *ts, const char *what, const trusted_peer **out,
                        sovmesh_error *err);

/* Add or replace (same fingerprint) a peer; copies `p`; persists before
 * returning.  0 or -errno with a message. */
int trust_store_add(trust_store *ts, const trusted_peer *p, sovmesh_error *err);
/* Remove and persist; -ENOENT if absent. */
int trust_store_remove(trust_store *ts, const char *fingerprint_hex, sovmesh_error *err);
/* Record that a federated-learning delta went to or came from a peer at
 * `when` (Unix seconds); persisted.  -ENOENT if not paired. */
int trust_store_note_sync(trust_store *ts, const char *fingerprint_hex, int64_t when,
                          sovmesh_error *err);
/* Record an address seen for a peer (front of the list, max 4 kept). */
int trust_store_note_address(trust_store *ts, const char *fingerprint_hex, const char *hostport,
                             sovmesh_error *err);

/* The rule add() applies to a peer's name (untrusted, from the network):
 * valid UTF-8, 1..63 bytes, no control or bidi-override characters.  For
 * pairing to refuse a bad name before the handshake ends.  0 or -EINVAL
 * with "peer name: ...". */
int trust_store_check_name(const char *name, sovmesh_error *err);

#endif

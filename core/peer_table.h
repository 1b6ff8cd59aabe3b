/*
 * The peer table: what discovery reports, matched against the trust store
 * by fingerprint, plus the live status of every paired peer from periodic
 * authenticated health checks (GET /peer/v1/health over the peer port,
 * peer_client.c).
 *
 *   discovered devices  keyed by (source plugin label, instance_id); the
 *                       fingerprint comes from the announcement (mDNS TXT)
 *                       or is learned when a health check to that address
 *                       succeeds (static peers announce none).
 *   paired peers        every peer in the trust store, matched to
 *                       discovered devices by FINGERPRINT, so a changed IP
 *                       address is followed; one that nothing discovered
 *                       is still checked at its last known address.
 *
 * Discovery never confers trust: an announced fingerprint only says where
 * to try; a peer is CONNECTED only after a mutual-TLS call pinned to its
 * fingerprint answered.  An address that answered is recorded in the
 * trust store (trust_store_note_address).
 *
 * Status: CONNECTED after a successful check; OFFLINE after
 * `fail_threshold` consecutive failed or timed-out checks, at once when
 * every source that saw the peer reported it GONE (mDNS goodbye), and
 * until the first check succeeds.  Latency is an EWMA (alpha 0.3) of the
 * checks' round-trip times.
 *
 * Threading: the loop's thread only.
 */
#ifndef SOVMESH_CORE_PEER_TABLE_H
#define SOVMESH_CORE_PEER_TABLE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <sovmesh/discovery.h>
#include <uv.h>

#include "hostport.h"
#include "peer_client.h"
#include "trust_store.h"

#define PEER_HEALTH_PATH           "/peer/v1/health"
#define PEER_TABLE_INTERVAL_MS     3000
#define PEER_TABLE_FAIL_THRESHOLD  2
#define PEER_TABLE_LATENCY_ALPHA   0.3
#define PEER_TABLE_MAX_HEALTH_BODY (64 * 1024)

typedef struct peer_table peer_table;

typedef struct peer_table_options {
	unsigned interval_ms;    /* between checks of one peer; 0: PEER_TABLE_INTERVAL_MS */
	unsigned timeout_ms;     /* one check, connect included; 0: the interval */
	unsigned fail_threshold; /* consecutive failures -> OFFLINE; 0: 2 */
} peer_table_options;

typedef enum peer_status {
	PEER_OFFLINE = 0,
	PEER_CONNECTED = 1,
} peer_status;

/* One paired peer as the router and the control API see it.  Strings
 * and `models` are owned by the table: valid until the next loop turn
 * that may run a table callback (copy what you keep). */
typedef struct peer_info {
	const char *fingerprint_hex;
	const char *name;    /* from its health answer, else as paired */
	const char *address; /* "host:port" in use / last known; "" if none */
	peer_status status;
	double latency_ms; /* < 0: not measured yet */
	const char *const *models;
	size_t n_models;
	int64_t in_flight, capacity; /* -1: unknown */
	int hot;
	int accepting; /* its health answer says it takes peer requests now */
	int fl_enabled; /* its health answer says federated learning is on: 1 / 0; -1 not said */
	int has_temp;
	double temp_c;
	int64_t last_seen; /* Unix seconds of the last good check, 0 = never */
	int64_t last_sync; /* from the trust store */
} peer_info;

/*
 * A table on `loop` that checks the peers of `ts` through `pc`; none of
 * the three is owned, all must outlive the table.  `self_fp` (this node,
 * 64 hex; copied) is never listed: mDNS reports ourselves too.  `opts`
 * may be NULL (defaults).  Checks start at once.  0 or -errno (-ENOMEM,
 * -EINVAL); *out is the caller's, to release with peer_table_free().
 */
int peer_table_new(uv_loop_t *loop, trust_store *ts, peer_client *pc, const char *self_fp,
                   const peer_table_options *opts, peer_table **out);

/*
 * A discovery event from plugin `source` (its label, e.g.
 * "discovery-mdns"; copied).  Every field of `peer` is untrusted and
 * checked here: an event with a malformed address, fingerprint or name
 * is dropped with a debug line (a bad name or fingerprint alone is
 * dropped, the address kept).  peer->pairing_port (read only when
 * peer->size holds it) is the device's open pairing listener, 0: none.
 * APPEARED for a known
 * instance acts as CHANGED.  Matches discovery_event_fn (discovery_host.h)
 * with ud = the table.
 */
void peer_table_discovery_event(void *table, const char *source, sovmesh_peer_event event,
                                const sovmesh_discovered_peer *peer);

/* A discovery plugin stopped: forget its devices (no OFFLINE is implied;
 * health checks decide). */
void peer_table_forget_source(peer_table *t, const char *source);

/*
 * A trust_change_fn (ud: the table).  The store accepts one listener, held
 * by peer_transport, which chains to opts.on_trust_change: the daemon
 * calls this from its combined callback (after peer_client_trust_changed).
 * A removed peer disappears from the paired list at once and its check is
 * cancelled; an added one is checked at once.
 */
void peer_table_trust_changed(void *ud, const trusted_peer *peer, int removed);

/* Check every paired peer now (e.g. the user pressed refresh). */
void peer_table_check_now(peer_table *t);

/* Paired peers (the trust store's order).  -ENOENT when `fingerprint_hex`
 * is not paired. */
size_t peer_table_paired_count(const peer_table *t);
int peer_table_paired_at(const peer_table *t, size_t i, peer_info *out);
int peer_table_lookup(const peer_table *t, const char *fingerprint_hex, peer_info *out);

/*
 * The control API's view (a new reference):
 *   {"paired": [{"name", "fingerprint", "short_fingerprint", "address",
 *                "status": "connected"|"offline", "latency_ms": n|null,
 *                "models": [..], "load": {"in_flight", "capacity"}|null,
 *                "thermal": {"hot", "temp_c": n|null}|null,
 *                "last_seen": n|null, "last_sync": n|null,
 *                "accepting": bool, "federated_learning": bool|null}],
 *    "discovered": [{"name"|null, "fingerprint"|null, "address", "source",
 *                    "pairing_open": bool, "pairing_address": "h:p"|null}]}
 * "discovered" lists devices that are neither paired nor this node.
 * NULL on out-of-memory.
 */
json_t *peer_table_json(const peer_table *t);

/*
 * For `sovmesh pair join CODE` without --addr: the "host:pairing_port" of
 * every discovered, unpaired device that announces an open pairing
 * listener, newest first, without duplicates.  Writes at most `max`;
 * returns how many.
 */
size_t peer_table_pairing_candidates(const peer_table *t, char (*out)[HOSTPORT_TEXT_MAX],
                                     size_t max);

/* Discovered devices, paired or not (not this node), for tests/status. */
size_t peer_table_discovered_count(const peer_table *t);

/*
 * Cancel every check (no callback of it runs), stop the timers, and free
 * the table once they are closed; then `closed(ud)` (may be NULL; may run
 * before this returns).  Call before peer_client_free().  NULL is a no-op.
 */
void peer_table_free(peer_table *t, void (*closed)(void *ud), void *ud);

#endif

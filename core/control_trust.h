/*
 * Control API endpoints for this node's identity and its trusted peers
 * (`sovmesh id`, `sovmesh peers ...`):
 *   GET  /v1/id              name, fingerprint (hex and short form), peer port
 *   GET  /v1/peers           paired peers with live status, and discovered
 *                            devices that are not paired
 *   POST /v1/peers/remove    {"peer": NAME|FINGERPRINT|PREFIX}: revoke at once
 *   POST /v1/peers/ping      {"peer": ...}: GET /peer/v1/hello over mutual TLS
 * Pairing endpoints live in control_pairing.c.  Loop thread only.
 */
#ifndef SOVMESH_CORE_CONTROL_TRUST_H
#define SOVMESH_CORE_CONTROL_TRUST_H

#include "control_api.h"
#include "identity.h"
#include "peer_client.h"
#include "peer_table.h"
#include "trust_store.h"

typedef struct control_trust control_trust;

/* What the endpoints use; all borrowed, must outlive the control_trust. */
typedef struct control_trust_ctx {
	const identity *id;
	trust_store *ts;
	peer_client *pc;
	peer_table *ptable; /* live status; may be NULL */
	int peer_port;      /* the bound peer port, for `sovmesh id` */
} control_trust_ctx;

/* Register the endpoints on `api`.  *out is the caller's, freed with
 * control_trust_free() after `api` is freed.  0 or -errno. */
int control_trust_new(control_api *api, const control_trust_ctx *ctx, control_trust **out);
void control_trust_free(control_trust *ct);

/* JSON of one trusted peer (new reference, NULL on out-of-memory). */
json_t *control_trust_peer_json(const trusted_peer *p);

#endif

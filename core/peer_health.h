/*
 * The server side of health checks: GET /peer/v1/health on the peer port,
 * answered to any pinned peer (peer_transport lets in only those):
 *
 *   {"name": <node>, "fingerprint": <64 hex>, "protocol": 1,
 *    "models": [..], "load": {"in_flight": n, "capacity": n},
 *    "thermal": {"hot": false, "temp_c": null}, "accepting": false}
 *
 * "accepting": whether a peer inference request arriving now would be
 * admitted (serve_inference on, peer and local slots free, not hot).
 *
 * What the backend and router know (models, load, temperature) comes
 * from providers the daemon sets when those parts exist; until then the
 * defaults above (no models, nothing in flight, capacity as configured,
 * not hot, temperature unknown).
 *
 * Threading: the loop's thread only.
 */
#ifndef SOVMESH_CORE_PEER_HEALTH_H
#define SOVMESH_CORE_PEER_HEALTH_H

#include <jansson.h>
#include <stdint.h>

#include "identity.h"
#include "peer_transport.h"

typedef struct peer_health peer_health;

/* Each slot may be NULL (its default is answered). */
typedef struct peer_health_providers {
	void *ud;
	/* A new JSON array of model-name strings (the table takes it). */
	json_t *(*models)(void *ud);
	void (*load)(void *ud, int64_t *in_flight, int64_t *capacity);
	/* *has_temp = 0 for "temp_c": null. */
	void (*thermal)(void *ud, int *hot, int *has_temp, double *temp_c);
	int (*accepting)(void *ud);
} peer_health_providers;

/*
 * Register GET /peer/v1/health on `pt` answering for `id` (not owned; must
 * outlive the returned object).  `default_capacity` is the load capacity
 * answered without a load provider (mesh.max_concurrent_peer_requests).
 * `prov` may be NULL; it is copied.  0, -EEXIST (already registered),
 * -ENOMEM.  *out is the caller's, to free with peer_health_free() AFTER
 * peer_transport_close() (the route cannot be removed and points at it).
 */
int peer_health_register(peer_transport *pt, const identity *id, int64_t default_capacity,
                         const peer_health_providers *prov, peer_health **out);

/* Replace the providers (NULL: defaults); copied. */
void peer_health_set_providers(peer_health *h, const peer_health_providers *prov);

/* The answer as it would be sent now (a new reference), for tests and
 * `sovmesh status`.  NULL on out-of-memory. */
json_t *peer_health_json(const peer_health *h);

void peer_health_free(peer_health *h);

/* Say "federated_learning": true in health answers (this node accepts
 * deltas); off until set. */
void peer_health_set_fl_enabled(peer_health *h, int on);

#endif

/*
 * Control API endpoints for pairing (`sovmesh pair ...`), on top of the
 * pairing engine (pairing.c), pinning into the trust store:
 *   POST /v1/pair/code     offer a one-time code:
 *                          {code, expires_at, expires_in_secs, attempts_left, uri, addresses}
 *   GET  /v1/pair/status   {state: none|waiting|paired|expired|burned|failed,
 *                           reason?, expires_in_secs?, attempts_left?, peer?}
 *   GET  /v1/pair/qr.svg   the outstanding offer's URI as an SVG QR code
 *   POST /v1/pair/join     {code, addr}, {code} (the issuer is found through
 *                          discovery) or {uri}: pair with the issuer;
 *                          {peer: {name, fingerprint, short_fingerprint, addresses}}
 * Loop thread only.
 */
#ifndef SOVMESH_CORE_CONTROL_PAIRING_H
#define SOVMESH_CORE_CONTROL_PAIRING_H

#include <uv.h>

#include "control_api.h"
#include "identity.h"
#include "pairing.h"
#include "peer_table.h"
#include "trust_store.h"

typedef struct control_pairing control_pairing;

/* What the endpoints use; borrowed, must outlive the control_pairing. */
typedef struct control_pairing_ctx {
	const identity *id;
	trust_store *ts;
	const char *pairing_listen; /* pairing.listen */
	const char *peer_listen;    /* mesh.peer_listen, for the announced addresses */
	int peer_port;              /* the bound peer port */
	unsigned code_ttl_secs;
	unsigned max_attempts;
	/* For `pair join CODE` without an address: devices announcing an open
	 * pairing listener.  May be NULL. */
	peer_table *ptable;
	/* Called with the pairing listener's port when a code is offered and
	 * with 0 when it is gone (discovery announces it).  May be NULL. */
	void (*on_pairing_port)(void *ud, uint16_t port);
	void *ud;
} control_pairing_ctx;

/* Create the pairing engine and register the endpoints on `api`.  *out is
 * the caller's: control_pairing_stop() at shutdown (closes the engine on
 * the loop), control_pairing_free() after `api` is freed.  0 or -errno. */
int control_pairing_new(uv_loop_t *loop, control_api *api, const control_pairing_ctx *ctx,
                        control_pairing **out, sovmesh_error *err);
void control_pairing_stop(control_pairing *cp);
void control_pairing_free(control_pairing *cp);

#endif

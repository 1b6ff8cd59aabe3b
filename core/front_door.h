/*
 * The Ollama-compatible front door on the loopback HTTP port (api.listen,
 * default 127.0.0.1:11435): any Ollama client pointed at it works
 * unchanged (docs/mesh-inference.md).
 *
 *   POST /api/chat, /api/generate   validated (infer_request.h), routed
 *        (router.h); streamed as application/x-ndjson chunk by chunk, or
 *        one application/json object for "stream": false.  Headers
 *        X-Sovmesh-Source: local|peer|cache|template and, for peer,
 *        X-Sovmesh-Peer: <name>; template answers also carry
 *        X-Sovmesh-Degraded: true.  Errors before any output: the router's
 *        status with {"error": "..."}; after output started: one
 *        {"error": "..."} line, then the end (as Ollama does).
 *   GET  /api/tags       the local backend's models, plus every model of a
 *        Connected paired peer that is not local, marked
 *        "remote": true, "sovmesh": {"source": "peer", "peers": [names]}.
 *   POST /api/embed, /api/embeddings, /api/show; GET /api/ps, /api/version:
 *        the local backend's answer, passed through.
 *   POST /api/feedback: sovmesh's extension, a rating or correction of an
 *        answer for federated learning (front_door_set_feedback).
 *   HEAD / and GET /: "Ollama is running" (clients probe it).
 *   GET /settings/network (and its .css/.js under it): the Settings ->
 *        Network page (web/), with a strict Content-Security-Policy,
 *        X-Frame-Options DENY, nosniff, no-referrer, no-store.
 *   /sovmesh/v1/...: the control API mirror (control_api_dispatch), for
 *        the Network page; see front_door_options.control.
 *
 * Every request must carry a Host header naming a loopback host
 * (localhost, 127.0.0.1, [::1], with any port) or the listen address
 * itself, else 403 (DNS rebinding); a request with an Origin header that
 * is not a loopback origin gets 403 (another site's page in the user's
 * browser); on /sovmesh/... and /settings/... the Origin, when sent,
 * must be this port's own (another loopback port's page gets 403 too).
 * Bodies over max_body_bytes get 413; a malformed body 400
 * with a message naming the field.  A client that disconnects cancels
 * the upstream request.
 *
 * Threading: the loop's thread only.
 */
#ifndef SOVMESH_CORE_FRONT_DOOR_H
#define SOVMESH_CORE_FRONT_DOOR_H

#include <stddef.h>
#include <sovmesh/plugin.h>
#include <uv.h>

#include "control_api.h"
#include "local_backend.h"
#include "peer_table.h"
#include "router.h"

#define FRONT_DOOR_DEFAULT_MAX_BODY (32u * 1024u * 1024u)

typedef struct front_door front_door;

typedef struct front_door_options {
	const char *listen;    /* "host:port" (hostport.h); port 0: any free */
	size_t max_body_bytes; /* 0: FRONT_DOOR_DEFAULT_MAX_BODY */
	router *router;        /* not owned */
	local_backend *lb;     /* not owned; may be NULL (passthroughs 503) */
	peer_table *ptable;    /* not owned; may be NULL (tags: local only) */
	/* The control API to mirror under /sovmesh/v1/ (NULL: 404 there).
	 * Mutating methods (anything but GET/HEAD) must carry
	 * X-Sovmesh-Token equal to `token`. */
	control_api *control;
	const char *token; /* copied */
	const char *version; /* our version, for /api/version's "sovmesh" field */
} front_door_options;

/* Listen and serve.  0, or -errno with one line in `err` naming the
 * address (-EADDRINUSE, -EINVAL). */
int front_door_new(uv_loop_t *loop, const front_door_options *opts, front_door **out,
                   sovmesh_error *err);
int front_door_port(const front_door *fd);
/* Serve POST /api/feedback with `fn` (NULL: 404, federated learning off). */
void front_door_set_feedback(front_door *fd, http_handler_fn fn, void *ud);
/* Stop listening, cancel routed requests, free; `closed(ud)` then. */
void front_door_close(front_door *fd, void (*closed)(void *ud), void *ud);

/* Host/Origin rules above, exposed for tests: 1 allowed, 0 refused. */
int front_door_host_allowed(const char *host_header, const char *listen_host);
int front_door_origin_allowed(const char *origin_header);

#endif

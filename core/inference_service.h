/*
 * Mesh inference inside the daemon: the local backend (local_backend.h),
 * the router (router.h), the peer-serving side (peer_inference.h), the
 * front door (front_door.h), what health answers say about this node,
 * and the control endpoints:
 *
 *   POST /v1/ask   {"text": T, "model": M (optional)} -> routed as a
 *                  one-message chat, answered when complete:
 *                  {"answer", "model", "source", "peer"|null, "elapsed_ms"}
 *   GET  /v1/inference   the status object below (also in /v1/status
 *                        under "inference").
 *   GET  /v1/cache       answer_cache_stats_json (answer_cache.h)
 *   POST /v1/cache/clear remove every cached answer
 *
 * Life cycle: start after the peer network (it needs the peer port, the
 * table and the client; each may be NULL when the mesh is off), stop
 * (front door, router: no new work, routed requests cancelled) before the
 * peer network closes, free once the peer port has closed (the serving
 * side's pending answers are cancelled by then), before the plugin
 * instances are destroyed.
 *
 * Threading: the loop's thread only.
 */
#ifndef SOVMESH_CORE_INFERENCE_SERVICE_H
#define SOVMESH_CORE_INFERENCE_SERVICE_H

#include <jansson.h>
#include <sovmesh/plugin.h>
#include <uv.h>

#include "config.h"
#include "control_api.h"
#include "host.h"
#include "identity.h"
#include "peer_client.h"
#include "peer_health.h"
#include "peer_table.h"
#include "peer_transport.h"
#include "trust_store.h"

typedef struct inference_service inference_service;

typedef struct inference_service_ctx {
	uv_loop_t *loop;
	const sovmesh_config *cfg; /* must outlive the service */
	plugin_instance *backend;  /* NULL: no local backend */
	plugin_instance *cache;    /* NULL: no cache step */
	const identity *id;        /* NULL when the peer network is off */
	trust_store *trust;
	peer_client *pc;
	peer_table *ptable;
	peer_transport *peer_port;
	peer_health *health;
	control_api *control;
} inference_service_ctx;

int inference_service_start(const inference_service_ctx *ctx, inference_service **out,
                            sovmesh_error *err);
/* SIGHUP: serve_inference, max_concurrent_peer_requests,
 * request_timeout_secs and the thermal keys take effect. */
void inference_service_reload(inference_service *s, const sovmesh_config *next);
/* {"backend": label|null, "models": [..], "slots": n, "in_flight": n,
 *  "api": "host:port"|null, "router": router_stats_json,
 *  "cache": answer_cache_stats_json,
 *  "serving": {"enabled", "max_concurrent", "active", "served",
 *              "refused_busy", "refused_off", "failed"}} */
json_t *inference_service_status(const inference_service *s);
/* Route the front door's POST /api/feedback to `fn` (fl_service.c). */
void inference_service_set_feedback(inference_service *s, http_handler_fn fn, void *ud);
/* Stop taking work: close the front door, cancel routed requests. */
void inference_service_stop(inference_service *s);
/* Free the rest (see the life cycle above).  NULL is a no-op. */
void inference_service_free(inference_service *s);

#endif

/*
 * This node's inference backend (the plugin chosen by inference.backend)
 * as the router and the peer-serving side use it: every generate call
 * goes through here so in-flight requests are counted against the
 * engine's parallel slots (Ollama queues silently once they are full,
 * so "busy" must be known before asking), and the list of local models
 * is kept fresh for health answers, /api/tags and routing decisions.
 *
 * The model list is refreshed every LOCAL_BACKEND_MODELS_INTERVAL_MS and
 * after each failed call with -ENOENT; until the first refresh answers,
 * local_backend_has_model() says "unknown" (-1) and the router tries the
 * backend anyway.
 *
 * Threading: the loop's thread only.
 */
#ifndef SOVMESH_CORE_LOCAL_BACKEND_H
#define SOVMESH_CORE_LOCAL_BACKEND_H

#include <jansson.h>
#include <stdint.h>
#include <sovmesh/backend.h>
#include <uv.h>

#define LOCAL_BACKEND_MODELS_INTERVAL_MS 10000

typedef struct local_backend local_backend;
typedef struct local_call local_call;

/* Who asked: the node's own user (front door, `sovmesh ask`) or a peer. */
typedef enum local_origin {
	LOCAL_ORIGIN_USER = 0,
	LOCAL_ORIGIN_PEER = 1,
} local_origin;

/*
 * Wrap `ops` / `instance` (not owned; must outlive the wrapper) on `loop`.
 * `label` (copied) names the backend in log lines ("backend-ollama").
 * Starts the model list refresh at once.  0 or -ENOMEM.
 */
int local_backend_new(uv_loop_t *loop, const sovmesh_backend_ops *ops, void *instance,
                      const char *label, local_backend **out);

/* Cancel every open call (no callbacks follow), stop the refresh timer
 * and free once closed; `closed(ud)` then (may be NULL; may run before
 * this returns).  NULL is a no-op. */
void local_backend_free(local_backend *lb, void (*closed)(void *ud), void *ud);

/* Parallel slots of the engine (ops->parallel_slots, else 1). */
uint32_t local_backend_slots(const local_backend *lb);
/* Generate calls open now, all origins / peers only. */
uint32_t local_backend_in_flight(const local_backend *lb);
uint32_t local_backend_peer_in_flight(const local_backend *lb);
/* in_flight >= slots. */
int local_backend_busy(const local_backend *lb);

/* 1 when `model` is in the last model list, 0 when not, -1 when no list
 * has been received yet. */
int local_backend_has_model(const local_backend *lb, const char *model);
/* The last model list's names, a new JSON array of strings (empty when
 * unknown).  NULL on out-of-memory. */
json_t *local_backend_models(const local_backend *lb);
/* Ask for a fresh model list now (e.g. after a 404). */
void local_backend_refresh_models(local_backend *lb);

/*
 * Start a generate call counted against the slots (origin PEER also in
 * the peer count).  Callbacks as sovmesh_backend_ops.generate; `req` is
 * passed through.  NULL when the plugin refused to start (out of memory;
 * no callback follows).
 */
local_call *local_backend_generate(local_backend *lb, local_origin origin,
                                   const sovmesh_gen_request *req, const sovmesh_gen_callbacks *cbs,
                                   void *ud);
/* Cancel an open call (no callback follows); NULL is a no-op. */
void local_backend_cancel(local_backend *lb, local_call *call);

/* Uncounted pass-through calls (tags, ps, show, version, embed); same
 * contracts as the backend ops.  NULL when the plugin lacks the slot or
 * could not start; `cb` is then not called. */
sovmesh_backend_call *local_backend_list_models(local_backend *lb, sovmesh_backend_json_cb cb,
                                                void *ud);
sovmesh_backend_call *local_backend_info(local_backend *lb, const char *what, const char *body_json,
                                         sovmesh_backend_json_cb cb, void *ud);
sovmesh_backend_call *local_backend_embed(local_backend *lb, const char *model,
                                          const char *const *texts, size_t n, uint32_t timeout_ms,
                                          sovmesh_backend_embed_cb cb, void *ud);
void local_backend_cancel_passthrough(local_backend *lb, sovmesh_backend_call *call);

#endif

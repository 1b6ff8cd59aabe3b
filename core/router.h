/*
 * The fallback chain of mesh inference (docs/mesh-inference.md):
 *
 *   1. local    unless this node is hot (thermal.h) or the backend's
 *               in-flight calls fill its parallel slots; a local answer
 *               of busy (503), connection refused, timeout or unknown
 *               model before the first chunk moves on to step 2.
 *   2. peer     paired peers that are CONNECTED, list the model, are not
 *               hot, not full (in_flight < capacity), accept peer requests,
 *               and whose circuit breaker is closed, lowest latency first;
 *               up to ROUTER_MAX_PEER_TRIES of them.  A request without
 *               user text, or with images, is never sent to a peer.
 *   3. cache    a cached answer to the same or a similar question
 *               (answer_cache.h), for requests with user text and no images
 *   4. template the configured "degraded" answer, quoting a near miss of
 *               the cache when there is one
 *   -> with the template disabled the chain ends in 503 "no backend or
 *      peer could answer"; when no step had the model at all and the cache
 *      has nothing for it, 404.
 *
 * Answers served locally or by a peer are stored in the cache (the last
 * user message and the whole answer text), never cache or template ones.
 *
 * A step may be left for the next one only before it produced its first
 * chunk; after that, a failure reaches the client as an error.  Every hop
 * must produce its first chunk within request_timeout_secs and each
 * further chunk within the same time of the previous one, or it is
 * cancelled and treated as timed out.
 *
 * Circuit breaker per peer: ROUTER_BREAKER_FAILURES consecutive failed
 * hops open it for ROUTER_BREAKER_OPEN_MS; then one trial request is let
 * through (half-open); success closes it, failure opens it again.
 *
 * Threading: the loop's thread only.
 */
#ifndef SOVMESH_CORE_ROUTER_H
#define SOVMESH_CORE_ROUTER_H

#include <jansson.h>
#include <stdint.h>
#include <uv.h>

#include "answer_cache.h"
#include "infer_request.h"
#include "local_backend.h"
#include "peer_client.h"
#include "peer_table.h"
#include "trust_store.h"

#define ROUTER_MAX_PEER_TRIES   3
#define ROUTER_BREAKER_FAILURES 3
#define ROUTER_BREAKER_OPEN_MS  30000

typedef struct router router;
typedef struct router_job router_job;

typedef enum router_source {
	ROUTER_SOURCE_LOCAL = 0,
	ROUTER_SOURCE_PEER = 1,
	ROUTER_SOURCE_CACHE = 2,
	ROUTER_SOURCE_TEMPLATE = 3,
} router_source;

typedef struct router_options {
	local_backend *lb;   /* may be NULL: no local backend */
	peer_table *ptable;  /* may be NULL: no mesh */
	peer_client *pc;     /* with ptable */
	trust_store *trust;  /* with ptable: the peers' X25519 keys */
	const char *thermal_sysfs_root; /* copied */
	double thermal_limit_c;
	unsigned request_timeout_ms; /* first chunk / between chunks, per hop */
	answer_cache *cache; /* steps 3 and 4; NULL: the chain ends after peers */
} router_options;

typedef struct router_callbacks {
	/* Once, before the first chunk: where the answer comes from
	 * (peer_name NULL unless ROUTER_SOURCE_PEER). */
	void (*on_source)(void *ud, router_source source, const char *peer_name);
	/* One NDJSON object of the answer (Ollama's shape, no newline). */
	void (*on_chunk)(void *ud, const char *json, size_t len, int done);
	/*
	 * Exactly once, last (unless cancelled).  code 0 or negative errno;
	 * http_status is what to answer when on_source was never called
	 * (400 bad request, 404 unknown model everywhere, 503 nothing could
	 * answer, 504 timed out, 502 otherwise); message one line.
	 */
	void (*on_done)(void *ud, int code, int http_status, const char *message);
} router_callbacks;

typedef struct router_stats {
	uint64_t answered[4]; /* by router_source */
	uint64_t failed;      /* ended without an answer, or broken mid-way */
	uint64_t fallbacks;   /* hops left for the next step */
	uint32_t in_flight;
} router_stats;

int router_new(uv_loop_t *loop, const router_options *opts, router **out);
/* Cancels open jobs (no callbacks); NULL is a no-op. */
void router_free(router *r);
/* SIGHUP-able settings. */
void router_set_timeout(router *r, unsigned request_timeout_ms);
void router_set_thermal(router *r, const char *sysfs_root, double limit_c);

/*
 * Route `req` (copied; the caller may clear it after this returns).
 * Callbacks never run inside this call.  NULL only on out-of-memory.
 */
router_job *router_submit(router *r, const infer_request *req, const router_callbacks *cbs,
                          void *ud);
/* The client went away: cancel upstream; no callback follows. */
void router_cancel(router_job *job);

void router_get_stats(const router *r, router_stats *out);
/* {"answered":{"local":n,"peer":n,"cache":n,"template":n},"failed":n,
 *  "fallbacks":n,"in_flight":n,"breakers":[{"fingerprint","open"}...]} */
json_t *router_stats_json(const router *r);
const char *router_source_name(router_source s);

#endif

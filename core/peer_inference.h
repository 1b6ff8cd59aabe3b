/*
 * The peer hop of mesh inference: POST /peer/v1/infer on the peer port
 * (mutual TLS, paired peers only), its payload sealed end to end with
 * HPKE to the serving peer's X25519 key (sealed_message.h, media
 * SEALED_MEDIA_SOVMESH, key id PEER_INFER_KEY_ID, AEAD
 * ChaCha20-Poly1305), the answer streamed back as sealed chunks.
 *
 *   request   Content-Type: message/sovmesh-request
 *             body = sealed request of infer_peer_payload() (infer_request.h)
 *   answer    200, Content-Type: message/sovmesh-chunked-response
 *             body = response nonce, then one sealed frame per NDJSON
 *             object of the backend's answer (Ollama's chat/generate
 *             chunk shapes), in order; the frame flagged final carries
 *             the trailer {"done_status":"ok"} or
 *             {"done_status":"error","error":"..."} (an error after some
 *             chunks).  A cut or reordered stream fails authentication.
 *   refusals  answered before any work, plain JSON {"error": ...}:
 *             503 busy   (peer slots full, local slots full, or hot)
 *             403        serve_inference is off
 *             400        not a sealed request / malformed payload
 *             409        replayed request;  421 sealed to another key
 *             404        the backend does not have the model (known
 *                        before the first chunk)
 *             502        the backend failed before answering
 *
 * The serving side answers ONLY from its local backend
 * (local_backend_generate with LOCAL_ORIGIN_PEER); it never calls the
 * router, so a peer request is never forwarded again.
 *
 * Threading: the loop's thread only.
 */
#ifndef SOVMESH_CORE_PEER_INFERENCE_H
#define SOVMESH_CORE_PEER_INFERENCE_H

#include <stdint.h>
#include <sovmesh/plugin.h>

#include "identity.h"
#include "infer_request.h"
#include "local_backend.h"
#include "peer_client.h"
#include "peer_transport.h"

#define PEER_INFER_PATH   "/peer/v1/infer"
#define PEER_INFER_KEY_ID 1
#define PEER_INFER_MEDIA_REQUEST  "message/sovmesh-request"
#define PEER_INFER_MEDIA_RESPONSE "message/sovmesh-chunked-response"
/* Largest sealed request accepted (payload text limit + sealing). */
#define PEER_INFER_MAX_REQUEST (INFER_TEXT_MAX + 4096)

/* ---- asking side ---- */

typedef struct peer_infer_call peer_infer_call;

typedef struct peer_infer_target {
	const char *fingerprint_hex; /* pinned */
	const char *host;            /* numeric address */
	int port;
	const uint8_t *x25519_public; /* 32 bytes, from the trust store */
} peer_infer_target;

typedef struct peer_infer_callbacks {
	/* One opened NDJSON object of the answer; done = its "done" is true. */
	void (*on_chunk)(void *ud, const char *json, size_t len, int done);
	/*
	 * Exactly once, last (unless cancelled).  code 0, or
	 *   -EBUSY (503), -EPERM (403, or the peer is no longer trusted),
	 *   -ENOENT (404), -EALREADY (409), -ECONNREFUSED, -ETIMEDOUT,
	 *   -EPROTO (error trailer, or a stream cut / not authentic),
	 *   -EIO (400, 421, 502, any other status, or closed before a status).
	 * `message` one line for the log, valid during the call.
	 */
	void (*on_done)(void *ud, int code, const char *message);
} peer_infer_callbacks;

/*
 * Seal infer_peer_payload(req) to `t` and send it through `pc`.
 * `timeout_ms` bounds the whole call (0: one hour; the router applies
 * its own first-chunk and idle limits).  `t`, `req` are copied/used
 * during the call only.  NULL with `err` filled when nothing was sent
 * (-ENOENT: the request has no user text; -EINVAL; -EPERM not trusted;
 * -ENOMEM); no callback follows then.
 */
peer_infer_call *peer_infer_start(peer_client *pc, const peer_infer_target *t,
                                  const infer_request *req, unsigned timeout_ms,
                                  const peer_infer_callbacks *cbs, void *ud, sovmesh_error *err);
/* Cancel (no callback follows); NULL is a no-op.  Allowed inside the
 * call's callbacks.  Cancel or finish every call before
 * peer_client_free(). */
void peer_infer_cancel(peer_infer_call *call);

/* ---- serving side ---- */

typedef struct peer_infer_server peer_infer_server;

typedef struct peer_infer_server_options {
	const identity *id; /* gateway key = id->x25519_private; not owned */
	local_backend *lb;  /* not owned */
	int serve_inference;
	uint32_t max_concurrent; /* mesh.max_concurrent_peer_requests; 0 refuses all */
	/* Is this node hot now?  May be NULL (never). */
	int (*is_hot)(void *ud);
	void *ud;
} peer_infer_server_options;

typedef struct peer_infer_server_stats {
	uint64_t served;          /* answered to the end */
	uint64_t failed;          /* backend failed */
	uint64_t refused_busy;    /* 503 */
	uint64_t refused_off;     /* 403 */
	uint64_t refused_invalid; /* 400 / 409 / 421 */
	uint32_t active;          /* open now */
} peer_infer_server_stats;

/* Register POST PEER_INFER_PATH on `pt`.  `opts` copied.  Free with
 * peer_infer_server_free() AFTER peer_transport_close().  0, -EEXIST,
 * -ENOMEM. */
int peer_infer_server_register(peer_transport *pt, const peer_infer_server_options *opts,
                               peer_infer_server **out);
/* SIGHUP: new limits apply to requests that arrive afterwards. */
void peer_infer_server_set_limits(peer_infer_server *s, int serve_inference,
                                  uint32_t max_concurrent);
/* Would a request arriving now be admitted?  (For health answers.) */
int peer_infer_server_accepting(const peer_infer_server *s);
void peer_infer_server_get_stats(const peer_infer_server *s, peer_infer_server_stats *out);
/* Cancels open backend calls (no answer is sent); NULL is a no-op. */
void peer_infer_server_free(peer_infer_server *s);

#endif

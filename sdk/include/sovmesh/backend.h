/* SPDX-License-Identifier: MIT */
/*
 * sovmesh plugin SDK — inference backends (kind SOVMESH_KIND_BACKEND,
 * files backend-<name>.so).  A backend lists models, chats/generates with
 * streaming, embeds, and applies LoRA adapters.
 *
 * Requests and streamed chunks use Ollama's JSON shapes (the front door is
 * Ollama-compatible), so the Ollama backend passes them through; a
 * backend for another engine translates.  All calls are asynchronous on
 * the loop thread: a slot starts the work and returns a call handle; the
 * callback fires exactly once at the end (chunks before it), unless the
 * call was cancelled, after which nothing fires.  Callbacks never run
 * inside the slot that started the call (even an immediate failure is
 * reported on a later loop turn), so the caller may keep the handle.
 */
#ifndef SOVMESH_BACKEND_H
#define SOVMESH_BACKEND_H

#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sovmesh_backend_call sovmesh_backend_call; /* plugin-owned */

/*
 * How a call ended.  code: 0, or
 *   -EBUSY        the engine is saturated (Ollama: HTTP 503)
 *   -ECONNREFUSED the engine is not running
 *   -ETIMEDOUT    timeout_ms passed
 *   -ENOENT       unknown model (Ollama: 404)
 *   -EPROTO       the engine failed mid-way (an {"error":...} line)
 *   -EINVAL       the engine refused the request (HTTP 400)
 *   -EIO          anything else
 * `message` is one line for the log and the client, owned by the plugin,
 * valid during the callback only.
 */
typedef struct sovmesh_backend_status {
	uint32_t size;
	int code;
	long http_status; /* the engine's HTTP status if any, else 0 */
	const char *message;
} sovmesh_backend_status;

typedef enum sovmesh_gen_kind {
	SOVMESH_GEN_CHAT = 1,     /* Ollama /api/chat */
	SOVMESH_GEN_GENERATE = 2, /* Ollama /api/generate */
} sovmesh_gen_kind;

typedef struct sovmesh_gen_request {
	uint32_t size; /* sizeof(sovmesh_gen_request) */
	sovmesh_gen_kind kind;
	const char *model;
	const char *body_json; /* the whole request body, Ollama shape */
	size_t body_len;
	int stream;          /* 1: chunks as they come; 0: one chunk */
	uint32_t timeout_ms; /* whole call; 0 = none */
} sovmesh_gen_request;

/* One streamed piece: one NDJSON object of Ollama's stream. */
typedef struct sovmesh_gen_chunk {
	uint32_t size;
	const char *json; /* the object's JSON text, no newline */
	size_t json_len;
	int done; /* 1 on the final object ("done": true) */
} sovmesh_gen_chunk;

typedef struct sovmesh_gen_callbacks {
	uint32_t size;
	void (*on_chunk)(void *ud, const sovmesh_gen_chunk *chunk);
	void (*on_done)(void *ud, const sovmesh_backend_status *status);
} sovmesh_gen_callbacks;

/* Done callback of calls that return one JSON document (tags, ps, show,
 * version, create). `json` is owned by the plugin, valid during the call. */
typedef void (*sovmesh_backend_json_cb)(void *ud, const sovmesh_backend_status *status,
                                        const char *json, size_t len);

/* Done callback of embed: n vectors of dim floats, row-major, owned by the
 * plugin and valid during the call. */
typedef void (*sovmesh_backend_embed_cb)(void *ud, const sovmesh_backend_status *status,
                                         const float *vectors, size_t n, size_t dim);

typedef struct sovmesh_adapter_apply {
	uint32_t size;
	const char *base_model;   /* model the adapter was trained for */
	const char *adapter_dir;  /* PEFT adapter directory */
	const char *target_model; /* name to publish it under */
} sovmesh_adapter_apply;

typedef struct sovmesh_backend_ops {
	uint32_t size; /* sizeof(sovmesh_backend_ops) as built */

	/* Models available locally, as Ollama's /api/tags JSON. */
	sovmesh_backend_call *(*list_models)(void *instance, sovmesh_backend_json_cb cb, void *ud);
	/* Chat or generate; streamed when req->stream. */
	sovmesh_backend_call *(*generate)(void *instance, const sovmesh_gen_request *req,
	                                  const sovmesh_gen_callbacks *cbs, void *ud);
	/* Embed n texts with `model`. */
	sovmesh_backend_call *(*embed)(void *instance, const char *model, const char *const *texts,
	                               size_t n, uint32_t timeout_ms, sovmesh_backend_embed_cb cb,
	                               void *ud);
	/* Publish base model + adapter as target_model (Ollama /api/create). */
	sovmesh_backend_call *(*apply_adapter)(void *instance, const sovmesh_adapter_apply *req,
	                                       sovmesh_backend_json_cb cb, void *ud);
	/* Cancel a call that has not ended; no callback follows. */
	void (*cancel)(void *instance, sovmesh_backend_call *call);
	/*
	 * Optional (may be NULL): an informational request in Ollama's shape
	 * for "ps", "show" and "version", `body_json` may be NULL.  Returns
	 * NULL with the callback not called for an unknown `what`.
	 */
	sovmesh_backend_call *(*info)(void *instance, const char *what, const char *body_json,
	                              sovmesh_backend_json_cb cb, void *ud);
	/* Parallel request slots the engine serves at once (Ollama:
	 * OLLAMA_NUM_PARALLEL); the router counts the backend busy when its
	 * in-flight calls fill them.  May be NULL (then 1). */
	uint32_t (*parallel_slots)(void *instance);
} sovmesh_backend_ops;

#ifdef __cplusplus
}
#endif
#endif

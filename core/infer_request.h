/*
 * Inference requests as the front door receives them (Ollama's /api/chat
 * and /api/generate bodies), checked once here so the router, the local
 * backend and the peer hop all see a validated request; and the two
 * conversions of the peer hop that make minimal disclosure (DESIGN.md
 * §6.5) a property of one small function each:
 *
 *   infer_peer_payload()     request -> what leaves the device:
 *                            {"v":1,"kind":"chat"|"generate","model":M,
 *                             "text":T,"stream":bool}
 *                            T = the content of the LAST message whose role
 *                            is "user" (chat) or the prompt (generate).
 *                            Nothing else: no history, system prompt,
 *                            options, images, format, context, template.
 *   infer_backend_body()     a received payload -> the body the serving
 *                            peer hands its own backend:
 *                            chat:     {"model":M,"messages":[{"role":"user",
 *                                       "content":T}],"stream":S}
 *                            generate: {"model":M,"prompt":T,"stream":S}
 *
 * Validation (infer_request_parse) follows what Ollama accepts: the body
 * is a JSON object; "model" a non-empty string of at most
 * INFER_MODEL_MAX bytes without control characters; chat: "messages" an
 * array (may be empty: Ollama then just loads the model) of objects with
 * a string "role" among system/user/assistant/tool, an optional string
 * "content", optional "images" (array of strings), optional
 * "tool_calls" (array); generate: optional string "prompt", "suffix",
 * "system", "template", optional "images", optional bool "raw", optional
 * "context" (array of integers).  Both: optional bool "stream" (default
 * true), "options" (object), "format" (string or object), "keep_alive"
 * (string or number), "think" (bool or string), "tools" (array).  Other
 * fields are passed to the local backend untouched, as Ollama ignores
 * what it does not know.  Every refusal is one line naming the field.
 *
 * Threading: none (pure functions).
 */
#ifndef SOVMESH_CORE_INFER_REQUEST_H
#define SOVMESH_CORE_INFER_REQUEST_H

#include <jansson.h>
#include <stddef.h>
#include <sovmesh/backend.h>
#include <sovmesh/plugin.h>

#define INFER_MODEL_MAX 256
#define INFER_PAYLOAD_VERSION 1
/* Upper bound of the text a peer payload may carry (bytes). */
#define INFER_TEXT_MAX (256u * 1024u)

typedef struct infer_request {
	sovmesh_gen_kind kind;
	char *model;          /* owned */
	json_t *body;         /* owned: the whole validated body */
	int stream;           /* "stream", default 1 */
	/* The last user message (chat) or the prompt (generate); borrowed
	 * from `body`; NULL when there is none (then no peer can answer). */
	const char *last_user_text;
	int has_images; /* any "images" present and non-empty */
} infer_request;

/*
 * Parse and check `body` (len bytes, need not be NUL-terminated) as a
 * `kind` request.  0, or -EINVAL with one line in `err` ("messages[2].role
 * must be one of system, user, assistant, tool"); -ENOMEM.  On success
 * *out is to be released with infer_request_clear().
 */
int infer_request_parse(sovmesh_gen_kind kind, const char *body, size_t len, infer_request *out,
                        sovmesh_error *err);

/* A request made from parts (the `sovmesh ask` path): a one-message chat
 * (or a generate with that prompt).  0, -EINVAL (empty model, text too
 * long), -ENOMEM. */
int infer_request_from_text(sovmesh_gen_kind kind, const char *model, const char *text, int stream,
                            infer_request *out, sovmesh_error *err);

void infer_request_clear(infer_request *r);

/* The body for the local backend, compact JSON (malloc'd; NULL on ENOMEM). */
char *infer_request_body_text(const infer_request *r, size_t *len);

/*
 * The peer payload for `r` (see the top of this file), compact JSON,
 * malloc'd.  -ENOENT when the request has no user text (nothing a peer
 * could answer), -EMSGSIZE above INFER_TEXT_MAX, -ENOMEM.
 */
int infer_peer_payload(const infer_request *r, char **out, size_t *out_len);

/*
 * The serving side: check a received payload (untrusted: any bytes) and
 * turn it into the request for the local backend.  Refuses with -EINVAL
 * and one line in `err` anything but exactly the fields above with the
 * right types (unknown fields included: the sender is ours and sends
 * nothing else), a version other than INFER_PAYLOAD_VERSION, an invalid
 * model name, text over INFER_TEXT_MAX.  On success *out is a request
 * whose body is the one infer_backend_body() describes.
 */
int infer_request_from_peer_payload(const void *payload, size_t len, infer_request *out,
                                    sovmesh_error *err);

/* "chat" / "generate" (also used in log lines and payloads). */
const char *infer_kind_name(sovmesh_gen_kind kind);

#endif

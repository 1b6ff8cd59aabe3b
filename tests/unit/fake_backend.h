/*
 * A scriptable in-process backend (sovmesh_backend_ops) for tests of the
 * router and the local backend wrapper: answers on uv timers, so
 * callbacks never run inside the call, and records what it was asked.
 */
#ifndef SOVMESH_TEST_FAKE_BACKEND_H
#define SOVMESH_TEST_FAKE_BACKEND_H

#include <sovmesh/backend.h>
#include <uv.h>

typedef struct fake_backend {
	uv_loop_t *loop;
	/* Script for the next generate calls. */
	unsigned chunks;       /* NDJSON objects to stream (>= 1) */
	unsigned delay_ms;     /* before the first chunk, and between chunks */
	int fail_code;         /* != 0: end with this before any chunk */
	int fail_after_chunks; /* > 0: end with -EPROTO after this many chunks */
	int hang;              /* never answer */
	uint32_t slots;        /* parallel_slots(); 0 -> 1 */
	const char *models_json; /* list_models answer; NULL -> one model "m1" */
	int embed_fail;          /* != 0: embed ends with this */
	/* Records. */
	unsigned generate_calls, cancels, list_calls, open, embed_calls;
	char last_embed_model[64], last_embed_text[256];
	char last_body[4096];
} fake_backend;

extern const sovmesh_backend_ops fake_backend_ops;

/* Reset the script and records; `loop` is where timers run. */
void fake_backend_init(fake_backend *fb, uv_loop_t *loop);

#endif

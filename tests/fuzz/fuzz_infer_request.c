/* libFuzzer target: the front door's request check (as chat and as
 * generate) and the serving side's peer payload check on arbitrary bytes.
 * Anything may be refused (with one non-empty line); an accepted request
 * must dump a body that is accepted again with the same text, and its
 * peer payload must be accepted by the serving side with the same kind,
 * model, text and stream flag. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "infer_request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_error(const sovmesh_error *err, const infer_request *r)
{
	if (!err->message[0] || strchr(err->message, '\n') || r->body || r->model ||
	    r->last_user_text)
		abort();
}

static int same_text(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* The serving side's view of `r`'s payload matches `r`. */
static void check_payload(const infer_request *r)
{
	char *p = NULL;
	size_t len = 0;
	int rc = infer_peer_payload(r, &p, &len);
	if (rc == -ENOENT) {
		if (r->last_user_text || p)
			abort();
		return;
	}
	if (rc == -EMSGSIZE) {
		if (!r->last_user_text || strlen(r->last_user_text) <= INFER_TEXT_MAX || p)
			abort();
		return;
	}
	if (rc == -ENOMEM)
		return;
	if (rc != 0 || !p || len != strlen(p))
		abort();
	infer_request back;
	sovmesh_error err = {0};
	if (infer_request_from_peer_payload(p, len, &back, &err) != 0)
		abort();
	if (back.kind != r->kind || strcmp(back.model, r->model) != 0 ||
	    !same_text(back.last_user_text, r->last_user_text) || back.stream != r->stream ||
	    back.has_images)
		abort();
	/* the rebuilt request yields the very same payload */
	char *p2 = NULL;
	size_t len2 = 0;
	if (infer_peer_payload(&back, &p2, &len2) != 0 || len2 != len || memcmp(p, p2, len) != 0)
		abort();
	free(p2);
	infer_request_clear(&back);
	free(p);
}

static void one_kind(sovmesh_gen_kind kind, const uint8_t *data, size_t size)
{
	infer_request r;
	sovmesh_error err = {0};
	int rc = infer_request_parse(kind, (const char *)data, size, &r, &err);
	if (rc == -ENOMEM)
		return;
	if (rc != 0) {
		if (rc != -EINVAL)
			abort();
		check_error(&err, &r);
		return;
	}
	if (r.kind != kind || !r.model || !r.body || (r.stream != 0 && r.stream != 1))
		abort();
	size_t len = 0;
	char *text = infer_request_body_text(&r, &len);
	if (text) {
		infer_request again;
		if (len != strlen(text) ||
		    infer_request_parse(kind, text, len, &again, &err) != 0 ||
		    strcmp(again.model, r.model) != 0 ||
		    !same_text(again.last_user_text, r.last_user_text) ||
		    again.stream != r.stream || again.has_images != r.has_images)
			abort();
		infer_request_clear(&again);
		free(text);
	}
	check_payload(&r);
	infer_request_clear(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	one_kind(SOVMESH_GEN_CHAT, data, size);
	one_kind(SOVMESH_GEN_GENERATE, data, size);

	infer_request r;
	sovmesh_error err = {0};
	int rc = infer_request_from_peer_payload(data, size, &r, &err);
	if (rc == 0) {
		if (!r.model || !r.body || !r.last_user_text ||
		    strlen(r.last_user_text) > INFER_TEXT_MAX)
			abort();
		check_payload(&r);
		char *text = infer_request_body_text(&r, NULL);
		free(text);
		infer_request_clear(&r);
	} else if (rc == -EINVAL) {
		check_error(&err, &r);
	} else if (rc != -ENOMEM) {
		abort();
	}
	return 0;
}

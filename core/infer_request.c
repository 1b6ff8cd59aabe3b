/* Ollama chat/generate requests and the peer payload (see infer_request.h). */
#include "infer_request.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Largest peer payload worth parsing: every byte of text and model
 * escaped as \uXXXX, plus the fixed fields. */
#define PAYLOAD_MAX (6u * (INFER_TEXT_MAX + INFER_MODEL_MAX) + 256u)

static const char *const roles[] = {"system", "user", "assistant", "tool", NULL};

const char *infer_kind_name(sovmesh_gen_kind kind)
{
	switch (kind) {
	case SOVMESH_GEN_CHAT:
		return "chat";
	case SOVMESH_GEN_GENERATE:
		return "generate";
	}
	return "unknown";
}

static int kind_ok(sovmesh_gen_kind kind)
{
	return kind == SOVMESH_GEN_CHAT || kind == SOVMESH_GEN_GENERATE;
}

void infer_request_clear(infer_request *r)
{
	if (!r)
		return;
	free(r->model);
	json_decref(r->body);
	memset(r, 0, sizeof(*r));
}

/* Strict UTF-8 (no overlong forms, surrogates or code points above
 * U+10FFFF), the same rule jansson applies to what it parses. */
static int utf8_valid(const unsigned char *s, size_t len)
{
	size_t i = 0;
	while (i < len) {
		unsigned c = s[i];
		size_t n;
		uint32_t cp;
		if (c < 0x80) {
			i++;
			continue;
		} else if (c >= 0xc2 && c <= 0xdf) {
			n = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			n = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			n = 3;
			cp = c & 0x07;
		} else {
			return 0;
		}
		if (len - i - 1 < n)
			return 0;
		for (size_t k = 1; k <= n; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return 0;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += n + 1;
	}
	return 1;
}

/* A model name: 1..INFER_MODEL_MAX bytes of UTF-8 without control
 * characters (C0, DEL, C1) or spaces; it ends up in logs and URLs. */
static int check_model(const char *what, const char *m, size_t len, sovmesh_error *err)
{
	if (len == 0)
		return sovmesh_fail(err, -EINVAL, "%s must not be empty", what);
	if (len > INFER_MODEL_MAX)
		return sovmesh_fail(err, -EINVAL, "%s is too long (%zu bytes, at most %d)", what,
		                    len, INFER_MODEL_MAX);
	const unsigned char *s = (const unsigned char *)m;
	if (!utf8_valid(s, len))
		return sovmesh_fail(err, -EINVAL, "%s is not valid UTF-8", what);
	for (size_t i = 0; i < len; i++) {
		if (s[i] < 0x20 || s[i] == 0x7f || s[i] == ' ' ||
		    (s[i] == 0xc2 && i + 1 < len && s[i + 1] >= 0x80 && s[i + 1] <= 0x9f))
			return sovmesh_fail(err, -EINVAL,
			                    "%s must not contain control characters or whitespace",
			                    what);
	}
	return 0;
}

/* JSON null counts as absent, as it does for Ollama (Go's decoder). */
static json_t *opt(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	return json_is_null(v) ? NULL : v;
}

static int check_string_array(const char *what, json_t *v, int *nonempty, sovmesh_error *err)
{
	size_t i;
	json_t *e;
	if (!json_is_array(v))
		return sovmesh_fail(err, -EINVAL, "%s must be an array of strings", what);
	json_array_foreach(v, i, e)
	{
		if (!json_is_string(e))
			return sovmesh_fail(err, -EINVAL, "%s[%zu] must be a string", what, i);
	}
	if (nonempty && json_array_size(v) > 0)
		*nonempty = 1;
	return 0;
}

/* The fields chat and generate share. */
static int check_common(json_t *o, infer_request *r, sovmesh_error *err)
{
	json_t *v;
	if ((v = opt(o, "stream"))) {
		if (!json_is_boolean(v))
			return sovmesh_fail(err, -EINVAL, "stream must be true or false");
		r->stream = json_is_true(v);
	}
	if ((v = opt(o, "options")) && !json_is_object(v))
		return sovmesh_fail(err, -EINVAL, "options must be an object");
	if ((v = opt(o, "format")) && !json_is_string(v) && !json_is_object(v))
		return sovmesh_fail(err, -EINVAL, "format must be a string or an object");
	if ((v = opt(o, "keep_alive")) && !json_is_string(v) && !json_is_number(v))
		return sovmesh_fail(err, -EINVAL, "keep_alive must be a string or a number");
	if ((v = opt(o, "think")) && !json_is_boolean(v) && !json_is_string(v))
		return sovmesh_fail(err, -EINVAL, "think must be true, false or a string");
	if ((v = opt(o, "tools")) && !json_is_array(v))
		return sovmesh_fail(err, -EINVAL, "tools must be an array");
	return 0;
}

static int check_chat(json_t *o, infer_request *r, sovmesh_error *err)
{
	json_t *msgs = opt(o, "messages"), *m, *v;
	size_t i;
	int rc;
	if (!msgs)
		return 0; /* Ollama then just loads the model */
	if (!json_is_array(msgs))
		return sovmesh_fail(err, -EINVAL, "messages must be an array");
	json_array_foreach(msgs, i, m)
	{
		if (!json_is_object(m))
			return sovmesh_fail(err, -EINVAL, "messages[%zu] must be an object", i);
		v = json_object_get(m, "role");
		const char *role = json_string_value(v);
		size_t k = 0;
		while (role && roles[k] && strcmp(role, roles[k]) != 0)
			k++;
		if (!role || !roles[k])
			return sovmesh_fail(err, -EINVAL,
			                    "messages[%zu].role must be one of system, user, "
			                    "assistant, tool",
			                    i);
		json_t *content = opt(m, "content");
		if (content && !json_is_string(content))
			return sovmesh_fail(err, -EINVAL, "messages[%zu].content must be a string",
			                    i);
		if ((v = opt(m, "images"))) {
			char what[48];
			snprintf(what, sizeof(what), "messages[%zu].images", i);
			if ((rc = check_string_array(what, v, &r->has_images, err)) < 0)
				return rc;
		}
		if ((v = opt(m, "tool_calls")) && !json_is_array(v))
			return sovmesh_fail(err, -EINVAL,
			                    "messages[%zu].tool_calls must be an array", i);
		/* Only the last user message counts: an empty or missing
		 * content there means no text, never an older message. */
		if (strcmp(role, "user") == 0)
			r->last_user_text = content && json_string_length(content) > 0
			                        ? json_string_value(content)
			                        : NULL;
	}
	return 0;
}

static int check_generate(json_t *o, infer_request *r, sovmesh_error *err)
{
	static const char *const strings[] = {"prompt", "suffix", "system", "template", NULL};
	json_t *v, *e;
	size_t i;
	int rc;
	for (i = 0; strings[i]; i++)
		if ((v = opt(o, strings[i])) && !json_is_string(v))
			return sovmesh_fail(err, -EINVAL, "%s must be a string", strings[i]);
	if ((v = opt(o, "images")) &&
	    (rc = check_string_array("images", v, &r->has_images, err)) < 0)
		return rc;
	if ((v = opt(o, "raw")) && !json_is_boolean(v))
		return sovmesh_fail(err, -EINVAL, "raw must be true or false");
	if ((v = opt(o, "context"))) {
		if (!json_is_array(v))
			return sovmesh_fail(err, -EINVAL, "context must be an array of integers");
		json_array_foreach(v, i, e)
		{
			if (!json_is_integer(e))
				return sovmesh_fail(err, -EINVAL, "context[%zu] must be an integer",
				                    i);
		}
	}
	if ((v = opt(o, "prompt")) && json_string_length(v) > 0)
		r->last_user_text = json_string_value(v);
	return 0;
}

int infer_request_parse(sovmesh_gen_kind kind, const char *body, size_t len, infer_request *out,
                        sovmesh_error *err)
{
	json_error_t jerr;
	json_t *o, *m;
	int rc;
	memset(out, 0, sizeof(*out));
	if (!kind_ok(kind))
		return sovmesh_fail(err, -EINVAL, "unknown request kind %d", (int)kind);
	/* jansson refuses NUL bytes in strings and "\u0000" (no
	 * JSON_ALLOW_NUL), so every string below is a proper C string. */
	o = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
	if (!o) {
		if (json_error_code(&jerr) == json_error_out_of_memory)
			return sovmesh_fail(err, -ENOMEM, "body: out of memory");
		rc = sovmesh_fail(err, -EINVAL, "body is not valid JSON: %s at line %d column %d",
		                  jerr.text, jerr.line, jerr.column);
		if (err)
			log_one_line(err->message); /* jansson quotes the input */
		return rc;
	}
	out->kind = kind;
	out->body = o;
	out->stream = 1;
	if (!json_is_object(o)) {
		rc = sovmesh_fail(err, -EINVAL, "body must be a JSON object");
		goto fail;
	}
	if (!(m = opt(o, "model"))) {
		rc = sovmesh_fail(err, -EINVAL, "model is required");
		goto fail;
	}
	if (!json_is_string(m)) {
		rc = sovmesh_fail(err, -EINVAL, "model must be a string");
		goto fail;
	}
	if ((rc = check_model("model", json_string_value(m), json_string_length(m), err)) < 0)
		goto fail;
	if ((rc = check_common(o, out, err)) < 0)
		goto fail;
	rc = kind == SOVMESH_GEN_CHAT ? check_chat(o, out, err) : check_generate(o, out, err);
	if (rc < 0)
		goto fail;
	if (!(out->model = strdup(json_string_value(m)))) {
		rc = sovmesh_fail(err, -ENOMEM, "body: out of memory");
		goto fail;
	}
	return 0;
fail:
	infer_request_clear(out);
	return rc;
}

/* The one-message request both infer_request_from_text() and the serving
 * side of the peer hop build; model and text are already checked. */
static int build_simple(sovmesh_gen_kind kind, const char *model, const char *text, int stream,
                        infer_request *out, sovmesh_error *err)
{
	json_t *o, *t;
	memset(out, 0, sizeof(*out));
	if (kind == SOVMESH_GEN_CHAT)
		o = json_pack("{s:s, s:[{s:s, s:s}], s:b}", "model", model, "messages", "role",
		              "user", "content", text, "stream", stream);
	else
		o = json_pack("{s:s, s:s, s:b}", "model", model, "prompt", text, "stream", stream);
	if (!o || !(out->model = strdup(model))) {
		json_decref(o);
		return sovmesh_fail(err, -ENOMEM, "%s request: out of memory",
		                    infer_kind_name(kind));
	}
	if (kind == SOVMESH_GEN_CHAT)
		t = json_object_get(json_array_get(json_object_get(o, "messages"), 0), "content");
	else
		t = json_object_get(o, "prompt");
	out->kind = kind;
	out->body = o;
	out->stream = !!stream;
	out->last_user_text = json_string_length(t) > 0 ? json_string_value(t) : NULL;
	return 0;
}

int infer_request_from_text(sovmesh_gen_kind kind, const char *model, const char *text, int stream,
                            infer_request *out, sovmesh_error *err)
{
	int rc;
	memset(out, 0, sizeof(*out));
	if (!kind_ok(kind))
		return sovmesh_fail(err, -EINVAL, "unknown request kind %d", (int)kind);
	if (!model || !*model)
		return sovmesh_fail(err, -EINVAL, "model is required");
	if ((rc = check_model("model", model, strlen(model), err)) < 0)
		return rc;
	if (!text)
		return sovmesh_fail(err, -EINVAL, "text is required");
	size_t len = strlen(text);
	if (len > INFER_TEXT_MAX)
		return sovmesh_fail(err, -EINVAL, "text is too long (%zu bytes, at most %u)", len,
		                    INFER_TEXT_MAX);
	if (!utf8_valid((const unsigned char *)text, len))
		return sovmesh_fail(err, -EINVAL, "text is not valid UTF-8");
	return build_simple(kind, model, text, stream, out, err);
}

char *infer_request_body_text(const infer_request *r, size_t *len)
{
	char *s = r->body ? json_dumps(r->body, JSON_COMPACT) : NULL;
	if (len)
		*len = s ? strlen(s) : 0;
	return s;
}

int infer_peer_payload(const infer_request *r, char **out, size_t *out_len)
{
	*out = NULL;
	if (out_len)
		*out_len = 0;
	if (!kind_ok(r->kind) || !r->model)
		return -EINVAL;
	if (!r->last_user_text || !*r->last_user_text)
		return -ENOENT;
	if (strlen(r->last_user_text) > INFER_TEXT_MAX)
		return -EMSGSIZE;
	/* The only place request content is put on the wire: keep it to
	 * these five fields (DESIGN.md §6.5). */
	json_t *o = json_pack("{s:i, s:s, s:s, s:s, s:b}", "v", INFER_PAYLOAD_VERSION, "kind",
	                      infer_kind_name(r->kind), "model", r->model, "text",
	                      r->last_user_text, "stream", r->stream);
	if (!o)
		return -ENOMEM;
	char *s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	if (!s)
		return -ENOMEM;
	*out = s;
	if (out_len)
		*out_len = strlen(s);
	return 0;
}

static json_t *need(json_t *o, const char *key, int ok, const char *tname, sovmesh_error *err)
{
	json_t *v = json_object_get(o, key);
	if (!v)
		sovmesh_fail(err, -EINVAL, "peer payload: field \"%s\" is missing", key);
	else if (!ok)
		sovmesh_fail(err, -EINVAL, "peer payload: field \"%s\" must be %s", key, tname);
	return v && ok ? v : NULL;
}

int infer_request_from_peer_payload(const void *payload, size_t len, infer_request *out,
                                    sovmesh_error *err)
{
	static const char *const keys[] = {"v", "kind", "model", "text", "stream", NULL};
	json_error_t jerr;
	json_t *o, *v, *kind_v, *model_v, *text_v, *stream_v;
	sovmesh_gen_kind kind;
	const char *key;
	int rc = -EINVAL;
	memset(out, 0, sizeof(*out));
	if (len > PAYLOAD_MAX)
		return sovmesh_fail(err, -EINVAL, "peer payload is %zu bytes long, at most %u", len,
		                    PAYLOAD_MAX);
	o = json_loadb(payload, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
	if (!o) {
		if (json_error_code(&jerr) == json_error_out_of_memory)
			return sovmesh_fail(err, -ENOMEM, "peer payload: out of memory");
		rc = sovmesh_fail(err, -EINVAL,
		                  "peer payload is not valid JSON: %s at line %d column %d",
		                  jerr.text, jerr.line, jerr.column);
		if (err)
			log_one_line(err->message);
		return rc;
	}
	if (!json_is_object(o)) {
		sovmesh_fail(err, -EINVAL, "peer payload must be a JSON object");
		goto out;
	}
	json_object_foreach(o, key, v)
	{
		size_t k = 0;
		while (keys[k] && strcmp(key, keys[k]) != 0)
			k++;
		if (!keys[k]) {
			sovmesh_fail(err, -EINVAL, "peer payload: unknown field \"%.32s\"", key);
			if (err)
				log_one_line(err->message);
			goto out;
		}
	}
	v = json_object_get(o, "v");
	if (!need(o, "v", json_is_integer(v), "an integer", err))
		goto out;
	if (json_integer_value(v) != INFER_PAYLOAD_VERSION) {
		sovmesh_fail(err, -EINVAL, "peer payload: version %lld is not supported (only %d)",
		             (long long)json_integer_value(v), INFER_PAYLOAD_VERSION);
		goto out;
	}
	kind_v = json_object_get(o, "kind");
	if (!need(o, "kind", json_is_string(kind_v), "a string", err))
		goto out;
	if (strcmp(json_string_value(kind_v), "chat") == 0) {
		kind = SOVMESH_GEN_CHAT;
	} else if (strcmp(json_string_value(kind_v), "generate") == 0) {
		kind = SOVMESH_GEN_GENERATE;
	} else {
		sovmesh_fail(err, -EINVAL, "peer payload: field \"kind\" must be chat or generate");
		goto out;
	}
	model_v = json_object_get(o, "model");
	if (!need(o, "model", json_is_string(model_v), "a string", err))
		goto out;
	if (check_model("peer payload: field \"model\"", json_string_value(model_v),
	                json_string_length(model_v), err) < 0)
		goto out;
	text_v = json_object_get(o, "text");
	if (!need(o, "text", json_is_string(text_v), "a string", err))
		goto out;
	/* The sender never sends an empty text (infer_peer_payload: -ENOENT). */
	if (json_string_length(text_v) == 0 || json_string_length(text_v) > INFER_TEXT_MAX) {
		sovmesh_fail(err, -EINVAL,
		             "peer payload: field \"text\" must be 1..%u bytes, got %zu",
		             INFER_TEXT_MAX, json_string_length(text_v));
		goto out;
	}
	stream_v = json_object_get(o, "stream");
	if (!need(o, "stream", json_is_boolean(stream_v), "true or false", err))
		goto out;
	rc = build_simple(kind, json_string_value(model_v), json_string_value(text_v),
	                  json_is_true(stream_v), out, err);
out:
	json_decref(o);
	return rc;
}

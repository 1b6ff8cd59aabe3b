/* SPDX-License-Identifier: MIT */
/*
 * backend-ollama: the local Ollama server through its HTTP API, over the
 * core's libcurl multi on the loop (host http_request), nothing blocking.
 *
 *   plugin_settings: { backend-ollama: { url = "http://127.0.0.1:11434";
 *                                         parallel = 1; connect_timeout_ms = 2000; }; };
 *
 * generate: POST /api/chat or /api/generate with the caller's body (its
 *   "stream" member set to req->stream when it says otherwise); each
 *   NDJSON object is relayed to on_chunk the moment its newline arrives.
 * list_models / info: GET /api/tags, GET /api/ps, GET /api/version,
 *   POST /api/show; the JSON is passed through untouched.
 * embed: POST /api/embed {"model","input":[...]}; when the endpoint itself
 *   is missing (an old Ollama answers 404 "404 page not found" in plain
 *   text, not a JSON error) the legacy POST /api/embeddings
 *   {"model","prompt"} is used one text at a time.
 * apply_adapter: the adapter directory's adapter_model.safetensors and
 *   adapter_config.json are uploaded as blobs (POST /api/blobs/sha256:HEX,
 *   skipped when HEAD says the blob is there), then POST /api/create
 *   {"model": target, "from": base, "adapters": {FILE: "sha256:HEX", ...},
 *   "stream": false}.  The files are read and hashed on the loop thread:
 *   LoRA adapters are a few MB and this happens once per FL round.
 *
 * Errors follow backend.h: 503 -> -EBUSY, 404 -> -ENOENT, 400 -> -EINVAL,
 * an {"error":...} object inside a 200 stream or an NDJSON line over
 * MAX_LINE -> -EPROTO, refused -> -ECONNREFUSED, timeout -> -ETIMEDOUT.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <nettle/sha2.h>

#include <sovmesh/backend.h>
#include <sovmesh/plugin.h>

#include "ndjson.h"

/* One NDJSON object of a stream; Ollama's are a few hundred bytes. */
#define MAX_LINE (1u << 20)
/* A whole JSON answer (tags, show with model_info, 1000 embeddings). */
#define MAX_DOC (64u << 20)
/* An adapter file we are willing to upload. */
#define MAX_ADAPTER_FILE (1024u << 20)

typedef enum call_kind {
	CALL_GEN = 1,
	CALL_JSON,
	CALL_EMBED,
	CALL_ADAPTER,
} call_kind;

typedef struct ollama ollama;

/* One adapter file to upload. */
typedef struct blob {
	const char *name;
	char *data;
	size_t len;
	char digest[7 + 64 + 1]; /* "sha256:" hex */
} blob;

struct sovmesh_backend_call {
	ollama *o;
	struct sovmesh_backend_call *prev, *next;
	call_kind kind;
	void *ud;
	sovmesh_http_call *http; /* in flight, or NULL */
	sovmesh_timer *defer;    /* pending deferred failure, or NULL */
	int in_cb;               /* inside one of the caller's callbacks */
	int cancelled;           /* cancel() ran inside a callback */

	long status;       /* HTTP status of the current request */
	ndjson_splitter nd; /* 200 stream of a generate */
	char *doc;          /* other bodies, accumulated */
	size_t doc_len, doc_cap;
	int fail_code; /* set by the body handler: the reason to stop */
	char msg[512];
	int saw_done;

	/* generate */
	sovmesh_gen_callbacks gcb;
	/* json */
	sovmesh_backend_json_cb jcb;
	/* embed */
	sovmesh_backend_embed_cb ecb;
	char *model;
	char **texts;
	size_t n_texts, next_text;
	float *vecs;
	size_t dim;
	int legacy;
	uint64_t deadline_ms; /* 0: none */
	/* adapter */
	char *base, *target;
	blob blobs[2];
	int step; /* adapter: 2*i = HEAD blob i, 2*i+1 = POST blob i, 4 = create */
};

struct ollama {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	char *url; /* without trailing '/' */
	uint32_t parallel;
	uint32_t connect_timeout_ms;
	sovmesh_backend_call *calls; /* every live call */
};

static const char *const json_headers[] = {"Content-Type: application/json", NULL};
static const char *const blob_headers[] = {"Content-Type: application/octet-stream", NULL};

static const sovmesh_setting_def ollama_settings[] = {
    {
        .name = "url",
        .type = SOVMESH_SETTING_STRING,
        .default_value = "http://127.0.0.1:11434",
        .help = "base URL of the Ollama server",
    },
    {
        .name = "parallel",
        .type = SOVMESH_SETTING_INT,
        .default_value = "1",
        .min = 1,
        .max = 1024,
        .help = "requests Ollama serves at once (its OLLAMA_NUM_PARALLEL)",
    },
    {
        .name = "connect_timeout_ms",
        .type = SOVMESH_SETTING_INT,
        .default_value = "2000",
        .min = 1,
        .max = 600000,
        .help = "give up connecting to Ollama after this many milliseconds",
    },
    {.name = NULL},
};

/* ---- call bookkeeping ------------------------------------------------ */

static sovmesh_backend_call *call_new(ollama *o, call_kind kind, void *ud)
{
	sovmesh_backend_call *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->o = o;
	c->kind = kind;
	c->ud = ud;
	ndjson_init(&c->nd, MAX_LINE);
	c->next = o->calls;
	if (o->calls)
		o->calls->prev = c;
	o->calls = c;
	return c;
}

static void call_free(sovmesh_backend_call *c)
{
	ollama *o = c->o;
	if (c->prev)
		c->prev->next = c->next;
	else
		o->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	ndjson_free(&c->nd);
	free(c->doc);
	free(c->model);
	for (size_t i = 0; i < c->n_texts; i++)
		free(c->texts[i]);
	free(c->texts);
	free(c->vecs);
	free(c->base);
	free(c->target);
	for (size_t i = 0; i < 2; i++)
		free(c->blobs[i].data);
	free(c);
}

/* Stop whatever the call has in flight; no callback of ours follows. */
static void call_stop(sovmesh_backend_call *c)
{
	ollama *o = c->o;
	if (c->http) {
		o->api->http_cancel(o->host, c->http);
		c->http = NULL;
	}
	if (c->defer) {
		o->api->timer_stop(o->host, c->defer);
		c->defer = NULL;
	}
}

static int set_fail(sovmesh_backend_call *c, int code, const char *fmt, ...) SOVMESH_PRINTF(3, 4);
static int set_fail(sovmesh_backend_call *c, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->msg, sizeof(c->msg), fmt, ap);
	va_end(ap);
	c->fail_code = code;
	return code;
}

/* The single end of every call: the caller's done callback, then free.
 * code 0 with json (JSON calls) or vectors (embed). */
static void call_finish(sovmesh_backend_call *c, int code, const char *json, size_t json_len)
{
	sovmesh_backend_status st = {
	    .size = sizeof(st),
	    .code = code,
	    .http_status = c->status,
	    .message = code == 0 ? "ok" : c->msg,
	};
	c->in_cb = 1;
	switch (c->kind) {
	case CALL_GEN:
		if (c->gcb.on_done)
			c->gcb.on_done(c->ud, &st);
		break;
	case CALL_JSON:
	case CALL_ADAPTER:
		if (c->jcb)
			c->jcb(c->ud, &st, code == 0 ? json : NULL, code == 0 ? json_len : 0);
		break;
	case CALL_EMBED:
		if (c->ecb)
			c->ecb(c->ud, &st, code == 0 ? c->vecs : NULL, code == 0 ? c->n_texts : 0,
			       code == 0 ? c->dim : 0);
		break;
	}
	call_free(c);
}

static void deferred_fail(void *ud)
{
	sovmesh_backend_call *c = ud;
	c->o->api->timer_stop(c->o->host, c->defer);
	c->defer = NULL;
	call_finish(c, c->fail_code, NULL, 0);
}

/* Report a failure found while starting, after the slot has returned (the
 * caller must have its handle before any callback). */
static sovmesh_backend_call *fail_later(sovmesh_backend_call *c)
{
	c->defer = c->o->api->timer_start(c->o->host, 0, 0, deferred_fail, c);
	if (!c->defer) {
		call_free(c);
		return NULL;
	}
	return c;
}

/* ---- HTTP plumbing ---------------------------------------------------- */

static int doc_append(sovmesh_backend_call *c, const char *data, size_t len)
{
	if (c->doc_len + len > MAX_DOC)
		return set_fail(c, -EPROTO, "Ollama's answer is over %u bytes", MAX_DOC);
	if (c->doc_len + len + 1 > c->doc_cap) {
		size_t cap = c->doc_cap ? c->doc_cap : 4096;
		while (cap < c->doc_len + len + 1)
			cap *= 2;
		char *d = realloc(c->doc, cap);
		if (!d)
			return set_fail(c, -ENOMEM, "out of memory");
		c->doc = d;
		c->doc_cap = cap;
	}
	memcpy(c->doc + c->doc_len, data, len);
	c->doc_len += len;
	c->doc[c->doc_len] = '\0';
	return 0;
}

static void on_http_status(void *ud, long status)
{
	sovmesh_backend_call *c = ud;
	c->status = status;
}

static int gen_line(void *ud, const char *line, size_t len)
{
	sovmesh_backend_call *c = ud;
	json_error_t jerr;
	json_t *obj = json_loadb(line, len, 0, &jerr);
	if (!obj || !json_is_object(obj)) {
		json_decref(obj);
		return set_fail(c, -EPROTO, "Ollama sent a stream line that is not a JSON object");
	}
	json_t *e = json_object_get(obj, "error");
	if (e) {
		set_fail(c, -EPROTO, "Ollama failed mid-stream: %s",
		         json_is_string(e) ? json_string_value(e) : "(non-string error)");
		json_decref(obj);
		return -EPROTO;
	}
	int done = json_is_true(json_object_get(obj, "done"));
	json_decref(obj);
	c->saw_done |= done;
	sovmesh_gen_chunk ch = {.size = sizeof(ch), .json = line, .json_len = len, .done = done};
	if (c->gcb.on_chunk) {
		c->in_cb = 1;
		c->gcb.on_chunk(c->ud, &ch);
		c->in_cb = 0;
	}
	return c->cancelled ? -ECANCELED : 0;
}

static int on_http_body(void *ud, const char *data, size_t len)
{
	sovmesh_backend_call *c = ud;
	if (c->kind == CALL_GEN && c->status == 200) {
		int rc = ndjson_feed(&c->nd, data, len, gen_line, c);
		if (rc == -EMSGSIZE)
			set_fail(c, -EPROTO, "Ollama sent an NDJSON line over %u bytes", MAX_LINE);
		else if (rc == -ENOMEM)
			set_fail(c, -ENOMEM, "out of memory");
		if (c->cancelled) {
			/* cancel() ran in on_chunk and stopped the HTTP call; the
			 * call is ours to free now that no callback is running. */
			call_free(c);
			return 1;
		}
		return rc != 0;
	}
	return doc_append(c, data, len) != 0;
}

/* The "error" string of an Ollama error body, else the body's start. */
static void error_text(sovmesh_backend_call *c, char *out, size_t size, int *is_json)
{
	*is_json = 0;
	json_t *obj = c->doc ? json_loadb(c->doc, c->doc_len, 0, NULL) : NULL;
	json_t *e = obj ? json_object_get(obj, "error") : NULL;
	if (json_is_string(e)) {
		snprintf(out, size, "%s", json_string_value(e));
		*is_json = 1;
	} else if (c->doc_len) {
		size_t n = c->doc_len;
		while (n && (c->doc[n - 1] == '\n' || c->doc[n - 1] == '\r'))
			n--;
		snprintf(out, size, "%.*s", (int)(n > 200 ? 200 : n), c->doc);
		for (char *p = out; *p; p++)
			if (*p == '\n' || *p == '\r')
				*p = ' ';
	} else {
		snprintf(out, size, "no message");
	}
	json_decref(obj);
}

static int status_code(long status)
{
	switch (status) {
	case 503:
		return -EBUSY;
	case 404:
		return -ENOENT;
	case 400:
		return -EINVAL;
	default:
		return -EIO;
	}
}

static int transport_code(int result)
{
	switch (result) {
	case -ECONNREFUSED:
	case -EHOSTUNREACH:
		return -ECONNREFUSED;
	case -ETIMEDOUT:
		return -ETIMEDOUT;
	case -ENOMEM:
		return -ENOMEM;
	case -EPROTO:
		return -EPROTO;
	default:
		return -EIO;
	}
}

static void step_done(sovmesh_backend_call *c);

static void on_http_done(void *ud, int result, long status, const char *message)
{
	sovmesh_backend_call *c = ud;
	c->http = NULL;
	if (status > 0)
		c->status = status;
	if (c->fail_code) {
		call_finish(c, c->fail_code, NULL, 0);
		return;
	}
	if (result < 0) {
		int code = transport_code(result);
		set_fail(c, code, "Ollama %s: %s",
		         code == -ECONNREFUSED ? "is not reachable"
		         : code == -ETIMEDOUT  ? "timed out"
		                               : "request failed",
		         message ? message : "");
		call_finish(c, code, NULL, 0);
		return;
	}
	step_done(c);
}

static const sovmesh_http_callbacks http_cbs = {
    .size = sizeof(sovmesh_http_callbacks),
    .on_status = on_http_status,
    .on_body = on_http_body,
    .on_done = on_http_done,
};

/* Milliseconds left before the call's deadline; 0 = no limit, and a
 * passed deadline is reported as -ETIMEDOUT by the caller. */
static int remaining_ms(sovmesh_backend_call *c, uint32_t *out)
{
	*out = 0;
	if (!c->deadline_ms)
		return 0;
	uint64_t now = c->o->api->now_ms(c->o->host);
	if (now >= c->deadline_ms)
		return set_fail(c, -ETIMEDOUT, "Ollama timed out (call deadline passed)");
	*out = (uint32_t)(c->deadline_ms - now);
	return 0;
}

/* Start one HTTP request for call c; 0 or a failure recorded in c. */
static int start_http(sovmesh_backend_call *c, const char *method, const char *path,
                      const char *const *headers, const void *body, size_t body_len,
                      uint32_t timeout_ms)
{
	ollama *o = c->o;
	char url[2048];
	if ((size_t)snprintf(url, sizeof(url), "%s%s", o->url, path) >= sizeof(url))
		return set_fail(c, -EINVAL, "Ollama URL too long for %s", path);
	c->status = 0;
	c->doc_len = 0;
	ndjson_free(&c->nd);
	ndjson_init(&c->nd, MAX_LINE);
	sovmesh_http_request rq = {
	    .size = sizeof(rq),
	    .method = method,
	    .url = url,
	    .headers = headers,
	    .body = body,
	    .body_len = body_len,
	    .timeout_ms = timeout_ms,
	    .connect_timeout_ms = o->connect_timeout_ms,
	};
	sovmesh_error err = {0};
	c->http = o->api->http_request(o->host, &rq, &http_cbs, c, &err);
	if (!c->http)
		return set_fail(c, err.code < 0 ? err.code : -EIO, "cannot start %s %s: %s", method,
		                url, err.message);
	return 0;
}

/* A non-2xx answer: the mapped code with Ollama's own message. */
static void finish_http_error(sovmesh_backend_call *c, const char *what)
{
	char text[400];
	int is_json;
	error_text(c, text, sizeof(text), &is_json);
	int code = status_code(c->status);
	set_fail(c, code, "Ollama %s: HTTP %ld: %s", what, c->status, text);
	call_finish(c, code, NULL, 0);
}

/* ---- generate --------------------------------------------------------- */

static void gen_done(sovmesh_backend_call *c)
{
	if (c->status != 200) {
		finish_http_error(c, "refused the request");
		return;
	}
	int rc = ndjson_finish(&c->nd, gen_line, c);
	if (c->cancelled) {
		call_free(c);
		return;
	}
	if (rc != 0 || c->fail_code) {
		if (!c->fail_code)
			set_fail(c, -EPROTO, "Ollama sent an NDJSON line over %u bytes", MAX_LINE);
		call_finish(c, c->fail_code, NULL, 0);
		return;
	}
	if (!c->saw_done) {
		set_fail(c, -EPROTO, "Ollama's answer ended without a \"done\": true object");
		call_finish(c, -EPROTO, NULL, 0);
		return;
	}
	call_finish(c, 0, NULL, 0);
}

static sovmesh_backend_call *ollama_generate(void *instance, const sovmesh_gen_request *req,
                                             const sovmesh_gen_callbacks *cbs, void *ud)
{
	ollama *o = instance;
	sovmesh_backend_call *c = call_new(o, CALL_GEN, ud);
	if (!c)
		return NULL;
	if (cbs)
		memcpy(&c->gcb, cbs, cbs->size < sizeof(c->gcb) ? cbs->size : sizeof(c->gcb));
	if (!req || (req->kind != SOVMESH_GEN_CHAT && req->kind != SOVMESH_GEN_GENERATE) ||
	    !req->body_json) {
		set_fail(c, -EINVAL, "generate: no request body or unknown kind");
		return fail_later(c);
	}
	json_error_t jerr;
	json_t *body = json_loadb(req->body_json, req->body_len, 0, &jerr);
	if (!json_is_object(body)) {
		json_decref(body);
		set_fail(c, -EINVAL, "generate: the request body is not a JSON object (%s)",
		         jerr.text);
		return fail_later(c);
	}
	/* Ollama streams unless told "stream": false; make the body agree
	 * with req->stream, re-serialising only when it does not. */
	json_t *s = json_object_get(body, "stream");
	int body_streams = !json_is_false(s);
	char *patched = NULL;
	if (body_streams != (req->stream != 0)) {
		json_object_set_new(body, "stream", json_boolean(req->stream != 0));
		patched = json_dumps(body, JSON_COMPACT);
	}
	json_decref(body);
	const char *path = req->kind == SOVMESH_GEN_CHAT ? "/api/chat" : "/api/generate";
	int rc = start_http(c, "POST", path, json_headers, patched ? patched : req->body_json,
	                    patched ? strlen(patched) : req->body_len, req->timeout_ms);
	free(patched);
	if (rc < 0)
		return fail_later(c);
	return c;
}

/* ---- one-document calls ---------------------------------------------- */

static sovmesh_backend_call *json_call(ollama *o, const char *method, const char *path,
                                       const char *body, sovmesh_backend_json_cb cb, void *ud)
{
	sovmesh_backend_call *c = call_new(o, CALL_JSON, ud);
	if (!c)
		return NULL;
	c->jcb = cb;
	snprintf(c->msg, sizeof(c->msg), "%s", path); /* for the error text */
	if (start_http(c, method, path, body ? json_headers : NULL, body, body ? strlen(body) : 0,
	               0) < 0)
		return fail_later(c);
	return c;
}

static void json_done(sovmesh_backend_call *c)
{
	if (c->status < 200 || c->status > 299) {
		finish_http_error(c, "refused the request");
		return;
	}
	json_t *doc = c->doc_len ? json_loadb(c->doc, c->doc_len, 0, NULL) : NULL;
	if (!doc) {
		set_fail(c, -EPROTO, "Ollama's answer is not JSON");
		call_finish(c, -EPROTO, NULL, 0);
		return;
	}
	json_decref(doc);
	call_finish(c, 0, c->doc, c->doc_len);
}

static sovmesh_backend_call *ollama_list_models(void *instance, sovmesh_backend_json_cb cb,
                                                void *ud)
{
	return json_call(instance, "GET", "/api/tags", NULL, cb, ud);
}

static sovmesh_backend_call *ollama_info(void *instance, const char *what, const char *body_json,
                                         sovmesh_backend_json_cb cb, void *ud)
{
	if (!what)
		return NULL;
	if (strcmp(what, "ps") == 0)
		return json_call(instance, "GET", "/api/ps", NULL, cb, ud);
	if (strcmp(what, "version") == 0)
		return json_call(instance, "GET", "/api/version", NULL, cb, ud);
	if (strcmp(what, "show") == 0)
		return json_call(instance, "POST", "/api/show", body_json ? body_json : "{}", cb,
		                 ud);
	return NULL;
}

/* ---- embed ------------------------------------------------------------ */

/* Append one vector (a JSON array of numbers) to c->vecs at row `row`. */
static int take_vector(sovmesh_backend_call *c, json_t *v, size_t row)
{
	if (!json_is_array(v) || json_array_size(v) == 0)
		return set_fail(c, -EPROTO, "Ollama's embedding %zu is not a non-empty array", row);
	size_t d = json_array_size(v);
	if (row == 0) {
		c->dim = d;
		c->vecs = calloc(c->n_texts * d, sizeof(float));
		if (!c->vecs)
			return set_fail(c, -ENOMEM, "out of memory (%zu x %zu embeddings)",
			                c->n_texts, d);
	} else if (d != c->dim) {
		return set_fail(c, -EPROTO, "Ollama's embedding %zu has %zu dimensions, the first has %zu",
		                row, d, c->dim);
	}
	for (size_t j = 0; j < d; j++) {
		json_t *x = json_array_get(v, j);
		if (!json_is_number(x))
			return set_fail(c, -EPROTO, "Ollama's embedding %zu has a non-number at %zu",
			                row, j);
		c->vecs[row * d + j] = (float)json_number_value(x);
	}
	return 0;
}

static int embed_legacy_next(sovmesh_backend_call *c)
{
	json_t *b = json_pack("{s:s, s:s}", "model", c->model, "prompt", c->texts[c->next_text]);
	char *text = b ? json_dumps(b, JSON_COMPACT) : NULL;
	json_decref(b);
	if (!text)
		return set_fail(c, -ENOMEM, "out of memory");
	uint32_t t;
	int rc = remaining_ms(c, &t);
	if (rc == 0)
		rc = start_http(c, "POST", "/api/embeddings", json_headers, text, strlen(text), t);
	free(text);
	return rc;
}

static void embed_done(sovmesh_backend_call *c)
{
	if (c->status == 404 && !c->legacy) {
		int is_json;
		char text[400];
		error_text(c, text, sizeof(text), &is_json);
		if (!is_json) {
			/* The endpoint is missing, not the model: an Ollama
			 * older than 0.3.0.  One text at a time, the old way. */
			c->o->api->log(c->o->host, SOVMESH_LOG_INFO,
			               "/api/embed not found, using the legacy /api/embeddings");
			c->legacy = 1;
			c->next_text = 0;
			if (embed_legacy_next(c) < 0)
				call_finish(c, c->fail_code, NULL, 0);
			return;
		}
	}
	if (c->status != 200) {
		finish_http_error(c, "refused the embedding");
		return;
	}
	json_t *doc = json_loadb(c->doc ? c->doc : "", c->doc_len, 0, NULL);
	int rc = 0;
	if (!c->legacy) {
		json_t *e = json_object_get(doc, "embeddings");
		if (!json_is_array(e) || json_array_size(e) != c->n_texts)
			rc = set_fail(c, -EPROTO, "Ollama answered %zu embeddings for %zu texts",
			              json_is_array(e) ? json_array_size(e) : 0, c->n_texts);
		for (size_t i = 0; rc == 0 && i < c->n_texts; i++)
			rc = take_vector(c, json_array_get(e, i), i);
		json_decref(doc);
		call_finish(c, rc, NULL, 0);
		return;
	}
	rc = take_vector(c, json_object_get(doc, "embedding"), c->next_text);
	json_decref(doc);
	if (rc == 0 && ++c->next_text < c->n_texts)
		rc = embed_legacy_next(c);
	else if (rc == 0)
		call_finish(c, 0, NULL, 0);
	if (rc < 0)
		call_finish(c, rc, NULL, 0);
}

static sovmesh_backend_call *ollama_embed(void *instance, const char *model,
                                          const char *const *texts, size_t n,
                                          uint32_t timeout_ms, sovmesh_backend_embed_cb cb,
                                          void *ud)
{
	ollama *o = instance;
	sovmesh_backend_call *c = call_new(o, CALL_EMBED, ud);
	if (!c)
		return NULL;
	c->ecb = cb;
	if (!model || !texts || n == 0) {
		set_fail(c, -EINVAL, "embed: no model or no texts");
		return fail_later(c);
	}
	if (timeout_ms)
		c->deadline_ms = o->api->now_ms(o->host) + timeout_ms;
	c->model = strdup(model);
	c->texts = calloc(n, sizeof(*c->texts));
	json_t *input = json_array();
	if (!c->model || !c->texts || !input) {
		json_decref(input);
		set_fail(c, -ENOMEM, "out of memory");
		return fail_later(c);
	}
	/* n_texts counts copies made so far, so call_free frees just those. */
	for (size_t i = 0; i < n; i++) {
		c->texts[i] = strdup(texts[i] ? texts[i] : "");
		if (!c->texts[i] || json_array_append_new(input, json_string(c->texts[i])) < 0) {
			free(c->texts[i]);
			c->texts[i] = NULL;
			json_decref(input);
			set_fail(c, -EINVAL, "embed: text %zu is not valid UTF-8 or out of memory", i);
			return fail_later(c);
		}
		c->n_texts = i + 1;
	}
	json_t *b = json_pack("{s:s, s:o}", "model", model, "input", input);
	char *text = b ? json_dumps(b, JSON_COMPACT) : NULL;
	json_decref(b);
	if (!text) {
		set_fail(c, -ENOMEM, "out of memory");
		return fail_later(c);
	}
	int rc = start_http(c, "POST", "/api/embed", json_headers, text, strlen(text), timeout_ms);
	free(text);
	if (rc < 0)
		return fail_later(c);
	return c;
}

/* ---- apply_adapter ------------------------------------------------------- */

static int read_blob(sovmesh_backend_call *c, const char *dir, blob *b, const char *name)
{
	char path[PATH_MAX];
	b->name = name;
	if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path))
		return set_fail(c, -ENAMETOOLONG, "apply_adapter: path too long: %s/%s", dir, name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return set_fail(c, -errno, "apply_adapter: cannot open %s: %s", path,
		                strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 ||
	    (uint64_t)st.st_size > MAX_ADAPTER_FILE) {
		close(fd);
		return set_fail(c, -EINVAL, "apply_adapter: %s is not a regular file of 1..%u bytes",
		                path, MAX_ADAPTER_FILE);
	}
	b->len = (size_t)st.st_size;
	b->data = malloc(b->len);
	if (!b->data) {
		close(fd);
		return set_fail(c, -ENOMEM, "apply_adapter: out of memory reading %s", path);
	}
	size_t got = 0;
	while (got < b->len) {
		ssize_t r = read(fd, b->data + got, b->len - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			close(fd);
			return set_fail(c, -EIO, "apply_adapter: cannot read %s", path);
		}
		got += (size_t)r;
	}
	close(fd);
	struct sha256_ctx h;
	uint8_t d[SHA256_DIGEST_SIZE];
	sha256_init(&h);
	sha256_update(&h, b->len, (const uint8_t *)b->data);
	sha256_digest(&h, sizeof(d), d);
	memcpy(b->digest, "sha256:", 7);
	for (size_t i = 0; i < sizeof(d); i++)
		snprintf(b->digest + 7 + 2 * i, 3, "%02x", d[i]);
	return 0;
}

/* Run step c->step: HEAD blob, POST blob, then create. */
static int adapter_step(sovmesh_backend_call *c)
{
	char path[128];
	if (c->step < 4) {
		blob *b = &c->blobs[c->step / 2];
		snprintf(path, sizeof(path), "/api/blobs/%s", b->digest);
		if (c->step % 2 == 0)
			return start_http(c, "HEAD", path, NULL, NULL, 0, 0);
		return start_http(c, "POST", path, blob_headers, b->data, b->len, 0);
	}
	json_t *req = json_pack("{s:s, s:s, s:{s:s, s:s}, s:b}", "model", c->target, "from", c->base,
	                        "adapters", c->blobs[0].name, c->blobs[0].digest, c->blobs[1].name,
	                        c->blobs[1].digest, "stream", 0);
	char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	if (!text)
		return set_fail(c, -ENOMEM, "out of memory");
	int rc = start_http(c, "POST", "/api/create", json_headers, text, strlen(text), 0);
	free(text);
	return rc;
}

static void adapter_done(sovmesh_backend_call *c)
{
	if (c->step < 4 && c->step % 2 == 0) {
		/* HEAD: 200 = Ollama has the blob already, skip the upload. */
		c->step += c->status == 200 ? 2 : 1;
	} else if (c->step < 4) {
		if (c->status != 200 && c->status != 201) {
			finish_http_error(c, "refused the adapter upload");
			return;
		}
		c->step++;
	} else {
		if (c->status != 200) {
			finish_http_error(c, "could not create the adapted model");
			return;
		}
		c->o->api->log(c->o->host, SOVMESH_LOG_INFO, "created model %s from %s + adapter",
		               c->target, c->base);
		json_done(c);
		return;
	}
	if (adapter_step(c) < 0)
		call_finish(c, c->fail_code, NULL, 0);
}

static sovmesh_backend_call *ollama_apply_adapter(void *instance,
                                                  const sovmesh_adapter_apply *req,
                                                  sovmesh_backend_json_cb cb, void *ud)
{
	ollama *o = instance;
	sovmesh_backend_call *c = call_new(o, CALL_ADAPTER, ud);
	if (!c)
		return NULL;
	c->jcb = cb;
	if (!req || !req->base_model || !req->adapter_dir || !req->target_model) {
		set_fail(c, -EINVAL, "apply_adapter: base_model, adapter_dir and target_model are required");
		return fail_later(c);
	}
	c->base = strdup(req->base_model);
	c->target = strdup(req->target_model);
	if (!c->base || !c->target) {
		set_fail(c, -ENOMEM, "out of memory");
		return fail_later(c);
	}
	if (read_blob(c, req->adapter_dir, &c->blobs[0], "adapter_model.safetensors") < 0 ||
	    read_blob(c, req->adapter_dir, &c->blobs[1], "adapter_config.json") < 0 ||
	    adapter_step(c) < 0)
		return fail_later(c);
	return c;
}

/* ---- dispatch, cancel, lifecycle ------------------------------------- */

static void step_done(sovmesh_backend_call *c)
{
	switch (c->kind) {
	case CALL_GEN:
		gen_done(c);
		break;
	case CALL_JSON:
		json_done(c);
		break;
	case CALL_EMBED:
		embed_done(c);
		break;
	case CALL_ADAPTER:
		adapter_done(c);
		break;
	}
}

static void ollama_cancel(void *instance, sovmesh_backend_call *c)
{
	(void)instance;
	if (!c || c->cancelled)
		return;
	call_stop(c);
	if (c->in_cb)
		c->cancelled = 1; /* freed once the running callback returns */
	else
		call_free(c);
}

static uint32_t ollama_parallel_slots(void *instance)
{
	ollama *o = instance;
	return o->parallel;
}

static int ollama_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                         sovmesh_error *err)
{
	if (!SOVMESH_HAS_SLOT(api, sovmesh_host_api, http_cancel) || !api->setting_string ||
	    !api->setting_int || !api->timer_start || !api->now_ms)
		return sovmesh_fail(err, -ENOTSUP, "the host offers no HTTP, timer or settings slots");
	ollama *o = calloc(1, sizeof(*o));
	if (!o)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	o->host = host;
	o->api = api;
	const char *url = api->setting_string(host, "url");
	if (!url || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)) {
		free(o);
		return sovmesh_fail(err, -EINVAL, "url: '%s' must start with http:// or https://",
		                    url ? url : "");
	}
	o->url = strdup(url);
	if (!o->url) {
		free(o);
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	}
	size_t n = strlen(o->url);
	while (n > 8 && o->url[n - 1] == '/')
		o->url[--n] = '\0';
	o->parallel = (uint32_t)api->setting_int(host, "parallel");
	if (o->parallel == 0)
		o->parallel = 1;
	o->connect_timeout_ms = (uint32_t)api->setting_int(host, "connect_timeout_ms");
	api->log(host, SOVMESH_LOG_INFO, "Ollama at %s, %u parallel slot%s", o->url, o->parallel,
	         o->parallel == 1 ? "" : "s");
	*instance = o;
	return 0;
}

static void ollama_destroy(void *instance)
{
	ollama *o = instance;
	if (!o)
		return;
	/* Calls still open end silently, as if cancelled. */
	while (o->calls) {
		sovmesh_backend_call *c = o->calls;
		call_stop(c);
		call_free(c);
	}
	free(o->url);
	free(o);
}

static const sovmesh_backend_ops ollama_ops = {
    .size = sizeof(sovmesh_backend_ops),
    .list_models = ollama_list_models,
    .generate = ollama_generate,
    .embed = ollama_embed,
    .apply_adapter = ollama_apply_adapter,
    .cancel = ollama_cancel,
    .info = ollama_info,
    .parallel_slots = ollama_parallel_slots,
};

static const sovmesh_plugin_descriptor ollama_descriptor = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_BACKEND,
    .name = "ollama",
    .version = "1.0.0",
    .license = "MIT",
    .description = "the local Ollama server over its HTTP API",
    .settings = ollama_settings,
    .create = ollama_create,
    .destroy = ollama_destroy,
    .ops = &ollama_ops,
};

SOVMESH_PLUGIN_DEFINE(ollama_descriptor)

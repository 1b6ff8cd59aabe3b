/* The peer hop of mesh inference (see peer_inference.h). */
#include "peer_inference.h"

#include <errno.h>
#include <gnutls/gnutls.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"
#include "sealed_message.h"

/* The serving side bounds a backend call as the asking side does by
 * default; a peer that stops reading without closing is still cut off. */
#define DEFAULT_TIMEOUT_MS 3600000u
/* A refusal's {"error": ...} body; anything longer is not ours. */
#define MAX_ERROR_BODY 4096
/* Fingerprint prefix shown in log lines. */
#define FP_SHOW 16

static void wipe_free(void *p, size_t n)
{
	if (p)
		gnutls_memset(p, 0, n);
	free(p);
}

/* ================================================================ */
/* asking side                                                       */
/* ================================================================ */

struct peer_infer_call {
	peer_call *pcall;
	peer_infer_callbacks cbs;
	void *ud;
	char peer[FP_SHOW + 1];
	struct sealed_client *sc;
	struct sealed_stream *st;
	size_t nonce_len;
	long status;
	/* Body bytes not yet used (sealed): a partial frame (200), or the
	 * start of a refusal's JSON. */
	uint8_t *buf;
	size_t len, cap;
	/* The trailer of the final frame. */
	bool trailer_ok;
	char *trailer_error;
	/* Set when the answer is refused while reading it (we then abort the
	 * HTTP call and report this instead of -ECANCELED). */
	int fail_code;
	char fail_msg[400];
	/* Inside one of the user's callbacks / cancelled from inside one. */
	bool in_cb;
	bool cancelled;
};

static void call_free(peer_infer_call *c)
{
	sealed_stream_free(c->st);
	sealed_client_free(c->sc);
	free(c->buf);
	free(c->trailer_error);
	free(c);
}

static int call_fail(peer_infer_call *c, int code, const char *fmt, ...) SOVMESH_PRINTF(3, 4);
static int call_fail(peer_infer_call *c, int code, const char *fmt, ...)
{
	if (!c->fail_code) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(c->fail_msg, sizeof(c->fail_msg), fmt, ap);
		va_end(ap);
		c->fail_code = code;
	}
	return 1; /* abort the HTTP call */
}

/* The buffer holds at most one partial frame (open_chunk refuses a frame
 * longer than SEALED_MAX_CHUNK before it is all in) plus one read. */
static int buf_append(peer_infer_call *c, const char *data, size_t len)
{
	if (c->cap - c->len < len) {
		size_t cap = c->cap ? c->cap : 4096;
		while (cap - c->len < len)
			cap *= 2;
		uint8_t *n = realloc(c->buf, cap);
		if (!n)
			return -ENOMEM;
		c->buf = n;
		c->cap = cap;
	}
	memcpy(c->buf + c->len, data, len);
	c->len += len;
	return 0;
}

static void on_call_status(void *ud, long status)
{
	peer_infer_call *c = ud;
	c->status = status;
}

/* The final frame's plaintext: {"done_status":"ok"} or
 * {"done_status":"error","error":"..."}. */
static int take_trailer(peer_infer_call *c, const uint8_t *pt, size_t len)
{
	json_t *j = json_loadb((const char *)pt, len, 0, NULL);
	const char *ds = json_string_value(json_object_get(j, "done_status"));
	int r = 0;
	if (ds && strcmp(ds, "ok") == 0) {
		c->trailer_ok = true;
	} else if (ds && strcmp(ds, "error") == 0) {
		const char *e = json_string_value(json_object_get(j, "error"));
		c->trailer_error = strdup(e && *e ? e : "unspecified error");
		if (!c->trailer_error)
			r = call_fail(c, -ENOMEM, "out of memory");
		else
			log_one_line(c->trailer_error);
	} else {
		r = call_fail(c, -EPROTO, "peer %s...: malformed end of answer", c->peer);
	}
	json_decref(j);
	return r;
}

/* One opened non-final frame: an NDJSON object of the backend's answer. */
static int deliver_chunk(peer_infer_call *c, const uint8_t *pt, size_t len)
{
	json_t *j = json_loadb((const char *)pt, len, 0, NULL);
	if (!json_is_object(j)) {
		json_decref(j);
		return call_fail(c, -EPROTO, "peer %s...: answer chunk is not a JSON object",
		                 c->peer);
	}
	int done = json_is_true(json_object_get(j, "done"));
	json_decref(j);
	if (c->cbs.on_chunk) {
		c->in_cb = true;
		c->cbs.on_chunk(c->ud, (const char *)pt, len, done);
		c->in_cb = false;
	}
	return 0;
}

/* Open every whole frame in the buffer.  Non-zero: stop (failed, or
 * cancelled by the user inside on_chunk). */
static int take_frames(peer_infer_call *c)
{
	size_t off = 0;
	int r = 0;
	if (!c->st) {
		if (c->len < c->nonce_len)
			return 0;
		r = sealed_stream_begin_client(c->sc, c->buf, c->nonce_len, &c->st);
		if (r < 0)
			return call_fail(c, r == -ENOMEM ? -ENOMEM : -EPROTO,
			                 "peer %s...: cannot start reading the answer: %s", c->peer,
			                 strerror(-r));
		off = c->nonce_len;
	}
	while (off < c->len) {
		uint8_t *pt = NULL;
		size_t pt_len = 0, used = 0;
		int final = 0;
		int e = sealed_stream_open_chunk(c->st, c->buf + off, c->len - off, &used, &pt,
		                                 &pt_len, &final);
		if (e == -EAGAIN)
			break;
		if (e < 0) {
			r = call_fail(c, e == -ENOMEM ? -ENOMEM : -EPROTO,
			              "peer %s...: answer not authentic or out of order (%s)",
			              c->peer,
			              e == -EPROTO ? "bytes after the final frame" : strerror(-e));
			break;
		}
		off += used;
		r = final ? take_trailer(c, pt, pt_len) : deliver_chunk(c, pt, pt_len);
		wipe_free(pt, pt_len);
		if (r || c->cancelled)
			break;
	}
	if (c->cancelled)
		return 1;
	/* Keep only the partial frame at the end. */
	if (off) {
		memmove(c->buf, c->buf + off, c->len - off);
		c->len -= off;
	}
	return r;
}

static int on_call_body(void *ud, const char *data, size_t len)
{
	peer_infer_call *c = ud;
	if (c->status != 200) {
		/* A refusal: keep the start of its JSON for the message. */
		size_t room = c->len < MAX_ERROR_BODY ? MAX_ERROR_BODY - c->len : 0;
		if (len > room)
			len = room;
		if (len && buf_append(c, data, len) < 0)
			return call_fail(c, -ENOMEM, "out of memory");
		return 0;
	}
	if (buf_append(c, data, len) < 0)
		return call_fail(c, -ENOMEM, "out of memory");
	int r = take_frames(c);
	if (c->cancelled) {
		/* peer_infer_cancel() inside on_chunk has cancelled the HTTP
		 * call already; nothing of it runs after this returns. */
		call_free(c);
		return 1;
	}
	return r;
}

static int status_code(long status)
{
	switch (status) {
	case 503:
		return -EBUSY;
	case 403:
		return -EPERM;
	case 404:
		return -ENOENT;
	case 409:
		return -EALREADY;
	default:
		return -EIO; /* 400, 421, 502, anything else */
	}
}

static void on_call_done(void *ud, int result, long http_status, const char *message)
{
	peer_infer_call *c = ud;
	char msg[600];
	int code = 0;
	if (c->fail_code) {
		code = c->fail_code;
		snprintf(msg, sizeof(msg), "%s", c->fail_msg);
	} else if (result != 0) {
		if (result == -ECONNRESET && c->status == 200) {
			code = -EPROTO;
			snprintf(msg, sizeof(msg), "peer %s...: answer stream cut short: %s",
			         c->peer, message ? message : "connection closed");
		} else {
			code = (result == -ECONNREFUSED || result == -ETIMEDOUT ||
			        result == -EPERM || result == -EPROTO)
			           ? result
			           : -EIO;
			snprintf(msg, sizeof(msg), "%s", message ? message : strerror(-result));
		}
	} else if (http_status != 200) {
		code = status_code(http_status);
		json_t *j = json_loadb((const char *)c->buf, c->len, 0, NULL);
		const char *e = json_string_value(json_object_get(j, "error"));
		snprintf(msg, sizeof(msg), "peer %s... answered %ld: %s", c->peer, http_status,
		         e ? e : http_status_reason((int)http_status));
		json_decref(j);
	} else if (!c->st || sealed_stream_end(c->st) != 0 || c->len) {
		code = -EPROTO;
		snprintf(msg, sizeof(msg), "peer %s...: answer stream cut short", c->peer);
	} else if (!c->trailer_ok) {
		code = -EPROTO;
		snprintf(msg, sizeof(msg), "peer %s...: the backend failed mid-answer: %s", c->peer,
		         c->trailer_error ? c->trailer_error : "unspecified error");
	}
	log_one_line(msg);
	if (code)
		log_info("peer inference: %s", msg);
	else
		log_debug("peer inference: peer %s... answered", c->peer);
	c->pcall = NULL; /* ends with this callback */
	c->in_cb = true;
	c->cbs.on_done(c->ud, code, msg);
	call_free(c);
}

static const sovmesh_http_callbacks call_cbs = {
    .size = sizeof(sovmesh_http_callbacks),
    .on_status = on_call_status,
    .on_body = on_call_body,
    .on_done = on_call_done,
};

peer_infer_call *peer_infer_start(peer_client *pc, const peer_infer_target *t,
                                  const infer_request *req, unsigned timeout_ms,
                                  const peer_infer_callbacks *cbs, void *ud, sovmesh_error *err)
{
	if (!pc || !t || !t->fingerprint_hex || !t->host || !t->x25519_public || !req || !cbs ||
	    !cbs->on_done) {
		sovmesh_fail(err, -EINVAL, "peer inference: missing argument");
		return NULL;
	}
	char *payload = NULL;
	size_t payload_len = 0;
	int r = infer_peer_payload(req, &payload, &payload_len);
	if (r == -ENOENT) {
		sovmesh_fail(err, r, "peer inference: the request has no user text to send");
		return NULL;
	}
	if (r == -EMSGSIZE) {
		sovmesh_fail(err, -EINVAL, "peer inference: the text is longer than %u bytes",
		             INFER_TEXT_MAX);
		return NULL;
	}
	if (r < 0) {
		sovmesh_fail(err, r, "peer inference: cannot build the payload: %s", strerror(-r));
		return NULL;
	}
	peer_infer_call *c = calloc(1, sizeof(*c));
	if (!c) {
		wipe_free(payload, payload_len);
		sovmesh_fail(err, -ENOMEM, "peer inference: out of memory");
		return NULL;
	}
	c->cbs = *cbs;
	c->ud = ud;
	snprintf(c->peer, sizeof(c->peer), "%s", t->fingerprint_hex);
	c->nonce_len = sealed_response_nonce_len(HPKE_AEAD_CHACHA20POLY1305);

	struct sealed_key key = {.key_id = PEER_INFER_KEY_ID,
	                         .aead_id = HPKE_AEAD_CHACHA20POLY1305};
	memcpy(key.pk, t->x25519_public, sizeof(key.pk));
	uint8_t *msg = NULL;
	size_t msg_len = 0;
	r = sealed_request_seal(&key, SEALED_MEDIA_SOVMESH, NULL, (uint64_t)time(NULL),
	                        (const uint8_t *)payload, payload_len, &msg, &msg_len, &c->sc);
	wipe_free(payload, payload_len);
	if (r < 0) {
		call_free(c);
		sovmesh_fail(err, r == -ENOMEM ? -ENOMEM : -EINVAL,
		             "peer inference: cannot seal the request to %.16s...: %s",
		             t->fingerprint_hex, strerror(-r));
		return NULL;
	}
	peer_request pr = {
	    .fingerprint_hex = t->fingerprint_hex,
	    .host = t->host,
	    .port = t->port,
	    .method = "POST",
	    .path = PEER_INFER_PATH,
	    .content_type = PEER_INFER_MEDIA_REQUEST,
	    .body = msg,
	    .body_len = msg_len,
	    .timeout_ms = timeout_ms ? timeout_ms : DEFAULT_TIMEOUT_MS,
	};
	c->pcall = peer_client_request(pc, &pr, &call_cbs, c, err);
	free(msg); /* sealed: nothing to wipe */
	if (!c->pcall) {
		call_free(c);
		return NULL;
	}
	log_debug("peer inference: %s %s sent to %.16s...", infer_kind_name(req->kind), req->model,
	          t->fingerprint_hex);
	return c;
}

void peer_infer_cancel(peer_infer_call *c)
{
	if (!c || c->cancelled)
		return;
	c->cancelled = true;
	if (c->pcall)
		peer_client_cancel(c->pcall);
	c->pcall = NULL;
	/* From inside on_chunk the body handler frees it on return; from
	 * inside on_done, on_call_done does. */
	if (!c->in_cb)
		call_free(c);
}

/* ================================================================ */
/* serving side                                                      */
/* ================================================================ */

typedef struct job job;

struct peer_infer_server {
	const identity *id;
	local_backend *lb;
	int serve_inference;
	uint32_t max_concurrent;
	int (*is_hot)(void *ud);
	void *ud;
	struct sealed_gateway_key key;
	struct sealed_replay_cache *replay;
	peer_infer_server_stats stats;
	job *jobs; /* open answers */
};

struct job {
	peer_infer_server *s;
	job *prev, *next;
	http_response *resp; /* our reference */
	struct sealed_server *ss;
	struct sealed_stream *st;
	infer_request req;
	local_call *lc;
	bool started; /* status line and response nonce sent */
	uint64_t chunks;
	uint64_t t0; /* uv_hrtime */
	char peer[FP_SHOW + 1];
};

static void job_free(job *j)
{
	peer_infer_server *s = j->s;
	if (j->prev)
		j->prev->next = j->next;
	else
		s->jobs = j->next;
	if (j->next)
		j->next->prev = j->prev;
	s->stats.active--;
	sealed_stream_free(j->st);
	sealed_server_free(j->ss);
	infer_request_clear(&j->req);
	free(j);
}

/* Stop without a proper end (client gone, or we cannot write): the
 * backend call is cancelled and the connection closed, so the asking side
 * sees a cut stream. */
static void job_abort(job *j, const char *why)
{
	log_info("peer inference for %s...: %s %s stopped after %llu chunk%s: %s", j->peer,
	         infer_kind_name(j->req.kind), j->req.model, (unsigned long long)j->chunks,
	         j->chunks == 1 ? "" : "s", why);
	if (j->lc)
		local_backend_cancel(j->s->lb, j->lc);
	j->lc = NULL;
	http_response_on_cancel(j->resp, NULL, NULL);
	http_response_unref(j->resp);
	job_free(j);
}

static void on_job_cancel(void *ud, http_response *resp)
{
	(void)resp;
	job_abort(ud, "the peer went away");
}

/* Status line, then the response nonce. */
static int job_start_stream(job *j)
{
	uint8_t hdr[SEALED_RESPONSE_NONCE_MAX];
	size_t hdr_len = 0;
	int r = sealed_stream_begin_server(j->ss, NULL, hdr, &hdr_len, &j->st);
	if (r < 0)
		return r;
	r = http_response_start(j->resp, 200, PEER_INFER_MEDIA_RESPONSE);
	if (r < 0)
		return r;
	j->started = true;
	return http_response_write(j->resp, hdr, hdr_len);
}

static int job_write_frame(job *j, int final, const void *pt, size_t len)
{
	uint8_t *frame = NULL;
	size_t frame_len = 0;
	int r = sealed_stream_seal_chunk(j->st, final, pt, len, &frame, &frame_len);
	if (r < 0)
		return r;
	/*
	 * No back-pressure: frames are queued however slowly the peer reads
	 * (http_response_queued_bytes() would tell).  An answer is a few
	 * hundred KiB at most and the engine is slower than the link, so
	 * the queue stays small; a peer that never reads is bounded by the
	 * call's timeout.  Past ~1 MiB queued, pausing the backend would be
	 * the fix, which the backend API does not offer.
	 */
	r = http_response_write(j->resp, frame, frame_len);
	free(frame);
	return r;
}

/* The backend's end: the final frame (or, before any chunk, a status). */
static void on_job_done(void *ud, const sovmesh_backend_status *st)
{
	job *j = ud;
	peer_infer_server *s = j->s;
	j->lc = NULL; /* ended; local_backend has released it */
	char why[400];
	snprintf(why, sizeof(why), "%s",
	         st->message && *st->message ? st->message : strerror(st->code ? -st->code : EIO));
	log_one_line(why);
	double secs = (double)(uv_hrtime() - j->t0) / 1e9;

	if (st->code != 0 && !j->started) {
		int status = st->code == -ENOENT ? 404 : st->code == -EBUSY ? 503 : 502;
		if (status == 503)
			s->stats.refused_busy++;
		else
			s->stats.failed++;
		log_info("peer inference for %s...: %s %s refused by the backend (%d): %s", j->peer,
		         infer_kind_name(j->req.kind), j->req.model, status, why);
		http_response_on_cancel(j->resp, NULL, NULL);
		http_response_send_error(j->resp, status, why);
		job_free(j);
		return;
	}

	int r = j->started ? 0 : job_start_stream(j);
	json_t *t = st->code == 0 ? json_pack("{s:s}", "done_status", "ok")
	                          : json_pack("{s:s,s:s}", "done_status", "error", "error", why);
	char *text = t ? json_dumps(t, JSON_COMPACT) : NULL;
	json_decref(t);
	if (r == 0)
		r = text ? job_write_frame(j, 1, text, strlen(text)) : -ENOMEM;
	free(text);
	if (r < 0) {
		job_abort(j, r == -ECONNRESET ? "the peer went away" : strerror(-r));
		return;
	}
	if (st->code == 0) {
		s->stats.served++;
		log_info("peer inference for %s...: %s %s answered, %llu chunk%s in %.1f s",
		         j->peer, infer_kind_name(j->req.kind), j->req.model,
		         (unsigned long long)j->chunks, j->chunks == 1 ? "" : "s", secs);
	} else {
		s->stats.failed++;
		log_info("peer inference for %s...: %s %s failed after %llu chunk%s: %s", j->peer,
		         infer_kind_name(j->req.kind), j->req.model, (unsigned long long)j->chunks,
		         j->chunks == 1 ? "" : "s", why);
	}
	http_response_on_cancel(j->resp, NULL, NULL);
	http_response_end(j->resp);
	job_free(j);
}

static void on_job_chunk(void *ud, const sovmesh_gen_chunk *chunk)
{
	job *j = ud;
	int r = j->started ? 0 : job_start_stream(j);
	if (r == 0)
		r = job_write_frame(j, 0, chunk->json, chunk->json_len);
	if (r == -EMSGSIZE) {
		/* One object over SEALED_MAX_CHUNK: stop, with an error trailer. */
		local_backend_cancel(j->s->lb, j->lc);
		sovmesh_backend_status st = {
		    .size = sizeof(st),
		    .code = -EMSGSIZE,
		    .message = "an answer chunk was larger than the peer protocol allows",
		};
		on_job_done(j, &st);
		return;
	}
	if (r < 0) {
		job_abort(j, r == -ECONNRESET ? "the peer went away" : strerror(-r));
		return;
	}
	j->chunks++;
}

static const sovmesh_gen_callbacks job_cbs = {
    .size = sizeof(sovmesh_gen_callbacks),
    .on_chunk = on_job_chunk,
    .on_done = on_job_done,
};

/* Why a request arriving now would be refused as busy, or NULL. */
static const char *busy_reason(const peer_infer_server *s)
{
	if (s->stats.active >= s->max_concurrent)
		return "peer request slots are full";
	if (local_backend_busy(s->lb))
		return "the local backend is busy";
	if (s->is_hot && s->is_hot(s->ud))
		return "the node is too hot";
	return NULL;
}

/* Content-Type `ct` is `want` (parameters ignored). */
static bool media_is(const char *ct, const char *want)
{
	size_t n = strlen(want);
	if (!ct || strncasecmp(ct, want, n) != 0)
		return false;
	ct += n;
	while (*ct == ' ' || *ct == '\t')
		ct++;
	return *ct == '\0' || *ct == ';';
}

static void refuse(peer_infer_server *s, http_response *resp, const char *peer, int status,
                   const char *fmt, ...) SOVMESH_PRINTF(5, 6);
static void refuse(peer_infer_server *s, http_response *resp, const char *peer, int status,
                   const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_one_line(msg);
	if (status == 503) {
		s->stats.refused_busy++;
		log_debug("peer inference for %s...: refused (503): %s", peer, msg);
	} else if (status == 403) {
		s->stats.refused_off++;
		log_debug("peer inference for %s...: refused (403): %s", peer, msg);
	} else {
		if (status != 500)
			s->stats.refused_invalid++;
		log_info("peer inference for %s...: refused (%d): %s", peer, status, msg);
	}
	http_response_send_error(resp, status, msg);
}

static void on_infer(void *ud, const http_request *req, http_response *resp)
{
	peer_infer_server *s = ud;
	char peer[FP_SHOW + 1];
	snprintf(peer, sizeof(peer), "%s", req->peer_fingerprint ? req->peer_fingerprint : "?");

	if (!s->serve_inference) {
		refuse(s, resp, peer, 403, "this node does not serve inference to peers");
		return;
	}
	if (!media_is(http_request_header(req, "Content-Type"), PEER_INFER_MEDIA_REQUEST)) {
		refuse(s, resp, peer, 400, "expected Content-Type %s", PEER_INFER_MEDIA_REQUEST);
		return;
	}
	if (req->body_len > PEER_INFER_MAX_REQUEST) {
		refuse(s, resp, peer, 400, "sealed request larger than %u bytes",
		       (unsigned)PEER_INFER_MAX_REQUEST);
		return;
	}
	/* Opened (and its enc remembered) before the busy check, so a request
	 * refused as busy cannot be replayed into a free slot later. */
	uint8_t *pt = NULL;
	size_t pt_len = 0;
	struct sealed_server *ss = NULL;
	int r = sealed_request_open(&s->key, SEALED_MEDIA_SOVMESH, s->replay, (uint64_t)time(NULL),
	                            (const uint8_t *)req->body, req->body_len, &pt, &pt_len, &ss);
	switch (r) {
	case 0:
		break;
	case -ENOKEY:
		refuse(s, resp, peer, 421, "sealed to another key id");
		return;
	case -EALREADY:
		refuse(s, resp, peer, 409, "replayed request");
		return;
	case -ESTALE:
		refuse(s, resp, peer, 400,
		       "request timestamp more than %d s away from this node's clock",
		       SEALED_REPLAY_WINDOW_SECS);
		return;
	case -EBUSY:
		refuse(s, resp, peer, 503, "too many recent requests");
		return;
	case -ENOTSUP:
		refuse(s, resp, peer, 400, "unsupported HPKE suite");
		return;
	case -ENOMEM:
		refuse(s, resp, peer, 500, "out of memory");
		return;
	default:
		refuse(s, resp, peer, 400, "not a sealed request for this node");
		return;
	}
	const char *busy = busy_reason(s);
	if (busy) {
		wipe_free(pt, pt_len);
		sealed_server_free(ss);
		refuse(s, resp, peer, 503, "%s", busy);
		return;
	}
	job *j = calloc(1, sizeof(*j));
	if (!j) {
		wipe_free(pt, pt_len);
		sealed_server_free(ss);
		refuse(s, resp, peer, 500, "out of memory");
		return;
	}
	j->ss = ss;
	sovmesh_error err = {0};
	r = infer_request_from_peer_payload(pt, pt_len, &j->req, &err);
	wipe_free(pt, pt_len);
	size_t body_len = 0;
	char *body = r == 0 ? infer_request_body_text(&j->req, &body_len) : NULL;
	if (!body) {
		if (r == 0)
			infer_request_clear(&j->req);
		sealed_server_free(ss);
		free(j);
		if (r == -EINVAL) {
			/* The reason may quote the payload (its text): the log
			 * gets it at debug only; the sender gets it whole. */
			s->stats.refused_invalid++;
			log_info("peer inference for %s...: refused (400): malformed payload",
			         peer);
			log_debug("peer inference for %s...: %s", peer, err.message);
			http_response_send_error(
			    resp, 400, err.message[0] ? err.message : "malformed payload");
		} else {
			refuse(s, resp, peer, 500, "out of memory");
		}
		return;
	}

	j->s = s;
	j->resp = resp;
	j->t0 = uv_hrtime();
	memcpy(j->peer, peer, sizeof(j->peer));
	j->next = s->jobs;
	if (s->jobs)
		s->jobs->prev = j;
	s->jobs = j;
	s->stats.active++;
	http_response_on_cancel(resp, on_job_cancel, j);
	/* The status line waits for the first chunk, so an error the backend
	 * knows before answering (no such model, busy) is still a status. */
	sovmesh_gen_request gr = {
	    .size = sizeof(gr),
	    .kind = j->req.kind,
	    .model = j->req.model,
	    .body_json = body,
	    .body_len = body_len,
	    .stream = j->req.stream,
	    .timeout_ms = DEFAULT_TIMEOUT_MS,
	};
	log_debug("peer inference for %s...: %s %s admitted", peer, infer_kind_name(j->req.kind),
	          j->req.model);
	j->lc = local_backend_generate(s->lb, LOCAL_ORIGIN_PEER, &gr, &job_cbs, j);
	wipe_free(body, body_len);
	if (!j->lc) {
		s->stats.failed++;
		log_warning("peer inference for %s...: the backend did not start the call", peer);
		http_response_on_cancel(resp, NULL, NULL);
		http_response_send_error(resp, 502, "the backend could not start the request");
		job_free(j);
	}
}

int peer_infer_server_register(peer_transport *pt, const peer_infer_server_options *opts,
                               peer_infer_server **out)
{
	if (!pt || !opts || !opts->id || !opts->lb || !out)
		return -EINVAL;
	peer_infer_server *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->id = opts->id;
	s->lb = opts->lb;
	s->serve_inference = opts->serve_inference;
	s->max_concurrent = opts->max_concurrent;
	s->is_hot = opts->is_hot;
	s->ud = opts->ud;
	s->key.key_id = PEER_INFER_KEY_ID;
	memcpy(s->key.sk, opts->id->x25519_private, sizeof(s->key.sk));
	s->replay = sealed_replay_cache_new(0);
	if (!s->replay) {
		peer_infer_server_free(s);
		return -ENOMEM;
	}
	int r = peer_transport_route(pt, "POST", PEER_INFER_PATH, on_infer, s);
	if (r < 0) {
		peer_infer_server_free(s);
		return r;
	}
	*out = s;
	return 0;
}

void peer_infer_server_set_limits(peer_infer_server *s, int serve_inference,
                                  uint32_t max_concurrent)
{
	if (!s)
		return;
	s->serve_inference = serve_inference;
	s->max_concurrent = max_concurrent;
}

int peer_infer_server_accepting(const peer_infer_server *s)
{
	return s && s->serve_inference && !busy_reason(s);
}

void peer_infer_server_get_stats(const peer_infer_server *s, peer_infer_server_stats *out)
{
	if (!out)
		return;
	if (s)
		*out = s->stats;
	else
		memset(out, 0, sizeof(*out));
}

void peer_infer_server_free(peer_infer_server *s)
{
	if (!s)
		return;
	/* Normally the transport's close has cancelled every answer already;
	 * any left get no answer (dropping the response closes it). */
	while (s->jobs) {
		job *j = s->jobs;
		if (j->lc)
			local_backend_cancel(s->lb, j->lc);
		j->lc = NULL;
		http_response_on_cancel(j->resp, NULL, NULL);
		http_response_unref(j->resp);
		job_free(j);
	}
	sealed_replay_cache_free(s->replay);
	gnutls_memset(&s->key, 0, sizeof(s->key));
	free(s);
}

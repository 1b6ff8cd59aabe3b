/* Sealed delta transport between paired peers (see fl_exchange.h). */
#include "fl_exchange.h"

#include <errno.h>
#include <gnutls/gnutls.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "http_server.h"
#include "log.h"
#include "sealed_message.h"

#define MAX_ERROR_BODY 4096
#define FP_SHOW        16

struct fl_exchange {
	peer_client *pc;
	struct sealed_gateway_key key;
	struct sealed_replay_cache *replay;
	size_t max_plaintext;
	fl_exchange_receiver rcv;
	fl_exchange_call *calls;
};

struct fl_exchange_call {
	fl_exchange *x;
	peer_call *pcall;
	void (*done)(void *ud, int code, long status, const char *message);
	void *ud;
	char peer[FP_SHOW + 1];
	long status;
	char body[MAX_ERROR_BODY + 1];
	size_t body_len;
	fl_exchange_call *prev, *next;
};

static void wipe_free(void *p, size_t n)
{
	if (p)
		gnutls_memset(p, 0, n);
	free(p);
}

/* ---- receiving ------------------------------------------------------------ */

static int media_is(const char *ct, const char *want)
{
	size_t n = strlen(want);
	if (!ct || strncasecmp(ct, want, n) != 0)
		return 0;
	ct += n;
	while (*ct == ' ' || *ct == '\t')
		ct++;
	return *ct == '\0' || *ct == ';';
}

static void refuse(http_response *resp, const char *peer, int status, const char *fmt, ...)
    SOVMESH_PRINTF(4, 5);
static void refuse(http_response *resp, const char *peer, int status, const char *fmt, ...)
{
	char msg[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_warning("fl: refused a delta from %s...: (%d) %s", peer, status, msg);
	http_response_send_error(resp, status, msg);
}

static void on_delta_request(void *ud, const http_request *req, http_response *resp)
{
	fl_exchange *x = ud;
	char peer[FP_SHOW + 1];
	snprintf(peer, sizeof(peer), "%s", req->peer_fingerprint ? req->peer_fingerprint : "?");
	if (!x->rcv.enabled || !x->rcv.enabled(x->rcv.ud)) {
		refuse(resp, peer, 403, "federated learning is off on this node");
		return;
	}
	if (!req->peer_fingerprint) {
		refuse(resp, peer, 403, "no authenticated peer");
		return;
	}
	if (!media_is(http_request_header(req, "Content-Type"), FL_DELTA_MEDIA)) {
		refuse(resp, peer, 400, "expected Content-Type %s", FL_DELTA_MEDIA);
		return;
	}
	if (req->body_len > x->max_plaintext + FL_DELTA_SEAL_OVERHEAD) {
		refuse(resp, peer, 413, "delta of %zu bytes is over this node's limit of %zu "
		                        "(federated_learning.max_delta_bytes)",
		       req->body_len, x->max_plaintext);
		return;
	}
	uint8_t *pt = NULL;
	size_t pt_len = 0;
	struct sealed_server *ss = NULL;
	int r = sealed_request_open(&x->key, SEALED_MEDIA_SOVMESH_FL, x->replay,
	                            (uint64_t)time(NULL), (const uint8_t *)req->body,
	                            req->body_len, &pt, &pt_len, &ss);
	sealed_server_free(ss);
	switch (r) {
	case 0:
		break;
	case -ENOKEY:
		refuse(resp, peer, 421, "sealed to another key id");
		return;
	case -EALREADY:
		refuse(resp, peer, 409, "replayed request");
		return;
	case -ESTALE:
		refuse(resp, peer, 400,
		       "request timestamp more than %d s away from this node's clock",
		       SEALED_REPLAY_WINDOW_SECS);
		return;
	case -EBUSY:
		refuse(resp, peer, 503, "too many recent requests");
		return;
	case -ENOMEM:
		refuse(resp, peer, 500, "out of memory");
		return;
	default:
		refuse(resp, peer, 400, "not a sealed delta for this node");
		return;
	}
	char msg[600] = "";
	int status = x->rcv.on_delta(x->rcv.ud, req->peer_fingerprint, pt, pt_len, msg,
	                             sizeof(msg));
	wipe_free(pt, pt_len);
	if (status == 200) {
		static const char ok[] = "{\"stored\":true}";
		http_response_send(resp, 200, "application/json", ok, sizeof(ok) - 1);
		return;
	}
	refuse(resp, peer, status, "%s", msg[0] ? msg : "refused");
}

int fl_exchange_new(peer_transport *pt, peer_client *pc, const identity *id,
                    size_t max_plaintext, const fl_exchange_receiver *rcv, fl_exchange **out,
                    sovmesh_error *err)
{
	fl_exchange *x = calloc(1, sizeof(*x));
	if (!x)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	x->pc = pc;
	x->max_plaintext = max_plaintext;
	if (rcv)
		x->rcv = *rcv;
	x->key.key_id = FL_DELTA_KEY_ID;
	memcpy(x->key.sk, id->x25519_private, sizeof(x->key.sk));
	x->replay = sealed_replay_cache_new(0);
	if (!x->replay) {
		fl_exchange_free(x);
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	}
	if (pt) {
		int r = peer_transport_route(pt, "POST", FL_DELTA_PATH, on_delta_request, x);
		if (r < 0) {
			fl_exchange_free(x);
			return sovmesh_fail(err, r, "cannot serve %s: %s", FL_DELTA_PATH,
			                    strerror(-r));
		}
	}
	*out = x;
	return 0;
}

void fl_exchange_set_max(fl_exchange *x, size_t max_plaintext)
{
	if (x)
		x->max_plaintext = max_plaintext;
}

/* ---- sending -------------------------------------------------------------- */

static void call_unlink(fl_exchange_call *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else if (c->x->calls == c)
		c->x->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->prev = c->next = NULL;
}

static void on_status(void *ud, long status)
{
	fl_exchange_call *c = ud;
	c->status = status;
}

static int on_body(void *ud, const char *data, size_t len)
{
	fl_exchange_call *c = ud;
	size_t room = MAX_ERROR_BODY - c->body_len;
	size_t n = len < room ? len : room;
	memcpy(c->body + c->body_len, data, n);
	c->body_len += n;
	c->body[c->body_len] = '\0';
	return 0;
}

static void on_done(void *ud, int result, long status, const char *message)
{
	fl_exchange_call *c = ud;
	call_unlink(c);
	if (status)
		c->status = status;
	int code = result;
	char msg[700];
	if (result < 0) {
		snprintf(msg, sizeof(msg), "%s", message ? message : strerror(-result));
	} else {
		json_t *j = json_loadb(c->body, c->body_len, 0, NULL);
		const char *e = json_string_value(json_object_get(j, "error"));
		snprintf(msg, sizeof(msg), "peer %s... answered %ld%s%s", c->peer, c->status,
		         e ? ": " : "", e ? e : "");
		json_decref(j);
		switch (c->status) {
		case 200:
			code = 0;
			break;
		case 403:
			code = -EPERM;
			break;
		case 409:
			code = -EALREADY;
			break;
		case 413:
			code = -E2BIG;
			break;
		case 503:
			code = -EBUSY;
			break;
		default:
			code = -EIO;
		}
	}
	c->done(c->ud, code, c->status, msg);
	free(c);
}

fl_exchange_call *fl_exchange_send(fl_exchange *x, const fl_exchange_target *t,
                                   const uint8_t *pt, size_t len, unsigned timeout_ms,
                                   void (*done)(void *ud, int code, long status,
                                                const char *message),
                                   void *ud, sovmesh_error *err)
{
	if (!x->pc) {
		sovmesh_fail(err, -ENOTCONN, "no peer network");
		return NULL;
	}
	struct sealed_key key = {.key_id = FL_DELTA_KEY_ID,
	                         .aead_id = HPKE_AEAD_CHACHA20POLY1305};
	memcpy(key.pk, t->x25519_public, sizeof(key.pk));
	uint8_t *sealed = NULL;
	size_t sealed_len = 0;
	struct sealed_client *sc = NULL;
	int r = sealed_request_seal(&key, SEALED_MEDIA_SOVMESH_FL, NULL, (uint64_t)time(NULL), pt,
	                            len, &sealed, &sealed_len, &sc);
	sealed_client_free(sc);
	if (r < 0) {
		sovmesh_fail(err, r, "cannot seal the delta: %s", strerror(-r));
		return NULL;
	}
	fl_exchange_call *c = calloc(1, sizeof(*c));
	if (!c) {
		free(sealed);
		sovmesh_fail(err, -ENOMEM, "out of memory");
		return NULL;
	}
	c->x = x;
	c->done = done;
	c->ud = ud;
	snprintf(c->peer, sizeof(c->peer), "%s", t->fingerprint_hex);
	peer_request req = {
	    .fingerprint_hex = t->fingerprint_hex,
	    .host = t->host,
	    .port = t->port,
	    .method = "POST",
	    .path = FL_DELTA_PATH,
	    .content_type = FL_DELTA_MEDIA,
	    .body = sealed,
	    .body_len = sealed_len,
	    .timeout_ms = timeout_ms,
	};
	static const sovmesh_http_callbacks cbs = {
	    .size = sizeof(cbs), .on_status = on_status, .on_body = on_body, .on_done = on_done};
	c->pcall = peer_client_request(x->pc, &req, &cbs, c, err);
	free(sealed);
	if (!c->pcall) {
		free(c);
		return NULL;
	}
	c->next = x->calls;
	if (x->calls)
		x->calls->prev = c;
	x->calls = c;
	return c;
}

void fl_exchange_cancel(fl_exchange_call *c)
{
	if (!c)
		return;
	call_unlink(c);
	peer_client_cancel(c->pcall);
	free(c);
}

void fl_exchange_free(fl_exchange *x)
{
	if (!x)
		return;
	while (x->calls)
		fl_exchange_cancel(x->calls);
	sealed_replay_cache_free(x->replay);
	gnutls_memset(&x->key, 0, sizeof(x->key));
	free(x);
}

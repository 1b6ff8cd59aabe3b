/* Control API endpoints for pairing (see control_pairing.h). */
#include "control_pairing.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "control_trust.h"
#include "hostport.h"
#include "log.h"
#include "pair_uri.h"
#include "qr.h"

typedef enum offer_state {
	OFFER_NONE,
	OFFER_WAITING,
	OFFER_PAIRED,
	OFFER_EXPIRED,
	OFFER_BURNED,
	OFFER_FAILED,
} offer_state;

static const char *const state_names[] = {
    [OFFER_NONE] = "none",       [OFFER_WAITING] = "waiting", [OFFER_PAIRED] = "paired",
    [OFFER_EXPIRED] = "expired", [OFFER_BURNED] = "burned",   [OFFER_FAILED] = "failed",
};

struct control_pairing {
	control_pairing_ctx ctx;
	pairing *engine;
	offer_state state;
	char reason[256];
	json_t *paired_peer; /* the last offer's peer, for /v1/pair/status */
	char *uri;           /* the outstanding offer's URI */
	/* This node's peer-port addresses, announced in pair-hello. */
	char announce[PAIR_MAX_ADDRS][HOSTPORT_TEXT_MAX];
	const char *announce_ptrs[PAIR_MAX_ADDRS];
	size_t n_announce;
};

static json_t *hello_json(const pair_hello *h)
{
	json_t *addrs = json_array();
	for (size_t i = 0; i < h->n_addresses; i++)
		json_array_append_new(addrs, json_string(h->addresses[i]));
	return json_pack("{s:s, s:s, s:s, s:o}", "name", h->name, "fingerprint", h->fingerprint_hex,
	                 "short_fingerprint", h->short_fp, "addresses", addrs);
}

/* Pin a peer that completed the exchange (both roles call this). */
static int pin_peer(void *ud, const pair_hello *h, sovmesh_error *err)
{
	control_pairing *cp = ud;
	trusted_peer p = {0};
	char *addrs[PAIR_MAX_ADDRS];
	memcpy(p.fingerprint_hex, h->fingerprint_hex, sizeof(p.fingerprint_hex));
	p.name = (char *)h->name;
	memcpy(p.x25519_public, h->x25519_public, sizeof(p.x25519_public));
	for (size_t i = 0; i < h->n_addresses; i++)
		addrs[i] = (char *)h->addresses[i];
	p.addresses = addrs;
	p.n_addresses = h->n_addresses;
	p.paired_at = (int64_t)time(NULL);
	if (strcmp(h->fingerprint_hex, cp->ctx.id->fingerprint_hex) == 0)
		return sovmesh_fail(err, -EINVAL, "refusing to pair with this node's own identity");
	return trust_store_add(cp->ctx.ts, &p, err);
}

static void on_pairing_event(void *ud, const pairing_event *ev)
{
	control_pairing *cp = ud;
	snprintf(cp->reason, sizeof(cp->reason), "%s", ev->message);
	switch (ev->type) {
	case PAIRING_PAIRED:
		cp->state = OFFER_PAIRED;
		json_decref(cp->paired_peer);
		cp->paired_peer = hello_json(ev->peer);
		/* "Both instances confirm the pairing": the issuer's side. */
		log_notice("paired with %s (%s): both devices now trust each other", ev->peer->name,
		           ev->peer->short_fp);
		break;
	case PAIRING_ATTEMPT_FAILED:
		log_warning("pairing: %s (%u attempt%s left)", ev->message, ev->attempts_left,
		            ev->attempts_left == 1 ? "" : "s");
		return;
	case PAIRING_BURNED:
		cp->state = OFFER_BURNED;
		log_warning("pairing code burned: %s", ev->message);
		break;
	case PAIRING_EXPIRED:
		cp->state = OFFER_EXPIRED;
		log_notice("pairing code expired: %s", ev->message);
		break;
	case PAIRING_FAILED:
		cp->state = OFFER_FAILED;
		log_warning("pairing failed: %s", ev->message);
		break;
	}
	free(cp->uri);
	cp->uri = NULL;
	if (cp->ctx.on_pairing_port)
		cp->ctx.on_pairing_port(cp->ctx.ud, 0);
}

static int handle_code(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)req;
	control_pairing *cp = ud;
	pairing_offer_info info;
	sovmesh_error err = {0};
	if (pairing_offer_new(cp->engine, &info, &err) < 0) {
		*status = 500;
		*reply = control_api_error("cannot offer a pairing code: %s", err.message);
		return 0;
	}
	/* The URI names the pairing listener's reachable addresses. */
	hostport listen;
	const char *why = NULL;
	pair_uri u = {0};
	snprintf(u.name, sizeof(u.name), "%s", cp->ctx.id->node_name);
	memcpy(u.fingerprint_hex, cp->ctx.id->fingerprint_hex, sizeof(u.fingerprint_hex));
	pair_code_normalize(info.code, u.code, NULL);
	u.port = (uint16_t)cp->ctx.peer_port;
	if (hostport_parse(info.listen, 1, &listen, &why) == 0)
		u.n_addrs = hostport_reachable(listen.host, info.port, u.addrs, PAIR_MAX_ADDRS);
	char *uri = NULL;
	if (pair_uri_build(&u, &uri, &err) < 0) {
		pairing_offer_cancel(cp->engine);
		*status = 500;
		*reply = control_api_error("cannot build the pairing URI: %s", err.message);
		return 0;
	}
	free(cp->uri);
	cp->uri = uri;
	cp->state = OFFER_WAITING;
	cp->reason[0] = '\0';
	json_decref(cp->paired_peer);
	cp->paired_peer = NULL;
	json_t *addrs = json_array();
	for (size_t i = 0; i < u.n_addrs; i++)
		json_array_append_new(addrs, json_string(u.addrs[i]));
	int64_t left = info.expires_at - (int64_t)time(NULL);
	*reply = json_pack("{s:s, s:I, s:I, s:i, s:s, s:o}", "code", info.code, "expires_at",
	                   (json_int_t)info.expires_at, "expires_in_secs",
	                   (json_int_t)(left > 0 ? left : 0), "attempts_left",
	                   (int)info.attempts_left, "uri", uri, "addresses", addrs);
	if (cp->ctx.on_pairing_port)
		cp->ctx.on_pairing_port(cp->ctx.ud, info.port);
	log_notice("pairing code offered on %s, valid until %lld (a new code replaces it)",
	           info.listen, (long long)info.expires_at);
	*status = 200;
	return 0;
}

static int handle_status(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)req;
	control_pairing *cp = ud;
	json_t *st = json_pack("{s:s}", "state", state_names[cp->state]);
	pairing_offer_info info;
	if (cp->state == OFFER_WAITING && pairing_offer_get(cp->engine, &info)) {
		int64_t left = info.expires_at - (int64_t)time(NULL);
		json_object_set_new(st, "expires_in_secs", json_integer(left > 0 ? left : 0));
		json_object_set_new(st, "attempts_left", json_integer(info.attempts_left));
	}
	if (cp->reason[0])
		json_object_set_new(st, "reason", json_string(cp->reason));
	if (cp->paired_peer)
		json_object_set(st, "peer", cp->paired_peer);
	*reply = st;
	*status = 200;
	return 0;
}

static void handle_qr_svg(void *ud, const control_request *req, http_response *resp)
{
	(void)req;
	control_pairing *cp = ud;
	if (cp->state != OFFER_WAITING || !cp->uri) {
		control_api_reply_error(resp, 404, "no pairing code is outstanding");
		return;
	}
	char *svg = NULL;
	sovmesh_error err = {0};
	if (qr_render_svg(cp->uri, &svg, &err) < 0) {
		control_api_reply_error(resp, 500, "%s", err.message);
		return;
	}
	http_response_add_header(resp, "Cache-Control", "no-store");
	http_response_send(resp, 200, "image/svg+xml", svg, strlen(svg));
	free(svg);
}

/* ---- join ---- */

/* One join request: a URI may name several addresses of the issuer. */
typedef struct join_req {
	control_pairing *cp;
	http_response *resp;
	pair_uri uri; /* n_addrs == 0 for a code + addr join */
	size_t next;  /* next address of uri.addrs to try */
} join_req;

static void join_done(void *ud, int status, const pair_hello *peer, const char *message);

/* A URI pins the issuer's fingerprint; a code alone does not. */
static const char *expected_fp(const join_req *jr)
{
	return jr->uri.fingerprint_hex[0] ? jr->uri.fingerprint_hex : NULL;
}

static int join_start(join_req *jr, const char *code, const char *addr, const char *fp,
                      sovmesh_error *err)
{
	return pairing_join(jr->cp->engine, code, addr, fp, join_done, jr, err);
}

static void join_done(void *ud, int status, const pair_hello *peer, const char *message)
{
	join_req *jr = ud;
	if (status == 0) {
		/* "Both instances confirm the pairing": the joiner's side. */
		log_notice("paired with %s (%s): both devices now trust each other", peer->name,
		           peer->short_fp);
		control_api_reply(jr->resp, 200, json_pack("{s:o}", "peer", hello_json(peer)));
		free(jr);
		return;
	}
	/* Another address of the same issuer is worth a try only when nothing
	 * answered at this one: a refused code was a counted attempt. */
	sovmesh_error err = {0};
	if ((status == -ECONNREFUSED || status == -ETIMEDOUT || status == -EHOSTUNREACH ||
	     status == -ENETUNREACH) &&
	    jr->next < jr->uri.n_addrs) {
		const char *addr = jr->uri.addrs[jr->next++];
		log_info("pairing: %s; trying %s", message, addr);
		if (join_start(jr, jr->uri.code, addr, expected_fp(jr), &err) == 0)
			return;
		message = err.message;
	}
	int http = 502;
	if (status == -EACCES || status == -EPERM)
		http = 403;
	else if (status == -ETIMEDOUT)
		http = 504;
	else if (status == -EINVAL)
		http = 400;
	log_warning("pairing as joiner failed: %s", message);
	control_api_reply_error(jr->resp, http, "%s", message);
	free(jr);
}

static void handle_join(void *ud, const control_request *req, http_response *resp)
{
	control_pairing *cp = ud;
	json_t *body = req->body;
	const char *code = json_string_value(json_object_get(body, "code"));
	const char *addr = json_string_value(json_object_get(body, "addr"));
	const char *uri = json_string_value(json_object_get(body, "uri"));
	sovmesh_error err = {0};
	join_req *jr = calloc(1, sizeof(*jr));
	if (!jr) {
		control_api_reply_error(resp, 500, "out of memory");
		return;
	}
	jr->cp = cp;
	jr->resp = resp;
	int r;
	if (uri) {
		if (pair_uri_parse(uri, &jr->uri, &err) < 0) {
			control_api_reply_error(resp, 400, "%s", err.message);
			free(jr);
			return;
		}
		jr->next = 1;
		r = join_start(jr, jr->uri.code, jr->uri.addrs[0], expected_fp(jr), &err);
	} else if (code && !addr) {
		/* No address: try the devices discovery saw with a pairing
		 * listener open, in order (see join_done for when it moves on). */
		char cand[PAIR_MAX_ADDRS][HOSTPORT_TEXT_MAX];
		size_t n = cp->ctx.ptable
		               ? peer_table_pairing_candidates(cp->ctx.ptable, cand, PAIR_MAX_ADDRS)
		               : 0;
		if (n == 0) {
			control_api_reply_error(resp, 404,
			                        "no device offering a pairing code was discovered; "
			                        "give its address with --addr HOST:PORT");
			free(jr);
			return;
		}
		if (pair_code_normalize(code, jr->uri.code, &err) < 0) {
			control_api_reply_error(resp, 400, "%s", err.message);
			free(jr);
			return;
		}
		_Static_assert(sizeof(cand[0]) == sizeof(jr->uri.addrs[0]), "address sizes");
		for (size_t i = 0; i < n; i++)
			memcpy(jr->uri.addrs[i], cand[i], sizeof(cand[i]));
		jr->uri.n_addrs = n;
		jr->next = 1;
		r = join_start(jr, jr->uri.code, jr->uri.addrs[0], NULL, &err);
	} else if (!code) {
		control_api_reply_error(resp, 400, "give {\"code\"[, \"addr\"]} or {\"uri\"}");
		free(jr);
		return;
	} else {
		r = join_start(jr, code, addr, NULL, &err);
	}
	/* From here join_done completes the response whatever happens; if the
	 * CLI goes away meanwhile, replying costs nothing. */
	if (r < 0) {
		control_api_reply_error(resp, 400, "%s", err.message);
		free(jr);
	}
}

int control_pairing_new(uv_loop_t *loop, control_api *api, const control_pairing_ctx *ctx,
                        control_pairing **out, sovmesh_error *err)
{
	control_pairing *cp = calloc(1, sizeof(*cp));
	if (!cp)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	cp->ctx = *ctx;
	hostport peer_listen;
	const char *why = NULL;
	if (hostport_parse(ctx->peer_listen, 1, &peer_listen, &why) == 0)
		cp->n_announce = hostport_reachable(peer_listen.host, (uint16_t)ctx->peer_port,
		                                    cp->announce, PAIR_MAX_ADDRS);
	for (size_t i = 0; i < cp->n_announce; i++)
		cp->announce_ptrs[i] = cp->announce[i];
	pairing_config pc = {
	    .listen = ctx->pairing_listen,
	    .code_ttl_secs = ctx->code_ttl_secs,
	    .max_attempts = ctx->max_attempts,
	    .peer_port = (uint16_t)ctx->peer_port,
	    .addresses = cp->announce_ptrs,
	    .n_addresses = cp->n_announce,
	    .bind_host = NULL,
	};
	if (hostport_parse(ctx->peer_listen, 1, &peer_listen, &why) == 0 &&
	    strcmp(peer_listen.host, "0.0.0.0") != 0 && strcmp(peer_listen.host, "::") != 0)
		pc.bind_host = peer_listen.host;
	int r = pairing_new(loop, ctx->id, &pc, pin_peer, on_pairing_event, cp, &cp->engine, err);
	if (r < 0) {
		free(cp);
		return r;
	}
	if (control_api_route(api, "POST", "/v1/pair/code", handle_code, cp) < 0 ||
	    control_api_route(api, "GET", "/v1/pair/status", handle_status, cp) < 0 ||
	    control_api_route_async(api, "GET", "/v1/pair/qr.svg", handle_qr_svg, cp) < 0 ||
	    control_api_route_async(api, "POST", "/v1/pair/join", handle_join, cp) < 0) {
		pairing_close(cp->engine, NULL, NULL);
		free(cp);
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	}
	*out = cp;
	return 0;
}

void control_pairing_stop(control_pairing *cp)
{
	if (cp && cp->engine) {
		pairing_close(cp->engine, NULL, NULL);
		cp->engine = NULL;
	}
}

void control_pairing_free(control_pairing *cp)
{
	if (!cp)
		return;
	control_pairing_stop(cp);
	json_decref(cp->paired_peer);
	free(cp->uri);
	free(cp);
}

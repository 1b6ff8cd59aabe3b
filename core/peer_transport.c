/*
 * The peer port: the TLS http_server, the pin check against the trust
 * store, a small (method, path) route table, and revocation.  Handlers
 * get raw http requests (not control_api's JSON-only dispatcher) because
 * peer payloads include binary tensors and streamed answers.
 */
#include "peer_transport.h"

#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "hostport.h"
#include "log.h"

typedef struct peer_route {
	char *method;
	char *path;
	bool prefix; /* path ended in '*' */
	http_handler_fn fn;
	void *ud;
} peer_route;

struct peer_transport {
	uv_loop_t *loop;
	const identity *id;
	trust_store *ts;
	http_server *srv;
	peer_route *routes;
	size_t nroutes, cap;
	trust_change_fn chain_fn;
	void *chain_ud;
	void (*closed)(void *ud);
	void *closed_ud;
};

/* --- pinning and revocation --- */

static bool pin_ok(void *ud, const uint8_t fp[TLS_STREAM_FP_LEN])
{
	peer_transport *pt = ud;
	char hex[IDENTITY_FP_HEX_LEN + 1];
	identity_fp_to_hex(fp, hex);
	return trust_store_find(pt->ts, hex) != NULL;
}

size_t peer_transport_drop_peer(peer_transport *pt, const char *fingerprint_hex)
{
	uint8_t fp[IDENTITY_FP_LEN];
	if (!pt || identity_fp_from_hex(fingerprint_hex, fp) < 0)
		return 0;
	return http_server_drop_peer(pt->srv, fp);
}

static void on_trust_change(void *ud, const trusted_peer *peer, int removed)
{
	peer_transport *pt = ud;
	if (removed) {
		size_t n = peer_transport_drop_peer(pt, peer->fingerprint_hex);
		if (n)
			log_info("[peer] closed %zu connection%s of %s (%.16s...): the peer was "
			         "removed",
			         n, n == 1 ? "" : "s", peer->name ? peer->name : "?",
			         peer->fingerprint_hex);
	}
	if (pt->chain_fn)
		pt->chain_fn(pt->chain_ud, peer, removed);
}

/* --- routing --- */

static bool route_matches(const peer_route *r, const char *path)
{
	if (r->prefix)
		return strncmp(path, r->path, strlen(r->path) - 1) == 0;
	return strcmp(path, r->path) == 0;
}

static void send_json(http_response *resp, int status, json_t *j)
{
	char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!text) {
		http_response_send_error(resp, 500, "out of memory");
		return;
	}
	http_response_add_header(resp, "Cache-Control", "no-store");
	http_response_send(resp, status, "application/json", text, strlen(text));
	free(text);
}

static void hello(void *ud, const http_request *req, http_response *resp)
{
	(void)req;
	peer_transport *pt = ud;
	send_json(resp, 200,
	          json_pack("{s:s, s:s, s:i}", "name", pt->id->node_name, "fingerprint",
	                    pt->id->fingerprint_hex, "protocol", PEER_PROTOCOL_VERSION));
}

static void allowed_methods(const peer_transport *pt, const char *path, char *out, size_t len)
{
	size_t used = 0;
	out[0] = '\0';
	for (size_t i = 0; i < pt->nroutes; i++) {
		if (!route_matches(&pt->routes[i], path))
			continue;
		int n = snprintf(out + used, len - used, "%s%s", used ? ", " : "",
		                 pt->routes[i].method);
		if (n < 0 || (size_t)n >= len - used)
			break;
		used += (size_t)n;
	}
}

static void dispatch(void *ud, const http_request *req, http_response *resp)
{
	peer_transport *pt = ud;
	/* The pin was checked in the handshake and a removal closes the
	 * connection; this is the belt to those braces. */
	if (!req->peer_fingerprint || !trust_store_find(pt->ts, req->peer_fingerprint)) {
		http_response_send_error(resp, 403, "this node does not trust your certificate");
		return;
	}
	const peer_route *found = NULL;
	bool known = false;
	for (size_t i = 0; i < pt->nroutes && !found; i++) {
		if (!route_matches(&pt->routes[i], req->path))
			continue;
		known = true;
		if (strcmp(pt->routes[i].method, req->method) == 0)
			found = &pt->routes[i];
	}
	if (found) {
		found->fn(found->ud, req, resp);
		return;
	}
	char msg[512];
	if (!known) {
		snprintf(msg, sizeof(msg), "no such peer endpoint: %.400s", req->path);
		http_response_send_error(resp, 404, msg);
		return;
	}
	char allow[128];
	allowed_methods(pt, req->path, allow, sizeof(allow));
	http_response_add_header(resp, "Allow", allow);
	snprintf(msg, sizeof(msg), "method %.16s is not allowed on %.300s (allowed: %s)",
	         req->method, req->path, allow);
	http_response_send_error(resp, 405, msg);
}

int peer_transport_route(peer_transport *pt, const char *method, const char *path,
                         http_handler_fn fn, void *ud)
{
	if (!pt || !method || !*method || !path || !fn ||
	    strncmp(path, PEER_PATH_PREFIX, strlen(PEER_PATH_PREFIX)) != 0)
		return -EINVAL;
	for (size_t i = 0; i < pt->nroutes; i++)
		if (strcmp(pt->routes[i].method, method) == 0 &&
		    strcmp(pt->routes[i].path, path) == 0)
			return -EEXIST;
	if (pt->nroutes == pt->cap) {
		size_t cap = pt->cap ? pt->cap * 2 : 8;
		peer_route *r = realloc(pt->routes, cap * sizeof(*r));
		if (!r)
			return -ENOMEM;
		pt->routes = r;
		pt->cap = cap;
	}
	peer_route *r = &pt->routes[pt->nroutes];
	*r = (peer_route){.method = strdup(method), .path = strdup(path), .fn = fn, .ud = ud};
	if (!r->method || !r->path) {
		free(r->method);
		free(r->path);
		return -ENOMEM;
	}
	r->prefix = path[strlen(path) - 1] == '*';
	pt->nroutes++;
	return 0;
}

/* --- life cycle --- */

static void transport_free(peer_transport *pt)
{
	for (size_t i = 0; i < pt->nroutes; i++) {
		free(pt->routes[i].method);
		free(pt->routes[i].path);
	}
	free(pt->routes);
	free(pt);
}

int peer_transport_new(uv_loop_t *loop, const identity *id, trust_store *ts,
                       const peer_transport_options *opts, peer_transport **out, sovmesh_error *err)
{
	if (!loop || !id || !id->creds || !ts || !opts || !opts->listen || !out)
		return sovmesh_fail(err, -EINVAL,
		                    "peer port: missing identity, trust store or "
		                    "listen address");
	hostport hp;
	const char *why = NULL;
	if (hostport_parse(opts->listen, 1, &hp, &why) < 0)
		return sovmesh_fail(err, -EINVAL, "peer port: bad listen address \"%.100s\": %s",
		                    opts->listen, why ? why : "invalid");
	peer_transport *pt = calloc(1, sizeof(*pt));
	if (!pt)
		return sovmesh_fail(err, -ENOMEM, "peer port: out of memory");
	pt->loop = loop;
	pt->id = id;
	pt->ts = ts;
	pt->chain_fn = opts->on_trust_change;
	pt->chain_ud = opts->on_trust_change_ud;
	http_server_options so = {
	    .max_body_bytes = opts->max_body_bytes,
	    .idle_timeout_ms = opts->idle_timeout_ms,
	    .name = "peer",
	    .handler = dispatch,
	    .handler_ud = pt,
	};
	int r = peer_transport_route(pt, "GET", PEER_PATH_PREFIX "hello", hello, pt);
	if (r < 0 || http_server_new(loop, &so, &pt->srv) < 0) {
		transport_free(pt);
		return sovmesh_fail(err, -ENOMEM, "peer port: out of memory");
	}
	http_tls_config tc = {
	    .creds = id->creds,
	    .pin_ok = pin_ok,
	    .pin_ud = pt,
	    .priority = opts->priority,
	};
	sovmesh_error lerr = {0};
	r = http_server_listen_tls(pt->srv, hp.host, hp.port, &tc, &lerr);
	if (r < 0) {
		/* The server never listened, so this completes at once. */
		http_server_close(pt->srv, NULL, NULL);
		transport_free(pt);
		return sovmesh_fail(err, r, "peer port (mesh.peer_listen): %s", lerr.message);
	}
	trust_store_on_change(ts, on_trust_change, pt);
	log_info("[peer] listening on %s port %d (mutual TLS 1.3, %zu paired peer%s)", hp.host,
	         http_server_port(pt->srv), trust_store_count(ts),
	         trust_store_count(ts) == 1 ? "" : "s");
	*out = pt;
	return 0;
}

int peer_transport_port(const peer_transport *pt)
{
	return pt ? http_server_port(pt->srv) : -1;
}

size_t peer_transport_connection_count(const peer_transport *pt)
{
	return pt ? http_server_connection_count(pt->srv) : 0;
}

static void on_server_closed(void *ud)
{
	peer_transport *pt = ud;
	void (*closed)(void *) = pt->closed;
	void *closed_ud = pt->closed_ud;
	transport_free(pt);
	if (closed)
		closed(closed_ud);
}

void peer_transport_close(peer_transport *pt, void (*closed)(void *ud), void *ud)
{
	if (!pt)
		return;
	trust_store_on_change(pt->ts, NULL, NULL);
	pt->closed = closed;
	pt->closed_ud = ud;
	http_server_close(pt->srv, on_server_closed, pt);
}

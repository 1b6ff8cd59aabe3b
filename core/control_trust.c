/* Control API endpoints for identity, peers and pairing (see control_trust.h). */
#include "control_trust.h"

#include <errno.h>
#include <gnutls/gnutls.h>
#include <stdlib.h>
#include <string.h>

#include "hostport.h"
#include "log.h"

struct control_trust {
	control_trust_ctx ctx;
};

json_t *control_trust_peer_json(const trusted_peer *p)
{
	uint8_t fp[IDENTITY_FP_LEN];
	char short_fp[IDENTITY_SHORT_FP_LEN + 1] = "";
	if (identity_fp_from_hex(p->fingerprint_hex, fp) == 0)
		identity_fp_short(fp, short_fp);
	json_t *addrs = json_array();
	for (size_t i = 0; i < p->n_addresses; i++)
		json_array_append_new(addrs, json_string(p->addresses[i]));
	return json_pack("{s:s, s:s, s:s, s:o, s:I, s:I}", "name", p->name, "fingerprint",
	                 p->fingerprint_hex, "short_fingerprint", short_fp, "addresses", addrs,
	                 "paired_at", (json_int_t)p->paired_at, "last_sync",
	                 (json_int_t)p->last_sync);
}

static int handle_id(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)req;
	control_trust *ct = ud;
	const identity *id = ct->ctx.id;
	gnutls_datum_t raw = {.data = (unsigned char *)id->x25519_public, .size = 32};
	gnutls_datum_t b64 = {0};
	if (gnutls_base64_encode2(&raw, &b64) < 0)
		return -ENOMEM;
	*reply = json_pack("{s:s, s:s, s:s, s:s#, s:i}", "name", id->node_name, "fingerprint",
	                   id->fingerprint_hex, "short_fingerprint", id->short_fp, "x25519_public",
	                   (const char *)b64.data, (int)b64.size, "peer_port", ct->ctx.peer_port);
	gnutls_free(b64.data);
	*status = 200;
	return 0;
}

/* Add the peer table's live view of `p` (status, latency, models, ...). */
static void add_live_status(control_trust *ct, const trusted_peer *p, json_t *j)
{
	peer_info info;
	if (!ct->ctx.ptable || peer_table_lookup(ct->ctx.ptable, p->fingerprint_hex, &info) < 0) {
		json_object_set_new(j, "status", json_string("offline"));
		return;
	}
	json_t *models = json_array();
	for (size_t i = 0; i < info.n_models; i++)
		json_array_append_new(models, json_string(info.models[i]));
	json_object_set_new(j, "status",
	                    json_string(info.status == PEER_CONNECTED ? "connected" : "offline"));
	json_object_set_new(j, "address", info.address ? json_string(info.address) : json_null());
	json_object_set_new(j, "latency_ms",
	                    info.latency_ms >= 0 ? json_real(info.latency_ms) : json_null());
	json_object_set_new(j, "models", models);
	json_object_set_new(j, "load",
	                    json_pack("{s:I, s:I}", "in_flight", (json_int_t)info.in_flight,
	                              "capacity", (json_int_t)info.capacity));
	json_object_set_new(j, "thermal",
	                    json_pack("{s:b, s:o}", "hot", info.hot, "temp_c",
	                              info.has_temp ? json_real(info.temp_c) : json_null()));
	json_object_set_new(j, "last_seen", json_integer(info.last_seen));
	json_object_set_new(j, "accepting", json_boolean(info.accepting));
	json_object_set_new(j, "federated_learning",
	                    info.fl_enabled < 0 ? json_null() : json_boolean(info.fl_enabled));
}

static int handle_peers(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)req;
	control_trust *ct = ud;
	json_t *list = json_array();
	for (size_t i = 0; i < trust_store_count(ct->ctx.ts); i++) {
		const trusted_peer *p = trust_store_at(ct->ctx.ts, i);
		json_t *j = control_trust_peer_json(p);
		add_live_status(ct, p, j);
		json_array_append_new(list, j);
	}
	json_t *discovered = NULL;
	if (ct->ctx.ptable) {
		json_t *view = peer_table_json(ct->ctx.ptable);
		discovered = json_incref(json_object_get(view, "discovered"));
		json_decref(view);
	}
	*reply = json_pack("{s:o, s:o}", "peers", list, "discovered",
	                   discovered ? discovered : json_array());
	*status = 200;
	return 0;
}

/* The "peer" member of a request body, resolved; on failure *reply and
 * *status say why. */
static const trusted_peer *resolve_body_peer(control_trust *ct, const control_request *req,
                                             json_t **reply, int *status)
{
	json_t *what = req->body ? json_object_get(req->body, "peer") : NULL;
	if (!json_is_string(what) || !*json_string_value(what)) {
		*status = 400;
		*reply = control_api_error("give {\"peer\": NAME or FINGERPRINT}");
		return NULL;
	}
	const trusted_peer *p = NULL;
	sovmesh_error err = {0};
	int r = trust_store_resolve(ct->ctx.ts, json_string_value(what), &p, &err);
	if (r < 0) {
		*status = r == -ENOENT ? 404 : 409;
		*reply = control_api_error("%s", err.message);
		return NULL;
	}
	return p;
}

static int handle_remove(void *ud, const control_request *req, json_t **reply, int *status)
{
	control_trust *ct = ud;
	const trusted_peer *p = resolve_body_peer(ct, req, reply, status);
	if (!p)
		return 0;
	json_t *gone = control_trust_peer_json(p);
	char fp[IDENTITY_FP_HEX_LEN + 1];
	memcpy(fp, p->fingerprint_hex, sizeof(fp));
	sovmesh_error err = {0};
	/* Removing fires the store's change callback: the peer port and
	 * client cut this peer's connections before we answer. */
	if (trust_store_remove(ct->ctx.ts, fp, &err) < 0) {
		json_decref(gone);
		*status = 500;
		*reply = control_api_error("%s", err.message);
		return 0;
	}
	log_notice("peer %s (%s) removed: no longer trusted",
	           json_string_value(json_object_get(gone, "name")),
	           json_string_value(json_object_get(gone, "short_fingerprint")));
	*reply = json_pack("{s:o}", "removed", gone);
	*status = 200;
	return 0;
}

/* ---- ping: GET /peer/v1/hello over the peer port ---- */

typedef struct ping_call {
	http_response *resp;
	peer_call *call;
	char *body;
	size_t len;
	uint64_t started_ns;
	json_t *peer; /* control_trust_peer_json of the target */
	char address[HOSTPORT_TEXT_MAX];
} ping_call;

static void ping_free(ping_call *pc)
{
	json_decref(pc->peer);
	free(pc->body);
	free(pc);
}

static int ping_on_body(void *ud, const char *data, size_t len)
{
	ping_call *pc = ud;
	if (pc->len + len > 64 * 1024)
		return 1; /* a hello is tiny: anything larger is wrong */
	char *n = realloc(pc->body, pc->len + len + 1);
	if (!n)
		return 1;
	memcpy(n + pc->len, data, len);
	pc->len += len;
	n[pc->len] = '\0';
	pc->body = n;
	return 0;
}

static void ping_on_done(void *ud, int result, long http_status, const char *message)
{
	ping_call *pc = ud;
	pc->call = NULL;
	double rtt_ms = (double)(uv_hrtime() - pc->started_ns) / 1e6;
	const char *name = json_string_value(json_object_get(pc->peer, "name"));
	if (result < 0) {
		control_api_reply_error(pc->resp, 502, "peer %s at %s: %s", name, pc->address,
		                        message && *message ? message : strerror(-result));
	} else if (http_status != 200) {
		control_api_reply_error(pc->resp, 502, "peer %s at %s answered HTTP %ld", name,
		                        pc->address, http_status);
	} else {
		json_t *hello = json_loads(pc->body ? pc->body : "", 0, NULL);
		json_t *answer = json_pack(
		    "{s:s, s:s, s:s, s:s, s:f, s:O}", "name",
		    json_is_string(json_object_get(hello, "name"))
		        ? json_string_value(json_object_get(hello, "name"))
		        : name,
		    "fingerprint", json_string_value(json_object_get(pc->peer, "fingerprint")),
		    "short_fingerprint",
		    json_string_value(json_object_get(pc->peer, "short_fingerprint")), "address",
		    pc->address, "rtt_ms", rtt_ms, "hello", hello ? hello : json_null());
		json_decref(hello);
		control_api_reply(pc->resp, 200, answer);
	}
	ping_free(pc);
}

static void ping_on_cancel(void *ud, http_response *resp)
{
	ping_call *pc = ud;
	/* The CLI went away: stop the peer call and drop our reference. */
	if (pc->call)
		peer_client_cancel(pc->call);
	http_response_unref(resp);
	ping_free(pc);
}

static void handle_ping(void *ud, const control_request *req, http_response *resp)
{
	control_trust *ct = ud;
	json_t *reply = NULL;
	int status = 0;
	const trusted_peer *p = resolve_body_peer(ct, req, &reply, &status);
	if (!p) {
		control_api_reply(resp, status, reply);
		return;
	}
	if (p->n_addresses == 0) {
		control_api_reply_error(resp, 409, "peer %s has no known address yet", p->name);
		return;
	}
	hostport hp;
	const char *why = NULL;
	if (hostport_parse(p->addresses[0], 0, &hp, &why) < 0) {
		control_api_reply_error(resp, 500, "peer %s: stored address '%s': %s", p->name,
		                        p->addresses[0], why);
		return;
	}
	ping_call *pc = calloc(1, sizeof(*pc));
	if (!pc) {
		control_api_reply_error(resp, 500, "out of memory");
		return;
	}
	pc->resp = resp;
	pc->peer = control_trust_peer_json(p);
	pc->started_ns = uv_hrtime();
	hostport_format(&hp, pc->address, sizeof(pc->address));
	peer_request preq = {
	    .fingerprint_hex = p->fingerprint_hex,
	    .host = hp.host,
	    .port = hp.port,
	    .method = "GET",
	    .path = "/peer/v1/hello",
	    .timeout_ms = 10000,
	};
	static const sovmesh_http_callbacks cbs = {
	    .size = sizeof(cbs), .on_body = ping_on_body, .on_done = ping_on_done};
	sovmesh_error err = {0};
	pc->call = peer_client_request(ct->ctx.pc, &preq, &cbs, pc, &err);
	if (!pc->call) {
		control_api_reply_error(resp, 502, "peer %s: %s", p->name, err.message);
		ping_free(pc);
		return;
	}
	http_response_on_cancel(resp, ping_on_cancel, pc);
}

int control_trust_new(control_api *api, const control_trust_ctx *ctx, control_trust **out)
{
	control_trust *ct = calloc(1, sizeof(*ct));
	if (!ct)
		return -ENOMEM;
	ct->ctx = *ctx;
	int r = control_api_route(api, "GET", "/v1/id", handle_id, ct);
	if (r == 0)
		r = control_api_route(api, "GET", "/v1/peers", handle_peers, ct);
	if (r == 0)
		r = control_api_route(api, "POST", "/v1/peers/remove", handle_remove, ct);
	if (r == 0)
		r = control_api_route_async(api, "POST", "/v1/peers/ping", handle_ping, ct);
	if (r < 0) {
		free(ct);
		return r;
	}
	*out = ct;
	return 0;
}

void control_trust_free(control_trust *ct)
{
	free(ct);
}

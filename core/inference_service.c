/* Mesh inference wired into the daemon (see inference_service.h). */
#include "inference_service.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "answer_cache.h"
#include "build_config.h"
#include "front_door.h"
#include "infer_request.h"
#include "local_backend.h"
#include "log.h"
#include "peer_inference.h"
#include "random.h"
#include "router.h"
#include "hostport.h"
#include "state_file.h"
#include "thermal.h"

#define ASK_MAX_ANSWER (4u * 1024u * 1024u)

struct inference_service {
	inference_service_ctx ctx;
	local_backend *lb;
	answer_cache *cache;
	router *router;
	peer_infer_server *serving;
	front_door *door;
	char api_address[HOSTPORT_TEXT_MAX];
	char token[65];
	/* Current values of the reloadable keys. */
	int serve_inference;
	uint32_t max_concurrent;
	char *thermal_root;
	double thermal_limit;
	struct ask_job *asks; /* open /v1/ask requests */
	int stopped;
};

/* ---- what health answers say about us --------------------------------- */

static int node_hot(void *ud)
{
	inference_service *s = ud;
	thermal_state ts;
	thermal_read(s->thermal_root, s->thermal_limit, &ts);
	return ts.hot;
}

static json_t *health_models(void *ud)
{
	inference_service *s = ud;
	return local_backend_models(s->lb);
}

static void health_load(void *ud, int64_t *in_flight, int64_t *capacity)
{
	inference_service *s = ud;
	*in_flight = s->lb ? local_backend_in_flight(s->lb) : 0;
	*capacity = s->lb ? local_backend_slots(s->lb) : 0;
}

static void health_thermal(void *ud, int *hot, int *has_temp, double *temp_c)
{
	inference_service *s = ud;
	thermal_state ts;
	thermal_read(s->thermal_root, s->thermal_limit, &ts);
	*hot = ts.hot;
	*has_temp = ts.has_temp;
	*temp_c = ts.temp_c;
}

static int health_accepting(void *ud)
{
	inference_service *s = ud;
	return s->serving && peer_infer_server_accepting(s->serving);
}

/* ---- POST /v1/ask ------------------------------------------------------ */

typedef struct ask_job {
	inference_service *s;
	http_response *resp;
	router_job *job;
	char *model;
	char *answer;
	size_t len;
	router_source source;
	char peer[128];
	uint64_t t0;
	struct ask_job *prev, *next;
} ask_job;

static void ask_free(ask_job *a)
{
	if (a->prev)
		a->prev->next = a->next;
	else if (a->s->asks == a)
		a->s->asks = a->next;
	if (a->next)
		a->next->prev = a->prev;
	free(a->model);
	free(a->answer);
	free(a);
}

static void ask_on_cancel(void *ud, http_response *resp)
{
	ask_job *a = ud;
	router_cancel(a->job);
	http_response_unref(resp);
	ask_free(a);
}

static void ask_on_source(void *ud, router_source src, const char *peer)
{
	ask_job *a = ud;
	a->source = src;
	snprintf(a->peer, sizeof(a->peer), "%s", peer ? peer : "");
}

static void ask_on_chunk(void *ud, const char *json, size_t len, int done)
{
	(void)done;
	ask_job *a = ud;
	json_t *c = json_loadb(json, len, 0, NULL);
	const char *piece = json_string_value(json_object_get(json_object_get(c, "message"), "content"));
	if (!piece)
		piece = json_string_value(json_object_get(c, "response"));
	size_t n = piece ? strlen(piece) : 0;
	if (n && a->len + n <= ASK_MAX_ANSWER) {
		char *grown = realloc(a->answer, a->len + n + 1);
		if (grown) {
			memcpy(grown + a->len, piece, n + 1);
			a->answer = grown;
			a->len += n;
		}
	}
	json_decref(c);
}

static void ask_on_done(void *ud, int code, int http_status, const char *message)
{
	ask_job *a = ud;
	http_response_on_cancel(a->resp, NULL, NULL);
	if (code != 0) {
		control_api_reply_error(a->resp, http_status >= 400 ? http_status : 502, "%s", message);
	} else {
		json_t *reply = json_pack(
		    "{s:s,s:s,s:s,s:o,s:I}", "answer", a->answer ? a->answer : "", "model", a->model,
		    "source", router_source_name(a->source), "peer",
		    a->peer[0] ? json_string(a->peer) : json_null(), "elapsed_ms",
		    (json_int_t)(uv_now(a->s->ctx.loop) - a->t0));
		control_api_reply(a->resp, 200, reply);
	}
	ask_free(a);
}

/* inference.default_model, else the first local model, else the first
 * model of a Connected peer. */
static int pick_model(inference_service *s, char *out, size_t len)
{
	if (s->ctx.cfg->inference_default_model[0]) {
		snprintf(out, len, "%s", s->ctx.cfg->inference_default_model);
		return 0;
	}
	json_t *local = local_backend_models(s->lb);
	const char *first = json_string_value(json_array_get(local, 0));
	if (first) {
		snprintf(out, len, "%s", first);
		json_decref(local);
		return 0;
	}
	json_decref(local);
	size_t n = s->ctx.ptable ? peer_table_paired_count(s->ctx.ptable) : 0;
	for (size_t i = 0; i < n; i++) {
		peer_info pi;
		if (peer_table_paired_at(s->ctx.ptable, i, &pi) == 0 &&
		    pi.status == PEER_CONNECTED && pi.n_models > 0) {
			snprintf(out, len, "%s", pi.models[0]);
			return 0;
		}
	}
	return -ENOENT;
}

static void handle_ask(void *ud, const control_request *req, http_response *resp)
{
	inference_service *s = ud;
	if (s->stopped) {
		control_api_reply_error(resp, 503, "shutting down");
		return;
	}
	const char *text = json_string_value(json_object_get(req->body, "text"));
	json_t *jm = json_object_get(req->body, "model");
	if (!json_is_object(req->body) || !text || !*text) {
		control_api_reply_error(resp, 400, "\"text\" (a non-empty string) is required");
		return;
	}
	if (jm && !json_is_string(jm)) {
		control_api_reply_error(resp, 400, "\"model\" must be a string");
		return;
	}
	char model[INFER_MODEL_MAX + 1];
	if (jm && json_string_value(jm)[0]) {
		snprintf(model, sizeof(model), "%s", json_string_value(jm));
	} else if (pick_model(s, model, sizeof(model)) < 0) {
		control_api_reply_error(resp, 503,
		                        "no model to ask: the local backend lists none and no "
		                        "connected peer offers one (give --model)");
		return;
	}
	infer_request ir;
	sovmesh_error err = {0};
	if (infer_request_from_text(SOVMESH_GEN_CHAT, model, text, 0, &ir, &err) < 0) {
		control_api_reply_error(resp, 400, "%s", err.message);
		return;
	}
	ask_job *a = calloc(1, sizeof(*a));
	if (!a || !(a->model = strdup(model))) {
		free(a);
		infer_request_clear(&ir);
		control_api_reply_error(resp, 500, "out of memory");
		return;
	}
	a->s = s;
	a->resp = resp;
	a->t0 = uv_now(s->ctx.loop);
	a->next = s->asks;
	if (s->asks)
		s->asks->prev = a;
	s->asks = a;
	static const router_callbacks cbs = {
	    .on_source = ask_on_source,
	    .on_chunk = ask_on_chunk,
	    .on_done = ask_on_done,
	};
	a->job = router_submit(s->router, &ir, &cbs, a);
	infer_request_clear(&ir);
	if (!a->job) {
		ask_free(a);
		control_api_reply_error(resp, 500, "out of memory");
		return;
	}
	http_response_on_cancel(resp, ask_on_cancel, a);
}

static int handle_inference(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)req;
	*reply = inference_service_status(ud);
	*status = 200;
	return 0;
}

static int handle_cache_stats(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)req;
	inference_service *s = ud;
	*reply = answer_cache_stats_json(s->cache);
	*status = 200;
	return 0;
}

static int handle_cache_clear(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)req;
	inference_service *s = ud;
	sovmesh_error err = {0};
	json_t *before = answer_cache_stats_json(s->cache);
	json_t *ps = json_object_get(before, "plugin_stats");
	json_int_t n = json_integer_value(json_object_get(ps, "entries"));
	json_decref(before);
	int r = answer_cache_clear(s->cache, &err);
	if (r < 0) {
		*status = r == -ENOENT ? 404 : 500;
		*reply = control_api_error("%s", err.message[0] ? err.message : strerror(-r));
		return 0;
	}
	log_notice("cache cleared (%lld entries removed)", (long long)n);
	*reply = json_pack("{s:I}", "removed", n);
	*status = 200;
	return 0;
}

/* ---- start / stop -------------------------------------------------------- */

/* The token the control mirror on the HTTP port wants for changes; in
 * <state_dir>/api-token (0600) for the owner's scripts, new each start. */
static int make_token(inference_service *s, sovmesh_error *err)
{
	uint8_t raw[32];
	int r = rng_bytes(raw, sizeof(raw));
	if (r < 0)
		return sovmesh_fail(err, r, "cannot make the API token: %s", strerror(-r));
	for (size_t i = 0; i < sizeof(raw); i++)
		snprintf(s->token + 2 * i, 3, "%02x", raw[i]);
	char path[4096];
	snprintf(path, sizeof(path), "%s/api-token", s->ctx.cfg->state_dir);
	struct iovec iov[2] = {{s->token, 64}, {"\n", 1}};
	return state_file_write(path, iov, 2, err);
}

int inference_service_start(const inference_service_ctx *ctx, inference_service **out,
                            sovmesh_error *err)
{
	inference_service *s = calloc(1, sizeof(*s));
	if (!s)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	s->ctx = *ctx;
	const sovmesh_config *cfg = ctx->cfg;
	s->serve_inference = cfg->serve_inference;
	s->max_concurrent = (uint32_t)cfg->max_concurrent_peer_requests;
	s->thermal_limit = cfg->thermal_limit_c;
	s->thermal_root = strdup(cfg->thermal_sysfs_root);
	*out = s;
	if (!s->thermal_root)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	int r;
	if (ctx->backend) {
		r = local_backend_new(ctx->loop, ctx->backend->plugin->ops, ctx->backend->instance,
		                      ctx->backend->plugin->label, &s->lb);
		if (r < 0)
			return sovmesh_fail(err, r, "cannot start the local backend: %s", strerror(-r));
	}
	if (ctx->peer_port && s->lb) {
		peer_infer_server_options so = {
		    .id = ctx->id,
		    .lb = s->lb,
		    .serve_inference = s->serve_inference,
		    .max_concurrent = s->max_concurrent,
		    .is_hot = node_hot,
		    .ud = s,
		};
		r = peer_infer_server_register(ctx->peer_port, &so, &s->serving);
		if (r < 0)
			return sovmesh_fail(err, r, "cannot serve peer requests: %s", strerror(-r));
	}
	if (ctx->health) {
		peer_health_providers prov = {
		    .ud = s,
		    .models = health_models,
		    .load = health_load,
		    .thermal = health_thermal,
		    .accepting = health_accepting,
		};
		peer_health_set_providers(ctx->health, &prov);
	}
	answer_cache_options co = {
	    .ops = ctx->cache ? ctx->cache->plugin->ops : NULL,
	    .instance = ctx->cache ? ctx->cache->instance : NULL,
	    .lb = s->lb,
	    .embedding_model = cfg->cache_embedding_model,
	    .hit = cfg->cache_hit_similarity,
	    .near_miss = cfg->cache_near_miss_similarity,
	    .model_hit = cfg->cache_model_hit_similarity,
	    .model_near_miss = cfg->cache_model_near_miss_similarity,
	    .template_enabled = cfg->template_enabled,
	    .template_text = cfg->template_text,
	    .template_near_miss_text = cfg->template_near_miss_text,
	};
	r = answer_cache_new(ctx->loop, &co, &s->cache);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot start the cache step: %s", strerror(-r));
	router_options ro = {
	    .lb = s->lb,
	    .ptable = ctx->ptable,
	    .pc = ctx->pc,
	    .trust = ctx->trust,
	    .thermal_sysfs_root = cfg->thermal_sysfs_root,
	    .thermal_limit_c = cfg->thermal_limit_c,
	    .request_timeout_ms = (unsigned)cfg->request_timeout_secs * 1000u,
	    .cache = s->cache,
	};
	r = router_new(ctx->loop, &ro, &s->router);
	if (r < 0)
		return sovmesh_fail(err, r, "cannot start the router: %s", strerror(-r));
	if (control_api_route_async(ctx->control, "POST", "/v1/ask", handle_ask, s) < 0 ||
	    control_api_route(ctx->control, "GET", "/v1/inference", handle_inference, s) < 0 ||
	    control_api_route(ctx->control, "GET", "/v1/cache", handle_cache_stats, s) < 0 ||
	    control_api_route(ctx->control, "POST", "/v1/cache/clear", handle_cache_clear, s) < 0)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	if (cfg->api_enabled) {
		r = make_token(s, err);
		if (r < 0)
			return r;
		front_door_options fo = {
		    .listen = cfg->api_listen,
		    .max_body_bytes = (size_t)cfg->api_max_body_bytes,
		    .router = s->router,
		    .lb = s->lb,
		    .ptable = ctx->ptable,
		    .control = ctx->control,
		    .token = s->token,
		    .version = SOVMESH_VERSION,
		};
		r = front_door_new(ctx->loop, &fo, &s->door, err);
		if (r < 0)
			return r;
		hostport hp;
		const char *why = NULL;
		if (hostport_parse(cfg->api_listen, 1, &hp, &why) == 0) {
			hp.port = (uint16_t)front_door_port(s->door);
			hostport_format(&hp, s->api_address, sizeof(s->api_address));
		}
		if (!ctx->backend)
			log_notice("no local backend (inference.backend = \"\"): every "
			           "question goes to peers");
	}
	return 0;
}

void inference_service_reload(inference_service *s, const sovmesh_config *next)
{
	if (!s)
		return;
	s->serve_inference = next->serve_inference;
	s->max_concurrent = (uint32_t)next->max_concurrent_peer_requests;
	s->thermal_limit = next->thermal_limit_c;
	char *root = strdup(next->thermal_sysfs_root);
	if (root) {
		free(s->thermal_root);
		s->thermal_root = root;
	}
	if (s->serving)
		peer_infer_server_set_limits(s->serving, s->serve_inference, s->max_concurrent);
	router_set_timeout(s->router, (unsigned)next->request_timeout_secs * 1000u);
	router_set_thermal(s->router, next->thermal_sysfs_root, next->thermal_limit_c);
	log_notice("reload: serve_inference %s, max_concurrent_peer_requests %u, "
	           "request_timeout_secs %lld, thermal limit %.1f °C",
	           s->serve_inference ? "on" : "off", s->max_concurrent,
	           (long long)next->request_timeout_secs, s->thermal_limit);
}

json_t *inference_service_status(const inference_service *s)
{
	peer_infer_server_stats st = {0};
	if (s->serving)
		peer_infer_server_get_stats(s->serving, &st);
	return json_pack(
	    "{s:o,s:o,s:I,s:I,s:o,s:o,s:o,s:{s:b,s:I,s:I,s:I,s:I,s:I,s:I}}", "backend",
	    s->ctx.backend ? json_string(s->ctx.backend->plugin->label) : json_null(), "models",
	    local_backend_models(s->lb), "slots", (json_int_t)local_backend_slots(s->lb),
	    "in_flight", (json_int_t)local_backend_in_flight(s->lb), "api",
	    s->api_address[0] ? json_string(s->api_address) : json_null(), "router",
	    s->router ? router_stats_json(s->router) : json_null(), "cache",
	    s->cache ? answer_cache_stats_json(s->cache) : json_null(), "serving", "enabled",
	    s->serving && s->serve_inference, "max_concurrent", (json_int_t)s->max_concurrent,
	    "active", (json_int_t)st.active, "served", (json_int_t)st.served, "refused_busy",
	    (json_int_t)st.refused_busy, "refused_off", (json_int_t)st.refused_off, "failed",
	    (json_int_t)st.failed);
}

void inference_service_set_feedback(inference_service *s, http_handler_fn fn, void *ud)
{
	if (s)
		front_door_set_feedback(s->door, fn, ud);
}

void inference_service_stop(inference_service *s)
{
	if (!s || s->stopped)
		return;
	s->stopped = 1;
	while (s->asks) {
		ask_job *a = s->asks;
		http_response_on_cancel(a->resp, NULL, NULL);
		router_cancel(a->job);
		control_api_reply_error(a->resp, 503, "sovmeshd is shutting down");
		ask_free(a);
	}
	if (s->ctx.health)
		peer_health_set_providers(s->ctx.health, NULL);
	if (s->door)
		front_door_close(s->door, NULL, NULL);
	s->door = NULL;
	router_free(s->router);
	s->router = NULL;
}

void inference_service_free(inference_service *s)
{
	if (!s)
		return;
	inference_service_stop(s);
	peer_infer_server_free(s->serving);
	/* After the router (its jobs store into the cache). */
	answer_cache_free(s->cache);
	local_backend_free(s->lb, NULL, NULL);
	free(s->thermal_root);
	free(s);
}

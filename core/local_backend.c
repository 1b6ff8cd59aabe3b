/* This node's backend, counted and with a fresh model list (see local_backend.h). */
#include "local_backend.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

struct local_call {
	local_backend *lb;
	local_origin origin;
	sovmesh_backend_call *call;
	sovmesh_gen_callbacks cbs;
	void *ud;
	struct local_call *prev, *next;
};

struct local_backend {
	uv_loop_t *loop;
	const sovmesh_backend_ops *ops;
	void *instance;
	char *label;
	uint32_t in_flight, peer_in_flight;
	local_call *calls; /* open generate calls */
	uv_timer_t refresh_timer;
	sovmesh_backend_call *refresh_call;
	json_t *models; /* array of names; NULL until the first answer */
	int last_refresh_failed;
	int closing;
	void (*closed)(void *ud);
	void *closed_ud;
};

static void unlink_call(local_call *c)
{
	local_backend *lb = c->lb;
	if (c->prev)
		c->prev->next = c->next;
	else
		lb->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	lb->in_flight--;
	if (c->origin == LOCAL_ORIGIN_PEER)
		lb->peer_in_flight--;
}

/* ---- model list --------------------------------------------------- */

static void on_models(void *ud, const sovmesh_backend_status *st, const char *json, size_t len)
{
	local_backend *lb = ud;
	lb->refresh_call = NULL;
	if (st->code != 0) {
		if (!lb->last_refresh_failed)
			log_warning("%s: cannot list models: %s", lb->label,
			            st->message ? st->message : strerror(-st->code));
		lb->last_refresh_failed = 1;
		return;
	}
	json_t *root = json_loadb(json, len, 0, NULL);
	json_t *list = json_object_get(root, "models");
	json_t *names = json_array();
	size_t i;
	json_t *m;
	json_array_foreach(list, i, m)
	{
		const char *name = json_string_value(json_object_get(m, "name"));
		if (!name)
			name = json_string_value(json_object_get(m, "model"));
		if (name && *name)
			json_array_append_new(names, json_string(name));
	}
	if (!json_is_array(list))
		log_warning("%s: model list without \"models\"", lb->label);
	json_decref(root);
	if (lb->last_refresh_failed)
		log_info("%s: reachable again, %zu model%s", lb->label, json_array_size(names),
		         json_array_size(names) == 1 ? "" : "s");
	lb->last_refresh_failed = 0;
	json_decref(lb->models);
	lb->models = names;
}

void local_backend_refresh_models(local_backend *lb)
{
	if (!lb || lb->refresh_call || !lb->ops->list_models || lb->closing)
		return;
	lb->refresh_call = lb->ops->list_models(lb->instance, on_models, lb);
}

static void on_refresh_timer(uv_timer_t *t)
{
	local_backend_refresh_models(t->data);
}

int local_backend_new(uv_loop_t *loop, const sovmesh_backend_ops *ops, void *instance,
                      const char *label, local_backend **out)
{
	if (!loop || !ops || !ops->generate || !out)
		return -EINVAL;
	local_backend *lb = calloc(1, sizeof(*lb));
	if (!lb || !(lb->label = strdup(label ? label : "backend"))) {
		free(lb);
		return -ENOMEM;
	}
	lb->loop = loop;
	lb->ops = ops;
	lb->instance = instance;
	uv_timer_init(loop, &lb->refresh_timer);
	lb->refresh_timer.data = lb;
	uv_timer_start(&lb->refresh_timer, on_refresh_timer, 0, LOCAL_BACKEND_MODELS_INTERVAL_MS);
	*out = lb;
	return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
	local_backend *lb = h->data;
	void (*closed)(void *) = lb->closed;
	void *ud = lb->closed_ud;
	json_decref(lb->models);
	free(lb->label);
	free(lb);
	if (closed)
		closed(ud);
}

void local_backend_free(local_backend *lb, void (*closed)(void *ud), void *ud)
{
	if (!lb)
		return;
	while (lb->calls) {
		local_call *c = lb->calls;
		unlink_call(c);
		if (lb->ops->cancel)
			lb->ops->cancel(lb->instance, c->call);
		free(c);
	}
	if (lb->refresh_call && lb->ops->cancel)
		lb->ops->cancel(lb->instance, lb->refresh_call);
	lb->refresh_call = NULL;
	lb->closing = 1;
	lb->closed = closed;
	lb->closed_ud = ud;
	uv_timer_stop(&lb->refresh_timer);
	uv_close((uv_handle_t *)&lb->refresh_timer, on_timer_closed);
}

/* ---- counts --------------------------------------------------------- */

uint32_t local_backend_slots(const local_backend *lb)
{
	if (!lb)
		return 0;
	uint32_t n = lb->ops->parallel_slots ? lb->ops->parallel_slots(lb->instance) : 1;
	return n ? n : 1;
}

uint32_t local_backend_in_flight(const local_backend *lb)
{
	return lb ? lb->in_flight : 0;
}

uint32_t local_backend_peer_in_flight(const local_backend *lb)
{
	return lb ? lb->peer_in_flight : 0;
}

int local_backend_busy(const local_backend *lb)
{
	return !lb || lb->in_flight >= local_backend_slots(lb);
}

int local_backend_has_model(const local_backend *lb, const char *model)
{
	if (!lb || !lb->models)
		return -1;
	size_t i;
	json_t *m;
	json_array_foreach(lb->models, i, m)
	{
		if (strcmp(json_string_value(m), model) == 0)
			return 1;
		/* Ollama answers "llama3" for "llama3:latest" and back. */
		const char *name = json_string_value(m);
		size_t n = strlen(model);
		if (strncmp(name, model, n) == 0 && strcmp(name + n, ":latest") == 0)
			return 1;
		n = strlen(name);
		if (strncmp(model, name, n) == 0 && strcmp(model + n, ":latest") == 0)
			return 1;
	}
	return 0;
}

json_t *local_backend_models(const local_backend *lb)
{
	if (!lb || !lb->models)
		return json_array();
	return json_deep_copy(lb->models);
}

/* ---- generate ------------------------------------------------------- */

static void on_gen_chunk(void *ud, const sovmesh_gen_chunk *chunk)
{
	local_call *c = ud;
	if (c->cbs.on_chunk)
		c->cbs.on_chunk(c->ud, chunk);
}

static void on_gen_done(void *ud, const sovmesh_backend_status *st)
{
	local_call *c = ud;
	local_backend *lb = c->lb;
	unlink_call(c);
	if (st->code == -ENOENT)
		local_backend_refresh_models(lb);
	sovmesh_gen_callbacks cbs = c->cbs;
	void *cud = c->ud;
	free(c);
	if (cbs.on_done)
		cbs.on_done(cud, st);
}

local_call *local_backend_generate(local_backend *lb, local_origin origin,
                                   const sovmesh_gen_request *req, const sovmesh_gen_callbacks *cbs,
                                   void *ud)
{
	if (!lb || lb->closing || !req || !cbs)
		return NULL;
	local_call *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->lb = lb;
	c->origin = origin;
	c->cbs = *cbs;
	c->ud = ud;
	static const sovmesh_gen_callbacks ours = {
	    .size = sizeof(sovmesh_gen_callbacks),
	    .on_chunk = on_gen_chunk,
	    .on_done = on_gen_done,
	};
	/* Counted (and linked) before the plugin runs.  Plugins never call
	 * back from inside the slot (backend.h), so `c` is still ours when
	 * generate() returns. */
	c->next = lb->calls;
	if (lb->calls)
		lb->calls->prev = c;
	lb->calls = c;
	lb->in_flight++;
	if (origin == LOCAL_ORIGIN_PEER)
		lb->peer_in_flight++;
	c->call = lb->ops->generate(lb->instance, req, &ours, c);
	if (!c->call) {
		unlink_call(c);
		free(c);
		return NULL;
	}
	return c;
}

void local_backend_cancel(local_backend *lb, local_call *c)
{
	if (!lb || !c)
		return;
	unlink_call(c);
	if (lb->ops->cancel)
		lb->ops->cancel(lb->instance, c->call);
	free(c);
}

/* ---- pass-through --------------------------------------------------- */

sovmesh_backend_call *local_backend_list_models(local_backend *lb, sovmesh_backend_json_cb cb,
                                                void *ud)
{
	if (!lb || lb->closing || !lb->ops->list_models)
		return NULL;
	return lb->ops->list_models(lb->instance, cb, ud);
}

sovmesh_backend_call *local_backend_info(local_backend *lb, const char *what, const char *body_json,
                                         sovmesh_backend_json_cb cb, void *ud)
{
	if (!lb || lb->closing || !lb->ops->info)
		return NULL;
	return lb->ops->info(lb->instance, what, body_json, cb, ud);
}

sovmesh_backend_call *local_backend_embed(local_backend *lb, const char *model,
                                          const char *const *texts, size_t n, uint32_t timeout_ms,
                                          sovmesh_backend_embed_cb cb, void *ud)
{
	if (!lb || lb->closing || !lb->ops->embed)
		return NULL;
	return lb->ops->embed(lb->instance, model, texts, n, timeout_ms, cb, ud);
}

void local_backend_cancel_passthrough(local_backend *lb, sovmesh_backend_call *call)
{
	if (lb && call && lb->ops->cancel)
		lb->ops->cancel(lb->instance, call);
}

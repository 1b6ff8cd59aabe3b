/* A scriptable backend for unit tests (see fake_backend.h). */
#include "fake_backend.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sovmesh_backend_call {
	fake_backend *fb;
	uv_timer_t timer;
	sovmesh_gen_callbacks cbs;
	sovmesh_backend_json_cb json_cb;
	sovmesh_backend_embed_cb embed_cb;
	void *ud;
	unsigned sent, chunks;
	int fail_code, fail_after, chat;
};

static void on_closed(uv_handle_t *h)
{
	free(h->data);
}

static void call_end(sovmesh_backend_call *c)
{
	c->fb->open--;
	uv_timer_stop(&c->timer);
	uv_close((uv_handle_t *)&c->timer, on_closed);
}

static void gen_tick(uv_timer_t *t)
{
	sovmesh_backend_call *c = t->data;
	fake_backend *fb = c->fb;
	if (c->fail_code) {
		sovmesh_backend_status st = {sizeof(st), c->fail_code, 0, "scripted failure"};
		call_end(c);
		c->cbs.on_done(c->ud, &st);
		return;
	}
	if (c->fail_after && c->sent == (unsigned)c->fail_after) {
		sovmesh_backend_status st = {sizeof(st), -EPROTO, 200, "scripted mid-stream error"};
		call_end(c);
		c->cbs.on_done(c->ud, &st);
		return;
	}
	char json[256];
	int done = c->sent + 1 == c->chunks;
	if (c->chat)
		snprintf(json, sizeof(json),
		         "{\"model\":\"m1\",\"message\":{\"role\":\"assistant\",\"content\":\"w%u \"},"
		         "\"done\":%s}",
		         c->sent, done ? "true" : "false");
	else
		snprintf(json, sizeof(json), "{\"model\":\"m1\",\"response\":\"w%u \",\"done\":%s}",
		         c->sent, done ? "true" : "false");
	c->sent++;
	sovmesh_gen_chunk ch = {sizeof(ch), json, strlen(json), done};
	c->cbs.on_chunk(c->ud, &ch);
	if (done) {
		sovmesh_backend_status st = {sizeof(st), 0, 200, "ok"};
		call_end(c);
		c->cbs.on_done(c->ud, &st);
		return;
	}
	uv_timer_start(&c->timer, gen_tick, fb->delay_ms, 0);
}

static sovmesh_backend_call *new_call(fake_backend *fb)
{
	sovmesh_backend_call *c = calloc(1, sizeof(*c));
	c->fb = fb;
	uv_timer_init(fb->loop, &c->timer);
	c->timer.data = c;
	fb->open++;
	return c;
}

static sovmesh_backend_call *fake_generate(void *instance, const sovmesh_gen_request *req,
                                           const sovmesh_gen_callbacks *cbs, void *ud)
{
	fake_backend *fb = instance;
	fb->generate_calls++;
	snprintf(fb->last_body, sizeof(fb->last_body), "%.*s", (int)req->body_len, req->body_json);
	sovmesh_backend_call *c = new_call(fb);
	c->cbs = *cbs;
	c->ud = ud;
	c->chunks = fb->chunks ? fb->chunks : 1;
	c->fail_code = fb->fail_code;
	c->fail_after = fb->fail_after_chunks;
	c->chat = req->kind == SOVMESH_GEN_CHAT;
	if (!fb->hang)
		uv_timer_start(&c->timer, gen_tick, fb->delay_ms, 0);
	return c;
}

static void list_tick(uv_timer_t *t)
{
	sovmesh_backend_call *c = t->data;
	const char *j = c->fb->models_json ? c->fb->models_json
	                                   : "{\"models\":[{\"name\":\"m1:latest\"}]}";
	sovmesh_backend_status st = {sizeof(st), 0, 200, "ok"};
	call_end(c);
	c->json_cb(c->ud, &st, j, strlen(j));
}

static sovmesh_backend_call *fake_list(void *instance, sovmesh_backend_json_cb cb, void *ud)
{
	fake_backend *fb = instance;
	fb->list_calls++;
	sovmesh_backend_call *c = new_call(fb);
	c->json_cb = cb;
	c->ud = ud;
	uv_timer_start(&c->timer, list_tick, 1, 0);
	return c;
}

/* Embeddings: 4 dims, [len(text), 1, 0, 0], answered on the next turn. */
static void embed_tick(uv_timer_t *t)
{
	sovmesh_backend_call *c = t->data;
	fake_backend *fb = c->fb;
	float v[4] = {(float)strlen(fb->last_embed_text), 1, 0, 0};
	sovmesh_backend_status st = {sizeof(st), fb->embed_fail, fb->embed_fail ? 0 : 200,
	                             fb->embed_fail ? "scripted embed failure" : "ok"};
	sovmesh_backend_embed_cb cb = c->embed_cb;
	call_end(c);
	cb(c->ud, &st, fb->embed_fail ? NULL : v, fb->embed_fail ? 0 : 1, fb->embed_fail ? 0 : 4);
}

static sovmesh_backend_call *fake_embed(void *instance, const char *model,
                                        const char *const *texts, size_t n, uint32_t timeout_ms,
                                        sovmesh_backend_embed_cb cb, void *ud)
{
	(void)timeout_ms;
	fake_backend *fb = instance;
	fb->embed_calls++;
	snprintf(fb->last_embed_model, sizeof(fb->last_embed_model), "%s", model);
	snprintf(fb->last_embed_text, sizeof(fb->last_embed_text), "%s", n ? texts[0] : "");
	sovmesh_backend_call *c = new_call(fb);
	c->embed_cb = cb;
	c->ud = ud;
	uv_timer_start(&c->timer, embed_tick, 1, 0);
	return c;
}

static void fake_cancel(void *instance, sovmesh_backend_call *c)
{
	fake_backend *fb = instance;
	fb->cancels++;
	call_end(c);
}

static uint32_t fake_slots(void *instance)
{
	fake_backend *fb = instance;
	return fb->slots;
}

const sovmesh_backend_ops fake_backend_ops = {
    .size = sizeof(sovmesh_backend_ops),
    .list_models = fake_list,
    .generate = fake_generate,
    .embed = fake_embed,
    .cancel = fake_cancel,
    .parallel_slots = fake_slots,
};

void fake_backend_init(fake_backend *fb, uv_loop_t *loop)
{
	memset(fb, 0, sizeof(*fb));
	fb->loop = loop;
	fb->chunks = 3;
	fb->delay_ms = 5;
	fb->slots = 1;
}

/*
 * Steps 3 and 4 of the chain (answer_cache.c) through the router: what is
 * stored, when the cache answers, near misses in the template, the 404 and
 * 503 ends, a broken cache, and the embedding model.  The cache plugin is
 * a scripted in-memory table here; the real one has its own tests
 * (test_cache_semantic.c).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "answer_cache.h"
#include "fake_backend.h"
#include "infer_request.h"
#include "local_backend.h"
#include "router.h"

/* ---- a scripted cache plugin ---- */

typedef struct fake_cache {
	char model[64], query[256], answer[1024];
	int have;
	double similarity; /* what lookup reports for the stored entry */
	int fail;          /* lookup returns -EIO */
	unsigned stores, lookups;
	double last_min;
	size_t last_dim; /* 0: built-in */
} fake_cache;

static int fc_lookup(void *inst, const sovmesh_cache_query *q, sovmesh_cache_hit *hit,
                     sovmesh_error *err)
{
	fake_cache *fc = inst;
	fc->lookups++;
	fc->last_min = q->min_similarity;
	fc->last_dim = q->embedding ? q->dim : 0;
	if (fc->fail)
		return sovmesh_fail(err, -EIO, "database disk image is malformed");
	if (!fc->have || strcmp(fc->model, q->model) != 0 || fc->similarity < q->min_similarity)
		return 0;
	hit->answer = strdup(fc->answer);
	hit->query = strdup(fc->query);
	hit->similarity = fc->similarity;
	hit->created_unix = 1;
	return 1;
}

static int fc_store(void *inst, const sovmesh_cache_entry *e, sovmesh_error *err)
{
	(void)err;
	fake_cache *fc = inst;
	fc->stores++;
	fc->have = 1;
	fc->last_dim = e->embedding ? e->dim : 0;
	snprintf(fc->model, sizeof(fc->model), "%s", e->model);
	snprintf(fc->query, sizeof(fc->query), "%s", e->query);
	snprintf(fc->answer, sizeof(fc->answer), "%s", e->answer);
	return 0;
}

static int fc_clear(void *inst, sovmesh_error *err)
{
	(void)err;
	fake_cache *fc = inst;
	fc->have = 0;
	return 0;
}

static const sovmesh_cache_ops fc_ops = {
    .size = sizeof(sovmesh_cache_ops),
    .lookup = fc_lookup,
    .store = fc_store,
    .clear = fc_clear,
};

/* ---- fixture ---- */

typedef struct fx {
	uv_loop_t loop;
	fake_backend fb;
	fake_cache fc;
	local_backend *lb;
	answer_cache *ac;
	router *r;
	char sysfs[64];
} fx;

typedef struct outcome {
	router_source source;
	int sources, finished, code, http_status;
	char last_chunk[2048];
	char message[600];
} outcome;

static void on_source(void *ud, router_source s, const char *peer)
{
	(void)peer;
	outcome *o = ud;
	o->sources++;
	o->source = s;
}

static void on_chunk(void *ud, const char *json, size_t len, int done)
{
	(void)done;
	outcome *o = ud;
	snprintf(o->last_chunk, sizeof(o->last_chunk), "%.*s", (int)len, json);
}

static void on_done(void *ud, int code, int http_status, const char *message)
{
	outcome *o = ud;
	o->finished++;
	o->code = code;
	o->http_status = http_status;
	snprintf(o->message, sizeof(o->message), "%s", message);
}

static const router_callbacks cbs = {on_source, on_chunk, on_done};

static void make(fx *f, const char *embedding_model, int template_enabled, int with_cache)
{
	answer_cache_options co = {
	    .ops = with_cache ? &fc_ops : NULL,
	    .instance = &f->fc,
	    .lb = f->lb,
	    .embedding_model = embedding_model,
	    .hit = 0.8,
	    .near_miss = 0.5,
	    .model_hit = 0.9,
	    .model_near_miss = 0.7,
	    .template_enabled = template_enabled,
	    .template_text = "Limited right now.",
	    .template_near_miss_text = "Limited, but about {question}: {answer}",
	};
	assert_int_equal(answer_cache_new(&f->loop, &co, &f->ac), 0);
	router_options o = {
	    .lb = f->lb,
	    .thermal_sysfs_root = f->sysfs,
	    .thermal_limit_c = 80,
	    .request_timeout_ms = 5000,
	    .cache = f->ac,
	};
	assert_int_equal(router_new(&f->loop, &o, &f->r), 0);
}

static void unmake(fx *f)
{
	router_free(f->r);
	answer_cache_free(f->ac);
	f->r = NULL;
	f->ac = NULL;
}

static int setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	assert_int_equal(uv_loop_init(&f->loop), 0);
	fake_backend_init(&f->fb, &f->loop);
	assert_int_equal(
	    local_backend_new(&f->loop, &fake_backend_ops, &f->fb, "backend-fake", &f->lb), 0);
	snprintf(f->sysfs, sizeof(f->sysfs), "/tmp/sovmesh-acache-XXXXXX");
	assert_non_null(mkdtemp(f->sysfs));
	while (local_backend_has_model(f->lb, "m1") < 0)
		uv_run(&f->loop, UV_RUN_ONCE);
	make(f, "", 1, 1);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx *f = *state;
	unmake(f);
	local_backend_free(f->lb, NULL, NULL);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(f->fb.open, 0);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->sysfs);
	assert_int_equal(system(cmd), 0);
	free(f);
	return 0;
}

static void ask(fx *f, sovmesh_gen_kind kind, const char *model, const char *text, outcome *o)
{
	infer_request req;
	sovmesh_error err = {0};
	assert_int_equal(infer_request_from_text(kind, model, text, 1, &req, &err), 0);
	memset(o, 0, sizeof(*o));
	assert_non_null(router_submit(f->r, &req, &cbs, o));
	infer_request_clear(&req);
	while (!o->finished)
		uv_run(&f->loop, UV_RUN_ONCE);
}

static void local_answer_is_stored_whole(void **state)
{
	fx *f = *state;
	outcome o;
	ask(f, SOVMESH_GEN_CHAT, "m1", "what is a cat", &o);
	assert_int_equal(o.code, 0);
	assert_int_equal(o.source, ROUTER_SOURCE_LOCAL);
	assert_int_equal(f->fc.stores, 1);
	assert_string_equal(f->fc.model, "m1");
	assert_string_equal(f->fc.query, "what is a cat");
	assert_string_equal(f->fc.answer, "w0 w1 w2 "); /* every chunk's content */
	assert_int_equal(f->fc.last_dim, 0);            /* built-in embedding */
	/* generate answers ("response") too */
	ask(f, SOVMESH_GEN_GENERATE, "m1", "why", &o);
	assert_int_equal(f->fc.stores, 2);
	assert_string_equal(f->fc.answer, "w0 w1 w2 ");
}

static void failed_answer_is_not_stored(void **state)
{
	fx *f = *state;
	f->fb.chunks = 5;
	f->fb.fail_after_chunks = 2;
	outcome o;
	ask(f, SOVMESH_GEN_CHAT, "m1", "what is a cat", &o);
	assert_int_equal(o.code, -EPROTO);
	assert_int_equal(f->fc.stores, 0);
}

static void backend_down_answers_from_cache(void **state)
{
	fx *f = *state;
	outcome o;
	ask(f, SOVMESH_GEN_CHAT, "m1", "what is a cat", &o);
	f->fb.fail_code = -ECONNREFUSED;
	f->fc.similarity = 0.93;
	ask(f, SOVMESH_GEN_CHAT, "m1", "what's a cat?", &o);
	assert_int_equal(o.code, 0);
	assert_int_equal(o.source, ROUTER_SOURCE_CACHE);
	json_t *c = json_loads(o.last_chunk, 0, NULL);
	assert_non_null(c);
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(c, "message"), "content")),
	    "w0 w1 w2 ");
	assert_true(json_is_true(json_object_get(c, "done")));
	json_t *mark = json_object_get(c, "sovmesh");
	assert_string_equal(json_string_value(json_object_get(mark, "source")), "cache");
	assert_false(json_is_true(json_object_get(mark, "degraded")));
	json_decref(c);
	/* A cache answer is not stored again. */
	assert_int_equal(f->fc.stores, 1);
	/* The lookup asked down to the near-miss threshold. */
	assert_true(f->fc.last_min > 0.49 && f->fc.last_min < 0.51);
}

static void near_miss_is_quoted_in_the_template(void **state)
{
	fx *f = *state;
	outcome o;
	ask(f, SOVMESH_GEN_CHAT, "m1", "what is a cat", &o);
	f->fb.fail_code = -EBUSY;
	f->fc.similarity = 0.6;
	ask(f, SOVMESH_GEN_CHAT, "m1", "what do cats eat", &o);
	assert_int_equal(o.code, 0);
	assert_int_equal(o.source, ROUTER_SOURCE_TEMPLATE);
	json_t *c = json_loads(o.last_chunk, 0, NULL);
	assert_string_equal(
	    json_string_value(json_object_get(json_object_get(c, "message"), "content")),
	    "Limited, but about what is a cat: w0 w1 w2 ");
	assert_true(json_is_true(json_object_get(json_object_get(c, "sovmesh"), "degraded")));
	json_decref(c);
	assert_int_equal(f->fc.stores, 1); /* templates are never stored */
}

static void miss_gives_the_plain_template(void **state)
{
	fx *f = *state;
	f->fb.fail_code = -ECONNREFUSED;
	outcome o;
	ask(f, SOVMESH_GEN_GENERATE, "m1", "unrelated", &o);
	assert_int_equal(o.code, 0);
	assert_int_equal(o.source, ROUTER_SOURCE_TEMPLATE);
	json_t *c = json_loads(o.last_chunk, 0, NULL);
	assert_string_equal(json_string_value(json_object_get(c, "response")), "Limited right now.");
	json_decref(c);
	assert_int_equal(f->fc.stores, 0);
}

static void other_model_misses(void **state)
{
	fx *f = *state;
	outcome o;
	ask(f, SOVMESH_GEN_CHAT, "m1", "what is a cat", &o);
	f->fb.models_json = "{\"models\":[{\"name\":\"m1\"},{\"name\":\"m2\"}]}";
	local_backend_refresh_models(f->lb);
	while (local_backend_has_model(f->lb, "m2") != 1)
		uv_run(&f->loop, UV_RUN_ONCE);
	f->fb.fail_code = -ECONNREFUSED;
	f->fc.similarity = 1.0;
	ask(f, SOVMESH_GEN_CHAT, "m2", "what is a cat", &o);
	assert_int_equal(o.source, ROUTER_SOURCE_TEMPLATE);
}

static void template_disabled_ends_in_503(void **state)
{
	fx *f = *state;
	unmake(f);
	make(f, "", 0, 1);
	f->fb.fail_code = -ECONNREFUSED;
	outcome o;
	ask(f, SOVMESH_GEN_CHAT, "m1", "anything", &o);
	assert_int_equal(o.http_status, 503);
	assert_int_equal(o.sources, 0);
	assert_non_null(strstr(o.message, "cache: miss"));
}

static void unknown_model_everywhere_is_still_404(void **state)
{
	fx *f = *state;
	outcome o;
	ask(f, SOVMESH_GEN_CHAT, "nosuch", "anything", &o);
	assert_int_equal(o.http_status, 404);
}

static void broken_cache_is_a_miss(void **state)
{
	fx *f = *state;
	f->fc.fail = 1;
	f->fb.fail_code = -ECONNREFUSED;
	outcome o;
	ask(f, SOVMESH_GEN_CHAT, "m1", "anything", &o);
	assert_int_equal(o.code, 0);
	assert_int_equal(o.source, ROUTER_SOURCE_TEMPLATE);
	json_t *st = answer_cache_stats_json(f->ac);
	assert_int_equal(json_integer_value(json_object_get(st, "errors")), 1);
	json_decref(st);
}

static void no_cache_plugin_still_templates(void **state)
{
	fx *f = *state;
	unmake(f);
	make(f, "", 1, 0);
	f->fb.fail_code = -ECONNREFUSED;
	outcome o;
	ask(f, SOVMESH_GEN_CHAT, "m1", "anything", &o);
	assert_int_equal(o.source, ROUTER_SOURCE_TEMPLATE);
	sovmesh_error err = {0};
	assert_int_equal(answer_cache_clear(f->ac, &err), -ENOENT);
	assert_non_null(strstr(err.message, "cache.enabled"));
}

static void embedding_model_used_when_free(void **state)
{
	fx *f = *state;
	unmake(f);
	make(f, "embedder", 1, 1);
	outcome o;
	ask(f, SOVMESH_GEN_CHAT, "m1", "what is a cat", &o);
	/* Stored with the model's vector. */
	while (f->fc.stores == 0)
		uv_run(&f->loop, UV_RUN_ONCE);
	assert_int_equal(f->fc.last_dim, 4);
	assert_string_equal(f->fb.last_embed_model, "embedder");
	assert_string_equal(f->fb.last_embed_text, "what is a cat");
	/* The backend cannot generate (busy 503) but can embed: model vector
	 * and the model thresholds (near miss 0.7). */
	f->fb.fail_code = -EBUSY;
	f->fc.similarity = 0.95;
	ask(f, SOVMESH_GEN_CHAT, "m1", "what's a cat", &o);
	assert_int_equal(o.source, ROUTER_SOURCE_CACHE);
	assert_int_equal(f->fc.last_dim, 4);
	assert_true(f->fc.last_min > 0.69 && f->fc.last_min < 0.71);
	/* Embedding fails: the built-in embedding, its thresholds. */
	f->fb.embed_fail = -ECONNREFUSED;
	ask(f, SOVMESH_GEN_CHAT, "m1", "what's a cat", &o);
	assert_int_equal(o.source, ROUTER_SOURCE_CACHE);
	assert_int_equal(f->fc.last_dim, 0);
	assert_true(f->fc.last_min > 0.49 && f->fc.last_min < 0.51);
}

static void template_placeholders(void **state)
{
	fx *f = *state;
	char *t = answer_cache_template(f->ac, NULL, NULL);
	assert_string_equal(t, "Limited right now.");
	free(t);
	t = answer_cache_template(f->ac, "Q?", "A {question} literal");
	/* Only the template's own placeholders are replaced, not ones inside
	 * the cached text. */
	assert_string_equal(t, "Limited, but about Q?: A {question} literal");
	free(t);
}

static void lookup_cb_must_not_run(void *ud, answer_cache_result r, const char *answer,
                                   const char *question, double similarity)
{
	(void)r;
	(void)answer;
	(void)question;
	(void)similarity;
	int *called = ud;
	(*called)++;
}

/* A cancelled lookup (the client went away during step 3) calls nothing,
 * with or without an embedding call in flight. */
static void cancel_during_lookup(void **state)
{
	fx *f = *state;
	int called = 0;
	answer_cache_lookup *l =
	    answer_cache_lookup_start(f->ac, "m1", "x", lookup_cb_must_not_run, &called);
	assert_non_null(l);
	answer_cache_lookup_cancel(l);
	unmake(f);
	make(f, "embedder", 1, 1);
	l = answer_cache_lookup_start(f->ac, "m1", "x", lookup_cb_must_not_run, &called);
	assert_non_null(l);
	assert_int_equal(f->fb.embed_calls, 1);
	answer_cache_lookup_cancel(l);
	assert_int_equal(f->fb.cancels, 1); /* the embedding call too */
	for (int i = 0; i < 10; i++)
		uv_run(&f->loop, UV_RUN_NOWAIT);
	assert_int_equal(called, 0);
	assert_int_equal(f->fc.lookups, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(local_answer_is_stored_whole, setup, teardown),
	    cmocka_unit_test_setup_teardown(failed_answer_is_not_stored, setup, teardown),
	    cmocka_unit_test_setup_teardown(backend_down_answers_from_cache, setup, teardown),
	    cmocka_unit_test_setup_teardown(near_miss_is_quoted_in_the_template, setup, teardown),
	    cmocka_unit_test_setup_teardown(miss_gives_the_plain_template, setup, teardown),
	    cmocka_unit_test_setup_teardown(other_model_misses, setup, teardown),
	    cmocka_unit_test_setup_teardown(template_disabled_ends_in_503, setup, teardown),
	    cmocka_unit_test_setup_teardown(unknown_model_everywhere_is_still_404, setup, teardown),
	    cmocka_unit_test_setup_teardown(broken_cache_is_a_miss, setup, teardown),
	    cmocka_unit_test_setup_teardown(no_cache_plugin_still_templates, setup, teardown),
	    cmocka_unit_test_setup_teardown(embedding_model_used_when_free, setup, teardown),
	    cmocka_unit_test_setup_teardown(template_placeholders, setup, teardown),
	    cmocka_unit_test_setup_teardown(cancel_during_lookup, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

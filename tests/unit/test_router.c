/*
 * router.c with a scripted local backend and no peers: the local step's
 * busy and hot rules, time limits, failures before and after the first
 * chunk, cancellation, and the end of the chain.  Peer selection is
 * exercised end to end by tests/integration/test_mesh_inference.py.
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

#include "fake_backend.h"
#include "infer_request.h"
#include "local_backend.h"
#include "router.h"

typedef struct fx {
	uv_loop_t loop;
	fake_backend fb;
	local_backend *lb;
	router *r;
	char sysfs[64];
} fx;

typedef struct outcome {
	int sources;
	router_source source;
	unsigned chunks;
	int last_done;
	int finished;
	int code, http_status;
	char message[600];
	int in_submit; /* set while router_submit runs */
} outcome;

static void on_source(void *ud, router_source s, const char *peer)
{
	outcome *o = ud;
	assert_false(o->in_submit);
	assert_null(peer);
	o->sources++;
	o->source = s;
}

static void on_chunk(void *ud, const char *json, size_t len, int done)
{
	outcome *o = ud;
	assert_int_equal(o->sources, 1); /* source first */
	assert_true(len > 0 && json[0] == '{');
	o->chunks++;
	o->last_done = done;
}

static void on_done(void *ud, int code, int http_status, const char *message)
{
	outcome *o = ud;
	assert_false(o->in_submit);
	o->finished++;
	o->code = code;
	o->http_status = http_status;
	snprintf(o->message, sizeof(o->message), "%s", message);
}

static const router_callbacks cbs = {on_source, on_chunk, on_done};

static void put_temp(fx *f, const char *millideg)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/class", f->sysfs);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/class/thermal", f->sysfs);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/class/thermal/thermal_zone0", f->sysfs);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/class/thermal/thermal_zone0/temp", f->sysfs);
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	fputs(millideg, fp);
	fclose(fp);
}

static void make_router(fx *f, unsigned timeout_ms)
{
	router_options o = {
	    .lb = f->lb,
	    .thermal_sysfs_root = f->sysfs,
	    .thermal_limit_c = 80,
	    .request_timeout_ms = timeout_ms,
	};
	assert_int_equal(router_new(&f->loop, &o, &f->r), 0);
}

static int setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	assert_int_equal(uv_loop_init(&f->loop), 0);
	fake_backend_init(&f->fb, &f->loop);
	assert_int_equal(
	    local_backend_new(&f->loop, &fake_backend_ops, &f->fb, "backend-fake", &f->lb), 0);
	snprintf(f->sysfs, sizeof(f->sysfs), "/tmp/sovmesh-router-XXXXXX");
	assert_non_null(mkdtemp(f->sysfs));
	make_router(f, 5000);
	/* Let the first model list arrive. */
	while (local_backend_has_model(f->lb, "m1") < 0)
		uv_run(&f->loop, UV_RUN_ONCE);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx *f = *state;
	router_free(f->r);
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

static router_job *submit(fx *f, const char *model, int stream, outcome *o)
{
	infer_request req;
	sovmesh_error err = {0};
	assert_int_equal(infer_request_from_text(SOVMESH_GEN_CHAT, model, "hello", stream, &req, &err),
	                 0);
	o->in_submit = 1;
	router_job *j = router_submit(f->r, &req, &cbs, o);
	o->in_submit = 0;
	infer_request_clear(&req); /* the router keeps its own copy */
	assert_non_null(j);
	return j;
}

static void run_until_done(fx *f, outcome *o)
{
	while (!o->finished)
		uv_run(&f->loop, UV_RUN_ONCE);
}

static void local_answer_streams(void **state)
{
	fx *f = *state;
	outcome o = {0};
	submit(f, "m1", 1, &o);
	assert_int_equal(local_backend_in_flight(f->lb), 0); /* nothing before the loop runs */
	run_until_done(f, &o);
	assert_int_equal(o.code, 0);
	assert_int_equal(o.sources, 1);
	assert_int_equal(o.source, ROUTER_SOURCE_LOCAL);
	assert_int_equal(o.chunks, 3);
	assert_true(o.last_done);
	assert_non_null(strstr(f->fb.last_body, "\"hello\""));
	router_stats st;
	router_get_stats(f->r, &st);
	assert_int_equal(st.answered[ROUTER_SOURCE_LOCAL], 1);
	assert_int_equal(st.in_flight, 0);
	assert_int_equal(local_backend_in_flight(f->lb), 0);
}

/* Slots full: the second request is not queued behind the first (Ollama
 * would queue it silently); with no peers the chain ends in 503. */
static void busy_when_slots_are_full(void **state)
{
	fx *f = *state;
	f->fb.delay_ms = 200;
	outcome a = {0}, b = {0};
	submit(f, "m1", 1, &a);
	while (local_backend_in_flight(f->lb) == 0)
		uv_run(&f->loop, UV_RUN_ONCE);
	assert_true(local_backend_busy(f->lb));
	submit(f, "m1", 1, &b);
	run_until_done(f, &b);
	assert_int_equal(b.http_status, 503);
	assert_int_equal(b.sources, 0);
	assert_non_null(strstr(b.message, "busy"));
	assert_int_equal(f->fb.generate_calls, 1);
	run_until_done(f, &a);
	assert_int_equal(a.code, 0);
}

static void more_slots_more_parallel(void **state)
{
	fx *f = *state;
	f->fb.slots = 2;
	f->fb.delay_ms = 100;
	outcome a = {0}, b = {0};
	submit(f, "m1", 1, &a);
	submit(f, "m1", 1, &b);
	run_until_done(f, &a);
	run_until_done(f, &b);
	assert_int_equal(a.code, 0);
	assert_int_equal(b.code, 0);
	assert_int_equal(f->fb.generate_calls, 2);
}

static void hot_node_skips_local(void **state)
{
	fx *f = *state;
	put_temp(f, "90000\n");
	outcome o = {0};
	submit(f, "m1", 1, &o);
	run_until_done(f, &o);
	assert_int_equal(o.http_status, 503);
	assert_non_null(strstr(o.message, "hot"));
	assert_int_equal(f->fb.generate_calls, 0);
	/* Cooled down: local again. */
	put_temp(f, "50000\n");
	outcome p = {0};
	submit(f, "m1", 1, &p);
	run_until_done(f, &p);
	assert_int_equal(p.code, 0);
	assert_int_equal(f->fb.generate_calls, 1);
}

static void backend_busy_503_falls_through(void **state)
{
	fx *f = *state;
	f->fb.fail_code = -EBUSY;
	outcome o = {0};
	submit(f, "m1", 1, &o);
	run_until_done(f, &o);
	assert_int_equal(o.http_status, 503);
	assert_int_equal(o.sources, 0);
	assert_non_null(strstr(o.message, "scripted failure"));
	router_stats st;
	router_get_stats(f->r, &st);
	assert_int_equal(st.fallbacks, 1);
	assert_int_equal(st.failed, 1);
}

static void refused_connection_falls_through(void **state)
{
	fx *f = *state;
	f->fb.fail_code = -ECONNREFUSED;
	outcome o = {0};
	submit(f, "m1", 0, &o);
	run_until_done(f, &o);
	assert_int_equal(o.http_status, 503);
}

static void bad_request_is_400_not_a_fallback(void **state)
{
	fx *f = *state;
	f->fb.fail_code = -EINVAL;
	outcome o = {0};
	submit(f, "m1", 1, &o);
	run_until_done(f, &o);
	assert_int_equal(o.http_status, 400);
	router_stats st;
	router_get_stats(f->r, &st);
	assert_int_equal(st.fallbacks, 0);
}

static void unknown_model_everywhere_is_404(void **state)
{
	fx *f = *state;
	outcome o = {0};
	submit(f, "nosuch", 1, &o);
	run_until_done(f, &o);
	assert_int_equal(o.http_status, 404);
	assert_non_null(strstr(o.message, "nosuch"));
	assert_int_equal(f->fb.generate_calls, 0); /* the list said it is not here */
	/* "m1" matches "m1:latest". */
	outcome p = {0};
	submit(f, "m1:latest", 1, &p);
	run_until_done(f, &p);
	assert_int_equal(p.code, 0);
}

static void silent_backend_times_out(void **state)
{
	fx *f = *state;
	router_free(f->r);
	make_router(f, 200);
	f->fb.hang = 1;
	outcome o = {0};
	submit(f, "m1", 1, &o);
	run_until_done(f, &o);
	assert_int_equal(o.http_status, 503);
	assert_non_null(strstr(o.message, "no answer within"));
	assert_int_equal(f->fb.cancels, 1); /* the hung call was cancelled */
	assert_int_equal(local_backend_in_flight(f->lb), 0);
}

static void stall_mid_stream_is_an_error(void **state)
{
	fx *f = *state;
	router_free(f->r);
	make_router(f, 300);
	f->fb.chunks = 3;
	f->fb.delay_ms = 50;
	outcome o = {0};
	submit(f, "m1", 1, &o);
	/* After the first chunk, make the rest hang. */
	while (o.chunks == 0)
		uv_run(&f->loop, UV_RUN_ONCE);
	f->fb.delay_ms = 100000;
	run_until_done(f, &o);
	/* Either the second chunk came before the change or not: at least
	 * one chunk, then a timeout error after output began. */
	assert_int_equal(o.code, -ETIMEDOUT);
	assert_int_equal(o.sources, 1);
	assert_non_null(strstr(o.message, "mid-answer"));
}

static void failure_after_first_chunk_is_not_retried(void **state)
{
	fx *f = *state;
	f->fb.chunks = 5;
	f->fb.fail_after_chunks = 2;
	outcome o = {0};
	submit(f, "m1", 1, &o);
	run_until_done(f, &o);
	assert_int_equal(o.chunks, 2);
	assert_int_equal(o.code, -EPROTO);
	assert_int_equal(o.sources, 1);
	assert_int_equal(f->fb.generate_calls, 1);
}

static void cancel_reaches_the_backend(void **state)
{
	fx *f = *state;
	f->fb.chunks = 100;
	f->fb.delay_ms = 20;
	outcome o = {0};
	router_job *j = submit(f, "m1", 1, &o);
	while (o.chunks < 2)
		uv_run(&f->loop, UV_RUN_ONCE);
	router_cancel(j);
	assert_int_equal(f->fb.cancels, 1);
	assert_int_equal(local_backend_in_flight(f->lb), 0);
	/* Nothing follows a cancel. */
	for (int i = 0; i < 20; i++)
		uv_run(&f->loop, UV_RUN_NOWAIT);
	assert_int_equal(o.finished, 0);
	router_stats st;
	router_get_stats(f->r, &st);
	assert_int_equal(st.in_flight, 0);
}

static void cancel_before_start(void **state)
{
	fx *f = *state;
	outcome o = {0};
	router_job *j = submit(f, "m1", 1, &o);
	router_cancel(j);
	uv_run(&f->loop, UV_RUN_NOWAIT);
	assert_int_equal(f->fb.generate_calls, 0);
	assert_int_equal(o.finished, 0);
}

static void no_backend_no_peers(void **state)
{
	fx *f = *state;
	router_free(f->r);
	router_options o = {.thermal_sysfs_root = f->sysfs, .thermal_limit_c = 80};
	assert_int_equal(router_new(&f->loop, &o, &f->r), 0);
	outcome out = {0};
	submit(f, "m1", 1, &out);
	run_until_done(f, &out);
	assert_int_equal(out.http_status, 503);
	assert_non_null(strstr(out.message, "no local backend"));
}

static void stats_json_shape(void **state)
{
	fx *f = *state;
	outcome o = {0};
	submit(f, "m1", 1, &o);
	run_until_done(f, &o);
	json_t *j = router_stats_json(f->r);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "answered"), "local")),
	                 1);
	assert_true(json_is_array(json_object_get(j, "breakers")));
	json_decref(j);
	assert_string_equal(router_source_name(ROUTER_SOURCE_TEMPLATE), "template");
}

/* local_backend.c on its own. */
static void model_list_and_counts(void **state)
{
	fx *f = *state;
	assert_int_equal(local_backend_slots(f->lb), 1);
	f->fb.slots = 4;
	assert_int_equal(local_backend_slots(f->lb), 4);
	assert_int_equal(local_backend_has_model(f->lb, "m1"), 1);
	assert_int_equal(local_backend_has_model(f->lb, "m1:latest"), 1);
	assert_int_equal(local_backend_has_model(f->lb, "m2"), 0);
	json_t *m = local_backend_models(f->lb);
	assert_int_equal(json_array_size(m), 1);
	assert_string_equal(json_string_value(json_array_get(m, 0)), "m1:latest");
	json_decref(m);
	/* A 404 asks for a fresh list. */
	unsigned lists = f->fb.list_calls;
	f->fb.fail_code = -ENOENT;
	f->fb.models_json = "{\"models\":[{\"name\":\"m2\"},{\"model\":\"m3\"},{\"x\":1}]}";
	outcome o = {0};
	submit(f, "m1", 1, &o);
	run_until_done(f, &o);
	while (local_backend_has_model(f->lb, "m2") != 1)
		uv_run(&f->loop, UV_RUN_ONCE);
	assert_true(f->fb.list_calls > lists);
	assert_int_equal(local_backend_has_model(f->lb, "m3"), 1);
	assert_int_equal(local_backend_has_model(f->lb, "m1"), 0);
}

static void peer_origin_counted(void **state)
{
	fx *f = *state;
	f->fb.slots = 2;
	f->fb.hang = 1;
	sovmesh_gen_request req = {sizeof(req), SOVMESH_GEN_CHAT, "m1", "{}", 2, 1, 0};
	static const sovmesh_gen_callbacks gcb = {sizeof(sovmesh_gen_callbacks), NULL, NULL};
	local_call *a = local_backend_generate(f->lb, LOCAL_ORIGIN_PEER, &req, &gcb, NULL);
	local_call *b = local_backend_generate(f->lb, LOCAL_ORIGIN_USER, &req, &gcb, NULL);
	assert_non_null(a);
	assert_non_null(b);
	assert_int_equal(local_backend_in_flight(f->lb), 2);
	assert_int_equal(local_backend_peer_in_flight(f->lb), 1);
	assert_true(local_backend_busy(f->lb));
	local_backend_cancel(f->lb, a);
	assert_int_equal(local_backend_peer_in_flight(f->lb), 0);
	assert_false(local_backend_busy(f->lb));
	/* b is cancelled by local_backend_free in teardown. */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(local_answer_streams, setup, teardown),
	    cmocka_unit_test_setup_teardown(busy_when_slots_are_full, setup, teardown),
	    cmocka_unit_test_setup_teardown(more_slots_more_parallel, setup, teardown),
	    cmocka_unit_test_setup_teardown(hot_node_skips_local, setup, teardown),
	    cmocka_unit_test_setup_teardown(backend_busy_503_falls_through, setup, teardown),
	    cmocka_unit_test_setup_teardown(refused_connection_falls_through, setup, teardown),
	    cmocka_unit_test_setup_teardown(bad_request_is_400_not_a_fallback, setup, teardown),
	    cmocka_unit_test_setup_teardown(unknown_model_everywhere_is_404, setup, teardown),
	    cmocka_unit_test_setup_teardown(silent_backend_times_out, setup, teardown),
	    cmocka_unit_test_setup_teardown(stall_mid_stream_is_an_error, setup, teardown),
	    cmocka_unit_test_setup_teardown(failure_after_first_chunk_is_not_retried, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(cancel_reaches_the_backend, setup, teardown),
	    cmocka_unit_test_setup_teardown(cancel_before_start, setup, teardown),
	    cmocka_unit_test_setup_teardown(no_backend_no_peers, setup, teardown),
	    cmocka_unit_test_setup_teardown(stats_json_shape, setup, teardown),
	    cmocka_unit_test_setup_teardown(model_list_and_counts, setup, teardown),
	    cmocka_unit_test_setup_teardown(peer_origin_counted, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * The host API table and its runtime (host_api.c), driven through a fake
 * in-process plugin: timers, merged fd watches, the thread pool, the event
 * bus, settings, state dirs, leftovers released at instance free.  Every
 * test ends with host_runtime_free() and uv_loop_close() == 0.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "host.h"

/* ---- a fake plugin ----------------------------------------------------- */

typedef struct fake {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	int destroyed;
} fake;

static int create_fail; /* make create() fail, after starting a timer */

static void noop_cb(void *ud)
{
	(void)ud;
}

static int fake_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                       sovmesh_error *err)
{
	if (create_fail) {
		/* A sloppy plugin: starts a timer, then fails. */
		api->timer_start(host, 100000, 0, noop_cb, NULL);
		return sovmesh_fail(err, -EINVAL, "model '%s' not found", "x");
	}
	fake *f = calloc(1, sizeof(*f));
	f->host = host;
	f->api = api;
	*instance = f;
	return 0;
}

static void fake_destroy(void *instance)
{
	free(instance);
}

static const sovmesh_setting_def fake_settings[] = {
    {"flag", SOVMESH_SETTING_BOOL, "true", 0, 0, "a bool"},
    {"count", SOVMESH_SETTING_INT, "5", 0, 10, "an int"},
    {"ratio", SOVMESH_SETTING_DOUBLE, "0.25", 0, 1, "a double"},
    {"mode", SOVMESH_SETTING_STRING, "median", 0, 0, "a string"},
    {NULL, 0, NULL, 0, 0, NULL},
};

static const sovmesh_plugin_descriptor fake_desc = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_AGGREGATOR,
    .name = "test",
    .version = "1.0.0",
    .license = "MIT",
    .description = "test plugin",
    .settings = fake_settings,
    .create = fake_create,
    .destroy = fake_destroy,
    .ops = NULL,
};

static loaded_plugin *fake_loaded(const char *label)
{
	loaded_plugin *p = calloc(1, sizeof(*p));
	char path[128];
	snprintf(path, sizeof(path), "/fake/%s.so", label);
	p->path = strdup(path);
	p->label = strdup(label);
	p->desc = &fake_desc;
	p->kind = SOVMESH_KIND_AGGREGATOR;
	return p;
}

static plugin_instance *instance_new(host_runtime *rt, const char *label, const char *const *params,
                                     size_t n)
{
	plugin_settings *s = NULL;
	sovmesh_error err = {0};
	int rc = plugin_settings_from_params(label, fake_settings, params, n, &s, &err);
	if (rc != 0)
		fail_msg("settings: %s", err.message);
	plugin_instance *pi = NULL;
	rc = plugin_instance_new(rt, fake_loaded(label), s, &pi, &err);
	if (rc != 0)
		fail_msg("instance: %s", err.message);
	return pi;
}

static fake *F(plugin_instance *pi)
{
	return pi->instance;
}

typedef struct env {
	uv_loop_t loop;
	host_runtime *rt;
	plugin_instance *pi;
	sovmesh_host *host;
	const sovmesh_host_api *api;
} env;

static void env_open(env *e, const char *state_dir)
{
	assert_int_equal(uv_loop_init(&e->loop), 0);
	assert_int_equal(host_runtime_new(&e->loop, state_dir, "node-a", &e->rt), 0);
	e->pi = instance_new(e->rt, "agg-test", NULL, 0);
	e->host = F(e->pi)->host;
	e->api = F(e->pi)->api;
}

static void env_close(env *e)
{
	plugin_instance_free(e->pi);
	host_runtime_free(e->rt);
	assert_int_equal(uv_loop_close(&e->loop), 0);
}

/* ---- table ------------------------------------------------------------- */

static void test_table(void **state)
{
	(void)state;
	const sovmesh_host_api *api = host_api_table();
	assert_int_equal(api->size, sizeof(sovmesh_host_api));
	assert_int_equal(api->abi_major, SOVMESH_ABI_MAJOR);
	assert_int_equal(api->abi_minor, SOVMESH_ABI_MINOR);
	assert_true(SOVMESH_HAS_SLOT(api, sovmesh_host_api, event_subscribe));
	assert_true(SOVMESH_HAS_SLOT(api, sovmesh_host_api, http_cancel));

	env e;
	env_open(&e, NULL);
	assert_ptr_equal(host_get_runtime(e.host), e.rt);
	assert_ptr_equal(host_runtime_loop(e.rt), &e.loop);
	assert_string_equal(e.api->node_name(e.host), "node-a");
	uint8_t a[32] = {0}, b[32] = {0};
	assert_int_equal(e.api->random_bytes(e.host, a, sizeof(a)), 0);
	assert_int_equal(e.api->random_bytes(e.host, b, sizeof(b)), 0);
	assert_memory_not_equal(a, b, sizeof(a));
	uint64_t t0 = e.api->now_ms(e.host);
	assert_true(e.api->now_ms(e.host) >= t0);
	assert_true(e.api->wall_time(e.host) > 1600000000);
	void *p = e.api->calloc(e.host, 4, 8);
	assert_non_null(p);
	p = e.api->realloc(e.host, p, 64);
	assert_non_null(p);
	e.api->free(e.host, p);
	e.api->log(e.host, SOVMESH_LOG_DEBUG, "hello %d", 1);
	env_close(&e);
}

/* ---- timers ------------------------------------------------------------ */

typedef struct timer_ctx {
	env *e;
	char order[16];
	int n;
	int repeats;
	sovmesh_timer *self;
	sovmesh_timer *a, *b, *c, *rep, *never;
} timer_ctx;

static timer_ctx *tctx;

static void tick_a(void *ud)
{
	(void)ud;
	tctx->order[tctx->n++] = 'a';
	tctx->e->api->timer_stop(tctx->e->host, tctx->a);
}

static void tick_b(void *ud)
{
	(void)ud;
	tctx->order[tctx->n++] = 'b';
	tctx->e->api->timer_stop(tctx->e->host, tctx->b);
}

static void tick_c(void *ud)
{
	(void)ud;
	tctx->order[tctx->n++] = 'c';
	tctx->e->api->timer_stop(tctx->e->host, tctx->c);
	/* Stopping another, never-fired timer works too. */
	tctx->e->api->timer_stop(tctx->e->host, tctx->never);
	tctx->never = NULL;
}

static void tick_never(void *ud)
{
	(void)ud;
	tctx->order[tctx->n++] = 'X';
}

static void tick_rep(void *ud)
{
	timer_ctx *t = ud;
	if (++t->repeats == 3)
		t->e->api->timer_stop(t->e->host, t->rep); /* inside its own cb */
}

static void test_timers(void **state)
{
	(void)state;
	env e;
	env_open(&e, NULL);
	timer_ctx t = {.e = &e};
	tctx = &t;
	t.a = e.api->timer_start(e.host, 90, 0, tick_a, NULL);
	t.b = e.api->timer_start(e.host, 10, 0, tick_b, NULL);
	t.c = e.api->timer_start(e.host, 50, 0, tick_c, NULL);
	t.never = e.api->timer_start(e.host, 200, 0, tick_never, NULL);
	t.rep = e.api->timer_start(e.host, 5, 5, tick_rep, &t);
	assert_non_null(t.a);
	assert_non_null(t.rep);
	uv_run(&e.loop, UV_RUN_DEFAULT);
	assert_string_equal(t.order, "bca");
	assert_int_equal(t.repeats, 3);
	e.api->timer_stop(e.host, NULL);
	env_close(&e);
}

/* ---- fd watches -------------------------------------------------------- */

typedef struct watch_ctx {
	env *e;
	int fd;
	sovmesh_watch *r, *w;
	int n_r, n_w;
	unsigned last_r, last_w;
	int mode;
} watch_ctx;

enum {
	READ_REMOVES_BOTH = 1,  /* read cb removes the write watch, then itself */
	WRITE_REMOVES_SELF = 2, /* write cb removes itself; read goes on */
};

static void on_read_watch(void *ud, int fd, unsigned revents)
{
	watch_ctx *c = ud;
	c->n_r++;
	c->last_r = revents;
	assert_int_equal(fd, c->fd);
	char buf[16];
	assert_true(read(fd, buf, sizeof(buf)) > 0);
	if (c->mode == READ_REMOVES_BOTH && c->w) {
		c->e->api->watch_remove(c->e->host, c->w);
		c->w = NULL;
	}
	c->e->api->watch_remove(c->e->host, c->r);
	c->r = NULL;
}

static void on_write_watch(void *ud, int fd, unsigned revents)
{
	watch_ctx *c = ud;
	c->n_w++;
	c->last_w = revents;
	assert_int_equal(fd, c->fd);
	c->e->api->watch_remove(c->e->host, c->w);
	c->w = NULL;
}

static void run_two_watches(int mode, int write_first)
{
	env e;
	env_open(&e, NULL);
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	watch_ctx c = {.e = &e, .fd = sv[0], .mode = mode};
	assert_int_equal(write(sv[1], "x", 1), 1);
	if (write_first)
		c.w = e.api->watch_add(e.host, sv[0], SOVMESH_WATCH_WRITE, on_write_watch, &c);
	c.r = e.api->watch_add(e.host, sv[0], SOVMESH_WATCH_READ, on_read_watch, &c);
	if (!write_first)
		c.w = e.api->watch_add(e.host, sv[0], SOVMESH_WATCH_WRITE, on_write_watch, &c);
	assert_non_null(c.r);
	assert_non_null(c.w);
	/* The loop ends only once both watches are gone and the shared poll
	 * handle is closed. */
	uv_run(&e.loop, UV_RUN_DEFAULT);
	assert_null(c.r);
	assert_null(c.w);
	assert_int_equal(c.n_r, 1);
	assert_int_equal(c.last_r, SOVMESH_WATCH_READ);
	if (mode == READ_REMOVES_BOTH) {
		/* Read came first in the dispatch and removed the write
		 * watch: its callback must not run. */
		assert_int_equal(c.n_w, 0);
	} else {
		assert_int_equal(c.n_w, 1);
		assert_int_equal(c.last_w, SOVMESH_WATCH_WRITE);
	}
	close(sv[0]);
	close(sv[1]);
	env_close(&e);
}

static void test_watch_remove_other_in_cb(void **state)
{
	(void)state;
	run_two_watches(READ_REMOVES_BOTH, 0);
}

static void test_watch_remove_self_in_cb(void **state)
{
	(void)state;
	run_two_watches(WRITE_REMOVES_SELF, 1);
}

static void on_hup_watch(void *ud, int fd, unsigned revents)
{
	watch_ctx *c = ud;
	(void)fd;
	c->n_r++;
	c->last_r = revents;
	c->e->api->watch_remove(c->e->host, c->r);
	c->r = NULL;
}

static void test_watch_closed_peer(void **state)
{
	(void)state;
	env e;
	env_open(&e, NULL);
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	watch_ctx c = {.e = &e, .fd = sv[0]};
	c.r = e.api->watch_add(e.host, sv[0], SOVMESH_WATCH_READ, on_hup_watch, &c);
	close(sv[1]);
	uv_run(&e.loop, UV_RUN_DEFAULT);
	assert_int_equal(c.n_r, 1);
	assert_true(c.last_r & (SOVMESH_WATCH_READ | SOVMESH_WATCH_ERROR));
	assert_false(c.last_r & SOVMESH_WATCH_WRITE);
	close(sv[0]);
	env_close(&e);
}

static void on_update_watch(void *ud, int fd, unsigned revents)
{
	watch_ctx *c = ud;
	(void)fd;
	c->n_w++;
	c->last_w = revents;
	if (c->n_w == 1) {
		/* Writable now; switch to READ and make it readable. */
		assert_int_equal(c->e->api->watch_update(c->e->host, c->w, SOVMESH_WATCH_READ), 0);
		assert_int_equal(write(c->mode, "y", 1), 1);
	} else {
		c->e->api->watch_remove(c->e->host, c->w);
		c->w = NULL;
	}
}

static void test_watch_update(void **state)
{
	(void)state;
	env e;
	env_open(&e, NULL);
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	/* mode carries the peer fd to write to. */
	watch_ctx c = {.e = &e, .fd = sv[0], .mode = sv[1]};
	c.w = e.api->watch_add(e.host, sv[0], SOVMESH_WATCH_WRITE, on_update_watch, &c);
	uv_run(&e.loop, UV_RUN_DEFAULT);
	assert_int_equal(c.n_w, 2);
	assert_int_equal(c.last_w, SOVMESH_WATCH_READ);
	close(sv[0]);
	close(sv[1]);
	env_close(&e);
}

/* ---- thread pool ------------------------------------------------------- */

typedef struct work_ctx {
	pthread_t loop_thread;
	pthread_t work_thread;
	int worked, done, cancelled;
	int done_on_loop;
} work_ctx;

static void do_work(void *ud)
{
	work_ctx *w = ud;
	w->work_thread = pthread_self();
	w->worked = 1;
}

static void work_done(void *ud, int cancelled)
{
	work_ctx *w = ud;
	w->done++;
	w->cancelled = cancelled;
	w->done_on_loop = pthread_equal(pthread_self(), w->loop_thread);
}

static void test_queue_work(void **state)
{
	(void)state;
	env e;
	env_open(&e, NULL);
	work_ctx w = {.loop_thread = pthread_self()};
	assert_int_equal(e.api->queue_work(e.host, do_work, work_done, &w), 0);
	assert_int_equal(w.done, 0);
	uv_run(&e.loop, UV_RUN_DEFAULT);
	assert_true(w.worked);
	assert_false(pthread_equal(w.work_thread, w.loop_thread));
	assert_int_equal(w.done, 1);
	assert_int_equal(w.cancelled, 0);
	assert_true(w.done_on_loop);
	assert_int_equal(e.api->queue_work(e.host, NULL, work_done, &w), -EINVAL);
	env_close(&e);
}

/* ---- events ------------------------------------------------------------ */

static char event_log[256];

static void ev_record(void *ud, const char *name, const char *json)
{
	char line[64];
	snprintf(line, sizeof(line), "%s:%s:%s;", (const char *)ud, name, json);
	strncat(event_log, line, sizeof(event_log) - strlen(event_log) - 1);
}

static void test_event_bus(void **state)
{
	(void)state;
	env e;
	env_open(&e, NULL);
	plugin_instance *pi2 = instance_new(e.rt, "dp-test", NULL, 0);
	sovmesh_host *h2 = F(pi2)->host;
	const sovmesh_host_api *api = e.api;

	assert_int_equal(api->event_subscribe(e.host, "round.done", ev_record, "a1"), 0);
	assert_int_equal(api->event_subscribe(h2, "round.done", ev_record, "b"), 0);
	assert_int_equal(api->event_subscribe(e.host, "round.done", ev_record, "a2"), 0);
	assert_int_equal(api->event_subscribe(h2, "other", ev_record, "b-other"), 0);

	event_log[0] = '\0';
	assert_int_equal(api->event_emit(h2, "round.done", "{\"n\":1}"), 0);
	assert_string_equal(
	    event_log, "a1:round.done:{\"n\":1};b:round.done:{\"n\":1};a2:round.done:{\"n\":1};");

	event_log[0] = '\0';
	assert_int_equal(api->event_emit(e.host, "round.done", "{broken"), -EINVAL);
	assert_int_equal(api->event_emit(e.host, "nobody", "1"), 0);
	assert_string_equal(event_log, "");

	/* An instance's subscriptions go with it. */
	plugin_instance_free(e.pi);
	e.pi = NULL;
	event_log[0] = '\0';
	assert_int_equal(api->event_emit(h2, "round.done", "[]"), 0);
	assert_int_equal(api->event_emit(h2, "other", "true"), 0);
	assert_string_equal(event_log, "b:round.done:[];b-other:other:true;");

	plugin_instance_free(pi2);
	host_runtime_free(e.rt);
	assert_int_equal(uv_loop_close(&e.loop), 0);
}

/* ---- settings, node facts ---------------------------------------------- */

static void test_settings(void **state)
{
	(void)state;
	uv_loop_t loop;
	uv_loop_init(&loop);
	host_runtime *rt;
	assert_int_equal(host_runtime_new(&loop, NULL, "n", &rt), 0);
	const char *params[] = {"count=7", "mode=trimmed"};
	plugin_instance *pi = instance_new(rt, "agg-test", params, 2);
	sovmesh_host *h = F(pi)->host;
	const sovmesh_host_api *api = F(pi)->api;
	assert_int_equal(api->setting_bool(h, "flag"), 1);
	assert_int_equal(api->setting_int(h, "count"), 7);
	assert_true(api->setting_double(h, "ratio") == 0.25);
	assert_string_equal(api->setting_string(h, "mode"), "trimmed");
	/* Undeclared names and wrong types: logged, zero value. */
	assert_int_equal(api->setting_int(h, "nope"), 0);
	assert_null(api->setting_string(h, "nope"));
	assert_int_equal(api->setting_int(h, "flag"), 0);
	assert_null(api->setting_string(h, "count"));
	/* No state dir configured: NULL. */
	assert_null(api->plugin_state_dir(h));
	plugin_instance_free(pi);
	host_runtime_free(rt);
	assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_state_dir(void **state)
{
	(void)state;
	char dir[] = "/tmp/sovmesh-host-XXXXXX";
	assert_non_null(mkdtemp(dir));
	env e;
	env_open(&e, dir);
	const char *p = e.api->plugin_state_dir(e.host);
	assert_non_null(p);
	char want[128];
	snprintf(want, sizeof(want), "%s/agg-test", dir);
	assert_string_equal(p, want);
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0700);
	assert_ptr_equal(e.api->plugin_state_dir(e.host), p);
	env_close(&e);
	rmdir(want);
	rmdir(dir);
}

/* ---- leftovers and failures -------------------------------------------- */

static void never_watch(void *ud, int fd, unsigned revents)
{
	(void)ud;
	(void)fd;
	(void)revents;
}

static void never_done(void *ud, int result, long status, const char *message)
{
	(void)status;
	(void)message;
	*(int *)ud = result == 0 ? 1 : 2;
}

static int closed_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {0};
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	socklen_t len = sizeof(a);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	close(fd);
	return ntohs(a.sin_port);
}

static void test_leftovers_released(void **state)
{
	(void)state;
	env e;
	env_open(&e, NULL);
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	int done = 0;
	assert_non_null(e.api->timer_start(e.host, 100000, 100000, noop_cb, NULL));
	assert_non_null(e.api->watch_add(e.host, sv[0], SOVMESH_WATCH_READ, never_watch, NULL));
	assert_non_null(e.api->watch_add(e.host, sv[0], SOVMESH_WATCH_WRITE, never_watch, NULL));
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/", closed_port());
	sovmesh_http_request req = {.size = sizeof(req), .url = url};
	sovmesh_http_callbacks cbs = {.size = sizeof(cbs), .on_done = never_done};
	sovmesh_error err = {0};
	assert_non_null(e.api->http_request(e.host, &req, &cbs, &done, &err));
	/* Free without running the loop: everything is still open. */
	env_close(&e);
	assert_int_equal(done, 0);
	close(sv[0]);
	close(sv[1]);
}

static void test_http_through_host(void **state)
{
	(void)state;
	env e;
	env_open(&e, NULL);
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/", closed_port());
	sovmesh_http_request req = {.size = sizeof(req), .url = url};
	sovmesh_http_callbacks cbs = {.size = sizeof(cbs), .on_done = never_done};
	sovmesh_error err = {0};
	int done = 0;
	assert_non_null(e.api->http_request(e.host, &req, &cbs, &done, &err));
	uv_run(&e.loop, UV_RUN_DEFAULT);
	assert_int_equal(done, 2); /* refused */
	/* A cancelled call is silent. */
	done = 0;
	sovmesh_http_call *call = e.api->http_request(e.host, &req, &cbs, &done, &err);
	assert_non_null(call);
	e.api->http_cancel(e.host, call);
	uv_run(&e.loop, UV_RUN_DEFAULT);
	assert_int_equal(done, 0);
	/* Bad request: NULL and a message. */
	sovmesh_http_request bad = {.size = sizeof(bad), .url = "gopher://x"};
	assert_null(e.api->http_request(e.host, &bad, &cbs, &done, &err));
	assert_int_equal(err.code, -EINVAL);
	env_close(&e);
}

static void test_create_failure(void **state)
{
	(void)state;
	uv_loop_t loop;
	uv_loop_init(&loop);
	host_runtime *rt;
	assert_int_equal(host_runtime_new(&loop, NULL, NULL, &rt), 0);
	plugin_settings *s = NULL;
	sovmesh_error err = {0};
	assert_int_equal(plugin_settings_from_params("agg-test", fake_settings, NULL, 0, &s, &err),
	                 0);
	plugin_instance *pi = NULL;
	create_fail = 1;
	int rc = plugin_instance_new(rt, fake_loaded("agg-test"), s, &pi, &err);
	create_fail = 0;
	assert_int_equal(rc, -EINVAL);
	assert_null(pi);
	assert_string_equal(err.message, "/fake/agg-test.so: create failed: model 'x' not found");
	host_runtime_free(rt);
	assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
	unsetenv("http_proxy");
	unsetenv("HTTP_PROXY");
	unsetenv("all_proxy");
	unsetenv("ALL_PROXY");
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_table),
	    cmocka_unit_test(test_timers),
	    cmocka_unit_test(test_watch_remove_other_in_cb),
	    cmocka_unit_test(test_watch_remove_self_in_cb),
	    cmocka_unit_test(test_watch_closed_peer),
	    cmocka_unit_test(test_watch_update),
	    cmocka_unit_test(test_queue_work),
	    cmocka_unit_test(test_event_bus),
	    cmocka_unit_test(test_settings),
	    cmocka_unit_test(test_state_dir),
	    cmocka_unit_test(test_leftovers_released),
	    cmocka_unit_test(test_http_through_host),
	    cmocka_unit_test(test_create_failure),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * The discovery-mdns AvahiPoll adapter (plugins/discovery-mdns/avahi_poll.c)
 * driven by the core's real host runtime on a socketpair: a read and a
 * write watch on one fd, dispatch, watches and timeouts freed inside
 * their own callbacks, absolute timeouts in the past and the future,
 * re-arming and disabling.  Every test ends with the loop closed cleanly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "avahi_poll.h"
#include "host.h"

#include <sovmesh/discovery.h>

/* ---- a fake plugin instance, to get a sovmesh_host --------------------- */

typedef struct fake {
	sovmesh_host *host;
	const sovmesh_host_api *api;
} fake;

static int fake_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                       sovmesh_error *err)
{
	(void)err;
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

static const sovmesh_plugin_descriptor fake_desc = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_DISCOVERY,
    .name = "test",
    .version = "1.0.0",
    .license = "MIT",
    .description = "test plugin",
    .create = fake_create,
    .destroy = fake_destroy,
};

typedef struct env {
	uv_loop_t loop;
	host_runtime *rt;
	plugin_instance *pi;
	mdns_poll *mp;
	const AvahiPoll *ap;
	int sv[2];
} env;

static void env_open(env *e)
{
	memset(e, 0, sizeof(*e));
	assert_int_equal(uv_loop_init(&e->loop), 0);
	assert_int_equal(host_runtime_new(&e->loop, NULL, "node-a", &e->rt), 0);
	loaded_plugin *p = calloc(1, sizeof(*p));
	p->path = strdup("/fake/discovery-test.so");
	p->label = strdup("discovery-test");
	p->desc = &fake_desc;
	p->kind = SOVMESH_KIND_DISCOVERY;
	plugin_settings *s = NULL;
	sovmesh_error err = {0};
	if (plugin_settings_from_params("discovery-test", NULL, NULL, 0, &s, &err) != 0)
		fail_msg("settings: %s", err.message);
	if (plugin_instance_new(e->rt, p, s, &e->pi, &err) != 0)
		fail_msg("instance: %s", err.message);
	fake *f = e->pi->instance;
	assert_int_equal(mdns_poll_new(f->host, f->api, &e->mp), 0);
	e->ap = mdns_poll_get(e->mp);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, e->sv), 0);
}

static void env_close(env *e)
{
	assert_int_equal(mdns_poll_live(e->mp), 0);
	mdns_poll_free(e->mp);
	plugin_instance_free(e->pi);
	host_runtime_free(e->rt);
	assert_int_equal(uv_loop_close(&e->loop), 0);
	if (e->sv[0] >= 0)
		close(e->sv[0]);
	if (e->sv[1] >= 0)
		close(e->sv[1]);
}

/* Run the loop until *flag is non-zero; fail after ~5 s of iterations. */
static void run_until(env *e, const int *flag)
{
	for (int i = 0; i < 5000 && !*flag; i++) {
		uv_run(&e->loop, UV_RUN_NOWAIT);
		if (!*flag)
			usleep(1000);
	}
	assert_true(*flag);
}

static void spin(env *e, int n)
{
	for (int i = 0; i < n; i++) {
		uv_run(&e->loop, UV_RUN_NOWAIT);
		usleep(1000);
	}
}

static struct timeval tv_from_now(long ms)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	long long us = (long long)tv.tv_sec * 1000000 + tv.tv_usec + (long long)ms * 1000;
	tv.tv_sec = us / 1000000;
	tv.tv_usec = us % 1000000;
	return tv;
}

/* ---- watches ----------------------------------------------------------- */

typedef struct wctx {
	env *e;
	AvahiWatch *rd, *wr;
	int rd_calls, wr_calls;
	AvahiWatchEvent rd_ev, wr_ev, rd_get, wr_get;
	int free_rd_on; /* free rd inside its own callback on this call */
} wctx;

static void on_rd(AvahiWatch *w, int fd, AvahiWatchEvent ev, void *ud)
{
	wctx *c = ud;
	assert_ptr_equal(w, c->rd);
	c->rd_calls++;
	c->rd_ev = ev;
	c->rd_get = c->e->ap->watch_get_events(w);
	char buf[64];
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	if (c->rd_calls == c->free_rd_on) {
		c->e->ap->watch_free(w);
		c->rd = NULL;
	}
}

static void on_wr(AvahiWatch *w, int fd, AvahiWatchEvent ev, void *ud)
{
	wctx *c = ud;
	(void)fd;
	assert_ptr_equal(w, c->wr);
	c->wr_calls++;
	c->wr_ev = ev;
	c->wr_get = c->e->ap->watch_get_events(w);
	/* Like libdbus once its queue is empty: stop asking for write. */
	c->e->ap->watch_update(w, 0);
}

static void test_read_and_write_watch_on_one_fd(void **state)
{
	(void)state;
	env e;
	env_open(&e);
	wctx c = {.e = &e, .free_rd_on = 2};
	int fd = e.sv[0];
	c.rd = e.ap->watch_new(e.ap, fd, AVAHI_WATCH_IN, on_rd, &c);
	c.wr = e.ap->watch_new(e.ap, fd, AVAHI_WATCH_OUT, on_wr, &c);
	assert_non_null(c.rd);
	assert_non_null(c.wr);
	assert_int_equal(mdns_poll_live(e.mp), 2);

	/* Writable at once; nothing to read yet. */
	run_until(&e, &c.wr_calls);
	assert_int_equal(c.wr_ev, AVAHI_WATCH_OUT);
	assert_int_equal(c.wr_get, AVAHI_WATCH_OUT);
	assert_int_equal(c.rd_calls, 0);

	/* Data arrives: only the read watch fires, and the write watch,
	 * updated to no events, stays quiet. */
	assert_int_equal(write(e.sv[1], "x", 1), 1);
	run_until(&e, &c.rd_calls);
	assert_int_equal(c.rd_ev, AVAHI_WATCH_IN);
	assert_int_equal(c.rd_get, AVAHI_WATCH_IN);
	assert_int_equal(e.ap->watch_get_events(c.rd), AVAHI_WATCH_IN);
	assert_int_equal(c.wr_calls, 1);

	/* Ask for write again: it fires again. */
	e.ap->watch_update(c.wr, AVAHI_WATCH_OUT);
	for (int i = 0; i < 5000 && c.wr_calls < 2; i++)
		spin(&e, 1);
	assert_int_equal(c.wr_calls, 2);

	/* Second read: the read watch frees itself inside its callback. */
	assert_int_equal(write(e.sv[1], "y", 1), 1);
	for (int i = 0; i < 5000 && c.rd_calls < 2; i++)
		spin(&e, 1);
	assert_int_equal(c.rd_calls, 2);
	assert_null(c.rd);
	assert_int_equal(mdns_poll_live(e.mp), 1);

	/* More data: the freed watch is never called again. */
	assert_int_equal(write(e.sv[1], "z", 1), 1);
	spin(&e, 20);
	assert_int_equal(c.rd_calls, 2);

	/* Hang-up reaches a read watch as IN|HUP|ERR (libdbus reads first). */
	c.free_rd_on = 0;
	c.rd_calls = 0;
	c.rd = e.ap->watch_new(e.ap, fd, AVAHI_WATCH_IN, on_rd, &c);
	close(e.sv[1]);
	e.sv[1] = -1;
	run_until(&e, &c.rd_calls);
	assert_true(c.rd_ev & AVAHI_WATCH_HUP);

	e.ap->watch_free(c.rd);
	e.ap->watch_free(c.wr);
	env_close(&e);
}

/* One callback frees the OTHER watch on the same fd mid-dispatch. */
typedef struct pair_ctx {
	env *e;
	AvahiWatch *a, *b;
	int a_calls, b_calls;
} pair_ctx;

static void on_a(AvahiWatch *w, int fd, AvahiWatchEvent ev, void *ud)
{
	pair_ctx *c = ud;
	(void)fd, (void)ev;
	c->a_calls++;
	if (c->b) {
		c->e->ap->watch_free(c->b);
		c->b = NULL;
	}
	c->e->ap->watch_free(w);
	c->a = NULL;
}

static void on_b(AvahiWatch *w, int fd, AvahiWatchEvent ev, void *ud)
{
	pair_ctx *c = ud;
	(void)w, (void)fd, (void)ev;
	c->b_calls++;
}

static void test_free_other_watch_in_callback(void **state)
{
	(void)state;
	env e;
	env_open(&e);
	pair_ctx c = {.e = &e};
	c.a = e.ap->watch_new(e.ap, e.sv[0], AVAHI_WATCH_OUT, on_a, &c);
	c.b = e.ap->watch_new(e.ap, e.sv[0], AVAHI_WATCH_OUT, on_b, &c);
	run_until(&e, &c.a_calls);
	spin(&e, 10);
	/* a runs first (order of addition) and frees b before its turn. */
	assert_int_equal(c.a_calls, 1);
	assert_int_equal(c.b_calls, 0);
	assert_int_equal(mdns_poll_live(e.mp), 0);
	env_close(&e);
}

/* ---- timeouts ---------------------------------------------------------- */

typedef struct tctx {
	env *e;
	AvahiTimeout *t;
	int calls;
	int rearm_until; /* re-arm into the past until this many calls */
	int free_on;     /* free inside the callback on this call */
	struct timeval fired_at;
} tctx;

static void on_timeout(AvahiTimeout *t, void *ud)
{
	tctx *c = ud;
	assert_ptr_equal(t, c->t);
	c->calls++;
	gettimeofday(&c->fired_at, NULL);
	if (c->calls < c->rearm_until) {
		struct timeval past = tv_from_now(-1000);
		c->e->ap->timeout_update(t, &past);
	}
	if (c->calls == c->free_on) {
		c->e->ap->timeout_free(t);
		c->t = NULL;
	}
}

static void test_timeout_past_fires_once(void **state)
{
	(void)state;
	env e;
	env_open(&e);
	tctx c = {.e = &e};
	struct timeval past = tv_from_now(-10000);
	c.t = e.ap->timeout_new(e.ap, &past, on_timeout, &c);
	assert_non_null(c.t);
	run_until(&e, &c.calls);
	/* Expired means disabled: no second call without an update. */
	spin(&e, 30);
	assert_int_equal(c.calls, 1);
	e.ap->timeout_free(c.t);
	env_close(&e);
}

static void test_timeout_future_and_rearm(void **state)
{
	(void)state;
	env e;
	env_open(&e);
	tctx c = {.e = &e, .rearm_until = 3};
	struct timeval start;
	gettimeofday(&start, NULL);
	struct timeval soon = tv_from_now(100);
	c.t = e.ap->timeout_new(e.ap, &soon, on_timeout, &c);
	run_until(&e, &c.calls);
	long long waited = ((long long)c.fired_at.tv_sec - start.tv_sec) * 1000 +
	                   (c.fired_at.tv_usec - start.tv_usec) / 1000;
	/* Absolute time converted to a delay, not fired at once (loose
	 * bound: libuv's cached loop time may make it a little early). */
	assert_true(waited >= 50);
	/* The callback re-armed into the past twice more. */
	for (int i = 0; i < 5000 && c.calls < 3; i++)
		spin(&e, 1);
	spin(&e, 20);
	assert_int_equal(c.calls, 3);

	/* Re-arm from outside a callback, then move it later and earlier. */
	struct timeval far = tv_from_now(60000);
	e.ap->timeout_update(c.t, &far);
	spin(&e, 30);
	assert_int_equal(c.calls, 3);
	struct timeval past = tv_from_now(-5);
	e.ap->timeout_update(c.t, &past);
	for (int i = 0; i < 5000 && c.calls < 4; i++)
		spin(&e, 1);
	assert_int_equal(c.calls, 4);
	e.ap->timeout_free(c.t);
	env_close(&e);
}

static void test_timeout_null_disables(void **state)
{
	(void)state;
	env e;
	env_open(&e);
	tctx c = {.e = &e};
	/* Created disabled. */
	c.t = e.ap->timeout_new(e.ap, NULL, on_timeout, &c);
	assert_non_null(c.t);
	spin(&e, 30);
	assert_int_equal(c.calls, 0);
	/* Armed, then disabled before it is due. */
	struct timeval soon = tv_from_now(30);
	e.ap->timeout_update(c.t, &soon);
	e.ap->timeout_update(c.t, NULL);
	spin(&e, 100);
	assert_int_equal(c.calls, 0);
	/* And armed again. */
	struct timeval past = tv_from_now(-1);
	e.ap->timeout_update(c.t, &past);
	run_until(&e, &c.calls);
	e.ap->timeout_free(c.t);
	env_close(&e);
}

static void test_timeout_free_in_callback(void **state)
{
	(void)state;
	env e;
	env_open(&e);
	/* Re-armed and then freed in the same callback. */
	tctx c = {.e = &e, .rearm_until = 5, .free_on = 2};
	struct timeval past = tv_from_now(-1);
	c.t = e.ap->timeout_new(e.ap, &past, on_timeout, &c);
	for (int i = 0; i < 5000 && c.calls < 2; i++)
		spin(&e, 1);
	spin(&e, 30);
	assert_int_equal(c.calls, 2);
	assert_null(c.t);
	assert_int_equal(mdns_poll_live(e.mp), 0);
	env_close(&e);
}

/* Objects Avahi forgot to free are released by mdns_poll_free. */
static void noop_watch(AvahiWatch *w, int fd, AvahiWatchEvent ev, void *ud)
{
	(void)w, (void)fd, (void)ev, (void)ud;
}

static void test_poll_free_releases_leftovers(void **state)
{
	(void)state;
	env e;
	env_open(&e);
	tctx c = {.e = &e};
	struct timeval far = tv_from_now(60000);
	assert_non_null(e.ap->timeout_new(e.ap, &far, on_timeout, &c));
	assert_non_null(e.ap->watch_new(e.ap, e.sv[0], AVAHI_WATCH_IN, noop_watch, NULL));
	assert_null(e.ap->watch_new(e.ap, -1, AVAHI_WATCH_IN, noop_watch, NULL));
	assert_int_equal(mdns_poll_live(e.mp), 2);
	mdns_poll_free(e.mp);
	e.mp = NULL;
	plugin_instance_free(e.pi);
	host_runtime_free(e.rt);
	assert_int_equal(uv_loop_close(&e.loop), 0);
	close(e.sv[0]);
	close(e.sv[1]);
	assert_int_equal(c.calls, 0);
}

/* ---- the plugin itself, with no D-Bus to talk to ------------------------ */

static int sink_calls;

static void count_event(void *ctx, sovmesh_peer_event ev, const sovmesh_discovered_peer *p)
{
	(void)ctx, (void)ev, (void)p;
	sink_calls++;
}

static size_t count_in_file(FILE *f, const char *needle)
{
	size_t n = 0;
	char line[1024];
	rewind(f);
	while (fgets(line, sizeof(line), f))
		if (strstr(line, needle))
			n++;
	return n;
}

static void test_plugin_without_avahi(void **state)
{
	(void)state;
	/* libdbus honours this: the "system bus" is a socket that is not
	 * there, as on a host without dbus/avahi-daemon running. */
	setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/sovmesh-test-bus", 1);
	const char *dir = getenv("SOVMESH_BUILD_PLUGIN_DIR");
	assert_non_null(dir);
	char path[1024];
	snprintf(path, sizeof(path), "%s/discovery-mdns.so", dir);

	uv_loop_t loop;
	host_runtime *rt = NULL;
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(host_runtime_new(&loop, NULL, "node-a", &rt), 0);
	loaded_plugin *lp = NULL;
	sovmesh_error err = {0};
	if (plugin_load_file(path, SOVMESH_KIND_DISCOVERY, "mdns", &lp, &err) != 0)
		fail_msg("load: %s", err.message);
	const sovmesh_discovery_ops *ops = lp->ops;
	plugin_settings *s = NULL;
	assert_int_equal(
	    plugin_settings_from_params("discovery-mdns", lp->desc->settings, NULL, 0, &s, &err),
	    0);
	plugin_instance *pi = NULL;
	if (plugin_instance_new(rt, lp, s, &pi, &err) != 0)
		fail_msg("instance: %s", err.message);

	sovmesh_discovery_sink sink = {.size = sizeof(sink), .peer_event = count_event};
	sovmesh_local_service svc = {
	    .size = sizeof(svc),
	    .node_name = "node-a",
	    .fingerprint = "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
	    .peer_port = 7443,
	    .proto_version = 1,
	};
	/* Unusable configuration is refused with a message. */
	sovmesh_local_service bad = svc;
	bad.fingerprint = "abc";
	assert_int_equal(ops->start(pi->instance, &bad, &sink, NULL, &err), -EINVAL);
	assert_non_null(strstr(err.message, "fingerprint"));
	bad = svc;
	bad.node_name = "bad\x01name";
	assert_int_equal(ops->start(pi->instance, &bad, &sink, NULL, &err), -EINVAL);
	bad = svc;
	bad.peer_port = 0;
	assert_int_equal(ops->start(pi->instance, &bad, &sink, NULL, &err), -EINVAL);

	/* Capture the log (stderr) to count warnings. */
	fflush(stderr);
	FILE *cap = tmpfile();
	assert_non_null(cap);
	int saved = dup(2);
	assert_true(saved >= 0);
	assert_int_equal(dup2(fileno(cap), 2), 2);

	/* A missing daemon is not an error: start succeeds, warns once,
	 * and keeps retrying (first retry after 1 s) without warning again. */
	int rc = ops->start(pi->instance, &svc, &sink, NULL, &err);
	svc.pairing_port = 7444;
	int urc = ops->update(pi->instance, &svc, &err);
	ops->refresh(pi->instance);
	uint64_t until = uv_hrtime() / 1000000u + 1600;
	while (uv_hrtime() / 1000000u < until) {
		uv_run(&loop, UV_RUN_NOWAIT);
		usleep(5000);
	}
	ops->stop(pi->instance);
	ops->stop(pi->instance); /* twice is harmless */
	/* Started again after a stop, then destroyed while running. */
	int rc2 = ops->start(pi->instance, &svc, &sink, NULL, &err);
	plugin_instance_free(pi);
	host_runtime_free(rt);
	int closed = uv_loop_close(&loop);

	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	size_t warnings = count_in_file(cap, "avahi-daemon is not available");
	size_t leftovers = count_in_file(cap, "released them");
	fclose(cap);
	unsetenv("DBUS_SYSTEM_BUS_ADDRESS");

	assert_int_equal(rc, 0);
	assert_int_equal(urc, 0);
	assert_int_equal(rc2, 0);
	assert_int_equal(closed, 0);
	/* One warning per outage: the first start and the restart. */
	assert_int_equal(warnings, 2);
	assert_int_equal(leftovers, 0);
	assert_int_equal(sink_calls, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_read_and_write_watch_on_one_fd),
	    cmocka_unit_test(test_free_other_watch_in_callback),
	    cmocka_unit_test(test_timeout_past_fires_once),
	    cmocka_unit_test(test_timeout_future_and_rearm),
	    cmocka_unit_test(test_timeout_null_disables),
	    cmocka_unit_test(test_timeout_free_in_callback),
	    cmocka_unit_test(test_poll_free_releases_leftovers),
	    cmocka_unit_test(test_plugin_without_avahi),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * discovery-static through the real loader, settings from a config
 * section and the real host runtime, run by discovery_host.c: the
 * configured peers are reported as APPEARED after start() returns, tagged
 * with the plugin's label; bad entries are refused in create() with a
 * message naming the entry.
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
#include <uv.h>

#include "config.h"
#include "discovery_host.h"
#include "host.h"
#include "plugin_loader.h"

#define MAX_EVENTS 16

typedef struct seen {
	int event;
	char source[64];
	char id[96];
	char address[80];
	int port;
	int had_fp, had_name;
} seen;

typedef struct fx {
	uv_loop_t loop;
	uv_timer_t tick;
	host_runtime *rt;
	plugin_search_path sp;
	sovmesh_config *cfg;
	discovery_host *dh;
	seen ev[MAX_EVENTS];
	int n;
} fx;

static void on_event(void *ud, const char *source, sovmesh_peer_event event,
                     const sovmesh_discovered_peer *p)
{
	fx *f = ud;
	if (f->n >= MAX_EVENTS)
		return;
	seen *s = &f->ev[f->n++];
	s->event = event;
	snprintf(s->source, sizeof(s->source), "%s", source);
	snprintf(s->id, sizeof(s->id), "%s", p->instance_id);
	snprintf(s->address, sizeof(s->address), "%s", p->address ? p->address : "");
	s->port = p->port;
	s->had_fp = p->fingerprint != NULL;
	s->had_name = p->node_name != NULL;
}

static void on_tick(uv_timer_t *t)
{
	(void)t;
}

static int setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	assert_int_equal(uv_loop_init(&f->loop), 0);
	uv_timer_init(&f->loop, &f->tick);
	uv_timer_start(&f->tick, on_tick, 20, 20);
	assert_int_equal(host_runtime_new(&f->loop, NULL, "static-test", &f->rt), 0);
	const char *dir = getenv("SOVMESH_BUILD_PLUGIN_DIR");
	assert_non_null(dir);
	assert_int_equal(plugin_search_path_build(&dir, 1, &f->sp), 0);
	assert_int_equal(discovery_host_new(f->rt, on_event, f, &f->dh), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx *f = *state;
	discovery_host_free(f->dh);
	config_free(f->cfg);
	plugin_search_path_free(&f->sp);
	host_runtime_free(f->rt);
	uv_close((uv_handle_t *)&f->tick, NULL);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	free(f);
	return 0;
}

static void use_peers(fx *f, const char *peers)
{
	char text[512];
	snprintf(text, sizeof(text),
	         "plugin_settings = { discovery-static = { peers = \"%s\"; }; };", peers);
	sovmesh_error err = {0};
	if (config_load_string(text, "t.conf", &f->cfg, &err) < 0)
		fail_msg("config: %s", err.message);
}

static const discovery_self self = {
    .node_name = "me",
    .fingerprint = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    .peer_port = 47470,
};

static void run_until(fx *f, int n)
{
	uint64_t deadline = uv_now(&f->loop) + 5000;
	while (f->n < n && uv_now(&f->loop) < deadline)
		uv_run(&f->loop, UV_RUN_ONCE);
}

static const seen *find(const fx *f, const char *id)
{
	for (int i = 0; i < f->n; i++)
		if (strcmp(f->ev[i].id, id) == 0)
			return &f->ev[i];
	return NULL;
}

static void test_reports_configured_peers(void **state)
{
	fx *f = *state;
	use_peers(f, " 127.0.0.1:4000 ,[::1]:4001,10.1.2.3:47470, 127.0.0.1:4000");
	sovmesh_error err = {0};
	if (discovery_host_load(f->dh, &f->sp, f->cfg, "static", &err) < 0)
		fail_msg("load: %s", err.message);
	assert_int_equal(discovery_host_count(f->dh), 1);
	assert_string_equal(discovery_host_label(f->dh, 0), "discovery-static");
	assert_int_equal(discovery_host_start(f->dh, &self, &err), 0);
	/* Reported from the loop, not from inside start(). */
	assert_int_equal(f->n, 0);
	run_until(f, 3);
	/* One more turn or two: the duplicate must not be reported. */
	for (int i = 0; i < 3; i++)
		uv_run(&f->loop, UV_RUN_ONCE);
	assert_int_equal(f->n, 3);

	const seen *a = find(f, "127.0.0.1:4000");
	assert_non_null(a);
	assert_int_equal(a->event, SOVMESH_PEER_APPEARED);
	assert_string_equal(a->source, "discovery-static");
	assert_string_equal(a->address, "127.0.0.1");
	assert_int_equal(a->port, 4000);
	assert_false(a->had_fp);
	assert_false(a->had_name);
	const seen *b = find(f, "[::1]:4001");
	assert_non_null(b);
	assert_string_equal(b->address, "::1");
	assert_int_equal(b->port, 4001);
	const seen *c = find(f, "10.1.2.3:47470");
	assert_non_null(c);
	assert_int_equal(c->port, 47470);

	/* refresh reports them again; after free nothing more arrives. */
	discovery_host_refresh(f->dh);
	run_until(f, 6);
	assert_int_equal(f->n, 6);
	assert_int_equal(f->ev[5].event, SOVMESH_PEER_APPEARED);
}

static void test_empty_list_reports_nothing(void **state)
{
	fx *f = *state;
	sovmesh_error err = {0};
	/* No section at all: the default "" */
	if (discovery_host_load(f->dh, &f->sp, NULL, "static", &err) < 0)
		fail_msg("load: %s", err.message);
	assert_int_equal(discovery_host_start(f->dh, &self, &err), 0);
	for (int i = 0; i < 5; i++)
		uv_run(&f->loop, UV_RUN_NOWAIT);
	assert_int_equal(f->n, 0);
}

static void expect_refused(fx *f, const char *peers, const char *needle)
{
	use_peers(f, peers);
	sovmesh_error err = {0};
	assert_true(discovery_host_load(f->dh, &f->sp, f->cfg, "static", &err) < 0);
	if (!strstr(err.message, needle))
		fail_msg("'%s' not in: %s", needle, err.message);
	assert_null(strchr(err.message, '\n'));
	assert_int_equal(discovery_host_count(f->dh), 0);
	config_free(f->cfg);
	f->cfg = NULL;
}

static void test_bad_entries_refused(void **state)
{
	fx *f = *state;
	expect_refused(f, "127.0.0.1:4000, example.com:4000",
	               "entry 2 'example.com:4000' is not a numeric host:port");
	expect_refused(f, "10.0.0.1", "'10.0.0.1' is not a numeric host:port: missing ':port'");
	expect_refused(f, "10.0.0.1:0", "port must be 1..65535");
	expect_refused(f, "10.0.0.1:70000", "port must be 1..65535");
	expect_refused(f, "::1:4000", "'::1:4000'");
	expect_refused(f, "[::1]4000", "[addr]:port");
	expect_refused(f, "10.0.0.1:4000,", "empty entry");
	expect_refused(f, "300.0.0.1:4000", "numeric IPv4");
	/* the plugin's own file name leads the line */
	expect_refused(f, "x", "discovery-static.so: create failed: peers: entry 1 'x'");
}

static void test_unknown_plugin(void **state)
{
	fx *f = *state;
	sovmesh_error err = {0};
	assert_int_equal(discovery_host_load(f->dh, &f->sp, NULL, "nosuch", &err), -ENOENT);
	assert_non_null(strstr(err.message, "discovery-nosuch"));
}

static void test_twice_refused(void **state)
{
	fx *f = *state;
	sovmesh_error err = {0};
	assert_int_equal(discovery_host_load(f->dh, &f->sp, NULL, "static", &err), 0);
	assert_int_equal(discovery_host_load(f->dh, &f->sp, NULL, "static", &err), -EEXIST);
	assert_non_null(strstr(err.message, "discovery-static: named twice"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_reports_configured_peers, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_empty_list_reports_nothing, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_entries_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_unknown_plugin, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_twice_refused, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * peer_table.c + peer_health.c: nodes on one loop, each with its own
 * identity and trust store, a peer port on 127.0.0.1:0 serving
 * /peer/v1/health, and a client.  a and b pin each other; c pins nobody.
 * Only a runs a peer table (checks every 100 ms, 2 misses -> offline);
 * discovery events are injected as the plugins would send them.  Waits
 * are loop-driven with a generous deadline; nothing asserts on timing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "peer_client.h"
#include "peer_health.h"
#include "peer_table.h"
#include "peer_transport.h"

typedef struct node {
	char dir[64];
	identity *id;
	trust_store *ts;
	peer_client *pc;
	peer_transport *pt;
	peer_health *health;
	int port;
} node;

typedef struct fx {
	uv_loop_t loop;
	uv_timer_t tick;
	node a, b, c;
	peer_table *t;
	int closed;
} fx;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void on_closed(void *ud)
{
	fx *f = ud;
	f->closed++;
}

/* What the daemon will do: one trust listener fanning out. */
static void fan_out(void *ud, const trusted_peer *p, int removed)
{
	fx *f = ud;
	peer_client_trust_changed(f->a.pc, p, removed);
	if (f->t)
		peer_table_trust_changed(f->t, p, removed);
}

static void load_models(void *ud, int64_t *in_flight, int64_t *capacity)
{
	(void)ud;
	*in_flight = 1;
	*capacity = 3;
}

static json_t *models(void *ud)
{
	(void)ud;
	return json_pack("[s,s]", "llama3.2:1b", "qwen2.5:0.5b");
}

static void thermal(void *ud, int *hot, int *has_temp, double *temp_c)
{
	(void)ud;
	*hot = 1;
	*has_temp = 1;
	*temp_c = 81.5;
}

/* (Re)open n's peer port on `listen` with the health endpoint. */
static void node_listen(fx *f, node *n, const char *listen)
{
	peer_transport_options o = {.listen = listen};
	if (n == &f->a) {
		o.on_trust_change = fan_out;
		o.on_trust_change_ud = f;
	} else {
		o.on_trust_change = peer_client_trust_changed;
		o.on_trust_change_ud = n->pc;
	}
	sovmesh_error err = {0};
	if (peer_transport_new(&f->loop, n->id, n->ts, &o, &n->pt, &err) < 0)
		fail_msg("peer transport: %s", err.message);
	n->port = peer_transport_port(n->pt);
	assert_true(n->port > 0);
	assert_int_equal(peer_health_register(n->pt, n->id, 4, NULL, &n->health), 0);
}

static void node_stop_listening(fx *f, node *n)
{
	int before = f->closed;
	peer_transport_close(n->pt, on_closed, f);
	n->pt = NULL;
	while (f->closed == before)
		uv_run(&f->loop, UV_RUN_ONCE);
	peer_health_free(n->health);
	n->health = NULL;
}

static void node_init(fx *f, node *n, const char *name)
{
	snprintf(n->dir, sizeof(n->dir), "/tmp/sovmesh-ptab-XXXXXX");
	assert_non_null(mkdtemp(n->dir));
	sovmesh_error err = {0};
	if (identity_load_or_create(n->dir, name, &n->id, &err) < 0)
		fail_msg("identity: %s", err.message);
	if (trust_store_open(n->dir, &n->ts, &err) < 0)
		fail_msg("trust store: %s", err.message);
	assert_int_equal(peer_client_new(&f->loop, n->id, n->ts, &n->pc), 0);
	node_listen(f, n, "127.0.0.1:0");
}

/* x pins y (no address: the table must find it). */
static void trust(node *x, const node *y)
{
	trusted_peer p = {.name = y->id->node_name};
	memcpy(p.fingerprint_hex, y->id->fingerprint_hex, sizeof(p.fingerprint_hex));
	sovmesh_error err = {0};
	if (trust_store_add(x->ts, &p, &err) < 0)
		fail_msg("trust_store_add: %s", err.message);
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
	node_init(f, &f->a, "alpha");
	node_init(f, &f->b, "beta");
	node_init(f, &f->c, "gamma");
	trust(&f->a, &f->b);
	trust(&f->b, &f->a);
	peer_table_options o = {.interval_ms = 100, .timeout_ms = 1000, .fail_threshold = 2};
	assert_int_equal(
	    peer_table_new(&f->loop, f->a.ts, f->a.pc, f->a.id->fingerprint_hex, &o, &f->t), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx *f = *state;
	f->closed = 0;
	int expect = 1;
	peer_table_free(f->t, on_closed, f);
	node *nodes[] = {&f->a, &f->b, &f->c};
	for (int i = 0; i < 3; i++) {
		if (nodes[i]->pt) {
			peer_transport_close(nodes[i]->pt, on_closed, f);
			expect++;
		}
		peer_client_free(nodes[i]->pc, on_closed, f);
		expect++;
	}
	uv_close((uv_handle_t *)&f->tick, NULL);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(f->closed, expect);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	for (int i = 0; i < 3; i++) {
		peer_health_free(nodes[i]->health);
		trust_store_free(nodes[i]->ts);
		identity_free(nodes[i]->id);
		nftw(nodes[i]->dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	}
	free(f);
	return 0;
}

/* --- helpers --- */

/* A report as a plugin would send it; fp / name may be NULL. */
static void report(fx *f, const char *source, sovmesh_peer_event ev, const char *id, const char *fp,
                   const char *name, int port, uint16_t pairing_port)
{
	sovmesh_discovered_peer p = {
	    .size = sizeof(p),
	    .instance_id = id,
	    .node_name = name,
	    .fingerprint = fp,
	    .address = "127.0.0.1",
	    .port = (uint16_t)port,
	    .proto_version = 1,
	    .pairing_port = pairing_port,
	};
	peer_table_discovery_event(f->t, source, ev, &p);
}

static peer_status status_of(fx *f, const node *n)
{
	peer_info pi;
	if (peer_table_lookup(f->t, n->id->fingerprint_hex, &pi) < 0)
		fail_msg("%s is not in the paired list", n->id->node_name);
	return pi.status;
}

static void wait_status(fx *f, const node *n, peer_status want)
{
	uint64_t start = uv_now(&f->loop);
	while (status_of(f, n) != want) {
		uv_run(&f->loop, UV_RUN_ONCE);
		if (uv_now(&f->loop) - start > 15000)
			fail_msg("%s did not become %s within 15 s", n->id->node_name,
			         want == PEER_CONNECTED ? "connected" : "offline");
	}
}

static void spin(fx *f, unsigned ms)
{
	uint64_t start = uv_now(&f->loop);
	while (uv_now(&f->loop) - start < ms)
		uv_run(&f->loop, UV_RUN_ONCE);
}

static char *addr_of(const node *n, char *buf)
{
	snprintf(buf, 32, "127.0.0.1:%d", n->port);
	return buf;
}

/* --- cases --- */

static void test_health_endpoint_answer(void **state)
{
	fx *f = *state;
	json_t *j = peer_health_json(f->b.health);
	assert_non_null(j);
	assert_string_equal(json_string_value(json_object_get(j, "name")), "beta");
	assert_string_equal(json_string_value(json_object_get(j, "fingerprint")),
	                    f->b.id->fingerprint_hex);
	assert_int_equal(json_integer_value(json_object_get(j, "protocol")), 1);
	assert_int_equal(json_array_size(json_object_get(j, "models")), 0);
	json_t *load = json_object_get(j, "load");
	assert_int_equal(json_integer_value(json_object_get(load, "in_flight")), 0);
	assert_int_equal(json_integer_value(json_object_get(load, "capacity")), 4);
	json_t *th = json_object_get(j, "thermal");
	assert_true(json_is_false(json_object_get(th, "hot")));
	assert_true(json_is_null(json_object_get(th, "temp_c")));
	json_decref(j);
}

static void test_static_address_learned_connected(void **state)
{
	fx *f = *state;
	char addr[32];
	/* Paired from the trust store alone: listed, offline, no address. */
	assert_int_equal(peer_table_paired_count(f->t), 1);
	assert_int_equal(status_of(f, &f->b), PEER_OFFLINE);

	/* A static entry: no fingerprint; the check learns who answers. */
	report(f, "discovery-static", SOVMESH_PEER_APPEARED, addr_of(&f->b, addr), NULL, NULL,
	       f->b.port, 0);
	wait_status(f, &f->b, PEER_CONNECTED);

	peer_info pi;
	assert_int_equal(peer_table_lookup(f->t, f->b.id->fingerprint_hex, &pi), 0);
	assert_string_equal(pi.name, "beta");
	assert_string_equal(pi.address, addr);
	assert_true(pi.latency_ms >= 0);
	assert_int_equal(pi.n_models, 0);
	assert_int_equal(pi.in_flight, 0);
	assert_int_equal(pi.capacity, 4);
	assert_false(pi.hot);
	assert_false(pi.has_temp);
	assert_true(pi.last_seen > 0);

	/* The address that answered is recorded in the trust store. */
	const trusted_peer *tp = trust_store_find(f->a.ts, f->b.id->fingerprint_hex);
	assert_non_null(tp);
	assert_true(tp->n_addresses >= 1);
	assert_string_equal(tp->addresses[0], addr);

	/* Learned: b is paired, so nothing is listed as unpaired. */
	json_t *j = peer_table_json(f->t);
	assert_non_null(j);
	assert_int_equal(json_array_size(json_object_get(j, "discovered")), 0);
	json_t *p0 = json_array_get(json_object_get(j, "paired"), 0);
	assert_string_equal(json_string_value(json_object_get(p0, "status")), "connected");
	assert_string_equal(json_string_value(json_object_get(p0, "name")), "beta");
	assert_string_equal(json_string_value(json_object_get(p0, "short_fingerprint")),
	                    f->b.id->short_fp);
	assert_string_equal(json_string_value(json_object_get(p0, "address")), addr);
	assert_true(json_is_number(json_object_get(p0, "latency_ms")));
	assert_true(json_is_array(json_object_get(p0, "models")));
	assert_int_equal(
	    json_integer_value(json_object_get(json_object_get(p0, "load"), "capacity")), 4);
	assert_true(json_is_integer(json_object_get(p0, "last_seen")));
	assert_true(json_is_null(json_object_get(p0, "last_sync")));
	json_decref(j);
}

static void test_providers_reach_the_table(void **state)
{
	fx *f = *state;
	peer_health_providers prov = {.models = models, .load = load_models, .thermal = thermal};
	peer_health_set_providers(f->b.health, &prov);
	report(f, "discovery-mdns", SOVMESH_PEER_APPEARED, "beta", f->b.id->fingerprint_hex, "beta",
	       f->b.port, 0);
	wait_status(f, &f->b, PEER_CONNECTED);
	peer_info pi;
	assert_int_equal(peer_table_lookup(f->t, f->b.id->fingerprint_hex, &pi), 0);
	assert_int_equal(pi.n_models, 2);
	assert_string_equal(pi.models[0], "llama3.2:1b");
	assert_int_equal(pi.in_flight, 1);
	assert_int_equal(pi.capacity, 3);
	assert_true(pi.hot);
	assert_true(pi.has_temp);
	assert_true(pi.temp_c > 81 && pi.temp_c < 82);
}

static void test_offline_when_stopped_back_when_restarted(void **state)
{
	fx *f = *state;
	char addr[32], listen[32];
	report(f, "discovery-mdns", SOVMESH_PEER_APPEARED, "beta", f->b.id->fingerprint_hex, "beta",
	       f->b.port, 0);
	wait_status(f, &f->b, PEER_CONNECTED);
	snprintf(listen, sizeof(listen), "%s", addr_of(&f->b, addr));

	node_stop_listening(f, &f->b);
	wait_status(f, &f->b, PEER_OFFLINE);

	node_listen(f, &f->b, listen); /* same port: nothing new is announced */
	wait_status(f, &f->b, PEER_CONNECTED);
}

static void test_address_change_followed(void **state)
{
	fx *f = *state;
	char old_addr[32], new_addr[32];
	report(f, "discovery-mdns", SOVMESH_PEER_APPEARED, "beta", f->b.id->fingerprint_hex, "beta",
	       f->b.port, 0);
	wait_status(f, &f->b, PEER_CONNECTED);
	addr_of(&f->b, old_addr);

	/* b comes back elsewhere (a new port stands in for a new IP). */
	node_stop_listening(f, &f->b);
	node_listen(f, &f->b, "127.0.0.1:0");
	addr_of(&f->b, new_addr);
	assert_string_not_equal(old_addr, new_addr);
	report(f, "discovery-mdns", SOVMESH_PEER_CHANGED, "beta", f->b.id->fingerprint_hex, "beta",
	       f->b.port, 0);

	uint64_t start = uv_now(&f->loop);
	peer_info pi;
	for (;;) {
		assert_int_equal(peer_table_lookup(f->t, f->b.id->fingerprint_hex, &pi), 0);
		if (pi.status == PEER_CONNECTED && strcmp(pi.address, new_addr) == 0)
			break;
		uv_run(&f->loop, UV_RUN_ONCE);
		if (uv_now(&f->loop) - start > 15000)
			fail_msg("not connected at %s within 15 s (at '%s')", new_addr, pi.address);
	}
	const trusted_peer *tp = trust_store_find(f->a.ts, f->b.id->fingerprint_hex);
	assert_string_equal(tp->addresses[0], new_addr);
}

static void test_goodbye_offline_at_once(void **state)
{
	fx *f = *state;
	/* Seen by two sources: a goodbye from one of them is not enough. */
	report(f, "discovery-mdns", SOVMESH_PEER_APPEARED, "beta", f->b.id->fingerprint_hex, "beta",
	       f->b.port, 0);
	report(f, "discovery-other", SOVMESH_PEER_APPEARED, "b2", f->b.id->fingerprint_hex, "beta",
	       f->b.port, 0);
	wait_status(f, &f->b, PEER_CONNECTED);
	report(f, "discovery-mdns", SOVMESH_PEER_GONE, "beta", NULL, NULL, 0, 0);
	assert_int_equal(status_of(f, &f->b), PEER_CONNECTED);
	report(f, "discovery-other", SOVMESH_PEER_GONE, "b2", NULL, NULL, 0, 0);
	assert_int_equal(status_of(f, &f->b), PEER_OFFLINE); /* no loop turn in between */
	assert_int_equal(peer_table_discovered_count(f->t), 0);
}

static void test_unpaired_vs_paired(void **state)
{
	fx *f = *state;
	/* c: announced with its fingerprint, not paired; a itself: hidden. */
	report(f, "discovery-mdns", SOVMESH_PEER_APPEARED, "gamma", f->c.id->fingerprint_hex,
	       "gamma", f->c.port, 47555);
	report(f, "discovery-mdns", SOVMESH_PEER_APPEARED, "alpha", f->a.id->fingerprint_hex,
	       "alpha", f->a.port, 0);
	report(f, "discovery-mdns", SOVMESH_PEER_APPEARED, "beta", f->b.id->fingerprint_hex, "beta",
	       f->b.port, 0);
	/* malformed reports are dropped */
	sovmesh_discovered_peer bad = {
	    .size = sizeof(bad), .instance_id = "x", .address = "not-an-ip", .port = 1};
	peer_table_discovery_event(f->t, "discovery-mdns", SOVMESH_PEER_APPEARED, &bad);
	bad.address = "127.0.0.1";
	bad.port = 0;
	peer_table_discovery_event(f->t, "discovery-mdns", SOVMESH_PEER_APPEARED, &bad);
	assert_int_equal(peer_table_discovered_count(f->t), 2); /* gamma, beta */

	json_t *j = peer_table_json(f->t);
	json_t *disc = json_object_get(j, "discovered");
	assert_int_equal(json_array_size(disc), 1);
	json_t *d0 = json_array_get(disc, 0);
	assert_string_equal(json_string_value(json_object_get(d0, "name")), "gamma");
	assert_string_equal(json_string_value(json_object_get(d0, "fingerprint")),
	                    f->c.id->fingerprint_hex);
	assert_string_equal(json_string_value(json_object_get(d0, "source")), "discovery-mdns");
	assert_true(json_is_true(json_object_get(d0, "pairing_open")));
	assert_string_equal(json_string_value(json_object_get(d0, "pairing_address")),
	                    "127.0.0.1:47555");
	json_t *paired = json_object_get(j, "paired");
	assert_int_equal(json_array_size(paired), 1);
	assert_string_equal(
	    json_string_value(json_object_get(json_array_get(paired, 0), "fingerprint")),
	    f->b.id->fingerprint_hex);
	json_decref(j);

	char cand[4][HOSTPORT_TEXT_MAX];
	assert_int_equal(peer_table_pairing_candidates(f->t, cand, 4), 1);
	assert_string_equal(cand[0], "127.0.0.1:47555");
	/* The code finished: the pair= record goes away. */
	report(f, "discovery-mdns", SOVMESH_PEER_CHANGED, "gamma", f->c.id->fingerprint_hex,
	       "gamma", f->c.port, 0);
	assert_int_equal(peer_table_pairing_candidates(f->t, cand, 4), 0);

	/* Once paired, c moves from "discovered" to "paired". */
	trust(&f->a, &f->c);
	j = peer_table_json(f->t);
	assert_int_equal(json_array_size(json_object_get(j, "discovered")), 0);
	assert_int_equal(json_array_size(json_object_get(j, "paired")), 2);
	json_decref(j);
}

static void test_removed_from_trust_store(void **state)
{
	fx *f = *state;
	report(f, "discovery-mdns", SOVMESH_PEER_APPEARED, "beta", f->b.id->fingerprint_hex, "beta",
	       f->b.port, 0);
	wait_status(f, &f->b, PEER_CONNECTED);
	sovmesh_error err = {0};
	assert_int_equal(trust_store_remove(f->a.ts, f->b.id->fingerprint_hex, &err), 0);
	assert_int_equal(peer_table_paired_count(f->t), 0);
	peer_info pi;
	assert_int_equal(peer_table_lookup(f->t, f->b.id->fingerprint_hex, &pi), -ENOENT);
	json_t *j = peer_table_json(f->t);
	assert_int_equal(json_array_size(json_object_get(j, "paired")), 0);
	/* still on the network: now a discovered, unpaired device */
	assert_int_equal(json_array_size(json_object_get(j, "discovered")), 1);
	json_decref(j);
	spin(f, 300); /* checks keep running without it; nothing breaks */
	assert_int_equal(peer_table_paired_count(f->t), 0);
}

static void test_unknown_address_not_probed_twice_for_wrong_peer(void **state)
{
	fx *f = *state;
	/* c's address as a static entry: a cannot reach b there (c is not b,
	 * and c does not trust a); b stays offline, nothing crashes, and the
	 * entry stays an unknown device. */
	char addr[32];
	report(f, "discovery-static", SOVMESH_PEER_APPEARED, addr_of(&f->c, addr), NULL, NULL,
	       f->c.port, 0);
	spin(f, 600);
	assert_int_equal(status_of(f, &f->b), PEER_OFFLINE);
	json_t *j = peer_table_json(f->t);
	json_t *d0 = json_array_get(json_object_get(j, "discovered"), 0);
	assert_non_null(d0);
	assert_true(json_is_null(json_object_get(d0, "fingerprint")));
	assert_string_equal(json_string_value(json_object_get(d0, "address")), addr);
	json_decref(j);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_health_endpoint_answer, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_static_address_learned_connected, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_providers_reach_the_table, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_offline_when_stopped_back_when_restarted, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_address_change_followed, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_goodbye_offline_at_once, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_unpaired_vs_paired, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_removed_from_trust_store, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_unknown_address_not_probed_twice_for_wrong_peer,
	                                    setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

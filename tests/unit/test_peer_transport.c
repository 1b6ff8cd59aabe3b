/*
 * peer_transport.c + peer_client.c: three nodes on one loop, each with its
 * own state directory (identity, trust store), peer port on 127.0.0.1:0
 * and client.  a and b are paired both ways; c is paired with nobody
 * unless a case says so.  gnutls-cli (when installed) plays a stranger.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <arpa/inet.h>
#include <ftw.h>
#include <signal.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "peer_client.h"
#include "peer_transport.h"

typedef struct fx fx;

typedef struct node {
	fx *f;
	char dir[64];
	identity *id;
	trust_store *ts;
	peer_transport *pt;
	peer_client *pc;
	/* what its handlers saw */
	int handled;
	uint64_t conn_ids[8];
	char last_fp[IDENTITY_FP_HEX_LEN + 1];
	http_response *held;
	int cancels;
	bool got_slow;
} node;

typedef struct result {
	bool done;
	int code;
	long status;
	int statuses;
	char body[4096];
	size_t body_len;
	char msg[600];
} result;

struct fx {
	uv_loop_t loop;
	uv_timer_t tick;
	node a, b, c;
	result r[4];
};

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* --- handlers on every node --- */

static void note(node *n, const http_request *req)
{
	if (n->handled < 8)
		n->conn_ids[n->handled] = req->conn_id;
	n->handled++;
	snprintf(n->last_fp, sizeof(n->last_fp), "%s",
	         req->peer_fingerprint ? req->peer_fingerprint : "");
}

static void h_whoami(void *ud, const http_request *req, http_response *resp)
{
	node *n = ud;
	note(n, req);
	http_response_send(resp, 200, "text/plain", req->peer_fingerprint,
	                   strlen(req->peer_fingerprint));
}

static void h_echo(void *ud, const http_request *req, http_response *resp)
{
	node *n = ud;
	note(n, req);
	http_response_send(resp, 200, "application/octet-stream", req->body, req->body_len);
}

static void on_slow_cancel(void *ud, http_response *resp)
{
	node *n = ud;
	n->cancels++;
	assert_ptr_equal(resp, n->held);
	n->held = NULL;
	http_response_unref(resp);
}

/* Holds the response until the connection goes away. */
static void h_slow(void *ud, const http_request *req, http_response *resp)
{
	node *n = ud;
	note(n, req);
	n->held = resp;
	n->got_slow = true;
	http_response_on_cancel(resp, on_slow_cancel, n);
}

/* --- nodes --- */

static void node_init(fx *f, node *n, const char *name)
{
	n->f = f;
	snprintf(n->dir, sizeof(n->dir), "/tmp/sovmesh-peer-XXXXXX");
	assert_non_null(mkdtemp(n->dir));
	sovmesh_error err = {0};
	if (identity_load_or_create(n->dir, name, &n->id, &err) < 0)
		fail_msg("identity: %s", err.message);
	if (trust_store_open(n->dir, &n->ts, &err) < 0)
		fail_msg("trust store: %s", err.message);
	assert_int_equal(peer_client_new(&f->loop, n->id, n->ts, &n->pc), 0);
	peer_transport_options o = {
	    .listen = "127.0.0.1:0",
	    .on_trust_change = peer_client_trust_changed,
	    .on_trust_change_ud = n->pc,
	};
	if (peer_transport_new(&f->loop, n->id, n->ts, &o, &n->pt, &err) < 0)
		fail_msg("peer transport: %s", err.message);
	assert_true(peer_transport_port(n->pt) > 0);
	assert_int_equal(peer_transport_route(n->pt, "GET", "/peer/v1/whoami", h_whoami, n), 0);
	assert_int_equal(peer_transport_route(n->pt, "POST", "/peer/v1/echo", h_echo, n), 0);
	assert_int_equal(peer_transport_route(n->pt, "GET", "/peer/v1/slow", h_slow, n), 0);
}

/* x pins y. */
static void trust(node *x, const node *y)
{
	trusted_peer p = {.name = y->id->node_name};
	memcpy(p.fingerprint_hex, y->id->fingerprint_hex, sizeof(p.fingerprint_hex));
	sovmesh_error err = {0};
	if (trust_store_add(x->ts, &p, &err) < 0)
		fail_msg("trust_store_add: %s", err.message);
}

static void untrust(node *x, const node *y)
{
	sovmesh_error err = {0};
	if (trust_store_remove(x->ts, y->id->fingerprint_hex, &err) < 0)
		fail_msg("trust_store_remove: %s", err.message);
}

static void on_tick(uv_timer_t *t)
{
	(void)t; /* only wakes uv_run(UV_RUN_ONCE) */
}

static int setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	assert_int_equal(uv_loop_init(&f->loop), 0);
	uv_timer_init(&f->loop, &f->tick);
	uv_timer_start(&f->tick, on_tick, 50, 50);
	node_init(f, &f->a, "alpha");
	node_init(f, &f->b, "beta");
	node_init(f, &f->c, "gamma");
	trust(&f->a, &f->b);
	trust(&f->b, &f->a);
	*state = f;
	return 0;
}

static int closed_count;
static void on_closed(void *ud)
{
	(void)ud;
	closed_count++;
}

static void node_release(node *n)
{
	trust_store_free(n->ts);
	identity_free(n->id);
	nftw(n->dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

static int teardown(void **state)
{
	fx *f = *state;
	closed_count = 0;
	node *nodes[] = {&f->a, &f->b, &f->c};
	for (int i = 0; i < 3; i++) {
		peer_transport_close(nodes[i]->pt, on_closed, NULL);
		peer_client_free(nodes[i]->pc, on_closed, NULL);
	}
	uv_close((uv_handle_t *)&f->tick, NULL);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(closed_count, 6);
	for (int i = 0; i < 3; i++)
		assert_null(nodes[i]->held);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	for (int i = 0; i < 3; i++)
		node_release(nodes[i]);
	free(f);
	return 0;
}

/* --- calls --- */

static void on_status(void *ud, long status)
{
	result *r = ud;
	r->status = status;
	r->statuses++;
}

static int on_body(void *ud, const char *data, size_t len)
{
	result *r = ud;
	size_t room = sizeof(r->body) - 1 - r->body_len;
	size_t n = len < room ? len : room;
	memcpy(r->body + r->body_len, data, n);
	r->body_len += n;
	return 0;
}

static void on_done(void *ud, int code, long status, const char *msg)
{
	result *r = ud;
	assert_false(r->done);
	r->done = true;
	r->code = code;
	r->status = status;
	snprintf(r->msg, sizeof(r->msg), "%s", msg ? msg : "");
}

static const sovmesh_http_callbacks cbs = {
    .size = sizeof(sovmesh_http_callbacks),
    .on_status = on_status,
    .on_body = on_body,
    .on_done = on_done,
};

/* `from` calls `to`'s peer port expecting fingerprint `expect`. */
static peer_call *call(node *from, const node *to, const char *expect, const char *method,
                       const char *path, const char *body, unsigned timeout_ms, result *r)
{
	memset(r, 0, sizeof(*r));
	peer_request req = {
	    .fingerprint_hex = expect,
	    .host = "127.0.0.1",
	    .port = peer_transport_port(to->pt),
	    .method = method,
	    .path = path,
	    .content_type = body ? "application/octet-stream" : NULL,
	    .body = body,
	    .body_len = body ? strlen(body) : 0,
	    .timeout_ms = timeout_ms,
	};
	sovmesh_error err = {0};
	peer_call *c = peer_client_request(from->pc, &req, &cbs, r, &err);
	if (!c)
		fail_msg("peer_client_request: %s", err.message);
	assert_false(r->done); /* never from inside the call */
	return c;
}

static void run_until(fx *f, const bool *flag)
{
	uint64_t start = uv_now(&f->loop);
	while (!*flag) {
		uv_run(&f->loop, UV_RUN_ONCE);
		if (uv_now(&f->loop) - start > 20000)
			fail_msg("nothing happened within 20 s");
	}
}

/* Let the loop run a few turns (connections close on the next turn). */
static void spin(fx *f, int turns)
{
	for (int i = 0; i < turns; i++)
		uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* --- cases --- */

static void test_hello_between_paired_nodes(void **state)
{
	fx *f = *state;
	result *r = &f->r[0];
	call(&f->b, &f->a, f->a.id->fingerprint_hex, "GET", "/peer/v1/hello", NULL, 0, r);
	run_until(f, &r->done);
	assert_int_equal(r->code, 0);
	assert_int_equal(r->status, 200);
	assert_int_equal(r->statuses, 1);
	json_error_t jerr;
	json_t *j = json_loadb(r->body, r->body_len, 0, &jerr);
	assert_non_null(j);
	assert_string_equal(json_string_value(json_object_get(j, "name")), "alpha");
	assert_string_equal(json_string_value(json_object_get(j, "fingerprint")),
	                    f->a.id->fingerprint_hex);
	assert_int_equal(json_integer_value(json_object_get(j, "protocol")), 1);
	json_decref(j);

	/* The handler learns who called, from the certificate. */
	call(&f->b, &f->a, f->a.id->fingerprint_hex, "GET", "/peer/v1/whoami", NULL, 0, r);
	run_until(f, &r->done);
	assert_int_equal(r->code, 0);
	assert_string_equal(f->a.last_fp, f->b.id->fingerprint_hex);
	assert_int_equal(r->body_len, IDENTITY_FP_HEX_LEN);

	/* A body goes there and back; an unknown path is a 404. */
	call(&f->a, &f->b, f->b.id->fingerprint_hex, "POST", "/peer/v1/echo", "tensors", 0, r);
	run_until(f, &r->done);
	assert_int_equal(r->code, 0);
	assert_int_equal(r->body_len, 7);
	assert_memory_equal(r->body, "tensors", 7);
	assert_string_equal(f->b.last_fp, f->a.id->fingerprint_hex);
	call(&f->a, &f->b, f->b.id->fingerprint_hex, "GET", "/peer/v1/nope", NULL, 0, r);
	run_until(f, &r->done);
	assert_int_equal(r->code, 0);
	assert_int_equal(r->status, 404);
	call(&f->a, &f->b, f->b.id->fingerprint_hex, "POST", "/peer/v1/hello", NULL, 0, r);
	run_until(f, &r->done);
	assert_int_equal(r->status, 405);
}

static void test_route_rules(void **state)
{
	fx *f = *state;
	assert_int_equal(peer_transport_route(f->a.pt, "GET", "/peer/v1/hello", h_echo, &f->a),
	                 -EEXIST);
	assert_int_equal(peer_transport_route(f->a.pt, "GET", "/v1/status", h_echo, &f->a),
	                 -EINVAL);
	sovmesh_error err = {0};
	peer_transport *pt = NULL;
	peer_transport_options o = {.listen = "localhost:1"};
	assert_int_equal(peer_transport_new(&f->loop, f->a.id, f->a.ts, &o, &pt, &err), -EINVAL);
	assert_non_null(strstr(err.message, "localhost:1"));
	/* Taken port: one line naming the setting and the address. */
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", peer_transport_port(f->a.pt));
	o.listen = addr;
	assert_int_equal(peer_transport_new(&f->loop, f->a.id, f->a.ts, &o, &pt, &err),
	                 -EADDRINUSE);
	assert_non_null(strstr(err.message, "mesh.peer_listen"));
	assert_null(strchr(err.message, '\n'));
}

static void test_unknown_client_refused_in_handshake(void **state)
{
	fx *f = *state;
	result *r = &f->r[0];
	/* c trusts a (so its client may call), but a does not trust c. */
	trust(&f->c, &f->a);
	call(&f->c, &f->a, f->a.id->fingerprint_hex, "GET", "/peer/v1/whoami", NULL, 0, r);
	run_until(f, &r->done);
	assert_int_equal(r->code, -EPERM);
	assert_int_equal(r->statuses, 0);
	assert_non_null(strstr(r->msg, "refused this node's certificate"));
	assert_int_equal(f->a.handled, 0);
	spin(f, 5);
	assert_int_equal(peer_transport_connection_count(f->a.pt), 0);
	assert_int_equal(peer_client_connection_count(f->c.pc), 0);
}

static void test_client_refuses_unexpected_server(void **state)
{
	fx *f = *state;
	result *r = &f->r[0];
	/* b trusts c too, then calls a's port believing it is c's: a is
	 * trusted by b, but it is not the peer b meant to call. */
	trust(&f->b, &f->c);
	call(&f->b, &f->a, f->c.id->fingerprint_hex, "GET", "/peer/v1/whoami", NULL, 0, r);
	run_until(f, &r->done);
	assert_int_equal(r->code, -EPERM);
	assert_non_null(strstr(r->msg, f->a.id->fingerprint_hex)); /* presented */
	assert_non_null(strstr(r->msg, f->c.id->fingerprint_hex)); /* expected */
	assert_int_equal(f->a.handled, 0);

	/* Not trusted at all: refused before any connection is made. */
	sovmesh_error err = {0};
	peer_request req = {
	    .fingerprint_hex = f->c.id->fingerprint_hex,
	    .host = "127.0.0.1",
	    .port = peer_transport_port(f->c.pt),
	    .method = "GET",
	    .path = "/peer/v1/hello",
	};
	assert_null(peer_client_request(f->a.pc, &req, &cbs, r, &err));
	assert_int_equal(err.code, -EPERM);
	assert_non_null(strstr(err.message, "not paired"));
	req.fingerprint_hex = f->b.id->fingerprint_hex;
	req.host = "localhost";
	assert_null(peer_client_request(f->a.pc, &req, &cbs, r, &err));
	assert_int_equal(err.code, -EINVAL);
	req.host = "127.0.0.1";
	req.path = "/peer/v1/x y";
	assert_null(peer_client_request(f->a.pc, &req, &cbs, r, &err));
	assert_int_equal(err.code, -EINVAL);
}

static void test_connection_reused(void **state)
{
	fx *f = *state;
	result *r = &f->r[0];
	for (int i = 0; i < 3; i++) {
		call(&f->b, &f->a, f->a.id->fingerprint_hex, "GET", "/peer/v1/whoami", NULL, 0, r);
		run_until(f, &r->done);
		assert_int_equal(r->code, 0);
		assert_int_equal(r->status, 200);
		assert_int_equal(peer_client_connection_count(f->b.pc), 1);
		assert_int_equal(peer_transport_connection_count(f->a.pt), 1);
	}
	assert_int_equal(f->a.handled, 3);
	assert_true(f->a.conn_ids[0] == f->a.conn_ids[1]);
	assert_true(f->a.conn_ids[1] == f->a.conn_ids[2]);

	/* Two at once need two connections; both stay for reuse. */
	call(&f->b, &f->a, f->a.id->fingerprint_hex, "GET", "/peer/v1/whoami", NULL, 0, &f->r[1]);
	call(&f->b, &f->a, f->a.id->fingerprint_hex, "GET", "/peer/v1/whoami", NULL, 0, &f->r[2]);
	run_until(f, &f->r[1].done);
	run_until(f, &f->r[2].done);
	assert_int_equal(f->r[1].code, 0);
	assert_int_equal(f->r[2].code, 0);
	assert_int_equal(peer_client_connection_count(f->b.pc), 2);
	assert_true(f->a.conn_ids[3] != f->a.conn_ids[4]);
}

static void test_server_side_revocation(void **state)
{
	fx *f = *state;
	result *r = &f->r[0];
	call(&f->b, &f->a, f->a.id->fingerprint_hex, "GET", "/peer/v1/whoami", NULL, 0, r);
	run_until(f, &r->done);
	assert_int_equal(r->code, 0);
	/* On the same kept-alive connection, a request a is still answering. */
	call(&f->b, &f->a, f->a.id->fingerprint_hex, "GET", "/peer/v1/slow", NULL, 0, r);
	run_until(f, &f->a.got_slow);
	assert_int_equal(f->a.conn_ids[0], f->a.conn_ids[1]);
	assert_int_equal(peer_transport_connection_count(f->a.pt), 1);

	untrust(&f->a, &f->b);
	/* Dropped at once (its handle closes on the next loop turn). */
	assert_int_equal(peer_transport_connection_count(f->a.pt), 0);
	assert_int_equal(f->a.cancels, 0); /* not from inside the store's callback */
	run_until(f, &r->done);
	assert_int_equal(f->a.cancels, 1);
	assert_null(f->a.held);
	/* b's client retries a GET once on a fresh connection when a reused
	 * one dies unanswered; a refuses that handshake. */
	assert_int_equal(r->code, -EPERM);
	assert_non_null(strstr(r->msg, "refused this node's certificate"));
	assert_int_equal(r->statuses, 0);
	assert_int_equal(f->a.handled, 2);

	/* b still trusts a, but a now refuses b in the handshake. */
	int before = f->a.handled;
	call(&f->b, &f->a, f->a.id->fingerprint_hex, "GET", "/peer/v1/whoami", NULL, 0, r);
	run_until(f, &r->done);
	assert_int_equal(r->code, -EPERM);
	assert_int_equal(f->a.handled, before);
}

static void test_client_side_revocation(void **state)
{
	fx *f = *state;
	result *r = &f->r[0];
	call(&f->b, &f->a, f->a.id->fingerprint_hex, "GET", "/peer/v1/whoami", NULL, 0, r);
	run_until(f, &r->done);
	call(&f->b, &f->a, f->a.id->fingerprint_hex, "GET", "/peer/v1/slow", NULL, 0, r);
	run_until(f, &f->a.got_slow);
	assert_int_equal(peer_client_connection_count(f->b.pc), 1);

	untrust(&f->b, &f->a);
	assert_false(r->done); /* never from inside the store's callback */
	assert_int_equal(peer_client_connection_count(f->b.pc), 0);
	run_until(f, &r->done);
	assert_int_equal(r->code, -EPERM);
	assert_non_null(strstr(r->msg, "removed from the trust store"));
	/* a notices the connection is gone and cancels its pending answer. */
	run_until(f, &f->a.got_slow); /* (still true) */
	uint64_t start = uv_now(&f->loop);
	while (f->a.cancels == 0 && uv_now(&f->loop) - start < 20000)
		uv_run(&f->loop, UV_RUN_ONCE);
	assert_int_equal(f->a.cancels, 1);

	/* No new call to a removed peer. */
	sovmesh_error err = {0};
	peer_request req = {
	    .fingerprint_hex = f->a.id->fingerprint_hex,
	    .host = "127.0.0.1",
	    .port = peer_transport_port(f->a.pt),
	    .method = "GET",
	    .path = "/peer/v1/hello",
	};
	assert_null(peer_client_request(f->b.pc, &req, &cbs, r, &err));
	assert_int_equal(err.code, -EPERM);
	/* And a now-unpinned a cannot call b either: b's server refuses it. */
	call(&f->a, &f->b, f->b.id->fingerprint_hex, "GET", "/peer/v1/whoami", NULL, 0, r);
	run_until(f, &r->done);
	assert_int_equal(r->code, -EPERM);
	assert_int_equal(f->b.handled, 0);
}

static void test_refused_and_timeout(void **state)
{
	fx *f = *state;
	result *r = &f->r[0];
	/* A port nobody listens on: open and close a listener to find one. */
	uv_tcp_t probe;
	struct sockaddr_in sa;
	uv_ip4_addr("127.0.0.1", 0, &sa);
	uv_tcp_init(&f->loop, &probe);
	assert_int_equal(uv_tcp_bind(&probe, (struct sockaddr *)&sa, 0), 0);
	int len = sizeof(sa);
	uv_tcp_getsockname(&probe, (struct sockaddr *)&sa, &len);
	int port = ntohs(sa.sin_port);
	uv_close((uv_handle_t *)&probe, NULL);
	spin(f, 2);
	peer_request req = {
	    .fingerprint_hex = f->a.id->fingerprint_hex,
	    .host = "127.0.0.1",
	    .port = port,
	    .method = "GET",
	    .path = "/peer/v1/hello",
	};
	memset(r, 0, sizeof(*r));
	assert_non_null(peer_client_request(f->b.pc, &req, &cbs, r, NULL));
	run_until(f, &r->done);
	assert_int_equal(r->code, -ECONNREFUSED);
	assert_non_null(strstr(r->msg, "alpha"));

	call(&f->b, &f->a, f->a.id->fingerprint_hex, "GET", "/peer/v1/slow", NULL, 300, r);
	run_until(f, &r->done);
	assert_int_equal(r->code, -ETIMEDOUT);
	uint64_t start = uv_now(&f->loop);
	while (f->a.cancels == 0 && uv_now(&f->loop) - start < 20000)
		uv_run(&f->loop, UV_RUN_ONCE);
	assert_int_equal(f->a.cancels, 1);
}

static void test_cancel_and_free_with_calls_pending(void **state)
{
	fx *f = *state;
	result *r = &f->r[0];
	peer_call *pcall =
	    call(&f->b, &f->a, f->a.id->fingerprint_hex, "GET", "/peer/v1/slow", NULL, 0, r);
	run_until(f, &f->a.got_slow);
	peer_client_cancel(pcall);
	uint64_t start = uv_now(&f->loop);
	while (f->a.cancels == 0 && uv_now(&f->loop) - start < 20000)
		uv_run(&f->loop, UV_RUN_ONCE);
	assert_int_equal(f->a.cancels, 1);
	assert_false(r->done);
	/* A call still connecting when the client is freed: no callback. */
	call(&f->b, &f->a, f->a.id->fingerprint_hex, "GET", "/peer/v1/hello", NULL, 0, &f->r[1]);
	/* teardown frees the client now */
}

/* --- a stranger with gnutls-cli --- */

typedef struct cli_run {
	uv_process_t proc;
	uv_pipe_t in, out;
	uv_write_t wreq;
	int open;
	bool exited;
	bool finished;
	char out_buf[16384];
	size_t out_len;
} cli_run;

static void cli_closed(uv_handle_t *h)
{
	cli_run *c = h->data;
	if (--c->open == 0)
		c->finished = true;
}

static void cli_alloc(uv_handle_t *h, size_t s, uv_buf_t *buf)
{
	(void)s;
	cli_run *c = h->data;
	*buf =
	    uv_buf_init(c->out_buf + c->out_len, (unsigned)(sizeof(c->out_buf) - 1 - c->out_len));
}

static void cli_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	(void)buf;
	cli_run *c = s->data;
	if (n > 0) {
		c->out_len += (size_t)n;
		c->out_buf[c->out_len] = '\0';
		if (c->out_len + 1 >= sizeof(c->out_buf))
			uv_read_stop(s);
	} else if (n < 0) {
		uv_read_stop(s);
	}
}

static void cli_exit(uv_process_t *p, int64_t status, int sig)
{
	(void)status;
	(void)sig;
	cli_run *c = p->data;
	c->exited = true;
	uv_close((uv_handle_t *)&c->proc, cli_closed);
	uv_close((uv_handle_t *)&c->in, cli_closed);
	uv_close((uv_handle_t *)&c->out, cli_closed);
}

static void cli_written(uv_write_t *w, int status)
{
	(void)w;
	(void)status;
}

static bool have_gnutls_cli(void)
{
	return access("/usr/bin/gnutls-cli", X_OK) == 0;
}

/* gnutls-cli against `to`'s peer port with `extra` options; true when it
 * got an HTTP answer.  `cert_dir`: whose identity to present, or NULL. */
static bool gnutls_cli_gets_http(fx *f, const node *to, const char *cert_dir, const char *alpn,
                                 const char *priority)
{
	cli_run c = {0};
	char port[16], certf[128], keyf[128], prio[96], alpn_opt[64];
	snprintf(port, sizeof(port), "%d", peer_transport_port(to->pt));
	const char *args[16];
	int n = 0;
	args[n++] = "/usr/bin/gnutls-cli";
	args[n++] = "--insecure";
	args[n++] = "--logfile=/dev/null";
	args[n++] = "-p";
	args[n++] = port;
	if (cert_dir) {
		snprintf(certf, sizeof(certf), "--x509certfile=%s/identity/tls-cert.pem", cert_dir);
		snprintf(keyf, sizeof(keyf), "--x509keyfile=%s/identity/tls-key.pem", cert_dir);
		args[n++] = certf;
		args[n++] = keyf;
	}
	if (alpn) {
		snprintf(alpn_opt, sizeof(alpn_opt), "--alpn=%s", alpn);
		args[n++] = alpn_opt;
	}
	if (priority) {
		snprintf(prio, sizeof(prio), "--priority=%s", priority);
		args[n++] = prio;
	}
	args[n++] = "127.0.0.1";
	args[n] = NULL;

	uv_pipe_init(&f->loop, &c.in, 0);
	uv_pipe_init(&f->loop, &c.out, 0);
	c.in.data = c.out.data = c.proc.data = &c;
	uv_stdio_container_t stdio[3] = {
	    {.flags = UV_CREATE_PIPE | UV_READABLE_PIPE, .data.stream = (uv_stream_t *)&c.in},
	    {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&c.out},
	    {.flags = UV_IGNORE},
	};
	uv_process_options_t po = {
	    .exit_cb = cli_exit,
	    .file = args[0],
	    .args = (char **)args,
	    .stdio_count = 3,
	    .stdio = stdio,
	};
	assert_int_equal(uv_spawn(&f->loop, &c.proc, &po), 0);
	c.open = 3;
	uv_read_start((uv_stream_t *)&c.out, cli_alloc, cli_read);
	static char request[] =
	    "GET /peer/v1/whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
	uv_buf_t b = uv_buf_init(request, sizeof(request) - 1);
	uv_write(&c.wreq, (uv_stream_t *)&c.in, &b, 1, cli_written);
	uint64_t start = uv_now(&f->loop);
	while (!c.exited && uv_now(&f->loop) - start < 15000)
		uv_run(&f->loop, UV_RUN_ONCE);
	if (!c.exited)
		uv_process_kill(&c.proc, SIGKILL);
	run_until(f, &c.finished);
	return strstr(c.out_buf, "HTTP/1.1 ") != NULL;
}

static void test_gnutls_cli_stranger_gets_nothing(void **state)
{
	fx *f = *state;
	if (!have_gnutls_cli())
		skip();
	/* The control: b's own key and certificate do get an answer, so the
	 * refusals below are about the certificate, not the tool. */
	assert_true(gnutls_cli_gets_http(f, &f->a, f->b.dir, "sovmesh/1", NULL));
	assert_int_equal(f->a.handled, 1);

	/* A fresh self-signed certificate nobody paired with. */
	assert_false(gnutls_cli_gets_http(f, &f->a, f->c.dir, "sovmesh/1", NULL));
	/* No certificate at all. */
	assert_false(gnutls_cli_gets_http(f, &f->a, NULL, "sovmesh/1", NULL));
	/* A trusted certificate, but TLS 1.2. */
	assert_false(
	    gnutls_cli_gets_http(f, &f->a, f->b.dir, "sovmesh/1", "NORMAL:-VERS-ALL:+VERS-TLS1.2"));
	/* A trusted certificate without our ALPN. */
	assert_false(gnutls_cli_gets_http(f, &f->a, f->b.dir, NULL, NULL));
	/* Not one of them reached a handler. */
	assert_int_equal(f->a.handled, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_hello_between_paired_nodes, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_route_rules, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_unknown_client_refused_in_handshake, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_client_refuses_unexpected_server, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_connection_reused, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_server_side_revocation, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_client_side_revocation, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_refused_and_timeout, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cancel_and_free_with_calls_pending, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_gnutls_cli_stranger_gets_nothing, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

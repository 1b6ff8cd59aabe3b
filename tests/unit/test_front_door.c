/*
 * front_door.c over real TCP on loopback: a real router and local backend
 * wrapper around a scripted backend (fake_backend.c for generate, this
 * file's own list/info/embed), the front door on the test's loop in the
 * main thread, and a blocking HTTP/1.1 client in a thread that reports
 * back with uv_async_send.  Responses are read with llhttp.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <llhttp.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "control_api.h"
#include "fake_backend.h"
#include "front_door.h"
#include "identity.h"
#include "local_backend.h"
#include "peer_client.h"
#include "peer_health.h"
#include "peer_table.h"
#include "peer_transport.h"
#include "router.h"
#include "trust_store.h"

#define NREPLIES 16
#define BODY_MAX 16384
#define MAX_BODY 4096 /* the door's body limit in these tests */
#define TOKEN    "s3cret-token"
#define VERSION  "1.2.3-test"

typedef struct fx fx;
typedef void (*client_fn)(fx *f);

typedef struct reply {
	int rc; /* 0, or -errno of the exchange */
	int status;
	char headers[4096]; /* "Name: value\n" lines */
	char body[BODY_MAX];
	size_t body_len;
	bool eof;
} reply;

/* A pass-through call of our own (list, info, embed). */
typedef struct tcall {
	fx *f;
	struct tcall *next;
	uv_timer_t timer;
	enum { T_LIST, T_INFO, T_EMBED } kind;
	char what[16];
	size_t n;
	sovmesh_backend_json_cb json_cb;
	sovmesh_backend_embed_cb embed_cb;
	void *ud;
} tcall;

/* A mesh node for the /api/tags tests (as in test_peer_table.c). */
typedef struct node {
	char dir[64];
	identity *id;
	trust_store *ts;
	peer_client *pc;
	peer_transport *pt;
	peer_health *health;
	int port;
	const char *const *models; /* what its health check lists */
} node;

struct fx {
	uv_loop_t loop;
	fake_backend fb;
	/* the mesh: a is this node, b and c its paired peers */
	bool mesh;
	node a, b, c;
	peer_table *t;
	int mesh_closed;
	local_backend *lb;
	router *r;
	control_api *api;
	front_door *door;
	int port;
	int door_closed;

	/* script and records of our pass-through calls */
	int list_fail, info_fail, embed_fail;
	const char *models_json;
	tcall *calls;
	unsigned list_calls, info_calls, embed_calls, pass_cancels;
	char info_what[16];
	char info_body[512];
	size_t embed_n;
	char embed_first[64];
	int control_calls;

	/* the client thread */
	pthread_t thread;
	client_fn client;
	uv_async_t done_async;
	uv_timer_t poll;
	bool client_done;
	bool wait_cancel;       /* finish once the backend saw a cancel */
	bool close_on_generate; /* close the door once generate was called */
	bool finishing;
	uint64_t poll_started;

	reply rep[NREPLIES];
};

/* --- the scripted backend: fake_backend's generate, our other slots --- */

static void tcall_closed(uv_handle_t *h)
{
	free(h->data);
}

static void tcall_end(tcall *c)
{
	for (tcall **pp = &c->f->calls; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	uv_timer_stop(&c->timer);
	uv_close((uv_handle_t *)&c->timer, tcall_closed);
}

static void tcall_tick(uv_timer_t *t)
{
	tcall *c = t->data;
	fx *f = c->f;
	tcall_end(c);
	sovmesh_backend_status ok = {sizeof(ok), 0, 200, "ok"};
	if (c->kind == T_LIST) {
		sovmesh_backend_status st = {sizeof(st), f->list_fail, 0, "scripted list failure"};
		const char *j =
		    f->models_json ? f->models_json
		                   : "{\"models\":[{\"name\":\"m1:latest\",\"model\":\"m1:latest\","
		                     "\"size\":42}]}";
		if (f->list_fail)
			c->json_cb(c->ud, &st, NULL, 0);
		else
			c->json_cb(c->ud, &ok, j, strlen(j));
	} else if (c->kind == T_INFO) {
		sovmesh_backend_status st = {sizeof(st), f->info_fail, 0, "scripted info failure"};
		const char *j = "{\"version\":\"0.9.9\"}";
		if (strcmp(c->what, "ps") == 0)
			j = "{\"models\":[{\"name\":\"m1:latest\",\"size_vram\":7}]}";
		else if (strcmp(c->what, "show") == 0)
			j = "{\"modelfile\":\"FROM m1\",\"details\":{\"family\":\"fake\"}}";
		if (f->info_fail)
			c->json_cb(c->ud, &st, NULL, 0);
		else
			c->json_cb(c->ud, &ok, j, strlen(j));
	} else {
		sovmesh_backend_status st = {sizeof(st), f->embed_fail, 0,
		                             "scripted embed failure"};
		if (f->embed_fail) {
			c->embed_cb(c->ud, &st, NULL, 0, 0);
		} else {
			/* Vector i is (3, 4, 0, i). */
			float *v = calloc(c->n * 4, sizeof(float));
			for (size_t i = 0; i < c->n; i++) {
				v[i * 4] = 3;
				v[i * 4 + 1] = 4;
				v[i * 4 + 3] = (float)i;
			}
			c->embed_cb(c->ud, &ok, v, c->n, 4);
			free(v);
		}
	}
}

static tcall *tcall_new(fx *f, int kind, void *ud)
{
	tcall *c = calloc(1, sizeof(*c));
	c->f = f;
	c->kind = kind;
	c->ud = ud;
	uv_timer_init(&f->loop, &c->timer);
	c->timer.data = c;
	c->next = f->calls;
	f->calls = c;
	uv_timer_start(&c->timer, tcall_tick, 2, 0);
	return c;
}

static sovmesh_backend_call *t_generate(void *inst, const sovmesh_gen_request *req,
                                        const sovmesh_gen_callbacks *cbs, void *ud)
{
	fx *f = inst;
	return fake_backend_ops.generate(&f->fb, req, cbs, ud);
}

static sovmesh_backend_call *t_list(void *inst, sovmesh_backend_json_cb cb, void *ud)
{
	fx *f = inst;
	f->list_calls++;
	tcall *c = tcall_new(f, T_LIST, ud);
	c->json_cb = cb;
	return (sovmesh_backend_call *)c;
}

static sovmesh_backend_call *t_info(void *inst, const char *what, const char *body,
                                    sovmesh_backend_json_cb cb, void *ud)
{
	fx *f = inst;
	if (strcmp(what, "ps") != 0 && strcmp(what, "show") != 0 && strcmp(what, "version") != 0)
		return NULL;
	f->info_calls++;
	snprintf(f->info_what, sizeof(f->info_what), "%s", what);
	snprintf(f->info_body, sizeof(f->info_body), "%s", body ? body : "(null)");
	tcall *c = tcall_new(f, T_INFO, ud);
	snprintf(c->what, sizeof(c->what), "%s", what);
	c->json_cb = cb;
	return (sovmesh_backend_call *)c;
}

static sovmesh_backend_call *t_embed(void *inst, const char *model, const char *const *texts,
                                     size_t n, uint32_t timeout_ms, sovmesh_backend_embed_cb cb,
                                     void *ud)
{
	fx *f = inst;
	(void)model;
	assert_true(timeout_ms > 0);
	f->embed_calls++;
	f->embed_n = n;
	snprintf(f->embed_first, sizeof(f->embed_first), "%s", n ? texts[0] : "");
	tcall *c = tcall_new(f, T_EMBED, ud);
	c->n = n;
	c->embed_cb = cb;
	return (sovmesh_backend_call *)c;
}

static void t_cancel(void *inst, sovmesh_backend_call *call)
{
	fx *f = inst;
	for (tcall *c = f->calls; c; c = c->next)
		if ((sovmesh_backend_call *)c == call) {
			f->pass_cancels++;
			tcall_end(c);
			return;
		}
	fake_backend_ops.cancel(&f->fb, call);
}

static uint32_t t_slots(void *inst)
{
	fx *f = inst;
	return fake_backend_ops.parallel_slots(&f->fb);
}

static const sovmesh_backend_ops t_ops = {
    .size = sizeof(sovmesh_backend_ops),
    .list_models = t_list,
    .generate = t_generate,
    .embed = t_embed,
    .cancel = t_cancel,
    .info = t_info,
    .parallel_slots = t_slots,
};

/* --- a control API to mirror --- */

static int ctl_x(void *ud, const control_request *req, json_t **reply, int *status)
{
	fx *f = ud;
	f->control_calls++;
	*reply = json_pack("{s:s, s:s}", "method", req->method, "path", req->path);
	*status = 200;
	return 0;
}

/* --- fixture --- */

/* The backend, router, control API and door; `pt` for /api/tags. */
static void door_setup(fx *f, peer_table *pt)
{
	fake_backend_init(&f->fb, &f->loop);
	assert_int_equal(local_backend_new(&f->loop, &t_ops, f, "backend-fake", &f->lb), 0);
	router_options ro = {
	    .lb = f->lb,
	    .thermal_sysfs_root = "/nonexistent-sovmesh-sysfs",
	    .thermal_limit_c = 1000,
	    .request_timeout_ms = 20000,
	};
	assert_int_equal(router_new(&f->loop, &ro, &f->r), 0);
	assert_int_equal(control_api_new(NULL, &f->api), 0);
	assert_int_equal(control_api_route(f->api, "GET", "/v1/x", ctl_x, f), 0);
	assert_int_equal(control_api_route(f->api, "POST", "/v1/x", ctl_x, f), 0);
	front_door_options o = {
	    .listen = "127.0.0.1:0",
	    .max_body_bytes = MAX_BODY,
	    .router = f->r,
	    .lb = f->lb,
	    .ptable = pt,
	    .control = f->api,
	    .token = TOKEN,
	    .version = VERSION,
	};
	sovmesh_error err = {0};
	int r = front_door_new(&f->loop, &o, &f->door, &err);
	if (r < 0)
		fail_msg("front_door_new: %s", err.message);
	f->port = front_door_port(f->door);
	assert_true(f->port > 0);
	/* Let the first model list arrive. */
	while (local_backend_has_model(f->lb, "m1") < 0)
		uv_run(&f->loop, UV_RUN_ONCE);
}

static int setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	assert_int_equal(uv_loop_init(&f->loop), 0);
	door_setup(f, NULL);
	*state = f;
	return 0;
}

/* --- the mesh fixture --- */

static json_t *node_models(void *ud)
{
	node *n = ud;
	json_t *a = json_array();
	for (size_t i = 0; n->models && n->models[i]; i++)
		json_array_append_new(a, json_string(n->models[i]));
	return a;
}

static void on_mesh_closed(void *ud)
{
	fx *f = ud;
	f->mesh_closed++;
}

/* One trust listener fanning out, as the daemon does. */
static void fan_out(void *ud, const trusted_peer *p, int removed)
{
	fx *f = ud;
	peer_client_trust_changed(f->a.pc, p, removed);
	if (f->t)
		peer_table_trust_changed(f->t, p, removed);
}

static void node_init(fx *f, node *n, const char *name)
{
	snprintf(n->dir, sizeof(n->dir), "/tmp/sovmesh-fdoor-XXXXXX");
	assert_non_null(mkdtemp(n->dir));
	sovmesh_error err = {0};
	if (identity_load_or_create(n->dir, name, &n->id, &err) < 0)
		fail_msg("identity: %s", err.message);
	if (trust_store_open(n->dir, &n->ts, &err) < 0)
		fail_msg("trust store: %s", err.message);
	assert_int_equal(peer_client_new(&f->loop, n->id, n->ts, &n->pc), 0);
	peer_transport_options o = {.listen = "127.0.0.1:0"};
	if (n == &f->a) {
		o.on_trust_change = fan_out;
		o.on_trust_change_ud = f;
	} else {
		o.on_trust_change = peer_client_trust_changed;
		o.on_trust_change_ud = n->pc;
	}
	if (peer_transport_new(&f->loop, n->id, n->ts, &o, &n->pt, &err) < 0)
		fail_msg("peer transport: %s", err.message);
	n->port = peer_transport_port(n->pt);
	peer_health_providers prov = {.ud = n, .models = node_models};
	assert_int_equal(peer_health_register(n->pt, n->id, 2, &prov, &n->health), 0);
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

static void announce(fx *f, const node *n)
{
	sovmesh_discovered_peer p = {
	    .size = sizeof(p),
	    .instance_id = n->id->node_name,
	    .node_name = n->id->node_name,
	    .fingerprint = n->id->fingerprint_hex,
	    .address = "127.0.0.1",
	    .port = (uint16_t)n->port,
	    .proto_version = 1,
	};
	peer_table_discovery_event(f->t, "discovery-test", SOVMESH_PEER_APPEARED, &p);
}

static void wait_status(fx *f, const node *n, peer_status want)
{
	uint64_t start = uv_now(&f->loop);
	for (;;) {
		peer_info pi;
		assert_int_equal(peer_table_lookup(f->t, n->id->fingerprint_hex, &pi), 0);
		if (pi.status == want)
			return;
		uv_run(&f->loop, UV_RUN_ONCE);
		if (uv_now(&f->loop) - start > 20000)
			fail_msg("%s did not become %s within 20 s", n->id->node_name,
			         want == PEER_CONNECTED ? "connected" : "offline");
	}
}

static const char *const beta_models[] = {"llama3.2:1b", "qwen2.5:0.5b", "m1", NULL};
static const char *const gamma_models[] = {"qwen2.5:0.5b", "phi3:latest", NULL};

/* a pins b and c, both Connected, before the door opens. */
static int setup_mesh(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	assert_int_equal(uv_loop_init(&f->loop), 0);
	f->mesh = true;
	f->b.models = beta_models;
	f->c.models = gamma_models;
	node_init(f, &f->a, "alpha");
	node_init(f, &f->b, "beta");
	node_init(f, &f->c, "gamma");
	trust(&f->a, &f->b);
	trust(&f->a, &f->c);
	trust(&f->b, &f->a);
	trust(&f->c, &f->a);
	peer_table_options o = {.interval_ms = 100, .timeout_ms = 2000, .fail_threshold = 2};
	assert_int_equal(
	    peer_table_new(&f->loop, f->a.ts, f->a.pc, f->a.id->fingerprint_hex, &o, &f->t), 0);
	announce(f, &f->b);
	announce(f, &f->c);
	wait_status(f, &f->b, PEER_CONNECTED);
	wait_status(f, &f->c, PEER_CONNECTED);
	door_setup(f, f->t);
	*state = f;
	return 0;
}

/* Close what keeps the loop alive (from the shutdown). */
static void mesh_close(fx *f)
{
	peer_table_free(f->t, on_mesh_closed, f);
	f->t = NULL;
	node *nodes[] = {&f->a, &f->b, &f->c};
	for (int i = 0; i < 3; i++) {
		if (nodes[i]->pt)
			peer_transport_close(nodes[i]->pt, on_mesh_closed, f);
		nodes[i]->pt = NULL;
		peer_client_free(nodes[i]->pc, on_mesh_closed, f);
	}
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void mesh_free(fx *f)
{
	node *nodes[] = {&f->a, &f->b, &f->c};
	for (int i = 0; i < 3; i++) {
		peer_health_free(nodes[i]->health);
		trust_store_free(nodes[i]->ts);
		identity_free(nodes[i]->id);
		nftw(nodes[i]->dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	}
}

static int teardown(void **state)
{
	fx *f = *state;
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(f->fb.open, 0);
	assert_null(f->calls);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	if (f->mesh) {
		/* table + 3 transports + 3 clients */
		assert_int_equal(f->mesh_closed, 7);
		mesh_free(f);
	}
	free(f);
	return 0;
}

static void on_door_closed(void *ud)
{
	fx *f = ud;
	f->door_closed++;
}

static void shut_down(fx *f)
{
	if (f->finishing)
		return;
	f->finishing = true;
	if (f->door)
		front_door_close(f->door, on_door_closed, f);
	f->door = NULL;
	router_free(f->r);
	local_backend_free(f->lb, NULL, NULL);
	control_api_free(f->api);
	if (f->mesh)
		mesh_close(f);
	uv_close((uv_handle_t *)&f->done_async, NULL);
	uv_close((uv_handle_t *)&f->poll, NULL);
}

/* Runs every 10 ms: closes the door when asked, finishes when done. */
static void on_poll(uv_timer_t *t)
{
	fx *f = t->data;
	if (f->close_on_generate && f->door && f->fb.generate_calls > 0) {
		front_door_close(f->door, on_door_closed, f);
		f->door = NULL;
	}
	if (!f->client_done)
		return;
	/* A cancel travels from the closed socket to the backend through the
	 * loop; give it time on a slow machine, then let the asserts judge. */
	bool waiting = f->wait_cancel && f->fb.cancels == 0;
	if (waiting && uv_now(&f->loop) - f->poll_started < 20000)
		return;
	shut_down(f);
}

static void on_done_async(uv_async_t *a)
{
	fx *f = a->data;
	f->client_done = true;
	f->poll_started = uv_now(&f->loop);
}

static void *client_main(void *arg)
{
	fx *f = arg;
	f->client(f);
	uv_async_send(&f->done_async);
	return NULL;
}

static void run_client(fx *f, client_fn fn)
{
	f->client = fn;
	uv_async_init(&f->loop, &f->done_async, on_done_async);
	f->done_async.data = f;
	uv_timer_init(&f->loop, &f->poll);
	f->poll.data = f;
	uv_timer_start(&f->poll, on_poll, 10, 10);
	assert_int_equal(pthread_create(&f->thread, NULL, client_main, f), 0);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	pthread_join(f->thread, NULL);
	assert_int_equal(f->door_closed, 1);
}

/* --- the client (its own thread; blocking sockets) --- */

typedef struct rparse {
	reply *r;
	bool head;
	bool last_was_value;
	bool complete;
} rparse;

static void append(char *dst, size_t cap, const char *at, size_t len)
{
	size_t used = strlen(dst);
	if (used + len >= cap)
		len = cap - used - 1;
	memcpy(dst + used, at, len);
	dst[used + len] = '\0';
}

static int rp_field(llhttp_t *p, const char *at, size_t len)
{
	rparse *rp = p->data;
	append(rp->r->headers, sizeof(rp->r->headers), at, len);
	return 0;
}

static int rp_field_done(llhttp_t *p)
{
	return rp_field(p, ": ", 2);
}

static int rp_value_done(llhttp_t *p)
{
	return rp_field(p, "\n", 1);
}

static int rp_headers_done(llhttp_t *p)
{
	rparse *rp = p->data;
	rp->r->status = llhttp_get_status_code(p);
	return rp->head ? 1 : 0;
}

static int rp_body(llhttp_t *p, const char *at, size_t len)
{
	rparse *rp = p->data;
	reply *r = rp->r;
	if (r->body_len + len >= BODY_MAX)
		len = BODY_MAX - 1 - r->body_len;
	memcpy(r->body + r->body_len, at, len);
	r->body_len += len;
	r->body[r->body_len] = '\0';
	return 0;
}

static int rp_done(llhttp_t *p)
{
	rparse *rp = p->data;
	rp->complete = true;
	return HPE_PAUSED;
}

static const llhttp_settings_t rp_settings = {
    .on_header_field = rp_field,
    .on_header_field_complete = rp_field_done,
    .on_header_value = rp_field,
    .on_header_value_complete = rp_value_done,
    .on_headers_complete = rp_headers_done,
    .on_body = rp_body,
    .on_message_complete = rp_done,
};

static int tcp_connect(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	/* A hung server fails the test instead of hanging it. */
	struct timeval tv = {.tv_sec = 30};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static int send_all(int fd, const char *data, size_t len)
{
	while (len) {
		ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Send `req` (asks for Connection: close) and read the one response. */
static void exchange(fx *f, const char *req, size_t len, bool head, reply *r)
{
	memset(r, 0, sizeof(*r));
	int fd = tcp_connect(f->port);
	if (fd < 0) {
		r->rc = fd;
		return;
	}
	/* The server may answer (413) before reading everything. */
	send_all(fd, req, len);
	llhttp_t p;
	rparse rp = {.r = r, .head = head};
	llhttp_init(&p, HTTP_RESPONSE, &rp_settings);
	p.data = &rp;
	char in[8192];
	for (;;) {
		ssize_t n = recv(fd, in, sizeof(in), 0);
		if (n == 0) {
			r->eof = true;
			llhttp_finish(&p);
			break;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			r->rc = -errno;
			break;
		}
		if (!rp.complete)
			llhttp_execute(&p, in, (size_t)n);
	}
	close(fd);
	if (!rp.complete && !r->rc)
		r->rc = -EPROTO;
}

/* One request; `host` NULL: "127.0.0.1:<port>", "": no Host header.
 * `extra` holds further header lines, each ending in \r\n. */
static void request(fx *f, reply *r, const char *method, const char *path, const char *host,
                    const char *extra, const char *body)
{
	char hosthdr[160] = "";
	if (!host)
		snprintf(hosthdr, sizeof(hosthdr), "Host: 127.0.0.1:%d\r\n", f->port);
	else if (*host)
		snprintf(hosthdr, sizeof(hosthdr), "Host: %s\r\n", host);
	size_t blen = body ? strlen(body) : 0;
	size_t cap = blen + 1024;
	char *req = malloc(cap);
	int n = snprintf(req, cap,
	                 "%s %s HTTP/1.1\r\n%s%sConnection: close\r\nContent-Length: %zu\r\n"
	                 "\r\n",
	                 method, path, hosthdr, extra ? extra : "", blen);
	memcpy(req + n, body ? body : "", blen);
	exchange(f, req, (size_t)n + blen, strcmp(method, "HEAD") == 0, r);
	free(req);
}

static void post(fx *f, reply *r, const char *path, const char *body)
{
	request(f, r, "POST", path, NULL, NULL, body);
}

static void get(fx *f, reply *r, const char *path)
{
	request(f, r, "GET", path, NULL, NULL, NULL);
}

/* --- checks (main thread) --- */

static bool has_header(const reply *r, const char *line)
{
	return strstr(r->headers, line) != NULL;
}

static json_t *body_json(const reply *r)
{
	json_error_t jerr;
	json_t *j = json_loadb(r->body, r->body_len, 0, &jerr);
	if (!j)
		fail_msg("body is not JSON (%s): %s", jerr.text, r->body);
	return j;
}

/* The body is {"error": "..."} and the message contains `part`. */
static void assert_error(const reply *r, int status, const char *part)
{
	assert_int_equal(r->rc, 0);
	if (r->status != status)
		fail_msg("status %d, expected %d: %s", r->status, status, r->body);
	assert_true(has_header(r, "Content-Type: application/json"));
	json_t *j = body_json(r);
	const char *e = json_string_value(json_object_get(j, "error"));
	assert_non_null(e);
	if (part && !strstr(e, part))
		fail_msg("error \"%s\" does not mention \"%s\"", e, part);
	json_decref(j);
}

/* Split an NDJSON body into parsed lines; returns how many. */
static size_t ndjson_lines(const reply *r, json_t **out, size_t max)
{
	size_t n = 0;
	const char *s = r->body, *end = r->body + r->body_len;
	while (s < end && n < max) {
		const char *nl = memchr(s, '\n', (size_t)(end - s));
		assert_non_null(nl); /* every line ends in a newline */
		out[n] = json_loadb(s, (size_t)(nl - s), 0, NULL);
		assert_non_null(out[n]);
		n++;
		s = nl + 1;
	}
	return n;
}

static const char *content_of(json_t *chunk)
{
	return json_string_value(json_object_get(json_object_get(chunk, "message"), "content"));
}

/* --- tests: chat and generate --- */

static const char chat_body[] =
    "{\"model\":\"m1\",\"messages\":[{\"role\":\"user\",\"content\":\"secret question\"}]}";

static void client_stream_chat(fx *f)
{
	post(f, &f->rep[0], "/api/chat", chat_body);
}

static void stream_chat(void **state)
{
	fx *f = *state;
	run_client(f, client_stream_chat);
	reply *r = &f->rep[0];
	assert_int_equal(r->rc, 0);
	assert_int_equal(r->status, 200);
	assert_true(has_header(r, "Content-Type: application/x-ndjson"));
	assert_true(has_header(r, "Transfer-Encoding: chunked"));
	assert_true(has_header(r, "X-Sovmesh-Source: local"));
	assert_false(has_header(r, "X-Sovmesh-Peer"));
	json_t *lines[8];
	size_t n = ndjson_lines(r, lines, 8);
	assert_int_equal(n, 3);
	assert_string_equal(content_of(lines[0]), "w0 ");
	assert_string_equal(content_of(lines[2]), "w2 ");
	assert_true(json_is_true(json_object_get(lines[2], "done")));
	for (size_t i = 0; i < n; i++)
		json_decref(lines[i]);
	/* The backend got the user's text (this is the local hop). */
	assert_non_null(strstr(f->fb.last_body, "secret question"));
}

static void client_chat_one_json(fx *f)
{
	post(f, &f->rep[0], "/api/chat",
	     "{\"model\":\"m1\",\"stream\":false,\"messages\":[{\"role\":\"user\",\"content\":"
	     "\"q\"}]}");
}

static void chat_stream_false_one_json(void **state)
{
	fx *f = *state;
	f->fb.chunks = 1;
	run_client(f, client_chat_one_json);
	reply *r = &f->rep[0];
	assert_int_equal(r->status, 200);
	assert_true(has_header(r, "Content-Type: application/json"));
	assert_true(has_header(r, "X-Sovmesh-Source: local"));
	assert_false(has_header(r, "Transfer-Encoding: chunked"));
	/* Exactly the backend's object, one document. */
	assert_string_equal(r->body,
	                    "{\"model\":\"m1\",\"message\":{\"role\":\"assistant\",\"content\":"
	                    "\"w0 \"},\"done\":true}");
}

/* A source that streams anyway is summed into one answer. */
static void chat_stream_false_merges_pieces(void **state)
{
	fx *f = *state;
	f->fb.chunks = 3;
	run_client(f, client_chat_one_json);
	reply *r = &f->rep[0];
	assert_int_equal(r->status, 200);
	json_t *j = body_json(r);
	assert_string_equal(content_of(j), "w0 w1 w2 ");
	assert_true(json_is_true(json_object_get(j, "done")));
	json_decref(j);
}

static void client_generate(fx *f)
{
	post(f, &f->rep[0], "/api/generate", "{\"model\":\"m1\",\"prompt\":\"why?\"}");
	post(f, &f->rep[1], "/api/generate",
	     "{\"model\":\"m1\",\"prompt\":\"why?\",\"stream\":false}");
}

static void generate(void **state)
{
	fx *f = *state;
	run_client(f, client_generate);
	reply *r = &f->rep[0];
	assert_int_equal(r->status, 200);
	assert_true(has_header(r, "Content-Type: application/x-ndjson"));
	json_t *lines[8];
	size_t n = ndjson_lines(r, lines, 8);
	assert_int_equal(n, 3);
	assert_string_equal(json_string_value(json_object_get(lines[1], "response")), "w1 ");
	for (size_t i = 0; i < n; i++)
		json_decref(lines[i]);
	r = &f->rep[1];
	assert_int_equal(r->status, 200);
	assert_true(has_header(r, "Content-Type: application/json"));
	json_t *j = body_json(r);
	assert_string_equal(json_string_value(json_object_get(j, "response")), "w0 w1 w2 ");
	json_decref(j);
	assert_int_equal(f->fb.generate_calls, 2);
}

/* --- tests: bad input --- */

static void client_bad_bodies(fx *f)
{
	post(f, &f->rep[0], "/api/chat", "{");
	post(f, &f->rep[1], "/api/chat", "{\"messages\":[]}");
	post(f, &f->rep[2], "/api/chat", "{\"model\":\"m1\",\"messages\":[{\"role\":\"bogus\"}]}");
	post(f, &f->rep[3], "/api/generate", "{\"model\":\"m1\",\"prompt\":5}");
	post(f, &f->rep[4], "/api/embed", "{\"model\":\"e1\",\"input\":5}");
	post(f, &f->rep[5], "/api/embed", "{\"model\":\"e1\",\"input\":[\"a\",1]}");
	post(f, &f->rep[6], "/api/embed", "{\"input\":\"a\"}");
	post(f, &f->rep[7], "/api/embed", "{\"model\":\"e1\",\"input\":\"a\",\"dimensions\":-1}");
	post(f, &f->rep[8], "/api/embeddings", "{\"model\":\"e1\",\"prompt\":3}");
	post(f, &f->rep[9], "/api/show", "{}");
	post(f, &f->rep[10], "/api/show", "[1]");
	post(f, &f->rep[11], "/api/embed", "{\"model\":\"e1\",\"input\":\"a\",\"truncate\":1}");
}

static void bad_bodies_400(void **state)
{
	fx *f = *state;
	run_client(f, client_bad_bodies);
	assert_error(&f->rep[0], 400, "JSON");
	assert_error(&f->rep[1], 400, "model");
	assert_error(&f->rep[2], 400, "messages[0].role");
	assert_error(&f->rep[3], 400, "prompt");
	assert_error(&f->rep[4], 400, "input");
	assert_error(&f->rep[5], 400, "input[1]");
	assert_error(&f->rep[6], 400, "model");
	assert_error(&f->rep[7], 400, "dimensions");
	assert_error(&f->rep[8], 400, "prompt");
	assert_error(&f->rep[9], 400, "model");
	assert_error(&f->rep[10], 400, "object");
	assert_error(&f->rep[11], 400, "truncate");
	/* Nothing bad reached the backend. */
	assert_int_equal(f->fb.generate_calls, 0);
	assert_int_equal(f->embed_calls, 0);
	assert_int_equal(f->info_calls, 0);
}

static void client_oversized(fx *f)
{
	char *body = malloc(MAX_BODY * 2 + 1);
	memset(body, ' ', MAX_BODY * 2);
	body[MAX_BODY * 2] = '\0';
	body[0] = '{';
	body[MAX_BODY * 2 - 1] = '}';
	post(f, &f->rep[0], "/api/chat", body);
	free(body);
}

static void oversized_body_413(void **state)
{
	fx *f = *state;
	run_client(f, client_oversized);
	assert_int_equal(f->rep[0].status, 413);
	assert_int_equal(f->fb.generate_calls, 0);
}

/* --- tests: Host and Origin --- */

static void host_and_origin_rules(void **state)
{
	(void)state;
	assert_true(front_door_host_allowed("localhost:11435", "127.0.0.1"));
	assert_true(front_door_host_allowed("localhost", "127.0.0.1"));
	assert_true(front_door_host_allowed("LocalHost:1", "127.0.0.1"));
	assert_true(front_door_host_allowed("127.0.0.1", "127.0.0.1"));
	assert_true(front_door_host_allowed("127.0.0.1:11435", "0.0.0.0"));
	assert_true(front_door_host_allowed("[::1]:11435", "127.0.0.1"));
	assert_true(front_door_host_allowed("[::1]", "127.0.0.1"));
	assert_true(front_door_host_allowed("192.168.1.5:11435", "192.168.1.5"));
	assert_true(front_door_host_allowed("[fe80::1]:80", "FE80::1"));
	assert_false(front_door_host_allowed(NULL, "127.0.0.1"));
	assert_false(front_door_host_allowed("", "127.0.0.1"));
	assert_false(front_door_host_allowed("evil.example", "127.0.0.1"));
	assert_false(front_door_host_allowed("evil.example:11435", "127.0.0.1"));
	assert_false(front_door_host_allowed("localhost.evil.example", "127.0.0.1"));
	assert_false(front_door_host_allowed("localhost:", "127.0.0.1"));
	assert_false(front_door_host_allowed("localhost:12x", "127.0.0.1"));
	assert_false(front_door_host_allowed("localhost:123456", "127.0.0.1"));
	assert_false(front_door_host_allowed("[::1", "127.0.0.1"));
	assert_false(front_door_host_allowed("[localhost]", "127.0.0.1"));
	assert_false(front_door_host_allowed("::1", "127.0.0.1"));
	assert_false(front_door_host_allowed("127.0.0.2", "127.0.0.1"));
	assert_false(front_door_host_allowed("0.0.0.0:11435", "0.0.0.0"));
	assert_false(front_door_host_allowed("[::]:11435", "::"));
	assert_false(front_door_host_allowed("10.0.0.1", "192.168.1.5"));

	assert_true(front_door_origin_allowed(NULL));
	assert_true(front_door_origin_allowed("http://localhost:3000"));
	assert_true(front_door_origin_allowed("https://localhost"));
	assert_true(front_door_origin_allowed("http://127.0.0.1:11435"));
	assert_true(front_door_origin_allowed("http://[::1]:8080"));
	assert_true(front_door_origin_allowed("HTTP://LOCALHOST"));
	assert_false(front_door_origin_allowed("null"));
	assert_false(front_door_origin_allowed(""));
	assert_false(front_door_origin_allowed("http://evil.example"));
	assert_false(front_door_origin_allowed("http://localhost.evil.example"));
	assert_false(front_door_origin_allowed("http://localhost:3000/"));
	assert_false(front_door_origin_allowed("file://"));
	assert_false(front_door_origin_allowed("localhost:3000"));
	assert_false(front_door_origin_allowed("ftp://localhost"));
}

static void client_host_origin(fx *f)
{
	char host[64];
	request(f, &f->rep[0], "GET", "/api/tags", "evil.example", NULL, NULL);
	request(f, &f->rep[1], "POST", "/api/chat", "evil.example:11435", NULL, chat_body);
	snprintf(host, sizeof(host), "localhost:%d", f->port);
	request(f, &f->rep[2], "GET", "/api/version", host, NULL, NULL);
	snprintf(host, sizeof(host), "[::1]:%d", f->port);
	request(f, &f->rep[3], "GET", "/", host, NULL, NULL);
	request(f, &f->rep[4], "GET", "/", "", NULL, NULL);
	request(f, &f->rep[5], "POST", "/api/chat", NULL, "Origin: http://evil.example\r\n",
	        chat_body);
	request(f, &f->rep[6], "GET", "/api/version", NULL, "Origin: null\r\n", NULL);
	request(f, &f->rep[7], "GET", "/api/version", NULL, "Origin: http://localhost:3000\r\n",
	        NULL);
	request(f, &f->rep[8], "OPTIONS", "/api/chat", NULL,
	        "Origin: http://localhost:3000\r\nAccess-Control-Request-Method: POST\r\n"
	        "Access-Control-Request-Headers: content-type\r\n",
	        NULL);
	request(f, &f->rep[9], "OPTIONS", "/api/chat", NULL, "Origin: http://evil.example\r\n",
	        NULL);
	/* Rebinding also hides in the control mirror. */
	request(f, &f->rep[10], "GET", "/sovmesh/v1/x", "evil.example", NULL, NULL);
	request(f, &f->rep[11], "GET", "/", "localhost", "Host: evil.example\r\n", NULL);
	/* HTTP/1.0 may leave Host out (never a browser). */
	const char *old = "GET / HTTP/1.0\r\n\r\n";
	exchange(f, old, strlen(old), false, &f->rep[12]);
}

static void host_and_origin_checked_first(void **state)
{
	fx *f = *state;
	run_client(f, client_host_origin);
	assert_error(&f->rep[0], 403, "host");
	assert_error(&f->rep[1], 403, "host");
	assert_int_equal(f->rep[2].status, 200);
	assert_int_equal(f->rep[3].status, 200);
	assert_error(&f->rep[4], 403, "Host");
	assert_error(&f->rep[5], 403, "origin");
	assert_error(&f->rep[6], 403, "origin");
	assert_int_equal(f->rep[7].status, 200);
	assert_true(has_header(&f->rep[7], "Access-Control-Allow-Origin: http://localhost:3000"));
	assert_int_equal(f->rep[8].status, 204);
	assert_true(has_header(&f->rep[8], "Access-Control-Allow-Origin: http://localhost:3000"));
	assert_non_null(strstr(f->rep[8].headers, "Access-Control-Allow-Headers: "));
	assert_non_null(strstr(f->rep[8].headers, "Content-Type"));
	assert_error(&f->rep[9], 403, "origin");
	assert_error(&f->rep[10], 403, "host");
	assert_error(&f->rep[11], 400, "Host");
	assert_int_equal(f->rep[12].status, 200);
	assert_string_equal(f->rep[12].body, "Ollama is running");
	/* Refused requests never reached the router or the control API. */
	assert_int_equal(f->fb.generate_calls, 0);
	assert_int_equal(f->control_calls, 0);
}

/* The control mirror and the page take only their own origin: another
 * loopback port is another site (a page any local program serves). */
static void client_same_origin(fx *f)
{
	char own[80], other[80];
	snprintf(own, sizeof(own), "Origin: http://127.0.0.1:%d\r\n", f->port);
	snprintf(other, sizeof(other), "Origin: http://127.0.0.1:%d\r\n", f->port + 1);
	request(f, &f->rep[0], "GET", "/sovmesh/v1/x", NULL, other, NULL);
	request(f, &f->rep[1], "POST", "/sovmesh/v1/x", NULL, other, "{}");
	request(f, &f->rep[2], "GET", "/settings/network", NULL, other, NULL);
	request(f, &f->rep[3], "GET", "/sovmesh/v1/x", NULL, own, NULL);
	request(f, &f->rep[4], "GET", "/settings/network", NULL, NULL, NULL);
	request(f, &f->rep[5], "GET", "/api/version", NULL, other, NULL);
}

static void control_and_page_same_origin_only(void **state)
{
	fx *f = *state;
	run_client(f, client_same_origin);
	assert_error(&f->rep[0], 403, "origin");
	assert_false(has_header(&f->rep[0], "Access-Control-Allow-Origin"));
	assert_error(&f->rep[1], 403, "origin");
	assert_error(&f->rep[2], 403, "origin");
	assert_int_equal(f->control_calls, 1); /* only rep[3] */
	assert_int_equal(f->rep[3].status, 200);
	assert_int_equal(f->rep[4].status, 200);
	assert_non_null(strstr(f->rep[4].headers, "Content-Security-Policy: default-src 'self'"));
	assert_non_null(strstr(f->rep[4].headers, "X-Frame-Options: DENY"));
	assert_non_null(strstr(f->rep[4].headers, "X-Content-Type-Options: nosniff"));
	assert_non_null(strstr(f->rep[4].headers, "Cache-Control: no-store"));
	assert_null(strstr(f->rep[4].body, TOKEN)); /* the key never in the page */
	/* Ollama's own paths keep the loopback CORS rule. */
	assert_int_equal(f->rep[5].status, 200);
}

/* --- tests: pass-through endpoints --- */

static void client_tags_version(fx *f)
{
	get(f, &f->rep[0], "/api/tags");
	get(f, &f->rep[1], "/api/version");
	request(f, &f->rep[2], "HEAD", "/api/tags", NULL, NULL, NULL);
}

static void tags_and_version(void **state)
{
	fx *f = *state;
	run_client(f, client_tags_version);
	reply *r = &f->rep[0];
	assert_int_equal(r->status, 200);
	json_t *j = body_json(r);
	json_t *models = json_object_get(j, "models");
	assert_int_equal(json_array_size(models), 1);
	json_t *m = json_array_get(models, 0);
	assert_string_equal(json_string_value(json_object_get(m, "name")), "m1:latest");
	assert_int_equal(json_integer_value(json_object_get(m, "size")), 42);
	assert_null(json_object_get(m, "remote"));
	json_decref(j);

	r = &f->rep[1];
	assert_int_equal(r->status, 200);
	j = body_json(r);
	assert_string_equal(json_string_value(json_object_get(j, "version")), "0.9.9");
	assert_string_equal(json_string_value(json_object_get(j, "sovmesh")), VERSION);
	json_decref(j);
	assert_string_equal(f->info_what, "version");
	assert_string_equal(f->info_body, "(null)");

	assert_int_equal(f->rep[2].status, 200);
	assert_int_equal(f->rep[2].body_len, 0);
}

/* The backend is down: tags still answer (empty local list), version
 * still answers with ours. */
static void backend_down_tags_and_version(void **state)
{
	fx *f = *state;
	f->list_fail = -ECONNREFUSED;
	f->info_fail = -ECONNREFUSED;
	run_client(f, client_tags_version);
	reply *r = &f->rep[0];
	assert_int_equal(r->status, 200);
	json_t *j = body_json(r);
	assert_true(json_is_array(json_object_get(j, "models")));
	assert_int_equal(json_array_size(json_object_get(j, "models")), 0);
	json_decref(j);
	r = &f->rep[1];
	assert_int_equal(r->status, 200);
	j = body_json(r);
	assert_string_equal(json_string_value(json_object_get(j, "version")), "0.0.0");
	assert_string_equal(json_string_value(json_object_get(j, "sovmesh")), VERSION);
	json_decref(j);
}

static void client_show_ps(fx *f)
{
	post(f, &f->rep[0], "/api/show", "{\"model\":\"m1\",\"verbose\":true}");
	get(f, &f->rep[1], "/api/ps");
	post(f, &f->rep[2], "/api/show", "{\"name\":\"m1\"}");
}

static void show_and_ps_pass_through(void **state)
{
	fx *f = *state;
	run_client(f, client_show_ps);
	assert_int_equal(f->rep[0].status, 200);
	assert_string_equal(f->rep[0].body,
	                    "{\"modelfile\":\"FROM m1\",\"details\":{\"family\":\"fake\"}}");
	assert_int_equal(f->rep[1].status, 200);
	assert_string_equal(f->rep[1].body,
	                    "{\"models\":[{\"name\":\"m1:latest\",\"size_vram\":7}]}");
	assert_int_equal(f->rep[2].status, 200);
	assert_int_equal(f->info_calls, 3);
	/* The last call was the legacy "name" show, passed on as sent. */
	assert_string_equal(f->info_what, "show");
	assert_string_equal(f->info_body, "{\"name\":\"m1\"}");
}

static void client_show_only(fx *f)
{
	post(f, &f->rep[0], "/api/show", "{\"model\":\"nope\"}");
	get(f, &f->rep[1], "/api/ps");
}

static void show_unknown_model_404(void **state)
{
	fx *f = *state;
	f->info_fail = -ENOENT;
	run_client(f, client_show_only);
	assert_error(&f->rep[0], 404, "scripted info failure");
	assert_error(&f->rep[1], 404, "scripted info failure");
}

static void ps_busy_503(void **state)
{
	fx *f = *state;
	f->info_fail = -EBUSY;
	run_client(f, client_show_only);
	assert_error(&f->rep[1], 503, "scripted info failure");
}

static void client_embed(fx *f)
{
	post(f, &f->rep[0], "/api/embed", "{\"model\":\"e1\",\"input\":[\"alpha\",\"beta\"]}");
	post(f, &f->rep[1], "/api/embed",
	     "{\"model\":\"e1\",\"input\":\"alpha\",\"dimensions\":2,\"truncate\":true,"
	     "\"options\":{},\"keep_alive\":\"5m\"}");
	post(f, &f->rep[2], "/api/embeddings", "{\"model\":\"e1\",\"prompt\":\"gamma\"}");
	post(f, &f->rep[3], "/api/embed", "{\"model\":\"e1\",\"input\":[]}");
	post(f, &f->rep[4], "/api/embeddings", "{\"model\":\"e1\",\"prompt\":\"\"}");
}

static void embed_and_legacy_embeddings(void **state)
{
	fx *f = *state;
	run_client(f, client_embed);
	reply *r = &f->rep[0];
	assert_int_equal(r->status, 200);
	assert_true(has_header(r, "X-Sovmesh-Source: local"));
	json_t *j = body_json(r);
	assert_string_equal(json_string_value(json_object_get(j, "model")), "e1");
	json_t *e = json_object_get(j, "embeddings");
	assert_int_equal(json_array_size(e), 2);
	assert_int_equal(json_array_size(json_array_get(e, 1)), 4);
	assert_true(json_number_value(json_array_get(json_array_get(e, 0), 0)) == 3.0);
	assert_true(json_number_value(json_array_get(json_array_get(e, 1), 3)) == 1.0);
	json_decref(j);

	/* "dimensions": cut to 2, back to unit length. */
	r = &f->rep[1];
	assert_int_equal(r->status, 200);
	j = body_json(r);
	e = json_array_get(json_object_get(j, "embeddings"), 0);
	assert_int_equal(json_array_size(e), 2);
	assert_true(fabs(json_number_value(json_array_get(e, 0)) - 0.6) < 1e-6);
	assert_true(fabs(json_number_value(json_array_get(e, 1)) - 0.8) < 1e-6);
	json_decref(j);

	r = &f->rep[2];
	assert_int_equal(r->status, 200);
	j = body_json(r);
	e = json_object_get(j, "embedding");
	assert_int_equal(json_array_size(e), 4);
	assert_true(json_number_value(json_array_get(e, 1)) == 4.0);
	json_decref(j);

	/* Nothing to embed: answered without the backend. */
	assert_string_equal(f->rep[3].body, "{\"model\":\"e1\",\"embeddings\":[]}");
	assert_string_equal(f->rep[4].body, "{\"embedding\":[]}");
	assert_int_equal(f->embed_calls, 3);
	assert_int_equal(f->embed_n, 1);
	assert_string_equal(f->embed_first, "gamma");
}

static void client_embed_one(fx *f)
{
	post(f, &f->rep[0], "/api/embed", "{\"model\":\"e1\",\"input\":\"a\"}");
}

static void embed_timeout_504(void **state)
{
	fx *f = *state;
	f->embed_fail = -ETIMEDOUT;
	run_client(f, client_embed_one);
	assert_error(&f->rep[0], 504, "scripted embed failure");
}

/* --- tests: peers' models in /api/tags --- */

static void client_tags(fx *f)
{
	get(f, &f->rep[0], "/api/tags");
}

static json_t *find_model(json_t *models, const char *name)
{
	for (size_t i = 0; i < json_array_size(models); i++) {
		json_t *m = json_array_get(models, i);
		if (strcmp(json_string_value(json_object_get(m, "name")), name) == 0)
			return m;
	}
	return NULL;
}

/* The peer names listed for `name`, "beta,gamma". */
static void peers_of(json_t *models, const char *name, char *out, size_t len)
{
	json_t *m = find_model(models, name);
	assert_non_null(m);
	assert_true(json_is_true(json_object_get(m, "remote")));
	json_t *sv = json_object_get(m, "sovmesh");
	assert_string_equal(json_string_value(json_object_get(sv, "source")), "peer");
	json_t *peers = json_object_get(sv, "peers");
	out[0] = '\0';
	for (size_t i = 0; i < json_array_size(peers); i++)
		snprintf(out + strlen(out), len - strlen(out), "%s%s", i ? "," : "",
		         json_string_value(json_array_get(peers, i)));
}

static void tags_add_connected_peers_models(void **state)
{
	fx *f = *state;
	run_client(f, client_tags);
	reply *r = &f->rep[0];
	assert_int_equal(r->status, 200);
	json_t *j = body_json(r);
	json_t *models = json_object_get(j, "models");
	/* m1:latest (local; beta's "m1" is the same model), then the rest
	 * once each. */
	assert_int_equal(json_array_size(models), 4);
	json_t *local = json_array_get(models, 0);
	assert_string_equal(json_string_value(json_object_get(local, "name")), "m1:latest");
	assert_null(json_object_get(local, "remote"));
	assert_null(find_model(models, "m1"));
	char peers[64];
	peers_of(models, "llama3.2:1b", peers, sizeof(peers));
	assert_string_equal(peers, "beta");
	peers_of(models, "qwen2.5:0.5b", peers, sizeof(peers));
	assert_string_equal(peers, "beta,gamma");
	peers_of(models, "phi3:latest", peers, sizeof(peers));
	assert_string_equal(peers, "gamma");
	json_t *m = find_model(models, "phi3:latest");
	assert_string_equal(json_string_value(json_object_get(m, "model")), "phi3:latest");
	assert_int_equal(json_integer_value(json_object_get(m, "size")), 0);
	assert_string_equal(json_string_value(json_object_get(m, "digest")), "");
	assert_true(json_is_object(json_object_get(m, "details")));
	const char *when = json_string_value(json_object_get(m, "modified_at"));
	assert_non_null(when);
	/* RFC 3339 UTC: 2025-01-02T03:04:05Z */
	assert_int_equal(strlen(when), 20);
	assert_true(when[4] == '-' && when[10] == 'T' && when[19] == 'Z');
	json_decref(j);
}

/* An offline peer's models are not offered, and a failing local backend
 * still leaves the peers' models listed. */
static void tags_skip_offline_peers(void **state)
{
	fx *f = *state;
	peer_transport_close(f->c.pt, on_mesh_closed, f);
	f->c.pt = NULL;
	wait_status(f, &f->c, PEER_OFFLINE);
	f->list_fail = -ECONNREFUSED;
	run_client(f, client_tags);
	reply *r = &f->rep[0];
	assert_int_equal(r->status, 200);
	json_t *j = body_json(r);
	json_t *models = json_object_get(j, "models");
	char peers[64];
	/* No local list this time, so beta's m1 is offered too. */
	assert_int_equal(json_array_size(models), 3);
	peers_of(models, "m1", peers, sizeof(peers));
	assert_string_equal(peers, "beta");
	peers_of(models, "qwen2.5:0.5b", peers, sizeof(peers));
	assert_string_equal(peers, "beta");
	assert_null(find_model(models, "phi3:latest"));
	json_decref(j);
}

/* --- tests: failures of the router's chain --- */

static void backend_busy_no_peers_503(void **state)
{
	fx *f = *state;
	f->fb.fail_code = -EBUSY;
	run_client(f, client_stream_chat);
	reply *r = &f->rep[0];
	assert_error(r, 503, NULL);
	assert_false(has_header(r, "X-Sovmesh-Source"));
	assert_int_equal(f->fb.generate_calls, 1);
}

static void client_stream_generate(fx *f)
{
	post(f, &f->rep[0], "/api/generate", "{\"model\":\"m1\",\"prompt\":\"p\"}");
}

static void error_mid_stream_is_a_line(void **state)
{
	fx *f = *state;
	f->fb.chunks = 5;
	f->fb.fail_after_chunks = 2;
	run_client(f, client_stream_generate);
	reply *r = &f->rep[0];
	assert_int_equal(r->rc, 0);
	assert_int_equal(r->status, 200);
	assert_true(has_header(r, "X-Sovmesh-Source: local"));
	json_t *lines[8];
	size_t n = ndjson_lines(r, lines, 8);
	assert_int_equal(n, 3);
	assert_string_equal(json_string_value(json_object_get(lines[1], "response")), "w1 ");
	const char *e = json_string_value(json_object_get(lines[2], "error"));
	assert_non_null(e);
	assert_non_null(strstr(e, "scripted mid-stream error"));
	for (size_t i = 0; i < n; i++)
		json_decref(lines[i]);
}

/* Read the first streamed piece, then hang up. */
static void client_disconnect(fx *f)
{
	reply *r = &f->rep[0];
	int fd = tcp_connect(f->port);
	if (fd < 0) {
		r->rc = fd;
		return;
	}
	char req[512];
	int n = snprintf(req, sizeof(req),
	                 "POST /api/chat HTTP/1.1\r\nHost: localhost:%d\r\n"
	                 "Content-Length: %zu\r\n\r\n%s",
	                 f->port, strlen(chat_body), chat_body);
	send_all(fd, req, (size_t)n);
	char in[4096];
	size_t got = 0;
	while (got < sizeof(in) - 1) {
		ssize_t k = recv(fd, in + got, sizeof(in) - 1 - got, 0);
		if (k <= 0)
			break;
		got += (size_t)k;
		in[got] = '\0';
		if (strstr(in, "\"w0 \""))
			break;
	}
	r->status = strstr(in, "\"w0 \"") ? 200 : -1;
	close(fd);
}

static void client_disconnect_cancels_backend(void **state)
{
	fx *f = *state;
	f->fb.chunks = 100000;
	f->fb.delay_ms = 20;
	f->wait_cancel = true;
	run_client(f, client_disconnect);
	assert_int_equal(f->rep[0].status, 200);
	assert_int_equal(f->fb.generate_calls, 1);
	assert_int_equal(f->fb.cancels, 1);
}

/* Closing the door ends a pending request with an error and cancels it
 * upstream. */
static void close_cancels_open_requests(void **state)
{
	fx *f = *state;
	f->fb.hang = 1;
	f->close_on_generate = true;
	run_client(f, client_stream_chat);
	assert_error(&f->rep[0], 503, "shutting down");
	assert_int_equal(f->fb.cancels, 1);
}

/* --- tests: the rest of the surface --- */

static void client_misc(fx *f)
{
	get(f, &f->rep[0], "/");
	request(f, &f->rep[1], "HEAD", "/", NULL, NULL, NULL);
	get(f, &f->rep[2], "/api/nope");
	request(f, &f->rep[3], "GET", "/api/chat", NULL, NULL, NULL);
	request(f, &f->rep[4], "DELETE", "/api/tags", NULL, NULL, NULL);
	get(f, &f->rep[5], "/elsewhere");
	post(f, &f->rep[6], "/", "{}");
}

static void root_unknown_and_wrong_method(void **state)
{
	fx *f = *state;
	run_client(f, client_misc);
	assert_int_equal(f->rep[0].status, 200);
	assert_string_equal(f->rep[0].body, "Ollama is running");
	assert_true(has_header(&f->rep[0], "Content-Type: text/plain"));
	assert_int_equal(f->rep[1].status, 200);
	assert_int_equal(f->rep[1].body_len, 0);
	assert_error(&f->rep[2], 404, "/api/nope");
	assert_error(&f->rep[3], 405, "POST");
	assert_true(has_header(&f->rep[3], "Allow: POST"));
	assert_error(&f->rep[4], 405, NULL);
	assert_true(has_header(&f->rep[4], "Allow: GET, HEAD"));
	assert_error(&f->rep[5], 404, NULL);
	assert_error(&f->rep[6], 405, NULL);
}

static void client_control(fx *f)
{
	get(f, &f->rep[0], "/sovmesh/v1/x?a=1");
	post(f, &f->rep[1], "/sovmesh/v1/x", "{}");
	request(f, &f->rep[2], "POST", "/sovmesh/v1/x", NULL, "X-Sovmesh-Token: wrong\r\n", "{}");
	request(f, &f->rep[3], "POST", "/sovmesh/v1/x", NULL, "X-Sovmesh-Token: " TOKEN "\r\n",
	        "{}");
	get(f, &f->rep[4], "/sovmesh/v1/nope");
	get(f, &f->rep[5], "/sovmesh/other");
	request(f, &f->rep[6], "POST", "/sovmesh/v1/x", NULL, "X-Sovmesh-Token: " TOKEN "x\r\n",
	        "{}");
	request(f, &f->rep[7], "DELETE", "/sovmesh/v1/x", NULL, "X-Sovmesh-Token: " TOKEN "\r\n",
	        NULL);
}

static void control_mirror(void **state)
{
	fx *f = *state;
	run_client(f, client_control);
	reply *r = &f->rep[0];
	assert_int_equal(r->status, 200);
	json_t *j = body_json(r);
	assert_string_equal(json_string_value(json_object_get(j, "path")), "/v1/x");
	assert_string_equal(json_string_value(json_object_get(j, "method")), "GET");
	json_decref(j);
	assert_error(&f->rep[1], 403, "X-Sovmesh-Token");
	assert_error(&f->rep[2], 403, "X-Sovmesh-Token");
	assert_int_equal(f->rep[3].status, 200);
	j = body_json(&f->rep[3]);
	assert_string_equal(json_string_value(json_object_get(j, "method")), "POST");
	json_decref(j);
	assert_error(&f->rep[4], 404, NULL);
	assert_error(&f->rep[5], 404, NULL);
	assert_error(&f->rep[6], 403, NULL);
	assert_error(&f->rep[7], 405, NULL); /* the token was right; the API said no */
	assert_int_equal(f->control_calls, 2);
}

/* --- tests: creation --- */

static void client_nothing(fx *f)
{
	(void)f;
}

static void bad_listen_addresses(void **state)
{
	fx *f = *state;
	front_door_options o = {.listen = "localhost:11435", .router = f->r};
	front_door *d = NULL;
	sovmesh_error err = {0};
	assert_int_equal(front_door_new(&f->loop, &o, &d, &err), -EINVAL);
	assert_non_null(strstr(err.message, "localhost:11435"));
	assert_null(d);
	/* The port the fixture's door holds. */
	char taken[64];
	snprintf(taken, sizeof(taken), "127.0.0.1:%d", f->port);
	o.listen = taken;
	memset(&err, 0, sizeof(err));
	assert_int_equal(front_door_new(&f->loop, &o, &d, &err), -EADDRINUSE);
	assert_non_null(strstr(err.message, "api.listen"));
	assert_null(d);
	/* Nothing to do for the client; the fixture closes the rest. */
	run_client(f, client_nothing);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(host_and_origin_rules),
	    cmocka_unit_test_setup_teardown(stream_chat, setup, teardown),
	    cmocka_unit_test_setup_teardown(chat_stream_false_one_json, setup, teardown),
	    cmocka_unit_test_setup_teardown(chat_stream_false_merges_pieces, setup, teardown),
	    cmocka_unit_test_setup_teardown(generate, setup, teardown),
	    cmocka_unit_test_setup_teardown(bad_bodies_400, setup, teardown),
	    cmocka_unit_test_setup_teardown(oversized_body_413, setup, teardown),
	    cmocka_unit_test_setup_teardown(host_and_origin_checked_first, setup, teardown),
	    cmocka_unit_test_setup_teardown(control_and_page_same_origin_only, setup, teardown),
	    cmocka_unit_test_setup_teardown(tags_and_version, setup, teardown),
	    cmocka_unit_test_setup_teardown(backend_down_tags_and_version, setup, teardown),
	    cmocka_unit_test_setup_teardown(show_and_ps_pass_through, setup, teardown),
	    cmocka_unit_test_setup_teardown(show_unknown_model_404, setup, teardown),
	    cmocka_unit_test_setup_teardown(ps_busy_503, setup, teardown),
	    cmocka_unit_test_setup_teardown(embed_and_legacy_embeddings, setup, teardown),
	    cmocka_unit_test_setup_teardown(embed_timeout_504, setup, teardown),
	    cmocka_unit_test_setup_teardown(tags_add_connected_peers_models, setup_mesh, teardown),
	    cmocka_unit_test_setup_teardown(tags_skip_offline_peers, setup_mesh, teardown),
	    cmocka_unit_test_setup_teardown(backend_busy_no_peers_503, setup, teardown),
	    cmocka_unit_test_setup_teardown(error_mid_stream_is_a_line, setup, teardown),
	    cmocka_unit_test_setup_teardown(client_disconnect_cancels_backend, setup, teardown),
	    cmocka_unit_test_setup_teardown(close_cancels_open_requests, setup, teardown),
	    cmocka_unit_test_setup_teardown(root_unknown_and_wrong_method, setup, teardown),
	    cmocka_unit_test_setup_teardown(control_mirror, setup, teardown),
	    cmocka_unit_test_setup_teardown(bad_listen_addresses, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

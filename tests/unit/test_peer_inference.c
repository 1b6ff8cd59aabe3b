/*
 * peer_inference.c: three nodes on one loop, each with its own state
 * directory (identity, trust store), peer port on 127.0.0.1:0 and client.
 * a asks; b serves inference from a fake backend (wrapped by
 * local_backend); c is a misbehaving peer whose /peer/v1/infer route is
 * written here to answer cut, tampered or reordered streams.  a pins b
 * and c, both pin a.  The fake emits its chunks on a uv timer and can be
 * gated (chunk i goes out only once the test releases it), so ordering
 * is checked without any timing assumption.
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
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "local_backend.h"
#include "peer_client.h"
#include "peer_inference.h"
#include "peer_transport.h"
#include "sealed_message.h"

#define WAIT_MS 30000

typedef struct fx fx;

/* ---- the fake backend ---- */

typedef struct fake {
	fx *f;
	uint32_t slots;
	int chunks;      /* objects per streamed answer */
	int fail_before; /* end with this code before any chunk; 0: no */
	int fail_after;  /* end with this code after the chunks; 0: no */
	bool hang;       /* never answer */
	bool gated;      /* chunk i goes out once released > i */
	bool huge;       /* the first chunk is over SEALED_MAX_CHUNK */
	int released;
	/* what it saw */
	int calls, cancels, open, emitted;
	char body[2048];
	char model[64];
	int stream;
	sovmesh_gen_kind kind;
} fake;

typedef struct fake_gen {
	fake *fk;
	uv_timer_t timer;
	sovmesh_gen_callbacks cbs;
	void *ud;
	int stream;
	sovmesh_gen_kind kind;
	int i;
	bool over;
} fake_gen;

static void gen_closed(uv_handle_t *h)
{
	free(h->data);
}

static void gen_end(fake_gen *g)
{
	g->over = true;
	g->fk->open--;
	uv_timer_stop(&g->timer);
	uv_close((uv_handle_t *)&g->timer, gen_closed);
}

static void gen_tick(uv_timer_t *t)
{
	fake_gen *g = t->data;
	fake *fk = g->fk;
	if (fk->hang)
		return;
	if (fk->fail_before) {
		sovmesh_backend_status st = {
		    .size = sizeof(st),
		    .code = fk->fail_before,
		    .message =
		        fk->fail_before == -ENOENT ? "model 'nope' not found" : "engine said no",
		};
		sovmesh_gen_callbacks cbs = g->cbs;
		gen_end(g);
		cbs.on_done(g->ud, &st);
		return;
	}
	int total = g->stream ? fk->chunks : 1;
	if (g->i < total) {
		if (fk->gated && g->i >= fk->released)
			return;
		char json[512];
		int last = g->i == total - 1;
		char text[64];
		if (g->stream)
			snprintf(text, sizeof(text), "part%d ", g->i);
		else
			snprintf(text, sizeof(text), "part0 part1 part2 ");
		if (g->kind == SOVMESH_GEN_CHAT)
			snprintf(json, sizeof(json),
			         "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":"
			         "\"%s\"},\"done\":%s}",
			         text, last && !fk->fail_after ? "true" : "false");
		else
			snprintf(json, sizeof(json),
			         "{\"model\":\"m\",\"response\":\"%s\",\"done\":%s}", text,
			         last && !fk->fail_after ? "true" : "false");
		g->i++;
		fk->emitted++;
		sovmesh_gen_chunk c = {
		    .size = sizeof(c),
		    .json = json,
		    .json_len = strlen(json),
		    .done = last && !fk->fail_after,
		};
		char *big = NULL;
		if (fk->huge) {
			size_t n = SEALED_MAX_CHUNK + 100;
			big = malloc(n + 1);
			assert_non_null(big);
			memset(big, ' ', n);
			static const char head[] = "{\"response\":\"x\",\"done\":false}";
			memcpy(big, head, sizeof(head) - 1);
			big[n] = '\0';
			c.json = big;
			c.json_len = n;
		}
		g->cbs.on_chunk(g->ud, &c); /* may cancel g */
		free(big);
		return;
	}
	sovmesh_backend_status st = {
	    .size = sizeof(st),
	    .code = fk->fail_after,
	    .message = fk->fail_after ? "model runner crashed" : NULL,
	};
	sovmesh_gen_callbacks cbs = g->cbs;
	void *ud = g->ud;
	gen_end(g);
	cbs.on_done(ud, &st);
}

static sovmesh_backend_call *fake_generate(void *instance, const sovmesh_gen_request *req,
                                           const sovmesh_gen_callbacks *cbs, void *ud);

static void fake_cancel(void *instance, sovmesh_backend_call *call)
{
	fake *fk = instance;
	fake_gen *g = (fake_gen *)call;
	assert_false(g->over);
	fk->cancels++;
	gen_end(g);
}

static uint32_t fake_slots(void *instance)
{
	return ((fake *)instance)->slots;
}

static const sovmesh_backend_ops fake_ops = {
    .size = sizeof(sovmesh_backend_ops),
    .generate = fake_generate,
    .cancel = fake_cancel,
    .parallel_slots = fake_slots,
};

/* ---- fixture ---- */

typedef struct node {
	char dir[64];
	identity *id;
	trust_store *ts;
	peer_transport *pt;
	peer_client *pc;
} node;

/* What the misbehaving peer c answers. */
enum bad_mode {
	BAD_GOOD,    /* a correct stream (the control) */
	BAD_CUT,     /* no final frame, HTTP ends cleanly */
	BAD_FLIP,    /* a byte of the second frame flipped */
	BAD_SWAP,    /* frames 1 and 2 swapped */
	BAD_EXTRA,   /* a byte after the final frame */
	BAD_DROP,    /* the connection closes mid-stream */
	BAD_STATUS,  /* plain JSON refusal with bad_status */
	BAD_CAPTURE, /* keep the sealed request, answer 503 */
};

typedef struct answer {
	fx *f;
	peer_infer_call *call;
	bool done;
	int code;
	char msg[600];
	int n;
	char chunk[8][512];
	int dones[8];
	int emitted_at[8]; /* the fake's count when the chunk arrived */
	int cancel_at;     /* cancel inside on_chunk at this count; 0: no */
} answer;

typedef struct raw {
	bool done;
	int code;
	long status;
	char body[8192];
	size_t body_len;
} raw;

struct fx {
	uv_loop_t loop;
	uv_timer_t tick;
	node a, b, c;
	fake fk;
	local_backend *lb;
	peer_infer_server *srv;
	bool hot;
	/* c */
	enum bad_mode bad;
	long bad_status;
	struct sealed_replay_cache *c_replay;
	uint8_t *captured;
	size_t captured_len;
	answer ans[6];
	int closed;
};

static sovmesh_backend_call *fake_generate(void *instance, const sovmesh_gen_request *req,
                                           const sovmesh_gen_callbacks *cbs, void *ud)
{
	fake *fk = instance;
	fk->calls++;
	snprintf(fk->body, sizeof(fk->body), "%.*s", (int)req->body_len, req->body_json);
	snprintf(fk->model, sizeof(fk->model), "%s", req->model);
	fk->stream = req->stream;
	fk->kind = req->kind;
	fake_gen *g = calloc(1, sizeof(*g));
	assert_non_null(g);
	g->fk = fk;
	g->cbs = *cbs;
	g->ud = ud;
	g->stream = req->stream;
	g->kind = req->kind;
	uv_timer_init(&fk->f->loop, &g->timer);
	g->timer.data = g;
	uv_timer_start(&g->timer, gen_tick, 10, 10);
	fk->open++;
	return (sovmesh_backend_call *)g;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void on_tick(uv_timer_t *t)
{
	(void)t; /* only wakes uv_run(UV_RUN_ONCE) */
}

#define RUN_UNTIL(f, cond)                                                                         \
	do {                                                                                       \
		uint64_t t0_ = uv_now(&(f)->loop);                                                 \
		while (!(cond)) {                                                                  \
			uv_run(&(f)->loop, UV_RUN_ONCE);                                           \
			if (uv_now(&(f)->loop) - t0_ > WAIT_MS)                                    \
				fail_msg("not within %d ms: %s", WAIT_MS, #cond);                  \
		}                                                                                  \
	} while (0)

/* Let the loop run for about `ms` (to see that nothing more happens). */
static void settle(fx *f, unsigned ms)
{
	uint64_t t0 = uv_now(&f->loop);
	while (uv_now(&f->loop) - t0 < ms)
		uv_run(&f->loop, UV_RUN_ONCE);
}

static int is_hot(void *ud)
{
	return ((fx *)ud)->hot;
}

/* c's /peer/v1/infer: opens the request with c's key like a real peer,
 * then answers as f->bad says. */
static void h_bad_peer(void *ud, const http_request *req, http_response *resp)
{
	fx *f = ud;
	if (f->bad == BAD_CAPTURE) {
		free(f->captured);
		f->captured = malloc(req->body_len);
		assert_non_null(f->captured);
		memcpy(f->captured, req->body, req->body_len);
		f->captured_len = req->body_len;
		http_response_send_error(resp, 503, "captured");
		return;
	}
	if (f->bad == BAD_STATUS) {
		http_response_send_error(resp, (int)f->bad_status, "no such thing here");
		return;
	}
	struct sealed_gateway_key k = {.key_id = PEER_INFER_KEY_ID};
	memcpy(k.sk, f->c.id->x25519_private, sizeof(k.sk));
	uint8_t *pt = NULL;
	size_t pt_len = 0;
	struct sealed_server *ss = NULL;
	assert_int_equal(sealed_request_open(&k, SEALED_MEDIA_SOVMESH, f->c_replay,
	                                     (uint64_t)time(NULL), (const uint8_t *)req->body,
	                                     req->body_len, &pt, &pt_len, &ss),
	                 0);
	free(pt);
	uint8_t nonce[SEALED_RESPONSE_NONCE_MAX];
	size_t nonce_len = 0;
	struct sealed_stream *st = NULL;
	assert_int_equal(sealed_stream_begin_server(ss, NULL, nonce, &nonce_len, &st), 0);
	static const char *const pts[3] = {
	    "{\"model\":\"m\",\"response\":\"a\",\"done\":false}",
	    "{\"model\":\"m\",\"response\":\"b\",\"done\":true}",
	    "{\"done_status\":\"ok\"}",
	};
	uint8_t *fr[3];
	size_t fl[3];
	for (int i = 0; i < 3; i++)
		assert_int_equal(sealed_stream_seal_chunk(st, i == 2, (const uint8_t *)pts[i],
		                                          strlen(pts[i]), &fr[i], &fl[i]),
		                 0);
	uint8_t out[1024];
	size_t n = 0;
	memcpy(out, nonce, nonce_len);
	n = nonce_len;
	int order[3] = {0, 1, 2};
	int count = 3;
	if (f->bad == BAD_SWAP) {
		order[0] = 1;
		order[1] = 0;
	} else if (f->bad == BAD_CUT) {
		count = 2;
	} else if (f->bad == BAD_DROP) {
		count = 1;
	}
	for (int i = 0; i < count; i++) {
		memcpy(out + n, fr[order[i]], fl[order[i]]);
		if (f->bad == BAD_FLIP && i == 1)
			out[n + SEALED_FRAME_HDR + 3] ^= 0x01;
		n += fl[order[i]];
	}
	if (f->bad == BAD_EXTRA)
		out[n++] = 0;
	for (int i = 0; i < 3; i++)
		free(fr[i]);
	sealed_stream_free(st);
	sealed_server_free(ss);
	if (f->bad == BAD_DROP) {
		/* Headers and one frame out, then the response is dropped
		 * unfinished: the server closes the connection. */
		assert_int_equal(http_response_start(resp, 200, PEER_INFER_MEDIA_RESPONSE), 0);
		assert_int_equal(http_response_write(resp, out, n), 0);
		http_response_unref(resp);
		return;
	}
	http_response_send(resp, 200, PEER_INFER_MEDIA_RESPONSE, out, n);
}

static void node_init(fx *f, node *n, const char *name)
{
	snprintf(n->dir, sizeof(n->dir), "/tmp/sovmesh-pinf-XXXXXX");
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
}

/* x pins y. */
static void trust(node *x, const node *y)
{
	trusted_peer p = {.name = y->id->node_name};
	memcpy(p.fingerprint_hex, y->id->fingerprint_hex, sizeof(p.fingerprint_hex));
	memcpy(p.x25519_public, y->id->x25519_public, sizeof(p.x25519_public));
	sovmesh_error err = {0};
	if (trust_store_add(x->ts, &p, &err) < 0)
		fail_msg("trust_store_add: %s", err.message);
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
	trust(&f->a, &f->c);
	trust(&f->c, &f->a);

	f->fk.f = f;
	f->fk.slots = 8;
	f->fk.chunks = 3;
	assert_int_equal(local_backend_new(&f->loop, &fake_ops, &f->fk, "fake", &f->lb), 0);
	peer_infer_server_options o = {
	    .id = f->b.id,
	    .lb = f->lb,
	    .serve_inference = 1,
	    .max_concurrent = 2,
	    .is_hot = is_hot,
	    .ud = f,
	};
	assert_int_equal(peer_infer_server_register(f->b.pt, &o, &f->srv), 0);
	assert_int_equal(peer_infer_server_register(f->b.pt, &o, &(peer_infer_server *){NULL}),
	                 -EEXIST);

	f->c_replay = sealed_replay_cache_new(0);
	assert_non_null(f->c_replay);
	assert_int_equal(peer_transport_route(f->c.pt, "POST", PEER_INFER_PATH, h_bad_peer, f), 0);
	for (int i = 0; i < 6; i++)
		f->ans[i].f = f;
	*state = f;
	return 0;
}

static void on_closed(void *ud)
{
	((fx *)ud)->closed++;
}

static int teardown(void **state)
{
	fx *f = *state;
	for (int i = 0; i < 6; i++)
		peer_infer_cancel(f->ans[i].call);
	node *nodes[] = {&f->a, &f->b, &f->c};
	int want = 0;
	for (int i = 0; i < 3; i++) {
		if (nodes[i]->pt) {
			peer_transport_close(nodes[i]->pt, on_closed, f);
			want++;
		}
		peer_client_free(nodes[i]->pc, on_closed, f);
		want++;
	}
	RUN_UNTIL(f, f->closed == want);
	peer_infer_server_free(f->srv);
	/* Every backend call was answered or cancelled. */
	assert_int_equal(f->fk.open, 0);
	local_backend_free(f->lb, on_closed, f);
	uv_close((uv_handle_t *)&f->tick, NULL);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(f->closed, want + 1);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	for (int i = 0; i < 3; i++) {
		trust_store_free(nodes[i]->ts);
		identity_free(nodes[i]->id);
		nftw(nodes[i]->dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	}
	sealed_replay_cache_free(f->c_replay);
	free(f->captured);
	free(f);
	return 0;
}

/* ---- asking ---- */

static void ans_chunk(void *ud, const char *json, size_t len, int done)
{
	answer *a = ud;
	assert_false(a->done);
	assert_true(a->n < 8);
	assert_true(len < sizeof(a->chunk[0]));
	memcpy(a->chunk[a->n], json, len);
	a->chunk[a->n][len] = '\0';
	a->dones[a->n] = done;
	a->emitted_at[a->n] = a->f->fk.emitted;
	a->n++;
	if (a->cancel_at && a->n == a->cancel_at) {
		peer_infer_cancel(a->call);
		a->call = NULL;
	}
}

static void ans_done(void *ud, int code, const char *msg)
{
	answer *a = ud;
	assert_false(a->done);
	assert_non_null(a->call);
	a->done = true;
	a->code = code;
	a->call = NULL;
	snprintf(a->msg, sizeof(a->msg), "%s", msg ? msg : "");
	assert_null(strchr(a->msg, '\n'));
}

static const peer_infer_callbacks ans_cbs = {
    .on_chunk = ans_chunk,
    .on_done = ans_done,
};

/* a asks node `to` (its address, its fingerprint, key_of's X25519 key). */
static void ask_key(fx *f, const node *to, const node *key_of, sovmesh_gen_kind kind,
                    const char *body, unsigned timeout_ms, answer *a)
{
	int cancel_at = a->cancel_at;
	memset(a, 0, sizeof(*a));
	a->f = f;
	a->cancel_at = cancel_at;
	infer_request req;
	sovmesh_error err = {0};
	if (infer_request_parse(kind, body, strlen(body), &req, &err) < 0)
		fail_msg("infer_request_parse: %s", err.message);
	peer_infer_target t = {
	    .fingerprint_hex = to->id->fingerprint_hex,
	    .host = "127.0.0.1",
	    .port = peer_transport_port(to->pt),
	    .x25519_public = key_of->id->x25519_public,
	};
	a->call = peer_infer_start(f->a.pc, &t, &req, timeout_ms, &ans_cbs, a, &err);
	infer_request_clear(&req); /* used during the call only */
	if (!a->call)
		fail_msg("peer_infer_start: %s", err.message);
	assert_false(a->done);
}

static void ask(fx *f, const node *to, sovmesh_gen_kind kind, const char *body, answer *a)
{
	ask_key(f, to, to, kind, body, 0, a);
}

static const char chat_body[] = "{\"model\":\"llama3.2:1b\",\"messages\":["
                                "{\"role\":\"system\",\"content\":\"SYSTEM-SECRET\"},"
                                "{\"role\":\"user\",\"content\":\"first question\"},"
                                "{\"role\":\"assistant\",\"content\":\"first answer\"},"
                                "{\"role\":\"user\",\"content\":\"why is the sky blue?\"}],"
                                "\"options\":{\"temperature\":0.1},\"keep_alive\":\"5m\"}";

static const char gen_body[] = "{\"model\":\"qwen2.5:0.5b\",\"prompt\":\"count to three\","
                               "\"system\":\"SYSTEM-SECRET\",\"context\":[1,2,3],"
                               "\"stream\":false}";

/* ---- raw HTTP to a peer port ---- */

static void raw_status(void *ud, long status)
{
	((raw *)ud)->status = status;
}

static int raw_body(void *ud, const char *data, size_t len)
{
	raw *r = ud;
	size_t room = sizeof(r->body) - 1 - r->body_len;
	size_t n = len < room ? len : room;
	memcpy(r->body + r->body_len, data, n);
	r->body_len += n;
	r->body[r->body_len] = '\0';
	return 0;
}

static void raw_done(void *ud, int code, long status, const char *msg)
{
	(void)msg;
	raw *r = ud;
	r->done = true;
	r->code = code;
	r->status = status;
}

static const sovmesh_http_callbacks raw_cbs = {
    .size = sizeof(sovmesh_http_callbacks),
    .on_status = raw_status,
    .on_body = raw_body,
    .on_done = raw_done,
};

static void raw_post(fx *f, const char *content_type, const void *body, size_t len, raw *r)
{
	memset(r, 0, sizeof(*r));
	peer_request req = {
	    .fingerprint_hex = f->b.id->fingerprint_hex,
	    .host = "127.0.0.1",
	    .port = peer_transport_port(f->b.pt),
	    .method = "POST",
	    .path = PEER_INFER_PATH,
	    .content_type = content_type,
	    .body = body,
	    .body_len = len,
	};
	sovmesh_error err = {0};
	if (!peer_client_request(f->a.pc, &req, &raw_cbs, r, &err))
		fail_msg("peer_client_request: %s", err.message);
	RUN_UNTIL(f, r->done);
	assert_int_equal(r->code, 0);
}

/* The "error" of a plain JSON refusal. */
static void assert_error_body(const raw *r, const char *needle)
{
	json_t *j = json_loadb(r->body, r->body_len, 0, NULL);
	const char *e = json_string_value(json_object_get(j, "error"));
	if (!e || !strstr(e, needle))
		fail_msg("expected an error with '%s', got: %s", needle, r->body);
	json_decref(j);
}

/* Seal `payload` to b's key under `key_id`. */
static uint8_t *seal_to_b(fx *f, uint8_t key_id, const char *payload, size_t *len)
{
	struct sealed_key k = {.key_id = key_id, .aead_id = HPKE_AEAD_CHACHA20POLY1305};
	memcpy(k.pk, f->b.id->x25519_public, sizeof(k.pk));
	uint8_t *msg = NULL;
	struct sealed_client *sc = NULL;
	assert_int_equal(sealed_request_seal(&k, SEALED_MEDIA_SOVMESH, NULL, (uint64_t)time(NULL),
	                                     (const uint8_t *)payload, strlen(payload), &msg, len,
	                                     &sc),
	                 0);
	sealed_client_free(sc);
	return msg;
}

static peer_infer_server_stats stats(fx *f)
{
	peer_infer_server_stats s;
	peer_infer_server_get_stats(f->srv, &s);
	return s;
}

static json_t *load(const char *text)
{
	json_error_t jerr;
	json_t *j = json_loads(text, 0, &jerr);
	if (!j)
		fail_msg("not JSON (%s): %s", jerr.text, text);
	return j;
}

/* ---- cases ---- */

static void test_streamed_answer_in_order(void **state)
{
	fx *f = *state;
	answer *a = &f->ans[0];
	f->fk.gated = true;
	ask(f, &f->b, SOVMESH_GEN_CHAT, chat_body, a);
	RUN_UNTIL(f, f->fk.calls == 1);
	assert_int_equal(stats(f).active, 1);
	assert_int_equal(local_backend_peer_in_flight(f->lb), 1);
	/* One chunk at a time: each arrives before the next is made. */
	for (int i = 0; i < 3; i++) {
		f->fk.released = i + 1;
		RUN_UNTIL(f, a->n == i + 1);
		assert_int_equal(a->emitted_at[i], i + 1);
		assert_false(a->done);
	}
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->code, 0);
	assert_int_equal(a->n, 3);
	for (int i = 0; i < 3; i++) {
		json_t *j = load(a->chunk[i]);
		char want[16];
		snprintf(want, sizeof(want), "part%d ", i);
		assert_string_equal(
		    json_string_value(json_object_get(json_object_get(j, "message"), "content")),
		    want);
		assert_int_equal(a->dones[i], i == 2);
		assert_int_equal(json_is_true(json_object_get(j, "done")), i == 2);
		json_decref(j);
	}

	/* Minimal disclosure: the backend got the model and the last user
	 * message, nothing else. */
	assert_int_equal(f->fk.kind, SOVMESH_GEN_CHAT);
	assert_string_equal(f->fk.model, "llama3.2:1b");
	assert_int_equal(f->fk.stream, 1);
	json_t *got = load(f->fk.body);
	json_t *want = load("{\"model\":\"llama3.2:1b\",\"messages\":[{\"role\":\"user\","
	                    "\"content\":\"why is the sky blue?\"}],\"stream\":true}");
	assert_true(json_equal(got, want));
	json_decref(got);
	json_decref(want);
	assert_null(strstr(f->fk.body, "SYSTEM-SECRET"));
	assert_null(strstr(f->fk.body, "first"));

	peer_infer_server_stats s = stats(f);
	assert_int_equal(s.served, 1);
	assert_int_equal(s.failed, 0);
	assert_int_equal(s.active, 0);
	assert_int_equal(local_backend_peer_in_flight(f->lb), 0);
	assert_true(peer_infer_server_accepting(f->srv));
}

static void test_stream_false_generate(void **state)
{
	fx *f = *state;
	answer *a = &f->ans[0];
	ask(f, &f->b, SOVMESH_GEN_GENERATE, gen_body, a);
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->code, 0);
	assert_int_equal(a->n, 1);
	assert_int_equal(a->dones[0], 1);
	json_t *j = load(a->chunk[0]);
	assert_string_equal(json_string_value(json_object_get(j, "response")),
	                    "part0 part1 part2 ");
	json_decref(j);
	json_t *got = load(f->fk.body);
	json_t *want = load("{\"model\":\"qwen2.5:0.5b\",\"prompt\":\"count to three\","
	                    "\"stream\":false}");
	assert_true(json_equal(got, want));
	json_decref(got);
	json_decref(want);
	assert_int_equal(f->fk.kind, SOVMESH_GEN_GENERATE);
	assert_int_equal(f->fk.stream, 0);
	assert_int_equal(stats(f).served, 1);
}

static void test_serve_off_is_eperm(void **state)
{
	fx *f = *state;
	answer *a = &f->ans[0];
	peer_infer_server_set_limits(f->srv, 0, 2);
	assert_false(peer_infer_server_accepting(f->srv));
	ask(f, &f->b, SOVMESH_GEN_CHAT, chat_body, a);
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->code, -EPERM);
	assert_non_null(strstr(a->msg, "403"));
	assert_non_null(strstr(a->msg, "does not serve inference"));
	assert_int_equal(f->fk.calls, 0);
	assert_int_equal(stats(f).refused_off, 1);
	/* SIGHUP turns it back on for the next request. */
	peer_infer_server_set_limits(f->srv, 1, 2);
	assert_true(peer_infer_server_accepting(f->srv));
	ask(f, &f->b, SOVMESH_GEN_CHAT, chat_body, a);
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->code, 0);
	assert_int_equal(f->fk.calls, 1);
}

static void test_burst_above_max_concurrent(void **state)
{
	fx *f = *state;
	f->fk.gated = true; /* the admitted ones wait until released */
	for (int i = 0; i < 4; i++)
		ask(f, &f->b, SOVMESH_GEN_CHAT, chat_body, &f->ans[i]);
	RUN_UNTIL(f, f->ans[0].done + f->ans[1].done + f->ans[2].done + f->ans[3].done == 2);
	/* The excess was refused while the admitted two were still open. */
	assert_int_equal(f->fk.calls, 2);
	assert_int_equal(stats(f).active, 2);
	assert_false(peer_infer_server_accepting(f->srv));
	int refused = 0;
	for (int i = 0; i < 4; i++) {
		if (!f->ans[i].done)
			continue;
		assert_int_equal(f->ans[i].code, -EBUSY);
		assert_non_null(strstr(f->ans[i].msg, "503"));
		refused++;
	}
	assert_int_equal(refused, 2);
	f->fk.released = 3;
	RUN_UNTIL(f, f->ans[0].done && f->ans[1].done && f->ans[2].done && f->ans[3].done);
	int ok = 0;
	for (int i = 0; i < 4; i++) {
		if (f->ans[i].code == 0) {
			assert_int_equal(f->ans[i].n, 3);
			ok++;
		}
	}
	assert_int_equal(ok, 2);
	peer_infer_server_stats s = stats(f);
	assert_int_equal(s.served, 2);
	assert_int_equal(s.refused_busy, 2);
	assert_int_equal(s.active, 0);
	assert_true(peer_infer_server_accepting(f->srv));
}

static void user_chunk(void *ud, const sovmesh_gen_chunk *c)
{
	(void)ud;
	(void)c;
	fail_msg("the user's call should not answer");
}

static void user_done(void *ud, const sovmesh_backend_status *st)
{
	(void)ud;
	(void)st;
	fail_msg("the user's call should not end");
}

static void test_local_backend_busy_and_hot(void **state)
{
	fx *f = *state;
	answer *a = &f->ans[0];
	/* One slot, taken by the node's own user. */
	f->fk.slots = 1;
	f->fk.hang = true;
	sovmesh_gen_request ur = {
	    .size = sizeof(ur),
	    .kind = SOVMESH_GEN_CHAT,
	    .model = "m",
	    .body_json = "{}",
	    .body_len = 2,
	    .stream = 1,
	};
	sovmesh_gen_callbacks ucbs = {
	    .size = sizeof(ucbs), .on_chunk = user_chunk, .on_done = user_done};
	local_call *uc = local_backend_generate(f->lb, LOCAL_ORIGIN_USER, &ur, &ucbs, NULL);
	assert_non_null(uc);
	assert_true(local_backend_busy(f->lb));
	assert_false(peer_infer_server_accepting(f->srv));
	ask(f, &f->b, SOVMESH_GEN_CHAT, chat_body, a);
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->code, -EBUSY);
	assert_non_null(strstr(a->msg, "local backend is busy"));
	assert_int_equal(f->fk.calls, 1); /* the user's only */
	local_backend_cancel(f->lb, uc);
	assert_int_equal(f->fk.cancels, 1);

	/* Hot: refused although the slot is free. */
	f->fk.hang = false;
	f->hot = true;
	assert_false(peer_infer_server_accepting(f->srv));
	ask(f, &f->b, SOVMESH_GEN_CHAT, chat_body, a);
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->code, -EBUSY);
	assert_non_null(strstr(a->msg, "hot"));
	assert_int_equal(f->fk.calls, 1);
	f->hot = false;
	assert_true(peer_infer_server_accepting(f->srv));
	ask(f, &f->b, SOVMESH_GEN_CHAT, chat_body, a);
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->code, 0);
	peer_infer_server_stats s = stats(f);
	assert_int_equal(s.refused_busy, 2);
	assert_int_equal(s.served, 1);
}

static void test_backend_errors_before_answer(void **state)
{
	fx *f = *state;
	answer *a = &f->ans[0];
	f->fk.fail_before = -ENOENT;
	ask(f, &f->b, SOVMESH_GEN_CHAT, chat_body, a);
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->code, -ENOENT);
	assert_int_equal(a->n, 0);
	assert_non_null(strstr(a->msg, "404"));
	assert_non_null(strstr(a->msg, "not found"));

	f->fk.fail_before = -EBUSY;
	ask(f, &f->b, SOVMESH_GEN_CHAT, chat_body, a);
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->code, -EBUSY);
	assert_non_null(strstr(a->msg, "engine said no"));

	f->fk.fail_before = -ECONNREFUSED;
	ask(f, &f->b, SOVMESH_GEN_CHAT, chat_body, a);
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->code, -EIO);
	assert_non_null(strstr(a->msg, "502"));

	peer_infer_server_stats s = stats(f);
	assert_int_equal(s.failed, 2);
	assert_int_equal(s.refused_busy, 1);
	assert_int_equal(s.served, 0);
	assert_int_equal(s.active, 0);
}

static void test_mid_stream_failure(void **state)
{
	fx *f = *state;
	answer *a = &f->ans[0];
	f->fk.chunks = 2;
	f->fk.fail_after = -EPROTO;
	ask(f, &f->b, SOVMESH_GEN_CHAT, chat_body, a);
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->n, 2);
	assert_int_equal(a->dones[1], 0);
	assert_int_equal(a->code, -EPROTO);
	assert_non_null(strstr(a->msg, "model runner crashed"));
	peer_infer_server_stats s = stats(f);
	assert_int_equal(s.failed, 1);
	assert_int_equal(s.served, 0);

	/* An object too large for one frame: the backend call is stopped
	 * and the answer ends with an error. */
	f->fk.fail_after = 0;
	f->fk.chunks = 3;
	f->fk.huge = true;
	ask(f, &f->b, SOVMESH_GEN_CHAT, chat_body, a);
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->code, -EPROTO);
	assert_int_equal(a->n, 0);
	assert_non_null(strstr(a->msg, "larger than"));
	assert_int_equal(f->fk.cancels, 1);
	s = stats(f);
	assert_int_equal(s.failed, 2);
	assert_int_equal(s.active, 0);
}

static void test_replayed_request_refused(void **state)
{
	fx *f = *state;
	answer *a = &f->ans[0];
	/* What peer_infer_start sends, captured on c's port but sealed to b. */
	f->bad = BAD_CAPTURE;
	ask_key(f, &f->c, &f->b, SOVMESH_GEN_CHAT, chat_body, 0, a);
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->code, -EBUSY);
	assert_non_null(f->captured);

	raw r;
	raw_post(f, PEER_INFER_MEDIA_REQUEST, f->captured, f->captured_len, &r);
	assert_int_equal(r.status, 200);
	assert_true(r.body_len > sealed_response_nonce_len(HPKE_AEAD_CHACHA20POLY1305));
	assert_int_equal(f->fk.calls, 1);
	assert_null(strstr(r.body, "part0")); /* sealed */
	json_t *got = load(f->fk.body);
	json_t *want = load("{\"model\":\"llama3.2:1b\",\"messages\":[{\"role\":\"user\","
	                    "\"content\":\"why is the sky blue?\"}],\"stream\":true}");
	assert_true(json_equal(got, want));
	json_decref(got);
	json_decref(want);

	raw_post(f, PEER_INFER_MEDIA_REQUEST, f->captured, f->captured_len, &r);
	assert_int_equal(r.status, 409);
	assert_error_body(&r, "replayed");
	assert_int_equal(f->fk.calls, 1);
	peer_infer_server_stats s = stats(f);
	assert_int_equal(s.served, 1);
	assert_int_equal(s.refused_invalid, 1);
}

static void test_garbage_refused(void **state)
{
	fx *f = *state;
	raw r;
	raw_post(f, PEER_INFER_MEDIA_REQUEST, "garbage", 7, &r);
	assert_int_equal(r.status, 400);
	assert_error_body(&r, "not a sealed request");

	size_t len = 0;
	uint8_t *msg = seal_to_b(f, PEER_INFER_KEY_ID,
	                         "{\"v\":1,\"kind\":\"chat\",\"model\":\"m\",\"text\":\"hi\","
	                         "\"stream\":true}",
	                         &len);
	raw_post(f, "application/json", msg, len, &r);
	assert_int_equal(r.status, 400);
	assert_error_body(&r, "Content-Type");
	/* The same bytes with the right type are fine (not seen before). */
	raw_post(f, PEER_INFER_MEDIA_REQUEST, msg, len, &r);
	assert_int_equal(r.status, 200);
	free(msg);

	/* Well sealed, but a payload with more than the five fields. */
	msg = seal_to_b(f, PEER_INFER_KEY_ID,
	                "{\"v\":1,\"kind\":\"chat\",\"model\":\"m\",\"text\":\"hi\","
	                "\"stream\":true,\"system\":\"x\"}",
	                &len);
	raw_post(f, PEER_INFER_MEDIA_REQUEST, msg, len, &r);
	assert_int_equal(r.status, 400);
	assert_error_body(&r, "system");
	free(msg);

	/* Sealed under another key id. */
	msg = seal_to_b(f, 9, "{}", &len);
	raw_post(f, PEER_INFER_MEDIA_REQUEST, msg, len, &r);
	assert_int_equal(r.status, 421);
	free(msg);

	/* Too large to be a request. */
	size_t big = PEER_INFER_MAX_REQUEST + 1;
	char *junk = calloc(1, big);
	assert_non_null(junk);
	raw_post(f, PEER_INFER_MEDIA_REQUEST, junk, big, &r);
	assert_int_equal(r.status, 400);
	free(junk);

	assert_int_equal(f->fk.calls, 1);
	peer_infer_server_stats s = stats(f);
	assert_int_equal(s.refused_invalid, 5);
	assert_int_equal(s.served, 1);
}

static void test_tampered_streams(void **state)
{
	fx *f = *state;
	answer *a = &f->ans[0];
	/* The control: c's hand-made stream is read correctly. */
	f->bad = BAD_GOOD;
	ask(f, &f->c, SOVMESH_GEN_GENERATE, gen_body, a);
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->code, 0);
	assert_int_equal(a->n, 2);
	assert_int_equal(a->dones[1], 1);

	static const struct {
		enum bad_mode mode;
		int chunks; /* delivered before the failure */
		const char *needle;
	} cases[] = {
	    {BAD_CUT, 2, "cut short"},      {BAD_FLIP, 1, "not authentic"},
	    {BAD_SWAP, 0, "not authentic"}, {BAD_EXTRA, 2, "final"},
	    {BAD_DROP, 1, "cut short"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		f->bad = cases[i].mode;
		ask(f, &f->c, SOVMESH_GEN_GENERATE, gen_body, a);
		RUN_UNTIL(f, a->done);
		if (a->code != -EPROTO || a->n != cases[i].chunks ||
		    !strstr(a->msg, cases[i].needle))
			fail_msg("mode %d: code %d, %d chunks, '%s'", (int)cases[i].mode, a->code,
			         a->n, a->msg);
	}

	/* A plain refusal's status and message come through. */
	f->bad = BAD_STATUS;
	f->bad_status = 400;
	ask(f, &f->c, SOVMESH_GEN_GENERATE, gen_body, a);
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->code, -EIO);
	assert_non_null(strstr(a->msg, "no such thing here"));
	f->bad_status = 409;
	ask(f, &f->c, SOVMESH_GEN_GENERATE, gen_body, a);
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->code, -EALREADY);
}

static void test_cancel_reaches_backend(void **state)
{
	fx *f = *state;
	answer *a = &f->ans[0];
	/* Cancelled inside on_chunk after the first of three chunks. */
	f->fk.gated = true;
	f->fk.released = 1;
	a->cancel_at = 1;
	ask(f, &f->b, SOVMESH_GEN_CHAT, chat_body, a);
	RUN_UNTIL(f, f->fk.cancels == 1);
	assert_int_equal(a->n, 1);
	assert_null(a->call);
	RUN_UNTIL(f, stats(f).active == 0);
	f->fk.released = 3;
	settle(f, 300);
	assert_false(a->done);
	assert_int_equal(a->n, 1);

	/* Cancelled from outside before any chunk. */
	a->cancel_at = 0;
	f->fk.released = 0;
	ask(f, &f->b, SOVMESH_GEN_CHAT, chat_body, a);
	RUN_UNTIL(f, f->fk.calls == 2);
	peer_infer_cancel(a->call);
	a->call = NULL;
	RUN_UNTIL(f, f->fk.cancels == 2);
	RUN_UNTIL(f, stats(f).active == 0);
	assert_false(a->done);

	/* The asker's timeout closes the connection, which cancels too. */
	f->fk.hang = true;
	ask_key(f, &f->b, &f->b, SOVMESH_GEN_CHAT, chat_body, 500, a);
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->code, -ETIMEDOUT);
	RUN_UNTIL(f, f->fk.cancels == 3);
	peer_infer_server_stats s = stats(f);
	assert_int_equal(s.active, 0);
	assert_int_equal(s.served, 0);
	assert_int_equal(s.failed, 0);
}

static void test_transport_close_cancels_backend(void **state)
{
	fx *f = *state;
	answer *a = &f->ans[0];
	f->fk.hang = true;
	ask(f, &f->b, SOVMESH_GEN_CHAT, chat_body, a);
	RUN_UNTIL(f, f->fk.calls == 1);
	int before = f->closed;
	peer_transport_close(f->b.pt, on_closed, f);
	f->b.pt = NULL;
	RUN_UNTIL(f, f->closed == before + 1 && a->done);
	assert_int_equal(f->fk.cancels, 1);
	assert_int_equal(f->fk.open, 0);
	assert_int_not_equal(a->code, 0);
	peer_infer_server_free(f->srv);
	f->srv = NULL;
	f->closed = before; /* teardown counts its own closes */
}

static void test_start_refusals(void **state)
{
	fx *f = *state;
	answer *a = &f->ans[0];
	sovmesh_error err = {0};
	infer_request req;
	/* Nothing a peer could answer: no user text. */
	static const char only_system[] =
	    "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]}";
	assert_int_equal(
	    infer_request_parse(SOVMESH_GEN_CHAT, only_system, strlen(only_system), &req, &err), 0);
	peer_infer_target t = {
	    .fingerprint_hex = f->b.id->fingerprint_hex,
	    .host = "127.0.0.1",
	    .port = peer_transport_port(f->b.pt),
	    .x25519_public = f->b.id->x25519_public,
	};
	assert_null(peer_infer_start(f->a.pc, &t, &req, 0, &ans_cbs, a, &err));
	assert_int_equal(err.code, -ENOENT);
	infer_request_clear(&req);

	/* A peer that is not paired. */
	assert_int_equal(
	    infer_request_parse(SOVMESH_GEN_CHAT, chat_body, strlen(chat_body), &req, &err), 0);
	t.fingerprint_hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
	memset(&err, 0, sizeof(err));
	assert_null(peer_infer_start(f->a.pc, &t, &req, 0, &ans_cbs, a, &err));
	assert_int_equal(err.code, -EPERM);
	t.fingerprint_hex = NULL;
	assert_null(peer_infer_start(f->a.pc, &t, &req, 0, &ans_cbs, a, &err));
	assert_int_equal(err.code, -EINVAL);
	infer_request_clear(&req);
	settle(f, 100);
	assert_false(a->done);
	assert_int_equal(f->fk.calls, 0);

	/* Sealed to a key that is not b's: b cannot open it. */
	ask_key(f, &f->b, &f->c, SOVMESH_GEN_CHAT, chat_body, 0, a);
	RUN_UNTIL(f, a->done);
	assert_int_equal(a->code, -EIO);
	assert_non_null(strstr(a->msg, "400"));
	assert_int_equal(stats(f).refused_invalid, 1);
	assert_int_equal(f->fk.calls, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_streamed_answer_in_order, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_stream_false_generate, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_serve_off_is_eperm, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_burst_above_max_concurrent, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_local_backend_busy_and_hot, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_backend_errors_before_answer, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_mid_stream_failure, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_replayed_request_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_garbage_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_tampered_streams, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_cancel_reaches_backend, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_transport_close_cancels_backend, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_start_refusals, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

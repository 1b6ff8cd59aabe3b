/*
 * tls_stream.c: two sessions over a loopback TCP connection on one loop.
 * The client sends "ping" once established, the server answers "pong".
 * Each case checks who refused whom, and that a refused side never saw
 * an application byte.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "identity.h"
#include "tls_stream.h"

typedef struct end end;
typedef struct fx fx;

struct end {
	fx *f;
	bool is_server;
	uv_tcp_t tcp;
	bool tcp_open;
	tls_stream *ts;
	identity *id;
	gnutls_certificate_credentials_t creds; /* id->creds, or an empty one */
	const char *priority;
	const char *alpn;
	/* pinning */
	const uint8_t *accept_fp; /* NULL: refuse everything */
	int pin_calls;
	/* results */
	int established;
	int result; /* the first negative feed result, or 1 for close_notify */
	char error[320];
	char got[64];
	size_t got_len;
	size_t total;    /* every byte received */
	bool pattern_ok; /* bulk bytes were as sent */
	int write_cbs;
	int write_status;
	int data_calls;
};

struct fx {
	uv_loop_t loop;
	uv_tcp_t listener;
	uv_connect_t connect_req;
	uv_timer_t guard;
	char dir_a[64], dir_b[64];
	identity *a, *b;
	end srv, cli;
	size_t bulk; /* extra bytes the client sends after "ping" */
	char *bulk_data;
};

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void make_identity(char *dir, const char *name, identity **out)
{
	snprintf(dir, 64, "/tmp/sovmesh-tls-XXXXXX");
	assert_non_null(mkdtemp(dir));
	sovmesh_error err = {0};
	int r = identity_load_or_create(dir, name, out, &err);
	if (r < 0)
		fail_msg("identity: %s", err.message);
}

static int setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	assert_int_equal(uv_loop_init(&f->loop), 0);
	make_identity(f->dir_a, "alpha", &f->a);
	make_identity(f->dir_b, "beta", &f->b);
	f->srv = (end){.f = f, .is_server = true, .id = f->a, .creds = f->a->creds};
	f->cli = (end){.f = f, .is_server = false, .id = f->b, .creds = f->b->creds};
	/* By default each side pins the other. */
	f->srv.accept_fp = f->b->fingerprint;
	f->cli.accept_fp = f->a->fingerprint;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx *f = *state;
	/* The sessions outlive their (closed) handles so cases can inspect them. */
	tls_stream_free(f->srv.ts);
	tls_stream_free(f->cli.ts);
	identity_free(f->a);
	identity_free(f->b);
	nftw(f->dir_a, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	nftw(f->dir_b, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

/* --- the two ends --- */

static bool pin_ok(void *ud, const uint8_t fp[TLS_STREAM_FP_LEN])
{
	end *e = ud;
	e->pin_calls++;
	return e->accept_fp && memcmp(fp, e->accept_fp, TLS_STREAM_FP_LEN) == 0;
}

static void finish(fx *f);

static void on_end_closed(uv_handle_t *h)
{
	end *e = h->data;
	e->tcp_open = false;
	fx *f = e->f;
	/* Both ends gone (each may have refused the other): wrap up. */
	if (!f->srv.tcp_open && !f->cli.tcp_open)
		finish(f);
}

static void close_end(end *e)
{
	if (e->tcp_open && !uv_is_closing((uv_handle_t *)&e->tcp))
		uv_close((uv_handle_t *)&e->tcp, on_end_closed);
}

static void finish(fx *f)
{
	close_end(&f->srv);
	close_end(&f->cli);
	if (!uv_is_closing((uv_handle_t *)&f->listener))
		uv_close((uv_handle_t *)&f->listener, NULL);
	if (!uv_is_closing((uv_handle_t *)&f->guard))
		uv_close((uv_handle_t *)&f->guard, NULL);
}

static void on_write_done(void *ud, int status)
{
	end *e = ud;
	e->write_cbs++;
	e->write_status = status;
}

static void on_established(void *ud)
{
	end *e = ud;
	e->established++;
	if (e->is_server)
		return;
	assert_int_equal(tls_stream_write(e->ts, "ping", 4, NULL, NULL), 0);
	if (e->f->bulk)
		assert_int_equal(
		    tls_stream_write(e->ts, e->f->bulk_data, e->f->bulk, on_write_done, e), 0);
}

static bool on_data(void *ud, const char *data, size_t len)
{
	end *e = ud;
	fx *f = e->f;
	e->data_calls++;
	for (size_t i = 0; i < len; i++, e->total++) {
		if (e->total < 4) {
			e->got[e->got_len++] = data[i];
		} else if (e->total - 4 >= f->bulk || data[i] != f->bulk_data[e->total - 4]) {
			e->pattern_ok = false;
		}
	}
	if (e->is_server && e->total == 4 + f->bulk)
		assert_int_equal(tls_stream_write(e->ts, "pong", 4, NULL, NULL), 0);
	if (!e->is_server && e->got_len == 4)
		finish(e->f);
	return true;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)h;
	buf->base = malloc(suggested);
	buf->len = buf->base ? suggested : 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	end *e = s->data;
	if (nread < 0) {
		/* The other end went away: we are done too. */
		finish(e->f);
	} else if (nread > 0) {
		int r = tls_stream_feed(e->ts, buf->base, (size_t)nread);
		if (r != 0) {
			if (!e->result)
				e->result = r;
			snprintf(e->error, sizeof(e->error), "%s", tls_stream_error(e->ts));
			close_end(e);
		}
	}
	free(buf->base);
}

static void start_end(end *e)
{
	tls_stream_config cfg = {
	    .is_server = e->is_server,
	    .creds = e->creds,
	    .pin_ok = pin_ok,
	    .pin_ud = e,
	    .priority = e->priority,
	    .alpn = e->alpn,
	};
	static const tls_stream_callbacks cbs = {.on_established = on_established,
	                                         .on_data = on_data};
	e->tcp.data = e;
	assert_int_equal(tls_stream_new((uv_stream_t *)&e->tcp, &cfg, &cbs, e, &e->ts), 0);
	int r = tls_stream_start(e->ts);
	if (r < 0) {
		e->result = r;
		snprintf(e->error, sizeof(e->error), "%s", tls_stream_error(e->ts));
		close_end(e);
		return;
	}
	assert_int_equal(uv_read_start((uv_stream_t *)&e->tcp, on_alloc, on_read), 0);
}

static void on_connection(uv_stream_t *l, int status)
{
	fx *f = l->data;
	assert_int_equal(status, 0);
	uv_tcp_init(&f->loop, &f->srv.tcp);
	f->srv.tcp.data = &f->srv;
	f->srv.tcp_open = true;
	assert_int_equal(uv_accept(l, (uv_stream_t *)&f->srv.tcp), 0);
	start_end(&f->srv);
}

static void on_connect(uv_connect_t *req, int status)
{
	fx *f = req->data;
	assert_int_equal(status, 0);
	start_end(&f->cli);
}

static void on_guard(uv_timer_t *t)
{
	fx *f = t->data;
	finish(f);
	fail_msg("the exchange did not finish within 20 s");
}

/* Run one connection to the end; every handle is closed afterwards. */
static void run_exchange(fx *f)
{
	struct sockaddr_in sa;
	uv_ip4_addr("127.0.0.1", 0, &sa);
	uv_tcp_init(&f->loop, &f->listener);
	f->listener.data = f;
	assert_int_equal(uv_tcp_bind(&f->listener, (struct sockaddr *)&sa, 0), 0);
	assert_int_equal(uv_listen((uv_stream_t *)&f->listener, 4, on_connection), 0);
	int len = sizeof(sa);
	uv_tcp_getsockname(&f->listener, (struct sockaddr *)&sa, &len);

	uv_timer_init(&f->loop, &f->guard);
	f->guard.data = f;
	uv_timer_start(&f->guard, on_guard, 20000, 0);

	uv_tcp_init(&f->loop, &f->cli.tcp);
	f->cli.tcp.data = &f->cli;
	f->cli.tcp_open = true;
	f->connect_req.data = f;
	assert_int_equal(
	    uv_tcp_connect(&f->connect_req, &f->cli.tcp, (struct sockaddr *)&sa, on_connect), 0);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&f->loop), 0);
}

/* --- cases --- */

static void test_mutual_handshake(void **state)
{
	fx *f = *state;
	run_exchange(f);
	assert_int_equal(f->srv.established, 1);
	assert_int_equal(f->cli.established, 1);
	assert_int_equal(f->srv.got_len, 4);
	assert_memory_equal(f->srv.got, "ping", 4);
	assert_int_equal(f->cli.got_len, 4);
	assert_memory_equal(f->cli.got, "pong", 4);
	assert_int_equal(f->srv.pin_calls, 1);
	assert_int_equal(f->cli.pin_calls, 1);
	assert_true(tls_stream_established(f->srv.ts));
	assert_non_null(tls_stream_peer_fingerprint(f->srv.ts));
	assert_memory_equal(tls_stream_peer_fingerprint(f->srv.ts), f->b->fingerprint,
	                    TLS_STREAM_FP_LEN);
	assert_memory_equal(tls_stream_peer_fingerprint(f->cli.ts), f->a->fingerprint,
	                    TLS_STREAM_FP_LEN);
	assert_string_equal(tls_stream_error(f->srv.ts), "");
}

/* More than the socket buffer takes at once: GnuTLS splits it into
 * records, push() queues what uv_try_write() could not send, and the
 * completion callback runs once, after the last byte. */
static void test_bulk_transfer(void **state)
{
	fx *f = *state;
	f->bulk = 4u << 20;
	f->bulk_data = malloc(f->bulk);
	assert_non_null(f->bulk_data);
	for (size_t i = 0; i < f->bulk; i++)
		f->bulk_data[i] = (char)(i * 7 + (i >> 13));
	f->srv.pattern_ok = true;
	run_exchange(f);
	free(f->bulk_data);
	assert_int_equal(f->srv.total, 4 + f->bulk);
	assert_true(f->srv.pattern_ok);
	assert_int_equal(f->cli.got_len, 4);
	assert_memory_equal(f->cli.got, "pong", 4);
	assert_int_equal(f->cli.write_cbs, 1);
	assert_int_equal(f->cli.write_status, 0);
}

static void test_server_refuses_unknown_client(void **state)
{
	fx *f = *state;
	uint8_t other[TLS_STREAM_FP_LEN];
	memset(other, 0x42, sizeof(other));
	f->srv.accept_fp = other;
	run_exchange(f);
	assert_int_equal(f->srv.pin_calls, 1);
	assert_int_equal(f->srv.result, -EPERM);
	assert_non_null(strstr(f->srv.error, f->b->fingerprint_hex));
	assert_int_equal(f->srv.established, 0);
	/* Not one application byte was read from the refused client. */
	assert_int_equal(f->srv.data_calls, 0);
	assert_int_equal(f->cli.got_len, 0);
	/* TLS 1.3: the client finished its half and learns from the alert. */
	assert_int_equal(f->cli.result, -EPERM);
	assert_non_null(strstr(f->cli.error, "refused our certificate"));
}

static void test_client_refuses_unexpected_server(void **state)
{
	fx *f = *state;
	f->cli.accept_fp = f->b->fingerprint; /* expects itself, not a */
	run_exchange(f);
	assert_int_equal(f->cli.pin_calls, 1);
	assert_int_equal(f->cli.result, -EPERM);
	assert_non_null(strstr(f->cli.error, f->a->fingerprint_hex));
	assert_int_equal(f->cli.established, 0);
	/* The server never finished the handshake, never got data, and never
	 * had to look at the client's certificate. */
	assert_int_equal(f->srv.established, 0);
	assert_int_equal(f->srv.data_calls, 0);
	assert_int_equal(f->srv.pin_calls, 0);
	assert_true(f->srv.result < 0);
}

static void test_tls12_client_refused(void **state)
{
	fx *f = *state;
	f->cli.priority = "NORMAL:-VERS-ALL:+VERS-TLS1.2";
	run_exchange(f);
	assert_int_equal(f->srv.established, 0);
	assert_int_equal(f->cli.established, 0);
	assert_int_equal(f->srv.pin_calls, 0);
	assert_int_equal(f->cli.pin_calls, 0);
	assert_int_equal(f->srv.result, -EPROTO);
	assert_int_equal(f->srv.data_calls, 0);
}

static void test_client_without_certificate_refused(void **state)
{
	fx *f = *state;
	gnutls_certificate_credentials_t empty;
	assert_int_equal(gnutls_certificate_allocate_credentials(&empty), 0);
	f->cli.creds = empty;
	run_exchange(f);
	gnutls_certificate_free_credentials(empty);
	assert_int_equal(f->srv.established, 0);
	assert_int_equal(f->srv.pin_calls, 0);
	assert_int_equal(f->srv.data_calls, 0);
	assert_int_equal(f->srv.result, -EPROTO);
	assert_non_null(strstr(f->srv.error, "no certificate"));
	assert_int_equal(f->cli.got_len, 0);
	assert_true(f->cli.result < 0);
}

static void test_wrong_alpn_refused(void **state)
{
	fx *f = *state;
	f->cli.alpn = "http/1.1";
	run_exchange(f);
	assert_int_equal(f->srv.established, 0);
	assert_int_equal(f->srv.pin_calls, 0);
	assert_int_equal(f->srv.data_calls, 0);
	assert_int_equal(f->srv.result, -EPROTO);
	assert_int_equal(f->cli.got_len, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_mutual_handshake, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bulk_transfer, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_server_refuses_unknown_client, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_client_refuses_unexpected_server, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_tls12_client_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_client_without_certificate_refused, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_wrong_alpn_refused, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

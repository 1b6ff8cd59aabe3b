/*
 * http_client.c against a canned loopback server.  The server is a test
 * fixture, not an HTTP implementation: a thread that accepts one
 * connection, reads up to the blank line (plus a known body length), and
 * writes prepared bytes with pauses.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "http_client.h"

/* ---- the fixture server ------------------------------------------------ */

typedef struct server {
	int listen_fd;
	int port;
	char unix_path[108];
	const char *const *parts; /* written one by one, NULL-ended */
	int pause_ms;             /* between parts */
	int never_answer;         /* hold the connection until the client closes */
	size_t expect_body;       /* bytes to read after the blank line */
	char received[4096];
	size_t received_len;
	pthread_t thread;
} server;

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static void *server_main(void *arg)
{
	server *s = arg;
	int fd = accept(s->listen_fd, NULL, NULL);
	if (fd < 0)
		return NULL;
	char *end = NULL;
	while (s->received_len < sizeof(s->received) - 1) {
		struct pollfd p = {fd, POLLIN, 0};
		if (poll(&p, 1, 10000) <= 0)
			break;
		ssize_t n = read(fd, s->received + s->received_len,
		                 sizeof(s->received) - 1 - s->received_len);
		if (n <= 0)
			break;
		s->received_len += (size_t)n;
		s->received[s->received_len] = '\0';
		end = strstr(s->received, "\r\n\r\n");
		if (end && s->received_len >= (size_t)(end + 4 - s->received) + s->expect_body)
			break;
	}
	if (s->never_answer) {
		/* Wait (bounded) for the client to give up and close. */
		char buf[256];
		struct pollfd p = {fd, POLLIN, 0};
		while (poll(&p, 1, 10000) > 0 && read(fd, buf, sizeof(buf)) > 0)
			;
	} else {
		for (size_t i = 0; s->parts && s->parts[i]; i++) {
			if (i > 0 && s->pause_ms)
				sleep_ms(s->pause_ms);
			if (send(fd, s->parts[i], strlen(s->parts[i]), MSG_NOSIGNAL) < 0)
				break;
		}
	}
	close(fd);
	return NULL;
}

static void server_start(server *s)
{
	s->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(s->listen_fd >= 0);
	struct sockaddr_in a = {0};
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(s->listen_fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(s->listen_fd, 4), 0);
	socklen_t len = sizeof(a);
	assert_int_equal(getsockname(s->listen_fd, (struct sockaddr *)&a, &len), 0);
	s->port = ntohs(a.sin_port);
	assert_int_equal(pthread_create(&s->thread, NULL, server_main, s), 0);
}

static void server_start_unix(server *s, const char *dir)
{
	s->listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_true(s->listen_fd >= 0);
	struct sockaddr_un a = {0};
	a.sun_family = AF_UNIX;
	snprintf(s->unix_path, sizeof(s->unix_path), "%s/http.sock", dir);
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", s->unix_path);
	assert_int_equal(bind(s->listen_fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(s->listen_fd, 4), 0);
	assert_int_equal(pthread_create(&s->thread, NULL, server_main, s), 0);
}

static void server_stop(server *s)
{
	pthread_join(s->thread, NULL);
	close(s->listen_fd);
	if (s->unix_path[0])
		unlink(s->unix_path);
}

/* A loopback port nobody listens on: bound, then closed. */
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

/* ---- a recording client ------------------------------------------------ */

typedef struct result {
	int n_status, n_body, n_done;
	long status;
	long done_status;
	int code;
	char message[1024];
	char body[4096];
	size_t body_len;
	int order_ok; /* on_status came before the first body piece */
	int abort_on_body;
	int cancel_on_body;
	http_call *call;
} result;

static void on_status(void *ud, long status)
{
	result *r = ud;
	r->n_status++;
	r->status = status;
}

static int on_body(void *ud, const char *data, size_t len)
{
	result *r = ud;
	if (r->n_body == 0)
		r->order_ok = r->n_status == 1;
	r->n_body++;
	if (r->body_len + len < sizeof(r->body)) {
		memcpy(r->body + r->body_len, data, len);
		r->body_len += len;
	}
	if (r->cancel_on_body) {
		http_client_cancel(r->call);
		return 0;
	}
	return r->abort_on_body;
}

static void on_done(void *ud, int code, long status, const char *message)
{
	result *r = ud;
	r->n_done++;
	r->code = code;
	r->done_status = status;
	snprintf(r->message, sizeof(r->message), "%s", message ? message : "");
}

static const sovmesh_http_callbacks cbs = {
    .size = sizeof(sovmesh_http_callbacks),
    .on_status = on_status,
    .on_body = on_body,
    .on_done = on_done,
};

static void closed_cb(void *ud)
{
	*(int *)ud = 1;
}

static void client_close(uv_loop_t *loop, http_client *c)
{
	int closed = 0;
	http_client_free(c, closed_cb, &closed);
	uv_run(loop, UV_RUN_DEFAULT);
	assert_true(closed);
	assert_int_equal(uv_loop_close(loop), 0);
}

static void get(http_client *c, const char *url, uint32_t timeout_ms, result *r)
{
	sovmesh_http_request req = {
	    .size = sizeof(req), .method = "GET", .url = url, .timeout_ms = timeout_ms};
	sovmesh_error err = {0};
	r->call = http_client_start(c, &req, &cbs, r, &err);
	assert_non_null(r->call);
}

/* ---- tests ------------------------------------------------------------- */

static void test_streamed_200(void **state)
{
	(void)state;
	static const char *const parts[] = {
	    "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
	    "Content-Length: 24\r\nConnection: close\r\n\r\n",
	    "{\"a\":1}\n", "{\"b\":2}\n", "{\"c\":3}\n", NULL};
	server s = {.parts = parts, .pause_ms = 150};
	server_start(&s);
	uv_loop_t loop;
	uv_loop_init(&loop);
	http_client *c = http_client_new(&loop);
	assert_non_null(c);
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/api/chat", s.port);
	result r = {0};
	get(c, url, 10000, &r);
	/* Nothing runs inside http_client_start. */
	assert_int_equal(r.n_status + r.n_body + r.n_done, 0);
	uv_run(&loop, UV_RUN_DEFAULT);
	server_stop(&s);
	assert_int_equal(r.n_status, 1);
	assert_int_equal(r.status, 200);
	assert_true(r.order_ok);
	assert_true(r.n_body >= 2);
	assert_int_equal(r.body_len, 24);
	assert_memory_equal(r.body, "{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n", 24);
	assert_int_equal(r.n_done, 1);
	assert_int_equal(r.code, 0);
	assert_int_equal(r.done_status, 200);
	assert_non_null(strstr(s.received, "GET /api/chat HTTP/1.1\r\n"));
	client_close(&loop, c);
}

static void test_status_503(void **state)
{
	(void)state;
	static const char *const parts[] = {
	    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy", NULL};
	server s = {.parts = parts};
	server_start(&s);
	uv_loop_t loop;
	uv_loop_init(&loop);
	http_client *c = http_client_new(&loop);
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/", s.port);
	result r = {0};
	get(c, url, 10000, &r);
	uv_run(&loop, UV_RUN_DEFAULT);
	server_stop(&s);
	assert_int_equal(r.n_status, 1);
	assert_int_equal(r.status, 503);
	assert_int_equal(r.n_done, 1);
	assert_int_equal(r.code, 0);
	assert_int_equal(r.done_status, 503);
	assert_memory_equal(r.body, "busy", 4);
	client_close(&loop, c);
}

static void test_post_body_and_headers(void **state)
{
	(void)state;
	static const char *const parts[] = {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", NULL};
	static const char body[] = "{\"model\":\"m\",\"x\":\"\\u0000\"}";
	server s = {.parts = parts, .expect_body = sizeof(body) - 1};
	server_start(&s);
	uv_loop_t loop;
	uv_loop_init(&loop);
	http_client *c = http_client_new(&loop);
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/api/generate", s.port);
	const char *headers[] = {"Content-Type: application/json", "X-Test: 1", NULL};
	sovmesh_http_request req = {.size = sizeof(req),
	                            .method = "POST",
	                            .url = url,
	                            .headers = headers,
	                            .body = body,
	                            .body_len = sizeof(body) - 1,
	                            .timeout_ms = 10000};
	result r = {0};
	sovmesh_error err = {0};
	assert_non_null(http_client_start(c, &req, &cbs, &r, &err));
	uv_run(&loop, UV_RUN_DEFAULT);
	server_stop(&s);
	assert_int_equal(r.n_done, 1);
	assert_int_equal(r.code, 0);
	assert_non_null(strstr(s.received, "POST /api/generate HTTP/1.1\r\n"));
	assert_non_null(strstr(s.received, "\r\nX-Test: 1\r\n"));
	assert_null(strstr(s.received, "Expect:"));
	const char *sent = strstr(s.received, "\r\n\r\n");
	assert_non_null(sent);
	assert_string_equal(sent + 4, body);
	client_close(&loop, c);
}

static void test_bad_requests_refused(void **state)
{
	(void)state;
	uv_loop_t loop;
	uv_loop_init(&loop);
	http_client *c = http_client_new(&loop);
	result r = {0};
	sovmesh_error err = {0};
	sovmesh_http_request req = {.size = sizeof(req), .url = "ftp://127.0.0.1/x"};
	assert_null(http_client_start(c, &req, &cbs, &r, &err));
	assert_int_equal(err.code, -EINVAL);
	assert_non_null(strstr(err.message, "ftp://127.0.0.1/x"));
	const char *bad[] = {"X-Evil: a\r\nHost: b", NULL};
	sovmesh_http_request req2 = {
	    .size = sizeof(req2), .url = "http://127.0.0.1/", .headers = bad};
	assert_null(http_client_start(c, &req2, &cbs, &r, &err));
	assert_int_equal(err.code, -EINVAL);
	sovmesh_http_request req3 = {
	    .size = sizeof(req3), .url = "http://127.0.0.1/", .method = "G T"};
	assert_null(http_client_start(c, &req3, &cbs, &r, &err));
	assert_int_equal(err.code, -EINVAL);
	assert_int_equal(r.n_done, 0);
	client_close(&loop, c);
}

static void test_connection_refused(void **state)
{
	(void)state;
	uv_loop_t loop;
	uv_loop_init(&loop);
	http_client *c = http_client_new(&loop);
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/", closed_port());
	result r = {0};
	get(c, url, 10000, &r);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(r.n_done, 1);
	assert_int_equal(r.code, -ECONNREFUSED);
	assert_int_equal(r.n_status, 0);
	assert_int_equal(r.n_body, 0);
	/* The message names the request. */
	assert_non_null(strstr(r.message, url));
	client_close(&loop, c);
}

static void test_timeout(void **state)
{
	(void)state;
	server s = {.never_answer = 1};
	server_start(&s);
	uv_loop_t loop;
	uv_loop_init(&loop);
	http_client *c = http_client_new(&loop);
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/slow", s.port);
	result r = {0};
	uint64_t t0 = uv_hrtime();
	get(c, url, 300, &r);
	uv_run(&loop, UV_RUN_DEFAULT);
	uint64_t elapsed_ms = (uv_hrtime() - t0) / 1000000u;
	assert_int_equal(r.n_done, 1);
	assert_int_equal(r.code, -ETIMEDOUT);
	assert_true(elapsed_ms >= 250);
	assert_true(elapsed_ms < 8000);
	client_close(&loop, c);
	server_stop(&s);
}

/* Stop waiting: run the loop this long, then return from uv_run. */
static void on_quiet_timer(uv_timer_t *t)
{
	uv_close((uv_handle_t *)t, NULL);
	uv_stop(t->loop);
}

static void test_cancel_mid_stream(void **state)
{
	(void)state;
	static const char *const parts[] = {"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n",
	                                    "part1\n", "part2\n", NULL};
	server s = {.parts = parts, .pause_ms = 300};
	server_start(&s);
	uv_loop_t loop;
	uv_loop_init(&loop);
	http_client *c = http_client_new(&loop);
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/", s.port);
	result r = {.cancel_on_body = 1};
	get(c, url, 10000, &r);
	/* Keep the loop alive past the server's second part. */
	uv_timer_t quiet;
	uv_timer_init(&loop, &quiet);
	uv_timer_start(&quiet, on_quiet_timer, 1000, 0);
	uv_run(&loop, UV_RUN_DEFAULT);
	server_stop(&s);
	assert_int_equal(r.n_status, 1);
	assert_int_equal(r.n_body, 1);
	assert_memory_equal(r.body, "part1\n", 6);
	assert_int_equal(r.n_done, 0);
	client_close(&loop, c);
}

static void test_abort_from_on_body(void **state)
{
	(void)state;
	static const char *const parts[] = {"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n",
	                                    "part1\n", "part2\n", NULL};
	server s = {.parts = parts, .pause_ms = 100};
	server_start(&s);
	uv_loop_t loop;
	uv_loop_init(&loop);
	http_client *c = http_client_new(&loop);
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/", s.port);
	result r = {.abort_on_body = 1};
	get(c, url, 10000, &r);
	uv_run(&loop, UV_RUN_DEFAULT);
	server_stop(&s);
	assert_int_equal(r.n_body, 1);
	assert_int_equal(r.n_done, 1);
	assert_int_equal(r.code, -ECANCELED);
	client_close(&loop, c);
}

static void test_cancel_before_run_and_free_with_pending(void **state)
{
	(void)state;
	server s = {.never_answer = 1};
	server_start(&s);
	uv_loop_t loop;
	uv_loop_init(&loop);
	http_client *c = http_client_new(&loop);
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/", s.port);
	result r1 = {0}, r2 = {0};
	get(c, url, 0, &r1);
	http_client_cancel(r1.call);
	/* r2 connects (the server holds it) and is then dropped by free. */
	get(c, url, 0, &r2);
	uv_timer_t quiet;
	uv_timer_init(&loop, &quiet);
	uv_timer_start(&quiet, on_quiet_timer, 200, 0);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(r1.n_done + r1.n_status + r1.n_body, 0);
	assert_int_equal(r2.n_done, 0);
	client_close(&loop, c);
	server_stop(&s);
	assert_int_equal(r2.n_done, 0);
}

static void test_unix_socket(void **state)
{
	(void)state;
	char dir[] = "/tmp/sovmesh-http-XXXXXX";
	assert_non_null(mkdtemp(dir));
	static const char *const parts[] = {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhi\n",
	                                    NULL};
	server s = {.parts = parts};
	server_start_unix(&s, dir);
	uv_loop_t loop;
	uv_loop_init(&loop);
	http_client *c = http_client_new(&loop);
	sovmesh_http_request req = {.size = sizeof(req), .url = "http://localhost/v1/status"};
	result r = {0};
	sovmesh_error err = {0};
	assert_non_null(http_client_start_unix(c, s.unix_path, &req, &cbs, &r, &err));
	uv_run(&loop, UV_RUN_DEFAULT);
	server_stop(&s);
	rmdir(dir);
	assert_int_equal(r.n_done, 1);
	assert_int_equal(r.code, 0);
	assert_int_equal(r.status, 200);
	assert_memory_equal(r.body, "hi\n", 3);
	assert_non_null(strstr(s.received, "GET /v1/status HTTP/1.1\r\n"));
	client_close(&loop, c);
}

int main(void)
{
	/* Loopback tests must not be sent to a proxy from the environment. */
	unsetenv("http_proxy");
	unsetenv("HTTP_PROXY");
	unsetenv("https_proxy");
	unsetenv("HTTPS_PROXY");
	unsetenv("all_proxy");
	unsetenv("ALL_PROXY");
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_streamed_200),
	    cmocka_unit_test(test_status_503),
	    cmocka_unit_test(test_post_body_and_headers),
	    cmocka_unit_test(test_bad_requests_refused),
	    cmocka_unit_test(test_connection_refused),
	    cmocka_unit_test(test_timeout),
	    cmocka_unit_test(test_cancel_mid_stream),
	    cmocka_unit_test(test_abort_from_on_body),
	    cmocka_unit_test(test_cancel_before_run_and_free_with_pending),
	    cmocka_unit_test(test_unix_socket),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * http_server.c: the server runs on the test's loop in the main thread;
 * clients (libcurl or raw sockets) run in a thread and report back with
 * uv_async_send.  Raw responses are read with llhttp in response mode.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <llhttp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "http_server.h"

#define BODY_MAX 8192

typedef struct fx fx;
typedef void (*client_fn)(fx *f);

struct fx {
	uv_loop_t loop;
	char dir[64];
	char sock[100];
	http_server *srv;
	int server_closed;
	bool closing;

	/* client thread */
	pthread_t thread;
	client_fn client;
	uv_async_t done_async;
	int client_done;
	bool wait_cancel;   /* finish only after a cancel callback */
	bool close_on_next; /* next_async closes the server */

	/* test handles, closed at the end */
	uv_timer_t timer;
	uv_async_t next_async;

	/* what the handler saw */
	int requests;
	uint64_t conn_ids[8];
	bool had_cred;
	uid_t uid;
	char peer_addr[64];
	char last_body[64];
	http_response *held;
	atomic_int got_request;
	int cancels;
	int write_after_cancel_rc;
	int end_after_cancel_rc;
	bool handler_returned_before_reply;

	/* what the client saw */
	long status[4];
	char body[4][BODY_MAX];
	size_t body_len[4];
	int pieces;
	char first_piece[64];
	bool saw_chunked;
	long connects[4];
	int raw_responses;
	int raw_status[4];
	char raw_body[4][BODY_MAX];
	char raw_headers[4][2048];
	bool raw_eof;
	int client_rc;
};

/* --- raw responses via llhttp --- */

static bool split_sends;   /* raw_exchange sends byte by byte */
static bool head_response; /* the raw responses answer HEAD: no bodies */

typedef struct raw_parse {
	fx *f;
	int n;
} raw_parse;

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
	raw_parse *rp = p->data;
	if (rp->n < 4)
		append(rp->f->raw_headers[rp->n], sizeof(rp->f->raw_headers[0]), at, len);
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
	raw_parse *rp = p->data;
	if (rp->n < 4)
		rp->f->raw_status[rp->n] = llhttp_get_status_code(p);
	return head_response ? 1 : 0;
}

static int rp_body(llhttp_t *p, const char *at, size_t len)
{
	raw_parse *rp = p->data;
	if (rp->n < 4)
		append(rp->f->raw_body[rp->n], BODY_MAX, at, len);
	return 0;
}

static int rp_done(llhttp_t *p)
{
	raw_parse *rp = p->data;
	rp->n++;
	return 0;
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

static int connect_unix(const char *path)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	/* A hung server fails the test instead of hanging it. */
	struct timeval tv = {.tv_sec = 20};
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

/* Send `req` on a new connection, read until the server closes, and
 * parse the responses into f->raw_*. */
static void raw_exchange(fx *f, const char *req, size_t len)
{
	int fd = connect_unix(f->sock);
	if (fd < 0) {
		f->client_rc = -errno;
		return;
	}
	/* The server may answer and close before all of a too-large request
	 * is sent; that is fine. */
	if (split_sends) {
		/* One byte at a time: every llhttp span callback gets split. */
		for (size_t i = 0; i < len; i++) {
			send_all(fd, req + i, 1);
			if (i % 7 == 0)
				usleep(200);
		}
	} else {
		send_all(fd, req, len);
	}
	static char in[256 * 1024];
	size_t got = 0;
	for (;;) {
		ssize_t n = recv(fd, in + got, sizeof(in) - got, 0);
		if (n == 0) {
			f->raw_eof = true;
			break;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		got += (size_t)n;
	}
	close(fd);
	llhttp_t p;
	raw_parse rp = {.f = f};
	llhttp_init(&p, HTTP_RESPONSE, &rp_settings);
	p.data = &rp;
	llhttp_execute(&p, in, got);
	llhttp_finish(&p);
	f->raw_responses = rp.n;
}

static void raw_exchange_str(fx *f, const char *req)
{
	raw_exchange(f, req, strlen(req));
}

/* --- the handler --- */

static void on_timer_send(uv_timer_t *t)
{
	fx *f = t->data;
	http_response *resp = f->held;
	f->held = NULL;
	const http_request *req = http_response_request(resp);
	http_response_send(resp, 200, "text/plain", req->path, strlen(req->path));
}

static void on_server_closed(void *ud);

static void on_next_async(uv_async_t *a)
{
	fx *f = a->data;
	if (f->close_on_next && f->srv) {
		http_server_close(f->srv, on_server_closed, f);
		f->srv = NULL;
		return;
	}
	if (!f->held)
		return;
	http_response_write(f->held, "part2\n", 6);
	http_response_end(f->held);
	f->held = NULL;
}

static void maybe_finish(fx *f);

static void on_cancel(void *ud, http_response *resp)
{
	fx *f = ud;
	f->cancels++;
	assert_true(http_response_cancelled(resp));
	assert_ptr_equal(resp, f->held);
	f->held = NULL;
	uv_timer_stop(&f->timer);
	if (strcmp(http_response_request(resp)->path, "/hold") == 0) {
		/* Completing a cancelled response is harmless and releases it. */
		f->write_after_cancel_rc = 0;
		f->end_after_cancel_rc = http_response_send(resp, 200, "text/plain", "late", 4);
	} else {
		f->write_after_cancel_rc = http_response_write(resp, "x", 1);
		f->end_after_cancel_rc = http_response_end(resp);
	}
	maybe_finish(f);
}

static void on_stream_tick(uv_timer_t *t)
{
	fx *f = t->data;
	if (f->held)
		http_response_write(f->held, "tick\n", 5);
}

static void handler(void *ud, const http_request *req, http_response *resp)
{
	fx *f = ud;
	if (f->requests < 8)
		f->conn_ids[f->requests] = req->conn_id;
	f->requests++;
	f->had_cred = req->has_cred;
	f->uid = req->uid;
	snprintf(f->peer_addr, sizeof(f->peer_addr), "%s", req->peer_addr);
	snprintf(f->last_body, sizeof(f->last_body), "%.*s", (int)req->body_len, req->body);

	if (strncmp(req->path, "/delay/", 7) == 0 || strcmp(req->path, "/late") == 0) {
		f->held = resp;
		uv_timer_start(&f->timer, on_timer_send, 30, 0);
		f->handler_returned_before_reply = true;
		return;
	}
	if (strcmp(req->path, "/hold") == 0) {
		f->held = resp;
		http_response_on_cancel(resp, on_cancel, f);
		atomic_store(&f->got_request, 1);
		return;
	}
	if (strcmp(req->path, "/stream") == 0) {
		assert_int_equal(http_response_start(resp, 200, "application/x-ndjson"), 0);
		assert_int_equal(http_response_start(resp, 200, NULL), -EALREADY);
		assert_int_equal(http_response_write(resp, "part1\n", 6), 0);
		f->held = resp;
		return;
	}
	if (strcmp(req->path, "/stream-forever") == 0) {
		assert_int_equal(http_response_start(resp, 200, "application/x-ndjson"), 0);
		http_response_on_cancel(resp, on_cancel, f);
		f->held = resp;
		uv_timer_start(&f->timer, on_stream_tick, 5, 5);
		return;
	}
	char out[512];
	const char *x = http_request_header(req, "x-test");
	snprintf(out, sizeof(out), "%s %s %s %s", req->method, req->path,
	         *req->query ? req->query : "-", x ? x : "-");
	assert_int_equal(http_response_add_header(resp, "X-Reply", "yes"), 0);
	assert_int_equal(http_response_add_header(resp, "Bad", "a\r\nInjected: 1"), -EINVAL);
	http_response_send(resp, 200, "text/plain", out, strlen(out));
}

/* --- fixture --- */

static void on_server_closed(void *ud)
{
	fx *f = ud;
	f->server_closed++;
}

static void maybe_finish(fx *f)
{
	if (f->closing || !f->client_done || (f->wait_cancel && !f->cancels))
		return;
	f->closing = true;
	if (f->held) {
		http_response_unref(f->held);
		f->held = NULL;
	}
	uv_close((uv_handle_t *)&f->done_async, NULL);
	uv_close((uv_handle_t *)&f->next_async, NULL);
	uv_close((uv_handle_t *)&f->timer, NULL);
	if (f->srv)
		http_server_close(f->srv, on_server_closed, f);
	f->srv = NULL;
}

static void on_done_async(uv_async_t *a)
{
	fx *f = a->data;
	f->client_done = 1;
	maybe_finish(f);
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
	uv_async_init(&f->loop, &f->next_async, on_next_async);
	f->next_async.data = f;
	uv_timer_init(&f->loop, &f->timer);
	f->timer.data = f;
	assert_int_equal(pthread_create(&f->thread, NULL, client_main, f), 0);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	pthread_join(f->thread, NULL);
	assert_int_equal(f->server_closed, 1);
}

static void listen_unix(fx *f, const http_server_options *opts_in)
{
	http_server_options opts = {0};
	if (opts_in)
		opts = *opts_in;
	opts.handler = handler;
	opts.handler_ud = f;
	opts.name = "test";
	assert_int_equal(http_server_new(&f->loop, &opts, &f->srv), 0);
	sovmesh_error err = {0};
	int r = http_server_listen_unix(f->srv, f->sock, &err);
	if (r < 0)
		fail_msg("listen failed: %s", err.message);
}

static int setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	assert_int_equal(uv_loop_init(&f->loop), 0);
	snprintf(f->dir, sizeof(f->dir), "/tmp/sovmesh-http-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->sock, sizeof(f->sock), "%s/ctl.sock", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx *f = *state;
	/* Handles left from a failed listen are closed by one more turn. */
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	unlink(f->sock);
	char other[160];
	snprintf(other, sizeof(other), "%s/file", f->dir);
	unlink(other);
	assert_int_equal(rmdir(f->dir), 0);
	free(f);
	return 0;
}

/* --- curl helpers (client thread) --- */

typedef struct sink {
	fx *f;
	int idx;
} sink;

static size_t curl_sink(char *ptr, size_t size, size_t nmemb, void *ud)
{
	sink *s = ud;
	size_t n = size * nmemb;
	fx *f = s->f;
	if (f->pieces == 0)
		snprintf(f->first_piece, sizeof(f->first_piece), "%.*s", (int)n, ptr);
	f->pieces++;
	if (f->body_len[s->idx] + n < BODY_MAX) {
		memcpy(f->body[s->idx] + f->body_len[s->idx], ptr, n);
		f->body_len[s->idx] += n;
	}
	return n;
}

static size_t curl_header(char *ptr, size_t size, size_t nmemb, void *ud)
{
	fx *f = ud;
	size_t n = size * nmemb;
	if (n >= 26 && strncasecmp(ptr, "Transfer-Encoding: chunked", 26) == 0)
		f->saw_chunked = true;
	return n;
}

static CURL *curl_for(fx *f, sink *s)
{
	CURL *c = curl_easy_init();
	curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, f->sock);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, curl_sink);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, curl_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, f);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	return c;
}

static void curl_get(fx *f, int idx, const char *url)
{
	sink s = {f, idx};
	CURL *c = curl_for(f, &s);
	curl_easy_setopt(c, CURLOPT_URL, url);
	struct curl_slist *h = curl_slist_append(NULL, "X-Test: abc");
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	if (curl_easy_perform(c) == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &f->status[idx]);
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
}

/* --- tests --- */

static void client_simple_get(fx *f)
{
	curl_get(f, 0, "http://localhost/hello?x=1");
}

static void test_get_unix(void **state)
{
	fx *f = *state;
	listen_unix(f, NULL);
	assert_int_equal(http_server_port(f->srv), -1);
	struct stat st;
	assert_int_equal(stat(f->sock, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0600);

	run_client(f, client_simple_get);
	assert_int_equal(f->status[0], 200);
	assert_string_equal(f->body[0], "GET /hello x=1 abc");
	assert_true(f->had_cred);
	assert_int_equal(f->uid, getuid());
	assert_string_equal(f->peer_addr, "unix");
	/* Closing removed our socket file. */
	assert_int_equal(access(f->sock, F_OK), -1);
}

static void client_keep_alive(fx *f)
{
	sink s = {f, 0};
	CURL *c = curl_for(f, &s);
	curl_easy_setopt(c, CURLOPT_URL, "http://localhost/one");
	if (curl_easy_perform(c) == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &f->status[0]);
	curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &f->connects[0]);
	s.idx = 1;
	curl_easy_setopt(c, CURLOPT_URL, "http://localhost/two");
	if (curl_easy_perform(c) == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &f->status[1]);
	curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &f->connects[1]);
	curl_easy_cleanup(c);
}

static void test_keep_alive(void **state)
{
	fx *f = *state;
	listen_unix(f, NULL);
	run_client(f, client_keep_alive);
	assert_int_equal(f->status[0], 200);
	assert_int_equal(f->status[1], 200);
	assert_string_equal(f->body[0], "GET /one - -");
	assert_string_equal(f->body[1], "GET /two - -");
	assert_int_equal(f->requests, 2);
	assert_true(f->conn_ids[0] == f->conn_ids[1]);
	assert_int_equal(f->connects[0], 1);
	assert_int_equal(f->connects[1], 0); /* reused */
}

static void client_pipelined(fx *f)
{
	/* The first answer is delayed, so the others wait behind it. */
	raw_exchange_str(f, "GET /delay/a HTTP/1.1\r\nHost: x\r\n\r\n"
	                    "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz"
	                    "GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
}

static void test_pipelined(void **state)
{
	fx *f = *state;
	listen_unix(f, NULL);
	run_client(f, client_pipelined);
	assert_int_equal(f->client_rc, 0);
	assert_true(f->raw_eof);
	assert_int_equal(f->raw_responses, 3);
	assert_int_equal(f->raw_status[0], 200);
	assert_string_equal(f->raw_body[0], "/delay/a");
	assert_string_equal(f->raw_body[1], "POST /b - -");
	assert_string_equal(f->raw_body[2], "GET /c - -");
	assert_string_equal(f->last_body, "");
	assert_int_equal(f->requests, 3);
	assert_true(f->conn_ids[0] == f->conn_ids[2]);
	assert_non_null(strstr(f->raw_headers[2], "Connection: close"));
	assert_non_null(strstr(f->raw_headers[1], "X-Reply: yes"));
}

static void client_big_body(fx *f)
{
	char req[8192];
	int n = snprintf(req, sizeof(req),
	                 "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n");
	memset(req + n, 'a', 5000);
	raw_exchange(f, req, (size_t)n + 5000);
}

static void client_big_chunked_body(fx *f)
{
	char req[8192];
	int n = snprintf(req, sizeof(req),
	                 "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
	for (int i = 0; i < 3; i++) {
		n += snprintf(req + n, sizeof(req) - (size_t)n, "400\r\n");
		memset(req + n, 'b', 0x400);
		n += 0x400;
		n += snprintf(req + n, sizeof(req) - (size_t)n, "\r\n");
	}
	n += snprintf(req + n, sizeof(req) - (size_t)n, "0\r\n\r\n");
	raw_exchange(f, req, (size_t)n);
}

static void assert_json_error(const char *body)
{
	json_error_t jerr;
	json_t *j = json_loads(body, 0, &jerr);
	assert_non_null(j);
	assert_true(json_is_string(json_object_get(j, "error")));
	json_decref(j);
}

static void test_body_limit(void **state)
{
	fx *f = *state;
	http_server_options o = {.max_body_bytes = 2048};
	listen_unix(f, &o);
	run_client(f, client_big_body);
	assert_int_equal(f->raw_responses, 1);
	assert_int_equal(f->raw_status[0], 413);
	assert_true(f->raw_eof);
	assert_non_null(strstr(f->raw_headers[0], "Content-Type: application/json"));
	assert_json_error(f->raw_body[0]);
	assert_int_equal(f->requests, 0);
}

static void test_body_limit_chunked(void **state)
{
	fx *f = *state;
	http_server_options o = {.max_body_bytes = 2048};
	listen_unix(f, &o);
	run_client(f, client_big_chunked_body);
	assert_int_equal(f->raw_responses, 1);
	assert_int_equal(f->raw_status[0], 413);
	assert_true(f->raw_eof);
	assert_int_equal(f->requests, 0);
}

static void client_big_header(fx *f)
{
	size_t n = 20000;
	char *req = malloc(n + 100);
	int h = snprintf(req, 100, "GET / HTTP/1.1\r\nX-Big: ");
	memset(req + h, 'h', n);
	memcpy(req + h + n, "\r\n\r\n", 4);
	raw_exchange(f, req, (size_t)h + n + 4);
	free(req);
}

static void client_many_headers(fx *f)
{
	char req[8192];
	int n = snprintf(req, sizeof(req), "GET / HTTP/1.1\r\n");
	for (int i = 0; i < 150; i++)
		n += snprintf(req + n, sizeof(req) - (size_t)n, "X-H%d: v\r\n", i);
	n += snprintf(req + n, sizeof(req) - (size_t)n, "\r\n");
	raw_exchange(f, req, (size_t)n);
}

static void test_header_limit(void **state)
{
	fx *f = *state;
	listen_unix(f, NULL); /* default: 16 KiB */
	run_client(f, client_big_header);
	assert_int_equal(f->raw_responses, 1);
	assert_int_equal(f->raw_status[0], 431);
	assert_true(f->raw_eof);
	assert_json_error(f->raw_body[0]);
	assert_int_equal(f->requests, 0);
}

static void test_header_count_limit(void **state)
{
	fx *f = *state;
	listen_unix(f, NULL); /* default: 100 headers */
	run_client(f, client_many_headers);
	assert_int_equal(f->raw_responses, 1);
	assert_int_equal(f->raw_status[0], 431);
	assert_int_equal(f->requests, 0);
}

static void client_split(fx *f)
{
	split_sends = true;
	raw_exchange_str(f, "GET /split?a=b HTTP/1.1\r\nHost: x\r\nX-Empty:\r\n"
	                    "X-Test:  abc \t\r\nConnection: close\r\n\r\n");
	split_sends = false;
}

static void test_split_request(void **state)
{
	fx *f = *state;
	listen_unix(f, NULL);
	run_client(f, client_split);
	assert_int_equal(f->raw_responses, 1);
	assert_int_equal(f->raw_status[0], 200);
	assert_string_equal(f->raw_body[0], "GET /split a=b abc");
}

static void client_http10(fx *f)
{
	head_response = true;
	raw_exchange_str(f, "HEAD /old HTTP/1.0\r\n\r\n");
	head_response = false;
}

static void test_http10_head(void **state)
{
	fx *f = *state;
	listen_unix(f, NULL);
	run_client(f, client_http10);
	assert_true(f->raw_eof);
	assert_int_equal(f->raw_responses, 1);
	assert_int_equal(f->raw_status[0], 200);
	/* HEAD: the length of the body that GET would send, and no body. */
	assert_non_null(strstr(f->raw_headers[0], "Content-Length: 13"));
	assert_string_equal(f->raw_body[0], "");
	assert_non_null(strstr(f->raw_headers[0], "Connection: close"));
}

static void client_malformed(fx *f)
{
	raw_exchange_str(f, "GARBAGE\r\n\r\n");
}

static void client_bad_header(fx *f)
{
	raw_exchange_str(f, "GET / HTTP/1.1\r\nNo colon here\r\n\r\n");
}

static void test_malformed(void **state)
{
	fx *f = *state;
	listen_unix(f, NULL);
	run_client(f, client_malformed);
	assert_int_equal(f->raw_responses, 1);
	assert_int_equal(f->raw_status[0], 400);
	assert_true(f->raw_eof);
	assert_non_null(strstr(f->raw_headers[0], "Connection: close"));
	assert_json_error(f->raw_body[0]);
	assert_non_null(strstr(f->raw_body[0], "malformed HTTP request"));
	assert_int_equal(f->requests, 0);
}

static void test_malformed_header(void **state)
{
	fx *f = *state;
	listen_unix(f, NULL);
	run_client(f, client_bad_header);
	assert_int_equal(f->raw_responses, 1);
	assert_int_equal(f->raw_status[0], 400);
	assert_json_error(f->raw_body[0]);
	assert_int_equal(f->requests, 0);
}

static size_t stream_sink(char *ptr, size_t size, size_t nmemb, void *ud)
{
	sink *s = ud;
	size_t n = curl_sink(ptr, size, nmemb, ud);
	/* The second part is produced only after the first arrived here. */
	if (s->f->pieces == 1)
		uv_async_send(&s->f->next_async);
	return n;
}

static void client_stream(fx *f)
{
	sink s = {f, 0};
	CURL *c = curl_for(f, &s);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, stream_sink);
	curl_easy_setopt(c, CURLOPT_URL, "http://localhost/stream");
	if (curl_easy_perform(c) == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &f->status[0]);
	curl_easy_cleanup(c);
}

static void test_chunked_stream(void **state)
{
	fx *f = *state;
	listen_unix(f, NULL);
	run_client(f, client_stream);
	assert_int_equal(f->status[0], 200);
	assert_true(f->saw_chunked);
	assert_true(f->pieces >= 2);
	assert_string_equal(f->first_piece, "part1\n");
	assert_string_equal(f->body[0], "part1\npart2\n");
}

static void client_late(fx *f)
{
	curl_get(f, 0, "http://localhost/late");
}

static void test_async_from_timer(void **state)
{
	fx *f = *state;
	listen_unix(f, NULL);
	run_client(f, client_late);
	assert_true(f->handler_returned_before_reply);
	assert_int_equal(f->status[0], 200);
	assert_string_equal(f->body[0], "/late");
}

/* Send a request, wait until the handler holds it, then hang up. */
static void client_hang_up(fx *f, const char *path)
{
	int fd = connect_unix(f->sock);
	if (fd < 0) {
		f->client_rc = -errno;
		return;
	}
	char req[128];
	snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
	send_all(fd, req, strlen(req));
	if (strcmp(path, "/hold") == 0) {
		for (int i = 0; i < 4000 && !atomic_load(&f->got_request); i++)
			usleep(5000);
	} else {
		char buf[256];
		ssize_t n = recv(fd, buf, sizeof(buf), 0); /* the stream began */
		f->client_rc = n > 0 ? 0 : -EIO;
	}
	close(fd);
}

static void client_hold(fx *f)
{
	client_hang_up(f, "/hold");
}

static void test_disconnect_cancels(void **state)
{
	fx *f = *state;
	f->wait_cancel = true;
	listen_unix(f, NULL);
	run_client(f, client_hold);
	assert_int_equal(f->client_rc, 0);
	assert_int_equal(atomic_load(&f->got_request), 1);
	assert_int_equal(f->cancels, 1);
	assert_int_equal(f->end_after_cancel_rc, -ECONNRESET);
	assert_null(f->held);
}

static void client_stream_hang_up(fx *f)
{
	client_hang_up(f, "/stream-forever");
}

static void test_disconnect_while_streaming(void **state)
{
	fx *f = *state;
	f->wait_cancel = true;
	listen_unix(f, NULL);
	run_client(f, client_stream_hang_up);
	assert_int_equal(f->client_rc, 0);
	assert_int_equal(f->cancels, 1);
	assert_int_equal(f->write_after_cancel_rc, -ECONNRESET);
	assert_int_equal(f->end_after_cancel_rc, -ECONNRESET);
}

static void on_server_closed_count(void *ud)
{
	(*(int *)ud)++;
}

static void client_nothing(fx *f)
{
	(void)f;
}

static void test_second_server_refused(void **state)
{
	fx *f = *state;
	listen_unix(f, NULL);
	http_server *second = NULL;
	assert_int_equal(http_server_new(&f->loop, NULL, &second), 0);
	sovmesh_error err = {0};
	int r = http_server_listen_unix(second, f->sock, &err);
	assert_int_equal(r, -EADDRINUSE);
	assert_non_null(strstr(err.message, f->sock));
	assert_non_null(strstr(err.message, "already listening"));
	/* The first server's socket is untouched. */
	struct stat st;
	assert_int_equal(stat(f->sock, &st), 0);

	/* A plain file in the way is never removed. */
	char file[160];
	snprintf(file, sizeof(file), "%s/file", f->dir);
	FILE *fp = fopen(file, "w");
	assert_non_null(fp);
	fclose(fp);
	r = http_server_listen_unix(second, file, &err);
	assert_int_equal(r, -EEXIST);
	assert_non_null(strstr(err.message, "not a socket"));
	assert_int_equal(access(file, F_OK), 0);

	/* Never listened: closing completes at once. */
	int closed = 0;
	http_server_close(second, on_server_closed_count, &closed);
	assert_int_equal(closed, 1);

	run_client(f, client_nothing);
	/* Closing the first server did not touch the file either. */
	assert_int_equal(access(file, F_OK), 0);
}

static void test_stale_socket_replaced(void **state)
{
	fx *f = *state;
	/* A socket file nobody listens on, as a crashed daemon leaves it. */
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f->sock);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	struct stat st;
	assert_int_equal(stat(f->sock, &st), 0);

	listen_unix(f, NULL);
	run_client(f, client_simple_get);
	assert_int_equal(f->status[0], 200);
}

static void client_idle(fx *f)
{
	int fd = connect_unix(f->sock);
	char buf[16];
	/* Send nothing: the server closes after the idle timeout. */
	ssize_t n = recv(fd, buf, sizeof(buf), 0);
	f->raw_eof = n == 0;
	close(fd);
}

static void test_idle_timeout(void **state)
{
	fx *f = *state;
	http_server_options o = {.idle_timeout_ms = 100};
	listen_unix(f, &o);
	run_client(f, client_idle);
	assert_true(f->raw_eof);
	assert_int_equal(f->requests, 0);
}

static char tcp_url[128];

static void client_tcp(fx *f)
{
	sink s = {f, 0};
	CURL *c = curl_easy_init();
	curl_easy_setopt(c, CURLOPT_URL, tcp_url);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, curl_sink);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &s);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	if (curl_easy_perform(c) == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &f->status[0]);
	curl_easy_cleanup(c);
}

static void test_tcp_loopback(void **state)
{
	fx *f = *state;
	http_server_options o = {.handler = handler, .handler_ud = f};
	sovmesh_error err = {0};
	assert_int_equal(http_server_new(&f->loop, &o, &f->srv), 0);
	int r = http_server_listen_tcp(f->srv, "127.0.0.1", 0, &err);
	if (r < 0)
		fail_msg("%s", err.message);
	int port = http_server_port(f->srv);
	assert_true(port > 0);
	assert_int_equal(http_server_listen_tcp(f->srv, "127.0.0.1", 0, &err), -EALREADY);
	snprintf(tcp_url, sizeof(tcp_url), "http://127.0.0.1:%d/tcp?q", port);

	/* A port that is taken gives a clear error. */
	http_server *b = NULL;
	assert_int_equal(http_server_new(&f->loop, &o, &b), 0);
	r = http_server_listen_tcp(b, "127.0.0.1", port, &err);
	assert_int_equal(r, -EADDRINUSE);
	assert_non_null(strstr(err.message, "127.0.0.1:"));
	assert_int_equal(http_server_port(b), -1);
	http_server_close(b, NULL, NULL);

	run_client(f, client_tcp);
	assert_int_equal(f->status[0], 200);
	assert_string_equal(f->body[0], "GET /tcp q -");
	assert_false(f->had_cred);
	assert_true(strncmp(f->peer_addr, "127.0.0.1:", 10) == 0);
}

static void client_hold_until_closed(fx *f)
{
	int fd = connect_unix(f->sock);
	if (fd < 0) {
		f->client_rc = -errno;
		return;
	}
	const char *req = "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n";
	send_all(fd, req, strlen(req));
	for (int i = 0; i < 4000 && !atomic_load(&f->got_request); i++)
		usleep(5000);
	uv_async_send(&f->next_async);
	char buf[64];
	f->raw_eof = recv(fd, buf, sizeof(buf), 0) == 0;
	close(fd);
}

static void test_close_with_pending_response(void **state)
{
	fx *f = *state;
	f->wait_cancel = true;
	f->close_on_next = true;
	listen_unix(f, NULL);
	run_client(f, client_hold_until_closed);
	assert_true(f->raw_eof);
	assert_int_equal(f->cancels, 1);
	assert_int_equal(f->end_after_cancel_rc, -ECONNRESET);
	assert_int_equal(access(f->sock, F_OK), -1);
}

int main(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_get_unix, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_keep_alive, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pipelined, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_body_limit, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_body_limit_chunked, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_header_limit, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_header_count_limit, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_split_request, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_http10_head, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_malformed, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_malformed_header, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_chunked_stream, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_async_from_timer, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_disconnect_cancels, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_disconnect_while_streaming, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_second_server_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_stale_socket_replaced, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_idle_timeout, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_tcp_loopback, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_close_with_pending_response, setup, teardown),
	};
	int r = cmocka_run_group_tests(tests, NULL, NULL);
	curl_global_cleanup();
	return r;
}

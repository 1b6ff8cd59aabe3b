/*
 * control_api.c routing and control_client.c: the server runs on the
 * test's loop in the main thread, the client (control_client or libcurl)
 * in a thread that reports back with uv_async_send.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "control_api.h"
#include "control_client.h"
#include "http_server.h"

typedef struct fx fx;
typedef void (*client_fn)(fx *f);

#define NREPLIES 12

struct fx {
	uv_loop_t loop;
	char dir[64];
	char sock[100];
	http_server *srv;
	http_server *tcp_srv;
	control_api *api;
	int closed;
	pthread_t thread;
	client_fn client;
	uv_async_t done_async;
	uv_timer_t timer;
	http_response *held;
	int port;

	/* client results */
	int rc[NREPLIES];
	long status[NREPLIES];
	json_t *reply[NREPLIES];
	char err[NREPLIES][512];
	char raw[NREPLIES][8192];
	char allow[128];
};

/* --- handlers --- */

static int h_status(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)ud;
	assert_string_equal(req->path, "/v1/status");
	assert_null(req->body);
	assert_int_equal(*status, 200);
	*reply = json_pack("{s:s, s:b}", "version", "9.9", "cred", req->http->has_cred);
	return 0;
}

static int h_plugins(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)ud;
	(void)req;
	(void)status;
	*reply = json_pack("{s:[]}", "plugins");
	return 0;
}

static int h_echo(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)ud;
	*status = 201;
	*reply = json_pack("{s:O, s:s}", "got", req->body ? req->body : json_null(), "query",
	                   req->query);
	return 0;
}

static int h_unavailable(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)ud;
	(void)req;
	(void)reply;
	*status = 503;
	return 0;
}

static int h_broken(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)ud;
	(void)req;
	(void)reply;
	(void)status;
	return -EIO;
}

static int h_peer(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)ud;
	(void)status;
	*reply = json_pack("{s:s}", "peer", req->path + strlen("/v1/peers/"));
	return 0;
}

static void on_async_timer(uv_timer_t *t)
{
	fx *f = t->data;
	http_response *resp = f->held;
	f->held = NULL;
	control_api_reply(resp, 200, json_pack("{s:b}", "async", 1));
}

static void h_async(void *ud, const control_request *req, http_response *resp)
{
	fx *f = ud;
	(void)req;
	f->held = resp;
	uv_timer_start(&f->timer, on_async_timer, 20, 0);
}

static void h_async_error(void *ud, const control_request *req, http_response *resp)
{
	(void)ud;
	control_api_reply_error(resp, 409, "cannot do %s now", req->path);
}

/* The front door: the control API mirrored under /sovmesh, the rest its own. */
static void front_door(void *ud, const http_request *req, http_response *resp)
{
	fx *f = ud;
	if (control_api_dispatch(f->api, "/sovmesh", req, resp) == 0)
		return;
	http_response_send(resp, 200, "text/plain", "front door", 10);
}

/* --- fixture --- */

static void on_closed(void *ud)
{
	((fx *)ud)->closed++;
}

static void on_done(uv_async_t *a)
{
	fx *f = a->data;
	uv_close((uv_handle_t *)&f->done_async, NULL);
	uv_close((uv_handle_t *)&f->timer, NULL);
	if (f->held)
		http_response_unref(f->held);
	f->held = NULL;
	if (f->srv)
		http_server_close(f->srv, on_closed, f);
	if (f->tcp_srv)
		http_server_close(f->tcp_srv, on_closed, f);
	control_api_free(f->api);
	f->api = NULL;
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
	uv_async_init(&f->loop, &f->done_async, on_done);
	f->done_async.data = f;
	assert_int_equal(pthread_create(&f->thread, NULL, client_main, f), 0);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	pthread_join(f->thread, NULL);
}

static int setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	assert_int_equal(uv_loop_init(&f->loop), 0);
	uv_timer_init(&f->loop, &f->timer);
	f->timer.data = f;
	snprintf(f->dir, sizeof(f->dir), "/tmp/sovmesh-ctl-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->sock, sizeof(f->sock), "%s/control.sock", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx *f = *state;
	if (!uv_is_closing((uv_handle_t *)&f->timer))
		uv_close((uv_handle_t *)&f->timer, NULL);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	for (int i = 0; i < NREPLIES; i++)
		json_decref(f->reply[i]);
	unlink(f->sock);
	char p[160];
	snprintf(p, sizeof(p), "%s/file", f->dir);
	unlink(p);
	assert_int_equal(rmdir(f->dir), 0);
	free(f);
	return 0;
}

static void start_control(fx *f)
{
	http_server_options o = {.name = "control"};
	assert_int_equal(http_server_new(&f->loop, &o, &f->srv), 0);
	sovmesh_error err = {0};
	if (http_server_listen_unix(f->srv, f->sock, &err) < 0)
		fail_msg("%s", err.message);
	assert_int_equal(control_api_new(f->srv, &f->api), 0);
	control_api *a = f->api;
	assert_int_equal(control_api_route(a, "GET", "/v1/status", h_status, f), 0);
	assert_int_equal(control_api_route(a, "GET", "/v1/plugins", h_plugins, f), 0);
	assert_int_equal(control_api_route(a, "POST", "/v1/echo", h_echo, f), 0);
	assert_int_equal(control_api_route(a, "PUT", "/v1/echo", h_echo, f), 0);
	assert_int_equal(control_api_route(a, "GET", "/v1/unavailable", h_unavailable, f), 0);
	assert_int_equal(control_api_route(a, "GET", "/v1/broken", h_broken, f), 0);
	assert_int_equal(control_api_route(a, "GET", "/v1/peers/*", h_peer, f), 0);
	assert_int_equal(control_api_route_async(a, "GET", "/v1/async", h_async, f), 0);
	assert_int_equal(control_api_route_async(a, "POST", "/v1/async-error", h_async_error, f),
	                 0);
	/* Registration errors. */
	assert_int_equal(control_api_route(a, "GET", "/v1/status", h_status, f), -EEXIST);
	assert_int_equal(control_api_route(a, "GET", "v1/relative", h_status, f), -EINVAL);
	assert_int_equal(control_api_route(a, "GET", "/v1/x", NULL, f), -EINVAL);
}

/* --- tests --- */

static void client_routes(fx *f)
{
	const char *s = f->sock;
	size_t el = sizeof(f->err[0]);
	f->rc[0] = control_client_get(s, "/v1/status", &f->reply[0], &f->status[0], f->err[0], el);
	f->rc[1] = control_client_get(s, "/v1/nope", &f->reply[1], &f->status[1], f->err[1], el);
	f->rc[2] =
	    control_client_post(s, "/v1/status", NULL, &f->reply[2], &f->status[2], f->err[2], el);
	json_t *body = json_pack("{s:i, s:[s]}", "a", 1, "list", "x");
	f->rc[3] =
	    control_client_post(s, "/v1/echo", body, &f->reply[3], &f->status[3], f->err[3], el);
	json_decref(body);
	f->rc[4] = control_client_get(s, "/v1/async", &f->reply[4], &f->status[4], f->err[4], el);
	f->rc[5] =
	    control_client_get(s, "/v1/unavailable", &f->reply[5], &f->status[5], f->err[5], el);
	f->rc[6] = control_client_get(s, "/v1/broken", &f->reply[6], &f->status[6], f->err[6], el);
	f->rc[7] = control_client_get(s, "/elsewhere", &f->reply[7], &f->status[7], f->err[7], el);
	f->rc[8] =
	    control_client_get(s, "/v1/peers/alice", &f->reply[8], &f->status[8], f->err[8], el);
	f->rc[9] = control_client_post(s, "/v1/async-error", NULL, &f->reply[9], &f->status[9],
	                               f->err[9], el);
	f->rc[10] =
	    control_client_get(s, "/v1/plugins", &f->reply[10], &f->status[10], f->err[10], el);
}

static const char *jerr(json_t *j)
{
	json_t *e = json_object_get(j, "error");
	assert_true(json_is_string(e));
	return json_string_value(e);
}

static void test_routes(void **state)
{
	fx *f = *state;
	start_control(f);
	run_client(f, client_routes);
	assert_int_equal(f->closed, 1);
	for (int i = 0; i <= 10; i++) {
		if (f->rc[i] != 0)
			fail_msg("request %d failed: %s", i, f->err[i]);
		assert_non_null(f->reply[i]);
	}
	assert_int_equal(f->status[0], 200);
	assert_string_equal(json_string_value(json_object_get(f->reply[0], "version")), "9.9");
	assert_true(json_is_true(json_object_get(f->reply[0], "cred")));

	assert_int_equal(f->status[1], 404);
	assert_non_null(strstr(jerr(f->reply[1]), "/v1/nope"));

	assert_int_equal(f->status[2], 405);
	assert_non_null(strstr(jerr(f->reply[2]), "allowed: GET"));

	assert_int_equal(f->status[3], 201);
	json_t *want = json_pack("{s:i, s:[s]}", "a", 1, "list", "x");
	assert_true(json_equal(json_object_get(f->reply[3], "got"), want));
	json_decref(want);

	assert_int_equal(f->status[4], 200);
	assert_true(json_is_true(json_object_get(f->reply[4], "async")));

	assert_int_equal(f->status[5], 503);
	assert_string_equal(jerr(f->reply[5]), "Service Unavailable");

	assert_int_equal(f->status[6], 500);
	assert_non_null(strstr(jerr(f->reply[6]), "internal error"));

	assert_int_equal(f->status[7], 404);
	assert_non_null(strstr(jerr(f->reply[7]), "/elsewhere"));

	assert_int_equal(f->status[8], 200);
	assert_string_equal(json_string_value(json_object_get(f->reply[8], "peer")), "alice");

	assert_int_equal(f->status[9], 409);
	assert_string_equal(jerr(f->reply[9]), "cannot do /v1/async-error now");

	assert_int_equal(f->status[10], 200);
	assert_true(json_is_array(json_object_get(f->reply[10], "plugins")));
}

/* Raw bodies and headers: libcurl directly. */
typedef struct rawbuf {
	char *dst;
	size_t cap;
} rawbuf;

static size_t raw_sink(char *p, size_t size, size_t n, void *ud)
{
	rawbuf *b = ud;
	size_t len = strlen(b->dst);
	size_t add = size * n;
	if (len + add < b->cap) {
		memcpy(b->dst + len, p, add);
		b->dst[len + add] = '\0';
	}
	return size * n;
}

static long curl_raw(const char *sock, const char *url, const char *method, const char *body,
                     char *out, size_t cap, char *headers, size_t hcap)
{
	CURL *c = curl_easy_init();
	rawbuf b = {out, cap}, h = {headers, hcap};
	struct curl_slist *hl = curl_slist_append(NULL, "Content-Type: application/json");
	if (sock)
		curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, sock);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
	if (body)
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, raw_sink);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	if (headers) {
		curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, raw_sink);
		curl_easy_setopt(c, CURLOPT_HEADERDATA, &h);
	}
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	long code = 0;
	if (curl_easy_perform(c) == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	curl_slist_free_all(hl);
	curl_easy_cleanup(c);
	return code;
}

static void client_raw(fx *f)
{
	static char hdrs[2][2048];
	f->status[0] = curl_raw(f->sock, "http://localhost/v1/echo", "POST", "{not json", f->raw[0],
	                        sizeof(f->raw[0]), hdrs[0], sizeof(hdrs[0]));
	f->status[1] = curl_raw(f->sock, "http://localhost/v1/echo", "DELETE", NULL, f->raw[1],
	                        sizeof(f->raw[1]), hdrs[1], sizeof(hdrs[1]));
	const char *a = strstr(hdrs[1], "Allow: ");
	if (a)
		snprintf(f->allow, sizeof(f->allow), "%.*s", (int)strcspn(a, "\r\n"), a);
	f->status[2] = curl_raw(f->sock, "http://localhost/v1/echo?x=1", "PUT", "[1, 2]", f->raw[2],
	                        sizeof(f->raw[2]), NULL, 0);
	/* Every answer is JSON, the 400 included. */
	f->rc[0] = strstr(hdrs[0], "Content-Type: application/json") != NULL;

	/* Expect: 100-continue is answered: with curl told to wait far
	 * longer than its total timeout, only a "100 Continue" gets the body
	 * sent in time. */
	static char big[8192];
	size_t n = 0;
	big[n++] = '[';
	for (int i = 0; i < 1000; i++)
		n += (size_t)snprintf(big + n, sizeof(big) - n, "%s%d", i ? "," : "", i % 10);
	big[n++] = ']';
	CURL *c = curl_easy_init();
	rawbuf b = {f->raw[3], sizeof(f->raw[3])};
	struct curl_slist *hl = curl_slist_append(NULL, "Expect: 100-continue");
	curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, f->sock);
	curl_easy_setopt(c, CURLOPT_URL, "http://localhost/v1/echo");
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, big);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
	curl_easy_setopt(c, CURLOPT_EXPECT_100_TIMEOUT_MS, 120000L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, raw_sink);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	if (curl_easy_perform(c) == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &f->status[3]);
	curl_slist_free_all(hl);
	curl_easy_cleanup(c);
}

static void test_raw_bodies(void **state)
{
	fx *f = *state;
	start_control(f);
	run_client(f, client_raw);
	assert_int_equal(f->status[0], 400);
	assert_int_equal(f->rc[0], 1);
	json_t *j = json_loads(f->raw[0], 0, NULL);
	assert_non_null(j);
	assert_non_null(strstr(jerr(j), "not valid JSON"));
	json_decref(j);

	assert_int_equal(f->status[1], 405);
	assert_string_equal(f->allow, "Allow: POST, PUT");

	assert_int_equal(f->status[2], 201);
	j = json_loads(f->raw[2], 0, NULL);
	assert_non_null(j);
	assert_int_equal(json_array_size(json_object_get(j, "got")), 2);
	assert_string_equal(json_string_value(json_object_get(j, "query")), "x=1");
	json_decref(j);

	assert_int_equal(f->status[3], 201);
	assert_non_null(strstr(f->raw[3], "\"got\":[0,1,2"));
}

static char tcp_base[64];

static void client_mirror(fx *f)
{
	char url[128];
	snprintf(url, sizeof(url), "%s/sovmesh/v1/status", tcp_base);
	f->status[0] = curl_raw(NULL, url, "GET", NULL, f->raw[0], sizeof(f->raw[0]), NULL, 0);
	snprintf(url, sizeof(url), "%s/api/tags", tcp_base);
	f->status[1] = curl_raw(NULL, url, "GET", NULL, f->raw[1], sizeof(f->raw[1]), NULL, 0);
	snprintf(url, sizeof(url), "%s/sovmesh/v1/missing", tcp_base);
	f->status[2] = curl_raw(NULL, url, "GET", NULL, f->raw[2], sizeof(f->raw[2]), NULL, 0);
}

static void test_mirror_on_tcp(void **state)
{
	fx *f = *state;
	start_control(f);
	http_server_options o = {.handler = front_door, .handler_ud = f, .name = "front"};
	assert_int_equal(http_server_new(&f->loop, &o, &f->tcp_srv), 0);
	sovmesh_error err = {0};
	if (http_server_listen_tcp(f->tcp_srv, "127.0.0.1", 0, &err) < 0)
		fail_msg("%s", err.message);
	snprintf(tcp_base, sizeof(tcp_base), "http://127.0.0.1:%d", http_server_port(f->tcp_srv));
	run_client(f, client_mirror);
	assert_int_equal(f->closed, 2);
	assert_int_equal(f->status[0], 200);
	json_t *j = json_loads(f->raw[0], 0, NULL);
	assert_non_null(j);
	assert_string_equal(json_string_value(json_object_get(j, "version")), "9.9");
	assert_true(json_is_false(json_object_get(j, "cred"))); /* TCP: no credentials */
	json_decref(j);
	assert_int_equal(f->status[1], 200);
	assert_string_equal(f->raw[1], "front door");
	assert_int_equal(f->status[2], 404);
}

/* --- control_client errors --- */

static void test_client_missing_socket(void **state)
{
	fx *f = *state;
	json_t *reply = (json_t *)1;
	long status = -1;
	char err[512];
	int r = control_client_get(f->sock, "/v1/status", &reply, &status, err, sizeof(err));
	assert_int_equal(r, -ENOENT);
	assert_null(reply);
	assert_int_equal(status, 0);
	char want[512];
	snprintf(want, sizeof(want),
	         "cannot reach sovmeshd at %s: no such file (is the daemon running?)", f->sock);
	assert_string_equal(err, want);
}

static void test_client_stale_socket(void **state)
{
	fx *f = *state;
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f->sock);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	json_t *reply = NULL;
	char err[512];
	int r = control_client_get(f->sock, "/v1/status", &reply, NULL, err, sizeof(err));
	assert_int_equal(r, -ECONNREFUSED);
	assert_null(reply);
	assert_non_null(strstr(err, f->sock));
	assert_non_null(strstr(err, "connection refused"));
}

static void test_client_not_a_socket(void **state)
{
	fx *f = *state;
	char p[160];
	snprintf(p, sizeof(p), "%s/file", f->dir);
	FILE *fp = fopen(p, "w");
	assert_non_null(fp);
	fclose(fp);
	json_t *reply = NULL;
	char err[512];
	assert_int_equal(control_client_get(p, "/v1/status", &reply, NULL, err, sizeof(err)),
	                 -ENOTSOCK);
	assert_non_null(strstr(err, "not a socket"));
	assert_int_equal(control_client_get("", "/v1/status", &reply, NULL, err, sizeof(err)),
	                 -EINVAL);
}

static void plain_handler(void *ud, const http_request *req, http_response *resp)
{
	(void)ud;
	(void)req;
	http_response_send(resp, 200, "text/html", "<html>hi</html>", 15);
}

static void client_not_json(fx *f)
{
	f->rc[0] = control_client_get(f->sock, "/v1/status", &f->reply[0], &f->status[0], f->err[0],
	                              sizeof(f->err[0]));
}

static void test_client_not_json(void **state)
{
	fx *f = *state;
	http_server_options o = {.handler = plain_handler};
	assert_int_equal(http_server_new(&f->loop, &o, &f->srv), 0);
	assert_int_equal(http_server_listen_unix(f->srv, f->sock, NULL), 0);
	run_client(f, client_not_json);
	assert_int_equal(f->rc[0], -EBADMSG);
	assert_null(f->reply[0]);
	assert_non_null(strstr(f->err[0], "not JSON"));
	assert_non_null(strstr(f->err[0], f->sock));
}

int main(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_routes, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_raw_bodies, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_mirror_on_tcp, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_client_missing_socket, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_client_stale_socket, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_client_not_a_socket, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_client_not_json, setup, teardown),
	};
	int r = cmocka_run_group_tests(tests, NULL, NULL);
	curl_global_cleanup();
	return r;
}

/*
 * libcurl's multi interface on the libuv loop (the curl multi-uv pattern):
 * curl tells us which sockets to watch (socket callback -> uv_poll_t) and
 * when to wake it (timer callback -> one uv_timer_t); we hand readiness
 * back with curl_multi_socket_action() and collect finished transfers with
 * curl_multi_info_read().
 *
 * libcurl forbids curl_multi_remove_handle() from inside its callbacks, so
 * a cancel made while curl is on the stack only marks the call; the write
 * and header callbacks then refuse further data and the call is reaped
 * once curl_multi_socket_action() has returned.
 */
#include "http_client.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "log.h"

struct http_call {
	http_client *client;
	CURL *easy;
	struct curl_slist *headers;
	sovmesh_http_callbacks cbs;
	void *ud;
	char *url;
	char method[16];
	char errbuf[CURL_ERROR_SIZE];
	int in_multi;    /* added to the multi handle */
	int status_sent; /* on_status has been called */
	int cancelled;   /* http_client_cancel() ran; reap silently */
	int user_abort;  /* on_body returned non-zero */
	int in_user;     /* a user callback of this call is on the stack */
	http_call *prev, *next;
};

/* One watched socket. */
typedef struct sock_ctx {
	uv_poll_t poll;
	curl_socket_t fd;
	http_client *client;
	struct sock_ctx *prev, *next;
} sock_ctx;

struct http_client {
	uv_loop_t *loop;
	CURLM *multi;
	uv_timer_t timer;
	int in_curl;      /* depth of curl_multi_socket_action on the stack */
	int closing;      /* http_client_free() ran */
	size_t pending;   /* uv_close()s whose callback has not run yet */
	http_call *calls; /* unfinished calls */
	sock_ctx *socks;  /* sockets curl asked us to watch */
	void (*closed)(void *ud);
	void *closed_ud;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result = CURLE_FAILED_INIT;

static void curl_init_once(void)
{
	curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void client_maybe_gone(http_client *c)
{
	if (!c->closing || c->pending > 0)
		return;
	void (*closed)(void *) = c->closed;
	void *ud = c->closed_ud;
	free(c);
	if (closed)
		closed(ud);
}

static void on_handle_closed(uv_handle_t *h)
{
	http_client *c;
	if (h->type == UV_POLL) {
		sock_ctx *sc = h->data;
		c = sc->client;
		free(sc);
	} else {
		c = h->data;
	}
	c->pending--;
	client_maybe_gone(c);
}

static void sock_close(http_client *c, sock_ctx *sc)
{
	if (sc->prev)
		sc->prev->next = sc->next;
	else
		c->socks = sc->next;
	if (sc->next)
		sc->next->prev = sc->prev;
	uv_poll_stop(&sc->poll);
	c->pending++;
	uv_close((uv_handle_t *)&sc->poll, on_handle_closed);
}

static void call_unlink(http_call *call)
{
	http_client *c = call->client;
	if (call->prev)
		call->prev->next = call->next;
	else
		c->calls = call->next;
	if (call->next)
		call->next->prev = call->prev;
	call->prev = call->next = NULL;
}

/* Remove from curl and free.  Not from inside a curl callback. */
static void call_destroy(http_call *call)
{
	call_unlink(call);
	if (call->in_multi)
		curl_multi_remove_handle(call->client->multi, call->easy);
	curl_easy_cleanup(call->easy);
	curl_slist_free_all(call->headers);
	free(call->url);
	free(call);
}

static void emit_status(http_call *call)
{
	if (call->status_sent)
		return;
	long status = 0;
	curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &status);
	call->status_sent = 1;
	if (call->cbs.on_status) {
		call->in_user = 1;
		call->cbs.on_status(call->ud, status);
		call->in_user = 0;
	}
}

static size_t on_curl_header(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	http_call *call = userdata;
	size_t len = size * nmemb;
	if (call->cancelled)
		return 0;
	/* The blank line ends a header block; 1xx blocks are followed by the
	 * real response, so only a final status counts. */
	if ((len == 2 && ptr[0] == '\r' && ptr[1] == '\n') || (len == 1 && ptr[0] == '\n')) {
		long status = 0;
		curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &status);
		if (status >= 200)
			emit_status(call);
	}
	return call->cancelled ? 0 : len;
}

static size_t on_curl_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	http_call *call = userdata;
	size_t len = size * nmemb;
	if (call->cancelled)
		return 0;
	emit_status(call);
	if (call->cancelled)
		return 0;
	if (call->cbs.on_body && len > 0) {
		call->in_user = 1;
		int rc = call->cbs.on_body(call->ud, ptr, len);
		call->in_user = 0;
		if (rc != 0) {
			call->user_abort = 1;
			return 0;
		}
	}
	return call->cancelled ? 0 : len;
}

static int map_result(http_call *call, CURLcode res)
{
	long os_errno = 0;
	switch (res) {
	case CURLE_OK:
		return 0;
	case CURLE_COULDNT_CONNECT:
		curl_easy_getinfo(call->easy, CURLINFO_OS_ERRNO, &os_errno);
		if (os_errno == EHOSTUNREACH || os_errno == ENETUNREACH)
			return -EHOSTUNREACH;
		return -ECONNREFUSED;
	case CURLE_COULDNT_RESOLVE_HOST:
		return -EHOSTUNREACH;
	case CURLE_OPERATION_TIMEDOUT:
		return -ETIMEDOUT;
	case CURLE_OUT_OF_MEMORY:
		return -ENOMEM;
	case CURLE_WEIRD_SERVER_REPLY:
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_BAD_CONTENT_ENCODING:
		return -EPROTO;
	case CURLE_WRITE_ERROR:
	case CURLE_ABORTED_BY_CALLBACK:
		if (call->user_abort)
			return -ECANCELED;
		return -EIO;
	default:
		return -EIO;
	}
}

static void finish_call(http_call *call, CURLcode res)
{
	long status = 0;
	curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &status);
	if (status > 0 && !call->status_sent) {
		emit_status(call);
		if (call->cancelled) {
			call_destroy(call);
			return;
		}
	}
	int code = map_result(call, res);
	char msg[CURL_ERROR_SIZE + 600];
	if (code == 0)
		snprintf(msg, sizeof(msg), "HTTP %ld", status);
	else if (code == -ECANCELED)
		snprintf(msg, sizeof(msg), "%s %s: aborted by the receiver", call->method,
		         call->url);
	else
		snprintf(msg, sizeof(msg), "%s %s: %s", call->method, call->url,
		         call->errbuf[0] ? call->errbuf : curl_easy_strerror(res));
	/* Out of the multi handle before on_done, so on_done may start new
	 * calls or cancel others freely. */
	call_unlink(call);
	curl_multi_remove_handle(call->client->multi, call->easy);
	call->in_multi = 0;
	if (call->cbs.on_done) {
		call->in_user = 1;
		call->cbs.on_done(call->ud, code, status, msg);
	}
	curl_easy_cleanup(call->easy);
	curl_slist_free_all(call->headers);
	free(call->url);
	free(call);
}

static void check_multi_info(http_client *c)
{
	CURLMsg *msg;
	int left;
	while ((msg = curl_multi_info_read(c->multi, &left)) != NULL) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		CURLcode res = msg->data.result;
		char *priv = NULL;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
		http_call *call = (http_call *)priv;
		if (call->cancelled)
			call_destroy(call);
		else
			finish_call(call, res);
	}
}

static void reap_cancelled(http_client *c)
{
	http_call *call = c->calls;
	while (call) {
		http_call *next = call->next;
		if (call->cancelled && !call->in_user)
			call_destroy(call);
		call = next;
	}
}

static void socket_action(http_client *c, curl_socket_t fd, int flags)
{
	int running;
	c->in_curl++;
	curl_multi_socket_action(c->multi, fd, flags, &running);
	c->in_curl--;
	if (c->in_curl == 0) {
		check_multi_info(c);
		reap_cancelled(c);
	}
}

static void on_poll(uv_poll_t *h, int status, int events)
{
	sock_ctx *sc = h->data;
	int flags = 0;
	if (status < 0)
		flags = CURL_CSELECT_ERR;
	else {
		if (events & UV_READABLE)
			flags |= CURL_CSELECT_IN;
		if (events & UV_WRITABLE)
			flags |= CURL_CSELECT_OUT;
	}
	socket_action(sc->client, sc->fd, flags);
}

static void on_timer(uv_timer_t *t)
{
	socket_action(t->data, CURL_SOCKET_TIMEOUT, 0);
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	(void)easy;
	http_client *c = userp;
	sock_ctx *sc = socketp;
	if (what == CURL_POLL_REMOVE) {
		/* curl forgets its socketp for fd itself. */
		if (sc)
			sock_close(c, sc);
		return 0;
	}
	if (!sc) {
		sc = calloc(1, sizeof(*sc));
		if (!sc)
			return -1;
		int rc = uv_poll_init_socket(c->loop, &sc->poll, fd);
		if (rc < 0) {
			log_msg(SOVMESH_LOG_ERROR, "http", "cannot watch socket %d: %s", (int)fd,
			        uv_strerror(rc));
			free(sc);
			return -1;
		}
		sc->poll.data = sc;
		sc->fd = fd;
		sc->client = c;
		sc->next = c->socks;
		if (c->socks)
			c->socks->prev = sc;
		c->socks = sc;
		curl_multi_assign(c->multi, fd, sc);
	}
	int events = 0;
	if (what & CURL_POLL_IN)
		events |= UV_READABLE;
	if (what & CURL_POLL_OUT)
		events |= UV_WRITABLE;
	int rc = uv_poll_start(&sc->poll, events, on_poll);
	if (rc < 0) {
		log_msg(SOVMESH_LOG_ERROR, "http", "cannot watch socket %d: %s", (int)fd,
		        uv_strerror(rc));
		return -1;
	}
	return 0;
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
	(void)multi;
	http_client *c = userp;
	if (c->closing)
		return 0;
	if (timeout_ms < 0)
		uv_timer_stop(&c->timer);
	else
		/* Never call socket_action from here (libcurl forbids it);
		 * a 0 ms timer runs it on the next loop iteration. */
		uv_timer_start(&c->timer, on_timer, (uint64_t)timeout_ms, 0);
	return 0;
}

http_client *http_client_new(uv_loop_t *loop)
{
	pthread_once(&curl_once, curl_init_once);
	if (curl_init_result != CURLE_OK)
		return NULL;
	http_client *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->loop = loop;
	c->multi = curl_multi_init();
	if (!c->multi) {
		free(c);
		return NULL;
	}
	uv_timer_init(loop, &c->timer);
	c->timer.data = c;
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
	return c;
}

void http_client_free(http_client *c, void (*closed)(void *ud), void *ud)
{
	if (!c)
		return;
	c->closing = 1;
	c->closed = closed;
	c->closed_ud = ud;
	while (c->calls)
		call_destroy(c->calls);
	curl_multi_cleanup(c->multi);
	c->multi = NULL;
	/* curl normally tells us to drop each socket; close what is left. */
	while (c->socks)
		sock_close(c, c->socks);
	uv_timer_stop(&c->timer);
	c->pending++;
	uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static int valid_method(const char *m)
{
	size_t n = strlen(m);
	if (n == 0 || n >= sizeof(((http_call *)0)->method))
		return 0;
	for (size_t i = 0; i < n; i++)
		if (m[i] < 'A' || m[i] > 'Z')
			return 0;
	return 1;
}

static int valid_header(const char *h)
{
	return strchr(h, ':') != NULL && strpbrk(h, "\r\n") == NULL && h[0] != ':';
}

static int has_header(const char *const *headers, const char *name)
{
	size_t n = strlen(name);
	for (size_t i = 0; headers && headers[i]; i++)
		if (strncasecmp(headers[i], name, n) == 0 && headers[i][n] == ':')
			return 1;
	return 0;
}

static http_call *start(http_client *c, const char *socket_path, const sovmesh_http_request *req_in,
                        const sovmesh_http_callbacks *cbs_in, void *ud, sovmesh_error *err)
{
	sovmesh_http_request req = {0};
	if (!c || c->closing || !req_in ||
	    req_in->size < offsetof(sovmesh_http_request, url) + sizeof(req.url)) {
		sovmesh_fail(err, -EINVAL, "HTTP request: missing or too small request struct");
		return NULL;
	}
	memcpy(&req, req_in, req_in->size < sizeof(req) ? req_in->size : sizeof(req));
	if (!req.url ||
	    (strncmp(req.url, "http://", 7) != 0 && strncmp(req.url, "https://", 8) != 0)) {
		sovmesh_fail(err, -EINVAL,
		             "HTTP request: URL '%s' must start with http:// or https://",
		             req.url ? req.url : "(null)");
		return NULL;
	}
	const char *method = req.method ? req.method : "GET";
	if (!valid_method(method)) {
		sovmesh_fail(err, -EINVAL, "HTTP request to %s: bad method '%s'", req.url, method);
		return NULL;
	}
	if (req.body_len > 0 && !req.body) {
		sovmesh_fail(err, -EINVAL, "HTTP request to %s: body_len %zu with a NULL body",
		             req.url, req.body_len);
		return NULL;
	}

	http_call *call = calloc(1, sizeof(*call));
	if (!call) {
		sovmesh_fail(err, -ENOMEM, "HTTP request to %s: out of memory", req.url);
		return NULL;
	}
	call->client = c;
	call->ud = ud;
	if (cbs_in)
		memcpy(&call->cbs, cbs_in,
		       cbs_in->size < sizeof(call->cbs) ? cbs_in->size : sizeof(call->cbs));
	snprintf(call->method, sizeof(call->method), "%s", method);
	call->url = strdup(req.url);
	call->easy = curl_easy_init();
	if (!call->url || !call->easy) {
		sovmesh_fail(err, -ENOMEM, "HTTP request to %s: out of memory", req.url);
		goto fail;
	}

	for (size_t i = 0; req.headers && req.headers[i]; i++) {
		if (!valid_header(req.headers[i])) {
			sovmesh_fail(err, -EINVAL, "HTTP request to %s: bad header '%s'", req.url,
			             req.headers[i]);
			goto fail;
		}
		struct curl_slist *l = curl_slist_append(call->headers, req.headers[i]);
		if (!l) {
			sovmesh_fail(err, -ENOMEM, "HTTP request to %s: out of memory", req.url);
			goto fail;
		}
		call->headers = l;
	}
	/* Do not wait a second for "100 Continue" before sending a body. */
	if (!has_header(req.headers, "Expect")) {
		struct curl_slist *l = curl_slist_append(call->headers, "Expect:");
		if (!l) {
			sovmesh_fail(err, -ENOMEM, "HTTP request to %s: out of memory", req.url);
			goto fail;
		}
		call->headers = l;
	}

	CURL *e = call->easy;
	CURLcode cr = CURLE_OK;
#define SETOPT(opt, val)                                                                           \
	do {                                                                                       \
		if (cr == CURLE_OK)                                                                \
			cr = curl_easy_setopt(e, opt, val);                                        \
	} while (0)
	SETOPT(CURLOPT_URL, req.url);
#if LIBCURL_VERSION_NUM >= 0x075500
	SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
#endif
	SETOPT(CURLOPT_NOSIGNAL, 1L);
	SETOPT(CURLOPT_PRIVATE, (char *)call);
	SETOPT(CURLOPT_ERRORBUFFER, call->errbuf);
	SETOPT(CURLOPT_WRITEFUNCTION, on_curl_write);
	SETOPT(CURLOPT_WRITEDATA, call);
	SETOPT(CURLOPT_HEADERFUNCTION, on_curl_header);
	SETOPT(CURLOPT_HEADERDATA, call);
	SETOPT(CURLOPT_HTTPHEADER, call->headers);
	if (req.timeout_ms)
		SETOPT(CURLOPT_TIMEOUT_MS, (long)req.timeout_ms);
	if (req.connect_timeout_ms)
		SETOPT(CURLOPT_CONNECTTIMEOUT_MS, (long)req.connect_timeout_ms);
	if (socket_path)
		SETOPT(CURLOPT_UNIX_SOCKET_PATH, socket_path);
	if (strcmp(method, "GET") == 0 && !req.body) {
		SETOPT(CURLOPT_HTTPGET, 1L);
	} else if (strcmp(method, "HEAD") == 0) {
		SETOPT(CURLOPT_NOBODY, 1L);
	} else {
		if (strcmp(method, "POST") != 0)
			SETOPT(CURLOPT_CUSTOMREQUEST, method);
		if (req.body || strcmp(method, "POST") == 0) {
			/* Size first: COPYPOSTFIELDS then copies exactly that
			 * many bytes, so binary bodies work. */
			SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req.body_len);
			SETOPT(CURLOPT_COPYPOSTFIELDS, req.body ? (const char *)req.body : "");
		}
	}
#undef SETOPT
	if (cr != CURLE_OK) {
		sovmesh_fail(err, cr == CURLE_OUT_OF_MEMORY ? -ENOMEM : -EINVAL,
		             "HTTP request to %s: %s", req.url, curl_easy_strerror(cr));
		goto fail;
	}
	CURLMcode mr = curl_multi_add_handle(c->multi, e);
	if (mr != CURLM_OK) {
		sovmesh_fail(err, mr == CURLM_OUT_OF_MEMORY ? -ENOMEM : -EIO,
		             "HTTP request to %s: %s", req.url, curl_multi_strerror(mr));
		goto fail;
	}
	call->in_multi = 1;
	call->next = c->calls;
	if (c->calls)
		c->calls->prev = call;
	c->calls = call;
	return call;

fail:
	if (call->easy)
		curl_easy_cleanup(call->easy);
	curl_slist_free_all(call->headers);
	free(call->url);
	free(call);
	return NULL;
}

http_call *http_client_start(http_client *c, const sovmesh_http_request *req,
                             const sovmesh_http_callbacks *cbs, void *ud, sovmesh_error *err)
{
	return start(c, NULL, req, cbs, ud, err);
}

http_call *http_client_start_unix(http_client *c, const char *socket_path,
                                  const sovmesh_http_request *req,
                                  const sovmesh_http_callbacks *cbs, void *ud, sovmesh_error *err)
{
	if (!socket_path) {
		sovmesh_fail(err, -EINVAL, "HTTP request: no Unix socket path");
		return NULL;
	}
	return start(c, socket_path, req, cbs, ud, err);
}

void http_client_cancel(http_call *call)
{
	if (!call || call->cancelled)
		return;
	call->cancelled = 1;
	/* Inside curl or inside this call's own callback: the call is reaped
	 * when the stack unwinds. */
	if (call->client->in_curl > 0 || call->in_user)
		return;
	call_destroy(call);
}

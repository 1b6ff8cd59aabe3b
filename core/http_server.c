/*
 * HTTP/1.1 server on libuv; llhttp does all the parsing.
 *
 * Per connection one request is handled at a time: llhttp is paused in
 * on_message_complete, the handler runs outside the parser, and parsing
 * of whatever followed (pipelined requests) resumes only once the last
 * byte of the response has been handed to the kernel.  While a response
 * is pending the connection keeps reading, so a disconnect is noticed
 * and the handler's cancel callback runs; the bytes read meanwhile are
 * buffered (bounded) for the next request.
 *
 * Bytes enter through conn_feed() and leave through conn_write(); on a
 * TLS listener (the peer port) a tls_stream sits between the socket and
 * those two points: on_read hands it ciphertext, it hands back plaintext
 * (conn_input), and conn_write encrypts through it.
 */
#include "http_server.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <jansson.h>
#include <llhttp.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "identity.h"
#include "log.h"

#define DEFAULT_MAX_HEADER_BYTES (16u * 1024u)
#define DEFAULT_MAX_HEADERS      100u
#define DEFAULT_MAX_BODY_BYTES   (1024u * 1024u)
#define DEFAULT_IDLE_MS          60000u
/* After an error or Connection: close, how long to drain what the client
 * still sends so that closing does not reset the connection before the
 * client has read our answer. */
#define LINGER_MS 2000u
/* Pipelined bytes buffered while a response is pending; beyond it reading
 * pauses until the parser catches up. */
#define PIPELINE_BUFFER_MAX (64u * 1024u)
#define READ_BUFFER_SIZE    (16u * 1024u)
#define LISTEN_BACKLOG      128

typedef struct bytes {
	char *data;
	size_t len, cap;
} bytes;

typedef struct http_conn http_conn;

typedef union stream_handle {
	uv_handle_t handle;
	uv_stream_t stream;
	uv_pipe_t pipe;
	uv_tcp_t tcp;
} stream_handle;

struct http_server {
	uv_loop_t *loop;
	stream_handle listener;
	bool is_unix;
	http_server_options opts;
	char *name;
	char *socket_path; /* unix: to unlink on close, if still ours */
	dev_t sock_dev;
	ino_t sock_ino;
	int port;
	http_conn *conns; /* doubly linked, includes closing ones */
	size_t nconns;
	uint64_t next_conn_id;
	bool closing;
	bool listener_open; /* the handle is initialized and not yet closed */
	bool listener_closing;
	bool listening;
	bool tls;
	http_tls_config tls_cfg;
	http_server_closed_fn close_cb;
	void *close_ud;
};

enum conn_state {
	CONN_READING,  /* parsing a request (or idle between requests) */
	CONN_HANDLING, /* the handler owns the response */
	CONN_FLUSHING, /* response complete, last write not done yet */
	CONN_LINGER,   /* write side shut down, draining input */
	CONN_CLOSING,
};

typedef struct header_span {
	size_t name_off, value_off;
} header_span;

struct http_conn {
	http_server *srv;
	http_conn *prev, *next;
	stream_handle h;
	uv_timer_t timer;
	uv_shutdown_t shutdown_req;
	int open_handles;
	uint64_t id;
	enum conn_state state;
	bool reading;
	bool broken; /* a write failed; closing on the next loop turn */
	bool discard_input;
	bool keep_alive; /* for the request being answered */
	llhttp_t parser;
	bytes in; /* unparsed input (pipelined) */
	/* The request being parsed. */
	bytes url;
	bytes hdr; /* "name\0value\0" pairs */
	header_span *spans;
	size_t nspans, spans_cap;
	bool in_field;
	size_t header_bytes;
	bytes body;
	bool request_ready;
	int error_status;
	const char *error_msg;
	http_response *resp; /* not a reference: resp->conn points back */
	bool has_cred;
	pid_t pid;
	uid_t uid;
	gid_t gid;
	char peer_addr[64];
	tls_stream *tls; /* TLS listeners only */
	bool revoked;
	char rbuf[READ_BUFFER_SIZE];
};

enum resp_state { RESP_NEW, RESP_STREAMING, RESP_DONE };

struct http_response {
	int refs;
	http_conn *conn; /* NULL once complete or cancelled */
	http_request req;
	char *target, *path, *hdrbuf, *body;
	http_header *headers;
	char peer_addr[64];
	char peer_fp[IDENTITY_FP_HEX_LEN + 1];
	bytes extra; /* "Name: value\r\n" lines from add_header */
	enum resp_state state;
	bool cancelled;
	bool head;
	bool chunked;
	bool keep_alive;
	http_cancel_fn cancel_cb;
	void *cancel_ud;
};

typedef struct write_req {
	uv_write_t req;
	http_conn *conn;
	bool last;
	size_t len;
	char data[];
} write_req;

static const char *srv_name(const http_server *srv)
{
	return srv->name ? srv->name : "http";
}

/* --- byte buffers --- */

static int bytes_reserve(bytes *b, size_t extra)
{
	/* +1 keeps room for a terminating NUL. */
	if (b->len + extra + 1 <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + extra + 1)
		cap *= 2;
	char *p = realloc(b->data, cap);
	if (!p)
		return -ENOMEM;
	b->data = p;
	b->cap = cap;
	return 0;
}

static int bytes_append(bytes *b, const void *p, size_t n)
{
	if (bytes_reserve(b, n) < 0)
		return -ENOMEM;
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return 0;
}

static int bytes_printf(bytes *b, const char *fmt, ...) SOVMESH_PRINTF(2, 3);
static int bytes_printf(bytes *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || bytes_reserve(b, (size_t)n) < 0)
		return -ENOMEM;
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
	return 0;
}

static void bytes_free(bytes *b)
{
	free(b->data);
	*b = (bytes){0};
}

/* Hand the buffer over: returns the data (never NULL unless out of
 * memory) and leaves *b empty. */
static char *bytes_take(bytes *b)
{
	if (!b->data && bytes_reserve(b, 0) < 0)
		return NULL;
	b->data[b->len] = '\0';
	char *p = b->data;
	*b = (bytes){0};
	return p;
}

/* --- status phrases --- */

static const struct {
	int status;
	const char *reason;
} reasons[] = {
    {100, "Continue"},
    {200, "OK"},
    {201, "Created"},
    {202, "Accepted"},
    {204, "No Content"},
    {301, "Moved Permanently"},
    {302, "Found"},
    {304, "Not Modified"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {408, "Request Timeout"},
    {409, "Conflict"},
    {410, "Gone"},
    {411, "Length Required"},
    {413, "Content Too Large"},
    {415, "Unsupported Media Type"},
    {422, "Unprocessable Content"},
    {429, "Too Many Requests"},
    {431, "Request Header Fields Too Large"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {502, "Bad Gateway"},
    {503, "Service Unavailable"},
    {504, "Gateway Timeout"},
};

const char *http_status_reason(int status)
{
	for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
		if (reasons[i].status == status)
			return reasons[i].reason;
	return "Unknown";
}

static bool status_has_body(int status)
{
	return !(status < 200 || status == 204 || status == 304);
}

/* --- connection: closing --- */

static void server_maybe_finish_close(http_server *srv);

static void conn_free(http_conn *conn)
{
	http_server *srv = conn->srv;
	if (conn->prev)
		conn->prev->next = conn->next;
	else
		srv->conns = conn->next;
	if (conn->next)
		conn->next->prev = conn->prev;
	srv->nconns--;
	bytes_free(&conn->in);
	bytes_free(&conn->url);
	bytes_free(&conn->hdr);
	bytes_free(&conn->body);
	free(conn->spans);
	tls_stream_free(conn->tls);
	free(conn);
	server_maybe_finish_close(srv);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
	http_conn *conn = h->data;
	if (--conn->open_handles == 0)
		conn_free(conn);
}

/* Close both handles; a pending response is cancelled.  Idempotent. */
static void conn_close(http_conn *conn)
{
	if (conn->state == CONN_CLOSING)
		return;
	conn->state = CONN_CLOSING;
	uv_timer_stop(&conn->timer);
	uv_close((uv_handle_t *)&conn->timer, on_conn_handle_closed);
	uv_close(&conn->h.handle, on_conn_handle_closed);

	http_response *resp = conn->resp;
	if (resp) {
		conn->resp = NULL;
		resp->conn = NULL;
		resp->cancelled = true;
		/* The callee may drop its reference here; resp is not touched
		 * after the call. */
		if (resp->cancel_cb)
			resp->cancel_cb(resp->cancel_ud, resp);
	}
}

static void on_timer(uv_timer_t *t)
{
	http_conn *conn = t->data;
	/* Idle, linger, or a failed write (conn_close_soon). */
	if (conn->state == CONN_READING)
		log_debug("[%s] connection %llu idle too long, closing", srv_name(conn->srv),
		          (unsigned long long)conn->id);
	conn_close(conn);
}

/* (Re)arm the connection's one timer, or stop it with ms 0; a pending
 * close after a failed write takes precedence. */
static void conn_timer(http_conn *conn, unsigned ms)
{
	if (conn->broken || conn->state == CONN_CLOSING)
		return;
	if (ms)
		uv_timer_start(&conn->timer, on_timer, ms, 0);
	else
		uv_timer_stop(&conn->timer);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
	http_conn *conn = req->data;
	if (status < 0)
		conn_close(conn);
}

static void conn_start_reading(http_conn *conn);

/* Stop sending, read and discard until the client closes, or LINGER_MS. */
static void conn_linger(http_conn *conn)
{
	if (conn->state == CONN_CLOSING)
		return;
	conn->state = CONN_LINGER;
	conn->discard_input = true;
	tls_stream_bye(conn->tls);
	conn->shutdown_req.data = conn;
	if (uv_shutdown(&conn->shutdown_req, &conn->h.stream, on_shutdown) < 0) {
		conn_close(conn);
		return;
	}
	conn_timer(conn, LINGER_MS);
	conn_start_reading(conn);
}

/* --- connection: writing --- */

static void on_response_flushed(http_conn *conn);

static void write_done(write_req *w, int status)
{
	http_conn *conn = w->conn;
	bool last = w->last;
	free(w);
	if (conn->state == CONN_CLOSING)
		return;
	if (status < 0) {
		log_debug("[%s] connection %llu: write failed: %s", srv_name(conn->srv),
		          (unsigned long long)conn->id, uv_strerror(status));
		conn_close(conn);
		return;
	}
	if (last)
		on_response_flushed(conn);
}

static void on_write(uv_write_t *req, int status)
{
	write_done((write_req *)req, status);
}

static void on_tls_write(void *ud, int status)
{
	write_done(ud, status);
}

/* Close on the next loop turn: the caller may be a handler inside an
 * http_response_* call, which must not see its cancel callback run (and
 * perhaps free the response) before that call returns. */
static void conn_close_soon(http_conn *conn)
{
	if (conn->state == CONN_CLOSING || conn->broken)
		return;
	conn->broken = true;
	uv_timer_start(&conn->timer, on_timer, 0, 0);
}

/* Queue the concatenation of `parts` (copied).  `last` marks the final
 * write of a response.  On failure the connection is closed soon. */
static int conn_write(http_conn *conn, const uv_buf_t *parts, size_t nparts, bool last)
{
	if (conn->broken)
		return -ECONNRESET;
	size_t len = 0;
	for (size_t i = 0; i < nparts; i++)
		len += parts[i].len;
	write_req *w = malloc(sizeof(*w) + len + 1);
	if (!w) {
		conn_close_soon(conn);
		return -ENOMEM;
	}
	w->conn = conn;
	w->last = last;
	w->len = len;
	size_t off = 0;
	for (size_t i = 0; i < nparts; i++) {
		if (parts[i].len)
			memcpy(w->data + off, parts[i].base, parts[i].len);
		off += parts[i].len;
	}
	if (conn->tls) {
		/* Encrypted straight from w->data; w only carries the callback. */
		int r = tls_stream_write(conn->tls, w->data, len, on_tls_write, w);
		if (r < 0) {
			free(w);
			conn_close_soon(conn);
		}
		return r;
	}
	uv_buf_t buf = uv_buf_init(w->data, (unsigned)len);
	int r = uv_write(&w->req, &conn->h.stream, &buf, 1, on_write);
	if (r < 0) {
		free(w);
		conn_close_soon(conn);
		return r == UV_EPIPE ? -ECONNRESET : r;
	}
	return 0;
}

/* Status line and headers into `out`.  content_len < 0: no Content-Length. */
static int build_head(bytes *out, int minor, int status, const char *content_type,
                      const bytes *extra, bool chunked, long long content_len, bool keep_alive)
{
	int r = bytes_printf(out, "HTTP/1.%d %d %s\r\n", minor ? 1 : 0, status,
	                     http_status_reason(status));
	if (!r && extra && extra->len)
		r = bytes_append(out, extra->data, extra->len);
	if (!r && content_type)
		r = bytes_printf(out, "Content-Type: %s\r\n", content_type);
	if (!r && chunked)
		r = bytes_printf(out, "Transfer-Encoding: chunked\r\n");
	if (!r && content_len >= 0)
		r = bytes_printf(out, "Content-Length: %lld\r\n", content_len);
	if (!r && !keep_alive)
		r = bytes_printf(out, "Connection: close\r\n");
	else if (!r && !minor)
		r = bytes_printf(out, "Connection: keep-alive\r\n");
	if (!r)
		r = bytes_append(out, "\r\n", 2);
	return r;
}

/* Answer a request the parser rejected, then close. */
static void conn_fail(http_conn *conn, int status, const char *message)
{
	if (conn->state == CONN_CLOSING)
		return;
	json_t *j = json_pack("{s:s}", "error", message);
	char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	size_t body_len = body ? strlen(body) : 0;
	bytes head = {0};
	log_debug("[%s] connection %llu: %d %s", srv_name(conn->srv), (unsigned long long)conn->id,
	          status, message);
	conn->keep_alive = false;
	conn->discard_input = true;
	conn->state = CONN_FLUSHING;
	conn_timer(conn, 0);
	if (build_head(&head, 1, status, "application/json", NULL, false, (long long)body_len + 1,
	               false) < 0) {
		conn_close(conn);
	} else {
		uv_buf_t parts[3] = {uv_buf_init(head.data, (unsigned)head.len),
		                     uv_buf_init(body ? body : "", (unsigned)body_len),
		                     uv_buf_init("\n", 1)};
		conn_write(conn, parts, 3, true);
	}
	bytes_free(&head);
	free(body);
}

/* --- connection: reading and parsing --- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)suggested;
	http_conn *conn = h->data;
	/* Reads are sequential, so one buffer per connection suffices. */
	*buf = uv_buf_init(conn->rbuf, sizeof(conn->rbuf));
}

static void conn_feed(http_conn *conn, const char *data, size_t len);
static bool conn_input(http_conn *conn, const char *data, size_t len);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void conn_start_reading(http_conn *conn)
{
	if (conn->reading || conn->state == CONN_CLOSING)
		return;
	if (uv_read_start(&conn->h.stream, on_alloc, on_read) < 0) {
		conn_close(conn);
		return;
	}
	conn->reading = true;
}

static void conn_stop_reading(http_conn *conn)
{
	if (!conn->reading)
		return;
	uv_read_stop(&conn->h.stream);
	conn->reading = false;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	http_conn *conn = s->data;
	if (nread == 0 || conn->state == CONN_CLOSING)
		return;
	if (nread < 0) {
		/* EOF or error: the client is gone (a client that only shuts
		 * down its sending side is taken as gone as well). */
		if (nread != UV_EOF)
			log_debug("[%s] connection %llu: read failed: %s", srv_name(conn->srv),
			          (unsigned long long)conn->id, uv_strerror((int)nread));
		conn_close(conn);
		return;
	}
	if (conn->discard_input)
		return;
	if (!conn->tls) {
		conn_input(conn, buf->base, (size_t)nread);
		return;
	}
	int r = tls_stream_feed(conn->tls, buf->base, (size_t)nread);
	if (r < 0 && conn->state != CONN_CLOSING) {
		/* Refusals are worth a line: someone unpaired is knocking. */
		if (tls_stream_established(conn->tls) || r == -ECONNRESET)
			log_debug("[%s] connection %llu from %s: %s", srv_name(conn->srv),
			          (unsigned long long)conn->id, conn->peer_addr,
			          tls_stream_error(conn->tls));
		else
			log_info("[%s] refused a TLS connection from %s: %s", srv_name(conn->srv),
			         conn->peer_addr, tls_stream_error(conn->tls));
		conn_close(conn);
	} else if (r == 1) {
		/* close_notify: the client is gone, as with EOF. */
		conn_close(conn);
	}
}

/* Plaintext from the client (TLS or not).  False once nothing more is
 * wanted from this read. */
static bool conn_input(http_conn *conn, const char *data, size_t len)
{
	if (conn->discard_input || conn->state == CONN_CLOSING)
		return false;
	if (conn->state == CONN_READING) {
		conn_feed(conn, data, len);
		return conn->state != CONN_CLOSING;
	}
	if (bytes_append(&conn->in, data, len) < 0) {
		conn_close(conn);
		return false;
	}
	if (conn->in.len >= PIPELINE_BUFFER_MAX)
		conn_stop_reading(conn);
	return true;
}

static bool on_tls_data(void *ud, const char *data, size_t len)
{
	return conn_input(ud, data, len);
}

static void conn_dispatch(http_conn *conn);

/* Feed input to llhttp.  Only in CONN_READING with the parser running. */
static void conn_feed(http_conn *conn, const char *data, size_t len)
{
	llhttp_errno_t e = llhttp_execute(&conn->parser, data, len);
	if (e == HPE_OK || conn->state == CONN_CLOSING)
		return;
	if ((e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) && conn->request_ready) {
		if (e == HPE_PAUSED) {
			/* Keep what follows for the next request. */
			const char *pos = llhttp_get_error_pos(&conn->parser);
			size_t used = pos ? (size_t)(pos - data) : len;
			if (used < len && bytes_append(&conn->in, data + used, len - used) < 0) {
				conn_close(conn);
				return;
			}
		}
		conn_dispatch(conn);
		return;
	}
	if (e == HPE_PAUSED_UPGRADE) {
		conn_fail(conn, 400, "protocol upgrade is not supported");
		return;
	}
	if (conn->error_status) {
		conn_fail(conn, conn->error_status, conn->error_msg);
		return;
	}
	char msg[256];
	snprintf(msg, sizeof(msg), "malformed HTTP request: %s",
	         llhttp_get_error_reason(&conn->parser) ? llhttp_get_error_reason(&conn->parser)
	                                                : llhttp_errno_name(e));
	conn_fail(conn, 400, msg);
}

/* Parse what arrived while the previous response was pending. */
static void conn_feed_buffered(http_conn *conn)
{
	bytes pending = conn->in;
	conn->in = (bytes){0};
	if (pending.len)
		conn_feed(conn, pending.data, pending.len);
	bytes_free(&pending);
}

static void on_response_flushed(http_conn *conn)
{
	if (!conn->keep_alive || conn->srv->closing) {
		conn_linger(conn);
		return;
	}
	conn->state = CONN_READING;
	llhttp_resume(&conn->parser);
	conn_timer(conn, conn->srv->opts.idle_timeout_ms);
	conn_feed_buffered(conn);
	if (conn->state == CONN_READING)
		conn_start_reading(conn);
}

static http_conn *parser_conn(llhttp_t *p)
{
	return p->data;
}

static int reject(http_conn *conn, int status, const char *msg)
{
	conn->error_status = status;
	conn->error_msg = msg;
	return HPE_USER;
}

static int count_header_bytes(http_conn *conn, size_t n)
{
	conn->header_bytes += n;
	if (conn->header_bytes > conn->srv->opts.max_header_bytes)
		return reject(conn, 431, "request headers too large");
	return 0;
}

static int on_message_begin(llhttp_t *p)
{
	http_conn *conn = parser_conn(p);
	conn->url.len = 0;
	conn->hdr.len = 0;
	conn->body.len = 0;
	conn->nspans = 0;
	conn->in_field = false;
	conn->header_bytes = 0;
	conn->request_ready = false;
	return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
	http_conn *conn = parser_conn(p);
	if (count_header_bytes(conn, len))
		return HPE_USER;
	return bytes_append(&conn->url, at, len) ? reject(conn, 500, "out of memory") : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
	http_conn *conn = parser_conn(p);
	/* ": " and CRLF count too, so that many empty headers add up. */
	if (count_header_bytes(conn, len + (conn->in_field ? 0 : 4)))
		return HPE_USER;
	if (!conn->in_field) {
		if (conn->nspans >= conn->srv->opts.max_headers)
			return reject(conn, 431, "too many request headers");
		if (conn->nspans == conn->spans_cap) {
			size_t cap = conn->spans_cap ? conn->spans_cap * 2 : 16;
			header_span *s = realloc(conn->spans, cap * sizeof(*s));
			if (!s)
				return reject(conn, 500, "out of memory");
			conn->spans = s;
			conn->spans_cap = cap;
		}
		conn->spans[conn->nspans].name_off = conn->hdr.len;
		conn->spans[conn->nspans].value_off = SIZE_MAX;
		conn->in_field = true;
	}
	return bytes_append(&conn->hdr, at, len) ? reject(conn, 500, "out of memory") : 0;
}

static int on_header_field_complete(llhttp_t *p)
{
	http_conn *conn = parser_conn(p);
	if (!conn->in_field)
		return 0;
	if (bytes_append(&conn->hdr, "", 1))
		return reject(conn, 500, "out of memory");
	conn->spans[conn->nspans].value_off = conn->hdr.len;
	return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
	http_conn *conn = parser_conn(p);
	if (count_header_bytes(conn, len))
		return HPE_USER;
	return bytes_append(&conn->hdr, at, len) ? reject(conn, 500, "out of memory") : 0;
}

static int on_header_value_complete(llhttp_t *p)
{
	http_conn *conn = parser_conn(p);
	if (!conn->in_field)
		return 0;
	/* Trailing whitespace is not part of the value (RFC 9110 5.5). */
	while (
	    conn->hdr.len > conn->spans[conn->nspans].value_off &&
	    (conn->hdr.data[conn->hdr.len - 1] == ' ' || conn->hdr.data[conn->hdr.len - 1] == '\t'))
		conn->hdr.len--;
	if (bytes_append(&conn->hdr, "", 1))
		return reject(conn, 500, "out of memory");
	conn->nspans++;
	conn->in_field = false;
	return 0;
}

static const char *conn_header(http_conn *conn, const char *name)
{
	for (size_t i = 0; i < conn->nspans; i++)
		if (strcasecmp(conn->hdr.data + conn->spans[i].name_off, name) == 0)
			return conn->hdr.data + conn->spans[i].value_off;
	return NULL;
}

static int on_headers_complete(llhttp_t *p)
{
	http_conn *conn = parser_conn(p);
	if ((p->flags & F_CONTENT_LENGTH) && p->content_length > conn->srv->opts.max_body_bytes) {
		reject(conn, 413, "request body too large");
		return -1;
	}
	bool has_body = (p->flags & F_CHUNKED) || p->content_length > 0;
	const char *expect = conn_header(conn, "Expect");
	if (has_body && expect && strcasecmp(expect, "100-continue") == 0 && p->http_minor >= 1) {
		/* Saves clients that wait for it (curl) a second of delay. */
		static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
		uv_buf_t part = uv_buf_init((char *)cont, sizeof(cont) - 1);
		if (conn_write(conn, &part, 1, false) < 0)
			return -1;
	}
	return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
	http_conn *conn = parser_conn(p);
	if (conn->body.len + len > conn->srv->opts.max_body_bytes)
		return reject(conn, 413, "request body too large");
	return bytes_append(&conn->body, at, len) ? reject(conn, 500, "out of memory") : 0;
}

static int on_message_complete(llhttp_t *p)
{
	http_conn *conn = parser_conn(p);
	conn->request_ready = true;
	/* The handler runs outside llhttp_execute(), see conn_feed(). */
	return HPE_PAUSED;
}

static const llhttp_settings_t parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Move the parsed request into a new response object. */
static http_response *response_new(http_conn *conn)
{
	http_response *resp = calloc(1, sizeof(*resp));
	if (!resp)
		return NULL;
	resp->refs = 1;
	size_t n = conn->nspans;
	resp->headers = calloc(n ? n : 1, sizeof(*resp->headers));
	resp->target = bytes_take(&conn->url);
	resp->hdrbuf = bytes_take(&conn->hdr);
	size_t body_len = conn->body.len;
	resp->body = bytes_take(&conn->body);
	const char *q = resp->target ? strchr(resp->target, '?') : NULL;
	resp->path = resp->target ? strndup(resp->target,
	                                    q ? (size_t)(q - resp->target) : strlen(resp->target))
	                          : NULL;
	if (!resp->headers || !resp->target || !resp->hdrbuf || !resp->body || !resp->path) {
		free(resp->headers);
		free(resp->target);
		free(resp->hdrbuf);
		free(resp->body);
		free(resp->path);
		free(resp);
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		resp->headers[i].name = resp->hdrbuf + conn->spans[i].name_off;
		resp->headers[i].value = resp->hdrbuf + conn->spans[i].value_off;
	}
	conn->nspans = 0;
	snprintf(resp->peer_addr, sizeof(resp->peer_addr), "%s", conn->peer_addr);

	http_request *r = &resp->req;
	r->method = llhttp_method_name((llhttp_method_t)llhttp_get_method(&conn->parser));
	r->target = resp->target;
	r->path = resp->path;
	r->query = q ? q + 1 : "";
	r->headers = resp->headers;
	r->nheaders = n;
	r->body = resp->body;
	r->body_len = body_len;
	r->http_major = llhttp_get_http_major(&conn->parser);
	r->http_minor = llhttp_get_http_minor(&conn->parser);
	r->conn_id = conn->id;
	r->has_cred = conn->has_cred;
	r->pid = conn->pid;
	r->uid = conn->uid;
	r->gid = conn->gid;
	r->peer_addr = resp->peer_addr;
	const uint8_t *fp = conn->tls ? tls_stream_peer_fingerprint(conn->tls) : NULL;
	if (fp) {
		identity_fp_to_hex(fp, resp->peer_fp);
		r->peer_fingerprint = resp->peer_fp;
	}
	resp->head = strcmp(r->method, "HEAD") == 0;
	return resp;
}

static void conn_dispatch(http_conn *conn)
{
	http_server *srv = conn->srv;
	conn->request_ready = false;
	conn_timer(conn, 0);
	conn->keep_alive = llhttp_should_keep_alive(&conn->parser) &&
	                   !llhttp_get_upgrade(&conn->parser) && !srv->closing;
	if (!conn->keep_alive)
		conn->discard_input = true;
	http_response *resp = response_new(conn);
	if (!resp) {
		conn_fail(conn, 500, "out of memory");
		return;
	}
	resp->keep_alive = conn->keep_alive;
	resp->conn = conn;
	conn->resp = resp;
	conn->state = CONN_HANDLING;
	/* Keep reading: a disconnect must reach the handler as a cancel. */
	if (!conn->reading && conn->in.len < PIPELINE_BUFFER_MAX)
		conn_start_reading(conn);
	if (srv->opts.handler)
		srv->opts.handler(srv->opts.handler_ud, &resp->req, resp);
	else
		http_response_send_error(resp, 503, "this server has no request handler yet");
}

/* --- accepting --- */

static void conn_fill_peer(http_conn *conn)
{
	if (conn->srv->is_unix) {
		snprintf(conn->peer_addr, sizeof(conn->peer_addr), "unix");
		int fd = -1;
		struct ucred cred;
		socklen_t len = sizeof(cred);
		if (uv_fileno(&conn->h.handle, &fd) == 0 &&
		    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
			conn->has_cred = true;
			conn->pid = cred.pid;
			conn->uid = cred.uid;
			conn->gid = cred.gid;
		}
		return;
	}
	struct sockaddr_storage ss;
	int len = sizeof(ss);
	char ip[INET6_ADDRSTRLEN] = "?";
	snprintf(conn->peer_addr, sizeof(conn->peer_addr), "?");
	if (uv_tcp_getpeername(&conn->h.tcp, (struct sockaddr *)&ss, &len) < 0)
		return;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
		uv_ip4_name(a, ip, sizeof(ip));
		snprintf(conn->peer_addr, sizeof(conn->peer_addr), "%s:%u", ip, ntohs(a->sin_port));
	} else if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
		uv_ip6_name(a, ip, sizeof(ip));
		snprintf(conn->peer_addr, sizeof(conn->peer_addr), "[%s]:%u", ip,
		         ntohs(a->sin6_port));
	}
}

static void on_connection(uv_stream_t *listener, int status)
{
	http_server *srv = listener->data;
	if (status < 0) {
		log_warning("[%s] accept failed: %s", srv_name(srv), uv_strerror(status));
		return;
	}
	if (srv->closing)
		return;
	http_conn *conn = calloc(1, sizeof(*conn));
	if (!conn) {
		log_warning("[%s] out of memory accepting a connection", srv_name(srv));
		return;
	}
	conn->srv = srv;
	conn->id = ++srv->next_conn_id;
	if (srv->is_unix)
		uv_pipe_init(srv->loop, &conn->h.pipe, 0);
	else
		uv_tcp_init(srv->loop, &conn->h.tcp);
	uv_timer_init(srv->loop, &conn->timer);
	conn->h.handle.data = conn;
	conn->timer.data = conn;
	conn->open_handles = 2;
	conn->next = srv->conns;
	if (srv->conns)
		srv->conns->prev = conn;
	srv->conns = conn;
	srv->nconns++;
	conn->state = CONN_READING;

	int r = uv_accept(listener, &conn->h.stream);
	if (r < 0) {
		log_warning("[%s] accept failed: %s", srv_name(srv), uv_strerror(r));
		conn_close(conn);
		return;
	}
	/* Headers and each chunk go out as separate small writes; without
	 * this, Nagle holds the second one for the client's delayed ACK
	 * (~40 ms per answer). */
	if (!srv->is_unix)
		uv_tcp_nodelay(&conn->h.tcp, 1);
	conn_fill_peer(conn);
	if (srv->tls) {
		tls_stream_config tc = {
		    .is_server = true,
		    .creds = srv->tls_cfg.creds,
		    .pin_ok = srv->tls_cfg.pin_ok,
		    .pin_ud = srv->tls_cfg.pin_ud,
		    .priority = srv->tls_cfg.priority,
		};
		static const tls_stream_callbacks tcbs = {.on_data = on_tls_data};
		r = tls_stream_new(&conn->h.stream, &tc, &tcbs, conn, &conn->tls);
		if (r == 0)
			r = tls_stream_start(conn->tls);
		if (r < 0) {
			log_warning("[%s] cannot start TLS for %s: %s", srv_name(srv),
			            conn->peer_addr, strerror(-r));
			conn_close(conn);
			return;
		}
	}
	llhttp_init(&conn->parser, HTTP_REQUEST, &parser_settings);
	conn->parser.data = conn;
	conn_timer(conn, srv->opts.idle_timeout_ms);
	conn_start_reading(conn);
}

/* --- listening --- */

int http_server_new(uv_loop_t *loop, const http_server_options *opts, http_server **out)
{
	if (!loop || !out)
		return -EINVAL;
	http_server *srv = calloc(1, sizeof(*srv));
	if (!srv)
		return -ENOMEM;
	srv->loop = loop;
	if (opts)
		srv->opts = *opts;
	srv->port = -1;
	if (!srv->opts.max_header_bytes)
		srv->opts.max_header_bytes = DEFAULT_MAX_HEADER_BYTES;
	if (!srv->opts.max_headers)
		srv->opts.max_headers = DEFAULT_MAX_HEADERS;
	if (!srv->opts.max_body_bytes)
		srv->opts.max_body_bytes = DEFAULT_MAX_BODY_BYTES;
	if (!srv->opts.idle_timeout_ms)
		srv->opts.idle_timeout_ms = DEFAULT_IDLE_MS;
	srv->name = strdup(srv->opts.name ? srv->opts.name : "http");
	if (!srv->name) {
		free(srv);
		return -ENOMEM;
	}
	srv->opts.name = srv->name;
	*out = srv;
	return 0;
}

static void server_free(http_server *srv)
{
	free(srv->socket_path);
	free(srv->name);
	free(srv);
}

/* 0 when something accepts connections on `path`, else -errno
 * (-ECONNREFUSED: a socket file nobody listens on). */
static int probe_unix(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	int r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	int e = r < 0 ? errno : 0;
	close(fd);
	/* EAGAIN: the listener's backlog is full, so it is alive. */
	if (r == 0 || e == EAGAIN || e == EINPROGRESS)
		return 0;
	return -e;
}

static int open_unix_listener(const char *path, int *fd_out, struct stat *st_out,
                              sovmesh_error *err)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t plen = strlen(path);
	if (plen == 0 || plen >= sizeof(sa.sun_path))
		return sovmesh_fail(
		    err, -ENAMETOOLONG,
		    "cannot listen on %s: a unix socket path must be 1 to %zu bytes long", path,
		    sizeof(sa.sun_path) - 1);
	memcpy(sa.sun_path, path, plen + 1);

	struct stat st;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return sovmesh_fail(
			    err, -EEXIST,
			    "cannot listen on %s: the file exists and is not a socket; "
			    "refusing to replace it",
			    path);
		int r = probe_unix(path);
		if (r == 0)
			return sovmesh_fail(
			    err, -EADDRINUSE,
			    "cannot listen on %s: another server (a running sovmeshd?) "
			    "is already listening there",
			    path);
		if (r != -ECONNREFUSED)
			return sovmesh_fail(err, r,
			                    "cannot listen on %s: checking the existing socket: %s",
			                    path, strerror(-r));
		if (unlink(path) < 0 && errno != ENOENT)
			return sovmesh_fail(err, -errno, "cannot remove the stale socket %s: %s",
			                    path, strerror(errno));
		log_info("removed stale socket %s (nothing was listening on it)", path);
	} else if (errno != ENOENT) {
		return sovmesh_fail(err, -errno, "cannot listen on %s: %s", path, strerror(errno));
	}

	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return sovmesh_fail(err, -errno, "cannot create a unix socket for %s: %s", path,
		                    strerror(errno));
	/* The umask makes the socket owner-only from the moment it exists;
	 * the chmod below is for file systems that ignore it. */
	mode_t old = umask(0177);
	int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	int e = errno;
	umask(old);
	if (r < 0) {
		close(fd);
		return sovmesh_fail(err, -e, "cannot bind %s: %s", path, strerror(e));
	}
	if (chmod(path, 0600) < 0 || listen(fd, LISTEN_BACKLOG) < 0 || stat(path, st_out) < 0) {
		e = errno;
		unlink(path);
		close(fd);
		return sovmesh_fail(err, -e, "cannot listen on %s: %s", path, strerror(e));
	}
	*fd_out = fd;
	return 0;
}

static void on_listener_closed(uv_handle_t *h)
{
	http_server *srv = h->data;
	srv->listener_open = false;
	server_maybe_finish_close(srv);
}

/* Wrap a listening fd in srv->listener and start accepting. */
static int server_start(http_server *srv, int fd, const char *where, sovmesh_error *err)
{
	int r;
	if (srv->is_unix) {
		uv_pipe_init(srv->loop, &srv->listener.pipe, 0);
		r = uv_pipe_open(&srv->listener.pipe, fd);
	} else {
		uv_tcp_init(srv->loop, &srv->listener.tcp);
		r = uv_tcp_open(&srv->listener.tcp, fd);
	}
	srv->listener.handle.data = srv;
	srv->listener_open = true;
	if (r == 0)
		r = uv_listen(&srv->listener.stream, LISTEN_BACKLOG, on_connection);
	if (r < 0) {
		sovmesh_fail(err, r, "cannot listen on %s: %s", where, uv_strerror(r));
		if (srv->socket_path) {
			unlink(srv->socket_path);
			free(srv->socket_path);
			srv->socket_path = NULL;
		}
		/* uv_close() closes fd once it was adopted; before that it is ours. */
		int adopted = -1;
		if (uv_fileno(&srv->listener.handle, &adopted) < 0)
			close(fd);
		srv->listener_closing = true;
		uv_close(&srv->listener.handle, on_listener_closed);
		srv->port = -1;
		return r;
	}
	srv->listening = true;
	return 0;
}

static int check_can_listen(http_server *srv, sovmesh_error *err)
{
	if (srv->closing)
		return sovmesh_fail(err, -EINVAL, "[%s] the server is closing", srv_name(srv));
	if (srv->listening || srv->listener_open)
		return sovmesh_fail(err, -EALREADY, "[%s] the server is already listening",
		                    srv_name(srv));
	return 0;
}

int http_server_listen_unix(http_server *srv, const char *path, sovmesh_error *err)
{
	if (!srv || !path)
		return sovmesh_fail(err, -EINVAL, "http server: no socket path given");
	int r = check_can_listen(srv, err);
	if (r < 0)
		return r;
	int fd = -1;
	struct stat st;
	r = open_unix_listener(path, &fd, &st, err);
	if (r < 0)
		return r;
	srv->socket_path = strdup(path);
	if (!srv->socket_path) {
		unlink(path);
		close(fd);
		return sovmesh_fail(err, -ENOMEM, "cannot listen on %s: out of memory", path);
	}
	srv->is_unix = true;
	srv->sock_dev = st.st_dev;
	srv->sock_ino = st.st_ino;
	return server_start(srv, fd, path, err);
}

int http_server_listen_tcp(http_server *srv, const char *host, int port, sovmesh_error *err)
{
	if (!srv || !host || port < 0 || port > 65535)
		return sovmesh_fail(err, -EINVAL, "http server: bad listen address %s:%d",
		                    host ? host : "(null)", port);
	int r = check_can_listen(srv, err);
	if (r < 0)
		return r;
	char where[300];
	snprintf(where, sizeof(where), "%s:%d", host, port);
	char portstr[16];
	snprintf(portstr, sizeof(portstr), "%d", port);
	struct addrinfo hints = {
	    .ai_family = AF_UNSPEC,
	    .ai_socktype = SOCK_STREAM,
	    .ai_flags = AI_PASSIVE | AI_NUMERICSERV,
	};
	struct addrinfo *ai = NULL;
	int g = getaddrinfo(host, portstr, &hints, &ai);
	if (g != 0)
		return sovmesh_fail(err, -EINVAL, "cannot listen on %s: %s", where,
		                    gai_strerror(g));

	int fd =
	    socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		return sovmesh_fail(err, -e, "cannot listen on %s: %s", where, strerror(e));
	}
	freeaddrinfo(ai);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET)
			srv->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		else if (ss.ss_family == AF_INET6)
			srv->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	}
	srv->is_unix = false;
	return server_start(srv, fd, where, err);
}

int http_server_listen_tls(http_server *srv, const char *host, int port, const http_tls_config *cfg,
                           sovmesh_error *err)
{
	if (!srv || !cfg || !cfg->creds || !cfg->pin_ok)
		return sovmesh_fail(err, -EINVAL,
		                    "http server: TLS needs credentials and a pin callback");
	if (srv->listening || srv->listener_open || srv->closing)
		return http_server_listen_tcp(srv, host, port, err); /* says why not */
	srv->tls = true;
	srv->tls_cfg = *cfg;
	int r = http_server_listen_tcp(srv, host, port, err);
	if (r < 0)
		srv->tls = false;
	return r;
}

size_t http_server_drop_peer(http_server *srv, const uint8_t fp[TLS_STREAM_FP_LEN])
{
	size_t n = 0;
	for (http_conn *c = srv->conns; c; c = c->next) {
		if (!c->tls || c->state == CONN_CLOSING || c->revoked)
			continue;
		const uint8_t *cfp = tls_stream_peer_fingerprint(c->tls);
		if (!cfp || memcmp(cfp, fp, TLS_STREAM_FP_LEN) != 0)
			continue;
		/* Nothing more is read from or written to it from now on. */
		c->revoked = true;
		c->discard_input = true;
		conn_stop_reading(c);
		conn_close_soon(c);
		n++;
	}
	return n;
}

int http_server_port(const http_server *srv)
{
	return srv && !srv->is_unix && srv->listening ? srv->port : -1;
}

void http_server_set_handler(http_server *srv, http_handler_fn handler, void *ud)
{
	srv->opts.handler = handler;
	srv->opts.handler_ud = ud;
}

size_t http_server_connection_count(const http_server *srv)
{
	size_t n = 0;
	for (const http_conn *c = srv->conns; c; c = c->next)
		if (c->state != CONN_CLOSING && !c->revoked)
			n++;
	return n;
}

static void server_maybe_finish_close(http_server *srv)
{
	if (!srv->closing || srv->listener_open || srv->nconns)
		return;
	if (srv->socket_path) {
		/* Only our own socket: a newer daemon may have replaced it. */
		struct stat st;
		if (lstat(srv->socket_path, &st) == 0 && st.st_dev == srv->sock_dev &&
		    st.st_ino == srv->sock_ino)
			unlink(srv->socket_path);
	}
	http_server_closed_fn cb = srv->close_cb;
	void *ud = srv->close_ud;
	server_free(srv);
	if (cb)
		cb(ud);
}

void http_server_close(http_server *srv, http_server_closed_fn cb, void *ud)
{
	if (!srv || srv->closing)
		return;
	srv->closing = true;
	srv->close_cb = cb;
	srv->close_ud = ud;
	if (srv->listener_open && !srv->listener_closing) {
		srv->listener_closing = true;
		uv_close(&srv->listener.handle, on_listener_closed);
	}
	for (http_conn *c = srv->conns; c; c = c->next)
		conn_close(c);
	server_maybe_finish_close(srv);
}

/* --- responses --- */

const http_request *http_response_request(const http_response *resp)
{
	return &resp->req;
}

const char *http_request_header(const http_request *req, const char *name)
{
	for (size_t i = 0; i < req->nheaders; i++)
		if (strcasecmp(req->headers[i].name, name) == 0)
			return req->headers[i].value;
	return NULL;
}

void http_response_ref(http_response *resp)
{
	resp->refs++;
}

void http_response_unref(http_response *resp)
{
	if (!resp || --resp->refs > 0)
		return;
	/* The last holder let go without completing: nothing more will come. */
	http_conn *conn = resp->conn;
	if (conn) {
		log_warning("[%s] a handler dropped the response to %s %s without completing it",
		            srv_name(conn->srv), resp->req.method, resp->req.path);
		conn->resp = NULL;
		resp->conn = NULL;
		conn_close(conn);
	}
	free(resp->headers);
	free(resp->target);
	free(resp->path);
	free(resp->hdrbuf);
	free(resp->body);
	bytes_free(&resp->extra);
	free(resp);
}

void http_response_on_cancel(http_response *resp, http_cancel_fn cb, void *ud)
{
	resp->cancel_cb = cb;
	resp->cancel_ud = ud;
}

bool http_response_cancelled(const http_response *resp)
{
	return resp->cancelled;
}

static bool header_token_ok(const char *s, bool is_name)
{
	if (is_name && !*s)
		return false;
	for (; *s; s++) {
		if (*s == '\r' || *s == '\n')
			return false;
		if (is_name && (*s == ':' || *s == ' ' || *s == '\t'))
			return false;
	}
	return true;
}

int http_response_add_header(http_response *resp, const char *name, const char *value)
{
	if (resp->state != RESP_NEW)
		return -EALREADY;
	if (!name || !value || !header_token_ok(name, true) || !header_token_ok(value, false))
		return -EINVAL;
	return bytes_printf(&resp->extra, "%s: %s\r\n", name, value);
}

/* The response is complete: the connection goes on without it. */
static void response_detach(http_response *resp)
{
	http_conn *conn = resp->conn;
	conn->resp = NULL;
	resp->conn = NULL;
	conn->state = CONN_FLUSHING;
}

static int response_send(http_response *resp, int status, const char *content_type,
                         const void *body, size_t len)
{
	if (resp->state != RESP_NEW)
		return -EALREADY;
	resp->state = RESP_DONE;
	if (!resp->conn)
		return -ECONNRESET;
	http_conn *conn = resp->conn;
	bool with_body = status_has_body(status);
	bytes head = {0};
	if (build_head(&head, resp->req.http_minor, status, with_body ? content_type : NULL,
	               &resp->extra, false, with_body ? (long long)len : -1,
	               resp->keep_alive) < 0) {
		bytes_free(&head);
		response_detach(resp);
		conn_close(conn);
		return -ENOMEM;
	}
	uv_buf_t parts[2] = {uv_buf_init(head.data, (unsigned)head.len),
	                     uv_buf_init((char *)(body ? body : ""), (unsigned)len)};
	size_t nparts = with_body && !resp->head && len ? 2 : 1;
	response_detach(resp);
	int r = conn_write(conn, parts, nparts, true);
	bytes_free(&head);
	return r;
}

int http_response_send(http_response *resp, int status, const char *content_type, const void *body,
                       size_t len)
{
	int r = response_send(resp, status, content_type, body, len);
	http_response_unref(resp);
	return r;
}

int http_response_send_error(http_response *resp, int status, const char *message)
{
	json_t *j = json_pack("{s:s}", "error", message ? message : http_status_reason(status));
	char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	int r;
	if (!body) {
		r = -ENOMEM;
		if (resp->conn && resp->state == RESP_NEW)
			r = response_send(resp, 500, NULL, NULL, 0);
	} else {
		size_t n = strlen(body);
		char *line = realloc(body, n + 2);
		if (line) {
			body = line;
			body[n++] = '\n';
			body[n] = '\0';
		}
		r = response_send(resp, status, "application/json", body, n);
	}
	free(body);
	http_response_unref(resp);
	return r;
}

int http_response_start(http_response *resp, int status, const char *content_type)
{
	if (resp->state != RESP_NEW)
		return -EALREADY;
	resp->state = RESP_STREAMING;
	if (!resp->conn)
		return -ECONNRESET;
	http_conn *conn = resp->conn;
	/* HTTP/1.0 has no chunked coding: the end of the body is the close. */
	resp->chunked = resp->req.http_minor >= 1 && status_has_body(status) && !resp->head;
	if (!resp->chunked) {
		resp->keep_alive = false;
		conn->keep_alive = false;
	}
	bytes head = {0};
	if (build_head(&head, resp->req.http_minor, status, content_type, &resp->extra,
	               resp->chunked, -1, resp->keep_alive) < 0) {
		bytes_free(&head);
		return -ENOMEM;
	}
	uv_buf_t part = uv_buf_init(head.data, (unsigned)head.len);
	int r = conn_write(conn, &part, 1, false);
	bytes_free(&head);
	return r;
}

int http_response_write(http_response *resp, const void *data, size_t len)
{
	if (resp->state != RESP_STREAMING)
		return -EINVAL;
	if (!resp->conn)
		return -ECONNRESET;
	if (!len || resp->head)
		return 0;
	if (!resp->chunked) {
		uv_buf_t part = uv_buf_init((char *)data, (unsigned)len);
		return conn_write(resp->conn, &part, 1, false);
	}
	char size_line[32];
	int n = snprintf(size_line, sizeof(size_line), "%zx\r\n", len);
	uv_buf_t parts[3] = {uv_buf_init(size_line, (unsigned)n),
	                     uv_buf_init((char *)data, (unsigned)len), uv_buf_init("\r\n", 2)};
	return conn_write(resp->conn, parts, 3, false);
}

size_t http_response_queued_bytes(const http_response *resp)
{
	return resp->conn ? uv_stream_get_write_queue_size(&resp->conn->h.stream) : 0;
}

int http_response_end(http_response *resp)
{
	int r;
	if (resp->state != RESP_STREAMING) {
		r = -EINVAL;
	} else if (!resp->conn) {
		resp->state = RESP_DONE;
		r = -ECONNRESET;
	} else {
		resp->state = RESP_DONE;
		http_conn *conn = resp->conn;
		uv_buf_t part = resp->chunked ? uv_buf_init("0\r\n\r\n", 5) : uv_buf_init("", 0);
		response_detach(resp);
		r = conn_write(conn, &part, 1, true);
	}
	http_response_unref(resp);
	return r;
}

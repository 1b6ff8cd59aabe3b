/*
 * Client side of the peer port: libuv TCP, tls_stream as a client, and
 * llhttp in response mode.  Each connection serves one call at a time;
 * a finished call leaves its connection idle (keep-alive) for the next
 * call to the same peer and address.
 *
 * Every failure closes the connection, and the call's on_done runs from
 * the connection's close callback; so no callback ever runs inside
 * peer_client_request(), peer_client_drop_peer() or a trust store change.
 */
#include "peer_client.h"

#include <errno.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "tls_stream.h"

#define DEFAULT_TIMEOUT_MS 30000u
/* Below the server's 60 s idle limit, so we are the ones who close. */
#define IDLE_MS          30000u
#define MAX_HEADER_BYTES (64u * 1024u)
#define READ_BUFFER_SIZE (16u * 1024u)
#define HOST_MAX         64

enum conn_state { PC_CONNECTING, PC_HANDSHAKE, PC_BUSY, PC_IDLE, PC_CLOSING };

typedef struct pconn pconn;

struct peer_client {
	uv_loop_t *loop;
	const identity *id;
	trust_store *ts;
	pconn *conns; /* doubly linked, closing ones included */
	size_t nconns;
	bool freeing;
	void (*closed)(void *ud);
	void *closed_ud;
};

struct peer_call {
	peer_client *pc;
	pconn *conn; /* always set while the call lives */
	sovmesh_http_callbacks cbs;
	void *ud;
	uint8_t fp[IDENTITY_FP_LEN];
	char fp_hex[IDENTITY_FP_HEX_LEN + 1];
	char host[HOST_MAX];
	int port;
	char where[HOST_MAX + 80]; /* "peer NAME (abcd1234...) at HOST:PORT", for messages */
	char *wire;                /* the serialized request */
	size_t wire_len;
	bool head;
	bool idempotent;   /* GET or HEAD: safe to send twice */
	uint64_t deadline; /* uv_now() ms */
	unsigned timeout_ms;
	bool reused;  /* sent on a connection that had served before */
	bool retried; /* the one retry on a fresh connection is used */
	bool got_bytes;
	bool status_sent;
	bool aborted; /* on_body asked to stop */
	long status;
};

struct pconn {
	peer_client *pc;
	pconn *prev, *next;
	uv_tcp_t tcp;
	uv_timer_t timer;
	uv_connect_t connect_req;
	int open_handles;
	enum conn_state state;
	tls_stream *tls;
	uint8_t fp[IDENTITY_FP_LEN];
	char fp_hex[IDENTITY_FP_HEX_LEN + 1];
	char host[HOST_MAX];
	int port;
	peer_call *call;
	int uses;
	llhttp_t parser;
	size_t header_bytes;
	bool complete; /* the response's last byte was parsed */
	/* Why it closed: handed to the call's on_done. */
	int close_result;
	char close_msg[480];
	char rbuf[READ_BUFFER_SIZE];
};

static void conn_close(pconn *c, int result, const char *fmt, ...) SOVMESH_PRINTF(3, 4);
static int conn_start(peer_client *pc, peer_call *call);

/* --- calls --- */

static void call_free(peer_call *call)
{
	free(call->wire);
	free(call);
}

static void call_finish(peer_call *call, int result, const char *msg)
{
	char ok[32];
	if (result == 0) {
		snprintf(ok, sizeof(ok), "HTTP %ld", call->status);
		msg = ok;
	}
	if (call->cbs.on_done)
		call->cbs.on_done(call->ud, result, call->status, msg);
	call_free(call);
}

/* --- connections: closing --- */

static void client_maybe_finish_free(peer_client *pc)
{
	if (!pc->freeing || pc->nconns)
		return;
	void (*closed)(void *) = pc->closed;
	void *ud = pc->closed_ud;
	free(pc);
	if (closed)
		closed(ud);
}

static void conn_free(pconn *c)
{
	peer_client *pc = c->pc;
	if (c->prev)
		c->prev->next = c->next;
	else
		pc->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	pc->nconns--;
	peer_call *call = c->call;
	tls_stream_free(c->tls);
	int result = c->close_result;
	char msg[sizeof(c->close_msg)];
	snprintf(msg, sizeof(msg), "%s", c->close_msg);
	free(c);
	if (call) {
		call->conn = NULL;
		/* A kept-alive connection the server had closed meanwhile: the
		 * request probably never reached it.  Only GET and HEAD are tried
		 * again (once), since it might have. */
		if (result == -ECONNRESET && call->reused && !call->got_bytes && !call->retried &&
		    call->idempotent && !pc->freeing) {
			call->retried = true;
			call->reused = false;
			if (conn_start(pc, call) == 0)
				goto out;
			result = -ENOMEM;
			snprintf(msg, sizeof(msg), "%s: out of memory", call->where);
		}
		call_finish(call, result ? result : -EIO, msg);
	}
out:
	client_maybe_finish_free(pc);
}

static void on_conn_closed(uv_handle_t *h)
{
	pconn *c = h->data;
	if (--c->open_handles == 0)
		conn_free(c);
}

/* Close now (nothing more is read or written); the call, if any, ends
 * with `result` from the close callback.  The first reason sticks. */
static void conn_close(pconn *c, int result, const char *fmt, ...)
{
	if (c->state == PC_CLOSING)
		return;
	c->state = PC_CLOSING;
	c->close_result = result;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->close_msg, sizeof(c->close_msg), fmt, ap);
	va_end(ap);
	log_one_line(c->close_msg);
	uv_timer_stop(&c->timer);
	uv_close((uv_handle_t *)&c->timer, on_conn_closed);
	uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

/* --- timers --- */

static void on_timer(uv_timer_t *t)
{
	pconn *c = t->data;
	if (!c->call) {
		conn_close(c, 0, "idle");
		return;
	}
	peer_call *call = c->call;
	conn_close(c, -ETIMEDOUT, "%s: no complete answer within %u ms", call->where,
	           call->timeout_ms);
}

static void conn_arm_call_timer(pconn *c, peer_call *call)
{
	uint64_t now = uv_now(c->pc->loop);
	uint64_t left = call->deadline > now ? call->deadline - now : 1;
	uv_timer_start(&c->timer, on_timer, left, 0);
}

/* --- the response --- */

static pconn *parser_conn(llhttp_t *p)
{
	return p->data;
}

static int on_message_begin(llhttp_t *p)
{
	parser_conn(p)->header_bytes = 0;
	return 0;
}

static int count_header(llhttp_t *p, const char *at, size_t len)
{
	(void)at;
	pconn *c = parser_conn(p);
	c->header_bytes += len;
	return c->header_bytes > MAX_HEADER_BYTES ? -1 : 0;
}

static int on_headers_complete(llhttp_t *p)
{
	pconn *c = parser_conn(p);
	peer_call *call = c->call;
	int status = llhttp_get_status_code(p);
	if (status < 200)
		return 0; /* an interim answer; the real one follows */
	call->status = status;
	call->status_sent = true;
	if (call->cbs.on_status)
		call->cbs.on_status(call->ud, status);
	if (!c->call)
		return -1; /* cancelled inside on_status */
	/* 1: no body follows (HEAD). */
	return call->head ? 1 : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
	pconn *c = parser_conn(p);
	peer_call *call = c->call;
	if (!call->cbs.on_body || !len)
		return 0;
	if (call->cbs.on_body(call->ud, at, len) != 0) {
		if (c->call)
			call->aborted = true;
		return -1;
	}
	return c->call ? 0 : -1;
}

static int on_message_complete(llhttp_t *p)
{
	pconn *c = parser_conn(p);
	if (llhttp_get_status_code(p) < 200)
		return 0;
	c->complete = true;
	return HPE_PAUSED;
}

static const llhttp_settings_t response_settings = {
    .on_message_begin = on_message_begin,
    .on_header_field = count_header,
    .on_header_value = count_header,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* The answer is in: the call ends well and the connection is kept for
 * the next call unless `close` or the server said otherwise. */
static void conn_complete_call(pconn *c, bool close)
{
	peer_call *call = c->call;
	c->call = NULL;
	c->complete = false;
	if (!close && llhttp_should_keep_alive(&c->parser) && !c->pc->freeing) {
		c->state = PC_IDLE;
		uv_timer_start(&c->timer, on_timer, IDLE_MS, 0);
	} else {
		conn_close(c, 0, "done");
	}
	call_finish(call, 0, NULL);
}

static bool on_tls_data(void *ud, const char *data, size_t len)
{
	pconn *c = ud;
	if (c->state != PC_BUSY || !c->call) {
		/* Nothing was asked: a server does not talk first. */
		conn_close(c, 0, "unexpected data");
		return false;
	}
	c->call->got_bytes = true;
	llhttp_errno_t e = llhttp_execute(&c->parser, data, len);
	if (c->state == PC_CLOSING)
		return false; /* cancelled inside a callback */
	if (e == HPE_OK)
		return true;
	peer_call *call = c->call;
	if (e == HPE_PAUSED && c->complete) {
		const char *pos = llhttp_get_error_pos(&c->parser);
		bool extra = pos && pos < data + len;
		conn_complete_call(c, extra);
		return false;
	}
	if (call->aborted)
		conn_close(c, -ECANCELED, "%s: aborted by the receiver", call->where);
	else if (c->header_bytes > MAX_HEADER_BYTES)
		conn_close(c, -EPROTO, "%s: response headers larger than %u bytes", call->where,
		           MAX_HEADER_BYTES);
	else
		conn_close(c, -EPROTO, "%s: malformed HTTP response: %s", call->where,
		           llhttp_get_error_reason(&c->parser) ? llhttp_get_error_reason(&c->parser)
		                                               : llhttp_errno_name(e));
	return false;
}

/* The server closed (EOF or close_notify). */
static void conn_on_eof(pconn *c)
{
	peer_call *call = c->call;
	if (!call || c->state != PC_BUSY) {
		if (call)
			conn_close(c, -ECONNRESET,
			           "%s: the connection closed during the TLS handshake "
			           "(is it a sovmesh peer port?)",
			           call->where);
		else
			conn_close(c, 0, "closed by the peer");
		return;
	}
	if (call->got_bytes) {
		/* A body delimited by the close. */
		llhttp_finish(&c->parser);
		if (c->complete) {
			conn_complete_call(c, true);
			return;
		}
		conn_close(c, -ECONNRESET, "%s: the connection closed in the middle of the answer",
		           call->where);
		return;
	}
	conn_close(c, -ECONNRESET, "%s: the connection closed before an answer arrived",
	           call->where);
}

/* --- TLS --- */

static bool pin_ok(void *ud, const uint8_t fp[TLS_STREAM_FP_LEN])
{
	pconn *c = ud;
	/* Exactly the peer we meant to call, and still trusted now. */
	return memcmp(fp, c->fp, IDENTITY_FP_LEN) == 0 && trust_store_find(c->pc->ts, c->fp_hex);
}

static void tls_failed(pconn *c, int r)
{
	peer_call *call = c->call;
	const char *where = call ? call->where : c->host;
	const uint8_t *got = tls_stream_peer_fingerprint(c->tls);
	if (r == -EPERM && got && memcmp(got, c->fp, IDENTITY_FP_LEN) != 0) {
		char hex[IDENTITY_FP_HEX_LEN + 1];
		identity_fp_to_hex(got, hex);
		conn_close(c, -EPERM,
		           "%s: the server presented certificate fingerprint %s, expected %s; "
		           "refusing it",
		           where, hex, c->fp_hex);
	} else if (r == -EPERM && got && !tls_stream_established(c->tls) &&
	           !trust_store_find(c->pc->ts, c->fp_hex)) {
		conn_close(c, -EPERM, "%s: the peer is no longer in the trust store", where);
	} else if (r == -EPERM) {
		conn_close(c, -EPERM,
		           "%s refused this node's certificate (it is not paired with us, or "
		           "removed us): %s",
		           where, tls_stream_error(c->tls));
	} else {
		conn_close(c, r, "%s: %s", where, tls_stream_error(c->tls));
	}
}

static void send_request(pconn *c)
{
	peer_call *call = c->call;
	call->reused = c->uses > 0;
	c->uses++;
	c->state = PC_BUSY;
	c->complete = false;
	llhttp_init(&c->parser, HTTP_RESPONSE, &response_settings);
	c->parser.data = c;
	conn_arm_call_timer(c, call);
	int r = tls_stream_write(c->tls, call->wire, call->wire_len, NULL, NULL);
	if (r < 0)
		conn_close(c, -ECONNRESET, "%s: sending the request failed", call->where);
}

static void on_established(void *ud)
{
	pconn *c = ud;
	if (c->call)
		send_request(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)suggested;
	pconn *c = h->data;
	*buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	pconn *c = s->data;
	if (nread == 0 || c->state == PC_CLOSING)
		return;
	if (nread < 0) {
		if (nread == UV_EOF) {
			conn_on_eof(c);
		} else if (c->call) {
			conn_close(c, -ECONNRESET, "%s: %s", c->call->where,
			           uv_strerror((int)nread));
		} else {
			conn_close(c, 0, "read failed");
		}
		return;
	}
	int r = tls_stream_feed(c->tls, buf->base, (size_t)nread);
	if (c->state == PC_CLOSING)
		return;
	if (r < 0)
		tls_failed(c, r);
	else if (r == 1)
		conn_on_eof(c);
}

static void on_connect(uv_connect_t *req, int status)
{
	pconn *c = req->data;
	if (c->state == PC_CLOSING)
		return;
	peer_call *call = c->call;
	if (status < 0) {
		int r = status == UV_ECONNREFUSED                               ? -ECONNREFUSED
		        : status == UV_ETIMEDOUT                                ? -ETIMEDOUT
		        : status == UV_ENETUNREACH || status == UV_EHOSTUNREACH ? -EHOSTUNREACH
		                                                                : -EIO;
		conn_close(c, r, "%s: cannot connect: %s", call->where, uv_strerror(status));
		return;
	}
	tls_stream_config cfg = {
	    .is_server = false,
	    .creds = c->pc->id->creds,
	    .pin_ok = pin_ok,
	    .pin_ud = c,
	};
	static const tls_stream_callbacks cbs = {.on_established = on_established,
	                                         .on_data = on_tls_data};
	int r = tls_stream_new((uv_stream_t *)&c->tcp, &cfg, &cbs, c, &c->tls);
	if (r < 0) {
		conn_close(c, r, "%s: cannot set up TLS: %s", call->where, strerror(-r));
		return;
	}
	r = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
	if (r < 0) {
		conn_close(c, -EIO, "%s: %s", call->where, uv_strerror(r));
		return;
	}
	c->state = PC_HANDSHAKE;
	r = tls_stream_start(c->tls);
	if (r < 0)
		tls_failed(c, r);
}

/* A new connection for `call`.  0, or -ENOMEM (nothing changed); any
 * later failure ends the call through the close callback. */
static int conn_start(peer_client *pc, peer_call *call)
{
	struct sockaddr_storage ss;
	if (uv_ip4_addr(call->host, call->port, (struct sockaddr_in *)&ss) != 0 &&
	    uv_ip6_addr(call->host, call->port, (struct sockaddr_in6 *)&ss) != 0)
		return -EINVAL; /* checked by peer_client_request() */
	pconn *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->pc = pc;
	memcpy(c->fp, call->fp, sizeof(c->fp));
	memcpy(c->fp_hex, call->fp_hex, sizeof(c->fp_hex));
	memcpy(c->host, call->host, sizeof(c->host));
	c->port = call->port;
	uv_tcp_init(pc->loop, &c->tcp);
	uv_tcp_nodelay(&c->tcp, 1); /* small request writes: no Nagle delay */
	uv_timer_init(pc->loop, &c->timer);
	c->tcp.data = c;
	c->timer.data = c;
	c->connect_req.data = c;
	c->open_handles = 2;
	c->state = PC_CONNECTING;
	c->next = pc->conns;
	if (pc->conns)
		pc->conns->prev = c;
	pc->conns = c;
	pc->nconns++;
	c->call = call;
	call->conn = c;
	conn_arm_call_timer(c, call);
	int r = uv_tcp_connect(&c->connect_req, &c->tcp, (struct sockaddr *)&ss, on_connect);
	if (r < 0)
		conn_close(c, r == UV_ECONNREFUSED ? -ECONNREFUSED : -EIO, "%s: cannot connect: %s",
		           call->where, uv_strerror(r));
	return 0;
}

/* --- requests --- */

static bool token_ok(const char *s, size_t max)
{
	size_t n = 0;
	for (; s[n]; n++)
		if (s[n] < 'A' || s[n] > 'Z')
			return false;
	return n > 0 && n <= max;
}

/* No controls, no spaces (unless allowed), not empty. */
static bool text_ok(const char *s, bool spaces)
{
	if (!*s)
		return false;
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch < 0x20 || ch == 0x7f || (!spaces && ch == ' '))
			return false;
	}
	return true;
}

static int serialize(peer_call *call, const peer_request *req)
{
	bool v6 = strchr(req->host, ':') != NULL;
	bool length = req->body_len > 0 ||
	              (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0);
	char head[4096];
	int n =
	    snprintf(head, sizeof(head),
	             "%s %s HTTP/1.1\r\n"
	             "Host: %s%s%s:%d\r\n"
	             "User-Agent: sovmesh\r\n"
	             "%s%s%s",
	             req->method, req->path, v6 ? "[" : "", req->host, v6 ? "]" : "", req->port,
	             req->content_type ? "Content-Type: " : "",
	             req->content_type ? req->content_type : "", req->content_type ? "\r\n" : "");
	if (n < 0 || (size_t)n >= sizeof(head) - 64)
		return -EINVAL;
	if (length)
		n += snprintf(head + n, sizeof(head) - (size_t)n, "Content-Length: %zu\r\n",
		              req->body_len);
	n += snprintf(head + n, sizeof(head) - (size_t)n, "\r\n");
	call->wire = malloc((size_t)n + req->body_len + 1);
	if (!call->wire)
		return -ENOMEM;
	memcpy(call->wire, head, (size_t)n);
	if (req->body_len)
		memcpy(call->wire + n, req->body, req->body_len);
	call->wire_len = (size_t)n + req->body_len;
	return 0;
}

peer_call *peer_client_request(peer_client *pc, const peer_request *req,
                               const sovmesh_http_callbacks *cbs, void *ud, sovmesh_error *err)
{
	if (!pc || !req || !cbs || pc->freeing) {
		sovmesh_fail(err, -EINVAL, "peer request: no client, request or callbacks");
		return NULL;
	}
	uint8_t fp[IDENTITY_FP_LEN];
	struct sockaddr_storage ss;
	if (identity_fp_from_hex(req->fingerprint_hex, fp) < 0) {
		sovmesh_fail(err, -EINVAL, "peer request: the fingerprint is not 64 hex digits");
		return NULL;
	}
	if (!req->host || strlen(req->host) >= HOST_MAX || req->port <= 0 || req->port > 65535 ||
	    (uv_ip4_addr(req->host, req->port, (struct sockaddr_in *)&ss) != 0 &&
	     uv_ip6_addr(req->host, req->port, (struct sockaddr_in6 *)&ss) != 0)) {
		sovmesh_fail(err, -EINVAL,
		             "peer request: \"%.64s\" port %d is not a numeric address and port",
		             req->host ? req->host : "(none)", req->port);
		return NULL;
	}
	if (!req->method || !token_ok(req->method, 16) || !req->path || req->path[0] != '/' ||
	    !text_ok(req->path, false) ||
	    (req->content_type && !text_ok(req->content_type, true)) ||
	    (req->body_len && !req->body)) {
		sovmesh_fail(err, -EINVAL, "peer request: bad method, path, content type or body");
		return NULL;
	}
	char hex[IDENTITY_FP_HEX_LEN + 1];
	identity_fp_to_hex(fp, hex);
	const trusted_peer *tp = trust_store_find(pc->ts, hex);
	if (!tp) {
		sovmesh_fail(err, -EPERM, "peer %s is not paired with this node", hex);
		return NULL;
	}
	peer_call *call = calloc(1, sizeof(*call));
	if (!call || serialize(call, req) < 0) {
		if (call)
			call_free(call);
		sovmesh_fail(err, -ENOMEM, "peer request: out of memory");
		return NULL;
	}
	call->pc = pc;
	size_t cbs_size =
	    cbs->size && cbs->size < sizeof(call->cbs) ? cbs->size : sizeof(call->cbs);
	memcpy(&call->cbs, cbs, cbs_size);
	call->ud = ud;
	memcpy(call->fp, fp, sizeof(fp));
	memcpy(call->fp_hex, hex, sizeof(hex));
	snprintf(call->host, sizeof(call->host), "%s", req->host);
	call->port = req->port;
	bool v6 = strchr(req->host, ':') != NULL;
	snprintf(call->where, sizeof(call->where), "peer %.32s (%.12s) at %s%s%s:%d",
	         tp->name ? tp->name : "?", hex, v6 ? "[" : "", req->host, v6 ? "]" : "",
	         req->port);
	log_one_line(call->where);
	call->head = strcmp(req->method, "HEAD") == 0;
	call->idempotent = call->head || strcmp(req->method, "GET") == 0;
	call->timeout_ms = req->timeout_ms ? req->timeout_ms : DEFAULT_TIMEOUT_MS;
	call->deadline = uv_now(pc->loop) + call->timeout_ms;

	for (pconn *c = pc->conns; c; c = c->next) {
		if (c->state != PC_IDLE || c->port != call->port ||
		    strcmp(c->host, call->host) != 0 || memcmp(c->fp, fp, sizeof(fp)) != 0)
			continue;
		c->call = call;
		call->conn = c;
		/* A failed write closes the connection; the retry (or on_done)
		 * then comes from the loop, not from inside this call. */
		send_request(c);
		return call;
	}
	if (conn_start(pc, call) < 0) {
		call_free(call);
		sovmesh_fail(err, -ENOMEM, "peer request: out of memory");
		return NULL;
	}
	return call;
}

void peer_client_cancel(peer_call *call)
{
	if (!call)
		return;
	pconn *c = call->conn;
	if (c) {
		c->call = NULL;
		call->conn = NULL;
		conn_close(c, 0, "cancelled");
	}
	call_free(call);
}

size_t peer_client_drop_peer(peer_client *pc, const char *fingerprint_hex)
{
	uint8_t fp[IDENTITY_FP_LEN];
	if (!pc || identity_fp_from_hex(fingerprint_hex, fp) < 0)
		return 0;
	size_t n = 0;
	for (pconn *c = pc->conns; c; c = c->next) {
		if (c->state == PC_CLOSING || memcmp(c->fp, fp, sizeof(fp)) != 0)
			continue;
		conn_close(c, -EPERM, "%s: the peer was removed from the trust store",
		           c->call ? c->call->where : c->fp_hex);
		n++;
	}
	return n;
}

void peer_client_trust_changed(void *ud, const trusted_peer *peer, int removed)
{
	if (!removed)
		return;
	size_t n = peer_client_drop_peer(ud, peer->fingerprint_hex);
	if (n)
		log_info("[peer] dropped %zu outgoing connection%s to %s: the peer was removed", n,
		         n == 1 ? "" : "s", peer->name ? peer->name : peer->fingerprint_hex);
}

size_t peer_client_connection_count(const peer_client *pc)
{
	size_t n = 0;
	for (const pconn *c = pc->conns; c; c = c->next)
		if (c->state != PC_CLOSING)
			n++;
	return n;
}

int peer_client_new(uv_loop_t *loop, const identity *id, trust_store *ts, peer_client **out)
{
	if (!loop || !id || !id->creds || !ts || !out)
		return -EINVAL;
	peer_client *pc = calloc(1, sizeof(*pc));
	if (!pc)
		return -ENOMEM;
	pc->loop = loop;
	pc->id = id;
	pc->ts = ts;
	*out = pc;
	return 0;
}

void peer_client_free(peer_client *pc, void (*closed)(void *ud), void *ud)
{
	if (!pc || pc->freeing)
		return;
	pc->freeing = true;
	pc->closed = closed;
	pc->closed_ud = ud;
	for (pconn *c = pc->conns; c; c = c->next) {
		if (c->call) {
			peer_call *call = c->call;
			c->call = NULL;
			call->conn = NULL;
			call_free(call);
		}
		conn_close(c, 0, "client closing");
	}
	client_maybe_finish_free(pc);
}

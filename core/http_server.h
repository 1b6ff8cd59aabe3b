/*
 * A small HTTP/1.1 server on libuv, parsing with llhttp: one listener
 * (a unix socket or TCP host:port), keep-alive, pipelined requests
 * answered in order, size limits, and responses that handlers complete
 * at once, later, or as a chunked stream.  Used for the control socket,
 * the Ollama-compatible front door, the Network page, and (with mutual
 * TLS, http_server_listen_tls) the peer port.
 *
 * Threading: everything runs on the loop's thread.
 *
 * Response lifetime (reference counted):
 *   The handler receives `resp` holding ONE reference, which is the
 *   handler's.  http_response_send(), http_response_send_error() and
 *   http_response_end() complete the response AND drop that reference,
 *   always, even when they fail.  A handler that answers later simply
 *   keeps the pointer; call http_response_ref() for each further holder.
 *   If the client goes away (or the server closes) before the response
 *   is complete, the cancel callback runs once; the response stays valid,
 *   further writes fail with -ECONNRESET and cost nothing, and the holder
 *   still drops its reference (complete it, or http_response_unref()).
 *   The request (`http_response_request()`) lives as long as the response.
 *   Dropping the last reference without completing the response closes
 *   the connection (and logs a warning).
 *
 * A client that closes, or shuts down its sending side, while its
 * response is pending counts as gone (cancel).  While a response is
 * pending, further pipelined bytes are buffered (up to 64 KiB) and parsed
 * only after the response has been written.
 */
#ifndef SOVMESH_CORE_HTTP_SERVER_H
#define SOVMESH_CORE_HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>
#include <sovmesh/plugin.h>

#include "tls_stream.h"

typedef struct http_server http_server;
typedef struct http_response http_response;

typedef struct http_header {
	const char *name;  /* as sent (case preserved) */
	const char *value; /* surrounding whitespace removed */
} http_header;

/* One parsed request.  All strings are NUL-terminated and owned by the
 * response object; read-only for handlers. */
typedef struct http_request {
	const char *method; /* "GET", "POST", ... */
	const char *target; /* the request target as sent: "/v1/x?a=b" */
	const char *path;   /* target up to '?', not percent-decoded */
	const char *query;  /* after '?', "" when there is none */
	const http_header *headers;
	size_t nheaders;
	const char *body; /* NUL-terminated for convenience; never NULL */
	size_t body_len;
	int http_major, http_minor;
	uint64_t conn_id; /* same value for requests on one connection */
	/* Unix sockets: the client's credentials (SO_PEERCRED). */
	bool has_cred;
	pid_t pid;
	uid_t uid;
	gid_t gid;
	/* TCP: "127.0.0.1:5555" / "[::1]:5555"; unix sockets: "unix". */
	const char *peer_addr;
	/* TLS listeners (http_server_listen_tls): the pinned fingerprint of
	 * the client's certificate, 64 lowercase hex; NULL without TLS. */
	const char *peer_fingerprint;
} http_request;

/*
 * Called on the loop for each complete request, in order per connection
 * (the next pipelined request waits until this response is written).
 * `req` is valid as long as `resp` is.  See the top of this file for who
 * owns `resp`.
 */
typedef void (*http_handler_fn)(void *ud, const http_request *req, http_response *resp);

/* The connection died before `resp` was complete.  Runs once, on the loop.
 * The callee may drop its reference right here. */
typedef void (*http_cancel_fn)(void *ud, http_response *resp);

typedef void (*http_server_closed_fn)(void *ud);

typedef struct http_server_options {
	size_t max_header_bytes; /* request line + headers; 0: 16 KiB; over it: 431 */
	size_t max_headers;      /* header count; 0: 100; over it: 431 */
	size_t max_body_bytes;   /* 0: 1 MiB; over it: 413 */
	/* Time allowed for an idle keep-alive connection and for receiving a
	 * whole request; 0: 60000 ms.  Not applied while a response is pending. */
	unsigned idle_timeout_ms;
	const char *name;        /* for log lines, e.g. "control"; NULL: "http" */
	http_handler_fn handler; /* may be set later with http_server_set_handler() */
	void *handler_ud;
} http_server_options;

/*
 * A server on `loop` (not owned), not yet listening.  `opts` (NULL: all
 * defaults) is copied.  0 or -ENOMEM; *out is the caller's, to release
 * with http_server_close().  Requests that arrive while no handler is set
 * get 503.
 */
int http_server_new(uv_loop_t *loop, const http_server_options *opts, http_server **out);

/*
 * Listen on the unix socket `path` (mode 0600, created under umask 0177).
 * An existing socket file is removed only if nothing accepts connections
 * on it (a stale socket); if a server answers there, or `path` is not a
 * socket, this fails with -EADDRINUSE / -EEXIST and leaves the file
 * alone.  One listener per server (-EALREADY).  On failure `err` (may be
 * NULL) holds one line naming the path and the reason; the server is
 * still to be released with http_server_close().  The socket file is
 * unlinked on close if it is still ours.
 */
int http_server_listen_unix(http_server *srv, const char *path, sovmesh_error *err);

/*
 * Listen on TCP `host`:`port` (a numeric address or a name resolved with
 * getaddrinfo; port 0 picks a free port, see http_server_port()).  Errors
 * as for http_server_listen_unix() (-EADDRINUSE when the port is taken).
 */
int http_server_listen_tcp(http_server *srv, const char *host, int port, sovmesh_error *err);

/* Mutual TLS for http_server_listen_tls() (see tls_stream.h). */
typedef struct http_tls_config {
	/* Our certificate and key; not owned, must outlive the server. */
	gnutls_certificate_credentials_t creds;
	/* Accept a client certificate with this fingerprint?  Runs inside
	 * each handshake; a refused client never has a byte of HTTP read. */
	tls_pin_fn pin_ok;
	void *pin_ud;
	const char *priority; /* tests only; NULL: TLS_STREAM_PRIORITY */
} http_tls_config;

/*
 * As http_server_listen_tcp(), but every connection is a TLS 1.3 session
 * (tls_stream.c) that requires the client's certificate and the pin
 * callback's consent during the handshake; requests carry the client's
 * fingerprint in http_request.peer_fingerprint.  `cfg` is copied (the
 * credentials are not).  Handshake failures are logged and closed; they
 * never reach the handler.
 */
int http_server_listen_tls(http_server *srv, const char *host, int port, const http_tls_config *cfg,
                           sovmesh_error *err);

/*
 * Revocation: stop reading and writing at once on every TLS connection
 * whose client presented fingerprint `fp`, and close them on the next
 * loop turn (pending responses get their cancel callback then, never from
 * inside this call, so a handler may call this).  Returns how many
 * connections were dropped.
 */
size_t http_server_drop_peer(http_server *srv, const uint8_t fp[TLS_STREAM_FP_LEN]);

/* The bound TCP port, or -1 when not listening on TCP. */
int http_server_port(const http_server *srv);

/* Set or replace the request handler (NULL: answer 503). */
void http_server_set_handler(http_server *srv, http_handler_fn handler, void *ud);

/* Number of open client connections (for status pages and tests). */
size_t http_server_connection_count(const http_server *srv);

/*
 * Stop listening, close every connection (pending responses get their
 * cancel callback), and free the server once every handle is closed,
 * then call `cb(ud)` (cb may be NULL).  No request is dispatched after
 * this returns, and `srv` must not be used again.  If the server never
 * listened and has no connections, cb runs before this returns.
 * Responses still held by handlers stay valid until released.
 */
void http_server_close(http_server *srv, http_server_closed_fn cb, void *ud);

/* --- responses --- */

/* The request this response answers; valid as long as `resp`. */
const http_request *http_response_request(const http_response *resp);

/* Case-insensitive header lookup; the first match's value, or NULL. */
const char *http_request_header(const http_request *req, const char *name);

void http_response_ref(http_response *resp);
/* Drop a reference; the last one frees `resp` (and its request).  NULL is
 * a no-op. */
void http_response_unref(http_response *resp);

/* Install (or with cb NULL, remove) the cancel callback.  If the response
 * is already cancelled, `cb` is not called; check http_response_cancelled(). */
void http_response_on_cancel(http_response *resp, http_cancel_fn cb, void *ud);

/* True once the connection is gone and the response can no longer be sent. */
bool http_response_cancelled(const http_response *resp);

/*
 * Add a response header before the status line goes out.  Name and value
 * are copied; -EINVAL if either holds CR, LF or NUL (or the name a colon
 * or space), -EALREADY after send/start.  Content-Length, Transfer-Encoding
 * and Connection are set by the server.
 */
int http_response_add_header(http_response *resp, const char *name, const char *value);

/*
 * Complete the response with `status`, a Content-Type (may be NULL for
 * none) and `body` (copied; may be NULL when len is 0).  Drops the
 * caller's reference.  0, -ECONNRESET if cancelled, -EALREADY if already
 * started, -ENOMEM.
 */
int http_response_send(http_response *resp, int status, const char *content_type, const void *body,
                       size_t len);

/* Complete the response with {"error": message} as application/json.
 * Drops the caller's reference; returns as http_response_send(). */
int http_response_send_error(http_response *resp, int status, const char *message);

/*
 * Start a streamed response: the status line and headers go out at once
 * with Transfer-Encoding: chunked (HTTP/1.0 clients: no framing, the
 * connection closes at the end).  Keeps the caller's reference.
 * 0, -ECONNRESET, -EALREADY, -ENOMEM.
 */
int http_response_start(http_response *resp, int status, const char *content_type);

/* Send `data` (copied) as one chunk; len 0 is a no-op.  Only after
 * http_response_start().  0, -ECONNRESET, -EINVAL (not started), -ENOMEM. */
int http_response_write(http_response *resp, const void *data, size_t len);

/* Bytes queued for the client but not yet written (for back-pressure
 * when streaming); 0 once cancelled. */
size_t http_response_queued_bytes(const http_response *resp);

/* Finish a streamed response and drop the caller's reference. */
int http_response_end(http_response *resp);

/* "Not Found" for 404 etc.; "Unknown" for codes without a phrase. */
const char *http_status_reason(int status);

#endif

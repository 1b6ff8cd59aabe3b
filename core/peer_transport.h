/*
 * The peer port (mesh.peer_listen): an HTTP/1.1 server inside mutual
 * TLS 1.3 (http_server_listen_tls + tls_stream).  A client is let in only
 * if its certificate's fingerprint is in the trust store at handshake
 * time; removing a peer from the store closes its open connections at
 * once.  Requests are routed by (method, path) to handlers the daemon
 * registers under /peer/v1/; GET /peer/v1/hello is answered here:
 *   {"name": <this node>, "fingerprint": <64 hex>, "protocol": 1}
 *
 * The store has a single change callback (trust_store_on_change), which
 * the transport takes; it chains to opts->on_trust_change afterwards, so
 * the daemon hands peer_client_trust_changed() (or its own fan-out)
 * there.
 *
 * Threading: the loop's thread only.
 */
#ifndef SOVMESH_CORE_PEER_TRANSPORT_H
#define SOVMESH_CORE_PEER_TRANSPORT_H

#include <sovmesh/plugin.h>
#include <uv.h>

#include "http_server.h"
#include "identity.h"
#include "trust_store.h"

#define PEER_PROTOCOL_VERSION 1
#define PEER_PATH_PREFIX      "/peer/v1/"

typedef struct peer_transport peer_transport;

typedef struct peer_transport_options {
	const char *listen;       /* "host:port" (hostport.h); port 0: any free port */
	size_t max_body_bytes;    /* 0: http_server's default (1 MiB) */
	unsigned idle_timeout_ms; /* 0: http_server's default (60 s) */
	/* Called after the transport handled a trust store change (closing
	 * a removed peer's connections); may be NULL. */
	trust_change_fn on_trust_change;
	void *on_trust_change_ud;
	const char *priority; /* tests only; NULL: TLS_STREAM_PRIORITY */
} peer_transport_options;

/*
 * Listen on opts->listen with `id`'s certificate, pinning against `ts`,
 * and subscribe to `ts`'s changes (replacing any earlier subscriber).
 * `loop`, `id` and `ts` are not owned and must outlive the transport.
 * 0 or -errno with one line in `err` naming the address (-EADDRINUSE,
 * -EINVAL for a malformed address); *out is the caller's, to release with
 * peer_transport_close().
 */
int peer_transport_new(uv_loop_t *loop, const identity *id, trust_store *ts,
                       const peer_transport_options *opts, peer_transport **out,
                       sovmesh_error *err);

/*
 * Serve `method` `path` with `fn` (see http_server.h for the response's
 * lifetime).  `path` starts with PEER_PATH_PREFIX; a trailing '*' matches
 * any rest.  req->peer_fingerprint names the (pinned) caller.  Strings are
 * copied.  0, -EEXIST (taken, including the built-in hello), -EINVAL,
 * -ENOMEM.
 */
int peer_transport_route(peer_transport *pt, const char *method, const char *path,
                         http_handler_fn fn, void *ud);

/* The bound port (useful with port 0), or -1. */
int peer_transport_port(const peer_transport *pt);

/* Open connections, for status and tests. */
size_t peer_transport_connection_count(const peer_transport *pt);

/*
 * Close every connection of the peer `fingerprint_hex` now (no more bytes
 * are read or written; the handles close on the next loop turn and
 * pending responses are cancelled then).  The trust store subscription
 * does this on removal; exposed for callers that revoke by other means.
 * Returns the number of connections dropped.
 */
size_t peer_transport_drop_peer(peer_transport *pt, const char *fingerprint_hex);

/*
 * Unsubscribe from the trust store, stop listening, close every
 * connection (pending responses get their cancel callback), free the
 * transport and then call `closed(ud)` (may be NULL; may run before this
 * returns).  NULL is a no-op.
 */
void peer_transport_close(peer_transport *pt, void (*closed)(void *ud), void *ud);

#endif

/*
 * Calling paired peers: HTTP/1.1 requests over mutual TLS 1.3
 * (tls_stream.c as a client, llhttp in response mode), presenting this
 * node's certificate and accepting exactly the fingerprint of the peer
 * being called, which must also still be in the trust store.  The check
 * runs inside the handshake, before the request is written.
 *
 * Connections are kept alive and reused per (fingerprint, address); one
 * request at a time per connection, a second concurrent request opens a
 * second connection.  A GET or HEAD that finds its reused connection
 * closed by the server before any answer is retried once on a new one.
 *
 * Why not libcurl: its GnuTLS backend cannot offer our ALPN ("sovmesh/1"),
 * checks CURLOPT_PINNEDPUBLICKEY only after the handshake, needs the key
 * on disk, and cannot pin "this peer" per handle against a store that
 * changes; the same tls_stream as the server keeps both sides identical.
 *
 * Revocation: peer_client_trust_changed() (a trust_change_fn; wire it via
 * peer_transport's on_trust_change, or trust_store_on_change() when there
 * is no transport) drops the peer's connections at once; calls on them
 * end with -EPERM.
 *
 * Threading: the loop's thread only.
 */
#ifndef SOVMESH_CORE_PEER_CLIENT_H
#define SOVMESH_CORE_PEER_CLIENT_H

#include <sovmesh/plugin.h>
#include <uv.h>

#include "identity.h"
#include "trust_store.h"

typedef struct peer_client peer_client;
typedef struct peer_call peer_call;

typedef struct peer_request {
	const char *fingerprint_hex; /* the peer to call (pinned exactly) */
	const char *host;            /* numeric IPv4 / IPv6 address, no brackets */
	int port;
	const char *method;       /* "GET", "POST", ... */
	const char *path;         /* "/peer/v1/hello" */
	const char *content_type; /* may be NULL */
	const void *body;         /* may be NULL when body_len is 0 */
	size_t body_len;
	unsigned timeout_ms; /* the whole call, connect included; 0: 30000 */
} peer_request;

/*
 * A client on `loop` presenting `id`'s certificate and trusting what `ts`
 * holds; none of the three is owned, all must outlive the client.
 * 0 or -ENOMEM; *out is the caller's, to release with peer_client_free().
 */
int peer_client_new(uv_loop_t *loop, const identity *id, trust_store *ts, peer_client **out);

/*
 * Start a request; `req` and its strings and body are copied.  Callbacks
 * (sovmesh_http_callbacks, plugin.h) run later on the loop, never inside
 * this call: on_status once the status line and headers are in, on_body
 * per piece of body (non-zero return aborts with -ECANCELED), on_done
 * exactly once, last, with 0 or:
 *   -ECONNREFUSED  nothing listens at host:port
 *   -ETIMEDOUT     no complete answer within timeout_ms
 *   -EPERM         the peer presented another fingerprint than expected
 *                  (the message names both), is no longer trusted, or
 *                  refused our certificate
 *   -EPROTO        TLS or HTTP failure; -ECONNRESET closed mid-answer
 * on_done's message is one line naming the peer and address.  The handle
 * belongs to the client; valid until on_done returns or the call is
 * cancelled.  NULL with `err` filled: -EINVAL (bad request fields), -EPERM
 * (fingerprint not in the trust store), -ENOMEM.
 */
peer_call *peer_client_request(peer_client *pc, const peer_request *req,
                               const sovmesh_http_callbacks *cbs, void *ud, sovmesh_error *err);

/* Cancel a call that has not finished: no callback of it runs afterwards
 * (its connection is closed).  Allowed inside its on_status / on_body.
 * NULL is a no-op. */
void peer_client_cancel(peer_call *call);

/*
 * Drop every connection to `fingerprint_hex` now: nothing more is read or
 * written on them; their calls end with -EPERM from the loop shortly.
 * Returns the number of connections dropped.
 */
size_t peer_client_drop_peer(peer_client *pc, const char *fingerprint_hex);

/* A trust_change_fn (ud: the peer_client): on removal, drop the peer. */
void peer_client_trust_changed(void *ud, const trusted_peer *peer, int removed);

/* Open connections (busy or idle), for status and tests. */
size_t peer_client_connection_count(const peer_client *pc);

/*
 * Cancel every call (no callbacks), close every connection, and free the
 * client once its handles are closed; then `closed(ud)` (may be NULL; may
 * run before this returns).  Not from inside the client's callbacks.
 * NULL is a no-op.
 */
void peer_client_free(peer_client *pc, void (*closed)(void *ud), void *ud);

#endif

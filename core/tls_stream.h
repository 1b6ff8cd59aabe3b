/*
 * A GnuTLS session over a libuv stream, for the peer port: TLS 1.3 only,
 * both sides present a certificate, ALPN "sovmesh/1", and the peer's
 * certificate is accepted only if the caller's pin callback accepts its
 * fingerprint (SHA-256 of the SubjectPublicKeyInfo, see identity.h).
 * The pin check runs inside the handshake (GnuTLS's verify function), so
 * a refused peer never gets an application byte read or written.
 *
 * The stream does no reading of its own (as Knot Resolver's daemon/tls.c):
 * the owner's uv_read callback hands ciphertext to tls_stream_feed(), the
 * pull function serves exactly those bytes and answers EAGAIN when they
 * are used up; plaintext comes back through on_data.  Writes go out
 * through a push function that tries uv_try_write() first and queues one
 * uv_write() for what did not fit.
 *
 * Session resumption is off (no tickets), so every connection shows its
 * certificate and passes the pin check.
 *
 * Threading: the loop's thread only.
 */
#ifndef SOVMESH_CORE_TLS_STREAM_H
#define SOVMESH_CORE_TLS_STREAM_H

#include <gnutls/gnutls.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define TLS_STREAM_ALPN     "sovmesh/1"
#define TLS_STREAM_PRIORITY "NORMAL:-VERS-ALL:+VERS-TLS1.3"
#define TLS_STREAM_FP_LEN   32

typedef struct tls_stream tls_stream;

/* Accept the peer whose certificate has fingerprint `fp`?  Runs inside
 * the handshake, on the loop. */
typedef bool (*tls_pin_fn)(void *ud, const uint8_t fp[TLS_STREAM_FP_LEN]);

typedef struct tls_stream_config {
	bool is_server;
	/* Our certificate and key (identity->creds); not owned, must outlive
	 * the stream.  A client needs one too: the server requires it. */
	gnutls_certificate_credentials_t creds;
	tls_pin_fn pin_ok; /* required */
	void *pin_ud;
	/* Tests only: NULL means TLS_STREAM_PRIORITY / TLS_STREAM_ALPN. */
	const char *priority;
	const char *alpn;
} tls_stream_config;

typedef struct tls_stream_callbacks {
	/* The handshake completed and the peer is pinned.  May be NULL. */
	void (*on_established)(void *ud);
	/* Decrypted application bytes.  Return false to stop delivery for
	 * this feed (the owner is closing the connection). */
	bool (*on_data)(void *ud, const char *data, size_t len);
} tls_stream_callbacks;

/* Completion of tls_stream_write(): 0 once every byte of it reached the
 * kernel, or a negative libuv error.  Runs from uv_write's callback (also
 * with UV_ECANCELED when the stream is closed first). */
typedef void (*tls_write_cb)(void *ud, int status);

/*
 * A session on `stream` (not owned; must be connected and outlive the
 * session).  `cfg` and `cbs` are copied.  0, -EINVAL, -ENOMEM or -EPROTO
 * (GnuTLS refused the configuration); *out is the caller's, to release
 * with tls_stream_free() after the stream's handle is closed.
 */
int tls_stream_new(uv_stream_t *stream, const tls_stream_config *cfg,
                   const tls_stream_callbacks *cbs, void *ud, tls_stream **out);

/* Free the session (no alert is sent).  NULL is a no-op. */
void tls_stream_free(tls_stream *ts);

/* Begin the handshake (a client sends its ClientHello).  0 or as
 * tls_stream_feed(). */
int tls_stream_start(tls_stream *ts);

/*
 * Hand the session ciphertext the stream just delivered; it is consumed
 * before this returns (plaintext through on_data, on_established when the
 * handshake completes).  Returns 0 (keep reading), 1 (the peer closed the
 * session with close_notify), or a negative errno after which the owner
 * closes the connection, with tls_stream_error() saying why:
 *   -EPERM   our pin check refused the peer's certificate, or the peer
 *            refused ours (its alert says so)
 *   -EPROTO  any other TLS failure (version, ALPN, no certificate, ...)
 *   -ECONNRESET  a write failed
 */
int tls_stream_feed(tls_stream *ts, const char *data, size_t len);

/*
 * Encrypt and send `len` bytes (copied as needed).  `cb(ud)` (may be NULL)
 * runs once they are written or failed, after every earlier write.
 * 0; -ENOTCONN before the handshake completed; -ECONNRESET if the stream
 * is broken (cb is not called then).
 */
int tls_stream_write(tls_stream *ts, const void *data, size_t len, tls_write_cb cb, void *ud);

/* Send close_notify (best effort; the owner then shuts the stream down). */
void tls_stream_bye(tls_stream *ts);

bool tls_stream_established(const tls_stream *ts);

/* The fingerprint the peer presented (also when it was refused); NULL
 * before the peer's certificate arrived. */
const uint8_t *tls_stream_peer_fingerprint(const tls_stream *ts);

/* The last failure as one line; "" when there was none.  Owned by `ts`. */
const char *tls_stream_error(const tls_stream *ts);

#endif

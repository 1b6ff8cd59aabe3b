/*
 * GnuTLS over a libuv stream, in the manner of Knot Resolver's
 * daemon/tls.c: the session never touches the socket itself.  The pull
 * function serves the ciphertext tls_stream_feed() was just given and
 * answers EAGAIN once it is used up; the push function tries
 * uv_try_write() and queues one uv_write() with a copy of the rest.
 */
#include "tls_stream.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "identity.h"

_Static_assert(TLS_STREAM_FP_LEN == IDENTITY_FP_LEN, "one fingerprint size");

/* One TLS record's worth of plaintext per gnutls_record_recv(). */
#define PLAIN_BUFFER_SIZE (16u * 1024u)

enum refusal { REFUSED_NONE, REFUSED_PIN, REFUSED_ALPN, REFUSED_NO_CERT, REFUSED_BAD_CERT };

struct tls_stream {
	gnutls_session_t session;
	uv_stream_t *stream;
	tls_stream_callbacks cbs;
	void *ud;
	tls_pin_fn pin_ok;
	void *pin_ud;
	char *alpn;
	bool is_server;
	/* The ciphertext of the current feed, served by pull(). */
	const char *in;
	size_t in_len;
	bool established;
	bool failed; /* a fatal TLS error: nothing more goes in or out */
	bool broken; /* a write failed */
	enum refusal refused;
	bool have_fp;
	uint8_t fp[TLS_STREAM_FP_LEN];
	char err[320];
	char plain[PLAIN_BUFFER_SIZE];
};

typedef struct write_req {
	uv_write_t req;
	tls_stream *ts;
	tls_write_cb cb; /* NULL for ciphertext pushed by GnuTLS */
	void *ud;
	char data[];
} write_req;

static void set_err(tls_stream *ts, const char *fmt, ...) SOVMESH_PRINTF(2, 3);
static void set_err(tls_stream *ts, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ts->err, sizeof(ts->err), fmt, ap);
	va_end(ap);
}

/* --- transport --- */

static ssize_t pull(gnutls_transport_ptr_t ptr, void *buf, size_t size)
{
	tls_stream *ts = ptr;
	if (!ts->in_len) {
		gnutls_transport_set_errno(ts->session, EAGAIN);
		return -1;
	}
	size_t n = size < ts->in_len ? size : ts->in_len;
	memcpy(buf, ts->in, n);
	ts->in += n;
	ts->in_len -= n;
	return (ssize_t)n;
}

static void on_write(uv_write_t *req, int status)
{
	write_req *w = (write_req *)req;
	if (status < 0)
		w->ts->broken = true;
	if (w->cb)
		w->cb(w->ud, status);
	free(w);
}

/* Queue `len` bytes (copied, len may be 0) behind everything queued so
 * far; `cb` runs when they are written.  0 or a negative libuv error. */
static int queue_write(tls_stream *ts, const void *data, size_t len, tls_write_cb cb, void *ud)
{
	write_req *w = malloc(sizeof(*w) + len + 1);
	if (!w)
		return UV_ENOMEM;
	w->ts = ts;
	w->cb = cb;
	w->ud = ud;
	if (len)
		memcpy(w->data, data, len);
	uv_buf_t buf = uv_buf_init(w->data, (unsigned)len);
	int r = uv_write(&w->req, ts->stream, &buf, 1, on_write);
	if (r < 0)
		free(w);
	return r;
}

static ssize_t push(gnutls_transport_ptr_t ptr, const void *data, size_t len)
{
	tls_stream *ts = ptr;
	if (ts->broken) {
		gnutls_transport_set_errno(ts->session, EPIPE);
		return -1;
	}
	/* uv_try_write() answers EAGAIN while anything is queued, so order is
	 * kept; whatever the kernel does not take now is queued. */
	uv_buf_t buf = uv_buf_init((char *)data, (unsigned)len);
	int n = uv_try_write(ts->stream, &buf, 1);
	if (n < 0 && n != UV_EAGAIN) {
		ts->broken = true;
		gnutls_transport_set_errno(ts->session, EPIPE);
		return -1;
	}
	size_t done = n > 0 ? (size_t)n : 0;
	if (done < len && queue_write(ts, (const char *)data + done, len - done, NULL, NULL) < 0) {
		ts->broken = true;
		gnutls_transport_set_errno(ts->session, EPIPE);
		return -1;
	}
	return (ssize_t)len;
}

/* --- verification (inside the handshake) --- */

static int verify_peer(gnutls_session_t session)
{
	tls_stream *ts = gnutls_session_get_ptr(session);
	gnutls_datum_t proto = {0};
	size_t alen = strlen(ts->alpn);
	if (gnutls_alpn_get_selected_protocol(session, &proto) < 0 || proto.size != alen ||
	    memcmp(proto.data, ts->alpn, alen) != 0) {
		ts->refused = REFUSED_ALPN;
		set_err(ts, "the peer did not negotiate the protocol \"%s\" (ALPN)", ts->alpn);
		return -1;
	}
	unsigned n = 0;
	const gnutls_datum_t *certs = gnutls_certificate_get_peers(session, &n);
	if (!certs || n == 0 || gnutls_certificate_type_get(session) != GNUTLS_CRT_X509) {
		ts->refused = REFUSED_NO_CERT;
		set_err(ts, "the peer presented no X.509 certificate");
		return -1;
	}
	if (identity_fingerprint_der(&certs[0], ts->fp) < 0) {
		ts->refused = REFUSED_BAD_CERT;
		set_err(ts, "the peer's certificate cannot be parsed");
		return -1;
	}
	ts->have_fp = true;
	if (!ts->pin_ok(ts->pin_ud, ts->fp)) {
		char hex[IDENTITY_FP_HEX_LEN + 1];
		identity_fp_to_hex(ts->fp, hex);
		ts->refused = REFUSED_PIN;
		set_err(ts, "the peer's certificate (fingerprint %s) is not a pinned peer", hex);
		return -1;
	}
	return 0;
}

/* --- lifecycle --- */

int tls_stream_new(uv_stream_t *stream, const tls_stream_config *cfg,
                   const tls_stream_callbacks *cbs, void *ud, tls_stream **out)
{
	if (!stream || !cfg || !cfg->creds || !cfg->pin_ok || !cbs || !cbs->on_data || !out)
		return -EINVAL;
	tls_stream *ts = calloc(1, sizeof(*ts));
	if (!ts)
		return -ENOMEM;
	ts->stream = stream;
	ts->cbs = *cbs;
	ts->ud = ud;
	ts->pin_ok = cfg->pin_ok;
	ts->pin_ud = cfg->pin_ud;
	ts->is_server = cfg->is_server;
	ts->alpn = strdup(cfg->alpn ? cfg->alpn : TLS_STREAM_ALPN);
	if (!ts->alpn) {
		free(ts);
		return -ENOMEM;
	}
	/* No tickets: a resumed session would skip the certificate, and with
	 * it the pin check. */
	unsigned flags =
	    (cfg->is_server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NONBLOCK | GNUTLS_NO_TICKETS;
	int r = gnutls_init(&ts->session, flags);
	if (r < 0) {
		free(ts->alpn);
		free(ts);
		return r == GNUTLS_E_MEMORY_ERROR ? -ENOMEM : -EPROTO;
	}
	const char *errpos = NULL;
	gnutls_datum_t alpn = {(unsigned char *)ts->alpn, (unsigned)strlen(ts->alpn)};
	r = gnutls_priority_set_direct(
	    ts->session, cfg->priority ? cfg->priority : TLS_STREAM_PRIORITY, &errpos);
	if (r >= 0)
		r = gnutls_credentials_set(ts->session, GNUTLS_CRD_CERTIFICATE, cfg->creds);
	if (r >= 0)
		r = gnutls_alpn_set_protocols(ts->session, &alpn, 1, GNUTLS_ALPN_MANDATORY);
	if (r < 0) {
		gnutls_deinit(ts->session);
		free(ts->alpn);
		free(ts);
		return r == GNUTLS_E_MEMORY_ERROR ? -ENOMEM : -EPROTO;
	}
	if (cfg->is_server)
		gnutls_certificate_server_set_request(ts->session, GNUTLS_CERT_REQUIRE);
	gnutls_session_set_ptr(ts->session, ts);
	gnutls_session_set_verify_function(ts->session, verify_peer);
	gnutls_transport_set_ptr(ts->session, ts);
	gnutls_transport_set_pull_function(ts->session, pull);
	gnutls_transport_set_push_function(ts->session, push);
	*out = ts;
	return 0;
}

void tls_stream_free(tls_stream *ts)
{
	if (!ts)
		return;
	gnutls_deinit(ts->session);
	free(ts->alpn);
	free(ts);
}

/* --- errors --- */

static bool alert_refuses_certificate(gnutls_alert_description_t a)
{
	return a == GNUTLS_A_BAD_CERTIFICATE || a == GNUTLS_A_CERTIFICATE_UNKNOWN ||
	       a == GNUTLS_A_UNSUPPORTED_CERTIFICATE || a == GNUTLS_A_ACCESS_DENIED ||
	       a == GNUTLS_A_CERTIFICATE_REQUIRED || a == GNUTLS_A_CERTIFICATE_REVOKED ||
	       a == GNUTLS_A_UNKNOWN_CA;
}

/* A fatal GnuTLS error: record why, tell the peer (best effort), and map
 * it to an errno for the owner. */
static int fail(tls_stream *ts, int gerr, bool in_handshake)
{
	ts->failed = true;
	int r = -EPROTO;
	if (ts->refused != REFUSED_NONE) {
		/* verify_peer() refused and said why (GnuTLS reports it as a
		 * certificate error). */
		if (ts->refused == REFUSED_PIN)
			r = -EPERM;
	} else if (gerr == GNUTLS_E_FATAL_ALERT_RECEIVED) {
		gnutls_alert_description_t a = gnutls_alert_get(ts->session);
		const char *name = gnutls_alert_get_name(a);
		if (alert_refuses_certificate(a)) {
			r = -EPERM;
			set_err(ts, "the peer refused our certificate (TLS alert: %s)",
			        name ? name : "?");
		} else {
			set_err(ts, "the peer ended the TLS %s with the alert: %s",
			        in_handshake ? "handshake" : "session", name ? name : "?");
		}
	} else if (gerr == GNUTLS_E_NO_CERTIFICATE_FOUND || gerr == GNUTLS_E_CERTIFICATE_REQUIRED) {
		set_err(ts, "the peer presented no certificate");
	} else if (gerr == GNUTLS_E_NO_CIPHER_SUITES ||
	           gerr == GNUTLS_E_UNSUPPORTED_VERSION_PACKET) {
		set_err(ts, "TLS handshake failed: the peer does not offer TLS 1.3 (%s)",
		        gnutls_strerror(gerr));
	} else if (ts->broken) {
		r = -ECONNRESET;
		set_err(ts, "writing to the peer failed during the TLS %s",
		        in_handshake ? "handshake" : "session");
	} else {
		set_err(ts, "TLS %s failed: %s", in_handshake ? "handshake" : "session",
		        gnutls_strerror(gerr));
	}
	if (gerr != GNUTLS_E_FATAL_ALERT_RECEIVED && !ts->broken)
		gnutls_alert_send_appropriate(ts->session, gerr);
	return r;
}

/* --- reading --- */

/* 0 established, 1 waiting for more, < 0 failed. */
static int handshake_step(tls_stream *ts)
{
	for (;;) {
		int r = gnutls_handshake(ts->session);
		if (r == GNUTLS_E_SUCCESS)
			break;
		if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
			if (ts->in_len && !ts->broken)
				continue;
			return ts->broken ? fail(ts, r, true) : 1;
		}
		if (!gnutls_error_is_fatal(r))
			continue; /* e.g. a warning alert */
		return fail(ts, r, true);
	}
	/* verify_peer() ran and pinned the peer; belt and braces. */
	if (!ts->have_fp) {
		ts->failed = true;
		set_err(ts, "the TLS handshake completed without a peer certificate");
		return -EPROTO;
	}
	ts->established = true;
	return 0;
}

static int recv_records(tls_stream *ts)
{
	for (;;) {
		size_t before = ts->in_len;
		ssize_t n = gnutls_record_recv(ts->session, ts->plain, sizeof(ts->plain));
		if (n > 0) {
			if (!ts->cbs.on_data(ts->ud, ts->plain, (size_t)n))
				return 0;
			continue;
		}
		if (n == 0)
			return 1; /* close_notify */
		if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
			/* Post-handshake messages may return early with input left. */
			if (ts->in_len && ts->in_len < before)
				continue;
			return 0;
		}
		if (!gnutls_error_is_fatal((int)n))
			continue;
		return fail(ts, (int)n, false);
	}
}

int tls_stream_start(tls_stream *ts)
{
	if (ts->failed)
		return -EPROTO;
	int r = handshake_step(ts);
	if (r == 0 && ts->cbs.on_established)
		ts->cbs.on_established(ts->ud);
	return r < 0 ? r : 0;
}

int tls_stream_feed(tls_stream *ts, const char *data, size_t len)
{
	if (ts->failed)
		return -EPROTO;
	ts->in = data;
	ts->in_len = len;
	int r = 0;
	if (!ts->established) {
		r = handshake_step(ts);
		if (r == 0 && ts->cbs.on_established)
			ts->cbs.on_established(ts->ud);
	}
	if (r == 0 && !ts->failed)
		r = recv_records(ts);
	else if (r > 0)
		r = 0;
	ts->in = NULL;
	ts->in_len = 0;
	return r;
}

/* --- writing --- */

int tls_stream_write(tls_stream *ts, const void *data, size_t len, tls_write_cb cb, void *ud)
{
	if (!ts->established)
		return -ENOTCONN;
	if (ts->broken || ts->failed)
		return -ECONNRESET;
	const char *p = data;
	size_t off = 0;
	while (off < len) {
		ssize_t n = gnutls_record_send(ts->session, p + off, len - off);
		if (n == GNUTLS_E_INTERRUPTED)
			continue;
		if (n < 0) {
			/* Our push never answers EAGAIN, so this is fatal. */
			fail(ts, (int)n, false);
			return -ECONNRESET;
		}
		off += (size_t)n;
	}
	/* An empty write after the data: its callback means all is written. */
	if (cb && queue_write(ts, NULL, 0, cb, ud) < 0) {
		ts->broken = true;
		return -ECONNRESET;
	}
	return 0;
}

void tls_stream_bye(tls_stream *ts)
{
	if (ts && ts->established && !ts->failed && !ts->broken)
		gnutls_bye(ts->session, GNUTLS_SHUT_WR);
}

/* --- state --- */

bool tls_stream_established(const tls_stream *ts)
{
	return ts->established && !ts->failed;
}

const uint8_t *tls_stream_peer_fingerprint(const tls_stream *ts)
{
	return ts->have_fp ? ts->fp : NULL;
}

const char *tls_stream_error(const tls_stream *ts)
{
	return ts->err;
}

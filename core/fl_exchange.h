/*
 * Moving federated-learning deltas between paired peers:
 * POST /peer/v1/fl/delta on the peer port (mutual TLS, paired peers
 * only), the delta sealed end to end with HPKE to the receiving peer's
 * X25519 key (sealed_message.h, media SEALED_MEDIA_SOVMESH_FL, so a sealed
 * inference request can never be opened as a delta or the other way
 * round).  The plaintext is fl_delta.h's message.
 *
 *   request   Content-Type: message/sovmesh-fl-delta
 *             body = sealed request (timestamped; replays refused)
 *   answer    200 {"stored": true}
 *   refusals  plain JSON {"error": ...}:
 *             403  federated learning is off here, or the sender's is
 *             400  not a sealed request / malformed or mismatched delta
 *             409  replayed request, or this round of the sender already received
 *             413  larger than federated_learning.max_delta_bytes
 *             421  sealed to another key
 *             503  not ready (no adapter yet) or too many recent requests
 *
 * This module seals, sends, opens and checks replays; what a delta must
 * look like and where it goes is the receiver callback's business
 * (fl_service.c).  Threading: the loop's thread only.
 */
#ifndef SOVMESH_CORE_FL_EXCHANGE_H
#define SOVMESH_CORE_FL_EXCHANGE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "identity.h"
#include "peer_client.h"
#include "peer_transport.h"

#define FL_DELTA_PATH          "/peer/v1/fl/delta"
#define FL_DELTA_MEDIA         "message/sovmesh-fl-delta"
#define FL_DELTA_KEY_ID        1
/* Sealing adds the header, enc, timestamp and tag. */
#define FL_DELTA_SEAL_OVERHEAD 128

typedef struct fl_exchange fl_exchange;
typedef struct fl_exchange_call fl_exchange_call;

typedef struct fl_exchange_receiver {
	void *ud;
	/* Non-zero when this node takes deltas now. */
	int (*enabled)(void *ud);
	/*
	 * An opened delta from the paired peer `sender_fp` (64 hex).  Return
	 * the HTTP status to answer (200 stored; 400, 403, 409, 413, 503 with
	 * a one-line reason written to msg).  pt is wiped after the call.
	 */
	int (*on_delta)(void *ud, const char *sender_fp, const uint8_t *pt, size_t len, char *msg,
	                size_t msg_len);
} fl_exchange_receiver;

/*
 * `pt` (may be NULL: send only) gets the route; `pc` (may be NULL:
 * receive only) sends.  `id` gives the X25519 key deltas are opened
 * with.  `max_plaintext` bounds what is accepted (the sealed body may be
 * FL_DELTA_SEAL_OVERHEAD larger).  All borrowed; must outlive the object.
 */
int fl_exchange_new(peer_transport *pt, peer_client *pc, const identity *id,
                    size_t max_plaintext, const fl_exchange_receiver *rcv, fl_exchange **out,
                    sovmesh_error *err);
/* SIGHUP may change the limit. */
void fl_exchange_set_max(fl_exchange *x, size_t max_plaintext);

typedef struct fl_exchange_target {
	const char *fingerprint_hex;
	const char *host; /* numeric address */
	int port;
	const uint8_t *x25519_public; /* 32 bytes, from the trust store */
} fl_exchange_target;

/*
 * Seal `pt` to `t` and send it.  done(ud, code, http_status, message)
 * exactly once, later, unless cancelled: code 0 for 200, -EPERM (403),
 * -EALREADY (409), -E2BIG (413), -EBUSY (503), -EIO (other statuses),
 * or the peer client's transport errors.  NULL with err filled when
 * nothing was sent.
 */
fl_exchange_call *fl_exchange_send(fl_exchange *x, const fl_exchange_target *t,
                                   const uint8_t *pt, size_t len, unsigned timeout_ms,
                                   void (*done)(void *ud, int code, long status,
                                                const char *message),
                                   void *ud, sovmesh_error *err);
void fl_exchange_cancel(fl_exchange_call *c);

/* Cancel every call (no callbacks) and free.  NULL is a no-op.  The route
 * stays registered with a handler that answers 503 until the peer port
 * closes, so free this after peer_transport_close(), or not at all
 * before. */
void fl_exchange_free(fl_exchange *x);

#endif

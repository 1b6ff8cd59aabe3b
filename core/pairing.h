/*
 * Pairing by one-time code over TLS-SRP (docs/protocol.md "Pairing",
 * docs/security.md "Pairing codes").
 *
 * Issuer: pairing_offer_new() makes a code and opens the pairing listener,
 * which stays open only while that code is outstanding: until a joiner
 * completes the SRP handshake with it (the code is then used up, whatever
 * follows), max_attempts handshakes have failed (burned), the code
 * expires, or it is replaced or cancelled.  Joiner: pairing_join().
 * Inside the SRP channel both send a pair-hello; the joiner pins the
 * issuer and sends pair-confirm; the issuer pins the joiner on the
 * confirm.  Pinning is the daemon's: the pin callback (trust_store_add).
 *
 * Threads: the API and every callback run on the loop thread.  The
 * listener runs on its own thread and each join on the libuv thread pool,
 * with blocking sockets and GnuTLS; every blocking step polls a stop pipe
 * and a deadline (io_timeout_ms for the handshake and for each message),
 * so stopping is prompt.  Workers reach the loop through one uv_async_t:
 * events are queued, and a pin is a call the worker waits for.
 */
#ifndef SOVMESH_CORE_PAIRING_H
#define SOVMESH_CORE_PAIRING_H

#include <stddef.h>
#include <stdint.h>
#include <sovmesh/plugin.h>
#include <uv.h>

#include "identity.h"
#include "pair_messages.h"
#include "pair_uri.h"

/* The SRP user name both sides use; the password is the normalised code. */
#define PAIRING_SRP_USER "sovmesh-pair"
/* TLS-SRP needs TLS 1.2; nothing else is offered on this listener. */
#define PAIRING_PRIORITY "NORMAL:-VERS-ALL:+VERS-TLS1.2:-KX-ALL:+SRP"

typedef struct pairing pairing;

typedef struct pairing_config {
	const char *listen;           /* SRP listener "IP:PORT" (port 0: any, for tests) */
	unsigned code_ttl_secs;       /* 0 = 600 */
	unsigned max_attempts;        /* failed handshakes before burning; 0 = 5 */
	unsigned io_timeout_ms;       /* handshake, and each message; 0 = 10000 */
	uint16_t peer_port;           /* this node's peer port, announced in pair-hello */
	const char *const *addresses; /* announced peer-port addresses (IP:PORT), may be NULL */
	size_t n_addresses;           /* 0..PAIR_MAX_ADDRS */
	/* Joiner: connect from this numeric address (the node's own peer
	 * listen address when it is not a wildcard), so the issuer sees the
	 * address it will reach us at.  NULL: the kernel picks. */
	const char *bind_host;
} pairing_config;

/*
 * Pin `peer` (borrowed, valid during the call) as trusted, e.g. with
 * trust_store_add.  Its fingerprint was computed here from its
 * certificate; its addresses start with the address it was seen at
 * ("IP:peer_port").  Loop thread.  0, or -errno with err filled: the
 * pairing then fails and the other side is told.  A worker waits for the
 * answer, so this must not call back into the engine (offer_new, cancel,
 * close); the event and join callbacks may.
 */
typedef int (*pairing_pin_fn)(void *ud, const pair_hello *peer, sovmesh_error *err);

typedef enum pairing_event_type {
	PAIRING_PAIRED = 1,     /* peer pinned; the offer is finished */
	PAIRING_ATTEMPT_FAILED, /* a failed handshake was counted; attempts_left */
	PAIRING_FAILED,         /* the code was used but the exchange failed; finished */
	PAIRING_BURNED,         /* max_attempts failed handshakes; finished */
	PAIRING_EXPIRED,        /* finished */
} pairing_event_type;

typedef struct pairing_event {
	pairing_event_type type;
	const pair_hello *peer; /* PAIRING_PAIRED only; borrowed */
	unsigned attempts_left;
	const char *message; /* one line for the log, always set */
} pairing_event;

/* Issuer events, loop thread.  Not called for a cancelled or replaced
 * offer, nor after pairing_close(). */
typedef void (*pairing_event_fn)(void *ud, const pairing_event *ev);

/*
 * A join's outcome, loop thread: status 0 and `peer` (the issuer, pinned;
 * borrowed) or -errno and `message` (one line; for a refused code
 * -EACCES, nothing listening -ECONNREFUSED, -ETIMEDOUT, a fingerprint
 * that is not the URI's -EPERM, a bad message -EPROTO, pairing_close
 * -ECANCELED).  Always called exactly once per successful pairing_join().
 */
typedef void (*pairing_join_fn)(void *ud, int status, const pair_hello *peer, const char *message);

/*
 * Create the engine on `loop` (loop thread).  `self` is borrowed and must
 * outlive the engine; `cfg` is copied.  No socket is opened yet.  *out is
 * freed by pairing_close().  0 or -errno with a message (bad listen
 * address, a node name or address pairing cannot announce).
 */
int pairing_new(uv_loop_t *loop, const identity *self, const pairing_config *cfg,
                pairing_pin_fn pin, pairing_event_fn on_event, void *ud, pairing **out,
                sovmesh_error *err);

typedef struct pairing_offer_info {
	char code[PAIR_CODE_DISPLAY_LEN + 1]; /* "XXXXX-XXXXX" */
	int64_t expires_at;                   /* Unix seconds */
	unsigned attempts_left;
	char listen[PAIR_HOSTPORT_MAX + 1]; /* bound address, real port */
	uint16_t port;                      /* the bound port */
} pairing_offer_info;

/*
 * Make a new code and open the listener; an outstanding code is replaced
 * (its listener closed first, no event for it).  *info (may be NULL) gets
 * the code to show.  Loop thread.  0 or -errno with a message (the
 * listener cannot bind, no randomness).
 */
int pairing_offer_new(pairing *p, pairing_offer_info *info, sovmesh_error *err);

/* 1 and *info filled while a code is outstanding, else 0.  Loop thread. */
int pairing_offer_get(pairing *p, pairing_offer_info *info);

/* Withdraw the outstanding code and close its listener; no event follows.
 * 0 or -ENOENT if none.  Loop thread. */
int pairing_offer_cancel(pairing *p);

/*
 * Join the issuer at `hostport` (numeric IP:PORT) with `code` (any form
 * pair_code_normalize accepts).  `expected_fp_hex` (may be NULL): the
 * fingerprint from a pairing URI; the issuer must present exactly it.
 * Strings are copied.  `done` runs once on the loop thread.  0 (started)
 * or -errno with a message (bad code or address: nothing started).
 */
int pairing_join(pairing *p, const char *code, const char *hostport, const char *expected_fp_hex,
                 pairing_join_fn done, void *ud, sovmesh_error *err);

/*
 * Stop everything: withdraw the code, close the listener, abort joins in
 * progress (their done callbacks run with -ECANCELED), close the async
 * handle, free the engine, then call on_closed(ud) (may be NULL) on the
 * loop thread.  Neither on_event nor pin is called once this returns.
 * NULL p is a no-op.
 */
void pairing_close(pairing *p, void (*on_closed)(void *ud), void *ud);

#endif

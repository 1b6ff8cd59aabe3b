/*
 * Federated learning inside the daemon (docs/federated-learning.md):
 * feedback in, rounds, the privacy budget, deltas to and from peers,
 * aggregation, and the adapter applied to the backend.
 *
 * A round, after every federated_learning.sync_after_n_samples new samples:
 *   1. the pending samples are assigned to a round (fl_store.h);
 *   2. train (trainer plugin, thread pool) from the current adapter;
 *      delta = new - current;
 *   3. if the budget allows it and a Connected paired peer with federated
 *      learning on exists: a copy of the delta is clipped and noised (noise
 *      plugin, thread pool);
 *   4. the ledger is charged, durably, BEFORE anything is sealed;
 *   5. the noisy delta (fl_delta.h, nothing but tensors and a sample
 *      count) is sealed to each of at most max_peers such peers and sent
 *      (fl_exchange.h);
 *   6. this node's own clean delta goes into its inbox next to the ones
 *      peers send; after aggregation_wait_secs (or once every expected
 *      peer has sent) the aggregator plugin combines the newest delta of
 *      each sender, weighted by sample counts, the result is added to the
 *      current adapter, stored as a new adapter (fl_adapters.h) and
 *      applied to the backend (Ollama /api/create).
 * Without budget or peers the round still trains and aggregates locally;
 * nothing leaves the device and nothing is charged.
 *
 * Control endpoints:
 *   POST /v1/feedback          {"prompt", "response", "rating": "up"|"down",
 *                               "correction", "model"} -> {"id", "pending",
 *                               "sync_after_n_samples"}
 *   GET  /v1/fl/status         fl_service_status()
 *   GET  /v1/budget            fl_store_budget_json()
 *   POST /v1/budget/new-period {"total": x (optional), "confirm": true}
 *   POST /v1/fl/rollback       back to the previous adapter, re-applied
 * and the front door's POST /api/feedback (same body as /v1/feedback).
 *
 * Testing hooks (environment, read at start; docs/testing.md):
 *   SOVMESH_TEST_FL_CRASH_AT=<point>   raise SIGKILL at that point of a
 *       round: after_train, after_charge, after_encode, after_send,
 *       after_round, after_aggregate, after_commit
 *   SOVMESH_TEST_FL_PLAINTEXT_DIR=DIR  write every plaintext just before it
 *       is sealed to DIR/<round>-<peer>.bin
 *
 * Threading: the loop's thread; training, noise and aggregation run on
 * the thread pool.
 */
#ifndef SOVMESH_CORE_FL_SERVICE_H
#define SOVMESH_CORE_FL_SERVICE_H

#include <jansson.h>
#include <sovmesh/plugin.h>
#include <uv.h>

#include "config.h"
#include "control_api.h"
#include "host.h"
#include "http_server.h"
#include "identity.h"
#include "peer_client.h"
#include "peer_health.h"
#include "peer_table.h"
#include "peer_transport.h"
#include "trust_store.h"

typedef struct fl_service fl_service;

typedef struct fl_service_ctx {
	uv_loop_t *loop;
	const sovmesh_config *cfg; /* read at start; reload passes the next one */
	plugin_instance *trainer, *noise, *aggregator; /* all three required */
	plugin_instance *backend;  /* NULL: adapters are not applied */
	const identity *id;        /* this node */
	trust_store *trust;
	peer_client *pc;           /* NULL with the mesh off: no syncing */
	peer_table *ptable;
	peer_transport *peer_port;
	peer_health *health;
	control_api *control;
} fl_service_ctx;

/* Open the store (<state_dir>/fl/), register the endpoints and the peer
 * route, make the initial adapter if there is none, and resume: a round
 * whose samples are pending, deltas waiting for aggregation. */
int fl_service_start(const fl_service_ctx *ctx, fl_service **out, sovmesh_error *err);

/* With federated learning off: the same endpoints answer 409 "federated
 * learning is off" (GET /v1/fl/status: {"enabled": false}). */
int fl_service_register_disabled(control_api *api);

/* SIGHUP: sync_after_n_samples, max_peers, noise_epsilon, noise_clip,
 * privacy_budget, aggregation_wait_secs and max_delta_bytes. */
void fl_service_reload(fl_service *s, const sovmesh_config *next);

/* The POST /api/feedback handler for the front door (ud: the service). */
void fl_service_feedback_http(void *ud, const http_request *req, http_response *resp);

/* {"enabled", "ready", "not_ready_reason", "samples_pending", "samples_total",
 *  "sync_after_n_samples", "rounds_done", "round_running", "last_round",
 *  "epsilon_spent", "budget": {...}, "adapter": {...}, "applied": {...},
 *  "plugins": {"trainer", "noise", "aggregator"}, "inbox_pending",
 *  "deltas": {"sent", "received", "refused"}, "peers": fl_store_sync_json} */
json_t *fl_service_status(fl_service *s);

/* No new rounds or sends; cancel what is in flight (work already on the
 * thread pool finishes and is dropped). */
void fl_service_stop(fl_service *s);
/* Free once the peer port has closed (its route points here).  Safe
 * while pool work is still running: the last one frees. */
void fl_service_free(fl_service *s);

#endif

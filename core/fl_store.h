/*
 * The federated-learning store: one SQLite database,
 * <state_dir>/fl/fl.db (WAL, synchronous=FULL, versioned schema), that
 * holds what must survive a crash:
 *
 *   samples   feedback turned into training samples (never sent anywhere)
 *   ledger    the privacy-budget ledger: budget periods and charges
 *   rounds    one row per FL round and its outcome
 *   inbox     received noisy deltas waiting for aggregation (the tensor
 *             bytes live in files next to the database; rows name them)
 *
 * Why SQLite: a charge must be on disk before a noisy delta leaves the
 * device (DESIGN.md §6.9).  fl_store_charge() returns only after its
 * transaction committed with synchronous=FULL, so a kill -9 afterwards
 * cannot lose it; a kill -9 before it returns means nothing was sent.
 *
 * Budget periods: the first open starts period 1 with the configured
 * total.  A lower configured total is written into the current period
 * (at open, and whenever the budget is read or charged), so the
 * effective total only ever goes down within a period: lowering the key
 * takes effect at once and for good, raising it needs an explicit new
 * period (fl_store_new_period, `sovmesh budget new-period`), so neither a
 * restart nor a config edit refills a budget silently.
 *
 * Threading: one thread at a time per fl_store (the loop's).
 */
#ifndef SOVMESH_CORE_FL_STORE_H
#define SOVMESH_CORE_FL_STORE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <sovmesh/plugin.h>
#include <sovmesh/trainer.h> /* SOVMESH_RATING_* */

#include "privacy_accountant.h"

typedef struct fl_store fl_store;

/* Limits on one feedback sample (bytes of UTF-8). */
#define FL_SAMPLE_TEXT_MAX  (64 * 1024)
#define FL_SAMPLE_MODEL_MAX 256

/*
 * Open or create the database at `path` (its directory must exist; the
 * file is made 0600).  `configured_total` is federated_learning.
 * privacy_budget, used when period 1 is created.  A database that is not
 * ours, of a newer schema, or corrupt is refused with -EINVAL / -EIO and a
 * message naming the file; nothing is deleted (the ledger must not be
 * lost by starting over).  Rounds left "running" by a crash are marked
 * "interrupted" and their samples become pending again.
 */
int fl_store_open(const char *path, double configured_total, fl_store **out, sovmesh_error *err);
void fl_store_close(fl_store *s);

/* ---- samples ----------------------------------------------------------- */

typedef struct fl_feedback {
	const char *model;      /* may be NULL or "" */
	const char *prompt;     /* required, non-empty */
	const char *response;   /* required for a rating; may be NULL with a correction */
	const char *correction; /* NULL or non-empty */
	int rating;             /* SOVMESH_RATING_UP / _DOWN / _NONE (with a correction) */
} fl_feedback;

/* Validate and store one sample; *id (may be NULL) gets its id.  -EINVAL
 * with a message naming the field for bad input (missing prompt, text
 * over FL_SAMPLE_TEXT_MAX, invalid UTF-8, rating NONE without a
 * correction, ...). */
int fl_store_add_sample(fl_store *s, const fl_feedback *fb, int64_t now, int64_t *id,
                        sovmesh_error *err);

/* Samples not yet used by a finished or running round. */
int64_t fl_store_pending_count(fl_store *s);
/* All samples ever stored. */
int64_t fl_store_sample_count(fl_store *s);

/* Samples loaded for training; strings owned by the list. */
typedef struct fl_sample_row {
	int64_t id;
	int64_t created;
	char *model, *prompt, *response, *correction; /* NULL when absent */
	int rating;
} fl_sample_row;
typedef struct fl_sample_list {
	fl_sample_row *rows;
	size_t count;
} fl_sample_list;
void fl_sample_list_free(fl_sample_list *l);

/* ---- rounds ------------------------------------------------------------ */

/*
 * Start round: assign up to `max_samples` pending samples (oldest first)
 * to a new round row (state "running") and load them into *samples.
 * *round_id gets the round's id.  -ENOENT when no sample is pending.
 */
int fl_store_round_begin(fl_store *s, int64_t now, size_t max_samples, int64_t *round_id,
                         fl_sample_list *samples, sovmesh_error *err);

/*
 * Finish a round: state "done" (its samples stay used) or "failed" (its
 * samples become pending again, so a transient failure loses nothing).
 * `outcome` one line for `sovmesh fl status` ("synced with 2 peers",
 * "trained locally; privacy budget spent", "training failed: ...").
 * `peers_sent` how many peers received the delta.
 */
int fl_store_round_end(fl_store *s, int64_t round_id, int64_t now, int ok, const char *outcome,
                       int peers_sent, sovmesh_error *err);

/* Rounds done (state "done"). */
int64_t fl_store_rounds_done(fl_store *s);
/* The newest round as {"id", "started", "finished"|null, "state",
 * "samples", "outcome", "peers_sent", "epsilon"} or JSON null. */
json_t *fl_store_last_round_json(fl_store *s);

/* ---- privacy ledger ---------------------------------------------------- */

typedef struct fl_budget {
	int64_t period;         /* 1, 2, ... */
	int64_t period_started; /* Unix seconds */
	double total;           /* effective total of this period */
	double spent;           /* ε charged in this period */
	double remaining;       /* max(0, total - spent) */
	double delta_spent;     /* δ charged in this period */
	int64_t charges;        /* charges in this period */
} fl_budget;

/* How spent ε is computed: basic composition (the default) or RDP at
 * `target_delta` (privacy_accountant.h).  Every charge keeps its noise
 * family and multiplier, so the choice can change at any time. */
void fl_store_set_accountant(fl_store *s, accountant_kind kind, double target_delta);

/* The current period's budget, with `configured_total` applied as above. */
int fl_store_budget(fl_store *s, double configured_total, fl_budget *out, sovmesh_error *err);

/*
 * Charge ε (and δ) for one release of round `round_id` (the noisy delta
 * about to be sealed and sent to the peers listed in `peers`, a JSON
 * array of fingerprints, borrowed), durably: the row is committed with
 * synchronous=FULL before this returns.  -ENOSPC, and nothing recorded,
 * when spent + epsilon would exceed the effective total.  Only after 0
 * may the delta leave the device.
 */
int fl_store_charge(fl_store *s, double configured_total, int64_t round_id, double epsilon,
                    double delta, const char *mechanism, json_t *peers, int64_t now,
                    sovmesh_error *err);

/*
 * The same for one release as the noise plugin described it (family,
 * noise multiplier, ε, δ): the budget check composes it with the period's
 * charges under the store's accountant.  fl_store_charge() is this with
 * family OTHER (plain ε, δ).
 */
int fl_store_charge_release(fl_store *s, double configured_total, int64_t round_id,
                            const accountant_release *rel, const char *mechanism, json_t *peers,
                            int64_t now, sovmesh_error *err);

/*
 * {"period", "period_started", "total", "spent", "remaining",
 *  "delta_spent", "charges", "accountant": "basic"|"rdp", "target_delta": x|null,
 *  "history": [{"time", "round", "epsilon", "delta", "mechanism",
 *               "peers": [..], "period", "family": "laplace"|"gaussian"|
 *               "none"|"other", "noise_multiplier"}...] newest first, at most
 *               max_history,
 *  "periods": [{"period", "started", "total", "spent", "reason"}...]}
 */
json_t *fl_store_budget_json(fl_store *s, double configured_total, size_t max_history);

/*
 * Start a new budget period with `total` (> 0, finite); `reason` is
 * recorded.  The old period's charges stay in the history.
 */
int fl_store_new_period(fl_store *s, double total, int64_t now, const char *reason,
                        sovmesh_error *err);

/* ---- inbox: received deltas -------------------------------------------- */

typedef struct fl_inbox_row {
	int64_t id;
	char *sender_fp;   /* 64 hex */
	char *sender_name;
	char *path;        /* safetensors file of the noisy delta */
	int64_t received;
	int64_t samples;   /* the sender's sample count (the FedAvg weight) */
	int64_t sender_round;
} fl_inbox_row;
typedef struct fl_inbox_list {
	fl_inbox_row *rows;
	size_t count;
} fl_inbox_list;
void fl_inbox_list_free(fl_inbox_list *l);

/* Record a received delta already written to `path`. */
int fl_store_inbox_add(fl_store *s, const char *sender_fp, const char *sender_name,
                       const char *path, int64_t samples, int64_t sender_round, int64_t now,
                       int64_t *id, sovmesh_error *err);
/* Deltas not yet aggregated, oldest first. */
int fl_store_inbox_pending(fl_store *s, fl_inbox_list *out, sovmesh_error *err);
/* Mark rows aggregated (their files may then be deleted by the caller). */
int fl_store_inbox_done(fl_store *s, const int64_t *ids, size_t n, sovmesh_error *err);

/* ---- per-peer sync times ------------------------------------------------ */

/* Record that a delta was sent to (sent != 0) or received from a peer. */
int fl_store_note_sync(fl_store *s, const char *fingerprint_hex, int sent, int64_t now);
/* {"<fp>": {"last_sent": n|null, "last_received": n|null}, ...} */
json_t *fl_store_sync_json(fl_store *s);

#endif

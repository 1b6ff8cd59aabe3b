/* Federated learning inside the daemon (see fl_service.h). */
#include "fl_service.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sovmesh/aggregator.h>
#include <sovmesh/backend.h>
#include <sovmesh/noise.h>
#include <sovmesh/trainer.h>

#include "fl_adapters.h"
#include "fl_delta.h"
#include "fl_exchange.h"
#include "fl_store.h"
#include "privacy_accountant.h"
#include "hostport.h"
#include "log.h"
#include "random.h"
#include "safetensors.h"
#include "state_file.h"
#include "tensor_set.h"

#define MAX_SAMPLES_PER_ROUND 10000
#define SEND_TIMEOUT_MS       60000u
#define MAX_FL_PEERS          1000
#define LEDGER_HISTORY        50
#define FP_SHOW               16
/* When aggregation must wait for a running one, try again after this. */
#define AGG_RETRY_MS 1000

typedef struct fl_peer {
	char fp[IDENTITY_FP_HEX_LEN + 1];
	char name[128];
	char addr[HOSTPORT_TEXT_MAX];
	double latency_ms;
} fl_peer;

typedef struct round_job round_job;
struct send_ctx;
typedef struct agg_job agg_job;

typedef enum apply_state {
	APPLY_NONE = 0,
	APPLY_PENDING,
	APPLY_OK,
	APPLY_FAILED,
} apply_state;

struct fl_service {
	fl_service_ctx ctx;
	char *state_dir;
	char fl_dir[PATH_MAX];
	char inbox_dir[PATH_MAX];
	fl_store *store;
	fl_adapters *adapters;
	fl_exchange *x;
	/* The current adapter (heap copy) and its adapter_config.json. */
	sovmesh_tensor_set *current;
	char *current_config;
	char not_ready[300]; /* why there is no current adapter yet */

	/* Reloadable settings. */
	int64_t sync_after;
	int64_t max_peers;
	double epsilon, clip, budget_total, noise_delta;
	accountant_kind acct;
	int64_t wait_secs;
	size_t max_delta;
	int64_t train_timeout_secs;
	char *base_model, *adapted_model, *default_model;

	/* Work in progress: at most one round and one aggregation. */
	round_job *round;
	agg_job *agg;
	int init_running;
	int works; /* thread-pool jobs not yet done */
	uv_timer_t agg_timer;
	int agg_timer_armed;
	int timer_open;

	/* The adapter on the backend. */
	apply_state apply;
	char apply_error[400];
	char applied_adapter[FL_ADAPTER_NAME_MAX];
	char applied_model[256];
	char applied_base[256];
	int64_t applied_at;
	sovmesh_backend_call *backend_call;

	int64_t deltas_sent, deltas_received, deltas_refused, aggregations;
	const char *crash_at;
	const char *plaintext_dir;
	int stopped, free_pending;
};

/* snprintf that may cut: messages and paths here are bounded on purpose
 * (a cut message is better than none; paths were checked at start). */
static void fmt_to(char *buf, size_t len, const char *fmt, ...) SOVMESH_PRINTF(3, 4);
static void fmt_to(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, len, fmt, ap);
	va_end(ap);
}

/* ---- small helpers ----------------------------------------------------------- */

static const sovmesh_trainer_ops *trainer_ops(const fl_service *s)
{
	return s->ctx.trainer->plugin->ops;
}

static const sovmesh_noise_ops *noise_ops(const fl_service *s)
{
	return s->ctx.noise->plugin->ops;
}

static const sovmesh_aggregator_ops *agg_ops(const fl_service *s)
{
	return s->ctx.aggregator->plugin->ops;
}

static const sovmesh_backend_ops *backend_ops(const fl_service *s)
{
	return s->ctx.backend ? s->ctx.backend->plugin->ops : NULL;
}

/* Testing hook: die here, as kill -9 would, when told to. */
static void crash_point(const fl_service *s, const char *point)
{
	if (s->crash_at && strcmp(s->crash_at, point) == 0) {
		log_warning("fl: SOVMESH_TEST_FL_CRASH_AT=%s: killing this process now", point);
		raise(SIGKILL);
	}
}

static char *dup_or_empty(const char *s)
{
	return strdup(s ? s : "");
}

static void take_settings(fl_service *s, const sovmesh_config *cfg)
{
	s->sync_after = cfg->sync_after_n_samples;
	s->max_peers = cfg->max_peers;
	s->epsilon = cfg->noise_epsilon;
	s->clip = cfg->noise_clip;
	s->noise_delta = cfg->noise_delta;
	s->budget_total = cfg->privacy_budget;
	s->wait_secs = cfg->aggregation_wait_secs;
	s->max_delta = (size_t)cfg->max_delta_bytes;
	s->train_timeout_secs = cfg->train_timeout_secs;
	free(s->base_model);
	free(s->adapted_model);
	free(s->default_model);
	s->base_model = dup_or_empty(cfg->fl_base_model);
	s->adapted_model = dup_or_empty(cfg->fl_adapted_model);
	s->default_model = dup_or_empty(cfg->inference_default_model);
	fl_exchange_set_max(s->x, s->max_delta);
	accountant_kind k = ACCOUNTANT_BASIC;
	accountant_parse(cfg->fl_accountant, &k); /* config.c checked the name */
	s->acct = k;
	if (s->store)
		fl_store_set_accountant(s->store, k, cfg->target_delta);
}

static void set_current(fl_service *s, sovmesh_tensor_set *set, char *config_json)
{
	tset_free(s->current);
	free(s->current_config);
	s->current = set;
	s->current_config = config_json;
	s->not_ready[0] = '\0';
}

/* Connected paired peers that said federated learning is on, lowest
 * latency first, at most max_peers. */
static size_t eligible_peers(const fl_service *s, fl_peer *out, size_t max)
{
	if (!s->ctx.ptable || !s->ctx.pc)
		return 0;
	size_t n = 0;
	size_t total = peer_table_paired_count(s->ctx.ptable);
	for (size_t i = 0; i < total && n < max; i++) {
		peer_info pi;
		if (peer_table_paired_at(s->ctx.ptable, i, &pi) < 0)
			continue;
		if (pi.status != PEER_CONNECTED || pi.fl_enabled != 1 || !pi.address[0])
			continue;
		fl_peer *p = &out[n++];
		fmt_to(p->fp, sizeof(p->fp), "%s", pi.fingerprint_hex);
		fmt_to(p->name, sizeof(p->name), "%s", pi.name ? pi.name : "");
		fmt_to(p->addr, sizeof(p->addr), "%s", pi.address);
		p->latency_ms = pi.latency_ms < 0 ? 1e9 : pi.latency_ms;
	}
	/* Insertion sort by latency: the list is short. */
	for (size_t i = 1; i < n; i++) {
		fl_peer t = out[i];
		size_t j = i;
		while (j > 0 && out[j - 1].latency_ms > t.latency_ms) {
			out[j] = out[j - 1];
			j--;
		}
		out[j] = t;
	}
	return n;
}

static size_t peer_limit(const fl_service *s)
{
	return (size_t)(s->max_peers < MAX_FL_PEERS ? s->max_peers : MAX_FL_PEERS);
}

static void maybe_free(fl_service *s);
static void maybe_start_round(fl_service *s);
static void schedule_aggregation(fl_service *s);
static void apply_current(fl_service *s);

/* ---- the initial adapter --------------------------------------------------- */

typedef struct init_job {
	uv_work_t w;
	fl_service *s;
	sovmesh_tensor_set *out;
	int rc;
	sovmesh_error err;
} init_job;

static void init_work(uv_work_t *w)
{
	init_job *j = w->data;
	fl_service *s = j->s;
	sovmesh_train_input in = {.size = sizeof(in), .base_model = s->base_model};
	sovmesh_train_report rep = {.size = sizeof(rep)};
	j->rc = trainer_ops(s)->train(s->ctx.trainer->instance, &in, &j->out, &rep, &j->err);
	if (j->rc == 0 && !j->out)
		j->rc = sovmesh_fail(&j->err, -EINVAL, "the trainer returned no adapter");
	if (j->rc == 0)
		j->rc = tset_sort_by_name(j->out, &j->err);
	if (j->rc == 0)
		j->rc = tset_check_finite(j->out, &j->err);
}

static void init_done(uv_work_t *w, int status)
{
	init_job *j = w->data;
	fl_service *s = j->s;
	s->works--;
	s->init_running = 0;
	if (s->stopped || status < 0) {
		tset_free(j->out);
		free(j);
		maybe_free(s);
		return;
	}
	if (j->rc < 0) {
		fmt_to(s->not_ready, sizeof(s->not_ready),
		         "the trainer %s could not make the initial adapter: %s",
		         s->ctx.trainer->plugin->label,
		         j->err.message[0] ? j->err.message : strerror(-j->rc));
		log_error("fl: %s", s->not_ready);
		tset_free(j->out);
		free(j);
		return;
	}
	sovmesh_error err = {0};
	char name[FL_ADAPTER_NAME_MAX];
	int r = fl_adapters_commit(s->adapters, j->out, NULL, name, &err);
	if (r < 0) {
		fmt_to(s->not_ready, sizeof(s->not_ready), "cannot store the initial adapter: %s",
		         err.message);
		log_error("fl: %s", s->not_ready);
		tset_free(j->out);
		free(j);
		return;
	}
	set_current(s, j->out, NULL);
	free(j);
	log_info("fl: initial adapter '%s' made by %s", name, s->ctx.trainer->plugin->label);
	maybe_start_round(s);
	schedule_aggregation(s);
}

static void start_initial_adapter(fl_service *s)
{
	init_job *j = calloc(1, sizeof(*j));
	if (!j) {
		fmt_to(s->not_ready, sizeof(s->not_ready), "out of memory");
		return;
	}
	j->s = s;
	j->w.data = j;
	fmt_to(s->not_ready, sizeof(s->not_ready), "making the initial adapter");
	if (uv_queue_work(s->ctx.loop, &j->w, init_work, init_done) < 0) {
		free(j);
		fmt_to(s->not_ready, sizeof(s->not_ready), "cannot queue the initial adapter");
		return;
	}
	s->works++;
	s->init_running = 1;
}

/* ---- a round ------------------------------------------------------------- */

struct round_job {
	uv_work_t w;
	fl_service *s;
	int64_t round_id;
	fl_sample_list rows;
	sovmesh_sample *samples;
	sovmesh_tensor_set *current; /* the job's copy */
	uint64_t seed;
	/* Decided on the loop before training. */
	int will_sync;
	char no_sync[300];
	sovmesh_noise_params params;
	sovmesh_privacy_cost cost;
	double charged; /* ε recorded in the ledger for this round's sync */
	/* Results of the work. */
	sovmesh_tensor_set *trained, *delta, *noisy;
	sovmesh_train_report report;
	int rc;
	const char *failed_step;
	sovmesh_error err;
	/* Sending. */
	fl_peer *peers;
	size_t n_peers;
	fl_exchange_call **calls;
	struct send_ctx *ctxs; /* one per call: (job, index) for send_done */
	size_t sends_pending, sent_ok;
	char outcome[400];
};

static void round_job_free(round_job *j)
{
	if (!j)
		return;
	fl_sample_list_free(&j->rows);
	free(j->samples);
	tset_free(j->current);
	tset_free(j->trained);
	tset_free(j->delta);
	tset_free(j->noisy);
	free(j->peers);
	free(j->calls);
	free(j->ctxs);
	free(j);
}

static sovmesh_tensor_set *copy_set(const sovmesh_tensor_set *src)
{
	sovmesh_tensor_set *c = tset_new(src, src->count);
	if (!c)
		return NULL;
	for (size_t i = 0; i < src->count; i++)
		memcpy(c->tensors[i].data, src->tensors[i].data, src->tensors[i].nbytes);
	return c;
}

static void round_work(uv_work_t *w)
{
	round_job *j = w->data;
	fl_service *s = j->s;
	sovmesh_train_input in = {
	    .size = sizeof(in),
	    .samples = j->samples,
	    .n_samples = j->rows.count,
	    .current = j->current,
	    .base_model = s->base_model,
	    .timeout_ms = (uint32_t)(s->train_timeout_secs * 1000 > UINT32_MAX
	                                 ? UINT32_MAX
	                                 : s->train_timeout_secs * 1000),
	    .seed = j->seed,
	};
	char cur_dir[PATH_MAX];
	if (fl_adapters_current(s->adapters)) {
		fl_adapters_dir(s->adapters, fl_adapters_current(s->adapters), cur_dir,
		                sizeof(cur_dir));
		in.current_dir = cur_dir;
	}
	j->report.size = sizeof(j->report);
	j->report.loss_before = j->report.loss_after = NAN;
	j->failed_step = "training";
	j->rc = trainer_ops(s)->train(s->ctx.trainer->instance, &in, &j->trained, &j->report,
	                              &j->err);
	if (j->rc == 0 && !j->trained)
		j->rc = sovmesh_fail(&j->err, -EINVAL, "the trainer returned no adapter");
	if (j->rc == 0)
		j->rc = tset_sort_by_name(j->trained, &j->err);
	if (j->rc < 0)
		return;
	j->failed_step = "computing the delta";
	j->rc = fl_delta_subtract(j->trained, j->current, &j->delta, &j->err);
	if (j->rc < 0 || !j->will_sync)
		return;
	j->failed_step = "adding noise";
	j->noisy = copy_set(j->delta);
	if (!j->noisy) {
		j->rc = sovmesh_fail(&j->err, -ENOMEM, "out of memory");
		return;
	}
	memset(&j->cost, 0, sizeof(j->cost));
	j->cost.size = sizeof(j->cost);
	j->rc = noise_ops(s)->perturb(s->ctx.noise->instance, j->noisy, &j->params, &j->cost,
	                              &j->err);
	if (j->rc == 0)
		j->rc = tset_check_finite(j->noisy, &j->err);
}

static void finish_round(fl_service *s, round_job *j, int ok)
{
	sovmesh_error err = {0};
	if (fl_store_round_end(s->store, j->round_id, (int64_t)time(NULL), ok, j->outcome,
	                       (int)j->sent_ok, &err) < 0)
		log_error("fl: round %" PRId64 ": %s", j->round_id, err.message);
	log_info("fl: round %" PRId64 ": %s", j->round_id, j->outcome);
	s->round = NULL;
	round_job_free(j);
	crash_point(s, "after_round");
	if (!s->stopped) {
		schedule_aggregation(s);
		maybe_start_round(s);
	}
}

/* Put this node's own clean delta in the inbox: it is aggregated with the
 * peers' noisy ones (it never leaves the device, so it needs no noise). */
static int store_own_delta(fl_service *s, round_job *j, sovmesh_error *err)
{
	char path[PATH_MAX];
	fmt_to(path, sizeof(path), "%s/self-r%06" PRId64 ".safetensors", s->inbox_dir,
	         j->round_id);
	int r = safetensors_write_file(path, j->delta, err);
	if (r < 0)
		return r;
	r = fl_store_inbox_add(s->store, s->ctx.id->fingerprint_hex, "self", path,
	                       (int64_t)j->rows.count, j->round_id, (int64_t)time(NULL), NULL,
	                       err);
	if (r < 0)
		unlink(path);
	return r;
}

static void send_done(void *ud, int code, long status, const char *message);

typedef struct send_ctx send_ctx;
struct send_ctx {
	round_job *j;
	size_t index;
};

static void note_sync(fl_service *s, const char *fp, int sent)
{
	int64_t now = (int64_t)time(NULL);
	fl_store_note_sync(s->store, fp, sent, now);
	sovmesh_error err = {0};
	if (trust_store_find(s->ctx.trust, fp) &&
	    trust_store_note_sync(s->ctx.trust, fp, now, &err) < 0)
		log_warning("fl: %s", err.message);
}

static void dump_plaintext(const fl_service *s, const round_job *j, const fl_peer *p,
                           const void *pt, size_t len)
{
	if (!s->plaintext_dir)
		return;
	char path[PATH_MAX];
	fmt_to(path, sizeof(path), "%s/r%06" PRId64 "-%.16s.bin", s->plaintext_dir, j->round_id,
	         p->fp);
	struct iovec iov = {(void *)pt, len};
	sovmesh_error err = {0};
	if (state_file_write(path, &iov, 1, &err) < 0)
		log_warning("fl: plaintext dump: %s", err.message);
}

/* A mechanism without privacy (dp-none, allowed by
 * federated_learning.allow_no_noise): its ε is unbounded. */
static int no_privacy(const sovmesh_privacy_cost *c)
{
	return c->family == SOVMESH_NOISE_NONE || !isfinite(c->epsilon);
}

/* Would one more release of `cost` fit?  Basic: spent + ε <= total.  RDP
 * composes, so the ledger's own check decides at charge time; here the
 * cheap bound "something is left" is enough to decide to train for a
 * sync. */
static int fits_budget(const fl_service *s, const fl_budget *b, const sovmesh_privacy_cost *cost)
{
	if (s->acct == ACCOUNTANT_RDP)
		return b->remaining > 0;
	return b->spent + cost->epsilon <= b->total + 1e-9;
}

/* Steps 4 and 5: charge, then seal and send. */
static void charge_and_send(fl_service *s, round_job *j)
{
	/* Peers may have gone since training started: ask again. */
	size_t max = peer_limit(s);
	fl_peer *peers = calloc(max ? max : 1, sizeof(*peers));
	size_t n = peers ? eligible_peers(s, peers, max) : 0;
	if (n == 0) {
		free(peers);
		fmt_to(j->outcome, sizeof(j->outcome),
		         "trained locally; not synced: no connected peer with federated learning "
		         "on");
		finish_round(s, j, 1);
		return;
	}
	json_t *fps = json_array();
	for (size_t i = 0; fps && i < n; i++)
		json_array_append_new(fps, json_string(peers[i].fp));
	sovmesh_error err = {0};
	j->charged = j->cost.epsilon;
	if (no_privacy(&j->cost)) {
		/* ε is infinite: the ledger cannot record more than the
		 * period's total, so the sync takes all that is left. */
		fl_budget b;
		j->charged = fl_store_budget(s->store, s->budget_total, &b, &err) == 0 ? b.remaining
		                                                                        : 0;
		log_warning("fl: round %" PRId64 ": sending a delta WITHOUT noise "
		            "(noise_mechanism = none, allow_no_noise = true): no differential "
		            "privacy; the rest of this budget period (ε %g) is charged",
		            j->round_id, j->charged);
		if (!(j->charged > 0))
			j->charged = INFINITY; /* refused below: nothing is left */
	}
	accountant_release rel = {
	    .family = no_privacy(&j->cost) ? SOVMESH_NOISE_OTHER : j->cost.family,
	    .noise_multiplier = j->cost.noise_multiplier,
	    .epsilon = j->charged,
	    .delta = j->cost.delta,
	};
	int r = fps ? fl_store_charge_release(s->store, s->budget_total, j->round_id, &rel,
	                                      s->ctx.noise->plugin->desc->name, fps,
	                                      (int64_t)time(NULL), &err)
	            : -ENOMEM;
	json_decref(fps);
	if (r < 0) {
		free(peers);
		if (r == -ENOSPC) {
			log_warning("fl: round %" PRId64 ": sync skipped: %s", j->round_id,
			            err.message);
			fmt_to(j->outcome, sizeof(j->outcome), "trained locally; not synced: %s",
			         err.message);
		} else {
			log_error("fl: round %" PRId64 ": cannot charge the privacy ledger, "
			          "nothing sent: %s",
			          j->round_id, err.message);
			fmt_to(j->outcome, sizeof(j->outcome),
			         "trained locally; not synced: the privacy ledger failed: %s",
			         err.message);
		}
		finish_round(s, j, 1);
		return;
	}
	crash_point(s, "after_charge");
	void *pt = NULL;
	size_t pt_len = 0;
	r = fl_delta_encode(j->noisy, (int64_t)j->rows.count, j->round_id, &pt, &pt_len, &err);
	if (r < 0) {
		free(peers);
		fmt_to(j->outcome, sizeof(j->outcome),
		         "trained locally; not synced: cannot encode the delta: %s", err.message);
		finish_round(s, j, 1);
		return;
	}
	crash_point(s, "after_encode");
	j->peers = peers;
	j->n_peers = n;
	j->calls = calloc(n, sizeof(*j->calls));
	send_ctx *ctxs = j->ctxs = calloc(n, sizeof(*ctxs));
	for (size_t i = 0; j->calls && ctxs && i < n; i++) {
		const trusted_peer *tp = trust_store_find(s->ctx.trust, peers[i].fp);
		hostport hp;
		const char *why = NULL;
		if (!tp || hostport_parse(peers[i].addr, 0, &hp, &why) < 0) {
			log_warning("fl: round %" PRId64 ": peer '%s': %s", j->round_id,
			            peers[i].name, tp ? "unusable address" : "no longer paired");
			continue;
		}
		dump_plaintext(s, j, &peers[i], pt, pt_len);
		fl_exchange_target t = {.fingerprint_hex = peers[i].fp,
		                        .host = hp.host,
		                        .port = hp.port,
		                        .x25519_public = tp->x25519_public};
		/* One context per call, kept in the job's array; send_done gets
		 * the index through it. */
		ctxs[i].j = j;
		ctxs[i].index = i;
		j->calls[i] = fl_exchange_send(s->x, &t, pt, pt_len, SEND_TIMEOUT_MS, send_done,
		                               &ctxs[i], &err);
		if (!j->calls[i]) {
			log_warning("fl: round %" PRId64 ": cannot send to '%s': %s", j->round_id,
			            peers[i].name, err.message);
			continue;
		}
		j->sends_pending++;
	}
	if (pt) {
		memset(pt, 0, pt_len);
		free(pt);
	}
	if (j->sends_pending == 0) {
		fmt_to(j->outcome, sizeof(j->outcome),
		         "trained locally; charged ε=%g but no peer could be reached", j->charged);
		finish_round(s, j, 1);
		return;
	}
}

static void send_done(void *ud, int code, long status, const char *message)
{
	(void)status;
	send_ctx *c = ud;
	round_job *j = c->j;
	fl_service *s = j->s;
	fl_peer *p = &j->peers[c->index];
	j->calls[c->index] = NULL;
	j->sends_pending--;
	if (code == 0) {
		j->sent_ok++;
		s->deltas_sent++;
		note_sync(s, p->fp, 1);
		log_info("fl: round %" PRId64 ": delta delivered to '%s'", j->round_id, p->name);
		crash_point(s, "after_send");
	} else {
		log_warning("fl: round %" PRId64 ": delta to '%s' failed: %s", j->round_id, p->name,
		            message);
	}
	if (j->sends_pending)
		return;
	fmt_to(j->outcome, sizeof(j->outcome), "synced with %zu of %zu peer%s (ε=%g spent)",
	       j->sent_ok, j->n_peers, j->n_peers == 1 ? "" : "s", j->charged);
	finish_round(s, j, 1);
}

static void round_done(uv_work_t *w, int status)
{
	round_job *j = w->data;
	fl_service *s = j->s;
	s->works--;
	j->w.data = NULL;
	if (s->stopped || status < 0) {
		/* The round row stays "running" and becomes "interrupted" at the
		 * next start: its samples are used again then. */
		s->round = NULL;
		round_job_free(j);
		maybe_free(s);
		return;
	}
	if (j->rc < 0) {
		log_error("fl: round %" PRId64 ": %s failed: %s", j->round_id, j->failed_step,
		          j->err.message[0] ? j->err.message : strerror(-j->rc));
		fmt_to(j->outcome, sizeof(j->outcome), "%s failed: %s", j->failed_step,
		         j->err.message[0] ? j->err.message : strerror(-j->rc));
		finish_round(s, j, 0);
		return;
	}
	log_info("fl: round %" PRId64 ": trained on %zu sample%s (loss %.4g -> %.4g)", j->round_id,
	         j->rows.count, j->rows.count == 1 ? "" : "s", j->report.loss_before,
	         j->report.loss_after);
	crash_point(s, "after_train");
	sovmesh_error err = {0};
	if (store_own_delta(s, j, &err) < 0) {
		log_error("fl: round %" PRId64 ": cannot keep this node's delta: %s", j->round_id,
		          err.message);
		fmt_to(j->outcome, sizeof(j->outcome), "cannot keep the delta: %s", err.message);
		finish_round(s, j, 0);
		return;
	}
	if (!j->will_sync) {
		fmt_to(j->outcome, sizeof(j->outcome), "trained locally; not synced: %s",
		         j->no_sync);
		if (strstr(j->no_sync, "budget"))
			log_warning("fl: round %" PRId64 ": sync skipped: %s", j->round_id,
			            j->no_sync);
		finish_round(s, j, 1);
		return;
	}
	charge_and_send(s, j);
}

static void maybe_start_round(fl_service *s)
{
	if (s->stopped || s->round || !s->current || s->init_running)
		return;
	if (fl_store_pending_count(s->store) < s->sync_after)
		return;
	round_job *j = calloc(1, sizeof(*j));
	if (!j)
		return;
	j->s = s;
	sovmesh_error err = {0};
	int r = fl_store_round_begin(s->store, (int64_t)time(NULL), MAX_SAMPLES_PER_ROUND,
	                             &j->round_id, &j->rows, &err);
	if (r < 0) {
		if (r != -ENOENT)
			log_error("fl: cannot start a round: %s", err.message);
		free(j);
		return;
	}
	j->samples = calloc(j->rows.count ? j->rows.count : 1, sizeof(*j->samples));
	j->current = copy_set(s->current);
	if (!j->samples || !j->current) {
		fmt_to(j->outcome, sizeof(j->outcome), "out of memory");
		s->round = j;
		finish_round(s, j, 0);
		return;
	}
	for (size_t i = 0; i < j->rows.count; i++) {
		const fl_sample_row *row = &j->rows.rows[i];
		j->samples[i] = (sovmesh_sample){
		    .size = sizeof(sovmesh_sample),
		    .prompt = row->prompt,
		    .response = row->response,
		    .correction = row->correction,
		    .rating = row->rating,
		    .label = -1,
		};
	}
	rng_bytes(&j->seed, sizeof(j->seed));

	/* Decide before training whether this round may sync: the budget and
	 * at least one peer.  The charge itself happens after training. */
	j->params = (sovmesh_noise_params){
	    .size = sizeof(j->params), .epsilon = s->epsilon, .delta = s->noise_delta,
	    .clip = s->clip};
	j->cost.size = sizeof(j->cost);
	fl_peer probe[1];
	fl_budget b;
	sovmesh_error cerr = {0};
	if (noise_ops(s)->cost(s->ctx.noise->instance, &j->params, &j->cost, &cerr) < 0) {
		fmt_to(j->no_sync, sizeof(j->no_sync), "the noise mechanism refused: %s",
		         cerr.message);
	} else if (fl_store_budget(s->store, s->budget_total, &b, &cerr) < 0) {
		fmt_to(j->no_sync, sizeof(j->no_sync), "the privacy ledger failed: %s",
		         cerr.message);
	} else if (no_privacy(&j->cost) ? b.remaining <= 0
	                                : !fits_budget(s, &b, &j->cost)) {
		fmt_to(j->no_sync, sizeof(j->no_sync),
		         "privacy budget spent: %g of %g used, a sync needs %g (see `sovmesh budget`)",
		         b.spent, b.total, j->cost.epsilon);
	} else if (eligible_peers(s, probe, 1) == 0) {
		fmt_to(j->no_sync, sizeof(j->no_sync),
		         "no connected peer with federated learning on");
	} else {
		j->will_sync = 1;
	}
	j->w.data = j;
	if (uv_queue_work(s->ctx.loop, &j->w, round_work, round_done) < 0) {
		fmt_to(j->outcome, sizeof(j->outcome), "cannot queue the training");
		s->round = j;
		finish_round(s, j, 0);
		return;
	}
	s->works++;
	s->round = j;
	log_info("fl: round %" PRId64 " started with %zu sample%s", j->round_id, j->rows.count,
	         j->rows.count == 1 ? "" : "s");
}

/* ---- receiving ----------------------------------------------------------- */

static int rcv_enabled(void *ud)
{
	fl_service *s = ud;
	return !s->stopped;
}

static int rcv_delta(void *ud, const char *sender_fp, const uint8_t *pt, size_t len, char *msg,
                     size_t msg_len)
{
	fl_service *s = ud;
	char who[200];
	const trusted_peer *tp = trust_store_find(s->ctx.trust, sender_fp);
	fmt_to(who, sizeof(who), "'%s' (%.16s...)", tp && tp->name ? tp->name : "?", sender_fp);
	if (!tp) {
		s->deltas_refused++;
		fmt_to(msg, msg_len, "the sender is not paired");
		return 403;
	}
	peer_info pi;
	if (s->ctx.ptable && peer_table_lookup(s->ctx.ptable, sender_fp, &pi) == 0 &&
	    pi.fl_enabled == 0) {
		s->deltas_refused++;
		fmt_to(msg, msg_len, "the sender's health says federated learning is off there");
		return 403;
	}
	if (!s->current) {
		fmt_to(msg, msg_len, "this node has no adapter yet (%s)",
		         s->not_ready[0] ? s->not_ready : "starting");
		return 503;
	}
	fl_delta d;
	sovmesh_error err = {0};
	int r = fl_delta_decode(pt, len, s->current, s->max_delta, &d, &err);
	if (r < 0) {
		s->deltas_refused++;
		fmt_to(msg, msg_len, "delta refused: %s", err.message);
		log_warning("fl: refused the delta from %s: %s", who, err.message);
		return r == -E2BIG ? 413 : r == -ENOMEM ? 503 : 400;
	}
	char path[PATH_MAX];
	static unsigned seq;
	fmt_to(path, sizeof(path), "%s/%.16s-r%06" PRId64 "-%lld-%u.safetensors", s->inbox_dir,
	         sender_fp, d.round, (long long)time(NULL), seq++);
	r = safetensors_write_file(path, d.set, &err);
	if (r == 0)
		r = fl_store_inbox_add(s->store, sender_fp, tp->name ? tp->name : "", path,
		                       d.samples, d.round, (int64_t)time(NULL), NULL, &err);
	int64_t their_round = d.round, their_samples = d.samples;
	fl_delta_clear(&d);
	if (r < 0) {
		unlink(path);
		log_error("fl: cannot store the delta from %s: %s", who, err.message);
		fmt_to(msg, msg_len, "the receiver could not store the delta");
		return 503;
	}
	s->deltas_received++;
	note_sync(s, sender_fp, 0);
	log_info("fl: stored a delta from %s (its round %" PRId64 ", %" PRId64 " samples)", who,
	         their_round, their_samples);
	schedule_aggregation(s);
	return 200;
}

/* ---- aggregation ----------------------------------------------------------- */

struct agg_job {
	uv_work_t w;
	fl_service *s;
	fl_inbox_list rows;
	size_t *use; /* indices into rows: the newest of each sender */
	size_t n_use;
	sovmesh_tensor_set *current;
	sovmesh_tensor_set *result;
	size_t n_used;
	int rc;
	sovmesh_error err;
};

static void agg_job_free(agg_job *j)
{
	fl_inbox_list_free(&j->rows);
	free(j->use);
	tset_free(j->current);
	tset_free(j->result);
	free(j);
}

static void agg_work(uv_work_t *w)
{
	agg_job *j = w->data;
	fl_service *s = j->s;
	sovmesh_tensor_set **sets = calloc(j->n_use, sizeof(*sets));
	double *weights = calloc(j->n_use, sizeof(*weights));
	size_t n = 0;
	if (!sets || !weights) {
		j->rc = sovmesh_fail(&j->err, -ENOMEM, "out of memory");
		goto out;
	}
	for (size_t k = 0; k < j->n_use; k++) {
		const fl_inbox_row *row = &j->rows.rows[j->use[k]];
		sovmesh_error e = {0};
		sovmesh_tensor_set *set = NULL;
		if (safetensors_read_file(row->path, &set, &e) < 0) {
			log_warning("fl: aggregation: skipping the delta from '%s': %s",
			            row->sender_name, e.message);
			continue;
		}
		const sovmesh_tensor_set *pair[2] = {j->current, set};
		if (sovmesh_check_same_layouts(pair, 2, &e) < 0 || set->count != j->current->count) {
			log_warning("fl: aggregation: skipping the delta from '%s': it no longer fits "
			            "the current adapter (%s)",
			            row->sender_name, e.message);
			tset_free(set);
			continue;
		}
		sets[n] = set;
		weights[n] = (double)row->samples;
		n++;
	}
	j->n_used = n;
	if (n == 0) {
		j->rc = -ENOENT;
		goto out;
	}
	sovmesh_tensor_set *mean = tset_new(j->current, j->current->count);
	if (!mean) {
		j->rc = sovmesh_fail(&j->err, -ENOMEM, "out of memory");
		goto out;
	}
	j->rc = agg_ops(s)->aggregate(s->ctx.aggregator->instance,
	                              (const sovmesh_tensor_set *const *)sets, weights, n, mean,
	                              &j->err);
	if (j->rc == 0)
		j->rc = tset_check_finite(mean, &j->err);
	if (j->rc == 0) {
		j->result = copy_set(j->current);
		j->rc = j->result ? fl_delta_add(j->result, mean, &j->err)
		                  : sovmesh_fail(&j->err, -ENOMEM, "out of memory");
	}
	tset_free(mean);
out:
	for (size_t k = 0; sets && k < n; k++)
		tset_free(sets[k]);
	free(sets);
	free(weights);
}

static void agg_done(uv_work_t *w, int status)
{
	agg_job *j = w->data;
	fl_service *s = j->s;
	s->works--;
	s->agg = NULL;
	if (s->stopped || status < 0) {
		agg_job_free(j);
		maybe_free(s);
		return;
	}
	sovmesh_error err = {0};
	int64_t *ids = calloc(j->rows.count ? j->rows.count : 1, sizeof(*ids));
	for (size_t i = 0; ids && i < j->rows.count; i++)
		ids[i] = j->rows.rows[i].id;
	if (j->rc == 0) {
		crash_point(s, "after_aggregate");
		char name[FL_ADAPTER_NAME_MAX];
		if (fl_adapters_commit(s->adapters, j->result, s->current_config, name, &err) < 0) {
			log_error("fl: aggregation: cannot store the new adapter (the deltas wait "
			          "for the next try): %s",
			          err.message);
			free(ids);
			agg_job_free(j);
			return;
		}
		char *cfg_copy = s->current_config ? strdup(s->current_config) : NULL;
		set_current(s, j->result, cfg_copy);
		j->result = NULL;
		s->aggregations++;
		log_info("fl: aggregated %zu delta%s with %s into adapter '%s'", j->n_used,
		         j->n_used == 1 ? "" : "s", s->ctx.aggregator->plugin->label, name);
		crash_point(s, "after_commit");
	} else if (j->rc == -ENOENT) {
		log_warning("fl: aggregation: no usable delta");
	} else {
		log_error("fl: aggregation with %s failed; the deltas are dropped: %s",
		          s->ctx.aggregator->plugin->label,
		          j->err.message[0] ? j->err.message : strerror(-j->rc));
	}
	/* Used, skipped and superseded deltas alike are done. */
	if (ids && fl_store_inbox_done(s->store, ids, j->rows.count, &err) == 0) {
		for (size_t i = 0; i < j->rows.count; i++)
			unlink(j->rows.rows[i].path);
	} else if (ids) {
		log_error("fl: aggregation: %s", err.message);
	}
	free(ids);
	int committed = j->rc == 0;
	agg_job_free(j);
	if (committed)
		apply_current(s);
	schedule_aggregation(s);
}

static void start_aggregation(fl_service *s)
{
	if (s->stopped || !s->current)
		return;
	if (s->agg) {
		schedule_aggregation(s);
		return;
	}
	agg_job *j = calloc(1, sizeof(*j));
	if (!j)
		return;
	j->s = s;
	sovmesh_error err = {0};
	if (fl_store_inbox_pending(s->store, &j->rows, &err) < 0) {
		log_error("fl: aggregation: %s", err.message);
		free(j);
		return;
	}
	if (j->rows.count == 0) {
		agg_job_free(j);
		return;
	}
	/* The newest delta of each sender: a peer cannot gain weight by
	 * sending several. */
	j->use = calloc(j->rows.count, sizeof(*j->use));
	j->current = copy_set(s->current);
	if (!j->use || !j->current) {
		agg_job_free(j);
		return;
	}
	for (size_t i = j->rows.count; i-- > 0;) {
		int seen = 0;
		for (size_t k = 0; k < j->n_use && !seen; k++)
			seen = strcmp(j->rows.rows[j->use[k]].sender_fp, j->rows.rows[i].sender_fp) == 0;
		if (!seen)
			j->use[j->n_use++] = i;
		else
			log_info("fl: aggregation: an older delta from '%s' is superseded",
			         j->rows.rows[i].sender_name);
	}
	j->w.data = j;
	if (uv_queue_work(s->ctx.loop, &j->w, agg_work, agg_done) < 0) {
		agg_job_free(j);
		return;
	}
	s->works++;
	s->agg = j;
}

static void on_agg_timer(uv_timer_t *t)
{
	fl_service *s = t->data;
	s->agg_timer_armed = 0;
	start_aggregation(s);
}

/*
 * Aggregate at once when every expected sender (this node, if it has a
 * delta, and every connected peer with federated learning on) has a
 * delta waiting; else after aggregation_wait_secs from the first one.
 */
static void schedule_aggregation(fl_service *s)
{
	if (s->stopped || !s->current)
		return;
	fl_inbox_list rows = {0};
	sovmesh_error err = {0};
	if (fl_store_inbox_pending(s->store, &rows, &err) < 0 || rows.count == 0) {
		fl_inbox_list_free(&rows);
		return;
	}
	size_t distinct = 0;
	for (size_t i = 0; i < rows.count; i++) {
		int seen = 0;
		for (size_t k = 0; k < i && !seen; k++)
			seen = strcmp(rows.rows[k].sender_fp, rows.rows[i].sender_fp) == 0;
		distinct += !seen;
	}
	fl_inbox_list_free(&rows);
	size_t max = peer_limit(s);
	fl_peer *peers = calloc(max ? max : 1, sizeof(*peers));
	size_t expected = 1 + (peers ? eligible_peers(s, peers, max) : 0);
	free(peers);
	if (s->agg) {
		/* One at a time: look again when it is done (agg_done calls us). */
		return;
	}
	if (distinct >= expected || s->wait_secs == 0) {
		if (s->agg_timer_armed) {
			uv_timer_stop(&s->agg_timer);
			s->agg_timer_armed = 0;
		}
		start_aggregation(s);
		return;
	}
	if (!s->agg_timer_armed) {
		uv_timer_start(&s->agg_timer, on_agg_timer, (uint64_t)s->wait_secs * 1000, 0);
		s->agg_timer_armed = 1;
	}
}

/* ---- applying the adapter to the backend -------------------------------------- */

/* "llama3.2:1b" -> "llama3.2-sovmesh:1b"; "user/m" -> "user/m-sovmesh". */
static void derive_target(const char *base, char *out, size_t len)
{
	const char *slash = strrchr(base, '/');
	const char *colon = strrchr(base, ':');
	if (colon && (!slash || colon > slash))
		fmt_to(out, len, "%.*s-sovmesh%s", (int)(colon - base), base, colon);
	else
		fmt_to(out, len, "%s-sovmesh", base);
}

static void on_applied(void *ud, const sovmesh_backend_status *st, const char *json,
                       size_t len)
{
	(void)json;
	(void)len;
	fl_service *s = ud;
	s->backend_call = NULL;
	if (st->code == 0) {
		s->apply = APPLY_OK;
		s->apply_error[0] = '\0';
		s->applied_at = (int64_t)time(NULL);
		log_info("fl: adapter '%s' applied to the backend as '%s' (base '%s')",
		         s->applied_adapter, s->applied_model, s->applied_base);
	} else {
		s->apply = APPLY_FAILED;
		fmt_to(s->apply_error, sizeof(s->apply_error), "%s",
		         st->message && st->message[0] ? st->message : strerror(-st->code));
		log_error("fl: applying adapter '%s' as '%s' failed: %s", s->applied_adapter,
		          s->applied_model, s->apply_error);
	}
}

static void apply_with_base(fl_service *s, const char *base)
{
	const sovmesh_backend_ops *ops = backend_ops(s);
	fmt_to(s->applied_base, sizeof(s->applied_base), "%s", base);
	if (s->adapted_model[0])
		fmt_to(s->applied_model, sizeof(s->applied_model), "%s", s->adapted_model);
	else
		derive_target(base, s->applied_model, sizeof(s->applied_model));
	char dir[PATH_MAX];
	fl_adapters_dir(s->adapters, fl_adapters_current(s->adapters), dir, sizeof(dir));
	fmt_to(s->applied_adapter, sizeof(s->applied_adapter), "%s",
	         fl_adapters_current(s->adapters));
	sovmesh_adapter_apply req = {.size = sizeof(req),
	                             .base_model = base,
	                             .adapter_dir = dir,
	                             .target_model = s->applied_model};
	s->apply = APPLY_PENDING;
	s->backend_call = ops->apply_adapter(s->ctx.backend->instance, &req, on_applied, s);
}

static void on_models_for_apply(void *ud, const sovmesh_backend_status *st, const char *json,
                                size_t len)
{
	fl_service *s = ud;
	s->backend_call = NULL;
	json_t *root = st->code == 0 ? json_loadb(json, len, 0, NULL) : NULL;
	json_t *first = json_array_get(json_object_get(root, "models"), 0);
	const char *name = json_string_value(json_object_get(first, "name"));
	if (!name)
		name = json_string_value(json_object_get(first, "model"));
	if (!name) {
		s->apply = APPLY_FAILED;
		fmt_to(s->apply_error, sizeof(s->apply_error),
		         "no base model: set federated_learning.base_model (the backend %s)",
		         st->code ? "could not list its models" : "lists no model");
		log_error("fl: cannot apply the adapter: %s", s->apply_error);
	} else {
		apply_with_base(s, name);
	}
	json_decref(root);
}

static void apply_current(fl_service *s)
{
	const sovmesh_backend_ops *ops = backend_ops(s);
	if (s->stopped || !ops || !ops->apply_adapter || !fl_adapters_current(s->adapters))
		return;
	if (s->backend_call) {
		ops->cancel(s->ctx.backend->instance, s->backend_call);
		s->backend_call = NULL;
	}
	const char *base = s->base_model[0] ? s->base_model : s->default_model;
	if (base[0]) {
		apply_with_base(s, base);
		return;
	}
	s->apply = APPLY_PENDING;
	s->backend_call = ops->list_models(s->ctx.backend->instance, on_models_for_apply, s);
}

/* ---- control endpoints ---------------------------------------------------------- */

static const char *json_opt_string(json_t *body, const char *key, int *bad)
{
	json_t *v = json_object_get(body, key);
	if (!v || json_is_null(v))
		return NULL;
	if (!json_is_string(v)) {
		*bad = 1;
		return NULL;
	}
	return json_string_value(v);
}

/* Validate a feedback body and store it.  Returns the HTTP status and
 * sets *reply. */
static int feedback(fl_service *s, json_t *body, json_t **reply)
{
	if (!json_is_object(body)) {
		*reply = control_api_error("feedback: the body must be a JSON object with "
		                           "\"prompt\" and \"rating\" or \"correction\"");
		return 400;
	}
	static const char *const known[] = {"prompt", "response", "correction", "rating",
	                                    "model", NULL};
	const char *key;
	json_t *val;
	json_object_foreach(body, key, val)
	{
		int ok = 0;
		for (size_t i = 0; known[i] && !ok; i++)
			ok = strcmp(key, known[i]) == 0;
		if (!ok) {
			*reply = control_api_error("feedback: unknown field '%.64s' (known: prompt, "
			                           "response, correction, rating, model)",
			                           key);
			return 400;
		}
	}
	int bad = 0;
	fl_feedback fb = {0};
	const char *fields[] = {"prompt", "response", "correction", "model"};
	const char **dst[] = {&fb.prompt, &fb.response, &fb.correction, &fb.model};
	for (size_t i = 0; i < 4; i++) {
		*dst[i] = json_opt_string(body, fields[i], &bad);
		if (bad) {
			*reply = control_api_error("feedback: '%s' must be a string", fields[i]);
			return 400;
		}
	}
	json_t *rating = json_object_get(body, "rating");
	if (!rating || json_is_null(rating))
		fb.rating = SOVMESH_RATING_NONE;
	else if (json_is_string(rating) && strcmp(json_string_value(rating), "up") == 0)
		fb.rating = SOVMESH_RATING_UP;
	else if (json_is_string(rating) && strcmp(json_string_value(rating), "down") == 0)
		fb.rating = SOVMESH_RATING_DOWN;
	else {
		*reply = control_api_error("feedback: 'rating' must be \"up\", \"down\" or null");
		return 400;
	}
	sovmesh_error err = {0};
	int64_t id = 0;
	int r = fl_store_add_sample(s->store, &fb, (int64_t)time(NULL), &id, &err);
	if (r < 0) {
		*reply = control_api_error("%s", err.message);
		return r == -EINVAL ? 400 : 500;
	}
	int64_t pending = fl_store_pending_count(s->store);
	*reply = json_pack("{s:I,s:I,s:I}", "id", (json_int_t)id, "pending", (json_int_t)pending,
	                   "sync_after_n_samples", (json_int_t)s->sync_after);
	maybe_start_round(s);
	return 200;
}

static int handle_feedback(void *ud, const control_request *req, json_t **reply, int *status)
{
	*status = feedback(ud, req->body, reply);
	return 0;
}

void fl_service_feedback_http(void *ud, const http_request *req, http_response *resp)
{
	fl_service *s = ud;
	json_error_t jerr;
	json_t *body = json_loadb(req->body, req->body_len, 0, &jerr);
	json_t *reply = NULL;
	int status;
	if (!body) {
		reply = control_api_error("feedback: the body is not JSON: %s", jerr.text);
		status = 400;
	} else {
		status = feedback(s, body, &reply);
	}
	json_decref(body);
	char *text = reply ? json_dumps(reply, JSON_COMPACT) : NULL;
	json_decref(reply);
	if (!text) {
		http_response_send_error(resp, 500, "out of memory");
		return;
	}
	http_response_send(resp, status, "application/json", text, strlen(text));
	free(text);
}

static int handle_status(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)req;
	(void)status;
	*reply = fl_service_status(ud);
	return *reply ? 0 : -ENOMEM;
}

static int handle_budget(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)req;
	fl_service *s = ud;
	*reply = fl_store_budget_json(s->store, s->budget_total, LEDGER_HISTORY);
	if (!*reply) {
		*status = 500;
		*reply = control_api_error("cannot read the privacy ledger");
	}
	return 0;
}

static int handle_new_period(void *ud, const control_request *req, json_t **reply, int *status)
{
	fl_service *s = ud;
	json_t *body = req->body;
	if (!json_is_object(body) || !json_is_true(json_object_get(body, "confirm"))) {
		*status = 400;
		*reply = control_api_error(
		    "starting a new privacy-budget period needs {\"confirm\": true}: it allows "
		    "another full budget of ε to be spent on top of what peers have already "
		    "received");
		return 0;
	}
	json_t *t = json_object_get(body, "total");
	double total = s->budget_total;
	if (t && !json_is_null(t)) {
		if (!json_is_number(t) || !(json_number_value(t) > 0) ||
		    !isfinite(json_number_value(t)) || json_number_value(t) > 1e6) {
			*status = 400;
			*reply = control_api_error("'total' must be a number > 0 and at most 1000000");
			return 0;
		}
		total = json_number_value(t);
		if (total > s->budget_total) {
			*status = 400;
			*reply = control_api_error(
			    "'total' %g is above federated_learning.privacy_budget (%g), which caps "
			    "every period; raise the key first",
			    total, s->budget_total);
			return 0;
		}
	}
	json_t *reason = json_object_get(body, "reason");
	if (reason && !json_is_null(reason) && !json_is_string(reason)) {
		*status = 400;
		*reply = control_api_error("'reason' must be a string");
		return 0;
	}
	sovmesh_error err = {0};
	if (fl_store_new_period(s->store, total, (int64_t)time(NULL),
	                        reason ? json_string_value(reason) : "sovmesh budget new-period",
	                        &err) < 0) {
		*status = 500;
		*reply = control_api_error("%s", err.message);
		return 0;
	}
	log_warning("fl: a new privacy-budget period started with total ε=%g (asked by the "
	            "operator); earlier charges stay in the ledger's history",
	            total);
	*reply = fl_store_budget_json(s->store, s->budget_total, LEDGER_HISTORY);
	return 0;
}

static int handle_rollback(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)req;
	fl_service *s = ud;
	if (s->agg) {
		*status = 409;
		*reply = control_api_error("an aggregation is running; try again in a moment");
		return 0;
	}
	sovmesh_error err = {0};
	char was[FL_ADAPTER_NAME_MAX];
	fmt_to(was, sizeof(was), "%s",
	         fl_adapters_current(s->adapters) ? fl_adapters_current(s->adapters) : "");
	if (fl_adapters_rollback(s->adapters, &err) < 0) {
		*status = 409;
		*reply = control_api_error("%s", err.message);
		return 0;
	}
	sovmesh_tensor_set *set = NULL;
	char *cfg = NULL;
	if (fl_adapters_load_current(s->adapters, &set, &cfg, &err) < 0) {
		*status = 500;
		*reply = control_api_error("rolled back, but cannot load the adapter: %s",
		                           err.message);
		return 0;
	}
	set_current(s, set, cfg);
	log_info("fl: rolled back from adapter '%s' to '%s'", was,
	         fl_adapters_current(s->adapters));
	apply_current(s);
	*reply = json_pack("{s:s,s:s,s:o}", "rolled_back", was, "current",
	                   fl_adapters_current(s->adapters), "adapter",
	                   fl_adapters_json(s->adapters));
	return 0;
}

static const char *apply_state_name(apply_state a)
{
	switch (a) {
	case APPLY_PENDING:
		return "pending";
	case APPLY_OK:
		return "applied";
	case APPLY_FAILED:
		return "failed";
	default:
		return "none";
	}
}

json_t *fl_service_status(fl_service *s)
{
	fl_budget b = {0};
	sovmesh_error err = {0};
	int have_budget = fl_store_budget(s->store, s->budget_total, &b, &err) == 0;
	fl_inbox_list inbox = {0};
	fl_store_inbox_pending(s->store, &inbox, &err);
	size_t inbox_n = inbox.count;
	fl_inbox_list_free(&inbox);
	json_t *applied = json_pack(
	    "{s:s,s:o,s:o,s:o,s:o,s:o}", "state", apply_state_name(s->apply), "adapter",
	    s->applied_adapter[0] ? json_string(s->applied_adapter) : json_null(), "model",
	    s->applied_model[0] ? json_string(s->applied_model) : json_null(), "base_model",
	    s->applied_base[0] ? json_string(s->applied_base) : json_null(), "time",
	    s->applied_at ? json_integer(s->applied_at) : json_null(), "error",
	    s->apply_error[0] ? json_string(s->apply_error) : json_null());
	json_t *budget =
	    have_budget
	        ? json_pack("{s:I,s:f,s:f,s:f,s:I}", "period", (json_int_t)b.period, "total",
	                    b.total, "spent", b.spent, "remaining", b.remaining, "charges",
	                    (json_int_t)b.charges)
	        : json_null();
	return json_pack(
	    "{s:b,s:b,s:o,s:I,s:I,s:I,s:I,s:b,s:o,s:f,s:o,s:o,s:o,s:{s:s,s:s,s:s},s:I,"
	    "s:{s:I,s:I,s:I,s:I},s:o,s:f,s:f}",
	    "enabled", 1, "ready", s->current != NULL, "not_ready_reason",
	    s->current ? json_null() : json_string(s->not_ready), "samples_pending",
	    (json_int_t)fl_store_pending_count(s->store), "samples_total",
	    (json_int_t)fl_store_sample_count(s->store), "sync_after_n_samples",
	    (json_int_t)s->sync_after, "rounds_done", (json_int_t)fl_store_rounds_done(s->store),
	    "round_running", s->round != NULL, "last_round", fl_store_last_round_json(s->store),
	    "epsilon_spent", have_budget ? b.spent : 0.0, "budget", budget, "adapter",
	    fl_adapters_json(s->adapters), "applied", applied, "plugins", "trainer",
	    s->ctx.trainer->plugin->label, "noise", s->ctx.noise->plugin->label, "aggregator",
	    s->ctx.aggregator->plugin->label, "inbox_pending", (json_int_t)inbox_n, "deltas",
	    "sent", (json_int_t)s->deltas_sent, "received", (json_int_t)s->deltas_received,
	    "refused", (json_int_t)s->deltas_refused, "aggregations", (json_int_t)s->aggregations,
	    "peers", fl_store_sync_json(s->store), "noise_epsilon", s->epsilon, "noise_clip",
	    s->clip);
}

/* ---- federated learning off ---------------------------------------------------- */

static int handle_off(void *ud, const control_request *req, json_t **reply, int *status)
{
	(void)ud;
	if (strcmp(req->path, "/v1/fl/status") == 0) {
		*reply = json_pack("{s:b}", "enabled", 0);
		return *reply ? 0 : -ENOMEM;
	}
	*status = 409;
	*reply = control_api_error("federated learning is off on this node "
	                           "(federated_learning.enabled = false)");
	return 0;
}

int fl_service_register_disabled(control_api *api)
{
	static const char *const routes[][2] = {
	    {"POST", "/v1/feedback"},         {"GET", "/v1/fl/status"},
	    {"GET", "/v1/budget"},            {"POST", "/v1/budget/new-period"},
	    {"POST", "/v1/fl/rollback"},
	};
	for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
		int r = control_api_route(api, routes[i][0], routes[i][1], handle_off, NULL);
		if (r < 0)
			return r;
	}
	return 0;
}

/* ---- life cycle ---------------------------------------------------------------- */

static int make_dir(const char *path, sovmesh_error *err)
{
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return sovmesh_fail(err, -errno, "%s: cannot create: %s", path, strerror(errno));
	return 0;
}

int fl_service_start(const fl_service_ctx *ctx, fl_service **out, sovmesh_error *err)
{
	if (!ctx->trainer || !ctx->noise || !ctx->aggregator || !ctx->id || !ctx->trust)
		return sovmesh_fail(err, -EINVAL, "federated learning needs a trainer, a noise "
		                                  "mechanism, an aggregator and an identity");
	const sovmesh_noise_ops *nops = ctx->noise->plugin->ops;
	const sovmesh_aggregator_ops *aops = ctx->aggregator->plugin->ops;
	if (!nops->cost || !nops->perturb || !aops->aggregate)
		return sovmesh_fail(err, -EINVAL, "%s or %s lacks a required slot",
		                    ctx->noise->plugin->label, ctx->aggregator->plugin->label);
	fl_service *s = calloc(1, sizeof(*s));
	if (!s)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	s->ctx = *ctx;
	s->state_dir = strdup(ctx->cfg->state_dir);
	if (!s->state_dir || strlen(s->state_dir) > PATH_MAX - 128) {
		free(s->state_dir);
		free(s);
		return sovmesh_fail(err, -ENAMETOOLONG, "node.state_dir is too long");
	}
	const char *ca = getenv("SOVMESH_TEST_FL_CRASH_AT");
	s->crash_at = ca && *ca ? ca : NULL;
	const char *pd = getenv("SOVMESH_TEST_FL_PLAINTEXT_DIR");
	s->plaintext_dir = pd && *pd ? pd : NULL;
	if (s->crash_at)
		log_warning("fl: testing hook SOVMESH_TEST_FL_CRASH_AT=%s is set", s->crash_at);
	if (s->plaintext_dir)
		log_warning("fl: testing hook SOVMESH_TEST_FL_PLAINTEXT_DIR is set: plaintexts of "
		            "sent deltas are written to %s",
		            s->plaintext_dir);
	fmt_to(s->fl_dir, sizeof(s->fl_dir), "%s/fl", s->state_dir);
	fmt_to(s->inbox_dir, sizeof(s->inbox_dir), "%s/inbox", s->fl_dir);
	char db[PATH_MAX], adir[PATH_MAX];
	fmt_to(db, sizeof(db), "%s/fl.db", s->fl_dir);
	fmt_to(adir, sizeof(adir), "%s/adapters", s->fl_dir);
	int r = make_dir(s->fl_dir, err);
	if (r == 0)
		r = make_dir(s->inbox_dir, err);
	if (r == 0)
		r = fl_store_open(db, ctx->cfg->privacy_budget, &s->store, err);
	if (r == 0)
		r = fl_adapters_open(adir, &s->adapters, err);
	if (r < 0)
		goto fail;
	fl_exchange_receiver rcv = {.ud = s, .enabled = rcv_enabled, .on_delta = rcv_delta};
	r = fl_exchange_new(ctx->peer_port, ctx->pc, ctx->id, (size_t)ctx->cfg->max_delta_bytes,
	                    &rcv, &s->x, err);
	if (r < 0)
		goto fail;
	take_settings(s, ctx->cfg);
	uv_timer_init(ctx->loop, &s->agg_timer);
	s->agg_timer.data = s;
	s->timer_open = 1;
	if (ctx->control) {
		struct {
			const char *method, *path;
			control_handler_fn fn;
		} routes[] = {
		    {"POST", "/v1/feedback", handle_feedback},
		    {"GET", "/v1/fl/status", handle_status},
		    {"GET", "/v1/budget", handle_budget},
		    {"POST", "/v1/budget/new-period", handle_new_period},
		    {"POST", "/v1/fl/rollback", handle_rollback},
		};
		for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
			r = control_api_route(ctx->control, routes[i].method, routes[i].path,
			                      routes[i].fn, s);
			if (r < 0) {
				sovmesh_fail(err, r, "cannot register %s: %s", routes[i].path,
				             strerror(-r));
				goto fail;
			}
		}
	}
	if (ctx->health)
		peer_health_set_fl_enabled(ctx->health, 1);
	if (fl_adapters_count(s->adapters) == 0) {
		start_initial_adapter(s);
	} else {
		sovmesh_tensor_set *set = NULL;
		char *cfg_json = NULL;
		r = fl_adapters_load_current(s->adapters, &set, &cfg_json, err);
		if (r < 0)
			goto fail;
		set_current(s, set, cfg_json);
		maybe_start_round(s);
		schedule_aggregation(s);
	}
	fl_budget b;
	if (fl_store_budget(s->store, s->budget_total, &b, err) == 0)
		log_info("fl: privacy budget period %" PRId64 ": ε %g of %g spent; %" PRId64
		         " sample%s pending",
		         b.period, b.spent, b.total, fl_store_pending_count(s->store),
		         fl_store_pending_count(s->store) == 1 ? "" : "s");
	*out = s;
	return 0;
fail:
	s->stopped = 1;
	fl_service_free(s);
	return r;
}

void fl_service_reload(fl_service *s, const sovmesh_config *next)
{
	if (!s)
		return;
	take_settings(s, next);
	maybe_start_round(s);
}

void fl_service_stop(fl_service *s)
{
	if (!s || s->stopped)
		return;
	s->stopped = 1;
	if (s->ctx.health)
		peer_health_set_fl_enabled(s->ctx.health, 0);
	if (s->agg_timer_armed) {
		uv_timer_stop(&s->agg_timer);
		s->agg_timer_armed = 0;
	}
	const sovmesh_backend_ops *ops = backend_ops(s);
	if (s->backend_call && ops) {
		ops->cancel(s->ctx.backend->instance, s->backend_call);
		s->backend_call = NULL;
	}
	/* A round that is sending: cancel the calls and drop it (its row
	 * becomes "interrupted" at the next start). */
	round_job *j = s->round;
	if (j && j->calls && j->sends_pending) {
		for (size_t i = 0; i < j->n_peers; i++)
			fl_exchange_cancel(j->calls[i]);
		s->round = NULL;
		round_job_free(j);
	}
}

static void on_timer_closed(uv_handle_t *h)
{
	fl_service *s = h->data;
	s->timer_open = 0;
	maybe_free(s);
}

static void maybe_free(fl_service *s)
{
	if (!s->free_pending || s->works > 0 || s->timer_open)
		return;
	fl_exchange_free(s->x);
	fl_store_close(s->store);
	fl_adapters_free(s->adapters);
	tset_free(s->current);
	free(s->current_config);
	free(s->state_dir);
	free(s->base_model);
	free(s->adapted_model);
	free(s->default_model);
	free(s);
}

void fl_service_free(fl_service *s)
{
	if (!s)
		return;
	fl_service_stop(s);
	s->free_pending = 1;
	if (s->timer_open && !uv_is_closing((uv_handle_t *)&s->agg_timer)) {
		uv_close((uv_handle_t *)&s->agg_timer, on_timer_closed);
		return;
	}
	maybe_free(s);
}

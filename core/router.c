/* The fallback chain: local, then peers, then (later) cache and template
 * (see router.h and docs/mesh-inference.md). */
#include "router.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hostport.h"
#include "log.h"
#include "peer_inference.h"
#include "thermal.h"

typedef struct breaker {
	char fp[IDENTITY_FP_HEX_LEN + 1];
	unsigned failures;   /* consecutive */
	uint64_t open_until; /* uv_now ms; 0 = closed */
	int trial;           /* half-open: one request let through */
	struct breaker *next;
} breaker;

enum step { STEP_START, STEP_LOCAL, STEP_PEER, STEP_CACHE, STEP_DONE };

struct router_job {
	router *r;
	infer_request req; /* model owned, body referenced */
	router_callbacks cbs;
	void *ud;
	enum step step;
	local_call *lcall;
	peer_infer_call *pcall;
	answer_cache_lookup *clookup;
	/* The answer's text as it streams, to be cached (collect: eligible). */
	int collect;
	char *answer;
	size_t answer_len;
	uv_timer_t timer; /* start, then first-chunk / idle limit of a hop */
	int started;      /* on_source called */
	int cancelled;
	unsigned peer_tries;
	char tried[ROUTER_MAX_PEER_TRIES][IDENTITY_FP_HEX_LEN + 1];
	char peer_fp[IDENTITY_FP_HEX_LEN + 1];
	char peer_name[128];
	/* Why steps were left, for the final message and status. */
	char why[400];
	int all_missing; /* every step that was tried lacked the model */
	int tried_any;
	uint64_t id;
	uint64_t t0;
	struct router_job *prev, *next;
};

struct router {
	uv_loop_t *loop;
	router_options o;
	char *sysfs_root;
	router_job *jobs;
	breaker *breakers;
	router_stats stats;
	uint64_t next_id;
};

const char *router_source_name(router_source s)
{
	switch (s) {
	case ROUTER_SOURCE_LOCAL:
		return "local";
	case ROUTER_SOURCE_PEER:
		return "peer";
	case ROUTER_SOURCE_CACHE:
		return "cache";
	case ROUTER_SOURCE_TEMPLATE:
		return "template";
	}
	return "unknown";
}

int router_new(uv_loop_t *loop, const router_options *opts, router **out)
{
	if (!loop || !opts || !out)
		return -EINVAL;
	router *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->loop = loop;
	r->o = *opts;
	r->sysfs_root = strdup(opts->thermal_sysfs_root ? opts->thermal_sysfs_root : "/sys");
	if (!r->sysfs_root) {
		free(r);
		return -ENOMEM;
	}
	r->o.thermal_sysfs_root = r->sysfs_root;
	if (!r->o.request_timeout_ms)
		r->o.request_timeout_ms = 60000;
	*out = r;
	return 0;
}

void router_set_timeout(router *r, unsigned ms)
{
	if (r && ms)
		r->o.request_timeout_ms = ms;
}

void router_set_thermal(router *r, const char *sysfs_root, double limit_c)
{
	if (!r)
		return;
	char *dup = sysfs_root ? strdup(sysfs_root) : NULL;
	if (dup) {
		free(r->sysfs_root);
		r->sysfs_root = dup;
		r->o.thermal_sysfs_root = dup;
	}
	r->o.thermal_limit_c = limit_c;
}

/* ---- circuit breakers ------------------------------------------------ */

static breaker *breaker_get(router *r, const char *fp, int create)
{
	for (breaker *b = r->breakers; b; b = b->next)
		if (strcmp(b->fp, fp) == 0)
			return b;
	if (!create)
		return NULL;
	breaker *b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	snprintf(b->fp, sizeof(b->fp), "%s", fp);
	b->next = r->breakers;
	r->breakers = b;
	return b;
}

/* May a request go to this peer now?  Half-open lets one through. */
static int breaker_allows(router *r, const char *fp)
{
	breaker *b = breaker_get(r, fp, 0);
	if (!b || !b->open_until)
		return 1;
	if (uv_now(r->loop) < b->open_until || b->trial)
		return 0;
	return 1;
}

static void breaker_result(router *r, const char *fp, const char *name, int failed)
{
	breaker *b = breaker_get(r, fp, failed);
	if (!b)
		return;
	if (!failed) {
		if (b->open_until)
			log_info("peer '%s': circuit closed again", name);
		b->failures = 0;
		b->open_until = 0;
		b->trial = 0;
		return;
	}
	b->trial = 0;
	if (++b->failures >= ROUTER_BREAKER_FAILURES) {
		if (!b->open_until || b->failures == ROUTER_BREAKER_FAILURES)
			log_warning("peer '%s': %u failures in a row, not asked for %u s", name,
			            b->failures, ROUTER_BREAKER_OPEN_MS / 1000);
		b->open_until = uv_now(r->loop) + ROUTER_BREAKER_OPEN_MS;
	}
}

/* ---- job life cycle --------------------------------------------------- */

static void append_why(router_job *j, const char *fmt, const char *a, const char *b)
{
	size_t n = strlen(j->why);
	if (n + 3 >= sizeof(j->why))
		return;
	if (n)
		n += (size_t)snprintf(j->why + n, sizeof(j->why) - n, "; ");
	/* Reasons past the buffer are dropped: the first ones matter most. */
	if (snprintf(j->why + n, sizeof(j->why) - n, fmt, a, b) < 0)
		j->why[n] = '\0';
}

static void on_job_timer_closed(uv_handle_t *h)
{
	router_job *j = h->data;
	free(j->answer);
	free(j->req.model);
	json_decref(j->req.body);
	free(j);
}

static void job_unlink_free(router_job *j)
{
	router *r = j->r;
	if (j->prev)
		j->prev->next = j->next;
	else
		r->jobs = j->next;
	if (j->next)
		j->next->prev = j->prev;
	r->stats.in_flight--;
	uv_timer_stop(&j->timer);
	uv_close((uv_handle_t *)&j->timer, on_job_timer_closed);
}

static void job_stop_hop(router_job *j)
{
	router *r = j->r;
	uv_timer_stop(&j->timer);
	if (j->lcall) {
		local_backend_cancel(r->o.lb, j->lcall);
		j->lcall = NULL;
	}
	if (j->pcall) {
		peer_infer_cancel(j->pcall);
		j->pcall = NULL;
	}
	if (j->clookup) {
		answer_cache_lookup_cancel(j->clookup);
		j->clookup = NULL;
	}
}

static void job_finish(router_job *j, int code, int http_status, const char *message)
{
	router *r = j->r;
	j->step = STEP_DONE;
	job_stop_hop(j);
	double ms = (double)(uv_now(r->loop) - j->t0);
	if (code == 0 && j->collect && j->answer && r->o.cache)
		answer_cache_store(r->o.cache, j->req.model, j->req.last_user_text, j->answer);
	if (code == 0 && j->peer_fp[0]) {
		log_info("request %llu %s model '%s': answered by peer '%s' in %.0f ms",
		         (unsigned long long)j->id, infer_kind_name(j->req.kind), j->req.model,
		         j->peer_name, ms);
	} else if (code == 0) {
		log_info("request %llu %s model '%s': answered locally in %.0f ms",
		         (unsigned long long)j->id, infer_kind_name(j->req.kind), j->req.model, ms);
	} else {
		r->stats.failed++;
		log_notice("request %llu %s model '%s': %s (%.0f ms)", (unsigned long long)j->id,
		           infer_kind_name(j->req.kind), j->req.model, message, ms);
	}
	router_callbacks cbs = j->cbs;
	void *ud = j->ud;
	job_unlink_free(j);
	if (cbs.on_done)
		cbs.on_done(ud, code, http_status, message);
}

static void arm_timer(router_job *j);
static void try_next_peer(router_job *j);

static void job_started(router_job *j, router_source src);

/* Answer with one synthetic chunk in the request's shape (cache and
 * template answers), marked in a "sovmesh" member. */
static void answer_synthetic(router_job *j, router_source src, const char *text,
                             double similarity)
{
	char when[40];
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	json_t *mark = json_pack("{s:s,s:b}", "source", router_source_name(src), "degraded",
	                         src == ROUTER_SOURCE_TEMPLATE);
	if (src == ROUTER_SOURCE_CACHE)
		json_object_set_new(mark, "similarity", json_real(similarity));
	json_t *c = j->req.kind == SOVMESH_GEN_CHAT
	                ? json_pack("{s:s,s:s,s:{s:s,s:s},s:b,s:s,s:o}", "model", j->req.model,
	                            "created_at", when, "message", "role", "assistant", "content",
	                            text, "done", 1, "done_reason", "stop", "sovmesh", mark)
	                : json_pack("{s:s,s:s,s:s,s:b,s:s,s:o}", "model", j->req.model,
	                            "created_at", when, "response", text, "done", 1,
	                            "done_reason", "stop", "sovmesh", mark);
	char *s = c ? json_dumps(c, JSON_COMPACT) : NULL;
	json_decref(c);
	if (!s) {
		job_finish(j, -ENOMEM, 500, "out of memory");
		return;
	}
	job_started(j, src);
	if (j->cbs.on_chunk)
		j->cbs.on_chunk(j->ud, s, strlen(s), 1);
	free(s);
	job_finish(j, 0, 200, "ok");
}

/* Step 4, or the end: the template, else 404 / 503. */
static void chain_template(router_job *j, const char *near_question, const char *near_answer)
{
	char msg[600];
	if (j->tried_any && j->all_missing && !near_answer) {
		snprintf(msg, sizeof(msg), "model '%s' not found locally or on any connected peer",
		         j->req.model);
		job_finish(j, -ENOENT, 404, msg);
		return;
	}
	char *text = answer_cache_template(j->r->o.cache, near_question, near_answer);
	if (text) {
		log_info("request %llu: template answer%s (%s)", (unsigned long long)j->id,
		         near_answer ? " with a near miss from the cache" : "",
		         j->why[0] ? j->why : "nothing to try");
		answer_synthetic(j, ROUTER_SOURCE_TEMPLATE, text, 0);
		free(text);
		return;
	}
	snprintf(msg, sizeof(msg), "no backend or peer could answer (%s)",
	         j->why[0] ? j->why : "nothing to try");
	job_finish(j, -EAGAIN, 503, msg);
}

static void on_cache_result(void *ud, answer_cache_result res, const char *answer,
                            const char *question, double similarity)
{
	router_job *j = ud;
	j->clookup = NULL;
	if (res == ANSWER_CACHE_HIT) {
		/* Not stored again: it came from the cache. */
		j->collect = 0;
		log_info("request %llu: answered from the cache (similarity %.2f)",
		         (unsigned long long)j->id, similarity);
		answer_synthetic(j, ROUTER_SOURCE_CACHE, answer, similarity);
		return;
	}
	append_why(j, "cache: %s%s", res == ANSWER_CACHE_NEAR_MISS ? "near miss only" : "miss",
	           "");
	chain_template(j, res == ANSWER_CACHE_NEAR_MISS ? question : NULL,
	               res == ANSWER_CACHE_NEAR_MISS ? answer : NULL);
}

/* The local and peer steps are exhausted: step 3, the cache. */
static void chain_end(router_job *j)
{
	j->step = STEP_CACHE;
	answer_cache *ac = j->r->o.cache;
	if (ac && j->req.last_user_text && !j->req.has_images) {
		j->clookup =
		    answer_cache_lookup_start(ac, j->req.model, j->req.last_user_text, on_cache_result, j);
		if (j->clookup)
			return;
	}
	chain_template(j, NULL, NULL);
}

static void job_started(router_job *j, router_source src)
{
	if (j->started)
		return;
	j->started = 1;
	j->r->stats.answered[src]++;
	if (j->cbs.on_source)
		j->cbs.on_source(j->ud, src, src == ROUTER_SOURCE_PEER ? j->peer_name : NULL);
}

/* Keep the answer's text for the cache: Ollama's chat chunks carry it in
 * message.content, generate chunks in response. */
static void collect_text(router_job *j, const char *json, size_t len)
{
	json_t *c = json_loadb(json, len, 0, NULL);
	const char *piece = json_string_value(json_object_get(json_object_get(c, "message"), "content"));
	if (!piece)
		piece = json_string_value(json_object_get(c, "response"));
	size_t n = piece ? strlen(piece) : 0;
	if (j->answer_len + n > ANSWER_CACHE_MAX_ANSWER) {
		j->collect = 0; /* too long to cache */
	} else if (n || !j->answer) {
		char *g = realloc(j->answer, j->answer_len + n + 1);
		if (!g) {
			j->collect = 0;
		} else {
			memcpy(g + j->answer_len, piece ? piece : "", n);
			j->answer_len += n;
			g[j->answer_len] = '\0';
			j->answer = g;
		}
	}
	json_decref(c);
}

static void deliver_chunk(router_job *j, router_source src, const char *json, size_t len,
                          int done)
{
	job_started(j, src);
	if (j->collect)
		collect_text(j, json, len);
	/* Each chunk resets the idle limit. */
	arm_timer(j);
	if (j->cbs.on_chunk)
		j->cbs.on_chunk(j->ud, json, len, done);
}

/* ---- step 1: local ---------------------------------------------------- */

static void local_chunk(void *ud, const sovmesh_gen_chunk *c)
{
	router_job *j = ud;
	deliver_chunk(j, ROUTER_SOURCE_LOCAL, c->json, c->json_len, c->done);
}

static void local_done(void *ud, const sovmesh_backend_status *st)
{
	router_job *j = ud;
	j->lcall = NULL;
	if (st->code == 0) {
		job_started(j, ROUTER_SOURCE_LOCAL);
		job_finish(j, 0, 200, "ok");
		return;
	}
	const char *m = st->message ? st->message : strerror(-st->code);
	if (j->started) {
		char msg[600];
		snprintf(msg, sizeof(msg), "local backend failed mid-answer: %s", m);
		job_finish(j, st->code, 502, msg);
		return;
	}
	if (st->code == -EINVAL) { /* the request itself is wrong: no one else will take it */
		job_finish(j, -EINVAL, 400, m);
		return;
	}
	if (st->code != -ENOENT)
		j->all_missing = 0;
	append_why(j, "local: %s%s", m, "");
	j->r->stats.fallbacks++;
	try_next_peer(j);
}

static void start_local(router_job *j)
{
	router *r = j->r;
	j->step = STEP_LOCAL;
	if (!r->o.lb) {
		append_why(j, "no local backend%s%s", "", "");
		try_next_peer(j);
		return;
	}
	thermal_state ts;
	thermal_read(r->o.thermal_sysfs_root, r->o.thermal_limit_c, &ts);
	char buf[64];
	if (ts.hot) {
		if (ts.has_temp)
			snprintf(buf, sizeof(buf), "%.1f °C", ts.temp_c);
		else
			snprintf(buf, sizeof(buf), "throttled");
		append_why(j, "local: hot (%s)%s", ts.throttled ? "throttled" : buf, "");
		j->all_missing = 0;
		try_next_peer(j);
		return;
	}
	if (local_backend_busy(r->o.lb)) {
		snprintf(buf, sizeof(buf), "%u/%u", local_backend_in_flight(r->o.lb),
		         local_backend_slots(r->o.lb));
		append_why(j, "local: busy (%s slots in use)%s", buf, "");
		j->all_missing = 0;
		try_next_peer(j);
		return;
	}
	if (local_backend_has_model(r->o.lb, j->req.model) == 0) {
		append_why(j, "local: no model '%s'%s", j->req.model, "");
		j->tried_any = 1;
		try_next_peer(j);
		return;
	}
	j->tried_any = 1;
	size_t len = 0;
	char *body = infer_request_body_text(&j->req, &len);
	if (!body) {
		job_finish(j, -ENOMEM, 500, "out of memory");
		return;
	}
	sovmesh_gen_request gr = {
	    .size = sizeof(gr),
	    .kind = j->req.kind,
	    .model = j->req.model,
	    .body_json = body,
	    .body_len = len,
	    .stream = j->req.stream,
	    .timeout_ms = 0, /* our timer bounds first chunk and gaps instead */
	};
	static const sovmesh_gen_callbacks cbs = {
	    .size = sizeof(sovmesh_gen_callbacks),
	    .on_chunk = local_chunk,
	    .on_done = local_done,
	};
	j->lcall = local_backend_generate(r->o.lb, LOCAL_ORIGIN_USER, &gr, &cbs, j);
	free(body);
	if (!j->lcall) {
		append_why(j, "local: backend could not start the call%s%s", "", "");
		j->all_missing = 0;
		try_next_peer(j);
		return;
	}
	arm_timer(j);
}

/* ---- step 2: peers ---------------------------------------------------- */

static int model_matches(const char *have, const char *want)
{
	if (strcmp(have, want) == 0)
		return 1;
	size_t n = strlen(want);
	if (strncmp(have, want, n) == 0 && strcmp(have + n, ":latest") == 0)
		return 1;
	n = strlen(have);
	return strncmp(want, have, n) == 0 && strcmp(want + n, ":latest") == 0;
}

static int already_tried(const router_job *j, const char *fp)
{
	for (unsigned i = 0; i < j->peer_tries; i++)
		if (strcmp(j->tried[i], fp) == 0)
			return 1;
	return 0;
}

static void peer_chunk(void *ud, const char *json, size_t len, int done)
{
	router_job *j = ud;
	deliver_chunk(j, ROUTER_SOURCE_PEER, json, len, done);
}

/* Failures that say something about the peer's health (not an answer). */
static int counts_as_failure(int code)
{
	return code != -EBUSY && code != -ENOENT && code != -EPERM && code != -EALREADY;
}

static void peer_done(void *ud, int code, const char *message)
{
	router_job *j = ud;
	router *r = j->r;
	j->pcall = NULL;
	breaker_result(r, j->peer_fp, j->peer_name, code != 0 && counts_as_failure(code));
	if (code == 0) {
		job_started(j, ROUTER_SOURCE_PEER);
		job_finish(j, 0, 200, "ok");
		return;
	}
	if (j->started) {
		char msg[600];
		snprintf(msg, sizeof(msg), "peer '%s' failed mid-answer: %s", j->peer_name,
		         message);
		job_finish(j, code, 502, msg);
		return;
	}
	if (code != -ENOENT)
		j->all_missing = 0;
	append_why(j, "peer '%s': %s", j->peer_name, message);
	r->stats.fallbacks++;
	j->peer_fp[0] = '\0';
	try_next_peer(j);
}

static void try_next_peer(router_job *j)
{
	router *r = j->r;
	j->step = STEP_PEER;
	if (!r->o.ptable || !r->o.pc || !r->o.trust) {
		chain_end(j);
		return;
	}
	if (!j->req.last_user_text || j->req.has_images) {
		append_why(j, "peers: %s%s",
		           j->req.has_images ? "a request with images stays on this device"
		                             : "no user message to send",
		           "");
		j->all_missing = 0;
		chain_end(j);
		return;
	}
	while (j->peer_tries < ROUTER_MAX_PEER_TRIES) {
		/* The lowest-latency eligible peer not tried yet. */
		peer_info best = {0};
		int found = 0;
		size_t n = peer_table_paired_count(r->o.ptable);
		for (size_t i = 0; i < n; i++) {
			peer_info pi;
			if (peer_table_paired_at(r->o.ptable, i, &pi) < 0)
				continue;
			if (pi.status != PEER_CONNECTED)
				continue;
			/* A live model list was consulted: "not found" can be said. */
			j->tried_any = 1;
			if (already_tried(j, pi.fingerprint_hex) || !pi.address[0])
				continue;
			int has = 0;
			for (size_t k = 0; k < pi.n_models && !has; k++)
				has = model_matches(pi.models[k], j->req.model);
			if (!has)
				continue;
			/* It has the model: whatever happens now, "not found" is wrong. */
			j->all_missing = 0;
			if (pi.hot || !pi.accepting || !breaker_allows(r, pi.fingerprint_hex) ||
			    (pi.capacity >= 0 && pi.in_flight >= pi.capacity))
				continue;
			double lat = pi.latency_ms < 0 ? 1e12 : pi.latency_ms;
			double best_lat = best.latency_ms < 0 ? 1e12 : best.latency_ms;
			if (!found || lat < best_lat) {
				best = pi;
				found = 1;
			}
		}
		if (!found)
			break;
		snprintf(j->tried[j->peer_tries++], sizeof(j->tried[0]), "%s", best.fingerprint_hex);
		snprintf(j->peer_fp, sizeof(j->peer_fp), "%s", best.fingerprint_hex);
		snprintf(j->peer_name, sizeof(j->peer_name), "%s", best.name ? best.name : "?");
		const trusted_peer *tp = trust_store_find(r->o.trust, best.fingerprint_hex);
		hostport hp;
		const char *why = NULL;
		if (!tp || hostport_parse(best.address, 0, &hp, &why) < 0) {
			append_why(j, "peer '%s': %s", j->peer_name,
			           tp ? "unusable address" : "no longer paired");
			continue;
		}
		breaker *b = breaker_get(r, best.fingerprint_hex, 0);
		if (b && b->open_until)
			b->trial = 1; /* half-open: this request is the trial */
		peer_infer_target t = {
		    .fingerprint_hex = best.fingerprint_hex,
		    .host = hp.host,
		    .port = hp.port,
		    .x25519_public = tp->x25519_public,
		};
		static const peer_infer_callbacks cbs = {
		    .on_chunk = peer_chunk,
		    .on_done = peer_done,
		};
		sovmesh_error err = {0};
		j->tried_any = 1;
		log_debug("request %llu: asking peer '%s' at %s", (unsigned long long)j->id,
		          j->peer_name, best.address);
		j->pcall = peer_infer_start(r->o.pc, &t, &j->req, 0, &cbs, j, &err);
		if (!j->pcall) {
			append_why(j, "peer '%s': %s", j->peer_name, err.message);
			j->all_missing = 0;
			if (b)
				b->trial = 0;
			continue;
		}
		arm_timer(j);
		return;
	}
	if (j->peer_tries == 0)
		append_why(j, "peers: none connected with model '%s' and free%s", j->req.model, "");
	j->peer_fp[0] = '\0';
	chain_end(j);
}

/* ---- timers ------------------------------------------------------------ */

static void on_timer(uv_timer_t *t)
{
	router_job *j = t->data;
	router *r = j->r;
	if (j->step == STEP_START) {
		start_local(j);
		return;
	}
	/* A hop went silent for request_timeout: give it up. */
	char msg[300];
	snprintf(msg, sizeof(msg), "no answer within %u s", r->o.request_timeout_ms / 1000);
	int was_peer = j->pcall != NULL;
	job_stop_hop(j);
	if (was_peer)
		breaker_result(r, j->peer_fp, j->peer_name, 1);
	if (j->started) {
		char full[600];
		snprintf(full, sizeof(full), "%s%s%s stopped mid-answer: %s",
		         was_peer ? "peer '" : "local backend", was_peer ? j->peer_name : "",
		         was_peer ? "'" : "", msg);
		job_finish(j, -ETIMEDOUT, 504, full);
		return;
	}
	j->all_missing = 0;
	r->stats.fallbacks++;
	if (was_peer) {
		append_why(j, "peer '%s': %s", j->peer_name, msg);
		j->peer_fp[0] = '\0';
	} else {
		append_why(j, "local: %s%s", msg, "");
	}
	try_next_peer(j);
}

static void arm_timer(router_job *j)
{
	uv_timer_start(&j->timer, on_timer, j->r->o.request_timeout_ms, 0);
}

/* ---- API ---------------------------------------------------------------- */

router_job *router_submit(router *r, const infer_request *req, const router_callbacks *cbs,
                          void *ud)
{
	if (!r || !req || !cbs)
		return NULL;
	router_job *j = calloc(1, sizeof(*j));
	if (!j)
		return NULL;
	j->req = *req;
	j->req.model = strdup(req->model);
	if (!j->req.model) {
		free(j);
		return NULL;
	}
	/* last_user_text points into body, which this reference keeps. */
	json_incref(j->req.body);
	j->r = r;
	j->cbs = *cbs;
	j->ud = ud;
	j->all_missing = 1;
	j->collect = r->o.cache && req->last_user_text && !req->has_images;
	j->id = ++r->next_id;
	j->t0 = uv_now(r->loop);
	uv_timer_init(r->loop, &j->timer);
	j->timer.data = j;
	j->next = r->jobs;
	if (r->jobs)
		r->jobs->prev = j;
	r->jobs = j;
	r->stats.in_flight++;
	/* Callbacks never run inside this call: start on the next turn. */
	uv_timer_start(&j->timer, on_timer, 0, 0);
	return j;
}

void router_cancel(router_job *j)
{
	if (!j || j->step == STEP_DONE)
		return;
	router *r = j->r;
	int was_peer = j->pcall != NULL;
	job_stop_hop(j);
	/* A client that left says nothing about the peer's health. */
	if (was_peer) {
		breaker *b = breaker_get(r, j->peer_fp, 0);
		if (b)
			b->trial = 0;
	}
	log_info("request %llu %s model '%s': client went away, upstream cancelled",
	         (unsigned long long)j->id, infer_kind_name(j->req.kind), j->req.model);
	j->step = STEP_DONE;
	job_unlink_free(j);
}

void router_free(router *r)
{
	if (!r)
		return;
	while (r->jobs) {
		router_job *j = r->jobs;
		job_stop_hop(j);
		j->step = STEP_DONE;
		job_unlink_free(j);
	}
	while (r->breakers) {
		breaker *b = r->breakers;
		r->breakers = b->next;
		free(b);
	}
	free(r->sysfs_root);
	free(r);
}

void router_get_stats(const router *r, router_stats *out)
{
	if (r)
		*out = r->stats;
	else
		memset(out, 0, sizeof(*out));
}

json_t *router_stats_json(const router *r)
{
	json_t *br = json_array();
	uint64_t now = uv_now(r->loop);
	for (const breaker *b = r->breakers; b; b = b->next)
		if (b->open_until && now < b->open_until)
			json_array_append_new(br, json_pack("{s:s,s:b}", "fingerprint", b->fp, "open", 1));
	return json_pack("{s:{s:I,s:I,s:I,s:I},s:I,s:I,s:I,s:o}", "answered", "local",
	                 (json_int_t)r->stats.answered[ROUTER_SOURCE_LOCAL], "peer",
	                 (json_int_t)r->stats.answered[ROUTER_SOURCE_PEER], "cache",
	                 (json_int_t)r->stats.answered[ROUTER_SOURCE_CACHE], "template",
	                 (json_int_t)r->stats.answered[ROUTER_SOURCE_TEMPLATE], "failed",
	                 (json_int_t)r->stats.failed, "fallbacks", (json_int_t)r->stats.fallbacks,
	                 "in_flight", (json_int_t)r->stats.in_flight, "breakers", br);
}

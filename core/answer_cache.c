/* The cache and template steps of the fallback chain (see answer_cache.h). */
#include "answer_cache.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

typedef struct pending {
	answer_cache *ac;
	int is_store;
	char *model, *question, *answer; /* answer: stores only */
	answer_cache_cb cb;
	void *ud;
	sovmesh_backend_call *embed_call;
	uv_timer_t timer; /* lookups without a model embedding: next turn */
	int timer_live;
	struct pending *prev, *next;
} pending;

struct answer_cache_lookup {
	pending p;
};

struct answer_cache {
	uv_loop_t *loop;
	answer_cache_options o;
	char *embedding_model, *template_text, *template_near_miss_text;
	pending *pendings;
	uint64_t lookups, hits, near_misses, stored, errors;
	int warned_lookup, warned_store, warned_embed;
};

int answer_cache_new(uv_loop_t *loop, const answer_cache_options *opts, answer_cache **out)
{
	answer_cache *ac = calloc(1, sizeof(*ac));
	if (!ac)
		return -ENOMEM;
	ac->loop = loop;
	ac->o = *opts;
	ac->embedding_model = strdup(opts->embedding_model ? opts->embedding_model : "");
	ac->template_text = strdup(opts->template_text ? opts->template_text : "");
	ac->template_near_miss_text =
	    strdup(opts->template_near_miss_text ? opts->template_near_miss_text : "");
	if (!ac->embedding_model || !ac->template_text || !ac->template_near_miss_text) {
		answer_cache_free(ac);
		return -ENOMEM;
	}
	*out = ac;
	return 0;
}

static void pending_unlink(pending *p)
{
	answer_cache *ac = p->ac;
	if (p->prev)
		p->prev->next = p->next;
	else if (ac->pendings == p)
		ac->pendings = p->next;
	if (p->next)
		p->next->prev = p->prev;
	p->prev = p->next = NULL;
}

static void pending_free_now(pending *p)
{
	free(p->model);
	free(p->question);
	free(p->answer);
	free(p);
}

static void on_timer_closed(uv_handle_t *h)
{
	pending_free_now(h->data);
}

/* Unlink, cancel what is open, free (after the timer closed, if any). */
static void pending_release(pending *p)
{
	pending_unlink(p);
	if (p->embed_call)
		local_backend_cancel_passthrough(p->ac->o.lb, p->embed_call);
	p->embed_call = NULL;
	if (p->timer_live) {
		p->timer_live = 0;
		uv_close((uv_handle_t *)&p->timer, on_timer_closed);
	} else {
		pending_free_now(p);
	}
}

void answer_cache_free(answer_cache *ac)
{
	if (!ac)
		return;
	while (ac->pendings)
		pending_release(ac->pendings);
	free(ac->embedding_model);
	free(ac->template_text);
	free(ac->template_near_miss_text);
	free(ac);
}

/* ---- lookup ------------------------------------------------------------ */

static void finish_lookup(pending *p, const float *vec, size_t dim)
{
	answer_cache *ac = p->ac;
	double hit_t = vec ? ac->o.model_hit : ac->o.hit;
	double near_t = vec ? ac->o.model_near_miss : ac->o.near_miss;
	if (near_t > hit_t)
		near_t = hit_t;
	answer_cache_result res = ANSWER_CACHE_MISS;
	sovmesh_cache_hit hit = {.size = sizeof(hit)};
	ac->lookups++;
	if (ac->o.ops && ac->o.ops->lookup) {
		sovmesh_cache_query q = {
		    .size = sizeof(q),
		    .model = p->model,
		    .query = p->question,
		    .embedding = vec,
		    .dim = vec ? dim : 0,
		    /* 0 would mean "the plugin's default": ask for anything. */
		    .min_similarity = near_t > 0 ? near_t : 1e-9,
		};
		sovmesh_error err = {0};
		int r = ac->o.ops->lookup(ac->o.instance, &q, &hit, &err);
		if (r < 0) {
			ac->errors++;
			if (!ac->warned_lookup++)
				log_warning("cache: lookup failed, treated as a miss: %s",
				            err.message[0] ? err.message : strerror(-r));
		} else if (r == 1 && hit.answer) {
			res = hit.similarity >= hit_t ? ANSWER_CACHE_HIT : ANSWER_CACHE_NEAR_MISS;
		}
	}
	if (res == ANSWER_CACHE_HIT)
		ac->hits++;
	else if (res == ANSWER_CACHE_NEAR_MISS)
		ac->near_misses++;
	answer_cache_cb cb = p->cb;
	void *ud = p->ud;
	pending_release(p);
	cb(ud, res, res ? hit.answer : NULL, res ? hit.query : NULL,
	   res ? hit.similarity : 0.0);
	free(hit.answer);
	free(hit.query);
}

static void on_lookup_timer(uv_timer_t *t)
{
	finish_lookup(t->data, NULL, 0);
}

static void on_lookup_embedded(void *ud, const sovmesh_backend_status *st, const float *vectors,
                               size_t n, size_t dim)
{
	pending *p = ud;
	p->embed_call = NULL;
	if (st->code != 0 || n != 1 || dim == 0) {
		if (!p->ac->warned_embed++)
			log_info("cache: embedding model '%s' unavailable (%s); using the built-in "
			         "embedding",
			         p->ac->embedding_model, st->message ? st->message : "no vector");
		finish_lookup(p, NULL, 0);
		return;
	}
	finish_lookup(p, vectors, dim);
}

static pending *pending_new(answer_cache *ac, int is_store, const char *model,
                            const char *question, const char *answer)
{
	pending *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->ac = ac;
	p->is_store = is_store;
	p->model = strdup(model);
	p->question = strdup(question);
	p->answer = answer ? strdup(answer) : NULL;
	if (!p->model || !p->question || (answer && !p->answer)) {
		pending_free_now(p);
		return NULL;
	}
	p->next = ac->pendings;
	if (ac->pendings)
		ac->pendings->prev = p;
	ac->pendings = p;
	return p;
}

/* Ask the backend's embedding model, if one is configured and free now. */
static int start_embed(pending *p, sovmesh_backend_embed_cb cb)
{
	answer_cache *ac = p->ac;
	if (!ac->embedding_model[0] || !ac->o.lb || local_backend_busy(ac->o.lb))
		return 0;
	const char *texts[1] = {p->question};
	p->embed_call = local_backend_embed(ac->o.lb, ac->embedding_model, texts, 1,
	                                    ANSWER_CACHE_EMBED_TIMEOUT_MS, cb, p);
	return p->embed_call != NULL;
}

answer_cache_lookup *answer_cache_lookup_start(answer_cache *ac, const char *model,
                                               const char *question, answer_cache_cb cb,
                                               void *ud)
{
	if (!ac || !model || !question || !cb)
		return NULL;
	pending *p = pending_new(ac, 0, model, question, NULL);
	if (!p)
		return NULL;
	p->cb = cb;
	p->ud = ud;
	if (!start_embed(p, on_lookup_embedded)) {
		uv_timer_init(ac->loop, &p->timer);
		p->timer.data = p;
		p->timer_live = 1;
		uv_timer_start(&p->timer, on_lookup_timer, 0, 0);
	}
	return (answer_cache_lookup *)p;
}

void answer_cache_lookup_cancel(answer_cache_lookup *l)
{
	if (l)
		pending_release((pending *)l);
}

/* ---- store -------------------------------------------------------------- */

static void do_store(pending *p, const float *vec, size_t dim)
{
	answer_cache *ac = p->ac;
	sovmesh_cache_entry e = {
	    .size = sizeof(e),
	    .model = p->model,
	    .query = p->question,
	    .answer = p->answer,
	    .embedding = vec,
	    .dim = vec ? dim : 0,
	    .created_unix = (int64_t)time(NULL),
	};
	sovmesh_error err = {0};
	int r = ac->o.ops->store(ac->o.instance, &e, &err);
	if (r < 0) {
		ac->errors++;
		if (!ac->warned_store++)
			log_warning("cache: could not store an answer: %s",
			            err.message[0] ? err.message : strerror(-r));
	} else {
		ac->stored++;
	}
	pending_release(p);
}

static void on_store_embedded(void *ud, const sovmesh_backend_status *st, const float *vectors,
                              size_t n, size_t dim)
{
	pending *p = ud;
	p->embed_call = NULL;
	if (st->code != 0 || n != 1 || dim == 0)
		do_store(p, NULL, 0);
	else
		do_store(p, vectors, dim);
}

void answer_cache_store(answer_cache *ac, const char *model, const char *question,
                        const char *answer)
{
	if (!ac || !ac->o.ops || !ac->o.ops->store || !model || !question || !answer ||
	    !*question || !*answer || strlen(answer) > ANSWER_CACHE_MAX_ANSWER)
		return;
	pending *p = pending_new(ac, 1, model, question, answer);
	if (!p)
		return;
	if (!start_embed(p, on_store_embedded))
		do_store(p, NULL, 0);
}

/* ---- template ----------------------------------------------------------- */

int answer_cache_template_enabled(const answer_cache *ac)
{
	return ac && ac->o.template_enabled;
}

/* Append s[0..n) to the growing buffer *b (len *len); 0 or -ENOMEM. */
static int append(char **b, size_t *len, const char *s, size_t n)
{
	char *g = realloc(*b, *len + n + 1);
	if (!g)
		return -ENOMEM;
	memcpy(g + *len, s, n);
	*len += n;
	g[*len] = '\0';
	*b = g;
	return 0;
}

char *answer_cache_template(const answer_cache *ac, const char *near_question,
                            const char *near_answer)
{
	if (!answer_cache_template_enabled(ac))
		return NULL;
	const char *t = near_answer ? ac->template_near_miss_text : ac->template_text;
	char *out = NULL;
	size_t len = 0;
	if (append(&out, &len, "", 0) < 0)
		return NULL;
	while (*t) {
		const char *sub = NULL;
		size_t skip = 0;
		if (near_answer && strncmp(t, "{question}", 10) == 0) {
			sub = near_question ? near_question : "";
			skip = 10;
		} else if (near_answer && strncmp(t, "{answer}", 8) == 0) {
			sub = near_answer;
			skip = 8;
		}
		int r = sub ? append(&out, &len, sub, strlen(sub)) : append(&out, &len, t, 1);
		if (r < 0) {
			free(out);
			return NULL;
		}
		t += sub ? skip : 1;
	}
	return out;
}

/* ---- status ------------------------------------------------------------- */

json_t *answer_cache_stats_json(const answer_cache *ac)
{
	json_t *ps = json_null();
	if (ac->o.ops && ac->o.ops->stats) {
		sovmesh_cache_stats st = {.size = sizeof(st)};
		sovmesh_error err = {0};
		if (ac->o.ops->stats(ac->o.instance, &st, &err) == 0)
			ps = json_pack("{s:I,s:I,s:I,s:I,s:I}", "entries", (json_int_t)st.entries,
			               "hits", (json_int_t)st.hits, "misses", (json_int_t)st.misses,
			               "evictions", (json_int_t)st.evictions, "bytes",
			               (json_int_t)st.bytes);
	}
	return json_pack("{s:b,s:s,s:o,s:I,s:I,s:I,s:I,s:I}", "enabled", ac->o.ops != NULL,
	                 "embedding", ac->embedding_model[0] ? ac->embedding_model : "built-in",
	                 "plugin_stats", ps, "lookups", (json_int_t)ac->lookups, "hits",
	                 (json_int_t)ac->hits, "near_misses", (json_int_t)ac->near_misses,
	                 "stored", (json_int_t)ac->stored, "errors", (json_int_t)ac->errors);
}

int answer_cache_clear(answer_cache *ac, sovmesh_error *err)
{
	if (!ac->o.ops)
		return sovmesh_fail(err, -ENOENT, "no cache is configured (cache.enabled, cache.plugin)");
	if (!ac->o.ops->clear)
		return sovmesh_fail(err, -ENOTSUP, "the cache plugin cannot be cleared");
	return ac->o.ops->clear(ac->o.instance, err);
}

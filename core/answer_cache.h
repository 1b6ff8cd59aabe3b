/*
 * Steps 3 and 4 of the fallback chain, for the router: the cache plugin
 * (cache.plugin, sovmesh/cache.h) with the query embedded by the
 * backend's embedding model when one is configured and can answer now
 * (else the plugin's built-in embedding), and the template answer.
 *
 *   lookup   one plugin lookup at the near-miss threshold; the best entry
 *            is a HIT at or above the hit threshold, a NEAR_MISS between
 *            the two, else a MISS.  Thresholds depend on the embedding
 *            used (cache.hit_similarity / near_miss_similarity for the
 *            built-in one, cache.model_* for the model's).
 *   store    answers served locally or by a peer (never cache or
 *            template answers), embedded the same way, fire and forget.
 *   template template.text, or template.near_miss_text with {question}
 *            and {answer} replaced by the near miss.
 *
 * A broken cache (the plugin returns an error) is a miss, logged once per
 * kind of failure; it never fails a request.  Cached text never leaves
 * the device: nothing here talks to peers.
 *
 * Threading: the loop's thread only.
 */
#ifndef SOVMESH_CORE_ANSWER_CACHE_H
#define SOVMESH_CORE_ANSWER_CACHE_H

#include <jansson.h>
#include <sovmesh/cache.h>
#include <uv.h>

#include "local_backend.h"

/* A model embedding must come back this fast, else the built-in one is used. */
#define ANSWER_CACHE_EMBED_TIMEOUT_MS 2000
/* Answers longer than this are not stored. */
#define ANSWER_CACHE_MAX_ANSWER (256u * 1024u)

typedef struct answer_cache answer_cache;
typedef struct answer_cache_lookup answer_cache_lookup;

typedef struct answer_cache_options {
	const sovmesh_cache_ops *ops; /* NULL: no cache (every lookup misses) */
	void *instance;
	local_backend *lb; /* for the embedding model; may be NULL */
	const char *embedding_model; /* "" / NULL: built-in embedding only */
	double hit, near_miss;             /* built-in embedding */
	double model_hit, model_near_miss; /* embedding_model */
	int template_enabled;
	const char *template_text;
	const char *template_near_miss_text;
} answer_cache_options;

typedef enum answer_cache_result {
	ANSWER_CACHE_MISS = 0,
	ANSWER_CACHE_HIT = 1,
	ANSWER_CACHE_NEAR_MISS = 2,
} answer_cache_result;

/* answer/question valid during the call only (NULL for a miss). */
typedef void (*answer_cache_cb)(void *ud, answer_cache_result r, const char *answer,
                                const char *question, double similarity);

/* Strings are copied.  0 or -ENOMEM. */
int answer_cache_new(uv_loop_t *loop, const answer_cache_options *opts, answer_cache **out);
/* Cancels lookups and stores in flight (no callbacks).  NULL is a no-op. */
void answer_cache_free(answer_cache *ac);

/* Look up `question` for `model`; `cb` runs later (never inside this
 * call).  NULL on out-of-memory (no callback). */
answer_cache_lookup *answer_cache_lookup_start(answer_cache *ac, const char *model,
                                               const char *question, answer_cache_cb cb,
                                               void *ud);
void answer_cache_lookup_cancel(answer_cache_lookup *l);

/* Remember an answer (asynchronously when a model embedding is wanted). */
void answer_cache_store(answer_cache *ac, const char *model, const char *question,
                        const char *answer);

/* The template answer: the near-miss text when near_answer is given,
 * else the plain text.  malloc'd; NULL when templates are disabled or on
 * out-of-memory. */
char *answer_cache_template(const answer_cache *ac, const char *near_question,
                            const char *near_answer);
int answer_cache_template_enabled(const answer_cache *ac);

/* {"enabled", "plugin_stats": {entries, hits, misses, evictions, bytes}|null,
 *  "lookups", "hits", "near_misses", "stored", "errors"} */
json_t *answer_cache_stats_json(const answer_cache *ac);
/* Remove every cached answer.  0 or -errno with `err`. */
int answer_cache_clear(answer_cache *ac, sovmesh_error *err);

#endif

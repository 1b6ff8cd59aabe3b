/*
 * cache-semantic's built-in embedding (plugins/cache-semantic/embed.c):
 * its properties, and that the default similarity thresholds still give
 * at least the precision and recall that docs/cache-thresholds.md reports
 * on tests/data/paraphrase_pairs.tsv, and are still the ones the rule of
 * tools/cache_thresholds picks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "embed.h"

/* The defaults.  docs/cache-thresholds.md, docs/mesh-inference.md,
 * docs/configuration.md and core/config.c (cache.hit_similarity,
 * cache.near_miss_similarity) must agree with these; the minimum
 * precision/recall are the figures the docs report, rounded down. */
#define HIT_THRESHOLD 0.83
#define HIT_MIN_PRECISION 0.95
#define HIT_MIN_RECALL 0.22
#define NEAR_MISS_THRESHOLD 0.43
#define NEAR_MISS_MIN_PRECISION 0.59
#define NEAR_MISS_MIN_RECALL 0.82

#define DIM EMBED_BUILTIN_DIM

static float sim(const char *a, const char *b)
{
	float va[DIM], vb[DIM];
	embed_builtin(a, strlen(a), va);
	embed_builtin(b, strlen(b), vb);
	return embed_dot(va, vb, DIM);
}

static float norm(const float *v)
{
	return sqrtf(embed_dot(v, v, DIM));
}

static void deterministic_unit_length(void **state)
{
	(void)state;
	const char *t = "How long should I boil an egg for a runny yolk?";
	float a[DIM], b[DIM];
	memset(b, 0x7f, sizeof(b)); /* garbage: the output is fully written */
	embed_builtin(t, strlen(t), a);
	embed_builtin(t, strlen(t), b);
	assert_memory_equal(a, b, sizeof(a));
	assert_float_equal(norm(a), 1.0f, 1e-5f);

	const char *texts[] = {"x", "42", "why?", "naïve café crème brûlée",
			       "a the of to in", "supercalifragilisticexpialidocious-ly"};
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		embed_builtin(texts[i], strlen(texts[i]), a);
		assert_float_equal(norm(a), 1.0f, 1e-5f);
	}
}

static void empty_is_zero(void **state)
{
	(void)state;
	const char *texts[] = {"", "   ", "?!.,;:-- ()", "\t\n", "''"};
	float v[DIM];
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		memset(v, 0x7f, sizeof(v));
		embed_builtin(texts[i], strlen(texts[i]), v);
		for (size_t k = 0; k < DIM; k++)
			assert_true(v[k] == 0.0f);
	}
	/* Similar to nothing, itself included. */
	assert_true(sim("", "") == 0.0f);
	assert_true(sim("", "what is the capital of France") == 0.0f);
	/* Only len bytes are read. */
	embed_builtin("what is the capital of France", 0, v);
	for (size_t k = 0; k < DIM; k++)
		assert_true(v[k] == 0.0f);
}

static void identical_is_one(void **state)
{
	(void)state;
	const char *t[] = {"what is the capital of France", "convert 5 miles to km",
			   "pizza", "how do I reverse a list in python"};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		assert_float_equal(sim(t[i], t[i]), 1.0f, 1e-5f);
}

static void case_and_punctuation_insensitive(void **state)
{
	(void)state;
	const char *base = "whats the capital of france";
	const char *same[] = {
	    "What's the capital of France?",
	    "WHATS THE CAPITAL OF FRANCE!!!",
	    "  what's   the capital, of france ",
	    "what\xe2\x80\x99s the capital of France",   /* typographic apostrophe */
	    "whats-the-capital-of-france",
	};
	float a[DIM], b[DIM];
	embed_builtin(base, strlen(base), a);
	for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
		embed_builtin(same[i], strlen(same[i]), b);
		assert_memory_equal(a, b, sizeof(a));
	}
	/* A NUL inside the text separates words like a space. */
	embed_builtin("capital\0france", 14, a);
	embed_builtin("capital france", 14, b);
	assert_memory_equal(a, b, sizeof(a));
}

static void paraphrase_beats_unrelated(void **state)
{
	(void)state;
	struct {
		const char *q, *para, *other;
	} cases[] = {
	    {"how do I boil an egg", "what's the best way to boil eggs",
	     "what is the capital of France"},
	    {"how do vaccines work", "how does a vaccine work", "how do I exit vim"},
	    {"reverse a list in pyhton", "how do I reverse a list in python",
	     "how do I tie a tie"},
	    {"convert 5 miles to km", "how many kilometers is 5 miles",
	     "who painted the mona lisa"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		float p = sim(cases[i].q, cases[i].para);
		float o = sim(cases[i].q, cases[i].other);
		assert_true(p > o + 0.2f);
	}
	/* Word order: the converse conversion is a different question. */
	assert_true(sim("convert 5 miles to km", "convert 5 km to miles") < HIT_THRESHOLD);
	/* Numbers are compared exactly, not as n-grams. */
	assert_true(sim("who won the world cup in 2018", "who won the world cup in 2014") <
		    HIT_THRESHOLD);
	/* Inflections and question-word rewordings still hit. */
	assert_true(sim("how do vaccines work", "how does a vaccine work") >= HIT_THRESHOLD);
	assert_true(sim("how do I bleed a radiator", "how to bleed radiators") >= HIT_THRESHOLD);
}

static void long_text(void **state)
{
	(void)state;
	/* Long input and words longer than the word buffer are fine. */
	size_t n = 200000;
	char *t = malloc(n);
	assert_non_null(t);
	for (size_t i = 0; i < n; i++)
		t[i] = i % 97 == 96 ? ' ' : (char)('a' + (i * 7) % 26);
	float v[DIM];
	embed_builtin(t, n, v);
	assert_float_equal(norm(v), 1.0f, 1e-4f);
	memset(t, 0xff, n); /* not UTF-8 at all: still one (long) word */
	embed_builtin(t, n, v);
	assert_float_equal(norm(v), 1.0f, 1e-4f);
	free(t);
}

/* ---- the data set and the default thresholds ---- */

typedef struct pairs {
	int *label;
	float *sim;
	size_t n;
} pairs;

static pairs load_pairs(void)
{
	const char *dir = getenv("SOVMESH_TEST_DATA_DIR");
	assert_non_null(dir);
	char path[4096];
	snprintf(path, sizeof(path), "%s/paraphrase_pairs.tsv", dir);
	FILE *f = fopen(path, "r");
	if (!f)
		fail_msg("cannot open %s", path);

	pairs p = {0};
	size_t cap = 0;
	char line[2048];
	assert_non_null(fgets(line, sizeof(line), f));
	assert_string_equal(line, "label\tq1\tq2\n");
	while (fgets(line, sizeof(line), f)) {
		size_t len = strlen(line);
		assert_true(len > 0 && line[len - 1] == '\n');
		line[len - 1] = '\0';
		char *t1 = strchr(line, '\t');
		assert_non_null(t1);
		char *t2 = strchr(t1 + 1, '\t');
		assert_non_null(t2);
		assert_null(strchr(t2 + 1, '\t'));
		*t1 = *t2 = '\0';
		assert_true(strcmp(line, "0") == 0 || strcmp(line, "1") == 0);
		if (p.n == cap) {
			cap = cap ? 2 * cap : 256;
			p.label = realloc(p.label, cap * sizeof(*p.label));
			p.sim = realloc(p.sim, cap * sizeof(*p.sim));
			assert_non_null(p.label);
			assert_non_null(p.sim);
		}
		p.label[p.n] = line[0] - '0';
		p.sim[p.n] = sim(t1 + 1, t2 + 1);
		p.n++;
	}
	fclose(f);
	return p;
}

typedef struct score {
	int tp, fp, fn;
	double precision, recall, f1;
} score;

static score score_at(const pairs *p, double threshold)
{
	score s = {0};
	for (size_t i = 0; i < p->n; i++) {
		int pred = p->sim[i] >= threshold;
		s.tp += pred && p->label[i];
		s.fp += pred && !p->label[i];
		s.fn += !pred && p->label[i];
	}
	s.precision = s.tp + s.fp ? (double)s.tp / (s.tp + s.fp) : -1.0;
	s.recall = (double)s.tp / (s.tp + s.fn);
	s.f1 = s.tp ? 2.0 * s.tp / (2.0 * s.tp + s.fp + s.fn) : 0.0;
	return s;
}

static void data_set_shape(void **state)
{
	(void)state;
	pairs p = load_pairs();
	size_t pos = 0;
	for (size_t i = 0; i < p.n; i++)
		pos += (size_t)p.label[i];
	assert_true(p.n >= 300);
	/* Roughly balanced. */
	assert_true(pos * 10 >= p.n * 4 && pos * 10 <= p.n * 6);
	free(p.label);
	free(p.sim);
}

static void default_thresholds_hold(void **state)
{
	(void)state;
	pairs p = load_pairs();

	score hit = score_at(&p, HIT_THRESHOLD);
	printf("hit %.2f: precision %.3f recall %.3f\n", HIT_THRESHOLD, hit.precision,
	       hit.recall);
	assert_true(hit.precision >= HIT_MIN_PRECISION);
	assert_true(hit.recall >= HIT_MIN_RECALL);

	score near = score_at(&p, NEAR_MISS_THRESHOLD);
	printf("near miss %.2f: precision %.3f recall %.3f F1 %.3f\n", NEAR_MISS_THRESHOLD,
	       near.precision, near.recall, near.f1);
	assert_true(near.precision >= NEAR_MISS_MIN_PRECISION);
	assert_true(near.recall >= NEAR_MISS_MIN_RECALL);

	/* They are still what tools/cache_thresholds' rules pick: the hit
	 * threshold is the lowest with precision >= 0.95 ... */
	for (int t = 0; t < (int)lround(HIT_THRESHOLD * 100); t++) {
		score s = score_at(&p, t / 100.0);
		assert_true(s.precision < 0.95);
	}
	/* ... and the near-miss threshold the highest below it whose F1 is
	 * within 0.01 of the best F1 there. */
	double best = 0.0;
	int hit_t = (int)lround(HIT_THRESHOLD * 100);
	for (int t = 0; t < hit_t; t++) {
		score s = score_at(&p, t / 100.0);
		if (s.f1 > best)
			best = s.f1;
	}
	int pick = -1;
	for (int t = 0; t < hit_t; t++)
		if (score_at(&p, t / 100.0).f1 >= best - 0.01 - 1e-12)
			pick = t;
	assert_int_equal(pick, (int)lround(NEAR_MISS_THRESHOLD * 100));

	free(p.label);
	free(p.sim);
}

/* The daemon's defaults are the thresholds this file checks. */
static void config_defaults_agree(void **state)
{
	(void)state;
	setenv("SOVMESH_STATE_DIR", "/tmp/sovmesh-thresholds-test", 1);
	sovmesh_config *cfg = NULL;
	sovmesh_error err = {0};
	assert_int_equal(config_load(NULL, &cfg, &err), 0);
	assert_true(fabs(cfg->cache_hit_similarity - HIT_THRESHOLD) < 1e-9);
	assert_true(fabs(cfg->cache_near_miss_similarity - NEAR_MISS_THRESHOLD) < 1e-9);
	config_free(cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(deterministic_unit_length),
	    cmocka_unit_test(empty_is_zero),
	    cmocka_unit_test(identical_is_one),
	    cmocka_unit_test(case_and_punctuation_insensitive),
	    cmocka_unit_test(paraphrase_beats_unrelated),
	    cmocka_unit_test(long_text),
	    cmocka_unit_test(data_set_shape),
	    cmocka_unit_test(default_thresholds_hold),
	    cmocka_unit_test(config_defaults_agree),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * trainer-reference (plugins/trainer-reference/), loaded through mini_host,
 * on the UCI handwritten digits (tests/data/digits.csv.gz) and on a toy
 * feedback set.  The text featurizer is compiled in as well, to test it
 * directly.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <zlib.h>

#include <sovmesh/trainer.h>

#include "featurize.h"
#include "mini_host.h"

#define NAME_W "base_model.model.head.weight"
#define NAME_A "base_model.model.head.lora_A.weight"
#define NAME_B "base_model.model.head.lora_B.weight"

/* ---- digits: 1797 rows of 64 pixels (0..16) and a label ---- */

#define DIGITS  1797
#define PIXELS  64
#define TRAIN_N 1400
#define TEST_N  (DIGITS - TRAIN_N)

static float pixels[DIGITS][PIXELS];
static sovmesh_sample digits[DIGITS];

static void load_digits(void)
{
	const char *dir = getenv("SOVMESH_TEST_DATA_DIR");
	assert_non_null(dir);
	char path[4096];
	snprintf(path, sizeof(path), "%s/digits.csv.gz", dir);
	gzFile f = gzopen(path, "rb");
	if (!f)
		fail_msg("cannot open %s", path);
	char line[1024];
	size_t n = 0;
	while (gzgets(f, line, sizeof(line))) {
		assert_true(n < DIGITS);
		char *p = line;
		for (int j = 0; j <= PIXELS; j++) {
			char *end;
			long v = strtol(p, &end, 10);
			assert_true(end != p);
			assert_true(*end == (j < PIXELS ? ',' : '\n'));
			p = end + 1;
			if (j < PIXELS) {
				assert_true(v >= 0 && v <= 16);
				pixels[n][j] = (float)v / 16.0f;
			} else {
				assert_true(v >= 0 && v <= 9);
				digits[n] = (sovmesh_sample){
				    .size = sizeof(sovmesh_sample),
				    .features = pixels[n],
				    .n_features = PIXELS,
				    .label = (int32_t)v,
				};
			}
		}
		n++;
	}
	gzclose(f);
	assert_int_equal(n, DIGITS);
}

static int group_setup(void **state)
{
	(void)state;
	load_digits();
	return 0;
}

/* ---- helpers ---- */

static mini_host *open_trainer(const mini_setting *settings)
{
	mini_host *mh = NULL;
	sovmesh_error err = {0};
	if (mini_host_open("trainer-reference", settings, &mh, &err) < 0)
		fail_msg("cannot load trainer-reference: %s", err.message);
	return mh;
}

static const sovmesh_trainer_ops *ops_of(mini_host *mh)
{
	return mh->desc->ops;
}

static int train(mini_host *mh, const sovmesh_sample *s, size_t n,
                 const sovmesh_tensor_set *current, uint64_t seed, uint32_t timeout_ms,
                 sovmesh_tensor_set **out, sovmesh_train_report *rep, sovmesh_error *err)
{
	sovmesh_train_input in = {
	    .size = sizeof(in),
	    .samples = s,
	    .n_samples = n,
	    .current = current,
	    .timeout_ms = timeout_ms,
	    .seed = seed,
	};
	*rep = (sovmesh_train_report){.size = sizeof(*rep)};
	memset(err, 0, sizeof(*err));
	*out = NULL;
	return ops_of(mh)->train(mh->instance, &in, out, rep, err);
}

/* Train and expect success. */
static sovmesh_tensor_set *train_ok(mini_host *mh, const sovmesh_sample *s, size_t n,
                                    const sovmesh_tensor_set *current, uint64_t seed,
                                    sovmesh_train_report *rep)
{
	sovmesh_tensor_set *out;
	sovmesh_error err;
	int rc = train(mh, s, n, current, seed, 0, &out, rep, &err);
	if (rc != 0)
		fail_msg("train: %d %s", rc, err.message);
	assert_non_null(out);
	return out;
}

static void evaluate_ok(mini_host *mh, const sovmesh_tensor_set *adapter, const sovmesh_sample *s,
                        size_t n, double *loss, double *acc)
{
	sovmesh_error err = {0};
	int rc = ops_of(mh)->evaluate(mh->instance, adapter, s, n, loss, acc, &err);
	if (rc != 0)
		fail_msg("evaluate: %d %s", rc, err.message);
}

static void free_set(mini_host *mh, sovmesh_tensor_set *s)
{
	mh->api.tensor_set_free(mh->host, s);
}

static int sets_equal(const sovmesh_tensor_set *a, const sovmesh_tensor_set *b)
{
	if (!sovmesh_tensor_set_same_layout(a, b, NULL))
		return 0;
	for (size_t k = 0; k < a->count; k++)
		if (a->tensors[k].nbytes != b->tensors[k].nbytes ||
		    memcmp(a->tensors[k].data, b->tensors[k].data, a->tensors[k].nbytes) != 0)
			return 0;
	return 1;
}

static void expect_shape(const sovmesh_tensor *t, const char *name, uint64_t rows, uint64_t cols)
{
	assert_string_equal(t->name, name);
	assert_int_equal(t->dtype, SOVMESH_DTYPE_F32);
	assert_int_equal(t->ndim, 2);
	assert_int_equal(t->shape[0], rows);
	assert_int_equal(t->shape[1], cols);
	assert_int_equal(t->nbytes, rows * cols * 4);
}

static void expect_msg(const sovmesh_error *err, const char *part)
{
	if (!strstr(err->message, part))
		fail_msg("error message '%s' lacks '%s'", err->message, part);
}

static double sum_sq(const sovmesh_tensor *t)
{
	double s = 0;
	for (uint64_t j = 0; j < sovmesh_tensor_numel(t); j++) {
		double v = sovmesh_tensor_get(t, j);
		s += v * v;
	}
	return s;
}

/* ---- toy feedback: good answers explain in steps, bad ones give up ---- */

typedef struct toy {
	const char *prompt, *answer;
	int rating;
} toy;

static const toy toy_train[] = {
    {"how do I boil an egg", "first bring water to a boil, then add the egg and wait nine minutes",
     1},
    {"how do I boil an egg", "sorry, I do not know, maybe ask someone else", -1},
    {"what is the capital of France", "the capital is Paris, for example the Louvre is there", 1},
    {"what is the capital of France", "no idea, sorry, I cannot help with that", -1},
    {"how do I reverse a list in python", "first call reversed on the list, then wrap it in list",
     1},
    {"how do I reverse a list in python", "I do not know python, sorry", -1},
    {"why is the sky blue", "because air scatters blue light more, for example at noon", 1},
    {"why is the sky blue", "maybe it just is, no idea", -1},
    {"how do I set an alarm", "first open the clock app, then tap the plus and pick a time", 1},
    {"how do I set an alarm", "sorry, I cannot help with alarms", -1},
    {"how far is the moon", "about 384000 km, because its orbit is an ellipse it varies", 1},
    {"how far is the moon", "I do not know, ask someone else", -1},
    {"how do I bake bread", "first mix flour water yeast and salt, then knead and bake", 1},
    {"how do I bake bread", "no idea, maybe buy some", -1},
    {"what is a prime number", "a number with exactly two divisors, for example 7", 1},
    {"what is a prime number", "sorry, I cannot help with maths", -1},
};
#define TOY_TRAIN (sizeof(toy_train) / sizeof(toy_train[0]))

static const toy toy_test[] = {
    {"how do I tie a tie", "first cross the wide end over, then loop it through the knot", 1},
    {"how do I tie a tie", "sorry, no idea, ask someone else", -1},
    {"why do cats purr", "because it calms them, for example when they are stroked", 1},
    {"why do cats purr", "I do not know, maybe they just do", -1},
    {"how do I plant tomatoes", "first dig a deep hole, then water the plant well", 1},
    {"how do I plant tomatoes", "sorry, I cannot help with gardens", -1},
    {"what is a noun", "a word naming a thing, for example table", 1},
    {"what is a noun", "no idea, sorry", -1},
    {"how do I clean a pan", "first soak it in hot water, then scrub it", 1},
    {"how do I clean a pan", "I do not know, ask someone else", -1},
};
#define TOY_TEST (sizeof(toy_test) / sizeof(toy_test[0]))

static void toy_samples(const toy *t, size_t n, sovmesh_sample *out)
{
	for (size_t i = 0; i < n; i++)
		out[i] = (sovmesh_sample){
		    .size = sizeof(sovmesh_sample),
		    .prompt = t[i].prompt,
		    .response = t[i].answer,
		    .rating = t[i].rating,
		    .label = -1,
		};
}

/* ---- tests ---- */

static void test_descriptor(void **state)
{
	(void)state;
	mini_host *mh = open_trainer(NULL);
	assert_string_equal(mh->desc->name, "reference");
	assert_int_equal(mh->desc->kind, SOVMESH_KIND_TRAINER);
	const sovmesh_trainer_ops *ops = ops_of(mh);
	assert_true(ops->size >= sizeof(sovmesh_trainer_ops));
	assert_non_null(ops->train);
	assert_non_null(ops->evaluate);
	static const char *const want[][2] = {
	    {"rank", "4"},
	    {"classes", "2"},
	    {"text_features", "256"},
	    {"learning_rate", "0.5"},
	    {"epochs", "30"},
	    {"batch_size", "32"},
	    {"init_seed", "1"},
	    {"l2", "0"},
	};
	size_t n = 0;
	for (const sovmesh_setting_def *d = mh->desc->settings; d->name; d++, n++) {
		assert_true(n < sizeof(want) / sizeof(want[0]));
		assert_string_equal(d->name, want[n][0]);
		assert_string_equal(d->default_value, want[n][1]);
		assert_non_null(d->help);
	}
	assert_int_equal(n, sizeof(want) / sizeof(want[0]));
	mini_host_close(mh);

	/* Bounds are declared: the host refuses values outside them. */
	static const mini_setting bad[][2] = {
	    {{"rank", "65"}, {NULL, NULL}},         {{"classes", "1"}, {NULL, NULL}},
	    {{"text_features", "4"}, {NULL, NULL}}, {{"epochs", "0"}, {NULL, NULL}},
	    {{"batch_size", "0"}, {NULL, NULL}},    {{"learning_rate", "101"}, {NULL, NULL}},
	    {{"l2", "-1"}, {NULL, NULL}},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		sovmesh_error err = {0};
		assert_int_equal(mini_host_open("trainer-reference", bad[i], &mh, &err), -EINVAL);
	}
	/* (0, 100] is open at 0, which a declaration cannot say: create() refuses. */
	static const mini_setting zero_lr[] = {{"learning_rate", "0"}, {NULL, NULL}};
	sovmesh_error err = {0};
	assert_int_equal(mini_host_open("trainer-reference", zero_lr, &mh, &err), -EINVAL);
	expect_msg(&err, "learning_rate");
}

/* Rank 0 (plain softmax regression, what the simulator runs) learns the
 * digits: measured 0.914 on the held-out 397 with these settings. */
static void test_digits_full_rank(void **state)
{
	(void)state;
	static const mini_setting set[] = {
	    {"rank", "0"}, {"classes", "10"}, {"epochs", "30"}, {NULL, NULL}};
	mini_host *mh = open_trainer(set);

	/* The untrained head predicts every class with p = 1/10. */
	double loss, acc;
	evaluate_ok(mh, NULL, digits + TRAIN_N, TEST_N, &loss, &acc);
	assert_true(fabs(loss - log(10.0)) < 1e-12);

	sovmesh_train_report rep;
	sovmesh_tensor_set *out = train_ok(mh, digits, TRAIN_N, NULL, 1, &rep);
	assert_int_equal(out->count, 1);
	expect_shape(&out->tensors[0], NAME_W, 10, PIXELS + 1);
	assert_int_equal(rep.samples_used, TRAIN_N);
	assert_true(fabs(rep.loss_before - log(10.0)) < 1e-12);
	assert_true(rep.loss_after < 0.2);

	/* evaluate() on the training set reproduces loss_after exactly. */
	double train_loss, train_acc;
	evaluate_ok(mh, out, digits, TRAIN_N, &train_loss, &train_acc);
	assert_true(train_loss == rep.loss_after);
	assert_true(train_acc > 0.95);

	evaluate_ok(mh, out, digits + TRAIN_N, TEST_N, &loss, &acc);
	print_message("rank 0: loss %.4f -> %.4f, train accuracy %.4f, test loss %.4f "
	              "accuracy %.4f\n",
	              rep.loss_before, rep.loss_after, train_acc, loss, acc);
	assert_true(acc >= 0.90);
	assert_true(loss < 0.5);

	/* Continuing from `current`: the next run starts where this one ended. */
	sovmesh_train_report rep2;
	sovmesh_tensor_set *more = train_ok(mh, digits, TRAIN_N, out, 2, &rep2);
	assert_true(rep2.loss_before == rep.loss_after);
	assert_true(rep2.loss_after < rep2.loss_before);
	free_set(mh, more);
	free_set(mh, out);
	mini_host_close(mh);
}

/* LoRA rank 8: measured 0.894 (10 epochs); chance is 0.1. */
static void test_digits_lora(void **state)
{
	(void)state;
	static const mini_setting set[] = {
	    {"rank", "8"}, {"classes", "10"}, {"epochs", "10"}, {NULL, NULL}};
	mini_host *mh = open_trainer(set);
	sovmesh_train_report rep;
	sovmesh_tensor_set *out = train_ok(mh, digits, TRAIN_N, NULL, 1, &rep);
	assert_int_equal(out->count, 2);
	expect_shape(&out->tensors[0], NAME_A, 8, PIXELS + 1);
	expect_shape(&out->tensors[1], NAME_B, 10, 8);
	assert_true(fabs(rep.loss_before - log(10.0)) < 1e-12);
	assert_true(rep.loss_after < rep.loss_before / 4);
	double loss, acc;
	evaluate_ok(mh, out, digits + TRAIN_N, TEST_N, &loss, &acc);
	print_message("rank 8: loss %.4f -> %.4f, test loss %.4f accuracy %.4f\n", rep.loss_before,
	              rep.loss_after, loss, acc);
	assert_true(acc >= 0.80);
	free_set(mh, out);
	mini_host_close(mh);
}

static void test_deterministic(void **state)
{
	(void)state;
	static const mini_setting set[] = {{"rank", "4"}, {"classes", "10"}, {NULL, NULL}};
	mini_host *mh = open_trainer(set);
	mini_host *other = open_trainer(set);
	sovmesh_train_report r1, r2, r3;
	sovmesh_tensor_set *a = train_ok(mh, digits, 300, NULL, 42, &r1);
	sovmesh_tensor_set *b = train_ok(other, digits, 300, NULL, 42, &r2);
	sovmesh_tensor_set *c = train_ok(mh, digits, 300, NULL, 43, &r3);
	assert_true(sets_equal(a, b));
	assert_true(r1.loss_after == r2.loss_after);
	assert_true(sovmesh_tensor_set_same_layout(a, c, NULL));
	assert_false(sets_equal(a, c));
	free_set(mh, a);
	free_set(other, b);
	free_set(mh, c);
	mini_host_close(other);
	mini_host_close(mh);
}

/* The initial adapter depends on the settings only: equal across
 * instances and `seed`s, different for another init_seed; B = 0. */
static void test_initial_adapter(void **state)
{
	(void)state;
	static const mini_setting set[] = {{"rank", "8"}, {NULL, NULL}};
	static const mini_setting other_seed[] = {{"rank", "8"}, {"init_seed", "2"}, {NULL, NULL}};
	mini_host *m1 = open_trainer(set);
	mini_host *m2 = open_trainer(set);
	mini_host *m3 = open_trainer(other_seed);
	sovmesh_train_report rep;
	sovmesh_tensor_set *a = train_ok(m1, NULL, 0, NULL, 1, &rep);
	assert_int_equal(rep.samples_used, 0);
	assert_true(isnan(rep.loss_before) && isnan(rep.loss_after));
	sovmesh_tensor_set *b = train_ok(m2, NULL, 0, NULL, 999, &rep);
	sovmesh_tensor_set *c = train_ok(m3, NULL, 0, NULL, 1, &rep);
	/* Without samples d is text_features. */
	assert_int_equal(a->count, 2);
	expect_shape(&a->tensors[0], NAME_A, 8, 257);
	expect_shape(&a->tensors[1], NAME_B, 2, 8);
	assert_true(sets_equal(a, b));
	assert_false(sets_equal(a, c));
	assert_true(sum_sq(&a->tensors[1]) == 0);
	/* A ~ U(-sqrt(3/(d+1)), sqrt(3/(d+1))): variance 1/(d+1). */
	const sovmesh_tensor *A = &a->tensors[0];
	double var = sum_sq(A) / (double)sovmesh_tensor_numel(A), lim = sqrt(3.0 / 257);
	assert_true(fabs(var - 1.0 / 257) < 0.1 / 257);
	for (uint64_t j = 0; j < sovmesh_tensor_numel(A); j++)
		assert_true(fabs(sovmesh_tensor_get(A, j)) <= lim);

	/* evaluate(NULL) scores that same initial adapter. */
	sovmesh_sample s[TOY_TEST];
	toy_samples(toy_test, TOY_TEST, s);
	double l1, a1, l2, a2;
	evaluate_ok(m1, NULL, s, TOY_TEST, &l1, &a1);
	evaluate_ok(m1, a, s, TOY_TEST, &l2, &a2);
	assert_true(l1 == l2 && a1 == a2);
	assert_true(fabs(l1 - log(2.0)) < 1e-12); /* B = 0 */

	/* The initial adapter is where a first training run starts. */
	sovmesh_tensor_set *t1 = train_ok(m1, s, TOY_TEST, NULL, 5, &rep);
	sovmesh_tensor_set *t2 = train_ok(m1, s, TOY_TEST, a, 5, &rep);
	assert_true(sets_equal(t1, t2));

	free_set(m1, t1);
	free_set(m1, t2);
	free_set(m1, a);
	free_set(m2, b);
	free_set(m3, c);
	mini_host_close(m1);
	mini_host_close(m2);
	mini_host_close(m3);
}

/* Rank 0's initial adapter is W = 0. */
static void test_initial_full_rank(void **state)
{
	(void)state;
	static const mini_setting set[] = {
	    {"rank", "0"}, {"classes", "10"}, {"text_features", "64"}, {NULL, NULL}};
	mini_host *mh = open_trainer(set);
	sovmesh_train_report rep;
	sovmesh_tensor_set *a = train_ok(mh, NULL, 0, NULL, 1, &rep);
	assert_int_equal(a->count, 1);
	expect_shape(&a->tensors[0], NAME_W, 10, 65);
	assert_true(sum_sq(&a->tensors[0]) == 0);
	/* ... and with text_features = 64 it fits the digits. */
	sovmesh_tensor_set *b = train_ok(mh, digits, 100, a, 1, &rep);
	assert_int_equal(rep.samples_used, 100);
	free_set(mh, b);
	free_set(mh, a);
	mini_host_close(mh);
}

/* n_samples == 0 with a current adapter: a copy of it, d taken from it. */
static void test_no_samples_copies_current(void **state)
{
	(void)state;
	static const mini_setting set[] = {{"rank", "2"}, {"classes", "10"}, {NULL, NULL}};
	mini_host *mh = open_trainer(set);
	sovmesh_train_report rep;
	sovmesh_tensor_set *cur = train_ok(mh, digits, 200, NULL, 1, &rep);
	sovmesh_tensor_set *copy = train_ok(mh, NULL, 0, cur, 1, &rep);
	assert_true(copy != cur);
	assert_true(sets_equal(cur, copy));
	assert_int_equal(rep.samples_used, 0);
	free_set(mh, copy);
	free_set(mh, cur);
	mini_host_close(mh);
}

/* Train on the toy feedback, score the held-out toy samples. */
static void toy_run(const mini_setting *set, const char *what, double min_acc)
{
	mini_host *mh = open_trainer(set);
	sovmesh_sample tr[TOY_TRAIN], te[TOY_TEST];
	toy_samples(toy_train, TOY_TRAIN, tr);
	toy_samples(toy_test, TOY_TEST, te);
	double loss0, acc0;
	evaluate_ok(mh, NULL, te, TOY_TEST, &loss0, &acc0);
	assert_true(fabs(loss0 - log(2.0)) < 1e-12);

	sovmesh_train_report rep;
	sovmesh_tensor_set *out = train_ok(mh, tr, TOY_TRAIN, NULL, 1, &rep);
	assert_int_equal(rep.samples_used, TOY_TRAIN);
	assert_true(rep.loss_after < rep.loss_before);
	double loss, acc;
	evaluate_ok(mh, out, te, TOY_TEST, &loss, &acc);
	print_message("text, %s: train loss %.4f -> %.4f, held-out loss %.4f -> %.4f, "
	              "accuracy %.2f\n",
	              what, rep.loss_before, rep.loss_after, loss0, loss, acc);
	assert_true(loss < loss0);
	assert_true(acc >= min_acc);
	free_set(mh, out);
	mini_host_close(mh);
}

/* Measured: rank 0 with 5 epochs 1.00 held-out accuracy; LoRA rank 4
 * 0.70 after 5 epochs (its loss barely moves in 5 SGD steps from B = 0)
 * and 0.90 after 30, the default. */
static void test_text_feedback(void **state)
{
	(void)state;
	static const mini_setting full[] = {{"rank", "0"}, {"epochs", "5"}, {NULL, NULL}};
	static const mini_setting five[] = {{"epochs", "5"}, {NULL, NULL}};
	toy_run(full, "rank 0, 5 epochs", 0.8);
	toy_run(NULL, "defaults (rank 4, 30 epochs)", 0.8);
	toy_run(five, "rank 4, 5 epochs", 0.5);
}

/* A correction gives (prompt, correction) = good and, with a response,
 * (prompt, response) = bad; the rating is then ignored. */
static void test_text_expansion(void **state)
{
	(void)state;
	static const mini_setting set[] = {{"rank", "0"}, {NULL, NULL}};
	mini_host *mh = open_trainer(set);
	sovmesh_sample s[] = {
	    {.size = sizeof(sovmesh_sample),
	     .prompt = "q",
	     .response = "bad",
	     .correction = "good",
	     .rating = SOVMESH_RATING_DOWN,
	     .label = -1},
	    {.size = sizeof(sovmesh_sample), .prompt = "q", .correction = "good", .label = -1},
	    {.size = sizeof(sovmesh_sample),
	     .prompt = "q",
	     .response = "fine",
	     .rating = SOVMESH_RATING_UP,
	     .label = -1},
	};
	sovmesh_train_report rep;
	sovmesh_tensor_set *out = train_ok(mh, s, 3, NULL, 1, &rep);
	assert_int_equal(rep.samples_used, 4);
	expect_shape(&out->tensors[0], NAME_W, 2, 257);

	/* The same four examples spelled as ratings train identically. */
	sovmesh_sample same[] = {
	    {.size = sizeof(sovmesh_sample),
	     .prompt = "q",
	     .response = "good",
	     .rating = SOVMESH_RATING_UP,
	     .label = -1},
	    {.size = sizeof(sovmesh_sample),
	     .prompt = "q",
	     .response = "bad",
	     .rating = SOVMESH_RATING_DOWN,
	     .label = -1},
	    {.size = sizeof(sovmesh_sample),
	     .prompt = "q",
	     .response = "good",
	     .rating = SOVMESH_RATING_UP,
	     .label = -1},
	    {.size = sizeof(sovmesh_sample),
	     .prompt = "q",
	     .response = "fine",
	     .rating = SOVMESH_RATING_UP,
	     .label = -1},
	};
	sovmesh_train_report rep2;
	sovmesh_tensor_set *out2 = train_ok(mh, same, 4, NULL, 1, &rep2);
	assert_int_equal(rep2.samples_used, 4);
	assert_true(sets_equal(out, out2));
	free_set(mh, out2);
	free_set(mh, out);
	mini_host_close(mh);
}

static void expect_train_einval(mini_host *mh, const sovmesh_sample *s, size_t n,
                                const sovmesh_tensor_set *current, const char *part)
{
	sovmesh_tensor_set *out = (sovmesh_tensor_set *)&out;
	sovmesh_train_report rep;
	sovmesh_error err;
	assert_int_equal(train(mh, s, n, current, 1, 0, &out, &rep, &err), -EINVAL);
	assert_null(out);
	assert_int_equal(err.code, -EINVAL);
	expect_msg(&err, part);
	double loss, acc;
	memset(&err, 0, sizeof(err));
	if (n > 0) {
		assert_int_equal(
		    ops_of(mh)->evaluate(mh->instance, current, s, n, &loss, &acc, &err), -EINVAL);
		expect_msg(&err, part);
	}
}

static void test_bad_inputs(void **state)
{
	(void)state;
	static const mini_setting set[] = {{"rank", "4"}, {"classes", "10"}, {NULL, NULL}};
	mini_host *mh = open_trainer(set);
	sovmesh_sample s[4];
	memcpy(s, digits, sizeof(s));

	s[2].label = 10;
	expect_train_einval(mh, s, 4, NULL, "sample 2: label 10 is outside 0..9");
	s[2].label = -1;
	expect_train_einval(mh, s, 4, NULL, "sample 2: label -1");
	s[2] = digits[2];

	float nan_px[PIXELS];
	memcpy(nan_px, pixels[3], sizeof(nan_px));
	nan_px[17] = NAN;
	s[3].features = nan_px;
	expect_train_einval(mh, s, 4, NULL, "sample 3: feature 17 is NaN");
	nan_px[17] = INFINITY;
	expect_train_einval(mh, s, 4, NULL, "sample 3: feature 17 is infinite");
	s[3] = digits[3];

	s[1].n_features = 63;
	expect_train_einval(mh, s, 4, NULL, "sample 1 has 63 features, sample 0 has 64");
	s[1] = digits[1];

	s[1].features = NULL;
	s[1].prompt = "q";
	expect_train_einval(mh, s, 4, NULL, "sample 1 has no features but sample 0 has 64");
	s[1] = digits[1];

	s[0].size = 8;
	expect_train_einval(mh, s, 4, NULL, "sample 0: size 8");
	s[0] = digits[0];

	/* A current adapter of another layout: another rank, another d. */
	static const mini_setting r2[] = {{"rank", "2"}, {"classes", "10"}, {NULL, NULL}};
	mini_host *other = open_trainer(r2);
	sovmesh_train_report rep;
	sovmesh_tensor_set *cur2 = train_ok(other, s, 4, NULL, 1, &rep);
	expect_train_einval(mh, s, 4, cur2,
	                    "tensor '" NAME_A "' has shape [2,65], expected [4,65]");
	sovmesh_tensor_set *cur4 = train_ok(mh, s, 4, NULL, 1, &rep);
	float small[4][32] = {{0}};
	sovmesh_sample narrow[4];
	for (int i = 0; i < 4; i++)
		narrow[i] = (sovmesh_sample){.size = sizeof(sovmesh_sample),
		                             .features = small[i],
		                             .n_features = 32,
		                             .label = i};
	expect_train_einval(mh, narrow, 4, cur4, "has shape [4,65], expected [4,33]");
	/* Wrong tensor count (rank 0's single weight where rank 4 wants two). */
	static const mini_setting r0[] = {{"rank", "0"}, {"classes", "10"}, {NULL, NULL}};
	mini_host *full = open_trainer(r0);
	sovmesh_tensor_set *cur0 = train_ok(full, s, 4, NULL, 1, &rep);
	expect_train_einval(mh, s, 4, cur0, "adapter has 1 tensors");
	/* Wrong name, wrong dtype, non-finite value. */
	sovmesh_tensor_set *bad = mh->api.tensor_set_new(mh->host, cur4, 0);
	assert_non_null(bad);
	free((char *)bad->tensors[1].name);
	bad->tensors[1].name = strdup("base_model.model.head.lora_C.weight");
	expect_train_einval(mh, s, 4, bad, "tensor 1 is 'base_model.model.head.lora_C.weight'");
	free_set(mh, bad);
	bad = mh->api.tensor_set_new(mh->host, cur4, 0);
	((float *)bad->tensors[1].data)[3] = NAN;
	expect_train_einval(mh, s, 4, bad, "tensor '" NAME_B "' element 3 is NaN");
	bad->tensors[1].dtype = SOVMESH_DTYPE_F16;
	expect_train_einval(mh, s, 4, bad, "has dtype F16, expected F32");
	free_set(mh, bad);

	/* Text samples need 2 classes. */
	sovmesh_sample t = {.size = sizeof(sovmesh_sample),
	                    .prompt = "q",
	                    .response = "a",
	                    .rating = SOVMESH_RATING_UP};
	expect_train_einval(mh, &t, 1, NULL, "sample 0 is feedback text");

	free_set(other, cur2);
	free_set(mh, cur4);
	free_set(full, cur0);
	mini_host_close(other);
	mini_host_close(full);
	mini_host_close(mh);
}

static void test_bad_text(void **state)
{
	(void)state;
	mini_host *mh = open_trainer(NULL);
	sovmesh_sample s[3];
	toy_samples(toy_train, 3, s);

	s[1].prompt = NULL;
	expect_train_einval(mh, s, 3, NULL, "sample 1 has no prompt");
	s[1].prompt = "q";
	s[2].rating = SOVMESH_RATING_NONE;
	expect_train_einval(mh, s, 3, NULL, "sample 2 has neither a rating nor a correction");
	s[2].rating = 7;
	expect_train_einval(mh, s, 3, NULL, "sample 2: rating 7");
	s[2].rating = SOVMESH_RATING_UP;
	s[2].response = NULL;
	expect_train_einval(mh, s, 3, NULL, "sample 2 is rated but has no response");
	s[2].response = "a";
	s[0].features = pixels[0];
	s[0].n_features = PIXELS;
	s[0].label = 0;
	expect_train_einval(mh, s, 3, NULL, "sample 1 has no features but sample 0 has 64");

	/* evaluate() needs samples; NULL outputs are refused. */
	double loss, acc;
	sovmesh_error err = {0};
	assert_int_equal(ops_of(mh)->evaluate(mh->instance, NULL, s, 0, &loss, &acc, &err),
	                 -EINVAL);
	expect_msg(&err, "no samples");
	mini_host_close(mh);
}

static void test_timeout(void **state)
{
	(void)state;
	static const mini_setting set[] = {
	    {"rank", "8"}, {"classes", "10"}, {"epochs", "1000"}, {NULL, NULL}};
	mini_host *mh = open_trainer(set);
	sovmesh_tensor_set *out = (sovmesh_tensor_set *)&out;
	sovmesh_train_report rep;
	sovmesh_error err;
	assert_int_equal(train(mh, digits, TRAIN_N, NULL, 1, 1, &out, &rep, &err), -ETIMEDOUT);
	assert_null(out);
	expect_msg(&err, "timed out after 1 ms");
	mini_host_close(mh);
}

static void test_diverges(void **state)
{
	(void)state;
	static const mini_setting set[] = {
	    {"rank", "8"}, {"classes", "10"}, {"learning_rate", "100"}, {NULL, NULL}};
	mini_host *mh = open_trainer(set);
	sovmesh_tensor_set *out = (sovmesh_tensor_set *)&out;
	sovmesh_train_report rep;
	sovmesh_error err;
	assert_int_equal(train(mh, digits, TRAIN_N, NULL, 1, 0, &out, &rep, &err), -ERANGE);
	assert_null(out);
	expect_msg(&err, "diverged");
	mini_host_close(mh);
}

/* A step too large that stays finite: the result is returned, and a
 * warning logged (measured 0.693 -> 1.88 on the toy feedback). */
static void test_loss_rose_warns(void **state)
{
	(void)state;
	static const mini_setting set[] = {
	    {"rank", "0"}, {"learning_rate", "10"}, {"epochs", "5"}, {NULL, NULL}};
	mini_host *mh = open_trainer(set);
	sovmesh_sample tr[TOY_TRAIN];
	toy_samples(toy_train, TOY_TRAIN, tr);
	sovmesh_train_report rep;
	sovmesh_tensor_set *out = train_ok(mh, tr, TOY_TRAIN, NULL, 1, &rep);
	assert_true(rep.loss_after > rep.loss_before);
	assert_int_equal(mh->last_log_level, SOVMESH_LOG_WARNING);
	assert_non_null(strstr(mh->last_log, "training raised the loss"));
	free_set(mh, out);
	mini_host_close(mh);
}

/* l2 shrinks the adapter; batch_size changes the trajectory. */
static void test_l2_and_batch(void **state)
{
	(void)state;
	static const mini_setting plain[] = {{"rank", "0"}, {"classes", "10"}, {NULL, NULL}};
	static const mini_setting decay[] = {
	    {"rank", "0"}, {"classes", "10"}, {"l2", "0.05"}, {NULL, NULL}};
	static const mini_setting big[] = {
	    {"rank", "0"}, {"classes", "10"}, {"batch_size", "100"}, {NULL, NULL}};
	mini_host *m1 = open_trainer(plain), *m2 = open_trainer(decay), *m3 = open_trainer(big);
	sovmesh_train_report r1, r2, r3;
	sovmesh_tensor_set *a = train_ok(m1, digits, 500, NULL, 1, &r1);
	sovmesh_tensor_set *b = train_ok(m2, digits, 500, NULL, 1, &r2);
	sovmesh_tensor_set *c = train_ok(m3, digits, 500, NULL, 1, &r3);
	assert_true(sum_sq(&b->tensors[0]) < 0.5 * sum_sq(&a->tensors[0]));
	assert_true(r2.loss_after > r1.loss_after);
	assert_false(sets_equal(a, c));
	assert_true(r3.loss_after > r1.loss_after); /* fewer, larger steps */
	free_set(m1, a);
	free_set(m2, b);
	free_set(m3, c);
	mini_host_close(m1);
	mini_host_close(m2);
	mini_host_close(m3);
}

/* The report is an out-struct: only members its size covers are written.
 * And malformed calls are refused. */
static void test_report_size(void **state)
{
	(void)state;
	mini_host *mh = open_trainer(NULL);
	sovmesh_sample s[4];
	toy_samples(toy_train, 4, s);
	sovmesh_train_input in = {.size = sizeof(in), .samples = s, .n_samples = 4};
	sovmesh_train_report rep = {
	    .size = offsetof(sovmesh_train_report, loss_before), .loss_before = 7, .loss_after = 7};
	sovmesh_tensor_set *out = NULL;
	sovmesh_error err = {0};
	assert_int_equal(ops_of(mh)->train(mh->instance, &in, &out, &rep, &err), 0);
	assert_int_equal(rep.size, offsetof(sovmesh_train_report, loss_before));
	assert_int_equal(rep.samples_used, 4);
	assert_true(rep.loss_before == 7 && rep.loss_after == 7);
	free_set(mh, out);

	/* The input's size must cover the 1.0 members; samples must be given. */
	in.size = 8;
	out = NULL;
	assert_int_equal(ops_of(mh)->train(mh->instance, &in, &out, &rep, &err), -EINVAL);
	expect_msg(&err, "train input size 8");
	assert_null(out);
	in.size = sizeof(in);
	in.samples = NULL;
	assert_int_equal(ops_of(mh)->train(mh->instance, &in, &out, &rep, &err), -EINVAL);
	expect_msg(&err, "4 samples but no sample array");
	assert_int_equal(ops_of(mh)->train(mh->instance, &in, NULL, &rep, &err), -EINVAL);
	mini_host_close(mh);
}

/* ---- the featurizer itself ---- */

static size_t feat(const char *p, const char *a, uint32_t dim, uint32_t *idx, float *val)
{
	assert_true(featurize_max_terms(p, a) <= 64);
	return featurize(p, a, dim, idx, val);
}

static void test_featurize(void **state)
{
	(void)state;
	uint32_t i1[64], i2[64];
	float v1[64], v2[64];

	/* Case folded, punctuation separates; ascending unique indices, unit norm. */
	size_t n1 = feat("How do I Boil an EGG?", "First, boil water.", 256, i1, v1);
	size_t n2 = feat("how do i boil an egg", "first boil water", 256, i2, v2);
	assert_int_equal(n1, n2);
	assert_memory_equal(i1, i2, n1 * sizeof(*i1));
	assert_memory_equal(v1, v2, n1 * sizeof(*v1));
	double sq = 0;
	for (size_t k = 0; k < n1; k++) {
		assert_true(i1[k] < 256);
		if (k)
			assert_true(i1[k] > i1[k - 1]);
		sq += (double)v1[k] * v1[k];
	}
	assert_true(fabs(sq - 1) < 1e-6);
	/* 9 words: 9 unigrams + 8 bigrams, "boil" twice. */
	assert_int_equal(featurize_max_terms("how do i boil an egg", "first boil water"), 17);

	/* Bigrams: the same words in another order differ. */
	n1 = feat("good dog", NULL, 65536, i1, v1);
	n2 = feat("dog good", NULL, 65536, i2, v2);
	assert_int_equal(n1, 3);
	assert_int_equal(n2, 3);
	assert_true(memcmp(i1, i2, 3 * sizeof(*i1)) != 0);
	/* The pair is prompt + "\n" + answer: a bigram spans the two. */
	n2 = feat("good", "dog", 65536, i2, v2);
	assert_int_equal(n2, 3);
	assert_memory_equal(i1, i2, 3 * sizeof(*i1));

	/* Repeats count: one bucket of value 2/sqrt(5) next to 1/sqrt(5). */
	n1 = feat("spam spam", NULL, 65536, i1, v1);
	assert_int_equal(n1, 2);
	assert_true(fabs((v1[0] > v1[1] ? v1[0] : v1[1]) - 2 / sqrt(5.0)) < 1e-6);

	/* UTF-8 bytes are word bytes; no words at all: no features. */
	assert_int_equal(feat("caf\xc3\xa9", NULL, 256, i1, v1), 1);
	assert_int_equal(featurize_max_terms("?! ...", NULL), 0);
	assert_int_equal(feat("?! ...", "", 256, i1, v1), 0);
	assert_int_equal(feat(NULL, NULL, 256, i1, v1), 0);

	/* Fixed hash: this bucket never moves (the trained adapters depend on it). */
	n1 = feat("hello", NULL, 1u << 16, i1, v1);
	assert_int_equal(n1, 1);
	assert_int_equal(i1[0], 55887);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_descriptor),
	    cmocka_unit_test(test_digits_full_rank),
	    cmocka_unit_test(test_digits_lora),
	    cmocka_unit_test(test_deterministic),
	    cmocka_unit_test(test_initial_adapter),
	    cmocka_unit_test(test_initial_full_rank),
	    cmocka_unit_test(test_no_samples_copies_current),
	    cmocka_unit_test(test_text_feedback),
	    cmocka_unit_test(test_text_expansion),
	    cmocka_unit_test(test_bad_inputs),
	    cmocka_unit_test(test_bad_text),
	    cmocka_unit_test(test_timeout),
	    cmocka_unit_test(test_diverges),
	    cmocka_unit_test(test_loss_rose_warns),
	    cmocka_unit_test(test_l2_and_batch),
	    cmocka_unit_test(test_report_size),
	    cmocka_unit_test(test_featurize),
	};
	return cmocka_run_group_tests(tests, group_setup, NULL);
}

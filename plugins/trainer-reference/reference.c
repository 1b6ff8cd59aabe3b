/* SPDX-License-Identifier: MIT */
/*
 * trainer-reference: the built-in trainer.  A real, small model whose
 * learning is measurable, so federated learning (aggregation, noise,
 * privacy budget) can be tested and compared end to end without an LLM.
 *
 * The model.  A linear softmax classifier head over fixed input features
 * x in R^d, adapted with LoRA on a base weight W0 = 0:
 *
 *   x~ = [x, 1]                  (the constant 1 carries the bias)
 *   logits z = (B A) x~          A: [rank, d+1], B: [classes, rank]
 *   p = softmax(z),  loss = -log p_y   (cross-entropy of label y)
 *
 * rank 0 means a full-rank head: the adapter holds the whole weight
 * W [classes, d+1] and z = W x~ (plain softmax regression; the simulator
 * uses it).  Tensors (F32, row-major), named as PEFT names a LoRA adapter
 * of a module "head" (scaling 1, i.e. lora_alpha = rank):
 *
 *   rank 0:  base_model.model.head.weight          [classes, d+1]
 *   rank r:  base_model.model.head.lora_A.weight   [r, d+1]
 *            base_model.model.head.lora_B.weight   [classes, r]
 *
 * Gradients.  With G = p - onehot(y) (length classes) and h = A x~:
 *
 *   dL/dW = G x~^T                          (rank 0)
 *   dL/dB = G h^T = G (A x~)^T
 *   dL/dA = (B^T G) x~^T
 *
 * Training is mini-batch SGD on the mean cross-entropy plus (l2/2) times
 * the squared norm of the adapter's tensors (weight decay): per batch of
 * m examples, theta -= learning_rate * (sum of gradients / m + l2 theta),
 * with A and B both stepped from the gradients at the same point.  Each
 * epoch visits the examples in an order shuffled (Fisher-Yates) by a
 * splitmix64 stream seeded with the input's `seed`, continued across
 * epochs; all arithmetic is double in a fixed order on one thread, so a
 * given seed gives a bit-identical adapter.  The result is rounded to F32
 * before loss_after is measured, so evaluate() on it reproduces
 * loss_after exactly.  Reported losses are the mean cross-entropy over
 * the training examples, without the l2 term.  A weight or loss that
 * becomes non-finite (learning rate far too high) fails the run with
 * -ERANGE; a run that ends with a higher loss than it started with is
 * returned, with a warning in the log.
 *
 * The initial adapter (current == NULL) depends only on the settings
 * and d: W = 0 at rank 0; at rank r, B = 0 and A ~ U(-s, s) with
 * s = sqrt(3/(d+1)), i.e. variance 1/(d+1), a fan-in scaling like PEFT's
 * (whose Kaiming-uniform default has variance 1/(3(d+1))).  On the digits
 * and the toy feedback of the unit test it generalised better than
 * variance 1/r (a norm-preserving projection), which learns faster at
 * first.  A is drawn row-major from splitmix64(init_seed) with exact
 * integer-to-double steps and one correctly rounded sqrt, then rounded
 * to F32: the same on every node, never from random_bytes and never
 * from `seed`.  B = 0 makes the initial head output 0 (every class
 * 1/classes), as a LoRA adapter starts at its base model.
 *
 * Defaults.  learning_rate 0.5 is the largest round step that is stable
 * on the digits (features / 16, |x~|^2 ~ 14) at ranks 0..8 (rank 8
 * diverges within 10 epochs at 1.0); text features are unit vectors (|x~|^2 = 2), so text
 * is further from that edge.  Rank 0 learns the toy feedback within 5
 * epochs; a LoRA head (rank >= 1, starting at B = 0) needs a few dozen
 * SGD steps before its loss moves, hence the default 30 epochs: a
 * feedback round has only a handful of samples.
 *
 * Inputs.  Samples with `features` use them (same n_features = d for all
 * samples of a call, finite values, label in 0..classes-1).  Samples
 * without are feedback text (classes must be 2: 0 = bad answer, 1 =
 * good), featurized by featurize.h into d = text_features dimensions,
 * and expand to examples:
 *   correction given     -> (prompt, correction) 1, and (prompt,
 *                           response) 0 when response is non-NULL; the
 *                           rating is then ignored (a correction says the
 *                           response was not the answer wanted);
 *   rating UP / DOWN     -> (prompt, response) 1 / 0;
 *   neither              -> refused.
 * `label` of text samples is ignored.  With no samples d comes from
 * `current` when given, else it is text_features (so a caller with
 * numeric features of dimension d that wants the untrained adapter sets
 * text_features = d).  `base_model` and `current_dir` are not used.
 *
 * Settings (read once in create()): rank 4 (0..64), classes 2 (2..1000),
 * text_features 256 (8..65536), learning_rate 0.5 (0, 100], epochs 30
 * (1..1000), batch_size 32 (1..100000), init_seed 1, l2 0 [0, 100].
 *
 * Threads: train() and evaluate() use only the any-thread host slots
 * (memory, tensor sets) and the C library's monotonic clock, and never
 * write the instance, so calls may even overlap.
 */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <sovmesh/plugin.h>
#include <sovmesh/trainer.h>

#include "featurize.h"

#define NAME_W "base_model.model.head.weight"
#define NAME_A "base_model.model.head.lora_A.weight"
#define NAME_B "base_model.model.head.lora_B.weight"

/* Largest numeric input dimension: keeps every size product far from
 * overflow (classes * (d+1) < 2^31). */
#define MAX_FEATURES (1u << 20)

typedef struct reference {
	sovmesh_host *host;
	const sovmesh_host_api *api;
	uint32_t rank;
	uint32_t classes;
	uint32_t text_features;
	uint32_t epochs;
	uint32_t batch_size;
	double learning_rate;
	double l2;
	uint64_t init_seed;
} reference;

/* Training examples as sparse rows of x~ (the bias entry, index d, is
 * stored explicitly).  Row e is idx/val[off[e] .. off[e+1]). */
typedef struct dataset {
	size_t n;
	uint32_t cols; /* d + 1 */
	size_t *off;
	uint32_t *idx;
	float *val;
	int32_t *label;
} dataset;

/* The adapter in double.  rank 0: a = W [classes, cols], b = NULL;
 * else a = A [rank, cols], b = B [classes, rank]. */
typedef struct model {
	uint32_t rank, classes, cols;
	double *a, *b;
	size_t na, nb; /* element counts */
} model;

/* Per-call scratch: h [rank], z and g [classes], u [rank]. */
typedef struct scratch {
	double *h, *z, *g, *u;
} scratch;

static const sovmesh_setting_def reference_settings[] = {
    {
        .name = "rank",
        .type = SOVMESH_SETTING_INT,
        .default_value = "4",
        .min = 0,
        .max = 64,
        .help = "LoRA rank of the head; 0 = full-rank head (one weight tensor, plain "
                "softmax regression)",
    },
    {
        .name = "classes",
        .type = SOVMESH_SETTING_INT,
        .default_value = "2",
        .min = 2,
        .max = 1000,
        .help = "number of classes; feedback text needs 2 (0 = bad answer, 1 = good)",
    },
    {
        .name = "text_features",
        .type = SOVMESH_SETTING_INT,
        .default_value = "256",
        .min = 8,
        .max = 65536,
        .help = "dimension of the hashed bag-of-words text features (and of the "
                "untrained adapter when no sample says otherwise)",
    },
    {
        .name = "learning_rate",
        .type = SOVMESH_SETTING_DOUBLE,
        .default_value = "0.5",
        .min = 0,
        .max = 100,
        .help = "SGD step size, > 0",
    },
    {
        .name = "epochs",
        .type = SOVMESH_SETTING_INT,
        /* A feedback round has a handful of samples: 30 passes let the
         * LoRA factors (B starts at 0) move; the simulator sets 1. */
        .default_value = "30",
        .min = 1,
        .max = 1000,
        .help = "passes over the samples per training run",
    },
    {
        .name = "batch_size",
        .type = SOVMESH_SETTING_INT,
        .default_value = "32",
        .min = 1,
        .max = 100000,
        .help = "examples per SGD step (order shuffled with the run's seed)",
    },
    {
        .name = "init_seed",
        .type = SOVMESH_SETTING_INT,
        .default_value = "1",
        .min = 0,
        .max = 0,
        .help = "seed of the initial adapter; equal on every node so federated "
                "updates refer to the same starting point",
    },
    {
        .name = "l2",
        .type = SOVMESH_SETTING_DOUBLE,
        .default_value = "0",
        .min = 0,
        .max = 100,
        .help = "weight decay on the adapter's tensors",
    },
    {.name = NULL},
};

/* ---- small helpers ---- */

static uint64_t splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t mono_ms(void)
{
	/* host now_ms is a loop-thread slot; train() runs on a worker. */
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void *zalloc(const reference *r, size_t n, size_t size)
{
	if (n == 0)
		n = 1;
	if (n > SIZE_MAX / size)
		return NULL;
	return r->api->calloc(r->host, n, size);
}

static void release(const reference *r, void *p)
{
	if (p)
		r->api->free(r->host, p);
}

/* ---- create / destroy ---- */

static int reference_create(sovmesh_host *host, const sovmesh_host_api *api, void **instance,
                            sovmesh_error *err)
{
	if (!api->calloc || !api->free || !api->tensor_set_new || !api->tensor_init ||
	    !api->tensor_set_free)
		return sovmesh_fail(err, -EINVAL, "the host offers no memory or tensor-set slots");
	if (!api->setting_int || !api->setting_double)
		return sovmesh_fail(err, -EINVAL, "the host offers no setting slots");
	int64_t rank = api->setting_int(host, "rank");
	int64_t classes = api->setting_int(host, "classes");
	int64_t text_features = api->setting_int(host, "text_features");
	int64_t epochs = api->setting_int(host, "epochs");
	int64_t batch_size = api->setting_int(host, "batch_size");
	double lr = api->setting_double(host, "learning_rate");
	double l2 = api->setting_double(host, "l2");
	/* The host validated the declared bounds; these are the ones the
	 * declarations cannot say (open interval, int width). */
	if (rank < 0 || rank > 64)
		return sovmesh_fail(err, -EINVAL, "rank %lld is outside 0..64", (long long)rank);
	if (classes < 2 || classes > 1000)
		return sovmesh_fail(err, -EINVAL, "classes %lld is outside 2..1000",
		                    (long long)classes);
	if (text_features < 8 || text_features > 65536)
		return sovmesh_fail(err, -EINVAL, "text_features %lld is outside 8..65536",
		                    (long long)text_features);
	if (epochs < 1 || epochs > 1000)
		return sovmesh_fail(err, -EINVAL, "epochs %lld is outside 1..1000",
		                    (long long)epochs);
	if (batch_size < 1 || batch_size > 100000)
		return sovmesh_fail(err, -EINVAL, "batch_size %lld is outside 1..100000",
		                    (long long)batch_size);
	if (!isfinite(lr) || lr <= 0 || lr > 100)
		return sovmesh_fail(err, -EINVAL, "learning_rate %g must be in (0, 100]", lr);
	if (!isfinite(l2) || l2 < 0 || l2 > 100)
		return sovmesh_fail(err, -EINVAL, "l2 %g must be in [0, 100]", l2);

	reference *r = api->calloc(host, 1, sizeof(*r));
	if (!r)
		return sovmesh_fail(err, -ENOMEM, "out of memory");
	r->host = host;
	r->api = api;
	r->rank = (uint32_t)rank;
	r->classes = (uint32_t)classes;
	r->text_features = (uint32_t)text_features;
	r->epochs = (uint32_t)epochs;
	r->batch_size = (uint32_t)batch_size;
	r->learning_rate = lr;
	r->l2 = l2;
	r->init_seed = (uint64_t)api->setting_int(host, "init_seed");
	*instance = r;
	return 0;
}

static void reference_destroy(void *instance)
{
	reference *r = instance;
	if (r)
		r->api->free(r->host, r);
}

/* ---- samples -> examples ---- */

static void dataset_free(const reference *r, dataset *ds)
{
	release(r, ds->off);
	release(r, ds->idx);
	release(r, ds->val);
	release(r, ds->label);
	memset(ds, 0, sizeof(*ds));
}

/* First pass: refuse unusable samples; count examples and an upper bound
 * of the stored entries.  *numeric: the samples carry features. */
static int check_samples(const reference *r, const sovmesh_sample *s, size_t n, size_t *examples,
                         size_t *entries, int *numeric, sovmesh_error *err)
{
	*examples = *entries = 0;
	*numeric = n > 0 && s[0].features != NULL;
	for (size_t i = 0; i < n; i++) {
		const sovmesh_sample *x = &s[i];
		if (x->size < sizeof(sovmesh_sample))
			return sovmesh_fail(err, -EINVAL, "sample %zu: size %u, expected %zu", i,
			                    x->size, sizeof(sovmesh_sample));
		if (*numeric && !x->features)
			return sovmesh_fail(err, -EINVAL,
			                    "sample %zu has no features but sample 0 has %zu: one "
			                    "call takes numeric or text samples, not both",
			                    i, s[0].n_features);
		if (!*numeric && x->features)
			return sovmesh_fail(
			    err, -EINVAL,
			    "sample %zu has %zu features but sample 0 has none: one "
			    "call takes numeric or text samples, not both",
			    i, x->n_features);
		if (*numeric) {
			if (x->n_features == 0 || x->n_features > MAX_FEATURES)
				return sovmesh_fail(err, -EINVAL,
				                    "sample %zu: %zu features, expected 1..%u", i,
				                    x->n_features, MAX_FEATURES);
			if (x->n_features != s[0].n_features)
				return sovmesh_fail(err, -EINVAL,
				                    "sample %zu has %zu features, sample 0 has %zu",
				                    i, x->n_features, s[0].n_features);
			if (x->label < 0 || (uint32_t)x->label >= r->classes)
				return sovmesh_fail(err, -EINVAL,
				                    "sample %zu: label %d is outside 0..%u", i,
				                    (int)x->label, r->classes - 1);
			size_t nz = 0;
			for (size_t j = 0; j < x->n_features; j++) {
				float v = x->features[j];
				if (!isfinite(v))
					return sovmesh_fail(err, -EINVAL,
					                    "sample %zu: feature %zu is %s", i, j,
					                    isnan(v) ? "NaN" : "infinite");
				nz += v != 0;
			}
			*examples += 1;
			*entries += nz + 1;
			continue;
		}
		if (r->classes != 2)
			return sovmesh_fail(err, -EINVAL,
			                    "sample %zu is feedback text (no features), which "
			                    "has 2 classes, but classes is %u",
			                    i, r->classes);
		if (!x->prompt)
			return sovmesh_fail(err, -EINVAL, "sample %zu has no prompt", i);
		if (x->correction) {
			*examples += 1;
			*entries += featurize_max_terms(x->prompt, x->correction) + 1;
			if (x->response) {
				*examples += 1;
				*entries += featurize_max_terms(x->prompt, x->response) + 1;
			}
			continue;
		}
		if (x->rating == SOVMESH_RATING_NONE)
			return sovmesh_fail(err, -EINVAL,
			                    "sample %zu has neither a rating nor a correction", i);
		if (x->rating != SOVMESH_RATING_UP && x->rating != SOVMESH_RATING_DOWN)
			return sovmesh_fail(err, -EINVAL, "sample %zu: rating %d is not -1, 0 or 1",
			                    i, x->rating);
		if (!x->response)
			return sovmesh_fail(err, -EINVAL, "sample %zu is rated but has no response",
			                    i);
		*examples += 1;
		*entries += featurize_max_terms(x->prompt, x->response) + 1;
	}
	return 0;
}

static void add_text(dataset *ds, size_t *e, size_t *at, const char *prompt, const char *answer,
                     int32_t label)
{
	size_t k = featurize(prompt, answer, ds->cols - 1, ds->idx + *at, ds->val + *at);
	*at += k;
	ds->idx[*at] = ds->cols - 1;
	ds->val[(*at)++] = 1.0f;
	ds->label[(*e)++] = label;
	ds->off[*e] = *at;
}

/*
 * Check and expand the samples.  `cols_if_empty` is d + 1 when there are
 * no samples.  ds->n == 0 then.
 */
static int dataset_build(const reference *r, const sovmesh_sample *s, size_t n,
                         uint32_t cols_if_empty, dataset *ds, sovmesh_error *err)
{
	memset(ds, 0, sizeof(*ds));
	if (n > 0 && !s)
		return sovmesh_fail(err, -EINVAL, "%zu samples but no sample array", n);
	size_t examples, entries;
	int numeric;
	int rc = check_samples(r, s, n, &examples, &entries, &numeric, err);
	if (rc < 0)
		return rc;
	ds->cols = n == 0    ? cols_if_empty
	           : numeric ? (uint32_t)s[0].n_features + 1
	                     : r->text_features + 1;
	ds->off = zalloc(r, examples + 1, sizeof(*ds->off));
	ds->idx = zalloc(r, entries, sizeof(*ds->idx));
	ds->val = zalloc(r, entries, sizeof(*ds->val));
	ds->label = zalloc(r, examples, sizeof(*ds->label));
	if (!ds->off || !ds->idx || !ds->val || !ds->label) {
		dataset_free(r, ds);
		return sovmesh_fail(err, -ENOMEM, "out of memory for %zu examples", examples);
	}
	size_t e = 0, at = 0;
	for (size_t i = 0; i < n; i++) {
		const sovmesh_sample *x = &s[i];
		if (numeric) {
			for (size_t j = 0; j < x->n_features; j++) {
				if (x->features[j] == 0)
					continue;
				ds->idx[at] = (uint32_t)j;
				ds->val[at++] = x->features[j];
			}
			ds->idx[at] = ds->cols - 1;
			ds->val[at++] = 1.0f;
			ds->label[e++] = x->label;
			ds->off[e] = at;
		} else if (x->correction) {
			add_text(ds, &e, &at, x->prompt, x->correction, 1);
			if (x->response)
				add_text(ds, &e, &at, x->prompt, x->response, 0);
		} else {
			add_text(ds, &e, &at, x->prompt, x->response,
			         x->rating == SOVMESH_RATING_UP ? 1 : 0);
		}
	}
	ds->n = e;
	return 0;
}

/* ---- the adapter ---- */

static void model_free(const reference *r, model *m)
{
	release(r, m->a);
	release(r, m->b);
	memset(m, 0, sizeof(*m));
}

static int model_alloc(const reference *r, uint32_t cols, model *m, sovmesh_error *err)
{
	memset(m, 0, sizeof(*m));
	m->rank = r->rank;
	m->classes = r->classes;
	m->cols = cols;
	m->na = (size_t)(r->rank ? r->rank : r->classes) * cols;
	m->nb = (size_t)r->classes * r->rank;
	m->a = zalloc(r, m->na, sizeof(double));
	m->b = m->nb ? zalloc(r, m->nb, sizeof(double)) : NULL;
	if (!m->a || (m->nb && !m->b)) {
		model_free(r, m);
		return sovmesh_fail(err, -ENOMEM, "out of memory for a %u x %u adapter",
		                    r->rank ? r->rank : r->classes, cols);
	}
	return 0;
}

/* The initial adapter (see the top of the file); a and b are zeroed. */
static void model_init(const reference *r, model *m)
{
	if (m->rank == 0)
		return;
	uint64_t st = r->init_seed;
	double half_width = sqrt(3.0 / (double)m->cols);
	for (size_t i = 0; i < m->na; i++) {
		double u = (double)(splitmix64(&st) >> 11) * 0x1p-53; /* [0, 1), exact */
		m->a[i] = (double)(float)((2 * u - 1) * half_width);
	}
}

typedef struct expected_tensor {
	const char *name;
	uint64_t rows, cols;
} expected_tensor;

static size_t expected_layout(const reference *r, uint32_t cols, expected_tensor t[2])
{
	if (r->rank == 0) {
		t[0] = (expected_tensor){NAME_W, r->classes, cols};
		return 1;
	}
	t[0] = (expected_tensor){NAME_A, r->rank, cols};
	t[1] = (expected_tensor){NAME_B, r->classes, r->rank};
	return 2;
}

/* d + 1 of an adapter made by this trainer (for calls without samples);
 * `fallback` when `set` does not look like one (the check then says why). */
static uint32_t cols_of(const sovmesh_tensor_set *set, uint32_t fallback)
{
	if (set && set->count >= 1 && set->tensors && set->tensors[0].ndim == 2 &&
	    set->tensors[0].shape[1] >= 2 && set->tensors[0].shape[1] <= MAX_FEATURES + 1)
		return (uint32_t)set->tensors[0].shape[1];
	return fallback;
}

/* Check `set` has exactly this trainer's layout for d = cols - 1, with
 * finite values, and load it into m (allocated here). */
static int model_load(const reference *r, const sovmesh_tensor_set *set, uint32_t cols,
                      const char *what, model *m, sovmesh_error *err)
{
	expected_tensor want[2];
	size_t nw = expected_layout(r, cols, want);
	char shape_want[64], shape_got[64];
	if (!set->tensors && set->count)
		return sovmesh_fail(err, -EINVAL, "the %s has no tensor array", what);
	if (set->count != nw) {
		if (nw == 1)
			return sovmesh_fail(err, -EINVAL,
			                    "the %s has %zu tensors; rank 0 with %u classes and "
			                    "%u inputs + bias makes 1: '%s' [%llu,%llu]",
			                    what, set->count, r->classes, cols - 1, want[0].name,
			                    (unsigned long long)want[0].rows,
			                    (unsigned long long)want[0].cols);
		return sovmesh_fail(err, -EINVAL,
		                    "the %s has %zu tensors; rank %u with %u classes and %u "
		                    "inputs + bias makes 2: '%s' [%llu,%llu] and '%s' [%llu,%llu]",
		                    what, set->count, r->rank, r->classes, cols - 1, want[0].name,
		                    (unsigned long long)want[0].rows,
		                    (unsigned long long)want[0].cols, want[1].name,
		                    (unsigned long long)want[1].rows,
		                    (unsigned long long)want[1].cols);
	}
	for (size_t k = 0; k < nw; k++) {
		const sovmesh_tensor *t = &set->tensors[k];
		if (!t->name || strcmp(t->name, want[k].name) != 0)
			return sovmesh_fail(
			    err, -EINVAL, "the %s's tensor %zu is '%s', expected '%s' (rank %u)",
			    what, k, t->name ? t->name : "(null)", want[k].name, r->rank);
		if (t->dtype != SOVMESH_DTYPE_F32)
			return sovmesh_fail(err, -EINVAL, "tensor '%s' has dtype %s, expected F32",
			                    t->name, sovmesh_dtype_name(t->dtype));
		snprintf(shape_want, sizeof(shape_want), "[%llu,%llu]",
		         (unsigned long long)want[k].rows, (unsigned long long)want[k].cols);
		if (t->ndim != 2 || t->shape[0] != want[k].rows || t->shape[1] != want[k].cols) {
			sovmesh_tensor_shape_text(t, shape_got, sizeof(shape_got));
			return sovmesh_fail(err, -EINVAL,
			                    "tensor '%s' has shape %s, expected %s (rank %u, %u "
			                    "classes, %u inputs + bias)",
			                    t->name, shape_got, shape_want, r->rank, r->classes,
			                    cols - 1);
		}
		uint64_t bytes = want[k].rows * want[k].cols * 4;
		if (t->nbytes != bytes || !t->data)
			return sovmesh_fail(
			    err, -EINVAL, "tensor '%s' has %llu bytes of data, expected %llu",
			    t->name, (unsigned long long)t->nbytes, (unsigned long long)bytes);
	}
	int rc = model_alloc(r, cols, m, err);
	if (rc < 0)
		return rc;
	for (size_t k = 0; k < nw; k++) {
		const sovmesh_tensor *t = &set->tensors[k];
		double *dst = k == 0 ? m->a : m->b;
		uint64_t numel = want[k].rows * want[k].cols;
		for (uint64_t j = 0; j < numel; j++) {
			double v = sovmesh_tensor_get(t, j);
			if (!isfinite(v)) {
				model_free(r, m);
				return sovmesh_fail(err, -EINVAL, "tensor '%s' element %llu is %s",
				                    t->name, (unsigned long long)j,
				                    isnan(v) ? "NaN" : "infinite");
			}
			dst[j] = v;
		}
	}
	return 0;
}

/* The adapter for `cols`: `set` checked and loaded, or the initial one. */
static int model_start(const reference *r, const sovmesh_tensor_set *set, uint32_t cols,
                       const char *what, model *m, sovmesh_error *err)
{
	if (set)
		return model_load(r, set, cols, what, m, err);
	int rc = model_alloc(r, cols, m, err);
	if (rc == 0)
		model_init(r, m);
	return rc;
}

/* Round to F32 in place: what is stored is what is measured. */
static void model_round(model *m)
{
	for (size_t i = 0; i < m->na; i++)
		m->a[i] = (double)(float)m->a[i];
	for (size_t i = 0; i < m->nb; i++)
		m->b[i] = (double)(float)m->b[i];
}

static int model_store(const reference *r, const model *m, sovmesh_tensor_set **out,
                       sovmesh_error *err)
{
	expected_tensor want[2];
	size_t nw = expected_layout(r, m->cols, want);
	sovmesh_tensor_set *set = r->api->tensor_set_new(r->host, NULL, nw);
	if (!set)
		return sovmesh_fail(err, -ENOMEM, "out of memory for the adapter");
	for (size_t k = 0; k < nw; k++) {
		uint64_t shape[2] = {want[k].rows, want[k].cols};
		int rc =
		    r->api->tensor_init(r->host, set, k, want[k].name, SOVMESH_DTYPE_F32, 2, shape);
		if (rc < 0) {
			r->api->tensor_set_free(r->host, set);
			return sovmesh_fail(err, rc, "cannot make tensor '%s' [%llu,%llu]",
			                    want[k].name, (unsigned long long)shape[0],
			                    (unsigned long long)shape[1]);
		}
		sovmesh_tensor *t = &set->tensors[k];
		const double *src = k == 0 ? m->a : m->b;
		for (uint64_t j = 0; j < want[k].rows * want[k].cols; j++)
			sovmesh_tensor_set_value(t, j, src[j]);
	}
	*out = set;
	return 0;
}

/* ---- the math ---- */

static int scratch_alloc(const reference *r, scratch *s)
{
	s->h = zalloc(r, r->rank, sizeof(double));
	s->u = zalloc(r, r->rank, sizeof(double));
	s->z = zalloc(r, r->classes, sizeof(double));
	s->g = zalloc(r, r->classes, sizeof(double));
	return s->h && s->u && s->z && s->g ? 0 : -ENOMEM;
}

static void scratch_free(const reference *r, scratch *s)
{
	release(r, s->h);
	release(r, s->u);
	release(r, s->z);
	release(r, s->g);
}

/*
 * Example e through the head: s->z = logits, s->h = A x~ (rank >= 1),
 * s->g = p - onehot(y).  Returns the cross-entropy; *argmax the
 * predicted class (lowest index on ties).
 */
static double forward(const model *m, const dataset *ds, size_t e, scratch *s, uint32_t *argmax)
{
	const uint32_t *idx = ds->idx + ds->off[e];
	const float *val = ds->val + ds->off[e];
	size_t nnz = ds->off[e + 1] - ds->off[e];
	uint32_t C = m->classes, R = m->rank, cols = m->cols;

	if (R == 0) {
		for (uint32_t c = 0; c < C; c++) {
			const double *w = m->a + (size_t)c * cols;
			double acc = 0;
			for (size_t k = 0; k < nnz; k++)
				acc += w[idx[k]] * val[k];
			s->z[c] = acc;
		}
	} else {
		for (uint32_t i = 0; i < R; i++) {
			const double *a = m->a + (size_t)i * cols;
			double acc = 0;
			for (size_t k = 0; k < nnz; k++)
				acc += a[idx[k]] * val[k];
			s->h[i] = acc;
		}
		for (uint32_t c = 0; c < C; c++) {
			const double *b = m->b + (size_t)c * R;
			double acc = 0;
			for (uint32_t i = 0; i < R; i++)
				acc += b[i] * s->h[i];
			s->z[c] = acc;
		}
	}
	uint32_t best = 0;
	for (uint32_t c = 1; c < C; c++)
		if (s->z[c] > s->z[best])
			best = c;
	double sum = 0;
	for (uint32_t c = 0; c < C; c++)
		sum += exp(s->z[c] - s->z[best]);
	double lse = s->z[best] + log(sum);
	uint32_t y = (uint32_t)ds->label[e];
	for (uint32_t c = 0; c < C; c++)
		s->g[c] = exp(s->z[c] - lse) - (c == y);
	if (argmax)
		*argmax = best;
	return lse - s->z[y];
}

static void mean_loss(const model *m, const dataset *ds, scratch *s, double *loss, double *accuracy)
{
	double sum = 0;
	size_t right = 0;
	for (size_t e = 0; e < ds->n; e++) {
		uint32_t pred;
		sum += forward(m, ds, e, s, &pred);
		right += pred == (uint32_t)ds->label[e];
	}
	*loss = sum / (double)ds->n;
	if (accuracy)
		*accuracy = (double)right / (double)ds->n;
}

/* One SGD step on examples order[0..count); ga/gb are gradient scratch
 * of m->na/m->nb doubles. */
static void sgd_step(const reference *r, model *m, const dataset *ds, const size_t *order,
                     size_t count, double *ga, double *gb, scratch *s)
{
	uint32_t C = m->classes, R = m->rank, cols = m->cols;
	memset(ga, 0, m->na * sizeof(double));
	if (m->nb)
		memset(gb, 0, m->nb * sizeof(double));
	for (size_t q = 0; q < count; q++) {
		size_t e = order[q];
		forward(m, ds, e, s, NULL);
		const uint32_t *idx = ds->idx + ds->off[e];
		const float *val = ds->val + ds->off[e];
		size_t nnz = ds->off[e + 1] - ds->off[e];
		if (R == 0) {
			for (uint32_t c = 0; c < C; c++) { /* dW = G x~^T */
				double *row = ga + (size_t)c * cols;
				for (size_t k = 0; k < nnz; k++)
					row[idx[k]] += s->g[c] * val[k];
			}
			continue;
		}
		for (uint32_t i = 0; i < R; i++)
			s->u[i] = 0;
		for (uint32_t c = 0; c < C; c++) {
			const double *b = m->b + (size_t)c * R;
			double *grow = gb + (size_t)c * R;
			for (uint32_t i = 0; i < R; i++) {
				grow[i] += s->g[c] * s->h[i]; /* dB = G h^T */
				s->u[i] += b[i] * s->g[c];    /* u = B^T G */
			}
		}
		for (uint32_t i = 0; i < R; i++) { /* dA = u x~^T */
			double *row = ga + (size_t)i * cols;
			for (size_t k = 0; k < nnz; k++)
				row[idx[k]] += s->u[i] * val[k];
		}
	}
	double step = r->learning_rate / (double)count;
	double decay = r->learning_rate * r->l2;
	for (size_t j = 0; j < m->na; j++)
		m->a[j] -= step * ga[j] + decay * m->a[j];
	for (size_t j = 0; j < m->nb; j++)
		m->b[j] -= step * gb[j] + decay * m->b[j];
}

static int model_finite(const model *m)
{
	for (size_t j = 0; j < m->na; j++)
		if (!isfinite(m->a[j]))
			return 0;
	for (size_t j = 0; j < m->nb; j++)
		if (!isfinite(m->b[j]))
			return 0;
	return 1;
}

static int diverged(const reference *r, uint32_t epoch, sovmesh_error *err)
{
	return sovmesh_fail(err, -ERANGE,
	                    "training diverged in epoch %u (the adapter or the loss became "
	                    "non-finite); lower learning_rate (%g)",
	                    epoch, r->learning_rate);
}

static int run_sgd(const reference *r, model *m, const dataset *ds, uint64_t seed,
                   uint32_t timeout_ms, sovmesh_error *err)
{
	uint64_t start = mono_ms();
	size_t *order = zalloc(r, ds->n, sizeof(*order));
	double *ga = zalloc(r, m->na, sizeof(double));
	double *gb = zalloc(r, m->nb, sizeof(double));
	scratch s = {0};
	int rc = 0;
	if (!order || !ga || !gb || scratch_alloc(r, &s) < 0) {
		rc = sovmesh_fail(err, -ENOMEM, "out of memory for training scratch");
		goto out;
	}
	for (size_t e = 0; e < ds->n; e++)
		order[e] = e;
	uint64_t st = seed;
	for (uint32_t epoch = 0; epoch < r->epochs && rc == 0; epoch++) {
		for (size_t i = ds->n; i > 1; i--) { /* Fisher-Yates */
			size_t j = (size_t)(splitmix64(&st) % i);
			size_t t = order[i - 1];
			order[i - 1] = order[j];
			order[j] = t;
		}
		for (size_t at = 0; at < ds->n; at += r->batch_size) {
			if (timeout_ms && mono_ms() - start >= timeout_ms) {
				rc = sovmesh_fail(err, -ETIMEDOUT,
				                  "training timed out after %u ms (epoch %u of %u)",
				                  timeout_ms, epoch + 1, r->epochs);
				break;
			}
			size_t count = ds->n - at < r->batch_size ? ds->n - at : r->batch_size;
			sgd_step(r, m, ds, order + at, count, ga, gb, &s);
		}
		if (rc == 0 && !model_finite(m))
			rc = diverged(r, epoch + 1, err);
	}
out:
	scratch_free(r, &s);
	release(r, order);
	release(r, ga);
	release(r, gb);
	return rc;
}

/* ---- the ops ---- */

#define REPORT_HAS(rep, member)                                                                    \
	((rep)->size >= offsetof(sovmesh_train_report, member) + sizeof((rep)->member))

static int reference_train(void *instance, const sovmesh_train_input *in, sovmesh_tensor_set **out,
                           sovmesh_train_report *report, sovmesh_error *err)
{
	const reference *r = instance;
	if (!in || !out || !report)
		return sovmesh_fail(err, -EINVAL, "train() needs an input, an output and a report");
	*out = NULL;
	if (in->size < sizeof(sovmesh_train_input))
		return sovmesh_fail(err, -EINVAL, "train input size %u, expected %zu", in->size,
		                    sizeof(sovmesh_train_input));

	dataset ds;
	uint32_t empty_cols = cols_of(in->current, r->text_features + 1);
	int rc = dataset_build(r, in->samples, in->n_samples, empty_cols, &ds, err);
	if (rc < 0)
		return rc;
	model m;
	rc = model_start(r, in->current, ds.cols, "current adapter", &m, err);
	if (rc < 0) {
		dataset_free(r, &ds);
		return rc;
	}

	double before = NAN, after = NAN;
	if (ds.n > 0) {
		scratch s = {0};
		if (scratch_alloc(r, &s) < 0) {
			rc = sovmesh_fail(err, -ENOMEM, "out of memory for training scratch");
		} else {
			mean_loss(&m, &ds, &s, &before, NULL);
			rc = run_sgd(r, &m, &ds, in->seed, in->timeout_ms, err);
			if (rc == 0) {
				model_round(&m); /* may overflow F32 */
				mean_loss(&m, &ds, &s, &after, NULL);
				if (!model_finite(&m) || !isfinite(after))
					rc = diverged(r, r->epochs, err);
				else if (after > before && r->api->log)
					r->api->log(r->host, SOVMESH_LOG_WARNING,
					            "training raised the loss from %.4g to %.4g; "
					            "learning_rate %g may be too high",
					            before, after, r->learning_rate);
			}
		}
		scratch_free(r, &s);
	}
	if (rc == 0)
		rc = model_store(r, &m, out, err);
	if (rc == 0) {
		if (REPORT_HAS(report, samples_used))
			report->samples_used = ds.n;
		if (REPORT_HAS(report, loss_before))
			report->loss_before = before;
		if (REPORT_HAS(report, loss_after))
			report->loss_after = after;
	}
	model_free(r, &m);
	dataset_free(r, &ds);
	return rc;
}

static int reference_evaluate(void *instance, const sovmesh_tensor_set *adapter,
                              const sovmesh_sample *samples, size_t n_samples, double *loss,
                              double *accuracy, sovmesh_error *err)
{
	const reference *r = instance;
	if (!loss || !accuracy)
		return sovmesh_fail(err, -EINVAL, "evaluate() needs loss and accuracy outputs");
	if (n_samples == 0)
		return sovmesh_fail(err, -EINVAL, "no samples to evaluate");
	dataset ds;
	int rc = dataset_build(r, samples, n_samples, r->text_features + 1, &ds, err);
	if (rc < 0)
		return rc;
	model m;
	rc = model_start(r, adapter, ds.cols, "adapter", &m, err);
	if (rc == 0) {
		scratch s = {0};
		if (scratch_alloc(r, &s) < 0)
			rc = sovmesh_fail(err, -ENOMEM, "out of memory for evaluation scratch");
		else
			mean_loss(&m, &ds, &s, loss, accuracy);
		scratch_free(r, &s);
		model_free(r, &m);
	}
	dataset_free(r, &ds);
	return rc;
}

static const sovmesh_trainer_ops reference_ops = {
    .size = sizeof(sovmesh_trainer_ops),
    .train = reference_train,
    .evaluate = reference_evaluate,
};

static const sovmesh_plugin_descriptor reference_descriptor = {
    .magic = SOVMESH_PLUGIN_MAGIC,
    .size = sizeof(sovmesh_plugin_descriptor),
    .abi_major = SOVMESH_ABI_MAJOR,
    .abi_minor = SOVMESH_ABI_MINOR,
    .kind = SOVMESH_KIND_TRAINER,
    .name = "reference",
    .version = "1.0.0",
    .license = "MIT",
    .description = "Reference trainer: SGD on a LoRA-adapted linear softmax head over "
                   "numeric or hashed bag-of-words text features",
    .settings = reference_settings,
    .create = reference_create,
    .destroy = reference_destroy,
    .ops = &reference_ops,
};

SOVMESH_PLUGIN_DEFINE(reference_descriptor)

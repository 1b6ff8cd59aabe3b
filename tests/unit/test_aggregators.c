/*
 * The research aggregators agg-fedmedian, agg-trimmed, agg-krum,
 * agg-multikrum and agg-fedavgm (plugins/agg-*), loaded through mini_host
 * and checked against straightforward double references written here,
 * plus hand-made cases and every refusal.  The sorting network of
 * plugins/agg-common/agg_common.h is checked on its own too.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <sovmesh/aggregator.h>

#include "../../plugins/agg-common/agg_common.h"
#include "mini_host.h"

#define NT 4
static const char *const names[NT] = {"a.lora_A", "b.bias", "c.lora_B", "d.big"};
static const uint32_t ndims[NT] = {2, 1, 3, 1};
/* 91, 64, 60 and 2100 elements: odd sizes exercise the vector tails, and
 * d.big spans several streaming blocks (at most 1024 coordinates each). */
static const uint64_t shapes[NT][SOVMESH_TENSOR_MAX_DIMS] = {{7, 13}, {64}, {3, 4, 5}, {2100}};

static const size_t sizes[] = {1, 2, 3, 5, 8, 11};
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))
#define NMAX   40

static const sovmesh_dtype all_dtypes[] = {SOVMESH_DTYPE_F32, SOVMESH_DTYPE_F64, SOVMESH_DTYPE_F16,
                                           SOVMESH_DTYPE_BF16};

static const char *const plugin_files[] = {"agg-fedmedian", "agg-trimmed", "agg-krum",
                                           "agg-multikrum", "agg-fedavgm"};
#define NPLUGINS (sizeof(plugin_files) / sizeof(plugin_files[0]))

/* ---- helpers ---- */

static uint64_t rng_state = 0x2545f4914f6cdd1du;

/* splitmix64: test data only. */
static uint64_t next_u64(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
	return z ^ (z >> 31);
}

static double next_unit(void)
{
	return (double)(next_u64() >> 11) * 0x1p-53;
}

static mini_host *open_agg(const char *file, const mini_setting *settings)
{
	mini_host *mh = NULL;
	sovmesh_error err = {0};
	if (mini_host_open(file, settings, &mh, &err) < 0)
		fail_msg("cannot load %s: %s", file, err.message);
	return mh;
}

static int run(mini_host *mh, sovmesh_tensor_set **in, const double *w, size_t n,
               sovmesh_tensor_set *out, sovmesh_error *err)
{
	const sovmesh_aggregator_ops *ops = mh->desc->ops;
	memset(err, 0, sizeof(*err));
	return ops->aggregate(mh->instance, (const sovmesh_tensor_set *const *)in, w, n, out, err);
}

static sovmesh_tensor_set *make(mini_host *mh, sovmesh_dtype dt)
{
	sovmesh_tensor_set *s = mini_host_make_set(mh, NT, names, dt, ndims, shapes);
	assert_non_null(s);
	return s;
}

static sovmesh_tensor_set *out_like(mini_host *mh, const sovmesh_tensor_set *in)
{
	sovmesh_tensor_set *s = mh->api.tensor_set_new(mh->host, in, in->count);
	assert_non_null(s);
	return s;
}

/* A one-tensor set "x" of shape [len] holding vals (rounded to dt). */
static sovmesh_tensor_set *vec_set(mini_host *mh, sovmesh_dtype dt, const double *vals, size_t len)
{
	static const char *const nm[1] = {"x"};
	static const uint32_t nd[1] = {1};
	uint64_t sh[1][SOVMESH_TENSOR_MAX_DIMS] = {{len}};
	sovmesh_tensor_set *s =
	    mini_host_make_set(mh, 1, nm, dt, nd, (const uint64_t(*)[SOVMESH_TENSOR_MAX_DIMS])sh);
	assert_non_null(s);
	for (size_t j = 0; vals && j < len; j++)
		sovmesh_tensor_set_value(&s->tensors[0], j, vals[j]);
	return s;
}

static void free_set(mini_host *mh, sovmesh_tensor_set *s)
{
	mh->api.tensor_set_free(mh->host, s);
}

static void free_sets(mini_host *mh, sovmesh_tensor_set **s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free_set(mh, s[i]);
}

/* Random values over many binades, stored (rounded) in the set's dtype. */
static void fill_random(sovmesh_tensor_set *s)
{
	for (size_t k = 0; k < s->count; k++) {
		sovmesh_tensor *t = &s->tensors[k];
		for (uint64_t j = 0; j < sovmesh_tensor_numel(t); j++) {
			double v = ldexp(2 * next_unit() - 1, (int)(next_u64() % 13) - 8);
			sovmesh_tensor_set_value(t, j, v);
		}
	}
}

static void random_inputs(mini_host *mh, sovmesh_dtype dt, size_t n, sovmesh_tensor_set **in,
                          double *w)
{
	for (size_t i = 0; i < n; i++) {
		in[i] = make(mh, dt);
		fill_random(in[i]);
		w[i] = (double)(1 + next_u64() % 5000) + (i == 1 ? 0.25 : 0);
	}
}

/* v rounded to dtype dt (the SDK's rounding; monotone). */
static double round_to(sovmesh_dtype dt, double v)
{
	unsigned char buf[8];
	sovmesh_tensor t = {.dtype = dt, .data = buf};
	sovmesh_tensor_set_value(&t, 0, v);
	return sovmesh_tensor_get(&t, 0);
}

/* The spacing of dtype dt's values at x (F16 and BF16 only). */
static double ulp_at(sovmesh_dtype dt, double x)
{
	int e = x == 0 ? -1000 : ilogb(x);
	return dt == SOVMESH_DTYPE_F16 ? ldexp(1, (e < -14 ? -14 : e) - 10)
	                               : ldexp(1, (e < -126 ? -126 : e) - 7);
}

/*
 * got is ref rounded to dt, up to 1e-12 * mag (the inputs' magnitude).
 * F32 is compared with the SDK's rounding; for F16/BF16 that rounds via
 * float (twice, wrong near ties) while the plugins round once, so there
 * got need only be within half a unit of ref.
 */
static void expect_close(sovmesh_dtype dt, double got, double ref, double mag, const char *what,
                         const char *tensor, uint64_t j)
{
	double tol = 1e-12 * mag + 1e-300;
	int ok;
	if (dt == SOVMESH_DTYPE_F64)
		ok = fabs(got - ref) <= tol;
	else if (dt == SOVMESH_DTYPE_F32)
		ok = got >= round_to(dt, ref - tol) && got <= round_to(dt, ref + tol);
	else
		ok = fabs(got - ref) <= 0.5 * ulp_at(dt, got) + tol;
	if (!ok)
		fail_msg("%s dtype %s tensor %s[%llu]: got %.17g, reference %.17g", what,
		         sovmesh_dtype_name(dt), tensor, (unsigned long long)j, got, ref);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Collect coordinate (k, j) of every input. Returns max |x|. */
static double gather(sovmesh_tensor_set **in, size_t n, size_t k, uint64_t j, double *vals)
{
	double mag = 0;
	for (size_t i = 0; i < n; i++) {
		vals[i] = sovmesh_tensor_get(&in[i]->tensors[k], j);
		mag = fmax(mag, fabs(vals[i]));
	}
	return mag;
}

/* ---- reference implementations ---- */

static double ref_median(double *vals, size_t n)
{
	qsort(vals, n, sizeof(double), cmp_double);
	return n % 2 ? vals[n / 2] : (vals[n / 2 - 1] + vals[n / 2]) / 2;
}

static double ref_trimmed(double *vals, size_t n, size_t k)
{
	qsort(vals, n, sizeof(double), cmp_double);
	double s = 0;
	for (size_t i = k; i < n - k; i++)
		s += vals[i];
	return s / (double)(n - 2 * k);
}

/* Krum scores over all tensors as one vector. */
static void ref_krum_scores(sovmesh_tensor_set **in, size_t n, size_t f, double *score)
{
	static double dist[NMAX][NMAX];
	for (size_t i = 0; i < n; i++) {
		for (size_t j = 0; j < n; j++) {
			double s = 0;
			for (size_t k = 0; k < in[0]->count; k++)
				for (uint64_t e = 0; e < sovmesh_tensor_numel(&in[0]->tensors[k]);
				     e++) {
					double d = sovmesh_tensor_get(&in[i]->tensors[k], e) -
					           sovmesh_tensor_get(&in[j]->tensors[k], e);
					s += d * d;
				}
			dist[i][j] = s;
		}
	}
	for (size_t i = 0; i < n; i++) {
		double d[NMAX];
		size_t m = 0;
		for (size_t j = 0; j < n; j++)
			if (j != i)
				d[m++] = dist[i][j];
		qsort(d, m, sizeof(double), cmp_double);
		score[i] = 0;
		for (size_t q = 0; q < n - f - 2; q++)
			score[i] += d[q];
	}
}

/* The m indices with the lowest scores, ties by index. */
static void ref_lowest(const double *score, size_t n, size_t m, size_t *idx)
{
	int used[NMAX] = {0};
	for (size_t q = 0; q < m; q++) {
		size_t best = n;
		for (size_t i = 0; i < n; i++)
			if (!used[i] && (best == n || score[i] < score[best]))
				best = i;
		used[best] = 1;
		idx[q] = best;
	}
}

/* Weighted mean of inputs idx[0..m) at (k, j); *mag = sum w|x| / sum w. */
static double ref_wmean(sovmesh_tensor_set **in, const double *w, const size_t *idx, size_t m,
                        size_t k, uint64_t j, double *mag)
{
	double num = 0, den = 0, ab = 0;
	for (size_t q = 0; q < m; q++) {
		size_t i = idx ? idx[q] : q;
		double x = sovmesh_tensor_get(&in[i]->tensors[k], j);
		num += w[i] * x;
		ab += w[i] * fabs(x);
		den += w[i];
	}
	*mag = ab / den;
	return num / den;
}

/* ---- refusal helpers ---- */

static void expect_fail(mini_host *mh, sovmesh_tensor_set **in, const double *w, size_t n,
                        sovmesh_tensor_set *out, int code, const char *const *frags)
{
	sovmesh_error err;
	int rc = run(mh, in, w, n, out, &err);
	if (rc != code)
		fail_msg("%s: expected %d, got %d (%s)", mh->desc->name, code, rc, err.message);
	assert_int_equal(err.code, code);
	assert_null(strchr(err.message, '\n'));
	for (size_t i = 0; frags[i]; i++)
		if (!strstr(err.message, frags[i]))
			fail_msg("%s: message '%s' lacks '%s'", mh->desc->name, err.message,
			         frags[i]);
}

#define FRAGS(...)                                                                                 \
	(const char *const[])                                                                      \
	{                                                                                          \
		__VA_ARGS__, NULL                                                                  \
	}

/* mini_host_open must fail with a message naming `frag`. */
static void expect_open_fails(const char *file, const mini_setting *settings, const char *frag)
{
	mini_host *mh = NULL;
	sovmesh_error err = {0};
	int rc = mini_host_open(file, settings, &mh, &err);
	if (rc >= 0) {
		mini_host_close(mh);
		fail_msg("%s opened with a bad setting (expected '%s')", file, frag);
	}
	assert_int_equal(rc, -EINVAL);
	if (!strstr(err.message, frag))
		fail_msg("%s: message '%s' lacks '%s'", file, err.message, frag);
}

/* ---- descriptors and settings ---- */

static void test_descriptors(void **state)
{
	(void)state;
	static const char *const want[] = {"fedmedian", "trimmed", "krum", "multikrum", "fedavgm"};
	for (size_t p = 0; p < NPLUGINS; p++) {
		mini_host *mh = open_agg(plugin_files[p], NULL);
		assert_string_equal(mh->desc->name, want[p]);
		assert_int_equal(mh->desc->kind, SOVMESH_KIND_AGGREGATOR);
		assert_non_null(mh->desc->description);
		const sovmesh_aggregator_ops *ops = mh->desc->ops;
		assert_true(ops->size >= sizeof(sovmesh_aggregator_ops));
		assert_non_null(ops->aggregate);
		size_t count = 0;
		for (const sovmesh_setting_def *d = mh->desc->settings; d && d->name; d++) {
			count++;
			assert_non_null(d->help);
			assert_true(strlen(d->help) > 10);
			assert_null(strchr(d->help, '\n'));
			assert_true(d->type == SOVMESH_SETTING_INT ||
			            d->type == SOVMESH_SETTING_DOUBLE);
			assert_true(d->min != 0 || d->max != 0); /* bounded */
			double def = strtod(d->default_value, NULL);
			assert_true(def >= d->min && def <= d->max);
		}
		static const size_t want_count[] = {0, 1, 1, 2, 2};
		assert_int_equal(count, want_count[p]);
		mini_host_close(mh);
	}
}

static void test_settings_refused(void **state)
{
	(void)state;
	/* Open ends the host's closed bounds cannot express: create() refuses. */
	expect_open_fails("agg-trimmed", (const mini_setting[]){{"beta", "0.5"}, {NULL, NULL}},
	                  "'beta'");
	expect_open_fails("agg-fedavgm", (const mini_setting[]){{"momentum", "1"}, {NULL, NULL}},
	                  "'momentum'");
	expect_open_fails("agg-fedavgm", (const mini_setting[]){{"server_lr", "0"}, {NULL, NULL}},
	                  "'server_lr'");
	/* Out of the declared bounds: the host refuses before create(). */
	expect_open_fails("agg-trimmed", (const mini_setting[]){{"beta", "0.7"}, {NULL, NULL}},
	                  "'beta'");
	expect_open_fails("agg-trimmed", (const mini_setting[]){{"beta", "-0.1"}, {NULL, NULL}},
	                  "'beta'");
	expect_open_fails("agg-krum", (const mini_setting[]){{"f", "-1"}, {NULL, NULL}}, "'f'");
	expect_open_fails("agg-multikrum", (const mini_setting[]){{"m", "-1"}, {NULL, NULL}},
	                  "'m'");
	expect_open_fails("agg-fedavgm", (const mini_setting[]){{"server_lr", "-1"}, {NULL, NULL}},
	                  "'server_lr'");
	expect_open_fails("agg-fedmedian", (const mini_setting[]){{"beta", "0.1"}, {NULL, NULL}},
	                  "'beta'");
}

/* The network sorts every 0/1 vector of length n, hence every input (the
 * 0-1 principle). */
static void test_sorting_network(void **state)
{
	(void)state;
	for (size_t n = 0; n <= 16; n++) {
		size_t np = agg_network(n, NULL);
		assert_true(np <= n * (n ? n - 1 : 0) / 2 || n < 2);
		uint32_t(*pairs)[2] = calloc(np ? np : 1, sizeof(*pairs));
		assert_non_null(pairs);
		assert_int_equal(agg_network(n, pairs), np);
		for (uint32_t bits = 0; bits < (1u << n); bits++) {
			double col[16];
			for (size_t i = 0; i < n; i++)
				col[i] = (bits >> i) & 1u;
			agg_sort_columns(col, 1, 1, (const uint32_t(*)[2])pairs, np);
			for (size_t i = 1; i < n; i++)
				if (col[i - 1] > col[i])
					fail_msg("n=%zu: vector %#x not sorted", n, bits);
		}
		free(pairs);
	}
	assert_int_equal(agg_network(10, NULL), 31); /* Knuth 5.3.4: merge exchange */
}

/* ---- fedmedian ---- */

static void check_median_random(mini_host *mh, sovmesh_dtype dt, size_t n)
{
	sovmesh_tensor_set *in[NMAX];
	double w[NMAX], vals[NMAX];
	random_inputs(mh, dt, n, in, w);
	sovmesh_tensor_set *out = out_like(mh, in[0]);
	sovmesh_error err;
	if (run(mh, in, w, n, out, &err) < 0)
		fail_msg("fedmedian n=%zu: %s", n, err.message);
	for (size_t k = 0; k < NT; k++) {
		for (uint64_t j = 0; j < sovmesh_tensor_numel(&out->tensors[k]); j++) {
			double mag = gather(in, n, k, j, vals);
			double ref = ref_median(vals, n);
			double got = sovmesh_tensor_get(&out->tensors[k], j);
			if (n % 2)
				assert_true(got == ref); /* an input value, exactly */
			expect_close(dt, got, ref, mag, "fedmedian", names[k], j);
		}
	}
	free_sets(mh, in, n);
	free_set(mh, out);
}

static void test_median_random(void **state)
{
	(void)state;
	mini_host *mh = open_agg("agg-fedmedian", NULL);
	for (size_t d = 0; d < 4; d++) {
		for (size_t s = 0; s < NSIZES; s++)
			check_median_random(mh, all_dtypes[d], sizes[s]);
		check_median_random(mh, all_dtypes[d], NMAX);
	}
	mini_host_close(mh);
}

static void test_median_hand(void **state)
{
	(void)state;
	mini_host *mh = open_agg("agg-fedmedian", NULL);
	for (size_t d = 0; d < 2; d++) {
		sovmesh_dtype dt = all_dtypes[d];
		/* median{1,5,2} = 2; median{1,5,2,8} = 3.5; per coordinate. */
		static const double v[4][2] = {{1, 40}, {5, -3}, {2, 7}, {8, 7.5}};
		sovmesh_tensor_set *in[4];
		for (size_t i = 0; i < 4; i++)
			in[i] = vec_set(mh, dt, v[i], 2);
		sovmesh_tensor_set *out = out_like(mh, in[0]);
		double w[4] = {1, 1000, 1, 1};
		sovmesh_error err;
		assert_int_equal(run(mh, in, w, 3, out, &err), 0);
		assert_true(sovmesh_tensor_get(&out->tensors[0], 0) == 2);
		assert_true(sovmesh_tensor_get(&out->tensors[0], 1) == 7);
		assert_int_equal(run(mh, in, w, 4, out, &err), 0);
		assert_true(sovmesh_tensor_get(&out->tensors[0], 0) == 3.5);
		assert_true(sovmesh_tensor_get(&out->tensors[0], 1) == 7.25);
		free_sets(mh, in, 4);
		free_set(mh, out);
	}
	mini_host_close(mh);
}

/* Unweighted and order-blind: other weights or a permutation of the
 * inputs give the same bytes (median, trimmed, krum). */
static void check_weights_and_order_ignored(const char *file, const mini_setting *settings)
{
	mini_host *mh = open_agg(file, settings);
	enum { N = 8 };
	sovmesh_tensor_set *in[N], *perm[N];
	double w[N], w2[N];
	random_inputs(mh, SOVMESH_DTYPE_F32, N, in, w);
	for (size_t i = 0; i < N; i++) {
		w2[i] = 1 + (double)(i * i);
		perm[i] = in[(i * 3 + 1) % N];
	}
	sovmesh_tensor_set *a = out_like(mh, in[0]), *b = out_like(mh, in[0]);
	sovmesh_tensor_set *c = out_like(mh, in[0]);
	sovmesh_error err;
	assert_int_equal(run(mh, in, w, N, a, &err), 0);
	assert_int_equal(run(mh, in, w2, N, b, &err), 0);
	assert_int_equal(run(mh, perm, w, N, c, &err), 0);
	for (size_t k = 0; k < NT; k++) {
		assert_memory_equal(a->tensors[k].data, b->tensors[k].data, a->tensors[k].nbytes);
		assert_memory_equal(a->tensors[k].data, c->tensors[k].data, a->tensors[k].nbytes);
	}
	free_sets(mh, in, N);
	free_set(mh, a);
	free_set(mh, b);
	free_set(mh, c);
	mini_host_close(mh);
}

static void test_weights_and_order_ignored(void **state)
{
	(void)state;
	check_weights_and_order_ignored("agg-fedmedian", NULL);
	check_weights_and_order_ignored("agg-trimmed",
	                                (const mini_setting[]){{"beta", "0.25"}, {NULL, NULL}});
	check_weights_and_order_ignored("agg-krum", NULL);
}

/* ---- trimmed ---- */

static void check_trimmed_random(mini_host *mh, double beta, sovmesh_dtype dt, size_t n)
{
	sovmesh_tensor_set *in[NMAX];
	double w[NMAX], vals[NMAX];
	random_inputs(mh, dt, n, in, w);
	sovmesh_tensor_set *out = out_like(mh, in[0]);
	size_t k = (size_t)floor(beta * (double)n);
	sovmesh_error err;
	if (run(mh, in, w, n, out, &err) < 0)
		fail_msg("trimmed beta=%g n=%zu: %s", beta, n, err.message);
	for (size_t t = 0; t < NT; t++) {
		for (uint64_t j = 0; j < sovmesh_tensor_numel(&out->tensors[t]); j++) {
			double mag = gather(in, n, t, j, vals);
			double ref = ref_trimmed(vals, n, k);
			expect_close(dt, sovmesh_tensor_get(&out->tensors[t], j), ref, mag,
			             "trimmed", names[t], j);
		}
	}
	free_sets(mh, in, n);
	free_set(mh, out);
}

static void test_trimmed_random(void **state)
{
	(void)state;
	static const char *const betas[] = {"0", "0.1", "0.2", "0.3", "0.45"};
	for (size_t b = 0; b < 5; b++) {
		mini_setting st[] = {{"beta", betas[b]}, {NULL, NULL}};
		mini_host *mh = open_agg("agg-trimmed", st);
		for (size_t d = 0; d < 4; d++) {
			for (size_t s = 0; s < NSIZES; s++)
				check_trimmed_random(mh, strtod(betas[b], NULL), all_dtypes[d],
				                     sizes[s]);
			if (b == 2)
				check_trimmed_random(mh, 0.2, all_dtypes[d], NMAX);
		}
		mini_host_close(mh);
	}
}

static void test_trimmed_hand(void **state)
{
	(void)state;
	/* beta 0.2 on 10 values drops 2 at each end: the mean of 1..6. */
	mini_host *mh = open_agg("agg-trimmed", NULL);
	static const double v[10] = {1000, 3, -999, 6, 1, 999, 2, -1000, 5, 4};
	sovmesh_tensor_set *in[10];
	double w[10];
	for (size_t i = 0; i < 10; i++) {
		in[i] = vec_set(mh, SOVMESH_DTYPE_F64, &v[i], 1);
		w[i] = 1 + (double)i;
	}
	sovmesh_tensor_set *out = out_like(mh, in[0]);
	sovmesh_error err;
	assert_int_equal(run(mh, in, w, 10, out, &err), 0);
	assert_true(sovmesh_tensor_get(&out->tensors[0], 0) == 3.5);
	/* n = 4: k = floor(0.8) = 0, the plain mean of 1000, 3, -999, 6. */
	assert_int_equal(run(mh, in, w, 4, out, &err), 0);
	assert_true(sovmesh_tensor_get(&out->tensors[0], 0) == 2.5);
	free_sets(mh, in, 10);
	free_set(mh, out);
	mini_host_close(mh);

	/* k = floor(beta * n) even where the double product is just below
	 * the integer: 0.29 * 100 = 28.999999999999996, k must be 29.  The
	 * values i^2 make k = 28 and k = 29 differ. */
	mh = open_agg("agg-trimmed", (const mini_setting[]){{"beta", "0.29"}, {NULL, NULL}});
	sovmesh_tensor_set *many[100];
	double wm[100];
	for (size_t i = 0; i < 100; i++) {
		double x = (double)((i * 37) % 100);
		x *= x;
		many[i] = vec_set(mh, SOVMESH_DTYPE_F64, &x, 1);
		wm[i] = 1;
	}
	out = out_like(mh, many[0]);
	assert_int_equal(run(mh, many, wm, 100, out, &err), 0);
	double s = 0;
	for (size_t i = 29; i <= 70; i++)
		s += (double)(i * i);
	assert_true(sovmesh_tensor_get(&out->tensors[0], 0) == s / 42);
	free_sets(mh, many, 100);
	free_set(mh, out);
	mini_host_close(mh);
}

static void test_trimmed_refuses_nothing_left(void **state)
{
	(void)state;
	/* beta just below 0.5: k = 5 of n = 10 leaves nothing. */
	mini_host *mh = open_agg("agg-trimmed",
	                         (const mini_setting[]){{"beta", "0.49999999999"}, {NULL, NULL}});
	sovmesh_tensor_set *in[10];
	double w[10];
	random_inputs(mh, SOVMESH_DTYPE_F32, 10, in, w);
	sovmesh_tensor_set *out = out_like(mh, in[0]);
	expect_fail(mh, in, w, 10, out, -EINVAL,
	            FRAGS("k=5", "n=10", "need 2k < n", "setting 'beta'"));
	/* n = 9 leaves one (k = 4). */
	sovmesh_error err;
	assert_int_equal(run(mh, in, w, 9, out, &err), 0);
	free_sets(mh, in, 10);
	free_set(mh, out);
	mini_host_close(mh);
}

/* ---- krum ---- */

/* The output is, byte for byte, an input whose reference score is the
 * lowest (up to rounding, for near ties). */
static size_t expect_krum_choice(sovmesh_tensor_set **in, size_t n, size_t f,
                                 const sovmesh_tensor_set *out)
{
	double score[NMAX];
	ref_krum_scores(in, n, f, score);
	size_t best = 0;
	for (size_t i = 1; i < n; i++)
		if (score[i] < score[best])
			best = i;
	for (size_t i = 0; i < n; i++) {
		int same = 1;
		for (size_t k = 0; k < out->count && same; k++)
			same = memcmp(out->tensors[k].data, in[i]->tensors[k].data,
			              out->tensors[k].nbytes) == 0;
		if (same && score[i] <= score[best] * (1 + 1e-9))
			return i;
	}
	fail_msg("krum n=%zu f=%zu: the output is not the best input %zu", n, f, best);
	return n;
}

static void test_krum_random(void **state)
{
	(void)state;
	static const char *const fs[] = {"0", "1", "2"};
	for (size_t fi = 0; fi < 3; fi++) {
		mini_setting st[] = {{"f", fs[fi]}, {NULL, NULL}};
		mini_host *mh = open_agg("agg-krum", st);
		for (size_t d = 0; d < 4; d++) {
			for (size_t s = 0; s < NSIZES; s++) {
				size_t n = sizes[s];
				sovmesh_tensor_set *in[NMAX];
				double w[NMAX];
				random_inputs(mh, all_dtypes[d], n, in, w);
				sovmesh_tensor_set *out = out_like(mh, in[0]);
				if (n <= 2 * fi + 2) {
					char a[32], b[32];
					snprintf(a, sizeof(a), "n=%zu", n);
					snprintf(b, sizeof(b), "f=%zu", fi);
					expect_fail(mh, in, w, n, out, -EINVAL,
					            FRAGS("krum needs more than 2f+2 inputs", a, b,
					                  "setting 'f'"));
				} else {
					sovmesh_error err;
					if (run(mh, in, w, n, out, &err) < 0)
						fail_msg("krum: %s", err.message);
					expect_krum_choice(in, n, fi, out);
				}
				free_sets(mh, in, n);
				free_set(mh, out);
			}
		}
		mini_host_close(mh);
	}
}

/* Five honest inputs around c (one exactly at c), two colluding outliers
 * far away, f = 2: Krum picks the centre of the honest cluster. */
static void make_cluster(mini_host *mh, sovmesh_dtype dt, sovmesh_tensor_set **in)
{
	enum { D = 6 };
	for (size_t i = 0; i < 7; i++) {
		double v[D];
		for (size_t j = 0; j < D; j++) {
			v[j] = 0.5 + 0.125 * (double)j;
			if (i >= 5)
				v[j] = 100; /* the attackers agree with each other */
			else if (i != 2)
				v[j] += j == i ? 0.125 : 0; /* honest spread */
		}
		in[i] = vec_set(mh, dt, v, D);
	}
}

static void test_krum_hand(void **state)
{
	(void)state;
	mini_host *mh = open_agg("agg-krum", (const mini_setting[]){{"f", "2"}, {NULL, NULL}});
	for (size_t d = 0; d < 2; d++) {
		sovmesh_tensor_set *in[7];
		make_cluster(mh, all_dtypes[d], in);
		/* Put the attackers first, so "lowest index" cannot explain it. */
		sovmesh_tensor_set *order[7] = {in[5], in[6], in[0], in[1], in[2], in[3], in[4]};
		double w[7] = {1e6, 1e6, 1, 1, 1, 1, 1}; /* claimed counts do not matter */
		sovmesh_tensor_set *out = out_like(mh, in[0]);
		sovmesh_error err;
		assert_int_equal(run(mh, order, w, 7, out, &err), 0);
		assert_memory_equal(out->tensors[0].data, in[2]->tensors[0].data,
		                    in[2]->tensors[0].nbytes);
		assert_non_null(strstr(mh->last_log, "selected input 4 of 7"));
		free_sets(mh, in, 7);
		free_set(mh, out);
	}
	/* Equal scores: the lowest index wins. */
	sovmesh_tensor_set *same[7];
	double w[7] = {1, 1, 1, 1, 1, 1, 1}, x[3] = {1, 2, 3};
	for (size_t i = 0; i < 7; i++)
		same[i] = vec_set(mh, SOVMESH_DTYPE_F32, x, 3);
	sovmesh_tensor_set *out = out_like(mh, same[0]);
	sovmesh_error err;
	assert_int_equal(run(mh, same, w, 7, out, &err), 0);
	assert_non_null(strstr(mh->last_log, "selected input 0 of 7"));
	free_sets(mh, same, 7);
	free_set(mh, out);
	mini_host_close(mh);
}

/* ---- multikrum ---- */

static void check_multikrum_random(sovmesh_dtype dt, size_t n, size_t f, size_t m_set)
{
	char fs[16], ms[16];
	snprintf(fs, sizeof(fs), "%zu", f);
	snprintf(ms, sizeof(ms), "%zu", m_set);
	mini_setting st[] = {{"f", fs}, {"m", ms}, {NULL, NULL}};
	mini_host *mh = open_agg("agg-multikrum", st);
	sovmesh_tensor_set *in[NMAX];
	double w[NMAX];
	random_inputs(mh, dt, n, in, w);
	sovmesh_tensor_set *out = out_like(mh, in[0]);
	size_t m = m_set ? m_set : n - f;
	if (n <= 2 * f + 2) {
		expect_fail(mh, in, w, n, out, -EINVAL,
		            FRAGS("multikrum needs more than 2f+2 inputs"));
	} else if (m > n) {
		expect_fail(mh, in, w, n, out, -EINVAL, FRAGS("setting 'm'", "n="));
	} else {
		sovmesh_error err;
		if (run(mh, in, w, n, out, &err) < 0)
			fail_msg("multikrum n=%zu f=%zu m=%zu: %s", n, f, m, err.message);
		double score[NMAX];
		size_t idx[NMAX];
		ref_krum_scores(in, n, f, score);
		ref_lowest(score, n, m, idx);
		for (size_t k = 0; k < NT; k++) {
			for (uint64_t j = 0; j < sovmesh_tensor_numel(&out->tensors[k]); j++) {
				double mag;
				double ref = ref_wmean(in, w, idx, m, k, j, &mag);
				expect_close(dt, sovmesh_tensor_get(&out->tensors[k], j), ref, mag,
				             "multikrum", names[k], j);
			}
		}
	}
	free_sets(mh, in, n);
	free_set(mh, out);
	mini_host_close(mh);
}

static void test_multikrum_random(void **state)
{
	(void)state;
	for (size_t d = 0; d < 4; d++)
		for (size_t s = 0; s < NSIZES; s++)
			for (size_t f = 0; f < 2; f++) {
				static const size_t ms[] = {0, 1, 2, 11, 12};
				for (size_t q = 0; q < 5; q++)
					check_multikrum_random(all_dtypes[d], sizes[s], f, ms[q]);
			}
}

static void test_multikrum_hand(void **state)
{
	(void)state;
	/* Three inputs close together, three far apart, f = 1, m = 3: the
	 * weighted mean of the close three, whatever the far ones claim. */
	mini_host *mh =
	    open_agg("agg-multikrum", (const mini_setting[]){{"f", "1"}, {"m", "3"}, {NULL, NULL}});
	static const double v[6] = {50, 0, 200, 0.25, -120, 0.5};
	double w[6] = {1000, 1, 1000, 2, 1000, 5};
	sovmesh_tensor_set *in[6];
	for (size_t i = 0; i < 6; i++)
		in[i] = vec_set(mh, SOVMESH_DTYPE_F64, &v[i], 1);
	sovmesh_tensor_set *out = out_like(mh, in[0]);
	sovmesh_error err;
	assert_int_equal(run(mh, in, w, 6, out, &err), 0);
	assert_true(fabs(sovmesh_tensor_get(&out->tensors[0], 0) - 3.0 / 8) < 1e-15);
	/* Lowest score first: 0.5, 0.25, 0. */
	assert_non_null(strstr(mh->last_log, "averaged 3 of 6 inputs (f=1): 5,3,1"));
	/* m larger than n. */
	mini_host *m7 = open_agg("agg-multikrum", (const mini_setting[]){{"m", "7"}, {NULL, NULL}});
	expect_fail(m7, in, w, 6, out, -EINVAL, FRAGS("setting 'm' is 7", "n=6"));
	mini_host_close(m7);
	free_sets(mh, in, 6);
	free_set(mh, out);
	mini_host_close(mh);
}

/* m = 1 is Krum, bit for bit. */
static void test_multikrum_m1_is_krum(void **state)
{
	(void)state;
	mini_host *mk = open_agg("agg-multikrum", (const mini_setting[]){{"m", "1"}, {NULL, NULL}});
	mini_host *kr = open_agg("agg-krum", NULL);
	sovmesh_tensor_set *in[8];
	double w[8];
	random_inputs(mk, SOVMESH_DTYPE_F32, 8, in, w);
	sovmesh_tensor_set *a = out_like(mk, in[0]), *b = out_like(mk, in[0]);
	sovmesh_error err;
	assert_int_equal(run(mk, in, w, 8, a, &err), 0);
	assert_int_equal(run(kr, in, w, 8, b, &err), 0);
	for (size_t k = 0; k < NT; k++)
		assert_memory_equal(a->tensors[k].data, b->tensors[k].data, a->tensors[k].nbytes);
	free_sets(mk, in, 8);
	free_set(mk, a);
	free_set(mk, b);
	mini_host_close(kr);
	mini_host_close(mk);
}

/* ---- fedavgm ---- */

static void test_fedavgm_two_calls_exact(void **state)
{
	(void)state;
	static const mini_setting st[] = {{"server_lr", "2"}, {"momentum", "0.5"}, {NULL, NULL}};
	mini_host *mh = open_agg("agg-fedavgm", st);
	for (size_t d = 0; d < 4; d++) {
		sovmesh_dtype dt = all_dtypes[d];
		static const double a[2] = {1, 2}, b[2] = {3, 4}, c[2] = {1, 1}, e[2] = {3, 3};
		sovmesh_tensor_set *in[2] = {vec_set(mh, dt, a, 2), vec_set(mh, dt, b, 2)};
		sovmesh_tensor_set *out = out_like(mh, in[0]);
		double w1[2] = {1, 1};
		sovmesh_error err;
		/* avg = [2, 3]; v = [2, 3]; out = 2 v = [4, 6] */
		assert_int_equal(run(mh, in, w1, 2, out, &err), 0);
		assert_true(sovmesh_tensor_get(&out->tensors[0], 0) == 4);
		assert_true(sovmesh_tensor_get(&out->tensors[0], 1) == 6);
		free_sets(mh, in, 2);
		/* avg = (1 * 1 + 3 * 3) / 4 = 2.5; v = 0.5 [2, 3] + 2.5 = [3.5, 4];
		 * out = [7, 8] */
		in[0] = vec_set(mh, dt, c, 2);
		in[1] = vec_set(mh, dt, e, 2);
		double w2[2] = {1, 3};
		assert_int_equal(run(mh, in, w2, 2, out, &err), 0);
		assert_true(sovmesh_tensor_get(&out->tensors[0], 0) == 7);
		assert_true(sovmesh_tensor_get(&out->tensors[0], 1) == 8);
		free_sets(mh, in, 2);
		free_set(mh, out);
		/* Next dtype: a new instance (v is per instance). */
		mini_host_close(mh);
		mh = open_agg("agg-fedavgm", st);
	}
	mini_host_close(mh);
}

/* Three rounds of random deltas against v kept in the test. */
static void check_fedavgm_random(sovmesh_dtype dt, size_t n, const char *lr, const char *mu)
{
	mini_host *mh =
	    open_agg("agg-fedavgm",
	             (const mini_setting[]){{"server_lr", lr}, {"momentum", mu}, {NULL, NULL}});
	double lrv = strtod(lr, NULL), muv = strtod(mu, NULL);
	size_t total = 0;
	for (size_t k = 0; k < NT; k++)
		total += (size_t)(shapes[k][0] * (shapes[k][1] ? shapes[k][1] : 1) *
		                  (shapes[k][2] ? shapes[k][2] : 1));
	double *v = calloc(total, sizeof(double)), *vmag = calloc(total, sizeof(double));
	assert_non_null(v);
	assert_non_null(vmag);
	for (int round = 0; round < 3; round++) {
		sovmesh_tensor_set *in[NMAX];
		double w[NMAX];
		random_inputs(mh, dt, n, in, w);
		sovmesh_tensor_set *out = out_like(mh, in[0]);
		sovmesh_error err;
		if (run(mh, in, w, n, out, &err) < 0)
			fail_msg("fedavgm: %s", err.message);
		size_t off = 0;
		for (size_t k = 0; k < NT; k++) {
			for (uint64_t j = 0; j < sovmesh_tensor_numel(&out->tensors[k]); j++) {
				double mag;
				double avg = ref_wmean(in, w, NULL, n, k, j, &mag);
				v[off] = muv * v[off] + avg;
				vmag[off] = muv * vmag[off] + mag;
				expect_close(dt, sovmesh_tensor_get(&out->tensors[k], j),
				             lrv * v[off], lrv * vmag[off], "fedavgm", names[k], j);
				off++;
			}
		}
		free_sets(mh, in, n);
		free_set(mh, out);
	}
	free(v);
	free(vmag);
	mini_host_close(mh);
}

static void test_fedavgm_random(void **state)
{
	(void)state;
	for (size_t d = 0; d < 4; d++)
		for (size_t s = 0; s < NSIZES; s++)
			check_fedavgm_random(all_dtypes[d], sizes[s], "1.0", "0.9");
	check_fedavgm_random(SOVMESH_DTYPE_F64, 5, "0.3", "0");
	check_fedavgm_random(SOVMESH_DTYPE_F32, 3, "2.5", "0.99");
}

/* One input, defaults, first call: out = 1.0 * (0.9 * 0 + x) = x exactly. */
static void test_fedavgm_single_input_unchanged(void **state)
{
	(void)state;
	for (size_t d = 0; d < 4; d++) {
		mini_host *mh = open_agg("agg-fedavgm", NULL);
		sovmesh_tensor_set *in = make(mh, all_dtypes[d]);
		fill_random(in);
		sovmesh_tensor_set *out = out_like(mh, in);
		double w = 7;
		sovmesh_error err;
		assert_int_equal(run(mh, &in, &w, 1, out, &err), 0);
		for (size_t k = 0; k < NT; k++)
			assert_memory_equal(out->tensors[k].data, in->tensors[k].data,
			                    in->tensors[k].nbytes);
		free_set(mh, in);
		free_set(mh, out);
		mini_host_close(mh);
	}
}

/* The F16 output is rounded once from double, not via float: the mean
 * 1 + 2^-11 + 2^-30 is just above the tie between 1 and 1 + 2^-10
 * (as in test_agg_fedavg; the helpers are shared by every plugin). */
static void test_f16_rounds_once(void **state)
{
	(void)state;
	mini_host *mh = open_agg("agg-fedavgm", NULL);
	sovmesh_tensor_set *in[2] = {vec_set(mh, SOVMESH_DTYPE_F16, NULL, 1),
	                             vec_set(mh, SOVMESH_DTYPE_F16, NULL, 1)};
	uint16_t one = 0x3c00, next = 0x3c01, got;
	memcpy(in[0]->tensors[0].data, &one, 2);
	memcpy(in[1]->tensors[0].data, &next, 2);
	sovmesh_tensor_set *out = out_like(mh, in[0]);
	double w[2] = {0x1p19 - 1, 0x1p19 + 1};
	sovmesh_error err;
	assert_int_equal(run(mh, in, w, 2, out, &err), 0);
	memcpy(&got, out->tensors[0].data, 2);
	assert_int_equal(got, 0x3c01);
	free_sets(mh, in, 2);
	free_set(mh, out);
	mini_host_close(mh);
}

static double value0(const sovmesh_tensor_set *s)
{
	return sovmesh_tensor_get(&s->tensors[0], 0);
}

/* A new layout resets v with a warning; back to it, momentum goes on. */
static void test_fedavgm_layout_reset(void **state)
{
	(void)state;
	mini_host *mh =
	    open_agg("agg-fedavgm", (const mini_setting[]){{"momentum", "0.5"}, {NULL, NULL}});
	double one = 1, w = 1;
	sovmesh_tensor_set *a = vec_set(mh, SOVMESH_DTYPE_F64, &one, 1);
	double two[2] = {2, 2};
	sovmesh_tensor_set *b = vec_set(mh, SOVMESH_DTYPE_F64, two, 2); /* shape [2] */
	sovmesh_tensor_set *oa = out_like(mh, a), *ob = out_like(mh, b);
	sovmesh_error err;
	assert_int_equal(run(mh, &a, &w, 1, oa, &err), 0);
	assert_true(value0(oa) == 1);
	assert_int_equal(run(mh, &a, &w, 1, oa, &err), 0);
	assert_true(value0(oa) == 1.5);
	unsigned logs = mh->log_count;
	assert_int_equal(run(mh, &b, &w, 1, ob, &err), 0);
	assert_true(value0(ob) == 2); /* v was reset: 0.5 * 0 + 2 */
	assert_int_equal(mh->log_count, logs + 1);
	assert_int_equal(mh->last_log_level, SOVMESH_LOG_WARNING);
	assert_non_null(strstr(mh->last_log, "layout changed"));
	assert_non_null(strstr(mh->last_log, "momentum reset"));
	assert_int_equal(run(mh, &b, &w, 1, ob, &err), 0);
	assert_true(value0(ob) == 3); /* 0.5 * 2 + 2 */
	assert_int_equal(mh->log_count, logs + 1);
	/* A dtype change of the same adapter keeps v (it is F64 anyway). */
	sovmesh_tensor_set *b32 = vec_set(mh, SOVMESH_DTYPE_F32, two, 2);
	sovmesh_tensor_set *ob32 = out_like(mh, b32);
	assert_int_equal(run(mh, &b32, &w, 1, ob32, &err), 0);
	assert_true(value0(ob32) == 3.5);
	assert_int_equal(mh->log_count, logs + 1);
	free_set(mh, a);
	free_set(mh, b);
	free_set(mh, b32);
	free_set(mh, oa);
	free_set(mh, ob);
	free_set(mh, ob32);
	mini_host_close(mh);
}

/* A refused call (bad value, bad weight, overflow, even with a new
 * layout) leaves v as it was. */
static void test_fedavgm_refusal_keeps_state(void **state)
{
	(void)state;
	mini_host *mh = open_agg(
	    "agg-fedavgm",
	    (const mini_setting[]){{"momentum", "0.5"}, {"server_lr", "1000"}, {NULL, NULL}});
	double x[2] = {1, 1}, w = 1;
	sovmesh_tensor_set *a = vec_set(mh, SOVMESH_DTYPE_F32, x, 2);
	sovmesh_tensor_set *out = out_like(mh, a);
	sovmesh_error err;
	assert_int_equal(run(mh, &a, &w, 1, out, &err), 0); /* v = 1 */
	assert_true(value0(out) == 1000);

	sovmesh_tensor_set_value(&a->tensors[0], 1, NAN);
	expect_fail(mh, &a, &w, 1, out, -EINVAL, FRAGS("input 0: tensor 'x' element 1 is NaN"));
	sovmesh_tensor_set_value(&a->tensors[0], 1, 1);
	double bad_w = 0;
	expect_fail(mh, &a, &bad_w, 1, out, -EINVAL, FRAGS("input 0: weight"));

	/* A new layout with a NaN: refused, and no reset either. */
	double y[3] = {1, INFINITY, 1};
	sovmesh_tensor_set *c = vec_set(mh, SOVMESH_DTYPE_F32, y, 3);
	sovmesh_tensor_set *oc = out_like(mh, c);
	unsigned logs = mh->log_count;
	expect_fail(mh, &c, &w, 1, oc, -EINVAL, FRAGS("element 1 is +Inf"));
	assert_int_equal(mh->log_count, logs);

	/* F16 output beyond 65504: refused naming the settings. */
	double big[2] = {100, 100};
	sovmesh_tensor_set *h = vec_set(mh, SOVMESH_DTYPE_F16, big, 2);
	sovmesh_tensor_set *oh = out_like(mh, h);
	expect_fail(mh, &h, &w, 1, oh, -ERANGE,
	            FRAGS("output tensor 'x'", "F16", "'server_lr'", "'momentum'"));

	/* v is still 1: 0.5 * 1 + 1 = 1.5. */
	assert_int_equal(run(mh, &a, &w, 1, out, &err), 0);
	assert_true(value0(out) == 1500);
	assert_int_equal(mh->log_count, logs);
	free_set(mh, a);
	free_set(mh, out);
	free_set(mh, c);
	free_set(mh, oc);
	free_set(mh, h);
	free_set(mh, oh);
	mini_host_close(mh);
}

/* ---- refusals common to all five ---- */

static mini_host *open_for_refusals(size_t p)
{
	/* f = 1 everywhere: n = 5 inputs are enough for krum and multikrum. */
	static const mini_setting f1[] = {{"f", "1"}, {NULL, NULL}};
	return open_agg(plugin_files[p], p == 2 || p == 3 ? f1 : NULL);
}

static void test_refuse_no_inputs(void **state)
{
	(void)state;
	for (size_t p = 0; p < NPLUGINS; p++) {
		mini_host *mh = open_for_refusals(p);
		sovmesh_tensor_set *out = mh->api.tensor_set_new(mh->host, NULL, 0);
		sovmesh_tensor_set *in[1] = {NULL};
		double w[1] = {1};
		expect_fail(mh, in, w, 0, out, -EINVAL, FRAGS("no inputs", "n == 0"));
		free_set(mh, out);
		mini_host_close(mh);
	}
}

static void test_refuse_layout(void **state)
{
	(void)state;
	for (size_t p = 0; p < NPLUGINS; p++) {
		mini_host *mh = open_for_refusals(p);
		sovmesh_tensor_set *in[5];
		double w[5];
		random_inputs(mh, SOVMESH_DTYPE_F32, 5, in, w);
		sovmesh_tensor_set *out = out_like(mh, in[0]);
		in[3]->tensors[2].shape[2] = 6;
		expect_fail(mh, in, w, 5, out, -EINVAL,
		            FRAGS("input 3", "'c.lora_B'", "[3,4,6]", "[3,4,5]"));
		in[3]->tensors[2].shape[2] = 5;
		free((char *)in[4]->tensors[1].name);
		in[4]->tensors[1].name = strdup("b.other");
		expect_fail(mh, in, w, 5, out, -EINVAL, FRAGS("input 4", "'b.other'", "'b.bias'"));
		free_set(mh, in[4]);
		in[4] = make(mh, SOVMESH_DTYPE_F64);
		expect_fail(mh, in, w, 5, out, -EINVAL, FRAGS("input 4", "F64", "F32"));
		free_set(mh, in[4]);
		in[4] = mini_host_make_set(mh, 2, names, SOVMESH_DTYPE_F32, ndims, shapes);
		expect_fail(mh, in, w, 5, out, -EINVAL, FRAGS("input 4 has 2 tensors"));
		free_sets(mh, in, 5);
		free_set(mh, out);
		mini_host_close(mh);
	}
}

static void test_refuse_nonfinite(void **state)
{
	(void)state;
	for (size_t p = 0; p < NPLUGINS; p++) {
		for (size_t d = 0; d < 4; d++) {
			mini_host *mh = open_for_refusals(p);
			sovmesh_tensor_set *in[5];
			double w[5];
			random_inputs(mh, all_dtypes[d], 5, in, w);
			sovmesh_tensor_set *out = out_like(mh, in[0]);
			sovmesh_tensor_set_value(&in[1]->tensors[1], 5, NAN);
			expect_fail(mh, in, w, 5, out, -EINVAL,
			            FRAGS("input 1: tensor 'b.bias' element 5 is NaN"));
			sovmesh_tensor_set_value(&in[1]->tensors[1], 5, 0.5);
			sovmesh_tensor_set_value(&in[4]->tensors[3], 2099, -INFINITY);
			expect_fail(mh, in, w, 5, out, -EINVAL,
			            FRAGS("input 4: tensor 'd.big' element 2099 is -Inf"));
			free_sets(mh, in, 5);
			free_set(mh, out);
			mini_host_close(mh);
		}
	}
}

static void test_refuse_weights(void **state)
{
	(void)state;
	static const double bad[] = {0.0, -3.0, NAN, INFINITY, -0.0};
	for (size_t p = 0; p < NPLUGINS; p++) {
		mini_host *mh = open_for_refusals(p);
		sovmesh_tensor_set *in[5];
		double w[5];
		random_inputs(mh, SOVMESH_DTYPE_F32, 5, in, w);
		sovmesh_tensor_set *out = out_like(mh, in[0]);
		for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
			w[2] = bad[b];
			expect_fail(mh, in, w, 5, out, -EINVAL,
			            FRAGS("input 2: weight", "positive finite"));
		}
		free_sets(mh, in, 5);
		free_set(mh, out);
		mini_host_close(mh);
	}
}

static void test_refuse_unsupported_dtype(void **state)
{
	(void)state;
	for (size_t p = 0; p < NPLUGINS; p++) {
		mini_host *mh = open_for_refusals(p);
		sovmesh_tensor_set *in[5];
		double w[5] = {1, 1, 1, 1, 1};
		for (size_t i = 0; i < 5; i++)
			in[i] = make(mh, SOVMESH_DTYPE_I32);
		sovmesh_tensor_set *out = out_like(mh, in[0]);
		expect_fail(mh, in, w, 5, out, -ENOTSUP,
		            FRAGS("'a.lora_A'", "I32", mh->desc->name));
		free_sets(mh, in, 5);
		free_set(mh, out);
		mini_host_close(mh);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_descriptors),
	    cmocka_unit_test(test_settings_refused),
	    cmocka_unit_test(test_sorting_network),
	    cmocka_unit_test(test_median_random),
	    cmocka_unit_test(test_median_hand),
	    cmocka_unit_test(test_weights_and_order_ignored),
	    cmocka_unit_test(test_trimmed_random),
	    cmocka_unit_test(test_trimmed_hand),
	    cmocka_unit_test(test_trimmed_refuses_nothing_left),
	    cmocka_unit_test(test_krum_random),
	    cmocka_unit_test(test_krum_hand),
	    cmocka_unit_test(test_multikrum_random),
	    cmocka_unit_test(test_multikrum_hand),
	    cmocka_unit_test(test_multikrum_m1_is_krum),
	    cmocka_unit_test(test_fedavgm_two_calls_exact),
	    cmocka_unit_test(test_fedavgm_random),
	    cmocka_unit_test(test_fedavgm_single_input_unchanged),
	    cmocka_unit_test(test_fedavgm_layout_reset),
	    cmocka_unit_test(test_fedavgm_refusal_keeps_state),
	    cmocka_unit_test(test_f16_rounds_once),
	    cmocka_unit_test(test_refuse_no_inputs),
	    cmocka_unit_test(test_refuse_layout),
	    cmocka_unit_test(test_refuse_nonfinite),
	    cmocka_unit_test(test_refuse_weights),
	    cmocka_unit_test(test_refuse_unsupported_dtype),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

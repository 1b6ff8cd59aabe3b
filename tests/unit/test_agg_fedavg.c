/* agg-fedavg (plugins/agg-fedavg/fedavg.c), loaded through mini_host. */
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

#include "mini_host.h"

#define NT 3
static const char *const names[NT] = {"a.lora_A", "b.bias", "c.lora_B"};
static const uint32_t ndims[NT] = {2, 1, 3};
/* 91, 64 and 60 elements: the odd sizes exercise the vector tails. */
static const uint64_t shapes[NT][SOVMESH_TENSOR_MAX_DIMS] = {{7, 13}, {64}, {3, 4, 5}};

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

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

typedef struct fixture {
	mini_host *mh;
	const sovmesh_aggregator_ops *ops;
} fixture;

static int setup(void **state)
{
	fixture *f = calloc(1, sizeof(*f));
	sovmesh_error err = {0};
	if (!f || mini_host_open("agg-fedavg", NULL, &f->mh, &err) < 0) {
		fprintf(stderr, "cannot load agg-fedavg: %s\n", err.message);
		free(f);
		return -1;
	}
	f->ops = f->mh->desc->ops;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fixture *f = *state;
	mini_host_close(f->mh);
	free(f);
	return 0;
}

static sovmesh_tensor_set *make(fixture *f, sovmesh_dtype dt)
{
	sovmesh_tensor_set *s = mini_host_make_set(f->mh, NT, names, dt, ndims, shapes);
	assert_non_null(s);
	return s;
}

/* Random values over many binades, including F16 subnormals, stored
 * (rounded) in the set's dtype. */
static void fill_random(sovmesh_tensor_set *s)
{
	for (size_t k = 0; k < s->count; k++) {
		sovmesh_tensor *t = &s->tensors[k];
		for (uint64_t j = 0; j < sovmesh_tensor_numel(t); j++) {
			double v = ldexp(2 * next_unit() - 1, (int)(next_u64() % 29) - 20);
			sovmesh_tensor_set_value(t, j, v);
		}
	}
}

static void free_set(fixture *f, sovmesh_tensor_set *s)
{
	f->mh->api.tensor_set_free(f->mh->host, s);
}

static int run(fixture *f, sovmesh_tensor_set **in, const double *w, size_t n,
               sovmesh_tensor_set *out, sovmesh_error *err)
{
	memset(err, 0, sizeof(*err));
	return f->ops->aggregate(f->mh->instance, (const sovmesh_tensor_set *const *)in, w, n, out,
	                         err);
}

/* v rounded to dtype dt (the SDK's rounding; monotone). */
static double round_to(sovmesh_dtype dt, double v)
{
	unsigned char buf[8];
	sovmesh_tensor t = {.dtype = dt, .data = buf};
	sovmesh_tensor_set_value(&t, 0, v);
	return sovmesh_tensor_get(&t, 0);
}

static void test_descriptor(void **state)
{
	fixture *f = *state;
	assert_string_equal(f->mh->desc->name, "fedavg");
	assert_int_equal(f->mh->desc->kind, SOVMESH_KIND_AGGREGATOR);
	assert_null(f->mh->desc->settings);
	assert_true(f->ops->size >= sizeof(sovmesh_aggregator_ops));
}

/*
 * Against a straightforward double reference on the decoded inputs: the
 * output must lie between the dtype roundings of ref -/+ 1e-6 relative
 * (relative to sum w|x| / sum w, so cancellation does not make the bound
 * meaningless).  In the narrow dtypes most values must equal the rounded
 * reference exactly.
 */
static void check_random(fixture *f, sovmesh_dtype dt)
{
	enum { N = 5 };
	sovmesh_tensor_set *in[N];
	double w[N];
	for (size_t i = 0; i < N; i++) {
		in[i] = make(f, dt);
		fill_random(in[i]);
		w[i] = (double)(1 + next_u64() % 5000);
	}
	w[3] += 0.25; /* weights need not be integers */
	sovmesh_tensor_set *out = f->mh->api.tensor_set_new(f->mh->host, in[0], in[0]->count);
	assert_non_null(out);
	sovmesh_error err;
	assert_int_equal(run(f, in, w, N, out, &err), 0);

	uint64_t total = 0, exact = 0;
	for (size_t k = 0; k < NT; k++) {
		const sovmesh_tensor *o = &out->tensors[k];
		assert_int_equal(o->dtype, dt);
		for (uint64_t j = 0; j < sovmesh_tensor_numel(o); j++) {
			double num = 0, den = 0, mag = 0;
			for (size_t i = 0; i < N; i++) {
				double x = sovmesh_tensor_get(&in[i]->tensors[k], j);
				num += w[i] * x;
				mag += w[i] * fabs(x);
				den += w[i];
			}
			double ref = num / den, tol = 1e-6 * mag / den;
			double got = sovmesh_tensor_get(o, j);
			double lo = round_to(dt, ref - tol), hi = round_to(dt, ref + tol);
			if (!(got >= lo && got <= hi))
				fail_msg("dtype %d tensor %s[%llu]: got %.17g, reference %.17g", dt,
				         o->name, (unsigned long long)j, got, ref);
			if (dt == SOVMESH_DTYPE_F64)
				assert_true(fabs(got - ref) <= 1e-12 * mag / den);
			exact += got == round_to(dt, ref);
			total++;
		}
	}
	if (dt != SOVMESH_DTYPE_F64) /* F64 results differ from ref in the last ulps */
		assert_true(exact * 100 >= total * 99);
	for (size_t i = 0; i < N; i++)
		free_set(f, in[i]);
	free_set(f, out);
}

static void test_random_f32(void **state)
{
	check_random(*state, SOVMESH_DTYPE_F32);
}

static void test_random_f16(void **state)
{
	check_random(*state, SOVMESH_DTYPE_F16);
}

static void test_random_bf16(void **state)
{
	check_random(*state, SOVMESH_DTYPE_BF16);
}

static void test_random_f64(void **state)
{
	check_random(*state, SOVMESH_DTYPE_F64);
}

/* The F16 output is rounded once from the double sum, not via float:
 * 1 + 2^-11 + 2^-30 is just above the tie between 1 and 1 + 2^-10. */
static void test_f16_rounds_once(void **state)
{
	fixture *f = *state;
	static const char *const nm[1] = {"x"};
	static const uint32_t nd[1] = {1};
	static const uint64_t sh[1][SOVMESH_TENSOR_MAX_DIMS] = {{1}};
	sovmesh_tensor_set *a = mini_host_make_set(f->mh, 1, nm, SOVMESH_DTYPE_F16, nd, sh);
	sovmesh_tensor_set *b = mini_host_make_set(f->mh, 1, nm, SOVMESH_DTYPE_F16, nd, sh);
	sovmesh_tensor_set *out = mini_host_make_set(f->mh, 1, nm, SOVMESH_DTYPE_F16, nd, sh);
	uint16_t one = 0x3c00, next = 0x3c01;
	memcpy(a->tensors[0].data, &one, 2);
	memcpy(b->tensors[0].data, &next, 2);
	/* Plain double -> float -> half lands on the tie and rounds down. */
	assert_int_equal(sovmesh_f32_to_f16((float)(1 + 0x1p-11 + 0x1p-30)), 0x3c00);

	sovmesh_tensor_set *in[2] = {a, b};
	double w[2] = {0x1p19 - 1, 0x1p19 + 1}; /* b's share: 1/2 + 2^-20 */
	sovmesh_error err;
	assert_int_equal(run(f, in, w, 2, out, &err), 0);
	uint16_t got;
	memcpy(&got, out->tensors[0].data, 2);
	assert_int_equal(got, 0x3c01);
	free_set(f, a);
	free_set(f, b);
	free_set(f, out);
}

/* One input comes back bit for bit, edge values included. */
static void test_single_input_unchanged(void **state)
{
	fixture *f = *state;
	static const sovmesh_dtype dts[] = {SOVMESH_DTYPE_F32, SOVMESH_DTYPE_F16,
	                                    SOVMESH_DTYPE_BF16, SOVMESH_DTYPE_F64};
	for (size_t d = 0; d < 4; d++) {
		sovmesh_tensor_set *in = make(f, dts[d]);
		fill_random(in);
		unsigned char *p = in->tensors[1].data;
		switch (dts[d]) {
		case SOVMESH_DTYPE_F32: {
			float v[] = {-0.0f, FLT_MAX, -FLT_TRUE_MIN, FLT_MIN};
			memcpy(p, v, sizeof(v));
			break;
		}
		case SOVMESH_DTYPE_F64: {
			double v[] = {-0.0, DBL_MAX, -DBL_TRUE_MIN, DBL_MIN};
			memcpy(p, v, sizeof(v));
			break;
		}
		case SOVMESH_DTYPE_F16: {
			uint16_t v[] = {0x8000, 0x7bff, 0x8001, 0x03ff, 0x0400};
			memcpy(p, v, sizeof(v));
			break;
		}
		default: {
			uint16_t v[] = {0x8000, 0x7f7f, 0x8001, 0x007f, 0xff7f};
			memcpy(p, v, sizeof(v));
			break;
		}
		}
		sovmesh_tensor_set *out = f->mh->api.tensor_set_new(f->mh->host, in, in->count);
		double w = 3.5;
		sovmesh_error err;
		assert_int_equal(run(f, &in, &w, 1, out, &err), 0);
		for (size_t k = 0; k < NT; k++)
			assert_memory_equal(out->tensors[k].data, in->tensors[k].data,
			                    in->tensors[k].nbytes);
		free_set(f, in);
		free_set(f, out);
	}
}

/* ---- refusals ---- */

typedef struct bad_case {
	sovmesh_tensor_set *in[3];
	double w[3];
	sovmesh_tensor_set *out;
} bad_case;

static void bad_setup(fixture *f, bad_case *c, sovmesh_dtype dt)
{
	for (size_t i = 0; i < 3; i++) {
		c->in[i] = make(f, dt);
		fill_random(c->in[i]);
		c->w[i] = 10.0 * (double)(i + 1);
	}
	c->out = make(f, dt);
}

static void bad_free(fixture *f, bad_case *c)
{
	for (size_t i = 0; i < 3; i++)
		free_set(f, c->in[i]);
	free_set(f, c->out);
}

/* aggregate fails with `code` and a message containing every fragment. */
static void expect_refusal(fixture *f, bad_case *c, size_t n, int code, const char *const *frags)
{
	sovmesh_error err;
	int rc = run(f, c->in, c->w, n, c->out, &err);
	if (rc != code)
		fail_msg("expected %d, got %d (%s)", code, rc, err.message);
	assert_int_equal(err.code, code);
	assert_null(strchr(err.message, '\n'));
	for (size_t i = 0; frags[i]; i++)
		if (!strstr(err.message, frags[i]))
			fail_msg("message '%s' lacks '%s'", err.message, frags[i]);
}

#define FRAGS(...)                                                                                 \
	(const char *const[])                                                                      \
	{                                                                                          \
		__VA_ARGS__, NULL                                                                  \
	}

static void test_refuse_name(void **state)
{
	fixture *f = *state;
	bad_case c;
	bad_setup(f, &c, SOVMESH_DTYPE_F32);
	free((char *)c.in[2]->tensors[1].name);
	c.in[2]->tensors[1].name = strdup("b.other");
	expect_refusal(f, &c, 3, -EINVAL, FRAGS("input 2", "'b.other'", "'b.bias'"));
	bad_free(f, &c);
}

static void test_refuse_shape(void **state)
{
	fixture *f = *state;
	bad_case c;
	bad_setup(f, &c, SOVMESH_DTYPE_F32);
	c.in[1]->tensors[2].shape[2] = 6; /* nbytes now lies too; shape is checked first */
	expect_refusal(f, &c, 3, -EINVAL, FRAGS("input 1", "'c.lora_B'", "[3,4,6]", "[3,4,5]"));
	c.in[1]->tensors[2].shape[2] = 5;
	c.in[1]->tensors[2].ndim = 2;
	expect_refusal(f, &c, 3, -EINVAL, FRAGS("input 1", "'c.lora_B'", "[3,4]", "[3,4,5]"));
	c.in[1]->tensors[2].ndim = 3;
	bad_free(f, &c);
}

static void test_refuse_dtype(void **state)
{
	fixture *f = *state;
	bad_case c;
	bad_setup(f, &c, SOVMESH_DTYPE_F32);
	free_set(f, c.in[1]);
	c.in[1] = make(f, SOVMESH_DTYPE_F16);
	expect_refusal(f, &c, 3, -EINVAL, FRAGS("input 1", "'a.lora_A'", "F16", "F32"));
	bad_free(f, &c);
}

static void test_refuse_count(void **state)
{
	fixture *f = *state;
	bad_case c;
	bad_setup(f, &c, SOVMESH_DTYPE_F32);
	free_set(f, c.in[2]);
	c.in[2] = mini_host_make_set(f->mh, 2, names, SOVMESH_DTYPE_F32, ndims, shapes);
	expect_refusal(f, &c, 3, -EINVAL, FRAGS("input 2 has 2 tensors", "input 0 has 3"));
	bad_free(f, &c);
}

/* NaN and Inf are caught in each dtype's loop, in the vector body and in
 * the tail, naming input, tensor and element. */
static void test_refuse_nonfinite(void **state)
{
	fixture *f = *state;
	static const sovmesh_dtype dts[] = {SOVMESH_DTYPE_F32, SOVMESH_DTYPE_F16,
	                                    SOVMESH_DTYPE_BF16, SOVMESH_DTYPE_F64};
	for (size_t d = 0; d < 4; d++) {
		bad_case c;
		bad_setup(f, &c, dts[d]);
		sovmesh_tensor_set_value(&c.in[1]->tensors[1], 5, NAN);
		expect_refusal(f, &c, 3, -EINVAL,
		               FRAGS("input 1: tensor 'b.bias' element 5 is NaN"));
		sovmesh_tensor_set_value(&c.in[1]->tensors[1], 5, 1.0);
		sovmesh_tensor_set_value(&c.in[2]->tensors[2], 59, -INFINITY);
		expect_refusal(f, &c, 3, -EINVAL,
		               FRAGS("input 2: tensor 'c.lora_B' element 59 is -Inf"));
		sovmesh_tensor_set_value(&c.in[2]->tensors[2], 59, 1.0);
		sovmesh_tensor_set_value(&c.in[0]->tensors[0], 0, INFINITY);
		expect_refusal(f, &c, 3, -EINVAL,
		               FRAGS("input 0: tensor 'a.lora_A' element 0 is +Inf"));
		bad_free(f, &c);
	}
}

static void test_refuse_weights(void **state)
{
	fixture *f = *state;
	bad_case c;
	bad_setup(f, &c, SOVMESH_DTYPE_F32);
	static const double bad[] = {0.0, -3.0, NAN, INFINITY, -0.0};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		c.w[1] = bad[i];
		expect_refusal(f, &c, 3, -EINVAL, FRAGS("input 1: weight", "positive finite"));
	}
	bad_free(f, &c);
}

static void test_refuse_no_inputs(void **state)
{
	fixture *f = *state;
	bad_case c;
	bad_setup(f, &c, SOVMESH_DTYPE_F32);
	expect_refusal(f, &c, 0, -EINVAL, FRAGS("no inputs", "n == 0"));
	bad_free(f, &c);
}

static void test_refuse_unsupported_dtype(void **state)
{
	fixture *f = *state;
	bad_case c;
	bad_setup(f, &c, SOVMESH_DTYPE_I32);
	expect_refusal(f, &c, 3, -ENOTSUP, FRAGS("'a.lora_A'", "I32"));
	bad_free(f, &c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_descriptor),
	    cmocka_unit_test(test_random_f32),
	    cmocka_unit_test(test_random_f16),
	    cmocka_unit_test(test_random_bf16),
	    cmocka_unit_test(test_random_f64),
	    cmocka_unit_test(test_f16_rounds_once),
	    cmocka_unit_test(test_single_input_unchanged),
	    cmocka_unit_test(test_refuse_name),
	    cmocka_unit_test(test_refuse_shape),
	    cmocka_unit_test(test_refuse_dtype),
	    cmocka_unit_test(test_refuse_count),
	    cmocka_unit_test(test_refuse_nonfinite),
	    cmocka_unit_test(test_refuse_weights),
	    cmocka_unit_test(test_refuse_no_inputs),
	    cmocka_unit_test(test_refuse_unsupported_dtype),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}

/*
 * fl_delta.c: the delta arithmetic (exact F32 and F64 values, layout
 * mismatches, overflow, non-float tensors) and the wire message: a round
 * trip that replaces the trainer's metadata, and one refusal per way a
 * received delta can be wrong, each with the reason it gives.
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
#include <jansson.h>

#include "fl_delta.h"
#include "safetensors.h"
#include "tensor_set.h"

#define NAME_A "m.lora_A.weight"
#define NAME_B "m.lora_B.weight"
#define MAX_BYTES (1u << 20)

/* Two tensors, sorted by name (as a parsed adapter is): A [2,2], B [3],
 * both of `dtype`, values base + i. */
static sovmesh_tensor_set *pair_set(sovmesh_dtype dtype, double base)
{
	sovmesh_tensor_set *set = tset_new(NULL, 2);
	assert_non_null(set);
	uint64_t sa[2] = {2, 2}, sb[1] = {3};
	assert_int_equal(tset_init_tensor(set, 0, NAME_A, dtype, 2, sa), 0);
	assert_int_equal(tset_init_tensor(set, 1, NAME_B, dtype, 1, sb), 0);
	for (size_t k = 0; k < 2; k++)
		for (uint64_t i = 0; i < sovmesh_tensor_numel(&set->tensors[k]); i++)
			sovmesh_tensor_set_value(&set->tensors[k], i, base + (double)i);
	return set;
}

/* One tensor `name` of `dtype` and `shape`. */
static sovmesh_tensor_set *one_set(const char *name, sovmesh_dtype dtype, uint32_t ndim,
                                   const uint64_t *shape)
{
	sovmesh_tensor_set *set = tset_new(NULL, 1);
	assert_non_null(set);
	assert_int_equal(tset_init_tensor(set, 0, name, dtype, ndim, shape), 0);
	return set;
}

static void expect_msg(int got, int want, const sovmesh_error *err, const char *needle)
{
	if (got != want || !strstr(err->message, needle))
		fail_msg("got %d '%s', want %d containing '%s'", got, err->message, want, needle);
	assert_null(strchr(err->message, '\n'));
}

/* ---- arithmetic ---- */

static void test_subtract_add_f32(void **state)
{
	(void)state;
	sovmesh_tensor_set *a = pair_set(SOVMESH_DTYPE_F32, 0), *b = pair_set(SOVMESH_DTYPE_F32, 0);
	const float av[4] = {1.5f, -2.25f, 100.0f, 0.125f}, bv[4] = {0.5f, 0.25f, -28.0f, 0.125f};
	memcpy(a->tensors[0].data, av, sizeof(av));
	memcpy(b->tensors[0].data, bv, sizeof(bv));
	/* 2^24 + 2 - 1 is not a float: the result is rounded once, as F32. */
	const float a1[3] = {16777218.0f, 3.0f, 1e-3f}, b1[3] = {1.0f, 3.0f, -1e-3f};
	memcpy(a->tensors[1].data, a1, sizeof(a1));
	memcpy(b->tensors[1].data, b1, sizeof(b1));

	sovmesh_tensor_set *d = NULL;
	sovmesh_error err = {0};
	if (fl_delta_subtract(a, b, &d, &err) != 0)
		fail_msg("%s", err.message);
	assert_int_equal(d->count, 2);
	assert_string_equal(d->tensors[0].name, NAME_A);
	assert_int_equal(d->tensors[0].dtype, SOVMESH_DTYPE_F32);
	const float *d0 = d->tensors[0].data, *d1 = d->tensors[1].data;
	assert_true(d0[0] == 1.0f && d0[1] == -2.5f && d0[2] == 128.0f && d0[3] == 0.0f);
	assert_true(d1[0] == (float)(16777218.0 - 1.0));
	assert_true(d1[1] == 0.0f);
	assert_true(d1[2] == (float)((double)1e-3f + (double)1e-3f));
	/* The inputs are untouched. */
	assert_memory_equal(a->tensors[0].data, av, sizeof(av));

	/* b + (a - b) == a, exactly, for these values. */
	assert_int_equal(fl_delta_add(b, d, &err), 0);
	assert_memory_equal(b->tensors[0].data, av, sizeof(av));
	const float *bb = b->tensors[1].data;
	assert_true(bb[1] == 3.0f);
	tset_free(d);
	tset_free(a);
	tset_free(b);
}

static void test_subtract_add_f64(void **state)
{
	(void)state;
	sovmesh_tensor_set *a = pair_set(SOVMESH_DTYPE_F64, 10), *b = pair_set(SOVMESH_DTYPE_F64, 0);
	double *b0 = b->tensors[0].data;
	b0[0] = 0.1;
	b0[1] = -0.3;
	b0[2] = 1e300;
	b0[3] = 0x1p-1000;
	sovmesh_tensor_set *d = NULL;
	sovmesh_error err = {0};
	if (fl_delta_subtract(a, b, &d, &err) != 0)
		fail_msg("%s", err.message);
	assert_int_equal(d->tensors[0].dtype, SOVMESH_DTYPE_F64);
	const double *d0 = d->tensors[0].data, *d1 = d->tensors[1].data;
	/* Computed in double, no F32 rounding on the way. */
	assert_true(d0[0] == 10.0 - 0.1);
	assert_true(d0[1] == 11.0 + 0.3);
	assert_true(d0[2] == 12.0 - 1e300);
	assert_true(d0[3] == 13.0 - 0x1p-1000);
	assert_true(d1[0] == 10.0 && d1[1] == 10.0 && d1[2] == 10.0);

	sovmesh_tensor_set *z = pair_set(SOVMESH_DTYPE_F64, 0);
	memset(z->tensors[0].data, 0, z->tensors[0].nbytes);
	memset(z->tensors[1].data, 0, z->tensors[1].nbytes);
	assert_int_equal(fl_delta_add(z, d, &err), 0);
	assert_memory_equal(z->tensors[0].data, d->tensors[0].data, d->tensors[0].nbytes);
	assert_int_equal(fl_delta_add(z, d, &err), 0);
	assert_true(((double *)z->tensors[0].data)[0] == 2 * (10.0 - 0.1));
	tset_free(z);
	tset_free(d);
	tset_free(a);
	tset_free(b);
}

/* Every layout difference is refused by both functions, naming the tensor. */
static void test_layout_mismatch(void **state)
{
	(void)state;
	sovmesh_tensor_set *ref = pair_set(SOVMESH_DTYPE_F32, 1);
	uint64_t s22[2] = {2, 2}, s4[1] = {4};

	struct {
		sovmesh_tensor_set *other;
		const char *needle;
	} cases[4];
	/* Another name. */
	uint64_t s3[1] = {3};
	cases[0].other = tset_new(NULL, 2);
	assert_int_equal(tset_init_tensor(cases[0].other, 0, NAME_A, SOVMESH_DTYPE_F32, 2, s22), 0);
	assert_int_equal(tset_init_tensor(cases[0].other, 1, "m.lora_C", SOVMESH_DTYPE_F32, 1, s3),
	                 0);
	cases[0].needle = "has tensor 'm.lora_C' where input 0 has '" NAME_B "'";
	/* Another dtype for one tensor. */
	cases[1].other = tset_new(NULL, 2);
	assert_int_equal(tset_init_tensor(cases[1].other, 0, NAME_A, SOVMESH_DTYPE_F64, 2, s22), 0);
	assert_int_equal(tset_init_tensor(cases[1].other, 1, NAME_B, SOVMESH_DTYPE_F32, 1, s4), 0);
	cases[1].needle = "tensor '" NAME_A "' has dtype F64, input 0 has F32";
	/* Another shape. */
	cases[2].other = tset_new(NULL, 2);
	assert_int_equal(tset_init_tensor(cases[2].other, 0, NAME_A, SOVMESH_DTYPE_F32, 2, s22), 0);
	assert_int_equal(tset_init_tensor(cases[2].other, 1, NAME_B, SOVMESH_DTYPE_F32, 1, s4), 0);
	cases[2].needle = "tensor '" NAME_B "' has shape [4], input 0 has [3]";
	/* Fewer tensors. */
	cases[3].other = one_set(NAME_A, SOVMESH_DTYPE_F32, 2, s22);
	cases[3].needle = "has 1 tensors, input 0 has 2";

	for (size_t k = 0; k < 4; k++) {
		sovmesh_tensor_set *d = (void *)1;
		sovmesh_error err = {0};
		expect_msg(fl_delta_subtract(ref, cases[k].other, &d, &err), -EINVAL, &err,
		           cases[k].needle);
		assert_ptr_equal(d, (void *)1); /* *out untouched on failure */
		memset(&err, 0, sizeof(err));
		expect_msg(fl_delta_add(ref, cases[k].other, &err), -EINVAL, &err,
		           cases[k].needle);
		tset_free(cases[k].other);
	}
	/* The target of a refused add is unchanged. */
	assert_true(((float *)ref->tensors[0].data)[3] == 4.0f);

	/* More tensors on the other side. */
	sovmesh_tensor_set *three = tset_new(NULL, 3);
	assert_int_equal(tset_init_tensor(three, 0, NAME_A, SOVMESH_DTYPE_F32, 2, s22), 0);
	assert_int_equal(tset_init_tensor(three, 1, NAME_B, SOVMESH_DTYPE_F32, 1, s3), 0);
	assert_int_equal(tset_init_tensor(three, 2, "z", SOVMESH_DTYPE_F32, 1, s3), 0);
	sovmesh_error err = {0};
	sovmesh_tensor_set *d = NULL;
	expect_msg(fl_delta_subtract(ref, three, &d, &err), -EINVAL, &err,
	           "has 3 tensors, input 0 has 2");
	expect_msg(fl_delta_add(three, ref, &err), -EINVAL, &err, "has 2 tensors, input 0 has 3");
	tset_free(three);
	tset_free(ref);
}

static void test_add_overflow(void **state)
{
	(void)state;
	uint64_t s2[1] = {2};
	/* F32: FLT_MAX + FLT_MAX is finite as a double but not as a float. */
	sovmesh_tensor_set *t = one_set("w", SOVMESH_DTYPE_F32, 1, s2);
	sovmesh_tensor_set *d = one_set("w", SOVMESH_DTYPE_F32, 1, s2);
	((float *)t->tensors[0].data)[1] = FLT_MAX;
	((float *)d->tensors[0].data)[1] = FLT_MAX;
	sovmesh_error err = {0};
	expect_msg(fl_delta_add(t, d, &err), -ERANGE, &err,
	           "tensor 'w' element 1 overflows when the delta is added");
	tset_free(t);
	tset_free(d);

	/* F64. */
	t = one_set("v", SOVMESH_DTYPE_F64, 1, s2);
	d = one_set("v", SOVMESH_DTYPE_F64, 1, s2);
	((double *)t->tensors[0].data)[0] = -DBL_MAX;
	((double *)d->tensors[0].data)[0] = -DBL_MAX;
	expect_msg(fl_delta_add(t, d, &err), -ERANGE, &err, "tensor 'v' element 0 overflows");

	/* A difference that overflows is refused too, with no result. */
	((double *)t->tensors[0].data)[0] = DBL_MAX;
	sovmesh_tensor_set *out = NULL;
	expect_msg(fl_delta_subtract(t, d, &out, &err), -EINVAL, &err,
	           "tensor 'v' element 0 is +inf");
	assert_null(out);
	tset_free(t);
	tset_free(d);
}

static void test_non_float(void **state)
{
	(void)state;
	uint64_t s2[1] = {2};
	sovmesh_tensor_set *a = one_set("ids", SOVMESH_DTYPE_I32, 1, s2);
	sovmesh_tensor_set *b = one_set("ids", SOVMESH_DTYPE_I32, 1, s2);
	sovmesh_tensor_set *out = NULL;
	sovmesh_error err = {0};
	expect_msg(fl_delta_subtract(a, b, &out, &err), -ENOTSUP, &err,
	           "tensor 'ids' is I32, not F32 or F64");
	assert_null(out);
	expect_msg(fl_delta_add(a, b, &err), -ENOTSUP, &err, "tensor 'ids' is I32, not F32 or F64");
	tset_free(a);
	tset_free(b);

	a = one_set("h", SOVMESH_DTYPE_F16, 1, s2);
	b = one_set("h", SOVMESH_DTYPE_F16, 1, s2);
	expect_msg(fl_delta_add(a, b, &err), -ENOTSUP, &err, "tensor 'h' is F16, not F32 or F64");
	tset_free(a);
	tset_free(b);
}

/* ---- the wire message ---- */

static void test_round_trip(void **state)
{
	(void)state;
	sovmesh_tensor_set *layout = pair_set(SOVMESH_DTYPE_F32, 0);
	sovmesh_tensor_set *noisy = pair_set(SOVMESH_DTYPE_F32, -0.75);
	/* The trainer's own metadata must not travel. */
	assert_int_equal(tset_set_metadata(noisy, "{\"format\":\"pt\",\"model\":\"secret\"}"), 0);

	const int64_t samples[3] = {1, 42, FL_DELTA_MAX_SAMPLES};
	const int64_t rounds[3] = {INT64_MAX, 7, 1};
	for (int k = 0; k < 3; k++) {
		void *buf = NULL;
		size_t len = 0;
		sovmesh_error err = {0};
		if (fl_delta_encode(noisy, samples[k], rounds[k], &buf, &len, &err) != 0)
			fail_msg("%s", err.message);
		assert_null(memmem(buf, len, "secret", 6));
		assert_null(memmem(buf, len, "format", 6));

		fl_delta d = {0};
		if (fl_delta_decode(buf, len, layout, MAX_BYTES, &d, &err) != 0)
			fail_msg("%s", err.message);
		assert_int_equal(d.samples, samples[k]);
		assert_true(d.round == rounds[k]);
		assert_int_equal(d.set->count, 2);
		for (size_t i = 0; i < 2; i++) {
			assert_string_equal(d.set->tensors[i].name, noisy->tensors[i].name);
			assert_int_equal(d.set->tensors[i].nbytes, noisy->tensors[i].nbytes);
			assert_memory_equal(d.set->tensors[i].data, noisy->tensors[i].data,
			                    noisy->tensors[i].nbytes);
		}
		/* Exactly our three keys. */
		json_t *meta = json_loads(d.set->metadata_json, 0, NULL);
		assert_non_null(meta);
		assert_int_equal(json_object_size(meta), 3);
		assert_string_equal(json_string_value(json_object_get(meta, "sovmesh_fl")),
		                    FL_DELTA_VERSION);
		char want[32];
		snprintf(want, sizeof(want), "%lld", (long long)samples[k]);
		assert_string_equal(json_string_value(json_object_get(meta, "samples")), want);
		json_decref(meta);
		/* The decoded set owns its data: the buffer may go. */
		memset(buf, 0, len);
		free(buf);
		assert_true(((float *)d.set->tensors[0].data)[0] == -0.75f);
		fl_delta_clear(&d);
		assert_null(d.set);
		fl_delta_clear(&d); /* twice is fine */
	}
	/* The input set's metadata is untouched. */
	assert_string_equal(noisy->metadata_json, "{\"format\":\"pt\",\"model\":\"secret\"}");

	/* F64 adapters travel as F64. */
	sovmesh_tensor_set *l64 = pair_set(SOVMESH_DTYPE_F64, 0), *n64 = pair_set(SOVMESH_DTYPE_F64, 0.1);
	void *buf = NULL;
	size_t len = 0;
	fl_delta d = {0};
	assert_int_equal(fl_delta_encode(n64, 3, 2, &buf, &len, NULL), 0);
	assert_int_equal(fl_delta_decode(buf, len, l64, MAX_BYTES, &d, NULL), 0);
	assert_memory_equal(d.set->tensors[1].data, n64->tensors[1].data, n64->tensors[1].nbytes);
	fl_delta_clear(&d);
	free(buf);
	tset_free(l64);
	tset_free(n64);
	tset_free(noisy);
	tset_free(layout);
	fl_delta_clear(NULL);
}

static void test_encode_refuses(void **state)
{
	(void)state;
	sovmesh_tensor_set *set = pair_set(SOVMESH_DTYPE_F32, 0);
	void *buf = (void *)1;
	size_t len = 0;
	sovmesh_error err = {0};
	expect_msg(fl_delta_encode(set, 0, 1, &buf, &len, &err), -EINVAL, &err, "out of range");
	expect_msg(fl_delta_encode(set, FL_DELTA_MAX_SAMPLES + 1, 1, &buf, &len, &err), -EINVAL,
	           &err, "out of range");
	expect_msg(fl_delta_encode(set, 5, 0, &buf, &len, &err), -EINVAL, &err, "out of range");
	expect_msg(fl_delta_encode(set, 5, -3, &buf, &len, &err), -EINVAL, &err, "out of range");
	assert_ptr_equal(buf, (void *)1);
	tset_free(set);
}

/* Serialise `set` with exactly `meta` as "__metadata__" (NULL: none). */
static void *with_meta(const sovmesh_tensor_set *set, const char *meta, size_t *len)
{
	sovmesh_tensor_set view = *set;
	view.metadata_json = meta;
	void *buf = NULL;
	sovmesh_error err = {0};
	if (safetensors_serialize(&view, &buf, len, &err) != 0)
		fail_msg("serialize: %s", err.message);
	return buf;
}

#define GOOD_META "{\"sovmesh_fl\":\"1\",\"samples\":\"10\",\"round\":\"3\"}"

/* Decode must fail with `code` and `needle`, leaving *out empty. */
static void expect_refused(const void *buf, size_t len, const sovmesh_tensor_set *layout,
                           size_t max, int code, const char *needle)
{
	fl_delta d = {(void *)1, 99, 99};
	sovmesh_error err = {0};
	int r = fl_delta_decode(buf, len, layout, max, &d, &err);
	expect_msg(r, code, &err, needle);
	assert_null(d.set);
	assert_int_equal(d.samples, 0);
	assert_int_equal(d.round, 0);
}

static void expect_meta_refused(const char *meta, const char *needle)
{
	sovmesh_tensor_set *set = pair_set(SOVMESH_DTYPE_F32, 0);
	size_t len;
	void *buf = with_meta(set, meta, &len);
	expect_refused(buf, len, set, MAX_BYTES, -EINVAL, needle);
	free(buf);
	tset_free(set);
}

static void test_decode_bad_bytes(void **state)
{
	(void)state;
	sovmesh_tensor_set *layout = pair_set(SOVMESH_DTYPE_F32, 0);
	/* Not safetensors at all. */
	expect_refused("\x05\0\0\0\0\0\0\0hello", 13, layout, MAX_BYTES, -EINVAL,
	               "header does not start with '{'");
	expect_refused("abc", 3, layout, MAX_BYTES, -EINVAL, "too short");
	expect_refused("", 0, layout, MAX_BYTES, -EINVAL, "too short");

	/* A good delta, truncated. */
	void *buf = NULL;
	size_t len = 0;
	assert_int_equal(fl_delta_encode(layout, 1, 1, &buf, &len, NULL), 0);
	expect_refused(buf, len - 4, layout, MAX_BYTES, -EINVAL, "run past the end");
	expect_refused(buf, 20, layout, MAX_BYTES, -EINVAL, "runs past the end of the file");

	/* Over the limit, before anything is parsed. */
	expect_refused(buf, len, layout, len - 1, -E2BIG, "the limit is");
	fl_delta d = {0};
	assert_int_equal(fl_delta_decode(buf, len, layout, len, &d, NULL), 0);
	fl_delta_clear(&d);
	free(buf);
	tset_free(layout);
}

static void test_decode_bad_metadata(void **state)
{
	(void)state;
	expect_meta_refused(NULL, "delta has no \"__metadata__\"");
	expect_meta_refused("{}", "delta format version is not 1");
	expect_meta_refused("{\"sovmesh_fl\":\"1\",\"samples\":\"10\",\"round\":\"3\",\"node\":\"x\"}",
	                    "delta metadata has an unexpected key");
	expect_meta_refused("{\"format\":\"pt\"}", "unexpected key");
	expect_meta_refused("{\"sovmesh_fl\":\"2\",\"samples\":\"10\",\"round\":\"3\"}",
	                    "delta format version is not 1");
	expect_meta_refused("{\"sovmesh_fl\":\"01\",\"samples\":\"10\",\"round\":\"3\"}",
	                    "version is not 1");
	expect_meta_refused("{\"sovmesh_fl\":\"1\",\"round\":\"3\"}",
	                    "delta metadata lacks \"samples\"");
	expect_meta_refused("{\"sovmesh_fl\":\"1\",\"samples\":\"3\"}",
	                    "delta metadata lacks \"round\"");

	static const char *const bad_samples[] = {
	    "0", "1000001", "007", "12x", "", "-1", "+7", " 7", "7 ", "1e3", "0x10",
	    "99999999999999999999",
	};
	for (size_t i = 0; i < sizeof(bad_samples) / sizeof(bad_samples[0]); i++) {
		char meta[160];
		snprintf(meta, sizeof(meta),
		         "{\"sovmesh_fl\":\"1\",\"samples\":\"%s\",\"round\":\"3\"}", bad_samples[i]);
		expect_meta_refused(meta,
		                    "delta metadata \"samples\" must be an integer from 1 to 1000000");
	}
	static const char *const bad_rounds[] = {"0", "-5", "03", "9223372036854775808", "1.0"};
	for (size_t i = 0; i < sizeof(bad_rounds) / sizeof(bad_rounds[0]); i++) {
		char meta[160];
		snprintf(meta, sizeof(meta),
		         "{\"sovmesh_fl\":\"1\",\"samples\":\"10\",\"round\":\"%s\"}", bad_rounds[i]);
		expect_meta_refused(meta, "delta metadata \"round\" must be an integer from 1 to "
		                          "9223372036854775807");
	}

	/* The good metadata, written by hand, in another key order, decodes. */
	sovmesh_tensor_set *set = pair_set(SOVMESH_DTYPE_F32, 0);
	size_t len;
	void *buf = with_meta(set, "{\"round\":\"3\",\"samples\":\"1000000\",\"sovmesh_fl\":\"1\"}",
	                      &len);
	fl_delta d = {0};
	sovmesh_error err = {0};
	if (fl_delta_decode(buf, len, set, MAX_BYTES, &d, &err) != 0)
		fail_msg("%s", err.message);
	assert_int_equal(d.samples, 1000000);
	assert_int_equal(d.round, 3);
	fl_delta_clear(&d);
	free(buf);
	tset_free(set);
}

static void test_decode_wrong_layout(void **state)
{
	(void)state;
	sovmesh_tensor_set *layout = pair_set(SOVMESH_DTYPE_F32, 0);
	uint64_t s22[2] = {2, 2}, s23[2] = {2, 3}, s3[1] = {3};
	size_t len;
	void *buf;

	/* Another name (sorted where NAME_B is). */
	sovmesh_tensor_set *s = tset_new(NULL, 2);
	assert_int_equal(tset_init_tensor(s, 0, NAME_A, SOVMESH_DTYPE_F32, 2, s22), 0);
	assert_int_equal(tset_init_tensor(s, 1, "m.lora_C", SOVMESH_DTYPE_F32, 1, s3), 0);
	buf = with_meta(s, GOOD_META, &len);
	expect_refused(buf, len, layout, MAX_BYTES, -EINVAL,
	               "has tensor 'm.lora_C' where this node's adapter has '" NAME_B "'");
	free(buf);
	tset_free(s);

	/* Another shape. */
	s = tset_new(NULL, 2);
	assert_int_equal(tset_init_tensor(s, 0, NAME_A, SOVMESH_DTYPE_F32, 2, s23), 0);
	assert_int_equal(tset_init_tensor(s, 1, NAME_B, SOVMESH_DTYPE_F32, 1, s3), 0);
	buf = with_meta(s, GOOD_META, &len);
	expect_refused(buf, len, layout, MAX_BYTES, -EINVAL,
	               "tensor '" NAME_A "' has shape [2,3], this node's adapter has [2,2]");
	free(buf);
	tset_free(s);

	/* Another rank, same element count. */
	s = tset_new(NULL, 2);
	uint64_t s4[1] = {4};
	assert_int_equal(tset_init_tensor(s, 0, NAME_A, SOVMESH_DTYPE_F32, 1, s4), 0);
	assert_int_equal(tset_init_tensor(s, 1, NAME_B, SOVMESH_DTYPE_F32, 1, s3), 0);
	buf = with_meta(s, GOOD_META, &len);
	expect_refused(buf, len, layout, MAX_BYTES, -EINVAL,
	               "has shape [4], this node's adapter has [2,2]");
	free(buf);
	tset_free(s);

	/* F64 where this node has F32. */
	s = pair_set(SOVMESH_DTYPE_F64, 0);
	buf = with_meta(s, GOOD_META, &len);
	expect_refused(buf, len, layout, MAX_BYTES, -EINVAL,
	               "tensor '" NAME_A "' is F64, this node's adapter has F32");
	free(buf);
	tset_free(s);

	/* An extra tensor at the end, and one sorted first. */
	const char *extra[2] = {"z.extra", "a.extra"};
	const char *needle[2] = {"has 3 tensors, this node's adapter has 2",
	                         "has tensor 'a.extra' where this node's adapter has '" NAME_A "'"};
	for (int k = 0; k < 2; k++) {
		s = tset_new(NULL, 3);
		assert_int_equal(tset_init_tensor(s, 0, NAME_A, SOVMESH_DTYPE_F32, 2, s22), 0);
		assert_int_equal(tset_init_tensor(s, 1, NAME_B, SOVMESH_DTYPE_F32, 1, s3), 0);
		assert_int_equal(tset_init_tensor(s, 2, extra[k], SOVMESH_DTYPE_F32, 1, s3), 0);
		buf = with_meta(s, GOOD_META, &len);
		expect_refused(buf, len, layout, MAX_BYTES, -EINVAL, needle[k]);
		free(buf);
		tset_free(s);
	}

	/* A missing tensor, and none at all. */
	s = one_set(NAME_A, SOVMESH_DTYPE_F32, 2, s22);
	buf = with_meta(s, GOOD_META, &len);
	expect_refused(buf, len, layout, MAX_BYTES, -EINVAL,
	               "has 1 tensors, this node's adapter has 2");
	free(buf);
	tset_free(s);
	s = tset_new(NULL, 0);
	buf = with_meta(s, GOOD_META, &len);
	expect_refused(buf, len, layout, MAX_BYTES, -EINVAL,
	               "has 0 tensors, this node's adapter has 2");
	free(buf);
	tset_free(s);
	tset_free(layout);
}

static void test_decode_bad_values(void **state)
{
	(void)state;
	sovmesh_tensor_set *layout = pair_set(SOVMESH_DTYPE_F32, 0);
	const double bad[3] = {NAN, INFINITY, -INFINITY};
	const char *what[3] = {"element 2 is NaN", "element 2 is +inf", "element 2 is -inf"};
	for (int k = 0; k < 3; k++) {
		sovmesh_tensor_set *s = pair_set(SOVMESH_DTYPE_F32, 0);
		sovmesh_tensor_set_value(&s->tensors[1], 2, bad[k]);
		void *buf = NULL;
		size_t len = 0;
		/* encode does not judge values; the receiver does. */
		assert_int_equal(fl_delta_encode(s, 1, 1, &buf, &len, NULL), 0);
		char needle[80];
		snprintf(needle, sizeof(needle), "tensor '" NAME_B "' %s", what[k]);
		expect_refused(buf, len, layout, MAX_BYTES, -EINVAL, needle);
		free(buf);
		tset_free(s);
	}

	/* A non-float tensor, even when this node's layout has it too. */
	uint64_t s2[1] = {2};
	sovmesh_tensor_set *ilayout = one_set("ids", SOVMESH_DTYPE_I32, 1, s2);
	size_t len;
	void *buf = with_meta(ilayout, GOOD_META, &len);
	expect_refused(buf, len, ilayout, MAX_BYTES, -EINVAL, "tensor 'ids' is I32, not F32 or F64");
	/* And against a float layout. */
	sovmesh_tensor_set *flayout = one_set("ids", SOVMESH_DTYPE_F32, 1, s2);
	expect_refused(buf, len, flayout, MAX_BYTES, -EINVAL,
	               "tensor 'ids' is I32, this node's adapter has F32");
	free(buf);
	tset_free(flayout);
	tset_free(ilayout);
	tset_free(layout);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_subtract_add_f32),
	    cmocka_unit_test(test_subtract_add_f64),
	    cmocka_unit_test(test_layout_mismatch),
	    cmocka_unit_test(test_add_overflow),
	    cmocka_unit_test(test_non_float),
	    cmocka_unit_test(test_round_trip),
	    cmocka_unit_test(test_encode_refuses),
	    cmocka_unit_test(test_decode_bad_bytes),
	    cmocka_unit_test(test_decode_bad_metadata),
	    cmocka_unit_test(test_decode_wrong_layout),
	    cmocka_unit_test(test_decode_bad_values),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

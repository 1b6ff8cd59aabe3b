/* tensor_set.c: allocation, init checks, conversion, sorting, finiteness,
 * dtype names. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "tensor_set.h"

static void test_new_blank_and_init(void **state)
{
	(void)state;
	sovmesh_tensor_set *set = tset_new(NULL, 3);
	assert_non_null(set);
	assert_int_equal(set->count, 3);
	assert_null(set->tensors[0].name);
	assert_null(set->metadata_json);

	uint64_t shape[2] = {2, 3};
	assert_int_equal(tset_init_tensor(set, 1, "w", SOVMESH_DTYPE_F32, 2, shape), 0);
	sovmesh_tensor *t = &set->tensors[1];
	assert_string_equal(t->name, "w");
	assert_int_equal(t->nbytes, 24);
	assert_int_equal(t->shape[1], 3);
	const unsigned char *d = t->data;
	for (int i = 0; i < 24; i++)
		assert_int_equal(d[i], 0);

	/* Each refusal the contract lists. */
	assert_int_equal(tset_init_tensor(set, 1, "again", SOVMESH_DTYPE_F32, 2, shape), -EINVAL);
	assert_int_equal(tset_init_tensor(set, 3, "oob", SOVMESH_DTYPE_F32, 2, shape), -EINVAL);
	assert_int_equal(tset_init_tensor(set, 0, "bad", SOVMESH_DTYPE_INVALID, 2, shape), -EINVAL);
	assert_int_equal(tset_init_tensor(set, 0, "bad", (sovmesh_dtype)99, 2, shape), -EINVAL);
	assert_int_equal(tset_init_tensor(set, 0, "bad", SOVMESH_DTYPE_F32, 9, shape), -EINVAL);
	assert_int_equal(tset_init_tensor(set, 0, NULL, SOVMESH_DTYPE_F32, 2, shape), -EINVAL);
	uint64_t huge[2] = {UINT64_MAX / 2, 3};
	assert_int_equal(tset_init_tensor(set, 0, "big", SOVMESH_DTYPE_U8, 2, huge), -EINVAL);
	/* Refusals leave the slot usable. */
	assert_int_equal(tset_init_tensor(set, 0, "s", SOVMESH_DTYPE_F64, 0, NULL), 0);
	assert_int_equal(set->tensors[0].nbytes, 8);
	uint64_t zero = 0;
	assert_int_equal(tset_init_tensor(set, 2, "z", SOVMESH_DTYPE_F16, 1, &zero), 0);
	assert_int_equal(set->tensors[2].nbytes, 0);
	assert_non_null(set->tensors[2].data);
	tset_free(set);
	tset_free(NULL);

	set = tset_new(NULL, 0);
	assert_non_null(set);
	assert_int_equal(set->count, 0);
	tset_free(set);
}

static void test_new_from_layout(void **state)
{
	(void)state;
	sovmesh_tensor_set *a = tset_new(NULL, 2);
	uint64_t shape[3] = {4, 1, 2};
	assert_int_equal(tset_init_tensor(a, 0, "a", SOVMESH_DTYPE_BF16, 3, shape), 0);
	assert_int_equal(tset_init_tensor(a, 1, "b", SOVMESH_DTYPE_I64, 1, shape), 0);
	memset(a->tensors[0].data, 0x5a, a->tensors[0].nbytes);
	assert_int_equal(tset_set_metadata(a, "{\"format\":\"pt\"}"), 0);

	sovmesh_tensor_set *b = tset_new(a, 99); /* count ignored with a layout */
	assert_non_null(b);
	size_t why = 1234;
	assert_int_equal(sovmesh_tensor_set_same_layout(a, b, &why), 1);
	assert_int_equal(why, 1234);
	assert_ptr_not_equal(b->tensors[0].name, a->tensors[0].name);
	assert_ptr_not_equal(b->tensors[0].data, a->tensors[0].data);
	const unsigned char *d = b->tensors[0].data;
	for (uint64_t i = 0; i < b->tensors[0].nbytes; i++)
		assert_int_equal(d[i], 0);
	assert_string_equal(b->metadata_json, "{\"format\":\"pt\"}");
	tset_free(a); /* b owns its own copies */
	assert_string_equal(b->tensors[1].name, "b");
	tset_free(b);
}

static void test_free_after_plugin_edits(void **state)
{
	(void)state;
	/* A plugin may reorder tensors or point fields elsewhere; freeing must
	 * still release exactly what the set owns (ASan checks this). */
	sovmesh_tensor_set *set = tset_new(NULL, 2);
	uint64_t n = 4;
	assert_int_equal(tset_init_tensor(set, 0, "x", SOVMESH_DTYPE_F32, 1, &n), 0);
	assert_int_equal(tset_init_tensor(set, 1, "y", SOVMESH_DTYPE_F32, 1, &n), 0);
	sovmesh_tensor tmp = set->tensors[0];
	set->tensors[0] = set->tensors[1];
	set->tensors[1] = tmp;
	static float other[4];
	set->tensors[0].data = other;
	set->tensors[0].name = "literal";
	set->metadata_json = "{}";
	tset_free(set);
}

static void test_dtype_names(void **state)
{
	(void)state;
	const char *names[] = {"F64", "F32", "F16", "BF16", "I64",  "I32",     "I16",    "I8",
	                       "U64", "U32", "U16", "U8",   "BOOL", "F8_E4M3", "F8_E5M2"};
	int seen[32] = {0};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		sovmesh_dtype d = tset_dtype_from_name(names[i]);
		assert_int_not_equal(d, SOVMESH_DTYPE_INVALID);
		assert_false(seen[d]);
		seen[d] = 1;
		assert_string_equal(tset_dtype_name(d), names[i]);
		assert_int_not_equal(sovmesh_dtype_size(d), 0);
	}
	assert_int_equal(tset_dtype_from_name("f32"), SOVMESH_DTYPE_INVALID);
	assert_int_equal(tset_dtype_from_name(""), SOVMESH_DTYPE_INVALID);
	assert_int_equal(tset_dtype_from_name(NULL), SOVMESH_DTYPE_INVALID);
	assert_null(tset_dtype_name(SOVMESH_DTYPE_INVALID));
	assert_null(tset_dtype_name((sovmesh_dtype)16));
	assert_null(tset_dtype_name((sovmesh_dtype)-1));
}

static void test_convert(void **state)
{
	(void)state;
	const double vals[] = {1.0, -2.5, 0.1, 1e-6, 70000.0, 3.0e38};
	sovmesh_tensor_set *src = tset_new(NULL, 1);
	uint64_t n = 6;
	assert_int_equal(tset_init_tensor(src, 0, "t", SOVMESH_DTYPE_F64, 1, &n), 0);
	for (uint64_t i = 0; i < n; i++)
		sovmesh_tensor_set_value(&src->tensors[0], i, vals[i]);
	assert_int_equal(tset_set_metadata(src, "{\"m\":\"1\"}"), 0);

	sovmesh_error err = {0};
	sovmesh_tensor_set *f32 = NULL, *f16 = NULL, *bf16 = NULL, *back = NULL;
	assert_int_equal(tset_convert(src, SOVMESH_DTYPE_F32, &f32, &err), 0);
	assert_int_equal(f32->tensors[0].dtype, SOVMESH_DTYPE_F32);
	assert_int_equal(f32->tensors[0].nbytes, 24);
	assert_string_equal(f32->metadata_json, "{\"m\":\"1\"}");
	for (uint64_t i = 0; i < n; i++)
		assert_true(sovmesh_tensor_get(&f32->tensors[0], i) == (double)(float)vals[i]);

	assert_int_equal(tset_convert(f32, SOVMESH_DTYPE_F16, &f16, &err), 0);
	const sovmesh_tensor *h = &f16->tensors[0];
	assert_int_equal(h->nbytes, 12);
	assert_true(sovmesh_tensor_get(h, 0) == 1.0);
	assert_true(sovmesh_tensor_get(h, 1) == -2.5);
	assert_float_equal(sovmesh_tensor_get(h, 2), 0.1, 1e-4);
	assert_true(sovmesh_tensor_get(h, 3) > 0.0);  /* subnormal in F16 */
	assert_true(isinf(sovmesh_tensor_get(h, 4))); /* over F16's 65504 */

	assert_int_equal(tset_convert(f32, SOVMESH_DTYPE_BF16, &bf16, &err), 0);
	assert_float_equal(sovmesh_tensor_get(&bf16->tensors[0], 4), 70000.0, 300.0);
	assert_float_equal(sovmesh_tensor_get(&bf16->tensors[0], 5), 3.0e38, 2e36);

	assert_int_equal(tset_convert(bf16, SOVMESH_DTYPE_F64, &back, &err), 0);
	assert_int_equal(back->tensors[0].nbytes, 48);
	assert_true(sovmesh_tensor_get(&back->tensors[0], 1) == -2.5);

	tset_free(src);
	tset_free(f32);
	tset_free(f16);
	tset_free(bf16);
	tset_free(back);
}

static void test_convert_refuses(void **state)
{
	(void)state;
	sovmesh_tensor_set *src = tset_new(NULL, 2), *out = (void *)1;
	uint64_t n = 2;
	assert_int_equal(tset_init_tensor(src, 0, "f", SOVMESH_DTYPE_F32, 1, &n), 0);
	assert_int_equal(tset_init_tensor(src, 1, "i", SOVMESH_DTYPE_I32, 1, &n), 0);
	sovmesh_error err = {0};
	assert_int_equal(tset_convert(src, SOVMESH_DTYPE_F16, &out, &err), -ENOTSUP);
	assert_non_null(strstr(err.message, "tensor 'i' is I32"));
	assert_null(out);
	assert_int_equal(tset_convert(src, SOVMESH_DTYPE_U8, &out, &err), -ENOTSUP);
	assert_non_null(strstr(err.message, "cannot convert to U8"));
	tset_free(src);

	/* A tensor whose nbytes disagrees with its shape is never read. */
	src = tset_new(NULL, 1);
	assert_int_equal(tset_init_tensor(src, 0, "f", SOVMESH_DTYPE_F32, 1, &n), 0);
	src->tensors[0].shape[0] = 1000;
	assert_int_equal(tset_convert(src, SOVMESH_DTYPE_F64, &out, &err), -EINVAL);
	assert_non_null(
	    strstr(err.message, "tensor 'f' has 8 bytes of data, its shape needs 4000"));
	tset_free(src);
}

static void test_sort_by_name(void **state)
{
	(void)state;
	const char *names[] = {"b.lora_B", "a", "b.lora_A", "B", "a.x"};
	sovmesh_tensor_set *set = tset_new(NULL, 5);
	uint64_t one = 1;
	for (size_t i = 0; i < 5; i++) {
		assert_int_equal(tset_init_tensor(set, i, names[i], SOVMESH_DTYPE_F32, 1, &one), 0);
		sovmesh_tensor_set_value(&set->tensors[i], 0, (double)i);
	}
	sovmesh_error err = {0};
	assert_int_equal(tset_sort_by_name(set, &err), 0);
	const char *want[] = {"B", "a", "a.x", "b.lora_A", "b.lora_B"};
	const double val[] = {3, 1, 4, 2, 0};
	for (size_t i = 0; i < 5; i++) {
		assert_string_equal(set->tensors[i].name, want[i]);
		/* Data moved with the name. */
		assert_true(sovmesh_tensor_get(&set->tensors[i], 0) == val[i]);
	}
	tset_free(set);

	set = tset_new(NULL, 3);
	assert_int_equal(tset_init_tensor(set, 0, "z", SOVMESH_DTYPE_F32, 1, &one), 0);
	assert_int_equal(tset_init_tensor(set, 1, "dup", SOVMESH_DTYPE_F32, 1, &one), 0);
	assert_int_equal(tset_init_tensor(set, 2, "dup", SOVMESH_DTYPE_F16, 1, &one), 0);
	assert_int_equal(tset_sort_by_name(set, &err), -EINVAL);
	assert_non_null(strstr(err.message, "duplicate tensor name 'dup'"));
	tset_free(set);

	set = tset_new(NULL, 1);
	assert_int_equal(tset_sort_by_name(set, &err), -EINVAL);
	assert_non_null(strstr(err.message, "tensor 0 has no name"));
	tset_free(set);
}

static void test_check_finite(void **state)
{
	(void)state;
	sovmesh_tensor_set *set = tset_new(NULL, 3);
	uint64_t n = 5;
	assert_int_equal(tset_init_tensor(set, 0, "ints", SOVMESH_DTYPE_U8, 1, &n), 0);
	assert_int_equal(tset_init_tensor(set, 1, "h", SOVMESH_DTYPE_F16, 1, &n), 0);
	assert_int_equal(tset_init_tensor(set, 2, "d", SOVMESH_DTYPE_F64, 1, &n), 0);
	memset(set->tensors[0].data, 0xff, 5); /* not a float: ignored */
	sovmesh_error err = {0};
	assert_int_equal(tset_check_finite(set, &err), 0);

	sovmesh_tensor_set_value(&set->tensors[2], 3, NAN);
	assert_int_equal(tset_check_finite(set, &err), -EINVAL);
	assert_non_null(strstr(err.message, "tensor 'd' element 3 is NaN"));
	sovmesh_tensor_set_value(&set->tensors[2], 3, 1.0);

	uint16_t neg_inf = 0xfc00;
	memcpy((char *)set->tensors[1].data + 2 * 4, &neg_inf, 2);
	assert_int_equal(tset_check_finite(set, &err), -EINVAL);
	assert_non_null(strstr(err.message, "tensor 'h' element 4 is -inf"));
	tset_free(set);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_new_blank_and_init),
	    cmocka_unit_test(test_new_from_layout),
	    cmocka_unit_test(test_free_after_plugin_edits),
	    cmocka_unit_test(test_dtype_names),
	    cmocka_unit_test(test_convert),
	    cmocka_unit_test(test_convert_refuses),
	    cmocka_unit_test(test_sort_by_name),
	    cmocka_unit_test(test_check_finite),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

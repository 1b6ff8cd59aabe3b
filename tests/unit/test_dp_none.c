/* dp-none (plugins/dp-none/none.c), loaded through mini_host. */
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

#include <sovmesh/noise.h>

#include "mini_host.h"

static uint64_t rng_state = 0x13198a2e03707344u;

/* splitmix64: test data only. */
static double next_signed(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
	z ^= z >> 31;
	return (double)(z >> 11) * 0x1p-52 - 1.0;
}

static mini_host *open_plugin(const mini_setting *settings)
{
	mini_host *mh = NULL;
	sovmesh_error err = {0};
	if (mini_host_open("dp-none", settings, &mh, &err) < 0)
		fail_msg("cannot load dp-none: %s", err.message);
	return mh;
}

static const sovmesh_noise_ops *ops_of(mini_host *mh)
{
	return mh->desc->ops;
}

static sovmesh_tensor_set *make2(mini_host *mh, sovmesh_dtype dt, uint64_t n1, uint64_t n2)
{
	static const char *const nm[2] = {"a.lora_A", "b.lora_B"};
	static const uint32_t nd[2] = {1, 1};
	uint64_t sh[2][SOVMESH_TENSOR_MAX_DIMS] = {{n1}, {n2}};
	sovmesh_tensor_set *s =
	    mini_host_make_set(mh, 2, nm, dt, nd, (const uint64_t(*)[SOVMESH_TENSOR_MAX_DIMS])sh);
	assert_non_null(s);
	return s;
}

static void free_set(mini_host *mh, sovmesh_tensor_set *s)
{
	mh->api.tensor_set_free(mh->host, s);
}

static uint64_t numel(const sovmesh_tensor_set *s)
{
	return sovmesh_tensor_numel(&s->tensors[0]) + sovmesh_tensor_numel(&s->tensors[1]);
}

static double get(const sovmesh_tensor_set *s, uint64_t i)
{
	uint64_t n0 = sovmesh_tensor_numel(&s->tensors[0]);
	return i < n0 ? sovmesh_tensor_get(&s->tensors[0], i)
	              : sovmesh_tensor_get(&s->tensors[1], i - n0);
}

static void set(sovmesh_tensor_set *s, uint64_t i, double v)
{
	uint64_t n0 = sovmesh_tensor_numel(&s->tensors[0]);
	if (i < n0)
		sovmesh_tensor_set_value(&s->tensors[0], i, v);
	else
		sovmesh_tensor_set_value(&s->tensors[1], i - n0, v);
}

static double l2(const sovmesh_tensor_set *s)
{
	long double sum = 0;
	for (uint64_t i = 0; i < numel(s); i++)
		sum += (long double)get(s, i) * get(s, i);
	return (double)sqrtl(sum);
}

static int perturb(mini_host *mh, sovmesh_tensor_set *s, double clip, sovmesh_privacy_cost *cost,
                   sovmesh_error *err)
{
	sovmesh_noise_params p = {.size = sizeof(p), .epsilon = 1, .delta = 0, .clip = clip};
	memset(cost, 0, sizeof(*cost));
	memset(err, 0, sizeof(*err));
	return ops_of(mh)->perturb(mh->instance, s, &p, cost, err);
}

static void expect_msg(const sovmesh_error *err, const char *frag)
{
	assert_null(strchr(err->message, '\n'));
	if (!strstr(err->message, frag))
		fail_msg("message '%s' lacks '%s'", err->message, frag);
}

static void expect_no_privacy(const sovmesh_privacy_cost *c)
{
	assert_int_equal(c->size, sizeof(*c));
	assert_int_equal(c->family, SOVMESH_NOISE_NONE);
	assert_true(isinf(c->epsilon) && c->epsilon > 0);
	assert_true(c->delta == 0 && c->noise_multiplier == 0 && c->sensitivity == 0);
}

static void test_descriptor(void **state)
{
	(void)state;
	mini_host *mh = open_plugin(NULL);
	const sovmesh_plugin_descriptor *d = mh->desc;
	assert_string_equal(d->name, "none");
	assert_int_equal(d->kind, SOVMESH_KIND_NOISE);
	assert_non_null(strstr(d->description, "NO PRIVACY: baseline for experiments"));
	assert_string_equal(d->settings[0].name, "clip");
	assert_int_equal(d->settings[0].type, SOVMESH_SETTING_BOOL);
	assert_string_equal(d->settings[0].default_value, "true");
	assert_null(d->settings[1].name);
	/* Loading it says so, loudly. */
	assert_int_equal(mh->last_log_level, SOVMESH_LOG_WARNING);
	assert_non_null(strstr(mh->last_log, "NO PRIVACY"));
	mini_host_close(mh);
}

static void test_cost(void **state)
{
	(void)state;
	mini_host *mh = open_plugin(NULL);
	/* epsilon and delta are ignored: nothing is protected. */
	sovmesh_noise_params p = {.size = sizeof(p), .epsilon = 0, .delta = 0, .clip = 2};
	sovmesh_privacy_cost c = {0};
	sovmesh_error err = {0};
	assert_int_equal(ops_of(mh)->cost(mh->instance, &p, &c, &err), 0);
	expect_no_privacy(&c);
	p.clip = 0;
	assert_int_equal(ops_of(mh)->cost(mh->instance, &p, &c, &err), -EINVAL);
	expect_msg(&err, "clip 0 must be a finite number > 0");
	p.clip = NAN;
	assert_int_equal(ops_of(mh)->cost(mh->instance, &p, &c, &err), -EINVAL);
	expect_msg(&err, "clip nan must be");
	p.size = 4;
	assert_int_equal(ops_of(mh)->cost(mh->instance, &p, &c, &err), -EINVAL);
	expect_msg(&err, "size 4 is too small");
	assert_int_equal(ops_of(mh)->cost(mh->instance, NULL, &c, &err), -EINVAL);
	expect_msg(&err, "no noise parameters");
	assert_int_equal(mh->random_bytes_served, 0);
	mini_host_close(mh);
}

/* The output is the L2-clipped input, nothing added. */
static void test_output_is_clipped_input(void **state)
{
	(void)state;
	mini_host *mh = open_plugin(NULL);
	sovmesh_tensor_set *s = make2(mh, SOVMESH_DTYPE_F64, 100, 37);
	sovmesh_tensor_set *orig = make2(mh, SOVMESH_DTYPE_F64, 100, 37);
	uint64_t n = numel(s);
	for (uint64_t i = 0; i < n; i++) {
		double v = next_signed() * 3.0;
		set(s, i, v);
		set(orig, i, v);
	}
	double norm = l2(orig), clip = norm / 5;
	sovmesh_privacy_cost c;
	sovmesh_error err;
	assert_int_equal(perturb(mh, s, clip, &c, &err), 0);
	expect_no_privacy(&c);
	assert_true(fabs(l2(s) / clip - 1) < 1e-14);
	for (uint64_t i = 0; i < n; i++)
		assert_true(fabs(get(s, i) - get(orig, i) / 5) <= 1e-15 * fabs(get(orig, i)));

	/* Inside the bound: bit for bit unchanged. */
	for (uint64_t i = 0; i < n; i++)
		set(s, i, get(orig, i));
	assert_int_equal(perturb(mh, s, norm * 1.0001, &c, &err), 0);
	assert_memory_equal(s->tensors[0].data, orig->tensors[0].data, orig->tensors[0].nbytes);
	assert_memory_equal(s->tensors[1].data, orig->tensors[1].data, orig->tensors[1].nbytes);

	/* F32 is clipped to float precision. */
	sovmesh_tensor_set *f = make2(mh, SOVMESH_DTYPE_F32, 100, 37);
	for (uint64_t i = 0; i < n; i++)
		set(f, i, get(orig, i));
	assert_int_equal(perturb(mh, f, clip, &c, &err), 0);
	assert_true(fabs(l2(f) / clip - 1) < 1e-6);
	assert_int_equal(mh->random_bytes_served, 0);
	free_set(mh, f);
	free_set(mh, s);
	free_set(mh, orig);
	mini_host_close(mh);
}

/* clip = false: the set passes through untouched and params->clip is
 * not even looked at. */
static void test_clip_off(void **state)
{
	(void)state;
	static const mini_setting off[] = {{"clip", "false"}, {NULL, NULL}};
	mini_host *mh = open_plugin(off);
	sovmesh_tensor_set *s = make2(mh, SOVMESH_DTYPE_F64, 10, 10);
	for (uint64_t i = 0; i < numel(s); i++)
		set(s, i, 1e6 * next_signed());
	sovmesh_tensor_set *orig = make2(mh, SOVMESH_DTYPE_F64, 10, 10);
	for (uint64_t i = 0; i < numel(s); i++)
		set(orig, i, get(s, i));
	sovmesh_privacy_cost c;
	sovmesh_error err;
	assert_int_equal(perturb(mh, s, 1e-3, &c, &err), 0);
	assert_memory_equal(s->tensors[0].data, orig->tensors[0].data, orig->tensors[0].nbytes);
	assert_memory_equal(s->tensors[1].data, orig->tensors[1].data, orig->tensors[1].nbytes);
	assert_int_equal(perturb(mh, s, 0, &c, &err), 0);
	expect_no_privacy(&c);
	free_set(mh, s);
	free_set(mh, orig);
	mini_host_close(mh);
}

static void test_bad_set(void **state)
{
	(void)state;
	mini_host *mh = open_plugin(NULL);
	sovmesh_privacy_cost c;
	sovmesh_error err;
	static const char *const nm[1] = {"h"};
	static const uint32_t nd[1] = {1};
	static const uint64_t sh[1][SOVMESH_TENSOR_MAX_DIMS] = {{4}};
	sovmesh_tensor_set *h = mini_host_make_set(mh, 1, nm, SOVMESH_DTYPE_I32, nd, sh);
	assert_non_null(h);
	assert_int_equal(perturb(mh, h, 1, &c, &err), -ENOTSUP);
	expect_msg(&err, "tensor 'h' has dtype I32");
	free_set(mh, h);

	sovmesh_tensor_set *s = make2(mh, SOVMESH_DTYPE_F64, 3, 3);
	for (uint64_t i = 0; i < 6; i++)
		set(s, i, 10.0 + (double)i);
	set(s, 1, NAN);
	assert_int_equal(perturb(mh, s, 1, &c, &err), -EINVAL);
	expect_msg(&err, "tensor 'a.lora_A' element 1 is NaN");
	set(s, 1, -INFINITY);
	assert_int_equal(perturb(mh, s, 1, &c, &err), -EINVAL);
	expect_msg(&err, "element 1 is -Inf");
	for (uint64_t i = 0; i < 6; i++) /* untouched, though far over the clip */
		if (i != 1)
			assert_true(get(s, i) == 10.0 + (double)i);
	set(s, 1, 11);
	assert_int_equal(perturb(mh, s, -1, &c, &err), -EINVAL);
	expect_msg(&err, "clip -1 must be");
	assert_true(get(s, 5) == 15.0);
	free_set(mh, s);
	mini_host_close(mh);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_descriptor),
	    cmocka_unit_test(test_cost),
	    cmocka_unit_test(test_output_is_clipped_input),
	    cmocka_unit_test(test_clip_off),
	    cmocka_unit_test(test_bad_set),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

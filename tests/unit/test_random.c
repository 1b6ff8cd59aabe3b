/* rng_bytes and the seeded deterministic mode (random.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "random.h"

static void test_secure_output_varies(void **state)
{
	(void)state;
	uint8_t a[64], b[64];
	assert_false(rng_is_deterministic());
	assert_int_equal(rng_bytes(a, sizeof(a)), 0);
	assert_int_equal(rng_bytes(b, sizeof(b)), 0);
	assert_memory_not_equal(a, b, sizeof(a));
	/* 64 bytes all equal would mean a broken source. */
	size_t same = 0;
	for (size_t i = 1; i < sizeof(a); i++)
		same += a[i] == a[0];
	assert_true(same < sizeof(a) - 1);
	assert_int_equal(rng_bytes(a, 0), 0);
}

/* Runs after the secure test: seeding is for the rest of the process. */
static void test_deterministic_repeatable(void **state)
{
	(void)state;
	uint8_t a[100], b[100], c[100];

	rng_insecure_seed(42);
	assert_true(rng_is_deterministic());
	assert_int_equal(rng_bytes(a, sizeof(a)), 0);

	rng_insecure_seed(42);
	/* Split reads give the same stream as one read. */
	assert_int_equal(rng_bytes(b, 1), 0);
	assert_int_equal(rng_bytes(b + 1, 63), 0);
	assert_int_equal(rng_bytes(b + 64, 36), 0);
	assert_memory_equal(a, b, sizeof(a));

	/* The stream moves on: the next bytes differ from the first. */
	assert_int_equal(rng_bytes(c, sizeof(c)), 0);
	assert_memory_not_equal(a, c, sizeof(a));

	rng_insecure_seed(43);
	assert_int_equal(rng_bytes(c, sizeof(c)), 0);
	assert_memory_not_equal(a, c, sizeof(a));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_secure_output_varies),
	    cmocka_unit_test(test_deterministic_repeatable),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* thermal.c on fake sysfs trees. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "thermal.h"

static char root[64];

static void put(const char *rel, const char *text)
{
	char path[256], dir[256];
	snprintf(path, sizeof(path), "%s/%s", root, rel);
	snprintf(dir, sizeof(dir), "%s", path);
	for (char *p = dir + strlen(root) + 1; *p; p++) {
		if (*p == '/') {
			*p = '\0';
			mkdir(dir, 0755);
			*p = '/';
		}
	}
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static int setup(void **state)
{
	(void)state;
	snprintf(root, sizeof(root), "/tmp/sovmesh-thermal-XXXXXX");
	assert_non_null(mkdtemp(root));
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	return system(cmd) == 0 ? 0 : -1;
}

static void test_no_sensor(void **state)
{
	(void)state;
	thermal_state ts;
	thermal_read(root, 80, &ts);
	assert_false(ts.has_temp);
	assert_false(ts.hot);
	assert_false(ts.throttled);
}

static void test_hottest_zone_and_limit(void **state)
{
	(void)state;
	put("class/thermal/thermal_zone0/temp", "45000\n");
	put("class/thermal/thermal_zone1/temp", "79500\n");
	put("class/thermal/thermal_zone2/temp", "garbage\n");
	put("class/thermal/cooling_device0/temp", "99000\n"); /* not a zone */
	thermal_state ts;
	thermal_read(root, 80, &ts);
	assert_true(ts.has_temp);
	assert_true(ts.temp_c > 79.4 && ts.temp_c < 79.6);
	assert_false(ts.hot);
	put("class/thermal/thermal_zone1/temp", "90000\n");
	thermal_read(root, 80, &ts);
	assert_true(ts.hot);
	/* At the limit counts as hot ("at or above"). */
	put("class/thermal/thermal_zone1/temp", "80000\n");
	thermal_read(root, 80, &ts);
	assert_true(ts.hot);
	/* Implausible readings are ignored, not trusted. */
	put("class/thermal/thermal_zone1/temp", "999000\n");
	thermal_read(root, 80, &ts);
	assert_false(ts.hot);
	assert_true(ts.temp_c > 44.9 && ts.temp_c < 45.1);
}

static void test_pi_throttled(void **state)
{
	(void)state;
	put("devices/platform/soc/soc:firmware/get_throttled", "0x50000\n"); /* past only */
	thermal_state ts;
	thermal_read(root, 80, &ts);
	assert_false(ts.throttled);
	put("devices/platform/soc/soc:firmware/get_throttled", "0x50005\n"); /* now */
	thermal_read(root, 80, &ts);
	assert_true(ts.throttled);
	assert_true(ts.hot);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_no_sensor, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_hottest_zone_and_limit, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_pi_throttled, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

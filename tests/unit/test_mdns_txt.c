/*
 * discovery-mdns TXT validation (plugins/discovery-mdns/txt.c): one test
 * per rule, each showing a record that passes and one that breaks it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "txt.h"

#define FP "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static char why[256];

/* Parse NULL-terminated C strings as the strings of one TXT record. */
static int parse_strs(const char *const *strs, mdns_txt *out)
{
	mdns_txt_item items[64];
	size_t n = 0;
	for (; strs[n]; n++) {
		items[n].data = (const uint8_t *)strs[n];
		items[n].len = strlen(strs[n]);
	}
	why[0] = '\0';
	int rc = mdns_txt_parse(items, n, out, why, sizeof(why));
	if (rc != 0) {
		assert_true(why[0] != '\0');
		assert_null(strchr(why, '\n'));
	}
	return rc;
}

#define PARSE(out, ...) parse_strs((const char *const[]){__VA_ARGS__, NULL}, (out))

static void test_valid_minimal(void **state)
{
	(void)state;
	mdns_txt t;
	assert_int_equal(PARSE(&t, "v=1", "fp=" FP, "name=kitchen-pi"), 0);
	assert_int_equal(t.version, 1);
	assert_string_equal(t.fingerprint, FP);
	assert_string_equal(t.name, "kitchen-pi");
	assert_int_equal(t.pairing_port, 0);
}

static void test_pair_port(void **state)
{
	(void)state;
	mdns_txt t;
	assert_int_equal(PARSE(&t, "pair=7001", "v=1", "fp=" FP, "name=a"), 0);
	assert_int_equal(t.pairing_port, 7001);
	assert_int_equal(PARSE(&t, "v=1", "fp=" FP, "name=a", "pair=1"), 0);
	assert_int_equal(t.pairing_port, 1);
	assert_int_equal(PARSE(&t, "v=1", "fp=" FP, "name=a", "pair=65535"), 0);
	assert_int_equal(t.pairing_port, 65535);
	const char *bad[] = {"pair=0",   "pair=65536", "pair=",    "pair=-1",         "pair=+5",
	                     "pair=80x", "pair=080",   "pair= 80", "pair=99999999999"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(PARSE(&t, "v=1", "fp=" FP, "name=a", bad[i]), -EBADMSG);
		assert_non_null(strstr(why, "pair="));
	}
}

static void test_required_keys(void **state)
{
	(void)state;
	mdns_txt t;
	assert_int_equal(PARSE(&t, "fp=" FP, "name=a"), -EBADMSG);
	assert_non_null(strstr(why, "v="));
	assert_int_equal(PARSE(&t, "v=1", "name=a"), -EBADMSG);
	assert_non_null(strstr(why, "fp="));
	assert_int_equal(PARSE(&t, "v=1", "fp=" FP), -EBADMSG);
	assert_non_null(strstr(why, "name="));
	assert_int_equal(mdns_txt_parse(NULL, 0, &t, why, sizeof(why)), -EBADMSG);
}

static void test_version(void **state)
{
	(void)state;
	mdns_txt t;
	/* Well-formed but another version: its own code, so the caller can
	 * say so, and it is still not reported. */
	assert_int_equal(PARSE(&t, "v=2", "fp=" FP, "name=a"), -EPROTONOSUPPORT);
	assert_non_null(strstr(why, "version 2"));
	assert_int_equal(PARSE(&t, "v=4294967295", "fp=" FP, "name=a"), -EPROTONOSUPPORT);
	const char *bad[] = {"v=", "v=one", "v=01", "v=-1", "v=1.0", "v=4294967296", "v= 1"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(PARSE(&t, bad[i], "fp=" FP, "name=a"), -EBADMSG);
	assert_int_equal(PARSE(&t, "v=0", "fp=" FP, "name=a"), -EPROTONOSUPPORT);
}

static void test_fingerprint(void **state)
{
	(void)state;
	mdns_txt t;
	char upper[80];
	snprintf(upper, sizeof(upper), "fp=%s",
	         "0123456789ABCDEF0123456789abcdef0123456789ABCDEF0123456789abcdef");
	assert_int_equal(PARSE(&t, "v=1", upper, "name=a"), 0);
	assert_string_equal(t.fingerprint, FP); /* lowercased */
	/* 63 and 65 digits, a non-hex digit, empty. */
	assert_int_equal(PARSE(&t, "v=1", "fp=" FP "0", "name=a"), -EBADMSG);
	char short_fp[80];
	snprintf(short_fp, sizeof(short_fp), "fp=%.63s", FP);
	assert_int_equal(PARSE(&t, "v=1", short_fp, "name=a"), -EBADMSG);
	char nonhex[80];
	snprintf(nonhex, sizeof(nonhex), "fp=%.63sg", FP);
	assert_int_equal(PARSE(&t, "v=1", nonhex, "name=a"), -EBADMSG);
	assert_int_equal(PARSE(&t, "v=1", "fp=", "name=a"), -EBADMSG);
	assert_non_null(strstr(why, "fp="));
}

static void test_name(void **state)
{
	(void)state;
	mdns_txt t;
	assert_int_equal(PARSE(&t, "v=1", "fp=" FP,
	                       "name=K\xc3\xbc"
	                       "che \xe2\x9c\x93 \xf0\x9f\x8d\x95"),
	                 0);
	assert_string_equal(t.name, "K\xc3\xbc"
	                            "che \xe2\x9c\x93 \xf0\x9f\x8d\x95");
	char n63[80], n64[80];
	snprintf(n63, sizeof(n63), "name=%063d", 0);
	snprintf(n64, sizeof(n64), "name=%064d", 0);
	assert_int_equal(PARSE(&t, "v=1", "fp=" FP, n63), 0);
	assert_int_equal(strlen(t.name), 63);
	const char *bad[] = {
	    "name=",                 /* empty */
	    n64,                     /* 64 bytes */
	    "name=a\x01\x62",        /* C0 control */
	    "name=a\x1b[2Jb",        /* escape sequence */
	    "name=a\x7f",            /* DEL */
	    "name=a\xc2\x85",        /* C1 control (NEL) */
	    "name=\xc3",             /* truncated */
	    "name=\xc0\xaf",         /* overlong '/' */
	    "name=\xe0\x80\xaf",     /* overlong, 3 bytes */
	    "name=\xed\xa0\x80",     /* surrogate */
	    "name=\xf4\x90\x80\x80", /* > U+10FFFF */
	    "name=\xff",             /* never valid */
	    "name=\x80",             /* stray continuation */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(PARSE(&t, "v=1", "fp=" FP, bad[i]), -EBADMSG);
		assert_non_null(strstr(why, "name="));
	}
	/* An embedded NUL is a control character too. */
	mdns_txt_item items[3] = {{(const uint8_t *)"v=1", 3},
	                          {(const uint8_t *)"fp=" FP, 67},
	                          {(const uint8_t *)"name=a\0b", 8}};
	assert_int_equal(mdns_txt_parse(items, 3, &t, why, sizeof(why)), -EBADMSG);
}

static void test_key_value_form(void **state)
{
	(void)state;
	mdns_txt t;
	/* A boolean attribute (no '=') and an empty key are refused. */
	assert_int_equal(PARSE(&t, "v=1", "fp=" FP, "name=a", "flag"), -EBADMSG);
	assert_non_null(strstr(why, "key=value"));
	assert_int_equal(PARSE(&t, "v=1", "fp=" FP, "name=a", "=x"), -EBADMSG);
	assert_non_null(strstr(why, "empty key"));
	assert_int_equal(PARSE(&t, "v=1", "fp=" FP, "name=a", "k\x01y=x"), -EBADMSG);
	assert_int_equal(PARSE(&t, "v=1", "fp=" FP, "name=a", "k\xc3\xa9=x"), -EBADMSG);
	/* An empty string (RFC 6763's empty record) is skipped. */
	assert_int_equal(PARSE(&t, "", "v=1", "fp=" FP, "name=a"), 0);
	/* Unknown keys are ignored, known keys match in any case. */
	assert_int_equal(PARSE(&t, "V=1", "FP=" FP, "Name=b", "future=whatever=1"), 0);
	assert_string_equal(t.name, "b");
	/* A value may contain '='. */
	assert_int_equal(PARSE(&t, "v=1", "fp=" FP, "name=a=b"), 0);
	assert_string_equal(t.name, "a=b");
}

static void test_duplicate_keys(void **state)
{
	(void)state;
	mdns_txt t;
	assert_int_equal(PARSE(&t, "v=1", "fp=" FP, "name=a", "name=b"), -EBADMSG);
	assert_non_null(strstr(why, "repeats"));
	assert_int_equal(PARSE(&t, "v=1", "fp=" FP, "name=a", "FP=" FP), -EBADMSG);
	assert_int_equal(PARSE(&t, "v=1", "fp=" FP, "name=a", "x=1", "X=2"), -EBADMSG);
	assert_int_equal(PARSE(&t, "v=1", "v=1", "fp=" FP, "name=a"), -EBADMSG);
}

static void test_sizes(void **state)
{
	(void)state;
	mdns_txt t;
	/* One string of exactly 255 bytes passes, 256 does not. */
	char s255[300], s256[300];
	memset(s255, 'x', sizeof(s255));
	memcpy(s255, "pad=", 4);
	s255[255] = '\0';
	memcpy(s256, s255, 255);
	s256[255] = 'x';
	s256[256] = '\0';
	assert_int_equal(PARSE(&t, "v=1", "fp=" FP, "name=a", s255), 0);
	assert_int_equal(PARSE(&t, "v=1", "fp=" FP, "name=a", s256), -EBADMSG);
	assert_non_null(strstr(why, "256 bytes"));

	/* Total: v=1 (4) + fp (68) + name=a (7) = 79 wire bytes; pad with
	 * distinct keys up to 1300 exactly, then one byte more. */
	static char pads[8][256];
	static const char fp_rec[] = "fp=" FP;
	const char *strs[16] = {"v=1", fp_rec, "name=a"};
	size_t total = 79, n = 3;
	for (int i = 0; total < 1300; i++) {
		size_t room = 1300 - total - 1; /* bytes of this string */
		size_t len = room > 255 ? 255 : room;
		assert_true(len >= 4);
		memset(pads[i], 'y', len);
		snprintf(pads[i], 5, "p%d=", i);
		pads[i][3] = '=';
		pads[i][len] = '\0';
		strs[n++] = pads[i];
		total += 1 + len;
	}
	assert_int_equal(total, 1300);
	assert_int_equal(parse_strs(strs, &t), 0);
	/* One more byte over the limit. */
	size_t last = strlen(pads[n - 4]);
	pads[n - 4][last] = 'y';
	pads[n - 4][last + 1] = '\0';
	assert_int_equal(parse_strs(strs, &t), -EBADMSG);
	assert_non_null(strstr(why, "1300"));
}

static void test_helpers(void **state)
{
	(void)state;
	assert_true(mdns_txt_fp_ok((const uint8_t *)FP, 64));
	assert_false(mdns_txt_fp_ok((const uint8_t *)FP, 63));
	assert_false(mdns_txt_fp_ok(NULL, 64));
	assert_true(mdns_txt_name_ok((const uint8_t *)"x", 1));
	assert_false(mdns_txt_name_ok((const uint8_t *)"", 0));
	assert_false(mdns_txt_name_ok((const uint8_t *)"a\tb", 3));
	/* why may be NULL. */
	mdns_txt t;
	mdns_txt_item it = {(const uint8_t *)"v=1", 3};
	assert_int_equal(mdns_txt_parse(&it, 1, &t, NULL, 0), -EBADMSG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_valid_minimal),  cmocka_unit_test(test_pair_port),
	    cmocka_unit_test(test_required_keys),  cmocka_unit_test(test_version),
	    cmocka_unit_test(test_fingerprint),    cmocka_unit_test(test_name),
	    cmocka_unit_test(test_key_value_form), cmocka_unit_test(test_duplicate_keys),
	    cmocka_unit_test(test_sizes),          cmocka_unit_test(test_helpers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

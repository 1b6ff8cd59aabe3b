/* pair_uri.c: codes, names, host:port checks and the sovmesh://pair URI. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pair_uri.h"

#define FP      "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define OK_TAIL "&fp=" FP "&code=7K3Q9-XWDM2&addr=127.0.0.1:47471&port=47470"

static void test_code_generate(void **state)
{
	(void)state;
	char a[PAIR_CODE_LEN + 1], b[PAIR_CODE_LEN + 1], norm[PAIR_CODE_LEN + 1];
	int seen[256] = {0};
	assert_int_equal(pair_code_generate(a), 0);
	assert_int_equal(strlen(a), PAIR_CODE_LEN);
	for (int i = 0; i < 200; i++) {
		assert_int_equal(pair_code_generate(b), 0);
		assert_int_equal(pair_code_normalize(b, norm, NULL), 0);
		assert_string_equal(b, norm); /* generated codes are normalised */
		for (int k = 0; k < PAIR_CODE_LEN; k++) {
			assert_null(strchr("ILOU", b[k]));
			seen[(unsigned char)b[k]]++;
		}
	}
	assert_string_not_equal(a, b);
	int distinct = 0;
	for (int c = 0; c < 256; c++)
		distinct += seen[c] > 0;
	/* 2000 draws over 32 symbols: every symbol shows up. */
	assert_int_equal(distinct, 32);
}

static void test_code_normalize(void **state)
{
	(void)state;
	char out[PAIR_CODE_LEN + 1], shown[PAIR_CODE_DISPLAY_LEN + 1];
	sovmesh_error err = {0};
	assert_int_equal(pair_code_normalize("7k3q9-xwdm2", out, &err), 0);
	assert_string_equal(out, "7K3Q9XWDM2");
	assert_int_equal(pair_code_normalize(" 7K3Q9 XWDM2 ", out, &err), 0);
	assert_string_equal(out, "7K3Q9XWDM2");
	assert_int_equal(pair_code_normalize("iLoO1-00000", out, &err), 0);
	assert_string_equal(out, "1100100000");
	pair_code_format("7K3Q9XWDM2", shown);
	assert_string_equal(shown, "7K3Q9-XWDM2");

	assert_int_equal(pair_code_normalize("7K3Q9-XWDM", out, &err), -EINVAL);
	assert_non_null(strstr(err.message, "has 9 characters, expected 10"));
	assert_int_equal(pair_code_normalize("7K3Q9-XWDM22", out, &err), -EINVAL);
	assert_non_null(strstr(err.message, "more than 10"));
	assert_int_equal(pair_code_normalize("7K3Q9-XWDMU", out, &err), -EINVAL);
	assert_non_null(strstr(err.message, "'U' at position 11"));
	assert_int_equal(pair_code_normalize("7K3Q9_XWDM2", out, &err), -EINVAL);
	assert_non_null(strstr(err.message, "'_' at position 6"));
	assert_int_equal(pair_code_normalize("7K3Q9\nXWDM2", out, &err), -EINVAL);
	assert_non_null(strstr(err.message, "byte 0x0a"));
	assert_null(strchr(err.message, '\n'));
	assert_int_equal(pair_code_normalize("", out, &err), -EINVAL);
	assert_int_equal(pair_code_normalize(NULL, out, &err), -EINVAL);
}

static void test_name_check(void **state)
{
	(void)state;
	sovmesh_error err = {0};
	const char *ok[] = {"kitchen-pi", "J\xc3\xbcrgen's laptop", "\xe6\x9c\xa8", "a"};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		assert_int_equal(pair_name_check("name", ok[i], strlen(ok[i]), &err), 0);
	char long_name[65];
	memset(long_name, 'a', 64);
	long_name[64] = '\0';
	assert_int_equal(pair_name_check("name", long_name, 63, &err), 0);
	assert_int_equal(pair_name_check("name", long_name, 64, &err), -EINVAL);
	assert_non_null(strstr(err.message, "64 bytes long, at most 63"));
	struct {
		const char *s;
		const char *msg;
	} bad[] = {
	    {"", "is empty"},
	    {"a\tb", "U+0009"},
	    {"a\x7f", "U+007F"},
	    {"a\xc2\x85", "U+0085"},                 /* C1 NEL */
	    {"evil\xe2\x80\xae", "U+202E"},          /* right-to-left override */
	    {"a\xef\xbb\xbf", "U+FEFF"},             /* BOM */
	    {"a\xc3", "not valid UTF-8"},            /* truncated */
	    {"\xc0\xaf", "not valid UTF-8"},         /* overlong */
	    {"\xed\xa0\x80", "not valid UTF-8"},     /* surrogate */
	    {"\xf4\x90\x80\x80", "not valid UTF-8"}, /* > U+10FFFF */
	    {"\xff", "not valid UTF-8"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&err, 0, sizeof(err));
		assert_int_equal(
		    pair_name_check("parameter \"name\"", bad[i].s, strlen(bad[i].s), &err),
		    -EINVAL);
		assert_non_null(strstr(err.message, "parameter \"name\""));
		if (!strstr(err.message, bad[i].msg))
			fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err.message, bad[i].msg);
	}
}

static void test_hostport_check(void **state)
{
	(void)state;
	sovmesh_error err = {0};
	hostport hp;
	assert_int_equal(pair_hostport_check("addr", "192.168.1.7:47471", &hp, &err), 0);
	assert_string_equal(hp.host, "192.168.1.7");
	assert_int_equal(hp.port, 47471);
	assert_int_equal(pair_hostport_check("addr", "[fe80::1%eth0]:1", &hp, &err), 0);
	assert_int_equal(hp.family, AF_INET6);
	const char *bad[] = {"host.lan:1", "1.2.3.4", "1.2.3.4:0",  "1.2.3.4:65536",
	                     "[::1:5",     "::1:5",   "1.2.3.4:+5", ""};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(pair_hostport_check("parameter \"addr\"", bad[i], NULL, &err),
		                 -EINVAL);
		assert_non_null(strstr(err.message, "parameter \"addr\""));
	}
}

static void test_uri_parse_ok(void **state)
{
	(void)state;
	pair_uri u;
	sovmesh_error err = {0};
	const char *uri = "sovmesh://pair?v=1&name=J%C3%BCrgen%27s%20Pi%2B" OK_TAIL
	                  "&addr=%5Bfe80::1%25eth0%5D:47471";
	if (pair_uri_parse(uri, &u, &err) != 0)
		fail_msg("%s", err.message);
	assert_string_equal(u.name, "J\xc3\xbcrgen's Pi+");
	assert_string_equal(u.fingerprint_hex, FP);
	assert_string_equal(u.code, "7K3Q9XWDM2");
	assert_int_equal(u.n_addrs, 2);
	assert_string_equal(u.addrs[0], "127.0.0.1:47471");
	assert_string_equal(u.addrs[1], "[fe80::1%eth0]:47471");
	assert_int_equal(u.port, 47470);

	/* Any order; fp in upper case; '+' literal; code in lower case. */
	const char *uri2 = "sovmesh://pair?port=1&addr=10.0.0.1:2&code=7k3q9xwdm2&fp="
	                   "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF"
	                   "&name=a+b&v=1";
	if (pair_uri_parse(uri2, &u, &err) != 0)
		fail_msg("%s", err.message);
	assert_string_equal(u.name, "a+b");
	assert_string_equal(u.fingerprint_hex, FP);
	assert_int_equal(u.port, 1);
}

static void test_uri_round_trip(void **state)
{
	(void)state;
	pair_uri u, back;
	sovmesh_error err = {0};
	char *uri = NULL;
	memset(&u, 0, sizeof(u));
	strcpy(u.name, "Caf\xc3\xa9 & bar=1?#%");
	strcpy(u.fingerprint_hex, FP);
	strcpy(u.code, "7K3Q9XWDM2");
	strcpy(u.addrs[0], "192.168.1.7:47471");
	strcpy(u.addrs[1], "[fe80::1%eth0]:47471");
	u.n_addrs = 2;
	u.port = 47470;
	if (pair_uri_build(&u, &uri, &err) != 0)
		fail_msg("%s", err.message);
	assert_non_null(strstr(uri, "sovmesh://pair?v=1&name=Caf%C3%A9%20%26%20bar%3D1%3F%23%25"));
	assert_non_null(strstr(uri, "&code=7K3Q9-XWDM2"));
	assert_non_null(strstr(uri, "&addr=%5Bfe80::1%25eth0%5D:47471"));
	if (pair_uri_parse(uri, &back, &err) != 0)
		fail_msg("%s: %s", uri, err.message);
	free(uri);
	assert_string_equal(back.name, u.name);
	assert_string_equal(back.fingerprint_hex, u.fingerprint_hex);
	assert_string_equal(back.code, u.code);
	assert_int_equal(back.n_addrs, 2);
	assert_string_equal(back.addrs[0], u.addrs[0]);
	assert_string_equal(back.addrs[1], u.addrs[1]);
	assert_int_equal(back.port, u.port);

	/* Build refuses what parse would. */
	u.port = 0;
	assert_int_equal(pair_uri_build(&u, &uri, &err), -EINVAL);
	assert_non_null(strstr(err.message, "port"));
	u.port = 1;
	u.n_addrs = 0;
	assert_int_equal(pair_uri_build(&u, &uri, &err), -EINVAL);
	assert_non_null(strstr(err.message, "addr"));
	u.n_addrs = 1;
	strcpy(u.name, "tab\there");
	assert_int_equal(pair_uri_build(&u, &uri, &err), -EINVAL);
	assert_non_null(strstr(err.message, "name"));
	strcpy(u.name, "ok");
	strcpy(u.code, "SHORT");
	assert_int_equal(pair_uri_build(&u, &uri, &err), -EINVAL);
	assert_non_null(strstr(err.message, "code"));
}

static void test_uri_refusals(void **state)
{
	(void)state;
	char big[PAIR_URI_MAX + 256];
	snprintf(big, sizeof(big), "sovmesh://pair?v=1&name=%0*d" OK_TAIL, PAIR_URI_MAX, 0);
	char nine[1024];
	snprintf(nine, sizeof(nine),
	         "sovmesh://pair?v=1&name=a&fp=" FP "&code=7K3Q9XWDM2&port=1"
	         "%s%s%s%s%s%s%s%s%s",
	         "&addr=1.1.1.1:1", "&addr=1.1.1.1:2", "&addr=1.1.1.1:3", "&addr=1.1.1.1:4",
	         "&addr=1.1.1.1:5", "&addr=1.1.1.1:6", "&addr=1.1.1.1:7", "&addr=1.1.1.1:8",
	         "&addr=1.1.1.1:9");
	struct {
		const char *uri;
		const char *msg;
	} cases[] = {
	    {big, "at most 2048"},
	    {"sovmesh://pair?v=1&name=a b" OK_TAIL, "byte 26 is a space"},
	    {"sovmesh://pair?v=1&name=J\xc3\xbc" OK_TAIL, "non-ASCII"},
	    {"https://pair?v=1&name=a" OK_TAIL, "must start with \"sovmesh://pair?\""},
	    {"SOVMESH://pair?v=1&name=a" OK_TAIL, "must start with"},
	    {"sovmesh://peer?v=1&name=a" OK_TAIL, "must start with"},
	    {"sovmesh://pair/x?v=1&name=a" OK_TAIL, "must start with"},
	    {"sovmesh://pair", "must start with"},
	    {"sovmesh://pair?v=1&name=a" OK_TAIL "#frag", "fragment"},
	    {"sovmesh://pair?v=1&&name=a" OK_TAIL, "empty parameter"},
	    {"sovmesh://pair?v=1&name=a" OK_TAIL "&", "empty parameter"},
	    {"sovmesh://pair?", "empty parameter"},
	    {"sovmesh://pair?v=1&name" OK_TAIL, "parameter \"name\" has no '=value'"},
	    {"sovmesh://pair?v=1&name=a%2" OK_TAIL, "\"name\": bad percent escape"},
	    {"sovmesh://pair?v=1&name=a%zz" OK_TAIL, "\"name\": bad percent escape"},
	    {"sovmesh://pair?v=1&name=a%00b" OK_TAIL, "\"name\" contains %00"},
	    {"sovmesh://pair?v=1&name=a&color=red" OK_TAIL, "unknown parameter \"color\""},
	    {"sovmesh://pair?v=1&Name=a" OK_TAIL, "unknown parameter \"Name\""},
	    {"sovmesh://pair?v=1&v=1&name=a" OK_TAIL, "parameter \"v\" given twice"},
	    {"sovmesh://pair?v=1&name=a&name=b" OK_TAIL, "parameter \"name\" given twice"},
	    {"sovmesh://pair?v=1&name=a" OK_TAIL "&fp=" FP, "parameter \"fp\" given twice"},
	    {"sovmesh://pair?v=1&name=a" OK_TAIL "&code=7K3Q9XWDM2", "\"code\" given twice"},
	    {"sovmesh://pair?v=1&name=a" OK_TAIL "&port=2", "\"port\" given twice"},
	    {"sovmesh://pair?v=2&name=a" OK_TAIL, "\"v\": version \"2\" is not supported"},
	    {"sovmesh://pair?v=01&name=a" OK_TAIL, "\"v\": version"},
	    {"sovmesh://pair?v=%0A&name=a" OK_TAIL, "\"v\": version \"?\""},
	    {"sovmesh://pair?name=a" OK_TAIL, "parameter \"v\" is missing"},
	    {"sovmesh://pair?v=1&fp=" FP "&code=7K3Q9XWDM2&addr=1.1.1.1:1&port=1",
	     "parameter \"name\" is missing"},
	    {"sovmesh://pair?v=1&name=a&code=7K3Q9XWDM2&addr=1.1.1.1:1&port=1",
	     "parameter \"fp\" is missing"},
	    {"sovmesh://pair?v=1&name=a&fp=" FP "&addr=1.1.1.1:1&port=1",
	     "parameter \"code\" is missing"},
	    {"sovmesh://pair?v=1&name=a&fp=" FP "&code=7K3Q9XWDM2&port=1",
	     "parameter \"addr\" is missing"},
	    {"sovmesh://pair?v=1&name=a&fp=" FP "&code=7K3Q9XWDM2&addr=1.1.1.1:1",
	     "parameter \"port\" is missing"},
	    {"sovmesh://pair?v=1&name=" OK_TAIL, "parameter \"name\" is empty"},
	    {"sovmesh://pair?v=1&name=a%09b" OK_TAIL, "parameter \"name\" contains a control"},
	    {"sovmesh://pair?v=1&name=%E2%80%AEevil" OK_TAIL, "U+202E"},
	    {"sovmesh://pair?v=1&name=%C3" OK_TAIL, "\"name\" is not valid UTF-8"},
	    {"sovmesh://pair?v=1&name="
	     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" OK_TAIL,
	     "\"name\" is 64 bytes long"},
	    {"sovmesh://pair?v=1&name=a&fp=0123&code=7K3Q9XWDM2&addr=1.1.1.1:1&port=1",
	     "\"fp\" must be 64 hex digits, got 4"},
	    {"sovmesh://pair?v=1&name=a&fp="
	     "g123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	     "&code=7K3Q9XWDM2&addr=1.1.1.1:1&port=1",
	     "\"fp\": character 1 is not a hex digit"},
	    {"sovmesh://pair?v=1&name=a&fp=" FP "&code=7K3Q9&addr=1.1.1.1:1&port=1",
	     "\"code\": pairing code has 5 characters"},
	    {"sovmesh://pair?v=1&name=a&fp=" FP "&code=7K3Q9-XWDMU&addr=1.1.1.1:1&port=1",
	     "\"code\": pairing code: 'U'"},
	    {"sovmesh://pair?v=1&name=a&fp=" FP "&code=7K3Q9XWDM2&addr=host.lan:1&port=1",
	     "\"addr\": host must be a numeric"},
	    {"sovmesh://pair?v=1&name=a&fp=" FP "&code=7K3Q9XWDM2&addr=1.1.1.1:0&port=1",
	     "\"addr\": port must be 1..65535"},
	    {"sovmesh://pair?v=1&name=a&fp=" FP "&code=7K3Q9XWDM2&addr=1.1.1.1&port=1",
	     "\"addr\": missing ':port'"},
	    {"sovmesh://pair?v=1&name=a&fp=" FP "&code=7K3Q9XWDM2&addr=&port=1",
	     "\"addr\": empty address"},
	    {nine, "more than 8 \"addr\""},
	    {"sovmesh://pair?v=1&name=a&fp=" FP "&code=7K3Q9XWDM2&addr=1.1.1.1:1&port=0",
	     "\"port\" must be a port number 1..65535"},
	    {"sovmesh://pair?v=1&name=a&fp=" FP "&code=7K3Q9XWDM2&addr=1.1.1.1:1&port=65536",
	     "\"port\" must be"},
	    {"sovmesh://pair?v=1&name=a&fp=" FP "&code=7K3Q9XWDM2&addr=1.1.1.1:1&port=-1",
	     "\"port\" must be"},
	    {"sovmesh://pair?v=1&name=a&fp=" FP "&code=7K3Q9XWDM2&addr=1.1.1.1:1&port=",
	     "\"port\" must be"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		pair_uri u;
		sovmesh_error err = {0};
		int rc = pair_uri_parse(cases[i].uri, &u, &err);
		if (rc != -EINVAL)
			fail_msg("case %zu (%.80s): rc %d, expected -EINVAL", i, cases[i].uri, rc);
		if (!strstr(err.message, cases[i].msg))
			fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err.message, cases[i].msg);
		assert_null(strchr(err.message, '\n'));
	}
	/* Eight addr entries are fine. */
	char eight[1024];
	snprintf(eight, sizeof(eight), "%s", nine);
	*strstr(eight, "&addr=1.1.1.1:9") = '\0';
	pair_uri u;
	sovmesh_error err = {0};
	if (pair_uri_parse(eight, &u, &err) != 0)
		fail_msg("%s", err.message);
	assert_int_equal(u.n_addrs, 8);
	assert_int_equal(pair_uri_parse(NULL, &u, &err), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_code_generate), cmocka_unit_test(test_code_normalize),
	    cmocka_unit_test(test_name_check),    cmocka_unit_test(test_hostport_check),
	    cmocka_unit_test(test_uri_parse_ok),  cmocka_unit_test(test_uri_round_trip),
	    cmocka_unit_test(test_uri_refusals),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* pair_messages.c: build and parse pair-hello / pair-confirm / pair-error,
 * and a refusal with a clear one-line error for every malformed field. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pair_messages.h"

static char tmpdir[64];
static identity *self;

static int setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_pair_messages.XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	sovmesh_error err = {0};
	if (identity_load_or_create(tmpdir, "kitchen-pi", &self, &err) < 0) {
		fprintf(stderr, "identity: %s\n", err.message);
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	identity_free(self);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

/* Our hello as a line (with '\n'). */
static char *hello_line(void)
{
	const char *addrs[] = {"192.168.1.7:47470", "[fe80::1%eth0]:47470"};
	pair_hello h;
	sovmesh_error err = {0};
	char *line = NULL;
	if (pair_hello_from_identity(self, 47470, addrs, 2, &h, &err) < 0)
		fail_msg("%s", err.message);
	if (pair_hello_build(&h, &line, &err) < 0)
		fail_msg("%s", err.message);
	pair_hello_clear(&h);
	return line;
}

static void test_hello_round_trip(void **state)
{
	(void)state;
	char *line = hello_line();
	size_t len = strlen(line);
	assert_int_equal(line[len - 1], '\n');
	assert_null(memchr(line, '\n', len - 1)); /* one line */
	pair_msg m;
	sovmesh_error err = {0};
	if (pair_msg_parse(line, len - 1, &m, &err) < 0)
		fail_msg("%s", err.message);
	assert_int_equal(m.type, PAIR_MSG_HELLO);
	assert_string_equal(m.hello.name, "kitchen-pi");
	assert_string_equal(m.hello.cert_pem, self->cert_pem);
	/* Computed from the certificate by the receiver. */
	assert_memory_equal(m.hello.fingerprint, self->fingerprint, IDENTITY_FP_LEN);
	assert_string_equal(m.hello.fingerprint_hex, self->fingerprint_hex);
	assert_string_equal(m.hello.short_fp, self->short_fp);
	assert_memory_equal(m.hello.x25519_public, self->x25519_public, 32);
	assert_int_equal(m.hello.peer_port, 47470);
	assert_int_equal(m.hello.n_addresses, 2);
	assert_string_equal(m.hello.addresses[1], "[fe80::1%eth0]:47470");

	pair_hello copy;
	assert_int_equal(pair_hello_copy(&copy, &m.hello), 0);
	assert_ptr_not_equal(copy.cert_pem, m.hello.cert_pem);
	assert_string_equal(copy.cert_pem, m.hello.cert_pem);
	pair_hello_clear(&copy);
	pair_msg_clear(&m);
	assert_null(m.hello.cert_pem);
	free(line);
}

static void test_confirm_and_error(void **state)
{
	(void)state;
	char *line = NULL;
	pair_msg m;
	sovmesh_error err = {0};
	assert_int_equal(pair_confirm_build(&line), 0);
	assert_string_equal(line, "{\"type\":\"pair-confirm\"}\n");
	assert_int_equal(pair_msg_parse(line, strlen(line) - 1, &m, &err), 0);
	assert_int_equal(m.type, PAIR_MSG_CONFIRM);
	free(line);

	assert_int_equal(pair_error_build("bad\ncode \xc3\xa9", &line), 0);
	assert_int_equal(pair_msg_parse(line, strlen(line) - 1, &m, &err), 0);
	assert_int_equal(m.type, PAIR_MSG_ERROR);
	assert_string_equal(m.error, "bad?code \xc3\xa9");
	free(line);

	/* Long messages are cut (not mid-character), invalid UTF-8 kept as ASCII. */
	char big[2000];
	memset(big, 'x', sizeof(big));
	memcpy(big + 510, "\xc3\xa9", 2);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(pair_error_build(big, &line), 0);
	assert_int_equal(pair_msg_parse(line, strlen(line) - 1, &m, &err), 0);
	assert_int_equal(strlen(m.error), 512);
	free(line);
	assert_int_equal(pair_error_build("caf\xff", &line), 0);
	assert_int_equal(pair_msg_parse(line, strlen(line) - 1, &m, &err), 0);
	assert_string_equal(m.error, "caf?");
	free(line);
	/* A message received with controls is made printable. */
	const char *raw = "{\"type\":\"pair-error\",\"message\":\"a\\nb\\u001b[31m\"}";
	assert_int_equal(pair_msg_parse(raw, strlen(raw), &m, &err), 0);
	assert_string_equal(m.error, "a?b?[31m");
}

/* A valid hello with one change: `key` set to `value` (JSON text), or
 * removed when value is NULL. */
static char *hello_with(const char *key, const char *value)
{
	char *line = hello_line();
	json_t *o = json_loads(line, 0, NULL);
	assert_non_null(o);
	free(line);
	if (value) {
		json_t *v = json_loads(value, JSON_DECODE_ANY, NULL);
		if (!v)
			fail_msg("bad test value %s", value);
		json_object_set_new(o, key, v);
	} else {
		json_object_del(o, key);
	}
	char *s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return s;
}

static char *pem_of_two(void)
{
	size_t n = strlen(self->cert_pem);
	char *two = malloc(2 * n + 1);
	memcpy(two, self->cert_pem, n);
	memcpy(two + n, self->cert_pem, n + 1);
	json_t *s = json_string(two);
	free(two);
	char *out = json_dumps(s, JSON_ENCODE_ANY);
	json_decref(s);
	return out;
}

static char *corrupt_pem(void)
{
	char *pem = strdup(self->cert_pem);
	/* Break the DER inside the base64 (line 2 of the PEM). */
	char *body = strchr(pem, '\n') + 1;
	memcpy(body, "AAAAAAAAAAAA", 12);
	json_t *s = json_string(pem);
	free(pem);
	char *out = json_dumps(s, JSON_ENCODE_ANY);
	json_decref(s);
	return out;
}

static void expect_refused(const char *line, size_t len, const char *msg)
{
	pair_msg m;
	sovmesh_error err = {0};
	int rc = pair_msg_parse(line, len, &m, &err);
	if (rc != -EINVAL)
		fail_msg("%.100s: rc %d, expected -EINVAL", line, rc);
	if (!strstr(err.message, msg))
		fail_msg("%.100s: \"%s\" lacks \"%s\"", line, err.message, msg);
	assert_null(strchr(err.message, '\n'));
	assert_null(m.hello.cert_pem);
	assert_int_equal(m.type, 0);
}

static void test_refusals_generic(void **state)
{
	(void)state;
	struct {
		const char *line;
		const char *msg;
	} cases[] = {
	    {"", "not valid JSON"},
	    {"{", "not valid JSON"},
	    {"{\"type\":\"pair-confirm\"} x", "not valid JSON"},
	    {"[1,2]", "must be a JSON object"},
	    {"\"pair-confirm\"", "not valid JSON"},
	    {"{\"type\":\"pair-confirm\",\"type\":\"pair-confirm\"}", "duplicate"},
	    {"{}", "field \"type\" is missing"},
	    {"{\"type\":1}", "field \"type\" must be a string"},
	    {"{\"type\":\"pair-hola\"}", "unknown type \"pair-hola\""},
	    {"{\"type\":\"pair-x\\u001b\"}", "unknown type \"pair-x?\""},
	    {"{\"type\":\"pair-confirm\",\"ok\":true}", "pair-confirm: unknown field \"ok\""},
	    {"{\"type\":\"pair-error\"}", "pair-error: field \"message\" is missing"},
	    {"{\"type\":\"pair-error\",\"message\":\"\"}", "must be 1..512 bytes, got 0"},
	    {"{\"type\":\"pair-error\",\"message\":5}", "\"message\" must be a string"},
	    {"{\"type\":\"pair-error\",\"message\":\"a\",\"x\":1}", "unknown field \"x\""},
	    {"{\"type\":\"pair-error\",\"message\":\"\\u0000\"}", "not valid JSON"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		expect_refused(cases[i].line, strlen(cases[i].line), cases[i].msg);

	expect_refused("{\"type\":\"pair-confirm\"}\0", 24, "NUL byte");
	char *big = malloc(PAIR_MSG_MAX + 2);
	memset(big, ' ', PAIR_MSG_MAX + 1);
	expect_refused(big, PAIR_MSG_MAX + 1, "at most 65536");
	free(big);
	char msg[700];
	int n = snprintf(msg, sizeof(msg), "{\"type\":\"pair-error\",\"message\":\"%0513d\"}", 0);
	expect_refused(msg, (size_t)n, "must be 1..512 bytes, got 513");
}

static void test_refusals_hello(void **state)
{
	(void)state;
	char *two = pem_of_two();
	char *bad_der = corrupt_pem();
	char big_cert[PAIR_CERT_PEM_MAX + 16];
	snprintf(big_cert, sizeof(big_cert), "\"%0*d\"", PAIR_CERT_PEM_MAX + 1, 0);
	struct {
		const char *key;
		const char *value; /* NULL: removed */
		const char *msg;
	} cases[] = {
	    {"fingerprint", "\"00\"", "pair-hello: unknown field \"fingerprint\""},
	    {"version", NULL, "pair-hello: field \"version\" is missing"},
	    {"version", "2", "version 2 is not supported"},
	    {"version", "\"1\"", "field \"version\" must be an integer"},
	    {"version", "1.0", "field \"version\" must be an integer"},
	    {"name", NULL, "field \"name\" is missing"},
	    {"name", "7", "field \"name\" must be a string"},
	    {"name", "\"\"", "field \"name\" is empty"},
	    {"name", "\"a\\u202eb\"", "field \"name\" contains a control or invisible"},
	    {"name", "\"a\\nb\"", "field \"name\" contains a control"},
	    {"name", "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
	     "field \"name\" is 64 bytes long"},
	    {"cert", NULL, "field \"cert\" is missing"},
	    {"cert", "[]", "field \"cert\" must be a string"},
	    {"cert", "\"\"", "field \"cert\" must be 1..16384 bytes, got 0"},
	    {"cert", big_cert, "field \"cert\" must be 1..16384 bytes"},
	    {"cert", "\"hello\"", "field \"cert\" is not a PEM certificate"},
	    {"cert", "\"-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----\\n\"",
	     "field \"cert\" is not a PEM certificate"},
	    {"cert", two, "field \"cert\" holds more than one PEM block"},
	    {"cert", bad_der, "field \"cert\" is not an X.509 certificate GnuTLS can import"},
	    {"cert", "\"-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n\"",
	     "field \"cert\" is not an X.509 certificate"},
	    {"x25519", NULL, "field \"x25519\" is missing"},
	    {"x25519", "32", "field \"x25519\" must be a string"},
	    {"x25519", "\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\"",
	     "x25519\" must be base64 of exactly 32 bytes"}, /* 31 bytes */
	    {"x25519", "\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\"",
	     "x25519\" must be base64"}, /* 34 bytes */
	    {"x25519", "\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\"",
	     "x25519\" must be base64"}, /* non-canonical last char */
	    {"x25519", "\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA*=\"",
	     "x25519\" must be base64"},
	    {"x25519", "\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"",
	     "x25519\" must be base64"},
	    {"x25519", "\"AAAAAAAAAAAAAAAAAAAAAAAA AAAAAAAAAAAAAAAAAA=\"",
	     "x25519\" must be base64"},
	    {"peer_port", NULL, "field \"peer_port\" is missing"},
	    {"peer_port", "0", "field \"peer_port\" must be 1..65535"},
	    {"peer_port", "65536", "field \"peer_port\" must be 1..65535"},
	    {"peer_port", "-1", "field \"peer_port\" must be 1..65535"},
	    {"peer_port", "\"47470\"", "field \"peer_port\" must be an integer"},
	    {"addresses", NULL, "field \"addresses\" is missing"},
	    {"addresses", "\"1.2.3.4:5\"", "field \"addresses\" must be an array"},
	    {"addresses",
	     "[\"1.1.1.1:1\",\"1.1.1.1:2\",\"1.1.1.1:3\",\"1.1.1.1:4\",\"1.1.1.1:5\","
	     "\"1.1.1.1:6\",\"1.1.1.1:7\",\"1.1.1.1:8\",\"1.1.1.1:9\"]",
	     "field \"addresses\" has 9 entries, at most 8"},
	    {"addresses", "[\"1.1.1.1:1\", 5]", "field \"addresses\" entry 2 must be a string"},
	    {"addresses", "[\"example.org:1\"]",
	     "field \"addresses\" entry 1: host must be a numeric"},
	    {"addresses", "[\"1.1.1.1:0\"]", "entry 1: port must be 1..65535"},
	    {"addresses", "[\"1.1.1.1\"]", "entry 1: missing ':port'"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *line = hello_with(cases[i].key, cases[i].value);
		expect_refused(line, strlen(line), cases[i].msg);
		free(line);
	}
	free(two);
	free(bad_der);

	/* The limits themselves are fine. */
	char *line = hello_with("addresses", "[]");
	pair_msg m;
	sovmesh_error err = {0};
	assert_int_equal(pair_msg_parse(line, strlen(line), &m, &err), 0);
	assert_int_equal(m.hello.n_addresses, 0);
	pair_msg_clear(&m);
	free(line);
	line = hello_with("peer_port", "65535");
	assert_int_equal(pair_msg_parse(line, strlen(line), &m, &err), 0);
	assert_int_equal(m.hello.peer_port, 65535);
	pair_msg_clear(&m);
	free(line);
}

static void test_build_refusals(void **state)
{
	(void)state;
	pair_hello h;
	sovmesh_error err = {0};
	char *line = NULL;
	const char *bad_addr[] = {"localhost:1"};
	assert_int_equal(pair_hello_from_identity(self, 1, bad_addr, 1, &h, &err), -EINVAL);
	assert_non_null(strstr(err.message, "peer address"));
	const char *nine[9] = {"1.1.1.1:1", "1.1.1.1:1", "1.1.1.1:1", "1.1.1.1:1", "1.1.1.1:1",
	                       "1.1.1.1:1", "1.1.1.1:1", "1.1.1.1:1", "1.1.1.1:1"};
	assert_int_equal(pair_hello_from_identity(self, 1, nine, 9, &h, &err), -EINVAL);
	assert_int_equal(pair_hello_from_identity(self, 0, NULL, 0, &h, &err), -EINVAL);
	assert_non_null(strstr(err.message, "peer_port"));
	assert_int_equal(pair_hello_from_identity(self, 9, NULL, 0, &h, &err), 0);
	strcpy(h.name, "bad\x01name");
	assert_int_equal(pair_hello_build(&h, &line, &err), -EINVAL);
	assert_non_null(strstr(err.message, "name"));
	assert_null(line);
	pair_hello_clear(&h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_hello_round_trip), cmocka_unit_test(test_confirm_and_error),
	    cmocka_unit_test(test_refusals_generic), cmocka_unit_test(test_refusals_hello),
	    cmocka_unit_test(test_build_refusals),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}

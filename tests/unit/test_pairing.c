/*
 * pairing.c: two engines with real identities on one loop, over loopback.
 * Fake clients and a fake issuer speak TLS-SRP with GnuTLS directly to
 * check what the engine refuses.  Waits are bounded by a watchdog timer;
 * nothing asserts tight timings.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <uv.h>

#include "pairing.h"

#define MAX_EVENTS 16

typedef struct side {
	const char *label;
	identity *id;
	pairing *eng;
	int pins;
	bool pin_fail;
	pair_hello pinned;
	int events;
	pairing_event_type ev[MAX_EVENTS];
	unsigned ev_left[MAX_EVENTS];
	char ev_msg[MAX_EVENTS][640];
	pair_hello event_peer;
	/* last join */
	int joins_done;
	int join_status;
	char join_msg[640];
	pair_hello join_peer;
} side;

typedef struct fx {
	char dir[64];
	uv_loop_t loop;
	uv_timer_t watchdog;
	bool timed_out;
	side a, b; /* a issues, b joins */
	int closed;
} fx;

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int on_pin(void *ud, const pair_hello *peer, sovmesh_error *err)
{
	side *s = ud;
	if (s->pin_fail)
		return sovmesh_fail(err, -EIO, "peers.json: disk full (test)");
	s->pins++;
	pair_hello_clear(&s->pinned);
	assert_int_equal(pair_hello_copy(&s->pinned, peer), 0);
	return 0;
}

static void on_event(void *ud, const pairing_event *ev)
{
	side *s = ud;
	assert_true(s->events < MAX_EVENTS);
	assert_non_null(ev->message);
	assert_null(strchr(ev->message, '\n'));
	s->ev[s->events] = ev->type;
	s->ev_left[s->events] = ev->attempts_left;
	snprintf(s->ev_msg[s->events], sizeof(s->ev_msg[0]), "%s", ev->message);
	s->events++;
	if (ev->type == PAIRING_PAIRED) {
		assert_non_null(ev->peer);
		pair_hello_clear(&s->event_peer);
		assert_int_equal(pair_hello_copy(&s->event_peer, ev->peer), 0);
	} else {
		assert_null(ev->peer);
	}
}

static void on_join(void *ud, int status, const pair_hello *peer, const char *message)
{
	side *s = ud;
	s->joins_done++;
	s->join_status = status;
	snprintf(s->join_msg, sizeof(s->join_msg), "%s", message ? message : "");
	assert_null(strchr(s->join_msg, '\n'));
	pair_hello_clear(&s->join_peer);
	if (status == 0) {
		assert_non_null(peer);
		assert_int_equal(pair_hello_copy(&s->join_peer, peer), 0);
	} else {
		assert_null(peer);
		assert_true(message && *message);
	}
}

static void on_watchdog(uv_timer_t *t)
{
	fx *f = t->data;
	f->timed_out = true;
}

/* Run the loop until *counter reaches `want` (watchdog: 60 s). */
static void run_until(fx *f, const int *counter, int want)
{
	f->timed_out = false;
	uv_timer_start(&f->watchdog, on_watchdog, 60000, 0);
	while (*counter < want && !f->timed_out)
		uv_run(&f->loop, UV_RUN_ONCE);
	uv_timer_stop(&f->watchdog);
	if (*counter < want)
		fail_msg("timed out waiting (%d of %d)", *counter, want);
}

static void make_side(fx *f, side *s, const char *name, unsigned ttl, unsigned attempts,
                      unsigned io_ms)
{
	char dir[128];
	sovmesh_error err = {0};
	snprintf(dir, sizeof(dir), "%s/%s", f->dir, name);
	assert_int_equal(mkdir(dir, 0700), 0);
	s->label = name;
	if (identity_load_or_create(dir, name, &s->id, &err) < 0)
		fail_msg("identity: %s", err.message);
	const char *addrs[] = {"192.0.2.10:47470"};
	pairing_config cfg = {
	    .listen = "127.0.0.1:0",
	    .code_ttl_secs = ttl,
	    .max_attempts = attempts,
	    .io_timeout_ms = io_ms,
	    .peer_port = strcmp(name, "alice") == 0 ? 47001 : 47002,
	    .addresses = addrs,
	    .n_addresses = 1,
	};
	if (pairing_new(&f->loop, s->id, &cfg, on_pin, on_event, s, &s->eng, &err) < 0)
		fail_msg("pairing_new: %s", err.message);
}

static fx *fx_new(unsigned ttl, unsigned attempts, unsigned io_ms)
{
	fx *f = calloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/test_pairing.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	assert_int_equal(uv_loop_init(&f->loop), 0);
	uv_timer_init(&f->loop, &f->watchdog);
	f->watchdog.data = f;
	make_side(f, &f->a, "alice", ttl, attempts, io_ms);
	make_side(f, &f->b, "bob", ttl, attempts, io_ms);
	return f;
}

static void on_closed(void *ud)
{
	((fx *)ud)->closed++;
}

static void side_free(side *s)
{
	pair_hello_clear(&s->pinned);
	pair_hello_clear(&s->event_peer);
	pair_hello_clear(&s->join_peer);
	identity_free(s->id);
}

static void fx_free(fx *f)
{
	pairing_close(f->a.eng, on_closed, f);
	pairing_close(f->b.eng, on_closed, f);
	run_until(f, &f->closed, 2);
	uv_close((uv_handle_t *)&f->watchdog, NULL);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	side_free(&f->a);
	side_free(&f->b);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	assert_int_equal(system(cmd), 0);
	free(f);
}

static void offer(fx *f, pairing_offer_info *info)
{
	sovmesh_error err = {0};
	if (pairing_offer_new(f->a.eng, info, &err) < 0)
		fail_msg("pairing_offer_new: %s", err.message);
	assert_int_equal(strlen(info->code), PAIR_CODE_DISPLAY_LEN);
	assert_int_equal(info->code[5], '-');
	assert_true(info->port > 0);
}

static void join(fx *f, const char *code, uint16_t port, const char *expected_fp)
{
	char addr[32];
	sovmesh_error err = {0};
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)port);
	int want = f->b.joins_done + 1;
	if (pairing_join(f->b.eng, code, addr, expected_fp, on_join, &f->b, &err) < 0)
		fail_msg("pairing_join: %s", err.message);
	run_until(f, &f->b.joins_done, want);
}

static void assert_is(const pair_hello *h, const identity *id, uint16_t port)
{
	assert_string_equal(h->name, id->node_name);
	assert_string_equal(h->fingerprint_hex, id->fingerprint_hex);
	assert_string_equal(h->short_fp, id->short_fp);
	assert_memory_equal(h->x25519_public, id->x25519_public, 32);
	assert_string_equal(h->cert_pem, id->cert_pem);
	assert_int_equal(h->peer_port, port);
}

static void test_pair_success(void **state)
{
	(void)state;
	fx *f = fx_new(600, 5, 10000);
	pairing_offer_info info, again;
	offer(f, &info);
	assert_int_equal(pairing_offer_get(f->a.eng, &again), 1);
	assert_string_equal(again.code, info.code);
	assert_int_equal(again.attempts_left, 5);
	assert_true(info.expires_at > time(NULL) + 500);

	/* Lower case and without the dash, as a person might type it. */
	char typed[PAIR_CODE_LEN + 1];
	memcpy(typed, info.code, 5);
	memcpy(typed + 5, info.code + 6, 5);
	typed[PAIR_CODE_LEN] = '\0';
	for (char *c = typed; *c; c++)
		if (*c >= 'A' && *c <= 'Z')
			*c = (char)(*c - 'A' + 'a');
	join(f, typed, info.port, NULL);
	if (f->b.join_status != 0)
		fail_msg("join failed: %s", f->b.join_msg);
	run_until(f, &f->a.events, 1);
	assert_int_equal(f->a.ev[0], PAIRING_PAIRED);
	assert_non_null(strstr(f->a.ev_msg[0], "paired with bob"));
	assert_non_null(strstr(f->b.join_msg, "paired with alice"));
	assert_non_null(strstr(f->b.join_msg, f->a.id->short_fp));

	/* Both pinned the other, with what the other announced. */
	assert_int_equal(f->a.pins, 1);
	assert_int_equal(f->b.pins, 1);
	assert_is(&f->a.pinned, f->b.id, 47002);
	assert_is(&f->a.event_peer, f->b.id, 47002);
	assert_is(&f->b.pinned, f->a.id, 47001);
	assert_is(&f->b.join_peer, f->a.id, 47001);
	/* Seen-at address first, then the announced ones. */
	assert_int_equal(f->a.pinned.n_addresses, 2);
	assert_string_equal(f->a.pinned.addresses[0], "127.0.0.1:47002");
	assert_string_equal(f->a.pinned.addresses[1], "192.0.2.10:47470");
	assert_string_equal(f->b.pinned.addresses[0], "127.0.0.1:47001");

	/* The code is gone: the listener is closed. */
	assert_int_equal(pairing_offer_get(f->a.eng, NULL), 0);
	join(f, info.code, info.port, NULL);
	assert_int_equal(f->b.join_status, -ECONNREFUSED);
	assert_non_null(strstr(f->b.join_msg, "no pairing code outstanding"));
	assert_int_equal(f->a.pins, 1);
	assert_int_equal(f->b.pins, 1);
	fx_free(f);
}

static void test_pair_with_expected_fp(void **state)
{
	(void)state;
	fx *f = fx_new(600, 5, 10000);
	pairing_offer_info info;
	offer(f, &info);
	char upper[IDENTITY_FP_HEX_LEN + 1];
	snprintf(upper, sizeof(upper), "%s", f->a.id->fingerprint_hex);
	for (char *c = upper; *c; c++)
		if (*c >= 'a' && *c <= 'f')
			*c = (char)(*c - 'a' + 'A');
	join(f, info.code, info.port, upper);
	if (f->b.join_status != 0)
		fail_msg("join failed: %s", f->b.join_msg);
	run_until(f, &f->a.events, 1);
	assert_int_equal(f->a.ev[0], PAIRING_PAIRED);
	assert_int_equal(f->a.pins + f->b.pins, 2);
	fx_free(f);
}

static void test_expected_fp_mismatch(void **state)
{
	(void)state;
	fx *f = fx_new(600, 5, 10000);
	pairing_offer_info info;
	offer(f, &info);
	/* bob expects his own fingerprint: anything but alice's. */
	join(f, info.code, info.port, f->b.id->fingerprint_hex);
	assert_int_equal(f->b.join_status, -EPERM);
	assert_non_null(strstr(f->b.join_msg, "pairing URI"));
	assert_non_null(strstr(f->b.join_msg, f->a.id->fingerprint_hex));
	run_until(f, &f->a.events, 1);
	assert_int_equal(f->a.ev[0], PAIRING_FAILED);
	assert_non_null(strstr(f->a.ev_msg[0], "not the one in the pairing URI"));
	assert_int_equal(f->a.pins, 0);
	assert_int_equal(f->b.pins, 0);
	/* The code was used by the handshake: gone. */
	assert_int_equal(pairing_offer_get(f->a.eng, NULL), 0);
	fx_free(f);
}

static void test_wrong_code_counted_and_burned(void **state)
{
	(void)state;
	fx *f = fx_new(600, 3, 10000);
	pairing_offer_info info, now;
	offer(f, &info);
	char wrong[PAIR_CODE_DISPLAY_LEN + 1];
	snprintf(wrong, sizeof(wrong), "%s", info.code);
	wrong[0] = wrong[0] == '0' ? '1' : '0';

	join(f, wrong, info.port, NULL);
	assert_int_equal(f->b.join_status, -EACCES);
	assert_non_null(strstr(f->b.join_msg, "refused the pairing code"));
	run_until(f, &f->a.events, 1);
	assert_int_equal(f->a.ev[0], PAIRING_ATTEMPT_FAILED);
	assert_int_equal(f->a.ev_left[0], 2);
	assert_non_null(strstr(f->a.ev_msg[0], "2 attempts left"));
	assert_int_equal(pairing_offer_get(f->a.eng, &now), 1);
	assert_int_equal(now.attempts_left, 2);

	join(f, wrong, info.port, NULL);
	assert_int_equal(f->b.join_status, -EACCES);
	run_until(f, &f->a.events, 2);
	assert_int_equal(f->a.ev[1], PAIRING_ATTEMPT_FAILED);
	assert_int_equal(f->a.ev_left[1], 1);

	join(f, wrong, info.port, NULL);
	assert_int_equal(f->b.join_status, -EACCES);
	run_until(f, &f->a.events, 3);
	assert_int_equal(f->a.ev[2], PAIRING_BURNED);
	assert_non_null(strstr(f->a.ev_msg[2], "burned after 3 failed attempts"));
	assert_int_equal(pairing_offer_get(f->a.eng, NULL), 0);

	/* Burned: even the right code finds nothing listening. */
	join(f, info.code, info.port, NULL);
	assert_int_equal(f->b.join_status, -ECONNREFUSED);
	assert_int_equal(f->a.pins + f->b.pins, 0);
	assert_int_equal(f->a.events, 3);
	fx_free(f);
}

static void test_expired_code(void **state)
{
	(void)state;
	fx *f = fx_new(1, 5, 10000);
	pairing_offer_info info;
	offer(f, &info);
	run_until(f, &f->a.events, 1);
	assert_int_equal(f->a.ev[0], PAIRING_EXPIRED);
	assert_non_null(strstr(f->a.ev_msg[0], "expired"));
	assert_int_equal(pairing_offer_get(f->a.eng, NULL), 0);
	join(f, info.code, info.port, NULL);
	assert_int_equal(f->b.join_status, -ECONNREFUSED);
	assert_int_equal(f->a.pins + f->b.pins, 0);
	fx_free(f);
}

static void test_new_code_replaces_old(void **state)
{
	(void)state;
	fx *f = fx_new(600, 5, 10000);
	pairing_offer_info first, second;
	offer(f, &first);
	offer(f, &second);
	assert_string_not_equal(first.code, second.code);
	join(f, first.code, first.port, NULL);
	assert_int_equal(f->b.join_status, -ECONNREFUSED);
	join(f, first.code, second.port, NULL);
	assert_int_equal(f->b.join_status, -EACCES);
	join(f, second.code, second.port, NULL);
	assert_int_equal(f->b.join_status, 0);
	run_until(f, &f->a.events, 2);
	assert_int_equal(f->a.ev[0], PAIRING_ATTEMPT_FAILED);
	assert_int_equal(f->a.ev[1], PAIRING_PAIRED);

	/* Cancel: the listener closes, no event. */
	offer(f, &first);
	assert_int_equal(pairing_offer_cancel(f->a.eng), 0);
	assert_int_equal(pairing_offer_cancel(f->a.eng), -ENOENT);
	join(f, first.code, first.port, NULL);
	assert_int_equal(f->b.join_status, -ECONNREFUSED);
	assert_int_equal(f->a.events, 2);
	fx_free(f);
}

static void test_joiner_pin_failure(void **state)
{
	(void)state;
	fx *f = fx_new(600, 5, 10000);
	pairing_offer_info info;
	offer(f, &info);
	f->b.pin_fail = true;
	join(f, info.code, info.port, NULL);
	assert_int_equal(f->b.join_status, -EIO);
	assert_non_null(strstr(f->b.join_msg, "disk full"));
	run_until(f, &f->a.events, 1);
	assert_int_equal(f->a.ev[0], PAIRING_FAILED);
	assert_non_null(strstr(f->a.ev_msg[0], "could not pin"));
	assert_int_equal(f->a.pins, 0);
	fx_free(f);
}

static void test_bad_join_arguments(void **state)
{
	(void)state;
	fx *f = fx_new(600, 5, 10000);
	sovmesh_error err = {0};
	assert_int_equal(pairing_join(f->b.eng, "SHORT", "127.0.0.1:1", NULL, on_join, &f->b, &err),
	                 -EINVAL);
	assert_non_null(strstr(err.message, "pairing code"));
	assert_int_equal(
	    pairing_join(f->b.eng, "AAAAA-AAAAA", "localhost:1", NULL, on_join, &f->b, &err),
	    -EINVAL);
	assert_non_null(strstr(err.message, "pairing address"));
	assert_int_equal(
	    pairing_join(f->b.eng, "AAAAA-AAAAA", "127.0.0.1:1", "abc", on_join, &f->b, &err),
	    -EINVAL);
	assert_non_null(strstr(err.message, "fingerprint"));
	assert_int_equal(f->b.joins_done, 0);

	pairing *p = NULL;
	pairing_config cfg = {.listen = "0.0.0.0", .peer_port = 1};
	assert_int_equal(pairing_new(&f->loop, f->a.id, &cfg, on_pin, NULL, NULL, &p, &err),
	                 -EINVAL);
	assert_non_null(strstr(err.message, "pairing.listen"));
	cfg.listen = "127.0.0.1:0";
	cfg.peer_port = 0;
	assert_int_equal(pairing_new(&f->loop, f->a.id, &cfg, on_pin, NULL, NULL, &p, &err),
	                 -EINVAL);
	fx_free(f);
}

/* ---- fake peers over raw GnuTLS ---------------------------------------- */

static int tcp_connect(uint16_t port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	struct timeval tv = {.tv_sec = 20};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

/* Read one line (without '\n') into buf; "" on EOF or error. */
static void tls_read_line(gnutls_session_t s, char *buf, size_t size)
{
	size_t n = 0;
	buf[0] = '\0';
	while (n + 1 < size) {
		char c;
		ssize_t r = gnutls_record_recv(s, &c, 1);
		if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
			continue;
		if (r <= 0 || c == '\n')
			break;
		buf[n++] = c;
	}
	buf[n] = '\0';
}

static void tls_send(gnutls_session_t s, const char *data, size_t len)
{
	size_t off = 0;
	while (off < len) {
		ssize_t r = gnutls_record_send(s, data + off, len - off);
		if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
			continue;
		if (r < 0)
			return; /* the other side may have given up already */
		off += (size_t)r;
	}
}

/* A hello line for `id`, with `key` replaced by `json_value` (NULL: as is). */
static char *hello_for(const identity *id, const char *key, const char *json_value)
{
	pair_hello h;
	char *line = NULL;
	assert_int_equal(pair_hello_from_identity(id, 47009, NULL, 0, &h, NULL), 0);
	assert_int_equal(pair_hello_build(&h, &line, NULL), 0);
	pair_hello_clear(&h);
	if (!key)
		return line;
	/* Splice: "key":<old>, -> "key":<new>, (values here are simple). */
	char pat[64];
	snprintf(pat, sizeof(pat), "\"%s\":", key);
	char *at = strstr(line, pat);
	assert_non_null(at);
	char *v = at + strlen(pat);
	char *end = v;
	if (*end == '"') {
		end++;
		while (*end != '"')
			end += *end == '\\' ? 2 : 1;
		end++;
	} else {
		while (*end != ',' && *end != '}')
			end++;
	}
	size_t total = strlen(line) + strlen(json_value) + 1;
	char *out = malloc(total);
	snprintf(out, total, "%.*s%s%s", (int)(v - line), line, json_value, end);
	free(line);
	return out;
}

/* Fake joiner: SRP handshake with `code`, send `first`, read a reply line;
 * then send `second` (may be NULL) and read another. */
static void fake_joiner(uint16_t port, const char *code, const char *first, size_t first_len,
                        const char *second, char *reply1, char *reply2, size_t size)
{
	char norm[PAIR_CODE_LEN + 1];
	assert_int_equal(pair_code_normalize(code, norm, NULL), 0);
	int fd = tcp_connect(port);
	gnutls_srp_client_credentials_t cred;
	gnutls_session_t s;
	assert_int_equal(gnutls_srp_allocate_client_credentials(&cred), 0);
	assert_int_equal(gnutls_srp_set_client_credentials(cred, PAIRING_SRP_USER, norm), 0);
	assert_int_equal(gnutls_init(&s, GNUTLS_CLIENT), 0);
	assert_int_equal(gnutls_priority_set_direct(s, PAIRING_PRIORITY, NULL), 0);
	assert_int_equal(gnutls_credentials_set(s, GNUTLS_CRD_SRP, cred), 0);
	gnutls_transport_set_int(s, fd);
	int rc;
	do
		rc = gnutls_handshake(s);
	while (rc < 0 && !gnutls_error_is_fatal(rc));
	if (rc < 0)
		fail_msg("fake joiner handshake: %s", gnutls_strerror(rc));
	/* What docs/security.md promises about the pairing channel. */
	assert_int_equal(gnutls_kx_get(s), GNUTLS_KX_SRP);
	assert_int_equal(gnutls_protocol_get_version(s), GNUTLS_TLS1_2);
	assert_int_equal(gnutls_session_etm_status(s), 1);
	tls_send(s, first, first_len);
	tls_read_line(s, reply1, size);
	if (second) {
		tls_send(s, second, strlen(second));
		tls_read_line(s, reply2, size);
	}
	gnutls_deinit(s);
	gnutls_srp_free_client_credentials(cred);
	close(fd);
}

static void test_malformed_from_fake_joiner(void **state)
{
	(void)state;
	fx *f = fx_new(600, 5, 10000);
	char *bad_x = hello_for(f->b.id, "x25519", "\"AAAA\"");
	char *bad_name = hello_for(f->b.id, "name", "\"a\\u0007b\"");
	char *bad_cert = hello_for(f->b.id, "cert",
	                           "\"-----BEGIN CERTIFICATE-----\\nAAAA\\n"
	                           "-----END CERTIFICATE-----\\n\"");
	char *own = hello_for(f->a.id, NULL, NULL); /* alice's own certificate */
	struct {
		const char *line;
		const char *reply; /* in the pair-error sent back */
		const char *event; /* in the issuer's event */
	} cases[] = {
	    {"this is not json\n", "not valid JSON", "not valid JSON"},
	    {"{\"type\":\"pair-confirm\"}\n", "expected pair-hello", "expected pair-hello"},
	    {"{\"type\":\"pair-hola\"}\n", "unknown type", "unknown type \"pair-hola\""},
	    {bad_x, "x25519", "field \"x25519\" must be base64"},
	    {bad_name, "name", "field \"name\" contains a control"},
	    {bad_cert, "cert", "not an X.509 certificate"},
	    {own, "own certificate", "this node's own certificate"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		pairing_offer_info info;
		char r1[4096], r2[4096];
		offer(f, &info);
		fake_joiner(info.port, info.code, cases[i].line, strlen(cases[i].line), NULL, r1,
		            r2, sizeof(r1));
		if (!strstr(r1, "\"type\":\"pair-error\"") || !strstr(r1, cases[i].reply))
			fail_msg("case %zu: reply %s lacks %s", i, r1, cases[i].reply);
		run_until(f, &f->a.events, (int)i + 1);
		assert_int_equal(f->a.ev[i], PAIRING_FAILED);
		if (!strstr(f->a.ev_msg[i], cases[i].event))
			fail_msg("case %zu: event \"%s\" lacks \"%s\"", i, f->a.ev_msg[i],
			         cases[i].event);
		assert_non_null(strstr(f->a.ev_msg[i], "127.0.0.1"));
		assert_int_equal(pairing_offer_get(f->a.eng, NULL), 0);
	}
	free(bad_x);
	free(bad_name);
	free(bad_cert);
	free(own);

	/* A line longer than 64 KiB. */
	size_t n = PAIR_MSG_MAX + 100;
	char *huge = malloc(n);
	memset(huge, 'x', n);
	pairing_offer_info info;
	char r1[4096], r2[4096];
	offer(f, &info);
	fake_joiner(info.port, info.code, huge, n, NULL, r1, r2, sizeof(r1));
	free(huge);
	assert_non_null(strstr(r1, "longer than 64 KiB"));
	int k = f->a.events;
	run_until(f, &f->a.events, k + 1);
	assert_int_equal(f->a.ev[k], PAIRING_FAILED);
	assert_non_null(strstr(f->a.ev_msg[k], "longer than 64 KiB"));

	/* A good hello, then another hello instead of pair-confirm. */
	char *good = hello_for(f->b.id, NULL, NULL);
	offer(f, &info);
	fake_joiner(info.port, info.code, good, strlen(good), good, r1, r2, sizeof(r1));
	free(good);
	assert_non_null(strstr(r1, "\"type\":\"pair-hello\""));
	assert_non_null(strstr(r1, "\"name\":\"alice\""));
	assert_non_null(strstr(r2, "\"type\":\"pair-error\""));
	run_until(f, &f->a.events, k + 2);
	assert_int_equal(f->a.ev[k + 1], PAIRING_FAILED);
	assert_non_null(strstr(f->a.ev_msg[k + 1], "expected pair-confirm"));

	assert_int_equal(f->a.pins, 0);
	fx_free(f);
}

/* Fake issuer: one connection, SRP server for `code`, answer the joiner's
 * hello with `reply`, record what the joiner sent next. */
typedef struct fake_issuer {
	int listen_fd;
	uint16_t port;
	char code[PAIR_CODE_LEN + 1];
	const char *reply;
	char got_hello[8192];
	char got_after[4096];
	pthread_t thread;
} fake_issuer;

static fake_issuer *current_fake;

static int fake_srp_creds(gnutls_session_t s, const char *username, gnutls_datum_t *salt,
                          gnutls_datum_t *verifier, gnutls_datum_t *g, gnutls_datum_t *n)
{
	(void)s;
	const gnutls_datum_t *gg = &gnutls_srp_3072_group_generator;
	const gnutls_datum_t *nn = &gnutls_srp_3072_group_prime;
	salt->data = gnutls_malloc(4);
	memcpy(salt->data, "salt", 4);
	salt->size = 4;
	g->data = gnutls_malloc(gg->size);
	memcpy(g->data, gg->data, gg->size);
	g->size = gg->size;
	n->data = gnutls_malloc(nn->size);
	memcpy(n->data, nn->data, nn->size);
	n->size = nn->size;
	return gnutls_srp_verifier(username, current_fake->code, salt, gg, nn, verifier);
}

static void *fake_issuer_main(void *arg)
{
	fake_issuer *fi = arg;
	int fd = accept(fi->listen_fd, NULL, NULL);
	if (fd < 0)
		return NULL;
	struct timeval tv = {.tv_sec = 20};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	gnutls_srp_server_credentials_t cred;
	gnutls_session_t s;
	gnutls_srp_allocate_server_credentials(&cred);
	gnutls_srp_set_server_credentials_function(cred, fake_srp_creds);
	gnutls_init(&s, GNUTLS_SERVER);
	gnutls_priority_set_direct(s, PAIRING_PRIORITY, NULL);
	gnutls_credentials_set(s, GNUTLS_CRD_SRP, cred);
	gnutls_transport_set_int(s, fd);
	int rc;
	do
		rc = gnutls_handshake(s);
	while (rc < 0 && !gnutls_error_is_fatal(rc));
	if (rc == 0) {
		tls_read_line(s, fi->got_hello, sizeof(fi->got_hello));
		tls_send(s, fi->reply, strlen(fi->reply));
		tls_read_line(s, fi->got_after, sizeof(fi->got_after));
	}
	gnutls_deinit(s);
	gnutls_srp_free_server_credentials(cred);
	close(fd);
	return NULL;
}

static void fake_issuer_start(fake_issuer *fi, const char *reply)
{
	memset(fi, 0, sizeof(*fi));
	assert_int_equal(pair_code_generate(fi->code), 0);
	fi->reply = reply;
	fi->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fi->listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fi->listen_fd, 4), 0);
	socklen_t sl = sizeof(sa);
	getsockname(fi->listen_fd, (struct sockaddr *)&sa, &sl);
	fi->port = ntohs(sa.sin_port);
	current_fake = fi;
	assert_int_equal(pthread_create(&fi->thread, NULL, fake_issuer_main, fi), 0);
}

static void fake_issuer_stop(fake_issuer *fi)
{
	pthread_join(fi->thread, NULL);
	close(fi->listen_fd);
}

static void test_malformed_from_fake_issuer(void **state)
{
	(void)state;
	fx *f = fx_new(600, 5, 10000);
	char *bad_port = hello_for(f->a.id, "peer_port", "0");
	char *bad_cert = hello_for(f->a.id, "cert", "\"nope\"");
	char *bob_self = hello_for(f->b.id, NULL, NULL);
	struct {
		const char *reply;
		int status;
		const char *msg;
		const char *sent_back; /* in the joiner's pair-error, "" = none expected */
	} cases[] = {
	    {"{\"type\":\"pair-error\",\"message\":\"go away\"}\n", -EPROTO,
	     "the issuer said: go away", ""},
	    {bad_port, -EPROTO, "field \"peer_port\" must be 1..65535", "peer_port"},
	    {bad_cert, -EPROTO, "field \"cert\" is not a PEM certificate", "cert"},
	    {"{\"type\":\"pair-confirm\"}\n", -EPROTO, "expected the issuer's pair-hello",
	     "expected pair-hello"},
	    {bob_self, -EPROTO, "this node itself", "own certificate"},
	    {"[]\n", -EPROTO, "must be a JSON object", "JSON object"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		fake_issuer fi;
		fake_issuer_start(&fi, cases[i].reply);
		join(f, fi.code, fi.port, NULL);
		fake_issuer_stop(&fi);
		assert_int_equal(f->b.join_status, cases[i].status);
		if (!strstr(f->b.join_msg, cases[i].msg))
			fail_msg("case %zu: \"%s\" lacks \"%s\"", i, f->b.join_msg, cases[i].msg);
		/* bob did send his hello, and never a confirm. */
		assert_non_null(strstr(fi.got_hello, "\"name\":\"bob\""));
		assert_null(strstr(fi.got_after, "pair-confirm"));
		if (cases[i].sent_back[0] && !strstr(fi.got_after, cases[i].sent_back))
			fail_msg("case %zu: sent back \"%s\"", i, fi.got_after);
	}
	assert_int_equal(f->b.pins, 0);

	/* A well-formed fake issuer is pinned and confirmed: the harness works. */
	char *good = hello_for(f->a.id, NULL, NULL);
	fake_issuer fi;
	fake_issuer_start(&fi, good);
	join(f, fi.code, fi.port, NULL);
	fake_issuer_stop(&fi);
	assert_int_equal(f->b.join_status, 0);
	assert_string_equal(fi.got_after, "{\"type\":\"pair-confirm\"}");
	assert_int_equal(f->b.pins, 1);
	assert_string_equal(f->b.pinned.fingerprint_hex, f->a.id->fingerprint_hex);
	free(good);
	free(bad_port);
	free(bad_cert);
	free(bob_self);
	fx_free(f);
}

/* A TCP peer that accepts and says nothing. */
static int silent_listener(uint16_t *port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fd, 4), 0);
	socklen_t sl = sizeof(sa);
	getsockname(fd, (struct sockaddr *)&sa, &sl);
	*port = ntohs(sa.sin_port);
	return fd;
}

static void test_timeouts(void **state)
{
	(void)state;
	fx *f = fx_new(600, 5, 300);
	/* Joiner against a silent server: the handshake times out. */
	uint16_t port;
	int lfd = silent_listener(&port);
	join(f, "AAAAA-AAAAA", port, NULL);
	assert_int_equal(f->b.join_status, -ETIMEDOUT);
	assert_non_null(strstr(f->b.join_msg, "timed out"));

	/* Issuer against a silent client: counted as a failed attempt. */
	pairing_offer_info info;
	offer(f, &info);
	int cfd = tcp_connect(info.port);
	run_until(f, &f->a.events, 1);
	assert_int_equal(f->a.ev[0], PAIRING_ATTEMPT_FAILED);
	assert_non_null(strstr(f->a.ev_msg[0], "timed out"));
	assert_int_equal(f->a.ev_left[0], 4);
	close(cfd);
	close(lfd);
	fx_free(f);
}

static void test_close_is_prompt(void **state)
{
	(void)state;
	/* Timeouts far longer than the test may take: only the stop pipe can
	 * end these waits. */
	fx *f = fx_new(600, 5, 120000);
	uint16_t port;
	int lfd = silent_listener(&port);
	pairing_offer_info info;
	offer(f, &info);
	int cfd = tcp_connect(info.port); /* the issuer thread sits in a handshake */
	char addr[32];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)port);
	sovmesh_error err = {0};
	assert_int_equal(pairing_join(f->b.eng, "AAAAA-AAAAA", addr, NULL, on_join, &f->b, &err),
	                 0);
	/* Let both workers get into their waits. */
	uv_sleep(200);
	int64_t t0 = now_ms();
	pairing_close(f->a.eng, on_closed, f);
	pairing_close(f->b.eng, on_closed, f);
	run_until(f, &f->closed, 2);
	assert_true(now_ms() - t0 < 60000);
	assert_int_equal(f->b.joins_done, 1);
	assert_int_equal(f->b.join_status, -ECANCELED);
	assert_int_equal(f->a.events, 0); /* no event after close */
	close(cfd);
	close(lfd);
	/* fx_free's pairing_close calls are no-ops now... they would touch
	 * freed engines, so finish by hand. */
	uv_close((uv_handle_t *)&f->watchdog, NULL);
	uv_run(&f->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	side_free(&f->a);
	side_free(&f->b);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	assert_int_equal(system(cmd), 0);
	free(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_pair_success),
	    cmocka_unit_test(test_pair_with_expected_fp),
	    cmocka_unit_test(test_expected_fp_mismatch),
	    cmocka_unit_test(test_wrong_code_counted_and_burned),
	    cmocka_unit_test(test_expired_code),
	    cmocka_unit_test(test_new_code_replaces_old),
	    cmocka_unit_test(test_joiner_pin_failure),
	    cmocka_unit_test(test_bad_join_arguments),
	    cmocka_unit_test(test_malformed_from_fake_joiner),
	    cmocka_unit_test(test_malformed_from_fake_issuer),
	    cmocka_unit_test(test_timeouts),
	    cmocka_unit_test(test_close_is_prompt),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Sealed requests/responses (sealed_message.c): RFC 9458 Appendix A read
 * from $SOVMESH_TEST_DATA_DIR/ohttp-rfc9458-example.txt, then sovmesh's
 * own media type: replay refusal, tampering, wrong keys, and streamed
 * responses (reordering, truncation, re-flagging).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <nettle/curve25519.h>

#include "hpke.h"
#include "sealed_message.h"

/* --- the example file: "name[ (note)]: hex" lines --- */

#define MAX_ENTRIES 32
struct entry {
	char key[128];
	char hex[1024];
};
static struct entry entries[MAX_ENTRIES];
static size_t n_entries;

static int load_example(void **state)
{
	(void)state;
	const char *dir = getenv("SOVMESH_TEST_DATA_DIR");
	assert_non_null(dir);
	char path[1024], line[2048];
	snprintf(path, sizeof(path), "%s/ohttp-rfc9458-example.txt", dir);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	while (fgets(line, sizeof(line), f) != NULL) {
		if (line[0] == '#')
			continue;
		char *colon = strchr(line, ':');
		if (colon == NULL)
			continue;
		*colon = '\0';
		size_t kl = strcspn(line, " (");
		line[kl] = '\0';
		assert_true(n_entries < MAX_ENTRIES);
		struct entry *e = &entries[n_entries++];
		assert_true(kl < sizeof(e->key));
		memcpy(e->key, line, kl + 1);
		const char *v = colon + 1;
		while (*v == ' ')
			v++;
		size_t vl = strcspn(v, " \r\n");
		assert_true(vl < sizeof(e->hex));
		memcpy(e->hex, v, vl);
		e->hex[vl] = '\0';
	}
	fclose(f);
	return 0;
}

/* The named value, decoded (caller frees). */
static uint8_t *get(const char *key, size_t *len)
{
	for (size_t i = 0; i < n_entries; i++) {
		if (strcmp(entries[i].key, key) != 0)
			continue;
		size_t n = strlen(entries[i].hex);
		assert_int_equal(n % 2, 0);
		uint8_t *out = malloc(n / 2 + 1);
		assert_non_null(out);
		for (size_t j = 0; j < n / 2; j++) {
			unsigned v;
			assert_int_equal(sscanf(entries[i].hex + 2 * j, "%2x", &v), 1);
			out[j] = (uint8_t)v;
		}
		*len = n / 2;
		return out;
	}
	fail_msg("ohttp-rfc9458-example.txt: %s missing", key);
	return NULL;
}

static void assert_bytes(const uint8_t *got, size_t got_len, const char *key)
{
	size_t n;
	uint8_t *want = get(key, &n);
	assert_int_equal(got_len, n);
	assert_memory_equal(got, want, n);
	free(want);
}

static void test_rfc9458_example(void **state)
{
	(void)state;
	size_t n, kc_len, skE_len, req_len, resp_len, rpt_len;
	uint8_t *skR = get("gateway_x25519_secret_key", &n);
	assert_int_equal(n, HPKE_NSK);
	uint8_t *kc = get("key_config", &kc_len);
	/* key_config: key_id(1) kem_id(2) pk(32) ... */
	assert_true(kc_len >= 3 + HPKE_NPK);
	assert_int_equal((kc[1] << 8) | kc[2], HPKE_KEM_X25519_SHA256);
	uint8_t pk[HPKE_NPK];
	curve25519_mul_g(pk, skR);
	assert_memory_equal(pk, kc + 3, HPKE_NPK);

	struct sealed_key key = {.key_id = kc[0], .aead_id = HPKE_AEAD_AES128GCM};
	memcpy(key.pk, kc + 3, HPKE_NPK);
	struct sealed_gateway_key gw = {.key_id = kc[0]};
	memcpy(gw.sk, skR, HPKE_NSK);

	uint8_t *skE = get("client_ephemeral_secret_key", &skE_len);
	uint8_t *req_pt = get("request_plaintext", &n);
	size_t req_pt_len = n;
	uint8_t *req = get("encapsulated_request", &req_len);
	uint8_t *resp = get("encapsulated_response", &resp_len);
	uint8_t *resp_pt = get("response_plaintext", &rpt_len);
	size_t checked = 0;

	/* Client side: the same ephemeral key reproduces the request. */
	uint8_t *out;
	size_t out_len;
	struct sealed_client *cl;
	assert_int_equal(sealed_request_seal(&key, SEALED_MEDIA_BHTTP, skE, 0, req_pt, req_pt_len,
	                                     &out, &out_len, &cl),
	                 0);
	assert_bytes(out, out_len, "encapsulated_request");
	assert_bytes(out + SEALED_HDR_LEN, HPKE_NENC, "client_ephemeral_public_key");
	uint8_t info[64];
	size_t info_len = sealed_request_info(SEALED_MEDIA_BHTTP, out, info);
	assert_bytes(info, info_len, "hpke_info");
	free(out);
	checked += 3;

	/* Gateway side: decapsulate with the gateway key. */
	uint8_t *pt;
	size_t pt_len;
	struct sealed_server *sv;
	assert_int_equal(
	    sealed_request_open(&gw, SEALED_MEDIA_BHTTP, NULL, 0, req, req_len, &pt, &pt_len, &sv),
	    0);
	assert_bytes(pt, pt_len, "request_plaintext");
	free(pt);
	checked++;

	/* The response key derivation, step by step. */
	struct hpke_suite suite = {HPKE_KEM_X25519_SHA256, HPKE_KDF_HKDF_SHA256,
	                           HPKE_AEAD_AES128GCM};
	struct hpke_ctx *ctx;
	const uint8_t *enc = req + SEALED_HDR_LEN;
	assert_int_equal(hpke_setup_base_r(&suite, enc, skR, info, info_len, &ctx), 0);
	size_t rn_len = sealed_response_nonce_len(HPKE_AEAD_AES128GCM);
	assert_int_equal(rn_len, 16);
	struct sealed_response_keys k;
	assert_int_equal(
	    sealed_derive_response_keys(ctx, SEALED_MEDIA_BHTTP, 0, enc, resp, rn_len, &k), 0);
	assert_bytes(k.secret, k.nk, "exported_secret");
	uint8_t salt[HPKE_NENC + 16];
	memcpy(salt, enc, HPKE_NENC);
	memcpy(salt + HPKE_NENC, resp, rn_len);
	assert_bytes(salt, sizeof(salt), "response_salt");
	assert_bytes(k.prk, HPKE_NH, "response_prk");
	assert_bytes(k.key, k.nk, "response_key");
	assert_bytes(k.nonce, HPKE_NN, "response_nonce_for_aead");
	hpke_ctx_free(ctx);
	checked += 5;

	/* The gateway reproduces the encapsulated response... */
	assert_int_equal(sealed_response_seal(sv, resp, resp_pt, rpt_len, &out, &out_len), 0);
	assert_bytes(out, out_len, "encapsulated_response");
	free(out);
	/* ...and the client opens it. */
	assert_int_equal(sealed_response_open(cl, resp, resp_len, &pt, &pt_len), 0);
	assert_bytes(pt, pt_len, "response_plaintext");
	free(pt);
	checked += 2;
	print_message("RFC 9458 values reproduced: %zu\n", checked);

	sealed_client_free(cl);
	sealed_server_free(sv);
	free(skR);
	free(kc);
	free(skE);
	free(req_pt);
	free(req);
	free(resp);
	free(resp_pt);
}

/* --- sovmesh's own payloads --- */

struct pair {
	struct sealed_key key;
	struct sealed_gateway_key gw;
};

static void make_pair(struct pair *p, uint16_t aead_id, uint8_t key_id)
{
	p->key.key_id = key_id;
	p->key.aead_id = aead_id;
	p->gw.key_id = key_id;
	assert_int_equal(hpke_generate_keypair(p->gw.sk, p->key.pk), 0);
}

static const uint8_t query[] = "{\"model\":\"llama3\",\"prompt\":\"why is the sky blue\"}";

static void request_and_response(uint16_t aead_id)
{
	struct pair p;
	make_pair(&p, aead_id, 7);
	struct sealed_replay_cache *cache = sealed_replay_cache_new(0);
	assert_non_null(cache);
	uint8_t *req, *pt, *resp;
	size_t req_len, pt_len, resp_len;
	struct sealed_client *cl;
	struct sealed_server *sv;
	const uint64_t t0 = 1700000000;

	assert_int_equal(sealed_request_seal(&p.key, SEALED_MEDIA_SOVMESH, NULL, t0, query,
	                                     sizeof(query), &req, &req_len, &cl),
	                 0);
	assert_int_equal(req_len,
	                 SEALED_HDR_LEN + HPKE_NENC + SEALED_TS_LEN + sizeof(query) + HPKE_NT);

	/* Every flipped bit is refused and leaves no trace in the cache.
	 * Bits in enc or the ciphertext fail authentication; bits in the
	 * header name another key id or suite (or, for a still-valid suite,
	 * change the HPKE info and so fail authentication). */
	for (size_t bit = 0; bit < req_len * 8; bit++) {
		req[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		int r = sealed_request_open(&p.gw, SEALED_MEDIA_SOVMESH, cache, t0, req, req_len,
		                            &pt, &pt_len, &sv);
		if (bit / 8 >= SEALED_HDR_LEN)
			assert_int_equal(r, -EBADMSG);
		else if (bit / 8 == 0)
			assert_int_equal(r, -ENOKEY);
		else
			assert_true(r == -ENOTSUP || r == -EBADMSG);
		req[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	/* Truncated anywhere. */
	for (size_t len = 0; len < req_len; len++)
		assert_true(sealed_request_open(&p.gw, SEALED_MEDIA_SOVMESH, cache, t0, req, len,
		                                &pt, &pt_len, &sv) < 0);
	/* Wrong private key under the right id. */
	struct pair other;
	make_pair(&other, aead_id, 7);
	assert_int_equal(sealed_request_open(&other.gw, SEALED_MEDIA_SOVMESH, cache, t0, req,
	                                     req_len, &pt, &pt_len, &sv),
	                 -EBADMSG);
	/* Another media type's label. */
	assert_int_equal(sealed_request_open(&p.gw, SEALED_MEDIA_BHTTP, NULL, t0, req, req_len, &pt,
	                                     &pt_len, &sv),
	                 -EBADMSG);
	/* Our media type is never opened without replay protection. */
	assert_int_equal(sealed_request_open(&p.gw, SEALED_MEDIA_SOVMESH, NULL, t0, req, req_len,
	                                     &pt, &pt_len, &sv),
	                 -EINVAL);
	/* Outside the window either way: refused, and not cached. */
	assert_int_equal(sealed_request_open(&p.gw, SEALED_MEDIA_SOVMESH, cache,
	                                     t0 + SEALED_REPLAY_WINDOW_SECS + 1, req, req_len, &pt,
	                                     &pt_len, &sv),
	                 -ESTALE);
	assert_int_equal(sealed_request_open(&p.gw, SEALED_MEDIA_SOVMESH, cache,
	                                     t0 - SEALED_REPLAY_WINDOW_SECS - 1, req, req_len, &pt,
	                                     &pt_len, &sv),
	                 -ESTALE);

	/* The genuine request, once. */
	assert_int_equal(sealed_request_open(&p.gw, SEALED_MEDIA_SOVMESH, cache, t0 + 5, req,
	                                     req_len, &pt, &pt_len, &sv),
	                 0);
	assert_int_equal(pt_len, sizeof(query));
	assert_memory_equal(pt, query, sizeof(query));
	free(pt);
	/* Replayed within the window, up to its last second: refused. */
	struct sealed_server *sv2;
	assert_int_equal(sealed_request_open(&p.gw, SEALED_MEDIA_SOVMESH, cache, t0 + 5, req,
	                                     req_len, &pt, &pt_len, &sv2),
	                 -EALREADY);
	assert_int_equal(sealed_request_open(&p.gw, SEALED_MEDIA_SOVMESH, cache,
	                                     t0 + SEALED_REPLAY_WINDOW_SECS, req, req_len, &pt,
	                                     &pt_len, &sv2),
	                 -EALREADY);

	/* The response opens only for this client, untampered. */
	const uint8_t answer[] = "{\"response\":\"Rayleigh scattering\",\"done\":true}";
	assert_int_equal(sealed_response_seal(sv, NULL, answer, sizeof(answer), &resp, &resp_len),
	                 0);
	uint8_t *resp2;
	size_t resp2_len;
	assert_int_equal(sealed_response_seal(sv, NULL, answer, sizeof(answer), &resp2, &resp2_len),
	                 0);
	/* A fresh response nonce each time. */
	assert_memory_not_equal(resp, resp2, resp_len);
	free(resp2);
	for (size_t bit = 0; bit < resp_len * 8; bit++) {
		resp[bit / 8] ^= (uint8_t)(1u << (bit % 8));
		assert_int_equal(sealed_response_open(cl, resp, resp_len, &pt, &pt_len), -EBADMSG);
		resp[bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	assert_int_equal(sealed_response_open(cl, resp, resp_len - 1, &pt, &pt_len), -EBADMSG);
	assert_int_equal(sealed_response_open(cl, resp, 10, &pt, &pt_len), -EBADMSG);
	struct sealed_client *cl_other;
	uint8_t *req_other;
	size_t req_other_len;
	assert_int_equal(sealed_request_seal(&p.key, SEALED_MEDIA_SOVMESH, NULL, t0, query,
	                                     sizeof(query), &req_other, &req_other_len, &cl_other),
	                 0);
	assert_int_equal(sealed_response_open(cl_other, resp, resp_len, &pt, &pt_len), -EBADMSG);
	assert_int_equal(sealed_response_open(cl, resp, resp_len, &pt, &pt_len), 0);
	assert_int_equal(pt_len, sizeof(answer));
	assert_memory_equal(pt, answer, sizeof(answer));
	free(pt);

	free(req_other);
	sealed_client_free(cl_other);
	free(resp);
	free(req);
	sealed_client_free(cl);
	sealed_server_free(sv);
	sealed_replay_cache_free(cache);
}

static void test_request_response_aes128gcm(void **state)
{
	(void)state;
	request_and_response(HPKE_AEAD_AES128GCM);
}

static void test_request_response_chacha20poly1305(void **state)
{
	(void)state;
	request_and_response(HPKE_AEAD_CHACHA20POLY1305);
}

static void test_replay_cache(void **state)
{
	(void)state;
	struct sealed_replay_cache *c = sealed_replay_cache_new(2);
	uint8_t a[HPKE_NENC] = {1}, b[HPKE_NENC] = {2}, d[HPKE_NENC] = {3};
	assert_int_equal(sealed_replay_check_and_insert(c, a, 100, 10), 0);
	assert_int_equal(sealed_replay_check_and_insert(c, b, 50, 10), 0);
	assert_int_equal(sealed_replay_check_and_insert(c, a, 100, 20), -EALREADY);
	/* Full of live entries: refused rather than forgetting one early. */
	assert_int_equal(sealed_replay_check_and_insert(c, d, 100, 20), -EBUSY);
	/* Once b expires its slot is reused; a is still remembered. */
	assert_int_equal(sealed_replay_check_and_insert(c, d, 100, 51), 0);
	assert_int_equal(sealed_replay_check_and_insert(c, a, 200, 100), -EALREADY);
	assert_int_equal(sealed_replay_check_and_insert(c, b, 200, 100), -EBUSY);
	assert_int_equal(sealed_replay_check_and_insert(c, a, 200, 101), 0);
	sealed_replay_cache_free(c);
	sealed_replay_cache_free(NULL);
}

/* A client/server pair that has exchanged one request. */
static void exchange(uint16_t aead_id, struct sealed_client **cl, struct sealed_server **sv)
{
	struct pair p;
	make_pair(&p, aead_id, 1);
	struct sealed_replay_cache *cache = sealed_replay_cache_new(0);
	uint8_t *req, *pt;
	size_t req_len, pt_len;
	assert_int_equal(sealed_request_seal(&p.key, SEALED_MEDIA_SOVMESH, NULL, 1000, query,
	                                     sizeof(query), &req, &req_len, cl),
	                 0);
	assert_int_equal(sealed_request_open(&p.gw, SEALED_MEDIA_SOVMESH, cache, 1000, req, req_len,
	                                     &pt, &pt_len, sv),
	                 0);
	free(req);
	free(pt);
	sealed_replay_cache_free(cache);
}

#define N_CHUNKS 4
struct frames {
	uint8_t hdr[SEALED_RESPONSE_NONCE_MAX];
	size_t hdr_len;
	uint8_t *f[N_CHUNKS];
	size_t len[N_CHUNKS];
};
static const char *lines[N_CHUNKS] = {
    "{\"response\":\"Ray\",\"done\":false}\n",
    "{\"response\":\"leigh\",\"done\":false}\n",
    "",
    "{\"response\":\"\",\"done\":true}\n",
};

static void seal_stream(struct sealed_server *sv, struct frames *fr)
{
	struct sealed_stream *st;
	assert_int_equal(sealed_stream_begin_server(sv, NULL, fr->hdr, &fr->hdr_len, &st), 0);
	for (int i = 0; i < N_CHUNKS; i++)
		assert_int_equal(sealed_stream_seal_chunk(st, i == N_CHUNKS - 1,
		                                          (const uint8_t *)lines[i],
		                                          strlen(lines[i]), &fr->f[i], &fr->len[i]),
		                 0);
	uint8_t *x;
	size_t xl;
	assert_int_equal(sealed_stream_seal_chunk(st, 1, (const uint8_t *)"x", 1, &x, &xl),
	                 -EPROTO);
	sealed_stream_free(st);
}

static void free_frames(struct frames *fr)
{
	for (int i = 0; i < N_CHUNKS; i++)
		free(fr->f[i]);
}

/* Open frames in the given order; returns the first error (0 if none)
 * and how many opened. */
static int open_order(struct sealed_client *cl, const struct frames *fr, const int *order, int n,
                      int *opened, int *end_result)
{
	struct sealed_stream *st;
	assert_int_equal(sealed_stream_begin_client(cl, fr->hdr, fr->hdr_len, &st), 0);
	int r = 0;
	*opened = 0;
	for (int i = 0; i < n && r == 0; i++) {
		uint8_t *pt = NULL;
		size_t pt_len, used;
		int final;
		const int k = order[i];
		r = sealed_stream_open_chunk(st, fr->f[k], fr->len[k], &used, &pt, &pt_len, &final);
		if (r == 0) {
			assert_int_equal(used, fr->len[k]);
			assert_int_equal(pt_len, strlen(lines[k]));
			assert_memory_equal(pt, lines[k], pt_len);
			assert_int_equal(final, k == N_CHUNKS - 1);
			(*opened)++;
		}
		free(pt);
	}
	*end_result = sealed_stream_end(st);
	sealed_stream_free(st);
	return r;
}

static void streaming(uint16_t aead_id)
{
	struct sealed_client *cl;
	struct sealed_server *sv;
	exchange(aead_id, &cl, &sv);
	struct frames fr;
	seal_stream(sv, &fr);
	int opened, end;

	const int in_order[] = {0, 1, 2, 3};
	assert_int_equal(open_order(cl, &fr, in_order, 4, &opened, &end), 0);
	assert_int_equal(opened, 4);
	assert_int_equal(end, 0);

	const int swapped[] = {1, 0, 2, 3};
	assert_int_equal(open_order(cl, &fr, swapped, 4, &opened, &end), -EBADMSG);
	assert_int_equal(opened, 0);
	const int dropped_middle[] = {0, 2, 3};
	assert_int_equal(open_order(cl, &fr, dropped_middle, 3, &opened, &end), -EBADMSG);
	assert_int_equal(opened, 1);
	/* Cut before the final chunk: every chunk authentic, the end is not. */
	const int truncated[] = {0, 1, 2};
	assert_int_equal(open_order(cl, &fr, truncated, 3, &opened, &end), 0);
	assert_int_equal(opened, 3);
	assert_int_equal(end, -EPIPE);
	/* Chunks after the final one are refused. */
	const int extra[] = {0, 1, 2, 3, 3};
	assert_int_equal(open_order(cl, &fr, extra, 5, &opened, &end), -EPROTO);
	assert_int_equal(opened, 4);

	/* A non-final chunk marked final (to fake a clean end) and the final
	 * chunk marked non-final both fail authentication; so does any bit. */
	fr.f[2][0] = 1;
	assert_int_equal(open_order(cl, &fr, in_order, 4, &opened, &end), -EBADMSG);
	assert_int_equal(opened, 2);
	fr.f[2][0] = 0;
	fr.f[3][0] = 0;
	assert_int_equal(open_order(cl, &fr, in_order, 4, &opened, &end), -EBADMSG);
	assert_int_equal(end, -EPIPE);
	fr.f[3][0] = 2;
	assert_int_equal(open_order(cl, &fr, in_order, 4, &opened, &end), -EBADMSG);
	fr.f[3][0] = 1;
	for (size_t bit = SEALED_FRAME_HDR * 8; bit < fr.len[1] * 8; bit++) {
		fr.f[1][bit / 8] ^= (uint8_t)(1u << (bit % 8));
		assert_int_equal(open_order(cl, &fr, in_order, 4, &opened, &end), -EBADMSG);
		assert_int_equal(opened, 1);
		fr.f[1][bit / 8] ^= (uint8_t)(1u << (bit % 8));
	}
	/* Another response nonce (header) gives other keys. */
	fr.hdr[0] ^= 1;
	assert_int_equal(open_order(cl, &fr, in_order, 4, &opened, &end), -EBADMSG);
	fr.hdr[0] ^= 1;
	struct sealed_stream *st;
	assert_int_equal(sealed_stream_begin_client(cl, fr.hdr, fr.hdr_len - 1, &st), -EBADMSG);

	/* Byte-at-a-time arrival: -EAGAIN until a whole frame is there. */
	size_t total = 0;
	for (int i = 0; i < N_CHUNKS; i++)
		total += fr.len[i];
	uint8_t *all = malloc(total), *p = all;
	for (int i = 0; i < N_CHUNKS; i++) {
		memcpy(p, fr.f[i], fr.len[i]);
		p += fr.len[i];
	}
	assert_int_equal(sealed_stream_begin_client(cl, fr.hdr, fr.hdr_len, &st), 0);
	size_t off = 0, avail = 0;
	int got = 0, again = 0;
	while (off < total) {
		uint8_t *pt = NULL;
		size_t pt_len, used;
		int final;
		int r = sealed_stream_open_chunk(st, all + off, avail - off, &used, &pt, &pt_len,
		                                 &final);
		if (r == -EAGAIN) {
			assert_int_equal(used, 0);
			again++;
			avail++;
			continue;
		}
		assert_int_equal(r, 0);
		assert_memory_equal(pt, lines[got], pt_len);
		free(pt);
		got++;
		off += used;
	}
	assert_int_equal(got, N_CHUNKS);
	assert_true(again > N_CHUNKS);
	assert_int_equal(sealed_stream_end(st), 0);
	sealed_stream_free(st);

	/* An absurd length is refused at once rather than awaited. */
	assert_int_equal(sealed_stream_begin_client(cl, fr.hdr, fr.hdr_len, &st), 0);
	const uint8_t huge[SEALED_FRAME_HDR] = {0, 0x7f, 0xff, 0xff, 0xff};
	uint8_t *pt;
	size_t pt_len, used;
	int final;
	assert_int_equal(
	    sealed_stream_open_chunk(st, huge, sizeof(huge), &used, &pt, &pt_len, &final),
	    -EMSGSIZE);
	sealed_stream_free(st);

	free(all);
	free_frames(&fr);
	sealed_client_free(cl);
	sealed_server_free(sv);
}

static void test_stream_aes128gcm(void **state)
{
	(void)state;
	streaming(HPKE_AEAD_AES128GCM);
}

static void test_stream_chacha20poly1305(void **state)
{
	(void)state;
	streaming(HPKE_AEAD_CHACHA20POLY1305);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rfc9458_example),
	    cmocka_unit_test(test_request_response_aes128gcm),
	    cmocka_unit_test(test_request_response_chacha20poly1305),
	    cmocka_unit_test(test_replay_cache),
	    cmocka_unit_test(test_stream_aes128gcm),
	    cmocka_unit_test(test_stream_chacha20poly1305),
	};
	return cmocka_run_group_tests(tests, load_example, NULL);
}

/*
 * OHTTP-style sealing of peer requests and responses (RFC 9458 §4.3-4.4),
 * plus streamed responses in the manner of chunked OHTTP.  The format and
 * the replay rules are described in sealed_message.h.
 */
#include "sealed_message.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

static void wipe(void *p, size_t n)
{
	if (p != NULL && n > 0)
		gnutls_memset(p, 0, n);
}

/* One side of an exchange: the HPKE context and what the response
 * derivation needs. */
struct party {
	struct hpke_ctx *ctx;
	enum sealed_media media;
	uint8_t enc[HPKE_NENC];
};
struct sealed_client {
	struct party p;
};
struct sealed_server {
	struct party p;
};

struct sealed_stream {
	uint16_t aead_id;
	uint8_t key[HPKE_NK_MAX];
	uint8_t nonce[HPKE_NN];
	uint64_t counter;
	int finished;
};

struct replay_entry {
	uint8_t enc[HPKE_NENC];
	uint64_t expires_at;
};
struct sealed_replay_cache {
	size_t capacity;
	size_t n;
	struct replay_entry *e;
};

static const char *request_label(enum sealed_media m)
{
	if (m == SEALED_MEDIA_BHTTP)
		return "message/bhttp request";
	return m == SEALED_MEDIA_SOVMESH_FL ? "message/sovmesh-fl-delta" : "message/sovmesh-request";
}

static const char *response_label(enum sealed_media m, int chunked)
{
	if (m == SEALED_MEDIA_BHTTP)
		return chunked ? "message/bhttp chunked response" : "message/bhttp response";
	if (m == SEALED_MEDIA_SOVMESH_FL)
		return "message/sovmesh-fl-response";
	return chunked ? "message/sovmesh-chunked-response" : "message/sovmesh-response";
}

size_t sealed_response_nonce_len(uint16_t aead_id)
{
	size_t nk = hpke_aead_nk(aead_id);
	if (nk == 0)
		return 0;
	return nk > HPKE_NN ? nk : HPKE_NN;
}

size_t sealed_request_info(enum sealed_media media, const uint8_t hdr[SEALED_HDR_LEN],
                           uint8_t info[64])
{
	const char *label = request_label(media);
	size_t l = strlen(label);
	memcpy(info, label, l);
	info[l] = 0x00;
	memcpy(info + l + 1, hdr, SEALED_HDR_LEN);
	return l + 1 + SEALED_HDR_LEN;
}

int sealed_derive_response_keys(const struct hpke_ctx *ctx, enum sealed_media media, int chunked,
                                const uint8_t enc[HPKE_NENC], const uint8_t *response_nonce,
                                size_t nonce_len, struct sealed_response_keys *k)
{
	const char *label = response_label(media, chunked);
	uint8_t salt[HPKE_NENC + SEALED_RESPONSE_NONCE_MAX];
	if (nonce_len > SEALED_RESPONSE_NONCE_MAX)
		return -EINVAL;
	memset(k, 0, sizeof(*k));
	k->nk = ctx->nk;
	int r = hpke_export(ctx, (const uint8_t *)label, strlen(label), k->nk, k->secret);
	if (r < 0)
		return r;
	memcpy(salt, enc, HPKE_NENC);
	memcpy(salt + HPKE_NENC, response_nonce, nonce_len);
	hpke_hkdf_extract(salt, HPKE_NENC + nonce_len, k->secret, k->nk, k->prk);
	r = hpke_hkdf_expand(k->prk, (const uint8_t *)"key", 3, k->nk, k->key);
	if (r == 0)
		r = hpke_hkdf_expand(k->prk, (const uint8_t *)"nonce", 5, HPKE_NN, k->nonce);
	if (r < 0)
		wipe(k, sizeof(*k));
	return r;
}

static void put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static uint16_t get_u16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

int sealed_request_seal(const struct sealed_key *key, enum sealed_media media, const uint8_t *skE,
                        uint64_t now, const uint8_t *pt, size_t pt_len, uint8_t **out,
                        size_t *out_len, struct sealed_client **client_out)
{
	struct hpke_suite suite = {HPKE_KEM_X25519_SHA256, HPKE_KDF_HKDF_SHA256, key->aead_id};
	uint8_t hdr[SEALED_HDR_LEN], info[64];
	int r = hpke_suite_check(&suite);
	if (r < 0)
		return r;
	if (pt == NULL && pt_len)
		return -EINVAL;
	hdr[0] = key->key_id;
	put_u16(hdr + 1, suite.kem_id);
	put_u16(hdr + 3, suite.kdf_id);
	put_u16(hdr + 5, suite.aead_id);
	size_t info_len = sealed_request_info(media, hdr, info);

	size_t ts_len = media != SEALED_MEDIA_BHTTP ? SEALED_TS_LEN : 0;
	size_t body_len = ts_len + pt_len;
	size_t n = SEALED_HDR_LEN + HPKE_NENC + body_len + HPKE_NT;
	struct sealed_client *c = calloc(1, sizeof(*c));
	uint8_t *msg = malloc(n);
	uint8_t *body = malloc(body_len + 1);
	if (c == NULL || msg == NULL || body == NULL) {
		r = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < ts_len; i++)
		body[i] = (uint8_t)(now >> (8 * (SEALED_TS_LEN - 1 - i)));
	if (pt_len)
		memcpy(body + ts_len, pt, pt_len);

	c->p.media = media;
	r = hpke_setup_base_s_sk(&suite, key->pk, info, info_len, skE, &c->p.ctx, c->p.enc);
	if (r < 0)
		goto fail;
	memcpy(msg, hdr, SEALED_HDR_LEN);
	memcpy(msg + SEALED_HDR_LEN, c->p.enc, HPKE_NENC);
	r = hpke_seal(c->p.ctx, NULL, 0, body, body_len, msg + SEALED_HDR_LEN + HPKE_NENC);
	if (r < 0)
		goto fail;
	wipe(body, body_len);
	free(body);
	*out = msg;
	*out_len = n;
	*client_out = c;
	return 0;
fail:
	wipe(body, body_len);
	free(body);
	free(msg);
	sealed_client_free(c);
	return r;
}

int sealed_request_open(const struct sealed_gateway_key *key, enum sealed_media media,
                        struct sealed_replay_cache *cache, uint64_t now, const uint8_t *msg,
                        size_t msg_len, uint8_t **pt, size_t *pt_len,
                        struct sealed_server **server_out)
{
	uint8_t info[64];
	size_t ts_len = media != SEALED_MEDIA_BHTTP ? SEALED_TS_LEN : 0;
	if (media != SEALED_MEDIA_BHTTP && cache == NULL)
		return -EINVAL;
	if (msg_len < SEALED_HDR_LEN + HPKE_NENC + HPKE_NT + ts_len)
		return -EBADMSG;
	if (msg[0] != key->key_id)
		return -ENOKEY;
	struct hpke_suite suite = {get_u16(msg + 1), get_u16(msg + 3), get_u16(msg + 5)};
	int r = hpke_suite_check(&suite);
	if (r < 0)
		return r;
	size_t info_len = sealed_request_info(media, msg, info);
	const uint8_t *enc = msg + SEALED_HDR_LEN;
	const uint8_t *ct = enc + HPKE_NENC;
	size_t ct_len = msg_len - SEALED_HDR_LEN - HPKE_NENC;
	size_t body_len = ct_len - HPKE_NT;

	struct sealed_server *s = calloc(1, sizeof(*s));
	uint8_t *body = malloc(body_len + 1);
	if (s == NULL || body == NULL) {
		r = -ENOMEM;
		goto fail;
	}
	s->p.media = media;
	memcpy(s->p.enc, enc, HPKE_NENC);
	r = hpke_setup_base_r(&suite, enc, key->sk, info, info_len, &s->p.ctx);
	if (r == -EINVAL)
		r = -EBADMSG; /* a low-order enc is a malformed request */
	if (r < 0)
		goto fail;
	r = hpke_open(s->p.ctx, NULL, 0, ct, ct_len, body);
	if (r < 0)
		goto fail;

	/* Only authenticated requests reach the cache, so forged ones cannot
	 * fill it. */
	if (cache != NULL) {
		uint64_t expires = now + 2 * SEALED_REPLAY_WINDOW_SECS;
		if (ts_len) {
			uint64_t ts = 0;
			for (size_t i = 0; i < SEALED_TS_LEN; i++)
				ts = (ts << 8) | body[i];
			if (ts + SEALED_REPLAY_WINDOW_SECS < now ||
			    ts > now + SEALED_REPLAY_WINDOW_SECS) {
				r = -ESTALE;
				goto fail;
			}
			expires = ts + SEALED_REPLAY_WINDOW_SECS;
		}
		r = sealed_replay_check_and_insert(cache, enc, expires, now);
		if (r < 0)
			goto fail;
	}
	memmove(body, body + ts_len, body_len - ts_len);
	*pt = body;
	*pt_len = body_len - ts_len;
	*server_out = s;
	return 0;
fail:
	wipe(body, body_len);
	free(body);
	sealed_server_free(s);
	return r;
}

static int make_nonce(uint16_t aead_id, const uint8_t *given, uint8_t *nonce, size_t *len)
{
	*len = sealed_response_nonce_len(aead_id);
	if (given != NULL) {
		memcpy(nonce, given, *len);
		return 0;
	}
	return gnutls_rnd(GNUTLS_RND_NONCE, nonce, *len) < 0 ? -EIO : 0;
}

int sealed_response_seal(const struct sealed_server *s, const uint8_t *response_nonce,
                         const uint8_t *pt, size_t pt_len, uint8_t **out, size_t *out_len)
{
	uint8_t rn[SEALED_RESPONSE_NONCE_MAX];
	size_t rn_len;
	struct sealed_response_keys k;
	uint16_t aead = s->p.ctx->suite.aead_id;
	int r = make_nonce(aead, response_nonce, rn, &rn_len);
	if (r < 0)
		return r;
	r = sealed_derive_response_keys(s->p.ctx, s->p.media, 0, s->p.enc, rn, rn_len, &k);
	if (r < 0)
		return r;
	uint8_t *msg = malloc(rn_len + pt_len + HPKE_NT);
	if (msg == NULL) {
		wipe(&k, sizeof(k));
		return -ENOMEM;
	}
	memcpy(msg, rn, rn_len);
	r = hpke_aead_seal(aead, k.key, k.nonce, NULL, 0, pt, pt_len, msg + rn_len);
	wipe(&k, sizeof(k));
	if (r < 0) {
		free(msg);
		return r;
	}
	*out = msg;
	*out_len = rn_len + pt_len + HPKE_NT;
	return 0;
}

int sealed_response_open(const struct sealed_client *c, const uint8_t *msg, size_t msg_len,
                         uint8_t **pt, size_t *pt_len)
{
	struct sealed_response_keys k;
	uint16_t aead = c->p.ctx->suite.aead_id;
	size_t rn_len = sealed_response_nonce_len(aead);
	if (msg_len < rn_len + HPKE_NT)
		return -EBADMSG;
	int r = sealed_derive_response_keys(c->p.ctx, c->p.media, 0, c->p.enc, msg, rn_len, &k);
	if (r < 0)
		return r;
	size_t n = msg_len - rn_len - HPKE_NT;
	uint8_t *out = malloc(n + 1);
	if (out == NULL) {
		wipe(&k, sizeof(k));
		return -ENOMEM;
	}
	r = hpke_aead_open(aead, k.key, k.nonce, NULL, 0, msg + rn_len, msg_len - rn_len, out);
	wipe(&k, sizeof(k));
	if (r < 0) {
		free(out);
		return r;
	}
	*pt = out;
	*pt_len = n;
	return 0;
}

static int stream_new(const struct party *p, const uint8_t *rn, size_t rn_len,
                      struct sealed_stream **out)
{
	struct sealed_response_keys k;
	struct sealed_stream *st = calloc(1, sizeof(*st));
	if (st == NULL)
		return -ENOMEM;
	int r = sealed_derive_response_keys(p->ctx, p->media, 1, p->enc, rn, rn_len, &k);
	if (r < 0) {
		free(st);
		return r;
	}
	st->aead_id = p->ctx->suite.aead_id;
	memcpy(st->key, k.key, k.nk);
	memcpy(st->nonce, k.nonce, HPKE_NN);
	wipe(&k, sizeof(k));
	*out = st;
	return 0;
}

int sealed_stream_begin_server(const struct sealed_server *s, const uint8_t *response_nonce,
                               uint8_t hdr[SEALED_RESPONSE_NONCE_MAX], size_t *hdr_len,
                               struct sealed_stream **st)
{
	int r = make_nonce(s->p.ctx->suite.aead_id, response_nonce, hdr, hdr_len);
	if (r < 0)
		return r;
	return stream_new(&s->p, hdr, *hdr_len, st);
}

int sealed_stream_begin_client(const struct sealed_client *c, const uint8_t *hdr, size_t hdr_len,
                               struct sealed_stream **st)
{
	if (hdr_len != sealed_response_nonce_len(c->p.ctx->suite.aead_id))
		return -EBADMSG;
	return stream_new(&c->p, hdr, hdr_len, st);
}

static const uint8_t final_aad[] = {'f', 'i', 'n', 'a', 'l'};

static void chunk_nonce(const struct sealed_stream *st, uint8_t nonce[HPKE_NN])
{
	memcpy(nonce, st->nonce, HPKE_NN);
	for (int i = 0; i < 8; i++)
		nonce[HPKE_NN - 1 - i] ^= (uint8_t)(st->counter >> (8 * i));
}

int sealed_stream_seal_chunk(struct sealed_stream *st, int final, const uint8_t *pt, size_t pt_len,
                             uint8_t **out, size_t *out_len)
{
	uint8_t nonce[HPKE_NN];
	if (st->finished)
		return -EPROTO;
	if (pt_len > SEALED_MAX_CHUNK)
		return -EMSGSIZE;
	if (st->counter == UINT64_MAX)
		return -EOVERFLOW;
	size_t ct_len = pt_len + HPKE_NT;
	uint8_t *f = malloc(SEALED_FRAME_HDR + ct_len);
	if (f == NULL)
		return -ENOMEM;
	f[0] = final ? 1 : 0;
	f[1] = (uint8_t)(ct_len >> 24);
	f[2] = (uint8_t)(ct_len >> 16);
	f[3] = (uint8_t)(ct_len >> 8);
	f[4] = (uint8_t)ct_len;
	chunk_nonce(st, nonce);
	int r = hpke_aead_seal(st->aead_id, st->key, nonce, final ? final_aad : NULL,
	                       final ? sizeof(final_aad) : 0, pt, pt_len, f + SEALED_FRAME_HDR);
	if (r < 0) {
		free(f);
		return r;
	}
	st->counter++;
	st->finished = final != 0;
	*out = f;
	*out_len = SEALED_FRAME_HDR + ct_len;
	return 0;
}

int sealed_stream_open_chunk(struct sealed_stream *st, const uint8_t *buf, size_t len,
                             size_t *consumed, uint8_t **pt, size_t *pt_len, int *final)
{
	uint8_t nonce[HPKE_NN];
	*consumed = 0;
	if (st->finished)
		return -EPROTO;
	if (len < SEALED_FRAME_HDR)
		return -EAGAIN;
	if (buf[0] > 1)
		return -EBADMSG;
	size_t ct_len =
	    ((size_t)buf[1] << 24) | ((size_t)buf[2] << 16) | ((size_t)buf[3] << 8) | buf[4];
	if (ct_len < HPKE_NT)
		return -EBADMSG;
	if (ct_len - HPKE_NT > SEALED_MAX_CHUNK)
		return -EMSGSIZE;
	if (len - SEALED_FRAME_HDR < ct_len)
		return -EAGAIN;
	if (st->counter == UINT64_MAX)
		return -EOVERFLOW;
	int is_final = buf[0];
	size_t n = ct_len - HPKE_NT;
	uint8_t *out = malloc(n + 1);
	if (out == NULL)
		return -ENOMEM;
	chunk_nonce(st, nonce);
	int r =
	    hpke_aead_open(st->aead_id, st->key, nonce, is_final ? final_aad : NULL,
	                   is_final ? sizeof(final_aad) : 0, buf + SEALED_FRAME_HDR, ct_len, out);
	if (r < 0) {
		free(out);
		return r;
	}
	st->counter++;
	st->finished = is_final;
	*consumed = SEALED_FRAME_HDR + ct_len;
	*pt = out;
	*pt_len = n;
	*final = is_final;
	return 0;
}

int sealed_stream_end(const struct sealed_stream *st)
{
	return st->finished ? 0 : -EPIPE;
}

struct sealed_replay_cache *sealed_replay_cache_new(size_t capacity)
{
	struct sealed_replay_cache *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return NULL;
	c->capacity = capacity ? capacity : SEALED_REPLAY_CAPACITY;
	c->e = calloc(c->capacity, sizeof(*c->e));
	if (c->e == NULL) {
		free(c);
		return NULL;
	}
	return c;
}

int sealed_replay_check_and_insert(struct sealed_replay_cache *c, const uint8_t enc[HPKE_NENC],
                                   uint64_t expires_at, uint64_t now)
{
	/* Linear: a few thousand 32-byte compares per request is far below
	 * the cost of the X25519 operation that precedes it. */
	size_t w = 0;
	int seen = 0;
	for (size_t i = 0; i < c->n; i++) {
		if (c->e[i].expires_at < now)
			continue; /* expired: dropped by compaction */
		if (memcmp(c->e[i].enc, enc, HPKE_NENC) == 0)
			seen = 1;
		c->e[w++] = c->e[i];
	}
	c->n = w;
	if (seen)
		return -EALREADY;
	if (c->n == c->capacity)
		return -EBUSY;
	memcpy(c->e[c->n].enc, enc, HPKE_NENC);
	c->e[c->n].expires_at = expires_at;
	c->n++;
	return 0;
}

void sealed_replay_cache_free(struct sealed_replay_cache *c)
{
	if (c == NULL)
		return;
	free(c->e);
	free(c);
}

void sealed_client_free(struct sealed_client *c)
{
	if (c == NULL)
		return;
	hpke_ctx_free(c->p.ctx);
	wipe(c, sizeof(*c));
	free(c);
}

void sealed_server_free(struct sealed_server *s)
{
	if (s == NULL)
		return;
	hpke_ctx_free(s->p.ctx);
	wipe(s, sizeof(*s));
	free(s);
}

void sealed_stream_free(struct sealed_stream *st)
{
	if (st == NULL)
		return;
	wipe(st, sizeof(*st));
	free(st);
}

/*
 * libFuzzer target: what a peer sends in mesh inference, before any
 * authentication — a sealed request to open (the serving side) and a
 * sealed chunk stream to read (the asking side).  Anything may be refused;
 * nothing may crash, leak or read out of bounds, and a frame reported
 * consumed must lie inside the input.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sealed_message.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct sealed_gateway_key gw;
static struct sealed_key pub;
static struct sealed_client *client; /* a real request's context */
static int ready;

static void init(void)
{
	uint8_t ikm[32] = {1, 2, 3};
	if (hpke_derive_keypair(ikm, sizeof(ikm), gw.sk, pub.pk) != 0)
		abort();
	gw.key_id = pub.key_id = 1;
	pub.aead_id = HPKE_AEAD_CHACHA20POLY1305;
	uint8_t *req = NULL;
	size_t req_len = 0;
	static const uint8_t pt[] = "{\"v\":1}";
	if (sealed_request_seal(&pub, SEALED_MEDIA_SOVMESH, NULL, 1000, pt, sizeof(pt) - 1, &req,
	                        &req_len, &client) != 0)
		abort();
	free(req);
	ready = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!ready)
		init();

	/* 1. The serving side opens whatever arrived. */
	struct sealed_replay_cache *cache = sealed_replay_cache_new(8);
	uint8_t *pt = NULL;
	size_t pt_len = 0;
	struct sealed_server *srv = NULL;
	if (sealed_request_open(&gw, SEALED_MEDIA_SOVMESH, cache, 1000, data, size, &pt, &pt_len,
	                        &srv) == 0) {
		/* Only a real seal opens; the fuzzer cannot forge one. */
		free(pt);
		sealed_server_free(srv);
	}
	sealed_replay_cache_free(cache);

	/* 2. The asking side reads a streamed answer: a header of the
	 * nonce's length, then frames. */
	size_t hdr_len = sealed_response_nonce_len(pub.aead_id);
	if (size < hdr_len)
		return 0;
	struct sealed_stream *st = NULL;
	if (sealed_stream_begin_client(client, data, hdr_len, &st) != 0)
		abort();
	size_t off = hdr_len;
	while (off < size) {
		size_t used = 0;
		int final = 0;
		uint8_t *chunk = NULL;
		size_t chunk_len = 0;
		int r = sealed_stream_open_chunk(st, data + off, size - off, &used, &chunk, &chunk_len,
		                                 &final);
		free(chunk);
		if (r != 0)
			break;
		if (used == 0 || used > size - off)
			abort();
		off += used;
	}
	(void)sealed_stream_end(st);
	sealed_stream_free(st);
	return 0;
}

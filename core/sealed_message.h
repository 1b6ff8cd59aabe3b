/*
 * Sealed peer requests and responses, the way Oblivious HTTP (RFC 9458
 * §4.3-4.4) seals them, over HPKE base mode (hpke.h).
 *
 * Request:  hdr || enc || HPKE ciphertext, hdr = key_id(1) kem_id(2)
 *           kdf_id(2) aead_id(2); HPKE info = request label || 0x00 || hdr.
 * Response: response_nonce || AEAD ciphertext, response_nonce random of
 *           max(Nn, Nk) bytes; secret = Export(response label, Nk),
 *           prk = Extract(enc || response_nonce, secret),
 *           key = Expand(prk, "key", Nk), nonce = Expand(prk, "nonce", Nn).
 * Stream:   response_nonce, then frames flag(1) || len(4, BE) || ciphertext,
 *           chunk i sealed with nonce XOR I2OSP(i, Nn); flag 1 marks the
 *           final chunk and selects the AAD "final" (otherwise empty), so a
 *           reordered, dropped or re-flagged chunk fails authentication and
 *           a stream cut before its final chunk is reported by
 *           sealed_stream_end().  The secret is exported with the chunked
 *           label, so a stream key never equals a single response's key.
 *
 * Labels (media types): SEALED_MEDIA_BHTTP uses RFC 9458's
 * "message/bhttp request" / "message/bhttp response" (and chunked OHTTP's
 * "message/bhttp chunked response"); it exists to check the RFC example.
 * sovmesh's own payloads use SEALED_MEDIA_SOVMESH:
 * "message/sovmesh-request", "message/sovmesh-response",
 * "message/sovmesh-chunked-response".  A SOVMESH request's plaintext
 * starts with the sender's clock (8 bytes, Unix seconds, big-endian),
 * added and removed here, so the receiver can bound replays in time.
 *
 * Replay: the receiver keeps the `enc` of each authenticated request in a
 * bounded cache.  A SOVMESH request is accepted only when its timestamp is
 * within SEALED_REPLAY_WINDOW_SECS of the receiver's clock, and its enc
 * is remembered until that timestamp + window, so every replay is either
 * still in the cache (-EALREADY) or too old (-ESTALE).  A full cache
 * refuses new requests (-EBUSY) rather than forget one early.
 */
#ifndef SOVMESH_CORE_SEALED_MESSAGE_H
#define SOVMESH_CORE_SEALED_MESSAGE_H

#include <stddef.h>
#include <stdint.h>

#include "hpke.h"

#define SEALED_HDR_LEN            7
#define SEALED_TS_LEN             8
#define SEALED_REPLAY_WINDOW_SECS 120
#define SEALED_REPLAY_CAPACITY    32768 /* ~270 requests/s sustained over the window */
#define SEALED_MAX_CHUNK          (1u << 20) /* plaintext bytes per stream chunk */
#define SEALED_FRAME_HDR          5          /* flag + length */
#define SEALED_RESPONSE_NONCE_MAX 32

enum sealed_media {
	SEALED_MEDIA_BHTTP,   /* RFC 9458 labels, for the RFC check */
	SEALED_MEDIA_SOVMESH, /* sovmesh payloads, with a timestamp */
	/* Federated-learning deltas (fl_exchange.h): as SOVMESH, with the
	 * labels "message/sovmesh-fl-delta" / "message/sovmesh-fl-response",
	 * so neither kind of request opens as the other. */
	SEALED_MEDIA_SOVMESH_FL,
};

/* What a client needs to seal to a peer: its key id, the AEAD to use and
 * its X25519 public key. */
struct sealed_key {
	uint8_t key_id;
	uint16_t aead_id;
	uint8_t pk[HPKE_NPK];
};

/* The receiving side's key: id and X25519 private key.  Both AEADs are
 * accepted. */
struct sealed_gateway_key {
	uint8_t key_id;
	uint8_t sk[HPKE_NSK];
};

/* Intermediate values of the response key derivation (tests check them). */
struct sealed_response_keys {
	size_t nk;
	uint8_t secret[HPKE_NK_MAX]; /* Export(label, Nk) */
	uint8_t prk[HPKE_NH];
	uint8_t key[HPKE_NK_MAX];
	uint8_t nonce[HPKE_NN];
};

struct sealed_client;
struct sealed_server;
struct sealed_stream;
struct sealed_replay_cache;

/* max(Nn, Nk) for the AEAD, or 0 when unsupported. */
size_t sealed_response_nonce_len(uint16_t aead_id);

/* The HPKE info for a request header: label || 0x00 || hdr, into info
 * (at most 64 bytes); returns its length. */
size_t sealed_request_info(enum sealed_media media, const uint8_t hdr[SEALED_HDR_LEN],
                           uint8_t info[64]);

/* Response key derivation from a context (either side), with label
 * "response" or "chunked response" per media (chunked != 0).  0 or
 * negative errno; *k is wiped by the caller when done. */
int sealed_derive_response_keys(const struct hpke_ctx *ctx, enum sealed_media media, int chunked,
                                const uint8_t enc[HPKE_NENC], const uint8_t *response_nonce,
                                size_t nonce_len, struct sealed_response_keys *k);

/*
 * Client: seal pt to `key`.  skE: the ephemeral private key for tests
 * (RFC 9458 example), NULL for a random one.  now: Unix seconds, written
 * into a SOVMESH request (ignored for BHTTP).  On success *out (owned by
 * the caller, free()) holds the request and *client_out (owned,
 * sealed_client_free) the state needed to open the response.
 * 0, -ENOTSUP, -EINVAL, -ENOMEM, -EIO.
 */
int sealed_request_seal(const struct sealed_key *key, enum sealed_media media, const uint8_t *skE,
                        uint64_t now, const uint8_t *pt, size_t pt_len, uint8_t **out,
                        size_t *out_len, struct sealed_client **client_out);

/*
 * Receiver: open a request.  cache may be NULL only for BHTTP (no replay
 * check; the RFC check); a SOVMESH request without a cache is -EINVAL.
 * On success *pt (owned, free(); the SOVMESH timestamp removed) and
 * *server_out (owned, sealed_server_free) are set.  Errors: -EBADMSG
 * (malformed or not authentic), -ENOKEY (other key id), -ENOTSUP (suite),
 * -ESTALE (timestamp outside the window), -EALREADY (replay), -EBUSY
 * (replay cache full), -ENOMEM.
 */
int sealed_request_open(const struct sealed_gateway_key *key, enum sealed_media media,
                        struct sealed_replay_cache *cache, uint64_t now, const uint8_t *msg,
                        size_t msg_len, uint8_t **pt, size_t *pt_len,
                        struct sealed_server **server_out);

/* Receiver: seal a whole response.  response_nonce: for tests
 * (sealed_response_nonce_len bytes), NULL for random.  *out owned by the
 * caller.  0, -ENOMEM, -EIO. */
int sealed_response_seal(const struct sealed_server *s, const uint8_t *response_nonce,
                         const uint8_t *pt, size_t pt_len, uint8_t **out, size_t *out_len);

/* Client: open a whole response.  *pt owned by the caller.  -EBADMSG when
 * short or not authentic. */
int sealed_response_open(const struct sealed_client *c, const uint8_t *msg, size_t msg_len,
                         uint8_t **pt, size_t *pt_len);

/* Receiver: start a streamed response.  Writes the response nonce to hdr
 * (sealed_response_nonce_len bytes, sent first); response_nonce as for
 * sealed_response_seal.  *st owned by the caller (sealed_stream_free). */
int sealed_stream_begin_server(const struct sealed_server *s, const uint8_t *response_nonce,
                               uint8_t hdr[SEALED_RESPONSE_NONCE_MAX], size_t *hdr_len,
                               struct sealed_stream **st);

/* Client: start reading a streamed response from its header.  -EBADMSG
 * when hdr_len is not the suite's response nonce length. */
int sealed_stream_begin_client(const struct sealed_client *c, const uint8_t *hdr, size_t hdr_len,
                               struct sealed_stream **st);

/* Seal the next chunk (final != 0 for the last one) into a frame *out
 * (owned by the caller).  -EPROTO after the final chunk, -EMSGSIZE above
 * SEALED_MAX_CHUNK, -EOVERFLOW when the counter is exhausted. */
int sealed_stream_seal_chunk(struct sealed_stream *st, int final, const uint8_t *pt, size_t pt_len,
                             uint8_t **out, size_t *out_len);

/* Open the frame at the start of buf.  -EAGAIN (nothing consumed) when buf
 * does not yet hold a whole frame.  On success *consumed bytes were used,
 * *pt (owned, free(); may be NULL for an empty chunk) and *final are set.
 * -EBADMSG when not authentic (out of order, re-flagged, tampered) or the
 * flag byte is not 0/1, -EMSGSIZE for an oversized length, -EPROTO after
 * the final chunk. */
int sealed_stream_open_chunk(struct sealed_stream *st, const uint8_t *buf, size_t len,
                             size_t *consumed, uint8_t **pt, size_t *pt_len, int *final);

/* At the end of the byte stream: 0 when the final chunk was opened,
 * -EPIPE when the stream was cut short. */
int sealed_stream_end(const struct sealed_stream *st);

/* Replay cache: at most `capacity` entries (0: SEALED_REPLAY_CAPACITY).
 * NULL on allocation failure.  Not thread-safe; the daemon's loop owns it. */
struct sealed_replay_cache *sealed_replay_cache_new(size_t capacity);

/* Remember enc until expires_at (Unix seconds).  0, -EALREADY when enc
 * is present and not expired at `now`, -EBUSY when full of live entries. */
int sealed_replay_check_and_insert(struct sealed_replay_cache *c, const uint8_t enc[HPKE_NENC],
                                   uint64_t expires_at, uint64_t now);

/* Free functions wipe secrets; NULL is fine. */
void sealed_replay_cache_free(struct sealed_replay_cache *c);
void sealed_client_free(struct sealed_client *c);
void sealed_server_free(struct sealed_server *s);
void sealed_stream_free(struct sealed_stream *st);

#endif

/*
 * fl_inject: play a paired peer that sends a bad federated-learning delta
 * (tests/integration/test_federated_learning.py).  It uses a real node's
 * identity and trust store (that node's state directory), so the target
 * sees a pinned, paired sender over mutual TLS and an HPKE-sealed delta,
 * exactly as from sovmeshd; only the plaintext is wrong on purpose.
 *
 *   fl_inject --state-dir DIR --to FINGERPRINT --addr HOST:PORT
 *             --layout ADAPTER_DIR --kind KIND [--size BYTES]
 *
 * KIND: valid       zeros in the target's layout (accepted)
 *       garbage     random bytes, not safetensors
 *       oversized   a valid header padded to --size bytes of data
 *       mismatched  the first tensor has one more row
 *       nan         every value NaN
 *       metadata    an extra metadata key ("prompt")
 * Prints "status HTTP_STATUS MESSAGE" and exits 0 once an answer came.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "adapter.h"
#include "fl_delta.h"
#include "fl_exchange.h"
#include "hostport.h"
#include "identity.h"
#include "peer_client.h"
#include "random.h"
#include "safetensors.h"
#include "tensor_set.h"
#include "trust_store.h"

static int done_code = 1;

static void on_done(void *ud, int code, long status, const char *message)
{
	uv_loop_t *loop = ud;
	(void)code;
	printf("status %ld %s\n", status, message);
	fflush(stdout);
	done_code = status > 0 ? 0 : 1;
	uv_stop(loop);
}

static int build(const char *kind, const sovmesh_tensor_set *layout, size_t size, void **pt,
                 size_t *len, sovmesh_error *err)
{
	if (strcmp(kind, "garbage") == 0) {
		*len = size ? size : 4096;
		*pt = malloc(*len);
		return *pt ? rng_bytes(*pt, *len) : -ENOMEM;
	}
	sovmesh_tensor_set *set = NULL;
	if (strcmp(kind, "mismatched") == 0) {
		set = tset_new(NULL, layout->count);
		for (size_t i = 0; set && i < layout->count; i++) {
			sovmesh_tensor t = layout->tensors[i];
			if (i == 0)
				t.shape[0] += 1;
			tset_init_tensor(set, i, t.name, t.dtype, t.ndim, t.shape);
		}
	} else if (strcmp(kind, "oversized") == 0) {
		set = tset_new(NULL, layout->count + 1);
		for (size_t i = 0; set && i < layout->count; i++) {
			const sovmesh_tensor *t = &layout->tensors[i];
			tset_init_tensor(set, i, t->name, t->dtype, t->ndim, t->shape);
		}
		uint64_t shape[1] = {(size ? size : 1 << 20) / 4};
		if (set)
			tset_init_tensor(set, layout->count, "zz_padding", SOVMESH_DTYPE_F32, 1, shape);
	} else {
		set = tset_new(layout, layout->count);
	}
	if (!set)
		return -ENOMEM;
	if (strcmp(kind, "nan") == 0)
		for (size_t i = 0; i < set->count; i++)
			for (size_t k = 0; k < set->tensors[i].nbytes / 4; k++)
				((float *)set->tensors[i].data)[k] = NAN;
	int r;
	if (strcmp(kind, "metadata") == 0) {
		tset_set_metadata(set, "{\"sovmesh_fl\":\"1\",\"samples\":\"5\",\"round\":\"1\","
		                       "\"prompt\":\"injected\"}");
		r = safetensors_serialize(set, pt, len, err);
	} else {
		r = fl_delta_encode(set, 5, 1, pt, len, err);
	}
	tset_free(set);
	return r;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"state-dir", required_argument, NULL, 's'}, {"to", required_argument, NULL, 't'},
	    {"addr", required_argument, NULL, 'a'},      {"layout", required_argument, NULL, 'l'},
	    {"kind", required_argument, NULL, 'k'},      {"size", required_argument, NULL, 'z'},
	    {0},
	};
	const char *state = NULL, *to = NULL, *addr = NULL, *layout_dir = NULL, *kind = NULL;
	size_t size = 0;
	int opt;
	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (opt) {
		case 's': state = optarg; break;
		case 't': to = optarg; break;
		case 'a': addr = optarg; break;
		case 'l': layout_dir = optarg; break;
		case 'k': kind = optarg; break;
		case 'z': size = strtoull(optarg, NULL, 10); break;
		default: return 2;
		}
	}
	if (!state || !to || !addr || !layout_dir || !kind) {
		fprintf(stderr, "usage: fl_inject --state-dir DIR --to FP --addr HOST:PORT "
		                "--layout ADAPTER_DIR --kind KIND [--size N]\n");
		return 2;
	}
	sovmesh_error err = {0};
	identity *id = NULL;
	trust_store *ts = NULL;
	sovmesh_tensor_set *layout = NULL;
	/* The node's own name: the identity is loaded, not made. */
	if (identity_load_or_create(state, "fl-inject", &id, &err) < 0 ||
	    trust_store_open(state, &ts, &err) < 0 || adapter_read(layout_dir, &layout, NULL, &err) < 0) {
		fprintf(stderr, "fl_inject: %s\n", err.message);
		return 1;
	}
	const trusted_peer *tp = trust_store_find(ts, to);
	hostport hp;
	const char *why = NULL;
	if (!tp || hostport_parse(addr, 0, &hp, &why) < 0) {
		fprintf(stderr, "fl_inject: %s\n", tp ? why : "target not paired");
		return 1;
	}
	void *pt = NULL;
	size_t len = 0;
	if (build(kind, layout, size, &pt, &len, &err) < 0) {
		fprintf(stderr, "fl_inject: cannot build '%s': %s\n", kind, err.message);
		return 1;
	}
	uv_loop_t loop;
	uv_loop_init(&loop);
	peer_client *pc = NULL;
	fl_exchange *x = NULL;
	if (peer_client_new(&loop, id, ts, &pc) < 0 ||
	    fl_exchange_new(NULL, pc, id, 0, NULL, &x, &err) < 0) {
		fprintf(stderr, "fl_inject: setup failed: %s\n", err.message);
		return 1;
	}
	fl_exchange_target t = {.fingerprint_hex = tp->fingerprint_hex,
	                        .host = hp.host,
	                        .port = hp.port,
	                        .x25519_public = tp->x25519_public};
	if (!fl_exchange_send(x, &t, pt, len, 60000, on_done, &loop, &err)) {
		fprintf(stderr, "fl_inject: cannot send: %s\n", err.message);
		return 1;
	}
	uv_run(&loop, UV_RUN_DEFAULT);
	fl_exchange_free(x);
	peer_client_free(pc, NULL, NULL);
	uv_run(&loop, UV_RUN_DEFAULT);
	uv_loop_close(&loop);
	free(pt);
	tset_free(layout);
	trust_store_free(ts);
	identity_free(id);
	return done_code;
}

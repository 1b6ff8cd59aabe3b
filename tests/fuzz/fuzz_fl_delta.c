/*
 * libFuzzer target: a federated-learning delta as it arrives from a peer
 * (the plaintext once the HPKE seal is opened), decoded against a fixed
 * small adapter layout (two F32 tensors) with a 1 MiB limit.  Anything may
 * be refused, with one line saying why; a delta that is accepted must
 * re-encode and decode again to the same samples, round and values.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fl_delta.h"
#include "tensor_set.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_BYTES (1u << 20)

static sovmesh_tensor_set *layout;

/* The layout of tests/fuzz/corpus/fl_delta: "m.lora_A.weight" [2,3] and
 * "m.lora_B.weight" [3,2], F32. */
static void init(void)
{
	uint64_t a[2] = {2, 3}, b[2] = {3, 2};
	layout = tset_new(NULL, 2);
	if (!layout || tset_init_tensor(layout, 0, "m.lora_A.weight", SOVMESH_DTYPE_F32, 2, a) ||
	    tset_init_tensor(layout, 1, "m.lora_B.weight", SOVMESH_DTYPE_F32, 2, b))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!layout)
		init();
	fl_delta d = {0};
	sovmesh_error err = {0};
	if (fl_delta_decode(data, size, layout, MAX_BYTES, &d, &err) != 0) {
		if (d.set || !err.message[0] || strchr(err.message, '\n'))
			abort();
		return 0;
	}
	if (d.samples < 1 || d.samples > FL_DELTA_MAX_SAMPLES || d.round < 1 ||
	    d.set->count != layout->count)
		abort();

	void *buf = NULL;
	size_t len = 0;
	if (fl_delta_encode(d.set, d.samples, d.round, &buf, &len, &err) != 0)
		abort();
	fl_delta again = {0};
	if (fl_delta_decode(buf, len, layout, MAX_BYTES, &again, &err) != 0)
		abort();
	if (again.samples != d.samples || again.round != d.round ||
	    again.set->count != d.set->count)
		abort();
	for (size_t i = 0; i < d.set->count; i++) {
		const sovmesh_tensor *x = &d.set->tensors[i], *y = &again.set->tensors[i];
		if (strcmp(x->name, y->name) != 0 || x->dtype != y->dtype || x->nbytes != y->nbytes ||
		    (x->nbytes && memcmp(x->data, y->data, x->nbytes) != 0))
			abort();
	}
	/* Our own encoding is canonical: a third pass gives the same bytes. */
	void *buf2 = NULL;
	size_t len2 = 0;
	if (fl_delta_encode(again.set, again.samples, again.round, &buf2, &len2, &err) != 0 ||
	    len2 != len || memcmp(buf, buf2, len) != 0)
		abort();
	free(buf2);
	fl_delta_clear(&again);
	free(buf);
	fl_delta_clear(&d);
	return 0;
}

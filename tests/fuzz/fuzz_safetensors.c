/*
 * libFuzzer target for the safetensors parser (adapter files come from
 * peers and users).  Each input is parsed as a view (copy 0) and as a heap
 * copy (copy 1); a parsed set is also serialized and re-parsed, which must
 * succeed and give the same bytes, since the writer's output is valid by
 * construction.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"
#include "tensor_set.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	for (int copy = 0; copy <= 1; copy++) {
		sovmesh_tensor_set *set = NULL;
		sovmesh_error err = {0};
		int r = safetensors_parse(data, size, copy, &set, &err);
		if (r < 0) {
			/* Every refusal explains itself on one line. */
			if (set || !err.message[0] || strchr(err.message, '\n'))
				abort();
			continue;
		}
		void *out = NULL;
		size_t out_len = 0;
		if (safetensors_serialize(set, &out, &out_len, &err) == 0) {
			sovmesh_tensor_set *again = NULL;
			if (safetensors_parse(out, out_len, 0, &again, &err) != 0 ||
			    again->count != set->count)
				abort();
			for (size_t i = 0; i < set->count; i++) {
				const sovmesh_tensor *a = &set->tensors[i], *b = &again->tensors[i];
				if (strcmp(a->name, b->name) != 0 || a->nbytes != b->nbytes ||
				    (a->nbytes && memcmp(a->data, b->data, a->nbytes) != 0))
					abort();
			}
			tset_free(again);
			free(out);
		}
		tset_free(set);
	}
	return 0;
}

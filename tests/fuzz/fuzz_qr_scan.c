/* libFuzzer target: the QR image scanner (PNG/JPEG decoding, size guards,
 * zbar) on arbitrary bytes.  Anything may be refused, nothing may crash,
 * leak or read out of bounds; a refusal is one non-empty line. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qr_scan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = NULL;
	sovmesh_error err = {0};
	if (qr_scan_memory(data, size, "fuzz", &text, &err) == 0) {
		if (!text)
			abort();
		free(text);
	} else if (text || !err.message[0] || strchr(err.message, '\n')) {
		abort();
	}
	return 0;
}

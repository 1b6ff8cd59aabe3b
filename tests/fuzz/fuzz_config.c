/* libFuzzer target: the config loader on arbitrary text.  Anything may be
 * refused, nothing may crash, leak or read out of bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	sovmesh_config *cfg = NULL;
	sovmesh_error err = {0};
	if (config_load_string(text, "fuzz.conf", &cfg, &err) == 0)
		config_free(cfg);
	else if (!err.message[0] || strchr(err.message, '\n'))
		abort(); /* every refusal must be one non-empty line */
	free(text);
	return 0;
}

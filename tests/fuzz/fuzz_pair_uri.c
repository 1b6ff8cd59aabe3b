/* libFuzzer target: the sovmesh://pair URI parser and the code normaliser
 * on arbitrary text.  Anything may be refused (with one non-empty line);
 * what is accepted must build back into a URI that parses to the same. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pair_uri.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_refusal(const sovmesh_error *err)
{
	if (!err->message[0] || strchr(err->message, '\n'))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';

	char code[PAIR_CODE_LEN + 1];
	sovmesh_error err = {0};
	if (pair_code_normalize(text, code, &err) == 0) {
		if (strlen(code) != PAIR_CODE_LEN)
			abort();
	} else {
		check_refusal(&err);
	}

	pair_uri u, back;
	memset(&err, 0, sizeof(err));
	if (pair_uri_parse(text, &u, &err) == 0) {
		char *uri = NULL;
		if (pair_uri_build(&u, &uri, &err) != 0) {
			/* Only a longer re-encoding may push it over the limit. */
			if (!strstr(err.message, "at most"))
				abort();
		} else {
			if (pair_uri_parse(uri, &back, &err) != 0)
				abort();
			if (strcmp(u.name, back.name) ||
			    strcmp(u.fingerprint_hex, back.fingerprint_hex) ||
			    strcmp(u.code, back.code) || u.n_addrs != back.n_addrs ||
			    u.port != back.port)
				abort();
			for (size_t i = 0; i < u.n_addrs; i++)
				if (strcmp(u.addrs[i], back.addrs[i]))
					abort();
			free(uri);
		}
	} else {
		check_refusal(&err);
	}
	free(text);
	return 0;
}

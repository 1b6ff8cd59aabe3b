/* libFuzzer target: every pairing message parser (pair-hello, pair-confirm,
 * pair-error) on arbitrary bytes.  Anything may be refused (with one
 * non-empty line); an accepted hello must serialise and parse back to the
 * same fields, with the fingerprint recomputed from the certificate. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pair_messages.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	pair_msg m, back;
	sovmesh_error err = {0};
	if (pair_msg_parse((const char *)data, size, &m, &err) != 0) {
		if (!err.message[0] || strchr(err.message, '\n'))
			abort();
		return 0;
	}
	char *line = NULL;
	switch (m.type) {
	case PAIR_MSG_HELLO:
		if (pair_hello_build(&m.hello, &line, &err) != 0)
			abort();
		break;
	case PAIR_MSG_CONFIRM:
		if (pair_confirm_build(&line) != 0)
			abort();
		break;
	case PAIR_MSG_ERROR:
		if (strchr(m.error, '\n') || pair_error_build(m.error, &line) != 0)
			abort();
		break;
	default:
		abort();
	}
	size_t len = strlen(line);
	if (len == 0 || line[len - 1] != '\n' || memchr(line, '\n', len - 1))
		abort();
	if (pair_msg_parse(line, len - 1, &back, &err) != 0 || back.type != m.type)
		abort();
	if (m.type == PAIR_MSG_HELLO &&
	    (strcmp(m.hello.name, back.hello.name) ||
	     strcmp(m.hello.fingerprint_hex, back.hello.fingerprint_hex) ||
	     memcmp(m.hello.x25519_public, back.hello.x25519_public, 32) ||
	     m.hello.peer_port != back.hello.peer_port ||
	     m.hello.n_addresses != back.hello.n_addresses))
		abort();
	free(line);
	pair_msg_clear(&back);
	pair_msg_clear(&m);
	return 0;
}
